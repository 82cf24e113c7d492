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
