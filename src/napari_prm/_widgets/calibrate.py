"""*Calibrate* in the Train widget: choose a checkpoint's class and peak thresholds on the widget's
dataset, as ``napari-prm calibrate`` does, in a worker that *Cancel* stops.

The images are chosen by :func:`napari_prm.train.calibration_images` (the share ``train`` held out
when the model was trained on the dataset, else every image); the thresholds come from
:func:`napari_prm.peaks.calibrate_model`, with and without test-time augmentation. The calibrated
model is written to a new file ``<name>-calibrated.pt`` (the next free name), or into the
checkpoint itself when the user chooses that, and is offered in the Peak Response Maps widget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit, PushButton
from napari.qt.threading import create_worker

from .._text import plural
from ..data import load_dataset
from .activity import ActivityProgress
from .models import offer_model
from .settings import no_path

#: Where *Calibrate* writes the calibrated model (the Train widget's ``calibrate_to`` choice).
CALIBRATE_TO = {
    "a new file (<name>-calibrated.pt)": "new",
    "the checkpoint itself (its thresholds replaced)": "in place",
}


@dataclass
class CalibrateOutcome:
    """What a *Calibrate* run did (the widget's ``calibrated``)."""

    checkpoint: Path
    calibration: object  # napari_prm.peaks.Calibration
    tta_calibration: object
    held_out: bool
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def calibrated_path(model_path: Path, where: str) -> Path:
    """The file *Calibrate* writes: the checkpoint itself (``"in place"``) or the next free
    ``<stem>-calibrated<suffix>`` beside it."""
    from .._validate import unused_path

    if where == "in place":
        return model_path
    return unused_path(model_path.with_name(f"{model_path.stem}-calibrated{model_path.suffix}"))


def calibrate_checkpoint(model_path: Path, dataset_path: Path, images: Path | None, device: str, out: Path, *,
                         progress=None, cancel=None) -> CalibrateOutcome:
    """Calibrate the checkpoint ``model_path`` on the dataset and write it to ``out`` (worker thread).

    ``progress(stage, done, total)`` after each image; ``cancel()`` true stops it (RuntimeError,
    nothing written). ValueError says what does not fit (the dataset's classes, the checkpoint).
    """
    from ..model.checkpoint import is_safetensors, load_checkpoint, resolve_device, save_model
    from ..peaks import calibrate_model
    from ..train import calibration_images, no_negative_warning

    model, extra = load_checkpoint(model_path)
    model.to(resolve_device(device))
    dataset = load_dataset(dataset_path, images)
    try:
        dataset = dataset.with_classes(model.class_names)
    except ValueError as error:
        raise ValueError(f"the dataset does not have the model's classes: {error}") from None
    chosen = calibration_images(dataset, extra)
    notes, warnings = [], list(dataset.warnings)
    if chosen.left_untrained:
        names = ", ".join(repr(c) for c in chosen.left_untrained)
        notes.append(f"{model_path.name} records no split rule (a checkpoint from before it): the images it held "
                     f"out are those of the plain random split, among them the only image(s) of class(es) {names}, "
                     "which it was therefore not trained on")
    if chosen.trained:
        notes.append(f"{chosen.trained} of the {plural(len(chosen.dataset), 'image')} calibrated on trained "
                     f"{model_path.name} (it held none of them out): thresholds chosen on images a model has "
                     "learnt are optimistic (too low for new images); calibrate on images it was not trained on")
    warnings += [w for w in [no_negative_warning(chosen.dataset, calibrating=True)] if w]
    results = {}
    for tta in (False, True):
        stage = "with test-time augmentation" if tta else "image"
        results[tta] = calibrate_model(
            model, chosen.dataset, tta=tta, cancel=cancel,
            progress=None if progress is None else lambda done, total, stage=stage: progress(stage, done, total))
    model.settings.update(results[False].as_settings())
    model.settings["calibration"]["held_out"] = chosen.held_out
    model.settings["tta_calibration"] = results[True].as_settings()
    save_model(model, out, extra=None if is_safetensors(out) else extra)
    warnings += [w for w in [results[False].warning] if w]
    return CalibrateOutcome(out, results[False], results[True], chosen.held_out, notes, warnings)


class CalibrateSection:
    """Mixin of `TrainWidget`: the *Calibrate* controls and their worker.

    Expects ``worker``, ``running``, ``_cancel``, ``_viewer``, ``_device``, ``_say``,
    ``_dataset_path``, ``_images_folder``, ``_status``, ``_deleted``, ``_closed`` and
    ``_run_started``/``_on_finished`` from the widget.
    """

    def _build_calibrate(self) -> list:
        self._calibrate_model = FileEdit(label="model to calibrate", mode="r",
                                         filter="PRM checkpoints (*.pt *.pth *.safetensors)", value="")
        self._calibrate_to = ComboBox(label="write calibrated model to", choices=list(CALIBRATE_TO.items()))
        self._calibrate_button = PushButton(text="Calibrate")
        self._calibrate_button.changed.connect(lambda: self.calibrate())
        self.calibrated: CalibrateOutcome | None = None
        return [self._calibrate_model, self._calibrate_to, self._calibrate_button]

    def calibrate(self):
        """Calibrate the chosen checkpoint on the widget's dataset in a worker; returns it (None when refused)."""
        if self.running:
            self._say("Training or calibration is already running: wait for it or press Cancel.", True)
            return None
        model_path = None if no_path(self._calibrate_model.value) else Path(self._calibrate_model.value)
        if model_path is None or not model_path.is_file():
            self._say("Choose the model to calibrate: a checkpoint file (.pt, .safetensors)"
                      + ("" if model_path is None else f"; {model_path} is not a file") + ".", True)
            return None
        chosen = self._chosen_dataset()
        if chosen is None:
            return None
        dataset_path, images = chosen
        out = calibrated_path(model_path, self._calibrate_to.value)
        self.calibrated = None
        self._progress.max, self._progress.value = 1, 0
        worker = create_worker(calibrate_checkpoint, model_path, dataset_path, images, self._device.value, out,
                               progress=lambda *p: self._relay.progressed.emit(("calibrate", *p)),
                               cancel=self._cancel.is_set, _start_thread=False,
                               _connect={"errored": self._calibration_failed})
        worker.returned.connect(self._on_calibrated)
        self._run_started(worker, f"Calibrating {model_path.name} on {dataset_path}…",
                          ActivityProgress(f"Calibrate PRM model: {model_path.name}", on_cancel=self.cancel))
        return worker

    def _calibration_failed(self, error) -> None:
        if isinstance(error, RuntimeError) and self._cancel.is_set():
            why = "Stopped as the widget was closed" if self._closed else "Cancelled"
            self._say(f"{why} while calibrating: nothing was written.")
        else:
            self._say(f"Calibration failed: {type(error).__name__}: {error}", True)

    def _show_calibration_progress(self, stage: str, done: int, total: int) -> None:
        self._progress.max, self._progress.value = total, done
        self._status.value = f"calibrating: {stage} {done}/{total}" if stage == "image" else \
            f"calibrating {stage}: image {done}/{total}"
        if self.activity is not None:
            self.activity.update(f"calibrating ({stage})", done, total)

    def _on_calibrated(self, outcome: CalibrateOutcome) -> None:
        self.calibrated = outcome
        offer_model(self._viewer, outcome.checkpoint)
        which = "the images train held out" if outcome.held_out else "every image of the dataset"
        message = (f"Calibrated on {which}: thresholds {outcome.calibration.describe()}; with test-time "
                   f"augmentation class threshold {outcome.tta_calibration.class_threshold:.3g}, peak threshold "
                   f"{outcome.tta_calibration.peak_threshold:.3g}. Saved {outcome.checkpoint}; it is offered in "
                   "the Peak Response Maps widget.")
        if outcome.notes:
            message += " Note: " + " ".join(f"{n[0].upper()}{n[1:]}." for n in outcome.notes)
        if outcome.warnings:
            message += " Warning: " + " ".join(outcome.warnings)
        self._say(message, warning=bool(outcome.warnings))
