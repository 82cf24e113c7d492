"""Progress of long runs in napari's activity dock, with napari's own cancel button; a widget's
job stopped like *Cancel* when the widget, or napari, is closed."""

from __future__ import annotations

from collections.abc import Callable

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.progress import cancelable_progress
from qtpy.QtCore import QEvent, QObject


class _CancelButtonProgress(cancelable_progress):
    """A ``cancelable_progress`` whose cancel button calls ``cancel_callback`` at once.

    napari calls the callback only when the bar wraps an iterable; these bars are updated
    by hand from a worker's reports, so the button has to reach the worker itself.
    """

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class ActivityProgress:
    """One run's progress bar in the activity dock (create and update it on the Qt thread).

    napari's bar widget processes Qt events while it redraws, so the slot that calls
    `update` may be entered again, or see the run finish, before `update` returns; an
    update after `close` does nothing.

    Parameters
    ----------
    description : str
        What runs, e.g. ``"Peak Response Maps: cat"``; the stage is appended to it.
    on_cancel : callable, optional
        Called when the bar's cancel button is pressed.
    """

    def __init__(self, description: str, on_cancel: Callable[[], None] | None = None):
        self.description = description
        self.bar = _CancelButtonProgress(total=0, desc=description, cancel_callback=on_cancel)
        self._closed = False

    def update(self, stage: str, done: float, total: float) -> None:
        """Show ``done`` of ``total`` steps of ``stage`` (the bar's range follows ``total``)."""
        if self._closed:
            return
        text = f"{self.description}: {stage}" if stage else self.description
        if self.bar.desc != text:
            self.bar.set_description(text)
        total = max(int(round(total)), 1)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = min(int(round(done)), total)
        self.bar.update(0)  # napari's bar redraws on update events

    @property
    def canceled(self) -> bool:
        return self.bar.is_canceled

    def close(self) -> None:
        """Take the bar out of the activity dock (again: nothing happens)."""
        if not self._closed:
            self._closed = True
            self.bar.close()


class CloseWatcher(QObject):
    """Calls ``on_close()`` when ``widget`` is closed or taken out of its dock (napari's
    ``remove_dock_widget`` and the dock's close button un-parent it without closing it),
    and ``on_close(deleted=True)`` when it is deleted: a widget's running job stops with it."""

    def __init__(self, widget, on_close):
        super().__init__(widget)
        self._on_close = on_close
        widget.installEventFilter(self)
        widget.destroyed.connect(lambda *_: on_close(deleted=True))

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        kind = event.type()
        if kind == QEvent.Type.Close or (kind == QEvent.Type.ParentChange and obj.parent() is None):
            self._on_close()
        return False


class _StopsOnQuit(FunctionWorker):
    """A worker whose ``quit()`` stops its job like *Cancel*, through ``on_quit`` (`job_worker`).

    napari asks each worker made by ``create_worker`` to quit when its window closes (the
    task list's ``cancel_all``) and when the application quits (``wait_for_workers_to_quit``,
    which then waits for them). A plain ``FunctionWorker`` ignores that: its function runs on
    (training for hours, napari waiting at exit), and its ``returned`` is dropped, so the job's
    end is never reported. Here ``quit()`` calls ``on_quit`` once and nothing else: the job
    stops at its next cancel check and ends as a cancelled job ends (its ``returned`` comes).
    """

    on_quit: Callable[[], None] | None = None

    def quit(self) -> None:
        on_quit, self.on_quit = self.on_quit, None
        if on_quit is not None:
            on_quit()


def job_worker(func, *args, on_quit: Callable[[], None], **kwargs) -> FunctionWorker:
    """``create_worker(func, *args, **kwargs)`` for a widget's job: napari's request that it quit
    (its window closing, the application quitting) calls ``on_quit``, which stops the job like
    *Cancel* (`_StopsOnQuit`); once the job has finished, a request does nothing."""
    worker = create_worker(func, *args, _worker_class=_StopsOnQuit, **kwargs)
    worker.on_quit = on_quit
    worker.finished.connect(lambda: setattr(worker, "on_quit", None))
    return worker


class StopsOnClose:
    """For a widget with a ``worker``, a ``_cancel`` event and a ``cancel()`` (its *Cancel*):
    closing it, taking it out of its dock, deleting it, or closing or quitting napari stops the
    running job through ``cancel()``, as *Cancel* does (`CloseWatcher`, `job_worker`).

    ``_closed`` says the last job was stopped that way (for its message), ``_deleted`` that
    the widget's Qt widgets are gone, so nothing more may be written into them. Call
    `_stop_on_close` once the Qt widget ``native`` exists, make the job's worker with
    `_job_worker`, and clear ``_closed`` at each start.
    """

    _closed = False
    _deleted = False

    def _stop_on_close(self, native) -> None:
        self._closed = False  # closed or out of its dock: the running job was stopped
        self._deleted = False  # its Qt widgets are gone: nothing more is shown in them
        self._close_watcher = CloseWatcher(native, self._on_close)

    def _job_worker(self, func, *args, **kwargs) -> FunctionWorker:
        """``create_worker(func, *args, **kwargs)`` for the widget's job, stopped like *Cancel*
        when napari closes its window or quits (`job_worker`)."""
        return job_worker(func, *args, on_quit=self._on_close, **kwargs)

    def _on_close(self, deleted: bool = False) -> None:
        """Closed, taken out of its dock, deleted, or napari closed: stop a running job as
        *Cancel* does."""
        self._deleted = self._deleted or deleted
        if self.worker is not None and not self._cancel.is_set():
            self._closed = True
            self.cancel()
