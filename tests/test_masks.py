"""Mask utilities on small hand-made masks whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from napari_prm.masks import (
    decode_rle,
    decode_rles,
    encode_rle,
    greedy_mask_nms,
    mask_iou,
    nearest_indices,
    resize_nearest,
    rle_area,
    rle_bbox,
    segmentation_to_rle,
)


def stack(*rows_of_strings: str) -> np.ndarray:
    """Masks drawn as text: each argument is one mask, rows separated by '/'."""
    return np.array([[[c == "#" for c in row] for row in mask.split("/")] for mask in rows_of_strings])


TOP = "####/####/..../...."  # 8 pixels
TOP_LEFT = "###./###./..../...."  # 6 pixels, all inside TOP
BOTTOM = "..../..../####/####"  # 8 pixels, disjoint from TOP
LEFT = "##../##../##../##.."  # 8 pixels, 4 shared with TOP
EMPTY = "..../..../..../...."


def test_mask_iou_by_hand():
    iou = mask_iou(stack(TOP, TOP_LEFT, EMPTY), stack(TOP, BOTTOM, LEFT, EMPTY))
    expected = [[1, 0, 4 / 12, 0],
                [6 / 8, 0, 4 / 10, 0],
                [0, 0, 0, 0]]
    np.testing.assert_allclose(iou, expected)
    assert iou.dtype == np.float64
    np.testing.assert_allclose(mask_iou(stack(TOP, LEFT)), [[1, 4 / 12], [4 / 12, 1]])


def test_mask_iou_checks_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        mask_iou(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))
    assert mask_iou(np.zeros((0, 4, 4), bool), stack(TOP)).shape == (0, 1)


def test_mask_iou_of_single_masks_is_refused_pointing_to_a_stack():
    # two (H, W) masks were read as H masks of W pixels: TOP and LEFT gave a 4 × 4 matrix
    top, left = stack(TOP, LEFT)
    with pytest.raises(ValueError, match=r"masks_a: expected an \(N, H, W\) stack of masks, got shape \(4, 4\) "
                                         r"\(one \(H, W\) mask\? mask\[None\]"):
        mask_iou(top, left)
    with pytest.raises(ValueError, match=r"masks_b: expected an \(N, H, W\) stack"):
        mask_iou(top[None], left)
    np.testing.assert_allclose(mask_iou(top[None], left[None]), [[4 / 12]])


def test_encode_rle_takes_any_non_zero_value_as_inside_and_refuses_a_stack():
    # values were cast to uint8: 256 (a label image's) became 0 and 0.5 became 0, outside
    top = stack(TOP)[0]
    for values in (top * 256, top * 0.5, top.astype(np.int64) * -1, top * 255):
        rle = encode_rle(values)
        assert rle_area(rle) == 8
        np.testing.assert_array_equal(decode_rle(rle), top)
    with pytest.raises(ValueError, match=r"mask: expected one \(H, W\) mask, got shape \(2, 4, 4\): "
                                         r"for a stack, \[encode_rle\(m\) for m in masks\]"):
        encode_rle(stack(TOP, LEFT))  # was "TypeError: list indices must be integers or slices, not str"


def test_greedy_nms_keeps_first_of_each_overlapping_group():
    masks = stack(TOP, TOP_LEFT, BOTTOM, LEFT, EMPTY, EMPTY)
    # TOP_LEFT has IoU 0.75 with TOP; LEFT has 1/3 with TOP, 0.4 with TOP_LEFT, 1/3 with BOTTOM.
    np.testing.assert_array_equal(greedy_mask_nms(masks, 0.5), [0, 2, 3, 4, 5])
    np.testing.assert_array_equal(greedy_mask_nms(masks, 0.3), [0, 2, 4, 5])
    np.testing.assert_array_equal(greedy_mask_nms(masks, 0.8), [0, 1, 2, 3, 4, 5])
    # the threshold is inclusive: IoU exactly 0.75 is a duplicate at 0.75
    np.testing.assert_array_equal(greedy_mask_nms(masks[:2], 0.75), [0])
    np.testing.assert_array_equal(greedy_mask_nms(masks, 0.5, max_kept=2), [0, 2])


def test_greedy_nms_reports_who_suppressed_whom():
    masks = stack(TOP, BOTTOM, TOP_LEFT, TOP, LEFT)
    kept, suppressors = greedy_mask_nms(masks, 0.3, return_suppressors=True)
    np.testing.assert_array_equal(kept, [0, 1])
    # LEFT overlaps TOP and BOTTOM equally (1/3): the better-ranked kept mask takes it
    np.testing.assert_array_equal(suppressors, [-1, -1, 0, 0, 0])


def test_greedy_nms_same_answer_across_chunks():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    centres, radii = rng.uniform(0, 24, (60, 2)), rng.uniform(2, 9, (60, 1))
    masks = ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) < radii[..., None] ** 2
    iou = mask_iou(masks)
    kept = []  # the definition, pair by pair
    for index in range(len(masks)):
        if not any(iou[index, other] >= 0.4 for other in kept):
            kept.append(index)
    for chunk_size in (1, 7, 256):
        np.testing.assert_array_equal(greedy_mask_nms(masks, 0.4, chunk_size=chunk_size), kept)


def test_nearest_resize_repeats_and_samples_pixel_centres():
    np.testing.assert_array_equal(nearest_indices(2, 4), [0, 0, 1, 1])
    np.testing.assert_array_equal(nearest_indices(4, 2), [1, 3])  # centre 1.0 of block 0..2
    np.testing.assert_array_equal(nearest_indices(3, 5), [0, 0, 1, 2, 2])  # centres 0.3 .. 2.7
    labels = np.array([[1, 2], [3, 4]], np.uint16)
    np.testing.assert_array_equal(resize_nearest(labels, (4, 4)),
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    masks = stack(TOP, LEFT)
    small = resize_nearest(masks, (2, 2))
    assert small.dtype == bool and small.shape == (2, 2, 2)
    np.testing.assert_array_equal(small, [[[1, 1], [0, 0]], [[1, 0], [1, 0]]])
    assert resize_nearest(masks, (4, 4)) is masks


def test_rle_round_trip_area_and_box():
    mask = stack(LEFT)[0]
    rle = encode_rle(mask)
    assert rle["size"] == [4, 4] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    assert rle_area(rle) == 8
    assert rle_bbox(rle) == [0.0, 0.0, 2.0, 4.0]  # x, y, width, height
    both = decode_rles([encode_rle(m) for m in stack(TOP, BOTTOM)], (4, 4))
    np.testing.assert_array_equal(both, stack(TOP, BOTTOM))
    assert decode_rles([], (4, 5)).shape == (0, 4, 5)


def test_segmentation_to_rle_polygon_and_uncompressed():
    # COCO's column-major runs: 0 outside, 8 inside (the first two columns), 8 outside
    uncompressed = {"size": [4, 4], "counts": [0, 8, 8]}
    np.testing.assert_array_equal(decode_rle(segmentation_to_rle(uncompressed, 4, 4)), stack(LEFT)[0])
    polygon = [[0, 0, 4, 0, 4, 2, 0, 2]]  # x, y pairs: the top two rows
    assert rle_area(segmentation_to_rle(polygon, 4, 4)) == 8
    compressed = encode_rle(stack(TOP)[0])
    np.testing.assert_array_equal(decode_rle(segmentation_to_rle(compressed, 4, 4)), stack(TOP)[0])


def test_encode_rle_window_is_encode_rle_of_the_whole_mask():
    """A mask given by its window only encodes as the whole mask does (a COCO export of a large label image
    encodes each instance's bounding box, not the whole image): runs that go on into the next column (a
    window as tall as the image), a window at the last row and column, an empty and a full one."""
    from napari_prm.masks import encode_rle, encode_rle_window

    shape = (7, 9)
    cases = [((0, 2), np.array([[0, 1], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1], [1, 0]])),  # runs join columns
             ((5, 7), np.array([[1, 0], [0, 1]])),  # ends on the mask's last pixel
             ((2, 3), np.zeros((3, 3), int)),
             ((0, 0), np.ones(shape, int)),
             ((3, 4), np.array([[2, 0, 5], [0, 0, 0], [7, 7, 0]]))]  # any non-zero value is inside
    for origin, window in cases:
        whole = np.zeros(shape, bool)
        whole[origin[0]:origin[0] + window.shape[0], origin[1]:origin[1] + window.shape[1]] = window != 0
        assert encode_rle_window(window, origin, shape) == encode_rle(whole), origin
    with pytest.raises(ValueError, match="does not fit"):
        encode_rle_window(np.ones((2, 2)), (6, 0), shape)
