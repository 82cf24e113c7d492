"""Instances from the head's masks: each PRM peak seeds one instance.

The head gives each peak a mask probability; the pixels where it reaches a threshold, cut
down to the connected part that holds most of the peak's response, are the peak's
instance. Peaks of one object give nearly the same mask: greedy mask NMS keeps the most
confident and adds the others' PRMs to it, as instance retrieval does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..masks import greedy_mask_nms
from ..prm_maps import InstancePRM, ScaledPRMs
from ..retrieval import Instance


def mask_probabilities(mask_logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(K, gh, gw)`` logits -> ``(K, H, W)`` float32 probabilities (bilinear on the logits)."""
    logits = torch.from_numpy(np.ascontiguousarray(mask_logits, dtype=np.float32))[:, None]
    if tuple(logits.shape[-2:]) != tuple(shape):
        logits = F.interpolate(logits, size=tuple(shape), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits[:, 0]).numpy()


def head_instances(
    mask_logits: np.ndarray,
    prms: np.ndarray | ScaledPRMs,
    peak_classes: np.ndarray,
    *,
    mask_threshold: float = 0.5,
    nms_threshold: float | None = 0.5,
    min_area: int = 16,
) -> list[Instance]:
    """One instance per peak from the head's mask logits, duplicates suppressed.

    Parameters
    ----------
    mask_logits : (K, gh, gw) float ndarray
        The head's output for each peak, on its grid.
    prms : (K, H, W) float ndarray or ScaledPRMs
        Peak response maps at the image's size. A `ScaledPRMs` (`Prediction.prms`) is read one
        map at a time, and each instance's ``prm`` is an `InstancePRM` built from it when read.
    peak_classes : (K,) int ndarray
    mask_threshold : float
        Probability from which a pixel belongs to the peak's instance.
    nms_threshold : float or None
        An instance is dropped when its mask IoU with a more confident kept one reaches
        this; its PRM is added to that one's, and its peak to that one's ``merged_peaks``.
        None keeps every instance.
    min_area : int
        Masks smaller than this many pixels are not instances.

    Returns
    -------
    list of Instance
        Most confident first. ``score`` is the mean probability over the mask.

    Notes
    -----
    Of a mask in several pieces, the piece holding most of the peak's PRM is kept (the
    largest piece when the PRM has no mass on any). One peak's maps at the image's size are
    made at a time: a 12-megapixel image's 50 peaks held 2.4 GB of PRMs, 2.4 GB of
    probabilities and an image-sized PRM per instance.
    """
    lazy = isinstance(prms, ScaledPRMs)
    if not lazy:
        prms = np.asarray(prms, dtype=np.float32)
    peak_classes = np.asarray(peak_classes, dtype=np.int64).reshape(-1)
    mask_logits = np.asarray(mask_logits, dtype=np.float32)
    if len(prms.shape) != 3 or len(prms) != len(peak_classes) or len(mask_logits) != len(peak_classes):
        raise ValueError(f"mask_logits (K, gh, gw), prms (K, H, W) and peak_classes (K,) must agree; got "
                         f"{mask_logits.shape}, {tuple(prms.shape)} and {peak_classes.shape}")
    if len(peak_classes) == 0:
        return []
    shape = tuple(prms.shape[1:])
    candidates = []
    for k, prm in enumerate(prms.iter_planes() if lazy else prms):
        probability = mask_probabilities(mask_logits[k:k + 1], shape)[0]
        mask = _main_piece(probability >= mask_threshold, prm)
        if mask.sum() >= min_area:
            candidates.append(Instance(class_index=int(peak_classes[k]), score=float(probability[mask].mean()),
                                       mask=mask, prm=None, peak=k))
    candidates.sort(key=lambda instance: -instance.score)
    if nms_threshold is not None and len(candidates) > 1:
        kept, suppressors = greedy_mask_nms(np.array([c.mask for c in candidates]), nms_threshold,
                                            return_suppressors=True)
        for position, suppressor in enumerate(suppressors):
            if suppressor >= 0:
                candidates[suppressor].merged_peaks.append(candidates[position].peak)
        candidates = [candidates[int(k)] for k in kept]
    for instance in candidates:
        peaks = [instance.peak, *instance.merged_peaks]
        if lazy:
            instance.prm = InstancePRM(prms, peaks)
        else:
            instance.prm = prms[peaks[0]].copy()
            for peak in peaks[1:]:
                instance.prm += prms[peak]
    return candidates


def _main_piece(mask: np.ndarray, prm: np.ndarray) -> np.ndarray:
    pieces, count = ndi.label(mask)
    if count <= 1:
        return mask
    mass = np.bincount(pieces.ravel(), weights=prm.ravel(), minlength=count + 1)[1:]
    if mass.max() <= 0:
        mass = np.bincount(pieces.ravel(), minlength=count + 1)[1:].astype(np.float64)
    return pieces == int(mass.argmax()) + 1
