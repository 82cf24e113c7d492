"""Segment proposals: where the candidate masks of instance retrieval come from.

A proposal source is any function ``image -> (N, H, W) bool`` ranked best first.

- ``napari_prm.proposals.generate``: `default_proposals`, training-free hierarchical
  grouping of superpixels;
- ``napari_prm.proposals.guided``: `prm_guided_proposals`, shaped by the PRMs;
- ``napari_prm.proposals.files``: `load_proposals`, the original release's JSON, COCO,
  mask stacks and label images;
- ``napari_prm.proposals.stacks``: `proposals_from_labels`, `proposals_from_masks`,
  `combine_proposals`.

`make_proposals` turns any of these descriptions into a stack; ``"refined"`` asks a model's
refinement head (:mod:`napari_prm.refine`) for its instances' masks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .files import load_proposals
from .generate import _image_shape, default_proposals
from .guided import prm_guided_proposals
from .stacks import combine_proposals, proposals_from_labels, proposals_from_masks

__all__ = [
    "PROPOSAL_KEYWORDS",
    "default_proposals",
    "prm_guided_proposals",
    "load_proposals",
    "proposals_from_labels",
    "proposals_from_masks",
    "combine_proposals",
    "make_proposals",
    "resolve_source",
]

#: The proposal sources `make_proposals` knows by name (joined by ``+`` to combine them).
PROPOSAL_KEYWORDS = ("auto", "default", "builtin", "prm", "refined")


def resolve_source(source, model=None):
    """``"auto"`` as the source it stands for: ``"refined"`` for a model with a head, else ``"default"``.

    Parameters
    ----------
    source : str, path-like or other proposal source
        A proposal source; anything but ``"auto"`` is returned as it is.
    model : PRMModel, optional
        The model the proposals are for: ``"auto"`` is ``"refined"`` when it has a head.
    """
    if isinstance(source, str) and source.strip().lower() == "auto":
        return "refined" if getattr(model, "head", None) is not None else "default"
    return source


def make_proposals(
    source: str | Path | np.ndarray | Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    prms: np.ndarray | None = None,
    *,
    model=None,
    prediction=None,
    scaled: bool = False,
) -> np.ndarray:
    """Turn any description of proposals into an (N, H, W) bool stack for `image`.

    Parameters
    ----------
    source : str, Path, ndarray or callable
        ``"default"`` / ``"builtin"`` (:func:`default_proposals`), ``"prm"``
        (:func:`prm_guided_proposals`, needs `prms`), ``"refined"`` (the masks of the
        instances a model's refinement head cuts for the peaks of `prediction`, see
        :func:`napari_prm.refine.refined_instances`; needs `model` and `prediction`),
        ``"auto"`` (``"refined"`` when `model` has a head, else ``"default"``),
        several joined by ``"+"``
        (combined with :func:`combine_proposals`), a proposal file
        (:func:`load_proposals`), an (N, H, W) mask stack, an (H, W) integer label
        image, an object with such a ``.data`` (a napari Labels layer), or a
        callable ``image -> (N, H, W) bool``.
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        The image the proposals are for.
    prms : (K, H, W) ndarray, optional
        Peak response maps, for ``"prm"``.
    model : PRMModel, optional
        For ``"refined"`` and ``"auto"``.
    prediction : Prediction, optional
        The peaks and PRMs of `image`, for ``"refined"``.
    scaled : bool, optional
        The built-in proposals alone (``"default"`` / ``"builtin"``) come as a
        :class:`napari_prm.masks.ScaledMasks` at their working size (see
        :func:`default_proposals`); every other source as an ndarray.

    Returns
    -------
    proposals : (N, H, W) bool ndarray (or ScaledMasks, see `scaled`), ranked best first
    """
    shape = _image_shape(image)
    source = resolve_source(source, model)
    if isinstance(source, str) and not Path(source).is_file():
        if Path(source).suffix or "/" in source or "\\" in source:
            raise ValueError(f"proposal file not found: {source}")
        parts = [p.strip().lower() for p in source.split("+")]
        stacks = []
        for part in parts:
            if part in ("default", "builtin"):
                stacks.append(default_proposals(image, scaled=scaled and len(parts) == 1))
            elif part == "prm":
                if prms is None:
                    raise ValueError("proposals 'prm' need the peak response maps (prms=)")
                stacks.append(prm_guided_proposals(image, prms))
            elif part == "refined":
                stacks.append(_refined_masks(image, model, prediction, shape))
            elif part == "auto":
                stacks.append(make_proposals("auto", image, prms, model=model, prediction=prediction))
            else:
                raise ValueError(
                    f"proposals: unknown source {part!r} in {source!r} (expected 'default', "
                    "'builtin', 'prm', 'refined', 'auto', a combination like 'default+prm', or an existing file)"
                )
        return stacks[0] if len(stacks) == 1 else combine_proposals(*stacks)
    if isinstance(source, (str, Path)):
        return load_proposals(source, shape)
    if callable(source) and not hasattr(source, "shape"):
        masks = np.asarray(source(image))
        what = "proposal function output"
    else:
        if not isinstance(source, np.ndarray) and hasattr(source, "data"):
            source = source.data
        masks = np.asarray(source)
        what = "proposals"
    if masks.ndim == 3:
        masks = proposals_from_masks(masks)
    elif masks.ndim == 2 and (np.issubdtype(masks.dtype, np.integer) or masks.dtype == bool):
        masks = proposals_from_labels(masks)
    else:
        raise ValueError(
            f"{what}: expected an (N, H, W) mask stack or an (H, W) integer label image, "
            f"got shape {masks.shape} of dtype {masks.dtype}"
        )
    if masks.shape[1:] != shape:
        raise ValueError(
            f"{what}: masks are {masks.shape[1]}x{masks.shape[2]}, the image is {shape[0]}x{shape[1]}"
        )
    if len(masks) == 0:
        raise ValueError(f"{what}: no proposals (empty stack or label image without labels)")
    return masks


def _refined_masks(image: np.ndarray, model, prediction, shape: tuple[int, int]) -> np.ndarray:
    """The masks of the head's instances for the peaks of `prediction`, best first."""
    from ..refine.inference import refined_instances, require_head

    if model is None or prediction is None:
        raise ValueError("proposals 'refined' need the model (model=) and the image's peaks and PRMs (prediction=)")
    require_head(model)
    instances = refined_instances(model, image, prediction)
    return np.array([i.mask for i in instances], dtype=bool).reshape((-1,) + tuple(shape))
