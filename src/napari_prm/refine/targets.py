"""What the head learns on one image: semantic and boundary targets on its output grid.

Two kinds of images:

- *pseudo-labelled* (self-training): the instances PRM retrieved with the image-level
  labels; only what is likely right is kept, the rest is ignored
  (:func:`pseudo_target`);
- *corrected*: every instance a user drew or fixed, the rest of the image background
  (:func:`correction_target`).

Targets live on the head's output grid (the network input divided by the head's stride)
and use :data:`IGNORE` where the image says nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ..masks import resize_nearest

#: Target value of pixels that take no part in the loss.
IGNORE = 255


@dataclass
class HeadTarget:
    """Targets of one image on the head's grid.

    Attributes
    ----------
    semantic : (h, w) uint8 ndarray
        0 background, ``c + 1`` the model's class ``c``, :data:`IGNORE` unknown.
    boundary : (h, w) uint8 ndarray
        1 where two instances touch, 0 elsewhere, :data:`IGNORE` unknown.
    """

    semantic: np.ndarray
    boundary: np.ndarray

    def flipped(self) -> HeadTarget:
        """The targets of the horizontally mirrored image."""
        return HeadTarget(np.ascontiguousarray(self.semantic[:, ::-1]), np.ascontiguousarray(self.boundary[:, ::-1]))


def paint_instances(masks: np.ndarray, order: Sequence[int] | None = None) -> np.ndarray:
    """Instance ``i`` of ``(M, H, W)`` masks painted as label ``i + 1``; earlier in ``order`` wins overlaps."""
    masks = np.asarray(masks, dtype=bool)
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    for i in (range(len(masks)) if order is None else order):
        labels[masks[i] & (labels == 0)] = i + 1
    return labels


def _contacts(labels: np.ndarray) -> np.ndarray:
    """Pixels of an instance with a pixel of another instance among their 8 neighbours."""
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    contact = np.zeros(labels.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                other = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                contact |= (other != labels) & (other > 0)
    return contact & (labels > 0)


def _near_edges(labels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` of a change of label (instance borders, with background)."""
    if radius < 1:
        return np.zeros(labels.shape, dtype=bool)
    size = 2 * int(radius) + 1
    return ndi.maximum_filter(labels, size=size) != ndi.minimum_filter(labels, size=size)


def _semantic(labels: np.ndarray, instance_classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Label image -> class targets: 0 background, ``c + 1``, IGNORE for unknown classes."""
    classes = np.asarray(instance_classes, dtype=np.int64)
    lookup = np.concatenate([[0], np.where((classes >= 0) & (classes < num_classes), classes + 1, IGNORE)])
    return lookup[labels].astype(np.uint8)


def correction_target(labels: np.ndarray, instance_classes: Sequence[int], grid: tuple[int, int],
                      *, num_classes: int) -> HeadTarget:
    """Targets of a corrected image: its instances, everything else background.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance ``i`` is label ``i + 1``, 0 background (see :func:`paint_instances`).
    instance_classes : (M,) int sequence
        Class index of each instance; -1 (or any index outside the model's classes) marks
        an instance of unknown class: it is ignored by the semantic loss, its contacts
        still teach the boundaries.
    grid : (h, w)
        The head's output grid.
    num_classes : int
        The model's classes.
    """
    small = resize_nearest(np.asarray(labels), grid)
    return HeadTarget(_semantic(small, np.asarray(instance_classes), num_classes),
                      _contacts(small).astype(np.uint8))


def background_from_crms(crms: np.ndarray, present: Sequence[int], shape: tuple[int, int],
                         *, threshold: float = 0.25) -> np.ndarray:
    """Pixels where no present class responds: each present class's CRM below ``threshold`` of its maximum.

    Parameters
    ----------
    crms : (C, h, w) float ndarray
    present : sequence of int
        Classes the image-level labels say are present.
    shape : (H, W)
        Size of the returned mask (CRMs are resized bilinearly).
    threshold : float
        Share of each class's positive maximum.

    Returns
    -------
    (H, W) bool ndarray
        All True when no class is present.
    """
    background = np.ones(shape, dtype=bool)
    for c in present:
        crm = np.asarray(crms[int(c)], dtype=np.float32)
        if crm.shape != tuple(shape):
            crm = np.asarray(Image.fromarray(crm).resize(tuple(shape)[::-1], Image.Resampling.BILINEAR))
        top = float(crm.max())
        if top > 0:
            background &= crm < threshold * top
    return background


def _crm_shares(crms: np.ndarray, present: Sequence[int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per grid pixel: the largest share of its maximum that a present class's CRM reaches, and that class."""
    shares = np.zeros((len(present),) + tuple(grid), np.float32)
    for row, c in enumerate(present):
        crm = np.asarray(crms[int(c)], dtype=np.float32)
        crm = np.asarray(Image.fromarray(crm).resize(tuple(grid)[::-1], Image.Resampling.BILINEAR))
        top = float(crm.max())
        if top > 0:
            shares[row] = np.clip(crm / top, 0, None)
    winner = shares.argmax(0)
    return shares.max(0), np.asarray(present, np.int64)[winner]


def pseudo_target(masks: np.ndarray, instance_classes: Sequence[int], scores: Sequence[float],
                  crms: np.ndarray, present: Sequence[int], grid: tuple[int, int], *, num_classes: int,
                  min_relative_score: float = 0.0, border: int = 1,
                  background_threshold: float = 0.25, seed_threshold: float | None = None) -> HeadTarget:
    """Targets of a pseudo-labelled image, with what is uncertain ignored.

    Parameters
    ----------
    masks : (M, H, W) bool ndarray
        Instances retrieved by PRM on the image, with peaks of the present classes only.
    instance_classes : (M,) int sequence
    scores : (M,) float sequence
        Their retrieval scores; higher-scoring instances win overlaps.
    crms : (C, h, w) float ndarray
        The image's class response maps.
    present : sequence of int
        Classes of the image-level labels. An image without any is all background.
    grid : (h, w)
        The head's output grid.
    num_classes : int
    min_relative_score : float
        Instances scoring below this share of the image's best score are not trusted:
        their pixels are ignored, neither object nor background.
    border : int
        Grid pixels ignored on each side of every pseudo-instance's border.
    background_threshold : float
        See :func:`background_from_crms`: background is where no present class responds;
        what is neither an instance nor background (an object PRM did not retrieve) is
        ignored.
    seed_threshold : float or None
        Outside the instances, a pixel where a present class's CRM reaches this share of
        its maximum (the highest share among the present classes) is labelled with that
        class: the class is surely there, though PRM retrieved no instance for it. None:
        such pixels are ignored.

    Returns
    -------
    HeadTarget
    """
    masks = np.asarray(masks, dtype=bool).reshape((-1,) + tuple(np.shape(masks)[-2:]))
    classes = np.asarray(instance_classes, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    present = [int(c) for c in present]
    if not present:
        return HeadTarget(np.zeros(grid, np.uint8), np.zeros(grid, np.uint8))
    shape = masks.shape[1:] if len(masks) else crms.shape[1:]
    trusted = np.ones(len(masks), dtype=bool)
    if len(masks) and min_relative_score > 0 and scores.max() > 0:
        trusted = scores >= min_relative_score * scores.max()
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    labels = resize_nearest(paint_instances(masks, order), grid)
    semantic = _semantic(labels, np.where(trusted, classes, -1), num_classes)
    background = resize_nearest(background_from_crms(crms, present, shape, threshold=background_threshold), grid)
    semantic[(labels == 0) & ~background] = IGNORE
    if seed_threshold is not None:
        share, best = _crm_shares(crms, present, grid)
        seeds = (labels == 0) & (share >= seed_threshold)
        semantic[seeds] = best[seeds] + 1
    semantic[_near_edges(labels, border)] = IGNORE
    boundary = np.where(semantic == IGNORE, IGNORE, 0).astype(np.uint8)
    boundary[_contacts(labels)] = 1
    return HeadTarget(semantic, boundary)
