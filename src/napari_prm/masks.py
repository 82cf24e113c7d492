"""Mask utilities in one place: overlaps, greedy suppression, RLE and resizing.

Every function takes plain numpy arrays (`resize_nearest` also a `ScaledMasks`, a stack
held at a working size and enlarged on demand). Masks are boolean (any non-zero value counts as
inside); a stack is ``(N, H, W)``. Overlaps are counted with sparse products: on long,
thin matrices (few masks, many pixels) multithreaded BLAS is slow and erratic on a loaded
machine, and sparse rows cost memory in proportion to the masks' areas only (see
``docs/benchmarks.md``). RLE is COCO's, through pycocotools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools import mask as coco_mask
from scipy import sparse

from .scaled import ScaledStack

__all__ = [
    "mask_iou",
    "greedy_mask_nms",
    "nearest_indices",
    "resize_nearest",
    "ScaledMasks",
    "encode_rle",
    "encode_rle_window",
    "decode_rle",
    "decode_rles",
    "segmentation_to_rle",
    "rle_area",
    "rle_bbox",
]


# Largest (pixels x kept masks) array `greedy_mask_nms` holds densely (float32: 64 MiB).
_DENSE_KEPT_VALUES = 16 * 2**20


def _flat(masks: np.ndarray, name: str, *, stack: bool = False) -> np.ndarray:
    """``masks`` as (N, pixels) bool rows; ``stack``: only an (N, H, W) stack (or more axes) is taken."""
    masks = np.asarray(masks)
    if masks.ndim < (3 if stack else 2):
        one = " (one (H, W) mask? mask[None] is a stack of it)" if masks.ndim == 2 else ""
        raise ValueError(f"{name}: expected an (N, H, W) stack of masks, got shape {masks.shape}{one}")
    flat = masks.reshape(len(masks), int(np.prod(masks.shape[1:])))
    return flat if flat.dtype == bool else flat != 0


def _iou(intersection: np.ndarray, area_rows: np.ndarray, area_columns: np.ndarray) -> np.ndarray:
    """IoU from intersections and areas; 0 where the union is empty."""
    union = area_rows[:, None] + area_columns[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray | None = None) -> np.ndarray:
    """Intersection over union of every mask of one stack with every mask of another.

    Parameters
    ----------
    masks_a : (M, H, W) bool ndarray
    masks_b : (K, H, W) bool ndarray, optional
        Default: ``masks_a`` itself.

    Returns
    -------
    iou : (M, K) float64 ndarray
        0 for two empty masks.

    Raises
    ------
    ValueError
        Naming the argument: not a stack (one ``(H, W)`` mask: pass ``mask[None]``), or
        stacks of masks of different sizes.

    Examples
    --------
    >>> a = np.zeros((1, 2, 2), bool); a[0, 0] = True          # top row: 2 pixels
    >>> b = np.zeros((1, 2, 2), bool); b[0, :, 0] = True       # left column: 2 pixels
    >>> mask_iou(a, b)
    array([[0.33333333]])
    """
    # two (H, W) masks were taken as H masks of W pixels each: an H × H matrix of nonsense
    flat_a = _flat(masks_a, "masks_a", stack=True)
    flat_b = flat_a if masks_b is None else _flat(masks_b, "masks_b", stack=True)
    if flat_a.shape[1] != flat_b.shape[1]:
        raise ValueError(f"masks differ in size: {np.shape(masks_a)[1:]} and {np.shape(masks_b)[1:]}")
    rows_a = sparse.csr_array(flat_a, dtype=np.float64)
    rows_b = rows_a if masks_b is None else sparse.csr_array(flat_b, dtype=np.float64)
    intersection = (rows_a @ rows_b.T).toarray()
    return _iou(intersection, flat_a.sum(axis=1, dtype=np.float64), flat_b.sum(axis=1, dtype=np.float64))


def greedy_mask_nms(
    masks: np.ndarray,
    iou_threshold: float,
    *,
    max_kept: int | None = None,
    return_suppressors: bool = False,
    chunk_size: int = 256,
):
    """Greedy non-maximum suppression of ranked masks by their IoU.

    Walks the masks in order and keeps each one unless its IoU with a mask kept before
    it is at least ``iou_threshold``.

    Parameters
    ----------
    masks : (N, H, W) bool ndarray
        Ranked best first.
    iou_threshold : float
        A mask whose IoU with a kept mask is at least this is dropped. Empty masks are
        never dropped (their IoU with anything is 0).
    max_kept : int, optional
        Stop once this many masks are kept; the rest are not examined.
    return_suppressors : bool, optional
        Also return, for every mask, which kept mask dropped it.
    chunk_size : int, optional
        Masks compared at once; memory grows with ``chunk_size * (chunk_size + kept)``.

    Returns
    -------
    kept : (k,) int64 ndarray
        Indices of the kept masks, in order.
    suppressors : (N,) int64 ndarray
        Only with ``return_suppressors``: the index of the first kept mask (in ranking
        order) whose IoU with mask ``i`` reached the threshold; -1 for kept masks and for
        masks not examined.

    Notes
    -----
    Overlaps come from sparse products of ``chunk_size`` masks at a time with
    themselves and with the masks kept so far, so a long ranking that stops early at
    ``max_kept`` costs little.

    Examples
    --------
    >>> masks = np.zeros((3, 4, 4), bool)
    >>> masks[0, :2] = True; masks[1, :2, :3] = True; masks[2, 2:] = True
    >>> greedy_mask_nms(masks, 0.5)  # mask 1 covers 6 of mask 0's 8 pixels: IoU 0.75
    array([0, 2])
    """
    if not np.isfinite(float(iou_threshold)):
        raise ValueError(f"iou_threshold: expected a finite number, got {iou_threshold!r}")
    flat = _flat(masks, "masks")
    count, pixels = flat.shape
    limit = count if max_kept is None else max(int(max_kept), 0)
    chunk_size = max(int(chunk_size), 1)
    area = flat.sum(axis=1, dtype=np.float64)
    suppressors = np.full(count, -1, dtype=np.int64)
    kept: list[int] = []
    # The kept masks as columns: dense when small (sparse x dense is the fastest product),
    # else sparse rows, so that full-resolution masks never fill a dense (pixels, kept) array.
    dense_kept = pixels * min(limit, count) <= _DENSE_KEPT_VALUES
    kept_columns = np.zeros((pixels, min(limit, count)), np.float32) if dense_kept else None
    kept_rows = None
    for start in range(0, count, chunk_size):
        if len(kept) >= limit:
            break
        batch = np.arange(start, min(start + chunk_size, count))
        rows = sparse.csr_array(flat[batch], dtype=np.float32 if dense_kept else np.float64)
        iou_batch = _iou((rows @ rows.T).toarray().astype(np.float64), area[batch], area[batch])
        first_kept = np.full(len(batch), -1)
        if kept:
            if dense_kept:
                intersection = rows @ kept_columns[:, : len(kept)]
            else:
                intersection = (rows @ kept_rows.T).toarray()
            hit = _iou(intersection.astype(np.float64), area[batch], area[kept]) >= iou_threshold
            first_kept = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
        accepted: list[int] = []
        for row in range(len(batch)):
            if first_kept[row] >= 0:
                suppressors[batch[row]] = kept[first_kept[row]]
                continue
            if accepted:
                hits = np.flatnonzero(iou_batch[row, accepted] >= iou_threshold)
                if hits.size:
                    suppressors[batch[row]] = batch[accepted[hits[0]]]
                    continue
            accepted.append(row)
            if len(kept) + len(accepted) >= limit:
                break
        if accepted:
            if dense_kept:
                kept_columns[:, len(kept) : len(kept) + len(accepted)] = flat[batch[accepted]].T
            else:
                new_rows = rows[accepted]
                kept_rows = new_rows if kept_rows is None else sparse.vstack([kept_rows, new_rows], format="csr")
            kept += batch[accepted].tolist()
    kept_indices = np.asarray(kept, dtype=np.int64)
    return (kept_indices, suppressors) if return_suppressors else kept_indices


# --------------------------------------------------------------------------- resizing
def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Nearest-neighbour source index of each of ``size_out`` output pixels.

    Pixel centres are matched: output pixel ``i`` reads input pixel
    ``floor((i + 0.5) * size_in / size_out)``, so enlarging repeats every pixel equally
    and shrinking samples the pixel under the centre of each block (after it, for an even
    block).

    Parameters
    ----------
    size_in : int
        Pixels of the input axis.
    size_out : int
        Pixels of the output axis.

    Returns
    -------
    (size_out,) int64 ndarray
        Values in ``[0, size_in)``.
    """
    return np.minimum(((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes (masks, mask stacks, label images).

    Parameters
    ----------
    array : (..., h, w) ndarray or ScaledMasks
        Any dtype; values are copied, never blended. A `ScaledMasks` is resized
        from its working size (see `ScaledMasks.resize`).
    shape : (int, int)
        Output ``(H, W)``.

    Returns
    -------
    (..., H, W) ndarray
        ``array`` itself when it already has that size. See `nearest_indices`.
    """
    if isinstance(array, ScaledMasks):
        return array.resize(shape)
    array = np.asarray(array)
    height, width = (int(s) for s in shape)
    if array.shape[-2:] == (height, width):
        return array
    rows = nearest_indices(array.shape[-2], height)
    columns = nearest_indices(array.shape[-1], width)
    return array[..., rows, :][..., columns]


class ScaledMasks(ScaledStack):
    """An (N, H, W) mask stack held at a lower resolution, enlarged only where needed.

    The stack it stands for is ``resize_nearest(masks, shape)``; it is never built
    whole. Indexing one mask gives it at ``(H, W)``, slicing (or an index array) gives
    another `ScaledMasks` (see :class:`napari_prm.scaled.ScaledStack`), and :meth:`resize`
    gives the stack at any other size exactly as resizing the full stack would, so a
    300-mask stack of a 24-megapixel image costs its working size's bytes, not 7 GB.

    Parameters
    ----------
    masks : (N, h, w) bool ndarray
        The masks at their working size (any non-zero value counts as inside).
    shape : (int, int)
        ``(H, W)``: the size of the image they are for.

    Attributes
    ----------
    masks : (N, h, w) bool ndarray
    shape : (int, int, int)
        ``(N, H, W)``, as an ndarray's.

    Examples
    --------
    >>> small = np.zeros((1, 2, 2), bool); small[0, 0, 0] = True
    >>> stack = ScaledMasks(small, (4, 6))
    >>> stack[0].astype(int)
    array([[1, 1, 1, 0, 0, 0],
           [1, 1, 1, 0, 0, 0],
           [0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0]])
    >>> stack.nbytes, stack.resize((2, 3)).shape
    (4, (1, 2, 3))
    """

    def __init__(self, masks: np.ndarray, shape: tuple[int, int]):
        masks = np.asarray(masks)
        super().__init__(masks if masks.dtype == bool else masks != 0, shape)

    @property
    def masks(self) -> np.ndarray:
        """(N, h, w) bool ndarray: the masks at their working size (``planes``)."""
        return self.planes

    def _resized(self, planes: np.ndarray) -> np.ndarray:
        return resize_nearest(planes, self.shape[1:])

    def resize(self, shape: tuple[int, int]) -> np.ndarray:
        """The stack at ``shape``: ``resize_nearest(self.to_array(), shape)``, without building
        the full stack (the two nearest-neighbour index maps are composed).

        Parameters
        ----------
        shape : (int, int)
            ``(height, width)`` of the result.

        Returns
        -------
        (N, *shape) bool ndarray
        """
        height, width = (int(s) for s in shape)
        rows = nearest_indices(self.masks.shape[1], self.shape[1])[nearest_indices(self.shape[1], height)]
        columns = nearest_indices(self.masks.shape[2], self.shape[2])[nearest_indices(self.shape[2], width)]
        return self.masks[:, rows, :][:, :, columns]

    def to_array(self) -> np.ndarray:
        """The whole (N, H, W) stack (N times H × W bytes)."""
        return self.resize(self.shape[1:])


# --------------------------------------------------------------------------- RLE
def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of one (H, W) mask, ready for JSON.

    Parameters
    ----------
    mask : (H, W) ndarray
        Any dtype; non-zero values are inside.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}``.

    Raises
    ------
    ValueError
        ``mask`` is not 2-D (a stack: ``[encode_rle(m) for m in masks]``).
    """
    shape = np.shape(mask)
    if len(shape) != 2:
        # pycocotools encodes a stack as a list, which failed here as "list indices must be integers"
        raise ValueError(f"mask: expected one (H, W) mask, got shape {shape}"
                         + (": for a stack, [encode_rle(m) for m in masks]" if len(shape) == 3 else ""))
    mask = np.asarray(mask)
    if mask.dtype != bool:
        mask = mask != 0
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_rle_window(window: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> dict:
    """`encode_rle` of a (H, W) mask that is zero outside ``window``, given only that window.

    As fast as the window is small: a mask of a large image is neither made nor scanned (a COCO
    export of a 4096 × 4096 label image with 2,000 instances encoded 2,000 whole images).

    Parameters
    ----------
    window : (h, w) ndarray
        The mask's pixels in its window; non-zero values are inside.
    origin : (int, int)
        The window's first row and column in the mask.
    shape : (int, int)
        ``(H, W)`` of the mask.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}``, the same as `encode_rle` of the whole mask.
    """
    height, width = (int(v) for v in shape)
    top, left = (int(v) for v in origin)
    window = np.asarray(window) != 0
    if window.ndim != 2 or top < 0 or left < 0 or top + window.shape[0] > height or left + window.shape[1] > width:
        raise ValueError(f"window: a {window.shape} window at {origin} does not fit a {shape} mask")
    # runs down each column (COCO RLE is column-major), then joined where one column's run ends
    # at the image's last row and the next column's starts at its first
    edges = np.diff(np.pad(window.T.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    columns, rows = np.nonzero(edges == 1)
    starts = (left + columns).astype(np.int64) * height + top + rows
    columns, rows = np.nonzero(edges == -1)
    ends = (left + columns).astype(np.int64) * height + top + rows
    if len(starts):
        apart = ends[:-1] != starts[1:]
        starts, ends = starts[np.r_[True, apart]], ends[np.r_[apart, True]]
    bounds = np.empty(2 * len(starts), dtype=np.int64)
    bounds[0::2], bounds[1::2] = starts, ends
    counts = np.diff(np.r_[0, bounds, height * width])
    if len(counts) > 1 and counts[-1] == 0:  # ends inside: no empty last run, as pycocotools encodes it
        counts = counts[:-1]
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping) -> np.ndarray:
    """(H, W) bool mask of one compressed RLE (``counts`` as str or bytes).

    Parameters
    ----------
    rle : mapping
        ``{"size": [H, W], "counts": str or bytes}``.
    """
    return coco_mask.decode(rle).astype(bool)


def decode_rles(rles: Sequence[Mapping], shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool stack of N compressed RLEs of size ``shape``; (0, H, W) for none.

    Parameters
    ----------
    rles : sequence of mapping
        Compressed RLEs, all of size ``shape``.
    shape : (int, int)
        ``(H, W)``, for the empty stack of no RLE.
    """
    if not len(rles):
        return np.zeros((0, *shape), bool)
    return np.ascontiguousarray(coco_mask.decode(list(rles)).transpose(2, 0, 1)).astype(bool)


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """Compressed RLE of a COCO ``segmentation``: polygons, uncompressed or compressed RLE.

    Parameters
    ----------
    segmentation : list of polygons, or dict with ``size`` and ``counts``
        A polygon is a flat list ``[x0, y0, x1, y1, ...]``; ``counts`` a list
        (uncompressed RLE) or a str/bytes (compressed).
    height, width : int
        The image size: polygons are drawn at it, an RLE's ``size`` must equal it.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": bytes}`` as pycocotools takes it.

    Raises
    ------
    ValueError
        A polygon with an odd number of coordinates or with NaN/infinite ones; an RLE
        whose ``size`` differs from ``(height, width)``, whose counts are negative, hold
        characters outside COCO's alphabet, end in the middle of a number, or do not add
        up to ``height * width`` (pycocotools would decode such counts into a made-up
        mask). The message says what is wrong; callers add the file and item.

    Notes
    -----
    A polygon of fewer than 3 points encloses no area and is left out (pycocotools
    would read a 4-number polygon as a box).
    """
    height, width = (_size_value(name, value) for name, value in (("height", height), ("width", width)))
    if isinstance(segmentation, list):
        return _polygons_to_rle(segmentation, height, width)
    if not isinstance(segmentation, Mapping):
        raise ValueError(f"segmentation: expected a list of polygons or an RLE dict with 'size' and "
                         f"'counts', got {type(segmentation).__name__}")
    missing = [key for key in ("size", "counts") if key not in segmentation]
    if missing:
        raise ValueError(f"RLE: missing {' and '.join(missing)}")
    size = segmentation["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"RLE: size: expected [height, width], got {size!r}")
    size = [_size_value(f"RLE size[{i}]", v) for i, v in enumerate(size)]
    if size != [height, width]:
        raise ValueError(f"RLE: its size {size[0]}×{size[1]} differs from the image's {height}×{width}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        values = counts
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError("RLE: counts: expected integers")
    elif isinstance(counts, (str, bytes)):
        counts = counts.encode("ascii", errors="replace") if isinstance(counts, str) else counts
        values = _compressed_counts(counts)
    else:
        raise ValueError(f"RLE: counts: expected a list of integers or a string, got {type(counts).__name__}")
    if any(v < 0 for v in values):
        raise ValueError("RLE: counts: a run has a negative length (corrupt counts)")
    if sum(values) != height * width:
        raise ValueError(f"RLE: counts cover {sum(values)} pixels, but the mask has "
                         f"{height}×{width} = {height * width} (corrupt counts)")
    if isinstance(counts, list):
        return coco_mask.frPyObjects({"size": size, "counts": [int(v) for v in counts]}, height, width)
    return {"size": size, "counts": counts}


def _size_value(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)) \
            or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def _polygons_to_rle(polygons: list, height: int, width: int) -> dict:
    kept = []
    for number, polygon in enumerate(polygons):
        try:
            coordinates = np.asarray(polygon, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"polygon {number}: expected a flat list of numbers, got {polygon!r:.60}") from None
        if coordinates.ndim != 1 or len(coordinates) % 2:
            raise ValueError(f"polygon {number}: expected an even number of coordinates (x, y pairs), "
                             f"got {coordinates.size}")
        if not np.isfinite(coordinates).all():
            raise ValueError(f"polygon {number}: holds NaN or infinite coordinates")
        if len(coordinates) >= 6:
            kept.append(coordinates.tolist())
    if not kept:
        return coco_mask.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return coco_mask.merge(coco_mask.frPyObjects(kept, height, width))


def _compressed_counts(counts: bytes) -> list[int]:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``), checked.

    Each number is 5-bit groups in characters ``chr(48 + group)`` (bit 0x20: more groups
    follow; 0x10 of the last: negative); from the third number on it is a difference
    to the number two before it.
    """
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("RLE: counts end in the middle of a number (truncated)")
            group = counts[position] - 48
            if not 0 <= group < 64:
                raise ValueError(f"RLE: counts: character {chr(counts[position])!r} at position "
                                 f"{position} is not a COCO RLE character")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def rle_area(rle: Mapping) -> int:
    """Pixels inside a compressed RLE.

    Parameters
    ----------
    rle : mapping
        A compressed RLE.
    """
    return int(coco_mask.area(rle))


def rle_bbox(rle: Mapping) -> list[float]:
    """Bounding box ``[x, y, width, height]`` (COCO's order) of a compressed RLE.

    Parameters
    ----------
    rle : mapping
        A compressed RLE.
    """
    return [float(v) for v in coco_mask.toBbox(rle)]
