"""*Calibrate* in the Train widget: a checkpoint's thresholds chosen on the widget's dataset, as
``napari-prm calibrate`` chooses them, and the calibrated model offered for prediction."""

import re

import pytest
from qtpy.QtCore import Qt

from napari_prm import load_model
from napari_prm.cli import main
from napari_prm.model import build_model, save_model
from test_widget_train import WAIT_MS, quick_training


def calibrating_a_model_from_elsewhere(make_napari_viewer, tiny_dataset, tmp_path, to: str):
    """A viewer with the Train widget (after a quick training, so its dataset is set) whose *Calibrate*
    is set to a checkpoint of classes cat and cup made elsewhere (no training state), written as ``to``
    ("in place" or "new"): the viewer, the widget and the checkpoint's path."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "unused.pt")
    elsewhere = tmp_path / "elsewhere.pt"
    save_model(build_model("tiny", ["cat", "cup"], pretrained=False, input_size=(32, 32)), elsewhere)
    widget._calibrate_model.value = elsewhere
    widget._calibrate_to.value = to
    return viewer, widget, elsewhere


def calibrate_to_end(widget, qtbot):
    assert widget.calibrate() is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    return widget.calibrated


def assert_calibrate_chooses(model, arguments, out):
    """``napari-prm calibrate`` with ``arguments`` (the dataset, --model) into ``out`` stores the
    thresholds of ``model``, with and without test-time augmentation."""
    assert main(["calibrate", *arguments, "--out", str(out), "--device", "cpu"]) == 0
    by_cli = load_model(out).settings
    for settings, mine in ((by_cli, model.settings), (by_cli["tta_calibration"], model.settings["tta_calibration"])):
        for name in ("class_threshold", "peak_threshold"):
            assert settings[name] == pytest.approx(mine[name])


def test_calibrate_a_trained_model_on_its_held_out_images(make_napari_viewer, qtbot, prm_config,
                                                          tiny_dataset, tmp_path):
    """A run that did not calibrate (cancelled, or --no-calibrate) had to leave napari for
    'napari-prm calibrate'. *Calibrate* chooses the thresholds on the images its run held out, as
    ``calibrate --held-out`` does (the same thresholds), writes them to a new file (the trained one
    is kept) and offers it in the Peak Response Maps widget."""
    viewer = make_napari_viewer()
    _, predict_widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model", tabify=True)
    out = tmp_path / "trained.pt"
    quick_training(widget, tiny_dataset, out)
    assert widget.start(calibrate=False) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert "its thresholds are not calibrated (class threshold 0, no peak threshold until *Calibrate* below " \
           "chooses them on the dataset)" in widget.last_message
    assert "class_threshold" not in load_model(out).settings
    assert str(widget._calibrate_model.value) == str(out)  # the model just trained is the one to calibrate
    trained = out.read_bytes()

    stages = []
    widget._relay.progressed.connect(lambda p: stages.append(p[1]) if p[0] == "calibrate" else None)
    outcome = calibrate_to_end(widget, qtbot)
    assert outcome is not None, widget.last_message
    written = tmp_path / "trained-calibrated.pt"
    assert outcome.checkpoint == written and out.read_bytes() == trained
    assert outcome.held_out and outcome.calibration.images == 1  # 4 images, 1 held out by train
    assert stages == ["image", "with test-time augmentation"]
    model = load_model(written)
    assert model.settings["class_threshold"] == pytest.approx(outcome.calibration.class_threshold)
    assert model.settings["peak_threshold"] == pytest.approx(outcome.calibration.peak_threshold)
    assert model.settings["tta_calibration"]["class_threshold"] == pytest.approx(
        outcome.tta_calibration.class_threshold)
    assert widget.last_message.startswith("Calibrated on the images train held out: thresholds calibrated on 1 "
                                          f"image(s): class threshold {outcome.calibration.class_threshold:.3g}")
    assert f"Saved {written}; it is offered in the Peak Response Maps widget." in widget.last_message
    # the warnings are sentences: they ran on as "... include some without them. the thresholds were ..."
    assert "include some without them. The thresholds were calibrated on only 1 image(s)" in widget.last_message
    assert "press *Calibrate* with the model" in widget.last_message  # the widget's wording: no --val-fraction
    assert "val_fraction" not in widget.last_message and "calibrate_checkpoint" not in widget.last_message
    assert re.search(r"\.\. |\. [a-z]", widget.last_message) is None, widget.last_message
    assert predict_widget.model.value == str(written.resolve())
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    assert predict_widget.class_threshold.value == pytest.approx(outcome.calibration.class_threshold, abs=1e-6)

    # the command line's calibrate --held-out chooses the same thresholds
    assert_calibrate_chooses(model, [str(tiny_dataset), "--model", str(out), "--held-out"], tmp_path / "cli.pt")

    # again: the next free name, never the file written before
    assert calibrate_to_end(widget, qtbot).checkpoint == tmp_path / "trained-calibrated-2.pt"


def test_a_model_not_trained_on_the_dataset_calibrates_on_every_image_in_place(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path):
    """A checkpoint from elsewhere (no training state) calibrates on every image of the dataset, as
    ``calibrate`` without --held-out; "the checkpoint itself" updates it in place. A model of other
    classes is refused, naming them; *Cancel* stops it and writes nothing."""
    from napari_prm._widgets.settings import load_settings
    from napari_prm._widgets.train import TrainSettings

    viewer, widget, elsewhere = calibrating_a_model_from_elsewhere(make_napari_viewer, tiny_dataset, tmp_path,
                                                                   "in place")
    assert load_settings("train", TrainSettings).calibrate_model == str(elsewhere)  # kept for the next session
    outcome = calibrate_to_end(widget, qtbot)
    assert outcome is not None, widget.last_message
    assert outcome.checkpoint == elsewhere and not outcome.held_out and outcome.calibration.images == 4
    assert widget.last_message.startswith("Calibrated on every image of the dataset:")
    assert load_model(elsewhere).settings["class_threshold"] == pytest.approx(outcome.calibration.class_threshold)

    # cancelled after its first image: nothing written
    widget._calibrate_to.value = "new"

    def stop(progress):
        if progress[0] == "calibrate":
            widget._cancel.set()

    widget._relay.progressed.connect(stop, Qt.ConnectionType.DirectConnection)
    assert calibrate_to_end(widget, qtbot) is None
    widget._relay.progressed.disconnect(stop)
    assert widget.last_message == "Cancelled while calibrating: nothing was written."
    assert not (tmp_path / "elsewhere-calibrated.pt").exists()

    dogs = tmp_path / "dogs.pt"
    save_model(build_model("tiny", ["dog"], pretrained=False, input_size=(32, 32)), dogs)
    widget._calibrate_model.value = dogs
    assert calibrate_to_end(widget, qtbot) is None
    assert widget.last_message.startswith("Calibration failed: ValueError: the dataset does not have the model's "
                                          "classes:") and "dog" in widget.last_message
    widget._calibrate_model.value = tmp_path / "missing.pt"
    assert widget.calibrate() is None
    assert widget.last_message == (f"Choose the model to calibrate: a checkpoint file (.pt, .safetensors) or a "
                                   f"built-in model (imagenet, imagenet-voc, imagenet-coco); {tmp_path / 'missing.pt'} "
                                   "is not a file.")


def test_writing_into_the_checkpoint_itself_is_not_kept_for_the_next_session(make_napari_viewer, prm_config,
                                                                              tmp_path):
    """"The checkpoint itself" chosen for one checkpoint must not apply to another (the model just
    trained) in a later session: a new widget starts on "a new file", also after a session of an
    earlier version that saved the choice; the model to calibrate is kept."""
    import json

    from napari_prm._widgets.settings import settings_path

    model = tmp_path / "elsewhere.pt"
    save_model(build_model("tiny", ["cat", "cup"], pretrained=False, input_size=(32, 32)), model)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    assert widget._calibrate_to.value == "new"
    widget._calibrate_model.value = model
    widget._calibrate_to.value = "in place"
    saved = json.loads(settings_path("train").read_text(encoding="utf-8"))
    assert saved["calibrate_model"] == str(model) and "calibrate_to" not in saved

    saved["calibrate_to"] = "in place"  # as an earlier version saved it
    settings_path("train").write_text(json.dumps(saved), encoding="utf-8")
    _, again = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    assert again._calibrate_to.value == "new"
    assert str(again._calibrate_model.value) == str(model)


def test_calibrate_a_builtin_model_into_a_new_file_beside_the_output(make_napari_viewer, qtbot, prm_config,
                                                                    tmp_path):
    """*Calibrate* took checkpoint files only: a built-in model ("imagenet-voc") was "not a file",
    where ``napari-prm calibrate --model imagenet-voc --out`` calibrates it. Its name is now taken:
    the calibrated model goes to ``<name>-calibrated.pt`` beside the output file (never "the
    checkpoint itself", which is refused), with the thresholds ``calibrate`` chooses."""
    import imageio.v3 as iio
    from skimage import data
    from skimage.transform import rescale

    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        small = rescale(getattr(data, name)(), 0.5, channel_axis=-1, preserve_range=True, anti_aliasing=True)
        iio.imwrite(folder / f"{name}.png", small.round().astype("uint8"))
    builtin = load_model("imagenet-voc")
    others = ";".join(c for c in builtin.class_names if c != "cat")  # every class of the model is needed
    (folder / "labels.csv").write_text(f"image,labels\nchelsea.png,cat\ncoffee.png,{others}\nrocket.png,\n")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset.value = folder / "labels.csv"
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "models" / "prm_model.pt"
    widget._calibrate_model.line_edit.value = "imagenet-voc"  # typed (its value would make it a path)
    widget._calibrate_to.value = "in place"
    assert widget.calibrate() is None
    assert widget.last_message == ("imagenet-voc is a built-in model, which cannot be replaced: write the calibrated "
                                   "model to a new file.")
    widget._calibrate_to.value = "new"
    outcome = calibrate_to_end(widget, qtbot)
    assert outcome is not None, widget.last_message
    written = tmp_path / "models" / "imagenet-voc-calibrated.pt"  # the folder is made
    assert outcome.checkpoint == written and not outcome.held_out and outcome.calibration.images == 3
    model = load_model(written)
    assert model.class_names == builtin.class_names
    assert model.settings["class_threshold"] == pytest.approx(outcome.calibration.class_threshold)
    assert model.settings["class_threshold"] != pytest.approx(builtin.settings["class_threshold"])
    assert model.settings["calibration"]["held_out"] is False
    assert widget.last_message.startswith("Calibrated on every image of the dataset: thresholds calibrated on 3 ")

    # the command line chooses the same thresholds
    assert_calibrate_chooses(model, [str(folder / "labels.csv"), "--model", "imagenet-voc"], tmp_path / "cli.pt")


def test_a_checkpoint_named_without_a_suffix_calibrates_into_a_new_pt_file(make_napari_viewer, qtbot, prm_config,
                                                                          tiny_dataset, tmp_path):
    """A checkpoint renamed without its suffix (``mymodel``), which `load_model` reads by its content,
    was calibrated into "a new file" named ``mymodel-calibrated``, and *Calibrate* failed with
    "out: expected a file ending in .pt or .pth or .safetensors". The new file is now
    ``mymodel-calibrated.pt`` (the whole name kept: ``model.ckpt`` gives ``model.ckpt-calibrated.pt``),
    with the thresholds ``calibrate`` chooses; the original is left as it was."""
    from napari_prm._widgets.calibrate import calibrated_path

    saved = save_model(build_model("tiny", ["cat", "cup"], pretrained=False, input_size=(32, 32)),
                       tmp_path / "mymodel.pt")
    mine = saved.rename(tmp_path / "mymodel")
    before = mine.read_bytes()
    assert load_model(mine).class_names == ["cat", "cup"]  # read by its content
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "unused.pt")
    widget._calibrate_model.value = mine
    assert widget._calibrate_to.value == "new"
    outcome = calibrate_to_end(widget, qtbot)
    assert outcome is not None, widget.last_message
    written = tmp_path / "mymodel-calibrated.pt"
    assert outcome.checkpoint == written and outcome.calibration.images == 4
    model = load_model(written)
    assert model.settings["class_threshold"] == pytest.approx(outcome.calibration.class_threshold)
    assert mine.read_bytes() == before
    assert_calibrate_chooses(model, [str(tiny_dataset), "--model", str(mine)], tmp_path / "cli.pt")
    # the next free name, and the suffixes a checkpoint is saved with kept, in any case
    assert calibrated_path(mine, "new", tmp_path) == tmp_path / "mymodel-calibrated-2.pt"
    assert calibrated_path(tmp_path / "model.ckpt", "new", tmp_path) == tmp_path / "model.ckpt-calibrated.pt"
    assert calibrated_path(tmp_path / "m.PTH", "new", tmp_path) == tmp_path / "m-calibrated.PTH"
    assert calibrated_path(tmp_path / "m.safetensors", "new", tmp_path) == tmp_path / "m-calibrated.safetensors"
    assert calibrated_path(mine, "in place", tmp_path) == mine


def test_closing_napari_stops_calibration_like_cancel(make_napari_viewer, qtbot, prm_config, tiny_dataset,
                                                      tmp_path):
    """Closing (or quitting) napari asks its workers to quit: *Calibrate* ignored that and calibrated to
    the end, writing the calibrated model, while the widget's Qt widgets were not yet deleted (napari
    deletes them later, or not before it waits for its workers when it quits). It now stops as *Cancel*
    does: nothing is written, and the message says why."""
    import threading

    from napari.qt.threading import WorkerBase

    viewer, widget, elsewhere = calibrating_a_model_from_elsewhere(make_napari_viewer, tiny_dataset, tmp_path,
                                                                   "new")
    window = viewer.window._qt_window  # held: its Qt widgets are deleted later, as when napari quits
    held, gate = threading.Event(), threading.Event()

    def hold(progress):  # in the worker, after its first image
        if progress[0] == "calibrate" and not held.is_set():
            held.set()
            assert gate.wait(30), "the test never let calibration go on"

    widget._relay.progressed.connect(hold, Qt.ConnectionType.DirectConnection)
    try:
        worker = widget.calibrate()
        assert worker is not None, widget.last_message
        qtbot.waitUntil(held.is_set, timeout=WAIT_MS)
        viewer.close()
    finally:
        gate.set()
    WorkerBase.await_workers(WAIT_MS)  # as napari does when it quits (raises if a worker still runs)
    qtbot.waitUntil(lambda: not worker.is_running and not widget.running, timeout=WAIT_MS)
    assert widget.last_message == "Stopped as the widget was closed while calibrating: nothing was written."
    assert widget.calibrated is None and not (tmp_path / "elsewhere-calibrated.pt").exists()
    del window


def test_a_label_of_no_class_of_the_model_stops_calibrate_unless_ticked(make_napari_viewer, qtbot, prm_config,
                                                                          tiny_dataset, tmp_path):
    """The dataset's 'cup' images were calibrated on as negatives of a model of 'cat' alone, without a
    word: *Calibrate* stops, naming the label and its images, unless 'images of other classes are
    negatives' is ticked (`calibrate_checkpoint`'s ``allow_other_classes``)."""
    viewer, widget, _ = calibrating_a_model_from_elsewhere(make_napari_viewer, tiny_dataset, tmp_path, "new")
    cats = tmp_path / "cats.pt"
    save_model(build_model("tiny", ["cat"], pretrained=False, input_size=(32, 32)), cats)
    widget._calibrate_model.value = cats
    assert widget._calibrate_other.value is False
    assert calibrate_to_end(widget, qtbot) is None
    message = widget.last_message
    assert message.startswith(f"Calibration failed: ValueError: {tiny_dataset}: 2 images ('cup' at "
                              f"{tiny_dataset / 'cup' / '0.png'}, {tiny_dataset / 'cup' / '1.png'}): unknown "
                              "class(es) ['cup']; expected one of ['cat']"), message
    assert message.endswith("tick 'images of other classes are negatives' to calibrate on such images as negatives")
    assert not (tmp_path / "cats-calibrated.pt").exists()
    widget._calibrate_other.value = True
    outcome = calibrate_to_end(widget, qtbot)
    assert outcome is not None, widget.last_message
    assert outcome.checkpoint == tmp_path / "cats-calibrated.pt" and outcome.calibration.images == 4
