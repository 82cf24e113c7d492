"""Reports from worker threads to the Qt thread."""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal


class _Relay(QObject):
    """Carries a worker thread's progress reports to the Qt thread.

    Create it on the Qt thread and connect ``progressed`` there; ``progressed.emit(report)``
    from a worker is then delivered by a queued connection, so slots may touch widgets.
    A report is any object: a ``TrainProgress``, or a ``(stage, done, total)`` tuple.
    """

    progressed = Signal(object)
