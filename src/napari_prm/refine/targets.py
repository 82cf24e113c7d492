"""What the head learns for each peak: the mask of the instance the peak stands for.

Targets live on the head's output grid (the network input divided by the head's stride):
1 on the peak's instance, 0 where the peak's instance is surely not, :data:`IGNORE` where
the image says nothing. Two kinds of images:

- *corrected* (:func:`correction_targets`): every instance of the model's classes is
  known, so a peak on one of its class learns it exactly; a peak on the background or on an
  object of another class learns nothing (or, with ``negatives``, an empty mask);
- *pseudo-labelled*, self-training (:func:`pseudo_targets`): the instances PRM retrieved
  with the image-level labels; only trusted instances become targets, and what is neither
  one of them nor surely background is ignored.

A peak stands for the instance holding the largest share of its peak response map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ..masks import resize_nearest

#: Target value of pixels that take no part in the loss.
IGNORE = 255


def paint_instances(masks: np.ndarray, order: Sequence[int] | None = None) -> np.ndarray:
    """Instance ``i`` of ``(M, H, W)`` masks painted as label ``i + 1``; earlier in ``order`` wins overlaps."""
    masks = np.asarray(masks, dtype=bool)
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    for i in (range(len(masks)) if order is None else order):
        labels[masks[i] & (labels == 0)] = i + 1
    return labels


def peak_owners(prms: np.ndarray, labels: np.ndarray, *,
                ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each peak, the label holding the largest share of its PRM, and that share.

    Parameters
    ----------
    prms : (K, H, W) float ndarray
    labels : (H, W) int ndarray
        0 is background (it can be the owner).
    ignore : (H, W) bool ndarray, optional
        Pixels that belong to no label, background included (a PASCAL VOC devkit's void: the
        outlines of its objects): their PRM mass counts for none, so that a PRM spread over an
        object and its outline is the object's, not the background's.

    Returns
    -------
    owners : (K,) int64 ndarray
    shares : (K,) float64 ndarray
        Of the PRM's mass outside ``ignore``; 0 for a PRM without such mass (its owner is then 0).
    """
    prms = np.asarray(prms, dtype=np.float64)
    flat = np.asarray(labels, dtype=np.int64).ravel()
    counted = None if ignore is None else ~np.asarray(ignore, bool).ravel()
    count = int(flat.max(initial=0)) + 1
    owners, shares = np.zeros(len(prms), np.int64), np.zeros(len(prms))
    for k, prm in enumerate(prms):
        weights = prm.ravel() if counted is None else prm.ravel() * counted
        mass = np.bincount(flat, weights=weights, minlength=count)
        total = mass.sum()
        if total > 0:
            owners[k] = int(mass.argmax())
            shares[k] = mass[owners[k]] / total
    return owners, shares


def _near_edges(labels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` of a change of label (instance borders, with background)."""
    if radius < 1:
        return np.zeros(labels.shape, dtype=bool)
    size = 2 * int(radius) + 1
    return ndi.maximum_filter(labels, size=size) != ndi.minimum_filter(labels, size=size)


def correction_targets(labels: np.ndarray, label_classes: Mapping[int, int], prms: np.ndarray,
                       peak_classes: Sequence[int], grid: tuple[int, int], *,
                       negatives: bool = False, ignore: np.ndarray | None = None) -> np.ndarray:
    """Targets of the peaks of a corrected image.

    Parameters
    ----------
    labels : (H, W) int ndarray
        The corrected instances, 0 background.
    label_classes : mapping of int to int
        Class of each label; a label missing from it (or mapped to -1) has no known class
        and is the target of a peak of any class.
    prms : (K, H, W) float ndarray
        The peaks' response maps at the image's size.
    peak_classes : (K,) int sequence
    grid : (gh, gw)
    negatives : bool
        A peak whose PRM lies mostly on the background or on an instance of another known
        class learns an empty mask (all 0) instead of nothing (all :data:`IGNORE`).
    ignore : (H, W) bool ndarray, optional
        Pixels the correction says nothing of (a PASCAL VOC devkit's void: object outlines):
        :data:`IGNORE` in every target, and of no instance nor the background when a peak's
        instance is chosen (`peak_owners`).

    Returns
    -------
    (K, gh, gw) uint8 ndarray
        1 on the peak's instance, 0 elsewhere; for a peak on no instance of its class, all
        :data:`IGNORE` (all 0 with ``negatives``).

    Notes
    -----
    What is unlabelled in a corrected image is not surely background: the user labels the
    instances of the model's classes, and objects of other classes stay 0. The head does not
    know classes, so an empty target on such an object teaches it to shrink every mask (on
    two folds of coco128 train, a head learnt from 25 corrected images gave masks of 0.16 and
    0.05 of their objects' area with empty targets, 0.61 and 1.34 without). Whether a peak's
    class is right is for its instance's confidence to judge.
    """
    labels = np.asarray(labels)
    owners, _ = peak_owners(prms, labels, ignore=ignore)
    small = resize_nearest(labels, grid)
    targets = np.full((len(owners),) + tuple(grid), 0 if negatives else IGNORE, np.uint8)
    for k, (owner, peak_class) in enumerate(zip(owners, peak_classes)):
        owner_class = label_classes.get(int(owner), -1)
        if owner and (owner_class < 0 or owner_class == int(peak_class)):
            targets[k] = small == owner
    if ignore is not None:
        targets[:, resize_nearest(np.asarray(ignore, bool), grid)] = IGNORE
    return targets


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


def pseudo_targets(masks: np.ndarray, instance_classes: Sequence[int], scores: Sequence[float],
                   prms: np.ndarray, peak_classes: Sequence[int], crms: np.ndarray, present: Sequence[int],
                   grid: tuple[int, int], *, min_relative_score: float = 0.5, min_share: float = 0.5,
                   border: int = 1, background_threshold: float = 0.25) -> np.ndarray:
    """Targets of the peaks of a pseudo-labelled image, what is uncertain ignored.

    Parameters
    ----------
    masks : (M, H, W) bool ndarray
        Instances retrieved by PRM on the image with the peaks of its labelled classes.
    instance_classes : (M,) int sequence
    scores : (M,) float sequence
        Their retrieval scores; higher-scoring instances win overlaps.
    prms : (K, H, W) float ndarray
        The peaks' response maps.
    peak_classes : (K,) int sequence
    crms : (C, h, w) float ndarray
        The image's class response maps.
    present : sequence of int
        Classes of the image-level labels.
    grid : (gh, gw)
    min_relative_score : float
        Instances scoring below this share of the image's best score are not trusted:
        their pixels are ignored, and no peak learns them.
    min_share : float
        A peak learns its owner instance only when the instance holds at least this share
        of its PRM (and is of the peak's class); other peaks learn nothing.
    border : int
        Grid pixels ignored on each side of every instance's border.
    background_threshold : float
        See :func:`background_from_crms`: what is neither an instance nor background (an
        object PRM did not retrieve) is ignored.

    Returns
    -------
    (K, gh, gw) uint8 ndarray
        A peak that learns nothing has :data:`IGNORE` everywhere.
    """
    masks = np.asarray(masks, dtype=bool).reshape((-1,) + tuple(np.shape(prms)[-2:]))
    classes = np.asarray(instance_classes, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.full((len(prms),) + tuple(grid), IGNORE, np.uint8)
    if len(masks) == 0 or len(prms) == 0:
        return targets
    trusted = scores >= min_relative_score * scores.max() if scores.max() > 0 else np.ones(len(masks), bool)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    labels = paint_instances(masks, order)
    owners, shares = peak_owners(prms, labels)
    small = resize_nearest(labels, grid)
    background = resize_nearest(background_from_crms(crms, present, masks.shape[1:],
                                                     threshold=background_threshold), grid)
    known_trusted = np.concatenate([[False], trusted])[small]
    uncertain = _near_edges(small, border)
    for k, (owner, share, peak_class) in enumerate(zip(owners, shares, peak_classes)):
        if owner == 0 or share < min_share or not trusted[owner - 1] or classes[owner - 1] != int(peak_class):
            continue
        target = np.full(tuple(grid), IGNORE, np.uint8)
        target[(small == 0) & background] = 0
        target[known_trusted] = 0
        target[small == owner] = 1
        target[uncertain] = IGNORE
        targets[k] = target
    return targets
