"""Proposal stacks from arrays, and the union of several stacks without near-duplicates."""

from __future__ import annotations

import numpy as np

from .. import _validate as check
from ..masks import greedy_mask_nms

__all__ = ["proposals_from_labels", "proposals_from_masks", "combine_proposals"]

# Masks are compared on a grid of at most this many points when deduplicating
# given stacks, and of a quarter of that for the generator's own candidates.
_DEDUPE_PIXELS = 16384


def _grid_step(shape: tuple[int, int], pixels: int) -> int:
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / pixels))))


def proposals_from_labels(label_image) -> np.ndarray:
    """One proposal per label of a label image (a napari Labels layer's data).

    Parameters
    ----------
    label_image : (H, W) int array-like, or an object with such a ``.data``
        0 is background; labels become proposals in increasing label order.

    Returns
    -------
    proposals : (L, H, W) bool ndarray
    """
    if not isinstance(label_image, np.ndarray) and hasattr(label_image, "data"):
        label_image = label_image.data
    labels = np.asarray(label_image)
    if labels.ndim != 2:
        raise ValueError(f"label image: expected (H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"label image: expected integer labels, got dtype {labels.dtype}")
    values = np.unique(labels)
    values = values[values != 0]
    if values.size and values.min() < 0:
        raise ValueError("label image: negative labels")
    return labels[None] == values[:, None, None]


def proposals_from_masks(stack) -> np.ndarray:
    """An (N, H, W) stack (or a sequence of (H, W) masks) as bool proposals, order kept.

    Parameters
    ----------
    stack : (N, H, W) array-like
        The masks; any non-zero value is inside (NaN is refused).
    """
    masks = np.asarray(stack)
    if masks.ndim != 3:
        raise ValueError(f"mask stack: expected (N, H, W), got shape {masks.shape}")
    check.finite_array("mask stack", masks)  # NaN != 0 would count as inside
    return masks if masks.dtype == bool else masks != 0


def combine_proposals(
    *stacks: np.ndarray,
    iou_threshold: float = 0.9,
    order: str = "interleave",
    max_proposals: int | None = None,
) -> np.ndarray:
    """Union of proposal stacks, near-duplicates removed.

    Parameters
    ----------
    *stacks : (N_i, H, W) bool ndarray
        Ranked stacks of the same (H, W).
    iou_threshold : float, optional
        A proposal whose IoU with an earlier kept one is at least this is dropped.
    order : {"interleave", "concatenate"}, optional
        "interleave" takes the first of every stack, then the second, ..., so
        each source reaches the top of the ranking; "concatenate" keeps stack order.
    max_proposals : int, optional
        Cap on the number returned.

    Returns
    -------
    proposals : (N, H, W) bool ndarray

    Notes
    -----
    Identical masks are always merged; other overlaps are measured on a grid of
    at most 16384 points, so masks too small to hit it are only merged when identical.
    """
    if not stacks:
        raise ValueError("combine_proposals: expected at least one stack")
    check.finite_float("iou_threshold", iou_threshold, low=0, high=1)
    max_proposals = check.integer("max_proposals", max_proposals, low=0, optional=True)
    stacks = [proposals_from_masks(s) for s in stacks]
    shapes = {s.shape[1:] for s in stacks}
    if len(shapes) != 1:
        raise ValueError(f"combine_proposals: stacks of different sizes {sorted(shapes)}")
    if order not in ("interleave", "concatenate"):
        raise ValueError(f"order: expected 'interleave' or 'concatenate', got {order!r}")
    masks = np.concatenate(stacks)
    if order == "interleave":
        rank = np.concatenate([np.arange(len(s)) for s in stacks])
        masks = masks[np.argsort(rank, kind="stable")]
    seen, unique = set(), []
    for index, mask in enumerate(masks):
        key = np.packbits(mask).tobytes()
        if key not in seen:
            seen.add(key)
            unique.append(index)
    masks = masks[unique]
    if not len(masks):  # every stack empty (a blank image, a head that cut nothing)
        return masks
    step = _grid_step(masks.shape[1:], _DEDUPE_PIXELS)
    grid = masks[:, ::step, ::step].reshape(len(masks), -1)
    limit = len(masks) if max_proposals is None else int(max_proposals)
    return masks[greedy_mask_nms(grid, iou_threshold, max_kept=limit)]
