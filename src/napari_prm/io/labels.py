"""Label images: TIFF (uint16/uint32, any number of dimensions) and PNG (8/16-bit)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from .atomic import atomic_write
from .images import read_array

__all__ = ["write_label_image", "read_label_image"]


def _check_labels(labels, *, ndim: int | None = 2) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if ndim is not None and labels.ndim != ndim:
        raise ValueError(f"labels must be {ndim}-D, got shape {labels.shape}")
    if labels.ndim < 2:
        raise ValueError(f"labels must be at least 2-D, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {labels.min()}")
    if labels.size and int(labels.max()) > np.iinfo(np.uint32).max:
        raise ValueError(f"labels must fit uint32, got maximum {labels.max()}")
    return labels


def _storage_dtype(labels: np.ndarray) -> type:
    return np.uint16 if labels.size == 0 or int(labels.max()) <= 65535 else np.uint32


def write_label_image(path: str | os.PathLike, labels: np.ndarray, *,
                      overwrite: bool = True) -> Path:
    """Write a label image as TIFF (uint16 or uint32) or PNG (8- or 16-bit).

    Parameters
    ----------
    path : path-like
        ``.tif``/``.tiff`` (any number of dimensions >= 2, zlib-compressed) or ``.png``
        (2-D only, labels up to 65535).
    labels : integer ndarray
        0 is background.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png"):
        raise ValueError(f"label images are written as .tif, .tiff or .png, got {path}")
    labels = _check_labels(labels, ndim=2 if suffix == ".png" else None)
    dtype = _storage_dtype(labels)
    if suffix == ".png":
        if dtype is not np.uint16:
            raise ValueError(f"cannot write {path}: PNG holds labels up to 65535, the "
                             f"largest label is {labels.max()}; write a TIFF instead")
        import imageio.v3 as iio

        small = labels.size == 0 or int(labels.max()) <= 255
        with atomic_write(path, overwrite=overwrite) as temp:
            iio.imwrite(temp, labels.astype(np.uint8 if small else np.uint16))
    else:
        with atomic_write(path, overwrite=overwrite) as temp:
            tifffile.imwrite(temp, labels.astype(dtype), compression="zlib",
                             photometric="minisblack")
    return path


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a label image written by `write_label_image` (or any integer TIFF/PNG).

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or does not hold integer labels.
    """
    path = Path(path)
    labels = read_array(path, what="label image")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim < 2:
        raise ValueError(f"{path} is not a label image: expected integers with at least "
                         f"2 dimensions, got dtype {labels.dtype} shape {labels.shape}")
    return labels
