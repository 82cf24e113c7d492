"""napari-prm: weakly supervised instance segmentation with Peak Response Maps (Zhou et al., CVPR 2018)."""

__version__ = "0.1.0"

from .model import PeakResponseMapping, PRMModel, build_model, load_model, save_model
from .predict import Prediction, predict
from .predictor import PredictSettings, PRMPredictor, preset_settings
from .retrieval import Instance, retrieve_instances

__all__ = [
    "Instance",
    "PRMModel",
    "PRMPredictor",
    "PredictSettings",
    "PeakResponseMapping",
    "Prediction",
    "__version__",
    "build_model",
    "load_model",
    "predict",
    "preset_settings",
    "retrieve_instances",
    "save_model",
]
