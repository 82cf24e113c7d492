"""napari reader for napari-prm's exports: COCO JSON, and label images with an instance CSV.

A ``.tif``/``.tiff``/``.png`` is claimed only when its instance CSV lies beside it
(``x_labels.tif`` + ``x_instances.csv``) or, for a TIFF, when napari-prm exported it from a
layer (its description records the layer's scale and translate: a stack's export has no
CSV), so other images still open with napari's own reader. The formats are
:mod:`napari_prm.io`'s. Before reading, an interrupted switch of the image's outputs is
finished (`napari_prm.io.settle_outputs`), so the label image and its table always come
from the same run.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import io
from ._writer import sidecar_csv


def _looks_like_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lstrip().startswith("{") and any(
        key in head for key in ('"images"', '"annotations"', '"categories"'))


def napari_get_reader(path):
    """Return a reader for ``path`` when it is a napari-prm export, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json" and path.is_file() and _looks_like_coco(path):
        return read_coco
    if suffix in (".tif", ".tiff", ".png") and path.is_file() and (
            sidecar_csv(path).is_file() or io.read_label_world(path)):
        return read_labels_with_table  # with its table, or a label TIFF napari-prm exported (a stack)
    return None


def _features(table) -> dict:
    features = {name: values for name, values in table.items() if name != "bbox"}
    features["index"] = table["label"]
    return features


def read_coco(path) -> list[tuple]:
    """One Labels layer per image of a COCO JSON, with its instance table as features."""
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    io.settle_outputs(path)
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read COCO JSON {path}: {error}") from error
    layers = []
    for image in images:
        labels, table, class_names = io.coco_to_labels(path, image_id=image["id"])
        name = Path(image.get("file_name") or path.stem).stem if len(images) > 1 else path.stem
        layers.append((labels, {"name": name, "features": _features(table),
                                "metadata": {"class_names": class_names, "source": str(path)}},
                       "labels"))
    return layers


def read_labels_with_table(path) -> list[tuple]:
    """A label image and the instance CSV beside it (when there is one: a stack's export has
    none), as a Labels layer with features."""
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    io.settle_outputs(path)
    labels = io.read_label_image(path)
    csv = sidecar_csv(path)
    features = {"features": _features(io.read_instances_csv(csv))} if csv.is_file() else {}
    # the scale and translate of the layer it was exported from (napari-prm's exports record them)
    world = io.read_label_world(path)
    return [(labels, {"name": path.stem, **features, "metadata": {"source": str(path)}, **world},
             "labels")]
