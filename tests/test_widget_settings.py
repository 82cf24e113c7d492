"""The predict widget's settings kept between sessions, "Restore defaults", and its progress
bars in napari's activity dock (with their cancel button)."""

import json
from pathlib import Path

import numpy as np
import pytest
from napari.utils.progress import progress

from napari_prm._widgets.predict import WidgetSettings, upgrade_saved_settings
from napari_prm._widgets.settings import load_settings, settings_path
from napari_prm.model.checkpoint import builtin_calibration
from test_widget_predict import open_predict, run_and_wait


def test_choices_come_back_in_a_new_session(make_napari_viewer, qtbot, prm_config,
                                            tiny_checkpoint):
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.planes.value = "all planes"
    widget.peak_threshold.value = 2.5
    widget.class_threshold.value = -1.25  # the user's, not the model's own
    widget.preset.value = "original"
    widget.proposals.value = "prm"
    widget.show_text.value = True
    saved = json.loads(settings_path("predict").read_text())
    assert saved["peak_threshold"] == 2.5 and saved["proposals"] == "PRM-guided"
    assert saved["class_threshold"] == -1.25 and saved["model"].startswith("tiny.pt")
    assert saved["preset"].startswith("original")
    viewer.close()

    again = open_predict(make_napari_viewer(), qtbot)  # a new session, same config folder
    assert again.model.value == str(tiny_checkpoint.resolve())
    assert again.planes.value == "all planes" and again.proposals.value == "prm"
    assert again.preset.value == "original"
    assert again.peak_threshold.value == 2.5 and again._settings()["peak_threshold"] == 2.5
    assert again.show_text.value
    assert again.class_threshold.value == -1.25
    assert again._settings()["class_threshold"] == -1.25  # used by runs, not the model's 0

    again.restore_defaults_button.click()
    defaults = WidgetSettings()
    assert again.model.value == "imagenet-voc" and again.planes.value == defaults.planes
    assert again.proposals.value == "auto" and again.preset.value == "default"
    assert not again.show_text.value
    qtbot.waitUntil(lambda: again.classes_loaded, timeout=60_000)
    calibrated = builtin_calibration()["imagenet-voc"]  # the built-in model's own again
    assert again.class_threshold.value == pytest.approx(calibrated["class_threshold"])
    assert again.peak_threshold.value == pytest.approx(calibrated["peak_threshold"])
    assert again._settings()["class_threshold"] is None and again._settings()["peak_threshold"] is None
    assert load_settings("predict", WidgetSettings) == WidgetSettings(
        model=defaults.model, device=again.device.value)


def test_unusable_saved_settings_fall_back_to_defaults(prm_config):
    prm_config.mkdir(parents=True)
    settings_path("predict").write_text(json.dumps({
        "peak_threshold": "high", "show_text": 1, "planes": "all planes", "unknown": 3}))
    settings = load_settings("predict", WidgetSettings)
    assert settings == WidgetSettings(planes="all planes")
    settings_path("predict").write_text("{not json")
    assert load_settings("predict", WidgetSettings) == WidgetSettings()


def test_settings_files_of_earlier_versions_are_read(make_napari_viewer, qtbot, prm_config, tiny_checkpoint):
    """Before presets, a peak threshold was used only when its box was ticked."""
    prm_config.mkdir(parents=True)
    old = {"planes": "all planes", "model": "imagenet (built-in EfficientNet-Lite0)", "class_threshold": None,
           "use_peak_threshold": False, "peak_threshold": 0.0, "proposals": "PRM-guided",
           "device": "cpu", "show_text": True, "add_crms": False}
    settings_path("predict").write_text(json.dumps(old))
    settings = load_settings("predict", WidgetSettings, upgrade=upgrade_saved_settings)
    assert settings == WidgetSettings(planes="all planes", model=old["model"], proposals="PRM-guided",
                                      device="cpu", show_text=True)  # unticked: the model's own
    settings_path("predict").write_text(json.dumps({**old, "use_peak_threshold": True, "peak_threshold": 2.5}))
    assert load_settings("predict", WidgetSettings, upgrade=upgrade_saved_settings).peak_threshold == 2.5
    widget = open_predict(make_napari_viewer(), qtbot)
    assert widget.model.value == "imagenet-voc"  # the old built-in label is gone: the default
    assert widget.planes.value == "all planes" and widget.proposals.value == "prm"
    assert widget.peak_threshold.value == 2.5 and widget._settings()["peak_threshold"] == 2.5


def test_a_run_shows_a_progress_bar_in_the_activity_dock(make_napari_viewer, qtbot, prm_config,
                                                         tiny_checkpoint, small_cat, monkeypatch):
    from napari_prm._widgets.activity import ActivityProgress

    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    calls, reports, bars = [], [], []
    update = ActivityProgress.update

    def recording_update(activity, stage, done, total):
        calls.append((activity.description, stage, done, total))
        update(activity, stage, done, total)
        bars.append(activity.bar)

    monkeypatch.setattr(ActivityProgress, "update", recording_update)
    widget.progressed.connect(lambda stage, done, total: reports.append((stage, done, total)))
    run_and_wait(widget, qtbot)
    assert {"forward", "backprop"} <= {stage for stage, _, _ in reports}
    # napari's bar processes events while it redraws: reports may nest, so compare as sets
    assert sorted(calls) == sorted(("Peak Response Maps: cat", *report) for report in reports)
    (bar,) = set(bars)
    last_total = reports[-1][2]
    assert bar.desc.startswith("Peak Response Maps: cat: ")
    assert bar.total == max(last_total, 1) and widget.activity is None
    assert not [b for b in progress._all_instances if "Peak Response Maps" in str(b.desc)]


def test_the_activity_dock_cancel_button_stops_a_run(make_napari_viewer, qtbot, prm_config,
                                                     tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8), name="noise")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.progressed.connect(lambda stage, done, total: (
        widget.activity.bar.cancel() if stage == "backprop" and done == 1 else None))
    worker = widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert worker is not None and "Cancelled" in widget.last_message
    assert "noise peaks" not in viewer.layers


def test_training_shows_batches_in_the_activity_dock_and_cancels_there(
        make_napari_viewer, qtbot, prm_config, tmp_path, monkeypatch):
    from skimage import data, transform
    from skimage import io as skio

    from napari_prm._widgets.activity import ActivityProgress

    for name, image in (("cat", data.chelsea()), ("cup", data.coffee())):
        (tmp_path / "dataset" / name).mkdir(parents=True)
        for number in range(2):
            small = (transform.resize(image, (32, 32)) * 255).astype(np.uint8)
            skio.imsave(tmp_path / "dataset" / name / f"{number}.png", small, check_contrast=False)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset_dir.value = tmp_path / "dataset"
    widget._base.value = "tiny"
    widget._size.value = 32
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "model.pt"
    calls, reports, closed_at = [], [], []
    update, close = ActivityProgress.update, ActivityProgress.close

    def recording_update(activity, stage, done, total):
        calls.append((stage, done, total))
        update(activity, stage, done, total)

    def recording_close(activity):
        closed_at.append((activity.bar.n, activity.bar.total))
        close(activity)

    # napari's bar processes Qt events while it redraws, so reports may be handled nested,
    # in another order than the test's own slot sees them: compare them as sets.
    monkeypatch.setattr(ActivityProgress, "update", recording_update)
    monkeypatch.setattr(ActivityProgress, "close", recording_close)
    widget._relay.progressed.connect(reports.append)
    # 4 images, none held out, no calibration: 4 batches per epoch, 8 in all
    widget.start(epochs=2, batch_size=1, val_fraction=0.0, calibrate=False)
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    # the first report says the split (a tuple); then one per batch and one per epoch
    assert isinstance(reports[0], tuple) and reports[0][0] == "split"
    reports = [r for r in reports if not isinstance(r, tuple)]
    assert len(reports) > 8
    assert sorted(calls) == sorted((f"epoch {r.epoch}/2", (r.epoch - 1) * 4 + r.batch, 8)
                                   for r in reports)
    assert closed_at == [(8, 8)] and widget.activity is None
    assert not [bar for bar in progress._all_instances if "Train PRM model" in str(bar.desc)]

    widget._relay.progressed.connect(
        lambda report: None if isinstance(report, tuple) else widget.activity.bar.cancel())
    qtbot.waitUntil(lambda: not widget.checking, timeout=120_000)  # model.pt checked for an unfinished run
    widget.start(epochs=2, batch_size=1, resume=None, val_fraction=0.0, calibrate=False)
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.result.cancelled or widget.result.checkpoint is None, widget.last_message
    assert "Cancelled" in widget.last_message


def test_export_and_train_choices_come_back_in_a_new_session(make_napari_viewer, prm_config, tmp_path):
    """The Export widget's folder was the home folder again in every session (and its formats the
    defaults), and the Train widget forgot its dataset, epochs, learning rate and output. They are
    kept now, as the predict widget's choices are; a dataset that has gone is not put back."""
    def open_both(viewer):
        return (viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")[1],
                viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")[1])

    exports, dataset = tmp_path / "exports", tmp_path / "cells"
    exports.mkdir()
    (dataset / "nucleus").mkdir(parents=True)
    export, train = open_both(make_napari_viewer())
    export._folder.value = exports
    export._formats["png"].value, export._formats["coco"].value = True, False
    export._overwrite.value = True  # asked for each time: not kept
    train._dataset_dir.value = dataset
    train._base.value = "tiny"
    train._epochs.value, train._lr.value, train._batch.value, train._size.value = 40, 0.003, 4, 224
    train._out.value = tmp_path / "nuclei.pt"
    assert json.loads(settings_path("export").read_text())["folder"] == str(exports)

    export, train = open_both(make_napari_viewer())  # a new session, same config folder
    assert export._folder.value == exports and not export._overwrite.value
    assert {key: box.value for key, box in export._formats.items()} == {
        "tiff": True, "png": True, "coco": False, "csv": True}
    assert train._dataset_dir.value == dataset and train._base.value == "tiny"
    assert (train._epochs.value, train._lr.value, train._batch.value, train._size.value) == (40, 0.003, 4, 224)
    assert train._out.value == tmp_path / "nuclei.pt"

    (dataset / "nucleus").rmdir()
    dataset.rmdir()
    exports.rmdir()
    export, train = open_both(make_napari_viewer())
    assert export._folder.value == Path.home() and train._epochs.value == 40
    assert str(train._dataset_dir.value) in ("", ".")


def test_learn_choices_come_back_and_export_follows_the_labels_layer_selected(make_napari_viewer, tmp_path):
    """*Learn from corrections* forgot its epochs and output file between sessions; the Export
    widget exported the first Labels layer of the list whatever layer was selected (after a Run
    that kept corrections, the hidden copy could be the one written)."""
    viewer = make_napari_viewer()
    _, learn = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    learn._epochs.value = 60
    learn._out.value = tmp_path / "nuclei_refined.pt"
    _, learn = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    assert learn._epochs.value == 60 and learn._out.value == tmp_path / "nuclei_refined.pt"

    labels = np.zeros((30, 40), np.uint16)
    labels[5:15, 5:20] = 1
    first = viewer.add_labels(labels, name="a instances")
    second = viewer.add_labels(labels * 2, name="b instances")
    _, export = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    assert export._layer.value is second  # selected: added last
    viewer.layers.selection.active = first
    assert export._layer.value is first and export._stem.value == "a"
    viewer.add_image(np.zeros((30, 40), np.float32), name="c")  # an image selected: no change
    assert export._layer.value is first
    third = viewer.add_labels(labels * 3, name="c instances")
    assert export._layer.value is third and export._stem.value == "c"


def test_two_export_widgets_open_at_once_each_keep_what_was_changed_in_them(make_napari_viewer, tmp_path):
    """Two napari windows, an Export widget in each: a format ticked in the second saved that
    widget's whole form, so the folder chosen in the first was lost for the next session. What is
    kept is now each field as it was last changed, in whichever window."""
    exports = tmp_path / "exports"
    exports.mkdir()
    first = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Export instances")[1]
    second = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Export instances")[1]
    first._folder.value = exports
    second._formats["png"].value = True
    reopened = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Export instances")[1]
    assert reopened._folder.value == exports and reopened._formats["png"].value
    assert json.loads(settings_path("export").read_text())["folder"] == str(exports)


def test_a_builtin_model_typed_to_calibrate_comes_back_in_a_new_session(make_napari_viewer, prm_config, tmp_path,
                                                                       monkeypatch):
    """The Train widget's *model to calibrate* takes a built-in model's name typed in
    (``imagenet-voc``), but a new session dropped it (not a file here), or, with a file of that
    name in the current folder, put back that file's absolute path (a FileEdit makes its value
    absolute). The name now comes back as typed, and still means the built-in model; that file,
    typed as ``./imagenet-voc``, still comes back as its path."""
    def open_train():
        return make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Train PRM model")[1]

    monkeypatch.chdir(tmp_path)
    train = open_train()
    train._calibrate_model.line_edit.value = "imagenet-voc"
    assert json.loads(settings_path("train").read_text())["calibrate_model"] == "imagenet-voc"

    for file_here in (False, True):
        if file_here:
            (tmp_path / "imagenet-voc").write_bytes(b"not the built-in model")
        train = open_train()  # a new session, same config folder
        assert train._calibrate_model.line_edit.value == "imagenet-voc"
        train._calibrate_to.value = "in place"
        assert train.calibrate() is None
        assert train.last_message == ("imagenet-voc is a built-in model, which cannot be replaced: write the "
                                      "calibrated model to a new file.")

    train._calibrate_model.line_edit.value = "./imagenet-voc"  # the file
    assert json.loads(settings_path("train").read_text())["calibrate_model"] == str(tmp_path / "imagenet-voc")
    assert open_train()._calibrate_model.value == tmp_path / "imagenet-voc"


def test_a_path_typed_from_the_home_folder_comes_back_in_a_new_session(make_napari_viewer, prm_config, tmp_path,
                                                                       monkeypatch):
    """A path typed as ``~/labels.csv`` was saved as ``<current folder>/~/labels.csv`` (made
    absolute without expanding ``~``, as the FileEdit itself does), which a new session dropped
    as gone; it is saved as the file in the home folder."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    (home / "labels.csv").write_text("image,labels\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)

    def open_train():
        return make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Train PRM model")[1]

    train = open_train()
    train._dataset.line_edit.value = "~/labels.csv"
    train._out.line_edit.value = "~/model.pt"
    saved = json.loads(settings_path("train").read_text())
    assert (saved["dataset"], saved["out"]) == (str(home / "labels.csv"), str(home / "model.pt"))
    reopened = open_train()
    assert (reopened._dataset.value, reopened._out.value) == (home / "labels.csv", home / "model.pt")


def test_a_threshold_edited_while_the_chosen_model_loads_is_kept(make_napari_viewer, qtbot, prm_config,
                                                                 tiny_checkpoint):
    """Choosing another model shows its calibrated thresholds once it is loaded; a threshold typed
    in while it loaded was then overwritten by the model's (and the settings file forgot it). The
    user's value is kept and used; the field not edited shows the new model's."""
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot)  # the built-in imagenet-voc
    widget.select_model(str(tiny_checkpoint))
    assert not widget.classes_loaded
    widget.peak_threshold.value = 2.5
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=60_000)
    assert widget.peak_threshold.value == 2.5 and widget.peak_control.override == 2.5
    assert widget.class_control.override is None and widget.class_threshold.value == 0  # tiny's: uncalibrated
    assert json.loads(settings_path("predict").read_text())["peak_threshold"] == 2.5
    # choosing a model again shows its calibrated value in both
    widget.select_model("imagenet-voc")
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=60_000)
    calibration = builtin_calibration()["imagenet-voc"]
    assert widget.peak_control.override is None
    assert widget.peak_threshold.value == pytest.approx(calibration["peak_threshold"], abs=1e-6)


def test_a_file_that_is_no_checkpoint_is_not_remembered(make_napari_viewer, qtbot, prm_config, tmp_path):
    """Choosing a file that cannot be loaded said so, but kept it among the recent models and as the
    chosen one: every new session started on it, with the error. It is taken off the list: the next
    session starts on the default model."""
    from napari_prm._widgets.models import recent_models

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot)
    widget.checkpoint.value = str(junk)
    qtbot.waitUntil(lambda: widget._loading is None and "Cannot load the model" in widget.last_message,
                    timeout=60_000)
    assert str(junk) in widget.last_message
    assert str(junk.resolve()) not in recent_models()
    again = open_predict(make_napari_viewer(), qtbot)
    assert again.model.value == "imagenet-voc" and again.classes_loaded
