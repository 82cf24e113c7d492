"""Undo and redo of the plugin's edits through the Labels layer's own history.

napari's Labels layer keeps an undo history of pixel changes (``data_setitem``, painting,
filling) and undoes them with Ctrl+Z; it knows nothing of the layer's ``features``, where
the plugin keeps each instance's class and score. So every plugin edit is written as one
history item (``Labels.block_history``), and `InstanceHistory` remembers which items are the
plugin's and the instance table before and after each. After an undo or redo, the table
that goes with the pixels is found from the items napari has applied: the table after the
newest plugin item still applied, else the table before the next one to redo; painting by
hand in between is then brought in by :func:`napari_prm.edit.sync_table`.

An edit that changes no pixel (setting a class) still needs a history item of its own, so
that Ctrl+Z undoes it: one pixel is set to another value and back within the item, which
leaves the pixels as they were.

napari has no public way to read the history (``Labels._undo_history`` and
``Labels._redo_history``, deques of items that are lists of atoms); `history_stacks` is the
one place that reads them and `reset_history` the one that empties them, and
``tests/test_widget_undo.py`` checks that napari still behaves as relied on here. Without
them, tables follow the pixels only (as for painting).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def history_stacks(layer) -> tuple[list, list] | None:
    """The undo and redo items of a Labels layer (oldest first), or None if unreadable."""
    undo, redo = getattr(layer, "_undo_history", None), getattr(layer, "_redo_history", None)
    if undo is None or redo is None:
        return None
    return list(undo), list(redo)


def reset_history(layer) -> None:
    """Start the undo history of a Labels layer anew.

    napari keeps a Labels layer's history when its ``data`` is replaced, so after a new run
    written into the same layer, Ctrl+Z would replay the previous run's edits (their pixels)
    onto the new instances.
    """
    reset = getattr(layer, "_reset_history", None)
    if reset is not None:
        reset()


class InstanceHistory:
    """The instance tables that go with the plugin's items in a Labels layer's history."""

    def __init__(self):
        # id(atom) -> (atoms, table before, table after, points, what it did, serial)
        self._records: dict[int, tuple] = {}
        self._applied: set[int] = set()  # serials of the edits applied when last looked (`moves`)
        self._serial = 0

    def clear(self) -> None:
        self._records.clear()
        self._applied.clear()

    @contextmanager
    def edit(self, layer, before: dict, after_table, points=(), what: str = ""):
        """Group the pixel changes made inside into one history item of ``layer`` and tie
        ``before`` and the table returned by ``after_table()`` to it, the ``peak`` numbers
        of the ``points`` placed by hand that the edit retrieved for the first time
        (`undone_points`), and ``what`` it did, as the status line says it after Ctrl+Z
        (`moves`: "deleted instance 2").

        If nothing inside changed a pixel, a change that leaves the pixels as they were is
        made, so that the edit still is one step of Ctrl+Z.
        """
        stacks = history_stacks(layer)
        count = len(stacks[0]) if stacks else 0
        top = stacks[0][-1] if stacks and stacks[0] else None
        with layer.block_history():
            yield
        if stacks is None:
            return
        item = _newest_item(layer, count, top)
        if item is None:
            with layer.block_history():
                _touch(layer)
            item = _newest_item(layer, count, top)
        if item:
            self._serial += 1
            record = (tuple(item), before, after_table(), tuple(int(p) for p in points), what,
                      self._serial)
            for atom in item:
                self._records[id(atom)] = record
            self._applied.add(self._serial)
        self._forget_dropped(layer)

    def moves(self, layer) -> tuple[list[str], list[str]]:
        """What the plugin's edits undone and redone since the last look did (their ``what``,
        newest undone first, oldest redone first); napari's own items (painting) are not
        counted."""
        stacks = history_stacks(layer)
        if stacks is None:
            return [], []
        undo, redo = ([record for record in map(self._record_of, items) if record is not None]
                      for items in stacks)
        undone = [record[4] for record in reversed(redo) if record[5] in self._applied]
        redone = [record[4] for record in undo if record[5] not in self._applied]
        self._applied = {record[5] for record in undo}
        return undone, redone

    def table_for(self, layer) -> dict | None:
        """The table of the plugin's last applied edit, or None when there is none to go by."""
        stacks = history_stacks(layer)
        if stacks is None:
            return None
        undo, redo = stacks
        for item in reversed(undo):
            record = self._record_of(item)
            if record is not None:
                return record[2]
        for item in reversed(redo):  # the next item to redo is the last one
            record = self._record_of(item)
            if record is not None:
                return record[1]
        return None

    def undone_points(self, layer) -> set[int]:
        """The points (``peak`` numbers) of the plugin's edits now undone: Ctrl+Z of the
        instance retrieved from a point placed by hand undoes the point too."""
        stacks = history_stacks(layer)
        if stacks is None:
            return set()
        undone = set()
        for item in stacks[1]:
            record = self._record_of(item)
            if record is not None:
                undone.update(record[3])
        return undone

    def _record_of(self, item):
        for atom in item:
            record = self._records.get(id(atom))
            if record is not None and any(a is atom for a in record[0]):
                return record
        return None

    def _forget_dropped(self, layer) -> None:
        """Drop records of items napari no longer holds (a full history drops its oldest)."""
        stacks = history_stacks(layer)
        if stacks is None:
            return
        alive = {id(atom) for items in stacks for item in items for atom in item}
        self._records = {key: record for key, record in self._records.items() if key in alive}


def _newest_item(layer, count: int, top):
    """The history item added since the undo stack had ``count`` items and ``top`` on top."""
    undo = history_stacks(layer)[0]
    if not undo or (len(undo) == count and undo[-1] is top):
        return None
    return undo[-1]


def _touch(layer) -> None:
    """Set one pixel to another value and back: a history item that changes nothing."""
    data = layer.data
    index = tuple(np.zeros(data.ndim, np.intp)[:, None])
    value = data[index][0]
    other = 1 if value == 0 else 0
    layer.data_setitem(index, other, refresh=False)
    layer.data_setitem(index, value, refresh=False)
