"""The "Train PRM model" widget: one epoch of the tiny backbone on a tiny dataset."""

import numpy as np
import torch
from skimage import data, transform
from skimage import io as skio

from napari_prm import load_model

WAIT_MS = 300_000


def test_train_one_epoch_and_offer_the_model(make_napari_viewer, qtbot, prm_config,
                                             tiny_dataset, tmp_path, monkeypatch):
    import napari_prm._widgets.train as widget_module
    import napari_prm.train as train_module

    splits = []  # the split is made once: shown by the widget, then given to train()

    def counted(*args, **kwargs):
        splits.append(args)
        return train_module.training_split.__wrapped__(*args, **kwargs)

    counted.__wrapped__ = train_module.training_split
    monkeypatch.setattr(train_module, "training_split", counted)
    monkeypatch.setattr(widget_module, "training_split", counted)
    viewer = make_napari_viewer()
    _, predict_widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model", tabify=True)
    out = tmp_path / "trained.pt"
    quick_training(widget, tiny_dataset, out)
    progress = []
    widget._relay.progressed.connect(progress.append)
    assert widget.start() is not None
    assert widget.start() is None and "already running" in widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)

    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert [record.epoch for record in widget.result.history] == [1]
    assert np.isfinite(widget.result.history[0].loss)
    # how the 4 images are split, the batches and epoch, then the calibration of the thresholds
    # on the held-out image
    note = ("the dataset's 2 classes ('cat', 'cup') are classes of the built-in model 'imagenet-coco' "
            "(EfficientNet-Lite0): the base model 'built-in imagenet-coco' starts from its ImageNet classifier rows "
            "for them, where a new classifier learns every class from scratch; that trained to a far higher mAP^r "
            "on coco128 (docs/accuracy.md)")
    assert progress[0] == ("split", "training on 3 images, 1 held out for validation and calibration", [], note, [])
    assert [p.stage for p in progress[1:]][-1] == "calibration"
    assert {p.stage for p in progress[1:]} == {"batch", "epoch", "calibration"}
    assert "(3 training images, 1 held out)" in widget.last_message
    # thresholds chosen on one image were reported as if reliable
    assert " Warning: the thresholds were calibrated on only 1 image(s), fewer than 10" in widget.last_message
    # in the widget's words: what it offers (its fields, *Calibrate*), not the options or functions it has not
    assert ("Calibrate on more images: add images to the dataset and train again (Train holds out about a fifth of "
            "them to calibrate on), or choose a larger labelled dataset the model was not trained on (dataset file, "
            "or folder per class) and press *Calibrate* with the model as the model to calibrate; or set the "
            "thresholds by hand (the Peak Response Maps widget's class threshold and peak threshold).") \
        in widget.last_message
    assert not any(name in widget.last_message for name in ("val_fraction", "--val-fraction", "calibrate_checkpoint",
                                                            "--held-out", "napari-prm calibrate"))
    assert widget.last_message.endswith(" Note: T" + note[1:] + ".")
    assert len(splits) == 1
    assert "class_threshold" in load_model(out).settings
    assert widget._progress.value == 1
    model = load_model(out)
    assert model.class_names == ["cat", "cup"] and model.backbone == "tiny"
    # offered in the predict widget
    assert predict_widget.model.value == str(out.resolve())
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    assert predict_widget.class_list.count() == 2


def test_a_folder_of_one_image_per_class_holds_none_out_and_says_why(make_napari_viewer, qtbot, prm_config,
                                                                    tmp_path):
    """The tutorial's folder (one image per class): one image was held out, so its class had
    no training image. Now every image trains, and the widget says why none is held out."""
    root = tmp_path / "dataset"
    for name, image in (("cat", data.chelsea()), ("cup", data.coffee()), ("rocket", data.rocket())):
        (root / name).mkdir(parents=True)
        small = (transform.resize(image, (48, 48), anti_aliasing=True) * 255).astype(np.uint8)
        skio.imsave(root / name / "0.png", small, check_contrast=False)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, root, tmp_path / "trained.pt")
    progress = []
    widget._relay.progressed.connect(progress.append)
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    _, what, warnings, _, _ = progress[0]
    assert what == "training on 3 images, none held out (the thresholds are calibrated on the training images)"
    assert len(warnings) == 1
    assert warnings[0].startswith("no image is held out for validation (val_fraction asks for 1)")
    assert "(3 training images, none held out)" in widget.last_message
    assert "Warning: no image is held out" in widget.last_message


def _train_showing_status(widget, qtbot) -> list[str]:
    """Train to the end; the status line as shown when the split is said, before the first batch."""
    shown = []
    widget._relay.progressed.connect(lambda p: shown.append(widget._status.value) if isinstance(p, tuple) else None)
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    return shown


def test_the_datasets_warnings_are_shown_as_the_cli_prints_them(make_napari_viewer, qtbot, prm_config,
                                                                tiny_dataset, tmp_path):
    """A file left out of the dataset and a likely label typo: the CLI printed them, the widget
    said nothing. They are shown before training (status and a napari warning) and again at
    the end."""
    (tiny_dataset / "cup" / "notes.txt").write_text("not an image")
    (tiny_dataset / "cta").mkdir()
    (tiny_dataset / "cta" / "0.png").write_bytes((tiny_dataset / "cat" / "0.png").read_bytes())
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "trained.pt")
    shown = _train_showing_status(widget, qtbot)
    for text in (shown[0], widget.last_message):
        assert "left out 1 file that is not an image" in text and "cup/notes.txt" in text
        # one sentence each (the second ran on after the first's file names)
        assert "cup/notes.txt. Class 'cta' has 1 image" in text and "'cat'" in text


def test_a_new_model_is_told_of_the_builtin_rows_and_can_start_from_them(make_napari_viewer, qtbot, prm_config,
                                                                        tiny_dataset, tmp_path):
    """A new model for 'cat' and 'cup' learnt them from scratch without a word, and the widget could
    not start from the built-in model's ImageNet rows for them (the CLI's --model imagenet-coco).
    Now a note names that choice before training, and choosing it fine-tunes the built-in model."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "new.pt")
    shown = _train_showing_status(widget, qtbot)
    assert shown[0].startswith("Training on 3 images, 1 held out for validation and calibration. Note: The "
                               "dataset's 2 classes ('cat', 'cup') are classes of the built-in model "
                               "'imagenet-coco' (EfficientNet-Lite0): the base model 'built-in imagenet-coco' ")
    widget._base.value = "imagenet-coco"
    assert widget._base.current_choice.startswith("built-in imagenet-coco (")
    widget._out.value = tmp_path / "tuned.pt"
    widget._lr.value = 1e-6
    widget._size.value = 64  # at 32 px EfficientNet's last maps are 1x1: BatchNorm refuses a batch of one
    shown.clear()
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert shown[0] == "Training on 3 images, 1 held out for validation and calibration…"
    assert "Note:" not in widget.last_message
    model = load_model(tmp_path / "tuned.pt")
    assert model.backbone == "efficientnet_lite0" and model.class_names == ["cat", "cup"]
    builtin = load_model("imagenet-coco")
    cat = builtin.class_names.index("cat")
    assert torch.allclose(model.network.fcn.classifier.weight[0], builtin.network.fcn.classifier.weight[cat],
                          atol=1e-4)


def test_train_without_a_dataset_is_refused(make_napari_viewer, prm_config):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    assert widget.start() is None and "Choose a dataset" in widget.last_message


def test_a_dataset_file_chosen_after_a_folder_is_the_one_trained_on(make_napari_viewer, tmp_path):
    """With a folder per class chosen once (kept between sessions now), choosing a CSV file trained on
    the folder all the same, without a word. Choosing one empties the other."""
    folder, table = tmp_path / "cells", tmp_path / "cells.csv"
    (folder / "nucleus").mkdir(parents=True)
    table.write_text("image,labels\n")
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset_dir.value = folder
    assert widget._dataset_path() == folder
    widget._dataset.value = table
    assert widget._dataset_path() == table and str(widget._dataset_dir.value) == "."
    widget._dataset_dir.value = folder
    assert widget._dataset_path() == folder and str(widget._dataset.value) == "."


def test_a_folder_that_is_no_dataset_is_reported_once(make_napari_viewer, qtbot, prm_config, tmp_path):
    """An existing folder with no class folders in it fails in the worker: the widget says
    so, once, and nothing is re-raised on the Qt thread (pytest-qt fails the test if it is)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    empty = tmp_path / "not a dataset"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    widget._dataset_dir.value = empty
    widget._base.value = "tiny"
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "never.pt"
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.last_message.startswith("Training failed") and "not a dataset" in widget.last_message
    assert widget._train_button.enabled and not (tmp_path / "never.pt").exists()


def test_an_existing_output_file_is_kept(make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, capsys):
    """*Train* replaced the model at "output file" (a 10-epoch model, after one epoch); the
    file is now kept and the run saves to the next free name, shown in the field."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    earlier = tmp_path / "trained.pt"
    quick_training(widget, tiny_dataset, earlier)
    earlier.write_bytes(b"a model trained for 10 epochs")
    (tmp_path / "trained-2.pt").write_bytes(b"another one")
    widget._out.value = earlier
    capsys.readouterr()
    # trained.pt appeared since the field was set: it is checked for an unfinished run (in a
    # worker thread) first, and the run starts when that is known
    assert widget.start() is None and widget.checking
    assert widget.last_message == ("Checking whether trained.pt holds an unfinished run of the dataset; training "
                                   "starts once that is known.")
    qtbot.waitUntil(lambda: widget.running, timeout=WAIT_MS)
    # shown as a notification (the status may already say training's first message)
    assert "trained.pt exists and is kept: saving to trained-3.pt." in capsys.readouterr().out
    assert str(widget._out.value) == str(tmp_path / "trained-3.pt")
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and widget.result.checkpoint == tmp_path / "trained-3.pt", widget.last_message
    assert earlier.read_bytes() == b"a model trained for 10 epochs"
    assert (tmp_path / "trained-2.pt").read_bytes() == b"another one"
    assert load_model(tmp_path / "trained-3.pt").class_names == ["cat", "cup"]
    assert "saved " + str(tmp_path / "trained-3.pt") in widget.last_message


def quick_training(widget, dataset, out, *, batch: int = 2) -> None:
    """Set the Train widget to a run of seconds: the tiny backbone on the CPU at 32 px, 1 epoch."""
    widget._dataset_dir.value = dataset
    widget._base.value = "tiny"
    widget._epochs.value = 1
    widget._batch.value = batch
    widget._size.value = 32
    widget._device.value = "cpu"
    widget._out.value = out


def checked(widget, qtbot) -> None:
    """Wait for the Train widget's check of its output file for an unfinished run (a worker thread)."""
    qtbot.waitUntil(lambda: not widget.checking, timeout=WAIT_MS)


def start_a_long_run(viewer, qtbot, tiny_dataset, out):
    """A Train of the tiny dataset for far more epochs than the test waits for, at least two
    epochs done (each saved)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, out, batch=1)  # its epochs are start()'s
    epochs = []
    widget._relay.progressed.connect(lambda p: epochs.append(p.epoch) if getattr(p, "stage", "") == "epoch" else None)
    worker = widget.start(epochs=100_000)
    assert worker is not None, widget.last_message
    qtbot.waitUntil(lambda: len(epochs) >= 2, timeout=WAIT_MS)
    return widget, worker


def test_closing_the_widget_stops_training_like_cancel(make_napari_viewer, qtbot, prm_config,
                                                       tiny_dataset, tmp_path):
    """The dock's close button and ``remove_dock_widget`` take the widget out of its dock
    without a close event: the run trained on. It now stops as *Cancel* does, and the last
    finished epoch's checkpoint is saved and offered."""
    from napari_prm.model import load_checkpoint
    from napari_prm.train import TRAINING_STATE_KEY

    viewer = make_napari_viewer()
    _, predict_widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    out = tmp_path / "trained.pt"
    widget, worker = start_a_long_run(viewer, qtbot, tiny_dataset, out)
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: not worker.is_running and not widget.running, timeout=30_000)
    result = widget.result
    assert result.cancelled and 2 <= len(result.history) < 1000
    assert widget.last_message.startswith(f"Stopped as the widget was closed: epoch {len(result.history)},")
    # stopped before the calibration: the model offered has no thresholds of its own, and says so
    assert "its thresholds are not calibrated (class threshold 0, no peak threshold" in widget.last_message
    _, extra = load_checkpoint(out)
    assert extra[TRAINING_STATE_KEY]["epoch"] == len(result.history)
    assert predict_widget.model.value == str(out.resolve())
    assert widget._train_button.enabled and not widget._cancel_button.enabled
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)


def test_deleting_the_widget_stops_training_without_touching_its_qt_widgets(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path):
    """Its Qt widgets deleted (its window closed), the run stops; the reports that arrive
    afterwards write to no deleted widget (pytest-qt fails a test on an exception in a slot)."""
    viewer = make_napari_viewer()
    out = tmp_path / "trained.pt"
    widget, worker = start_a_long_run(viewer, qtbot, tiny_dataset, out)
    destroyed = []
    widget.native.destroyed.connect(lambda *_: destroyed.append(True))
    widget.native.deleteLater()  # in its dock: no close event, no change of parent
    qtbot.waitUntil(lambda: bool(destroyed), timeout=30_000)
    qtbot.waitUntil(lambda: not worker.is_running and not widget.running, timeout=30_000)
    qtbot.wait(50)
    assert widget.result.cancelled and widget.last_message.startswith("Stopped as the widget was closed")
    assert widget.activity is None  # its bar left the activity dock


def test_quitting_napari_stops_training_like_cancel(make_napari_viewer, qtbot, prm_config, tiny_dataset,
                                                     tmp_path):
    """Quitting napari closes its window, which asks its workers to quit, and then waits for them
    (``wait_for_workers_to_quit``): training ignored the request, running on until the widget's Qt
    widgets happened to be deleted, and the request dropped the run's result, so its end was never
    reported. The request now stops it as *Cancel* does: the last finished epoch's checkpoint is kept,
    and the run's result and message are those of a Cancel."""
    from napari.qt.threading import WorkerBase

    from napari_prm.model import load_checkpoint
    from napari_prm.train import TRAINING_STATE_KEY

    viewer = make_napari_viewer()
    out = tmp_path / "trained.pt"
    widget, worker = start_a_long_run(viewer, qtbot, tiny_dataset, out)
    viewer.close()
    WorkerBase.await_workers(WAIT_MS)  # napari's wait_for_workers_to_quit; raises if one still runs then
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    result = widget.result
    assert result is not None and result.cancelled and 2 <= len(result.history) < 1000
    assert widget.last_message.startswith(f"Stopped as the widget was closed: epoch {len(result.history)},")
    _, extra = load_checkpoint(out)
    assert extra[TRAINING_STATE_KEY]["epoch"] == len(result.history)
    assert not worker.is_running


def test_a_dataset_path_that_does_not_exist_is_named(make_napari_viewer, tmp_path):
    """A folder typed with a typo (or one since moved) said only "Choose a dataset", as if none
    had been given. The message names the path that does not exist."""
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset_dir.value = tmp_path / "celss"
    assert widget.start() is None
    assert widget.last_message == (f"Dataset: folder per class {tmp_path / 'celss'} does not exist; choose a "
                                   "folder per class, a CSV, a COCO JSON or a PASCAL VOC split list or year "
                                   "folder."), widget.last_message


def test_the_epochs_validation_and_the_thresholds_are_shown(make_napari_viewer, qtbot, prm_config, tmp_path):
    """The widget showed the batch loss only: not an epoch's validation mAP, which the command
    line prints, nor the calibrated thresholds at the end. A dataset of one class folder (no
    image without the class) trained to "Done" without a word."""
    from napari_prm.train import validation_summary

    root = tmp_path / "dataset"
    for name, image in (("cat", data.chelsea()), ("cup", data.coffee())):
        (root / name).mkdir(parents=True)
        for number in range(4):
            crop = image[number * 40:number * 40 + 200, number * 40:number * 40 + 200]
            small = (transform.resize(crop, (32, 32), anti_aliasing=True) * 255).astype(np.uint8)
            skio.imsave(root / name / f"{number}.png", small, check_contrast=False)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, root, tmp_path / "trained.pt")
    widget._epochs.value = 2
    shown = []
    widget._relay.progressed.connect(
        lambda p: shown.append(widget._status.value) if getattr(p, "stage", "") in ("epoch", "batch") else None)
    assert widget.start(val_fraction=0.5) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    result = widget.result
    assert result is not None and not result.cancelled, widget.last_message
    assert result.held_out_images == 4
    first, second = result.history
    assert not np.isnan(first.val_map)  # the 4 held-out images show both classes
    epoch_1 = f"epoch 1: loss {first.loss:.4f}, validation mAP {100 * first.val_map:.1f}% (2 classes)"
    assert validation_summary(first.val_ap) == f"validation mAP {100 * first.val_map:.1f}% (2 classes)"
    assert "E" + epoch_1[1:] + "." in shown
    # the next epoch's batches keep the finished epoch's figures in view
    assert any(text.startswith("epoch 2/2, batch 1/") and text.endswith(f"(finished {epoch_1})") for text in shown)
    c = result.calibration
    assert c.images == 4
    assert (f"Done: epoch 2, loss {second.loss:.4f}, validation mAP {100 * second.val_map:.1f}% (2 classes) "
            f"(4 training images, 4 held out); thresholds calibrated on 4 image(s): class threshold "
            f"{c.class_threshold:.3g}, peak threshold {c.peak_threshold:.3g}") in widget.last_message

    # one class folder: every image shows it
    for number in range(4):
        (root / "cup" / f"{number}.png").unlink()
    (root / "cup").rmdir()
    quick_training(widget, root, tmp_path / "cats.pt")
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert f"Warning: every image of {root} shows class(es) 'cat'" in widget.last_message
    assert "validation mAP not defined" in widget.last_message


def test_a_coco_json_whose_images_lie_in_another_folder_trains(make_napari_viewer, qtbot, prm_config,
                                                                tiny_dataset, tmp_path):
    """A COCO JSON (or CSV) whose file names are relative to another folder than its own could
    not be trained in the widget: it had no images folder (the command line's --image-dir), and
    the error said "pass their folder as image_dir"."""
    import json

    images = sorted(tiny_dataset.rglob("*.png"))
    coco = {"images": [{"id": i + 1, "file_name": p.relative_to(tiny_dataset).as_posix(), "height": 48, "width": 48}
                       for i, p in enumerate(images)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1 if p.parent.name == "cat" else 2,
                             "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0} for i, p in enumerate(images)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "cup"}]}
    (tmp_path / "annotations").mkdir()
    json_path = tmp_path / "annotations" / "labels.json"
    json_path.write_text(json.dumps(coco))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "trained.pt")
    assert not widget._image_dir.enabled  # a folder per class holds its own images
    widget._dataset.value = json_path
    assert widget._image_dir.enabled and widget._dataset_path() == json_path
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.last_message.startswith("Training failed") and "do not exist" in widget.last_message
    widget._image_dir.value = tmp_path / "no such folder"
    assert widget.start() is None and widget.last_message.startswith("Images folder: ")
    widget._image_dir.value = tiny_dataset
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert load_model(tmp_path / "trained.pt").class_names == ["cat", "cup"]


def test_fine_tuning_a_checkpoint_trains_at_its_own_input_size(make_napari_viewer, qtbot, prm_config,
                                                              tiny_dataset, tmp_path):
    """Choosing a checkpoint to fine-tune left the input size field as it was (448, or the last
    session's), always passed to train(): a 32×32 model was trained and written at 448×448. The
    field now shows a square checkpoint's size; a non-square one is said and kept unless the field
    is changed."""
    from napari_prm._widgets.models import remember_model
    from napari_prm.model import build_model, save_model

    square = save_model(build_model("tiny", ["cat", "cup"], pretrained=False, input_size=(32, 32)),
                        tmp_path / "square.pt")
    oblong = save_model(build_model("tiny", ["cat", "cup"], pretrained=False, input_size=(32, 48)),
                        tmp_path / "oblong.pt")
    for path in (square, oblong):
        remember_model(path)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "a.pt", batch=1)
    widget._size.value = 64
    widget._base.reset_choices()

    def trained(out) -> tuple:
        widget._out.value = out
        checked(widget, qtbot)
        assert widget.start() is not None, widget.last_message
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
        assert widget.result is not None and not widget.result.cancelled, widget.last_message
        return load_model(out).input_size

    widget._base.value = str(square.resolve())
    assert widget._size.value == 32
    assert trained(tmp_path / "a.pt") == (32, 32)

    widget._base.value = str(oblong.resolve())
    assert widget._size.value == 32  # the field cannot show 32×48: it is left, and that is said
    note = ("The base model oblong.pt runs at 32×48 pixels, which the input size field cannot show: a new run "
            "trains at its size unless you change the field.")
    assert widget._status.value == note and note in widget._size.tooltip
    assert trained(tmp_path / "b.pt") == (32, 48)

    widget._size.value = 64  # the user's size wins
    assert trained(tmp_path / "c.pt") == (64, 64)
    widget._base.value = "tiny"  # a new model: the field is left as it is
    assert widget._size.value == 64 and note not in widget._size.tooltip and widget._status.value != note
