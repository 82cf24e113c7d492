"""One image's outputs switch from old to new in one step, even when the writer is killed.

The kill tests run the real writer (`io.write_prediction`) in processes that are killed
with SIGKILL: at every step of a write, and at random moments of a loop of writes. Each
version v of the outputs is recognisable in every file (v instances, v peaks, v PRMs;
odd versions save PRMs, even ones do not), so a mixed set cannot pass for a whole one.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_prm import io
from napari_prm.io import fileset
from napari_prm.io.fileset import STAGING_FOLDER, recover_file_sets

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill tests fork (POSIX)")

# Builds version v of an image's outputs; shared by this module and its child processes.
VERSIONED_PREDICTION = '''
import numpy as np
from napari_prm.predict import Prediction
from napari_prm.retrieval import Instance

def versioned_prediction(version, shape=(200, 24)):
    """v peaks and v instances (horizontal strips), PRMs for odd versions only."""
    prms = np.zeros((version,) + shape, np.float32)
    instances = []
    for k in range(version):
        prms[k, k, 0] = 1
        mask = np.zeros(shape, bool)
        mask[k] = True
        instances.append(Instance(class_index=k % 2, score=1.0 - k / 100, mask=mask, prm=prms[k], peak=k))
    return Prediction(class_names=["cat", "dog"], scores=np.zeros(2, np.float32),
                      crms=np.zeros((2, 3, 4), np.float32),
                      peaks=np.column_stack([np.arange(version), np.zeros(version)]).astype(float),
                      peak_classes=np.arange(version) % 2, peak_values=np.ones(version, np.float32),
                      prms=prms, instances=instances)

def write_version(out, version, stem="x"):
    from napari_prm import io
    io.write_prediction(versioned_prediction(version), out, stem, overwrite=True,
                        prms_format="npy" if version % 2 else None)
'''
namespace: dict = {}
exec(VERSIONED_PREDICTION, namespace)  # noqa: S102 (the same code the children run)
write_version = namespace["write_version"]

# Runs in a child: forks one writer per trial, kills it, leaves the folder as it was.
SUPERVISOR = VERSIONED_PREDICTION + '''
import json, os, random, signal, sys, time
from pathlib import Path
from napari_prm.io import fileset

root, steps, random_trials = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
trials = []

def run_child(target):
    pid = os.fork()
    if pid == 0:
        try:
            target()
        finally:
            os._exit(0)
    return pid

for number, step in enumerate(steps):  # the writer kills itself right after this step
    out = root / f"step{number}"
    out.mkdir()
    write_version(out, 1)

    def at_step(name, step=step):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def writer(out=out, at_step=at_step):
        fileset._step_hook = at_step
        write_version(out, 2)

    _, status = os.waitpid(run_child(writer), 0)
    trials.append({"folder": out.name, "step": step, "killed": os.WIFSIGNALED(status),
                   "versions": [1, 2]})

scratch = root / "timing"
scratch.mkdir()
started = time.perf_counter()
for version in range(1, 6):
    write_version(scratch, version)
one_write = (time.perf_counter() - started) / 5
rng = random.Random(0)
for number in range(random_trials):  # killed from outside at a random moment of a loop of writes
    out = root / f"random{number}"
    out.mkdir()
    write_version(out, 1)
    ready = out / "started"

    def writer(out=out, ready=ready):
        ready.touch()
        for version in range(2, 200):  # far more than fit in the random delays
            (out / "version.new").write_text(str(version))
            os.replace(out / "version.new", out / "version")
            write_version(out, version)

    pid = run_child(writer)
    while not ready.exists():
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 6 * one_write))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    ready.unlink()
    last = int((out / "version").read_text()) if (out / "version").exists() else 1
    (out / "version").unlink(missing_ok=True)
    (out / "version.new").unlink(missing_ok=True)
    trials.append({"folder": out.name, "step": None, "killed": os.WIFSIGNALED(status),
                   "versions": [last - 1, last]})
print(json.dumps(trials))
'''


def versions_in(out: Path, stem: str = "x") -> set:
    """The versions the output files of ``stem`` belong to: one for a whole set."""
    labels = tifffile.imread(out / f"{stem}_labels.tif")
    coco = json.loads((out / f"{stem}_instances.json").read_text())
    instance_rows = (out / f"{stem}_instances.csv").read_text().strip().splitlines()[1:]
    peak_rows = (out / f"{stem}_peaks.csv").read_text().strip().splitlines()[1:]
    found = {int(labels.max()), len(coco["annotations"]), len(instance_rows), len(peak_rows)}
    prms = out / f"{stem}_prms.npy"
    if prms.exists():
        found.add(np.load(prms).shape[0])
    if len(found) == 1 and (next(iter(found)) % 2 == 1) != prms.exists():  # odd versions save PRMs
        found.add("a PRM file of another version" if prms.exists() else "the PRM file is missing")
    return found


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def step_names() -> list[str]:
    """The steps of replacing version 1 (with PRMs) by version 2 (without): recorded."""
    return _recorded_steps(1, 2)


def _recorded_steps(old: int, new: int) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_version(folder, old)
        steps = []
        fileset._step_hook = steps.append
        try:
            write_version(folder, new)
        finally:
            fileset._step_hook = None
    return steps


def test_a_write_has_the_steps_the_kill_tests_stop_at():
    assert step_names() == [
        "staged x_labels.tif", "staged x_instances.json", "staged x_instances.csv", "staged x_peaks.csv",
        "manifest written", "committed",
        "moved x_labels.tif", "moved x_instances.json", "moved x_instances.csv", "moved x_peaks.csv",
        "removed x_prms.npy", "removed x_prms.tif", "finished"]


@pytest.mark.slow  # kills dozens of writer processes: about 16 s
def test_killed_writers_leave_all_old_or_all_new_outputs_and_the_next_run_cleans_up(tmp_path):
    """SIGKILL after each step of a write, and at 25 random moments of a loop of writes."""
    steps = step_names()
    environment = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SUPERVISOR, str(tmp_path), json.dumps(steps), "25"],
                          capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    trials = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(trials) == len(steps) + 25
    outcomes = {}
    for trial in trials:
        out = tmp_path / trial["folder"]
        assert trial["killed"], trial
        file_set = io.read_file_set(out, "x")
        # As left by the kill: a committed switch still to finish, or a whole set on disk.
        if not file_set.pending:
            assert file_set.verify() == [], trial
            assert len(versions_in(out)) == 1, (trial, versions_in(out))
        # The next run (any napari-prm writer or reader) finishes or discards the switch.
        recovery = recover_file_sets(out)
        versions = versions_in(out)
        assert len(versions) == 1 and versions <= set(trial["versions"]), (trial, versions)
        assert io.read_file_set(out, "x").verify() == []
        assert leftovers(out) == [], (trial, leftovers(out), recovery)
        outcomes[trial["step"] or trial["folder"]] = next(iter(versions)), bool(recovery.finished)
    # Before the manifest's rename the old set stays; from it on, the new one is finished.
    commit = steps.index("manifest written")
    for number, step in enumerate(steps):
        assert outcomes[step] == ((1, False) if number <= commit else (2, number < len(steps) - 1)), step
    # the random kills landed in different writes of the loop
    assert len({version for key, (version, _) in outcomes.items() if key.startswith("random")}) > 1


def test_a_failed_write_changes_nothing_and_overwrite_is_checked_first(tmp_path):
    write_version(tmp_path, 3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["x.manifest.json", "x_instances.csv", "x_instances.json", "x_labels.tif",
                              "x_peaks.csv", "x_prms.npy"]
    with pytest.raises(RuntimeError, match="disk full"):
        with io.write_file_set(tmp_path, "x", {"tiff": "x_labels.tif"}, overwrite=True) as staged:
            staged["tiff"].write_bytes(b"half")
            raise RuntimeError("disk full")
    with pytest.raises(FileNotFoundError, match="x_peaks.csv"):  # a kind left unwritten
        with io.write_file_set(tmp_path, "x", {"peaks": "x_peaks.csv"}, overwrite=True):
            pass
    with pytest.raises(FileExistsError, match="x_labels.tif"):
        with io.write_file_set(tmp_path, "x", {"tiff": "x_labels.tif", "new": "x_new.txt"}):
            raise AssertionError("not reached: the check comes before the block")
    with pytest.raises(ValueError, match="distinct"):
        with io.write_file_set(tmp_path, "x", {"a": "x.manifest.json"}):
            pass
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_manifest_lists_the_set_and_an_export_of_some_formats_keeps_the_others(tmp_path):
    write_version(tmp_path, 3)
    file_set = io.read_file_set(tmp_path, "x")
    assert sorted(file_set.files) == ["coco", "csv", "peaks", "prms", "tiff"]
    assert file_set.info["peaks"] == 3 and file_set.info["instances"] == 3
    assert file_set.files["prms"].size == (tmp_path / "x_prms.npy").stat().st_size
    assert io.complete_prediction(tmp_path, "x", prms_format="npy") is not None
    assert io.complete_prediction(tmp_path, "x", prms_format="tiff") is None  # asks for another PRM file
    # A corrected label image exported under the same stem replaces two files and keeps the rest.
    labels = np.zeros((24, 32), np.uint16)
    labels[5:9, 3:7] = 1
    io.export_instances(labels, None, ["cat", "dog"], tmp_path, formats=["tiff", "csv"], stem="x",
                        overwrite=True)
    file_set = io.read_file_set(tmp_path, "x")
    assert sorted(file_set.files) == ["coco", "csv", "peaks", "prms", "tiff"] and file_set.verify() == []
    assert (tmp_path / "x_prms.npy").exists() and tifffile.imread(tmp_path / "x_labels.tif").max() == 1
    # A prediction without PRMs removes the old PRM file in the same switch.
    write_version(tmp_path, 4)
    assert not (tmp_path / "x_prms.npy").exists() and versions_in(tmp_path) == {4}
    assert sorted(io.read_file_set(tmp_path, "x").files) == ["coco", "csv", "peaks", "tiff"]
    (tmp_path / "x_peaks.csv").unlink()  # a file of the set deleted by hand: not complete
    assert io.complete_prediction(tmp_path, "x") is None


def test_leftovers_of_dead_writers_go_those_of_live_ones_stay(tmp_path):
    """Staging folders and temporaries are removed only when their owner process is gone."""
    write_version(tmp_path, 2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    host = fileset.owner_tag().rsplit("-", 2)[0]
    dead_owner = f"{host}-{dead.stdout.strip()}-{int(time.time()) - 5}"
    live_owner = fileset.owner_tag()
    for owner in (dead_owner, live_owner):
        staging = tmp_path / STAGING_FOLDER / owner / "x.abc123"
        staging.mkdir(parents=True)
        (staging / "x_labels.tif").write_bytes(b"half-written")
        (tmp_path / f".x_peaks.csv.~{owner}~q1w2e3.tmp.csv").write_text("half")
    old = tmp_path / ".x_labels.tif.legacy1.tmp.tif"  # an older napari-prm's, without owner
    old.write_text("old")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    recovery = recover_file_sets(tmp_path)
    assert sorted(p.name for p in recovery.removed) == sorted(
        ["x.abc123", f".x_peaks.csv.~{dead_owner}~q1w2e3.tmp.csv", old.name])
    assert leftovers(tmp_path) == [STAGING_FOLDER, f".x_peaks.csv.~{live_owner}~q1w2e3.tmp.csv"]
    assert (tmp_path / STAGING_FOLDER / live_owner / "x.abc123" / "x_labels.tif").exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")} == before


def test_reader_finishes_a_committed_switch_before_reading(tmp_path):
    """A writer killed right after its commit: opening the labels in napari shows the new set."""
    from napari_prm._reader import napari_get_reader

    write_version(tmp_path, 1)

    def stop_after_commit(name):
        if name == "committed":
            raise KeyboardInterrupt  # like a kill: the commit is on disk, nothing moved yet

    fileset._step_hook = stop_after_commit
    try:
        with pytest.raises(KeyboardInterrupt):
            write_version(tmp_path, 2)
    finally:
        fileset._step_hook = None
    assert io.read_file_set(tmp_path, "x").pending and versions_in(tmp_path) == {1}
    reader = napari_get_reader(str(tmp_path / "x_labels.tif"))
    (labels, attributes, _), = reader(str(tmp_path / "x_labels.tif"))
    assert labels.max() == 2 and len(attributes["features"]["label"]) == 2
    assert versions_in(tmp_path) == {2} and leftovers(tmp_path) == []
