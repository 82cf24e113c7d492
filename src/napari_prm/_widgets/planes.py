"""A run of some planes of a stack, spliced into the result layers of the earlier runs.

A run of ``all planes`` lays a stack's results out in stack-shaped layers: a Labels layer
``(*leading, H, W)``, points with their plane coordinates, features with the plane's rows.
A run of the current plane writes into the same layout: `splice_planes` replaces that plane's
part of the earlier results and keeps every other plane's as it is (the user's corrections
there included), so that running the planes one by one, in order, ends in the layers one run
of all planes makes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .layers import PeakPRMs, Results, instance_features, point_plane


def _on_planes(coordinates: np.ndarray, planes: set, leading: int) -> np.ndarray:
    """Which rows of ``coordinates`` (data coordinates, stack axes first) lie on ``planes``."""
    return np.array([point_plane(row, leading) in planes for row in coordinates], bool)


def splice_planes(previous: Results, results: Results, planes: list[tuple[int, ...]]) -> tuple[Results, int]:
    """The results of a stack with ``planes`` replaced by a new run's.

    Parameters
    ----------
    previous : Results
        What the result layers hold now (the peaks and instances layers' data and features,
        the run's PRMs), over the whole stack.
    results : Results
        The new run of ``planes`` (`merge_predictions`, with the stack's ``leading_shape``).
    planes : list of tuple of int
        The planes the new run covers.

    Returns
    -------
    Results
        The other planes' points, feature rows, labels, PRMs and CRMs exactly as in
        ``previous``; on ``planes``, the new run's, with its peak numbers above every peak
        number in ``previous`` and its labels above every label of the other planes (run
        in plane order, the numbering is that of one run of all planes).
    int
        What was added to the new run's peak numbers.
    """
    if previous.leading_shape != results.leading_shape or previous.image_shape != results.image_shape:
        raise ValueError(f"cannot splice results of stack shape {results.leading_shape + results.image_shape} "
                         f"into {previous.leading_shape + previous.image_shape}")
    ran = {tuple(int(c) for c in plane) for plane in planes}
    leading = len(previous.leading_shape)
    keep = ~_on_planes(np.asarray(previous.points, float).reshape(-1, leading + 2), ran, leading)
    old_peaks = previous.point_features["peak"].to_numpy().astype(np.int64)
    peak_offset = max(len(previous.prms), int(old_peaks.max(initial=-1)) + 1)

    on_ran = np.zeros(previous.leading_shape, bool)
    for plane in ran:
        on_ran[plane] = True
    elsewhere = previous.labels[~on_ran]
    present = np.unique(elsewhere)
    old_table = previous.instance_features
    old_labels = old_table["label"].to_numpy().astype(np.int64)
    only_on_ran = np.isin(old_labels, np.unique(previous.labels[on_ran])) & ~np.isin(old_labels, present)
    kept_table = old_table[~only_on_ran]
    label_offset = max(int(elsewhere.max(initial=0)), int(kept_table["label"].max()) if len(kept_table) else 0)

    new_labels = results.labels[on_ran].astype(np.int64)
    top = label_offset + int(new_labels.max(initial=0))
    dtype = previous.labels.dtype if top <= np.iinfo(previous.labels.dtype).max else np.dtype(np.uint32)
    labels = previous.labels.astype(dtype, copy=True)
    labels[on_ran] = np.where(new_labels > 0, new_labels + label_offset, 0)

    new_table = results.instance_features.copy()
    new_table["label"] = new_table["label"].to_numpy().astype(np.int64) + label_offset
    new_table["peak"] = np.where(new_table["peak"] >= 0, new_table["peak"] + peak_offset, new_table["peak"])
    table = pd.concat([kept_table, new_table], ignore_index=True) if len(kept_table) else new_table
    table = instance_features({name: table[name].to_numpy() for name in table.columns if name != "index"})

    new_rows = results.point_features.copy()
    new_rows["peak"] = new_rows["peak"].to_numpy() + peak_offset
    new_rows["label"] = np.where(new_rows["label"] > 0, new_rows["label"] + label_offset, 0)
    kept_rows = previous.point_features[keep]
    point_features = (pd.concat([kept_rows, new_rows], ignore_index=True) if len(kept_rows)
                      else new_rows.reset_index(drop=True))

    maps = list(previous.prms.maps) + [None] * (peak_offset - len(previous.prms))
    for peak in old_peaks[~keep]:
        if 0 <= peak < len(maps):
            maps[peak] = None  # the replaced plane's PRMs: nothing shows them any more
    prm_planes = np.zeros((peak_offset, leading), np.int64)
    known = min(len(previous.prm_planes), peak_offset)
    prm_planes[:known] = previous.prm_planes[:known]
    kept_peaks = set(old_peaks[keep].tolist())
    merged_into = {peak: into for peak, into in previous.merged_into.items() if peak in kept_peaks}
    merged_into.update({peak + peak_offset: into + peak_offset for peak, into in results.merged_into.items()})

    crms = {}
    for name in dict.fromkeys([*previous.crms, *results.crms]):
        shape = next(iter(results.crms.values())).shape if results.crms else previous.crms[name].shape
        stack = previous.crms.get(name)
        stack = np.zeros(shape, np.float32) if stack is None or stack.shape != shape else stack.copy()
        stack[on_ran] = results.crms[name][on_ran] if name in results.crms else 0
        crms[name] = stack

    combined = Results(
        class_names=list(results.class_names),
        leading_shape=results.leading_shape,
        image_shape=results.image_shape,
        points=np.concatenate([np.asarray(previous.points, float).reshape(-1, leading + 2)[keep],
                               np.asarray(results.points, float).reshape(-1, leading + 2)]),
        point_features=point_features,
        prms=PeakPRMs(results.image_shape, maps + list(results.prms.maps)),
        prm_planes=np.concatenate([prm_planes, np.asarray(results.prm_planes, np.int64).reshape(-1, leading)]),
        labels=labels,
        instance_features=table,
        crms=crms,
        sub_pixel_locating_factor=results.sub_pixel_locating_factor,
        notes=list(results.notes),
        merged_into=merged_into,
    )
    return combined, peak_offset
