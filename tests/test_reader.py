"""The napari reader for napari-prm exports."""

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
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



@pytest.mark.parametrize("suffix, gray", [(".png", False), (".tif", False), (".tif", True)])
def test_an_image_beside_its_instance_csv_is_left_to_napari(tmp_path, suffix, gray):
    """`napari-prm demo` writes chelsea.png beside chelsea_instances.csv (and `predict --out`
    into the image folder does the same): the image is not a label image (of shape (H, W, 3), or
    a gray microscopy TIFF), so napari's own reader opens it; its label image still opens with
    the table."""
    from skimage import data

    from napari_prm.cli import main

    photo = tmp_path / f"chelsea{suffix}"
    image = data.chelsea()[::4, ::4]
    if gray:
        image = (image.mean(-1) * 16).astype(np.uint16)
    if suffix == ".tif":
        tifffile.imwrite(photo, image, photometric="minisblack" if gray else "rgb")
    else:
        iio.imwrite(photo, image)
    assert main(["predict", str(photo), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "chelsea_instances.csv").is_file()
    assert napari_get_reader(str(photo)) is None
    ((labels, meta, kind),) = napari_get_reader(str(tmp_path / "chelsea_labels.tif"))(
        str(tmp_path / "chelsea_labels.tif"))
    assert kind == "labels" and labels.shape == image.shape[:2] and "features" in meta

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


def test_stack_label_tiff_with_its_csv_gives_one_feature_row_per_label(tmp_path):
    """A stack's CSV has a row per (plane, label); the layer's features have one per label:
    its class and score, and its area over all planes."""
    stack = np.zeros((3, 30, 40), np.uint16)
    stack[0, 2:12, 3:13] = 1
    stack[2, 0:5, 0:4] = 1  # label 1 lies in planes 0 and 2
    stack[1, 15:25, 20:38] = 7
    table = {"label": np.array([1, 7]), "class_index": np.array([1, 0]),
             "class_name": np.array(["dog", "cat"], object), "score": np.array([0.9, 0.4]),
             "peak": np.array([0, 1])}
    io.export_instances(stack, table, ["cat", "dog"], tmp_path, formats=["tiff", "csv"], stem="x")
    path = str(tmp_path / "x_labels.tif")
    ((data, meta, kind),) = napari_get_reader(path)(path)
    assert kind == "labels" and np.array_equal(data, stack)
    features = pd.DataFrame(meta["features"])
    assert features["label"].tolist() == [1, 7] and features["index"].tolist() == [1, 7]
    assert features["class_name"].tolist() == ["dog", "cat"]
    np.testing.assert_allclose(features["score"], [0.9, 0.4])
    assert features["area"].tolist() == [120, 180]
    assert "plane" not in features

    # a CSV whose planes do not fit the image, or that gives a label two classes, is refused
    csv_path = tmp_path / "x_instances.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("2,1,dog,1,", "2,1,cat,0,"))
    with pytest.raises(ValueError, match="label 1 has different class_index values"):
        napari_get_reader(path)(path)
    tifffile.imwrite(tmp_path / "x_labels.tif", stack[0])
    csv_path.write_text(text)
    with pytest.raises(ValueError, match="planes of 1 leading axes, but the label image has 0"):
        napari_get_reader(path)(path)
