"""*Calibrate* in the Train widget: choose a checkpoint's thresholds on the widget's dataset, as
``napari-prm calibrate`` does, in a worker that *Cancel* stops.

The work is :func:`napari_prm.train.calibrate_checkpoint`'s (the command line's too): the images
are chosen by :func:`napari_prm.train.calibration_images` (the share ``train`` held out when the
model was trained on the dataset, else every image), the thresholds with and without test-time
augmentation. The calibrated model is written to a new file ``<name>-calibrated.pt`` (the next
free name; a ``.pth`` or ``.safetensors`` checkpoint keeps its suffix), or into the checkpoint
itself when the user chooses that, and is offered in the Peak Response Maps widget. A built-in
model (``imagenet-voc``) is written to a new file beside the Train widget's output file.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton

from .._text import for_widget, sentence, sentences
from ..data import load_dataset
from ..model.checkpoint import BUILTIN_MODELS, CHECKPOINT_SUFFIXES, is_builtin_name
from ..train import CheckpointCalibration, calibrate_checkpoint
from .activity import ActivityProgress
from .models import offer_model
from .settings import no_path

#: Where *Calibrate* writes the calibrated model (the Train widget's ``calibrate_to`` choice).
CALIBRATE_TO = {
    "a new file (<name>-calibrated.pt)": "new",
    "the checkpoint itself (its thresholds replaced)": "in place",
}


def calibrated_path(model: Path | str, where: str, folder: Path) -> Path:
    """The file *Calibrate* writes: the checkpoint itself (``"in place"``) or the next free
    ``<stem>-calibrated<suffix>`` beside it; for a built-in model (never in place), the next free
    ``<name>-calibrated.pt`` in ``folder``.

    A checkpoint named without one of `napari_prm.model.checkpoint.CHECKPOINT_SUFFIXES`
    (``mymodel``, ``model.ckpt``: a torch file, which `napari_prm.load_model` reads by its
    content) goes to ``<name>-calibrated.pt``, its whole name kept: a checkpoint is written only
    under those suffixes.

    Raises
    ------
    ValueError
        ``"in place"`` for a built-in model.
    """
    from .._validate import unused_path

    if is_builtin_name(model):
        if where == "in place":
            raise ValueError(f"{model} is a built-in model, which cannot be replaced")
        return unused_path(Path(folder) / f"{model}-calibrated.pt")
    model = Path(model)
    if where == "in place":
        return model
    if model.suffix.lower() not in CHECKPOINT_SUFFIXES:
        return unused_path(model.with_name(f"{model.name}-calibrated.pt"))
    return unused_path(model.with_name(f"{model.stem}-calibrated{model.suffix}"))


def _calibrate(model: Path | str, dataset_path: Path, images: Path | None, device: str, out: Path, *,
               progress=None, cancel=None, allow_other_classes: bool = False) -> CheckpointCalibration:
    """Load the dataset and calibrate ``model`` on it into ``out`` (worker thread); the dataset's own
    warnings come first in the outcome's. ``progress(stage, done, total)`` after each image;
    ``allow_other_classes`` as `napari_prm.train.calibrate_checkpoint` takes it."""
    dataset = load_dataset(dataset_path, images)

    def relay(tta: bool, done: int, total: int) -> None:
        progress("with test-time augmentation" if tta else "image", done, total)

    outcome = calibrate_checkpoint(model, dataset, out, device=device, cancel=cancel,
                                   progress=None if progress is None else relay,
                                   allow_other_classes=allow_other_classes)
    outcome.warnings[:0] = dataset.warnings
    return outcome


class CalibrateSection:
    """Mixin of `TrainWidget`: the *Calibrate* controls and their worker.

    Expects ``worker``, ``running``, ``_start_pending``, ``_cancel``, ``_viewer``, ``_device``, ``_out``, ``_say``,
    ``_dataset_path``, ``_images_folder``, ``_status``, ``_deleted``, ``_closed`` and
    ``_run_started``/``_on_finished`` from the widget.
    """

    def _build_calibrate(self) -> list:
        self._calibrate_model = FileEdit(label="model to calibrate", mode="r",
                                         filter="PRM checkpoints (*.pt *.pth *.safetensors)", value="",
                                         tooltip="a checkpoint file, or type the name of a built-in model "
                                                 f"({', '.join(BUILTIN_MODELS)}): it is written to a new file "
                                                 "beside the output file")
        self._calibrate_to = ComboBox(label="write calibrated model to", choices=list(CALIBRATE_TO.items()))
        self._calibrate_other = CheckBox(
            text="images of other classes are negatives", value=False,
            tooltip="calibrate on images labelled with classes the model does not have, as images showing none "
                    "of its classes; unticked, such a label (a typo) stops Calibrate, naming it and its file and line")
        self._calibrate_button = PushButton(text="Calibrate")
        self._calibrate_button.changed.connect(lambda: self.calibrate())
        self.calibrated: CheckpointCalibration | None = None
        return [self._calibrate_model, self._calibrate_to, self._calibrate_other, self._calibrate_button]

    def calibrate(self):
        """Calibrate the chosen checkpoint on the widget's dataset in a worker; returns it (None when refused,
        said: also while a Train waits for the output file's check, which it would otherwise drop)."""
        if self.running:
            self._say("Training or calibration is already running: wait for it or press Cancel.", True)
            return None
        if self._start_pending is not None:  # Train pressed, waiting for the output file's check: kept
            self._say(f"Train was pressed: training starts once it is known whether {Path(self._out.value).name} "
                      "holds an unfinished run of the dataset. Calibrate after it, or press Cancel to drop the "
                      "training, then Calibrate.", True)
            return None
        # a built-in model's name as typed (the field's value makes it a path in the current folder)
        typed = self._calibrate_model.line_edit.value.strip()
        model = typed if is_builtin_name(typed) else \
            None if no_path(self._calibrate_model.value) else Path(self._calibrate_model.value)
        if model is None or not (isinstance(model, str) or model.is_file()):
            self._say(f"Choose the model to calibrate: a checkpoint file (.pt, .safetensors) or a built-in model "
                      f"({', '.join(BUILTIN_MODELS)})" + ("" if model is None else f"; {model} is not a file")
                      + ".", True)
            return None
        try:  # a built-in model goes beside the output file (the home folder when there is none)
            out = calibrated_path(model, self._calibrate_to.value,
                                  Path.home() if no_path(self._out.value) else Path(self._out.value).parent)
        except ValueError as error:
            self._say(f"{error}: write the calibrated model to a new file.", True)
            return None
        chosen = self._chosen_dataset()
        if chosen is None:
            return None
        dataset_path, images = chosen
        self.calibrated = None
        self._progress.max, self._progress.value = 1, 0
        worker = self._job_worker(_calibrate, model, dataset_path, images, self._device.value, out,
                                  progress=lambda *p: self._relay.progressed.emit(("calibrate", *p)),
                                  cancel=self._cancel.is_set, _start_thread=False,
                                  allow_other_classes=bool(self._calibrate_other.value),
                                  _connect={"errored": self._calibration_failed})
        worker.returned.connect(self._on_calibrated)
        name = Path(model).name
        self._run_started(worker, f"Calibrating {name} on {dataset_path}…",
                          ActivityProgress(f"Calibrate PRM model: {name}", on_cancel=self.cancel))
        return worker

    def _calibration_failed(self, error) -> None:
        if isinstance(error, RuntimeError) and self._cancel.is_set():
            why = "Stopped as the widget was closed" if self._closed else "Cancelled"
            self._say(f"{why} while calibrating: nothing was written.")
        else:
            text = for_widget(error.args[0]) if len(error.args) == 1 else str(error)  # a Worded: the widget's words
            self._say(f"Calibration failed: {type(error).__name__}: {text}", True)

    def _show_calibration_progress(self, stage: str, done: int, total: int) -> None:
        self._progress.max, self._progress.value = total, done
        self._status.value = f"calibrating: {stage} {done}/{total}" if stage == "image" else \
            f"calibrating {stage}: image {done}/{total}"
        if self.activity is not None:
            self.activity.update(f"calibrating ({stage})", done, total)

    def _on_calibrated(self, outcome: CheckpointCalibration) -> None:
        self.calibrated = outcome
        offer_model(self._viewer, outcome.checkpoint)
        which = "the images train held out" if outcome.held_out else "every image of the dataset"
        message = (f"Calibrated on {which}: thresholds {outcome.calibration.describe()}; with test-time "
                   f"augmentation class threshold {outcome.tta_calibration.class_threshold:.3g}, peak threshold "
                   f"{outcome.tta_calibration.peak_threshold:.3g}. Saved {outcome.checkpoint}; it is offered in "
                   "the Peak Response Maps widget.")
        if outcome.notes:
            message += " Note: " + " ".join(sentence(note) for note in outcome.notes)
        if outcome.warnings:
            message += " Warning: " + sentences(map(for_widget, outcome.warnings))
        self._say(message, warning=bool(outcome.warnings))
