"""Which float images `as_rgb_float` should read as 8-bit, and what a wrong reading costs.

Two measurements:

1. Real 8-bit photos (coco128 train + val, prm_demo): the maximum and the 99.5th
   percentile of each, i.e. how many a rule "whole-number floats within [0, 255] are 8-bit
   only when their maximum is at least T" would stretch instead when saved as floats.
2. A low-signal image (each coco128 val photo scaled to whole numbers 0..``--signal``, as a
   32-bit ImageJ image of counts holds them) read by the old rule (divided by 255: dim) and
   by the stretch of other float and >8-bit images, against the photo itself: classification
   mAP of ``imagenet-coco``'s peak-stimulated scores over the 100 val images (forward passes
   only).

Usage: ``PYTHONPATH=src python benchmarks/float_image_rule.py [--signal 40]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_prm import load_model
from napari_prm.data import from_coco
from napari_prm.evaluate import classification_map
from napari_prm.io import read_image
from napari_prm.io.images import STRETCH_PERCENTILES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def photo_ranges() -> None:
    paths = sorted((DATA / "coco128").glob("*2017/*.jpg")) + sorted((DATA / "prm_demo").glob("*.jpg"))
    tops = np.array([[image.max(), np.percentile(image, 99.5)] for image in map(read_image, paths)])
    print(f"{len(paths)} photos: maximum >= {tops[:, 0].min():.0f}; 99.5th percentile >= {tops[:, 1].min():.0f}")
    for threshold in (64, 128, 200, 240):
        print(f"  T = {threshold}: {int((tops[:, 0] < threshold).sum())} photos below by their maximum, "
              f"{int((tops[:, 1] < threshold).sum())} by their 99.5th percentile")


def stretched(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, STRETCH_PERCENTILES)
    return np.clip((values - low) / (high - low), 0, 1).astype(np.float32)


def low_signal_map(signal: int) -> None:
    dataset = from_coco(DATA / "coco128" / "annotations" / "instances_val2017.json")
    model = load_model("imagenet-coco")
    keep = [dataset.class_names.index(name) for name in model.class_names if name in dataset.class_names]
    columns = [model.class_names.index(dataset.class_names[i]) for i in keep]
    readings = {"the 8-bit photo (/255)": lambda photo: photo / 255,
                f"whole numbers 0..{signal}, /255 (the old rule)": lambda photo: np.rint(photo * signal / 255) / 255,
                f"whole numbers 0..{signal}, stretched": lambda photo: stretched(np.rint(photo * signal / 255))}
    scores = {name: [] for name in readings}
    with torch.no_grad():
        for path in dataset.image_paths:
            photo = read_image(path).astype(np.float32)
            if photo.ndim == 2:
                photo = np.repeat(photo[..., None], 3, axis=-1)
            for name, read in readings.items():
                rgb = np.clip(read(photo), 0, 1).astype(np.float32)
                scores[name].append(model.network(model.network_input(rgb)).float().cpu().numpy()[0, columns])
    labels = dataset.labels[:, keep]
    for name, values in scores.items():
        print(f"  {name}: classification mAP {classification_map(np.array(values), labels)[0]:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signal", type=int, default=40, help="the low-signal image's largest value")
    args = parser.parse_args()
    torch.set_num_threads(1)
    photo_ranges()
    print(f"coco128 val, imagenet-coco, low signal 0..{args.signal}:")
    low_signal_map(args.signal)
