"""The PRM paper's metrics: mAP^r, Average Best Overlap, PRM quality, peak pointing, classification mAP.

The per-image functions take plain arrays, so they can be checked on cases
computed by hand; :func:`evaluate` runs a model (or takes its predictions)
over a :class:`~napari_prm.data.LabeledImageDataset` with instance masks.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _validate as check
from ._text import Worded, first_names, plural
from .io.atomic import atomic_write
from .masks import encode_rle, mask_iou, rle_area, rle_bbox

DEFAULT_IOU_THRESHOLDS = (0.25, 0.5, 0.75)


def _as_masks(masks, name: str) -> np.ndarray:
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"{name} must be an (N, H, W) stack of masks; got shape {masks.shape}")
    return masks


def _per_item(name: str, values, count: int, what: str, dtype=None) -> np.ndarray:
    """``values`` as a flat array of ``count`` entries, one per ``what``; else a ValueError naming it."""
    values = np.asarray(values, dtype=dtype).reshape(-1)
    if len(values) != count:
        raise ValueError(f"{name}: expected {count} values, one per {what}, got {len(values)}")
    return values


def _peaks_yx(peaks_yx) -> np.ndarray:
    """``peaks_yx`` as a (K, 2) float array, else a ValueError naming it (a prediction's
    ``peaks_crm``, (K, 3), failed as "cannot reshape array of size 3 into shape (2)")."""
    peaks_yx = np.asarray(peaks_yx, dtype=np.float64)
    if peaks_yx.size % 2 or (peaks_yx.ndim == 2 and peaks_yx.shape[1] != 2) or peaks_yx.ndim > 2:
        raise ValueError(f"peaks_yx: expected (K, 2) peak (y, x) in image pixels (Prediction.peaks), "
                         f"got shape {peaks_yx.shape}")
    return peaks_yx.reshape(-1, 2)


def _empty_like(masks, other):
    """An empty ``masks`` (``[]``: an image without predictions, ``[i.mask for i in
    prediction.instances]``) as ``(0, H, W)`` of ``other``'s size; any other as given."""
    if np.size(masks) == 0 and np.ndim(masks) != 3:
        shape = np.shape(other)
        return np.zeros((0,) + (tuple(shape[1:]) if len(shape) == 3 else (0, 0)), bool)
    return masks


def _class_indices(name: str, values, count: int, what: str, num_classes: int) -> np.ndarray:
    """``values`` as ``count`` class indices in ``[0, num_classes)``; else a ValueError naming ``name``.

    COCOeval matches only the categories it is given, so an index outside them (a class name,
    -1, an index from another label space) dropped its instances without a word."""
    values = _per_item(name, values, count, what)
    if not count:
        return values.astype(np.int64)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)) \
            or not np.isfinite(values.astype(np.float64)).all() or np.mod(values.astype(np.float64), 1).any():
        raise ValueError(f"{name}: expected class indices (whole numbers), got {values[:5].tolist()}")
    indices = values.astype(np.int64)
    outside = indices[(indices < 0) | (indices >= num_classes)]
    if len(outside):
        raise ValueError(f"{name}: class index {int(outside[0])} is outside [0, {num_classes}) "
                         f"({plural(num_classes, 'class')})")
    return indices


def best_overlaps(gt_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """Best IoU of each ground-truth instance with any predicted mask (class-agnostic).

    Parameters
    ----------
    gt_masks : (M, H, W) bool ndarray
    pred_masks : (K, H, W) bool ndarray

    Returns
    -------
    overlaps : (M,) float64 ndarray
        0 for an instance when there is no prediction. The Average Best
        Overlap (ABO) of a dataset is the mean over all its instances.
    """
    gt_masks, pred_masks = _as_masks(gt_masks, "gt_masks"), _as_masks(pred_masks, "pred_masks")
    if len(pred_masks) == 0 or len(gt_masks) == 0:
        return np.zeros(len(gt_masks))
    if gt_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"masks differ in size: gt {gt_masks.shape[1:]}, predictions {pred_masks.shape[1:]}")
    return mask_iou(gt_masks, pred_masks).max(1)


def prm_quality(prms: np.ndarray, peak_classes: np.ndarray, gt_masks: np.ndarray,
                gt_classes: np.ndarray) -> np.ndarray:
    """Share of each peak response map's mass inside its best-matching instance: Σ(R⊙G)/ΣR.

    Parameters
    ----------
    prms : (K, H, W) float ndarray
        Peak response maps (non-negative) at the masks' size.
    peak_classes : (K,) int ndarray
    gt_masks : (M, H, W) bool ndarray
    gt_classes : (M,) int ndarray

    Returns
    -------
    quality : (K,) float64 ndarray
        The largest share over the instances of the peak's class; NaN for a
        peak whose class has no instance in the image; 0 for an all-zero map.
    """
    prms = np.asarray(prms, dtype=np.float32)
    gt_masks = _as_masks(gt_masks, "gt_masks")
    peak_classes, gt_classes = np.asarray(peak_classes).reshape(-1), np.asarray(gt_classes).reshape(-1)
    if prms.ndim != 3 or len(prms) != len(peak_classes):
        raise ValueError(f"prms must be (K, H, W) with K = len(peak_classes) = {len(peak_classes)}; got {prms.shape}")
    if len(gt_classes) != len(gt_masks):
        raise ValueError(f"{len(gt_masks)} gt masks but {len(gt_classes)} gt classes")
    quality = np.full(len(prms), np.nan)
    if len(prms) == 0 or len(gt_masks) == 0:
        return quality
    if len(gt_masks) and gt_masks.shape[1:] != prms.shape[1:]:
        raise ValueError(f"prms {prms.shape[1:]} and gt masks {gt_masks.shape[1:]} differ in size")
    flat_prms = prms.reshape(len(prms), -1)
    mass = flat_prms.sum(1, dtype=np.float64)
    inside = (flat_prms @ gt_masks.reshape(len(gt_masks), -1).T.astype(np.float32)).astype(np.float64)
    share = np.divide(inside, mass[:, None], out=np.zeros_like(inside), where=mass[:, None] > 0)
    for k, cls in enumerate(peak_classes):
        same = gt_classes == cls
        if same.any():
            quality[k] = share[k, same].max()
    return quality


def peak_instances(peaks_yx: np.ndarray, peak_classes: np.ndarray, gt_masks: np.ndarray,
                   gt_classes: np.ndarray, gt_iscrowd: np.ndarray | None = None) -> np.ndarray:
    """The ground-truth instance of its class each peak lies on.

    Parameters
    ----------
    peaks_yx : (K, 2) float ndarray
        Peak ``(y, x)`` in image pixels (rounded to the nearest pixel).
    peak_classes : (K,) int ndarray
    gt_masks : (M, H, W) bool ndarray
    gt_classes : (M,) int ndarray
    gt_iscrowd : (M,) bool ndarray, optional
        Crowd regions are not instances a peak can lie on.

    Returns
    -------
    (K,) int64 ndarray
        The index of the first such instance, -1 where the peak lies on none.
    """
    peaks_yx = _peaks_yx(peaks_yx)
    peak_classes, gt_classes = np.asarray(peak_classes).reshape(-1), np.asarray(gt_classes).reshape(-1)
    gt_masks = _as_masks(gt_masks, "gt_masks")
    if len(peaks_yx) != len(peak_classes):
        raise ValueError(f"{len(peaks_yx)} peaks but {len(peak_classes)} peak classes")
    gt_classes = _per_item("gt_classes", gt_classes, len(gt_masks), "gt mask")
    owners = np.full(len(peaks_yx), -1, dtype=np.int64)
    if len(gt_masks) == 0:
        return owners
    usable = (np.ones(len(gt_masks), bool) if gt_iscrowd is None
              else ~_per_item("gt_iscrowd", gt_iscrowd, len(gt_masks), "gt mask", bool))
    height, width = gt_masks.shape[1:]
    rows = np.clip(np.rint(peaks_yx[:, 0]).astype(int), 0, height - 1)
    cols = np.clip(np.rint(peaks_yx[:, 1]).astype(int), 0, width - 1)
    for k, cls in enumerate(peak_classes):
        under = np.flatnonzero(usable & (gt_classes == cls) & gt_masks[:, rows[k], cols[k]])
        if len(under):
            owners[k] = under[0]
    return owners


def peak_hits(peaks_yx: np.ndarray, peak_classes: np.ndarray, gt_masks: np.ndarray,
              gt_classes: np.ndarray) -> np.ndarray:
    """Whether each class peak lies on a ground-truth instance of its class (peak pointing).

    Parameters
    ----------
    peaks_yx : (K, 2) float ndarray
        Peak ``(y, x)`` in image pixels (rounded to the nearest pixel).
    peak_classes : (K,) int ndarray
    gt_masks : (M, H, W) bool ndarray
    gt_classes : (M,) int ndarray

    Returns
    -------
    hits : (K,) bool ndarray
        A peak of a class absent from the image is a miss.
    """
    return peak_instances(peaks_yx, peak_classes, gt_masks, gt_classes) >= 0


def class_pointing(crms: np.ndarray, gt_masks: np.ndarray, gt_classes: np.ndarray, *,
                   sub_pixel_locating_factor: int = 1, tolerance: float = 15.0) -> np.ndarray:
    """Class-level pointing (the PRM paper's protocol): is each present class's CRM maximum on it?

    For every class with an instance in the image, the maximum of its class
    response map, mapped to image pixels, is a hit when it lies within
    ``tolerance`` pixels of an instance of that class.

    Parameters
    ----------
    crms : (C, h, w) float ndarray
        Class response maps (upsampled by ``sub_pixel_locating_factor``).
    gt_masks : (M, H, W) bool ndarray
    gt_classes : (M,) int ndarray
    sub_pixel_locating_factor : int
    tolerance : float
        In image pixels (15 in the paper).

    Returns
    -------
    hits : (P,) bool ndarray
        One per present class, in increasing class order.
    """
    from scipy import ndimage as ndi

    from .predictor import crm_to_image

    sub_pixel_locating_factor = check.positive_int("sub_pixel_locating_factor", sub_pixel_locating_factor)
    crms = np.asarray(crms, dtype=np.float32)
    gt_masks = _as_masks(gt_masks, "gt_masks")
    gt_classes = _class_indices("gt_classes", gt_classes, len(gt_masks), "gt mask", len(crms))
    hits = []
    for cls in np.unique(gt_classes):
        y, x = np.unravel_index(int(np.argmax(crms[cls])), crms[cls].shape)
        shape = gt_masks.shape[1:]
        yx = crm_to_image(np.array([[y, x]]), crms.shape[1:], shape, sub_pixel_locating_factor)[0]
        row = int(np.clip(np.rint(yx[0]), 0, shape[0] - 1))
        col = int(np.clip(np.rint(yx[1]), 0, shape[1] - 1))
        distance = ndi.distance_transform_edt(~gt_masks[gt_classes == cls].any(0))
        hits.append(bool(distance[row, col] <= tolerance))
    return np.array(hits, dtype=bool)


def instance_funnel(peaks_yx: np.ndarray, peak_classes: np.ndarray, instances: Sequence, proposals: np.ndarray,
                    gt_masks: np.ndarray, gt_classes: np.ndarray, gt_iscrowd: np.ndarray | None = None, *,
                    min_area: int = 32 * 32, iou_threshold: float = 0.5) -> dict[str, int]:
    """Where ground-truth instances get lost between the peaks and the final masks.

    Counts the non-crowd instances of at least ``min_area`` pixels, and among them those
    (1) with a peak of their class inside them, (2) with a proposal whose IoU with them
    is at least ``iou_threshold``, and (3) covered, at that IoU, by a retrieved instance of
    their class whose peak lies inside them.

    Parameters
    ----------
    peaks_yx : (K, 2) float ndarray
        Peaks in image pixels.
    peak_classes : (K,) int ndarray
    instances : sequence of Instance
        Retrieved instances (``Instance.peak`` indexes the peaks).
    proposals : (N, H, W) bool ndarray
        The proposals retrieval chose from (pass the first ``proposal_count``).
    gt_masks : (M, H, W) bool ndarray
    gt_classes : (M,) int ndarray
    gt_iscrowd : (M,) bool ndarray, optional
    min_area : int
        Ground-truth instances smaller than this many pixels are not counted.
    iou_threshold : float
        The IoU at which a proposal or a retrieved instance covers a ground-truth instance.

    Returns
    -------
    dict
        ``instances``, ``with_peak``, ``with_proposal``, ``retrieved`` (counts).
    """
    gt_masks = _as_masks(gt_masks, "gt_masks")
    gt_classes = np.asarray(gt_classes).reshape(-1)
    crowd = np.zeros(len(gt_masks), bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool).reshape(-1)
    big = ~crowd & (gt_masks.sum(axis=(1, 2)) >= min_area)  # (0, H, W) too: no reshape(0, -1)
    counts = {"instances": int(big.sum()), "with_peak": 0, "with_proposal": 0, "retrieved": 0}
    if not big.any():
        return counts
    shape = gt_masks.shape[1:]
    peaks_yx = _peaks_yx(peaks_yx)
    peak_classes = np.asarray(peak_classes).reshape(-1)
    rows = np.clip(np.rint(peaks_yx[:, 0]).astype(np.int64), 0, shape[0] - 1)
    cols = np.clip(np.rint(peaks_yx[:, 1]).astype(np.int64), 0, shape[1] - 1)
    targets = gt_masks[big]
    target_classes = gt_classes[big]
    proposals = _as_masks(proposals, "proposals") if len(proposals) else np.zeros((0,) + shape, bool)
    proposal_iou = mask_iou(targets, proposals) if len(proposals) else np.zeros((len(targets), 0))
    masks = np.array([np.asarray(i.mask, bool) for i in instances]).reshape((-1,) + shape)
    instance_iou = mask_iou(targets, masks) if len(masks) else np.zeros((len(targets), 0))
    for j, (target, cls) in enumerate(zip(targets, target_classes)):
        counts["with_peak"] += bool(((peak_classes == cls) & target[rows, cols]).any())
        counts["with_proposal"] += bool(proposal_iou.shape[1] and proposal_iou[j].max() >= iou_threshold)
        counts["retrieved"] += any(
            inst.class_index == cls and target[rows[inst.peak], cols[inst.peak]] and instance_iou[j, q] >= iou_threshold
            for q, inst in enumerate(instances))
    return counts


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated average precision of one class: Σ (R_n - R_{n-1}) P_n.

    Tied scores form one operating point. Returns NaN without positives.
    Written with numpy (the definition scikit-learn's ``average_precision_score``
    uses) so that scikit-learn is not a dependency.

    Parameters
    ----------
    scores : (N,) float array
        The score of each item.
    labels : (N,) array
        The items of the class: positive values (others are negatives).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = _per_item("labels", labels, len(scores), "score") > 0
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(labels)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_map(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Classification mAP over classes with at least one positive.

    Parameters
    ----------
    scores : (N, C) float ndarray
    labels : (N, C) 0/1 ndarray

    Returns
    -------
    mean_ap : float
        NaN when no class has a positive.
    per_class : (C,) float64 ndarray
        AP of each class (NaN without positives).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be (N, C); got {scores.shape} and {labels.shape}")
    per_class = np.array([average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])])
    valid = ~np.isnan(per_class)
    return (float(per_class[valid].mean()) if valid.any() else float("nan")), per_class


def defined_classification_map(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`classification_map` over the classes whose AP says something, as training's validation reports it.

    A class that every image shows has an AP of 1 whatever the scores, and one no image
    shows has none: both are NaN in ``per_class`` and left out of ``mean_ap`` (NaN when no
    class is shown by some images and not by others). Arguments as :func:`classification_map`.

    Parameters
    ----------
    scores : (N, C) float ndarray
        Each image's class scores.
    labels : (N, C) 0/1 ndarray
        The classes each image shows.
    """
    _, per_class = classification_map(scores, labels)
    per_class[(np.asarray(labels) > 0).all(0)] = np.nan
    defined = ~np.isnan(per_class)
    return (float(per_class[defined].mean()) if defined.any() else float("nan")), per_class


def _annotation(mask: np.ndarray, image_id: int, class_index: int, ann_id: int, **more) -> dict:
    rle = encode_rle(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": int(class_index) + 1, "segmentation": rle,
            "area": float(rle_area(rle)), "bbox": rle_bbox(rle), **more}


class InstanceMatcher:
    """Collects ground truth and predictions image by image, then runs COCOeval (``iouType='segm'``).

    Masks are stored as RLE at once, so a whole dataset fits in memory.

    Parameters
    ----------
    num_classes : int
        The number of classes; a class index is in ``[0, num_classes)``.
    """

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.images: list[dict] = []
        self.gt: list[dict] = []
        self.dt: list[dict] = []

    def add(self, gt_masks, gt_classes, pred_masks, pred_classes, pred_scores, gt_iscrowd=None,
            ignore=None) -> np.ndarray:
        """Add one image: its (M, H, W) instances and its (P, H, W) scored predictions.

        Parameters
        ----------
        gt_masks : (M, H, W) bool array
            The ground-truth instances.
        gt_classes : (M,) int array
            Their class indices.
        pred_masks : (P, H, W) bool array
            The predicted instances; none (``[]``, or ``np.zeros((0, H, W))``) for an image
            without any.
        pred_classes : (P,) int array
            Their class indices.
        pred_scores : (P,) float array
            Their scores (the order of matching).
        gt_iscrowd : (M,) bool array, optional
            Crowd regions among the ground truth (ignored by mAP^r, COCO's rule).
        ignore : (H, W) bool array, optional
            Pixels taken out of the predicted masks before matching
            (`napari_prm.data.GroundTruth.ignore`, PASCAL VOC's void), so that they count for
            and against no prediction.

        Returns
        -------
        (P, H, W) bool ndarray
            The predicted masks as matched (the ``ignore`` pixels taken out).

        Raises
        ------
        ValueError
            Naming the argument: masks that are not (N, H, W), predicted masks of another
            size than the ground truth's (COCOeval matched them with nothing: mAP 0), class
            indices that are not whole numbers in ``[0, num_classes)`` (their instances were
            left out), scores that are not finite, per-item arrays of another length, an
            ``ignore`` of another shape than the predicted masks'.
        """
        gt_masks, pred_masks = _empty_like(gt_masks, pred_masks), _empty_like(pred_masks, gt_masks)
        gt_masks, pred_masks = _as_masks(gt_masks, "gt_masks"), _as_masks(pred_masks, "pred_masks")
        if len(gt_masks) and len(pred_masks) and gt_masks.shape[1:] != pred_masks.shape[1:]:
            # COCOeval compared the masks' RLEs as they were: a prediction of another size matched nothing
            raise ValueError(f"pred_masks are {pred_masks.shape[1]}×{pred_masks.shape[2]} but gt_masks "
                             f"{gt_masks.shape[1]}×{gt_masks.shape[2]}: predict on the image the ground truth "
                             "describes, or resize the masks to its size (napari_prm.masks.resize_nearest)")
        if ignore is not None:
            ignore = np.asarray(ignore, bool)
            if ignore.shape != pred_masks.shape[1:]:
                raise ValueError(f"ignore is {ignore.shape}, the predicted masks {pred_masks.shape[1:]}")
            pred_masks = pred_masks & ~ignore
        gt_classes = _class_indices("gt_classes", gt_classes, len(gt_masks), "gt mask", self.num_classes)
        crowd = (np.zeros(len(gt_masks), bool) if gt_iscrowd is None
                 else _per_item("gt_iscrowd", gt_iscrowd, len(gt_masks), "gt mask", bool))
        pred_classes = _class_indices("pred_classes", pred_classes, len(pred_masks), "predicted mask",
                                      self.num_classes)
        pred_scores = _per_item("pred_scores", pred_scores, len(pred_masks), "predicted mask", np.float64)
        if not np.isfinite(pred_scores).all():
            raise ValueError(f"pred_scores: expected finite numbers, got {pred_scores[~np.isfinite(pred_scores)][0]}")
        image_id = len(self.images) + 1
        shape = gt_masks.shape[1:] if len(gt_masks) else pred_masks.shape[1:]
        self.images.append({"id": image_id, "height": int(shape[0]) if shape else 0,
                            "width": int(shape[1]) if shape else 0})
        for mask, cls, is_crowd in zip(gt_masks, gt_classes, crowd):
            self.gt.append(_annotation(mask, image_id, cls, len(self.gt) + 1, iscrowd=int(is_crowd)))
        for mask, cls, score in zip(pred_masks, pred_classes, pred_scores):
            self.dt.append(_annotation(mask, image_id, cls, len(self.dt) + 1, iscrowd=0, score=float(score)))
        return pred_masks

    def add_instances(self, truth, instances: Sequence) -> np.ndarray:
        """Add one image: its ground truth and its instances (``Instance`` objects, scored).

        Parameters
        ----------
        truth : GroundTruth
            The image's instances, as :meth:`LabeledImageDataset.instances` gives them.
        instances : sequence of Instance
            Predicted instances with masks at the image's size.

        Returns
        -------
        (P, H, W) bool ndarray
            The instances' masks, stacked, less the pixels ``truth.ignore`` marks (PASCAL
            VOC's void): those count neither for nor against a prediction.
        """
        masks = np.array([i.mask for i in instances], bool).reshape((-1,) + truth.masks.shape[1:])
        return self.add(truth.masks, truth.class_indices, masks, [i.class_index for i in instances],
                        [i.score for i in instances], gt_iscrowd=truth.iscrowd, ignore=getattr(truth, "ignore", None))

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> InstanceMatcher:
        """A matcher holding the images at ``indices`` (in the order they were added), in that order.

        An index may repeat (a bootstrap resample): each repeat becomes an image of its own.

        Parameters
        ----------
        indices : sequence of int
            Indices of added images, in ``[0, len(self))``; they may repeat.

        Raises
        ------
        TypeError
            ``indices`` are not integers.
        IndexError
            An index is outside ``[0, len(self))``.
        """
        indices = np.asarray(indices).reshape(-1)
        if len(indices) and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"indices: expected integers, got {indices.dtype}")
        indices = indices.astype(np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self.images)):
            raise IndexError(f"indices: expected values in [0, {len(self.images)}), "
                             f"got {indices.min()}..{indices.max()}")
        by_image: dict[int, tuple[list, list]] = {image["id"]: ([], []) for image in self.images}
        for annotation in self.gt:
            by_image[annotation["image_id"]][0].append(annotation)
        for annotation in self.dt:
            by_image[annotation["image_id"]][1].append(annotation)
        out = InstanceMatcher(self.num_classes)
        for index in indices:
            image = self.images[int(index)]
            image_id = len(out.images) + 1
            out.images.append({**image, "id": image_id})
            gt, dt = by_image[image["id"]]
            out.gt += [{**a, "id": len(out.gt) + n + 1, "image_id": image_id} for n, a in enumerate(gt)]
            out.dt += [{**a, "id": len(out.dt) + n + 1, "image_id": image_id} for n, a in enumerate(dt)]
        return out

    def evaluate(self, iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, *,
                 max_detections: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """``(mAP per threshold (T,), AP per threshold and class (T, C))``; NaN for classes without instances.

        COCO's definition: 101-point interpolated precision, crowd regions
        ignored, all object sizes, at most ``max_detections`` per image.

        Parameters
        ----------
        iou_thresholds : sequence of float
            The mask IoU thresholds (T values).
        max_detections : int
            At most this many predictions (the highest scored) are matched per image.
        """
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        categories = [{"id": c + 1, "name": str(c)} for c in range(self.num_classes)]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset = {"images": self.images, "categories": categories, "annotations": self.gt}
            coco_dt.dataset = {"images": self.images, "categories": categories, "annotations": self.dt}
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
            params = evaluator.params
            params.imgIds = [image["id"] for image in self.images]
            params.catIds = [c["id"] for c in categories]
            params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
            params.areaRng, params.areaRngLbl = [[0, 1e10]], ["all"]
            params.maxDets = [int(max_detections)]
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (T, recall points, C)
        valid = (precision > -1).all(1)
        per_class = np.where(valid, np.where(precision > -1, precision, 0).mean(1), np.nan)
        with np.errstate(all="ignore"):
            mean = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in per_class])
        return mean, per_class


def bootstrap_map(matchers: Sequence[InstanceMatcher], *, iou_threshold: float = 0.5, resamples: int = 200,
                  seed: int = 0, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """mAP^r of several methods on the same bootstrap resamples of their images (paired).

    Parameters
    ----------
    matchers : sequence of InstanceMatcher
        One per method, each holding the same images in the same order.
    iou_threshold : float
        The one IoU threshold of the mAP^r, in (0, 1].
    resamples : int
        Number of resamples (>= 1): each draws as many images as there are, with replacement.
    seed : int or None
        Seed of the resampling (the same draws for every matcher); None: fresh entropy, so
        the result differs from call to call.
    progress : callable, optional
        ``progress(done, resamples)`` after each resample.

    Returns
    -------
    (resamples, len(matchers)) float64 ndarray
        Row r: each method's mAP^r on resample r (NaN where no class has an instance).

    Raises
    ------
    ValueError
        No matcher, no images, matchers with different numbers of images, or an
        ``iou_threshold`` or ``resamples`` out of range.

    Notes
    -----
    Percentiles of a column give an interval for one method's mAP^r; percentiles of the
    difference of two columns, an interval for their difference that accounts for both
    being measured on the same images (Efron and Tibshirani's paired bootstrap). With a
    few dozen images and a handful of right instances per class, these intervals are wide:
    they say which differences the data can show at all.
    """
    matchers = list(matchers)
    if not matchers:
        raise ValueError("matchers: expected at least one InstanceMatcher")
    count = len(matchers[0])
    if any(len(m) != count for m in matchers):
        raise ValueError(f"matchers: expected the same images in each, got {[len(m) for m in matchers]} images")
    if not count:
        raise ValueError("matchers: no images to resample")
    iou_threshold = check.finite_float("iou_threshold", iou_threshold, low=0, high=1, low_open=True)
    resamples = check.positive_int("resamples", resamples)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(matchers)))
    for r in range(resamples):
        draw = rng.integers(0, count, count)
        for j, matcher in enumerate(matchers):
            out[r, j] = matcher.subset(draw).evaluate((iou_threshold,))[0][0]
        if progress is not None:
            progress(r + 1, resamples)
    return out


def instance_map(gt: Sequence[tuple], predictions: Sequence[tuple], *, num_classes: int | None = None,
                 iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> dict[float, float]:
    """mAP^r (instance segmentation mAP) at each IoU threshold, via pycocotools' COCOeval.

    Parameters
    ----------
    gt : sequence of (masks (M, H, W) bool, classes (M,) int) per image
    predictions : sequence of (masks (P, H, W) bool, classes (P,) int, scores (P,) float) per image
    num_classes : int, optional
        Default: one more than the largest class index seen.
    iou_thresholds : sequence of float

    Returns
    -------
    dict
        ``{threshold: mAP}``; classes without ground truth are left out of the mean.

    Raises
    ------
    ValueError
        As :meth:`InstanceMatcher.add`, naming the argument: an image's predicted masks of
        another size than its ground truth's, class indices that are not whole numbers in
        ``[0, num_classes)``, scores that are not finite, per-item arrays of another length.
    """
    iou_thresholds = check.finite_floats("iou_thresholds", iou_thresholds, low=0, high=1,
                                         low_open=True, unique=True)
    if len(gt) != len(predictions):
        raise ValueError(f"{len(gt)} ground-truth images but {len(predictions)} prediction images")
    if num_classes is None:
        seen = [np.asarray(g[1]).reshape(-1) for g in gt] + [np.asarray(p[1]).reshape(-1) for p in predictions]
        # classes that are not numbers (names) are refused by InstanceMatcher.add, naming them
        num_classes = int(max((c.max() for c in seen if c.size and np.issubdtype(c.dtype, np.number)),
                              default=0)) + 1
    matcher = InstanceMatcher(num_classes)
    for (gt_masks, gt_classes), (pred_masks, pred_classes, pred_scores) in zip(gt, predictions):
        matcher.add(gt_masks, gt_classes, pred_masks, pred_classes, pred_scores)
    mean, _ = matcher.evaluate(iou_thresholds)
    return {float(t): float(m) for t, m in zip(iou_thresholds, mean)}


def _nan_to_none(value):
    if isinstance(value, dict):
        return {str(k): _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _ground_truth(value):
    """A GroundTruth as given, or a Correction's instances (made one image at a time)."""
    return value.instances() if callable(getattr(value, "instances", None)) else value


def _masks_source(dataset, index: int, given) -> str:
    """Where image ``index``'s instance masks come from, for a message: a correction's file,
    a PASCAL VOC ``SegmentationObject`` PNG, a COCO JSON's image entry."""
    if given is not None:
        return getattr(given, "source", "") or f"ground_truth[{index}]"
    if dataset.voc is not None:
        return str(dataset.voc.segmentations[index][0])
    if dataset.image_ids is not None:
        return f"{dataset.source}, image id {dataset.image_ids[index]}"
    return str(dataset.source)


def _mean(values: list[np.ndarray]) -> float:
    values = np.concatenate(values) if values else np.zeros(0)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def evaluate(
    model_or_predictions: Any,
    dataset,
    *,
    proposals: Any = "auto",
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    class_threshold: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_images: int | None = None,
    device: Any = None,
    preset: str = "default",
    only_labeled: bool = False,
    ground_truth: Mapping[int, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """All metrics of the PRM paper on a dataset with instance masks.

    Parameters
    ----------
    model_or_predictions : PRMModel, str, path or sequence of Prediction
        A model (or ``"imagenet"`` / a checkpoint path) run with
        :func:`napari_prm.predict`, or one Prediction per dataset image, in order
        (``predictions[i]`` is of ``dataset``'s image ``i``: for the first N images only, give
        ``dataset.subset(range(N))``).
    dataset : LabeledImageDataset
        With instance masks (a COCO or PASCAL VOC dataset), unless ``ground_truth`` gives
        them; its images without masks (:meth:`~napari_prm.data.LabeledImageDataset.images_without_masks`:
        a PASCAL VOC image the devkit has no segmentation of) are left out. It is
        relabelled to the model's classes, which must all be among its classes.
    proposals : str, ndarray, callable or None
        As in :func:`napari_prm.predict`. None skips instance retrieval: mAP^r and ABO
        are then None.
    iou_thresholds : sequence of float
    class_threshold : float, optional
        Passed to ``predict``: peaks of classes scoring below it are dropped
        (None: the model's default).
    progress : callable, optional
        ``progress(done, total)`` after each image.
    max_images : int, optional
        Evaluate the first ``max_images`` images only.
    device : optional
        Where to run the model (None: a PRMModel stays where it is, a loaded
        one goes to the best available device).
    preset : {'default', 'original'}
        The inference preset (see :func:`napari_prm.preset_settings`).
    only_labeled : bool
        Evaluate only the images that show at least one of the model's classes.
    ground_truth : mapping of int to GroundTruth or Correction, optional
        The instances of some of the dataset's images, by index, instead of the dataset's
        masks: only these images are evaluated (in index order; ``only_labeled`` and
        ``max_images`` then choose among them). Class indices index the model's classes;
        a :class:`~napari_prm.refine.Correction` gives its instances of a known class
        (:meth:`~napari_prm.refine.Correction.instances`). Corrected exports give such a
        mapping with :func:`napari_prm.refine.match_corrections`. The image-level
        labels (classification mAP) still come from the dataset.
    **settings
        Other fields of :class:`napari_prm.PredictSettings` (e.g. ``tta=True``).

    Returns
    -------
    dict
        ``mAP_r`` {threshold: mAP}, ``AP_r_per_class``, ``ABO`` (mean best IoU
        of non-crowd instances with any predicted instance, class-agnostic),
        ``prm_quality`` (mean Σ(R⊙G)/ΣR over peaks whose class is present),
        ``pointing_accuracy`` (share of peaks on an instance of their class:
        peak precision), ``class_pointing`` (the paper's class-level pointing:
        share of present classes whose CRM maximum is within 15 px of one of
        their instances; only when a model runs here), ``funnel`` (see
        :func:`instance_funnel`; only when a model runs here),
        ``classification_mAP``, ``classification_AP``, ``seconds_per_image``,
        counts and settings; ``no_instance`` only when there are proposals and none of the
        predictions holds an instance: why (`no_instance_causes`). Predictions made for some
        classes (``predict(..., classes=[...])``, recorded as ``Prediction.classes``) are scored
        on those: ``mAP_r``, ``AP_r_per_class`` and ``ABO`` are of those classes' instances,
        and ``classes_not_asked`` names the others (never looked for, they would count 0).

    Warns
    -----
    NoInstanceWarning
        The predictions hold no instance (mAP^r and ABO are 0), naming why: no peak above the
        thresholds (their values and the best class score seen), or no proposal kept for the
        peaks found.

    Notes
    -----
    Crowd regions are ignored by mAP^r (COCO's rule) and ABO, but count as
    the class's area for pointing and PRM quality. PASCAL VOC's void pixels (255) are taken
    out of predicted masks for mAP^r and ABO, so they count for and against no prediction; for
    pointing and PRM quality they are background.
    """
    from .model.checkpoint import PRMModel, load_model
    from .predictor import PRMPredictor, resolve_thresholds

    iou_thresholds = check.finite_floats("iou_thresholds", iou_thresholds, low=0, high=1,
                                         low_open=True, unique=True)
    class_threshold = check.finite_float("class_threshold", class_threshold, optional=True)
    max_images = check.positive_int("max_images", max_images, optional=True)
    if not hasattr(dataset, "has_masks"):
        raise ValueError(f"dataset: expected a LabeledImageDataset (see napari_prm.data.load_dataset), "
                         f"got {type(dataset).__name__}")
    if ground_truth is None and not dataset.has_masks:
        raise ValueError(f"evaluation needs instance masks; dataset {dataset.source} has none (use a COCO JSON or "
                         "a PASCAL VOC devkit, or give the instances of its images: ground_truth)")
    if ground_truth is not None:
        ground_truth = dict(ground_truth)
        outside = [k for k in ground_truth if not isinstance(k, (int, np.integer)) or not 0 <= k < len(dataset)]
        if outside:
            raise ValueError(f"ground_truth: no image {outside[0]!r} in dataset {dataset.source} "
                             f"({plural(len(dataset), 'image')})")
    model = None
    if isinstance(model_or_predictions, PRMModel) and device is None:
        model = model_or_predictions
        class_names, predictions = list(model.class_names), None
    elif isinstance(model_or_predictions, (PRMModel, str, os.PathLike)):
        model = load_model(model_or_predictions, device=device)
        class_names, predictions = list(model.class_names), None
    else:
        predictions = list(model_or_predictions)
        class_names = list(predictions[0].class_names) if predictions else list(dataset.class_names)
    dataset = dataset.with_classes(class_names)
    if model is not None:  # read as predict reads them
        dataset = dataset.with_model_channels(model.settings.get("channels"))
    if ground_truth is None:  # a PASCAL VOC image without segmentation PNGs has no instances to score
        without = set(dataset.images_without_masks())
        indices = [i for i in range(len(dataset)) if i not in without]
    else:
        indices = sorted(int(k) for k in ground_truth)
    if only_labeled:
        indices = [i for i in indices if dataset.labels[i].any()]
    if max_images is not None:
        indices = indices[: int(max_images)]
    if predictions is not None and indices and indices[-1] >= len(predictions):
        # predictions[index] failed with an IndexError when only_labeled or ground_truth chose an
        # image past the last one predicted
        count = len(predictions)
        raise ValueError(f"model_or_predictions: {plural(count, 'prediction')}, one per image of dataset "
                         f"{dataset.source} in its order, but image {indices[-1]} "
                         f"({dataset.image_paths[indices[-1]]}) is to be evaluated: evaluate the images "
                         f"predicted, evaluate(predictions, dataset.subset(range({count})), ...)")
    # predictions made for some classes (predict(..., classes=[...]), Prediction.classes): the others were
    # never looked for, and are not scored (each counted 0 where the images show it), as evaluate_exports
    # leaves out the classes a predict --classes run was not asked for
    asked = None
    if predictions is not None and indices and all(getattr(predictions[i], "classes", None) for i in indices):
        names = {name for i in indices for name in predictions[i].classes}
        asked = [c for c, name in enumerate(class_names) if name in names] or None
    if model is not None:
        from .train import check_readable

        check_readable(dataset.subset(indices), done="nothing was evaluated")
    total = len(indices)
    with_instances = proposals is not None
    matcher = InstanceMatcher(len(class_names))
    scores, overlaps, qualities, hits, pointing = [], [], [], [], []
    funnel = {"instances": 0, "with_peak": 0, "with_proposal": 0, "retrieved": 0}
    predictor = None
    if model is not None:
        if class_threshold is not None:
            settings["class_threshold"] = class_threshold
        predictor = PRMPredictor(model, preset=preset, proposals=proposals, **settings)
    started = time.perf_counter()
    for done, index in enumerate(indices):
        truth = dataset.instances(index) if ground_truth is None else _ground_truth(ground_truth[index])
        if predictor is not None:
            image = dataset.read_image(index)
            if tuple(image.shape[:2]) != tuple(truth.masks.shape[1:]):  # a mask PNG's or a JSON's size
                source = _masks_source(dataset, index, None if ground_truth is None else ground_truth[index])
                raise ValueError(f"image {dataset.image_paths[index]} is {image.shape[0]}×{image.shape[1]} but its "
                                 f"instance masks ({source}) are {truth.masks.shape[1]}×{truth.masks.shape[2]}")
            predictor.set_image(image)
            prediction = predictor.predict()
            pointing.append(class_pointing(prediction.crms, truth.masks, truth.class_indices,
                                           sub_pixel_locating_factor=prediction.sub_pixel_locating_factor))
            if with_instances and len(prediction.peaks):
                stack = predictor.proposals(prediction.prms, prediction)[: predictor.settings.proposal_count]
                for key, count in instance_funnel(prediction.peaks, prediction.peak_classes, prediction.instances,
                                                  stack, truth.masks, truth.class_indices, truth.iscrowd).items():
                    funnel[key] += count
            elif with_instances:
                funnel["instances"] += instance_funnel(np.zeros((0, 2)), [], [], np.zeros((0,) + truth.masks.shape[1:],
                                                       bool), truth.masks, truth.class_indices,
                                                       truth.iscrowd)["instances"]
        else:
            prediction = predictions[index]
        if prediction.prms.shape[1:] != truth.masks.shape[1:]:  # the masks' size, not the image's, is known
            source = _masks_source(dataset, index, None if ground_truth is None else ground_truth[index])
            raise ValueError(f"prediction {index} is {prediction.prms.shape[1]}×{prediction.prms.shape[2]} but the "
                             f"instance masks of image {dataset.image_paths[index]} ({source}) are "
                             f"{truth.masks.shape[1]}×{truth.masks.shape[2]}")
        scores.append(prediction.scores)
        qualities.append(prm_quality(prediction.prms, prediction.peak_classes, truth.masks, truth.class_indices))
        hits.append(peak_hits(prediction.peaks, prediction.peak_classes, truth.masks, truth.class_indices))
        if with_instances:
            pred_masks = matcher.add_instances(truth, prediction.instances)
            counted = ~truth.iscrowd if asked is None else ~truth.iscrowd & np.isin(truth.class_indices, asked)
            overlaps.append(best_overlaps(truth.masks[counted], pred_masks))
        if progress is not None:
            progress(done + 1, total)
    mean_ap, per_class_ap = classification_map(np.array(scores).reshape(total, -1), dataset.labels[indices])
    results: dict[str, Any] = {
        "num_images": total,
        "num_instances": len(matcher.gt) if with_instances else None,
        "num_peaks": int(sum(len(h) for h in hits)),
        "num_predicted_instances": len(matcher.dt) if with_instances else None,
        "classes": class_names,
        "mAP_r": None, "AP_r_per_class": None, "ABO": None,
        "prm_quality": _mean(qualities),
        "pointing_accuracy": _mean([h.astype(np.float64) for h in hits]),
        "class_pointing": _mean([p.astype(np.float64) for p in pointing]) if predictor is not None else None,
        "funnel": funnel if predictor is not None and with_instances else None,
        "classification_mAP": mean_ap,
        "classification_AP": dict(zip(class_names, per_class_ap.tolist())),
        "settings": {"proposals": proposals if isinstance(proposals, (str, type(None))) else type(proposals).__name__,
                     "class_threshold": class_threshold, "iou_thresholds": [float(t) for t in iou_thresholds],
                     "dataset": dataset.source, "only_labeled": bool(only_labeled),
                     "predict": None if predictor is None else _settings_dict(predictor.settings),
                     "thresholds": None if predictor is None else
                     dict(zip(("class", "peak"), resolve_thresholds(predictor.settings, model.settings)))},
    }
    if asked is not None:
        results["classes_not_asked"] = [name for c, name in enumerate(class_names) if c not in asked]
    if with_instances:
        mean, per_class = matcher.evaluate(iou_thresholds)
        if asked is not None:  # the mean over the classes asked for
            with np.errstate(all="ignore"):
                mean = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in per_class[:, asked]])
        results["mAP_r"] = {float(t): float(m) for t, m in zip(iou_thresholds, mean)}
        results["AP_r_per_class"] = {name: {float(t): float(per_class[i, c]) for i, t in enumerate(iou_thresholds)}
                                     for c, name in enumerate(class_names) if asked is None or c in asked}
        results["ABO"] = _mean(overlaps)
        if total and not results["num_predicted_instances"]:  # mAP^r and ABO are 0: say why
            thresholds = results["settings"]["thresholds"]
            seen = np.array(scores, dtype=np.float64).reshape(total, -1)
            best = np.unravel_index(int(np.argmax(seen)), seen.shape)[1] if seen.size else None
            causes = no_instance_causes(images=total, peaks=results["num_peaks"], thresholds=thresholds,
                                        best=None if best is None else (class_names[best], float(seen.max())))
            results["no_instance"] = causes
            warnings.warn(f"the predictions of the {plural(total, 'image')} evaluated hold no instance ({causes}), "
                          "so mAP^r and ABO are 0", NoInstanceWarning, stacklevel=2)
    results["seconds"] = time.perf_counter() - started
    results["seconds_per_image"] = results["seconds"] / total if total else None
    return results


class NoInstanceWarning(UserWarning):
    """:func:`evaluate` or :func:`evaluate_exports` scored no predicted instance (mAP^r and ABO are
    0); its message names why, as `no_instance_causes` can tell."""


def _threshold_words(value) -> str:
    return "none" if value is None or value <= -1e30 else f"{value:g}"


def no_instance_causes(*, images: int, peaks: int | None, proposals_none: int = 0,
                       thresholds: Mapping[str, Any] | None = None,
                       best: tuple[str, float] | None = None,
                       classes: Sequence[str] = ()) -> Worded:
    """Why predictions hold no instance, as far as ``peaks``, the proposal setting and the
    thresholds tell: the one wording of ``evaluate``'s, ``evaluate --predictions``' and the
    Peak Response Maps widget's warning, in each front end's words (`napari_prm._text.Worded`:
    `for_command_line`, `for_widget`).

    Parameters
    ----------
    images : int
        The images predicted.
    peaks : int or None
        The peaks found on those of them predicted with proposals (None: not known, a folder
        whose manifests do not record them).
    proposals_none : int
        How many of ``images`` were predicted with ``proposals=None`` (``--proposals none``:
        peaks and PRMs only, no instance).
    thresholds : mapping, optional
        ``{"class": ..., "peak": ...}``, the class and peak thresholds the peaks had to reach
        (a value None: not known, or no peak threshold); only said when no peak was found.
    best : (str, float), optional
        The best class score seen and its class, said when no peak was found.
    classes : sequence of str
        The classes the peaks were looked for in (``classes=``, ``--classes``), named with the
        thresholds when no peak was found; empty: every class of the model.

    Returns
    -------
    Worded
        The causes, joined by ``"; "``: no peak above the thresholds (named with their values,
        and the best class score seen), the proposals set to none, or peaks that no proposal
        fitted; the possible causes when ``peaks`` is None.

    Examples
    --------
    >>> print(no_instance_causes(images=2, peaks=0, thresholds={"class": 0.9, "peak": None},
    ...                          best=("dog", 0.0421)))
    no peak above the thresholds (class_threshold 0.9, peak_threshold none; the best class score seen was 0.0421, dog)
    >>> print(no_instance_causes(images=2, peaks=0, proposals_none=2).command_line)
    predict ran with --proposals none, which finds peaks and PRMs only, no instance
    """
    python, command, widget = [], [], []
    if proposals_none:
        some = "" if proposals_none >= images else f" on {proposals_none} of the {plural(images, 'image')}"
        python.append(f"predict ran with proposals=None{some}, which finds peaks and PRMs only, no instance")
        command.append(f"predict ran with --proposals none{some}, which finds peaks and PRMs only, no instance")
        widget.append(f"the run's proposals were 'none'{some}, which finds peaks and PRMs only, no instance")
    if proposals_none < images:
        rest = "" if not proposals_none else " on the others"
        if peaks is None:
            text = (f"no record says why{rest}: no peak above the class and peak thresholds, or no proposal "
                    "fitted a peak")
            python.append(text), command.append(text), widget.append(text)
        elif peaks == 0:
            values = dict(thresholds or {})
            seen = f"the best class score seen was {best[1]:.3g}, {best[0]}" if best is not None else ""
            for words, form, asked in ((python, "{}_threshold", f"classes={list(classes)}"),
                                       (command, "--{}-threshold", "--classes " + " ".join(classes)),
                                       (widget, "{} threshold", "classes " + ", ".join(classes))):
                said = [f"{form.format(key)} {_threshold_words(values[key])}" for key in ("class", "peak")
                        if key in values] + ([asked] if classes else [])
                inside = "; ".join(filter(None, [", ".join(said), seen]))
                words.append(f"no peak above the thresholds{rest}" + (f" ({inside})" if inside else ""))
        else:
            text = f"no proposal was kept for any of the {plural(peaks, 'peak')} found{rest}"
            python.append(text), command.append(text), widget.append(text)
    return Worded("; ".join(python), "; ".join(command), "; ".join(widget))


#: What the results of :func:`evaluate_labels` say in place of the instance metrics.
INSTANCE_METRICS_NEED_MASKS = (
    "instance metrics (mAP^r, ABO, PRM quality, peak pointing) need instance masks, which this dataset has "
    "none of: give corrected masks of its images with --masks (a COCO JSON, or a folder of the Export "
    "widget's <stem>_labels.tif and <stem>_instances.csv), or evaluate a COCO JSON with segmentations or a "
    "PASCAL VOC split with SegmentationObject PNGs")


def evaluate_labels(
    model: Any,
    dataset,
    *,
    class_threshold: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_images: int | None = None,
    device: Any = None,
    preset: str = "default",
    only_labeled: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """What image-level labels alone tell of a model: classification AP and peak precision.

    For a dataset without instance masks (a folder per class, a CSV, a COCO JSON without
    segmentations). Each image's class scores, and the peaks :meth:`napari_prm.PRMPredictor.predict`
    would keep with these settings (no peak response maps, no instances), are compared with its labels.

    Parameters
    ----------
    model : PRMModel, str or path
        A model, or ``"imagenet"`` / a checkpoint path.
    dataset : LabeledImageDataset
        Relabelled to the model's classes, which must all be among its classes.
    class_threshold, progress, max_images, device, preset, only_labeled, **settings
        As in :func:`evaluate`.

    Returns
    -------
    dict
        :func:`evaluate`'s keys, the instance metrics None, and ``classification_mAP`` /
        ``classification_AP`` as training's validation reports them
        (:func:`napari_prm.train.validation_ap`: the network's class scores at the model's input
        size, without TTA; a class every image shows, or none, is left out);
        ``peak_precision`` (share of the kept peaks of a class their image shows),
        ``classes_found`` (share of the (image, shown class) pairs with a kept peak of it),
        ``peak_precision_per_class``, ``peaks_per_image`` (see `napari_prm.peaks.LabelHits`)
        and ``instance_metrics``, which says they need masks.
    """
    from .model.checkpoint import PRMModel, load_model
    from .peaks import label_hits
    from .predictor import PRMPredictor, resolve_thresholds
    from .train import validation_ap

    class_threshold = check.finite_float("class_threshold", class_threshold, optional=True)
    max_images = check.positive_int("max_images", max_images, optional=True)
    if not hasattr(dataset, "labels"):
        raise ValueError(f"dataset: expected a LabeledImageDataset (see napari_prm.data.load_dataset), "
                         f"got {type(dataset).__name__}")
    if not isinstance(model, PRMModel) or device is not None:
        model = load_model(model, device=device)
    class_names = list(model.class_names)
    dataset = dataset.with_classes(class_names).with_model_channels(model.settings.get("channels"))
    indices = [i for i in range(len(dataset)) if not only_labeled or dataset.labels[i].any()][:max_images]
    if not indices:
        raise ValueError(f"no image of dataset {dataset.source} to evaluate: none shows a class of the model "
                         f"({', '.join(class_names)})")
    from .train import check_readable

    check_readable(dataset.subset(indices), done="nothing was evaluated")
    if class_threshold is not None:
        settings["class_threshold"] = class_threshold
    predictor = PRMPredictor(model, preset=preset, proposals=None, **settings)
    peak_classes = []
    started = time.perf_counter()
    for done, index in enumerate(indices):
        predictor.set_image(dataset.read_image(index))
        peak_classes.append(predictor.select_peaks().peaks[:, 0])
        if progress is not None:
            progress(done + 1, len(indices))
    predictor.reset_image()
    labels = dataset.labels[indices]
    per_class_ap, mean_ap = validation_ap(model, dataset.subset(indices))
    hits = label_hits(peak_classes, labels)
    per_class_precision = {}
    for c, name in enumerate(class_names):
        of_class = label_hits([k[k == c] for k in peak_classes], labels)
        per_class_precision[name] = of_class.precision
    results: dict[str, Any] = {
        "num_images": len(indices), "num_instances": None, "num_peaks": hits.peaks,
        "num_predicted_instances": None, "classes": class_names,
        "mAP_r": None, "AP_r_per_class": None, "ABO": None, "prm_quality": None, "pointing_accuracy": None,
        "class_pointing": None, "funnel": None,
        "classification_mAP": mean_ap,
        "classification_AP": per_class_ap,
        "peak_precision": hits.precision, "classes_found": hits.recall,
        "peak_precision_per_class": per_class_precision,
        "peaks_per_image": hits.peaks / len(indices),
        "instance_metrics": INSTANCE_METRICS_NEED_MASKS,
        "settings": {"proposals": None, "class_threshold": class_threshold, "dataset": dataset.source,
                     "only_labeled": bool(only_labeled),
                     "predict": _settings_dict(predictor.settings),
                     "thresholds": dict(zip(("class", "peak"), resolve_thresholds(predictor.settings,
                                                                                  model.settings)))},
    }
    results["seconds"] = time.perf_counter() - started
    results["seconds_per_image"] = results["seconds"] / len(indices)
    return results


#: What scoring a predict output folder leaves out, and why (its results and report say it).
NOT_FROM_EXPORTS = ("PRM quality, peak pointing, class-level pointing and classification mAP need the model (its "
                    "peak response maps, peaks and class scores), which an output folder does not hold: "
                    "evaluate --model runs it")

#: IoU threshold of the paired comparison of `evaluate_exports`.
COMPARISON_IOU = 0.5


def _image_table(dataset) -> tuple[dict, list[int]]:
    """The COCO dict that a dataset's images and classes are matched in (`napari_prm.io.match_exports`),
    and each of its images' id there: a COCO dataset's JSON, a PASCAL VOC dataset's
    `napari_prm.data.voc_image_table`."""
    if dataset.coco is not None:
        return dataset.coco.dataset, [int(i) for i in dataset.image_ids]
    from .data import voc_image_table

    table = voc_image_table(dataset)
    return table, [image["id"] for image in table["images"]]


class _FolderExports:
    """A predict output folder's ``<stem>_instances.json`` exports, matched to a dataset's images
    (``table``, ``image_ids``: `_image_table`)."""

    def __init__(self, folder, dataset, table: Mapping[str, Any], image_ids: Sequence[int]):
        from .data import class_in
        from .io.coco import match_exports

        self.folder = folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder} does not exist" if not folder.exists() else
                             f"{folder} is a file, not a predict output folder (predict's --out)")
        self.stacks, self.lacking, asked = _manifest_outputs(folder)
        try:
            matched, self.unmatched = match_exports(folder, table, source=dataset.source, check_classes=False)
        except ValueError as error:
            if not str(error).startswith("exports: no *_instances.json"):
                raise
            if self.stacks:
                raise ValueError(f"{folder} holds only the outputs of {plural(len(self.stacks), 'stack')} "
                                 f"({first_names(self.stacks, 3)}): predict writes no COCO JSON for a Z/T stack, "
                                 "and the exports of 2-D images are what is scored") from None
            raise ValueError(f"{folder} holds no <stem>_instances.json (sub-folders included): not a "
                             "napari-prm predict output folder (predict --out writes one per 2-D image)") from None
        if not matched:
            raise ValueError(f"no export in {folder} is of an image of {dataset.source} (matched by "
                             f"the file_name its image has there): {first_names(self.unmatched, 3)}")
        self.class_names = matched[0].class_names
        other = next((m for m in matched if m.class_names != self.class_names), None)
        if other is not None:
            raise ValueError(f"{folder} mixes the outputs of models of different classes "
                             f"({matched[0].path}: {first_names(self.class_names, 5)}; {other.path}: "
                             f"{first_names(other.class_names, 5)}): give each run its own folder")
        #: the model's classes; class_names are those the run asked for (predict --classes), which are scored
        self.model_classes = list(self.class_names)
        if asked is not None:
            # the other classes were never predicted: averaged in, each scored 0 where the images show it
            asked_names = set(asked)
            self.class_names = [name for name in self.class_names if class_in(name, asked_names) is not None] \
                or self.class_names
        #: category id of each category name, as match_exports gives the results theirs
        self.category_of = {str(c["name"]): int(c["id"]) for c in table["categories"]}
        missing = [name for name in self.class_names if class_in(name, self.category_of) is None]
        if missing:
            raise ValueError(f"the classes of the model that made {folder} are not all categories of "
                             f"{dataset.source}: [{first_names(map(repr, missing))}] ({len(missing)} of its "
                             f"{plural(len(self.class_names), 'class')}) are missing (names must match, a PASCAL "
                             "VOC class in either VOC's or COCO's spelling)")
        index_of = {int(image_id): i for i, image_id in enumerate(image_ids)}
        without = set(dataset.images_without_masks())
        self.by_index = {index_of[m.image_id]: m for m in matched
                         if m.image_id in index_of and index_of[m.image_id] not in without}
        #: exports of images of the JSON that the dataset's view (--voc) leaves out
        self.outside = [str(m.path) for m in matched if m.image_id not in index_of]
        #: exports of images without instance masks (PASCAL VOC's without segmentation PNGs): left out
        self.without_masks = [str(m.path) for m in matched if index_of.get(m.image_id) in without]
        if not self.by_index and self.without_masks:
            raise ValueError(f"every export in {folder} of an image of {dataset.source} is of an image without "
                             f"instance masks (no SegmentationObject PNG): {first_names(self.without_masks, 3)}")

    def no_instance_causes(self, indices: Sequence[int]) -> Worded:
        """Why the exports of ``indices`` hold no instance (`no_instance_causes`), from their
        manifests: the peaks ``predict`` found, its proposal setting (``--proposals none``), the
        thresholds it used and the best class score it saw (older manifests record neither)."""
        from .io.fileset import read_file_set

        peaks, none, thresholds, best, known = 0, 0, None, None, True
        for index in indices:
            export = self.by_index[index].path
            try:
                file_set = read_file_set(export.parent, export.name[: -len("_instances.json")])
            except ValueError:  # not napari-prm's, or broken
                file_set = None
            if file_set is None:  # no manifest: the export alone does not say
                known = False
                continue
            info = file_set.info
            settings = info.get("settings") if isinstance(info.get("settings"), Mapping) else {}
            if "proposals" in settings and settings["proposals"] is None:
                none += 1
                continue
            if not isinstance(info.get("peaks"), int):
                known = False
                continue
            peaks += info["peaks"]
            if isinstance(info.get("thresholds"), Mapping) and thresholds is None:
                thresholds = dict(info["thresholds"])
            score = info.get("best_class_score")
            if isinstance(score, list) and len(score) == 2 and (best is None or score[1] > best[1]):
                best = (str(score[0]), float(score[1]))
        return no_instance_causes(images=len(indices), peaks=peaks if known else None, proposals_none=none,
                                  thresholds=thresholds, best=best)

    def indices(self, dataset, *, only_labeled: bool, max_images: int | None) -> list[int]:
        """The dataset indices scored: those with an export (showing one of the model's classes, with
        ``only_labeled``), the first ``max_images``."""
        indices = sorted(self.by_index)
        if only_labeled:
            labels = dataset.with_classes(self.class_names).labels
            indices = [i for i in indices if labels[i].any()]
        return indices[:max_images]

    def matcher(self, dataset, indices: Sequence[int], class_names: Sequence[str],
                progress: Callable[[], None] | None = None) -> tuple[InstanceMatcher, list[np.ndarray]]:
        """The ground truth and these exports' instances of ``class_names`` on the images ``indices``,
        and each image's best overlaps (ABO)."""
        from .data import class_in
        from .masks import decode_rles

        dataset = dataset.with_classes(class_names)
        # each class's category, resolved by name as match_exports resolved the results'
        class_of = {self.category_of[class_in(name, self.category_of)]: c for c, name in enumerate(class_names)}
        matcher, overlaps = InstanceMatcher(len(class_names)), []
        for index in indices:
            truth = dataset.instances(index)
            kept = [r for r in self.by_index[index].results if int(r["category_id"]) in class_of]
            masks = matcher.add(truth.masks, truth.class_indices,
                                decode_rles([r["segmentation"] for r in kept], truth.masks.shape[1:]),
                                [class_of[int(r["category_id"])] for r in kept], [r["score"] for r in kept],
                                gt_iscrowd=truth.iscrowd, ignore=truth.ignore)
            overlaps.append(best_overlaps(truth.masks[~truth.iscrowd], masks))
            if progress is not None:
                progress()
        return matcher, overlaps


def _manifest_outputs(folder: Path) -> tuple[list[str], list[str], list[str] | None]:
    """What the manifests in ``folder`` (sub-folders included) say of its outputs: the stems
    (relative to ``folder``) of the Z/T stacks (their manifest records planes), the
    ``<stem>_instances.json`` that a 2-D image's manifest lists and that is not there (deleted
    by hand: its image is not scored), both as paths relative to ``folder``, and the classes the
    2-D images were predicted for (``predict --classes``, all of them together), or None when
    one was predicted for all of the model's classes (or no manifest says)."""
    from .io.fileset import MANIFEST_SUFFIX, read_file_set
    from .io.paths import tree_files

    stacks, lacking = [], []
    asked: list[str] = []
    every_class = False
    for manifest in tree_files(folder, lambda name: name.endswith(MANIFEST_SUFFIX) and not name.startswith(".")):
        stem = manifest.name[: -len(MANIFEST_SUFFIX)]
        try:
            file_set = read_file_set(manifest.parent, stem)
        except ValueError:
            continue
        if file_set is None:
            continue
        if file_set.info.get("planes"):
            stacks.append(Path(os.path.relpath(manifest.parent / stem, folder)).as_posix())
            continue
        if "coco" in file_set.files and not (manifest.parent / file_set.files["coco"].name).is_file():
            lacking.append(Path(os.path.relpath(manifest.parent / file_set.files["coco"].name, folder)).as_posix())
        settings = file_set.info.get("settings")
        classes = settings.get("classes") if isinstance(settings, Mapping) else None
        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, list) or not classes:
            every_class = True
        else:
            asked += [str(name) for name in classes if str(name) not in asked]
    return stacks, lacking, None if every_class or not asked else asked


class ComparisonInterrupted(KeyboardInterrupt):
    """Ctrl-C during `evaluate_exports`' comparison of folders (its bootstrap), or another
    KeyboardInterrupt (the command line's SIGTERM and SIGHUP): the folders' own scores were
    complete, and are kept.

    Parameters
    ----------
    evaluation : dict
        `evaluate_exports`' result with ``comparison`` None, kept as ``evaluation``.
    signum : int or None
        The signal that stopped the comparison (the ``signum`` of the KeyboardInterrupt that
        did, as the command line's SIGTERM and SIGHUP carry); None for Ctrl-C.

    Attributes
    ----------
    evaluation : dict
        `evaluate_exports`' result with ``comparison`` None.
    signum : int or None
        As given.
    """

    def __init__(self, evaluation: dict[str, Any], signum: int | None = None):
        super().__init__("the comparison of the folders was interrupted")
        self.evaluation = evaluation
        self.signum = signum


def evaluate_exports(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    dataset,
    *,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    only_labeled: bool = False,
    max_images: int | None = None,
    resamples: int = 200,
    seed: int | None = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Score ``napari-prm predict`` output folders against the instance masks of a COCO JSON or a
    PASCAL VOC devkit; no model runs.

    Each folder's ``<stem>_instances.json`` exports (sub-folders included: a ``predict
    --recursive`` tree) are matched to the dataset's images and categories as
    :func:`napari_prm.io.coco_results` matches them (image by ``file_name``, class by exact
    name: `napari_prm.io.match_exports`; a PASCAL VOC dataset's images and classes as
    :func:`napari_prm.data.voc_image_table` lists them, ``JPEGImages/<id>.jpg``), and scored as
    :func:`evaluate` scores a model's instances: mAP^r is pycocotools' COCOeval (``segm``) over
    the model's classes (those a run was asked for, ``predict --classes``, as its manifests
    record them: the others were not predicted), on the images with an export (a PASCAL VOC image without segmentation
    PNGs left out; void pixels taken out of the predicted masks). With two folders or more,
    their mAP^r at IoU 0.5 is compared on the images they all scored, over the classes they
    share, by a paired bootstrap (:func:`bootstrap_map`).

    Parameters
    ----------
    folders : path-like or sequence of path-like
        ``predict --out`` folders, one run each; one path is one folder (as
        :func:`napari_prm.io.coco_results` takes it).
    dataset : LabeledImageDataset
        A COCO dataset with instance masks (:func:`napari_prm.data.load_dataset` of the JSON,
        :func:`napari_prm.data.voc_view` of it for its VOC images only) or a PASCAL VOC one
        (of a split list or year folder: :func:`napari_prm.data.from_voc`). Every class of a
        folder's model must be one of its categories (a VOC dataset's: the 20 VOC classes), by name.
    iou_thresholds : sequence of float
    only_labeled : bool
        Score only the images that show one of the folder's model's classes.
    max_images : int, optional
        Score the first ``max_images`` images with an export only.
    resamples : int
        Bootstrap resamples of the comparison (two folders or more).
    seed : int or None
        Seed of the resampling.
    progress : callable, optional
        ``progress(stage, done, total)``: stage ``"score"`` after each image of each folder,
        ``"bootstrap"`` after each resample.

    Returns
    -------
    dict
        ``results``: per folder, :func:`evaluate`'s keys (``mAP_r``, ``AP_r_per_class``,
        ``ABO``, counts; the metrics that need the model are None and ``not_measured`` says
        so), ``exports`` (``scored``; ``left_out``, the file names of the images with an
        export that ``only_labeled`` or ``max_images`` left out; ``images_without_export``, the dataset's file names of
        the images with instance masks and no export; ``without_masks``, the exports of images
        without instance masks (a PASCAL VOC image without segmentation PNGs), left out;
        ``unmatched``, exports of no image of the dataset;
        ``outside``, exports of JSON images the dataset leaves out (its VOC view); ``stacks``,
        stacks' outputs, which hold no COCO JSON; ``lacking``, the exports that the manifests
        list and that are not there, deleted by hand; ``classes_not_asked``, the model's classes
        that the run was not asked for, ``predict --classes``, which are not scored; ``no_instance``,
        only when the exports scored hold no instance: why, as their manifests tell
        (`no_instance_causes`)), ``seconds``
        (reading and scoring that folder, the comparison not included) and ``settings`` (``predictions``: the folder).
        ``comparison``: None for one folder, else ``iou_threshold``, ``resamples``,
        ``seed``, ``classes`` (shared), ``images`` (how many all folders scored),
        ``left_out`` (the file names of the others) and ``rows``: per folder ``predictions``,
        ``mAP_r`` (on those images and classes), ``median``, ``low``, ``high`` (5th and 95th
        percentiles over the resamples) and ``difference`` to the first folder (None for
        the first; else ``median``, ``low``, ``high``, ``share_above_0``). Figures are
        fractions, not %.

    Warns
    -----
    NoInstanceWarning
        A folder's exports scored hold no instance (mAP^r and ABO are 0), naming why: no peak
        above the thresholds (their values and the best class score seen), ``predict --proposals
        none``, or no proposal kept for the peaks found.

    Raises
    ------
    ComparisonInterrupted
        Ctrl-C (KeyboardInterrupt) during the comparison: it holds the folders' scores.
    ValueError
        Naming the folder or file: a folder given twice, not a folder, no export, none of an image of the dataset
        (with instance masks), classes not among the dataset's categories, two exports of one image, an export's
        image of another size; for a comparison, no image or class the folders share.
    """
    iou_thresholds = check.finite_floats("iou_thresholds", iou_thresholds, low=0, high=1,
                                         low_open=True, unique=True)
    max_images = check.positive_int("max_images", max_images, optional=True)
    resamples = check.positive_int("resamples", resamples)
    # one folder: a str was read as its characters' folders
    folders = [Path(check.path_like("folders", f)) for f in check.path_list(folders)]
    if not folders:
        raise ValueError("folders: expected at least one predict output folder")
    seen: dict[Path, Path] = {}
    for folder in folders:
        earlier = seen.setdefault(folder.resolve(), folder)
        if earlier is not folder:  # compared with itself, it would show a difference of 0 as a finding
            raise ValueError(f"{folder} is given twice"
                             + ("" if str(earlier) == str(folder) else f" (as {earlier} and {folder})")
                             + ": give each run's folder once")
    if not hasattr(dataset, "has_masks"):
        raise ValueError(f"dataset: expected a LabeledImageDataset (see napari_prm.data.load_dataset), "
                         f"got {type(dataset).__name__}")
    if (dataset.coco is None and dataset.voc is None) or not dataset.has_masks:
        raise ValueError("predictions are scored against the instance masks of a COCO JSON or a PASCAL VOC devkit; "
                         f"dataset {dataset.source} " + (
                             "is neither" if dataset.coco is None and dataset.voc is None else
                             "has no segmentations" if dataset.coco is not None else
                             "has no segmentation PNGs (SegmentationObject) of its images"))
    table, image_ids = _image_table(dataset)
    read, seconds = [], []
    for folder in folders:
        started = time.perf_counter()
        read.append(_FolderExports(folder, dataset, table, image_ids))
        seconds.append(time.perf_counter() - started)
    chosen = [exports.indices(dataset, only_labeled=only_labeled, max_images=max_images) for exports in read]
    for exports, indices in zip(read, chosen):
        if not indices:
            raise ValueError(f"no image of {exports.folder} to score: none of its "
                             f"{plural(len(exports.by_index), 'image')} shows a class of its model "
                             f"({first_names(exports.class_names, 5)})")
    total, done = sum(map(len, chosen)), [0]

    def one_done() -> None:
        done[0] += 1
        if progress is not None:
            progress("score", done[0], total)

    image_of = {int(image["id"]): image for image in table["images"]}
    file_name = [str(image_of[image_id]["file_name"]) for image_id in image_ids]
    without = set(dataset.images_without_masks())
    rows, scored = [], []
    for exports, indices, read_seconds in zip(read, chosen, seconds):
        started = time.perf_counter()
        matcher, overlaps = exports.matcher(dataset, indices, exports.class_names, one_done)
        scored.append((list(indices), list(exports.class_names), matcher))
        mean, per_class = matcher.evaluate(iou_thresholds)
        names = exports.class_names
        rows.append({
            "num_images": len(indices), "num_instances": len(matcher.gt), "num_peaks": None,
            "num_predicted_instances": len(matcher.dt), "classes": list(names),
            "mAP_r": {float(t): float(m) for t, m in zip(iou_thresholds, mean)},
            "AP_r_per_class": {name: {float(t): float(per_class[i, c]) for i, t in enumerate(iou_thresholds)}
                               for c, name in enumerate(names)},
            "seconds": read_seconds + time.perf_counter() - started,
            "ABO": _mean(overlaps), "prm_quality": None, "pointing_accuracy": None, "class_pointing": None,
            "funnel": None, "classification_mAP": None, "classification_AP": None,
            "not_measured": NOT_FROM_EXPORTS,
            "exports": {"scored": len(indices),
                        "left_out": [file_name[i] for i in sorted(set(exports.by_index) - set(indices))],
                        "images_without_export": [file_name[i] for i in range(len(dataset))
                                                  if i not in exports.by_index and i not in without],
                        "without_masks": exports.without_masks,
                        "unmatched": exports.unmatched, "outside": exports.outside, "stacks": exports.stacks,
                        "lacking": exports.lacking,
                        "classes_not_asked": [n for n in exports.model_classes if n not in exports.class_names]},
            "settings": {"predictions": str(exports.folder), "dataset": dataset.source, "proposals": None,
                         "iou_thresholds": [float(t) for t in iou_thresholds], "only_labeled": bool(only_labeled),
                         "predict": None, "thresholds": None},
        })
    for row, exports, indices in zip(rows, read, chosen):
        row["seconds_per_image"] = row["seconds"] / row["num_images"]
        if not row["num_predicted_instances"]:  # mAP^r and ABO are 0: say why, as the manifests tell
            causes = exports.no_instance_causes(indices)
            row["exports"]["no_instance"] = causes
            warnings.warn(f"{exports.folder}: its exports of the {plural(row['num_images'], 'image')} scored hold "
                          f"no instance ({causes}), so mAP^r and ABO are 0", NoInstanceWarning, stacklevel=2)
    evaluation = {"results": rows, "comparison": None}
    if len(read) > 1:
        try:
            evaluation["comparison"] = _compare_exports(
                read, chosen, dataset, file_name, scored, resamples=resamples, seed=seed,
                progress=None if progress is None else (lambda done, total: progress("bootstrap", done, total)))
        except KeyboardInterrupt as stop:
            raise ComparisonInterrupted(evaluation, getattr(stop, "signum", None)) from None
    return evaluation


def _compare_exports(read: Sequence[_FolderExports], chosen: Sequence[Sequence[int]], dataset,
                     file_name: Sequence[str], scored: Sequence[tuple], *, resamples: int, seed,
                     progress) -> dict[str, Any]:
    """`evaluate_exports`'s paired bootstrap of the folders against the first. ``scored`` holds each
    folder's (images, classes, matcher) of its row: reused where the comparison's images and classes
    are the row's, so that its exports are not decoded, nor the ground truth read, again."""
    from ._classes import class_in

    # a VOC class in either spelling: a model trained on a devkit names 'motorbike' what a built-in one 'motorcycle'
    shared = [name for name in read[0].class_names
              if all(class_in(name, other.class_names) is not None for other in read[1:])]
    if not shared:
        raise ValueError(f"the folders' models share no class ({read[0].folder}: "
                         f"{first_names(read[0].class_names, 5)}; {read[1].folder}: "
                         f"{first_names(read[1].class_names, 5)}): there is nothing to compare")
    common = sorted(set(chosen[0]).intersection(*map(set, chosen[1:])))
    left_out = sorted(set().union(*map(set, chosen)) - set(common))
    if not common:
        raise ValueError(f"no image is scored in every folder ({', '.join(str(r.folder) for r in read)}): "
                         "there is nothing to compare")
    matchers = [matcher if (indices, names) == (common, shared) else exports.matcher(dataset, common, shared)[0]
                for exports, (indices, names, matcher) in zip(read, scored)]
    draws = bootstrap_map(matchers, iou_threshold=COMPARISON_IOU, resamples=resamples, seed=seed,
                          progress=progress)
    rows = []
    for column, (exports, matcher) in enumerate(zip(read, matchers)):
        low, middle, high = np.nanpercentile(draws[:, column], [5, 50, 95])
        row = {"predictions": str(exports.folder), "mAP_r": float(matcher.evaluate((COMPARISON_IOU,))[0][0]),
               "median": float(middle), "low": float(low), "high": float(high), "difference": None}
        if column:
            difference = draws[:, column] - draws[:, 0]
            low, middle, high = np.nanpercentile(difference, [5, 50, 95])
            row["difference"] = {"median": float(middle), "low": float(low), "high": float(high),
                                 "share_above_0": float(np.mean(difference > 0))}
        rows.append(row)
    return {"iou_threshold": COMPARISON_IOU, "resamples": resamples, "seed": seed, "classes": shared,
            "images": len(common), "left_out": [file_name[i] for i in left_out], "rows": rows}


def report_exports_markdown(evaluation: Mapping[str, Any]) -> str:
    """A Markdown report of :func:`evaluate_exports`.

    Parameters
    ----------
    evaluation : dict
        :func:`evaluate_exports`' result (or a `ComparisonInterrupted`'s ``evaluation``).

    Returns
    -------
    str
        A row per folder (figures in %), AP^r per class, what was not measured and, for two
        folders or more, the paired comparison (or that it was interrupted).
    """
    rows = evaluation["results"]
    thresholds = list(rows[0]["mAP_r"])
    source = rows[0]["settings"]["dataset"]
    lines = [f"Predictions scored against {source} ({plural(len(rows), 'folder')}; no model run):", "",
             "| predictions | images | ground-truth instances | instances |"
             + "".join(f" mAP^r@{t:g} |" for t in thresholds) + " ABO |",
             "| --- |" + " --- |" * (4 + len(thresholds))]
    for row in rows:
        lines.append(f"| {row['settings']['predictions']} | {row['num_images']} | {row['num_instances']} | "
                     f"{row['num_predicted_instances']} |" + "".join(f" {_fmt(row['mAP_r'][t])} |" for t in thresholds)
                     + f" {_fmt(row['ABO'])} |")
    from ._classes import class_in

    classes = []  # a VOC class the folders' models spell otherwise (motorbike, motorcycle) is one row
    for row in rows:
        classes += [name for name in row["classes"] if class_in(name, classes) is None]
    labelled = len(rows) > 1
    header = "| class |" + "".join(f" {row['settings']['predictions'] + ' ' if labelled else ''}AP^r@{t:g} |"
                                   for row in rows for t in thresholds)
    lines += ["", header, "| --- |" + " --- |" * (len(rows) * len(thresholds))]
    for name in classes:
        own = [class_in(name, row["AP_r_per_class"]) for row in rows]
        cells = "".join(f" {_fmt(row['AP_r_per_class'][spelt][t]) if spelt else '–'} |"
                        for row, spelt in zip(rows, own) for t in thresholds)
        lines.append(f"| {name} |{cells}")
    lines += ["", "Figures in %. mAP^r: mean over the model's classes of the instance masks' average precision "
              "at each IoU (COCOeval, segm); ABO: mean best IoU of a ground-truth instance with any predicted "
              "mask; –: the images hold no ground truth of the class (or the model has no such class). "
              "The masks are the exports' label images' (where two instances overlapped, the higher score "
              "kept the pixels).", f"Not measured: {rows[0]['not_measured']}."]
    comparison = evaluation.get("comparison")
    if comparison is None and len(rows) > 1:
        lines += ["", "No comparison of the folders: it was interrupted."]
    if comparison:
        first = comparison["rows"][0]["predictions"]
        left_out = comparison["left_out"]
        at = comparison["iou_threshold"]
        lines += ["", f"Paired bootstrap of mAP^r@{at:g}"
                  + ("" if at in thresholds else
                     f" (the comparison is at IoU {at:g} always, not at the table's "
                     f"{', '.join(f'{t:g}' for t in thresholds)})")
                  + f": {comparison['resamples']} "
                      f"resamples of the {plural(comparison['images'], 'image')} every folder scored"
                  + (f" ({plural(len(left_out), 'image')} scored by some folders only left out: "
                     f"{first_names(left_out, 5)})" if left_out else "")
                  + f", over the {plural(len(comparison['classes']), 'class')} the folders' models share; "
                    "interval: 5th to 95th percentile; share > 0: of the resamples where the difference is "
                    "above 0.", "",
                  f"| predictions | mAP^r@{comparison['iou_threshold']:g} | median (90 % interval) | "
                  f"minus {first}: median (90 % interval), share > 0 |", "| --- | --- | --- | --- |"]
        for row in comparison["rows"]:
            difference = row["difference"]
            delta = "—" if difference is None else (
                f"{100 * difference['median']:+.1f} ({100 * difference['low']:+.1f} to "
                f"{100 * difference['high']:+.1f}), {difference['share_above_0']:.0%}")
            lines.append(f"| {row['predictions']} | {_fmt(row['mAP_r'])} | {_fmt(row['median'])} "
                         f"({_fmt(row['low'])}–{_fmt(row['high'])}) | {delta} |")
    return "\n".join(lines) + "\n"


def _settings_dict(settings) -> dict:
    import dataclasses

    return {key: (list(value) if isinstance(value, tuple) else value)
            for key, value in dataclasses.asdict(settings).items()}


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def report_markdown(results: dict[str, Any]) -> str:
    """A Markdown report of :func:`evaluate`'s results (figures in %).

    Parameters
    ----------
    results : dict
        What :func:`evaluate` or :func:`evaluate_labels` returned.
    """
    settings = results["settings"]
    found = [plural(results['num_peaks'], "peak")]
    if results.get("num_instances") is not None:
        truth = plural(results["num_instances"], "ground-truth instance")
        found = ([f"{truth} of the model's {plural(len(results['classes']), 'class')}"] + found
                 + [plural(results["num_predicted_instances"], "instance")])
    source = settings.get("dataset", "")
    if settings.get("ground_truth"):
        source += f"; ground truth: {settings['ground_truth']}"
    if results.get("instance_metrics"):
        lines = [f"Evaluated on {plural(results['num_images'], 'image')} ({source}; image-level labels only): "
                 f"{', '.join(found)}."]
    else:
        lines = [f"Evaluated on {plural(results['num_images'], 'image')} ({source}): "
                 f"{', '.join(found)}; proposals: {settings.get('proposals')}."]
    predict = settings.get("predict") or {}
    thresholds = settings.get("thresholds")
    if thresholds:
        peak = "none" if thresholds["peak"] is None else f"{thresholds['peak']:.4g}"
        size = predict.get("input_size")
        lines.append(f"Preset {predict.get('preset')}, class threshold {thresholds['class']:.4g}, peak threshold "
                     f"{peak}{', TTA' if predict.get('tta') else ''}"
                     + (f", network input {size[0]}×{size[1]} (not the model's own)" if size else "") + ".")
    if results.get("instance_metrics"):
        return "\n".join(lines + _labels_report(results)) + "\n"
    lines += ["", "| metric | value (%) |", "| --- | --- |"]
    for threshold, value in (results.get("mAP_r") or {}).items():
        lines.append(f"| mAP^r@{threshold:g} | {_fmt(value)} |")
    lines += [f"| ABO | {_fmt(results.get('ABO'))} |",
              f"| PRM quality Σ(R⊙G)/ΣR | {_fmt(results['prm_quality'])} |",
              f"| peak pointing accuracy (peak precision) | {_fmt(results['pointing_accuracy'])} |",
              f"| class-level pointing (15 px) | {_fmt(results.get('class_pointing'))} |",
              f"| classification mAP | {_fmt(results['classification_mAP'])} |", ""]
    thresholds = list((results.get("mAP_r") or {}).keys())
    header = "| class | classification AP |" + "".join(f" AP^r@{t:g} |" for t in thresholds)
    lines += [header, "| --- |" + " --- |" * (1 + len(thresholds))]
    for name in results["classes"]:
        row = f"| {name} | {_fmt(results['classification_AP'][name])} |"
        for t in thresholds:
            row += f" {_fmt(results['AP_r_per_class'][name][t])} |"
        lines.append(row)
    lines += ["", "mAP^r: mean over classes of the instance masks' average precision at each IoU; ABO: "
              "mean best IoU of a ground-truth instance with any predicted mask; –: the images hold no "
              "ground truth of the class."]
    funnel = results.get("funnel")
    if funnel and funnel["instances"]:
        with_peak, retrieved = funnel["with_peak"], funnel["retrieved"]
        lines.append(f"Of the {plural(funnel['instances'], 'ground-truth instance')} of at least 32×32 pixels, "
                     f"{with_peak} {'has' if with_peak == 1 else 'have'} a peak of their class inside, "
                     f"{funnel['with_proposal']} a proposal at IoU ≥ 0.5, and {retrieved} "
                     f"{'was' if retrieved == 1 else 'were'} retrieved at IoU ≥ 0.5 from a peak inside them.")
    return "\n".join(lines) + "\n"


def _labels_report(results: dict[str, Any]) -> list[str]:
    """The tables of :func:`evaluate_labels`'s results, and the line that instance metrics need masks."""
    lines = ["", "| metric | value (%) |", "| --- | --- |",
             f"| classification mAP | {_fmt(results['classification_mAP'])} |",
             f"| peak precision (by image labels) | {_fmt(results['peak_precision'])} |",
             f"| classes found (by a peak) | {_fmt(results['classes_found'])} |", "",
             "| class | classification AP | peak precision |", "| --- | --- | --- |"]
    for name in results["classes"]:
        lines.append(f"| {name} | {_fmt(results['classification_AP'][name])} | "
                     f"{_fmt(results['peak_precision_per_class'][name])} |")
    peaks = results.get("peaks_per_image")
    lines += ["", "Image-level labels only: classification AP of each class that some images show and others "
              "do not, as training's validation reports it (–: a class every image shows, or none); peak "
              "precision: share of the kept peaks of a class their image shows (–: no peak); classes found: "
              "share of the (image, class it shows) pairs with a kept peak of the class"
              + ("." if peaks is None else f"; {peaks:.3g} peaks per image."),
              f"Not measured: {results['instance_metrics']}."]
    return lines


def report_json(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the results as JSON (NaN as null), atomically; returns the path.

    Parameters
    ----------
    results : dict
        The results to write (e.g. :func:`evaluate`'s); NaN is written as null.
    path : path-like
        The JSON file to write; missing folders are created.
    """
    path = check.output_file("path", path, parent_must_exist=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temp:
        with open(temp, "w", encoding="utf-8") as stream:
            json.dump(_nan_to_none(results), stream, indent=2, allow_nan=False)
    return path
