"""Every kind of image a Python user holds reaches the network as the same RGB floats.

`napari_prm.io.image_array` turns PIL images, torch tensors and paths into arrays; what a
user passes to `predict` or `PRMPredictor.set_image` in one form predicts as in another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_prm import PRMPredictor, build_model, predict
from napari_prm.io import as_rgb_float, image_array, opacity_note


def _scene() -> np.ndarray:
    """A 40×48 RGB uint8 image: a red square on a blue background, a green bar."""
    image = np.zeros((40, 48, 3), np.uint8)
    image[..., 2] = 200
    image[5:20, 6:22] = (255, 0, 0)
    image[28:34, 10:44] = (0, 180, 0)
    return image


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny", ["cat", "dog", "bird"], pretrained=False, input_size=(32, 32))


def test_a_palette_image_is_its_colours_not_its_indices():
    palette = Image.new("P", (3, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 red, 1 green
    palette.putdata([0, 1, 1, 0, 1, 1])
    rgb = as_rgb_float(palette)
    # indices 0/1 read as gray gave black and white
    np.testing.assert_array_equal(rgb[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [0, 1, 0])


def test_a_palette_image_with_a_transparent_colour_is_rgba():
    palette = Image.new("P", (2, 2))
    palette.putpalette([255, 255, 255, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1, 0, 1])
    palette.info["transparency"] = 0  # white is transparent
    np.testing.assert_array_equal(image_array(palette)[0, :, 3], [0, 255])
    np.testing.assert_array_equal(as_rgb_float(palette)[0], [[0, 0, 0], [0, 0, 1]])


def test_a_cmyk_pil_image_is_converted_not_read_with_black_ink_as_alpha():
    white = Image.new("CMYK", (3, 2), (0, 0, 0, 0))  # no ink: white paper
    cyan = Image.new("CMYK", (3, 2), (255, 0, 0, 0))
    np.testing.assert_array_equal(as_rgb_float(white), np.ones((2, 3, 3), np.float32))  # was black (alpha 0)
    np.testing.assert_array_equal(as_rgb_float(cyan)[0, 0], [0, 1, 1])


def test_gray_plus_alpha_and_ycbcr_pil_images():
    gray_alpha = Image.new("LA", (2, 2), (100, 255))
    assert image_array(gray_alpha).shape == (2, 2, 4)  # np.asarray gave (2, 2, 2): refused
    np.testing.assert_allclose(as_rgb_float(gray_alpha), 100 / 255)
    ycbcr = Image.fromarray(_scene()).convert("YCbCr")  # its bands are luma and chroma, not R, G, B
    np.testing.assert_array_equal(image_array(ycbcr), np.asarray(ycbcr.convert("RGB")))
    padded = Image.new("RGBX", (2, 2), (10, 20, 30, 0))  # its 4th band is padding: it was read as opacity 0
    np.testing.assert_array_equal(image_array(padded)[0, 0], [10, 20, 30])


def test_torch_tensors_channels_first_or_last_and_requiring_grad():
    scene = _scene()
    expected = as_rgb_float(scene)
    chw = torch.from_numpy(scene).permute(2, 0, 1)
    np.testing.assert_array_equal(as_rgb_float(chw), expected)  # (3, 40, 48) was refused as a stack
    np.testing.assert_array_equal(as_rgb_float(torch.from_numpy(scene)), expected)
    floats = (chw.float() / 255).requires_grad_()  # np.asarray raised "Can't call numpy() ..."
    np.testing.assert_allclose(as_rgb_float(floats), expected, atol=1e-7)
    np.testing.assert_allclose(as_rgb_float(floats.to(torch.bfloat16)), expected, atol=4e-3)
    gray = torch.from_numpy(scene[..., 0]).unsqueeze(0)  # (1, H, W)
    np.testing.assert_array_equal(as_rgb_float(gray), as_rgb_float(scene[..., 0]))


@pytest.mark.parametrize("bad", [None, {"image": 1}, "", 3.5, [["a", "b"], ["c", "d"]]],
                         ids=["None", "dict", "empty-str", "float", "strings"])
def test_what_is_not_an_image_is_refused_naming_the_argument(bad, tiny):
    if bad == "":
        with pytest.raises(ValueError, match=r"image: expected a file path, got ''"):
            predict(bad, tiny)
        return
    with pytest.raises(TypeError, match=r"^image: expected an \(H, W\), \(H, W, 3\) or \(H, W, 4\) array, a PIL "
                                        rf"image, a torch tensor .*, got {type(bad).__name__}"):
        predict(bad, tiny)


def test_a_channels_first_array_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"shape \(3, 40, 48\).*only if its first axis holds colour channels \(red, "
                                         r"green, blue\), np\.moveaxis\(image, 0, -1\) puts them last\.$"):
        as_rgb_float(np.moveaxis(_scene(), -1, 0))


def test_an_array_of_z_planes_is_told_to_predict_them_one_at_a_time(tiny, tmp_path):
    """``predict(np.stack of 3 z-planes)`` was told "channels first? np.moveaxis(image, 0, -1)",
    which would read the z-planes as red, green and blue; and ``predict("zstack.tif")`` to "save one
    2-D plane", not that predict_many and the command line run a stack plane by plane."""
    import tifffile

    planes = np.random.default_rng(0).integers(0, 4000, (3, 24, 20), dtype=np.uint16)
    for stack in (planes, planes[:2]):
        with pytest.raises(ValueError) as refused:
            predict(stack, tiny)
        message = str(refused.value)
        assert ("Pass a single plane: of a stack of z-planes or time points, one at a time (image[0], image[1], "
                "...), as napari_prm.batch.predict_many and 'napari-prm predict' run a TIFF stack saved with "
                "ImageJ axes ZYX or TYX") in message
        assert message.index("one at a time") < message.find("np.moveaxis") or "np.moveaxis" not in message
        assert ("np.moveaxis" in message) == (len(stack) == 3)
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"holds 3 z-planes, not colour channels; save one 2-D plane or an RGB "
                                         r"image; napari_prm\.predict runs one 2-D image: "
                                         r"napari_prm\.batch\.predict_many \(the command line's 'napari-prm "
                                         r"predict'\) runs such a stack plane by plane, or predict each of "
                                         r"napari_prm\.io\.read_stack\(path\)\.planes$"):
        predict(path, tiny)
    # a file that is no stack gets no such hint
    tifffile.imwrite(tmp_path / "four.tif", planes[:1].repeat(4, 0), photometric="minisblack")
    with pytest.raises(ValueError) as refused:
        predict(tmp_path / "four.tif", tiny)
    assert "predict_many" not in str(refused.value)


def test_a_batch_of_one_image_is_refused_with_the_fix(tiny):
    """A network's batch of one, ``(1, 3, H, W)`` as a model takes it, said only "got 4 dimensions"."""
    import torch

    scene = _scene()
    batch = torch.from_numpy(np.moveaxis(scene, -1, 0)).unsqueeze(0)
    with pytest.raises(ValueError, match=r"got 4 dimensions, shape \(1, 3, 40, 48\) \(a batch of one image: pass "
                                         r"image\[0\]\)$"):
        predict(batch, tiny, proposals=None)
    with pytest.raises(ValueError, match=r"shape \(1, 40, 48, 3\) \(a batch of one image: pass image\[0\]\)$"):
        as_rgb_float(scene[None])
    with pytest.raises(ValueError, match=r"shape \(1, 40, 48\): .*\(a stack of one plane: image\[0\]\)\.$"):
        as_rgb_float(scene[None, ..., 0])
    # what the message says to do works
    reference = predict(scene, tiny, proposals=None, class_threshold=-1e9)
    np.testing.assert_array_equal(predict(batch[0], tiny, proposals=None, class_threshold=-1e9).peaks,
                                  reference.peaks)
    with pytest.raises(ValueError, match=r"got 4 dimensions, shape \(2, 3, 40, 48\)$"):  # a batch of two: no hint
        as_rgb_float(np.concatenate([batch.numpy()] * 2))


def test_predict_takes_the_same_image_as_an_array_a_pil_image_a_tensor_or_a_path(tiny, tmp_path):
    scene = _scene()
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    reference = predict(scene, tiny, proposals=None, class_threshold=-1e9)
    assert len(reference.peaks) > 0
    for form in (Image.fromarray(scene), torch.from_numpy(scene).permute(2, 0, 1), str(path), Path(path),
                 np.ascontiguousarray(scene[:, ::-1])[:, ::-1]):  # a negative-stride view
        pred = predict(form, tiny, proposals=None, class_threshold=-1e9)
        np.testing.assert_array_equal(pred.peaks, reference.peaks)
        np.testing.assert_array_equal(np.asarray(pred.prms), np.asarray(reference.prms))


def test_the_predictor_keeps_an_array_of_a_pil_image(tiny):
    scene = _scene()
    predictor = PRMPredictor(tiny, proposals="default")
    predictor.set_image(Image.fromarray(scene))
    assert predictor.image_shape == (40, 48)
    from_pil = predictor.predict(class_threshold=-1e9)
    predictor.set_image(scene)
    from_array = predictor.predict(class_threshold=-1e9)
    assert [i.mask.sum() for i in from_pil.instances] == [i.mask.sum() for i in from_array.instances]


def test_a_float_copy_of_an_8_bit_image_is_read_as_the_8_bit_image(tiny):
    from skimage import data

    cat = data.chelsea()[::3, ::3]
    expected = as_rgb_float(cat)
    # it was stretched between its percentiles: 1.1 % of its values clipped, others up to 0.22 off
    np.testing.assert_array_equal(as_rgb_float(cat.astype(np.float32)), expected)
    np.testing.assert_array_equal(as_rgb_float(cat.astype(np.float64)), expected)
    tensor = torch.from_numpy(np.ascontiguousarray(cat)).permute(2, 0, 1).float()
    np.testing.assert_array_equal(as_rgb_float(tensor), expected)
    reference = predict(cat, tiny, proposals=None, class_threshold=-1e9)
    np.testing.assert_array_equal(predict(tensor, tiny, proposals=None, class_threshold=-1e9).peaks, reference.peaks)
    # fractions, or values beyond 255, are not 8-bit: still stretched
    smooth = cat.astype(np.float32) + 0.5
    low, high = np.percentile(smooth, (0.5, 99.5), axis=(0, 1))  # each colour channel by its own
    np.testing.assert_allclose(as_rgb_float(smooth), np.clip((smooth - low) / (high - low), 0, 1), atol=1e-6)


def test_a_list_of_images_is_refused_with_what_to_do(tiny, tmp_path):
    scene = _scene()
    Image.fromarray(scene).save(tmp_path / "scene.png")
    # np.asarray stacked them: "expected a 2D grayscale or colour image; got 4 dimensions"
    with pytest.raises(TypeError, match=r"^image: expected one image, got a list of 2 images: pass them one at a "
                                        r"time .*predict_many"):
        predict([scene, scene], tiny)
    with pytest.raises(TypeError, match=r"got a tuple of 2 images"):
        predict((Image.open(tmp_path / "scene.png"), Image.fromarray(scene[:20])), tiny)  # a PngImageFile too
    # a nested list of numbers is an array
    assert as_rgb_float([[0, 255], [255, 0]]).shape == (2, 2, 3)
    # so is a list of image files' paths
    with pytest.raises(TypeError, match=r"^image: expected one image, got a list of 2 images"):
        predict([tmp_path / "scene.png", str(tmp_path / "scene.png")], tiny)


def test_a_nested_list_rgb_image_is_one_image(tiny):
    from skimage import data

    cat = data.chelsea()[::6, ::6]
    # its rows (W×3 lists) were taken for images: "expected one image, got a list of 50 images"
    listed = cat.tolist()
    assert image_array(listed).shape == cat.shape
    np.testing.assert_array_equal(as_rgb_float(listed), as_rgb_float(cat))
    np.testing.assert_array_equal(as_rgb_float(tuple(map(tuple, cat[..., 1].tolist()))), as_rgb_float(cat[..., 1]))
    np.testing.assert_array_equal(as_rgb_float((cat / 255).tolist()), as_rgb_float(cat / 255))
    reference = predict(cat, tiny, proposals=None, class_threshold=-1e9)
    from_list = predict(listed, tiny, proposals=None, class_threshold=-1e9)
    np.testing.assert_array_equal(from_list.peaks, reference.peaks)
    np.testing.assert_array_equal(from_list.scores, reference.scores)


@pytest.mark.parametrize(("ragged", "where"), [
    ([[1, 2, 3], [4, 5]], r"\[1\] has 2 items, \[0\] has 3"),
    ([[[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5]]], r"\[1\]\[1\] has 2 items, \[1\]\[0\] has 3"),
    ([[1, 2], 3], r"\[1\] is a number, \[0\] a list"),
    # rows of equal length whose pixels differ between rows: "its items do not make one array"
    ([[[1, 2], [3, 4]], [[1, 2, 3], [4, 5, 6]]], r"\[1\] is 2 × 3, \[0\] is 2 × 2"),
], ids=["rows", "pixels", "row-a-number", "pixels-of-rows"])
def test_a_ragged_nested_list_is_refused_naming_the_argument_and_the_place(ragged, where, tiny):
    # numpy's "setting an array element with a sequence ... inhomogeneous shape" said neither
    with pytest.raises(ValueError, match=r"^image: expected a nested list of numbers of one shape .*, got a ragged "
                                         rf"list: {where}$"):
        predict(ragged, tiny)
    with pytest.raises(ValueError, match=rf"^labels: .*{where}$"):
        image_array(ragged, name="labels")


def test_a_low_signal_float_image_of_whole_numbers_is_stretched_not_dim():
    from skimage import data

    # a 32-bit ImageJ image of counts 0..40 (a dim recording of the coins), float32 whole numbers
    coins = data.coins()[::4, ::4]
    counts = np.rint(coins.astype(np.float32) * 40 / 255)
    assert counts.max() == 38 and not np.mod(counts, 1).any()
    read = as_rgb_float(counts)[..., 0]
    # read as 8-bit it was counts / 255: the brightest coin at 0.15
    assert read.max() == 1.0 and np.percentile(read, 99.5) == pytest.approx(1.0)
    low, high = np.percentile(counts, (0.5, 99.5))
    np.testing.assert_allclose(read, np.clip((counts - low) / (high - low), 0, 1), atol=1e-6)
    # as the uint16 image of those counts reads
    np.testing.assert_allclose(read, as_rgb_float(counts.astype(np.uint16))[..., 0], atol=1e-6)
    # a float copy of an 8-bit photo reaching 128 still reads as the photo; 0..1 floats are kept
    np.testing.assert_array_equal(as_rgb_float(coins.astype(np.float32)), as_rgb_float(coins))
    assert coins.max() >= 128
    np.testing.assert_array_equal(as_rgb_float(counts / 40)[..., 0], (counts / 40).astype(np.float32))


def test_predict_many_takes_image_files_and_says_what_to_do_with_arrays(tiny, tmp_path):
    from napari_prm.batch import predict_many

    scene = _scene()
    # Path(array) raised "expected str, bytes or os.PathLike object, not ndarray", naming nothing
    with pytest.raises(TypeError, match=r"^paths\[1\]: expected an image file's path, got ndarray: .*napari_prm"
                                        r"\.predict"):
        predict_many([tmp_path / "a.png", scene], tiny, tmp_path / "out")
    # one path was read as its characters, each an image file that does not exist
    with pytest.raises(TypeError, match=r"^paths: expected a sequence of image files, got one path '.*a\.png'"):
        predict_many(str(tmp_path / "a.png"), tiny, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_predict_many_refuses_a_folder_and_says_how_to_list_its_images(tiny, tmp_path):
    """A folder among ``paths`` (``predict_many(["images/"], ...)``) ran as an image: tried twice, failed with
    "[Errno 21] Is a directory", and a summary.csv of that one "image" was written into ``out``."""
    from skimage import data

    from napari_prm.batch import collect_images, predict_many

    folder = tmp_path / "images"
    (folder / "A1").mkdir(parents=True)
    Image.fromarray(data.chelsea()[::8, ::8]).save(folder / "A1" / "cat.png")
    with pytest.raises(ValueError, match=r"^paths\[0\]: '.*images' is a folder, not an image file: "
                                         r"collect_images\(\[folder\]\) lists its images"):
        predict_many([folder], tiny, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    images, problems = collect_images([folder], recursive=True)  # as the message says
    assert problems == [] and predict_many(images, tiny, tmp_path / "out").results[0].status == "written"


def test_a_half_transparent_rgba_photo_reads_alike_as_floats_and_as_a_nested_list():
    from skimage import data

    rgba = np.dstack([data.chelsea()[::12, ::12], np.full(data.chelsea()[::12, ::12].shape[:2], 128, np.uint8)])
    photo = as_rgb_float(rgba)
    assert photo.max() <= 128 / 255 + 1e-6  # half opaque over black
    # the list (and a float copy) of that photo: its alpha of whole numbers 0..255 was clipped to
    # [0, 1], so every pixel read as fully opaque, twice as bright as the photo
    np.testing.assert_allclose(as_rgb_float(rgba.tolist()), photo, atol=1e-6)
    np.testing.assert_allclose(as_rgb_float(rgba.astype(np.float32)), photo, atol=1e-6)
    # an alpha already within [0, 1] is kept
    unit = rgba.astype(np.float32)
    unit[..., 3] = 0.5
    np.testing.assert_allclose(as_rgb_float(unit), as_rgb_float(rgba[..., :3]) * 0.5, atol=1e-6)


def test_a_mostly_transparent_rgba_image_is_noted_as_darkened(tiny):
    """Four 16-bit fluorescence channels (H, W, 4), as napari shows them (RGBA): the 4th, at
    300-900 of 65535, is read as opacity and the network saw the image at 0.9 % of its
    brightness, without a word. The prediction says so, with the mean opacity; an opaque or
    mostly opaque RGBA image gets no note."""
    from skimage import data

    cat = data.chelsea()[::3, ::3].astype(np.uint16)
    channels = np.concatenate([cat * 40 + 300, cat[..., :1] * 2 + 300], axis=-1)
    assert channels.shape == (100, 151, 4) and 300 <= channels[..., 3].min() < channels[..., 3].max() <= 900
    assert as_rgb_float(channels).max() < 0.014  # colours stretched to [0, 1], times the opacity
    prediction = predict(channels, tiny, proposals=None, class_threshold=-1e9)
    (note,) = [note for note in prediction.notes if "opacity" in note]
    assert "averages 0.01: most of the image was darkened" in note and "pass one channel" in note
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(channels)
    assert note in predictor.predict(class_threshold=-1e9).notes
    assert note in predictor.predict(points=([[50.0, 75.0]], [0])).notes
    opaque = np.concatenate([cat.astype(np.uint8), np.full((100, 151, 1), 255, np.uint8)], axis=-1)
    cut_out = opaque.copy()
    cut_out[:40, ..., 3] = 0  # 40 % transparent: mean opacity 0.6
    for image in (opaque, cut_out):
        predictor.set_image(image)
        assert not [note for note in predictor.predict(class_threshold=-1e9).notes if "opacity" in note]
    assert opacity_note(cat) is None and opacity_note(opaque[..., :3]) is None
