"""Exporters and importers: round trips, COCO through pycocotools, atomic writes."""

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools.coco import COCO

from napari_prm import io

CLASS_NAMES = ["cat", "dog", "bird"]


def synthetic_labels(top_label=3):
    """Three touching/separate shapes with known areas, the last one labelled ``top_label``."""
    labels = np.zeros((40, 60), dtype=np.uint32)
    labels[2:12, 3:23] = 1  # 10 x 20 = 200 px
    labels[12:30, 10:20] = 2  # 18 x 10 = 180 px, touches label 1
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 25) ** 2 + (xx - 45) ** 2 <= 64] = top_label  # disc of radius 8
    return labels


def synthetic_table(top_label=3):
    return {"label": np.array([1, 2, top_label]),
            "class_index": np.array([0, 2, 1]),
            "class_name": np.array(["cat", "bird", "dog"], dtype=object),
            "score": np.array([0.9, 0.25, 0.5], dtype=np.float32),
            "peak": np.array([0, 3, 1])}


@pytest.mark.parametrize("top_label, dtype, suffix", [
    (3, np.uint16, ".tif"), (70000, np.uint32, ".tiff"), (3, np.uint8, ".png"),
    (40000, np.uint16, ".png")])
def test_label_image_round_trip(tmp_path, top_label, dtype, suffix):
    labels = synthetic_labels(top_label)
    path = io.write_label_image(tmp_path / f"labels{suffix}", labels)
    back = io.read_label_image(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize(("top_label", "shape"), [(7, (6, 8)), (70000, (6, 8)), (7, (2, 6, 8))])
def test_label_tiff_keeps_an_imagej_pixel_size(tmp_path, top_label, shape):
    """An image 0.5 µm × 0.25 µm per pixel (ImageJ: 2 and 4 pixels per µm). uint32 labels, which an
    ImageJ file cannot hold, were written with 2 and 4 pixels per no unit: the µm was lost. Now
    they, and n-D uint16 ones, hold it as pixels per centimetre; 2-D uint16 labels stay ImageJ."""
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((6, 8), np.uint8), imagej=True, resolution=(2.0, 4.0),
                     metadata={"unit": "um"})
    pixel_size = io.tiff_pixel_size(tmp_path / "image.tif")
    assert pixel_size["resolution"] == pytest.approx((2.0, 4.0)) and pixel_size["imagej_unit"] == "um"
    labels = np.zeros(shape, np.int64)
    labels[..., 1, 2] = top_label
    io.write_label_image(tmp_path / "labels.tif", labels, pixel_size=pixel_size, world={"scale": [1.0] * len(shape)})
    np.testing.assert_array_equal(io.read_label_image(tmp_path / "labels.tif"), labels)
    back = io.tiff_pixel_size(tmp_path / "labels.tif")
    if top_label < 65536 and len(shape) == 2:
        assert back["resolution"] == pytest.approx((2.0, 4.0)) and back["imagej_unit"] == "um"
    else:
        assert back["unit"] == tifffile.RESUNIT.CENTIMETER and "imagej_unit" not in back
        assert back["resolution"] == pytest.approx((2e4, 4e4))  # pixels per cm: 0.5 µm and 0.25 µm
        assert io.read_label_world(tmp_path / "labels.tif") == {"scale": (1.0,) * len(shape)}
    # a label TIFF written from these labels keeps the same size
    io.write_label_image(tmp_path / "again.tif", labels, pixel_size=back)
    again = io.tiff_pixel_size(tmp_path / "again.tif")
    assert again["resolution"] == pytest.approx(back["resolution"]) and again["unit"] == back["unit"]


@pytest.mark.parametrize("out", ["folder", "labels.tif"])
def test_export_instances_keeps_the_images_pixel_size(tmp_path, out):
    """``export_instances`` (the Python export of corrected labels) took no pixel size, so the label TIFF
    of a calibrated image (0.5 µm × 0.25 µm per pixel) lost it, while ``predict`` and the widget keep it."""
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((40, 60), np.uint8), imagej=True, resolution=(2.0, 4.0),
                     metadata={"unit": "um"})
    pixel_size = io.tiff_pixel_size(tmp_path / "image.tif")
    written = io.export_instances(synthetic_labels(), synthetic_table(), CLASS_NAMES, tmp_path / out,
                                  stem="image", pixel_size=pixel_size)
    label_tiff = next(path for path in written if path.suffix == ".tif")
    back = io.tiff_pixel_size(label_tiff)
    assert back["resolution"] == pytest.approx((2.0, 4.0)) and back["imagej_unit"] == "um"
    np.testing.assert_array_equal(io.read_label_image(label_tiff), synthetic_labels())


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_instance_csv_gives_area_and_box_in_micrometres_when_the_pixel_size_is_known(tmp_path):
    """The instance CSV gave the area and box in pixels only, also for a calibrated image. With a pixel size
    of 0.25 µm (rows) × 0.5 µm (columns) from the image's TIFF, or a layer's scale in a unit of length, it
    also gives them in µm, after the pixel columns (kept as they were); with none, or only pixels per inch
    (a print size), the µm columns are absent."""
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((40, 60), np.uint8), imagej=True, resolution=(2.0, 4.0),
                     metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "inch.tif", np.zeros((40, 60), np.uint8), resolution=(300, 300),
                     resolutionunit="INCH")
    labels, table = synthetic_labels(), synthetic_table()
    io.export_instances(labels, table, CLASS_NAMES, tmp_path / "tif.csv",
                        pixel_size=io.tiff_pixel_size(tmp_path / "image.tif"))
    io.write_instances_csv(tmp_path / "layer.csv", labels, table, CLASS_NAMES,
                           world={"scale": (0.25e-3, 0.5e-3), "units": ("millimeter", "millimeter")})
    pixels = list(io.INSTANCE_CSV_COLUMNS)
    for name in ("tif.csv", "layer.csv"):
        rows = _csv_rows(tmp_path / name)
        assert list(rows[0]) == pixels + list(io.INSTANCE_CSV_UM_COLUMNS)
        first = rows[0]  # label 1: rows 2-12, columns 3-23, 200 pixels
        assert (first["area"], first["bbox_y0"], first["bbox_x1"]) == ("200", "2", "23")
        assert float(first["area_um2"]) == pytest.approx(200 * 0.25 * 0.5)
        assert [float(first[c]) for c in io.INSTANCE_CSV_UM_COLUMNS[1:]] == pytest.approx(
            [2 * 0.25, 3 * 0.5, 12 * 0.25, 23 * 0.5])
        back = io.read_instances_csv(tmp_path / name)  # read as before
        np.testing.assert_array_equal(back["area"], [200, 180, int((labels == 3).sum())])
    io.write_instances_csv(tmp_path / "inch.csv", labels, table, pixel_size=io.tiff_pixel_size(tmp_path / "inch.tif"))
    io.write_instances_csv(tmp_path / "none.csv", labels, table, world={"scale": (0.5, 0.5)})  # no unit
    for name in ("inch.csv", "none.csv"):
        rows = _csv_rows(tmp_path / name)
        assert list(rows[0]) == pixels and rows[0]["area"] == "200"
    # a stack's CSV: each plane's area and box in µm
    io.export_instances(np.stack([labels, labels]), table, CLASS_NAMES, tmp_path / "stack.csv",
                        pixel_size=io.tiff_pixel_size(tmp_path / "image.tif"))
    rows = _csv_rows(tmp_path / "stack.csv")
    assert list(rows[0]) == ["plane"] + pixels + list(io.INSTANCE_CSV_UM_COLUMNS)
    assert [float(r["area_um2"]) for r in rows if r["id"] == "1"] == pytest.approx([25.0, 25.0])

def test_an_ome_tiffs_physical_pixel_size_is_read_and_written_as_imagej(tmp_path):
    """An OME-TIFF records its pixel size in its OME-XML, without resolution tags: its labels had
    none. It is read (in µm by default, as OME's), and an ImageJ unit that is not ASCII ("µm"),
    which ImageJ's description cannot hold, no longer fails the write (a UnicodeEncodeError)."""
    image = np.zeros((6, 8), np.uint16)
    tifffile.imwrite(tmp_path / "um.ome.tif", image, metadata={"axes": "YX", "PhysicalSizeX": 0.65,
                                                                "PhysicalSizeY": 0.65, "PhysicalSizeXUnit": "µm",
                                                                "PhysicalSizeYUnit": "µm"})
    tifffile.imwrite(tmp_path / "default.ome.tif", image, metadata={"axes": "YX", "PhysicalSizeX": 0.2,
                                                                     "PhysicalSizeY": 0.4})
    tifffile.imwrite(tmp_path / "nm.ome.tif", image, metadata={"axes": "YX", "PhysicalSizeX": 100,
                                                                "PhysicalSizeY": 100, "PhysicalSizeXUnit": "nm",
                                                                "PhysicalSizeYUnit": "nm"})
    tifffile.imwrite(tmp_path / "none.ome.tif", image, metadata={"axes": "YX"})
    for name, resolution, unit in (("um", (1 / 0.65, 1 / 0.65), "um"), ("default", (5.0, 2.5), "um"),
                                   ("nm", (0.01, 0.01), "nm")):
        size = io.tiff_pixel_size(tmp_path / f"{name}.ome.tif")
        assert size["resolution"] == pytest.approx(resolution) and size["imagej_unit"] == unit, name
        io.write_label_image(tmp_path / f"{name}_labels.tif", image + 1, pixel_size=size)
        back = io.tiff_pixel_size(tmp_path / f"{name}_labels.tif")
        assert back["resolution"] == pytest.approx(resolution) and back["imagej_unit"] == unit, name
    assert io.tiff_pixel_size(tmp_path / "none.ome.tif") is None
    micro = {"resolution": (2.0, 4.0), "unit": tifffile.RESUNIT.NONE, "imagej_unit": "µm"}
    io.write_label_image(tmp_path / "micro.tif", image + 1, pixel_size=micro)
    back = io.tiff_pixel_size(tmp_path / "micro.tif")
    assert back["unit"] == tifffile.RESUNIT.CENTIMETER and back["resolution"] == pytest.approx((2e4, 4e4))



def test_an_ome_stacks_pixel_size_names_its_planes_axis_and_interval(tmp_path):
    """An OME z-stack or time series (gray or RGB planes) gives its label stack the planes' axis and
    the z-spacing (PhysicalSizeZ, in the pixel size's unit) or the frame interval (TimeIncrement, in
    seconds), as an ImageJ ZYX or TYX stack does: its labels were a stack of unnamed pages (QYX)
    with the pixel size only."""
    planes = np.zeros((3, 6, 8), np.uint16)
    pixels = {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    tifffile.imwrite(tmp_path / "z.ome.tif", planes, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 1500, "PhysicalSizeZUnit": "nm", **pixels})
    tifffile.imwrite(tmp_path / "t.ome.tif", np.zeros((2, 6, 8, 3), np.uint8), ome=True, photometric="rgb",
                     metadata={"axes": "TYXS", "TimeIncrement": 1.5, "TimeIncrementUnit": "min", **pixels})
    tifffile.imwrite(tmp_path / "t_unknown.ome.tif", planes, ome=True,
                     metadata={"axes": "TYX", "TimeIncrement": 2, "TimeIncrementUnit": "fortnight", **pixels})
    flat = {"resolution": pytest.approx((2.0, 4.0)), "unit": tifffile.RESUNIT.NONE, "imagej_unit": "um"}
    assert io.tiff_pixel_size(tmp_path / "z.ome.tif") == {**flat, "plane_axis": "Z", "spacing": pytest.approx(1.5)}
    assert io.tiff_pixel_size(tmp_path / "t.ome.tif") == {**flat, "plane_axis": "T", "finterval": pytest.approx(90)}
    assert io.tiff_pixel_size(tmp_path / "t_unknown.ome.tif") == {**flat, "plane_axis": "T"}  # no interval
    io.write_label_image(tmp_path / "z_labels.tif", planes + 1, pixel_size=io.tiff_pixel_size(tmp_path / "z.ome.tif"))
    with tifffile.TiffFile(tmp_path / "z_labels.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == pytest.approx(1.5)
        assert tif.imagej_metadata["unit"] == "um" and tif.pages.first.get_resolution() == pytest.approx((2, 4))

def test_png_refuses_labels_above_65535(tmp_path):
    with pytest.raises(ValueError, match="65535.*70000"):
        io.write_label_image(tmp_path / "labels.png", synthetic_labels(70000))
    assert list(tmp_path.iterdir()) == []


def test_a_palette_label_png_is_read_as_its_indices(tmp_path):
    """PASCAL VOC's SegmentationObject/SegmentationClass PNGs are palette images: the pixel values
    are the palette indices (instance or class numbers, 255 void); imageio gave their colours."""
    from PIL import Image

    indices = np.zeros((3, 4), np.uint8)
    indices[0, 1], indices[1, 2], indices[2, 3] = 1, 2, 255
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)  # VOC's colours; 255 cream
    image.save(tmp_path / "2007_000032.png")
    labels = io.read_label_image(tmp_path / "2007_000032.png")
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, indices)
    assert io.read_image(tmp_path / "2007_000032.png").shape == (3, 4, 3)  # an image's colours, as before


def test_label_image_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="integer"):
        io.write_label_image(tmp_path / "a.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        io.write_label_image(tmp_path / "a.tif", -np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match=r"\.tif, \.tiff or \.png"):
        io.write_label_image(tmp_path / "a.jpg", np.ones((4, 4), np.uint8))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="broken.tif"):
        io.read_label_image(tmp_path / "broken.tif")


def test_coco_json_loads_in_pycocotools_with_masks_classes_and_scores(tmp_path):
    labels = synthetic_labels()
    coco = io.labels_to_coco(labels, synthetic_table(), CLASS_NAMES, image_id=7,
                             file_name="cats.png")
    path = io.write_coco_json(tmp_path / "instances.json", coco)
    api = COCO(str(path))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == CLASS_NAMES
    assert api.getCatIds() == [1, 2, 3]  # class index + 1
    annotations = api.loadAnns(api.getAnnIds(imgIds=[7]))
    assert len(annotations) == 3
    expected_category = {1: 1, 2: 3, 3: 2}
    expected_score = {1: 0.9, 2: 0.25, 3: 0.5}
    for annotation in annotations:
        label = annotation["label"]
        truth = labels == label
        np.testing.assert_array_equal(api.annToMask(annotation).astype(bool), truth)
        assert annotation["category_id"] == expected_category[label]
        assert annotation["score"] == pytest.approx(expected_score[label])
        assert annotation["area"] == truth.sum()
        rows, cols = np.nonzero(truth)
        assert annotation["bbox"] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
    assert api.loadImgs(7)[0] == {"id": 7, "file_name": "cats.png", "height": 40, "width": 60}


def test_coco_round_trip_keeps_labels_classes_scores(tmp_path):
    labels = synthetic_labels(top_label=9)
    path = io.write_coco_json(tmp_path / "i.json",
                              io.labels_to_coco(labels, synthetic_table(9), CLASS_NAMES))
    back, table, names = io.coco_to_labels(path)
    np.testing.assert_array_equal(back, labels)
    assert names == CLASS_NAMES
    order = np.argsort(table["label"])
    np.testing.assert_array_equal(table["label"][order], [1, 2, 9])
    np.testing.assert_array_equal(table["class_index"][order], [0, 2, 1])
    assert list(table["class_name"][order]) == ["cat", "bird", "dog"]
    np.testing.assert_allclose(table["score"][order], [0.9, 0.25, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(table["peak"][order], [0, 3, 1])


def test_hand_painted_label_exports_as_unknown(tmp_path):
    labels = synthetic_labels()
    labels[35:38, 0:4] = 5  # painted by the user: not in the table
    coco = io.labels_to_coco(labels, synthetic_table(), CLASS_NAMES)
    painted = [a for a in coco["annotations"] if a["label"] == 5][0]
    assert painted["category_id"] == io.UNKNOWN_CATEGORY_ID and "score" not in painted
    assert {"id": 0, "name": "unknown", "supercategory": ""} in coco["categories"]
    back, table, names = io.coco_to_labels(
        io.write_coco_json(tmp_path / "i.json", coco))
    np.testing.assert_array_equal(back, labels)
    assert names == CLASS_NAMES
    row = list(table["label"]).index(5)
    assert table["class_index"][row] == -1 and table["class_name"][row] == "unknown"
    assert math.isnan(table["score"][row])

    io.write_instances_csv(tmp_path / "i.csv", labels, synthetic_table(), CLASS_NAMES)
    rows = io.read_instances_csv(tmp_path / "i.csv")
    row = list(rows["label"]).index(5)
    assert rows["class_name"][row] == "unknown" and math.isnan(rows["score"][row])


def test_export_without_table_or_class_names(tmp_path):
    labels = synthetic_labels()
    coco = io.labels_to_coco(labels)
    assert coco["categories"] == [{"id": 0, "name": "unknown", "supercategory": ""}]
    assert len(coco["annotations"]) == 3
    # class names come from the table when not given; missing indices get placeholders
    table = {"label": np.array([1]), "class_index": np.array([2]),
             "class_name": np.array(["bird"])}
    coco = io.labels_to_coco(labels, table)
    assert [c["name"] for c in coco["categories"]] == ["class_0", "class_1", "bird", "unknown"]


def test_coco_custom_category_ids_and_bad_class_index():
    labels = synthetic_labels()
    coco = io.labels_to_coco(labels, synthetic_table(), CLASS_NAMES, category_ids=[17, 18, 16])
    assert {a["label"]: a["category_id"] for a in coco["annotations"]} == {1: 17, 2: 16, 3: 18}
    # the ids, with no "..." after the whole list (it always ended so) and the first ten of a long one
    with pytest.raises(ValueError, match=r"category_ids must be 3 distinct ids other than 0, got \[0, 1, 2\]$"):
        io.labels_to_coco(labels, synthetic_table(), CLASS_NAMES, category_ids=[0, 1, 2])
    with pytest.raises(ValueError, match=r"got \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \.\.\. \(2 more\)\]$"):
        io.labels_to_coco(labels, synthetic_table(), CLASS_NAMES, category_ids=list(range(1, 13)))
    with pytest.raises(ValueError, match="class index 2.*2 class names"):
        io.labels_to_coco(labels, synthetic_table(), ["cat", "dog"])


def test_coco_to_labels_reads_real_coco_annotations(shared_data):
    """Polygons and RLEs of a real COCO file paint the same pixels as pycocotools."""
    path = shared_data / "coco128" / "annotations" / "instances_val2017.json"
    api = COCO(str(path))
    image_id = api.getImgIds()[0]
    labels, table, names = io.coco_to_labels(path, image_id=image_id)
    annotations = api.loadAnns(api.getAnnIds(imgIds=[image_id]))
    assert len(names) == 80 and names[0] == "person"
    assert len(table["label"]) == len(annotations)
    # labels are 1..N in annotation order; later ones cover earlier where they overlap
    for number, annotation in enumerate(annotations, start=1):
        truth = api.annToMask(annotation).astype(bool)
        covered = np.zeros_like(truth)
        for later in annotations[number:]:
            covered |= api.annToMask(later).astype(bool)
        np.testing.assert_array_equal(labels[truth & ~covered], number)
        category = api.loadCats(annotation["category_id"])[0]["name"]
        assert table["class_name"][number - 1] == category
    with pytest.raises(ValueError, match="pass image_id"):
        io.coco_to_labels(path)


def test_instances_csv_columns_and_values(tmp_path):
    labels = synthetic_labels()
    path = io.write_instances_csv(tmp_path / "i.csv", labels, synthetic_table(), CLASS_NAMES)
    header = path.read_text().splitlines()[0]
    assert header == "id,class,class_index,area,bbox_y0,bbox_x0,bbox_y1,bbox_x1,score,peak"
    table = io.read_instances_csv(path)
    np.testing.assert_array_equal(table["label"], [1, 2, 3])
    assert list(table["class_name"]) == ["cat", "bird", "dog"]
    np.testing.assert_array_equal(table["area"], [200, 180, np.sum(labels == 3)])
    np.testing.assert_array_equal(table["bbox"][:2], [[2, 3, 12, 23], [12, 10, 30, 20]])
    np.testing.assert_array_equal(table["bbox"][2], [17, 37, 34, 54])
    np.testing.assert_allclose(table["score"], [0.9, 0.25, 0.5], rtol=1e-6)


def test_read_instances_csv_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,class,class_index,area,bbox_y0,bbox_x0,bbox_y1,bbox_x1,score\n"
                    "1,cat,0,10,0,0,2,5,0.5\n1,cat,zero,10,0,0,2,5,\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*line 3"):
        io.read_instances_csv(path)


def test_atomic_write_failure_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = io.write_coco_json(tmp_path / "i.json", {"images": [], "version": 1})
    before = path.read_bytes()

    class Unserialisable:
        pass

    # json.dump streams into the temporary file and fails midway through the dict
    with pytest.raises(TypeError):
        io.write_coco_json(path, {"images": list(range(1000)), "bad": Unserialisable()})
    with pytest.raises(ValueError, match="Out of range float"):
        io.write_coco_json(path, {"images": [], "score": float("nan")})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.json"]


def test_atomic_write_context(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as temp:
            temp.write_text("half")
            assert temp.parent == tmp_path and temp.name.endswith(".txt")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    with io.atomic_write(target) as temp:
        temp.write_text("new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(FileExistsError, match="out.txt"):
        with io.atomic_write(target, overwrite=False):
            pass


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_instances_folder_formats_and_overwrite(tmp_path):
    labels = synthetic_labels()
    out = tmp_path / "export"
    written = io.export_instances(labels, synthetic_table(), CLASS_NAMES, out,
                                  formats=("tiff", "png", "coco", "csv"), stem="cells")
    assert [p.name for p in written] == ["cells_labels.tif", "cells_labels.png",
                                         "cells_instances.json", "cells_instances.csv"]
    np.testing.assert_array_equal(io.read_label_image(out / "cells_labels.png"), labels)
    np.testing.assert_array_equal(tifffile.imread(out / "cells_labels.tif"), labels)
    stamps = {p: p.stat().st_mtime_ns for p in written}
    (out / "cells_instances.csv").write_text("edited")
    with pytest.raises(FileExistsError, match="cells_labels.tif"):
        io.export_instances(labels * 2, synthetic_table(), CLASS_NAMES, out,
                            formats=("tiff", "png", "coco", "csv"), stem="cells")
    assert (out / "cells_instances.csv").read_text() == "edited"
    assert all(p.stat().st_mtime_ns == stamps[p] for p in written[:3])
    io.export_instances(labels, synthetic_table(), CLASS_NAMES, out, stem="cells",
                        overwrite=True)
    assert io.read_instances_csv(out / "cells_instances.csv")["label"].tolist() == [1, 2, 3]


def test_export_instances_single_file_and_png_limit(tmp_path):
    labels = synthetic_labels()
    written = io.export_instances(labels, synthetic_table(), CLASS_NAMES, tmp_path / "x.json")
    assert written == [tmp_path / "x.json"]
    assert json.loads(written[0].read_text())["categories"][1]["name"] == "dog"
    with pytest.raises(ValueError, match="formats"):
        io.export_instances(labels, None, None, tmp_path / "y.csv", formats=["tiff"])
    with pytest.raises(ValueError, match="PNG holds labels up to 65535"):
        io.export_instances(synthetic_labels(70000), None, None, tmp_path / "big",
                            formats=["tiff", "png"])
    assert not (tmp_path / "big").exists()
    with pytest.raises(ValueError, match="unknown export formats"):
        io.export_instances(labels, None, None, tmp_path, formats=["bmp"])


def test_write_prms_npy_and_tiff(tmp_path):
    prms = np.random.default_rng(0).random((3, 8, 9)).astype(np.float32)
    np.testing.assert_array_equal(np.load(io.write_prms(tmp_path / "p.npy", prms)), prms)
    np.testing.assert_array_equal(tifffile.imread(io.write_prms(tmp_path / "p.tif", prms)),
                                  prms)
    with pytest.raises(ValueError, match="at least one PRM"):
        io.write_prms(tmp_path / "e.tif", np.zeros((0, 8, 9)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy", "p.tif"]


GRAY16 = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500
RGB16 = np.random.default_rng(1).integers(0, 65535, (12, 10, 3)).astype(np.uint16)
RGBA8 = np.random.default_rng(2).integers(0, 255, (12, 10, 4)).astype(np.uint8)
RGB8 = RGBA8[..., :3].copy()


@pytest.mark.parametrize("image, suffix", [
    (GRAY16, ".tif"), (RGB16, ".tif"), (RGBA8, ".tif"),
    (GRAY16, ".png"), (RGB8, ".png"), (RGBA8, ".png")])
def test_read_image_8_and_16_bit(tmp_path, image, suffix):
    import imageio.v3 as iio

    path = tmp_path / f"image{suffix}"
    (tifffile.imwrite if suffix == ".tif" else iio.imwrite)(path, image)
    back = io.read_image(path)
    assert back.dtype == image.dtype
    np.testing.assert_array_equal(back, image)


def test_read_image_channels_first_tiff_and_errors(tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (3, 12, 10)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", image, photometric="minisblack")
    np.testing.assert_array_equal(io.read_image(tmp_path / "planar.tif"),
                                  np.moveaxis(image, 0, -1))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="broken.png"):
        io.read_image(tmp_path / "broken.png")
    tifffile.imwrite(tmp_path / "volume.tif", np.zeros((5, 12, 10), np.uint8))
    with pytest.raises(ValueError, match=r"volume\.tif.*\(5, 12, 10\); it holds several planes or frames"):
        io.read_image(tmp_path / "volume.tif")
    # two channels last were called "several planes or frames" too
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((12, 10, 2), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(ValueError, match=r"two\.tif.*\(12, 10, 2\); it has 2 channels: read 1 to 3 of them with "
                                         r"--channels .*; or save one channel or "
                                         r"an RGB image$"):
        io.read_image(tmp_path / "two.tif")
    # an ImageJ or OME-TIFF of 2 fluorescence channels, or 5 time points, named "planes or frames"
    tifffile.imwrite(tmp_path / "dapi_gfp.tif", np.zeros((2, 12, 10), np.uint16), imagej=True,
                     metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "dapi_gfp.ome.tif", np.zeros((2, 12, 10), np.uint16), metadata={"axes": "CYX"})
    for name in ("dapi_gfp.tif", "dapi_gfp.ome.tif"):
        with pytest.raises(ValueError, match=r"\(2, 12, 10\); its first axis holds 2 channels \(the file's axes "
                                             r"say so\): read 1 to 3 of them with --channels .*; or save each channel "
                                             r"as a 2-D image .*, or up to 3 as one RGB"):
            io.read_image(tmp_path / name)
    # 2 pages a plain tifffile.imwrite wrote (DAPI, GFP, no axes) were "several planes or frames" to
    # be saved as a ZYX stack: as likely channels, the message says what to do for both
    dapi_gfp = np.random.default_rng(4).integers(0, 4095, (2, 12, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", dapi_gfp)
    with pytest.raises(ValueError, match=r"plain\.tif.*\(2, 12, 10\); its first axis holds 2 pages the file does "
                                         r"not name: if they are channels, read 1 to 3 of them with --channels .*"
                                         r"or save each channel as a 2-D image .*"
                                         r"np\.stack\(\[data\[0\], data\[1\], "
                                         r"np\.zeros_like\(data\[0\]\)\], axis=-1\).*; "
                                         r"if they are z-planes or time points, save the stack with ImageJ axes ZYX"):
        io.read_image(tmp_path / "plain.tif")
    # the advice says which channels are stretched: 8-bit ones are not (a dim one stays dim)
    with pytest.raises(ValueError, match=r"each channel of 16 bits \(or floats beyond \[0, 1\]\) is stretched by its "
                                         r"own percentiles, while 8-bit channels are read as they are"):
        io.read_image(tmp_path / "plain.tif")
    dim8 = np.stack([np.full((12, 10), value, np.uint8) for value in (200, 20, 0)], axis=-1)
    dim8[0, 0, :2] = 0
    assert io.as_rgb_float(dim8)[..., 1].max() == pytest.approx(20 / 255)
    # the advice read: an RGB image of DAPI, GFP and an empty 3rd channel, each channel by its own stretch
    data = dapi_gfp
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([data[0], data[1], np.zeros_like(data[0])], axis=-1))
    rgb = io.as_rgb_float(io.read_image(tmp_path / "rgb.tif"))
    assert rgb.shape == (12, 10, 3) and rgb[..., :2].max() == 1 and rgb[..., 2].max() == 0
    tifffile.imwrite(tmp_path / "movie.ome.tif", np.zeros((5, 12, 10), np.uint16), metadata={"axes": "TYX"})
    with pytest.raises(ValueError, match=r"\(5, 12, 10\); its first axis holds 5 time points: save one 2-D plane$"):
        io.read_image(tmp_path / "movie.ome.tif")


def test_refused_channels_say_that_channels_reads_them(tmp_path):
    """A TIFF of 2 or 4 fluorescence channels (ImageJ CYX, 2 unnamed pages, channels last, 4 whose
    4th is a faint "alpha") was refused with only "save each channel as a 2-D image, or up to 3 as one
    RGB image": rewriting every file, where ``--channels`` (``channels=``) reads them as they are.
    The message names the option, and what it names reads the file."""
    rng = np.random.default_rng(11)
    dapi_gfp = rng.integers(100, 4095, (2, 12, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cyx.tif", dapi_gfp, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "pages.tif", dapi_gfp)
    tifffile.imwrite(tmp_path / "last.tif", np.moveaxis(dapi_gfp, 0, -1), planarconfig="contig")
    tifffile.imwrite(tmp_path / "four.tif", rng.integers(100, 4095, (4, 12, 10)).astype(np.uint16))
    for name in ("cyx.tif", "pages.tif", "last.tif", "four.tif"):
        with pytest.raises(ValueError, match=rf"cannot read image .*{name}: .*read 1 to 3 of them with --channels "
                                             r"\(channels= in Python, the Train widget's image channels\), without "
                                             r"saving new files: --channels 0 1 makes channels 0 and 1 red and green"):
            io.read_image(tmp_path / name)
        picked = io.read_image(tmp_path / name, channels=[0, 1])  # as the message says
        assert picked.shape == (12, 10, 3) and not picked[..., 2].any()
        np.testing.assert_array_equal(picked[..., 0], io.read_image(tmp_path / name, channels=[0]))


def test_read_image_refuses_tiff_stacks_of_three_or_four_planes(tmp_path):
    """A TIFF whose first axis of length 3 or 4 is not colour was read as RGB(A): a 3-slice
    ImageJ z-stack became a colour photo, and a 4-channel ImageJ image became RGBA, its 4th
    channel the opacity (a 12-bit cat went nearly black: mean 0.003 instead of 0.56)."""
    planes = np.random.default_rng(5).integers(0, 4095, (4, 12, 10)).astype(np.uint16)
    cases = {"z3.tif": (planes[:3], "ZYX", r"\(3, 12, 10\) whose first axis holds 3 z-planes"),
             "t4.tif": (planes, "TYX", r"\(4, 12, 10\) whose first axis holds 4 time points"),
             "c4.tif": (planes, "CYX", r"4 planes or channels, none of them an alpha channel \(an RGBA TIFF "
                                       r"marks it as an extra sample\); read 1 to 3 of them with --channels .*; "
                                       r"or save each channel as a 2-D image .*"
                                       r"or up to 3 as one RGB image, channels last")}
    for name, (data, axes, message) in cases.items():
        tifffile.imwrite(tmp_path / name, data, imagej=True, metadata={"axes": axes})
        with pytest.raises(ValueError, match=rf"cannot read image .*{name}: .*{message}"):
            io.read_image(tmp_path / name)
    tifffile.imwrite(tmp_path / "pages4.tif", planes, photometric="minisblack")
    # 4 pages the file does not name: channels as often as planes, and what to do with either (as for 2)
    both = (r"none of them an alpha channel .*; if they are channels, read 1 to 3 of them with --channels .*or "
            r"save each channel as a 2-D image .*; if they "
            r"are z-planes or time points, save the stack with ImageJ axes ZYX")
    with pytest.raises(ValueError, match=rf"pages4\.tif: .*{both}"):
        io.read_image(tmp_path / "pages4.tif")
    # plain pages that tifffile did not write (axes "I"): 4 refused, 3 read as colour as before
    from PIL import Image

    pages = [Image.fromarray((plane // 16).astype(np.uint8)) for plane in planes]
    pages[0].save(tmp_path / "pil4.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ValueError, match=rf"pil4\.tif: .*{both}"):
        io.read_image(tmp_path / "pil4.tif")
    pages[0].save(tmp_path / "pil3.tif", save_all=True, append_images=pages[1:3])
    np.testing.assert_array_equal(io.read_image(tmp_path / "pil3.tif"),
                                  np.moveaxis(planes[:3] // 16, 0, -1).astype(np.uint8))
    # Still colour: 3 ImageJ channels, and planar RGB(A) whose alpha is a marked extra sample.
    tifffile.imwrite(tmp_path / "c3.tif", planes[:3], imagej=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(io.read_image(tmp_path / "c3.tif"), np.moveaxis(planes[:3], 0, -1))
    rgba = planes.copy()
    rgba[3] = np.where(np.arange(10) < 5, 65535, 20000)  # an opacity: opaque somewhere
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", planarconfig="separate",
                     extrasamples=["unassalpha"])
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgba.tif"), np.moveaxis(rgba, 0, -1))


def test_read_image_refuses_4_channels_whose_alpha_is_nowhere_half_opaque(tmp_path):
    """tifffile.imwrite marks the 4th channel of a (4, H, W) or (H, W, 4) array as alpha by default:
    4 fluorescence channels of 12-bit counts were read as RGBA, the 4th (at most 4095 of 65535)
    the opacity, and the network saw a black image (predict, and training, which said nothing)."""
    channels = np.random.default_rng(8).integers(100, 4095, (4, 12, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "dapi_gfp_mcherry_far_red.tif", channels)
    tifffile.imwrite(tmp_path / "last.tif", np.moveaxis(channels, 0, -1))
    assert tifffile.TiffFile(tmp_path / "last.tif").pages[0].extrasamples == (tifffile.EXTRASAMPLE.UNASSALPHA,)
    for name in ("dapi_gfp_mcherry_far_red.tif", "last.tif"):
        with pytest.raises(ValueError, match=rf"cannot read image .*{name}: .*got 4 channels whose 4th, marked as "
                                             r"alpha .*is not even half opaque anywhere \(largest value \d+ in "
                                             r"uint16\): read as RGBA, the image would keep at most [0-6]% of its "
                                             r"brightness .* save each channel as a 2-D image"):
            io.read_image(tmp_path / name)
    # an image at 39% is dim, not black, as the message said of every such file
    dim = np.random.default_rng(9).integers(0, 255, (12, 10, 4)).astype(np.uint8)
    dim[..., 3] = 100
    tifffile.imwrite(tmp_path / "dim.tif", dim)
    with pytest.raises(ValueError, match=r"\(largest value 100 in uint8\): read as RGBA, the image would keep at most "
                                         r"39% of its brightness \(none where the 4th channel is 0\); as 4 channels"):
        io.read_image(tmp_path / "dim.tif")
    # an 8-bit or 16-bit RGBA whose alpha is opaque somewhere is still RGBA
    channels[3, :, :5] = 65535
    tifffile.imwrite(tmp_path / "cut_out.tif", channels)
    assert io.read_image(tmp_path / "cut_out.tif").shape == (12, 10, 4)
    photo = np.random.default_rng(9).integers(0, 255, (12, 10, 4)).astype(np.uint8)
    photo[..., 3] = 128
    tifffile.imwrite(tmp_path / "half.tif", photo)
    np.testing.assert_array_equal(io.read_image(tmp_path / "half.tif"), photo)


def test_read_image_gray_alpha_png_is_rgba(tmp_path):
    """A gray + alpha PNG (Pillow's "LA") was refused as "several planes or frames"."""
    from PIL import Image

    gray = np.random.default_rng(6).integers(0, 255, (12, 10)).astype(np.uint8)
    alpha = np.where(np.arange(10) < 5, 255, 0).astype(np.uint8)[None].repeat(12, 0)
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.png")
    image = io.read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(image, np.stack([gray, gray, gray, alpha], -1))
    rgb = io.as_rgb_float(image)
    np.testing.assert_allclose(rgb[:, :5, 1], gray[:, :5] / 255, rtol=1e-6)  # opaque half: the gray
    assert not rgb[:, 5:].any()  # transparent half: black


@pytest.mark.parametrize("height", [3, 4])
def test_read_image_gray_alpha_png_of_3_or_4_rows_keeps_its_height_and_width(tmp_path, height):
    """A PNG is never channels-first, but a gray + alpha strip of 3 or 4 rows, (H, W, 2), was
    taken as TIFF's (C, H, W) and moved: a 3×500 "LA" PNG became 500×2 pixels of 3 channels."""
    from PIL import Image

    gray = np.random.default_rng(7).integers(0, 255, (height, 500)).astype(np.uint8)
    alpha = np.full((height, 500), 200, np.uint8)
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "strip.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "strip.png"), np.stack([gray, gray, gray, alpha], -1))


def test_read_image_gray_alpha_tiff_is_rgba_only_when_marked(tmp_path):
    """A gray + alpha TIFF (Pillow's "LA", alpha marked as an extra sample) is read like the
    PNG; two samples without that mark are refused as 2 channels."""
    from PIL import Image

    gray = np.random.default_rng(7).integers(0, 255, (12, 10)).astype(np.uint8)
    alpha = np.where(np.arange(10) < 5, 255, 0).astype(np.uint8)[None].repeat(12, 0)
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.tif")
    np.testing.assert_array_equal(io.read_image(tmp_path / "la.tif"), np.stack([gray, gray, gray, alpha], -1))
    tifffile.imwrite(tmp_path / "two.tif", np.stack([gray, alpha], -1), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(ValueError, match="two.tif.*2 channels"):
        io.read_image(tmp_path / "two.tif")


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_read_image_cmyk_is_converted_to_rgb(tmp_path, suffix):
    """A CMYK JPEG or TIFF (print workflows) was read as RGBA with K as the opacity: with
    Pillow's K = 0 the cat was all black (mean 0.0) and got no peaks."""
    from PIL import Image
    from skimage import data

    cmyk = np.asarray(Image.fromarray(data.chelsea()[::4, ::4]).convert("CMYK")).copy()
    cmyk[..., 3] = np.linspace(0, 200, cmyk.shape[1]).astype(np.uint8)  # some black ink too
    path = tmp_path / f"cmyk{suffix}"
    Image.fromarray(cmyk, "CMYK").save(path)
    image = io.read_image(path)
    with Image.open(path) as opened:
        expected = np.asarray(opened.convert("RGB")).astype(int)
    assert image.shape == expected.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - expected).max() <= 1  # Pillow's integer rounding
    assert io.as_rgb_float(image).mean() > 0.2


def test_read_image_fourth_tiff_sample_is_opacity_only_when_marked_alpha(tmp_path):
    """An RGB TIFF with an unmarked extra sample, and 4 gray samples, were read as RGBA with
    the 4th sample as the opacity."""
    rgb = np.random.default_rng(7).integers(0, 255, (12, 10, 3)).astype(np.uint8)
    fourth = np.full((12, 10, 1), 3, np.uint8)  # as opacity: 3/255, a nearly black image
    tifffile.imwrite(tmp_path / "rgbx.tif", np.concatenate([rgb, fourth], -1), photometric="rgb",
                     extrasamples=["unspecified"])
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgbx.tif"), rgb)
    tifffile.imwrite(tmp_path / "gray4.tif", np.concatenate([rgb, fourth], -1), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(ValueError, match=r"gray4\.tif: .*4 channels \(photometric MINISBLACK\), none of "
                                         r"them marked as alpha"):
        io.read_image(tmp_path / "gray4.tif")
    rgba = np.concatenate([rgb, fourth], -1)
    rgba[:, :4, 3] = 255  # marked, and opaque somewhere (nowhere half opaque: 4 channels, see below)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgba.tif"), rgba)


def test_read_image_real_jpeg(shared_data):
    image = io.read_image(shared_data / "prm_demo" / "sample0.jpg")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3


def test_read_image_reads_every_image_suffix(tmp_path):
    import imageio.v3 as iio

    image = np.random.default_rng(4).integers(0, 255, (12, 10, 3)).astype(np.uint8)
    for suffix in io.IMAGE_SUFFIXES:
        path = tmp_path / f"image{suffix}"
        (tifffile.imwrite if suffix in (".tif", ".tiff") else iio.imwrite)(path, image)
        back = io.read_image(path)
        assert back.shape == image.shape and back.dtype == np.uint8, suffix
        if suffix in (".png", ".tif", ".tiff", ".bmp"):  # lossless formats
            np.testing.assert_array_equal(back, image)



def test_a_png_or_jpeg_named_tif_is_read_by_its_content_with_a_note(tmp_path):
    """A PNG (or JPEG) saved with a ``.tif`` name was refused, "not a TIFF file"; it is read by its content
    now, the note naming its real format, and a cut one is still found. A file that is no image at all
    under a ``.tif`` name is refused, saying that it is neither a TIFF nor another image."""
    import imageio.v3 as iio

    image = np.random.default_rng(5).integers(0, 255, (12, 10, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "png.tif", image, extension=".png")
    iio.imwrite(tmp_path / "jpeg.tiff", image, extension=".jpg")
    tifffile.imwrite(tmp_path / "real.tif", image)
    np.testing.assert_array_equal(io.read_image(tmp_path / "png.tif"), image)  # lossless
    assert io.read_image(tmp_path / "jpeg.tiff").shape == image.shape
    np.testing.assert_array_equal(io.read_image(tmp_path / "png.tif", channels=[1]), image[..., 1])
    assert io.format_note(tmp_path / "png.tif") == ("png.tif is a PNG image, not a TIFF: read as PNG, by its "
                                                    "content (rename it to .png); it records no TIFF pixel size")
    assert io.format_note(tmp_path / "jpeg.tiff").startswith("jpeg.tiff is a JPEG image, not a TIFF")
    assert io.format_note(tmp_path / "real.tif") is None and io.tiff_pixel_size(tmp_path / "png.tif") is None
    (tmp_path / "cut.tif").write_bytes((tmp_path / "png.tif").read_bytes()[:-30])
    (tmp_path / "text.tif").write_text("not an image at all")
    files = [tmp_path / name for name in ("png.tif", "jpeg.tiff", "real.tif", "cut.tif", "text.tif")]
    assert [path for path, _ in io.unreadable_images(files)] == files[3:]
    with pytest.raises(ValueError, match=r"text\.tif: neither a TIFF \(not a TIFF file.*\) nor an image of "
                                         "another format that Pillow reads"):
        io.read_image(tmp_path / "text.tif")

def test_as_rgb_float_rule():
    gray8 = np.array([[0, 51], [204, 255]], np.uint8)
    np.testing.assert_allclose(io.as_rgb_float(gray8)[..., 0], gray8 / 255)
    np.testing.assert_array_equal(io.as_rgb_float(gray8 > 100)[..., 1], [[0, 0], [1, 1]])
    unit = np.array([[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(io.as_rgb_float(unit)[..., 2], unit)  # within [0, 1]: kept
    # every other integer or float image: 0.5-99.5 percentile stretch, clipped
    ramp = np.arange(1000, dtype=np.float64).reshape(20, 50)
    low, high = np.percentile(ramp, (0.5, 99.5))
    rgb = io.as_rgb_float(ramp - 300)
    np.testing.assert_allclose(rgb[..., 0], np.clip((ramp - low) / (high - low), 0, 1), atol=1e-6)
    np.testing.assert_allclose(io.as_rgb_float(ramp.astype(np.uint16)), rgb, atol=1e-6)
    np.testing.assert_allclose(io.as_rgb_float(ramp.astype(np.int32) - 500), rgb, atol=1e-6)
    assert rgb.shape == (20, 50, 3) and rgb.dtype == np.float32 and rgb.min() == 0 and rgb.max() == 1
    # percentiles equal: min-max; constant: 0
    spike = np.zeros((20, 20), np.uint16)
    spike[0, 0] = 7
    np.testing.assert_allclose(io.as_rgb_float(spike)[..., 0], spike / 7)
    assert io.as_rgb_float(np.full((3, 3), 9, np.uint16)).max() == 0
    # RGBA over black; gray with one channel repeated
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, [[255, 0], [51, 102]]
    np.testing.assert_allclose(io.as_rgb_float(rgba)[..., 0], 200 / 255 * rgba[..., 3] / 255, rtol=1e-6)
    np.testing.assert_array_equal(io.as_rgb_float(gray8[..., None]), io.as_rgb_float(gray8))
    assert io.as_rgb_float(gray8, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="NaN or infinite"):
        io.as_rgb_float(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        io.as_rgb_float(np.array([[0.0, np.inf], [1.0, 2.0]]))


def test_a_dim_fluorescence_channel_is_stretched_by_its_own_percentiles():
    """3 fluorescence channels read as RGB (DAPI bright, GFP, a dim mCherry): each channel spans
    [0, 1] by its own 0.5-99.5 percentiles. Stretched together by the brightest, the mCherry
    channel (counts 20..80 beside DAPI's 100..3100) stayed under 0.03: the network saw no signal."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:64, :64]
    blob = ((yy - 32) ** 2 + (xx - 32) ** 2 < 100).astype(float)
    dapi = rng.poisson(100 + 3000 * blob)
    gfp = rng.poisson(60 + 400 * np.roll(blob, 10, axis=1))
    mcherry = rng.poisson(20 + 60 * np.roll(blob, -12, axis=0))
    image = np.stack([dapi, gfp, mcherry], axis=-1).astype(np.uint16)
    rgb = io.as_rgb_float(image)
    for channel in range(3):
        values = image[..., channel].astype(np.float64)
        low, high = np.percentile(values, (0.5, 99.5))
        np.testing.assert_allclose(rgb[..., channel], np.clip((values - low) / (high - low), 0, 1), atol=1e-6)
    inside = np.roll(blob, -12, axis=0) > 0
    assert rgb[..., 2][inside].mean() > 0.5 > rgb[..., 2][~inside].mean() + 0.3
    # an empty channel (zeros, or constant) stays 0, not stretched noise
    image[..., 1] = 0
    assert io.as_rgb_float(image)[..., 1].max() == 0
    # floats outside [0, 1] by channel too; a 12-bit RGB of an 8-bit photo still reads as the photo (below)
    np.testing.assert_allclose(io.as_rgb_float(image.astype(np.float32) * 1.5), io.as_rgb_float(image), atol=1e-6)


def test_12_bit_image_gives_the_network_input_of_its_8_bit_version():
    """A uint16 image using 0..4095 is not read as nearly black (65535 would be white)."""
    from skimage import data

    from napari_prm.model.efficientnet_lite import LITE_MEAN, LITE_STD
    from napari_prm.model.transforms import to_network_input

    image8 = data.chelsea().copy()
    image8[:10], image8[-10:] = 0, 255  # black and white beyond 0.5 % of the pixels
    image12 = np.round(image8.astype(np.float64) * 4095 / 255).astype(np.uint16)
    np.testing.assert_allclose(io.as_rgb_float(image12), io.as_rgb_float(image8), atol=0.5 / 4095 + 1e-6)
    x8 = to_network_input(io.as_rgb_float(image8), (224, 224), LITE_MEAN, LITE_STD)
    x12 = to_network_input(io.as_rgb_float(image12), (224, 224), LITE_MEAN, LITE_STD)
    assert float((x8 - x12).abs().max()) < 1e-2


def test_napari_features_dataframe_with_missing_values(tmp_path):
    """A Labels.features DataFrame (extra columns, NaN where the user added a row) exports."""
    import pandas as pd

    labels = synthetic_labels()
    features = pd.DataFrame({"index": [0, 1, 2], "label": [1, 2, 3],
                             "class_index": [0.0, np.nan, 1.0],
                             "class_name": ["cat", None, "dog"],
                             "score": [0.9, np.nan, 0.5], "peak": [0, np.nan, 1]})
    io.export_instances(labels, features, CLASS_NAMES, tmp_path, stem="f")
    back, table, _ = io.coco_to_labels(tmp_path / "f_instances.json")
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(table["class_index"], [0, -1, 1])
    assert list(table["class_name"]) == ["cat", "unknown", "dog"]
    np.testing.assert_array_equal(table["peak"], [0, -1, 1])
    rows = io.read_instances_csv(tmp_path / "f_instances.csv")
    assert list(rows["class_name"]) == ["cat", "unknown", "dog"]


def test_export_3d_labels_only_as_tiff(tmp_path):
    volume = np.stack([synthetic_labels(), synthetic_labels(70000)])
    written = io.export_instances(volume, None, None, tmp_path / "volume.tif")
    np.testing.assert_array_equal(io.read_label_image(written[0]), volume)
    assert io.read_label_image(written[0]).dtype == np.uint32
    with pytest.raises(ValueError, match="coco export needs 2-D labels.*label TIFF and an instance CSV"):
        io.export_instances(volume, None, None, tmp_path / "folder")
    with pytest.raises(ValueError, match="png export needs 2-D labels"):
        io.export_instances(volume, None, None, tmp_path / "folder", formats=["png"])
    assert not (tmp_path / "folder").exists() or not any((tmp_path / "folder").iterdir())


def test_stack_instance_csv_has_a_row_per_plane_and_label(tmp_path):
    """A stack's CSV leads with the plane (``plane``; ``plane_0, plane_1`` for two leading
    axes); a label in two planes has a row in each, with that plane's area and box."""
    one = synthetic_labels()
    stack = np.stack([one, np.where(one == 2, 0, one)])  # label 2 in plane 0 only
    stack[1, 35:38, 0:4] = 9  # painted by hand: no row in the table
    written = io.export_instances(stack, synthetic_table(), CLASS_NAMES, tmp_path, stem="s",
                                  formats=["tiff", "csv"])
    assert [p.name for p in written] == ["s_labels.tif", "s_instances.csv"]
    lines = (tmp_path / "s_instances.csv").read_text().splitlines()
    assert lines[0] == "plane," + ",".join(io.INSTANCE_CSV_COLUMNS)
    # each plane's rows are those of the plane alone, as a 2-D export writes them
    io.write_instances_csv(tmp_path / "flat.csv", one, synthetic_table(), CLASS_NAMES)
    flat = (tmp_path / "flat.csv").read_text().splitlines()[1:]
    assert lines[1:4] == ["0," + line for line in flat]
    assert lines[4:6] == ["1," + flat[0], "1," + flat[2]]
    assert lines[6] == "1,9,unknown,-1,12,35,0,38,4,,-1"  # painted by hand: no score, no peak (-1)
    rows = io.read_instances_csv(tmp_path / "s_instances.csv")
    assert rows["plane"].tolist() == [[0], [0], [0], [1], [1], [1]]
    assert rows["label"].tolist() == [1, 2, 3, 1, 3, 9]
    assert list(rows["class_name"]) == ["cat", "bird", "dog", "cat", "dog", "unknown"]

    hyper = np.stack([stack, stack[::-1]])  # (2, 2, H, W): two leading axes
    io.write_instances_csv(tmp_path / "h.csv", hyper, synthetic_table(), CLASS_NAMES)
    assert (tmp_path / "h.csv").read_text().splitlines()[0].startswith("plane_0,plane_1,id,")
    rows = io.read_instances_csv(tmp_path / "h.csv")
    assert rows["plane"].tolist() == [[0, 0]] * 3 + [[0, 1]] * 3 + [[1, 0]] * 3 + [[1, 1]] * 3
    # a label may repeat over planes, not within one
    text = (tmp_path / "h.csv").read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join(text + [text[-1]]) + "\n")
    with pytest.raises(ValueError, match=r"line 14: id 3 is listed twice \(plane \[1, 1\]\)"):
        io.read_instances_csv(tmp_path / "bad.csv")


def test_failed_export_keeps_every_file_of_the_previous_export(tmp_path):
    """The peaks CSV fails after the label image, COCO JSON and instance CSV were written
    to temporary files: none of the previous export's files is replaced."""
    from napari_prm.predict import Prediction

    def prediction(peak_class):
        prms = np.zeros((1, 40, 60), np.float32)
        prms[0, 5, 5] = 1
        return Prediction(class_names=CLASS_NAMES, scores=np.zeros(3, np.float32),
                          crms=np.zeros((3, 5, 8), np.float32), peaks=np.array([[5.0, 5.0]]),
                          peak_classes=np.array([peak_class]), peak_values=np.ones(1, np.float32),
                          prms=prms)

    written = io.write_prediction(prediction(1), tmp_path, "x", prms_format="npy")
    assert [p.name for p in written] == ["x_labels.tif", "x_instances.json", "x_instances.csv",
                                         "x_peaks.csv", "x_prms.npy"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == sorted([p.name for p in written] + ["x.manifest.json"])
    assert "dog" in before["x_peaks.csv"].decode()
    with pytest.raises(IndexError):  # class index 7 of a 3-class model
        io.write_prediction(prediction(7), tmp_path, "x", prms_format="npy", overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(FileExistsError, match="x_labels.tif"):
        io.write_prediction(prediction(2), tmp_path, "x", prms_format="npy")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_cancelled_export_leaves_no_file_and_the_previous_export_as_it_was(tmp_path):
    """``cancel`` turning true after the label TIFF was staged (the COCO JSON and CSV not yet): `Cancelled`,
    the staged TIFF removed, the previous export's files untouched; for a folder not yet made, no folder."""
    import threading

    from napari_prm.predict import Cancelled

    labels, table = synthetic_labels(), synthetic_table()
    written = io.export_instances(labels, table, CLASS_NAMES, tmp_path, stem="x")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == sorted([p.name for p in written] + ["x.manifest.json"])
    staged = []

    def tiff_staged():  # true once the new label TIFF is in the staging folder (the old one is in tmp_path)
        staged.extend(p for p in tmp_path.rglob("x_labels.tif") if p.parent != tmp_path)
        return bool(staged)

    labels[labels == 1] = 0
    with pytest.raises(Cancelled, match="export cancelled"):
        io.export_instances(labels, table, CLASS_NAMES, tmp_path, stem="x", overwrite=True, cancel=tiff_staged)
    assert staged and not staged[0].exists()  # the TIFF had been written, then removed
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not [p for p in tmp_path.rglob("*") if p.name not in before]
    # one named file, and an Event already set: nothing, not even the new folder
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        io.export_instances(labels, table, CLASS_NAMES, tmp_path / "new" / "x.csv", cancel=stop)
    assert not (tmp_path / "new").exists()


def test_an_export_cancelled_while_it_writes_leaves_no_folder_it_made(tmp_path):
    """Cancel seen after a file was written (the check between files) removed the files but left the
    folders the export had made, empty, where the docs and the widget say nothing was made."""
    from napari_prm.predict import Cancelled

    labels, table = synthetic_labels(), synthetic_table()
    calls = []

    def after_the_first_file():  # false until a file of the export has been written
        calls.append(1)
        return any(p.is_file() for p in (tmp_path / "new").rglob("*"))

    with pytest.raises(Cancelled):
        io.export_instances(labels, table, CLASS_NAMES, tmp_path / "new" / "deeper", stem="x",
                            cancel=after_the_first_file)
    assert len(calls) > 2 and not (tmp_path / "new").exists()
    with pytest.raises(Cancelled):  # one named file: cancelled once it is written
        io.export_instances(labels, table, CLASS_NAMES, tmp_path / "new" / "x.csv", cancel=after_the_first_file)
    assert not (tmp_path / "new").exists()
    # a folder that was there stays, with what it held
    (tmp_path / "kept").mkdir()
    with pytest.raises(Cancelled):
        io.export_instances(labels, table, CLASS_NAMES, tmp_path / "kept", stem="x",
                            cancel=lambda: any((tmp_path / "kept").rglob("*.*")))
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


def test_sparse_large_label_values_and_no_background(tmp_path):
    labels = synthetic_labels()
    labels[labels == 2] = 4_000_000_000  # near the uint32 limit: no per-value arrays
    table = synthetic_table()
    table["label"] = np.array([1, 4_000_000_000, 3])
    io.write_instances_csv(tmp_path / "i.csv", labels, table, CLASS_NAMES)
    rows = io.read_instances_csv(tmp_path / "i.csv")
    np.testing.assert_array_equal(rows["label"], [1, 3, 4_000_000_000])
    np.testing.assert_array_equal(rows["area"], [200, np.sum(labels == 3), 180])
    np.testing.assert_array_equal(rows["bbox"][2], [12, 10, 30, 20])
    back, table, _ = io.coco_to_labels(io.write_coco_json(
        tmp_path / "i.json", io.labels_to_coco(labels, table, CLASS_NAMES)))
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint32
    full = np.full((3, 4), 7, dtype=np.uint16)  # one instance covering the whole image
    coco = io.labels_to_coco(full)
    assert coco["annotations"][0]["area"] == 12 and coco["annotations"][0]["bbox"] == [0, 0, 4, 3]


def test_io_and_masks_import_neither_napari_qt_nor_torch():
    """Scripts and servers use io without a GUI stack or torch in sight of its modules."""
    import ast

    package = Path(io.__file__).parent
    forbidden = {"torch", "torchvision", "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6",
                 "magicgui", "vispy"}
    siblings = {path.stem for path in package.glob("*.py")}
    for path in [*package.glob("*.py"), package.parent / "masks.py", package.parent / "scaled.py",
                 package.parent / "_classes.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom):  # relative: io's own modules, masks, _validate, _text,
                # _classes (match_exports' class names; it imported napari_prm.data, so torch); masks' scaled
                allowed = ({(1, sibling) for sibling in siblings}
                           | {(2, "masks"), (2, "_validate"), (2, "_text"), (2, "_classes"), (1, "scaled")})
                assert (node.level, node.module) in allowed, f"{path.name} imports {'.' * node.level}{node.module}"
                continue
            else:
                continue
            assert not {name.split(".")[0] for name in names} & forbidden, f"{path.name} imports {names}"


def test_unreadable_images_finds_truncated_empty_and_foreign_files_without_false_alarms(tmp_path):
    """Headers and ends only; a file cut short in each format is found, a sound one is not,
    a JPEG with padding after its end marker is decoded and kept."""
    import imageio.v3 as iio
    from skimage import data

    image = data.astronaut()[::8, ::8]
    sound = []
    for suffix in (".png", ".jpg", ".tif", ".bmp", ".gif", ".webp"):
        path = tmp_path / f"sound{suffix}"
        if suffix == ".tif":
            tifffile.imwrite(path, image)
        else:
            iio.imwrite(path, image)
        sound.append(path)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(sound[1].read_bytes() + b"\x00" * 4096)
    broken = []
    for path in sound:
        cut = tmp_path / f"cut{path.suffix}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
        broken.append(cut)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    broken += [tmp_path / "empty.png", tmp_path / "text.jpg", tmp_path / "missing.png"]
    seen = []
    found = io.unreadable_images([*sound, padded, *broken], progress=lambda done, total: seen.append((done, total)))
    assert [path for path, _ in found] == broken
    assert all(reason.startswith(f"cannot read image {path}") for path, reason in found)
    assert seen[-1] == (len(sound) + 1 + len(broken),) * 2
    for path in broken[:-3]:  # each really is unreadable
        with pytest.raises(ValueError):
            io.read_image(path)


def test_unreadable_images_finds_tiff_stacks_that_read_image_refuses(tmp_path):
    """A z-stack, a time series or a 2-channel TIFF in a dataset passed the check (its header and
    end are sound), and training stopped at it in epoch 1 ("nothing was written"); each is named
    before training now. TIFFs `read_image` reads (one plane, 3 RGB planes, an RGB page, a
    one-plane ImageJ file) are still not reported."""
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 4000, (4, 24, 20), dtype=np.uint16)
    readable = {"gray.tif": dict(data=planes[0]), "rgb_first.tif": dict(data=planes[:3].astype(np.uint8)),
                "rgb.tif": dict(data=np.moveaxis(planes[:3], 0, -1).astype(np.uint8), photometric="rgb"),
                "one_z.tif": dict(data=planes[:1], imagej=True, metadata={"axes": "ZYX"})}
    stacks = {"z.tif": dict(data=planes, imagej=True, metadata={"axes": "ZYX"}),
              "t.tif": dict(data=planes[:3], imagej=True, metadata={"axes": "TYX"}),
              "two_channels.tif": dict(data=planes[:2], imagej=True, metadata={"axes": "CYX"}),
              "pages.tif": dict(data=np.concatenate([planes, planes[:1]]))}  # 5 pages without axes
    for name, kwargs in {**readable, **stacks}.items():
        tifffile.imwrite(tmp_path / name, **kwargs)
    paths = [tmp_path / name for name in (*readable, *stacks)]
    found = io.unreadable_images(paths)
    assert [path.name for path, _ in found] == list(stacks)
    for path, reason in found:  # read_image's own message, naming the file
        with pytest.raises(ValueError) as error:
            io.read_image(path)
        assert reason == str(error.value) and reason.startswith(f"cannot read image {path}")
    for name in readable:
        io.read_image(tmp_path / name)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_label_png_and_tiff_record_world_units_and_class_names(tmp_path, suffix):
    """A label PNG recorded nothing of the layer (the TIFF its scale and translate only)."""
    labels = np.zeros((6, 7), np.uint16)
    labels[1:3, 2:5] = 300  # beyond 8 bits: a 16-bit PNG
    path = io.write_label_image(tmp_path / f"labels{suffix}", labels, class_names=["cat", "chien", "猫"],
                                world={"scale": (0.5, 2.0), "translate": (1.0, -3.0), "units": ("um", "um")})
    np.testing.assert_array_equal(io.read_label_image(path), labels)
    assert io.read_label_world(path) == {"scale": (0.5, 2.0), "translate": (1.0, -3.0), "units": ("um", "um")}
    assert io.read_label_class_names(path) == ["cat", "chien", "猫"]
    # napari's default unit is not recorded; nothing recorded reads as nothing
    bare = io.write_label_image(tmp_path / f"bare{suffix}", labels, world={"units": ("pixel", "pixel")})
    assert io.read_label_world(bare) == {} and io.read_label_class_names(bare) is None


def test_the_label_stack_of_an_imagej_stack_keeps_its_axis_and_plane_interval(tmp_path):
    """The label stack of an ImageJ z-stack (or time series) of 16-bit planes was a plain TIFF of
    unnamed pages ("QYX"), its pixel size in pixels per cm and its z-spacing (frame interval) lost:
    Fiji took 1 cm between planes. It is an ImageJ stack of the image's axes now, with its unit,
    pixel size, interval and class names; other stacks are written as before."""
    planes = np.zeros((3, 6, 7), np.uint16)
    labels = np.zeros((3, 6, 7), np.uint16)
    labels[1, 1:3, 2:5] = 4
    tifffile.imwrite(tmp_path / "z.tif", planes, imagej=True, resolution=(2.0, 4.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.3})
    tifffile.imwrite(tmp_path / "t.tif", planes, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TYX", "unit": "um", "finterval": 5.0})
    tifffile.imwrite(tmp_path / "pages.tif", planes, resolution=(2.0, 2.0))  # no ImageJ axes
    for name, axes, key, interval in (("z", "ZYX", "spacing", 0.3), ("t", "TYX", "finterval", 5.0)):
        size = io.tiff_pixel_size(tmp_path / f"{name}.tif")
        assert size["plane_axis"] == axes[0] and size[key] == interval
        path = io.write_label_image(tmp_path / f"{name}_labels.tif", labels, pixel_size=size, class_names=["a", "b"])
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].axes == axes and tif.imagej_metadata[key] == interval
            assert tif.imagej_metadata["unit"] == "um"
        assert io.tiff_pixel_size(path) == size  # the label stack says what the image says
        np.testing.assert_array_equal(io.read_label_image(path), labels)
        assert io.read_label_class_names(path) == ["a", "b"]
    plain = io.tiff_pixel_size(tmp_path / "pages.tif")
    assert "plane_axis" not in plain
    path = io.write_label_image(tmp_path / "pages_labels.tif", labels, pixel_size=plain)
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_imagej
    # a 2-D image's pixel size says nothing of planes
    tifffile.imwrite(tmp_path / "flat.tif", planes[0], imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    assert "plane_axis" not in io.tiff_pixel_size(tmp_path / "flat.tif")


def test_write_label_image_names_the_axes_it_is_given(tmp_path):
    """A label stack without an ImageJ unit (uint32 labels, or no pixel size) was written with
    tifffile's unnamed axes, QYX: ``axes=`` names them, and a ``pixel_size`` of a z-stack names
    the planes by default; axes that do not fit the labels are refused."""
    labels = np.zeros((3, 6, 7), np.uint32)
    labels[1, 1:3, 2:5] = 70000  # over uint16: no ImageJ file
    size = {"resolution": (2.0, 2.0), "unit": tifffile.RESUNIT.NONE, "imagej_unit": "um", "plane_axis": "Z"}
    for given, pixel_size, expected in (("TYX", None, "TYX"), (None, size, "ZYX"), ("zyx", size, "ZYX"),
                                        (None, None, "QYX")):
        path = io.write_label_image(tmp_path / "labels.tif", labels, pixel_size=pixel_size, axes=given,
                                    class_names=["a"])
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].axes == expected and not tif.is_imagej
        np.testing.assert_array_equal(io.read_label_image(path), labels)
        assert io.read_label_class_names(path) == ["a"]
    path = io.write_label_image(tmp_path / "small.tif", labels.astype(np.uint16) % 7, axes="TYX")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "TYX"
    for wrong in ("YX", "ZZX", "ZXY", "Z1X"):
        with pytest.raises(ValueError, match=rf"axes: expected 3 distinct axis letters ending in YX .*got '{wrong}'"):
            io.write_label_image(tmp_path / "wrong.tif", labels, axes=wrong)
    assert not (tmp_path / "wrong.tif").exists()


def test_label_axes_from_names_and_export_instances_axes(tmp_path):
    """napari's axis names of a label stack give the axes its label TIFF names: leading z or t (time),
    any case, then y and x or unnamed; anything else (a 2-D image, an unnamed or other leading axis,
    a name twice, swapped y and x) gives None. ``export_instances(axes=)`` names them in the TIFF."""
    assert io.label_axes_from_names(("z", "y", "x")) == "ZYX"
    assert io.label_axes_from_names(("Time", "-2", "-1")) == "TYX"
    assert io.label_axes_from_names(("t", "Z", "y", "x")) == "TZYX"
    for names in (("y", "x"), ("-3", "-2", "-1"), ("c", "y", "x"), ("z", "z", "y", "x"), ("z", "x", "y")):
        assert io.label_axes_from_names(names) is None, names
    assert io.label_axes_from_names(("", "y", "x")) is None  # an empty leading name is unnamed
    labels = np.zeros((2, 6, 7), np.uint16)
    labels[1, 1:3, 2:5] = 4
    (path,) = io.export_instances(labels, None, None, tmp_path, formats=["tiff"], stem="s", axes="TYX")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "TYX"
    np.testing.assert_array_equal(io.read_label_image(path), labels)


def test_a_label_tiff_of_a_layer_in_micrometres_carries_its_pixel_size_as_resolution_tags(tmp_path):
    """The Export widget's label TIFF of a layer at 0.26 µm per pixel recorded the scale in napari-prm's
    JSON description only: Fiji (and any TIFF reader) saw 1 pixel per unit. Its resolution tags hold it now,
    in pixels per centimetre (a uint32 stack's too: a uint16 one is an ImageJ stack, see below); a layer in
    pixels, or of two units, gets none."""
    labels = np.zeros((2, 6, 7), np.uint32)
    labels[0, 1:3, 2:5] = 70_000
    world = {"scale": (2.0, 0.26, 0.5), "translate": (0.0, 1.0, 2.0), "units": ("micrometer",) * 3}
    for name, data, axes in (("plane", labels[0], slice(1, None)), ("stack", labels, slice(None))):
        part = {key: values[axes] for key, values in world.items()}
        path = io.write_label_image(tmp_path / f"{name}.tif", data, world=part)
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            assert page.get_resolution() == pytest.approx((1 / 0.5e-4, 1 / 0.26e-4))  # x, y
        assert io.read_label_world(path) == part  # napari-prm's reader still gets the layer's world
        size = io.tiff_pixel_size(path)
        assert size["resolution"] == pytest.approx((2e4, 1 / 0.26e-4))
    for name, units in (("pixels", ("pixel", "pixel")), ("mixed", ("micrometer", "nanometer"))):
        path = io.write_label_image(tmp_path / f"{name}.tif", labels[0],
                                    world={"scale": (0.26, 0.5), "units": units})
        assert io.tiff_pixel_size(path) is None


@pytest.mark.parametrize(("units", "scale", "axes", "interval"), [
    (("micrometer",) * 3, (2.0, 0.26, 0.5), "ZYX", {"spacing": 2.0}),
    (("nanometer", "micrometer", "micrometer"), (500.0, 0.26, 0.5), "ZYX", {"spacing": 0.5}),
    (("second", "micrometer", "micrometer"), (3.0, 0.26, 0.5), "TYX", {"finterval": 3.0}),
    (("minute", "micrometer", "micrometer"), (0.5, 0.26, 0.5), "TYX", {"finterval": 30.0}),
])
def test_the_label_stack_of_a_layer_in_micrometres_is_an_imagej_stack_with_its_spacing(
        tmp_path, units, scale, axes, interval):
    """The Export widget's label TIFF of a ZYX stack at 0.26 × 0.5 µm per pixel, 2 µm between planes (or a
    TYX one, 3 s between frames) gave Fiji its xy pixel size in centimetres and no z spacing (voxel depth
    1) or frame interval. A uint16 stack is now an ImageJ ZYX (TYX) stack in µm with its spacing (seconds
    between frames), as the label stack of an ImageJ stack is; napari-prm's reader still gets the layer's
    scale, translate and units, and the class names."""
    labels = np.zeros((3, 6, 7), np.uint16)
    labels[1, 1:3, 2:5] = 3
    world = {"scale": scale, "translate": (4.0, 1.0, 2.0), "units": units}
    path = io.write_label_image(tmp_path / "stack.tif", labels, world=world, class_names=["cat", "dog"])
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == axes
        assert tif.imagej_metadata["unit"] == "um"
        assert {key: tif.imagej_metadata[key] for key in interval} == pytest.approx(interval)
        assert tif.pages.first.get_resolution() == pytest.approx((1 / 0.5, 1 / 0.26))  # pixels per µm
        np.testing.assert_array_equal(tif.asarray(), labels)
    assert io.read_label_world(path) == world
    assert io.read_label_class_names(path) == ["cat", "dog"]
    size = io.tiff_pixel_size(path)  # what `predict` gives the labels of this file
    assert size.pop("resolution") == pytest.approx((2.0, 1 / 0.26))
    assert size == pytest.approx({"unit": tifffile.RESUNIT.NONE, "imagej_unit": "um", "plane_axis": axes[0],
                                  **interval})


def test_an_imagej_label_tiff_records_the_class_names_too(tmp_path):
    """The label TIFF of a calibrated ImageJ image (2-D, uint16: `predict` on a µm TIFF) is an ImageJ
    file, to overlay the image in Fiji; it recorded no class names, so the plugin's reader opened it
    without the model's classes (the label TIFFs of other images and stacks record them)."""
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.zeros((6, 7), np.uint16), imagej=True, resolution=(2.0, 4.0),
                     metadata={"unit": "um"})
    labels = np.zeros((6, 7), np.uint16)
    labels[1:3, 2:5] = 3
    path = io.write_label_image(tmp_path / "cells_labels.tif", labels, pixel_size=io.tiff_pixel_size(image),
                                class_names=["cat", "chien", "猫"])
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
        assert tif.pages[0].get_resolution() == pytest.approx((2.0, 4.0))
    np.testing.assert_array_equal(io.read_label_image(path), labels)
    assert io.read_label_class_names(path) == ["cat", "chien", "猫"]
    plain = io.write_label_image(tmp_path / "plain_labels.tif", labels, pixel_size=io.tiff_pixel_size(image))
    assert io.read_label_class_names(plain) is None and io.read_label_world(plain) == {}


def test_an_image_too_large_for_pillow_says_so_without_speaking_of_an_attack(tmp_path, monkeypatch):
    """A 14000×14000 PNG was refused with Pillow's "could be decompression bomb DOS attack", to
    a user who made it; the message now says what the limit is and the ways round it. Pillow's
    limit is lowered here so that a small image is over it."""
    from PIL import Image
    from skimage import data

    image = data.chelsea()[:60, :80]
    Image.fromarray(image).save(tmp_path / "large.png")
    tifffile.imwrite(tmp_path / "large.tif", image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2000 pixels
    with pytest.raises(ValueError) as error:
        io.read_image(tmp_path / "large.png")
    message = str(error.value)
    assert message.startswith(f"cannot read image {tmp_path / 'large.png'}: Image size (4800 pixels) exceeds")
    assert "Pillow does not decode images this large" in message and "save it as TIFF" in message
    assert "attack" not in message
    np.testing.assert_array_equal(io.read_image(tmp_path / "large.tif"), image)  # as the message says


def test_writable_folder_leaves_nothing_behind_and_refuses_a_file(tmp_path):
    """`writable_folder(create=False)` said a file was a folder it could write into (it probed
    the folder above the file), though its docstring names "a file in the way"."""
    assert io.writable_folder(tmp_path / "a" / "b", create=False) == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # neither --out nor a probe
    (tmp_path / "made").mkdir()
    io.writable_folder(tmp_path / "made", create=False)
    assert list((tmp_path / "made").iterdir()) == []
    assert io.writable_folder(tmp_path / "new" / "out").is_dir()
    (tmp_path / "file").write_text("x")
    for create in (False, True):
        with pytest.raises(OSError, match=f"cannot write into folder {tmp_path / 'file'}: "):
            io.writable_folder(tmp_path / "file", create=create)
    assert (tmp_path / "file").read_text() == "x"


def test_a_tiff_cut_short_says_so(tmp_path):
    """A 16-bit TIFF whose copy stopped part-way was named with tifffile's "failed to read 18432
    bytes, got 2744", which does not say what is wrong with the file."""
    image = (np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7)
    tifffile.imwrite(tmp_path / "whole.tif", image)
    cut = tmp_path / "cut.tif"
    cut.write_bytes((tmp_path / "whole.tif").read_bytes()[:3000])
    with pytest.raises(ValueError) as error:
        io.read_image(cut)
    assert str(error.value).startswith(f"cannot read image {cut}: the file is cut short (tifffile: failed to read ")
    assert str(error.value).endswith("): copy or save it again")
    ((path, reason),) = io.unreadable_images([tmp_path / "whole.tif", cut])
    assert path == cut and "cut short" in reason


def test_predict_reads_a_tiff_once_as_the_readers_of_its_parts_do(tmp_path, monkeypatch):
    """`napari_prm.batch.predict_image` read a TIFF three times (whether it is a stack, its pixels, its
    pixel size) and four or five when its samples needed a look at its header; `_read_image_file`
    opens it once and gives what `read_stack` or `read_image`, and `tiff_pixel_size`, give, or raises
    their error."""
    from napari_prm.io.images import _read_image_file

    rng = np.random.default_rng(0)
    planes = rng.integers(0, 255, (4, 24, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "gray16.tif", planes[0].astype(np.uint16) * 200, resolution=(3.0, 3.0),
                     imagej=True, metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "rgb_first.tif", planes[:3], photometric="minisblack")  # channels first
    tifffile.imwrite(tmp_path / "rgba.tif", np.moveaxis(planes, 0, -1), photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "rgbx.tif", np.moveaxis(planes, 0, -1), photometric="rgb", extrasamples=["unspecified"])
    tifffile.imwrite(tmp_path / "cmyk.tif", np.moveaxis(planes, 0, -1), photometric="separated")
    tifffile.imwrite(tmp_path / "gray_alpha.tif", np.moveaxis(planes[:2], 0, -1), photometric="minisblack",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "four_gray.tif", np.moveaxis(planes, 0, -1), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(tmp_path / "z.tif", planes, imagej=True, metadata={"axes": "ZYX", "unit": "um"},
                     resolution=(2.0, 2.0))
    tifffile.imwrite(tmp_path / "movie.ome.tif", rng.integers(0, 255, (2, 24, 20, 3), dtype=np.uint8), ome=True,
                     photometric="rgb", metadata={"axes": "TYXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    tifffile.imwrite(tmp_path / "zcyx.tif", planes.reshape(2, 2, 24, 20), imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "z_of_3.tif", planes[:3], imagej=True, metadata={"axes": "ZYX"})
    (tmp_path / "cut.tif").write_bytes((tmp_path / "gray16.tif").read_bytes()[:600])
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "text.tif").write_text("not a TIFF")
    (tmp_path / "no_page.tif").write_bytes(b"II*\x00garbage" * 10)  # a header pointing to no page

    opened = []
    real_init = tifffile.TiffFile.__init__

    def counted_init(self, arg, *args, **kwargs):
        opened.append(Path(str(arg)).name)
        real_init(self, arg, *args, **kwargs)

    kinds = set()
    for path in sorted(tmp_path.glob("*.tif")):
        try:
            expected = (io.read_stack(path), io.tiff_pixel_size(path))
            if expected[0] is None:
                expected = (io.read_image(path), expected[1])
        except ValueError as error:
            expected = error
        monkeypatch.setattr(tifffile.TiffFile, "__init__", counted_init)
        opened.clear()
        try:
            got = _read_image_file(path)
        except ValueError as error:
            got = error
        monkeypatch.undo()
        assert opened == ([] if path.name == "empty.tif" else [path.name])
        if isinstance(expected, ValueError):
            assert isinstance(got, ValueError) and str(got) == str(expected), path.name
            kinds.add("refused")
            continue
        (image, pixel_size), (expected_image, expected_pixel_size) = got, expected
        assert pixel_size == expected_pixel_size, path.name
        if isinstance(expected_image, io.ImageStack):
            assert (image.axes, image.shape) == (expected_image.axes, expected_image.shape)
            np.testing.assert_array_equal(image.planes, expected_image.planes)
            kinds.add("stack")
        else:
            np.testing.assert_array_equal(image, expected_image)
            assert image.dtype == expected_image.dtype
            kinds.add("image")
    assert kinds == {"stack", "image", "refused"}
    assert io.tiff_pixel_size(tmp_path / "gray16.tif") is not None
    assert io.tiff_pixel_size(tmp_path / "movie.ome.tif") is not None


@pytest.mark.parametrize("huge", [False, True])
def test_label_regions_alike_by_label_value_and_for_huge_labels(huge):
    """Boxes and areas are found by the label values (fast on a large image), or by their ranks when a
    label is too large to index by: the same either way."""
    from napari_prm.io.tables import _label_regions

    labels = np.zeros((30, 40), np.uint64)
    labels[2:5, 3:9] = 4
    labels[10:20, 30:32] = 2**40 if huge else 11
    labels[29, 39] = 1
    big = 2**40 if huge else 11
    assert _label_regions(labels) == {1: ((slice(29, 30), slice(39, 40)), 1),
                                      4: ((slice(2, 5), slice(3, 9)), 18),
                                      big: ((slice(10, 20), slice(30, 32)), 20)}
    assert list(_label_regions(labels)) == [1, 4, big] and _label_regions(np.zeros((3, 3), np.uint8)) == {}


def test_functions_of_several_files_take_one_path_as_one_file(tmp_path, monkeypatch):
    """unreadable_images("bad.png") reported each character as a missing file, atomic_writes("out.txt")
    wrote a file per character ("o", "u", "t", ...), sorted_paths("b/a") sorted its characters, and a
    Path was not iterable; one path is now one file."""
    from napari_prm.io.paths import sorted_paths

    monkeypatch.chdir(tmp_path)
    Path("bad.png").write_bytes(b"not a png")
    for one in ("bad.png", tmp_path / "bad.png"):
        (found,) = io.unreadable_images(one)
        assert Path(found[0]) == Path(one)
    for one in ("out.txt", tmp_path / "out2.txt"):
        with io.atomic_writes(one) as (temp,):
            temp.write_text("written")
        assert Path(one).read_text() == "written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "out.txt", "out2.txt"]
    assert sorted_paths("b/a") == ["b/a"]
    assert sorted_paths(Path("b/a")) == [Path("b/a")]
