"""``napari-prm evaluate DATASET --masks``: ground truth from the corrected exports of some images."""

import json

import numpy as np
import pytest
import torch

from conftest import shapes_scene
from napari_prm import io
from napari_prm.cli import main
from napari_prm.model import build_model, save_model

CLASSES = ["cat", "dog"]
TABLE = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(CLASSES)}
#: lets the random tiny model's peaks through, so that it predicts instances to match
LOW = ["--class-threshold=-1e9", "--peak-threshold=-1e9"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three shapes scenes with a CSV of their image-level labels; two of them exported as
    the Export widget writes corrections (``export_instances`` into ``labelled/``), the same
    two as one merged COCO JSON, and an export of an image that is not in the dataset."""
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("labelled")
    images, exports = root / "images", root / "labelled"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": []}
    for number in range(3):
        image, labels, _, _ = shapes_scene(number)
        iio.imwrite(images / f"scene{number}.png", image)
        if number == 2:
            continue
        io.export_instances(labels, TABLE, CLASSES, exports, stem=f"scene{number}",
                            image_file_name=f"scene{number}.png")
        one = io.labels_to_coco(labels, TABLE, CLASSES, image_id=number + 1, file_name=f"scene{number}.png")
        coco["images"] += one["images"]
        coco["annotations"] += [a | {"id": 10 * number + a["id"]} for a in one["annotations"]]
        coco["categories"] = one["categories"]
    (images / "labels.csv").write_text("image,labels\n" + "".join(f"scene{n}.png,cat;dog\n" for n in range(3)))
    io.write_coco_json(images / "merged.json", coco)
    stray = root / "stray"
    stray.mkdir()
    io.export_instances(shapes_scene(7)[1], TABLE, CLASSES, stray, stem="elsewhere")
    return images / "labels.csv", exports, images / "merged.json", stray


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny", CLASSES, pretrained=False, input_size=(96, 96))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


def _metrics(path):
    results = json.loads(path.read_text())
    return {k: v for k, v in results.items() if k not in ("settings", "seconds", "seconds_per_image")}


def test_evaluate_on_corrected_exports_equals_evaluating_them_merged(labelled, checkpoint, tmp_path, capsys):
    dataset, exports, merged, _ = labelled
    common = ["--model", str(checkpoint), "--device", "cpu", *LOW]
    assert main(["evaluate", str(merged), *common, "--json", str(tmp_path / "merged.json")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(dataset), *common, "--masks", str(exports),
                 "--json", str(tmp_path / "folder.json")]) == 0
    captured = capsys.readouterr()
    assert "2 of the dataset's 3 images have corrected instances (4 instances)" in captured.err
    assert "warning" not in captured.err
    assert "Evaluated on 2 images" in captured.out and f"ground truth: {exports}" in captured.out
    expected = _metrics(tmp_path / "merged.json")
    assert expected["num_images"] == 2 and expected["num_instances"] == 4
    assert expected["num_predicted_instances"] > 0 and expected["mAP_r"] is not None
    assert _metrics(tmp_path / "folder.json") == expected
    assert json.loads((tmp_path / "folder.json").read_text())["settings"]["ground_truth"] == str(exports)
    # the merged COCO JSON as --masks of the CSV dataset: the same again
    assert main(["evaluate", str(dataset), *common, "--masks", str(merged),
                 "--json", str(tmp_path / "coco.json")]) == 0
    assert _metrics(tmp_path / "coco.json") == expected


def test_evaluate_masks_name_exports_of_no_dataset_image(labelled, checkpoint, tmp_path, capsys):
    dataset, exports, _, stray = labelled
    common = ["evaluate", str(dataset), "--model", str(checkpoint), "--device", "cpu", *LOW]
    assert main([*common, "--masks", str(stray)]) == 2
    error = capsys.readouterr().err
    assert "error: --masks: no export in" in error and str(stray) in error
    assert "elsewhere_labels.tif" in error
    # an export of no dataset image beside matching ones: named in a warning, the rest evaluated
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in [*exports.iterdir(), *stray.iterdir()]:
        (mixed / path.name).write_bytes(path.read_bytes())
    assert main([*common, "--masks", str(mixed), "--max-images", "1"]) == 0
    captured = capsys.readouterr()
    assert "warning: --masks: 1 export matches no image of the dataset, left out: elsewhere_labels.tif" \
        in captured.err
    assert "Evaluated on 1 image" in captured.out


def test_evaluate_masks_warns_of_instances_of_a_class_the_model_lacks(labelled, checkpoint, tmp_path, capsys):
    """A class mistyped in a corrected instance CSV ("dgo") made its instance leave the ground truth
    without a word, as an unknown one; the command names the class, the CSV and the model's classes.
    The figures stay those of the instance marked unknown."""
    from napari_prm.refine import load_corrections

    dataset, exports, _, _ = labelled
    runs = {}
    for name, written in (("typo", "dgo"), ("unknown", "unknown")):
        folder = tmp_path / name
        folder.mkdir()
        for path in exports.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        table = folder / "scene0_instances.csv"
        lines = table.read_text(encoding="utf-8").splitlines()
        assert sum(",dog," in line for line in lines) == 1
        table.write_text("\n".join(line.replace(",dog,", f",{written},") for line in lines) + "\n", encoding="utf-8")
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", str(dataset), "--model", str(checkpoint), "--device", "cpu", *LOW,
                     "--masks", str(folder), "--json", str(out)]) == 0
        runs[name] = (_metrics(out), capsys.readouterr().err)
    warning = (f"warning: --masks: corrections {tmp_path / 'typo'}: 1 instance of classes the model does not "
               "have, left out of the ground truth as unknown ones are: 'dgo' (1 instance: scene0_instances.csv); "
               "the model's classes are 'cat', 'dog' (a class name mistyped in an instance CSV?)")
    assert warning in runs["typo"][1].splitlines()
    assert "does not have" not in runs["unknown"][1]
    assert runs["typo"][0] == runs["unknown"][0]
    # in Python, without a list to collect it, a UserWarning says it
    images = sorted(dataset.parent.glob("scene*.png"))
    with pytest.warns(UserWarning, match=r"'dgo' \(1 instance: scene0_instances.csv\)"):
        load_corrections(tmp_path / "typo", CLASSES, image_paths=images)


def test_evaluate_masks_reports_a_missing_folder(labelled, checkpoint, tmp_path, capsys):
    dataset = labelled[0]
    assert main(["evaluate", str(dataset), "--model", str(checkpoint), "--masks", str(tmp_path / "none")]) == 2
    assert f"--masks: corrections {tmp_path / 'none'}" in capsys.readouterr().err


def test_evaluate_and_refine_masks_refuse_a_stacks_export_naming_it(labelled, checkpoint, tmp_path, capsys):
    """A z-stack's export (a (3, H, W) label TIFF and its CSV, as Export and predict write a stack) beside
    a 2-D image's: the dataset reads its images as 2-D images, so both commands refuse the stack's export
    by name, saying what they read."""
    import tifffile

    dataset, exports, _, _ = labelled
    images = tmp_path / "images"
    images.mkdir()
    for n in range(3):
        (images / f"scene{n}.png").write_bytes((dataset.parent / f"scene{n}.png").read_bytes())
    planes = np.stack([shapes_scene(n)[0].mean(axis=-1).astype(np.uint8) for n in (3, 4, 5)])
    tifffile.imwrite(images / "zstack.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    stack_dataset = images / "labels.csv"
    stack_dataset.write_text(dataset.read_text() + "zstack.tif,cat\n")
    folder = tmp_path / "exports"
    folder.mkdir()
    for path in exports.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    label_stack = np.stack([shapes_scene(n)[1] for n in (3, 4, 5)])
    stack_table = {"label": np.array([1, 2]), "class_name": np.array(CLASSES)}
    io.export_instances(label_stack, stack_table, CLASSES, folder, formats=("tiff", "csv"), stem="zstack",
                        image_file_name="zstack.tif")
    common = ["--model", str(checkpoint), "--device", "cpu", "--masks", str(folder)]
    shape = label_stack.shape
    for command in (["evaluate", str(stack_dataset), *common],
                    ["refine", str(stack_dataset), *common, "--out", str(tmp_path / "refined.pt"), "--epochs", "1"]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert f"error: --masks: {folder / 'zstack_labels.tif'}: a label stack of 3 planes of " \
               f"{shape[1]}×{shape[2]}" in error, error
        assert f"the export of the z-stack or time-lapse {images / 'zstack.tif'}" in error
        assert "corrections are 2-D label images of 2-D images" in error
        assert "stacks are not read plane by plane" in error
    assert not (tmp_path / "refined.pt").exists()


def test_evaluate_in_a_log_says_how_far_it_is(labelled, checkpoint, tmp_path, capsys, monkeypatch):
    """With stderr in a log file (no progress bar), evaluate said nothing until its end."""
    from napari_prm import cli

    dataset, _, merged, _ = labelled
    monkeypatch.setattr(cli, "LOG_PROGRESS_EVERY", 0.0)  # a line after every image but the last
    assert main(["evaluate", str(merged), "--model", str(checkpoint), "--device", "cpu", *LOW]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line for line in err.splitlines() if line.startswith("evaluate: ")] == ["evaluate: 1 of 2 images done"]


def test_evaluate_masks_warns_of_predicts_outputs_as_written(labelled, checkpoint, tmp_path, capsys):
    """``--masks`` of a predict output folder scored the model against its own predictions
    (mAP^r near 100) without a word: a researcher's way to 'evaluate the predictions'."""
    dataset, exports, _, _ = labelled
    out = tmp_path / "results"
    assert main(["predict", str(dataset.parent), "--model", str(checkpoint), "--out", str(out), "--device", "cpu",
                 *LOW]) == 0
    capsys.readouterr()
    common = ["evaluate", str(dataset), "--model", str(checkpoint), "--device", "cpu", *LOW]
    assert main([*common, "--masks", str(out)]) == 0
    err = capsys.readouterr().err
    assert (f"warning: 3 exports in {out} (scene0_labels.tif, scene1_labels.tif, scene2_labels.tif) are napari-prm "
            "predict's output as written, not corrected") in err
    # a label image corrected in another editor is a correction; the Export widget's files are too
    labels = io.read_label_image(out / "scene1_labels.tif")
    labels[:4, :4] = labels.max() + 1
    io.write_label_image(out / "scene1_labels.tif", labels)
    assert main([*common, "--masks", str(out)]) == 0
    assert "warning: 2 exports in" in capsys.readouterr().err
    assert main([*common, "--masks", str(exports)]) == 0
    assert "predict's output as written" not in capsys.readouterr().err


def test_evaluate_masks_warns_only_of_predicts_outputs_it_scores(labelled, checkpoint, tmp_path, capsys):
    """The warning named predict's unchanged outputs that evaluate left out (of an image not in
    the dataset): only the scored exports' make the figures agreement, not accuracy."""
    dataset, _, _, _ = labelled
    out = tmp_path / "results"
    assert main(["predict", str(dataset.parent), "--model", str(checkpoint), "--out", str(out), "--device", "cpu",
                 *LOW]) == 0
    for number in (0, 1):  # corrected in another editor
        labels = io.read_label_image(out / f"scene{number}_labels.tif")
        labels[:4, :4] = labels.max() + 1
        io.write_label_image(out / f"scene{number}_labels.tif", labels)
    two = tmp_path / "two.csv"  # the dataset without scene2
    two.write_text("image,labels\n" + "".join(f"{dataset.parent / f'scene{n}.png'},cat;dog\n" for n in (0, 1)))
    capsys.readouterr()
    assert main(["evaluate", str(two), "--model", str(checkpoint), "--device", "cpu", *LOW,
                 "--masks", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 export matches no image of the dataset, left out: scene2_labels.tif" in err
    assert "predict's output as written" not in err
