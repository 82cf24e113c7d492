"""Add or re-do an instance from a point placed or moved in the peaks layer.

Peak backpropagation works from any location of a class response map, so a point the user
adds (with a class) gets a PRM and, through instance retrieval, an instance; moving a point
re-does both. The image's cached :class:`napari_prm.PRMPredictor` does it: one backward
pass per point, no forward pass and no new proposals (unless the image's maps were
dropped meanwhile). The model runs in a worker thread; this is a part of the correction
panel of :mod:`napari_prm._widgets.correct`. Such points are marked ``hand_placed`` in the
layer's features: a new *Run* or *Re-threshold* of the image keeps them (see
:mod:`napari_prm._widgets.predict`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from napari.utils.events import Event

from .. import edit
from .._text import plural
from ..predict import Cancelled
from .activity import job_worker
from .layers import (
    HAND_PLACED,
    RUNNER_UP_COLUMNS,
    layer_names,
    mark_hand_placed,
    moved_from,
    peak_positions,
    plane_reader,
    point_defaults,
    point_plane,
    prm_layer_data,
    prm_world_kwargs,
    upsert_layer,
)
from .marks import find_result, mark


class PointRetrieval:
    """Mixin of the correction panel: peaks-layer edits -> PRMs and instances.

    Expects ``context``, ``peaks``, ``instances``, ``owner``, ``redo_points``, ``worker``,
    ``_pending``, ``_positions``, ``_runs``, ``_cancel``, ``_move_timer``, ``quiet()``, ``_say``,
    ``_table``, ``_write`` and ``working_on()`` from the panel. Its worker (`_start_worker`,
    `_predictor_of`) serves the panel's other model calls too (Shift-A's alternative masks).
    """

    def _point_positions(self) -> dict[int, tuple]:
        return peak_positions(self.peaks)

    def _on_points_data(self, event: Event) -> None:
        if self._quiet_depth or self.peaks is None:
            return
        if str(event.action) == "removed":  # points deleted: their PRMs leave the PRMs layer
            self._positions = self._point_positions()
            self._show_prms(self.context)
            return
        if str(event.action) not in ("added", "changed"):
            return
        features = self.peaks.features
        new_rows = np.flatnonzero(features["peak"].to_numpy() < 0)
        if len(new_rows):
            next_id = max([len(self.context.prms) - 1, *self._positions, *self._pending]) + 1
            with self.quiet():
                features = features.copy()
                features.loc[features.index[new_rows], "peak"] = np.arange(
                    next_id, next_id + len(new_rows))
                features.loc[features.index[new_rows], "label"] = 0
                self._set_point_features(features)
            self._clicked.update(range(next_id, next_id + len(new_rows)))
        positions = self._point_positions()
        changed = {p for p, where in positions.items() if self._positions.get(p) != where}
        if changed:
            self._mark_hand_placed(changed)
        self._positions = positions
        if not changed or not self.redo_points.value:
            return
        self._pending |= changed
        if len(new_rows):
            self._start_pending()
        else:
            self._move_timer.start()  # a drag emits many moves: wait until it settles

    def _mark_hand_placed(self, peak_ids: set[int]) -> None:
        """Mark points added or moved by hand (`mark_hand_placed`): a new run of the image keeps
        them, and a model's peak moved does not come back beside it."""
        features = mark_hand_placed(self.peaks, peak_ids, self._positions)
        if features is not None:
            with self.quiet():
                self._set_point_features(features)

    def add_hand_points(self, points) -> list[int]:
        """Add points placed by hand elsewhere (`HandPeak` s: in the peaks layer while a run went
        on, which the run's result replaced) to the peaks layer, marked `HAND_PLACED`, and retrieve
        their instances as for a point added here. Returns their ``peak`` numbers."""
        if not points or self.peaks is None:
            return []
        peaks, names = self.peaks, self.context.class_names
        width = len(self.context.leading_shape) + 2
        first = max([len(self.context.prms) - 1, *self._positions, *self._pending]) + 1
        ids = list(range(first, first + len(points)))
        rows = pd.DataFrame([{**point_defaults(names, names.index(p.class_name)), "peak": peak}
                             for p, peak in zip(points, ids)])
        features = peaks.features
        features = rows if not len(features) else pd.concat([features, rows[features.columns]], ignore_index=True)
        with self.quiet():
            peaks.data = np.concatenate([np.asarray(peaks.data, float).reshape(-1, width),
                                         [[*p.plane, *p.yx] for p in points]])
            self._set_point_features(features.astype({HAND_PLACED: bool}))
        origins = moved_from(peaks)
        for p, peak in zip(points, ids):
            if p.origin is not None:
                origins[peak] = (p.origin[0], (*p.plane, *p.origin[1]))
            else:  # placed during the run: its retrieval is its placing, as for a point placed now
                self._clicked.add(peak)
        self._positions = self._point_positions()
        if self.redo_points.value:
            self._pending |= set(ids)
            self._start_pending()
        return ids

    def waiting_in(self, context) -> tuple[set, set]:
        """The peaks of ``context``'s run that wait for retrieval, and those placed by hand and not
        retrieved yet (empty sets for a run the panel does not keep)."""
        run = next((run for run in self._runs if run.context is context), None)
        return (set(), set()) if run is None else (set(run.pending), set(run.clicked))

    def retrieve_waiting(self, pending: set, clicked: set) -> None:
        """Retrieve, in the run worked on, the ``pending`` peaks of the run it replaced (``clicked``:
        those placed by hand): points added or moved on other planes of a stack while a run of
        some planes went on, which the new run's layers keep as they are."""
        ids = set(self.peaks.features["peak"].astype(int).tolist()) if self.peaks is not None else set()
        self._clicked.update(clicked & ids)
        if pending & ids:
            self._pending |= pending & ids
            self._start_pending()

    def _start_pending(self) -> None:
        if self.worker is not None or not self._pending or self.context is None:
            return
        if self.owner.worker is not None:
            self._move_timer.start()
            return
        features = self.peaks.features
        rows = np.flatnonzero(np.isin(features["peak"].to_numpy(), list(self._pending)))
        self._pending.clear()
        if not len(rows):
            return
        context = self.context
        owner = self.owner
        leading = len(context.leading_shape)
        coords = np.asarray(self.peaks.data)[rows]
        planes = [point_plane(row, leading) for row in coords]
        jobs, outdated = [], 0
        for plane in sorted(set(planes)):
            mine = [r for r, p in zip(rows, planes) if p == plane]
            key = self._predictor_key(plane)
            image, changed = self._job_image(context, key, plane)
            if changed:
                outdated += len(mine)  # its instances would be cut from other pixels than the run's
                continue
            jobs.append((key, image, owner.proposals_for(context.settings["proposals"], plane), plane,
                         np.asarray(self.peaks.data)[mine][:, leading:],
                         features["class_index"].to_numpy()[mine].astype(np.int64),
                         features["peak"].to_numpy()[mine].astype(np.int64)))
        if outdated:
            self._say(f"{plural(outdated, 'added or moved peak')} not retrieved: the image's data changed since "
                      "the run (its cached maps were dropped), and instances found now would be of other pixels "
                      "than the run's. The points stay; press Run to predict the image again.", "warning")
        if not jobs:
            return
        self._start_worker(self._retrieve, (context, jobs), lambda out: self._show_retrieved(out, context),
                           status=f"Retrieving instances of {plural(len(rows) - outdated, 'peak')}…",
                           activity=f"Peak Response Maps: {context.image_layer.name} (added peaks)",
                           failed="Retrieval failed",
                           cancelled="Cancelled: the added or moved peaks keep their earlier instances.")

    def _start_worker(self, function, args: tuple, shown, *, status: str, activity: str, failed: str,
                      cancelled: str, on_cancel=None) -> None:
        """Run ``function(*args)`` in the panel's worker (one at a time: `worker`), ``shown(its
        result)`` then on the Qt thread; the status line says ``status`` and napari's activity
        dock ``activity`` (its cancel button calls ``on_cancel``, `cancel` by default) meanwhile.
        An error is said as ``failed: ...``; a cancelled one says ``cancelled`` when it ends."""
        self._cancel.clear()
        self._cancelled_message = cancelled
        # errored connected at creation: an error is reported here, not re-raised on the Qt thread;
        # napari closing (or quitting) stops it as Cancel does (`_on_quit`)
        worker = job_worker(function, *args, on_quit=self._on_quit, _start_thread=False, _connect={
            "errored": lambda error: self._say(f"{failed}: {type(error).__name__}: {error}", "error")})
        worker.returned.connect(shown)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.owner.status.setText(status)
        self.owner.begin_activity(activity, on_cancel or self.cancel)
        self.owner._update_rethreshold()
        worker.start()

    def _start_waiting(self) -> None:
        """Retrieve the peaks waiting in the run worked on, else those waiting in another image's
        run: peaks added to its layers while a run of this image went on, whose end made this
        image's run the one worked on."""
        waiting = next((run for run in self._runs if run.pending), None)
        if self._pending or waiting is None:
            self._start_pending()
            return
        with self.working_on(waiting.context):
            self._start_pending()

    def _predictor_key(self, plane: tuple):
        """The cached predictor of a plane of the run's image (its forward pass, proposals, PRMs)."""
        context = self.context
        key = context.predictor_keys.get(plane)
        if key is None:  # a plane of a stack the run did not cover
            key = self.owner.predictor_key(context.image_layer, plane, context.settings)
            context.predictor_keys[plane] = key
        return key

    def _retrieve(self, context, jobs):
        """Worker thread: back-propagate from the points and retrieve their instances."""
        out = []
        # the run's thresholds: they do not select clicked points, but their instances' confidence
        # is measured against them, as the run's instances' is
        overrides = self.owner.threshold_overrides(context.settings)
        report = self._report
        for key, image, proposals, plane, yx, classes, peak_ids in jobs:
            try:
                predictor = self._predictor_of(context, key, image, proposals, plane, report)
                prediction = predictor.predict(points=(yx, classes), progress=report,
                                               cancel=self._cancel.is_set, **overrides)
            except Cancelled:
                return None
            out.append((plane, peak_ids, prediction))
        return out

    def _job_image(self, context, key, plane: tuple) -> tuple:
        """Where a worker job on ``plane`` of ``context``'s image (``key``) gets its maps:
        ``(None, False)`` when they are cached, ``(a plane_reader, False)`` when the cache dropped
        them (other planes or images run since: `_predictor_of` makes the forward pass again),
        ``(None, True)`` when the image's data changed since the run (nothing may be made from
        its new pixels for the run's layers: the caller refuses, saying so)."""
        predictors = self.owner.predictors
        if predictors.ready(key):
            return None, False
        if predictors.outdated(key):
            return None, True
        return plane_reader(context.image_layer, plane), False

    def _report(self, stage: str, done: int, total: int) -> None:
        """Worker thread: progress, shown by the owner (status line, activity dock)."""
        self.owner._relay.progressed.emit((stage, done, total))

    def _predictor_of(self, context, key, image, proposals, plane: tuple, report):
        """Worker thread: the cached predictor of ``plane`` of ``context``'s image (``key``), with
        ``proposals``; its forward pass made again from ``image`` (a `plane_reader`; None: read
        it now) when the cache dropped it (other planes or images run since). Raises `Cancelled`."""
        predictor = self.owner.predictors.checkout(key, context.model, preset=context.settings["preset"],
                                                   proposals=proposals)
        if not predictor.is_image_set:
            if image is None:  # dropped since the job was made
                image = plane_reader(context.image_layer, plane)
            predictor.set_image(image(), progress=report, cancel=self._cancel.is_set)
        return predictor

    def cancel(self) -> None:
        """Stop the worker, and forget the peaks waiting for retrieval."""
        self._pending.clear()
        self._cancel_worker()

    def _cancel_worker(self) -> None:
        """Stop the worker only (the activity dock's cancel of Shift-A's: peaks added meanwhile
        are still retrieved when it ends)."""
        if self.worker is not None:
            self._cancel.set()  # its result is dropped when it returns

    def _on_quit(self) -> None:
        """napari closes its window or quits: stop the worker as `cancel` does, and retrieve no peak
        waiting, of any run (nothing more starts after napari closed)."""
        self._move_timer.stop()
        for run in self._runs:
            run.pending.clear()
        self.cancel()

    def _on_finished(self) -> None:
        self.worker = None
        self.owner.end_activity()
        if self.owner._deleted:  # napari closed: no Qt widget to show it in, and nothing more starts
            return
        if self._cancel.is_set():
            self._say(self._cancelled_message)
        self.owner._update_rethreshold()
        self._start_waiting()

    def _show_retrieved(self, out, context) -> None:
        """Put the retrieved instances into the layers of ``context``'s run (the run the points
        were added to; the panel may work on another image's run by now). Nothing when it was
        cancelled, even once they were found: the cancel says the points keep their instances."""
        if out is None or self._cancel.is_set():
            return
        with self.working_on(context) as alive:
            if alive:
                self._show_retrieved_here(out, context)

    def _show_retrieved_here(self, out, context) -> None:
        labels, table = self.instances.data, self._table()
        missed, placed, painted_over = [], [], []
        for plane, peak_ids, prediction in out:
            for k, peak_id in enumerate(peak_ids):
                self._store_prm(int(peak_id), prediction.prms, k, plane)
                rows = np.flatnonzero(self.peaks.features["peak"].to_numpy() == peak_id)
                if not len(rows):
                    continue  # the point was deleted meanwhile
                if int(peak_id) in self._clicked:
                    self._clicked.discard(int(peak_id))
                    placed.append(int(peak_id))
                old = int(self.peaks.features["label"].iloc[rows[0]])
                self._update_point_features(rows[0], prediction, k)
                found = [i for i in prediction.instances if i.peak == k]
                if not found:
                    if old > 0:
                        labels, table = edit.delete_instance(labels, table, old)
                    missed.append(int(peak_id))
                    continue
                instance = found[0]
                mask = np.zeros(labels.shape, bool)
                mask[plane] = instance.mask
                covered = edit.covered_instances(labels, mask, ignore=old)
                if covered:
                    painted_over.append(_painted_over(int(peak_id), covered, table))
                labels, table = edit.add_instance(
                    labels, table, mask, label=old if old > 0 else None,
                    class_index=instance.class_index,
                    class_name=context.class_names[instance.class_index],
                    score=float(instance.score), peak=int(peak_id))
                with self.quiet():
                    features = self.peaks.features.copy()
                    features.loc[features.index[rows[0]], "label"] = int(table["label"][-1])
                    self._set_point_features(features)
        retrieved = [int(p) for _, ids, _ in out for p in ids]
        self._write(labels, table, points=placed,
                    what=f"retrieved the instance{'s' if len(retrieved) > 1 else ''} of "
                         f"peak{'s' if len(retrieved) > 1 else ''} {', '.join(map(str, retrieved))}")
        self._on_points_selected()  # a selected new point now has an instance to select
        self._show_prms(context)
        over = " ".join(painted_over)
        over = f" {over} Ctrl+Z undoes it." if over else ""
        if missed:
            self._say(f"No instance found for peaks {missed} (their PRMs were added).{over}", "warning")
        else:  # said, not warned: painting a new class over an instance is the usual way to reclassify it
            self._say(f"Retrieved instances of peaks {retrieved}.{over}", "info")

    def _follow_undone_points(self) -> bool:
        """Ctrl+Z of the instance retrieved from a point placed by hand takes the point away
        too, so that a new run does not bring the instance back; Ctrl+Shift+Z puts it back.
        Returns whether points were taken away (the status line says so)."""
        undone = self.history.undone_points(self.instances)
        peaks = self.peaks
        ids = peaks.features["peak"].to_numpy()
        drop = [row for row, peak in enumerate(ids) if int(peak) in undone]
        back = [peak for peak in self._undone_points if peak not in undone]
        if not drop and not back:
            return False
        data, features = np.asarray(peaks.data, float), peaks.features
        for row in drop:
            self._undone_points[int(ids[row])] = (data[row].copy(), features.iloc[[row]])
        keep = np.setdiff1d(np.arange(len(data)), drop)
        data, features = data[keep], features.iloc[keep]
        if back:
            data = np.concatenate([data.reshape(-1, peaks.data.shape[1]), [self._undone_points[p][0] for p in back]])
            features = pd.concat([features, *(self._undone_points.pop(p)[1] for p in back)])
        with self.quiet():
            peaks.data = data
            self._set_point_features(features.reset_index(drop=True))
            peaks.face_color = "class_name"
        self._positions = self._point_positions()
        self._show_prms(self.context)
        if drop:
            numbers = ", ".join(str(int(ids[row])) for row in drop)
            text = ("the peak placed by hand and its instance (peak {}); a new Run no longer keeps it, "
                    "Ctrl+Shift+Z brings both back" if len(drop) == 1 else
                    "the peaks placed by hand and their instances (peaks {}); a new Run no longer keeps "
                    "them, Ctrl+Shift+Z brings them back")
            self._say(f"Undone: {text.format(numbers)}.")
        return bool(drop)

    def _show_prms(self, context) -> None:
        """Show the PRMs of the peaks layer's points in the PRMs layer, slice ``i`` for row ``i``
        (`prm_layer_data`): a point taken away (deleted, or its instance undone) takes its PRM
        with it, and one put back brings it back. Without points there is no PRMs layer."""
        viewer = self.owner.viewer
        existing = find_result(viewer, context.image_layer, "prms")  # renamed or not
        peaks = self.peaks.features["peak"].to_numpy()
        with self.quiet():
            if not len(peaks):
                if existing is not None:
                    viewer.layers.remove(existing)
                context.layers.pop("prms", None)
                return
            added = existing is None
            selected, active = set(viewer.layers.selection), viewer.layers.selection.active
            layer = upsert_layer(viewer, "image", layer_names(context.image_layer.name)["prms"],
                                 prm_layer_data(context.prms, context.prm_planes, context.leading_shape, peaks),
                                 existing=existing, metadata=mark("prms", context.image_layer),
                                 colormap="inferno", blending="additive", opacity=0.8,
                                 **prm_world_kwargs(viewer, context.image_layer, existing))
            context.layers["prms"] = layer
            instances = context.layers.get("instances")
            if added:
                # under the instances, as a run puts it, and not selected: napari selects a layer
                # it adds, and the next key (Ctrl+Z) would go to it
                if instances in viewer.layers:
                    viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(instances))
                viewer.layers.selection.clear()
                viewer.layers.selection.update(selected)
                viewer.layers.selection.active = active

    def _update_point_features(self, row: int, prediction, k: int) -> None:
        """A point placed or moved by hand: its CRM value there, its class's score (as the run's
        peaks have), and no runners-up."""
        with self.quiet():
            features = self.peaks.features.copy()
            index = features.index[row]
            features.loc[index, "peak_value"] = float(prediction.peak_values[k])
            features.loc[index, "class_score"] = float(prediction.scores[prediction.peak_classes[k]])
            for column in RUNNER_UP_COLUMNS:
                features.loc[index, column] = np.nan if column.endswith("_value") else ""
            self._set_point_features(features)

    def _store_prm(self, peak_id: int, prms, k: int, plane: tuple) -> None:
        """Make PRM ``k`` of a prediction's ``prms`` that of ``peak_id`` (as the prediction holds it:
        at the network's grid), on ``plane``."""
        context = self.context
        grow = peak_id + 1 - len(context.prm_planes)
        if grow > 0:
            context.prm_planes = np.concatenate(
                [context.prm_planes, np.zeros((grow, len(plane)), np.int64)])
        context.prms.store(peak_id, prms, k)
        context.prm_planes[peak_id] = plane


def _painted_over(peak: int, covered: dict, table: dict) -> str:
    """What the instance retrieved for ``peak`` did to the instances it was painted over
    (`napari_prm.edit.covered_instances`, of the instance ``table`` before it was added), as a
    sentence: one it covered entirely is replaced (its row is gone)."""
    parts = []
    for label, (pixels, area) in covered.items():
        row = np.flatnonzero(np.asarray(table["label"]) == label)
        other = int(table["peak"][row[0]]) if len(row) else -1
        class_name = table["class_name"][row[0]] if len(row) else ""
        details = [class_name] if isinstance(class_name, str) and class_name else []
        details += [f"peak {other}"] if other >= 0 else []
        name = f"instance {label}" + (f" ({', '.join(details)})" if details else "")
        if pixels == area:
            left = f", so peak {other} is left without an instance" if other >= 0 else ""
            parts.append(f"it replaced {name}, all of whose {area} pixels it covers{left}")
        else:
            parts.append(f"it took {pixels} of the {area} pixels of {name}, which keeps the rest")
    others = "another" if len(covered) == 1 else "others"
    return f"Peak {peak}'s instance is painted over {others}: {'; '.join(parts)}."
