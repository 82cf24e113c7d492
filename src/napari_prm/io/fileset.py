"""File sets: the outputs of one image, switched from old to new in one step.

``napari-prm predict`` writes four or five files per image (``<stem>_labels.tif``,
``<stem>_instances.json``, ``<stem>_instances.csv``, ``<stem>_peaks.csv``, optionally
``<stem>_prms.npy``). A run killed while it replaces them must not leave new PRMs beside
old labels. No file system renames several files at once, so the switch is made by one
file, the manifest ``<stem>.manifest.json``, written last:

1. **stage**: every file is written under its final name into a private folder
   ``.napari-prm-staging/<owner>/<stem>.<random>/`` inside the output folder (so on the
   same file system), and flushed to disk;
2. **commit**: the manifest, listing the files (name, size, SHA-256), the files the new set
   removes, and the staging folder, is written to a temporary file, flushed, and renamed
   over the previous manifest: one atomic rename;
3. **finish**: the staged files are renamed onto their final names, the files the new set
   replaces without a successor (a ``<stem>_prms.npy`` of an earlier run that saved PRMs)
   are removed, and the staging folder is deleted.

A process killed before the commit leaves the previous files and manifest untouched; its
staging folder is a leftover, removed by the next run (`recover_file_sets`: the owner
process is gone). Killed after the commit, the manifest names a staging folder that
still exists: the switch is decided, and `recover_file_sets` finishes step 3. Every
napari-prm writer, ``napari-prm predict`` before it starts, resume checks and the reader
plugin run that recovery, so through napari-prm an image's outputs are always all old
or all new. Files on disk read by other programs can be mixed only from a kill during
step 3 until the next napari-prm run in that folder.

One run writes into an output folder at a time (several worker processes of one run, each
writing other stems, are fine). Writers are told apart by host name, process id and
process start time; machines sharing a host name (some containers) are taken for one.

Why not a folder per image, renamed in one step? It would change the flat layout that
users, scripts and the reader rely on (``*_labels.tif`` side by side), and replacing an
existing folder is not one atomic step either: ``rename`` replaces only an empty folder
(except with Linux's ``renameat2(RENAME_EXCHANGE)``), so the old folder would first have
to be moved away, leaving a moment with no outputs at all.

The manifest is plain JSON: ``{"format": "napari-prm-file-set", "version": 1, "stem",
"files": {kind: {"name", "size", "sha256"}}, "removes": [...], "staging": "...",
"info": {...}}``; ``info`` holds what the writer adds (counts, the image's name, the
settings). Entries of the previous manifest that the new set neither rewrites nor
removes are carried over, so exporting only a corrected label image keeps the other
files of the image listed.

**Edited outputs are kept.** A file the new set replaces or removes whose content is no
longer what the previous manifest records (its size or SHA-256 differs: corrected by hand,
saved over from napari or another program) is copied, before the commit, to
``<name>.edited-<n><suffix>`` beside it (``x_labels.tif`` -> ``x_labels.edited-1.tif``,
`kept_name`), ``n`` one more than the highest of the set's kept copies, so that no earlier
kept copy is replaced and the copies of one write share their number. Kept copies are no
outputs: no manifest lists them, no later write replaces them, and the readers of outputs
(``*_labels.tif``) do not take them; `listed_files` names them, so that they are not taken
for images either. The writer reports each (`KeptEdit`). Files that match the manifest, or
that it does not list, are replaced as before. A writer that recomputes outputs
(``keep_exported=True``: ``napari-prm predict``'s) keeps the files an export wrote too (the
previous manifest's ``info["exported"]``: corrected instances exported from napari over the
outputs), though they match the manifest that export wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import (
    _FILE_MODE,
    atomic_write,
    fsync_folder,
    owner_is_gone,
    owner_tag,
    remove_stale_temporaries,
    replace_file,
)

__all__ = ["FileEntry", "FileSet", "Recovery", "KeptEdit", "MANIFEST_SUFFIX", "STAGING_FOLDER", "KEPT_EDIT",
           "manifest_path", "read_file_set", "write_file_set", "recover_file_sets", "listed_files", "kept_name",
           "exported_files"]

MANIFEST_SUFFIX = ".manifest.json"
STAGING_FOLDER = ".napari-prm-staging"
MANIFEST_FORMAT = "napari-prm-file-set"
MANIFEST_VERSION = 1
_OWNER_TAG = re.compile(r"^[A-Za-z0-9_]+-\d+-\d+$")
#: A kept copy of an edited output (`kept_name`): ``<head>.edited-<n><suffix>``.
_KEPT_NAME = re.compile(r"^(?P<head>.+)\.edited-(?P<number>[1-9][0-9]*)(?P<suffix>\.[^.]*)?$")
#: How the message of a `KeptEdit` starts.
KEPT_EDIT = "warning: "

#: Tests set this to a function called with the name of each step of a write (``"staged
#: <name>"``, ``"manifest written"``, ``"committed"``, ``"moved <name>"``, ``"removed
#: <name>"``, ``"finished"``) to kill the process exactly there.
_step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


@dataclass(frozen=True)
class FileEntry:
    """One file of a set: its name in the folder, size in bytes and SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


@dataclass
class FileSet:
    """A committed set of files, as its manifest describes it.

    Attributes
    ----------
    folder : Path
    stem : str
    files : dict of str to FileEntry
        By kind (``"tiff"``, ``"coco"``, ``"csv"``, ``"peaks"``, ``"prms"``, ...).
    removes : list of str
        Names the set removed when it replaced the previous one.
    staging : str or None
        The staging folder, relative to ``folder``; while it exists the switch is not
        finished (see the module docstring).
    info : dict
        What the writer recorded (counts, image name, settings).
    """

    folder: Path
    stem: str
    files: dict[str, FileEntry]
    removes: list[str] = field(default_factory=list)
    staging: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def paths(self) -> dict[str, Path]:
        """The files by kind, as paths."""
        return {kind: self.folder / entry.name for kind, entry in self.files.items()}

    @property
    def pending(self) -> bool:
        """Committed but not yet moved into place (a writer was killed, or is at work)."""
        return self.staging is not None and (self.folder / self.staging).is_dir()

    def missing(self) -> list[str]:
        """Names of the listed files that do not exist."""
        return [entry.name for entry in self.files.values() if not (self.folder / entry.name).is_file()]

    def verify(self, names: Collection[str] | None = None) -> list[str]:
        """Names of the listed files (of ``names`` only, when given: the others are not read) that
        are missing or differ from what was written.

        Parameters
        ----------
        names : collection of str, optional
            File names to check; None checks every listed file.
        """
        return [entry.name for entry in self.files.values()
                if (names is None or entry.name in names)
                and (not (self.folder / entry.name).is_file() or _sha256(self.folder / entry.name) != entry.sha256)]


@dataclass
class Recovery:
    """What `recover_file_sets` did: stems whose switch it finished, leftovers it removed."""

    finished: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class KeptEdit:
    """An output that was changed after napari-prm wrote it, kept before a write replaced it.

    Attributes
    ----------
    original : Path
        The output (now the new one).
    kept : Path
        The copy of the changed file, beside it (`kept_name`).
    manifest : Path
        The manifest whose record of ``original`` it no longer matched, or that says an export
        wrote it.
    exported : bool
        Kept because an export wrote it (corrected instances exported from napari), not because it
        changed after its manifest was written.
    """

    original: Path
    kept: Path
    manifest: Path
    exported: bool = False

    def __str__(self) -> str:
        why = ("holds instances exported over napari-prm's output (as the plugin's Export of corrected instances "
               f"writes them; {self.manifest.name} says so)" if self.exported else
               f"was changed after napari-prm wrote it (it is not what {self.manifest.name} records)")
        return (f"{KEPT_EDIT}{self.original} {why}: the {'exported' if self.exported else 'changed'} file is kept "
                f"as {self.kept}, and {self.original.name} now holds the new output")


def kept_name(name: str, number: int) -> str:
    """The name of kept copy ``number`` of the edited output ``name``: ``<head>.edited-<number><suffix>``.

    Parameters
    ----------
    name : str
        An output's file name (``x_labels.tif``).
    number : int
        1 or more.

    Examples
    --------
    >>> kept_name("x_labels.tif", 1)
    'x_labels.edited-1.tif'
    >>> kept_name("x_prms.npy", 3)
    'x_prms.edited-3.npy'
    """
    suffix = Path(name).suffix
    return f"{name[: len(name) - len(suffix)]}.edited-{int(number)}{suffix}"


def _kept_copies(folder: Path, originals: Collection[str]) -> dict[str, list[int]]:
    """The kept copies in ``folder`` of the files ``originals``, as their numbers by original."""
    found: dict[str, list[int]] = {}
    if not originals:
        return found
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return found
    for name in names:
        match = _KEPT_NAME.match(name)
        if match is not None and (original := match["head"] + (match["suffix"] or "")) in originals:
            found.setdefault(original, []).append(int(match["number"]))
    return found


def _changed(path: Path, entry: FileEntry) -> bool:
    """Whether ``path`` exists and is not the file ``entry`` records (size first, then SHA-256)."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return path.is_file() and (size != entry.size or _sha256(path) != entry.sha256)


def _keep_edited(folder: Path, previous: FileSet, replaced: Collection[str],
                 keep_exported: bool = False) -> list[KeptEdit]:
    """Copy each file of ``previous`` named in ``replaced`` whose content is no longer what the
    manifest records (with ``keep_exported``, or that an export wrote: `exported_files`) to its kept
    name (module docstring), with `atomic_write`; returns them."""
    exported = exported_files(previous) if keep_exported else set()
    edited = {}  # name -> whether its content changed (else kept as an export's), each file hashed once
    for entry in previous.files.values():
        if entry.name in replaced:
            if _changed(folder / entry.name, entry):
                edited[entry.name] = True
            elif entry.name in exported and (folder / entry.name).is_file():
                edited[entry.name] = False
    if not edited:
        return []
    numbers = _kept_copies(folder, {*replaced, *(entry.name for entry in previous.files.values())})
    number = 1 + max((n for found in numbers.values() for n in found), default=0)
    kept = []
    for name, changed in edited.items():
        target = folder / kept_name(name, number)
        with atomic_write(target, overwrite=False) as temp:  # never over an earlier kept copy
            shutil.copy2(folder / name, temp)  # with the edit's modification time
        kept.append(KeptEdit(folder / name, target, manifest_path(folder, previous.stem), exported=not changed))
    return kept


def exported_files(file_set: FileSet | None) -> set[str]:
    """The names of ``file_set``'s files that an export wrote (its manifest's ``info["exported"]``,
    as `napari_prm.io.export_instances` records them), which it still lists; empty for None."""
    if file_set is None:
        return set()
    named = file_set.info.get("exported")
    listed = {entry.name for entry in file_set.files.values()}
    return {str(name) for name in named if str(name) in listed} if isinstance(named, list) else set()


def manifest_path(folder: str | os.PathLike, stem: str) -> Path:
    """``<folder>/<stem>.manifest.json``."""
    return Path(folder) / f"{stem}{MANIFEST_SUFFIX}"


def read_file_set(folder: str | os.PathLike, stem: str) -> FileSet | None:
    """The set described by ``<stem>.manifest.json`` in ``folder``; None when there is none.

    Parameters
    ----------
    folder : path-like
        The folder that holds the set.
    stem : str
        The set's stem: its manifest is ``<stem>.manifest.json``.

    Raises
    ------
    ValueError
        Naming the manifest, when it is not a napari-prm manifest or is malformed.
    """
    folder = Path(folder)
    path = manifest_path(folder, stem)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        content = json.loads(text)
        if content.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"its format is {content.get('format')!r}, not {MANIFEST_FORMAT!r}")
        if int(content.get("version", 0)) > MANIFEST_VERSION:
            raise ValueError(f"version {content['version']} is newer than this napari-prm reads "
                             f"({MANIFEST_VERSION}); upgrade napari-prm")
        files = {str(kind): FileEntry(_plain_name(entry["name"]), int(entry["size"]), str(entry["sha256"]))
                 for kind, entry in content["files"].items()}
        staging = content.get("staging")
        return FileSet(folder, stem, files, [_plain_name(n) for n in content.get("removes", [])],
                       None if staging is None else str(staging), dict(content.get("info") or {}))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"cannot read manifest {path}: {error}") from error


def listed_files(folder: str | os.PathLike) -> set[str]:
    """Names of the files that the committed manifests in ``folder`` list (its outputs), and of
    the kept copies of those edited by hand (`kept_name`, module docstring).

    Unreadable or foreign manifests are ignored.

    Parameters
    ----------
    folder : path-like
        The folder whose ``*.manifest.json`` files are read.
    """
    folder = Path(folder)
    names: set[str] = set()
    for path in folder.glob(f"*{MANIFEST_SUFFIX}"):
        found = _read_quietly(folder, path.name[: -len(MANIFEST_SUFFIX)])
        if found is not None:
            names.update(entry.name for entry in found.files.values())
    for original, numbers in _kept_copies(folder, names).items():
        names.update(kept_name(original, number) for number in numbers)
    return names


def _plain_name(name) -> str:
    name = str(name)
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name")
    return name


def _read_quietly(folder: Path, stem: str) -> FileSet | None:
    """`read_file_set`, with a broken manifest taken as none (it is then replaced)."""
    try:
        return read_file_set(folder, stem)
    except ValueError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _seal(path: Path) -> FileEntry:
    """Flush a staged file to disk, give it the usual file mode, and describe it."""
    digest = hashlib.sha256()
    with open(path, "rb+") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        os.fsync(handle.fileno())
        size = handle.tell()
    os.chmod(path, _FILE_MODE)
    return FileEntry(path.name, size, digest.hexdigest())


def _remove_empty(folder: Path, owner_folder: Path) -> None:
    for empty in (owner_folder, folder / STAGING_FOLDER):
        try:
            empty.rmdir()
        except OSError:  # not empty, already gone, or in use
            pass


def _make_staging(folder: Path, stem: str) -> Path:
    owner_folder = folder / STAGING_FOLDER / owner_tag()
    for _ in range(5):  # another thread may remove the (empty) owner folder meanwhile
        owner_folder.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=f"{stem}.", dir=owner_folder))
        except FileNotFoundError:
            continue
    raise OSError(f"cannot create a staging folder in {owner_folder}")


@contextmanager
def write_file_set(folder: str | os.PathLike, stem: str, names: Mapping[str, str], *,
                   overwrite: bool = False, removes: Iterable[str] = (),
                   info: Mapping | None = None, kept: list | None = None,
                   keep_exported: bool = False) -> Iterator[dict[str, Path]]:
    """Write files that replace the previous ones of ``stem`` together, in one step.

    Parameters
    ----------
    folder : path-like
        Existing folder of the files.
    stem : str
        Names the manifest ``<stem>.manifest.json``.
    names : mapping of str to str
        File name (in ``folder``) by kind.
    overwrite : bool
        If False and any of the files exists, raise ``FileExistsError`` naming them
        before anything is written.
    removes : iterable of str
        Names of files the new set replaces without a successor; they are removed in the
        same switch (when they exist).
    info : mapping, optional
        JSON-serialisable facts stored in the manifest (values that are not become
        their ``repr``).
    kept : list, optional
        Receives a `KeptEdit` per file the previous manifest lists that the new set replaces
        or removes and whose content is no longer what that manifest records (edited by
        hand): it was copied to `kept_name` beside it before the switch (module docstring).
        Without a list each is reported with `warnings.warn` once the set is committed.
    keep_exported : bool
        Keep, as edits, the files the previous set's export wrote too (`exported_files`): for a
        writer that recomputes outputs over which corrections may have been exported.

    Yields
    ------
    dict of str to Path
        A staged path per kind, with the final file name. Write every one of them, then
        leave the block: the set is committed and moved into place (module docstring).
        On an exception inside the block nothing in ``folder`` changes.
    """
    folder = Path(folder)
    _plain_name(f"{stem}{MANIFEST_SUFFIX}")  # a stem naming another folder is refused
    names = {str(kind): _plain_name(name) for kind, name in names.items()}
    reserved = {manifest_path(folder, stem).name, STAGING_FOLDER}
    if len(set(names.values())) != len(names) or reserved & set(names.values()):
        raise ValueError(f"file names of a set must be distinct and not {sorted(reserved)}; got {names}")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {stem}'s files: folder {folder} does not exist")
    recover_file_sets(folder, stem=stem)
    if not overwrite:
        existing = [str(folder / name) for name in names.values() if (folder / name).exists()]
        if existing:
            raise FileExistsError(f"not overwriting existing {', '.join(existing)}; pass overwrite=True to replace")
    removes = sorted({_plain_name(name) for name in removes} - set(names.values()))
    staging = _make_staging(folder, stem)
    committed = False
    try:
        yield {kind: staging / name for kind, name in names.items()}
        files = {}
        for kind, name in names.items():
            if not (staging / name).is_file():
                raise FileNotFoundError(f"nothing was written for {name} ({kind}) of {stem}")
            files[kind] = _seal(staging / name)
            _step(f"staged {name}")
        fsync_folder(staging)
        previous = _read_quietly(folder, stem)
        # hand edits of the files replaced are copied aside first: no one's corrections are lost
        edits = [] if previous is None else _keep_edited(folder, previous, {*names.values(), *removes},
                                                         keep_exported)
        if previous is not None:  # files the new set neither rewrites nor removes stay listed
            for kind, entry in previous.files.items():
                if (kind not in files and entry.name not in names.values() and entry.name not in removes
                        and (folder / entry.name).is_file()):
                    files[kind] = entry
        content = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "stem": stem,
            "files": {kind: {"name": e.name, "size": e.size, "sha256": e.sha256} for kind, e in files.items()},
            "removes": removes, "staging": staging.relative_to(folder).as_posix(),
            "info": json.loads(json.dumps(dict(info or {}), default=repr)),
        }
        with atomic_write(manifest_path(folder, stem)) as temp:
            temp.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
            _step("manifest written")
        committed = True
        fsync_folder(folder)
        _step("committed")
    finally:
        if not committed:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_empty(folder, staging.parent)
    _finish(read_file_set(folder, stem))
    if kept is not None:
        kept.extend(edits)
    else:
        for edit in edits:  # a UserWarning: its category says "warning" already
            warnings.warn(str(edit).removeprefix(KEPT_EDIT), stacklevel=3)


def _finish(file_set: FileSet | None) -> bool:
    """Step 3 of a committed switch (idempotent); False when there was nothing to do."""
    if file_set is None or not file_set.pending:
        return False
    folder, staging = file_set.folder, file_set.folder / file_set.staging
    for entry in file_set.files.values():
        try:
            replace_file(staging / entry.name, folder / entry.name)
        except FileNotFoundError:  # moved before a kill, by another recovery, or carried over
            continue
        _step(f"moved {entry.name}")
    for name in file_set.removes:
        (folder / name).unlink(missing_ok=True)
        _step(f"removed {name}")
    fsync_folder(folder)
    shutil.rmtree(staging, ignore_errors=True)
    _remove_empty(folder, staging.parent)
    _step("finished")
    return True


def recover_file_sets(folder: str | os.PathLike, *, stem: str | None = None) -> Recovery:
    """Finish the switches that killed writers committed, and remove what they left.

    Parameters
    ----------
    folder : path-like
        An output folder.
    stem : str, optional
        Only this stem's set (what each writer does before it writes). Without it, every
        set of the folder, and the stale temporary files of `atomic_write` in it too.

    Returns
    -------
    Recovery

    Notes
    -----
    A staging folder that its manifest names is finished (moved into place). Any other
    staging folder is a write that never committed: it is removed when its writer (the
    owner in its path) is gone, and kept while that writer may still be at work.
    """
    folder = Path(folder)
    recovery = Recovery()
    root = folder / STAGING_FOLDER
    try:
        owners = [entry for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        owners = []
    for owner in owners:
        try:
            stagings = [entry for entry in os.scandir(owner.path) if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        for staging in stagings:
            staged_stem = staging.name.rsplit(".", 1)[0]
            if stem is not None and staged_stem != stem:
                continue
            file_set = _read_quietly(folder, staged_stem)
            relative = Path(staging.path).relative_to(folder).as_posix()
            if file_set is not None and file_set.staging == relative:
                if _finish(file_set):
                    recovery.finished.append(staged_stem)
                continue
            try:
                modified = staging.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            tag = owner.name if _OWNER_TAG.match(owner.name) else None
            if owner_is_gone(tag, modified):
                shutil.rmtree(staging.path, ignore_errors=True)
                recovery.removed.append(Path(staging.path))
        _remove_empty(folder, Path(owner.path))
    try:  # a writer killed between creating the root and its own folder in it
        root.rmdir()
    except OSError:
        pass
    if stem is None:
        recovery.removed.extend(remove_stale_temporaries(folder))
    return recovery
