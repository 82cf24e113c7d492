"""Shared fixtures. Widget tests use napari's ``make_napari_viewer`` (run them under Xvfb).

Tests that need the workspace's shared data (coco128, the original PRM demo images and
proposals) take the ``shared_data`` fixture: in a clone without ``../shared`` they skip,
saying which folder is missing. CI sets ``NAPARI_PRM_REQUIRE_SHARED_DATA=1`` so that there
a missing folder fails those tests instead of skipping them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torchvision.models  # noqa: F401  (see below)

# torchvision is imported here, before any test makes a napari canvas: its first import
# loads triton, and loading triton's LLVM once the canvas has loaded Mesa's (llvmpipe under
# Xvfb) segfaults the process. A CLI or library call, which is not a widget and so does not
# guard itself (napari_prm._widgets.models.keep_triton_out_after_mesa_llvm), made the first
# import of torchvision in a test run after a widget test: the whole run crashed, or not,
# depending on which test files were chosen. tests/test_triton_guard.py checks the widgets'
# guard in fresh interpreters.

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


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A folder per class ('cat': chelsea, 'cup': coffee), two 48x48 images each (one mirrored)."""
    from skimage import data, transform
    from skimage import io as skio

    root = tmp_path / "dataset"
    sources = {"cat": [data.chelsea(), data.chelsea()[:, ::-1]],
               "cup": [data.coffee(), data.coffee()[:, ::-1]]}
    for name, images in sources.items():
        (root / name).mkdir(parents=True)
        for number, image in enumerate(images):
            small = (transform.resize(image, (48, 48), anti_aliasing=True) * 255).astype(np.uint8)
            skio.imsave(root / name / f"{number}.png", small, check_contrast=False)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved 'tiny' model (random weights, seed 0, 96x96 input): fast on the CPU."""
    import torch

    from napari_prm import build_model, save_model

    torch.manual_seed(0)
    model = build_model("tiny", TINY_CLASSES, pretrained=False, input_size=(96, 96))
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny.pt")


@pytest.fixture(autouse=True)
def prm_config(tmp_path, monkeypatch) -> Path:
    """A private napari-prm config folder for each test (the recent-models list and the widgets'
    saved choices live there): no test reads another's choices or writes the user's."""
    folder = tmp_path / "napari-prm-config"
    monkeypatch.setenv("NAPARI_PRM_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def small_cat() -> np.ndarray:
    """scikit-image's Chelsea the cat at a third of its size: (100, 151, 3) uint8."""
    from skimage import data

    return np.ascontiguousarray(data.chelsea()[::3, ::3])


def shapes_scene(seed: int, size: int = 96):
    """A synthetic image whose instances are known: a red disc ("cat") and a blue square ("dog") on noise.

    Returns the (size, size, 3) uint8 image, its (size, size) label image (1 the disc, 2 the
    square), the class index of each label for the classes ["cat", "dog"], and the centre
    (y, x) of each label.
    """
    rng = np.random.default_rng(seed)
    image = (rng.random((size, size, 3)) * 60 + 100).astype(np.uint8)
    labels = np.zeros((size, size), np.int32)
    rows, columns = np.mgrid[:size, :size]
    cy, cx = (int(v) for v in rng.integers(size // 5, size * 2 // 5, 2))
    disc = (rows - cy) ** 2 + (columns - cx) ** 2 < (size // 7) ** 2
    image[disc] = (220, 30, 30)
    labels[disc] = 1
    y0, x0 = (int(v) for v in rng.integers(size // 2, size * 3 // 4, 2))
    side = size // 4
    square = (rows >= y0) & (rows < y0 + side) & (columns >= x0) & (columns < x0 + side)
    image[square] = (30, 30, 220)
    labels[square] = 2
    return image, labels, {1: 0, 2: 1}, np.array([[cy, cx], [y0 + side // 2, x0 + side // 2]], float)


def two_box_scene(second: tuple[slice, slice]):
    """A tiny random network for `TINY_CLASSES` at 64 px (seed 0) and a (120, 160, 3) uint8 image
    of a red box (rows 20-70, columns 30-90) and a green one at ``second`` on black."""
    import torch

    from napari_prm import build_model

    torch.manual_seed(0)
    model = build_model("tiny", TINY_CLASSES, pretrained=False, input_size=(64, 64))
    image = np.zeros((120, 160, 3), np.uint8)
    image[20:70, 30:90] = (230, 40, 40)
    image[second] = (40, 200, 40)
    return model, image


@pytest.fixture(scope="session")
def shapes_scenes():
    """Three scenes of `shapes_scene` (seeds 0, 1, 2)."""
    return [shapes_scene(seed) for seed in range(3)]


def interrupt_after_first_checkpoint(command: list[str], out: Path, env: dict,
                                     signum: int = signal.SIGINT) -> tuple[int, str]:
    """Run a training ``command`` in a child process, press Ctrl-C (SIGINT; or send ``signum``)
    about a second after it first writes ``out``, and return its exit status and stderr."""
    # A shell starts background jobs with SIGINT ignored (nohup, SIGHUP), and the child would inherit
    # that: give it the default dispositions, so Python turns Ctrl-C into KeyboardInterrupt.
    def default_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_signals if os.name == "posix" else None)
    try:
        deadline = time.monotonic() + 180
        while not out.is_file() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert out.is_file(), process.stderr.read() if process.poll() is not None else "no checkpoint in 180 s"
        time.sleep(1.0)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, err
