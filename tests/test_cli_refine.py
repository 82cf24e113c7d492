"""``napari-prm refine``: learn a head from a dataset and corrected masks; Ctrl-C and --resume."""

import inspect
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import interrupt_after_first_checkpoint, shapes_scene
from napari_prm import io
from napari_prm.cli import build_parser, main
from napari_prm.model import build_model, load_checkpoint, load_model, save_model
from napari_prm.refine import refine

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory):
    """Four shapes scenes as PNGs with a COCO JSON of their instances (classes cat and dog)."""
    import imageio.v3 as iio

    folder = tmp_path_factory.mktemp("shapes")
    coco = {"images": [], "annotations": [], "categories": []}
    for number in range(4):
        image, labels, _, _ = shapes_scene(number)
        iio.imwrite(folder / f"scene{number}.png", image)
        table = {"label": np.array([1, 2]), "class_index": np.array([0, 1]), "class_name": np.array(["cat", "dog"])}
        one = io.labels_to_coco(labels, table, ["cat", "dog"], image_id=number + 1, file_name=f"scene{number}.png")
        coco["images"] += one["images"]
        coco["annotations"] += [a | {"id": 10 * number + a["id"]} for a in one["annotations"]]
        coco["categories"] = one["categories"]
    (folder / "instances.json").write_text(json.dumps(coco))
    return folder / "instances.json"


@pytest.fixture(scope="module")
def tiny_checkpoint96(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(96, 96))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


def test_refine_learns_from_the_dataset_and_the_masks(shapes_dataset, tiny_checkpoint96, tmp_path, capsys):
    out = tmp_path / "refined.pt"
    status = main(["refine", str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(out),
                   "--masks", str(shapes_dataset), "--epochs", "3", "--class-threshold=-1e9"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "4 corrected image(s), 8 instances" in err and "epoch 3/3" in err
    model, extra = load_checkpoint(out)
    assert model.head is not None and model.class_names == ["cat", "dog"]
    assert {k: model.head.info["trained_on"][k] for k in ("pseudo_labelled", "corrected")} == \
        {"pseudo_labelled": 4, "corrected": 4}
    assert model.head.info["predict_options"] == {"class_threshold": -1e9}
    assert [h["epoch"] for h in extra["refine_training"]["history"]] == [1, 2, 3]
    assert len(list(Path(f"{out}.cache").glob("*.pt"))) == 4  # the pseudo-labelled samples
    # corrections alone, from a folder of label images
    folder = tmp_path / "labels"
    folder.mkdir()
    image, labels, _, _ = shapes_scene(1)
    io.write_label_image(folder / "scene1_labels.tif", labels)
    io.write_instances_csv(folder / "scene1_instances.csv", labels,
                           {"label": np.array([1, 2]), "class_name": np.array(["cat", "dog"])})
    alone = tmp_path / "alone.pt"
    assert main(["refine", str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(alone),
                 "--masks", str(folder), "--no-self-training", "--epochs", "2"]) == 0
    assert load_model(alone).head.info["trained_on"]["corrected"] == 1
    # 'calibrate' on a refined checkpoint keeps its head and its refine state (for --resume)
    calibrated = tmp_path / "calibrated.pt"
    assert main(["calibrate", str(shapes_dataset), "--model", str(out), "--out", str(calibrated), "--no-tta",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    again, extra_again = load_checkpoint(calibrated)
    assert "class_threshold" in again.settings and "peak_threshold" in again.settings
    for name, tensor in model.head.state_dict().items():
        torch.testing.assert_close(again.head.state_dict()[name], tensor)
    assert extra_again["refine_training"]["history"] == extra["refine_training"]["history"]


def test_refine_usage_errors(shapes_dataset, tiny_checkpoint96, tmp_path, capsys):
    common = [str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(tmp_path / "x.pt")]
    assert main(["refine", *common, "--no-self-training"]) == 2
    assert "needs --masks" in capsys.readouterr().err
    assert main(["refine", *common, "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["refine", *common, "--masks", str(tmp_path)]) == 2
    assert "--masks: no label images" in capsys.readouterr().err
    assert main(["refine", str(shapes_dataset), "--model", str(tmp_path / "none.pt"), "--out", "x.pt"]) == 2
    # a .safetensors --out holds no training state: --resume says so and how to go on
    light = [str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(tmp_path / "x.safetensors"),
             "--masks", str(shapes_dataset), "--no-self-training", "--epochs", "1", "--batch-size", "1"]
    assert main(["refine", *light]) == 0
    capsys.readouterr()
    assert main(["refine", *light, "--resume"]) == 2
    assert "a .safetensors checkpoint holds no training state" in capsys.readouterr().err


def test_refine_refuses_an_existing_out_unless_resumed_or_overwritten(shapes_dataset, tiny_checkpoint96, tmp_path,
                                                                       capsys):
    """A second ``refine ... --out refined.pt`` replaced the refined model after one epoch."""
    out = tmp_path / "refined.pt"
    start = ["refine", str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(out), "--masks",
             str(shapes_dataset), "--no-self-training", "--batch-size", "4", "--device", "cpu"]
    assert main(start + ["--epochs", "2"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(start + ["--epochs", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"napari-prm refine: error: --out {out} exists: pass --resume to continue it, --overwrite to "
                     "replace it, or choose another path")
    assert out.read_bytes() == before
    # refining the refined model into its own file is a new run on it too: refused
    assert main(["refine", str(shapes_dataset), "--model", str(out), "--out", str(out), "--masks",
                 str(shapes_dataset), "--no-self-training", "--epochs", "1"]) == 2
    assert out.read_bytes() == before
    capsys.readouterr()
    assert main(start + ["--epochs", "3", "--resume"]) == 0
    assert "epoch 3/3" in capsys.readouterr().err
    assert [h["epoch"] for h in load_checkpoint(out)[1]["refine_training"]["history"]] == [1, 2, 3]
    # --resume alone keeps the run's 3 epochs (it went on to the parser's default, 30, with
    # another learning-rate schedule); fewer than the run finished is refused
    capsys.readouterr()
    assert main(start + ["--resume"]) == 0
    assert "epoch 4/" not in capsys.readouterr().err
    assert [h["epoch"] for h in load_checkpoint(out)[1]["refine_training"]["history"]] == [1, 2, 3]
    before = out.read_bytes()
    assert main(start + ["--epochs", "2", "--resume"]) == 2
    assert (f"--epochs 2 is fewer than the 3 epochs the run in {out} has finished: --epochs is the new total "
            "(3 or more)") in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(start + ["--epochs", "1", "--overwrite"]) == 0
    assert [h["epoch"] for h in load_checkpoint(out)[1]["refine_training"]["history"]] == [1]


def test_refine_resume_refuses_another_model(shapes_dataset, tiny_checkpoint96, tmp_path, capsys):
    """``refine --resume --model OTHER`` went on training the run's head on OTHER's features and
    wrote OTHER's backbone and classifier with it, without a word."""
    out = tmp_path / "refined.pt"
    start = ["refine", str(shapes_dataset), "--out", str(out), "--masks", str(shapes_dataset), "--no-self-training",
             "--batch-size", "4", "--device", "cpu"]
    assert main(start + ["--model", str(tiny_checkpoint96), "--epochs", "1"]) == 0
    torch.manual_seed(1)  # same classes, backbone and input size: other weights only
    other = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(96, 96)),
                       tmp_path / "other.pt")
    before = out.read_bytes()
    capsys.readouterr()
    assert main(start + ["--model", str(other), "--epochs", "2", "--resume"]) == 2
    assert (f"cannot resume {out}: its run refines another model (its backbone or classifier weights are not those "
            "of model, the command line's --model)") in capsys.readouterr().err
    assert out.read_bytes() == before
    # the run's own model, or the refined checkpoint itself (the same network), goes on
    assert main(start + ["--model", str(out), "--epochs", "2", "--resume"]) == 0
    assert load_checkpoint(out)[1]["refine_training"]["epoch"] == 2
    refined = load_model(out)
    for name, tensor in load_model(tiny_checkpoint96).network.state_dict().items():
        assert torch.equal(refined.network.state_dict()[name], tensor), name


def test_refine_defaults_match_the_library():
    defaults = vars(build_parser()._subparsers._group_actions[0].choices["refine"].parse_args(
        ["data.json", "--model", "m.pt", "--out", "o.pt"]))
    parameters = inspect.signature(refine).parameters
    for name in ("epochs", "batch_size", "lr", "correction_weight", "seed", "device"):
        assert defaults[name] == parameters[name].default, name


def test_ctrl_c_keeps_the_last_epoch_and_resume_finishes(shapes_dataset, tiny_checkpoint96, tmp_path):
    out = tmp_path / "interrupted.pt"
    command = [sys.executable, "-m", "napari_prm", "refine", str(shapes_dataset), "--model", str(tiny_checkpoint96),
               "--out", str(out), "--masks", str(shapes_dataset), "--no-self-training", "--epochs", "100000",
               "--batch-size", "1"]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    returncode, err = interrupt_after_first_checkpoint(command, out, env)
    assert returncode == 130, err
    kept, extra = load_checkpoint(out)  # complete and readable: the atomic write was never half done
    done = extra["refine_training"]["epoch"]
    assert kept.head.info["epochs"] == done  # what the message reads: the file, not the last report
    assert "interrupted" in err and f"keeps epoch {done};" in err and "--resume" in err
    assert 1 <= done < 100000
    assert not list(tmp_path.glob(".interrupted.pt.*"))  # no temporary file left behind
    assert main(["refine", str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(out),
                 "--masks", str(shapes_dataset), "--no-self-training", "--epochs", str(done + 2),
                 "--batch-size", "1", "--resume"]) == 0
    _, extra = load_checkpoint(out)
    assert [h["epoch"] for h in extra["refine_training"]["history"]] == list(range(1, done + 3))


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM ends a Windows process without a handler")
def test_sigterm_names_the_signal_in_the_last_line(shapes_dataset, tiny_checkpoint96, tmp_path):
    """After SIGTERM ``refine`` ended with "interrupted: ... keeps epoch N", as after Ctrl-C (exit
    status 143 all the same); its last line now names the signal, as ``predict``'s does."""
    out = tmp_path / "terminated.pt"
    command = [sys.executable, "-m", "napari_prm", "refine", str(shapes_dataset), "--model", str(tiny_checkpoint96),
               "--out", str(out), "--masks", str(shapes_dataset), "--no-self-training", "--epochs", "100000",
               "--batch-size", "1"]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    returncode, err = interrupt_after_first_checkpoint(command, out, env, signum=signal.SIGTERM)
    assert returncode == 143, err
    done = load_checkpoint(out)[1]["refine_training"]["epoch"]
    assert 1 <= done < 100000
    assert err.strip().splitlines()[-1] == f"terminated by SIGTERM: {out} keeps epoch {done}; continue with --resume"
    assert "Traceback" not in err and "interrupted" not in err, err


def test_refine_masks_leave_out_exports_of_no_dataset_image_naming_them(shapes_dataset, tiny_checkpoint96, tmp_path,
                                                                         capsys):
    """As ``evaluate --masks``: a warning names every export of no DATASET image; none matching is refused."""
    folder = tmp_path / "labels"
    folder.mkdir()
    table = {"label": np.array([1, 2]), "class_name": np.array(["cat", "dog"])}
    for stem, number in (("elsewhere", 0), ("scene1", 1), ("zzz_other", 2)):
        _, labels, _, _ = shapes_scene(number)
        io.write_label_image(folder / f"{stem}_labels.tif", labels)
        io.write_instances_csv(folder / f"{stem}_instances.csv", labels, table)
    common = ["refine", str(shapes_dataset), "--model", str(tiny_checkpoint96), "--no-self-training",
              "--epochs", "1", "--batch-size", "1"]
    out = tmp_path / "refined.pt"
    assert main([*common, "--out", str(out), "--masks", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "warning: --masks: 2 exports match no image of the dataset, left out: elsewhere_labels.tif, " \
           "zzz_other_labels.tif" in err
    assert "1 corrected image(s), 2 instances" in err
    assert load_model(out).head.info["trained_on"]["corrected"] == 1
    for path in folder.glob("scene1_*"):
        path.unlink()
    assert main([*common, "--out", str(tmp_path / "none.pt"), "--masks", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "error: --masks: no export in" in err and "elsewhere_labels.tif, zzz_other_labels.tif" in err


def test_refine_says_it_runs_only_once_its_checks_passed(shapes_dataset, tiny_checkpoint96, tmp_path, capsys):
    """'refining M on N pseudo-labelled ... -> OUT' was said before the refusals that come from the refine
    step (a model class the dataset lacks, a --resume of another model), as if the run had started."""
    torch.manual_seed(0)
    bird = save_model(build_model("tiny", ["cat", "bird"], pretrained=False, input_size=(96, 96)), tmp_path / "c1.pt")
    out = tmp_path / "x.pt"
    assert main(["refine", str(shapes_dataset), "--model", str(bird), "--out", str(out), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "bird" in error and "refining" not in error, error
    start = ["refine", str(shapes_dataset), "--out", str(out), "--masks", str(shapes_dataset), "--no-self-training",
             "--batch-size", "4", "--device", "cpu", "--epochs", "1"]
    assert main(start + ["--model", str(tiny_checkpoint96)]) == 0
    error = capsys.readouterr().err
    assert f"refining {tiny_checkpoint96} on 0 pseudo-labelled and 4 corrected image(s) -> {out}" in error
    assert error.index("refining") < error.index("epoch 1/1")
    torch.manual_seed(1)
    other = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(96, 96)),
                       tmp_path / "other.pt")
    assert main(start + ["--model", str(other), "--epochs", "2", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "its run refines another model" in error and "refining" not in error, error


def test_resume_keeps_the_runs_masks(shapes_dataset, tiny_checkpoint96, tmp_path, capsys):
    """``refine --masks M`` interrupted, then ``refine --resume`` without --masks, went on with
    "0 corrected image(s)" and no word: the corrections were dropped. The resumed run now reads
    the run's own --masks (recorded in its training state) and refuses other ones."""
    out = tmp_path / "refined.pt"
    start = ["refine", str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(out),
             "--class-threshold=-1e9", "--batch-size", "8", "--device", "cpu"]
    assert main(start + ["--masks", str(shapes_dataset), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(start + ["--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"--resume: the run's corrections: --masks {shapes_dataset.absolute()}" in err
    assert "4 corrected image(s), 8 instances" in err and "on 4 pseudo-labelled and 4 corrected image(s)" in err
    model, extra = load_checkpoint(out)
    assert model.head.info["trained_on"]["corrected"] == 4
    assert [h["epoch"] for h in extra["refine_training"]["history"]] == [1, 2]
    assert extra["refine_training"]["corrections"]["images"] == 4
    # other corrections (one image of the four) are refused, naming the run's
    folder = tmp_path / "labels"
    folder.mkdir()
    _, labels, _, _ = shapes_scene(1)
    io.write_label_image(folder / "scene1_labels.tif", labels)
    io.write_instances_csv(folder / "scene1_instances.csv", labels,
                           {"label": np.array([1, 2]), "class_name": np.array(["cat", "dog"])})
    assert main(start + ["--epochs", "3", "--resume", "--masks", str(folder)]) == 2
    err = capsys.readouterr().err
    assert (f"cannot resume {out}: its run learnt from 4 corrected images (8 instances, from "
            f"{shapes_dataset.absolute()}), this one gives 1 corrected image (2 instances) that are not the "
            f"run's: give the same corrections (the command line's --masks {shapes_dataset.absolute()}), or "
            "start a new run") in err, err
    assert load_checkpoint(out)[1]["refine_training"]["epoch"] == 2


def test_resuming_a_finished_run_says_so_and_changes_nothing(shapes_dataset, tiny_checkpoint96, tmp_path, capsys):
    """``refine --resume`` (``refine(resume=True)``) of a run that had finished its epochs ran PRM on
    every image to train no epoch, and ended 'checkpoint: ... (1 epoch)' as if it had refined: it now
    says the run is finished and what trains it further, prepares nothing and writes nothing, as
    ``train --resume`` of a finished run does (its note in ``RefineResult.notes``)."""
    out = tmp_path / "refined.pt"
    start = ["refine", str(shapes_dataset), "--model", str(tiny_checkpoint96), "--out", str(out), "--batch-size",
             "4", "--device", "cpu"]
    assert main(start + ["--epochs", "1"]) == 0
    before, stamp = out.read_bytes(), out.stat().st_mtime_ns
    cache = sorted((tmp_path / "refined.pt.cache").rglob("*"))
    capsys.readouterr()
    assert main(start + ["--resume"]) == 0
    errors = capsys.readouterr().err
    assert errors.strip().splitlines()[-1] == (
        f"the run in {out} already finished its 1 epoch: nothing was trained or written. Nothing is left to do: to "
        "train it further, resume with --epochs M, M more than 1")
    assert "refining" not in errors and "checkpoint:" not in errors
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stamp
    assert sorted((tmp_path / "refined.pt.cache").rglob("*")) == cache

    from napari_prm.data import load_dataset

    stages = []
    result = refine(load_model(tiny_checkpoint96), dataset=load_dataset(shapes_dataset), out=out, epochs=1,
                    batch_size=4, device="cpu", resume=True, progress=lambda p: stages.append(p.stage))
    assert stages == [] and not result.cancelled and result.checkpoint == out  # nothing prepared nor trained
    assert [h.epoch for h in result.history] == [1] and result.model.head is not None
    assert result.notes == [f"the run in {out} already finished its 1 epoch: no epoch was trained and nothing was "
                            "written (epochs above 1 train it further)"]
    assert out.read_bytes() == before
