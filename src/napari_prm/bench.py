"""Benchmarks of the PRM engine (``napari-prm bench``): forward, peak backprop, retrieval.

Timings live here, never in the tests.
"""

from __future__ import annotations

import platform
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model.checkpoint import PRMModel, load_model, resolve_device
from .model.peak_backprop import EPS, patch_convolutions


class _RecomputingExcitationConv2d(torch.autograd.Function):
    """The excitation rule with N recomputed in every backward pass (a one-backward-per-peak baseline)."""

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(input, weight)
        ctx.conv_args = (stride, padding, dilation, groups)
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        shifted = input - input.min()
        weight_pos = weight.clamp(min=0)
        norm = F.conv2d(shifted, weight_pos, None, stride, padding, dilation, groups)
        grad = torch.where(norm < EPS, torch.zeros_like(norm), grad_output / (norm.abs() + EPS))
        grad = torch.nn.grad.conv2d_input(shifted.shape, weight_pos, grad, stride, padding, dilation, groups)
        return grad * shifted, None, None, None, None, None, None


def _recomputing_patch(module: nn.Module):
    def conv_forward(self, input, weight, bias):
        return _RecomputingExcitationConv2d.apply(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    return patch_convolutions(module, conv_forward)


def original_loop_prms(model: PRMModel, x: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """PRMs the way the original release computed them: weights requiring grad, one
    ``backward`` per peak with the normaliser recomputed in every conv."""
    network = model.network.eval()
    x = x.detach().clone().requires_grad_(True)
    prms = []
    with torch.enable_grad(), _recomputing_patch(network):
        crms = network.class_response_maps(x)
        seed = torch.zeros_like(crms)
        for cls, y, x_pos in peaks.tolist():
            seed.zero_()
            seed[0, cls, y, x_pos] = 1
            if x.grad is not None:
                x.grad.zero_()
            crms.backward(seed, retain_graph=True)
            prm = x.grad.detach().sum(1)[0].clamp(min=0)
            prms.append(prm / prm.sum())
    network.zero_grad(set_to_none=True)
    return torch.stack(prms)


def _time(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """The process's resident high-water mark in MiB (``ru_maxrss``; on Windows, where there
    is no ``resource`` module, psutil's peak working set)."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def benchmark_model(
    *,
    model: Optional[PRMModel] = None,
    size: int = 448,
    num_peaks: int = 20,
    device: Optional[str] = None,
    peak_batch_size: Optional[int] = None,
    compare_original: bool = True,

) -> dict:
    """Time the forward pass, all PRMs (ours vs the original loop) and a plain input-gradient backward.

    The input is scikit-image's ``chelsea`` resized to ``size``×``size``; the
    peaks are its ``num_peaks`` strongest CRM local maxima over all classes.
    Returns a dict of figures; ``ratio`` is the PRM time per peak divided by the
    time of one plain input-gradient backward pass of the same network.
    """
    device = resolve_device(device)
    model = (model or load_model("imagenet")).to(device)
    network = model.network.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    from skimage import data

    from .model.transforms import as_rgb_float, to_network_input

    x = to_network_input(as_rgb_float(data.chelsea()), (size, size), model.mean, model.std).to(device)
    with torch.no_grad():
        network.class_response_maps(x)  # warm-up
        forward_s = _time(lambda: network.class_response_maps(x), device, repeats=3)
        crms = network.class_response_maps(x)
    # The num_peaks strongest local maxima over all classes: a fixed, realistic workload.
    from .model.peak_stimulation import find_peaks

    peak_map = find_peaks(crms, network.win_size, None)[0]
    candidates = torch.nonzero(peak_map)
    values = crms[0][candidates[:, 0], candidates[:, 1], candidates[:, 2]]
    peaks = candidates[values.argsort(descending=True)[:num_peaks]]

    # A one-peak warm-up first, as the forward pass and the plain backward below get one.
    network.peak_response_maps(x, peaks=peaks[:1], peak_batch_size=peak_batch_size)
    ours_s = _time(
        lambda: network.peak_response_maps(x, peaks=peaks, peak_batch_size=peak_batch_size), device, repeats=1
    )
    ours = network.peak_response_maps(x, peaks=peaks, peak_batch_size=peak_batch_size).prms

    params = list(network.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        xi = x.clone().requires_grad_(True)
        with torch.enable_grad():
            out = network.class_response_maps(xi)
            seed_grad = torch.zeros_like(out)
            seed_grad[0, peaks[0, 0], peaks[0, 1], peaks[0, 2]] = 1
            torch.autograd.grad(out, xi, seed_grad, retain_graph=True)
            plain_s = _time(lambda: torch.autograd.grad(out, xi, seed_grad, retain_graph=True), device, repeats=3)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)

    figures = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "size": size,
        "num_peaks": int(len(peaks)),
        "forward_s": forward_s,
        "prms_s": ours_s,
        "prm_per_peak_s": ours_s / max(len(peaks), 1),
        "plain_backward_s": plain_s,
        "ratio": ours_s / max(len(peaks), 1) / plain_s,
    }
    if compare_original:
        original_s = _time(lambda: original_loop_prms(model, x, peaks.cpu()), device)
        original = original_loop_prms(model, x, peaks.cpu())
        figures["original_loop_s"] = original_s
        figures["original_per_peak_s"] = original_s / max(len(peaks), 1)
        figures["max_abs_diff_vs_original"] = float((original.cpu() - ours.cpu()).abs().max())
    figures["peak_memory_mib"] = _peak_memory_mib(device)
    return figures


def benchmark_retrieval(*, size: int = 448, num_peaks: int = 30, num_proposals: int = 100, seed: int = 0) -> dict:
    """Time :func:`retrieve_instances` on random PRMs and blob proposals of the given size."""
    from .retrieval import retrieve_instances

    rng = np.random.default_rng(seed)
    prms = rng.random((num_peaks, size, size), dtype=np.float32)
    prms /= prms.sum(axis=(1, 2), keepdims=True)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.integers(0, size, size=(num_proposals, 2))
    radii = rng.integers(size // 20, size // 3, size=num_proposals)
    proposals = (yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2 < radii[:, None, None] ** 2
    crms = rng.random((3, size // 32, size // 32), dtype=np.float32)
    classes = rng.integers(0, 3, size=num_peaks)
    start = time.perf_counter()
    instances = retrieve_instances(prms, classes, crms, proposals, proposal_count=num_proposals)
    return {"size": size, "num_peaks": num_peaks, "num_proposals": num_proposals,
            "retrieval_s": time.perf_counter() - start, "instances": len(instances)}


def format_report(model_figures: dict, retrieval_figures: Optional[dict] = None) -> str:
    """Markdown lines for ``docs/benchmarks.md``."""
    f = model_figures
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {f['device']}, torch {torch.__version__}, "
        f"{f['torch_threads']} threads",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| input | {f['size']}×{f['size']}, {f['num_peaks']} peaks |",
        f"| forward | {f['forward_s']:.3f} s |",
        f"| all PRMs (ours: N cached, no weight grads) | {f['prms_s']:.2f} s ({f['prm_per_peak_s']:.3f} s/peak) |",
    ]
    if "original_loop_s" in f:
        lines.append(
            f"| all PRMs (original loop: N per peak, weight grads) | {f['original_loop_s']:.2f} s "
            f"({f['original_per_peak_s']:.3f} s/peak); max |Δ| vs ours {f['max_abs_diff_vs_original']:.1e} |"
        )
    lines += [
        f"| one plain input-gradient backward | {f['plain_backward_s']:.3f} s |",
        f"| PRM time per peak ÷ plain backward | {f['ratio']:.2f} |",
        f"| peak memory ({'GPU allocated' if f['device'].startswith('cuda') else 'process RSS'}) | {f['peak_memory_mib']:.0f} MiB |",
    ]
    if retrieval_figures:
        r = retrieval_figures
        lines.append(
            f"| retrieval: {r['num_proposals']} proposals × {r['num_peaks']} peaks at {r['size']}² | {r['retrieval_s']:.3f} s |"
        )
    return "\n".join(lines)
