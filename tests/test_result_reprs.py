"""Results print readably in a notebook: counts, classes, dtypes and shapes, never the arrays."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import two_box_scene
from napari_prm import build_model, predict
from napari_prm.data import GroundTruth
from napari_prm.refine import Correction


@pytest.fixture(scope="module")
def prediction():
    model, image = two_box_scene((slice(80, 110), slice(100, 150)))
    return model, predict(image, model, class_threshold=-1e9, max_peaks=5)


def test_a_prediction_prints_its_counts_not_its_maps(prediction):
    model, pred = prediction
    assert len(pred.peak_classes) == 5 and len(pred.instances) >= 1
    text = repr(pred)
    # the dataclass repr wrote out the CRMs, PRMs and every instance's mask: thousands of characters
    assert len(text) < 400, text
    assert text.startswith("Prediction(image_shape=(120, 160), peaks=5 (")
    assert f"instances={len(pred.instances)} (" in text
    assert "class_names=3 ['cat', 'dog', 'bird']" in text and "preset='default'" in text
    assert "array(" not in text


def test_an_instance_and_a_model_print_shapes(prediction):
    model, pred = prediction
    instance = pred.instances[0]
    text = repr(instance)
    assert "mask=<bool 120×160>" in text and "prm=InstancePRM(peaks [" in text and "], 120×160)" in text
    assert f"class_index={instance.class_index}" in text and len(text) < 300
    model_text = repr(model)
    # the network's module tree stays model.network's repr
    assert model_text == ("PRMModel(backbone='tiny', class_names=3 ['cat', 'dog', 'bird'], input_size=(64, 64), "
                          "device=cpu, head=None, thresholds={})")


def test_ground_truth_and_corrections_print_shapes():
    truth = GroundTruth(np.zeros((2, 30, 40), bool), np.array([0, 1]), np.zeros(2, bool))
    assert repr(truth) == ("GroundTruth(masks=<bool 2×30×40>, class_indices=<int64 2>, iscrowd=<bool 2>, ignore=None)")
    labels = np.zeros((30, 40), np.int32)
    labels[5:10, 5:10] = 1
    correction = Correction(np.zeros((30, 40, 3), np.uint8), labels, {1: 0}, "a.png")
    assert repr(correction) == ("Correction(image=<uint8 30×40×3>, labels=<int32 30×40>, label_classes={1: 0}, "
                                "source='a.png', image_path=None, ignore=None)")


def test_a_prediction_pickles_for_another_process(prediction):
    _, pred = prediction
    again = pickle.loads(pickle.dumps(pred))
    np.testing.assert_array_equal(again.peaks, pred.peaks)
    np.testing.assert_array_equal(np.asarray(again.prms), np.asarray(pred.prms))
    assert [i.mask.sum() for i in again.instances] == [i.mask.sum() for i in pred.instances]
    assert repr(again) == repr(pred)


def test_a_network_level_result_prints_its_tensors_shapes():
    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog", "bird"], pretrained=False, input_size=(32, 32))
    result = model.network.peak_response_maps(torch.rand(1, 3, 32, 32), class_threshold=-1e9, peak_threshold=None)
    count = len(result.peaks)
    assert count > 0
    crm = "×".join(str(n) for n in result.crms.shape)
    # the tensors were written out
    assert repr(result) == (f"PeakResponseResult(scores=<float32 3>, crms=<float32 {crm}>, peaks=<int64 {count}×3>, "
                            f"peak_values=<float32 {count}>, prms=<float32 {count}×32×32>)")


def test_a_dataset_prints_counts_not_its_paths_and_labels(tmp_path):
    from napari_prm.data import LabeledImageDataset

    classes = [f"class{i}" for i in range(8)]
    paths = [tmp_path / f"{i}.png" for i in range(30)]
    dataset = LabeledImageDataset(paths, np.eye(30, 8), classes, source="labels.csv")
    # the dataclass repr listed every path, origin and label: 16,649 characters for coco128 val
    assert repr(dataset) == (f"LabeledImageDataset(image_paths=<30 paths: {paths[0]}, ...>, labels=<float32 30×8>, "
                             "class_names=8 ['class0', 'class1', 'class2', …], origins=<30 strs>, "
                             "source='labels.csv', coco=None, image_ids=None, category_ids=None, "
                             "include_crowd=False, voc=None, warnings=[])")
