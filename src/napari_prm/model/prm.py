"""The PRM network: a fully convolutional classifier with peak stimulation and peak backpropagation."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _validate as check
from .cpu_memory import reuse_freed_memory
from .peak_backprop import excitation_backprop, fold_batch_norms
from .peak_stimulation import PeakFilter, find_peaks, peak_stimulation


@dataclass(repr=False, eq=False)
class PeakResponseResult:
    """Peak response maps of one image, in network-input and CRM coordinates.

    Attributes
    ----------
    scores : (C,) float32 tensor
        Peak-stimulated class scores.
    crms : (C, h, w) float32 tensor
        Class response maps (upsampled when ``sub_pixel_locating_factor > 1``).
    peaks : (K, 3) int64 tensor
        ``(class, y, x)`` of each peak in CRM pixels.
    peak_values : (K,) float32 tensor
        CRM value at each peak.
    prms : (K, H, W) float32 tensor
        Peak response maps at the network input's size, each summing to 1
        (all zeros when the backward signal vanished entirely).
    """

    scores: torch.Tensor
    crms: torch.Tensor
    peaks: torch.Tensor
    peak_values: torch.Tensor
    prms: torch.Tensor

    def __repr__(self) -> str:
        from .._text import fields_repr

        return fields_repr(self)


class ForwardPass:
    """One image's forward pass, kept for peak backpropagation.

    Made by :meth:`PeakResponseMapping.forward_pass`. Each :meth:`backprop` call
    costs one backward pass per peak (or per batch of peaks on a GPU) and
    reuses the normalisers the forward pass cached.

    Attributes
    ----------
    crm_values : (1, C, h, w) float tensor
        The class response maps (detached).
    input_size : (H, W)
        The size of the PRMs: the network input's.
    """

    def __init__(self, network: PeakResponseMapping, x: torch.Tensor, crms: torch.Tensor, target: torch.Tensor):
        self._network = network
        self._x = x
        self._crms = crms
        self._target = target
        self.crm_values = crms.detach()
        self.input_size = tuple(int(s) for s in x.shape[-2:])

    def backprop(self, peaks, *, batch_size: Optional[int] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Peak response maps of ``(class, y, x)`` CRM locations.

        Parameters
        ----------
        peaks : (K, 3) int array or tensor, on any device
        batch_size : int, optional
            Peaks back-propagated together (None: 1 on the CPU, 16 on a GPU).
        progress : callable, optional
            ``progress(done, total)`` after each batch.
        seeds : (K, h, w) float array or tensor, optional
            What each backward pass starts from on its peak's class map (the CRM's
            ``(h, w)``), instead of one at the peak's cell: e.g. the class map over the
            peak's region (:func:`napari_prm.peaks.region_seeds`). The excitation rule is
            linear in it, so a seed's map is the seed-weighted sum of its cells' maps
            (before the positive part is taken and the map normalised).

        Returns
        -------
        (K, H, W) float32 tensor on the network's device, each map summing to 1
        (all zeros when no signal reached the input).
        """
        batch_size = check.positive_int("batch_size", batch_size, optional=True)
        peaks = PeakResponseMapping._check_peaks(peaks, self.crm_values.shape[1:])
        if seeds is not None:
            seeds = torch.as_tensor(seeds, dtype=self._crms.dtype).to(self._crms.device)
            expected = (len(peaks),) + tuple(self.crm_values.shape[2:])
            if tuple(seeds.shape) != expected:
                raise ValueError(f"seeds: expected shape {expected} (one class-map seed per peak), "
                                 f"got {tuple(seeds.shape)}")
        memory = reuse_freed_memory() if self._target.device.type == "cpu" else nullcontext()
        with torch.inference_mode(False), torch.enable_grad(), memory:  # see forward_pass
            return self._network._backprop_peaks(self._target, self._crms, peaks, batch_size, progress,
                                                 self.input_size, seeds)


def _default_peak_batch_size(device: torch.device) -> int:
    # On the CPU batching was slower than one peak at a time (docs/benchmarks.md); on a GPU batches pay.
    return 1 if device.type == "cpu" else 16


PRM_MODES = ("exact", "fast")
#: Input scales of test-time augmentation (each also flipped horizontally).
TTA_SCALES = (0.75, 1.0, 1.25)


class PeakResponseMapping(nn.Module):
    """Wrap a fully convolutional classifier with peak stimulation and backprop.

    Parameters
    ----------
    fcn : nn.Module
        Maps ``(B, 3, H, W)`` images to class response maps ``(B, C, h, w)``.
    win_size : int
        Window of the peak search (odd).
    peak_filter : {'median', 'mean', 'max'}, float, callable or None
        Peaks below this per-map threshold are dropped.
    sub_pixel_locating_factor : int
        When > 1, CRMs are upsampled bilinearly by this factor before peaks are found.
    """

    def __init__(
        self,
        fcn: nn.Module,
        *,
        win_size: int = 3,
        peak_filter: PeakFilter = "median",
        sub_pixel_locating_factor: int = 1,
    ):
        super().__init__()
        if win_size < 1 or win_size % 2 != 1:
            raise ValueError(f"win_size must be a positive odd integer; got {win_size}")
        if int(sub_pixel_locating_factor) < 1:
            raise ValueError(f"sub_pixel_locating_factor must be >= 1; got {sub_pixel_locating_factor}")
        self.fcn = fcn
        self.win_size = int(win_size)
        self.peak_filter = peak_filter
        self.sub_pixel_locating_factor = int(sub_pixel_locating_factor)

    def class_response_maps(self, x: torch.Tensor, *, sub_pixel_locating_factor: Optional[int] = None,
                            tta: bool = False) -> torch.Tensor:
        """CRMs ``(B, C, h, w)``, upsampled by the sub-pixel locating factor.

        Parameters
        ----------
        x : (B, 3, H, W) float tensor
        sub_pixel_locating_factor : int, optional
            Upsampling factor (default: ``self.sub_pixel_locating_factor``).
        tta : bool
            Average the maps over a horizontal flip and the input scales
            :data:`TTA_SCALES` (each resized bilinearly to the scale-1 maps' size).
            Every step is differentiable, so peak backpropagation goes through
            all six branches to ``x``.

        Returns
        -------
        (B, C, h, w) torch.Tensor
            ``h, w``: the backbone's output grid times the factor.
        """
        factor = self.sub_pixel_locating_factor if sub_pixel_locating_factor is None else int(sub_pixel_locating_factor)
        if factor < 1:
            raise ValueError(f"sub_pixel_locating_factor must be >= 1; got {factor}")
        crms = self._tta_maps(x) if tta else self._maps(x)
        if factor > 1:
            crms = F.interpolate(crms, scale_factor=factor, mode="bilinear", align_corners=True)
        return crms

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        crms = self.fcn(x)
        if crms.dim() != 4:
            raise ValueError(f"the fcn must return (B, C, h, w) maps; got shape {tuple(crms.shape)}")
        return crms

    def _tta_maps(self, x: torch.Tensor) -> torch.Tensor:
        reference = None
        branches = []
        for scale in sorted(TTA_SCALES, key=lambda s: s != 1.0):  # scale 1 first: it sets the size
            scaled = x if scale == 1.0 else F.interpolate(
                x, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
            for flip in (False, True):
                maps = self._maps(torch.flip(scaled, [-1]) if flip else scaled)
                if flip:
                    maps = torch.flip(maps, [-1])
                if reference is None:
                    reference = tuple(maps.shape[-2:])
                elif tuple(maps.shape[-2:]) != reference:
                    maps = F.interpolate(maps, size=reference, mode="bilinear", align_corners=False)
                branches.append(maps)
        return torch.stack(branches).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Peak-stimulated class scores (what training's loss takes).

        Parameters
        ----------
        x : (B, 3, H, W) float tensor
            Normalised network input.

        Returns
        -------
        (B, C) torch.Tensor
        """
        scores, _ = peak_stimulation(self.class_response_maps(x), self.win_size, self.peak_filter)
        return scores

    def peak_response_maps(
        self,
        x: torch.Tensor,
        *,
        class_threshold: float = 0.0,
        peak_threshold: Optional[float] = None,
        peak_batch_size: Optional[int] = None,
        classes: Optional[list[int]] = None,
        peaks: Optional[torch.Tensor] = None,
        progress: Optional[Callable[[int, int], None]] = None,
        mode: str = "exact",
        fast_stride: int = 8,
    ) -> PeakResponseResult:
        """Peaks and their peak response maps for one image.

        Parameters
        ----------
        x : (1, 3, H, W) float tensor
            The normalised network input.
        class_threshold : float
            Peaks of classes whose score is below this are dropped.
        peak_threshold : float or None
            Peaks whose value is not above this are dropped (None: keep all).
        peak_batch_size : int or None
            Peaks back-propagated together (None: 1 on the CPU, 16 on a GPU).
            The result does not depend on it.
        classes : list of int or None
            Keep only peaks of these classes.
        peaks : (K, 3) int64 tensor, callable or None
            Back-propagate from these ``(class, y, x)`` CRM locations instead
            of the detected peaks (for example a location a user clicked);
            the thresholds are not applied to them. A callable receives the
            CRM shape ``(C, h, w)`` and returns the locations.
        progress : callable or None
            Called as ``progress(done, total)`` after each batch of peaks.
        mode : {'exact', 'fast'}
            'exact' back-propagates every peak to the input image (the paper's
            PRMs). 'fast' stops at the feature layer of output stride
            ``fast_stride`` (see :meth:`feature_layer`) and upsamples: the
            positive part of the channel sum of the excitation signal there,
            resized bilinearly to the input size and renormalised to sum 1.
            It skips the costly high-resolution layers, so each peak is
            cheaper, but the maps are coarser (docs/benchmarks.md measures how
            faithful they are). When no layer reaches that stride the fast
            mode gives the exact maps.
        fast_stride : int
            Output stride of the fast mode's feature layer (e.g. 4 or 8).

        Returns
        -------
        PeakResponseResult
        """
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"peak_response_maps takes one image (1, 3, H, W); got shape {tuple(x.shape)}")
        class_threshold = check.finite_float("class_threshold", class_threshold)
        peak_threshold = check.finite_float("peak_threshold", peak_threshold, optional=True)
        peak_batch_size = check.positive_int("peak_batch_size", peak_batch_size, optional=True)
        if mode not in PRM_MODES:
            raise ValueError(f"mode must be one of {PRM_MODES}; got {mode!r}")
        forward = self.forward_pass(x, mode=mode, fast_stride=fast_stride)
        crm_values = forward.crm_values
        peak_map = find_peaks(crm_values, self.win_size, self.peak_filter)
        scores = (crm_values * peak_map).flatten(2).sum(2) / peak_map.flatten(2).sum(2).clamp(min=1)
        scores = scores[0]
        if peaks is None:
            peak_list = self._select_peaks(peak_map[0], crm_values[0], scores, class_threshold, peak_threshold, classes)
        else:
            if callable(peaks):
                peaks = peaks(tuple(crm_values.shape[1:]))
            peak_list = self._check_peaks(peaks, crm_values.shape[1:]).to(crm_values.device)
        values = crm_values[0][peak_list[:, 0], peak_list[:, 1], peak_list[:, 2]]
        prms = forward.backprop(peak_list, batch_size=peak_batch_size, progress=progress)
        return PeakResponseResult(
            scores=scores.float().cpu(),
            crms=crm_values[0].float().cpu(),
            peaks=peak_list.cpu(),
            peak_values=values.float().cpu(),
            prms=prms.cpu(),
        )

    def forward_pass(self, x: torch.Tensor, *, sub_pixel_locating_factor: Optional[int] = None,
                     tta: bool = False, mode: str = "exact", fast_stride: int = 8) -> ForwardPass:
        """Run the network on one image and keep its graph for peak backpropagation.

        The forward pass runs with the excitation rule at every convolution, the
        network in eval mode and its weights excluded from the graph; each
        submodule's own mode and each weight's ``requires_grad`` are restored
        before returning (the graph keeps what it needs).

        Parameters
        ----------
        x : (1, 3, H, W) float tensor
            The normalised network input.
        sub_pixel_locating_factor, tta
            See :meth:`class_response_maps`.
        mode, fast_stride
            See :meth:`peak_response_maps`; the fast mode cannot be combined with ``tta``.

        Returns
        -------
        ForwardPass
            Its :meth:`ForwardPass.backprop` gives the PRMs of any CRM locations.
        """
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"forward_pass takes one image (1, 3, H, W); got shape {tuple(x.shape)}")
        if mode not in PRM_MODES:
            raise ValueError(f"mode must be one of {PRM_MODES}; got {mode!r}")
        if mode == "fast" and tta:
            raise ValueError("the fast mode cannot be combined with tta: it stops inside one branch")
        # Each submodule's own mode is restored afterwards, not the wrapper's flag for all.
        modes = [(module, module.training) for module in self.modules()]
        grad_flags = [p.requires_grad for p in self.parameters()]
        self.eval()
        # Weight gradients are never needed here; skipping them halves the backward cost.
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            layer = self.feature_layer(x, fast_stride) if mode == "fast" else None
            # a caller's torch.inference_mode() (a notebook's inference idiom) recorded no graph, as
            # torch.no_grad() would have but for enable_grad: "element 0 of tensors does not require grad"
            with torch.inference_mode(False), torch.enable_grad(), excitation_backprop(self), \
                    _capture_input(layer) as captured:
                x = (x.clone() if x.is_inference() else x).detach().requires_grad_(True)
                crms = self.class_response_maps(x, sub_pixel_locating_factor=sub_pixel_locating_factor, tta=tta)
                fold_batch_norms(crms)
        finally:
            for p, flag in zip(self.parameters(), grad_flags):
                p.requires_grad_(flag)
            for module, training in modes:
                module.training = training
        target = captured[0] if captured else x
        return ForwardPass(self, x, crms, target)

    @staticmethod
    def _select_peaks(peak_map, crms, scores, class_threshold, peak_threshold, classes) -> torch.Tensor:
        peak_list = torch.nonzero(peak_map)
        keep = scores[peak_list[:, 0]] >= class_threshold
        if peak_threshold is not None:
            keep &= crms[peak_list[:, 0], peak_list[:, 1], peak_list[:, 2]] > peak_threshold
        if classes is not None:
            wanted = torch.zeros(crms.shape[0], dtype=torch.bool, device=crms.device)
            wanted[torch.as_tensor(list(classes), dtype=torch.long, device=crms.device)] = True
            keep &= wanted[peak_list[:, 0]]
        return peak_list[keep]

    @staticmethod
    def _check_peaks(peaks, crm_shape) -> torch.Tensor:
        # Compared where the peaks are (any device); the caller moves them to the CRMs' device.
        peaks = torch.as_tensor(peaks, dtype=torch.long).reshape(-1, 3)
        limits = torch.tensor(tuple(crm_shape), dtype=torch.long, device=peaks.device)
        if ((peaks < 0) | (peaks >= limits)).any():
            raise ValueError(f"peak locations must lie within the CRM shape {tuple(crm_shape)}; got {peaks.tolist()}")
        return peaks

    def feature_layer(self, x: torch.Tensor, stride: int) -> Optional[tuple[nn.Module, int]]:
        """Where the fast mode stops: the module whose input it back-propagates to.

        A probe forward pass (no gradients; cached per input size) records the
        output stride of every submodule of ``fcn``, rounded from the input and
        output sizes. The fast mode's layer is the input of the last-starting
        module call that takes the signal from a stride of at most ``stride`` to
        a larger one: for EfficientNet-Lite0 at stride 8 the depthwise
        convolution of the first stride-16 block, for ResNet-50 the shortcut
        convolution of ``layer3`` (whose input is ``layer2``'s output), for VGG-16
        the fourth max-pool.

        Parameters
        ----------
        x : (1, 3, H, W) tensor
            An input of the size that will be used.
        stride : int
            The requested output stride (>= 1).

        Returns
        -------
        (module, call) or None
            The module and which of its calls in one forward pass (0 for the
            first), or None when no module goes past ``stride`` (then the fast
            mode back-propagates to the input).
        """
        if int(stride) < 1:
            raise ValueError(f"fast_stride must be >= 1; got {stride}")
        height, width = x.shape[-2:]
        cache = self.__dict__.setdefault("_feature_layers", {})
        key = (id(self.fcn), int(height), int(width), int(stride))
        if key in cache:
            return cache[key]

        def stride_of(tensor) -> Optional[int]:
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or 0 in tensor.shape[-2:]:
                return None
            return max(round(height / tensor.shape[-2]), round(width / tensor.shape[-1]))

        calls: list[list] = []  # [module, call number, input stride, output stride]
        stack: list[list] = []
        counts: dict[int, int] = {}

        def before(module, args):
            number = counts.get(id(module), 0)
            counts[id(module)] = number + 1
            call = [module, number, stride_of(args[0]) if args else None, None]
            calls.append(call)
            stack.append(call)

        def after(module, args, output):
            stack.pop()[3] = stride_of(output)

        handles = []
        for module in self.fcn.modules():
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        try:
            with torch.no_grad():
                self.fcn(x[:1])
        finally:
            for handle in handles:
                handle.remove()
        crossing = [
            (module, number) for module, number, s_in, s_out in calls
            if s_in is not None and s_out is not None and s_in <= stride < s_out
        ]
        layer = crossing[-1] if crossing else None
        cache[key] = layer
        return layer

    def _backprop_peaks(self, target, crms, peak_list, peak_batch_size, progress, size, seeds=None) -> torch.Tensor:
        """PRMs at ``size`` from the gradient reaching ``target`` (the input, or a feature layer);
        ``seeds`` (K, h, w), if given, seed each peak's class map instead of its cell."""
        total = peak_list.shape[0]
        height, width = size
        prms = torch.zeros((total, height, width), dtype=torch.float32, device=target.device)
        if total == 0:
            return prms
        batch = peak_batch_size or _default_peak_batch_size(target.device)
        peak_list = peak_list.to(crms.device)
        done = 0
        for start in range(0, total, batch):
            chunk = peak_list[start : start + batch]
            seed = torch.zeros((len(chunk),) + tuple(crms.shape), dtype=crms.dtype, device=crms.device)
            rows = torch.arange(len(chunk))
            if seeds is None:
                seed[rows, 0, chunk[:, 0], chunk[:, 1], chunk[:, 2]] = 1
            else:
                seed[rows, 0, chunk[:, 0]] = seeds[start : start + len(chunk)]
            if len(chunk) == 1:
                (grad,) = torch.autograd.grad(crms, target, seed[0], retain_graph=True)
                grad = grad[None]
            else:
                (grad,) = torch.autograd.grad(crms, target, seed, retain_graph=True, is_grads_batched=True)
            maps = grad[:, 0].sum(1).clamp(min=0).float()
            if maps.shape[-2:] != (height, width):
                maps = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
            sums = maps.flatten(1).sum(1)
            prms[start : start + len(chunk)] = maps / torch.where(sums > 0, sums, 1)[:, None, None]
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        return prms


@contextmanager
def _capture_input(layer: Optional[tuple[nn.Module, int]]) -> Iterator[list]:
    """Collect the input of ``layer`` = (module, call number) during the block's forward pass."""
    captured: list = []
    if layer is None:
        yield captured
        return
    module, wanted = layer
    calls = [0]

    def hook(_, args):
        if calls[0] == wanted:
            captured.append(args[0])
        calls[0] += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
