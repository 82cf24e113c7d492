"""A run of the current plane of a stack updates that plane only, in the layers a run of all planes makes."""

import numpy as np
import pytest

from conftest import shapes_scene
from napari_prm._widgets.layers import features_table
from test_widget_predict import open_predict, peak_threshold_for, run_and_wait


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Three synthetic frames (a red disc and a blue square on noise, moved frame to frame)."""
    return np.stack([shapes_scene(seed)[0] for seed in range(3)])


def show_frame(viewer, qtbot, frame: int):
    """Move the slider to ``frame`` and let the correction panel bring the peaks in line with the
    instances it shows (a peak whose instance took it in takes that instance's class)."""
    viewer.dims.set_current_step(viewer.dims.ndim - 3, frame)  # the stack axis (PRMs add one in front)
    qtbot.wait(50)


def run_frame(widget, viewer, qtbot, frame: int):
    show_frame(viewer, qtbot, frame)
    run_and_wait(widget, qtbot)


def state(viewer):
    """What the result layers hold: labels, points, and both feature tables."""
    peaks, instances = viewer.layers["t peaks"], viewer.layers["t instances"]
    return (np.array(instances.data), np.array(peaks.data), peaks.features.copy(),
            features_table(instances.features))


def on_plane(viewer, frame: int):
    """Frame ``frame``'s labels, points, peak rows and instance rows (those of the labels there)."""
    labels, points, point_rows, table = state(viewer)
    mine = points[:, 0] == frame
    present = np.unique(labels[frame])
    rows = np.isin(table["label"], present[present > 0])
    return (labels[frame], points[mine], point_rows[mine].reset_index(drop=True),
            {name: values[rows] for name, values in table.items()})


def assert_same_plane(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].equals(b[2])
    assert a[3].keys() == b[3].keys()
    for name in a[3]:
        np.testing.assert_array_equal(a[3][name], b[3][name])


@pytest.fixture
def stack_widget(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, frames):
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="t", rgb=True)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.peak_threshold.value = peak_threshold_for(frames[0], tiny_checkpoint, 4)
    widget.class_threshold.value = -1e4  # every class of the random tiny model
    return viewer, widget


def test_a_frame_run_keeps_the_other_frames(stack_widget, qtbot):
    viewer, widget = stack_widget
    run_frame(widget, viewer, qtbot, 0)
    show_frame(viewer, qtbot, 0)
    first = on_plane(viewer, 0)
    assert len(first[1]) and len(first[3]["label"]), widget.last_message  # peaks and instances found
    run_frame(widget, viewer, qtbot, 2)
    assert_same_plane(on_plane(viewer, 0), first)  # frame 0 as it was, bit for bit
    labels, points, rows, table = on_plane(viewer, 2)
    assert len(points) and labels.any()
    assert not set(np.unique(labels)) & set(np.unique(first[0])) - {0}  # labels of its own
    assert not on_plane(viewer, 1)[0].any() and not len(on_plane(viewer, 1)[1])
    assert set(rows["peak"]).isdisjoint(first[2]["peak"])
    assert "Plane 2 updated" in widget.last_message
    # the PRMs layer follows the peaks layer's rows: each slice is its peak's PRM, on its own frame
    prms, peaks = viewer.layers["t PRMs"], viewer.layers["t peaks"]
    assert prms.data.shape[:2] == (len(peaks.data), 3)
    for row, frame in enumerate(peaks.data[:, 0].astype(int)):
        volume = np.asarray(prms.data[row])
        assert volume[frame].sum() == pytest.approx(1.0, rel=1e-4)
        assert not np.delete(volume, frame, axis=0).any()


def test_rerunning_a_frame_keeps_the_paint_on_another(stack_widget, qtbot):
    viewer, widget = stack_widget
    run_frame(widget, viewer, qtbot, 0)
    run_frame(widget, viewer, qtbot, 2)
    instances = viewer.layers["t instances"]
    painted = int(instances.data.max()) + 1
    data = instances.data.copy()
    data[2, :10, :10] = painted  # a stroke of a new instance on frame 2
    instances.data = data
    qtbot.wait(50)
    frame2 = np.array(instances.data[2])
    run_frame(widget, viewer, qtbot, 0)
    np.testing.assert_array_equal(viewer.layers["t instances"].data[2], frame2)
    assert "corrected" not in " ".join(layer.name for layer in viewer.layers)  # nothing to keep on frame 0
    # a re-run of the painted frame replaces it, says so, and keeps the layer as it was
    run_frame(widget, viewer, qtbot, 2)
    assert not (viewer.layers["t instances"].data[2, :10, :10] == painted).all()
    assert "were replaced by this run" in widget.last_message
    np.testing.assert_array_equal(viewer.layers["t instances (corrected)"].data[2], frame2)


def test_frame_by_frame_ends_as_all_planes(stack_widget, qtbot):
    viewer, widget = stack_widget
    for frame in range(3):
        run_frame(widget, viewer, qtbot, frame)
    show_frame(viewer, qtbot, 0)
    by_frame = state(viewer)
    widget.planes.value = "all planes"
    run_and_wait(widget, qtbot)
    show_frame(viewer, qtbot, 1)
    show_frame(viewer, qtbot, 0)
    at_once = state(viewer)
    np.testing.assert_array_equal(by_frame[0], at_once[0])
    assert by_frame[0].dtype == at_once[0].dtype and by_frame[0].any()
    np.testing.assert_array_equal(by_frame[1], at_once[1])
    assert by_frame[2].equals(at_once[2])
    for name in at_once[3]:
        np.testing.assert_array_equal(by_frame[3][name], at_once[3][name])


def test_a_point_placed_on_another_frame_stays_with_its_instance(stack_widget, qtbot):
    """A peak placed by hand on frame 2 (and its instance) is frame 2's: a run of frame 0 keeps it
    as it is, and says nothing of points dropped."""
    viewer, widget = stack_widget
    run_frame(widget, viewer, qtbot, 2)
    run_frame(widget, viewer, qtbot, 0)
    peaks = viewer.layers["t peaks"]
    peaks.add([[2.0, 30.0, 35.0]])
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    show_frame(viewer, qtbot, 2)
    frame2 = on_plane(viewer, 2)
    assert frame2[2]["hand_placed"].sum() == 1
    run_frame(widget, viewer, qtbot, 0)
    assert_same_plane(on_plane(viewer, 2), frame2)
    assert "dropped" not in widget.last_message


def test_what_counts_as_a_correction_of_one_plane():
    """The plugin's record of a stack's planes: a paint or a class set on a plane is a correction of
    that plane only, and a run that rewrites another plane keeps the record of the others."""
    from napari.layers import Labels

    from napari_prm._widgets.layers import has_corrections, instance_features, remember_written

    data = np.zeros((3, 20, 30), np.uint16)
    data[0, 2:8, 3:9], data[2, 10:15, 10:20] = 1, 2
    table = {"label": np.array([1, 2]), "class_index": np.array([0, 1]),
             "class_name": np.array(["cat", "dog"], object), "score": np.array([0.9, 0.5]),
             "peak": np.array([0, 1])}
    layer = Labels(data.copy(), features=instance_features(table))
    assert has_corrections(layer, [(0,)]) and not has_corrections(layer, [(1,)])  # never written
    remember_written(layer)
    assert not has_corrections(layer)
    layer.data_setitem((np.array([2]), np.array([0]), np.array([0])), 7)  # a paint on plane 2
    assert has_corrections(layer) and has_corrections(layer, [(2,)])
    assert not has_corrections(layer, [(0,)]) and not has_corrections(layer, [(1,)])
    reclassed = layer.features.copy()
    reclassed.loc[0, "class_name"] = "bird"  # label 1, on plane 0
    layer.features = reclassed
    assert has_corrections(layer, [(0,)]) and not has_corrections(layer, [(1,)])
    # a run rewrites plane 0 (a new label 8); plane 2's paint is still the user's
    layer.data_setitem((np.array([0]), np.array([0]), np.array([0])), 8)
    layer.features = instance_features({**table, "label": np.array([8, 2]), "class_name": table["class_name"]})
    remember_written(layer, [(0,)])
    assert not has_corrections(layer, [(0,)])
    assert has_corrections(layer, [(2,)]) and has_corrections(layer)


def test_crm_layers_follow_the_plane_run(stack_widget, qtbot):
    viewer, widget = stack_widget
    widget.add_crms.value = True
    run_frame(widget, viewer, qtbot, 0)
    crms = {layer.name: np.array(layer.data) for layer in viewer.layers if layer.name.startswith("t CRM ")}
    assert crms and all(crm.shape[0] == 3 and crm[0].any() and not crm[1:].any() for crm in crms.values())
    run_frame(widget, viewer, qtbot, 2)
    after = {layer.name: np.array(layer.data) for layer in viewer.layers if layer.name.startswith("t CRM ")}
    assert set(crms) <= set(after)
    for name, crm in crms.items():
        np.testing.assert_array_equal(after[name][0], crm[0])
    assert any(crm[2].any() for crm in after.values()) and not any(crm[1].any() for crm in after.values())


def test_a_frame_runs_message_is_of_that_frame(stack_widget, qtbot):
    """A current-plane re-run of a stack that found nothing said "Nothing found: no peak above the
    thresholds…", as if the whole stack were empty; only "Plane 0 updated" further on said otherwise.
    The message names the plane its counts are of; a run of all planes, the stack."""
    viewer, widget = stack_widget
    run_frame(widget, viewer, qtbot, 0)
    assert widget.last_message.startswith("t, plane 0: 4 peaks, "), widget.last_message
    widget.peak_threshold.value = widget.peak_threshold.max  # no peak passes
    run_frame(widget, viewer, qtbot, 1)
    assert widget.last_message.startswith("t, plane 1: nothing found: no peak above the thresholds")
    assert "Plane 1 updated; the other planes' results were kept." in widget.last_message
    assert len(on_plane(viewer, 0)[1]) == 4
    widget.planes.value = "all planes"
    run_and_wait(widget, qtbot)  # the maps of plane 2 are computed: the widget's whole stack
    assert widget.last_message.startswith("t: nothing found: "), widget.last_message


def test_a_frame_run_after_a_frame_without_peaks(stack_widget, qtbot):
    """The peaks layer of a run that found nothing holds no points (nor does one whose points were all
    deleted): the next frame's run is spliced into it, not a traceback."""
    viewer, widget = stack_widget
    threshold = widget.peak_threshold.value
    widget.peak_threshold.value = widget.peak_threshold.max  # no peak passes
    run_frame(widget, viewer, qtbot, 0)
    assert not len(viewer.layers["t peaks"].data) and "t, plane 0: nothing found" in widget.last_message
    widget.peak_threshold.value = threshold
    run_frame(widget, viewer, qtbot, 1)
    assert "Plane 1 updated" in widget.last_message, widget.last_message
    labels, points, _, table = on_plane(viewer, 1)
    assert len(points) and labels.any() and len(table["label"])
    assert not on_plane(viewer, 0)[0].any() and not len(on_plane(viewer, 0)[1])


def test_labels_widened_to_uint32_leave_the_other_frames_uncorrected(stack_widget, qtbot):
    """A label painted at the top of uint16 on frame 2 makes the next frame's labels overflow it:
    the layer becomes uint32. Frame 0, which nobody touched, still holds no corrections (a re-run
    of it keeps no copy and says nothing was replaced); frame 2's paint is still the user's."""
    viewer, widget = stack_widget
    run_frame(widget, viewer, qtbot, 0)
    run_frame(widget, viewer, qtbot, 2)
    instances = viewer.layers["t instances"]
    assert instances.data.dtype == np.uint16
    data = instances.data.copy()
    data[2, :5, :5] = np.iinfo(np.uint16).max
    instances.data = data
    qtbot.wait(50)
    run_frame(widget, viewer, qtbot, 1)
    instances = viewer.layers["t instances"]
    assert instances.data.dtype == np.uint32 and instances.data[1].max() > np.iinfo(np.uint16).max
    run_frame(widget, viewer, qtbot, 0)
    assert "replaced" not in widget.last_message, widget.last_message
    assert not [layer.name for layer in viewer.layers if "corrected" in layer.name]
    assert (viewer.layers["t instances"].data[2, :5, :5] == np.iinfo(np.uint16).max).all()
    run_frame(widget, viewer, qtbot, 2)  # the painted frame: its corrections are kept as a copy
    assert "were replaced by this run" in widget.last_message
    assert (viewer.layers["t instances (corrected)"].data[2, :5, :5] == np.iinfo(np.uint16).max).all()


def test_a_point_placed_on_another_frame_during_a_run_is_retrieved(stack_widget, qtbot):
    """A point placed on frame 2 while frame 1 runs waits for the run to end; the run's layers keep
    it (frame 2 is not run), and its instance is retrieved then, as for a point placed after."""
    viewer, widget = stack_widget
    run_frame(widget, viewer, qtbot, 2)
    show_frame(viewer, qtbot, 1)
    assert widget.run() is not None
    viewer.layers["t peaks"].add([[2.0, 30.0, 35.0]])
    assert widget.worker is not None  # placed during the run
    qtbot.waitUntil(lambda: not widget.running and "Retrieved" in widget.last_message, timeout=60_000)
    peaks, instances = viewer.layers["t peaks"], viewer.layers["t instances"]
    (row,) = np.flatnonzero(peaks.features["hand_placed"].to_numpy())
    label = int(peaks.features["label"].iloc[row])
    assert peaks.data[row, 0] == 2 and label > 0, widget.last_message
    assert (instances.data[2] == label).any() and not (instances.data[[0, 1]] == label).any()
    assert label in features_table(instances.features)["label"]
    assert np.asarray(viewer.layers["t PRMs"].data[row])[2].sum() == pytest.approx(1.0, rel=1e-4)


def test_a_point_on_a_frame_of_another_model_leaves_that_model_s_maps_alone(stack_widget, qtbot, tmp_path):
    """Frame 0 run with model A, frame 1 with model B of the same classes (spliced), then a point added
    on frame 0 is retrieved with B, the run's model. Its forward pass must not be cached as A's: a
    later run of frame 0 with A finds the peaks A found the first time, not B's."""
    import torch

    from conftest import TINY_CLASSES
    from napari_prm import build_model, save_model

    viewer, widget = stack_widget
    model_a, thresholds = widget.model.value, (widget.class_threshold.value, widget.peak_threshold.value)

    def choose(model):  # a model's choice resets the thresholds to its own
        widget.select_model(str(model))
        qtbot.waitUntil(lambda: widget.classes_loaded, timeout=60_000)
        widget.class_threshold.value, widget.peak_threshold.value = thresholds

    torch.manual_seed(1)
    model_b = save_model(build_model("tiny", TINY_CLASSES, pretrained=False, input_size=(96, 96)),
                         tmp_path / "other.pt")
    widget.predictors.size = 1  # frame 1's maps push frame 0's out
    run_frame(widget, viewer, qtbot, 0)
    first = on_plane(viewer, 0)[1]
    assert len(first)
    choose(model_b)
    run_frame(widget, viewer, qtbot, 1)
    assert "Plane 1 updated" in widget.last_message
    show_frame(viewer, qtbot, 0)
    viewer.layers["t peaks"].add([[0.0, 30.0, 35.0]])
    qtbot.waitUntil(lambda: not widget.running and "Retrieved" in widget.last_message, timeout=60_000)
    choose(model_a)
    run_frame(widget, viewer, qtbot, 0)
    peaks = viewer.layers["t peaks"]
    found = np.asarray(peaks.data)[(peaks.data[:, 0] == 0) & ~peaks.features["hand_placed"].to_numpy(bool)]
    np.testing.assert_array_equal(found, first)


def test_a_rolled_view_is_refused_and_a_transposed_one_runs_the_plane_shown(stack_widget, qtbot):
    """With the view's axes rolled (napari's 'Roll dimensions' button), the 2-D view shows a (t, y)
    plane and the slider is on x; a run of "the current plane" ran the (y, x) frame the t slider was
    last on, which the view did not show. It is refused, saying how to put the view back; the
    transposed view (napari's 'Transpose' button: the frame shown as (x, y)) runs the frame shown."""
    viewer, widget = stack_widget
    show_frame(viewer, qtbot, 2)
    viewer.dims.roll()
    assert tuple(viewer.dims.displayed) == (0, 1)  # t and y shown, the slider on x
    assert widget.run() is None
    assert widget.last_message == (
        "cannot run on the current plane of 't': the view shows its axes 0 and 1, and a run works on planes "
        "of its last two axes, 1 and 2 (where the result layers place a plane's results). Roll the view's axes "
        "back with napari's 'Roll dimensions' button until it shows axes 1 and 2 (viewer.dims.order = "
        "(0, 1, 2)), or choose 'all planes'")
    assert "t instances" not in viewer.layers and not widget.can_rethreshold()

    viewer.dims.order = (0, 1, 2)
    viewer.dims.transpose()  # the frame shown as (x, y): still frame 2
    assert tuple(viewer.dims.displayed) == (2, 1)
    run_and_wait(widget, qtbot)
    assert "Plane 2 updated" not in widget.last_message and "t instances" in viewer.layers
    points = viewer.layers["t peaks"].data
    assert len(points) and set(points[:, 0]) == {2.0}
    labels = viewer.layers["t instances"].data
    assert labels[2].any() and not labels[[0, 1]].any()

    first = viewer.dims.ndim - 3  # the PRMs layer's peak axis is the viewer's first now
    viewer.dims.order = (*range(first), first + 1, first + 2, first)  # x and t shown: refused again
    viewer.dims.axis_labels = (*viewer.dims.axis_labels[:first], "t", "y", "x")  # named axes are named so
    assert widget.run() is None
    assert "the view shows its axes 2 (x) and 0 (t), and a run works on planes of its last two axes, 1 (y) and 2 (x)" \
        in widget.last_message
    assert f"viewer.dims.order = {tuple(range(first + 3))}" in widget.last_message
    widget.planes.value = "all planes"  # every frame: the view's axes do not matter
    run_and_wait(widget, qtbot)
    assert set(viewer.layers["t peaks"].data[:, 0]) == {0.0, 1.0, 2.0}


def test_a_rolled_view_with_a_layer_of_more_axes_names_the_axes_the_layer_has(stack_widget, qtbot):
    """With a layer of more axes open, the viewer's first axis is none of the stack's (its axes are
    the viewer's last three): a rolled view showing it was named the stack's axis "-1". The
    refusal names it as the viewer's axis, which the stack does not have, and the stack's axes
    from 0."""
    viewer, widget = stack_widget
    viewer.add_image(np.zeros((2, 3, 8, 8), np.float32), name="volume")  # a 4-D layer: the viewer has 4 axes
    widget.image.value = viewer.layers["t"]
    assert viewer.dims.ndim == 4
    viewer.dims.order = (2, 3, 0, 1)  # the viewer's axes 0 (volume's only) and 1 (the stack's t) shown
    assert widget.run() is None
    assert widget.last_message.startswith(
        "cannot run on the current plane of 't': the view shows the viewer's axis 0, which 't' does not have "
        "(another layer has more axes), and its axis 0, and a run works on planes of its last two axes, 1 and 2")
    assert "-1" not in widget.last_message
    assert "viewer.dims.order = (0, 1, 2, 3)" in widget.last_message
    viewer.dims.axis_labels = ("c", "t", "y", "x")
    viewer.dims.order = (3, 1, 2, 0)  # the stack's y and the viewer's c shown
    assert widget.run() is None
    assert ("the view shows the viewer's axis 0 (c), which 't' does not have (another layer has more axes), "
            "and its axis 1 (y), and a run works on planes of its last two axes, 1 (y) and 2 (x)"
            ) in widget.last_message
    assert "t instances" not in viewer.layers
