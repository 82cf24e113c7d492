"""Undo and redo of the correction tools through the Labels layer's own history, and their
keyboard shortcuts, pressed as keys on napari's canvas."""

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_prm._widgets.correct import SHORTCUTS
from test_widget_correct import rows
from test_widget_predict import open_predict, peak_threshold_for, run_and_wait


def press(viewer, qtbot, key, modifier=Qt.KeyboardModifier.NoModifier):
    """A key pressed on napari's canvas, as a user does (the active layer's keymap gets it)."""
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key, modifier)


UNDO = (Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
REDO = (Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
SHIFT = Qt.KeyboardModifier.ShiftModifier


@pytest.fixture
def classed(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    """A run of the tiny model; instance 1 (40x60) painted and made a cat, 2 (20x50) a dog."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = None
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    run_and_wait(widget, qtbot)
    labels = viewer.layers["cat instances"]
    labels.data_setitem(np.nonzero(_box(labels, 20, 60, 10, 70)), 1)  # painted by hand
    labels.data_setitem(np.nonzero(_box(labels, 30, 50, 90, 140)), 2)
    qtbot.waitUntil(lambda: len(labels.features) == 2)
    labels.selected_label = 1
    assert widget.correction.set_class_of_selected("cat")
    labels.selected_label = 2
    assert widget.correction.set_class_of_selected("dog")
    viewer.layers.selection.active = labels
    return viewer, widget, labels


def _box(labels, top, bottom, left, right):
    mask = np.zeros(labels.data.shape, bool)
    mask[top:bottom, left:right] = True
    return mask


def undo(viewer, qtbot, labels, expected_rows):
    press(viewer, qtbot, *UNDO)
    qtbot.waitUntil(lambda: rows(labels) == expected_rows, timeout=5000)


def redo(viewer, qtbot, labels, expected_rows):
    press(viewer, qtbot, *REDO)
    qtbot.waitUntil(lambda: rows(labels) == expected_rows, timeout=5000)


BOTH = {1: (0, "cat"), 2: (1, "dog")}


def test_delete_key_then_undo_and_redo_restore_pixels_and_class(classed, qtbot):
    viewer, widget, labels = classed
    labels.selected_label = 2
    press(viewer, qtbot, Qt.Key.Key_Delete)
    assert not np.any(labels.data == 2) and rows(labels) == {1: (0, "cat")}
    undo(viewer, qtbot, labels, BOTH)
    assert np.count_nonzero(labels.data == 2) == 20 * 50
    redo(viewer, qtbot, labels, {1: (0, "cat")})
    assert not np.any(labels.data == 2)


def test_the_status_line_says_what_undo_and_redo_did(classed, qtbot):
    """After Delete and Ctrl+Z the status line still said "Deleted instance 2."."""
    viewer, widget, labels = classed
    labels.selected_label = 2
    press(viewer, qtbot, Qt.Key.Key_Delete)
    assert widget.last_message == "Deleted instance 2."
    undo(viewer, qtbot, labels, BOTH)
    assert widget.last_message == "Undone: deleted instance 2."
    redo(viewer, qtbot, labels, {1: (0, "cat")})
    assert widget.last_message == "Redone: deleted instance 2."
    undo(viewer, qtbot, labels, BOTH)
    undo(viewer, qtbot, labels, {1: (0, "cat"), 2: (-1, "")})  # the fixture's set_class
    assert widget.last_message == "Undone: set the class of instance 2 to 'dog'."
    assert widget.correction.remove_small(20 * 50 + 1)  # a new edit: nothing left to redo
    assert widget.last_message == f"Removed 1 instance smaller than {20 * 50 + 1} pixels."
    undo(viewer, qtbot, labels, {1: (0, "cat"), 2: (-1, "")})
    assert widget.last_message == f"Undone: removed 1 instance smaller than {20 * 50 + 1} pixels."
    labels.data_setitem(np.nonzero(_box(labels, 70, 90, 10, 30)), 7)  # painted by hand
    qtbot.waitUntil(lambda: 7 in rows(labels))
    undo(viewer, qtbot, labels, {1: (0, "cat"), 2: (-1, "")})  # the painting: not the plugin's to name
    assert widget.last_message == f"Undone: removed 1 instance smaller than {20 * 50 + 1} pixels."


def test_set_class_key_is_one_undo_step(classed, qtbot):
    viewer, widget, labels = classed
    before = labels.data.copy()
    widget.correction.class_choice.value = "bird"
    labels.selected_label = 1
    press(viewer, qtbot, Qt.Key.Key_C, SHIFT)
    assert rows(labels)[1] == (2, "bird")
    undo(viewer, qtbot, labels, BOTH)
    np.testing.assert_array_equal(labels.data, before)  # no pixel changed on the way
    undo(viewer, qtbot, labels, {1: (0, "cat"), 2: (-1, "")})  # the fixture's own set_class
    redo(viewer, qtbot, labels, BOTH)
    redo(viewer, qtbot, labels, {1: (2, "bird"), 2: (1, "dog")})


def test_merge_key_merges_the_previous_selection_and_undoes(classed, qtbot):
    viewer, widget, labels = classed
    labels.selected_label = 2
    labels.selected_label = 1  # 2 was selected before: it is what the merge takes
    assert widget.correction.merge_with.value == 2
    press(viewer, qtbot, Qt.Key.Key_M, SHIFT)
    assert np.count_nonzero(labels.data == 1) == 40 * 60 + 20 * 50
    assert rows(labels) == {1: (0, "cat")}
    undo(viewer, qtbot, labels, BOTH)
    assert np.count_nonzero(labels.data == 2) == 20 * 50


def test_split_key_on_the_line_layer_then_undo(classed, qtbot):
    viewer, widget, labels = classed
    labels.selected_label = 1
    shapes = widget.correction.draw_split_line()
    shapes.add_paths([np.array([[10.0, 40.0], [70.0, 40.0]])])
    press(viewer, qtbot, Qt.Key.Key_S, SHIFT)  # the line layer is the active one
    assert set(rows(labels)) == {1, 2, 3} and rows(labels)[3][1] == "cat"
    undo(viewer, qtbot, labels, BOTH)
    assert np.count_nonzero(labels.data == 1) == 40 * 60


def test_remove_small_undo_and_hand_painting_in_between(classed, qtbot):
    viewer, widget, labels = classed
    assert widget.correction.remove_small(20 * 50 + 1)
    assert rows(labels) == {1: (0, "cat")}
    labels.data_setitem(np.nonzero(_box(labels, 70, 90, 10, 30)), 7)  # painted by hand
    qtbot.waitUntil(lambda: rows(labels) == {1: (0, "cat"), 7: (-1, "")})
    undo(viewer, qtbot, labels, {1: (0, "cat")})  # the painting
    undo(viewer, qtbot, labels, BOTH)  # the removal
    redo(viewer, qtbot, labels, {1: (0, "cat")})
    redo(viewer, qtbot, labels, {1: (0, "cat"), 7: (-1, "")})


def test_next_instance_by_score(make_napari_viewer, qtbot, prm_config, tiny_checkpoint, small_cat):
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    candidates = np.zeros(small_cat.shape[:2], np.uint16)
    candidates[5:45, 5:70] = 1
    candidates[55:95, 80:140] = 2
    candidates[50:95, 5:60] = 3
    viewer.add_labels(candidates, name="candidates")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.peak_threshold.value = widget.peak_threshold.min  # "none": peaks all over the image
    run_and_wait(widget, qtbot)
    labels = viewer.layers["cat instances"]
    table = labels.features.sort_values("score", ascending=False)
    assert len(table) >= 2
    ranked = table["label"].astype(int).tolist()
    viewer.layers.selection.active = labels
    labels.selected_label = 0
    seen = []
    for _ in ranked:
        press(viewer, qtbot, Qt.Key.Key_N)
        seen.append(int(labels.selected_label))
    assert seen == ranked
    press(viewer, qtbot, Qt.Key.Key_N)  # wraps round
    assert labels.selected_label == ranked[0]
    press(viewer, qtbot, Qt.Key.Key_N, SHIFT)
    assert labels.selected_label == ranked[-1]
    where = np.argwhere(labels.data == ranked[-1])
    centre = (where.min(0) + where.max(0)) / 2
    np.testing.assert_allclose(viewer.camera.center[-2:], labels.data_to_world(centre)[-2:])


def test_shortcuts_are_listed_in_the_panel(classed):
    _, widget, _ = classed
    text = widget.correction.shortcuts_label.value
    for keys, _, description in SHORTCUTS:
        assert " / ".join(keys) in text and description in text
    assert "Ctrl+Z" in text
    assert "Delete" in widget.correction.delete_button.tooltip
    # each key is in a button's tooltip (Shift-N, without a button of its own, was in none) and in
    # the plugin's page
    panel = widget.correction
    tooltips = " ".join(button.tooltip or "" for button in (
        panel.delete_button, panel.set_class_button, panel.merge_button, panel.split_button, panel.next_button,
        panel.alternative_button))
    page = (Path(__file__).resolve().parents[1] / "docs" / "plugin.md").read_text(encoding="utf-8")
    for keys, _, _ in SHORTCUTS:
        for key in keys:
            assert key in tooltips and f"`{key}`" in page, key


def test_an_instance_added_from_a_point_undoes_with_its_point(make_napari_viewer, qtbot, prm_config,
                                                              tiny_checkpoint, small_cat):
    """Ctrl+Z of the instance of a point placed by hand left the point, marked hand-placed, so
    the next Run retrieved the instance again. Now the point goes with it (and comes back
    with Ctrl+Shift+Z), and a Run after the undo keeps neither."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    candidates = np.zeros(small_cat.shape[:2], np.uint16)
    candidates[10:50, 10:60] = 1
    viewer.add_labels(candidates, name="candidates")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.peak_threshold.value = 9999.0  # no peaks of its own: only the added one
    run_and_wait(widget, qtbot)
    peaks, labels = viewer.layers["cat peaks"], viewer.layers["cat instances"]
    widget.correction.class_choice.value = "dog"
    peaks.add([[30.0, 35.0]])
    qtbot.waitUntil(lambda: not widget.running and len(labels.features) == 1, timeout=60_000)
    label = int(labels.features["label"].iloc[0])
    assert rows(labels) == {label: (1, "dog")} and peaks.features["label"].tolist() == [label]
    viewer.layers.selection.active = labels
    undo(viewer, qtbot, labels, {})
    assert not labels.data.any() and len(peaks.data) == 0 and len(peaks.features) == 0
    assert widget.last_message.startswith("Undone: the peak placed by hand and its instance (peak 0)")
    redo(viewer, qtbot, labels, {label: (1, "dog")})
    np.testing.assert_allclose(peaks.data, [[30.0, 35.0]])
    assert peaks.features["label"].tolist() == [label] and peaks.features["hand_placed"].tolist() == [True]
    assert peaks.features["class_name"].tolist() == ["dog"]
    # undone again, a new Run does not bring it back
    undo(viewer, qtbot, labels, {})
    run_and_wait(widget, qtbot)
    assert len(peaks.data) == 0 and not labels.data.any() and "hand-placed" not in widget.last_message


@pytest.mark.parametrize("again", ["rethreshold", "run"])
def test_a_new_run_starts_a_new_undo_history(classed, qtbot, again):
    """Ctrl+Z after a Run or Re-threshold must not replay the previous run's edits onto
    the new instances (napari keeps a Labels layer's history when its data is replaced)."""
    viewer, widget, labels = classed
    labels.selected_label = 2
    assert widget.correction.delete_selected()
    if again == "rethreshold":
        assert widget.rethreshold() is not None, widget.last_message
        qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    else:
        run_and_wait(widget, qtbot)
    assert viewer.layers["cat instances"] is labels  # updated in place
    assert not labels.data.any() and rows(labels) == {}  # proposals "none": no instances
    press(viewer, qtbot, *UNDO)
    qtbot.wait(200)  # the table follows undo from the event loop
    assert not labels.data.any(), "Ctrl+Z wrote pixels of the previous run's edits"
    assert rows(labels) == {}


def _run_a_second_image(viewer, widget, qtbot, small_cat, *, paint: bool = False):
    """Run a second image, "dog" (the cat mirrored), and return its instances layer; with
    ``paint``, with instance 1 painted by hand and its table row synced."""
    viewer.add_image(small_cat[:, ::-1].copy(), name="dog")
    widget.reset_choices()
    widget.image.value = viewer.layers["dog"]
    run_and_wait(widget, qtbot)
    other = viewer.layers["dog instances"]
    if paint:
        other.data_setitem(np.nonzero(_box(other, 5, 25, 5, 25)), 1)
        qtbot.waitUntil(lambda: len(other.features) == 1)
    return other


def test_corrections_act_on_the_image_they_are_made_on_after_another_image_is_run(
        classed, qtbot, tiny_checkpoint, small_cat):
    """Labelling a folder: after a run of a second image, keys, buttons, painting and undo on
    the first image's instances change that layer, not the second image's."""
    viewer, widget, labels = classed
    other = _run_a_second_image(viewer, widget, qtbot, small_cat, paint=True)
    other_pixels = np.array(other.data)

    viewer.layers.selection.active = labels
    labels.selected_label = 2
    press(viewer, qtbot, Qt.Key.Key_Delete)
    assert not np.any(labels.data == 2) and rows(labels) == {1: (0, "cat")}
    labels.selected_label = 1
    assert widget.correction.set_class_of_selected("bird")  # the panel's button
    assert rows(labels) == {1: (2, "bird")}
    labels.data_setitem(np.nonzero(_box(labels, 70, 90, 10, 30)), 7)  # painted by hand
    qtbot.waitUntil(lambda: rows(labels) == {1: (2, "bird"), 7: (-1, "")}, timeout=5000)
    undo(viewer, qtbot, labels, {1: (2, "bird")})
    undo(viewer, qtbot, labels, {1: (0, "cat")})
    undo(viewer, qtbot, labels, BOTH)
    np.testing.assert_array_equal(other.data, other_pixels)
    assert rows(other) == {1: (-1, "")}


def test_a_key_on_the_instances_of_a_run_whose_peaks_layer_was_removed_changes_no_other_image(
        classed, qtbot, tiny_checkpoint, small_cat):
    """Removing an image's peaks layer ends the panel's work on its run; its instances layer
    keeps its keys, and Delete there deleted the selected instance of the image run last."""
    viewer, widget, labels = classed
    other = _run_a_second_image(viewer, widget, qtbot, small_cat, paint=True)
    other.selected_label = 1
    other_pixels = np.array(other.data)

    viewer.layers.remove("cat peaks")
    viewer.layers.selection.active = labels
    labels.selected_label = 1
    press(viewer, qtbot, Qt.Key.Key_Delete)
    qtbot.wait(50)
    np.testing.assert_array_equal(other.data, other_pixels)
    assert rows(other) == {1: (-1, "")}
    assert "run the image again" in widget.last_message


def test_paints_on_two_images_in_one_turn_of_the_event_loop_sync_both_tables(
        classed, qtbot, tiny_checkpoint, small_cat):
    """One flag served every run: a paint on the second image's layer before the first one's
    sync had run (one turn of the event loop) left the second table without its new row."""
    viewer, widget, labels = classed
    other = _run_a_second_image(viewer, widget, qtbot, small_cat)
    labels.data_setitem(np.nonzero(_box(labels, 70, 90, 10, 30)), 7)
    other.data_setitem(np.nonzero(_box(other, 5, 25, 5, 25)), 1)  # no event processed in between
    qtbot.waitUntil(lambda: 7 in rows(labels) and 1 in rows(other), timeout=5000)
    assert rows(other) == {1: (-1, "")}
    assert rows(labels)[7] == (-1, "")
