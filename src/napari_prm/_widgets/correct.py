"""Correction tools of the "Peak Response Maps" widget.

napari's Labels tools paint, erase and fill; this panel adds what they lack: delete,
re-class, merge, split at a drawn line, remove small instances, and add (or re-do) an
instance from a point placed (or moved) in the peaks layer. The array work is
:mod:`napari_prm.edit`; model calls run in a worker thread.

Each edit is one step of the Labels layer's own undo history (Ctrl+Z, Ctrl+Shift+Z), the
instance table included (:mod:`napari_prm._widgets.history`). The actions have keyboard
shortcuts on the instances layer (`SHORTCUTS`), bound with ``overwrite=True`` so that they
win over napari's defaults for that layer only.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from qtpy.QtCore import QTimer

from .. import edit
from .._text import plural
from ..predict import Cancelled
from .history import InstanceHistory, reset_history
from .layers import (
    features_table,
    instance_features,
    mark_hand_placed,
    peak_positions,
    point_defaults,
    point_plane,
    world_kwargs,
)
from .marks import find_result, mark
from .painted import can_correct, painted_context
from .points import PointRetrieval

#: Wait this long after the last move of a point before re-doing its instance (ms).
MOVE_SETTLE_MS = 400

#: Keyboard shortcuts of the instances layer: (keys, panel method, what it does). The split
#: keys work on the split-line layer too, where the line was just drawn.
SHORTCUTS = (
    (("Delete", "Backspace"), "delete_selected", "delete the selected instance"),
    (("Shift-M",), "merge_previous_into_selected",
     "merge the previously selected instance into the selected one"),
    (("Shift-S",), "split_selected", "split the selected instance at the drawn line"),
    (("Shift-C",), "set_class_of_selected", "give the selected instance the chosen class"),
    (("Shift-A",), "next_alternative_of_selected",
     "give the selected instance its next alternative mask (a larger proposal around it or a smaller one "
     "inside it that its peak fits; again: the next, and back to its own)"),
    (("N",), "select_next_by_score", "select the next instance by score (highest first)"),
    (("Shift-N",), "select_previous_by_score", "select the previous instance by score"),
)
UNDO_KEYS = "Ctrl+Z / Ctrl+Shift+Z"
#: How many alternative masks an instance offers (``PRMPredictor.predict(alternatives=)``).
ALTERNATIVES = 3


@dataclass(eq=False)
class AlternativeCycle:
    """The masks *Next alternative mask* cycles through for one instance: its own, as it was
    when the cycle began (painting included), then its alternatives; each of its plane's shape
    (``plane``: the leading index of a stack's plane, ``()`` for a 2-D image)."""

    layer: object
    label: int
    masks: list
    plane: tuple = ()
    at: int = 0


def shortcuts_help() -> str:
    """The shortcuts as the panel lists them (HTML)."""
    rows = "".join(f"<tr><td><b>{' / '.join(keys)}</b>&nbsp;</td><td>{text}</td></tr>"
                   for keys, _, text in SHORTCUTS)
    rows += f"<tr><td><b>{UNDO_KEYS}</b>&nbsp;</td><td>undo / redo (napari's, edits included)</td></tr>"
    return f"Keys on the instances layer:<table>{rows}</table>"


def _keys_of(method: str) -> str:
    return " / ".join(next(keys for keys, name, _ in SHORTCUTS if name == method))


class CorrectionContext(Protocol):
    """What the panel works on: a run's layers (`predict.RunContext`), or a Labels layer no run
    made (`napari_prm._widgets.painted.PaintedContext`: no peaks, no image layer)."""

    layers: dict  # 'instances' and, of a run, 'peaks' and 'prms' -> layer
    class_names: list
    merged_into: dict  # peak -> the peak whose instance took it in
    image_layer: object  # None for a Labels layer no run made
    unnamed_class: str  # the class of labels painted without one

    @property
    def split_name(self) -> str:
        """The name of the Shapes layer split lines are drawn in."""

    def choices(self) -> list[str]:
        """The classes the panel offers."""

    def class_index(self, class_name: str) -> int:
        """The ``class_index`` of ``class_name``, one of `choices`."""

    def refresh_classes(self, model_class_names) -> None:
        """Take up the classes of the model now loaded, where they are the layer's."""


@dataclass(eq=False)
class _Orphan:
    """The peaks layer of a run the panel forgot because its instances layer was removed: nothing
    retrieves its points now, but a new *Run* keeps those added or moved there (`HAND_PLACED`)."""

    instances_name: str  # the removed instances layer's
    class_names: list  # the forgotten run's, which the class picker offers (not its context: its PRMs go)
    positions: dict  # where its numbered points were (`peak_positions`): a model's peak moved is seen


@dataclass(eq=False)
class _Run:
    """What the panel keeps of one image's run: its layers (``context``), the instance tables of
    its undo history, the positions of its points, the points waiting for retrieval, those placed
    by hand and not retrieved yet, and those Ctrl+Z took away."""

    context: CorrectionContext
    history: InstanceHistory = field(default_factory=InstanceHistory)
    positions: dict = field(default_factory=dict)
    pending: set = field(default_factory=set)
    clicked: set = field(default_factory=set)  # points placed by hand, not retrieved yet
    undone_points: dict = field(default_factory=dict)  # points taken away by Ctrl+Z: peak -> (data row, features)
    sync_scheduled: bool = False  # a paint's table sync waits for the event loop
    #: (the label selected last, *other label*) while another run is worked on; None: not worked on yet
    merge_partner: tuple | None = None


class CorrectionPanel(PointRetrieval):
    """Instance corrections on the layers of the owner's runs (``.native`` is its Qt widget).

    The panel keeps every image's last run: an edit, a key or a layer event works on the run
    whose layer it comes from (the buttons on the run of the active layer), so that after
    running the next image of a folder, going back to correct the previous one changes that
    image's layers.
    """

    def __init__(self, owner):
        self.owner = owner
        self.worker = None
        self._quiet_depth = 0
        self._linking = False
        self._run: _Run | None = None
        self._runs: list[_Run] = []
        self._last_label = 0
        self._cancel = threading.Event()
        self._connected: weakref.WeakSet = weakref.WeakSet()  # layers whose events we hear
        # peaks layers of runs forgotten because their instances layer was removed -> `_Orphan`
        self._orphaned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._orphan = None  # the orphaned peaks layer the class picker serves (no run worked on)
        self._move_timer = QTimer()
        self._move_timer.setSingleShot(True)
        self._move_timer.setInterval(MOVE_SETTLE_MS)
        self._move_timer.timeout.connect(self._start_waiting)

        self.class_choice = ComboBox(label="class", choices=[])
        self.redo_points = CheckBox(text="retrieve instances of added or moved peaks", value=True)
        self.delete_button = PushButton(text="Delete selected instance")
        self.set_class_button = PushButton(text="Set class of selected instance")
        self.merge_with = SpinBox(label="other label", min=0, max=2**31 - 1, value=0,
                                  tooltip="the instance selected before the current one; "
                                          "type another label to merge that one")
        self.merge_button = PushButton(text="Merge other label into selected")
        self.draw_line_button = PushButton(text="Draw split line")
        self.split_button = PushButton(text="Split instance at line")
        self.min_area = SpinBox(label="min. area (pixels)", min=0, max=10**9, value=50)
        self.remove_small_button = PushButton(text="Remove smaller instances")
        self.next_button = PushButton(text="Next instance by score")
        self.alternative_button = PushButton(text="Next alternative mask of selected")
        self._cycle: AlternativeCycle | None = None
        self._computing: tuple | None = None  # (layer, label) whose alternatives the worker finds
        self._cancelled_message = ""  # said when the worker is cancelled (`_start_worker`)
        for button, method in ((self.delete_button, "delete_selected"),
                               (self.set_class_button, "set_class_of_selected"),
                               (self.merge_button, "merge_previous_into_selected"),
                               (self.split_button, "split_selected"),
                               (self.alternative_button, "next_alternative_of_selected"),
                               (self.next_button, "select_next_by_score")):
            button.tooltip = f"shortcut on the instances layer: {_keys_of(method)}"
        self.next_button.tooltip += f" ({_keys_of('select_previous_by_score')}: the previous one)"
        self.shortcuts_label = Label(value=shortcuts_help())
        self.shortcuts_label.native.setWordWrap(True)  # the list's long lines must not widen the dock
        #: why the tools are off while the class picker serves a run's orphaned peaks layer (`_show_state`)
        self.off_label = Label(value="")
        self.off_label.native.setWordWrap(True)
        self.off_label.visible = False
        #: what works on a run's instances (all but the class picker, which serves added points too)
        self.tools = (self.redo_points, self.delete_button, self.set_class_button, self.merge_with,
                      self.merge_button, self.draw_line_button, self.split_button, self.min_area,
                      self.remove_small_button, self.alternative_button, self.next_button, self.shortcuts_label)
        self.container = Container(widgets=[
            Label(value="<b>Correct instances</b>"), self.off_label, self.class_choice, *self.tools,
        ])
        self.class_choice.changed.connect(self._on_class_choice)
        self.delete_button.changed.connect(lambda: self.delete_selected())
        self.set_class_button.changed.connect(lambda: self.set_class_of_selected())
        self.merge_button.changed.connect(lambda: self.merge_selected_with(self.merge_with.value))
        self.draw_line_button.changed.connect(lambda: self.draw_split_line())
        self.split_button.changed.connect(lambda: self.split_selected())
        self.remove_small_button.changed.connect(lambda: self.remove_small(self.min_area.value))
        self.next_button.changed.connect(lambda: self.select_next_by_score())
        self.alternative_button.changed.connect(lambda: self.next_alternative_of_selected())
        self._show_state()

    @property
    def native(self):
        return self.container.native

    @property
    def tools_enabled(self) -> bool:
        """Whether the tools that work on a run's instances can be used (the class picker aside)."""
        return self.container.enabled and all(widget.enabled for widget in self.tools)

    # ------------------------------------------------------------------ the run worked on
    @property
    def context(self):
        return self._run.context if self._run is not None else None

    @property
    def history(self) -> InstanceHistory:
        return self._run.history

    @property
    def _positions(self) -> dict[int, tuple]:
        return self._run.positions if self._run is not None else {}

    @_positions.setter
    def _positions(self, positions: dict[int, tuple]) -> None:
        if self._run is not None:
            self._run.positions = positions

    @property
    def _pending(self) -> set[int]:
        return self._run.pending if self._run is not None else set()

    @_pending.setter
    def _pending(self, pending: set[int]) -> None:
        if self._run is not None:
            self._run.pending = pending

    @property
    def _clicked(self) -> set[int]:
        return self._run.clicked if self._run is not None else set()

    @property
    def _undone_points(self) -> dict[int, tuple]:
        return self._run.undone_points if self._run is not None else {}

    def _run_of(self, layer) -> _Run | None:
        """The run whose peaks, instances or split-line layer ``layer`` is."""
        for run in self._runs:
            layers = run.context.layers
            if any(layer is mine for mine in layers.values()) or layer is _split_layer(self.owner.viewer, run.context):
                return run
        return None

    def context_of(self, image_layer):
        """The `RunContext` of the last run of ``image_layer`` the panel keeps, or None."""
        return next((run.context for run in reversed(self._runs) if run.context.image_layer is image_layer), None)

    def focus(self, layer) -> bool:
        """Work on the run ``layer`` belongs to; a Labels layer no run made becomes one to work
        on (`napari_prm._widgets.painted`); any other layer changes nothing.

        Returns False when the panel cannot leave its run now: peaks moved there wait for a
        retrieval that is running.
        """
        run = self._run_of(layer)
        if run is None and can_correct(layer):
            run = self._painted_run(layer)
        orphan = run is None and layer in self._orphaned and layer is not self._orphan
        if (run is None and not orphan) or (run is not None and run is self._run):
            return True
        if self._pending:  # peaks added or moved here: retrieve them before leaving
            self._move_timer.stop()
            self._start_pending()
            if self._pending:
                return False
        if orphan:  # the class picker serves the points added there
            self._serve_orphan(layer)
        else:
            self._switch(run)
        return True

    def _serve_orphan(self, peaks) -> None:
        """Work on no run: the class picker gives the points added to ``peaks`` (the peaks layer of a
        run forgotten when its instances layer was removed) their class, which a new *Run* retrieves;
        the other tools are off, the panel saying why (`_show_state`)."""
        self._keep_merge_partner()
        self._run = None
        self._orphan = peaks
        self._offer_classes(list(self._orphaned[peaks].class_names))
        self._show_state()
        self._on_class_choice(self.class_choice.value)

    def _offer_classes(self, choices: list[str]) -> None:
        """Offer ``choices`` in the class picker, in their order, keeping the class picked where offered."""
        if list(self.class_choice.choices) != choices:
            chosen = self.class_choice.value
            self.class_choice.choices = []  # magicgui keeps the items still offered first: not in order
            self.class_choice.choices = choices
            if chosen in choices:
                self.class_choice.value = chosen

    def _show_state(self) -> None:
        """Enable the panel for the run worked on; with none, only the class picker for an orphaned
        peaks layer (`_serve_orphan`), the panel saying why the rest is off; else nothing."""
        orphan = self._orphaned.get(self._orphan) if self._run is None and self._orphan is not None else None
        self.container.enabled = self._run is not None or orphan is not None
        for widget in self.tools:
            widget.enabled = self._run is not None
        why = "" if orphan is None else (
            f"The instances layer {orphan.instances_name!r} was removed: the tools below the class picker are "
            f"off. Points you add to {self._orphan.name!r} (of the class picked) or move there stay, and the next "
            "Run keeps them and retrieves their instances into a new instances layer.")
        self.off_label.value = why
        self.off_label.visible = bool(why)

    def _switch(self, run: _Run) -> None:
        self._keep_merge_partner()
        self._run = run
        self._orphan = None
        self._show_state()  # disabled when the run worked on before left the viewer
        self._take_merge_partner()
        self.refresh_classes()

    def _keep_merge_partner(self) -> None:
        """Keep, with the run worked on, the instance selected last and *other label* (its merge
        partner), before the panel works on another run."""
        if self._run is not None:
            self._run.merge_partner = (self._last_label, int(self.merge_with.value))

    def _take_merge_partner(self) -> None:
        """Show the merge partner of the run now worked on: the one kept with it, or, for a new run,
        none. *Other label* must not hold a label of another layer (another image's, or those a new
        run replaced), which a merge would take as the instance to merge away. The label the layer
        shows as selected counts as the one selected before (picking it again changes nothing that
        napari reports), so picking another instance makes it the partner."""
        kept = self._run.merge_partner
        self._last_label, partner = kept if kept is not None else (int(self.instances.selected_label), 0)
        self.merge_with.value = partner

    def refresh_classes(self) -> None:
        """Offer the classes of the layer worked on (a painted layer's: the model's now loaded)."""
        context = self.context
        if context is None:
            return
        with self.quiet():
            context.refresh_classes(self.owner.model_class_names())
        self._offer_classes(context.choices())
        self._on_class_choice(self.class_choice.value)

    def _painted_run(self, layer) -> _Run:
        """Start working on a Labels layer no run made (`napari_prm._widgets.painted`): its table
        is completed, and its edits, keys and undo work as on a run's instances layer."""
        with self.quiet():
            run = _Run(painted_context(layer, self.owner.model_class_names()))
        self._runs.append(run)
        self._connect_instances(layer)
        self.bind_shortcuts(layer)
        return run

    def forget(self, layer) -> None:
        """Forget the runs whose peaks or instances layer ``layer`` was (it left the viewer)."""
        gone = [run for run in self._runs
                if any(layer is run.context.layers.get(kind) for kind in ("peaks", "instances"))]
        for run in gone:
            peaks = run.context.layers.get("peaks")
            if peaks is not None and layer is run.context.layers.get("instances") and peaks in self.owner.viewer.layers:
                # its points can no longer be retrieved, but a new Run keeps them: `_on_orphaned_points`
                self._orphaned[peaks] = _Orphan(layer.name, list(run.context.class_names), dict(run.positions))
        self._runs = [run for run in self._runs if run not in gone]
        if self._cycle is not None and self._cycle.layer is layer:
            self._cycle = None
        if self._orphaned.pop(layer, None) is not None and layer is self._orphan:
            self._orphan = None  # the orphaned peaks layer itself left
        if self._run in gone:
            peaks = self._run.context.layers.get("peaks")
            self._run = None
            if peaks in self._orphaned:
                self._serve_orphan(peaks)
        self._show_state()

    @contextmanager
    def working_on(self, context):
        """Work on the run of ``context`` inside (a retrieval ending on it), then on the run
        worked on before; yields False (and changes nothing) when that run is gone."""
        run = next((run for run in self._runs if run.context is context), None)
        before = self._run
        orphan = self._orphan if before is None else None  # the orphaned peaks layer the class picker served
        if run is not None and run is not before:
            self._switch(run)
        try:
            yield run is not None
        finally:
            if before is not None and before is not run and before in self._runs:
                self._switch(before)
            elif orphan is not None and run is not None and orphan in self._orphaned and self._run is run:
                self._serve_orphan(orphan)

    def _on(self, layer, handler, orphaned=None):
        """A slot for an event of ``layer``: the panel works on that layer's run first (none, for
        a layer of a run it forgot: that run's layers are no other run's business; ``orphaned``,
        if given, hears the event then)."""
        def slot(event=None):
            if self._run_of(layer) is None:
                if orphaned is not None:  # said of a layer whose run was forgotten
                    orphaned(layer, event)
                return
            if not self._quiet_depth and not self.focus(layer):
                return
            handler(event)
        return slot
    # ------------------------------------------------------------------ wiring
    @property
    def running(self) -> bool:
        return self.worker is not None

    @contextmanager
    def quiet(self):
        """Ignore layer events while the plugin itself changes the layers."""
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1

    @property
    def peaks(self):
        return self.context.layers.get("peaks") if self.context else None

    @property
    def instances(self):
        return self.context.layers.get("instances") if self.context else None

    def attach(self, context) -> None:
        """Work on the layers of a new run (it replaces the run of the same layers, and what
        waited there; peaks waiting in another image's run are retrieved there next)."""
        instances = context.layers["instances"]
        self._runs = [run for run in self._runs if run.context.layers.get("instances") is not instances]
        self._keep_merge_partner()
        self._run = _Run(context)
        self._runs.append(self._run)
        self._orphaned.pop(context.layers["peaks"], None)
        self._orphan = None
        self._show_state()
        reset_history(instances)  # its data was replaced in place
        self._take_merge_partner()
        self._cycle = None  # the alternatives of the run it replaced
        self.class_choice.choices = list(context.class_names)
        found = list(context.layers["peaks"].features["class_name"])
        if found:  # new points most likely belong to a class already found
            self.class_choice.value = found[0]
        peaks, labels = self.peaks, self.instances
        self._orphaned.pop(peaks, None)
        self._positions = self._point_positions()
        if peaks not in self._connected:
            peaks.events.data.connect(self._on(peaks, self._on_points_data, self._on_orphaned_points))
            peaks.selected_data.events.items_changed.connect(self._on(peaks, self._on_points_selected))
            self._connected.add(peaks)
        self._connect_instances(labels)
        self.bind_shortcuts(labels)
        self._on_class_choice(self.class_choice.value)

    def _on_orphaned_points(self, peaks, event) -> None:
        """A point added or moved in the peaks layer of a run whose instances layer was removed
        (the panel forgot that run): nothing retrieves it now, so the status line says so. A model's
        peak moved is marked `HAND_PLACED` as in a run's peaks layer, so that the next run keeps it
        where it was put (an added point is so marked by the layer's defaults)."""
        orphan = self._orphaned.get(peaks)
        if orphan is None or self._quiet_depth or str(event.action) not in ("added", "changed"):
            return
        positions = peak_positions(peaks)
        moved = {p for p, where in positions.items() if orphan.positions.get(p) not in (None, where)}
        if moved:
            features = mark_hand_placed(peaks, moved, orphan.positions)
            if features is not None:
                with self.quiet():
                    peaks.features = features
                    if peaks is self._orphan:  # napari resets the defaults of new points
                        self._on_class_choice(self.class_choice.value)
        orphan.positions = positions
        message = (f"The point is not retrieved now: the instances layer of this run ({orphan.instances_name!r}) "
                   "was removed. The point stays where you put it; press Run to predict the image again (the new "
                   "run keeps the points you added or moved and retrieves their instances).")
        if self.owner.last_message != message:  # once, not at every step of a drag
            self._say(message, "warning")

    def _connect_instances(self, labels) -> None:
        if labels not in self._connected:
            labels.events.selected_label.connect(self._on(labels, self._on_label_selected))
            labels.events.paint.connect(self._on(labels, self._on_paint))
            labels.events.set_data.connect(self._on(labels, self._on_paint))  # undo and redo emit only this
            self._connected.add(labels)

    def bind_shortcuts(self, layer) -> None:
        """Bind `SHORTCUTS` on ``layer`` (an instances layer, or a split-line layer)."""
        instances = any(layer is run.context.layers.get("instances") for run in self._runs)
        for keys, method, _ in SHORTCUTS:
            if not instances and method != "split_selected":
                continue
            for key in keys:
                layer.bind_key(key, lambda layer, method=method: self._shortcut(layer, method),
                               overwrite=True)

    def _shortcut(self, layer, method: str):
        if self._run_of(layer) is None:  # a run forgotten: the key must not act on another image's
            self._say("The correction tools no longer work on this layer (its run's peaks layer, or the "
                      "instances layer, was removed): run the image again, or select a Labels layer, to "
                      "correct instances.", "warning")
            return None
        if not self.focus(layer):
            self._say("Wait for the retrieval of the added peaks to finish.", "warning")
            return None
        return getattr(self, method)()

    def _say(self, message: str, kind: str = "info") -> None:
        self.owner._say(message, kind)

    def _set_point_features(self, features) -> None:
        """Replace the peaks' features, keeping the chosen class as new points' defaults
        (napari resets a layer's feature defaults whenever its features are set)."""
        self.peaks.features = features
        self._on_class_choice(self.class_choice.value)

    def _on_class_choice(self, name) -> None:
        """The class of the points added next: to the run's peaks layer, or to the orphaned one the
        picker serves (`_serve_orphan`)."""
        if name is None:
            return
        if self.peaks is not None:
            peaks, class_names = self.peaks, self.context.class_names
        elif self._orphan in self._orphaned:
            peaks, class_names = self._orphan, self._orphaned[self._orphan].class_names
        else:
            return
        if name in class_names:
            peaks.feature_defaults = point_defaults(class_names, class_names.index(name))

    # ------------------------------------------------------------------ selection link
    def _on_points_selected(self, event=None) -> None:
        if self._linking or self.instances is None or not self.peaks.selected_data:
            return
        label = int(self.peaks.features["label"].iloc[max(self.peaks.selected_data)])
        if label > 0 and self.instances.selected_label != label:
            self._linking = True
            try:
                self.instances.selected_label = label
            finally:
                self._linking = False

    def _on_label_selected(self, event=None) -> None:
        if self.instances is None:
            return
        label = int(self.instances.selected_label)
        if label != self._last_label:
            # the instance selected before is what a merge takes by default
            if self._last_label > 0 and label > 0:
                self.merge_with.value = self._last_label
            self._last_label = label
        if self._linking or self.peaks is None:
            return
        rows = set(np.flatnonzero(self.peaks.features["label"].to_numpy() == label).tolist())
        if rows and rows != set(self.peaks.selected_data):
            self._linking = True
            try:
                self.peaks.selected_data = rows
            finally:
                self._linking = False

    # ------------------------------------------------------------------ edits
    def _table(self) -> dict:
        return features_table(self.instances.features)

    def _write(self, labels: np.ndarray | None, table: dict, relabel: dict | None = None,
               points=(), what: str = "") -> None:
        """Put edited labels and table into the layer; keep the peaks' ``label`` column true.

        Changed pixels go through ``data_setitem`` as one item of the layer's undo history,
        tied to the table before and after (``labels=None``: only the table changes, to
        follow pixels changed by napari, as after painting or undo), and to the ``points``
        placed by hand whose first retrieval it is (undoing it takes them away), and to
        ``what`` it did (the status line after Ctrl+Z or Ctrl+Shift+Z says it).
        """
        layer = self.instances
        with self.quiet():
            if labels is not None and (labels.dtype != layer.data.dtype
                                       or labels.shape != layer.data.shape):
                layer.data = labels  # a new array: its history no longer applies
                reset_history(layer)
            elif labels is not None:
                with self.history.edit(layer, self._table(), lambda: table, points, what):
                    changed = labels != layer.data
                    if changed.any():
                        layer.data_setitem(np.nonzero(changed), labels[changed])
            layer.features = instance_features(table)
            if self.peaks is None:  # a Labels layer no run made
                return
            features = self.peaks.features.copy()
            point_labels = features["label"].to_numpy().copy()
            for old, new in (relabel or {}).items():
                point_labels[point_labels == old] = new
            point_labels[~np.isin(point_labels, table["label"])] = 0
            features["label"] = point_labels
            self._set_point_features(features)

    def _selected(self) -> int | None:
        if self.instances is None:
            self._say("Run a prediction first: there are no instances to correct.", "warning")
            return None
        label = int(self.instances.selected_label)
        if not np.any(self.instances.data == label):
            self._say(f"Label {label} is not in {self.instances.name!r}: select an instance "
                      "(pick it with the Labels layer's picker, or select its peak).", "warning")
            return None
        return label

    def _apply(self, operation, *args, relabel=None, done="", what: str | None = None) -> bool:
        """Apply an `napari_prm.edit` operation and say ``done`` (or ``done(new table)``); ``what``
        it did, as said after Ctrl+Z ("Undone: deleted instance 2."), defaults to ``done``."""
        try:
            labels, table = operation(self.instances.data, self._table(), *args)
        except ValueError as error:
            self._say(str(error), "warning")
            return False
        done = done(table) if callable(done) else done
        if what is None:
            what = done[:1].lower() + done[1:].rstrip(".")
        self._write(labels, table, relabel, what=what)
        if done:
            self._say(done)
        return True

    def delete_selected(self) -> bool:
        label = self._selected()
        return label is not None and self._apply(edit.delete_instance, label,
                                                 done=f"Deleted instance {label}.")

    def set_class_of_selected(self, class_name: str | None = None) -> bool:
        label = self._selected()
        class_name = class_name or self.class_choice.value
        if label is None or class_name is None:
            return False
        index = self.context.class_index(class_name)
        if not self._apply(edit.set_class, label, index, class_name,
                           done=f"Instance {label} is now {class_name!r}.",
                           what=f"set the class of instance {label} to {class_name!r}"):
            return False
        if self.peaks is None:  # a Labels layer no run made
            return True
        with self.quiet():
            features = self.peaks.features.copy()
            rows = features["label"].to_numpy() == label
            features.loc[rows, "class_name"] = class_name
            features.loc[rows, "class_index"] = index
            self._set_point_features(features)
            self.peaks.face_color = "class_name"
        return True

    def merge_previous_into_selected(self) -> bool:
        """Merge the instance in *other label* (the one selected before) into the selected."""
        return self.merge_selected_with(self.merge_with.value)

    def merge_selected_with(self, other: int) -> bool:
        label = self._selected()
        if label is None:
            return False
        if int(other) <= 0 or int(other) == label:
            self._say(f"Nothing to merge into instance {label}: select the instance to merge away, then the one "
                      "to keep, and press Merge (Shift-M); or type the label to merge away in 'other label'.",
                      "warning")
            return False
        return self._apply(
            edit.merge_instances, [label, int(other)], relabel={int(other): label},
            done=f"Merged instance {other} into {label}.")

    def remove_small(self, min_area: int) -> bool:
        if self.instances is None:
            self._say("Run a prediction first: there are no instances to correct.", "warning")
            return False
        before = len(self.instances.features)
        return self._apply(edit.remove_small, int(min_area), done=lambda table: (
            f"Removed {plural(before - len(table['label']), 'instance')} smaller than {min_area} pixels."))

    def draw_split_line(self):
        """Add (or pick) the Shapes layer the split line is drawn in, in path mode."""
        if self.instances is None:
            self._say("Run a prediction first: there are no instances to split.", "warning")
            return None
        viewer = self.owner.viewer
        if viewer.dims.ndisplay != 2:  # napari draws shapes in 2-D only: the layer would take no line
            self._say("Split lines are drawn in a 2-D view: switch the viewer to 2-D (its 2D/3D button) and "
                      "draw across the instance on its plane.", "warning")
            return None
        shapes = _split_layer(viewer, self.context)
        if shapes is None:
            shapes = viewer.add_shapes(name=self.context.split_name, ndim=self.instances.ndim,
                                       edge_color="yellow", edge_width=2,
                                       metadata=mark("split", self.instances), **world_kwargs(self.instances))
        self.bind_shortcuts(shapes)
        viewer.layers.selection.active = shapes
        shapes.mode = "add_path"
        return shapes

    def split_selected(self, line_world: np.ndarray | None = None) -> bool:
        """Split an instance at a line (world coordinates; default: the last drawn line).

        The selected instance is split when the line crosses it, else the one the line
        crosses most.
        """
        if self.instances is None:
            self._say("Run a prediction first: there are no instances to split.", "warning")
            return False
        labels_layer = self.instances
        shapes = None
        if line_world is None:
            shapes = _split_layer(self.owner.viewer, self.context)
            if shapes is None or not len(shapes.data):
                self._say("Draw a line across the instance first (Draw split line).", "warning")
                return False
            line_world = [shapes.data_to_world(v) for v in shapes.data[-1]]
        line = np.array([labels_layer.world_to_data(v) for v in np.atleast_2d(line_world)])
        crossed = _labels_along(labels_layer.data, line)
        if not crossed:
            self._say("The line crosses no instance.", "warning")
            return False
        selected = int(labels_layer.selected_label)
        label = selected if selected in crossed else max(crossed, key=crossed.get)
        ok = self._apply(edit.split_instance, label, line, done=f"Split instance {label}.")
        if ok and shapes is not None:
            shapes.data = shapes.data[:-1]
            # back on the instances layer, Ctrl+Z undoes the split
            self.owner.viewer.layers.selection.active = labels_layer
        return ok

    def _on_paint(self, event=None) -> None:
        """Hand painting may add or erase labels: bring the table in line.

        ``data_setitem`` announces a paint before it changes the pixels, so the table is
        synced once control is back in the event loop.
        """
        run = self._run
        if self._quiet_depth or self.instances is None or run.sync_scheduled:
            return
        run.sync_scheduled = True  # one sync per run: paints on two images' layers sync both
        QTimer.singleShot(0, lambda: self._sync_table(run))

    def _sync_table(self, run) -> None:
        """Make the table (and the peaks' labels and classes) of ``run`` (the one a paint
        scheduled it for) agree with the pixels.

        After an undo or redo the table of the plugin's edit then in force is taken up
        again (classes and scores included); labels painted by hand get rows of their own.
        """
        run.sync_scheduled = False
        context = run.context
        with self.working_on(context) as alive:
            if not alive or self.instances is None:
                return
            base = self.history.table_for(self.instances)
            table = edit.sync_table(self.instances.data, self._table() if base is None else base,
                                    class_name=context.unnamed_class)
            self._write(None, table)
            undone, redone = self.history.moves(self.instances)
            if self.peaks is None or not self._follow_undone_points():  # which says what its undo took away
                for word, whats in (("Undone", undone), ("Redone", redone)):
                    if whats:
                        self._say(f"{word}: {'; '.join(whats)}.")
            self._sync_points(table)

    def _sync_points(self, table: dict) -> None:
        """Peaks follow the instance table: their instance's label, and its class (a peak whose
        instance retrieval merged into another's follows that instance)."""
        if self.peaks is None:
            return
        features = self.peaks.features.copy()
        point_labels = features["label"].to_numpy().astype(np.int64)
        point_peaks = features["peak"].to_numpy()
        rows = {int(peak): row for row, peak in enumerate(table["peak"]) if peak >= 0}
        present = set(np.asarray(table["label"]).tolist())
        merged_into = self.context.merged_into
        for point, peak in enumerate(point_peaks):
            row = rows.get(int(peak), rows.get(merged_into.get(int(peak), -1)))
            if row is not None:
                point_labels[point] = int(table["label"][row])
                if int(table["class_index"][row]) >= 0:
                    features.loc[features.index[point], "class_index"] = int(table["class_index"][row])
                    features.loc[features.index[point], "class_name"] = str(table["class_name"][row])
            elif point_labels[point] not in present:
                point_labels[point] = 0
        features["label"] = point_labels
        changed = not features.equals(self.peaks.features)
        with self.quiet():
            if changed:
                self._set_point_features(features)
                self.peaks.face_color = "class_name"

    # ------------------------------------------------------------------ review
    def next_alternative_of_selected(self) -> int | None:
        """Give the selected instance its next alternative mask, as one undo step.

        The alternatives are the proposals its peak's PRM also fits, larger around its mask or
        smaller inside it (``PRMPredictor.predict(alternatives=)``): retrieval's commonest miss is
        a part of a large object. The first press finds them in the panel's worker
        (`_find_alternatives`) and shows the first when it is done; pressed again, the next one
        at once, then the instance's own mask as it was when the cycle began (painting included).

        Returns the position shown (0: its own); None when nothing is shown now: refused (the
        status line says why), or the alternatives are being found (`running` is then true).
        """
        label = self._selected()
        if label is None:
            return None
        layer = self.instances
        cycle = self._cycle
        if cycle is not None and cycle.layer is layer and cycle.label == label:
            # where the instance stands in its cycle: moved by Ctrl+Z / Ctrl+Shift+Z too; its
            # mask painted, or another's pixels taken, begins a new cycle from it
            current = np.asarray(layer.data[cycle.plane]) == label
            cycle.at = next((at for at, mask in enumerate(cycle.masks) if np.array_equal(mask, current)), -1)
        if cycle is None or cycle.layer is not layer or cycle.label != label or cycle.at < 0:
            self._find_alternatives(label)
            return None
        return self._show_alternative(cycle, cycle.at + 1)

    def _show_alternative(self, cycle: AlternativeCycle, at: int) -> int | None:
        """Give ``cycle``'s instance its mask ``at`` (modulo their number), as one undo step."""
        label, layer = cycle.label, cycle.layer
        cycle.at = at % len(cycle.masks)
        count = len(cycle.masks) - 1
        done = (f"Instance {label}: alternative mask {cycle.at}/{count} "
                f"({np.count_nonzero(cycle.masks[cycle.at])} px; {_keys_of('next_alternative_of_selected')}: "
                f"{'the next' if cycle.at < count else 'back to its own'})." if cycle.at
                else f"Instance {label}: its own mask again.")
        mask = np.asarray(layer.data) == label  # its pixels on other planes (painted there) stay
        mask[cycle.plane] = cycle.masks[cycle.at]
        if not self._apply(edit.replace_mask, label, mask, done=done, what=f"gave instance {label} another mask"):
            return None
        return cycle.at

    def _find_alternatives(self, label: int) -> bool:
        """Start finding the masks instance ``label`` cycles through, in the panel's worker (the
        added peaks' retrieval's): its peak's retrieval again, asked for alternatives, from the
        cached predictor of its plane (no forward pass; a backward pass when the peak's map is
        not cached), whose forward pass is made again when the cache dropped it (other planes
        or images run since). When done, the first is shown (`_show_found_alternatives`).

        Returns whether it started; if not, the status line says why (no peak, a worker already
        running, the image's data changed since the run, or proposals that give none).
        """
        if self._computing is not None:
            self._say(f"The alternative masks of instance {self._computing[1]} are being found: wait for "
                      "them to be shown (then press again for the next).", "warning")
            return False
        table = self._table()
        rows = np.flatnonzero(np.asarray(table["label"]) == label)
        peak = int(table["peak"][rows[0]]) if len(rows) else -1
        where = (np.flatnonzero(self.peaks.features["peak"].to_numpy() == peak)
                 if self.peaks is not None and peak >= 0 else [])
        if not len(where):
            self._say(f"Instance {label} has no peak (painted by hand, or its peak was deleted): alternative "
                      "masks come from its peak's response.", "warning")
            return False
        if self.owner.worker is not None or self.worker is not None:
            self._say("Wait for the run (or the retrieval of added peaks) to finish.", "warning")
            return False
        context, owner = self.context, self.owner
        leading = len(context.leading_shape)
        coords = np.asarray(self.peaks.data)[where[0]]
        plane = point_plane(coords, leading)
        key = self._predictor_key(plane)
        image, changed = self._job_image(context, key, plane)  # a reader: the worker makes the forward pass again
        if changed:
            self._say(f"No alternative masks for instance {label}: the image's data changed since the run "
                      "(its cached maps were dropped), and masks found now would be of other pixels than "
                      "its instances'. Press Run to predict the image again.", "warning")
            return False
        if image is None and (refusal := _without_alternatives(label, owner.predictors.get(key))):
            self._say(refusal, "warning")
            return False
        layer = self.instances
        job = (key, image, owner.proposals_for(context.settings["proposals"], plane), plane, coords[leading:],
               int(self.peaks.features["class_index"].iloc[where[0]]), label)
        self._computing = (layer, label)
        self._start_worker(self._alternatives, (context, job),
                           lambda out: self._show_found_alternatives(out, context, layer, label, plane),
                           status=f"Finding the alternative masks of instance {label}…",
                           activity=f"Peak Response Maps: {context.image_layer.name} "
                                    f"(alternative masks of instance {label})",
                           failed=f"Finding the alternative masks of instance {label} failed",
                           cancelled=f"Cancelled: instance {label} keeps its mask.", on_cancel=self._cancel_worker)
        return True

    def _alternatives(self, context, job):
        """Worker thread: the mask of the peak's instance predicted again and its alternatives
        (possibly none); a str says why there are none; None: cancelled."""
        key, image, proposals, plane, yx, class_index, label = job
        try:
            predictor = self._predictor_of(context, key, image, proposals, plane, self._report)
            if refusal := _without_alternatives(label, predictor):
                return refusal
            prediction = predictor.predict(points=(yx[None], [class_index]), alternatives=ALTERNATIVES,
                                           progress=self._report, cancel=self._cancel.is_set,
                                           **self.owner.threshold_overrides(context.settings))
            return [np.asarray(mask, bool) for instance in prediction.instances[:1]
                    for mask in (instance.mask, *predictor.alternative_masks(instance, prediction))]
        except Cancelled:
            return None
        except ValueError as error:
            return f"No alternative masks for instance {label}: {error}"

    def _show_found_alternatives(self, out, context, layer, label: int, plane: tuple) -> None:
        """Begin the cycle of instance ``label`` of ``layer`` (those of the press, whatever is selected
        now) with the masks the worker found (``out``), and show the first alternative."""
        if out is None or self._cancel.is_set():  # cancelled (maybe once done): said when the worker ends
            return
        if isinstance(out, str):
            self._say(out, "warning")
            return
        with self.working_on(context) as alive:
            if not alive or self.instances is not layer:
                self._say(f"The alternative masks of instance {label} were dropped: its layer {layer.name!r} "
                          "was removed (or its image run again) meanwhile.", "warning")
                return
            current = np.asarray(layer.data[plane]) == label
            if not current.any():
                self._say(f"The alternative masks of instance {label} were dropped: the instance was deleted "
                          "(or erased from its plane) meanwhile.", "warning")
                return
            masks = [current]
            for mask in out:
                if not any(np.array_equal(mask, m) for m in masks):
                    masks.append(mask)
            if len(masks) == 1:
                self._say(f"Instance {label} has no alternative mask: no proposal its peak fits is larger "
                          "around it or smaller inside it.", "warning")
                return
            self._cycle = AlternativeCycle(layer, label, masks, plane=plane)
            self._show_alternative(self._cycle, 1)

    def _on_finished(self) -> None:
        self._computing = None
        super()._on_finished()

    def select_next_by_score(self, step: int = 1) -> int | None:
        """Select the instance after the selected one in order of score (highest first,
        unscored last) and centre the view on it; ``step=-1`` goes back. Returns its label.
        """
        if self.instances is None:
            self._say("Run a prediction first: there are no instances to review.", "warning")
            return None
        table = self._table()
        if not len(table["label"]):
            self._say("There are no instances to review.", "warning")
            return None
        scores = np.asarray(table["score"], np.float64)
        order = np.lexsort((np.asarray(table["label"]), -np.nan_to_num(scores, nan=-np.inf)))
        ranked = [int(table["label"][i]) for i in order]
        current = int(self.instances.selected_label)
        position = ranked.index(current) + step if current in ranked else (0 if step > 0 else -1)
        label = ranked[position % len(ranked)]
        self.instances.selected_label = label
        self._centre_on(label)
        score = scores[list(table["label"]).index(label)]
        rank = ranked.index(label) + 1
        self._say(f"Instance {label} ({rank}/{len(ranked)} by score"
                  + (f", {score:.3g})." if np.isfinite(score) else ", no score)."))
        return label

    def select_previous_by_score(self) -> int | None:
        """Select the instance before the selected one in order of score."""
        return self.select_next_by_score(-1)

    def _centre_on(self, label: int) -> None:
        layer = self.instances
        where = np.argwhere(np.asarray(layer.data) == label)
        if not len(where):
            return
        centre = (where.min(axis=0) + where.max(axis=0)) / 2
        world = np.asarray(layer.data_to_world(centre))
        viewer = self.owner.viewer
        first = viewer.dims.ndim - layer.ndim  # the layer's axes are the viewer's last
        displayed = list(viewer.dims.displayed)
        for axis in range(layer.ndim):  # the sliders of its axes not shown (a stack's planes) go to the instance
            if first + axis not in displayed:
                viewer.dims.set_point(first + axis, world[axis])
        # the camera looks at it along the axes shown: in 3-D (its plane's z too) or a transposed view, not
        # always along the layer's last two
        viewer.camera.center = tuple(float(world[axis - first]) if axis >= first else float(viewer.dims.point[axis])
                                     for axis in displayed)


def _without_alternatives(label: int, predictor) -> str | None:
    """Why instance ``label`` has no alternative masks from ``predictor``'s proposals, or None."""
    if predictor.proposal_source is not None and not predictor.uses_refined_proposals:
        return None
    why = ("the run made no proposals" if predictor.proposal_source is None
           else "the learnt head (refined) cuts one mask per peak")
    return (f"Instance {label} has no alternative masks: {why}, and they are other proposals its peak fits. "
            "Choose built-in or PRM-guided proposals and press Run.")


def _split_layer(viewer, context):
    """The split-line layer of ``context``'s instances in ``viewer`` (renamed or not), or None: one
    marked for them, else an unmarked one bearing its default name (`split_name`)."""
    return find_result(viewer, context.layers["instances"], "split", name=context.split_name)


def _labels_along(labels: np.ndarray, line: np.ndarray) -> dict[int, int]:
    """How many samples of a polyline (label-image pixels) fall on each non-zero label."""
    samples = []
    for start, stop in zip(line[:-1], line[1:]):
        count = int(np.ceil(np.abs(stop - start).max() * 2)) + 1
        samples.append(np.linspace(start, stop, count))
    points = np.round(np.concatenate(samples)).astype(np.int64)
    inside = np.all((points >= 0) & (points < np.array(labels.shape)), axis=1)
    values = labels[tuple(points[inside].T)]
    found, counts = np.unique(values[values > 0], return_counts=True)
    return dict(zip(found.tolist(), counts.tolist()))
