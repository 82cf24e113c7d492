"""Fully convolutional classifiers: a backbone trunk followed by a 1×1 conv classifier (step 1 of PRM)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite0Features, load_lite0_imagenet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FullyConvolutionalClassifier(nn.Module):
    """``classifier(features(x))``: (B, 3, H, W) -> class response maps (B, C, h, w).

    Parameters
    ----------
    features : nn.Module
        The backbone's convolutional part: (B, 3, H, W) images to feature maps.
    classifier : nn.Conv2d
        The classifier as a convolution over the features: one output channel per class.
    """

    def __init__(self, features: nn.Module, classifier: nn.Conv2d):
        super().__init__()
        self.features = features
        self.classifier = classifier

    @property
    def num_classes(self) -> int:
        """The number of classes: the classifier's output channels."""
        return self.classifier.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class response maps of a batch of images.

        Parameters
        ----------
        x : (B, 3, H, W) torch.Tensor
            Normalised images.

        Returns
        -------
        (B, C, h, w) torch.Tensor
            ``classifier(features(x))``.
        """
        return self.classifier(self.features(x))


def _classifier(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=True)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _efficientnet_lite0(num_classes: int, pretrained: bool):
    features = EfficientNetLite0Features()
    if pretrained:
        load_lite0_imagenet(features)
    return features, features.out_channels, LITE_MEAN, LITE_STD


def _resnet50(num_classes: int, pretrained: bool):
    from torchvision.models import ResNet50_Weights, resnet50

    net = resnet50(weights=ResNet50_Weights.IMAGENET1K_V1 if pretrained else None)
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return features, 2048, IMAGENET_MEAN, IMAGENET_STD


def _vgg16(num_classes: int, pretrained: bool):
    from torchvision.models import VGG16_Weights, vgg16

    net = vgg16(weights=VGG16_Weights.IMAGENET1K_V1 if pretrained else None)
    # Drop the last max-pool: stride 16 keeps the response maps fine enough for peaks.
    features = nn.Sequential(*list(net.features.children())[:-1])
    return features, 512, IMAGENET_MEAN, IMAGENET_STD


def _tiny(num_classes: int, pretrained: bool):
    """A small random network (stride 4) for tests and quick experiments; never pretrained."""
    width = 16
    layers: list[nn.Module] = []
    in_channels = 3
    for stride, groups in ((2, 1), (1, 1), (2, 1), (1, width)):
        layers += [nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, groups=groups, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=False)]
        in_channels = width
    return nn.Sequential(*layers), width, IMAGENET_MEAN, IMAGENET_STD


BACKBONES: dict[str, Callable] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet50": _resnet50,
    "vgg16": _vgg16,
    "tiny": _tiny,
}


def build_fcn(backbone: str, num_classes: int, *, pretrained: bool = True):
    """Build a fully convolutional classifier.

    Parameters
    ----------
    backbone : {'efficientnet_lite0', 'resnet50', 'vgg16', 'tiny'}
        'efficientnet_lite0' loads ImageNet weights shipped with the package
        (offline); 'resnet50' and 'vgg16' ask torchvision for its ImageNet
        weights (downloaded once into torch's cache); 'tiny' is a small
        random network for tests.
    num_classes : int
    pretrained : bool
        Load the backbone's ImageNet weights.

    Returns
    -------
    fcn : FullyConvolutionalClassifier
    mean, std : tuple of 3 floats
        The input normalisation the backbone expects (RGB in [0, 1]).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    features, channels, mean, std = BACKBONES[backbone](num_classes, pretrained)
    return FullyConvolutionalClassifier(features, _classifier(channels, num_classes)), mean, std


def imagenet_lite0_fcn() -> FullyConvolutionalClassifier:
    """EfficientNet-Lite0 whose ImageNet FC layer became a 1×1 conv: CRMs for the 1000 classes."""
    features = EfficientNetLite0Features()
    fc_weight, fc_bias = load_lite0_imagenet(features)
    classifier = nn.Conv2d(features.out_channels, fc_weight.shape[0], kernel_size=1, bias=True)
    with torch.no_grad():
        classifier.weight.copy_(fc_weight[:, :, None, None])
        classifier.bias.copy_(fc_bias)
    return FullyConvolutionalClassifier(features, classifier)
