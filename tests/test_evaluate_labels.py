"""Evaluation with image-level labels only (``evaluate_labels``, ``napari-prm evaluate`` without masks)."""

import json

import numpy as np
import pytest
import torch

from napari_prm import build_model, save_model
from napari_prm.cli import main
from napari_prm.data import load_dataset
from napari_prm.evaluate import average_precision, defined_classification_map, evaluate_labels
from napari_prm.peaks import calibrate_model, label_hits
from napari_prm.predictor import MAX_PEAKS_LIMIT
from napari_prm.train import train, training_split

CLASSES = ["cat", "cup", "rocket"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A folder per class: three 48x48 images each of Chelsea, the coffee cup and the rocket
    (the picture, mirrored, and its top-left 3/4)."""
    from skimage import data, transform
    from skimage import io as skio

    root = tmp_path_factory.mktemp("folders") / "dataset"
    for name, image in zip(CLASSES, (data.chelsea(), data.coffee(), data.rocket())):
        (root / name).mkdir(parents=True)
        height, width = image.shape[:2]
        for number, version in enumerate((image, image[:, ::-1], image[: height * 3 // 4, : width * 3 // 4])):
            small = (transform.resize(version, (48, 48), anti_aliasing=True) * 255).astype(np.uint8)
            skio.imsave(root / name / f"{number}.png", small, check_contrast=False)
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", CLASSES, pretrained=False, input_size=(64, 64))


def test_label_hits_by_hand():
    labels = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    # image 0: two cat peaks (right) and a cup peak (wrong); image 1: a rocket peak (right); image 2: none
    hits = label_hits([np.array([0, 0, 1]), np.array([2]), np.array([], int)], labels)
    assert (hits.images, hits.peaks, hits.correct, hits.shown, hits.found) == (3, 4, 3, 3, 2)
    assert hits.precision == 0.75 and hits.recall == pytest.approx(2 / 3)
    nothing = label_hits([np.array([], int)] * 3, labels)
    assert np.isnan(nothing.precision) and nothing.recall == 0
    with pytest.raises(ValueError, match=r"labels: expected \(2, C\) image-level labels, got shape \(3, 3\)"):
        label_hits([np.array([0])] * 2, labels)


def test_a_class_on_every_image_or_on_none_is_left_out_of_the_map():
    scores = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.5, 0.4, 0.2], [0.3, 0.6, 0.9]])
    labels = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]])  # cat everywhere, rocket nowhere
    mean_ap, per_class = defined_classification_map(scores, labels)
    assert np.isnan(per_class[0]) and np.isnan(per_class[2])
    # cup: scores 0.8 (yes), 0.6 (yes), 0.4, 0.2 -> AP 1
    assert per_class[1] == 1.0 == mean_ap
    labels[1, 1] = 0  # cup: 0.8 (no), 0.6 (yes) -> precision 1/2 at the only positive
    assert defined_classification_map(scores, labels)[0] == 0.5 == average_precision(scores[:, 1], labels[:, 1])


def test_classification_ap_is_what_training_reported_on_its_held_out_images(folders, tmp_path):
    dataset = load_dataset(folders)
    result = train(dataset, backbone="tiny", out=tmp_path / "run.pt", epochs=1, batch_size=4, input_size=(64, 64),
                   device="cpu", val_fraction=0.5, seed=0, calibrate=False)
    held_out = training_split(dataset, 0.5, 0).held_out
    assert len(held_out) == result.held_out_images == 4
    results = evaluate_labels(result.checkpoint, held_out, device="cpu")
    reported = result.history[-1]
    assert results["classification_AP"] == reported.val_ap
    assert results["classification_mAP"] == reported.val_map
    assert results["num_images"] == 4


def test_peak_precision_counts_the_peaks_predict_keeps(folders, model):
    """Peak precision and classes found, counted by hand from predict()'s peaks and the labels."""
    from napari_prm import PRMPredictor

    dataset = load_dataset(folders)
    results = evaluate_labels(model, dataset, class_threshold=0.0, max_peaks=20)
    predictor = PRMPredictor(model, proposals=None, class_threshold=0.0, max_peaks=20)
    peaks = right = found = 0
    for index in range(len(dataset)):
        predictor.set_image(dataset.read_image(index))
        classes = predictor.predict().peak_classes
        shown = np.flatnonzero(dataset.labels[index])[0]  # one class folder: one class an image
        peaks += len(classes)
        right += int(np.sum(classes == shown))
        found += int(shown in classes)
    assert 0 < right < peaks
    assert results["num_peaks"] == peaks and results["peaks_per_image"] == peaks / 9
    assert results["peak_precision"] == right / peaks
    assert results["classes_found"] == found / 9
    assert results["settings"]["thresholds"] == {"class": 0.0, "peak": None}
    assert results["mAP_r"] is None and "need instance masks" in results["instance_metrics"]


def test_peak_precision_at_the_calibrated_thresholds_is_the_calibrations(folders, model):
    """Scored as calibration scored its thresholds (from maps made without the graph: the
    same up to a peak whose score lies on the threshold)."""
    dataset = load_dataset(folders)
    calibration = calibrate_model(model, dataset, max_peaks=MAX_PEAKS_LIMIT)
    calibrated = build_model("tiny", CLASSES, pretrained=False, input_size=(64, 64))
    calibrated.network.load_state_dict(model.network.state_dict())
    calibrated.settings.update(calibration.as_settings())
    results = evaluate_labels(calibrated, dataset, max_peaks=MAX_PEAKS_LIMIT)
    assert 0 < calibration.precision < 1 and calibration.recall > 0
    peaks = calibration.peaks_per_image * 9
    assert results["num_peaks"] == pytest.approx(peaks, abs=2)
    assert results["peak_precision"] == pytest.approx(calibration.precision, abs=2 / peaks)
    assert results["classes_found"] == calibration.recall


def test_a_class_every_evaluated_image_shows_is_left_out(folders, model):
    """The first three images are Chelsea's: cat on all of them, the other classes on none, so no
    class's AP is defined (training's rule), rather than a cat AP of 1 whatever the scores."""
    results = evaluate_labels(model, load_dataset(folders), max_images=3)
    assert results["num_images"] == 3
    assert all(np.isnan(ap) for ap in results["classification_AP"].values())  # cat on all, the others on none
    assert np.isnan(results["classification_mAP"])
    assert results["classes_found"] >= 0 and results["num_peaks"] == 3 * results["peaks_per_image"]


def test_cli_evaluates_a_folder_per_class_and_says_instance_metrics_need_masks(folders, model, tmp_path, capsys):
    checkpoint = save_model(model, tmp_path / "tiny.pt")
    out = tmp_path / "results.json"
    assert main(["evaluate", str(folders), "--model", str(checkpoint), "--device", "cpu", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "image-level labels only" in captured.err
    report = captured.out
    written = json.loads(out.read_text())
    expected = evaluate_labels(model, load_dataset(folders))
    assert written["classification_AP"] == pytest.approx(expected["classification_AP"])
    assert written["peak_precision"] == pytest.approx(expected["peak_precision"])
    assert written["mAP_r"] is None and written["ABO"] is None
    assert report.startswith(f"Evaluated on 9 images ({folders}; image-level labels only): ")
    assert f"| classification mAP | {100 * expected['classification_mAP']:.1f} |" in report
    assert f"| peak precision (by image labels) | {100 * expected['peak_precision']:.1f} |" in report
    assert "Not measured: instance metrics (mAP^r, ABO, PRM quality, peak pointing) need instance masks" in report
    assert "--masks" in report


def test_cli_names_the_models_classes_a_dataset_lacks(folders, model, tmp_path, capsys):
    """A model of other classes than the dataset's said "unknown class(es) ['cat'] for dataset ...", as
    for a typo in --classes; it says that the dataset lacks the model's classes, as calibrate says it,
    also with --masks (before reading them)."""
    checkpoint = save_model(model, tmp_path / "tiny.pt")
    other = tmp_path / "other"
    for name in ("cats", "cup", "rocket"):
        (other / name).mkdir(parents=True)
        for image in sorted((folders / ("cat" if name == "cats" else name)).iterdir()):
            (other / name / image.name).write_bytes(image.read_bytes())
    for masks in ([], ["--masks", str(tmp_path / "nothing.json")]):
        assert main(["evaluate", str(other), "--model", str(checkpoint), "--device", "cpu", *masks]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error == ("napari-prm evaluate: error: the dataset does not have the model's classes: unknown "
                         f"class(es) ['cat'] for dataset {other}; it has ['cats', 'cup', 'rocket']; "
                         "did you mean 'cats'?")


def test_a_coco_json_without_segmentations_is_evaluated_by_its_labels(folders, model, tmp_path, capsys):
    images = sorted(folders.glob("*/*.png"))
    coco = {"images": [{"id": i + 1, "file_name": p.relative_to(folders).as_posix(), "height": 48, "width": 48}
                       for i, p in enumerate(images)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": CLASSES.index(p.parent.name) + 1,
                             "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0} for i, p in enumerate(images)],
            "categories": [{"id": c + 1, "name": name} for c, name in enumerate(CLASSES)]}
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    dataset = load_dataset(tmp_path / "boxes.json", folders)
    assert not dataset.has_masks
    checkpoint = save_model(model, tmp_path / "tiny.pt")
    assert main(["evaluate", str(tmp_path / "boxes.json"), "--image-dir", str(folders), "--model", str(checkpoint),
                 "--device", "cpu", "--max-images", "4"]) == 0
    assert "Evaluated on 4 images" in capsys.readouterr().out
