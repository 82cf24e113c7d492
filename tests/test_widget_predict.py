"""The "Peak Response Maps" widget on a real (tiny or built-in) model, under Xvfb."""

import json
import threading

import numpy as np
import pytest
from napari.layers import Image, Labels, Points
from qtpy.QtCore import Qt

from napari_prm import load_model, predict
from napari_prm._widgets.layers import check_image_layer
from napari_prm._widgets.predict import PredictWidget

WAIT_MS = 120_000
PROPOSALS = "default"


def open_predict(viewer, qtbot, model_path=None) -> PredictWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    if model_path is not None:
        widget.select_model(str(model_path))
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=WAIT_MS)
    return widget


def run_and_wait(widget, qtbot):
    worker = widget.run()
    assert worker is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    return worker


def run_tiny(viewer, qtbot, model_path, image, name, count, *, all_planes=False) -> PredictWidget:
    """Add ``image`` as layer ``name`` and run the widget on it with the model at ``model_path``,
    without proposals, keeping its ``count`` strongest peaks (of the first plane, ``all_planes``
    of a stack)."""
    viewer.add_image(image, name=name)
    widget = open_predict(viewer, qtbot, model_path)
    widget.proposals.value = None
    if all_planes:
        widget.planes.value = "all planes"
    widget.peak_threshold.value = peak_threshold_for(image[0] if all_planes else image, model_path, count)
    run_and_wait(widget, qtbot)
    return widget


def peak_threshold_for(image, model_path, count, class_name=None):
    """A peak threshold that keeps the ``count`` strongest peaks (of one class) of a model."""
    import torch

    from napari_prm.model import find_peaks

    model = load_model(model_path)
    crms = predict(image, model, proposals=None, peak_threshold=1e30).crms
    if class_name is not None:
        crms = crms[[model.class_names.index(class_name)]]
    crms = torch.from_numpy(crms)[None]
    values = crms[find_peaks(crms, model.network.win_size, model.network.peak_filter)]
    values = np.sort(values.numpy())[::-1]
    return float(values[count] + values[count - 1]) / 2


@pytest.fixture
def cat_viewer(make_napari_viewer, small_cat):
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat", scale=(0.5, 0.5), translate=(10.0, -4.0))
    return viewer


def test_widgets_open_from_the_manifest(make_napari_viewer, qtbot, prm_config):
    viewer = make_napari_viewer()
    (submenu,) = [action.menu() for action in viewer.window.plugins_menu.actions()
                  if action.text() == "Peak Response Maps"]
    # napari adds the plugin's display name to each entry once it contributes menus
    assert [action.text().removesuffix(" (Peak Response Maps)") for action in submenu.actions()] == [
        "Peak Response Maps", "Train PRM model", "Export instances", "Learn from corrections"]
    for name in ("Peak Response Maps", "Train PRM model", "Export instances"):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-prm", name)
        assert dock.name.startswith(name)
        if name == "Peak Response Maps":
            qtbot.waitUntil(lambda widget=widget: widget.classes_loaded, timeout=WAIT_MS)
            assert widget.class_list.count() == 19  # the built-in model's VOC classes
        assert type(widget).__name__ in ("PredictWidget", "TrainWidget", "ExportWidget")


def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-prm", "chelsea")
    assert viewer.layers[-1].data.shape == (300, 451, 3) and viewer.layers[-1].rgb


def test_predict_creates_the_three_layers(cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    assert widget.class_list.count() == 3
    threshold = peak_threshold_for(small_cat, tiny_checkpoint, 5)
    widget.peak_threshold.value = threshold
    widget.proposals.value = None
    threads = []
    model = widget.models.get(str(tiny_checkpoint.resolve()), "cpu")
    hook = model.network.fcn.register_forward_hook(
        lambda *_: threads.append(threading.current_thread()))
    try:
        run_and_wait(widget, qtbot)
    finally:
        hook.remove()
    assert threads and threading.main_thread() not in threads  # the model never ran on the Qt thread

    peaks, prms = cat_viewer.layers["cat peaks"], cat_viewer.layers["cat PRMs"]
    instances = cat_viewer.layers["cat instances"]
    assert isinstance(peaks, Points) and isinstance(prms, Image) and isinstance(instances, Labels)
    expected = predict(small_cat, model, proposals=None, peak_threshold=threshold)
    assert len(expected.peaks) == 5
    np.testing.assert_allclose(peaks.data, expected.peaks)
    assert prms.data.shape == (5, 100, 151) and instances.data.shape == (100, 151)
    np.testing.assert_allclose(prms.data, expected.prms, rtol=1e-5, atol=1e-9)
    for layer in (peaks, instances):
        np.testing.assert_allclose(layer.scale, [0.5, 0.5])
        np.testing.assert_allclose(layer.translate, [10.0, -4.0])
    np.testing.assert_allclose(prms.scale, [1, 0.5, 0.5])
    np.testing.assert_allclose(prms.translate, [0, 10.0, -4.0])
    assert prms.blending == "additive"
    assert instances.metadata["class_names"] == ["cat", "dog", "bird"]
    features = peaks.features
    assert list(features["class_name"]) == [["cat", "dog", "bird"][c] for c in expected.peak_classes]
    np.testing.assert_array_equal(features["class_index"], expected.peak_classes)
    np.testing.assert_allclose(features["peak_value"], expected.peak_values, rtol=1e-6)
    np.testing.assert_allclose(features["class_score"], expected.scores[expected.peak_classes], rtol=1e-6)
    np.testing.assert_array_equal(features["peak"], np.arange(5))
    # one colour per class
    colours = {c: tuple(peaks.face_color[i]) for i, c in enumerate(features["class_name"])}
    assert len(set(colours.values())) == len(colours)
    assert "5 peaks" in widget.last_message and widget.last_run_seconds > 0


def test_a_runs_message_names_its_image(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """After runs on several images napari's notifications said only "5 peaks, 1 instance in 7.5 s."
    and "Nothing found…": which image each was of, they did not say."""
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget = run_tiny(viewer, qtbot, tiny_checkpoint, small_cat, "cat", 5)
    assert widget.last_message.startswith("cat: 5 peaks, "), widget.last_message
    viewer.add_image(np.ascontiguousarray(small_cat[::-1]), name="coffee")
    widget.image.value = viewer.layers["coffee"]
    widget.peak_threshold.value = 1000.0
    run_and_wait(widget, qtbot)
    assert widget.last_message.startswith("coffee: nothing found: no peak above the thresholds"), widget.last_message
    said = [str(record.message) for record in notification_manager.records]
    assert [message.split(":")[0] for message in said[-2:]] == ["cat", "coffee"], said


def test_a_checkpoints_class_threshold_is_used_until_edited(
        cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat, tmp_path):
    from napari_prm import save_model

    model = load_model(tiny_checkpoint)
    scores = np.sort(predict(small_cat, model, proposals=None).scores)
    stored = round(float(scores[-1] + scores[-2]) / 2, 4)  # only the top class passes
    model.settings["class_threshold"] = stored
    path = save_model(model, tmp_path / "thresholded.pt")
    widget = open_predict(cat_viewer, qtbot, path)
    assert widget.class_threshold.value == pytest.approx(stored)
    widget.proposals.value = None
    run_and_wait(widget, qtbot)
    expected = predict(small_cat, load_model(path), proposals=None)  # the model's threshold
    assert len(set(expected.peak_classes.tolist())) == 1
    np.testing.assert_allclose(cat_viewer.layers["cat peaks"].data, expected.peaks)

    widget.class_threshold.value = float(scores[0]) - 1  # the user's value now wins
    run_and_wait(widget, qtbot)
    everything = predict(small_cat, load_model(path), proposals=None, class_threshold=float(scores[0]) - 1)
    assert len(set(everything.peak_classes.tolist())) > 1
    np.testing.assert_allclose(cat_viewer.layers["cat peaks"].data, everything.peaks)


def test_rerun_replaces_layers_and_a_second_run_is_refused(
        cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 4)
    run_and_wait(widget, qtbot)
    first = {layer.name: layer for layer in cat_viewer.layers}
    assert len(cat_viewer.layers["cat peaks"].data) == 4

    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    worker = widget.run()
    assert widget.run() is None and "already" in widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert worker is not None
    assert [layer.name for layer in cat_viewer.layers] == list(first)
    assert all(cat_viewer.layers[name] is layer for name, layer in first.items())
    assert len(cat_viewer.layers["cat peaks"].data) == 2
    assert cat_viewer.layers["cat PRMs"].data.shape == (2, 100, 151)

    # CRM layers on request, placed so that each peak's CRM cell lands on its point
    widget.add_crms.value = True
    run_and_wait(widget, qtbot)
    peaks = cat_viewer.layers["cat peaks"]
    expected = predict(small_cat, widget.context.model, proposals=None,
                       peak_threshold=widget.peak_threshold.value)
    for (class_index, y, x), point in zip(expected.peaks_crm, peaks.data):
        crm = cat_viewer.layers[f"cat CRM {['cat', 'dog', 'bird'][class_index]}"]
        # the same maths; float32 sums may differ in the last bit with the thread count
        np.testing.assert_allclose(crm.data, expected.crms[class_index], rtol=1e-5,
                                   atol=1e-6 * np.abs(expected.crms[class_index]).max())
        np.testing.assert_allclose(crm.data_to_world([y, x]), peaks.data_to_world(point))
    assert len(cat_viewer.layers) == len(first) + len(set(expected.peak_classes))


def test_results_follow_a_rotated_sheared_and_affine_image(make_napari_viewer, qtbot, prm_config,
                                                            tiny_checkpoint, small_cat):
    """Each result layer maps a pixel where the image maps it: rotate, shear and affine
    (a stage's or a deskew's transform) as well as scale and translate, on a run, on a
    re-run into the same layers and for the CRMs' coarser grid."""
    from napari.utils.transforms import Affine

    from napari_prm.predict import crm_to_image

    viewer = make_napari_viewer()
    image = viewer.add_image(small_cat, name="cat", scale=(0.5, 2.0), translate=(10.0, -4.0),
                             rotate=30, shear=[0.2],
                             affine=Affine(rotate=-10, translate=(3.0, 5.0)))
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = "prm"
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    widget.add_crms.value = True
    pixels = np.array([[0.0, 0.0], [99.0, 0.0], [0.0, 150.0], [42.5, 77.0]])
    expected = np.array([image.data_to_world(p) for p in pixels])
    factor = predict(small_cat, load_model(tiny_checkpoint), proposals=None).sub_pixel_locating_factor

    for _ in range(2):  # the second run updates the layers in place
        run_and_wait(widget, qtbot)
        for kind in ("peaks", "instances"):
            layer = viewer.layers[f"cat {kind}"]
            np.testing.assert_allclose([layer.data_to_world(p) for p in pixels], expected,
                                       atol=1e-9, err_msg=kind)
        prms = viewer.layers["cat PRMs"]
        np.testing.assert_allclose([prms.data_to_world([1.0, *p])[1:] for p in pixels], expected,
                                   atol=1e-9)
        crm = next(layer for layer in viewer.layers if layer.name.startswith("cat CRM "))
        cells = np.array([[0.0, 0.0], [2.0, 3.0], [5.0, 1.0]])
        on_image = crm_to_image(cells, crm.data.shape[-2:], small_cat.shape[:2], factor)
        np.testing.assert_allclose([crm.data_to_world(c) for c in cells],
                                   [image.data_to_world(p) for p in on_image], atol=1e-9)
        image.affine = Affine(rotate=15, translate=(1.0, 2.0))  # moved before the re-run
        expected = np.array([image.data_to_world(p) for p in pixels])


def test_results_of_a_micrometre_image_are_in_micrometres_and_export_so(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat, tmp_path):
    """A 16-bit image of small dynamic range (100-900) at 0.65 µm per pixel: the result layers had
    the scale but the unit 'pixel', so napari warned "Inconsistent units across layers" and dropped
    the units (scale bar in pixels), and the exported label TIFF recorded pixels. They now take the
    image's units and axis names; the PRM stack's slider is called "peak"."""
    from napari_prm._widgets.export import ExportWidget

    viewer = make_napari_viewer()
    gray = small_cat[..., 1].astype(np.float64)
    u16 = np.round(100 + 800 * (gray - gray.min()) / np.ptp(gray)).astype(np.uint16)
    assert (u16.min(), u16.max()) == (100, 900)
    viewer.add_image(u16, name="cells", scale=(0.65, 0.65), translate=(12.0, 3.5), units=("µm", "µm"),
                     axis_labels=("y", "x"))
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = "prm"
    widget.peak_threshold.value = peak_threshold_for(u16, tiny_checkpoint, 3)
    widget.add_crms.value = True
    for _ in range(2):  # a run, then a re-run into the same layers
        run_and_wait(widget, qtbot)
        for name in ("cells peaks", "cells instances"):
            layer = viewer.layers[name]
            assert [str(unit) for unit in layer.units] == ["micrometer"] * 2, name
            assert layer.axis_labels == ("y", "x"), name
            np.testing.assert_allclose(layer.scale, [0.65, 0.65])
        prms = viewer.layers["cells PRMs"]
        assert [str(unit) for unit in prms.units] == ["pixel", "micrometer", "micrometer"]
        assert prms.axis_labels == ("peak", "y", "x")
        crm = next(layer for layer in viewer.layers if layer.name.startswith("cells CRM "))
        assert [str(unit) for unit in crm.units] == ["micrometer"] * 2
        assert [str(unit) for unit in viewer.layers.extent.units] == ["pixel", "micrometer", "micrometer"]
        assert viewer.dims.axis_labels == ("peak", "y", "x")
    instances = viewer.layers["cells instances"]
    assert instances.data.max() > 0, widget.last_message
    export = ExportWidget(viewer)
    export._layer.value = instances
    assert export.export(tmp_path, formats=["tiff", "csv"]), export._status.value
    (reopened,) = viewer.open(str(tmp_path / "cells_labels.tif"), plugin="napari-prm")
    assert [str(unit) for unit in reopened.units] == ["micrometer"] * 2
    np.testing.assert_allclose(reopened.scale, [0.65, 0.65])
    np.testing.assert_allclose(reopened.translate, [12.0, 3.5])


def test_the_image_to_run_follows_the_layer_selected_and_never_offers_results(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """Opening a second image (or selecting it in the layer list) and pressing Run ran the first
    image again, and the image chooser offered the run's own PRMs and CRM layers. The chosen image
    now follows the image layer selected; result layers are neither offered nor followed."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    viewer.add_image(np.ascontiguousarray(small_cat[::-1]), name="flipped")  # selected: opened last
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    assert widget.image.value is viewer.layers["flipped"]
    viewer.layers.selection.active = viewer.layers["cat"]
    assert widget.image.value is viewer.layers["cat"]
    widget.proposals.value = None
    widget.add_crms.value = True
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    run_and_wait(widget, qtbot)
    assert len(viewer.layers["cat peaks"].data) == 3
    crms = [layer.name for layer in viewer.layers if layer.name.startswith("cat CRM ")]
    assert crms and [layer.name for layer in widget.image.choices] == ["cat", "flipped"]
    for name in ("cat PRMs", crms[0], "cat instances", "cat peaks"):  # looked at, not run on
        viewer.layers.selection.active = viewer.layers[name]
        assert widget.image.value is viewer.layers["cat"], name
    dog = viewer.add_image(np.ascontiguousarray(small_cat[:, ::-1]), name="dog")  # opened now
    assert widget.image.value is dog
    run_and_wait(widget, qtbot)
    assert "dog peaks" in viewer.layers and len(viewer.layers["dog peaks"].data) > 0
    assert "flipped peaks" not in viewer.layers


def test_result_layers_follow_a_renamed_image(cat_viewer, qtbot, prm_config, tiny_checkpoint):
    """Renaming the image layer renames its result layers (and the image the instances name),
    so a re-run updates them instead of piling up a second set beside the first."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.add_crms.value = True
    run_and_wait(widget, qtbot)
    widget.correction.draw_split_line()
    before = {layer.name for layer in cat_viewer.layers}
    cat_viewer.layers["cat"].name = "kitty"
    after = {layer.name for layer in cat_viewer.layers}
    assert after == {name.replace("cat", "kitty", 1) for name in before}
    instances = cat_viewer.layers["kitty instances"]
    assert instances.metadata["image_layer"] == "kitty" and instances.metadata["image_file_name"] == "kitty"
    widget.class_threshold.value = widget.class_threshold.value - 0.5
    run_and_wait(widget, qtbot)
    assert {layer.name for layer in cat_viewer.layers} == after
    assert cat_viewer.layers["kitty instances"] is instances


class HeldRun:
    """The widget's run held in its worker thread at the first peak back-propagated, until
    `release`: a direct connection to the progress relay runs in the worker's thread, before the
    cancel check that follows each peak. Without it, a loaded machine's Qt thread could see that
    first report only once the worker had done every peak, and cancel a run already finished.

    ``reports`` lists the worker's ``(stage, done, total)`` reports; ``held`` is set once it waits.
    """

    def __init__(self, widget):
        self.reports: list[tuple] = []
        self.held = threading.Event()
        self._released = threading.Event()
        widget._relay.progressed.connect(self._report, Qt.ConnectionType.DirectConnection)

    def _report(self, report) -> None:
        self.reports.append(report)
        stage, done, _ = report
        if stage == "backprop" and done > 0 and not self.held.is_set():
            self.held.set()
            self._released.wait(WAIT_MS / 1000)

    def release(self) -> None:
        self._released.set()

    def close_napari(self, viewer, qtbot) -> None:
        """Close ``viewer`` once the run is held, release it, and wait for napari's workers as napari
        does when it quits (which raises if a worker still runs)."""
        from napari.qt.threading import WorkerBase

        try:
            qtbot.waitUntil(self.held.is_set, timeout=WAIT_MS)
            viewer.close()
        finally:
            self.release()
        WorkerBase.await_workers(WAIT_MS)

    def backprops(self) -> tuple[int, int]:
        """The peaks back-propagated, of how many."""
        done, total = max((done, total) for stage, done, total in self.reports if stage == "backprop")
        return done, total


def test_cancel_leaves_no_layers(cat_viewer, qtbot, prm_config, tiny_checkpoint):
    """Cancel while the run is midway (held after its first peak of about 50): it stops at the
    next peak and adds no layer."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None  # every peak, one at a time
    run = HeldRun(widget)
    widget.run()
    try:
        qtbot.waitUntil(run.held.is_set, timeout=WAIT_MS)
        widget.cancel()
    finally:
        run.release()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    done, total = run.backprops()
    assert 0 < done < total and total > 10  # stopped before the last peak
    assert [layer.name for layer in cat_viewer.layers] == ["cat"]
    assert "Cancelled" in widget.last_message
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_cancel_once_the_layers_are_added_says_nothing_of_a_cancel(cat_viewer, qtbot, prm_config,
                                                                   tiny_checkpoint):
    """The worker sends its results, then says it finished: a Cancel pressed between the two,
    once the result layers were added, said "Cancelled; the layers were left as they were"
    beside the new layers. The run had ended: that Cancel changes nothing."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    run = HeldRun(widget)
    worker = widget.run()
    sent, finish = threading.Event(), threading.Event()

    def hold(_):  # in the worker's thread, after the results were sent to the Qt thread
        sent.set()
        finish.wait(WAIT_MS / 1000)

    worker.returned.connect(hold, Qt.ConnectionType.DirectConnection)
    try:
        qtbot.waitUntil(run.held.is_set, timeout=WAIT_MS)
        run.release()
        qtbot.waitUntil(lambda: sent.is_set() and len(cat_viewer.layers) > 1, timeout=WAIT_MS)
        shown = [layer.name for layer in cat_viewer.layers]
        said = widget.last_message
        assert widget.running and "peaks" in said
        widget.cancel()
    finally:
        finish.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert [layer.name for layer in cat_viewer.layers] == shown and len(shown) > 1
    assert widget.last_message == said
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_closing_the_widget_stops_its_run(cat_viewer, qtbot, prm_config, tiny_checkpoint):
    """The dock's close button and ``remove_dock_widget`` take the widget out of its dock
    without closing it: the run went on, and added its layers afterwards."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None  # every peak, one at a time
    run = HeldRun(widget)
    worker = widget.run()
    try:
        qtbot.waitUntil(run.held.is_set, timeout=WAIT_MS)
        cat_viewer.window.remove_dock_widget(widget)
    finally:
        run.release()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    qtbot.wait(50)
    done, total = run.backprops()
    assert 0 < done < total  # stopped before the last peak
    assert [layer.name for layer in cat_viewer.layers] == ["cat"]


def test_closing_napari_stops_the_run(cat_viewer, qtbot, prm_config, tiny_checkpoint):
    """Closing (or quitting) napari asks its workers to quit: the run ignored that and went on to its
    last peak while the widget's Qt widgets were not yet deleted (napari deletes them later, or not
    before it waits for its workers when it quits). It now stops as *Cancel* does."""

    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None  # every peak, one at a time
    window = cat_viewer.window._qt_window  # held: its Qt widgets are deleted later, as when napari quits
    run = HeldRun(widget)
    worker = widget.run()
    run.close_napari(cat_viewer, qtbot)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=WAIT_MS)
    qtbot.wait(50)
    done, total = run.backprops()
    assert 0 < done < total  # stopped before the last peak
    del window


def test_an_image_with_nan_is_refused_with_a_message(make_napari_viewer, qtbot, prm_config,
                                                     tiny_checkpoint):
    """A float image with NaN (a registration's border) is an input the user can fix: one
    message, the widget ready again, no exception re-raised on the Qt thread."""
    viewer = make_napari_viewer()
    image = np.linspace(0, 1, 64 * 80, dtype=np.float32).reshape(64, 80)
    image[:5] = np.nan
    viewer.add_image(image, name="registered")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    run_and_wait(widget, qtbot)
    assert "NaN" in widget.last_message and "registered" in widget.last_message
    assert [layer.name for layer in viewer.layers] == ["registered"]
    assert widget.run_button.isEnabled() and not widget.running


def test_an_image_removed_during_the_run_gets_no_result_layers(cat_viewer, qtbot, prm_config,
                                                               tiny_checkpoint):
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.run()
    cat_viewer.layers.remove("cat")  # the worker's results arrive afterwards
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert [layer.name for layer in cat_viewer.layers] == []
    assert "was removed during the run" in widget.last_message
    assert len(widget.predictors) == 0  # nothing kept for an image that is gone


def test_an_image_whose_data_changes_during_the_run_gets_no_stale_results(cat_viewer, qtbot, prm_config,
                                                                          tiny_checkpoint, small_cat):
    """New pixels set on the image layer while a run went on (here one that reused the cached maps)
    got the old pixels' layers, of the old shape, with a success message. They are dropped, saying
    so, and the next Run makes a forward pass of the new pixels."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    run_and_wait(widget, qtbot)
    assert cat_viewer.layers["cat instances"].data.shape == (100, 151)
    bigger = np.concatenate([small_cat, small_cat])
    widget.run()
    cat_viewer.layers["cat"].data = bigger  # the worker's results arrive afterwards
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert "changed during the run" in widget.last_message and "press Run again" in widget.last_message
    assert cat_viewer.layers["cat instances"].data.shape == (100, 151)  # the first run's, left as they were
    run_and_wait(widget, qtbot)
    assert widget.last_forward_passes == 1
    assert cat_viewer.layers["cat instances"].data.shape == (200, 151)


def test_the_librarys_notes_name_the_forms_fields(cat_viewer, qtbot, prm_config, tiny_checkpoint):
    """The notes of the library, shared with the command line and Python, named the form's fields by
    their argument names: "lower peak_threshold to see it", "(max_peaks=2). Raise the thresholds or
    max_peaks". The widget names them as its fields do; the library's own wording is unchanged."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = 1000.0
    run_and_wait(widget, qtbot)
    prediction = widget.predictors.get(widget.context.predictor_keys[()]).predict(peak_threshold=1000.0)
    assert prediction.notes[0].endswith(": lower peak_threshold to see it")  # Python's and the CLI's
    assert widget.last_message.endswith(": lower peak threshold to see it."), widget.last_message
    assert "_threshold" not in widget.last_message

    widget.class_threshold.value = widget.class_threshold.min
    widget.peak_threshold.value = widget.peak_threshold.min  # every peak passes: the cap bites
    widget.max_peaks.value = 2
    run_and_wait(widget, qtbot)
    assert "; the 2 strongest were kept (max peaks 2). Raise the thresholds or max peaks." in widget.last_message
    assert "max_peaks" not in widget.last_message


def test_nothing_found_for_the_classes_ticked_names_them(cat_viewer, qtbot, prm_config, tiny_checkpoint):
    """With classes ticked, the thresholds and those classes are named in one parenthesis, and the
    advice adds choosing other classes."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = 1000.0
    first = widget.model_class_names()[0]
    widget.set_selected_classes([first])
    run_and_wait(widget, qtbot)
    class_threshold = f"{widget.class_threshold.value:g}"
    assert widget.last_message.startswith(
        f"cat: nothing found: no peak above the thresholds (class threshold {class_threshold}, peak threshold "
        f"1000, classes {first}). Lower them or choose other classes"), widget.last_message


def test_nothing_found_is_reported(cat_viewer, qtbot, prm_config, tiny_checkpoint):
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = 1000.0
    run_and_wait(widget, qtbot)
    assert widget.last_message.startswith("cat: nothing found")
    # no class ticked is every class: other classes would not help
    assert "Lower them." in widget.last_message and "choose other classes" not in widget.last_message
    # and the strongest peak there was (Prediction.notes)
    strongest = float(widget.predictors.get(widget.context.predictor_keys[()]).select_peaks(
        peak_threshold=None, class_threshold=None).values.max())
    assert (f"No peak reached the peak threshold 1000; the strongest was {strongest:.3g} ("
            in widget.last_message)
    assert widget.last_message.endswith("lower peak threshold to see it.")
    assert len(cat_viewer.layers["cat peaks"].data) == 0
    assert "cat PRMs" not in cat_viewer.layers
    assert not cat_viewer.layers["cat instances"].data.any()


def test_missing_image_and_bad_checkpoint_are_reported(
        make_napari_viewer, qtbot, prm_config, tmp_path, tiny_checkpoint):
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    assert widget.run() is None and "no image layer" in widget.last_message

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    widget.select_model(str(broken))
    qtbot.waitUntil(lambda: "Cannot load the model" in widget.last_message, timeout=WAIT_MS)
    assert "broken.pt" in widget.last_message

    with pytest.raises(ValueError, match="Points layer"):
        check_image_layer(viewer.add_points([[1, 1]], name="dots"))
    with pytest.raises(ValueError, match="2-D grayscale or RGB"):
        check_image_layer(viewer.add_image(np.zeros((1, 5)), name="line"))


def test_a_channels_last_image_napari_did_not_take_as_rgb_is_refused_with_the_fix(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """A 2-channel (H, W, 2) fluorescence image is, to napari, 100 planes of 151×2 pixels: Run
    predicted on the 151×2 strip of the plane shown (2 peaks, an instance on it). It is refused,
    saying how to open it; a (C, H, W) stack and the channels opened with channel_axis run. Four
    channels that napari shows as RGBA run, with a note that the 4th was read as opacity."""
    viewer = make_napari_viewer()
    u16 = small_cat[..., :2].astype(np.uint16) * 40 + 300
    two = viewer.add_image(u16, name="two")
    four = viewer.add_image(np.concatenate([u16, u16], axis=-1), name="four", rgb=False)
    assert not two.rgb and two.data.shape == (100, 151, 2)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    for layer, channels in ((two, 2), (four, 4)):
        widget.image.value = layer
        assert widget.run() is None
        assert f"looks like {channels} colour or fluorescence channels" in widget.last_message
        assert "100 planes of 151×" in widget.last_message and "channel_axis=-1" in widget.last_message
        assert not widget.rethreshold_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["two", "four"]
    with pytest.raises(ValueError, match=r"shape \(3, 100, 151, 2\): .* shows as 300 planes of 151×2 pixels"):
        check_image_layer(Image(np.stack([u16] * 3), name="z_two"))
    assert check_image_layer(viewer.add_image(np.moveaxis(u16, -1, 0), name="c_first")) == (2,)
    assert check_image_layer(viewer.add_image(u16, channel_axis=-1, name=["a", "b"])[0]) == ()
    # 4 channels napari takes as RGBA: the 4th, at 4.8 k of 65535 on average, darkened the image unsaid
    widget.image.value = viewer.add_image(np.concatenate([u16, u16], axis=-1), name="rgba")
    assert widget.image.value.rgb
    run_and_wait(widget, qtbot)
    assert "4th channel was read as its opacity (RGBA), which averages 0.07" in widget.last_message


def test_recent_checkpoints_are_remembered(make_napari_viewer, qtbot, prm_config, tiny_checkpoint):
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    assert (prm_config / "recent_models.json").is_file()
    _, other = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps",
                                                    tabify=True)
    assert str(tiny_checkpoint.resolve()) in other.model.choices
    assert widget.model.value == str(tiny_checkpoint.resolve())


def test_a_lazy_stack_is_read_in_the_worker_not_when_run_is_pressed(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """A dask stack (as a zarr or a delayed reader gives) was read whole on the Qt thread by
    *Run* (np.array of every plane for ``all planes``), freezing napari for as long as the
    reads took, with no progress or cancel. Run reads nothing there now; the worker reads each plane
    once, in its own thread, when its turn comes, and its progress says so."""
    import threading

    import dask
    import dask.array as da

    reads = []

    def read(frame, block_info=None):
        reads.append((threading.get_ident(), block_info[0]["chunk-location"][0]))
        return frame

    frames = np.stack([small_cat, small_cat[:, ::-1], small_cat[::-1]])
    lazy = da.from_array(frames, chunks=(1, 100, 151, 3)).map_blocks(read, dtype=frames.dtype)
    with dask.config.set(scheduler="synchronous"):  # a chunk is read in the thread that asks for it
        viewer = make_napari_viewer()
        viewer.add_image(lazy, name="lazy", rgb=True)
        widget = open_predict(viewer, qtbot, tiny_checkpoint)
        widget.proposals.value = None
        widget.planes.value = "all planes"
        main = threading.get_ident()
        reads.clear()  # napari's own, for the canvas
        stages = []
        widget.progressed.connect(lambda stage, done, total: stages.append((stage, done)))
        worker = widget.run()
        assert worker is not None, widget.last_message
        assert [frame for thread, frame in reads if thread == main] == []
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert sorted(frame for thread, frame in reads if thread != main) == [0, 1, 2], reads
    # the progress says which plane is being read
    assert sorted(stage for stage in stages if "reading" in stage[0]) == [
        (f"plane {n}/3: reading", done) for n in (1, 2, 3) for done in (0, 1)]
    assert viewer.layers["lazy instances"].data.shape == (3, 100, 151)
    assert len(viewer.layers["lazy peaks"].data) > 0, widget.last_message


def test_all_planes_of_a_stack(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    viewer = make_napari_viewer()
    gray = small_cat.mean(axis=-1).astype(np.uint8)
    stack = np.stack([gray, gray[:, ::-1]])
    viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0))
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.planes.value = "all planes"
    widget.peak_threshold.value = peak_threshold_for(gray, tiny_checkpoint, 3)
    run_and_wait(widget, qtbot)
    peaks, prms = viewer.layers["stack peaks"], viewer.layers["stack PRMs"]
    assert viewer.layers["stack instances"].data.shape == (2, 100, 151)
    assert peaks.data.shape[1] == 3 and set(peaks.data[:, 0]) == {0.0, 1.0}
    k = len(peaks.data)
    assert prms.data.shape == (k, 2, 100, 151)
    np.testing.assert_allclose(prms.scale, [1, 3, 1, 1])
    # slice k holds PRM k in its own plane only
    for index, plane in enumerate(peaks.data[:, 0].astype(int)):
        volume = np.asarray(prms.data[index])
        assert volume[plane].sum() == pytest.approx(1.0, rel=1e-4) and not volume[1 - plane].any()
    # the current plane only: its results are replaced, plane 0's kept as they were
    plane_0 = peaks.data[peaks.data[:, 0] == 0].copy()
    viewer.dims.set_current_step(viewer.dims.ndim - 3, 1)  # the stack axis (PRMs add one in front)
    widget.planes.value = "current plane"
    run_and_wait(widget, qtbot)
    after = viewer.layers["stack peaks"].data
    np.testing.assert_array_equal(after[after[:, 0] == 0], plane_0)
    assert len(after) == k and "Plane 1 updated" in widget.last_message


def test_the_peak_cap_of_a_stacks_planes_is_said_once(make_napari_viewer, qtbot, prm_config,
                                                      tiny_checkpoint, small_cat):
    """*All planes* of a float32 z-stack with negative values: the status line repeated the cap's
    sentence for every plane ("125 peaks passed the thresholds; the 50 strongest were kept ...",
    then 140, 136, 133: 50 sentences for a 50-plane stack). It now says it once, with the range."""
    viewer = make_napari_viewer()
    red = small_cat[..., 0].astype(np.float32)
    stack = np.stack([red * (k + 1) / 4 - 50 for k in range(3)] + [red[::-1] - 50])
    assert stack.min() < 0
    viewer.add_image(stack, name="z", scale=(2.0, 0.65, 0.65))
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.planes.value = "all planes"
    widget.peak_threshold.value = -1e4  # none: every local maximum, so the cap of 50 bites
    run_and_wait(widget, qtbot)
    model = load_model(tiny_checkpoint)
    found = [predict(plane, model, proposals=None, peak_threshold=None).peaks_found for plane in stack]
    assert min(found) > 50 and len(viewer.layers["z peaks"].data) == 4 * 50
    counts = f"{min(found)}" if min(found) == max(found) else f"{min(found)}–{max(found)}"
    assert widget.last_message.count("strongest") == 1, widget.last_message
    assert (f"On 4 of 4 planes {counts} peaks passed the thresholds; the 50 strongest of each were kept"
            in widget.last_message), widget.last_message


def test_a_stacks_cap_of_one_peak_says_the_strongest_was_kept(tiny_checkpoint, small_cat):
    """With ``max_peaks=1`` the planes' sentence said "the 1 strongest of each were kept", the
    wording one image's note had lost ("the strongest was kept"); the cap biting on one plane of
    a stack said "N peaks passed the thresholds", as if of the whole stack."""
    from napari_prm._widgets.layers import plane_notes

    model = load_model(tiny_checkpoint)
    red = small_cat[..., 0].astype(np.float32)
    predictions = [predict(plane, model, proposals=None, peak_threshold=None, max_peaks=1)
                   for plane in (red, red[::-1], red[:, ::-1])]
    found = sorted(prediction.peaks_found for prediction in predictions)
    assert found[0] > 1 and all(len(prediction.peaks) == 1 for prediction in predictions)
    counts = f"{found[0]}" if found[0] == found[-1] else f"{found[0]}–{found[-1]}"
    (note,) = plane_notes([(0,), (1,), (2,)], predictions)
    assert note == (f"On 3 of 3 planes {counts} peaks passed the thresholds; the strongest of each was "
                    "kept (max_peaks=1). Raise the thresholds or max_peaks."), note
    # one plane of three capped: its sentence read as the whole stack's
    uncapped = [predict(plane, model, proposals=None, peak_threshold=None, max_peaks=1000)
                for plane in (red[::-1], red[:, ::-1])]
    assert not any(prediction.notes for prediction in uncapped)
    (note,) = plane_notes([(0,), (1,), (2,)], [predictions[0], *uncapped])
    assert note.startswith(f"On 1 of 3 planes {predictions[0].peaks_found} peaks passed the thresholds; "
                           "the strongest was kept (max_peaks=1)."), note
    assert plane_notes([(0,)], predictions[:1]) == predictions[0].notes  # one plane: its own note


def test_builtin_model_on_the_sample_image(make_napari_viewer, qtbot, prm_config):
    """The default model (built-in, VOC classes) finds the cat of the sample image with its
    calibrated thresholds, and its class list and thresholds come from the model."""
    from napari_prm.model.checkpoint import builtin_calibration

    viewer = make_napari_viewer()
    viewer.open_sample("napari-prm", "chelsea")
    image = viewer.layers["chelsea"]
    image.data = np.ascontiguousarray(image.data[::2, ::2])  # (150, 226, 3): the net sees 448x448 anyway
    image.scale = (2.0, 2.0)
    widget = open_predict(viewer, qtbot)
    assert widget.model.value == "imagenet-voc"
    calibrated = builtin_calibration()["imagenet-voc"]
    assert widget.class_threshold.value == pytest.approx(calibrated["class_threshold"])
    assert widget.peak_threshold.value == pytest.approx(calibrated["peak_threshold"])
    widget.class_filter.setText("cat")
    shown = [widget.class_list.item(i).text() for i in range(widget.class_list.count())
             if not widget.class_list.item(i).isHidden()]
    assert shown == ["cat"]
    widget.proposals.value = PROPOSALS
    run_and_wait(widget, qtbot)

    peaks = viewer.layers["chelsea peaks"]
    assert len(peaks.data) >= 1 and set(peaks.features["class_name"]) == {"cat"}
    assert (peaks.features["class_score"] > calibrated["class_threshold"]).all()
    assert (peaks.features["peak_value"] > calibrated["peak_threshold"]).all()
    assert viewer.layers["chelsea PRMs"].data.shape == (len(peaks.data), 150, 226)
    instances = viewer.layers["chelsea instances"]
    assert instances.data.shape == (150, 226)
    np.testing.assert_allclose(instances.scale, [2.0, 2.0])
    features = instances.features
    assert len(features) >= 1 and set(features["class_name"]) == {"cat"}
    assert set(np.unique(instances.data)) - {0} == set(features["label"])
    for label, peak in zip(features["label"], features["peak"]):  # instance <-> its peak
        assert peaks.features["label"].iloc[peak] == label
    # PRM-guided proposals are an alternative source: re-running replaces the instances,
    # from the same forward pass
    widget.proposals.value = "prm"
    run_and_wait(widget, qtbot)
    assert widget.last_forward_passes == 0
    assert set(viewer.layers["chelsea instances"].features["peak"]) <= set(range(len(peaks.data)))
    assert len(viewer.layers) == 4


def test_peaks_merged_into_an_instance_link_to_it_through_deletion_and_undo(make_napari_viewer, qtbot, prm_config):
    """The built-in model finds the cat of the sample image with several peaks whose instances
    retrieval merges into one: every one of them names that instance (``label``), also after
    the instance is deleted and the deletion undone."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-prm", "chelsea")
    image = viewer.layers["chelsea"]
    image.data = np.ascontiguousarray(image.data[::2, ::2])
    widget = open_predict(viewer, qtbot)  # before torchvision is imported (see test_triton_guard)
    expected = predict(image.data, load_model("imagenet-voc"))
    merged = {peak: instance.peak for instance in expected.instances for peak in instance.merged_peaks}
    assert merged, "the sample's cat no longer has merged peaks: choose another image"
    run_and_wait(widget, qtbot)
    peaks, instances = viewer.layers["chelsea peaks"], viewer.layers["chelsea instances"]
    point_label = dict(zip(peaks.features["peak"], peaks.features["label"]))
    for peak, host in merged.items():
        assert point_label[peak] == point_label[host] > 0
    label = point_label[next(iter(merged.values()))]
    instances.selected_label = label
    assert set(peaks.selected_data) == {row for row, value in enumerate(peaks.features["label"]) if value == label}
    assert len(peaks.selected_data) == len(merged) + 1
    assert widget.correction.delete_selected()
    assert not (peaks.features["label"] == label).any()
    instances.undo()
    qtbot.waitUntil(lambda: (peaks.features["label"] == label).sum() == len(merged) + 1, timeout=5000)


def test_the_model_list_offers_the_three_builtin_label_spaces(make_napari_viewer, qtbot, prm_config):
    from napari_prm.model.checkpoint import BUILTIN_MODELS, builtin_calibration

    widget = open_predict(make_napari_viewer(), qtbot)
    assert widget.model.choices[:3] == ("imagenet-voc", "imagenet-coco", "imagenet")
    assert set(widget.model.choices[:3]) == set(BUILTIN_MODELS)
    labels = [widget.model.native.itemText(i) for i in range(3)]
    assert [label.split(":")[0] for label in labels] == ["imagenet-voc", "imagenet-coco", "imagenet"]
    assert "VOC" in labels[0] and "COCO" in labels[1] and "1000" in labels[2]
    widget.model.value = "imagenet-coco"
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=WAIT_MS)
    coco = load_model("imagenet-coco")
    assert [widget.class_list.item(i).text() for i in range(widget.class_list.count())] == coco.class_names
    assert widget.class_threshold.value == pytest.approx(coco.settings["class_threshold"])
    widget.peak_threshold.value = 3.0  # the user's ...
    widget.model.value = "imagenet"  # ... until another model is chosen
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=WAIT_MS)
    assert widget.class_list.count() == 1000
    imagenet = builtin_calibration()["imagenet"]
    assert widget.class_threshold.value == pytest.approx(imagenet["class_threshold"])
    assert widget.peak_threshold.value == pytest.approx(imagenet["peak_threshold"])
    assert widget._settings()["peak_threshold"] is None


def forward_counter(model):
    """Count the network's forward passes (a hook on the real network; backward passes do not count)."""
    calls = []
    hook = model.network.fcn.register_forward_hook(lambda *_: calls.append(1))
    return calls, hook


def test_a_second_run_and_rethreshold_reuse_the_forward_pass(
        cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    model = widget.models.get(str(tiny_checkpoint.resolve()), "cpu")
    forwards, hook = forward_counter(model)
    try:
        assert widget.peak_control.describe() == "none"  # the tiny model has no calibrated one
        assert not widget.rethreshold_button.isEnabled()  # nothing run yet
        widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 5)
        run_and_wait(widget, qtbot)
        assert len(forwards) == 1 and widget.last_forward_passes == 1
        assert widget.rethreshold_button.isEnabled()
        predictor = widget.predictors.get(widget.context.predictor_keys[()])
        assert predictor.cached_peak_count == 5

        run_and_wait(widget, qtbot)  # the same image again: no forward pass
        assert len(forwards) == 1 and widget.last_forward_passes == 0
        assert "reused" in widget.last_message

        layers = {layer.name: layer for layer in cat_viewer.layers}
        widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
        widget.rethreshold_button.click()
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
        assert len(cat_viewer.layers["cat peaks"].data) == 2
        assert all(cat_viewer.layers[name] is layer for name, layer in layers.items())  # in place
        assert predictor.cached_peak_count == 5  # the 2 strongest were cached already

        widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 8)
        worker = widget.rethreshold()
        assert worker is not None
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
        assert len(forwards) == 1
        expected = predict(small_cat, model, proposals=None, peak_threshold=widget.peak_threshold.value)
        assert len(expected.peaks) == 8 and predictor.cached_peak_count == 8
        np.testing.assert_allclose(cat_viewer.layers["cat peaks"].data, expected.peaks)
        np.testing.assert_allclose(cat_viewer.layers["cat PRMs"].data, expected.prms, rtol=1e-5, atol=1e-9)
        forwards.clear()  # predict() above ran one of its own

        # new pixels in the layer: its maps are dropped and the next run computes them again
        cat_viewer.layers["cat"].data = small_cat[::-1].copy()
        assert not widget.rethreshold_button.isEnabled() and widget.rethreshold() is None
        run_and_wait(widget, qtbot)
        assert len(forwards) == 1
        cat_viewer.layers.remove("cat")
        assert len(widget.predictors) == 0 and not widget.rethreshold_button.isEnabled()
    finally:
        hook.remove()


def test_rethreshold_shows_the_cap_note_and_cancels(cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    run_and_wait(widget, qtbot)
    widget.peak_threshold.value = widget.peak_threshold.min  # none: more than 50 peaks pass
    assert widget.peak_control.describe() == "none"
    stages = []
    widget.progressed.connect(lambda stage, done, total: stages.append((stage, done, total)))
    widget.progressed.connect(lambda stage, done, total: (
        widget.activity.bar.cancel() if stage == "backprop" and done == 1 and widget.activity else None))
    assert widget.rethreshold() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert "Cancelled" in widget.last_message
    assert {stage for stage, _, _ in stages} == {"backprop"}  # no forward pass
    assert len(cat_viewer.layers["cat peaks"].data) == 2  # left as they were
    predictor = widget.predictors.get(widget.context.predictor_keys[()])
    assert predictor.cached_peak_count < 50

    widget.progressed.disconnect()
    run_and_wait(widget, qtbot)
    assert len(cat_viewer.layers["cat peaks"].data) == 50
    assert "(max peaks 50)" in widget.last_message and "peaks passed the thresholds" in widget.last_message


def test_the_preset_reaches_the_predictor(cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    from napari_prm._widgets.settings import settings_path

    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    assert widget.preset.value == "default"
    widget.preset.value = "original"
    # the fields show what runs use: the original's thresholds (0 and 30 on its scale)
    assert widget.class_threshold.value == 0.0 and widget.peak_threshold.value == 30.0
    assert widget._settings()["peak_threshold"] is None
    assert json.loads(settings_path("predict").read_text())["preset"].startswith("original")
    run_and_wait(widget, qtbot)
    assert widget.last_message.startswith("cat: nothing found")  # a random tiny net: CRMs far below 30
    predictor = widget.predictors.get(widget.context.predictor_keys[()])
    assert predictor.settings.preset == "original" and predictor.settings.suppression_radius is None

    threshold = peak_threshold_for(small_cat, tiny_checkpoint, 6)
    widget.peak_threshold.value = threshold
    widget.rethreshold()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    expected = predict(small_cat, tiny_checkpoint, preset="original", proposals=None, peak_threshold=threshold)
    np.testing.assert_allclose(cat_viewer.layers["cat peaks"].data, expected.peaks)
    assert predictor.settings.preset == "original"

    widget.preset.value = "default"  # the same forward pass serves both presets
    assert widget.rethreshold_button.isEnabled()
    widget.rethreshold()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert predictor.settings.preset == "default" and widget.last_forward_passes == 0
    expected = predict(small_cat, tiny_checkpoint, proposals=None, peak_threshold=threshold)
    np.testing.assert_allclose(cat_viewer.layers["cat peaks"].data, expected.peaks)


def test_runners_up_are_point_features(cat_viewer, qtbot, prm_config, small_cat, tmp_path):
    """Three classes whose maps are one map shifted down by 1e-5 and 2e-5: every peak is
    a cat peak, and it suppressed the dog and bird peaks at the same place."""
    import torch

    from napari_prm import build_model, save_model

    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog", "bird"], pretrained=False, input_size=(96, 96))
    classifier = model.network.fcn.classifier
    with torch.no_grad():
        classifier.weight[1:] = classifier.weight[0]
        classifier.bias[1] = classifier.bias[0] - 1e-5
        classifier.bias[2] = classifier.bias[0] - 2e-5
    path = save_model(model, tmp_path / "shifted.pt")
    widget = open_predict(cat_viewer, qtbot, path)
    widget.proposals.value = None
    widget.class_threshold.value = -1.0
    widget.peak_threshold.value = peak_threshold_for(small_cat, path, 4, "cat")
    run_and_wait(widget, qtbot)
    features = cat_viewer.layers["cat peaks"].features
    assert len(features) == 4 and set(features["class_name"]) == {"cat"}
    assert list(features["runner_up_1"]) == ["dog"] * 4 and list(features["runner_up_2"]) == ["bird"] * 4
    assert list(features["runner_up_3"]) == [""] * 4 and features["runner_up_3_value"].isna().all()
    np.testing.assert_allclose(features["runner_up_1_value"], features["peak_value"] - 1e-5, atol=2e-6)
    np.testing.assert_allclose(features["runner_up_2_value"], features["peak_value"] - 2e-5, atol=2e-6)


def test_a_checkpoint_failing_unexpectedly_is_reported_and_can_be_chosen_again(
        make_napari_viewer, qtbot, prm_config, tmp_path, tiny_checkpoint, monkeypatch):
    """A checkpoint whose loading fails with an unexpected error, not the loader's
    ValueError (here torch running out of memory): the widget says so, nothing is re-raised
    on the Qt thread (pytest-qt fails the test if it is), and a good model loads after it.

    The loader itself now turns every malformed checkpoint it is known to meet into a
    ValueError (this test used a 'refine' entry with format_version null, which raised a
    TypeError), so the unexpected error is the loader's, raised for this one file.
    """
    import shutil
    from pathlib import Path

    import napari_prm.model

    odd = Path(shutil.copy(tiny_checkpoint, tmp_path / "odd.pt")).resolve()
    real_load_model = napari_prm.model.load_model

    def load_model(name_or_path, **options):
        if Path(name_or_path).resolve() == odd:
            raise RuntimeError("not enough memory: you tried to allocate 1099511627776 bytes")
        return real_load_model(name_or_path, **options)

    monkeypatch.setattr(napari_prm.model, "load_model", load_model)
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot)
    widget.select_model(str(odd))
    qtbot.waitUntil(lambda: "odd.pt" in widget.last_message, timeout=WAIT_MS)
    assert widget.last_message.startswith("Cannot load the model") and "RuntimeError" in widget.last_message
    assert not widget.classes_loaded
    widget.select_model(str(tiny_checkpoint))
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=WAIT_MS)
    widget.select_model(str(odd))  # chosen again: loaded (and reported) again
    widget.last_message = ""
    qtbot.waitUntil(lambda: "odd.pt" in widget.last_message, timeout=WAIT_MS)


def test_all_planes_of_a_stack_deeper_than_the_predictor_cache(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """A stack with more planes than cached predictors (3): planes run before (the current
    plane, or a previous all-planes run) are evicted by the run's earlier planes before
    their turn, and must then be computed again, not fail."""
    viewer = make_napari_viewer()
    gray = small_cat.mean(axis=-1).astype(np.uint16) * 16
    stack = np.stack([gray] * 5)  # the same plane: each finds the same peaks
    viewer.add_image(stack, name="z", scale=(2.0, 0.5, 0.5))
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = peak_threshold_for(gray, tiny_checkpoint, 2)
    viewer.dims.set_current_step(0, 4)
    run_and_wait(widget, qtbot)
    assert set(viewer.layers["z peaks"].data[:, 0]) == {4.0}, widget.last_message
    widget.planes.value = "all planes"
    for _ in range(2):  # after the current plane, then after all planes
        run_and_wait(widget, qtbot)
        assert "Cannot run" not in widget.last_message, widget.last_message
        assert set(viewer.layers["z peaks"].data[:, 0]) == {0.0, 1.0, 2.0, 3.0, 4.0}
        np.testing.assert_allclose(viewer.layers["z instances"].scale, [2.0, 0.5, 0.5])


def test_max_peaks_and_input_size_of_the_form(cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """The form's *max peaks* caps the peaks as ``predict(max_peaks=)`` does, re-thresholding
    applies a new cap without a forward pass, and *input size* runs the network at that size
    (``predict(input_size=)``), remembered for the next session."""
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    model = widget.models.get(str(tiny_checkpoint.resolve()), "cpu")
    widget.proposals.value = None
    widget.class_threshold.value = -1e3
    widget.peak_threshold.value = -1e3
    widget.max_peaks.value = 7
    run_and_wait(widget, qtbot)
    capped = predict(small_cat, model, proposals=None, class_threshold=-1e3, peak_threshold=-1e3, max_peaks=7)
    assert capped.peaks_found > 7
    np.testing.assert_allclose(cat_viewer.layers["cat peaks"].data, capped.peaks)
    widget.max_peaks.value = 9
    worker = widget.rethreshold()
    assert worker is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert len(cat_viewer.layers["cat peaks"].data) == 9
    widget.input_size.value = 160
    run_and_wait(widget, qtbot)
    larger = predict(small_cat, model, proposals=None, class_threshold=-1e3, peak_threshold=-1e3, max_peaks=9,
                     input_size=(160, 160))
    np.testing.assert_allclose(cat_viewer.layers["cat peaks"].data, larger.peaks)
    assert not np.allclose(larger.peaks, predict(small_cat, model, proposals=None, class_threshold=-1e3,
                                                 peak_threshold=-1e3, max_peaks=9).peaks)
    saved = json.loads((prm_config / "predict_widget.json").read_text())
    assert (saved["max_peaks"], saved["input_size"]) == (9, 160)


def test_the_dock_leaves_room_for_the_canvas(make_napari_viewer, qtbot, prm_config):
    """The correction panel's list of keys was one unwrapped line per key: the Shift-A line made
    the dock at least 1268 px wide, leaving no canvas on a 1280 px wide screen. It wraps now."""
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot)
    assert widget.correction.shortcuts_label.native.wordWrap()
    assert widget.minimumSizeHint().width() < 640


def test_the_dock_scrolls_up_and_down(make_napari_viewer, qtbot, prm_config):
    """The form and the correction panel are about 1400 px tall: the dock needed all of it, and at
    1280 x 1024 napari's window grew past the screen, the panel's last buttons out of reach. They
    scroll in the dock now, up and down only (the dock is as wide as the form needs)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot)
    assert widget.content.minimumSizeHint().height() > 800
    assert widget.minimumSizeHint().height() < 200
    assert isinstance(widget.correction.native.parent().parent().parent(), QScrollArea)
    assert widget.minimumSizeHint().width() >= widget.content.minimumSizeHint().width()
    assert widget.scroll.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff


def test_without_an_image_the_message_names_the_sample_menu(make_napari_viewer, qtbot, prm_config):
    """The message named a File > Open Sample > napari-prm menu; napari lists the samples under the
    manifest's display name."""
    viewer = make_napari_viewer()
    widget = open_predict(viewer, qtbot)
    assert widget.run() is None
    (sample_menu,) = [action.menu() for action in viewer.window.file_menu.actions()
                      if action.menu() is not None and "Sample" in action.text()]
    plugin_menus = [action.text() for action in sample_menu.actions() if action.menu() is not None]
    named = widget.last_message.split("File > Open Sample > ")[1].removesuffix(" offers one)")
    assert named in plugin_menus, (widget.last_message, plugin_menus)


def test_a_run_without_instances_says_why(cat_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """Peaks found and no instance: the status said "50 peaks, 0 instances" alone (the command line's evaluate
    blamed proposals 'none' whatever the cause). It names the cause, in the library's words as evaluate's warning:
    no proposal kept for a peak (proposals of one 2×2 pixel candidate, too small to keep), or proposals 'none'."""
    candidates = np.zeros(small_cat.shape[:2], np.uint16)
    candidates[:2, :2] = 1
    cat_viewer.add_labels(candidates, name="candidates")
    widget = open_predict(cat_viewer, qtbot, tiny_checkpoint)
    widget.class_threshold.value = -1e4
    widget.peak_threshold.value = -1e4
    widget.proposals.value = cat_viewer.layers["candidates"]
    run_and_wait(widget, qtbot)
    expected = predict(small_cat, load_model(tiny_checkpoint), proposals=candidates, class_threshold=-1e4,
                       peak_threshold=-1e4)
    assert len(expected.peaks) > 0 and not expected.instances
    peaks = len(expected.peaks)
    assert widget.last_message.startswith(f"cat: {peaks} peaks, 0 instances (no proposal was kept for any of the "
                                          f"{peaks} peaks found) in "), widget.last_message
    widget.proposals.value = None
    run_and_wait(widget, qtbot)
    assert widget.last_message.startswith(f"cat: {peaks} peaks, 0 instances (the run's proposals were 'none', which "
                                          "finds peaks and PRMs only, no instance) in "), widget.last_message
