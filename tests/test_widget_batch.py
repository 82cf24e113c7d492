""""Run on a folder…" from the Peak Response Maps widget: three tiny images, lazy result stacks."""


import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
from skimage import data

from napari_prm import io
from napari_prm._widgets.batch import DOCK_NAME, IMAGES_LAYER, LABELS_LAYER, open_batch_panel

WAIT_MS = 300_000


@pytest.fixture
def image_folder(tmp_path):
    """Three small real images of different sizes."""
    folder = tmp_path / "images"
    folder.mkdir()
    iio.imwrite(folder / "a_cat.png", data.chelsea()[::6, ::6])
    iio.imwrite(folder / "b_coffee.png", data.coffee()[::8, ::8])
    iio.imwrite(folder / "c_astronaut.png", data.astronaut()[::8, ::8])
    return folder


@pytest.fixture
def predict_widget(make_napari_viewer, qtbot, prm_config, tiny_checkpoint):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    widget.select_model(str(tiny_checkpoint))
    widget.device.value = "cpu"
    widget.proposals.value = "prm"
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=WAIT_MS)
    return widget


def run_folder(predict_widget, qtbot, folder, out):
    """Open the panel from the widget's button, run it on ``folder`` into ``out`` and wait for the end."""
    predict_widget.batch_button.click()
    panel = open_batch_panel(predict_widget)
    panel._inputs.value = folder
    panel._out.value = out
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    return panel


def test_run_on_a_folder_opens_the_results_as_lazy_stacks(predict_widget, qtbot, image_folder, tmp_path):
    predict_widget.preset.value = "original"  # the folder run takes the widget's preset and thresholds
    predict_widget.peak_threshold.value = 0.0
    predict_widget.batch_button.click()
    panel = open_batch_panel(predict_widget)  # the panel the button opened
    assert open_batch_panel(predict_widget) is panel
    assert predict_widget.viewer.window.dock_widgets[DOCK_NAME] is panel
    panel._inputs.value = image_folder
    panel._out.value = tmp_path / "out"
    assert panel.start() is not None
    assert panel.start() is None and "already" in panel.last_message
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)

    result = panel.result
    assert [r.status for r in result.results] == ["written"] * 3, panel.last_message
    assert panel.progress_bar.n == 3 and panel.progress_bar.total == 3
    assert panel.last_message.startswith("Done: 3 written")
    viewer = predict_widget.viewer
    labels, images = viewer.layers[LABELS_LAYER], viewer.layers[IMAGES_LAYER]
    assert isinstance(labels.data, da.Array) and isinstance(images.data, da.Array)
    shapes = [io.read_image(image_folder / name).shape[:2] for name in sorted(p.name for p in image_folder.iterdir())]
    tallest, widest = max(s[0] for s in shapes), max(s[1] for s in shapes)
    assert labels.data.shape == (3, tallest, widest) and images.data.shape == (3, tallest, widest, 3)
    assert labels.metadata["plane_names"] == ["a_cat.png", "b_coffee.png", "c_astronaut.png"]
    for index, r in enumerate(result.results):
        written = io.read_label_image(tmp_path / "out" / f"{r.stem}_labels.tif")
        height, width = written.shape
        np.testing.assert_array_equal(np.asarray(labels.data[index])[:height, :width], written)
        np.testing.assert_array_equal(np.asarray(images.data[index])[:height, :width],
                                      io.read_image(r.image)[..., :3])
        assert written.max() > 0

    # Again: everything is skipped and the layers are replaced, not doubled.
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["skipped"] * 3
    assert [layer.name for layer in viewer.layers].count(LABELS_LAYER) == 1

    # The widget's own Run on one of the images, with the same preset and thresholds, gives
    # the instances the folder run wrote.
    layer = viewer.add_image(io.read_image(image_folder / "a_cat.png"), name="a_cat", rgb=True)
    predict_widget.reset_choices()
    predict_widget.image.value = layer
    assert predict_widget.run() is not None, predict_widget.last_message
    qtbot.waitUntil(lambda: not predict_widget.running, timeout=WAIT_MS)
    np.testing.assert_array_equal(viewer.layers["a_cat instances"].data,
                                  io.read_label_image(tmp_path / "out" / "a_cat_labels.tif"))


def when_an_image_is_done(panel, stop):
    """Call ``stop()`` once, in the worker thread, as soon as the run has done its first image: a stop during
    the run itself, never during the folder search (which ends without a summary)."""
    from qtpy.QtCore import Qt

    stopped = []

    def on_report(report):
        if isinstance(report, tuple) and len(report) == 3 and not stopped:  # (ImageResult, done, total)
            stopped.append(True)
            stop()

    panel._relay.progressed.connect(on_report, Qt.ConnectionType.DirectConnection)


def held_after_the_first_image(panel):
    """``(reached, gate)``: the worker, its first image done, sets ``reached`` and waits for ``gate``."""
    import threading

    reached, gate = threading.Event(), threading.Event()

    def hold():
        reached.set()
        assert gate.wait(30), "the test never let the run go on"

    when_an_image_is_done(panel, hold)
    return reached, gate


def test_cancel_stops_between_images_and_a_new_run_resumes(predict_widget, qtbot, image_folder, tmp_path):
    panel = open_batch_panel(predict_widget)
    panel._inputs.value = image_folder
    panel._out.value = tmp_path / "out"
    when_an_image_is_done(panel, panel.cancel)
    panel.start()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    statuses = [r.status for r in panel.result.results]
    assert statuses == ["written", "cancelled", "cancelled"] and panel.last_message.startswith(
        "Cancelled: 1 written, 0 skipped, 0 failed, 2 not done")
    assert panel.progress_bar.n == statuses.count("written")
    panel.start()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == [
        "skipped" if before == "written" else "written" for before in statuses]


def test_the_done_message_names_the_images_that_failed_and_why(predict_widget, qtbot, image_folder, tmp_path):
    """"Done: 3 written, 0 skipped, 1 failed; summary: ..." named neither the image nor the reason (the
    command line prints both): the user had to open summary.csv. The message names them."""
    (image_folder / "d_broken.tif").write_bytes(b"II*\x00garbage" * 10)
    panel = run_folder(predict_widget, qtbot, image_folder, tmp_path / "out")
    assert [r.status for r in panel.result.results] == ["written"] * 3 + ["failed"]
    assert panel.last_message.startswith(
        "Done: 3 written, 0 skipped, 1 failed; failed: d_broken.tif: cannot read image "
        f"{image_folder / 'd_broken.tif'}: it holds no image: the TIFF header points to no readable page")
    assert panel.last_message.endswith(f"; summary: {tmp_path / 'out' / 'summary.csv'}")


def test_run_on_a_folder_needs_both_folders(predict_widget, qtbot, tmp_path):
    panel = open_batch_panel(predict_widget)
    assert panel.start() is None and "Choose an image folder" in panel.last_message
    panel._inputs.value = tmp_path
    panel._out.value = tmp_path / "out"
    assert panel.start() is not None  # the folder is searched in the worker
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert "no images" in panel.last_message and not panel.last_message.startswith("The folder run failed")
    assert panel._status.value == panel.last_message and panel._run_button.enabled and panel.result is None


def test_the_folder_is_searched_in_the_worker_not_on_the_qt_thread(predict_widget, qtbot, image_folder, tmp_path,
                                                                   monkeypatch):
    """Listing a folder of thousands of images, naming their outputs and reading their TIFF headers took
    seconds on the Qt thread when Run was pressed (longer on a network share), napari frozen: it is the
    worker's first step, the bar busy until the planes are counted."""
    import threading

    from napari_prm import batch

    gate, threads, real = threading.Event(), [], batch.collect_images

    def collect_images(*args, **kwargs):
        threads.append(threading.current_thread())
        assert gate.wait(30), "the test never let the search go on"
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "collect_images", collect_images)
    panel = open_batch_panel(predict_widget)
    panel._inputs.value, panel._out.value = image_folder, tmp_path / "out"
    try:
        assert panel.start() is not None
        qtbot.waitUntil(lambda: bool(threads), timeout=WAIT_MS)
        assert threads[0] is not threading.main_thread()
        assert panel._status.value == f"Looking for images in {image_folder}…"
        assert panel.progress_bar.total == 0 and not panel._run_button.enabled  # busy: no total yet
        assert panel.start() is None and "already" in panel.last_message
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert panel.found_message == f"Predicting 3 images of {image_folder}…"
    assert [r.status for r in panel.result.results] == ["written"] * 3, panel.last_message
    assert panel.progress_bar.total == 3 and panel.progress_bar.n == 3


@pytest.mark.slow  # a dask worker process: about 7 s
def test_run_on_a_folder_with_a_worker_process(predict_widget, qtbot, image_folder, tmp_path):
    """The same through a local dask cluster started from the worker thread."""
    panel = open_batch_panel(predict_widget)
    panel._inputs.value = image_folder
    panel._out.value = tmp_path / "out"
    panel._workers.value = 1
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["written"] * 3, panel.last_message
    assert predict_widget.viewer.layers[LABELS_LAYER].data.shape[0] == 3


def test_a_model_that_cannot_load_is_reported_once(predict_widget, qtbot, image_folder, tmp_path):
    """The widget's model is a file that is no checkpoint: the folder run fails in the
    worker; the panel says so, once, and nothing is re-raised on the Qt thread (pytest-qt
    fails the test if it is)."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    predict_widget.select_model(str(broken))
    qtbot.waitUntil(lambda: "Cannot load the model" in predict_widget.last_message, timeout=WAIT_MS)
    panel = open_batch_panel(predict_widget)
    panel._inputs.value = image_folder
    panel._out.value = tmp_path / "out"
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert panel.last_message.startswith("The folder run failed") and "broken.pt" in panel.last_message
    assert panel._run_button.enabled and IMAGES_LAYER not in predict_widget.viewer.layers


def test_closing_the_panel_stops_the_run_like_cancel(predict_widget, qtbot, image_folder, tmp_path):
    """The dock's close button and ``remove_dock_widget`` take the panel out of its dock
    without a close event: the folder run went on and opened its layers afterwards. It now
    stops between images as *Cancel* does; what was written stays, and no layer is added."""
    panel = open_batch_panel(predict_widget)
    panel._inputs.value = image_folder
    panel._out.value = tmp_path / "out"
    reached, gate = held_after_the_first_image(panel)
    try:
        worker = panel.start()
        qtbot.waitUntil(reached.is_set, timeout=WAIT_MS)
        predict_widget.viewer.window.remove_dock_widget(panel.native)  # during the run, after its first image
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not worker.is_running and not panel.running, timeout=WAIT_MS)
    statuses = [r.status for r in panel.result.results]
    assert statuses == ["written", "cancelled", "cancelled"]
    assert panel.last_message.startswith("Stopped as the panel was closed: 1 written")
    assert sorted(p.name for p in (tmp_path / "out").glob("*_labels.tif")) == sorted(
        f"{r.stem}_labels.tif" for r in panel.result.with_status("written"))
    assert IMAGES_LAYER not in predict_widget.viewer.layers and LABELS_LAYER not in predict_widget.viewer.layers
    assert panel._run_button.enabled and not panel._cancel_button.enabled


def test_deleting_the_panel_stops_the_run_without_touching_its_qt_widgets(predict_widget, qtbot, image_folder,
                                                                         tmp_path):
    """Its Qt widgets deleted (its window closed), the run stops; the reports that arrive
    afterwards write to no deleted widget (pytest-qt fails a test on an exception in a slot)."""
    panel = open_batch_panel(predict_widget)
    panel._inputs.value = image_folder
    panel._out.value = tmp_path / "out"
    destroyed = []
    panel.native.destroyed.connect(lambda *_: destroyed.append(True))
    reached, gate = held_after_the_first_image(panel)
    try:
        worker = panel.start()
        qtbot.waitUntil(reached.is_set, timeout=WAIT_MS)
        panel.native.deleteLater()  # in its dock: no close event, no change of parent
        qtbot.waitUntil(lambda: bool(destroyed), timeout=WAIT_MS)
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not worker.is_running and not panel.running, timeout=WAIT_MS)
    qtbot.wait(50)
    assert [r.status for r in panel.result.results] == ["written", "cancelled", "cancelled"]
    assert panel.last_message.startswith("Stopped as the panel was closed")


def test_closing_napari_stops_the_run_like_cancel(predict_widget, qtbot, image_folder, tmp_path):
    """Closing (or quitting) napari asks its workers to quit: the folder run ignored that and went on
    with every image until the panel's Qt widgets happened to be deleted, and its end was never
    reported. It now stops between images as *Cancel* does: what was written stays, summary.csv
    says which images were not done, and the message says why."""
    import csv

    from napari.qt.threading import WorkerBase

    panel = open_batch_panel(predict_widget)
    panel._inputs.value = image_folder
    panel._out.value = tmp_path / "out"
    window = predict_widget.viewer.window._qt_window  # held: its Qt widgets are deleted later, as when napari quits
    reached, gate = held_after_the_first_image(panel)
    try:
        worker = panel.start()
        qtbot.waitUntil(reached.is_set, timeout=WAIT_MS)
        predict_widget.viewer.close()
    finally:
        gate.set()
    WorkerBase.await_workers(WAIT_MS)  # as napari does when it quits (raises if a worker still runs)
    qtbot.waitUntil(lambda: not worker.is_running and not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["written", "cancelled", "cancelled"]
    assert panel.last_message.startswith("Stopped as the panel was closed: 1 written")
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["written", "cancelled", "cancelled"]
    assert len(list((tmp_path / "out").glob("*_labels.tif"))) == 1
    del window


def test_run_on_a_folder_after_closing_the_panel_docks_it_again(predict_widget, qtbot):
    """*Run on a folder…* after the panel's close button shows the panel in its dock again,
    not as a window of its own."""
    panel = open_batch_panel(predict_widget)
    window = predict_widget.viewer.window
    window.remove_dock_widget(panel.native)  # what the dock's close button does
    assert DOCK_NAME not in window.dock_widgets
    predict_widget.batch_button.click()
    assert window.dock_widgets[DOCK_NAME] is panel and panel.native.parent() is not None


def test_run_on_a_folder_of_sub_folders_includes_them_when_ticked(predict_widget, qtbot, tmp_path):
    """The panel had no way to search sub-folders: a plate of well folders gave "no images ...
    pass --recursive", an option the panel does not have, and a folder with images beside
    sub-folders left theirs out without a word. 'include sub-folders' searches them, and the
    outputs mirror the tree, so the two wells' cat.png keep apart."""
    plate = tmp_path / "plate"
    for well, rows in (("A1", slice(0, 60)), ("A2", slice(60, 120))):
        (plate / well).mkdir(parents=True)
        iio.imwrite(plate / well / "cat.png", data.chelsea()[rows, :90])
    predict_widget.batch_button.click()
    panel = open_batch_panel(predict_widget)
    panel._inputs.value, panel._out.value = plate, tmp_path / "out"
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert panel.result is None
    assert panel.last_message.endswith("2 sub-folder(s) (A1, A2) are not searched: tick 'include sub-folders' "
                                       "to search them"), panel.last_message
    assert "--recursive" not in panel.last_message

    panel._recursive.value = True
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["written"] * 2, panel.last_message
    for well in ("A1", "A2"):
        assert (tmp_path / "out" / well / "cat_labels.tif").is_file()
    assert predict_widget.viewer.layers[LABELS_LAYER].metadata["plane_names"] == ["A1/cat.png", "A2/cat.png"]

    # images beside sub-folders: the note says what is left out when it is not ticked
    iio.imwrite(plate / "top.png", data.chelsea()[:60, :90])
    panel._recursive.value = False
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert "are left out: tick 'include sub-folders' to search them" in panel.found_message



def test_a_sub_folder_that_cannot_be_listed_is_said_when_the_run_ends(predict_widget, qtbot, tmp_path, monkeypatch):
    """With 'include sub-folders', a well folder the user cannot read was left out without a word: "Done: 1
    written, 0 skipped, 0 failed". The done message names it and why, as a warning."""

    plate = tmp_path / "plate"
    for well in ("A1", "A2"):
        (plate / well).mkdir(parents=True)
        iio.imwrite(plate / well / "cat.png", data.chelsea()[:60, :90])
    from test_predict_tree import unreadable

    locked = plate / "A2"
    unreadable(monkeypatch, locked)  # root reads it all the same: the refusal a user gets is made there
    try:
        predict_widget.batch_button.click()
        panel = open_batch_panel(predict_widget)
        panel._inputs.value, panel._out.value, panel._recursive.value = plate, tmp_path / "out", True
        assert panel.start() is not None
        qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    finally:
        locked.chmod(0o755)
    assert [r.status for r in panel.result.results] == ["written", "failed"], panel.last_message
    # counted with the failures, as the command line and summary.csv count it, and named once
    assert panel.last_message.startswith(
        "Done: 1 written, 0 skipped, 1 failed; failed: A2: cannot list its files (Permission denied); its images "
        "are left out; summary: ")
    assert panel.last_message.count("cannot list") == 1

@pytest.fixture
def stack_folder(tmp_path):
    """A 2-D photo and a 3-plane 16-bit ImageJ z-stack (ZYX) of 64 × 64 planes."""
    import tifffile

    folder = tmp_path / "images"
    folder.mkdir()
    iio.imwrite(folder / "a_cat.png", data.chelsea()[::6, ::6])
    camera = data.camera()[::8, ::8]
    tifffile.imwrite(folder / "b_z.tif", np.stack([camera, camera[::-1], camera[:, ::-1]]).astype(np.uint16),
                     imagej=True, metadata={"axes": "ZYX"})
    return folder


def test_a_tiff_stacks_outputs_open_as_one_plane_per_plane(predict_widget, qtbot, tmp_path, tiny_checkpoint,
                                                           stack_folder):
    """A z-stack in the folder is predicted plane by plane; its planes are planes of the lazy
    result stacks, named by their image and plane."""
    from napari_prm.batch import predict_many

    folder = stack_folder
    result = predict_many(sorted(folder.iterdir()), tiny_checkpoint, tmp_path / "out", device="cpu",
                          proposals="prm", peak_threshold=0.0)
    assert [(r.status, r.planes) for r in result.results] == [("written", 1), ("written", 3)]
    predict_widget.batch_button.click()
    panel = open_batch_panel(predict_widget)
    panel.open_results(result)
    labels = predict_widget.viewer.layers[LABELS_LAYER]
    assert labels.data.shape[0] == 4 and predict_widget.viewer.layers[IMAGES_LAYER].data.shape[0] == 4
    assert labels.metadata["plane_names"] == ["a_cat.png", "b_z.tif (plane 1 of 3)", "b_z.tif (plane 2 of 3)",
                                              "b_z.tif (plane 3 of 3)"]
    np.testing.assert_array_equal(np.asarray(labels.data[1:])[:, :64, :64],
                                  io.read_label_image(tmp_path / "out" / "b_z_labels.tif"))


def test_the_progress_bar_counts_a_stacks_planes(predict_widget, qtbot, tmp_path, stack_folder):
    """A 2-D image and a 3-plane z-stack: the bar's total is 4 planes and it moves after each
    plane of the stack, as ``napari-prm predict``'s bar does."""
    predict_widget.batch_button.click()
    panel = open_batch_panel(predict_widget)
    panel._inputs.value = stack_folder
    panel._out.value = tmp_path / "out"
    assert panel.start() is not None
    counts = []  # the reports reach the bar on this (Qt) thread: none came before this line
    panel.progress_bar.events.value.connect(lambda event: counts.append(event.value))
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["written", "written"], panel.last_message
    assert panel.progress_bar.total == 4 and panel.progress_bar.n == 4
    assert sorted(set(counts)) == [1, 2, 3, 4]


def test_the_done_message_says_why_images_were_skipped(predict_widget, qtbot, tmp_path, stack_folder):
    """Skipped images are grouped by their reason in the panel's message (not only in summary.csv):
    a complete image as such, a stack re-saved with fewer planes since as changed."""
    import tifffile

    panel = run_folder(predict_widget, qtbot, stack_folder, tmp_path / "out")
    assert [r.status for r in panel.result.results] == ["written", "written"], panel.last_message

    stack = stack_folder / "b_z.tif"
    tifffile.imwrite(stack, tifffile.imread(stack)[:2], imagej=True, metadata={"axes": "ZYX"})
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["skipped", "skipped"]
    assert panel.last_message.startswith(
        "Done: 0 written, 2 skipped, 0 failed; 1 skipped: outputs exist (a_cat.png); 1 skipped: the image changed "
        "since its outputs were written (b_z.tif) — tick 'recompute images that already have outputs' to replace "
        "them; summary: "), panel.last_message
    assert panel._status.value == panel.last_message


def test_the_done_message_stays_when_the_reports_and_the_end_are_handled_together(predict_widget, qtbot,
                                                                                  image_folder, tmp_path):
    """The run's last reports and its end queued together (a run that skips every image is that quick): the
    progress bar's redraw processes Qt events, so the end is handled inside a report's slot; the status line
    still ends on the "Done" message, not on an image's line ("1/3: a_cat.png skipped")."""
    from qtpy.QtCore import QThreadPool

    panel = run_folder(predict_widget, qtbot, image_folder, tmp_path / "out")
    assert panel.last_message.startswith("Done: 3 written"), panel.last_message
    assert panel.start() is not None
    # the worker runs to its end while the Qt thread handles nothing: its reports, its result and its end
    # wait in the queue, in that order, and are then handled in one go
    assert QThreadPool.globalInstance().waitForDone(WAIT_MS)
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["skipped"] * 3
    assert panel.last_message.startswith("Done: 0 written, 3 skipped"), panel.last_message
    assert panel._status.value == panel.last_message


def test_the_panel_notes_an_ome_tiff_that_keeps_the_name_an_earlier_version_gave_its_outputs(
        predict_widget, qtbot, tmp_path, tiny_checkpoint):
    """Outputs an earlier version wrote for cells.ome.tif (cells.ome_*) are kept and the image is
    skipped, not predicted again as cells_*: the panel says so with the command line's note (it
    said nothing, the outputs being found under a name the user did not expect)."""
    import tifffile
    from napari.utils.notifications import notification_manager

    from napari_prm.batch import predict_many

    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    image = folder / "cells.ome.tif"
    tifffile.imwrite(image, data.camera()[::8, ::8], ome=True, metadata={"axes": "YX"})
    earlier = predict_many([image], tiny_checkpoint, out, device="cpu", stems=["cells.ome"])  # earlier versions' stem
    assert [r.status for r in earlier.results] == ["written"]
    shown = []

    def record(notification):
        shown.append(notification.message)

    predict_widget.batch_button.click()
    panel = open_batch_panel(predict_widget)
    panel._inputs.value, panel._out.value = folder, out
    notification_manager.notification_ready.connect(record)
    try:
        assert panel.start() is not None
        qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    finally:
        notification_manager.notification_ready.disconnect(record)
    note = (f"{image}: outputs named cells.ome_* in {out}, as an earlier version named them there: they are kept, "
            f"not written again as cells_*")
    assert panel.found_message.endswith(f"… Note: {note}"), panel.found_message
    assert f"Note: {note}" in shown
    assert [(r.status, r.stem) for r in panel.result.results] == [("skipped", "cells.ome")], panel.last_message
    assert not list(out.glob("cells_*"))


def test_the_folder_search_reads_no_qt_widget_in_the_worker(predict_widget, qtbot, image_folder, tmp_path,
                                                            monkeypatch):
    """The search moved into the worker read the 'search sub-folders' check box's text there (for the note on
    sub-folders left out): a Qt widget is read on the Qt thread only."""
    import threading

    panel = open_batch_panel(predict_widget)
    box, readers = type(panel._recursive), []
    text = box.text

    def recorded(self):
        readers.append(threading.current_thread())
        return text.fget(self)

    monkeypatch.setattr(box, "text", property(recorded, text.fset))
    (image_folder / "more").mkdir()
    iio.imwrite(image_folder / "more" / "d.png", data.chelsea()[::8, ::8])
    panel = run_folder(predict_widget, qtbot, image_folder, tmp_path / "out")
    assert "tick 'include sub-folders' to search them" in panel.found_message, panel.found_message
    assert readers and set(readers) == {threading.main_thread()}


def test_cancel_during_the_folder_search_stops_there_and_writes_nothing(predict_widget, qtbot, image_folder,
                                                                        tmp_path, monkeypatch):
    """Cancel pressed while the worker searched the folder (its first step, seconds for a large folder) was seen
    only between images: a local cluster of worker processes was started first, taking seconds more, and then a
    summary.csv whose every image was "cancelled" was written, the message "Cancelled: 0 written, ..., 3 not
    done". It stops after the search now, without starting anything or writing a file, and says so."""
    import threading

    from napari_prm import batch

    gate, real, clusters = threading.Event(), batch.collect_images, []

    def collect_images(*args, **kwargs):
        assert gate.wait(30), "the test never let the search go on"
        return real(*args, **kwargs)

    def start_local_cluster(workers):
        clusters.append(workers)
        raise RuntimeError("a cluster was started")

    monkeypatch.setattr(batch, "collect_images", collect_images)
    monkeypatch.setattr(batch, "start_local_cluster", start_local_cluster)
    panel = open_batch_panel(predict_widget)
    panel._inputs.value, panel._out.value = image_folder, tmp_path / "out"
    panel._workers.value = 2
    try:
        assert panel.start() is not None
        panel.cancel()
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert not clusters, panel.last_message
    # nor is a summary (or manifest) written whose every image is "cancelled": nothing ran
    assert panel.result is None and not (tmp_path / "out").exists()
    assert panel.last_message == ("Cancelled while searching the folder: nothing was predicted or written "
                                  "(no summary).")
    assert panel._status.value == panel.last_message and panel._run_button.enabled
    assert not panel._cancel_button.enabled and LABELS_LAYER not in predict_widget.viewer.layers
    # a new run does the whole folder
    panel._workers.value = 0
    panel.start()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["written"] * 3, panel.last_message


def test_cancel_while_the_model_loads_stops_there_and_writes_nothing(predict_widget, qtbot, image_folder,
                                                                     tmp_path, monkeypatch):
    """Cancel pressed after the folder search, while the model loaded (seconds for a large checkpoint), was seen
    only by `predict_many`, which wrote a summary.csv and manifest whose every image was "cancelled" ("Cancelled:
    0 written, 0 skipped, 0 failed, 3 not done"). It stops once the model is loaded now, writing nothing, as a
    Cancel during the search does, and says so."""
    import threading

    from napari_prm.model import checkpoint

    loading, gate, real = threading.Event(), threading.Event(), checkpoint.load_model

    def load_model(*args, **kwargs):
        loading.set()
        assert gate.wait(30), "the test never let the model load"
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_model", load_model)
    panel = open_batch_panel(predict_widget)
    panel._inputs.value, panel._out.value = image_folder, tmp_path / "out"
    panel._workers.value = 0
    try:
        assert panel.start() is not None
        assert loading.wait(30), "the model was never loaded"
        qtbot.waitUntil(lambda: panel.found_message.startswith("Predicting 3 images"), timeout=WAIT_MS)
        panel.cancel()
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert panel.result is None and not (tmp_path / "out").exists(), panel.last_message
    assert panel.last_message == ("Cancelled while loading the model: nothing was predicted or written "
                                  "(no summary).")
    assert panel._status.value == panel.last_message and panel._run_button.enabled
    assert not panel._cancel_button.enabled and LABELS_LAYER not in predict_widget.viewer.layers
    # a new run does the whole folder
    monkeypatch.setattr(checkpoint, "load_model", real)
    panel.start()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [r.status for r in panel.result.results] == ["written"] * 3, panel.last_message



def test_a_new_folder_run_keeps_the_corrections_painted_in_folder_instances(predict_widget, qtbot, image_folder,
                                                                            tmp_path):
    """Corrections painted in `folder instances` (to learn from them) were lost without a word when *Run on
    folder* was pressed again (to resume, or after adding images): the run removed the layer and opened the
    files again. The painted layer is kept as the hidden `folder instances (corrected)`, its corrected planes
    held in memory even when the run writes their label files again, and the message says so."""
    out = tmp_path / "out"
    panel = run_folder(predict_widget, qtbot, image_folder, out)
    viewer = predict_widget.viewer
    layer = viewer.layers[LABELS_LAYER]
    written = np.asarray(layer.data).copy()

    # not painted: a new run replaces the layer and keeps nothing
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert [lay.name for lay in viewer.layers] == [IMAGES_LAYER, LABELS_LAYER] and "kept" not in panel.last_message

    layer = viewer.layers[LABELS_LAYER]
    coffee = io.read_label_image(out / "b_coffee_labels.tif")
    erased = int(np.unique(coffee[coffee > 0])[0])
    y, x = np.argwhere(coffee == erased)[0]
    layer.fill((1, int(y), int(x)), 0)  # as a user erases an instance of b_coffee.png
    layer.brush_size = 5
    layer.paint((2, 10, 10), 77)  # and paints one in c_astronaut.png
    corrected = np.asarray(layer.data).copy()
    assert not np.array_equal(corrected[1], written[1]) and not np.array_equal(corrected[2], written[2])

    panel._overwrite.value = True  # recompute: the label files are written again
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    kept = viewer.layers[f"{LABELS_LAYER} (corrected)"]
    assert not kept.visible and viewer.layers[LABELS_LAYER] is not layer
    np.testing.assert_array_equal(np.asarray(kept.data), corrected)
    np.testing.assert_array_equal(np.asarray(viewer.layers[LABELS_LAYER].data), written)  # the new run's
    assert (f"Your corrections of 'folder instances' (2 planes: b_coffee.png, c_astronaut.png) were kept as "
            f"'{LABELS_LAYER} (corrected)' (hidden): tick it in Learn from corrections.") in panel.last_message
    _, learn = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections", tabify=True)
    assert f"{LABELS_LAYER} (corrected)" in [name for name, _ in learn._labels_choices()]


def test_recomputing_keeps_a_label_file_corrected_by_hand_and_says_so(predict_widget, qtbot, image_folder, tmp_path):
    """A label file corrected outside the panel (saved over it in napari or another editor) is not
    lost when the folder is recomputed: kept as ``<stem>_labels.edited-1.tif``, and the message names it."""
    import tifffile

    out = tmp_path / "out"
    panel = run_folder(predict_widget, qtbot, image_folder, out)
    labels_path = out / "b_coffee_labels.tif"
    written = tifffile.imread(labels_path)
    hand = np.zeros_like(written)
    hand[2:9, 3:12] = 5
    tifffile.imwrite(labels_path, hand)

    panel._overwrite.value = True
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    kept = out / "b_coffee_labels.edited-1.tif"
    np.testing.assert_array_equal(tifffile.imread(kept), hand)
    np.testing.assert_array_equal(tifffile.imread(labels_path), written)
    assert sorted(p.name for p in out.glob("*.edited-*")) == [kept.name]
    assert f"{labels_path} was changed after napari-prm wrote it" in panel.last_message, panel.last_message
    assert f"kept as {kept}" in panel.last_message


def test_learn_from_corrections_takes_the_corrected_planes_of_the_folder_instances(predict_widget, qtbot,
                                                                                   image_folder, tmp_path,
                                                                                   monkeypatch, tiny_checkpoint):
    """*Learn from corrections* did not offer *Run on folder*'s `folder instances` stack: it looked for an image
    layer named `folder` and said the layer's image was "not open under that name". It is offered now, each
    corrected plane paired with its image read from its file (at the image's size, not the stack's padded one)
    and the classes of its instance CSV; planes left as the run wrote them are not learnt from."""
    from napari_prm import load_model
    from napari_prm._widgets import refine as refine_widget_module

    out = tmp_path / "out"
    run_folder(predict_widget, qtbot, image_folder, out)
    viewer = predict_widget.viewer
    layer = viewer.layers[LABELS_LAYER]
    viewer.layers.remove(IMAGES_LAYER)  # the images come from their files
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections", tabify=True)
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "refined.pt"
    widget.reset_choices()
    assert [name for name, _ in widget._labels_choices()] == [LABELS_LAYER]
    widget._layers.value = [layer]

    # nothing corrected yet: said, and nothing learnt
    assert widget.start(epochs=1) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert "none of its 3 planes differs from what the folder run wrote" in widget.last_message, widget.last_message
    assert not (tmp_path / "refined.pt").exists()

    # erase one instance of b_coffee.png (plane 1) with napari's fill, as a user does
    coffee = io.read_label_image(out / "b_coffee_labels.tif")
    table = io.read_instances_csv(out / "b_coffee_instances.csv")
    erased = int(table["label"][0])
    y, x = np.argwhere(coffee == erased)[0]
    layer.fill((1, int(y), int(x)), 0)
    corrected = np.where(coffee == erased, 0, coffee)
    assert corrected.any(), "the test needs an instance left after the erase"

    given = []
    real = refine_widget_module.refine

    def refine(model, *, corrections, **kwargs):
        given.extend(corrections)
        return real(model, corrections=corrections, **kwargs)

    monkeypatch.setattr(refine_widget_module, "refine", refine)
    assert widget.start(epochs=1) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.last_message.startswith("Learnt from 1 corrected image(s)"), widget.last_message
    assert (tmp_path / "refined.pt").is_file()
    (correction,) = given
    assert correction.source == f"{LABELS_LAYER}: b_coffee.png"
    np.testing.assert_array_equal(correction.labels, corrected)
    np.testing.assert_array_equal(correction.image, io.read_image(image_folder / "b_coffee.png"))
    classes = load_model(tiny_checkpoint).class_names  # the classes of its instance CSV, as indices of the model's
    expected = {int(label): classes.index(name) for label, name in zip(table["label"], table["class_name"])}
    assert correction.label_classes == expected and expected

    # a stack of that name without the record of its files (a copy): not offered, and what to do is said
    viewer.add_labels(np.asarray(layer.data), name=LABELS_LAYER)  # napari names it 'folder instances [1]'
    widget.reset_choices()
    widget._layers.value = []
    assert widget.start() is None
    assert widget.last_message.endswith(
        "Not offered: layer 'folder instances [1]' does not record the image and label files of its planes: press "
        "'Run on folder' again (images already done are skipped) and correct the new 'folder instances' layer."
    ), widget.last_message


def test_learn_reads_a_corrected_stack_plane_and_its_image_plane_from_the_files(predict_widget, qtbot, tmp_path,
                                                                               tiny_checkpoint, stack_folder):
    """Of a folder with a z-stack, the planes *Learn from corrections* reads: the corrected plane of the stack
    (at the stack's 64 × 64, not the padded size) with that plane of the image as the run read it; every other
    plane reads as unchanged (None)."""
    from napari_prm._widgets.batch import FolderImage, folder_planes
    from napari_prm.batch import predict_many

    result = predict_many(sorted(stack_folder.iterdir()), tiny_checkpoint, tmp_path / "out", device="cpu",
                          proposals="prm", peak_threshold=0.0)
    open_batch_panel(predict_widget).open_results(result)
    layer = predict_widget.viewer.layers[LABELS_LAYER]
    assert layer.data.shape[1:] != (64, 64)  # padded to the photo's size
    layer.paint((2, 10, 10), 77)  # b_z.tif's second plane
    planes = folder_planes(layer)
    names = layer.metadata["plane_names"]
    assert [source for _, _, _, source in planes] == [f"{LABELS_LAYER}: {name}" for name in names]
    assert [labels() is None for _, labels, _, _ in planes] == [True, True, False, True]
    image, labels, table, _ = planes[2]
    written = io.read_label_image(tmp_path / "out" / "b_z_labels.tif")[1]
    corrected = labels()
    assert corrected.shape == (64, 64) and corrected[10, 10] == 77
    assert np.array_equal(corrected != written, corrected == 77) and (corrected != written).any()
    assert isinstance(image, FolderImage)
    np.testing.assert_array_equal(image(), io.read_stack(stack_folder / "b_z.tif").planes[1])
    assert set(table()["label"]) >= set(np.unique(written[written > 0]))


def test_exporting_the_folder_instances_gives_no_advice_to_rename_an_image_folder(predict_widget, qtbot,
                                                                                  image_folder, tmp_path):
    """*Export instances* of *Run on folder*'s stack noted "No image file name recorded: layer 'folder instances' was
    made on the image 'folder', which is not open under that name ... name its image layer 'folder' again": there is
    no such image (its planes are of the folder's images, each with its files in the run's output folder)."""
    run_folder(predict_widget, qtbot, image_folder, tmp_path / "out")
    viewer = predict_widget.viewer
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = viewer.layers[LABELS_LAYER]
    written = widget.export(tmp_path / "export", stem="all")
    assert [p.name for p in written] == ["all_labels.tif", "all_instances.csv"], widget._status.value
    assert "not open under that name" not in widget._status.value
    assert "'folder'" not in widget._status.value, widget._status.value


def test_learn_says_a_folder_plane_erased_to_no_instance_is_not_learnt_not_that_none_changed(
        predict_widget, qtbot, image_folder, tmp_path):
    """Every instance of one image erased (all its detections were wrong), *Learn* said "none of its 2 planes
    differs from what the folder run wrote" of a 3-plane stack: the erased plane did differ; it holds no instance,
    which is nothing to learn from. The message says so; beside a plane that holds corrections, a note says it."""
    run_folder(predict_widget, qtbot, image_folder, tmp_path / "out")
    viewer = predict_widget.viewer
    layer = viewer.layers[LABELS_LAYER]
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections", tabify=True)
    widget._device.value = "cpu"
    widget._out.value = tmp_path / "refined.pt"
    widget.reset_choices()
    widget._layers.value = [layer]
    coffee = io.read_label_image(tmp_path / "out" / "b_coffee_labels.tif")
    assert coffee.any(), "the test needs instances to erase"
    for _ in range(100):  # napari's fill, as a user erases each instance (each part of one in pieces)
        left = np.argwhere(np.asarray(layer.data[1]) > 0)
        if not len(left):
            break
        layer.fill((1, *map(int, left[0])), 0)
    assert not np.asarray(layer.data[1]).any()
    assert widget.start(epochs=1) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert "none of its 2 planes differs" not in widget.last_message, widget.last_message
    assert (f"{LABELS_LAYER}: 1 plane you changed holds no instance now ({LABELS_LAYER}: b_coffee.png)"
            in widget.last_message), widget.last_message
    assert not (tmp_path / "refined.pt").exists()
    assert "and its other 2 planes are as the folder run wrote them" in widget.last_message
    # beside a plane that holds corrections (an instance of a_cat.png erased): learnt, and the note says it
    cat = io.read_label_image(tmp_path / "out" / "a_cat_labels.tif")
    y, x = np.argwhere(cat > 0)[0]
    layer.fill((0, int(y), int(x)), 0)
    assert widget.start(epochs=1) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.last_message.startswith("Learnt from 1 corrected image(s)"), widget.last_message
    assert (f"Note: not learnt from: 1 plane you changed holds no instance now ({LABELS_LAYER}: b_coffee.png)"
            in widget.last_message), widget.last_message


def test_the_panels_choices_come_back_in_a_new_session(make_napari_viewer, predict_widget, qtbot, prm_config,
                                                       image_folder, tmp_path):
    """The panel forgot its folders, worker processes and *include sub-folders* between sessions, unlike the
    other widgets; they are kept now (*recompute* is not, as Export's *overwrite* is not). An image folder
    that has gone since is shown and said, and *Run on folder* then says what is wrong with it."""
    import json
    import os

    from napari_prm._widgets.settings import settings_path

    def panel_of_a_new_session():
        _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
        return open_batch_panel(widget)

    panel = panel_of_a_new_session()
    assert str(panel._inputs.value) in ("", ".") and panel._workers.value == 0 and not panel._recursive.value
    workers = min(2, os.cpu_count() or 1)
    panel._inputs.value, panel._out.value = image_folder, tmp_path / "out"
    panel._workers.value, panel._recursive.value, panel._overwrite.value = workers, True, True
    assert json.loads(settings_path("batch").read_text())["inputs"] == str(image_folder)

    panel = panel_of_a_new_session()
    assert (panel._inputs.value, panel._out.value) == (image_folder, tmp_path / "out")
    assert panel._workers.value == workers and panel._recursive.value and not panel._overwrite.value
    assert panel._status.value == ""

    gone = image_folder.rename(tmp_path / "moved")  # the image folder moved since
    panel = open_batch_panel(predict_widget)  # the fixture's widget, with a model: its panel made now
    assert panel._inputs.value == image_folder and str(image_folder) in panel._status.value
    panel._workers.value = 0  # in napari's process
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert str(image_folder) in panel.last_message and panel.result is None
    assert gone.is_dir()
