"""Choose the shipped thresholds of the built-in model's label spaces (docs/accuracy.md, "Calibration").

``imagenet-voc`` and ``imagenet-coco`` are calibrated like a trained model at the
end of ``napari-prm train``: on images with image-level labels only (coco128
*train*: the classes of the space present in each image, crowd-only classes
left out), :func:`napari_prm.peaks.calibrate_thresholds` picks the class and
peak thresholds that maximise the F1 of "peaks of classes the image shows"
against "present classes with a peak", with the default preset's other rules
(sub-pixel factor 8, one peak per location within 1.5 CRM cells).

The 1000-class ``imagenet`` space has no labelled images to calibrate on. Its
thresholds are the lowest pair, on a 0.5 grid, at which scikit-image's
``chelsea`` and ``coffee`` each keep between one and three peaks, all of the
image's top-scoring class.

Writes ``src/napari_prm/model/builtin_calibration.json`` (``--write``) and prints
what it chose::

    python benchmarks/calibrate_builtin.py --write
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import napari_prm
from napari_prm.data import from_coco
from napari_prm.peaks import calibrate_thresholds, peak_candidates, select_peaks

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128"
OUT = ROOT / "src" / "napari_prm" / "model" / "builtin_calibration.json"
SUPPRESSION_CELLS = napari_prm.PredictSettings().suppression_radius


def crm_stack(model, images):
    predictor = napari_prm.PRMPredictor(model, proposals=None)
    maps = []
    for image in images:
        predictor.set_image(image)
        maps.append(predictor.crms.copy())
    return maps, predictor.settings.sub_pixel_locating_factor


def calibrate_space(name: str, split: str = "train") -> dict:
    model = napari_prm.load_model(name)
    dataset = from_coco(COCO128 / "annotations" / f"instances_{split}2017.json", require_positives=False)
    columns = [dataset.class_names.index(c) if c in dataset.class_names else None for c in model.class_names]
    labels = np.stack([dataset.labels[:, c] if c is not None else np.zeros(len(dataset)) for c in columns], 1)
    started = time.perf_counter()
    maps, factor = crm_stack(model, (dataset.read_image(i) for i in range(len(dataset))))
    calibration = calibrate_thresholds(maps, labels, suppression_radius=SUPPRESSION_CELLS * factor)
    print(f"{name}: {calibration} ({time.perf_counter() - started:.0f} s)")
    return {**calibration.as_settings(), "method": f"calibrate_thresholds on coco128 {split} "
            f"({len(dataset)} images, image-level labels of the space's classes), F1"}


def imagenet_thresholds() -> dict:
    from skimage import data

    model = napari_prm.load_model("imagenet")
    predictor = napari_prm.PRMPredictor(model, proposals=None)
    cases = []
    for image in (data.chelsea(), data.coffee()):
        predictor.set_image(image)
        crms = predictor.crms.copy()
        cases.append((crms, predictor.scores.copy(), peak_candidates(crms)))
    factor = predictor.settings.sub_pixel_locating_factor
    grid = np.arange(0.0, 30.01, 0.5)
    for total in sorted({(a, b) for a in grid for b in grid}, key=lambda pair: (pair[0] + pair[1], pair)):
        class_threshold, peak_threshold = total
        fine = True
        counts = []
        for crms, scores, (peaks, values) in cases:
            passing = (scores[peaks[:, 0]] >= class_threshold) & (values > peak_threshold)
            if passing.sum() > 200:  # far from 1-3 peaks; suppression over that many is slow
                fine = False
                break
            selection = select_peaks(crms, scores=scores, class_threshold=class_threshold,
                                     peak_threshold=peak_threshold, candidates=(peaks, values),
                                     suppression_radius=SUPPRESSION_CELLS * factor)
            counts.append(len(selection))
            top = int(np.argmax(scores))
            fine &= 1 <= len(selection) <= 3 and bool((selection.peaks[:, 0] == top).all())
        if fine:
            print(f"imagenet: class {class_threshold}, peak {peak_threshold}: peaks on chelsea, coffee = {counts}")
            return {"class_threshold": float(class_threshold), "peak_threshold": float(peak_threshold),
                    "method": "lowest pair on a 0.5 grid (lowest sum) at which skimage's chelsea and coffee each "
                              "keep 1-3 peaks, all of their top class", "peaks_chelsea_coffee": counts}
    raise RuntimeError("no thresholds satisfy the rule")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    if not COCO128.is_dir():
        raise SystemExit(f"coco128 not found at {COCO128}")
    spaces = {"imagenet": imagenet_thresholds()}
    for name in ("imagenet-voc", "imagenet-coco"):
        spaces[name] = calibrate_space(name)
    document = {"written_by": "python benchmarks/calibrate_builtin.py --write", "spaces": spaces}
    text = json.dumps(document, indent=2) + "\n"
    print(text)
    if args.write:
        OUT.write_text(text)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
