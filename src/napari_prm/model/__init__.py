"""The network side of PRM: backbones, peak stimulation, peak backpropagation, checkpoints."""

from .backbones import BACKBONES, FullyConvolutionalClassifier, build_fcn
from .checkpoint import (
    PRMModel,
    build_model,
    checkpoint_metadata,
    is_builtin_name,
    load_checkpoint,
    load_model,
    resolve_device,
    save_model,
)
from .cpu_memory import reuse_freed_memory
from .peak_backprop import excitation_backprop, patch_convolutions
from .peak_stimulation import find_peaks, peak_stimulation
from .prm import PeakResponseMapping, PeakResponseResult

__all__ = [
    "BACKBONES",
    "FullyConvolutionalClassifier",
    "PRMModel",
    "PeakResponseMapping",
    "PeakResponseResult",
    "build_fcn",
    "build_model",
    "checkpoint_metadata",
    "excitation_backprop",
    "find_peaks",
    "is_builtin_name",
    "load_checkpoint",
    "load_model",
    "patch_convolutions",
    "peak_stimulation",
    "resolve_device",
    "reuse_freed_memory",
    "save_model",
]
