"""The "Peak Response Maps" dock widget: run a PRM model on an image layer.

Layers in, arrays to :func:`napari_prm.predict` in a worker thread, layers out; the
correction tools live in :mod:`napari_prm._widgets.correct`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
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

from ..model.checkpoint import IMAGENET_CLASS_THRESHOLD
from ..predict import Cancelled, predict
from .batch import open_batch_panel
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

PROPOSAL_SOURCES = {
    "built-in": "default",
    "PRM-guided": "prm",
    "built-in + PRM-guided": "default+prm",
    "none (peaks and PRMs only)": None,
}
LABELS_PREFIX = "Labels layer: "


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

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import_torch_side()
        self.viewer = unwrap_viewer(napari_viewer)
        self.models = ModelCache()
        self.context: RunContext | None = None
        self.worker = None
        self.last_message = ""
        self.last_run_seconds: float | None = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._class_loader = None
        self._loaded_classes_for = None

        self.image = ComboBox(label="image", choices=self._image_choices)
        self.planes = ComboBox(label="planes", choices=["current plane", "all planes"])
        self.model = ComboBox(label="model", choices=lambda _: model_choices())
        self.checkpoint = FileEdit(label="checkpoint file", mode="r",
                                   filter="PRM checkpoints (*.pt *.pth *.safetensors)")
        self.class_threshold = FloatSpinBox(label="class threshold", value=0.0, min=-1e4,
                                            max=1e4, step=0.5)
        self.use_peak_threshold = CheckBox(text="use peak threshold", value=False)
        self.peak_threshold = FloatSpinBox(label="peak threshold", value=0.0, min=-1e4,
                                           max=1e4, step=0.5)
        for threshold in (self.class_threshold, self.peak_threshold):
            threshold.native.setDecimals(6)  # CRM values of some models are around 1e-3
        # Until the user edits it, the class threshold shows the model's own and None is
        # passed, so that predict() uses model.settings["class_threshold"].
        self._class_threshold_from_model = True
        self._showing_model_threshold = False
        self.class_threshold.changed.connect(self._on_class_threshold_edited)
        self.window = SpinBox(label="window size", value=3, min=1, max=31, step=2)
        self.proposals = ComboBox(label="proposals", choices=self._proposal_choices)
        self.device = ComboBox(label="device", choices=devices())
        self.show_text = CheckBox(text="class names on peaks", value=False)
        self.add_crms = CheckBox(text="CRM layers of the peaks' classes", value=False)
        self.form = Container(widgets=[
            self.image, self.planes, self.model, self.checkpoint, self.class_threshold,
            self.use_peak_threshold, self.peak_threshold, self.window, self.proposals,
            self.device, self.show_text, self.add_crms,
        ])
        self.model.changed.connect(self._load_classes)
        self.checkpoint.changed.connect(self._on_checkpoint_chosen)
        self.show_text.changed.connect(self._on_show_text)

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
        self.batch_button = QPushButton("Run on a folder…")
        self.batch_button.clicked.connect(lambda: open_batch_panel(self))
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
        layout.addWidget(QLabel("classes to keep (none ticked: every class above the threshold)"))
        layout.addWidget(self.class_filter)
        layout.addWidget(self.class_list)
        layout.addLayout(buttons)
        layout.addWidget(self.batch_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.correction.native)
        layout.addStretch()
        _live_predict_widgets.add(self)
        self._load_classes()

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
        if choice is None or self._loaded_classes_for == (choice, device):
            return
        if choice == "imagenet":  # the names come without building the network
            from ..model.checkpoint import imagenet_class_names

            self._fill_classes(imagenet_class_names(), (choice, device), win_size=3)
            self._show_model_threshold(IMAGENET_CLASS_THRESHOLD)
            return
        worker = create_worker(self._load_model, choice, device)
        worker.returned.connect(lambda model: self._on_model_loaded(model, (choice, device)))
        self._class_loader = worker
        worker.start()

    def _on_model_loaded(self, model, key) -> None:
        if isinstance(model, str):
            self._say(model, "error")
        elif key == (self.model.value, self.device.value):
            self._fill_classes(model.class_names, key, win_size=model.network.win_size)
            self._show_model_threshold(model.settings.get("class_threshold", 0.0))

    def _show_model_threshold(self, value: float) -> None:
        """Show a newly chosen model's class threshold; runs use the model's own again."""
        self._showing_model_threshold = True
        try:
            self.class_threshold.value = float(value)
        finally:
            self._showing_model_threshold = False
        self._class_threshold_from_model = True

    def _on_class_threshold_edited(self, *_) -> None:
        if not self._showing_model_threshold:
            self._class_threshold_from_model = False

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
        self.progressed.emit(stage, done, total)

    def _on_error(self, error: Exception) -> None:
        self._say(f"Prediction failed: {type(error).__name__}: {error}", "error")

    def _on_finished(self) -> None:
        if self._cancel.is_set():
            self._say("Cancelled; the layers were left as they were.")
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
        self.last_run_seconds = time.perf_counter() - started
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
        else:
            self._say(f"{peaks} peaks, {instances} instances in {self.last_run_seconds:.1f} s.")

    def _on_show_text(self, visible: bool) -> None:
        if self.context is not None and "peaks" in self.context.layers:
            self.context.layers["peaks"].text.visible = bool(visible)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.cancel()
        super().closeEvent(event)
