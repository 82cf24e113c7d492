"""The form of the "Peak Response Maps" widget: its controls, the choices kept between
sessions (`WidgetSettings`), and the chosen model's classes and calibrated thresholds.

`PredictForm._build_form` is the one place the form is built. A new control is a field of
`WidgetSettings` and a widget registered with ``self._persist(name, widget)``: saving,
restoring and "Restore defaults" then cover it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from magicgui.widgets.bases import CategoricalWidget
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidgetItem

from .._text import in_front_end_words
from ..peaks import MAX_PEAKS
from ..predictor import MAX_PEAKS_LIMIT, preset_settings, resolve_thresholds
from .layers import choose_layer, is_result_image
from .marks import INSTANCES_SUFFIX, marker_of
from .models import BUILTIN_CHOICES, devices, forget_model, model_choices, remember_model
from .settings import save_settings
from .thresholds import CalibratedThreshold

PROPOSAL_SOURCES = {
    "auto (learnt head if the model has one, else built-in)": "auto",
    "learnt head (refined)": "refined",
    "built-in": "default",
    "PRM-guided": "prm",
    "built-in + PRM-guided": "default+prm",
    "none (peaks and PRMs only)": None,
}
LABELS_PREFIX = "Labels layer: "
PRESET_CHOICES = {
    "default: calibrated thresholds, one peak per place": "default",
    "original: Zhou et al.'s inference": "original",
}
#: The peak threshold field's minimum, shown as "none": no peak threshold.
PEAK_THRESHOLD_MIN = -1e4
#: The settings of the peak selection that the form has fields of, by their argument names.
PEAK_SELECTION = ("class_threshold", "peak_threshold", "max_peaks")


@dataclass
class WidgetSettings:
    """The choices of the predict widget kept between sessions; the defaults are what
    "Restore defaults" brings back.

    Choices are saved as the texts the widget shows (a model's, a preset's or a proposal
    source's name); a choice that is gone (a checkpoint file moved away, a device not
    present) is left at the default when the settings are restored. The thresholds are
    None while the field shows the model's calibrated value.
    """

    planes: str = "current plane"
    model: str = next(iter(BUILTIN_CHOICES))
    preset: str = next(iter(PRESET_CHOICES))
    class_threshold: float | None = None  # None: the chosen model's calibrated value
    peak_threshold: float | None = None  # None: the model's; PEAK_THRESHOLD_MIN: none
    max_peaks: int = MAX_PEAKS
    input_size: int = 0  # the network input's side; 0: the model's own input size
    proposals: str = next(iter(PROPOSAL_SOURCES))  # a Labels layer of candidates is not remembered
    device: str | None = None  # None: the first of `devices()`
    show_text: bool = False
    add_crms: bool = False


def upgrade_saved_settings(saved: dict) -> dict:
    """Read the settings files of earlier versions: a peak threshold was used only when
    ``use_peak_threshold`` was ticked (unticked now means the model's calibrated value)."""
    saved = dict(saved)
    if "use_peak_threshold" in saved and saved.pop("use_peak_threshold") is not True:
        saved["peak_threshold"] = None
    return saved


class PredictForm:
    """Mixin of `PredictWidget`: the form's controls and settings, and the model's classes.

    Expects ``viewer``, ``models`` (a `ModelCache`), ``class_list``, ``class_filter``,
    ``_persisted``, ``_restoring``, ``_loaded_classes_for``, ``_loading``,
    ``_model_settings``, ``_say`` and ``_update_rethreshold`` from the widget.
    """

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
        self.preset = self._persist("preset", ComboBox(
            label="preset", choices=list(PRESET_CHOICES.items()),
            tooltip="default: the model's calibrated thresholds and one peak per place; "
                    "original: the official PRM inference"))
        self.class_threshold = FloatSpinBox(label="class threshold", value=0.0, min=-1e4,
                                            max=1e4, step=0.5)
        self.peak_threshold = FloatSpinBox(label="peak threshold", value=0.0,
                                           min=PEAK_THRESHOLD_MIN, max=1e4, step=0.5)
        for threshold in (self.class_threshold, self.peak_threshold):
            threshold.native.setDecimals(6)  # CRM values of some models are around 1e-3
        self.class_control = CalibratedThreshold(self.class_threshold, self.save_settings)
        self.peak_control = CalibratedThreshold(self.peak_threshold, self.save_settings,
                                                none_text="none")
        self.window = SpinBox(label="window size", value=3, min=1, max=31, step=2)
        self.max_peaks = self._persist("max_peaks", SpinBox(
            label="max peaks", value=MAX_PEAKS, min=1, max=MAX_PEAKS_LIMIT,
            tooltip="keep at most this many peaks per image, the strongest (each costs a backward pass)"))
        self.input_size = self._persist("input_size", SpinBox(
            label="input size", value=0, min=0, max=4096, step=32,
            tooltip="the network's input side in pixels (square); 0: the model's own size. Larger gives "
                    "small, crowded objects (cells, nuclei) peaks of their own, at about 4x the time per "
                    "peak for twice the side; the thresholds stay those calibrated at the model's size"))
        self.proposals = self._persist("proposals", ComboBox(
            label="proposals", choices=self._proposal_choices))
        self.device = self._persist("device", ComboBox(label="device", choices=devices()))
        self.show_text = self._persist("show_text", CheckBox(
            text="class names on peaks", value=False))
        self.add_crms = self._persist("add_crms", CheckBox(
            text="CRM layers of the peaks' classes", value=False))

        self.model.changed.connect(self._model_chosen)
        self.model.changed.connect(self._load_classes)
        self.preset.changed.connect(self._show_calibrated_thresholds)
        self.checkpoint.changed.connect(self._on_checkpoint_chosen)
        self.show_text.changed.connect(self._on_show_text)
        return Container(widgets=[
            self.image, self.planes, self.model, self.checkpoint, self.preset,
            self.class_threshold, self.peak_threshold, self.max_peaks, self.window, self.input_size,
            self.proposals,
            self.device, self.show_text, self.add_crms,
        ])

    def _persist(self, name: str, widget):
        """Register ``widget`` as the control of the `WidgetSettings` field ``name``."""
        self._persisted[name] = widget
        widget.changed.connect(self.save_settings)
        return widget

    def settings(self) -> WidgetSettings:
        """The form's current choices."""
        values = {}
        for name, widget in self._persisted.items():
            if isinstance(widget, CategoricalWidget):
                if name == "proposals" and isinstance(widget.value, Labels):
                    values[name] = WidgetSettings.proposals
                else:
                    values[name] = widget.current_choice
            else:
                values[name] = widget.value
        values["class_threshold"] = self.class_control.saved
        values["peak_threshold"] = self.peak_control.saved
        return WidgetSettings(**values)

    def apply_settings(self, settings: WidgetSettings) -> None:
        """Put ``settings`` into the form (choices that do not exist now are left alone)."""
        restoring, self._restoring = self._restoring, True
        try:
            self.model.reset_choices()
            self.proposals.reset_choices()
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
            # a user's threshold replaces the model's once that is shown
            self.class_control.restore(settings.class_threshold, now=self.classes_loaded)
            self.peak_control.restore(settings.peak_threshold, now=self.classes_loaded)
        finally:
            self._restoring = restoring

    def save_settings(self, *_) -> None:
        """Save the form's choices (called on every change of a persisted control)."""
        if not self._restoring:
            save_settings(self.SETTINGS_NAME, self.settings())

    def restore_defaults(self) -> None:
        """Put the defaults of `WidgetSettings` back (the model's calibrated thresholds too)."""
        defaults = WidgetSettings()
        self.apply_settings(dataclasses.replace(defaults, device=devices()[0]))
        self._loaded_classes_for = None  # shows the model's thresholds and window again
        self._load_classes()
        self.save_settings()
        self._say("Settings restored to their defaults.")

    def _show_calibrated_thresholds(self, *_) -> None:
        """Show the thresholds runs will use, in the fields the user has not edited: the
        preset's, else the loaded model's calibrated ones."""
        if self._model_settings is None:
            return
        class_threshold, peak_threshold = resolve_thresholds(
            preset_settings(self.preset.value), self._model_settings)
        for control, value in ((self.class_control, class_threshold),
                               (self.peak_control, peak_threshold)):
            if control.from_model:
                control.show_calibrated(value)
        self.save_settings()

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _=None):
        """The Image layers of the viewer but the plugin's own results (PRMs, CRMs)."""
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and not is_result_image(self.viewer, layer)]

    def follow_image(self, layer) -> None:
        """Make ``layer`` the chosen image when it is one the form offers (the layer the user
        selected in the layer list, or opened last); a result layer or a Labels layer changes nothing."""
        if not isinstance(layer, Image) or layer is self.image.value or is_result_image(self.viewer, layer):
            return
        choose_layer(self.image, layer)

    def _proposal_choices(self, _=None):
        choices = list(PROPOSAL_SOURCES.items())
        # not a run's instances layer (the run replaces it), renamed or not
        choices += [(LABELS_PREFIX + layer.name, layer) for layer in self.viewer.layers
                    if isinstance(layer, Labels) and not layer.name.endswith(INSTANCES_SUFFIX)
                    and marker_of(layer).get("role") != "instances"]
        return choices

    def reset_choices(self, *_):
        """Refresh the layer choosers (napari calls this when layers are added or removed)."""
        self.form.reset_choices()

    def select_model(self, value: str, *, keep_thresholds: bool = False) -> None:
        """Make ``value`` (a built-in name or a checkpoint path) the chosen model.

        Parameters
        ----------
        value : str
        keep_thresholds : bool
            Keep the thresholds the user edited (a model chosen otherwise shows its calibrated
            ones): for a model refined from the one chosen, whose classifier, and so whose
            class scores and peaks, are the same.
        """
        from ..model.checkpoint import is_builtin_name

        edited = [(control, control.saved) for control in (self.class_control, self.peak_control)
                  if keep_thresholds and control.saved is not None]

        if not is_builtin_name(value) and Path(value).is_file():
            value = str(Path(value).resolve())
            remember_model(value)
        self.model.reset_choices()
        if value not in self.model.choices:
            self._say(f"Cannot load the model: {value} is not a built-in model or a file.",
                      "error")
            return
        self.model.value = value
        for control, saved in edited:  # the calibrated values shown once it loads give way to them
            control.restore(saved, now=True)

    def _on_checkpoint_chosen(self, path) -> None:
        if path is not None and Path(path).is_file():
            self.select_model(str(path))

    # ------------------------------------------------------------------ classes
    def _model_chosen(self, *_) -> None:
        """A newly chosen model: runs use its calibrated thresholds again, shown once it is loaded;
        a threshold edited while it loads keeps the user's value."""
        self.class_control.from_model = self.peak_control.from_model = True

    def _load_classes(self, *_):
        """Load the chosen model in a worker; list its classes and show its thresholds."""
        choice, device = self.model.value, self.device.value
        if choice is None or (choice, device) in (self._loaded_classes_for, self._loading):
            return
        # errored connected at creation: an unexpected error (not the loader's ValueError) is
        # reported as a model that cannot be loaded, not re-raised on the Qt thread
        worker = create_worker(self._load_model, choice, device, _start_thread=False, _connect={
            "errored": lambda error: self._on_model_loaded(
                f"Cannot load the model {choice}: {type(error).__name__}: {error}", (choice, device))})
        worker.returned.connect(lambda model: self._on_model_loaded(model, (choice, device)))
        self._class_loader = worker
        self._loading = (choice, device)
        worker.start()

    def _on_model_loaded(self, model, key) -> None:
        if self._loading == key:
            self._loading = None
        try:
            current = (self.model.value, self.device.value)
        except RuntimeError:  # the widget was closed while the model loaded
            return
        if isinstance(model, str):
            self._say(model, "error")
        elif key == current != self._loaded_classes_for:
            self._fill_classes(model.class_names, key, win_size=model.network.win_size)
            # the fields not edited since the model was chosen (`_model_chosen`) show its
            # calibrated thresholds (unless restored settings hold the user's)
            self._model_settings = dict(model.settings)
            self._show_calibrated_thresholds()
            self._update_rethreshold()

    def _load_model(self, choice: str, device: str):
        """Worker thread: the model, or a message saying why it cannot be loaded."""
        try:
            return self.models.get(choice, device)
        except ValueError as error:  # a bad checkpoint names its file
            from ..model.checkpoint import is_builtin_name

            if not is_builtin_name(choice):  # not offered again, nor chosen in the next session
                forget_model(choice)
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
        correction = getattr(self, "correction", None)
        if correction is not None:  # a Labels layer no run made is offered the model's classes
            correction.refresh_classes()

    def model_class_names(self) -> list[str]:
        """The classes of the model chosen, once loaded (else none)."""
        if not self.classes_loaded:
            return []
        return [self.class_list.item(row).text() for row in range(self.class_list.count())]

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

    def _settings(self) -> dict:
        return {
            "model": self.model.value,
            "device": self.device.value,
            "preset": self.preset.value,
            # None: the preset's or the model's calibrated value
            "class_threshold": self.class_control.override,
            "peak_threshold": self.peak_control.override,
            "classes": self.selected_classes() or None,
            "window": int(self.window.value),
            "max_peaks": int(self.max_peaks.value),
            # None: the model's own input size
            "input_size": (int(self.input_size.value),) * 2 if self.input_size.value else None,
            "proposals": self.proposals.value,
            "crms": bool(self.add_crms.value),
        }

    @staticmethod
    def threshold_overrides(settings: dict) -> dict:
        """The peak selection a run passes to ``PRMPredictor.predict``: the thresholds set by the
        user, and the peak cap."""
        return {name: settings[name] for name in PEAK_SELECTION if settings.get(name) is not None}

    def in_field_words(self, text: str) -> str:
        """``text``, a note of the library (Python's wording), with the settings it names by their
        argument names named as this form's fields: ``peak_threshold`` as "peak threshold",
        ``(max_peaks=50)`` as "(max peaks 50)" (`napari_prm._text.in_front_end_words`, which the command
        line's notes go through too, to its options)."""
        return in_front_end_words(text, {name: getattr(self, name).label for name in PEAK_SELECTION})
