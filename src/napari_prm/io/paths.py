"""File paths that behave the same on Linux, macOS and Windows."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import PurePath
from typing import TypeVar

__all__ = ["sorted_paths"]

P = TypeVar("P", str, os.PathLike)


def sorted_paths(paths: Iterable[P]) -> list[P]:
    """``paths`` in the same order on every operating system: by their parts' characters.

    Python compares Windows paths without regard to case (``apple`` before ``Cat``) and
    POSIX paths by their characters (``Cat`` before ``apple``). The order of a folder's
    files decides which images are held out for validation and the order of a folder
    dataset's classes (a model's outputs), so a plain ``sorted`` gave another model from the
    same folder and seed on Windows than on Linux or macOS. This order is Linux's, everywhere.

    Parameters
    ----------
    paths : iterable of str or path-like

    Returns
    -------
    list
        The same objects, sorted.

    Examples
    --------
    >>> from pathlib import PureWindowsPath
    >>> sorted_paths([PureWindowsPath("data/apple"), PureWindowsPath("data/Cat")])
    [PureWindowsPath('data/Cat'), PureWindowsPath('data/apple')]
    """
    return sorted(paths, key=lambda path: PurePath(path).parts)
