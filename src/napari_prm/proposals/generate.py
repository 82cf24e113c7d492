"""The built-in, training-free proposals: hierarchical grouping of superpixels.

Selective search (Uijlings et al. 2013) with a boundary-strength term: each hierarchy
starts from a Felzenszwalb-Huttenlocher over-segmentation and merges the most similar
adjacent regions until one is left; every region of every hierarchy is a candidate.
"""

from __future__ import annotations

import heapq

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, segmentation, transform

from .. import _validate as check
from ..io.images import as_rgb_float
from ..masks import ScaledMasks, greedy_mask_nms
from .stacks import _DEDUPE_PIXELS, _grid_step

__all__ = ["default_proposals"]


def _image_shape(image: np.ndarray) -> tuple[int, int]:
    shape = np.shape(image)
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4)):
        return int(shape[0]), int(shape[1])
    raise ValueError(
        f"image: expected (H, W), (H, W, 3) or (H, W, 4), got shape {tuple(shape)}"
    )


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
    """The image with its long side shrunk to `working_size` (never enlarged).

    An image at least 4 times larger is first averaged over blocks of ``k × k`` pixels, ``k``
    half the shrink factor (whole blocks; the last partial row and column are dropped), so
    the anti-aliasing Gaussian runs on a small image: on the full image its kernel grows with
    the factor (73 taps a pixel for a 6000-pixel side), and it took 14 s and a copy of the
    image's floats on one core.
    """
    height, width = rgb.shape[:2]
    factor = min(1.0, working_size / max(height, width))
    if factor == 1.0:
        return rgb
    shape = (max(1, round(height * factor)), max(1, round(width * factor)))
    block = int(1 / factor) // 2
    if block < 2:
        return transform.resize(rgb, shape, anti_aliasing=True)
    rows, cols = height // block, width // block
    blocks = rgb[:rows * block, :cols * block].reshape(rows, block, cols, block, -1).mean(axis=(1, 3))
    # the Gaussian the full image would get (skimage's sigma, (d - 1) / 2 for a shrink by d),
    # less the blur of the block mean (variance (k² - 1) / 12), in block pixels
    wanted = np.maximum(0.0, (np.array([height / shape[0], width / shape[1]]) - 1) / 2)
    sigma = np.sqrt(np.maximum(wanted**2 - (block**2 - 1) / 12, 0.0)) / block
    return transform.resize(blocks, shape, anti_aliasing=True, anti_aliasing_sigma=(*sigma, 0))


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


def default_proposals(
    image: np.ndarray,
    *,
    max_proposals: int = 300,
    working_size: int = 320,
    scales: tuple[float, ...] = (100, 300),
    colour_spaces: tuple[str, ...] = ("lab", "hsv"),
    area_range: tuple[float, float] = (0.002, 0.85),
    iou_threshold: float = 0.85,
    scaled: bool = False,
) -> np.ndarray | ScaledMasks:
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
    scaled : bool, optional
        Return the masks at the working size, as a
        :class:`napari_prm.masks.ScaledMasks` standing for the (N, H, W) stack:
        the same masks, enlarged only where used (``stack[i]`` is mask ``i`` at
        (H, W)). Memory stays bounded by the working size whatever the image's
        (a 3000×4000 image's 300 full-size masks take 3.4 GiB).

    Returns
    -------
    proposals : (N, H, W) bool ndarray, or ScaledMasks with `scaled`
        N <= max_proposals masks, ranked best first. With `scaled`, their
        ``to_array()`` equals the stack returned without it.

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
    # a gray image is shrunk before its channel is repeated: the same values, a third of the work
    rgb = as_rgb_float(image, dtype=np.float64, keep_gray=True)
    max_proposals = check.positive_int("max_proposals", max_proposals)
    working_size = check.positive_int("working_size", working_size)
    check.finite_floats("scales", scales, low=0, low_open=True)
    check.finite_floats("area_range", area_range, length=2, low=0)
    check.finite_float("iou_threshold", iou_threshold, low=0, high=1)
    unknown = set(colour_spaces) - {"lab", "hsv", "rgb"}
    if unknown or not colour_spaces:
        raise ValueError(f"colour_spaces: expected some of 'lab', 'hsv', 'rgb', got {colour_spaces}")
    small = _shrink(rgb, working_size)
    if small.shape[-1] == 1:
        small = np.repeat(small, 3, axis=-1)
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
        masks = ScaledMasks(np.zeros((0, *small_shape), bool), (height, width))
        return masks if scaled else masks.to_array()
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="stable")
    selected = order[greedy_mask_nms(np.concatenate(grids)[order], iou_threshold, max_kept=int(max_proposals))]

    hierarchy_of = np.concatenate([np.full(len(m), i) for i, m in enumerate(memberships)])
    row_of = np.concatenate([np.arange(len(m)) for m in memberships])
    small_masks = np.empty((len(selected), *small_shape), bool)
    for hierarchy, superpixels in enumerate(segmentations):
        picked = np.flatnonzero(hierarchy_of[selected] == hierarchy)
        if len(picked):
            small_masks[picked] = memberships[hierarchy][row_of[selected[picked]]][:, superpixels]
    masks = ScaledMasks(small_masks, (height, width))
    return masks if scaled else masks.to_array()
