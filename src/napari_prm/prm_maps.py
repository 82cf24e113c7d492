"""Peak response maps at the image's size: `resize_prms`, and `ScaledPRMs`, which holds them at
the network's grid and resizes a map when it is read.

Backpropagation gives a PRM on the network's input grid (448×448 by default); a user sees it
at the image's size. 50 maps of a 12-megapixel image are 2.4 GB at that size, 40 MB at the
network's: `PRMPredictor` hands them out as a `ScaledPRMs`, and what needs one map at the
image's size (napari showing a slice, an instance's ``prm``) builds only that one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .scaled import LazyArray, ScaledStack, split_index

__all__ = ["InstancePRM", "ScaledPRMs", "resize_prms"]


def resize_prms(prms: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (K, h, w) PRMs to ``shape``, clipped at 0 and renormalised to sum 1.

    Each map's sum is taken row by row (float32 rows, their total in float64), so a map comes
    out the same, bit for bit, whatever the other maps beside it and the number of threads
    (a single sum over a whole map is split between threads, and rounds differently).

    Parameters
    ----------
    prms : (K, h, w) float ndarray or tensor
    shape : (int, int)
        ``(H, W)``.

    Returns
    -------
    (K, H, W) float32 ndarray
        Each map sums to 1, or is 0 everywhere when nothing of it was positive.
    """
    prms = torch.as_tensor(prms, dtype=torch.float32)
    if prms.shape[0] == 0:
        return np.zeros((0,) + tuple(shape), dtype=np.float32)
    if tuple(prms.shape[-2:]) != tuple(shape):
        # clamped and divided in place: one (K, H, W) float32 stack at the image's size is
        # made, not three (50 PRMs of a 12-megapixel image: 2.4 GB each)
        prms = F.interpolate(prms[:, None], size=tuple(shape), mode="bilinear", align_corners=False)[:, 0].clamp_(min=0)
    else:
        prms = prms.clone()  # divided in place below: the caller's maps stay as they are
    sums = prms.sum(dim=-1).double().sum(dim=-1).float()
    prms.div_(torch.where(sums > 0, sums, torch.ones_like(sums))[:, None, None])
    return prms.numpy().astype(np.float32, copy=False)


class ScaledPRMs(ScaledStack):
    """(K, H, W) peak response maps held at the network's grid: ``resize_prms(maps, shape)``,
    each map resized when read.

    It reads as that float32 ndarray (see :class:`napari_prm.scaled.ScaledStack`): ``prms[k]``
    is map ``k`` at ``(H, W)``, equal bit for bit to ``resize_prms(maps, shape)[k]``;
    ``prms[keep]`` (a slice, an index or boolean array) is another `ScaledPRMs`;
    ``np.asarray(prms)`` and the ndarray methods build the whole stack. It is read-only.

    Parameters
    ----------
    maps : (K, h, w) float32 ndarray
        The maps at the network's grid (as back-propagated; each summing to 1 or all 0).
    shape : (int, int)
        ``(H, W)``: the image's size.

    Attributes
    ----------
    maps : (K, h, w) float32 ndarray
    shape : (int, int, int)
        ``(K, H, W)``.

    Examples
    --------
    >>> maps = np.zeros((1, 2, 2), np.float32); maps[0, 0, 0] = 1
    >>> prms = ScaledPRMs(maps, (4, 4))
    >>> prms.shape, prms.nbytes, float(prms[0].sum())
    ((1, 4, 4), 16, 1.0)
    """

    read_dtype = np.dtype(np.float32)

    def __init__(self, maps: np.ndarray | torch.Tensor, shape: tuple[int, int]):
        if isinstance(maps, torch.Tensor):
            maps = maps.detach().cpu().numpy()
        super().__init__(np.asarray(maps, dtype=np.float32), shape)

    @property
    def maps(self) -> np.ndarray:
        """(K, h, w) float32 ndarray: the maps at the network's grid (``planes``)."""
        return self.planes

    def _resized(self, planes: np.ndarray) -> np.ndarray:
        return resize_prms(planes, self.shape[1:])


class InstancePRM(LazyArray):
    """An instance's (H, W) peak response map, built from a `ScaledPRMs` when it is read: the
    map of its peak plus those of the peaks merged into it.

    It reads as that float32 ndarray (see :class:`napari_prm.scaled.LazyArray`), equal bit for
    bit to summing ``prms.iter_planes(peaks)`` in order; it holds only the stack it shares with
    `Prediction.prms` and the peaks' indices (an image-sized map of a 12-megapixel image is
    48 MB). ``prm[index]`` builds the map and indexes it. It is read-only.

    Parameters
    ----------
    prms : ScaledPRMs
        The prediction's maps.
    peaks : sequence of int
        Maps of ``prms`` to add, the instance's own first.

    Attributes
    ----------
    prms : ScaledPRMs
    peaks : tuple of int
    shape : (int, int)
        ``(H, W)``.
    """

    def __init__(self, prms: ScaledPRMs, peaks):
        self.prms, self.peaks = prms, tuple(int(k) for k in peaks)
        if not self.peaks:
            raise ValueError("InstancePRM: expected at least one peak")
        self.shape = tuple(prms.shape[1:])

    ndim = 2
    dtype = np.dtype(np.float32)

    @property
    def size(self) -> int:
        """The number of pixels: ``H * W``."""
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes it holds of its own (the maps are `Prediction.prms`'s)."""
        return 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return self.to_array()[split_index(index, 2)]

    def to_array(self) -> np.ndarray:
        """The map as a new (H, W) float32 ndarray: the sum of the maps of ``peaks``, in order."""
        planes = self.prms.iter_planes(self.peaks)
        total = next(planes).copy()
        for plane in planes:
            total += plane
        return total

    def __repr__(self) -> str:
        return f"InstancePRM(peaks {list(self.peaks)}, {self.shape[0]}×{self.shape[1]})"
