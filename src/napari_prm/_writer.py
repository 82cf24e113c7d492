"""napari writer for Labels layers: label TIFF (with an instance CSV) or COCO JSON.

The formats are :mod:`napari_prm.io`'s; this module only maps a layer onto its exporters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import io


def sidecar_csv(path: str | Path) -> Path:
    """The instance CSV that goes with a label image: ``x_labels.tif`` -> ``x_instances.csv``."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    stem = stem[: -len("_labels")] if stem.endswith("_labels") else stem
    return path.with_name(f"{stem}_instances.csv")


def layer_table(meta: dict):
    """The instance table in a Labels layer's ``features`` (None when it has none)."""
    features = meta.get("features")
    if features is None or len(features) == 0 or "label" not in features and "index" not in features:
        return None
    table = {name: np.asarray(features[name]) for name in features.columns if name != "index"}
    if "label" not in table:
        table["label"] = np.asarray(features["index"])
    return table


def files_pixel_size(world: dict, paths) -> dict | None:
    """The pixel size (as `napari_prm.io.tiff_pixel_size` reads it, in a unit of length) that the first of
    ``paths`` records, for the label TIFF and the µm columns of the CSV of a Labels layer in pixels, as
    ``napari-prm predict`` writes them; None when the layer's ``world`` gives a pixel size in a unit of
    length (the exports write that one), when the scale of its last two axes is neither 1 nor the file's
    pixel size in µm (its pixels are not its files': a pyramid's coarser level), or when no file records one.

    napari's own reader opens a calibrated TIFF at scale 1, in pixels, and other readers put its pixel size
    in µm in the scale without a unit: a layer's world alone lost the pixel size of its image's file, and of
    a label TIFF reopened (``napari-prm predict``'s labels).

    Parameters
    ----------
    world : dict
        The layer's ``scale`` and ``units`` (one per axis).
    paths : iterable of path-like or None
        The files the layer's pixels are of, in order of preference: its image's, the label TIFF it was
        opened from; None and files other than TIFFs are passed over.
    """
    from .io.labels import _pixel_size_um

    if _pixel_size_um(world=world) is not None:
        return None
    scale = np.asarray(world["scale"] if world.get("scale") is not None else (1.0, 1.0), dtype=float)[-2:]
    for path in paths:
        if path and (pixel_size := io.tiff_pixel_size(path)) is not None \
                and (um := _pixel_size_um(pixel_size)) is not None \
                and (np.allclose(scale, 1) or np.allclose(scale, um, rtol=1e-6)):
            return pixel_size
    return None


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer to ``path``.

    Parameters
    ----------
    path : str
        ``.tif``/``.tiff``: the label image (uint16, or uint32 beyond 65535 labels; a layer in pixels
        opened from a label TIFF that records a pixel size, as ``napari-prm predict`` writes it, keeps
        that pixel size: `files_pixel_size`) and,
        when the layer has an instance table in its ``features``, ``<stem>_instances.csv``
        beside it (for a stack, its rows name their plane; a stack whose ``axis_labels`` name
        its leading axes z or t is written with axes ``ZYX`` or ``TYX``). ``.json``: a COCO
        instances file (RLE masks, class names from ``metadata["class_names"]`` or the table,
        scores; the image's ``file_name`` from ``metadata["image_file_name"]``, else the layer's
        name; the layer's scale, translate and units in its image entry, which the plugin's
        reader gives back).
    data : integer ndarray
        The layer's labels.
    meta : dict
        The layer's attributes (``features``, ``metadata``, ``name``, ``axis_labels``).

    Returns
    -------
    list of str
        The files written.
    """
    labels = np.asarray(data[0] if isinstance(data, list) else data)
    table = layer_table(meta)
    class_names = (meta.get("metadata") or {}).get("class_names")
    suffix = Path(path).suffix.lower()
    # where the layer lies (pixel size, stage position, units): the reader puts it back there
    world = {name: meta[name] for name in ("scale", "translate", "units") if meta.get(name) is not None}
    if suffix == ".json":
        if labels.ndim != 2:
            raise ValueError(f"COCO JSON holds 2-D label images; layer {meta.get('name')!r} "
                             f"has shape {labels.shape}: save it as a TIFF (with its instance "
                             "CSV, whose rows name their plane)")
        # the image the instances belong to, as the plugin records it (else the layer's name)
        image = (meta.get("metadata") or {}).get("image_file_name") or meta.get("name", "")
        written = io.export_instances(labels, table, class_names, path, overwrite=True,
                                      image_file_name=str(image), world=world)
    elif suffix in (".tif", ".tiff"):
        # a stack's axes the layer names (z, t): named in the TIFF, as the command line's
        axes = io.label_axes_from_names(meta.get("axis_labels") or ())
        # a layer in pixels opened from a label TIFF that records a pixel size (predict's) keeps it
        pixel_size = files_pixel_size(world, [(meta.get("metadata") or {}).get("source")])
        written = io.export_instances(labels, table, class_names, path, overwrite=True, world=world,
                                      pixel_size=pixel_size,
                                      axes=axes if axes is not None and len(axes) == labels.ndim else None)
        if table is not None:
            written.append(io.write_instances_csv(sidecar_csv(path), labels, table, class_names, world=world,
                                                  pixel_size=pixel_size))
    else:
        raise ValueError(f"napari-prm writes labels as .tif, .tiff or .json; got {path}")
    return [str(p) for p in written]
