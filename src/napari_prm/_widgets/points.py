"""Add or re-do an instance from a point placed or moved in the peaks layer.

Peak backpropagation works from any location of a class response map, so a point the user
adds (with a class) gets a PRM and, through instance retrieval, an instance; moving a point
re-does both. The model runs in a worker thread; this is a part of the correction panel
of :mod:`napari_prm._widgets.correct`.
"""

from __future__ import annotations

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.events import Event

from .. import edit
from ..predict import Cancelled, predict
from .layers import layer_names, prm_layer_data, read_plane, upsert_layer, world_kwargs


class PointRetrieval:
    """Mixin of the correction panel: peaks-layer edits -> PRMs and instances.

    Expects ``context``, ``peaks``, ``instances``, ``owner``, ``redo_points``, ``worker``,
    ``_pending``, ``_positions``, ``_cancel``, ``_move_timer``, ``quiet()``, ``_say``,
    ``_table`` and ``_write`` from the panel.
    """

    def _point_positions(self) -> dict[int, tuple]:
        peaks = self.peaks
        ids = peaks.features["peak"].to_numpy()
        return {int(p): tuple(np.round(row, 6)) for p, row in zip(ids, peaks.data) if p >= 0}

    def _on_points_data(self, event: Event) -> None:
        if self._quiet_depth or self.peaks is None or str(event.action) not in ("added", "changed"):
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
                self.peaks.features = features
        positions = self._point_positions()
        changed = {p for p, where in positions.items() if self._positions.get(p) != where}
        self._positions = positions
        if not changed or not self.redo_points.value:
            return
        self._pending |= changed
        if len(new_rows):
            self._start_pending()
        else:
            self._move_timer.start()  # a drag emits many moves: wait until it settles

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
        leading = len(context.leading_shape)
        coords = np.asarray(self.peaks.data)[rows]
        planes = [tuple(int(round(c)) for c in row[:leading]) for row in coords]
        jobs = []
        for plane in sorted(set(planes)):
            mine = [r for r, p in zip(rows, planes) if p == plane]
            jobs.append((plane, read_plane(context.image_layer, plane),
                         self.owner.proposals_for(context.settings["proposals"], plane),
                         np.asarray(self.peaks.data)[mine][:, leading:],
                         features["class_index"].to_numpy()[mine].astype(np.int64),
                         features["peak"].to_numpy()[mine].astype(np.int64)))
        self._cancel.clear()
        worker = create_worker(self._retrieve, context.model, jobs)
        worker.returned.connect(self._show_retrieved)
        worker.errored.connect(lambda e: self._say(f"Retrieval failed: {e}", "error"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.owner.status.setText(f"Retrieving instances of {len(rows)} peaks…")
        worker.start()

    def _retrieve(self, model, jobs):
        """Worker thread: back-propagate from the points and retrieve their instances."""
        out = []
        for plane, image, proposals, yx, classes, peak_ids in jobs:
            try:
                prediction = predict(image, model, proposals=proposals, points=(yx, classes),
                                     cancel=self._cancel.is_set)
            except Cancelled:
                return None
            out.append((plane, peak_ids, prediction))
        return out

    def cancel(self) -> None:
        self._pending.clear()
        if self.worker is not None:
            self._cancel.set()
            self.worker.quit()

    def _on_finished(self) -> None:
        self.worker = None
        if self._pending:
            self._start_pending()

    def _show_retrieved(self, out) -> None:
        if out is None or self.context is None:
            return
        context = self.context
        labels, table = self.instances.data, self._table()
        missed = []
        for plane, peak_ids, prediction in out:
            for k, peak_id in enumerate(peak_ids):
                self._store_prm(int(peak_id), prediction.prms[k], plane)
                rows = np.flatnonzero(self.peaks.features["peak"].to_numpy() == peak_id)
                if not len(rows):
                    continue  # the point was deleted meanwhile
                old = int(self.peaks.features["label"].iloc[rows[0]])
                found = [i for i in prediction.instances if i.peak == k]
                if not found:
                    if old > 0:
                        labels, table = edit.delete_instance(labels, table, old)
                    missed.append(int(peak_id))
                    continue
                instance = found[0]
                mask = np.zeros(labels.shape, bool)
                mask[plane] = instance.mask
                labels, table = edit.add_instance(
                    labels, table, mask, label=old if old > 0 else None,
                    class_index=instance.class_index,
                    class_name=context.class_names[instance.class_index],
                    score=float(instance.score), peak=int(peak_id))
                with self.quiet():
                    features = self.peaks.features.copy()
                    features.loc[features.index[rows[0]], "label"] = int(table["label"][-1])
                    self.peaks.features = features
        self._write(labels, table)
        self._on_points_selected()  # a selected new point now has an instance to select
        with self.quiet():
            upsert_layer(self.owner.viewer, "image", layer_names(context.image_layer.name)["prms"],
                         prm_layer_data(context.prms, context.prm_planes, context.leading_shape),
                         colormap="inferno", blending="additive", opacity=0.8,
                         **world_kwargs(context.image_layer, extra_leading=1))
        if missed:
            self._say(f"No instance found for peaks {missed} (their PRMs were added).", "warning")
        else:
            self._say(f"Retrieved instances of peaks {[int(p) for _, ids, _ in out for p in ids]}.")

    def _store_prm(self, peak_id: int, prm: np.ndarray, plane: tuple) -> None:
        context = self.context
        if peak_id >= len(context.prms):
            grow = peak_id + 1 - len(context.prms)
            context.prms = np.concatenate([context.prms, np.zeros((grow,) + prm.shape, np.float32)])
            context.prm_planes = np.concatenate(
                [context.prm_planes, np.zeros((grow, len(plane)), np.int64)])
        context.prms[peak_id] = prm
        context.prm_planes[peak_id] = plane


