"""The napari reader for napari-prm exports."""

import numpy as np
import pandas as pd
import tifffile

from napari_prm import io
from napari_prm._reader import napari_get_reader


def make_export(tmp_path, formats):
    labels = np.zeros((30, 40), np.uint16)
    labels[2:12, 3:13] = 1
    labels[15:25, 20:38] = 7
    table = {"label": np.array([1, 7]), "class_index": np.array([1, 0]),
             "class_name": np.array(["dog", "cat"], object), "score": np.array([0.9, 0.4]),
             "peak": np.array([0, 1])}
    io.export_instances(labels, table, ["cat", "dog"], tmp_path, formats=formats, stem="x")
    return labels


def test_plain_files_are_left_to_other_readers(tmp_path):
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.json").write_text('["just", "a", "list"]')
    assert napari_get_reader(str(tmp_path / "image.tif")) is None
    assert napari_get_reader(str(tmp_path / "notes.json")) is None
    assert napari_get_reader(str(tmp_path / "missing.json")) is None


def test_coco_json_reads_as_labels_with_classes(tmp_path):
    labels = make_export(tmp_path, ["coco"])
    reader = napari_get_reader(str(tmp_path / "x_instances.json"))
    ((data, meta, kind),) = reader(str(tmp_path / "x_instances.json"))
    assert kind == "labels" and np.array_equal(data, labels)
    features = pd.DataFrame(meta["features"])
    assert features["index"].tolist() == [1, 7]
    assert features["class_name"].tolist() == ["dog", "cat"]
    np.testing.assert_allclose(features["score"], [0.9, 0.4])
    assert meta["metadata"]["class_names"] == ["cat", "dog"]


def test_label_tiff_with_its_csv(tmp_path, make_napari_viewer):
    labels = make_export(tmp_path, ["tiff", "csv"])
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "x_labels.tif"), plugin="napari-prm")
    assert type(layer).__name__ == "Labels" and np.array_equal(layer.data, labels)
    assert layer.features["class_name"].tolist() == ["dog", "cat"]
    assert layer.features["area"].tolist() == [100, 180]
