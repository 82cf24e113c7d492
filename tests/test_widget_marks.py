"""The plugin's layers are found by the mark in their metadata, not by their names: a user who
renames a result layer keeps its pairing with the image, the correction tools, Export, Learn and a
second Run."""

import numpy as np
import pytest

from napari_prm._widgets.export import ExportWidget
from napari_prm._widgets.marks import MARKER, find_result, find_results, mark
from napari_prm._widgets.refine import layer_planes
from test_widget_correct import rows
from test_widget_predict import run_and_wait
from test_widget_undo import classed  # noqa: F401  (the fixture)


def test_renamed_result_layers_keep_working_and_a_second_run_adds_no_duplicate(classed, qtbot, tmp_path):  # noqa: F811
    viewer, widget, labels = classed
    peaks, prms = viewer.layers["cat peaks"], viewer.layers["cat PRMs"]
    assert labels.metadata[MARKER]["role"] == "instances" and peaks.metadata[MARKER]["role"] == "peaks"
    labels.name, peaks.name, prms.name = "my cats", "my peaks", "maps"
    panel = widget.correction

    # the correction tools: a split line drawn, renamed, found again and used
    labels.selected_label = 2
    line = panel.draw_split_line()
    line.name = "my line"
    assert panel.draw_split_line() is line and "cat split line" not in viewer.layers
    line.add_paths([np.array([[25.0, 115.0], [55.0, 115.0]])])  # across instance 2 (columns 90-140)
    assert panel.split_selected(), widget.last_message
    assert set(rows(labels)) == {1, 2, 3}

    # Export and Learn pair it with its image
    export = ExportWidget(viewer)
    export._layer.value = labels
    assert export._stem.value == "cat"
    written = export.export(tmp_path, formats=["csv"])
    assert [path.name for path in written] == ["cat_instances.csv"]
    ((plane, labels_plane, _, _),) = layer_planes(viewer, labels)
    assert plane().shape[:2] == labels_plane.shape

    # the image to run on never offers the renamed PRMs layer, nor proposals the renamed instances
    widget.reset_choices()
    assert prms not in widget.image.choices and labels not in widget.proposals.choices

    # a second run updates the renamed layers in place and keeps the corrections beside them
    names_before = {layer.name for layer in viewer.layers}
    run_and_wait(widget, qtbot)
    names_after = {layer.name for layer in viewer.layers}
    assert names_after - names_before == {"my cats (corrected)"}, names_after - names_before
    assert not {"cat instances", "cat peaks", "cat PRMs"} & names_after
    assert widget.context.layers["instances"] is labels and widget.context.layers["peaks"] is peaks
    kept = viewer.layers["my cats (corrected)"]
    assert kept.metadata[MARKER]["role"] == "kept" and not kept.visible
    assert set(rows(kept)) == {1, 2, 3}
    assert find_result(viewer, viewer.layers["cat"], "instances") is labels


def test_a_layer_is_found_by_its_name_only_without_a_mark(make_napari_viewer, small_cat):
    viewer = make_napari_viewer()
    cat = viewer.add_image(small_cat, name="cat")
    dog = viewer.add_image(small_cat, name="dog")
    reopened = viewer.add_labels(np.zeros(small_cat.shape[:2], np.uint16), name="cat instances")
    assert find_result(viewer, cat, "instances") is reopened  # an export opened again: by its name
    crm = viewer.add_image(small_cat[..., 0], name="cat CRM bird")
    assert find_results(viewer, cat, "crm") == {"bird": crm}

    # a layer marked for another image is not taken by its name; one marked for this one wins
    reopened.metadata = mark("instances", dog)
    assert find_result(viewer, cat, "instances") is None
    assert find_result(viewer, dog, "instances") is reopened
    mine = viewer.add_labels(np.zeros(small_cat.shape[:2], np.uint16), name="anything",
                             metadata=mark("instances", cat))
    assert find_result(viewer, cat, "instances") is mine
    # the image renamed: the mark still names it (by its napari id)
    cat.name = "kitty"
    assert find_result(viewer, cat, "instances") is mine


def test_a_labels_layer_whose_image_was_removed_pairs_with_no_other_image(make_napari_viewer, small_cat, tmp_path):
    """``cat - Labels`` (napari's *New labels layer* of ``cat``) paired with ``dog``, the image of the same
    shape left after ``cat`` was removed: Export wrote ``dog`` as its image, Learn trained on dog's pixels."""
    import json

    from napari_prm._widgets.layers import image_layer_of

    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    viewer.add_image(small_cat[:, ::-1].copy(), name="dog")
    viewer.layers.selection.active = viewer.layers["cat"]
    viewer._new_labels()
    labels = viewer.layers["cat - Labels"]
    labels.data[10:30, 10:40] = 1
    assert image_layer_of(viewer, labels) is viewer.layers["cat"]
    viewer.layers.remove("cat")
    assert image_layer_of(viewer, labels) is None

    with pytest.raises(ValueError, match=r"layer 'cat - Labels' was made on the image 'cat', which is not open"):
        layer_planes(viewer, labels)
    _, learn = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    learn.reset_choices()
    assert labels not in [layer for _, layer in learn._labels_choices()]
    assert learn.start() is None
    assert "Not offered: layer 'cat - Labels' was made on the image 'cat'" in learn._status.value

    export = ExportWidget(viewer)
    export._layer.value = labels
    assert export._stem.value == "cat"  # its own name's, not dog's
    assert export.export(tmp_path, formats=["coco"]) == [tmp_path / "cat_instances.json"]
    assert json.loads((tmp_path / "cat_instances.json").read_text())["images"][0]["file_name"] != "dog"
    assert "No image file name recorded: layer 'cat - Labels' was made on the image 'cat'" in export._status.value

    viewer.add_image(small_cat, name="cat")  # opened again: paired again
    assert image_layer_of(viewer, labels) is viewer.layers["cat"]
    ((plane, _, _, _),) = layer_planes(viewer, labels)
    np.testing.assert_array_equal(plane(), small_cat)


def test_new_labels_layers_follow_their_renamed_image(make_napari_viewer, small_cat, qtbot, prm_config,
                                                      tiny_checkpoint):
    """Renaming image ``cat`` to ``cat2`` left napari's *New labels layer* ``cat - Labels`` unpaired, and
    the message said ``'cat'`` was not open though it was, under a new name."""
    from napari_prm._widgets.layers import image_layer_of, unpaired_reason
    from test_widget_predict import run_tiny

    viewer = make_napari_viewer()
    run_tiny(viewer, qtbot, tiny_checkpoint, small_cat, "cat", 2)
    cat = viewer.layers["cat"]
    for _ in range(2):
        viewer.layers.selection.active = cat
        viewer._new_labels()
    painted, second = viewer.layers["cat - Labels"], viewer.layers["cat - Labels [1]"]
    painted.data[10:30, 10:40] = 1
    other = viewer.add_labels(np.zeros((7, 9), np.uint16), name="cat - Labels [2]")  # not the image's shape
    cat.name = "cat2"
    assert (painted.name, second.name, other.name) == ("cat2 - Labels", "cat2 - Labels [1]", "cat - Labels [2]")
    assert image_layer_of(viewer, painted) is cat and image_layer_of(viewer, second) is cat
    ((plane, _, _, _),) = layer_planes(viewer, painted)  # what Learn trains on
    np.testing.assert_array_equal(plane(), small_cat)
    assert image_layer_of(viewer, other) is None
    assert "which is not open under that name (it may have been closed, or renamed)" in unpaired_reason(viewer, other)
    export = ExportWidget(viewer)
    export._layer.value = painted
    assert export._stem.value == "cat2"


def test_a_split_line_marked_for_the_labels_wins_over_one_bearing_its_name(make_napari_viewer, small_cat):
    """The split line was looked up apart from `find_results`, by each layer in turn: an unmarked
    layer bearing the default name, lower in the layer list, was taken before the line marked for
    the Labels layer. The mark wins now, wherever each lies; an unmarked one only by its name."""
    from napari_prm._widgets.correct import _split_layer
    from napari_prm._widgets.painted import painted_context

    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros(small_cat.shape[:2], np.uint16), name="cells")
    context = painted_context(labels, [])
    named = viewer.add_shapes(name="cells split line")  # e.g. opened from a file: no mark
    assert _split_layer(viewer, context) is named
    marked = viewer.add_shapes(name="my line", metadata=mark("split", labels))
    assert list(viewer.layers).index(named) < list(viewer.layers).index(marked)
    assert _split_layer(viewer, context) is marked
    labels.name = "my cells"  # renamed: the marked line is still its own, the unmarked one is not
    assert _split_layer(viewer, context) is marked
    viewer.layers.remove(marked)
    assert _split_layer(viewer, context) is None
    # another Labels layer's marked line is never taken, even bearing this one's default name
    other = viewer.add_labels(np.zeros(small_cat.shape[:2], np.uint16), name="other")
    viewer.add_shapes(name="my cells split line", metadata=mark("split", other))
    assert _split_layer(viewer, context) is None
