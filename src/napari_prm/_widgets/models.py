"""Model choices shared by the widgets: built-in names, remembered checkpoint files, and
caches of loaded models and of images already run (`PredictorCache`).

Recent checkpoint files are kept in ``recent_models.json`` in napari-prm's user config
folder (``$NAPARI_PRM_CONFIG_DIR`` when set, else the platform's config folder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch


def keep_triton_out_after_mesa_llvm() -> bool:
    """Make ``import triton`` fail cleanly when Mesa's LLVM is already in the process.

    Returns whether it did. Called by the widgets before anything that may import
    torchvision (``import_torch_side``, ``ModelCache.get``).

    Notes
    -----
    Why: loading triton's LLVM after Mesa's (llvmpipe under Xvfb or in VMs, radeonsi:
    napari's OpenGL canvas loads it) crashes the process with a segfault, and torchvision
    imports triton (through ``torch._dynamo``) when it is first imported. Still so with
    napari 0.9, torch 2.14, triton 3.8 and Mesa llvmpipe: ``tests/test_triton_guard.py``
    shows the crash without this guard and the clean import with it. Inference and training
    on the CPU do not need triton, and torch reads an ImportError as "no triton".

    Why for the rest of the process: once Mesa's LLVM is loaded, any later import of
    triton (torch.compile, a CUDA kernel) would crash the same way. It changes nothing when
    triton is not installed or already imported, off Linux, or when no LLVM is loaded
    (NVIDIA's or another GL without LLVM: triton stays usable there).
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")  # paths of any bytes
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None
    return True


#: The built-in label spaces of the ImageNet EfficientNet-Lite0 (label -> ``load_model`` name);
#: the first is the widget's default.
BUILTIN_CHOICES = {
    "imagenet-voc: 19 VOC classes (built-in)": "imagenet-voc",
    "imagenet-coco: 60 COCO classes (built-in)": "imagenet-coco",
    "imagenet: 1000 ImageNet classes (built-in)": "imagenet",
}
MAX_RECENT = 8
_live_predict_widgets: weakref.WeakSet = weakref.WeakSet()


def config_dir() -> Path:
    """napari-prm's settings folder: ``$NAPARI_PRM_CONFIG_DIR``, else the platform's
    (``~/.config/napari-prm``, ``~/Library/Application Support/napari-prm``,
    ``%LOCALAPPDATA%\\napari-prm``: no author folder above it on Windows). Where an earlier
    version's folder with the author folder (``%LOCALAPPDATA%\\napari-prm\\napari-prm``)
    exists, that one: its settings, recent models and refined model stay found."""
    configured = os.environ.get("NAPARI_PRM_CONFIG_DIR")
    if configured:
        return Path(configured)
    import platformdirs

    folder = Path(platformdirs.user_config_dir("napari-prm", appauthor=False))
    earlier = Path(platformdirs.user_config_dir("napari-prm"))  # the same but on Windows
    return earlier if earlier != folder and earlier.is_dir() else folder


def import_torch_side() -> None:
    """Import torchvision and the model code on the calling (Qt) thread.

    Importing torch's lazily loaded modules from two threads at once can leave one of them
    half-initialised (seen as ``AttributeError`` in ``torch.distributed``); widgets call
    this when they open, so that their workers import nothing new.
    """
    keep_triton_out_after_mesa_llvm()
    import torchvision.models  # noqa: F401

    from .. import data, model, predict, proposals, retrieval, train  # noqa: F401


def recent_models() -> list[str]:
    """Checkpoint files used before, most recent first (files that vanished are skipped)."""
    try:
        paths = json.loads((config_dir() / "recent_models.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(p) for p in paths if isinstance(p, str) and Path(p).is_file()][:MAX_RECENT]


def remember_model(path: str | os.PathLike) -> None:
    """Put a checkpoint file first in the recent list."""
    from ..io import atomic_write

    path = str(Path(path).resolve())
    paths = [path] + [p for p in recent_models() if p != path]
    folder = config_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / "recent_models.json") as temp:
            temp.write_text(json.dumps(paths[:MAX_RECENT], indent=1), encoding="utf-8")
    except OSError:
        pass  # an unwritable config folder must not stop a prediction


def forget_model(path: str | os.PathLike) -> None:
    """Take a checkpoint file off the recent list (one that cannot be loaded)."""
    from ..io import atomic_write

    path = str(Path(path).resolve())
    paths = recent_models()
    if path not in paths:
        return
    try:
        with atomic_write(config_dir() / "recent_models.json") as temp:
            temp.write_text(json.dumps([p for p in paths if p != path], indent=1), encoding="utf-8")
    except OSError:
        pass


def model_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for a model ComboBox: built-in models, then recent files."""
    choices = list(BUILTIN_CHOICES.items())
    choices += [(Path(p).name + f"  ({Path(p).parent})", p) for p in recent_models()]
    return choices


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.insert(0, "cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.insert(0, "mps")
    return found


class ModelCache:
    """Loaded models by (name or path, file time, device); safe to use from worker threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict = {}

    @staticmethod
    def key(name_or_path: str, device: str) -> tuple:
        """What identifies a loaded model: a checkpoint's file time changes it."""
        from ..model.checkpoint import is_builtin_name

        try:
            stamp = 0 if is_builtin_name(name_or_path) or not Path(name_or_path).is_file() else \
                Path(name_or_path).stat().st_mtime_ns
        except (OSError, ValueError):
            stamp = 0
        return (name_or_path, stamp, device)

    def get(self, name_or_path: str, device: str):
        from ..model import load_model

        keep_triton_out_after_mesa_llvm()
        key = self.key(name_or_path, device)
        with self._lock:
            if key not in self._models:
                self._models = {k: v for k, v in self._models.items() if k[0] != name_or_path}
                self._models[key] = load_model(name_or_path, device=device)
            return self._models[key]

    def put(self, name_or_path: str, device: str, model) -> tuple:
        """Use ``model`` (already loaded) for ``name_or_path`` on ``device``; returns its key."""
        key = self.key(name_or_path, device)
        with self._lock:
            self._models = {k: v for k, v in self._models.items() if k[0] != name_or_path}
            self._models[key] = model
        return key


@dataclass(frozen=True)
class PredictorKey:
    """What a set image's forward pass depends on.

    ``layer`` is the image layer's ``(id, generation, level)``: the generation changes when the
    layer's data does; the level is the pyramid level a run reads (`layers.run_level`: 0 but for
    a 2-D multiscale image), which `layers.MAX_RUN_SIDE` decides. ``forward`` is
    ``(sub_pixel_locating_factor, tta, prm_mode)``.
    """

    layer: tuple[int, int, int]
    plane: tuple[int, ...]
    model: tuple
    window: int
    forward: tuple


class PredictorCache:
    """The `napari_prm.PRMPredictor` of each image plane run last: each is computed once.

    A least-recently-used cache of ``size`` predictors; each keeps an image's autograd
    graph, proposals and PRMs (about 400 MiB for the built-in model on a 512×512 image).
    A run on an image already set only re-selects peaks and re-retrieves instances;
    adding a point costs one backward pass. Safe to use from worker threads.

    Parameters
    ----------
    size : int
        Most predictors kept.
    """

    def __init__(self, size: int = 3):
        self.size = int(size)
        self._lock = threading.Lock()
        self._predictors: OrderedDict[PredictorKey, object] = OrderedDict()
        self._generations: dict[int, int] = {}

    def key(self, layer, plane: tuple, model_key: tuple, window: int, settings) -> PredictorKey:
        """The key of ``plane`` of image ``layer`` run with a model and ``settings`` (a
        `napari_prm.PredictSettings`: only the fields that change the forward pass count)."""
        with self._lock:
            generation = self._generations.get(id(layer), 0)
        from .layers import run_level

        size = None if settings.input_size is None else tuple(int(side) for side in settings.input_size)
        forward = (int(settings.sub_pixel_locating_factor), bool(settings.tta), str(settings.prm_mode), size)
        return PredictorKey((id(layer), generation, run_level(layer)), tuple(int(i) for i in plane), tuple(model_key),
                            int(window), forward)

    def get(self, key: PredictorKey):
        """The predictor of ``key`` (now the most recent), or None."""
        with self._lock:
            predictor = self._predictors.get(key)
            if predictor is not None:
                self._predictors.move_to_end(key)
            return predictor

    def ready(self, key: PredictorKey) -> bool:
        """Whether ``key`` has a predictor with its image set (re-thresholding needs no forward pass)."""
        with self._lock:
            predictor = self._predictors.get(key)
            return predictor is not None and predictor.is_image_set

    def outdated(self, key: PredictorKey) -> bool:
        """Whether the data of ``key``'s image layer changed (or the layer was removed) since
        ``key`` was made: a forward pass made now would be of other pixels than its run's."""
        with self._lock:
            return self._generations.get(key.layer[0], 0) != key.layer[1]

    def put(self, key: PredictorKey, predictor) -> None:
        """Keep ``predictor`` under ``key``, dropping the least recently used beyond ``size``."""
        with self._lock:
            self._put(key, predictor)

    def _put(self, key: PredictorKey, predictor) -> None:
        self._predictors[key] = predictor
        self._predictors.move_to_end(key)
        while len(self._predictors) > self.size:
            self._predictors.popitem(last=False)

    def checkout(self, key: PredictorKey, model, *, preset: str, proposals):
        """The predictor of ``key`` (a new one, without an image, if none), set to ``preset``
        and ``proposals``; thresholds are passed to its ``predict`` call by call."""
        from ..predictor import PRMPredictor, preset_settings

        factor, tta, prm_mode, input_size = key.forward
        settings = preset_settings(preset, sub_pixel_locating_factor=factor, tta=tta, prm_mode=prm_mode,
                                   input_size=input_size)
        with self._lock:
            predictor = self._predictors.get(key)
            if predictor is None:
                predictor = PRMPredictor(model, proposals=proposals)
            self._put(key, predictor)
        # The key holds the fields that change the forward pass, so the image stays valid.
        if predictor.settings != settings:
            predictor.settings = settings
        predictor.set_proposals(proposals)
        return predictor

    def forget_layer(self, layer) -> None:
        """Drop the predictors of ``layer`` (its data changed, or it was removed)."""
        with self._lock:
            self._generations[id(layer)] = self._generations.get(id(layer), 0) + 1
            for key in [k for k in self._predictors if k.layer[0] == id(layer)]:
                del self._predictors[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._predictors)


def offer_model(viewer, path: str | os.PathLike, *, refined_from: str | None = None) -> None:
    """Remember a new checkpoint and select it in the viewer's predict widgets.

    ``refined_from``: the model choice the checkpoint was refined from (*Learn from corrections*,
    which trains the head alone): a predict widget that has it chosen keeps the thresholds the
    user edited there, which mean the same for the refined model.
    """
    remember_model(path)
    for widget in list(_live_predict_widgets):
        if widget.viewer is unwrap_viewer(viewer):
            widget.select_model(str(Path(path).resolve()),
                                keep_thresholds=refined_from is not None and widget.model.value == refined_from)


def keep_existing_output(widget, options: dict, replaceable: str | os.PathLike | None = None) -> str:
    """Keep a checkpoint that a widget's run would replace: save to the next free name instead.

    ``options["out"]`` that exists as a file is kept, unless ``options["overwrite"]`` or
    it is ``replaceable`` (the model a *Learn* refines: the loop learn → run → correct →
    learn goes on in one file); the run then saves to `napari_prm._validate.unused_path`
    (``model-2.pt``), shown in the widget's ``_out`` field and in a notification. A
    folder is left for the training function to refuse. Returns what was said, or "".
    """
    from napari.utils.notifications import show_info

    from .._validate import same_file, unused_path

    out = Path(options["out"])
    if options["overwrite"] or not out.is_file():
        return ""
    if replaceable is not None and Path(replaceable).is_file() and same_file(out, replaceable):
        options["overwrite"] = True
        return ""
    options["out"] = unused_path(out)
    widget._out.value = str(options["out"])
    message = f"{out.name} exists and is kept: saving to {options['out'].name}."
    widget.last_message = message
    show_info(message)
    return message


def unwrap_viewer(viewer):
    """The viewer behind the proxy napari hands to plugin widgets.

    Each widget gets its own proxy, and layers reached through one are proxies too, so
    identity (``is``, ``id``) between widgets and layers only holds on the real objects.
    """
    return getattr(viewer, "__wrapped__", viewer)
