"""Batch prediction: many images, in this process or on a dask.distributed cluster.

`predict_many` runs `napari_prm.predict` on every image and writes each image's outputs
with the all-or-nothing writer (`napari_prm.io.write_prediction`), in one of two ways:

- ``client=None``: one image after the other in this process (``napari-prm predict``
  without ``--workers``; the napari widget with 0 workers);
- a `distributed.Client`: one task per image on the cluster's workers (``--workers N``
  starts a `distributed.LocalCluster`, see `start_local_cluster`; ``--scheduler ADDRESS``
  connects to a running one).

Both call the same per-image function, `predict_image`. On a cluster:

- the model travels once: a built-in model by name, a checkpoint as its bytes in a
  worker plugin (every worker gets them once, also workers that join or restart later),
  identified by their SHA-256; each worker process loads the model once and keeps it
  (`model_for`), so no task carries more than a small `ModelSpec`;
- images are read, and outputs written, by the workers (they must see the same paths);
- at most ``max_in_flight`` tasks (default: twice the workers' threads) are submitted at
  a time, and only small `ImageResult` records come back unless ``gather=True``.

A run is resumable: images whose outputs are complete (`napari_prm.io.complete_prediction`)
are skipped unless ``overwrite=True``. Failures are isolated: an image whose prediction
raises, or whose worker dies, is tried ``retries`` more times (default once), then
reported, and the batch goes on; an input error (a ``ValueError`` naming the file: it cannot
be read, or its axes are not supported) is reported at once, as trying again cannot mend it.
``<out>/summary.csv`` lists every image with its status
and is rewritten atomically as results arrive (at most once a second, and at the end). It
is the folder's record, not only the run's: the rows of images an earlier run put there
are kept (in their place), those of the images this run has replace theirs, and rows whose
outputs are gone (deleted, or their stem now another image's), or that have none (failed,
cancelled) and whose image file is gone, are dropped.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import _validate as check
from ._text import first_names
from .io import IMAGE_SUFFIXES
from .io.atomic import atomic_write, owner_is_gone, owner_tag
from .io.fileset import _sha256, manifest_path
from .io.images import quiet_large_image_warning
from .io.paths import image_stem, sorted_paths

__all__ = ["ImageResult", "BatchResult", "ModelSpec", "PlaneTally", "FolderInUse", "predict_many", "predict_image",
           "LeftOut", "collect_images", "image_names", "output_stems", "renamed_notes", "output_name", "output_place",
           "output_states", "written_since", "record_written", "start_local_cluster", "label_stack", "label_shapes",
           "label_planes", "image_stack", "SUMMARY_COLUMNS"]

#: Columns of ``summary.csv``.
SUMMARY_COLUMNS = ("image", "status", "peaks", "instances", "seconds", "error", "attempts", "stem", "planes")
#: Statuses in ``summary.csv``: outputs written by this run, complete outputs found (or left
#: as they were), the image failed every attempt, the run ended first (cancelled, interrupted by
#: Ctrl-C or SIGTERM, or stopped by an error), not done yet (while the run goes on; left so only
#: by a run killed outright, SIGKILL or out of memory).
STATUSES = ("written", "skipped", "failed", "cancelled", "pending")
SUMMARY_NAME = "summary.csv"
#: How a message of `collect_images` that is a note, not a problem, starts.
NOTE = "note: "
#: How the reason of a skip starts when complete outputs lack the PRMs asked for.
WITHOUT_PRMS = "outputs are complete but hold no PRMs"
#: Start of the reason of an image skipped because its outputs come from another model or other settings.
OTHER_RUN = "outputs were made with"
#: Why complete outputs are skipped whose image file changed since they were written (`_image_changed`).
IMAGE_CHANGED = "the image changed since its outputs were written"
ProgressCallback = Callable[["ImageResult", int, int], None]
#: While a run in this process predicts an image, ``<out>/<RUNNING_NAME>`` names the image and
#: the process; a run killed there (by the kernel, out of memory) leaves it behind.
RUNNING_NAME = ".napari-prm-running.json"
#: While a run writes into a folder it holds a lock on ``<out>/<LOCK_NAME>`` (`_folder_lock`).
LOCK_NAME = ".napari-prm-lock"
#: The note of an image that a killed run was predicting.
KILLED_ON = ("the previous run in this folder was killed while predicting this image (out of memory?), "
             "so it ran after the others")


@dataclass(eq=False)
class ImageResult:
    """What happened to one image of a batch.

    Attributes
    ----------
    image : str
        The image file.
    stem : str
        Stem of its output files in the output folder.
    status : {"written", "skipped", "failed", "cancelled", "pending"}
        ``"pending"`` while the run has not done it yet; ``"cancelled"`` when the run ended first
        (a cancel, Ctrl-C, an error), see `STATUSES`.
    peaks, instances : int or None
        Counts of the written (or found) outputs (over all planes of a stack).
    seconds : float or None
        Time spent on the image (reading, prediction, writing) where it ran.
    error : str
        Why it failed or was skipped.
    attempts : int
        Times it was run (0 when skipped).
    shape : (int, int) or None
        ``(H, W)`` of the image (of each plane of a stack) and of its label image.
    planes : int or None
        The image's planes: 1 for a 2-D image, N for a stack of z-planes or time points
        (`napari_prm.io.read_stack`), predicted one by one; None where unknown (it failed
        before it was read).
    prediction : Prediction, list of Prediction, or None
        Only with ``predict_many(..., gather=True)``: a stack's is a list, one per plane.
    details : str
        The traceback of the last failure (not in ``summary.csv``).
    retriable : bool
        Whether trying a failed image again may help: False for an input error (a
        ``ValueError``: the file or its content), which is reported after one attempt.
    notes : list of str
        What the prediction noted (`Prediction.notes`, e.g. peaks left out by
        ``max_peaks``), and, first, each output corrected by hand that the write kept beside
        the new one (`napari_prm.io.KeptEdit`, starting with ``"warning: "``); not in ``summary.csv``.
    """

    image: str
    stem: str
    status: str = "pending"
    peaks: int | None = None
    instances: int | None = None
    seconds: float | None = None
    error: str = ""
    attempts: int = 0
    shape: tuple[int, int] | None = None
    planes: int | None = None
    prediction: Any = None
    details: str = ""
    notes: list[str] = field(default_factory=list)
    retriable: bool = field(default=True, repr=False)

    def row(self) -> dict:
        """The image's row of ``summary.csv``."""
        return {"image": self.image, "status": self.status,
                "peaks": "" if self.peaks is None else self.peaks,
                "instances": "" if self.instances is None else self.instances,
                "seconds": "" if self.seconds is None else f"{self.seconds:.3f}",
                "error": self.error, "attempts": self.attempts, "stem": self.stem,
                "planes": "" if self.planes is None else self.planes}


@dataclass(eq=False)
class BatchResult:
    """The images of a batch, in input order, and where their outputs went.

    Attributes
    ----------
    results : list of ImageResult
        One per image, in input order (``written``, ``skipped`` and ``failed`` select them by
        status).
    out : Path
        The output folder.
    summary : Path
        ``summary.csv`` in it.
    prms_format : {None, 'npy', 'tiff'}
        Whether, and how, the PRMs were saved (`predict_many`'s ``prms_format``).
    """

    results: list[ImageResult]
    out: Path
    summary: Path
    prms_format: str | None = None

    def __repr__(self) -> str:
        # the images counted by status: the default repr wrote out every ImageResult (a
        # failure's traceback included) of a batch of thousands
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        statuses = ", ".join(f"{count} {status}" for status, count in counts.items())
        return (f"BatchResult(results=<{len(self.results)} images{': ' + statuses if statuses else ''}>, "
                f"out={self.out!r}, summary={self.summary!r}, prms_format={self.prms_format!r})")

    def with_status(self, status: str) -> list[ImageResult]:
        """The results whose ``status`` is ``status`` (``"written"``, ``"skipped"``, ``"failed"``...).

        Parameters
        ----------
        status : str
            The status to keep.

        Returns
        -------
        list of ImageResult
            In the order of ``results``.
        """
        return [result for result in self.results if result.status == status]

    @property
    def written(self) -> list[ImageResult]:
        """The results of the images whose outputs were written."""
        return self.with_status("written")

    @property
    def skipped(self) -> list[ImageResult]:
        """The results of the images whose complete outputs were left as they were."""
        return self.with_status("skipped")

    @property
    def failed(self) -> list[ImageResult]:
        """The results of the images that failed."""
        return self.with_status("failed")

    def skip_reasons(self) -> dict[str, list[ImageResult]]:
        """The skipped images grouped by why, in order of first appearance.

        Returns
        -------
        dict
            Reason -> the skipped results that give it: ``"outputs exist"`` (complete outputs
            of this run's model and settings), or the reason of `ImageResult.error` less its
            advice to overwrite and its per-image details (`IMAGE_CHANGED`'s sizes, the files
            of an incomplete set), so that images skipped for one reason share one group.
        """
        groups: dict[str, list[ImageResult]] = {}
        for result in self.skipped:
            reason = result.error.split("; use overwrite")[0] or "outputs exist"
            if reason.startswith(IMAGE_CHANGED):
                reason = IMAGE_CHANGED
            elif reason.startswith("outputs exist ("):  # the files of an incomplete set
                reason = re.sub(r"^outputs exist \([^)]*\)", "outputs exist", reason)
            groups.setdefault(reason, []).append(result)
        return groups

    def skip_summary(self, name: Callable[[str], str] | None = None, *, shown: int = 5) -> str:
        """Why images were skipped, a group per reason (`skip_reasons`) naming (up to ``shown`` of) its
        images: ``"1 skipped: outputs exist (a.png); 1 skipped: the image changed since its outputs
        were written (b.tif)"``; '' when none was. The command line and the folder panel end it with
        how their user replaces the outputs.

        Parameters
        ----------
        name : callable, optional
            ``name(image)``: how an image is named (default: `image_names` of the run's images:
            its file name, or where two of the run's images share one, e.g. ``A1/cat.png`` and
            ``A2/cat.png`` of a ``--recursive`` run, its path in their common folder).
        shown : int
            The images named per reason; ``", ... (N more)"`` counts the others (`first_names`).
        """
        if name is None:
            name = image_names([r.image for r in self.results]).__getitem__
        return "; ".join(f"{len(skipped)} skipped: {reason} ({first_names((name(r.image) for r in skipped), shown)})"
                         for reason, skipped in self.skip_reasons().items())

    def labels_path(self, result: ImageResult) -> Path:
        """Where the label image of ``result``'s image is (or would be).

        Parameters
        ----------
        result : ImageResult
            One of ``results``.
        """
        from .io import prediction_paths

        return prediction_paths(*output_place(self.out, result.stem))["tiff"]

    def with_outputs(self) -> list[ImageResult]:
        """The images that have outputs (written or skipped, label image present), in order."""
        return [r for r in self.results if r.status in ("written", "skipped") and self.labels_path(r).is_file()]

    def label_paths(self) -> list[Path]:
        """The label images of `with_outputs`, in order."""
        return [self.labels_path(r) for r in self.with_outputs()]


class LeftOut(str):
    """A message of `collect_images` about an input it left out (not a note): ``"<input>: <reason>"``,
    a str, that also holds the input and the reason apart, so that `predict_many` (``left_out``)
    records the input as failed in ``summary.csv`` and its result.

    Parameters
    ----------
    input : path-like
        The input as named: a file that does not exist, a link to an image that is gone, a folder
        that cannot be listed or holds no images.
    reason : str
        Why it is left out.

    Attributes
    ----------
    input : str
    reason : str
    """

    input: str
    reason: str

    def __new__(cls, input: str | os.PathLike, reason: str) -> LeftOut:
        message = super().__new__(cls, f"{input}: {reason}")
        message.input, message.reason = str(input), reason
        return message

    def __init__(self, input: str | os.PathLike, reason: str) -> None:  # made by __new__ (a str is immutable)
        super().__init__()

    def __getnewargs__(self) -> tuple[str, str]:  # pickled (a cluster, a Qt signal) as made
        return self.input, self.reason


def image_names(images: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, str]:
    """How messages name a run's images: by file name, or, when two of them share a file
    name, by their paths in the images' common folder.

    Parameters
    ----------
    images : path-like or sequence of path-like
        The run's images (all of them: a name is told apart from those of images not named
        beside it too); one path is one image.

    Returns
    -------
    dict
        ``str(image)`` -> its name: ``plate/A1/cat.png`` and ``plate/A2/cat.png`` ->
        ``A1/cat.png`` and ``A2/cat.png``; ``a/cat.png`` and ``b/dog.png`` -> ``cat.png`` and
        ``dog.png``. Paths on different drives (no common folder) are named in full.
    """
    images = [str(image) for image in check.path_list(images)]
    names = {image: Path(image).name for image in images}
    if len(set(names.values())) == len(names):
        return names
    absolute = {image: os.path.abspath(image) for image in images}
    try:
        common = os.path.commonpath([os.path.dirname(path) for path in absolute.values()])
    except ValueError:  # Windows: images on different drives
        return {image: Path(path).as_posix() for image, path in absolute.items()}
    return {image: Path(os.path.relpath(path, common)).as_posix() for image, path in absolute.items()}


# --------------------------------------------------------------------------- inputs
def collect_images(inputs: str | os.PathLike | Sequence[str | os.PathLike], *, recursive: bool = False,
                   search_hint: str | None = None) -> tuple[list[Path], list[str]]:
    """Image files named by ``inputs`` (files, or folders, sorted).

    Parameters
    ----------
    inputs : path-like or sequence of path-like
        Image files and folders; one path is one input (``collect_images("images/")``).
    recursive : bool
        Search the folders' sub-folders too, at any depth (hidden ones, whose names start
        with ``.``, are not searched). Without it only a folder's own files are taken, and
        a note (in the messages) names the sub-folders that hold images. `output_stems`
        with the folders as ``roots`` names the outputs after each image's path in its
        folder, so ``cam1/0001.png`` and ``cam2/0001.png`` keep apart.
    search_hint : str, optional
        How the caller's user asks for sub-folders, ending the messages about those left
        out (default: the command line's ``--recursive`` and inputs).

    Returns
    -------
    images : list of Path
        Absolute, as found (an image in a linked sub-folder keeps its path through the link,
        which `output_stems` names it by), without duplicates (files that resolve to the
        same file), in order.
    messages : list of str
        One per input that does not exist or is a folder without images, per folder (the
        input's or a sub-folder searched) that cannot be listed (no permission, a share gone),
        whose images are left out, per link named as an image whose target does not exist (each
        of these a `LeftOut`, which ``predict_many(..., left_out=...)`` records as failed), and
        per folder whose sub-folders hold images that were not searched (that one starts with
        ``NOTE``).

    Notes
    -----
    A folder's files that a napari-prm manifest there lists are outputs of an earlier
    run (label TIFFs, PRM stacks), not images: they are left out, so a run whose
    ``out`` is its input folder, or inside it, can be run again.
    """
    images, problems = [], []
    for item in map(Path, check.path_list(inputs)):  # one folder or file: a str was read as its characters' paths
        if item.is_dir():
            unlisted: list[OSError] = []
            broken: list[Path] = []
            found = _images_in(item, recursive=recursive, unlisted=unlisted, broken=broken)
            # a link to an image that is gone (moved, a share not mounted) is a missing image, not none
            problems.extend(LeftOut(link, f"a link to {os.readlink(link)}, which does not exist; left out")
                            for link in broken)
            # a folder that cannot be listed (no permission, a share gone) is named: its images are not
            # taken silently for none
            problems.extend(LeftOut(error.filename or item, f"cannot list its files ({_os_reason(error)}); "
                                    "its images are left out") for error in unlisted)
            if unlisted and os.path.abspath(unlisted[0].filename or item) == os.path.abspath(item):
                continue  # the folder itself: said above, not "no images"
            folders = [] if recursive else sorted(
                p for p in item.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not found:
                inside = (f"; its {len(folders)} sub-folder(s) ({first_names((f.name for f in folders), shown=3)}) "
                          "are not searched: "
                          + (search_hint or "pass --recursive, or pass them as inputs") if folders else "")
                where = " in this folder" + (" or its sub-folders" if recursive else "")
                problems.append(LeftOut(item, f"no images ({', '.join(IMAGE_SUFFIXES)}){where}{inside}"))
            else:
                holding = [folder for folder in folders if _holds_images(folder)]
                if holding:
                    problems.append(f"{NOTE}{item}: the images in its {len(holding)} sub-folder(s) "
                                    f"({first_names((f.name for f in holding), shown=3)}) are left out: "
                                    + (search_hint or "pass --recursive to search sub-folders, or pass "
                                                      "them as inputs too"))
            images.extend(found)
        elif item.is_file():
            images.append(item)
        else:
            problems.append(LeftOut(item, "no such file or folder"))
    unique = {}
    for image in images:
        unique.setdefault(image.resolve(), Path(os.path.abspath(image)))
    return list(unique.values()), problems


def _images_in(folder: Path, *, recursive: bool, unlisted: list[OSError] | None = None,
               broken: list[Path] | None = None) -> list[Path]:
    """The image files of ``folder`` (and, if ``recursive``, of its visible sub-folders), sorted,
    without the outputs that napari-prm manifests list. The errors of folders that could not be
    listed (``folder`` itself, or a sub-folder) are appended to ``unlisted``, and links named as
    images whose target does not exist to ``broken``."""
    from .io import listed_files

    found, seen = [], {os.path.realpath(folder)}
    # linked sub-folders are searched (data trees are often put together from links), each
    # real folder once, so a link to a folder above does not loop
    for here, names, files in os.walk(folder, followlinks=True,
                                      onerror=None if unlisted is None else unlisted.append):
        real = {name: os.path.realpath(os.path.join(here, name)) for name in sorted(names)
                if recursive and not name.startswith(".")}
        names[:] = [name for name, path in real.items() if path not in seen]
        seen.update(real[name] for name in names)
        outputs = listed_files(here)
        named = [Path(here) / name for name in files
                 if Path(name).suffix.lower() in IMAGE_SUFFIXES and name not in outputs]
        found.extend(sorted_paths(path for path in named if path.is_file()))
        if broken is not None:
            broken.extend(sorted_paths(path for path in named if path.is_symlink() and not path.exists()))
    return found


def _os_reason(error: OSError) -> str:
    """An OS error's reason without the path the message names already (``Permission denied``)."""
    return error.strerror or str(error)


def _holds_images(folder: Path) -> bool:
    """Whether ``folder`` or a visible folder in it holds an image file that ``--recursive``
    would take (stops at the first): not the outputs napari-prm manifests list, so that an
    ``--out`` inside the input folder is not said to hold images left out."""
    from .io import listed_files

    for here, names, files in os.walk(folder):
        names[:] = [name for name in names if not name.startswith(".")]
        candidates = [name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES]
        if candidates:
            outputs = listed_files(here)
            if any(name not in outputs and (Path(here) / name).is_file() for name in candidates):
                return True
    return False


def output_stems(images: str | os.PathLike | Sequence[str | os.PathLike], *,
                 roots: str | os.PathLike | Sequence[str | os.PathLike] = (),
                 out: str | os.PathLike | None = None) -> list[str]:
    """The output stem of each image: its name, or its path in a root folder; made unique.

    Parameters
    ----------
    images : path-like or sequence of path-like
        The images; one path is one image.
    roots : path-like or sequence of path-like
        Folders given as inputs (one path is one folder): an image inside one is named by its path in the innermost
        of them, in POSIX form (``plate/A1/cat.png`` with root ``plate`` -> ``A1/cat``, with
        roots ``plate`` and ``plate/A1`` -> ``cat``), so that its outputs mirror the folder
        tree under the output folder (`output_place`). Other images are named by their file
        stem.
    out : path-like, optional
        The output folder: a stem whose outputs there (or outputs of a stem differing only
        in case) record another image (their manifest's ``image_path``) is taken, so this
        image gets the next free stem. A re-run with the images in another order, or another
        image of the same name, neither skips an image as done because another's outputs are
        there nor replaces them.

    Returns
    -------
    list of str
        One per image, distinct also when upper and lower case are taken for the same (as
        Windows and macOS do): ``a/x.png``, ``b/x.png`` and ``X.png`` given as files -> ``x``,
        ``x_2``, ``X_3`` (in the order given, after the stems taken in ``out``); a suffix skips
        the stems other images have by their own names (``a.png``, ``a.tif``, ``a_2.png`` ->
        ``a``, ``a_3``, ``a_2``) unless ``out`` holds this image's outputs under it; and unless
        ``out`` holds the image's own outputs under its stem (written on Linux before case
        was compared: ``X.png``'s ``X_*`` beside ``x.png``'s ``x_*``), which it keeps.
        An OME-TIFF ``cells.ome.tif`` is named ``cells`` (`napari_prm.io.paths.image_stem`), but
        keeps the ``cells.ome`` that earlier versions gave it when another of ``images`` has
        the plain stem in the same place (``cells.tif`` is ``cells``, whatever the order), or
        when ``out`` holds this image's outputs under it (a folder an earlier version ran): a
        resumed run finds them and skips the image, rather than writing a second set.
    """
    # as given (made absolute), then resolved: an image in a linked sub-folder of a root is
    # named by its place in the tree, not by where the link points
    images, roots = check.path_list(images), check.path_list(roots)
    roots_as_given = [Path(os.path.abspath(root)) for root in roots]
    resolved_roots = [Path(root).resolve() for root in roots]
    entries = []  # (image, the stem it wants, the stem earlier versions gave it)
    for image in images:
        image = Path(image)
        folders_between: Sequence[str] = ()
        for place, folders in ((Path(os.path.abspath(image)), roots_as_given), (image.resolve(), resolved_roots)):
            holding = [root for root in folders if place.is_relative_to(root)]
            if holding:  # the innermost: images/ images/A1/ name A1's images as before, flat
                root = max(holding, key=lambda folder: len(folder.parts))
                *folders_between, _ = place.relative_to(root).parts
                break
        parent = PurePosixPath(*(output_name(folder, suffix=False) for folder in folders_between))
        entries.append((image, parent / output_name(image.name), parent / _plain_stem(image.name)))
    # cells.tif keeps cells_*; cells.ome.tif beside it keeps the cells.ome_* of earlier versions
    plain = {str(wanted).casefold() for _, wanted, legacy in entries if wanted == legacy}
    entries = [(image, legacy if wanted != legacy and (str(wanted).casefold() in plain
                                                      or _outputs_of_this(out, str(legacy), image)) else wanted)
               for image, wanted, legacy in entries]  # and a folder an earlier version ran keeps its outputs
    # the stems the images have by their own names: a suffix never takes one (a.png, a.tif and a_2.png:
    # a.tif gets a_3, not a_2, which pushed a_2.png's outputs to a_2_2)
    natural = {str(wanted).casefold() for _, wanted in entries}
    stems, seen, seen_folded, manifests = [], set(), set(), {}
    for image, wanted in entries:
        stem, number = str(wanted), 1
        # Windows and macOS take Cat_labels.tif and cat_labels.tif for one file: stems that
        # differ only in case would share their outputs there (and in a folder copied there).
        # Outputs that an earlier version wrote for this very image under such a stem (on
        # Linux) keep it, so that a resumed run finds them instead of predicting it again
        # (outputs of this image are taken by no other: their manifest is not read again).
        while stem in seen or (not _outputs_of_this(out, stem, image)
                               if stem.casefold() in seen_folded or (number > 1 and stem.casefold() in natural)
                               else out is not None and _stem_taken(out, stem, image, manifests)):
            number += 1
            stem = str(wanted.with_name(f"{wanted.name}_{number}"))
        seen.add(stem)
        seen_folded.add(stem.casefold())
        stems.append(stem)
    return stems


def renamed_notes(images: str | os.PathLike | Sequence[str | os.PathLike], stems: str | Sequence[str],
                  out: str | os.PathLike) -> list[str]:
    """A note (starting with `NOTE`) per image whose outputs do not take its own name in ``out``.

    ``stems`` are `output_stems` of ``images``: an image's name is taken by another image of this
    run, or by the outputs of another image in ``out`` (or one differing only in case); or an
    OME-TIFF ``cells.ome.tif`` keeps the ``cells.ome_*`` an earlier version gave its outputs.
    ``napari-prm predict`` prints these notes, and *Run on a folder…* shows them.

    Parameters
    ----------
    images : path-like or sequence of path-like
        The run's images; one path is one image.
    stems : str or sequence of str
        Their output stems (`output_stems`), in the same order (one str for one image).
    out : path-like
        The output folder, named in the notes.
    """
    images = check.path_list(images)
    stems = [stems] if isinstance(stems, str) else list(stems)
    taken = {stem.casefold() for stem in stems}
    names = image_names(images)  # the other images, as the end of a run names them
    holders: dict[str, list[tuple[str, str]]] = {}  # a stem, case-folded -> (stem, image) of this run
    for image, stem in zip(images, stems):
        holders.setdefault(stem.casefold(), []).append((stem, str(image)))

    def holder(wanted: str, image: str) -> str:
        """Whose outputs are named ``wanted``: another image of the run (`names`), else another
        image's outputs in ``out``; '' when neither (the name is free)."""
        others = [(stem, other) for stem, other in holders.get(wanted.casefold(), []) if other != image]
        if others:
            stem, other = others[0]
            alike = "" if stem == wanted else " (upper and lower case alike, as Windows and macOS take names)"
            return f"{names[other]}'s are named {stem}_*{alike}"
        found = _outputs_there(out, wanted)
        if found is None:
            return ""
        stem, recorded = found
        alike = "" if stem == wanted else ", upper and lower case alike, as Windows and macOS take names"
        return f"{stem}_* there are another image's outputs ({recorded or 'an image not named'}{alike})"

    notes = []
    for image, stem in zip(map(Path, images), stems):
        if PurePosixPath(stem).name == output_name(image.name):
            continue
        wanted = PurePosixPath(stem).with_name(output_name(image.name))
        if PurePosixPath(stem).name == _plain_stem(image.name):  # cells.ome_* for cells.ome.tif
            why = (f"as another image's are named {wanted}_*" if str(wanted).casefold() in taken else
                   f"as an earlier version named them there: they are kept, not written again as {wanted}_*")
        else:  # which input (or which outputs in ``out``) holds its name, and each suffix passed over
            suffix = re.fullmatch(re.escape(wanted.name) + r"_(\d+)", PurePosixPath(stem).name)
            passed = [who for number in range(2, int(suffix.group(1)) if suffix else 2)
                      if (who := holder(str(wanted.with_name(f"{wanted.name}_{number}")), str(image)))]
            why = "as " + "; ".join([holder(str(wanted), str(image)) or f"{wanted}_* is taken", *passed])
        notes.append(f"{NOTE}{image}: outputs named {stem}_* in {out}, {why}")
    return notes


def _outputs_there(out, stem: str) -> tuple[str, str] | None:
    """The outputs in ``out`` named ``stem``, or else a stem differing from it only in case: that
    stem and the image their manifest records (its path, '' unknown); None when there are none."""
    from .io.fileset import MANIFEST_SUFFIX

    try:
        folder, name = output_place(out, stem)
        found = sorted(entry.name[: -len(MANIFEST_SUFFIX)] for entry in os.scandir(folder)
                       if entry.name.endswith(MANIFEST_SUFFIX)
                       and entry.name[: -len(MANIFEST_SUFFIX)].casefold() == name.casefold())
    except (OSError, ValueError):
        return None
    if not found:
        return None
    name = name if name in found else found[0]
    try:
        info = _manifest(folder, name).info
    except (AttributeError, ValueError):  # gone since, or broken
        info = {}
    return str(PurePosixPath(stem).with_name(name)), str(info.get("image_path") or info.get("image") or "")


def output_name(name: str, *, suffix: bool = True) -> str:
    """The output name of a file (its stem, `napari_prm.io.paths.image_stem`: ``cells`` for
    ``cells.ome.tif``; with ``suffix=False``, of a folder: all of it), made one that
    `output_place` takes: a backslash (a Windows path kept in a POSIX file name) becomes ``_``,
    and so does each dot of a name of dots (the stem ``.`` of ``..png``).

    Parameters
    ----------
    name : str
        A file or folder name.
    suffix : bool
        Whether ``name`` is a file's, whose suffixes are dropped.
    """
    return _usable_stem(image_stem(name) if suffix else name)


def _plain_stem(name: str) -> str:
    """`output_name` of a file by its last extension only (``cells.ome`` for ``cells.ome.tif``):
    the name earlier versions gave an OME-TIFF's outputs, which `output_stems` keeps where they are."""
    return _usable_stem(Path(name).stem)


def _usable_stem(stem: str) -> str:
    stem = stem.replace("\\", "_")
    return "_" * len(stem) if set(stem) <= {"."} else stem


def output_place(out: str | os.PathLike, stem: str) -> tuple[Path, str]:
    """The folder and the plain file stem of an output stem: ``A1/cat`` -> ``(out/A1, "cat")``.

    Parameters
    ----------
    out : path-like
        The output folder.
    stem : str
        An output stem: a plain stem or a relative POSIX path (``A1/cat``).

    Raises
    ------
    ValueError
        For a stem that is empty, absolute or leads out of ``out`` (``..``).
    """
    relative = PurePosixPath(stem)
    if not relative.name or relative.is_absolute() or ".." in relative.parts or "\\" in stem:
        raise ValueError(f"output stem {stem!r} is not a file stem or a relative path inside the output folder")
    return Path(out, *relative.parts[:-1]), relative.name


def _image_record(image: Path, out: Path) -> dict[str, str]:
    """Where the image of outputs is, as their manifest records it: absolute, and from ``out``
    (which still holds when the images and the outputs were moved together)."""
    image = Path(image).resolve()
    try:
        relative = Path(os.path.relpath(image, Path(out).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        relative = ""
    return {"image_path": str(image), "image_from_out": relative}


def _stem_taken(out, stem: str, image: Path, manifests: dict) -> bool:
    """Whether ``stem``'s outputs in ``out``, or else those of a stem differing from it only in
    case (``Cat`` for ``cat``: one set of files on Windows and macOS), record another image.

    ``manifests`` caches each folder's manifest stems by their case-folded form (None: the folder
    could not be listed); a stem with no manifest there, in any case, is free without a look.
    """
    from .io.fileset import MANIFEST_SUFFIX

    folder, name = output_place(out, stem)
    if folder not in manifests:
        try:
            found = [entry.name[: -len(MANIFEST_SUFFIX)] for entry in os.scandir(folder)
                     if entry.name.endswith(MANIFEST_SUFFIX)]
        except (FileNotFoundError, NotADirectoryError):  # no folder, no outputs
            found = []
        except OSError:  # not listed: each stem's manifest is looked up
            found = None
        manifests[folder] = None if found is None else {}
        for found_stem in found or ():
            manifests[folder].setdefault(found_stem.casefold(), []).append(found_stem)
    if manifests[folder] is None:
        return _outputs_of_another(out, stem, image)
    variants = manifests[folder].get(name.casefold(), [])
    if not variants:
        return False
    if name in variants:  # outputs under its own name are this image's or another's
        return _outputs_of_another(out, stem, image)
    parent = PurePosixPath(stem).parent
    return any(_outputs_of_another(out, str(parent / variant), image) for variant in variants)


def _outputs_of_this(out, stem: str, image: Path) -> bool:
    """Whether ``stem``'s outputs in ``out`` (None: no folder) are there and record ``image``."""
    if out is None:
        return False
    folder, name = output_place(out, stem)
    return manifest_path(folder, name).is_file() and not _outputs_of_another(out, stem, image)


def _outputs_of_another(out, stem: str, image: Path) -> bool:
    """Whether ``stem``'s outputs in ``out`` record an image other than ``image``."""
    try:
        file_set = _manifest(*output_place(out, stem))
    except ValueError:  # a broken manifest is replaced
        return False
    if file_set is None:
        return False
    info = file_set.info
    if "image_path" not in info:  # written before the path was recorded: known by its name only
        return bool(info.get("image")) and info["image"] != Path(image).name
    if any(info.get(key) and info[key] == value for key, value in _image_record(image, out).items()):
        return False
    # not where it was: the same image when its bytes are (its folder renamed or moved), read
    # only then, and only when the size agrees
    try:
        return not _same_bytes(info, Path(image), Path(image).stat())
    except OSError:
        return True


def _image_identity(image: Path) -> dict:
    """What tells an image from another of the same name wherever it lies: its size and SHA-256
    (and its modification time, by which `_image_changed` reads only a file that may have changed)."""
    stat = image.stat()
    return {"image_bytes": stat.st_size, "image_sha256": _image_sha256(image, stat),
            "image_mtime_ns": stat.st_mtime_ns}


def _image_changed(info: Mapping[str, Any], image: str | os.PathLike) -> str:
    """Why complete outputs whose manifest is ``info`` are not those of ``image`` as it is now
    ('' when they are, or when the manifest does not say): its size differs from the one
    recorded, or, modified since, its SHA-256 does (a stack re-saved with more planes, an
    image replaced under its name). The file is read only when its size agrees and its
    modification time does not."""
    recorded = info.get("image_bytes")
    try:
        stat = Path(image).stat()
    except OSError:
        return ""
    if not isinstance(recorded, int):
        return ""
    if recorded != stat.st_size:
        return (f"{IMAGE_CHANGED} ({recorded} bytes then, {stat.st_size} now); "
                "use overwrite to replace them")
    if info.get("image_mtime_ns") == stat.st_mtime_ns or not info.get("image_sha256"):
        return ""
    if not _same_bytes(info, Path(image), stat):
        return f"{IMAGE_CHANGED} (its content differs); use overwrite to replace them"
    return ""


def _same_bytes(info: Mapping[str, Any], image: Path, stat: os.stat_result) -> bool:
    """Whether ``image`` (``stat``: its `os.stat`) has the size and SHA-256 that the manifest
    ``info`` records (`_image_identity`); it is read only when the size agrees."""
    return info.get("image_bytes") == stat.st_size and info.get("image_sha256") == _image_sha256(image, stat)


#: What this process read of files that a run may read again (`_read_once`): by kind and path (as
#: given), the file's `_file_state` when it was read and what was read. Oldest first, at most `_READ_KEPT`.
_READ: dict[tuple[str, str], tuple[tuple, Any]] = {}
_READ_KEPT = 4096
_READ_LOCK = threading.Lock()
#: A file modified or changed (its modification or change time) less than this many nanoseconds before
#: it was read is read again the next time: its writer may still be at work, within the file system's
#: clock tick (a second on some), without changing its state. The change time counts as well: a copy
#: that keeps its source's modification time (``cp -p``, an archive, `shutil.copy2`) is new all the same.
_SETTLED_NS = 2_000_000_000


def _file_state(stat: os.stat_result) -> tuple:
    """What changes when a file is written, replaced or touched: device, inode, size, modification
    and change times."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _read_once(kind: str, path: Path, stat: os.stat_result, read: Callable[[], Any]) -> Any:
    """``read()`` of the file ``path`` (``stat``: its `os.stat` before it is read), or what it gave
    when this process read the file before and its `_file_state` is the same now: an image's
    SHA-256 and its outputs' manifest, which `output_stems`, `predict_many` and `predict_image`
    each need, are read once between them."""
    key, state = (kind, os.fspath(path)), _file_state(stat)  # as given: a relative path read the same way
    with _READ_LOCK:  # a cluster's worker runs tasks in threads
        known = _READ.get(key)
    if known is not None and known[0] == state:
        return known[1]
    started = time.time_ns()
    value = read()
    with _READ_LOCK:
        _READ.pop(key, None)
        if max(stat.st_mtime_ns, stat.st_ctime_ns) < started - _SETTLED_NS:
            _READ[key] = (state, value)
            if len(_READ) > _READ_KEPT:
                del _READ[next(iter(_READ))]
    return value


def _image_sha256(image: Path, stat: os.stat_result) -> str:
    """The SHA-256 of ``image`` (``stat``: its `os.stat`), read once while the file stays as it is (`_read_once`)."""
    return _read_once("sha256", image, stat, lambda: _sha256(image))


def _manifest(folder: Path, name: str):
    """`napari_prm.io.fileset.read_file_set` of ``name``'s outputs in ``folder`` (None: no manifest),
    read once while the manifest stays as it is (`_read_once`); not to be changed."""
    from .io.fileset import read_file_set

    path = manifest_path(folder, name)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return _read_once("manifest", path, stat, lambda: read_file_set(folder, name))


def proposals_for_image(proposals, image: Path, stem: str | None = None):
    """``proposals`` for one image: a folder of proposal files gives the one named like it.

    With an output ``stem`` that is a path in a tree (``A1/cat``, `output_stems`), the file is
    looked for where the tree puts it (``<folder>/A1/cat.*``) first, then by the image's name
    at the top of the folder. An OME-TIFF ``cells.ome.tif`` takes ``cells.ome.*``, else
    ``cells.*`` (`_proposal_stems`).
    """
    if isinstance(proposals, (str, os.PathLike)) and Path(proposals).is_dir():
        image = Path(image)
        parent = PurePosixPath(stem).parent if stem else PurePosixPath(".")
        places = ([Path(proposals, *parent.parts)] if parent.parts else []) + [Path(proposals)]
        names, itself = _proposal_stems(image), image.resolve()
        for place in places:
            # by name first: a folder of many proposal files is not resolved file by file for each image
            files = [p for p in (place.iterdir() if place.is_dir() else ()) if p.stem in names]
            files = [p for p in files if p.is_file() and p.resolve() != itself]
            for name in names:
                matches = sorted_paths(p for p in files if p.stem == name)
                if matches:
                    return str(matches[0])
        where = " or ".join(str(place) for place in places)
        raise ValueError(f"no proposal file named {' or '.join(f'{name}.*' for name in names)} in {where}")
    return proposals


def _proposal_stems(image: Path) -> list[str]:
    """The stems a proposal file of ``image`` may have: its name less its last extension
    (``cells.ome`` for ``cells.ome.tif``, which names no other image), then its `image_stem`
    (``cells``) unless an image of that plain stem lies beside it (``cells.tif``, whose they are)."""
    names = [image.stem]
    short = image_stem(image.name)
    if short != image.stem and not any(image.with_name(short + suffix).is_file() for suffix in IMAGE_SUFFIXES):
        names.append(short)
    return names


# --------------------------------------------------------------------------- the model on workers
@dataclass(frozen=True)
class ModelSpec:
    """How a worker gets the model: a built-in name, or a checkpoint known by its SHA-256.

    Attributes
    ----------
    source : str
        A built-in model's name or the checkpoint's path (for messages, and where no
        bytes came).
    sha256 : str or None
        Of the checkpoint file (None for a built-in model). It keys each worker's cache,
        so a checkpoint rewritten during a batch (training goes on) is not mixed in.
    device : str or None
        torch device on the worker (None: the best available).
    torch_threads : int or None
        Intra-op threads of torch in the worker process (None: leave as is).
    """

    source: str
    sha256: str | None = None
    device: str | None = None
    torch_threads: int | None = None

    @property
    def key(self) -> tuple:
        """What tells two models apart: ``(sha256, or source without one, device)``."""
        return (self.sha256 or self.source, self.device)


_MODELS: dict[tuple, Any] = {}
_CHECKPOINTS: dict[str, bytes] = {}  # checkpoint bytes by SHA-256, from the worker plugin
_MODEL_LOCK = threading.Lock()
# A worker thread runs one prediction at a time: PRM back-propagation patches the network.
_PREDICT_LOCK = threading.Lock()


def model_spec(model, *, device: str | None = None,
               torch_threads: int | None = None) -> tuple[ModelSpec, bytes | None]:
    """The `ModelSpec` of ``model`` and the checkpoint bytes to send (None for built-ins).

    ``model`` is a built-in name, a checkpoint path, or a loaded `PRMModel` (saved to a
    temporary checkpoint first, so that it travels as bytes too).
    """
    from .model.checkpoint import BUILTIN_MODELS, PRMModel, is_builtin_name, save_model

    if isinstance(model, PRMModel):
        with tempfile.TemporaryDirectory() as folder:
            data = save_model(model, Path(folder) / "model.pt").read_bytes()
        return ModelSpec("<a loaded model>.pt", hashlib.sha256(data).hexdigest(), device, torch_threads), data
    if is_builtin_name(model):
        return ModelSpec(model, None, device, torch_threads), None
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"model {model!r} is neither a built-in model {BUILTIN_MODELS} nor a checkpoint file")
    data = path.read_bytes()
    return ModelSpec(str(path.resolve()), hashlib.sha256(data).hexdigest(), device, torch_threads), data


def model_for(spec: ModelSpec):
    """The model of ``spec`` in this process: loaded on first use, then kept.

    Only the last model is kept (a worker serves one batch at a time). A checkpoint is
    loaded from the bytes the batch's worker plugin brought; without them (in this
    process) from the file at ``spec.source``, which must still have ``spec.sha256``.
    """
    with _MODEL_LOCK:
        model = _MODELS.get(spec.key)
        if model is None:
            if spec.torch_threads:
                import torch

                torch.set_num_threads(spec.torch_threads)
            model = _load(spec, _CHECKPOINTS.get(spec.sha256 or ""))
            _MODELS.clear()
            _MODELS[spec.key] = model
        return model


def _load(spec: ModelSpec, checkpoint: bytes | None):
    from .model.checkpoint import load_model

    if spec.sha256 is None:
        return load_model(spec.source, device=spec.device)
    if checkpoint is None:
        checkpoint = Path(spec.source).read_bytes()
    if hashlib.sha256(checkpoint).hexdigest() != spec.sha256:
        raise ValueError(f"checkpoint {spec.source} changed since the batch started (its SHA-256 differs)")
    suffix = Path(spec.source).suffix or ".pt"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"checkpoint{suffix}"
        path.write_bytes(checkpoint)
        return load_model(path, device=spec.device)


# --------------------------------------------------------------------------- one image
def predict_image(image: str | os.PathLike, stem: str, out: str | os.PathLike, model, *,
                  settings: Mapping[str, Any] | None = None, overwrite: bool = False,
                  prms_format: str | None = None, gather: bool = False,
                  model_record: Mapping[str, Any] | None = None,
                  plane_done: Callable[[int, int], None] | None = None) -> ImageResult:
    """Read one image, predict, and write its outputs all-or-nothing: one batch task.

    A TIFF stack of z-planes or time points (`napari_prm.io.read_stack`: its ImageJ or OME
    axes say so) is predicted plane by plane, as the plugin's ``all planes`` runs do, each
    plane getting exactly what ``predict(plane, model, **settings)`` gives; its outputs are
    written together once every plane is done (`napari_prm.io.write_stack_prediction`: the
    label stack, a CSV row per plane and label, peaks with their plane, no COCO JSON), so an
    interrupt between planes leaves the previous outputs as they were.

    Parameters
    ----------
    image : path-like
    stem : str
        Stem of the output files in ``out``; a relative POSIX path (``A1/cat``) writes them
        into that sub-folder of ``out`` (created), see `output_place`.
    out : path-like
        Output folder (it must exist).
    model : PRMModel
    settings : mapping, optional
        Keyword arguments of `napari_prm.predict`, passed through; a ``proposals`` folder
        gives each image the proposal file of its stem; ``channels`` (those of a
        multichannel image read as red, green and blue) default to the model's
        (``model.settings["channels"]``); the manifest records those read.
    overwrite : bool
        Replace complete outputs. Without it, complete outputs (written by an earlier run
        or an earlier attempt) are left and reported as ``"skipped"``, with the reason
        (``error``) when the image changed since they were written (`IMAGE_CHANGED`). An
        output changed since it was written (corrected by hand) is first copied beside it
        as ``<name>.edited-<n><suffix>`` (`napari_prm.io.write_prediction`'s ``kept``), and
        a note (starting with `napari_prm.io.fileset.KEPT_EDIT`) names both.
    prms_format : {None, "npy", "tiff"}
    gather : bool
        Keep the `Prediction` in the result (a list of them, one per plane, for a stack).
    model_record : mapping, optional
        What the manifest records of the model (`model_record`), so that a later run can
        tell its outputs from another model's.
    plane_done : callable, optional
        ``plane_done(done, planes)`` after each plane is predicted (once for a 2-D image).

    Returns
    -------
    ImageResult
        ``"written"`` or ``"skipped"``; errors propagate (the caller retries and reports).
    """
    from . import io
    from .io.images import _read_image_file
    from .predict import predict

    started = time.perf_counter()
    image = Path(image)
    folder, name = output_place(out, stem)
    if not overwrite:
        existing = io.complete_prediction(folder, name, prms_format=prms_format)
        if existing is not None:
            return _skipped(str(image), stem, existing, _image_changed(existing.info, image))
    settings = dict(settings or {})
    if "proposals" in settings:
        settings["proposals"] = proposals_for_image(settings["proposals"], image, stem)
    # the file as it is before it is read: one re-saved while it is predicted (a stack still
    # being written) is then known for changed by the next run (`_image_changed`)
    identity = _image_identity(image)
    # the channels given, else those the model was trained on (none: the image as it is)
    channels, _ = io.channels_for(settings.get("channels"), model.settings.get("channels"))
    read, pixel_size = _read_image_file(image, channels)  # a TIFF opened once
    stack = read if isinstance(read, io.ImageStack) else None
    if stack is not None and isinstance(settings.get("proposals"), (str, os.PathLike)) \
            and Path(settings["proposals"]).is_file():
        raise ValueError(f"cannot predict {image}: it is a stack of {len(stack)} planes (axes {stack.axes}), "
                         f"and the proposal file {settings['proposals']} holds one 2-D image's proposals; "
                         "predict a stack with built-in proposals")
    planes = stack.planes if stack is not None else [read]
    predictions = []
    arguments = {key: value for key, value in settings.items() if key != "channels"}  # read above
    for pixels in planes:
        with _PREDICT_LOCK:
            predictions.append(predict(pixels, model, **arguments))
        if plane_done is not None:
            plane_done(len(predictions), len(planes))
    # the manifest records the channels read (the model's when none were given), so that a run that
    # gives them and one that leaves them to the model know each other's outputs for their own
    used = {**settings, "channels": channels} if channels is not None else settings
    info = (_image_record(image, out) | identity | {"settings": _describe(used)}
            | ({"model": dict(model_record)} if model_record else {}))
    if stack is not None:
        info |= {"axes": stack.axes, "stack_shape": list(stack.shape)}
    else:  # what `evaluate_exports` says of a folder whose exports hold no instance
        info |= _selection_record(predictions[0], model, settings.get("classes"))
    write = io.write_prediction if stack is None else io.write_stack_prediction
    kept: list = []  # outputs corrected by hand since they were written: copied aside, then replaced
    write(predictions[0] if stack is None else predictions, folder, name, prms_format=prms_format,
          overwrite=overwrite, image_file_name=(PurePosixPath(stem).parent / image.name).as_posix(),
          pixel_size=pixel_size, info=info, kept=kept, **({} if stack is None else {"axes": stack.label_axes}))
    notes = [str(edit) for edit in kept] + [note if stack is None else f"plane {plane}: {note}"
             for plane, prediction in enumerate(predictions) for note in prediction.notes]
    if stack is None and channels is None and (note := io.channels_first_note(image)):
        notes.insert(0, note)  # a (3, H, W) TIFF that does not say its pages are colours: how it was read
    if note := io.format_note(image):  # a PNG or JPEG named .tif: read by its content
        notes.insert(0, note)
    if stack is not None:
        notes.append(f"a stack of {len(stack)} planes (axes {stack.axes}), predicted plane by plane: no COCO JSON "
                     "written (it holds 2-D label images only); the label TIFF stack and the instance CSV "
                     "(a row per plane and label) hold its instances")
    kept = (predictions[0] if stack is None else predictions) if gather else None
    return ImageResult(str(image), stem, "written", sum(len(p.peaks) for p in predictions),
                       sum(len(p.instances) for p in predictions), time.perf_counter() - started,
                       shape=tuple(int(n) for n in planes[0].shape[:2]), planes=len(planes),
                       prediction=kept, notes=notes)


def _selection_record(prediction, model, classes) -> dict:
    """What the manifest records of how peaks were selected: the class and peak thresholds used
    (``thresholds``) and the best class score among the classes asked (``best_class_score``:
    name and score), so that `napari_prm.evaluate.evaluate_exports` can say why a folder's
    exports hold no instance. Empty when the prediction does not say its settings."""
    from .predictor import class_indices, resolve_thresholds

    if prediction.settings is None or not len(prediction.scores):
        return {}
    class_threshold, peak_threshold = resolve_thresholds(prediction.settings, model.settings)
    names = list(prediction.class_names)
    try:
        chosen = list(range(len(names))) if not classes else list(class_indices(classes, names))
    except (TypeError, ValueError, IndexError):
        chosen = list(range(len(names)))
    record = {"thresholds": {"class": float(class_threshold),
                             "peak": None if peak_threshold is None else float(peak_threshold)}}
    if chosen:
        best = max(chosen, key=lambda i: float(prediction.scores[i]))
        record["best_class_score"] = [names[best], float(prediction.scores[best])]
    return record


def _describe(settings: Mapping[str, Any]) -> dict:
    """Settings as the manifest records them (arrays and callables by their type)."""
    return {key: value if isinstance(value, (str, int, float, bool, type(None), list, tuple))
            else f"<{type(value).__name__}>" for key, value in settings.items()}


def model_label(model) -> str:
    """How manifests name a model.

    Parameters
    ----------
    model : str, path-like or PRMModel

    Returns
    -------
    str
        A built-in model's name, a checkpoint's file name (its absolute path when the name is a
        built-in model's, `napari_prm.model.is_builtin_name`), or a loaded model's label space
        (``"a loaded model"`` without one).
    """
    from .model.checkpoint import PRMModel, is_builtin_name

    if isinstance(model, PRMModel):
        return str(model.settings.get("label_space") or "a loaded model")
    if is_builtin_name(model):
        return model
    if isinstance(model, str) and not Path(model).is_file():
        return model
    # a file named like a built-in model (./imagenet-voc) by its whole path: the name alone is the built-in's
    return str(Path(model).resolve()) if is_builtin_name(Path(model).name) else Path(model).name


def model_record(model, *, name: str | None = None) -> dict[str, str]:
    """What a batch's manifests record of its model: a name and `model_fingerprint` (head included).

    Parameters
    ----------
    model : str, path-like or PRMModel
        A built-in model's name, a checkpoint, or a loaded model (a name or a checkpoint is
        loaded on the CPU to be fingerprinted).
    name : str, optional
        The name to record (default: the built-in name, the checkpoint's file name, or a
        loaded model's label space).

    Returns
    -------
    dict
        ``{"name": ..., "fingerprint": ...}``.
    """
    from .model.checkpoint import PRMModel, load_model, model_fingerprint

    name = name or model_label(model)
    if not isinstance(model, PRMModel):
        model = load_model(model, device="cpu")
    return {"name": name, "fingerprint": model_fingerprint(model, head=True)}


#: Settings that change how fast outputs are made, not the outputs: not compared by `_other_run`.
_SAME_OUTPUTS = ("peak_batch_size",)


def _comparable(settings: Mapping[str, Any], model) -> dict:
    """Settings as they decide the outputs: None is the default (but ``proposals=None`` asks
    for no retrieval), and so is a missing preset or proposal source; ``"auto"`` is the
    source it stands for with ``model``, classes are their names, channels those read (none
    given: the model's, as an earlier manifest may not have recorded them), and settings that
    do not change the outputs (`_SAME_OUTPUTS`) are left out."""
    from .io import channels_for
    from .predictor import class_indices
    from .proposals import resolve_source

    plain = {key: value for key, value in ({"preset": "default", "proposals": "auto"}
                                           | json.loads(json.dumps(_describe(settings), default=str))).items()
             if (value is not None or key == "proposals") and key not in _SAME_OUTPUTS}
    plain["proposals"] = resolve_source(plain["proposals"], model)
    try:
        channels, _ = channels_for(plain.get("channels"), model.settings.get("channels"))
    except (TypeError, ValueError):  # not channels: compared as written
        pass
    else:
        plain.pop("channels", None)
        if channels is not None:
            plain["channels"] = channels
    if "classes" in plain:
        try:
            plain["classes"] = sorted(model.class_names[i] for i in class_indices(plain["classes"], model.class_names))
        except (TypeError, ValueError, IndexError):  # not this model's classes: compared as written
            pass
    return plain


def _other_run(info: Mapping[str, Any], record: Mapping[str, str], settings: Mapping[str, Any], model) -> str:
    """Why complete outputs are not this run's ('' when they are, or when their manifest does not say).

    ``model`` is this run's (loaded); the outputs' settings are compared only when they come
    from the same model (the same fingerprint)."""
    recorded = info.get("model")
    if isinstance(recorded, Mapping) and recorded.get("fingerprint") not in (None, record["fingerprint"]):
        name = recorded.get("name", "?")
        other = f"model {name!r}" if name != record["name"] else f"version of the model {name!r}"
        return f"{OTHER_RUN} another {other}; use overwrite to replace them"
    if not isinstance(info.get("settings"), Mapping):
        return ""
    before, now = _comparable(info["settings"], model), _comparable(settings, model)
    if Path(str(now["proposals"])).is_dir():
        before.pop("proposals", None)  # each image's file of the folder was recorded
        now.pop("proposals")
    changed = [f"{key}: {before.get(key, 'default')!r} -> {now.get(key, 'default')!r}"
               for key in sorted(set(before) | set(now)) if before.get(key, "default") != now.get(key, "default")]
    return f"{OTHER_RUN} other settings ({', '.join(changed)}); use overwrite to replace them" if changed else ""


def _skipped(image: str, stem: str, file_set, error: str = "") -> ImageResult:
    info = file_set.info if file_set is not None else {}
    shape = info.get("image_shape")
    planes = info.get("planes", 1 if file_set is not None else None)  # a 2-D image's manifest has none
    return ImageResult(image, stem, "skipped", info.get("peaks"), info.get("instances"), None, error,
                       shape=tuple(shape) if shape else None, planes=planes)


def _describe_error(error: BaseException) -> str:
    """One line: the message of an input error (it names the file), else ``unexpected <type>: ...``."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if isinstance(error, (ValueError, OSError)) else f"unexpected {type(error).__name__}: {text}"


def _failed(image: str, stem: str, error: BaseException, started: float) -> ImageResult:
    return ImageResult(image, stem, "failed", seconds=time.perf_counter() - started, error=_describe_error(error),
                       details="".join(traceback.format_exception(error)),
                       retriable=not isinstance(error, ValueError))


def _run_task(image: str, stem: str, out: str, spec: ModelSpec, settings: Mapping[str, Any], overwrite: bool,
              prms_format: str | None, gather: bool, model_record: Mapping[str, Any] | None = None) -> ImageResult:
    """A cluster task: `predict_image` with the worker's cached model; errors become results."""
    started = time.perf_counter()
    quiet_large_image_warning()  # as the command line does in its own process
    try:
        return predict_image(image, stem, out, model_for(spec), settings=settings,
                             overwrite=overwrite, prms_format=prms_format, gather=gather,
                             model_record=model_record)
    except Exception as error:  # reported by the client, as text: an exception may not pickle
        return _failed(image, stem, error, started)


# --------------------------------------------------------------------------- summary
#: Seconds a run waits before it tries again to rewrite a ``summary.csv`` that another program
#: holds open (`_Summary`).
SUMMARY_HELD_WAIT = 30.0


class _Summary:
    """``summary.csv`` of a run: every image's row, rewritten atomically at most once per
    ``every`` s.

    The rows an earlier ``summary.csv`` holds of images that are not in ``results`` are kept
    where they were (`_earlier_rows`); the rows of ``results`` replace their images' rows and
    the new images' come after them, in input order.

    On Windows a ``summary.csv`` that another program holds open (Excel showing the progress)
    cannot be replaced. An update while images are pending then leaves the file as it is and
    tries again `SUMMARY_HELD_WAIT` seconds later, so the images go on being predicted; the
    last one (``force``, no image pending) raises, naming the file."""

    def __init__(self, path: Path, results: list[ImageResult], every: float = 1.0):
        self.path, self.results, self.every = path, results, every
        self.last = -float("inf")
        self.order = _earlier_rows(path, results)

    def update(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        try:
            _write_summary(self.path, (self.results[item].row() if isinstance(item, int) else item
                                       for item in self.order))
        except PermissionError:
            if force and not any(result.status == "pending" for result in self.results):
                raise
            self.last = time.monotonic() + SUMMARY_HELD_WAIT - self.every
            return
        self.last = now


def _write_summary(path: Path, rows) -> None:
    """Replace ``summary.csv`` at ``path`` with ``rows`` (dicts of `SUMMARY_COLUMNS`), atomically."""
    with atomic_write(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)


def _read_summary(path: Path) -> list[dict] | None:
    """The rows of the summary.csv at ``path``; None when it is missing or not a readable CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _earlier_rows(path: Path, results: Sequence[ImageResult]) -> list[dict | int]:
    """The rows of ``summary.csv`` in order: earlier rows kept (dicts) and indices of ``results``.

    An earlier row is replaced by its image's result when the image is in ``results``; it is
    dropped when its stem is now another image's, when it says outputs were written (or
    found) and their manifest or label image is gone, when it has none (failed, pending,
    cancelled) and its image file is gone, or when it is an input an earlier run left out
    (failed, no stem: `LeftOut`), which only that run's summary names. A file that is not a
    summary is replaced."""
    index: dict[str, list[int]] = {}
    for i, result in enumerate(results):
        index.setdefault(os.path.abspath(result.image), []).append(i)
    stems = {result.stem for result in results if result.stem}
    earlier = _read_summary(path) or []
    order: list[dict | int] = []
    for row in earlier:
        image, stem = row.get("image"), row.get("stem") or ""
        if not image or not isinstance(image, str):
            continue
        if os.path.abspath(image) in index:
            order.extend(index.pop(os.path.abspath(image)))
        elif stem in stems:
            continue  # this run's image of that stem replaces (or keeps) those outputs
        elif not stem and row.get("status") == "failed":
            continue  # an input the earlier run left out (a folder it could not list): said by that run
        elif stem and row.get("status") in ("written", "skipped") and not _has_outputs(path.parent, stem):
            continue
        elif row.get("status") not in ("written", "skipped") and not os.path.exists(image):
            continue  # no outputs, and its image is gone (a file that failed, since deleted)
        else:
            order.append(row)
    return order + sorted(i for indices in index.values() for i in indices)


def output_states(out: str | os.PathLike, stems: Sequence[str]) -> dict[str, tuple[int, int, int] | None]:
    """Each stem's manifest in ``out`` as ``(inode, modification time in ns, size)``, None when
    it has none: taken before a run, so that `written_since` can tell what the run wrote.

    Parameters
    ----------
    out : path-like
        The output folder.
    stems : sequence of str
        Output stems.
    """
    states = {}
    for stem in stems:
        try:
            found = manifest_path(*output_place(out, stem)).stat()
            states[stem] = (found.st_ino, found.st_mtime_ns, found.st_size)
        except OSError:
            states[stem] = None
    return states


def written_since(out: str | os.PathLike, states: Mapping[str, tuple[int, int, int] | None], *,
                  prms_format: str | None = None) -> list[str]:
    """The stems of ``states`` (`output_states`) whose outputs are complete in ``out`` and were
    written since: what an interrupted run put on disk, the images that workers finished
    after the interrupt included (a switch committed but not finished is finished here).

    Parameters
    ----------
    out : path-like
        The output folder.
    states : mapping of str to tuple or None
        What `output_states` gave before the run, by stem.
    prms_format : {None, "npy", "tiff"}, optional
        The PRM file the run writes (`napari_prm.io.complete_prediction`).
    """
    from . import io

    now = output_states(out, list(states))
    return [stem for stem, state in states.items()
            if now[stem] is not None and now[stem] != state
            and io.complete_prediction(*output_place(out, stem), prms_format=prms_format) is not None]


def record_written(out: str | os.PathLike, stems: Sequence[str]) -> None:
    """Mark the ``"cancelled"`` (or ``"pending"``) rows of ``stems`` in ``<out>/summary.csv`` as
    ``"written"``: images that `written_since` found on disk after an interrupt stopped the run's
    bookkeeping.

    Parameters
    ----------
    out : path-like
        The output folder; nothing happens without a readable ``summary.csv`` in it.
    stems : sequence of str
        The output stems to mark.
    """
    path, stems = Path(out) / SUMMARY_NAME, set(stems)
    rows = _read_summary(path)
    if rows is None:
        return
    changed = [row for row in rows if row.get("stem") in stems and row.get("status") in ("cancelled", "pending")]
    if not changed:
        return
    for row in changed:
        row["status"] = "written"
    _write_summary(path, rows)


def _has_outputs(out: Path, stem: str) -> bool:
    """Whether ``stem``'s outputs are still in ``out``: its manifest and its label image (deleting
    the ``<stem>_*`` files by hand leaves the manifest)."""
    from .io import prediction_paths

    try:
        return (manifest_path(*output_place(out, stem)).exists()
                and prediction_paths(*output_place(out, stem))["tiff"].exists())
    except ValueError:  # not a stem this version writes
        return False


# --------------------------------------------------------------------------- the batch
class PlaneTally:
    """The planes done of a `predict_many` run, for a progress bar that counts planes (a TIFF
    stack's N, a 2-D image's 1), as ``napari-prm predict``'s bar and the plugin's folder run count.

    Parameters
    ----------
    images : sequence of path-like
        The run's images; a stack's planes are read from its TIFF header (`io.images.plane_count`).

    Attributes
    ----------
    planes : dict of str to int
        The planes of each image, by ``str(Path(path))`` (as `ImageResult.image` names it:
        ``"./a.png"`` is ``"a.png"``).
    total : int
        The planes of all images.
    done : int
        The planes counted so far, over all images.
    """

    def __init__(self, images: str | os.PathLike | Sequence[str | os.PathLike]):
        from .io.images import plane_count

        # by str(Path(image)), as predict_many names it; one path is one image
        self.planes = {str(Path(image)): plane_count(image) for image in check.path_list(images)}
        self.total = sum(self.planes.values())
        self.done = 0  # the planes counted so far, over all images (kept: a sum per report is slow for many)
        self._counted = dict.fromkeys(self.planes, 0)

    def _set(self, image: str, counted: int) -> int:
        self.done += counted - self._counted[image]
        self._counted[image] = counted
        return self.done

    def plane_done(self, image: str | os.PathLike, done: int) -> int:
        """Count ``done`` planes of ``image`` (``predict_many``'s ``plane_progress``); returns `done`
        (over all images). A stack read with more planes than its header said counts its header's.

        Parameters
        ----------
        image : path-like
            One of the tallied images.
        done : int
            The planes of it done so far.
        """
        image = str(Path(image))
        return self._set(image, max(self._counted[image], min(done, self.planes[image])))

    def image_done(self, image: str | os.PathLike) -> int:
        """Count all planes of ``image`` (``predict_many``'s ``progress``: it was written, skipped,
        failed or run on a cluster, which reports no planes); returns `done` (over all images).

        Parameters
        ----------
        image : path-like
            One of the tallied images.
        """
        image = str(Path(image))
        return self._set(image, self.planes[image])


def _image_paths(paths) -> list[Path]:
    """`predict_many`'s ``paths`` as Paths, refusing one path (its characters are not images)
    and items that are not paths (arrays: `napari_prm.predict` takes them one at a time)."""
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths: expected a sequence of image files, got one path {str(paths)!r}: pass [path] "
                        "(collect_images lists a folder's images)")
    items = list(paths)
    for number, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"paths[{number}]: expected an image file's path, got {type(item).__name__}: "
                            "predict_many reads files; predict an image held in memory with napari_prm.predict "
                            "(or a PRMPredictor, which keeps the model between images)")
        if os.path.isdir(item):  # else read as an image, tried twice and failed: "[Errno 21] Is a directory"
            raise ValueError(f"paths[{number}]: {os.fspath(item)!r} is a folder, not an image file: "
                             "collect_images([folder]) lists its images (recursive=True: its sub-folders' too), "
                             "and output_stems(images, roots=[folder]) names their outputs after the tree")
    return [Path(p) for p in items]


def _given_stems(stems: Sequence[str], count: int, out) -> list[str]:
    """``predict_many``'s ``stems`` as paths write them (``./a`` and ``a//b/`` are ``a`` and ``a/b``),
    refusing a count other than ``count`` and two stems that name the same outputs: equal as paths,
    or differing only in case (one set of files on Windows and macOS, which `output_stems` keeps
    apart too). ``a`` and ``./a`` were taken for two, and the second image found the first's outputs
    and was skipped, "changed since its outputs were written"."""
    given = list(stems)
    if len(given) != count:
        raise ValueError(f"stems must be {count} distinct names, one per image; got {len(given)}")
    normal = [str(PurePosixPath(stem)) if isinstance(stem, str) else stem for stem in given]
    first: dict = {}
    for number, stem in enumerate(normal):
        key = stem.casefold() if isinstance(stem, str) else stem
        if key in first:
            before = first[key]
            alike = "" if stem == normal[before] else ", upper and lower case alike, as Windows and macOS take names"
            raise ValueError(f"stems[{before}] {given[before]!r} and stems[{number}] {given[number]!r} name the same "
                             f"outputs ({normal[before]}_* in {out}{alike}): stems must be {count} distinct names, "
                             "one per image")
        first[key] = number
    return normal


def predict_many(
    paths: Sequence[str | os.PathLike],
    model,
    out: str | os.PathLike,
    client=None,
    *,
    overwrite: bool = False,
    prms_format: str | None = None,
    stems: Sequence[str] | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    max_in_flight: int | None = None,
    retries: int = 1,
    gather: bool = False,
    torch_threads: int | None = 1,
    summary_every: float = 1.0,
    model_name: str | None = None,
    loaded_model=None,
    plane_progress: Callable[[str, int, int], None] | None = None,
    left_out: Sequence[LeftOut] = (),
    **settings: Any,
) -> BatchResult:
    """Predict every image of ``paths`` and write its outputs to ``out``.

    Parameters
    ----------
    paths : sequence of path-like
        Image files (see `collect_images` for folders). One path (not in a list) and items
        that are not paths (arrays: `napari_prm.predict` takes them) are refused (TypeError
        naming ``paths`` or the item), and so is a folder (ValueError naming it: `collect_images`
        lists its images). A TIFF stack of z-planes or time points (ImageJ or
        OME axes ``Z``/``T``) is predicted plane by plane (`predict_image`).
    model : str, path-like or PRMModel
        A built-in model (``"imagenet-voc"``, ``"imagenet-coco"``, ``"imagenet"``), a
        checkpoint, or a loaded model.
    out : path-like
        Output folder (created): per image the files of `napari_prm.io.write_prediction`
        and ``<stem>.manifest.json``; ``summary.csv``, the folder's record: a row per image
        of this run, and the rows an earlier run wrote of other images whose outputs are
        still there.
    client : distributed.Client, optional
        Run on this cluster; None runs in this process, one image after the other.
    overwrite : bool
        Recompute images whose outputs are complete (default: skip them). Outputs corrected by
        hand since they were written are kept beside the new ones (`predict_image`).
    prms_format : {None, "npy", "tiff"}
        Also write each image's PRMs.
    stems : sequence of str, optional
        Output stems, plain (``cat``) or relative paths (``A1/cat``: the outputs go to that
        sub-folder of ``out``, see `output_place`) (default: `output_stems` of ``paths`` with
        ``out``: file stems, made unique, none taken by another image's outputs in ``out``). They
        are compared as paths (``./a`` is ``a``, and results and ``summary.csv`` name it so) and
        without case: two that name the same outputs are refused (ValueError naming both).
    device : str, optional
        torch device of the model (None: the best available where it runs).
    progress : callable, optional
        ``progress(result, done, total)`` after each image (skipped ones included), in
        the calling thread.
    cancel : callable or threading.Event, optional
        Checked while waiting; when it returns True (or the Event is set) the images not yet
        done are marked ``"cancelled"`` and the batch returns. In this process the image being computed
        finishes first; on a cluster, the images already sent to the workers (at most
        ``max_in_flight``) finish first and are recorded, so that no output appears after
        the batch returned. An interrupt (Ctrl-C's KeyboardInterrupt) or an error that ends the
        run marks the images not done ``"cancelled"`` too, in ``summary.csv``, before it propagates.
    max_in_flight : int, optional
        Tasks submitted to the cluster at a time (default: twice the workers' threads).
    retries : int
        Further attempts for an image that failed or whose worker died; not for an input
        error (a ``ValueError`` naming the file), which trying again cannot mend.
    gather : bool
        Bring each `Prediction` (PRMs included) back in the results; memory grows with
        the batch.
    torch_threads : int or None
        Intra-op threads of torch in each cluster worker (default 1: the cluster's
        parallelism comes from its processes, and threads on top of them compete for the
        same cores); None leaves the workers as they are. Not applied in this process.
    summary_every : float
        Seconds between rewrites of ``summary.csv`` while results arrive.
    model_name : str, optional
        The model's name in each image's manifest (default: `model_label`), which also
        records the model's fingerprint and the settings. Complete outputs that another
        model or other settings made are skipped all the same (``overwrite`` replaces
        them), with a reason that names the difference.
    loaded_model : PRMModel, optional
        ``load_model(model)`` made already (the command line loads it to check ``classes``
        before a cluster starts): used here instead of loading ``model`` a second time. The
        run uses it in this process; a cluster's workers still load ``model`` themselves.
    plane_progress : callable, optional
        ``plane_progress(image, done, planes)`` after each plane predicted in this process
        (once for a 2-D image, N times for a stack of N planes, `predict_image`); a
        cluster's images are counted by ``progress`` only (`ImageResult.planes`).
    left_out : sequence of LeftOut, optional
        The inputs that `collect_images` left out (its messages that are `LeftOut`: a file that
        does not exist, a folder that cannot be listed...): each is a ``"failed"`` result, after
        those of ``paths``, with its reason as ``error``, no stem and no attempt, and a row of
        ``summary.csv``, so that the run's failures are counted and named alike everywhere. They
        are not reported to ``progress`` (the caller said them as they were found). Messages that are
        not `LeftOut` (the notes) are passed over: ``left_out=messages`` takes all of them.
    **settings
        Keyword arguments of `napari_prm.predict` for every image (``preset``,
        ``class_threshold``, ``peak_threshold``, ``max_peaks``, ``tta``, ``prm_mode``,
        ``proposals``, ...), passed through unchanged: each image gets exactly what
        ``predict(image, model, **settings)`` gives, the preset's and the model's
        calibrated defaults included.

    Returns
    -------
    BatchResult

    Raises
    ------
    FolderInUse
        Another run (in this process or another, on any host that sees ``out``) is writing
        into ``out``: it holds ``<out>/.napari-prm-lock`` until it ends (a killed one lets it go).
    """
    from . import io
    from .io.prediction import _complete_set

    paths = _image_paths(paths)
    stems = _given_stems(stems, len(paths), out) if stems is not None else output_stems(paths, out=out)
    places = [output_place(out, stem) for stem in stems]  # refuses a stem that leads out of ``out``
    if prms_format not in (None, "npy", "tiff"):
        raise ValueError(f"prms_format must be None, 'npy' or 'tiff', got {prms_format!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out):  # one run at a time writes into a folder
        # finish or remove what killed runs left, in each folder of the outputs (a tree's too)
        for folder in dict.fromkeys([out, *(folder for folder, _ in places)]):
            if folder.is_dir():
                io.recover_file_sets(folder)
        results = [ImageResult(str(p), s) for p, s in zip(paths, stems)]
        results += [ImageResult(str(item.input), "", "failed", error=item.reason, retriable=False)
                    for item in left_out if isinstance(item, LeftOut)]  # not the notes
        summary = _Summary(out / SUMMARY_NAME, results, summary_every)
        batch = BatchResult(results, out, summary.path, prms_format)
        todo, done_count = [], 0

        killed_run = _killed_on(out)  # kept, to be put back if its image does not run again in this run
        killed = killed_run.image if killed_run is not None else None

        def report(result: ImageResult) -> None:
            nonlocal done_count
            done_count += 1
            if killed is not None and os.path.abspath(result.image) == killed and result.status != "skipped":
                result.notes.append(KILLED_ON)  # a skipped image did not run, last or otherwise
            summary.update()
            if progress is not None:
                progress(result, done_count, len(results))

        from .model.checkpoint import load_model

        # loaded once, here (on the CPU for a cluster, whose workers load their own): its
        # fingerprint is recorded, and earlier outputs are compared with this run
        loaded = load_model(model if loaded_model is None else loaded_model,
                            device=device if client is None else "cpu")
        record = model_record(loaded, name=model_name or model_label(model))
        if client is None:
            model = loaded
        for index, result in enumerate(results[:len(paths)]):  # resume: complete outputs are kept
            if overwrite:
                todo.append(index)
                continue
            place = places[index]
            try:  # recovered above; read once in the run (`output_stems` may have read it)
                found = _manifest(*place)
            except ValueError:  # broken: replaced
                found = None
            existing = _complete_set(found, *place, prms_format=prms_format)
            leftovers = [p.name for p in io.prediction_paths(*place, prms_format=prms_format).values()
                         if p.exists()]
            if existing is not None or leftovers:
                if existing is not None:
                    reason = (_image_changed(existing.info, result.image)
                              or _other_run(existing.info, record, settings, loaded))
                elif prms_format is not None and _complete_set(found, *place) is not None:
                    reason = (f"{WITHOUT_PRMS} as {prms_format} (an earlier run wrote none, or another format); "
                              "use overwrite to write them")
                else:
                    reason = (f"outputs exist ({', '.join(leftovers)}) but are not a complete set; "
                              "use overwrite to replace them")
                results[index] = _skipped(result.image, result.stem, existing, reason)
                report(results[index])
            else:
                todo.append(index)
        # an image that killed the last run (the kernel ends a process out of memory) runs last,
        # so that it cannot stop a resumed run at the same place again and again
        last = [index for index in todo if os.path.abspath(results[index].image) == killed]
        todo = [index for index in todo if index not in last] + last
        summary.update(force=True)
        given_cancel = cancel
        cancel = lambda: check.is_cancelled(given_cancel)  # noqa: E731 (a callable or a threading.Event)
        stopped = False
        try:
            if client is None:
                _run_here(results, todo, model, out, settings=settings, overwrite=overwrite, prms_format=prms_format,
                          gather=gather, retries=retries, cancel=cancel, report=report, record=record,
                          plane_progress=plane_progress)
            else:
                _run_on_cluster(results, todo, client, model, out, device=device, torch_threads=torch_threads,
                                settings=settings, overwrite=overwrite, prms_format=prms_format, gather=gather,
                                retries=retries, cancel=cancel, report=report, max_in_flight=max_in_flight,
                                record=record)
        except BaseException:
            stopped = True  # Ctrl-C, SIGTERM (the command line's `Terminated`), an error: the run ends here
            raise
        finally:
            for result in results:
                # the images in progress were finished and recorded: the pending ones never started (or, stopped
                # by an interrupt, were cut short): "cancelled" however the run ended, as the command line's
                # Ctrl-C and the panel's Cancel both say (`record_written` marks those whose outputs got written)
                if result.status == "pending" and (stopped or cancel()):
                    result.status = "cancelled"
            try:
                summary.update(force=True)  # raises where another program holds summary.csv (Windows)
            finally:  # the run ended all the same: left, its marker said it was killed
                _settle_marker(out, killed_run, results, here=client is None)
        return batch


class FolderInUse(OSError):
    """Another run (of this process or another, on this host or another) is writing into the
    output folder (`predict_many`); its message names the folder and, where it can, the run."""


#: The folders whose lock a caller holds for the next run into it in this thread (`_folder_lock`).
_LENT = threading.local()


@contextlib.contextmanager
def _folder_lock(out: Path, *, lend: bool = False):
    """Hold ``<out>/<LOCK_NAME>`` exclusively while a run writes into ``out``; `FolderInUse` when
    another run holds it.

    With ``lend``, the caller holds it around a run (`predict_many`) in this thread: the run goes
    on under it, and a run that one starts (from its ``progress``) is refused as any other. The
    command line so records what an interrupted run left on disk (`record_written`) before it
    lets the folder go, once the cluster's workers stopped: a run started at the interrupt could
    otherwise rewrite ``summary.csv`` side by side with it.

    Two runs into one folder (a nightly job started while the last night's still runs) each
    predicted the images the other was predicting, and each rewrote ``summary.csv`` with its
    own view: the last one's said "written" of images it found done, and "skipped" of those the
    other wrote. The lock is the operating system's (``flock``; ``msvcrt.locking`` on
    Windows): a process that is killed lets it go, so no stale lock is left to remove. Where
    the file system has no locks, the run goes on without one.
    """
    lent, key = _LENT.__dict__.setdefault("folders", set()), os.path.realpath(out)
    if key in lent:  # the caller's, lent to one run at a time
        lent.remove(key)
        try:
            yield
        finally:
            lent.add(key)
        return
    path = out / LOCK_NAME
    while True:
        handle = _open_lock(path)
        locked = _try_lock(handle)
        if locked is None and handle.mode == "rb":  # NFS locks only a file open for writing (flock(2))
            handle.close()
            raise _unusable_lock(path, "not writable here, and this file system locks only a writable file")
        if locked is False:
            holder = _lock_holder(handle)
            handle.close()
            raise FolderInUse(f"another napari-prm run is writing into {out}{holder}: wait until it ends, "
                              "or write into another folder")
        try:  # the file this run locked may have been removed by the run before, which let it go
            if locked is None or os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
                break
        except OSError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"owner": owner_tag(), "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode("utf-8"))
        handle.flush()
    except OSError:  # who holds it is only for the message
        pass
    if lend:
        lent.add(key)
    try:
        yield
    finally:
        lent.discard(key)
        if os.name != "nt":  # removed while locked: a run that opens it next opens a new file
            with contextlib.suppress(OSError):
                path.unlink()
        handle.close()
        if os.name == "nt":  # an open file cannot be removed there: another run may hold it now
            with contextlib.suppress(OSError):
                path.unlink()


def _open_lock(path: Path):
    """``path`` opened to be locked (created where missing): for writing, so that the holder can
    say who it is (`_lock_holder`); else read-only, where a run of another user left it and it
    is not writable here (a lock needs no write access)."""
    try:
        return open(path, "a+b")
    except PermissionError as error:
        if not path.exists():  # the folder is not writable
            raise
        denied = error
    try:
        return open(path, "rb")
    except OSError as error:
        raise _unusable_lock(path, denied.strerror) from error


def _unusable_lock(path: Path, reason: str) -> PermissionError:
    """The error of a lock file that this user cannot lock (`_open_lock`), naming it and the fix."""
    return PermissionError(f"cannot lock {path}, the lock of the runs that write into {path.parent} ({reason}): "
                           "if no run is writing there, remove it (a run of another user may have left it), "
                           "or write into another folder")


def _try_lock(handle) -> bool | None:
    """Lock the open file ``handle`` without waiting: True, False (another holds it), or None
    (the file system has no locks)."""
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):
            return False
        return None
    return True


def _lock_holder(handle) -> str:
    """`` (process 123 on host, since 2026-01-01 02:00:00)``: who holds a lock, as its holder wrote; '' unknown."""
    try:
        handle.seek(0)
        found = json.loads(handle.read().decode("utf-8"))
        return f" (process {int(found['pid'])} on {found['host']}, since {found['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _settle_marker(out: Path, killed: _KilledRun | None, results: Sequence[ImageResult], *,
                   here: bool) -> None:
    """At the end of a run that was not killed: remove ``<out>/<RUNNING_NAME>`` (this run's
    own, when it ran ``here``), unless the image a killed run left in it has not run again (a
    cancel came first, or it is not among ``results``): then put the killed run's marker back,
    so that the next run still takes that image last."""
    marker = out / RUNNING_NAME
    pending = killed is not None and not any(
        os.path.abspath(result.image) == killed.image and result.status not in ("pending", "cancelled")
        for result in results)
    if pending:
        if here:  # this run's own marker replaced it
            with atomic_write(marker) as temp:
                temp.write_bytes(killed.content)
            # a marker of another host is judged by its age
            os.utime(marker, (killed.modified, killed.modified))
    elif here or killed is not None:  # a cluster writes none, but clears a killed run's
        marker.unlink(missing_ok=True)


def _mark_running(out: Path, image: str) -> None:
    """Write ``<out>/<RUNNING_NAME>``: this process is predicting ``image``."""
    with atomic_write(out / RUNNING_NAME) as temp:
        temp.write_text(json.dumps({"image": os.path.abspath(image), "owner": owner_tag()}), encoding="utf-8")


@dataclass(frozen=True)
class _KilledRun:
    """The ``<out>/<RUNNING_NAME>`` of a killed run: the image (absolute path) it was
    predicting, and the marker's bytes and modification time, to put it back as it was."""

    image: str
    content: bytes
    modified: float


def _killed_on(out: Path) -> _KilledRun | None:
    """The marker of a killed run in ``out``, read once; None when no run was killed there, or
    its process is still alive (then it is not ours to judge)."""
    path = out / RUNNING_NAME
    try:
        modified = path.stat().st_mtime
        content = path.read_bytes()
        found = json.loads(content.decode("utf-8"))
        image, owner = str(found["image"]), found.get("owner")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    owner = owner if isinstance(owner, str) and re.fullmatch(r".+-\d+-\d+", owner) else None
    return _KilledRun(image, content, modified) if owner_is_gone(owner, modified) else None


def _finish(results, index, result: ImageResult, attempts: int, report) -> None:
    result.attempts = attempts
    if result.status == "skipped" and attempts > 1:
        result.status = "written"  # an earlier attempt wrote them before its worker died
    results[index] = result
    report(result)


def _run_here(results, todo, model, out, *, settings, overwrite, prms_format, gather, retries,
              cancel, report, record, plane_progress=None) -> None:
    for index in todo:
        if cancel():
            return
        image, stem = results[index].image, results[index].stem
        _mark_running(out, image)
        attempts, result = 0, None
        while result is None or (result.status == "failed" and result.retriable and attempts <= retries):
            attempts += 1
            started = time.perf_counter()
            on_plane = None if plane_progress is None else (
                lambda done, total, image=image: plane_progress(image, done, total))
            try:
                result = predict_image(image, stem, out, model, settings=settings, overwrite=overwrite,
                                       prms_format=prms_format, gather=gather, model_record=record,
                                       plane_done=on_plane)
            except Exception as error:  # one bad image must not stop the batch
                result = _failed(image, stem, error, started)
        _finish(results, index, result, attempts, report)


def _run_on_cluster(results, todo, client, model, out, *, device, torch_threads, settings, overwrite,
                    prms_format, gather, retries, cancel, report, max_in_flight, record) -> None:
    from distributed import as_completed
    from distributed.client import ClosedClientError

    if not todo:
        return
    spec, checkpoint = model_spec(model, device=device, torch_threads=torch_threads)
    client.wait_for_workers(1, timeout=120)
    if max_in_flight is None:
        max_in_flight = 2 * max(1, sum(client.nthreads().values()))
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    plugin = None
    if checkpoint is not None:  # every worker gets the bytes once; tasks name them by hash
        plugin = f"napari-prm-checkpoint-{spec.sha256[:16]}"
        client.register_plugin(_checkpoint_plugin(spec.sha256, checkpoint), name=plugin)
    queue, attempts, in_flight = deque(todo), {}, {}
    completed = as_completed(loop=client.loop)  # bound to this client, not dask's default one
    run_token = os.urandom(4).hex()

    def submit(index: int) -> None:
        attempts[index] = attempts.get(index, 0) + 1
        result = results[index]
        future = client.submit(_run_task, result.image, result.stem, str(out), spec, dict(settings),
                               overwrite, prms_format, gather, record, pure=False,
                               key=f"napari-prm-{result.stem}-{run_token}-{attempts[index]}")
        in_flight[future] = index
        completed.add(future)

    stopping = False
    try:
        while in_flight or (queue and not stopping):
            while queue and not stopping and len(in_flight) < max_in_flight:
                submit(queue.popleft())
            finished = completed.next_batch(block=False)
            for future in finished:
                index = in_flight.pop(future)
                try:
                    result = future.result()
                except Exception as error:  # the worker died (KilledWorker) or the task was lost
                    reason = ("its worker died while running it (KilledWorker)"
                              if type(error).__name__ == "KilledWorker" else _describe_error(error))
                    result = ImageResult(results[index].image, results[index].stem, "failed", error=reason)
                future.release()
                if result.status == "failed" and result.retriable and attempts[index] <= retries and not stopping:
                    queue.appendleft(index)
                    continue
                _finish(results, index, result, attempts[index], report)
            if not stopping and cancel():
                # A running task cannot be stopped (cancelling its future only forgets it): it
                # would write its outputs after the batch returned and called them cancelled.
                # The images already sent to the workers (at most max_in_flight) finish and are
                # recorded; the others stay pending and become "cancelled".
                stopping = True
            if not finished:  # the workers have queued tasks: a short wait idles none of them
                time.sleep(0.05)
    finally:
        # the cluster may be gone (`timeout` and batch systems signal every process of the
        # command, the workers and the scheduler too): its error must not replace the
        # interrupt that ended the loop, so that the command still says what it wrote
        with contextlib.suppress(OSError, ClosedClientError):
            if in_flight:
                client.cancel(list(in_flight))
            if plugin is not None and client.status == "running":
                client.unregister_worker_plugin(plugin)


_PLUGIN_CLASS = None


def _checkpoint_plugin(sha256: str, data: bytes):
    """A `distributed.WorkerPlugin` that puts a checkpoint's bytes into each worker's cache.

    The scheduler keeps registered plugins and sets them up on workers that join later
    (or restart after a crash), which data scattered to the workers would not survive.
    The class is made here so that importing this module does not import distributed.
    """
    global _PLUGIN_CLASS
    if _PLUGIN_CLASS is None:
        from distributed import WorkerPlugin

        class CheckpointPlugin(WorkerPlugin):
            idempotent = True

            def __init__(self, sha256: str, data: bytes):
                self.sha256, self.data = sha256, data

            def setup(self, worker) -> None:
                from napari_prm import batch  # the worker's module, not a pickled copy of its globals

                batch._CHECKPOINTS[self.sha256] = self.data

            def teardown(self, worker) -> None:
                from napari_prm import batch

                batch._CHECKPOINTS.pop(self.sha256, None)

        _PLUGIN_CLASS = CheckpointPlugin
    return _PLUGIN_CLASS(sha256, data)


# --------------------------------------------------------------------------- clusters
def dashboard_link(client) -> str | None:
    """The dashboard of a cluster started by :func:`start_local_cluster`, None when it has none.

    Without bokeh no dashboard is served, yet ``client.dashboard_link`` still gives an
    address (``http://127.0.0.1:8787/status``, a 404), so it is not asked then.
    """
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return None
    return getattr(client.cluster, "dashboard_link", None) or None


def start_local_cluster(n_workers: int, *, dashboard: bool = True, **options):
    """A `distributed.Client` on a new `LocalCluster` of ``n_workers`` one-thread processes.

    A task whose worker dies is not re-run by the scheduler (``allowed-failures`` 0):
    `predict_many` retries it itself, so every image has the same number of attempts.

    Parameters
    ----------
    n_workers : int
        Worker processes (at least 1), each with one thread.
    dashboard : bool
        Serve the dashboard on a free port. It needs bokeh; without it there is none
        (``client.dashboard_link`` is then meaningless: :func:`dashboard_link` says None).
    **options
        Given to `LocalCluster` (they replace the settings above).

    Returns
    -------
    distributed.Client
        Close it and its cluster when done: ``client.close(); client.cluster.close()``.
    """
    import importlib.util
    import logging

    import dask
    from distributed import Client, LocalCluster

    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    dashboard = dashboard and importlib.util.find_spec("bokeh") is not None
    settings = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                "dashboard_address": ":0" if dashboard else None, "silence_logs": logging.ERROR, **options}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(**settings)
    return Client(cluster, set_as_default=False)  # dask.compute elsewhere keeps its own scheduler


# --------------------------------------------------------------------------- lazy results
def _padded(read, shape, dtype, *args):
    data = np.asarray(read(*args))
    padded = np.zeros(shape, dtype)
    padded[tuple(slice(0, n) for n in data.shape)] = data
    return padded


def label_shapes(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[int, int]]:
    """``(H, W)`` of label TIFFs (of each plane of a label stack), from their headers only.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        Label TIFFs; one path is one label image (``[(H, W)]``).
    """
    import tifffile

    shapes = []
    for path in check.path_list(paths):
        with tifffile.TiffFile(path) as tiff:
            shapes.append(tuple(int(n) for n in tiff.pages[0].shape[:2]))
    return shapes


def label_planes(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[int]:
    """The planes of label TIFFs: 1 for a 2-D label image, N for a stack's (``(N, H, W)``), from
    their headers only.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        Label TIFFs; one path is one label image (``[N]``).
    """
    import tifffile

    planes = []
    for path in check.path_list(paths):
        with tifffile.TiffFile(path) as tiff:
            planes.append(int(np.prod(tiff.series[0].shape[:-2])))
    return planes


def _label_plane(path, plane: int) -> np.ndarray:
    """One plane of a label image or stack, reading only its page (`napari_prm.io.read_plane`)."""
    from .io import read_label_image, read_plane

    labels = read_plane(path, plane, what="label image")
    if labels is None:  # not one page per plane: read whole
        labels = read_label_image(path)
        labels = labels.reshape(-1, *labels.shape[-2:])[plane]
    return labels


def label_stack(paths: str | os.PathLike | Sequence[str | os.PathLike]):
    """The label images as one lazy (N, H, W) uint32 dask array, each read when viewed.

    A label stack (a TIFF stack's outputs) gives one plane per plane, and showing a plane reads
    that plane's page only (`napari_prm.io.read_plane`). Images of other sizes are padded with
    0 at the bottom and right to the largest ``H`` and ``W``. Only the TIFF headers are read here.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        Label images (``BatchResult.label_paths()``); one path is one label image (or stack).

    Returns
    -------
    (N, H, W) uint32 dask array
        One plane per 2-D image or stack plane; ``(0, 1, 1)`` for no paths.
    """
    import dask
    import dask.array as da

    paths = check.path_list(paths)
    shapes = label_shapes(paths)
    if not shapes:
        return da.zeros((0, 1, 1), np.uint32)
    shape = tuple(int(n) for n in np.max(shapes, axis=0))
    planes = [da.from_delayed(dask.delayed(_padded)(_label_plane, shape, np.uint32, path, plane), shape, np.uint32)
              for path, count in zip(paths, label_planes(paths)) for plane in range(count)]
    return da.stack(planes)


def image_stack(paths: str | os.PathLike | Sequence[str | os.PathLike], shapes: Sequence[tuple[int, int]],
                planes: Sequence[int] | None = None):
    """The images as one lazy (N, H, W, 3) uint8 RGB dask array (padded like `label_stack`).

    ``shapes`` are the images' ``(H, W)`` (those of their label images); ``planes`` their
    planes (`label_planes`; default 1 each): a TIFF stack's planes (`napari_prm.io.read_stack`)
    are planes of the result, as in `label_stack`, each read from its own page when shown.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        The image files; one path is one image (``shapes`` then holds one ``(H, W)``).
    shapes : sequence of (int, int)
        Their ``(H, W)``, one per path.
    planes : sequence of int, optional
        Their planes; default 1 each.
    """
    import dask
    import dask.array as da

    paths = check.path_list(paths)
    if not paths:
        return da.zeros((0, 1, 1, 3), np.uint8)
    shape = tuple(int(n) for n in np.max(np.asarray(shapes), axis=0)) + (3,)
    planes = [1] * len(paths) if planes is None else planes
    layers = [da.from_delayed(dask.delayed(_padded)(_rgb8, shape, np.uint8, path, None if count == 1 else plane),
                              shape, np.uint8)
              for path, count in zip(paths, planes) for plane in range(count)]
    return da.stack(layers)


def _rgb8(path, plane: int | None = None) -> np.ndarray:
    from .io import as_rgb_float, read_image, read_plane, read_stack

    # a stack's plane: its page only (`read_plane`), else the stack read whole
    image = read_image(path) if plane is None else read_plane(path, plane)
    if image is None:
        image = read_stack(path).planes[plane]
    return (as_rgb_float(image) * 255).round().astype(np.uint8)
