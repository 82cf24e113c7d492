"""`Prediction.to_coco`: every instance's whole mask, as pycocotools reads and scores it."""

from __future__ import annotations

import contextlib
import io as text_io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import two_box_scene
from napari_prm import Instance, predict
from napari_prm.io import instances_to_coco, labels_to_coco


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))  # as a file would hold it
    with contextlib.redirect_stdout(text_io.StringIO()):
        coco.createIndex()
    return coco


def _two_overlapping() -> list[Instance]:
    first, second = np.zeros((2, 20, 30), bool)
    first[2:12, 2:14] = True   # 120 pixels
    second[6:18, 8:26] = True  # 216 pixels, 36 of them also in the first
    return [Instance(0, 0.9, first, np.zeros((20, 30), np.float32), 0),
            Instance(1, 0.6, second, np.zeros((20, 30), np.float32), 1)]


def test_overlapping_instances_keep_their_whole_masks():
    instances = _two_overlapping()
    coco = _coco(instances_to_coco(instances, (20, 30), ["cat", "dog"], image_id=139, file_name="x.jpg",
                                   category_ids=[17, 18]))
    for number, instance in enumerate(instances, start=1):
        annotation = coco.anns[number]
        np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), instance.mask)
        assert (annotation["image_id"], annotation["score"], annotation["peak"]) == (139, instance.score, number - 1)
    assert [coco.anns[n]["area"] for n in (1, 2)] == [120, 216]
    assert [coco.anns[n]["bbox"] for n in (1, 2)] == [[2, 2, 12, 10], [8, 6, 18, 12]]
    assert [coco.anns[n]["category_id"] for n in (1, 2)] == [17, 18]
    # the label image gives each pixel to one instance: the second loses its 36 shared pixels
    from napari_prm.retrieval import instances_to_labels

    labels, table = instances_to_labels(instances, (20, 30), ["cat", "dog"])
    assert _coco(labels_to_coco(labels, table, ["cat", "dog"])).anns[2]["area"] == 180


def test_instances_to_coco_names_what_is_wrong():
    instances = _two_overlapping()
    with pytest.raises(ValueError, match=r"instances\[0\]: its mask is \(20, 30\), the image \(20, 31\)"):
        instances_to_coco(instances, (20, 31), ["cat", "dog"])
    with pytest.raises(ValueError, match=r"instances\[1\] has class index 1, but 1 class names were given"):
        instances_to_coco(instances, (20, 30), ["cat"])


def test_a_prediction_to_coco_scores_itself_perfectly_in_cocoeval():
    model, image = two_box_scene((slice(60, 110), slice(70, 150)))  # the boxes overlap
    # no merging and a lenient NMS: overlapping instances
    pred = predict(image, model, class_threshold=-1e9, max_peaks=8, merge_contained=None, merge_parts=None,
                   nms_threshold=0.9)
    masks = np.array([instance.mask for instance in pred.instances])
    assert len(masks) >= 2 and (masks.sum(0) > 1).any()
    dataset = pred.to_coco(image_id=7, file_name="scene.png")
    truth = _coco(dataset)
    for number, instance in enumerate(pred.instances, start=1):
        np.testing.assert_array_equal(mask_utils.decode(truth.anns[number]["segmentation"]).astype(bool),
                                      instance.mask)
    results = [{k: v for k, v in a.items() if k != "id"} for a in dataset["annotations"]]
    with contextlib.redirect_stdout(text_io.StringIO()):
        evaluation = COCOeval(truth, truth.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP over IoU .5:.95
