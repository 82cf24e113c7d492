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
                             "include_crowd=False, voc=None, warnings=[], channels=None)")


def test_a_peak_selection_prints_shapes(prediction):
    from napari_prm import PRMPredictor

    model, _ = prediction
    _, image = two_box_scene((slice(80, 110), slice(100, 150)))
    predictor = PRMPredictor(model, proposals=None)
    predictor.set_image(image)
    selection = predictor.select_peaks(class_threshold=-1e9, peak_threshold=None, max_peaks=20)
    count = len(selection)
    assert count == 20 and selection.capped
    # four arrays were written out: 5,448 characters for 50 peaks of skimage's astronaut
    assert repr(selection) == (f"PeakSelection(peaks=<int64 {count}×3>, values=<float32 {count}>, "
                               f"runner_up_classes=<int64 {count}×3>, runner_up_values=<float32 {count}×3>, "
                               f"found={selection.found}, capped=True)")


def test_a_training_result_counts_its_epochs_and_their_class_aps():
    from pathlib import Path

    from napari_prm.train import EpochRecord, TrainResult

    model = build_model("tiny", ["cat", "dog", "bird"], pretrained=False, input_size=(32, 32))
    classes = [f"class{i}" for i in range(80)]
    history = [EpochRecord(epoch, 1 / epoch, 60.0, dict.fromkeys(classes, 0.5), 0.5) for epoch in range(1, 21)]
    result = TrainResult(model, history, Path("model.pt"), train_images=100, held_out_images=28)
    # every epoch's AP of every class was written out: 27,011 characters for 20 epochs of 80 classes
    assert repr(result) == (f"TrainResult(model={model!r}, history=<20 EpochRecords>, checkpoint={Path('model.pt')!r}, "
                            "cancelled=False, calibration=None, train_images=100, held_out_images=28, warnings=[], "
                            "notes=[])")
    assert repr(history[1]) == "EpochRecord(epoch=2, loss=0.5, seconds=60.0, val_ap=<80 entries>, val_map=0.5)"
    few = EpochRecord(1, 0.5, 1.0, {"cat": 1.0, "dog": 0.5}, 0.75)
    assert repr(few) == "EpochRecord(epoch=1, loss=0.5, seconds=1.0, val_ap={'cat': 1.0, 'dog': 0.5}, val_map=0.75)"


def test_a_batch_result_counts_its_images_by_status(tmp_path):
    from napari_prm.batch import BatchResult, ImageResult

    results = [ImageResult(f"img{i}.png", f"img{i}", "written", 3, 2, 0.5, attempts=1, shape=(512, 512), planes=1)
               for i in range(1000)]
    results.append(ImageResult("bad.png", "bad", "failed", error="ValueError: bad.png", attempts=1,
                               details="Traceback (most recent call last):\n" * 40))
    batch = BatchResult(results, tmp_path, tmp_path / "summary.csv")
    # every ImageResult was written out, tracebacks included: 196,645 characters for these 1001 images
    assert repr(batch) == (f"BatchResult(results=<1001 images: 1000 written, 1 failed>, out={tmp_path!r}, "
                           f"summary={tmp_path / 'summary.csv'!r}, prms_format=None)")
    assert repr(BatchResult([], tmp_path, tmp_path / "summary.csv")).startswith("BatchResult(results=<0 images>, ")


def test_a_predictor_prints_its_model_settings_and_image():
    from napari_prm import PRMPredictor

    model, image = two_box_scene((slice(80, 110), slice(100, 150)))
    predictor = PRMPredictor(model, max_peaks=3, class_threshold=-1e9)
    # it printed "<napari_prm.predictor.PRMPredictor object at 0x...>"
    start = f"PRMPredictor(model={model!r}, preset='default', proposals='default', "
    assert repr(predictor) == start + "settings={'class_threshold': -1000000000.0, 'max_peaks': 3}, image=None)"
    predictor.set_image(image)
    predictor.predict()
    assert repr(predictor).endswith(f"max_peaks': 3}}, image=<120×160, {predictor.cached_peak_count} PRMs cached>)")
    assert predictor.cached_peak_count == 3
    stack = PRMPredictor(model, proposals=np.zeros((300, 120, 160), bool))
    assert "proposals=<bool 300×120×160>, settings={}, image=None)" in repr(stack) and len(repr(stack)) < 300
