"""The documentation stays true to the code: the generated CLI page, the API pages, the
README's two commands, the docs environment's dependencies, and what the pages show a user
running: napari-prm command lines, benchmark and script invocations, Python snippets, keys and
system packages."""

import ast
import configparser
import importlib.util
import re
import shlex
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the testing extra installs tomli
    import tomli as tomllib

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


def _api_page_names(module):
    """``(module object, names)``: what the module's API page lists (``__all__``, else the
    module's public callable definitions)."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None) or [
        name for name, value in vars(mod).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module
        and callable(value)]
    return mod, names


@pytest.mark.parametrize("module", [m for m in API_MODULES if m != "napari_prm"])
def test_public_functions_and_classes_of_api_modules_are_documented(module):
    """What an API page lists (``__all__``, else the module's public definitions) has a
    numpydoc docstring, so that the page says what it does."""
    mod, names = _api_page_names(module)
    assert names
    for name in names:
        value = getattr(mod, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"{module}.{name} has no docstring"



# numpydoc's checks (numpydoc.validate) that say whether a page tells a user the truth: no
# docstring (GL08), a parameter left out (PR01) or one that is not the code's (PR02), a type
# written other than as Python names it (PR06: ``integer`` for ``int``) or without a space
# before its colon (PR10, which makes numpydoc read ``name:type`` as the name). Style-only
# codes (summary wording, missing examples, See Also) are not checked.
NUMPYDOC_CHECKS = {"GL08", "PR01", "PR02", "PR06", "PR10"}


def _api_objects():
    """``(dotted name, object)`` of each public function, class, method and property that the
    API pages show (mkdocstrings lists a class's members not starting with ``_``), once each."""
    import inspect

    seen = set()
    for module in API_MODULES:
        mod, names = _api_page_names(module)
        for name in names:
            value = getattr(mod, name)
            if not (inspect.isfunction(value) or inspect.isclass(value)) or id(value) in seen \
                    or not value.__module__.startswith("napari_prm"):
                continue
            seen.add(id(value))
            dotted = f"{value.__module__}.{value.__qualname__}"
            yield dotted, value
            if inspect.isclass(value):
                for member_name, member in vars(value).items():
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if not member_name.startswith("_") and (inspect.isfunction(member)
                                                            or isinstance(member, property)):
                        yield f"{dotted}.{member_name}", member


def _numpydoc_errors(obj):
    """numpydoc's ``(code, message)`` errors of ``obj``'s docstring. A dataclass may document
    its fields, which are its constructor's parameters, as ``Attributes`` (as this project's
    do; test_docstring_examples.py checks that section against the fields)."""
    import dataclasses

    from numpydoc.docscrape import get_doc_object
    from numpydoc.validate import Validator, validate

    class RecordValidator(Validator):
        def __init__(self, obj_name, obj):
            super().__init__(get_doc_object(obj))

        @property
        def doc_all_parameters(self):
            parameters = super().doc_all_parameters
            if isinstance(self.obj, type) and dataclasses.is_dataclass(self.obj) and not parameters:
                fields = set(self.signature_parameters)
                parameters = {name: value for name, value in self._doc_parameters(["Attributes"]).items()
                              if name in fields}
            return parameters

    return validate(getattr(obj, "__qualname__", ""), validator_cls=RecordValidator, obj=obj)["errors"]


def test_api_docstrings_pass_numpydoc_validation():
    """numpydoc's validator finds no docstring left out and no parameter missing, stale or
    mistyped in what the API pages show."""
    objects = list(_api_objects())
    assert len(objects) >= 300
    wrong = [f"{name}: {code} {message}" for name, obj in objects
             for code, message in _numpydoc_errors(obj) if code in NUMPYDOC_CHECKS]
    assert not wrong, f"{len(wrong)} numpydoc errors:\n" + "\n".join(wrong)


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


# --------------------------------------------------------------------------- what the pages show
def _pages():
    """README.md and the docs' pages, but not docs/cli.md (the parsers' own rendering)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [page for page in pages if page.name != "cli.md"]


_FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^[ \t]*```", flags=re.S | re.M)


def _fenced(text):
    """``(language, body)`` of each fenced code block (also those indented in a list item)."""
    return [(language, textwrap.dedent(body)) for _, language, body in _FENCE.findall(text)]


def _inline_code(text):
    """The inline code spans outside fenced blocks, line breaks as spaces."""
    prose = _FENCE.sub("", text)
    return [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]


def _shell_lines(body):
    """The commands of a shell block: continuations joined, comments and prompts' wrappers
    (``.venv/bin/``, ``xvfb-run -a``, ``/usr/bin/time -v``, ``env X=1``) dropped, ``&&`` split."""
    for line in body.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        for command in line.split("&&"):
            command = re.sub(r"^(xvfb-run -a( -s \"[^\"]*\")?|/usr/bin/time -v|env( \w+=\S+)+|\s)+", "",
                             command.strip())
            yield command.replace(".venv/bin/", "")


def _napari_prm_parsers():
    from napari_prm.cli import build_parser

    parser = build_parser()
    return parser, parser._subparsers._group_actions[0].choices


def test_napari_prm_command_lines_of_the_docs_parse():
    """Every ``napari-prm`` command of a shell block is one the command line accepts, options
    and values (choices, numbers) included."""
    parser, _ = _napari_prm_parsers()
    commands = [(page, command) for page in _pages()
                for language, body in _fenced(page.read_text(encoding="utf-8")) if language == "bash"
                for command in _shell_lines(body) if command.startswith("napari-prm ")]
    assert len(commands) >= 15
    for page, command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as error:
            assert error.code == 0, f"{page.name}: {command}"  # --help


def test_options_the_docs_give_a_napari_prm_command_are_its_own():
    """The options a page writes after ``napari-prm <command>`` (inline, in the README's synopsis
    or in a shell block) exist for that command, and a value written for an option with
    choices (``--preset default|original``) is one of them."""
    _, commands = _napari_prm_parsers()
    uses = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        uses += [(page, span) for span in _inline_code(text)]
        for language, body in _fenced(text):
            if language in ("bash", ""):
                # the README's synopsis continues a command on lines that start with spaces
                body = re.sub(r"\n[ \t]+(?=\[)", " ", body)
                uses += [(page, re.sub(r"\s#.*", "", line)) for line in body.replace("\\\n", " ").splitlines()]
    checked = 0
    for page, text in uses:
        for match in re.finditer(r"napari-prm (\w+)((?:\s+[^\s`]+)*)", text):
            name, rest = match.groups()
            if name not in commands:
                continue
            actions = {flag: action for action in commands[name]._actions for flag in action.option_strings}
            tokens = rest.replace("[", " ").replace("]", " ").split()
            for at, token in enumerate(tokens):
                flag = token.split("=")[0]
                if not flag.startswith("--"):
                    continue
                assert flag in actions, f"{page.name}: napari-prm {name} has no {flag} ({text.strip()[:80]})"
                checked += 1
                choices = actions[flag].choices
                value = tokens[at + 1] if at + 1 < len(tokens) else ""
                if choices and value and not value.startswith("-") and not value.isupper():
                    assert set(value.split("|")) <= set(choices), f"{page.name}: {flag} {value}"
    assert checked >= 40


def test_lists_of_the_napari_prm_commands_are_complete():
    """Where a page lists the commands (``predict|train|...``, ``predict / train / ...``), it
    lists every command of the parser, in its order."""
    _, commands = _napari_prm_parsers()
    separator = r"(?:\s*\|\s*|\s+/\s+)"
    lists = [re.split(separator, match) for page in _pages()
             for match in re.findall(rf"napari-prm ((?:\w+{separator}){{2,}}\w+)", page.read_text(encoding="utf-8"))]
    assert len(lists) >= 2
    for listed in lists:
        assert listed == list(commands)

def _script_invocations():
    """``(page, script, arguments)`` of every benchmarks/ or scripts/ file the pages name, with
    the arguments they give it (none for a mere mention)."""
    found = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        lines = [line for language, body in _fenced(text) if language in ("bash", "")
                 for line in _shell_lines(body)] + _inline_code(text)
        for line in lines:
            match = re.search(r"((?:benchmarks|scripts)/\w+\.py)( .*)?$", line)
            if match:
                arguments = re.sub(r"<[^>]*>", "PLACEHOLDER", match.group(2) or "")
                found.append((page, match.group(1), shlex.split(arguments)))
    return found


class _Parsed(Exception):
    """Raised in place of running a script once its arguments are parsed."""


def test_benchmark_and_script_commands_of_the_docs_parse(monkeypatch):
    """Each ``python benchmarks/<script>.py ...`` (and ``scripts/``) that a page gives exists
    and its own parser accepts the options and values shown; the script is stopped right after
    parsing, so nothing runs. An unknown ``--rows`` name of accuracy_ablation.py used to run
    no row at all."""
    import argparse
    import runpy
    import sys

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    invocations = _script_invocations()
    assert len({script for _, script, _ in invocations}) >= 15
    imported_before = set(sys.modules)
    try:
        for page, script, arguments in invocations:
            assert (ROOT / script).is_file(), f"{page.name}: {script}"
            if not arguments:  # a mention of the script, not a command
                continue
            monkeypatch.setattr(sys, "argv", [script, *arguments])
            monkeypatch.syspath_prepend(str((ROOT / script).parent))  # as `python <script>` sets it
            with pytest.raises(_Parsed):
                try:
                    runpy.run_path(str(ROOT / script), run_name="__main__")
                except SystemExit as error:
                    pytest.fail(f"{page.name}: {script} {' '.join(arguments)}: exit {error.code}")
    finally:  # the scripts' sibling modules (accuracy_ablation, ...) do not outlive the test
        for name in set(sys.modules) - imported_before:
            if Path(getattr(sys.modules[name], "__file__", None) or "/").parent.name in ("benchmarks", "scripts"):
                del sys.modules[name]


def _resolve(dotted):
    """What ``dotted`` names: ``napari_prm.predict`` the function the package exports,
    ``napari_prm.predict.rank_by_confidence`` a function of the module of that name,
    ``napari_prm.io.read_image`` one of a sub-package."""
    parts = dotted.split(".")
    value = importlib.import_module(parts[0])
    for at, name in enumerate(parts[1:], start=2):
        if hasattr(value, name):
            value = getattr(value, name)
            continue
        try:
            value = importlib.import_module(".".join(parts[:at]))
        except ImportError:
            value = getattr(importlib.import_module(".".join(parts[:at - 1])), name)
    return value


def _dotted(node):
    """``a.b.c`` of an attribute chain on a name, else None."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(names)]) if isinstance(node, ast.Name) else None


def test_python_snippets_of_the_docs_use_names_and_keywords_that_exist():
    """Every Python block of the pages compiles; what it imports from napari_prm exists, every
    ``napari_prm.x.y`` it uses resolves, and every keyword it passes to a napari_prm function or
    class is one of its parameters. Names the prose gives as ``napari_prm.x.y`` resolve too."""
    import inspect

    import napari_prm
    from napari_prm.predictor import SETTING_NAMES

    snippets = [(page, body) for page in _pages()
                for language, body in _fenced(page.read_text(encoding="utf-8")) if language == "python"]
    assert len(snippets) >= 10
    keywords_checked = 0
    for page, body in snippets:
        tree = ast.parse(body, filename=page.name)
        names = {"napari_prm": "napari_prm"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("napari_prm"):
                for alias in node.names:
                    assert hasattr(_resolve(node.module), alias.name), f"{page.name}: {node.module}.{alias.name}"
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            dotted = _dotted(node) if isinstance(node, (ast.Attribute, ast.Name)) else None
            if dotted and dotted.split(".")[0] in names and isinstance(node, ast.Attribute):
                _resolve(names[dotted.split(".")[0]] + dotted[len(dotted.split(".")[0]):])
            if isinstance(node, ast.Call) and (called := _dotted(node.func)) and called.split(".")[0] in names:
                function = _resolve(names[called.split(".")[0]] + called[len(called.split(".")[0]):])
                parameters = inspect.signature(function).parameters.values()
                known = {p.name for p in parameters}
                if any(p.kind is p.VAR_KEYWORD for p in parameters):  # predict's **settings, passed on
                    known |= set(inspect.signature(napari_prm.predict).parameters) | set(SETTING_NAMES)
                for keyword in node.keywords:
                    assert keyword.arg in known, f"{page.name}: {called}({keyword.arg}=)"
                    keywords_checked += 1
    assert keywords_checked >= 15
    for page in _pages():
        for dotted in set(re.findall(r"\bnapari_prm(?:\.\w+)+", page.read_text(encoding="utf-8"))):
            if not dotted.endswith(".md"):  # api/napari_prm.md, a page
                _resolve(dotted)


def test_a_snippet_that_starts_a_local_cluster_runs_as_a_script():
    """A local dask cluster's worker processes import the script that started it again: the
    batch snippet of usage.md, copied into a script, started a cluster in every worker and
    failed with 'Nanny failed to start' until its work moved under ``if __name__ == "__main__":``."""
    snippets = [(page, body) for page in _pages()
                for language, body in _fenced(page.read_text(encoding="utf-8"))
                if language == "python" and "start_local_cluster(" in body]
    assert snippets
    for page, body in snippets:
        guarded = [ast.unparse(node) for node in ast.parse(body).body if isinstance(node, ast.If)
                   and ast.unparse(node.test) == "__name__ == '__main__'"]
        assert any("start_local_cluster(" in block for block in guarded), (
            f"{page.name}: start_local_cluster outside `if __name__ == '__main__':`")


def test_the_shortcut_tables_name_the_keys_the_plugin_binds():
    """plugin.md's table lists exactly the keys the correction panel binds (its ``SHORTCUTS``,
    read from the source: the test needs no Qt), and the tutorial's keys are among them."""
    source = (ROOT / "src" / "napari_prm" / "_widgets" / "correct.py").read_text(encoding="utf-8")
    shortcuts = next(ast.literal_eval(node.value) for node in ast.parse(source).body
                     if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["SHORTCUTS"])
    bound = {key for keys, _, _ in shortcuts for key in keys}
    plugin = (ROOT / "docs" / "plugin.md").read_text(encoding="utf-8")
    table = plugin.split("**Keyboard shortcuts.**")[1].split("\n\n")[1]
    listed = set(re.findall(r"`([^`]+)`", table)) - {"Ctrl+Z", "Ctrl+Shift+Z"}
    assert listed == bound
    tutorial = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8").split("## 3. Correct")[1].split("\n## ")[0]
    keys = {key for key in re.findall(r"press `([^`]+)`", tutorial)}
    assert keys and keys <= bound, keys - bound


def test_the_system_packages_the_docs_list_are_those_ci_installs():
    """installation.md lists the packages `.ci/run` installs for napari's canvas under Xvfb;
    plugin.md had a list of its own that lacked eight of them, and now points there."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_packages = set(ci.split("--no-install-recommends \\\n")[1].split(">/dev/null")[0].replace("\\", " ").split())
    installation = (ROOT / "docs" / "installation.md").read_text(encoding="utf-8")
    listed = re.search(r"sudo apt-get install (xvfb .*?)\nxvfb-run", installation, re.S).group(1)
    assert set(listed.replace("\\", " ").split()) == ci_packages
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for package in ("libxcb-icccm4", "libgl1-mesa-dri"):  # in any list of them
            assert page.name == "installation.md" or package not in text, (
                f"{page.name} lists system packages: point to installation.md's list")


def test_the_installation_table_names_what_each_extra_installs():
    """Each extra's row in installation.md names every package the extra adds (the testing
    row left out PyQt6, which it installs for the widget tests)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    table = (ROOT / "docs" / "installation.md").read_text(encoding="utf-8")
    for extra, requirements in extras.items():
        row = next(line for line in table.splitlines() if line.startswith(f'| `pip install ".[{extra}]"`'))
        for requirement in requirements:
            name = re.split(r"[\[<>=!~ ]", requirement)[0]
            assert name.lower() in row.lower(), f"the [{extra}] row does not name {name}"


def _gui_imports(path):
    """``(at import time, inside functions)``: whether a module imports napari, magicgui or Qt."""
    gui = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy")
    found = [False, False]

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                modules = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and not child.level:
                modules = [child.module]
            else:
                modules = []
            if any(module.split(".")[0] in gui for module in modules):
                found[inside] = True
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return tuple(found)


def test_architecture_says_which_modules_import_napari_or_qt():
    """architecture.md's "Who imports napari or Qt" names every module that does, at import
    time or inside functions (``_widgets/models.py``, which imports napari's notifications in a
    function, was missing), and no other module of the package imports them at all."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    paragraph = text.split("**Who imports napari or Qt.**")[1].split("No other module does")[0]
    eager_part, lazy_part = paragraph.split("at import time")[0], paragraph.split("at import time")[1]
    lazy_part = lazy_part.split("inside")[0] + " `cli.py`"  # cli.py: "when `napari-prm demo` opens a viewer"

    def modules(part):  # the paragraph names the widgets' modules without their folder after the first
        return {name if name == "cli.py" else f"_widgets/{name}"
                for name in re.findall(r"`(?:_widgets/)?(\w+\.py)`", part)}

    names = {"eager": modules(eager_part), "lazy": modules(lazy_part)}
    package = ROOT / "src" / "napari_prm"
    actual = {"eager": set(), "lazy": set()}
    for path in sorted(package.rglob("*.py")):
        eager, lazy = _gui_imports(path)
        if eager or lazy:
            actual["eager" if eager else "lazy"].add(path.relative_to(package).as_posix())
    assert actual == names


def test_files_and_tests_the_pages_name_exist():
    """Each repository path a page names (``benchmarks/…``, ``scripts/…``, ``tests/…``, ``.ci/run``,
    a module of the package as ``refine/head.py``) exists, and each test it names
    (``test_io.py::test_atomic_write_context``, or a bare ``test_…`` name) is defined in the tests."""
    package = ROOT / "src" / "napari_prm"
    tests = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py")}
    paths = names = 0
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"(?<![\w./-])((?:benchmarks|scripts|tests|src|docs|\.ci)/[\w./*-]*\w)", text):
            assert any(ROOT.glob(path)), f"{page.name}: {path}"
            paths += 1
        for span in _inline_code(text):
            if re.fullmatch(r"(?:_widgets|refine|io|proposals|model)/\w+\.(?:py|json)", span):
                assert (package / span).is_file(), f"{page.name}: {span}"
                paths += 1
            match = re.fullmatch(r"(?:tests/)?(?:(test_\w+\.py)::)?(test_\w+)", span)
            if match:
                file, name = match.groups()
                sources = [tests[file]] if file else tests.values()
                assert any(re.search(rf"^def {name}\(", source, re.M) for source in sources), f"{page.name}: {span}"
                names += 1
    assert paths >= 50 and names >= 20, (paths, names)


def test_architecture_contracts_list_the_fields_of_prediction_and_instance():
    """architecture.md's "Contracts between modules" names every field of ``Prediction`` (its
    table) and of ``Instance`` (its signature), in order: ``Instance.alternatives`` was missing."""
    import dataclasses

    from napari_prm import Instance, Prediction

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("## Contracts between modules")[1]
    table = text.split("`Prediction` (from `predict`)")[1].split("\n\n")[1]
    listed = [name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert listed == [f.name for f in dataclasses.fields(Prediction)]
    signature = re.search(r"`Instance\(([^)]*)\)`", text).group(1)
    assert [name.strip() for name in signature.split(",")] == [f.name for f in dataclasses.fields(Instance)]


def test_the_top_level_api_page_names_every_export():
    """docs/api/napari_prm.md's table of what the package re-exports names each name of
    ``napari_prm.__all__`` (``PRMPredictor``, ``PredictSettings`` and ``preset_settings`` were
    missing) and nothing else."""
    import napari_prm

    text = (ROOT / "docs" / "api" / "napari_prm.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    listed = [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert sorted(listed) == sorted(napari_prm.__all__)


def test_the_defaults_the_pages_state_are_the_codes():
    """Numbers the prose gives as defaults or limits are the code's: the peak cap and its
    limit, the suppression radius, the held-out share, the calibration warning's image count,
    the original preset's thresholds, the built-in proposals' area range and what the widgets
    remember and cache."""
    import inspect

    from napari_prm._widgets.models import MAX_RECENT, PredictorCache
    from napari_prm.peaks import MAX_PEAKS, MIN_CALIBRATION_IMAGES
    from napari_prm.predictor import DEFAULT, MAX_PEAKS_LIMIT, ORIGINAL
    from napari_prm.proposals import default_proposals
    from napari_prm.train import train

    def text(name):
        return " ".join((ROOT / "docs" / name).read_text(encoding="utf-8").split())

    def number(value):
        return f"{value:g}"

    cached = {3: "three"}[inspect.signature(PredictorCache).parameters["size"].default]
    area = inspect.signature(default_proposals).parameters["area_range"].default
    claims = {
        "usage.md": [
            f"within {number(DEFAULT.suppression_radius)} CRM cells",
            f"at most {MAX_PEAKS} per image (`max_peaks`)",
            f"(`--val-fraction`, default {number(inspect.signature(train).parameters['val_fraction'].default)})",
            f"fewer than {MIN_CALIBRATION_IMAGES} images (`napari_prm.peaks.MIN_CALIBRATION_IMAGES`)",
            f"the official release's {number(ORIGINAL.class_threshold)} and {number(ORIGINAL.peak_threshold)}",
            f"`default_proposals(area_range=({number(area[0])}, {number(area[1])}))`",
            f"the widget's *max peaks* field, up to {MAX_PEAKS_LIMIT})",
        ],
        "plugin.md": [
            f"({MAX_PEAKS} by default, up to {MAX_PEAKS_LIMIT};",
            f"(the last {MAX_RECENT} are remembered)",
            f"the predictors of the last {cached} image planes",
            f"when fewer than {MIN_CALIBRATION_IMAGES} images calibrated them",
        ],
        "tutorial.md": [f"the last {MAX_RECENT} checkpoints"],
    }
    for page, phrases in claims.items():
        for phrase in phrases:
            assert phrase in text(page), f"{page}: {phrase}"


def _dataclass_fields(path, name):
    """The field names of dataclass ``name`` in ``path``, read from the source (the widgets'
    modules import Qt)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    return [item.target.id for item in node.body if isinstance(item, ast.AnnAssign)]


def test_plugin_page_lists_the_choices_each_widget_keeps():
    """plugin.md names what the Peak Response Maps and Train widgets keep between sessions,
    field by field of their settings dataclasses: it said the Train widget kept where
    *Calibrate* writes, which starts on *a new file* in each session (not a field)."""
    text = " ".join((ROOT / "docs" / "plugin.md").read_text(encoding="utf-8").split())
    widgets = ROOT / "src" / "napari_prm" / "_widgets"
    predict = text.split("The choices of the form are kept between sessions")[1].split("A model file")[0]
    phrases = {"planes": "planes", "model": "model", "preset": "preset", "class_threshold": "class and peak thresholds",
               "peak_threshold": "class and peak thresholds", "max_peaks": "max peaks", "input_size": "input size",
               "proposals": "proposals", "device": "device", "show_text": "the two check boxes",
               "add_crms": "the two check boxes"}
    assert _dataclass_fields(widgets / "form.py", "WidgetSettings") == list(phrases)
    for phrase in phrases.values():
        assert phrase in predict, phrase
    train = text.split("The form's choices (dataset,")[1].split("are kept for the next session")[0]
    phrases = {"dataset": "dataset", "dataset_dir": "dataset", "image_dir": "images folder", "base": "base model",
               "epochs": "epochs", "lr": "learning rate", "batch_size": "batch size", "input_size": "input size",
               "channels": "image channels", "out": "output file", "device": "device",
               "continue_run": "*Continue the unfinished run*",
               "calibrate_model": "the model to calibrate"}
    assert _dataclass_fields(widgets / "train.py", "TrainSettings") == list(phrases)
    for phrase in phrases.values():
        assert phrase in "dataset," + train, phrase
    assert "not where *Calibrate* writes" in train


def test_plugin_page_names_every_function_of_edit():
    """plugin.md's list of the correction panel's array work is ``napari_prm.edit.__all__``."""
    import napari_prm.edit

    text = " ".join((ROOT / "docs" / "plugin.md").read_text(encoding="utf-8").split())
    listed = text.split("The array work is `napari_prm.edit` (")[1].split(")")[0]
    assert sorted(re.findall(r"`(\w+)`", listed)) == sorted(napari_prm.edit.__all__)
