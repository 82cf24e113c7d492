"""Atomic file writing: a failed write leaves the previous file as it was.

Everything napari-prm writes (exports, checkpoints, reports, the recent-models list) goes
through `atomic_write`: to a temporary file in the target's folder, then renamed over the
target. Several files that must change together (one image's outputs) go through
`napari_prm.io.fileset.write_file_set` instead, which builds on the pieces here.

A temporary file's name carries its writer's *owner tag* (host, process id and process
start time), so that `remove_stale_temporaries` removes exactly the temporaries whose
writer is gone (a killed run) and never those of a writer still at work.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path

from .._validate import path_list
from .paths import windows_rules

__all__ = ["atomic_write", "atomic_writes", "remove_stale_temporaries", "replace_file", "writable_folder"]

#: A temporary whose writer cannot be checked (another host, or no owner tag) is taken
#: for a leftover once it is this old: no napari-prm write takes an hour.
STALE_AFTER_SECONDS = 3600.0

_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?:~(?P<owner>[A-Za-z0-9_]+-\d+-\d+)~)?[^.]*\.tmp[^/]*$")


#: Pauses (seconds) between the tries of `replace_file` after a refused rename: about 3 s in all.
REPLACE_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; exports should get the usual mode.
_FILE_MODE = 0o666 & ~_current_umask()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


@lru_cache(maxsize=4)
def _owner_for(pid: int) -> str:
    import psutil

    return f"{_host()}-{pid}-{int(psutil.Process(pid).create_time())}"


def owner_tag() -> str:
    """``host-pid-start``: who is writing, as it goes into temporary names.

    Computed per call of the process id, so a forked child gets its own.
    """
    return _owner_for(os.getpid())


def writable_folder(path: str | os.PathLike, *, create: bool = True) -> Path:
    """Check that files can be written into the folder ``path``: by writing and removing a small
    temporary file in it, or, when it does not exist and ``create`` is False, a temporary folder
    in the nearest folder above it that exists (then ``path`` is not created).

    Parameters
    ----------
    path : path-like
    create : bool
        Create ``path`` (and the folders above it) when it does not exist.

    Returns
    -------
    Path

    Raises
    ------
    OSError
        ``"cannot write into folder <path>: <reason>"`` (read-only file system, no permission,
        a file in the way), before any work that would have to be thrown away.
    """
    path = Path(path)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_dir():  # the probe below would go to the folder above
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
        if path.is_dir():
            with tempfile.NamedTemporaryFile(dir=path, prefix=f".{owner_tag()}.", suffix=".tmp") as probe:
                probe.write(b"napari-prm")
                probe.flush()
        else:
            above = next((folder for folder in path.parents if folder.exists()), Path("."))
            os.rmdir(tempfile.mkdtemp(dir=above, prefix=f".{owner_tag()}.", suffix=".tmp"))
    except OSError as error:
        reason = error.strerror or str(error)
        raise type(error)(f"cannot write into folder {path}: {reason}") from error
    return path


def owner_is_gone(tag: str | None, modified: float, *, now: float | None = None) -> bool:
    """Whether the writer named by an owner tag can no longer finish its write.

    On this host, the process with that id and start time no longer exists. For another
    host or a missing tag, the file (last modified at ``modified``, seconds since the
    epoch) is older than `STALE_AFTER_SECONDS`.
    """
    now = time.time() if now is None else now
    if tag:
        host, pid, started = tag.rsplit("-", 2)
        if host == _host():
            import psutil

            try:
                return int(psutil.Process(int(pid)).create_time()) != int(started)
            except psutil.Error:  # no such process (or not ours to inspect: gone for us)
                return True
    return now - modified > STALE_AFTER_SECONDS


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make the renames in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows: folders cannot be opened, and renames need no folder sync
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def replace_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.replace(source, target)``, tried again for a few seconds while it is refused.

    On Windows a file that another process holds open cannot be replaced, and a file just
    written may be held for a moment by a virus scanner or the search indexer: the rename
    then fails with ``PermissionError`` (``WinError 5`` or ``32``) although it would work a
    moment later. Other errors, and a refusal elsewhere (on Linux and macOS a
    ``PermissionError`` is the folder's or the file's permissions, which no wait changes),
    are raised at once.

    Raises
    ------
    PermissionError
        Refused (on Windows still after `REPLACE_RETRY_DELAYS`): ``"cannot replace <target>:
        <reason>"``, on Windows with a hint that a program holding it open (Excel, an image
        viewer) must close it first. ``source`` is left where it was.
    """
    delays = REPLACE_RETRY_DELAYS if windows_rules() else ()
    for delay in (*delays, None):
        try:
            os.replace(source, target)
            return
        except PermissionError as error:
            if delay is None:
                hint = ("; another program may hold it open (Excel, an image viewer, another napari): "
                        "close it there and try again") if windows_rules() else ""
                raise PermissionError(f"cannot replace {target}: {error.strerror or error}{hint}") from error
            time.sleep(delay)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed `atomic_write` calls left in ``folder``.

    Only files named like `atomic_write`'s temporaries (``.<name>.~<owner>~<random>.tmp<suffix>``)
    whose writer is gone (`owner_is_gone`) are removed; a live writer's are kept.

    Parameters
    ----------
    folder : path-like
        The folder to clean (its subfolders are not looked into); a missing folder removes nothing.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            modified = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:  # its writer renamed it meanwhile
            continue
        if owner_is_gone(match["owner"], modified):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _name_head(name: str, limit: int = 120) -> str:
    """``name``, cut to at most ``limit`` bytes of UTF-8: a temporary's name adds about 50
    characters to its target's, and file systems take 255 (bytes on Linux, UTF-16 units
    on Windows), so a long file name could be written but not through a temporary."""
    encoded = name.encode("utf-8", "surrogateescape")
    return name if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore")


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
    POSIX and Windows within one file system; tried again for a few seconds while Windows
    refuses it, `replace_file`). A process killed inside the block leaves
    its temporary file behind; `remove_stale_temporaries` removes it later.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{_name_head(path.name)}.~{owner_tag()}~",
                                         suffix=f".tmp{path.suffix}")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, _FILE_MODE)
        replace_file(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_writes(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                  overwrite: bool = True) -> Iterator[list[Path]]:
    """`atomic_write` for several files at once: all are replaced, or none, on an exception.

    Yields one temporary path per target; the targets are replaced only after the whole
    block succeeded, so an export that fails on its third file leaves the previous
    export's files all as they were. With ``overwrite=False``, ``FileExistsError`` names
    every existing target before anything is written.

    The files are renamed one after the other: a process *killed* between two renames
    leaves some files new and some old. Where that matters (one image's outputs), use
    `napari_prm.io.fileset.write_file_set`, which switches a set in one step.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        The files to write, in order; one temporary path is yielded for each (one path is one
        file: a list of one temporary path is yielded).
    overwrite : bool
        If False and any target exists, raise ``FileExistsError`` before writing anything.
    """
    paths = [Path(p) for p in path_list(paths)]  # a str was written as one file per character
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"not overwriting existing {', '.join(existing)}; "
                              "pass overwrite=True to replace")
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_write(p)) for p in paths]
