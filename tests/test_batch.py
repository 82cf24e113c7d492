"""Batch prediction on a real dask.distributed cluster: resumable, isolated failures, same outputs.

Real images (scikit-image samples at a quarter of their size), a tiny random checkpoint,
and worker processes: two in a `LocalCluster`, or a scheduler and a worker started as
separate processes for ``--scheduler``.
"""

import collections
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_prm import build_model, io, load_model, predict, save_model
from napari_prm.batch import label_stack, predict_many, start_local_cluster
from napari_prm.cli import main

SETTINGS = {"proposals": "prm", "peak_threshold": 0.0}


def summary_rows(out: Path) -> dict:
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        return {Path(row["image"]).name: row for row in csv.DictReader(handle)}


def output_state(out: Path) -> dict:
    """Every output file's (inode, modification time): unchanged when nothing was rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()
            if p.name != "summary.csv"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(64, 64))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Three RGB photographs, a 16-bit grayscale TIFF, and a PNG that is not one."""
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    iio.imwrite(folder / "cat.png", data.chelsea()[::4, ::4])
    iio.imwrite(folder / "coffee.jpg", data.coffee()[::4, ::4])
    iio.imwrite(folder / "astronaut.png", data.astronaut()[::4, ::4])
    tifffile.imwrite(folder / "camera16.tif", data.camera()[::4, ::4].astype(np.uint16) * 200)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a PNG")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each (torch with one thread)."""
    client = start_local_cluster(2, dashboard=False)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.mark.slow  # worker processes: 7-12 s on a loaded 2-core machine
def test_cluster_writes_the_one_process_outputs_reports_the_corrupt_image_and_resumes(
        tmp_path, checkpoint, images, client):
    out = tmp_path / "out"
    seen = []
    batch = predict_many(images, str(checkpoint), out, client, prms_format="npy",
                         progress=lambda result, done, total: seen.append((result.status, done, total)),
                         **SETTINGS)
    rows = summary_rows(out)
    assert list(rows) == [p.name for p in images]
    # a file that cannot be read is not tried again: another attempt cannot mend it
    assert rows["broken.png"]["status"] == "failed" and rows["broken.png"]["attempts"] == "1"
    assert "cannot read image" in rows["broken.png"]["error"] and "broken.png" in rows["broken.png"]["error"]
    good = [p for p in images if p.name != "broken.png"]
    assert [rows[p.name]["status"] for p in good] == ["written"] * 4
    assert sorted(done for _, done, _ in seen) == [1, 2, 3, 4, 5] and {total for *_, total in seen} == {5}

    # The same images in this process with the one-image API: byte-equal labels, equal JSON.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the workers, so the float sums run in the same order
    try:
        model = load_model(checkpoint)
        for path in good:
            prediction = predict(io.read_image(path), model, **SETTINGS)
            io.write_prediction(prediction, tmp_path / "ref", path.stem, prms_format="npy",
                                image_file_name=path.name)
            assert int(rows[path.name]["peaks"]) == len(prediction.peaks) > 0
            assert int(rows[path.name]["instances"]) == len(prediction.instances) > 0
    finally:
        torch.set_num_threads(threads)
    for path in good:
        for suffix in ("_labels.tif", "_instances.json", "_instances.csv", "_peaks.csv"):
            reference = tmp_path / "ref" / f"{path.stem}{suffix}"
            assert (out / f"{path.stem}{suffix}").read_bytes() == reference.read_bytes()
        np.testing.assert_array_equal(np.load(out / f"{path.stem}_prms.npy"),
                                      np.load(tmp_path / "ref" / f"{path.stem}_prms.npy"))
    assert [r.status for r in batch.results] == [rows[p.name]["status"] for p in images]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # Second run: the finished images are skipped (no file rewritten), the broken one retried.
    before = output_state(out)
    again = predict_many(images, str(checkpoint), out, client, prms_format="npy", **SETTINGS)
    rows = summary_rows(out)
    assert [rows[p.name]["status"] for p in good] == ["skipped"] * 4 and len(again.written) == 0
    assert [rows[p.name]["peaks"] for p in good] == [str(r.peaks) for r in batch.results if r.status == "written"]
    assert rows["broken.png"]["status"] == "failed"
    assert output_state(out) == before

    # Asking for another PRM format: skipped, saying so; recomputed with overwrite only.
    partial = predict_many(images[:1], str(checkpoint), out, client, prms_format="tiff", **SETTINGS)
    assert partial.results[0].status == "skipped" and "hold no PRMs as tiff" in partial.results[0].error
    redone = predict_many(images[:1], str(checkpoint), out, client, prms_format="tiff", overwrite=True, **SETTINGS)
    assert redone.results[0].status == "written"
    assert (out / f"{images[0].stem}_prms.tif").exists() and not (out / f"{images[0].stem}_prms.npy").exists()


class DieOnWorker:
    """Proposals that kill their worker process for images of some sizes.

    ``once``: only the first time (a marker file remembers); ``always``: every time.
    """

    def __init__(self, folder: Path, once=(), always=()):
        self.folder, self.once, self.always = folder, set(once), set(always)

    def __call__(self, image):
        from napari_prm.proposals import default_proposals

        shape = tuple(image.shape[:2])
        marker = self.folder / f"died-{shape[0]}x{shape[1]}"
        if shape in self.always or (shape in self.once and not marker.exists()):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return default_proposals(image)


@pytest.mark.slow  # worker processes: 7-12 s on a loaded 2-core machine
def test_a_killed_worker_is_retried_once_then_reported(tmp_path, checkpoint, images, client):
    good = [p for p in images if p.name != "broken.png"]
    shapes = {p.name: io.read_image(p).shape[:2] for p in good}
    # The cat's worker dies the first time: the second attempt writes it.
    predict_many(good, str(checkpoint), tmp_path / "once", client, proposals=DieOnWorker(
        tmp_path, once=[shapes["cat.png"]]))
    rows = summary_rows(tmp_path / "once")
    assert rows["cat.png"]["status"] == "written" and rows["cat.png"]["attempts"] == "2"
    assert all(rows[p.name]["status"] == "written" for p in good)  # others on that worker are re-run too
    # The coffee's worker dies every time: reported after two attempts, the next image still done.
    # (One task in flight at a time, so that no other image shares a dying worker.)
    batch = predict_many([images[[p.name for p in images].index("coffee.jpg")], good[0]], str(checkpoint),
                         tmp_path / "always", client, max_in_flight=1,
                         proposals=DieOnWorker(tmp_path, always=[shapes["coffee.jpg"]]))
    # the next image is written; on a loaded machine it may reach a worker the scheduler has not
    # yet seen die, and then take a second attempt itself
    assert (batch.results[0].status, batch.results[0].attempts) == ("failed", 2)
    assert batch.results[1].status == "written" and batch.results[1].attempts in (1, 2)
    assert "worker died" in summary_rows(tmp_path / "always")["coffee.jpg"]["error"]
    assert io.complete_prediction(tmp_path / "always", "coffee") is None
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed workers


@pytest.mark.slow  # worker processes: 7-12 s on a loaded 2-core machine
def test_an_interrupt_after_the_cluster_died_is_not_replaced_by_the_clusters_error(tmp_path, checkpoint, images):
    """`timeout` and batch systems signal every process of ``predict --workers``: the workers and
    the scheduler were gone when the interrupt's cleanup cancelled their tasks, and its
    ClosedClientError ("Client is closed") replaced the interrupt, so that the command did not
    say what it had written. Here the cluster closes as the first image is reported."""
    good = [p for p in images if p.name != "broken.png"] * 2
    client = start_local_cluster(2, dashboard=False)
    cluster = client.cluster

    def interrupt(result, done, total):
        if done == 1:
            cluster.close()
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            predict_many(good, str(checkpoint), tmp_path / "out", client, progress=interrupt, overwrite=True)
    finally:
        client.close()
        cluster.close()


@pytest.mark.slow  # worker processes: 7-12 s on a loaded 2-core machine
def test_scheduler_option_uses_a_cluster_started_separately(tmp_path, checkpoint, images, capsys):
    """``napari-prm predict --scheduler`` against ``dask scheduler`` + ``dask worker`` processes,
    with the predict options passed through: the outputs are those of the one-process command."""
    address_file = tmp_path / "scheduler.json"
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    scheduler = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(address_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        worker = subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(address_file),
                                   "--nthreads", "1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
        good = [str(p) for p in images if p.name in ("cat.png", "camera16.tif")]
        out = tmp_path / "out"
        options = ["--model", str(checkpoint), "--proposals", "prm", "--preset", "default", "--peak-threshold", "0",
                   "--class-threshold", "-1000", "--max-peaks", "2", "--prm-mode", "fast"]
        assert main(["predict", *good, *options, "--out", str(out), "--scheduler", address]) == 0
        rows = summary_rows(out)
        assert [rows[name]["status"] for name in ("cat.png", "camera16.tif")] == ["written", "written"]
        assert io.complete_prediction(out, "cat") and io.complete_prediction(out, "camera16")
        assert [rows[name]["peaks"] for name in ("cat.png", "camera16.tif")] == ["2", "2"]  # --max-peaks applied
        assert "the 2 strongest" in capsys.readouterr().err  # the worker's notes reach the command line
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as on the worker, so the float sums run in the same order
        try:
            assert main(["predict", *good, *options, "--out", str(tmp_path / "here")]) == 0
        finally:
            torch.set_num_threads(threads)
        for stem in ("cat", "camera16"):
            for suffix in ("_labels.tif", "_instances.json", "_instances.csv", "_peaks.csv"):
                assert (out / f"{stem}{suffix}").read_bytes() == (tmp_path / "here" / f"{stem}{suffix}").read_bytes()
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


@pytest.mark.slow  # worker processes: 7-12 s on a loaded 2-core machine
def test_a_cluster_cancel_reports_what_was_written_as_written(tmp_path, checkpoint, images, client):
    by_name = {p.name: p for p in images}
    order = [by_name["cat.png"], by_name["coffee.jpg"], by_name["astronaut.png"], by_name["camera16.tif"]]
    out = tmp_path / "out"
    # cancelled as soon as an image's outputs exist: its task may not have reported yet, and the
    # other image sent is still running. A slot frees only once an output exists, so no third
    # image is ever sent.
    batch = predict_many(order, str(checkpoint), out, client, max_in_flight=2,
                         cancel=lambda: any(out.glob("*.manifest.json")), **SETTINGS)
    statuses = {Path(r.image).name: r.status for r in batch.results}
    assert [statuses[p.name] for p in order] == ["written", "written", "cancelled", "cancelled"]
    time.sleep(2.0)  # no task left running writes anything after the batch returned
    for result in batch.results:  # the status says what is on disk
        complete = io.complete_prediction(out, result.stem) is not None
        assert (result.status == "written") == complete, (result.image, result.status)
        assert result.status in ("written", "cancelled")
    assert batch.results[0].peaks is not None and batch.results[0].shape == io.read_image(order[0]).shape[:2]
    assert {name: row["status"] for name, row in summary_rows(out).items()} == statuses
    # a resume recomputes exactly the cancelled images
    resumed = predict_many(order, str(checkpoint), out, client, **SETTINGS)
    assert [r.status for r in resumed.results] == [
        "skipped" if statuses[p.name] == "written" else "written" for p in order]


def test_an_input_error_is_not_tried_again_but_an_unexpected_one_is(tmp_path, checkpoint, images):
    """A file that cannot be read fails the same way every time: it is reported after one
    attempt (it was tried twice). An unexpected error (here the proposals raise) is tried again."""
    broken = next(p for p in images if p.name == "broken.png")
    good = next(p for p in images if p.name != "broken.png")
    calls = []

    def failing_once(image):
        calls.append(image.shape)
        if len(calls) == 1:
            raise RuntimeError("a passing failure")
        from napari_prm.proposals import default_proposals

        return default_proposals(image)

    batch = predict_many([broken, good], str(checkpoint), tmp_path / "out", retries=1,
                         **{**SETTINGS, "proposals": failing_once})
    assert [(r.status, r.attempts) for r in batch.results] == [("failed", 1), ("written", 2)]
    assert not batch.results[0].retriable and "cannot read image" in batch.results[0].error
    assert len(calls) == 2


def test_a_set_threading_event_cancels_every_image(tmp_path, checkpoint, images):
    import threading

    event = threading.Event()
    event.set()  # failed as "'Event' object is not callable"
    good = [p for p in images if p.name != "broken.png"]
    batch = predict_many(good, str(checkpoint), tmp_path / "out", cancel=event, **SETTINGS)
    assert [r.status for r in batch.results] == ["cancelled"] * len(good)


def test_in_process_batch_cancels_gathers_and_stacks_the_labels_lazily(tmp_path, checkpoint, images):
    good = [p for p in images if p.name != "broken.png"]
    out = tmp_path / "out"
    stop_after = 2
    batch = predict_many(good, str(checkpoint), out, gather=True, cancel=lambda: len(list(
        out.glob("*.manifest.json"))) >= stop_after, **SETTINGS)
    assert [r.status for r in batch.results] == ["written", "written", "cancelled", "cancelled"]
    assert [row["status"] for row in summary_rows(out).values()] == ["written", "written", "cancelled", "cancelled"]
    first = batch.results[0]
    assert first.prediction is not None and first.prediction.prms.shape[1:] == first.shape
    # resumed: only the two cancelled images run
    resumed = predict_many(good, str(checkpoint), out, **SETTINGS)
    assert [r.status for r in resumed.results] == ["skipped", "skipped", "written", "written"]
    assert resumed.results[0].prediction is None and resumed.results[0].shape == first.shape
    stack = label_stack(resumed.label_paths())
    shapes = [r.shape for r in resumed.results]
    assert stack.shape == (4, max(s[0] for s in shapes), max(s[1] for s in shapes)) and stack.dtype == np.uint32
    for index, result in enumerate(resumed.results):
        labels = io.read_label_image(out / f"{result.stem}_labels.tif")
        plane = np.asarray(stack[index])
        np.testing.assert_array_equal(plane[: labels.shape[0], : labels.shape[1]], labels)
        assert not plane[labels.shape[0]:].any() and not plane[:, labels.shape[1]:].any()


@pytest.mark.slow  # worker processes: 7-12 s on a loaded 2-core machine
def test_cli_killed_midway_resumes_with_only_the_missing_images(tmp_path, checkpoint, images):
    """SIGKILL of ``napari-prm predict`` after some images: the re-run computes only the rest."""
    folder = tmp_path / "many"
    folder.mkdir()
    source = io.read_image(images[0])
    for number in range(8):
        iio.imwrite(folder / f"img{number}.png", np.roll(source, 7 * number, axis=1))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_prm", "predict", str(folder), "--model", str(checkpoint),
               "--out", str(out), "--proposals", "prm"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.manifest.json"))) < 3 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    finished = {p.name[: -len(".manifest.json")] for p in out.glob("*.manifest.json")}
    assert 3 <= len(finished) < 8, "the run should have been killed midway"
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    rows = summary_rows(out)
    assert {Path(name).stem for name, row in rows.items() if row["status"] == "skipped"} == finished
    assert sum(row["status"] == "written" for row in rows.values()) == 8 - len(finished)
    assert all(io.complete_prediction(out, f"img{number}") for number in range(8))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # a worker process
def test_workers_without_bokeh_print_no_dashboard_link(tmp_path, checkpoint, images, capsys):
    """Without bokeh, `--workers 2` printed `dashboard: http://127.0.0.1:8787/status`, a 404."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is not None:
        pytest.skip("bokeh is installed: the dashboard exists")
    out = tmp_path / "out"
    assert main(["predict", str(images[0]), "--model", str(checkpoint), "--out", str(out), "--workers", "1",
                 "--proposals", "none"]) == 0
    errors = capsys.readouterr().err
    assert "started 1 worker process(es); dashboard: none (install bokeh to see one)" in errors
    assert "http://" not in errors


@pytest.mark.slow  # a worker process
def test_predict_with_workers_loads_the_model_once_here(tmp_path, checkpoint, images, monkeypatch):
    """`predict --workers N` loaded the checkpoint twice in this process (to check --classes, then
    again in predict_many for its fingerprint) before the workers loaded their own."""
    from napari_prm.model import checkpoint as checkpoints

    loads, load = [], checkpoints.load_checkpoint
    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda path: loads.append(Path(path)) or load(path))
    out = tmp_path / "out"
    assert main(["predict", str(images[0]), "--model", str(checkpoint), "--out", str(out), "--workers", "1",
                 "--proposals", "none", "--classes", "cat"]) == 0
    assert loads == [checkpoint]
    assert summary_rows(out)[images[0].name]["status"] == "written"


def test_cluster_options_are_checked_before_anything_runs(tmp_path, checkpoint, images, capsys):
    image, out = str(images[0]), tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["predict", image, "--model", str(checkpoint), "--out", str(out), "--workers", "0"])
    assert exited.value.code == 2 and "--workers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", image, "--out", str(out), "--workers", "1", "--scheduler", "tcp://127.0.0.1:8786"])
    assert "not allowed with argument --workers" in capsys.readouterr().err
    assert main(["predict", image, "--model", str(checkpoint), "--out", str(out), "--scheduler", "nonsense://x"]) == 2
    assert "--scheduler: cannot connect to nonsense://x" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_that_holds_its_own_outputs_is_run_again_on_its_images_only(tmp_path, checkpoint, images):
    """Outputs written beside the images (label TIFFs, PRM stacks) are not taken as images next time."""
    from napari_prm.batch import collect_images

    folder = tmp_path / "images_and_outputs"
    folder.mkdir()
    for path in images:
        if path.name in ("cat.png", "camera16.tif"):
            (folder / path.name).write_bytes(path.read_bytes())
    found, problems = collect_images([folder])
    assert [p.name for p in found] == ["camera16.tif", "cat.png"] and not problems
    first = predict_many(found, str(checkpoint), folder, prms_format="tiff", **SETTINGS)
    assert [r.status for r in first.results] == ["written", "written"]
    assert (folder / "cat_labels.tif").is_file() and (folder / "cat_prms.tif").is_file()
    again, _ = collect_images([folder])
    assert [p.name for p in again] == ["camera16.tif", "cat.png"]
    second = predict_many(again, str(checkpoint), folder, prms_format="tiff", **SETTINGS)
    assert [r.status for r in second.results] == ["skipped", "skipped"]
    assert not list(folder.glob("*_labels_labels.tif"))


def test_asking_for_prms_on_a_rerun_says_the_outputs_lack_them(tmp_path, checkpoint, images, capsys):
    cat = next(p for p in images if p.name == "cat.png")
    out = tmp_path / "out"
    assert main(["predict", str(cat), "--out", str(out), "--model", str(checkpoint), "--device", "cpu",
                 "--proposals", "prm", "--peak-threshold", "0"]) == 0
    capsys.readouterr()
    assert main(["predict", str(cat), "--out", str(out), "--model", str(checkpoint), "--device", "cpu",
                 "--proposals", "prm", "--peak-threshold", "0", "--save-prms", "npy"]) == 0
    printed = capsys.readouterr().err
    assert ("1 skipped: outputs are complete but hold no PRMs as npy (an earlier run wrote none, or another "
            "format) (cat.png); use --overwrite to replace them") in printed
    assert "incomplete" not in printed
    assert "hold no PRMs as npy" in summary_rows(out)["cat.png"]["error"]
    # --overwrite adds them
    assert main(["predict", str(cat), "--out", str(out), "--model", str(checkpoint), "--device", "cpu",
                 "--proposals", "prm", "--peak-threshold", "0", "--save-prms", "npy", "--overwrite"]) == 0
    assert (out / "cat_prms.npy").is_file()


def test_a_rerun_with_another_model_or_settings_says_so_instead_of_skipping_silently(
        tmp_path, checkpoint, images, capsys):
    """Outputs record their model's fingerprint and settings; a re-run that differs names the difference."""
    cat = next(p for p in images if p.name == "cat.png")
    out = tmp_path / "out"
    torch.manual_seed(1)
    retrained = save_model(build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(64, 64)),
                           tmp_path / "retrained.pt")
    first = predict_many([cat], str(checkpoint), out, **SETTINGS)
    assert [r.status for r in first.results] == ["written"]
    manifest = json.loads((out / "cat.manifest.json").read_text())
    recorded = manifest["info"]["model"]
    assert recorded["name"] == "tiny.pt" and len(recorded["fingerprint"]) == 40
    state = output_state(out)

    same = predict_many([cat], str(checkpoint), out, **SETTINGS)  # the same run: skipped without a word
    assert [(r.status, r.error) for r in same.results] == [("skipped", "")]

    other = predict_many([cat], str(retrained), out, **SETTINGS)  # another model: skipped, and why
    assert other.results[0].status == "skipped"
    assert other.results[0].error.startswith("outputs were made with another model 'tiny.pt'")

    # the same run written otherwise is the same run: the source "auto" stands for (no head:
    # "default"), and classes by index or by name
    twin = tmp_path / "twin"
    assert predict_many([cat], str(checkpoint), twin, proposals="default", classes=[0]).results[0].error == ""
    for same in ({"proposals": "auto", "classes": ["cat"]}, {"classes": ("cat",)}):
        assert predict_many([cat], str(checkpoint), twin, **same).results[0].error == ""
    assert "(classes: ['cat'] -> 'default')" in predict_many([cat], str(checkpoint), twin).results[0].error

    changed = predict_many([cat], str(checkpoint), out, **{**SETTINGS, "peak_threshold": 2.5})
    assert changed.results[0].status == "skipped"
    assert "other settings (peak_threshold: 0.0 -> 2.5)" in changed.results[0].error
    assert output_state(out) == state  # nothing was rewritten

    assert main(["predict", str(cat), "--out", str(out), "--model", str(retrained), "--device", "cpu",
                 "--proposals", "prm", "--peak-threshold", "0"]) == 0
    printed = capsys.readouterr().err
    assert "1 skipped: outputs were made with another model 'tiny.pt' (cat.png); use --overwrite" in printed
    assert "incomplete" not in printed
    assert main(["predict", str(cat), "--out", str(out), "--model", str(retrained), "--device", "cpu",
                 "--proposals", "prm", "--peak-threshold", "0", "--overwrite"]) == 0
    manifest = json.loads((out / "cat.manifest.json").read_text())
    recorded = manifest["info"]["model"]
    assert recorded["name"] == "retrained.pt"
    assert predict_many([cat], str(retrained), out, **SETTINGS).results[0].error == ""


def test_a_rerun_with_another_peak_batch_size_is_the_same_run(tmp_path, checkpoint, images):
    """peak_batch_size changes how many peaks are back-propagated at once, not the outputs:
    a resumed run that gives another (or none) skips complete outputs without a reason."""
    cat = next(p for p in images if p.name == "cat.png")
    out = tmp_path / "out"
    assert predict_many([cat], str(checkpoint), out, peak_batch_size=4, **SETTINGS).results[0].status == "written"
    for settings in ({}, {"peak_batch_size": 2}):
        again = predict_many([cat], str(checkpoint), out, **settings, **SETTINGS)
        assert [(r.status, r.error) for r in again.results] == [("skipped", "")]


def test_the_summary_keeps_the_rows_of_earlier_images_a_rerun_on_some_does_not_touch(tmp_path, checkpoint, images):
    """A re-run on a subset replaces those images' rows and keeps the others' (the folder's record)."""
    good = {p.name: p for p in images if p.name in ("cat.png", "coffee.jpg", "camera16.tif")}
    out = tmp_path / "out"
    predict_many([good["camera16.tif"], good["cat.png"], good["coffee.jpg"]], str(checkpoint), out, **SETTINGS)
    first = summary_rows(out)
    assert [row["status"] for row in first.values()] == ["written"] * 3
    assert [row["stem"] for row in first.values()] == ["camera16", "cat", "coffee"]

    # mark every row's seconds, so that a kept row and a replaced one tell themselves apart
    # (two runs of one image can take the same milliseconds)
    summary = out / "summary.csv"
    with open(summary, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, [{**row, "seconds": "999.000"} for row in reader]
    with open(summary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    marked = summary_rows(out)

    predict_many([good["cat.png"]], str(checkpoint), out, overwrite=True, **SETTINGS)
    again = summary_rows(out)
    assert list(again) == ["camera16.tif", "cat.png", "coffee.jpg"]  # in their place
    assert again["camera16.tif"] == marked["camera16.tif"] and again["coffee.jpg"] == marked["coffee.jpg"]
    assert again["cat.png"]["status"] == "written" and again["cat.png"]["seconds"] != "999.000"

    # a new image comes after them; outputs deleted by hand drop their row; another image of
    # an earlier stem ("coffee") takes the next free stem, even with overwrite: the earlier
    # image's outputs and row stay
    for path in out.glob("camera16_*"):  # as `rm out/camera16_*` does: its manifest stays
        path.unlink()
    assert (out / "camera16.manifest.json").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "coffee.png").write_bytes(good["cat.png"].read_bytes())
    predict_many([good["cat.png"], other / "coffee.png"], str(checkpoint), out, overwrite=True, **SETTINGS)
    assert list(summary_rows(out)) == ["cat.png", "coffee.jpg", "coffee.png"]
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        assert [(row["image"], row["stem"]) for row in csv.DictReader(handle)] == [
            (str(good["cat.png"]), "cat"), (str(good["coffee.jpg"]), "coffee"), (str(other / "coffee.png"), "coffee_2")]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # written atomically, no temporary left


def test_the_summary_drops_the_failed_row_of_an_image_since_deleted(tmp_path, checkpoint, images):
    """A corrupt image that failed, then deleted by the user, kept its ``failed`` row in every
    later summary: the folder's record counted a failure that no image could have any more.
    A failed row whose image still exists (a re-run on other images) is kept."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("cat.png", "broken.png", "coffee.jpg"):
        shutil.copy(next(p for p in images if p.name == name), folder / name)
    out = tmp_path / "out"
    predict_many(sorted(folder.iterdir()), str(checkpoint), out, **SETTINGS)
    assert {name: row["status"] for name, row in summary_rows(out).items()} == {
        "broken.png": "failed", "cat.png": "written", "coffee.jpg": "written"}

    predict_many([folder / "cat.png"], str(checkpoint), out, **SETTINGS)  # broken.png is still there
    assert list(summary_rows(out)) == ["broken.png", "cat.png", "coffee.jpg"]
    (folder / "broken.png").unlink()
    predict_many(sorted(folder.iterdir()), str(checkpoint), out, **SETTINGS)
    assert {name: row["status"] for name, row in summary_rows(out).items()} == {
        "cat.png": "skipped", "coffee.jpg": "skipped"}


def test_a_folder_whose_sub_folders_hold_images_says_they_are_left_out(tmp_path, checkpoint, images, capsys):
    from napari_prm.batch import collect_images

    cat = next(p for p in images if p.name == "cat.png")
    for where in ("top", "top/2023", "top/2024/may", "top/empty"):
        (tmp_path / where).mkdir(parents=True)
    for where in ("top/a.png", "top/2023/b.png", "top/2024/may/c.png"):
        (tmp_path / where).write_bytes(cat.read_bytes())
    found, problems = collect_images([tmp_path / "top"])
    assert [p.name for p in found] == ["a.png"]
    assert problems == [f"note: {tmp_path / 'top'}: the images in its 2 sub-folder(s) (2023, 2024) are left out: "
                        "pass --recursive to search sub-folders, or pass them as inputs too"]
    # the command runs the folder's own image and says so; the note is no failure (exit status 0)
    assert main(["predict", str(tmp_path / "top"), "--out", str(tmp_path / "out"), "--model", str(checkpoint),
                 "--proposals", "prm", "--peak-threshold", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert problems[0] in err and "1 image(s) written" in err and "0 failed" in err


def test_an_out_folder_inside_the_input_folder_is_not_said_to_hold_images(tmp_path, checkpoint, images, capsys):
    """With ``--out`` inside the input folder, the re-run's note said that the images of
    ``results`` were left out and to pass ``--recursive``: its label TIFFs counted as images,
    although ``--recursive`` (and the folder run) take no output of a manifest as an image."""
    from napari_prm.batch import collect_images

    top = tmp_path / "top"
    (top / "2023").mkdir(parents=True)
    for where in ("a.png", "2023/b.png"):
        shutil.copy(next(p for p in images if p.name == "cat.png"), top / where)
    command = ["predict", str(top), "--out", str(top / "results"), "--model", str(checkpoint),
               "--proposals", "prm", "--peak-threshold", "0", "--device", "cpu"]
    assert main(command) == 0
    assert (top / "results" / "a_labels.tif").is_file()
    note = (f"note: {top}: the images in its 1 sub-folder(s) (2023) are left out: "
            "pass --recursive to search sub-folders, or pass them as inputs too")
    assert collect_images([top])[1] == [note]
    capsys.readouterr()
    assert main(command) == 0
    assert note in capsys.readouterr().err
    # a tree's outputs under results/ are no images either; an image put there is one
    assert main([*command, "--recursive"]) == 0
    assert (top / "results" / "2023" / "b_labels.tif").is_file()
    assert collect_images([top])[1] == [note]
    shutil.copy(top / "a.png", top / "results" / "2023" / "new.png")
    assert collect_images([top])[1] == [note.replace("1 sub-folder(s) (2023)", "2 sub-folder(s) (2023, results)")]


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, checkpoint, images, capsys):
    """Two runs into one folder (a nightly job started while the last night's still runs)
    predicted the same images side by side, and the last to rewrite ``summary.csv`` called the
    images the other wrote "skipped", and those it found done "written". While a run writes
    into a folder, another is refused, naming the run; the folder is free again when it ends."""
    good = [p for p in images if p.name in ("cat.png", "coffee.jpg")]
    out = tmp_path / "out"
    refused = []

    def meanwhile(result, done, total):  # a second run while the first has images to go
        if done == 1:
            with pytest.raises(OSError) as error:  # napari_prm.batch.FolderInUse
                predict_many(good, str(checkpoint), out, **SETTINGS)
            refused.append(str(error.value))
            status = main(["predict", *map(str, good), "--model", str(checkpoint), "--out", str(out),
                           "--proposals", "prm", "--peak-threshold", "0", "--device", "cpu"])
            refused.append((status, capsys.readouterr().err))

    batch = predict_many(good, str(checkpoint), out, progress=meanwhile, **SETTINGS)
    assert [r.status for r in batch.results] == ["written", "written"]
    assert refused[0].startswith(f"another napari-prm run is writing into {out} (process {os.getpid()} on ")
    assert refused[0].endswith("wait until it ends, or write into another folder")
    assert refused[1][0] == 2 and refused[1][1].splitlines()[-1] == f"napari-prm predict: error: {refused[0]}"
    assert [row["status"] for row in summary_rows(out).values()] == ["written", "written"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    again = predict_many(good, str(checkpoint), out, **SETTINGS)  # free once the first run ended
    assert [r.status for r in again.results] == ["skipped", "skipped"]


@pytest.mark.skipif(os.name != "posix", reason="file modes and user ids of POSIX")
def test_a_lock_file_of_another_user_is_locked_read_only(tmp_path):
    """A killed run leaves ``<out>/.napari-prm-lock``; where it was another user's (mode 0644),
    the next run, of this user, failed to open it for writing ("Permission denied") and could not
    write into the folder. It opens it read-only, and its lock holds all the same: another run is
    refused while it holds it. Root writes any file: as root, the run is user nobody's."""
    import tempfile

    from napari_prm.batch import LOCK_NAME, FolderInUse, _folder_lock

    root = os.geteuid() == 0
    out = Path(tempfile.mkdtemp()) if root else tmp_path  # pytest's folders are root's alone
    try:
        out.chmod(0o777)
        (out / LOCK_NAME).write_bytes(b"")
        (out / LOCK_NAME).chmod(0o644 if root else 0o444)  # not writable by the run below
        # setpriv (util-linux) drops root's rights once the interpreter is started (it may lie in root's home)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if root else []
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        if root and (shutil.which("setpriv") is None or subprocess.run(
                [*nobody, sys.executable, "-c", "import napari_prm.batch"], env=env).returncode):
            pytest.skip("no setpriv, or user nobody cannot read this checkout")
        hold = ("import sys; from pathlib import Path; from napari_prm.batch import _folder_lock\n"
                "with _folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.readline()")
        with subprocess.Popen([*nobody, sys.executable, "-c", hold, str(out)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
            held = child.stdout.readline().strip()
            if held == "held":
                with pytest.raises(FolderInUse), _folder_lock(out):
                    pass
            child.stdin.close()
            assert held == "held" and child.wait(timeout=60) == 0, child.stderr.read()
        with _folder_lock(out):  # free once it ended
            pass
        (out / LOCK_NAME).write_bytes(b"")
        (out / LOCK_NAME).chmod(0o600 if root else 0o000)  # not readable either: the error says what to do
        refused = subprocess.run([*nobody, sys.executable, "-c", hold, str(out)], env=env, capture_output=True,
                                 text=True)
        assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
            f"PermissionError: cannot lock {out / LOCK_NAME}, the lock of the runs that write into {out} "
            "(Permission denied): if no run is writing there, remove it (a run of another user may have left "
            "it), or write into another folder")
    finally:
        if root:
            shutil.rmtree(out)


def test_the_command_ends_by_naming_the_failed_images(tmp_path, checkpoint, images, capsys):
    """Each failure is said as it happens; at the end only their count was, so in the log of a
    night's run (a line per note of thousands of images) the failed images had to be searched
    for. The end names them, and where their errors are, before the count."""
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(next(p for p in images if p.name == "cat.png"), folder / "cat.png")
    for name in ("broken.png", "empty.jpg"):
        shutil.copy(next(p for p in images if p.name == "broken.png"), folder / name)
    out = tmp_path / "out"
    command = ["predict", str(folder), "--out", str(out), "--model", str(checkpoint), "--proposals", "prm",
               "--peak-threshold", "0", "--device", "cpu"]
    assert main(command) == 1
    assert capsys.readouterr().err.strip().splitlines()[-2:] == [
        f"2 failed: broken.png, empty.jpg (why: the error column of {out / 'summary.csv'})",
        f"1 image(s) written to {out}, 0 skipped, 2 failed; summary: {out / 'summary.csv'}"]
    assert main(command) == 1  # tried again on a re-run, and named again
    assert capsys.readouterr().err.strip().splitlines()[-3:] == [
        "1 skipped: outputs exist (cat.png); use --overwrite to replace them",
        f"2 failed: broken.png, empty.jpg (why: the error column of {out / 'summary.csv'})",
        f"0 image(s) written to {out}, 1 skipped, 2 failed; summary: {out / 'summary.csv'}"]


def test_inputs_left_out_are_named_and_counted_alike_in_every_line_and_the_summary(tmp_path, checkpoint, images,
                                                                                    capsys):
    """``predict in/ missing.png``: the end's count said "2 failed" (the missing input counted), but the
    line naming the failures said "1 failed: broken.png", and neither it nor summary.csv named
    ``missing.png``. Every failed input is now a failed row of the summary and the run's result, named
    once in the end's list, and one count is given everywhere."""
    from napari_prm.batch import collect_images

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("cat.png", "broken.png"):
        shutil.copy(next(p for p in images if p.name == name), folder / name)
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    command = ["predict", str(folder), str(missing), "--out", str(out), "--model", str(checkpoint),
               "--proposals", "prm", "--peak-threshold", "0", "--device", "cpu"]
    assert main(command) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert f"{missing}: no such file or folder" in lines
    assert lines[-2:] == [
        f"2 failed: broken.png, missing.png (why: the error column of {out / 'summary.csv'})",
        f"1 image(s) written to {out}, 0 skipped, 2 failed; summary: {out / 'summary.csv'}"]
    rows = summary_rows(out)
    assert {name: row["status"] for name, row in rows.items()} == {
        "cat.png": "written", "broken.png": "failed", "missing.png": "failed"}
    assert rows["missing.png"]["error"] == "no such file or folder" and rows["missing.png"]["stem"] == ""

    # the Python API: the same inputs, the same counts
    found, problems = collect_images([folder, missing])
    batch = predict_many(found, str(checkpoint), tmp_path / "out2", device="cpu", left_out=problems, **SETTINGS)
    assert [(Path(r.image).name, r.status, r.error) for r in batch.failed] == [
        ("broken.png", "failed", batch.failed[0].error), ("missing.png", "failed", "no such file or folder")]
    assert [row["status"] for row in summary_rows(tmp_path / "out2").values()].count("failed") == 2

    # a later run without the missing input drops its row: it was that run's, not the folder's record
    assert main(command[:2] + command[3:]) == 1
    assert set(summary_rows(out)) == {"cat.png", "broken.png"}


def test_skip_reasons_group_the_skipped_images_by_why(tmp_path, checkpoint, images, capsys):
    """`BatchResult.skip_reasons`, behind the folder panel's message and the command line's: complete
    outputs in one group, an incomplete set (a file removed) in another, whatever files each one lacks."""
    chosen = [p for p in images if p.name in ("astronaut.png", "cat.png", "coffee.jpg")]
    out = tmp_path / "out"
    assert [r.status for r in predict_many(chosen, checkpoint, out, device="cpu", **SETTINGS).results] == [
        "written"] * 3
    (out / "cat_peaks.csv").unlink()
    again = predict_many(chosen, checkpoint, out, device="cpu", **SETTINGS)
    groups = {reason: [Path(r.image).name for r in skipped] for reason, skipped in again.skip_reasons().items()}
    assert groups == {"outputs exist": ["astronaut.png", "coffee.jpg"],
                      "outputs exist but are not a complete set": ["cat.png"]}
    said = ("2 skipped: outputs exist (astronaut.png, coffee.jpg); 1 skipped: outputs exist but are not a "
            "complete set (cat.png)")
    assert again.skip_summary() == said
    assert again.skip_summary(lambda image: Path(image).stem, shown=1).startswith(
        "2 skipped: outputs exist (astronaut, ... (1 more)); 1 skipped: ")
    capsys.readouterr()
    assert main(["predict", *map(str, chosen), "--out", str(out), "--model", str(checkpoint), "--device", "cpu",
                 "--proposals", "prm", "--peak-threshold", "0"]) == 0
    assert f"{said}; use --overwrite to replace them\n" in capsys.readouterr().err


def test_skipped_images_of_one_file_name_in_two_folders_are_named_by_their_paths(tmp_path, checkpoint, images,
                                                                                 capsys):
    """A ``--recursive`` run over ``plate/A1/cat.png`` and ``plate/A2/cat.png``: both skipped
    images were named ``cat.png`` ("2 skipped: outputs exist (cat.png, cat.png)")."""
    from napari_prm.batch import image_names, output_stems

    cat = next(p for p in images if p.name == "cat.png")
    chosen = []
    for well in ("A1", "A2"):
        (tmp_path / "plate" / well).mkdir(parents=True)
        chosen.append(tmp_path / "plate" / well / "cat.png")
        chosen[-1].write_bytes(cat.read_bytes())
    out, stems = tmp_path / "out", output_stems(chosen, roots=[tmp_path / "plate"])  # as --recursive names them
    assert stems == ["A1/cat", "A2/cat"]
    first = predict_many(chosen, checkpoint, out, device="cpu", stems=stems, **SETTINGS)
    assert [r.status for r in first.results] == ["written"] * 2
    again = predict_many(chosen, checkpoint, out, device="cpu", stems=stems, **SETTINGS)
    assert again.skip_summary() == "2 skipped: outputs exist (A1/cat.png, A2/cat.png)"
    # a given name (the folder panel's) is still used
    assert again.skip_summary(lambda image: Path(image).stem) == "2 skipped: outputs exist (cat, cat)"
    # file names that do not repeat stay plain, wherever the images are
    assert image_names([chosen[0], tmp_path / "plate" / "dog.png"]) == {
        str(chosen[0]): "cat.png", str(tmp_path / "plate" / "dog.png"): "dog.png"}
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "plate"), "--recursive", "--out", str(out), "--model", str(checkpoint),
                 "--device", "cpu", "--proposals", "prm", "--peak-threshold", "0"]) == 0
    assert ("2 skipped: outputs exist (A1/cat.png, A2/cat.png); use --overwrite to replace them\n"
            in capsys.readouterr().err)


def test_folders_left_out_are_named_as_other_long_lists_are(tmp_path):
    """`collect_images` names the first three sub-folders it did not search and counts the others,
    with the wording of every long list (`napari_prm._text.first_names`)."""
    from napari_prm.batch import collect_images
    from napari_prm.io import IMAGE_SUFFIXES

    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / "top" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "top" / name / "x.png", np.zeros((4, 4), np.uint8))
    found, problems = collect_images([tmp_path / "top"])
    assert found == []
    assert problems == [f"{tmp_path / 'top'}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder;"
                        " its 5 sub-folder(s) (a, b, c, ... (2 more)) are not searched: pass --recursive, or pass "
                        "them as inputs"]


def test_read_once_reads_again_a_file_changed_in_the_last_seconds(tmp_path, monkeypatch):
    """A file whose modification time is old but which changed just now (a copy that keeps its
    source's time: ``cp -p``, `shutil.copy2`, an archive) is read each time until its change time
    is `_SETTLED_NS` old: within a clock tick (a second on some file systems) a rewrite of the same
    size and modification time leaves its state as it was; once settled, it is read once."""
    import napari_prm.batch as batch_module

    monkeypatch.setattr(batch_module, "_SETTLED_NS", 300_000_000)
    path = tmp_path / "a.png"
    path.write_bytes(b"first")
    os.utime(path, ns=(time.time_ns() - 3600 * 10**9,) * 2)  # modified an hour ago, changed now
    reads = []

    def read():
        reads.append(path.read_bytes())
        return reads[-1]

    assert [batch_module._read_once("test", path, path.stat(), read) for _ in range(2)] == [b"first"] * 2
    assert len(reads) == 2
    time.sleep(0.4)
    assert [batch_module._read_once("test", path, path.stat(), read) for _ in range(2)] == [b"first"] * 2
    assert len(reads) == 3


def test_a_run_reads_each_image_and_its_manifest_once(tmp_path, checkpoint, images, monkeypatch):
    """Outputs whose images were copied elsewhere (newer files, the same bytes): `output_stems` and
    `predict_many` both compare an image with what its manifest records, and read its SHA-256 and the
    manifest once between them (counted around the real functions); `output_stems` looks up no
    manifest for a stem that has none; the skips and their reasons are those of the first run's images."""
    import napari_prm.batch as batch_module
    import napari_prm.io.fileset as fileset
    from napari_prm.batch import output_stems

    def backdate(folder: Path, seconds: int) -> None:
        for path in folder.iterdir():
            os.utime(path, ns=(time.time_ns() - seconds * 10**9,) * 2)

    first, copied, out = tmp_path / "first", tmp_path / "copied", tmp_path / "out"
    first.mkdir()
    for name in ("cat.png", "coffee.jpg"):
        shutil.copyfile(next(p for p in images if p.name == name), first / name)
    backdate(first, 3600)
    assert [r.status for r in predict_many(sorted(first.iterdir()), checkpoint, out, **SETTINGS).results] == [
        "written"] * 2
    backdate(out, 1800)
    shutil.copytree(first, copied)  # new modification times: compared by content
    backdate(copied, 60)
    # a file changed (its change time, which backdating sets) within `_SETTLED_NS` is read each time
    monkeypatch.setattr(batch_module, "_SETTLED_NS", 300_000_000)
    time.sleep(0.4)
    batch_module._READ.clear()  # as a new process

    hashed, manifests = collections.Counter(), collections.Counter()
    real_sha256, real_read_text = fileset._sha256, Path.read_text

    def counted_sha256(path):
        hashed[Path(path).name] += 1
        return real_sha256(path)

    def counted_read_text(path, *args, **kwargs):
        if path.name.endswith(".manifest.json"):
            manifests[path.name] += 1
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(batch_module, "_sha256", counted_sha256)
    monkeypatch.setattr(Path, "read_text", counted_read_text)
    assert output_stems([copied / "new.png"], out=out) == ["new"] and not manifests  # no manifest, no look
    paths = sorted(copied.iterdir())
    stems = output_stems(paths, out=out)
    again = predict_many(paths, checkpoint, out, stems=stems, **SETTINGS)
    assert stems == ["cat", "coffee"]
    assert [(r.status, r.error) for r in again.results] == [("skipped", "")] * 2
    assert hashed == {"cat.png": 1, "coffee.jpg": 1}
    assert manifests == {"cat.manifest.json": 1, "coffee.manifest.json": 1}

    # an image written within the last seconds may still be written to: it is read again each time;
    # once it is older, once, until it changes
    hashed.clear()
    fresh = copied / "fresh.png"
    shutil.copyfile(copied / "cat.png", fresh)
    identities = [batch_module._image_identity(fresh) for _ in range(2)]
    assert hashed == {"fresh.png": 2}
    os.utime(fresh, ns=(time.time_ns() - 10**10,) * 2)
    time.sleep(0.4)  # its change time settled too
    identities += [batch_module._image_identity(fresh) for _ in range(2)]
    assert hashed == {"fresh.png": 3}
    assert len({identity["image_sha256"] for identity in identities}) == 1
    fresh.write_bytes(fresh.read_bytes()[::-1])
    os.utime(fresh, ns=(identities[-1]["image_mtime_ns"],) * 2)  # the same size and time, other bytes
    assert batch_module._image_identity(fresh)["image_sha256"] != identities[0]["image_sha256"]
    assert hashed == {"fresh.png": 4}


def test_collect_images_takes_one_folder_as_a_path(tmp_path, monkeypatch):
    """collect_images("images/"), as usage.md's predict_many example would be written: a str was read as
    the paths of its characters (no image, a problem per character), a Path was not iterable."""
    from napari_prm.batch import collect_images

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        iio.imwrite(folder / name, np.zeros((8, 8, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    expected = collect_images(["images"])
    assert [p.name for p in expected[0]] == ["a.png", "b.png"] and not expected[1]
    for inputs in ("images", folder, folder / "a.png"):
        found, problems = collect_images(inputs)
        assert not problems
        assert [p.name for p in found] == (["a.png"] if str(inputs).endswith(".png") else ["a.png", "b.png"])


def test_label_and_image_stacks_take_one_path_as_one_file(tmp_path, monkeypatch):
    """label_stack("a_labels.tif") and the other functions of a run's files read a str as the paths
    of its characters ("a", "_", ...: FileNotFoundError, or a stem per character) and refused a Path
    as not iterable; one path is now one file, as a list of one."""
    from napari_prm.batch import (
        PlaneTally,
        image_names,
        image_stack,
        label_planes,
        label_shapes,
        output_stems,
        renamed_notes,
    )

    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    labels = np.zeros((6, 9), np.uint16)
    labels[1:3, 2:5] = 1
    io.write_label_image(tmp_path / "a_labels.tif", labels)
    image = np.zeros((6, 9, 3), np.uint8)
    image[..., 0] = 200
    iio.imwrite(tmp_path / "images" / "a.png", image)
    for one in ("a_labels.tif", tmp_path / "a_labels.tif"):
        assert label_shapes(one) == [(6, 9)]
        assert label_planes(one) == [1]
        stack = np.asarray(label_stack(one))
        assert stack.shape == (1, 6, 9) and stack.sum() == 6
        np.testing.assert_array_equal(stack[0], labels)
    for one in ("images/a.png", tmp_path / "images" / "a.png"):
        rgb = np.asarray(image_stack(one, [(6, 9)]))
        assert rgb.shape == (1, 6, 9, 3) and (rgb[0, ..., 0] == 200).all()
        assert image_names(one) == {str(one): "a.png"}
        assert output_stems(one, roots="images") == ["a"] == output_stems([one], roots=["images"])
        assert renamed_notes(one, "a", tmp_path / "out") == []
        assert PlaneTally(one).total == 1
