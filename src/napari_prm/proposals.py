"""Segment proposals: where the candidate masks of instance retrieval come from.

A proposal source is any function ``image -> (N, H, W) bool`` ranked best first.
This module provides a training-free generator (hierarchical grouping of
superpixels), PRM-guided proposals, loaders for given proposals and
:func:`make_proposals`, which turns any of these descriptions into a stack.
"""

from __future__ import annotations

import base64
import heapq
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, segmentation, transform

from .io.images import as_rgb_float, read_array

from .masks import decode_rles, greedy_mask_nms, nearest_indices, resize_nearest, segmentation_to_rle

__all__ = [
    "default_proposals",
    "prm_guided_proposals",
    "load_proposals",
    "proposals_from_labels",
    "proposals_from_masks",
    "combine_proposals",
    "make_proposals",
]

# Masks are compared on a grid of at most this many points when deduplicating
# given stacks, and of a quarter of that for the generator's own candidates.
_DEDUPE_PIXELS = 16384


def _image_shape(image: np.ndarray) -> tuple[int, int]:
    shape = np.shape(image)
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4)):
        return int(shape[0]), int(shape[1])
    raise ValueError(
        f"image: expected (H, W), (H, W, 3) or (H, W, 4), got shape {tuple(shape)}"
    )


# --------------------------------------------------------------------------- grouping


def _region_features(superpixels: np.ndarray, colour: np.ndarray, bins: int):
    """Size, colour histogram (L1-normalised) and bounding box of each superpixel."""
    n = int(superpixels.max()) + 1
    flat = superpixels.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    hists = []
    for channel in range(colour.shape[-1]):
        values = colour[..., channel].ravel()
        low, high = values.min(), values.max()
        index = ((values - low) / max(high - low, 1e-12) * bins).astype(np.int64).clip(0, bins - 1)
        hists.append(np.bincount(flat * bins + index, minlength=n * bins).reshape(n, bins))
    hist = np.concatenate(hists, axis=1) / (colour.shape[-1] * size[:, None])
    boxes = ndi.find_objects(superpixels + 1)
    bbox = np.array([[b[0].start, b[1].start, b[0].stop, b[1].stop] for b in boxes], float)
    return size, hist, bbox


def _adjacency(superpixels: np.ndarray, edges: np.ndarray):
    """Adjacent superpixel pairs (4-connectivity) with the edge strength summed and
    counted along their shared boundary."""
    pairs_a = np.concatenate([superpixels[:, :-1].ravel(), superpixels[:-1, :].ravel()])
    pairs_b = np.concatenate([superpixels[:, 1:].ravel(), superpixels[1:, :].ravel()])
    strength = np.concatenate(
        [
            np.maximum(edges[:, :-1], edges[:, 1:]).ravel(),
            np.maximum(edges[:-1, :], edges[1:, :]).ravel(),
        ]
    )
    cross = pairs_a != pairs_b
    low = np.minimum(pairs_a[cross], pairs_b[cross]).astype(np.int64)
    high = np.maximum(pairs_a[cross], pairs_b[cross]).astype(np.int64)
    n = int(superpixels.max()) + 1
    keys, inverse = np.unique(low * n + high, return_inverse=True)
    return keys // n, keys % n, np.bincount(inverse, weights=strength[cross]), np.bincount(inverse).astype(float)


def _group(size, hist, bbox, adjacency, image_area: float):
    """Greedy hierarchical grouping of adjacent regions, most similar pair first.

    The dissimilarity of two regions is the mean edge strength along their
    shared boundary, plus one minus their colour-histogram intersection, plus
    the area of their joint bounding box as a fraction of the image (selective
    search's size and fill terms, which add up to it), so small and compact
    pairs merge first.

    Returns the (R, n) superpixel membership of every region of the hierarchy
    (the n superpixels first, then one region per merge) and, per region, the
    dissimilarity at which it was merged into a larger one (inf for the root).
    """
    n = len(size)
    total = 2 * n - 1
    sizes = np.zeros(total)
    sizes[:n] = size
    hists = np.zeros((total, hist.shape[1]))
    hists[:n] = hist
    boxes = np.zeros((total, 4))
    boxes[:n] = bbox
    alive = np.zeros(total, bool)
    alive[:n] = True
    children = np.full((total, 2), -1)
    death = np.full(total, np.inf)
    neighbours: list[dict | None] = [dict() for _ in range(total)]
    first, second, boundary_sum, boundary_count = adjacency
    for a, b, s, c in zip(first.tolist(), second.tolist(), boundary_sum.tolist(), boundary_count.tolist()):
        neighbours[a][b] = [s, c]
        neighbours[b][a] = [s, c]

    def dissimilarity(region, others, sums, counts):
        corner_low = np.minimum(boxes[region, :2], boxes[others, :2])
        corner_high = np.maximum(boxes[region, 2:], boxes[others, 2:])
        box_area = np.prod(corner_high - corner_low, axis=-1)
        colour = np.minimum(hists[region], hists[others]).sum(axis=-1)
        return sums / counts + (1.0 - colour) + box_area / image_area

    weights = dissimilarity(first, second, boundary_sum, boundary_count)
    heap = list(zip(weights.tolist(), first.tolist(), second.tolist()))
    heapq.heapify(heap)
    next_region = n
    while heap:
        weight, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        merged = next_region
        next_region += 1
        alive[[a, b]] = False
        alive[merged] = True
        children[merged] = (a, b)
        death[[a, b]] = weight
        sizes[merged] = sizes[a] + sizes[b]
        hists[merged] = (hists[a] * sizes[a] + hists[b] * sizes[b]) / sizes[merged]
        boxes[merged, :2] = np.minimum(boxes[a, :2], boxes[b, :2])
        boxes[merged, 2:] = np.maximum(boxes[a, 2:], boxes[b, 2:])
        joined: dict = {}
        for old in (a, b):
            for other, (s, c) in neighbours[old].items():
                if other in (a, b):
                    continue
                if other in joined:
                    joined[other][0] += s
                    joined[other][1] += c
                else:
                    joined[other] = [s, c]
                del neighbours[other][old]
            neighbours[old] = None
        neighbours[merged] = joined
        if joined:
            others = np.fromiter(joined.keys(), np.int64, len(joined))
            stats = np.array(list(joined.values()))
            weights = dissimilarity(merged, others, stats[:, 0], stats[:, 1])
            for other, w, stat in zip(others.tolist(), weights.tolist(), stats.tolist()):
                neighbours[other][merged] = stat
                heapq.heappush(heap, (w, merged, other))
    membership = np.zeros((next_region, n), bool)
    membership[np.arange(n), np.arange(n)] = True
    for region in range(n, next_region):
        membership[region] = membership[children[region, 0]] | membership[children[region, 1]]
    return membership, death[:next_region]


def _shrink(rgb: np.ndarray, working_size: int) -> np.ndarray:
    """The image with its long side shrunk to `working_size` (never enlarged)."""
    height, width = rgb.shape[:2]
    factor = min(1.0, working_size / max(height, width))
    if factor == 1.0:
        return rgb
    shape = (max(1, round(height * factor)), max(1, round(width * factor)))
    return transform.resize(rgb, shape, anti_aliasing=True)


def _superpixels(image: np.ndarray, scale: float) -> np.ndarray:
    """Felzenszwalb superpixels; `scale` is meant for a 500-pixel image and follows the size."""
    resolution = max(image.shape[:2]) / 500
    return segmentation.felzenszwalb(
        image,
        scale=scale * resolution,
        sigma=0.8,
        min_size=int(scale / 4 * resolution**2) + 5,
        channel_axis=-1,
    )


def _grid_step(shape: tuple[int, int], pixels: int) -> int:
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / pixels))))


def default_proposals(
    image: np.ndarray,
    *,
    max_proposals: int = 300,
    working_size: int = 320,
    scales: tuple[float, ...] = (100, 300),
    colour_spaces: tuple[str, ...] = ("lab", "hsv"),
    area_range: tuple[float, float] = (0.002, 0.85),
    iou_threshold: float = 0.85,
) -> np.ndarray:
    """Training-free segment proposals by hierarchical grouping of superpixels.

    Parameters
    ----------
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        Gray, RGB or RGBA image of any dtype, normalised by
        :func:`napari_prm.io.as_rgb_float` (as the network input is).
    max_proposals : int, optional
        Most proposals returned.
    working_size : int, optional
        The image is shrunk so that its long side is this many pixels (never
        enlarged) before segmenting; masks are scaled back to (H, W).
    scales : tuple of float, optional
        Felzenszwalb scale parameters (for a 500-pixel image; scaled with the
        working size); each scale and colour space gives one hierarchy.
    colour_spaces : tuple of str, optional
        Colour spaces to segment in, from "lab", "hsv" and "rgb".
    area_range : (float, float), optional
        Kept region areas as fractions of the image: ``low <= area < high``.
    iou_threshold : float, optional
        A region whose IoU with a better-ranked one is at least this is dropped.

    Returns
    -------
    proposals : (N, H, W) bool ndarray
        N <= max_proposals masks, ranked best first.

    Notes
    -----
    Each hierarchy starts from a Felzenszwalb-Huttenlocher over-segmentation and
    greedily merges the most similar adjacent pair of regions until one is left
    (selective search, Uijlings et al. 2013, with a boundary-strength term), so
    every merge is a candidate. Regions are ranked by the dissimilarity at which
    the hierarchy absorbs them into a larger region: a region that stays apart
    from its surroundings until late is distinct from them. Near-duplicates
    across hierarchies are dropped.
    """
    height, width = _image_shape(image)
    rgb = as_rgb_float(image, dtype=np.float64)
    if int(max_proposals) < 1:
        raise ValueError(f"max_proposals: expected a positive integer, got {max_proposals}")
    unknown = set(colour_spaces) - {"lab", "hsv", "rgb"}
    if unknown or not colour_spaces:
        raise ValueError(f"colour_spaces: expected some of 'lab', 'hsv', 'rgb', got {colour_spaces}")
    small = _shrink(rgb, working_size)
    small_shape = small.shape[:2]
    lab = color.rgb2lab(small)
    edges = sum(filters.sobel(lab[..., c]) for c in range(3))
    # Scale-free boundary term: mean edge strength 0.1 in every image.
    edges = edges * (0.1 / max(edges.mean(), 1e-12))
    spaces = {"lab": lab, "hsv": color.rgb2hsv(small), "rgb": small}
    step = _grid_step(small_shape, _DEDUPE_PIXELS // 4)

    segmentations, memberships, scores, grids = [], [], [], []
    for space in colour_spaces:
        for scale in scales:
            superpixels = _superpixels(spaces[space], scale)
            size, hist, bbox = _region_features(superpixels, spaces[space], bins=16)
            membership, death = _group(size, hist, bbox, _adjacency(superpixels, edges), superpixels.size)
            fraction = membership @ size / superpixels.size
            keep = (fraction >= area_range[0]) & (fraction < area_range[1])
            segmentations.append(superpixels)
            memberships.append(membership[keep])
            scores.append(death[keep])
            grids.append(membership[keep][:, superpixels[::step, ::step].ravel()])
    if not sum(len(s) for s in scores):
        return np.zeros((0, height, width), bool)
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="stable")
    selected = order[greedy_mask_nms(np.concatenate(grids)[order], iou_threshold, max_kept=int(max_proposals))]

    hierarchy_of = np.concatenate([np.full(len(m), i) for i, m in enumerate(memberships)])
    row_of = np.concatenate([np.arange(len(m)) for m in memberships])
    out = np.empty((len(selected), height, width), bool)
    for hierarchy, superpixels in enumerate(segmentations):
        picked = np.flatnonzero(hierarchy_of[selected] == hierarchy)
        if len(picked):
            full = resize_nearest(superpixels, (height, width))
            out[picked] = memberships[hierarchy][row_of[selected[picked]]][:, full]
    return out


# ------------------------------------------------------------------ PRM-guided


def prm_guided_proposals(
    image: np.ndarray,
    prms: np.ndarray,
    *,
    thresholds: tuple[float, ...] = (0.5, 0.25, 0.1),
    smoothing: float = 0.02,
    working_size: int = 320,
    iou_threshold: float = 0.9,
) -> np.ndarray:
    """Proposals shaped like what each peak response map sees.

    Parameters
    ----------
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        The image the PRMs belong to (its superpixels shape the proposals).
    prms : (K, H, W) float ndarray
        Peak response maps at the image's size.
    thresholds : tuple of float, optional
        Levels as fractions of each snapped PRM's maximum, in the order their
        proposals are ranked.
    smoothing : float, optional
        Gaussian sigma applied to each PRM first, as a fraction of the square
        root of the image area: PRMs are sparse and their responses need joining up.
    working_size : int, optional
        Long side (pixels) of the image the superpixels are computed on.
    iou_threshold : float, optional
        Proposals with IoU at least this with a better-ranked one are dropped.

    Returns
    -------
    proposals : (N, H, W) bool ndarray
        Ranked level by level (every peak's region at the first level, then at
        the second, ...), deduplicated.

    Notes
    -----
    Each smoothed PRM is snapped to Felzenszwalb superpixels by averaging it
    within each superpixel; at every level, the connected region above it that
    holds the most response becomes a proposal, with its holes filled.
    """
    height, width = _image_shape(image)
    prms = np.asarray(prms)
    if prms.ndim != 3 or prms.shape[1:] != (height, width):
        raise ValueError(
            f"prms: expected a (K, {height}, {width}) array matching the image, got {prms.shape}"
        )
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        raise ValueError(f"thresholds: expected fractions in (0, 1), got {thresholds}")
    small = _shrink(as_rgb_float(image, dtype=np.float64), working_size)
    superpixels = _superpixels(small, 100).ravel()
    sp_size = np.maximum(np.bincount(superpixels), 1)
    small_shape = small.shape[:2]
    # Each image pixel's cell on the working grid: PRMs are area-averaged onto it.
    cell = (
        nearest_indices(small_shape[0], height)[:, None] * small_shape[1]
        + nearest_indices(small_shape[1], width)[None, :]
    ).ravel()
    cell_size = np.maximum(np.bincount(cell, minlength=small.shape[0] * small.shape[1]), 1)
    sigma = smoothing * np.sqrt(small_shape[0] * small_shape[1])
    regions: list[list[np.ndarray]] = [[] for _ in thresholds]
    for prm in prms:
        pooled = np.bincount(cell, weights=np.maximum(prm, 0).ravel(), minlength=len(cell_size))
        smooth = (pooled / cell_size).reshape(small_shape)
        smooth = ndi.gaussian_filter(smooth, sigma) if sigma > 0 else smooth
        density = np.bincount(superpixels, weights=smooth.ravel(), minlength=len(sp_size)) / sp_size
        snapped = density[superpixels].reshape(small_shape)
        peak = snapped.max()
        if not peak > 0:
            continue
        for level, threshold in enumerate(thresholds):
            components, count = ndi.label(snapped >= threshold * peak)
            mass = ndi.sum(snapped, components, np.arange(1, count + 1))
            regions[level].append(ndi.binary_fill_holes(components == 1 + int(np.argmax(mass))))
    ordered = [mask for level in regions for mask in level]
    if not ordered:
        return np.zeros((0, height, width), bool)
    return resize_nearest(combine_proposals(np.stack(ordered), iou_threshold=iou_threshold),
                          (height, width))


# ------------------------------------------------------------ given proposals


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


def proposals_from_labels(label_image) -> np.ndarray:
    """One proposal per label of a label image (a napari Labels layer's data).

    Parameters
    ----------
    label_image : (H, W) integer array-like, or an object with such a ``.data``
        0 is background; labels become proposals in increasing label order.

    Returns
    -------
    proposals : (L, H, W) bool ndarray
    """
    if not isinstance(label_image, np.ndarray) and hasattr(label_image, "data"):
        label_image = label_image.data
    labels = np.asarray(label_image)
    if labels.ndim != 2:
        raise ValueError(f"label image: expected (H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"label image: expected integer labels, got dtype {labels.dtype}")
    values = np.unique(labels)
    values = values[values != 0]
    if values.size and values.min() < 0:
        raise ValueError("label image: negative labels")
    return labels[None] == values[:, None, None]


def proposals_from_masks(stack) -> np.ndarray:
    """An (N, H, W) stack (or a sequence of (H, W) masks) as bool proposals, order kept."""
    masks = np.asarray(stack)
    if masks.ndim != 3:
        raise ValueError(f"mask stack: expected (N, H, W), got shape {masks.shape}")
    return masks if masks.dtype == bool else masks != 0


def combine_proposals(
    *stacks: np.ndarray,
    iou_threshold: float = 0.9,
    order: str = "interleave",
    max_proposals: int | None = None,
) -> np.ndarray:
    """Union of proposal stacks, near-duplicates removed.

    Parameters
    ----------
    *stacks : (N_i, H, W) bool ndarray
        Ranked stacks of the same (H, W).
    iou_threshold : float, optional
        A proposal whose IoU with an earlier kept one is at least this is dropped.
    order : {"interleave", "concatenate"}, optional
        "interleave" takes the first of every stack, then the second, ..., so
        each source reaches the top of the ranking; "concatenate" keeps stack order.
    max_proposals : int, optional
        Cap on the number returned.

    Returns
    -------
    proposals : (N, H, W) bool ndarray

    Notes
    -----
    Identical masks are always merged; other overlaps are measured on a grid of
    at most 16384 points, so masks too small to hit it are only merged when identical.
    """
    if not stacks:
        raise ValueError("combine_proposals: expected at least one stack")
    stacks = [proposals_from_masks(s) for s in stacks]
    shapes = {s.shape[1:] for s in stacks}
    if len(shapes) != 1:
        raise ValueError(f"combine_proposals: stacks of different sizes {sorted(shapes)}")
    if order not in ("interleave", "concatenate"):
        raise ValueError(f"order: expected 'interleave' or 'concatenate', got {order!r}")
    masks = np.concatenate(stacks)
    if order == "interleave":
        rank = np.concatenate([np.arange(len(s)) for s in stacks])
        masks = masks[np.argsort(rank, kind="stable")]
    seen, unique = set(), []
    for index, mask in enumerate(masks):
        key = np.packbits(mask).tobytes()
        if key not in seen:
            seen.add(key)
            unique.append(index)
    masks = masks[unique]
    step = _grid_step(masks.shape[1:], _DEDUPE_PIXELS)
    grid = masks[:, ::step, ::step].reshape(len(masks), -1)
    limit = len(masks) if max_proposals is None else int(max_proposals)
    return masks[greedy_mask_nms(grid, iou_threshold, max_kept=limit)]


# ------------------------------------------------------------------ dispatch


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
