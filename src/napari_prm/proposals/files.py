"""Proposals given as files: the original PRM release's JSON, COCO, mask stacks, labels."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from .. import _validate as check
from ..io.images import read_array
from ..masks import decode_rles, segmentation_to_rle
from .stacks import proposals_from_labels, proposals_from_masks

__all__ = ["load_proposals"]


def _release_shape(number: int, item) -> tuple[int, int]:
    if not isinstance(item, dict) or "data" not in item or "shape" not in item:
        raise ValueError(f"proposal {number}: expected an object with 'data' and 'shape'")
    shape = item["shape"]
    if not isinstance(shape, list) or len(shape) != 2:
        raise ValueError(f"proposal {number}: shape: expected [height, width], got {shape!r}")
    return tuple(check.positive_int(f"proposal {number}: shape[{i}]", v) for i, v in enumerate(shape))


def _release_runs(number: int, item) -> np.ndarray:
    data = item["data"]
    if not isinstance(data, str):
        raise ValueError(f"proposal {number}: data: expected a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as error:  # binascii.Error
        raise ValueError(f"proposal {number}: data is not valid base64 ({error})") from None
    if len(raw) % 4:
        raise ValueError(f"proposal {number}: data holds {len(raw)} bytes, expected 4-byte integers "
                         "(a multiple of 4)")
    return np.frombuffer(raw, dtype="<u4").astype(np.int64)


def _decode_release(items: list) -> np.ndarray:
    """The original PRM release's format: base64 little-endian uint32 (start, length)
    pairs, starts 1-based in the row-major flattened mask."""
    shapes = [_release_shape(number, item) for number, item in enumerate(items)]
    sizes = set(shapes)
    if len(sizes) != 1:
        raise ValueError(f"masks of different shapes {sorted(sizes)}")
    height, width = sizes.pop()
    total = height * width
    rles = []
    for number, item in enumerate(items):
        runs = _release_runs(number, item)
        starts, lengths = runs[0::2] - 1, runs[1::2]
        ends = starts + lengths if len(runs) % 2 == 0 else None
        if (
            ends is None
            or (len(runs) and (starts[0] < 0 or ends[-1] > total))
            or np.any(starts[1:] < ends[:-1])
            or np.any(lengths < 0)
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
        images = data.get("images", [])
        if not isinstance(annotations, list) or not isinstance(images, list):
            raise ValueError("'annotations' and 'images' must be lists")
        sizes = {}
        for number, image in enumerate(images):
            if not isinstance(image, dict) or "id" not in image:
                raise ValueError(f"image {number}: expected an object with 'id', 'height' and 'width'")
            try:
                sizes[image["id"]] = tuple(check.positive_int(f"image {number}: {key}", image.get(key))
                                           for key in ("height", "width"))
            except ValueError:
                continue  # only polygons need it; they say so below
    else:
        annotations, sizes = data, {}
    for number, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "segmentation" not in annotation:
            raise ValueError(f"annotation {number}: expected an object with a 'segmentation'")
    ids = sorted({a.get("image_id") for a in annotations}, key=str)
    if image_id is None and len(ids) > 1:
        raise ValueError(f"annotations of {len(ids)} images; pass image_id= to choose one")
    if image_id is not None:
        annotations = [a for a in annotations if a.get("image_id") == image_id]
        if not annotations:
            raise ValueError(f"no annotations for image_id {image_id!r}")
    if annotations and all("score" in a for a in annotations):
        scores = [check.finite_float(f"annotation {n}: score", a["score"]) for n, a in enumerate(annotations)]
        annotations = [annotations[i] for i in np.argsort(-np.asarray(scores), kind="stable")]
    rles = []
    shape = None
    for number, a in enumerate(annotations):
        segm = a["segmentation"]
        size = sizes.get(a.get("image_id"))
        if isinstance(segm, dict):
            size = segm.get("size")
            if not isinstance(size, list) or len(size) != 2:
                raise ValueError(f"annotation {number}: RLE size: expected [height, width], got {size!r}")
            size = tuple(size)
        elif size is None:
            raise ValueError(
                f"annotation {number}: polygon segmentation without an image size "
                "(needs an 'images' entry with 'height' and 'width')"
            )
        try:
            segm = segmentation_to_rle(segm, *size)
        except ValueError as error:
            raise ValueError(f"annotation {number}: {error}") from None
        if shape is not None and size != shape:
            raise ValueError(f"masks of different shapes {shape} and {size}")
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
    path = check.path_like("proposal file", path)
    if not path.is_file():
        raise ValueError(f"proposal file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except ValueError as error:  # bad JSON or bad UTF-8
            raise ValueError(f"proposal file {path} is not valid JSON: {error}") from None
        try:
            if isinstance(data, list) and data and isinstance(data[0], dict) and "data" in data[0]:
                masks = _decode_release(data)
            elif isinstance(data, (list, dict)):
                masks = _decode_coco(data, image_id)
            else:
                raise ValueError("not a proposal list or a COCO annotation file")
        except ValueError as error:
            raise ValueError(f"proposal file {path}: {error}") from None
    elif suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"cannot read proposal file {path}: {error}") from None
        if suffix == ".npz":
            with loaded as archive:
                if not archive.files:
                    raise ValueError(f"{path}: no arrays inside")
                loaded = archive[archive.files[0]]
        masks = _as_stack(loaded, str(path))
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
    check.finite_array(what, array)  # a numeric array; NaN would count as inside a mask
    if array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > array.shape[-1]:
        # (H, W, 3) read as H masks of W x 3 pixels would only fail later, on a size that makes no sense
        kind = "an RGB" if array.shape[-1] == 3 else "an RGBA"
        raise ValueError(f"{what}: holds a colour image ({kind} image of {array.shape[0]}x{array.shape[1]} "
                         f"pixels, {array.shape[-1]} channels), not a label image: proposals are an (H, W) "
                         "label image (one integer per instance, 0 for the background) or an (N, H, W) mask "
                         "stack; save the labels themselves, not a coloured rendering of them")
    if array.ndim == 3:
        return proposals_from_masks(array)
    if array.ndim == 2:
        return proposals_from_labels(array)
    raise ValueError(f"{what}: expected an (N, H, W) mask stack or an (H, W) label image, got shape {array.shape}")
