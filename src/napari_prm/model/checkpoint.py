"""PRM models with their metadata: build, save, load, and the built-in ``"imagenet"`` model."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _validate as check
from .._text import close_match, value_text
from ..io.atomic import atomic_write
from .backbones import BACKBONES, build_fcn, imagenet_lite0_fcn
from .efficientnet_lite import LITE_MEAN, LITE_STD
from .prm import PeakResponseMapping
from .transforms import as_rgb_float, to_network_input

CHECKPOINT_FORMAT = "napari-prm-checkpoint"
CHECKPOINT_VERSION = 1
#: Names `load_model` takes for the built-in model, one per label space.
BUILTIN_MODELS = ("imagenet", "imagenet-voc", "imagenet-coco")
PRM_SETTINGS = ("win_size", "peak_filter", "sub_pixel_locating_factor")
#: Key prefix of the refinement head's tensors in a checkpoint (see napari_prm.refine).
HEAD_PREFIX = "refine."
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def is_builtin_name(model: object, names: Collection[str] = BUILTIN_MODELS) -> bool:
    """Whether a model argument names a built-in model rather than a file: the one rule.

    A ``str`` that is exactly one of ``names`` (`BUILTIN_MODELS`: ``"imagenet-voc"``) means
    the built-in model, even when a file of that name lies in the current folder; such a
    file is taken when given as a path: ``"./imagenet-voc"``, an absolute path, or a
    `pathlib.Path`. `load_model`, `napari_prm.train.calibrate_checkpoint`, `napari_prm.train.train`
    (whose backbone names, ``names=BACKBONES``, follow the same rule), the command line's
    ``--model`` and the widgets all decide by it, so that a stray file named like a built-in
    model never changes what a name means.

    Parameters
    ----------
    model : object
        A model argument: a name, a path, a `PRMModel`...
    names : collection of str
        The names that mean something built in (default: `BUILTIN_MODELS`).

    Returns
    -------
    bool
    """
    return isinstance(model, str) and model in names


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None picks CUDA, then MPS, then the CPU.

    Parameters
    ----------
    device : str, torch.device or None
        A device (``"cpu"``, ``"cuda:1"``, ``"mps"``...); None picks one.

    Raises
    ------
    ValueError
        ``device`` is not a device name, or names a CUDA/MPS device this machine lacks.
    """
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device: {device!r} is not a torch device (e.g. 'cpu', 'cuda', "
                             f"'cuda:1', 'mps'): {error}") from None
        if chosen.type == "cuda" and (not torch.cuda.is_available()
                                      or (chosen.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device: {device!r} is not available on this machine "
                             f"({torch.cuda.device_count()} CUDA device(s))")
        mps = getattr(torch.backends, "mps", None)
        if chosen.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(f"device: {device!r} is not available on this machine")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(repr=False, eq=False)
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

    def __post_init__(self):
        self.class_names, self.input_size, self.mean, self.std = _checked_fields(
            "PRMModel", self.class_names, self.input_size, self.mean, self.std)

    def __repr__(self) -> str:
        # the network's module tree (9,000 characters for EfficientNet-Lite0) is model.network's repr
        from .._text import names_summary

        thresholds = {key: self.settings[key] for key in ("class_threshold", "peak_threshold") if key in self.settings}
        head = "None" if self.head is None else type(self.head).__name__
        return (f"PRMModel(backbone={self.backbone!r}, class_names={names_summary(self.class_names)}, "
                f"input_size={self.input_size}, device={self.device}, head={head}, "
                f"thresholds={thresholds})")

    @property
    def device(self) -> torch.device:
        """The torch device the network's weights are on."""
        return next(self.network.parameters()).device

    @property
    def num_classes(self) -> int:
        """The number of classes: ``len(class_names)``."""
        return len(self.class_names)

    def to(self, device: str | torch.device | None) -> PRMModel:
        """Move the network (and its refinement head) to ``device`` and return self.

        Parameters
        ----------
        device : str, torch.device or None
            None: the best available (see :func:`resolve_device`).

        Returns
        -------
        PRMModel
            This model.
        """
        self.network.to(resolve_device(device))
        if self.head is not None:
            self.head.to(resolve_device(device))
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The network's floating-point type (float32 unless the user converted it, e.g. ``.half()``)."""
        return next(self.network.parameters()).dtype

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """The normalised network input of an image, on the model's device, in its dtype.

        Parameters
        ----------
        image : ndarray
            What :func:`napari_prm.io.as_rgb_float` takes.

        Returns
        -------
        (1, 3, h, w) torch.Tensor
            Resized to :attr:`input_size` (None keeps the image's size).
        """
        return self.network_input(as_rgb_float(image))

    def network_input(self, rgb: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
        """:meth:`preprocess` of an image `as_rgb_float` has already made.

        Normalising it again would give the same values, at the cost of passes over it.

        Parameters
        ----------
        rgb : (H, W, 3) or (H, W, 1) float ndarray
            Floats in [0, 1]; ``(H, W, 1)`` for a gray image (``keep_gray=True``): the same input.
        size : (int, int), optional
            ``(h, w)`` to resize to instead of :attr:`input_size` (None: ``input_size``).

        Returns
        -------
        (1, 3, h, w) torch.Tensor
        """
        size = self.input_size if size is None else size
        return to_network_input(rgb, size, self.mean, self.std).to(self.device, self.dtype)

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint records beside the weights.

        Returns
        -------
        dict
            Format and package version, backbone, class names, input size, normalisation,
            the model's settings (calibrated thresholds included) and, with a refinement
            head, its ``refine`` entry.
        """
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


def model_fingerprint(model: PRMModel, *, head: bool = False) -> str:
    """A SHA-1 of a model's network weights and input settings (and its head's weights with ``head``).

    Two models give the same fingerprint when they compute the same maps: it tells
    whether outputs or cached samples were made with this model.

    Parameters
    ----------
    model : PRMModel
    head : bool
        Also hash the refinement head's weights and metadata, when the model has one.

    Returns
    -------
    str
        40 hexadecimal digits.
    """
    digest = hashlib.sha1()
    digest.update(json.dumps([model.backbone, list(model.class_names), model.input_size, list(model.mean),
                              list(model.std), model.settings], sort_keys=True, default=str).encode())
    modules = [("", model.network)] + ([("refine.", model.head)] if head and model.head is not None else [])
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update((prefix + name).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if head and model.head is not None:
        digest.update(json.dumps(_head_metadata(model.head), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _head_metadata(head) -> dict[str, Any]:
    from ..refine.head import head_metadata

    return head_metadata(head)


def _checked_fields(where: str, class_names, input_size, mean, std):
    """The model's class names, input size and normalisation, checked (ValueError names ``where``)."""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence) \
            or not all(isinstance(name, str) for name in class_names):
        raise ValueError(f"{where}: class_names: expected a list of strings, got {class_names!r}")
    if not class_names:
        raise ValueError(f"{where}: class_names: expected at least one class, got none")
    duplicates = sorted(name for name, count in Counter(class_names).items() if count > 1)
    if duplicates:
        raise ValueError(f"{where}: class_names: expected unique names, got duplicates {duplicates}")
    input_size = check.input_size(f"{where}: input_size", input_size, square=False, optional=True)
    mean = check.finite_floats(f"{where}: mean", mean, length=3)
    std = check.finite_floats(f"{where}: std", std, length=3, low=0, low_open=True)
    return list(class_names), input_size, mean, std


def _checked_settings(where: str, settings, *, loading: bool = False) -> dict[str, Any]:
    """PRM and prediction settings, checked (ValueError names ``where``).

    ``loading``: the settings of a checkpoint being read (``where`` names it), whose recorded
    channels may name a channel twice (`_set_aside_repeated_channels`); a model being saved or
    built may not."""
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: settings: expected a dict, got {settings!r}")
    settings = dict(settings)
    if "win_size" in settings:
        win_size = check.positive_int(f"{where}: settings.win_size", settings["win_size"])
        if win_size % 2 != 1:
            raise ValueError(f"{where}: settings.win_size: expected an odd integer, got {win_size}")
        settings["win_size"] = win_size
    if "sub_pixel_locating_factor" in settings:
        settings["sub_pixel_locating_factor"] = check.positive_int(
            f"{where}: settings.sub_pixel_locating_factor", settings["sub_pixel_locating_factor"])
    peak_filter = settings.get("peak_filter")
    if isinstance(peak_filter, str):
        if peak_filter not in ("median", "mean", "max"):
            raise ValueError(f"{where}: settings.peak_filter: expected 'median', 'mean', 'max', "
                             f"a number or null, got {peak_filter!r}")
    elif peak_filter is not None:
        settings["peak_filter"] = check.finite_float(f"{where}: settings.peak_filter", peak_filter)
    if "class_threshold" in settings:
        settings["class_threshold"] = check.finite_float(f"{where}: settings.class_threshold",
                                                         settings["class_threshold"])
    if settings.get("channels") is not None:  # the image channels it was trained on; older checkpoints have none
        from ..io.images import checked_channels

        if loading and _set_aside_repeated_channels(where, settings):
            return settings
        settings["channels"] = checked_channels(settings["channels"], name=f"{where}: settings.channels")
    return settings


def _set_aside_repeated_channels(where: str, settings: dict) -> bool:
    """Drop recorded channels that name a channel twice (``[0, 0]``, as ``train --channels 0 0``
    recorded them before repeated channels were refused, or set by hand) from a checkpoint's
    ``settings``, with a warning naming the checkpoint (``where``) and what to do; False (nothing
    done) for any other channels.

    napari-prm reads no channel twice (`napari_prm.io.checked_channels`), so images cannot be read
    as the record says; the weights are sound, so the model loads as one that records no channels
    (as older checkpoints), and channels given (``--channels``, ``channels=``) are read."""
    from ..io.images import MAX_CHANNELS, checked_channels

    recorded = settings["channels"]
    try:
        values = list(recorded)
        unique = list(dict.fromkeys(values))
        if len(values) > MAX_CHANNELS or len(unique) == len(values):
            return False
        checked_channels(unique)  # whole numbers from 0, but for the repeats
    except (TypeError, ValueError):
        return False
    written = ",".join(str(c) for c in values)
    twice = ", ".join(str(c) for c in unique if values.count(c) > 1)
    import warnings

    warnings.warn(
        f"{where}: settings.channels records {written}, channel {twice} more than once (an older napari-prm's "
        f"train --channels {written.replace(',', ' ')} recorded them so, reading one channel as two colours, or "
        "they were edited); napari-prm reads each channel once, so the model is loaded without recorded "
        "channels: it reads images as they are unless channels are given (predict --channels, channels=). "
        "To record the channels to read its images with, save it again: model = napari_prm.load_model(path); "
        "model.settings['channels'] = [...]; napari_prm.save_model(model, path)", UserWarning, stacklevel=2)
    del settings["channels"]
    return True


def _check_finite_weights(where: str, state: dict) -> None:
    """Refuse a state dict with non-tensor entries or NaN/infinite weights."""
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where}: weight {key!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{where}: weight {key!r} holds {count} NaN or infinite value(s); "
                             "the model is unusable (did training diverge?)")


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

    Returns
    -------
    PRMModel
        Untrained classifier rows and no calibrated thresholds, on the CPU.
    """
    if isinstance(class_names, (str, bytes)):
        raise ValueError(f"class_names: expected a list of names, got the string {class_names!r}")
    class_names = [str(name) for name in class_names]
    if not class_names:
        raise ValueError("class_names must name at least one class")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique; got {class_names}")
    settings = {"win_size": win_size, "peak_filter": peak_filter,
                "sub_pixel_locating_factor": sub_pixel_locating_factor}
    if not callable(peak_filter):
        settings = _checked_settings("build_model", settings)
    fcn, mean, std = build_fcn(backbone, len(class_names), pretrained=pretrained)
    return PRMModel(_network(fcn, settings), class_names, backbone,
                    check.input_size("input_size", input_size, optional=True), tuple(mean), tuple(std),
                    settings)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, as bundled with torchvision (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def builtin_class_names(name: str = "imagenet") -> list[str]:
    """The class names of built-in model ``name`` (one of `BUILTIN_MODELS`), without its weights.

    ImageNet's 1000 for ``"imagenet"``; a grouped label space's own for the others
    (:mod:`napari_prm.model.label_spaces`).
    """
    from .label_spaces import builtin_label_spaces

    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; built-in models: {BUILTIN_MODELS}")
    if name == "imagenet":
        return imagenet_class_names()
    return list(builtin_label_spaces()[name].class_names)


def builtin_calibration() -> dict[str, dict]:
    """The shipped thresholds of the built-in label spaces (``builtin_calibration.json``).

    Written by ``benchmarks/calibrate_builtin.py``; docs/accuracy.md says how each
    pair of thresholds was chosen.
    """
    import importlib.resources

    text = importlib.resources.files(__package__).joinpath("builtin_calibration.json").read_text(encoding="utf-8")
    return json.loads(text)["spaces"]


#: The input size of the built-in models (:func:`builtin_model`).
BUILTIN_INPUT_SIZE = (448, 448)


def builtin_model(name: str = "imagenet", *, reduce: str | None = None) -> PRMModel:
    """The built-in model: EfficientNet-Lite0 with its ImageNet classifier as a 1×1 conv.

    Parameters
    ----------
    name : {'imagenet', 'imagenet-voc', 'imagenet-coco'}
        The label space: ImageNet's 1000 classes, or the VOC / COCO classes that
        ImageNet covers, each the group of ImageNet classes that name it
        (:mod:`napari_prm.model.label_spaces`).
    reduce : {'mean', 'max', 'lse'}, optional
        How a group's member maps are combined (default: 'mean', which folds into
        a plain 1×1 convolution, so the model saves as an ordinary checkpoint).

    Returns
    -------
    PRMModel
        With the label space's calibrated class and peak thresholds in ``settings``.
    """
    from .label_spaces import GroupedClassifier, builtin_label_spaces

    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; built-in models: {BUILTIN_MODELS}")
    calibration = builtin_calibration().get(name, {})
    settings = {"win_size": 3, "peak_filter": "median", "sub_pixel_locating_factor": 8,
                "label_space": name}
    for key in ("class_threshold", "peak_threshold", "tta_calibration"):
        if calibration.get(key) is not None:
            settings[key] = calibration[key]
    fcn = imagenet_lite0_fcn()
    class_names = imagenet_class_names()
    if name != "imagenet":
        space = builtin_label_spaces(reduce or "mean")[name]
        grouped = GroupedClassifier(fcn.classifier, space.members, space.reduce)
        fcn.classifier = grouped.conv if space.reduce == "mean" else grouped
        class_names = list(space.class_names)
        settings["reduce"] = space.reduce
    network = _network(fcn, settings)
    return PRMModel(network.eval(), class_names, "efficientnet_lite0", BUILTIN_INPUT_SIZE, LITE_MEAN, LITE_STD,
                    settings)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a safetensors checkpoint: its suffix, in any case (``.SAFETENSORS`` too);
    every other checkpoint is a torch file."""
    return Path(path).suffix.lower() == ".safetensors"


#: How ``torch.save``'s legacy (non-zip) format starts: a pickle of its magic number.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _holds_torch_file(path: Path) -> bool:
    """Whether ``path`` is an existing file that ``torch.save`` wrote: a zip archive with its
    ``data.pkl`` (not any zip: a NumPy ``.npz`` is one), or the legacy format."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_LEGACY_TORCH_HEAD))
            if head.startswith(b"PK\x03\x04"):
                with zipfile.ZipFile(handle) as archive:  # the file opened once
                    return any(name.rpartition("/")[2] == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return head == _LEGACY_TORCH_HEAD


def checkpoint_file(name: str, path: str | os.PathLike, *, training: bool = False) -> Path:
    """A checkpoint to write: not a folder, ending in one of :data:`CHECKPOINT_SUFFIXES` (in any
    case); with ``training``, not ``.safetensors``, which holds no optimiser state.

    An existing torch checkpoint under another name (``model.ckpt``, which `load_model` reads)
    may be written again, as a torch file: ``calibrate`` without ``--out`` and *Learn from
    corrections* replace the model they were given.

    Raises
    ------
    ValueError
        Naming ``name`` and the path.
    """
    path = check.output_file(name, path, parent_must_exist=False)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES and not (path.is_file() and _holds_torch_file(path)):
        raise ValueError(f"{name}: expected a file ending in {' or '.join(CHECKPOINT_SUFFIXES)}, got {path}")
    if training and is_safetensors(path):
        raise ValueError(f"{name}: training checkpoints hold optimiser state: write a .pt file, not {path}")
    return path


def save_model(model: PRMModel, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Save weights and metadata to ``path`` (``.safetensors``, or a torch ``.pt``/``.pth`` file), atomically.

    Parameters
    ----------
    model : PRMModel
    path : path-like
        Ending in ``.safetensors``, ``.pt`` or ``.pth``. Another suffix (``model.onnx``,
        none) is refused: a torch file was written under it.
    extra : dict, optional
        Tensors and plain values stored alongside (torch files only: a ``ValueError`` for
        ``.safetensors``).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        Naming ``path``, for NaN or infinite weights and for metadata or settings that
        :func:`load_checkpoint` would refuse (``settings["channels"]`` of 4 indices): nothing
        is written.
    """
    return _write_model(model, checkpoint_file("path", path), extra=extra)


def _write_model(model: PRMModel, path: Path, *, extra: dict | None = None) -> Path:
    """`save_model` to a ``path`` that `checkpoint_file` took already: a training run checks its
    ``out`` once, not on each epoch's save (for ``model.ckpt``, by reading the file)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    if model.head is not None:
        state.update({HEAD_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()})
    # A NaN model predicts nothing and says nothing: never write one (the file keeps its last good content).
    _check_finite_weights(f"cannot save model to {path}", state)
    metadata = model.metadata()
    _checked_fields(f"cannot save model to {path}", metadata["class_names"], metadata["input_size"],
                    metadata["mean"], metadata["std"])
    # settings that loading refuses (channels [0, 1, 2, 3] set by hand) are refused before a file is
    # written that no one can load
    metadata["settings"] = _checked_settings(f"cannot save model to {path}", metadata["settings"])
    if extra and is_safetensors(path):
        raise ValueError("extra state can only be saved in torch checkpoints (.pt/.pth), not .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temp:
        if is_safetensors(path):
            from safetensors.torch import save_file

            save_file(state, temp, metadata={"napari_prm": json.dumps(metadata)})
        else:
            torch.save({"metadata": metadata, "state_dict": state, "extra": extra or {}}, temp)
    return path


def _unreadable(path: Path) -> str:
    return (f"cannot read checkpoint {path}: it is truncated, corrupt or not a napari-prm "
            "checkpoint (napari-prm writes .pt/.pth files with torch.save and .safetensors "
            "files with safetensors)")


def _read_checkpoint(path: Path, *, tensors: bool = True) -> tuple[dict, dict, dict]:
    """A checkpoint's raw metadata, state dict and extra dict, each checked for its kind.

    With ``tensors`` False, the metadata alone is read (the state and extra dicts returned are
    empty): a ``.safetensors`` file's header; a torch file's pickle, its tensors mapped from
    the zip archive (``mmap``), never read. A file in ``torch.save``'s legacy format (no zip)
    cannot be mapped and is read whole. The errors are the same.
    """
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist or is not a file")
    try:
        if is_safetensors(path):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get("napari_prm")
                state = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
            metadata = json.loads(raw) if raw else None
            extra: dict = {}
        else:
            if tensors:
                lazy = False
            else:  # only a zip archive (torch.save's format since torch 1.6) can be mapped
                with open(path, "rb") as handle:
                    lazy = handle.read(4) == b"PK\x03\x04"
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
            if not isinstance(content, dict) or "metadata" not in content or "state_dict" not in content:
                raise ValueError("no napari-prm metadata in it")
            metadata, state, extra = content["metadata"], content["state_dict"], content.get("extra", {})
    except ValueError as error:
        raise ValueError(f"{path} is not a napari-prm checkpoint: {error}") from error
    except pickle.UnpicklingError as error:
        # torch's message suggests weights_only=False; that is exactly what must not be done here.
        detail = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" ({detail.group(1)})" if detail else ""
        raise ValueError(f"cannot read checkpoint {path}: it is corrupt, or holds Python objects other "
                         f"than tensors and plain values{what}, which napari-prm refuses to run (it "
                         "loads checkpoints with weights_only=True); it was not written by "
                         "napari-prm") from error
    except OSError as error:
        # torch's zip reader raises OSError(EINVAL) for a file cut short: that is the content,
        # not the file system (a permission or I/O error keeps its own words)
        if error.errno != errno.EINVAL:
            raise ValueError(f"cannot read checkpoint {path}: {error.strerror or error}") from error
        raise ValueError(_unreadable(path)) from error
    except Exception as error:
        # The reader's own error (e.g. "pop from empty list") says nothing to a user; it stays chained.
        raise ValueError(_unreadable(path)) from error
    if not isinstance(metadata, dict) or metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a napari-prm checkpoint (no '{CHECKPOINT_FORMAT}' metadata)")
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"checkpoint {path}: format_version: expected a positive integer, "
                         f"got {version!r}")
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"{path} was written by a newer napari-prm (format {version}); "
                         "upgrade napari-prm")
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: state_dict: expected a dict of tensors, got "
                         f"{type(state).__name__}")
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint {path}: extra: expected a dict, got {type(extra).__name__}")
    if not tensors:  # no mapped tensor outlives the read (a mapped file cannot be replaced on Windows)
        return metadata, {}, {}
    return metadata, state, extra


def _checked_metadata(path: Path, metadata: dict) -> dict:
    """The checkpoint's metadata, every field checked; errors name the file and the field."""
    where = f"checkpoint {path}"
    missing = [key for key in ("backbone", "class_names", "mean", "std") if key not in metadata]
    if missing:
        raise ValueError(f"{where}: metadata lacks {missing}")
    if not isinstance(metadata["backbone"], str) or metadata["backbone"] not in BACKBONES:
        raise ValueError(f"{where}: backbone: expected one of {sorted(BACKBONES)}, "
                         f"got {metadata['backbone']!r}")
    class_names, input_size, mean, std = _checked_fields(
        where, metadata["class_names"], metadata.get("input_size"), metadata["mean"], metadata["std"])
    settings = _checked_settings(where, metadata.get("settings", {}), loading=True)
    return {"backbone": metadata["backbone"], "class_names": class_names, "input_size": input_size,
            "mean": mean, "std": std, "settings": settings}


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's metadata, checked as :func:`load_checkpoint` checks it, without reading its
    weights: quick for a large checkpoint (what a widget shows of a file it was given).

    A ``.safetensors`` file's header alone is read; a ``.pt``/``.pth`` file's pickle, with
    ``torch.load(weights_only=True, mmap=True)``, which maps its tensors from the zip archive
    but does not read them. A file in ``torch.save``'s legacy (non-zip) format is read whole.
    The weights are not checked (:func:`load_checkpoint` refuses NaN or infinite ones).

    Parameters
    ----------
    path : path-like
        The checkpoint file.

    Returns
    -------
    dict
        ``backbone`` (str), ``class_names`` (list of str), ``input_size`` ((h, w) or None: each
        image runs at its own size), ``mean`` and ``std`` (3 floats each) and ``settings``
        (dict), as the model :func:`load_checkpoint` returns has them.

    Raises
    ------
    ValueError
        As :func:`load_checkpoint`, naming the file: missing, truncated or foreign files, a
        pickle that is not plain tensors and values, metadata that is incomplete or wrong.
    """
    path = check.path_like("checkpoint", path)
    return _checked_metadata(path, _read_checkpoint(path, tensors=False)[0])


def model_input_size(name_or_path: str | os.PathLike) -> tuple[int, int] | None:
    """The input size of a built-in model or of a checkpoint, from its metadata
    (:func:`checkpoint_metadata`: its weights are not read, no network is built).

    Parameters
    ----------
    name_or_path : str or path-like
        A built-in model's name (:func:`is_builtin_name`) or a checkpoint file.

    Returns
    -------
    (h, w) or None
        None: the model resizes no image (each is run at its own size).

    Raises
    ------
    ValueError
        As :func:`load_checkpoint`, naming the file, for one that is no napari-prm checkpoint.
    """
    if is_builtin_name(name_or_path):
        return BUILTIN_INPUT_SIZE
    return checkpoint_metadata(name_or_path)["input_size"]


def model_channels(name_or_path: str | os.PathLike | None) -> list[int] | None:
    """The image channels a checkpoint records (``settings["channels"]``, from its metadata: its
    weights are not read), which ``train`` reads a fine-tuned or resumed model's images with
    unless others are given; None for a built-in name, a backbone's name, None, a checkpoint
    that records none, and one that cannot be read (loading it says why)."""
    if name_or_path is None or is_builtin_name(name_or_path):
        return None
    try:
        return checkpoint_metadata(name_or_path)["settings"].get("channels")
    except (ValueError, OSError):
        return None


def load_checkpoint(path: str | os.PathLike) -> tuple[PRMModel, dict]:
    """Load a checkpoint: the model and the ``extra`` dict saved with it.

    Parameters
    ----------
    path : path-like
        The checkpoint file.

    Raises
    ------
    ValueError
        Naming the file: missing, truncated or foreign files; a pickle that is not plain
        tensors and values (never run: ``torch.load(weights_only=True)``); metadata that is
        incomplete or wrong (``format_version`` not an integer, ``input_size`` not positive,
        ``mean``/``std`` not 3 finite numbers, a ``std`` of 0, duplicate class names, ...);
        NaN or infinite weights.
    """
    path = check.path_like("checkpoint", path)
    raw_metadata, state, extra = _read_checkpoint(path)
    metadata = _checked_metadata(path, raw_metadata)
    _check_finite_weights(f"checkpoint {path}", state)
    settings = metadata["settings"]
    head_state = {k[len(HEAD_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(HEAD_PREFIX)}
    try:
        fcn, _, _ = build_fcn(metadata["backbone"], len(metadata["class_names"]), pretrained=False)
        network = _network(fcn, settings)
        network.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(f"checkpoint {path} does not match its own metadata: {error}") from error
    model = PRMModel(
        network.eval(),
        metadata["class_names"],
        metadata["backbone"],
        metadata["input_size"],
        metadata["mean"],
        metadata["std"],
        settings,
    )
    if "refine" in raw_metadata:
        from ..refine.head import load_head

        model.head = load_head(raw_metadata["refine"], head_state, source=str(path))
    elif head_state:
        raise ValueError(f"checkpoint {path} holds refinement head weights but no 'refine' metadata")
    return model, extra


def load_model(name_or_path: str | os.PathLike | PRMModel, *, device: str | torch.device | None = "cpu") -> PRMModel:
    """Load a built-in model by name or a checkpoint file.

    Parameters
    ----------
    name_or_path : str or path or PRMModel
        A built-in model (``"imagenet"``, ``"imagenet-voc"``, ``"imagenet-coco"``; offline),
        or a ``.pt``/``.pth``/``.safetensors`` checkpoint written by :func:`save_model`. A
        built-in name means the built-in model even when a file of that name lies in the
        current folder: give such a file as a path (``"./imagenet-voc"``, a `pathlib.Path`;
        :func:`is_builtin_name`). A PRMModel is moved to ``device`` (in place, as
        ``PRMModel.to`` does) and returned.
    device : str, torch.device or None
        Where to put the network: the CPU by default; None: the best available (CUDA, then MPS,
        then the CPU).

    Returns
    -------
    PRMModel

    Raises
    ------
    ValueError
        The file is missing, truncated, corrupt or not a napari-prm checkpoint, or
        ``name_or_path`` is no PRMModel, str or path (an image array: the message shows its
        dtype and shape, not its values).
    """
    if isinstance(name_or_path, PRMModel):
        return name_or_path.to(device)
    if not isinstance(name_or_path, (str, os.PathLike)) or str(name_or_path) == "":
        # predict(model, image) printed the image's values as the "file path" expected
        raise ValueError(f"model: expected a PRMModel, a built-in model name ({', '.join(BUILTIN_MODELS)}) or a "
                         f"checkpoint path, got {value_text(name_or_path)}")
    if is_builtin_name(name_or_path):
        model = builtin_model(name_or_path)
    elif not Path(name_or_path).exists() and Path(name_or_path).suffix.lower() not in CHECKPOINT_SUFFIXES:
        close = close_match(str(name_or_path), BUILTIN_MODELS)
        as_str = " (a str, not a path)" if close == str(name_or_path) else ""
        hint = f"; did you mean {close!r}{as_str}?" if close else ""
        raise ValueError(f"{str(name_or_path)!r} is neither a built-in model {BUILTIN_MODELS} nor an existing "
                         f"checkpoint file (.pt, .pth or .safetensors){hint}")
    else:
        model, _ = load_checkpoint(name_or_path)
    return model.to(device)
