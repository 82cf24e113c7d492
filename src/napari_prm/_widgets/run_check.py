"""The Train widget's check for an unfinished run, cached by the files' size and modification time.

The widget asks :func:`napari_prm.train.unfinished_run` again each time the dataset, the
images folder or the output field changes, and that loads the dataset (a large COCO JSON
takes seconds) and the checkpoint. :class:`UnfinishedRunCheck` keeps the last dataset and
the last answer, and loads again only what changed on disk.
"""

from __future__ import annotations

import dataclasses
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
    """

    def __init__(self):
        self._dataset_key: tuple | None = None
        self._dataset: LabeledImageDataset | None = None
        self._run_key: tuple | None = None
        self._run: UnfinishedRun | None = None

    def __call__(self, out: Path, dataset_path: Path, images: Path | None) -> UnfinishedRun | None:
        """The unfinished run of the dataset at ``dataset_path`` (its images in ``images``; None: its
        own) saved in ``out``, or None (also when the dataset cannot be loaded: Train says why)."""
        dataset_key = (file_signature(dataset_path, class_folders=True),
                       None if images is None else file_signature(images),
                       None if images is None else str(images))
        if dataset_key != self._dataset_key:
            self._dataset_key, self._run_key = dataset_key, None
            try:
                dataset = load_dataset(dataset_path, images)
                # what unfinished_run reads: not a COCO file's annotations, which can be large
                self._dataset = dataclasses.replace(dataset, coco=None)
            except (OSError, ValueError):
                self._dataset = None
        run_key = (dataset_key, file_signature(out))
        if run_key != self._run_key:
            self._run_key = run_key
            self._run = None if self._dataset is None else unfinished_run(out, self._dataset)
        return self._run

    def forget(self) -> None:
        """Load both again at the next call (a run of this widget has just written the checkpoint)."""
        self._dataset_key = self._run_key = None

