"""What differs on Windows and macOS, simulated on Linux: renames refused while another
program holds a file open, case-insensitive file names, path sorting, the ``spawn`` start
method of worker processes, consoles with a legacy code page."""

import os
import threading
from pathlib import Path

import pytest

from napari_prm.io import atomic, atomic_write, paths, read_file_set, recover_file_sets, write_file_set


# --------------------------------------------------------------------------- refused renames
class WindowsHolds:
    """``os.replace`` as Windows does it: refused (``PermissionError``, WinError 5) while
    another process holds the target or the source open."""

    def __init__(self, monkeypatch):
        self.held: set[str] = set()
        self.refusals = 0
        self._replace = os.replace
        monkeypatch.setattr(os, "replace", self.replace)
        monkeypatch.setattr(paths, "WINDOWS", True)

    def replace(self, source, target):
        if {os.fspath(source), os.fspath(target)} & self.held:
            self.refusals += 1
            raise PermissionError(13, "Access is denied")
        self._replace(source, target)

    def hold(self, path, *, release_after: float | None = None):
        self.held.add(os.fspath(path))
        if release_after is not None:
            threading.Timer(release_after, self.held.discard, [os.fspath(path)]).start()


def test_a_file_held_open_for_a_moment_is_replaced_once_it_is_released(tmp_path, monkeypatch):
    """A virus scanner or the search indexer opens a file for a moment: the rename waits."""
    windows = WindowsHolds(monkeypatch)
    target = tmp_path / "summary.csv"
    target.write_text("old\n", encoding="utf-8")
    windows.hold(target, release_after=0.3)
    with atomic_write(target) as temp:
        temp.write_text("new\n", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "new\n"
    assert windows.refusals >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_a_file_kept_open_is_named_and_left_as_it_was(tmp_path, monkeypatch):
    """Excel keeps a CSV open: after the retries the error names the file and says what to do."""
    windows = WindowsHolds(monkeypatch)
    monkeypatch.setattr(atomic, "REPLACE_RETRY_DELAYS", (0.01, 0.01))
    monkeypatch.setattr(paths, "WINDOWS", True)
    target = tmp_path / "summary.csv"
    target.write_text("old\n", encoding="utf-8")
    windows.hold(target)
    with pytest.raises(PermissionError) as error:
        with atomic_write(target) as temp:
            temp.write_text("new\n", encoding="utf-8")
    assert str(error.value) == (f"cannot replace {target}: Access is denied; another program may hold it open "
                                "(Excel, an image viewer, another napari): close it there and try again")
    assert windows.refusals == 3
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_a_rename_refused_on_linux_and_macos_is_reported_at_once(tmp_path, monkeypatch):
    """There a ``PermissionError`` is the folder's or the file's permissions (a file of another
    user in a sticky folder, an immutable file): trying again for 3 s on every file helps nothing."""
    refusals = []

    def refused(source, target):
        refusals.append(target)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(paths, "WINDOWS", False)
    monkeypatch.setattr(os, "replace", refused)
    target = tmp_path / "summary.csv"
    with pytest.raises(PermissionError) as error:
        with atomic_write(target) as temp:
            temp.write_text("new\n", encoding="utf-8")
    assert str(error.value) == f"cannot replace {target}: Operation not permitted"
    assert refusals == [target]
    assert list(tmp_path.iterdir()) == []


def test_a_file_set_whose_file_is_kept_open_is_finished_by_the_next_writer(tmp_path, monkeypatch):
    """The switch is committed before the files move: a file held open stops the move with its
    name, and once it is closed the next napari-prm writer finishes the set (all new)."""
    windows = WindowsHolds(monkeypatch)
    monkeypatch.setattr(atomic, "REPLACE_RETRY_DELAYS", (0.01,))
    names = {"csv": "cat_instances.csv", "peaks": "cat_peaks.csv"}

    def write(version):
        with write_file_set(tmp_path, "cat", names, overwrite=True) as staged:
            for path in staged.values():
                path.write_text(f"{version}\n", encoding="utf-8")

    write(1)
    windows.hold(tmp_path / "cat_instances.csv")
    with pytest.raises(PermissionError, match=f"cannot replace {tmp_path / 'cat_instances.csv'}: "):
        write(2)
    assert read_file_set(tmp_path, "cat").pending
    windows.held.clear()
    assert recover_file_sets(tmp_path).finished == ["cat"]
    assert {name: (tmp_path / name).read_text(encoding="utf-8") for name in names.values()} == {
        "cat_instances.csv": "2\n", "cat_peaks.csv": "2\n"}


# --------------------------------------------------------------------------- case-insensitive names
def test_output_stems_that_differ_only_in_case_are_made_distinct(tmp_path):
    from napari_prm.batch import output_stems

    assert output_stems([Path("a/Cat.png"), Path("b/cat.png"), Path("c/CAT.tif")]) == ["Cat", "cat_2", "CAT_3"]
    plate = tmp_path / "plate"
    images = [plate / "A1" / "cat.png", plate / "a1" / "cat.png"]
    assert output_stems(images, roots=[plate]) == ["A1/cat", "a1/cat_2"]


def test_outputs_of_another_image_under_a_name_differing_in_case_are_not_taken(tmp_path):
    """On Linux ``cat.manifest.json`` did not exist beside another image's ``Cat.manifest.json``:
    ``cat.png`` took the stem ``cat``, and the folder held two sets that Windows and macOS
    take for one."""
    from napari_prm.batch import _image_record, output_stems

    out = tmp_path / "out"
    out.mkdir()
    first, other = tmp_path / "a" / "Cat.png", tmp_path / "b" / "cat.png"
    with write_file_set(out, "Cat", {"csv": "Cat_instances.csv"}, info=_image_record(first, out)) as staged:
        staged["csv"].write_text("label\n", encoding="utf-8")
    assert output_stems([other], out=out) == ["cat_2"]
    assert output_stems([first], out=out) == ["Cat"]  # its own outputs


def test_a_resumed_run_finds_outputs_written_on_linux_before_case_was_compared(tmp_path):
    """Before stems were compared without regard to case, a run on Linux wrote ``Cat_*`` for
    ``Cat.png`` and ``cat_*`` for ``cat.png`` into one folder: resumed after the upgrade,
    ``cat.png`` keeps ``cat`` (its outputs are found and kept) instead of being predicted
    again as ``cat_2``; a new image differing only in case still gets a stem of its own."""
    from napari_prm.batch import _image_record, output_stems

    out = tmp_path / "out"
    out.mkdir()
    upper, lower = tmp_path / "Cat.png", tmp_path / "cat.png"
    for stem, image in (("Cat", upper), ("cat", lower)):
        with write_file_set(out, stem, {"csv": f"{stem}_instances.csv"}, info=_image_record(image, out)) as staged:
            staged["csv"].write_text("label\n", encoding="utf-8")
    assert output_stems([upper, lower], out=out) == ["Cat", "cat"]
    assert output_stems([lower, upper], out=out) == ["cat", "Cat"]
    assert output_stems([upper, lower, tmp_path / "CAT.png"], out=out) == ["Cat", "cat", "CAT_2"]
    assert output_stems([upper, lower]) == ["Cat", "cat_2"]  # no folder: nothing to resume


# --------------------------------------------------------------------------- one order of files
@pytest.fixture
def windows_sorting(monkeypatch):
    """``sorted`` of paths as on Windows, where Python compares paths without regard to case."""
    import pathlib

    monkeypatch.setattr(pathlib.PurePath, "__lt__", lambda a, b: a.as_posix().casefold() < b.as_posix().casefold())


def test_paths_sort_the_same_way_as_windows_paths_and_posix_paths():
    """Python sorts Windows paths without regard to case: a folder dataset's classes (the
    model's outputs) and its held-out images came out in another order on Windows."""
    from pathlib import PurePosixPath, PureWindowsPath

    from napari_prm.io.paths import sorted_paths

    names = ["data/apple", "data/Cat", "data/banana", "Data/zebra"]
    assert [str(p) for p in sorted(map(PureWindowsPath, names))][:2] == ["data\\apple", "data\\banana"]
    posix = [p.as_posix() for p in sorted_paths(map(PurePosixPath, names))]
    assert posix == ["Data/zebra", "data/Cat", "data/apple", "data/banana"]
    assert [p.as_posix() for p in sorted_paths(map(PureWindowsPath, names))] == posix
    assert sorted_paths(names) == posix


def test_folder_datasets_and_image_folders_list_files_in_that_order(tmp_path, windows_sorting):
    import imageio.v3 as iio
    import numpy as np

    from napari_prm.batch import collect_images
    from napari_prm.data import from_folders

    for folder in ("apple", "Cat"):
        for name in ("b.png", "A.png"):
            (tmp_path / folder).mkdir(exist_ok=True)
            iio.imwrite(tmp_path / folder / name, np.zeros((8, 8, 3), np.uint8))
    dataset = from_folders(tmp_path)
    assert dataset.class_names == ["Cat", "apple"]
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.image_paths] == [
        "Cat/A.png", "Cat/b.png", "apple/A.png", "apple/b.png"]
    images, _ = collect_images([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path.resolve()).as_posix() for p in images] == [
        "Cat/A.png", "Cat/b.png", "apple/A.png", "apple/b.png"]


def test_corrections_and_proposal_files_are_taken_in_that_order_too(tmp_path, windows_sorting):
    """Learn from corrections read a folder of exports in Windows' order there (the order of
    the training images), and a proposal folder holding ``cat.Npz`` and ``cat.mat`` gave
    another file for ``cat.png`` there than on Linux."""
    import imageio.v3 as iio
    import numpy as np

    from napari_prm.batch import proposals_for_image
    from napari_prm.io import write_label_image
    from napari_prm.refine.corrections import corrections_from_folder

    labels = np.zeros((8, 8), np.uint16)
    labels[2:5, 2:5] = 1
    for stem in ("apple", "Cat"):
        iio.imwrite(tmp_path / f"{stem}.png", np.zeros((8, 8, 3), np.uint8))
        write_label_image(tmp_path / f"{stem}_labels.tif", labels)
    corrections = corrections_from_folder(tmp_path, ["cat"])
    assert [Path(c.image_path).name for c in corrections] == ["Cat.png", "apple.png"]
    proposals = tmp_path / "proposals"
    proposals.mkdir()
    for name in ("cat.mat", "cat.Npz"):
        (proposals / name).write_bytes(b"")
    assert Path(proposals_for_image(proposals, tmp_path / "cat.png")).name == "cat.Npz"


# --------------------------------------------------------------------------- legacy consoles
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from napari_prm import build_model, save_model

    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "dog"], pretrained=False, input_size=(48, 48))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


def test_a_report_on_a_console_with_a_legacy_code_page_is_printed(tmp_path, tiny_checkpoint, monkeypatch):
    """Windows encodes output redirected to a file with its code page (cp1252): the report's
    Δ ended the command with "'charmap' codec can't encode character" and no report."""
    import io
    import sys

    from napari_prm.cli import main

    console = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict", newline="")
    monkeypatch.setattr(sys, "stdout", console)
    assert main(["bench", "--model", str(tiny_checkpoint), "--size", "32", "--peaks", "1", "--device", "cpu",
                 "--no-retrieval", "--out", str(tmp_path / "bench.md")]) == 0
    console.flush()
    printed = console.buffer.getvalue().decode("cp1252")
    assert "| input | 32×32, 1 peaks |" in printed and "max |\\u0394| vs ours" in printed
    assert "max |Δ| vs ours" in (tmp_path / "bench.md").read_text(encoding="utf-8")  # the file keeps UTF-8


def test_a_closed_output_stream_is_left_as_it_is(monkeypatch):
    """A caller of ``main()`` whose ``sys.stdout`` (in a legacy code page) was closed got
    "I/O operation on closed file" from the console set-up, before the command ran; the
    other stream is still made to take any character."""
    import io
    import sys

    from napari_prm.cli import _console_takes_any_character

    closed = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict")
    closed.close()
    console = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict")
    monkeypatch.setattr(sys, "stdout", closed)
    monkeypatch.setattr(sys, "stderr", console)
    _console_takes_any_character()
    assert (closed.errors, console.errors) == ("strict", "backslashreplace")
    _console_takes_any_character()  # main() called again
    assert console.errors == "backslashreplace"


# --------------------------------------------------------------------------- worker processes
SPAWNING_COMMAND = """
import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")  # macOS's and Windows' default
    from napari_prm.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def test_train_with_data_loader_workers_started_by_spawn_trains_as_without_workers(tmp_path):
    """Where worker processes start afresh (``spawn``) instead of forking, everything a data
    loader worker gets is pickled and its modules imported again: ``train --num-workers 1``
    there gives the same model as without workers."""
    import subprocess
    import sys

    import imageio.v3 as iio
    import torch
    from skimage import data

    from napari_prm.model import load_checkpoint

    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            iio.imwrite(tmp_path / "data" / name / f"{i}.png", image[i * 20:i * 20 + 64, :64])
    script = tmp_path / "spawning.py"
    script.write_text(SPAWNING_COMMAND, encoding="utf-8")
    command = ["train", str(tmp_path / "data"), "--backbone", "tiny", "--batch-size", "2", "--input-size", "32",
               "32", "--val-fraction", "0.25", "--no-calibrate", "--device", "cpu", "--epochs", "1"]
    env = os.environ | {"OMP_NUM_THREADS": "1",
                        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    spawned = subprocess.run([sys.executable, str(script), *command, "--out", str(tmp_path / "spawned.pt"),
                              "--num-workers", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert spawned.returncode == 0, spawned.stderr
    in_process = subprocess.run([sys.executable, str(script), *command, "--out", str(tmp_path / "in_process.pt"),
                                 "--num-workers", "0"], capture_output=True, text=True, env=env, timeout=600)
    assert in_process.returncode == 0, in_process.stderr
    models = [load_checkpoint(tmp_path / name)[0] for name in ("spawned.pt", "in_process.pt")]
    weights = [model.network.state_dict() for model in models]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


# --------------------------------------------------------------------------- text files
SOURCE = Path(__file__).resolve().parents[1] / "src" / "napari_prm"


def _text_opens_without_encoding(tree):
    """Lines calling ``open``, ``<path>.open``, ``read_text`` or ``write_text`` in text mode
    without ``encoding=`` (``os.open`` and PIL's ``Image.open`` take no encoding)."""
    import ast

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
        owner = getattr(getattr(function, "value", None), "id", None)
        if name not in ("open", "read_text", "write_text") or (name == "open" and owner in ("os", "Image")):
            continue
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        position = 1 if isinstance(function, ast.Name) else 0  # open(path, mode) / path.open(mode)
        mode = keywords.get("mode", node.args[position] if name == "open" and len(node.args) > position else None)
        if isinstance(mode, ast.Constant) and "b" in str(mode.value):
            continue
        if "encoding" not in keywords:
            yield node.lineno


def test_text_files_are_read_and_written_with_an_encoding():
    """Without ``encoding=``, Python uses the locale's: cp1252 on most Windows machines, so a
    JSON or CSV with an accented class name written there could not be read on Linux or macOS
    (and a UTF-8 file not there)."""
    import ast

    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{path.relative_to(SOURCE).as_posix()}:{line}" for line in _text_opens_without_encoding(tree)]
    assert found == []


# --------------------------------------------------------------------------- paths stored in files
def test_datasets_written_on_windows_name_their_images_with_backslashes(tmp_path):
    """A label CSV typed on Windows (``A1\\cat.png``) or a COCO ``file_name`` written there
    named no file on Linux or macOS: the backslash was part of the file name."""
    import json

    import imageio.v3 as iio
    import numpy as np

    from napari_prm.data import from_coco, from_csv

    (tmp_path / "A1").mkdir()
    for name in ("cat.png", "dog.png"):
        iio.imwrite(tmp_path / "A1" / name, np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("image,labels\nA1\\cat.png,cat\nA1/dog.png,dog\n", encoding="utf-8")
    dataset = from_csv(tmp_path / "labels.csv")
    assert dataset.image_paths == [tmp_path / "A1" / "cat.png", tmp_path / "A1" / "dog.png"]
    coco = {"images": [{"id": 1, "file_name": "A1\\cat.png", "width": 8, "height": 8},
                       {"id": 2, "file_name": "A1/dog.png", "width": 8, "height": 8}],
            "annotations": [{"id": k, "image_id": k, "category_id": k, "bbox": [0, 0, 4, 4], "area": 16,
                             "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]} for k in (1, 2)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco), encoding="utf-8")
    dataset = from_coco(tmp_path / "instances.json")
    assert dataset.image_paths == [tmp_path / "A1" / "cat.png", tmp_path / "A1" / "dog.png"]
    assert dataset.class_names == ["cat", "dog"]


def test_corrections_in_a_coco_file_written_on_windows_find_their_image(tmp_path):
    """Learn from corrections read ``A1\\cat.png`` as one file name: not among the dataset's
    images (``A1/cat.png``, ``B2/cat.png``) nor beside the JSON."""
    import imageio.v3 as iio
    import numpy as np

    from napari_prm import io
    from napari_prm.refine.corrections import corrections_from_coco

    labels = np.zeros((8, 8), np.uint16)
    labels[2:5, 2:5] = 1
    images = []
    for plate in ("A1", "B2"):
        (tmp_path / plate).mkdir()
        images.append(tmp_path / plate / "cat.png")
        iio.imwrite(images[-1], np.full((8, 8, 3), len(images), np.uint8))
    io.export_instances(labels, None, ["cat"], tmp_path, formats=["coco"], stem="x", image_file_name="A1\\cat.png")
    coco = tmp_path / "x_instances.json"
    assert [c.image_path for c in corrections_from_coco(coco, ["cat"], image_paths=images)] == [images[0]]
    found = corrections_from_coco(coco, ["cat"])
    assert [c.image_path for c in found] == [images[0]] and found[0].image[0, 0, 0] == 1


def test_the_reader_names_layers_of_a_coco_file_written_on_windows_by_the_image_name(tmp_path):
    import json

    import numpy as np

    from napari_prm import io
    from napari_prm._reader import napari_get_reader

    labels = np.zeros((20, 20), np.uint16)
    labels[2:9, 3:12] = 1
    table = {"label": np.array([1]), "class_index": np.array([0]), "class_name": np.array(["cat"], object),
             "score": np.array([0.9]), "peak": np.array([0])}
    io.export_instances(labels, table, ["cat"], tmp_path, formats=["coco"], stem="x")
    coco = json.loads((tmp_path / "x_instances.json").read_text(encoding="utf-8"))
    coco["images"] = [coco["images"][0] | {"id": k, "file_name": name}
                      for k, name in ((1, "A1\\cat.png"), (2, "B2/dog.png"))]
    coco["annotations"] += [annotation | {"id": 100 + annotation["id"], "image_id": 2}
                            for annotation in coco["annotations"]]
    (tmp_path / "two.json").write_text(json.dumps(coco), encoding="utf-8")
    layers = napari_get_reader(str(tmp_path / "two.json"))(str(tmp_path / "two.json"))
    assert [meta["name"] for _, meta, _ in layers] == ["cat", "dog"]


# --------------------------------------------------------------------------- names Windows refuses
def test_a_stem_windows_refuses_is_refused_there_before_anything_is_written(tmp_path, monkeypatch):
    """A file stem typed in the Export widget, ``cat:1``, wrote on NTFS a hidden stream of a
    file ``cat`` instead of ``cat:1_labels.tif``."""
    import numpy as np

    from napari_prm import io

    labels = np.zeros((8, 8), np.uint16)
    labels[2:5, 2:5] = 1
    monkeypatch.setattr(paths, "WINDOWS", True)
    for stem, problem in (("cat:1", "':' is not allowed in Windows file names"),
                          ("what?", "'?' is not allowed in Windows file names"),
                          ("nul", "'nul' names a device on Windows")):
        with pytest.raises(ValueError) as error:
            io.export_instances(labels, None, ["cat"], tmp_path / "out", stem=stem)
        assert str(error.value) == f"stem: {stem!r} cannot name files here: {problem}"
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(paths, "WINDOWS", False)  # Linux and macOS take them
    assert [p.name for p in io.export_instances(labels, None, ["cat"], tmp_path / "out", stem="cat:1",
                                                 formats=["tiff"])] == ["cat:1_labels.tif"]


def test_temporary_names_hold_only_characters_every_file_system_takes(tmp_path, monkeypatch):
    """The owner tag in temporary names carries the host name, which may hold ':' or '.'."""
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "lab-pc:2.example.org")
    atomic._owner_for.cache_clear()
    try:
        with atomic_write(tmp_path / "x.csv") as temp:
            name = temp.name
            temp.write_text("x\n", encoding="utf-8")
    finally:
        atomic._owner_for.cache_clear()
    assert name.startswith(".x.csv.~lab_pc_2_example_org-") and name.endswith(".tmp.csv")
    assert paths.windows_name_problem(name) is None


def test_a_file_name_near_the_file_systems_limit_is_written_through_its_temporary(tmp_path):
    """The temporary's name is its target's plus ~50 characters: a 230-character name (the
    outputs of a long image name) failed with 'File name too long' (255 on Linux and Windows)."""
    for name in ("a" * 230 + "_instances.json", "猫" * 75 + "_peaks.csv"):  # 230 and 225+10 bytes
        with atomic_write(tmp_path / name) as temp:
            temp.write_text("x\n", encoding="utf-8")
        assert (tmp_path / name).read_text(encoding="utf-8") == "x\n"
    assert len(list(tmp_path.iterdir())) == 2
    assert atomic.remove_stale_temporaries(tmp_path) == []


# --------------------------------------------------------------------------- the settings folder
def test_the_settings_folder_on_windows_is_local_app_data_napari_prm(monkeypatch):
    """platformdirs puts an author folder above the application's on Windows: the settings
    were in ``AppData\\Local\\napari-prm\\napari-prm``."""
    import platformdirs
    from platformdirs import windows

    from napari_prm._widgets.models import config_dir

    monkeypatch.delenv("NAPARI_PRM_CONFIG_DIR", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", "C:\\Users\\ana\\AppData\\Local")
    monkeypatch.setattr(windows, "_RESOLVE_WIN_FOLDER", windows.get_win_folder_from_env_vars)
    monkeypatch.setattr(platformdirs, "PlatformDirs", windows.Windows)
    assert str(config_dir()).replace("\\", "/") == "C:/Users/ana/AppData/Local/napari-prm"


def test_settings_in_an_earlier_versions_folder_on_windows_stay_found(tmp_path, monkeypatch):
    """Users of an earlier version have their settings, recent models and refined model in
    ``napari-prm\\napari-prm``: the folder without the author folder started them afresh."""
    import platformdirs
    from platformdirs import windows

    from napari_prm._widgets.models import config_dir

    monkeypatch.delenv("NAPARI_PRM_CONFIG_DIR", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path))
    monkeypatch.setattr(windows, "_RESOLVE_WIN_FOLDER", windows.get_win_folder_from_env_vars)
    monkeypatch.setattr(platformdirs, "PlatformDirs", windows.Windows)
    assert config_dir() == tmp_path / "napari-prm"
    (tmp_path / "napari-prm" / "napari-prm").mkdir(parents=True)
    (tmp_path / "napari-prm" / "napari-prm" / "predict_widget.json").write_text("{}", encoding="utf-8")
    assert config_dir() == tmp_path / "napari-prm" / "napari-prm"


# --------------------------------------------------------------------------- modules Windows lacks
WITHOUT_RESOURCE = """
import sys

import psutil  # noqa: F401 (psutil's Linux part uses resource; its Windows part does not)

sys.modules["resource"] = None  # as on Windows, where the module does not exist
from napari_prm.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_bench_runs_where_there_is_no_resource_module(tmp_path, tiny_checkpoint):
    """``napari-prm bench`` imported ``resource`` (POSIX only): on Windows it ended with
    ModuleNotFoundError before timing anything."""
    import re
    import subprocess
    import sys

    env = os.environ | {"OMP_NUM_THREADS": "1",
                        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", WITHOUT_RESOURCE, "bench", "--model", str(tiny_checkpoint),
                           "--size", "32", "--peaks", "1", "--device", "cpu", "--no-retrieval",
                           "--no-compare-original"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    memory = re.search(r"\| peak memory \(process RSS\) \| (\d+) MiB \|", done.stdout)
    assert memory and 50 < int(memory[1]) < 64 * 1024  # torch alone takes more than 50 MiB


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps (Linux)")
def test_a_loaded_safetensors_checkpoint_keeps_no_mapping_of_its_file(tmp_path, tiny_checkpoint):
    """safetensors maps the file; Windows refuses to replace a file while a mapping of it lives
    (``calibrate`` without ``--out`` replaces the checkpoint it loaded, ``train --resume`` its
    ``--out``). The tensors are copied into the model, so no mapping outlives the load."""
    import gc

    from napari_prm import load_model, save_model

    path = save_model(load_model(tiny_checkpoint), tmp_path / "model.safetensors")
    model = load_model(path)
    gc.collect()
    assert str(path) not in Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    save_model(model, path)  # in place, as calibrate does
    assert load_model(path).class_names == ["cat", "dog"]


# --------------------------------------------------------------------------- summary.csv held open
@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> list[Path]:
    import imageio.v3 as iio
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    iio.imwrite(folder / "cat.png", data.chelsea()[:48, :64])
    iio.imwrite(folder / "coffee.png", data.coffee()[:48, :64])
    return sorted(folder.iterdir())


def test_predict_goes_on_while_summary_csv_is_open_in_another_program(tmp_path, monkeypatch, tiny_checkpoint,
                                                                     two_images):
    """Excel showing ``summary.csv`` on Windows: the run's first update of it ended the whole
    run with PermissionError. Now every image is predicted, and once the file is closed the
    last update writes it."""
    import csv

    from napari_prm.batch import predict_many

    windows = WindowsHolds(monkeypatch)
    monkeypatch.setattr(atomic, "REPLACE_RETRY_DELAYS", (0.01,))
    out = tmp_path / "out"
    out.mkdir()
    windows.hold(out / "summary.csv")

    def close_after_the_last(result, done, total):
        if done == total:
            windows.held.clear()

    batch = predict_many(two_images, str(tiny_checkpoint), out, progress=close_after_the_last, summary_every=0,
                         proposals="prm", peak_threshold=0.0, device="cpu")
    assert [result.status for result in batch.results] == ["written", "written"]
    assert windows.refusals >= 2  # tried (twice, with the retry) before the first image, then left
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        assert [(row["stem"], row["status"]) for row in csv.DictReader(handle)] == [
            ("cat", "written"), ("coffee", "written")]


def test_a_summary_csv_still_held_at_the_end_is_named(tmp_path, monkeypatch, tiny_checkpoint, two_images):
    """The run's last update names the file; the run still ends as a finished run (its marker
    of the image in progress is removed: left, the next run took coffee.png for the image that
    killed this one, ran it last and said so)."""
    from napari_prm.batch import RUNNING_NAME, predict_many

    windows = WindowsHolds(monkeypatch)
    monkeypatch.setattr(atomic, "REPLACE_RETRY_DELAYS", (0.01,))
    out = tmp_path / "out"
    out.mkdir()
    windows.hold(out / "summary.csv")
    with pytest.raises(PermissionError, match=f"cannot replace {out / 'summary.csv'}: "):
        predict_many(two_images, str(tiny_checkpoint), out, summary_every=0, proposals="prm", peak_threshold=0.0,
                     device="cpu")
    assert sorted(p.name for p in out.glob("*.manifest.json")) == ["cat.manifest.json", "coffee.manifest.json"]
    assert not (out / RUNNING_NAME).exists()
