"""The Train widget's check for an unfinished run, cached by the files' size and modification time.

The widget asks :func:`napari_prm.train.unfinished_run` again each time the dataset, the
images folder or the output field changes, and that loads the dataset (a large COCO JSON
takes seconds: with a 48 MB one, 1.7–2.2 s in all) and the checkpoint. :class:`UnfinishedRunCheck`
keeps the last dataset and the last answer, and loads again only what changed on disk; the
widget asks `UnfinishedRunCheck.cached` on the Qt thread, which reads only the files' sizes and
times, and calls the check, which loads, in a worker thread.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from ..data import LabeledImageDataset, load_dataset
from ..train import UnfinishedRun, unfinished_run


def file_signature(path: Path | None, *, class_folders: bool = False) -> tuple | None:
    """What tells that ``path`` changed: its size and modification time (None: no such path).

    With ``class_folders``, a folder per class changes with its class folders too (an image
    added, removed or renamed in one changes that folder's time); images in deeper
    sub-folders are not looked at. Without it a folder changes with its own entries only.
    """
    if path is None:
        return None
    try:
        status = path.stat()
    except OSError:
        return None
    signature: tuple = (str(path), status.st_size, status.st_mtime_ns)
    if class_folders and path.is_dir():
        try:
            signature += tuple(sorted((child.name, child.stat().st_mtime_ns) for child in path.iterdir()
                                      if child.is_dir()))
        except OSError:
            return None
    return signature


class UnfinishedRunCheck:
    """:func:`napari_prm.train.unfinished_run` of a dataset file and a checkpoint, loading each
    only when its file changed (by path, size and modification time) since the last call.

    A call loads (call it in a worker thread; calls from several threads load one at a time);
    `cached` only looks at the files' sizes and times (for the Qt thread).
    """

    def __init__(self):
        self._lock = threading.Lock()
        # each replaced whole, so that `cached` on another thread reads a key with its own answer
        self._dataset: tuple[tuple, LabeledImageDataset | None] | None = None  # (key, dataset)
        self._answer: tuple[tuple, UnfinishedRun | None] | None = None  # (key, unfinished run)

    @staticmethod
    def _keys(out: Path, dataset_path: Path, images: Path | None) -> tuple[tuple, tuple]:
        """What tells the dataset and the answer apart: the files' paths, sizes and times."""
        dataset_key = (file_signature(dataset_path, class_folders=True),
                       None if images is None else file_signature(images),
                       None if images is None else str(images))
        return dataset_key, (dataset_key, file_signature(out))

    def cached(self, out: Path, dataset_path: Path, images: Path | None) -> tuple[bool, UnfinishedRun | None]:
        """Whether the answer of a call with these arguments is known (neither file changed since
        the call that gave it), and that answer (None when unknown); loads nothing."""
        answer = self._answer
        if answer is not None and answer[0] == self._keys(out, dataset_path, images)[1]:
            return True, answer[1]
        return False, None

    def __call__(self, out: Path, dataset_path: Path, images: Path | None) -> UnfinishedRun | None:
        """The unfinished run of the dataset at ``dataset_path`` (its images in ``images``; None: its
        own) saved in ``out``, or None (also when the dataset cannot be loaded: Train says why)."""
        with self._lock:
            dataset_key, run_key = self._keys(out, dataset_path, images)
            dataset = self._dataset
            if dataset is None or dataset[0] != dataset_key:
                try:
                    loaded = load_dataset(dataset_path, images)
                    # what unfinished_run reads: not a COCO file's annotations, which can be large
                    loaded = dataclasses.replace(loaded, coco=None)
                except (OSError, ValueError):
                    loaded = None
                self._dataset = dataset = (dataset_key, loaded)
            answer = self._answer
            if answer is None or answer[0] != run_key:
                self._answer = answer = (run_key, None if dataset[1] is None else unfinished_run(out, dataset[1]))
            return answer[1]

    def forget(self) -> None:
        """Load both again at the next call (a run of this widget has just written the checkpoint)."""
        self._dataset = self._answer = None
