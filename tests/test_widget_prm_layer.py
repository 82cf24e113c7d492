"""The PRM layer holds the PRMs at the network's grid and shows each slice at the image's size:
the plane napari displays is, bit for bit, the eager ``resize_prms`` of the peaks' maps, after a
Run, a Re-threshold and a click, and on the planes of a stack."""

import numpy as np

from napari_prm.predict import image_to_crm, resize_prms
from napari_prm.prm_maps import ScaledPRMs
from test_widget_correct import rethreshold_and_wait
from test_widget_predict import WAIT_MS, peak_threshold_for, run_tiny

GRID = (96, 96)  # the tiny model's input


def eager_prms(widget, peaks, plane=()):
    """Per peak number of ``peaks`` (on ``plane``): the PRM resize_prms makes of all the maps at
    once, from the network-grid maps the widget's predictor cached."""
    predictor = widget.predictors.get(widget.context.predictor_keys[plane])
    leading = len(plane)
    rows = [row for row in range(len(peaks.data)) if tuple(peaks.data[row, :leading].astype(int)) == plane]
    cells = image_to_crm(peaks.data[rows, leading:], predictor.crms.shape[1:], predictor.image_shape,
                         predictor.settings.sub_pixel_locating_factor)
    classes = peaks.features["class_index"].to_numpy()[rows]
    maps = predictor.peak_response_maps(np.column_stack([classes, cells]))
    eager = resize_prms(maps, predictor.image_shape)
    return {int(peaks.features["peak"].iloc[row]): eager[n] for n, row in enumerate(rows)}


def displayed(viewer, layer, step):
    """The plane napari shows of ``layer`` at the viewer's ``step`` (its leading axes)."""
    for axis, value in enumerate(step):
        viewer.dims.set_current_step(axis, value)
    return np.asarray(layer._slice.image.raw)


def assert_held_at_the_grid(widget, layer, count):
    """Neither the layer nor the widget holds a PRM at the image's size."""
    for held in (layer.data, widget.context.prms):
        assert len(held) == count and held.nbytes == count * GRID[0] * GRID[1] * 4
        assert all(isinstance(m, ScaledPRMs) and m.maps.shape == (1, *GRID) for m in held.maps)


def test_displayed_prms_equal_the_eager_resize_after_run_rethreshold_and_a_click(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    viewer = make_napari_viewer()
    widget = run_tiny(viewer, qtbot, tiny_checkpoint, small_cat, "cat", 2)
    peaks, layer = viewer.layers["cat peaks"], viewer.layers["cat PRMs"]
    assert layer.data.shape == (2, 100, 151)
    assert_held_at_the_grid(widget, layer, 2)
    for peak, eager in eager_prms(widget, peaks).items():
        assert np.array_equal(displayed(viewer, layer, [peak]), eager)

    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 4)
    rethreshold_and_wait(widget, qtbot)
    assert viewer.layers["cat PRMs"] is layer and layer.data.shape == (4, 100, 151)
    assert_held_at_the_grid(widget, layer, 4)
    for peak, eager in eager_prms(widget, peaks).items():
        assert np.array_equal(displayed(viewer, layer, [peak]), eager)

    widget.correction.class_choice.value = "dog"
    widget.last_message = ""
    peaks.add([[30.0, 35.0]])
    qtbot.waitUntil(lambda: not widget.running and widget.last_message.startswith(("Retrieved", "No instance")),
                    timeout=WAIT_MS)
    assert layer.data.shape == (5, 100, 151)
    assert_held_at_the_grid(widget, layer, 5)
    expected = eager_prms(widget, peaks)
    assert sorted(expected) == [0, 1, 2, 3, 4]
    for peak, eager in expected.items():
        assert np.array_equal(displayed(viewer, layer, [peak]), eager)
    assert displayed(viewer, layer, [4]).sum() > 0.99  # the click's own PRM, not zeros


def test_displayed_prms_of_a_stack_equal_the_eager_resize_on_their_plane_only(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    viewer = make_napari_viewer()
    gray = small_cat.mean(axis=2).astype(np.uint8)
    widget = run_tiny(viewer, qtbot, tiny_checkpoint, np.stack([gray, gray[:, ::-1]]), "stack", 2, all_planes=True)
    peaks, layer = viewer.layers["stack peaks"], viewer.layers["stack PRMs"]
    count = len(peaks.data)
    assert layer.data.shape == (count, 2, 100, 151) and set(peaks.data[:, 0]) == {0.0, 1.0}
    assert_held_at_the_grid(widget, layer, count)
    for plane in (0, 1):
        for peak, eager in eager_prms(widget, peaks, (plane,)).items():
            assert np.array_equal(displayed(viewer, layer, [peak, plane]), eager)
            assert not displayed(viewer, layer, [peak, 1 - plane]).any()
