"""What the distribution holds and declares: the napari manifest against the code it names,
the package data, the declared dependencies against the imports, and the one version."""

import ast
import fnmatch
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the testing extra installs tomli
    import tomli as tomllib

import napari_prm
from napari_prm import io as prm_io
from napari_prm._reader import napari_get_reader
from napari_prm._writer import write_labels

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_prm"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MANIFEST = PluginManifest.from_file(PACKAGE / "napari.yaml")


def _python_object(python_name: str):
    module, _, attribute = python_name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _labels_layer_meta() -> dict:
    return {"name": "cells", "features": None, "metadata": {"class_names": ["cat"]}}


def test_the_entry_point_names_the_manifest_and_every_command_imports():
    assert PYPROJECT["project"]["entry-points"]["napari.manifest"] == {"napari-prm": "napari_prm:napari.yaml"}
    assert MANIFEST.name == PYPROJECT["project"]["name"]
    MANIFEST.validate_imports()  # npe2's own check stops after the first list it meets
    commands = {command.id: command for command in MANIFEST.contributions.commands}
    for command in commands.values():
        assert callable(_python_object(command.python_name)), command.python_name
    used = [entry.command for group in ("readers", "writers", "widgets", "sample_data")
            for entry in getattr(MANIFEST.contributions, group)]
    used += [item.command for items in MANIFEST.contributions.menus.values() for item in items]
    assert set(used) == set(commands), "commands named nowhere, or contributions naming no command"


def test_the_reader_patterns_are_the_files_the_reader_claims(tmp_path):
    (reader,) = MANIFEST.contributions.readers
    assert reader.command == "napari-prm.get_reader" and not reader.accepts_directories
    labels = np.zeros((8, 10), np.uint16)
    labels[2:5, 3:7] = 1
    table = {"label": np.array([1]), "class_index": np.array([0]), "class_name": np.array(["cat"]),
             "score": np.array([0.9])}
    claimed = []
    for suffix in (".json", ".tif", ".tiff", ".png", ".csv"):
        path = tmp_path / f"x_labels{suffix}"
        if suffix == ".csv":
            prm_io.write_instances_csv(path, labels, table, ["cat"])
        else:
            prm_io.export_instances(labels, table, ["cat"], path)
        if napari_get_reader(str(path)) is not None:
            claimed.append(suffix)
        # the pattern napari matches must let through every file the reader claims
        matched = any(fnmatch.fnmatch(path.name, pattern) for pattern in reader.filename_patterns)
        assert matched == (suffix in claimed), (suffix, reader.filename_patterns)
    assert claimed == [".json", ".tif", ".tiff", ".png"]
    # napari-prm's exports open as one Labels layer holding the instance
    for suffix in claimed:
        ((data, _, layer_type),) = napari_get_reader(str(tmp_path / f"x_labels{suffix}"))(
            str(tmp_path / f"x_labels{suffix}"))
        assert layer_type == "labels" and np.array_equal(np.asarray(data), labels), suffix


def test_the_writer_writes_each_extension_the_manifest_offers(tmp_path):
    (writer,) = MANIFEST.contributions.writers
    assert writer.command == "napari-prm.write_labels"
    assert [str(layer_type) for layer_type in writer.layer_types] == ["labels"]
    labels = np.zeros((6, 6), np.uint16)
    labels[1:4, 1:4] = 3
    for extension in writer.filename_extensions:
        written = write_labels(str(tmp_path / f"out{extension}"), labels, _labels_layer_meta())
        assert Path(written[0]).name == f"out{extension}" and Path(written[0]).stat().st_size > 0
    with pytest.raises(ValueError, match=r"\.tif, \.tiff or \.json; got .*out\.png"):
        write_labels(str(tmp_path / "out.png"), labels, _labels_layer_meta())


def test_every_sample_gives_an_rgb_image_layer():
    samples = MANIFEST.contributions.sample_data
    commands = {command.id: command.python_name for command in MANIFEST.contributions.commands}
    assert [sample.key for sample in samples] == ["chelsea", "coffee"]
    for sample in samples:
        ((data, meta, layer_type),) = _python_object(commands[sample.command])()
        assert layer_type == "image" and meta["rgb"] and data.ndim == 3 and data.shape[2] == 3, sample.key


def _git_tracked(*paths: str) -> list[str] | None:
    """The files git tracks under ``paths`` (relative to the repository), or None outside a git
    checkout (an unpacked sdist) or where git cannot read it (no git; a checkout owned by another
    user, which git refuses as of "dubious ownership")."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    listed = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    return [name for name in listed.stdout.split("\0") if name] if listed.returncode == 0 else None


def test_package_data_lists_every_file_the_package_reads():
    """The wheel holds src/napari_prm's .py files and only the data files pyproject lists. In a
    checkout the files are git's (a Finder `.DS_Store` or an editor's `napari.yaml~` lying in
    src/ failed the test)."""
    shipped = set(PYPROJECT["tool"]["setuptools"]["package-data"]["napari_prm"])
    tracked = _git_tracked("src/napari_prm")
    files = ([ROOT / name for name in tracked] if tracked is not None
             else [path for path in PACKAGE.rglob("*") if path.is_file() and "__pycache__" not in path.parts])
    data_files = {path.relative_to(PACKAGE).as_posix() for path in files if path.suffix != ".py"}
    assert data_files == shipped


def test_every_third_party_import_is_a_declared_dependency():
    """pandas and platformdirs were imported by the widgets but reached users only through napari."""
    declared = {re.split(r"[\[<>=!~ ;]", requirement)[0].lower().replace("_", "-")
                for requirement in PYPROJECT["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    imported -= set(sys.stdlib_module_names) | {"napari_prm"}
    assert {"torch", "PIL", "skimage", "pandas", "platformdirs"} <= imported
    for module in sorted(imported):
        names = {name.lower().replace("_", "-") for name in distributions.get(module, [])}
        assert names & declared, f"{module} (from {sorted(names)}) is imported but not a dependency"


def test_the_version_has_one_source_and_the_changelog_names_it():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "napari_prm.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    # the newest numbered section (an "[Unreleased]" section above it names no version)
    newest = re.search(r"^## \[(\d[^\]]*)\]", changelog, flags=re.MULTILINE).group(1)
    assert newest == napari_prm.__version__


def test_the_licence_file_is_the_declared_licence():
    assert PYPROJECT["project"]["license"] == "BSD-3-Clause"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("BSD 3-Clause License")


def test_the_sdist_manifest_takes_every_tracked_top_level_entry():
    """MANIFEST.in names each file and folder of the repository's top level, so the sdist's
    tests find their conftest.py, the pages and scripts they check, and tox.ini."""
    tracked = _git_tracked()
    if tracked is None:
        pytest.skip(f"git cannot list the files of {ROOT} (an unpacked sdist, or no git): nothing to compare with")
    top = {name.split("/")[0] for name in tracked}
    # setuptools takes these by itself: the package, pyproject, the readme it names, MANIFEST.in
    top -= {"src", "pyproject.toml", "README.md", "MANIFEST.in"}
    named = set()
    for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        words = line.split("#")[0].split()
        if words and words[0] in ("include", "graft"):
            named |= set(words[1:])
    assert top <= named, f"MANIFEST.in leaves out {sorted(top - named)}"


def test_the_sdist_takes_nothing_git_ignores(tmp_path, monkeypatch):
    """MANIFEST.in grafts whole folders (tests, docs, benchmarks, scripts, .ci): a `.tmp` left by
    an interrupted write, a `site/` that mkdocs built, a `build/` or a `.venv` in one of them went
    into the sdist. Each .gitignore pattern, planted in each grafted folder, is left out now, and
    the files the folders hold are taken."""
    from setuptools.command.egg_info import FileList  # what setuptools' sdist applies MANIFEST.in with

    lines = [line.split("#")[0].strip() for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    grafted = [word for line in lines if line.startswith("graft ") for word in line.split()[1:]]
    assert {"tests", "docs", "benchmarks", "scripts"} <= set(grafted)
    wanted = [f"{folder}/kept.py" for folder in grafted] + ["tests/data/kept.json", "docs/images/kept.png"]
    ignored = []
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()]
    for pattern in (pattern for pattern in patterns if pattern and not pattern.startswith(("#", "!"))):
        name = pattern.strip("/").replace("*", "x")
        folders = [""] if pattern.startswith("/") else ["", *grafted, f"{grafted[0]}/sub"]
        ignored += [f"{folder}/{name}/junk" if pattern.endswith("/") else f"{folder}/{name}" for folder in folders]
    for path in wanted + ignored:
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).touch()
    monkeypatch.chdir(tmp_path)
    files = FileList()
    for line in lines:
        files.process_template_line(line)
    taken = set(files.files)
    assert set(wanted) <= taken
    assert not taken & {path.lstrip("/") for path in ignored}, sorted(taken & {p.lstrip("/") for p in ignored})
