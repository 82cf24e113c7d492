"""PRM time per peak divided by one plain input-gradient backward, measured interleaved.

The built-in model (EfficientNet-Lite0, 1000 classes) on scikit-image's chelsea at
``--size``², the ``--peaks`` strongest CRM local maxima. Each round times, in this
order and in one process:

- ``plain``: one ordinary input-gradient backward of the same network (weights
  frozen; the median of three seeds, on a graph kept from a warm-up);
- ``one``: ``peak_response_maps`` with 1 peak (forward pass included);
- ``all``: ``peak_response_maps`` with all peaks.

and reports per round ``marginal = (all - one) / (peaks - 1) / plain`` (each further
peak) and ``all-in = all / peaks / plain`` (what ``napari-prm bench`` calls the ratio),
then their medians over the rounds, with the load average at the start and the end.
Ratios of times taken seconds apart resist a shared machine's load far better than the
times themselves.

    PYTHONPATH=src python benchmarks/prm_ratio.py [--rounds 7] [--threads 2] [--no-malloc-tuning]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--peaks", type=int, default=20)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peak-batch-size", type=int, default=None)
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact")
    parser.add_argument("--fast-stride", type=int, default=8)
    parser.add_argument("--channels-last", action="store_true", help="model and input in channels-last memory format")
    parser.add_argument("--channels-last-input", action="store_true", help="only the input in channels-last format")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's allocator at its defaults (NAPARI_PRM_MALLOC_TUNING=0)")
    args = parser.parse_args()
    if args.no_malloc_tuning:
        os.environ["NAPARI_PRM_MALLOC_TUNING"] = "0"

    import torch
    from skimage import data

    from napari_prm import load_model
    from napari_prm.model import find_peaks
    try:
        from napari_prm.model.cpu_memory import tuning_enabled
    except ImportError:  # an older checkout, for before/after figures
        def tuning_enabled() -> bool:
            return False
    from napari_prm.model.transforms import as_rgb_float, to_network_input

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model("imagenet", device=device)
    network = model.network.eval()
    x = to_network_input(as_rgb_float(data.chelsea()), (args.size, args.size), model.mean, model.std).to(device)
    if args.channels_last:
        network.to(memory_format=torch.channels_last)
    if args.channels_last or args.channels_last_input:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        crms = network.class_response_maps(x)
    candidates = torch.nonzero(find_peaks(crms, network.win_size, None)[0])
    values = crms[0][candidates[:, 0], candidates[:, 1], candidates[:, 2]]
    peaks = candidates[values.argsort(descending=True)[: args.peaks]]

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    for p in network.parameters():
        p.requires_grad_(False)
    xi = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = network.class_response_maps(xi)

    def plain(k: int) -> float:
        seed = torch.zeros_like(out)
        c, y, x_pos = peaks[k].tolist()
        seed[0, c, y, x_pos] = 1
        start = clock()
        torch.autograd.grad(out, xi, seed, retain_graph=True)
        return clock() - start

    def prms(count: int) -> float:
        start = clock()
        network.peak_response_maps(x, peaks=peaks[:count], peak_batch_size=args.peak_batch_size, **mode)
        return clock() - start

    mode = {} if args.mode == "exact" else {"mode": "fast", "fast_stride": args.fast_stride}
    plain(0)
    prms(2)
    load_start = loadavg()
    rows = []
    for _ in range(args.rounds):
        p = statistics.median(plain(k % len(peaks)) for k in range(3))
        one = prms(1)
        every = prms(len(peaks))
        rows.append((p, one, every, (every - one) / (len(peaks) - 1) / p, every / len(peaks) / p))
    med = [statistics.median(row[i] for row in rows) for i in range(5)]
    print(f"device {device}, {torch.get_num_threads()} threads, malloc tuning {'on' if tuning_enabled() else 'off'}, "
          f"mode {args.mode}{f' (stride {args.fast_stride})' if args.mode == 'fast' else ''}, "
          f"peak batch {args.peak_batch_size or 'default'}, "
          f"channels-last {'model+input' if args.channels_last else 'input' if args.channels_last_input else 'no'}, "
          f"{args.size}², {len(peaks)} peaks, {args.rounds} rounds; load average {load_start} -> {loadavg()}")
    print(f"medians: plain backward {med[0]:.4f} s, 1-peak call {med[1]:.3f} s, {len(peaks)}-peak call {med[2]:.3f} s, "
          f"marginal ratio {med[3]:.2f}, all-in ratio {med[4]:.2f}")
    print("rounds (marginal / all-in): " + ", ".join(f"{row[3]:.2f}/{row[4]:.2f}" for row in rows))


if __name__ == "__main__":
    main()
