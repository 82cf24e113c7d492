"""Reading images from files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["IMAGE_SUFFIXES", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _imread(path: Path, what: str) -> np.ndarray:
    """TIFF through tifffile, other formats through imageio; a ValueError naming the file on failure."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return tifffile.imread(path)
        import imageio.v3 as iio

        return iio.imread(path)
    except Exception as error:  # the readers raise many types for a broken file
        raise ValueError(f"cannot read {what} {path}: {error}") from error


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG, JPEG or TIFF (8- or 16-bit, gray, RGB or RGBA) as a numpy array.

    Returns
    -------
    (H, W) or (H, W, C) ndarray
        In the file's dtype; a channels-first TIFF (C, H, W) with C in {3, 4} is moved to
        channels-last.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or is not a single 2-D image.

    Notes
    -----
    TIFFs are read with tifffile, other formats with imageio (Pillow), which reads 16-bit
    grayscale PNGs exactly but reduces 16-bit colour PNGs to 8 bits per channel.
    """
    path = Path(path)
    image = _imread(path, "image")
    image = np.asarray(image)
    if image.ndim > 2:
        image = image.reshape([n for n in image.shape[:-2] if n != 1] + list(image.shape[-2:]))
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot read image {path}: expected a 2-D gray, RGB or RGBA "
                         f"image, got an array of shape {image.shape}")
    return image
