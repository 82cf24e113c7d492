"""The "Learn from corrections" dock widget: :func:`napari_prm.refine.refine` in a worker thread.

It takes the Labels layers the user corrected (each with the image it belongs to) or
corrected masks on disk, trains the model's refinement head on them, saves the model
with its head and offers it to the "Peak Response Maps" widget, whose next *Run* then
cuts its instances from the head (proposals ``auto``). Run, correct, learn, run on the
next image: the loop never leaves napari.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Select, SpinBox
from napari.layers import Labels
from napari.utils import progress
from napari.utils.notifications import show_error, show_info

from .._text import first_names, plural
from ..io import channels_for
from ..refine import RefineResult, correction_from_layer, load_corrections, refine
from ..refine.corrections import other_class_warning
from .activity import StopsOnClose
from .batch import FolderImage, folder_planes
from .layers import (
    _array_plane,
    corrections_kept_of,
    image_layer_of,
    labels_shape,
    level_of_shape,
    level_planes,
    plane_reader,
    unpaired_message,
)
from .models import (
    ModelCache,
    _live_predict_widgets,
    config_dir,
    devices,
    import_torch_side,
    keep_existing_output,
    model_choices,
    offer_model,
    unwrap_viewer,
)
from .relay import _Relay
from .settings import chosen_path, exclusive_paths, persist_fields


def layer_planes(viewer, labels_layer) -> list[tuple]:
    """``(image plane reader, labels plane, features, source)`` of each plane of a Labels layer
    holding labels.

    Copies the labels and features, so a worker thread can use them while the user edits the
    layer. *Run on folder*'s ``folder instances`` stack gives `folder_planes`' instead (each plane's image
    and classes read from the run's files, a plane the user left as the run wrote it read as None).
    The image plane is read when its `plane_reader` is called, in the worker: a lazy
    (dask, zarr) image is not read on the Qt thread. Nor are lazy labels (label files opened as
    one lazy stack, one file a plane): each of their planes is given as a reader
    (`plane_reader`'s kind) of the array the layer holds now, and `read_labels` in the worker
    reads it and leaves it out when it holds no labels.
    """
    folder = folder_planes(labels_layer)
    if folder is not None:  # a folder run's stack: its images are read from their files
        return folder
    image_layer = image_layer_of(viewer, labels_layer)
    if image_layer is None:
        raise ValueError(unpaired_message(labels_layer))
    data = labels_layer.data[0] if labels_layer.multiscale else labels_layer.data
    lazy = not isinstance(data, np.ndarray)  # dask, zarr: read in the worker, a plane at a time
    leading = data.shape[:-2]
    # of a multiscale image, the level the labels were made at (a run's: the level it read)
    level = level_of_shape(image_layer, data.shape)
    if level is None:
        sizes = ", ".join("×".join(map(str, shape)) for shape in level_planes(image_layer))
        raise ValueError(f"layer {labels_layer.name!r} is {'×'.join(map(str, data.shape[-2:]))} pixels; no level of "
                         f"its multiscale image {image_layer.name!r} ({sizes}) is: paint the labels at the size of "
                         "one of its levels (a run's instances layer is at the level the run read)")
    if not image_layer.multiscale:  # a layer paired by name with an image of another shape: say so here
        expected = labels_shape(image_layer)
        if data.shape != expected:
            raise ValueError(f"layer {labels_layer.name!r} is {'×'.join(map(str, data.shape))} pixels, its image "
                             f"{image_layer.name!r} {'×'.join(map(str, expected))}: correct the instances on a Labels "
                             "layer of the image's shape (a run's instances layer, or napari's New labels layer of "
                             "the image)")
    planes = []
    for plane in np.ndindex(*leading) if leading else [()]:
        if lazy:
            labels = partial(_array_plane, data, plane)
        else:
            labels = data[plane] if plane else data
            if not labels.any():
                continue
            labels = np.array(labels)
        planes.append((plane_reader(image_layer, plane, level), labels, labels_layer.features.copy(),
                       labels_layer.name + (f" plane {plane}" if plane else "")))
    return planes


def read_labels(labels, source: str) -> np.ndarray | None:
    """The labels of a plane of `layer_planes`: a copy made on the Qt thread, or, of lazy labels,
    the plane read now (in the worker).

    Raises
    ------
    ValueError
        Naming the layer's plane, when a lazy plane cannot be read (its file deleted or broken:
        the reader's error, naming the file, follows).
    """
    if not callable(labels):
        return labels
    try:
        labels = labels()
        return None if labels is None else np.asarray(labels)  # None: a folder run's plane left as it was
    except Exception as error:  # dask's readers raise many types: say which plane, and why
        raise ValueError(f"cannot read the labels of {source}: {error or type(error).__name__}") from error


def no_labels_message(layers, unchanged: int = 0, emptied: Sequence[str] = ()) -> str:
    """Corrected layers (or their names) hold no labels (or, ``unchanged``, only planes of a folder run left
    as the run wrote them, and ``emptied``, the sources of those changed to hold no instance): what to do."""
    names = ", ".join(layer if isinstance(layer, str) else layer.name for layer in layers)
    if emptied:
        others = (f"its other {plural(unchanged, 'plane')} {'is' if unchanged == 1 else 'are'} as the folder run "
                  "wrote them" if unchanged else "no other plane changed")
        return (f"{names}: {emptied_text(emptied)}, and {others}; correct the instances of some planes so that they "
                "hold the right instances (erase, paint or fill them with napari's Labels tools): only the planes "
                "you changed that hold instances are learnt from")
    if unchanged:
        return (f"{names}: none of its {plural(unchanged, 'plane')} differs from what the folder run "
                "wrote; correct the instances of some planes first (erase, paint or fill them with napari's Labels "
                "tools): only the planes you changed are learnt from")
    return (f"{names}: no labels yet; correct some instances first (paint them, and set their class in the "
            "Peak Response Maps widget)")


def emptied_text(emptied: Sequence[str]) -> str:
    """The folder run's planes changed to hold no instance (their sources), said: nothing to learn there."""
    count = len(emptied)
    return (f"{plural(count, 'plane')} you changed {'holds' if count == 1 else 'hold'} no instance now "
            f"({first_names(emptied)}): a plane without instances teaches the head nothing")


@dataclass
class RefineSettings:
    """The *Learn from corrections* widget's choices kept between sessions (its model follows the
    Peak Response Maps widget's; an output whose folder has gone is left at the default)."""

    epochs: int = 20
    out: str = ""  # "": refined_model.pt in the config folder
    device: str | None = None  # None: the first of `devices()`


class RefineWidget(StopsOnClose, Container):
    """Learn a refinement head from corrected Labels layers (or mask files).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    _followed = None  # a weak reference to the Peak Response Maps widget whose model is followed

    def __init__(self, napari_viewer):
        import_torch_side()
        self._viewer = unwrap_viewer(napari_viewer)
        self.models = ModelCache()
        self._model = ComboBox(label="model", choices=lambda _: model_choices())
        self._layers = Select(label="corrected layers", choices=self._labels_choices)
        self._masks_file = FileEdit(label="or masks file", mode="r", filter="COCO JSON (*.json)")
        self._masks_dir = FileEdit(label="or masks folder", mode="d")
        self._epochs = SpinBox(label="epochs", value=20, min=1, max=1000)
        self._out = FileEdit(label="save refined model as", mode="w", filter="PyTorch checkpoint (*.pt)",
                             value=str(config_dir() / "refined_model.pt"))
        self._device = ComboBox(label="device", choices=devices())
        self._learn_button = PushButton(text="Learn")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # a long message must not widen the dock
        super().__init__(widgets=[
            self._model, self._layers, self._masks_file, self._masks_dir, self._epochs, self._out,
            self._device, self._learn_button, self._cancel_button, self._progress, self._status,
        ])
        exclusive_paths(self._masks_file, self._masks_dir)
        persist_fields("refine", RefineSettings, {"epochs": self._epochs, "out": self._out, "device": self._device},
                       usable=lambda field, value: field != "out" or Path(value).parent.is_dir())
        self._learn_button.changed.connect(lambda: self.start())
        self._cancel_button.changed.connect(lambda: self.cancel())
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._cancel = threading.Event()
        self._activity = None
        self.worker = None
        self.result = None
        self.last_message = ""
        self.last_seconds: float | None = None
        self._superseded: list[str] = []  # exports of the corrections folder left out for a newer one
        self._notes: list[str] = []  # what the worker found worth saying (classes the model lacks)
        self._stop_on_close(self.native)
        self._follow_predict_widget()

    # ------------------------------------------------------------------ choices
    def _labels_choices(self, _=None):
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)
                and (image_layer_of(self._viewer, layer) is not None or folder_planes(layer) is not None)]

    def _predict_widgets(self) -> list:
        return [w for w in list(_live_predict_widgets) if w.viewer is self._viewer]

    def _follow_predict_widget(self) -> None:
        """Start from the model the "Peak Response Maps" widget runs, and follow its choice: the
        model chosen there is the one learnt from (another may still be chosen here afterwards).

        Called when this widget opens, and again (`reset_choices`, `start`) while it follows
        none: a Peak Response Maps widget opened after this one is followed too.
        """
        if self._followed is not None and self._followed() is not None:
            return
        for widget in self._predict_widgets():
            self._followed = weakref.ref(widget)
            self._take_model(widget.model.value)
            widget.model.changed.connect(self._take_model)
            return

    def _take_model(self, value) -> None:
        if self._deleted:
            return
        self._model.reset_choices()
        if value in self._model.choices:
            self._model.value = value

    def reset_choices(self, *_):
        """Refresh the layer list (napari calls this when layers are added or removed), and follow
        a Peak Response Maps widget opened since."""
        super().reset_choices()
        self._follow_predict_widget()

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.worker is not None

    def _say(self, message: str, error: bool = False) -> None:
        self.last_message = message
        if not self._deleted:
            self._status.value = message
        (show_error if error else show_info)(message)

    def _masks_path(self) -> Path | None:
        return chosen_path(self._masks_dir, self._masks_file)

    def start(self, **overrides):
        """Learn from the chosen layers and files; keyword arguments go to :func:`refine`.

        Returns the worker, or None when there is nothing to learn from.
        """
        if self.running:
            self._say("Learning is already running: wait for it or press Cancel.", True)
            return None
        layers = list(self._layers.value or [])
        try:
            masks = self._masks_path()
        except FileNotFoundError as error:
            self._say(f"Corrections: {error}; choose the masks again, or empty the field.", True)
            return None
        if not layers and masks is None:
            # a Labels layer without its image is not offered: say which, and why
            left_out = [unpaired_message(layer) for layer in self._viewer.layers
                        if isinstance(layer, Labels) and image_layer_of(self._viewer, layer) is None
                        and folder_planes(layer) is None]
            self._say("Choose the corrected Labels layers (or a masks file or folder) to learn from."
                      + "".join(f" Not offered: {reason}." for reason in left_out), True)
            return None
        self._follow_predict_widget()
        for layer in layers:  # re-run after its corrections: they are in the copy the run kept
            kept = corrections_kept_of(self._viewer, layer)
            if kept:
                names = " or ".join(repr(copy.name) for copy in kept)
                self._say(f"Layer {layer.name!r} holds the instances of its last run, not corrected; the corrections "
                          f"made on it before that run were kept as {names} (hidden): tick that layer instead of "
                          f"{layer.name!r} (or correct {layer.name!r} again).", True)
                return None
        model_choice = self._model.value
        if model_choice is None:
            self._say("Choose a model.", True)
            return None
        for widget in self._predict_widgets():
            self.models = widget.models  # share the loaded model with the predict widget
            break
        # Labels layers are copied here, on the Qt thread (the worker gets copies); lazy ones and
        # images are read in the worker.
        try:
            planes = [plane for layer in layers for plane in layer_planes(self._viewer, layer)]
        except ValueError as error:
            self._say(str(error), True)
            return None
        if layers and not planes and masks is None:
            self._say(no_labels_message(layers), True)
            return None
        options = {"epochs": int(self._epochs.value), "out": Path(self._out.value), "overwrite": False}
        options.update(overrides)
        # an existing output file is kept (saved to the next free name), unless it is the model
        # being refined: the loop learn -> run -> correct -> learn goes on in one file
        kept = keep_existing_output(self, options, replaceable=model_choice)
        self._cancel.clear()
        self._closed = False
        self.result = None
        self._superseded = []  # the worker names the exports it left out here
        self._notes = []
        self._chosen_names = [layer.name for layer in layers]  # for the worker's "no labels yet"
        self._progress.value = 0
        self._activity = progress(total=0, desc="Learning from corrections")
        started = time.perf_counter()
        # errored connected at creation: an error is reported here, not re-raised on the Qt thread
        worker = self._job_worker(self._learn, model_choice, self._device.value, planes, masks, options,
                                  _start_thread=False, _connect={"errored": self._on_error})
        worker.returned.connect(lambda result: self._on_done(result, started, model_choice))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._learn_button.enabled = False
        self._cancel_button.enabled = True
        self._status.value = f"{kept} Reading the corrections…" if kept else "Reading the corrections…"
        worker.start()
        return worker

    def _learn(self, model_choice: str, device: str, planes, masks: Path | None, options: dict):
        """Worker thread: gather the corrections, then train."""
        model = self.models.get(model_choice, device)
        # a folder run's images are read from their files as the run read them: with the model's channels
        channels, _ = channels_for(None, model.settings.get("channels"))
        corrections, lacking = [], {}  # a class the model lacks: the layers (planes) naming it, once per instance
        lazy = sum(callable(labels) for _, labels, _, _ in planes)
        read = unchanged = 0
        emptied = []  # a folder run's planes changed to hold no instance: nothing to learn there, said
        for image, labels, features, source in planes:
            if callable(labels):  # lazy labels (one file a plane): read here, a plane at a time
                if self._cancel.is_set():  # as a cancel while the features are read: the model is left as it was
                    return RefineResult(model=model, cancelled=True)
                labels = read_labels(labels, source)
                read += 1
                self._relay.progressed.emit(("labels", read, lazy))
                if labels is None:  # a folder run's plane as the run wrote it: nothing corrected there
                    unchanged += 1
                    continue
                if not labels.any():
                    if isinstance(image, FolderImage):  # its instances erased: it differs, but teaches nothing
                        emptied.append(source)
                    continue
            if callable(features):  # a folder run's plane: the classes of its instance CSV
                features = features()
            others: list[str] = []
            pixels = image(channels) if isinstance(image, FolderImage) else image()
            corrections.append(correction_from_layer(pixels, labels, features, model.class_names, source=source,
                                                     others=others))
            for name in others:
                lacking.setdefault(name, []).append(source)
        if lacking:
            self._notes.append(other_class_warning(
                "corrected layers", lacking, model.class_names,
                hint="classes set for another model, or typed in the features table?"))
        if not corrections and masks is None:
            raise ValueError(no_labels_message(self._chosen_names, unchanged, emptied))
        if emptied:
            self._notes.append(f"not learnt from: {emptied_text(emptied)}")
        if masks is not None:
            # their image files read with the model's channels, as refine --masks reads them (the
            # layers are taken as they are); the refined model records those channels
            corrections += load_corrections(masks, model.class_names, superseded=self._superseded,
                                            warnings_to=self._notes, channels=model.settings.get("channels"))
        Path(options["out"]).parent.mkdir(parents=True, exist_ok=True)
        return refine(model, corrections=corrections, device=device, progress=self._relay.progressed.emit,
                      cancel=self._cancel, **options)

    def cancel(self) -> None:
        """Stop after the current batch; the last finished epoch's model stays saved."""
        if self.worker is not None:
            self._cancel.set()

    def _on_progress(self, update) -> None:
        if self._deleted:
            return
        if isinstance(update, tuple):  # ("labels", done, total): lazy labels read in the worker
            _, done, total = update
            self._progress.max, self._progress.value = total, done
            self._status.value = f"labels of plane {done}/{total}"
        elif update.stage == "prepare":
            self._progress.max, self._progress.value = update.total, update.done
            self._status.value = f"features of image {update.done}/{update.total}"
            total, done = update.total, update.done
        else:
            fraction = update.done / max(update.total, 1) if update.stage == "batch" else 1.0
            self._progress.max = update.num_epochs
            self._progress.value = min(update.epoch - 1 + fraction, update.num_epochs)
            self._status.value = f"epoch {update.epoch}/{update.num_epochs}, loss {update.loss:.4f}"
            total, done = 100 * update.num_epochs, int(100 * (update.epoch - 1 + fraction))
        activity = self._activity  # the finished signal may close it while it redraws
        if activity is not None:
            activity.total = total
            activity.n = done
            activity.set_description(self._status.value)
            activity.refresh()

    def _on_done(self, result, started: float, model_choice: str | None = None) -> None:
        self.result = result
        self.last_seconds = time.perf_counter() - started
        why = "Stopped as the widget was closed" if self._closed else "Cancelled"
        if result.checkpoint is None:
            self._say(f"{why} before the first epoch ended: the model was left as it was.")
            return
        # the head alone was trained: the thresholds edited for the model refined hold for the new one
        offer_model(self._viewer, result.checkpoint, refined_from=model_choice)
        kept = self._thresholds_kept()
        if not self._deleted:
            self._model.reset_choices()
            self._model.value = str(Path(result.checkpoint).resolve())
        what = f"{why} after {plural(len(result.history), 'epoch')}: learnt" if result.cancelled else "Learnt"
        superseded = self._superseded
        left_out = (f" Several exports of one image in the corrections folder: the most recently written of "
                    f"each was used; left out: {', '.join(superseded)}." if superseded else "")
        self._say(f"{what} from {result.samples} corrected image(s) in {self.last_seconds:.1f} s; saved "
                  f"{result.checkpoint}. The next Run of Peak Response Maps uses it{kept}."
                  f"{left_out}{self._notes_text()}")

    def _thresholds_kept(self) -> str:
        """What the followed Peak Response Maps widget kept of the thresholds edited there (", with the
        peak threshold you set, 3"), or "" when it shows the model's calibrated ones."""
        widget = self._followed() if self._followed is not None else None
        if widget is None:
            return ""
        edited = [f"{name} {control.describe()}" for name, control in
                  (("class threshold", widget.class_control), ("peak threshold", widget.peak_control))
                  if control.saved is not None]
        return f", with the {' and '.join(edited)} you set" if edited else ""

    def _on_error(self, error: Exception) -> None:  # the notes may say why nothing was left to learn
        self._say(f"Learning failed: {type(error).__name__}: {error}{self._notes_text()}", True)

    def _notes_text(self) -> str:
        """What the worker found worth saying (`_notes`), as sentences ending a message."""
        return "".join(f" Note: {note}." for note in self._notes)

    def _on_finished(self) -> None:
        self.worker = None
        if not self._deleted:
            self._learn_button.enabled = True
            self._cancel_button.enabled = False
        if self._activity is not None:
            self._activity.close()
            self._activity = None
