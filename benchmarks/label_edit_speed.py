"""Exports and edits of a large label image: the package now vs the code it replaced.

Builds a seeded synthetic SIZE×SIZE label image (int32) with INSTANCES blobs (ellipses of
log-uniform sizes, later ones drawn over earlier ones) and a table of classes and scores, then
times, with ``time.perf_counter`` (median of REPEATS runs):

- boxes and areas of every instance (``io.tables._label_regions``): now by label value
  (``np.bincount``, ``ndimage.find_objects``) vs the replaced ``np.unique`` of every pixel;
- the RLE of every instance: ``masks.encode_rle_window`` on its bounding box vs the replaced
  ``masks.encode_rle`` of a whole-image mask each, and vs ``pycocotools.mask.encode`` alone of
  each whole-image mask (the least that approach costs); the RLEs and their areas must agree;
- ``io.labels_to_coco`` and ``io.write_instances_csv`` end to end, now vs with the replaced
  pieces put back (the COCO dicts and the CSV files must be identical);
- ``io.export_instances`` (label TIFF, COCO JSON, CSV), the Export widget's work, now only;
- ``edit.split_instance`` of the largest instance by a line across its middle: now (its bounding
  box) vs the replaced whole-image version (same labels and table);
- ``edit.remove_small``: now (look-up) vs the replaced ``np.unique`` + ``np.isin`` (same labels).

The replaced code is reconstructed here from git history (2ec8d9e, 5adb1a0, bd86212): the
package's current functions with only the replaced piece swapped back. The slow references run
OLD_REPEATS times (default 1: the old COCO path takes most of a minute at 4096²). Prints a
Markdown table, the load average at start and end, the CPU and the thread settings.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/label_edit_speed.py --out /tmp/label_edit_speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def synthetic_labels(size: int, instances: int, seed: int):
    """(size, size) int32 labels 1..instances (a few may be hidden by later blobs) and a table."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), dtype=np.int32)
    radii = np.exp(rng.uniform(np.log(4), np.log(size / 40), size=(instances, 2)))
    centres = rng.uniform(0, size, size=(instances, 2))
    for label, ((cy, cx), (ry, rx)) in enumerate(zip(centres, radii), start=1):
        y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, size)
        x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, size)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[y0:y1, x0:x1][inside] = label
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=instances + 1)[1:]) + 1
    classes = rng.integers(0, 20, size=len(present))
    table = {"label": present.astype(np.int64), "class_index": classes,
             "class_name": np.array([f"class_{c}" for c in classes], dtype=object),
             "score": rng.uniform(0, 10, size=len(present)), "peak": np.arange(len(present))}
    return labels, table, [f"class_{c}" for c in range(20)]


# --- the replaced code -------------------------------------------------------------------

def old_label_regions(labels):
    """``io.tables._label_regions`` before 2ec8d9e: ranks of every pixel by ``np.unique``."""
    import numpy as np
    from scipy import ndimage

    values, ranks, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ranks = ranks.reshape(labels.shape)
    if values.size and values[0] != 0:
        ranks = ranks + 1
        values, counts = np.r_[0, values], np.r_[0, counts]
    boxes = ndimage.find_objects(ranks)
    return {int(values[rank]): (boxes[rank - 1], int(counts[rank])) for rank in range(1, len(values))}


def whole_image_mask(window_mask, origin, shape):
    """The (H, W) uint8 Fortran-order mask of one instance, as ``labels_to_coco`` made it before 2ec8d9e."""
    import numpy as np

    mask = np.zeros(shape, dtype=np.uint8, order="F")
    top, left = origin
    mask[top:top + window_mask.shape[0], left:left + window_mask.shape[1]] = window_mask
    return mask


def old_encode(window_mask, origin, shape):
    """What ``labels_to_coco`` did before 2ec8d9e (same arguments as ``masks.encode_rle_window``):
    ``masks.encode_rle`` of a whole-image mask per instance (which compares it with 0 and
    copies it to Fortran order before ``pycocotools.mask.encode``)."""
    from napari_prm.masks import encode_rle

    return encode_rle(whole_image_mask(window_mask, origin, shape))


def pycocotools_encode(window_mask, origin, shape):
    """``pycocotools.mask.encode`` alone of a whole-image mask per instance: the least the
    replaced approach cost, without ``encode_rle``'s conversions."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(whole_image_mask(window_mask, origin, shape))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def old_split_instance(labels, table, label, line_yx):
    """``edit.split_instance`` of a 2-D label image before 5adb1a0: the whole image's mask,
    labelling and distance transform."""
    import numpy as np
    from scipy import ndimage as ndi

    from napari_prm import edit

    table = edit._as_table(table, labels)
    line = np.asarray(line_yx, dtype=float)
    out = labels.copy()
    mask = out == label
    on_line = edit._rasterize_polyline(line, mask.shape) & mask
    pieces, count = ndi.label(mask & ~on_line)
    if count < 2:
        raise ValueError(f"the line does not cut instance {label} into two or more pieces")
    _, (rows, cols) = ndi.distance_transform_edt(pieces == 0, return_indices=True)
    pieces = np.where(on_line, pieces[rows, cols], pieces)
    areas = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable") + 1
    first_new = edit._next_label(labels, table)
    out = edit._fit_dtype(out, first_new + count - 2)
    rows = np.flatnonzero(table["label"] == label)
    template = {name: values[rows[0]] for name, values in table.items()} if len(rows) else {}
    if "peak" in table:
        template["peak"] = -1
    new_rows = []
    for offset, piece in enumerate(order[1:]):
        out[pieces == piece] = first_new + offset
        new_rows.append({**template, "label": first_new + offset})
    return out, edit._append(table, new_rows)


def old_remove_small(labels, min_area):
    """The label image ``edit.remove_small`` returned before bd86212 (``np.unique``, ``np.isin``)."""
    import numpy as np

    present, areas = np.unique(labels, return_counts=True)
    small = present[(areas < min_area) & (present != 0)]
    out = labels.copy()
    out[np.isin(out, small)] = 0
    return out


# --- timing ------------------------------------------------------------------------------

def timed(function, repeats: int):
    """(median seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="label image side (default 4096)")
    parser.add_argument("--instances", type=int, default=2000, help="blobs drawn (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each current function (median)")
    parser.add_argument("--old-repeats", type=int, default=1, help="runs of each replaced function (median)")
    parser.add_argument("--min-area", type=int, default=200, help="remove_small's threshold (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table here (.md) and the figures next to it (.json)")
    args = parser.parse_args()
    if args.size < 64 or args.instances < 1 or args.repeats < 1 or args.old_repeats < 1:
        parser.error("--size must be >= 64 and --instances, --repeats, --old-repeats >= 1")

    import numpy as np
    from pycocotools import mask as coco_mask

    from napari_prm import edit, io, masks
    from napari_prm.io import coco as coco_module
    from napari_prm.io import tables as tables_module

    load_start = loadavg()
    labels, table, names = synthetic_labels(args.size, args.instances, args.seed)
    height, width = labels.shape
    rows = []  # (what, old s or None, new s, same)

    def compare(what, old, new, same):
        rows.append((what, old, new, same))
        print(f"{what}: old {old if old is None else round(old, 3)} s, new {new:.3f} s, same: {same}", flush=True)

    # boxes and areas
    new_s, regions = timed(lambda: tables_module._label_regions(labels), args.repeats)
    old_s, old_regions = timed(lambda: old_label_regions(labels), args.old_repeats)
    compare("boxes and areas of every instance", old_s, new_s, regions == old_regions)

    # the RLE of every instance, from the same boxes
    def encode_all(encode):
        return [encode(labels[window] == label, (window[0].start, window[1].start), (height, width))
                for label, (window, _) in regions.items()]

    new_s, new_rles = timed(lambda: encode_all(masks.encode_rle_window), args.repeats)
    old_s, old_rles = timed(lambda: encode_all(old_encode), args.old_repeats)
    areas = [int(coco_mask.area({"size": r["size"], "counts": r["counts"].encode()})) for r in new_rles]
    same = new_rles == old_rles and areas == [area for _, area in regions.values()]
    compare(f"RLE of every instance ({len(regions)}): encode_rle of whole-image masks", old_s, new_s, same)
    old_s, bare_rles = timed(lambda: encode_all(pycocotools_encode), args.old_repeats)
    compare("RLE of every instance: pycocotools.mask.encode alone of whole-image masks", old_s, new_s,
            bare_rles == new_rles)

    # labels_to_coco and write_instances_csv end to end, with the replaced pieces put back
    def as_before(module, **replaced):
        kept = {name: getattr(module, name) for name in replaced}

        class Restore:
            def __enter__(self):
                for name, value in replaced.items():
                    setattr(module, name, value)

            def __exit__(self, *exc):
                for name, value in kept.items():
                    setattr(module, name, value)

        return Restore()

    new_s, new_coco = timed(lambda: io.labels_to_coco(labels, table, names), args.repeats)
    with as_before(coco_module, _label_regions=old_label_regions, encode_rle_window=old_encode):
        old_s, old_coco = timed(lambda: io.labels_to_coco(labels, table, names), args.old_repeats)
    compare("labels_to_coco (COCO JSON's content)", old_s, new_s,
            json.dumps(new_coco) == json.dumps(old_coco))

    with tempfile.TemporaryDirectory() as folder:
        new_csv, old_csv = Path(folder, "new.csv"), Path(folder, "old.csv")
        new_s, _ = timed(lambda: io.write_instances_csv(new_csv, labels, table, names), args.repeats)
        with as_before(tables_module, _label_regions=old_label_regions):
            old_s, _ = timed(lambda: io.write_instances_csv(old_csv, labels, table, names), args.old_repeats)
        compare("write_instances_csv", old_s, new_s, new_csv.read_bytes() == old_csv.read_bytes())

        def export():
            return io.export_instances(labels, table, names, Path(folder, "export"),
                                       formats=["tiff", "coco", "csv"], stem="big", overwrite=True)

        new_s, written = timed(export, args.repeats)
        compare("export_instances (label TIFF + COCO JSON + CSV), now only", None, new_s, len(written) == 3)

    # split the largest instance by a horizontal line through its middle, a pixel past each side
    largest = max(regions, key=lambda label: regions[label][1])
    (ys, xs), _ = regions[largest]
    middle = (ys.start + ys.stop - 1) / 2
    line = np.array([[middle, max(xs.start - 1, 0)], [middle, min(xs.stop, width - 1)]])
    new_s, (new_labels, new_table) = timed(lambda: edit.split_instance(labels, table, largest, line), args.repeats)
    old_s, (old_labels, old_table) = timed(lambda: old_split_instance(labels, table, largest, line), args.old_repeats)
    same = np.array_equal(new_labels, old_labels) and all(
        np.array_equal(new_table[name], old_table[name]) for name in new_table)
    compare(f"split_instance (label {largest}, {regions[largest][1]} px)", old_s, new_s, same)

    new_s, (kept_labels, _) = timed(lambda: edit.remove_small(labels, table, args.min_area), args.repeats)
    old_s, old_kept = timed(lambda: old_remove_small(labels, args.min_area), args.old_repeats)
    removed = len(regions) - len(np.unique(kept_labels)) + 1
    compare(f"remove_small (min_area {args.min_area}: {removed} removed)", old_s, new_s,
            np.array_equal(kept_labels, old_kept))

    load_end = loadavg()
    try:
        import torch
        torch_threads = str(torch.get_num_threads())
    except ImportError:
        torch_threads = "not installed"
    machine = (f"{cpu_model()}, {os.cpu_count()} CPUs; load average {load_start} at start, {load_end} at end; "
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch_threads} "
               f"(unused here), numpy {np.__version__}")
    lines = [f"{args.size} × {args.size} int32 label image, {len(regions)} instances (seed {args.seed}); "
             f"median of {args.repeats} runs now, {args.old_repeats} of the replaced code.", "",
             "| step | replaced code (s) | now (s) | old / new | same result |",
             "| --- | ---: | ---: | ---: | --- |"]
    for what, old, new, same in rows:
        ratio = None if old is None else old / new
        old_text = "—" if old is None else f"{old:.3f}"
        ratio_text = "—" if ratio is None else f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×"
        lines.append(f"| {what} | {old_text} | {new:.3f} | {ratio_text} | {'yes' if same else 'NO'} |")
    lines += ["", machine]
    report = "\n".join(lines)
    print("\n" + report)
    if args.out is not None:
        args.out.write_text(report + "\n", encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps({
            "size": args.size, "instances": len(regions), "seed": args.seed, "repeats": args.repeats,
            "old_repeats": args.old_repeats, "load_start": load_start, "load_end": load_end,
            "cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch_threads,
            "rows": [{"step": what, "old_s": old, "new_s": new, "same": bool(same)}
                     for what, old, new, same in rows]}, indent=1), encoding="utf-8")
    if not all(same for *_, same in rows):
        raise SystemExit("a result differs from the replaced code's (marked NO above)")


if __name__ == "__main__":
    main()
