"""Label spaces of the built-in model: groups of ImageNet classes that name one class each.

The built-in EfficientNet-Lite0 knows the 1000 ImageNet classes. Most users
think in coarser classes ("cat", not "tabby" and "tiger cat"), and the
1000-way response maps of near-synonyms fire on the same spots, so one object
gets several peaks of different classes. A label space maps each of its
classes to the ImageNet classes that name it; the class response map of a
group is a reduction of its members' maps (:class:`GroupedClassifier`).

Two spaces ship besides ``imagenet`` itself:

``imagenet-voc``
    The PASCAL VOC classes that ImageNet covers, under their COCO names
    (every VOC class but *person*, which ImageNet has no class for).
``imagenet-coco``
    The COCO classes that ImageNet covers (55 of COCO's 80).

The member lists are indices into ImageNet's class list (torchvision's
order); each list's comment names its members. Where ImageNet's name is
ambiguous the COCO meaning wins: a pickup is a *truck* (COCO), not a *car*;
ImageNet's "kite" is a bird of prey, so COCO's *kite* is not covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

#: How member response maps are combined into the group's map.
REDUCTIONS = ("mean", "max", "lse")

_DOGS = list(range(151, 269))  # Chihuahua ... Mexican hairless: the 118 dog breeds
# cock ... great grey owl, black grouse ... black swan, white stork ... albatross
_BIRDS = list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147))
_CATS = [281, 282, 283, 284, 285]  # tabby, tiger cat, Persian, Siamese, Egyptian cat

_SHARED = {
    "airplane": [404, 895, 908],  # airliner, warplane, wing
    "bicycle": [444, 671],  # bicycle-built-for-two, mountain bike
    "bird": _BIRDS,
    "boat": [403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914],
    # aircraft carrier, canoe, catamaran, container ship, fireboat, gondola, lifeboat, liner,
    # pirate ship, schooner, speedboat, submarine, trimaran, yawl
    "bottle": [440, 720, 737, 898, 907],  # beer, pill, pop, water, wine bottle
    "bus": [654, 779, 874],  # minibus, school bus, trolleybus
    "car": [407, 436, 468, 511, 609, 627, 656, 661, 751, 817],
    # ambulance, beach wagon, cab, convertible, jeep, limousine, minivan, Model T, racer, sports car
    "cat": _CATS,
    "chair": [423, 559, 765, 857],  # barber chair, folding chair, rocking chair, throne
    "cow": [345, 346],  # ox, water buffalo
    "dining table": [532],  # dining table
    "dog": _DOGS,
    "horse": [339, 603],  # sorrel, horse cart
    "motorcycle": [665, 670],  # moped, motor scooter
    "potted plant": [738],  # pot (flowerpot)
    "sheep": [348, 349],  # ram, bighorn
    "couch": [831],  # studio couch
    "train": [466, 547, 565, 705, 820, 829],
    # bullet train, electric locomotive, freight car, passenger car, steam locomotive, streetcar
    "tv": [664, 782, 851],  # monitor, screen, television
}

#: VOC's order, COCO's names; person is not covered.
_VOC_ORDER = ("airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "dining table", "dog", "horse", "motorcycle", "potted plant", "sheep", "couch", "train", "tv")

_COCO_ONLY = {
    "truck": [555, 569, 675, 717, 864, 867],  # fire engine, garbage truck, moving van, pickup, tow truck, trailer truck
    "traffic light": [920],
    "parking meter": [704],
    "bench": [703],  # park bench
    "elephant": [101, 385, 386],  # tusker, Indian elephant, African elephant
    "bear": [294, 295, 296, 297],  # brown, American black, ice, sloth bear
    "zebra": [340],
    "backpack": [414],
    "umbrella": [879],
    "handbag": [748],  # purse
    "tie": [457, 906],  # bow tie, Windsor tie
    "skis": [795],  # ski
    "sports ball": [429, 430, 522, 574, 722, 768, 805, 852, 890],
    # baseball, basketball, croquet ball, golf ball, ping-pong ball, rugby ball, soccer ball, tennis ball, volleyball
    "tennis racket": [752],  # racket
    "wine glass": [572, 966],  # goblet, red wine
    "cup": [504, 968],  # coffee mug, cup
    "spoon": [910],  # wooden spoon
    "bowl": [659, 809],  # mixing bowl, soup bowl
    "banana": [954],
    "apple": [948],  # Granny Smith
    "sandwich": [933],  # cheeseburger
    "orange": [950],
    "broccoli": [937],
    "hot dog": [934],  # hotdog
    "pizza": [963],
    "bed": [564],  # four-poster
    "toilet": [861],  # toilet seat
    "laptop": [620, 681],  # laptop, notebook
    "mouse": [673],  # computer mouse
    "remote": [761],  # remote control
    "keyboard": [508],  # computer keyboard
    "cell phone": [487],  # cellular telephone
    "microwave": [651],
    "oven": [827],  # stove
    "toaster": [859],
    "sink": [896],  # washbasin
    "refrigerator": [760],
    "clock": [409, 530, 892],  # analog, digital, wall clock
    "vase": [883],
    "teddy bear": [850],  # teddy
    "hair drier": [589],  # hand blower
}

#: COCO's category order (for the classes covered).
_COCO_ORDER = (
    "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "backpack", "umbrella", "handbag", "tie", "skis", "sports ball", "tennis racket", "bottle",
    "wine glass", "cup", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "hot dog",
    "pizza", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "clock",
    "vase", "teddy bear", "hair drier",
)


@dataclass(frozen=True)
class LabelSpace:
    """Classes of the built-in model defined as groups of ImageNet classes.

    Attributes
    ----------
    name : str
        The name :func:`napari_prm.load_model` takes.
    class_names : tuple of str
    members : tuple of tuple of int
        For each class, the indices of its ImageNet classes.
    reduce : {'mean', 'max', 'lse'}
        How the members' response maps make the class's map: their mean, their
        maximum, or their log-sum-exp minus log(member count).
    """

    name: str
    class_names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    reduce: str = "mean"


def _space(name: str, order: Sequence[str], table: dict[str, list[int]], reduce: str) -> LabelSpace:
    return LabelSpace(name, tuple(order), tuple(tuple(table[c]) for c in order), reduce)


def builtin_label_spaces(reduce: str = "mean") -> dict[str, LabelSpace]:
    """The grouped label spaces of the built-in model, by name.

    Parameters
    ----------
    reduce : {'mean', 'max', 'lse'}
        How a group's member classes are reduced (see `GroupedClassifier`).
    """
    return {
        "imagenet-voc": _space("imagenet-voc", _VOC_ORDER, _SHARED, reduce),
        "imagenet-coco": _space("imagenet-coco", _COCO_ORDER, {**_SHARED, **_COCO_ONLY}, reduce),
    }


class GroupedClassifier(nn.Module):
    """A 1×1 convolution over ImageNet's classes followed by a reduction per group.

    Parameters
    ----------
    conv : nn.Conv2d
        The ImageNet classifier as a 1×1 convolution (1000 output channels).
    members : sequence of sequence of int
        Output channels of ``conv`` that make each group.
    reduce : {'mean', 'max', 'lse'}
        'mean' is folded into the convolution (averaged weights and biases),
        so it costs one small 1×1 convolution; 'max' and 'lse' reduce the
        members' maps.
    """

    def __init__(self, conv: nn.Conv2d, members: Sequence[Sequence[int]], reduce: str = "mean"):
        super().__init__()
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}; got {reduce!r}")
        if not members or any(len(group) == 0 for group in members):
            raise ValueError("every group needs at least one member class")
        self.reduce = reduce
        self.group_sizes = [len(group) for group in members]
        index = torch.tensor([int(i) for group in members for i in group], dtype=torch.long)
        if int(index.min()) < 0 or int(index.max()) >= conv.out_channels:
            raise ValueError(f"member indices must lie in [0, {conv.out_channels})")
        weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
        if reduce == "mean":
            rows = torch.split(index, self.group_sizes)
            self.conv = nn.Conv2d(conv.in_channels, len(members), kernel_size=1, bias=bias is not None)
            with torch.no_grad():
                self.conv.weight.copy_(torch.stack([weight[r].mean(0) for r in rows]))
                if bias is not None:
                    self.conv.bias.copy_(torch.stack([bias[r].mean(0) for r in rows]))
        else:
            self.conv = nn.Conv2d(conv.in_channels, len(index), kernel_size=1, bias=bias is not None)
            with torch.no_grad():
                self.conv.weight.copy_(weight[index])
                if bias is not None:
                    self.conv.bias.copy_(bias[index])

    @property
    def out_channels(self) -> int:
        """The number of groups: one output channel each."""
        return len(self.group_sizes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Each group's map: the members' maps reduced as ``reduce`` says.

        Parameters
        ----------
        features : (B, channels, h, w) torch.Tensor
            The backbone's features, which ``conv`` reads.

        Returns
        -------
        (B, groups, h, w) torch.Tensor
        """
        maps = self.conv(features)
        if self.reduce == "mean":
            return maps
        groups = torch.split(maps, self.group_sizes, dim=1)
        if self.reduce == "max":
            return torch.stack([g.amax(1) for g in groups], 1)
        return torch.stack([torch.logsumexp(g, 1) - float(torch.log(torch.tensor(float(g.shape[1]))))
                            for g in groups], 1)
