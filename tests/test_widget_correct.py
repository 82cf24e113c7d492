"""Correction tools of the "Peak Response Maps" widget, on the layers of a real run."""

import threading

import numpy as np
import pandas as pd
import pytest

from napari_prm.predict import image_to_crm
from test_widget_predict import (
    WAIT_MS,
    HeldRun,
    forward_counter,
    open_predict,
    peak_threshold_for,
    run_and_wait,
    run_tiny,
)


@pytest.fixture
def corrected(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """A run of the tiny model (3 peaks, no proposals) and two instances painted by hand."""
    viewer = make_napari_viewer()
    widget = run_tiny(viewer, qtbot, tiny_checkpoint, small_cat, "cat", 3)
    labels = viewer.layers["cat instances"]
    left = np.zeros(labels.data.shape, bool)
    left[20:60, 10:70] = True
    right = np.zeros(labels.data.shape, bool)
    right[30:50, 90:140] = True
    labels.data_setitem(np.nonzero(left), 1)  # napari's own paint path: emits `paint`
    labels.data_setitem(np.nonzero(right), 2)
    qtbot.waitUntil(lambda: len(labels.features) == 2)
    return viewer, widget, labels, viewer.layers["cat peaks"]


def rows(labels):
    return {int(r.label): (int(r.class_index), r.class_name) for r in labels.features.itertuples()}


def test_painting_keeps_the_table_in_step(corrected, qtbot):
    viewer, widget, labels, _ = corrected
    assert rows(labels) == {1: (-1, ""), 2: (-1, "")}
    assert labels.features["index"].tolist() == [1, 2]
    labels.data_setitem(np.nonzero(labels.data == 2), 0)  # erased by hand
    qtbot.waitUntil(lambda: rows(labels) == {1: (-1, "")})


def test_set_class_delete_and_undo_pixels(corrected, qtbot):
    viewer, widget, labels, _ = corrected
    panel = widget.correction
    labels.selected_label = 2
    assert panel.set_class_of_selected("bird")
    assert rows(labels)[2] == (2, "bird")
    assert panel.delete_selected()
    assert not np.any(labels.data == 2) and set(rows(labels)) == {1}
    labels.undo()  # the deletion went through napari's edit history
    assert np.count_nonzero(labels.data == 2) == 20 * 50
    qtbot.waitUntil(lambda: set(rows(labels)) == {1, 2})


def test_merge(corrected):
    viewer, widget, labels, _ = corrected
    labels.selected_label = 1
    assert widget.correction.merge_selected_with(2)
    assert np.count_nonzero(labels.data == 1) == 40 * 60 + 20 * 50
    assert set(rows(labels)) == {1}
    assert not widget.correction.merge_selected_with(5)
    assert "label 5" in widget.last_message



def test_merge_takes_the_instance_picked_before_never_a_stale_one(corrected, qtbot):
    """Shift-M merges the instance picked before the selected one. Right after a run the label the
    layer shows as selected (1) counts as picked (picking it again emits nothing); and after a new run,
    *other label* holds no label of the instances it replaced, which would be merged away unpicked."""
    viewer, widget, labels, _ = corrected
    panel = widget.correction
    assert labels.selected_label == 1  # napari's default: the user sees instance 1 selected
    labels.selected_label = 2  # picks instance 2: "merge the previously selected into the selected"
    assert panel.merge_with.value == 1
    assert panel.merge_previous_into_selected(), widget.last_message
    assert set(rows(labels)) == {2} and np.count_nonzero(labels.data == 2) == 40 * 60 + 20 * 50
    labels.undo()
    qtbot.waitUntil(lambda: set(rows(labels)) == {1, 2})

    labels.selected_label = 1  # picked 2, then 1: other label is 2
    assert panel.merge_with.value == 2
    rethreshold_and_wait(widget, qtbot)  # new instances: none (no proposals); paint three
    for label, (rows_, cols) in {1: ((0, 10), (0, 10)), 2: ((20, 30), (0, 10)), 3: ((40, 50), (0, 10))}.items():
        mask = np.zeros(labels.data.shape, bool)
        mask[slice(*rows_), slice(*cols)] = True
        labels.data_setitem(np.nonzero(mask), label)
    qtbot.waitUntil(lambda: set(rows(labels)) == {1, 2, 3})
    assert panel.merge_with.value == 0  # not the replaced layer's 2
    labels.selected_label = 3
    assert panel.merge_with.value == 1  # the label selected when the run ended
    assert panel.merge_previous_into_selected(), widget.last_message
    assert set(rows(labels)) == {2, 3}  # 2, never picked since the run, is left alone


def test_merge_with_no_instance_picked_before_says_what_to_do(corrected):
    viewer, widget, labels, _ = corrected
    labels.selected_label = 2
    before = labels.data.copy()
    assert not widget.correction.merge_selected_with(0)
    assert not widget.correction.merge_selected_with(2)
    np.testing.assert_array_equal(labels.data, before)
    assert "select the instance to merge away, then the one to keep" in widget.last_message


def test_split_at_a_drawn_line(corrected):
    viewer, widget, labels, _ = corrected
    labels.selected_label = 1
    shapes = widget.correction.draw_split_line()
    assert shapes.mode == "add_path" and viewer.layers.selection.active is shapes
    shapes.add_paths([np.array([[10.0, 40.0], [70.0, 40.0]])])
    assert widget.correction.split_selected()
    assert len(shapes.data) == 0
    assert np.count_nonzero(labels.data == 1) + np.count_nonzero(labels.data == 3) == 40 * 60
    assert np.all(labels.data[20:60, 10:40] == 3) or np.all(labels.data[20:60, 41:70] == 3)
    assert set(rows(labels)) == {1, 2, 3}
    # a line that misses every instance
    assert not widget.correction.split_selected(np.array([[90.0, 0.0], [90.0, 5.0]]))
    assert "crosses no instance" in widget.last_message


def test_draw_split_line_in_a_3d_view_says_to_switch_to_2d(corrected):
    """napari draws shapes in 2-D only: in a 3-D view *Draw split line* added the line layer, whose
    mode stayed pan/zoom, and said nothing, so no line could be drawn and nothing told why. It now
    says to switch the view to 2-D, and adds no layer."""
    viewer, widget, labels, _ = corrected
    labels.selected_label = 1
    viewer.dims.ndisplay = 3
    assert widget.correction.draw_split_line() is None
    assert "2-D view" in widget.last_message
    assert "cat split line" not in viewer.layers
    viewer.dims.ndisplay = 2
    shapes = widget.correction.draw_split_line()
    assert shapes.mode == "add_path" and shapes.name == "cat split line"


def test_remove_small(corrected):
    viewer, widget, labels, _ = corrected
    assert widget.correction.remove_small(20 * 50 + 1)
    assert set(np.unique(labels.data)) == {0, 1} and set(rows(labels)) == {1}
    assert widget.last_message == f"Removed 1 instance smaller than {20 * 50 + 1} pixels."  # was "1 instances"


def test_a_point_added_or_moved_gets_its_instance(make_napari_viewer, qtbot, prm_config,
                                                  tiny_checkpoint, small_cat):
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    candidates = np.zeros(small_cat.shape[:2], np.uint16)
    candidates[10:50, 10:60] = 1
    candidates[55:95, 80:140] = 2
    viewer.add_labels(candidates, name="candidates")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]  # a Labels layer of candidate masks
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    run_and_wait(widget, qtbot)
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    prms = viewer.layers["cat PRMs"]
    assert prms.data.shape[0] == 2
    predictor = widget.predictors.get(widget.context.predictor_keys[()])
    assert predictor.cached_peak_count == 2
    forwards, hook = forward_counter(widget.context.model)

    widget.correction.class_choice.value = "dog"
    peaks.add([[30.0, 35.0]])  # on candidate 1
    qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0,
                    timeout=60_000)
    # the image's cached maps: one backward pass, no forward pass
    assert predictor.cached_peak_count == 3 and not forwards
    added = peaks.features.iloc[-1]
    assert added["class_name"] == "dog" and added["peak"] == 2
    (y, x), = image_to_crm([[30.0, 35.0]], predictor.crms.shape[1:], predictor.image_shape,
                           predictor.settings.sub_pixel_locating_factor)
    assert added["peak_value"] == pytest.approx(float(predictor.crms[1, y, x]))  # its CRM value
    assert added["class_score"] == pytest.approx(float(predictor.scores[1]))  # as the run's peaks have
    assert added["runner_up_1"] == "" and np.isnan(added["runner_up_1_value"])
    label = int(added["label"])
    assert np.array_equal(instances.data == label, candidates == 1)
    row = instances.features[instances.features["label"] == label].iloc[0]
    assert row["class_name"] == "dog" and row["peak"] == 2
    assert prms.data.shape[0] == 3 and prms.data[2].sum() == pytest.approx(1.0, rel=1e-4)

    # selecting the point selects its instance, and back
    peaks.selected_data = set()
    instances.selected_label = 0
    peaks.selected_data = {len(peaks.data) - 1}
    assert instances.selected_label == label
    peaks.selected_data = set()
    instances.selected_label = 0
    instances.selected_label = label
    assert set(peaks.selected_data) == {len(peaks.data) - 1}

    data = peaks.data.copy()
    data[-1] = [75.0, 110.0]  # onto candidate 2
    peaks.data = data
    qtbot.waitUntil(lambda: not widget.running and np.array_equal(
        instances.data == label, candidates == 2), timeout=60_000)
    assert int(peaks.features["label"].iloc[-1]) == label  # the same instance, redone
    assert len(instances.features) == len(np.unique(instances.data)) - 1
    assert predictor.cached_peak_count == 4 and not forwards
    hook.remove()


def test_a_point_added_after_the_image_data_changed_is_not_retrieved_from_other_pixels(
        candidates_run, qtbot, small_cat):
    """A peak added once the image layer's data changed since the run is not retrieved on the new
    pixels (the run's instances are of the old ones): the point stays, unretrieved, and the panel
    says to press Run; no forward pass is made."""
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    before, count = instances.data.copy(), len(peaks.data)
    viewer.layers["cat"].data = small_cat[::-1].copy()
    forwards, hook = forward_counter(widget.context.model)
    try:
        peaks.add([[30.0, 35.0]])  # on candidate 1
        qtbot.waitUntil(lambda: "not retrieved" in (widget.last_message or ""), timeout=10_000)
    finally:
        hook.remove()
    assert not forwards and not widget.running
    assert "1 added or moved peak not retrieved: the image's data changed" in widget.last_message
    assert len(peaks.data) == count + 1 and int(peaks.features["label"].iloc[-1]) == 0
    np.testing.assert_array_equal(instances.data, before)


def _cat_run(make_napari_viewer, qtbot, checkpoint, small_cat):
    """A run of the tiny model on the small cat (2 peaks): the viewer, the widget, its predictor and peaks layer."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    widget = open_predict(viewer, qtbot, checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = peak_threshold_for(small_cat, checkpoint, 2)
    run_and_wait(widget, qtbot)
    return viewer, widget, widget.predictors.get(widget.context.predictor_keys[()]), viewer.layers["cat peaks"]


def _many_points() -> np.ndarray:
    """126 points on a 10-pixel grid over the small cat: one job of 126 backward passes when added at once."""
    return np.stack(np.meshgrid(np.arange(5, 95, 10.0), np.arange(5, 145, 10.0)), -1).reshape(-1, 2)


def test_adding_many_points_can_be_cancelled(make_napari_viewer, qtbot, prm_config, tiny_checkpoint,
                                             small_cat):
    viewer, widget, predictor, peaks = _cat_run(make_napari_viewer, qtbot, tiny_checkpoint, small_cat)
    widget.progressed.connect(lambda stage, done, total: (
        widget.activity.bar.cancel() if stage == "backprop" and done == 1 and widget.activity else None))
    grid = _many_points()
    peaks.add(grid)  # 126 points in one go: one job of 126 backward passes
    qtbot.waitUntil(lambda: widget.worker is None and not widget.running, timeout=WAIT_MS)
    assert "Cancelled" in widget.last_message
    assert 2 < predictor.cached_peak_count < 2 + len(grid)
    assert (peaks.features["label"].iloc[2:] == 0).all()


def test_closing_napari_stops_the_retrieval_of_added_points(make_napari_viewer, qtbot, prm_config,
                                                            tiny_checkpoint, small_cat):
    """Closing (or quitting) napari asks its workers to quit: the panel's retrieval of added points
    ignored that and went on to its last point (napari waiting for it when it quits), its result
    dropped. It now stops as *Cancel* does, and nothing more is retrieved."""

    viewer, widget, predictor, peaks = _cat_run(make_napari_viewer, qtbot, tiny_checkpoint, small_cat)
    window = viewer.window._qt_window  # held: its Qt widgets are deleted later, as when napari quits
    run = HeldRun(widget)
    grid = _many_points()
    peaks.add(grid)  # 126 points in one go: one job of 126 backward passes
    worker = widget.correction.worker
    assert worker is not None
    run.close_napari(viewer, qtbot)
    qtbot.waitUntil(lambda: not worker.is_running and widget.correction.worker is None, timeout=WAIT_MS)
    qtbot.wait(50)
    assert 2 < predictor.cached_peak_count < 2 + len(grid)  # stopped before the last point
    assert (peaks.features["label"].iloc[2:] == 0).all()
    del window


def test_points_added_one_after_another_get_their_own_peaks(candidates_run, qtbot):
    """Setting the peaks' features resets napari's defaults for new points: the panel puts
    the chosen class's defaults back, so each click is a new peak (not a copy of the last)."""
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    widget.correction.class_choice.value = "bird"
    for count, yx in enumerate(([30.0, 35.0], [75.0, 110.0]), start=1):
        peaks.add([yx])
        qtbot.waitUntil(lambda count=count: not widget.running and len(instances.features) == count,
                        timeout=WAIT_MS)
    assert peaks.features["peak"].tolist() == [0, 1]
    assert peaks.features["class_name"].tolist() == ["bird", "bird"]
    first, second = peaks.features["label"].tolist()
    assert np.array_equal(instances.data == first, candidates == 1)
    assert np.array_equal(instances.data == second, candidates == 2)
    assert peaks.feature_defaults["peak"].iloc[0] == -1


def rethreshold_and_wait(widget, qtbot):
    assert widget.rethreshold() is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)


def test_corrections_are_kept_when_a_rethreshold_replaces_them(corrected, qtbot):
    """Painted instances and a class set by hand survive a Re-threshold: the instances layer
    gets the new result, and a hidden copy holds the corrections, pixel for pixel."""
    viewer, widget, labels, _ = corrected
    labels.selected_label = 1
    assert widget.correction.set_class_of_selected("dog")
    edited, table = labels.data.copy(), rows(labels)
    assert table == {1: (1, "dog"), 2: (-1, "")}

    rethreshold_and_wait(widget, qtbot)
    kept = viewer.layers["cat instances (corrected)"]
    np.testing.assert_array_equal(kept.data, edited)
    assert kept.data.dtype == edited.dtype and rows(kept) == table
    metadata = dict(kept.metadata)
    assert metadata.pop("napari_prm")["role"] == "kept"  # the plugin's mark: a copy kept, not the instances
    assert metadata == {"class_names": ["cat", "dog", "bird"], "image_layer": "cat", "image_file_name": "cat"}
    assert not kept.visible
    # the instances layer holds the run's result (no proposals: no instances) and no copy else
    assert viewer.layers["cat instances"] is labels and not labels.data.any() and len(labels.features) == 0
    assert [layer.name for layer in viewer.layers].count("cat instances (corrected)") == 1
    assert "kept as 'cat instances (corrected)'" in widget.last_message

    # unedited since: a second re-threshold keeps nothing more
    rethreshold_and_wait(widget, qtbot)
    assert [layer.name for layer in viewer.layers if "corrected" in layer.name] == ["cat instances (corrected)"]
    assert "kept" not in widget.last_message

    # edited again: the next copy is numbered and the first one is left as it was
    labels.data_setitem(np.nonzero(np.ones(labels.data.shape, bool)[:, :5]), 4)
    qtbot.waitUntil(lambda: set(rows(labels)) == {4})
    second = labels.data.copy()
    run_and_wait(widget, qtbot)
    np.testing.assert_array_equal(viewer.layers["cat instances (corrected 2)"].data, second)
    np.testing.assert_array_equal(viewer.layers["cat instances (corrected)"].data, edited)
    assert rows(viewer.layers["cat instances (corrected 2)"]) == {4: (-1, "")}
    assert "kept as 'cat instances (corrected 2)'" in widget.last_message


def test_the_hidden_copy_of_corrections_does_not_take_the_layer_selection(corrected, qtbot):
    """A Re-threshold that keeps the corrections leaves the layer the user works on selected:
    the next key goes to the instances layer, not to the hidden copy."""
    viewer, widget, labels, _ = corrected
    viewer.layers.selection.active = labels
    rethreshold_and_wait(widget, qtbot)
    assert "cat instances (corrected)" in viewer.layers
    assert viewer.layers.selection.active is labels
    assert set(viewer.layers.selection) == {labels}


def test_an_unedited_run_keeps_no_copy_and_a_class_change_alone_is_kept(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat, tmp_path):
    """Runs with instances on a scaled image: re-running unedited instances (after napari
    refreshed the layer, which brings the table in line with the pixels) keeps no copy; a
    class changed by hand, with no pixel changed, is kept, placed where the instances are,
    and the copy is a layer export and *Learn from corrections* take."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat", scale=(0.5, 2.0), translate=(10.0, -4.0))
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = "prm"
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    run_and_wait(widget, qtbot)
    labels = viewer.layers["cat instances"]
    assert labels.data.any()
    names = [layer.name for layer in viewer.layers]
    labels.refresh()  # napari re-slices (visibility, dims): the panel syncs the table
    qtbot.wait(50)
    run_and_wait(widget, qtbot)
    rethreshold_and_wait(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == names
    assert "kept" not in widget.last_message

    first = int(labels.features["label"].iloc[0])
    labels.selected_label = first
    old_class = rows(labels)[first][1]
    new_class = next(name for name in ("cat", "dog", "bird") if name != old_class)
    edited = labels.data.copy()
    assert widget.correction.set_class_of_selected(new_class)
    table = rows(labels)
    rethreshold_and_wait(widget, qtbot)
    kept = viewer.layers["cat instances (corrected)"]
    np.testing.assert_array_equal(kept.data, edited)
    assert rows(kept) == table and table[first][1] == new_class
    pixels = np.array([[0.0, 0.0], [99.0, 150.0]])
    np.testing.assert_allclose([kept.data_to_world(p) for p in pixels],
                               [labels.data_to_world(p) for p in pixels])
    assert rows(labels)[first][1] == old_class  # the run's own classes

    _, export = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    export.reset_choices()
    export._layer.value = kept
    (csv,) = export.export(tmp_path, formats=["csv"])
    assert csv.name == "cat_instances.csv"  # named after the image, as the run's own layer
    exported = pd.read_csv(csv)
    assert dict(zip(exported["id"], exported["class"])) == {
        label: name for label, (_, name) in table.items()}
    _, refine = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections", tabify=True)
    refine.reset_choices()
    assert "cat instances (corrected)" in [layer.name for _, layer in refine._labels_choices()]


def test_what_counts_as_a_correction_of_a_written_layer():
    """The plugin's record of what it wrote: the table brought in line with unchanged pixels
    (a row whose instance is hidden under another dropped) is no correction; a class set, a
    pixel painted, are; a layer the plugin never wrote is the user's once it holds a label."""
    from napari.layers import Labels

    from napari_prm._widgets.layers import has_corrections, instance_features, remember_written
    from napari_prm.edit import sync_table

    data = np.zeros((20, 30), np.uint16)
    data[2:8, 3:9], data[10:15, 10:20] = 1, 2  # label 3: its instance lies under label 2
    table = {"label": np.array([1, 2, 3]), "class_index": np.array([0, 1, 1]),
             "class_name": np.array(["cat", "dog", "dog"], object), "score": np.array([0.9, 0.5, 0.4]),
             "peak": np.array([0, 1, 2])}
    layer = Labels(data.copy(), features=instance_features(table))
    assert has_corrections(layer)  # not written by the plugin, and it holds labels
    assert not has_corrections(Labels(np.zeros((4, 4), np.uint16)))
    remember_written(layer)
    assert not has_corrections(layer)
    layer.features = instance_features(sync_table(layer.data, table))
    assert len(layer.features) == 2 and not has_corrections(layer)
    reclassed = instance_features(table).copy()  # its columns may share the arrays of `table`
    reclassed.loc[0, "class_name"] = "bird"
    layer.features = reclassed
    assert has_corrections(layer)
    layer.features = instance_features(table)
    assert not has_corrections(layer)
    layer.data_setitem((np.array([0]), np.array([0])), 5)
    assert has_corrections(layer)
    layer.data_setitem((np.array([0]), np.array([0])), 0)  # undone by hand: as written
    assert not has_corrections(layer)


def test_a_point_on_a_plane_the_model_cannot_take_is_reported_once(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """A point added on a plane of a stack that the run did not cover and that holds NaN (a
    registration's border): its retrieval fails in the worker; the panel says so, once, and
    nothing is re-raised on the Qt thread (pytest-qt fails the test if it is)."""
    viewer = make_napari_viewer()
    gray = small_cat.mean(axis=-1).astype(np.float32)
    second = gray.copy()
    second[:5] = np.nan
    viewer.add_image(np.stack([gray, second]), name="stack")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = "prm"
    widget.peak_threshold.value = peak_threshold_for(gray, tiny_checkpoint, 2)
    run_and_wait(widget, qtbot)  # the current plane: 0
    peaks = viewer.layers["stack peaks"]
    before = viewer.layers["stack instances"].data.copy()
    peaks.add([[1.0, 40.0, 50.0]])
    qtbot.waitUntil(lambda: "Retrieval failed" in widget.last_message, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert "NaN" in widget.last_message
    np.testing.assert_array_equal(viewer.layers["stack instances"].data, before)
    assert widget.run_button.isEnabled()


# ---------------------------------------------------------------------- hand-placed peaks kept
def hand_rows(peaks):
    """Rows of the peaks layer marked as placed by hand (none without the marker column)."""
    features = peaks.features
    if "hand_placed" not in features:
        return features.iloc[:0]
    return features[features["hand_placed"].to_numpy(bool)]


def assert_hand_peak(peaks, instances, yx, class_name):
    """One hand-placed peak at ``yx`` (data coordinates), of ``class_name``, its instance under it."""
    hand = hand_rows(peaks)
    assert len(hand) == 1, peaks.features
    row = hand.index[0]
    np.testing.assert_allclose(peaks.data[peaks.features.index.get_loc(row)], yx)
    assert hand["class_name"].iloc[0] == class_name
    label = int(hand["label"].iloc[0])
    assert label > 0 and instances.data[int(yx[0]), int(yx[1])] == label
    table = instances.features
    assert table.loc[table["label"] == label, "class_name"].tolist() == [class_name]
    assert table.loc[table["label"] == label, "peak"].tolist() == [int(hand["peak"].iloc[0])]
    return label


@pytest.fixture
def candidates_run(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """The tiny model on the cat with two candidate masks as proposals, and no peaks of its own."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    candidates = np.zeros(small_cat.shape[:2], np.uint16)
    candidates[10:50, 10:60] = 1
    candidates[55:95, 80:140] = 2
    viewer.add_labels(candidates, name="candidates")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.peak_threshold.value = 9999.0
    run_and_wait(widget, qtbot)
    return viewer, widget, candidates


def test_a_hand_placed_peak_survives_rethreshold_and_run_but_not_another_image(
        candidates_run, qtbot, tiny_checkpoint, small_cat):
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    widget.correction.class_choice.value = "dog"
    peaks.add([[30.0, 35.0]])  # on candidate 1
    qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")

    # re-threshold, now with peaks of the model's own: the hand-placed one is re-retrieved
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    rethreshold_and_wait(widget, qtbot)
    assert viewer.layers["cat peaks"] is peaks and len(peaks.data) >= 2
    label = assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")
    assert np.array_equal(instances.data == label, candidates == 1)
    assert "1 hand-placed peak" in widget.last_message
    hand = int(hand_rows(peaks)["peak"].iloc[0])
    prms = viewer.layers["cat PRMs"]
    assert prms.data.shape[0] == len(peaks.data) and prms.data[hand].sum() == pytest.approx(1.0, rel=1e-4)
    model_rows = peaks.features[~peaks.features["hand_placed"].to_numpy(bool)]
    assert len(model_rows) == len(peaks.data) - 1

    # Run again on the same image
    run_and_wait(widget, qtbot)
    assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")
    assert "1 hand-placed peak" in widget.last_message

    # another image: nothing carried over
    viewer.add_image(np.ascontiguousarray(small_cat[::-1]), name="flipped")
    widget.image.value = viewer.layers["flipped"]
    run_and_wait(widget, qtbot)
    assert len(hand_rows(viewer.layers["flipped peaks"])) == 0
    assert "hand-placed" not in widget.last_message
    assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")  # the cat's layers as they were

    # back to the cat: its hand-placed peak is still kept
    widget.image.value = viewer.layers["cat"]
    run_and_wait(widget, qtbot)
    assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")


def test_a_rethreshold_keeping_a_hand_placed_peak_says_its_notes_as_sentences(candidates_run, qtbot):
    """The model's peaks all under the threshold and one placed by hand kept: the library's note on
    the peak threshold ran into the next, "...lower peak_threshold to see it 1 hand-placed peak kept"
    (only the "Nothing found" message gave the library's notes a full stop)."""
    viewer, widget, _ = candidates_run
    peaks = viewer.layers["cat peaks"]
    widget.correction.class_choice.value = "dog"
    peaks.add([[30.0, 35.0]])
    qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    rethreshold_and_wait(widget, qtbot)  # peak threshold 9999: the hand-placed peak alone
    assert len(peaks.data) == 1
    message = widget.last_message
    assert "No peak reached the peak threshold " in message
    assert " to see it. 1 hand-placed peak kept (re-retrieved)." in message, message


def test_a_point_added_to_an_image_run_before_another_gets_its_instance_there(candidates_run, qtbot, small_cat):
    """Back on the first image of a folder after running the second, a point added to its peaks
    layer is retrieved on its image, into its instances layer."""
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    viewer.add_image(np.ascontiguousarray(small_cat[::-1]), name="flipped")
    widget.image.value = viewer.layers["flipped"]
    run_and_wait(widget, qtbot)
    flipped = viewer.layers["flipped instances"]
    flipped_pixels = np.array(flipped.data)

    viewer.layers.selection.active = peaks
    widget.correction.class_choice.value = "dog"
    peaks.add([[30.0, 35.0]])  # on the cat's candidate 1
    qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    label = assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")
    assert np.array_equal(instances.data == label, candidates == 1)
    np.testing.assert_array_equal(flipped.data, flipped_pixels)
    assert len(viewer.layers["flipped peaks"].data) == 0


def test_a_moved_peak_is_kept_where_it_was_put_and_not_doubled(candidates_run, qtbot, tiny_checkpoint,
                                                                small_cat):
    """A model's peak moved by hand stays where it was put; the model's peak it was moved
    from is not selected again beside it."""
    viewer, widget, candidates = candidates_run
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    run_and_wait(widget, qtbot)
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    assert len(peaks.data) == 2
    origin = peaks.data[0].copy()
    class_name = peaks.features["class_name"].iloc[0]
    data = peaks.data.copy()
    data[0] = [75.0, 110.0]  # onto candidate 2
    peaks.data = data
    qtbot.waitUntil(lambda: not widget.running and instances.data[75, 110] == peaks.features["label"].iloc[0]
                    and peaks.features["label"].iloc[0] > 0, timeout=WAIT_MS)
    assert_hand_peak(peaks, instances, [75.0, 110.0], class_name)

    rethreshold_and_wait(widget, qtbot)
    assert len(peaks.data) == 2
    assert_hand_peak(peaks, instances, [75.0, 110.0], class_name)
    assert not any(np.allclose(point, origin) for point in peaks.data)
    assert "1 hand-placed peak" in widget.last_message


def test_hand_placed_peaks_follow_a_model_with_their_class(candidates_run, qtbot, tmp_path):
    """Another model: a hand-placed peak is kept when the model has its class (by name),
    and dropped, with a message naming the class, when it does not."""
    import torch

    from napari_prm import build_model, save_model

    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    for class_name, yx in (("dog", [30.0, 35.0]), ("bird", [75.0, 110.0])):
        widget.correction.class_choice.value = class_name
        peaks.add([yx])
        qtbot.waitUntil(lambda: not widget.running and (peaks.features["label"] > 0).all(), timeout=WAIT_MS)
    torch.manual_seed(1)
    other = save_model(build_model("tiny", ["fox", "bird", "cat"], pretrained=False, input_size=(96, 96)),
                       tmp_path / "other.pt")
    widget.select_model(str(other))
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=WAIT_MS)
    run_and_wait(widget, qtbot)
    assert_hand_peak(peaks, instances, [75.0, 110.0], "bird")
    assert int(hand_rows(peaks)["class_index"].iloc[0]) == 1
    assert "1 hand-placed peak" in widget.last_message
    assert "'dog'" in widget.last_message


def test_points_placed_moved_or_deleted_by_hand_during_a_run_are_what_it_keeps(candidates_run, qtbot, tiny_checkpoint,
                                                                               small_cat):
    """The run replaces the peaks layer when it ends: a point added while it ran was lost, a
    hand-placed point moved meanwhile went back to where it was, and one deleted came back."""
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    widget.correction.class_choice.value = "dog"
    assert widget.run() is not None
    peaks.add([[30.0, 35.0]])  # while the run goes on (its results are shown on the Qt thread)
    qtbot.waitUntil(lambda: not widget.running and len(hand_rows(peaks)) == 1
                    and hand_rows(peaks)["label"].iloc[0] > 0, timeout=WAIT_MS)
    label = assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")
    assert np.array_equal(instances.data == label, candidates == 1)
    assert len(peaks.data) == 3  # the model's two peaks and the added one

    # moved while a re-threshold runs: kept where it was put, once
    hand = peaks.features.index.get_loc(hand_rows(peaks).index[0])
    assert widget.rethreshold() is not None
    data = peaks.data.copy()
    data[hand] = [75.0, 110.0]
    peaks.data = data
    qtbot.waitUntil(lambda: not widget.running and len(hand_rows(peaks)) == 1
                    and hand_rows(peaks)["label"].iloc[0] > 0, timeout=WAIT_MS)
    assert_hand_peak(peaks, instances, [75.0, 110.0], "dog")
    assert len(peaks.data) == 3 and not any(np.allclose(point, [30.0, 35.0]) for point in peaks.data)

    # deleted while a re-threshold runs: gone
    hand = peaks.features.index.get_loc(hand_rows(peaks).index[0])
    assert widget.rethreshold() is not None
    peaks.selected_data = {hand}
    peaks.remove_selected()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert len(hand_rows(peaks)) == 0 and len(peaks.data) == 2
    assert "hand-placed" not in widget.last_message


def test_a_model_peak_moved_during_a_rethreshold_is_kept_where_it_was_put_and_not_doubled(
        candidates_run, qtbot, tiny_checkpoint, small_cat):
    viewer, widget, candidates = candidates_run
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    run_and_wait(widget, qtbot)
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    origin, class_name = peaks.data[0].copy(), peaks.features["class_name"].iloc[0]
    assert widget.rethreshold() is not None
    data = peaks.data.copy()
    data[0] = [75.0, 110.0]  # onto candidate 2, while the re-threshold goes on
    peaks.data = data
    qtbot.waitUntil(lambda: not widget.running and len(hand_rows(peaks)) == 1
                    and hand_rows(peaks)["label"].iloc[0] > 0, timeout=WAIT_MS)
    assert len(peaks.data) == 2 and not any(np.allclose(point, origin) for point in peaks.data)
    assert_hand_peak(peaks, instances, [75.0, 110.0], class_name)
    rethreshold_and_wait(widget, qtbot)  # where it came from is remembered: still not doubled
    assert len(peaks.data) == 2 and not any(np.allclose(point, origin) for point in peaks.data)
    assert_hand_peak(peaks, instances, [75.0, 110.0], class_name)


def test_a_point_taken_away_takes_its_prm_and_brings_it_back(candidates_run, qtbot):
    """A point deleted, or taken away by Ctrl+Z of its instance, left its PRM in the PRMs layer
    until the next Run. The layer's slices now follow the peaks layer's rows."""
    viewer, widget, _ = candidates_run
    peaks, labels = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    widget.correction.class_choice.value = "dog"
    for where in ([30.0, 35.0], [75.0, 110.0]):
        peaks.add([where])
        qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    prms = viewer.layers["cat PRMs"]
    first, second = (np.asarray(prms.data[k]) for k in range(2))
    assert prms.data.shape[0] == 2 and first.sum() == pytest.approx(1.0, rel=1e-4)
    assert not np.allclose(first, second)

    peaks.selected_data = {0}
    peaks.remove_selected()  # the first point, deleted
    assert peaks.features["peak"].tolist() == [1]
    assert prms.data.shape[0] == 1 and np.allclose(np.asarray(prms.data[0]), second)

    labels.undo()  # the second point's instance: the point goes, and its PRM
    qtbot.waitUntil(lambda: len(peaks.data) == 0, timeout=5000)
    assert "cat PRMs" not in viewer.layers
    labels.redo()
    qtbot.waitUntil(lambda: len(peaks.data) == 1, timeout=5000)
    prms = viewer.layers["cat PRMs"]
    assert prms.data.shape[0] == 1 and np.allclose(np.asarray(prms.data[0]), second)
    names = [layer.name for layer in viewer.layers]
    assert names.index("cat PRMs") < names.index("cat instances")  # under the instances, as a run puts it


def test_a_point_added_to_one_image_while_another_runs_gets_its_instance(candidates_run, qtbot, small_cat):
    """A point added to the cat's peaks layer while a run of another image goes on waits for
    that run; the run's end (which makes the other image's run the one worked on) must not
    drop it: it is retrieved on the cat."""
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    viewer.add_image(np.ascontiguousarray(small_cat[::-1]), name="flipped")
    widget.image.value = viewer.layers["flipped"]
    widget.correction.class_choice.value = "dog"
    assert widget.run() is not None
    peaks.add([[30.0, 35.0]])  # on the cat's candidate 1, while the flipped image runs
    qtbot.waitUntil(lambda: "flipped instances" in viewer.layers and not widget.running
                    and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    label = assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")
    assert np.array_equal(instances.data == label, candidates == 1)
    assert len(viewer.layers["flipped peaks"].data) == 0


def test_the_panel_is_enabled_again_on_a_run_left_after_the_run_worked_on_is_removed(
        candidates_run, qtbot, small_cat):
    """Removing the instances layer of the run worked on disables the panel's tools (its class picker
    serves the peaks layer left); selecting a layer of another image's run works on that run, buttons
    included."""
    viewer, widget, _ = candidates_run
    viewer.add_image(np.ascontiguousarray(small_cat[::-1]), name="flipped")
    widget.image.value = viewer.layers["flipped"]
    run_and_wait(widget, qtbot)
    viewer.layers.remove("flipped instances")
    assert not widget.correction.tools_enabled
    viewer.layers.selection.active = viewer.layers["cat instances"]
    assert widget.correction.instances is viewer.layers["cat instances"]
    assert widget.correction.tools_enabled


def run_cat_with_proposals(viewer, qtbot, tiny_checkpoint, small_cat, proposals):
    """The tiny model's 3 strongest peaks on the cat, with these proposals: the viewer, the widget
    and the run's instances and peaks layers."""
    viewer.add_image(small_cat, name="cat")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = proposals
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    run_and_wait(widget, qtbot)
    return viewer, widget, viewer.layers["cat instances"], viewer.layers["cat peaks"]


def press_shift_a(widget, qtbot):
    """Shift-A on the selected instance, as a user presses it: a press that begins a cycle finds the
    alternatives in the panel's worker, shown when it is done (the press returns None and the panel
    runs meanwhile). Returns the position shown (0: its own), None when refused."""
    panel = widget.correction
    position = panel.next_alternative_of_selected()
    if position is None and panel.running:
        qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
        return 1 if "alternative mask 1/" in widget.last_message else None
    return position


def library_alternatives(checkpoint, image, labels, peaks, peak_threshold, plane=()):
    """What the library, on its own, gives the run's instances of ``plane`` for Shift-A: {label: [the
    mask of its peak predicted again, *its alternatives]}, for those with alternatives."""
    import napari_prm
    from napari_prm import load_model

    predictor = napari_prm.PRMPredictor(load_model(checkpoint), peak_threshold=peak_threshold)
    predictor.set_image(image)
    found = {}
    for row in labels.features.itertuples():
        point = peaks.data[peaks.features["peak"].to_numpy() == row.peak][0]
        if tuple(np.round(point[:len(plane)]).astype(int)) != tuple(plane):
            continue
        instances = predictor.predict(points=(point[None, len(plane):], [int(row.class_index)]), alternatives=3,
                                      peak_threshold=peak_threshold).instances
        if instances and instances[0].alternatives:
            found[int(row.label)] = [instances[0].mask, *predictor.alternative_masks(instances[0])]
    return found


def iou(a, b) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def test_next_alternative_mask_cycles_and_undoes(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """Shift-A gives the selected instance the proposals its peak also fits, larger around its mask or
    smaller inside it, as the library gives them (`PRMPredictor.alternative_masks`), then its own
    mask back; each step is one undo step; an instance painted by hand has none."""
    viewer, widget, labels, peaks = run_cat_with_proposals(make_napari_viewer(), qtbot, tiny_checkpoint, small_cat,
                                                           "default")
    # the library, on its own: each peak's alternatives, as masks
    expected = library_alternatives(tiny_checkpoint, small_cat, labels, peaks, widget.peak_threshold.value)
    label = next(iter(expected), None)
    assert label is not None, "no instance of the run has an alternative mask"
    own = labels.data == label
    choices = [m for m in expected[label] if not np.array_equal(m, own)]
    labels.selected_label = label
    shown = []
    for _ in choices:
        position = press_shift_a(widget, qtbot)
        shown.append(labels.data == label)
        assert position == len(shown)
        assert f"alternative mask {position}/{len(choices)}" in widget.last_message
    for mask, choice in zip(shown, choices):
        np.testing.assert_array_equal(mask, choice)
    # all nest with the run's mask, but for the peak's own mask predicted again when it is not the run's
    for mask in shown if np.array_equal(expected[label][0], own) else shown[1:]:
        inter = np.count_nonzero(mask & own)
        small, large = sorted((np.count_nonzero(mask), np.count_nonzero(own)))
        assert inter >= 0.8 * small and large >= 1.5 * small  # nested with the run's mask
    assert press_shift_a(widget, qtbot) == 0  # back to its own
    np.testing.assert_array_equal(labels.data == label, own)
    assert "its own mask again" in widget.last_message
    assert press_shift_a(widget, qtbot) == 1
    labels.undo()  # one undo step each
    np.testing.assert_array_equal(labels.data == label, own)
    # Ctrl+Z moves the cycle back with the mask: the next press gives the one after the mask shown
    # (it began a new cycle from the mask undone to, its first "alternative" the run's own mask)
    assert len(choices) > 1
    assert press_shift_a(widget, qtbot) == 1 and press_shift_a(widget, qtbot) == 2
    labels.undo()
    np.testing.assert_array_equal(labels.data == label, choices[0])
    assert press_shift_a(widget, qtbot) == 2
    np.testing.assert_array_equal(labels.data == label, choices[1])
    assert f"alternative mask 2/{len(choices)}" in widget.last_message
    labels.undo()
    labels.undo()
    np.testing.assert_array_equal(labels.data == label, own)
    # an instance painted by hand has no peak to take alternatives from
    painted = np.zeros(labels.data.shape, bool)
    painted[:5, :5] = True
    labels.data_setitem(np.nonzero(painted), 99)
    qtbot.waitUntil(lambda: 99 in labels.features["label"].tolist())
    labels.selected_label = 99
    assert press_shift_a(widget, qtbot) is None
    assert "Instance 99 has no peak" in widget.last_message


def test_next_alternative_mask_of_prm_guided_proposals(make_napari_viewer, qtbot, prm_config, tiny_checkpoint,
                                                       small_cat):
    """With PRM-guided proposals (made from the PRMs), Shift-A gives the masks the library gives
    for the peak (`alternative_masks(instance, prediction)`); it raised a ValueError asking for
    the PRMs, out of the Qt event loop."""
    import napari_prm
    from napari_prm import load_model

    viewer, widget, labels, peaks = run_cat_with_proposals(make_napari_viewer(), qtbot, tiny_checkpoint, small_cat,
                                                           "prm")
    predictor = napari_prm.PRMPredictor(load_model(tiny_checkpoint), proposals="prm",
                                        peak_threshold=widget.peak_threshold.value)
    predictor.set_image(small_cat)
    expected = {}
    for row in labels.features.itertuples():
        point = peaks.data[peaks.features["peak"].to_numpy() == row.peak][0]
        prediction = predictor.predict(points=(point[None], [int(row.class_index)]), alternatives=3)
        if prediction.instances and prediction.instances[0].alternatives:
            found = prediction.instances[0]
            expected[int(row.label)] = [found.mask, *predictor.alternative_masks(found, prediction)]
    label = next(iter(expected), None)
    assert label is not None, "no instance of the run has an alternative mask"
    own = labels.data == label
    choices = [m for m in expected[label] if not np.array_equal(m, own)]
    labels.selected_label = label
    for position, choice in enumerate(choices, 1):
        assert press_shift_a(widget, qtbot) == position
        np.testing.assert_array_equal(labels.data == label, choice)
    assert press_shift_a(widget, qtbot) == 0
    np.testing.assert_array_equal(labels.data == label, own)


def test_next_alternative_mask_of_a_learnt_head_says_it_has_none(make_napari_viewer, qtbot, prm_config, tmp_path,
                                                                 small_cat, shapes_scenes):
    """The learnt head (proposals "refined") cuts one mask per peak: Shift-A says so, and what to
    choose instead (it said that no proposal nests with the mask, as if there had been some)."""
    import torch

    from conftest import TINY_CLASSES
    from napari_prm import build_model, save_model
    from napari_prm.refine import Correction, refine

    torch.manual_seed(0)
    model = build_model("tiny", TINY_CLASSES, pretrained=False, input_size=(96, 96))
    image, truth, classes, _ = shapes_scenes[0]
    head = refine(model, corrections=[Correction(image, truth, classes, "scene")], epochs=1, batch_size=4,
                  device="cpu").model
    path = save_model(head, tmp_path / "head.pt")
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    widget = open_predict(viewer, qtbot, path)
    widget.proposals.value = "refined"
    widget.peak_threshold.value = peak_threshold_for(small_cat, path, 2)
    run_and_wait(widget, qtbot)
    labels = viewer.layers["cat instances"]
    assert len(labels.features), widget.last_message
    before = labels.data.copy()
    labels.selected_label = int(labels.features["label"].iloc[0])
    assert press_shift_a(widget, qtbot) is None
    assert "has no alternative masks: the learnt head (refined) cuts one mask per peak" in widget.last_message
    assert "Choose built-in or PRM-guided proposals" in widget.last_message
    np.testing.assert_array_equal(labels.data, before)


def test_next_alternative_mask_on_a_plane_of_a_stack(make_napari_viewer, qtbot, prm_config, tiny_checkpoint,
                                                     small_cat):
    """Shift-A on an instance of a stack's second plane changes that plane only: its alternatives are
    those of that plane's image, and what the label holds on another plane (painted there) stays."""
    viewer = make_napari_viewer()
    stack = np.stack([small_cat[::-1], small_cat])
    viewer.add_image(stack, name="stack", rgb=True)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = "default"
    widget.planes.value = "all planes"
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    run_and_wait(widget, qtbot)
    labels, peaks = viewer.layers["stack instances"], viewer.layers["stack peaks"]
    found = library_alternatives(tiny_checkpoint, small_cat, labels, peaks, widget.peak_threshold.value, (1,))
    assert found, "no instance of the second plane has an alternative mask"
    label, expected = next(iter(found.items()))
    painted = np.zeros(labels.data.shape, bool)
    painted[0, :4, :4] = True  # the label painted on the first plane too
    labels.data_setitem(np.nonzero(painted), label)
    own = labels.data[1] == label
    first = next(m for m in expected if not np.array_equal(m, own))
    before = labels.data[0].copy()
    labels.selected_label = label
    assert press_shift_a(widget, qtbot) == 1, widget.last_message
    np.testing.assert_array_equal(labels.data[1] == label, first)
    np.testing.assert_array_equal(labels.data[0], before)


def test_next_alternative_mask_is_found_in_a_worker(make_napari_viewer, qtbot, prm_config, tiny_checkpoint,
                                                    small_cat, monkeypatch):
    """The first press of Shift-A finds the alternatives in the panel's worker (the viewer does not wait
    for the backward pass) and shows the first when done, as one undo step; a press meanwhile starts no
    second worker; the masks go to the instance selected when pressed, and are dropped (said so) when
    that instance, or its layer, is gone meanwhile."""
    viewer, widget, labels, peaks = run_cat_with_proposals(make_napari_viewer(), qtbot, tiny_checkpoint, small_cat,
                                                           "default")
    panel = widget.correction
    expected = library_alternatives(tiny_checkpoint, small_cat, labels, peaks, widget.peak_threshold.value)
    label = next(iter(expected), None)
    assert label is not None, "no instance of the run has an alternative mask"
    own = labels.data == label
    first = next(m for m in expected[label] if not np.array_equal(m, own))
    painted = np.zeros(labels.data.shape, bool)
    painted[:5, :5] = True
    assert not np.any(labels.data[painted])
    labels.data_setitem(np.nonzero(painted), 99)  # an instance painted by hand
    qtbot.waitUntil(lambda: 99 in labels.features["label"].tolist())
    before = labels.data.copy()
    labels.selected_label = label
    assert panel.next_alternative_of_selected() is None
    worker = panel.worker
    assert worker is not None and widget.running
    assert widget.status.text() == f"Finding the alternative masks of instance {label}…"
    np.testing.assert_array_equal(labels.data, before)  # nothing shown yet
    # pressed again (or on another instance) while it runs: no second worker
    assert panel.next_alternative_of_selected() is None and panel.worker is worker
    assert f"The alternative masks of instance {label} are being found" in widget.last_message
    labels.selected_label = 99  # the result still goes to the instance pressed
    assert panel.next_alternative_of_selected() is None and panel.worker is worker
    assert f"The alternative masks of instance {label} are being found" in widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    shown = labels.data == label
    np.testing.assert_array_equal(shown, first)
    assert iou(shown, own) < 0.9 and np.count_nonzero(shown) != np.count_nonzero(own)
    assert widget.last_message.startswith(f"Instance {label}: alternative mask 1/{len(expected[label]) - 1} "
                                          f"({np.count_nonzero(first)} px;")
    np.testing.assert_array_equal(labels.data == 99, painted)
    labels.undo()  # one undo step for the press
    np.testing.assert_array_equal(labels.data, before)
    # its mask painted over the painted instance: a new cycle, found in the worker; the instance is
    # deleted meanwhile: its alternatives are dropped, nothing else changes
    labels.data_setitem(np.nonzero(painted), label)
    qtbot.waitUntil(lambda: 99 not in labels.features["label"].tolist())
    grown = labels.data.copy()
    labels.selected_label = label
    assert panel.next_alternative_of_selected() is None and panel.worker is not None
    assert panel.delete_selected()
    deleted = labels.data.copy()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert (f"The alternative masks of instance {label} were dropped: the instance was deleted"
            in widget.last_message)
    np.testing.assert_array_equal(labels.data, deleted)
    labels.undo()  # the deletion, the only step since
    np.testing.assert_array_equal(labels.data, grown)
    qtbot.waitUntil(lambda: label in labels.features["label"].tolist())  # its row (and peak) back
    # cancelled with the activity dock's button: nothing changes, and a point added meanwhile (which
    # waited for the worker) is still retrieved after it
    # (the worker waits for the cancel before its work: the tiny network's could end before it, and its
    # end before the test listens for it)
    cancel_pressed = threading.Event()
    predictor_of = panel._predictor_of

    def after_the_cancel(*args, **kwargs):
        cancel_pressed.wait(WAIT_MS / 1000)
        return predictor_of(*args, **kwargs)

    monkeypatch.setattr(panel, "_predictor_of", after_the_cancel)
    labels.selected_label = label
    assert panel.next_alternative_of_selected() is None and panel.worker is not None
    cancelled = []
    panel.worker.finished.connect(lambda: cancelled.append(widget.last_message))
    peaks.add([[100.0, 20.0]])
    assert widget.activity is not None
    widget.activity.bar.cancel()
    cancel_pressed.set()
    qtbot.waitUntil(lambda: not widget.running and len(peaks.data) == len(peaks.features)
                    and widget.last_message.startswith(("Retrieved", "No instance")), timeout=WAIT_MS)
    assert cancelled == [f"Cancelled: instance {label} keeps its mask."]
    np.testing.assert_array_equal(labels.data == label, grown == label)
    after = labels.data.copy()
    # the instances layer removed meanwhile
    labels.selected_label = label
    assert panel.next_alternative_of_selected() is None and panel.worker is not None
    viewer.layers.remove(labels)
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert f"The alternative masks of instance {label} were dropped: its layer" in widget.last_message
    np.testing.assert_array_equal(labels.data, after)


def test_next_alternative_mask_of_a_plane_the_cache_dropped(make_napari_viewer, qtbot, prm_config,
                                                            tiny_checkpoint, small_cat):
    """Shift-A on a plane of a stack whose cached maps the predictor cache dropped (more planes than it
    holds) remakes the plane's forward pass in the worker, as a peak added there does (it said "press
    Run"); after the image's data changed it refuses, saying so: the masks would be of other pixels."""
    viewer = make_napari_viewer()
    stack = np.stack([small_cat, small_cat[::-1]])
    viewer.add_image(stack, name="stack", rgb=True)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.predictors.size = 1  # the second plane's maps push the first's out
    widget.proposals.value = "default"
    widget.planes.value = "all planes"
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    run_and_wait(widget, qtbot)
    labels, peaks = viewer.layers["stack instances"], viewer.layers["stack peaks"]
    assert not widget.predictors.ready(widget.context.predictor_keys[(0,)])
    expected = library_alternatives(tiny_checkpoint, small_cat, labels, peaks, widget.peak_threshold.value, (0,))
    label = next(iter(expected), None)
    assert label is not None, "no instance of the first plane has an alternative mask"
    own, before = labels.data[0] == label, labels.data.copy()
    first = next(m for m in expected[label] if not np.array_equal(m, own))
    forwards, hook = forward_counter(widget.context.model)
    try:
        labels.selected_label = label
        assert press_shift_a(widget, qtbot) == 1, widget.last_message
    finally:
        hook.remove()
    assert len(forwards) == 1  # the first plane's forward pass, made again
    assert widget.predictors.ready(widget.context.predictor_keys[(0,)])
    np.testing.assert_array_equal(labels.data[0] == label, first)
    assert iou(labels.data[0] == label, own) < 0.9
    np.testing.assert_array_equal(labels.data[1], before[1])
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    # the image's data changed since the run: its maps are not made again from other pixels
    viewer.layers["stack"].data = stack[:, ::-1].copy()
    assert not widget.predictors.ready(widget.context.predictor_keys[(0,)])
    labels.selected_label = next(int(other) for other in labels.features["label"] if int(other) != label)
    assert widget.correction.next_alternative_of_selected() is None and not widget.running
    assert "the image's data changed since the run" in widget.last_message
    np.testing.assert_array_equal(labels.data, before)


def place_point(widget, qtbot, peaks, yx, class_name) -> int:
    """Add a point of ``class_name`` at ``yx`` as a user does; returns its instance's label once retrieved."""
    widget.correction.class_choice.value = class_name
    peaks.add([yx])
    qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    return int(peaks.features["label"].iloc[-1])


def test_a_point_added_on_an_instance_says_which_instance_it_replaced_or_cut(candidates_run, qtbot):
    """A point of another class added on an instance: the new instance paints over it (the last one
    placed wins, as painting does), and the status line names the instance it replaced (all its
    pixels: its peak is left without one) or cut (some pixels: it keeps the rest), and that Ctrl+Z
    undoes it. It said only "Retrieved instances of peaks [1]."."""
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    dog = place_point(widget, qtbot, peaks, [30.0, 35.0], "dog")  # on candidate 1
    assert np.array_equal(instances.data == dog, candidates == 1)
    bird = place_point(widget, qtbot, peaks, [32.0, 40.0], "bird")  # on the dog: the same candidate
    assert np.array_equal(instances.data == bird, candidates == 1)
    assert peaks.features["label"].tolist() == [0, bird]
    assert instances.features["class_name"].tolist() == ["bird"]
    message = widget.last_message
    assert "Retrieved instances of peaks [1]" in message
    assert (f"it replaced instance {dog} (dog, peak 0), all of whose {int((candidates == 1).sum())} pixels it "
            "covers, so peak 0 is left without an instance") in message
    assert "Ctrl+Z undoes it" in message

    instances.undo()  # the dog comes back, with its peak's label; the bird's point goes
    qtbot.waitUntil(lambda: len(peaks.data) == 1, timeout=5000)
    assert np.array_equal(instances.data == dog, candidates == 1)
    assert peaks.features["label"].tolist() == [dog]
    assert instances.features["class_name"].tolist() == ["dog"]


def test_a_point_added_on_part_of_an_instance_says_how_many_pixels_it_took(candidates_run, qtbot):
    """An instance that loses only some pixels to a point's instance keeps the rest, and the
    status line says how many it lost."""
    viewer, widget, candidates = candidates_run
    peaks, instances = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    dog = place_point(widget, qtbot, peaks, [30.0, 35.0], "dog")  # on candidate 1
    painted = np.zeros(instances.data.shape, bool)
    painted[50:60, 80:100] = True  # the dog painted further, into candidate 2's rows 55:60
    instances.data_setitem(np.nonzero(painted), dog)
    qtbot.waitUntil(lambda: int((instances.data == dog).sum()) == int((candidates == 1).sum()) + 200,
                    timeout=5000)
    bird = place_point(widget, qtbot, peaks, [75.0, 110.0], "bird")  # on candidate 2
    assert np.array_equal(instances.data == bird, candidates == 2)
    lost = int((painted & (candidates == 2)).sum())
    assert lost == 100
    assert int((instances.data == dog).sum()) == int((candidates == 1).sum()) + 200 - lost
    assert peaks.features["label"].tolist() == [dog, bird]
    assert (f"it took {lost} of the {int((candidates == 1).sum()) + 200} pixels of instance {dog} "
            "(dog, peak 0)") in widget.last_message
    assert "Ctrl+Z undoes it" in widget.last_message


def test_a_point_added_after_the_instances_layer_was_removed_says_to_run_again(candidates_run, qtbot):
    """With the run's instances layer removed, a point added to its peaks layer did nothing and the
    status line said nothing. It says the instances layer was removed and to press Run, which keeps
    the point and retrieves its instance into a new instances layer."""
    viewer, widget, candidates = candidates_run
    peaks = viewer.layers["cat peaks"]
    widget.correction.class_choice.value = "dog"  # new points' class
    viewer.layers.remove(viewer.layers["cat instances"])
    before = widget.last_message
    peaks.add([[30.0, 35.0]])  # on candidate 1
    qtbot.waitUntil(lambda: widget.last_message != before, timeout=5000)
    assert not widget.running
    assert widget.last_message == (
        "The point is not retrieved now: the instances layer of this run ('cat instances') was removed. The point "
        "stays where you put it; press Run to predict the image again (the new run keeps the points you added or "
        "moved and retrieves their instances).")
    assert len(peaks.data) == 1 and int(peaks.features["label"].iloc[0]) == 0

    run_and_wait(widget, qtbot)
    instances = viewer.layers["cat instances"]
    label = assert_hand_peak(peaks, instances, [30.0, 35.0], "dog")
    assert np.array_equal(instances.data == label, candidates == 1)


def test_after_the_instances_layer_is_removed_the_class_picker_gives_new_points_their_class(candidates_run, qtbot):
    """With the run's instances layer removed, the whole correction panel was greyed out, the class
    picker too, and nothing said why; a point added then took the class chosen before. The picker stays
    usable (the class of the points added, which the next Run keeps and retrieves), the other tools are
    off, and the panel says why; the next Run brings them back."""
    viewer, widget, candidates = candidates_run
    panel, peaks = widget.correction, viewer.layers["cat peaks"]
    panel.class_choice.value = "dog"
    viewer.layers.remove(viewer.layers["cat instances"])
    assert panel.container.enabled and panel.class_choice.enabled
    assert not panel.tools_enabled and not panel.delete_button.enabled and not panel.redo_points.enabled
    assert not panel.off_label.native.isHidden()
    assert panel.off_label.value == (
        "The instances layer 'cat instances' was removed: the tools below the class picker are off. Points you "
        "add to 'cat peaks' (of the class picked) or move there stay, and the next Run keeps them and retrieves "
        "their instances into a new instances layer.")
    panel.class_choice.value = "bird"
    peaks.add([[75.0, 110.0]])  # on candidate 2
    assert peaks.features["class_name"].tolist() == ["bird"]
    assert "The point is not retrieved now" in widget.last_message

    run_and_wait(widget, qtbot)
    instances = viewer.layers["cat instances"]
    label = assert_hand_peak(peaks, instances, [75.0, 110.0], "bird")
    assert np.array_equal(instances.data == label, candidates == 2)
    assert panel.tools_enabled and panel.off_label.native.isHidden()


def test_the_class_picker_serves_the_orphaned_peaks_layer_selected(candidates_run, qtbot, small_cat):
    """Another image's run worked on, then the orphaned peaks layer selected: the picker gives the
    points added there their class (not the other run's peaks layer), and the tools stay off."""
    viewer, widget, _ = candidates_run
    panel, peaks = widget.correction, viewer.layers["cat peaks"]
    viewer.layers.remove(viewer.layers["cat instances"])
    viewer.add_image(np.ascontiguousarray(small_cat[::-1]), name="flipped")
    widget.image.value = viewer.layers["flipped"]
    run_and_wait(widget, qtbot)
    assert panel.tools_enabled and panel.peaks is viewer.layers["flipped peaks"]
    viewer.layers.selection.active = peaks
    assert panel.context is None and not panel.tools_enabled and panel.class_choice.enabled
    assert "'cat instances' was removed" in panel.off_label.value
    panel.class_choice.value = "bird"
    peaks.add([[75.0, 110.0]])
    assert peaks.features["class_name"].tolist() == ["bird"]
    viewer.layers.selection.active = viewer.layers["flipped instances"]
    assert panel.tools_enabled and panel.off_label.native.isHidden()
    panel.class_choice.value = "cat"
    assert viewer.layers["flipped peaks"].feature_defaults["class_name"][0] == "cat"
    assert peaks.feature_defaults["class_name"][0] == "bird"
    # a retrieval or paint sync ending on another run (`working_on`) leaves the picker serving the orphaned layer
    viewer.layers.selection.active = peaks
    with panel.working_on(panel.context_of(viewer.layers["flipped"])) as alive:
        assert alive and panel.peaks is viewer.layers["flipped peaks"]
    assert panel.context is None and not panel.tools_enabled and "'cat instances'" in panel.off_label.value
    panel.class_choice.value = "dog"
    assert peaks.feature_defaults["class_name"][0] == "dog"
    assert viewer.layers["flipped peaks"].feature_defaults["class_name"][0] == "cat"


def test_a_model_peak_moved_after_the_instances_layer_was_removed_is_kept_where_it_was_put(
        candidates_run, qtbot, tiny_checkpoint, small_cat):
    """With the run's instances layer removed, a model's peak moved was not marked as placed by hand:
    the next Run found the model's peak where it was again and the move was lost. It is kept where it
    was put (retrieved there), and the model's peak it was moved from is not selected again beside it."""
    viewer, widget, candidates = candidates_run
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    run_and_wait(widget, qtbot)
    peaks = viewer.layers["cat peaks"]
    assert len(peaks.data) == 2 and not peaks.features["hand_placed"].any()
    origin = peaks.data[0].copy()
    class_name = peaks.features["class_name"].iloc[0]
    viewer.layers.remove(viewer.layers["cat instances"])
    data = peaks.data.copy()
    data[0] = [75.0, 110.0]  # onto candidate 2
    peaks.data = data
    assert peaks.features["hand_placed"].tolist() == [True, False]
    assert "The point is not retrieved now" in widget.last_message

    run_and_wait(widget, qtbot)
    instances = viewer.layers["cat instances"]
    assert len(peaks.data) == 2, peaks.data
    label = assert_hand_peak(peaks, instances, [75.0, 110.0], class_name)
    assert np.array_equal(instances.data == label, candidates == 2)
    assert not any(np.allclose(point, origin) for point in peaks.data)
    assert "1 hand-placed peak kept" in widget.last_message
