"""From what napari holds to the network input."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_rgb_float(image: np.ndarray) -> np.ndarray:
    """Convert a napari image plane to RGB float32 in [0, 1].

    Parameters
    ----------
    image : (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) ndarray
        Grayscale, RGB or RGBA; bool, integer or floating point. Integer
        images are scaled by their dtype's range (uint16 by 65535); float
        images already in [0, 1] are kept, others are min-max scaled.

    Returns
    -------
    rgb : (H, W, 3) float32 ndarray

    Raises
    ------
    ValueError
        Empty or 1-pixel images, NaN or infinite values, unreadable channel
        counts and stacks (3D data with more than 4 trailing channels).
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        channels = image.shape[-1]
    elif image.ndim == 2:
        channels = 0
    elif image.ndim == 3:
        raise ValueError(
            f"expected one 2D plane (H, W) or a colour image (H, W, 3|4); got shape {image.shape}: "
            "a 3D stack or an image with an unreadable channel count. Pass a single plane."
        )
    else:
        raise ValueError(f"expected a 2D grayscale or colour image; got {image.ndim} dimensions, shape {image.shape}")
    height, width = image.shape[:2]
    if height < 2 or width < 2:
        raise ValueError(f"the image must be at least 2×2 pixels; got {height}×{width}")
    if image.dtype == bool:
        data = image.astype(np.float32)
    elif np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        if info.min < 0:
            data = (image.astype(np.float32) - info.min) / float(info.max - info.min)
        else:
            data = image.astype(np.float32) / float(info.max)
    elif np.issubdtype(image.dtype, np.floating):
        data = image.astype(np.float32)
        if not np.isfinite(data).all():
            raise ValueError("the image contains NaN or infinite values")
        low, high = float(data.min()), float(data.max())
        if low < 0 or high > 1:
            data = (data - low) / (high - low) if high > low else np.zeros_like(data)
    else:
        raise ValueError(f"unsupported image dtype {image.dtype}")
    if channels == 0:
        data = np.repeat(data[..., None], 3, axis=-1)
    elif channels == 1:
        data = np.repeat(data, 3, axis=-1)
    elif channels == 4:
        # Composite over black: transparent pixels carry no object evidence.
        data = data[..., :3] * data[..., 3:4]
    return np.ascontiguousarray(data, dtype=np.float32)


def to_network_input(
    rgb: np.ndarray,
    input_size: Sequence[int] | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize and normalise an RGB float image into a ``(1, 3, h, w)`` tensor.

    Parameters
    ----------
    rgb : (H, W, 3) float32 ndarray in [0, 1]
    input_size : (h, w) or None
        Network input size (bilinear resize, antialiased); None keeps the size.
    mean, std : 3 floats
        Per-channel normalisation applied after the resize.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    if input_size is not None and tuple(tensor.shape[-2:]) != tuple(input_size):
        tensor = F.interpolate(tensor, size=tuple(int(s) for s in input_size), mode="bilinear",
                               align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t
