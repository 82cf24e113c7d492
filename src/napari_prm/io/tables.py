"""Instance tables and CSV files: one row per instance, one row per peak.

An *instance table* is a mapping of equal-length columns ``label, class_index, class_name,
score, peak`` (a dict of arrays or napari's ``Labels.features`` DataFrame). Labels present
in the image but absent from the table (painted by hand) are exported with class index -1,
class name ``"unknown"``, no score and peak -1 (no peak), in the instance CSV as in COCO; both
readers give -1 for it.

The instance CSV of a stack (labels with leading Z/T/... axes) starts with the plane's index:
one column ``plane`` for one leading axis, ``plane_0, plane_1, ...`` (one per leading axis, in
axis order) for more; it has one row per (plane, label), with that plane's area and box. The
CSV of a 2-D label image has no plane column.

When the image's pixel size is known in a unit of length, the instance CSV also gives the area and
box in micrometres (`INSTANCE_CSV_UM_COLUMNS`, after ``peak``); otherwise those columns are absent.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .atomic import atomic_write
from .labels import _check_labels, _pixel_size_um

__all__ = ["write_instances_csv", "read_instances_csv", "write_peaks_csv", "write_stack_peaks_csv",
           "UNKNOWN_CLASS"]

UNKNOWN_CLASS = "unknown"
INSTANCE_CSV_COLUMNS = ("id", "class", "class_index", "area",
                        "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "score", "peak")
#: The columns an instance CSV must have: ``peak`` came later (an older CSV's instances read as peak -1).
_REQUIRED_CSV_COLUMNS = INSTANCE_CSV_COLUMNS[:-1]
#: The instance CSV's columns in micrometres, after `INSTANCE_CSV_COLUMNS`, when the pixel size is known:
#: the area in µm² and the box's edges in µm from the image's top left corner.
INSTANCE_CSV_UM_COLUMNS = ("area_um2", "bbox_y0_um", "bbox_x0_um", "bbox_y1_um", "bbox_x1_um")


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
        if missing_cell(label):
            continue
        rows[int(label)] = (_int_or(index, -1), UNKNOWN_CLASS if missing_cell(name) else str(name),
                            math.nan if missing_cell(score) else float(score), _int_or(peak, -1))
    return rows


def missing_cell(value) -> bool:
    """Whether a cell of an instance table holds no value: None or NaN (of any float type), as
    an edited napari features table (a DataFrame) holds where a value is missing."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _int_or(value, default: int) -> int:
    return default if missing_cell(value) else int(value)


def _label_regions(labels: np.ndarray) -> dict[int, tuple[tuple[slice, ...], int]]:
    """Bounding box (slices) and area of every label > 0, in increasing label order.

    Works on the ranks of the label values when they are sparse (a label 4e9), so they cost no memory.
    """
    top = int(labels.max(initial=0))
    if labels.size and labels.min() >= 0 and top <= max(labels.size, 1 << 16):
        # by the label values themselves: sorting a 4096² image's pixels (np.unique) took seconds
        counts = np.bincount(labels.ravel(), minlength=top + 1)
        boxes = ndimage.find_objects(labels)
        return {int(value): (boxes[value - 1], int(counts[value])) for value in np.flatnonzero(counts[1:]) + 1}
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


def _plane_columns(leading_ndim: int) -> tuple[str, ...]:
    """The plane columns of the instance CSV of labels with ``leading_ndim`` leading axes
    (none for a 2-D image)."""
    if leading_ndim == 1:
        return ("plane",)
    return tuple(f"plane_{axis}" for axis in range(leading_ndim))


def _csv_row(record: dict, region, um: tuple[float, float] | None = None) -> list:
    """One row of the instance CSV; with ``um`` (a pixel's height and width in µm) its µm columns too."""
    (rows, cols), area = region
    score = record["score"]
    row = [record["label"], record["class_name"], record["class_index"], area, rows.start,
           cols.start, rows.stop, cols.stop, repr(score) if math.isfinite(score) else "", record["peak"]]
    if um is not None:
        height, width = um
        row += [f"{value:.10g}" for value in (area * height * width, rows.start * height, cols.start * width,
                                               rows.stop * height, cols.stop * width)]
    return row


def write_instances_csv(path: str | os.PathLike, labels: np.ndarray, table=None,
                        class_names: Sequence[str] | None = None, *,
                        overwrite: bool = True, pixel_size: dict | None = None,
                        world: dict | None = None) -> Path:
    """Write one row per instance: id, class, class_index, area, bbox, score, peak (and in µm when known).

    Columns are ``id`` (label value), ``class`` (name), ``class_index`` (-1 when
    unknown), ``area`` (pixels), ``bbox_y0, bbox_x0, bbox_y1, bbox_x1`` (rows and columns,
    end exclusive, like scikit-image's ``regionprops(...).bbox``), ``score`` (empty
    when the instance has none) and ``peak`` (the number of the instance's peak, the ``peak`` of
    the peaks CSV; -1 for an instance without one, painted by hand), as the COCO export's ``peak``.
    ``labels`` is 2-D, or a stack ``(*leading, H, W)``: then the
    rows are one per (plane, label), led by the plane's index (``plane``, or ``plane_0,
    plane_1, ...`` for several leading axes; see the module docstring), with the area and
    box in that plane; the class and score are the label's.

    When the pixel size is known in a unit of length (``pixel_size``, else ``world``), the columns
    ``area_um2`` (µm²) and ``bbox_y0_um, bbox_x0_um, bbox_y1_um, bbox_x1_um`` (the box's edges in
    µm from the image's top left corner, the layer's ``translate`` left out) follow ``peak``
    (`INSTANCE_CSV_UM_COLUMNS`); otherwise they are absent. The columns in pixels are the same
    either way.

    Parameters
    ----------
    path : path-like
        The CSV file to write.
    labels : int ndarray
        The label image (H, W), or a stack (*leading, H, W); 0 is background.
    table : mapping of columns, optional
        Instance table (see the module docstring); None: every label of class ``unknown``.
    class_names : sequence of str, optional
        All the model's classes: when given, a label's class name is the one of its class index
        in the table (else the table's ``class_name``).
    overwrite : bool
        If False and ``path`` exists, raise ``FileExistsError``.
    pixel_size : dict, optional
        The image's pixel size (`napari_prm.io.tiff_pixel_size` of its file). Pixels per inch (an
        image editor's or scanner's default, a print size) and sizes without a unit give no µm columns.
    world : dict, optional
        A napari layer's ``scale`` and ``units``: with its last two axes in a unit of length
        (``micrometer``, ...) they give the pixel size when ``pixel_size`` does not.
    """
    labels = _check_labels(labels, ndim=None)
    path = Path(path)
    um = _pixel_size_um(pixel_size, world)
    leading = labels.shape[:-2]  # () for a 2-D image: one plane, no plane column
    planes = [(index, _label_regions(labels[index])) for index in np.ndindex(leading)]
    present = sorted({label for _, regions in planes for label in regions})
    records = {r["label"]: r for r in _instance_rows(dict.fromkeys(present), table, class_names)}
    with atomic_write(path, overwrite=overwrite) as temp:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_plane_columns(len(leading)) + INSTANCE_CSV_COLUMNS
                            + (INSTANCE_CSV_UM_COLUMNS if um is not None else ()))
            for index, regions in planes:
                for label, region in regions.items():
                    writer.writerow([*index, *_csv_row(records[label], region, um)])
    return path


def read_instances_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a CSV written by `write_instances_csv` into columns.

    Parameters
    ----------
    path : path-like
        An ``<stem>_instances.csv`` (of `export_instances`, ``napari-prm predict`` or the plugin).

    Returns
    -------
    dict of ndarray
        ``label, class_index, class_name, score`` (NaN where empty), ``peak`` (-1: no peak, an
        instance painted by hand, as the COCO reader gives it; -1 for every instance of a CSV written
        before the column was), ``area`` and
        ``bbox`` ((N, 4) int: y0, x0, y1, x1); for a stack's CSV also ``plane`` ((N, k) int:
        the plane of each row, k leading axes). A stack's label appears in one row per plane
        it lies in.
    """
    path = Path(path)
    integer_columns = ("id", "class_index", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")
    rows, seen = [], {}  # plane -> the ids listed in it
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or ())
            missing = set(_REQUIRED_CSV_COLUMNS) - set(fields)
            if missing:
                raise ValueError(f"missing columns {sorted(missing)}")
            planes = _plane_fields(fields)
            for row in reader:
                try:
                    values = {name: int(row[name]) for name in integer_columns}
                    values["score"] = float(row["score"] or "nan")
                    values["peak"] = int(row.get("peak") or -1)  # none recorded: no peak, as in COCO
                    plane = tuple(int(row[name]) for name in planes)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"line {reader.line_num}: {error}") from None
                problem = _row_problem(values, seen=seen.setdefault(plane, set()))
                if not problem and min(plane, default=0) < 0:
                    problem = f"plane {list(plane)}: expected indices >= 0"
                if problem:
                    where = f" (plane {list(plane)})" if planes else ""
                    raise ValueError(f"line {reader.line_num}: {problem}{where}")
                seen[plane].add(values["id"])
                rows.append(values | {"class": row["class"], "plane": plane})
    except (OSError, ValueError, csv.Error) as error:
        raise ValueError(f"cannot read instance CSV {path}: {error}") from error
    table = {"label": np.array([r["id"] for r in rows], dtype=np.int64),
             "class_index": np.array([r["class_index"] for r in rows], dtype=np.int64),
             "class_name": np.array([r["class"] for r in rows], dtype=object),
             "score": np.array([r["score"] for r in rows], dtype=np.float64),
             "peak": np.array([r["peak"] for r in rows], dtype=np.int64),
             "area": np.array([r["area"] for r in rows], dtype=np.int64),
             "bbox": np.array([[r[c] for c in integer_columns[3:]] for r in rows],
                              dtype=np.int64).reshape(-1, 4)}
    if planes:
        table["plane"] = np.array([r["plane"] for r in rows], dtype=np.int64).reshape(-1, len(planes))
    return table


def _plane_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """The plane columns among a CSV's ``fields`` (none for a 2-D label image's CSV)."""
    if "plane" in fields:
        return ("plane",)
    named = tuple(name for name in fields if re.fullmatch(r"plane_\d+", name))
    if named != tuple(f"plane_{axis}" for axis in range(len(named))):
        raise ValueError(f"plane columns {list(named)}: expected plane_0, plane_1, ... in order")
    return named


def _row_problem(values: dict, seen: set[int]) -> str:
    """What is wrong with one row of an instance CSV ('' when nothing)."""
    if values["id"] < 1:
        return f"id {values['id']}: expected a label >= 1 (0 is the background)"
    if values["id"] in seen:
        return f"id {values['id']} is listed twice"
    if values["class_index"] < -1:
        return f"class_index {values['class_index']}: expected -1 (unknown) or a class index >= 0"
    if values["area"] < 0:
        return f"area {values['area']}: expected >= 0"
    if not (0 <= values["bbox_y0"] <= values["bbox_y1"] and 0 <= values["bbox_x0"] <= values["bbox_x1"]):
        box = [values[c] for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")]
        return f"bbox {box}: expected 0 <= y0 <= y1 and 0 <= x0 <= x1"
    if values["peak"] < -1:
        return f"peak {values['peak']}: expected -1 (no peak) or a peak number >= 0"
    if math.isinf(values["score"]):
        return f"score {values['score']}: expected a finite number or an empty cell"
    return ""


def write_peaks_csv(path: str | os.PathLike, prediction, *, overwrite: bool = True) -> Path:
    """Write a prediction's peaks: peak, y, x (image pixels), class, class_index, value.

    ``value`` is the CRM value at the peak; ``class_score`` the peak-stimulated score of
    the peak's class. A stack's peaks (`write_stack_peaks_csv`) have a ``plane`` column first.

    Parameters
    ----------
    path : path-like
        The CSV file to write.
    prediction : Prediction
        The prediction whose peaks are written.
    overwrite : bool
        If False and ``path`` exists, raise ``FileExistsError``.
    """
    return write_stack_peaks_csv(path, [prediction], overwrite=overwrite, plane_column=False)


def write_stack_peaks_csv(path: str | os.PathLike, predictions, *, overwrite: bool = True,
                          plane_column: bool = True) -> Path:
    """Write the peaks of a stack's planes, one prediction per plane, as `write_peaks_csv` does.

    The rows are led by ``plane`` (the prediction's index in ``predictions``); the peaks are
    numbered over all planes, in plane order (the ``peak`` column of the stack's instance
    table, and the slices of its PRM stack, count the same way).

    Parameters
    ----------
    path : path-like
        The CSV file to write.
    predictions : sequence of Prediction
        One prediction per plane, in plane order.
    overwrite : bool
        If False and ``path`` exists, raise ``FileExistsError``.
    plane_column : bool
        Lead each row with its ``plane``; False leaves the column out (`write_peaks_csv`).
    """
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as temp:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["plane"] * plane_column + ["peak", "y", "x", "class", "class_index", "value",
                                                        "class_score"])
            number = 0
            for plane, prediction in enumerate(predictions):
                peaks = np.asarray(prediction.peaks, dtype=np.float64).reshape(-1, 2)
                classes = np.asarray(prediction.peak_classes).reshape(-1)
                values = np.asarray(prediction.peak_values).reshape(-1)
                scores = np.asarray(prediction.scores).reshape(-1)
                for (y, x), index, value in zip(peaks, classes, values):
                    writer.writerow([plane] * plane_column + [
                        number, repr(float(y)), repr(float(x)), prediction.class_names[int(index)], int(index),
                        repr(float(value)), repr(float(scores[int(index)]))])
                    number += 1
    return path
