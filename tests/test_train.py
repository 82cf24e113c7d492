"""Training on a tiny network: the loss goes down, runs repeat, cancel and resume lose nothing."""

import re
import threading

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_prm import load_model, save_model
from napari_prm.data import LabeledImageDataset, from_csv
from napari_prm.io import unreadable_images
from napari_prm.model import build_model, load_checkpoint
from napari_prm.train import SPLIT_RULE, TRAINING_STATE_KEY, TrainProgress, train, training_split

SETTINGS = dict(backbone="tiny", epochs=3, batch_size=8, lr=0.01, backbone_lr_mult=1.0, input_size=(48, 48),
                device="cpu", val_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """24 noisy images with a red and/or a blue square; labels say which."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    rows = ["image,labels"]
    for i in range(24):
        image = (rng.random((48, 48, 3)) * 60).astype(np.uint8)
        labels = []
        for channel, name, absent in ((0, "red", 0), (2, "blue", 1)):
            if i % 3 != absent:
                y, x = rng.integers(4, 30, 2)
                image[y:y + 12, x:x + 12, channel] = 255
                labels.append(name)
        iio.imwrite(root / f"{i}.png", image)
        rows.append(f"{i}.png,{';'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return from_csv(root / "labels.csv")


@pytest.fixture(scope="module")
def full_run(squares, tmp_path_factory):
    torch.set_num_threads(1)
    events = []
    result = train(squares, out=tmp_path_factory.mktemp("full") / "model.pt", progress=events.append, **SETTINGS)
    return result, events


def _weights(model):
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def test_training_lowers_the_loss_and_reports(full_run, squares):
    result, events = full_run
    assert not result.cancelled
    losses = [record.loss for record in result.history]
    assert [record.epoch for record in result.history] == [1, 2, 3]
    assert losses[-1] < losses[0] - 0.05
    for record in result.history:
        assert set(record.val_ap) == {"blue", "red"}
        assert 0 <= record.val_map <= 1
    batches = [e for e in events if e.stage == "batch"]
    assert len(batches) == 9  # 18 training images in batches of 8, 3 epochs
    assert [(e.epoch, e.batch, e.num_batches) for e in batches[:4]] == [(1, 1, 3), (1, 2, 3), (1, 3, 3), (2, 1, 3)]
    training = [e for e in events if e.stage != "calibration"]
    assert all(isinstance(e, TrainProgress) and e.images_per_second > 0 and e.loss > 0 for e in training)
    assert [e.val_ap is not None for e in events if e.stage == "epoch"] == [True] * 3
    # then the thresholds are calibrated on the 6 held-out images, one report each
    assert [(e.batch, e.num_batches) for e in events if e.stage == "calibration"] == [(i, 6) for i in range(1, 7)]
    assert (result.train_images, result.held_out_images) == (18, 6)
    # the only warning: 6 images are too few to rely on the thresholds they chose
    assert result.warnings == [result.calibration.warning]
    assert result.calibration.warning.startswith("the thresholds were calibrated on only 6 image(s), fewer than 10")


def test_training_calibrates_the_thresholds_on_the_held_out_images(full_run):
    result, _ = full_run
    calibration = result.calibration
    assert calibration is not None and calibration.images == 6
    assert 0 < calibration.recall <= 1 and 0 < calibration.precision <= 1
    loaded = load_model(result.checkpoint)
    assert loaded.settings["class_threshold"] == pytest.approx(calibration.class_threshold)
    assert loaded.settings["peak_threshold"] == pytest.approx(calibration.peak_threshold)
    assert loaded.settings["calibration"]["held_out"] is True
    # the checkpoint says which rule chose its held-out images (calibrate --held-out trusts it)
    assert load_checkpoint(result.checkpoint)[1][TRAINING_STATE_KEY]["split_rule"] == SPLIT_RULE
    assert set(loaded.settings["tta_calibration"]) >= {"class_threshold", "peak_threshold"}


def test_checkpoint_is_a_model_with_inference_settings(full_run):
    result, _ = full_run
    loaded = load_model(result.checkpoint)
    assert loaded.class_names == ["blue", "red"]
    assert loaded.input_size == (48, 48)
    assert loaded.settings["sub_pixel_locating_factor"] == 1
    assert result.model.network.sub_pixel_locating_factor == 1
    for key, value in _weights(result.model).items():
        assert torch.equal(value, loaded.network.state_dict()[key]), key


def test_cancel_then_resume_equals_an_uninterrupted_run(full_run, squares, tmp_path):
    reference, _ = full_run
    out = tmp_path / "model.pt"
    events = []
    # Cancel on the second batch of epoch 2: epoch 1 is saved, epoch 2 is lost.
    cancelled = train(squares, out=out, progress=events.append,
                      cancel=lambda: sum(e.stage == "batch" for e in events) >= 4, **SETTINGS)
    assert cancelled.cancelled
    assert [r.epoch for r in cancelled.history] == [1]
    assert cancelled.checkpoint == out
    assert cancelled.history[0].loss == reference.history[0].loss

    resumed = train(squares, out=out, resume=True, epochs=3)
    assert not resumed.cancelled
    assert [r.loss for r in resumed.history] == [r.loss for r in reference.history]
    for key, value in _weights(reference.model).items():
        assert torch.equal(value, resumed.model.network.state_dict()[key]), key


def test_event_cancel_before_the_first_batch(squares, tmp_path):
    stop = threading.Event()
    stop.set()
    result = train(squares, out=tmp_path / "model.pt", cancel=stop, **SETTINGS)
    assert result.cancelled and result.history == [] and result.checkpoint is None
    assert not (tmp_path / "model.pt").exists()


def test_fine_tuning_new_classes_keeps_known_rows(full_run, squares, tmp_path):
    base = full_run[0].model
    before = _weights(base)
    relabelled = squares.with_classes(["red", "blue"])
    settings = dict(SETTINGS, epochs=1, lr=0.0, val_fraction=0.0)
    settings.pop("backbone")
    result = train(relabelled, model=base, out=tmp_path / "tuned.pt", **settings)
    classifier = result.model.network.fcn.classifier
    assert result.model.class_names == ["red", "blue"]
    assert torch.equal(classifier.weight[0], before["fcn.classifier.weight"][1])
    assert torch.equal(classifier.weight[1], before["fcn.classifier.weight"][0])
    # The base model itself is left alone.
    assert base.class_names == ["blue", "red"]
    assert all(torch.equal(v, base.network.state_dict()[k]) for k, v in before.items())


def test_fine_tuning_the_builtin_model_keeps_its_classifier_rows(squares, tmp_path):
    """``model="imagenet-voc"`` (the CLI's ``train --model imagenet-voc``) said "unknown backbone": it
    fine-tunes the built-in EfficientNet-Lite0, keeping its rows of the dataset's classes of the same name."""
    builtin = load_model("imagenet-voc")
    rows = builtin.network.fcn.classifier
    named = LabeledImageDataset(image_paths=squares.image_paths, labels=squares.labels, class_names=["dog", "x"],
                                source="squares as dogs")
    result = train(named, model="imagenet-voc", out=tmp_path / "dogs.pt", epochs=1, batch_size=8, lr=0.0,
                   backbone_lr_mult=0.0, input_size=(64, 64), device="cpu", val_fraction=0.0, calibrate=False)
    assert result.model.backbone == "efficientnet_lite0" and result.model.class_names == ["dog", "x"]
    classifier = result.model.network.fcn.classifier
    dog = builtin.class_names.index("dog")
    assert torch.equal(classifier.weight[0], rows.weight[dog]) and torch.equal(classifier.bias[0], rows.bias[dog])
    features = builtin.network.fcn.features.state_dict()
    assert all(torch.equal(v, features[k]) for k, v in result.model.network.fcn.features.state_dict().items())
    assert load_model(tmp_path / "dogs.pt").class_names == ["dog", "x"]


def test_a_new_classifier_is_told_of_the_builtin_rows_fine_tuning_keeps(squares, tmp_path):
    """Training a new classifier on classes the built-in label spaces name learnt them from scratch
    without a word (on coco128's VOC view: mAP^r .5 1.5 against 9.6 from ``imagenet-voc``, docs/accuracy.md).
    ``builtin_start_note`` names the space and exactly the classes whose rows fine-tuning keeps."""
    from napari_prm.train import builtin_start_note

    note = builtin_start_note(["cat", "Dog"])  # 'Dog' is no built-in class name: fine-tuning starts it new
    assert note.startswith("1 of the dataset's 2 classes ('cat') is a class of the built-in model 'imagenet-voc' "
                           "(EfficientNet-Lite0): --model imagenet-voc starts from its ImageNet classifier rows "
                           "for it (the others start new)")
    assert "docs/accuracy.md" in note
    named = LabeledImageDataset(image_paths=squares.image_paths, labels=squares.labels, class_names=["cat", "Dog"],
                                source="squares as cats")
    result = train(named, model="imagenet-voc", out=tmp_path / "cats.pt", epochs=1, batch_size=8, lr=0.0,
                   backbone_lr_mult=0.0, input_size=(64, 64), device="cpu", val_fraction=0.0, calibrate=False)
    builtin = load_model("imagenet-voc").network.fcn.classifier
    kept = [name for row, name in enumerate(named.class_names)
            if any(torch.equal(result.model.network.fcn.classifier.weight[row], builtin.weight[other])
                   for other in range(builtin.out_channels))]
    assert kept == ["cat"]
    # the space naming the most classes; none for a fine-tuned start, or when no class is named
    assert "'imagenet-coco'" in builtin_start_note(["truck", "cat", "x"], "tiny")
    assert "2 of the dataset's 3 classes ('truck', 'cat')" in builtin_start_note(["truck", "cat", "x"])
    assert "('tabby') is a class of the built-in model 'imagenet' " in builtin_start_note(["tabby"])
    assert builtin_start_note(["cat"], "imagenet-voc") is None and builtin_start_note(["cat"], result.model) is None
    assert builtin_start_note(["red", "blue"]) is None


def test_an_unknown_starting_model_names_what_is_accepted(squares, tmp_path):
    with pytest.raises(ValueError, match=r"model: expected a checkpoint file .*a built-in model \(imagenet, "
                                         r"imagenet-voc, imagenet-coco\) or a backbone .*got 'imagenet-vco'"):
        train(squares, model="imagenet-vco", out=tmp_path / "m.pt", epochs=1)
    assert not (tmp_path / "m.pt").exists()


def test_an_existing_out_is_refused_by_default(squares, tmp_path):
    """An existing checkpoint is kept unless ``overwrite=True`` (the default is the CLI's and the
    widget's): a notebook cell run twice with the default ``out`` must not replace the first model."""
    settings = dict(SETTINGS, epochs=1, val_fraction=0.0, calibrate=False)
    out = tmp_path / "m.pt"
    train(squares, out=out, **settings)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match=r"out .*m.pt exists: pass resume=True to continue it, "
                                              r"overwrite=True to replace it, or choose another path"):
        train(squares, out=out, **settings)
    assert out.read_bytes() == before
    resumed = train(squares, out=out, resume=True, **dict(settings, epochs=2))
    assert [r.epoch for r in resumed.history] == [1, 2]
    train(squares, out=out, overwrite=True, **settings)  # replaced
    assert [h["epoch"] for h in torch.load(out, weights_only=True)["extra"]["training"]["history"]] == [1]


def test_training_errors(squares, tmp_path):
    with pytest.raises(ValueError, match=r"\['green'\] have no positive image"):
        train(LabeledImageDataset(image_paths=squares.image_paths, labels=np.c_[squares.labels, np.zeros(len(squares))],
                                  class_names=["blue", "red", "green"], source="squares"),
              out=tmp_path / "m.pt", **SETTINGS)
    plain = tmp_path / "plain.pt"
    save_model(build_model("tiny", ["blue", "red"], pretrained=False), plain)
    with pytest.raises(ValueError, match=r"plain.pt holds no training state"):
        train(squares, out=tmp_path / "m.pt", resume=plain)
    with pytest.raises(ValueError, match=r"write a .pt file"):
        train(squares, out=tmp_path / "m.safetensors", **SETTINGS)
    # a configuration file's strings were true: hflip="no" flipped, calibrate="False" calibrated
    for name in ("hflip", "calibrate", "overwrite", "check_images"):
        with pytest.raises(ValueError, match=rf"^{name}: expected True or False, got 'no'$"):
            train(squares, out=tmp_path / "m.pt", **{**SETTINGS, name: "no"})
    assert not (tmp_path / "m.pt").exists()


def _one_image_per_class(folder):
    """The tutorial's kind of folder: 3 images of 3 classes (cat, dog, bird), one each, in a CSV."""
    rows = ["image,labels"]
    for i, name in enumerate(("cat", "dog", "bird")):
        image = np.zeros((32, 32, 3), np.uint8)
        image[8 * i:8 * i + 12, 4:16, i] = 255
        iio.imwrite(folder / f"{i}.png", image)
        rows.append(f"{i}.png,{name}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return from_csv(folder / "labels.csv")


def test_no_image_is_held_out_when_each_is_the_only_one_of_its_class(tmp_path):
    """3 images of 3 classes, 1 held out (the tutorial's folder): a class had no training image,
    and calibration on that image alone chose nonsense thresholds. Now none is held out, the
    thresholds are calibrated on the training images, and a warning says why."""
    dataset = _one_image_per_class(tmp_path)
    split = training_split(dataset, 0.2, 0)
    assert len(split.train) == 3 and split.held_out is None and split.wanted == 1
    assert split.describe() == ("training on 3 images, none held out (the thresholds are calibrated on the "
                                "training images)")
    assert split.warning.startswith("no image is held out for validation (val_fraction asks for 1): holding out "
                                    "an image would leave one of its classes without a training image")
    assert "'bird', 'cat', 'dog'" in split.warning
    result = train(dataset, out=tmp_path / "model.pt", **dict(SETTINGS, epochs=1, input_size=(32, 32),
                                                               val_fraction=0.2))
    assert (result.train_images, result.held_out_images) == (3, 0)
    assert result.warnings[0] == split.warning and result.calibration.images == 3
    # the checkpoint says the thresholds came from the training images (it said held-out ones)
    assert load_model(tmp_path / "model.pt").settings["calibration"]["held_out"] is False
    # a single image trains too (it was an error: cannot split)
    one = dataset.subset([0]).with_classes(["cat"])
    split = training_split(one, 0.2)
    assert (len(split.train), split.held_out) == (1, None) and split.warning.startswith("no image is held out")
    assert split.describe(calibrate=False) == "training on 1 image, none held out"
    # fewer than asked: 2 of 4 wanted, one of the two cat images held out
    iio.imwrite(tmp_path / "3.png", np.full((32, 32, 3), 90, np.uint8))
    (tmp_path / "more.csv").write_text("image,labels\n0.png,cat\n1.png,dog\n3.png,cat\n2.png,bird\n")
    more = from_csv(tmp_path / "more.csv")
    split = training_split(more, 0.5, 0)
    assert (len(split.train), len(split.held_out), split.wanted) == (3, 1, 2)
    assert split.warning.startswith("only 1 image(s) held out for validation (val_fraction asks for 2): holding "
                                    "out another image would leave")
    assert split.warning.endswith("(class(es) with a single image: 'bird', 'cat', 'dog')")
    # nothing held out: every image trains
    split = training_split(dataset, 0.0)
    assert split.held_out is None and split.warning is None
    assert split.describe() == ("training on 3 images, none held out (the thresholds are calibrated on the "
                                "training images)")


def test_long_class_lists_name_the_first_five_and_count_the_others(tmp_path):
    """The training warnings wrote "'a', ..., 'e' and 2 more" by hand beside `first_names`; they
    now name the first five as every long list of names does: "'a', ..., 'e', ... (2 more)"."""
    from napari_prm.model.checkpoint import builtin_class_names
    from napari_prm.train import builtin_start_note, no_negative_warning

    names = [f"c{i}" for i in range(7)]
    rows = ["image,labels"]
    for i, name in enumerate(names):
        iio.imwrite(tmp_path / f"{i}.png", np.full((16, 16, 3), 30 * i, np.uint8))
        rows.append(f"{i}.png,{name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    single = from_csv(tmp_path / "labels.csv")  # 7 classes of one image each: none can be held out
    assert ("(class(es) with a single image: 'c0', 'c1', 'c2', 'c3', 'c4', ... (2 more)); the thresholds "
            in training_split(single, 0.5).warning)
    everywhere = LabeledImageDataset(image_paths=single.image_paths, labels=np.ones((7, 7), np.float32),
                                     class_names=names, source="seven")
    assert no_negative_warning(everywhere).startswith(
        "every image of seven shows class(es) 'c0', 'c1', 'c2', 'c3', 'c4', ... (2 more): ")
    voc = list(builtin_class_names("imagenet-voc"))[:7]
    assert builtin_start_note(voc).startswith(
        f"the dataset's 7 classes ({', '.join(map(repr, voc[:5]))}, ... (2 more)) are classes of the built-in model "
        "'imagenet-voc'")


def test_train_uses_a_split_made_already_and_refuses_another(tmp_path):
    """The Train widget shows the split before training; train() made it a second time. Now it
    takes the one made (the same images train), and refuses one of another recipe or dataset."""
    dataset = _one_image_per_class(tmp_path)
    (tmp_path / "3.png").write_bytes((tmp_path / "0.png").read_bytes())  # a second cat (a line repeated is one)
    (tmp_path / "more.csv").write_text("image,labels\n0.png,cat\n1.png,dog\n2.png,bird\n3.png,cat\n")
    more = from_csv(tmp_path / "more.csv")
    settings = dict(SETTINGS, epochs=1, input_size=(32, 32), calibrate=False)
    split = training_split(more, 0.25, 0)
    assert (len(split.train), len(split.held_out)) == (3, 1)
    result = train(more, out=tmp_path / "a.pt", split=split, **settings)
    again = train(more, out=tmp_path / "b.pt", **settings)
    assert (result.train_images, result.held_out_images) == (again.train_images, again.held_out_images) == (3, 1)
    assert [r.loss for r in result.history] == [r.loss for r in again.history]
    for wrong, message in ((training_split(more, 0.5, 0), r"a split with val_fraction 0\.5, seed 0, of 4 images"),
                           (training_split(more, 0.25, 1), r"a split with val_fraction 0\.25, seed 1, of 4 images"),
                           (training_split(dataset, 0.25, 0), r"a split with val_fraction 0\.25, seed 0, of 3 images"),
                           ("0.25", r"a str")):
        with pytest.raises(ValueError, match=r"split: expected training_split\(dataset, 0\.25, 0\) of the 4 "
                                             r"images of .*more\.csv, got " + message):
            train(more, out=tmp_path / "c.pt", split=wrong, **settings)
    assert not (tmp_path / "c.pt").exists()


def _two_cats_a_dog_and_a_bird(folder):
    """4 images: two cats, one dog, one bird (seed 0: the plain random split holds out the dog)."""
    rows = ["image,labels"]
    for i, name in enumerate(("cat", "cat", "dog", "bird")):
        image = np.zeros((32, 32, 3), np.uint8)
        image[8 * i:8 * i + 8, 4:16, i % 3] = 255
        iio.imwrite(folder / f"{i}.png", image)
        rows.append(f"{i}.png,{name}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return from_csv(folder / "labels.csv")


def _a_cat_on_every_image(folder):
    """3 images, each of a cat and of a class of its own (dog, bird, fish): every image shows the
    cat (`no_negative_warning`), and holding out any image leaves its other class untrained (the
    split's warning, none held out)."""
    rows = ["image,labels"]
    for i, name in enumerate(("dog", "bird", "fish")):
        image = np.zeros((32, 32, 3), np.uint8)
        image[4:12, 4:12] = 255
        image[16:28, 8 * i:8 * i + 8, i] = 255
        iio.imwrite(folder / f"{i}.png", image)
        rows.append(f"{i}.png,cat;{name}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return from_csv(folder / "labels.csv")


def test_train_warns_of_its_split_once_before_the_first_epoch(tmp_path):
    """The split's and the dataset's warnings were made by train() (in its result) and again by
    the command line and the Train widget (said before the run), which then left out of the
    result's those whose text they had said; train() left out the classes every image shows.
    Now train() makes them all, and says them through ``warn`` before its first epoch."""
    dataset = _a_cat_on_every_image(tmp_path)
    events = []
    result = train(dataset, out=tmp_path / "m.pt", **dict(SETTINGS, epochs=1, input_size=(32, 32)),
                   warn=lambda warning: events.append(("warn", warning)),
                   progress=lambda update: events.append(("progress", update.stage)))
    said = [text for kind, text in events if kind == "warn"]
    assert len(said) == 2
    assert said[0].startswith("no image is held out for validation (val_fraction asks for 1)")
    assert said[0].endswith("(class(es) with a single image: 'bird', 'dog', 'fish'); the thresholds are "
                            "calibrated on the training images. Add images of these classes to validate on "
                            "held-out ones")
    assert said[1].startswith(f"every image of {tmp_path / 'labels.csv'} shows class(es) 'cat': ")
    assert events[:2] == [("warn", said[0]), ("warn", said[1])] and events[2] == ("progress", "batch")
    # the result holds them, and the calibration's (3 images), which is not said through warn
    assert result.calibration.warning.startswith("the thresholds were calibrated on only 3 image(s)")
    assert result.warnings == said + [result.calibration.warning]


def _from_before_the_split_rule(path, held_out_class):
    """The checkpoint as a version from before the split rule wrote it: no ``split_rule``, and its
    epochs validated on the image of ``held_out_class`` that the plain random split held out."""
    model, extra = load_checkpoint(path)
    state = extra[TRAINING_STATE_KEY]
    state.pop("split_rule", None)
    state.pop("images", None)  # recorded since after the rule
    for record in state["history"]:
        record["val_ap"] = {name: 1.0 if name == held_out_class else float("nan") for name in model.class_names}
        record["val_map"] = 1.0
    save_model(model, path, extra=extra)


def _held_out(path, dataset):
    """The names of ``dataset``'s images that the run in checkpoint ``path`` did not train on."""
    from napari_prm.train import trained_images

    trained = trained_images(load_checkpoint(path)[1], dataset.image_paths)
    return [p.name for p, was in zip(dataset.image_paths, trained) if not was]


def test_resume_of_a_checkpoint_from_before_the_split_rule_trains_on_its_own_images(tmp_path):
    """A checkpoint from before 'never hold out a class's only image' held out the only dog (the
    plain random split). Resuming it held out a cat instead, without a word: the resumed epochs
    trained on the dog and validated on a cat the first epoch trained on. Now it goes on with
    the checkpoint's own split, and says which class that leaves untrained."""
    dataset = _two_cats_a_dog_and_a_bird(tmp_path)
    plain_train, plain_held = dataset.split(0.25, seed=0, keep_every_class=False)
    assert [p.name for p in plain_held.image_paths] == ["2.png"] and dataset.untrained_classes(plain_train) == ["dog"]
    assert [p.name for p in training_split(dataset, 0.25, 0).held_out.image_paths] == ["0.png"]  # a cat
    settings = dict(SETTINGS, epochs=1, input_size=(32, 32), batch_size=2, val_fraction=0.25, seed=0)
    out = tmp_path / "model.pt"
    train(dataset, out=out, calibrate=False, **settings)
    _from_before_the_split_rule(out, "dog")

    split = training_split(dataset, 0.25, 0, split_rule=None)
    assert [p.name for p in split.held_out.image_paths] == ["2.png"] and split.left_untrained == ["dog"]
    assert "only image(s) of class(es) 'dog'" in split.warning
    assert split.describe() == "training on 3 images, 1 held out for validation and calibration"
    resumed = train(dataset, out=out, resume=True, epochs=2, calibrate=False)
    assert (resumed.train_images, resumed.held_out_images) == (3, 1)
    assert _held_out(out, dataset) == ["2.png"]  # the dog
    # one held-out image shows its class: AP 1 whatever the scores, so not defined
    assert all(np.isnan(ap) for ap in resumed.history[1].val_ap.values())
    assert any("'dog'" in warning for warning in resumed.warnings)
    assert "split_rule" not in load_checkpoint(out)[1][TRAINING_STATE_KEY]  # it keeps its own rule
    # a split made already must be the checkpoint's own
    with pytest.raises(ValueError, match=r"split: expected training_split\(dataset, 0\.25, 0, split_rule=None\) "
                                         r"of the 4 images of .*, got a split with val_fraction 0\.25, seed 0, "
                                         rf"split_rule {SPLIT_RULE}, of 4 images"):
        train(dataset, out=out, resume=True, epochs=3, split=training_split(dataset, 0.25, 0))
    again = train(dataset, out=out, resume=True, epochs=3, calibrate=False, split=split)
    assert [r.epoch for r in again.history] == [1, 2, 3] and _held_out(out, dataset) == ["2.png"]


def test_resume_of_a_checkpoint_from_before_the_split_rule_holding_out_a_class_only_image(tmp_path):
    """3 images of 3 classes, 1 held out by the plain random split (its history has validation
    APs), where this version holds none out: resuming was refused. It now goes on holding that one out."""
    dataset = _one_image_per_class(tmp_path)
    settings = dict(SETTINGS, epochs=1, input_size=(32, 32), val_fraction=0.2)
    out = tmp_path / "model.pt"
    train(dataset, out=out, calibrate=False, **settings)
    _, plain_held = dataset.split(0.2, seed=0, keep_every_class=False)
    (held_class,) = [name for name, n in zip(dataset.class_names, plain_held.labels.sum(0)) if n]
    _from_before_the_split_rule(out, held_class)
    resumed = train(dataset, out=out, resume=True, epochs=2, calibrate=False)
    assert (resumed.train_images, resumed.held_out_images) == (2, 1)
    assert _held_out(out, dataset) == [p.name for p in plain_held.image_paths]
    # a checkpoint of this version (nothing held out, no validation) resumes as it was
    train(dataset, out=tmp_path / "new.pt", calibrate=False, **settings)
    resumed = train(dataset, out=tmp_path / "new.pt", resume=True, epochs=2, calibrate=False)
    assert [r.epoch for r in resumed.history] == [1, 2] and resumed.held_out_images == 0


def _copy_of(dataset, folder):
    """The squares dataset's files and CSV in ``folder`` (a test may damage them)."""
    folder.mkdir()
    for path in dataset.image_paths:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "labels.csv").write_bytes((dataset.image_paths[0].parent / "labels.csv").read_bytes())
    return from_csv(folder / "labels.csv")


def test_unreadable_images_are_all_named_before_training(squares, tmp_path):
    """A broken image was found only when an epoch read it, one per run; now every one is
    named before the first batch, and nothing is written."""
    dataset = _copy_of(squares, tmp_path / "data")
    cut = dataset.image_paths[3]
    cut.write_bytes(cut.read_bytes()[:200])
    dataset.image_paths[17].write_text("not an image")
    out = tmp_path / "model.pt"
    with pytest.raises(ValueError) as error:
        train(dataset, out=out, **SETTINGS)
    lines = str(error.value).splitlines()
    assert lines[0] == f"2 images of {dataset.source} cannot be read; fix or remove them from the dataset " \
                       "(nothing was trained):"
    assert lines[1].startswith(f"  {cut} (declared at {dataset.source}:5): ")
    assert lines[2].startswith(f"  {dataset.image_paths[17]} (declared at {dataset.source}:19): ")
    assert not out.exists()


def test_images_unreadable_for_one_reason_are_grouped(tmp_path):
    """12 two-channel TIFFs repeated read_image's 600-character advice 12 times, one per file: the
    reason is now said once, then the first 10 files and how many more; a file unreadable for
    another reason keeps its own line."""
    import tifffile

    from napari_prm.data import load_dataset

    folder = tmp_path / "data" / "cells"
    folder.mkdir(parents=True)
    channels = [folder / f"{number:02d}.tif" for number in range(12)]
    for path in channels:
        tifffile.imwrite(path, np.zeros((2, 32, 32), np.uint8))
    iio.imwrite(folder / "good.png", np.zeros((32, 32), np.uint8))
    (folder / "text.png").write_text("not an image")
    dataset = load_dataset(tmp_path / "data")
    out = tmp_path / "model.pt"
    with pytest.raises(ValueError) as error:
        train(dataset, out=out, **SETTINGS)
    message = str(error.value)
    lines = message.splitlines()
    assert lines[0] == (f"13 images of {dataset.source} cannot be read; fix or remove them from the dataset "
                        "(nothing was trained):")
    assert lines[1].startswith("  12 images: expected one 2-D gray, RGB or RGBA image, got an array of shape "
                               "(2, 32, 32); its first axis holds 2 pages") and lines[1].endswith(":")
    assert message.count("its first axis holds 2 pages") == 1
    assert lines[2:12] == [f"    {path} (declared at {path})" for path in channels[:10]]
    assert lines[12] == "    ... (2 more)"
    assert lines[13].startswith(f"  {folder / 'text.png'} (declared at {folder / 'text.png'}): ")
    assert len(lines) == 14 and not out.exists()


def test_an_image_that_fails_during_training_is_named_and_the_last_epoch_is_kept(squares, tmp_path):
    """Damage the check cannot see (an image changed after the check, here after epoch 1):
    the error names the file, the epoch it stopped in and the intact checkpoint; resume goes on."""
    dataset = _copy_of(squares, tmp_path / "data")
    victim = dataset.image_paths[5]
    sound = victim.read_bytes()

    def damage(update: TrainProgress) -> None:
        if update.stage == "epoch" and update.epoch == 1:
            start = sound.index(b"IDAT") + 8  # the pixel data zeroed; header and end kept
            victim.write_bytes(sound[:start] + bytes(len(sound) - 24 - start) + sound[-24:])

    out = tmp_path / "model.pt"
    settings = SETTINGS | {"epochs": 2, "calibrate": False}
    with pytest.raises(ValueError) as error:
        train(dataset, out=out, progress=damage, **settings)
    assert str(error.value).startswith(f"cannot read image {victim} (declared at {dataset.source}:7): ")
    assert str(error.value).endswith(f"; training stopped in epoch 2: {out} keeps epoch 1, intact: fix or remove "
                                     "the image, then resume (resume=True, the command line's --resume) goes on")
    assert not unreadable_images([victim])  # the up-front check cannot see it: header and end intact
    victim.write_bytes(sound)
    result = train(dataset, out=out, resume=True, **settings)
    assert [record.epoch for record in result.history] == [1, 2]


def test_an_image_that_fails_in_the_calibration_of_a_resumed_finished_run_is_not_said_to_stop_an_epoch(
        squares, tmp_path):
    """``resume`` with ``epochs`` the epochs done trains none and calibrates: an image failing
    there stopped 'in epoch 2' of a 1-epoch run."""
    dataset = _copy_of(squares, tmp_path / "data")
    out = tmp_path / "model.pt"
    settings = SETTINGS | {"epochs": 1}
    train(dataset, out=out, calibrate=False, **settings)
    victim = training_split(dataset, SETTINGS["val_fraction"], SETTINGS["seed"]).held_out.image_paths[0]
    sound = victim.read_bytes()
    start = sound.index(b"IDAT") + 8  # the pixel data zeroed; header and end kept
    victim.write_bytes(sound[:start] + bytes(len(sound) - 24 - start) + sound[-24:])
    with pytest.raises(ValueError) as error:  # calibrate=True: the run's own is its calibrate=False
        train(dataset, out=out, resume=True, calibrate=True, **settings)
    assert str(error.value).startswith(f"cannot read image {victim}")
    assert str(error.value).endswith(f"; training stopped after the last epoch (calibrating): {out} keeps epoch 1, "
                                     "intact: fix or remove the image, then resume (resume=True, the command line's "
                                     "--resume) goes on")


def test_an_input_size_whose_class_maps_have_one_cell_is_refused_before_training(squares, tmp_path):
    """At 4×4 pixels the tiny backbone (stride 4) gives 1×1 class maps: no location to point at, and a
    last batch of one image stopped training in BatchNorm ("Expected more than 1 value per channel")."""
    settings = {**SETTINGS, "input_size": (4, 4), "batch_size": 23, "val_fraction": 0.0, "calibrate": False}
    with pytest.raises(ValueError, match=r"input_size \(4, 4\) gives class response maps of 1×1 cells .* at least 2×2"):
        train(squares, out=tmp_path / "small.pt", **settings)
    assert not (tmp_path / "small.pt").exists()
    # 8×8 gives 2×2 maps, and trains
    result = train(squares, out=tmp_path / "eight.pt", **{**settings, "input_size": (8, 8), "epochs": 1})
    assert len(result.history) == 1 and np.isfinite(result.history[0].loss)


def test_train_leaves_the_callers_torch_random_state(squares, tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    train(squares, out=tmp_path / "model.pt", **{**SETTINGS, "epochs": 1, "val_fraction": 0, "calibrate": False})
    # train's own seeds (seed * 100003 + epoch) made the caller's next numbers fixed
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)


def test_an_out_folder_that_cannot_be_written_is_refused_before_training(squares, tmp_path):
    """An --out in a read-only folder failed after the first epoch (a whole epoch's work lost),
    with the raw error of a temporary file (`No such file or directory: '/proc/.m.pt.~…tmp.pt'`)."""
    import os
    from pathlib import Path

    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "sub" / "model.pt"
    elif Path("/sys/kernel").is_dir():  # root writes into read-only folders, not into sysfs
        out = Path("/sys/napari-prm-test-out/model.pt")
    else:
        pytest.skip("no folder this user cannot write into")
    events = []
    with pytest.raises(OSError, match=f"cannot write into folder {out.parent}: "):
        train(squares, out=out, progress=events.append, **SETTINGS)
    assert events == []  # not a batch ran
    assert not out.parent.exists()


def test_a_class_every_image_shows_is_warned_of_and_has_no_validation_ap(squares, tmp_path):
    """A dataset of one class folder trained with "validation mAP 100.0%" and a calibration of
    "peak precision 100 %": every image shows the class, so the AP is 1 whatever the model
    scores. It is warned of before training, and its validation AP is NaN (not defined)."""
    from napari_prm.data import from_folders
    from napari_prm.train import no_negative_warning

    (tmp_path / "data" / "red").mkdir(parents=True)
    reds = [i for i in range(len(squares)) if squares.labels[i, squares.class_names.index("red")]][:8]
    for i in reds:
        iio.imwrite(tmp_path / "data" / "red" / f"{i}.png", squares.read_image(i))
    single = from_folders(tmp_path / "data")
    assert single.class_names == ["red"] and len(single) == 8
    warning = no_negative_warning(single)
    assert warning.startswith(f"every image of {tmp_path / 'data'} shows class(es) 'red': ")
    assert no_negative_warning(squares) is None  # a third of the images shows no red, a third no blue
    result = train(single, out=tmp_path / "one.pt", **dict(SETTINGS, epochs=1))
    assert result.held_out_images == 2
    record = result.history[0]
    assert list(record.val_ap) == ["red"] and np.isnan(record.val_ap["red"]) and np.isnan(record.val_map)
    # two classes: the held-out images that all show blue leave only red's AP defined
    blue_everywhere = squares.subset([i for i in range(len(squares))
                                      if squares.labels[i, squares.class_names.index("blue")]])
    assert no_negative_warning(blue_everywhere).startswith(f"every image of {squares.source} shows class(es) 'blue'")
    result = train(blue_everywhere, out=tmp_path / "two.pt", **dict(SETTINGS, epochs=1))
    record = result.history[0]
    assert np.isnan(record.val_ap["blue"]) and 0 <= record.val_ap["red"] <= 1
    assert record.val_map == record.val_ap["red"]


def test_a_resumed_run_on_a_changed_dataset_says_which_held_out_images_trained(squares, tmp_path):
    """Images added to a dataset between a run and its resume give another split: images the
    first epochs trained on were held out without a word (their validation AP and thresholds
    optimistic), and the checkpoint then recorded only the new split's training images, so
    `calibrate` said nothing of the others either."""
    from napari_prm.train import trained_held_out_warning, trained_images

    first = squares.subset(range(16))
    out = tmp_path / "model.pt"
    train(first, out=out, calibrate=False, **dict(SETTINGS, epochs=1))
    trained_first = [p for p, was in zip(first.image_paths, trained_images(load_checkpoint(out)[1],
                                                                          first.image_paths)) if was]
    assert len(trained_first) == 12
    grown = squares.subset(range(24))  # 8 images added
    state = load_checkpoint(out)[1][TRAINING_STATE_KEY]
    split = training_split(grown, SETTINGS["val_fraction"], SETTINGS["seed"])
    seen = [p for p in split.held_out.image_paths if p in trained_first]
    assert len(seen) >= 1  # the new split holds out images the first epoch learnt
    warning = trained_held_out_warning(state, split, out)
    assert warning.startswith(f"{len(seen)} of the {len(split.held_out)} held-out images trained the 1 finished "
                              f"epoch(s) of {out} (the dataset changed since the run started")
    assert trained_held_out_warning(state, training_split(first, SETTINGS["val_fraction"], SETTINGS["seed"]),
                                    out) is None  # the same dataset: the same split
    result = train(grown, out=out, resume=True, epochs=2, calibrate=False)
    assert warning in result.warnings
    # the checkpoint still names every image an epoch trained on
    trained = trained_images(load_checkpoint(out)[1], grown.image_paths)
    assert {p for p, was in zip(grown.image_paths, trained) if was} == set(trained_first) | set(split.train.image_paths)


def test_a_fine_tuned_model_that_is_not_calibrated_keeps_no_thresholds_of_its_base(full_run, squares, tmp_path):
    """A model fine-tuned from a calibrated checkpoint (or a built-in model) with calibrate=False,
    or cancelled, kept its base's calibrated thresholds, chosen for other weights (and classes):
    predict used them as the new model's own. Only this run's calibration is kept."""
    base = full_run[0].checkpoint
    assert "class_threshold" in load_model(base).settings
    result = train(squares, model=base, out=tmp_path / "tuned.pt", calibrate=False, **dict(SETTINGS, epochs=1))
    settings = load_model(result.checkpoint).settings
    assert not {"class_threshold", "peak_threshold", "calibration", "tta_calibration"} & set(settings)
    assert result.model.settings == settings
    # calibrated, it stores its own
    result = train(squares, model=base, out=tmp_path / "calibrated.pt", **dict(SETTINGS, epochs=1))
    assert load_model(result.checkpoint).settings["class_threshold"] == result.calibration.class_threshold
    # a finished, calibrated run resumed for more epochs and cancelled keeps none of its old ones
    stop = threading.Event()
    events = []

    def cancel_after_first_batch(update):
        events.append(update)
        stop.set()

    out = tmp_path / "calibrated.pt"
    resumed = train(squares, out=out, resume=True, epochs=2, progress=cancel_after_first_batch, cancel=stop)
    assert resumed.cancelled and "class_threshold" not in resumed.model.settings


def test_fine_tuning_a_refined_model_drops_its_head_when_the_backbone_trains(squares, tmp_path):
    """A refined checkpoint fine-tuned kept its refinement head, which decodes the features of the
    backbone the run trained: predict's default proposals were then that head's masks from
    features it never learnt. It is dropped with a warning; a frozen backbone keeps it."""
    from dataclasses import replace

    from napari_prm.refine.features import find_stages
    from napari_prm.refine.head import RefineHead

    torch.manual_seed(0)
    model = build_model("tiny", ["red", "blue"], pretrained=False, input_size=(48, 48))
    refined = save_model(replace(model, head=RefineHead(find_stages(model.network.fcn.features, probe_size=64))),
                         tmp_path / "refined.pt")
    assert load_model(refined).head is not None
    options = dict(SETTINGS, epochs=1, calibrate=False)
    tuned = train(squares, model=refined, out=tmp_path / "tuned.pt", **options)
    assert tuned.model.head is None and load_model(tuned.checkpoint).head is None
    assert any(w.startswith("the starting model's refinement head was dropped") for w in tuned.warnings)
    frozen = train(squares, model=refined, out=tmp_path / "frozen.pt", **dict(options, backbone_lr_mult=0))
    kept = load_model(frozen.checkpoint).head
    assert kept is not None and not any("refinement head" in w for w in frozen.warnings)
    for name, tensor in load_model(refined).head.state_dict().items():
        assert torch.equal(kept.state_dict()[name], tensor), name


def test_unfinished_runs_and_the_images_a_checkpoint_calibrates_on(tmp_path):
    """What the Train widget offers to continue (`unfinished_run`) and calibrates on
    (`calibration_images` without ``held_out``: the command line's rules, chosen for the user)."""
    from napari_prm.train import calibration_images, image_keys, recipe_conflicts, unfinished_run

    dataset = _two_cats_a_dog_and_a_bird(tmp_path)
    out = tmp_path / "run.pt"
    recipe = {**SETTINGS, "input_size": (32, 32), "batch_size": 2, "val_fraction": 0.25}
    result = train(dataset, out=out, **{**recipe, "epochs": 1}, calibrate=False)
    assert result.held_out_images == 1 and unfinished_run(out, dataset) is None  # its epochs are done
    model, extra = load_checkpoint(out)
    extra[TRAINING_STATE_KEY]["config"]["epochs"] = 3  # as a 3-epoch run cancelled after its first
    save_model(model, out, extra=extra)
    run = unfinished_run(out, dataset)
    assert (run.epochs_done, run.epochs, run.split_rule, run.backbone) == (1, 3, SPLIT_RULE, "tiny")
    assert recipe_conflicts(run.config, {"lr": 0.01, "input_size": (32, 32), "batch_size": 4}) == [
        ("batch_size", 4, 2)]
    assert unfinished_run(out, dataset.with_classes(["cat", "dog"])) is None  # other classes
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    for path in dataset.image_paths:
        (elsewhere / path.name).write_bytes(path.read_bytes())
    (elsewhere / "labels.csv").write_text((tmp_path / "labels.csv").read_text())
    assert unfinished_run(out, from_csv(elsewhere / "labels.csv")) is None  # none of its images trained it
    assert unfinished_run(tmp_path / "labels.csv", dataset) is None  # not a checkpoint

    chosen = calibration_images(dataset, extra)  # trained on it: the share held out
    assert chosen.held_out and len(chosen.dataset) == 1 and chosen.trained == 0
    assert calibration_images(dataset, extra, held_out=False).trained == 3
    fresh = calibration_images(from_csv(elsewhere / "labels.csv"), extra)  # not trained on these paths
    assert not fresh.held_out and len(fresh.dataset) == 4 and fresh.trained == 0
    extra[TRAINING_STATE_KEY]["config"]["val_fraction"] = 0.0  # held none out: every image, 4 trained it
    extra[TRAINING_STATE_KEY]["images"] = image_keys(dataset.image_paths)
    chosen = calibration_images(dataset, extra)
    assert not chosen.held_out and len(chosen.dataset) == 4 and chosen.trained == 4
    with pytest.raises(ValueError, match="records no held-out share"):
        calibration_images(dataset, extra, held_out=True)


def test_calibrate_checkpoint_says_what_it_knows_before_the_images_run(tmp_path):
    """`calibrate_checkpoint`, what ``napari-prm calibrate`` and the Train widget's *Calibrate* run:
    its notes come through ``report`` before the first image, its calibrations' warnings after the
    last; ``progress`` counts each pass; every calibration setting is written (and `CALIBRATION_SETTINGS`,
    which training drops, names them); a cancelled run writes nothing."""
    from napari_prm.peaks import Calibration
    from napari_prm.train import CALIBRATION_SETTINGS, calibrate_checkpoint, image_keys

    dataset = _two_cats_a_dog_and_a_bird(tmp_path)
    torch.manual_seed(0)
    model = build_model("tiny", dataset.class_names, pretrained=False, input_size=(32, 32))
    state = {"epoch": 1, "config": {"val_fraction": 0.0, "seed": 0}, "split_rule": SPLIT_RULE,
             "images": image_keys(dataset.image_paths)}  # trained on every image, held none out
    path = save_model(model, tmp_path / "model.pt", extra={TRAINING_STATE_KEY: state})
    events = []
    outcome = calibrate_checkpoint(path, dataset, tmp_path / "out.pt", device="cpu",
                                   progress=lambda *p: events.append(("progress", *p)),
                                   report=lambda kind, text: events.append((kind, text)))
    note = (f"4 of the 4 images calibrated on were used to train {path}: thresholds chosen on images a model has "
            "learnt are optimistic (too low for new images); it held none out: calibrate on images it was not "
            "trained on")
    assert outcome.notes == [note] and not outcome.held_out
    warning = outcome.calibration.warning
    assert warning.startswith("the thresholds were calibrated on only 4 image(s)")
    assert outcome.tta_calibration.warning == warning and outcome.warnings == [warning]  # said once
    assert events == [("note", note)] + [("progress", tta, done, 4) for tta in (False, True) for done in (1, 2, 3, 4)] \
        + [("warning", warning)]
    settings = load_model(outcome.checkpoint).settings
    assert tuple(outcome.calibration.as_settings()) == Calibration.SETTINGS
    assert CALIBRATION_SETTINGS == (*Calibration.SETTINGS, "tta_calibration")
    assert all(key in settings for key in CALIBRATION_SETTINGS)
    assert settings["calibration"]["held_out"] is False and settings["calibration"]["images"] == 4
    assert settings["tta_calibration"]["class_threshold"] == pytest.approx(outcome.tta_calibration.class_threshold)
    assert load_checkpoint(outcome.checkpoint)[1][TRAINING_STATE_KEY]["epoch"] == 1  # the training state kept

    # without TTA, the earlier calibration's TTA thresholds stay, and a note says they were not chosen here
    again = calibrate_checkpoint(outcome.checkpoint, dataset, tmp_path / "again.pt", tta=False, device="cpu")
    assert again.tta_calibration is None
    assert again.notes[-1] == (f"{outcome.checkpoint}'s thresholds for test-time augmentation are kept from an "
                               "earlier calibration (on 4 images), not chosen on these images: calibrate with "
                               "test-time augmentation too (without --no-tta, or tta=True) to choose them here")
    assert load_model(again.checkpoint).settings["tta_calibration"] == settings["tta_calibration"]
    fresh = calibrate_checkpoint(path, dataset, tmp_path / "fresh.pt", tta=False, device="cpu")
    assert not any("test-time" in note for note in fresh.notes)  # none to keep: nothing said

    stop = threading.Event()
    with pytest.raises(RuntimeError, match="cancelled"):
        calibrate_checkpoint(path, dataset, tmp_path / "cancelled.pt", tta=False, device="cpu", cancel=stop,
                             progress=lambda *_: stop.set())
    assert not (tmp_path / "cancelled.pt").exists() and "calibration" not in load_model(path).settings
    with pytest.raises(ValueError, match=r"^no held-out images of .*labels\.csv to calibrate on: .*model\.pt records "
                                         "no held-out share"):
        calibrate_checkpoint(path, dataset, held_out=True, device="cpu")
    with pytest.raises(ValueError, match="^imagenet-voc is a built-in model: give out"):
        calibrate_checkpoint("imagenet-voc", dataset)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_training_inside_a_no_gradient_block_is_the_same(squares, tmp_path, context):
    # a notebook's `with torch.no_grad():` or `torch.inference_mode()` (or set_grad_enabled(False)
    # at its top) made train fail with "element 0 of tensors does not require grad"
    settings = {**SETTINGS, "epochs": 1, "val_fraction": 0, "calibrate": False}
    outside = train(squares, out=tmp_path / "outside.pt", **settings)
    with context():
        inside = train(squares, out=tmp_path / "inside.pt", **settings)
        assert not torch.is_grad_enabled()  # the caller's block is as it was
    assert inside.history[0].loss == outside.history[0].loss
    for name, value in _weights(outside.model).items():
        torch.testing.assert_close(_weights(inside.model)[name], value, rtol=0, atol=0)


def _start_after(flag, init, worker_id):
    """A worker_init_fn that waits for ``flag`` to exist before ``init`` runs: a worker that
    starts slowly (its imports, a loaded machine), signalled meanwhile."""
    import time
    from pathlib import Path

    while not Path(flag).exists():
        time.sleep(0.01)
    init(worker_id)


@pytest.mark.skipif(not hasattr(__import__("signal"), "sigwaitinfo"),
                    reason="a worker can tell who sent it SIGTERM only where there is sigwaitinfo (Linux)")
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_data_loader_workers_ignore_sigterm_from_another_process_from_their_start(tmp_path, method):
    """``timeout``, a batch system's time limit and ``systemctl stop`` send SIGTERM to every
    process of ``train --num-workers N``. A worker so signalled was ended by it, and torch raised
    "DataLoader worker ... exited unexpectedly" in the training process, which failed instead of
    stopping as on Ctrl-C. Filtering the signal in the worker's init left a window: a worker
    signalled before its init ran (each epoch starts new ones) still died. The workers now start
    with SIGTERM blocked, so one signalled before its init keeps the signal for the init to drop.
    The signal is sent here while the workers wait, before their init, for the test to go on."""
    import functools
    import os
    import signal
    import subprocess
    import sys

    from napari_prm.train import _batches, _data_loader, _start_workers

    flag = tmp_path / "go"
    # (the start method: Python 3.14's default on Linux is forkserver, and spawn elsewhere)
    loader = _data_loader(list(range(40)), batch_size=1, num_workers=2, multiprocessing_context=method)
    loader.worker_init_fn = functools.partial(_start_after, str(flag), loader.worker_init_fn)
    iterator = _start_workers(loader)
    workers = list(iterator._workers)
    # another process signals the workers (not the training process, whose SIGTERM ends them)
    # SIGHUP too: the terminal closed (the command line stops on it as on SIGTERM)
    subprocess.run([sys.executable, "-c", "import os, signal, sys\n"
                    "for pid in sys.argv[1:]: os.kill(int(pid), signal.SIGTERM); os.kill(int(pid), signal.SIGHUP)",
                    *(str(w.pid) for w in workers)], check=True)
    flag.touch()
    assert sorted(int(batch) for batch in iterator) == list(range(40))
    assert all(w.exitcode is None or w.exitcode == 0 for w in workers)

    # the training process's SIGTERM (torch's, ending a worker that does not stop) still ends one
    batches = _batches(loader)
    next(batches)
    worker = batches.gi_frame.f_locals["iterator"]._workers[0]
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=30)
    assert worker.exitcode == 0
    batches.close()


class _ReportsLikeTheResourceSharer(torch.utils.data.Dataset):
    """Each item reports an error as multiprocessing's resource sharer does in a worker: by
    ``sys.excepthook``, from the thread that hands a batch's memory over to the parent."""

    def __init__(self, errors):
        self.errors = errors

    def __len__(self):
        return len(self.errors)

    def __getitem__(self, index):
        import sys

        try:
            raise self.errors[index]
        except Exception:
            sys.excepthook(*sys.exc_info())
        return index


def test_data_loader_workers_do_not_report_a_hand_over_their_stopping_parent_broke_off(capfd):
    """Ctrl-C or SIGTERM while ``train --num-workers N`` took a batch from a worker broke off
    the batch's hand-over, and the worker printed a ConnectionResetError's traceback under the
    run's "interrupted: ... keeps epoch N" line. A worker now reports other errors only."""
    from napari_prm.train import _batches, _data_loader

    errors = [ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe"),
              EOFError(), ValueError("a real error")]
    loader = _data_loader(_ReportsLikeTheResourceSharer(errors), batch_size=1, num_workers=1)
    assert [int(batch) for batch in _batches(loader)] == [0, 1, 2, 3]
    err = capfd.readouterr().err
    assert "ValueError: a real error" in err
    assert "ConnectionResetError" not in err and "BrokenPipeError" not in err and "EOFError" not in err


def test_fine_tuning_without_input_size_keeps_the_starting_models_size(full_run, squares, tmp_path):
    """``train(model=...)`` without ``input_size`` trained at 448×448 and wrote that size into the
    fine-tuned model, not the 48×48 the starting model was trained and calibrated at. It keeps the
    starting model's size (448×448 for one without a size); a given ``input_size`` still wins."""
    settings = dict(SETTINGS, epochs=1, calibrate=False)
    del settings["input_size"]
    base = full_run[0].checkpoint
    assert load_model(base).input_size == (48, 48)
    result = train(squares, model=base, out=tmp_path / "tuned.pt", **settings)
    assert result.model.input_size == (48, 48) and load_model(result.checkpoint).input_size == (48, 48)
    assert load_checkpoint(result.checkpoint)[1][TRAINING_STATE_KEY]["config"]["input_size"] == [48, 48]
    result = train(squares, model=base, out=tmp_path / "sized.pt", input_size=(32, 64), **settings)
    assert load_model(result.checkpoint).input_size == (32, 64)
    sizeless = build_model("tiny", squares.class_names, pretrained=False, input_size=None)
    result = train(squares, model=sizeless, out=tmp_path / "sizeless.pt", **dict(settings, batch_size=24))
    assert result.model.input_size == (448, 448)


@pytest.mark.skipif(not hasattr(__import__("signal"), "sigtimedwait"),
                    reason="a worker watches its parent where there is sigtimedwait (Linux)")
def test_data_loader_workers_end_once_their_training_process_is_killed(tmp_path):
    """Under forkserver (Python 3.14's default on Linux) a worker's parent is the server, so
    torch's watchdog did not see the training process killed (SIGKILL, the OOM killer), and the
    workers, ignoring SIGTERM from others, stayed; they now end within seconds of it."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    def running(worker) -> bool:
        try:
            return worker.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    script = ("import sys, time\n"
              "from napari_prm.train import _data_loader, _start_workers\n"
              "loader = _data_loader(list(range(10**6)), batch_size=1, num_workers=2, "
              "multiprocessing_context='forkserver')\n"
              "iterator = _start_workers(loader)\n"
              "next(iterator)\n"
              "print(*(w.pid for w in iterator._workers), flush=True)\n"
              "time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = [psutil.Process(int(pid)) for pid in process.stdout.readline().split()]
        assert len(workers) == 2
        process.kill()
        process.wait()
        deadline = time.monotonic() + 60
        while any(running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(running(w) for w in workers)
    finally:
        process.kill()
        for worker in workers:
            if running(worker):
                worker.kill()


def test_calibrate_refuses_a_label_that_is_no_class_of_the_model(tmp_path, capsys):
    """An image labelled 'dgo' (a typo of 'dog') was calibrated on as an image of neither cat nor
    dog, a label typo's warning aside: a false negative that biased the thresholds. It is an error
    naming the label and its CSV row, in the words of the CSV reader's own check, unless
    ``allow_other_classes`` (``--allow-other-classes``) asks for such images as negatives."""
    from napari_prm.cli import main
    from napari_prm.train import calibrate_checkpoint

    rows = ["image,labels"]
    for i, name in enumerate(("cat", "cat", "dog", "dgo", "dog", "cat;bird")):
        image = np.zeros((32, 32, 3), np.uint8)
        image[4 * i:4 * i + 8, 4:16, i % 3] = 255
        iio.imwrite(tmp_path / f"{i}.png", image)
        rows.append(f"{i}.png,{name}")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    dataset = from_csv(csv_path)
    torch.manual_seed(0)
    path = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(32, 32)),
                      tmp_path / "model.pt")
    with pytest.raises(ValueError) as error:
        calibrate_checkpoint(path, dataset, tmp_path / "out.pt", tta=False, device="cpu")
    message = str(error.value)
    assert message.startswith(f"{csv_path}: 2 images ('bird' at {csv_path}:7; 'dgo' at {csv_path}:5): unknown "
                              "class(es) ['bird', 'dgo']; expected one of ['cat', 'dog']; did you mean 'dog' for "
                              "'dgo'?")
    assert message.endswith("pass allow_other_classes=True to calibrate on such images as negatives")
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(ValueError, match=rf"^{re.escape(str(csv_path))}:5: unknown class\(es\) \['dgo'\]; expected "
                                         r"one of \['cat', 'dog'\]; did you mean 'dog'\?"):  # the reader's words
        from_csv(csv_path, classes=["cat", "dog"])
    one = from_csv(csv_path).subset([0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(csv_path))}:5: unknown class\(es\) \['dgo'\]; expected "
                                         r"one of \['cat', 'dog'\]; did you mean 'dog'\?\. Those are the classes"):
        calibrate_checkpoint(path, one, tmp_path / "out.pt", tta=False, device="cpu")

    outcome = calibrate_checkpoint(path, dataset, tmp_path / "out.pt", tta=False, device="cpu",
                                   allow_other_classes=True)
    assert outcome.calibration.images == 6  # the 'dgo' image a negative, as asked
    status = main(["calibrate", str(csv_path), "--model", str(path), "--out", str(tmp_path / "cli.pt"),
                   "--no-tta", "--device", "cpu"])
    assert status == 2 and not (tmp_path / "cli.pt").exists()
    error_line = capsys.readouterr().err.splitlines()[-1]
    assert error_line.startswith(f"napari-prm calibrate: error: {csv_path}: 2 images (")
    assert error_line.endswith("pass --allow-other-classes to calibrate on such images as negatives")
    assert main(["calibrate", str(csv_path), "--model", str(path), "--out", str(tmp_path / "cli.pt"),
                 "--no-tta", "--device", "cpu", "--allow-other-classes"]) == 0
    assert load_model(tmp_path / "cli.pt").settings["calibration"]["images"] == 6


def test_calibrate_takes_a_coco_files_other_categories_as_negatives(tmp_path):
    """A COCO JSON declares its categories: an image of one the model does not have ('bird') is
    no typo, and calibrates as an image of none of its classes without allow_other_classes (as
    ``train --classes`` took it), where a label CSV's typed 'bird' is refused."""
    import json

    from napari_prm.data import from_coco
    from napari_prm.train import calibrate_checkpoint

    names = ("cat", "dog", "bird", "cat", "dog", "bird")
    images, annotations = [], []
    for i, name in enumerate(names):
        image = np.zeros((32, 32, 3), np.uint8)
        image[4 * i:4 * i + 8, 4:16, i % 3] = 255
        iio.imwrite(tmp_path / f"{i}.png", image)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 32, "width": 32})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + ("cat", "dog", "bird").index(name),
                            "bbox": [4, 4 * i, 12, 8], "area": 96, "iscrowd": 0})
    categories = [{"id": 1 + k, "name": n} for k, n in enumerate(("cat", "dog", "bird"))]
    json_path = tmp_path / "instances.json"
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    torch.manual_seed(0)
    path = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(32, 32)),
                      tmp_path / "model.pt")
    outcome = calibrate_checkpoint(path, from_coco(json_path), tmp_path / "out.pt", tta=False, device="cpu")
    assert outcome.calibration.images == 6  # the two bird images negatives, no flag needed
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image,labels\n" + "".join(f"{i}.png,{n}\n" for i, n in enumerate(names)))
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['bird'\]"):
        calibrate_checkpoint(path, from_csv(csv_path), tmp_path / "csv.pt", tta=False, device="cpu")


def test_image_keys_take_one_path_as_one_image(tmp_path):
    """image_keys("a.png") gave a key per character (5) and a Path was not iterable; one path is one image."""
    from pathlib import Path

    from napari_prm.train import image_keys

    one = image_keys([tmp_path / "a.png"])
    assert one.shape == (1,)
    assert image_keys(str(tmp_path / "a.png")).tolist() == one.tolist() == image_keys(Path(tmp_path, "a.png")).tolist()
