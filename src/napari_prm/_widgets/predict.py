"""The "Peak Response Maps" dock widget: run a PRM model on an image layer.

Layers in, arrays to a :class:`napari_prm.PRMPredictor` in a worker thread, layers out;
the correction tools live in :mod:`napari_prm._widgets.correct`. Each image plane is
computed once: the widget keeps the predictors of the planes run last
(:class:`~napari_prm._widgets.models.PredictorCache`), so a second *Run*, *Re-threshold*
and an added point reuse the forward pass, the proposals and the PRMs already computed.

The form, and the choices kept between sessions (`WidgetSettings`), are in
:mod:`napari_prm._widgets.form`.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QSize, Qt, Signal
from qtpy.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .._text import for_widget, plural, sentences
from ..evaluate import no_instance_causes
from ..predict import Cancelled, Prediction, image_to_crm
from ..predictor import preset_settings, resolve_thresholds
from .activity import ActivityProgress, CloseWatcher, job_worker
from .batch import open_batch_panel
from .correct import CorrectionPanel
from .form import PredictForm, WidgetSettings, upgrade_saved_settings
from .layers import (
    PeakAxisFollower,
    PeakPRMs,
    Results,
    add_hand_peaks,
    add_result_layers,
    check_image_layer,
    current_plane,
    hand_placed_peaks,
    keep_corrections,
    layer_names,
    level_note,
    level_text,
    merge_predictions,
    moved_from,
    plane_reader,
    remember_written,
    rename_results,
    run_level,
    run_shape,
    set_moved_from,
    without_peaks,
)
from .marks import find_result, find_results
from .models import ModelCache, PredictorCache, _live_predict_widgets, import_torch_side, unwrap_viewer
from .planes import splice_planes
from .relay import _Relay
from .settings import load_settings


@dataclass(eq=False)
class RunContext:
    """What the last run used and made; the correction tools build on it."""

    image_layer: Image
    model: object
    settings: dict
    leading_shape: tuple
    class_names: list
    prms: PeakPRMs  # (K, H, W): slice k is the PRM of peak k, held at the network's grid
    prm_planes: np.ndarray  # (K, len(leading_shape))
    layers: dict = field(default_factory=dict)  # 'peaks', 'prms', 'instances' -> layer
    predictor_keys: dict = field(default_factory=dict)  # plane -> PredictorKey
    merged_into: dict = field(default_factory=dict)  # peak -> the peak whose instance took it in
    #: The class of labels painted by hand: a run's table leaves it empty.
    unnamed_class = ""

    @property
    def split_name(self) -> str:
        """The name of the Shapes layer split lines are drawn in."""
        return layer_names(self.image_layer.name)["split"]

    def choices(self) -> list[str]:
        """The classes the correction panel offers: the run's."""
        return list(self.class_names)

    def class_index(self, class_name: str) -> int:
        """The ``class_index`` of ``class_name``, one of the run's classes."""
        return self.class_names.index(class_name)

    def refresh_classes(self, model_class_names) -> None:
        """Nothing to take up: a run's classes are its model's."""


#: Why a re-threshold (or a plane sent without its pixels) cannot go on.
MAPS_DROPPED = ("The cached maps of this image were dropped meanwhile (its data changed, "
                "or other images were run since): press Run.")


class PredictWidget(PredictForm, QWidget):
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
        self.predictors = PredictorCache()
        self.context: RunContext | None = None
        self.worker = None
        self.activity: ActivityProgress | None = None
        self.last_message = ""
        self.last_run_seconds: float | None = None
        #: Forward passes the last run or re-threshold made (0: the image's maps were reused).
        self.last_forward_passes = 0
        self._cancel = threading.Event()
        self._outcome_taken = False  # the running worker's outcome is being shown: Cancel is too late
        # closed, or taken out of its dock (no close event then): a running job stops
        self._deleted = False  # its Qt widgets are gone (napari closed): a report still queued shows nothing
        self._close_watcher = CloseWatcher(self, self._on_close)
        #: the peak axis of the PRMs layers follows the layers opened, removed or moved beside them
        self._peak_axes = PeakAxisFollower(self.viewer)
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._class_loader = None
        self._loaded_classes_for = None
        self._loading = None  # (model, device) whose classes a worker is loading
        self._model_settings: dict | None = None  # the loaded model's (calibrated thresholds)
        self._watched_layers: set[int] = set()
        #: image layer -> the peaks layer of its last run (whose hand-placed points a new run keeps)
        self._result_peaks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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
        self.rethreshold_button = QPushButton("Re-threshold")
        self.rethreshold_button.setToolTip(
            "apply the thresholds, classes and peak cap again to the image already run, "
            "without a new forward pass")
        self.rethreshold_button.setEnabled(False)
        self.rethreshold_button.clicked.connect(self.rethreshold)
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
        buttons.addWidget(self.rethreshold_button)
        buttons.addWidget(self.cancel_button)
        # the form and the correction panel are taller than a laptop's screen: they scroll in
        # the dock (napari does not scroll dock widgets), so the window need not grow past it
        self.content = QWidget()
        self.scroll = _VerticalScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidget(self.content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)
        layout = QVBoxLayout(self.content)
        layout.addWidget(self.form.native)
        layout.addWidget(self.restore_defaults_button)
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
        self.apply_settings(load_settings(self.SETTINGS_NAME, WidgetSettings, upgrade=upgrade_saved_settings))
        self._restoring = False
        self.follow_image(self.viewer.layers.selection.active)
        self.correction.focus(self.viewer.layers.selection.active)  # a Labels layer selected before
        self.form.changed.connect(self._update_rethreshold)
        self.viewer.dims.events.current_step.connect(self._update_rethreshold)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._peak_axes.connect()
        self._load_classes()

    # ------------------------------------------------------------------ cached images
    def _planes(self, layer) -> tuple[tuple, list[tuple]]:
        """The leading shape of ``layer`` and the planes the form asks for (raises ValueError)."""
        leading = check_image_layer(layer)
        if self.planes.value == "all planes" and leading:
            return leading, list(np.ndindex(*leading))
        return leading, [current_plane(layer, self.viewer)]

    def predictor_key(self, layer, plane: tuple, settings: dict | None = None):
        """The `PredictorKey` of ``plane`` of ``layer`` with the form's (or ``settings``') model,
        device, window and preset (or ``settings["predict_settings"]``, a shown prediction's)."""
        settings = settings or self._settings()
        model_key = settings.get("model_key") or self.models.key(settings["model"], settings["device"])
        forward = settings.get("predict_settings") or preset_settings(settings["preset"],
                                                                       input_size=settings.get("input_size"))
        return self.predictors.key(layer, plane, model_key, settings["window"], forward)

    def can_rethreshold(self) -> bool:
        """Whether every plane the form asks for has been run with this model and preset."""
        layer = self.image.value
        try:
            _, planes = self._planes(layer)
        except ValueError:
            return False
        if not self.classes_loaded:
            return False
        settings = self._settings()
        return all(self.predictors.ready(self.predictor_key(layer, plane, settings)) for plane in planes)

    def _update_rethreshold(self, *_) -> None:
        try:
            self.rethreshold_button.setEnabled(not self.running and self.can_rethreshold())
        except RuntimeError:  # the widget was closed; napari may still emit layer events
            pass

    def _watch(self, layer) -> None:
        """Drop the cached maps of ``layer`` when its data changes; rename its result layers
        when it is renamed."""
        if id(layer) not in self._watched_layers:
            self._watched_layers.add(id(layer))
            layer.events.data.connect(lambda event, layer=layer: self._forget(layer))
            named = {"name": layer.name}

            def renamed(event, layer=layer):
                old, named["name"] = named["name"], layer.name
                if old != layer.name:
                    rename_results(self.viewer, layer, old)

            layer.events.name.connect(renamed)

    def _forget(self, layer) -> None:
        self.predictors.forget_layer(layer)
        self._update_rethreshold()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        self._watched_layers.discard(id(layer))
        self._forget(layer)
        self.correction.forget(layer)

    def _on_active_layer(self, event) -> None:
        """The correction panel's buttons work on the run of the layer selected; an image layer
        selected (or just opened) becomes the image to run on."""
        if event.value is not None:
            try:
                self.correction.focus(event.value)
                self.follow_image(event.value)
            except RuntimeError:  # the widget was closed; napari may still emit layer events
                pass

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.worker is not None or self.correction.running

    def _say(self, message: str, kind: str = "info") -> None:
        self.last_message = message
        if not self._deleted:  # napari closed: a worker's error still comes, with no status line to show it
            self.status.setText(message)
        {"info": show_info, "warning": show_warning, "error": show_error}[kind](message)

    def proposals_for(self, source, plane: tuple) -> object:
        """What :func:`predict` takes as ``proposals`` for one plane."""
        if isinstance(source, Labels):
            data = source.data[0] if source.multiscale else source.data
            return np.asarray(data[plane[-(data.ndim - 2):]] if data.ndim > 2 else data)
        return source

    def run(self, *, rethreshold: bool = False):
        """Start a prediction on the chosen image; returns the worker (None if refused).

        A plane already run with this model, preset and window reuses its forward pass,
        proposals and PRMs (see `PredictorCache`).

        Parameters
        ----------
        rethreshold : bool
            Only re-apply the thresholds, classes and peak cap to planes already run;
            refused when one has not been run (no forward pass is made).
        """
        if self.running:
            self._say("A run is already going on: wait for it to finish or press Cancel.",
                      "warning")
            return None
        layer = self.image.value
        try:
            leading, planes = self._planes(layer)
        except ValueError as error:
            self._say(str(error), "error")
            return None
        settings = self._settings()
        if refusal := _pyramid_proposals_refusal(layer, settings["proposals"]):
            self._say(refusal, "error")
            return None
        keys = [self.predictor_key(layer, plane, settings) for plane in planes]
        if rethreshold and not all(self.predictors.ready(key) for key in keys):
            self._say("Nothing to re-threshold: run this image (plane) with this model, preset "
                      "and window first.", "warning")
            return None
        self._watch(layer)
        # a plane whose forward pass is cached needs no copy of its pixels; the others are read
        # in the worker, one at a time (a lazy image's reads must not freeze napari)
        images = [None if self.predictors.ready(key) else plane_reader(layer, plane)
                  for key, plane in zip(keys, planes)]
        proposals = [self.proposals_for(settings["proposals"], plane) for plane in planes]
        hand, _ = self._hand_peaks(layer, leading, planes)
        self._cancel.clear()
        self._outcome_taken = False
        started = time.perf_counter()
        # errored connected here: an unexpected error is reported by the widget (and by
        # napari's notifications, with its traceback), not re-raised on the Qt thread; napari
        # closing (or quitting) stops it as Cancel does
        worker = job_worker(self._predict_planes, list(zip(keys, images, proposals)), settings,
                            rethreshold=rethreshold, image_name=layer.name, hand=hand, on_quit=self.cancel,
                            _connect={"errored": self._on_error}, _start_thread=False)
        worker.returned.connect(
            lambda out: self._show_results(layer, planes, leading, settings, out, started, keys, hand))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.rethreshold_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        verb = "Re-thresholding" if rethreshold else "Running on"
        level = level_text(layer)
        self.status.setText(f"{verb} {layer.name!r}{f' ({level})' if level else ''}…")
        self.begin_activity(f"Peak Response Maps: {layer.name}" + (" (re-threshold)" if rethreshold else ""),
                            self.cancel)
        worker.start()
        return worker

    def _hand_peaks(self, layer, leading: tuple, planes: list[tuple]) -> tuple[list[list], int]:
        """The points placed by hand in the peaks layer of ``layer``'s last run, per plane to
        run, and how many lie on planes this run does not cover (those are not kept)."""
        peaks = self._result_peaks.get(layer)
        if peaks is None or peaks not in self.viewer.layers:
            return [[] for _ in planes], 0
        found = hand_placed_peaks(peaks, len(leading))
        hand = [[p for p in found if p.plane == plane] for plane in planes]
        return hand, len(found) - sum(map(len, hand))

    def rethreshold(self):
        """Apply the form's thresholds, classes and cap again to the image already run,
        without a new forward pass; returns the worker (None if refused)."""
        return self.run(rethreshold=True)

    def _predict_planes(self, jobs, settings, *, rethreshold: bool = False, image_name: str = "image",
                        hand=None):
        """Worker thread: load the model, predict every plane (a str says what failed: the
        model, or an image it cannot run on, such as one with NaN).

        ``hand`` lists, per plane, the points placed by hand that the run keeps
        (`HandPeak`): each is back-propagated and retrieved as an added point is
        (``predict(points=...)``), its class taken by name; the model's peak at the same
        place (or where a moved point came from) is not kept beside it.
        """
        model = self._load_model(settings["model"], settings["device"])
        if isinstance(model, str):
            return model
        model.network.win_size = settings["window"]
        overrides = self.threshold_overrides(settings)
        names = list(model.class_names)
        hand = hand or [[] for _ in jobs]
        lacking = [p.class_name for plane in hand for p in plane if p.class_name not in names]
        predictions, carried, forwards = [], [], 0
        # Planes sent without pixels have a cached forward pass; hold on to those predictors,
        # as this run's earlier planes can push them out of the cache before their turn.
        held = {key: self.predictors.get(key) for key, image, _ in jobs if image is None}
        for number, (key, image, plane_proposals) in enumerate(jobs, start=1):
            prefix = f"plane {number}/{len(jobs)}: " if len(jobs) > 1 else ""

            def report(stage, done, total, prefix=prefix):
                self._relay.progressed.emit((prefix + stage, done, total))

            if rethreshold and not self.predictors.ready(key):
                return MAPS_DROPPED
            kept = held.pop(key, None)
            if kept is not None and not self.predictors.ready(key):
                self.predictors.put(key, kept)
            predictor = self.predictors.checkout(key, model, preset=settings["preset"],
                                                 proposals=plane_proposals)
            del kept
            if image is None and not predictor.is_image_set:
                return MAPS_DROPPED
            try:
                if not predictor.is_image_set:
                    report("reading", 0, 1)  # a lazy image's plane may take a while
                    pixels = image()
                    report("reading", 1, 1)
                    predictor.set_image(pixels, progress=report, cancel=self._cancel.is_set)
                    del pixels
                    forwards += 1
                prediction = predictor.predict(
                    classes=settings["classes"], progress=report, cancel=self._cancel.is_set,
                    **overrides)
                mine = [p for p in hand[number - 1] if p.class_name in names]
                from_hand = None
                if mine:
                    from_hand = predictor.predict(
                        points=(np.array([p.yx for p in mine]), [names.index(p.class_name) for p in mine]),
                        progress=report, cancel=self._cancel.is_set, **overrides)
                    prediction = without_peaks(prediction, _replaced_by_hand(prediction, from_hand, mine, names))
                predictions.append(prediction)
                carried.append((mine, from_hand))
            except Cancelled:
                return None
            except ValueError as error:  # the image (or its proposals) cannot be used as given
                return f"Cannot run on {image_name!r}{' ' + prefix.rstrip(': ') if prefix else ''}: {error}"
        return model, predictions, forwards, {"planes": carried, "missing": lacking}

    def _on_close(self, deleted: bool = False) -> None:
        """Closed, or taken out of its dock: stop a running job; the PRMs layers' peak axis stops
        following the viewer's layers (`PeakAxisFollower`). Deleted (its window closed): no
        longer offered models (`offer_model`), as its Qt widgets are gone."""
        self._deleted = self._deleted or deleted
        self.cancel()
        self._peak_axes.disconnect()
        if deleted:
            _live_predict_widgets.discard(self)

    def cancel(self) -> None:
        """Stop the running prediction (between peaks); the layers stay as they were.

        Nothing to stop once its outcome is shown: the worker sends it before it says it finished.
        """
        if self.worker is not None and not self._outcome_taken:
            self._cancel.set()
        self.correction.cancel()

    def begin_activity(self, description: str, on_cancel) -> None:
        """Show a progress bar in napari's activity dock until `end_activity`."""
        self.end_activity()
        self.activity = ActivityProgress(description, on_cancel=on_cancel)

    def end_activity(self) -> None:
        if self.activity is not None:
            self.activity.close()
            self.activity = None

    def _on_progress(self, report: tuple[str, int, int]) -> None:
        if self._deleted:  # a report queued before napari closed: the widget's Qt objects are gone
            return
        stage, done, total = report
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)
        self.status.setText(f"{stage} {done}/{total}")
        if self.activity is not None:
            self.activity.update(stage, done, total)
        if not self._deleted:  # the bar processes Qt events as it redraws: napari may delete the widget meanwhile
            self.progressed.emit(stage, done, total)

    def _on_error(self, error: Exception) -> None:
        self._say(f"Prediction failed: {type(error).__name__}: {error}", "error")

    def _on_finished(self) -> None:
        if self._deleted:  # napari closed: nothing to show, and no Qt widget to show it in
            self.end_activity()
            self.worker = None
            return
        if self._cancel.is_set():
            self._say("Cancelled; the layers were left as they were.")
        self.end_activity()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._update_rethreshold()

    # ------------------------------------------------------------------ results
    def _show_results(self, layer, planes, leading, settings, out, started, keys, sent=None) -> None:
        """Show a run's ``out``; ``sent`` lists, per plane, the hand-placed points the run was given
        (the peaks layer may hold others by now: the user can place, move and delete points meanwhile)."""
        if out is None or self._cancel.is_set():
            return
        self._outcome_taken = True
        self.cancel_button.setEnabled(False)
        if isinstance(out, str):
            self._say(out, "error")
            return
        if layer not in self.viewer.layers:  # removed while the worker ran
            self.predictors.forget_layer(layer)
            self._say(f"The image layer {layer.name!r} was removed during the run; its results "
                      "were dropped.", "warning")
            return
        if any(self.predictors.outdated(key) for key in keys):  # its results are of the pixels it had
            self._say(f"The data of the image layer {layer.name!r} changed during the run; its results were "
                      "dropped: press Run again.", "warning")
            return
        model, predictions, forwards, hand = out
        self.last_forward_passes = forwards
        # the hand-placed points as the peaks layer holds them now, not as they were sent
        now, elsewhere = self._hand_peaks(layer, leading, planes)
        try:
            self._add_layers(layer, planes, leading, {**settings, "model_key": keys[0].model},
                             (model, predictions), started, dict(zip(planes, keys)),
                             hand={**hand, "elsewhere": elsewhere, "sent": sent or [[] for _ in planes],
                                   "now": now})
        except Exception as error:  # a slot must not swallow it: tell the user
            self._say(f"Could not show the results: {type(error).__name__}: {error}", "error")
            raise

    def _add_layers(self, layer, planes, leading, settings, out, started, keys, hand=None) -> None:
        model, predictions = out
        hand = hand or {"planes": [], "missing": [], "elsewhere": 0}
        late, missing = [], list(hand["missing"])
        if "now" in hand:  # points placed, moved, reclassed or deleted by hand while the run went on
            names = list(model.class_names)
            hand["planes"], late = _changed_during_run(hand["sent"], hand["now"], hand["planes"])
            missing += [p.class_name for _, p in late if p.class_name not in names]
            late = [(plane, p) for plane, p in late if p.class_name in names]
            predictions = [without_peaks(prediction, _replaced_by_hand(
                prediction, None, [p for where, p in late if where == plane], names))
                for plane, prediction in zip(planes, predictions)]
        kept = [int(c) for c in np.unique(np.concatenate([p.peak_classes for p in predictions]))]
        results = merge_predictions(planes, predictions, leading,
                                    crm_classes=kept if settings["crms"] else ())
        first_hand = len(results.points)
        carried = [(plane, mine, from_hand) for plane, (mine, from_hand) in zip(planes, hand["planes"]) if mine]
        no_instance = add_hand_peaks(results, [(plane, np.array([p.yx for p in mine]), from_hand)
                                               for plane, mine, from_hand in carried])
        hand_placed = [(plane, p) for plane, mine, _ in carried for p in mine]
        peaks, instances = len(results.points), len(results.instance_features)  # of the planes run
        # a run of some planes of a stack replaces only their part of the earlier runs' layers
        previous = self._stack_results(layer, planes, results, crms=bool(settings["crms"]))
        spliced, peak_offset, origins = planes if previous is not None else None, 0, {}
        waiting = set(), set()
        if previous is not None:
            previous, before = previous
            results, peak_offset = splice_planes(previous, results, planes)
            hand["elsewhere"] = 0  # kept with their planes' results
            # the other planes' cached maps serve the panel's retrievals there only when this run's
            # model and forward pass made them: else a retrieval (with this run's model) would cache
            # its maps under an earlier model's key, and a run with that model reuse them
            ran = next(iter(keys.values()))
            keys = {**{plane: key for plane, key in before.predictor_keys.items()
                       if (key.model, key.window, key.forward) == (ran.model, ran.window, ran.forward)}, **keys}
            kept_peaks = {peak for peak in results.point_features["peak"].tolist() if peak < peak_offset}
            origins = {peak: where for peak, where in moved_from(before.layers["peaks"]).items()
                       if peak in kept_peaks}
            # points added or moved on the other planes during the run wait for their retrieval
            waiting = tuple(peaks & kept_peaks for peaks in self.correction.waiting_in(before))
        self.context = RunContext(layer, model, settings, leading, results.class_names,
                                  results.prms, results.prm_planes, predictor_keys=keys,
                                  merged_into=results.merged_into)
        with self.correction.quiet():
            # corrections are never replaced silently: an edited instances layer (or, for a run
            # of some planes of a stack, one edited on those planes) is kept
            instances_layer = find_result(self.viewer, layer, "instances")  # renamed or not
            instances_name = layer_names(layer.name)["instances"] if instances_layer is None else instances_layer.name
            kept = keep_corrections(self.viewer, instances_layer, spliced)
            self.context.layers.update(add_result_layers(
                self.viewer, layer, results, show_text=bool(self.show_text.value)))
            remember_written(self.context.layers["instances"], spliced)
        peaks_layer = self.context.layers["peaks"]
        self._result_peaks[layer] = peaks_layer
        # where the kept moved points came from, under their new peak numbers
        set_moved_from(peaks_layer, {**origins, **{
            peak_offset + first_hand + k: (p.origin[0], (*plane, *p.origin[1]))
            for k, (plane, p) in enumerate(hand_placed) if p.origin is not None}})
        hand_notes = _hand_notes(len(hand_placed), missing, hand["elsewhere"], no_instance)
        if note := level_note(layer):
            hand_notes.insert(0, note)
        recorded = model.settings.get("channels")
        channel_note = channels_note(layer, recorded)
        if channel_note:
            hand_notes.insert(0, channel_note)
        # a gray layer run by a model of 2-3 channels, or an RGB one by a model of one channel (read as gray)
        rgb = bool(getattr(layer, "rgb", False))
        unmatched = bool(channel_note) and (len(recorded) > 1) != rgb
        if leading and len(planes) < int(np.prod(leading)) and self.viewer.dims.ndisplay == 3:
            # the 3-D view shows every plane: the results of the one run would seem to be the stack's
            hand_notes.insert(0, f"Ran on {_planes_text(planes)} only, the one the slider was last on (the 3-D view "
                                 "shows every plane): choose 'all planes' to run on all of them.")
        kept_note = ""
        if kept is not None and spliced is not None:
            kept_note = (f"Your corrections of {instances_name!r} on {_planes_text(spliced)} were replaced by "
                         f"this run; the layer as it was is kept as {kept.name!r} (hidden).")
        elif kept is not None:
            kept_note = f"Your corrections of {instances_name!r} were kept as {kept.name!r} (hidden)."
        if spliced is not None:
            kept_note = " ".join(filter(None, [
                f"{_planes_text(spliced)[:1].upper()}{_planes_text(spliced)[1:]} updated; the other planes' "
                "results were kept.", kept_note]))
        self.correction.attach(self.context)
        self.correction.retrieve_waiting(*waiting)
        if late:  # retrieved by the correction panel, as a point added now is
            self.correction.add_hand_points([p for _, p in late])
            hand_notes.append(f"{plural(len(late), 'hand-placed peak')} placed or moved during the run: "
                              "retrieving.")
        self.last_run_seconds = None if started is None else time.perf_counter() - started
        self.progress.setValue(self.progress.maximum())
        # the library's notes (shared with the command line) name the form's fields as it does
        notes = [self.in_field_words(note) for note in dict.fromkeys(results.notes)]
        after = [*notes, *hand_notes, kept_note]  # the sentences after the count (or "nothing found")
        # named: after several images, napari's notifications list one message per run; a run of some
        # planes of a stack says so, as its counts (and "nothing found") are of those planes alone
        subject = layer.name
        if leading and len(planes) < int(np.prod(leading)):
            subject += f", {_planes_text(planes)}"
        if peaks == 0:
            class_threshold, peak_threshold = resolve_thresholds(
                preset_settings(settings["preset"], **self.threshold_overrides(settings)), model.settings)
            # the library's wording (as evaluate's warning); the best class score is in the notes
            causes = no_instance_causes(images=len(planes) or 1, peaks=0,
                                        thresholds={"class": class_threshold, "peak": peak_threshold},
                                        classes=settings["classes"] or ())
            self._say(_message([
                f"{subject}: nothing found: {for_widget(causes)}. "
                f"Lower them{' or choose other classes' if settings['classes'] else ''}", *after]), "warning")
            return
        message = f"{subject}: {plural(peaks, 'peak')}, {plural(instances, 'instance')}"
        # why no instance (the library's wording, as evaluate's warning): the proposals chosen were 'none'
        # (said, not warned of: the user chose it), or no proposal was kept for a peak (warned of)
        chose_none = settings.get("proposals", "auto") is None
        if instances == 0:
            message += f" ({for_widget(no_instance_causes(images=1, peaks=peaks, proposals_none=int(chose_none)))})"
        if self.last_run_seconds is not None:
            reused = " (the image's maps reused)" if self.last_forward_passes == 0 else ""
            message += f" in {self.last_run_seconds:.1f} s{reused}"
        warn = notes or missing or hand["elsewhere"] or no_instance or unmatched or (instances == 0 and not chose_none)
        self._say(_message([message, *after]), "warning" if warn else "info")

    def _stack_results(self, layer, planes, results: Results, *, crms: bool):
        """What the result layers of ``layer`` hold now, as `Results`, and the `RunContext` of
        the run that made them, when the ``results`` of ``planes`` are to be spliced into them
        (`splice_planes`): some planes of a stack, whose peaks and instances layers (of this stack's
        shape, with the same classes) the correction panel still works on. Else None: the run
        replaces them. The CRM layers are taken along when the run makes them (``crms``)."""
        leading = results.leading_shape
        if not leading or len(planes) == int(np.prod(leading)):
            return None
        before = self.correction.context_of(layer)
        if before is None or list(before.class_names) != list(results.class_names):
            return None
        peaks, instances = before.layers.get("peaks"), before.layers.get("instances")
        if (peaks is None or instances is None
                or find_result(self.viewer, layer, "peaks") is not peaks
                or find_result(self.viewer, layer, "instances") is not instances
                or instances.multiscale or instances.data.shape != leading + results.image_shape
                or peaks.ndim != len(leading) + 2):
            return None
        crm_layers = {class_name: np.asarray(other.data)
                      for class_name, other in (find_results(self.viewer, layer, "crm") if crms else {}).items()}
        previous = Results(
            class_names=list(results.class_names), leading_shape=leading, image_shape=results.image_shape,
            points=np.asarray(peaks.data, float).reshape(-1, len(leading) + 2),
            point_features=peaks.features.reset_index(drop=True),
            prms=before.prms, prm_planes=before.prm_planes,
            labels=np.asarray(instances.data), instance_features=instances.features.reset_index(drop=True),
            crms={name: crm for name, crm in crm_layers.items() if crm.shape[:len(leading)] == leading},
            merged_into=dict(before.merged_into))
        return previous, before

    def show_prediction(self, image_layer: Image, prediction: Prediction, model, *,
                        predictor=None, model_choice: str | None = None, **settings) -> dict:
        """Show a prediction made elsewhere (``napari-prm demo``) as a run of this widget.

        The layers are the ones a run makes (same names, data and features), and the
        correction tools work on them.

        Parameters
        ----------
        image_layer : napari.layers.Image
            The 2-D image ``prediction`` was made on.
        prediction : Prediction
            The result of :func:`napari_prm.predict` or of ``predictor.predict()``.
        model : PRMModel
            The model that made it (adding a point back-propagates through it).
        predictor : PRMPredictor, optional
            The predictor that made it, with the image set: added points then cost one
            backward pass each, and no forward pass.
        model_choice : str, optional
            The model's built-in name or checkpoint path: the form then shows this model,
            and *Re-threshold* works on the prediction at once.
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
        level = run_level(image_layer)
        level_shape = run_shape(image_layer) if image_layer.multiscale else None
        if level_shape is not None and tuple(prediction.image_shape) != level_shape:
            raise ValueError(f"layer {image_layer.name!r} is a pyramid whose level {level} ({level_shape[0]}×"
                             f"{level_shape[1]}) a run reads and its layers show; the prediction is of a "
                             f"{prediction.image_shape[0]}×{prediction.image_shape[1]} image: predict on "
                             f"image_layer.data[{level}]")
        self.reset_choices()
        self.image.value = image_layer
        preset = prediction.settings.preset if prediction.settings is not None else self.preset.value
        run_settings = {**self._settings(), "preset": preset, **settings}
        if model_choice is not None:
            from ..model.checkpoint import is_builtin_name

            if not is_builtin_name(model_choice) and Path(model_choice).is_file():
                model_choice = str(Path(model_choice).resolve())  # as the form names it
            device = model.device.type
            run_settings.update(model=model_choice, device=device,
                                model_key=self.models.put(model_choice, device, model))
            if device in self.device.choices:
                self.device.value = device
            self.select_model(model_choice)
            self.preset.value = preset
        else:  # a model the form does not offer: only the corrections use its maps
            run_settings["model_key"] = ("shown model", id(model), str(model.device))
        run_settings["window"] = int(model.network.win_size)
        if prediction.settings is not None:
            run_settings["predict_settings"] = prediction.settings
        key = self.predictor_key(image_layer, (), run_settings)
        if predictor is not None and predictor.is_image_set:
            self.predictors.put(key, predictor)
        self._watch(image_layer)
        self._add_layers(image_layer, [()], leading, run_settings, (model, [prediction]), None, {(): key})
        self._update_rethreshold()
        return dict(self.context.layers)

    def _on_show_text(self, visible: bool) -> None:
        if self.context is not None and "peaks" in self.context.layers:
            self.context.layers["peaks"].text.visible = bool(visible)


def _pyramid_proposals_refusal(layer, proposals) -> str:
    """Why a Labels layer of ``proposals`` cannot serve a run of the pyramid ``layer`` ("" when it
    can, or either is not one): its masks are not of the size of the level a run reads."""
    if not (isinstance(proposals, Labels) and level_text(layer)):
        return ""
    data = proposals.data[0] if proposals.multiscale else proposals.data
    level = run_level(layer)
    height, width = run_shape(layer)
    if tuple(data.shape[-2:]) == (height, width):
        return ""
    return (f"Cannot run on {layer.name!r}: the proposals {proposals.name!r} are {data.shape[-2]}×{data.shape[-1]} "
            f"pixels, and a run of this pyramid reads its level {level} ({height}×{width}); give proposals of "
            "that size, or another proposals source.")


def _replaced_by_hand(prediction, from_hand, hand, names) -> np.ndarray:
    """Which peaks of ``prediction`` a hand-placed point replaces: a peak of the same class at
    the point's CRM pixel, or at the place the model's peak it was moved from was."""
    cells = set() if from_hand is None else {tuple(cell) for cell in from_hand.peaks_crm.tolist()}
    origins = [p.origin for p in hand if p.origin is not None and p.origin[0] in names]
    if origins:
        yx = image_to_crm(np.array([where for _, where in origins]), prediction.crms.shape[1:],
                          prediction.image_shape, prediction.sub_pixel_locating_factor)
        cells |= {(names.index(name), int(y), int(x)) for (name, _), (y, x) in zip(origins, yx)}
    return np.array([tuple(cell) in cells for cell in prediction.peaks_crm.tolist()], bool)


def _same_hand_peak(a, b) -> bool:
    """Whether two reads of the hand-placed points name the same point, unchanged: its number,
    plane, position and class."""
    return (a.peak == b.peak and a.plane == b.plane and a.class_name == b.class_name
            and np.allclose(a.yx, b.yx))


def _changed_during_run(sent, now, ran):
    """Reconcile the hand-placed points a run was sent with those the peaks layer holds as it ends.

    ``sent`` and ``now`` list, per plane, the `HandPeak` s given to the run and those read as it
    ends; ``ran`` holds, per plane, the run's ``(points, prediction from them)``. Returns ``ran``
    without the points deleted, moved or reclassed meanwhile, and ``(plane, HandPeak)`` for the
    points placed (or changed) meanwhile, which the run has not retrieved.
    """
    kept, late = [], []
    for plane_sent, plane_now, (mine, from_hand) in zip(sent, now, ran):
        still = np.array([any(_same_hand_peak(p, q) for q in plane_now) for p in mine], bool)
        if len(mine) and not still.all():
            from_hand = without_peaks(from_hand, ~still)
            mine = [p for p, keep in zip(mine, still) if keep]
        kept.append((mine, from_hand))
        late += [(q.plane, q) for q in plane_now if not any(_same_hand_peak(p, q) for p in plane_sent)]
    return kept, late


class _VerticalScrollArea(QScrollArea):
    """A scroll area that scrolls up and down only: at least as wide as its widget needs
    beside the vertical scroll bar, and as tall as the dock lets it be."""

    def __init__(self):
        super().__init__()
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return hint
        return QSize(inner.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                     + 2 * self.frameWidth(), hint.height())

    def eventFilter(self, watched, event) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # its widget needs another width: the dock's minimum follows
        return super().eventFilter(watched, event)


def _message(parts) -> str:
    """The status line of a run: its ``parts`` (the count or "nothing found", the notes of the
    library and of the widget; "" for none) as the sentences of one line, each ending with a full
    stop (the library's notes have none)."""
    return sentences(part for part in parts if part)


def _planes_text(planes) -> str:
    """The planes of a stack as the status line names them: "plane 2", "planes 0, 2", "plane (1, 3)"."""
    names = [str(plane[0]) if len(plane) == 1 else str(tuple(plane)) for plane in planes]
    return f"plane{'s' if len(names) > 1 else ''} {', '.join(names)}"


def _hand_notes(kept: int, missing: list, elsewhere: int, no_instance: list) -> list[str]:
    """What the status line says about the peaks placed by hand that a run kept or dropped."""
    def peaks(count):
        return plural(count, "hand-placed peak")

    notes = []
    if kept:
        notes.append(f"{peaks(kept)} kept (re-retrieved).")
    if missing:
        classes = list(dict.fromkeys(missing))
        notes.append(f"{peaks(len(missing))} of {', '.join(map(repr, classes))} dropped: the model has no "
                     f"class {' or '.join(map(repr, classes))}.")
    if elsewhere:
        notes.append(f"{peaks(elsewhere)} on planes not run dropped.")
    if no_instance:
        notes.append(f"No instance found for hand-placed peaks {no_instance} (their PRMs were added).")
    return notes


def channels_note(layer, channels) -> str:
    """What a run's message says when the model records the image ``channels`` it was trained
    on (``settings["channels"]`` of its checkpoint) and ``layer`` may not hold them as it saw them.

    The widget runs on the layer's pixels as they are: it cannot pick channels from a gray
    layer (one channel of an image opened with ``channel_axis`` is a layer of its own), nor
    combine layers, nor take one channel out of an RGB layer. For a layer that is not RGB the
    note names the channels and says how to add them as one RGB layer (docs/plugin.md,
    *image*). For an RGB(A) layer it says how the model saw them: one channel as gray (the
    same in red, green and blue; one held in red with an empty green and blue is not it), and
    how to add it as a gray layer; 2 as red and green with an empty blue, 3 as red, green and
    blue, and how to make such a layer. "" when nothing is recorded, or when an RGB layer is
    run by a model of channels 0, 1, 2 (an RGB image read as it is).

    Parameters
    ----------
    layer : napari.layers.Image
        The layer run on.
    channels : sequence of int or None
        The channels the model's checkpoint records.

    Returns
    -------
    str
        The note, or "".
    """
    if not channels:
        return ""
    channels = [int(c) for c in channels]
    listed = ",".join(map(str, channels))
    names = [f"c{c}" for c in channels]
    parts = [f"{name}.data" for name in names] + ([f"np.zeros_like({names[0]}.data)"] if len(names) == 2 else [])
    recipe = (f"add those channels' layers as one RGB layer from napari's console, "
              f"viewer.add_image(np.stack([{', '.join(parts)}], axis=-1), rgb=True), where "
              + ", ".join(names) + f" are the layers of channels {listed} (see the plugin docs, 'image')")
    if getattr(layer, "rgb", False):
        if channels == [0, 1, 2]:
            return ""
        if len(channels) == 1:
            return (f"The model was trained on image channel {listed} alone, read as gray (the same in red, green "
                    f"and blue; its checkpoint records it), but {layer.name!r} is an RGB layer: it ran on its colours "
                    "as they are (a channel held in red with an empty green and blue is seen as red, not as gray). "
                    "To run it as trained, add that channel as a gray layer from napari's console, "
                    f"viewer.add_image(viewer.layers[{layer.name!r}].data[..., 0]) (0: red, 1: green, 2: blue, the "
                    "colour that holds it), and run on that.")
        colours = ("its red should be channel {}, its green channel {} and its blue empty" if len(channels) == 2
                   else "its red, green and blue should be channels {}, {} and {}").format(*channels)
        laid = "as red and green with an empty blue" if len(channels) == 2 else "as red, green and blue"
        return (f"The model was trained on image channels {listed} {laid} (its checkpoint records them): "
                f"{layer.name!r} is an RGB layer, run on as it is, so {colours}. To make such a layer, "
                f"{recipe}.")
    if len(channels) == 1:
        return (f"The model was trained on image channel {listed} alone (read as gray, its checkpoint records it): "
                f"{layer.name!r} should be that channel (the widget runs on a layer as it is).")
    return (f"The model was trained on image channels {listed} as red, green and blue (its checkpoint records "
            f"them), but {layer.name!r} is not an RGB layer: it ran on this layer's pixels alone. To run it as "
            f"trained, {recipe}, and run on that.")
