"""``napari-prm evaluate VOC/ImageSets/Segmentation/val.txt --predictions FOLDER``: predict's output folders
scored against a PASCAL VOC devkit (the synthetic one of test_data_voc), no model run."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_prm import io
from napari_prm.cli import main
from napari_prm.data import load_dataset, voc_image_table
from napari_prm.evaluate import evaluate_exports, report_exports_markdown
from test_data_voc import IMAGES, SEGMENTED, SIZE, instance_masks, write_voc_devkit

#: the classes of the exports written by hand: VOC's spelling of one class, COCO's of another
#: (the devkit says 'motorbike'), and one no XML of the devkit names ('cow': a VOC class all the same)
HAND_CLASSES = ["aeroplane", "cat", "motorcycle", "person", "cow"]


@pytest.fixture
def devkit(tmp_path):
    return write_voc_devkit(tmp_path)


def test_a_predict_run_on_jpegimages_scores_as_evaluate_model(devkit, capsys):
    """The real predict CLI on the devkit's JPEGImages/ (4 images: it names them 2007_000001.jpg, ...),
    scored against val.txt (3 of them), equals evaluate --model of the same model and settings on
    val.txt: the built-in model finds a cat (mAP^r .25 above 0), in COCO's spelling of the classes.
    With --max-peaks 2 no two of its instances overlap; with its defaults two cats of 2007_000001
    share 111 pixels, which the export's label image gives to the higher-scoring one (ABO .144
    against .167; mAP^r equal), the difference docs/usage.md describes."""
    out, val = devkit.parent / "out", devkit / "ImageSets" / "Segmentation" / "val.txt"
    settings = ["--model", "imagenet-voc", "--device", "cpu", "--max-peaks", "2"]
    assert main(["predict", str(devkit / "JPEGImages"), *settings, "--out", str(out)]) == 0
    assert main(["evaluate", str(val), *settings, "--json", str(devkit.parent / "model.json")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(val), "--predictions", str(out), "--json", str(devkit.parent / "exports.json")]) == 0
    err = capsys.readouterr().err
    model = json.loads((devkit.parent / "model.json").read_text())
    exports = json.loads((devkit.parent / "exports.json").read_text())
    assert model["mAP_r"]["0.25"] > 0 and model["ABO"] > 0  # figures worth comparing
    for key in ("num_images", "num_instances", "num_predicted_instances", "classes", "mAP_r", "AP_r_per_class"):
        assert exports[key] == model[key], key
    assert exports["ABO"] == pytest.approx(model["ABO"], abs=1e-12)
    assert "motorcycle" in exports["classes"] and exports["num_images"] == 3
    assert exports["exports"]["images_without_export"] == [] and exports["exports"]["without_masks"] == []
    assert f"{out}: 3 images scored; every image of the dataset has an export there" in err
    # predict ran on every JPEG; val.txt lists 3: the 4th's export is of no image of the dataset
    assert f"warning: {out}: 1 export of no image of the dataset, left out: {out / '2008_000004_instances.json'}: " \
           "its image '2008_000004.jpg' is none of" in err


def _ring(mask: np.ndarray, void: np.ndarray) -> np.ndarray:
    """The void pixels next to ``mask`` (its part of the devkit's outline)."""
    return ndimage.binary_dilation(mask) & void


def _write_exports(folder, image_ids, *, with_void: bool = True):
    """An export per image, as predict writes one (its own numbering, file_name ``<id>.jpg``), each
    instance its ground truth, grown by its void outline (``with_void``); an image the devkit has not
    segmented gets one box of an aeroplane."""
    folder.mkdir()
    names = [name for name, *_ in IMAGES[image_ids[0]][1]]
    for image_id in image_ids:
        if image_id in SEGMENTED:
            masks, void = instance_masks(image_id)
            names = [name for name, *_ in IMAGES[image_id][1]]
        else:
            masks, void, names = np.zeros((1, *SIZE), bool), np.zeros(SIZE, bool), ["aeroplane"]
            masks[0, 4:40, 10:50] = True
        labels = np.zeros(SIZE, np.uint16)
        for label, mask in enumerate(masks, 1):
            if with_void:
                labels[_ring(mask, void)] = label
        for label, mask in enumerate(masks, 1):
            labels[mask] = label
        classes = [HAND_CLASSES.index({"motorbike": "motorcycle"}.get(n, n)) for n in names]
        table = {"label": np.arange(1, len(masks) + 1), "class_index": np.array(classes),
                 "class_name": np.array([HAND_CLASSES[c] for c in classes]), "score": np.linspace(0.9, 0.5, len(masks)),
                 "peak": np.arange(len(masks))}
        io.write_coco_json(folder / f"{image_id}_instances.json",
                           io.labels_to_coco(labels, table, HAND_CLASSES, file_name=f"{image_id}.jpg"))
    return folder


def test_exports_of_the_ground_truth_with_its_void_outline_score_100(devkit, capsys):
    """Each instance grown by its void outline still matches it exactly: void counts for and against no
    prediction, as evaluate --model has it. The year folder's 4th image has no segmentation PNGs: it is
    named as left out (its export too), as evaluate --model names it."""
    perfect = _write_exports(devkit.parent / "perfect", list(IMAGES))
    truths = [instance_masks(i) for i in SEGMENTED]
    assert all((_ring(m, void) & ~m).any() for masks, void in truths for m in masks)  # the outlines are there
    assert main(["evaluate", str(devkit), "--predictions", str(perfect), "--json", str(devkit.parent / "p.json")]) == 0
    captured = capsys.readouterr()
    results = json.loads((devkit.parent / "p.json").read_text())
    assert results["mAP_r"] == pytest.approx({"0.25": 1.0, "0.5": 1.0, "0.75": 1.0}) and results["ABO"] == 1.0
    # every instance of the 3 segmented images (the difficult ones too: the PNGs do not mark them)
    assert results["num_images"] == 3 and results["num_instances"] == 6 == results["num_predicted_instances"]
    assert results["AP_r_per_class"]["motorcycle"]["0.75"] == pytest.approx(1.0)
    assert results["AP_r_per_class"]["cow"]["0.5"] is None  # no cow in the devkit
    assert results["exports"]["without_masks"] == [str(perfect / "2008_000004_instances.json")]
    assert results["exports"]["images_without_export"] == [] and results["exports"]["unmatched"] == []
    assert ("1 of the dataset's 4 images has no instance masks (no SegmentationObject PNG), left out: "
            "2008_000004.jpg") in captured.err
    assert f"{perfect}: 3 images scored; every image of the dataset with instance masks has an export there" \
        in captured.err
    assert "| 100.0 | 100.0 | 100.0 | 100.0 |" in captured.out
    # the same on val.txt; an image of it without an export is named among those with instance masks
    (perfect / "2007_000003_instances.json").unlink()
    assert main(["evaluate", str(devkit / "ImageSets" / "Segmentation" / "val.txt"), "--predictions",
                 str(perfect)]) == 0
    err = capsys.readouterr().err
    assert f"{perfect}: 2 images scored; 1 of the dataset's 3 images has no export there (JPEGImages/2007_000003.jpg)" \
        in err and "no instance masks" not in err


def test_the_void_outline_is_what_lowers_the_score_of_grown_masks(devkit):
    """The Python call; the same exports scored against the devkit's PNGs with void turned into background
    score below 100: the outline is what evaluation ignores."""
    perfect = _write_exports(devkit.parent / "perfect", list(SEGMENTED))
    val = devkit / "ImageSets" / "Segmentation" / "val.txt"
    assert evaluate_exports([perfect], load_dataset(val))["results"][0]["ABO"] == 1.0
    for image_id in SEGMENTED:
        for folder in ("SegmentationObject", "SegmentationClass"):
            path = devkit / folder / f"{image_id}.png"
            image = Image.open(path)
            values = np.array(image)
            values[values == 255] = 0
            plain = Image.fromarray(values, mode="P")
            plain.putpalette(image.getpalette())
            plain.save(path)
    row = evaluate_exports([perfect], load_dataset(val))["results"][0]
    assert row["ABO"] < 0.95 and row["mAP_r"][0.25] == 1.0


def test_the_voc_image_table_and_what_is_refused(devkit, capsys):
    val = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    table = voc_image_table(val)
    assert table["images"] == [{"id": k, "file_name": f"JPEGImages/{i}.jpg", "height": SIZE[0], "width": SIZE[1]}
                               for k, i in enumerate(SEGMENTED, 1)]
    names = [c["name"] for c in table["categories"]]
    assert names[:4] == ["aeroplane", "cat", "motorbike", "person"] and len(names) == 20 and "cow" in names
    assert [c["id"] for c in table["categories"]] == list(range(1, 21))
    # a folder of exports of images without segmentation PNGs only
    only = _write_exports(devkit.parent / "only", ["2008_000004"])
    assert main(["evaluate", str(devkit), "--predictions", str(only)]) == 2
    assert f"every export in {only} of an image of {devkit} is of an image without instance masks" \
        in capsys.readouterr().err
    # an export of another size than the JPEG's header says
    wrong = _write_exports(devkit.parent / "wrong", list(SEGMENTED))
    export = json.loads((wrong / "2007_000001_instances.json").read_text())
    export["images"][0]["height"] = 50
    (wrong / "2007_000001_instances.json").write_text(json.dumps(export))
    assert main(["evaluate", str(devkit), "--predictions", str(wrong)]) == 2
    assert "its image '2007_000001.jpg' is 50×64 pixels, but" in capsys.readouterr().err
    # a devkit without segmentation PNGs has no masks to score against
    for png in [*(devkit / "SegmentationObject").iterdir(), *(devkit / "SegmentationClass").iterdir()]:
        png.unlink()
    assert main(["evaluate", str(devkit), "--predictions", str(wrong)]) == 2
    assert "has no segmentation PNGs (SegmentationObject) of its images" in capsys.readouterr().err


def test_folders_of_models_spelling_a_voc_class_otherwise_compare_over_it(devkit):
    """A built-in model's run ('motorcycle') against one of a model trained on the devkit ('motorbike'):
    the comparison left the class out of the classes the folders share (4 of 5), so a second run that
    misses the motorbike compared as perfect (mAP^r .5 1.0, +0.0). The report's table per class gave
    the class two rows, each with one folder's AP^r ('motorcycle': 100 and –; 'motorbike': – and 0)."""
    val = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    builtin = _write_exports(devkit.parent / "builtin", list(SEGMENTED))
    trained = devkit.parent / "trained"
    trained.mkdir()
    for path in builtin.glob("*_instances.json"):
        export = json.loads(path.read_text())
        for category in export["categories"]:
            category["name"] = {"motorcycle": "motorbike"}.get(category["name"], category["name"])
        motorbike = next(c["id"] for c in export["categories"] if c["name"] == "motorbike")
        export["annotations"] = [a for a in export["annotations"] if a["category_id"] != motorbike]
        (trained / path.name).write_text(json.dumps(export))
    evaluation = evaluate_exports([builtin, trained], val, resamples=20)
    assert [row["classes"] for row in evaluation["results"]] == [HAND_CLASSES, [
        {"motorcycle": "motorbike"}.get(name, name) for name in HAND_CLASSES]]
    comparison = evaluation["comparison"]
    assert comparison["classes"] == HAND_CLASSES
    first, second = comparison["rows"]
    # aeroplane, cat, person found, the motorbike missed (cow: no ground truth, no AP)
    assert first["mAP_r"] == 1.0 and second["mAP_r"] == pytest.approx(0.75)
    assert second["difference"]["high"] <= 0 and second["difference"]["median"] < 0
    table = report_exports_markdown(evaluation).split("| class |")[1].split("\n\n")[0]
    assert "| motorcycle | 100.0 | 100.0 | 100.0 | 0.0 | 0.0 | 0.0 |" in table
    assert "motorbike" not in table
    assert "| cow | – | – | – | – | – | – |" in table and table.count("\n| ") == len(HAND_CLASSES) + 1


def test_results_json_needs_a_coco_json_not_a_voc_devkit(devkit, capsys):
    """A devkit has no COCO image or category ids for the results file: refused before scoring, naming both."""
    perfect, out = _write_exports(devkit.parent / "perfect", list(IMAGES)), devkit.parent / "r.json"
    assert main(["evaluate", str(devkit), "--predictions", str(perfect), "--results-json", str(out)]) == 2
    captured = capsys.readouterr()
    assert (f"--results-json {out}: DATASET {devkit} is a PASCAL VOC devkit, which has no COCO image or category "
            "ids") in captured.err
    assert not out.exists() and "mAP^r" not in captured.out
