"""Running a model's head on an image: the mask logits of a prediction's peaks, and its instances."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..model.checkpoint import PRMModel
from .features import StageFeatures
from .instances import head_instances
from .prompts import peak_prompts

#: Keyword arguments of :func:`head_instances` a head's ``info["instances"]`` and callers may set.
INSTANCE_OPTIONS = ("mask_threshold", "nms_threshold", "min_area")
#: Peaks decoded at once (bounds memory on images with many peaks).
PEAK_CHUNK = 16


def require_head(model: PRMModel, what: str = "refined proposals") -> torch.nn.Module:
    """The model's head, or a ValueError saying how to get one."""
    head = getattr(model, "head", None)
    if head is None:
        raise ValueError(f"{what} need a model with a refinement head; this model has none: train one with "
                         "'napari-prm refine' or napari_prm.refine.refine (or the 'Learn from corrections' widget)")
    return head


def stage_features(model: PRMModel, image: np.ndarray) -> list[torch.Tensor]:
    """The backbone's feature maps the model's head reads, ``[(1, channels, h, w)]`` finest first.

    Parameters
    ----------
    model : PRMModel
        A model with a refinement head.
    image : ndarray
        The image (what `PRMModel.preprocess` takes).
    """
    head = require_head(model)
    return StageFeatures(model.network.fcn.features, head.stages)(model.preprocess(image))


@torch.no_grad()
def head_logits(model: PRMModel, features: list[torch.Tensor], prms: np.ndarray, peak_classes: np.ndarray,
                peaks_yx: np.ndarray, crms: np.ndarray) -> np.ndarray:
    """The head's mask logits for K peaks of one image.

    Parameters
    ----------
    model : PRMModel
        With a head.
    features : list of (1, channels, h, w) tensors
        From :func:`stage_features`.
    prms, peak_classes, peaks_yx, crms
        As in :class:`napari_prm.predict.Prediction`.

    Returns
    -------
    (K, gh, gw) float32 ndarray
        On the head's grid (the first feature map's size).
    """
    head = require_head(model)
    grid = tuple(features[0].shape[-2:])
    prompts = torch.from_numpy(peak_prompts(prms, peak_classes, peaks_yx, crms, grid))
    was_training = head.training
    head.eval()
    try:
        device = next(head.parameters()).device
        features = [f.to(device) for f in features]
        chunks = [head(features, prompts[start:start + PEAK_CHUNK].to(device))[:, 0].float().cpu()
                  for start in range(0, len(prompts), PEAK_CHUNK)]
    finally:
        head.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0,) + grid, np.float32)


def instance_options(model: PRMModel, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options of :func:`head_instances`: the head's saved ones, then ``overrides``."""
    head = require_head(model)
    saved = dict((getattr(head, "info", {}) or {}).get("instances", {}))
    options = {k: v for k, v in saved.items() if k in INSTANCE_OPTIONS}
    unknown = sorted(set(overrides or {}) - set(INSTANCE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for refined instances; expected {list(INSTANCE_OPTIONS)}")
    options.update(overrides or {})
    return options


def refined_instances(model: PRMModel, image: np.ndarray, prediction, **options) -> list:
    """Instances of ``prediction``'s peaks (one per peak, duplicates suppressed), cut by the head.

    ``options`` go to :func:`napari_prm.refine.instances.head_instances` over the head's
    saved ones.

    Parameters
    ----------
    model : PRMModel
        A model with a refinement head.
    image : ndarray
        The image predicted.
    prediction : Prediction
        Its prediction, whose peaks, PRMs and CRMs the head reads.
    **options
        Options of :func:`napari_prm.refine.instances.head_instances`.
    """
    if len(prediction.peak_classes) == 0:
        return []
    logits = head_logits(model, stage_features(model, image), prediction.prms, prediction.peak_classes,
                         prediction.peaks, prediction.crms)
    return head_instances(logits, prediction.prms, prediction.peak_classes, **instance_options(model, options))
