"""The refinement head: stages, targets, instances from the head, training, checkpoints, resume."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import shapes_scene
from napari_prm import build_model, load_model, predict, save_model
from napari_prm.masks import resize_nearest
from napari_prm.model import load_checkpoint
from napari_prm.model.backbones import build_fcn
from napari_prm.proposals import make_proposals
from napari_prm.refine import (
    IGNORE,
    Correction,
    HeadMaps,
    RefineHead,
    StageFeatures,
    correction_target,
    find_stages,
    head_instances,
    head_maps,
    load_corrections,
    pseudo_target,
    refine,
)

CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def tiny96():
    torch.manual_seed(0)
    return build_model("tiny", CLASSES, pretrained=False, input_size=(96, 96))


def corrections_of(scenes):
    return [Correction(image, labels, classes, f"scene {i}") for i, (image, labels, classes, _) in enumerate(scenes)]


def instance_ious(model, scene):
    """IoU of the instance cut for each object's centre with that object (0 when none is cut)."""
    image, labels, classes, centres = scene
    prediction = predict(image, model, points=(centres, [classes[1], classes[2]]), proposals="refined")
    ious = []
    for label in (1, 2):
        truth = labels == label
        found = [i.mask for i in prediction.instances if i.class_index == classes[label]]
        ious.append(max((float((m & truth).sum() / (m | truth).sum()) for m in found), default=0.0))
    return ious


# --------------------------------------------------------------------------- stages
def test_stages_are_found_by_output_stride_on_every_backbone():
    fcn, _, _ = build_fcn("efficientnet_lite0", 2, pretrained=False)
    stages = find_stages(fcn.features)
    assert [(s.module, s.stride, s.channels) for s in stages] == [
        ("_blocks.2", 4, 24), ("_blocks.4", 8, 40), ("_blocks.10", 16, 112), ("", 32, 1280)]
    maps = StageFeatures(fcn.features, stages)(torch.zeros(1, 3, 128, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 24, 32, 24), (1, 40, 16, 12), (1, 112, 8, 6), (1, 1280, 4, 3)]
    tiny, _, _ = build_fcn("tiny", 2, pretrained=False)
    assert [(s.module, s.stride) for s in find_stages(tiny.features)] == [("", 4)]
    with pytest.raises(ValueError, match="no module"):
        StageFeatures(tiny.features, stages)


# --------------------------------------------------------------------------- targets
def test_correction_targets_are_classes_background_and_contacts():
    labels = np.zeros((8, 8), np.int32)
    labels[1:4, 1:4] = 1
    labels[4:7, 1:4] = 2  # touches instance 1 along a row
    labels[5:7, 6:8] = 3  # no class known
    target = correction_target(labels, [1, 0, -1], (8, 8), num_classes=2)
    assert target.semantic[2, 2] == 2 and target.semantic[5, 2] == 1 and target.semantic[0, 0] == 0
    assert (target.semantic[5:7, 6:8] == IGNORE).all()
    contacts = np.argwhere(target.boundary == 1)
    assert set(map(tuple, contacts)) == {(3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3)}
    assert (target.boundary[target.semantic == 0] == 0).all()
    flipped = target.flipped()
    np.testing.assert_array_equal(flipped.semantic, target.semantic[:, ::-1])


def test_pseudo_targets_ignore_what_is_uncertain():
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 24:36, 24:36] = True
    crms = np.zeros((3, 10, 10), np.float32)
    crms[0, 1:5, 1:5] = 1.0  # class 0 responds on instance 0
    crms[0, 7:9, 1:3] = 1.0  # ...and where no instance was retrieved
    target = pseudo_target(masks, [0, 2], [1.0, 0.2], crms, [0, 2], (10, 10), num_classes=3,
                           min_relative_score=0.5, border=1)
    assert target.semantic[3, 3] == 1  # inside the trusted instance, away from its border
    assert target.semantic[1, 1] == IGNORE  # its border band
    assert target.semantic[7, 7] == IGNORE  # the instance scoring 0.2 < 0.5 * 1.0 is not trusted
    assert target.semantic[8, 2] == IGNORE  # class 0 responds, no instance: unknown
    assert target.semantic[0, 9] == 0  # nothing responds: background
    seeded = pseudo_target(masks, [0, 2], [1.0, 0.2], crms, [0, 2], (10, 10), num_classes=3,
                           border=0, seed_threshold=0.5)
    assert seeded.semantic[7, 1] == 1  # a class-0 seed from its CRM
    empty = pseudo_target(np.zeros((0, 40, 40), bool), [], [], crms, [], (10, 10), num_classes=3)
    assert (empty.semantic == 0).all() and (empty.boundary == 0).all()


# --------------------------------------------------------------------------- instances from the head
def two_touching_squares():
    """Head maps of one class covering two squares that touch, with a boundary between them."""
    semantic = np.full((2, 20, 20), -5.0, np.float32)
    semantic[0] = 5.0
    semantic[1, 2:18, 2:9] = 10.0
    semantic[1, 2:18, 9:16] = 10.0
    boundary = np.zeros((20, 20), np.float32)
    boundary[2:18, 8:10] = 0.9
    return HeadMaps(semantic, boundary)


def test_each_peak_takes_the_region_holding_its_prm():
    maps = two_touching_squares()
    prms = np.zeros((3, 20, 20), np.float32)
    prms[0, 8:12, 3:6] = 1 / 12  # in the left square
    prms[1, 8:12, 12:15] = 1 / 12  # in the right square
    prms[2, 9, 4] = 1.0  # a second peak on the left square
    peaks = np.array([[10, 4], [10, 13], [9, 4]], float)
    instances = head_instances(maps, prms, np.zeros(3, np.int64), peaks, min_area=4)
    assert len(instances) == 2
    left = np.zeros((20, 20), bool)
    left[2:18, 2:9] = True
    by_peak = {i.peak: i for i in instances}
    assert set(by_peak) in ({0, 1}, {2, 1})
    left_instance = next(i for i in instances if i.mask[10, 3])
    np.testing.assert_array_equal(left_instance.mask, left)
    np.testing.assert_allclose(left_instance.prm, prms[0] + prms[2])
    assert instances[0].score == pytest.approx(1 / (1 + np.exp(-5.0)), abs=1e-4)  # softmax of logits 10 and 5
    # without the boundaries the squares are one region, and one instance
    (merged,) = head_instances(maps, prms, np.zeros(3, np.int64), peaks, boundary_threshold=None, min_area=4)
    assert merged.mask.sum() == 16 * 14
    # a peak without PRM mass takes the region under it; one on the background yields nothing
    lone = head_instances(maps, np.zeros((2, 20, 20), np.float32), np.zeros(2, np.int64),
                          np.array([[10, 13], [0, 0]], float), min_area=4)
    assert len(lone) == 1 and lone[0].mask[10, 13] and not lone[0].mask[10, 3]


# --------------------------------------------------------------------------- training
def test_a_head_learns_the_masks_of_two_corrected_images(tiny96, shapes_scenes):
    torch.manual_seed(0)
    untrained = replace(tiny96, head=RefineHead(find_stages(tiny96.network.fcn.features, probe_size=96), 2))
    before = [iou for scene in shapes_scenes[:2] for iou in instance_ious(untrained, scene)]
    result = refine(tiny96, corrections=corrections_of(shapes_scenes[:2]), epochs=60, batch_size=2, lr=5e-3,
                    device="cpu")
    assert not result.cancelled and [h.epoch for h in result.history] == list(range(1, 61))
    assert result.history[-1].loss < 0.25 * result.history[0].loss
    after = [iou for scene in shapes_scenes[:2] for iou in instance_ious(result.model, scene)]
    assert min(after) > 0.7, after
    assert np.mean(after) > np.mean(before) + 0.4, (before, after)
    assert tiny96.head is None  # the model it started from is left as it was
    # a third image, never seen: the head generalises to the same kind of objects
    assert min(instance_ious(result.model, shapes_scenes[2])) > 0.5


@pytest.fixture(scope="module")
def refined(tiny96, shapes_scenes):
    return refine(tiny96, corrections=corrections_of(shapes_scenes[:2]), epochs=40, batch_size=2, lr=5e-3,
                  device="cpu").model


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_refined_checkpoint_round_trips(refined, shapes_scenes, tmp_path, suffix):
    path = save_model(refined, tmp_path / f"refined{suffix}")
    loaded = load_model(path)
    assert loaded.head is not None and loaded.head.config() == refined.head.config()
    assert loaded.head.info["trained_on"] == {"pseudo_labelled": 0, "corrected": 2}
    for name, tensor in refined.head.state_dict().items():
        torch.testing.assert_close(loaded.head.state_dict()[name], tensor)
    image = shapes_scenes[2][0]
    np.testing.assert_array_equal(head_maps(loaded, image).semantic, head_maps(refined, image).semantic)
    assert [i.mask.sum() for i in predict(image, loaded).instances] == \
        [i.mask.sum() for i in predict(image, refined, proposals="refined").instances]
    # the PRM network is saved as it was: a model without the head predicts as before
    plain = save_model(replace(refined, head=None), tmp_path / f"plain{suffix}")
    assert load_model(plain).head is None


def test_a_head_from_a_newer_napari_prm_is_refused(refined, tmp_path):
    path = save_model(refined, tmp_path / "refined.pt")
    content = torch.load(path, weights_only=True)
    content["metadata"]["refine"]["format_version"] = 99
    torch.save(content, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="newer napari-prm.*head format 99"):
        load_model(tmp_path / "newer.pt")
    del content["metadata"]["refine"]
    torch.save(content, tmp_path / "orphan.pt")
    with pytest.raises(ValueError, match="head weights but no 'refine' metadata"):
        load_model(tmp_path / "orphan.pt")


def test_refined_proposals_and_the_auto_default(refined, tiny96, shapes_scenes):
    image, _, classes, centres = shapes_scenes[0]
    points = (centres, [classes[1], classes[2]])
    auto = predict(image, refined, points=points)
    explicit = predict(image, refined, points=points, proposals="refined")
    assert len(auto.instances) == 2
    for a, b in zip(auto.instances, explicit.instances):
        np.testing.assert_array_equal(a.mask, b.mask)
    stack = make_proposals("refined", image, model=refined, prediction=explicit)
    assert stack.shape == (2, 96, 96)
    np.testing.assert_array_equal(stack[0], explicit.instances[0].mask)
    combined = make_proposals("default+refined", image, model=refined, prediction=explicit)
    assert len(combined) > 2
    with pytest.raises(ValueError, match="refinement head"):
        predict(image, tiny96, points=points, proposals="refined")
    # without a head, auto is the built-in proposals
    plain = predict(image, tiny96, points=points)
    assert all(i.mask.shape == (96, 96) for i in plain.instances)


def test_cancel_keeps_the_last_epoch_and_resume_finishes_the_run(tiny96, shapes_scenes, tmp_path):
    corrections = corrections_of(shapes_scenes[:2])
    options = dict(corrections=corrections, epochs=3, batch_size=1, lr=5e-3, device="cpu", seed=3)
    whole = refine(tiny96, out=tmp_path / "whole.pt", **options)
    epochs_done = []

    def progress(update):
        if update.stage == "epoch":
            epochs_done.append(update.epoch)

    out = tmp_path / "run.pt"
    stopped = refine(tiny96, out=out, progress=progress, cancel=lambda: len(epochs_done) >= 1, **options)
    assert stopped.cancelled and [h.epoch for h in stopped.history] == [1]
    saved, extra = load_checkpoint(out)
    assert extra["refine_training"]["epoch"] == 1 and saved.head is not None
    resumed = refine(tiny96, out=out, resume=True, **options)
    assert not resumed.cancelled and [h.epoch for h in resumed.history] == [1, 2, 3]
    for name, tensor in whole.model.head.state_dict().items():
        torch.testing.assert_close(resumed.model.head.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        refine(tiny96, out=tmp_path / "missing.pt", resume=True, **options)


def test_self_training_uses_image_level_labels_only(tiny96, tmp_path, shapes_scenes):
    """Pseudo-labels come from PRM with the image's classes; the cache makes a second run skip PRM."""
    from napari_prm.data import LabeledImageDataset
    from napari_prm.io import read_image

    paths = []
    for number, (image, *_rest) in enumerate(shapes_scenes):
        paths.append(tmp_path / f"scene{number}.png")
        import imageio.v3 as iio

        iio.imwrite(paths[-1], image)
    labels = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    dataset = LabeledImageDataset(paths, labels, CLASSES)
    seen = []

    def progress(update):
        if update.stage == "prepare":
            seen.append(update.done)

    first = refine(tiny96, dataset=dataset, epochs=2, device="cpu", cache_dir=tmp_path / "cache",
                   predict_options={"class_threshold": -1e9}, progress=progress)
    assert first.samples == 3 and seen == [1, 2, 3]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    assert first.model.head.info["trained_on"] == {"pseudo_labelled": 3, "corrected": 0}
    assert first.model.head.info["predict_options"] == {"class_threshold": -1e9}
    second = refine(tiny96, dataset=dataset, epochs=2, device="cpu", cache_dir=tmp_path / "cache",
                    predict_options={"class_threshold": -1e9})
    assert second.prepare_seconds < first.prepare_seconds
    assert read_image(paths[0]).shape == (96, 96, 3)
    with pytest.raises(ValueError, match="a dataset .* or corrections"):
        refine(tiny96)


# --------------------------------------------------------------------------- corrections from files
def test_corrections_from_coco_json_and_label_folders(tmp_path, shapes_scenes):
    import imageio.v3 as iio

    from napari_prm import io

    coco = {"images": [], "annotations": [], "categories": []}
    folder = tmp_path / "labels"
    folder.mkdir()
    for number, (image, labels, _, _) in enumerate(shapes_scenes[:2]):
        iio.imwrite(tmp_path / f"scene{number}.png", image)
        # the second image's square is of a class the model does not have
        table = {"label": np.array([1, 2]), "class_index": np.array([0, 1 if number == 0 else 2]),
                 "class_name": np.array(["cat", "dog" if number == 0 else "zebra"])}
        one = io.labels_to_coco(labels, table, ["cat", "dog", "zebra"], image_id=number + 1,
                                file_name=f"scene{number}.png")
        coco["images"] += one["images"]
        coco["annotations"] += [a | {"id": 10 * number + a["id"]} for a in one["annotations"]]
        coco["categories"] = one["categories"]
        io.write_label_image(folder / f"scene{number}_labels.tif", labels)
        io.write_instances_csv(folder / f"scene{number}_instances.csv", labels, table)
    (tmp_path / "corrected.json").write_text(json.dumps(coco))
    images = [tmp_path / "scene0.png", tmp_path / "scene1.png"]
    from_json = load_corrections(tmp_path / "corrected.json", CLASSES)
    from_folder = load_corrections(folder, CLASSES, image_paths=images)
    for corrections in (from_json, from_folder):
        assert [c.labels.shape for c in corrections] == [(96, 96), (96, 96)]
        np.testing.assert_array_equal(corrections[0].image, shapes_scenes[0][0])
        assert corrections[0].label_classes == {1: 0, 2: 1}
        assert corrections[1].label_classes == {1: 0, 2: -1} and corrections[1].num_unknown == 1
        target = corrections[1].target((24, 24), 2)
        square = resize_nearest(shapes_scenes[1][1] == 2, (24, 24))
        assert square.sum() == 36 and (target.semantic[square] == IGNORE).all()
        assert set(np.unique(target.semantic[~square])) == {0, 1}
    with pytest.raises(ValueError, match="no image 'scene0'"):
        load_corrections(folder, CLASSES)
    with pytest.raises(ValueError, match="COCO .json file or a folder"):
        load_corrections(tmp_path / "scene0.png", CLASSES)


def test_shapes_scene_is_what_it_says():
    image, labels, classes, centres = shapes_scene(5)
    assert image.shape == (96, 96, 3) and set(np.unique(labels)) == {0, 1, 2}
    for label, (y, x) in zip((1, 2), centres.astype(int)):
        assert labels[y, x] == label
