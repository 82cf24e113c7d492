"""The napari-prm command line, end to end on real images (scikit-image's, and ../shared/data's
where it exists)."""

import csv
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from pycocotools.coco import COCO
from skimage import data

from conftest import interrupt_after_first_checkpoint
from napari_prm import io
from napari_prm.cli import build_parser, collect_images, main
from napari_prm.model import build_model, load_checkpoint, load_model, save_model

COMMANDS = ("predict", "train", "calibrate", "refine", "evaluate", "demo", "bench")
OUTPUT_SUFFIXES = ("_labels.tif", "_instances.json", "_instances.csv", "_peaks.csv")


@pytest.fixture(scope="module")
def tiny48_checkpoint(tmp_path_factory):
    """A small random PRM network for two COCO classes, saved like a trained model."""
    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(48, 48))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


def _class_folders(root, names):
    """A dataset of a folder per class: two 64×64 crops of chelsea in ``names[0]``, of coffee in
    ``names[1]``."""
    import imageio.v3 as iio

    for name, image in zip(names, (data.chelsea(), data.coffee())):
        (root / name).mkdir(parents=True)
        for i in range(2):
            iio.imwrite(root / name / f"{i}.png", image[i * 20:i * 20 + 64, :64])


def write_half_size(source, target):
    """A real image (a file, or the name of a scikit-image sample) at half its size (keeps
    the tests quick), saved by extension."""
    import imageio.v3 as iio
    from skimage import data
    from skimage.transform import rescale

    image = getattr(data, source)() if isinstance(source, str) else io.read_image(source)
    small = rescale(image, 0.5, channel_axis=-1, preserve_range=True, anti_aliasing=True)
    iio.imwrite(target, small.round().astype(np.uint8))
    return small.shape[:2]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two real JPEGs, a 16-bit grayscale TIFF made from a third, and a broken PNG."""
    folder = tmp_path_factory.mktemp("images")
    for name in ("chelsea", "coffee"):
        write_half_size(name, folder / f"{name}.jpg")
    write_half_size("astronaut", folder / "gray.png")
    gray = io.read_image(folder / "gray.png").mean(-1)
    tifffile.imwrite(folder / "gray16.tif", (gray * 257).astype(np.uint16))
    (folder / "gray.png").unlink()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    (folder / "notes.txt").write_text("not an image, not collected")
    return folder


def check_outputs(out, stem, image_shape, class_names):
    """The four outputs of one image exist, load back and agree with each other."""
    for suffix in OUTPUT_SUFFIXES:
        assert (out / f"{stem}{suffix}").is_file(), f"{stem}{suffix} missing"
    labels = io.read_label_image(out / f"{stem}_labels.tif")
    assert labels.shape == image_shape and labels.dtype == np.uint16
    api = COCO(str(out / f"{stem}_instances.json"))
    if class_names is not None:
        assert [c["name"] for c in api.loadCats(api.getCatIds())] == class_names
    annotations = api.loadAnns(api.getAnnIds())
    assert len(annotations) == len(np.unique(labels[labels > 0]))
    for annotation in annotations:
        np.testing.assert_array_equal(api.annToMask(annotation).astype(bool),
                                      labels == annotation["label"])
        assert 0.0 <= annotation["score"] and annotation["category_id"] >= 1
    table = io.read_instances_csv(out / f"{stem}_instances.csv")
    assert sorted(table["label"]) == sorted(a["label"] for a in annotations)
    peaks = np.loadtxt(out / f"{stem}_peaks.csv", delimiter=",", skiprows=1,
                       usecols=(1, 2), ndmin=2)
    assert np.all((peaks >= -0.5) & (peaks <= np.array(image_shape) - 0.5))
    return labels, annotations, peaks


def test_predict_folder_with_unreadable_and_16_bit_images(tmp_path, tiny48_checkpoint,
                                                           image_folder, capsys):
    out = tmp_path / "out"
    status = main(["predict", str(image_folder), "--model", str(tiny48_checkpoint),
                   "--out", str(out), "--proposals", "prm", "--save-prms", "npy"])
    errors = capsys.readouterr().err
    assert status == 1  # one image failed, the others were written
    assert "broken.png" in errors and "failed" in errors
    assert "3 image(s) written" in errors and "1 failed" in errors
    shapes = {path.stem: io.read_image(path).shape[:2] for path in image_folder.iterdir()
              if path.suffix in (".jpg", ".tif")}
    assert io.read_image(image_folder / "gray16.tif").dtype == np.uint16
    assert sorted(shapes) == ["chelsea", "coffee", "gray16"]
    for stem, shape in shapes.items():
        labels, annotations, peaks = check_outputs(out, stem, shape, ["cat", "dog"])
        assert len(annotations) > 0, f"{stem}: no instances"
        prms = np.load(out / f"{stem}_prms.npy")
        assert prms.shape == (len(peaks),) + shape
        sums = prms.sum(axis=(1, 2))  # each PRM sums to 1, or is empty
        assert np.all(np.isclose(sums, 1.0, rtol=1e-4) | (sums == 0)) and sums.max() > 0.99
    assert not list(out.glob("broken*")) and not list(out.glob(".*"))


def test_predict_prints_its_notes_with_the_option_names(tmp_path, tiny48_checkpoint, capsys):
    """``napari-prm predict`` printed the library's notes as Python says them, "lower peak_threshold
    to see it", "(max_peaks=1) ... or max_peaks", though its options are --peak-threshold and
    --max-peaks. (Prediction.notes keep the library's names, as Python users give them.)"""
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "cat.png", data.chelsea()[::8, ::8])
    predict = ["predict", str(tmp_path / "cat.png"), "--model", str(tiny48_checkpoint), "--device", "cpu",
               "--class-threshold", "-1000", "--proposals", "none"]
    capsys.readouterr()
    assert main([*predict, "--out", str(tmp_path / "high"), "--peak-threshold", "1e6"]) == 0
    error = capsys.readouterr().err
    assert re.search(r"cat\.png: no peak reached the peak threshold 1e\+06; the strongest was \S+ \((cat|dog)\): "
                     r"lower --peak-threshold to see it", error), error
    assert "peak_threshold" not in error
    assert main([*predict, "--out", str(tmp_path / "capped"), "--peak-threshold", "-1000", "--max-peaks", "1"]) == 0
    error = capsys.readouterr().err
    assert re.search(r"cat\.png: \d+ peaks passed the thresholds; the strongest was kept \(--max-peaks 1\)\. "
                     r"Raise the thresholds or --max-peaks\.", error), error
    assert "max_peaks" not in error and "class_threshold" not in error


def test_predict_keeps_existing_outputs_unless_overwrite(tmp_path, tiny48_checkpoint, capsys):
    out = tmp_path / "out"
    image = tmp_path / "sample3.jpg"
    write_half_size("coffee", image)
    image = str(image)
    assert main(["predict", image, "--model", str(tiny48_checkpoint), "--out", str(out),
                 "--proposals", "prm"]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == sorted([f"sample3{s}" for s in OUTPUT_SUFFIXES] + ["sample3.manifest.json",
                                                                               "summary.csv"])
    (out / "sample3_peaks.csv").write_text("kept")
    capsys.readouterr()
    # a different setting would change the outputs; without --overwrite nothing is touched
    assert main(["predict", image, "--model", str(tiny48_checkpoint), "--out", str(out),
                 "--proposals", "none"]) == 0
    printed = capsys.readouterr().err
    assert ("1 skipped: outputs were made with other settings (proposals: 'prm' -> None) (sample3.jpg); "
            "use --overwrite to replace them") in printed
    assert (out / "sample3_peaks.csv").read_text() == "kept"
    assert (out / "sample3_instances.json").read_bytes() == first["sample3_instances.json"]
    assert main(["predict", image, "--model", str(tiny48_checkpoint), "--out", str(out),
                 "--proposals", "none", "--overwrite"]) == 0
    assert (out / "sample3_peaks.csv").read_bytes() == first["sample3_peaks.csv"]
    coco = json.loads((out / "sample3_instances.json").read_text())
    assert coco["annotations"] == [] and coco["images"][0]["file_name"] == "sample3.jpg"



def test_predict_and_evaluate_say_when_a_checkpoint_has_no_calibrated_thresholds(tmp_path, tiny48_checkpoint,
                                                                                  capsys):
    """A checkpoint trained with --no-calibrate (or interrupted while calibrating) ran at class
    threshold 0 and no peak threshold without a word, and --help said the default was "the
    model's calibrated value"."""
    import imageio.v3 as iio

    image = tmp_path / "cat.png"
    iio.imwrite(image, data.chelsea()[::8, ::8])
    iio.imwrite(tmp_path / "dog.png", data.coffee()[::8, ::8])
    (tmp_path / "labels.csv").write_text("image,labels\ncat.png,cat\ndog.png,dog\n")
    note = (f"note: {tiny48_checkpoint} has no calibrated thresholds, so class threshold 0 and no peak threshold "
            f"apply: 'napari-prm calibrate DATASET --model {tiny48_checkpoint}' chooses them from images with "
            "image-level labels; or give --class-threshold and --peak-threshold")
    predict = ["predict", str(image), "--model", str(tiny48_checkpoint), "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(predict) == 0
    assert note in capsys.readouterr().err.splitlines()
    assert main(["evaluate", "--model", str(tiny48_checkpoint), str(tmp_path / "labels.csv")]) == 0
    assert note in capsys.readouterr().err.splitlines()
    assert main(predict + ["--overwrite", "--class-threshold", "0.5"]) == 0
    assert (f"note: {tiny48_checkpoint} has no calibrated thresholds, so no peak threshold applies: "
            in capsys.readouterr().err)
    # thresholds given, the original preset's own, or a calibrated model: nothing to say
    for options in (["--class-threshold", "0.5", "--peak-threshold", "1"], ["--preset", "original"]):
        assert main(predict + ["--overwrite"] + options) == 0
        assert "calibrated" not in capsys.readouterr().err
    calibrated = load_model(tiny48_checkpoint)
    calibrated.settings.update(class_threshold=0.1, peak_threshold=0.2)
    save_model(calibrated, tmp_path / "calibrated.pt")
    assert main(predict[:3] + [str(tmp_path / "calibrated.pt"), "--out", str(tmp_path / "out2")]) == 0
    assert "calibrated" not in capsys.readouterr().err

def test_predict_with_proposal_folder_classes_and_prm_tiff(tmp_path, tiny48_checkpoint, shared_data):
    """MCG proposals of the original demo are found by the image's stem."""
    demo = shared_data / "prm_demo"
    out = tmp_path / "out"
    status = main(["predict", str(demo / "sample4.jpg"), "--model", str(tiny48_checkpoint),
                   "--out", str(out), "--proposals", str(demo), "--classes", "dog",
                   "--save-prms", "tiff", "--peak-batch-size", "4"])
    assert status == 0
    shape = io.read_image(demo / "sample4.jpg").shape[:2]
    _, annotations, peaks = check_outputs(out, "sample4", shape, ["cat", "dog"])
    assert annotations and all(a["category_id"] == 2 for a in annotations)
    assert tifffile.imread(out / "sample4_prms.tif").shape == (len(peaks),) + shape


def test_predict_reports_missing_inputs_and_bad_model(tmp_path, tiny48_checkpoint, capsys):
    assert main(["predict", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o"),
                 "--model", str(tiny48_checkpoint)]) == 2
    errors = capsys.readouterr().err
    assert "nope.png: no such file" in errors and "no images" in errors
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    image = tmp_path / "chelsea.png"
    write_half_size("chelsea", image)
    assert main(["predict", str(image), "--out", str(tmp_path / "o"),
                 "--model", str(bad)]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert main(["predict", str(image), "--out", str(tmp_path / "o"),
                 "--model", str(tiny48_checkpoint), "--classes", "zebra"]) == 2
    assert "no class ['zebra']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "demo"])
def test_tta_with_the_fast_prm_mode_is_refused_before_anything_runs(command, tmp_path, tiny48_checkpoint,
                                                                    capsys):
    """--tta and --prm-mode fast cannot go together: a usage error (exit status 2) naming both,
    not a failure of every image, each tried twice (predict: exit status 1 and a summary.csv of
    failed rows) or an error after the model and dataset loaded (evaluate, demo)."""
    image = tmp_path / "chelsea.png"
    write_half_size("chelsea", image)
    out = tmp_path / "out"
    argv = {"predict": ["predict", str(image), "--out", str(out)],
            "evaluate": ["evaluate", str(tmp_path / "labels.csv")],
            "demo": ["demo", str(image), "--out", str(out), "--no-view"]}[command]
    (tmp_path / "labels.csv").write_text("image,labels\nchelsea.png,cat\n")
    with pytest.raises(SystemExit) as exit_status:
        main(argv + ["--model", str(tiny48_checkpoint), "--tta", "--prm-mode", "fast"])
    assert exit_status.value.code == 2
    error = capsys.readouterr().err
    assert "--tta" in error and "--prm-mode fast" in error and "cannot be combined" in error
    assert not out.exists()


def test_collect_images_sorted_unique_and_same_stems(tmp_path, image_folder):
    images, problems = collect_images([image_folder, image_folder / "coffee.jpg",
                                       tmp_path])
    assert [p.name for p in images] == ["broken.png", "chelsea.jpg", "coffee.jpg",
                                        "gray16.tif"]
    assert problems == [f"{tmp_path}: no images (.png, .jpg, .jpeg, .tif, .tiff, .bmp, .gif, .webp) "
                        "in this folder"]
    from napari_prm.batch import output_stems

    assert output_stems([Path("a/x.png"), Path("b/x.png"), Path("x.tif")]) == ["x", "x_2", "x_3"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option_with_its_default(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    options = text[text.index("options:"):]
    subparser = build_parser()._subparsers._group_actions[0].choices[command]
    flags = [a.option_strings[-1] for a in subparser._actions
             if a.option_strings and a.dest != "help"]
    assert len(flags) >= 2
    starts = [options.index(f" {flag} ") for flag in flags]
    assert starts == sorted(starts)
    for flag, start, end in zip(flags, starts, starts[1:] + [len(options)]):
        action = next(a for a in subparser._actions if flag in a.option_strings)
        if not action.required:
            assert "(default" in options[start:end], f"{command} {flag}: no default shown"


def test_train_and_evaluate_defaults_match_the_library():
    """The command line shows the defaults the library functions really use."""
    from napari_prm.evaluate import evaluate
    from napari_prm.train import train

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for function, command in ((train, "train"), (evaluate, "evaluate")):
        defaults = vars(choices[command].parse_args(["data.json"]))
        for name, parameter in inspect.signature(function).parameters.items():
            if name in defaults and parameter.default is not inspect.Parameter.empty:
                expected = parameter.default
                value = defaults[name]
                if isinstance(expected, tuple):
                    value = tuple(value)
                if name == "out":
                    value = str(value)
                assert value == expected, f"{command} --{name}: {value!r} != {expected!r}"


def test_python_m_napari_prm_and_usage_errors(capsys):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    result = subprocess.run([sys.executable, "-m", "napari_prm", "--version"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("napari-prm ")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "sample0.jpg"])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_an_unknown_option_of_a_command_is_reported_with_the_commands_usage(capsys):
    """An unknown option after the command was reported with the top-level usage, 'usage: napari-prm
    [-h] [--version] [--debug] COMMAND ...' and 'napari-prm: error:', not the command's. One before
    the command is still the top level's."""
    cases = {
        ("refine", "ds", "--model", "m.pt", "--out", "r.pt", "--proposals", "prm"):
            ("usage: napari-prm refine ", "napari-prm refine: error: unrecognized arguments: --proposals prm"),
        ("--debug", "predict", "x.png", "--out", "o", "--bogus=1"):
            ("usage: napari-prm predict ", "napari-prm predict: error: unrecognized arguments: --bogus=1"),
        ("--bogus", "predict", "x.png", "--out", "o"):
            ("usage: napari-prm [-h]", "napari-prm: error: unrecognized arguments: --bogus"),
    }
    for argv, (usage, message) in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and error.startswith(usage), (argv, error)
        assert error.rstrip().endswith(message), (argv, error)


def test_train_then_evaluate_on_coco128(tmp_path, capsys, shared_data):
    """A tiny network trains one epoch on image-level labels of coco128, then is evaluated."""
    train_json = shared_data / "coco128/annotations/instances_train2017.json"
    api = COCO(str(train_json))
    bear, person = api.getCatIds(catNms=["bear"]), api.getCatIds(catNms=["person"])
    chosen = api.getImgIds(catIds=bear) + api.getImgIds(catIds=person)[:5]
    rows = ["image,labels"]
    for image_id in chosen:
        names = {api.loadCats(a["category_id"])[0]["name"]
                 for a in api.loadAnns(api.getAnnIds(imgIds=[image_id]))}
        rows.append(f"{api.loadImgs(image_id)[0]['file_name']},{';'.join(sorted(names))}")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("\n".join(rows) + "\n")
    checkpoint = tmp_path / "model.pt"
    status = main(["train", str(labels_csv), "--image-dir", str(shared_data / "coco128/train2017"),
                   "--classes", "person", "--classes", "bear", "--out", str(checkpoint),
                   "--backbone", "tiny", "--epochs", "1", "--batch-size", "4",
                   "--input-size", "48", "48", "--device", "cpu", "--val-fraction", "0.5"])
    assert status == 0
    errors = capsys.readouterr().err
    assert "training on 3 images, 3 held out for validation and calibration; 2 classes" in errors
    assert "epoch 1/1: loss" in errors
    # the only warning: thresholds chosen on 3 images are not to be relied on
    assert [line for line in errors.splitlines() if "warning" in line] == [
        line for line in errors.splitlines() if line.startswith("warning: the thresholds were calibrated on only 3")]
    assert "warning: the thresholds were calibrated on only 3 image(s)" in errors
    assert "validation mAP" in errors and "calibrated the thresholds on 3 held-out image(s)" in errors
    model = load_model(checkpoint)
    assert model.class_names == ["person", "bear"] and model.backbone == "tiny"
    assert model.settings["calibration"]["images"] == 3

    # calibrate again, on every listed image, into a new file; the training state stays resumable. The
    # labels of classes other than --classes' are images of none of them, as train took them, when asked
    calibrated = tmp_path / "calibrated.pt"
    status = main(["calibrate", str(labels_csv), "--image-dir", str(shared_data / "coco128/train2017"),
                   "--model", str(checkpoint), "--out", str(calibrated), "--device", "cpu"])
    assert status == 2 and not calibrated.exists()
    assert (f"napari-prm calibrate: error: {labels_csv}: 5 images ('backpack' at {labels_csv}:4, {labels_csv}:5, "
            f"{labels_csv}:7; 'bicycle' at {labels_csv}:3;") in capsys.readouterr().err
    status = main(["calibrate", str(labels_csv), "--image-dir", str(shared_data / "coco128/train2017"),
                   "--model", str(checkpoint), "--out", str(calibrated), "--device", "cpu", "--allow-other-classes"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "on 6 image(s)" in printed and printed.count("class threshold") == 2  # plain and TTA
    again = load_model(calibrated)
    assert again.settings["calibration"]["images"] == 6 and "tta_calibration" in again.settings
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key])
    status = main(["calibrate", str(labels_csv), "--image-dir", str(shared_data / "coco128/train2017"),
                   "--model", str(checkpoint), "--held-out", "--no-tta", "--device", "cpu", "--allow-other-classes"])
    assert status == 0 and "on 3 image(s)" in capsys.readouterr().out

    report = tmp_path / "results.json"
    # the first two val images show a person and a bear
    status = main(["evaluate", str(shared_data / "coco128/annotations/instances_val2017.json"),
                   "--model", str(checkpoint), "--max-images", "2", "--proposals", "none",
                   "--json", str(report)])
    assert status == 0
    output = capsys.readouterr().out
    assert "| classification mAP |" in output and "| bear |" in output
    results = json.loads(report.read_text())
    assert results["num_images"] == 2 and results["classes"] == ["person", "bear"]
    assert results["mAP_r"] is None and results["settings"]["proposals"] is None


def test_evaluate_reports_unknown_dataset(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.json"), "--model", "imagenet"]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_demo_writes_results_without_display(tmp_path, tiny48_checkpoint, capsys):
    out = tmp_path / "demo"
    shape = write_half_size("coffee", tmp_path / "cows.jpg")
    assert main(["demo", str(tmp_path / "cows.jpg"), "--model", str(tiny48_checkpoint),
                 "--out", str(out), "--proposals", "prm", "--no-view"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("top classes: ")
    assert str(out / "cows_instances.json") in printed.splitlines()
    check_outputs(out, "cows", shape, ["cat", "dog"])


def test_predict_of_a_damaged_tiff_names_it_without_tifffiles_own_lines(tmp_path, tiny48_checkpoint, capsys,
                                                                         caplog):
    """A TIFF whose header points to no page failed with "unexpected IndexError: index 0 out of range(0)",
    after three lines of tifffile's log ("<tifffile.TiffPages @1651663207> invalid offset to first page
    ..."); the failure names the file and what to do, and tifffile's lines show with --debug only."""
    (tmp_path / "images").mkdir()
    broken = tmp_path / "images" / "broken.tif"
    broken.write_bytes(b"II*\x00garbage" * 10)
    out = tmp_path / "out"
    assert main(["predict", str(broken), "--out", str(out), "--model", str(tiny48_checkpoint)]) == 1
    error = capsys.readouterr().err
    assert (f"{broken}: failed: cannot read image {broken}: it holds no image: the TIFF header points to no "
            "readable page (a damaged file, or not a TIFF): copy or save it again") in error
    assert "tifffile" not in error and "IndexError" not in error
    assert not [record for record in caplog.records if record.name == "tifffile"]  # logged nowhere
    assert main(["predict", str(broken), "--out", str(out), "--model", str(tiny48_checkpoint), "--debug",
                 "--overwrite"]) == 1
    assert any("invalid offset to first page" in record.getMessage() for record in caplog.records
               if record.name == "tifffile")


def test_demo_of_a_stack_points_to_predict(tmp_path, capsys):
    """`demo` of a 16-bit ImageJ z-stack said only "save one 2-D plane", though `predict` and the
    plugin run such a stack plane by plane; it says so. Another refusal (channels) gets no such hint."""
    planes = np.random.default_rng(0).integers(0, 4000, (3, 24, 20), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "c.tif", planes[:2], imagej=True, metadata={"axes": "CYX"})
    assert main(["demo", str(tmp_path / "z.tif"), "--out", str(tmp_path / "out"), "--no-view"]) == 2
    error = capsys.readouterr().err
    assert f"cannot read image {tmp_path / 'z.tif'}: " in error and "holds 3 z-planes" in error
    assert error.rstrip().endswith("demo runs one 2-D image: 'napari-prm predict' runs a stack plane by plane, "
                                   "and napari's Peak Response Maps widget runs its planes (open the file in napari)")
    assert main(["demo", str(tmp_path / "c.tif"), "--out", str(tmp_path / "out"), "--no-view"]) == 2
    error = capsys.readouterr().err
    assert "2 channels" in error and "napari-prm predict" not in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_counts_in_the_singular(tmp_path, capsys):
    """`napari-prm demo` printed "4 peaks, 1 instances" (the widget likewise)."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-view", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("; 4 peaks, 1 instance")


@pytest.mark.slow
def test_predict_and_demo_with_the_builtin_imagenet_model(tmp_path, capsys, shared_data):
    """The real model: one instance per husky in sample4, and Chelsea is an Egyptian cat."""
    demo = shared_data / "prm_demo"
    out = tmp_path / "out"
    # the malamute peaks above 10 (27.3, 18.6, 18.3 at sub-pixel factor 8): two on one dog
    # choose the same instance and merge, one per dog remains
    assert main(["predict", str(demo / "sample4.jpg"), "--out", str(out), "--device", "cpu",
                 "--model", "imagenet", "--classes", "malamute", "--peak-threshold", "10"]) == 0
    shape = io.read_image(demo / "sample4.jpg").shape[:2]
    labels, annotations, peaks = check_outputs(out, "sample4", shape, None)
    assert len(peaks) == 3 and len(annotations) == 2
    api = COCO(str(out / "sample4_instances.json"))
    assert {api.loadCats(a["category_id"])[0]["name"] for a in annotations} == {"malamute"}
    # every peak lies in an instance, and both instances hold a peak
    at_peaks = labels[tuple(np.round(peaks).astype(int).T)]
    assert at_peaks.min() > 0 and len(set(at_peaks.tolist())) == 2

    capsys.readouterr()
    # With its calibrated defaults the 1000-class space keeps at most 3 peaks on Chelsea, all Egyptian cat.
    assert main(["demo", "--out", str(out), "--no-view", "--device", "cpu", "--model", "imagenet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("top classes: Egyptian cat")
    peaks = int(re.search(r"(\d+) peaks?, ", printed).group(1))
    assert 1 <= peaks <= 3
    api = COCO(str(out / "chelsea_instances.json"))
    assert len(api.getCatIds()) == 1000
    annotations = api.loadAnns(api.getAnnIds())
    assert annotations
    assert {api.loadCats(a["category_id"])[0]["name"] for a in annotations} == {"Egyptian cat"}
    # the default model is the VOC label space: Chelsea is a cat
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path / "voc"), "--no-view", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("top classes: cat")
    api = COCO(str(tmp_path / "voc" / "chelsea_instances.json"))
    assert len(api.getCatIds()) == 19
    assert {api.loadCats(a["category_id"])[0]["name"] for a in api.loadAnns(api.getAnnIds())} == {"cat"}
    # the built-in image is written beside its results, under the name the COCO JSON gives it
    (entry,) = api.dataset["images"]
    np.testing.assert_array_equal(io.read_image(tmp_path / "voc" / entry["file_name"]), data.chelsea())


def test_bench_prints_and_writes_a_markdown_table(tmp_path, tiny48_checkpoint, capsys):
    report = tmp_path / "reports" / "today" / "bench.md"  # missing folders are created, as predict's
    assert main(["bench", "--model", str(tiny48_checkpoint), "--size", "32", "--peaks", "2",
                 "--device", "cpu", "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "| input | 32×32, 2 peaks |" in printed and "| retrieval:" in printed
    assert report.read_text(encoding="utf-8") == printed


def test_demo_without_display_writes_and_says_so(tmp_path, tiny48_checkpoint, capsys,
                                                monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    image = tmp_path / "sample1.jpg"
    write_half_size("coffee", image)
    assert main(["demo", str(image), "--model", str(tiny48_checkpoint),
                 "--out", str(tmp_path), "--proposals", "none", "--view"]) == 0
    assert "no display available" in capsys.readouterr().err
    assert (tmp_path / "sample1_instances.json").is_file()
    # without --view (README's command on a machine without a display) it says so too
    assert main(["demo", str(image), "--model", str(tiny48_checkpoint),
                 "--out", str(tmp_path / "again"), "--proposals", "none"]) == 0
    assert "no display available: results written, napari not opened" in capsys.readouterr().err
    # and demo's --proposals help names no option demo lacks
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--recursive" not in capsys.readouterr().out


def test_demo_layers_are_the_widgets(make_napari_viewer, qtbot, prm_config, small_cat,
                                     tiny48_checkpoint):
    """``napari-prm demo`` shows the layers a run of the widget makes, names and contents."""
    from napari_prm import PRMPredictor
    from napari_prm.cli import show_in_viewer

    model = load_model(tiny48_checkpoint)
    predictor = PRMPredictor(model, proposals="prm")  # as the demo makes it
    predictor.set_image(small_cat)
    prediction = predictor.predict()
    assert len(prediction.instances) > 0
    demo_viewer = make_napari_viewer()
    demo_widget = show_in_viewer(demo_viewer, small_cat, prediction, "cat", model, predictor=predictor,
                                 model_choice=str(tiny48_checkpoint), proposals="prm")
    # the demo's forward pass serves the widget: Re-threshold works at once
    qtbot.waitUntil(lambda: demo_widget.classes_loaded, timeout=60_000)
    assert demo_widget.model.value == str(tiny48_checkpoint.resolve())
    assert demo_widget.rethreshold_button.isEnabled()

    viewer = make_napari_viewer()
    viewer.add_image(small_cat, name="cat")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    widget.select_model(str(tiny48_checkpoint))
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=60_000)
    widget.proposals.value = "prm"
    assert widget.run() is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)

    names = [layer.name for layer in viewer.layers]
    assert names == ["cat", "cat PRMs", "cat instances", "cat peaks"]
    assert [layer.name for layer in demo_viewer.layers] == names
    for mine, theirs in zip(demo_viewer.layers, viewer.layers):
        assert type(mine) is type(theirs)
        np.testing.assert_allclose(np.asarray(mine.data), np.asarray(theirs.data), rtol=1e-5)
        if hasattr(mine, "features"):
            assert mine.features.equals(theirs.features), mine.name
        # the same metadata, each viewer's marker naming its own image layer
        assert _marked_for(mine, demo_viewer) == _marked_for(theirs, viewer)
        assert list(mine.scale) == list(theirs.scale)
    # the demo's layers are the widget's to correct
    instances = demo_viewer.layers["cat instances"]
    instances.selected_label = int(instances.features["label"].iloc[0])
    assert demo_widget.correction.delete_selected()


def _marked_for(layer, viewer) -> dict:
    """``layer``'s metadata, its plugin marker's image id checked against ``viewer``'s image and
    left out (two viewers' image layers have different ids)."""
    metadata = dict(layer.metadata)
    marker = dict(metadata.get("napari_prm", {}))
    if "image_id" in marker:
        assert marker.pop("image_id") == str(viewer.layers[marker["image_layer"]].unique_id)
    return {**metadata, "napari_prm": marker}


def test_train_resume_refuses_options_that_ask_for_another_recipe(tmp_path, capsys):
    """``--resume`` continues the stored recipe: ``--input-size 64 64`` on a 32×32 run was
    ignored without a word (the model stayed 32×32)."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            iio.imwrite(tmp_path / "data" / name / f"{i}.png", image[i * 20:i * 20 + 64, :64])
    out = tmp_path / "run.pt"
    start = ["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny",
             "--batch-size", "2", "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate",
             "--device", "cpu"]
    assert main(start + ["--epochs", "1"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    status = main(["train", str(tmp_path / "data"), "--out", str(out), "--resume", "--epochs", "2",
                   "--input-size", "64", "64", "--no-hflip", "--lr", "0.01", "--model", "imagenet"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert "--input-size 64 64 (the run's: --input-size 32 32)" in error
    assert "--no-hflip (the run's: --hflip)" in error
    assert "--model imagenet" in error and "--lr" not in error  # 0.01 is the run's own
    assert out.read_bytes() == before
    # the same command line as the run's, plus --resume, goes on
    # an option given at its parser default is still an option given: 448 448 is not the run's 32 32
    for asked in (["--input-size", "448", "448"], ["--input", "448", "448"]):
        status = main(["train", str(tmp_path / "data"), "--out", str(out), "--resume", "--epochs", "2"] + asked)
        assert status == 2
        assert "--input-size 448 448 (the run's: --input-size 32 32)" in capsys.readouterr().err
        assert out.read_bytes() == before
    assert main(start + ["--epochs", "2", "--resume"]) == 0
    assert "epoch 2/2" in capsys.readouterr().err
    assert load_model(out).input_size == (32, 32)



def test_train_base_model_and_resumed_checkpoint_are_checked_before_anything_runs(tmp_path, capsys,
                                                                                   tiny48_checkpoint):
    """``--model imagenet-voc --backbone tiny`` trained the built-in EfficientNet-Lite0 and
    dropped ``--backbone`` without a word; a truncated ``--model`` checkpoint, and a ``--resume``
    checkpoint that does not exist or cannot be read, were reported after the dataset was read and
    'training on N images' said, without naming the option."""

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(tiny48_checkpoint).read_bytes()[:5000])
    out = tmp_path / "run.pt"
    train = ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1", "--batch-size", "2",
             "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    capsys.readouterr()
    refused = {
        ("--model", "imagenet-voc", "--backbone", "tiny"):
            "--backbone tiny and --model imagenet-voc ask for different models: --model fine-tunes the built-in "
            "model, an efficientnet_lite0, and a run has one backbone; drop --backbone (fine-tuning keeps the "
            "model's backbone), or drop --model to start a new tiny model",
        ("--model", "tiny", "--backbone", "resnet50"):
            "--backbone resnet50 and --model tiny ask for different models: --model names a new model's backbone",
        ("--model", str(tiny48_checkpoint), "--backbone", "efficientnet_lite0"):
            "--model fine-tunes a checkpoint of backbone tiny, and a run has one backbone",
        ("--model", str(truncated)): f"--model: cannot read checkpoint {truncated}: it is truncated",
        ("--resume", str(tmp_path / "none.pt")):
            f"--resume: checkpoint {tmp_path / 'none.pt'} does not exist: name the run's checkpoint, or start a "
            "new run without --resume",
        ("--resume", str(truncated)): f"--resume: cannot read checkpoint {truncated}: it is truncated",
        ("--resume", str(tmp_path / "data")): f"--resume: {tmp_path / 'data'} is a folder, not a checkpoint",
    }
    for options, message in refused.items():
        assert main(train + list(options)) == 2, options
        error = capsys.readouterr().err
        assert error.startswith("napari-prm train: error: --") and message in error, (options, error)
        assert "training on" not in error and not out.exists()
    # the same backbone as the model's, given or not, trains
    assert main(train + ["--model", str(tiny48_checkpoint), "--backbone", "tiny"]) == 0
    assert load_model(out).backbone == "tiny"
    assert main(train + ["--model", "tiny", "--backbone", "tiny", "--overwrite"]) == 0


def test_train_fine_tunes_the_model_checkpoint_it_checked(tmp_path, capsys, monkeypatch, tiny48_checkpoint):
    """``train --model CKPT`` read the checkpoint to check it before the dataset was read, and again
    to fine-tune it: a file replaced meanwhile (a new version copied over it, a sync) trained a
    model other than the one checked. The file is read once; the run fine-tunes what was checked."""
    from napari_prm import cli

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    base = tmp_path / "base.pt"
    shutil.copyfile(tiny48_checkpoint, base)
    torch.manual_seed(1)
    other = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(48, 48)),
                       tmp_path / "other.pt")
    real_load_dataset = cli._load_dataset

    def load_dataset_then_replace_base(*args, **kwargs):
        dataset = real_load_dataset(*args, **kwargs)
        shutil.copyfile(other, base)  # after --model's check, before training starts
        return dataset

    monkeypatch.setattr(cli, "_load_dataset", load_dataset_then_replace_base)
    out = tmp_path / "run.pt"
    # a frozen backbone (--backbone-lr-mult 0) keeps the weights it starts from
    assert main(["train", str(tmp_path / "data"), "--model", str(base), "--out", str(out), "--epochs", "1",
                 "--batch-size", "2", "--backbone-lr-mult", "0", "--val-fraction", "0", "--no-calibrate",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    trained = load_model(out).network.fcn.features.state_dict()
    checked = load_model(tiny48_checkpoint).network.fcn.features.state_dict()
    replaced = load_model(other).network.fcn.features.state_dict()
    assert any(not torch.equal(checked[name], replaced[name]) for name in checked)
    for name, tensor in checked.items():
        assert torch.equal(trained[name], tensor), name


def test_train_model_without_input_size_keeps_the_models_size(tmp_path, capsys, tiny48_checkpoint):
    """``train --model CKPT`` without ``--input-size`` trained at the parser's 448×448 and wrote that
    size into the new model, not the 48×48 the checkpoint was trained and calibrated at. It keeps
    the checkpoint's size; a given ``--input-size`` still wins."""
    _class_folders(tmp_path / "data", ("cat", "coffee"))
    train = ["train", str(tmp_path / "data"), "--model", str(tiny48_checkpoint), "--epochs", "1",
             "--batch-size", "4", "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    assert main(train + ["--out", str(tmp_path / "a.pt")]) == 0, capsys.readouterr().err
    assert load_model(tmp_path / "a.pt").input_size == (48, 48)
    assert main(train + ["--out", str(tmp_path / "b.pt"), "--input-size", "32", "64"]) == 0
    assert load_model(tmp_path / "b.pt").input_size == (32, 64)
    # a checkpoint too small for its backbone is refused before the dataset is read, naming --input-size
    small = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(4, 4)), tmp_path / "s.pt")
    capsys.readouterr()
    assert main(train[:2] + ["--model", str(small), "--out", str(tmp_path / "c.pt"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("napari-prm train: error: the --model's own input size (4, 4) gives class response "
                            "maps of 1×1 cells") and error.rstrip().endswith("(the command line's --input-size)")
    assert "training on" not in error and not (tmp_path / "c.pt").exists()


def test_train_resume_of_a_run_on_chosen_classes_names_them(tmp_path, capsys):
    """A run started with ``--classes`` resumed without them was refused after 'training on ...'
    was said, listing every class of the dataset, without saying how to go on."""
    _class_folders(tmp_path / "data", ("cat", "coffee"))
    out = tmp_path / "run.pt"
    train = ["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--batch-size", "2",
             "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    assert main(train + ["--classes", "coffee", "--classes", "cat", "--epochs", "1"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "2"]) == 2
    error = capsys.readouterr().err
    assert "training on" not in error
    assert error.strip() == (f"napari-prm train: error: --resume: the run in {out} trains 2 classes (coffee, cat), "
                             "the dataset gives 2 classes (cat, coffee): resume with the classes it started with, "
                             "in its order: --classes coffee --classes cat")
    assert out.read_bytes() == before
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "2", "--classes", "coffee",
                 "--classes", "cat"]) == 0
    assert load_model(out).class_names == ["coffee", "cat"]


def test_train_resume_no_calibrate_of_a_calibrated_finished_run_says_to_predict(tmp_path, capsys):
    """``--resume --no-calibrate`` on a run that had finished and calibrated trains no epoch and
    keeps its thresholds, but its last line said to choose them first ('napari-prm calibrate')."""

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    out = tmp_path / "run.pt"
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--epochs", "1",
                 "--batch-size", "2", "--input-size", "32", "32", "--val-fraction", "0", "--device", "cpu"]) == 0
    thresholds = {k: load_model(out).settings[k] for k in ("class_threshold", "peak_threshold")}
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--resume", "--no-calibrate"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"the run in {out} already finished its 1 epoch, and its thresholds are calibrated")
    assert lines[-1] == (f"next: napari-prm predict IMAGES --model {out} --out results/, or choose it in napari's "
                         "Peak Response Maps widget")
    assert {k: load_model(out).settings[k] for k in thresholds} == thresholds
    # an epoch trained since drops them: calibrate first
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--resume", "--no-calibrate",
                 "--epochs", "2"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "next: choose its class and peak thresholds, napari-prm calibrate ")
    assert "class_threshold" not in load_model(out).settings

def test_train_resume_of_a_finished_run_says_it_finished_and_trains_nothing(tmp_path, capsys):
    """``train --resume`` of a run that had finished its epochs (no ``--epochs``) said 'training on
    N images ...', trained nothing and calibrated its thresholds again without a word that the run
    was over. It now says so and how to do more, and leaves the checkpoint as it was; a finished run
    whose calibration was interrupted is calibrated, saying that nothing is left to train."""
    from napari_prm.data import from_folders
    from napari_prm.train import train

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    out = tmp_path / "run.pt"
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--epochs", "1",
                 "--batch-size", "2", "--input-size", "32", "32", "--val-fraction", "0", "--device", "cpu"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    for extra in ([], ["--epochs", "1"]):
        assert main(["train", str(tmp_path / "data"), "--resume", str(out)] + extra) == 0
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [
            f"the run in {out} already finished its 1 epoch, and its thresholds are calibrated: nothing was trained "
            "or calibrated. Nothing is left to do: to train it further, resume with --epochs M, M more than 1; to "
            f"choose its thresholds again, napari-prm calibrate {tmp_path / 'data'} --model {out}",
            f"next: napari-prm predict IMAGES --model {out} --out results/, or choose it in napari's Peak Response "
            "Maps widget"]
        assert out.read_bytes() == before  # not calibrated again
    # finished, its thresholds not chosen (interrupted while calibrating): --resume calibrates them
    other = tmp_path / "uncalibrated.pt"
    stages = []
    result = train(from_folders(tmp_path / "data"), out=other, backbone="tiny", epochs=1, batch_size=2,
                   input_size=(32, 32), val_fraction=0, device="cpu",
                   progress=lambda update: stages.append(update.stage), cancel=lambda: "calibration" in stages)
    assert result.calibration is None and "class_threshold" not in load_model(other).settings
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--resume", str(other)]) == 0
    errors = capsys.readouterr().err
    assert (f"the run in {other} already finished its 1 epoch: nothing to train; calibrating its thresholds on the "
            f"4 training images -> {other}") in errors
    assert "training on" not in errors and "epoch 1/1" not in errors
    assert "class_threshold" in load_model(other).settings


def test_train_resume_keeps_the_runs_no_calibrate_and_base_model(tmp_path, capsys, tiny_checkpoint):
    """The checkpoint's recipe recorded neither ``--no-calibrate`` (a resumed ``--no-calibrate`` run
    calibrated at its end) nor the ``--model`` a run fine-tuned (``--resume --model`` of the very same
    base was refused as another model). Both are recorded: a resume keeps the run's no-calibrate
    (``--calibrate`` asks otherwise), and refuses another ``--model``, naming the run's. A
    checkpoint from before, without them, still resumes (calibrating, as it did)."""
    _class_folders(tmp_path / "data", ("cat", "coffee"))
    out = tmp_path / "run.pt"
    start = ["train", str(tmp_path / "data"), "--out", str(out), "--model", str(tiny_checkpoint), "--batch-size",
             "2", "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    assert main(start + ["--epochs", "1"]) == 0
    config = torch.load(out, weights_only=True)["extra"]["training"]["config"]
    assert config["calibrate"] is False and config["base"] == str(tiny_checkpoint.absolute())
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "2"]) == 0
    errors = capsys.readouterr().err
    assert ("--resume: the run was started with --no-calibrate: its thresholds are not chosen at its end "
            "(--calibrate chooses them)") in errors
    assert "epoch 2/2" in errors and "calibrated the thresholds" not in errors
    assert "class_threshold" not in load_model(out).settings
    assert torch.load(out, weights_only=True)["extra"]["training"]["config"]["calibrate"] is False
    # the same base model is the run's own; another is refused, naming the run's
    before = out.read_bytes()
    other = tmp_path / "other.pt"
    shutil.copy(tiny_checkpoint, other)
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "3", "--model", str(other)]) == 2
    assert (f"--model {other} (the run's: --model {tiny_checkpoint.absolute()})"
            in capsys.readouterr().err)
    assert out.read_bytes() == before
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "3", "--model",
                 str(tiny_checkpoint), "--calibrate"]) == 0
    errors = capsys.readouterr().err
    assert "epoch 3/3" in errors and "calibrated the thresholds on 4 training image(s)" in errors
    assert "class_threshold" in load_model(out).settings
    # a checkpoint from before they were recorded: resumed as it was (calibrated at its end)
    checkpoint = torch.load(out, weights_only=True)
    for key in ("calibrate", "base"):
        del checkpoint["extra"]["training"]["config"][key]
    torch.save(checkpoint, out)
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "4"]) == 0
    errors = capsys.readouterr().err
    assert "epoch 4/4" in errors and "calibrated the thresholds on 4 training image(s)" in errors
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "5", "--model",
                 str(tiny_checkpoint)]) == 2
    assert f"--model {tiny_checkpoint} (the run continues its own model)" in capsys.readouterr().err


def test_a_run_folder_moved_with_its_base_model_still_resumes_with_it(tmp_path, capsys, tiny_checkpoint):
    """The base a run fine-tuned was recorded as its absolute path: the run folder moved (or shared)
    with the base in it, ``--resume --model`` of the base there was refused as another model. A base
    in the run's folder is recorded relative to it (``./models/base.pt``), found where the folder is
    now; one elsewhere stays absolute, and when it has gone, ``--resume --model`` names the path
    recorded. A checkpoint of an absolute base (as before) resumes as it did."""
    from napari_prm.train import TRAINING_STATE_KEY

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "models" / "base.pt")
    recipe = ["--batch-size", "2", "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate",
              "--device", "cpu"]
    assert main(["train", str(tmp_path / "data"), "--out", str(run / "run.pt"), "--model",
                 str(run / "models" / "base.pt"), "--epochs", "1", *recipe]) == 0
    config = torch.load(run / "run.pt", weights_only=True)["extra"][TRAINING_STATE_KEY]["config"]
    assert config["base"] == "./models/base.pt"
    from napari_prm.train import recorded_base, unfinished_run

    moved = tmp_path / "moved"
    shutil.move(run, moved)
    assert recorded_base(config, moved / "run.pt") == str(moved / "models" / "base.pt")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--resume", str(moved / "run.pt"), "--epochs", "2", "--model",
                 str(moved / "models" / "base.pt")]) == 0, capsys.readouterr().err
    assert "epoch 2/2" in capsys.readouterr().err
    model, extra = load_checkpoint(moved / "run.pt")
    extra[TRAINING_STATE_KEY]["config"]["epochs"] = 3  # as a 3-epoch run stopped after its second
    save_model(model, moved / "run.pt", extra=extra)
    from napari_prm.data import from_folders

    assert unfinished_run(moved / "run.pt", from_folders(tmp_path / "data")).base == str(moved / "models" / "base.pt")

    # a base outside the run's folder: its absolute path; gone, --model is refused naming it
    elsewhere = tmp_path / "elsewhere.pt"
    shutil.copy(tiny_checkpoint, elsewhere)
    out = tmp_path / "other" / "run.pt"
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--model", str(elsewhere), "--epochs", "1",
                 *recipe]) == 0
    assert torch.load(out, weights_only=True)["extra"][TRAINING_STATE_KEY]["config"]["base"] == str(elsewhere)
    shutil.move(elsewhere, tmp_path / "renamed.pt")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "2", "--model",
                 str(tmp_path / "renamed.pt")]) == 2
    assert (f"--model {tmp_path / 'renamed.pt'} (the run's: --model {elsewhere}, recorded in {out}, which is not "
            "there: moved, or not shared with the run; the run goes on from its own weights without it)"
            ) in capsys.readouterr().err
    assert main(["train", str(tmp_path / "data"), "--resume", str(out), "--epochs", "2"]) == 0  # without it: on

    # a checkpoint of before, its base in its folder recorded as an absolute path: resumes as it did
    checkpoint = torch.load(moved / "run.pt", weights_only=True)
    checkpoint["extra"][TRAINING_STATE_KEY]["config"]["base"] = str(moved / "models" / "base.pt")
    torch.save(checkpoint, moved / "run.pt")
    assert main(["train", str(tmp_path / "data"), "--resume", str(moved / "run.pt"), "--model",
                 str(moved / "models" / "base.pt")]) == 0


def test_train_resume_goes_on_to_the_runs_own_total_of_epochs(tmp_path, capsys):
    """``train --epochs 3`` stopped after epoch 1, then ``train --resume``: it went on to the
    parser's default 20 epochs, not the run's 3; and ``--resume --epochs 1`` on a run that had
    finished 3 re-calibrated and reported success without training, its history still at 3."""

    from napari_prm.data import from_folders
    from napari_prm.train import train

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    out = tmp_path / "run.pt"
    recipe = {"backbone": "tiny", "batch_size": 2, "input_size": (32, 32), "val_fraction": 0, "device": "cpu"}
    finished = []
    result = train(from_folders(tmp_path / "data"), out=out, epochs=3, calibrate=False, **recipe,
                   progress=lambda update: finished.append(update.epoch) if update.stage == "epoch" else None,
                   cancel=lambda: bool(finished))
    assert result.cancelled and torch.load(out, weights_only=True)["extra"]["training"]["epoch"] == 1
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--resume", "--no-calibrate"]) == 0
    errors = capsys.readouterr().err
    assert "epoch 3/3" in errors and "/20" not in errors
    state = torch.load(out, weights_only=True)["extra"]["training"]
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3] and state["config"]["epochs"] == 3
    # fewer epochs than the run has finished: refused, the checkpoint untouched
    before = out.read_bytes()
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--resume", "--epochs", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"napari-prm train: error: --epochs 1 is fewer than the 3 epochs the run in {out} has "
                     "finished: --epochs is the new total (3 or more)")
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match="epochs 1 is fewer than the 3 epochs the run in"):
        train(from_folders(tmp_path / "data"), out=out, epochs=1, resume=True)
    # in Python, the run's own total again: nothing trained, and its result says so
    result = train(from_folders(tmp_path / "data"), out=out, epochs=3, resume=True)
    assert [h.epoch for h in result.history] == [1, 2, 3] and result.calibration is None
    assert result.notes == [f"the run in {out} already finished its 3 epochs: no epoch was trained (epochs above 3 "
                            "train it further)"]


def test_train_warns_of_a_label_typo_and_of_files_it_leaves_out(tmp_path, capsys):
    """A CSV whose one ``dgo`` made a class of its own, with a BOM and Windows line endings as
    Excel writes it, and a folder dataset with a nested folder and a text file: nothing said."""
    import imageio.v3 as iio

    for number, image in enumerate((data.chelsea(), data.coffee(), data.astronaut(), data.chelsea())):
        iio.imwrite(tmp_path / f"ïmage {number}.PNG", image[:64, :64], extension=".png")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes("\ufeffimage,labels\r\nïmage 0.PNG,cat\r\nïmage 1.PNG,dog\r\nïmage 2.PNG,dgo\r\n"
                         "ïmage 3.PNG,cat;dog\r\n".encode())
    options = ["--out", str(tmp_path / "model.pt"), "--backbone", "tiny", "--epochs", "1", "--batch-size", "2",
               "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    assert main(["train", str(csv_path)] + options) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"warning: class 'dgo' has 1 image ({csv_path}:4): a typo of 'dog' (2 images)?"
    assert lines[1].startswith("training on 4 images") and "3 classes" in lines[1]
    for relative in ("cat/a.png", "cat/2023/b.png", "dog/c.png"):
        (tmp_path / "data" / relative).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(tmp_path / "data" / relative, data.coffee()[:64, :64])
    (tmp_path / "data" / "dog" / "notes.txt").write_text("not an image")
    assert main(["train", str(tmp_path / "data"), "--overwrite"] + options) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"warning: {tmp_path / 'data'}: left out 1 file that is not an image")
    assert lines[0].endswith("or lies in no class folder: dog/notes.txt")
    assert lines[1].startswith("training on 3 images")  # cat/2023/b.png is a cat


def test_train_holds_out_no_only_image_of_a_class_and_warns(tmp_path, capsys):
    """3 images of 3 classes with the default hold-out (the tutorial's folder): one was held out,
    its class had no training image, and calibration on it alone chose nonsense thresholds.
    Now none is held out, a warning says why, and the calibration is on the training images."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee()), ("astronaut", data.astronaut())):
        (tmp_path / "data" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "data" / name / "0.png", image[:64, :64])
    out = tmp_path / "model.pt"
    options = ["--backbone", "tiny", "--epochs", "2", "--batch-size", "2", "--input-size", "32", "32",
               "--device", "cpu"]
    assert main(["train", str(tmp_path / "data"), "--out", str(out)] + options) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (f"training on 3 images, none held out (the thresholds are calibrated on the training "
                        f"images); 3 classes -> {out}")
    assert lines[1].startswith("note: 1 of the dataset's 3 classes ('cat') is a class of the built-in model")
    # said by train() (its warn) once it has the model and the split, before the first epoch
    assert lines[2].startswith("warning: no image is held out for validation (val_fraction asks for 1): "
                               "holding out an image would leave one of its classes without a training "
                               "image")
    assert "'astronaut', 'cat', 'coffee'" in lines[2] and lines[3].startswith("epoch 1/2")
    assert "calibrated the thresholds on 3 training image(s)" in lines
    # the same split on --resume: still none held out
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--resume"] + options[:2]
                + ["--epochs", "3"] + options[4:]) == 0
    errors = capsys.readouterr().err
    assert errors.startswith("training on 3 images, none held out") and "epoch 3/3" in errors
    # calibrate --held-out has no held-out image to use
    assert main(["calibrate", str(tmp_path / "data"), "--model", str(out), "--held-out", "--no-tta",
                 "--device", "cpu"]) == 2
    assert "held no image out: each image is the only one of one of its classes" in capsys.readouterr().err
    # on every image, all 3 of which trained it: the note pointed to --held-out, which has none
    assert main(["calibrate", str(tmp_path / "data"), "--model", str(out), "--no-tta", "--device", "cpu"]) == 0
    assert ("note: 3 of the 3 images calibrated on were used to train " + str(out) + ": thresholds chosen on "
            "images a model has learnt are optimistic (too low for new images); calibrate on images it was not "
            "trained on\n") in capsys.readouterr().err
    # with nothing held out by choice, no warning
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--overwrite", "--val-fraction", "0"]
                + options) == 0
    errors = capsys.readouterr().err
    assert errors.startswith("training on 3 images, none held out (the thresholds are calibrated on the "
                             "training images); 3 classes")
    assert "calibrated the thresholds on 3 training image(s)" in errors and "warning: no image" not in errors


def test_train_says_each_warning_once(tmp_path, capsys):
    """The command line made the split's and the dataset's warnings before training, and after it
    said those of train()'s result whose text it had not said. Now train() says them (its
    ``warn``) before the first epoch, and the calibration's follows its thresholds: each once."""
    from test_train import _a_cat_on_every_image

    (tmp_path / "data").mkdir()
    _a_cat_on_every_image(tmp_path / "data")
    csv, out = tmp_path / "data" / "labels.csv", tmp_path / "model.pt"
    assert main(["train", str(csv), "--out", str(out), "--backbone", "tiny", "--epochs", "1", "--batch-size", "3",
                 "--input-size", "32", "32", "--device", "cpu"]) == 0
    lines = capsys.readouterr().err.replace(str(tmp_path), "TMP").splitlines()  # its name says "warning"
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == len(set(warnings)) == 3
    assert [line for line in lines if "warning" in line.lower() and line not in warnings] == []
    assert warnings[0].startswith("warning: no image is held out for validation (val_fraction asks for 1)")
    assert warnings[1].startswith("warning: every image of TMP/data/labels.csv shows class(es) 'cat': ")
    assert warnings[2].startswith("warning: the thresholds were calibrated on only 3 image(s)")
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1"))
    assert lines.index(warnings[0]) < lines.index(warnings[1]) < first_epoch
    assert lines[lines.index(warnings[2]) - 1].startswith("calibrated on 3 image(s): class threshold ")
    assert lines[-2] == "checkpoint: TMP/model.pt" and lines[-1].startswith("next: ")


def test_train_of_a_new_classifier_notes_the_builtin_classes_of_the_dataset(tmp_path, capsys):
    """A new classifier for 'cat', 'dog' and 'person' learnt cat and dog from scratch without a word,
    where --model imagenet-voc starts from the built-in rows for them. Now a note says so before
    training; a resumed run starts from its own checkpoint: no note."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("dog", data.coffee()), ("person", data.astronaut())):
        (tmp_path / "data" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "data" / name / "0.png", image[:32, :32])
    out = tmp_path / "model.pt"
    options = ["--out", str(out), "--batch-size", "3", "--input-size", "32", "32", "--val-fraction", "0",
               "--no-calibrate", "--device", "cpu"]
    assert main(["train", str(tmp_path / "data"), "--backbone", "tiny", "--epochs", "1"] + options) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("training on 3 images")
    assert lines[1] == ("note: 2 of the dataset's 3 classes ('cat', 'dog') are classes of the built-in model "
                        "'imagenet-voc' (EfficientNet-Lite0): --model imagenet-voc starts from its ImageNet "
                        "classifier rows for them (the others start new), where a new classifier learns every "
                        "class from scratch; that trained to a far higher mAP^r on coco128 (docs/accuracy.md)")
    assert lines[2].startswith("epoch 1/1")
    assert main(["train", str(tmp_path / "data"), "--resume", "--epochs", "2"] + options) == 0
    errors = capsys.readouterr().err
    assert "epoch 2/2" in errors and "note:" not in errors


def test_calibrate_held_out_of_a_checkpoint_from_before_the_split_rule(tmp_path, capsys):
    """A checkpoint from before 'train' kept a training image of every class made the plain random
    split, which may hold out a class's only image. calibrate --held-out refused it ("which images
    it held out is unknown") where train --resume goes on with that split; it now calibrates on the
    images that split held out, as resume does, and notes the class the model was not trained on."""
    import imageio.v3 as iio

    from napari_prm.data import load_dataset
    from napari_prm.train import SPLIT_RULE, TRAINING_STATE_KEY, checkpoint_held_out

    sources = {"cat": [data.chelsea()[:64, :64], data.chelsea()[64:128, 64:128]],
               "coffee": [data.coffee()[:64, :64]], "astronaut": [data.astronaut()[:64, :64]]}
    for name, images in sources.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for number, image in enumerate(images):
            iio.imwrite(tmp_path / "data" / name / f"{number}.png", image)
    dataset = load_dataset(tmp_path / "data")
    # seed 1: the plain random split holds out the only astronaut; this version holds out a cat
    plain_train, plain_held = dataset.split(0.25, seed=1, keep_every_class=False)
    assert dataset.untrained_classes(plain_train) == ["astronaut"]
    assert [p.name for p in plain_held.image_paths] == ["0.png"] and plain_held.labels[0].tolist() == [1, 0, 0]
    train_part, held = dataset.split(0.25, seed=1)
    assert len(held) == 1 and held.labels[0].tolist() == [0, 1, 0]  # classes astronaut, cat, coffee
    model = build_model("tiny", dataset.class_names, pretrained=False, input_size=(32, 32))
    state = {"epoch": 1, "config": {"val_fraction": 0.25, "seed": 1},
             "history": [{"epoch": 1, "loss": 0.5, "seconds": 1.0, "val_ap": {"cat": 1.0}, "val_map": 1.0}]}
    assert checkpoint_held_out(dataset, state).held_out.image_paths == plain_held.image_paths
    assert checkpoint_held_out(dataset, {**state, "split_rule": SPLIT_RULE}).held_out.image_paths == held.image_paths
    calibrate = ["calibrate", str(tmp_path / "data"), "--held-out", "--no-tta", "--device", "cpu"]
    old = tmp_path / "old.pt"
    save_model(model, old, extra={TRAINING_STATE_KEY: state})
    assert main(calibrate + ["--model", str(old)]) == 0
    captured = capsys.readouterr()
    assert "on 1 image(s)" in captured.out
    assert captured.err.startswith(f"note: {old} records no split rule (a checkpoint from before it): the images "
                                   "it held out are those of the plain random split, among them the only image(s) "
                                   "of class(es) 'astronaut', which it was therefore not trained on")
    # the same checkpoint from this version: its held-out cat calibrates, without a note
    new = tmp_path / "new.pt"
    save_model(model, new, extra={TRAINING_STATE_KEY: {**state, "split_rule": SPLIT_RULE}})
    assert main(calibrate + ["--model", str(new)]) == 0
    captured = capsys.readouterr()
    assert "on 1 image(s)" in captured.out and "note:" not in captured.err
    # 3 images of 3 classes: this version holds none out; the old one held one out and validated on it
    for path in (tmp_path / "data" / "cat").glob("1.png"):
        path.unlink()
    assert main(calibrate + ["--model", str(old)]) == 0
    captured = capsys.readouterr()
    assert "on 1 image(s)" in captured.out and "records no split rule" in captured.err
    assert main(calibrate + ["--model", str(new)]) == 2
    assert "held no image out: each image is the only one of one of its classes" in capsys.readouterr().err
    # a split rule of a later version is refused, naming it
    later = tmp_path / "later.pt"
    save_model(model, later, extra={TRAINING_STATE_KEY: {**state, "split_rule": SPLIT_RULE + 1}})
    assert main(calibrate + ["--model", str(later)]) == 2
    assert (f"{later} records split rule {SPLIT_RULE + 1}, which this version does not know"
            in capsys.readouterr().err)


def test_train_resume_of_a_checkpoint_from_before_the_split_rule_says_its_own_split(tmp_path, capsys):
    """``train --resume`` of a checkpoint without a split rule said (and used) this version's split,
    holding out a cat where the checkpoint's run held out the only dog; it now says the run's own."""
    from test_train import _from_before_the_split_rule, _two_cats_a_dog_and_a_bird

    (tmp_path / "data").mkdir()
    _two_cats_a_dog_and_a_bird(tmp_path / "data")
    csv, out = tmp_path / "data" / "labels.csv", tmp_path / "model.pt"
    command = ["train", str(csv), "--out", str(out), "--backbone", "tiny", "--batch-size", "2", "--input-size",
               "32", "32", "--device", "cpu", "--val-fraction", "0.25", "--seed", "0", "--no-calibrate"]
    assert main(command + ["--epochs", "1"]) == 0
    _from_before_the_split_rule(out, "dog")
    capsys.readouterr()
    assert main(["train", str(csv), "--out", str(out), "--resume", "--epochs", "2", "--no-calibrate"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"training on 3 images, 1 held out for validation; 3 classes -> {out}"
    assert lines[1].startswith("warning: the run goes on holding out the images its checkpoint's version held out")
    assert "class(es) 'dog'" in lines[1]
    # the one held-out image shows its class: an AP of 1 whatever the scores is no figure
    assert lines[2].startswith("epoch 2/2: loss ") and lines[2].endswith(
        ", validation mAP not defined (each class is on every held-out image or on none)")


def test_train_warns_of_a_calibration_that_finds_nothing(tmp_path, capsys):
    """Calibration on held-out images that found no class stored the lowest thresholds
    ('classes found 0 %') without a word. Here the one image held out (of the two cats, seed 2)
    is a black one."""
    import imageio.v3 as iio

    sources = {"cat": [data.chelsea()[:64, :64], np.zeros((64, 64, 3), np.uint8)],
               "coffee": [data.coffee()[:64, :64]], "astronaut": [data.astronaut()[:64, :64]]}
    for name, images in sources.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for number, image in enumerate(images):
            iio.imwrite(tmp_path / "data" / name / f"{number}.png", image)
    out = tmp_path / "model.pt"
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--epochs", "2",
                 "--batch-size", "2", "--input-size", "32", "32", "--device", "cpu", "--val-fraction", "0.25",
                 "--seed", "2"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"training on 3 images, 1 held out for validation and calibration; 3 classes -> {out}"
    assert lines[1].startswith("note: 1 of the dataset's 3 classes ('cat') is a class of the built-in model")
    # the one held-out image shows one class: the epoch line said "(1 classes)", then
    # "validation mAP 100.0% (1 class)", an AP of 1 whatever the scores
    assert lines[2].startswith("epoch 1/2: loss ") and lines[2].endswith("validation mAP not defined (each class "
                                                                         "is on every held-out image or on none)")
    assert "calibrated the thresholds on 1 held-out image(s)" in lines
    assert lines[-4].endswith("classes found 0 %)")
    assert lines[-3].startswith("warning: calibration found no class") and "more epochs" in lines[-3]
    # the checkpoint keeps the library's wording (calibrate_checkpoint(...)); the command line says it with its options
    stored, printed = load_model(out).settings["calibration"]["warning"], lines[-3].removeprefix("warning: ")
    assert stored.split(" (")[0] == printed.split(" (")[0] and "calibrate_checkpoint" in stored
    assert "napari-prm calibrate" in printed and "calibrate_checkpoint" not in printed
    # calibrating on the held-out image again says so too
    assert main(["calibrate", str(tmp_path / "data"), "--model", str(out), "--held-out", "--no-tta",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "0 % of the shown classes found" in captured.out
    assert "warning: calibration found no class" in captured.err


def test_train_refuses_an_existing_out_unless_resumed_or_overwritten(tmp_path, capsys):
    """A second ``train ds --out model.pt`` replaced a 2-epoch model after one epoch."""

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    out = tmp_path / "model.pt"
    start = ["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--batch-size", "2",
             "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    assert main(start + ["--epochs", "2"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(start + ["--epochs", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"napari-prm train: error: --out {out} exists: pass --resume to continue it, --overwrite to "
                     "replace it, or choose another path")
    assert out.read_bytes() == before
    # resuming another run into it is refused too: it would replace this one
    other = tmp_path / "other.pt"
    other.write_bytes(before)
    assert main(start + ["--epochs", "3", "--resume", str(other)]) == 2
    assert f"--out {out} exists and is not the checkpoint --resume continues" in capsys.readouterr().err
    assert out.read_bytes() == before
    # --resume continues it
    assert main(start + ["--epochs", "3", "--resume"]) == 0
    assert "epoch 3/3" in capsys.readouterr().err
    assert [h["epoch"] for h in torch.load(out, weights_only=True)["extra"]["training"]["history"]] == [1, 2, 3]
    # --overwrite replaces it with a new run
    assert main(start + ["--epochs", "1", "--overwrite"]) == 0
    assert [h["epoch"] for h in torch.load(out, weights_only=True)["extra"]["training"]["history"]] == [1]


def _tiny_train_run(tmp_path, out):
    """The options of a ``train`` of the tiny network on two class folders written in ``tmp_path``,
    into ``out``, and the environment its subprocess runs in."""
    _class_folders(tmp_path / "data", ("cat", "coffee"))
    options = [str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--batch-size", "1",
               "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    return options, env


def test_train_ctrl_c_names_the_kept_epoch_and_resume_finishes(tmp_path, capsys):
    """Ctrl-C in ``train`` said only "interrupted": not which epoch the checkpoint keeps, nor
    how to go on. It now reads the epoch from the file, as ``refine`` does."""

    out = tmp_path / "interrupted.pt"
    options, env = _tiny_train_run(tmp_path, out)
    returncode, err = interrupt_after_first_checkpoint(
        [sys.executable, "-m", "napari_prm", "train", *options, "--epochs", "100000"], out, env)
    assert returncode == 130, err
    done = torch.load(out, weights_only=True)["extra"]["training"]["epoch"]
    assert 1 <= done < 100000
    assert err.strip().splitlines()[-1] == f"interrupted: {out} keeps epoch {done}; continue with --resume"
    assert "Traceback" not in err
    capsys.readouterr()
    assert main(["train", *options, "--epochs", str(done + 1), "--resume"]) == 0
    assert f"epoch {done + 1}/{done + 1}" in capsys.readouterr().err
    history = torch.load(out, weights_only=True)["extra"]["training"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, done + 2))


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM ends a Windows process without a handler")
def test_train_sigterm_names_the_signal_in_its_last_line(tmp_path):
    """After SIGTERM (``kill``, ``timeout``, a batch system's time limit) ``train`` ended with
    "interrupted: ... keeps epoch N", as after Ctrl-C, where ``predict`` said "terminated by
    SIGTERM: ...". Its last line now names the signal, the rest of the sentence as after Ctrl-C."""
    out = tmp_path / "terminated.pt"
    options, env = _tiny_train_run(tmp_path, out)
    returncode, err = interrupt_after_first_checkpoint(
        [sys.executable, "-m", "napari_prm", "train", *options, "--epochs", "100000"], out, env, signum=signal.SIGTERM)
    assert returncode == 143, err
    done = torch.load(out, weights_only=True)["extra"]["training"]["epoch"]
    assert 1 <= done < 100000
    assert err.strip().splitlines()[-1] == f"terminated by SIGTERM: {out} keeps epoch {done}; continue with --resume"
    assert "Traceback" not in err and "interrupted" not in err, err


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM ends a Windows process without a handler")
def test_train_sigterm_to_its_data_loader_workers_too_stops_as_ctrl_c_does(tmp_path):
    """``timeout``, a batch system's time limit and ``systemctl stop`` send SIGTERM to each process
    of the command, ``--num-workers``' data-loader workers included. torch ends a worker signalled
    by another process than its parent by the signal, and the parent's SIGCHLD handler then raised
    "DataLoader worker (pid N) is killed by signal: Terminated" wherever the run was: train failed
    with that error (exit 1), or, stopping, read the checkpoint as corrupt and said that it was not
    written when it kept an epoch. A worker now ends quietly, and the run stops as on Ctrl-C. The
    workers are signalled first, as a batch system may: the error came at once then."""
    import time

    import imageio.v3 as iio
    import psutil

    root = tmp_path / "data"
    for name, image in (("cat", data.chelsea()), ("cup", data.coffee())):
        (root / name).mkdir(parents=True)
        for i in range(30):  # an epoch long enough to find its workers at work
            iio.imwrite(root / name / f"{i}.png", image[i:i + 64, i:i + 64])
    out = tmp_path / "terminated.pt"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "napari_prm", "train", str(root), "--out", str(out), "--backbone", "tiny",
               "--batch-size", "1", "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate",
               "--device", "cpu", "--num-workers", "2", "--epochs", "100000"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not out.is_file() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert out.is_file(), process.stderr.read() if process.poll() is not None else "no checkpoint in 180 s"
        workers = []
        while not workers and time.monotonic() < deadline and process.poll() is None:
            workers = psutil.Process(process.pid).children()
        assert workers, "no data-loader workers found"
        for worker in workers:
            try:
                worker.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:  # an epoch's end took it meanwhile
                pass
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    done = torch.load(out, weights_only=True)["extra"]["training"]["epoch"]
    last = err.strip().splitlines()[-1]
    assert last == f"terminated by SIGTERM: {out} keeps epoch {done}; continue with --resume", err
    assert "DataLoader" not in err and "Traceback" not in err, err


def test_train_fine_tunes_a_builtin_model(tmp_path, capsys):
    """``train --model imagenet-voc`` said "unknown backbone 'imagenet-voc'"; the built-in model
    is a starting point like a checkpoint (its classifier rows of the dataset's classes are kept)."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("dog", data.astronaut())):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            iio.imwrite(tmp_path / "data" / name / f"{i}.png", image[i * 20:i * 20 + 64, :64])
    out = tmp_path / "voc_tuned.pt"
    assert main(["train", str(tmp_path / "data"), "--model", "imagenet-voc", "--out", str(out), "--epochs", "1",
                 "--batch-size", "2", "--input-size", "64", "64", "--backbone-lr-mult", "0", "--val-fraction", "0",
                 "--no-calibrate", "--device", "cpu"]) == 0, capsys.readouterr().err
    model = load_model(out)
    assert model.backbone == "efficientnet_lite0" and model.class_names == ["cat", "dog"]


def test_refine_resume_refuses_options_that_ask_for_others(tmp_path, capsys):
    """``refine --resume`` took lr, batch size, correction weight and seed from the checkpoint
    and ignored those given with it, without a word."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("dog", data.astronaut())):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            iio.imwrite(tmp_path / "data" / name / f"{i}.png", image[i * 20:i * 20 + 64, :64])
    torch.manual_seed(0)
    model = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(32, 32)),
                       tmp_path / "tiny.pt")
    out = tmp_path / "refined.pt"
    start = ["refine", str(tmp_path / "data"), "--model", str(model), "--out", str(out),
             "--batch-size", "4", "--device", "cpu", "--cache", "none"]
    assert main(start + ["--epochs", "1"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(start + ["--epochs", "2", "--resume", "--lr", "0.5", "--seed", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--lr 0.5 (the run's: --lr 0.002)" in error
    assert "--seed" not in error and "--batch-size" not in error  # the run's own values
    assert out.read_bytes() == before
    assert main(start + ["--epochs", "2", "--resume"]) == 0
    assert "epoch 2/2" in capsys.readouterr().err


def _interrupted_predict(tmp_path, count: int, signum: int, status: int) -> tuple[Path, Path, int]:
    """``napari-prm predict`` on ``count`` images in a child process, sent ``signum`` after its
    first image, must end with exit ``status`` saying what it wrote: the images folder, ``--out``
    and the images written."""
    import imageio.v3 as iio

    images = tmp_path / "images"
    images.mkdir()
    for number in range(count):
        iio.imwrite(images / f"cat {number:02d}.png", data.chelsea()[number:number + 96, :96])
    out = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "napari_prm", "predict", str(images), "--out", str(out), "--device", "cpu"]
    returncode, err = interrupt_after_first_checkpoint(command, out / "cat 00.manifest.json", env, signum=signum)
    assert returncode == status, err
    written = len(list(out.glob("*.manifest.json")))
    assert 1 <= written < count
    stopped = "interrupted" if signum == signal.SIGINT else f"terminated by {signal.Signals(signum).name}"
    assert err.strip().splitlines()[-1] == (
        f"{stopped}: {written} of {count} images written to {out} (summary: "
        f"{out / 'summary.csv'}); the same command goes on with the others")
    assert "Traceback" not in err
    return images, out, written


def test_predict_ctrl_c_says_what_is_written_and_how_to_go_on(tmp_path, capsys):
    """Ctrl-C in ``predict`` said only "napari-prm predict: interrupted": not how many images
    were written, nor that the same command goes on from there."""
    images, out, written = _interrupted_predict(tmp_path, 40, signal.SIGINT, 130)
    statuses = [line.split(",")[1] for line in (out / "summary.csv").read_text().splitlines()[1:]]
    assert statuses.count("written") == written and statuses.count("cancelled") == 40 - written


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM ends a Windows process without a handler")
def test_predict_sigterm_stops_as_ctrl_c_does(tmp_path, capsys):
    """SIGTERM (``kill``, ``timeout``, a batch system's time limit) ended ``predict`` at once:
    no line said what was written, the status was the signal's, and the marker of the image in
    progress stayed, so the next run put that image last and said that it had killed the run
    ("out of memory?"). It now stops as on Ctrl-C, with exit status 143."""
    images, out, written = _interrupted_predict(tmp_path, 12, signal.SIGTERM, 143)
    assert not (out / ".napari-prm-running.json").exists()
    statuses = [line.split(",")[1] for line in (out / "summary.csv").read_text().splitlines()[1:]]
    assert statuses.count("written") == written and statuses.count("cancelled") == 12 - written
    capsys.readouterr()
    assert main(["predict", str(images), "--out", str(out), "--device", "cpu"]) == 0
    resumed = capsys.readouterr().err
    assert "killed" not in resumed
    assert f"{12 - written} image(s) written to {out}, {written} skipped, 0 failed" in resumed


@pytest.mark.skipif(os.name != "posix", reason="no SIGHUP on Windows")
def test_predict_sighup_stops_as_sigterm_does(tmp_path):
    """SIGHUP (the ssh connection dropped, the terminal closed) ended ``predict`` at once, as
    SIGTERM did: no line said what was written, ``summary.csv`` was not updated, and the marker
    of the image in progress stayed (the next run called that image the killer). It now stops
    as on SIGTERM, saying so, with exit status 129 (128 + 1)."""
    images, out, written = _interrupted_predict(tmp_path, 12, signal.SIGHUP, 129)
    assert not (out / ".napari-prm-running.json").exists()
    statuses = [line.split(",")[1] for line in (out / "summary.csv").read_text().splitlines()[1:]]
    assert statuses.count("written") == written and statuses.count("cancelled") == 12 - written


@pytest.mark.skipif(os.name != "posix", reason="no terminals to close on Windows")
def test_predict_stops_as_on_sigterm_when_its_terminal_closes(tmp_path):
    """The terminal that runs ``predict`` closes (the ssh connection drops): the kernel sends
    SIGHUP, and every later write to the terminal fails (EIO). The command stopped as on SIGTERM,
    but its last lines failed there, and it ended with status 1; they go nowhere now, and it
    ends with 129 as on a SIGHUP, having updated ``summary.csv``."""
    import fcntl
    import select
    import termios
    import time

    import imageio.v3 as iio

    images, out = tmp_path / "images", tmp_path / "results"
    images.mkdir()
    for number in range(12):
        iio.imwrite(images / f"cat {number:02d}.png", data.chelsea()[number:number + 96, :96])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    terminal, its_end = os.openpty()

    def on_the_terminal() -> None:  # as a login shell starts a command: the terminal is its own
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen([sys.executable, "-m", "napari_prm", "predict", str(images), "--out", str(out),
                                "--device", "cpu"], env=env, stdin=its_end, stdout=its_end, stderr=its_end,
                               start_new_session=True, preexec_fn=on_the_terminal)
    os.close(its_end)
    try:
        deadline = time.monotonic() + 180
        while not (out / "cat 00.manifest.json").is_file() and time.monotonic() < deadline and process.poll() is None:
            if select.select([terminal], [], [], 0.2)[0]:
                os.read(terminal, 65536)  # what the command shows
        assert (out / "cat 00.manifest.json").is_file(), process.poll()
        time.sleep(1.0)
    finally:
        os.close(terminal)  # the terminal closes
        try:
            status = process.wait(timeout=120)
        finally:
            process.kill()
    assert status == 129
    assert not (out / ".napari-prm-running.json").exists()
    statuses = [line.split(",")[1] for line in (out / "summary.csv").read_text().splitlines()[1:]]
    written = len(list(out.glob("*.manifest.json")))
    assert 1 <= written < 12 and statuses.count("written") == written and statuses.count("cancelled") == 12 - written


@pytest.mark.skipif(os.name != "posix", reason="no SIGHUP on Windows")
@pytest.mark.parametrize("ignored", [False, True])
def test_sighup_stops_a_command_unless_nohup_ignores_it(ignored):
    """A command stops on SIGHUP as on SIGTERM (`Terminated`); started with SIGHUP ignored
    (``nohup``, to outlive the terminal) it is left ignored, and the command runs on."""
    import time

    from napari_prm.cli import Terminated, _quiet_after_ctrl_c

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN if ignored else signal.SIG_DFL)
    try:
        with _quiet_after_ctrl_c() as terminated:
            handler = signal.getsignal(signal.SIGHUP)
            assert (handler is signal.SIG_IGN) == ignored and handler is not signal.SIG_DFL
            try:
                os.kill(os.getpid(), signal.SIGHUP)
                for _ in range(100):  # Python code: the handler runs here
                    time.sleep(0.001)
                stopped = None
            except Terminated as error:
                stopped = error.signum
        assert signal.getsignal(signal.SIGHUP) is (signal.SIG_IGN if ignored else signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGHUP, before)
    assert stopped == (None if ignored else signal.SIGHUP) and terminated == ([] if ignored else [signal.SIGHUP])


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM ends a Windows process without a handler")
def test_sigterm_that_lands_where_python_ignores_errors_still_stops_the_command():
    """Python ignores an exception raised in an object's ``__del__`` or in a fork handler (logging's
    runs as ``train --num-workers`` starts a data-loader worker): a SIGTERM that came there was lost,
    and, the second one being ignored as the first one's cleanup, the command ran on until SIGKILL
    (``timeout -k``, a batch system). It is sent again, and stops the command once out of there."""
    import time

    from napari_prm.cli import Terminated, _quiet_after_ctrl_c

    class Closing:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # Python code: the handler runs here, in __del__
                pass

    stopped_after = None
    with _quiet_after_ctrl_c() as terminated:
        start = time.monotonic()
        try:
            Closing()
            while time.monotonic() - start < 5:
                time.sleep(0.01)
        except Terminated:
            stopped_after = time.monotonic() - start
    assert stopped_after is not None and stopped_after < 1
    assert terminated == [signal.SIGTERM]


def test_predict_on_a_folder_whose_images_are_in_sub_folders_says_so(tmp_path, capsys):
    """A plate/well layout gave "no images in this folder", not why."""
    for well in ("A1", "A2"):
        (tmp_path / "plate" / well).mkdir(parents=True)
        write_half_size("chelsea", tmp_path / "plate" / well / "cat.png")
    (tmp_path / "plate" / ".hidden").mkdir()
    assert main(["predict", str(tmp_path / "plate"), "--out", str(tmp_path / "out")]) == 2
    errors = capsys.readouterr().err
    assert (f"{tmp_path / 'plate'}: no images (.png, .jpg, .jpeg, .tif, .tiff, .bmp, .gif, .webp) in this "
            "folder; its 2 sub-folder(s) (A1, A2) are not searched: pass --recursive, or pass them as inputs") in errors
    assert "no images to process" in errors


def test_calibrate_a_builtin_model_into_a_new_checkpoint(tmp_path, capsys):
    """``calibrate --model imagenet-voc`` said "checkpoint imagenet-voc does not exist", even
    with --out; predict, evaluate and refine take built-in names."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        write_half_size(name, folder / f"{name}.png")
    classes = load_model("imagenet-voc").class_names
    # calibrate needs every class of the model in the dataset: coffee lists the others
    others = ";".join(c for c in classes if c != "cat")
    (folder / "labels.csv").write_text(f"image,labels\nchelsea.png,cat\ncoffee.png,{others}\nrocket.png,\n")
    assert main(["calibrate", str(folder / "labels.csv"), "--model", "imagenet-voc", "--no-tta"]) == 2
    assert "--model imagenet-voc is a built-in model: pass --out" in capsys.readouterr().err
    out = tmp_path / "models" / "calibrated" / "voc.pt"  # missing folders are created (they were refused)
    assert main(["calibrate", str(folder / "labels.csv"), "--model", "imagenet-voc", "--out", str(out),
                 "--no-tta"]) == 0
    assert "on 3 image(s)" in capsys.readouterr().out
    model = load_model(out)
    assert model.class_names == classes and model.settings["calibration"]["images"] == 3
    assert model.settings["class_threshold"] != load_model("imagenet-voc").settings["class_threshold"]


def test_a_builtin_name_means_the_builtin_model_beside_a_file_of_that_name(tmp_path, monkeypatch, capsys):
    """A checkpoint named like a built-in model in the current folder ("imagenet-voc", no suffix)
    took over ``calibrate --model imagenet-voc``, which calibrated the file in place, where
    predict and ``load_model`` meant the built-in model. The name now means the built-in model
    for every command (`napari_prm.model.is_builtin_name`); the file is ``--model ./imagenet-voc``."""
    import imageio.v3 as iio

    from napari_prm.model.checkpoint import model_fingerprint

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "data" / name / "0.png", image[:64, :64])
    torch.manual_seed(0)
    save_model(build_model("tiny", ["cat", "coffee"], pretrained=False, input_size=(32, 32)),
               tmp_path / "mine.pt").rename(tmp_path / "imagenet-voc")
    monkeypatch.chdir(tmp_path)
    mine = (tmp_path / "imagenet-voc").read_bytes()

    # calibrate: the name is the built-in model, which needs --out (the file is left alone) and the
    # VOC classes, which this dataset lacks; ./imagenet-voc calibrates the file in place
    assert main(["calibrate", "data", "--model", "imagenet-voc", "--no-tta", "--device", "cpu"]) == 2
    assert ("--model imagenet-voc is a built-in model (the file of that name here is --model ./imagenet-voc): "
            "pass --out") in capsys.readouterr().err
    assert main(["calibrate", "data", "--model", "imagenet-voc", "--out", "voc.pt", "--no-tta",
                 "--device", "cpu"]) == 2
    assert "the dataset does not have the model's classes" in capsys.readouterr().err
    assert (tmp_path / "imagenet-voc").read_bytes() == mine and not (tmp_path / "voc.pt").exists()
    assert main(["calibrate", "data", "--model", "./imagenet-voc", "--no-tta", "--device", "cpu"]) == 0
    calibrated = load_model(tmp_path / "imagenet-voc")
    assert calibrated.class_names == ["cat", "coffee"] and calibrated.settings["calibration"]["images"] == 2

    # predict: the name runs the built-in model, ./imagenet-voc the file, as their manifests record (the
    # file by its path: its name alone is the built-in model's)
    for model, out, expected, name in (("imagenet-voc", "voc", load_model("imagenet-voc"), "imagenet-voc"),
                                       ("./imagenet-voc", "mine", calibrated, str(tmp_path / "imagenet-voc"))):
        assert main(["predict", "data/cat/0.png", "--out", out, "--model", model, "--device", "cpu",
                     "--proposals", "none"]) == 0
        recorded = json.loads((tmp_path / out / "0.manifest.json").read_text(encoding="utf-8"))["info"]["model"]
        assert recorded == {"name": name, "fingerprint": model_fingerprint(expected, head=True)}
        categories = json.loads((tmp_path / out / "0_instances.json").read_text(encoding="utf-8"))["categories"]
        assert [c["name"] for c in categories] == expected.class_names


def test_calibrate_refuses_an_existing_out_unless_overwritten(tmp_path, capsys):
    """``calibrate --out other.pt`` replaced an existing other.pt without a word; it is now
    refused before anything runs, as train and refine refuse theirs. Without --out, and with
    --out naming the --model file, the model is updated in place as documented."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "data" / name / "0.png", image[:64, :64])
    torch.manual_seed(0)
    model = save_model(build_model("tiny", ["cat", "coffee"], pretrained=False, input_size=(32, 32)),
                       tmp_path / "model.pt")
    other = tmp_path / "other.pt"
    other.write_bytes(b"a model to keep")
    command = ["calibrate", str(tmp_path / "data"), "--model", str(model), "--no-tta", "--device", "cpu"]
    assert main(command + ["--out", str(other)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"napari-prm calibrate: error: --out {other} exists: pass --overwrite to replace it, or choose another path "
        f"(without --out, calibrate updates --model {model} in place)")
    assert other.read_bytes() == b"a model to keep"
    assert main(command + ["--out", str(other), "--overwrite"]) == 0
    assert load_model(other).settings["calibration"]["images"] == 2
    assert "calibration" not in load_model(model).settings
    assert main(command + ["--out", str(model)]) == 0  # the --model file itself: updated in place
    assert load_model(model).settings["calibration"]["images"] == 2
    capsys.readouterr()


def test_calibrate_evaluate_and_refine_name_every_unreadable_image_before_running(tmp_path, capsys,
                                                                                   tiny48_checkpoint):
    """As train does: calibrate, evaluate and refine stopped at the first unreadable image they reached
    (evaluate after running the model on every image before it, its work lost), naming only that one."""
    _class_folders(tmp_path / "data", ("cat", "dog"))
    broken = [tmp_path / "data" / "cat" / "1.png", tmp_path / "data" / "dog" / "1.png"]
    for path in broken:
        path.write_bytes(path.read_bytes()[:300])
    data = str(tmp_path / "data")
    runs = {
        "calibrated": ["calibrate", data, "--model", str(tiny48_checkpoint), "--out", str(tmp_path / "c.pt")],
        "evaluated": ["evaluate", data, "--model", str(tiny48_checkpoint)],
        "refined": ["refine", data, "--model", str(tiny48_checkpoint), "--out", str(tmp_path / "r.pt")],
    }
    for done, command in runs.items():
        capsys.readouterr()
        assert main(command + ["--device", "cpu"]) == 2, command
        error = capsys.readouterr().err
        assert f"error: 2 images of {data} cannot be read; fix or remove them from the dataset (nothing was {done})" \
            in error, error
        # one reason, said once (then the files), in each command's error
        assert error.count("image file is truncated") == 1, error
        assert "  2 images: image file is truncated" in error, error
        for path in broken:
            assert f"\n    {path} (declared at {path})\n" in error, error
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "r.pt").exists()


def test_calibrate_updates_a_ckpt_model_in_place(tmp_path, capsys):
    """load_model reads a torch checkpoint under any name (``model.ckpt``); calibrate without
    --out then ran the whole calibration and failed saving it: "path: expected a file ending in
    .pt or .pth or .safetensors". A torch file is written again under its own name; a file
    that is no torch checkpoint is still refused under a foreign suffix."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "data" / name / "0.png", image[:64, :64])
    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "coffee"], pretrained=False, input_size=(32, 32))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(save_model(model, tmp_path / "model.pt").read_bytes())
    assert main(["calibrate", str(tmp_path / "data"), "--model", str(ckpt), "--no-tta", "--device", "cpu"]) == 0
    assert load_model(ckpt).settings["calibration"]["images"] == 2
    capsys.readouterr()
    foreign = tmp_path / "model.onnx"
    foreign.write_bytes(b"\x08\x07an ONNX graph")
    with pytest.raises(ValueError, match=r"^path: expected a file ending in \.pt or \.pth or \.safetensors"):
        save_model(model, foreign)
    assert foreign.read_bytes() == b"\x08\x07an ONNX graph"


def test_predict_label_tiffs_keep_the_images_pixel_size(tmp_path, tiny48_checkpoint):
    """A calibrated microscopy TIFF (0.5 µm pixels, ImageJ unit 'um', or an OME-TIFF's physical
    size) gives a label TIFF with the same pixel size and unit, so the labels overlay the image in
    Fiji or napari-aicsimageio and measurements stay in µm; an uncalibrated image gives no
    resolution unit."""
    folder = tmp_path / "images"
    folder.mkdir()
    gray = (data.coins()[:96, :128].astype(np.uint16) * 16)
    tifffile.imwrite(folder / "calibrated.tif", gray, imagej=True, resolution=(2.0, 4.0),
                     metadata={"unit": "um"})
    tifffile.imwrite(folder / "inch.tif", gray, resolution=(300, 300), resolutionunit="INCH")
    tifffile.imwrite(folder / "plain.tif", gray)
    # an OME-TIFF keeps its pixel size in its OME-XML only: its labels were written without one
    # (and its outputs are named by its stem without .ome.tif: cells_labels.tif)
    tifffile.imwrite(folder / "cells.ome.tif", gray, metadata={"axes": "YX", "PhysicalSizeX": 0.65,
                                                               "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm",
                                                               "PhysicalSizeYUnit": "µm"})
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(tiny48_checkpoint), "--out", str(out)]) == 0
    with tifffile.TiffFile(out / "cells_labels.tif") as tif:
        assert tif.pages[0].get_resolution() == pytest.approx((1 / 0.65, 1 / 0.5))
        assert (tif.imagej_metadata or {}).get("unit") == "um"
    with tifffile.TiffFile(out / "calibrated_labels.tif") as tif:
        page = tif.pages[0]
        assert page.shape == gray.shape
        assert page.get_resolution() == pytest.approx((2.0, 4.0))
        assert (tif.imagej_metadata or {}).get("unit") == "um"
    with tifffile.TiffFile(out / "inch_labels.tif") as tif:
        assert tif.pages[0].get_resolution() == pytest.approx((300, 300))
        assert tif.pages[0].resolutionunit == tifffile.RESUNIT.INCH
    with tifffile.TiffFile(out / "plain_labels.tif") as tif:
        assert tif.pages[0].get_resolution() == pytest.approx((1, 1))
    np.testing.assert_array_equal(io.read_label_image(out / "calibrated_labels.tif"),
                                  io.read_label_image(out / "plain_labels.tif"))
    # the instance CSV gives the area and box in µm too where the pixel size is known (0.25 µm × 0.5 µm,
    # 0.5 µm × 0.65 µm); not for pixels per inch or no pixel size, whose CSV is as before
    header = ",".join(io.INSTANCE_CSV_COLUMNS)
    for stem, (height, width) in {"calibrated": (0.25, 0.5), "cells": (0.5, 0.65)}.items():
        with open(out / f"{stem}_instances.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert rows and list(rows[0]) == [*io.INSTANCE_CSV_COLUMNS, *io.INSTANCE_CSV_UM_COLUMNS]
        for row in rows:
            assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * height * width)
            assert float(row["bbox_x1_um"]) == pytest.approx(int(row["bbox_x1"]) * width)
    for stem in ("inch", "plain"):
        assert (out / f"{stem}_instances.csv").read_text(encoding="utf-8").splitlines()[0] == header



def test_predict_reads_a_png_named_tif_by_its_content_and_says_so(tmp_path, tiny48_checkpoint, capsys):
    """A PNG saved with a .tif name failed in predict ("not a TIFF file"); it is predicted, with a note
    naming its real format, as ``napari_prm.predict`` of the file does."""
    from PIL import Image

    import napari_prm

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(data.chelsea()[::4, ::4]).save(folder / "cat.tif", format="PNG")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(tiny48_checkpoint), "--out", str(out)]) == 0
    errors = capsys.readouterr().err
    assert "cat.tif is a PNG image, not a TIFF: read as PNG" in errors and "1 image(s) written" in errors
    assert io.read_label_image(out / "cat_labels.tif").shape == data.chelsea()[::4, ::4].shape[:2]
    prediction = napari_prm.predict(folder / "cat.tif", load_model(tiny48_checkpoint))
    assert any(note.startswith("cat.tif is a PNG image") for note in prediction.notes)

def test_predict_prm_tiffs_keep_the_images_pixel_size(tmp_path, tiny48_checkpoint):
    """``--save-prms tiff`` of a calibrated image (an ImageJ TIFF in µm, an OME-TIFF, a z-stack)
    gives a PRM stack with the image's pixel size, as its label TIFF has: the PRMs were written
    at 1 pixel per unit, so in Fiji they did not overlay the image and its labels."""
    folder = tmp_path / "images"
    folder.mkdir()
    gray = (data.coins()[:96, :128].astype(np.uint16) * 16)
    tifffile.imwrite(folder / "calibrated.tif", gray, imagej=True, resolution=(2.0, 4.0),
                     metadata={"unit": "um"})
    tifffile.imwrite(folder / "cells.ome.tif", gray, metadata={"axes": "YX", "PhysicalSizeX": 0.65,
                                                               "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm",
                                                               "PhysicalSizeYUnit": "µm"})
    tifffile.imwrite(folder / "zstack.tif", np.stack([gray, gray[::-1]]), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 1.5})
    tifffile.imwrite(folder / "plain.tif", gray)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(tiny48_checkpoint), "--out", str(out),
                 "--save-prms", "tiff", "--proposals", "prm", "--peak-threshold", "0",
                 "--class-threshold", "0"]) == 0
    per_cm = {"calibrated": (2.0e4, 4.0e4), "cells": (1e4 / 0.65, 1e4 / 0.5), "zstack": (2.0e4, 2.0e4)}
    for stem, resolution in per_cm.items():
        with tifffile.TiffFile(out / f"{stem}_prms.tif") as tif:
            assert len(tif.pages) > 0 and tif.pages[0].shape == gray.shape
            assert tif.pages[0].get_resolution() == pytest.approx(resolution)
            assert tif.pages[0].resolutionunit == tifffile.RESUNIT.CENTIMETER
        with tifffile.TiffFile(out / f"{stem}_labels.tif") as tif:  # the labels say the same in µm
            x, y = tif.pages[0].get_resolution()
            assert (x * 1e4, y * 1e4) == pytest.approx(resolution)
    with tifffile.TiffFile(out / "plain_prms.tif") as tif:  # an uncalibrated image: none
        assert tif.pages[0].get_resolution() == pytest.approx((1, 1))
        assert tif.pages[0].resolutionunit == tifffile.RESUNIT.NONE


def test_calibrate_notes_when_it_calibrates_on_the_training_images(tmp_path, capsys):
    """``calibrate`` without --held-out calibrated on the images the model trained on, and said
    nothing of its optimistic thresholds. The checkpoint records its training images."""
    import imageio.v3 as iio

    from napari_prm.model import load_checkpoint
    from napari_prm.train import trained_images

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee()), ("astronaut", data.astronaut())):
        for number in range(2):
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            iio.imwrite(tmp_path / "data" / name / f"{number}.png", image[number * 32:number * 32 + 64, :64])
    out = tmp_path / "model.pt"
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--epochs", "1",
                 "--batch-size", "2", "--input-size", "32", "32", "--device", "cpu", "--val-fraction", "0.34",
                 "--no-calibrate"]) == 0
    assert "training on 4 images, 2 held out" in capsys.readouterr().err
    paths = sorted((tmp_path / "data").rglob("*.png"))
    assert sum(trained_images(load_checkpoint(out)[1], paths)) == 4
    calibrate = ["calibrate", str(tmp_path / "data"), "--model", str(out), "--no-tta", "--device", "cpu"]
    assert main(calibrate) == 0
    error = capsys.readouterr().err  # the command line's option only, not Python's held_out=True
    assert ("note: 4 of the 6 images calibrated on were used to train " + str(out) + ": thresholds chosen on "
            "images a model has learnt are optimistic (too low for new images); --held-out calibrates on the "
            "images 'train' held out") in error
    assert "held_out" not in error
    assert main([*calibrate, "--held-out"]) == 0  # the held-out images: no note
    assert "note:" not in capsys.readouterr().err
    copy = tmp_path / "copy"  # the same pictures at other paths: new images to this model
    shutil.copytree(tmp_path / "data", copy)
    assert main(["calibrate", str(copy), *calibrate[2:]]) == 0
    assert "note:" not in capsys.readouterr().err


def test_calibrate_records_its_held_out_images_and_notes_those_that_trained_it(tmp_path, capsys):
    """``calibrate`` stored the thresholds without ``settings["calibration"]["held_out"]``, which
    ``train`` and the Train widget's *Calibrate* store; and with --held-out it said nothing of held-out
    images that trained the model (its dataset changed since: the split is made anew), where
    *Calibrate* noted them. Both now come from `napari_prm.train.calibrate_checkpoint`."""
    import imageio.v3 as iio

    from napari_prm.data import load_dataset
    from napari_prm.train import SPLIT_RULE, TRAINING_STATE_KEY, image_keys, training_split

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        for number in range(3):
            iio.imwrite(tmp_path / "data" / name / f"{number}.png", image[number * 32:number * 32 + 64, :64])
    dataset = load_dataset(tmp_path / "data")
    split = training_split(dataset, 0.34, 0)
    assert (len(split.train), len(split.held_out)) == (4, 2)
    torch.manual_seed(0)
    model = build_model("tiny", dataset.class_names, pretrained=False, input_size=(32, 32))
    state = {"epoch": 1, "config": {"val_fraction": 0.34, "seed": 0}, "split_rule": SPLIT_RULE,
             "images": image_keys(split.train.image_paths)}
    trained = save_model(model, tmp_path / "trained.pt", extra={TRAINING_STATE_KEY: state})
    calibrate = ["calibrate", str(tmp_path / "data"), "--model", str(trained), "--no-tta", "--device", "cpu"]
    assert main([*calibrate, "--held-out", "--out", str(tmp_path / "held_out.pt")]) == 0
    assert "on 2 image(s)" in capsys.readouterr().out
    assert main([*calibrate, "--out", str(tmp_path / "every.pt")]) == 0
    assert "on 6 image(s)" in capsys.readouterr().out
    assert load_model(tmp_path / "held_out.pt").settings["calibration"]["held_out"] is True
    assert load_model(tmp_path / "every.pt").settings["calibration"]["held_out"] is False

    # a run that trained on every image of the dataset as it is now: its held-out share trained it
    changed = save_model(model, tmp_path / "changed.pt",
                         extra={TRAINING_STATE_KEY: {**state, "images": image_keys(dataset.image_paths)}})
    assert main([*calibrate[:3], str(changed), *calibrate[4:], "--held-out"]) == 0
    assert (f"note: 2 of the 2 images calibrated on were used to train {changed}: thresholds chosen on images a "
            "model has learnt are optimistic (too low for new images); its run did not hold them out (the dataset "
            "given is not the one 'train' split: images were added or removed since, or it is another view of them, "
            "e.g. without --voc, voc_view in Python): calibrate on the dataset 'train' had, or on images it was not "
            "trained on") in capsys.readouterr().err
    assert load_model(changed).settings["calibration"]["held_out"] is True


def test_train_names_every_unreadable_image_before_training(tmp_path, capsys):
    """A truncated JPEG and a PNG that is not one: training stopped at the first it read, after
    'training on N images', one file per run. Both are named first, and nothing runs."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        for number in range(2):
            iio.imwrite(tmp_path / "data" / name / f"{number}.jpg", image[number * 32:number * 32 + 64, :64])
    cut = tmp_path / "data" / "cat" / "1.jpg"
    cut.write_bytes(cut.read_bytes()[:-300])
    (tmp_path / "data" / "coffee" / "2.png").write_text("not an image")
    out = tmp_path / "model.pt"
    assert main(["train", str(tmp_path / "data"), "--out", str(out), "--backbone", "tiny", "--epochs", "1",
                 "--input-size", "32", "32", "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (f"napari-prm train: error: 2 images of {tmp_path / 'data'} cannot be read; fix or remove "
                        "them from the dataset (nothing was trained):")
    assert lines[1].startswith(f"  {cut} (declared at ") and "truncated" in lines[1]
    assert lines[2].startswith(f"  {tmp_path / 'data' / 'coffee' / '2.png'} (declared at ")
    assert not any(line.startswith("training on") for line in lines) and not out.exists()


def test_after_ctrl_c_an_interrupted_object_is_deleted_without_a_traceback(monkeypatch):
    """Ctrl-C landing while imageio's Pillow plugin opened an image left it half-built; deleted
    after the command's "interrupted: ..." line, it printed "Exception ignored in ... AttributeError"
    (seen in CI). Before any Ctrl-C, and after the command, such errors are reported as usual."""
    import signal

    from napari_prm.cli import _quiet_after_ctrl_c

    class HalfBuilt:
        def __del__(self):
            raise AttributeError("'HalfBuilt' object has no attribute 'images_to_write'")

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(str(unraisable.exc_value)))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a shell
    try:
        with _quiet_after_ctrl_c():
            HalfBuilt()  # deleted at once, no Ctrl-C yet: reported
            assert reported == ["'HalfBuilt' object has no attribute 'images_to_write'"]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
            HalfBuilt()
            assert len(reported) == 1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        HalfBuilt()
        assert len(reported) == 2
    finally:
        signal.signal(signal.SIGINT, previous)


def test_demo_without_qt_bindings_writes_and_says_so(tmp_path, tiny48_checkpoint, capsys, monkeypatch):
    """README: without the [all] extra napari has no Qt bindings and cannot open. With a display,
    the demo then wrote its results and failed with "unexpected ImportError ... run with --debug"
    (exit status 1); it now says what is missing, as it does without a display."""
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "qtpy", None)  # `from qtpy import ...` raises ImportError
    image = tmp_path / "sample1.jpg"
    write_half_size("coffee", image)
    assert main(["demo", str(image), "--model", str(tiny48_checkpoint),
                 "--out", str(tmp_path), "--proposals", "none"]) == 0
    err = capsys.readouterr().err
    assert "no Qt bindings installed: results written, napari not opened" in err and "unexpected" not in err
    assert (tmp_path / "sample1_instances.json").is_file()


def test_an_out_name_too_long_for_the_file_system_is_a_usage_error(tmp_path, capsys):
    """``--out`` with a 300-character name ended in a traceback ("OSError: [Errno 36] File name
    too long") from asking whether it exists; it is a usage error naming --out."""
    out = tmp_path / ("x" * 300)
    for command in (["predict", str(tmp_path / "cat.png"), "--out", str(out)],
                    ["train", str(tmp_path), "--out", str(out / "model.pt")]):
        try:
            status = main(command)
        except SystemExit as stop:  # train's --out is checked while parsing
            status = stop.code
        assert status == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"napari-prm {command[0]}: error: --out: cannot use {out}")
        assert err[-1].endswith(": File name too long") and not any("Traceback" in line for line in err)


def test_train_resume_of_a_named_checkpoint_goes_on_in_that_file(tmp_path, capsys, monkeypatch):
    """``train DATA --resume run.pt`` (no --out) went on training into ./prm_model.pt, the
    --out default, and left run.pt at its epoch; it now writes on in run.pt."""

    _class_folders(tmp_path / "data", ("cat", "coffee"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run.pt"
    options = [str(tmp_path / "data"), "--backbone", "tiny", "--batch-size", "2", "--input-size", "32", "32",
               "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    assert main(["train", *options, "--out", str(run), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["train", str(tmp_path / "data"), "--resume", str(run), "--epochs", "2", "--no-calibrate"]) == 0
    assert f"-> {run}" in capsys.readouterr().err
    assert not (tmp_path / "prm_model.pt").exists()
    assert [h["epoch"] for h in torch.load(run, weights_only=True)["extra"]["training"]["history"]] == [1, 2]
    # an --out given with it still forks the run into that file
    fork = tmp_path / "fork.pt"
    assert main(["train", str(tmp_path / "data"), "--resume", str(run), "--out", str(fork), "--epochs", "3",
                 "--no-calibrate"]) == 0
    assert [h["epoch"] for h in torch.load(fork, weights_only=True)["extra"]["training"]["history"]] == [1, 2, 3]
    assert [h["epoch"] for h in torch.load(run, weights_only=True)["extra"]["training"]["history"]] == [1, 2]


def test_train_ends_saying_what_to_do_next(tmp_path, capsys):
    """``train`` ended with "checkpoint: model.pt": nothing on how to use it, nor, with
    --no-calibrate, that its thresholds were never chosen. It now ends with the next command."""
    import imageio.v3 as iio

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "my data" / name).mkdir(parents=True)
        for i in range(3):
            iio.imwrite(tmp_path / "my data" / name / f"{i}.png", image[i * 20:i * 20 + 64, :64])
    out = tmp_path / "model.pt"
    options = ["train", str(tmp_path / "my data"), "--backbone", "tiny", "--epochs", "1", "--batch-size", "2",
               "--input-size", "32", "32", "--device", "cpu"]
    assert main(options + ["--out", str(out)]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2:] == [f"checkpoint: {out}",
                          f"next: napari-prm predict IMAGES --model {out} --out results/, or choose it in napari's "
                          "Peak Response Maps widget"]
    assert "class_threshold" in load_model(out).settings
    uncalibrated = tmp_path / "raw.pt"
    assert main(options + ["--out", str(uncalibrated), "--no-calibrate"]) == 0
    next_line = capsys.readouterr().err.strip().splitlines()[-1]
    command = f"napari-prm calibrate '{tmp_path / 'my data'}' --model {uncalibrated} --held-out"
    assert next_line.startswith(f"next: choose its class and peak thresholds, {command} (or on images")
    # the command it gives runs, on the images the run held out
    assert main(shlex.split(command)[1:] + ["--no-tta"]) == 0
    assert "class_threshold" in load_model(uncalibrated).settings


def test_calibrate_on_images_that_all_show_the_class_says_its_thresholds_are_the_lowest(tmp_path, capsys):
    """``calibrate`` on a folder of one class chose the lowest thresholds ("100 % of the peaks on
    classes the images show", every peak kept) without a word: no peak could be wrong there."""
    import imageio.v3 as iio

    (tmp_path / "data" / "cat").mkdir(parents=True)
    for i in range(3):
        iio.imwrite(tmp_path / "data" / "cat" / f"{i}.png", data.chelsea()[i * 20:i * 20 + 64, :64])
    torch.manual_seed(0)
    model = save_model(build_model("tiny", ["cat"], pretrained=False, input_size=(32, 32)), tmp_path / "cat.pt")
    assert main(["calibrate", str(tmp_path / "data"), "--model", str(model), "--no-tta", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert (f"warning: every image of {tmp_path / 'data'} shows class(es) 'cat': no peak of theirs can be wrong on "
            "these images, so their thresholds are chosen as low as they go") in captured.err
    assert "100 % of the peaks on classes the images show" in captured.out


def test_calibrate_on_few_images_warns_that_its_thresholds_are_unreliable(tmp_path, capsys):
    """Thresholds chosen on 1-3 images were reported as calibrated like any others. Below
    ``MIN_CALIBRATION_IMAGES`` (10) images, ``calibrate`` says they are unreliable and what to do,
    once (the TTA thresholds, chosen on the same images, do not repeat it)."""
    import imageio.v3 as iio

    from napari_prm.peaks import MIN_CALIBRATION_IMAGES

    assert MIN_CALIBRATION_IMAGES == 10  # the figure the docs give
    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(5):
            iio.imwrite(tmp_path / "data" / name / f"{i}.png", image[i * 30:i * 30 + 64, i * 30:i * 30 + 64])
    torch.manual_seed(0)
    model = save_model(build_model("tiny", ["cat", "coffee"], pretrained=False, input_size=(32, 32)),
                       tmp_path / "model.pt")
    few = tmp_path / "few.csv"
    few.write_text("image,labels\ndata/cat/0.png,cat\ndata/coffee/0.png,coffee\ndata/cat/1.png,cat\n")
    assert main(["calibrate", str(few), "--model", str(model), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "on 3 image(s)" in captured.out and "classes found 0 %" not in captured.out
    assert captured.err.count("warning: the thresholds were calibrated on only 3 image(s), fewer than 10") == 1
    assert "'napari-prm calibrate DATASET --model MODEL --held-out'" in captured.err
    assert "set the thresholds by hand" in captured.err
    # in the command line's words: its options, not the Python names the library's message also gives
    assert "hold out more: train's --val-fraction; or add images, then 'napari-prm calibrate" in captured.err
    assert "val_fraction" not in captured.err and "calibrate_checkpoint(" not in captured.err
    assert "held_out=True" not in captured.err
    assert "calibrated on only 3" in load_model(model).settings["calibration"]["warning"]
    # ten images: no such warning
    assert main(["calibrate", str(tmp_path / "data"), "--model", str(model), "--no-tta", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "on 10 image(s)" in captured.out and "calibrated on only" not in captured.err
    assert "warning" not in load_model(model).settings["calibration"]


def test_train_with_voc_says_to_calibrate_with_voc(shared_data, tmp_path, capsys):
    """``train COCO.json --voc --no-calibrate`` said ``calibrate COCO.json --held-out`` without
    ``--voc``: that dataset (all 128 images, not the 97 VOC ones) splits otherwise, so the
    command calibrated on 26 images, 17 of which had trained the model."""
    coco = shared_data / "coco128" / "annotations" / "instances_train2017.json"
    out = tmp_path / "voc.pt"
    assert main(["train", str(coco), "--voc", "--backbone", "tiny", "--epochs", "1", "--input-size", "32", "32",
                 "--no-calibrate", "--device", "cpu", "--out", str(out)]) == 0
    next_line = capsys.readouterr().err.strip().splitlines()[-1]
    command = f"napari-prm calibrate {coco} --voc --model {out} --held-out"
    assert next_line.startswith(f"next: choose its class and peak thresholds, {command} (or on images")
    assert main(shlex.split(command)[1:] + ["--no-tta", "--device", "cpu"]) == 0
    said = "".join(capsys.readouterr())
    assert "used to train" not in said and "on 19 image(s)" in said


def test_calibrate_at_another_input_size_writes_the_model_to_run_there(tmp_path, capsys):
    """``calibrate --input-size``: thresholds chosen at a predict-time size were only in Python
    (``calibrate_model(input_size=)``), and the checkpoint kept its own size, so predict ran at a size
    its thresholds were not chosen at. The model is now calibrated at, and written to run at, the size."""
    import imageio.v3 as iio

    from napari_prm.data import load_dataset
    from napari_prm.peaks import calibrate_model

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        for number, crop in enumerate((image[:96, :96], image[-96:, -96:], image[:96, -96:])):
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            iio.imwrite(tmp_path / "data" / name / f"{number}.png", crop)
    torch.manual_seed(0)
    path = save_model(build_model("tiny", ["cat", "coffee"], pretrained=False, input_size=(32, 32)),
                      tmp_path / "m.pt")
    dataset = load_dataset(tmp_path / "data")
    out = tmp_path / "m64.pt"
    assert main(["calibrate", str(tmp_path / "data"), "--model", str(path), "--out", str(out), "--no-tta",
                 "--device", "cpu", "--input-size", "64", "80"]) == 0
    assert "is calibrated at, and written to run at, 64×80 (it ran at 32×32)" in capsys.readouterr().err
    model = load_model(out)
    assert model.input_size == (64, 80)
    expected = calibrate_model(load_model(path), dataset, input_size=(64, 80))
    at_own_size = calibrate_model(load_model(path), dataset)
    assert (model.settings["class_threshold"], model.settings["peak_threshold"]) == pytest.approx(
        (expected.class_threshold, expected.peak_threshold))
    assert (expected.class_threshold, expected.peak_threshold) != (at_own_size.class_threshold,
                                                                   at_own_size.peak_threshold)
    with pytest.raises(SystemExit) as usage_error:
        main(["calibrate", str(tmp_path / "data"), "--model", str(path), "--out", str(out), "--overwrite",
              "--input-size", "0", "64"])
    assert usage_error.value.code == 2
    assert "--input-size[0]: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_train_classes_case_hint_and_small_input_size_refused_before_the_dataset(tmp_path, capsys,
                                                                                  tiny48_checkpoint, image_folder):
    """``train --classes mitosis`` on a dataset of class ``Mitosis`` showed both lists and not that
    only the case differs; ``--input-size 32 32`` (1×1 maps with EfficientNet-Lite0) was refused
    after 'training on N images' was said; ``predict --classes Cat`` showed no hint either."""

    _class_folders(tmp_path / "data", ("Mitosis", "interphase"))
    out = tmp_path / "run.pt"
    train = ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1", "--batch-size", "2",
             "--val-fraction", "0", "--no-calibrate", "--device", "cpu"]
    capsys.readouterr()
    assert main(train + ["--backbone", "tiny", "--input-size", "32", "32", "--classes", "mitosis"]) == 2
    error = capsys.readouterr().err
    assert "unknown class(es) ['mitosis']" in error
    assert error.rstrip().endswith("did you mean 'Mitosis' (names differ in upper and lower case)?"), error
    assert main(train + ["--backbone", "tiny", "--input-size", "32", "32", "--classes", "interfase"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("; did you mean 'interphase'?")

    for model in ([], ["--model", "imagenet-voc"]):
        assert main(train + model + ["--input-size", "32", "32"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("napari-prm train: error: --input-size (32, 32) gives class response maps of "
                                "1×1 cells with the efficientnet_lite0 backbone: peaks need maps of at least "
                                "2×2; use a larger input size"), error
        assert "training on" not in error and not out.exists()

    assert main(["predict", str(image_folder), "--model", str(tiny48_checkpoint), "--out", str(tmp_path / "p"),
                 "--classes", "Cat"]) == 2
    assert capsys.readouterr().err.rstrip().endswith(
        "did you mean 'cat' (names differ in upper and lower case)?")


def test_calibrate_held_out_warns_of_the_held_out_images_not_of_the_dataset(tmp_path, capsys):
    """``calibrate --held-out`` warned "every image of DATA shows class(es) 'round'" when only the
    images train held out did (a 'long' image trained): the warning now says it is about them."""
    import imageio.v3 as iio

    from napari_prm.data import load_dataset
    from napari_prm.train import SPLIT_RULE, TRAINING_STATE_KEY, checkpoint_held_out

    for name, count in (("round", 6), ("long", 1)):
        (tmp_path / "data" / name).mkdir(parents=True)
        for number in range(count):
            iio.imwrite(tmp_path / "data" / name / f"{number}.png", data.chelsea()[number * 20:number * 20 + 64, :64])
    dataset = load_dataset(tmp_path / "data")
    state = {"epoch": 1, "config": {"val_fraction": 0.3, "seed": 0}, "split_rule": SPLIT_RULE,
             "history": [{"epoch": 1, "loss": 0.5, "seconds": 1.0, "val_ap": {}, "val_map": float("nan")}]}
    held = checkpoint_held_out(dataset, state).held_out
    assert len(held) == 2 and held.labels.sum(0).tolist() == [0, 2]  # classes long, round
    model = build_model("tiny", dataset.class_names, pretrained=False, input_size=(32, 32))
    path = save_model(model, tmp_path / "m.pt", extra={TRAINING_STATE_KEY: state})
    calibrate = ["calibrate", str(tmp_path / "data"), "--model", str(path), "--no-tta", "--device", "cpu"]
    assert main(calibrate + ["--held-out"]) == 0
    err = capsys.readouterr().err
    assert (f"warning: every held-out image of {tmp_path / 'data'} (2 images held out by train) shows class(es) "
            "'round': no peak of theirs can be wrong on these images") in err, err
    assert "Calibrate on every image (not only the held-out ones) or on other images that include some" in err
    assert "every image of" not in err
    assert main(calibrate) == 0  # every image: the 'long' one is without 'round'
    assert "shows class(es)" not in capsys.readouterr().err


def test_predict_help_says_how_often_an_unreadable_image_is_tried(tmp_path, tiny48_checkpoint, capsys):
    """The help said "An unreadable image is tried twice", though it is reported after one attempt
    (summary.csv's attempts 1): another cannot mend it. The help now says what happens."""
    (tmp_path / "images").mkdir()
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    out = tmp_path / "out"
    assert main(["predict", str(broken), "--out", str(out), "--model", str(tiny48_checkpoint)]) == 1
    capsys.readouterr()
    with open(out / "summary.csv", newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert (row["status"], row["attempts"]) == ("failed", "1")
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["predict"].format_help().split())
    assert "tried twice, reported and skipped" not in help_text
    assert ("An image that cannot be read (not an image, damaged, or of axes predict does not take) is reported "
            "after one attempt and skipped (exit status 1)") in help_text
