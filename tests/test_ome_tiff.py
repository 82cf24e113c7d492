"""OME-TIFFs (``cells.ome.tif``, ``cells.ome.tiff``) end to end: outputs named by the image's stem
without its two-part extension (``cells_labels.tif``, as a microscopist expects, not
``cells.ome_labels.tif``), files paired with them by that stem (and by the ``cells.ome`` of
earlier versions), and their pixel size, z-spacing and frame interval kept in the label outputs.

The images are small real OME-TIFFs written by tifffile (2-D, ZYX, TYX and an RGB YXS), run by
conftest's tiny random checkpoint.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_prm import io
from napari_prm.batch import output_stems, predict_many, proposals_for_image
from napari_prm.cli import main
from napari_prm.io.paths import image_stem
from napari_prm.refine.corrections import corrections_from_folder

#: OME's pixel size of every image here: 0.5 µm by 0.25 µm.
PIXELS = {"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "µm"}


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def ome_folder(tmp_path) -> Path:
    """cells.ome.tif (2-D uint16), zstack.ome.tif (3 z-planes 1.5 µm apart, PhysicalSizeZ given in
    nm), movie.ome.tiff (2 frames 90 s apart, TimeIncrement in min), rgb.ome.tif (2-D RGB, YXS)."""
    from skimage import data

    folder = tmp_path / "images"
    folder.mkdir()
    camera = data.camera()[::8, ::8].astype(np.uint16) * 40  # 64 × 64
    tifffile.imwrite(folder / "cells.ome.tif", camera[:48, :40], ome=True, metadata={"axes": "YX", **PIXELS})
    planes = np.stack([camera[i * 4:i * 4 + 48, i * 4:i * 4 + 40] for i in range(3)])
    tifffile.imwrite(folder / "zstack.ome.tif", planes, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 1500, "PhysicalSizeZUnit": "nm", **PIXELS})
    tifffile.imwrite(folder / "movie.ome.tiff", planes[:2], ome=True,
                     metadata={"axes": "TYX", "TimeIncrement": 1.5, "TimeIncrementUnit": "min", **PIXELS})
    tifffile.imwrite(folder / "rgb.ome.tif", data.chelsea()[::6, ::6][:40, :48], ome=True, photometric="rgb",
                     metadata={"axes": "YXS", **PIXELS})
    return folder


def test_image_stem_drops_an_ome_tiffs_two_part_extension():
    assert image_stem("cells.ome.tif") == "cells"
    assert image_stem(Path("plate/A1/cells.OME.TIFF")) == "cells"  # any case, a path's last part
    assert image_stem("cells.tif") == "cells"
    assert image_stem("v1.2.png") == "v1.2"  # other dots are the name's
    assert image_stem("cells.ome.png") == "cells.ome"  # not an OME-TIFF
    assert image_stem(".ome.tif") == ".ome"  # nothing left of the name: as Path.stem
    assert io.image_stem is image_stem


def test_predict_names_ome_outputs_by_the_stem_and_keeps_pixel_size_spacing_and_interval(
        ome_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(ome_folder), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--device", "cpu"]) == 0
    summary = {Path(row["image"]).name: (row["status"], row["stem"], row["planes"])
               for row in rows(out / "summary.csv")}
    assert summary == {"cells.ome.tif": ("written", "cells", "1"), "movie.ome.tiff": ("written", "movie", "2"),
                       "rgb.ome.tif": ("written", "rgb", "1"), "zstack.ome.tif": ("written", "zstack", "3")}
    assert sorted(path.name for path in out.glob("*_labels.tif")) == [
        "cells_labels.tif", "movie_labels.tif", "rgb_labels.tif", "zstack_labels.tif"]
    assert not list(out.glob("*.ome*"))
    assert json.loads((out / "cells_instances.json").read_text())["images"][0]["file_name"] == "cells.ome.tif"
    for stem, shape in (("cells", (48, 40)), ("rgb", (40, 48)), ("zstack", (3, 48, 40)), ("movie", (2, 48, 40))):
        with tifffile.TiffFile(out / f"{stem}_labels.tif") as tif:
            assert tif.series[0].shape == shape
            # pixels per µm: 1 / 0.5 across, 1 / 0.25 down
            assert tif.pages.first.get_resolution() == pytest.approx((2.0, 4.0)), stem
            assert tif.imagej_metadata["unit"] == "um"
            if stem == "zstack":  # an ImageJ z-stack, 1500 nm = 1.5 µm between its planes
                assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == pytest.approx(1.5)
            if stem == "movie":  # an ImageJ time series, 1.5 min = 90 s between its frames
                assert tif.series[0].axes == "TYX" and tif.imagej_metadata["finterval"] == pytest.approx(90)
    # each plane of the stacks is predicted: the CSV has rows of every plane
    assert {row["plane"] for row in rows(out / "zstack_peaks.csv")} == {"0", "1", "2"}
    assert {row["plane"] for row in rows(out / "movie_peaks.csv")} == {"0", "1"}


def test_an_ome_tiff_beside_a_tiff_of_its_stem_keeps_its_earlier_name(tmp_path, tiny_checkpoint, capsys):
    """cells.tif and cells.ome.tif in one folder: cells.tif's outputs are cells_*, whatever the
    order the images come in, and cells.ome.tif's keep cells.ome_* (not cells_2_*)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "cells.tif", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    tifffile.imwrite(folder / "cells.ome.tif", rng.integers(0, 255, (40, 40), dtype=np.uint8), ome=True,
                     metadata={"axes": "YX", **PIXELS})
    both = [folder / "cells.ome.tif", folder / "cells.tif"]
    assert output_stems(both) == ["cells.ome", "cells"]
    assert output_stems(both[::-1]) == ["cells", "cells.ome"]
    assert output_stems([folder / "cells.ome.tif"]) == ["cells"]
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(tiny_checkpoint), "--out", str(out), "--device", "cpu"]) == 0
    assert "cells.ome.tif: outputs named cells.ome_* in" in capsys.readouterr().err
    assert json.loads((out / "cells_instances.json").read_text())["images"][0]["file_name"] == "cells.tif"
    assert json.loads((out / "cells.ome_instances.json").read_text())["images"][0]["file_name"] == "cells.ome.tif"
    with tifffile.TiffFile(out / "cells.ome_labels.tif") as tif:
        assert tif.pages.first.get_resolution() == pytest.approx((2.0, 4.0))


def test_a_folder_an_earlier_version_ran_is_resumed_under_its_names(ome_folder, tiny_checkpoint, tmp_path,
                                                                      capsys):
    """Outputs an earlier version wrote for cells.ome.tif (cells.ome_*, their manifest recording
    the image) are found: the image is skipped, not predicted again as cells_*; the images it had
    not run get the new names."""
    out = tmp_path / "out"
    from napari_prm import load_model

    earlier = predict_many([ome_folder / "cells.ome.tif"], load_model(tiny_checkpoint, device="cpu"), out=out,
                           stems=["cells.ome"])  # the stem earlier versions gave it
    assert [result.status for result in earlier.results] == ["written"]
    written = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert "cells.ome_labels.tif" in written
    assert main(["predict", str(ome_folder), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "outputs named cells.ome_* in" in capsys.readouterr().err
    summary = {Path(row["image"]).name: (row["status"], row["stem"]) for row in rows(out / "summary.csv")}
    assert summary["cells.ome.tif"] == ("skipped", "cells.ome")
    assert summary["zstack.ome.tif"] == ("written", "zstack")
    assert not list(out.glob("cells_*")) and not (out / "cells.manifest.json").exists()  # no second set
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in written.items() if name != "summary.csv")


def test_proposal_files_of_an_ome_tiff(tmp_path):
    images, proposals = tmp_path / "images", tmp_path / "proposals"
    images.mkdir()
    proposals.mkdir()
    image = images / "cells.ome.tif"
    tifffile.imwrite(image, np.zeros((8, 8), np.uint8), ome=True)
    np.save(proposals / "cells.npy", np.ones((1, 8, 8), bool))
    assert proposals_for_image(proposals, image) == str(proposals / "cells.npy")
    np.save(proposals / "cells.ome.npy", np.ones((1, 8, 8), bool))  # named as earlier versions matched
    assert proposals_for_image(proposals, image) == str(proposals / "cells.ome.npy")
    (proposals / "cells.ome.npy").unlink()
    # beside cells.tif, cells.* are cells.tif's proposals: not taken for cells.ome.tif
    tifffile.imwrite(images / "cells.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"no proposal file named cells\.ome\.\* in"):
        proposals_for_image(proposals, image)
    assert proposals_for_image(proposals, images / "cells.tif") == str(proposals / "cells.npy")


def _export(folder: Path, stem: str, value: int) -> None:
    """A hand-made export (no manifest): ``<stem>_labels.tif`` of one square labelled ``value``
    and its instance CSV, class 'cat'."""
    labels = np.zeros((8, 8), np.uint16)
    labels[2:6, 2:6] = value
    io.write_label_image(folder / f"{stem}_labels.tif", labels)
    io.write_instances_csv(folder / f"{stem}_instances.csv", labels, {
        "label": np.array([value]), "class_index": np.array([0]), "class_name": np.array(["cat"], dtype=object),
        "score": np.array([1.0]), "peak": np.array([-1])})


def test_corrections_pair_exports_with_ome_tiffs_by_either_name(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    rng = np.random.default_rng(0)
    ome = folder / "cells.ome.tif"
    tifffile.imwrite(ome, rng.integers(0, 255, (8, 8), dtype=np.uint8), ome=True)
    _export(folder, "cells", 7)
    (found,) = corrections_from_folder(folder, ["cat"])  # the image beside its export
    assert found.image_path == ome
    (found,) = corrections_from_folder(folder, ["cat"], image_paths=[ome])  # among a dataset's images
    assert found.image_path == ome

    # the name earlier versions gave it, and beside cells.tif (which cells_labels.tif is of)
    plain = folder / "cells.tif"
    tifffile.imwrite(plain, rng.integers(0, 255, (8, 8), dtype=np.uint8))
    _export(folder, "cells.ome", 9)
    for image_paths in ((), (ome, plain), (plain, ome)):
        pairs = {Path(c.source).name: (c.image_path.name, int(c.labels.max()))
                 for c in corrections_from_folder(folder, ["cat"], image_paths=image_paths)}
        assert pairs == {"cells_labels.tif": ("cells.tif", 7), "cells.ome_labels.tif": ("cells.ome.tif", 9)}


def test_napari_names_an_ome_tiffs_exports_and_layers_by_its_stem(make_napari_viewer, ome_folder, tmp_path):
    from napari_prm._reader import read_coco
    from napari_prm._widgets.export import default_stem
    from napari_prm._widgets.layers import image_layer_of

    viewer = make_napari_viewer()
    (opened,) = viewer.open(str(ome_folder / "cells.ome.tif"))
    labels = np.zeros(opened.data.shape, np.uint16)
    labels[5:20, 5:25] = 1
    made = viewer.add_labels(labels, name="cells.ome instances", metadata={"image_layer": opened.name})
    assert default_stem(viewer, made) == "cells"  # cells_labels.tif, not cells.ome_labels.tif
    # no image layer: the image file name the instances recorded
    alone = viewer.add_labels(labels, name="gone instances", metadata={"image_file_name": "nuclei.ome.tiff"})
    assert default_stem(viewer, alone) == "nuclei"
    # an export opened again is paired with its image by the stem, as by the name earlier versions gave it
    for name in ("cells_labels", "cells.ome_labels"):
        assert image_layer_of(viewer, viewer.add_labels(labels[:5], name=name)) is opened
    # a COCO JSON of several images: a layer per image, named by its stem
    io.export_instances(labels, None, ["cat"], tmp_path / "a", stem="a", formats=["coco"],
                        image_file_name="cells.ome.tif")
    io.export_instances(labels, None, ["cat"], tmp_path / "b", stem="b", formats=["coco"],
                        image_file_name="nuclei.ome.tiff")
    coco = json.loads((tmp_path / "a" / "a_instances.json").read_text())
    second = json.loads((tmp_path / "b" / "b_instances.json").read_text())
    coco["images"] += [{**second["images"][0], "id": 2}]
    coco["annotations"] += [{**annotation, "id": 100 + annotation["id"], "image_id": 2}
                            for annotation in second["annotations"]]
    (tmp_path / "both.json").write_text(json.dumps(coco))
    assert [layer[1]["name"] for layer in read_coco(tmp_path / "both.json")] == ["cells", "nuclei"]


def test_demo_names_an_ome_tiffs_outputs_by_its_stem(ome_folder, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", str(ome_folder / "rgb.ome.tif"), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--device", "cpu", "--no-view"]) == 0
    assert str(out / "rgb_labels.tif") in capsys.readouterr().out.splitlines()
    assert sorted(path.name for path in out.glob("*_labels.tif")) == ["rgb_labels.tif"]
    with tifffile.TiffFile(out / "rgb_labels.tif") as tif:
        assert tif.pages.first.get_resolution() == pytest.approx((2.0, 4.0))
