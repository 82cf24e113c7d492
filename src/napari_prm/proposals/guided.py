"""PRM-guided proposals: regions shaped like what each peak response map sees."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .. import _validate as check
from ..io.images import as_rgb_float
from ..masks import nearest_indices, resize_nearest
from .generate import _image_shape, _shrink, _superpixels
from .stacks import combine_proposals

__all__ = ["prm_guided_proposals"]


def prm_guided_proposals(
    image: np.ndarray,
    prms: np.ndarray,
    *,
    thresholds: tuple[float, ...] = (0.5, 0.25, 0.1),
    smoothing: float = 0.02,
    working_size: int = 320,
    iou_threshold: float = 0.9,
) -> np.ndarray:
    """Proposals shaped like what each peak response map sees.

    Parameters
    ----------
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        The image the PRMs belong to (its superpixels shape the proposals).
    prms : (K, H, W) float ndarray
        Peak response maps at the image's size.
    thresholds : tuple of float, optional
        Levels as fractions of each snapped PRM's maximum, in the order their
        proposals are ranked.
    smoothing : float, optional
        Gaussian sigma applied to each PRM first, as a fraction of the square
        root of the image area: PRMs are sparse and their responses need joining up.
    working_size : int, optional
        Long side (pixels) of the image the superpixels are computed on.
    iou_threshold : float, optional
        Proposals with IoU at least this with a better-ranked one are dropped.

    Returns
    -------
    proposals : (N, H, W) bool ndarray
        Ranked level by level (every peak's region at the first level, then at
        the second, ...), deduplicated.

    Notes
    -----
    Each smoothed PRM is snapped to Felzenszwalb superpixels by averaging it
    within each superpixel; at every level, the connected region above it that
    holds the most response becomes a proposal, with its holes filled.
    """
    height, width = _image_shape(image)
    prms = np.asarray(prms)
    if prms.ndim != 3 or prms.shape[1:] != (height, width):
        raise ValueError(
            f"prms: expected a (K, {height}, {width}) array matching the image, got {prms.shape}"
        )
    check.finite_array("prms", prms)
    check.finite_floats("thresholds", thresholds, low=0, high=1, low_open=True, high_open=True)
    check.finite_float("smoothing", smoothing, low=0)
    check.positive_int("working_size", working_size)
    check.finite_float("iou_threshold", iou_threshold, low=0, high=1)
    small = _shrink(as_rgb_float(image, dtype=np.float64), working_size)
    superpixels = _superpixels(small, 100).ravel()
    sp_size = np.maximum(np.bincount(superpixels), 1)
    small_shape = small.shape[:2]
    # Each image pixel's cell on the working grid: PRMs are area-averaged onto it.
    cell = (
        nearest_indices(small_shape[0], height)[:, None] * small_shape[1]
        + nearest_indices(small_shape[1], width)[None, :]
    ).ravel()
    cell_size = np.maximum(np.bincount(cell, minlength=small.shape[0] * small.shape[1]), 1)
    sigma = smoothing * np.sqrt(small_shape[0] * small_shape[1])
    regions: list[list[np.ndarray]] = [[] for _ in thresholds]
    for prm in prms:
        pooled = np.bincount(cell, weights=np.maximum(prm, 0).ravel(), minlength=len(cell_size))
        smooth = (pooled / cell_size).reshape(small_shape)
        smooth = ndi.gaussian_filter(smooth, sigma) if sigma > 0 else smooth
        density = np.bincount(superpixels, weights=smooth.ravel(), minlength=len(sp_size)) / sp_size
        snapped = density[superpixels].reshape(small_shape)
        peak = snapped.max()
        if not peak > 0:
            continue
        for level, threshold in enumerate(thresholds):
            components, count = ndi.label(snapped >= threshold * peak)
            mass = ndi.sum(snapped, components, np.arange(1, count + 1))
            regions[level].append(ndi.binary_fill_holes(components == 1 + int(np.argmax(mass))))
    ordered = [mask for level in regions for mask in level]
    if not ordered:
        return np.zeros((0, height, width), bool)
    return resize_nearest(combine_proposals(np.stack(ordered), iou_threshold=iou_threshold),
                          (height, width))
