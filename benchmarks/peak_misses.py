"""Why ground-truth instances get no peak: their class is not found in the image, or it is found elsewhere.

For a model with its default preset, over the coco128 images of a split that show at
least one of its classes, each ground-truth instance (non-crowd, at least 32² px, as in
the ablation's funnel) falls in one of three cases:

- *peak*: a peak of its class lies inside it;
- *class found elsewhere*: the image has peaks of its class, none inside it;
- *class not found*: the image has no peak of its class (its class score is below the
  class threshold, or no local maximum of its CRM reaches the peak threshold).

The script prints the counts per class, then, per class, the class scores and CRM
maxima of the images that show the class against those of the images that do not:
where the two overlap the thresholds cannot separate them, and where a class's maps
stay below the peak threshold even when it is present, that class never gets a peak.

Examples
--------
::

    python benchmarks/peak_misses.py --model imagenet-voc --split val --out bench_out/peak_misses_val
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

import napari_prm
from accuracy_ablation import val_images

MIN_AREA = 32 * 32
CASES = ("peak", "class found elsewhere", "class not found")


def instance_cases(peaks_yx: np.ndarray, peak_classes: np.ndarray, truth) -> list[tuple[int, str]]:
    """``(class, case)`` of each non-crowd ground-truth instance of at least :data:`MIN_AREA` pixels."""
    peaks_yx = np.asarray(peaks_yx, dtype=np.float64).reshape(-1, 2)
    peak_classes = np.asarray(peak_classes).reshape(-1)
    out = []
    if len(truth.masks) == 0:
        return out
    height, width = truth.masks.shape[1:]
    rows = np.clip(np.rint(peaks_yx[:, 0]).astype(int), 0, height - 1)
    cols = np.clip(np.rint(peaks_yx[:, 1]).astype(int), 0, width - 1)
    for mask, cls, crowd in zip(truth.masks, truth.class_indices, truth.iscrowd):
        if crowd or mask.sum() < MIN_AREA:
            continue
        own = peak_classes == cls
        if (own & mask[rows, cols]).any():
            out.append((int(cls), CASES[0]))
        else:
            out.append((int(cls), CASES[1] if own.any() else CASES[2]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imagenet-voc", help="built-in name or checkpoint")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)

    model, dataset, indices = val_images(args.model, args.threads, args.split)
    names = list(model.class_names)
    class_threshold = model.settings.get("class_threshold")
    peak_threshold = model.settings.get("peak_threshold")
    load_start = os.getloadavg()
    counts = {name: dict.fromkeys(CASES, 0) for name in names}
    scores, maxima, present = [], [], []
    for done, index in enumerate(indices):
        image = dataset.read_image(index)
        truth = dataset.instances(index)
        predictor = napari_prm.PRMPredictor(model, preset="default", proposals=None)
        predictor.set_image(image)
        prediction = predictor.predict()
        for cls, case in instance_cases(prediction.peaks, prediction.peak_classes, truth):
            counts[names[cls]][case] += 1
        scores.append(np.asarray(prediction.scores, dtype=np.float64))
        maxima.append(np.asarray(prediction.crms, dtype=np.float64).reshape(len(names), -1).max(1))
        present.append(dataset.labels[index] > 0)
        print(f"  {done + 1}/{len(indices)} images", flush=True)
    scores, maxima, present = np.array(scores), np.array(maxima), np.array(present)

    def summary(values: np.ndarray) -> str:
        if len(values) == 0:
            return "—"
        return f"{np.median(values):.2f} ({values.min():.2f}–{values.max():.2f})"

    per_class = []
    for k, name in enumerate(names):
        if not present[:, k].any():
            continue
        shown, absent = present[:, k], ~present[:, k]
        per_class.append({
            "class": name, **counts[name],
            "score_present": summary(scores[shown, k]),
            "score_absent_p90": float(np.percentile(scores[absent, k], 90)) if absent.any() else None,
            "crm_max_present": summary(maxima[shown, k]),
            "crm_max_absent_p90": float(np.percentile(maxima[absent, k], 90)) if absent.any() else None,
        })
    per_class.sort(key=lambda row: -sum(row[case] for case in CASES))
    totals = {case: sum(row[case] for row in per_class) for case in CASES}
    meta = {"model": args.model, "split": f"coco128 {args.split}", "images": len(indices),
            "class_threshold": class_threshold, "peak_threshold": peak_threshold,
            "load_average": [load_start[0], os.getloadavg()[0]]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "totals": totals, "classes": per_class},
                                                      indent=1))
    def threshold(value) -> str:
        return "none" if value is None else f"{value:.2f}"

    lines = [f"{args.model} on {meta['split']} ({len(indices)} images with a class of the model); "
             f"class threshold {threshold(class_threshold)}, peak threshold {threshold(peak_threshold)}", "",
             "| class | instances | peak | class found elsewhere | class not found | class score where shown: "
             "median (range) | where not shown: 90th pct. | CRM max where shown: median (range) "
             "| where not shown: 90th pct. |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in per_class:
        total = sum(row[case] for case in CASES)
        absent_score = "—" if row["score_absent_p90"] is None else f"{row['score_absent_p90']:.2f}"
        absent_max = "—" if row["crm_max_absent_p90"] is None else f"{row['crm_max_absent_p90']:.2f}"
        lines.append(f"| {row['class']} | {total} | {row['peak']} | {row['class found elsewhere']} | "
                     f"{row['class not found']} | {row['score_present']} | {absent_score} | "
                     f"{row['crm_max_present']} | {absent_max} |")
    total = sum(totals.values())
    lines.append(f"| all | {total} | {totals['peak']} | {totals['class found elsewhere']} | "
                 f"{totals['class not found']} | | | | |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
