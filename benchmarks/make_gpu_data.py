"""Build the small coco128 copy that ``benchmarks/gpu_check.sh`` runs on.

The device machine has no ``/work/shared``; this copies the first ``--train``
train images and the first ``--val`` val images of coco128 (in image-id order)
with trimmed COCO "instances" JSONs (those images' annotations, every category, so
any model trained on it can be evaluated on it) into ``--out``, laid out like
coco128 itself::

    <out>/annotations/instances_train2017.json
    <out>/annotations/instances_val2017.json
    <out>/train2017/*.jpg
    <out>/val2017/*.jpg

and prints its size. The default output, ``.gpu_data/coco128_small``, is ignored by
git; carry it to the device machine (``carry: [".gpu_data"]``).

    python benchmarks/make_gpu_data.py [--source /work/shared/data/coco128] [--out .gpu_data/coco128_small]

The source defaults to ``<repo>/../shared/data/coco128`` or
``$NAPARI_PRM_SHARED/data/coco128``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_source() -> Path:
    shared = os.environ.get("NAPARI_PRM_SHARED")
    return (Path(shared) if shared else REPO.parent / "shared") / "data" / "coco128"


def trim_split(source: Path, out: Path, split: str, count: int) -> tuple[int, int]:
    """Copy the first ``count`` images of ``split`` and their annotations; (images, annotations)."""
    data = json.loads((source / "annotations" / f"instances_{split}.json").read_text())
    images = sorted(data["images"], key=lambda image: image["id"])[:count]
    kept = {image["id"] for image in images}
    trimmed = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    trimmed["images"] = images
    trimmed["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in kept]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(trimmed))
    (out / split).mkdir(parents=True, exist_ok=True)
    for image in images:
        shutil.copy2(source / split / image["file_name"], out / split / image["file_name"])
    return len(images), len(trimmed["annotations"])


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def make_gpu_data(source: Path, out: Path, *, train: int = 32, val: int = 5) -> dict:
    """Write the trimmed copy; returns counts and the size in bytes."""
    if not (source / "annotations").is_dir():
        raise FileNotFoundError(f"no coco128 at {source} (expected {source / 'annotations'})")
    if out.exists():
        shutil.rmtree(out)
    figures = {}
    for split, count in (("train2017", train), ("val2017", val)):
        figures[split] = trim_split(source, out, split, count)
    figures["bytes"] = folder_size(out)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=default_source(), help="the coco128 folder")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu_data" / "coco128_small")
    parser.add_argument("--train", type=int, default=32, help="train images")
    parser.add_argument("--val", type=int, default=5, help="val images")
    args = parser.parse_args()
    figures = make_gpu_data(args.source, args.out, train=args.train, val=args.val)
    for split in ("train2017", "val2017"):
        images, annotations = figures[split]
        print(f"{split}: {images} images, {annotations} annotations")
    print(f"{args.out}: {figures['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
