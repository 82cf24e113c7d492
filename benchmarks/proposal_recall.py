"""Recall of segment proposals on coco128 val (100 images, exact instance masks).

For every ground-truth instance (crowd regions left out) the best IoU among an
image's proposals is taken; the table gives the mean best overlap (ABO) and the
recall at IoU 0.5 for small (< 32² px) and medium + large (>= 32² px)
instances, the mean number of proposals and the seconds per image spent making
them. The "prm" sources need peak response maps: they take those of the
built-in ImageNet model for its three best-scoring classes (used class-agnostically;
the model's time is left out of the figures).

    PYTHONPATH=src python benchmarks/proposal_recall.py [--images 100] [--sources default lab-only]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from scipy import sparse

from napari_prm.io import read_image
from napari_prm.proposals import combine_proposals, default_proposals, prm_guided_proposals

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128"
SMALL = 32**2

_MODEL = {}


def _imagenet_prms(image: np.ndarray, top: int = 3) -> np.ndarray:
    """PRMs of all peaks of the built-in ImageNet model's `top` best-scoring classes.

    Its labels are not COCO's; only the maps' shapes matter here.
    """
    from napari_prm import load_model, predict

    if "imagenet" not in _MODEL:
        _MODEL["imagenet"] = load_model("imagenet")
    model = _MODEL["imagenet"]
    scores = predict(image, model, proposals=None, class_threshold=np.inf).scores
    best = [int(c) for c in np.argsort(-scores)[:top]]
    return predict(image, model, proposals=None, classes=best, class_threshold=-np.inf).prms


def _with_prms(make):
    """A source needing PRMs; the model's time is left out of the source's."""

    def source(image):
        start, start_cpu = time.perf_counter(), time.process_time()
        prms = _imagenet_prms(image)
        excluded = (time.perf_counter() - start, time.process_time() - start_cpu)
        return make(image, prms), excluded

    return source


SOURCES = {
    "default": ("`default_proposals(image)`", lambda image: default_proposals(image)),
    "prm": (
        "`prm_guided_proposals(image, prms)`, ImageNet-model PRMs",
        _with_prms(lambda image, prms: prm_guided_proposals(image, prms)),
    ),
    "default+prm": (
        "`combine_proposals(default, prm)` (interleaved), ImageNet-model PRMs",
        _with_prms(lambda image, prms: combine_proposals(default_proposals(image),
                                                         prm_guided_proposals(image, prms))),
    ),
    "lab-only": (
        "`default_proposals(image, colour_spaces=('lab',))`",
        lambda image: default_proposals(image, colour_spaces=("lab",)),
    ),
    "default-1000": (
        "`default_proposals(image, max_proposals=1000, area_range=(0.0002, 0.85))`",
        lambda image: default_proposals(image, max_proposals=1000, area_range=(0.0002, 0.85)),
    ),
}


def overlaps(truth: np.ndarray, proposals: np.ndarray, chunk: int = 100) -> np.ndarray:
    """(G, N) IoU of each (G, H, W) ground-truth mask with each (N, H, W) proposal."""
    # Sparse products: multithreaded BLAS is erratic on such long, thin matrices.
    truth_columns = np.ascontiguousarray(truth.reshape(len(truth), -1).T, dtype=np.float32)
    truth_area = truth_columns.sum(axis=0)
    out = np.zeros((len(truth), len(proposals)))
    for start in range(0, len(proposals), chunk):
        flat = sparse.csr_array(proposals[start : start + chunk].reshape(-1, len(truth_columns)),
                                dtype=np.float32)
        inter = (flat @ truth_columns).T
        union = truth_area[:, None] + flat.sum(axis=1)[None, :] - inter
        out[:, start : start + chunk] = inter / np.maximum(union, 1)
    return out


def evaluate(source, coco: COCO, image_ids: list[int], first: int | None = None) -> dict:
    """Figures for one source; with `first`, also for its first `first` proposals."""
    best, best_first, areas, counts, seconds, cpu = [], [], [], [], [], []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        annotations = [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        if not annotations:
            continue
        image = read_image(DATA / "val2017" / info["file_name"])
        truth = np.stack([coco.annToMask(a).astype(bool) for a in annotations])
        start, start_cpu = time.perf_counter(), time.process_time()
        proposals = source(image)
        excluded = (0.0, 0.0)
        if isinstance(proposals, tuple):
            proposals, excluded = proposals
        seconds.append(time.perf_counter() - start - excluded[0])
        cpu.append(time.process_time() - start_cpu - excluded[1])
        counts.append(len(proposals))
        iou = overlaps(truth, proposals)
        best.append(iou.max(axis=1, initial=0.0))
        best_first.append(iou[:, :first].max(axis=1, initial=0.0))
        areas.append(truth.reshape(len(truth), -1).sum(axis=1))
    areas = np.concatenate(areas)
    rows = {}
    for key, values, count in (("all", best, np.mean(counts)),
                               ("first", best_first, np.mean(np.minimum(counts, first or 0)))):
        values = np.concatenate(values)
        row = {"proposals": float(count), "seconds": float(np.mean(seconds)), "cpu": float(np.mean(cpu))}
        for name, chosen in (("small", areas < SMALL), ("medium+large", areas >= SMALL)):
            row[name] = (int(chosen.sum()), float(values[chosen].mean()), float((values[chosen] >= 0.5).mean()))
        rows[key] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="first N val images (default all 100)")
    parser.add_argument("--first", type=int, default=100,
                        help="also report each source's first N proposals (retrieval uses 100)")
    parser.add_argument("--sources", nargs="+", default=["default", "lab-only"],
                        choices=sorted(SOURCES))
    args = parser.parse_args()
    coco = COCO(str(DATA / "annotations" / "instances_val2017.json"))
    image_ids = sorted(coco.imgs)[: args.images]
    print(f"\n{len(image_ids)} coco128 val images; {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} CPUs\n")
    print("| source | proposals / image | s / image (wall) | CPU s / image "
          "| small: n, ABO, recall@0.5 | medium+large: n, ABO, recall@0.5 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.sources:
        label, source = SOURCES[name]
        rows = evaluate(source, coco, image_ids, first=args.first)
        for key, suffix in (("all", ""), ("first", f", first {args.first}")):
            row = rows[key]
            cells = [f"{row[k][0]}, {row[k][1]:.3f}, {row[k][2]:.3f}" for k in ("small", "medium+large")]
            print(f"| {label}{suffix} | {row['proposals']:.0f} | {row['seconds']:.2f} | {row['cpu']:.2f} "
                  f"| {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
