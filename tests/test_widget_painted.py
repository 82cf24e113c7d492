"""Correction tools on Labels layers no run made: painted from scratch, opened from an export, or
made by another tool (the panel completes their table and works on them as on a run's layer)."""

import csv

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt

from napari_prm._widgets.export import ExportWidget
from napari_prm._widgets.refine import layer_planes
from test_widget_correct import rows
from test_widget_predict import open_predict
from test_widget_undo import UNDO, press

#: Three rectangles (top, bottom, left, right) painted in a 100 x 151 layer: 600, 600, 800 pixels.
BOXES = {1: (10, 30, 10, 40), 2: (40, 60, 10, 40), 3: (70, 90, 100, 140)}


def paint(labels, label, top, bottom, left, right):
    mask = np.zeros(labels.data.shape, bool)
    mask[top:bottom, left:right] = True
    labels.data_setitem(np.nonzero(mask), label)  # napari's own paint path: emits `paint`


def areas(labels):
    found, counts = np.unique(labels.data[labels.data > 0], return_counts=True)
    return dict(zip(found.tolist(), counts.tolist()))


def read_csv(path):
    with open(path, newline="") as file:
        return {int(row["id"]): row["class"] for row in csv.DictReader(file)}


def test_a_labels_layer_painted_from_scratch_gets_the_correction_tools(
        make_napari_viewer, qtbot, tiny_checkpoint, small_cat, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cells")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    panel = widget.correction
    viewer._new_labels()  # napari's "New labels layer" button, on the image selected
    labels = viewer.layers["cells - Labels"]
    assert viewer.layers.selection.active is labels and panel.instances is labels
    assert panel.container.enabled
    assert list(panel.class_choice.choices) == ["cat", "dog", "bird", "unknown"]  # the model's, and unknown
    for label, box in BOXES.items():
        paint(labels, label, *box)
    qtbot.waitUntil(lambda: len(labels.features) == 3)
    assert rows(labels) == {1: (-1, "unknown"), 2: (-1, "unknown"), 3: (-1, "unknown")}
    assert labels.features["score"].isna().all()

    labels.selected_label = 1
    assert panel.set_class_of_selected("dog")
    assert rows(labels)[1] == (1, "dog")
    assert labels.metadata["class_names"] == ["cat", "dog", "bird"]

    viewer.layers.selection.active = labels
    labels.selected_label = 3
    press(viewer, qtbot, Qt.Key.Key_Delete)  # the panel's shortcut on the layer
    assert not np.any(labels.data == 3) and set(rows(labels)) == {1, 2}
    press(viewer, qtbot, *UNDO)  # Ctrl+Z brings pixels and row back
    qtbot.waitUntil(lambda: set(rows(labels)) == {1, 2, 3}, timeout=5000)
    assert areas(labels) == {1: 600, 2: 600, 3: 800}
    assert rows(labels)[3] == (-1, "unknown")

    labels.selected_label = 1
    assert panel.merge_selected_with(2)
    assert areas(labels) == {1: 1200, 3: 800} and set(rows(labels)) == {1, 3}
    assert rows(labels)[1] == (1, "dog")

    labels.selected_label = 3
    shapes = panel.draw_split_line()
    assert shapes.name == "cells - Labels split line"
    shapes.add_paths([np.array([[60.0, 120.0], [100.0, 120.0]])])  # across box 3, at column 120
    assert panel.split_selected()
    # the left part keeps the label and the line's column: 20 x 21 and 20 x 19 pixels
    assert areas(labels) == {1: 1200, 3: 420, 4: 380}
    assert np.all(labels.data[70:90, 100:121] == 3) and np.all(labels.data[70:90, 121:140] == 4)
    assert set(rows(labels)) == {1, 3, 4}

    export = ExportWidget(viewer)
    export._layer.value = labels
    assert export._stem.value == "cells"
    written = export.export(tmp_path, formats=["tiff", "csv"])
    assert sorted(path.name for path in written) == ["cells_instances.csv", "cells_labels.tif"]
    assert read_csv(tmp_path / "cells_instances.csv") == {1: "dog", 3: "unknown", 4: "unknown"}


def test_a_reopened_export_keeps_its_classes_and_its_edits_reach_export_and_learn(
        make_napari_viewer, qtbot, tiny_checkpoint, small_cat, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cells")
    data = np.zeros(small_cat.shape[:2], np.uint16)
    for label, (top, bottom, left, right) in BOXES.items():
        data[top:bottom, left:right] = label
    features = pd.DataFrame({"label": [1, 2, 3], "class_index": [0, 2, 0], "class_name": ["cat", "bird", "cat"],
                             "score": [0.9, 0.5, 0.7], "peak": [0, 1, 2]})
    made = viewer.add_labels(data, name="cells instances (corrected)", features=features,
                             metadata={"class_names": ["cat", "dog", "bird"]})
    export = ExportWidget(viewer)
    export._layer.value = made
    first = tmp_path / "first"
    export.export(first, formats=["tiff", "csv"], stem="cells")
    viewer.layers.remove(made)

    (reopened,) = viewer.open(str(first / "cells_labels.tif"), plugin="napari-prm")
    assert reopened.name == "cells_labels"
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    panel = widget.correction
    viewer.layers.selection.active = reopened
    assert panel.instances is reopened
    assert rows(reopened) == {1: (0, "cat"), 2: (2, "bird"), 3: (0, "cat")}  # from its CSV
    assert reopened.features["score"].tolist() == [0.9, 0.5, 0.7]

    reopened.selected_label = 2
    assert panel.delete_selected()
    assert not np.any(reopened.data == 2) and set(rows(reopened)) == {1, 3}
    reopened.selected_label = 3
    assert panel.set_class_of_selected("dog")
    assert rows(reopened) == {1: (0, "cat"), 3: (1, "dog")}
    assert list(panel.class_choice.choices) == ["cat", "dog", "bird", "unknown"]
    reopened.selected_label = 1
    assert panel.set_class_of_selected("unknown")  # no class: Learn takes its extent only
    assert rows(reopened) == {1: (-1, "unknown"), 3: (1, "dog")}

    export._layer.reset_choices()
    export._layer.value = reopened
    second = tmp_path / "second"
    export.export(second, formats=["csv"], stem="cells")
    assert read_csv(second / "cells_instances.csv") == {1: "unknown", 3: "dog"}
    ((plane, labels_plane, table, _),) = layer_planes(viewer, reopened)  # what Learn from corrections takes
    assert plane().shape[:2] == labels_plane.shape and set(np.unique(labels_plane)) == {0, 1, 3}
    assert dict(zip(table["label"], table["class_name"])) == {1: "unknown", 3: "dog"}


def test_instances_of_another_tool_get_a_table_and_a_run_is_unchanged(make_napari_viewer, qtbot, tiny_checkpoint,
                                                                       small_cat):
    """A Labels layer of instances made elsewhere (cellpose's ``<image>_cp_masks_000``, no features)."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cells")
    data = np.zeros(small_cat.shape[:2], np.int32)
    data[5:15, 5:15] = 7
    data[50:70, 50:60] = 12
    masks = viewer.add_labels(data, name="cells_cp_masks_000")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)  # the layer was selected before the panel opened
    panel = widget.correction
    assert panel.instances is masks
    assert rows(masks) == {7: (-1, "unknown"), 12: (-1, "unknown")}
    assert list(panel.class_choice.choices) == ["cat", "dog", "bird", "unknown"]  # the model loaded since
    assert panel.remove_small(101)
    assert areas(masks) == {12: 200} and set(rows(masks)) == {12}
    assert panel.context_of(viewer.layers["cells"]) is None  # no run of the image: a Run makes its own layers

    import dask.array as da  # a lazy stack (as *Run on a folder* shows its results) is not taken up

    lazy = viewer.add_labels(da.from_array(np.stack([data, data])), name="folder labels")
    assert viewer.layers.selection.active is lazy
    assert panel.instances is masks and len(lazy.features) == 0


def test_class_names_of_another_tools_table_are_exported_as_the_panel_shows_them(
        make_napari_viewer, qtbot, tiny_checkpoint, small_cat, tmp_path):
    """Its class_index is a position in its own classes (bird 0, dog 1), which the layer does
    not record: the names decide, and the indices become positions in the layer's classes."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cells")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    data = np.zeros(small_cat.shape[:2], np.int32)
    for label, (top, bottom, left, right) in BOXES.items():
        data[top:bottom, left:right] = label
    features = pd.DataFrame({"label": [1, 2, 3], "class_index": [0, 1, 0], "class_name": ["bird", "dog", None]})
    other = viewer.add_labels(data, name="cells_other", features=features)
    assert widget.correction.instances is other
    assert other.metadata["class_names"] == ["cat", "dog", "bird"]
    assert rows(other) == {1: (2, "bird"), 2: (1, "dog"), 3: (-1, "unknown")}
    export = ExportWidget(viewer)
    export._layer.value = other
    export.export(tmp_path, formats=["csv"], stem="cells")
    assert read_csv(tmp_path / "cells_instances.csv") == {1: "bird", 2: "dog", 3: "unknown"}


def test_keys_on_the_split_line_of_a_removed_painted_layer_say_what_to_do(
        make_napari_viewer, qtbot, tiny_checkpoint, small_cat):
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cells")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    panel = widget.correction
    labels = viewer.add_labels(np.zeros(small_cat.shape[:2], np.int32), name="painted")
    paint(labels, 1, *BOXES[1])
    qtbot.waitUntil(lambda: len(labels.features) == 1)
    labels.selected_label = 1
    shapes = panel.draw_split_line()
    viewer.layers.remove(labels)
    assert panel.instances is None and not panel.container.enabled
    viewer.layers.selection.active = shapes
    press(viewer, qtbot, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)
    # no run made it: "run the image again" alone would send the user to a Run that does not bring it back
    assert "select a Labels layer" in widget.last_message


def test_recorded_classes_with_a_repeat_and_an_unknown_keep_each_rows_class():
    """A COCO file of another tool may name a category twice, or one ``unknown``: the layer's
    classes drop them, and each row's class_index follows its name to its new position."""
    from napari.layers import Labels

    from napari_prm._widgets.painted import painted_context

    data = np.zeros((100, 151), np.int32)
    for label, (top, bottom, left, right) in BOXES.items():
        data[top:bottom, left:right] = label
    features = pd.DataFrame({"label": [1, 2, 3], "class_index": [1, 3, 2], "class_name": [None, "dog", "cat"]})
    layer = Labels(data, features=features, metadata={"class_names": ["cat", "unknown", "cat", "dog"]})
    context = painted_context(layer, [])
    assert context.class_names == ["cat", "dog"] == layer.metadata["class_names"]
    assert rows(layer) == {1: (-1, "unknown"), 2: (1, "dog"), 3: (0, "cat")}


def test_a_layer_with_labels_beyond_int64_is_not_taken_up(make_napari_viewer, qtbot, tiny_checkpoint, small_cat):
    """The edits count labels in int64: a uint64 label 2**63 + 5 (hashed ids of another tool) made
    an OverflowError when the layer was selected."""
    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cells")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    small = viewer.add_labels(np.zeros(small_cat.shape[:2], np.uint64), name="small ids")
    small.data_setitem((np.array([0]), np.array([0])), 2**63 - 1)  # the largest label it takes
    qtbot.waitUntil(lambda: len(small.features) == 1)
    data = np.zeros(small_cat.shape[:2], np.uint64)
    data[10:20, 10:20] = 2**63 + 5
    big = viewer.add_labels(data, name="hashed ids")
    assert viewer.layers.selection.active is big
    assert widget.correction.instances is small and len(big.features) == 0
