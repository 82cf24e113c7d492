"""The "Export instances" dock widget: a Labels layer and its class table to files.

All formats are :func:`napari_prm.io.export_instances`'; files are written atomically. The
*Export* button writes in a worker thread; its *Cancel* stops it between steps (a lazy layer's
planes, the COCO RLE, each file), leaving no file of the export and earlier files as they were;
closing the widget, taking it out of its dock or closing napari stops it the same way.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info

from .. import io
from .._validate import Cancelled, raise_if_cancelled
from .._writer import files_pixel_size, layer_table
from .activity import ActivityProgress, StopsOnClose
from .layers import (
    INSTANCES_SUFFIX,
    LABELS_FILE_SUFFIX,
    NEW_LABELS_SUFFIX,
    choose_layer,
    image_file_name,
    image_layer_of,
    named_image,
    uncounted_name,
    unpaired_message,
)
from .models import unwrap_viewer
from .settings import persist_fields

FORMATS = {"tiff": "label TIFF", "png": "label PNG (up to 65535 labels)",
           "coco": "COCO JSON (RLE)", "csv": "instance CSV"}
@dataclass
class ExportSettings:
    """The export widget's choices kept between sessions (the file stem and *overwrite* are not:
    the stem offered follows the layer, one typed stays with its layer for the session, and
    replacing files is asked for each layer)."""

    folder: str = str(Path.home())
    tiff: bool = True
    png: bool = False
    coco: bool = True
    csv: bool = True


#: Formats of 2-D labels only: the widget leaves them out of a stack's export, and says so.
FLAT_FORMATS = ("png", "coco")


def default_stem(viewer, labels_layer) -> str:
    """The file stem an export of ``labels_layer`` is offered: its source image's name.

    The image layer the instances annotate (`image_layer_of`: the one they were computed on, or
    the one they are named after): the stem of the file it was opened from (``chelsea.png`` gives
    ``chelsea``, ``cells.ome.tif`` ``cells``: `napari_prm.io.image_stem`), else its layer name.
    Without that layer, the ``image_file_name`` the instances recorded; without either, the Labels
    layer's name less its `` instances`` suffix (or the ``_labels`` of an exported label image
    opened again, or napari's `` - Labels``). So the files
    are ``chelsea_labels.tif``, ``chelsea_instances.csv``, …, matched to ``chelsea.png`` by their
    stem (``refine --masks``).
    """
    metadata = labels_layer.metadata or {}
    image_name = metadata.get("image_layer")
    file_name = str(metadata.get("image_file_name") or "")
    image = image_layer_of(viewer, labels_layer)
    if image is not None:
        name = image_file_name(image)
        stem = io.image_stem(name) if name != image.name else name  # cells.ome.tif: cells
    elif file_name:  # a file's name, or the layer's name where the image had no file
        stem = file_name if file_name == image_name else io.image_stem(file_name)
    else:
        stem = uncounted_name(labels_layer.name)  # "cells_labels [1]": opened twice
        for suffix in (INSTANCES_SUFFIX, LABELS_FILE_SUFFIX, NEW_LABELS_SUFFIX):
            stem = stem.removesuffix(suffix)
    return re.sub(r"[^\w.-]+", "_", stem).strip("_") or "labels"


class ExportWidget(StopsOnClose, Container):
    """Export a (corrected) Labels layer with its classes.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer):
        self._viewer = unwrap_viewer(napari_viewer)
        self._layer = ComboBox(label="labels", choices=self._labels_choices)
        self._folder = FileEdit(label="folder", mode="d", value=str(Path.home()))
        self._stem = LineEdit(label="file stem", value="")
        self._offered_stem = ""  # the stem `_default_stem` put in the field last
        self._stem_layer = None  # the layer whose stem the field holds
        # stems the user typed, each kept for its own layer: one typed for layer A and left in the
        # field when B is selected would write B's labels under A's name
        self._typed_stems: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._formats = {key: CheckBox(text=text, value=key != "png")
                         for key, text in FORMATS.items()}
        self._overwrite = CheckBox(text="overwrite existing files", value=False)
        self._button = PushButton(text="Export")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # a long message must not widen the dock
        super().__init__(widgets=[self._layer, self._folder, self._stem, *self._formats.values(),
                                  self._overwrite, self._button, self._cancel_button, self._status])
        # the folder and formats of the last export come back in the next session
        persist_fields("export", ExportSettings, {"folder": self._folder, **self._formats},
                       usable=lambda field, value: field != "folder" or (str(value) != "" and Path(value).is_dir()))
        self._layer.changed.connect(self._default_stem)
        self._button.changed.connect(lambda: self.start())  # written in a worker thread
        self._cancel_button.changed.connect(lambda: self.cancel())
        self._cancel = threading.Event()  # set by Cancel: the worker's export stops before its next step
        # the Labels layer selected, else the top one of the list (added last: a run's instances, which
        # leaves its peaks selected, not the label image given as its proposals, further down)
        active = self._viewer.layers.selection.active
        labels_layers = [layer for layer in self._viewer.layers if isinstance(layer, Labels)]
        self._follow(active if isinstance(active, Labels) or not labels_layers else labels_layers[-1])
        self._viewer.layers.selection.events.active.connect(lambda event: self._follow(event.value))
        self._default_stem()
        self.last_written: list[Path] = []
        self.worker = None  # the export being written in a worker thread (`start`)
        self.progress_bar: ActivityProgress | None = None  # in the activity dock, with its own cancel button
        # closed, out of its dock or napari closed: an export being written stops as Cancel stops it
        self._stop_on_close(self.native)

    def _labels_choices(self, _=None):
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _follow(self, layer) -> None:
        """Make the Labels layer selected in the layer list (or opened last) the one to export."""
        if not isinstance(layer, Labels) or layer is self._layer.value:
            return
        try:
            choose_layer(self._layer, layer)
        except RuntimeError:  # the widget was closed; napari may still emit layer events
            pass

    def _default_stem(self, *_):
        """Show the chosen layer's stem: the one the user typed for that layer, else its
        `default_stem`. A stem typed (one that is not the stem offered, nor empty) is kept for
        the layer left, and *overwrite* unticks: it was asked for that layer's files."""
        layer = self._layer.value
        if layer is self._stem_layer:
            return
        left, typed = self._stem_layer, self._stem.value
        if left is not None:
            if typed not in ("", self._offered_stem):
                self._typed_stems[left] = typed
            else:
                self._typed_stems.pop(left, None)
            self._overwrite.value = False
        self._stem_layer = layer
        if layer is None:
            return
        self._offered_stem = default_stem(self._viewer, layer)
        self._stem.value = self._typed_stems.get(layer, self._offered_stem)

    def _say(self, message: str, error: bool = False) -> None:
        if not self._deleted:
            self._status.value = message
        (show_error if error else show_info)(message)

    @property
    def running(self) -> bool:
        """Whether an export started by the *Export* button is being written (in a worker thread)."""
        return self.worker is not None

    def export(self, folder=None, *, formats=None, stem: str | None = None,
               overwrite: bool | None = None) -> list[Path]:
        """Write the chosen layer and return the files written; arguments override the widget's
        fields (for scripts). Written here, on the calling thread: the *Export* button writes in a
        worker thread instead (`start`)."""
        job = self._job(folder, formats=formats, stem=stem, overwrite=overwrite)
        if job is None:
            return []
        try:
            written = _write(job)
        except (ValueError, OSError) as error:
            self._failed(job, error)
            return []
        return self._done(job, written)

    def start(self, folder=None, *, formats=None, stem: str | None = None, overwrite: bool | None = None):
        """Write the chosen layer in a worker thread, as the *Export* button does: napari stays
        responsive while a large label image's COCO RLE or CSV is written. The labels are copied
        first, so edits made meanwhile are not in the files.

        Returns the worker (its ``returned`` gives the files written); None when refused (said),
        also while an export is being written."""
        if self.running:
            self._say("An export is already being written: wait for it to finish.", True)
            return None
        job = self._job(folder, formats=formats, stem=stem, overwrite=overwrite)
        if job is None:
            return None
        # the pixels as they are now (a lazy layer's, a folder run's dask stack, are read in the worker)
        if isinstance(job.labels, np.ndarray) and np.shares_memory(job.labels, self._layer.value.data):
            job.labels = job.labels.copy()
        self._cancel.clear()
        self._closed = False
        # errored connected at creation: an error is reported here, not re-raised on the Qt thread
        worker = self._job_worker(_write_unless_cancelled, job, self._cancel, _start_thread=False, _connect={
            "errored": lambda error: self._failed(job, error)})
        worker.returned.connect(lambda written: self._done(job, written))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._button.enabled = False
        self._cancel_button.enabled = True
        # no total: busy
        self.progress_bar = ActivityProgress(f"napari-prm: exporting {job.stem}", on_cancel=self.cancel)
        self._status.value = f"Exporting {job.stem} to {job.folder}…"
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the export being written before its next step (a plane of a lazy layer, the COCO RLE, a
        file): no file of it is left, and earlier files of its stem stay as they were. Once its files are
        switched in, it is done: nothing to stop. Closing the widget, or napari, does the same."""
        if self.worker is not None:
            self._cancel.set()
            if not self._deleted:
                self._status.value = "Cancelling the export…"

    def _on_finished(self) -> None:
        if self.progress_bar is not None:
            self.progress_bar.close()
            self.progress_bar = None
        self.worker = None
        if not self._deleted:
            self._button.enabled = True
            self._cancel_button.enabled = False

    def _job(self, folder, *, formats, stem, overwrite) -> _Job | None:
        """What to write, from the fields and the arguments; None when refused (said)."""
        layer = self._layer.value
        if layer is None:
            self._say("No Labels layer to export: run a prediction or open labels first.", True)
            return None
        if folder is None and not str(self._folder.line_edit.value).strip():
            # a cleared field: its value would be the working directory, wherever napari started
            self._say("Choose a folder to export into.", True)
            return None
        folder = Path(folder if folder is not None else self._folder.value)
        labels = layer.data
        if isinstance(labels, np.ndarray) or layer.multiscale or not hasattr(labels, "__array__"):
            labels = np.asarray(labels)
        # else a lazy array (a folder run's dask stack of label files): read by `_write`, in the worker
        skipped = []
        if formats is None:
            formats = [key for key, box in self._formats.items() if box.value]
            if labels.ndim > 2:  # a stack: the ticked 2-D formats are left out, and said so
                skipped = [key for key in formats if key in FLAT_FORMATS]
                formats = [key for key in formats if key not in FLAT_FORMATS]
        else:
            formats = list(formats)
        flat_only = " and ".join(FORMATS[key] for key in skipped)
        if not formats:
            self._say(f"A stack is written as a label TIFF and an instance CSV: tick one of them ({flat_only} "
                      "hold 2-D labels only)." if skipped else "Choose at least one format.", True)
            return None
        class_names = (layer.metadata or {}).get("class_names")
        # a run records its image's file; a Labels layer no run made goes with its image layer
        file_name = str((layer.metadata or {}).get("image_file_name") or "")
        unpaired = ""
        if not file_name and (image := image_layer_of(self._viewer, layer)) is not None:
            file_name = image_file_name(image)
        elif not file_name and named_image(layer) and not _folder_run_stack(layer):
            # its image is gone: no other image is taken for it
            unpaired = f" No image file name recorded: {unpaired_message(layer)}."
        world = {"scale": layer.scale, "translate": layer.translate,
                 "units": [str(unit) for unit in getattr(layer, "units", ())]}
        note = (f" Not written: {flat_only}, which hold 2-D labels only (this layer is a stack of "
                f"{int(np.prod(labels.shape[:-2]))} planes)." if skipped else "")
        return _Job(labels=labels, table=layer_table({"features": layer.features}), class_names=class_names,
                    folder=folder, formats=formats, stem=stem or self._stem.value or "labels",
                    overwrite=self._overwrite.value if overwrite is None else overwrite, file_name=file_name,
                    world=world, pixel_size=file_pixel_size(self._viewer, layer, labels.shape, world),
                    axes=label_axes(self._viewer, layer), note=note + unpaired)

    def _failed(self, job: _Job, error: Exception) -> None:
        if isinstance(error, FileExistsError):  # its message speaks to callers of the function
            reason = re.sub(r"; pass overwrite=True to replace( it)?$", "", str(error))
            self._say(f"Export failed: {reason}; tick '{self._overwrite.text}' to replace them, "
                      "or choose another file stem.", True)
        elif isinstance(error, (ValueError, OSError)):
            self._say(f"Export failed: {error}", True)
        else:  # unexpected (a worker's): its type says what went wrong
            self._say(f"Export failed: {type(error).__name__}: {error}", True)

    def _done(self, job: _Job, written: list[Path] | None) -> list[Path]:
        if written is None:  # cancelled (`_write_unless_cancelled`)
            self.last_written = []
            why = "Export stopped as the widget was closed" if self._closed else "Export cancelled"
            self._say(f"{why}: nothing was written to {job.folder} (files already there are as they "
                      "were).")
            return []
        self.last_written = written
        self._say(f"Wrote {', '.join(p.name for p in written)} to {job.folder}.{job.note}")
        return written


def label_axes(viewer, layer) -> str | None:
    """The axes a Labels layer's label TIFF names (``"ZYX"``, ``"TYX"``; None: unnamed), from the
    names of its axes (`napari_prm.io.label_axes_from_names`): its own ``axis_labels`` where the
    user named them, else those of the viewer's axes it is on (its axes are the viewer's last
    ``layer.ndim``, as napari places them)."""
    if layer.ndim < 3:
        return None
    own = [str(name) for name in layer.axis_labels]
    viewers = [str(name) for name in viewer.dims.axis_labels][viewer.dims.ndim - layer.ndim:]
    if len(viewers) != len(own):  # not on this viewer's axes
        viewers = own
    return io.label_axes_from_names([theirs if re.fullmatch(r"-?\d+", mine) else mine
                                     for mine, theirs in zip(own, viewers)])


def file_pixel_size(viewer, layer, shape: tuple, world: dict) -> dict | None:
    """`napari_prm._writer.files_pixel_size` of a Labels layer: the pixel size that the file of its image
    records (`image_layer_of`: a run's image, or the one a layer no run made goes with; one of the labels'
    height and width, at their scale), else the label TIFF it was opened from (``metadata["source"]``, as
    napari-prm's reader records it), for a layer in pixels (or at that pixel size, without a unit).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the layer is in, for its image layer.
    layer : napari.layers.Labels
        The layer exported.
    shape : tuple of int
        The shape of the labels exported.
    world : dict
        The layer's ``scale``, ``translate`` and ``units``, as they are exported.
    """
    files = []
    image = image_layer_of(viewer, layer)
    if image is not None and np.allclose(np.asarray(image.scale)[-2:], np.asarray(world["scale"])[-2:]):
        data = image.data[0] if image.multiscale else image.data
        if tuple(data.shape[-3:-1] if image.rgb else data.shape[-2:]) == tuple(shape[-2:]):
            files.append(getattr(getattr(image, "source", None), "path", None))
    files.append((layer.metadata or {}).get("source"))
    return files_pixel_size(world, files)


@dataclass
class _Job:
    """One export: the labels (a copy, for a worker thread) and what `io.export_instances` is given."""

    labels: np.ndarray  # or a lazy array (dask), read in `_write`
    table: dict | None
    class_names: list | None
    folder: Path
    formats: list
    stem: str
    overwrite: bool
    file_name: str
    world: dict
    pixel_size: dict | None  # the pixel size its files record, for a layer in pixels (`file_pixel_size`)
    axes: str | None  # a stack's, named in its label TIFF (None: tifffile's unnamed Q)
    note: str  # said after the files written: formats left out, an image file name not recorded


def _folder_run_stack(layer) -> bool:
    """Whether ``layer`` is *Run on folder*'s stack (or a copy of it): its planes are of the folder's images, not
    of one image named by the layer (``folder instances`` names no image ``folder``)."""
    from .batch import FOLDER_PLANES, LABELS_LAYER

    return FOLDER_PLANES in (layer.metadata or {}) or uncounted_name(layer.name) == LABELS_LAYER


def _write(job: _Job, cancel=None) -> list[Path]:
    """Write ``job`` (on any thread: no Qt here); lazy labels are read here, a plane at a time.

    Raises `Cancelled` when ``cancel`` (an Event) is set before the files are switched in: then
    no file of the export is left."""
    return io.export_instances(_read_labels(job.labels, cancel), job.table, job.class_names, job.folder,
                               formats=job.formats, stem=job.stem, overwrite=job.overwrite,
                               image_file_name=job.file_name, world=job.world, pixel_size=job.pixel_size,
                               axes=job.axes, cancel=cancel)


def _write_unless_cancelled(job: _Job, cancel: threading.Event) -> list[Path] | None:
    """The *Export* button's worker: `_write`, or None when cancelled (nothing written)."""
    try:
        return _write(job, cancel)
    except Cancelled:
        return None


def _read_labels(labels, cancel=None) -> np.ndarray:
    """``labels`` in memory: a lazy stack (a folder run's dask stack of label files) read a plane at a time,
    ``cancel`` (an Event) checked before each."""
    if isinstance(labels, np.ndarray) or labels.ndim < 3:
        return np.asarray(labels)
    out = np.empty(labels.shape, labels.dtype)
    for plane in np.ndindex(*labels.shape[:-2]):
        raise_if_cancelled(cancel, "export cancelled")
        out[plane] = np.asarray(labels[plane])
    return out
