"""The refinement head: stages, targets, instances from the head, training, checkpoints, resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shapes_scene
from napari_prm import PRMPredictor, build_model, load_model, predict, save_model
from napari_prm.masks import resize_nearest
from napari_prm.model import load_checkpoint
from napari_prm.model.backbones import build_fcn
from napari_prm.proposals import make_proposals
from napari_prm.refine import (
    IGNORE,
    Correction,
    RefineHead,
    StageFeatures,
    correction_targets,
    find_stages,
    head_instances,
    load_corrections,
    peak_prompts,
    pseudo_targets,
    refine,
    refined_instances,
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


# --------------------------------------------------------------------------- targets and prompts
def blob(shape, y, x):
    """A PRM with all its mass on one pixel."""
    prm = np.zeros(shape, np.float32)
    prm[y, x] = 1.0
    return prm


def test_a_peak_of_a_corrected_image_learns_the_instance_holding_its_prm():
    labels = np.zeros((8, 8), np.int32)
    labels[1:4, 1:4] = 1  # a cat
    labels[5:8, 5:8] = 2  # a dog
    labels[5:8, 0:2] = 3  # no class known
    prms = np.stack([blob((8, 8), 2, 2), blob((8, 8), 2, 2), blob((8, 8), 6, 6), blob((8, 8), 0, 7),
                     blob((8, 8), 6, 0)])
    targets = correction_targets(labels, {1: 0, 2: 1}, prms, [0, 1, 1, 0, 1], (8, 8))
    np.testing.assert_array_equal(targets[0], labels == 1)  # a cat peak on the cat
    assert (targets[1] == IGNORE).all()  # a dog peak on the cat: it learns nothing
    np.testing.assert_array_equal(targets[2], labels == 2)
    assert (targets[3] == IGNORE).all()  # on the background (maybe an unlabelled object): nothing
    np.testing.assert_array_equal(targets[4], labels == 3)  # unknown class: any peak learns it
    assert targets.dtype == np.uint8 and set(np.unique(targets)) == {0, 1, IGNORE}
    asked = correction_targets(labels, {1: 0, 2: 1}, prms, [0, 1, 1, 0, 1], (8, 8), negatives=True)
    np.testing.assert_array_equal(asked[[0, 2, 4]], targets[[0, 2, 4]])
    assert not asked[1].any() and not asked[3].any()  # with negatives: empty masks
    assert set(np.unique(asked)) == {0, 1}


def test_pseudo_targets_trust_and_ignore():
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 24:36, 24:36] = True
    crms = np.zeros((3, 10, 10), np.float32)
    crms[0, 1:5, 1:5] = 1.0  # class 0 responds on instance 0
    crms[0, 7:9, 1:3] = 1.0  # ...and where no instance was retrieved
    prms = np.stack([blob((40, 40), 10, 10), blob((40, 40), 30, 30), blob((40, 40), 0, 39)])
    targets = pseudo_targets(masks, [0, 2], [1.0, 0.2], prms, [0, 2, 0], crms, [0, 2], (10, 10),
                             min_relative_score=0.5, border=1)
    first = targets[0]
    assert first[3, 3] == 1  # inside its instance, away from the border
    assert first[1, 1] == IGNORE  # the border band
    assert first[8, 2] == IGNORE  # class 0 responds, no instance: unknown
    assert first[0, 9] == 0  # nothing responds: background
    assert first[7, 7] == IGNORE  # the instance scoring 0.2 < 0.5 * 1.0 is not trusted
    assert (targets[1] == IGNORE).all()  # ...and its peak learns nothing
    assert (targets[2] == IGNORE).all()  # a peak on the background learns nothing either
    everything = pseudo_targets(masks, [0, 2], [1.0, 0.2], prms, [0, 2, 0], crms, [0, 2], (10, 10),
                                min_relative_score=0.1, border=0)
    assert everything[1][7, 7] == 1 and everything[0][7, 7] == 0  # trusted: one instance's object, not the other's
    wrong_class = pseudo_targets(masks, [0, 2], [1.0, 0.9], prms[:1], [2], crms, [0, 2], (10, 10))
    assert (wrong_class == IGNORE).all()


def test_peaks_of_absent_classes_learn_empty_masks_only_when_asked(tiny96, shapes_scenes, tmp_path):
    """Self-training's default: a peak of a class the image does not show teaches the head nothing."""
    import inspect

    import imageio.v3 as iio

    from napari_prm.data import LabeledImageDataset
    from napari_prm.refine.features import find_stages
    from napari_prm.refine.samples import prepare_samples, pseudo_sample

    image = shapes_scenes[0][0]
    stages = find_stages(tiny96.network.fcn.features, probe_size=96)
    options = {"class_threshold": -1e9, "peak_threshold": -1e9}
    absent = predict(image, tiny96, proposals=None, classes=[1], **options)
    assert len(absent.peak_classes) > 0  # so negatives=True has peaks of an absent class to add

    def counts(sample):
        flat = sample.targets.reshape(sample.num_peaks, -1)
        positive = (flat == 1).any(1)
        empty = ~positive & (flat != IGNORE).any(1)
        return int(positive.sum()), int(empty.sum())

    default = pseudo_sample(tiny96, image, [0], stages, predict_options=options)
    asked = pseudo_sample(tiny96, image, [0], stages, predict_options=options, negatives=True)
    positives, empties = counts(default)
    assert positives > 0 and empties == 0
    assert counts(asked) == (positives, max(positives, 1))  # empty targets capped at the positive count
    # refine's default, through the samples it prepares from a dataset (what the CLI and the widget use)
    iio.imwrite(tmp_path / "scene.png", image)
    dataset = LabeledImageDataset([tmp_path / "scene.png"], np.array([[1, 0]], np.float32), CLASSES)
    (prepared,) = prepare_samples(tiny96, stages, dataset=dataset, predict_options=options)
    assert counts(prepared) == (positives, 0)
    assert inspect.signature(refine).parameters["negatives"].default is False


def test_prompts_hold_the_prm_the_peak_and_its_class_response():
    prms = np.stack([blob((40, 40), 10, 30)])
    crms = np.zeros((2, 5, 5), np.float32)
    crms[1, 1, 3] = 2.0
    crms[0, 4, 4] = 8.0  # another class responds four times as strongly
    (prompt,) = peak_prompts(prms, [1], [[10.0, 30.0]], crms, (10, 10))
    assert prompt.shape == (4, 10, 10) and prompt.dtype == np.float32
    assert np.unravel_index(prompt[0].argmax(), (10, 10)) == (2, 7) and prompt[0].max() == pytest.approx(1.0)
    assert np.unravel_index(prompt[1].argmax(), (10, 10)) == (2, 7)
    assert prompt[1, 2, 7] == pytest.approx(np.exp(-(0.125 ** 2 + 0.125 ** 2) / (2 * 1.5 ** 2)), abs=1e-6)
    assert prompt[2].max() == pytest.approx(1.0) and prompt[2].min() == 0.0
    # the same map against the image's strongest response (8, of class 0): at most 2 / 8
    strength = prompt[3].max()
    np.testing.assert_allclose(prompt[3], prompt[2] * strength, atol=1e-6)
    assert 0.1 < strength <= 0.25
    assert peak_prompts(np.zeros((0, 40, 40)), [], np.zeros((0, 2)), crms, (10, 10)).shape == (0, 4, 10, 10)


# --------------------------------------------------------------------------- instances from the head
def test_each_peak_seeds_one_instance_and_duplicates_merge():
    logits = np.full((4, 10, 10), -8.0, np.float32)
    logits[0, 2:6, 2:6] = 8.0  # peak 0: a square
    logits[1, 2:6, 2:7] = 6.0  # peak 1: nearly the same square, less sure
    logits[2, 7:9, 7:9] = 8.0  # peak 2: a small square...
    logits[2, 0:2, 8:10] = 8.0  # ...and a stray piece away from its PRM
    logits[3, 0, 0] = 8.0  # peak 3: one pixel, under min_area
    prms = np.stack([blob((10, 10), 3, 3), blob((10, 10), 4, 4), blob((10, 10), 8, 8), blob((10, 10), 0, 0)])
    instances = head_instances(logits, prms, np.array([0, 0, 1, 1]), min_area=2, nms_threshold=0.5)
    assert [i.peak for i in instances] == [0, 2]
    square = np.zeros((10, 10), bool)
    square[2:6, 2:6] = True
    np.testing.assert_array_equal(instances[0].mask, square)
    np.testing.assert_allclose(instances[0].prm, prms[0] + prms[1])  # peak 1's PRM joins it
    small = np.zeros((10, 10), bool)
    small[7:9, 7:9] = True
    np.testing.assert_array_equal(instances[1].mask, small)  # the stray piece is dropped
    assert instances[0].score == pytest.approx(1 / (1 + np.exp(-8.0)), abs=1e-5)
    kept = head_instances(logits, prms, np.array([0, 0, 1, 1]), min_area=2, nms_threshold=None)
    assert sorted(i.peak for i in kept) == [0, 1, 2]
    assert head_instances(np.zeros((0, 10, 10)), np.zeros((0, 10, 10)), np.zeros(0)) == []


def test_maps_read_one_at_a_time_give_the_instances_of_the_whole_stack():
    """A `ScaledPRMs` (what `predict` holds) is read a map at a time; each instance's ``prm`` is
    an `InstancePRM` of its peak and the peaks merged into it, not an image-sized copy."""
    from napari_prm.prm_maps import InstancePRM, ScaledPRMs

    logits = np.full((3, 10, 10), -8.0, np.float32)
    logits[0, 2:6, 2:6] = 8.0
    logits[1, 2:6, 2:7] = 6.0  # peak 1: nearly peak 0's square, merged into it
    logits[2, 7:9, 7:9] = 8.0
    maps = np.stack([blob((5, 5), 1, 1), blob((5, 5), 2, 2), blob((5, 5), 4, 4)]).astype(np.float32)
    maps /= maps.sum(axis=(1, 2), keepdims=True)
    lazy_prms = ScaledPRMs(maps, (10, 10))
    full = head_instances(logits, np.asarray(lazy_prms), np.array([0, 0, 1]), min_area=2)
    lazy = head_instances(logits, lazy_prms, np.array([0, 0, 1]), min_area=2)
    # merged peaks were summed into the PRM but not recorded, and each PRM was a 10×10 copy
    assert [(i.peak, i.merged_peaks) for i in lazy] == [(0, [1]), (2, [])] == [(i.peak, i.merged_peaks) for i in full]
    for a, b in zip(lazy, full):
        assert isinstance(a.prm, InstancePRM) and a.prm.nbytes == 0 and isinstance(b.prm, np.ndarray)
        np.testing.assert_array_equal(np.asarray(a.prm), b.prm)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.score == b.score
    np.testing.assert_array_equal(np.asarray(lazy[0].prm), lazy_prms[0] + lazy_prms[1])


def test_a_refined_prediction_keeps_no_image_sized_prm_per_instance(refined, shapes_scenes):
    from napari_prm.prm_maps import InstancePRM
    from napari_prm.refine.inference import head_logits, stage_features

    image, _, classes, centres = shapes_scenes[0]
    image = np.repeat(np.repeat(image, 2, axis=0), 3, axis=1)[:150, :250]  # PRMs resized to 150×250
    points = (centres * [2, 3], [classes[1], classes[2]])
    prediction = predict(image, refined, points=points, proposals="refined", score_by="retrieval")
    assert len(prediction.instances) == 2
    stack = np.asarray(prediction.prms)
    for instance in prediction.instances:
        assert isinstance(instance.prm, InstancePRM) and instance.prm.shape == (150, 250)
        np.testing.assert_array_equal(np.asarray(instance.prm), stack[[instance.peak, *instance.merged_peaks]].sum(0))
    # the prompts and the instances are those of the whole stack at the image's size
    features = stage_features(refined, image)
    args = (prediction.peak_classes, prediction.peaks, prediction.crms)
    np.testing.assert_array_equal(peak_prompts(prediction.prms, *args, (24, 24)), peak_prompts(stack, *args, (24, 24)))
    logits = head_logits(refined, features, prediction.prms, *args)
    np.testing.assert_array_equal(logits, head_logits(refined, features, stack, *args))
    whole = head_instances(logits, stack, prediction.peak_classes)
    assert [(i.peak, i.score) for i in whole] == [(i.peak, i.score) for i in prediction.instances]
    for a, b in zip(prediction.instances, whole):
        np.testing.assert_array_equal(a.mask, b.mask)


# --------------------------------------------------------------------------- training
def test_a_head_learns_the_masks_of_two_corrected_images(tiny96, shapes_scenes):
    torch.manual_seed(0)
    untrained = replace(tiny96, head=RefineHead(find_stages(tiny96.network.fcn.features, probe_size=96)))
    before = [iou for scene in shapes_scenes[:2] for iou in instance_ious(untrained, scene)]
    result = refine(tiny96, corrections=corrections_of(shapes_scenes[:2]), epochs=60, batch_size=4, lr=5e-3,
                    device="cpu")
    assert not result.cancelled and [h.epoch for h in result.history] == list(range(1, 61))
    assert result.history[-1].loss < 0.25 * result.history[0].loss
    after = [iou for scene in shapes_scenes[:2] for iou in instance_ious(result.model, scene)]
    assert min(after) > 0.6 and np.mean(after) > 0.7, after
    assert np.mean(after) > np.mean(before) + 0.4, (before, after)
    assert tiny96.head is None  # the model it started from is left as it was
    # a third image, never seen: the head generalises to the same kind of objects
    assert min(instance_ious(result.model, shapes_scenes[2])) > 0.5


@pytest.fixture(scope="module")
def refined(tiny96, shapes_scenes):
    return refine(tiny96, corrections=corrections_of(shapes_scenes[:2]), epochs=40, batch_size=4, lr=5e-3,
                  device="cpu").model


def test_refine_keeps_an_existing_out_unless_overwrite(tiny96, shapes_scenes, tmp_path):
    out = tmp_path / "refined.pt"
    out.write_bytes(b"an earlier refined model")
    corrections = corrections_of(shapes_scenes[:1])
    with pytest.raises(FileExistsError, match=r"out .*refined.pt exists: pass resume=True to continue it, "
                                              r"overwrite=True to replace it"):
        refine(tiny96, corrections=corrections, out=out, epochs=1, device="cpu")  # the default
    assert out.read_bytes() == b"an earlier refined model"
    result = refine(tiny96, corrections=corrections, out=out, epochs=1, device="cpu", overwrite=True)
    assert result.checkpoint == out and load_model(out).head is not None


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_refined_checkpoint_round_trips(refined, shapes_scenes, tmp_path, suffix):
    path = save_model(refined, tmp_path / f"refined{suffix}")
    loaded = load_model(path)
    assert loaded.head is not None and loaded.head.config() == refined.head.config()
    assert loaded.head.info["trained_on"]["corrected"] == 2 and loaded.head.info["trained_on"]["peaks"] >= 4
    for name, tensor in refined.head.state_dict().items():
        torch.testing.assert_close(loaded.head.state_dict()[name], tensor)
    image = shapes_scenes[2][0]
    prediction = predict(image, loaded, proposals=None)
    again = [i.mask for i in refined_instances(refined, image, prediction)]
    loaded_masks = [i.mask for i in refined_instances(loaded, image, prediction)]
    assert len(again) == len(loaded_masks) > 0
    for a, b in zip(again, loaded_masks):
        np.testing.assert_array_equal(a, b)
    assert len(predict(image, loaded).instances) == len(again)  # auto: the head
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


@pytest.mark.parametrize(("field", "value", "message"), [
    ("format_version", None, "no valid format_version.*None"),
    ("format_version", "1", "no valid format_version.*'1'"),
    ("format_version", [1], "no valid format_version"),
    ("format_version", True, "no valid format_version"),
    ("info", [1, 2], "info: expected a mapping, got list"),
    ("info", None, "info: expected a mapping, got NoneType"),
    ("config", [1], "does not match its own metadata"),
])
def test_a_malformed_refine_entry_is_a_value_error_naming_the_file(refined, tmp_path, field, value, message):
    """load_model promises a ValueError naming the file for a malformed checkpoint; these raised TypeError."""
    path = save_model(refined, tmp_path / "refined.pt")
    content = torch.load(path, weights_only=True)
    content["metadata"]["refine"][field] = value
    odd = tmp_path / "odd.pt"
    torch.save(content, odd)
    with pytest.raises(ValueError, match=message) as error:
        load_model(odd)
    assert str(odd) in str(error.value)


def test_a_checkpoint_whose_backbone_is_not_a_name_is_a_value_error(refined, tmp_path):
    path = save_model(refined, tmp_path / "refined.pt")
    content = torch.load(path, weights_only=True)
    content["metadata"]["backbone"] = ["tiny"]  # raised TypeError: unhashable type: 'list'
    torch.save(content, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="backbone: expected one of"):
        load_model(tmp_path / "odd.pt")


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
    # a predictor switched to "auto" (as the widget does on every run) resolves it against its model
    predictor = PRMPredictor(refined, proposals="default")
    predictor.set_proposals("auto")
    assert predictor.proposal_source == "refined"
    predictor.set_image(image)
    for a, b in zip(predictor.predict(points=points).instances, explicit.instances):
        np.testing.assert_array_equal(a.mask, b.mask)
    plain_predictor = PRMPredictor(tiny96, proposals="prm")
    plain_predictor.set_proposals("auto")
    assert plain_predictor.proposal_source == "default"
    # "auto" inside a combination is the model's source too: the head's masks join the built-in ones
    mixed = PRMPredictor(refined, proposals="default+auto")
    mixed.set_image(image)
    stack = mixed.proposals(explicit.prms, explicit)
    np.testing.assert_array_equal(stack, make_proposals("default+refined", image, model=refined, prediction=explicit))
    plain_mixed = PRMPredictor(tiny96, proposals="default+auto")
    plain_mixed.set_image(image)
    np.testing.assert_array_equal(plain_mixed.proposals(), make_proposals("default+default", image))


def test_evaluate_runs_a_model_with_a_head(refined, shapes_scenes, tmp_path):
    import imageio.v3 as iio

    from napari_prm.data import from_coco
    from napari_prm.evaluate import evaluate
    from napari_prm.io.coco import labels_to_coco

    image, labels, classes, _ = shapes_scenes[2]
    iio.imwrite(tmp_path / "scene.png", image)
    table = {"label": np.array([1, 2]), "class_index": np.array([classes[1], classes[2]])}
    coco = labels_to_coco(labels, table, CLASSES, file_name="scene.png")
    (tmp_path / "scene.json").write_text(json.dumps(coco))
    dataset = from_coco(tmp_path / "scene.json", tmp_path)
    for proposals in ("auto", "default+auto"):  # both cut the head's masks; the funnel needs them too
        results = evaluate(refined, dataset, proposals=proposals)
        assert results["num_images"] == 1 and results["num_predicted_instances"] > 0
        assert results["mAP_r"][0.25] > 0


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
    cached = {path: path.stat().st_mtime_ns for path in (tmp_path / "cache").glob("*.pt")}
    assert len(cached) == 3
    assert first.model.head.info["trained_on"]["pseudo_labelled"] == 3
    assert first.model.head.info["predict_options"] == {"class_threshold": -1e9}
    second = refine(tiny96, dataset=dataset, epochs=2, device="cpu", cache_dir=tmp_path / "cache",
                    predict_options={"class_threshold": -1e9})
    assert second.samples == 3  # read from the cache: no entry was written again
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "cache").glob("*.pt")} == cached
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
    with pytest.warns(UserWarning, match=r"'zebra' \(1 instance: scene1_instances.csv\)"):  # the class is named
        from_folder = load_corrections(folder, CLASSES, image_paths=images)
    for corrections in (from_json, from_folder):
        assert [c.labels.shape for c in corrections] == [(96, 96), (96, 96)]
        np.testing.assert_array_equal(corrections[0].image, shapes_scenes[0][0])
        assert corrections[0].label_classes == {1: 0, 2: 1}
        assert corrections[1].label_classes == {1: 0, 2: -1} and corrections[1].num_unknown == 1
        square = shapes_scenes[1][1] == 2
        prm = (square / square.sum())[None].astype(np.float32)
        (target,) = correction_targets(corrections[1].labels, corrections[1].label_classes, prm, [1], (24, 24))
        np.testing.assert_array_equal(target, resize_nearest(square, (24, 24)))  # unknown class: learnt by any peak
    with pytest.raises(ValueError, match="no image 'scene0'"):
        load_corrections(folder, CLASSES)
    with pytest.raises(ValueError, match="COCO .json file, a folder of .* or a PASCAL VOC year folder or split list"):
        load_corrections(tmp_path / "scene0.png", CLASSES)



def test_a_coco_export_without_a_file_name_says_how_to_pair_it(tmp_path, shapes_scenes):
    """``export_instances`` writes an empty COCO ``file_name`` unless given ``image_file_name``:
    ``load_corrections`` of such a JSON said "no image '' among the dataset's images"; it says
    why and what to do instead. The folder of the same export pairs by stem."""
    import imageio.v3 as iio

    from napari_prm import io

    image, labels, _, _ = shapes_scenes[0]
    iio.imwrite(tmp_path / "scene0.png", image)
    table = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(["cat", "dog"])}
    io.export_instances(labels, table, CLASSES, tmp_path / "out", stem="scene0")
    with pytest.raises(ValueError, match=r"\(image id 1\): its file_name is empty, so no image can be paired "
                                         r"with it: .*image_file_name=.*<stem>_labels.tif"):
        load_corrections(tmp_path / "out" / "scene0_instances.json", CLASSES, image_paths=[tmp_path / "scene0.png"])
    (correction,) = load_corrections(tmp_path / "out", CLASSES, image_paths=[tmp_path / "scene0.png"])
    assert correction.label_classes == {1: 0, 2: 1}

def test_match_corrections_pairs_exports_with_the_dataset_images(tmp_path, shapes_scenes):
    """``evaluate --masks``: exports are matched to the dataset's images only (not looked for
    beside them); those of no dataset image and a second format of one export are named."""
    import imageio.v3 as iio

    from napari_prm import io
    from napari_prm.refine import match_corrections

    table = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(CLASSES)}
    folder = tmp_path / "labelled"
    for number, (image, labels, _, _) in enumerate(shapes_scenes):
        iio.imwrite(tmp_path / f"scene{number}.png", image)
        if number:
            io.export_instances(labels, table, CLASSES, folder, stem=f"scene{number}", formats=("tiff", "png", "csv"),
                                image_file_name=f"scene{number}.png")
    iio.imwrite(folder / "beside.png", shapes_scenes[0][0])  # an image in the folder, not in the dataset
    io.export_instances(shapes_scenes[0][1], table, CLASSES, folder, stem="beside")
    images = [tmp_path / f"scene{number}.png" for number in range(3)]
    matched, unmatched = match_corrections(folder, CLASSES, images)
    assert list(matched) == [1, 2]
    assert [c.image_path for c in matched.values()] == images[1:]
    assert [Path(c.source).name for c in matched.values()] == ["scene1_labels.png", "scene2_labels.png"]
    np.testing.assert_array_equal(matched[2].instances().masks, [shapes_scenes[2][1] == 1, shapes_scenes[2][1] == 2])
    assert unmatched == ["beside_labels.tif",  # one export in two formats: read from the first by name
                         "scene1_labels.tif (the same export as scene1_labels.png, in another format)",
                         "scene2_labels.tif (the same export as scene2_labels.png, in another format)"]
    with pytest.warns(UserWarning, match=r"left out: scene1_labels.tif \(the same export as scene1_labels.png"):
        assert len(load_corrections(folder, CLASSES, image_paths=images)) == 3  # refine still finds beside.png
    coco = io.labels_to_coco(shapes_scenes[1][1], table, CLASSES, file_name="scene1.png")
    coco["images"].append({"id": 2, "file_name": "gone.png", "height": 96, "width": 96})
    io.write_coco_json(tmp_path / "merged.json", coco)
    matched, unmatched = match_corrections(tmp_path / "merged.json", CLASSES, images)
    assert list(matched) == [1] and matched[1].label_classes == {1: 0, 2: 1} and unmatched == ["gone.png"]


def test_shapes_scene_is_what_it_says():
    image, labels, classes, centres = shapes_scene(5)
    assert image.shape == (96, 96, 3) and set(np.unique(labels)) == {0, 1, 2}
    for label, (y, x) in zip((1, 2), centres.astype(int)):
        assert labels[y, x] == label


def test_bad_arguments_are_refused_by_name(tiny96, shapes_scenes):
    corrections = corrections_of(shapes_scenes[:1])
    for options, message in (({"epochs": 0}, "epochs"), ({"lr": float("nan")}, "lr"),
                             ({"batch_size": -1}, "batch_size"), ({"correction_weight": -1.0}, "correction_weight")):
        with pytest.raises(ValueError, match=message):
            refine(tiny96, corrections=corrections, **options)
    with pytest.raises(ValueError, match="expected Correction objects"):
        refine(tiny96, corrections=[shapes_scenes[0][1]])
    image, labels, _, _ = shapes_scenes[0]
    with pytest.raises(ValueError, match="the labels are \\(48, 96\\), the image \\(96, 96\\)"):
        Correction(image, labels[:48], {}, "half")
    with pytest.raises(ValueError, match="2-D integer array"):
        Correction(image, labels.astype(float), {}, "float")
    with pytest.raises(ValueError, match="unknown option.*'bogus'"):
        refined_instances(replace(tiny96, head=RefineHead(find_stages(tiny96.network.fcn.features, probe_size=96))),
                          image, predict(image, tiny96, proposals=None), bogus=1)


def test_a_correction_takes_the_images_predict_takes_and_refuses_class_names(shapes_scenes):
    from PIL import Image

    image, labels, classes, _ = shapes_scenes[0]
    plain = Correction(image, labels, classes, "array")
    # a (C, H, W) tensor, as predict takes it, was compared with the labels as (C, H) and refused
    for given in (torch.from_numpy(image).permute(2, 0, 1), Image.fromarray(image)):
        correction = Correction(given, labels, classes, "other")
        assert isinstance(correction.image, np.ndarray)
        np.testing.assert_array_equal(correction.image, plain.image)
        np.testing.assert_array_equal(correction.instances().masks, plain.instances().masks)
    # a class name failed in num_unknown as "'<' not supported between instances of 'str' and 'int'"
    with pytest.raises(ValueError, match=r"correction named: label_classes maps labels to class indices .*"
                                         r"got 1: 'cat' \(model.class_names.index\(name\)"):
        Correction(image, labels, {1: "cat"}, "named")
    with pytest.raises(ValueError, match=r"label_classes must be a dict of label to class index, got list"):
        Correction(image, labels, [0, 1], "listed")
    numpy_keys = Correction(image, labels, {np.int64(k): np.int32(v) for k, v in classes.items()}, "numpy")
    assert numpy_keys.label_classes == classes and all(type(k) is int for k in numpy_keys.label_classes)


def test_match_corrections_keeps_the_folders_of_a_coco_file_name(tmp_path, shapes_scenes):
    """A folder-per-class dataset has cat/1.png and dog/1.png. The COCO JSON of dog/1.png's
    corrections was matched by file name alone to cat/1.png: its masks became cat/1.png's
    ground truth, silently. An export that matches several images by name alone is refused."""
    import imageio.v3 as iio

    from napari_prm import io
    from napari_prm.refine import match_corrections

    table = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(CLASSES)}
    images = []
    for number, folder in enumerate(("cat", "dog")):
        (tmp_path / folder).mkdir()
        iio.imwrite(tmp_path / folder / "1.png", shapes_scenes[number][0])
        images.append(tmp_path / folder / "1.png")
    coco = io.labels_to_coco(shapes_scenes[1][1], table, CLASSES, file_name="dog/1.png")
    io.write_coco_json(tmp_path / "dog.json", coco)
    matched, unmatched = match_corrections(tmp_path / "dog.json", CLASSES, images)
    assert list(matched) == [1] and matched[1].image_path == images[1] and unmatched == []
    # the folder's exports name only the stem: '1' is either image
    io.export_instances(shapes_scenes[1][1], table, CLASSES, tmp_path / "labelled", stem="1")
    with pytest.raises(ValueError, match=r"1_labels\.tif: its image '1' could be any of .*cat.*1\.png.*dog.*1\.png"):
        match_corrections(tmp_path / "labelled", CLASSES, images)


def test_refine_leaves_the_callers_torch_random_state(tiny96, shapes_scenes):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    refine(tiny96, corrections=corrections_of(shapes_scenes[:1]), epochs=1, device="cpu")
    # refine seeds the head (seed) and each epoch (seed * 100003 + epoch) with torch.manual_seed
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_refine_inside_torch_no_grad_is_the_same(tiny96, shapes_scenes):
    # refine failed inside `torch.no_grad()` with "element 0 of tensors does not require grad"
    corrections = corrections_of(shapes_scenes[:1])
    outside = refine(tiny96, corrections=corrections, epochs=1, device="cpu")
    with torch.no_grad():
        inside = refine(tiny96, corrections=corrections, epochs=1, device="cpu")
    assert [r.loss for r in inside.history] == [r.loss for r in outside.history]


def test_prepare_samples_cancel_raises_the_packages_one_cancelled(tiny96, shapes_scenes, tmp_path):
    # refine's sample preparation stopped with its own Cancelled(Exception), which a caller catching
    # napari_prm.predict.Cancelled (what predict, PRMPredictor and export_instances raise) missed
    import imageio.v3 as iio

    from napari_prm.data import LabeledImageDataset
    from napari_prm.predict import Cancelled
    from napari_prm.refine.features import find_stages
    from napari_prm.refine.samples import prepare_samples

    iio.imwrite(tmp_path / "scene.png", shapes_scenes[0][0])
    dataset = LabeledImageDataset([tmp_path / "scene.png"], np.array([[1, 0]], np.float32), CLASSES)
    stages = find_stages(tiny96.network.fcn.features, probe_size=96)
    with pytest.raises(Cancelled):
        prepare_samples(tiny96, stages, dataset=dataset, cache_dir=tmp_path / "cache", cancel=lambda: True,
                        predict_options={"class_threshold": -1e9, "peak_threshold": -1e9})
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_resume_refuses_to_drop_the_runs_corrections(tiny96, shapes_scenes, tmp_path):
    """``refine(corrections=..., out=)`` then ``refine(resume=True)`` without them went on
    learning from none, without a word: a resume with other corrections is refused."""
    import imageio.v3 as iio

    from napari_prm.data import LabeledImageDataset

    paths = []
    for number, (image, *_rest) in enumerate(shapes_scenes):
        paths.append(tmp_path / f"scene{number}.png")
        iio.imwrite(paths[-1], image)
    dataset = LabeledImageDataset(paths, np.array([[1, 0], [0, 1], [0, 0]], np.float32), CLASSES)
    corrections = corrections_of(shapes_scenes[:2])
    out = tmp_path / "refined.pt"
    options = dict(dataset=dataset, batch_size=8, device="cpu", seed=0, predict_options={"class_threshold": -1e9})
    refine(tiny96, corrections=corrections, out=out, epochs=1, **options)
    instances = sum(c.num_instances for c in corrections)
    with pytest.raises(ValueError, match=rf"cannot resume .*refined.pt: its run learnt from 2 corrected images "
                                         rf"\({instances} instances\), this one gives none: give the same "
                                         r"corrections, or start a new run"):
        refine(tiny96, out=out, epochs=2, resume=True, **options)
    with pytest.raises(ValueError, match="this one gives 1 corrected image .* that are not the run's"):
        refine(tiny96, corrections=corrections[:1], out=out, epochs=2, resume=True, **options)
    assert load_checkpoint(out)[1]["refine_training"]["epoch"] == 1
    resumed = refine(tiny96, corrections=corrections[::-1], out=out, epochs=2, resume=True, **options)
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert resumed.model.head.info["trained_on"]["corrected"] == 2
