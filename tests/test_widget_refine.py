"""The "Learn from corrections" widget: run, correct, learn, run on the next image, in napari."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import shapes_scene
from napari_prm import build_model, load_model, predict, save_model

WAIT_MS = 300_000


@pytest.fixture(scope="module")
def tiny_shapes_checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(96, 96))
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny_shapes.pt")


def open_widgets(viewer, qtbot, checkpoint):
    _, predict_widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    predict_widget.select_model(str(checkpoint))
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    _, refine_widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections", tabify=True)
    return predict_widget, refine_widget


def run(widget, qtbot):
    assert widget.run() is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)


def correct(layer, labels):
    """What a user does: paint the true instances and give each its class."""
    layer.data = labels.astype(layer.data.dtype)
    layer.features = pd.DataFrame({"index": [1, 2], "label": [1, 2], "class_index": [0, 1],
                                   "class_name": ["cat", "dog"], "score": [np.nan, np.nan], "peak": [-1, -1]})


def test_run_correct_learn_and_run_on_the_next_image(make_napari_viewer, qtbot, prm_config,
                                                     tiny_shapes_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    first, labels, _, _ = shapes_scene(0)
    viewer.add_image(first, name="first")
    predict_widget, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    assert widget._model.value == str(tiny_shapes_checkpoint.resolve())  # it follows the predict widget
    assert predict_widget.proposals.value == "auto"
    # run
    run(predict_widget, qtbot)
    instances = viewer.layers["first instances"]
    # correct
    correct(instances, labels)
    # learn
    widget.reset_choices()
    assert [layer.name for _, layer in widget._labels_choices()] == ["first instances"]
    widget._layers.value = [instances]
    widget._epochs.value = 40
    widget._device.value = "cpu"
    out = tmp_path / "refined.pt"
    widget._out.value = out
    updates = []
    widget._relay.progressed.connect(updates.append)
    assert widget.start(batch_size=1, lr=5e-3) is not None
    assert widget.start() is None and "already running" in widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert widget.result.samples == 1 and len(widget.result.history) == 40
    assert {u.stage for u in updates} == {"prepare", "batch", "epoch"}
    assert widget._progress.value == 40 and "The next Run" in widget.last_message
    refined = load_model(out)
    assert refined.head is not None and refined.head.info["trained_on"]["corrected"] == 1
    # the predict widget now runs the refined model
    assert predict_widget.model.value == str(out.resolve())
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    # run on the next image: its instances are cut from the head's maps
    second, second_labels, classes, _ = shapes_scene(1)
    viewer.add_image(second, name="second")
    predict_widget.reset_choices()
    predict_widget.image.value = viewer.layers["second"]
    run(predict_widget, qtbot)
    shown = viewer.layers["second instances"].data
    expected, _ = predict(second, refined, proposals="refined").to_labels()
    np.testing.assert_array_equal(shown, expected)
    assert shown.any()
    # the head learnt the objects: the shown instances lie on them, not on the background
    assert (second_labels[shown > 0] > 0).mean() > 0.8


def test_learning_can_be_cancelled_and_needs_corrections(make_napari_viewer, qtbot, prm_config,
                                                          tiny_shapes_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(2)
    viewer.add_image(image, name="scene")
    predict_widget, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    assert widget.start() is None and "Choose the corrected" in widget.last_message
    layer = viewer.add_labels(np.zeros_like(labels), name="scene instances")
    widget.reset_choices()
    widget._layers.value = [layer]
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "cancelled.pt"
    assert widget.start() is None and "no labels yet" in widget.last_message
    correct(layer, labels)
    epochs = []
    widget._relay.progressed.connect(lambda u: epochs.append(u.epoch) if u.stage == "epoch" else None)
    assert widget.start(batch_size=1, epochs=100_000) is not None
    qtbot.waitUntil(lambda: len(epochs) >= 2, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result.cancelled and 2 <= len(widget.result.history) < 100_000
    assert widget.last_message.startswith("Cancelled")
    assert load_model(tmp_path / "cancelled.pt").head is not None
    # the last finished epoch's model is offered all the same
    assert predict_widget.model.value == str((tmp_path / "cancelled.pt").resolve())
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)


def test_a_masks_file_that_is_not_coco_is_reported_once(make_napari_viewer, qtbot, prm_config,
                                                        tiny_shapes_checkpoint, tmp_path):
    """A masks file that is not COCO JSON fails in the worker: the widget says so, once, and
    nothing is re-raised on the Qt thread (pytest-qt fails the test if it is)."""
    viewer = make_napari_viewer()
    image, _, _, _ = shapes_scene(3)
    viewer.add_image(image, name="scene")
    _, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    masks = tmp_path / "masks.json"
    masks.write_text("{not json")
    widget._masks_file.value = masks
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "never.pt"
    assert widget.start(epochs=1) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.last_message.startswith("Learning failed") and "masks.json" in widget.last_message
    assert widget._learn_button.enabled and not (tmp_path / "never.pt").exists()


def test_an_existing_model_file_is_kept_unless_it_is_the_model_refined(make_napari_viewer, qtbot, prm_config,
                                                                       tiny_shapes_checkpoint, tmp_path):
    """*Learn* replaced whatever file "save refined model as" named (an earlier refined model,
    after one epoch). Another file is now kept and the run saves to the next free name; the
    model being refined is replaced, so that learn → run → correct → learn goes on in one file."""
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(2)
    viewer.add_image(image, name="scene")
    predict_widget, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    layer = viewer.add_labels(np.zeros_like(labels), name="scene instances")
    correct(layer, labels)
    widget.reset_choices()
    widget._layers.value = [layer]
    widget._device.value = "cpu"
    earlier = tmp_path / "refined.pt"
    earlier.write_bytes(b"an earlier refined model")
    widget._out.value = earlier
    assert widget.start(batch_size=1, epochs=1) is not None
    assert widget.last_message == "refined.pt exists and is kept: saving to refined-2.pt."
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    saved = tmp_path / "refined-2.pt"
    assert widget.result is not None and widget.result.checkpoint == saved, widget.last_message
    assert earlier.read_bytes() == b"an earlier refined model"
    assert str(widget._out.value) == str(saved) and "saved " + str(saved) in widget.last_message
    # the refined model is now the one refined, and it is the output: learning again goes on in it
    assert widget._model.value == str(saved.resolve())
    first = load_model(saved)
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    assert widget.start(batch_size=1, epochs=1) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and widget.result.checkpoint == saved, widget.last_message
    assert not (tmp_path / "refined-3.pt").exists() and earlier.read_bytes() == b"an earlier refined model"
    again = load_model(saved)
    assert any(not torch.equal(again.head.state_dict()[k], v) for k, v in first.head.state_dict().items())


def corrected_scene(viewer, qtbot, checkpoint, tmp_path, planes=1):
    """A predict and a Learn widget, and a corrected Labels layer of ``planes`` planes, chosen."""
    image, labels, _, _ = shapes_scene(2)
    if planes > 1:
        image, labels = np.stack([image] * planes), np.stack([labels] * planes)
    viewer.add_image(image, name="scene")
    predict_widget, widget = open_widgets(viewer, qtbot, checkpoint)
    layer = viewer.add_labels(np.zeros_like(labels), name="scene instances")
    correct(layer, labels)
    widget.reset_choices()
    widget._layers.value = [layer]
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "refined.pt"
    return predict_widget, widget


def test_cancel_while_the_features_are_read_leaves_the_model_and_learn_can_start_again(
        make_napari_viewer, qtbot, prm_config, tiny_shapes_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    predict_widget, widget = corrected_scene(viewer, qtbot, tiny_shapes_checkpoint, tmp_path, planes=6)
    model_before = predict_widget.model.value
    stages = []

    def on_progress(update):
        stages.append(update.stage)
        if update.stage == "prepare" and update.done == 1:  # the first of 6 images read
            widget.cancel()

    widget._relay.progressed.connect(on_progress)
    assert widget.start(batch_size=1, epochs=3) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result.cancelled and widget.result.checkpoint is None and "batch" not in stages
    assert widget.last_message == "Cancelled before the first epoch ended: the model was left as it was."
    assert not (tmp_path / "refined.pt").exists() and predict_widget.model.value == model_before
    assert widget._learn_button.enabled and not widget._cancel_button.enabled
    widget._relay.progressed.disconnect(on_progress)
    assert widget.start(batch_size=1, epochs=1) is not None  # Learn works again
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert not widget.result.cancelled and widget.last_message.startswith("Learnt")


def test_closing_the_widget_stops_learning_like_cancel(make_napari_viewer, qtbot, prm_config,
                                                       tiny_shapes_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    predict_widget, widget = corrected_scene(viewer, qtbot, tiny_shapes_checkpoint, tmp_path)
    epochs = []
    widget._relay.progressed.connect(lambda u: epochs.append(u.epoch) if u.stage == "epoch" else None)
    worker = widget.start(batch_size=1, epochs=100_000)
    qtbot.waitUntil(lambda: len(epochs) >= 2, timeout=WAIT_MS)
    # the dock's close button and remove_dock_widget take the widget out of its dock (no close event)
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: not worker.is_running and not widget.running, timeout=30_000)
    assert widget.result.cancelled and 2 <= len(widget.result.history) < 1000
    # it said "Stopped as the widget was closed from 1 corrected image(s)"
    assert widget.last_message.startswith(
        f"Stopped as the widget was closed after {len(widget.result.history)} epochs: learnt from 1 corrected image(s)")
    # as after Cancel, the last finished epoch's model is saved and offered
    assert load_model(tmp_path / "refined.pt").head.info["epochs"] == len(widget.result.history)
    assert predict_widget.model.value == str((tmp_path / "refined.pt").resolve())
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)


def test_quitting_napari_stops_learning_like_cancel(make_napari_viewer, qtbot, prm_config, tiny_shapes_checkpoint,
                                                     tmp_path):
    """Quitting napari closes its window, which asks its workers to quit, and then waits for them:
    *Learn* ignored the request (running on until the widget's Qt widgets happened to be deleted), and
    the request dropped its result, so its end was never reported. It now stops as *Cancel* does: the
    last finished epoch's model is saved, and the result and message are a Cancel's."""
    from napari.qt.threading import WorkerBase

    viewer = make_napari_viewer()
    _, widget = corrected_scene(viewer, qtbot, tiny_shapes_checkpoint, tmp_path)
    epochs = []
    widget._relay.progressed.connect(lambda u: epochs.append(u.epoch) if u.stage == "epoch" else None)
    worker = widget.start(batch_size=1, epochs=100_000)
    qtbot.waitUntil(lambda: len(epochs) >= 2, timeout=WAIT_MS)
    viewer.close()
    WorkerBase.await_workers(WAIT_MS)  # as napari does when it quits (raises if a worker still runs)
    qtbot.waitUntil(lambda: not worker.is_running and not widget.running, timeout=30_000)
    qtbot.wait(50)
    assert widget.result is not None and widget.result.cancelled and 2 <= len(widget.result.history) < 1000
    assert widget.last_message.startswith(f"Stopped as the widget was closed after {len(widget.result.history)} "
                                          "epochs")
    assert load_model(tmp_path / "refined.pt").head.info["epochs"] == len(widget.result.history)


def test_removing_the_layers_while_learning_changes_nothing(make_napari_viewer, qtbot, prm_config,
                                                            tiny_shapes_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    predict_widget, widget = corrected_scene(viewer, qtbot, tiny_shapes_checkpoint, tmp_path)
    epochs = []
    widget._relay.progressed.connect(lambda u: epochs.append(u.epoch) if u.stage == "epoch" else None)
    assert widget.start(batch_size=1, epochs=3) is not None
    qtbot.waitUntil(lambda: len(epochs) >= 1, timeout=WAIT_MS)
    viewer.layers.remove("scene instances")  # the worker learns from copies read at Learn
    viewer.layers.remove("scene")
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert not widget.result.cancelled and len(widget.result.history) == 3
    assert widget.last_message.startswith("Learnt") and widget._learn_button.enabled


def test_labels_painted_from_scratch_and_a_reopened_export_are_offered_with_their_image(
        make_napari_viewer, qtbot, prm_config, tiny_shapes_checkpoint, tmp_path):
    """A Labels layer the user painted from scratch (napari's "Labels", no run) and an exported
    ``scene_labels.tif`` opened again were not offered by *Learn from corrections* (only
    ``<image> instances`` were), and *Export* offered their own names as the file stem. They now go
    with their image: the only image layer of their shape, or the one the export is named after."""
    from napari_prm._widgets.export import ExportWidget

    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(4)
    viewer.add_image(image, name="scene")
    predict_widget, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    painted = viewer.add_labels(np.zeros(labels.shape, np.uint8), name="Labels")
    painted.data = labels.astype(np.uint8)  # painted by hand: no classes, no features
    widget.reset_choices()
    assert [layer.name for _, layer in widget._labels_choices()] == ["Labels"]
    export = ExportWidget(viewer)
    export._layer.value = painted
    assert export._stem.value == "scene"
    assert export.export(tmp_path, formats=["tiff", "csv"]), export._status.value
    (reopened,) = viewer.open(str(tmp_path / "scene_labels.tif"), plugin="napari-prm")
    assert reopened.name == "scene_labels"
    viewer.add_image(image[::-1].copy(), name="other")  # same shape: "Labels" is ambiguous now
    widget.reset_choices()
    assert [layer.name for _, layer in widget._labels_choices()] == ["scene_labels"]
    export._layer.reset_choices()
    export._layer.value = reopened
    assert export._stem.value == "scene"
    widget._layers.value = [reopened]
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "refined.pt"
    assert widget.start(epochs=2, batch_size=1) is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.last_message.startswith("Learnt from 1 corrected image"), widget.last_message
    assert load_model(tmp_path / "refined.pt").head is not None


def test_a_masks_file_chosen_after_a_masks_folder_is_the_one_learnt_from(make_napari_viewer, tmp_path):
    """With a masks folder chosen, choosing a COCO JSON learnt from the folder, without a word.
    Choosing one now empties the other."""
    folder, coco = tmp_path / "masks", tmp_path / "masks.json"
    folder.mkdir()
    coco.write_text("{}")
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    widget._masks_dir.value = folder
    widget._masks_file.value = coco
    assert widget._masks_path() == coco and str(widget._masks_dir.value) == "."
    widget._masks_dir.value = folder
    assert widget._masks_path() == folder and str(widget._masks_file.value) == "."


def test_naparis_new_labels_layer_of_one_channel_goes_with_that_channel(make_napari_viewer, qtbot, tmp_path):
    """Two channels opened with ``channel_axis`` (DAPI, GFP: same shape) and napari's *New labels
    layer* on GFP ("GFP - Labels", in µm as the channel): the layer was offered by neither *Learn from
    corrections* nor *Export*'s stem ("GFP_-_Labels"). It goes with GFP now."""
    from napari_prm._widgets.export import ExportWidget
    from napari_prm._widgets.refine import layer_planes

    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(5)
    channels = np.stack([image[..., 0], image[..., 2]]).astype(np.uint16) * 16
    viewer.add_image(channels, channel_axis=0, name=["DAPI", "GFP"], scale=(0.65, 0.65), units=("µm", "µm"))
    viewer.layers.selection.active = viewer.layers["GFP"]
    viewer._new_labels()  # the layer list's "New labels layer" button
    painted = viewer.layers["GFP - Labels"]
    painted.data = labels.astype(painted.data.dtype)
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    assert [layer.name for _, layer in widget._labels_choices()] == ["GFP - Labels"]
    ((plane, painted_plane, _, _),) = layer_planes(viewer, painted)
    np.testing.assert_array_equal(plane(), channels[1])
    np.testing.assert_array_equal(painted_plane, labels)
    export = ExportWidget(viewer)
    export._layer.value = painted
    assert export._stem.value == "GFP"
    assert export.export(tmp_path, formats=["tiff"]) == [tmp_path / "GFP_labels.tif"], export._status.value


def test_a_second_new_labels_layer_of_an_image_goes_with_it_too(make_napari_viewer, tmp_path):
    """napari names a second *New labels layer* of GFP "GFP - Labels [1]" (a taken name gets a
    count): it went with no image (not offered to learn from, stem "GFP_-_Labels_1"), beside a
    DAPI channel of the same shape. It goes with GFP, as "GFP - Labels" does."""
    from napari_prm._widgets.export import ExportWidget, default_stem
    from napari_prm._widgets.layers import image_layer_of

    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(6)
    viewer.add_image(np.stack([image[..., 0], image[..., 2]]), channel_axis=0, name=["DAPI", "GFP"])
    for _ in range(2):
        viewer.layers.selection.active = viewer.layers["GFP"]
        viewer._new_labels()
    first, second = viewer.layers["GFP - Labels"], viewer.layers["GFP - Labels [1]"]
    assert image_layer_of(viewer, first) is image_layer_of(viewer, second) is viewer.layers["GFP"]
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    assert [layer.name for _, layer in widget._labels_choices()] == ["GFP - Labels", "GFP - Labels [1]"]
    assert ExportWidget(viewer)._stem.value == "GFP"  # follows the layer added last: the second
    for name in ("GFP", "DAPI"):
        viewer.layers.remove(name)
    assert default_stem(viewer, second) == "GFP"  # without an image: the name less the count and suffix


def test_a_masks_path_that_does_not_exist_is_named_not_left_out(make_napari_viewer, tmp_path):
    """A masks folder typed with a typo was left out without a word: beside corrected layers it
    learnt from the layers alone, without them it asked to choose layers or masks. The message
    names the path that does not exist, and nothing is learnt."""
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(7)
    viewer.add_image(image, name="scene")
    viewer.add_labels(labels.astype(np.uint8), name="scene instances")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    widget._masks_dir.value = tmp_path / "maskss"
    for layers in ([], [viewer.layers["scene instances"]]):
        widget._layers.value = layers
        assert widget.start() is None and not widget.running
        assert str(tmp_path / "maskss") in widget.last_message and "does not exist" in widget.last_message, \
            widget.last_message


def test_the_image_of_corrections_is_read_in_the_worker_not_when_learn_is_pressed(make_napari_viewer, tmp_path):
    """The planes of a lazy (dask) image that corrected labels go with were read on the Qt thread
    when *Learn* was pressed, freezing napari for the reads. `layer_planes` reads none now: each is
    read, once, when the worker takes it; a plane without labels is never read."""
    import threading

    import dask
    import dask.array as da

    from napari_prm._widgets.refine import layer_planes

    reads = []

    def read(frame, block_info=None):
        reads.append((threading.get_ident(), block_info[0]["chunk-location"][0]))
        return frame

    image, labels, _, _ = shapes_scene(5)
    frames = np.stack([image, image[::-1], image[:, ::-1]])
    with dask.config.set(scheduler="synchronous"):  # a chunk is read in the thread that asks for it
        viewer = make_napari_viewer()
        viewer.add_image(da.from_array(frames, chunks=(1, *image.shape)).map_blocks(read, dtype=frames.dtype),
                         name="movie", rgb=True)
        painted = viewer.add_labels(np.zeros((3, *labels.shape), np.int32), name="movie instances")
        painted.data[0], painted.data[2] = labels, labels[:, ::-1]
        reads.clear()  # napari's own, for the canvas
        planes = layer_planes(viewer, painted)
        assert reads == []
        assert [source for _, _, _, source in planes] == ["movie instances plane (0,)", "movie instances plane (2,)"]
        worker_reads = []
        worker = threading.Thread(target=lambda: worker_reads.extend(reader() for reader, _, _, _ in planes))
        worker.start()
        worker.join()
    np.testing.assert_array_equal(worker_reads[0], frames[0])
    np.testing.assert_array_equal(worker_reads[1], frames[2])
    assert sorted(frame for _, frame in reads) == [0, 2] and threading.get_ident() not in {t for t, _ in reads}


def test_learning_from_a_folder_with_a_backup_copy_uses_the_newest_export(make_napari_viewer, qtbot, prm_config,
                                                                           tiny_shapes_checkpoint, tmp_path):
    """A corrections folder holding ``scene_labels.tif`` and an older copy in ``A_old/`` (its manifest
    naming the same image): Learn trained on both, the old labels too. It learns from the most
    recently written export and names the one it left out."""
    import os
    import shutil

    import imageio.v3 as iio

    from napari_prm import io
    from napari_prm.cli import main

    image, labels, _, _ = shapes_scene(4)
    (tmp_path / "images").mkdir()
    iio.imwrite(tmp_path / "images" / "scene.png", image)
    results = tmp_path / "results"
    assert main(["predict", str(tmp_path / "images"), "--out", str(results), "--model", str(tiny_shapes_checkpoint),
                 "--device", "cpu", "--proposals", "prm", "--peak-threshold", "0"]) == 0
    (results / "A_old").mkdir()
    for name in ("scene.manifest.json", "scene_labels.tif", "scene_instances.csv"):
        shutil.copy2(results / name, results / "A_old" / name)  # the uncorrected outputs, kept
    table = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(["cat", "dog"])}
    io.write_label_image(results / "scene_labels.tif", labels)  # corrected afterwards
    io.write_instances_csv(results / "scene_instances.csv", labels, table)
    corrected = (results / "scene_labels.tif").stat().st_mtime
    os.utime(results / "A_old" / "scene_labels.tif", (corrected - 3600, corrected - 3600))

    viewer = make_napari_viewer()
    viewer.add_image(image, name="scene")
    _, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    widget._masks_dir.value = results
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "refined.pt"
    assert widget.start(epochs=1, batch_size=1) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and widget.result.samples == 1, widget.last_message
    assert ("the most recently written of each was used; left out: A_old/scene_labels.tif (written before "
            "scene_labels.tif, the export kept)") in widget.last_message


def choose(widget, layers, out):
    """Tick ``layers`` in *Learn from corrections*, on the CPU, saving to ``out``."""
    widget.reset_choices()
    widget._layers.value = layers
    widget._device.value = "cpu"
    widget._out.value = out


def learn(widget, qtbot, **options):
    """*Learn* (one epoch, one peak a batch, unless ``options`` say otherwise) to its end."""
    assert widget.start(**({"batch_size": 1, "epochs": 1} | options)) is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message


def test_learn_follows_the_model_chosen_in_the_predict_widget(make_napari_viewer, qtbot, prm_config,
                                                              tiny_shapes_checkpoint, tmp_path):
    """The docs say *Learn* trains the head of the model chosen in the Peak Response Maps widget,
    but the Learn widget took that model only when it opened: a model chosen there afterwards
    (another checkpoint, to correct its instances) was not the one learnt from. It follows now."""
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(2)
    viewer.add_image(image, name="scene")
    predict_widget, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    torch.manual_seed(1)
    other = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(96, 96)),
                       tmp_path / "other.pt")
    predict_widget.select_model(str(other))
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    assert widget._model.value == str(other.resolve())
    layer = viewer.add_labels(np.zeros_like(labels), name="scene instances")
    correct(layer, labels)
    choose(widget, [layer], tmp_path / "refined.pt")
    learn(widget, qtbot)
    refined, started_from = load_model(tmp_path / "refined.pt"), load_model(other)
    for name, value in started_from.network.state_dict().items():  # the backbone learnt from is other.pt's
        assert torch.equal(refined.network.state_dict()[name], value), name
    # a model chosen here afterwards is kept until the predict widget's choice changes again
    widget._model.value = str(tiny_shapes_checkpoint.resolve())
    assert predict_widget.model.value == str((tmp_path / "refined.pt").resolve())
    assert widget._model.value == str(tiny_shapes_checkpoint.resolve())



def test_learn_keeps_the_thresholds_edited_for_the_model_it_refines(make_napari_viewer, qtbot, prm_config,
                                                                    tiny_shapes_checkpoint, tmp_path):
    """The thresholds a user lowered to find their objects (cells, for a model calibrated on others)
    went back to the calibrated ones when *Learn* selected the refined model: the next Run found
    fewer peaks, or none, with nothing said. Learn trains the head alone (the same classifier, so
    the same scores and peaks): the edited thresholds stay, and the final message says so."""
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(2)
    viewer.add_image(image, name="scene")
    predict_widget, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    predict_widget.peak_threshold.value = 0.25  # edited; the class threshold left at the model's
    assert predict_widget.peak_control.saved == 0.25 and predict_widget.class_control.saved is None
    layer = viewer.add_labels(np.zeros_like(labels), name="scene instances")
    correct(layer, labels)
    out = tmp_path / "refined.pt"
    choose(widget, [layer], out)
    learn(widget, qtbot)
    assert predict_widget.model.value == str(out.resolve())
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    assert predict_widget.peak_threshold.value == 0.25 and predict_widget.peak_control.override == 0.25
    assert predict_widget.class_control.saved is None  # still the (refined) model's calibrated one
    assert "uses it, with the peak threshold 0.25 you set." in widget.last_message, widget.last_message
    assert json.loads((prm_config / "predict_widget.json").read_text())["peak_threshold"] == 0.25
    # a model chosen by hand shows its calibrated thresholds, as before
    predict_widget.select_model(str(tiny_shapes_checkpoint))
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    assert predict_widget.peak_control.saved is None


def test_instances_of_classes_the_model_lacks_are_named_with_their_layer(make_napari_viewer, qtbot, prm_config,
                                                                         tiny_shapes_checkpoint, tmp_path):
    """A corrected layer whose features name a class the model lacks ('zebra': classes set for
    another model) was learnt from without a word, the instance left out as an unknown one; a
    corrections folder says so. The final message now names the class and the layer; a label
    painted without a class (class_name "") is no such class."""
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(3)
    viewer.add_image(image, name="scene")
    _, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    layer = viewer.add_labels(labels.copy(), name="scene instances")
    layer.data[:4, :4] = 3  # painted by hand, no class yet
    layer.features = pd.DataFrame({"index": [1, 2, 3], "label": [1, 2, 3], "class_index": [0, 5, -1],
                                   "class_name": ["cat", "zebra", ""], "score": [np.nan] * 3, "peak": [-1] * 3})
    choose(widget, [layer], tmp_path / "refined.pt")
    learn(widget, qtbot)
    assert widget.last_message.startswith("Learnt from 1 corrected image(s)")
    assert ("Note: corrected layers: 1 instance of classes the model does not have, left out of the ground truth "
            "as unknown ones are: 'zebra' (1 instance: scene instances); the model's classes are 'cat', 'dog'"
            ) in widget.last_message, widget.last_message
    assert "''" not in widget.last_message


def test_a_predict_widget_opened_after_learn_is_followed(make_napari_viewer, qtbot, prm_config,
                                                         tiny_shapes_checkpoint):
    """*Learn from corrections* opened before the Peak Response Maps widget kept the default model
    (the built-in imagenet-voc): after a run with a checkpoint, *Learn* refined the built-in model
    and then selected it in the Peak Response Maps widget in place of the user's. It follows the
    widget once it is there (when layers change, or at *Learn*)."""
    viewer = make_napari_viewer()
    image, _, _, _ = shapes_scene(2)
    viewer.add_image(image, name="scene")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    assert widget._model.value == "imagenet-voc"
    _, predict_widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps", tabify=True)
    predict_widget.select_model(str(tiny_shapes_checkpoint))
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    viewer.add_labels(np.zeros(image.shape[:2], np.uint8), name="scene instances")  # napari resets choices
    assert widget._model.value == str(tiny_shapes_checkpoint.resolve())
    predict_widget.select_model("imagenet-coco")
    assert widget._model.value == "imagenet-coco"


def test_a_layer_named_after_an_image_of_another_shape_is_refused_at_learn(make_napari_viewer, qtbot, prm_config,
                                                                         tiny_shapes_checkpoint, tmp_path):
    """``small instances`` (96×96) goes with the image ``small`` (80×70) by its name: *Learn* started,
    read the model and failed in the worker ("Learning failed: ValueError: correction small
    instances: the labels are (96, 96), the image (80, 70)"). It is refused when *Learn* is
    pressed, naming the layer, its image and both sizes."""
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(2)
    viewer.add_image(image[:80, :70], name="small")
    _, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    layer = viewer.add_labels(np.zeros_like(labels), name="small instances")
    correct(layer, labels)
    choose(widget, [layer], tmp_path / "refined.pt")
    assert widget.start(batch_size=1, epochs=1) is None and not widget.running
    assert widget.last_message == (
        "layer 'small instances' is 96×96 pixels, its image 'small' 80×70: correct the instances on a Labels "
        "layer of the image's shape (a run's instances layer, or napari's New labels layer of the image)")
    assert not (tmp_path / "refined.pt").exists()


def test_a_layer_run_again_after_its_corrections_is_refused_naming_the_copy(make_napari_viewer, qtbot, prm_config,
                                                                           tiny_shapes_checkpoint, tmp_path):
    """Run, correct, *Learn*, then *Run* the same image again (with the refined model): the run keeps
    the corrections as the hidden ``scene instances (corrected)`` and fills ``scene instances``, still
    ticked in *Learn*, with its own instances. The next *Learn* learnt those as corrections and left
    the user's out. It is refused, naming the copy to tick; ticking it learns from the corrections."""
    viewer = make_napari_viewer()
    image, labels, _, _ = shapes_scene(2)
    viewer.add_image(image, name="scene")
    predict_widget, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    run(predict_widget, qtbot)
    layer = viewer.layers["scene instances"]
    correct(layer, labels)
    choose(widget, [layer], tmp_path / "refined.pt")
    learn(widget, qtbot)  # corrected, run-made: learnt from
    qtbot.waitUntil(lambda: predict_widget.classes_loaded, timeout=WAIT_MS)
    run(predict_widget, qtbot)  # the same image again
    kept = viewer.layers["scene instances (corrected)"]
    np.testing.assert_array_equal(kept.data, labels)
    assert not np.array_equal(layer.data, labels)
    widget.reset_choices()
    assert [chosen.name for chosen in widget._layers.value] == ["scene instances"]
    assert widget.start(batch_size=1, epochs=1) is None and not widget.running
    assert widget.last_message == (
        "Layer 'scene instances' holds the instances of its last run, not corrected; the corrections made on it "
        "before that run were kept as 'scene instances (corrected)' (hidden): tick that layer instead of "
        "'scene instances' (or correct 'scene instances' again).")
    widget._layers.value = [kept]
    learn(widget, qtbot)
    assert widget.last_message.startswith("Learnt from 1 corrected image(s)"), widget.last_message


def test_a_folders_instances_of_classes_the_model_lacks_are_named_in_the_final_message(
        make_napari_viewer, qtbot, prm_config, tiny_shapes_checkpoint, tmp_path):
    """The warning on a corrections folder's instances of classes the model lacks went to a napari
    notification of its own, apart from the widget's message; the final message now says it."""
    import imageio.v3 as iio

    from napari_prm import io

    image, labels, _, _ = shapes_scene(4)
    folder = tmp_path / "corrections"
    folder.mkdir()
    iio.imwrite(folder / "scene.png", image)
    io.write_label_image(folder / "scene_labels.tif", labels)
    io.write_instances_csv(folder / "scene_instances.csv", labels, {
        "label": np.array([1, 2]), "class_index": np.array([0, 5]), "class_name": np.array(["cat", "zebra"])})
    viewer = make_napari_viewer()
    _, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    choose(widget, [], tmp_path / "refined.pt")
    widget._masks_dir.value = folder
    learn(widget, qtbot)
    assert f"Note: corrections {folder}: 1 instance of classes the model does not have" in widget.last_message
    assert "'zebra' (1 instance: scene_instances.csv)" in widget.last_message, widget.last_message


def lazy_label_files(viewer, tmp_path, record):
    """A *Run on folder*-like scene: three images as one stack (``scene``) and their label files
    as one lazy stack (``scene instances``, `batch.label_stack`), plane 1 without labels; each
    plane read is recorded in ``record`` as (thread, plane)."""
    import dask.array as da

    from napari_prm import batch, io

    scenes = [shapes_scene(seed) for seed in (2, 3, 4)]
    paths = []
    for index, (_, labels, _, _) in enumerate(scenes):
        paths.append(tmp_path / f"scene{index}_labels.tif")
        io.write_label_image(paths[-1], labels if index != 1 else np.zeros_like(labels))

    def read(plane, block_info=None):
        import threading

        record.append((threading.get_ident(), block_info[0]["chunk-location"][0]))
        return plane

    stack = batch.label_stack(paths)
    lazy = stack.map_blocks(read, dtype=stack.dtype)
    assert isinstance(lazy, da.Array)
    viewer.add_image(np.stack([image for image, _, _, _ in scenes]), name="scene", rgb=True)
    layer = viewer.add_labels(lazy, name="scene instances")
    layer.features = pd.DataFrame({"index": [1, 2], "label": [1, 2], "class_index": [0, 1],
                                   "class_name": ["cat", "dog"], "score": [np.nan, np.nan], "peak": [-1, -1]})
    return layer, paths


def test_lazy_labels_are_read_in_the_worker_not_when_learn_is_pressed(make_napari_viewer, qtbot, prm_config,
                                                                     tiny_shapes_checkpoint, tmp_path):
    """Ticking a lazy Labels layer (label files opened as one lazy stack, one file a plane, as *Run on
    folder* opens them) and pressing *Learn* read every plane on the Qt thread (200 planes of 1024² took 13 s, napari
    frozen). The planes are read in the worker now, each once; a plane without labels is left out."""
    import threading

    import dask

    reads = []
    with dask.config.set(scheduler="synchronous"):  # a plane is read in the thread that asks for it
        viewer = make_napari_viewer()
        layer, _ = lazy_label_files(viewer, tmp_path, reads)
        _, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
        choose(widget, [layer], tmp_path / "refined.pt")
        assert layer in widget._layers.value
        reads.clear()  # napari's own, for the canvas
        labels_seen = []
        widget._relay.progressed.connect(lambda update: labels_seen.append(update) if isinstance(update, tuple)
                                         else None)
        worker = widget.start(batch_size=1, epochs=1)
        assert worker is not None, widget.last_message
        main = threading.get_ident()
        assert main not in {thread for thread, _ in reads}
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert main not in {thread for thread, _ in reads}
    assert sorted(plane for _, plane in reads) == [0, 1, 2]
    assert widget.result.samples == 2  # plane 1 holds no labels
    assert labels_seen == [("labels", 1, 3), ("labels", 2, 3), ("labels", 3, 3)]


def test_a_lazy_labels_file_deleted_before_learn_is_named(make_napari_viewer, qtbot, prm_config,
                                                          tiny_shapes_checkpoint, tmp_path):
    """A label file of a lazy Labels layer deleted after the layer was opened: *Learn* fails in the
    worker with a message naming the layer's plane and the file; an all-empty lazy layer says it
    has no labels yet."""
    viewer = make_napari_viewer()
    layer, paths = lazy_label_files(viewer, tmp_path, [])
    _, widget = open_widgets(viewer, qtbot, tiny_shapes_checkpoint)
    choose(widget, [layer], tmp_path / "refined.pt")
    paths[2].unlink()
    assert widget.start(batch_size=1, epochs=1) is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is None
    assert widget.last_message.startswith(
        "Learning failed: ValueError: cannot read the labels of scene instances plane (2,): ")
    assert str(paths[2]) in widget.last_message
    assert not (tmp_path / "refined.pt").exists()

    layer.data = layer.data[1:2]  # plane 1 only: no labels
    viewer.layers["scene"].data = viewer.layers["scene"].data[1:2]
    choose(widget, [layer], tmp_path / "refined.pt")
    assert widget.start(batch_size=1, epochs=1) is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.last_message == ("Learning failed: ValueError: scene instances: no labels yet; correct some "
                                   "instances first (paint them, and set their class in the Peak Response Maps "
                                   "widget)")
