"""Shared fixtures. Widget tests use napari's ``make_napari_viewer`` (run them under Xvfb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved 'tiny' model (random weights, seed 0, 96x96 input): fast on the CPU."""
    import torch

    from napari_prm import build_model, save_model

    torch.manual_seed(0)
    model = build_model("tiny", TINY_CLASSES, pretrained=False, input_size=(96, 96))
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny.pt")


@pytest.fixture
def prm_config(tmp_path, monkeypatch) -> Path:
    """A private napari-prm config folder (the recent-models list lives there)."""
    folder = tmp_path / "napari-prm-config"
    monkeypatch.setenv("NAPARI_PRM_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def small_cat() -> np.ndarray:
    """scikit-image's Chelsea the cat at a third of its size: (100, 151, 3) uint8."""
    from skimage import data

    return np.ascontiguousarray(data.chelsea()[::3, ::3])
