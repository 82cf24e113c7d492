"""Segment proposals: where the candidate masks of instance retrieval come from.

A proposal source is any function ``image -> (N, H, W) bool`` ranked best first.

- ``napari_prm.proposals.generate``: `default_proposals`, training-free hierarchical
  grouping of superpixels;
- ``napari_prm.proposals.guided``: `prm_guided_proposals`, shaped by the PRMs;
- ``napari_prm.proposals.files``: `load_proposals`, the original release's JSON, COCO,
  mask stacks and label images;
- ``napari_prm.proposals.stacks``: `proposals_from_labels`, `proposals_from_masks`,
  `combine_proposals`.

`make_proposals` turns any of these descriptions into a stack.
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
]

#: The proposal sources `make_proposals` knows by name (joined by ``+`` to combine them).
PROPOSAL_KEYWORDS = ("default", "builtin", "prm")


def make_proposals(
    source: str | Path | np.ndarray | Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    prms: np.ndarray | None = None,
) -> np.ndarray:
    """Turn any description of proposals into an (N, H, W) bool stack for `image`.

    Parameters
    ----------
    source : str, Path, ndarray or callable
        ``"default"`` / ``"builtin"`` (:func:`default_proposals`), ``"prm"``
        (:func:`prm_guided_proposals`, needs `prms`), several joined by ``"+"``
        (combined with :func:`combine_proposals`), a proposal file
        (:func:`load_proposals`), an (N, H, W) mask stack, an (H, W) integer label
        image, an object with such a ``.data`` (a napari Labels layer), or a
        callable ``image -> (N, H, W) bool``.
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        The image the proposals are for.
    prms : (K, H, W) ndarray, optional
        Peak response maps, for ``"prm"``.

    Returns
    -------
    proposals : (N, H, W) bool ndarray, ranked best first
    """
    shape = _image_shape(image)
    if isinstance(source, str) and not Path(source).is_file():
        if Path(source).suffix or "/" in source or "\\" in source:
            raise ValueError(f"proposal file not found: {source}")
        parts = [p.strip().lower() for p in source.split("+")]
        stacks = []
        for part in parts:
            if part in ("default", "builtin"):
                stacks.append(default_proposals(image))
            elif part == "prm":
                if prms is None:
                    raise ValueError("proposals 'prm' need the peak response maps (prms=)")
                stacks.append(prm_guided_proposals(image, prms))
            else:
                raise ValueError(
                    f"proposals: unknown source {part!r} in {source!r} (expected 'default', "
                    "'builtin', 'prm', a combination like 'default+prm', or an existing file)"
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
