"""``evaluate``/``refine --masks`` on the tree that ``predict --recursive`` writes.

A plate of two wells holding an image of the same file name each (``A1/scene.png``,
``B2/scene.png``): ``predict --recursive`` writes ``results/A1/scene_labels.tif``, ...,
the user corrects those label images in place, and the corrected tree is the ground truth
(``evaluate``) or the supervision (``refine``). Only the folder's top level was read: "no
label images (<stem>_labels.tif) in results".
"""

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import shapes_scene
from napari_prm import io
from napari_prm.cli import main
from napari_prm.model import build_model, load_checkpoint, save_model
from napari_prm.refine import load_corrections, match_corrections

CLASSES = ["cat", "dog"]
TABLE = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(CLASSES)}
WELLS = {"A1": 0, "B2": 1}  # well -> the shapes scene of its scene.png


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(build_model("tiny", CLASSES, pretrained=False, input_size=(96, 96)),
                      tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def plate(tmp_path_factory, checkpoint):
    """The plate with its labels CSV, and ``predict --recursive``'s results with each label
    image and CSV replaced by the scene's true instances (the user's corrections)."""
    root = tmp_path_factory.mktemp("plate")
    images = root / "plate"
    for well, number in WELLS.items():
        (images / well).mkdir(parents=True)
        iio.imwrite(images / well / "scene.png", shapes_scene(number)[0])
    dataset = images / "labels.csv"
    dataset.write_text("image,labels\n" + "".join(f"{well}/scene.png,cat;dog\n" for well in WELLS))
    results = root / "results"
    assert main(["predict", str(images), "--recursive", "--out", str(results), "--model", str(checkpoint),
                 "--device", "cpu", "--proposals", "prm", "--peak-threshold", "0"]) == 0
    for well, number in WELLS.items():
        labels = shapes_scene(number)[1]
        assert (results / well / "scene.manifest.json").is_file()
        io.write_label_image(results / well / "scene_labels.tif", labels)
        io.write_instances_csv(results / well / "scene_instances.csv", labels, TABLE)
    return dataset, results


def _copy(results, to, *, manifests=True):
    shutil.copytree(results, to, ignore=None if manifests else shutil.ignore_patterns("*.manifest.json"))
    return to


@pytest.mark.parametrize("manifests", [True, False], ids=["by-manifest", "by-relative-path"])
def test_a_predict_recursive_tree_pairs_each_export_with_its_wells_image(plate, tmp_path, manifests):
    dataset, results = plate
    tree = _copy(results, tmp_path / "results", manifests=manifests)
    images = [dataset.parent / well / "scene.png" for well in WELLS]
    # B2 listed first: the pairing goes by folder, not by order or by the shared file name
    matched, unmatched = match_corrections(tree, CLASSES, images[::-1])
    assert unmatched == [] and list(matched) == [0, 1]
    assert [matched[i].image_path for i in (0, 1)] == images[::-1]
    for index, number in ((0, 1), (1, 0)):
        np.testing.assert_array_equal(matched[index].labels, shapes_scene(number)[1])
        np.testing.assert_array_equal(matched[index].image, shapes_scene(number)[0])
        assert matched[index].label_classes == {1: 0, 2: 1}


def test_a_renamed_well_folder_is_still_paired_by_its_manifest(plate, tmp_path):
    dataset, results = plate
    tree = _copy(results, tmp_path / "results")
    (tree / "A1").rename(tree / "first well")
    images = [dataset.parent / well / "scene.png" for well in WELLS]
    matched, unmatched = match_corrections(tree, CLASSES, images)
    assert unmatched == [] and matched[0].image_path == images[0]
    np.testing.assert_array_equal(matched[0].labels, shapes_scene(0)[1])
    # without its manifest, "first well/scene" is no image of the dataset: named by its path, left out
    (tree / "first well" / "scene.manifest.json").unlink()
    matched, unmatched = match_corrections(tree, CLASSES, images)
    assert list(matched) == [1] and unmatched == ["first well/scene_labels.tif"]


def test_without_a_dataset_the_images_are_found_where_the_manifests_say(plate):
    """The Refine widget's *corrected masks* folder: no dataset to match, the images are not
    beside the exports; their manifests say where they are."""
    dataset, results = plate
    corrections = load_corrections(results, CLASSES)
    assert [c.image_path for c in corrections] == [dataset.parent / well / "scene.png" for well in WELLS]
    for correction, number in zip(corrections, WELLS.values()):
        np.testing.assert_array_equal(correction.image, shapes_scene(number)[0])


def test_evaluate_masks_takes_the_tree(plate, checkpoint, tmp_path, capsys):
    dataset, results = plate
    common = ["evaluate", str(dataset), "--model", str(checkpoint), "--device", "cpu",
              "--class-threshold=-1e9", "--peak-threshold=-1e9"]
    assert main([*common, "--masks", str(results)]) == 0
    captured = capsys.readouterr()
    assert "2 of the dataset's 2 images have corrected instances (4 instances)" in captured.err
    assert "warning" not in captured.err and "Evaluated on 2 images" in captured.out
    # an export in a folder of no image of the dataset: named by its path in the tree, left out
    tree = _copy(results, tmp_path / "extra", manifests=False)
    shutil.copytree(tree / "B2", tree / "C3")
    assert main([*common, "--masks", str(tree)]) == 0
    assert "warning: --masks: 1 export matches no image of the dataset, left out: C3/scene_labels.tif" \
        in capsys.readouterr().err


def test_a_tree_matching_nothing_is_refused_naming_the_folder(plate, checkpoint, tmp_path, capsys):
    dataset, results = plate
    tree = tmp_path / "elsewhere"
    shutil.copytree(results / "A1", tree / "Z9", ignore=shutil.ignore_patterns("*.manifest.json"))
    common = ["evaluate", str(dataset), "--model", str(checkpoint), "--device", "cpu"]
    assert main([*common, "--masks", str(tree)]) == 2
    error = capsys.readouterr().err
    assert f"error: --masks: no export in {tree} matches an image of the dataset" in error
    assert "A1/cat_labels.tif is an image A1/cat.*): Z9/scene_labels.tif" in error
    empty = tmp_path / "empty"
    (empty / "A1").mkdir(parents=True)
    assert main([*common, "--masks", str(empty)]) == 2
    assert f"--masks: no label images (<stem>_labels.tif) in {empty} or its sub-folders" in capsys.readouterr().err


def test_refine_learns_from_the_tree(plate, checkpoint, tmp_path, capsys):
    dataset, results = plate
    out = tmp_path / "refined.pt"
    status = main(["refine", str(dataset), "--model", str(checkpoint), "--out", str(out), "--masks", str(results),
                   "--no-self-training", "--epochs", "1", "--cache", "none", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "2 corrected image(s), 4 instances" in err
    model, _ = load_checkpoint(out)
    assert model.head.info["trained_on"]["corrected"] == 2


def test_an_export_over_predicts_outputs_keeps_the_image_their_manifest_recorded(plate, tmp_path):
    """Correcting in napari and exporting over ``predict``'s outputs (the Export widget, same stem)
    rewrote the manifest with the image's file name only: the Refine widget's folder no longer
    found the image ("no image 'A1/scene' ... in results/A1"), a renamed well no longer paired."""
    dataset, results = plate
    tree = _copy(results, tmp_path / "results")
    corrected = shapes_scene(0)[1]
    io.export_instances(corrected, TABLE, CLASSES, tree / "A1", stem="scene", overwrite=True,
                        image_file_name="scene.png")
    images = [dataset.parent / well / "scene.png" for well in WELLS]
    assert [c.image_path for c in load_corrections(tree, CLASSES)] == images
    (tree / "A1").rename(tree / "first well")
    matched, unmatched = match_corrections(tree, CLASSES, images)
    assert unmatched == [] and matched[0].image_path == images[0]
    np.testing.assert_array_equal(matched[0].labels, corrected)
    # an export of another image under that stem does not inherit the record
    io.export_instances(corrected, TABLE, CLASSES, tree / "first well", stem="scene", overwrite=True,
                        image_file_name="other.png")
    matched, unmatched = match_corrections(tree, CLASSES, images)
    assert list(matched) == [1] and unmatched == ["first well/scene_labels.tif"]


def test_a_backup_sub_folder_does_not_beat_the_corrected_export(plate, checkpoint, tmp_path, capsys):
    """``A1/A_old/`` (a copy of the well's outputs kept before correcting again, its manifest naming
    the same image) came before ``A1/scene_labels.tif`` in path order: ``match_corrections`` kept the
    old labels and ``load_corrections`` (Learn's folder) trained on both. The most recently written
    export of an image is used, by both, and the others are named."""
    import os

    dataset, results = plate
    tree = _copy(results, tmp_path / "results")
    backup = tree / "A1" / "A_old"
    backup.mkdir()
    for name in ("scene.manifest.json", "scene_instances.csv"):
        shutil.copy2(tree / "A1" / name, backup / name)
    old = np.where(shapes_scene(0)[1] == 1, 1, 0).astype(np.uint16)  # before the dog was painted
    io.write_label_image(backup / "scene_labels.tif", old)
    corrected = (tree / "A1" / "scene_labels.tif").stat().st_mtime
    os.utime(backup / "scene_labels.tif", (corrected - 3600, corrected - 3600))
    images = [dataset.parent / well / "scene.png" for well in WELLS]
    left_out = "A1/A_old/scene_labels.tif (written before A1/scene_labels.tif, the export kept)"

    matched, unmatched = match_corrections(tree, CLASSES, images)
    np.testing.assert_array_equal(matched[0].labels, shapes_scene(0)[1])
    assert unmatched == [left_out]  # without a list for them: named with the unmatched
    superseded = []
    matched, unmatched = match_corrections(tree, CLASSES, images, superseded=superseded)
    assert unmatched == [] and superseded == [left_out] and list(matched) == [0, 1]
    with pytest.warns(UserWarning, match=r"most recently written of each is used, left out: A1/A_old/scene_labels"):
        corrections = load_corrections(tree, CLASSES)
    assert [c.image_path for c in corrections] == images
    np.testing.assert_array_equal(corrections[0].labels, shapes_scene(0)[1])

    assert main(["evaluate", str(dataset), "--model", str(checkpoint), "--device", "cpu",
                 "--class-threshold=-1e9", "--peak-threshold=-1e9", "--masks", str(tree)]) == 0
    err = capsys.readouterr().err
    assert ("several exports of one image: the most recently written of each is used, "
            f"1 export left out: {left_out}") in err
    assert "4 instances" in err  # the corrected well's two, not the backup's one

    # the rule is the time, not the folder: a backup written later is the export used
    os.utime(backup / "scene_labels.tif", (corrected + 3600, corrected + 3600))
    matched, unmatched = match_corrections(tree, CLASSES, images)
    np.testing.assert_array_equal(matched[0].labels, old)
    assert unmatched == ["A1/scene_labels.tif (written before A1/A_old/scene_labels.tif, the export kept)"]


def test_of_one_export_in_two_formats_the_file_written_last_is_read(tmp_path):
    """``scene_labels.png`` and ``scene_labels.tif`` exported together, then the corrected labels
    exported again as TIFF only: the export counted as the newest, but its first file by name (the
    old PNG) was read, losing the corrections. The file written last is read, and the older named."""
    import os

    image = tmp_path / "scene.png"
    iio.imwrite(image, shapes_scene(0)[0])
    before = np.where(shapes_scene(0)[1] == 1, 1, 0).astype(np.uint16)
    corrected = shapes_scene(0)[1]
    io.export_instances(before, TABLE, CLASSES, tmp_path / "out", stem="scene", formats=("tiff", "png", "csv"),
                        image_file_name="scene.png")
    io.export_instances(corrected, TABLE, CLASSES, tmp_path / "out", stem="scene", formats=("tiff", "csv"),
                        overwrite=True, image_file_name="scene.png")
    png, tif = tmp_path / "out" / "scene_labels.png", tmp_path / "out" / "scene_labels.tif"
    later = tif.stat().st_mtime
    os.utime(png, (later - 3600, later - 3600))
    superseded = []
    matched, unmatched = match_corrections(tmp_path / "out", CLASSES, [image], superseded=superseded)
    np.testing.assert_array_equal(matched[0].labels, corrected)
    assert unmatched == [] and superseded == ["scene_labels.png (the same export as scene_labels.tif, in another "
                                              "format)"]
    (correction,) = load_corrections(tmp_path / "out", CLASSES, image_paths=[image], superseded=[])
    np.testing.assert_array_equal(correction.labels, corrected)


def test_the_colours_of_a_2d_images_labels_are_not_called_a_stack(tmp_path):
    """An RGB rendering of a 2-D image's labels (``scene_labels.png`` of shape (H, W, 3)) was
    refused as "a label stack of H planes of W×3, the export of the z-stack or time-lapse
    scene.png"; it is refused as colours, not labels, naming the file."""
    image = tmp_path / "scene.png"
    iio.imwrite(image, shapes_scene(0)[0])
    labels = shapes_scene(0)[1]
    colours = np.stack([np.where(labels == 1, 255, 0), np.where(labels == 2, 255, 0), np.zeros_like(labels)],
                       axis=-1).astype(np.uint8)
    iio.imwrite(tmp_path / "scene_labels.png", colours)
    with pytest.raises(ValueError, match=r"scene_labels\.png: 3 channels per pixel \(shape \(\d+, \d+, 3\)\), "
                                         r"the colours of a label image") as raised:
        load_corrections(tmp_path, CLASSES, image_paths=[image])
    assert "stack" not in str(raised.value)


def test_corrections_take_one_image_path_as_one_image(tmp_path, checkpoint):
    """load_corrections(..., image_paths="scene.png") and match_corrections(folder, classes, "scene.png")
    read a str as the images of its characters (the export matched none), and uncorrected_predictions
    of one label image's str found nothing (a Path was not iterable); one path is one image."""
    from napari_prm.refine.corrections import uncorrected_predictions

    images = tmp_path / "images"
    images.mkdir()
    image = images / "scene.png"
    iio.imwrite(image, shapes_scene(0)[0])
    assert main(["predict", str(image), "--out", str(tmp_path / "out"), "--model", str(checkpoint),
                 "--device", "cpu", "--proposals", "prm", "--peak-threshold", "0"]) == 0
    predicted = tmp_path / "out" / "scene_labels.tif"
    assert uncorrected_predictions(str(predicted)) == [predicted] == uncorrected_predictions(predicted)
    labels = shapes_scene(0)[1]
    io.export_instances(labels, TABLE, CLASSES, tmp_path / "corrected", stem="scene", formats=("tiff", "csv"),
                        image_file_name="scene.png")
    for one in (str(image), image):
        unmatched = []
        (correction,) = load_corrections(tmp_path / "corrected", CLASSES, image_paths=one, unmatched=unmatched)
        assert unmatched == [] and correction.image_path == image
        np.testing.assert_array_equal(correction.labels, labels)
        matched, unmatched = match_corrections(tmp_path / "corrected", CLASSES, one)
        assert list(matched) == [0] and unmatched == []
