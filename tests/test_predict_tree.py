"""``napari-prm predict`` on a folder tree, and on images that share a file name.

A tiny random checkpoint and small crops of scikit-image photographs; every run is the real
command (`napari_prm.cli.main`) writing real outputs.
"""

import csv
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data

from napari_prm import build_model, io, save_model
from napari_prm.cli import main

FAST = ["--proposals", "prm", "--class-threshold", "0", "--peak-threshold", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(48, 48))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def labels_of(out: Path, stem: str) -> np.ndarray:
    return io.read_label_image(out / f"{stem}_labels.tif")


def write_plate(root: Path) -> dict[str, tuple[int, int]]:
    """A plate: two wells with a ``cat.png`` each (different crops), a deeper image, an image at
    the top, and a hidden folder; returns each image's relative stem and its shape."""
    photo = data.chelsea()
    images = {"A1/cat": photo[:60, :70], "A2/cat": photo[100:150, 200:290],
              "B1/day 2/chat été": photo[50:110, 50:100], "top": photo[200:250, :60]}
    for stem, pixels in images.items():
        (root / stem).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(root / f"{stem}.png", pixels)
    (root / ".thumbnails").mkdir()
    iio.imwrite(root / ".thumbnails" / "cat.png", photo[:40, :40])
    return {stem: pixels.shape[:2] for stem, pixels in images.items()}


def test_recursive_mirrors_the_tree_and_a_rerun_skips_it_all(tmp_path, checkpoint, capsys):
    """`predict` searched only a folder's own files; with sub-folders of images of one name
    (A1/cat.png, A2/cat.png) the outputs could not keep them apart."""
    plate = tmp_path / "plate"
    shapes = write_plate(plate)
    out = plate / "results"  # inside the tree: its outputs must not become inputs of a re-run
    command = ["predict", str(plate), "--recursive", "--model", str(checkpoint), "--out", str(out), *FAST]
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "4 image(s) written" in err and "0 failed" in err and ".thumbnails" not in err
    for stem, shape in shapes.items():
        assert labels_of(out, stem).shape == shape
        assert (out / f"{stem}_instances.json").is_file() and (out / f"{stem}.manifest.json").is_file()
    assert not (out / "cat_labels.tif").exists() and not (out / ".thumbnails").exists()
    # the COCO file_name is the image's path in the tree, so that A1's and A2's cat.png stay apart
    assert json.loads((out / "A1" / "cat_instances.json").read_text())["images"][0]["file_name"] == "A1/cat.png"
    assert json.loads((out / "top_instances.json").read_text())["images"][0]["file_name"] == "top.png"
    rows = summary(out)
    assert sorted(row["stem"] for row in rows) == sorted(shapes)
    assert {row["stem"]: Path(row["image"]).relative_to(plate).with_suffix("").as_posix() for row in rows} == {
        stem: stem for stem in shapes}

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*_labels.tif")}
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "0 image(s) written" in err and "4 skipped" in err and "0 failed" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_labels.tif")} == before
    assert len(summary(out)) == 4

    # without --recursive the folder's own image runs, and the note says how to get the others
    assert main(["predict", str(plate), "--model", str(checkpoint), "--out", str(tmp_path / "flat"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "1 image(s) written" in err and "pass --recursive" in err


@pytest.mark.slow  # a worker process
def test_recursive_with_a_worker_writes_the_same_tree(tmp_path, checkpoint, capsys):
    plate = tmp_path / "plate"
    shapes = write_plate(plate)
    outs = {}
    for workers in ([], ["--workers", "1"]):
        outs[bool(workers)] = out = tmp_path / f"out{len(workers)}"
        assert main(["predict", str(plate), "-r", "--model", str(checkpoint), "--out", str(out), *FAST,
                     *workers]) == 0
    for stem in shapes:
        np.testing.assert_array_equal(labels_of(outs[False], stem), labels_of(outs[True], stem))
        assert ((outs[False] / f"{stem}_instances.csv").read_bytes()
                == (outs[True] / f"{stem}_instances.csv").read_bytes())


def test_images_of_one_name_never_take_each_others_outputs(tmp_path, checkpoint, capsys):
    """Two ``x.png`` given as files were named ``x`` and ``x_2`` in the order given: a run on
    b/x.png after one on a/x.png skipped it as done (a's outputs were there), and a re-run
    in another order swapped the names."""
    for folder, crop in (("a", np.s_[:64, :64]), ("b", np.s_[100:140, 200:290])):
        (tmp_path / folder).mkdir()
        iio.imwrite(tmp_path / folder / "x.png", data.chelsea()[crop])
    a, b, out = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "out"
    model = ["--model", str(checkpoint), "--out", str(out), *FAST]

    assert main(["predict", str(a), *model]) == 0
    capsys.readouterr()
    assert labels_of(out, "x").shape == (64, 64)
    a_outputs = (out / "x_labels.tif").read_bytes()

    assert main(["predict", str(b), *model]) == 0
    err = capsys.readouterr().err
    assert "1 image(s) written" in err and "0 skipped" in err
    # whose outputs hold its name (a's, in the output folder), not a rule of case that does not apply
    assert f"note: {b}: outputs named x_2_* in {out}, as x_* there are another image's outputs ({a})" in err
    assert labels_of(out, "x_2").shape == (40, 90)
    assert (out / "x_labels.tif").read_bytes() == a_outputs

    # both again, b first: each finds its own outputs
    assert main(["predict", str(b), str(a), *model]) == 0
    err = capsys.readouterr().err
    assert "0 image(s) written" in err and "2 skipped" in err
    assert {Path(row["image"]).parent.name: row["stem"] for row in summary(out)} == {"a": "x", "b": "x_2"}
    assert (out / "x_labels.tif").read_bytes() == a_outputs


def test_images_never_started_are_cancelled_however_the_run_stops(tmp_path, checkpoint):
    """After Ctrl-C, summary.csv marked the images never started ``pending`` (the word of an image a
    running run has yet to do), while a cancel marked them ``cancelled``: two words for one state.
    ``predict_many`` interrupted (KeyboardInterrupt, as Ctrl-C raises it) and cancelled give one summary."""
    from napari_prm.batch import predict_many

    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(3):
        iio.imwrite(folder / f"cat {number}.png", data.chelsea()[number * 20:number * 20 + 48, :64])
    paths = sorted(folder.iterdir())
    settings = {"proposals": "prm", "class_threshold": 0.0, "peak_threshold": 0.0, "device": "cpu"}

    def interrupt(result, done, total) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_many(paths, str(checkpoint), tmp_path / "interrupted", progress=interrupt, **settings)
    cancelled = predict_many(paths, str(checkpoint), tmp_path / "cancelled",
                             progress=lambda result, done, total: None, cancel=lambda: True, **settings)
    assert [r.status for r in cancelled.results] == ["cancelled"] * 3
    interrupted = [(row["stem"], row["status"]) for row in summary(tmp_path / "interrupted")]
    assert interrupted == [("cat 0", "written"), ("cat 1", "cancelled"), ("cat 2", "cancelled")]
    assert {status for _, status in interrupted[1:]} == {r.status for r in cancelled.results}


def test_ctrl_c_counts_the_images_on_disk_also_those_finished_after_it(tmp_path, checkpoint, capsys, monkeypatch):
    """After Ctrl-C, `predict` counted the images whose results had come back; one whose
    outputs were written when the interrupt landed (in this process: while the summary was
    being updated; on a cluster: in another worker) was on disk but not counted, and its
    summary row said "pending"."""
    from napari_prm.io import fileset

    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(3):
        iio.imwrite(folder / f"cat {number}.png", data.chelsea()[number * 20:number * 20 + 48, :64])
    out = tmp_path / "out"

    def interrupt_once_written(step: str) -> None:
        if step == "finished":  # the first image's outputs are all in place: Ctrl-C lands now
            raise KeyboardInterrupt

    monkeypatch.setattr(fileset, "_step_hook", interrupt_once_written)
    assert main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out), *FAST]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: 1 of 3 images written to {out} (summary: {out / 'summary.csv'}); "
        "the same command goes on with the others")
    assert io.complete_prediction(out, "cat 0") is not None and not (out / "cat 1.manifest.json").exists()
    assert [(row["stem"], row["status"]) for row in summary(out)] == [
        ("cat 0", "written"), ("cat 1", "cancelled"), ("cat 2", "cancelled")]

    monkeypatch.setattr(fileset, "_step_hook", None)
    assert main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "2 image(s) written" in err and "1 skipped" in err


def test_a_log_gets_plain_progress_lines_not_a_redrawn_bar(tmp_path, checkpoint, capsys, monkeypatch):
    """With stderr in a log file the progress bar is off, and a long run said nothing until its
    end (or redrew a bar with carriage returns, where tqdm took the log for a terminal)."""
    from napari_prm import cli

    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(3):
        iio.imwrite(folder / f"cat {number}.png", data.chelsea()[number * 20:number * 20 + 48, :64])
    (folder / "broken.png").write_bytes(b"not a PNG")
    monkeypatch.setattr(cli, "LOG_PROGRESS_EVERY", 0.0)  # a line after every image
    assert main(["predict", str(folder), "--model", str(checkpoint), "--out", str(tmp_path / "out"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("predict: ")]
    assert lines == ["predict: 1 of 4 images done (0 written, 0 skipped, 1 failed)",
                     "predict: 2 of 4 images done (1 written, 0 skipped, 1 failed)",
                     "predict: 3 of 4 images done (2 written, 0 skipped, 1 failed)"]
    assert err.strip().splitlines()[-1].startswith("3 image(s) written to")


def test_given_stems_are_compared_as_paths(tmp_path, checkpoint):
    """``predict_many([a.png, a.tif], stems=["a", "./a"])``: both stems name ``a_*``, yet they were taken
    for two; the second image found the first's outputs and was skipped, "the image changed since its
    outputs were written". Stems are compared as paths (and without case, as `output_stems` keeps them
    apart): two that name the same outputs are refused, naming both; a stem is used as the path it is."""
    from napari_prm.batch import predict_many

    folder = tmp_path / "images"
    folder.mkdir()
    iio.imwrite(folder / "a.png", data.chelsea()[:48, :64])
    iio.imwrite(folder / "a.tif", data.chelsea()[48:96, :64])
    paths = [folder / "a.png", folder / "a.tif"]
    settings = {"proposals": "prm", "class_threshold": 0.0, "peak_threshold": 0.0, "device": "cpu"}
    out = tmp_path / "out"
    for stems, alike in ((["a", "./a"], ""), (["x//a/", "x/A"], ", upper and lower case alike")):
        with pytest.raises(ValueError) as refused:
            predict_many(paths, str(checkpoint), out, stems=stems, **settings)
        normal = "a" if stems[0] == "a" else "x/a"
        assert str(refused.value) == (
            f"stems[0] {stems[0]!r} and stems[1] {stems[1]!r} name the same outputs ({normal}_* in {out}{alike}"
            + (", as Windows and macOS take names" if alike else "")
            + "): stems must be 2 distinct names, one per image")
    assert not out.exists()  # refused before anything was written

    batch = predict_many(paths, str(checkpoint), out, stems=["./x/a", "x//b"], **settings)
    assert [(r.stem, r.status) for r in batch.results] == [("x/a", "written"), ("x/b", "written")]
    assert [row["stem"] for row in summary(out)] == ["x/a", "x/b"]
    assert io.complete_prediction(out / "x", "a") is not None and io.complete_prediction(out / "x", "b") is not None


def test_stems_mirror_the_innermost_folder_given():
    """``images/ images/A1/`` (how the sub-folder note told users to pass sub-folders) keeps its
    flat names; only an image below a folder given is named by its path there."""
    from napari_prm.batch import output_place, output_stems

    here = Path("/data")
    images = [here / "plate" / "top.png", here / "plate" / "A1" / "cat.png", here / "plate" / "A2" / "cat.png",
              here / "elsewhere" / "cat.png"]
    assert output_stems(images, roots=[here / "plate"]) == ["top", "A1/cat", "A2/cat", "cat"]
    assert output_stems(images, roots=[here / "plate", here / "plate" / "A1"]) == ["top", "cat", "A2/cat", "cat_2"]
    assert output_stems(images) == ["top", "cat", "cat_2", "cat_3"]
    assert output_place(Path("/out"), "A2/cat") == (Path("/out/A2"), "cat")
    for bad in ("../cat", "A1/../../cat", "/cat", ""):
        with pytest.raises(ValueError, match="output stem"):
            output_place(Path("/out"), bad)


def test_an_image_that_killed_the_run_runs_last_in_the_next(tmp_path, checkpoint, capsys):
    """An image too large for memory gets the process killed by the kernel; the resumed run
    started again with that image and was killed at the same place, every time, so the
    images after it were never done."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from napari_prm.batch import KILLED_ON, RUNNING_NAME

    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(3):
        iio.imwrite(folder / f"cat {number}.png", data.chelsea()[number * 20:number * 20 + 48, :64])
    out = tmp_path / "out"
    command = ["predict", str(folder), "--model", str(checkpoint), "--out", str(out), *FAST]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "napari_prm", *command], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / RUNNING_NAME).is_file() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)  # as the kernel ends a process out of memory
        process.wait(timeout=60)
    finally:
        process.kill()
    killed = Path(json.loads((out / RUNNING_NAME).read_text())["image"])
    assert killed.parent == folder

    assert main(command) == 0
    err = capsys.readouterr().err
    assert f"{killed}: {KILLED_ON}" in err
    assert "0 failed" in err and not (out / RUNNING_NAME).exists()
    rows = {Path(row["image"]): row for row in summary(out)}
    assert all(row["status"] in ("written", "skipped") for row in rows.values()) and len(rows) == 3
    ran = [image for image, row in rows.items() if row["status"] == "written"]
    assert killed in ran
    written_at = {image: (out / f"{image.stem}.manifest.json").stat().st_mtime_ns for image in ran}
    assert max(written_at, key=written_at.get) == killed  # after the others


def test_an_out_folder_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys):
    """A read-only --out failed after the model had loaded, with the raw error of a temporary
    file (`[Errno 30] Read-only file system: '.../.summary.csv.~host-1-2~x.tmp.csv'`)."""
    import os

    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "out"
    elif Path("/sys/kernel").is_dir():  # root writes into read-only folders, not into sysfs
        out = Path("/sys/napari-prm-test-out")
    else:
        pytest.skip("no folder this user cannot write into")
    iio.imwrite(tmp_path / "cat.png", data.chelsea()[:48, :64])
    assert main(["predict", str(tmp_path / "cat.png"), "--out", str(out),
                 "--model", str(tmp_path / "no such model.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"napari-prm predict: error: cannot write into folder {out}: ")


def test_recursive_takes_each_images_proposals_from_the_same_place_in_the_tree(tmp_path, checkpoint, capsys):
    """With --recursive, a proposal folder was searched by file stem only: A1/cat.png and
    A2/cat.png would both have taken proposals/cat.*."""
    plate, proposals = tmp_path / "plate", tmp_path / "proposals"
    masks = {}
    for well, rows in (("A1", slice(0, 30)), ("A2", slice(18, 48))):
        (plate / well).mkdir(parents=True)
        (proposals / well).mkdir(parents=True)
        iio.imwrite(plate / well / "cat.png", data.chelsea()[:48, :64])
        mask = np.zeros((1, 48, 64), bool)
        mask[0, rows, 4:60] = True
        np.save(proposals / well / "cat.npy", mask)
        masks[well] = mask[0]
    out = tmp_path / "out"
    assert main(["predict", str(plate), "-r", "--model", str(checkpoint), "--out", str(out),
                 "--proposals", str(proposals), "--peak-threshold", "0", "--device", "cpu"]) == 0
    for well, mask in masks.items():
        labels = labels_of(out, f"{well}/cat")
        assert labels.max() > 0, f"{well}: no instance"
        np.testing.assert_array_equal(labels > 0, mask)
    (proposals / "A2" / "cat.npy").unlink()
    assert main(["predict", str(plate), "-r", "--model", str(checkpoint), "--out", str(tmp_path / "again"),
                 "--proposals", str(proposals), "--peak-threshold", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"no proposal file named cat.* in {proposals / 'A2'} or {proposals}" in err


def _images(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir()
    for number in range(count):
        iio.imwrite(folder / f"cat {number}.png", data.chelsea()[number * 20:number * 20 + 48, :64])
    return sorted(folder.iterdir())


def _dead_marker(out: Path, image: Path) -> None:
    """What a run killed while predicting ``image`` leaves: the marker of a process that is gone
    (this process's id with another start time)."""
    import os

    from napari_prm.batch import RUNNING_NAME
    from napari_prm.io.atomic import _host

    out.mkdir(exist_ok=True)
    gone = f"{_host()}-{os.getpid()}-1"
    (out / RUNNING_NAME).write_text(json.dumps({"image": os.path.abspath(image), "owner": gone}))


SETTINGS = {"proposals": "prm", "peak_threshold": 0, "device": "cpu"}


def test_a_killed_runs_marker_is_kept_until_its_image_has_run_again(tmp_path, checkpoint):
    """The marker of a killed run was removed at the end of any run without a cluster, so a
    resumed run cancelled (Ctrl-C) before it reached that image, kept for last, forgot it: the
    next resume ran it first again, and was killed again."""
    import os

    from napari_prm.batch import KILLED_ON, RUNNING_NAME, _killed_on, predict_many

    images, out = _images(tmp_path / "images"), tmp_path / "out"
    _dead_marker(out, images[0])
    done = []
    batch = predict_many(images, str(checkpoint), out, progress=lambda result, *_: done.append(result),
                         cancel=lambda: len(done) >= 1, **SETTINGS)
    assert [r.status for r in batch.results] == ["cancelled", "written", "cancelled"]
    assert _killed_on(out).image == os.path.abspath(images[0])  # the next run still takes it last

    batch = predict_many(images, str(checkpoint), out, **SETTINGS)
    assert [r.status for r in batch.results] == ["written", "skipped", "written"]
    assert KILLED_ON in batch.results[0].notes and not (out / RUNNING_NAME).exists()


def test_a_killed_runs_image_that_did_not_run_again_gets_no_note_and_a_cluster_clears_the_marker(
        tmp_path, checkpoint):
    """An image whose outputs were complete when the marker named it (killed just after writing)
    was skipped with the note "... so it ran after the others"; a run on a cluster, which writes
    no marker, left the killed run's in place, so every later cluster run said it again."""
    from distributed import Client

    from napari_prm.batch import KILLED_ON, RUNNING_NAME, predict_many

    images, out = _images(tmp_path / "images", 2), tmp_path / "out"
    predict_many(images, str(checkpoint), out, **SETTINGS)
    _dead_marker(out, images[1])
    batch = predict_many(images, str(checkpoint), out, **SETTINGS)
    assert [r.status for r in batch.results] == ["skipped", "skipped"]
    assert not any(KILLED_ON in r.notes for r in batch.results)

    for path in out.glob("cat 1*"):  # its outputs removed: the cluster runs it again
        path.unlink()
    _dead_marker(out, images[1])
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        batch = predict_many(images, str(checkpoint), out, client, overwrite=False, **SETTINGS)
    assert [r.status for r in batch.results] == ["skipped", "written"]
    assert KILLED_ON in batch.results[1].notes
    assert not (out / RUNNING_NAME).exists()


def test_recursive_follows_linked_sub_folders_and_names_their_images_by_the_tree(tmp_path, checkpoint, capsys):
    """A sub-folder that is a symbolic link (plate/A1 -> raw/A1, as data trees are often put
    together) got the note "pass --recursive", and --recursive then left its images out without
    a word; an image reached through a link was named after where the link points, not by its
    place in the tree, so A1's and A2's cat.png were cat and cat_2 at the top of --out."""
    from napari_prm.batch import collect_images, output_stems

    raw, plate = tmp_path / "raw", tmp_path / "plate"
    for well, crop in (("A1", np.s_[:48, :64]), ("A2", np.s_[60:100, :50])):
        (raw / well).mkdir(parents=True)
        iio.imwrite(raw / well / "cat.png", data.chelsea()[crop])
    plate.mkdir()
    iio.imwrite(plate / "own.png", data.chelsea()[100:148, 100:164])
    try:
        for well in ("A1", "A2"):
            (plate / well).symlink_to(raw / well, target_is_directory=True)
        (plate / "again").symlink_to(plate, target_is_directory=True)  # a loop: searched once
    except OSError:
        pytest.skip("this file system makes no symbolic links")
    found, problems = collect_images([plate], recursive=True)
    assert found == [plate / "own.png", plate / "A1" / "cat.png", plate / "A2" / "cat.png"] and problems == []
    assert output_stems(found, roots=[plate]) == ["own", "A1/cat", "A2/cat"]

    out = tmp_path / "out"
    assert main(["predict", str(plate), "-r", "--model", str(checkpoint), "--out", str(out), *FAST]) == 0
    assert "3 image(s) written" in capsys.readouterr().err
    assert labels_of(out, "A1/cat").shape == (48, 64) and labels_of(out, "A2/cat").shape == (40, 50)


@pytest.mark.skipif(__import__("os").name == "nt", reason="Windows file names hold no backslash")
def test_a_file_name_that_is_no_safe_output_stem_gets_one_instead_of_refusing_the_run(tmp_path, checkpoint, capsys):
    r"""A folder holding ``a\b.png`` (a Windows path kept as a Linux file name) or ``..png`` was
    refused as a whole: "output stem 'a\\b' is not a file stem or a relative path inside the
    output folder", though nothing would have gone outside --out."""
    from napari_prm.batch import output_stems

    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    for name in ("a\\b.png", "..png", "cat.png"):
        iio.imwrite(folder / name, data.chelsea()[:48, :64])
    images = sorted(folder.iterdir())
    assert output_stems(images, roots=[folder]) == ["_", "a_b", "cat"]
    assert main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "3 image(s) written" in err and "note:" not in err
    assert {row["stem"] for row in summary(out)} == {"_", "a_b", "cat"}
    assert labels_of(out, "a_b").shape == (48, 64) and not (tmp_path / "a").exists()


def test_a_resumed_tree_run_removes_what_a_killed_one_left_in_the_sub_folders(tmp_path, checkpoint):
    """A run looked for the temporaries of killed writes in the top of --out only: those left
    in a sub-folder of a --recursive run's tree stayed for good."""
    import os

    from napari_prm.io.atomic import _host

    plate, out = tmp_path / "plate", tmp_path / "out"
    write_plate(plate)
    command = ["predict", str(plate), "-r", "--model", str(checkpoint), "--out", str(out), *FAST]
    assert main(command) == 0
    gone = f"{_host()}-{os.getpid()}-1"
    left = [out / "A1" / f".cat.manifest.json.~{gone}~x1.tmp.json", out / f".top.manifest.json.~{gone}~x2.tmp.json"]
    for path in left:
        path.write_text("{")
    assert main(command) == 0
    assert not any(path.exists() for path in left)


def test_an_image_over_pillows_warning_size_is_predicted_without_speaking_of_an_attack(
        tmp_path, checkpoint, capsys, monkeypatch):
    """Between Pillow's two limits (89 and 179 megapixels: a 10000×10000 PNG) the image is read,
    but `predict` printed Pillow's "DecompressionBombWarning: ... could be decompression bomb DOS
    attack" to the user who made it. The limit is lowered here so that a small image is over it."""
    import warnings

    from PIL import Image

    iio.imwrite(tmp_path / "large.png", data.chelsea()[:60, :80])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # warned above 3000, refused above 6000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", str(tmp_path / "large.png"), "--model", str(checkpoint),
                     "--out", str(tmp_path / "out"), *FAST]) == 0
    assert not [warning for warning in caught if "decompression bomb" in str(warning.message)]
    assert "1 image(s) written" in capsys.readouterr().err


def test_a_tree_without_images_says_where_none_were_found(tmp_path):
    """`predict -r` on a tree without images said "plate: no images (.png, ...) or its sub-folders"."""
    from napari_prm.batch import collect_images

    (tmp_path / "plate" / "A1").mkdir(parents=True)
    (tmp_path / "plate" / "A1" / "notes.txt").write_text("no image")
    assert collect_images([tmp_path / "plate"], recursive=True) == ([], [
        f"{tmp_path / 'plate'}: no images (.png, .jpg, .jpeg, .tif, .tiff, .bmp, .gif, .webp) "
        "in this folder or its sub-folders"])


def test_images_whose_folder_was_renamed_keep_their_outputs(tmp_path, checkpoint, capsys):
    """Since each manifest records its image's path, a resume after the image folder was renamed
    or moved (another mount point) took every image for another one of the same name: all were
    predicted again, as x_2, x_3 ..., with a note that "x_* are another image's"."""
    images, out = _images(tmp_path / "images", 2), tmp_path / "out"
    assert main(["predict", str(tmp_path / "images"), "--model", str(checkpoint), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    (tmp_path / "images").rename(tmp_path / "renamed")
    assert main(["predict", str(tmp_path / "renamed"), "--model", str(checkpoint), "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "0 image(s) written" in err and "2 skipped" in err and "note:" not in err
    assert sorted(p.name for p in out.glob("*.manifest.json")) == [f"{image.stem}.manifest.json" for image in images]
    assert [Path(row["image"]).parent.name for row in summary(out)] == ["renamed", "renamed"]

    # another image of one of those names is still another image
    (tmp_path / "other").mkdir()
    iio.imwrite(tmp_path / "other" / images[0].name, data.chelsea()[100:148, 100:164])
    assert main(["predict", str(tmp_path / "other"), "--model", str(checkpoint), "--out", str(out), *FAST]) == 0
    assert "1 image(s) written" in capsys.readouterr().err
    assert (out / f"{images[0].stem}_2.manifest.json").is_file()
def test_a_suffix_never_takes_the_name_of_another_input(tmp_path, checkpoint, capsys):
    """A folder of ``a.png``, ``a.tif`` and ``a_2.png``: ``a.tif`` took ``a_2``, so the real ``a_2.png`` got
    ``a_2_2``, with a note that named neither. A suffix now passes over the stems other inputs have by
    their own names, and the note says which input has which outputs. A folder an earlier version
    named so keeps its stems: a resumed run finds every image's own outputs."""
    from napari_prm.batch import predict_many

    folder = tmp_path / "images"
    folder.mkdir()
    for number, name in enumerate(("a.png", "a.tif", "a_2.png")):
        iio.imwrite(folder / name, data.chelsea()[number * 30:number * 30 + 40, :56])
    out = tmp_path / "out"
    command = ["predict", str(folder), "--model", str(checkpoint), "--out", str(out), *FAST]
    assert main(command) == 0
    err = capsys.readouterr().err
    assert {Path(row["image"]).name: row["stem"] for row in summary(out)} == {
        "a.png": "a", "a.tif": "a_3", "a_2.png": "a_2"}
    assert (f"note: {folder / 'a.tif'}: outputs named a_3_* in {out}, as a.png's are named a_*; "
            "a_2.png's are named a_2_*") in err.splitlines()
    assert "a_2.png: outputs named" not in err
    assert io.complete_prediction(out, "a_2").info["image_path"] == str(folder / "a_2.png")

    # outputs an earlier version named a, a_2 (a.tif's), a_2_2 (a_2.png's) are kept, each its own image's
    old = tmp_path / "old"
    paths = [folder / "a.png", folder / "a.tif", folder / "a_2.png"]
    predict_many(paths, str(checkpoint), old, stems=["a", "a_2", "a_2_2"], device="cpu", proposals="prm",
                 class_threshold=0.0, peak_threshold=0.0)
    assert main(command[:-len(FAST) - 2] + ["--out", str(old), *FAST]) == 0
    err = capsys.readouterr().err
    assert "0 image(s) written" in err and "3 skipped" in err
    assert f"note: {folder / 'a_2.png'}: outputs named a_2_2_* in {old}, as a.tif's are named a_2_*" in err


def test_images_whose_names_differ_only_in_case_never_share_outputs(tmp_path, checkpoint, capsys):
    """``Cat.png`` and ``cat.png`` (distinct files on Linux) got the stems ``Cat`` and ``cat``:
    on Windows and macOS, or in the output folder copied there, ``Cat_labels.tif`` and
    ``cat_labels.tif`` are one file, so one image's outputs replaced the other's."""
    images = tmp_path / "images"
    images.mkdir()
    iio.imwrite(images / "Cat.png", data.chelsea()[:64, :64])
    iio.imwrite(images / "cat.png", data.chelsea()[100:140, 200:290])
    out = tmp_path / "out"
    assert main(["predict", str(images), "--model", str(checkpoint), "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    # the other image's are Cat_*: 'as cat_* are another image's' named files that are not there
    assert (f"note: {images / 'cat.png'}: outputs named cat_2_* in {out}, as Cat.png's are named Cat_* "
            "(upper and lower case alike, as Windows and macOS take names)") in err
    assert labels_of(out, "Cat").shape == (64, 64) and labels_of(out, "cat_2").shape == (40, 90)
    names = [p.name for p in out.iterdir()]
    assert len({name.casefold() for name in names}) == len(names)
    assert {row["image"]: row["stem"] for row in summary(out)} == {
        str(images / "Cat.png"): "Cat", str(images / "cat.png"): "cat_2"}


def test_a_cluster_worker_does_not_speak_of_an_attack_either(tmp_path, checkpoint, monkeypatch):
    """The command line silenced Pillow's "could be decompression bomb" warning in its own
    process only: `--workers` processes, which run `_run_task`, still printed it."""
    import warnings

    from PIL import Image

    from napari_prm.batch import _run_task, model_spec

    iio.imwrite(tmp_path / "large.png", data.chelsea()[:60, :80])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # warned above 3000, refused above 6000
    spec, _ = model_spec(str(checkpoint), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _run_task(str(tmp_path / "large.png"), "large", str(tmp_path / "out"), spec,
                           {"proposals": "prm", "peak_threshold": 0}, False, None, False)
    assert result.status == "written", result.error
    assert not [warning for warning in caught if "decompression bomb" in str(warning.message)]


def test_an_interrupted_run_writes_its_summary_before_it_lets_the_folder_go(tmp_path, checkpoint, capsys,
                                                                          monkeypatch):
    """After Ctrl-C, `predict` marked the images it found written on disk in ``summary.csv`` once
    the run had let the folder's lock go: a run started then (the next job of a queue) could
    rewrite ``summary.csv`` side by side with it, and lose its rows or have them replaced. Each
    write of ``summary.csv`` is here met by a second run, started in another thread: it must be
    refused, the folder still being this run's."""
    import threading

    from napari_prm import batch
    from napari_prm.io import fileset

    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(3):
        iio.imwrite(folder / f"cat {number}.png", data.chelsea()[number * 20:number * 20 + 48, :64])
    out = tmp_path / "out"
    write_summary, second_runs = batch._write_summary, []

    def second_run() -> None:
        try:
            with batch._folder_lock(out):
                second_runs.append("got the folder")
        except batch.FolderInUse:
            second_runs.append("refused")

    def write_summary_meanwhile(path, rows) -> None:
        thread = threading.Thread(target=second_run)
        thread.start()
        thread.join()
        write_summary(path, rows)

    def interrupt_once_written(step: str) -> None:
        if step == "finished":  # the first image's outputs are all in place: Ctrl-C lands now
            raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_write_summary", write_summary_meanwhile)
    monkeypatch.setattr(fileset, "_step_hook", interrupt_once_written)
    assert main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out), *FAST]) == 130
    assert "interrupted: 1 of 3 images written" in capsys.readouterr().err
    assert [(row["stem"], row["status"]) for row in summary(out)] == [
        ("cat 0", "written"), ("cat 1", "cancelled"), ("cat 2", "cancelled")]
    assert len(second_runs) >= 3 and set(second_runs) == {"refused"}, second_runs


def unreadable(monkeypatch, folder: Path) -> None:
    """``folder`` cannot be listed, as a folder without read permission is for a user other
    than root (root reads it all the same, so the refusal is the system call's, made here)."""
    import os

    folder.chmod(0)
    listing = os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_sub_folder_that_cannot_be_listed_is_named_and_fails_the_run(tmp_path, checkpoint, capsys, monkeypatch):
    """`predict --recursive` left out the images of a sub-folder it could not list, silently: the
    run said "3 image(s) written ... 0 failed" and exited 0, one well short."""
    from napari_prm.batch import collect_images

    plate = tmp_path / "plate"
    write_plate(plate)
    unreadable(monkeypatch, plate / "A2")
    try:
        images, problems = collect_images([plate], recursive=True)
        assert sorted(p.relative_to(plate).as_posix() for p in images) == [
            "A1/cat.png", "B1/day 2/chat été.png", "top.png"]
        assert problems == [f"{plate / 'A2'}: cannot list its files (Permission denied); its images are left out"]

        out = tmp_path / "out"
        command = ["predict", str(plate), "--recursive", "--model", str(checkpoint), "--out", str(out), *FAST]
        assert main(command) == 1  # an image is missing from the run: not a success
        err = capsys.readouterr().err
        assert f"{plate / 'A2'}: cannot list its files (Permission denied)" in err
        assert "3 image(s) written" in err and "1 failed" in err
        assert [row["status"] for row in summary(out)] == ["written"] * 3 + ["failed"]  # the folder left out

        # the input folder itself: its reason, not "no images"
        images, problems = collect_images([plate / "A2"], recursive=False)
        assert images == [] and problems == [
            f"{plate / 'A2'}: cannot list its files (Permission denied); its images are left out"]
    finally:
        (plate / "A2").chmod(0o755)


def test_a_link_to_an_image_that_is_gone_is_named_and_fails_the_run(tmp_path, checkpoint, capsys):
    """A linked image whose target was moved (or lies on a share not mounted) was left out without a
    word, in a folder and with --recursive: "1 image(s) written ... 0 failed", exit status 0."""
    from napari_prm.batch import collect_images

    plate = tmp_path / "plate"
    (plate / "A1").mkdir(parents=True)
    iio.imwrite(plate / "A1" / "cat.png", data.chelsea()[:48, :64])
    try:
        (plate / "A1" / "dog.png").symlink_to(tmp_path / "raw" / "dog.png")  # raw/ moved away
    except OSError:
        pytest.skip("this file system makes no symbolic links")
    said = f"{plate / 'A1' / 'dog.png'}: a link to {tmp_path / 'raw' / 'dog.png'}, which does not exist; left out"
    for inputs, recursive in (([plate], True), ([plate / "A1"], False)):
        images, problems = collect_images(inputs, recursive=recursive)
        assert images == [plate / "A1" / "cat.png"] and problems == [said]

    out = tmp_path / "out"
    assert main(["predict", str(plate), "-r", "--model", str(checkpoint), "--out", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    assert said in err and "1 image(s) written" in err and "1 failed" in err
    assert [(row["stem"], row["status"]) for row in summary(out)] == [("A1/cat", "written"), ("", "failed")]
