"""File paths that behave the same on Linux, macOS and Windows."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath
from typing import TypeVar

from .._validate import path_list

__all__ = ["COMPOUND_SUFFIXES", "image_stem", "is_system_file", "sorted_paths", "stored_path", "windows_name_problem",
           "windows_rules"]

#: Whether file names follow Windows' rules here (tests set it to check them on Linux).
WINDOWS = sys.platform == "win32"
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*\x00-\x1f]')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)), *(f"LPT{n}" for n in range(1, 10))}

P = TypeVar("P", str, os.PathLike)

#: Files an operating system's file browser leaves in folders (Windows' thumbnail caches and
#: folder settings, macOS's custom folder icon), compared without regard to case.
_SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r"}


#: Image file extensions of two parts (an OME-TIFF's), which name the format together: the stem
#: of ``cells.ome.tif`` is ``cells``. Only those the image readers take (``IMAGE_SUFFIXES``' TIFF).
COMPOUND_SUFFIXES = (".ome.tif", ".ome.tiff")


def image_stem(name: str | os.PathLike) -> str:
    """The stem of an image file: its name without its extension, a compound one
    (`COMPOUND_SUFFIXES`: ``.ome.tif``, ``.ome.tiff``, in any case) included.

    Outputs are named by it (``cells.ome.tif`` gives ``cells_labels.tif``, not
    ``cells.ome_labels.tif``), and files are paired with images by it. Earlier versions named
    an OME-TIFF's outputs by ``Path(name).stem`` (``cells.ome``): matching also accepts that one.

    Parameters
    ----------
    name : str or path-like
        A file name or path (only its last part counts).

    Returns
    -------
    str
        ``Path(name).stem`` for other names, and for a name that is only the compound extension.

    Examples
    --------
    >>> image_stem("data/cells.ome.tif"), image_stem("cells.OME.TIFF"), image_stem("cells.tif")
    ('cells', 'cells', 'cells')
    >>> image_stem("v1.2.png"), image_stem(".ome.tif")
    ('v1.2', '.ome')
    """
    file_name = PurePath(name).name
    folded = file_name.casefold()
    for suffix in COMPOUND_SUFFIXES:
        if folded.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return PurePath(file_name).stem


def windows_rules() -> bool:
    """Whether file names follow Windows' rules here (`WINDOWS`)."""
    return WINDOWS


def is_system_file(name: str) -> bool:
    """Whether a file or folder named ``name`` is hidden (``.DS_Store``, ``.git``) or one that a
    file browser leaves in folders (``Thumbs.db``, ``desktop.ini``): not a user's data."""
    return name.startswith(".") or name.casefold() in _SYSTEM_FILES


def tree_files(folder: str | os.PathLike, keep: Callable[[str], bool]) -> list[Path]:
    """The files of ``folder`` and of its visible sub-folders whose name ``keep`` takes, in
    `sorted_paths` order: a ``predict --recursive`` tree's outputs, without the sub-folders whose
    name starts with a dot (the staging folders of its writes).

    Parameters
    ----------
    folder : path-like
    keep : callable
        ``keep(file_name)``: whether a file of that name is wanted.

    Returns
    -------
    list of Path
    """
    found = []
    for here, names, files in os.walk(folder):
        names[:] = [name for name in names if not name.startswith(".")]
        found += [Path(here, name) for name in files if keep(name)]
    return sorted_paths(found)


def sorted_paths(paths: Iterable[P]) -> list[P]:
    """``paths`` in the same order on every operating system: by their parts' characters.

    Python compares Windows paths without regard to case (``apple`` before ``Cat``) and
    POSIX paths by their characters (``Cat`` before ``apple``). The order of a folder's
    files decides which images are held out for validation and the order of a folder
    dataset's classes (a model's outputs), so a plain ``sorted`` gave another model from the
    same folder and seed on Windows than on Linux or macOS. This order is Linux's, everywhere.

    Parameters
    ----------
    paths : str, path-like or iterable of str or path-like
        One path is one path (``[path]``).

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
    return sorted(path_list(paths), key=lambda path: PurePath(path).parts)


def stored_path(folder: str | os.PathLike, name: str) -> Path:
    """The file that a path stored in a CSV or JSON names, relative to ``folder`` unless absolute.

    Files written on Windows may separate folders by ``\\`` (``A1\\cat.png`` in a COCO
    ``file_name`` or a label CSV typed in Excel); on Linux and macOS that is one file name
    holding a backslash. Where no such file exists, the backslashes are taken for folder
    separators. (Windows itself reads ``/`` as a separator too.)

    Parameters
    ----------
    folder : path-like
        Where relative paths start.
    name : str
        The path as stored.

    Returns
    -------
    Path
        The existing file when one of the readings names one, else the path as stored.

    Examples
    --------
    >>> stored_path("images", "A1/cat.png").as_posix()
    'images/A1/cat.png'
    """
    path = Path(folder) / name
    if "\\" in name and os.sep != "\\" and not path.exists():
        windows = Path(folder) / name.replace("\\", "/")
        if windows.exists():
            return windows
    return path


def windows_name_problem(name: str) -> str | None:
    """What makes ``name`` unusable as a file name on Windows; None when nothing does.

    Windows refuses ``< > : " | ? *`` and control characters in file names, and names whose
    part before the first dot is a device (``CON``, ``NUL``, ``COM1``...). A ``:`` is worse
    than refused on NTFS: ``cat:1_labels.tif`` writes a hidden stream of a file ``cat``.

    Examples
    --------
    >>> windows_name_problem("cat:1_labels.tif")
    "':' is not allowed in Windows file names"
    >>> windows_name_problem("cat_labels.tif") is None
    True
    """
    found = _WINDOWS_FORBIDDEN.search(name)
    if found:
        return f"{found.group()!r} is not allowed in Windows file names"
    if name.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        return f"{name.split('.')[0]!r} names a device on Windows"
    return None
