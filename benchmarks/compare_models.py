"""Several models on the classes they all have: mAP^r on one coco128 split, default preset.

Models with different label spaces cannot be compared on their own classes: the built-in
``imagenet-voc`` has no *person*, a model trained on coco128's VOC view has no *cow* or
*sheep*. This script keeps the classes every model names, the images of the split that show
one of them, and only the instances (ground truth and predicted) of those classes, then
scores each model with pycocotools' COCOeval (``segm``) on the same built-in proposals
(cached in ``--cache``, as `accuracy_ablation.py` caches them). The paired bootstrap of
:func:`napari_prm.evaluate.bootstrap_map` gives each model's mAP^r .5 interval and the
difference of each model to the first.

Example
-------
::

    python benchmarks/compare_models.py --models imagenet-voc bench_out/ft_voc/model.pt --out OUT
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import napari_prm
from accuracy_ablation import ANNOTATIONS, cached_proposals
from napari_prm.data import from_coco
from napari_prm.evaluate import InstanceMatcher, bootstrap_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="built-in names or checkpoints")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.md")
    parser.add_argument("--cache", type=Path, default=None, help="proposal cache (default: <out>/../proposal_cache)")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples of the images (0: none)")
    args = parser.parse_args()
    path = ANNOTATIONS / f"instances_{args.split}2017.json"
    if not path.is_file():
        raise SystemExit(f"coco128 not found: {path}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = args.cache or args.out.parent / "proposal_cache"
    models = [napari_prm.load_model(name) for name in args.models]
    shared = [name for name in models[0].class_names if all(name in m.class_names for m in models[1:])]
    if not shared:
        raise SystemExit("the models have no class in common")
    dataset = from_coco(path, require_positives=False).with_classes(shared)
    indices = [i for i in range(len(dataset)) if dataset.labels[i].any()]
    print(f"{len(shared)} shared classes, {len(indices)} {args.split} images", flush=True)
    matchers = [InstanceMatcher(len(shared)) for _ in models]
    load_start, started = os.getloadavg(), time.perf_counter()
    for done, index in enumerate(indices):
        image, truth = dataset.read_image(index), dataset.instances(index)
        proposals, _ = cached_proposals(cache, dataset.image_paths[index].stem, image)
        for model, matcher in zip(models, matchers):
            predictor = napari_prm.PRMPredictor(model, preset="default", proposals=proposals)
            predictor.set_image(image)
            kept = [inst for inst in predictor.predict().instances if model.class_names[inst.class_index] in shared]
            masks = (np.array([inst.mask for inst in kept]) if kept
                     else np.zeros((0, *image.shape[:2]), bool))
            classes = np.array([shared.index(model.class_names[inst.class_index]) for inst in kept], np.int64)
            matcher.add(truth.masks, truth.class_indices, masks, classes,
                        np.array([inst.score for inst in kept], float), truth.iscrowd)
        print(f"  {done + 1}/{len(indices)} images, {time.perf_counter() - started:.0f} s", flush=True)
    load_end = os.getloadavg()
    lines = [f"{len(shared)} classes shared by {', '.join(f'`{name}`' for name in args.models)}: "
             f"{', '.join(shared)}; {len(indices)} coco128 {args.split} images; load average "
             f"{load_start[0]:.1f} → {load_end[0]:.1f}.", "",
             "| model | mAP^r .25 / .5 / .75 | mAP^r .5, 90 % interval "
             "| minus the first at .5: median (90 % interval), share > 0 |",
             "| --- | --- | --- | --- |"]
    samples = bootstrap_map(matchers, iou_threshold=0.5, resamples=args.bootstrap) if args.bootstrap else None
    for k, (name, matcher) in enumerate(zip(args.models, matchers)):
        overall = matcher.evaluate()[0] * 100
        interval = difference = ""
        if samples is not None:
            column = samples[:, k] * 100
            interval = f"{np.median(column):.1f} ({np.percentile(column, 5):.1f}–{np.percentile(column, 95):.1f})"
            if k:
                delta = column - samples[:, 0] * 100
                difference = (f"{np.median(delta):+.1f} ({np.percentile(delta, 5):+.1f} to "
                              f"{np.percentile(delta, 95):+.1f}), {np.mean(delta > 0):.0%}")
        lines.append(f"| `{name}` | {' / '.join(f'{v:.1f}' for v in overall)} | {interval} | {difference or '—'} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
