"""Shared fixtures. Widget tests use napari's ``make_napari_viewer`` (run them under Xvfb).

Tests that need the workspace's shared data (coco128, the original PRM demo images and
proposals) take the ``shared_data`` fixture: in a clone without ``../shared`` they skip,
saying which folder is missing. CI sets ``NAPARI_PRM_REQUIRE_SHARED_DATA=1`` so that there
a missing folder fails those tests instead of skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder ``../shared/data`` beside the repository (skips without it)."""
    if not SHARED_DATA.is_dir():
        message = (f"needs the shared data folder {SHARED_DATA}, which does not exist "
                   "(a clone without ../shared)")
        if os.environ.get("NAPARI_PRM_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + "; NAPARI_PRM_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(message)
    return SHARED_DATA


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
