"""Wording shared by the messages of the library, the command line and the widgets."""

from __future__ import annotations

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
