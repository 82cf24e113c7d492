"""Instance retrieval: pick, for each peak response map, the best segment proposal.

Step 4 of PRM (Zhou et al., CVPR 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

PerClass = Union[float, Sequence[float], Mapping[int, float], np.ndarray]


@dataclass
class Instance:
    """One retrieved instance.

    Attributes
    ----------
    class_index : int
        Index into the model's class names.
    score : float
        Retrieval score of the chosen proposal.
    mask : (H, W) bool ndarray
        Instance mask in image pixels.
    prm : (H, W) float32 ndarray
        Peak response map (summed over merged duplicates when NMS merges them).
    peak : int
        Index of the peak (row of ``Prediction.peaks``) the instance came from.
    """

    class_index: int
    score: float
    mask: np.ndarray
    prm: np.ndarray
    peak: int




def _per_class(value: PerClass, num_classes: int, name: str) -> np.ndarray:
    """A parameter given as a scalar, a length-C sequence or a {class: value} dict, as (C,) floats."""
    if isinstance(value, Mapping):
        default = {"bg_threshold": 0.95, "penalty": 1e-5, "balance": 0.8}[name]
        out = np.full(num_classes, default, dtype=np.float64)
        for index, item in value.items():
            out[int(index)] = float(item)
        return out
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return np.full(num_classes, float(array))
    if array.shape != (num_classes,):
        raise ValueError(f"{name} must be a number or one value per class ({num_classes}); got shape {array.shape}")
    return array


def _resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    if tuple(tensor.shape[-2:]) != tuple(shape):
        tensor = F.interpolate(tensor, size=shape, mode="bicubic", align_corners=False)
    return tensor[0]


def _square_reduce(masks: np.ndarray, width: int, dilate: bool) -> np.ndarray:
    """Binary dilation (OR) or erosion (AND) over a width×width square, as two 1D passes
    of shifted copies; the outside is neutral (False for OR, True for AND)."""
    before, after = (width - 1) // 2, width // 2
    combine = np.logical_or if dilate else np.logical_and
    out = masks
    for axis in (1, 2):
        padded = np.pad(out, [(0, 0)] + [(before, after) if a == axis else (0, 0) for a in (1, 2)],
                        constant_values=not dilate)
        size = out.shape[axis]
        window = [slice(None)] * 3
        window[axis] = slice(0, size)
        result = padded[tuple(window)].copy()
        for shift in range(1, width):
            window[axis] = slice(shift, shift + size)
            combine(result, padded[tuple(window)], out=result)
        out = result
    return out


def contour_bands(masks: np.ndarray, width: int = 5) -> np.ndarray:
    """Morphological gradient (dilation minus erosion) of each mask with a ``width``×``width`` square.

    Parameters
    ----------
    masks : (N, H, W) bool ndarray
    width : int
        Side of the square structuring element.

    Returns
    -------
    bands : (N, H, W) bool ndarray
        The border of the image is neutral: a mask touching it gets no band along it.
    """
    if width < 1:
        raise ValueError(f"contour_width must be >= 1; got {width}")
    masks = np.asarray(masks, dtype=bool)
    return _square_reduce(masks, width, dilate=True) & ~_square_reduce(masks, width, dilate=False)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def retrieve_instances(
    prms: np.ndarray,
    peak_classes: np.ndarray,
    crms: np.ndarray,
    proposals: np.ndarray,
    *,
    contour_width: int = 5,
    size_limits: tuple[float, float] = (2e-5, 0.85),
    proposal_count: int = 100,
    nms_threshold: float = 0.3,
    merge_peak_response: bool = True,
    bg_threshold: PerClass = 0.95,
    penalty: PerClass = 1e-5,
    balance: PerClass = 0.8,
) -> list[Instance]:
    """Pick, for each peak response map, the segment proposal that explains it best.

    Parameters
    ----------
    prms : (K, H, W) float ndarray
        Peak response maps.
    peak_classes : (K,) int ndarray
        Class of each peak.
    crms : (C, h, w) float ndarray
        Class response maps; resized to (H, W) with bicubic interpolation.
    proposals : (N, H, W) bool ndarray
        Class-agnostic segment proposals, best ranked first.
    contour_width : int
        Side of the square whose morphological gradient is a proposal's contour.
    size_limits : (float, float)
        Proposals whose area, as a fraction of the image, is below the first
        (inclusive) or at or above the second are ignored.
    proposal_count : int
        Only the first ``proposal_count`` proposals are used.
    nms_threshold : float
        A lower-scored instance whose mask IoU with a kept one is >= this is dropped.
    merge_peak_response : bool
        Add a dropped instance's PRM to the instance that suppressed it.
    bg_threshold, penalty, balance : float, (C,) sequence or {class: value}
        Background level (fraction between the resized CRM's minimum and mean),
        background penalty and the weight of the PRM inside the proposal.

    Returns
    -------
    instances : list of Instance
        Sorted by score, best first, after non-maximum suppression.

    Notes
    -----
    For a peak of class c with PRM R, the background is
    Q = [M < min(M) + bg_threshold · (mean(M) − min(M))] with M the resized CRM
    of class c, and a proposal S scores
    ``balance · Σ_S R + Σ_contour(S) R − penalty · Σ_S Q``. All proposals are
    scored for all peaks at once with matrix products.
    """
    prms = np.asarray(prms, dtype=np.float32)
    peak_classes = np.asarray(peak_classes, dtype=np.int64).reshape(-1)
    crms = np.asarray(crms, dtype=np.float32)
    proposals = np.asarray(proposals)
    if prms.ndim != 3:
        raise ValueError(f"prms must be (K, H, W); got shape {prms.shape}")
    if len(peak_classes) != len(prms):
        raise ValueError(f"{len(prms)} PRMs but {len(peak_classes)} peak classes")
    if crms.ndim != 3:
        raise ValueError(f"crms must be (C, h, w); got shape {crms.shape}")
    height, width = prms.shape[1:]
    if proposals.ndim != 3 or proposals.shape[1:] != (height, width):
        raise ValueError(f"proposals must be (N, {height}, {width}) to match the PRMs; got shape {proposals.shape}")
    if len(peak_classes) and (peak_classes.min() < 0 or peak_classes.max() >= len(crms)):
        raise ValueError(f"peak classes must index the {len(crms)} CRMs; got {sorted(set(peak_classes.tolist()))}")
    num_classes = len(crms)
    bg_threshold = _per_class(bg_threshold, num_classes, "bg_threshold")
    penalty = _per_class(penalty, num_classes, "penalty")
    balance = _per_class(balance, num_classes, "balance")
    proposals = proposals[:proposal_count].astype(bool, copy=False)
    if len(prms) == 0 or len(proposals) == 0:
        return []

    area = proposals.reshape(len(proposals), -1).sum(1)
    image_area = height * width
    in_range = (area >= size_limits[0] * image_area) & (area < size_limits[1] * image_area)
    inside = torch.from_numpy(proposals.reshape(len(proposals), -1)).to(torch.float32)
    contour = torch.from_numpy(contour_bands(proposals, contour_width).reshape(len(proposals), -1)).to(torch.float32)
    response = torch.from_numpy(prms.reshape(len(prms), -1))
    inside_sum = (response @ inside.T).numpy().astype(np.float64)
    contour_sum = (response @ contour.T).numpy().astype(np.float64)

    classes = np.unique(peak_classes)
    maps = _resize_maps(crms[classes], (height, width)).reshape(len(classes), -1)
    low = maps.min(1, keepdim=True).values
    threshold = low + torch.from_numpy(bg_threshold[classes]).float()[:, None] * (maps.mean(1, keepdim=True) - low)
    background = (maps < threshold).to(torch.float32)
    background_sum = (background @ inside.T).numpy().astype(np.float64)
    row_of_class = {int(c): i for i, c in enumerate(classes)}
    rows = np.array([row_of_class[int(c)] for c in peak_classes])

    scores = (balance[peak_classes, None] * inside_sum + contour_sum
              - penalty[peak_classes, None] * background_sum[rows])
    scores[:, ~in_range] = -np.inf
    candidates = []
    for k, c in enumerate(peak_classes):
        best = int(np.argmax(scores[k]))
        if np.isfinite(scores[k, best]):
            candidates.append(Instance(int(c), float(scores[k, best]), proposals[best].copy(), prms[k].copy(), k))
    candidates.sort(key=lambda instance: -instance.score)
    return mask_nms(candidates, nms_threshold, merge_peak_response=merge_peak_response)


def mask_nms(instances: list[Instance], threshold: float = 0.3, *, merge_peak_response: bool = True) -> list[Instance]:
    """Greedy, class-agnostic non-maximum suppression by mask IoU, as the original release.

    ``instances`` must be sorted best first. A later instance whose IoU with a
    kept one is >= ``threshold`` is dropped, its PRM added to the kept one's
    when ``merge_peak_response``.
    """
    kept: list[Instance] = []
    for instance in instances:
        for winner in kept:
            if mask_iou(winner.mask, instance.mask) >= threshold:
                if merge_peak_response:
                    winner.prm = winner.prm + instance.prm
                break
        else:
            kept.append(instance)
    return kept


def instances_to_labels(
    instances: Sequence[Instance], shape: tuple[int, int], class_names: Optional[Sequence[str]] = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Paint instances into a label image and build their table.

    Parameters
    ----------
    instances : sequence of Instance
        Best first: where masks overlap, the earlier instance keeps the pixel.
    shape : (H, W)
    class_names : sequence of str, optional

    Returns
    -------
    labels : (H, W) uint16 (uint32 beyond 65535 instances) ndarray
        Instance i gets label i + 1.
    table : dict of (M,) ndarrays
        Columns ``label, class_index, class_name, score, peak`` for the M
        instances that still own a pixel, the shape napari's ``Labels.features`` takes.
    """
    dtype = np.uint16 if len(instances) < 2**16 else np.uint32
    labels = np.zeros(tuple(shape), dtype=dtype)
    for index in range(len(instances) - 1, -1, -1):
        labels[instances[index].mask] = index + 1
    present = set(np.unique(labels).tolist()) - {0}
    rows = [(i + 1, inst) for i, inst in enumerate(instances) if i + 1 in present]
    names = list(class_names) if class_names is not None else None
    table = {
        "label": np.array([label for label, _ in rows], dtype=np.int64),
        "class_index": np.array([inst.class_index for _, inst in rows], dtype=np.int64),
        "class_name": np.array([names[inst.class_index] if names else "" for _, inst in rows], dtype=object),
        "score": np.array([inst.score for _, inst in rows], dtype=np.float64),
        "peak": np.array([inst.peak for _, inst in rows], dtype=np.int64),
    }
    return labels, table
