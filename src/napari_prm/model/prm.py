"""The PRM network: a fully convolutional classifier with peak stimulation and peak backpropagation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _validate as check
from .peak_backprop import excitation_backprop
from .peak_stimulation import PeakFilter, find_peaks, peak_stimulation


@dataclass
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


def _default_peak_batch_size(device: torch.device) -> int:
    # On the CPU one-at-a-time was as fast as batching (docs/benchmarks.md); on a GPU batches pay.
    return 1 if device.type == "cpu" else 16


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

    def class_response_maps(self, x: torch.Tensor) -> torch.Tensor:
        """CRMs ``(B, C, h, w)``, upsampled by ``sub_pixel_locating_factor``."""
        crms = self.fcn(x)
        if crms.dim() != 4:
            raise ValueError(f"the fcn must return (B, C, h, w) maps; got shape {tuple(crms.shape)}")
        if self.sub_pixel_locating_factor > 1:
            crms = F.interpolate(
                crms, scale_factor=self.sub_pixel_locating_factor, mode="bilinear", align_corners=True
            )
        return crms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Peak-stimulated class scores ``(B, C)``."""
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

        Returns
        -------
        PeakResponseResult
        """
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"peak_response_maps takes one image (1, 3, H, W); got shape {tuple(x.shape)}")
        class_threshold = check.finite_float("class_threshold", class_threshold)
        peak_threshold = check.finite_float("peak_threshold", peak_threshold, optional=True)
        peak_batch_size = check.positive_int("peak_batch_size", peak_batch_size, optional=True)
        was_training = self.training
        grad_flags = [p.requires_grad for p in self.parameters()]
        self.eval()
        # Weight gradients are never needed here; skipping them halves the backward cost.
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            with torch.enable_grad(), excitation_backprop(self):
                x = x.detach().requires_grad_(True)
                crms = self.class_response_maps(x)
                crm_values = crms.detach()
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
                prms = self._backprop_peaks(x, crms, peak_list, peak_batch_size, progress)
        finally:
            for p, flag in zip(self.parameters(), grad_flags):
                p.requires_grad_(flag)
            self.train(was_training)
        return PeakResponseResult(
            scores=scores.float().cpu(),
            crms=crm_values[0].float().cpu(),
            peaks=peak_list.cpu(),
            peak_values=values.float().cpu(),
            prms=prms.cpu(),
        )

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
        peaks = torch.as_tensor(peaks, dtype=torch.long).reshape(-1, 3)
        limits = torch.tensor(crm_shape)
        if ((peaks < 0) | (peaks >= limits)).any():
            raise ValueError(f"peak locations must lie within the CRM shape {tuple(crm_shape)}; got {peaks.tolist()}")
        return peaks

    def _backprop_peaks(self, x, crms, peak_list, peak_batch_size, progress) -> torch.Tensor:
        total = peak_list.shape[0]
        height, width = x.shape[-2:]
        prms = torch.zeros((total, height, width), dtype=torch.float32, device=x.device)
        if total == 0:
            return prms
        batch = peak_batch_size or _default_peak_batch_size(x.device)
        peak_list = peak_list.to(crms.device)
        done = 0
        for start in range(0, total, batch):
            chunk = peak_list[start : start + batch]
            seeds = torch.zeros((len(chunk),) + tuple(crms.shape), dtype=crms.dtype, device=crms.device)
            seeds[torch.arange(len(chunk)), 0, chunk[:, 0], chunk[:, 1], chunk[:, 2]] = 1
            if len(chunk) == 1:
                (grad,) = torch.autograd.grad(crms, x, seeds[0], retain_graph=True)
                grad = grad[None]
            else:
                (grad,) = torch.autograd.grad(crms, x, seeds, retain_graph=True, is_grads_batched=True)
            maps = grad[:, 0].sum(1).clamp(min=0).float()
            sums = maps.flatten(1).sum(1)
            prms[start : start + len(chunk)] = maps / torch.where(sums > 0, sums, 1)[:, None, None]
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        return prms
