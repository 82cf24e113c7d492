""""Run on a folder…": the predict widget's model and settings on every image of a folder.

The folder is searched (`napari_prm.batch.collect_images`, the outputs' names, the planes of its
TIFF stacks) and `napari_prm.batch.predict_many` runs in a worker thread, in napari's process or on a local
dask cluster of worker processes; a napari ``progress`` bar in the activity dock follows it,
counting planes as ``napari-prm predict``'s bar does (a TIFF stack's one by one in napari's
process, all at once when a worker process ran it), and Cancel stops it between images (so
does closing the panel, or taking it out of its dock; a closed panel opens no layers); a
Cancel during the folder search stops when the search ends, and one while the model loads (or the
worker processes start) when it is loaded, writing nothing (no summary). The
results open lazily: the images and their label images as two dask-backed stacks (one plane
per image, read when shown), so stepping through a thousand results reads only the planes
looked at.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from .. import batch
from .._text import plural
from ..io.fileset import KEPT_EDIT
from .activity import StopsOnClose
from .relay import _Relay
from .settings import no_path, persist_fields

DOCK_NAME = "PRM: run on a folder"
IMAGES_LAYER = "folder images"
LABELS_LAYER = "folder instances"
#: The `LABELS_LAYER` metadata key listing each plane's files (`folder_planes`).
FOLDER_PLANES = "folder_planes"
#: `LABELS_LAYER` layers painted since they opened (napari's paint, fill and erase): a new run keeps them
_painted: weakref.WeakSet = weakref.WeakSet()
_panels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def open_batch_panel(predict_widget) -> BatchPanel:
    """Show the "Run on a folder" panel of a predict widget (made once, then reused; docked
    again when its dock was closed)."""
    panel = _panels.get(predict_widget)
    if panel is None or panel._deleted:
        panel = _panels[predict_widget] = BatchPanel(predict_widget)
    window = getattr(predict_widget.viewer, "window", None)
    if window is not None and panel.native.parent() is None:  # new, or its dock was closed
        window.add_dock_widget(panel, name=DOCK_NAME, area="right", tabify=True)
    dock = panel.native.parent()
    if dock is None:  # no napari window (a viewer without one): a window of its own
        panel.show()
    else:
        dock.show()
        dock.raise_()
    return panel


def _note_painted(layer_ref, _event=None) -> None:
    """A stroke, fill or erase in a `LABELS_LAYER` (``layer_ref``, a weak reference): a new run keeps it."""
    layer = layer_ref()
    if layer is not None:
        _painted.add(layer)


class _NoImages(ValueError):
    """The image folder holds no image (its message says so, and why)."""


@dataclass(frozen=True)
class _CancelledBefore:
    """What the worker returns when Cancel came before any image was started (no image run, nothing
    written): what it was doing then, which the panel's message names."""

    doing: str


#: Cancel came while the worker searched the folder ...
_SEARCH_CANCELLED = _CancelledBefore("searching the folder")
#: ... or while it loaded the model (or started the worker processes), after the search.
_LOAD_CANCELLED = _CancelledBefore("loading the model")


@dataclass
class BatchSettings:
    """The panel's choices kept between sessions, as the other widgets keep theirs
    (`napari_prm._widgets.settings.persist_fields`): the folders, the worker processes and *include
    sub-folders*. A saved folder that has gone is put back all the same (shown; an image folder is
    said on the status line): *Run on folder* then says what is wrong with it (an output folder is
    created). *Recompute images that already have outputs* is not kept, as *Export*'s *overwrite* is
    not: replacing a folder's outputs is asked for each time."""

    inputs: str = ""
    out: str = ""
    workers: int = 0
    recursive: bool = False


@dataclass
class _Found:
    """The worker's first report: the images found, their planes, and the notes on them."""

    count: int
    tally: batch.PlaneTally
    left_out: str  # sub-folders not searched
    renamed: str  # outputs that do not take their image's name
    unlisted: str = ""  # images left out: folders that could not be listed, links to images that are gone


class BatchPanel(StopsOnClose, Container):
    """Predict every image of a folder with the settings of a predict widget.

    Parameters
    ----------
    predict_widget : PredictWidget
        Its model, device, preset, thresholds, classes, window and proposal source are
        used as its *Run* uses them (a Labels layer as proposal source cannot apply to
        other images: the built-in proposals are used instead).
    """

    def __init__(self, predict_widget):
        self._predict = predict_widget
        self._viewer = predict_widget.viewer
        self._inputs = FileEdit(label="image folder", mode="d")
        self._out = FileEdit(label="output folder", mode="d")
        self._workers = SpinBox(label="worker processes", value=0, min=0, max=os.cpu_count() or 1,
                                tooltip="0: one image after the other in napari's process; "
                                        "N: a local dask cluster of N processes")
        self._recursive = CheckBox(text="include sub-folders", value=False,
                                   tooltip="search the image folder's sub-folders too; the outputs "
                                           "mirror them (plate/A1/cat.png -> out/A1/cat_*)")
        self._overwrite = CheckBox(text="recompute images that already have outputs", value=False)
        self._run_button = PushButton(text="Run on folder")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # a long message must not widen the dock
        super().__init__(widgets=[self._inputs, self._out, self._recursive, self._workers, self._overwrite,
                                  self._run_button, self._cancel_button, self._status])
        # the folders, worker processes and sub-folders of the last session come back (not *recompute*)
        persist_fields("batch", BatchSettings, {"inputs": self._inputs, "out": self._out,
                                                "workers": self._workers, "recursive": self._recursive})
        if not no_path(self._inputs.value) and not Path(self._inputs.value).is_dir():  # shown, and said
            self._status.value = (f"The image folder of an earlier session, {self._inputs.value}, is no longer "
                                  "there: choose one.")
        self._run_button.changed.connect(lambda: self.start())
        self._cancel_button.changed.connect(lambda: self.cancel())
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._cancel = threading.Event()
        self.worker = None
        self._inputs_folder: Path | None = None
        self.result: batch.BatchResult | None = None
        self.progress_bar: progress | None = None
        self._tally: batch.PlaneTally | None = None
        self.last_message = ""
        self.found_message = ""  # the status line once the images were found: their count and the notes
        self._kept_note = ""  # the corrections this run kept (`_keep_corrections`), said when it ends
        # the runs started, and whether the latest still reports: napari's bar processes Qt events while it
        # redraws, so the run's end (queued after its last reports) can come inside `_on_progress`; the
        # end's message must stay, not be overwritten by that report's line when the slot resumes
        self._runs = 0
        self._reporting = False
        self._stop_on_close(self.native)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _say(self, message: str, kind: str = "info") -> None:
        self.last_message = message
        if not self._deleted:
            self._status.value = message
        {"info": show_info, "warning": show_warning, "error": show_error}[kind](message)

    def _folder(self, field) -> Path | None:
        value = field.value
        return None if no_path(value) else Path(value)

    def start(self):
        """Start the batch; returns the worker (None when refused)."""
        if self.running:
            self._say("A folder is already being processed: wait for it or press Cancel.", "warning")
            return None
        inputs, out = self._folder(self._inputs), self._folder(self._out)
        if inputs is None or out is None:
            self._say("Choose an image folder and an output folder.", "error")
            return None
        self._inputs_folder = inputs
        settings = self._predict._settings()
        if not isinstance(settings["proposals"], (str, type(None))):
            self._say("A Labels layer cannot give proposals for other images: using the built-in ones.",
                      "warning")
            settings["proposals"] = "default"
        workers = int(self._workers.value)
        if workers:
            import distributed  # noqa: F401  (imported on the Qt thread, not half-way in two)
        # before the run writes new label files and replaces the layer: the user's corrections stay
        self._kept_note = self._keep_corrections()
        self._cancel.clear()
        self._closed = False
        self._runs += 1
        self._reporting = True
        self.result = None
        self._tally = None
        self.found_message = ""
        # busy (no total) until the worker has found the images and counted their planes
        self.progress_bar = progress(total=0, desc="napari-prm: folder")
        # errored connected at creation: an error is reported here, not re-raised on the Qt thread
        # the check box's text read here: the worker reads no Qt widget
        recursive = (bool(self._recursive.value), f"tick '{self._recursive.text}' to search them")
        worker = self._job_worker(self._run, inputs, recursive, out, settings, workers,
                                  bool(self._overwrite.value), _start_thread=False,
                                  _connect={"errored": self._on_error})
        worker.returned.connect(self._on_done)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._run_button.enabled = False
        self._cancel_button.enabled = True
        self._status.value = f"Looking for images in {inputs}…"
        worker.start()
        return worker

    def _keep_corrections(self) -> str:
        """Keep the `LABELS_LAYER` painted since it opened as a hidden copy, ``folder instances
        (corrected)`` (`add_kept_copy`), whose planes that differ from their label files are held in
        memory (a new run may write those files again) and the others read from the files, as
        *Learn from corrections* and *Export* take the layer. Returns what to say ("" when nothing
        was kept)."""
        import dask.array as da

        from .layers import add_kept_copy

        layer = self._viewer.layers[LABELS_LAYER] if LABELS_LAYER in self._viewer.layers else None
        planes = folder_planes(layer) if layer is not None and layer in _painted else None
        if not planes:
            return ""
        corrected = [index for index, (_, labels, _, _) in enumerate(planes) if labels() is not None]
        if not corrected:
            return ""
        data = da.stack([da.from_array(np.asarray(layer.data[index])) if index in corrected else layer.data[index]
                         for index in range(len(planes))])
        kept = add_kept_copy(self._viewer, layer, data)
        names = [planes[index][3].removeprefix(f"{layer.name}: ") for index in corrected]
        shown = ", ".join(names[:3]) + (f", … ({len(names) - 3} more)" if len(names) > 3 else "")
        return (f"Your corrections of {layer.name!r} ({plural(len(names), 'plane')}: {shown}) were kept as "
                f"{kept.name!r} (hidden): tick it in Learn from corrections.")

    def _run(self, inputs: Path, recursive: tuple[bool, str], out: Path, settings: dict, workers: int,
             overwrite: bool):
        """Worker thread: the folder's images (a folder of thousands, or on a network share, takes
        seconds to list, name and count the planes of), the model with the widget's window size,
        then `predict_many`. ``recursive``: whether sub-folders are searched, and what to tick to
        search those left out (read from the check box by `start`)."""
        from ..model.checkpoint import load_model

        images, problems = batch.collect_images(
            [inputs], recursive=recursive[0], search_hint=recursive[1])
        if self._cancel.is_set():  # cancelled while searching: nothing ran, nothing is written
            return _SEARCH_CANCELLED
        if not images:
            raise _NoImages("; ".join(problems) or f"No images in {inputs}.")
        # named by their path in the folder: a sub-folder's images mirror it under the output folder
        stems = batch.output_stems(images, roots=[inputs], out=out)
        # the command line's notes: sub-folders left out, outputs that do not take their image's name
        left_out = "; ".join(problem.removeprefix(batch.NOTE) for problem in problems if problem.startswith(batch.NOTE))
        # not notes: images missing from the run (a folder that could not be listed, a link to an image that is
        # gone), failed rows of the run's result (`predict_many`'s left_out), named with the failures at the end
        unlisted = "; ".join(problem for problem in problems if not problem.startswith(batch.NOTE))
        renamed = "; ".join(note.removeprefix(batch.NOTE) for note in batch.renamed_notes(images, stems, out))
        # the bar counts planes, as predict's does: a TIFF stack's N (from its header), a 2-D image's 1
        tally = batch.PlaneTally(images)
        if self._cancel.is_set():  # as above: no summary of images all "cancelled"
            return _SEARCH_CANCELLED
        self._relay.progressed.emit(_Found(len(images), tally, left_out, renamed, unlisted))
        model = load_model(settings["model"], device=settings["device"])
        model.network.win_size = model.settings["win_size"] = settings["window"]
        # as the widget's Run: the preset, and the thresholds the user set (else the calibrated ones)
        options = {"preset": settings["preset"], "classes": settings["classes"], "proposals": settings["proposals"],
                   **self._predict.threshold_overrides(settings)}
        if settings.get("input_size") is not None:
            options["input_size"] = settings["input_size"]
        # cancelled while the model loaded: no cluster is started (seconds), and no summary is written whose
        # every image is "cancelled" (nothing ran); so too when it came while the cluster started
        if self._cancel.is_set():
            return _LOAD_CANCELLED
        client = batch.start_local_cluster(workers) if workers else None
        try:
            if self._cancel.is_set():
                return _LOAD_CANCELLED
            return batch.predict_many(
                images, model, out, client, stems=stems, overwrite=overwrite, device=settings["device"],
                progress=lambda result, done, total: self._relay.progressed.emit((result, done, total)),
                plane_progress=lambda image, done, _planes: self._relay.progressed.emit((image, done)),
                cancel=self._cancel.is_set, model_name=batch.model_label(settings["model"]),
                left_out=[problem for problem in problems if isinstance(problem, batch.LeftOut)], **options)
        finally:
            if client is not None:
                cluster = client.cluster
                client.close()
                cluster.close()

    def _on_error(self, error: Exception) -> None:
        self._reporting = False  # a report still queued, or a slot resumed after this, says nothing more
        kept = f" {self._kept_note}" if self._kept_note else ""
        if isinstance(error, _NoImages):  # the folder's fault, said as it is
            self._say(f"{error}{kept}", "error")
        else:
            self._say(f"The folder run failed: {type(error).__name__}: {error}{kept}", "error")

    def _on_found(self, found: _Found) -> None:
        """The worker found the images: the bar's total, and the notes in the status line."""
        self._tally = found.tally
        if self.progress_bar is not None:
            self.progress_bar.total = found.tally.total
        notes = "; ".join(note for note in (found.unlisted, found.left_out, found.renamed) if note)
        self.found_message = f"Predicting {plural(found.count, 'image')} of {self._inputs_folder}…" + (
            f" Note: {notes}" if notes else "")
        if not self._deleted:
            self._status.value = self.found_message
        if found.renamed:  # where the outputs go: still there in the notifications when the status moves on
            show_info(f"Note: {found.renamed}")

    def cancel(self) -> None:
        """Stop between images; what was written stays, and a new run resumes from there."""
        if self.worker is not None:
            self._cancel.set()

    def _on_progress(self, report) -> None:
        """The images found (`_Found`), a plane done, ``(image, planes done of it)``, or an image,
        ``(ImageResult, images done, images)``.

        Nothing is shown once the run has ended (`_on_done`, `_on_error`): the bar's update processes
        Qt events, so the end may be handled during it; the end's message is the last word.
        """
        if not self._reporting:
            return
        run = self._runs
        if isinstance(report, _Found):
            self._on_found(report)
            return
        if len(report) == 2:
            image, planes_done = report
            self._count(self._tally.plane_done(image, planes_done))
            return
        result, done, total = report
        self._count(self._tally.image_done(result.image))
        if not self._deleted and self._reporting and self._runs == run:  # not ended during the bar's update
            self._status.value = f"{done}/{total}: {Path(result.image).name} {result.status}"

    def _count(self, planes_done: int) -> None:
        if self.progress_bar is not None:
            self.progress_bar.update(planes_done - self.progress_bar.n)

    def _on_done(self, result) -> None:
        self._reporting = False  # as in `_on_error`: this message stays on the status line
        why = "Stopped as the panel was closed" if self._closed else "Cancelled"
        if isinstance(result, _CancelledBefore):  # no image was started: no summary, no layers
            self._say(f"{why} while {result.doing}: nothing was predicted or written (no summary)."
                      + (f" {self._kept_note}" if self._kept_note else ""))
            return
        self.result = result
        counts = {status: len(result.with_status(status)) for status in ("written", "skipped", "failed")}
        cancelled = len(result.with_status("cancelled"))
        message = (f"{why if cancelled else 'Done'}: {counts['written']} written, "
                   f"{counts['skipped']} skipped, {counts['failed']} failed"
                   + (f", {cancelled} not done" if cancelled else "") + self._skip_reasons(result)
                   + self._failures(result)
                   + f"; summary: {result.summary}"
                   + (f". {self._kept_note}" if self._kept_note else "") + self._kept_edits(result))
        if not self._closed:  # a closed panel adds no layers; what was written stays on disk
            self.open_results(result)
        self._say(message, "warning" if counts["failed"] or self._kept_edits(result) else "info")

    def _name(self, image: str) -> str:
        """An image's name in messages and plane names: its path in the image folder."""
        folder = self._inputs_folder
        return (Path(os.path.relpath(image, folder)).as_posix()
                if folder is not None and Path(image).is_relative_to(folder) else Path(image).name)

    def _failures(self, result: batch.BatchResult, shown: int = 3) -> str:
        """Which images failed and why (up to ``shown`` of them; summary.csv has all), as the
        command line prints each failure."""
        failed = result.with_status("failed")
        if not failed:
            return ""
        more = f"; ... ({len(failed) - shown} more)" if len(failed) > shown else ""
        return "; failed: " + "; ".join(f"{self._name(r.image)}: {r.error}" for r in failed[:shown]) + more

    def _kept_edits(self, result: batch.BatchResult, shown: int = 3) -> str:
        """The label files (and other outputs) corrected by hand that the run kept beside the new ones
        before replacing them (`napari_prm.batch.predict_image`'s notes), as the command line says each."""
        edits = [note for r in result.results for note in r.notes if note.startswith(KEPT_EDIT)]
        if not edits:
            return ""
        more = f"; ... ({len(edits) - shown} more)" if len(edits) > shown else ""
        return ". " + "; ".join(note.removeprefix(KEPT_EDIT) for note in edits[:shown]) + more

    def _skip_reasons(self, result: batch.BatchResult) -> str:
        """Why images were skipped, a group per reason naming (up to five of) its images."""
        skipped = result.skip_summary(self._name)
        return f"; {skipped} — tick '{self._overwrite.text}' to replace them" if skipped else ""

    def open_results(self, result: batch.BatchResult) -> None:
        """Show the images with outputs and their labels as lazy stacks, one plane each (a TIFF
        stack's planes one each)."""
        done = result.with_outputs()
        if not done:
            return
        label_paths = [result.labels_path(r) for r in done]
        labels = batch.label_stack(label_paths)
        planes = batch.label_planes(label_paths)  # a stack's planes are planes here too
        shapes = batch.label_shapes(label_paths)  # each file's header, read once
        images = batch.image_stack([r.image for r in done], shapes, planes)
        metadata = {"images": [r.image for r in done], "labels": [str(p) for p in label_paths],
                    "summary": str(result.summary)}
        names = [self._name(r.image) for r in done]  # an image in a sub-folder: its path there
        names = [name if count == 1 else f"{name} (plane {plane + 1} of {count})"
                 for name, count in zip(names, planes) for plane in range(count)]
        # each plane's files and size: Learn from corrections reads a corrected plane's image from its file
        sources = [{"image": r.image, "labels": str(path), "plane": plane if count > 1 else None,
                    "shape": list(shape)}
                   for r, path, count, shape in zip(done, label_paths, planes, shapes)
                   for plane in range(count)]
        for name, data, add in ((IMAGES_LAYER, images, self._viewer.add_image),
                                (LABELS_LAYER, labels, self._viewer.add_labels)):
            if name in self._viewer.layers:  # reuse the layers of an earlier run
                self._viewer.layers.remove(name)
            options = {"rgb": True} if add == self._viewer.add_image else {}
            extra = {FOLDER_PLANES: sources} if name == LABELS_LAYER else {}
            added = add(data, name=name, metadata={**metadata, "plane_names": names, **extra}, **options)
            if name == LABELS_LAYER:  # painted (a stroke, a fill) is kept by the next run (`_keep_corrections`)
                added.events.paint.connect(partial(_note_painted, weakref.ref(added)))
        self._viewer.dims.set_current_step(0, 0)

    def _on_finished(self) -> None:
        if self.progress_bar is not None:
            self.progress_bar.close()
        self.worker = None
        if not self._deleted:
            self._run_button.enabled = True
            self._cancel_button.enabled = False


# ---------------------------------------------------------------------- Learn from corrections
@dataclass(frozen=True)
class FolderImage:
    """Reads, when called (in a worker), the image of one plane of a folder run's `LABELS_LAYER` as the
    run read it (`napari_prm.io.images._read_image_file`: a stack's plane, or the 2-D image, with
    ``channels``: the model's), at the size of its labels (the layer's planes are padded)."""

    path: str
    plane: int | None  # of a TIFF stack; None: a 2-D image

    def __call__(self, channels=None) -> np.ndarray:
        from ..io.images import _read_image_file

        read, _ = _read_image_file(self.path, channels)
        return read if self.plane is None else read.planes[self.plane]


def _corrected_plane(data, index: int, labels_file: str, plane: int | None, shape) -> np.ndarray | None:
    """Plane ``index`` of a folder run's labels as the layer holds it now, less the padding; None when it is
    the labels the run wrote (``labels_file``'s plane): not corrected."""
    height, width = shape
    now = np.asarray(data[index])[:height, :width]
    written = batch._label_plane(labels_file, plane or 0)
    return None if now.shape == written.shape and np.array_equal(now, written) else now


def _plane_table(labels_file: str) -> dict | None:
    """The classes of a label file's instances: its instance CSV (`sidecar_csv`), None without one."""
    from .. import io
    from .._writer import sidecar_csv

    table = sidecar_csv(labels_file)
    return io.read_instances_csv(table) if table.is_file() else None


def folder_planes(labels_layer) -> list[tuple] | None:
    """What *Learn from corrections* learns from in a folder run's `LABELS_LAYER` (its metadata's
    `FOLDER_PLANES`), as `napari_prm._widgets.refine.layer_planes` gives it: per plane ``(image reader
    (`FolderImage`), labels reader (None when the plane is as the run wrote it), class table reader,
    source)``, each read in the worker; None for another layer.

    The images come from their files (the run's images: the `IMAGES_LAYER` need not be open), the
    classes from each image's instance CSV; labels painted since have none (their extent is learnt).
    """
    sources = (labels_layer.metadata or {}).get(FOLDER_PLANES)
    data = labels_layer.data
    if not sources or labels_layer.multiscale or data.ndim != 3 or len(sources) != data.shape[0]:
        return None
    names = (labels_layer.metadata or {}).get("plane_names") or [Path(s["image"]).name for s in sources]
    return [(FolderImage(source["image"], source["plane"]),
             partial(_corrected_plane, data, index, source["labels"], source["plane"], tuple(source["shape"])),
             partial(_plane_table, source["labels"]),
             f"{labels_layer.name}: {name}")
            for index, (source, name) in enumerate(zip(sources, names))]
