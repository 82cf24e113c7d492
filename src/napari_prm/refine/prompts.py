"""What the head is told about one peak: its prompt, three maps on the head's grid.

=======  ====================================================================
channel  holds
=======  ====================================================================
0        the peak response map, area-resized to the grid, divided by its maximum
1        a Gaussian (sigma 1.5 grid pixels) at the peak
2        the class response map of the peak's class, resized, clipped at 0 and
         divided by its maximum
3        the same map divided by the largest response of any class in the image
=======  ====================================================================

Channel 0 says which object the peak stands for, channel 1 where the peak is, channel 2
where the peak's class responds, channel 3 how strongly against the image's other
classes (a peak of a class the image does not show tends to respond weakly).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..prm_maps import ScaledPRMs

PROMPT_CHANNELS = 4
PEAK_SIGMA = 1.5


def _normalised(maps: torch.Tensor) -> torch.Tensor:
    top = maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    return (maps.clamp(min=0) / top).float()


def to_grid(yx: np.ndarray, image_shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Image ``(y, x)`` pixel coordinates as (float) coordinates on the grid (pixel centres matched)."""
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    scale = np.array([grid[0] / image_shape[0], grid[1] / image_shape[1]])
    return (yx + 0.5) * scale - 0.5


def _pooled(prms: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(n, H, W) maps averaged down to ``grid``: (n, gh, gw)."""
    return F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(prms, dtype=np.float32))[:, None], grid)[:, 0]


def peak_prompts(prms: np.ndarray, peak_classes: np.ndarray, peaks_yx: np.ndarray, crms: np.ndarray,
                 grid: tuple[int, int]) -> np.ndarray:
    """The prompts of K peaks.

    Parameters
    ----------
    prms : (K, H, W) float ndarray or ScaledPRMs
        Peak response maps at the image's size (a `ScaledPRMs` is read one map at a time).
    peak_classes : (K,) int ndarray
    peaks_yx : (K, 2) float ndarray
        Peak ``(y, x)`` in image pixels.
    crms : (C, h, w) float ndarray
        The image's class response maps.
    grid : (gh, gw)
        The head's output grid.

    Returns
    -------
    (K, 4, gh, gw) float32 ndarray
    """
    count = len(prms)
    grid = tuple(int(g) for g in grid)
    if count == 0:
        return np.zeros((0, PROMPT_CHANNELS) + grid, np.float32)
    image_shape = tuple(prms.shape[1:])
    if isinstance(prms, ScaledPRMs):  # one map at the image's size at a time, not the whole stack
        response = torch.cat([_pooled(plane[None], grid) for plane in prms.iter_planes()])
    else:
        response = _pooled(prms, grid)
    rows, columns = torch.meshgrid(torch.arange(grid[0], dtype=torch.float32),
                                   torch.arange(grid[1], dtype=torch.float32), indexing="ij")
    centres = torch.from_numpy(to_grid(peaks_yx, image_shape, grid)).float()
    gaussian = torch.exp(-((rows[None] - centres[:, 0, None, None]) ** 2
                           + (columns[None] - centres[:, 1, None, None]) ** 2) / (2 * PEAK_SIGMA ** 2))
    crms = np.asarray(crms, dtype=np.float32)
    class_maps = torch.from_numpy(crms[np.asarray(peak_classes, dtype=np.int64)])
    class_maps = F.interpolate(class_maps[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0]
    strongest = max(float(crms.max()), 1e-12)
    prompts = torch.stack([_normalised(response), gaussian, _normalised(class_maps),
                           (class_maps.clamp(min=0) / strongest).clamp(max=1)], dim=1)
    return prompts.numpy()
