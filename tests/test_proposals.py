"""Segment proposal sources: the built-in generator, PRM-guided, given files and arrays."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from napari_prm.io import read_image
from napari_prm.masks import ScaledMasks, resize_nearest
from napari_prm.proposals import (
    combine_proposals,
    default_proposals,
    load_proposals,
    make_proposals,
    prm_guided_proposals,
    proposals_from_labels,
    proposals_from_masks,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def best_iou(proposals: np.ndarray, target: np.ndarray) -> float:
    return max(iou(p, target) for p in proposals)


@pytest.fixture(scope="module")
def shapes_image():
    """120 x 160 RGB: grey background, a red disc and a blue rectangle, some noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 40) ** 2 + (xx - 45) ** 2 < 22**2
    rectangle = (yy >= 60) & (yy < 105) & (xx >= 90) & (xx < 145)
    image = np.full((120, 160, 3), 128.0)
    image[disc] = (200, 40, 40)
    image[rectangle] = (40, 60, 190)
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8), disc, rectangle


def release_item(mask: np.ndarray) -> dict:
    """Encode a mask in the original release's format, written out independently here."""
    flat = np.concatenate([[0], mask.ravel().astype(np.int8), [0]])
    changes = np.flatnonzero(np.diff(flat))
    starts, ends = changes[0::2], changes[1::2]
    runs = np.stack([starts + 1, ends - starts], axis=1).astype("<u4").ravel()
    return {"data": base64.b64encode(runs.tobytes()).decode(), "shape": list(mask.shape)}


# --------------------------------------------------------------- generator


def test_default_proposals_find_the_objects_of_a_simple_image(shapes_image):
    image, disc, rectangle = shapes_image
    proposals = default_proposals(image)
    assert proposals.dtype == bool and proposals.shape[1:] == image.shape[:2]
    assert 2 <= len(proposals) <= 300
    assert best_iou(proposals, disc) > 0.9
    assert best_iou(proposals, rectangle) > 0.9
    assert len(default_proposals(image, max_proposals=5)) == 5


@pytest.mark.parametrize(
    "convert",
    [
        lambda im: im.mean(axis=-1).astype(np.uint16) * 40,  # 2D uint16, narrow range
        lambda im: im.astype(np.float32) / 255 * 7 - 3,  # float, arbitrary range
        lambda im: np.dstack([im, np.full(im.shape[:2], 255, np.uint8)]),  # RGBA
    ],
    ids=["gray-uint16", "float", "rgba"],
)
def test_default_proposals_take_what_napari_holds(shapes_image, convert):
    image, disc, _ = shapes_image
    proposals = default_proposals(convert(image))
    assert proposals.shape[1:] == image.shape[:2]
    assert best_iou(proposals, disc) > 0.9


def test_default_proposals_refuse_bad_input(shapes_image):
    with pytest.raises(ValueError, match=r"image: expected \(H, W\)"):
        default_proposals(np.zeros((4, 10, 10, 3)))
    with pytest.raises(ValueError, match="colour_spaces"):
        default_proposals(shapes_image[0], colour_spaces=("xyz",))
    # A flat image has a single region, larger than any proposal may be.
    assert default_proposals(np.zeros((30, 40), np.uint8)).shape == (0, 30, 40)


def test_default_proposals_cover_large_instances_of_a_real_photo(shared_data):
    from pycocotools.coco import COCO

    coco = COCO(str(shared_data / "coco128" / "annotations" / "instances_val2017.json"))
    image_id = 139  # living room: people, chairs, a tv, a clock, vases ...
    image = read_image(shared_data / "coco128" / "val2017" / coco.imgs[image_id]["file_name"])
    proposals = default_proposals(image)
    large = [coco.annToMask(a).astype(bool) for a in coco.imgToAnns[image_id] if a["area"] >= 96**2]
    assert large
    assert np.mean([best_iou(proposals, mask) >= 0.5 for mask in large]) >= 0.5


def test_scaled_default_proposals_are_the_same_stack_held_at_the_working_size():
    from skimage import data

    image = data.chelsea()  # 300×451: segmented at 213×320
    full = default_proposals(image)
    # the built-in proposals as they were before the scaled form existed (5d0f8ad)
    assert full.shape == (300, 300, 451) and int(full.sum()) == 2082087
    assert full[:5].sum(axis=(1, 2)).tolist() == [425, 1662, 3934, 4485, 14031]
    scaled = default_proposals(image, scaled=True)
    assert isinstance(scaled, ScaledMasks)
    assert scaled.masks.shape == (300, 213, 320) and scaled.shape == full.shape
    assert scaled.nbytes == 300 * 213 * 320
    np.testing.assert_array_equal(scaled.to_array(), full)
    np.testing.assert_array_equal(scaled[7], full[7])
    np.testing.assert_array_equal(scaled[[3, 1]], full[[3, 1]])
    first = scaled[:100]
    assert isinstance(first, ScaledMasks) and len(first) == 100 and first.shape == (100, 300, 451)
    # the network grid, a shrink to a non-divisor, an enlargement and the image's own size
    for grid in [(448, 448), (96, 130), (900, 1353), (300, 451)]:
        np.testing.assert_array_equal(resize_nearest(first, grid), resize_nearest(full[:100], grid))


def test_scaled_default_proposals_of_a_small_image_are_at_its_size(small_cat):
    scaled = default_proposals(small_cat, scaled=True)  # 100×151: below the working size
    assert scaled.masks.shape[1:] == small_cat.shape[:2]
    np.testing.assert_array_equal(scaled.masks, default_proposals(small_cat))


def test_make_proposals_scales_only_the_builtin_proposals_alone(shapes_image):
    image = np.repeat(np.repeat(shapes_image[0], 3, axis=0), 3, axis=1)  # 360×480
    stack = make_proposals("default", image, scaled=True)
    assert isinstance(stack, ScaledMasks) and stack.masks.shape[1:] == (240, 320)
    np.testing.assert_array_equal(stack.to_array(), make_proposals("default", image))
    given = np.zeros((2, *image.shape[:2]), bool)
    given[0, :10] = given[1, :, :10] = True
    out = make_proposals(given, image, scaled=True)  # a user's full-size stack: as given
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, given)


# --------------------------------------------------------------- PRM-guided


def test_prm_guided_proposals_outline_the_object_a_prm_sees(shapes_image):
    image, disc, rectangle = shapes_image
    prms = np.zeros((2,) + image.shape[:2], np.float32)
    # Sparse responses on parts of each object, as peak backpropagation gives.
    for y, x in [(30, 40), (45, 55), (50, 35), (25, 50)]:
        prms[0, y, x] = 1.0
    for y, x in [(70, 100), (95, 135), (80, 120)]:
        prms[1, y, x] = 1.0
    proposals = prm_guided_proposals(image, prms)
    assert proposals.dtype == bool and proposals.shape[1:] == image.shape[:2]
    assert best_iou(proposals, disc) > 0.8
    assert best_iou(proposals, rectangle) > 0.8
    with pytest.raises(ValueError, match=r"prms: expected a \(K, 120, 160\) array"):
        prm_guided_proposals(image, prms[:, :100])


# ------------------------------------------------------------ given proposals


def test_demo_proposals_decode_to_200_masks_of_the_image_size(shared_data):
    demo = shared_data / "prm_demo"
    for number in range(5):
        proposals = load_proposals(demo / f"sample{number}.json")
        height, width = read_image(demo / f"sample{number}.jpg").shape[:2]
        assert proposals.shape == (200, height, width) and proposals.dtype == bool
        assert proposals.reshape(200, -1).any(axis=1).all()


def test_demo_proposals_match_a_run_by_run_decoding(shared_data):
    demo = shared_data / "prm_demo"
    items = json.loads((demo / "sample0.json").read_text())
    proposals = load_proposals(demo / "sample0.json", shape=(375, 500))
    for index in (0, 1, 57, 199):
        runs = np.frombuffer(base64.b64decode(items[index]["data"]), dtype="<u4")
        expected = np.zeros(375 * 500, bool)
        for start, length in zip(runs[0::2], runs[1::2]):
            expected[start - 1 : start - 1 + length] = True
        np.testing.assert_array_equal(proposals[index], expected.reshape(375, 500))


def test_release_format_hand_made(tmp_path):
    # 3 x 4 mask, runs (1, 2) and (7, 3): flat pixels 0, 1, 6, 7, 8.
    runs = np.array([1, 2, 7, 3], "<u4")
    path = tmp_path / "p.json"
    path.write_text(json.dumps([
        {"data": base64.b64encode(runs.tobytes()).decode(), "shape": [3, 4]},
        {"data": "", "shape": [3, 4]},
    ]))
    proposals = load_proposals(path)
    assert proposals[0].astype(int).tolist() == [[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
    assert not proposals[1].any()
    with pytest.raises(ValueError, match="are 3x4, expected 4x3"):
        load_proposals(path, shape=(4, 3))
    for bad in ([1, 2, 12, 3], [5, 2, 1, 2], [1, 2, 7]):  # past the end, decreasing, odd
        data = base64.b64encode(np.array(bad, "<u4").tobytes()).decode()
        path.write_text(json.dumps([{"data": data, "shape": [3, 4]}]))
        with pytest.raises(ValueError, match="proposal 0: corrupt runs"):
            load_proposals(path)


def test_release_format_round_trip(tmp_path, shapes_image):
    _, disc, rectangle = shapes_image
    path = tmp_path / "round.json"
    path.write_text(json.dumps([release_item(disc), release_item(rectangle)]))
    proposals = load_proposals(path)
    np.testing.assert_array_equal(proposals, np.stack([disc, rectangle]))


def test_coco_dataset_with_rle_and_polygon(tmp_path):
    square = np.zeros((8, 10), bool)
    square[2:5, 3:7] = True
    rle = coco_mask.encode(np.asfortranarray(square.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    dataset = {
        "images": [{"id": 1, "height": 8, "width": 10}, {"id": 2, "height": 8, "width": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "segmentation": rle},
            # Polygon around pixels rows 0..1, columns 0..3 (COCO polygons run along pixel edges).
            {"id": 2, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 2, 0, 2]]},
            {"id": 3, "image_id": 2, "segmentation": rle},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match="annotations of 2 images; pass image_id="):
        load_proposals(path)
    proposals = load_proposals(path, image_id=1)
    assert proposals.shape == (2, 8, 10)
    np.testing.assert_array_equal(proposals[0], square)
    expected = np.zeros((8, 10), bool)
    expected[0:2, 0:4] = True
    np.testing.assert_array_equal(proposals[1], expected)
    assert load_proposals(path, image_id=2).shape == (1, 8, 10)


def test_coco_results_are_ranked_by_score(tmp_path):
    masks = np.zeros((3, 6, 6), bool)
    masks[0, :2], masks[1, 2:4], masks[2, 4:] = True, True, True
    results = []
    for mask, score in zip(masks, [0.2, 0.9, 0.5]):
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        results.append({"image_id": 7, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "score": score})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    np.testing.assert_array_equal(load_proposals(path), masks[[1, 2, 0]])


def test_coco128_annotations_load_as_proposals(shared_data):
    path = shared_data / "coco128" / "annotations" / "instances_val2017.json"
    proposals = load_proposals(path, image_id=139)
    annotations = json.loads(path.read_text())
    count = sum(a["image_id"] == 139 for a in annotations["annotations"])
    assert proposals.shape == (count, 426, 640)


def test_arrays_and_image_files(tmp_path):
    labels = np.zeros((5, 6), np.uint16)
    labels[0, :2], labels[3:, 3:] = 5, 2
    np.save(tmp_path / "labels.npy", labels)
    from skimage import io

    io.imsave(tmp_path / "labels.png", labels, check_contrast=False)
    for name in ("labels.npy", "labels.png"):
        proposals = load_proposals(tmp_path / name)
        assert proposals.shape == (2, 5, 6)
        np.testing.assert_array_equal(proposals[0], labels == 2)  # increasing label order
        np.testing.assert_array_equal(proposals[1], labels == 5)
    np.savez(tmp_path / "stack.npz", masks=np.stack([labels == 2]).astype(np.uint8))
    assert load_proposals(tmp_path / "stack.npz").dtype == bool
    with pytest.raises(ValueError, match="proposal file not found"):
        load_proposals(tmp_path / "missing.json")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="unknown proposal file type '.txt'"):
        load_proposals(tmp_path / "x.txt")
    np.save(tmp_path / "empty.npy", np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match="holds no proposals"):
        load_proposals(tmp_path / "empty.npy")


def test_a_colour_image_given_as_proposals_is_named_as_one(tmp_path, tiny_checkpoint, capsys):
    """An RGB rendering of labels (303x384x3, as a label editor's 'save as shown' writes) is not
    303 masks of 384x3 pixels: the error names the file and says what it holds."""
    import tifffile
    from skimage import data, io
    from skimage.color import label2rgb

    from napari_prm.cli import main

    labels = np.zeros((303, 384), np.uint16)
    labels[20:80, 30:120], labels[150:260, 200:330] = 1, 2
    rgb = (label2rgb(labels, bg_label=0) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", rgb)
    io.imsave(tmp_path / "x.png", np.dstack([rgb, np.full((303, 384), 255, np.uint8)]), check_contrast=False)
    for name, kind, channels in (("x.tif", "an RGB", 3), ("x.png", "an RGBA", 4)):
        for shape in (None, (303, 384)):
            with pytest.raises(ValueError) as error:
                load_proposals(tmp_path / name, shape)
            message = str(error.value)
            assert message.startswith(f"{tmp_path / name}: holds a colour image ({kind} image of 303x384 pixels, "
                                      f"{channels} channels), not a label image"), message
    # a stack of three masks is still one
    np.save(tmp_path / "stack.npy", np.stack([labels == 1, labels == 2, labels > 0]).astype(np.uint8))
    assert load_proposals(tmp_path / "stack.npy", (303, 384)).shape == (3, 303, 384)

    # predict --proposals FOLDER: the image's failure says the same
    images, props = tmp_path / "images", tmp_path / "props"
    images.mkdir(), props.mkdir()
    tifffile.imwrite(images / "x.tif", data.coins())
    tifffile.imwrite(props / "x.tif", rgb)
    capsys.readouterr()
    main(["predict", str(images / "x.tif"), "--out", str(tmp_path / "o"), "--model", str(tiny_checkpoint),
          "--device", "cpu", "--proposals", str(props)])
    printed = capsys.readouterr().err
    assert f"{props / 'x.tif'}: holds a colour image (an RGB image of 303x384 pixels, 3 channels)" in printed
    assert "384x3" not in printed


def test_labels_and_masks():
    labels = np.array([[0, 3, 3], [7, 7, 0]])
    proposals = proposals_from_labels(labels)
    assert proposals.tolist() == [[[False, True, True], [False, False, False]],
                                  [[False, False, False], [True, True, False]]]
    np.testing.assert_array_equal(proposals_from_labels(SimpleNamespace(data=labels)), proposals)
    with pytest.raises(ValueError, match="expected integer labels, got dtype float64"):
        proposals_from_labels(labels.astype(float))
    with pytest.raises(ValueError, match=r"label image: expected \(H, W\)"):
        proposals_from_labels(labels[None])
    assert proposals_from_masks(np.array([[[0, 2], [1, 0]]])).tolist() == [[[False, True], [True, False]]]
    with pytest.raises(ValueError, match=r"mask stack: expected \(N, H, W\)"):
        proposals_from_masks(labels)


# ------------------------------------------------------------- combining


def test_combine_interleaves_and_drops_duplicates():
    def square(top, left, size=20):
        mask = np.zeros((64, 64), bool)
        mask[top : top + size, left : left + size] = True
        return mask

    a0, a1, b1 = square(0, 0), square(30, 30), square(40, 0)
    b0 = a1.copy()
    near = a0.copy()
    near[0, 0] = False  # IoU 399 / 400 with a0
    combined = combine_proposals(np.stack([a0, a1]), np.stack([b0, b1, near]))
    np.testing.assert_array_equal(combined, np.stack([a0, b0, b1]))
    combined = combine_proposals(np.stack([a0, a1]), np.stack([b0, b1, near]), order="concatenate",
                                 iou_threshold=1.0)
    np.testing.assert_array_equal(combined, np.stack([a0, a1, b1, near]))
    assert len(combine_proposals(np.stack([a0, a1, b1]), max_proposals=2)) == 2
    with pytest.raises(ValueError, match="stacks of different sizes"):
        combine_proposals(a0[None], a0[None, :10])
    # empty stacks (a blank image's proposals) give an empty stack of their size
    empty = np.zeros((0, 64, 64), bool)
    assert combine_proposals(empty, empty).shape == (0, 64, 64)
    np.testing.assert_array_equal(combine_proposals(empty, a0[None]), a0[None])


# ------------------------------------------------------------ dispatching


def test_make_proposals_sources(shapes_image, tmp_path):
    image, disc, rectangle = shapes_image
    default = make_proposals("default", image)
    np.testing.assert_array_equal(make_proposals("builtin", image), default)
    prms = np.zeros((1,) + image.shape[:2], np.float32)
    prms[0, 40, 45] = 1.0
    guided = make_proposals("prm", image, prms=prms)
    both = make_proposals("default+prm", image, prms=prms)
    assert all(best_iou(both, mask) >= 0.9 for mask in guided)
    np.testing.assert_array_equal(both[0], default[0])  # interleaved: default's best first
    np.testing.assert_array_equal(both[1], guided[0])

    stack = np.stack([disc, rectangle])
    np.testing.assert_array_equal(make_proposals(stack, image), stack)
    labels = disc.astype(np.int32) + 2 * rectangle
    np.testing.assert_array_equal(make_proposals(labels, image), stack)
    np.testing.assert_array_equal(make_proposals(SimpleNamespace(data=labels), image), stack)
    np.testing.assert_array_equal(make_proposals(lambda im: stack, image), stack)
    path = tmp_path / "given.json"
    path.write_text(json.dumps([release_item(disc)]))
    np.testing.assert_array_equal(make_proposals(str(path), image), disc[None])
    np.testing.assert_array_equal(make_proposals(path, image), disc[None])


def test_make_proposals_refuses_what_does_not_fit(shapes_image):
    image, disc, _ = shapes_image
    with pytest.raises(ValueError, match="proposals 'prm' need the peak response maps"):
        make_proposals("prm", image)
    with pytest.raises(ValueError, match="unknown source 'selective'"):
        make_proposals("selective", image)
    with pytest.raises(ValueError, match="proposal file not found: missing.json"):
        make_proposals("missing.json", image)
    with pytest.raises(ValueError, match="masks are 60x160, the image is 120x160"):
        make_proposals(disc[None, :60], image)
    with pytest.raises(ValueError, match="no proposals"):
        make_proposals(np.zeros((0, 120, 160), bool), image)
    with pytest.raises(ValueError, match="no proposals"):
        make_proposals(np.zeros((120, 160), np.uint8), image)
    with pytest.raises(ValueError, match="proposal function output: masks are 120x10"):
        make_proposals(lambda im: np.ones((1, 120, 10), bool), image)
    with pytest.raises(ValueError, match=r"expected an \(N, H, W\) mask stack or an \(H, W\) integer"):
        make_proposals(np.zeros((120, 160), np.float32), image)


def test_make_proposals_refuses_a_file_of_another_image(shapes_image, shared_data):
    image, _, _ = shapes_image
    with pytest.raises(ValueError, match="are 375x500, expected 120x160"):
        make_proposals(shared_data / "prm_demo" / "sample0.json", image)
