"""Model choices shared by the widgets: built-in names, remembered checkpoint files, a cache.

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
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None
    return True


BUILTIN_CHOICES = {"imagenet (built-in EfficientNet-Lite0)": "imagenet"}
MAX_RECENT = 8
_live_predict_widgets: weakref.WeakSet = weakref.WeakSet()


def config_dir() -> Path:
    configured = os.environ.get("NAPARI_PRM_CONFIG_DIR")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-prm"))


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

    def get(self, name_or_path: str, device: str):
        from ..model import load_model

        keep_triton_out_after_mesa_llvm()
        stamp = Path(name_or_path).stat().st_mtime_ns if Path(name_or_path).is_file() else 0
        key = (name_or_path, stamp, device)
        with self._lock:
            if key not in self._models:
                self._models = {k: v for k, v in self._models.items() if k[0] != name_or_path}
                self._models[key] = load_model(name_or_path, device=device)
            return self._models[key]


def offer_model(viewer, path: str | os.PathLike) -> None:
    """Remember a new checkpoint and select it in the viewer's predict widgets."""
    remember_model(path)
    for widget in list(_live_predict_widgets):
        if widget.viewer is unwrap_viewer(viewer):
            widget.select_model(str(Path(path).resolve()))


def unwrap_viewer(viewer):
    """The viewer behind the proxy napari hands to plugin widgets.

    Each widget gets its own proxy, and layers reached through one are proxies too, so
    identity (``is``, ``id``) between widgets and layers only holds on the real objects.
    """
    return getattr(viewer, "__wrapped__", viewer)
