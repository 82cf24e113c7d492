"""Fidelity and speed of the fast PRM mode against the exact PRMs (issue 10, item 3).

For each of the first ``--images`` coco128 val images, the built-in ImageNet model
(EfficientNet-Lite0, 448×448 input) finds its peaks (classes scoring at least
``--class-threshold``, at most ``--max-peaks`` strongest peaks per image); the exact
PRMs and the fast PRMs (``mode="fast"``, one run per ``--strides`` value) of the
same peaks are compared:

- Pearson r between the exact and the fast PRM of each peak (448×448 maps);
- the time per further peak in each mode, from the progress callback (the time
  between the first and the last peak's callback, divided by K - 1; the forward
  pass is left out), and their ratio (the speed-up);
- on the first ``--retrieval-images`` images, instance retrieval with the built-in
  proposals (``default_proposals``) and ``retrieve_instances`` without NMS (one
  chosen proposal per peak): how often the fast mode picks the same mask as the
  exact mode (identical, IoU >= 0.9, IoU >= 0.5), and, with the default NMS, how
  many instances each mode returns.

    PYTHONPATH=src python benchmarks/fast_mode_fidelity.py [--images 30] [--retrieval-images 20]

The data folder defaults to ``<repo>/../shared/data/coco128`` or
``$NAPARI_PRM_SHARED/data/coco128``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def default_data() -> Path:
    shared = os.environ.get("NAPARI_PRM_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[1].parent / "shared"
    return root / "data" / "coco128"


def pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-300)).numpy()


def timed_prms(network, x, **kwargs):
    """(result, seconds per further peak, seconds of the whole call)."""
    stamps = []
    start = time.perf_counter()
    result = network.peak_response_maps(
        x, progress=lambda done, total: stamps.append((done, time.perf_counter())), **kwargs)
    total = time.perf_counter() - start
    per_peak = (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0]) if len(stamps) > 1 else float("nan")
    return result, per_peak, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="coco128 folder (val2017/ inside)")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--retrieval-images", type=int, default=20)
    parser.add_argument("--class-threshold", type=float, default=8.0)
    parser.add_argument("--max-peaks", type=int, default=20, help="strongest peaks kept per image")
    parser.add_argument("--strides", type=int, nargs="+", default=[8])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from skimage import io

    from napari_prm import load_model
    from napari_prm.model import find_peaks
    from napari_prm.predictor import resize_prms
    from napari_prm.proposals import default_proposals
    from napari_prm.retrieval import retrieve_instances

    files = sorted((args.data / "val2017").glob("*.jpg"))[: args.images]
    if not files:
        raise SystemExit(f"no images in {args.data / 'val2017'}")
    model = load_model("imagenet", device=args.device)
    network = model.network
    load_start = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    rows = {s: {"r": [], "exact_s": [], "fast_s": [], "same": 0, "iou90": 0, "iou50": 0, "compared": 0,
                "instances_exact": 0, "instances_fast": 0} for s in args.strides}
    for index, path in enumerate(files):
        image = io.imread(path)
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        image = image[..., :3]
        x = model.preprocess(image)
        # Scores and CRMs without back-propagating anything (an empty peak list).
        probe = network.peak_response_maps(x, peaks=lambda shape: np.zeros((0, 3), dtype=np.int64))
        crm_values = probe.crms[None]
        peak_map = find_peaks(crm_values, network.win_size, network.peak_filter)[0]
        candidates = torch.nonzero(peak_map)
        keep = probe.scores[candidates[:, 0]] >= args.class_threshold
        candidates = candidates[keep]
        values = probe.crms[candidates[:, 0], candidates[:, 1], candidates[:, 2]]
        peaks = candidates[values.argsort(descending=True)[: args.max_peaks]]
        if len(peaks) < 2:
            print(f"{path.name}: {len(peaks)} peaks, skipped")
            continue
        exact, exact_s, _ = timed_prms(network, x, peaks=peaks)
        do_retrieval = index < args.retrieval_images
        if do_retrieval:
            proposals = default_proposals(image)
            exact_maps = resize_prms(exact.prms, image.shape[:2])
            classes = exact.peaks[:, 0].numpy()
            crm_np = exact.crms.numpy()
            chosen_exact = {i.peak: i.mask for i in retrieve_instances(exact_maps, classes, crm_np, proposals,
                                                                       nms_threshold=None)}
            count_exact = len(retrieve_instances(exact_maps, classes, crm_np, proposals))
        line = f"{path.name}: {len(peaks)} peaks, exact {exact_s:.3f} s/peak"
        for stride in args.strides:
            fast, fast_s, _ = timed_prms(network, x, peaks=peaks, mode="fast", fast_stride=stride)
            row = rows[stride]
            r = pearson(exact.prms, fast.prms)
            row["r"] += r.tolist()
            row["exact_s"].append(exact_s)
            row["fast_s"].append(fast_s)
            line += f" | stride {stride}: {fast_s:.3f} s/peak, median r {np.median(r):.2f}"
            if do_retrieval:
                fast_maps = resize_prms(fast.prms, image.shape[:2])
                chosen_fast = {i.peak: i.mask for i in retrieve_instances(fast_maps, classes, crm_np, proposals,
                                                                          nms_threshold=None)}
                row["instances_exact"] += count_exact
                row["instances_fast"] += len(retrieve_instances(fast_maps, classes, crm_np, proposals))
                for peak, mask in chosen_exact.items():
                    other = chosen_fast.get(peak)
                    row["compared"] += 1
                    if other is None:
                        continue
                    inter = np.logical_and(mask, other).sum()
                    iou = inter / max(np.logical_or(mask, other).sum(), 1)
                    row["same"] += bool(np.array_equal(mask, other))
                    row["iou90"] += bool(iou >= 0.9)
                    row["iou50"] += bool(iou >= 0.5)
        print(line, flush=True)
    load_end = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"

    print()
    print(f"Machine: {platform.machine()}, {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; "
          f"load average {' '.join(load_start)} at the start, {' '.join(load_end)} at the end")
    print()
    print("| fast stride | PRMs | Pearson r median (IQR) | r min | exact s/peak (median) | fast s/peak (median) "
          "| speed-up (median of per-image ratios) | same mask / IoU>=0.9 / IoU>=0.5 (no NMS) "
          "| instances with NMS, exact / fast |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for stride, row in rows.items():
        r = np.array(row["r"])
        speed = np.median(np.array(row["exact_s"]) / np.array(row["fast_s"]))
        n = max(row["compared"], 1)
        summary[stride] = {
            "prms": int(len(r)), "r_median": float(np.median(r)), "r_q1": float(np.percentile(r, 25)),
            "r_q3": float(np.percentile(r, 75)), "r_min": float(r.min()),
            "exact_s_per_peak": float(np.median(row["exact_s"])), "fast_s_per_peak": float(np.median(row["fast_s"])),
            "speed_up": float(speed), "retrieval_peaks": row["compared"], "same_mask": row["same"],
            "iou90": row["iou90"], "iou50": row["iou50"],
            "instances_exact": row["instances_exact"], "instances_fast": row["instances_fast"],
        }
        print(f"| {stride} | {len(r)} | {np.median(r):.3f} ({np.percentile(r, 25):.3f}–{np.percentile(r, 75):.3f}) "
              f"| {r.min():.3f} | {np.median(row['exact_s']):.3f} | {np.median(row['fast_s']):.3f} | {speed:.2f}× "
              f"| {row['same'] / n:.0%} / {row['iou90'] / n:.0%} / {row['iou50'] / n:.0%} of {row['compared']} "
              f"| {row['instances_exact']} / {row['instances_fast']} |")
    if args.json:
        args.json.write_text(json.dumps({"load_start": load_start, "load_end": load_end, "strides": summary}, indent=2))


if __name__ == "__main__":
    main()
