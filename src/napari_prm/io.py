"""Exporters and importers: label images, COCO JSON, instance and peak CSVs, PRMs.

The one place that knows the file formats; the command line, the napari writer and the
widgets all call it. Every file is written atomically: to a temporary file in the target's
folder, then renamed over the target, so a failed write leaves the previous file as it was.

An *instance table* is a mapping of equal-length columns ``label, class_index, class_name,
score, peak`` (a dict of arrays or napari's ``Labels.features`` DataFrame). Labels present
in the image but absent from the table (painted by hand) are exported with class index -1,
class name ``"unknown"``, no score and peak -1.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from .masks import decode_rle, encode_rle, rle_area, rle_bbox, segmentation_to_rle

__all__ = [
    "atomic_write", "atomic_writes", "read_image", "write_label_image", "read_label_image",
    "labels_to_coco", "coco_to_labels", "write_coco_json", "write_instances_csv",
    "read_instances_csv", "write_peaks_csv", "write_prms", "export_instances",
    "write_prediction", "prediction_paths", "IMAGE_SUFFIXES", "UNKNOWN_CLASS",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
UNKNOWN_CLASS = "unknown"
#: COCO category id of labels without a class (id 0 is not used by COCO's own categories).
UNKNOWN_CATEGORY_ID = 0
INSTANCE_CSV_COLUMNS = ("id", "class", "class_index", "area",
                        "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "score")
#: File name endings of each export format, after the stem.
EXPORT_SUFFIXES = {"tiff": "_labels.tif", "png": "_labels.png",
                   "coco": "_instances.json", "csv": "_instances.csv"}
_FORMAT_ALIASES = {"tif": "tiff", "tiff": "tiff", "png": "png", "coco": "coco",
                   "json": "coco", "csv": "csv"}
_SUFFIX_FORMATS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".json": "coco",
                   ".csv": "csv"}


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; exports should get the usual mode.
_FILE_MODE = 0o666 & ~_current_umask()


@contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Give a temporary path to write to; on success rename it onto ``path``.

    Parameters
    ----------
    path : path-like
        Final file. Its folder must exist.
    overwrite : bool
        If False and ``path`` exists, raise ``FileExistsError`` before anything is written.

    Yields
    ------
    Path
        A fresh file in the same folder whose name ends with ``path``'s suffix (so writers
        that pick the format by extension work). Write to it, then leave the block.

    Notes
    -----
    On an exception inside the block the temporary file is removed and ``path`` is left
    untouched. The data is flushed to disk before the rename (``os.replace``, atomic on
    POSIX and Windows within one file system).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=f".tmp{path.suffix}")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, _FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_writes(paths: Sequence[str | os.PathLike], *,
                  overwrite: bool = True) -> Iterator[list[Path]]:
    """`atomic_write` for several files at once: all are replaced, or none.

    Yields one temporary path per target; the targets are replaced only after the whole
    block succeeded, so an export that fails on its third file leaves the previous
    export's files all as they were. With ``overwrite=False``, ``FileExistsError`` names
    every existing target before anything is written.
    """
    paths = [Path(p) for p in paths]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"not overwriting existing {', '.join(existing)}; "
                              "pass overwrite=True to replace")
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_write(p)) for p in paths]


# --------------------------------------------------------------------------- images
def _imread(path: Path, what: str) -> np.ndarray:
    """TIFF through tifffile, other formats through imageio; a ValueError naming the file on failure."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return tifffile.imread(path)
        import imageio.v3 as iio

        return iio.imread(path)
    except Exception as error:  # the readers raise many types for a broken file
        raise ValueError(f"cannot read {what} {path}: {error}") from error


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG, JPEG or TIFF (8- or 16-bit, gray, RGB or RGBA) as a numpy array.

    Returns
    -------
    (H, W) or (H, W, C) ndarray
        In the file's dtype; a channels-first TIFF (C, H, W) with C in {3, 4} is moved to
        channels-last.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or is not a single 2-D image.

    Notes
    -----
    TIFFs are read with tifffile, other formats with imageio (Pillow), which reads 16-bit
    grayscale PNGs exactly but reduces 16-bit colour PNGs to 8 bits per channel.
    """
    path = Path(path)
    image = _imread(path, "image")
    image = np.asarray(image)
    if image.ndim > 2:
        image = image.reshape([n for n in image.shape[:-2] if n != 1] + list(image.shape[-2:]))
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot read image {path}: expected a 2-D gray, RGB or RGBA "
                         f"image, got an array of shape {image.shape}")
    return image


def _check_labels(labels, *, ndim: int | None = 2) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if ndim is not None and labels.ndim != ndim:
        raise ValueError(f"labels must be {ndim}-D, got shape {labels.shape}")
    if labels.ndim < 2:
        raise ValueError(f"labels must be at least 2-D, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {labels.min()}")
    if labels.size and int(labels.max()) > np.iinfo(np.uint32).max:
        raise ValueError(f"labels must fit uint32, got maximum {labels.max()}")
    return labels


def _storage_dtype(labels: np.ndarray) -> type:
    return np.uint16 if labels.size == 0 or int(labels.max()) <= 65535 else np.uint32


def write_label_image(path: str | os.PathLike, labels: np.ndarray, *,
                      overwrite: bool = True) -> Path:
    """Write a label image as TIFF (uint16 or uint32) or PNG (8- or 16-bit).

    Parameters
    ----------
    path : path-like
        ``.tif``/``.tiff`` (any number of dimensions >= 2, zlib-compressed) or ``.png``
        (2-D only, labels up to 65535).
    labels : integer ndarray
        0 is background.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png"):
        raise ValueError(f"label images are written as .tif, .tiff or .png, got {path}")
    labels = _check_labels(labels, ndim=2 if suffix == ".png" else None)
    dtype = _storage_dtype(labels)
    if suffix == ".png":
        if dtype is not np.uint16:
            raise ValueError(f"cannot write {path}: PNG holds labels up to 65535, the "
                             f"largest label is {labels.max()}; write a TIFF instead")
        import imageio.v3 as iio

        small = labels.size == 0 or int(labels.max()) <= 255
        with atomic_write(path, overwrite=overwrite) as temp:
            iio.imwrite(temp, labels.astype(np.uint8 if small else np.uint16))
    else:
        with atomic_write(path, overwrite=overwrite) as temp:
            tifffile.imwrite(temp, labels.astype(dtype), compression="zlib",
                             photometric="minisblack")
    return path


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a label image written by `write_label_image` (or any integer TIFF/PNG).

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or does not hold integer labels.
    """
    path = Path(path)
    labels = _imread(path, "label image")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim < 2:
        raise ValueError(f"{path} is not a label image: expected integers with at least "
                         f"2 dimensions, got dtype {labels.dtype} shape {labels.shape}")
    return labels


# --------------------------------------------------------------------------- tables
def _table_rows(table) -> dict[int, tuple[int, str, float, int]]:
    """Map each label in ``table`` to (class_index, class_name, score, peak)."""
    if table is None or len(table) == 0 or "label" not in table:
        return {}
    columns = {name: np.asarray(table[name]) for name in
               ("label", "class_index", "class_name", "score", "peak") if name in table}
    count = len(columns["label"])
    default = {"class_index": np.full(count, -1), "class_name": np.full(count, UNKNOWN_CLASS),
               "score": np.full(count, np.nan), "peak": np.full(count, -1)}
    columns = {**default, **columns}
    rows = {}
    for label, index, name, score, peak in zip(columns["label"], columns["class_index"],
                                               columns["class_name"], columns["score"],
                                               columns["peak"]):
        # an edited napari features table may hold NaN/None where a value is missing
        if _missing(label):
            continue
        rows[int(label)] = (_int_or(index, -1), UNKNOWN_CLASS if _missing(name) else str(name),
                            math.nan if _missing(score) else float(score), _int_or(peak, -1))
    return rows


def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _int_or(value, default: int) -> int:
    return default if _missing(value) else int(value)


def _label_regions(labels: np.ndarray) -> dict[int, tuple[tuple[slice, ...], int]]:
    """Bounding box (slices) and area of every label > 0, in increasing label order.

    Works on the ranks of the label values, so sparse values (a label 4e9) cost no memory.
    """
    values, ranks, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ranks = ranks.reshape(labels.shape)
    if values.size and values[0] != 0:  # no background: ranks must start at 1
        ranks = ranks + 1
        values, counts = np.r_[0, values], np.r_[0, counts]
    boxes = ndimage.find_objects(ranks)
    return {int(values[rank]): (boxes[rank - 1], int(counts[rank]))
            for rank in range(1, len(values))}


def _instance_rows(regions: Mapping[int, object], table, class_names: Sequence[str] | None):
    """One record per label in ``regions``: label, class index/name, score, peak."""
    known = _table_rows(table)
    records = []
    for label in regions:
        index, name, score, peak = known.get(label, (-1, UNKNOWN_CLASS, math.nan, -1))
        if index < 0:
            index, name = -1, UNKNOWN_CLASS
        elif class_names is not None:
            if index >= len(class_names):
                raise ValueError(f"label {label} has class index {index}, but only "
                                 f"{len(class_names)} class names were given")
            name = class_names[index]
        records.append({"label": label, "class_index": index, "class_name": name,
                        "score": score, "peak": peak})
    return records


def _names_from_records(records) -> list[str]:
    top = max((r["class_index"] for r in records), default=-1)
    names = [f"class_{i}" for i in range(top + 1)]
    for record in records:
        if record["class_index"] >= 0:
            names[record["class_index"]] = record["class_name"]
    return names


def _table_from_records(records) -> dict[str, np.ndarray]:
    return {"label": np.array([r["label"] for r in records], dtype=np.int64),
            "class_index": np.array([r["class_index"] for r in records], dtype=np.int64),
            "class_name": np.array([r["class_name"] for r in records], dtype=object),
            "score": np.array([r["score"] for r in records], dtype=np.float64),
            "peak": np.array([r.get("peak", -1) for r in records], dtype=np.int64)}


# --------------------------------------------------------------------------- COCO
def labels_to_coco(labels: np.ndarray, table=None, class_names: Sequence[str] | None = None,
                   *, image_id: int = 1, file_name: str = "",
                   category_ids: Sequence[int] | None = None) -> dict:
    """Describe a 2-D label image as a COCO "instances" dataset with one image.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        0 is background; every other value is one instance.
    table : mapping of columns, optional
        Instance table (``label, class_index, class_name, score, peak``).
    class_names : sequence of str, optional
        All the model's classes; each becomes a category. Defaults to the names in
        ``table`` (``class_<i>`` for indices it lacks).
    image_id : int
        The ``id`` of the image entry and ``image_id`` of every annotation.
    file_name : str
        ``file_name`` of the image entry.
    category_ids : sequence of int, optional
        Category id of each class (e.g. the official COCO ids); default ``index + 1``.
        Id 0 is reserved for labels without a class (``"unknown"``).

    Returns
    -------
    dict
        With ``images``, ``annotations`` and ``categories``. Each annotation has ``id`` and
        ``label`` (both the label value), ``category_id``, ``segmentation`` (compressed RLE,
        ``counts`` as str), ``area``, ``bbox`` (``[x, y, width, height]``), ``iscrowd`` 0,
        ``peak`` and ``score`` (left out when the instance has none).
    """
    labels = _check_labels(labels)
    regions = _label_regions(labels)
    records = _instance_rows(regions, table, class_names)
    names = list(class_names) if class_names is not None else _names_from_records(records)
    ids = list(range(1, len(names) + 1)) if category_ids is None else [int(i) for i in category_ids]
    if len(ids) != len(names) or len(set(ids)) != len(ids) or UNKNOWN_CATEGORY_ID in ids:
        raise ValueError(f"category_ids must be {len(names)} distinct ids other than "
                         f"{UNKNOWN_CATEGORY_ID}, got {list(ids)[:10]}...")
    categories = [{"id": i, "name": str(n), "supercategory": ""} for i, n in zip(ids, names)]
    if any(r["class_index"] < 0 for r in records):
        categories.append({"id": UNKNOWN_CATEGORY_ID, "name": UNKNOWN_CLASS,
                           "supercategory": ""})
    height, width = labels.shape
    annotations = []
    for record in records:
        label = record["label"]
        mask = np.zeros((height, width), dtype=np.uint8, order="F")
        window = regions[label][0]
        mask[window] = labels[window] == label
        rle = encode_rle(mask)
        annotation = {
            "id": label, "label": label, "image_id": int(image_id),
            "category_id": UNKNOWN_CATEGORY_ID if record["class_index"] < 0
            else ids[record["class_index"]],
            "segmentation": rle,
            "area": rle_area(rle),
            "bbox": rle_bbox(rle),
            "iscrowd": 0, "peak": record["peak"],
        }
        if math.isfinite(record["score"]):
            annotation["score"] = record["score"]
        annotations.append(annotation)
    return {"info": {"description": "napari-prm instance export"}, "licenses": [],
            "images": [{"id": int(image_id), "file_name": str(file_name),
                        "height": height, "width": width}],
            "annotations": annotations, "categories": categories}


def coco_to_labels(coco: Mapping | str | os.PathLike, image_id: int | None = None):
    """Paint the instances of one image of a COCO dataset into a label image.

    Parameters
    ----------
    coco : dict or path-like
        A COCO "instances" dataset (as written by `labels_to_coco`, or any COCO JSON with
        RLE or polygon segmentations).
    image_id : int, optional
        Which image; may be left out when the dataset has one image.

    Returns
    -------
    labels : (H, W) uint16 or uint32 ndarray
    table : dict of ndarray
        Columns ``label, class_index, class_name, score, peak``.
    class_names : list of str
        Category names in the file's order; ``class_index`` indexes this list. Category
        id 0 (``"unknown"``) maps to class index -1.

    Notes
    -----
    Labels are the annotations' ``label`` values when every annotation has one (files
    written by this module), else 1, 2, ... in annotation order. Where masks overlap,
    later annotations cover earlier ones.
    """
    source = str(coco) if not isinstance(coco, Mapping) else "the COCO dict"
    if not isinstance(coco, Mapping):
        try:
            with open(coco, encoding="utf-8") as handle:
                coco = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read COCO JSON {source}: {error}") from error
    try:
        images = {int(image["id"]): image for image in coco["images"]}
        categories = list(coco["categories"])
        annotations = coco.get("annotations", [])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source} is not a COCO instances dataset: {error!r}") from error
    if image_id is None:
        if len(images) != 1:
            raise ValueError(f"{source} holds {len(images)} images; pass image_id "
                             f"(one of {sorted(images)[:10]})")
        image_id = next(iter(images))
    if int(image_id) not in images:
        raise ValueError(f"{source} has no image with id {image_id}")
    image = images[int(image_id)]
    height, width = int(image["height"]), int(image["width"])
    class_categories = [c for c in categories if int(c["id"]) != UNKNOWN_CATEGORY_ID]
    class_names = [str(c["name"]) for c in class_categories]
    index_of = {int(c["id"]): i for i, c in enumerate(class_categories)}
    index_of[UNKNOWN_CATEGORY_ID] = -1
    mine = [a for a in annotations if int(a["image_id"]) == int(image_id)]
    own_labels = bool(mine) and all("label" in a for a in mine)
    records, rles = [], []
    for number, annotation in enumerate(mine, start=1):
        label = int(annotation["label"]) if own_labels else number
        category = int(annotation["category_id"])
        if category not in index_of:
            raise ValueError(f"{source}: annotation {annotation.get('id')} has category "
                             f"{category}, which is not among the categories")
        rles.append(_segmentation_rle(annotation["segmentation"], height, width, source))
        index = index_of[category]
        records.append({"label": label, "class_index": index,
                        "class_name": UNKNOWN_CLASS if index < 0 else class_names[index],
                        "score": float(annotation.get("score", math.nan)),
                        "peak": int(annotation.get("peak", -1))})
    top = max((r["label"] for r in records), default=0)
    labels = np.zeros((height, width), dtype=np.uint16 if top <= 65535 else np.uint32)
    for record, rle in zip(records, rles):
        # decode one mask at a time and paint only inside its box: memory and time stay
        # proportional to one image, not to the number of instances times the image
        x0, y0, box_width, box_height = (int(v) for v in rle_bbox(rle))
        window = (slice(y0, y0 + box_height), slice(x0, x0 + box_width))
        inside = decode_rle(rle)[window]
        labels[window][inside] = record["label"]
    return labels, _table_from_records(records), class_names


def _segmentation_rle(segmentation, height: int, width: int, source: str) -> dict:
    """Compressed RLE of a polygon, uncompressed-RLE or compressed-RLE segmentation."""
    try:
        rle = segmentation_to_rle(segmentation, height, width)
        rle_area(rle)  # validates the counts now, so errors name the file
        return rle
    except Exception as error:
        raise ValueError(f"{source}: cannot decode segmentation: {error}") from error


def write_coco_json(path: str | os.PathLike, coco: Mapping, *, overwrite: bool = True) -> Path:
    """Write a COCO dict (e.g. from `labels_to_coco`) as JSON; NaN is refused."""
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as temp:
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(coco, handle, allow_nan=False)
    return path


# --------------------------------------------------------------------------- CSV
def write_instances_csv(path: str | os.PathLike, labels: np.ndarray, table=None,
                        class_names: Sequence[str] | None = None, *,
                        overwrite: bool = True) -> Path:
    """Write one row per instance: id, class, class_index, area, bbox, score.

    Columns are ``id`` (label value), ``class`` (name), ``class_index`` (-1 when
    unknown), ``area`` (pixels), ``bbox_y0, bbox_x0, bbox_y1, bbox_x1`` (rows and columns,
    end exclusive, like scikit-image's ``regionprops(...).bbox``) and ``score`` (empty
    when the instance has none). ``labels`` is 2-D.
    """
    labels = _check_labels(labels)
    regions = _label_regions(labels)
    records = _instance_rows(regions, table, class_names)
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as temp:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(INSTANCE_CSV_COLUMNS)
            for record in records:
                (rows, cols), area = regions[record["label"]]
                score = record["score"]
                writer.writerow([record["label"], record["class_name"], record["class_index"],
                                 area, rows.start, cols.start,
                                 rows.stop, cols.stop, repr(score) if math.isfinite(score) else ""])
    return path


def read_instances_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a CSV written by `write_instances_csv` into columns.

    Returns
    -------
    dict of ndarray
        ``label, class_index, class_name, score`` (NaN where empty), ``area`` and
        ``bbox`` ((N, 4) int: y0, x0, y1, x1).
    """
    path = Path(path)
    integer_columns = ("id", "class_index", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = set(INSTANCE_CSV_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"missing columns {sorted(missing)}")
            for row in reader:
                try:
                    values = {name: int(row[name]) for name in integer_columns}
                    values["score"] = float(row["score"] or "nan")
                except (TypeError, ValueError) as error:
                    raise ValueError(f"line {reader.line_num}: {error}") from None
                rows.append(values | {"class": row["class"]})
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read instance CSV {path}: {error}") from error
    return {"label": np.array([r["id"] for r in rows], dtype=np.int64),
            "class_index": np.array([r["class_index"] for r in rows], dtype=np.int64),
            "class_name": np.array([r["class"] for r in rows], dtype=object),
            "score": np.array([r["score"] for r in rows], dtype=np.float64),
            "area": np.array([r["area"] for r in rows], dtype=np.int64),
            "bbox": np.array([[r[c] for c in integer_columns[3:]] for r in rows],
                             dtype=np.int64).reshape(-1, 4)}


def write_peaks_csv(path: str | os.PathLike, prediction, *, overwrite: bool = True) -> Path:
    """Write a prediction's peaks: peak, y, x (image pixels), class, class_index, value.

    ``value`` is the CRM value at the peak; ``class_score`` the peak-stimulated score of
    the peak's class.
    """
    peaks = np.asarray(prediction.peaks, dtype=np.float64).reshape(-1, 2)
    classes = np.asarray(prediction.peak_classes).reshape(-1)
    values = np.asarray(prediction.peak_values).reshape(-1)
    scores = np.asarray(prediction.scores).reshape(-1)
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as temp:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["peak", "y", "x", "class", "class_index", "value", "class_score"])
            for number, ((y, x), index, value) in enumerate(zip(peaks, classes, values)):
                writer.writerow([number, repr(float(y)), repr(float(x)),
                                 prediction.class_names[int(index)], int(index),
                                 repr(float(value)), repr(float(scores[int(index)]))])
    return path


def write_prms(path: str | os.PathLike, prms: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write peak response maps (K, H, W) as ``.npy`` or a float32 TIFF stack (K >= 1)."""
    prms = np.asarray(prms, dtype=np.float32)
    path = Path(path)
    suffix = path.suffix.lower()
    if prms.ndim != 3:
        raise ValueError(f"prms must be (K, H, W), got shape {prms.shape}")
    if suffix == ".npy":
        with atomic_write(path, overwrite=overwrite) as temp:
            np.save(temp, prms)
    elif suffix in (".tif", ".tiff"):
        if len(prms) == 0:
            raise ValueError(f"cannot write {path}: a TIFF stack needs at least one PRM")
        with atomic_write(path, overwrite=overwrite) as temp:
            tifffile.imwrite(temp, prms, photometric="minisblack", compression="zlib")
    else:
        raise ValueError(f"PRMs are written as .npy, .tif or .tiff, got {path}")
    return path


# --------------------------------------------------------------------------- bundles
def _export_paths(out: Path, formats, stem: str | None) -> dict[str, Path]:
    if out.suffix.lower() in _SUFFIX_FORMATS and not out.is_dir():
        implied = _SUFFIX_FORMATS[out.suffix.lower()]
        if formats is not None and {_FORMAT_ALIASES.get(f) for f in formats} != {implied}:
            raise ValueError(f"{out} names one {implied} file, but formats={formats!r}; "
                             "pass a folder to write several formats")
        return {implied: out}
    formats = ("tiff", "coco", "csv") if formats is None else formats
    unknown = [f for f in formats if f not in _FORMAT_ALIASES]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; expected some of "
                         f"{sorted(_FORMAT_ALIASES)}")
    stem = stem or "labels"
    return {_FORMAT_ALIASES[f]: out / f"{stem}{EXPORT_SUFFIXES[_FORMAT_ALIASES[f]]}"
            for f in formats}


def export_instances(labels: np.ndarray, table, class_names: Sequence[str] | None,
                     out: str | os.PathLike, *, formats: Sequence[str] | None = None,
                     stem: str | None = None, overwrite: bool = False,
                     image_file_name: str = "") -> list[Path]:
    """Export a (corrected) label image with its classes in one or more formats.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        Any number of dimensions for a TIFF alone.
    table : mapping of columns, optional
        Instance table; see the module docstring.
    class_names : sequence of str, optional
        All classes (COCO categories); defaults to those in ``table``.
    out : path-like
        A file ending in ``.tif``/``.tiff``, ``.png``, ``.json`` (COCO) or ``.csv``: that one
        file is written. Otherwise a folder (created if needed) that receives
        ``<stem>_labels.tif``, ``<stem>_labels.png``, ``<stem>_instances.json`` and
        ``<stem>_instances.csv`` for the chosen ``formats``.
    formats : sequence of {"tiff", "png", "coco", "csv"}, optional
        Default ``("tiff", "coco", "csv")`` for a folder.
    stem : str, optional
        File name stem in a folder; default ``"labels"``.
    overwrite : bool
        If False and any target exists, raise ``FileExistsError`` before writing anything.
    image_file_name : str
        ``file_name`` of the image in the COCO JSON.

    Returns
    -------
    list of Path
        The files written.
    """
    labels = _check_labels(labels, ndim=None)
    out = Path(out)
    targets = _export_paths(out, formats, stem)
    flat_only = sorted(set(targets) - {"tiff"})
    if flat_only and labels.ndim != 2:
        raise ValueError(f"{', '.join(flat_only)} export needs 2-D labels, got shape "
                         f"{labels.shape}; export a TIFF instead")
    if "png" in targets and int(labels.max(initial=0)) > 65535:
        raise ValueError(f"cannot export PNG {targets['png']}: PNG holds labels up to "
                         f"65535, the largest label is {labels.max()}")
    coco = None
    if "coco" in targets:  # computed first: a bad table fails before any file is written
        coco = labels_to_coco(labels, table, class_names, file_name=image_file_name)
    next(iter(targets.values())).parent.mkdir(parents=True, exist_ok=True)
    with atomic_writes(list(targets.values()), overwrite=overwrite) as temps:
        for kind, temp in zip(targets, temps):
            _write_instances_as(kind, temp, labels, table, class_names, coco)
    return list(targets.values())


def _write_instances_as(kind: str, path: Path, labels, table, class_names, coco) -> None:
    if kind in ("tiff", "png"):
        write_label_image(path, labels)
    elif kind == "coco":
        write_coco_json(path, coco)
    else:
        write_instances_csv(path, labels, table, class_names)


def prediction_paths(out_dir: str | os.PathLike, stem: str, *,
                     prms_format: str | None = None) -> dict[str, Path]:
    """The files `write_prediction` writes for one image, by kind.

    Kinds ``tiff`` (``<stem>_labels.tif``), ``coco`` (``<stem>_instances.json``), ``csv``
    (``<stem>_instances.csv``), ``peaks`` (``<stem>_peaks.csv``) and, with ``prms_format``
    ``"npy"`` or ``"tiff"``, ``prms`` (``<stem>_prms.npy`` or ``.tif``).
    """
    if prms_format not in (None, "npy", "tiff"):
        raise ValueError(f"prms_format must be None, 'npy' or 'tiff', got {prms_format!r}")
    out_dir = Path(out_dir)
    paths = _export_paths(out_dir, ("tiff", "coco", "csv"), stem)
    paths["peaks"] = out_dir / f"{stem}_peaks.csv"
    if prms_format is not None:
        paths["prms"] = out_dir / f"{stem}_prms.{'npy' if prms_format == 'npy' else 'tif'}"
    return paths


def write_prediction(prediction, out_dir: str | os.PathLike, stem: str, *,
                     prms_format: str | None = None, overwrite: bool = False,
                     image_file_name: str = "") -> list[Path]:
    """Write what ``napari-prm predict`` saves for one image.

    Parameters
    ----------
    prediction : Prediction
        From `napari_prm.predict`.
    out_dir : path-like
        Created if needed.
    stem : str
        File name stem; see `prediction_paths` for the names. A TIFF of PRMs is left
        out when there are no peaks.
    prms_format : {None, "npy", "tiff"}
        Also write the PRMs (K, H, W).
    overwrite : bool
        If False and any target exists, raise ``FileExistsError`` before writing anything.
    image_file_name : str
        ``file_name`` of the image in the COCO JSON.

    Returns
    -------
    list of Path
        The files written, all replaced together (see `atomic_writes`).
    """
    targets = prediction_paths(out_dir, stem, prms_format=prms_format)
    if prms_format == "tiff" and len(prediction.prms) == 0:
        del targets["prms"]
    labels, table = prediction.to_labels()
    coco = labels_to_coco(labels, table, prediction.class_names, file_name=image_file_name)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with atomic_writes(list(targets.values()), overwrite=overwrite) as temps:
        for kind, temp in zip(targets, temps):
            if kind == "peaks":
                write_peaks_csv(temp, prediction)
            elif kind == "prms":
                write_prms(temp, prediction.prms)
            else:
                _write_instances_as(kind, temp, labels, table, prediction.class_names, coco)
    return list(targets.values())
