"""Instance retrieval: pick, for each peak response map, the best segment proposal.

Step 4 of PRM (Zhou et al., CVPR 2018).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy import sparse

from . import _validate as check
from .masks import greedy_mask_nms

__all__ = ["Instance", "retrieve_instances", "instances_to_labels"]


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


def _per_class(value, default: float, name: str, n_classes: int) -> np.ndarray:
    """Expand a scalar, a length-C sequence or a {class: value} dict to (C,)."""
    if isinstance(value, Mapping):
        out = np.full(n_classes, float(default))
        for key, item in value.items():
            if not 0 <= int(key) < n_classes:
                raise ValueError(
                    f"{name}: class index {key} out of range for {n_classes} classes"
                )
            out[int(key)] = float(item)
        return out
    if np.ndim(value) == 0:
        return np.full(n_classes, float(value))
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n_classes,):
        raise ValueError(
            f"{name}: expected a scalar, a dict or a sequence of length {n_classes} "
            f"(one per class), got shape {arr.shape}"
        )
    return arr


def _background_masks(
    crms: np.ndarray, classes: np.ndarray, shape: tuple[int, int], bg_threshold: np.ndarray
) -> np.ndarray:
    """Per used class: CRM resized (bicubic) to ``shape``, thresholded to background."""
    out = np.empty((len(classes),) + shape, dtype=np.float32)
    for row, class_index in enumerate(classes):
        crm = crms[class_index].astype(np.float32)
        if crm.shape != shape:
            # PIL's bicubic, as the original release's scipy.misc.imresize.
            crm = np.asarray(Image.fromarray(crm).resize(shape[::-1], Image.Resampling.BICUBIC))
        crm = crm.astype(np.float64)
        low = crm.min()
        out[row] = crm < low + bg_threshold[class_index] * (crm.mean() - low)
    return out


def _sparse_masks(masks: np.ndarray, band_width: int) -> tuple[sparse.csr_array, sparse.csr_array]:
    """(N, H*W) sparse 0/1 rows of each mask and of its contour band.

    The band is the morphological gradient (dilation minus erosion) with a
    band_width x band_width square, computed on each mask's bounding box plus a
    margin. Pixels outside the image count as neutral: they neither extend the
    dilation nor eat into the erosion, so a mask touching the border has no
    band there.
    """
    _, height, width = masks.shape
    inside, band = [], []
    for mask in masks:
        flat = np.flatnonzero(mask)
        inside.append(flat)
        if not len(flat):
            band.append(flat)
            continue
        first_row, last_row = flat[[0, -1]] // width
        columns = np.flatnonzero(mask.any(axis=0))
        top, bottom = max(first_row - band_width, 0), min(last_row + band_width + 1, height)
        left, right = max(columns[0] - band_width, 0), min(columns[-1] + band_width + 1, width)
        crop = mask[top:bottom, left:right].view(np.uint8)
        dilated = ndi.maximum_filter(crop, size=band_width, mode="constant", cval=0)
        eroded = ndi.minimum_filter(crop, size=band_width, mode="constant", cval=1)
        band_rows, band_cols = np.nonzero(dilated > eroded)
        band.append((band_rows + top) * width + band_cols + left)
    return _rows_to_csr(inside, height * width), _rows_to_csr(band, height * width)


def _rows_to_csr(rows: list[np.ndarray], n_columns: int) -> sparse.csr_array:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    data = np.ones(len(indices), dtype=np.float32)
    return sparse.csr_array((data, indices, indptr), shape=(len(rows), n_columns))


def _check_inputs(prms, peak_classes, crms, proposals):
    prms = np.asarray(prms)
    if prms.ndim != 3:
        raise ValueError(f"prms: expected a (K, H, W) array, got shape {prms.shape}")
    crms = np.asarray(crms)
    if crms.ndim != 3:
        raise ValueError(f"crms: expected a (C, h, w) array, got shape {crms.shape}")
    peak_classes = np.asarray(peak_classes)
    if peak_classes.shape != (len(prms),):
        raise ValueError(
            f"peak_classes: expected shape ({len(prms)},) to match prms, "
            f"got {peak_classes.shape}"
        )
    if len(peak_classes) and (
        not np.all(np.equal(np.mod(peak_classes, 1), 0))
        or peak_classes.min() < 0
        or peak_classes.max() >= len(crms)
    ):
        raise ValueError(
            f"peak_classes: expected integers in [0, {len(crms)}), got {peak_classes}"
        )
    proposals = np.asarray(proposals)
    if proposals.ndim != 3 or proposals.shape[1:] != prms.shape[1:]:
        raise ValueError(
            f"proposals: expected an (N, {prms.shape[1]}, {prms.shape[2]}) mask stack "
            f"matching the PRMs, got shape {proposals.shape}"
        )
    return prms, peak_classes.astype(np.int64), crms, proposals


def retrieve_instances(
    prms: np.ndarray,
    peak_classes: np.ndarray,
    crms: np.ndarray,
    proposals: np.ndarray,
    *,
    contour_width: int = 5,
    size_limits: tuple[float, float] = (2e-5, 0.85),
    proposal_count: int = 100,
    nms_threshold: float | None = 0.3,
    merge_peak_response: bool = True,
    bg_threshold: float | Sequence[float] | Mapping[int, float] = 0.95,
    penalty: float | Sequence[float] | Mapping[int, float] = 1e-5,
    balance: float | Sequence[float] | Mapping[int, float] = 0.8,
) -> list[Instance]:
    """Choose one segment proposal per peak response map, then suppress duplicates.

    Parameters
    ----------
    prms : (K, H, W) float ndarray
        Peak response maps at the image's size, one per peak.
    peak_classes : (K,) int ndarray
        Class index of each peak.
    crms : (C, h, w) float ndarray
        Class response maps; resized (bicubic) to (H, W) when their size differs.
    proposals : (N, H, W) bool ndarray
        Segment proposals ranked best first; only the first `proposal_count` are used.
    contour_width : int, optional
        Side of the square whose morphological gradient gives a proposal's contour band.
    size_limits : (float, float), optional
        Allowed proposal area as fractions of H * W: ``low <= area / (H * W) < high``.
    proposal_count : int, optional
        How many of the ranked proposals to consider.
    nms_threshold : float or None, optional
        An instance is dropped when its mask IoU with a higher-scoring kept instance
        is at least this; None disables suppression.
    merge_peak_response : bool, optional
        Add a dropped instance's PRM to the kept instance that suppressed it.
    bg_threshold, penalty, balance : float, sequence of C floats or dict, optional
        Scoring parameters, shared or per class (a dict maps class index to value;
        classes missing from it use the default).

    Returns
    -------
    instances : list of Instance
        Sorted by score, highest first. ``Instance.peak`` is the PRM row it came from.

    Notes
    -----
    For peak k of class c, with M the resized CRM of class c, the background is
    ``Q = M < min(M) + bg_threshold[c] * (mean(M) - min(M))`` and a proposal S scores

        balance[c] * sum_S(R_k) + sum_contour(S)(R_k) - penalty[c] * sum_S(Q)

    where contour(S) is the dilation minus the erosion of S by a
    ``contour_width``-square, with the image border neutral. Proposals outside
    `size_limits` are skipped; a peak with none left yields no instance. All
    (proposal, peak) sums come from products of the flattened masks (sparse)
    with the flattened maps (float32), not from loops over pairs.
    """
    prms, peak_classes, crms, proposals = _check_inputs(prms, peak_classes, crms, proposals)
    check.finite_array("prms", prms)
    check.finite_array("crms", crms)
    contour_width = check.positive_int("contour_width", contour_width)
    proposal_count = check.integer("proposal_count", proposal_count, low=0)
    size_limits = check.finite_floats("size_limits", size_limits, length=2, low=0)
    nms_threshold = check.finite_float("nms_threshold", nms_threshold, low=0, high=1, optional=True)
    for name, value in (("bg_threshold", bg_threshold), ("penalty", penalty), ("balance", balance)):
        if not (isinstance(value, Mapping) and not value):
            check.finite_floats(name, value if isinstance(value, Mapping) else np.ravel(value))
    if int(contour_width) < 1:
        raise ValueError(f"contour_width: expected a positive integer, got {contour_width}")
    low, high = (float(v) for v in size_limits)
    if not 0 <= low < high:
        raise ValueError(f"size_limits: expected 0 <= low < high, got {size_limits}")
    n_classes = len(crms)
    bg_threshold = _per_class(bg_threshold, 0.95, "bg_threshold", n_classes)
    penalty = _per_class(penalty, 1e-5, "penalty", n_classes)
    balance = _per_class(balance, 0.8, "balance", n_classes)

    n_peaks, height, width = prms.shape
    proposals = proposals[: max(int(proposal_count), 0)]
    if proposals.dtype != bool:
        proposals = proposals != 0
    if n_peaks == 0 or len(proposals) == 0:
        return []

    used_classes, class_row = np.unique(peak_classes, return_inverse=True)
    background = _background_masks(crms, used_classes, (height, width), bg_threshold)
    n_pixels = height * width
    # (pixels, maps): the PRMs then the background masks, as columns.
    maps = np.empty((n_pixels, n_peaks + len(used_classes)), dtype=np.float32)
    maps[:, :n_peaks] = prms.reshape(n_peaks, n_pixels).T
    maps[:, n_peaks:] = background.reshape(len(used_classes), n_pixels).T

    inside, contour = _sparse_masks(proposals, int(contour_width))
    inside_sums = inside @ maps
    contour_sums = (contour @ maps)[:, :n_peaks]
    scores = (
        balance[peak_classes] * inside_sums[:, :n_peaks]
        + contour_sums
        - penalty[peak_classes] * inside_sums[:, n_peaks:][:, class_row]
    )
    areas = np.diff(inside.indptr)

    fraction = areas / n_pixels
    allowed = (fraction >= low) & (fraction < high)
    if not allowed.any():
        return []
    scores[~allowed] = -np.inf
    best = np.argmax(scores, axis=0)
    best_scores = scores[best, np.arange(n_peaks)]
    candidates = [k for k in np.argsort(-best_scores, kind="stable") if np.isfinite(best_scores[k])]

    kept = _nms([best[k] for k in candidates], proposals, nms_threshold)
    instances = []
    for position, merged in kept:
        k = candidates[position]
        prm = prms[k].astype(np.float32, copy=True)
        if merge_peak_response:
            for other in merged:
                prm += prms[candidates[other]]
        instances.append(
            Instance(
                class_index=int(peak_classes[k]),
                score=float(best_scores[k]),
                mask=proposals[best[k]].copy(),
                prm=prm,
                peak=int(k),
            )
        )
    return instances


def _nms(
    chosen: list[int], proposals: np.ndarray, threshold: float | None
) -> list[tuple[int, list[int]]]:
    """Greedy mask NMS over instances given as proposal indices, in score order.

    Returns (position, [positions it suppressed]) for each kept instance; a
    dropped instance goes to the first (highest-scoring) kept one it overlaps.
    """
    if threshold is None:
        return [(i, []) for i in range(len(chosen))]
    kept, suppressors = greedy_mask_nms(
        proposals[np.asarray(chosen, dtype=np.int64)], threshold, return_suppressors=True
    )
    return [(int(position), np.flatnonzero(suppressors == position).tolist()) for position in kept]


def instances_to_labels(
    instances: Sequence[Instance],
    shape: tuple[int, int],
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Paint instances into one label image and describe each label in a table.

    Parameters
    ----------
    instances : sequence of Instance
        Instance i gets label i + 1.
    shape : (int, int)
        (H, W) of the label image; every mask must have this shape.
    class_names : sequence of str, optional
        Names indexed by ``Instance.class_index``; the class_name column is ""
        without them.

    Returns
    -------
    labels : (H, W) uint16 ndarray
        0 for background; uint32 when there are more than 65535 instances.
    table : dict of str to ndarray
        Equal-length columns ``label`` (int64), ``class_index`` (int64),
        ``class_name`` (str), ``score`` (float64), ``peak`` (int64), one row per
        instance in list order, as napari's ``Labels.features`` takes them.

    Notes
    -----
    Where masks overlap the higher-scoring instance wins: instances are painted
    from the highest score down and each only fills pixels still 0 (ties keep
    list order).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"shape: expected (H, W), got {shape}")
    dtype = np.uint16 if len(instances) <= np.iinfo(np.uint16).max else np.uint32
    labels = np.zeros(shape, dtype=dtype)
    class_index = np.array([int(inst.class_index) for inst in instances], dtype=np.int64)
    if class_names is not None:
        bad = class_index[(class_index < 0) | (class_index >= len(class_names))]
        if len(bad):
            raise ValueError(
                f"class_names: {len(class_names)} names but an instance has class "
                f"index {bad[0]}"
            )
        names = [str(class_names[c]) for c in class_index]
    else:
        names = [""] * len(instances)
    scores = np.array([float(inst.score) for inst in instances], dtype=np.float64)
    for i in np.argsort(-scores, kind="stable"):
        mask = np.asarray(instances[i].mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(
                f"instance {i}: mask shape {mask.shape} does not match shape {shape}"
            )
        labels[mask & (labels == 0)] = i + 1
    table = {
        "label": np.arange(1, len(instances) + 1, dtype=np.int64),
        "class_index": class_index,
        "class_name": np.array(names, dtype=str),
        "score": scores,
        "peak": np.array([int(inst.peak) for inst in instances], dtype=np.int64),
    }
    return labels, table
