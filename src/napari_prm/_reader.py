"""napari reader for napari-prm's exports: COCO JSON, and label images with an instance CSV.

A ``.tif``/``.tiff``/``.png`` is claimed only when it is a ``<stem>_labels`` file with its
instance CSV beside it (``x_labels.tif`` + ``x_instances.csv``; not the image ``x.png`` beside its
outputs; a stack's CSV has a row per plane and label, which
the layer's features fold into one row per label) or when napari-prm exported it from a layer
(a TIFF's description or a PNG's text chunks record the layer's scale, translate and units and
the class names, which the layer gets back; such an export may have no CSV), so other images
still open with napari's own reader, except a channels-first TIFF, ``(3, H, W)`` or ``(4, H, W)``,
that `napari_prm.io.read_image` (and so the command line) reads as one RGB(A) image: it is opened
so too (`read_channels_first_image`), not as the 3 or 4 planes napari's reader shows. The formats are
:mod:`napari_prm.io`'s. Before reading, an interrupted switch of the image's outputs is
finished (`napari_prm.io.settle_outputs`), so the label image and its table always come
from the same run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import tifffile

from . import io
from ._writer import sidecar_csv
from .io.images import _channels_first_image, _channels_first_note_of
from .io.labels import (
    _class_names_of,
    _exported_by_napari_prm,
    _read_label_file,
    _read_metadata,
    _recorded_world,
    _tiff_metadata,
)


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
    if suffix in (".tif", ".tiff", ".png") and path.is_file():
        if _paired_with_its_csv(path):
            return read_labels_with_table  # with its table
        return _reader_by_header(path)
    return None


def _reader_by_header(path: Path):
    """`read_labels_with_table` for a label image napari-prm exported, `read_channels_first_image`
    for a TIFF that `napari_prm.io.read_image` reads as one RGB(A) image from its first axis, else
    None: from one reading of the file's header (napari asks for every TIFF it opens)."""
    if path.suffix.lower() == ".png":
        return read_labels_with_table if _exported_by_napari_prm(*_read_metadata(path)) else None
    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 -- not ours to open: napari's reader says what is wrong
        return None
    with tif:
        if _exported_by_napari_prm(*_tiff_metadata(tif)):
            return read_labels_with_table  # a label image napari-prm exported, without its table
        if _channels_first_note_of(path, tif) is not None:
            return read_channels_first_image  # (3, H, W): one RGB image, as the command line reads it
    return None


def read_channels_first_image(path) -> list[tuple]:
    """A channels-first TIFF, ``(3, H, W)`` or ``(4, H, W)``, as one RGB(A) Image layer: as
    `napari_prm.io.read_image` (and so ``napari-prm predict``) reads it, which
    `napari_prm.io.channels_first_note` decides; napari's own reader opens it as 3 or 4 planes.

    When the file does not mark its first axis as colours (unnamed pages, ImageJ or OME
    channels), the note saying how it was read is given as a warning (napari shows it) and kept in the layer's metadata
    (``"read_as"``). The file is opened once, for its header and its data.

    A planar RGBA TIFF gives an ``(H, W, 4)`` layer (napari shows it as RGBA); an unmarked 4th sample
    or CMYK, ``(H, W, 3)``. A 4th sample marked as alpha that is nowhere half opaque is known from the
    pixels only: the ``ValueError`` of `napari_prm.io.read_image` is raised, naming the file."""
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    image, note = _channels_first_image(path)  # the file opened once, for its header and its data
    metadata = {"source": str(path)}
    if note:  # napari shows a reader's warning as a notification
        metadata["read_as"] = note
        warnings.warn(f"napari-prm {note}.", UserWarning, stacklevel=2)
    return [(image, {"name": io.image_stem(path.name), "rgb": True, "metadata": metadata}, "image")]


def _paired_with_its_csv(path: Path) -> bool:
    """Whether ``path`` is an exported label image, ``<stem>_labels.*``, with its
    ``<stem>_instances.csv`` beside it. An image beside its own outputs (``chelsea.png`` beside
    ``chelsea_instances.csv``, as the demo and ``predict --out`` into the image folder leave
    them) is not labels; a label image saved under another name records napari-prm's metadata."""
    stem = path.name[: -len(path.suffix)]
    return stem.endswith("_labels") and sidecar_csv(path).is_file()


def _features(table) -> dict:
    features = {name: values for name, values in table.items() if name != "bbox"}
    features["index"] = table["label"]
    return features


def _per_label(table: dict, ndim: int, source) -> dict:
    """A stack's instance table (one row per plane and label) as one row per label.

    The class, score and peak are the label's (the same in every plane), the area is summed over
    the planes; ``plane`` and ``bbox`` (per plane) are dropped. A 2-D table is returned as is.
    """
    if "plane" not in table:
        return table
    if table["plane"].shape[1] != ndim - 2:
        raise ValueError(f"{source}: its rows name planes of {table['plane'].shape[1]} leading "
                         f"axes, but the label image has {ndim - 2}")
    labels, first, inverse = np.unique(table["label"], return_index=True, return_inverse=True)
    columns = ("class_index", "class_name", "score", "peak")
    folded = {name: table[name][first] for name in ("label", *columns)}
    for name in columns:
        agree = table[name] == folded[name][inverse]
        if name == "score":
            agree |= np.isnan(table[name]) & np.isnan(folded[name][inverse])
        if not agree.all():
            label = table["label"][np.flatnonzero(~agree)[0]]
            raise ValueError(f"{source}: label {label} has different {name} values in different planes")
    folded["area"] = np.bincount(inverse, weights=table["area"], minlength=len(labels)).astype(np.int64)
    return folded


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
        stored = str(image.get("file_name") or path.stem).replace("\\", "/")  # as Windows may write it
        name = io.image_stem(stored) if len(images) > 1 else path.stem  # cells.ome.tif: cells
        # the scale, translate and units of the layer it was exported from (napari-prm's exports
        # record them in the image entry), so that it opens over its image
        layers.append((labels, {"name": name, "features": _features(table),
                                "metadata": {"class_names": class_names, "source": str(path)},
                                **io.coco_image_world(image)},
                       "labels"))
    return layers


def read_labels_with_table(path) -> list[tuple]:
    """A label image and the instance CSV beside it (when there is one), as a Labels layer with
    features: one row per label, also for a stack (see `_per_label`). A stack's layer gets the
    axis labels its TIFF records (``z, y, x`` for ImageJ/OME or tifffile axes ``ZYX``; ``t`` for ``T``),
    as it gets the scale: napari's ``-3, -2, -1`` otherwise."""
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    io.settle_outputs(path)
    # the labels and what the file records, a TIFF opened once (`io.read_label_image`, `io.read_label_world`,
    # `io.read_label_class_names`): the scale, translate, units and classes of the layer it was exported
    # from (napari-prm's exports record them), so that exporting again or learning from it keeps the classes
    labels, recorded, ndim, axis_labels = _read_label_file(path)
    csv = sidecar_csv(path)
    features = ({"features": _features(_per_label(io.read_instances_csv(csv), labels.ndim, csv))}
                if csv.is_file() else {})
    world = _recorded_world(recorded, ndim)
    if axis_labels is not None and len(axis_labels) == labels.ndim:  # a stack's z, y, x (ImageJ/OME axes)
        world["axis_labels"] = axis_labels
    metadata = {"source": str(path)}
    class_names = _class_names_of(recorded)
    if class_names is not None:
        metadata["class_names"] = class_names
    return [(labels, {"name": path.stem, **features, "metadata": metadata, **world}, "labels")]
