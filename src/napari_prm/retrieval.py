"""Instance retrieval: pick, for each peak response map, the best segment proposal.

Step 4 of PRM (Zhou et al., CVPR 2018).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy import sparse

from . import _validate as check
from .masks import greedy_mask_nms

__all__ = ["Instance", "ProposalMasks", "instance_confidence", "instances_to_labels", "prepare_proposals",
           "retrieve_instances"]


@dataclass(repr=False, eq=False)
class Instance:
    """One retrieved instance.

    Attributes
    ----------
    class_index : int
        Index into the model's class names.
    score : float
        What ranks the instance: its retrieval score, or its confidence when
        :func:`instance_confidence` rescored it (the default preset's).
    mask : (H, W) bool ndarray
        Instance mask in image pixels.
    prm : (H, W) float32 ndarray or InstancePRM
        Peak response map (summed over merged duplicates when NMS merges them). `predict`,
        retrieving on the network's grid (both presets), gives an
        :class:`napari_prm.prm_maps.InstancePRM`, which reads as that ndarray and is built
        from `Prediction.prms` when read (``np.asarray(instance.prm)``), and so do the
        ``"refined"`` proposals; with ``retrieval_grid="image"`` it gives the ndarray.
    peak : int
        Index of the peak (row of ``Prediction.peaks``) the instance came from.
    proposal : int
        Index of the chosen proposal in the stack it was chosen from (-1 when unknown).
    merged_peaks : list of int
        Peaks whose instances NMS merged into this one (their PRMs are in ``prm``
        when ``merge_peak_response`` was on; always for the ``"refined"`` proposals).
    retrieval_score : float or None
        The retrieval score, kept when ``score`` is a confidence (None otherwise).
    alternatives : list of int
        Other proposals (indices into the same stack as ``proposal``) that this instance's
        PRM also fits, best first: each at least 1.5× larger and holding 80 % of the chosen
        mask, or at least 1.5× smaller and lying 80 % inside it, none overlapping the
        chosen mask or an earlier alternative by IoU 0.5 or more. What a user swaps in when
        retrieval took a part of the object, or a region around it (see
        ``retrieve_instances(alternatives=)``; empty unless asked for).
    """

    class_index: int
    score: float
    mask: np.ndarray
    prm: np.ndarray
    peak: int
    proposal: int = -1
    merged_peaks: list[int] = field(default_factory=list)
    retrieval_score: float | None = None
    alternatives: list[int] = field(default_factory=list)

    def __repr__(self) -> str:
        from ._text import fields_repr

        return fields_repr(self)

    @property
    def base_score(self) -> float:
        """The score the instance came with: ``retrieval_score`` once rescored by confidence, else ``score``."""
        return self.score if self.retrieval_score is None else self.retrieval_score


@dataclass(eq=False)
class ProposalMasks:
    """Proposals with what scoring needs, computed once per image (see :func:`prepare_proposals`).

    Attributes
    ----------
    masks : (N, H, W) bool ndarray
    inside, contour : (N, H * W) sparse arrays
        Each proposal's pixels and its contour band, as 0/1 rows.
    contour_width : int
    """

    masks: np.ndarray
    inside: sparse.csr_array
    contour: sparse.csr_array
    contour_width: int

    def __len__(self) -> int:
        return len(self.masks)


def prepare_proposals(proposals: np.ndarray, contour_width: int = 5) -> ProposalMasks:
    """Precompute the sparse masks and contour bands of a proposal stack.

    Pass the result to :func:`retrieve_instances` as ``proposals`` to score the same
    proposals many times (other thresholds, an added peak) without recomputing them.

    Parameters
    ----------
    proposals : (N, H, W) bool ndarray
        Already cut to the proposals retrieval will use.
    contour_width : int
        As :func:`retrieve_instances`'s.
    """
    proposals = np.asarray(proposals)
    if proposals.ndim != 3:
        raise ValueError(f"proposals: expected an (N, H, W) mask stack, got shape {proposals.shape}")
    # C order: retrieval flattens each mask (a transposed stack, as a resize may give, is copied on each use)
    masks = np.ascontiguousarray(proposals if proposals.dtype == bool else proposals != 0)
    contour_width = check.positive_int("contour_width", contour_width)
    inside, contour = _sparse_masks(masks, contour_width)
    return ProposalMasks(masks, inside, contour, contour_width)


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


def _byte_scaled(crm: np.ndarray) -> np.ndarray:
    """``crm`` linearly mapped to 0..255 and rounded, as ``scipy.misc.bytescale`` did."""
    low, high = float(crm.min()), float(crm.max())
    scale = 255.0 / (high - low) if high > low else 1.0
    return (np.clip((crm - low) * scale, 0, 255) + 0.5).astype(np.uint8)


def _background_masks(
    crms: np.ndarray, classes: np.ndarray, shape: tuple[int, int], bg_threshold: np.ndarray,
    rule: str = "float",
) -> np.ndarray:
    """Per used class: CRM resized (bicubic) to ``shape``, thresholded to background.

    ``rule`` 'byte': the CRM is mapped to 0..255 and rounded, resized as an 8-bit
    image and compared with ``bg_threshold * mean`` on that scale, as the original's
    ``scipy.misc.imresize`` made it. 'range': the same 8-bit map compared with
    ``bg_threshold * 255``, a fraction of its range. 'float': the CRM resized as
    floats, below ``min + bg_threshold * (mean - min)``.
    """
    out = np.empty((len(classes),) + shape, dtype=np.float32)
    for row, class_index in enumerate(classes):
        if rule in ("byte", "range"):
            crm = Image.fromarray(_byte_scaled(crms[class_index].astype(np.float64)))
            if crm.size != shape[::-1]:
                crm = crm.resize(shape[::-1], Image.Resampling.BICUBIC)
            crm = np.asarray(crm, dtype=np.float64)
            level = crm.mean() if rule == "byte" else 255.0
            out[row] = crm < bg_threshold[class_index] * level
            continue
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
    if isinstance(proposals, ProposalMasks):
        if proposals.masks.shape[1:] != prms.shape[1:]:
            raise ValueError(f"proposals: prepared for {proposals.masks.shape[1:]}, but the PRMs are "
                             f"{prms.shape[1:]}")
        return prms, peak_classes.astype(np.int64), crms, proposals
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
    background: str = "float",
    peaks_yx: np.ndarray | None = None,
    contain: str | None = None,
    class_aware_nms: bool = False,
    rank_by: str = "score",
    merge_contained: float | None = None,
    merge_parts: float | None = None,
    alternatives: int = 0,
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
    proposals : (N, H, W) bool ndarray or ProposalMasks
        Segment proposals ranked best first; only the first `proposal_count` are used.
        :func:`prepare_proposals` of them saves recomputing their masks and contours
        when the same proposals are scored again.
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
    background : {'float', 'byte', 'range'}, optional
        How Q is made: 'byte' as the original release (the CRM byte-scaled to
        0..255 and rounded, resized as an 8-bit image, below ``bg_threshold`` times
        its mean); 'float' the same rule on the CRM resized as floats; 'range'
        the byte-scaled map below ``bg_threshold * 255``, a fraction of the
        class's response range. Below the mean, half of an object that fills the
        image counts as background; below a fraction of the range, it does not.
    peaks_yx : (K, 2) float ndarray, optional
        Each peak's ``(y, x)`` in the PRMs' pixels; needed by ``contain='peak'``.
    contain : {None, 'peak', 'mass'}, optional
        Only proposals that contain the peak ('peak') or the PRM's strongest pixel
        ('mass') may be chosen for it.
    class_aware_nms : bool, optional
        Suppress duplicates only within a class (the original suppresses across classes).
    merge_contained : float or None, optional
        After NMS, an instance whose mask lies at least this much (a fraction of
        its own area) inside a higher-ranked instance of the same class is merged
        into it: the parts of one object that secondary peaks retrieved. None
        keeps them.
    merge_parts : float or None, optional
        After NMS, an instance whose PRM puts at least this share of its mass
        inside a higher-ranked instance of the same class is merged into it,
        even when its own mask lies outside (a secondary peak on an ear whose
        proposal is the ear alone): its peak's response says it belongs to
        that object. PRMs are instance-aware, so the peak of another object of
        the class puts little mass there. Only a host at least as large as the
        part takes it, and the merged instance keeps the host's mask (as NMS
        does): the part's own pixels outside it are dropped. None keeps them.
    alternatives : int, optional
        Give each instance up to this many other proposals its PRM fits
        (``Instance.alternatives``): a larger proposal holding the chosen mask, or a
        smaller one inside it, in order of the same score without ``contain``'s
        restriction. Retrieval's commonest miss is a part of a large object, or a
        region around a small one, where such a proposal is the right mask.
    rank_by : {'score', 'gain'}, optional
        What orders the instances (for NMS, and as ``Instance.score``): the
        retrieval score (the original), or the PRM's gain in the chosen mask,
        ``sum_S(R_k) - |S| / (H * W)``: the mass it holds beyond what a uniform
        map would put there. A diffuse PRM gains little in any proposal, however
        large, so it cannot outrank a focused one.

    Returns
    -------
    instances : list of Instance
        Sorted by score, highest first. ``Instance.peak`` is the PRM row it came
        from, ``Instance.proposal`` the index of its proposal. A PRM without mass
        (all zeros: no signal reached the image) yields no instance.

    Notes
    -----
    For peak k of class c, with M the resized CRM of class c, the background is
    ``Q = M < min(M) + bg_threshold[c] * (mean(M) - min(M))`` (``background='float'``, the
    default; 'range' takes ``M' < bg_threshold[c] * 255`` of the byte-scaled map M') and a
    proposal S scores

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
    if background not in ("float", "byte", "range"):
        raise ValueError(f"background: expected 'float', 'byte' or 'range', got {background!r}")
    merge_contained = check.finite_float("merge_contained", merge_contained, low=0, high=1, low_open=True,
                                         optional=True)
    merge_parts = check.finite_float("merge_parts", merge_parts, low=0, high=1, low_open=True, optional=True)
    alternatives = check.integer("alternatives", alternatives, low=0)
    if rank_by not in ("score", "gain"):
        raise ValueError(f"rank_by: expected 'score' or 'gain', got {rank_by!r}")
    if contain not in (None, "peak", "mass"):
        raise ValueError(f"contain: expected None, 'peak' or 'mass', got {contain!r}")
    if contain == "peak":
        if peaks_yx is None:
            raise ValueError("contain='peak' needs peaks_yx, the peaks' (y, x) in the PRMs' pixels")
        peaks_yx = check.finite_array("peaks_yx", np.asarray(peaks_yx, dtype=np.float64)).reshape(-1, 2)
        if len(peaks_yx) != len(prms):
            raise ValueError(f"peaks_yx: expected {len(prms)} peaks to match prms, got {len(peaks_yx)}")
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
    if isinstance(proposals, ProposalMasks):
        if proposals.contour_width != int(contour_width):
            raise ValueError(f"proposals were prepared with contour_width {proposals.contour_width}, "
                             f"not {contour_width}")
        prepared = proposals
        proposals = prepared.masks
        if len(proposals) > max(int(proposal_count), 0):
            prepared = None
            proposals = proposals[: max(int(proposal_count), 0)]
    else:
        prepared = None
        proposals = proposals[: max(int(proposal_count), 0)]
        if proposals.dtype != bool:
            proposals = proposals != 0
    if n_peaks == 0 or len(proposals) == 0:
        return []

    used_classes, class_row = np.unique(peak_classes, return_inverse=True)
    background_maps = _background_masks(crms, used_classes, (height, width), bg_threshold, background)
    n_pixels = height * width
    # (pixels, maps): the PRMs then the background masks, as columns.
    maps = np.empty((n_pixels, n_peaks + len(used_classes)), dtype=np.float32)
    maps[:, :n_peaks] = prms.reshape(n_peaks, n_pixels).T
    maps[:, n_peaks:] = background_maps.reshape(len(used_classes), n_pixels).T

    if prepared is not None:
        inside, contour = prepared.inside, prepared.contour
    else:
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
    # A PRM without mass carries no evidence of where its object is (the original's
    # 0/0 normalisation made every score NaN, so it never chose a proposal).
    scores[:, prms.reshape(n_peaks, -1).sum(1) <= 0] = -np.inf
    open_scores = scores.copy() if alternatives else None
    if contain is not None:
        flat = proposals.reshape(len(proposals), -1)
        if contain == "peak":
            rows = np.clip(np.rint(peaks_yx[:, 0]).astype(np.int64), 0, height - 1)
            cols = np.clip(np.rint(peaks_yx[:, 1]).astype(np.int64), 0, width - 1)
            pixels = rows * width + cols
        else:
            pixels = prms.reshape(n_peaks, -1).argmax(1)
        scores[~flat[:, pixels]] = -np.inf
    best = np.argmax(scores, axis=0)
    best_scores = scores[best, np.arange(n_peaks)]
    if rank_by == "gain":
        gains = inside_sums[best, np.arange(n_peaks)] - fraction[best]
        best_scores = np.where(np.isfinite(best_scores), gains, -np.inf)
    candidates = [k for k in np.argsort(-best_scores, kind="stable") if np.isfinite(best_scores[k])]

    if class_aware_nms:
        kept = []
        for cls in np.unique(peak_classes[candidates]) if candidates else []:
            positions = [p for p, k in enumerate(candidates) if peak_classes[k] == cls]
            for position, merged in _nms([best[candidates[p]] for p in positions], proposals, nms_threshold):
                kept.append((positions[position], [positions[m] for m in merged]))
        kept.sort(key=lambda item: item[0])
    else:
        kept = _nms([best[k] for k in candidates], proposals, nms_threshold)
    if merge_contained is not None or merge_parts is not None:
        kept = _merge_contained(kept, [best[k] for k in candidates], [peak_classes[k] for k in candidates],
                                proposals, merge_contained, prms[candidates] if merge_parts is not None else None,
                                merge_parts)
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
                proposal=int(best[k]),
                merged_peaks=[int(candidates[other]) for other in merged],
                alternatives=_alternatives(open_scores[:, k], int(best[k]), inside, areas, alternatives)
                if alternatives else [],
            )
        )
    return instances


#: An alternative differs from the chosen mask by this factor of area at least, and nests with it
#: by this share of the smaller one's area; alternatives overlap each other below ``_ALTERNATIVE_IOU``.
_ALTERNATIVE_SCALE, _ALTERNATIVE_NESTING, _ALTERNATIVE_IOU = 1.5, 0.8, 0.5


def _alternatives(scores: np.ndarray, chosen: int, inside: sparse.csr_array, areas: np.ndarray,
                  count: int) -> list[int]:
    """Up to ``count`` proposals nesting with ``chosen`` (larger around it or smaller inside it), by score,
    each overlapping ``chosen`` and the earlier ones by IoU below ``_ALTERNATIVE_IOU``."""
    overlap = _overlaps(inside, chosen)
    area, chosen_area = areas.astype(np.float64), float(areas[chosen])
    larger = (area >= _ALTERNATIVE_SCALE * chosen_area) & (overlap >= _ALTERNATIVE_NESTING * chosen_area)
    smaller = (chosen_area >= _ALTERNATIVE_SCALE * area) & (overlap >= _ALTERNATIVE_NESTING * area) & (area > 0)
    eligible = np.flatnonzero((larger | smaller) & np.isfinite(scores))
    order = eligible[np.argsort(-scores[eligible], kind="stable")]
    # a candidate stays open while its IoU with the chosen mask and each mask taken is below the
    # bound: one sparse-dense product per mask taken, not one product per candidate
    sizes, shared = area[order], overlap[order]
    open_ = shared < _ALTERNATIVE_IOU * (sizes + chosen_area - shared)
    picked: list[int] = []
    for position in np.flatnonzero(open_) if count else []:
        if not open_[position]:
            continue
        j = int(order[position])
        picked.append(j)
        if len(picked) == count:
            break
        shared = _overlaps(inside, j)[order]
        open_ &= shared < _ALTERNATIVE_IOU * (sizes + area[j] - shared)
    return picked


def _overlaps(inside: sparse.csr_array, j: int) -> np.ndarray:
    """(N,) the pixels each proposal shares with proposal ``j``: a sparse-dense product (a
    sparse-sparse one costs about as much, once per call, and slicing rows more)."""
    pixels = np.zeros(inside.shape[1], inside.dtype)
    pixels[inside.indices[inside.indptr[j]:inside.indptr[j + 1]]] = 1
    return np.asarray(inside @ pixels).ravel()


def instance_confidence(retrieval_scores: np.ndarray, class_margins: np.ndarray,
                        peak_margins: np.ndarray | None = None) -> np.ndarray:
    """Instance scores that also say how sure the classifier is of the class and the peak.

    Parameters
    ----------
    retrieval_scores : (K,) float array
        Each instance's retrieval score (how well its mask holds its PRM).
    class_margins : (K,) float array
        Its class's score minus the class threshold, in CRM units (logits).
    peak_margins : (K,) float array, optional
        Its peak's CRM value minus the peak threshold (None: no peak term).

    Returns
    -------
    (K,) float64 ndarray
        ``max(retrieval, 0) * sigmoid(class_margin) * sigmoid(peak_margin)``.

    Notes
    -----
    The retrieval score compares proposals for one peak; it says little about
    whether the class is in the image at all, so a confident mask of a class
    the image lacks ranks as high as one of a class it shows. Weighting it by
    the logistic of the class and peak margins (both in logits, the thresholds
    calibrated on image labels) keeps the within-image choice and orders
    instances across images by how sure the classifier is: what ranks them in
    mAP^r and in the instance table. A negative retrieval score (more
    background than response in the mask) counts as 0.
    """
    from scipy.special import expit

    retrieval = np.maximum(np.asarray(retrieval_scores, np.float64).reshape(-1), 0.0)
    margins = {"class_margins": class_margins}
    if peak_margins is not None:
        margins["peak_margins"] = peak_margins
    weight = np.ones_like(retrieval)
    for name, values in margins.items():
        values = np.asarray(values, np.float64).reshape(-1)
        if len(values) != len(retrieval):
            raise ValueError(f"{name}: expected {len(retrieval)} values, got {len(values)}")
        weight = weight * expit(values)
    return retrieval * weight


def _merge_contained(kept: list[tuple[int, list[int]]], chosen: list[int], classes: list[int],
                     proposals: np.ndarray, fraction: float | None, prms: np.ndarray | None = None,
                     mass: float | None = None) -> list[tuple[int, list[int]]]:
    """Fold each kept instance that is a part of a higher-ranked one of its class into it.

    A part lies at least `fraction` of its area inside the host, or (with `prms`,
    one per candidate position) its PRM puts at least `mass` of its sum there.
    """
    if len(kept) < 2:
        return kept
    masks = proposals[[chosen[position] for position, _ in kept]].reshape(len(kept), -1)
    flat = sparse.csr_array(masks, dtype=np.float32)
    inter = (flat @ flat.T).toarray()
    area = np.diag(inter).copy()
    if prms is not None:
        maps = prms[[position for position, _ in kept]].reshape(len(kept), -1).astype(np.float32)
        total = maps.sum(1)
        # shares[i, j]: the share of instance i's PRM inside instance j's mask
        shares = (flat @ maps.T).T / np.where(total > 0, total, 1)[:, None]
    merged: list[tuple[int, list[int]]] = []
    owner: dict[int, int] = {}

    def is_part(i: int, j: int) -> bool:
        if fraction is not None and area[i] > 0 and inter[i, j] / area[i] >= fraction:
            return True
        # by mass, only into a host at least as large: a whole object is never folded into one of its parts
        return prms is not None and area[j] >= area[i] and shares[i, j] >= mass

    for i, (position, absorbed) in enumerate(kept):
        target = next((j for j in range(i) if j not in owner and classes[kept[j][0]] == classes[position]
                       and is_part(i, j)), None)
        if target is None:
            merged.append((position, list(absorbed)))
        else:
            owner[i] = target
            host = next(m for m in merged if m[0] == kept[target][0])
            host[1].extend([position, *absorbed])
    return merged


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
