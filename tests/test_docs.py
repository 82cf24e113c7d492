"""The documentation stays true to the code: the generated CLI page, the API pages, the
README's two commands and the docs environment's dependencies."""

import ast
import configparser
import importlib.util
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
API_MODULES = ["napari_prm", "napari_prm.model", "napari_prm.proposals", "napari_prm.retrieval",
               "napari_prm.masks", "napari_prm.io", "napari_prm.data", "napari_prm.train",
               "napari_prm.evaluate", "napari_prm.edit", "napari_prm.predict", "napari_prm.batch",
               "napari_prm.refine", "napari_prm.peaks", "napari_prm.predictor", "napari_prm.model.label_spaces",
               "napari_prm.prm_maps", "napari_prm.scaled"]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_page_is_the_parsers_rendering():
    cli_reference = _script("cli_reference")
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == cli_reference.render(), (
        "docs/cli.md is out of date: run python scripts/cli_reference.py")


def test_cli_page_lists_every_option_of_every_command():
    from napari_prm.cli import build_parser

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        section = text.split(f"## `napari-prm {name}`")[1].split("\n## ")[0]
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, f"{name} {flag}"


def _nav_pages(nav):
    for item in nav:
        if isinstance(item, str):
            yield item
        else:
            for value in item.values():
                yield from (_nav_pages(value) if isinstance(value, list) else [value])


def _mkdocs_config():
    import yaml

    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_every_public_module_has_an_api_page_in_the_nav():
    pages = set(_nav_pages(_mkdocs_config()["nav"]))
    documented = {}
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        for module in re.findall(r"^::: (\S+)", page.read_text(encoding="utf-8"), flags=re.M):
            documented[module] = f"api/{page.name}"
    assert sorted(documented) == sorted(API_MODULES)
    assert set(documented.values()) <= pages
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page


@pytest.mark.parametrize("module", [m for m in API_MODULES if m != "napari_prm"])
def test_public_functions_and_classes_of_api_modules_are_documented(module):
    """What an API page lists (``__all__``, else the module's public definitions) has a
    numpydoc docstring, so that the page says what it does."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None) or [
        name for name, value in vars(mod).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module
        and callable(value)]
    assert names
    for name in names:
        value = getattr(mod, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_docs_env_installs_the_docs_extra():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["docs"]
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    deps = [line.strip() for line in tox["testenv:docs"]["deps"].splitlines() if line.strip()]
    assert deps == extra
    assert "docs" in [env.strip() for env in tox["tox"]["envlist"].split(",")]
    assert "mkdocs build --strict" in tox["testenv:docs"]["commands"]


def test_readme_gives_two_commands_that_need_nothing_outside_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme.split("## Quick start")[1].split("\n## ")[0], re.S)
    assert [block.strip() for block in blocks] == [
        'python3 -m venv .venv && .venv/bin/python -m pip install ".[all]" && .venv/bin/napari-prm demo',
        "python3 -m venv .venv && .venv/bin/python -m pip install tox && .venv/bin/tox"]
    assert "../shared" not in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert ci[-1] == blocks[1].strip(), ".ci/run must end with README's test command"
    gitignore = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".venv/" in gitignore
    installation = (ROOT / "docs" / "installation.md").read_text(encoding="utf-8")
    for block in blocks:
        assert f"```bash\n{block.strip()}\n```" in installation, block
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("napari[pyqt6]") for dep in extras["all"])


def test_mkdocs_hooks_make_readme_links_relative():
    hooks = _script("mkdocs_hooks")
    home = hooks.readme_as_home((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "](docs/" not in home
    for target in re.findall(r"\]\(([^)#]+\.(?:md|png))", home):
        assert (ROOT / "docs" / target).is_file(), target


def test_tutorial_images_exist_and_are_small():
    text = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    images = re.findall(r"\]\((images/[^)]+\.png)\)", text)
    assert len(images) >= 6
    for image in images:
        path = ROOT / "docs" / image
        assert path.is_file() and path.stat().st_size < 300_000, image
    assert ast.parse((ROOT / "scripts" / "tutorial_screenshots.py").read_text())


def test_tutorial_labels_csv_snippet_on_jpegs_and_pngs(tmp_path, monkeypatch):
    """The tutorial's snippet named every image ``<stem>.png``: on a folder of JPEG photos the
    CSV listed files that do not exist and ``train`` refused it. It is run here as written."""
    import imageio.v3 as iio
    import numpy as np
    from skimage import data

    from napari_prm.data import from_csv
    from napari_prm.io import export_instances

    text = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "labels.csv" in block)
    (tmp_path / "images").mkdir()
    classes = ["Egyptian cat", "espresso"]
    for index, (name, suffix) in enumerate((("chelsea", ".jpg"), ("coffee", ".png"))):
        image = getattr(data, name)()[:64, :64]
        iio.imwrite(tmp_path / "images" / f"{name}{suffix}", image)
        labels = np.zeros(image.shape[:2], np.uint16)
        labels[10:30, 10:30] = 1
        export_instances(labels, {"label": [1], "class_index": [index], "score": [0.9]}, classes,
                         tmp_path / "labelled", stem=name, formats=("tiff", "csv"))
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "tutorial.md", "exec"), {})
    assert (tmp_path / "images" / "labels.csv").read_text().splitlines() == [
        "image,labels", "chelsea.jpg,Egyptian cat", "coffee.png,espresso"]
    dataset = from_csv(tmp_path / "images" / "labels.csv")
    assert [p.name for p in dataset.image_paths] == ["chelsea.jpg", "coffee.png"]
    assert dataset.class_names == ["Egyptian cat", "espresso"]


def test_markdown_tables_are_not_broken_by_a_blank_line():
    """A table row after a blank line starts no table (it has no header and separator): it
    shows as a paragraph of pipes. docs/plugin.md's correction table lost its last row so."""
    broken = []
    for page in sorted([*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]):
        lines = page.read_text(encoding="utf-8").splitlines()
        fenced = False
        for number, line in enumerate(lines):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            starts_table = (line.startswith("|") and number + 1 < len(lines)
                            and set(lines[number + 1].replace("|", "").strip()) <= set("-: ")
                            and lines[number + 1].startswith("|"))
            if (not fenced and line.startswith("|") and number >= 2 and not lines[number - 1].strip()
                    and lines[number - 2].startswith("|") and not starts_table):
                broken.append(f"{page.relative_to(ROOT)}:{number + 1}")
    assert not broken, broken
