"""Intermediate feature maps of a PRM backbone, found generically by their output stride.

The head reads the backbone at a few output strides (4, 8, 16, 32 where the backbone has
them). Which module gives each stride is found once by a forward pass with hooks on every
module, so any backbone in :data:`napari_prm.model.backbones.BACKBONES` (and any other
``nn.Module`` trunk) works; the module names are saved with the head, so a loaded head
reads the same places.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

#: Output strides the head reads, finest first, when the backbone has them.
HEAD_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class Stage:
    """One feature map the head reads.

    Attributes
    ----------
    module : str
        Name of the module in ``backbone.named_modules()`` ("" for the backbone itself).
    stride : int
        Input pixels per feature pixel.
    channels : int
    """

    module: str
    stride: int
    channels: int


def find_stages(backbone: nn.Module, *, probe_size: int = 224,
                strides: Sequence[int] = HEAD_STRIDES) -> list[Stage]:
    """The modules of ``backbone`` that end each output stride, finest first.

    Parameters
    ----------
    backbone : nn.Module
        Maps ``(B, 3, H, W)`` to feature maps; it is run once on zeros (eval mode, no grad).
    probe_size : int
        Side of the probe input; a multiple of the largest stride.
    strides : sequence of int
        Strides wanted; those the backbone does not reach are skipped.

    Returns
    -------
    list of Stage
        For each stride found, the module that produced it last among the shallowest
        modules (fewest dots in the name) producing it: the output of a whole stage
        (``layer2``, ``_blocks.4``), not a convolution inside a block.

    Raises
    ------
    ValueError
        When none of ``strides`` is found.
    """
    records: list[tuple[str, int, int]] = []
    handles = []

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                records.append((name, probe_size // max(int(output.shape[-1]), 1), int(output.shape[1])))
        return record

    for name, module in backbone.named_modules():
        handles.append(module.register_forward_hook(hook(name)))
    was_training = backbone.training
    device = next(backbone.parameters()).device
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, 3, probe_size, probe_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    stages = []
    for stride in strides:
        found = [(name, channels) for name, s, channels in records if s == stride]
        if not found:
            continue
        depth = min(_depth(name) for name, _ in found)
        name, channels = [item for item in found if _depth(item[0]) == depth][-1]
        stages.append(Stage(name, int(stride), channels))
    if not stages:
        seen = sorted({s for _, s, _ in records})
        raise ValueError(f"the backbone has no feature map at stride {list(strides)}; it has strides {seen}")
    return stages


def _depth(name: str) -> int:
    return -1 if name == "" else name.count(".")


class StageFeatures:
    """Read the feature maps of ``stages`` from one forward pass of ``backbone``.

    Parameters
    ----------
    backbone : nn.Module
    stages : sequence of Stage

    Examples
    --------
    >>> features = StageFeatures(model.network.fcn.features, stages)   # doctest: +SKIP
    >>> maps = features(model.preprocess(image))                        # doctest: +SKIP
    """

    def __init__(self, backbone: nn.Module, stages: Sequence[Stage]):
        modules = dict(backbone.named_modules())
        missing = [s.module for s in stages if s.module not in modules]
        if missing:
            raise ValueError(f"the backbone has no module(s) {missing}: the head was made for another backbone")
        self.backbone = backbone
        self.stages = list(stages)
        self._modules = [modules[s.module] for s in self.stages]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[(B, channels, H/stride, W/stride)]``, one per stage, finest first."""
        outputs: dict[int, torch.Tensor] = {}
        handles = [module.register_forward_hook(self._keep(outputs, index))
                   for index, module in enumerate(self._modules)]
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            self.backbone(x)
        finally:
            for handle in handles:
                handle.remove()
            self.backbone.train(was_training)
        return [outputs[index] for index in range(len(self._modules))]

    @staticmethod
    def _keep(outputs: dict, index: int):
        def record(_module, _inputs, output):
            outputs[index] = output.detach()
        return record
