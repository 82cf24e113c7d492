"""Corrections of an instance label image and its table.

Plain functions on ``(labels, table)`` pairs: ``labels`` is an integer label image (0 is
background, one label per instance) and ``table`` a ``dict`` of equal-length columns with
at least ``label``; the columns written by :func:`napari_prm.retrieval.instances_to_labels`
are ``label, class_index, class_name, score, peak``. Each function returns a new
``(labels, table)`` and leaves its inputs untouched, so that a label image and its table
stay consistent: every row's label is present in the image and every non-zero label of the
image has a row.

The napari widget applies these to a Labels layer and its ``features``; nothing here
imports napari or Qt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import line as draw_line

from .io.tables import missing_cell

Table = dict[str, np.ndarray]

__all__ = [
    "add_instance",
    "covered_instances",
    "delete_instance",
    "instance_table",
    "merge_instances",
    "remove_small",
    "replace_mask",
    "set_class",
    "split_instance",
    "sync_table",
]


def _as_table(table: Mapping, labels: np.ndarray) -> Table:
    if "label" not in table:
        raise ValueError(f"table must have a 'label' column; got columns {list(table)}")
    columns = {name: np.asarray(values) for name, values in table.items()}
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"table columns must have equal lengths; got {lengths}")
    columns["label"] = columns["label"].astype(np.int64)
    return columns


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim < 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "labels must be an integer label image with at least 2 dimensions; "
            f"got dtype {labels.dtype} and shape {labels.shape}"
        )
    return labels


def _check_label(labels: np.ndarray, table: Table, label: int) -> int:
    label = int(label)
    if label <= 0:
        raise ValueError(f"label must be a positive instance label; got {label}")
    if label not in table["label"] and not np.any(labels == label):
        raise ValueError(f"label {label} is neither in the label image nor in the table")
    return label


def _check_mask(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """An instance's new pixels, as bool, of the label image's shape and not empty."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != labels.shape:
        raise ValueError(f"mask shape {mask.shape} does not match labels shape {labels.shape}")
    if not mask.any():
        raise ValueError("mask is empty: an instance needs at least one pixel")
    return mask


def _take(table: Table, rows: np.ndarray) -> Table:
    return {name: values[rows] for name, values in table.items()}


def _filler(values: np.ndarray):
    if values.dtype.kind == "f":
        return np.nan
    if values.dtype.kind in "iu":
        return -1
    if values.dtype.kind == "b":
        return False
    return ""


def _append(table: Table, rows: Sequence[Mapping]) -> Table:
    """Append rows; columns a row does not name get NaN, -1, False or ''."""
    if not rows:
        return table
    out = {}
    for name, values in table.items():
        new = [row.get(name, _filler(values)) for row in rows]
        if values.dtype.kind in "OUS":
            out[name] = np.concatenate([values.astype(object), np.array(new, dtype=object)])
            if values.dtype.kind in "US":
                out[name] = out[name].astype(str)
        else:
            out[name] = np.concatenate([values, np.asarray(new, dtype=values.dtype)])
    return out


def _fit_dtype(labels: np.ndarray, max_label: int) -> np.ndarray:
    if max_label <= np.iinfo(labels.dtype).max:
        return labels
    return labels.astype(np.uint32 if max_label <= np.iinfo(np.uint32).max else np.uint64)


def _next_label(labels: np.ndarray, table: Table) -> int:
    in_table = int(table["label"].max()) if len(table["label"]) else 0
    return max(int(labels.max(initial=0)), in_table) + 1


def delete_instance(labels: np.ndarray, table: Mapping, label: int) -> tuple[np.ndarray, Table]:
    """Remove one instance from the label image and the table.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray
        Instance table with a ``label`` column.
    label : int
        The instance to remove.

    Returns
    -------
    labels : ndarray
        A copy with the instance's pixels set to 0.
    table : dict
        The table without the instance's row.
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    label = _check_label(labels, table, label)
    out = labels.copy()
    out[out == label] = 0
    return out, _take(table, table["label"] != label)


def replace_mask(labels: np.ndarray, table: Mapping, label: int, mask: np.ndarray) -> tuple[np.ndarray, Table]:
    """Give an instance other pixels, keeping its row (class, score, peak).

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray
        Instance table with a ``label`` column.
    label : int
        The instance, present in both.
    mask : bool ndarray, same shape as ``labels``
        Its new pixels: they take over what was there (an instance left without pixels
        loses its row), and its old pixels outside become background.

    Returns
    -------
    labels, table
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    label = _check_label(labels, table, label)
    mask = _check_mask(mask, labels)
    out = labels.copy()
    out[out == label] = 0
    out[mask] = label
    return out, _take(table, np.isin(table["label"], np.unique(out)))


def set_class(
    labels: np.ndarray, table: Mapping, label: int, class_index: int, class_name: str
) -> tuple[np.ndarray, Table]:
    """Change the class of one instance.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image (returned as is).
    table : dict of str -> (N,) ndarray
        Instance table with ``label``, ``class_index`` and ``class_name`` columns.
    label : int
        The instance to relabel; a label present in the image but not in the table gets a row.
    class_index : int
        New class index (into the model's class names).
    class_name : str
        New class name.

    Returns
    -------
    labels, table
        ``labels`` unchanged and a table with the instance's class replaced.
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    label = _check_label(labels, table, label)
    for column in ("class_index", "class_name"):
        if column not in table:
            raise ValueError(f"table must have a {column!r} column; got columns {list(table)}")
    if label not in table["label"]:
        table = _append(table, [{"label": label}])
    table = {name: values.copy() for name, values in table.items()}
    rows = table["label"] == label
    table["class_index"][rows] = int(class_index)
    if table["class_name"].dtype.kind == "U":
        table["class_name"] = table["class_name"].astype(object)
    table["class_name"][rows] = str(class_name)
    return labels, table


def merge_instances(
    labels: np.ndarray, table: Mapping, merge: Sequence[int]
) -> tuple[np.ndarray, Table]:
    """Merge instances into the first one listed.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray
        Instance table with a ``label`` column.
    merge : sequence of int
        Two or more labels; the others' pixels join ``merge[0]``.

    Returns
    -------
    labels, table
        The merged label image and the table without the absorbed instances' rows; the
        merged instance keeps the first one's class, peak and score.
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    merge = [_check_label(labels, table, label) for label in merge]
    if len(set(merge)) < 2:
        raise ValueError(f"merge needs at least two different labels; got {merge}")
    target, others = merge[0], np.array(sorted(set(merge[1:]) - {merge[0]}))
    out = labels.copy()
    out[np.isin(out, others)] = target
    return out, _take(table, ~np.isin(table["label"], others))


def _rasterize_polyline(line: np.ndarray, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The pixels of a polyline (label-image pixels) in the ``shape`` window whose first pixel is ``origin``."""
    cut = np.zeros(shape, dtype=bool)
    vertices = np.round(line).astype(np.int64) - np.asarray(origin, dtype=np.int64)  # rounded where drawn
    for (r0, c0), (r1, c1) in zip(vertices[:-1], vertices[1:]):
        rows, cols = draw_line(r0, c0, r1, c1)
        inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        cut[rows[inside], cols[inside]] = True
    return cut


def split_instance(
    labels: np.ndarray, table: Mapping, label: int, line_yx: np.ndarray
) -> tuple[np.ndarray, Table]:
    """Split one instance along a drawn line.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray
        Instance table with a ``label`` column.
    label : int
        The instance to split.
    line_yx : (M, 2) or (M, labels.ndim) float ndarray
        Vertices of a polyline in label-image pixels, ``(y, x)`` last. For a label image
        with leading axes (a stack), the leading coordinates pick the plane and must be
        the same for every vertex.

    Returns
    -------
    labels, table
        The largest piece keeps ``label`` and its row; every other piece gets a new label
        and a copy of the row (with ``peak`` set to -1 when the table has one). Pixels on
        the line go to the nearest piece.

    Raises
    ------
    ValueError
        When the line does not cut the instance into two or more 4-connected pieces (an
        instance without pixels in the line's plane included).
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    label = _check_label(labels, table, label)
    line = np.asarray(line_yx, dtype=float)
    if line.ndim != 2 or line.shape[0] < 2 or line.shape[1] not in (2, labels.ndim):
        raise ValueError(
            f"line_yx must be (M >= 2, 2) or (M, {labels.ndim}) vertices; got shape {line.shape}"
        )
    plane: tuple = ()
    if labels.ndim > 2:
        if line.shape[1] != labels.ndim:
            raise ValueError(
                f"for a {labels.ndim}-D label image line_yx needs {labels.ndim} coordinates "
                "per vertex (the leading ones pick the plane)"
            )
        leading = np.round(line[:, :-2]).astype(np.int64)
        if np.any(leading != leading[0]):
            raise ValueError(f"the line's vertices lie in different planes: {leading.tolist()}")
        plane = tuple(leading[0])
    line = line[:, -2:]

    out = labels.copy()
    view = out[plane] if plane else out
    # the instance's bounding box only: a distance transform of a whole 4096² image took seconds
    mask = view == label
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(ys):  # in the table, or on another plane of a stack, but not where the line is
        where = f" in plane {tuple(int(i) for i in plane)}" if plane else " in the label image"
        raise ValueError(f"the line does not cut instance {label} into two or more pieces: it has no pixel{where}")
    window = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    mask = mask[window]
    on_line = _rasterize_polyline(line, mask.shape, origin=(ys[0], xs[0])) & mask
    pieces, count = ndi.label(mask & ~on_line)
    if count < 2:
        raise ValueError(f"the line does not cut instance {label} into two or more pieces")
    # Line pixels join the nearest piece, so that the split loses no pixel of the instance.
    _, (rows, cols) = ndi.distance_transform_edt(pieces == 0, return_indices=True)
    pieces = np.where(on_line, pieces[rows, cols], pieces)

    areas = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable") + 1
    first_new = _next_label(labels, table)
    out = _fit_dtype(out, first_new + count - 2)
    view = (out[plane] if plane else out)[window]
    rows = np.flatnonzero(table["label"] == label)
    template = {name: values[rows[0]] for name, values in table.items()} if len(rows) else {}
    if "peak" in table:
        template["peak"] = -1
    new_rows = []
    for offset, piece in enumerate(order[1:]):
        view[pieces == piece] = first_new + offset
        new_rows.append({**template, "label": first_new + offset})
    if not len(rows):
        new_rows.append({"label": label})
    return out, _append(table, new_rows)


def remove_small(
    labels: np.ndarray, table: Mapping, min_area: int
) -> tuple[np.ndarray, Table]:
    """Remove instances with fewer than ``min_area`` pixels.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray
        Instance table with a ``label`` column.
    min_area : int
        Instances with fewer pixels (over all planes) are removed.

    Returns
    -------
    labels, table
        The label image and table without the small instances; rows whose label has no
        pixel at all go too.
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0; got {min_area}")
    out = labels.copy()
    top = int(labels.max(initial=0))
    if labels.size and labels.min() >= 0 and top <= max(labels.size, 1 << 16):
        # counted and removed by look-up: sorting a 4096² image's pixels (np.unique, np.isin) took ~1 s
        counts = np.bincount(labels.ravel(), minlength=top + 1)
        present = np.flatnonzero(counts)
        areas = counts[present]
        small = present[(areas < min_area) & (present != 0)]
        drop = np.zeros(top + 1, dtype=bool)
        drop[small] = True
        out[drop[labels]] = 0
    else:  # negative or sparse huge labels
        present, areas = np.unique(labels, return_counts=True)
        small = present[(areas < min_area) & (present != 0)]
        out[np.isin(out, small)] = 0
    keep = np.isin(table["label"], present[present != 0]) & ~np.isin(table["label"], small)
    return out, _take(table, keep)


def add_instance(
    labels: np.ndarray,
    table: Mapping,
    mask: np.ndarray,
    *,
    label: int | None = None,
    **row,
) -> tuple[np.ndarray, Table]:
    """Add an instance, or replace one's mask, painting over what was there.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray
        Instance table with a ``label`` column.
    mask : bool ndarray, same shape as ``labels``
        The instance's pixels.
    label : int, optional
        The label to use; an existing label has its pixels and row replaced. Default:
        one more than the largest label in use.
    **row
        Column values of the new row, e.g. ``class_index=3, class_name="cat", score=0.8,
        peak=5``; columns not given get NaN, -1 or ''.

    Returns
    -------
    labels, table
        Instances that lose all their pixels to the new one lose their rows too.
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    mask = _check_mask(mask, labels)
    unknown = set(row) - set(table)
    if unknown:
        raise ValueError(f"columns {sorted(unknown)} are not in the table ({list(table)})")
    label = _next_label(labels, table) if label is None else int(label)
    if label <= 0:
        raise ValueError(f"label must be positive; got {label}")
    out = _fit_dtype(labels.copy(), label)
    out[out == label] = 0
    out[mask] = label
    table = _take(table, table["label"] != label)
    table = _append(table, [{**row, "label": label}])
    present = np.unique(out)
    return out, _take(table, np.isin(table["label"], present))


def covered_instances(labels: np.ndarray, mask: np.ndarray, *, ignore: int = 0) -> dict[int, tuple[int, int]]:
    """The instances a mask paints over (as `add_instance` does), and how much of each.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    mask : bool ndarray, same shape as ``labels``
        The pixels about to be painted.
    ignore : int
        A label not to count (the instance whose mask ``mask`` replaces); 0 counts every instance.

    Returns
    -------
    dict of int -> (int, int)
        ``label -> (pixels covered, pixels of the instance)``, by label, for every instance
        that ``mask`` overlaps; an instance all of whose pixels are covered loses its row in
        `add_instance`.

    Examples
    --------
    >>> labels = np.array([[1, 1, 2, 0]])
    >>> covered_instances(labels, np.array([[False, True, True, True]]))
    {1: (1, 2), 2: (1, 1)}
    """
    labels = _check_labels(labels)
    mask = _check_mask(mask, labels)
    under = labels[mask]
    found = np.unique(under[(under != 0) & (under != ignore)])
    if not len(found):
        return {}
    areas = {int(label): int(count) for label, count in zip(*np.unique(labels[np.isin(labels, found)],
                                                                        return_counts=True))}
    return {int(label): (int(np.count_nonzero(under == label)), areas[int(label)]) for label in found}


def sync_table(labels: np.ndarray, table: Mapping, *, class_name: str = "") -> Table:
    """Make a table agree with a label image edited by hand.

    Rows whose label has no pixel are dropped; labels painted without a row get one
    (class_index -1, ``class_name``, NaN score, peak -1). Rows are sorted by label.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray
        Instance table with a ``label`` column.
    class_name : str
        The class name of the rows added for painted labels (when the table has a
        ``class_name`` column): ``""``, or ``"unknown"`` as exported tables say it.

    Returns
    -------
    dict of str -> ndarray
    """
    labels = _check_labels(labels)
    table = _as_table(table, labels)
    present = np.unique(labels)
    present = present[present != 0]
    table = _take(table, np.isin(table["label"], present))
    missing = present[~np.isin(present, table["label"])]
    table = _append(table, [{"label": int(label), "class_name": class_name} for label in missing])
    return _take(table, np.argsort(table["label"], kind="stable"))


#: The columns of a complete instance table and the value of each in a row added for a label.
INSTANCE_DEFAULTS = {"label": np.int64(0), "class_index": np.int64(-1), "class_name": "",
                     "score": np.float64(np.nan), "peak": np.int64(-1)}


def instance_table(labels: np.ndarray, table: Mapping | None = None, *, class_name: str = "",
                   class_names: Sequence[str] | None = None, index_names: Sequence[str] | None = None) -> Table:
    """A complete instance table for a label image made without one (painted, or by another tool).

    The rows of ``table`` whose label is in the image are kept (its other columns too); every
    other non-zero label gets a row (class_index -1, ``class_name``, NaN score, peak -1); the
    columns ``label, class_index, class_name, score, peak`` are added where missing.

    Parameters
    ----------
    labels : (..., H, W) int ndarray
        Instance label image.
    table : dict of str -> (N,) ndarray, optional
        What is known of the instances, with a ``label`` column.
    class_name : str
        The class name of the added rows and of rows without one.
    class_names : sequence of str, optional
        The classes ``class_index`` is a position in. Given, each row's ``class_index`` and
        ``class_name`` are made to agree: a row named with one of them gets its position, a row
        without a name (or named ``class_name``) gets the name at its ``class_index``, and any
        other row gets class_index -1 (an export writes ``class_names[class_index]``, *Learn*
        goes by the name: a pair that disagrees is two classes).
    index_names : sequence of str, optional
        With ``class_names``: the classes the given ``class_index`` is a position in, when not
        ``class_names`` (those a layer recorded before its classes changed; ``[]``: an index
        that names nothing). A row without a name gets the name at its index in them; then
        every row's ``class_index`` is its name's position in ``class_names``.

    Returns
    -------
    dict of str -> ndarray
        Sorted by label.

    Examples
    --------
    >>> labels = np.array([[0, 2], [5, 5]])
    >>> table = instance_table(labels, class_name="unknown")
    >>> table["label"].tolist(), table["class_name"].tolist()
    ([2, 5], ['unknown', 'unknown'])
    """
    labels = _check_labels(labels)
    table = _as_table(table if table is not None else {"label": np.zeros(0, np.int64)}, labels)
    if index_names is not None:
        table = _agreeing_classes(table, class_name, index_names)
        del table["class_index"]  # the names decide
    table = _agreeing_classes(table, class_name, class_names)
    return sync_table(labels, table, class_name=class_name)


def _agreeing_classes(table: Table, class_name: str, class_names: Sequence[str] | None) -> Table:
    """`instance_table`'s columns of ``table`` (its missing ones added), rows without a name
    named ``class_name``, and, given ``class_names``, class_index and class_name made to agree."""
    count = len(table["label"])
    for name, default in INSTANCE_DEFAULTS.items():
        if name not in table:
            table[name] = np.full(count, class_name if name == "class_name" else default,
                                  dtype=object if name == "class_name" else type(default))
    names = table["class_name"].astype(object)
    unnamed = np.asarray([missing_cell(value) or value == "" for value in names], bool) | (names == class_name)
    names[unnamed] = class_name
    if class_names is not None:
        index = np.asarray(table["class_index"], dtype=float)
        index = np.where(np.isfinite(index), index, -1).astype(np.int64)
        position = {str(name): i for i, name in enumerate(class_names)}
        named = np.array([position.get(str(name), -1) for name in names], dtype=np.int64)
        by_index = unnamed & (index >= 0) & (index < len(class_names))
        names[by_index] = np.asarray(class_names, dtype=object)[index[by_index]]
        index = np.where(by_index, index, np.where(unnamed, -1, named))
        table["class_index"] = index
    table["class_name"] = names
    return table
