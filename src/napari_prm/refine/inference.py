"""Running a model's head on an image: its maps, and the instances of a prediction."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..model.checkpoint import PRMModel
from .features import StageFeatures
from .instances import HeadMaps, head_instances

#: Keyword arguments of :func:`head_instances` a head's ``info["instances"]`` may set.
INSTANCE_OPTIONS = ("boundary_threshold", "foreground_threshold", "min_area")


def require_head(model: PRMModel, what: str = "refined proposals") -> torch.nn.Module:
    """The model's head, or a ValueError saying how to get one."""
    head = getattr(model, "head", None)
    if head is None:
        raise ValueError(f"{what} need a model with a refinement head; this model has none: train one with "
                         "'napari-prm refine' or napari_prm.refine.refine (or the 'Learn from corrections' widget)")
    return head


def stage_features(model: PRMModel, x: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's feature maps the model's head reads, for a ``(B, 3, h, w)`` network input."""
    head = require_head(model)
    return StageFeatures(model.network.fcn.features, head.stages)(x)


@torch.no_grad()
def head_maps(model: PRMModel, image: np.ndarray) -> HeadMaps:
    """The head's semantic logits and boundary probabilities for one image.

    Parameters
    ----------
    model : PRMModel
        With a head (``model.head``).
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        One plane as napari holds it.

    Returns
    -------
    HeadMaps
        On the head's grid: the network input size divided by the head's stride.
    """
    head = require_head(model)
    x = model.preprocess(image)
    was_training = head.training
    head.eval()
    try:
        semantic, boundary = head(stage_features(model, x))
    finally:
        head.train(was_training)
    return HeadMaps(semantic[0].float().cpu().numpy(), torch.sigmoid(boundary[0, 0]).float().cpu().numpy())


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
    """Instances of ``prediction`` (its peaks and PRMs) cut from the head's maps of ``image``.

    ``options`` go to :func:`napari_prm.refine.instances.head_instances` over the head's
    saved ones.
    """
    maps = head_maps(model, image)
    return head_instances(maps, prediction.prms, prediction.peak_classes, prediction.peaks,
                          **instance_options(model, options))
