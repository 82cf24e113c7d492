"""A predict-time network input size (``input_size``): small, crowded objects need more CRM
cells than the model's own size gives them, without retraining or editing the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_prm
from napari_prm import PRMPredictor, build_model, load_model, save_model
from napari_prm.cli import main


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("tiny", ["a", "b"], pretrained=False, input_size=(64, 64))
    with torch.no_grad():
        model.network.fcn.classifier.weight.normal_(std=0.5)
    return model.to("cpu")


@pytest.fixture
def blobs():
    """A dark image of bright round blobs, as a fluorescence image of nuclei."""
    rng = np.random.default_rng(3)
    image = np.full((120, 160), 20, np.uint8)
    yy, xx = np.mgrid[:120, :160]
    for y, x in rng.uniform((8, 8), (112, 152), (30, 2)):
        image[(yy - y) ** 2 + (xx - x) ** 2 < 9] = 220
    return image


def test_input_size_runs_the_network_at_that_size(tiny, blobs):
    predictor = PRMPredictor(tiny, proposals=None, input_size=(128, 192))
    predictor.set_image(blobs)
    prediction = predictor.predict(class_threshold=-1e9, max_peaks=200)
    assert predictor.peak_response_maps(prediction.peaks_crm[:1]).shape == (1, 128, 192)
    assert tiny.input_size == (64, 64)  # the model is left as it was
    # the same as a model whose own size is 128x192
    resized = build_model("tiny", ["a", "b"], pretrained=False, input_size=(128, 192))
    resized.network.load_state_dict(tiny.network.state_dict())
    own_size = PRMPredictor(resized, proposals=None)
    own_size.set_image(blobs)
    np.testing.assert_array_equal(predictor.crms, own_size.crms)
    reference = napari_prm.predict(blobs, resized, proposals=None, class_threshold=-1e9, max_peaks=200)
    np.testing.assert_array_equal(prediction.peaks, reference.peaks)
    np.testing.assert_array_equal(prediction.peak_classes, reference.peak_classes)
    np.testing.assert_allclose(np.asarray(prediction.prms), np.asarray(reference.prms), rtol=0, atol=0)
    # more cells: more of the 30 blobs get a peak than at the model's 64x64
    own = napari_prm.predict(blobs, tiny, proposals=None, class_threshold=-1e9, max_peaks=200)
    assert PRMPredictor(tiny, proposals=None).settings.input_size is None
    assert len(prediction.peaks) > len(own.peaks)


def test_input_size_is_checked_and_fixed_per_image(tiny, blobs):
    assert PRMPredictor(tiny, input_size=96).settings.input_size == (96, 96)
    assert PRMPredictor(tiny, input_size=[96, 80]).settings.input_size == (96, 80)
    for bad in ((0, 64), (64,), "64", (64.5, 64), (True, 64)):
        with pytest.raises(ValueError, match="input_size"):
            napari_prm.predict(blobs, tiny, proposals=None, input_size=bad)
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(blobs)
    with pytest.raises(ValueError, match="change the forward pass"):
        predictor.predict(input_size=(96, 96))


def test_one_input_size_rule_for_model_predict_and_training(tiny, blobs, tiny_dataset, tmp_path):
    from napari_prm.data import from_folders
    from napari_prm.train import train

    # build_model, PRMModel, predict and train read an input size through one check
    assert build_model("tiny", ["a"], pretrained=False, input_size=80).input_size == (80, 80)
    assert build_model("tiny", ["a"], pretrained=False, input_size=np.array([80, 96])).input_size == (80, 96)
    for bad, message in (((0, 64), r"input_size\[0\]: expected an integer >= 1, got 0"),
                         ((64, 64, 3), r"input_size: expected \(height, width\) or an int or None, got \(64, 64, 3\)"),
                         ("64", r"input_size: expected \(height, width\) or an int or None, got '64'")):
        with pytest.raises(ValueError, match=message):
            build_model("tiny", ["a"], pretrained=False, input_size=bad)
    with pytest.raises(ValueError, match=r"PRMModel: input_size: expected \(height, width\) or None, got 64"):
        napari_prm.PRMModel(tiny.network, ["a", "b"], "tiny", 64, tiny.mean, tiny.std)
    with pytest.raises(ValueError, match=r"^input_size\[1\]: expected an integer >= 1, got -2"):
        napari_prm.predict(blobs, tiny, proposals=None, input_size=(64, -2))
    with pytest.raises(ValueError, match=r"^input_size: expected \(height, width\), got 64"):
        train(from_folders(tiny_dataset), model="tiny", input_size=64, out=tmp_path / "m.pt", epochs=1)
    assert not (tmp_path / "m.pt").exists()


def test_cli_input_size(tmp_path, tiny, blobs, capsys):
    from skimage.io import imsave

    model = save_model(tiny, tmp_path / "tiny.pt")
    imsave(tmp_path / "blobs.png", blobs, check_contrast=False)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "blobs.png"), "--model", str(model), "--out", str(out),
                 "--proposals", "none", "--class-threshold=-1e9", "--max-peaks", "200",
                 "--input-size", "128", "192"]) == 0
    peaks = np.loadtxt(out / "blobs_peaks.csv", delimiter=",", skiprows=1, usecols=(1, 2), ndmin=2)
    expected = napari_prm.predict(blobs, load_model(model), proposals=None, class_threshold=-1e9, max_peaks=200,
                                  input_size=(128, 192))
    np.testing.assert_allclose(peaks, expected.peaks, atol=1e-3)
    assert json.loads((out / "blobs.manifest.json").read_text())["info"]["settings"]["input_size"] == [128, 192]
    # a bad size is a usage error naming the option; --predictions runs no model
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(tmp_path / "blobs.png"), "--model", str(model), "--out", str(out),
              "--input-size", "0", "64"])
    assert stop.value.code == 2 and "--input-size[0]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(tmp_path / "x.json"), "--predictions", str(out), "--input-size", "64", "64"])
    assert stop.value.code == 2 and "--input-size" in capsys.readouterr().err
