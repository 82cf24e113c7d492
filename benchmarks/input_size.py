"""The built-in model at other network input sizes (docs/accuracy.md, "Input size").

For each size, ``imagenet-voc`` is given that ``input_size``, calibrated again on
coco128 *train* (image-level labels only, :func:`napari_prm.peaks.calibrate_model`,
as ``benchmarks/calibrate_builtin.py`` calibrates the shipped thresholds at 448²),
and scored with the default preset on the coco128 train and val images that show
one of its classes: mAP^r .25/.5/.75 (pycocotools' COCOeval, ``segm``), peaks per
image, and where the ground-truth instances (at least 32² px) get lost. ``none``
runs the network at each image's own size. The built-in proposals are shared with
``accuracy_ablation.py`` through its cache.

Example
-------
::

    python benchmarks/input_size.py --sizes 320 448 576 704 none --out bench_out/input_size --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import napari_prm
from accuracy_ablation import ANNOTATIONS, cached_proposals, score_instances
from napari_prm.data import from_coco
from napari_prm.evaluate import InstanceMatcher
from napari_prm.peaks import calibrate_model


def parse_size(text: str):
    if text == "none":
        return None
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def score(model, split: str, cache: Path) -> dict:
    """The default preset's mAP^r, peaks and funnel on one coco128 split's images showing a class of the model."""
    dataset = from_coco(ANNOTATIONS / f"instances_{split}2017.json",
                        require_positives=False).with_classes(model.class_names)
    indices = [i for i in range(len(dataset)) if dataset.labels[i].any()]
    matcher, overlaps, funnel, peaks = InstanceMatcher(len(model.class_names)), [], defaultdict(int), 0
    started = time.perf_counter()
    for index in indices:
        image, truth = dataset.read_image(index), dataset.instances(index)
        proposals, _ = cached_proposals(cache, dataset.image_paths[index].stem, image)
        predictor = napari_prm.PRMPredictor(model, proposals=proposals)
        predictor.set_image(image)
        prediction = predictor.predict()
        peaks += len(prediction.peaks)
        score_instances(matcher, overlaps, funnel, prediction, truth,
                        proposals[: predictor.settings.proposal_count])
    maps, _ = matcher.evaluate((0.25, 0.5, 0.75))
    return {"images": len(indices), "mAP_r": [float(v) for v in maps], "peaks_per_image": peaks / len(indices),
            "funnel": {k: funnel[k] for k in ("instances", "with_peak", "with_proposal", "retrieved")},
            "seconds_per_image": (time.perf_counter() - started) / len(indices)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["320", "448", "576", "704", "none"],
                        help="input sizes: N (N×N), HxW, or none (each image's own size)")
    parser.add_argument("--model", default="imagenet-voc", help="built-in label space")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--cache", type=Path, default=None, help="proposal cache (default: <out>/../proposal_cache)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    if not (ANNOTATIONS / "instances_train2017.json").is_file():
        raise SystemExit(f"coco128 not found: {ANNOTATIONS}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = args.cache or args.out.parent / "proposal_cache"
    calibration_set = from_coco(ANNOTATIONS / "instances_train2017.json", require_positives=False)
    load_start, started, results = os.getloadavg(), time.perf_counter(), []
    for size in sizes:
        model = napari_prm.load_model(args.model)
        model.input_size = size
        calibration = calibrate_model(model, calibration_set)
        model.settings.update(calibration.as_settings())
        row = {"input_size": size, "class_threshold": calibration.class_threshold,
               "peak_threshold": calibration.peak_threshold,
               **{split: score(model, split, cache) for split in ("train", "val")}}
        results.append(row)
        print(json.dumps(row), flush=True)
    load_end = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "load_average_start_end": [load_start, load_end],
            "torch_threads": torch.get_num_threads(), "seconds": time.perf_counter() - started}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    lines = [f"Model `{args.model}`; load average {load_start[0]:.1f} → {load_end[0]:.1f}, "
             f"{torch.get_num_threads()} torch threads.", "",
             "| input size | class / peak threshold | split | mAP^r .25 / .5 / .75 | peaks / image "
             "| GT with a peak / a proposal / retrieved | s / image |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results:
        size = "each image's own" if row["input_size"] is None else "×".join(map(str, row["input_size"]))
        for split in ("train", "val"):
            r = row[split]
            funnel = r["funnel"]
            shares = " / ".join(f"{100 * funnel[k] / max(funnel['instances'], 1):.0f} %"
                                for k in ("with_peak", "with_proposal", "retrieved"))
            lines.append(f"| {size} | {row['class_threshold']:.2f} / {row['peak_threshold']:.2f} | {split} "
                         f"({r['images']} images) | {' / '.join(f'{100 * v:.1f}' for v in r['mAP_r'])} | "
                         f"{r['peaks_per_image']:.1f} | {shares} (of {funnel['instances']}) | "
                         f"{r['seconds_per_image']:.2f} |")
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
