"""Peak stimulation: local maxima of class response maps (step 2 of PRM)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PeakFilter = str | float | Callable[[torch.Tensor], torch.Tensor] | None


def _filter_threshold(crms: torch.Tensor, peak_filter: PeakFilter) -> torch.Tensor | None:
    """Per image and class threshold, shaped ``(B, C, 1, 1)``, or None."""
    if peak_filter is None:
        return None
    flat = crms.flatten(2)
    if callable(peak_filter):
        return peak_filter(crms)
    if isinstance(peak_filter, str):
        if peak_filter == "median":
            # torch.median takes the lower of the two middle values, as the original does.
            threshold = flat.median(dim=2).values
        elif peak_filter == "mean":
            threshold = flat.mean(dim=2)
        elif peak_filter == "max":
            threshold = flat.amax(dim=2)
        else:
            raise ValueError(
                f"peak_filter must be 'median', 'mean', 'max', a number, a callable or None; got {peak_filter!r}"
            )
        return threshold[..., None, None]
    return torch.full_like(crms[:, :, :1, :1], float(peak_filter))


def find_peaks(crms: torch.Tensor, win_size: int = 3, peak_filter: PeakFilter = "median") -> torch.Tensor:
    """Boolean map of the local maxima of class response maps.

    Parameters
    ----------
    crms : (B, C, h, w) float tensor
        Class response maps.
    win_size : int
        Odd side of the square window a peak must be the maximum of.
    peak_filter : {'median', 'mean', 'max'}, float, callable or None
        A peak is kept only where its value is >= this per-map threshold.

    Returns
    -------
    peak_map : (B, C, h, w) bool tensor
        True at peaks. Within a window, ties go to the first position in
        row-major order (the index ``max_pool2d`` returns).
    """
    if crms.dim() != 4:
        raise ValueError(f"crms must be (B, C, h, w); got shape {tuple(crms.shape)}")
    if win_size < 1 or win_size % 2 != 1:
        raise ValueError(f"win_size must be a positive odd integer; got {win_size}")
    offset = (win_size - 1) // 2
    crms = crms.detach()
    padded = F.pad(crms, (offset,) * 4, value=float("-inf"))
    _, _, padded_h, padded_w = padded.shape
    _, indices = F.max_pool2d(padded, kernel_size=win_size, stride=1, return_indices=True)
    h, w = crms.shape[-2:]
    rows = torch.arange(offset, offset + h, device=crms.device)
    cols = torch.arange(offset, offset + w, device=crms.device)
    own_index = rows[:, None] * padded_w + cols[None, :]
    peak_map = indices == own_index
    threshold = _filter_threshold(crms, peak_filter)
    if threshold is not None:
        peak_map &= crms >= threshold
    return peak_map


class _PeakStimulation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, crms: torch.Tensor, peak_map: torch.Tensor) -> torch.Tensor:
        peak_map = peak_map.to(crms.dtype)
        counts = peak_map.flatten(2).sum(2)
        scores = (crms * peak_map).flatten(2).sum(2) / counts.clamp(min=1)
        ctx.save_for_backward(peak_map)
        return scores

    @staticmethod
    def backward(ctx, grad_scores: torch.Tensor):
        (peak_map,) = ctx.saved_tensors
        # Unscaled, as in the original release: every peak receives the full score gradient.
        return peak_map * grad_scores[..., None, None], None


def peak_stimulation(
    crms: torch.Tensor, win_size: int = 3, peak_filter: PeakFilter = "median"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores as the mean of the peak values of each response map.

    Parameters
    ----------
    crms : (B, C, h, w) float tensor
    win_size, peak_filter
        See :func:`find_peaks`.

    Returns
    -------
    scores : (B, C) tensor
        Mean peak value per map (0 where a map has no peak, which only a
        numeric filter above the map's maximum can cause).
    peak_map : (B, C, h, w) bool tensor
        The peaks. In the backward pass the gradient of each score reaches
        every peak of its map, unscaled, and no other position.
    """
    peak_map = find_peaks(crms, win_size=win_size, peak_filter=peak_filter)
    return _PeakStimulation.apply(crms, peak_map), peak_map
