import numpy as np
import pytest
import torch

from napari_prm import build_model, predict
from napari_prm.predict import Cancelled, crm_to_image, image_to_crm


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("tiny", ["a", "b", "c"], input_size=(64, 64))
    with torch.no_grad():
        model.network.fcn.classifier.weight.normal_(std=0.5)
    return model.to("cpu")


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros((1, 1, 3), np.uint8), "2×2"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.zeros((8, 8, 5), np.uint8), "stack|channel"),
        (np.zeros((4, 8, 8, 3), np.uint8), "dimensions"),
    ],
)
def test_bad_input_says_what_is_wrong(tiny, image, message):
    with pytest.raises(ValueError, match=message):
        predict(image, tiny, proposals=None)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 65535, (37, 53), dtype=np.uint16),
        np.random.default_rng(1).integers(0, 255, (50, 40, 4), dtype=np.uint8),
        np.random.default_rng(2).random((45, 45, 3)).astype(np.float32) * 1000,
    ],
    ids=["uint16-gray", "uint8-rgba", "float-rgb"],
)
def test_prediction_is_in_image_coordinates(tiny, image):
    pred = predict(image, tiny, proposals=None)
    height, width = image.shape[:2]
    k = len(pred.peaks)
    assert k > 0
    assert pred.prms.shape == (k, height, width) and pred.prms.dtype == np.float32
    np.testing.assert_allclose(pred.prms.sum(axis=(1, 2)), 1, rtol=1e-4)
    assert pred.peaks.shape == (k, 2)
    assert (pred.peaks >= -0.5).all()
    assert (pred.peaks[:, 0] <= height - 0.5).all() and (pred.peaks[:, 1] <= width - 0.5).all()
    # The tiny net has stride 4 (64 -> 16); the default sub-pixel factor 8 upsamples the CRMs.
    assert pred.scores.shape == (3,) and pred.crms.shape == (3, 128, 128)
    assert pred.sub_pixel_locating_factor == 8
    assert pred.peak_classes.dtype == np.int64 and pred.instances == []
    # Every reported peak value is the CRM value at its CRM location.
    c, y, x = pred.peaks_crm.T
    np.testing.assert_allclose(pred.peak_values, pred.crms[c, y, x])


def test_class_selection_by_name_and_threshold(tiny):
    image = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    # Without suppression across classes and without the cap, every class keeps all its peaks.
    plain = {"suppression_radius": None, "max_peaks": 1000}
    everything = predict(image, tiny, proposals=None, **plain)
    only_b = predict(image, tiny, proposals=None, classes=["b"], **plain)
    assert set(only_b.peak_classes.tolist()) == {1}
    assert len(only_b.peaks) == (everything.peak_classes == 1).sum()
    top = everything.scores.max()
    strong = predict(image, tiny, proposals=None, class_threshold=float(top), **plain)
    assert set(strong.peak_classes.tolist()) == {int(everything.scores.argmax())}
    nothing = predict(image, tiny, proposals=None, class_threshold=float(top) + 1)
    assert nothing.peaks.shape == (0, 2) and nothing.prms.shape == (0, 64, 64)
    with pytest.raises(ValueError, match="unknown class"):
        predict(image, tiny, proposals=None, classes=["zebra"])


def test_points_backpropagate_from_given_locations(tiny):
    image = np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    pred = predict(image, tiny, proposals=None, points=(np.array([[10.0, 50.0], [40.0, 8.0]]), np.array([2, 0])),
                   sub_pixel_locating_factor=1)
    np.testing.assert_array_equal(pred.peak_classes, [2, 0])
    np.testing.assert_array_equal(pred.peaks_crm[:, 1:], [[2, 12], [10, 2]])
    # The response of a location concentrates around it.
    for prm, (y, x) in zip(pred.prms, [(10, 50), (40, 8)]):
        cy, cx = np.unravel_index(prm.argmax(), prm.shape)
        assert abs(cy - y) < 16 and abs(cx - x) < 16


def test_cancel_stops_before_the_work(tiny):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(Cancelled):
        predict(image, tiny, proposals=None, cancel=lambda: True)
    stages = []
    predict(image, tiny, proposals=None, progress=lambda stage, done, total: stages.append(stage))
    assert "forward" in stages


def test_a_threading_event_cancels_as_train_s_does(tiny, tmp_path):
    # train and refine took a threading.Event; predict, PRMPredictor, calibrate_model and
    # predict_many failed on one with "'Event' object is not callable"
    import threading

    from napari_prm import PRMPredictor
    from napari_prm.data import LabeledImageDataset
    from napari_prm.peaks import calibrate_model

    image = np.zeros((32, 32, 3), np.uint8)
    event = threading.Event()
    quiet = predict(image, tiny, proposals=None, cancel=event, class_threshold=-1e9, max_peaks=2)
    np.testing.assert_array_equal(quiet.peaks, predict(image, tiny, proposals=None, class_threshold=-1e9,
                                                       max_peaks=2).peaks)
    event.set()
    with pytest.raises(Cancelled):
        predict(image, tiny, proposals=None, cancel=event)
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    with pytest.raises(Cancelled):
        predictor.predict(cancel=event)
    from PIL import Image

    paths = [tmp_path / "one.png", tmp_path / "two.png"]
    for path in paths:
        Image.fromarray(image).save(path)
    dataset = LabeledImageDataset(paths, np.eye(2, 3), ["a", "b", "c"])
    with pytest.raises(RuntimeError, match="calibration cancelled"):
        calibrate_model(tiny, dataset, cancel=event)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_prediction_inside_torch_inference_mode_is_the_same(tiny, mode):
    # a notebook's `with torch.inference_mode():` failed with "element 0 of tensors does not
    # require grad and does not have a grad_fn" (torch.no_grad() was already undone inside)
    from napari_prm import PRMPredictor

    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    options = {"class_threshold": -1e9, "max_peaks": 4, "proposals": "prm", "prm_mode": mode}
    reference = predict(image, tiny, **options)
    assert len(reference.peaks) == 4 and reference.instances
    predictor = PRMPredictor(tiny, **{k: v for k, v in options.items() if k != "max_peaks"})
    with torch.inference_mode():
        inside = predict(image, tiny, **options)
        predictor.set_image(image)
    later = predictor.predict(max_peaks=4)  # the forward pass of inference mode, back-propagated outside it
    for pred in (inside, later):
        np.testing.assert_array_equal(pred.peaks, reference.peaks)
        np.testing.assert_allclose(np.asarray(pred.prms), np.asarray(reference.prms), atol=1e-6)
        assert [i.mask.sum() for i in pred.instances] == [i.mask.sum() for i in reference.instances]
    x = torch.rand(1, 3, 64, 64)
    expected = tiny.network.peak_response_maps(x, class_threshold=-1e9, peak_threshold=None)
    with torch.inference_mode():
        network_level = tiny.network.peak_response_maps(x, class_threshold=-1e9, peak_threshold=None)
    torch.testing.assert_close(network_level.prms, expected.prms)


@pytest.mark.parametrize("factor", [1, 4])
def test_coordinate_mapping_round_trip(factor):
    crm_shape = (14 * factor, 10 * factor)
    image_shape = (300, 451)
    yx = np.array([[0, 0], [crm_shape[0] - 1, crm_shape[1] - 1], [5, 3]])
    back = image_to_crm(crm_to_image(yx, crm_shape, image_shape, factor), crm_shape, image_shape, factor)
    np.testing.assert_array_equal(back, yx)
    centre = crm_to_image(np.array([[0, 0]]), (14, 10), image_shape)
    np.testing.assert_allclose(centre, [[300 / 28 - 0.5, 451 / 20 - 0.5]])


def test_notes_say_which_threshold_nothing_reached():
    """The README's imagenet-coco on chelsea: 0 peaks and 0 instances with empty notes (the cat's
    score 6.13 passes its class threshold, but its strongest peak, 8.94, is below the calibrated
    peak threshold 9.15); preset="original" likewise (peak threshold 30)."""
    from skimage import data

    from napari_prm import load_model

    model = load_model("imagenet-coco")
    cat = data.chelsea()
    prediction = predict(cat, model, proposals=None)
    assert len(prediction.peaks) == 0
    assert prediction.notes == ["no peak reached the peak threshold 9.15; the strongest was 8.94 (cat): "
                                "lower peak_threshold to see it"]
    original = predict(cat, model, preset="original", proposals=None)
    assert len(original.peaks) == 0
    assert original.notes[0].startswith("no peak reached the peak threshold 30; the strongest was ")
    # no class passes: the class threshold and the best score
    best = int(np.argmax(prediction.scores))
    strict = predict(cat, model, class_threshold=50, proposals=None)
    assert strict.notes == [f"no class reached the class threshold 50; the best score was "
                            f"{prediction.scores[best]:.3g} (cat): lower class_threshold to see it"]
    assert model.class_names[best] == "cat"
    # the peak seen once the threshold is lowered; no note
    lowered = predict(cat, model, peak_threshold=8.5, proposals=None)
    assert len(lowered.peaks) == 1 and lowered.notes == []
    # only the chosen classes count
    assert predict(cat, model, classes=["dog"], proposals=None).notes[0].startswith(
        "no class reached the class threshold ")


@pytest.mark.parametrize("size", [2, 3, 4])
def test_a_tiny_image_without_proposals_says_why_its_peaks_have_no_instance(tiny_checkpoint, size):
    """A 2×2 to 4×4 image is one region to the built-in proposals, which keep none that large: its
    peaks passed the thresholds and got no instance, and no note said why. The same image enlarged 8
    times (the note's advice) gets instances and no such note."""
    from napari_prm import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    image = (np.random.default_rng(size).random((size, size, 3)) * 255).astype(np.uint8)
    settings = dict(proposals="default", class_threshold=-1e4, peak_threshold=-1e4, max_peaks=3)
    prediction = predict(image, model, **settings)
    assert len(prediction.peaks) == 3 and prediction.instances == []
    assert prediction.notes[-1] == (
        f"the proposals gave no mask for this {size}×{size} image, so none of its 3 peaks got an instance (the "
        "peaks and their PRMs are kept); an image this small is a single region to the proposals: enlarge it "
        "(e.g. 8 times, nearest neighbour) or predict on the larger image it was cut from")
    enlarged = predict(image.repeat(8, axis=0).repeat(8, axis=1), model, **settings)
    assert enlarged.instances and not any("proposals gave no mask" in note for note in enlarged.notes)
    assert not any("proposals gave no mask" in note for note in predict(image, model, **settings | {
        "proposals": None}).notes)  # no proposals asked for: nothing to explain


def test_write_prediction_of_a_calibrated_tiff_keeps_its_pixel_size_as_the_command_does(tiny, tmp_path):
    """``write_prediction(predict("cells.tif", model), ...)``, which docs/usage.md gives as what
    ``napari-prm predict`` writes, wrote the label TIFF of an ImageJ (µm) or OME-TIFF without its
    pixel size: in Fiji the labels did not overlay the image. A prediction of a TIFF file keeps the
    file's pixel size (``Prediction.pixel_size``, also through ``PRMPredictor.set_image(path)``),
    and ``write_prediction`` writes it, as the command line does; an array has none."""
    import tifffile
    from skimage import data

    from napari_prm import PRMPredictor
    from napari_prm.cli import main
    from napari_prm.io import tiff_pixel_size, write_prediction

    gray = data.coins()[:64, :80].astype(np.uint16) * 16
    tifffile.imwrite(tmp_path / "ij.tif", gray, imagej=True, resolution=(2.0, 4.0), metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "cells.ome.tif", gray, metadata={
        "axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm"})
    settings = dict(proposals="prm", class_threshold=-1e4, peak_threshold=-1e4, max_peaks=2)
    predictor = PRMPredictor(tiny, **settings)
    for name, stem in (("ij.tif", "ij"), ("cells.ome.tif", "cells")):
        expected = tiff_pixel_size(tmp_path / name)
        assert expected["imagej_unit"] == "um"
        prediction = predict(tmp_path / name, tiny, **settings)
        assert prediction.pixel_size == expected
        predictor.set_image(str(tmp_path / name))
        assert predictor.predict().pixel_size == expected
        write_prediction(prediction, tmp_path / "python", stem, prms_format="tiff")
        labels = tiff_pixel_size(tmp_path / "python" / f"{stem}_labels.tif")
        assert labels["imagej_unit"] == "um" and labels["resolution"] == pytest.approx(expected["resolution"])
        with tifffile.TiffFile(tmp_path / "python" / f"{stem}_prms.tif") as tif:  # pixels per cm
            x, y = tif.pages[0].get_resolution()
            assert (x / 1e4, y / 1e4) == pytest.approx(expected["resolution"])
    # the command line writes the same pixel size
    from napari_prm import save_model

    model_path = save_model(tiny, tmp_path / "tiny.pt")
    assert main(["predict", str(tmp_path / "ij.tif"), "--model", str(model_path), "--out", str(tmp_path / "cli"),
                 "--proposals", "prm", "--class-threshold=-1e4", "--peak-threshold=-1e4",
                 "--max-peaks", "2"]) == 0
    assert tiff_pixel_size(tmp_path / "cli" / "ij_labels.tif") == tiff_pixel_size(tmp_path / "python" / "ij_labels.tif")
    # an array has no pixel size, nor does its label TIFF
    array = predict(gray, tiny, **settings)
    assert array.pixel_size is None
    predictor.set_image(gray)
    assert predictor.predict().pixel_size is None
    write_prediction(array, tmp_path / "python", "array")
    assert tiff_pixel_size(tmp_path / "python" / "array_labels.tif") is None
