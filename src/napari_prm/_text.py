"""Wording shared by the messages of the library, the command line and the widgets."""

from __future__ import annotations

import os

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


def names_summary(names, shown: int = 3) -> str:
    """A list of names as its length and first few: ``"19 ['airplane', 'bicycle', 'bird', …]"``."""
    names = list(names)
    head = ", ".join(repr(name) for name in names[:shown])
    return f"{len(names)} [{head}{', …' if len(names) > shown else ''}]"


def fields_repr(obj) -> str:
    """A dataclass's repr with its arrays and tensors as :func:`array_summary` and long lists counted.

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
        else:
            shown = repr(value)
        parts.append(f"{item.name}={shown}")
    return f"{type(obj).__name__}({', '.join(parts)})"
