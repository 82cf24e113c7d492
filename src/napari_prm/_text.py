"""Wording shared by the messages of the library, the command line and the widgets."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, singular for 1: ``"1 instance"``, ``"0 instances"``, ``"2 classes"``.

    ``many`` is the plural when adding ``s`` (``es`` after s, x, ch, sh) is wrong.
    """
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        many = noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")
    return f"{count} {many}"
