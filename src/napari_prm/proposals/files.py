"""Proposals given as files: the original PRM release's JSON, COCO, mask stacks, labels."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from ..io.images import read_array
from ..masks import decode_rles, segmentation_to_rle
from .stacks import proposals_from_labels, proposals_from_masks

__all__ = ["load_proposals"]


def _decode_release(items: list) -> np.ndarray:
    """The original PRM release's format: base64 little-endian uint32 (start, length)
    pairs, starts 1-based in the row-major flattened mask."""
    sizes = {tuple(int(s) for s in item["shape"]) for item in items}
    if len(sizes) != 1:
        raise ValueError(f"proposal file: masks of different shapes {sorted(sizes)}")
    height, width = sizes.pop()
    total = height * width
    rles = []
    for number, item in enumerate(items):
        runs = np.frombuffer(base64.b64decode(item["data"]), dtype="<u4").astype(np.int64)
        starts, lengths = runs[0::2] - 1, runs[1::2]
        ends = starts + lengths if len(runs) % 2 == 0 else None
        if (
            ends is None
            or (len(runs) and (starts[0] < 0 or ends[-1] > total))
            or np.any(starts[1:] < ends[:-1])
        ):
            raise ValueError(
                f"proposal {number}: corrupt runs (expected increasing, non-overlapping "
                f"(start, length) pairs within {height}x{width})"
            )
        # Row-major runs of an H x W mask are COCO's column-major runs of its W x H transpose.
        counts = np.empty(2 * len(starts) + 1, np.int64)
        counts[0:-1:2] = starts - np.concatenate([[0], ends[:-1]])
        counts[1::2] = lengths
        counts[-1] = total - (ends[-1] if len(ends) else 0)
        rles.append(segmentation_to_rle({"size": [width, height], "counts": counts.tolist()}, width, height))
    return np.ascontiguousarray(decode_rles(rles, (width, height)).transpose(0, 2, 1))


def _decode_coco(data, image_id) -> np.ndarray:
    """COCO dataset (``annotations`` + ``images``) or results list; RLE or polygons."""
    if isinstance(data, dict):
        annotations = data.get("annotations", [])
        sizes = {im["id"]: (im["height"], im["width"]) for im in data.get("images", [])}
    else:
        annotations, sizes = data, {}
    ids = sorted({a.get("image_id") for a in annotations}, key=str)
    if image_id is None and len(ids) > 1:
        raise ValueError(
            f"proposal file: annotations of {len(ids)} images; pass image_id= to choose one"
        )
    if image_id is not None:
        annotations = [a for a in annotations if a.get("image_id") == image_id]
        if not annotations:
            raise ValueError(f"proposal file: no annotations for image_id {image_id!r}")
    if annotations and all("score" in a for a in annotations):
        annotations = sorted(annotations, key=lambda a: -float(a["score"]))
    rles = []
    shape = None
    for a in annotations:
        segm = a["segmentation"]
        size = sizes.get(a.get("image_id"))
        if isinstance(segm, dict):
            size = tuple(segm["size"])
        elif size is None:
            raise ValueError(
                "proposal file: polygon segmentation without an image size "
                "(needs an 'images' entry)"
            )
        segm = segmentation_to_rle(segm, *size)
        if shape is not None and size != shape:
            raise ValueError(f"proposal file: masks of different shapes {shape} and {size}")
        shape = size
        rles.append(segm)
    if shape is None:
        return np.zeros((0, 0, 0), bool)
    return decode_rles(rles, shape)


def load_proposals(
    path: str | Path, shape: tuple[int, int] | None = None, *, image_id=None
) -> np.ndarray:
    """Read ranked proposals from a file.

    Parameters
    ----------
    path : str or Path
        ``.json``: the original PRM release's format (a list of
        ``{"data", "shape"}`` run-length masks), a COCO dataset (``annotations``
        with RLE or polygon ``segmentation`` and ``images`` for their sizes) or a
        COCO results list (ranked by ``score`` when every entry has one, else in
        file order). ``.npy`` / ``.npz`` (its first array) / ``.tif`` / ``.png``:
        an (N, H, W) mask stack or an (H, W) label image.
    shape : (int, int), optional
        Expected (H, W); a file of another size raises ValueError.
    image_id : optional
        Which image's annotations to use when a COCO file holds several.

    Returns
    -------
    proposals : (N, H, W) bool ndarray
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"proposal file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        with open(path) as handle:
            data = json.load(handle)
        if isinstance(data, list) and data and isinstance(data[0], dict) and "data" in data[0]:
            masks = _decode_release(data)
        elif isinstance(data, (list, dict)):
            masks = _decode_coco(data, image_id)
        else:
            raise ValueError(f"{path}: not a proposal list or a COCO annotation file")
    elif suffix == ".npy":
        masks = _as_stack(np.load(path), str(path))
    elif suffix == ".npz":
        with np.load(path) as archive:
            if not archive.files:
                raise ValueError(f"{path}: no arrays inside")
            masks = _as_stack(archive[archive.files[0]], str(path))
    elif suffix in (".tif", ".tiff", ".png"):
        masks = _as_stack(read_array(path, what="proposal file"), str(path))
    else:
        raise ValueError(
            f"{path}: unknown proposal file type {suffix!r} (expected .json, .npy, .npz, .tif or .png)"
        )
    if len(masks) == 0:
        raise ValueError(f"{path}: holds no proposals")
    if shape is not None and masks.shape[1:] != tuple(shape):
        raise ValueError(
            f"{path}: proposals are {masks.shape[1]}x{masks.shape[2]}, expected {shape[0]}x{shape[1]}"
        )
    return masks


def _as_stack(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3:
        return proposals_from_masks(array)
    if array.ndim == 2:
        return proposals_from_labels(array)
    raise ValueError(f"{what}: expected an (N, H, W) mask stack or an (H, W) label image, got shape {array.shape}")
