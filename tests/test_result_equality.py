"""Results that hold arrays compare by identity: ``pred == pred`` no longer raises NumPy's
"truth value of an array is ambiguous", and they can be dict keys and set members."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import numpy as np
import pytest
import torch

import napari_prm
from conftest import two_box_scene
from napari_prm import PredictSettings, build_model, predict
from napari_prm.batch import BatchResult, ImageResult
from napari_prm.data import GroundTruth, LabeledImageDataset
from napari_prm.peaks import PeakSelection
from napari_prm.refine import Correction
from napari_prm.retrieval import prepare_proposals


@pytest.fixture(scope="module")
def two_predictions():
    model, image = two_box_scene((slice(80, 110), slice(100, 150)))
    first = predict(image, model, class_threshold=-1e9, max_peaks=3)
    second = predict(image, model, class_threshold=-1e9, max_peaks=3)
    return model, first, second


def _assert_identity_eq(first, second):
    """``first`` and ``second`` hold equal-shaped arrays: they compare by identity, without raising."""
    assert first == first and not (first != first)
    assert first != second and not (first == second)
    assert first in [second, first] and second not in [first]
    assert {first: 1, second: 2}[first] == 1 and len({first, second, first}) == 2


def test_two_predictions_of_one_image_compare_without_raising(two_predictions):
    model, first, second = two_predictions
    # the same values: the dataclass __eq__ compared the tuples of fields, and the arrays in them raised
    np.testing.assert_array_equal(first.peaks, second.peaks)
    assert len(first.instances) >= 1
    _assert_identity_eq(first, second)
    _assert_identity_eq(first.instances[0], second.instances[0])
    assert first.instances.index(first.instances[-1]) == len(first.instances) - 1
    _assert_identity_eq(model, build_model("tiny", model.class_names, pretrained=False, input_size=(64, 64)))


def test_network_results_and_batch_records_compare_by_identity(two_predictions):
    _, first, second = two_predictions
    torch.manual_seed(0)
    network = build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(32, 32)).network
    x = torch.rand(1, 3, 32, 32)
    results = [network.peak_response_maps(x, class_threshold=-1e9, peak_threshold=None) for _ in range(2)]
    assert len(results[0].peaks) > 1
    _assert_identity_eq(*results)
    images = [ImageResult("a.png", "a", "done", prediction=first), ImageResult("a.png", "a", "done", prediction=second)]
    _assert_identity_eq(*images)
    _assert_identity_eq(BatchResult(images[:1], "out", "out/summary.csv"),
                        BatchResult(images[1:], "out", "out/summary.csv"))


def test_ground_truth_corrections_datasets_and_proposals_compare_by_identity(tmp_path):
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 2:9, 3:12] = masks[1, 15:25, 20:35] = True
    _assert_identity_eq(*(GroundTruth(masks.copy(), np.array([0, 1]), np.zeros(2, bool)) for _ in range(2)))
    labels = masks[0] + 2 * masks[1].astype(np.int32)
    image = np.zeros((30, 40, 3), np.uint8)
    _assert_identity_eq(*(Correction(image, labels, {1: 0, 2: 1}, "a.png") for _ in range(2)))
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    _assert_identity_eq(*(LabeledImageDataset(paths, np.eye(2), ["cat", "dog"]) for _ in range(2)))
    _assert_identity_eq(*(PeakSelection(np.array([[0, 3, 4], [1, 5, 6]]), np.array([2.0, 1.0], np.float32))
                          for _ in range(2)))
    _assert_identity_eq(*(prepare_proposals(masks) for _ in range(2)))


def test_settings_and_other_plain_records_still_compare_by_value():
    assert PredictSettings(tta=True) == PredictSettings(tta=True) != PredictSettings()


def _package_dataclasses():
    """Every dataclass defined in napari_prm outside the napari widgets."""
    for info in pkgutil.walk_packages(napari_prm.__path__, "napari_prm."):
        if "_widgets" in info.name or info.name.endswith(("_reader", "_writer", "_sample_data", "__main__")):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if dataclasses.is_dataclass(value) and isinstance(value, type) and value.__module__ == info.name:
                yield value


def test_every_dataclass_holding_arrays_compares_by_identity():
    holding = [cls for cls in _package_dataclasses()
               if any(word in str(f.type) for f in dataclasses.fields(cls)
                      for word in ("ndarray", "Tensor", "csr_array", "PRMModel", "Prediction", "Dataset"))]
    assert {"Prediction", "Instance", "GroundTruth", "Correction", "TrainResult"} <= {c.__name__ for c in holding}
    assert [cls.__qualname__ for cls in holding if cls.__dataclass_params__.eq] == []


def test_hand_placed_peaks_compare_by_identity():
    pytest.importorskip("napari")
    from napari_prm._widgets.layers import HandPeak

    _assert_identity_eq(*(HandPeak((0,), np.array([3.0, 4.0]), "cat") for _ in range(2)))
