"""Why the widgets keep triton out once napari's canvas has loaded Mesa's LLVM.

Importing torchvision imports triton; with Mesa's LLVM already in the process (napari's
OpenGL canvas on llvmpipe, as under Xvfb) loading triton's LLVM segfaults. Each case runs in
a fresh interpreter: in this one torchvision was imported before any canvas existed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import napari_prm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Mesa's LLVM clash is a Linux matter"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
]

SCRIPT = """
import sys
import napari

viewer = napari.Viewer(show=False)  # the canvas loads the OpenGL driver
if "libLLVM" not in open("/proc/self/maps").read():
    print("NO-MESA-LLVM")
    sys.exit(0)
if sys.argv[1] == "guard":
    from napari_prm._widgets.models import keep_triton_out_after_mesa_llvm

    assert keep_triton_out_after_mesa_llvm()
import torch
import torchvision.models

with torch.no_grad():
    print(torchvision.models.resnet18().eval()(torch.zeros(1, 3, 64, 64)).shape)
viewer.close()
print("IMPORTED")
"""


def run(mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(napari_prm.__file__).parents[1])] + [p for p in [env.get("PYTHONPATH")] if p])
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True,
                            text=True, timeout=300)
    if "NO-MESA-LLVM" in result.stdout:
        pytest.skip("this OpenGL driver does not load Mesa's LLVM: nothing to guard against")
    return result


def test_with_the_guard_torchvision_imports_after_the_canvas():
    result = run("guard")
    assert result.returncode == 0 and "IMPORTED" in result.stdout, result.stderr[-2000:]


def test_without_the_guard_the_import_crashes():
    result = run("none")
    assert result.returncode != 0 and "IMPORTED" not in result.stdout, (
        "torchvision imported after Mesa's LLVM without the guard: the crash it prevents is "
        "gone with these versions, and keep_triton_out_after_mesa_llvm may be removable")
    assert result.returncode == -11  # SIGSEGV
