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


def test_the_label_tiff_with_its_csv_and_the_coco_json_give_the_same_peaks(tmp_path):
    """An export re-opened from its label TIFF + CSV and from its COCO JSON has the same ``peak`` column:
    the predicted instances' peaks, -1 (no peak) for one painted by hand. The CSV held no peaks, so the
    TIFF's layer had none and was completed with -1 for every instance (COCO gave 0 and 1); a CSV
    written before the column was reads as -1 for all."""
    labels = np.zeros((20, 24), np.uint16)
    labels[2:6, 2:6], labels[8:12, 8:14], labels[14:18, 2:6] = 1, 2, 3  # 3: painted, no row
    table = {"label": np.array([1, 2]), "class_index": np.array([0, 1]),
             "class_name": np.array(["cat", "dog"], object), "score": np.array([0.9, 0.5]), "peak": np.array([0, 1])}
    io.export_instances(labels, table, ["cat", "dog"], tmp_path, stem="x", formats=["tiff", "csv", "coco"])
    peaks = {}
    for name in ("x_labels.tif", "x_instances.json"):
        ((data, meta, _),) = napari_get_reader(str(tmp_path / name))(str(tmp_path / name))
        np.testing.assert_array_equal(data, labels)
        features = pd.DataFrame(meta["features"])
        assert features["label"].tolist() == [1, 2, 3]
        peaks[name] = features["peak"].tolist()
    assert peaks == {"x_labels.tif": [0, 1, -1], "x_instances.json": [0, 1, -1]}

    stack = np.stack([labels, np.where(labels == 2, 0, labels)])  # a stack's rows fold to one per label
    io.export_instances(stack, table, ["cat", "dog"], tmp_path, stem="s", formats=["tiff", "csv"])
    ((_, meta, _),) = napari_get_reader(str(tmp_path / "s_labels.tif"))(str(tmp_path / "s_labels.tif"))
    assert pd.DataFrame(meta["features"])["peak"].tolist() == [0, 1, -1]

    csv = tmp_path / "x_instances.csv"  # as written before the peak column
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert io.read_instances_csv(csv)["peak"].tolist() == [-1, -1, -1]


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


def _count_file_reads(monkeypatch) -> tuple[list, list]:
    """The TIFFs tifffile opens, and the files `napari_prm.io.images` opens itself (a TIFF's first bytes,
    `_is_tiff`), each opened as before."""
    from napari_prm.io import images

    tiffs, heads = [], []
    construct = tifffile.TiffFile.__init__

    def counted(self, *args, **kwargs):
        tiffs.append(str(args[0] if args else kwargs.get("file")))
        construct(self, *args, **kwargs)

    def counted_open(file, *args, **kwargs):
        heads.append(str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counted)
    monkeypatch.setattr(images, "open", counted_open, raising=False)  # its name for the builtin
    return tiffs, heads


def test_a_label_stack_tiff_is_read_from_one_opening_of_the_file(tmp_path, monkeypatch):
    """Reading an exported label stack opened the TIFF four times (its labels, its scale and units, its axes,
    its class names) and read its first bytes again for each: once each now, with the same layer."""
    stack = np.zeros((3, 30, 40), np.uint16)
    stack[0, 2:12, 3:13] = 1
    stack[1, 15:25, 20:38] = 7
    table = {"label": np.array([1, 7]), "class_index": np.array([1, 0]),
             "class_name": np.array(["dog", "cat"], object), "score": np.array([0.9, 0.4]),
             "peak": np.array([0, 1])}
    world = {"scale": (2.0, 0.5, 0.5), "translate": (0.0, 10.0, 20.0), "units": ("um", "um", "um")}
    io.export_instances(stack, table, ["cat", "dog", "bird"], tmp_path, formats=["tiff", "csv"], stem="x",
                        world=world, axes="ZYX")
    path = str(tmp_path / "x_labels.tif")
    reader = napari_get_reader(path)
    tiffs, heads = _count_file_reads(monkeypatch)
    ((data, meta, kind),) = reader(path)
    assert tiffs == [path] and heads == [path]
    assert kind == "labels" and np.array_equal(data, stack)
    assert meta["scale"] == (2.0, 0.5, 0.5) and meta["translate"] == (0.0, 10.0, 20.0)
    assert meta["units"] == ("um", "um", "um") and meta["axis_labels"] == ("z", "y", "x")
    assert meta["metadata"]["class_names"] == ["cat", "dog", "bird"]
    assert pd.DataFrame(meta["features"])["class_name"].tolist() == ["dog", "cat"]


#: (3, H, W) and (H, W, 3) TIFFs as tifffile writes them: without photometric, with photometric
#: 'rgb' or 'minisblack', with ImageJ or OME axes.
_LAYOUTS = {
    "plain": ("chw", {}), "rgb": ("chw", {"photometric": "rgb"}), "minisblack": ("chw", {"photometric": "minisblack"}),
    "imagej_cyx": ("chw", {"imagej": True, "metadata": {"axes": "CYX"}}),
    "ome_cyx": ("chw", {"ome": True, "metadata": {"axes": "CYX"}}),
    "imagej_zyx": ("chw", {"imagej": True, "metadata": {"axes": "ZYX"}}),
    "ome_zyx": ("chw", {"ome": True, "metadata": {"axes": "ZYX"}}),
    "hwc": ("hwc", {}), "hwc_rgb": ("hwc", {"photometric": "rgb"}),
}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_a_channels_first_tiff_opens_in_napari_as_the_command_line_reads_it(tmp_path, layout, dtype):
    """A (3, H, W) TIFF (tifffile writes a planar RGB one when given no photometric, unnamed pages with
    'minisblack', channels with ImageJ or OME axes CYX) was one RGB image to `read_image` and `predict`, but
    napari-prm's reader left it to napari's, which opens it as 3 planes: the same file was predicted as one
    colour image on the command line and as 3 gray planes in napari. The reader now opens what `read_image`
    reads as colours as one RGB layer, by the same rule (`io.channels_first_note`), with the note saying how
    it was read when the file does not mark its pages as colours; z-planes (ZYX), which `predict` runs plane
    by plane, and (H, W, 3) images, which napari opens as RGB, are left to napari's reader."""
    import warnings

    shape, options = _LAYOUTS[layout]
    rng = np.random.default_rng(3)
    planes = (rng.random((3, 20, 30)) * 200).astype(dtype)
    path = tmp_path / ("cells.ome.tif" if options.get("ome") else "cells.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile's note on a (3, H, W) array without photometric
        tifffile.imwrite(path, planes if shape == "chw" else np.moveaxis(planes, 0, -1), **options)
    reader = napari_get_reader(str(path))
    if layout.endswith("zyx"):  # a stack: predict runs its planes one by one, as napari shows them
        assert io.stack_planes(path)[0] == "ZYX" and reader is None and io.channels_first_note(path) is None
        return
    np.testing.assert_array_equal(io.read_image(path), np.moveaxis(planes, 0, -1))  # the command line's
    if shape == "hwc":
        assert reader is None and io.channels_first_note(path) is None
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ((data, meta, kind),) = reader(str(path))
    assert kind == "image" and meta["rgb"] and meta["name"] == "cells"
    np.testing.assert_array_equal(data, np.moveaxis(planes, 0, -1))
    note = io.channels_first_note(path)
    if layout in ("plain", "rgb"):  # planar RGB: the file says so
        assert note == "" and "read_as" not in meta["metadata"] and not caught
    else:
        axes = "CYX" if layout.endswith("cyx") else "QYX"
        held = "3 channels (axes CYX)" if axes == "CYX" else "3 unnamed pages (tifffile's axes QYX)"
        assert note.startswith(f"read {path.name} (3, 20, 30) as one RGB image, its {held} as red, green and "
                               "blue: the file does not mark them as colours, and napari's own reader opens it "
                               "as 3 planes"), note
        assert meta["metadata"]["read_as"] == note
        assert [str(w.message) for w in caught] == [f"napari-prm {note}."]  # napari shows it as a notification


def test_predict_says_how_it_read_an_ambiguous_channels_first_tiff(tmp_path, capsys):
    """`predict` read a (3, H, W) TIFF of unnamed pages as one RGB image silently; it says so now, as the
    napari reader does."""
    from skimage import data

    from napari_prm.cli import main

    path = tmp_path / "cat.tif"
    tifffile.imwrite(path, np.moveaxis(data.chelsea()[::4, ::4], -1, 0).copy(), photometric="minisblack")
    assert main(["predict", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert (f"{path}: read cat.tif (3, 75, 113) as one RGB image, its 3 unnamed pages (tifffile's axes QYX) "
            "as red, green and blue") in printed.err + printed.out


def test_napari_opens_a_channels_first_tiff_with_napari_prm_as_one_rgb_layer(tmp_path, make_napari_viewer):
    """Opened with napari-prm's reader, a (3, H, W) TIFF of unnamed pages is one RGB layer, the pixels
    `read_image` gives the command line; napari's own reader (its choice for a .tif unless told) still
    shows 3 planes."""
    rng = np.random.default_rng(5)
    planes = (rng.random((3, 20, 30)) * 4000).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, planes, photometric="minisblack")
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match=r"napari-prm read cells.tif \(3, 20, 30\) as one RGB image"):
        (layer,) = viewer.open(str(path), plugin="napari-prm")
    assert type(layer).__name__ == "Image" and layer.rgb
    np.testing.assert_array_equal(layer.data, io.read_image(path))
    assert layer.metadata["read_as"] == io.channels_first_note(path)
    (own,) = viewer.open(str(path), plugin="napari")
    assert not own.rgb and own.data.shape == (3, 20, 30)


def test_a_channels_first_tiff_is_opened_once_to_choose_the_reader_and_once_to_read_it(tmp_path, monkeypatch):
    """Opening a (3, H, W) TIFF read its header six times: twice for napari-prm's export metadata and once
    for `io.channels_first_note` in `napari_get_reader`, then the note again, the data and the header once
    more in the reader. The reader is chosen from one reading of the header now, and the reader reads the
    note and the data from one opening of the file; what it gives is unchanged."""
    import warnings

    planes = (np.random.default_rng(4).random((3, 20, 30)) * 4000).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, planes, photometric="minisblack")
    note = io.channels_first_note(path)
    expected = io.read_image(path)
    opened = []
    construct = tifffile.TiffFile.__init__

    def counted(self, *args, **kwargs):  # counts the files opened; each is opened as before
        opened.append(args[0] if args else kwargs.get("file"))
        construct(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counted)
    reader = napari_get_reader(str(path))
    assert reader is not None and len(opened) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ((data, meta, kind),) = reader(str(path))
    assert len(opened) == 2 and {str(p) for p in opened} == {str(path)}
    assert kind == "image" and meta["rgb"] and meta["metadata"]["read_as"] == note
    np.testing.assert_array_equal(data, expected)
    assert [str(w.message) for w in caught] == [f"napari-prm {note}."]


def test_a_channels_first_tiff_is_known_for_a_tiff_from_one_reading_of_its_first_bytes(tmp_path, monkeypatch):
    """Whether a file named .tif is a TIFF (not a PNG so named) is told by its first bytes: `read_image` read
    them again for each of its rules (channels first, the first axis' name, ...), the napari reader for each
    too, though tifffile had opened the file. `read_image` reads them once now, the napari reader not at all;
    what they give is unchanged."""
    import warnings

    planes = (np.random.default_rng(4).random((3, 20, 30)) * 4000).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, planes, photometric="minisblack")
    tiffs, heads = _count_file_reads(monkeypatch)
    image = io.read_image(path)
    assert heads == [str(path)] and tiffs == [str(path)] * 2  # its data, then its header for the rules
    np.testing.assert_array_equal(image, np.moveaxis(planes, 0, -1))
    heads.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note on how it was read (test above)
        ((data, meta, kind),) = napari_get_reader(str(path))(str(path))
    assert heads == [] and kind == "image" and meta["rgb"]
    np.testing.assert_array_equal(data, image)


def _four_planes(kind: str) -> np.ndarray:
    """(4, 12, 10) uint8: random colours, and a 4th plane that is opaque (255) on the left half, except for
    ``"dim"``, a 4th plane of counts under 100 (a 4th fluorescence channel, as alpha not half opaque)."""
    planes = np.random.default_rng(6).integers(0, 255, (4, 12, 10)).astype(np.uint8)
    planes[3] = np.where(np.arange(10) < 5, 255, 60)
    if kind == "dim":
        planes[3] = np.minimum(planes[3], 99)
    return planes


#: (4, H, W) TIFFs as tifffile writes them, and how `read_image` reads them: "rgba" (H, W, 4), "rgb"
#: (H, W, 3: an unmarked 4th sample dropped, or CMYK converted), or refused (the message's start).
_FOUR = {
    "default": ({}, "rgba"),  # tifffile: planar RGB, its 4th sample marked as alpha
    "rgba_planar": ({"photometric": "rgb", "planarconfig": "separate", "extrasamples": ["unassalpha"]}, "rgba"),
    "rgb_and_unmarked": ({"photometric": "rgb", "planarconfig": "separate", "extrasamples": ["unspecified"]}, "rgb"),
    "cmyk_planar": ({"photometric": "separated", "planarconfig": "separate"}, "rgb"),
    "dim": ({}, "4 channels whose 4th, marked as alpha"),
    "gray_samples": ({"photometric": "minisblack", "planarconfig": "separate"}, "4 channels (photometric MINISBLACK)"),
    "pages": ({"photometric": "minisblack"}, "expected one 2-D gray, RGB or RGBA image, got an array of shape (4,"),
    "imagej_cyx": ({"imagej": True, "metadata": {"axes": "CYX"}}, "expected one 2-D gray, RGB or RGBA image, got an"),
}


@pytest.mark.parametrize("layout", list(_FOUR))
def test_a_channels_first_rgba_tiff_opens_in_napari_as_read_image_reads_it(tmp_path, layout):
    """A (4, H, W) TIFF: napari-prm's reader opens what `read_image` (and so ``predict``) reads as one RGBA
    image as one RGB(A) layer, ``(H, W, 4)`` (napari shows it as RGBA), and as ``(H, W, 3)`` what it reads
    as RGB (an unmarked 4th sample, CMYK). 4 gray samples, which `read_image` refuses (none is marked as
    alpha), were claimed by the reader, which then failed on them: they are left to napari's reader (4
    planes) now, as 4 pages and 4 ImageJ channels are. A 4th sample marked as alpha that is nowhere half
    opaque (a 4th fluorescence channel) is known from the pixels only: the reader refuses it, as
    `read_image` does, with the same message."""
    import warnings

    options, read = _FOUR[layout]
    planes = _four_planes(layout)
    path = tmp_path / "cells.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile's note on a (4, H, W) array without photometric
        tifffile.imwrite(path, planes, **options)
    reader = napari_get_reader(str(path))
    if read in ("rgba", "rgb"):
        image = io.read_image(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ((data, meta, kind),) = reader(str(path))
        assert kind == "image" and meta["rgb"] and meta["name"] == "cells" and not caught
        assert io.channels_first_note(path) == ""  # the file marks its first axis as samples
        np.testing.assert_array_equal(data, image)
        if read == "rgba":
            np.testing.assert_array_equal(data, np.moveaxis(planes, 0, -1))
        elif layout == "rgb_and_unmarked":
            np.testing.assert_array_equal(data, np.moveaxis(planes[:3], 0, -1))
        else:  # CMYK as Pillow converts it: R = (1 - C)(1 - K)
            ink = planes.astype(float) / 255
            assert data.shape == (12, 10, 3)
            np.testing.assert_array_equal(data[..., 0], np.rint((1 - ink[0]) * (1 - ink[3]) * 255).astype(np.uint8))
        return
    with pytest.raises(ValueError, match="cannot read image") as refused:
        io.read_image(path)
    assert read in str(refused.value)
    if layout == "dim":
        with pytest.raises(ValueError) as opened:
            reader(str(path))
        assert str(opened.value) == str(refused.value)
    else:
        assert reader is None and io.channels_first_note(path) is None


def test_napari_shows_a_channels_first_rgba_tiff_opened_with_napari_prm_as_rgba(tmp_path, make_napari_viewer):
    """napari takes an (H, W, 4) RGB layer as RGBA: a planar RGBA TIFF opened with napari-prm is that layer,
    the pixels `read_image` gives ``predict``; napari's own reader shows its 4 planes."""
    import warnings

    planes = _four_planes("default")
    path = tmp_path / "cells.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, planes)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-prm")
    assert type(layer).__name__ == "Image" and layer.rgb and layer.data.shape == (12, 10, 4)
    np.testing.assert_array_equal(layer.data, io.read_image(path))
    (own,) = viewer.open(str(path), plugin="napari")
    assert not own.rgb and own.data.shape == (4, 12, 10)
