"""The "Export instances" widget: a corrected Labels layer to files and back."""

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from napari_prm._reader import napari_get_reader


@pytest.fixture
def labels_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:40] = 3
    labels[35:55, 45:75] = 9
    labels[40:45, 5:10] = 12  # painted by hand, no row
    features = pd.DataFrame({"index": [3, 9], "label": [3, 9], "class_index": [0, 2],
                             "class_name": ["cat", "bird"], "score": [0.8, 0.3], "peak": [1, 4]})
    viewer.add_labels(labels, name="cat instances", features=features,
                      metadata={"class_names": ["cat", "dog", "bird"]})
    return viewer


def test_export_round_trip(labels_viewer, tmp_path):
    _, widget = labels_viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    labels = labels_viewer.layers["cat instances"].data
    written = widget.export(tmp_path, formats=["tiff", "png", "coco", "csv"])
    assert sorted(p.name for p in written) == [  # no image layer: the Labels layer's name less " instances"
        "cat_instances.csv", "cat_instances.json", "cat_labels.png", "cat_labels.tif"]

    # the plugin's reader gives back the masks and classes
    json_path = tmp_path / "cat_instances.json"
    ((data, meta, _),) = napari_get_reader(str(json_path))(str(json_path))
    assert np.array_equal(data, labels)
    classes = dict(zip(meta["features"]["label"].tolist(), meta["features"]["class_name"].tolist()))
    assert classes == {3: "cat", 9: "bird", 12: "unknown"}
    assert meta["metadata"]["class_names"] == ["cat", "dog", "bird"]

    # and so does pycocotools
    coco = json.loads(json_path.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for annotation in coco["annotations"]:
        rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), labels == annotation["label"])
        assert names[annotation["category_id"]] == classes[annotation["label"]]

    tif_path = tmp_path / "cat_labels.tif"
    ((data, meta, _),) = napari_get_reader(str(tif_path))(str(tif_path))
    assert np.array_equal(data, labels)
    assert meta["features"]["class_name"].tolist() == ["cat", "bird", "unknown"]


def test_a_cleared_folder_field_is_refused_not_taken_as_the_working_directory(labels_viewer, tmp_path,
                                                                              monkeypatch, make_napari_viewer):
    """Clearing the folder field exported into the directory napari was started from ("Wrote
    ... to ."), and the cleared field came back in the next session."""
    monkeypatch.chdir(tmp_path)
    _, widget = labels_viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._folder.line_edit.value = ""  # the user empties the field
    assert widget.export() == [] and not list(tmp_path.glob("cat_*"))
    assert widget._status.value == "Choose a folder to export into."
    # the next session: the home folder, not the cleared field
    _, again = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Export instances")
    assert again._folder.value == Path.home()


def test_export_refuses_to_overwrite_and_reports(labels_viewer, tmp_path):
    _, widget = labels_viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    assert widget.export(tmp_path, formats=["coco"])
    before = (tmp_path / "cat_instances.json").read_bytes()
    labels_viewer.layers["cat instances"].data = np.zeros((60, 80), np.uint16)
    assert widget.export(tmp_path, formats=["coco"]) == []
    assert "exist" in widget._status.value
    # the message names the widget's check box, not the function's argument
    assert "tick 'overwrite existing files'" in widget._status.value
    assert "overwrite=True" not in widget._status.value
    assert (tmp_path / "cat_instances.json").read_bytes() == before
    assert widget.export(tmp_path, formats=["coco"], overwrite=True)
    assert json.loads((tmp_path / "cat_instances.json").read_text())["annotations"] == []


def test_png_refused_beyond_65535_labels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((4, 4), np.uint32)
    labels[0, 0] = 70_000
    viewer.add_labels(labels, name="many")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    assert widget.export(tmp_path, formats=["png"]) == []
    assert "65535" in widget._status.value
    (tif,) = widget.export(tmp_path, formats=["tiff"])
    import tifffile

    assert tifffile.imread(tif).dtype == np.uint32


def test_coco_file_name_is_the_image_file_the_layer_was_opened_from(make_napari_viewer, tmp_path):
    """An image opened from chelsea.png is the layer 'chelsea': its exported COCO JSON said
    file_name 'chelsea', which evaluate --image-dir and refine --masks did not find."""
    import imageio.v3 as iio
    from skimage import data

    from napari_prm._widgets.layers import image_file_name

    iio.imwrite(tmp_path / "chelsea.png", data.chelsea()[:40, :50])
    viewer = make_napari_viewer()
    (opened,) = viewer.open(str(tmp_path / "chelsea.png"))
    assert opened.name == "chelsea" and image_file_name(opened) == "chelsea.png"
    made = viewer.add_image(data.chelsea()[:40, :50], name="made in python")
    assert image_file_name(made) == "made in python"  # no file: the layer's name, as before
    labels = np.zeros((40, 50), np.uint16)
    labels[5:20, 5:25] = 1
    viewer.add_labels(labels, name="chelsea instances", features=pd.DataFrame(
        {"index": [1], "label": [1], "class_index": [0], "class_name": ["cat"], "score": [0.9], "peak": [0]}),
        metadata={"class_names": ["cat"], "image_layer": opened.name, "image_file_name": image_file_name(opened)})
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = viewer.layers["chelsea instances"]
    (written,) = widget.export(tmp_path / "out", formats=["coco"])
    coco = json.loads(written.read_text())
    assert [image["file_name"] for image in coco["images"]] == ["chelsea.png"]
    # the image is found by that name in its folder (as evaluate --image-dir looks for it)
    assert (tmp_path / coco["images"][0]["file_name"]).is_file()

    # a Labels layer no run made (napari's New labels layer of the image) names it too; it
    # wrote an empty file_name, though Export already named its files after the image
    painted = viewer.add_labels(labels, name="chelsea - Labels")
    widget._layer.value = painted
    (written,) = widget.export(tmp_path / "painted", formats=["coco"])
    assert written.name == "chelsea_instances.json"
    assert [image["file_name"] for image in json.loads(written.read_text())["images"]] == ["chelsea.png"]


def test_default_file_stem_is_the_source_images_name(make_napari_viewer, tmp_path):
    """The stem was the Labels layer's name: 'coffee instances' gave coffee_instances_instances.csv
    and coffee_instances_labels.tif, which the tutorial's labels.csv snippet (KeyError) and
    refine --masks did not match to coffee.png. It is now the image's: its file's stem, else
    its layer's name."""
    import imageio.v3 as iio
    from skimage import data

    from napari_prm._widgets.layers import image_file_name

    iio.imwrite(tmp_path / "coffee.png", data.coffee()[:40, :50])
    viewer = make_napari_viewer()
    (coffee,) = viewer.open(str(tmp_path / "coffee.png"))
    rocket = viewer.add_image(data.rocket()[:40, :50], name="rocket")  # made in Python: no file
    labels = np.zeros((40, 50), np.uint16)
    labels[5:20, 5:25] = 1
    features = pd.DataFrame({"index": [1], "label": [1], "class_index": [0],
                             "class_name": ["espresso"], "score": [0.9], "peak": [0]})
    for image in (coffee, rocket):  # as a Run of the Peak Response Maps widget makes them
        viewer.add_labels(labels, name=f"{image.name} instances", features=features,
                          metadata={"class_names": ["espresso"], "image_layer": image.name,
                                    "image_file_name": image_file_name(image)})
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget.reset_choices()
    widget._layer.value = viewer.layers["coffee instances"]
    assert widget._stem.value == "coffee"
    written = widget.export(tmp_path / "labelled", formats=["tiff", "coco", "csv"])
    assert sorted(p.name for p in written) == [
        "coffee_instances.csv", "coffee_instances.json", "coffee_labels.tif"]
    images = {p.stem: p.name for p in tmp_path.glob("*.png")}  # the tutorial's matching
    (csv,) = [p for p in written if p.suffix == ".csv"]
    assert images[csv.name.removesuffix("_instances.csv")] == "coffee.png"

    widget._layer.value = viewer.layers["rocket instances"]
    assert widget._stem.value == "rocket"
    coffee.name = "my photo"  # renamed: still the file's stem
    viewer.layers["coffee instances"].metadata = {
        **viewer.layers["coffee instances"].metadata, "image_layer": "my photo"}
    widget._layer.value = viewer.layers["coffee instances"]
    assert widget._stem.value == "coffee"
    # a Labels layer named after the image, without a run's metadata (painted by hand): the image's
    # file too, as refine finds the image (it was the layer's name, 'my_photo')
    viewer.add_labels(labels, name="my photo instances")
    widget.reset_choices()
    widget._layer.value = viewer.layers["my photo instances"]
    assert widget._stem.value == "coffee"
    viewer.layers.remove(coffee)  # the image is gone: the file name the instances recorded
    widget._layer.value = viewer.layers["rocket instances"]
    widget._layer.value = viewer.layers["coffee instances"]
    assert widget._stem.value == "coffee"


def test_export_and_save_keep_the_layers_scale_and_translate(make_napari_viewer, tmp_path):
    """Instances of an image with a pixel size (scale) and stage position (translate) come
    back where they were: the label TIFF of *Export instances* and of *File > Save* records
    the layer's scale and translate, and the plugin's reader gives them back (a stack too)."""
    viewer = make_napari_viewer()
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:40] = 3
    features = pd.DataFrame({"index": [3], "label": [3], "class_index": [0],
                             "class_name": ["cat"], "score": [0.8], "peak": [1]})
    layer = viewer.add_labels(labels, name="cat instances", features=features, scale=(0.5, 0.25),
                              translate=(3.0, -4.0), metadata={"class_names": ["cat", "dog"]})
    stack = viewer.add_labels(np.stack([labels, labels]), name="z instances", scale=(2.0, 0.5, 0.5),
                              translate=(1.0, 0.0, 7.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = layer
    written = widget.export(tmp_path, formats=["tiff", "csv"])
    assert written, widget._status.value
    viewer.layers.selection = {layer}
    saved = viewer.layers.save(str(tmp_path / "saved.tif"), selected=True, plugin="napari-prm")
    assert saved
    for path in (tmp_path / "cat_labels.tif", tmp_path / "saved.tif"):
        (reopened,) = viewer.open(str(path), plugin="napari-prm")
        np.testing.assert_array_equal(reopened.data, labels)
        np.testing.assert_allclose(reopened.scale, [0.5, 0.25])
        np.testing.assert_allclose(reopened.translate, [3.0, -4.0])
    widget._layer.value = stack
    assert widget.export(tmp_path / "z", formats=["tiff"]), widget._status.value
    # a stack has no instance CSV: the plugin still claims its export, and nothing else
    assert napari_get_reader(str(tmp_path / "z" / "z_labels.tif")) is not None
    (reopened,) = viewer.open(str(tmp_path / "z" / "z_labels.tif"), plugin="napari-prm")
    np.testing.assert_array_equal(reopened.data, np.stack([labels, labels]))
    np.testing.assert_allclose(reopened.scale, [2.0, 0.5, 0.5])
    np.testing.assert_allclose(reopened.translate, [1.0, 0.0, 7.0])


def test_stack_exports_tiff_and_csv_that_reopen_with_classes(make_napari_viewer, tmp_path):
    """A stack's instances (Z/T planes, labels unique over all planes as the predict widget
    numbers them) export as a label TIFF + an instance CSV naming each instance's plane, and
    the plugin's reader gives back the labels with their classes and scores."""
    viewer = make_napari_viewer()
    stack = np.zeros((3, 40, 50), np.uint16)
    stack[0, 5:15, 5:20] = 1
    stack[0, 20:30, 25:45] = 2
    stack[1, 10:25, 10:30] = 3
    stack[2, 2:8, 40:48] = 4
    stack[2, 30:38, 2:12] = 5  # painted by hand, no row
    features = pd.DataFrame({"index": [1, 2, 3, 4], "label": [1, 2, 3, 4], "class_index": [0, 1, 0, 2],
                             "class_name": ["cat", "dog", "cat", "bird"],
                             "score": [0.9, 0.4, 0.7, 0.2], "peak": [0, 1, 2, 3]})
    layer = viewer.add_labels(stack, name="z instances", features=features,
                              metadata={"class_names": ["cat", "dog", "bird"]})
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = layer
    written = widget.export(tmp_path, formats=["tiff", "csv"])
    assert sorted(p.name for p in written) == ["z_instances.csv", "z_labels.tif"], widget._status.value
    with open(tmp_path / "z_instances.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["plane"], r["id"], r["class"], r["area"]) for r in rows] == [
        ("0", "1", "cat", "150"), ("0", "2", "dog", "200"), ("1", "3", "cat", "300"),
        ("2", "4", "bird", "48"), ("2", "5", "unknown", "80")]

    (reopened,) = viewer.open(str(tmp_path / "z_labels.tif"), plugin="napari-prm")
    np.testing.assert_array_equal(reopened.data, stack)
    back = reopened.features.set_index("label")
    assert back["class_name"].to_dict() == {1: "cat", 2: "dog", 3: "cat", 4: "bird", 5: "unknown"}
    np.testing.assert_allclose(back["score"].to_numpy(), [0.9, 0.4, 0.7, 0.2, np.nan])

    # COCO holds 2-D images: refused for a stack, with the way out
    assert widget._layer.value is reopened  # it follows the layer opened (selected)
    assert widget._stem.value == "z"  # not "z_labels", which would write z_labels_labels.tif
    widget._layer.value = layer
    assert widget.export(tmp_path / "coco", formats=["coco"]) == []
    assert "TIFF" in widget._status.value and "CSV" in widget._status.value

    # the widget's own boxes (TIFF, COCO and CSV ticked by default) write what a stack can
    # hold and say what they left out; COCO alone is refused with the way out
    written = widget.export(tmp_path / "boxes")
    assert sorted(p.name for p in written) == ["z_instances.csv", "z_labels.tif"], widget._status.value
    assert "Not written: COCO JSON (RLE)" in widget._status.value and "3 planes" in widget._status.value
    for key, box in widget._formats.items():
        box.value = key == "coco"
    assert widget.export(tmp_path / "coco_box") == []
    assert "tick one of them" in widget._status.value


def test_png_and_tiff_exports_reopen_in_place_with_units_and_classes(make_napari_viewer, tmp_path):
    """The label PNG reopened at scale 1 at the origin (the TIFF kept scale and translate), and
    neither reopened layer had the class names (COCO's had): exporting it again or *Learn from
    corrections* lost the classes without a hit. Both files now record scale, translate, units
    and class names, and the plugin's reader gives them back."""
    viewer = make_napari_viewer()
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:40] = 3
    features = pd.DataFrame({"index": [3], "label": [3], "class_index": [1],
                             "class_name": ["dog"], "score": [0.8], "peak": [1]})
    layer = viewer.add_labels(labels, name="cat instances", features=features, scale=(0.5, 0.25),
                              translate=(3.0, -4.0), units=("µm", "µm"),
                              metadata={"class_names": ["cat", "dog", "bird"]})
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = layer
    assert widget.export(tmp_path, formats=["tiff", "png", "csv"]), widget._status.value
    # the instance CSV gives the area and box in µm too (the layer's scale): 20 × 30 pixels of 0.5 × 0.25 µm
    with open(tmp_path / "cat_instances.csv", newline="", encoding="utf-8") as handle:
        (row,) = csv.DictReader(handle)
    assert (row["area"], float(row["area_um2"]), float(row["bbox_y1_um"]), float(row["bbox_x1_um"])) == (
        "600", pytest.approx(75.0), pytest.approx(15.0), pytest.approx(10.0))
    for name in ("cat_labels.png", "cat_labels.tif"):
        (reopened,) = viewer.open(str(tmp_path / name), plugin="napari-prm")
        np.testing.assert_array_equal(reopened.data, labels)
        np.testing.assert_allclose(reopened.scale, [0.5, 0.25])
        np.testing.assert_allclose(reopened.translate, [3.0, -4.0])
        assert [str(unit) for unit in reopened.units] == ["micrometer", "micrometer"]
        assert reopened.metadata["class_names"] == ["cat", "dog", "bird"]
        assert reopened.features["class_name"].tolist() == ["dog"]
    # exported again from the reopened PNG: the COCO categories are all three classes still
    widget._layer.value = reopened
    assert widget.export(tmp_path / "again", formats=["coco"], stem="again"), widget._status.value
    coco = json.loads((tmp_path / "again" / "again_instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]


def test_a_typed_stem_stays_with_its_labels_layer(make_napari_viewer, small_cat):
    """Selecting another Labels layer replaced the stem the user had typed with that layer's. A
    typed stem now stays with the layer it was typed for: it comes back when that layer is
    selected again, and another layer is offered its own."""
    viewer = make_napari_viewer()
    for name in ("cat", "dog"):
        viewer.add_image(small_cat, name=name)
        viewer.add_labels(np.zeros(small_cat.shape[:2], np.uint16), name=f"{name} instances")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    viewer.layers.selection.active = viewer.layers["cat instances"]
    assert widget._stem.value == "cat"
    viewer.layers.selection.active = viewer.layers["dog instances"]
    assert widget._stem.value == "dog"  # an offered stem follows the selection
    widget._stem.value = "plate1_well_B2"  # typed by the user for the dog's labels
    viewer.layers.selection.active = viewer.layers["cat instances"]
    assert widget._layer.value is viewer.layers["cat instances"]
    assert widget._stem.value == "cat"
    viewer.layers.selection.active = viewer.layers["dog instances"]
    assert widget._stem.value == "plate1_well_B2"  # back with its layer
    widget._stem.value = ""  # emptied: the layer's stem is offered again
    viewer.layers.selection.active = viewer.layers["cat instances"]
    viewer.layers.selection.active = viewer.layers["dog instances"]
    assert widget._stem.value == "dog"


def test_a_typed_stem_and_overwrite_do_not_carry_over_to_another_layer(make_napari_viewer, small_cat,
                                                                       tmp_path):
    """Type a stem, tick *overwrite*, export layer A, select layer B: the stem and *overwrite*
    stayed, so the next Export wrote B's labels over A's files."""
    import tifffile

    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    first = np.zeros(small_cat.shape[:2], np.uint16)
    first[10:40, 20:60] = 1
    viewer.add_labels(first, name="cat instances")
    viewer.add_labels(np.zeros_like(first), name="cat - Labels")  # napari's New labels layer: stem "cat" too
    viewer.add_image(small_cat, name="dog")
    viewer.add_labels(np.full_like(first, 2), name="dog instances")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._folder.value = tmp_path
    viewer.layers.selection.active = viewer.layers["cat instances"]
    widget._stem.value = "plate1_well_B2"
    widget._overwrite.value = True
    (tmp_path / "plate1_well_B2_labels.tif").write_bytes(b"an older export")
    assert widget.export(formats=["tiff"]), widget._status.value
    viewer.layers.selection.active = viewer.layers["dog instances"]
    assert widget._stem.value == "dog" and not widget._overwrite.value
    assert [p.name for p in widget.export(formats=["tiff"])] == ["dog_labels.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "plate1_well_B2_labels.tif"), first)
    # the same offered stem: the cat's files are not replaced without ticking overwrite again
    viewer.layers.selection.active = viewer.layers["cat instances"]
    assert widget._stem.value == "plate1_well_B2"
    widget._stem.value = "cat"
    widget._overwrite.value = True
    assert widget.export(formats=["tiff"])
    viewer.layers.selection.active = viewer.layers["cat - Labels"]
    assert widget._stem.value == "cat" and not widget._overwrite.value
    assert widget.export(formats=["tiff"]) == []
    assert "tick 'overwrite existing files'" in widget._status.value
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cat_labels.tif"), first)
    # re-exporting the same layer after more corrections keeps overwrite: those are its own files
    viewer.layers.selection.active = viewer.layers["cat instances"]
    widget._overwrite.value = True
    assert widget.export(formats=["tiff"]) and widget.export(formats=["tiff"])


def test_a_coco_export_reopens_over_its_micrometre_image(make_napari_viewer, tmp_path):
    """The COCO JSON of instances of an image in µm (0.5 × 0.25 µm pixels, moved off the origin)
    reopened at scale 1 at the origin, in pixels, beside its image: 2-4 times too large and out of
    place (the label TIFF and PNG kept their world). *Export instances* and *File > Save* now record
    the layer's scale, translate and units in the COCO image entry, and the plugin's reader gives
    them back; the file stays a plain COCO file (pycocotools reads it)."""
    from pycocotools.coco import COCO

    viewer = make_napari_viewer()
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:40] = 3
    labels[35:55, 45:75] = 9
    features = pd.DataFrame({"index": [3, 9], "label": [3, 9], "class_index": [1, 0],
                             "class_name": ["dog", "cat"], "score": [0.8, 0.6], "peak": [1, 0]})
    layer = viewer.add_labels(labels, name="cat instances", features=features, scale=(0.5, 0.25),
                              translate=(3.0, -4.0), units=("µm", "µm"),
                              metadata={"class_names": ["cat", "dog", "bird"]})
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = layer
    assert widget.export(tmp_path, formats=["coco"]), widget._status.value
    viewer.layers.selection = {layer}
    assert viewer.layers.save(str(tmp_path / "saved.json"), selected=True, plugin="napari-prm")
    for name in ("cat_instances.json", "saved.json"):
        (reopened,) = viewer.open(str(tmp_path / name), plugin="napari-prm")
        np.testing.assert_array_equal(reopened.data, labels)
        np.testing.assert_allclose(reopened.scale, [0.5, 0.25])
        np.testing.assert_allclose(reopened.translate, [3.0, -4.0])
        assert [str(unit) for unit in reopened.units] == ["micrometer", "micrometer"]
        np.testing.assert_allclose(reopened.data_to_world([10, 10]), [8.0, -1.5])  # as the layer's pixel
        assert reopened.features.set_index("label")["class_name"].to_dict() == {3: "dog", 9: "cat"}
        coco = COCO(str(tmp_path / name))
        assert sorted(coco.getAnnIds()) == [3, 9] and coco.imgs[1]["height"] == 60
    # a layer in pixels at the origin: its scale 1 and translate 0, and no units
    plain = viewer.add_labels(labels, name="plain instances", metadata={"class_names": ["cat", "dog", "bird"]})
    widget._layer.value = plain
    assert widget.export(tmp_path / "plain", formats=["coco"]), widget._status.value
    (image,) = json.loads((tmp_path / "plain" / "plain_instances.json").read_text())["images"]
    assert set(image) == {"id", "file_name", "height", "width", "napari_scale", "napari_translate"}
    assert image["napari_scale"] == [1.0, 1.0] and image["napari_translate"] == [0.0, 0.0]


def _gated_export(monkeypatch, request):
    """`io.export_instances` as the widget calls it, held until ``gate`` is set; ``threads`` records
    the thread that wrote."""
    import threading

    from napari_prm import io

    gate, threads, real = threading.Event(), [], io.export_instances

    def export_instances(*args, **kwargs):
        threads.append(threading.current_thread())
        assert gate.wait(30), "the test never let the export go on"
        return real(*args, **kwargs)

    monkeypatch.setattr(io, "export_instances", export_instances)
    request.addfinalizer(gate.set)  # a failed test leaves no worker waiting
    return gate, threads


def test_the_export_button_writes_in_a_worker_thread(labels_viewer, tmp_path, qtbot, monkeypatch, request):
    """Writing a large label image's COCO RLE or CSV took tens of seconds on the Qt thread, napari frozen:
    the button's export returns at once, and the files and the message come from a worker."""
    import threading

    _, widget = labels_viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    layer = labels_viewer.layers["cat instances"]
    before = layer.data.copy()
    gate, threads = _gated_export(monkeypatch, request)
    out = tmp_path / "out"
    out.mkdir()
    widget._folder.value = out
    widget._stem.value = "cells"
    widget._button.native.click()  # returns while the export is held
    qtbot.waitUntil(lambda: bool(threads), timeout=10_000)
    assert threads[0] is not threading.main_thread()
    assert widget.running and not widget._button.enabled and "Exporting cells" in widget._status.value
    assert not list(out.iterdir())
    # a second export while busy is refused, and said; an edit now is not in the files being written
    assert widget.start(out, formats=["csv"]) is None
    assert "already being written" in widget._status.value
    layer.data[layer.data == 9] = 0
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget._button.enabled and widget._status.value.startswith("Wrote cells_labels.tif")
    assert sorted(p.name for p in widget.last_written) == [
        "cells_instances.csv", "cells_instances.json", "cells_labels.tif"]
    ((data, _, _),) = napari_get_reader(str(out / "cells_labels.tif"))(str(out / "cells_labels.tif"))
    assert np.array_equal(data, before)
    assert len(threads) == 1


def test_cancel_stops_the_export_button_and_leaves_no_file(labels_viewer, tmp_path, qtbot, monkeypatch, request):
    """The button's export ran in a worker with no way to stop it (a large stack's CSV takes minutes): *Cancel*
    stops it before its next step; no file of it is left, the files an earlier export wrote are as they were,
    and the status line says so. The activity dock's cancel button does the same."""
    _, widget = labels_viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    out = tmp_path / "out"
    assert widget.export(out, stem="cells")  # an earlier export, replaced by the one cancelled
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    labels_viewer.layers["cat instances"].data[:] = 0
    gate, threads = _gated_export(monkeypatch, request)
    assert not widget._cancel_button.enabled
    assert widget.start(out, stem="cells", overwrite=True) is not None
    qtbot.waitUntil(lambda: bool(threads), timeout=10_000)
    assert widget._cancel_button.enabled
    widget._cancel_button.native.click()
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget._status.value == f"Export cancelled: nothing was written to {out} (files already there are as " \
        "they were)."
    assert {p.name: p.read_bytes() for p in out.rglob("*")} == before and widget.last_written == []
    assert widget._button.enabled and not widget._cancel_button.enabled
    # into a new folder, cancelled from the activity dock's bar: no folder, no file
    gate.clear()
    assert widget.start(tmp_path / "new", stem="cells") is not None
    qtbot.waitUntil(lambda: len(threads) == 2, timeout=10_000)
    widget.progress_bar.bar.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget._status.value.startswith("Export cancelled") and not (tmp_path / "new").exists()
    # a new export, not cancelled, writes
    assert widget.start(out, stem="cells", overwrite=True) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget._status.value.startswith("Wrote cells_labels.tif")
    assert (out / "cells_labels.tif").read_bytes() != before["cells_labels.tif"]


def test_a_background_exports_errors_reach_the_status_line(labels_viewer, tmp_path, qtbot, monkeypatch):
    _, widget = labels_viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    assert widget.start(tmp_path, formats=["tiff"]) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    # the file exists: refused in the worker, said as the button's export says it
    assert widget.start(tmp_path, formats=["tiff"]) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget._status.value.startswith("Export failed: ") and "tick 'overwrite existing files'" in \
        widget._status.value and widget._button.enabled

    from napari_prm import io

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(io, "export_instances", broken)
    assert widget.start(tmp_path / "other", formats=["tiff"]) is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget._status.value == "Export failed: RuntimeError: disk on fire" and widget._button.enabled


def test_the_export_button_reads_a_lazy_labels_layer_once_in_its_worker(make_napari_viewer, tmp_path, qtbot):
    """A folder run's Labels layer is a lazy dask stack, each plane read from its file when needed (thousands
    of files): the button's export read every plane on the Qt thread, twice (np.shares_memory computes a dask
    array), napari frozen; they are read once, in the worker."""
    import threading

    import dask
    import dask.array as da

    reads, threads = [], []

    def plane(value):
        reads.append(value)
        threads.append(threading.current_thread())
        out = np.zeros((20, 30), np.uint32)
        out[2:8, 3:9] = value
        return out

    viewer = make_napari_viewer()
    viewer.add_labels(da.stack([da.from_delayed(dask.delayed(plane)(v), (20, 30), np.uint32) for v in (1, 2, 3)]),
                      name="folder labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = viewer.layers["folder labels"]
    reads.clear()  # napari read the plane it shows
    threads.clear()
    for key, box in widget._formats.items():
        box.value = key in ("tiff", "coco")
    assert widget.start(tmp_path, stem="folder") is not None
    assert not reads  # none on the Qt thread
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget._status.value.startswith("Wrote folder_labels.tif")
    assert "Not written: COCO JSON" in widget._status.value  # a stack: the 2-D formats left out, as ever
    assert sorted(reads) == [1, 2, 3] and threading.main_thread() not in threads
    ((data, _, _),) = napari_get_reader(str(tmp_path / "folder_labels.tif"))(str(tmp_path / "folder_labels.tif"))
    assert data.shape == (3, 20, 30) and [int(data[i].max()) for i in range(3)] == [1, 2, 3]


def test_a_stack_with_named_axes_exports_a_tiff_that_names_them(make_napari_viewer, tmp_path):
    """A (3, 16, 16) Labels layer without units whose axes the viewer names z, y, x was written with
    tifffile's unnamed QYX (the command line writes its stacks' ZYX or TYX): its label TIFF names
    them now; so do the layer's own axis labels, a time axis' name, and a viewer with more axes
    (the layer's are its last ones). Unnamed axes keep QYX."""
    import tifffile

    viewer = make_napari_viewer()
    stack = np.zeros((3, 16, 16), np.uint16)
    stack[0, 2:6, 2:6], stack[2, 8:12, 4:9] = 1, 2
    layer = viewer.add_labels(stack, name="Labels")  # painted in napari: no image of its own
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = layer

    def exported_axes(folder):
        (tif,) = [path for path in widget.export(tmp_path / folder, formats=["tiff"]) if path.suffix == ".tif"]
        with tifffile.TiffFile(tif) as handle:
            np.testing.assert_array_equal(handle.asarray(), stack)
            return handle.series[0].axes

    assert exported_axes("unnamed") == "QYX"  # nothing says what the planes are
    viewer.dims.axis_labels = ("z", "y", "x")
    assert tuple(layer.axis_labels) == ("-3", "-2", "-1")  # the viewer's names only
    assert exported_axes("viewer") == "ZYX"
    viewer.dims.axis_labels = ("-3", "-2", "-1")
    layer.axis_labels = ("Time", "y", "x")  # the layer's own names
    assert exported_axes("layer") == "TYX"
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="volume")  # the viewer gets a 4th axis
    layer.axis_labels = ("-3", "-2", "-1")  # (napari gives the viewer the layers' names again)
    viewer.dims.axis_labels = ("c", "z", "-2", "-1")
    widget._layer.value = layer
    assert exported_axes("more") == "ZYX"  # the viewer's last three axes are the layer's
    viewer.dims.axis_labels = ("c", "channel", "-2", "-1")
    assert exported_axes("other") == "QYX"  # a name that is no plane axis: unnamed, as before


def test_a_stack_exported_with_named_axes_reopens_with_them(make_napari_viewer, tmp_path):
    """A z, y, x stack's labels (as *Run* on all planes of a z, y, x image gives them), exported and opened with
    napari-prm's reader, have the axis labels z, y, x the TIFF records (they came back as -3, -2, -1),
    as they have its scale; t for a time axis; unnamed axes stay napari's."""
    stack = np.zeros((3, 16, 16), np.uint16)
    stack[0, 2:6, 2:6], stack[2, 8:12, 4:9] = 1, 2
    for names, expected in ((("z", "y", "x"), ("z", "y", "x")), (("t", "y", "x"), ("t", "y", "x")),
                            (("-3", "-2", "-1"), ("-3", "-2", "-1"))):
        viewer = make_napari_viewer()  # one each: napari gives a viewer the names of its layers' axes
        layer = viewer.add_labels(stack, name="cells", scale=(2.0, 0.5, 0.5), axis_labels=names)
        _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
        widget._layer.value = layer
        written = widget.export(tmp_path / names[0], formats=["tiff", "csv"])
        viewer.layers.remove(layer)  # opened alone, as in a new session
        (tif,) = [path for path in written if path.suffix == ".tif"]
        (opened,) = viewer.open(str(tif), plugin="napari-prm")
        assert tuple(opened.axis_labels) == expected
        np.testing.assert_array_equal(opened.data, stack)
        np.testing.assert_allclose(opened.scale, (2.0, 0.5, 0.5))


class _HeldStack:
    """A lazy (dask) stack of three 20x30 label planes, as a folder run's Labels layer is; the export's
    worker is held reading its first plane until `release`. ``reads`` lists the planes the worker read."""

    def __init__(self, request):
        import threading

        import dask

        self.reads, self.reading, self._released = [], threading.Event(), threading.Event()
        # each plane read on the thread that asks for it (not in dask's pool): napari's on the Qt thread
        synchronous = dask.config.set(scheduler="synchronous")
        request.addfinalizer(lambda: synchronous.__exit__(None, None, None))
        request.addfinalizer(self._released.set)  # a failed test leaves no worker waiting

    def plane(self, value):
        import threading

        if threading.current_thread() is not threading.main_thread():  # napari reads the plane it shows
            self.reads.append(value)
            self.reading.set()
            assert self._released.wait(30), "the test never let the export go on"
        out = np.zeros((20, 30), np.uint32)
        out[2:8, 3:9] = value
        return out

    def layer_data(self):
        import dask
        import dask.array as da

        return da.stack([da.from_delayed(dask.delayed(self.plane)(v), (20, 30), np.uint32) for v in (1, 2, 3)])

    def release(self):
        self._released.set()


def _export_held(viewer, qtbot, request, out, overwrite=False):
    """Start the Export widget's export of a `_HeldStack` into ``out``; return the widget, its worker
    and the stack, once the worker is held reading the first plane."""
    stack = _HeldStack(request)
    viewer.add_labels(stack.layer_data(), name="folder labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = viewer.layers["folder labels"]
    worker = widget.start(out, stem="folder", formats=["tiff", "csv"], overwrite=overwrite)
    assert worker is not None, widget._status.value
    qtbot.waitUntil(stack.reading.is_set, timeout=10_000)
    return widget, worker, stack


def test_closing_the_widget_stops_its_export_like_cancel(make_napari_viewer, tmp_path, qtbot, request):
    """Closing the Export widget (the dock's close button takes it out of its dock, as
    ``remove_dock_widget`` does) left its export running: the files were written after the user had
    closed the panel. It now stops as *Cancel* does, before the next plane is read: no file and no
    folder of the export is left, and the message says why."""
    viewer = make_napari_viewer()
    out = tmp_path / "new" / "export"
    widget, worker, stack = _export_held(viewer, qtbot, request, out)
    viewer.window.remove_dock_widget(widget.native)
    stack.release()
    qtbot.waitUntil(lambda: not worker.is_running and not widget.running, timeout=30_000)
    qtbot.wait(50)
    assert stack.reads == [1]  # planes 2 and 3 never read
    assert not (tmp_path / "new").exists() and widget.last_written == []
    assert widget._status.value == (f"Export stopped as the widget was closed: nothing was written to {out} "
                                    "(files already there are as they were).")
    assert widget._button.enabled and not widget._cancel_button.enabled
    assert widget.progress_bar is None  # its bar left the activity dock


def test_closing_napari_stops_the_export_without_touching_its_qt_widgets(make_napari_viewer, tmp_path, qtbot,
                                                                        request):
    """Closing napari while the Export widget wrote went on writing the files, replacing those of an
    earlier export (napari's request that the worker quit was ignored, and the widget's deletion only
    silenced it). It now stops as *Cancel* does: the earlier files are as they were, none of this export
    is left, and nothing is written into the deleted Qt widgets (pytest-qt fails a test on an exception
    in a slot)."""
    viewer = make_napari_viewer()
    out = tmp_path / "out"
    earlier = np.zeros((20, 30), np.uint16)
    earlier[1:4, 1:4] = 7
    from napari_prm import io

    io.export_instances(earlier, None, None, out, formats=["tiff", "csv"], stem="folder")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    widget, worker, stack = _export_held(viewer, qtbot, request, out, overwrite=True)
    destroyed = []
    widget.native.destroyed.connect(lambda *_: destroyed.append(True))
    viewer.close()
    stack.release()
    qtbot.waitUntil(lambda: not worker.is_running and not widget.running and bool(destroyed), timeout=30_000)
    qtbot.wait(50)
    assert stack.reads == [1]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and widget.last_written == []


def test_a_run_on_a_calibrated_tiff_opened_by_napari_exports_its_pixel_size(make_napari_viewer, qtbot, tiny_checkpoint,
                                                                              tmp_path):
    """napari's own reader opens an ImageJ TIFF of 0.65 µm pixels at scale 1, in pixels: a run on it and *Export
    instances* wrote the label TIFF without the file's pixel size and the CSV without µm columns, where
    ``napari-prm predict`` of the same file writes both. The export now takes the image file's pixel size (the
    layer's own world, scale 1, still recorded: it reopens over its image), and an export reopened with the
    plugin's reader and exported again (after a correction) keeps it, with or without its image open."""
    import tifffile

    from conftest import shapes_scene
    from napari_prm import io

    image, candidates, _, _ = shapes_scene(0)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "um"})
    viewer = make_napari_viewer()
    (opened,) = viewer.open(str(path), plugin="napari")
    np.testing.assert_allclose(opened.scale, [1.0, 1.0])  # napari's reader leaves the pixel size out
    predict_widget = _run_on_candidates(viewer, qtbot, tiny_checkpoint, image, candidates)
    instances = viewer.layers["cells instances"]
    assert len(instances.features) == 2, predict_widget.last_message
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = instances
    assert widget.export(tmp_path / "out", formats=["tiff", "csv"]), widget._status.value
    label_tiff = tmp_path / "out" / "cells_labels.tif"
    np.testing.assert_allclose(io.labels._pixel_size_um(io.tiff_pixel_size(label_tiff)), [0.65, 0.65])
    rows = list(csv.DictReader(open(tmp_path / "out" / "cells_instances.csv")))
    assert [float(row["area_um2"]) for row in rows] == pytest.approx(
        [int(row["area"]) * 0.65 ** 2 for row in rows])
    assert {row["class"] for row in rows} <= {"cat", "dog", "bird"}
    (reopened,) = viewer.open(str(label_tiff), plugin="napari-prm")
    np.testing.assert_allclose(reopened.scale, [1.0, 1.0])  # over its image, opened at scale 1
    # corrected and exported again: with its image open, and with the export alone in napari
    data = reopened.data.copy()
    data[data == rows[0]["id"]] = 0
    reopened.data = data
    for viewer_of_it in (viewer, make_napari_viewer()):
        if viewer_of_it is not viewer:
            (reopened,) = viewer_of_it.open(str(label_tiff), plugin="napari-prm")
        _, again = viewer_of_it.window.add_plugin_dock_widget("napari-prm", "Export instances")
        again._layer.value = reopened
        folder = tmp_path / f"again{len(list(tmp_path.glob('again*')))}"
        assert again.export(folder, formats=["tiff", "csv"], stem="cells"), again._status.value
        np.testing.assert_allclose(io.labels._pixel_size_um(io.tiff_pixel_size(folder / "cells_labels.tif")),
                                   [0.65, 0.65])
        assert "area_um2" in (folder / "cells_instances.csv").read_text().splitlines()[0]
    viewer_of_it.layers.selection = {reopened}  # File > Save of it, as a .tif
    assert viewer_of_it.layers.save(str(tmp_path / "saved.tif"), selected=True, plugin="napari-prm")
    np.testing.assert_allclose(io.labels._pixel_size_um(io.tiff_pixel_size(tmp_path / "saved.tif")), [0.65, 0.65])
    assert "area_um2" in (tmp_path / "saved_instances.csv").read_text().splitlines()[0]


def test_a_layer_at_its_files_pixel_size_without_a_unit_exports_it(make_napari_viewer, tmp_path):
    """Readers of microscopy files put the pixel size in µm in a layer's scale without a unit (napari's
    ``pixel``): a Labels layer at that scale gets the file's pixel size; one at another scale without a unit
    (a pyramid's coarser level, here 2 pixels) gets none."""
    import tifffile

    from napari_prm import io

    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.zeros((60, 80), np.uint8), imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"unit": "um"})
    viewer = make_napari_viewer()
    (opened,) = viewer.open(str(path), plugin="napari")
    opened.scale = (0.65, 0.65)
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:40] = 3
    layer = viewer.add_labels(labels, name="cells - Labels", scale=(0.65, 0.65))
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = layer
    assert widget.export(tmp_path / "out", formats=["tiff", "csv"]), widget._status.value
    np.testing.assert_allclose(io.labels._pixel_size_um(io.tiff_pixel_size(tmp_path / "out" / "cells_labels.tif")),
                               [0.65, 0.65])
    assert "area_um2" in (tmp_path / "out" / "cells_instances.csv").read_text().splitlines()[0]
    (reopened,) = viewer.open(str(tmp_path / "out" / "cells_labels.tif"), plugin="napari-prm")
    np.testing.assert_allclose(reopened.scale, [0.65, 0.65])  # over its image
    opened.scale = layer.scale = (2.0, 2.0)
    widget._layer.value = layer  # not the export opened since
    assert widget.export(tmp_path / "coarse", formats=["tiff", "csv"]), widget._status.value
    assert io.tiff_pixel_size(tmp_path / "coarse" / "cells_labels.tif") is None
    assert "area_um2" not in (tmp_path / "coarse" / "cells_instances.csv").read_text().splitlines()[0]


def test_a_layer_scaled_in_micrometres_keeps_its_own_pixel_size_over_its_files(make_napari_viewer, tmp_path):
    """The file's pixel size is for a layer in pixels only: a layer whose scale is in µm is exported at its
    scale (set by hand to 0.5 µm here, the file recording 0.65 µm), as before."""
    import tifffile

    from napari_prm import io

    image = np.zeros((60, 80), np.uint8)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "um"})
    viewer = make_napari_viewer()
    (opened,) = viewer.open(str(path), plugin="napari")
    opened.scale, opened.units = (0.5, 0.5), ("µm", "µm")
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:40] = 3
    layer = viewer.add_labels(labels, name="cells - Labels", scale=(0.5, 0.5), units=("µm", "µm"))
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    widget._layer.value = layer
    assert widget.export(tmp_path / "out", formats=["tiff"]), widget._status.value
    np.testing.assert_allclose(io.labels._pixel_size_um(io.tiff_pixel_size(tmp_path / "out" / "cells_labels.tif")),
                               [0.5, 0.5])


def test_opened_after_a_run_with_a_label_image_as_proposals_it_offers_the_instances(
        make_napari_viewer, qtbot, tiny_checkpoint):
    """A run leaves its peaks layer selected; *Export instances* opened then offered the first Labels layer of the
    list: the label image given as proposals (as docs/usage.md advises for cells), whose labels it wrote as
    class ``unknown`` under the image's stem. It offers the Labels layer added last, the run's instances."""
    from conftest import shapes_scene

    image, candidates, _, _ = shapes_scene(0)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    _run_on_candidates(viewer, qtbot, tiny_checkpoint, image, candidates)
    assert viewer.layers.selection.active is viewer.layers["cells peaks"]
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances")
    assert widget._layer.value is viewer.layers["cells instances"]
    assert widget._stem.value == "cells"


def _run_on_candidates(viewer, qtbot, checkpoint, image, candidates):
    """Run the tiny model on the viewer's image with ``candidates`` as its proposals (2 peaks); the predict widget."""
    from test_widget_predict import open_predict, peak_threshold_for, run_and_wait

    viewer.add_labels(candidates, name="candidates")
    predict_widget = open_predict(viewer, qtbot, checkpoint)
    predict_widget.proposals.value = viewer.layers["candidates"]
    predict_widget.peak_threshold.value = peak_threshold_for(image, checkpoint, 2)
    predict_widget.class_threshold.value = -1e4
    run_and_wait(predict_widget, qtbot)
    return predict_widget
