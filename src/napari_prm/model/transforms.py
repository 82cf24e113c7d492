"""From what napari holds to the network input.

`as_rgb_float` (the one RGB normaliser, shared with the proposals) lives in
`napari_prm.io.images` and is re-exported here; `to_network_input` resizes and normalises
its result for the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io.images import as_rgb_float

__all__ = ["as_rgb_float", "to_network_input"]


def to_network_input(
    rgb: np.ndarray,
    input_size: Sequence[int] | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize and normalise an RGB float image into a ``(1, 3, h, w)`` tensor.

    Parameters
    ----------
    rgb : (H, W, 3) or (H, W, 1) float32 ndarray in [0, 1]
        A gray image as ``as_rgb_float(image, keep_gray=True)`` gives it is resized as one
        channel, then repeated: the same tensor as from its RGB, without holding the image
        three times over.
    input_size : (h, w) or None
        Network input size (bilinear resize, antialiased); None keeps the size.
    mean, std : 3 floats
        Per-channel normalisation applied after the resize.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    if input_size is not None and tuple(tensor.shape[-2:]) != tuple(input_size):
        tensor = F.interpolate(tensor, size=tuple(int(s) for s in input_size), mode="bilinear",
                               align_corners=False, antialias=True)
    tensor = tensor.expand(-1, 3, -1, -1)  # a gray image's one channel, now that it is small
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t
