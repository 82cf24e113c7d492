"""Time instance retrieval: 100 proposals x 30 peaks at 448x448 on the CPU.

Proposals are random discs and ellipses, PRMs random sparse maps summing to 1,
CRMs random 14x14 maps of 20 classes; the figure is the median of the repeats.
A second row times the original release's demo proposals (sample0, 375x500).

    PYTHONPATH=src python benchmarks/retrieval_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_prm.proposals import load_proposals
from napari_prm.retrieval import retrieve_instances

DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prm_demo" / "sample0.json"


def random_inputs(size: int, peaks: int, proposals: int, classes: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (proposals, 2))
    radii = rng.uniform(size / 30, size / 3, (proposals, 2))
    masks = ((yy - centres[:, :1, None]) / radii[:, :1, None]) ** 2 + (
        (xx - centres[:, 1:, None]) / radii[:, 1:, None]
    ) ** 2 < 1
    prms = ndi.gaussian_filter(rng.random((peaks, size, size)) ** 8, (0, 2, 2)).astype(np.float32)
    prms /= prms.sum(axis=(1, 2), keepdims=True)
    crms = rng.random((classes, 14, 14)).astype(np.float32)
    return prms, rng.integers(0, classes, peaks), crms, masks


def median_seconds(args, repeats: int) -> tuple[float, int]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        found = retrieve_instances(*args, proposal_count=100)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats}\n")
    print("| case | proposals | peaks | size | seconds | instances |")
    print("| --- | --- | --- | --- | --- | --- |")
    seconds, found = median_seconds(random_inputs(448, 30, 100), args.repeats)
    print(f"| random discs | 100 | 30 | 448x448 | {seconds:.3f} | {found} |", flush=True)
    if DEMO.is_file():
        masks = load_proposals(DEMO)
        prms, classes, crms, _ = random_inputs(1, 30, 1)
        prms = np.resize(prms, (30,) + masks.shape[1:])
        prms = ndi.gaussian_filter(np.random.default_rng(1).random(prms.shape) ** 8, (0, 2, 2))
        prms = (prms / prms.sum(axis=(1, 2), keepdims=True)).astype(np.float32)
        seconds, found = median_seconds((prms, classes, crms, masks), args.repeats)
        height, width = masks.shape[1:]
        print(f"| demo sample0 proposals (first 100 of 200) | 100 | 30 | {height}x{width} "
              f"| {seconds:.3f} | {found} |")


if __name__ == "__main__":
    main()
