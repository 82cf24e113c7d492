"""Wording shared by the messages of the library, the command line and the widgets."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping

#: Nouns whose "ch" sounds like "k", so their plural takes only "s".
_HARD_CH = ("epoch",)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, singular for 1: ``"1 instance"``, ``"0 instances"``, ``"2 classes"``.

    ``many`` is the plural when adding ``s`` (``es`` after s, x, ch, sh) is wrong.
    """
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        soft = noun.endswith(("s", "x", "ch", "sh")) and not noun.endswith(_HARD_CH)
        many = noun + ("es" if soft else "s")
    return f"{count} {many}"


def sentence(text: str, *, capital: bool = True) -> str:
    """``text`` as a sentence: ending with a full stop (unless it ends with ``.``, ``!`` or ``?``), and
    capitalised unless ``capital`` is False."""
    if capital:
        text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def sentences(texts) -> str:
    """Messages (warnings, notes) joined as the sentences of one line, after a label such as
    ``"Warning: "``: each ends with a full stop, and all but the first (which follows the label and
    keeps its case) start with a capital. ``["a", "b"]`` gives ``"a. B."``."""
    return " ".join(sentence(text, capital=number > 0) for number, text in enumerate(texts))


class Worded(str):
    """A message in the library's names (``val_fraction``, ``calibrate_checkpoint(...)``), as Python and
    the widgets show it, that also carries its wording for the command line (:attr:`command_line`: the
    options, ``--val-fraction``, ``napari-prm calibrate ... --held-out``), which the command line prints
    (`for_command_line`), and may carry the napari widgets' own (:attr:`widget`: their fields and
    buttons, for advice naming settings they do not have), which the widgets show (`for_widget`; the
    library's wording when not given). It is a ``str``: everything else sees the library's wording; text
    built from it with ``+`` or an f-string loses the other wordings (build a ``Worded`` of them, as
    `worded_sentences`)."""

    command_line: str
    widget: str

    def __new__(cls, text: str, command_line: str | None = None, widget: str | None = None):
        self = super().__new__(cls, text)
        self.command_line = str(text) if command_line is None else str(command_line)
        self.widget = str(text) if widget is None else str(widget)
        return self

    def __reduce__(self):  # pickled (a worker's result) as a Worded still
        return Worded, (str(self), self.command_line, self.widget)


def for_command_line(text: str) -> str:
    """``text`` as the command line says it: a `Worded` message's ``command_line`` wording, else ``text``."""
    return str(getattr(text, "command_line", text))


def for_widget(text: str) -> str:
    """``text`` as the napari widgets say it: a `Worded` message's ``widget`` wording, else ``text``."""
    return str(getattr(text, "widget", text))


def in_front_end_words(text: str, names: Mapping[str, str]) -> str:
    """``text``, a note of the library that names settings by their argument names, with each of
    ``names`` (argument name: what a front end calls it) named as the front end does, and an argument
    given a value, ``(max_peaks=50)``, as the name and the value: the one rewriting of the widget's
    notes (``{"max_peaks": "max peaks"}``: "(max peaks 50)") and the command line's
    (``{"max_peaks": "--max-peaks"}``: "(--max-peaks 50)"). Only whole names, not part of a word or a
    file's path, are rewritten (not ``my_max_peaks``, ``max_peaks.tif``, ``data/max_peaks/``).
    """
    if not names:
        return text
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    pattern = rf"(?<![\w./\\-])({alternatives})(?![\w/\\-]|\.\w)(=)?"
    return re.sub(pattern, lambda match: names[match[1]] + (" " if match[2] else ""), str(text))


def worded(template: str, *texts: str) -> Worded:
    """``template.format(*texts)`` in each wording of the `Worded` ``texts`` (plain strings are the same in
    all): ``worded("with test-time augmentation, {}", warning)``."""
    return Worded(template.format(*map(str, texts)), template.format(*map(for_command_line, texts)),
                  template.format(*map(for_widget, texts)))


def worded_sentences(texts) -> Worded:
    """`sentences` of ``texts`` in each wording of the `Worded` ones."""
    texts = list(texts)
    return Worded(sentences(texts), sentences([for_command_line(text) for text in texts]),
                  sentences([for_widget(text) for text in texts]))


def first_names(names, shown: int = 10) -> str:
    """The first ``shown`` of ``names`` (strings), and how many more: ``"a, b, ... (3 more)"``.

    For messages about long lists (a 1000-class model's classes missing from a dataset)."""
    names = list(names)
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def array_summary(value) -> str:
    """An array or tensor as its dtype and shape, ``"<bool 300×451>"``, for a repr that must not
    print its values."""
    shape = "×".join(str(n) for n in value.shape) or "scalar"
    return f"<{str(value.dtype).removeprefix('torch.')} {shape}>"


def value_text(value) -> str:
    """``repr(value)``, but an array or tensor as :func:`array_summary`: a message naming a value
    given where a path or name was expected must not print an image's values."""
    return array_summary(value) if hasattr(value, "shape") and hasattr(value, "dtype") else repr(value)


def names_summary(names, shown: int = 3) -> str:
    """A list of names as its length and first few: ``"19 ['airplane', 'bicycle', 'bird', …]"``."""
    names = list(names)
    head = ", ".join(repr(name) for name in names[:shown])
    return f"{len(names)} [{head}{', …' if len(names) > shown else ''}]"


def fields_repr(obj) -> str:
    """A dataclass's repr with its arrays and tensors as :func:`array_summary` and long lists and
    dicts counted (``<20 EpochRecords>``, ``<80 entries>``).

    For results a notebook prints: the default repr writes every mask and map out.
    """
    import dataclasses

    import numpy as np  # here: _text is imported by modules that need neither NumPy nor torch

    parts = []
    for item in dataclasses.fields(obj):
        if not item.repr:
            continue
        value = getattr(obj, item.name)
        if isinstance(value, np.ndarray) or (type(value).__name__ == "Tensor" and hasattr(value, "dtype")):
            shown = array_summary(value)
        elif item.name == "class_names" and len(value) > 6:
            shown = names_summary(value)
        elif isinstance(value, (list, tuple)) and len(value) > 6:
            if all(isinstance(v, os.PathLike) for v in value):  # not "<128 PosixPaths>"
                shown = f"<{plural(len(value), 'path')}: {os.fspath(value[0])}, ...>"
            else:
                kinds = sorted({type(v).__name__ for v in value})
                shown = f"<{plural(len(value), '/'.join(kinds))}>"
        elif isinstance(value, dict) and len(value) > 6:  # an epoch's AP of each of 80 classes
            shown = f"<{plural(len(value), 'entry', 'entries')}>"
        else:
            shown = repr(value)
        parts.append(f"{item.name}={shown}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def close_match(name: str, choices) -> str | None:
    """The one of ``choices`` that ``name`` likely means: the one that differs from it only in
    upper and lower case, else the closest near spelling (`difflib.get_close_matches`); None when
    none is near. The one place the messages' "did you mean" hints come from."""
    choices = [str(c) for c in choices]
    wanted = str(name).lower()
    for choice in choices:
        if choice.lower() == wanted:
            return choice
    by_lower = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    close = difflib.get_close_matches(wanted, list(by_lower), n=1)
    return by_lower[close[0]] if close else None


def did_you_mean(names, choices) -> str:
    """A hint for ``names`` that are not among ``choices``: ``"; did you mean 'Mitosis'?"`` (with
    ``for 'mitosis'`` when several names are asked about), saying when only the case differs;
    ``""`` when none of them is near a choice (`close_match`)."""
    names = [str(n) for n in names]
    hints = []
    for name in names:
        match = close_match(name, choices)
        if match is None or match == name:
            continue
        hint = repr(match) + (f" for {name!r}" if len(names) > 1 else "")
        if match.lower() == name.lower():
            hint += " (names differ in upper and lower case)"
        hints.append(hint)
        if len(hints) == 3:  # a 1000-class model's classes missing from a dataset: the first few
            break
    return f"; did you mean {', '.join(hints)}?" if hints else ""
