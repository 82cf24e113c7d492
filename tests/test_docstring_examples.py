"""The Examples sections of the library's docstrings run and print what they say.

The suite does not run ``--doctest-modules`` (the widgets' modules need a display), so the
core modules whose docstrings hold examples are run here.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["napari_prm._validate", "napari_prm.masks", "napari_prm.prm_maps", "napari_prm.predictor",
           "napari_prm.io.paths", "napari_prm.io.fileset", "napari_prm._classes", "napari_prm.data", "napari_prm.edit"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.attempted > 0, f"{name} has no examples left: take it off MODULES"
    assert result.failed == 0


PUBLIC_MODULES = ["napari_prm", "napari_prm.predict", "napari_prm.predictor", "napari_prm.train",
                  "napari_prm.evaluate", "napari_prm.peaks", "napari_prm.batch", "napari_prm.io",
                  "napari_prm.masks", "napari_prm.retrieval", "napari_prm.proposals", "napari_prm.refine",
                  "napari_prm.model", "napari_prm.data", "napari_prm.edit", "napari_prm.prm_maps"]


def _documented_names(doc: str, title: str = "Parameters") -> set[str] | None:
    """The names a numpydoc section (``Parameters``, ``Attributes``) lists (None without one)."""
    lines = doc.splitlines()
    for start in range(len(lines) - 1):
        if lines[start].strip() == title and set(lines[start + 1].strip()) == {"-"}:
            break
    else:
        return None
    names: set[str] = set()
    for index in range(start + 2, len(lines)):
        line = lines[index]
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if following and set(following) == {"-"}:  # the next section's title
            break
        if line and not line[0].isspace():
            names.update(name.strip().lstrip("*") for name in line.split(" : ")[0].split(","))
    return names


def _documented_parameters(doc: str) -> set[str] | None:
    """The names a numpydoc ``Parameters`` section lists (None without one)."""
    return _documented_names(doc, "Parameters")


def _public_callables():
    import inspect

    seen = set()
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        # a module without __all__: the public names it defines
        names = getattr(module, "__all__", None) or [
            n for n in vars(module) if not n.startswith("_") and getattr(vars(module)[n], "__module__", "") == name]
        for attribute in names:
            item = getattr(module, attribute)
            if id(item) in seen or not getattr(item, "__module__", "").startswith("napari_prm"):
                continue
            seen.add(id(item))
            if inspect.isfunction(item):
                yield f"{item.__module__}.{attribute}", item
            elif inspect.isclass(item):
                yield f"{item.__module__}.{attribute}", item
                for method_name, method in vars(item).items():
                    if inspect.isfunction(method) and not method_name.startswith("_"):
                        yield f"{item.__module__}.{attribute}.{method_name}", method


def _has_section(doc: str, title: str) -> bool:
    lines = doc.splitlines()
    return any(lines[i].strip() == title and set(lines[i + 1].strip()) == {"-"} for i in range(len(lines) - 1))


def test_the_top_level_api_documents_its_parameters_and_returns():
    """Every function and public method ``napari_prm`` exports (and ``train``, ``refine``,
    ``evaluate``) that takes arguments has a numpydoc ``Parameters`` section, and one that
    returns something a ``Returns`` section: ``PRMPredictor.set_proposals``,
    ``class_response_maps``, ``save_model`` and ``PRMModel.to`` had only prose, so the
    parameter check above skipped them."""
    import inspect

    import napari_prm
    from napari_prm.evaluate import evaluate, evaluate_labels
    from napari_prm.refine import refine
    from napari_prm.train import calibrate_checkpoint, train

    items = [(f"napari_prm.{name}", getattr(napari_prm, name)) for name in napari_prm.__all__]
    items += [(f.__module__ + "." + f.__name__, f) for f in (train, calibrate_checkpoint, refine, evaluate,
                                                              evaluate_labels)]
    callables = []
    for name, item in items:
        if inspect.isfunction(item):
            callables.append((name, item))
        elif inspect.isclass(item):
            callables += [(f"{name}.{method_name}", method) for method_name, method in vars(item).items()
                          if inspect.isfunction(method) and not method_name.startswith("_")]
    assert len(callables) >= 30
    missing = []
    for name, function in callables:
        doc = inspect.getdoc(function) or ""
        signature = inspect.signature(function)
        if [p for p in signature.parameters if p not in ("self", "cls")] and not _has_section(doc, "Parameters"):
            missing.append(f"{name}: no Parameters")
        if signature.return_annotation not in (None, "None", inspect.Signature.empty) and not (
                _has_section(doc, "Returns") or _has_section(doc, "Yields")):
            missing.append(f"{name}: no Returns")
    assert not missing, "\n".join(missing)


def test_a_parameter_documented_optional_can_be_left_out():
    """numpydoc's ``, optional`` means the argument has a default: ``export_instances`` said so of
    ``table`` and ``class_names``, which must be given (None is accepted)."""
    import inspect

    wrong = []
    for name, item in _public_callables():
        doc = inspect.getdoc(item) or ""
        if _documented_parameters(doc) is None:
            continue
        parameters = inspect.signature(item).parameters
        section = doc.split("Parameters\n----------\n", 1)[1]
        for line in section.splitlines():
            if line and not line[0].isspace() and " : " in line and line.rstrip().endswith("optional"):
                for parameter in (p.strip().lstrip("*") for p in line.split(" : ")[0].split(",")):
                    if parameter in parameters and parameters[parameter].default is inspect.Parameter.empty \
                            and parameters[parameter].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                   inspect.Parameter.VAR_KEYWORD):
                        wrong.append(f"{name}: {parameter}")
    assert not wrong, wrong


def test_public_dataclasses_document_their_fields():
    """Each public dataclass has an ``Attributes`` section naming every field (properties may be
    listed too): ``BatchResult`` (what ``predict_many`` returns), ``EpochRecord`` and ``RefineEpoch``
    had none."""
    import dataclasses
    import inspect

    wrong = []
    for name, item in _public_callables():
        if not (inspect.isclass(item) and dataclasses.is_dataclass(item)):
            continue
        documented = _documented_names(inspect.getdoc(item) or "", "Attributes")
        fields = {field.name for field in dataclasses.fields(item)}
        if documented is None:
            wrong.append(f"{name}: no Attributes")
            continue
        properties = {n for n, v in inspect.getmembers(item) if isinstance(v, property)}
        if not fields <= documented or not documented <= fields | properties:
            wrong.append(f"{name}: undocumented {sorted(fields - documented)}, "
                         f"stale {sorted(documented - fields - properties)}")
    assert not wrong, "\n".join(wrong)
