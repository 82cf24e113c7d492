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
from napari_prm.io import coco_results, instances_to_coco, labels_to_coco, match_exports, write_coco_json


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


def _user_dataset() -> dict:
    """A user's COCO JSON: its own image ids (139, 42) and COCO's category ids (cat 17, dog 18)."""
    masks = [np.zeros((20, 30), np.uint8) for _ in range(3)]
    masks[0][2:12, 2:14] = 1   # image 139, a cat
    masks[1][5:15, 10:25] = 1  # image 42, a dog
    masks[2][0:4, 0:4] = 1     # image 42, a cat
    annotations = [{"id": n + 1, "image_id": image_id, "category_id": category, "iscrowd": 0,
                    "segmentation": (rle := {**mask_utils.encode(np.asfortranarray(mask)),
                                             "counts": mask_utils.encode(np.asfortranarray(mask))["counts"].decode()}),
                    "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()}
                   for n, (mask, image_id, category) in enumerate(zip(masks, (139, 42, 42), (17, 18, 17)))]
    return {"images": [{"id": 139, "file_name": "a.jpg", "height": 20, "width": 30},
                       {"id": 42, "file_name": "sub/b.jpg", "height": 20, "width": 30}],
            "categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}, {"id": 1, "name": "person"}],
            "annotations": annotations}, masks


def test_coco_results_give_exports_the_user_datasets_ids(tmp_path):
    dataset, masks = _user_dataset()
    write_coco_json(tmp_path / "gt.json", dataset)
    # exports as predict writes them: image_id 1, category ids by the model's class order (cat 1, dog 2)
    out = tmp_path / "results"
    (out / ".napari-prm-staging" / "old").mkdir(parents=True)
    for stem, file_name, image_masks, classes in (("a", "a.jpg", [masks[0]], [0]),
                                                  ("b", "b.jpg", [masks[1], masks[2]], [1, 0])):
        labels = np.zeros((20, 30), np.uint16)
        for label, mask in enumerate(image_masks, start=1):
            labels[mask.astype(bool)] = label
        table = {"label": np.arange(1, len(classes) + 1), "class_index": np.array(classes),
                 "class_name": np.array([["cat", "dog"][c] for c in classes]),
                 "score": np.array([0.9, 0.5][: len(classes)]), "peak": np.arange(len(classes))}
        export = labels_to_coco(labels, table, ["cat", "dog"], file_name=file_name)
        assert export["images"][0]["id"] == 1 and {a["category_id"] for a in export["annotations"]} <= {1, 2}
        write_coco_json(out / f"{stem}_instances.json", export)
    write_coco_json(out / ".napari-prm-staging" / "old" / "a_instances.json", {})  # left by a killed run
    results = coco_results(out, tmp_path / "gt.json")
    assert sorted((r["image_id"], r["category_id"], r["score"]) for r in results) == [
        (42, 17, 0.5), (42, 18, 0.9), (139, 17, 0.9)]
    truth = _coco(dataset)
    with contextlib.redirect_stdout(text_io.StringIO()):
        evaluation = COCOeval(truth, truth.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # every mask, image and class round-trips


def test_coco_results_name_an_image_or_class_the_dataset_lacks(tmp_path):
    dataset, masks = _user_dataset()
    labels = masks[0].astype(np.uint16)
    table = {"label": np.array([1]), "class_index": np.array([0]), "class_name": np.array(["motorbike"]),
             "score": np.array([0.9]), "peak": np.array([0])}
    write_coco_json(tmp_path / "a_instances.json", labels_to_coco(labels, table, ["motorbike"], file_name="a.jpg"))
    with pytest.raises(ValueError, match=r"a_instances.json: class\(es\) \['motorbike'\] are not categories of "
                                         r"the COCO dict \(names must match, a PASCAL VOC class in either"):
        coco_results(tmp_path, dataset)
    # a PASCAL VOC class in its other spelling is the same class (a model's motorbike, a JSON's motorcycle)
    with_motorcycle = {**dataset, "categories": [*dataset["categories"], {"id": 4, "name": "motorcycle"}]}
    (result,) = coco_results(tmp_path, with_motorcycle)
    assert (result["image_id"], result["category_id"], result["score"]) == (139, 4, pytest.approx(0.9))
    write_coco_json(tmp_path / "a_instances.json", labels_to_coco(labels, {**table, "class_name": np.array(["cat"])},
                                                                  ["cat"], file_name="c.jpg"))
    with pytest.raises(ValueError, match=r"a_instances.json: its image 'c.jpg' is none of the COCO dict's images"):
        coco_results([tmp_path / "a_instances.json"], dataset)


def test_an_export_without_a_file_name_is_named_with_how_to_give_one(tmp_path):
    # write_prediction and export_instances write file_name "" unless given image_file_name=: the
    # message was "its image '' is none of the dataset's images"
    dataset, masks = _user_dataset()
    labels = masks[0].astype(np.uint16)
    table = {"label": np.array([1]), "class_index": np.array([0]), "class_name": np.array(["cat"]),
             "score": np.array([0.9]), "peak": np.array([0])}
    write_coco_json(tmp_path / "a_instances.json", labels_to_coco(labels, table, ["cat"]))
    with pytest.raises(ValueError, match=r"a_instances.json: its image has no file_name, by which exports are "
                                         r"matched to the COCO dict's images: write it with image_file_name="):
        coco_results(tmp_path, dataset)
    matched, unmatched = match_exports(tmp_path, dataset)
    assert not matched and len(unmatched) == 1 and "image_file_name=" in unmatched[0]
    write_coco_json(tmp_path / "a_instances.json", labels_to_coco(labels, table, ["cat"], file_name="a.jpg"))
    assert [r["image_id"] for r in coco_results(tmp_path, dataset)] == [139]


def test_coco_results_match_an_export_by_its_path_in_a_sub_folder(tmp_path):
    """predict --recursive on val2017/ names its images A1/cat.jpg and A2/cat.jpg; the dataset
    names them val2017/A1/cat.jpg and val2017/A2/cat.jpg: the file name alone is two images'
    (it refused), the path in the sub-folder is one's."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 1
    table = {"label": np.array([1]), "class_index": np.array([0]), "class_name": np.array(["cat"]),
             "score": np.array([0.9]), "peak": np.array([0])}
    dataset = {"images": [{"id": 5, "file_name": "val2017/A1/cat.jpg", "height": 20, "width": 30},
                          {"id": 6, "file_name": "val2017\\A2\\cat.jpg", "height": 20, "width": 30}],
               "categories": [{"id": 17, "name": "cat"}], "annotations": []}
    for well in ("A1", "A2"):
        (tmp_path / well).mkdir()
        write_coco_json(tmp_path / well / "cat_instances.json",
                        labels_to_coco(mask.astype(np.uint16), table, ["cat"], file_name=f"{well}/cat.jpg"))
    assert [r["image_id"] for r in coco_results(tmp_path, dataset)] == [5, 6]
    # predict run on the folder above: its names end with the dataset's
    write_coco_json(tmp_path / "A2" / "cat_instances.json",
                    labels_to_coco(mask.astype(np.uint16), table, ["cat"], file_name="data/val2017/A2/cat.jpg"))
    assert [r["image_id"] for r in coco_results(tmp_path, dataset)] == [5, 6]
    # a file name of two images, with no folder to tell them apart, is still refused
    write_coco_json(tmp_path / "A2" / "cat_instances.json",
                    labels_to_coco(mask.astype(np.uint16), table, ["cat"], file_name="cat.jpg"))
    with pytest.raises(ValueError, match=r"its image 'cat.jpg' is several of the COCO dict's images"):
        coco_results(tmp_path, dataset)


def test_match_exports_refuse_two_exports_of_one_image_and_another_size(tmp_path):
    """A backup copy of an output folder inside it (coco_results counted its instances twice) and an
    export of another image size are refused, naming the files; exports of no image are returned."""
    dataset, masks = _user_dataset()
    table = {"label": np.array([1]), "class_index": np.array([0]), "class_name": np.array(["cat"]),
             "score": np.array([0.9]), "peak": np.array([0])}
    export = labels_to_coco(masks[0].astype(np.uint16), table, ["cat", "dog"], file_name="a.jpg")
    write_coco_json(tmp_path / "a_instances.json", export)
    write_coco_json(tmp_path / "stray_instances.json", {**export, "images": [{**export["images"][0],
                                                                              "file_name": "zebra.jpg"}]})
    matched, unmatched = match_exports(tmp_path, dataset)
    assert [(m.path.name, m.image_id, m.class_names, len(m.results)) for m in matched] == [
        ("a_instances.json", 139, ["cat", "dog"], 1)]
    assert unmatched == [f"{tmp_path / 'stray_instances.json'}: its image 'zebra.jpg' is none of the COCO dict's "
                         "images (matched by file_name)"]
    (tmp_path / "stray_instances.json").unlink()
    (tmp_path / "old").mkdir()
    write_coco_json(tmp_path / "old" / "a_instances.json", export)
    with pytest.raises(ValueError, match=r"a_instances.json and .*old/a_instances.json are both exports of image 139 "
                                         r"\('a.jpg'\) of the COCO dict"):
        coco_results(tmp_path, dataset)
    (tmp_path / "old" / "a_instances.json").unlink()
    small = labels_to_coco(masks[0][:10].astype(np.uint16), table, ["cat", "dog"], file_name="a.jpg")
    write_coco_json(tmp_path / "a_instances.json", small)
    with pytest.raises(ValueError, match=r"a_instances.json: its image 'a.jpg' is 10×30 pixels, but the COCO "
                                         r"dict's image 139 is 20×30"):
        coco_results(tmp_path, dataset)
