"""The napari writer for Labels layers (label TIFF + instance CSV, COCO JSON)."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from pycocotools import mask as mask_utils

from napari_prm import io
from napari_prm._writer import sidecar_csv, write_labels


@pytest.fixture
def instances():
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 5:20] = 1
    labels[20:35, 30:45] = 2
    labels[25:30, 5:10] = 3  # painted by hand: no row in the table
    features = pd.DataFrame({
        "index": [1, 2], "label": [1, 2], "class_index": [281, 504],
        "class_name": ["tabby", "coffee mug"], "score": [0.75, 0.5], "peak": [0, 3],
    })
    return labels, {"features": features, "metadata": {}, "name": "cat instances"}


def test_sidecar_name():
    assert sidecar_csv("/a/b/x_labels.tif").name == "x_instances.csv"
    assert sidecar_csv("/a/b/x.tiff").name == "x_instances.csv"


def test_tiff_with_instance_csv(tmp_path, instances):
    labels, meta = instances
    written = write_labels(str(tmp_path / "cat_labels.tif"), labels, meta)
    assert [p.split("/")[-1] for p in written] == ["cat_labels.tif", "cat_instances.csv"]
    stored = tifffile.imread(tmp_path / "cat_labels.tif")
    assert stored.dtype == np.uint16 and np.array_equal(stored, labels)
    table = io.read_instances_csv(tmp_path / "cat_instances.csv")
    assert table["label"].tolist() == [1, 2, 3]
    assert table["class_name"].tolist() == ["tabby", "coffee mug", "unknown"]
    assert table["area"].tolist() == [150, 225, 25]
    assert table["bbox"][1].tolist() == [20, 30, 35, 45]
    assert "area_um2" not in (tmp_path / "cat_instances.csv").read_text(encoding="utf-8")  # a layer in pixels


def test_the_instance_csv_of_a_layer_in_micrometres_gives_its_areas_in_micrometres(tmp_path, instances):
    """*File → Save* of a layer scaled in µm wrote its instance CSV in pixels only."""
    labels, meta = instances
    meta = {**meta, "scale": (0.5, 0.2), "units": ("micrometer", "micrometer")}
    write_labels(str(tmp_path / "cat_labels.tif"), labels, meta)
    rows = (tmp_path / "cat_instances.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].split(",") == [*io.INSTANCE_CSV_COLUMNS, *io.INSTANCE_CSV_UM_COLUMNS]
    assert rows[2].split(",")[-5:] == ["22.5", "10", "6", "17.5", "9"]  # 225 px; rows 20-35, columns 30-45


def test_coco_json_round_trips_through_pycocotools(tmp_path, instances):
    labels, meta = instances
    path = tmp_path / "cat.json"
    assert write_labels(str(path), labels, meta) == [str(path)]
    coco = json.loads(path.read_text())
    by_label = {a["label"]: a for a in coco["annotations"]}
    for label in (1, 2, 3):
        rle = dict(by_label[label]["segmentation"])
        rle["counts"] = rle["counts"].encode()
        assert np.array_equal(mask_utils.decode(rle).astype(bool), labels == label)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert names[by_label[1]["category_id"]] == "tabby"
    assert names[by_label[3]["category_id"]] == "unknown"
    assert by_label[2]["score"] == 0.5
    # the image is the layer's name without a recorded image file, else that file
    assert [image["file_name"] for image in coco["images"]] == ["cat instances"]
    write_labels(str(path), labels, {**meta, "metadata": {"image_file_name": "cat.png"}})
    assert [image["file_name"] for image in json.loads(path.read_text())["images"]] == ["cat.png"]


def test_through_napari_save(make_napari_viewer, tmp_path, instances):
    labels, meta = instances
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, features=meta["features"], name="cat instances")
    saved = viewer.layers.save(str(tmp_path / "saved.tif"), selected=False, plugin="napari-prm")
    assert np.array_equal(tifffile.imread(saved[0]), layer.data)
    assert (tmp_path / "saved_instances.csv").is_file()


def test_json_needs_a_2d_layer(tmp_path, instances):
    labels, meta = instances
    with pytest.raises(ValueError, match="2-D"):
        write_labels(str(tmp_path / "stack.json"), np.stack([labels, labels]), meta)


def test_tiff_of_a_stack_with_its_instance_csv(tmp_path, instances):
    """Saving a stack's layer as TIFF writes its instance CSV too, a row per plane and label."""
    labels, meta = instances
    stack = np.stack([labels, np.where(labels == 1, 0, labels)])
    written = write_labels(str(tmp_path / "z_labels.tif"), stack, meta)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["z_labels.tif", "z_instances.csv"]
    table = io.read_instances_csv(tmp_path / "z_instances.csv")
    assert table["plane"].ravel().tolist() == [0, 0, 0, 1, 1]
    assert table["label"].tolist() == [1, 2, 3, 2, 3]
    assert list(table["class_name"]) == ["tabby", "coffee mug", "unknown", "coffee mug", "unknown"]


def test_tiff_of_a_stack_names_the_axes_the_layer_names(tmp_path, instances):
    """*File → Save* of a (T, Y, X) layer whose axes are named t, y, x wrote tifffile's unnamed QYX:
    its TIFF names them TYX now; a layer of unnamed axes keeps QYX."""
    labels, meta = instances
    stack = np.stack([labels, labels])
    for names, expected in ((("t", "y", "x"), "TYX"), (("-3", "-2", "-1"), "QYX")):
        (tif, _) = write_labels(str(tmp_path / f"{expected}_labels.tif"), stack, {**meta, "axis_labels": names})
        with tifffile.TiffFile(tif) as handle:
            assert handle.series[0].axes == expected
        np.testing.assert_array_equal(io.read_label_image(tif), stack)
