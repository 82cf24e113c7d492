"""``napari-prm evaluate DATASET --predictions FOLDER ...``: predict's output folders scored against a COCO JSON,
no model run, and compared by a paired bootstrap."""

import contextlib
import io as text_io
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import shapes_scene
from napari_prm import io
from napari_prm.cli import main
from napari_prm.model import build_model, save_model

CLASSES = ["cat", "dog"]
#: the user's own ids: not the exports' (image 1, categories 1 and 2), and a category no model has
CATEGORIES = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 3, "name": "car"}]
TABLE = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(CLASSES),
         "score": np.array([0.9, 0.8]), "peak": np.array([0, 1])}
#: lets the random tiny model's peaks through, so that it predicts instances to score
LOW = ["--class-threshold=-1e9", "--peak-threshold=-1e9"]
IOUS = (0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A COCO JSON of four shapes scenes (ids 100-103, categories 17/18) with their images in
    another folder, and two real ``predict`` runs of a tiny model: ``runA`` on the first three
    images, ``runB`` (one peak per image) on all four."""
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("predictions")
    images = root / "images"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": CATEGORIES}
    for number in range(4):
        image, labels, _, _ = shapes_scene(number)
        iio.imwrite(images / f"scene{number}.png", image)
        one = io.labels_to_coco(labels, TABLE, CLASSES, image_id=100 + number, file_name=f"scene{number}.png",
                                category_ids=[17, 18])
        coco["images"] += one["images"]
        coco["annotations"] += [{key: value for key, value in a.items() if key not in ("score", "peak", "label")}
                                | {"id": 10 * number + a["id"]} for a in one["annotations"]]
    (root / "gt.json").write_text(json.dumps(coco))
    torch.manual_seed(0)
    checkpoint = save_model(build_model("tiny", CLASSES, pretrained=False, input_size=(96, 96)), root / "tiny.pt")
    common = ["predict", "--model", str(checkpoint), "--device", "cpu", *LOW]
    assert main([*common, *(str(images / f"scene{n}.png") for n in range(3)), "--out", str(root / "runA")]) == 0
    assert main([*common, "--max-peaks", "1", str(images), "--out", str(root / "runB")]) == 0
    return root


def _cocoeval(gt_json, results, image_ids, ious=IOUS):
    """pycocotools' COCOeval on ``coco_results``' list as evaluate scores: the two classes, one area
    range, 100 detections: (mAP per IoU, AP per IoU and class)."""
    with contextlib.redirect_stdout(text_io.StringIO()):
        truth = COCO(str(gt_json))
        evaluation = COCOeval(truth, truth.loadRes(results), "segm")
        evaluation.params.imgIds = list(image_ids)
        evaluation.params.catIds = [17, 18]
        evaluation.params.iouThrs = np.array(ious)
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.params.maxDets = [100]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, 0]  # (IoU, recall, class)
    mean = [float(p[p > -1].mean()) for p in precision]
    per_class = [[float(precision[t, :, c].mean()) for c in range(2)] for t in range(len(ious))]
    return mean, per_class


def test_a_predict_folder_scores_as_cocoeval_on_coco_results(runs, tmp_path, capsys):
    gt = runs / "gt.json"
    assert main(["evaluate", str(gt), "--predictions", str(runs / "runA"), "--json", str(tmp_path / "a.json")]) == 0
    captured = capsys.readouterr()
    results = json.loads((tmp_path / "a.json").read_text())
    mean, per_class = _cocoeval(gt, io.coco_results(runs / "runA", gt), [100, 101, 102])
    assert 0 < mean[1] < 1  # the random model finds some instances, not all: a figure worth checking
    assert [results["mAP_r"][str(t)] for t in IOUS] == pytest.approx(mean, abs=1e-12)
    for c, name in enumerate(CLASSES):
        assert [results["AP_r_per_class"][name][str(t)] for t in IOUS] == pytest.approx(
            [row[c] for row in per_class], abs=1e-12)
    assert results["num_images"] == 3 and results["num_instances"] == 6
    assert results["num_predicted_instances"] == len(io.coco_results(runs / "runA", gt))
    assert results["prm_quality"] is None and "need the model" in results["not_measured"]
    assert results["exports"]["images_without_export"] == ["scene3.png"]
    # the images are not read: the JSON beside no image folder, no --image-dir, is enough
    assert "1 of the dataset's 4 images has no export there (scene3.png)" in captured.err
    row = f"| {runs / 'runA'} | 3 | 6 | {results['num_predicted_instances']} | " + " | ".join(
        f"{100 * m:.1f}" for m in mean)
    assert row in captured.out
    assert "Not measured: PRM quality" in captured.out


def test_evaluate_exports_takes_one_folder_as_a_path(runs, monkeypatch):
    """A folder given alone, as coco_results takes it: a str was read as the folders of its characters
    ('r does not exist'), a Path was not iterable."""
    from napari_prm.data import from_coco
    from napari_prm.evaluate import evaluate_exports

    dataset = from_coco(runs / "gt.json", image_dir=runs / "images")
    expected = evaluate_exports([runs / "runA"], dataset)["results"][0]["mAP_r"]
    assert 0 < expected[0.5] < 1
    monkeypatch.chdir(runs)
    for folder in ("runA", runs / "runA"):
        evaluation = evaluate_exports(folder, dataset)
        assert len(evaluation["results"]) == 1 and evaluation["comparison"] is None
        assert evaluation["results"][0]["mAP_r"] == expected
        assert evaluation["results"][0]["num_images"] == 3


def test_a_run_asked_for_some_classes_is_scored_on_those(runs, tmp_path, capsys):
    # predict --classes cat predicts no dog: averaging dog's AP of 0 in halved the figure
    out = tmp_path / "cats"
    assert main(["predict", "--model", str(runs / "tiny.pt"), "--device", "cpu", *LOW, "--classes", "cat",
                 *(str(runs / "images" / f"scene{n}.png") for n in range(3)), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(out), "--json", str(tmp_path / "c.json")]) == 0
    captured = capsys.readouterr()
    results = json.loads((tmp_path / "c.json").read_text())
    results_list = io.coco_results(out, runs / "gt.json")
    assert {r["category_id"] for r in results_list} == {17}
    with contextlib.redirect_stdout(text_io.StringIO()):
        truth = COCO(str(runs / "gt.json"))
        evaluation = COCOeval(truth, truth.loadRes(results_list), "segm")
        evaluation.params.imgIds, evaluation.params.catIds = [100, 101, 102], [17]
        evaluation.params.iouThrs = np.array(IOUS)
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.params.maxDets = [100]
        evaluation.evaluate()
        evaluation.accumulate()
    cat_ap = [float(evaluation.eval["precision"][t, :, 0, 0, 0].mean()) for t in range(len(IOUS))]
    assert 0 < cat_ap[0]
    assert results["classes"] == ["cat"] and results["exports"]["classes_not_asked"] == ["dog"]
    assert [results["mAP_r"][str(t)] for t in IOUS] == pytest.approx(cat_ap, abs=1e-12)
    assert results["num_instances"] == 3  # the cats of the three images, not their dogs
    assert f"note: {out}: predicted for 1 of its model's 2 classes (predict --classes cat): mAP^r averages " \
           "over those" in captured.err
    # a run of every class is scored on every class, without the note
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(runs / "runA")]) == 0
    assert "predicted for" not in capsys.readouterr().err


def test_exports_rewritten_to_the_ground_truth_score_100(runs, tmp_path, capsys):
    perfect = _perfect_copy(runs, tmp_path / "perfect")
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(perfect), "--json",
                 str(tmp_path / "p.json")]) == 0
    results = json.loads((tmp_path / "p.json").read_text())
    assert results["mAP_r"] == {str(t): 1.0 for t in IOUS}
    assert results["ABO"] == 1.0 and results["num_predicted_instances"] == results["num_instances"] == 6
    assert "| 100.0 | 100.0 | 100.0 | 100.0 |" in capsys.readouterr().out


def _perfect_copy(runs, folder, drop=()):
    """``runA`` copied, each export's instances replaced by its image's ground truth (in the exports'
    own numbering, as predict writes them); the images ``drop`` lose their exports."""
    shutil.copytree(runs / "runA", folder)
    for number in range(3):
        if number in drop:
            for path in folder.glob(f"scene{number}[._]*"):
                path.unlink()
            continue
        io.write_coco_json(folder / f"scene{number}_instances.json",
                           io.labels_to_coco(shapes_scene(number)[1], TABLE, CLASSES, file_name=f"scene{number}.png"))
    return folder


def test_two_folders_compare_with_the_right_sign(runs, tmp_path, capsys):
    gt = runs / "gt.json"
    perfect = _perfect_copy(runs, tmp_path / "perfect", drop=(2,))
    assert main(["evaluate", str(gt), "--predictions", str(runs / "runA"), str(perfect), str(runs / "runB"),
                 "--resamples", "40", "--json", str(tmp_path / "c.json")]) == 0
    captured = capsys.readouterr()
    evaluation = json.loads((tmp_path / "c.json").read_text())
    assert [r["settings"]["predictions"] for r in evaluation["results"]] == [
        str(runs / "runA"), str(perfect), str(runs / "runB")]
    comparison = evaluation["comparison"]
    assert comparison["images"] == 2 and comparison["left_out"] == ["scene2.png", "scene3.png"]
    first, best, _ = comparison["rows"]
    assert best["mAP_r"] == 1.0 and best["low"] == 1.0
    # on the two common images, as COCOeval scores them
    assert first["mAP_r"] == pytest.approx(
        _cocoeval(gt, [r for r in io.coco_results(runs / "runA", gt) if r["image_id"] < 102], [100, 101],
                  (0.5,))[0][0], abs=1e-12)
    assert first["difference"] is None
    assert best["difference"]["median"] > 0 and best["difference"]["low"] >= 0
    assert best["difference"]["share_above_0"] > 0.5
    assert "2 images every folder scored (2 images scored by some folders only left out: scene2.png, " \
           "scene3.png)" in captured.out
    assert f"| {perfect} | 100.0 | 100.0 (100.0–100.0) | +" in captured.out
    # the other way round: the first is the perfect one, so the difference is negative
    assert main(["evaluate", str(gt), "--predictions", str(perfect), str(runs / "runA"), "--resamples", "40",
                 "--json", str(tmp_path / "d.json")]) == 0
    reverse = json.loads((tmp_path / "d.json").read_text())["comparison"]["rows"][1]["difference"]
    assert reverse["median"] < 0 and reverse["share_above_0"] == 0


@pytest.mark.parametrize("options, named", [
    (["--model", "imagenet-voc"], "--model"),
    (["--tta", "--class-threshold", "0.5"], "--class-threshold, --tta/--no-tta"),
    (["--no-tta"], "--tta/--no-tta"),
    (["--device", "cpu", "--proposals", "none"], "--device, --proposals"),
    (["--masks", "corrections/"], "--predictions with --masks"),
])
def test_options_that_run_a_model_are_usage_errors(runs, options, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", str(runs / "gt.json"), "--predictions", str(runs / "runA"), *options])
    assert stopped.value.code == 2
    assert named in capsys.readouterr().err


def test_resamples_without_predictions_is_a_usage_error(runs, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", str(runs / "gt.json"), "--resamples", "10"])
    assert stopped.value.code == 2 and "--resamples" in capsys.readouterr().err


def test_folders_that_cannot_be_scored_are_named(runs, tmp_path, capsys):
    gt = str(runs / "gt.json")

    def error(*folders, dataset=gt):
        assert main(["evaluate", dataset, "--predictions", *map(str, folders)]) == 2
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert f"--predictions: {tmp_path / 'empty'} holds no <stem>_instances.json" in error(tmp_path / "empty")
    assert "not a napari-prm predict output folder" in error(runs / "images")
    assert f"--predictions: {tmp_path / 'none'} does not exist" in error(tmp_path / "none")
    assert "labels.csv is neither a COCO JSON nor a PASCAL VOC devkit" in error(runs / "runA",
                                                                        dataset=str(tmp_path / "labels.csv"))
    # a stack's outputs: predict writes no COCO JSON for them
    import tifffile

    planes = np.stack([shapes_scene(n)[0].mean(axis=-1).astype(np.uint8) for n in (0, 1)])
    tifffile.imwrite(tmp_path / "zstack.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    assert main(["predict", str(tmp_path / "zstack.tif"), "--model", str(runs / "tiny.pt"), "--device", "cpu",
                 "--out", str(tmp_path / "stacks")]) == 0
    capsys.readouterr()
    assert "holds only the outputs of 1 stack (zstack): predict writes no COCO JSON" in error(tmp_path / "stacks")
    # a model whose classes are not the JSON's categories
    voc = tmp_path / "voc"
    shutil.copytree(runs / "runA", voc)
    for path in voc.glob("*_instances.json"):
        export = json.loads(path.read_text())
        for category in export["categories"]:
            category["name"] = {"cat": "cat", "dog": "motorbike"}[category["name"]]
        path.write_text(json.dumps(export))
    message = error(voc)
    assert str(voc) in message and "'motorbike'" in message
    # a copy of an output folder inside another: two exports of one image
    nested = tmp_path / "nested"
    shutil.copytree(runs / "runA", nested)
    shutil.copytree(runs / "runA", nested / "backup")
    message = error(nested)
    assert f"{nested / 'backup' / 'scene0_instances.json'} and {nested / 'scene0_instances.json'} are both " \
           "exports of image 100" in message
    # an export of no image of the JSON: named, left out
    stray = tmp_path / "stray"
    shutil.copytree(runs / "runA", stray)
    export = json.loads((stray / "scene0_instances.json").read_text())
    export["images"][0]["file_name"] = "elsewhere.png"
    (stray / "elsewhere_instances.json").write_text(json.dumps(export))
    assert main(["evaluate", gt, "--predictions", str(stray)]) == 0
    assert f"warning: {stray}: 1 export of no image of the dataset, left out: {stray / 'elsewhere_instances.json'}" \
        in capsys.readouterr().err


def test_a_folder_given_twice_is_refused_naming_it(runs, capsys, monkeypatch):
    # compared with itself, a folder showed a difference of +0.0 (0 % of resamples above 0) as a finding
    monkeypatch.chdir(runs)
    assert main(["evaluate", "gt.json", "--predictions", "runA", "runB", "./runA/", "--resamples", "5"]) == 2
    captured = capsys.readouterr()
    assert "--predictions: runA is given twice: give each run's folder once" in captured.err
    assert captured.out == ""
    assert main(["evaluate", "gt.json", "--predictions", "runA", str(runs / "runA"), "--resamples", "5"]) == 2
    assert f"is given twice (as runA and {runs / 'runA'})" in capsys.readouterr().err


def test_a_model_of_other_classes_is_refused_for_the_folder_with_its_count(runs, tmp_path, capsys):
    # an ImageNet model's run (1000 classes, a few of them COCO's names): the first export with an
    # instance of another class was refused alone, its one class named, with a hint about VOC spellings
    other = tmp_path / "imagenet"
    shutil.copytree(runs / "runA", other)
    for path in sorted(other.glob("*_instances.json")):
        export = json.loads(path.read_text())
        export["categories"] = [{"id": 1, "name": "tench"}, {"id": 2, "name": "goldfish"},
                                {"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}]
        for number, annotation in enumerate(export["annotations"]):
            annotation["category_id"] = 1 if number == 0 else annotation["category_id"] + 2
        path.write_text(json.dumps(export))
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(other)]) == 2
    message = capsys.readouterr().err
    assert f"the classes of the model that made {other} are not all categories of {runs / 'gt.json'}: " \
           "['tench', 'goldfish'] (2 of its 4 classes) are missing" in message
    assert "motorcycle" not in message


def test_what_a_folder_leaves_unscored_is_said_and_why(runs, tmp_path, capsys):
    gt = str(runs / "gt.json")
    # an export deleted by hand, its label image and manifest kept: said apart from the images never predicted
    partial = tmp_path / "partial"
    shutil.copytree(runs / "runB", partial)
    (partial / "scene1_instances.json").unlink()
    assert main(["evaluate", gt, "--predictions", str(partial), "--json", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err
    exports = json.loads((tmp_path / "p.json").read_text())["exports"]
    assert exports["lacking"] == ["scene1_instances.json"] and exports["images_without_export"] == ["scene1.png"]
    assert f"warning: {partial}: 1 export that the manifests list is not there, so its image is not scored: " \
           "scene1_instances.json (predict --overwrite writes an image's outputs again)" in err
    # the images with an export that --max-images leaves out are counted and named, not silently dropped
    assert main(["evaluate", gt, "--predictions", str(runs / "runB"), "--max-images", "1", "--json",
                 str(tmp_path / "m.json")]) == 0
    err = capsys.readouterr().err
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["num_images"] == 1 and result["exports"]["left_out"] == ["scene1.png", "scene2.png", "scene3.png"]
    assert f"{runs / 'runB'}: 1 image scored; 3 more with an export left out by --max-images (scene1.png, " \
           "scene2.png, scene3.png); every image of the dataset has an export there" in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_the_comparison_keeps_the_folders_scores(runs, tmp_path, capsys, monkeypatch, signum,
                                                                 request):
    # Ctrl-C in a long bootstrap printed "interrupted" alone: the folders' scores, done, were lost.
    # After SIGTERM the line said "interrupted" too: it names the signal now, as predict's does.
    import _thread

    from napari_prm import evaluate as evaluate_module

    if signum != signal.SIGINT and (os.name != "posix" or signal.getsignal(signum) is not signal.SIG_DFL):
        pytest.skip("the command line handles SIGTERM where its default is in place (POSIX)")

    gt, folders = str(runs / "gt.json"), [str(runs / "runA"), str(runs / "runB")]
    assert main(["evaluate", gt, "--predictions", *folders, "--resamples", "5"]) == 0
    whole = capsys.readouterr().out
    bootstrap = evaluate_module.bootstrap_map

    def ctrl_c_after_3(matchers, **options):
        def progress(done, total):
            options["progress"](done, total)
            if done == 3 and signum == signal.SIGINT:
                _thread.interrupt_main()  # as a SIGINT arriving in the main thread
            elif done == 3:
                os.kill(os.getpid(), signum)  # the command line's handler raises its KeyboardInterrupt

        return bootstrap(matchers, **{**options, "progress": progress})

    monkeypatch.setattr(evaluate_module, "bootstrap_map", ctrl_c_after_3)
    if signum == signal.SIGINT:
        # Python's own Ctrl-C handling, as in a terminal: interrupt_main does nothing where an earlier test
        # of the session left SIGINT at SIG_DFL or SIG_IGN (CI once ran all 1000 resamples, exit 0)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    assert main(["evaluate", gt, "--predictions", *folders, "--resamples", "1000", "--json",
                 str(tmp_path / "c.json")]) == (130 if signum == signal.SIGINT else 143)
    captured = capsys.readouterr()
    table = whole[:whole.index("Paired bootstrap")].rstrip()
    assert captured.out.startswith(table)  # the folders' rows and classes, as without Ctrl-C
    assert captured.out.rstrip().endswith("No comparison of the folders: it was interrupted.")
    stopped = "interrupted" if signum == signal.SIGINT else "terminated by SIGTERM"
    assert captured.err.strip().splitlines()[-1] == (
        f"{stopped} during the comparison (3 of 1000 resamples drawn): the folders' scores above are "
        f"complete, the comparison is not given, and {tmp_path / 'c.json'} is not written; fewer --resamples "
        "take less time")
    assert not (tmp_path / "c.json").exists()


def test_the_comparison_says_its_iou_when_the_table_has_others(runs, tmp_path, capsys):
    gt, folders = str(runs / "gt.json"), [str(runs / "runA"), str(runs / "runB")]
    assert main(["evaluate", gt, "--predictions", *folders, "--iou-thresholds", "0.75", "--resamples", "5",
                 "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["comparison"]["iou_threshold"] == 0.5
    assert "| mAP^r@0.75 | ABO |" in out
    assert "Paired bootstrap of mAP^r@0.5 (the comparison is at IoU 0.5 always, not at the table's 0.75): " in out
    assert main(["evaluate", gt, "--predictions", *folders, "--resamples", "5"]) == 0
    assert "Paired bootstrap of mAP^r@0.5: 5 resamples" in capsys.readouterr().out


def test_a_run_without_instances_is_warned_of(runs, tmp_path, capsys):
    # predict --proposals none writes peaks and exports without instances: its 0.0 was given without a word
    assert main(["predict", str(runs / "images"), "--model", str(runs / "tiny.pt"), "--device", "cpu", *LOW,
                 "--proposals", "none", "--out", str(tmp_path / "peaks")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(tmp_path / "peaks")]) == 0
    captured = capsys.readouterr()
    assert f"| {tmp_path / 'peaks'} | 4 | 8 | 0 | 0.0 | 0.0 | 0.0 | 0.0 |" in captured.out
    assert f"warning: {tmp_path / 'peaks'}: its exports of the 4 images scored hold no instance (predict ran " \
           "with --proposals none, which finds peaks and PRMs only, no instance), so mAP^r and ABO are 0" \
           in captured.err
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(runs / "runA")]) == 0
    assert "hold no instance" not in capsys.readouterr().err


def test_a_comparison_on_the_rows_images_reads_each_ground_truth_once_per_folder(runs, tmp_path, monkeypatch):
    """Two folders scored on the same images and classes: the comparison reuses each row's matching
    (its decoded exports and the ground truth it read) and gives the rows' figures."""
    from napari_prm.data import LabeledImageDataset, from_coco
    from napari_prm.evaluate import evaluate_exports

    perfect = _perfect_copy(runs, tmp_path / "perfect")
    read = []
    real = LabeledImageDataset.instances
    monkeypatch.setattr(LabeledImageDataset, "instances", lambda self, index: read.append(index) or real(self, index))
    dataset = from_coco(runs / "gt.json", image_dir=runs / "images")
    evaluation = evaluate_exports([runs / "runA", perfect], dataset, resamples=20)
    assert sorted(read) == [0, 0, 1, 1, 2, 2]  # once per image and folder, not again for the comparison
    comparison = evaluation["comparison"]
    assert comparison["images"] == 3
    for row, result in zip(comparison["rows"], evaluation["results"]):
        assert row["mAP_r"] == result["mAP_r"][0.5]
    assert comparison["rows"][1]["mAP_r"] == 1.0


def test_results_json_is_coco_results_in_the_datasets_ids_and_cocoeval_gives_evaluates_figures(runs, tmp_path,
                                                                                               capsys):
    gt, out = runs / "gt.json", tmp_path / "results.json"
    assert main(["evaluate", str(gt), "--predictions", str(runs / "runB"), "--results-json", str(out),
                 "--json", str(tmp_path / "scores.json")]) == 0
    captured = capsys.readouterr()
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(io.coco_results(runs / "runB", gt)))
    assert {r["image_id"] for r in written} <= {100, 101, 102, 103} and {r["category_id"] for r in written} <= {17, 18}
    assert all(isinstance(r["segmentation"]["counts"], str) and len(r["bbox"]) == 4 for r in written)
    assert f"results JSON (pycocotools, {len(written)} instances in {gt}'s ids): {out}" in captured.err
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["num_predicted_instances"] == len(written) and scores["num_images"] == 4
    with contextlib.redirect_stdout(text_io.StringIO()):  # COCOeval as it is, on the file as written
        truth = COCO(str(gt))
        evaluation = COCOeval(truth, truth.loadRes(str(out)), iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert 0 < evaluation.stats[1] < 1  # some instances found, not all: a figure worth comparing
    # AP at IoU .5 and .75, all sizes, 100 detections, over the categories with ground truth: evaluate's
    assert evaluation.stats[1] == pytest.approx(scores["mAP_r"]["0.5"], abs=1e-12)
    assert evaluation.stats[2] == pytest.approx(scores["mAP_r"]["0.75"], abs=1e-12)


def test_results_json_of_a_run_without_instances_is_an_empty_list_with_a_note(runs, tmp_path, capsys):
    assert main(["predict", str(runs / "images" / "scene0.png"), "--model", str(runs / "tiny.pt"), "--device",
                 "cpu", *LOW, "--proposals", "none", "--out", str(tmp_path / "peaks")]) == 0
    capsys.readouterr()
    out = tmp_path / "empty.json"
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(tmp_path / "peaks"),
                 "--results-json", str(out)]) == 0
    assert json.loads(out.read_text()) == []
    assert (f"note: {out} holds an empty list ([]): the exports in {tmp_path / 'peaks'} hold no instance, and "
            "pycocotools' COCO.loadRes cannot load an empty list (it raises IndexError)") in capsys.readouterr().err


def test_results_json_is_not_replaced_without_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text("kept")
    command = ["evaluate", str(runs / "gt.json"), "--predictions", str(runs / "runA"), "--results-json", str(out)]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"--results-json {out} exists: pass --overwrite to replace it" in err
    assert out.read_text() == "kept" and "mAP^r" not in err
    assert main([*command, "--overwrite"]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(io.coco_results(runs / "runA", runs / "gt.json")))
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left beside it


@pytest.mark.parametrize("where, options, named", [
    ("missing/results.json", [], "--results-json: cannot write {out}: its folder {missing} does not exist"),
    (".", [], "--results-json: expected a file, got {out}, which is a folder"),
    ("r.json", ["--max-images", "1"], "--results-json with --max-images: the results file holds every export's"),
    ("r.json", ["--voc"], "--results-json with --voc"),
    ("r.json", ["--predictions", "runA", "runB"],
     "--results-json writes one folder's instances; 2 --predictions folders were given"),
])
def test_results_json_bad_paths_and_options_are_usage_errors(runs, tmp_path, capsys, where, options, named):
    out = tmp_path / where
    options = [str(runs / o) if o.startswith("run") else o for o in options]
    folders = [] if "--predictions" in options else ["--predictions", str(runs / "runA")]
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", str(runs / "gt.json"), *folders, "--results-json", str(out), *options])
    assert stopped.value.code == 2
    assert named.format(out=out, missing=tmp_path / "missing") in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_results_json_and_overwrite_need_predictions(runs, tmp_path, capsys):
    for options, named in ((["--results-json", str(tmp_path / "r.json")], "--results-json writes the instances of "
                            "a --predictions folder"),
                           (["--predictions", str(runs / "runA"), "--overwrite"], "--overwrite replaces an existing "
                            "--results-json FILE; give --results-json")):
        with pytest.raises(SystemExit) as stopped:
            main(["evaluate", str(runs / "gt.json"), *options])
        assert stopped.value.code == 2 and named in capsys.readouterr().err


def test_results_json_names_an_export_of_no_image_of_the_dataset(runs, tmp_path, capsys):
    # evaluate leaves such an export out with a warning; coco_results, which the file is, refuses it
    folder = tmp_path / "run"
    shutil.copytree(runs / "runA", folder)
    io.write_coco_json(folder / "other_instances.json",
                       io.labels_to_coco(shapes_scene(0)[1], TABLE, CLASSES, file_name="other.png"))
    out = tmp_path / "r.json"
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(folder), "--results-json", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--results-json {out}: cannot give the instances of {folder} in {runs / 'gt.json'}'s ids: " in err
    assert f"{folder / 'other_instances.json'}: its image 'other.png' is none of" in err
    assert not out.exists()


def test_a_run_whose_peaks_all_fell_below_the_thresholds_is_not_blamed_on_proposals(runs, tmp_path, capsys):
    """A run with the class threshold above every class score found no peak, so its exports hold no instance:
    the warning said "predict --proposals none writes peaks only", a setting the run did not use. It names the
    thresholds and the best class score seen (from the manifests), in the command line's words and in Python's."""
    from napari_prm.data import from_coco
    from napari_prm.evaluate import NoInstanceWarning, evaluate_exports

    out = tmp_path / "strict"
    assert main(["predict", str(runs / "images"), "--model", str(runs / "tiny.pt"), "--device", "cpu",
                 "--class-threshold", "0.999", "--peak-threshold", "5", "--out", str(out)]) == 0
    infos = [json.loads((out / f"scene{n}.manifest.json").read_text())["info"] for n in range(4)]
    assert [info["peaks"] for info in infos] == [0, 0, 0, 0]
    name, best = max((info["best_class_score"] for info in infos), key=lambda pair: pair[1])
    assert name in CLASSES and best < 0.999
    capsys.readouterr()
    assert main(["evaluate", str(runs / "gt.json"), "--predictions", str(out)]) == 0
    err = capsys.readouterr().err
    assert (f"warning: {out}: its exports of the 4 images scored hold no instance (no peak above the thresholds "
            f"(--class-threshold 0.999, --peak-threshold 5; the best class score seen was {best:.3g}, {name})), "
            "so mAP^r and ABO are 0") in err
    assert "proposals none" not in err
    with pytest.warns(NoInstanceWarning, match=r"hold no instance \(no peak above the thresholds \(class_threshold "
                                               r"0\.999, peak_threshold 5; the best class score seen was "):
        evaluation = evaluate_exports(out, from_coco(runs / "gt.json", image_dir=runs / "images"))
    causes = evaluation["results"][0]["exports"]["no_instance"]
    assert causes.widget.startswith("no peak above the thresholds (class threshold 0.999, peak threshold 5; ")
