"""Atomic file writing: a failed write leaves the previous file as it was.

Everything napari-prm writes (exports, checkpoints, reports, the recent-models list) goes
through `atomic_write`: to a temporary file in the target's folder, then renamed over the
target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_writes"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; exports should get the usual mode.
_FILE_MODE = 0o666 & ~_current_umask()


@contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Give a temporary path to write to; on success rename it onto ``path``.

    Parameters
    ----------
    path : path-like
        Final file. Its folder must exist.
    overwrite : bool
        If False and ``path`` exists, raise ``FileExistsError`` before anything is written.

    Raises
    ------
    ValueError
        ``path`` is a folder.
    FileNotFoundError
        ``path``'s folder does not exist.

    Yields
    ------
    Path
        A fresh file in the same folder whose name ends with ``path``'s suffix (so writers
        that pick the format by extension work). Write to it, then leave the block.

    Notes
    -----
    On an exception inside the block the temporary file is removed and ``path`` is left
    untouched. The data is flushed to disk before the rename (``os.replace``, atomic on
    POSIX and Windows within one file system).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=f".tmp{path.suffix}")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, _FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_writes(paths: Sequence[str | os.PathLike], *,
                  overwrite: bool = True) -> Iterator[list[Path]]:
    """`atomic_write` for several files at once: all are replaced, or none.

    Yields one temporary path per target; the targets are replaced only after the whole
    block succeeded, so an export that fails on its third file leaves the previous
    export's files all as they were. With ``overwrite=False``, ``FileExistsError`` names
    every existing target before anything is written.
    """
    paths = [Path(p) for p in paths]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"not overwriting existing {', '.join(existing)}; "
                              "pass overwrite=True to replace")
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_write(p)) for p in paths]
