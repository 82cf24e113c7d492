"""The "Peak Response Maps" dock widget: run a PRM model on an image layer.

Layers in, arrays to :func:`napari_prm.predict` in a worker thread, layers out; the
correction tools live in :mod:`napari_prm._widgets.correct`.

The form's choices that persist between sessions are the fields of `PredictSettings`;
`PredictWidget._build_form` is the one place the form is built. A new control is a field
there and a widget registered with ``self._persist(name, widget)``: saving, restoring and
"Restore defaults" then cover it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from magicgui.widgets.bases import CategoricalWidget
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..model.checkpoint import builtin_calibration
from ..predict import Cancelled, Prediction, predict
from .activity import ActivityProgress
from .correct import CorrectionPanel
from .layers import add_result_layers, check_image_layer, current_plane, merge_predictions, read_plane
from .models import (
    ModelCache,
    _live_predict_widgets,
    devices,
    import_torch_side,
    model_choices,
    remember_model,
    unwrap_viewer,
)
from .relay import _Relay
from .settings import load_settings, save_settings

PROPOSAL_SOURCES = {
    "auto (learnt head if the model has one, else built-in)": "auto",
    "learnt head (refined)": "refined",
    "built-in": "default",
    "PRM-guided": "prm",
    "built-in + PRM-guided": "default+prm",
    "none (peaks and PRMs only)": None,
}
LABELS_PREFIX = "Labels layer: "


@dataclass
class PredictSettings:
    """The choices of the predict widget kept between sessions; the defaults are what
    "Restore defaults" brings back.

    Choices are saved as the texts the widget shows (a model's or a proposal source's
    name); a choice that is gone (a checkpoint file moved away, a device not present) is
    left at the default when the settings are restored.
    """

    planes: str = "current plane"
    model: str = "imagenet (built-in EfficientNet-Lite0)"
    class_threshold: float | None = None  # None: the chosen model's own
    use_peak_threshold: bool = False
    peak_threshold: float = 0.0
    proposals: str = "auto (learnt head if the model has one, else built-in)"  # a Labels layer is not remembered
    device: str | None = None  # None: the first of `devices()`
    show_text: bool = False
    add_crms: bool = False


@dataclass
class RunContext:
    """What the last run used and made; the correction tools build on it."""

    image_layer: Image
    model: object
    settings: dict
    leading_shape: tuple
    class_names: list
    prms: np.ndarray  # (K, H, W): slice k is the PRM of peak k
    prm_planes: np.ndarray  # (K, len(leading_shape))
    layers: dict = field(default_factory=dict)  # 'peaks', 'prms', 'instances' -> layer


class PredictWidget(QWidget):
    """Run a PRM model on an image layer and show peaks, PRMs and instances.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    #: ``(stage, done, total)`` of the running prediction, emitted on the Qt thread.
    progressed = Signal(str, int, int)
    #: Name of the saved settings (``predict_widget.json`` in the config folder).
    SETTINGS_NAME = "predict"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import_torch_side()
        self.viewer = unwrap_viewer(napari_viewer)
        self.models = ModelCache()
        self.context: RunContext | None = None
        self.worker = None
        self.activity: ActivityProgress | None = None
        self.last_message = ""
        self.last_run_seconds: float | None = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._class_loader = None
        self._loaded_classes_for = None
        self._loading = None  # (model, device) whose classes a worker is loading
        # Until the user edits it, the class threshold shows the model's own and None is
        # passed, so that predict() uses model.settings["class_threshold"].
        self._class_threshold_from_model = True
        self._showing_model_threshold = False
        self._pending_class_threshold: float | None = None
        self._persisted: dict[str, object] = {}
        self._restoring = True  # nothing is saved until the saved settings are in the form

        self.form = self._build_form()
        self.restore_defaults_button = QPushButton("Restore defaults")
        self.restore_defaults_button.setToolTip("the choices above as on first use")
        self.restore_defaults_button.clicked.connect(self.restore_defaults)

        self.class_filter = QLineEdit()
        self.class_filter.setPlaceholderText("search classes…")
        self.class_filter.textChanged.connect(self._filter_classes)
        self.class_list = QListWidget()
        self.class_list.setMinimumHeight(120)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.correction = CorrectionPanel(self)

        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.restore_defaults_button)
        layout.addWidget(QLabel("classes to keep (none ticked: every class above the threshold)"))
        layout.addWidget(self.class_filter)
        layout.addWidget(self.class_list)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.correction.native)
        layout.addStretch()
        _live_predict_widgets.add(self)
        self.apply_settings(load_settings(self.SETTINGS_NAME, PredictSettings))
        self._restoring = False
        self._load_classes()

    # ------------------------------------------------------------------ form and settings
    def _build_form(self) -> Container:
        """Create the form's widgets; those registered with `_persist` are saved."""
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.planes = self._persist("planes", ComboBox(
            label="planes", choices=["current plane", "all planes"]))
        self.model = self._persist("model", ComboBox(
            label="model", choices=lambda _: model_choices()))
        self.checkpoint = FileEdit(label="checkpoint file", mode="r",
                                   filter="PRM checkpoints (*.pt *.pth *.safetensors)")
        self.class_threshold = FloatSpinBox(label="class threshold", value=0.0, min=-1e4,
                                            max=1e4, step=0.5)
        self.use_peak_threshold = self._persist("use_peak_threshold", CheckBox(
            text="use peak threshold", value=False))
        self.peak_threshold = self._persist("peak_threshold", FloatSpinBox(
            label="peak threshold", value=0.0, min=-1e4, max=1e4, step=0.5))
        for threshold in (self.class_threshold, self.peak_threshold):
            threshold.native.setDecimals(6)  # CRM values of some models are around 1e-3
        self.window = SpinBox(label="window size", value=3, min=1, max=31, step=2)
        self.proposals = self._persist("proposals", ComboBox(
            label="proposals", choices=self._proposal_choices))
        self.device = self._persist("device", ComboBox(label="device", choices=devices()))
        self.show_text = self._persist("show_text", CheckBox(
            text="class names on peaks", value=False))
        self.add_crms = self._persist("add_crms", CheckBox(
            text="CRM layers of the peaks' classes", value=False))

        self.class_threshold.changed.connect(self._on_class_threshold_edited)
        self.model.changed.connect(self._load_classes)
        self.checkpoint.changed.connect(self._on_checkpoint_chosen)
        self.show_text.changed.connect(self._on_show_text)
        return Container(widgets=[
            self.image, self.planes, self.model, self.checkpoint, self.class_threshold,
            self.use_peak_threshold, self.peak_threshold, self.window, self.proposals,
            self.device, self.show_text, self.add_crms,
        ])

    def _persist(self, name: str, widget):
        """Register ``widget`` as the control of the `PredictSettings` field ``name``."""
        self._persisted[name] = widget
        widget.changed.connect(self.save_settings)
        return widget

    def settings(self) -> PredictSettings:
        """The form's current choices."""
        values = {}
        for name, widget in self._persisted.items():
            if isinstance(widget, CategoricalWidget):
                if name == "proposals" and isinstance(widget.value, Labels):
                    values[name] = PredictSettings.proposals
                else:
                    values[name] = widget.current_choice
            else:
                values[name] = widget.value
        values["class_threshold"] = (None if self._class_threshold_from_model
                                     else float(self.class_threshold.value))
        return PredictSettings(**values)

    def apply_settings(self, settings: PredictSettings) -> None:
        """Put ``settings`` into the form (choices that do not exist now are left alone)."""
        restoring, self._restoring = self._restoring, True
        try:
            self.model.reset_choices()
            self.proposals.reset_choices()
            self._pending_class_threshold = settings.class_threshold
            for name, widget in self._persisted.items():
                value = getattr(settings, name)
                if value is None:
                    continue
                if isinstance(widget, CategoricalWidget):
                    index = widget.native.findText(str(value))
                    if index >= 0:
                        widget.native.setCurrentIndex(index)
                else:
                    try:
                        widget.value = value
                    except (ValueError, TypeError):
                        pass  # out of range: keep what the widget has
            if settings.class_threshold is None:
                self._class_threshold_from_model = True
            elif self.classes_loaded:  # the model's own is shown already
                self._apply_pending_class_threshold()
        finally:
            self._restoring = restoring

    def save_settings(self, *_) -> None:
        """Save the form's choices (called on every change of a persisted control)."""
        if not self._restoring:
            save_settings(self.SETTINGS_NAME, self.settings())

    def restore_defaults(self) -> None:
        """Put the defaults of `PredictSettings` back (the model's own class threshold too)."""
        defaults = PredictSettings()
        self.apply_settings(dataclasses.replace(defaults, device=devices()[0]))
        self._loaded_classes_for = None  # shows the model's threshold and window again
        self._load_classes()
        self.save_settings()
        self._say("Settings restored to their defaults.")

    def _apply_pending_class_threshold(self) -> None:
        value, self._pending_class_threshold = self._pending_class_threshold, None
        if value is None:
            return
        try:
            self.class_threshold.value = float(value)
        except (ValueError, TypeError):
            return
        self._class_threshold_from_model = False

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _proposal_choices(self, _=None):
        choices = list(PROPOSAL_SOURCES.items())
        choices += [(LABELS_PREFIX + layer.name, layer) for layer in self.viewer.layers
                    if isinstance(layer, Labels) and not layer.name.endswith(" instances")]
        return choices

    def reset_choices(self, *_):
        """Refresh the layer choosers (napari calls this when layers are added or removed)."""
        self.form.reset_choices()

    def select_model(self, value: str) -> None:
        """Make ``value`` (a built-in name or a checkpoint path) the chosen model."""
        if Path(value).is_file():
            value = str(Path(value).resolve())
            remember_model(value)
        self.model.reset_choices()
        if value not in self.model.choices:
            self._say(f"Cannot load the model: {value} is not a built-in model or a file.",
                      "error")
            return
        self.model.value = value

    def _on_checkpoint_chosen(self, path) -> None:
        if path is not None and Path(path).is_file():
            self.select_model(str(path))

    # ------------------------------------------------------------------ classes
    def _load_classes(self, *_):
        """Load the chosen model in a worker and list its classes."""
        choice, device = self.model.value, self.device.value
        if choice is None or (choice, device) in (self._loaded_classes_for, self._loading):
            return
        if choice == "imagenet":  # the names come without building the network
            from ..model.checkpoint import imagenet_class_names

            self._fill_classes(imagenet_class_names(), (choice, device), win_size=3)
            self._show_model_threshold(builtin_calibration()["imagenet"]["class_threshold"])
            return
        worker = create_worker(self._load_model, choice, device)
        worker.returned.connect(lambda model: self._on_model_loaded(model, (choice, device)))
        self._class_loader = worker
        self._loading = (choice, device)
        worker.start()

    def _on_model_loaded(self, model, key) -> None:
        if self._loading == key:
            self._loading = None
        if isinstance(model, str):
            self._say(model, "error")
        elif key == (self.model.value, self.device.value) != self._loaded_classes_for:
            self._fill_classes(model.class_names, key, win_size=model.network.win_size)
            self._show_model_threshold(model.settings.get("class_threshold", 0.0))

    def _show_model_threshold(self, value: float) -> None:
        """Show a newly chosen model's class threshold; runs use the model's own again
        (unless restored settings hold a threshold of the user's)."""
        self._showing_model_threshold = True
        try:
            self.class_threshold.value = float(value)
        finally:
            self._showing_model_threshold = False
        self._class_threshold_from_model = True
        self._apply_pending_class_threshold()
        self.save_settings()

    def _on_class_threshold_edited(self, *_) -> None:
        if not self._showing_model_threshold:
            self._class_threshold_from_model = False
            self.save_settings()

    def _load_model(self, choice: str, device: str):
        """Worker thread: the model, or a message saying why it cannot be loaded."""
        try:
            return self.models.get(choice, device)
        except ValueError as error:  # a bad checkpoint names its file
            return f"Cannot load the model: {error}"

    def _fill_classes(self, class_names, key, *, win_size: int) -> None:
        if key != (self.model.value, self.device.value):
            return
        self.class_list.clear()
        for name in class_names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            self.class_list.addItem(item)
        self.window.value = int(win_size)
        self._loaded_classes_for = key
        self._filter_classes(self.class_filter.text())

    @property
    def classes_loaded(self) -> bool:
        return self._loaded_classes_for == (self.model.value, self.device.value)

    def _filter_classes(self, text: str) -> None:
        text = text.strip().lower()
        for row in range(self.class_list.count()):
            item = self.class_list.item(row)
            item.setHidden(bool(text) and text not in item.text().lower())

    def selected_classes(self) -> list[str]:
        """Names of the ticked classes (empty: keep every class passing the threshold)."""
        return [self.class_list.item(row).text() for row in range(self.class_list.count())
                if self.class_list.item(row).checkState() == Qt.CheckState.Checked]

    def set_selected_classes(self, names) -> None:
        """Tick exactly these classes."""
        names = set(names)
        for row in range(self.class_list.count()):
            item = self.class_list.item(row)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names
                               else Qt.CheckState.Unchecked)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.worker is not None or self.correction.running

    def _say(self, message: str, kind: str = "info") -> None:
        self.last_message = message
        self.status.setText(message)
        {"info": show_info, "warning": show_warning, "error": show_error}[kind](message)

    def _settings(self) -> dict:
        return {
            "model": self.model.value,
            "device": self.device.value,
            # None: predict() uses the model's stored class threshold
            "class_threshold": None if self._class_threshold_from_model else float(self.class_threshold.value),
            "peak_threshold": float(self.peak_threshold.value) if self.use_peak_threshold.value else None,
            "classes": self.selected_classes() or None,
            "window": int(self.window.value),
            "proposals": self.proposals.value,
            "crms": bool(self.add_crms.value),
        }

    def proposals_for(self, source, plane: tuple) -> object:
        """What :func:`predict` takes as ``proposals`` for one plane."""
        if isinstance(source, Labels):
            data = source.data[0] if source.multiscale else source.data
            return np.asarray(data[plane[-(data.ndim - 2):]] if data.ndim > 2 else data)
        return source

    def run(self):
        """Start a prediction on the chosen image; returns the worker (None if refused)."""
        if self.running:
            self._say("A run is already going on: wait for it to finish or press Cancel.",
                      "warning")
            return None
        layer = self.image.value
        try:
            leading = check_image_layer(layer)
        except ValueError as error:
            self._say(str(error), "error")
            return None
        if self.planes.value == "all planes" and leading:
            planes = list(np.ndindex(*leading))
        else:
            planes = [current_plane(layer, self.viewer)]
        settings = self._settings()
        images = [read_plane(layer, plane) for plane in planes]
        proposals = [self.proposals_for(settings["proposals"], plane) for plane in planes]
        self._cancel.clear()
        started = time.perf_counter()
        worker = create_worker(self._predict_planes, images, proposals, settings)
        worker.returned.connect(
            lambda out: self._show_results(layer, planes, leading, settings, out, started))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Running on {layer.name!r}…")
        self.activity = ActivityProgress(f"Peak Response Maps: {layer.name}", on_cancel=self.cancel)
        worker.start()
        return worker

    def _predict_planes(self, images, proposals, settings):
        """Worker thread: load the model, predict every plane (a str says what failed)."""
        model = self._load_model(settings["model"], settings["device"])
        if isinstance(model, str):
            return model
        model.network.win_size = settings["window"]
        predictions = []
        for number, (image, plane_proposals) in enumerate(zip(images, proposals), start=1):
            prefix = f"plane {number}/{len(images)}: " if len(images) > 1 else ""
            try:
                predictions.append(predict(
                    image, model,
                    class_threshold=settings["class_threshold"],
                    peak_threshold=settings["peak_threshold"],
                    classes=settings["classes"],
                    proposals=plane_proposals,
                    progress=lambda stage, done, total, prefix=prefix: self._relay.progressed.emit(
                        (prefix + stage, done, total)),
                    cancel=self._cancel.is_set,
                ))
            except Cancelled:
                return None
        return model, predictions

    def cancel(self) -> None:
        """Stop the running prediction (between peaks); the layers stay as they were."""
        if self.worker is not None:
            self._cancel.set()
            self.worker.quit()
        self.correction.cancel()

    def _on_progress(self, report: tuple[str, int, int]) -> None:
        stage, done, total = report
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)
        self.status.setText(f"{stage} {done}/{total}")
        if self.activity is not None:
            self.activity.update(stage, done, total)
        self.progressed.emit(stage, done, total)

    def _on_error(self, error: Exception) -> None:
        self._say(f"Prediction failed: {type(error).__name__}: {error}", "error")

    def _on_finished(self) -> None:
        if self._cancel.is_set():
            self._say("Cancelled; the layers were left as they were.")
        if self.activity is not None:
            self.activity.close()
            self.activity = None
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # ------------------------------------------------------------------ results
    def _show_results(self, layer, planes, leading, settings, out, started) -> None:
        if out is None or self._cancel.is_set():
            return
        if isinstance(out, str):
            self._say(out, "error")
            return
        try:
            self._add_layers(layer, planes, leading, settings, out, started)
        except Exception as error:  # a slot must not swallow it: tell the user
            self._say(f"Could not show the results: {type(error).__name__}: {error}", "error")
            raise

    def _add_layers(self, layer, planes, leading, settings, out, started) -> None:
        model, predictions = out
        kept = [int(c) for c in np.unique(np.concatenate([p.peak_classes for p in predictions]))]
        results = merge_predictions(planes, predictions, leading,
                                    crm_classes=kept if settings["crms"] else ())
        self.context = RunContext(layer, model, settings, leading, results.class_names,
                                  results.prms, results.prm_planes)
        with self.correction.quiet():
            self.context.layers.update(add_result_layers(
                self.viewer, layer, results, show_text=bool(self.show_text.value)))
        self.correction.attach(self.context)
        self.last_run_seconds = None if started is None else time.perf_counter() - started
        self.progress.setValue(self.progress.maximum())
        peaks, instances = len(results.points), len(results.instance_features)
        if peaks == 0:
            class_threshold = settings["class_threshold"]
            if class_threshold is None:
                class_threshold = f"{model.settings.get('class_threshold', 0.0)} (the model's)"
            self._say("Nothing found: no peak above the thresholds (class threshold "
                      f"{class_threshold}, peak threshold {settings['peak_threshold']}"
                      f"{', classes ' + ', '.join(settings['classes']) if settings['classes'] else ''}"
                      "). Lower them or choose other classes.", "warning")
        elif self.last_run_seconds is None:
            self._say(f"{peaks} peaks, {instances} instances.")
        else:
            self._say(f"{peaks} peaks, {instances} instances in {self.last_run_seconds:.1f} s.")

    def show_prediction(self, image_layer: Image, prediction: Prediction, model,
                        **settings) -> dict:
        """Show a prediction made elsewhere (``napari-prm demo``) as a run of this widget.

        The layers are the ones a run makes (same names, data and features), and the
        correction tools work on them.

        Parameters
        ----------
        image_layer : napari.layers.Image
            The 2-D image ``prediction`` was made on.
        prediction : Prediction
            The result of :func:`napari_prm.predict`.
        model : PRMModel
            The model that made it (adding a point back-propagates through it).
        **settings
            Run settings that differ from the form's, e.g. ``proposals="prm"`` (what the
            corrections use to retrieve the instance of an added point).

        Returns
        -------
        dict
            The result layers by kind: ``"peaks"``, ``"instances"`` and, when there are
            peaks, ``"prms"``.
        """
        leading = check_image_layer(image_layer)
        if leading:
            raise ValueError(f"layer {image_layer.name!r} is a stack; show_prediction takes "
                             "the prediction of a 2-D image")
        self.reset_choices()
        self.image.value = image_layer
        run_settings = {**self._settings(), **settings}
        self._add_layers(image_layer, [()], leading, run_settings, (model, [prediction]), None)
        return dict(self.context.layers)

    def _on_show_text(self, visible: bool) -> None:
        if self.context is not None and "peaks" in self.context.layers:
            self.context.layers["peaks"].text.visible = bool(visible)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.cancel()
        super().closeEvent(event)
