"""Choose the shipped thresholds of the built-in model's label spaces (docs/accuracy.md, "Calibration").

``imagenet-voc`` and ``imagenet-coco`` are calibrated like a trained model at the
end of ``napari-prm train``: on images with image-level labels only (coco128
*train*: the classes of the space present in each image, crowd-only classes
left out), :func:`napari_prm.peaks.calibrate_thresholds` picks the class and
peak thresholds that maximise the F1 of "peaks of classes the image shows"
against "present classes with a peak", with the default preset's other rules
(sub-pixel factor 8, one peak per location within 1.5 CRM cells). A class
present only as a crowd region does not count (``from_coco``'s default).

The 1000-class ``imagenet`` space has no labelled images to calibrate on. Its
class threshold is the highest (on a 0.5 grid) that keeps the top class of
scikit-image's ``chelsea`` and ``coffee``, and its peak threshold the lowest (on
a 0.5 grid) at which each of them keeps at most three peaks.

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
from napari_prm.peaks import calibrate_model, class_scores, peak_candidates, select_peaks

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128"
OUT = ROOT / "src" / "napari_prm" / "model" / "builtin_calibration.json"
SUPPRESSION_CELLS = napari_prm.PredictSettings().suppression_radius


def calibrate_space(name: str, split: str = "train") -> dict:
    model = napari_prm.load_model(name)
    dataset = from_coco(COCO128 / "annotations" / f"instances_{split}2017.json", require_positives=False)
    started = time.perf_counter()
    calibration = calibrate_model(model, dataset)
    print(f"{name}: {calibration} ({time.perf_counter() - started:.0f} s)")
    with_tta = calibrate_model(model, dataset, tta=True)
    print(f"{name} with TTA: {with_tta}")
    return {**calibration.as_settings(), "tta_calibration": with_tta.as_settings(),
            "method": f"calibrate_thresholds on coco128 {split} "
            f"({len(dataset)} images, image-level labels of the space's classes), F1"}


def imagenet_thresholds(tta: bool = False) -> dict:
    from skimage import data

    model = napari_prm.load_model("imagenet")
    predictor = napari_prm.PRMPredictor(model, proposals=None, tta=tta)
    cases = []
    for image in (data.chelsea(), data.coffee()):
        crms = predictor.class_response_maps(image)
        cases.append((crms, class_scores(crms), peak_candidates(crms)))
    radius = SUPPRESSION_CELLS * predictor.settings.sub_pixel_locating_factor
    # The highest class threshold (0.5 grid) that keeps each image's top class ...
    class_threshold = float(np.floor(min(scores.max() for _, scores, _ in cases) * 2) / 2)
    # ... then the lowest peak threshold (0.5 grid) that leaves at most 3 peaks on each.
    for peak_threshold in np.arange(0.0, 40.01, 0.5):
        counts = [len(select_peaks(crms, scores=scores, class_threshold=class_threshold,
                                   peak_threshold=float(peak_threshold), candidates=candidates,
                                   suppression_radius=radius))
                  for crms, scores, candidates in cases]
        if max(counts) <= 3:
            print(f"imagenet{' with TTA' if tta else ''}: class {class_threshold}, peak {peak_threshold}: "
                  f"peaks on chelsea, coffee = {counts}")
            return {"class_threshold": class_threshold, "peak_threshold": float(peak_threshold),
                    "method": "class: the highest threshold (0.5 grid) keeping the top class of skimage's chelsea "
                              "and coffee; peak: the lowest (0.5 grid) leaving each at most 3 peaks",
                    "peaks_chelsea_coffee": counts}
    raise RuntimeError("no peak threshold leaves at most 3 peaks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    if not COCO128.is_dir():
        raise SystemExit(f"coco128 not found at {COCO128}")
    spaces = {"imagenet": {**imagenet_thresholds(), "tta_calibration": imagenet_thresholds(tta=True)}}
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
