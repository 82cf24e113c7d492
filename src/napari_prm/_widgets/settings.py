"""Widget settings kept between sessions, as JSON in napari-prm's user config folder.

Each widget describes its persisted choices with a dataclass whose defaults are what
"Restore defaults" brings back; :func:`load_settings` reads the saved file (a value of the
wrong type, an unknown key or an unreadable file falls back to the default) and
:func:`save_settings` writes it atomically. The folder is ``$NAPARI_PRM_CONFIG_DIR`` when
set, else the platform's config folder (``napari_prm._widgets.models.config_dir``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .models import config_dir

T = TypeVar("T")


def settings_path(name: str) -> Path:
    """The file of the settings called ``name`` (e.g. ``"predict"``)."""
    return config_dir() / f"{name}_widget.json"


def load_settings(name: str, cls: type[T], *, upgrade: Callable[[dict], dict] | None = None) -> T:
    """The saved settings ``name`` as a ``cls`` dataclass (its defaults where unusable).

    ``upgrade`` turns the saved dict of an earlier version into the current fields.
    """
    try:
        saved = json.loads(settings_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    if upgrade is not None and isinstance(saved, dict):
        saved = upgrade(saved)
    defaults = cls()
    values = {}
    for field in dataclasses.fields(cls):
        default = getattr(defaults, field.name)
        value = saved.get(field.name, default) if isinstance(saved, dict) else default
        values[field.name] = value if _fits(value, default, str(field.type)) else default
    return cls(**values)


#: Stand-in defaults of the types an optional field (default None) may be annotated with.
_EXAMPLES = {"bool": False, "int": 0.0, "float": 0.0, "str": ""}


def _fits(value, default, annotation: str = "") -> bool:
    """Whether a saved value can stand where ``default`` stands.

    None fits optional fields; for a field whose default is None the annotation (e.g.
    ``"float | None"``) says what else fits.
    """
    if value is None:
        return True
    if default is None:
        examples = [_EXAMPLES[part] for part in annotation.replace(" ", "").split("|") if part in _EXAMPLES]
        return not examples or any(_fits(value, example) for example in examples)
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def save_settings(name: str, settings) -> None:
    """Write ``settings`` (a dataclass) as the saved settings ``name``."""
    from ..io import atomic_write

    folder = config_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(settings_path(name)) as temp:
            temp.write_text(json.dumps(dataclasses.asdict(settings), indent=1), encoding="utf-8")
    except OSError:
        pass  # an unwritable config folder must not stop the widget


def persist_fields(name: str, cls: type, fields: dict, *, usable: Callable[[str, object], bool] | None = None,
                   typed: Callable[[str, object], bool] | None = None) -> None:
    """Keep the values of a magicgui form's ``fields`` between sessions, as the settings ``name``.

    Each key of ``fields`` is a field of the dataclass ``cls`` and its value the widget that
    shows it. The saved values are put into the widgets now (a choice no longer offered, a
    value out of range, or one ``usable(field, value)`` rejects, is left at the widget's own),
    and a change of one of them saves that field into the file as it is on disk (so two such
    widgets open at once, in two windows, keep what was last changed in each: saving the whole
    form lost the other's changes). Paths are saved as absolute paths, ``~`` expanded (as a
    FileEdit makes them when they come back); an empty field (``.``) as ``""``. A FileEdit's text that
    ``typed(field, text)`` accepts is saved and put back as typed instead: a built-in model's
    name (``imagenet-voc``) typed into a model field, which a path in the current folder is not.
    """
    saved = load_settings(name, cls)
    defaults = cls()
    for field, widget in fields.items():
        value = getattr(saved, field)
        if value is None or value == getattr(defaults, field) or (usable is not None and not usable(field, value)):
            continue
        if hasattr(widget, "choices") and value not in widget.choices:
            continue
        try:
            if typed is not None and typed(field, value):
                widget.line_edit.value = value
            else:
                widget.value = value
        except (ValueError, TypeError):
            pass  # out of range now: keep what the widget has

    def save(field: str, widget) -> None:
        value = widget.value
        if isinstance(value, Path):
            if typed is not None and typed(field, widget.line_edit.value.strip()):
                value = widget.line_edit.value.strip()
            else:  # absolute, ~ expanded, as a FileEdit makes it: ./imagenet-voc (a Path drops ./) stays the file
                value = "" if no_path(value) else str(value.expanduser().absolute())
        save_settings(name, dataclasses.replace(load_settings(name, cls), **{field: value}))

    for field, widget in fields.items():
        widget.changed.connect(lambda _=None, field=field, widget=widget: save(field, widget))


def no_path(value) -> bool:
    """Whether a magicgui FileEdit's value holds no path: None, or an emptied field (its value
    is then ``Path("")``, which prints as ``.``)."""
    return value is None or str(value) in ("", ".")


def exclusive_paths(first, second) -> None:
    """Make two magicgui FileEdits alternatives (a dataset file or a folder): choosing a path in
    one empties the other, so the one chosen last is the one used."""
    def clear(other, value) -> None:
        if not no_path(value):
            other.line_edit.value = ""

    first.changed.connect(lambda value: clear(second, value))
    second.changed.connect(lambda value: clear(first, value))


def chosen_path(*fields) -> Path | None:
    """The path chosen in one of magicgui FileEdits made alternatives by `exclusive_paths` (the
    first that holds one), None when all are empty.

    Raises
    ------
    FileNotFoundError
        When the one that holds a path names nothing on disk (a typo, a folder since moved): it
        is not passed over for another, or for none, without a word.
    """
    for field in fields:
        value = field.value
        if no_path(value):
            continue
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"{field.label.removeprefix('or ')} {path} does not exist")
        return path
    return None
