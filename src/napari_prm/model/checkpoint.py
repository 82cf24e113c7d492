"""PRM models with their metadata: build, save, load, and the built-in ``"imagenet"`` model."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.atomic import atomic_write
from .backbones import build_fcn, imagenet_lite0_fcn
from .efficientnet_lite import LITE_MEAN, LITE_STD
from .prm import PeakResponseMapping
from .transforms import as_rgb_float, to_network_input

CHECKPOINT_FORMAT = "napari-prm-checkpoint"
CHECKPOINT_VERSION = 1
BUILTIN_MODELS = ("imagenet",)
IMAGENET_CLASS_THRESHOLD = 8.0
PRM_SETTINGS = ("win_size", "peak_filter", "sub_pixel_locating_factor")
#: Key prefix of the refinement head's tensors in a checkpoint (see napari_prm.refine).
HEAD_PREFIX = "refine."


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None picks CUDA, then MPS, then the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class PRMModel:
    """A :class:`PeakResponseMapping` network with what is needed to use it on images.

    Attributes
    ----------
    network : PeakResponseMapping
        ``network.fcn.features`` is the backbone, ``network.fcn.classifier`` the 1×1 conv.
    class_names : list of str
    backbone : str
        Name in :data:`napari_prm.model.backbones.BACKBONES`.
    input_size : (h, w) or None
        Images are resized to this before the network (None: native size).
    mean, std : 3 floats
        Normalisation of RGB in [0, 1].
    settings : dict
        PRM and prediction defaults (``win_size``, ``peak_filter``,
        ``sub_pixel_locating_factor``, ...), saved with the model.
    head : RefineHead or None
        The refinement head learnt from pseudo-instances and corrections
        (:mod:`napari_prm.refine`); saved with the model under the ``refine`` metadata
        entry and ``refine.`` tensor names. With a head, predict's ``"auto"`` proposals
        become ``"refined"``.
    """

    network: PeakResponseMapping
    class_names: list[str]
    backbone: str
    input_size: tuple[int, int] | None = (448, 448)
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    settings: dict[str, Any] = field(default_factory=dict)
    head: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: str | torch.device | None) -> PRMModel:
        """Move the network to ``device`` (None: the best available) and return self."""
        self.network.to(resolve_device(device))
        if self.head is not None:
            self.head.to(resolve_device(device))
        return self

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """A napari image plane -> the normalised ``(1, 3, h, w)`` network input on the model's device."""
        return to_network_input(as_rgb_float(image), self.input_size, self.mean, self.std).to(self.device)

    def metadata(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "package_version": __version__,
            "backbone": self.backbone,
            "class_names": list(self.class_names),
            "input_size": None if self.input_size is None else [int(s) for s in self.input_size],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "settings": dict(self.settings),
        } | ({} if self.head is None else {"refine": _head_metadata(self.head)})


def _head_metadata(head) -> dict[str, Any]:
    from ..refine.head import head_metadata

    return head_metadata(head)


def _network(fcn, settings: dict[str, Any]) -> PeakResponseMapping:
    return PeakResponseMapping(fcn, **{k: settings[k] for k in PRM_SETTINGS if k in settings})


def build_model(
    backbone: str,
    class_names: Sequence[str],
    *,
    pretrained: bool = True,
    input_size: tuple[int, int] | None = (448, 448),
    win_size: int = 3,
    peak_filter: Any = "median",
    sub_pixel_locating_factor: int = 1,
) -> PRMModel:
    """Build a new PRM model for ``class_names`` on a backbone.

    Parameters
    ----------
    backbone : {'efficientnet_lite0', 'resnet50', 'vgg16', 'tiny'}
    class_names : sequence of str
        One response map per class, in this order.
    pretrained : bool
        Start the backbone from ImageNet weights (EfficientNet-Lite0: shipped,
        offline; ResNet-50 / VGG-16: torchvision download). The classifier is new.
    input_size, win_size, peak_filter, sub_pixel_locating_factor
        Saved with the model; see :class:`PRMModel` and :class:`PeakResponseMapping`.
    """
    class_names = [str(name) for name in class_names]
    if not class_names:
        raise ValueError("class_names must name at least one class")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique; got {class_names}")
    fcn, mean, std = build_fcn(backbone, len(class_names), pretrained=pretrained)
    settings = {"win_size": win_size, "peak_filter": peak_filter,
                "sub_pixel_locating_factor": sub_pixel_locating_factor}
    return PRMModel(_network(fcn, settings), class_names, backbone, _size(input_size), tuple(mean), tuple(std),
                    settings)


def _size(input_size) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        return (input_size, input_size)
    height, width = (int(s) for s in input_size)
    return (height, width)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, as bundled with torchvision (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def builtin_model(name: str = "imagenet") -> PRMModel:
    """The built-in model: EfficientNet-Lite0 with its ImageNet classifier as a 1×1 conv."""
    if name != "imagenet":
        raise ValueError(f"unknown built-in model {name!r}; built-in models: {BUILTIN_MODELS}")
    # ImageNet logits put nearly all 1000 class scores above 0: keep only confident classes by default.
    settings = {"win_size": 3, "peak_filter": "median", "sub_pixel_locating_factor": 1,
                "class_threshold": IMAGENET_CLASS_THRESHOLD}
    network = _network(imagenet_lite0_fcn(), settings)
    return PRMModel(network.eval(), imagenet_class_names(), "efficientnet_lite0", (448, 448), LITE_MEAN, LITE_STD,
                    settings)


def save_model(model: PRMModel, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Save weights and metadata to ``path`` (``.safetensors`` or a torch file), atomically.

    ``extra`` is a dict of tensors and plain values stored alongside (torch files only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    if model.head is not None:
        state.update({HEAD_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()})
    metadata = model.metadata()
    if extra and path.suffix == ".safetensors":
        raise ValueError("extra state can only be saved in torch checkpoints (.pt/.pth), not .safetensors")
    with atomic_write(path) as temp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, temp, metadata={"napari_prm": json.dumps(metadata)})
        else:
            torch.save({"metadata": metadata, "state_dict": state, "extra": extra or {}}, temp)
    return path


def _read_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get("napari_prm")
                state = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = json.loads(raw) if raw else None
            extra: dict = {}
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(content, dict) or "metadata" not in content or "state_dict" not in content:
                raise ValueError("no napari-prm metadata in it")
            metadata, state, extra = content["metadata"], content["state_dict"], content.get("extra", {})
    except ValueError as error:
        raise ValueError(f"{path} is not a napari-prm checkpoint: {error}") from error
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: it is truncated, corrupt or not a napari-prm "
                         f"checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(metadata, dict) or metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a napari-prm checkpoint (no '{CHECKPOINT_FORMAT}' metadata)")
    if int(metadata.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(f"{path} was written by a newer napari-prm (format {metadata['format_version']}); "
                         "upgrade napari-prm")
    return metadata, state, extra


def load_checkpoint(path: str | os.PathLike) -> tuple[PRMModel, dict]:
    """Load a checkpoint: the model and the ``extra`` dict saved with it."""
    path = Path(path)
    metadata, state, extra = _read_checkpoint(path)
    settings = dict(metadata.get("settings", {}))
    head_state = {k[len(HEAD_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(HEAD_PREFIX)}
    try:
        fcn, _, _ = build_fcn(metadata["backbone"], len(metadata["class_names"]), pretrained=False)
        network = _network(fcn, settings)
        network.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(f"checkpoint {path} does not match its own metadata: {error}") from error
    model = PRMModel(
        network.eval(),
        list(metadata["class_names"]),
        metadata["backbone"],
        _size(metadata.get("input_size")),
        tuple(metadata["mean"]),
        tuple(metadata["std"]),
        settings,
    )
    if "refine" in metadata:
        from ..refine.head import load_head

        model.head = load_head(metadata["refine"], head_state, source=str(path))
    elif head_state:
        raise ValueError(f"checkpoint {path} holds refinement head weights but no 'refine' metadata")
    return model, extra


def load_model(name_or_path: str | os.PathLike | PRMModel, *, device: str | torch.device | None = "cpu") -> PRMModel:
    """Load a built-in model by name or a checkpoint file.

    Parameters
    ----------
    name_or_path : str or path or PRMModel
        ``"imagenet"`` (built-in, offline), or a ``.pt``/``.pth``/``.safetensors``
        checkpoint written by :func:`save_model`. A PRMModel is returned as is.
    device : str, torch.device or None
        Where to put the network (None: the best available).

    Raises
    ------
    ValueError
        The file is missing, truncated, corrupt or not a napari-prm checkpoint.
    """
    if isinstance(name_or_path, PRMModel):
        return name_or_path.to(device)
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_MODELS:
        model = builtin_model(name_or_path)
    else:
        model, _ = load_checkpoint(name_or_path)
    return model.to(device)
