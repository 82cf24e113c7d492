"""``napari-prm predict`` on TIFF stacks: z-planes and time points predicted plane by plane.

A tiny random checkpoint (conftest's), a 3-plane 16-bit ImageJ z-stack (ZYX, with a pixel size in µm) and
a 2-frame RGB OME-TIFF time-lapse (TYXS), cut from scikit-image's samples. Each plane's
outputs must be exactly what ``predict`` gives for that plane alone.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_prm import io, load_model, predict
from napari_prm.batch import predict_many, start_local_cluster
from napari_prm.cli import main

SETTINGS = {"proposals": "prm", "peak_threshold": 0.0, "class_threshold": 0.0}
CLI_SETTINGS = ["--proposals", "prm", "--peak-threshold", "0", "--class-threshold", "0"]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> Path:
    """zstack.tif: (3, 48, 40) uint16, ImageJ ZYX at 0.5 µm per pixel; movie.ome.tif: (2, 40, 48, 3)
    uint8, OME TYXS; flat.png: a 2-D photo beside them."""
    from skimage import data

    folder = tmp_path_factory.mktemp("stacks")
    camera = data.camera()[::8, ::8]  # 64 × 64
    planes = np.stack([camera[i * 8:i * 8 + 48, i * 4:i * 4 + 40] for i in range(3)]).astype(np.uint16) * 40
    tifffile.imwrite(folder / "zstack.tif", planes, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 2.5})
    cat = data.chelsea()[::6, ::6]  # 50 × 76 × 3
    frames = np.stack([cat[:40, :48], cat[5:45, 20:68]])
    tifffile.imwrite(folder / "movie.ome.tif", frames, ome=True, photometric="rgb", metadata={"axes": "TYXS"})
    import imageio.v3 as iio

    iio.imwrite(folder / "flat.png", cat[:32, :32])
    return folder


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_read_stack_takes_the_axes_of_imagej_and_ome_files(stacks, tmp_path):
    z = io.read_stack(stacks / "zstack.tif")
    assert (z.axes, z.shape, z.planes.shape, z.planes.dtype) == ("ZYX", (3, 48, 40), (3, 48, 40), np.uint16)
    movie = io.read_stack(stacks / "movie.ome.tif")
    assert (movie.axes, movie.planes.shape, movie.planes.dtype) == ("TYXS", (2, 40, 48, 3), np.uint8)
    np.testing.assert_array_equal(movie.planes, tifffile.imread(stacks / "movie.ome.tif"))
    assert io.read_stack(stacks / "flat.png") is None
    # Z×T is flattened in file order (T outer, Z inner as ImageJ stores them)
    hyper = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    tifffile.imwrite(tmp_path / "tz.tif", hyper, imagej=True, metadata={"axes": "TZYX"})
    tz = io.read_stack(tmp_path / "tz.tif")
    assert (tz.axes, len(tz)) == ("TZYX", 6)
    np.testing.assert_array_equal(tz.planes[4], hyper[1, 1])
    # not stacks: channels without Z or T keep read_image's rules; unnamed pages are refused by it as before
    tifffile.imwrite(tmp_path / "c3.tif", hyper[0, :, :, :], imagej=True, metadata={"axes": "CYX"})
    assert io.read_stack(tmp_path / "c3.tif") is None
    tifffile.imwrite(tmp_path / "pages.tif", hyper.reshape(6, 4, 5))
    assert io.read_stack(tmp_path / "pages.tif") is None
    with pytest.raises(ValueError, match=r"pages\.tif.*\(6, 4, 5\); it holds several planes or frames: save one "
                       r"2-D plane, or save the stack with ImageJ axes ZYX or TYX .* plane by plane"):
        io.read_image(tmp_path / "pages.tif")
    # ambiguous: z-planes and channels
    tifffile.imwrite(tmp_path / "zc.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match=r"zc\.tif: its axes ZCYX \(shape \(2, 3, 4, 5\)\) hold z-planes and "
                                         r"channels: napari-prm predicts a stack of gray or RGB planes"):
        io.read_stack(tmp_path / "zc.tif")
    assert io.images.plane_count(tmp_path / "zc.tif") == 1  # it fails as one image
    assert io.images.plane_count(stacks / "zstack.tif") == 3
    assert io.images.plane_count(tmp_path / "tz.tif") == 6
    # planes one pixel high: refused naming the file, as read_stack's docstring says (not left to predict)
    tifffile.imwrite(tmp_path / "thin.tif", hyper[0, :, :1], imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"thin\.tif: its planes are 1×5 pixels .*at least 2×2"):
        io.read_stack(tmp_path / "thin.tif")


def test_predict_runs_a_stack_plane_by_plane(stacks, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(stacks), "--out", str(out), "--model", str(checkpoint), "--device", "cpu",
                 "--save-prms", "npy", *CLI_SETTINGS]) == 0
    model = load_model(checkpoint, device="cpu")
    summary = {Path(row["image"]).name: row for row in rows(out / "summary.csv")}
    assert {name: (row["status"], row["planes"]) for name, row in summary.items()} == {
        "flat.png": ("written", "1"), "movie.ome.tif": ("written", "2"), "zstack.tif": ("written", "3")}
    total_instances = 0
    for name, stem in (("zstack.tif", "zstack"), ("movie.ome.tif", "movie")):
        planes = io.read_stack(stacks / name).planes
        alone = [predict(plane, model, **SETTINGS) for plane in planes]
        labels = io.read_label_image(out / f"{stem}_labels.tif")
        assert labels.shape == (len(planes), *planes.shape[1:3])
        assert not (out / f"{stem}_instances.json").exists()  # COCO holds 2-D labels only
        table = rows(out / f"{stem}_instances.csv")
        peaks = rows(out / f"{stem}_peaks.csv")
        offset = peak_offset = rows_expected = 0
        for plane, prediction in enumerate(alone):
            expected, expected_table = prediction.to_labels()
            np.testing.assert_array_equal(labels[plane], np.where(expected > 0, expected.astype(np.int64) + offset, 0))
            # one row per label of the plane (an instance others cover wholly has none, as in a 2-D CSV)
            mine = [row for row in table if row["plane"] == str(plane)]
            present = np.isin(expected_table["label"], expected)
            rows_expected += int(present.sum())
            assert [int(row["id"]) for row in mine] == [int(v) + offset for v in expected_table["label"][present]]
            assert [row["class"] for row in mine] == list(expected_table["class_name"][present])
            np.testing.assert_allclose([float(row["score"]) for row in mine], expected_table["score"][present],
                                       rtol=1e-6)
            plane_peaks = [row for row in peaks if row["plane"] == str(plane)]
            numbers = list(range(peak_offset, peak_offset + len(prediction.peaks)))
            assert [int(row["peak"]) for row in plane_peaks] == numbers
            np.testing.assert_allclose([[float(row["y"]), float(row["x"])] for row in plane_peaks],
                                       prediction.peaks.reshape(-1, 2))
            offset += int(expected.max(initial=0))
            peak_offset += len(prediction.peaks)
        instances = sum(len(p.instances) for p in alone)
        total_instances += instances
        assert len(table) == rows_expected and len(peaks) == peak_offset
        assert (summary[name]["instances"], summary[name]["peaks"]) == (str(instances), str(peak_offset))
        prms = np.load(out / f"{stem}_prms.npy")
        np.testing.assert_allclose(prms, np.concatenate([np.asarray(p.prms) for p in alone]), atol=1e-6)
        manifest = json.loads((out / f"{stem}.manifest.json").read_text(encoding="utf-8"))
        assert (manifest["info"]["planes"], manifest["info"]["axes"]) == (
            len(planes), "ZYX" if stem == "zstack" else "TYXS")
    assert total_instances > 0  # the comparison above compared instances, not only empty planes
    # the z-stack's pixel size (0.5 µm) and z-spacing (2.5 µm) are kept in its label stack, an ImageJ
    # z-stack as the image is (it was a plain TIFF of unnamed pages in pixels per cm, the spacing lost)
    size = io.tiff_pixel_size(out / "zstack_labels.tif")
    assert size == {"resolution": pytest.approx((2.0, 2.0)), "unit": tifffile.RESUNIT.NONE, "imagej_unit": "um",
                    "plane_axis": "Z", "spacing": 2.5}
    with tifffile.TiffFile(out / "zstack_labels.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == 2.5
    # the OME time-lapse records no pixel size: its label stack still names its time axis (it was QYX)
    with tifffile.TiffFile(out / "movie_labels.tif") as tif:
        assert tif.series[0].axes == "TYX"
    # a second run skips them, touching nothing
    state = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv"}
    assert main(["predict", str(stacks), "--out", str(out), "--model", str(checkpoint), "--device", "cpu",
                 "--save-prms", "npy", *CLI_SETTINGS]) == 0
    again = {Path(row["image"]).name: (row["status"], row["planes"]) for row in rows(out / "summary.csv")}
    assert again == {"flat.png": ("skipped", "1"), "movie.ome.tif": ("skipped", "2"),
                     "zstack.tif": ("skipped", "3")}
    assert state == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv"}


def test_the_label_stack_of_a_stack_without_a_unit_keeps_its_axis_names(checkpoint, tmp_path):
    """An ImageJ ZYX (TYX) stack whose ImageJ metadata names no unit, or no pixel size at all: its
    label stack was written with tifffile's unnamed axes, QYX, the Z (T) lost though the pixel size
    was kept. It names the image's axes now."""
    planes = (np.arange(3 * 24 * 20, dtype=np.uint16).reshape(3, 24, 20) % 97) * 30
    tifffile.imwrite(tmp_path / "z.tif", planes, imagej=True, resolution=(2.0, 4.0), metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "t.tif", planes, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "out"
    for name in ("z", "t"):
        assert main(["predict", str(tmp_path / f"{name}.tif"), "--out", str(out), "--model", str(checkpoint),
                     "--device", "cpu", *CLI_SETTINGS]) == 0
    with tifffile.TiffFile(out / "z_labels.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (3, 24, 20)
        assert tif.pages.first.get_resolution() == pytest.approx((2.0, 4.0))  # the pixel size, kept as before
    with tifffile.TiffFile(out / "t_labels.tif") as tif:
        assert tif.series[0].axes == "TYX"
    assert io.read_label_image(out / "z_labels.tif").shape == (3, 24, 20)


def test_the_plugin_reader_opens_a_stacks_outputs_with_features(stacks, checkpoint, tmp_path):
    from napari_prm._reader import napari_get_reader

    batch = predict_many([stacks / "zstack.tif"], checkpoint, tmp_path, device="cpu", **SETTINGS)
    assert batch.results[0].status == "written" and batch.results[0].planes == 3
    reader = napari_get_reader(str(tmp_path / "zstack_labels.tif"))
    assert reader is not None
    (labels, meta, kind), = reader(str(tmp_path / "zstack_labels.tif"))
    assert (kind, labels.shape) == ("labels", (3, 48, 40))
    present = np.unique(labels[labels > 0])
    assert list(meta["features"]["label"]) == list(present)  # one row per label
    assert meta["metadata"]["class_names"] == load_model(checkpoint, device="cpu").class_names


def test_an_interrupt_between_planes_leaves_no_outputs(stacks, checkpoint, tmp_path):
    def stop(image, done, total):
        if Path(image).name == "zstack.tif" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_many([stacks / "flat.png", stacks / "zstack.tif"], checkpoint, tmp_path, device="cpu",
                     plane_progress=stop, **SETTINGS)
    assert (tmp_path / "flat_labels.tif").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("zstack")) == []
    assert io.complete_prediction(tmp_path, "zstack") is None
    # the same run goes on with it, counting its planes
    counted = []
    batch = predict_many([stacks / "flat.png", stacks / "zstack.tif"], checkpoint, tmp_path, device="cpu",
                         plane_progress=lambda image, done, total: counted.append((Path(image).name, done, total)),
                         **SETTINGS)
    assert [(r.status, r.planes) for r in batch.results] == [("skipped", 1), ("written", 3)]
    assert counted == [("zstack.tif", 1, 3), ("zstack.tif", 2, 3), ("zstack.tif", 3, 3)]


def test_a_stack_refuses_one_images_proposal_file(stacks, checkpoint, tmp_path):
    proposals = tmp_path / "zstack.npz"
    np.savez(proposals, masks=np.zeros((1, 48, 40), bool))
    batch = predict_many([stacks / "zstack.tif"], checkpoint, tmp_path / "out", device="cpu", retries=0,
                         proposals=str(proposals), peak_threshold=0.0)
    result, = batch.results
    assert result.status == "failed"
    assert "it is a stack of 3 planes (axes ZYX), and the proposal file" in result.error


def test_workers_run_a_stack_as_this_process_does(stacks, checkpoint, tmp_path):
    here = predict_many([stacks / "movie.ome.tif"], checkpoint, tmp_path / "here", device="cpu", **SETTINGS)
    client = start_local_cluster(1, dashboard=False, processes=False)
    try:
        there = predict_many([stacks / "movie.ome.tif"], checkpoint, tmp_path / "there", client, device="cpu",
                             **SETTINGS)
    finally:
        client.close()
        client.cluster.close()
    assert [(r.status, r.planes, r.instances) for r in there.results] == [
        (r.status, r.planes, r.instances) for r in here.results]
    np.testing.assert_array_equal(io.read_label_image(tmp_path / "there" / "movie_labels.tif"),
                                  io.read_label_image(tmp_path / "here" / "movie_labels.tif"))
    # the same instances; a score may differ in its last digits (a worker thread's float sums)
    there_rows, here_rows = (rows(tmp_path / place / "movie_instances.csv") for place in ("there", "here"))
    assert [{**row, "score": None} for row in there_rows] == [{**row, "score": None} for row in here_rows]
    np.testing.assert_allclose([float(row["score"]) for row in there_rows],
                               [float(row["score"]) for row in here_rows], rtol=1e-6)


def test_lazy_result_stacks_hold_a_stacks_planes(stacks, checkpoint, tmp_path):
    """The Batch panel shows the outputs as lazy stacks, one plane per image: a TIFF stack's
    outputs add one plane per plane (its label stack was padded into one 2-D plane: an error)."""
    from napari_prm.batch import image_stack, label_planes, label_shapes, label_stack

    batch = predict_many([stacks / "flat.png", stacks / "zstack.tif"], checkpoint, tmp_path, device="cpu",
                         **SETTINGS)
    paths = batch.label_paths()
    assert label_planes(paths) == [1, 3]
    labels = label_stack(paths)
    assert labels.shape == (4, 48, 40)
    computed = np.asarray(labels)
    np.testing.assert_array_equal(computed[0, :32, :32], io.read_label_image(paths[0]))
    np.testing.assert_array_equal(computed[1:], io.read_label_image(paths[1]))
    images = np.asarray(image_stack([r.image for r in batch.with_outputs()], label_shapes(paths), label_planes(paths)))
    assert images.shape == (4, 48, 40, 3)
    planes = io.read_stack(stacks / "zstack.tif").planes
    np.testing.assert_array_equal(images[3], (io.as_rgb_float(planes[2]) * 255).round().astype(np.uint8))


def _spoil_page(path: Path, index: int) -> None:
    """Overwrite the compressed data of page ``index`` of the TIFF's first series with bytes
    that do not decompress: reading that page, or the whole stack, fails; other pages read."""
    with tifffile.TiffFile(path) as tiff:
        page = tiff.series[0].pages[index]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)


def test_showing_a_plane_of_the_lazy_result_stacks_reads_only_that_plane(stacks, checkpoint, tmp_path):
    """The panel's lazy stacks read the page of the plane shown, not the whole stack file: with
    the last plane's data spoilt in the image stack and in its label stack (both compressed),
    the first planes still show what was written, and only the spoilt plane fails, naming it."""
    from napari_prm.batch import image_stack, label_planes, label_shapes, label_stack

    planes = io.read_stack(stacks / "zstack.tif").planes
    image = tmp_path / "z.tif"
    tifffile.imwrite(image, planes, imagej=True, compression="zlib", metadata={"axes": "ZYX"})
    batch = predict_many([image], checkpoint, tmp_path / "out", device="cpu", **SETTINGS)
    paths = batch.label_paths()
    written = io.read_label_image(paths[0])
    assert written.shape == (3, 48, 40) and written.max() > 0
    _spoil_page(paths[0], 2)
    _spoil_page(image, 2)
    with pytest.raises(ValueError):  # the whole files cannot be read any more
        io.read_label_image(paths[0])
    with pytest.raises(ValueError):
        io.read_stack(image)

    labels = label_stack(paths)
    images = image_stack([image], label_shapes(paths), label_planes(paths))
    for plane in (0, 1):
        np.testing.assert_array_equal(np.asarray(labels[plane]), written[plane])
        np.testing.assert_array_equal(np.asarray(images[plane]),
                                      (io.as_rgb_float(planes[plane]) * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match=r"cannot read plane 2 of label image .*z_labels\.tif"):
        np.asarray(labels[2])
    with pytest.raises(ValueError, match=r"cannot read plane 2 of image .*z\.tif"):
        np.asarray(images[2])


def test_a_stack_without_peaks_is_complete_without_its_prm_tiff(stacks, checkpoint, tmp_path):
    """As for a 2-D image, a TIFF of no PRMs is left out, and the outputs still count as complete."""
    settings = {**SETTINGS, "class_threshold": 1e9}  # no class passes: no peaks in any plane
    first = predict_many([stacks / "zstack.tif"], checkpoint, tmp_path, device="cpu", prms_format="tiff", **settings)
    assert [(r.status, r.planes, r.peaks, r.instances) for r in first.results] == [("written", 3, 0, 0)]
    assert sorted(p.name for p in tmp_path.glob("zstack*")) == [
        "zstack.manifest.json", "zstack_instances.csv", "zstack_labels.tif", "zstack_peaks.csv"]
    assert io.read_label_image(tmp_path / "zstack_labels.tif").shape == (3, 48, 40)
    assert rows(tmp_path / "zstack_peaks.csv") == []
    again = predict_many([stacks / "zstack.tif"], checkpoint, tmp_path, device="cpu", prms_format="tiff", **settings)
    assert [(r.status, r.error) for r in again.results] == [("skipped", "")]


def test_a_resumed_run_says_a_stack_re_saved_since_is_not_the_one_its_outputs_hold(stacks, checkpoint, tmp_path,
                                                                                   capsys):
    """A stack re-saved with more planes (another size), or with other pixels of the same size
    (its content), is skipped with the reason, never silently taken for complete; the old outputs stay."""
    image = tmp_path / "z.tif"
    planes = io.read_stack(stacks / "zstack.tif").planes
    tifffile.imwrite(image, planes[:2], imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    assert [r.status for r in predict_many([image], checkpoint, out, **SETTINGS).results] == ["written"]
    again = predict_many([image], checkpoint, out, **SETTINGS).results
    assert [(r.status, r.error) for r in again] == [("skipped", "")]  # unchanged: complete

    tifffile.imwrite(image, planes, imagej=True, metadata={"axes": "ZYX"})  # 3 planes now
    (result,) = predict_many([image], checkpoint, out, **SETTINGS).results
    assert result.status == "skipped" and result.error.startswith("the image changed since its outputs were written")
    assert "bytes then" in result.error
    assert tifffile.imread(out / "z_labels.tif").shape == (2, 48, 40)  # left as they were

    assert main(["predict", str(image), "--model", str(checkpoint), "--out", str(out), *CLI_SETTINGS]) == 0
    assert ("1 skipped: the image changed since its outputs were written (z.tif); use --overwrite to replace "
            "them") in capsys.readouterr().err
    (written,) = predict_many([image], checkpoint, out, overwrite=True, **SETTINGS).results
    assert written.status == "written" and tifffile.imread(out / "z_labels.tif").shape == (3, 48, 40)

    tifffile.imwrite(image, planes[::-1], imagej=True, metadata={"axes": "ZYX"})  # same size, other pixels
    (result,) = predict_many([image], checkpoint, out, **SETTINGS).results
    assert result.status == "skipped" and "(its content differs)" in result.error


def test_predict_image_alone_says_an_image_changed_since_its_outputs_were_written(stacks, checkpoint, tmp_path):
    """`predict_image` called on its own (not through `predict_many`) tells a re-saved stack from
    the one its complete outputs hold, as `predict_many` does, and leaves those outputs."""
    from napari_prm.batch import IMAGE_CHANGED, predict_image

    image = tmp_path / "z.tif"
    planes = io.read_stack(stacks / "zstack.tif").planes
    tifffile.imwrite(image, planes[:2], imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    out.mkdir()
    model = load_model(checkpoint)
    assert predict_image(image, "z", out, model, settings=SETTINGS).status == "written"
    again = predict_image(image, "z", out, model, settings=SETTINGS)
    assert (again.status, again.error) == ("skipped", "")  # unchanged: complete

    tifffile.imwrite(image, planes, imagej=True, metadata={"axes": "ZYX"})  # 3 planes now
    result = predict_image(image, "z", out, model, settings=SETTINGS)
    assert result.status == "skipped" and result.error.startswith(IMAGE_CHANGED) and "bytes then" in result.error
    assert tifffile.imread(out / "z_labels.tif").shape == (2, 48, 40)  # left as they were
    written = predict_image(image, "z", out, model, settings=SETTINGS, overwrite=True)
    assert written.status == "written" and tifffile.imread(out / "z_labels.tif").shape == (3, 48, 40)


def test_plane_tally_counts_a_stacks_planes_from_its_header(stacks):
    """The tally behind ``predict``'s and the folder panel's progress bars: 3 + 2 + 1 planes."""
    from napari_prm.batch import PlaneTally

    images = [stacks / "zstack.tif", stacks / "movie.ome.tif", stacks / "flat.png"]
    tally = PlaneTally(images)
    assert tally.planes == {str(images[0]): 3, str(images[1]): 2, str(images[2]): 1} and tally.total == 6
    assert tally.plane_done(images[0], 2) == 2
    assert tally.plane_done(images[0], 1) == 2  # a repeated (retried) plane does not count back
    assert tally.image_done(images[2]) == 3  # a 2-D image, or a stack from a worker: all its planes
    assert tally.plane_done(images[0], 5) == 4  # never more than its header's planes
    assert tally.image_done(images[0]) == 4 and tally.image_done(images[1]) == 6 == tally.done


def test_the_plugins_stack_layers_are_the_label_stack_predict_writes(stacks, checkpoint):
    """The plugin's *all planes* run merges its planes' labels with `io.stack_labels`, the rule
    ``predict`` writes a stack by: the same label stack and instance table, each peak labelled
    with its instance's label; a run of one plane numbers its labels from 1."""
    from napari_prm._widgets.layers import merge_predictions

    model = load_model(checkpoint, device="cpu")
    alone = [predict(plane, model, **SETTINGS) for plane in io.read_stack(stacks / "zstack.tif").planes]
    assert sum(len(p.instances) for p in alone) > 1
    labels, table = io.stack_labels(alone)
    merged = merge_predictions([(0,), (1,), (2,)], alone, (3,))
    np.testing.assert_array_equal(merged.labels, labels)
    assert merged.labels.dtype == labels.dtype == np.uint16
    features = merged.instance_features
    for name, column in table.items():
        assert list(features[name]) == list(column), name
    peak_labels = merged.point_features["label"].to_numpy()
    np.testing.assert_array_equal(peak_labels[table["peak"]], table["label"])
    one = merge_predictions([(2,)], alone[2:], (3,))
    np.testing.assert_array_equal(one.labels[2], alone[2].to_labels()[0])
    assert not one.labels[:2].any()


def test_an_image_re_saved_while_it_is_predicted_is_not_recorded_as_its_outputs_image(stacks, checkpoint, tmp_path):
    """A stack re-saved while its planes are predicted (an acquisition still writing it): the
    manifest records the file as it was read, so the next run says it changed, not complete."""
    image = tmp_path / "z.tif"
    planes = io.read_stack(stacks / "zstack.tif").planes
    tifffile.imwrite(image, planes[:2], imagej=True, metadata={"axes": "ZYX"})

    def re_save(_image, done, _planes):
        if done == 1:
            tifffile.imwrite(image, planes, imagej=True, metadata={"axes": "ZYX"})  # 3 planes now

    out = tmp_path / "out"
    (written,) = predict_many([image], checkpoint, out, plane_progress=re_save, **SETTINGS).results
    assert written.status == "written" and tifffile.imread(out / "z_labels.tif").shape == (2, 48, 40)
    (again,) = predict_many([image], checkpoint, out, **SETTINGS).results
    assert again.status == "skipped" and again.error.startswith("the image changed since its outputs were written")


def test_plane_tally_knows_an_image_by_the_name_predict_many_gives_it(stacks, checkpoint, tmp_path, monkeypatch):
    """Images given as ``"./zstack.tif"``: `ImageResult.image` names them ``"zstack.tif"`` (a Path's
    string), and the tally counted by that name (a KeyError before)."""
    from napari_prm.batch import PlaneTally

    monkeypatch.chdir(stacks)
    images = ["./zstack.tif", "./flat.png"]
    tally = PlaneTally(images)
    batch = predict_many(images, checkpoint, tmp_path,
                         plane_progress=lambda image, done, _: tally.plane_done(image, done),
                         progress=lambda result, *_: tally.image_done(result.image), **SETTINGS)
    assert [r.image for r in batch.results] == ["zstack.tif", "flat.png"]
    assert tally.done == tally.total == 4


def test_a_stacks_labels_are_one_instance_each_when_one_is_painted_over(stacks, checkpoint):
    """A plane whose last instance is painted over by a higher-scoring one keeps its table row and
    label; the next plane's labels started at that same number (two rows, plane 0's and plane 1's,
    of one label, and the plugin's peaks of one took the other's label). Labels are now unique."""
    import dataclasses

    from napari_prm._widgets.layers import merge_predictions
    from napari_prm.retrieval import Instance

    model = load_model(checkpoint, device="cpu")
    alone = [predict(plane, model, **SETTINGS) for plane in io.read_stack(stacks / "zstack.tif").planes[:2]]
    assert all(p.instances for p in alone)
    first = alone[0].instances[0]
    hidden = Instance(first.class_index, -1.0, first.mask.copy(), first.prm, peak=first.peak)  # under `first`
    alone[0] = dataclasses.replace(alone[0], instances=[*alone[0].instances, hidden])
    labels, table = io.stack_labels(alone)
    assert len(set(table["label"])) == len(table["label"]) == sum(len(p.instances) for p in alone)
    assert labels[1].min(initial=0) == 0 and labels[1][labels[1] > 0].min() == len(alone[0].instances) + 1
    merged = merge_predictions([(0,), (1,)], alone, (2,))
    assert list(merged.instance_features["label"]) == list(table["label"])


def test_an_export_over_predicts_outputs_keeps_the_images_modification_time(stacks, checkpoint, tmp_path):
    """Corrections exported over ``predict``'s outputs keep its record of the image, its
    modification time too: without it a resumed run read (hashed) the whole image file again,
    each time, to find it unchanged."""
    from napari_prm.io.fileset import read_file_set

    image = stacks / "flat.png"
    (written,) = predict_many([image], checkpoint, tmp_path, **SETTINGS).results
    recorded = read_file_set(tmp_path, "flat").info
    labels = io.read_label_image(tmp_path / "flat_labels.tif")
    io.export_instances(labels, {"label": np.unique(labels[labels > 0])}, ["cat"], tmp_path, stem="flat",
                        formats=("tiff", "csv"), overwrite=True, image_file_name="flat.png")
    kept = read_file_set(tmp_path, "flat").info
    assert kept["written_by"] == "export_instances"
    assert kept["image_mtime_ns"] == recorded["image_mtime_ns"] == image.stat().st_mtime_ns
    (again,) = predict_many([image], checkpoint, tmp_path, **SETTINGS).results
    assert again.status == "skipped" and "changed" not in again.error


def test_an_imagej_rgb_stacks_label_stack_is_an_imagej_stack_with_its_spacing_or_interval(checkpoint, tmp_path):
    """An ImageJ stack of RGB planes (tifffile's axes ZYXS, TYXS: ImageJ's RGB z-stack or time
    series) gets its labels as an ImageJ ZYX or TYX stack with the unit, the pixel size and the
    z-spacing or frame interval, as a gray ImageJ stack does: they were unnamed pages (QYX) in
    pixels per centimetre, the spacing and interval lost."""
    from skimage import data

    folder = tmp_path / "images"
    folder.mkdir()
    cat = data.chelsea()[::6, ::6]  # 50 × 76 × 3
    planes = np.stack([cat[:40, :48], cat[5:45, 20:68], cat[10:50, 28:76]])
    tifffile.imwrite(folder / "rgb_z.tif", planes, imagej=True, photometric="rgb", resolution=(2.0, 4.0),
                     metadata={"axes": "ZYXS", "spacing": 3.0, "unit": "um"})
    tifffile.imwrite(folder / "rgb_t.tif", planes[:2], imagej=True, photometric="rgb", resolution=(2.0, 4.0),
                     metadata={"axes": "TYXS", "finterval": 2.5, "unit": "um"})
    for name, axes in (("rgb_z.tif", "ZYXS"), ("rgb_t.tif", "TYXS")):  # what tifffile reads them as
        with tifffile.TiffFile(folder / name) as tif:
            assert tif.series[0].axes == axes
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--model", str(checkpoint), "--device", "cpu",
                 *CLI_SETTINGS]) == 0
    for stem, axes, interval, planes_count in (("rgb_z", "ZYX", ("spacing", 3.0), 3),
                                               ("rgb_t", "TYX", ("finterval", 2.5), 2)):
        with tifffile.TiffFile(out / f"{stem}_labels.tif") as tif:
            assert (tif.series[0].axes, tif.series[0].shape) == (axes, (planes_count, 40, 48)), stem
            assert tif.imagej_metadata["unit"] == "um"
            assert tif.imagej_metadata[interval[0]] == pytest.approx(interval[1])
            assert tif.pages.first.get_resolution() == pytest.approx((2.0, 4.0))  # pixels per µm
        assert io.tiff_pixel_size(out / f"{stem}_labels.tif") == {
            "resolution": pytest.approx((2.0, 4.0)), "unit": tifffile.RESUNIT.NONE, "imagej_unit": "um",
            "plane_axis": axes[0], interval[0]: pytest.approx(interval[1])}


def test_a_stack_predicted_in_python_writes_the_pixel_size_predict_writes(stacks, checkpoint, tmp_path):
    """`read_stack` gives the stack's pixel size and plane spacing (``ImageStack.pixel_size``), so the
    Python route (predict each plane, `write_stack_prediction`) writes the label stack ``napari-prm
    predict`` writes: 0.5 µm pixels, 2.5 µm between planes (the stack carried none: the labels were in
    pixels unless the user read the file's pixel size by hand)."""
    stack = io.read_stack(stacks / "zstack.tif")
    assert stack.pixel_size == io.tiff_pixel_size(stacks / "zstack.tif")
    assert stack.pixel_size["spacing"] == 2.5 and stack.pixel_size["resolution"] == pytest.approx((2.0, 2.0))
    assert io.read_stack(stacks / "movie.ome.tif").pixel_size is None  # it records none
    model = load_model(checkpoint, device="cpu")
    predictions = [predict(plane, model, **SETTINGS) for plane in stack.planes]
    io.write_stack_prediction(predictions, tmp_path, "zstack", pixel_size=stack.pixel_size, axes=stack.label_axes)
    assert io.tiff_pixel_size(tmp_path / "zstack_labels.tif") == {
        "resolution": pytest.approx((2.0, 2.0)), "unit": tifffile.RESUNIT.NONE, "imagej_unit": "um",
        "plane_axis": "Z", "spacing": 2.5}
