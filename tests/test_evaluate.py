"""The paper's metrics against cases computed by hand, and evaluate() on coco128 val."""

import json
import math

import numpy as np
import pytest
import torch

from napari_prm.data import from_coco, voc_view
from napari_prm.evaluate import (
    InstanceMatcher,
    average_precision,
    best_overlaps,
    bootstrap_map,
    class_pointing,
    classification_map,
    evaluate,
    instance_map,
    peak_hits,
    peak_instances,
    prm_quality,
    report_json,
    report_markdown,
)
from napari_prm.model import build_model
from napari_prm.predict import Prediction
from napari_prm.retrieval import Instance


def _squares():
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 20:30, 20:30] = True
    return masks


def test_perfect_prediction_has_map_one():
    masks = _squares()
    result = instance_map([(masks, [0, 1])], [(masks, [0, 1], [0.9, 0.8])])
    assert result == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0})


def test_empty_prediction_has_map_zero():
    masks = _squares()
    result = instance_map([(masks, [0, 0])], [(np.zeros((0, 40, 40), bool), [], [])])
    assert result == {0.25: 0.0, 0.5: 0.0, 0.75: 0.0}
    np.testing.assert_array_equal(best_overlaps(masks, np.zeros((0, 40, 40), bool)), [0, 0])


def test_an_image_without_predictions_may_give_empty_lists():
    # [i.mask for i in prediction.instances] of an image where nothing was found is []: it was
    # refused as "pred_masks must be an (N, H, W) stack of masks; got shape (0,)"
    masks = _squares()
    assert instance_map([(masks, [0, 0])], [([], [], [])]) == {0.25: 0.0, 0.5: 0.0, 0.75: 0.0}
    perfect_and_empty = instance_map([(masks, [0, 1]), (masks, [0, 1])], [(masks, [0, 1], [0.9, 0.8]), ([], [], [])])
    # half the instances found, at precision 1: 51 of COCO's 101 recall points (0 to 0.5)
    assert perfect_and_empty == pytest.approx({0.25: 51 / 101, 0.5: 51 / 101, 0.75: 51 / 101})


def test_predicted_masks_of_another_size_than_the_ground_truth_are_refused():
    # masks predicted on a resized image: COCOeval matched nothing and reported mAP 0 silently
    masks = _squares()
    doubled = masks.repeat(2, axis=1).repeat(2, axis=2)
    with pytest.raises(ValueError, match=r"pred_masks are 80×80 but gt_masks 40×40"):
        instance_map([(masks, [0, 1])], [(doubled, [0, 1], [0.9, 0.8])])
    with pytest.raises(ValueError, match=r"pred_masks are 80×80 but gt_masks 40×40"):
        InstanceMatcher(2).add(masks, [0, 1], doubled, [0, 1], [0.9, 0.8])


def test_class_indices_outside_the_classes_and_scores_not_finite_are_refused():
    # COCOeval matches only the categories it is given: instances of another index were left
    # out (mAP 0 or NaN), a class name failed inside numpy, a NaN score ranked anywhere
    masks = _squares()
    with pytest.raises(ValueError, match=r"pred_classes: class index 5 is outside \[0, 2\)"):
        InstanceMatcher(2).add(masks, [0, 1], masks, [0, 5], [0.9, 0.8])
    with pytest.raises(ValueError, match=r"gt_classes: class index -1 is outside"):
        InstanceMatcher(2).add(masks, [0, -1], masks, [0, 1], [0.9, 0.8])
    with pytest.raises(ValueError, match=r"gt_classes: expected class indices \(whole numbers\), got \['cat', 'dog'\]"):
        instance_map([(masks, ["cat", "dog"])], [(masks, ["cat", "dog"], [0.9, 0.8])])
    with pytest.raises(ValueError, match=r"pred_classes: expected class indices"):
        InstanceMatcher(2).add(masks, [0, 1], masks, [0.5, 1], [0.9, 0.8])
    with pytest.raises(ValueError, match=r"pred_scores: expected finite numbers, got nan"):
        instance_map([(masks, [0, 1])], [(masks, [0, 1], [np.nan, 0.8])])
    # whole numbers given as floats are indices
    assert instance_map([(masks, [0.0, 1.0])], [(masks, [0, 1], [0.9, 0.8])]) == pytest.approx(
        {0.25: 1.0, 0.5: 1.0, 0.75: 1.0})


def test_half_shifted_square():
    # A 10×10 square shifted by half its width: intersection 50, union 150, IoU 1/3.
    masks = _squares()[:1]
    shifted = np.roll(masks, 5, axis=2)
    assert instance_map([(masks, [0])], [(shifted, [0], [0.7])]) == pytest.approx({0.25: 1.0, 0.5: 0.0, 0.75: 0.0})
    np.testing.assert_allclose(best_overlaps(masks, shifted), [1 / 3])


def test_one_hit_one_miss_is_interpolated_like_coco():
    # The better-scored detection is exact, the other overlaps by 1/3: at IoU 0.5 precision is 1
    # up to recall 0.5 and 0 beyond, i.e. 51 of COCO's 101 recall points.
    masks = _squares()
    predicted = np.stack([masks[0], np.roll(masks[1], 5, axis=1)])
    result = instance_map([(masks, [0, 0])], [(predicted, [0, 0], [0.9, 0.8])])
    assert result == pytest.approx({0.25: 1.0, 0.5: 51 / 101, 0.75: 51 / 101})
    # Scores reversed: the miss comes first, precision at recall 0.5 drops to 1/2.
    result = instance_map([(masks, [0, 0])], [(predicted, [0, 0], [0.8, 0.9])])
    assert result[0.5] == pytest.approx(0.5 * 51 / 101)


def _hit_and_miss_matcher():
    """Image 0: its one square found exactly; image 1: its one square missed (no prediction)."""
    masks = _squares()
    matcher = InstanceMatcher(1)
    matcher.add(masks[:1], [0], masks[:1], [0], [0.9])
    matcher.add(masks[1:], [0], np.zeros((0, 40, 40), bool), [], [])
    return matcher


def test_matcher_subset_repeats_and_reorders_images():
    matcher = _hit_and_miss_matcher()
    assert len(matcher) == 2
    assert matcher.subset([0, 0]).evaluate((0.5,))[0][0] == pytest.approx(1.0)
    assert matcher.subset([1, 1, 1]).evaluate((0.5,))[0][0] == 0.0
    # Both images: one of two squares found first, at precision 1: 51 of 101 recall points.
    both = matcher.subset([1, 0])
    assert both.evaluate((0.5,))[0][0] == pytest.approx(51 / 101)
    assert both.evaluate((0.5,))[0][0] == pytest.approx(matcher.evaluate((0.5,))[0][0])
    assert len({a["id"] for a in matcher.subset([0, 0, 0]).gt}) == 3
    with pytest.raises(IndexError, match="indices"):
        matcher.subset([2])
    with pytest.raises(TypeError, match="indices: expected integers, got float64"):
        matcher.subset([0.7])


def test_matcher_subset_keeps_crowd_regions():
    # A detection on a crowd region is ignored, not a false positive: the exact detection of the
    # one real square stays at precision 1 whichever copy of the image is drawn.
    masks = _squares()
    matcher = InstanceMatcher(1)
    matcher.add(masks, [0, 0], masks[::-1], [0, 0], [0.9, 0.8], gt_iscrowd=[False, True])
    assert matcher.evaluate((0.5,))[0][0] == pytest.approx(1.0)
    assert matcher.subset([0, 0]).evaluate((0.5,))[0][0] == pytest.approx(1.0)
    assert [a["iscrowd"] for a in matcher.subset([0, 0]).gt] == [0, 1, 0, 1]


def test_bootstrap_map_is_paired_and_bounded_by_the_resampled_images():
    matcher = _hit_and_miss_matcher()
    masks = _squares()
    perfect = InstanceMatcher(1)
    perfect.add(masks[:1], [0], masks[:1], [0], [0.9])
    perfect.add(masks[1:], [0], masks[1:], [0], [0.8])
    draws = bootstrap_map([matcher, perfect, matcher], resamples=60, seed=3)
    assert draws.shape == (60, 3)
    np.testing.assert_array_equal(draws[:, 0], draws[:, 2])  # same draws for every matcher
    np.testing.assert_array_equal(draws[:, 1], 1.0)
    # Each resample holds k copies of the hit among 2 images: mAP 0 (k=0), 51/101 (k=1) or 1 (k=2).
    assert set(np.round(draws[:, 0], 6)) <= {0.0, round(51 / 101, 6), 1.0}
    assert 0.0 in draws[:, 0] and 1.0 in draws[:, 0]
    np.testing.assert_array_equal(bootstrap_map([matcher], resamples=60, seed=3)[:, 0], draws[:, 0])
    with pytest.raises(ValueError, match="same images"):
        bootstrap_map([matcher, matcher.subset([0])])


def test_class_without_ground_truth_is_left_out():
    masks = _squares()
    stray = np.zeros((1, 40, 40), bool)
    stray[0, 0:3, 0:3] = True
    result = instance_map([(masks, [0, 0])], [(np.concatenate([masks, stray]), [0, 0, 1], [0.9, 0.8, 0.95])],
                          num_classes=2)
    assert result == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0})


def test_best_overlaps_by_hand():
    masks = _squares()
    predictions = np.zeros((2, 40, 40), bool)
    predictions[0, 5:15, 5:10] = True  # half of instance 0: IoU 1/2
    predictions[1, 5:15, 5:20] = True  # instance 0 plus 50 pixels: IoU 100/150
    np.testing.assert_allclose(best_overlaps(masks, predictions), [2 / 3, 0])


def test_prm_quality_by_hand():
    masks = _squares()
    prms = np.zeros((3, 40, 40), np.float32)
    prms[0, 10, 10] = 3
    prms[0, 35, 35] = 1  # 3/4 of the mass on instance 0
    prms[1, 25, 25] = 2  # all on instance 1
    prms[2, 0, 0] = 1  # a class absent from the image
    quality = prm_quality(prms, [0, 1, 2], masks, [0, 1])
    np.testing.assert_allclose(quality, [0.75, 1.0, np.nan])
    # Best match within the class: both instances of class 0, mass split 1:3.
    prms[0] = 0
    prms[0, 10, 10], prms[0, 25, 25] = 1, 3
    np.testing.assert_allclose(prm_quality(prms[:1], [0], masks, [0, 0]), [0.75])
    np.testing.assert_allclose(prm_quality(np.zeros((1, 40, 40)), [0], masks, [0, 0]), [0.0])


def test_peak_hits_by_hand():
    masks = _squares()
    peaks = [[10.2, 9.6], [10, 10], [25, 25], [0, 0], [14.6, 10]]
    hits = peak_hits(peaks, [0, 1, 1, 0, 0], masks, [0, 1])
    # On class 0's square; on it but the wrong class; on class 1's; background; rounds to row 15 (outside).
    np.testing.assert_array_equal(hits, [True, False, True, False, False])
    assert not peak_hits(peaks[:1], [0], np.zeros((0, 40, 40), bool), []).any()
    # which instance each peak lies on; a crowd region is none
    np.testing.assert_array_equal(peak_instances(peaks, [0, 1, 1, 0, 0], masks, [0, 1]), [0, -1, 1, -1, -1])
    np.testing.assert_array_equal(peak_instances(peaks, [0, 1, 1, 0, 0], masks, [0, 1], [True, False]),
                                  [-1, -1, 1, -1, -1])
    overlapping = np.concatenate([masks[:1], masks[:1]])  # two instances of class 0 on one square
    np.testing.assert_array_equal(peak_instances(peaks[:1], [0], overlapping, [0, 0]), [0])


def test_classification_ap_by_hand():
    # Positives at ranks 1 and 3: AP = (1/2)·1 + (1/2)·(2/3).
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # Ties form one operating point: 2 positives among 3 tied scores, precision 2/3 at recall 1.
    assert average_precision([0.5, 0.5, 0.5], [1, 0, 1]) == pytest.approx(2 / 3)
    assert math.isnan(average_precision([0.1, 0.2], [0, 0]))
    mean_ap, per_class = classification_map(np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3]]),
                                            np.array([[1, 0], [0, 0], [0, 0]]))
    assert mean_ap == pytest.approx(1.0)
    np.testing.assert_array_equal(np.isnan(per_class), [False, True])


@pytest.fixture(scope="module")
def voc_val(shared_data):
    val_json = shared_data / "coco128" / "annotations" / "instances_val2017.json"
    return voc_view(from_coco(val_json, require_positives=False)).subset(range(3))


def _perfect_prediction(dataset, index):
    truth = dataset.instances(index)
    keep = ~truth.iscrowd
    masks, classes = truth.masks[keep], truth.class_indices[keep]
    prms = masks / masks.sum((1, 2), keepdims=True)
    peaks = np.array([np.argwhere(m)[len(np.argwhere(m)) // 2] for m in masks], dtype=np.float64).reshape(-1, 2)
    instances = [Instance(int(c), 1.0, m, p.astype(np.float32), k) for k, (m, c, p) in
                 enumerate(zip(masks, classes, prms))]
    return Prediction(class_names=dataset.class_names, scores=dataset.labels[index] * 2 - 1,
                      crms=np.zeros((len(dataset.class_names), 2, 2), np.float32), peaks=peaks,
                      peak_classes=classes, peak_values=np.ones(len(classes), np.float32),
                      prms=prms.astype(np.float32), instances=instances)


def test_evaluate_perfect_predictions_on_coco128(voc_val, tmp_path):
    predictions = [_perfect_prediction(voc_val, i) for i in range(len(voc_val))]
    results = evaluate(predictions, voc_val)
    assert results["num_images"] == 3
    assert results["num_peaks"] == results["num_predicted_instances"] == sum(len(p.instances) for p in predictions)
    assert results["mAP_r"] == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0})
    assert results["ABO"] == pytest.approx(1.0)
    assert results["prm_quality"] == pytest.approx(1.0)
    assert results["pointing_accuracy"] == 1.0
    assert results["classification_mAP"] == pytest.approx(1.0)
    text = report_markdown(results)
    assert "| mAP^r@0.25 | 100.0 |" in text and "| ABO | 100.0 |" in text
    saved = json.loads(report_json(results, tmp_path / "r.json").read_text())
    assert saved["mAP_r"]["0.5"] == pytest.approx(1.0)
    # Classes absent from these 3 images have no AP: written as null, not NaN.
    assert None in saved["classification_AP"].values()


def test_evaluate_runs_a_model_without_retrieval(voc_val):
    torch.manual_seed(0)
    present = [voc_val.class_names[j] for j in np.flatnonzero(voc_val.labels[:2].sum(0))][:2]
    model = build_model("tiny", present, pretrained=False, input_size=(32, 32))
    seen = []
    results = evaluate(model, voc_val, proposals=None, max_images=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]
    assert results["mAP_r"] is None and results["ABO"] is None
    assert results["classes"] == present
    assert results["num_peaks"] > 0
    assert 0 <= results["pointing_accuracy"] <= 1
    assert 0 <= results["prm_quality"] <= 1
    with pytest.raises(ValueError, match="unknown class"):
        evaluate(build_model("tiny", ["unicorn"], pretrained=False), voc_val, proposals=None)


def test_images_without_ground_truth_of_the_classes():
    from napari_prm.evaluate import best_overlaps, prm_quality

    prms = np.full((2, 6, 6), 1 / 36, dtype=np.float32)
    no_masks = np.zeros((0, 6, 6), bool)
    assert best_overlaps(no_masks, np.ones((1, 6, 6), bool)).shape == (0,)
    assert np.isnan(prm_quality(prms, np.array([0, 1]), no_masks, np.zeros(0, int))).all()


def test_instance_funnel_of_an_image_without_ground_truth():
    from napari_prm.evaluate import instance_funnel

    no_masks = np.zeros((0, 6, 6), bool)
    counts = instance_funnel(np.zeros((0, 2)), [], [], no_masks, no_masks, np.zeros(0, int))
    assert counts == {"instances": 0, "with_peak": 0, "with_proposal": 0, "retrieved": 0}


def _a_cat_in_a_box(tmp_path, small_cat, *, empty_image: bool = False):
    """A COCO dataset of ``cat.png`` (one cat box, 4800 pixels, above the funnel's 32×32) and, with
    ``empty_image``, ``empty.png`` without an instance; and a tiny untrained one-class model."""
    import imageio.v3 as iio

    height, width = small_cat.shape[:2]
    iio.imwrite(tmp_path / "cat.png", small_cat)
    images = [{"id": 1, "file_name": "cat.png", "height": height, "width": width}]
    if empty_image:
        iio.imwrite(tmp_path / "empty.png", np.full_like(small_cat, 128))
        images.append({"id": 2, "file_name": "empty.png", "height": height, "width": width})
    box = [20.0, 10.0, 80.0, 70.0]  # x, y, w, h
    polygon = [box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3], box[0], box[1] + box[3]]
    coco = {"images": images,
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [polygon],
                             "area": box[2] * box[3], "bbox": box, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    torch.manual_seed(0)
    return from_coco(tmp_path / "instances.json"), build_model("tiny", ["cat"], pretrained=False, input_size=(32, 32))


def test_evaluate_with_retrieval_on_a_dataset_with_an_image_without_instances(tmp_path, small_cat):
    """Found with ``napari-prm evaluate coco128/.../instances_val2017.json --model imagenet-voc``:
    the first val image without an instance of the model's classes stopped the run with
    numpy's "cannot reshape array of size 0 into shape (0,newaxis)"."""
    dataset, model = _a_cat_in_a_box(tmp_path, small_cat, empty_image=True)
    results = evaluate(model, dataset, class_threshold=-1e9, peak_threshold=-1e9)
    assert results["num_images"] == 2
    assert results["num_instances"] == 1
    assert results["funnel"]["instances"] == 1  # the cat image's one instance; none from the empty one
    assert set(results["mAP_r"]) == {0.25, 0.5, 0.75}
    # the report says what was counted, with which thresholds, and where instances got lost
    assert results["settings"]["thresholds"] == {"class": -1e9, "peak": -1e9}
    text = report_markdown(results)
    peaks, instances = results["num_peaks"], results["num_predicted_instances"]
    assert (f"Evaluated on 2 images ({tmp_path / 'instances.json'}): 1 ground-truth instance of the "
            f"model's 1 class, {peaks} peak{'' if peaks == 1 else 's'}, "
            f"{instances} instance{'' if instances == 1 else 's'}") in text
    assert "Preset default, class threshold -1e+09, peak threshold -1e+09." in text
    # a network input other than the model's is said: the figures hold at that size
    resized = evaluate(model, dataset, class_threshold=-1e9, peak_threshold=-1e9, input_size=(64, 48))
    assert resized["settings"]["predict"]["input_size"] == [64, 48]
    assert ("Preset default, class threshold -1e+09, peak threshold -1e+09, network input 64×48 (not the "
            "model's own).") in report_markdown(resized)
    funnel = results["funnel"]
    assert (f"Of the 1 ground-truth instance of at least 32×32 pixels, {funnel['with_peak']} "
            f"{'has' if funnel['with_peak'] == 1 else 'have'} a peak of "
            f"their class inside, {funnel['with_proposal']} a proposal at IoU ≥ 0.5, and "
            f"{funnel['retrieved']} {'was' if funnel['retrieved'] == 1 else 'were'} retrieved") in text
    # "and 1 were retrieved" on a run that retrieved one instance
    one = report_markdown({**results, "funnel": {**funnel, "retrieved": 1}})
    assert "a proposal at IoU ≥ 0.5, and 1 was retrieved at IoU ≥ 0.5" in one


def _prediction_of(truth, class_names, scores):
    """Predictions equal to ``truth``: one instance (score 1) and one peak per mask."""
    masks, classes = truth.masks, truth.class_indices
    prms = masks / np.maximum(masks.sum((1, 2), keepdims=True), 1)
    peaks = np.array([np.argwhere(m)[len(np.argwhere(m)) // 2] for m in masks], dtype=np.float64).reshape(-1, 2)
    instances = [Instance(int(c), 1.0, m, p.astype(np.float32), k) for k, (m, c, p) in
                 enumerate(zip(masks, classes, prms))]
    return Prediction(class_names=class_names, scores=np.asarray(scores, np.float32),
                      crms=np.zeros((len(class_names), 2, 2), np.float32), peaks=peaks, peak_classes=classes,
                      peak_values=np.ones(len(classes), np.float32), prms=prms.reshape((-1,) + masks.shape[1:])
                      .astype(np.float32), instances=instances)


def test_evaluate_on_given_ground_truth_of_some_images(tmp_path, shapes_scenes):
    """Corrections of two of three images of a CSV dataset (no masks of its own) as the
    ground truth: only those two are evaluated, and predictions equal to them score 1."""
    import imageio.v3 as iio

    from napari_prm.data import GroundTruth, from_csv
    from napari_prm.refine import Correction

    for number, (image, _, _, _) in enumerate(shapes_scenes):
        iio.imwrite(tmp_path / f"scene{number}.png", image)
    (tmp_path / "labels.csv").write_text("image,labels\n" + "".join(f"scene{n}.png,cat;dog\n" for n in range(3)))
    dataset = from_csv(tmp_path / "labels.csv")
    with pytest.raises(ValueError, match="needs instance masks"):
        evaluate([], dataset)
    image, labels, classes, _ = shapes_scenes[2]
    painted = labels.copy()
    painted[:4, :4] = 3  # painted by hand, of no class: left out of the ground truth
    corrected = Correction(image, painted, classes, "scene2_labels.tif")
    truth = corrected.instances()
    assert truth.class_indices.tolist() == [0, 1] and not truth.iscrowd.any()
    np.testing.assert_array_equal(truth.masks, [labels == 1, labels == 2])
    first = shapes_scenes[0][1]
    given = {2: corrected, 0: GroundTruth(np.array([first == 1, first == 2]), np.array([0, 1]), np.zeros(2, bool))}
    predictions = [_prediction_of(given[0], dataset.class_names, [1, 1]),
                   _prediction_of(GroundTruth(np.zeros((0, 96, 96), bool), np.zeros(0, int), np.zeros(0, bool)),
                                  dataset.class_names, [-1, -1]),
                   _prediction_of(truth, dataset.class_names, [1, 1])]
    seen = []
    results = evaluate(predictions, dataset, ground_truth=given, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]
    assert results["num_images"] == 2 and results["num_instances"] == 4 == results["num_predicted_instances"]
    assert results["mAP_r"] == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0})
    assert results["ABO"] == pytest.approx(1.0)
    assert results["prm_quality"] == pytest.approx(1.0) and results["pointing_accuracy"] == 1.0
    assert results["classification_mAP"] == pytest.approx(1.0)
    assert evaluate(predictions, dataset, ground_truth={1: given[0]})["ABO"] == 0.0
    with pytest.raises(ValueError, match=r"ground_truth: no image 3 in dataset .* \(3 images\)"):
        evaluate(predictions, dataset, ground_truth={3: corrected})


def test_predictions_of_fewer_images_than_evaluated_are_refused_naming_the_argument(tmp_path, shapes_scenes):
    """Predictions of the first images were indexed by dataset index: when ``only_labeled`` or
    ``ground_truth`` chose an image past the last one predicted, ``evaluate`` failed with
    ``IndexError: list index out of range``; too few for the whole dataset said only
    "2 predictions for 3 images"."""
    import imageio.v3 as iio

    from napari_prm.data import GroundTruth, from_csv

    for number, (image, _, _, _) in enumerate(shapes_scenes):
        iio.imwrite(tmp_path / f"scene{number}.png", image)
    # scene1 shows neither class: only_labeled skips it
    (tmp_path / "labels.csv").write_text("image,labels\nscene0.png,cat;dog\nscene1.png,\nscene2.png,cat;dog\n")
    dataset = from_csv(tmp_path / "labels.csv", require_positives=False)
    truths = {n: GroundTruth(np.array([labels == 1, labels == 2]), np.array([0, 1]), np.zeros(2, bool))
              for n, (_, labels, _, _) in enumerate(shapes_scenes)}
    predictions = [_prediction_of(truths[n], dataset.class_names, [1, 1]) for n in range(2)]
    message = (r"model_or_predictions: 2 predictions, one per image of dataset .*labels\.csv in its order, but "
               r"image 2 \(.*scene2\.png\) is to be evaluated: .*dataset\.subset\(range\(2\)\)")
    with pytest.raises(ValueError, match=message):  # IndexError
        evaluate(predictions, dataset, ground_truth=truths, max_images=2, only_labeled=True)
    with pytest.raises(ValueError, match=message):  # IndexError
        evaluate(predictions, dataset, ground_truth={2: truths[2]})
    with pytest.raises(ValueError, match=message):
        evaluate(predictions, dataset, ground_truth=truths)
    # what the message says to do: the images predicted
    results = evaluate(predictions, dataset.subset(range(2)), ground_truth={0: truths[0], 1: truths[1]},
                       only_labeled=True)
    assert results["num_images"] == 1 and results["mAP_r"] == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0})


def test_arrays_of_different_lengths_are_refused_naming_them():
    # zip and numpy broadcasting used to drop or repeat entries silently: two masks with
    # one score scored one of them, one gt class was taken for every mask, ...
    masks = _squares()
    peaks = np.array([[10.0, 10.0], [25.0, 25.0]])
    with pytest.raises(ValueError, match="pred_scores"):
        instance_map([(masks, [0, 1])], [(masks, [0, 1], [0.9])])
    with pytest.raises(ValueError, match="pred_classes"):
        instance_map([(masks, [0, 1])], [(masks, [0], [0.9, 0.8])])
    with pytest.raises(ValueError, match="gt_classes"):
        instance_map([(masks, [0])], [(masks, [0, 1], [0.9, 0.8])])
    with pytest.raises(ValueError, match="gt_iscrowd"):
        InstanceMatcher(2).add(masks, [0, 1], masks, [0, 1], [0.9, 0.8], gt_iscrowd=[False])
    with pytest.raises(ValueError, match="gt_classes"):
        peak_instances(peaks, [0, 1], masks, [0])
    with pytest.raises(ValueError, match="gt_iscrowd"):
        peak_instances(peaks, [0, 1], masks, [0, 1], gt_iscrowd=[True])
    with pytest.raises(ValueError, match="labels"):
        average_precision([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="sub_pixel_locating_factor"):
        class_pointing(np.zeros((2, 10, 10), np.float32), masks, [0, 1], sub_pixel_locating_factor=0)


def test_per_image_helpers_name_peaks_of_another_shape_and_classes_that_are_no_indices():
    masks = _squares()
    # a prediction's peaks_crm (class, y, x) for its peaks: "cannot reshape array of size 3 into shape (2)"
    for helper in (peak_hits, peak_instances):
        with pytest.raises(ValueError, match=r"peaks_yx: expected \(K, 2\) peak \(y, x\) .*got shape \(2, 3\)"):
            helper([[0, 10, 10], [1, 25, 25]], [0, 1], masks, [0, 1])
    assert peak_hits([[10.0, 10.0], [25.0, 25.0]], [0, 1], masks, [0, 1]).tolist() == [True, True]
    assert peak_hits(np.zeros((0, 2)), [], masks, [0, 1]).tolist() == []
    crms = np.zeros((2, 10, 10), np.float32)
    crms[0, 2, 2] = crms[1, 6, 6] = 1  # each map's maximum on its square (image pixels 10 and 26)
    assert class_pointing(crms, masks, [0.0, 1.0]).tolist() == [True, True]  # whole numbers are indices
    # 0.5 failed in numpy as "only integers, slices (`:`), ... are valid indices"
    with pytest.raises(ValueError, match=r"gt_classes: expected class indices \(whole numbers\), got \[0.5, 1.0\]"):
        class_pointing(crms, masks, [0.5, 1.0])
    with pytest.raises(ValueError, match=r"gt_classes: class index 2 is outside \[0, 2\)"):
        class_pointing(crms, masks, [0, 2])


def test_evaluate_says_why_no_instance_was_predicted(tmp_path, small_cat):
    """With the class threshold above every class score no peak is found and mAP^r is 0, without a word
    (the command line's warning of such folders blamed proposals 'none'). evaluate warns, naming the
    thresholds and the best class score seen, and returns the cause as ``no_instance``."""
    from napari_prm import predict
    from napari_prm.evaluate import NoInstanceWarning

    dataset, model = _a_cat_in_a_box(tmp_path, small_cat)
    with pytest.warns(NoInstanceWarning) as caught:
        results = evaluate(model, dataset, class_threshold=0.999, peak_threshold=50.0)
    assert results["num_peaks"] == 0 and results["num_predicted_instances"] == 0
    assert results["mAP_r"][0.5] == 0
    best = float(predict(small_cat, model, proposals=None).scores[0])
    assert best < 0.999
    said = (f"no peak above the thresholds (class_threshold 0.999, peak_threshold 50; the best class score seen "
            f"was {best:.3g}, cat)")
    assert results["no_instance"] == said
    assert results["no_instance"].command_line == said.replace("class_threshold", "--class-threshold").replace(
        "peak_threshold", "--peak-threshold")
    (warned,) = [str(w.message) for w in caught if w.category is NoInstanceWarning]
    assert warned == f"the predictions of the 1 image evaluated hold no instance ({said}), so mAP^r and ABO are 0"


def test_predictions_for_some_classes_are_scored_on_those(tmp_path, shapes_scenes):
    """evaluate(predictions, dataset) on predictions made with predict(..., classes=["cat"]) averaged mAP^r
    over all the model's classes, 'dog', never looked for, counting 0: perfect cat instances scored 0.5.
    Prediction.classes records the classes asked, and evaluate scores those only (as evaluate --predictions
    scores a predict --classes folder)."""
    import imageio.v3 as iio

    from napari_prm import predict
    from napari_prm.data import GroundTruth, from_csv

    for number, (image, _, _, _) in enumerate(shapes_scenes):
        iio.imwrite(tmp_path / f"scene{number}.png", image)
    (tmp_path / "labels.csv").write_text("image,labels\n" + "".join(f"scene{n}.png,cat;dog\n" for n in range(3)))
    dataset = from_csv(tmp_path / "labels.csv")
    torch.manual_seed(0)
    model = build_model("tiny", dataset.class_names, pretrained=False, input_size=(32, 32))
    made = predict(shapes_scenes[0][0], model, proposals=None, classes=["cat"], class_threshold=-1e9)
    assert made.classes == ["cat"] and set(made.peak_classes.tolist()) <= {0}
    assert predict(shapes_scenes[0][0], model, proposals=None).classes is None
    given, predictions = {}, []
    for number, (_, labels, _, _) in enumerate(shapes_scenes):
        given[number] = GroundTruth(np.array([labels == 1, labels == 2]), np.array([0, 1]), np.zeros(2, bool))
        cats = GroundTruth(given[number].masks[:1], np.array([0]), np.zeros(1, bool))
        predictions.append(_prediction_of(cats, dataset.class_names, [1, -1]))
        predictions[-1].classes = made.classes
    results = evaluate(predictions, dataset, ground_truth=given)
    assert results["mAP_r"] == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0})
    assert list(results["AP_r_per_class"]) == ["cat"] and results["classes_not_asked"] == ["dog"]
    assert results["ABO"] == pytest.approx(1.0)
    for prediction in predictions:  # for all classes: dog is scored, 0
        prediction.classes = None
    results = evaluate(predictions, dataset, ground_truth=given)
    assert results["mAP_r"] == pytest.approx({0.25: 0.5, 0.5: 0.5, 0.75: 0.5})
    assert "classes_not_asked" not in results


def test_no_instance_causes_name_the_classes_looked_for_with_the_thresholds():
    """The classes asked for (``classes=``) are named beside the thresholds, in each front end's words."""
    from napari_prm._text import for_command_line, for_widget
    from napari_prm.evaluate import no_instance_causes

    causes = no_instance_causes(images=1, peaks=0, thresholds={"class": 2.0, "peak": None}, classes=["cat", "dog"])
    assert str(causes) == ("no peak above the thresholds (class_threshold 2, peak_threshold none, "
                           "classes=['cat', 'dog'])")
    assert for_command_line(causes) == ("no peak above the thresholds (--class-threshold 2, --peak-threshold none, "
                                        "--classes cat dog)")
    assert for_widget(causes) == ("no peak above the thresholds (class threshold 2, peak threshold none, "
                                  "classes cat, dog)")
    # without classes, every class was looked in: none named
    assert str(no_instance_causes(images=1, peaks=0, thresholds={"class": 2.0, "peak": None})) == (
        "no peak above the thresholds (class_threshold 2, peak_threshold none)")
