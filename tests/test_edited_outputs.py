"""Outputs corrected by hand survive ``predict --overwrite``: kept beside the new ones, and said.

Real runs of the tiny random checkpoint on scikit-image's coins (at half size); the label
image is corrected as a user does outside napari-prm (a label TIFF saved over it).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_prm import io
from napari_prm.batch import collect_images, predict_many
from napari_prm.cli import main

SETTINGS = ["--device", "cpu", "--proposals", "prm", "--peak-threshold", "0"]


@pytest.fixture
def coins(tmp_path) -> Path:
    from skimage import data

    path = tmp_path / "images" / "x.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, data.coins()[::2, ::2])
    return path


def corrected(shape, label: int) -> np.ndarray:
    """A label image as a user paints it: one rectangle of ``label``."""
    labels = np.zeros(shape, np.uint16)
    labels[5:25, 10:40] = label
    return labels


def manifest_sha(out: Path, name: str) -> str:
    files = json.loads((out / "x.manifest.json").read_text(encoding="utf-8"))["files"]
    return next(entry["sha256"] for entry in files.values() if entry["name"] == name)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def warning_lines(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if "warning:" in line]


def test_predict_overwrite_keeps_each_hand_correction_beside_the_new_output(tmp_path, coins, tiny_checkpoint, capsys):
    out = tmp_path / "o"
    command = ["predict", str(coins), "--out", str(out), "--model", str(tiny_checkpoint), *SETTINGS]
    assert main(command) == 0
    labels_path = out / "x_labels.tif"
    predicted = tifffile.imread(labels_path)
    first = corrected(predicted.shape, 7)
    tifffile.imwrite(labels_path, first)  # corrected in place, as docs/usage.md invites
    capsys.readouterr()

    assert main([*command, "--overwrite"]) == 0
    printed = capsys.readouterr().err
    kept = out / "x_labels.edited-1.tif"
    np.testing.assert_array_equal(tifffile.imread(kept), first)  # the correction survives
    np.testing.assert_array_equal(tifffile.imread(labels_path), predicted)  # the output is fresh
    assert sha(labels_path) == manifest_sha(out, "x_labels.tif")
    # one warning line names the corrected file and where it is kept
    [line] = warning_lines(printed)
    assert str(labels_path) in line and str(kept) in line, printed
    # the outputs nobody edited (CSV, COCO JSON, peaks) were replaced without a copy
    assert sorted(p.name for p in out.glob("*.edited-*")) == ["x_labels.edited-1.tif"]

    # a second correction, and run again: the first kept copy stays as it was
    second = corrected(predicted.shape, 9)
    tifffile.imwrite(labels_path, second)
    assert main([*command, "--overwrite"]) == 0
    printed = capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(kept), first)
    np.testing.assert_array_equal(tifffile.imread(out / "x_labels.edited-2.tif"), second)
    np.testing.assert_array_equal(tifffile.imread(labels_path), predicted)
    [line] = warning_lines(printed)
    assert str(out / "x_labels.edited-2.tif") in line and str(labels_path) in line

    # nothing edited: replaced as before, no copy, no warning
    assert main([*command, "--overwrite"]) == 0
    assert not warning_lines(capsys.readouterr().err)
    assert sorted(p.name for p in out.glob("*.edited-*")) == ["x_labels.edited-1.tif", "x_labels.edited-2.tif"]


def test_predict_many_overwrite_keeps_an_edited_csv_and_says_so_in_the_result(tmp_path, coins, tiny_checkpoint):
    """The Python API (and the plugin's Run on folder, which calls it): outputs written beside the
    images, a corrected CSV kept under a name that the next run takes neither for an output nor
    for an image."""
    folder = coins.parent
    first = predict_many([coins], str(tiny_checkpoint), folder, device="cpu", proposals="prm", peak_threshold=0.0)
    assert first.results[0].status == "written"
    assert not [note for note in first.results[0].notes if note.startswith("warning: ")]
    csv_path = folder / "x_instances.csv"
    fresh = csv_path.read_text(encoding="utf-8")
    edited = fresh.replace("unknown", "cat") + "99,cat,0,120,5,10,25,40,,-1\n"
    csv_path.write_text(edited, encoding="utf-8")

    again = predict_many([coins], str(tiny_checkpoint), folder, overwrite=True, device="cpu", proposals="prm",
                         peak_threshold=0.0)
    kept = folder / "x_instances.edited-1.csv"
    assert kept.read_text(encoding="utf-8") == edited
    assert csv_path.read_text(encoding="utf-8") == fresh
    [note] = [note for note in again.results[0].notes if note.startswith("warning: ")]
    assert str(csv_path) in note and str(kept) in note
    assert sorted(p.name for p in folder.glob("*.edited-*")) == ["x_instances.edited-1.csv"]
    # the folder's images are still just the image: the kept copy is no input of the next run
    assert collect_images([folder]) == ([coins], [])


def test_write_prediction_warns_of_a_kept_copy_when_given_no_list(tmp_path, coins, tiny_checkpoint):
    from napari_prm import load_model, predict

    model = load_model(tiny_checkpoint, device="cpu")
    prediction = predict(tifffile.imread(coins), model, proposals="prm", peak_threshold=0.0)
    io.write_prediction(prediction, tmp_path, "x")
    labels_path = tmp_path / "x_labels.tif"
    tifffile.imwrite(labels_path, corrected(prediction.image_shape, 3))
    with pytest.warns(UserWarning, match="x_labels.edited-1.tif") as caught:
        io.write_prediction(prediction, tmp_path, "x", overwrite=True)
    message = str(caught[0].message)
    assert message.startswith(f"{labels_path} was changed after napari-prm wrote it"), message
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "x_labels.edited-1.tif"),
                                  corrected(prediction.image_shape, 3))


def test_predict_overwrite_keeps_corrections_exported_over_its_outputs(tmp_path, coins, tiny_checkpoint, capsys):
    """Corrected instances exported over predict's outputs (the plugin's Export into the output folder,
    with the image's stem, calls `export_instances` so) match the manifest that export wrote: a later
    ``predict --overwrite`` replaced them without a copy. It keeps the files that export wrote, and
    says they were exported; the files only predict wrote (peaks CSV, COCO JSON here) are replaced."""
    out = tmp_path / "o"
    command = ["predict", str(coins), "--out", str(out), "--model", str(tiny_checkpoint), *SETTINGS]
    assert main(command) == 0
    predicted = tifffile.imread(out / "x_labels.tif")
    fixed = corrected(predicted.shape, 1)
    table = {"label": np.array([1]), "class": np.array([0]), "score": np.array([1.0])}
    io.export_instances(fixed, table, ["coin"], out, formats=["tiff", "csv"], stem="x", overwrite=True,
                        image_file_name=coins.name)
    exported_csv = (out / "x_instances.csv").read_text(encoding="utf-8")
    manifest = json.loads((out / "x.manifest.json").read_text(encoding="utf-8"))
    assert manifest["info"]["exported"] == ["x_instances.csv", "x_labels.tif"]
    capsys.readouterr()

    assert main([*command, "--overwrite"]) == 0
    printed = capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(out / "x_labels.edited-1.tif"), fixed)
    assert (out / "x_instances.edited-1.csv").read_text(encoding="utf-8") == exported_csv
    np.testing.assert_array_equal(tifffile.imread(out / "x_labels.tif"), predicted)  # the new output
    assert sorted(p.name for p in out.glob("*.edited-*")) == ["x_instances.edited-1.csv", "x_labels.edited-1.tif"]
    lines = warning_lines(printed)
    assert len(lines) == 2 and all("holds instances exported over napari-prm's output" in line for line in lines)
    assert "exported" not in json.loads((out / "x.manifest.json").read_text(encoding="utf-8"))["info"]
    # run again: predict's own outputs now, nothing more is kept
    assert main([*command, "--overwrite"]) == 0
    assert not warning_lines(capsys.readouterr().err)
    assert len(list(out.glob("*.edited-*"))) == 2
