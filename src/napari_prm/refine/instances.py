"""Instances from the head's maps: each PRM peak seeds one instance.

For each class that has peaks, the pixels the head gives to that class (against the
background and the other peaks' classes) are cut along the predicted instance boundaries
into regions; every peak takes the region that holds most of its peak response map, and
peaks that take the same region make one instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from ..retrieval import Instance


@dataclass
class HeadMaps:
    """The head's output for one image, on its grid.

    Attributes
    ----------
    semantic : (C + 1, h, w) float32 ndarray
        Logits; channel 0 background, channel ``c + 1`` class ``c``.
    boundary : (h, w) float32 ndarray
        Probability that a pixel lies where two instances touch.
    """

    semantic: np.ndarray
    boundary: np.ndarray


def class_probabilities(maps: HeadMaps, classes: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Softmax over background and ``classes`` only, resized (bilinear) to ``shape``.

    Returns
    -------
    (1 + len(classes), H, W) float32 ndarray
        Row 0 background, row ``i + 1`` class ``classes[i]``.
    """
    channels = [0] + [int(c) + 1 for c in classes]
    logits = torch.from_numpy(np.ascontiguousarray(maps.semantic[channels], dtype=np.float32))[None]
    probabilities = torch.softmax(logits, dim=1)
    if tuple(probabilities.shape[-2:]) != tuple(shape):
        probabilities = F.interpolate(probabilities, size=tuple(shape), mode="bilinear", align_corners=False)
    return probabilities[0].numpy()


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if tuple(tensor.shape[-2:]) != tuple(shape):
        tensor = F.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False)
    return tensor[0, 0].numpy()


def head_instances(
    maps: HeadMaps,
    prms: np.ndarray,
    peak_classes: np.ndarray,
    peaks_yx: np.ndarray,
    *,
    boundary_threshold: float | None = 0.5,
    foreground_threshold: float | None = None,
    min_area: int = 16,
) -> list[Instance]:
    """Cut the head's class maps into one instance per peak (or group of peaks).

    Parameters
    ----------
    maps : HeadMaps
        The head's output for the image.
    prms : (K, H, W) float ndarray
        Peak response maps at the image's size.
    peak_classes : (K,) int ndarray
    peaks_yx : (K, 2) float ndarray
        Peak ``(y, x)`` in image pixels.
    boundary_threshold : float or None
        Pixels whose boundary probability reaches this separate regions of one class;
        None cuts by connectivity only.
    foreground_threshold : float or None
        None: a pixel belongs to the class, among the background and the peaks' classes,
        with the highest probability. A float: a pixel is foreground when the probability
        of all classes together reaches this, and then belongs to the most probable of
        the peaks' classes.
    min_area : int
        Regions smaller than this many pixels are not instances.

    Returns
    -------
    list of Instance
        Highest score first. ``score`` is the mean class probability over the mask; ``peak``
        the peak with most response inside it; ``prm`` the sum of the PRMs of the peaks
        that chose it.

    Notes
    -----
    A peak takes the region holding the largest share of its PRM; when its PRM has no
    mass on any region of its class, the region under the peak; when there is none, the
    peak yields no instance (the head sees no object of its class there).
    """
    prms = np.asarray(prms, dtype=np.float32)
    peak_classes = np.asarray(peak_classes, dtype=np.int64).reshape(-1)
    peaks_yx = np.asarray(peaks_yx, dtype=np.float64).reshape(-1, 2)
    if prms.ndim != 3 or len(prms) != len(peak_classes) or len(peaks_yx) != len(peak_classes):
        raise ValueError(f"prms (K, H, W), peak_classes (K,) and peaks_yx (K, 2) must agree; got "
                         f"{prms.shape}, {peak_classes.shape} and {peaks_yx.shape}")
    if len(peak_classes) == 0:
        return []
    shape = prms.shape[1:]
    classes = [int(c) for c in np.unique(peak_classes)]
    probabilities = class_probabilities(maps, classes, shape)
    winner = probabilities.argmax(0)
    if foreground_threshold is not None:
        foreground = 1 - class_probabilities(maps, range(maps.semantic.shape[0] - 1), shape)[0]
        winner = np.where(foreground >= foreground_threshold, probabilities[1:].argmax(0) + 1, 0)
    cuts = None
    if boundary_threshold is not None:
        cuts = _resize(maps.boundary, shape) >= boundary_threshold
    rows = np.clip(np.rint(peaks_yx[:, 0]).astype(np.int64), 0, shape[0] - 1)
    columns = np.clip(np.rint(peaks_yx[:, 1]).astype(np.int64), 0, shape[1] - 1)
    instances = []
    for position, class_index in enumerate(classes, start=1):
        region = winner == position
        if not region.any():
            continue
        regions = _regions(region, cuts)
        count = int(regions.max())
        areas = np.bincount(regions.ravel(), minlength=count + 1)
        chosen: dict[int, list[int]] = {}
        for k in np.flatnonzero(peak_classes == class_index):
            mass = np.bincount(regions.ravel(), weights=prms[k].ravel(), minlength=count + 1)
            mass[0] = 0
            mass[areas < min_area] = 0
            label = int(mass.argmax()) if mass.max() > 0 else int(regions[rows[k], columns[k]])
            if label and areas[label] >= min_area:
                chosen.setdefault(label, []).append(int(k))
        probability = probabilities[position]
        for label, peaks in chosen.items():
            mask = regions == label
            best = max(peaks, key=lambda k: float(prms[k][mask].sum()))
            instances.append(Instance(class_index=class_index, score=float(probability[mask].mean()), mask=mask,
                                      prm=prms[peaks].sum(0), peak=best))
    instances.sort(key=lambda instance: -instance.score)
    return instances


def _regions(region: np.ndarray, cuts: np.ndarray | None) -> np.ndarray:
    """Connected regions of ``region`` after removing ``cuts``; cut pixels join the nearest region."""
    if cuts is None:
        return ndi.label(region)[0]
    cores, count = ndi.label(region & ~cuts)
    if count == 0:
        return ndi.label(region)[0]
    grown = expand_labels(cores, distance=max(region.shape))
    grown[~region] = 0
    # A part of the class region the cores never reach (cut off entirely) keeps its own label.
    rest, extra = ndi.label(region & (grown == 0))
    grown[rest > 0] = rest[rest > 0] + count
    return grown
