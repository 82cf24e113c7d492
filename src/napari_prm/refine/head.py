"""The refinement head: a light FPN-style decoder on the frozen PRM backbone's features.

Given the backbone's feature maps of an image and the prompt of one peak (its PRM, its
position and its class's CRM, see :mod:`napari_prm.refine.prompts`), it predicts the mask
of the instance the peak stands for, at the finest stage's resolution (stride 4 on the
built-in backbone). It does not know the classes: what it learns about object extents
is shared by all of them, which is what makes a few corrected images go a long way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import Stage
from .prompts import PROMPT_CHANNELS

#: Version of the head's saved form (tensor names and ``config``); bump on any change.
HEAD_FORMAT_VERSION = 1


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, out_channels), nn.ReLU(inplace=True))


class RefineHead(nn.Module):
    """Decoder from backbone stages and a peak's prompt to the mask logits of its instance.

    Parameters
    ----------
    stages : sequence of Stage
        Finest first (see :func:`napari_prm.refine.features.find_stages`).
    width : int
        Channels of the coarse stages' path; the finest stage uses half.

    Notes
    -----
    Every stage is standardised per channel (statistics of the training images, see
    :meth:`set_feature_statistics`) and projected; the prompt, pooled to each stage's
    size, is projected and added there. Coarse stages (all but the finest) are summed
    top-down after bilinear upsampling and refined by two 3×3 convolutions at the
    second-finest stride; the result is upsampled to the finest stride, joined there and
    refined by one 3×3 convolution of ``width // 2`` channels. A backbone with one stage
    gets two convolutions at its stride.
    """

    def __init__(self, stages: Sequence[Stage], *, width: int = 32):
        super().__init__()
        if not stages:
            raise ValueError("the head needs at least one backbone stage")
        self.stages = [Stage(**asdict(s)) if not isinstance(s, Stage) else s for s in stages]
        self.width = int(width)
        fine = max(self.width // 2, 8)
        # Backbones differ in scale by orders of magnitude: standardising each stage makes
        # every stage start on an equal footing.
        for index, stage in enumerate(self.stages):
            self.register_buffer(f"feature_mean_{index}", torch.zeros(stage.channels))
            self.register_buffer(f"feature_std_{index}", torch.ones(stage.channels))
        self.fine_lateral = nn.Conv2d(self.stages[0].channels, fine, 1)
        self.fine_prompt = nn.Conv2d(PROMPT_CHANNELS, fine, 1)
        self.coarse_laterals = nn.ModuleList(nn.Conv2d(s.channels, self.width, 1) for s in self.stages[1:])
        self.coarse_prompts = nn.ModuleList(nn.Conv2d(PROMPT_CHANNELS, self.width, 1) for _ in self.stages[1:])
        multi = len(self.stages) > 1
        self.coarse_blocks = nn.Sequential(_block(self.width, self.width), _block(self.width, self.width)) \
            if multi else nn.Identity()
        self.fine_in = nn.Conv2d(self.width, fine, 1) if multi else nn.Identity()
        self.fine_blocks = nn.Sequential(_block(fine, fine)) if multi else \
            nn.Sequential(_block(fine, fine), _block(fine, fine))
        self.mask = nn.Conv2d(fine, 1, 1)
        self.info: dict[str, Any] = {}

    @property
    def stride(self) -> int:
        """Input pixels per output pixel."""
        return self.stages[0].stride

    def lateral_maps(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each stage standardised and projected: what all prompts of an image share.

        Parameters
        ----------
        features : sequence of torch.Tensor
            One feature map per stage of the head (``stages``), finest first.
        """
        if len(features) != len(self.stages):
            raise ValueError(f"the head reads {len(self.stages)} feature maps; got {len(features)}")
        dtype = self.mask.weight.dtype
        standardised = [(f.to(dtype) - getattr(self, f"feature_mean_{i}")[:, None, None])
                        / getattr(self, f"feature_std_{i}")[:, None, None] for i, f in enumerate(features)]
        return [self.fine_lateral(standardised[0])] + [lateral(f) for lateral, f in
                                                        zip(self.coarse_laterals, standardised[1:])]

    def forward(self, features: Sequence[torch.Tensor], prompts: torch.Tensor,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits of the instances the prompts stand for.

        Parameters
        ----------
        features : sequence of (B, channels_i, h_i, w_i) tensors
            The stage maps of B images, finest first; any float dtype.
        prompts : (K, 4, h_0, w_0) tensor
            One prompt per peak (see :func:`napari_prm.refine.prompts.peak_prompts`).
        image_index : (K,) int64 tensor, optional
            The image of each prompt (default: image 0 when B is 1, else prompt k is of
            image k).

        Returns
        -------
        (K, 1, h_0, w_0) tensor
        """
        laterals = self.lateral_maps(features)
        count = len(prompts)
        if image_index is None:
            image_index = torch.zeros(count, dtype=torch.long, device=prompts.device) \
                if laterals[0].shape[0] == 1 else torch.arange(count, device=prompts.device)
        prompts = prompts.to(laterals[0].dtype)
        fine = laterals[0][image_index] + self.fine_prompt(prompts)
        if len(self.stages) > 1:
            coarse = None
            for lateral, project in zip(reversed(laterals[1:]), reversed(list(self.coarse_prompts))):
                level = lateral[image_index] + project(F.adaptive_avg_pool2d(prompts, lateral.shape[-2:]))
                coarse = level if coarse is None else level + F.interpolate(
                    coarse, size=level.shape[-2:], mode="bilinear", align_corners=False)
            coarse = self.coarse_blocks(coarse)
            fine = fine + self.fine_in(F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear",
                                                     align_corners=False))
        return self.mask(self.fine_blocks(fine))

    @torch.no_grad()
    def set_feature_statistics(self, features: Sequence[Sequence[torch.Tensor]]) -> None:
        """Standardise each stage by the per-channel mean and standard deviation of these images' maps.

        Parameters
        ----------
        features : sequence (images) of sequences (stages) of (channels, h, w) tensors
        """
        for index in range(len(self.stages)):
            maps = torch.cat([image[index].float().flatten(1) for image in features], dim=1)
            getattr(self, f"feature_mean_{index}").copy_(maps.mean(1))
            getattr(self, f"feature_std_{index}").copy_(maps.std(1).clamp(min=1e-6))

    def config(self) -> dict[str, Any]:
        """What rebuilds this head (plain JSON values), see :func:`head_from_config`."""
        return {"stages": [asdict(s) for s in self.stages], "width": self.width}


def head_from_config(config: dict[str, Any]) -> RefineHead:
    """A new head (random weights) with the layout ``config`` describes."""
    try:
        stages = [Stage(str(s["module"]), int(s["stride"]), int(s["channels"])) for s in config["stages"]]
        return RefineHead(stages, width=int(config["width"]))
    except (KeyError, TypeError) as error:
        raise ValueError(f"the refinement head's configuration is incomplete: {error}") from error


def head_metadata(head: RefineHead) -> dict[str, Any]:
    """The ``refine`` metadata entry of a checkpoint: format version, layout, provenance.

    ``head.info`` (set by :func:`napari_prm.refine.refine`: what it was trained on, the
    settings of instance cutting) is stored as given; it must hold plain JSON values.
    """
    return {"format_version": HEAD_FORMAT_VERSION, "config": head.config(),
            "info": dict(getattr(head, "info", {}) or {})}


def load_head(metadata: dict[str, Any], state: dict[str, torch.Tensor], *, source: str = "checkpoint") -> RefineHead:
    """Rebuild a head from its ``refine`` metadata entry and its tensors (names without ``refine.``).

    Raises
    ------
    ValueError
        Naming ``source``, when the entry is newer than this napari-prm or does not match
        the tensors.
    """
    if not isinstance(metadata, dict):
        raise ValueError(f"{source}: the 'refine' metadata entry is not a mapping")
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{source}: the 'refine' metadata entry has no valid format_version "
                         f"(expected a positive integer, got {version!r})")
    if version > HEAD_FORMAT_VERSION:
        raise ValueError(f"{source}: its refinement head was written by a newer napari-prm (head format "
                         f"{version}, this one reads up to {HEAD_FORMAT_VERSION}); upgrade napari-prm")
    try:
        head = head_from_config(metadata["config"])
        head.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(f"{source}: the refinement head does not match its own metadata: {error}") from error
    info = metadata.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"{source}: the 'refine' metadata entry's info: expected a mapping, got "
                         f"{type(info).__name__}")
    head.info = dict(info)
    return head.eval()
