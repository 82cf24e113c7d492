"""The GPU check script and the data folder it runs on (benchmarks/gpu_check.sh, make_gpu_data.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_folder() -> Path:
    """``../shared`` beside the repository, or ``$NAPARI_PRM_SHARED`` (worktrees have no ``../shared``)."""
    shared = os.environ.get("NAPARI_PRM_SHARED")
    return Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"


COCO128 = shared_folder() / "data" / "coco128"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_gpu_check_script_parses_and_asks_for_its_data_folder(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                         env={**os.environ, "OUT": str(tmp_path)})
    assert run.returncode == 2
    assert "usage" in run.stderr and "DATA_DIR" in run.stderr


def _make_gpu_data():
    spec = importlib.util.spec_from_file_location("make_gpu_data", REPO / "benchmarks" / "make_gpu_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (COCO128 / "annotations").is_dir(),
                    reason=f"coco128 not found at {COCO128} (set NAPARI_PRM_SHARED to the shared folder)")
def test_make_gpu_data_writes_a_loadable_trimmed_coco(tmp_path):
    from pycocotools.coco import COCO

    from napari_prm.data import load_dataset

    out = tmp_path / "coco128_small"
    figures = _make_gpu_data().make_gpu_data(COCO128, out, train=4, val=2)
    assert figures["train2017"][0] == 4 and figures["val2017"][0] == 2
    assert 0 < figures["bytes"] < 20 * 2**20
    original = json.loads((COCO128 / "annotations" / "instances_val2017.json").read_text())
    for split, count in (("train2017", 4), ("val2017", 2)):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == count
        assert len(coco.cats) == len(original["categories"])  # every category kept
        assert {ann["image_id"] for ann in coco.anns.values()} <= set(coco.imgs)
        assert all((out / split / image["file_name"]).is_file() for image in coco.imgs.values())
        dataset = load_dataset(out / "annotations" / f"instances_{split}.json")
        assert len(dataset) == count
    kept = [image["id"] for image in json.loads((out / "annotations" / "instances_val2017.json").read_text())["images"]]
    assert kept == sorted(image["id"] for image in original["images"])[:2]
    expected = sum(1 for ann in original["annotations"] if ann["image_id"] in set(kept))
    assert figures["val2017"][1] == expected
