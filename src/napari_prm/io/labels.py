"""Label images: TIFF (uint16/uint32, any number of dimensions) and PNG (8/16-bit)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import tifffile

from .atomic import atomic_write
from .images import _read_array, read_array

__all__ = ["write_label_image", "read_label_image", "tiff_pixel_size", "read_label_world",
           "read_label_class_names"]

#: Keys of a label TIFF's JSON description (tifffile's shaped metadata) and of a label PNG's
#: text chunks (JSON values) holding the napari layer's ``scale``, ``translate`` and ``units``
#: it was exported from, and the model's class names.
_WORLD_KEYS = {"scale": "napari_scale", "translate": "napari_translate", "units": "napari_units"}
_CLASS_NAMES_KEY = "napari_class_names"


def _label_metadata(world: dict | None, ndim: int, class_names=None) -> dict:
    """The ``scale``/``translate``/``units`` of ``world`` that fit ``ndim`` axes (units only
    when one is not napari's default ``pixel``) and the ``class_names``, as file metadata."""
    metadata = {}
    for name, key in _WORLD_KEYS.items():
        values = (world or {}).get(name)
        if values is None:
            continue
        if name == "units":
            values = [str(v) for v in np.ravel(np.asarray(values, dtype=object))]
            if len(values) == ndim and any(v != "pixel" for v in values):
                metadata[key] = values
            continue
        values = [float(v) for v in np.asarray(values, dtype=float).ravel()]
        if len(values) == ndim and all(np.isfinite(values)):
            metadata[key] = values
    if class_names is not None and len(class_names):
        metadata[_CLASS_NAMES_KEY] = [str(name) for name in class_names]
    return metadata


def _read_metadata(path: str | os.PathLike) -> tuple[dict, int]:
    """The metadata `write_label_image` recorded in a label TIFF or PNG, and its number of axes
    (``({}, 0)`` for other files, or when unreadable: the label reader reports that)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                return _tiff_metadata(tif)
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                text = dict(getattr(image, "text", {}) or {})
            recorded = {}
            for key in (*_WORLD_KEYS.values(), _CLASS_NAMES_KEY):
                if key in text:
                    try:
                        recorded[key] = json.loads(text[key])
                    except ValueError:
                        continue
            return recorded, 2
    except Exception:  # noqa: BLE001 -- unreadable here: the label reader reports it
        pass
    return {}, 0


def _tiff_metadata(tif: tifffile.TiffFile) -> tuple[dict, int]:
    """`_read_metadata` of an open TIFF (``({}, 0)`` when unreadable)."""
    try:
        recorded = dict((tif.shaped_metadata or ({},))[0])
        imagej = tif.imagej_metadata or {}
        for key in (_CLASS_NAMES_KEY, *_WORLD_KEYS.values()):
            if key in imagej:  # an ImageJ label TIFF keeps them as JSON strings
                try:
                    recorded[key] = json.loads(imagej[key])
                except (TypeError, ValueError):
                    pass
        return recorded, len(tif.series[0].shape)
    except Exception:  # noqa: BLE001 -- unreadable here: the label reader reports it
        return {}, 0


def _exported_by_napari_prm(recorded: dict, ndim: int) -> bool:
    """Whether a file's metadata (`_read_metadata`'s) records a layer's scale, translate or units, or
    class names: a label image napari-prm exported (`read_label_world`, `read_label_class_names`)."""
    return bool(_recorded_world(recorded, ndim)) or _class_names_of(recorded) is not None


def read_label_world(path: str | os.PathLike) -> dict:
    """The napari ``scale``, ``translate`` and ``units`` a label TIFF or PNG was exported with
    (`write_label_image`'s ``world``), as a dict of the ones it records (empty for other files).

    Parameters
    ----------
    path : path-like
        A label TIFF or PNG.
    """
    recorded, ndim = _read_metadata(path)
    return _recorded_world(recorded, ndim)


def _recorded_world(recorded, ndim: int) -> dict:
    """The ``scale``, ``translate`` and ``units`` of ``ndim`` axes that metadata `_label_metadata`
    made (a file's, or a COCO image entry's) records, as a dict of those it records."""
    world = {}
    for name, key in _WORLD_KEYS.items():
        try:
            values = tuple((str if name == "units" else float)(v) for v in recorded.get(key) or ())
        except (TypeError, ValueError):
            continue
        if len(values) == ndim and (name == "units" or all(np.isfinite(values))):
            world[name] = values
    return world


def read_label_class_names(path: str | os.PathLike) -> list[str] | None:
    """The class names a label TIFF or PNG was exported with (`write_label_image`'s
    ``class_names``: all the model's classes, as the layer's ``metadata["class_names"]``), or
    None when it records none.

    Parameters
    ----------
    path : path-like
        A label TIFF or PNG.
    """
    return _class_names_of(_read_metadata(path)[0])


def _class_names_of(recorded: dict) -> list[str] | None:
    """The class names a file's metadata (`_read_metadata`'s) records, or None."""
    names = recorded.get(_CLASS_NAMES_KEY)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None
    return names


#: ImageJ's length units, in centimetres: a label TIFF that cannot be an ImageJ one (uint32, or
#: not 2-D) keeps such a pixel size in its resolution tags, in pixels per centimetre.
_IMAGEJ_UNIT_CM = {"nm": 1e-7, "um": 1e-4, "µm": 1e-4, "μm": 1e-4, "\\u00B5m": 1e-4, "micron": 1e-4,
                   "microns": 1e-4, "mm": 0.1, "cm": 1.0, "m": 100.0, "meter": 100.0, "inch": 2.54}


def _standard_resolution(pixel_size: dict) -> tuple[tuple[float, float], object]:
    """``pixel_size``'s resolution and unit as standard TIFF tags: an ImageJ unit of length
    becomes pixels per centimetre; any other keeps its numbers and tag."""
    x, y = pixel_size["resolution"]
    per_cm = _IMAGEJ_UNIT_CM.get(str(pixel_size.get("imagej_unit") or "").strip())
    if per_cm is None:
        return (x, y), pixel_size["unit"]
    return (x / per_cm, y / per_cm), tifffile.RESUNIT.CENTIMETER


#: napari's (pint's) names of units of length, in centimetres.
_NAPARI_UNIT_CM = {"nanometer": 1e-7, "micrometer": 1e-4, "millimeter": 0.1, "centimeter": 1.0, "meter": 100.0}


def _world_resolution(metadata: dict) -> tuple[float, float] | None:
    """The TIFF resolution (pixels per centimetre, x then y) of a label image whose recorded
    ``world`` (`_label_metadata`) gives its last two axes a scale in one unit of length; else None."""
    units, scale = metadata.get(_WORLD_KEYS["units"]), metadata.get(_WORLD_KEYS["scale"])
    if not units or not scale or len(set(units[-2:])) != 1 or units[-1] not in _NAPARI_UNIT_CM:
        return None
    per_cm = _NAPARI_UNIT_CM[units[-1]]
    y, x = scale[-2:]
    if not (x > 0 and y > 0):
        return None
    return 1 / (x * per_cm), 1 / (y * per_cm)


#: TIFF resolution units of length, in micrometres; an inch is left out (`_pixel_size_um`).
_RESUNIT_UM = {tifffile.RESUNIT.CENTIMETER: 1e4, tifffile.RESUNIT.MILLIMETER: 1e3, tifffile.RESUNIT.MICROMETER: 1.0}


def _pixel_size_um(pixel_size: dict | None = None, world: dict | None = None) -> tuple[float, float] | None:
    """The height and width of a pixel in micrometres, as ``(y, x)``, when known; else None.

    Known from ``pixel_size`` (`tiff_pixel_size` of the image's file: an ImageJ or OME unit of
    length, or TIFF resolution tags in pixels per centimetre, millimetre or micrometre), else from
    ``world`` (a napari layer's ``scale`` and ``units``: its last two axes in a unit of length,
    ``micrometer``, ...), as `write_label_image` takes them. Pixels per inch, the unit TIFF
    writers put by default (72 or 300 dpi of an image editor or a scanner, a print size rather
    than a calibration), and sizes without a unit give None.

    Parameters
    ----------
    pixel_size : dict, optional
        As `tiff_pixel_size` returns it.
    world : dict, optional
        ``scale`` and ``units``, one per axis (the last two are the rows and columns).
    """
    if pixel_size:
        (x, y), unit = _standard_resolution(pixel_size)
        um = _RESUNIT_UM.get(unit)
        if um is not None and x > 0 and y > 0 and np.isfinite(x) and np.isfinite(y):
            return um / float(y), um / float(x)
        return None
    scale = (world or {}).get("scale")
    if scale is None:
        return None
    resolution = _world_resolution(_label_metadata(world, len(np.ravel(np.asarray(scale, dtype=object)))))
    if resolution is None:
        return None
    x, y = resolution  # pixels per centimetre
    return 1e4 / y, 1e4 / x


#: ImageJ's names of napari's (pint's) units of length (an ImageJ description is ASCII).
_IMAGEJ_UNIT_NAME = {"nanometer": "nm", "micrometer": "um", "millimeter": "mm", "centimeter": "cm", "meter": "m"}
#: napari's (pint's) units of time, in seconds (ImageJ's frame interval is in seconds).
_NAPARI_UNIT_S = {"millisecond": 1e-3, "second": 1.0, "minute": 60.0, "hour": 3600.0}


def _world_stack_pixel_size(metadata: dict, ndim: int) -> dict | None:
    """The ImageJ pixel size (as `tiff_pixel_size` gives one) of a label stack whose recorded
    ``world`` (`_label_metadata`) is a ZYX stack in units of length (the z spacing in the rows' unit)
    or a TYX one in a unit of time then length (the frame interval in seconds), so that Fiji sees
    its voxel size or frame interval; None for other labels (2-D ones keep `_world_resolution`)."""
    units, scale = metadata.get(_WORLD_KEYS["units"]), metadata.get(_WORLD_KEYS["scale"])
    if ndim != 3 or not units or not scale or (resolution := _world_resolution(metadata)) is None:
        return None
    per_cm = _NAPARI_UNIT_CM[units[-1]]
    if units[0] in _NAPARI_UNIT_CM:
        planes = {"plane_axis": "Z", "spacing": round(scale[0] * _NAPARI_UNIT_CM[units[0]] / per_cm, 12)}
    elif units[0] in _NAPARI_UNIT_S:
        planes = {"plane_axis": "T", "finterval": scale[0] * _NAPARI_UNIT_S[units[0]]}
    else:
        return None
    if not scale[0] > 0:
        return None
    return {"resolution": (resolution[0] * per_cm, resolution[1] * per_cm), "unit": tifffile.RESUNIT.NONE,
            "imagej_unit": _IMAGEJ_UNIT_NAME[units[-1]], **planes}


def tiff_pixel_size(path: str | os.PathLike) -> dict | None:
    """The pixel size a TIFF records, to give the label image written from it; else None.

    Returns ``{"resolution": (x, y), "unit": RESUNIT}`` (pixels per unit, from the first
    page's XResolution, YResolution and ResolutionUnit tags) plus ``"imagej_unit"`` (e.g.
    ``"um"``) when ImageJ metadata names one, and for an ImageJ stack of z-planes or time
    points (``ZYX``, ``TYX``, of gray or RGB planes: ``ZYXS``, ``TYXS``) ``"plane_axis"``
    (``"Z"`` or ``"T"``) and the interval between its planes it records (``"spacing"`` or
    ``"finterval"``). An OME-TIFF records its pixel size in its OME-XML instead
    (``PhysicalSizeX``, ``PhysicalSizeY`` and their unit, µm by default), usually without those
    tags: that one is returned then, as pixels per ``"imagej_unit"``, and for an OME stack of
    z-planes or time points (the same axes) with its ``"plane_axis"`` and ``"spacing"`` or
    ``"finterval"`` as an ImageJ stack's.
    None for other files, for a TIFF without either, or one that records only the default 1
    pixel per unit without a unit.

    Parameters
    ----------
    path : path-like
        The image file; only ``.tif`` and ``.tiff`` files are read.
    """
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            return _pixel_size_of(tif)
    except Exception:  # noqa: BLE001 -- no pixel size is known, the labels are written without
        return None


def _pixel_size_of(tif: tifffile.TiffFile) -> dict | None:
    """`tiff_pixel_size` of an open TIFF."""
    try:
        page = tif.pages.first
        x, y = page.get_resolution()
        unit = page.resolutionunit
        imagej_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
        ome = _ome_pixel_size(tif.ome_metadata, _series_axes(tif)) if tif.is_ome else None
    except Exception:  # noqa: BLE001 -- no pixel size is known, the labels are written without
        return None
    if not (np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0):
        return ome
    if (x, y) == (1, 1) and unit == tifffile.RESUNIT.NONE and not imagej_unit:
        return ome
    size = {"resolution": (float(x), float(y)), "unit": unit}
    if imagej_unit:
        size["imagej_unit"] = str(imagej_unit)
        size.update(_imagej_planes_of(tif))
    return size


#: The ImageJ key of the interval between a stack's planes, by the planes' axis.
_IMAGEJ_INTERVAL = {"Z": "spacing", "T": "finterval"}


def _plane_axis(axes: str) -> str:
    """The axis of a stack of z-planes or time points, by tifffile's axes of its series: ``"Z"``
    for ``ZYX`` (gray planes) or ``ZYXS`` (RGB planes), ``"T"`` for ``TYX`` or ``TYXS``; else ``""``."""
    return axes[0] if axes.removesuffix("S") in ("ZYX", "TYX") else ""


def _imagej_planes_of(tif: tifffile.TiffFile) -> dict:
    """What an ImageJ stack of z-planes or time points, gray or RGB (axes ``ZYX``, ``TYX``,
    ``ZYXS`` or ``TYXS``), says of its planes, for its label stack: ``{"plane_axis": "Z",
    "spacing": 0.29}`` (µm between z-planes, or ``"T"`` and ``"finterval"``, the seconds between
    frames, when recorded); else nothing."""
    plane_axis = _plane_axis(_series_axes(tif))
    if not plane_axis:
        return {}
    planes = {"plane_axis": plane_axis}
    key = _IMAGEJ_INTERVAL[plane_axis]
    try:
        interval = float((tif.imagej_metadata or {}).get(key, "nan"))
    except (TypeError, ValueError):
        interval = float("nan")
    if np.isfinite(interval) and interval > 0:
        planes[key] = interval
    return planes


def _series_axes(tif: tifffile.TiffFile) -> str:
    """tifffile's axes of an open TIFF's first series ("" when they cannot be read)."""
    try:
        return str(tif.series[0].axes)
    except Exception:  # noqa: BLE001 -- no axes known: the planes are written without
        return ""


#: OME's units of time, in seconds (``TimeIncrementUnit``; an ImageJ ``finterval`` is in seconds).
_OME_TIME_S = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}


def _ome_pixel_size(ome_xml: str | None, axes: str = "") -> dict | None:
    """`tiff_pixel_size`'s answer from an OME-XML's first ``Pixels``: its physical pixel size in a
    unit of length `write_label_image` knows (µm when the file names none, as OME's default).

    For a stack of z-planes or time points (tifffile's ``axes`` of the series ``ZYX`` or ``TYX``,
    of gray or RGB planes: ``ZYXS``, ``TYXS``) also ``"plane_axis"`` and, when recorded, the
    interval between its planes as an ImageJ file keeps it: ``"spacing"`` (``PhysicalSizeZ``,
    in the unit of the pixel size) or ``"finterval"`` (``TimeIncrement``, in seconds); so its
    label stack is an ImageJ ``ZYX`` or ``TYX`` stack as that of an ImageJ stack is."""
    import xml.etree.ElementTree as ElementTree

    if not ome_xml:
        return None
    pixels = next((element for element in ElementTree.fromstring(ome_xml).iter()
                   if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes, units = [], set()
    for axis in ("X", "Y"):
        try:
            sizes.append(float(pixels.get(f"PhysicalSize{axis}", "nan")))
        except ValueError:
            return None
        units.add(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
    if len(units) != 1 or not all(np.isfinite(size) and size > 0 for size in sizes):
        return None
    (unit,) = units
    if unit not in _IMAGEJ_UNIT_CM:  # a unit that is not a length (or one we cannot name)
        return None
    size = {"resolution": (1 / sizes[0], 1 / sizes[1]), "unit": tifffile.RESUNIT.NONE,
            # an ImageJ description is ASCII: "um" for µm, as ImageJ itself reads it
            "imagej_unit": unit.replace("µ", "u").replace("μ", "u")}
    plane_axis = _plane_axis(axes)
    if plane_axis:
        size["plane_axis"] = plane_axis
        interval = (_ome_number(pixels, "PhysicalSizeZ", "µm", _IMAGEJ_UNIT_CM, _IMAGEJ_UNIT_CM[unit])
                    if plane_axis == "Z" else _ome_number(pixels, "TimeIncrement", "s", _OME_TIME_S, 1.0))
        if interval is not None:
            size[_IMAGEJ_INTERVAL[plane_axis]] = interval
    return size


def _ome_number(pixels, name: str, default_unit: str, units: dict, per: float) -> float | None:
    """The positive value of the attribute ``name`` of an OME ``Pixels`` element, in units of ``per``
    (its unit ``<name>Unit``, else ``default_unit``, found in ``units``); None when it is not there,
    not a positive number, or in a unit not in ``units``."""
    try:
        value = float(pixels.get(name, "nan"))
    except ValueError:
        return None
    scale = units.get(pixels.get(f"{name}Unit", default_unit))
    if scale is None or not (np.isfinite(value) and value > 0):
        return None
    return value * scale / per


#: The names of a label stack's leading axes (napari's axis labels, any case) that name tifffile axes.
_AXIS_NAME_CODES = {"z": "Z", "t": "T", "time": "T"}


def label_axes_from_names(names) -> str | None:
    """The axes of a label stack, as `write_label_image`'s ``axes``, from the names of its axes.

    Parameters
    ----------
    names : sequence of str
        One name per axis (a napari layer's ``axis_labels``): the leading axes named ``z`` or
        ``t`` (``time``), in any case; the last two ``y`` and ``x``, or unnamed (napari's
        default names, ``"-2"`` and ``"-1"``: a label image's last two axes are its rows and
        columns).

    Returns
    -------
    str or None
        ``"ZYX"``, ``"TYX"``, ``"TZYX"``, ...; None for 2-D labels, or when a leading axis is
        unnamed or named otherwise, or two axes are named alike (tifffile then names the
        leading axes ``Q``, unnamed).
    """
    names = [str(name).strip().lower() for name in names]
    if len(names) < 3:
        return None
    unnamed = [re.fullmatch(r"-?\d+", name) is not None or not name for name in names]
    if any(not unnamed[i] and names[i] != letter for i, letter in ((-2, "y"), (-1, "x"))):
        return None
    leading = [_AXIS_NAME_CODES.get(name) for name in names[:-2]]
    if None in leading or len(set(leading)) != len(leading):
        return None
    return "".join(leading) + "YX"


#: napari's axis labels of the tifffile axes a label stack records: `label_axes_from_names` read backwards.
_AXIS_CODE_NAMES = {"Z": "z", "T": "t", "Y": "y", "X": "x"}


def _recorded_axis_labels(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The napari ``axis_labels`` of the axes a label TIFF stack records (``("z", "y", "x")`` for
    ``ZYX``: `write_label_image`'s ``axes``, an ImageJ or OME stack's), None for a 2-D image, a PNG, a
    stack whose axes are unnamed (tifffile's ``Q``) or named otherwise, or an unreadable file."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            axes = _series_axes(tif)
    except Exception:  # noqa: BLE001 -- unreadable here: the label reader reports it
        return None
    return _axis_labels_of(axes)


def _axis_labels_of(axes: str) -> tuple[str, ...] | None:
    """`_recorded_axis_labels` of a TIFF whose first series has tifffile's ``axes``."""
    if len(axes) < 3 or not axes.endswith("YX") or any(code not in _AXIS_CODE_NAMES for code in axes) \
            or len(set(axes)) != len(axes):
        return None
    return tuple(_AXIS_CODE_NAMES[code] for code in axes)


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
                      overwrite: bool = True, pixel_size: dict | None = None,
                      world: dict | None = None, class_names=None, axes: str | None = None) -> Path:
    """Write a label image as TIFF (uint16 or uint32) or PNG (8- or 16-bit).

    Parameters
    ----------
    path : path-like
        ``.tif``/``.tiff`` (any number of dimensions >= 2, zlib-compressed) or ``.png``
        (2-D only, labels up to 65535).
    labels : int ndarray
        0 is background.
    overwrite : bool
        Replace an existing file.
    pixel_size : dict, optional
        A TIFF's pixel size, as `tiff_pixel_size` reads it from the image the labels belong
        to: written into a TIFF, ignored for a PNG. A uint16 2-D TIFF keeps an ImageJ unit
        (``"imagej_unit"``) as an ImageJ file, and so does a uint16 (N, H, W) stack of an
        ImageJ ``ZYX`` or ``TYX`` stack's planes (``"plane_axis"``, with its ``"spacing"`` or
        ``"finterval"``); a uint32 or other n-D one, which ImageJ cannot hold as such, keeps an
        ImageJ length unit in its resolution tags as pixels per centimetre (an unknown unit
        keeps the numbers without it).
    world : dict, optional
        The napari layer's ``scale``, ``translate`` and ``units`` (one value per axis),
        recorded in a TIFF's description (an ImageJ one's too, as JSON strings) or a PNG's text
        chunks for `read_label_world` (napari-prm's reader gives them back). Without a
        ``pixel_size``, a TIFF whose last two axes have a scale in one unit of length
        (``micrometer``, ...) also gets it as its resolution tags, in pixels per centimetre, for
        Fiji and other TIFF readers; a uint16 (N, H, W) stack whose first axis is in a unit of
        length or time is written as an ImageJ ``ZYX`` or ``TYX`` stack in the rows' unit, with
        its z spacing or frame interval (seconds), which Fiji reads as the voxel depth or
        frame interval.
    class_names : sequence of str, optional
        All the classes (the layer's ``metadata["class_names"]``), recorded in the same
        place for `read_label_class_names` (in an ImageJ file, as a key of its description).
    axes : str, optional
        The names of the labels' axes, tifffile's codes ending in ``YX`` (``"ZYX"``, ``"TYX"``: an
        image stack's, `napari_prm.io.ImageStack.label_axes`), written into a TIFF so that readers
        (tifffile, napari's, Fiji's for an ImageJ file) name them; ignored for a PNG. Default: a
        3-D stack's ``pixel_size["plane_axis"]`` then ``YX``, else none (tifffile names a 3-D
        stack's first axis ``Q``, unnamed).

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
    if axes is not None:
        axes = str(axes).upper()
        if len(axes) != labels.ndim or not axes.endswith("YX") or len(set(axes)) != len(axes) \
                or not axes.isalpha() or not axes.isascii():
            raise ValueError(f"axes: expected {labels.ndim} distinct axis letters ending in YX (e.g. "
                             f"{'ZYX' if labels.ndim == 3 else 'YX'}), one per axis of the labels of shape "
                             f"{labels.shape}, got {axes!r}")
    if suffix == ".png":
        if dtype is not np.uint16:
            raise ValueError(f"cannot write {path}: PNG holds labels up to 65535, the "
                             f"largest label is {labels.max()}; write a TIFF instead")
        from PIL import Image, PngImagePlugin

        small = labels.size == 0 or int(labels.max()) <= 255
        info = PngImagePlugin.PngInfo()
        for key, value in _label_metadata(world, 2, class_names).items():
            info.add_itxt(key, json.dumps(value))  # UTF-8: class names of any language
        with atomic_write(path, overwrite=overwrite) as temp:
            Image.fromarray(labels.astype(np.uint8 if small else np.uint16)).save(temp, format="PNG", pnginfo=info)
    else:
        extra = {}
        metadata = _label_metadata(world, labels.ndim, class_names)
        if pixel_size is None and dtype is np.uint16:  # a layer's ZYX / TYX stack: ImageJ's, for Fiji
            pixel_size = _world_stack_pixel_size(metadata, labels.ndim)
        imagej_unit = str((pixel_size or {}).get("imagej_unit") or "")
        # a stack of an ImageJ stack's planes (z-planes or time points) is one too, with their interval
        plane_axis = (pixel_size or {}).get("plane_axis") if labels.ndim == 3 else None
        if axes is None:
            axes = f"{plane_axis}YX" if plane_axis else None
        elif labels.ndim == 3:  # the axes given name the planes
            plane_axis = axes[0] if axes[0] in _IMAGEJ_INTERVAL else None
        if axes is not None and axes != "YX":  # tifffile's shaped description names them
            metadata = {"axes": axes, **metadata}
        if metadata:
            extra = {"metadata": metadata}
        if (imagej_unit and imagej_unit.isascii() and dtype is np.uint16
                and (labels.ndim == 2 or plane_axis in _IMAGEJ_INTERVAL)):
            names = metadata.get(_CLASS_NAMES_KEY)  # an ImageJ description holds strings: JSON, ASCII
            planes = {}
            if plane_axis:
                interval = _IMAGEJ_INTERVAL[plane_axis]
                planes = {"axes": f"{plane_axis}YX",
                          **({interval: pixel_size[interval]} if interval in pixel_size else {})}
            world_keys = {key: json.dumps(metadata[key]) for key in _WORLD_KEYS.values() if key in metadata}
            extra = {"resolution": tuple(pixel_size["resolution"]), "imagej": True,
                     "metadata": {"unit": pixel_size["imagej_unit"], **planes, **world_keys,
                                  **({_CLASS_NAMES_KEY: json.dumps(names)} if names else {})}}
        elif pixel_size:
            resolution, unit = _standard_resolution(pixel_size)
            extra = {**extra, "resolution": resolution, "resolutionunit": unit}
        elif _world_resolution(metadata) is not None:  # a layer's pixel size, for Fiji and other readers
            extra = {**extra, "resolution": _world_resolution(metadata),
                     "resolutionunit": tifffile.RESUNIT.CENTIMETER}
        with atomic_write(path, overwrite=overwrite) as temp:
            tifffile.imwrite(temp, labels.astype(dtype), compression="zlib",
                             photometric="minisblack", **extra)
    return path


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a label image written by `write_label_image` (or any integer TIFF/PNG; a palette
    PNG, as PASCAL VOC's ``SegmentationObject/<id>.png``, gives its palette indices).

    Parameters
    ----------
    path : path-like
        A TIFF or PNG file.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or does not hold integer labels.
    """
    path = Path(path)
    return _checked_labels(path, read_array(path, what="label image", indices=True))


def _checked_labels(path: Path, labels) -> np.ndarray:
    """The array read from the label image ``path``; ValueError when it holds no integer labels."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim < 2:
        raise ValueError(f"{path} is not a label image: expected integers with at least "
                         f"2 dimensions, got dtype {labels.dtype} shape {labels.shape}")
    return labels


def _read_label_file(path: str | os.PathLike) -> tuple[np.ndarray, dict, int, tuple[str, ...] | None]:
    """`read_label_image`'s labels and what the file records: `_read_metadata`'s metadata and number
    of axes (for `_recorded_world`, `_class_names_of`) and `_recorded_axis_labels`, a TIFF opened
    once for all of them (napari-prm's napari reader)."""
    path = Path(path)
    labels, recorded = _read_array(path, what="label image", indices=True,
                                   tiff=lambda tif: (*_tiff_metadata(tif), _series_axes(tif)))
    labels = _checked_labels(path, labels)
    if recorded is not None:  # read as a TIFF
        metadata, ndim, axes = recorded
        return labels, metadata, ndim, _axis_labels_of(axes)
    if path.suffix.lower() in (".tif", ".tiff"):  # a PNG or JPEG so named: no TIFF metadata, as tifffile cannot open it
        return labels, {}, 0, None
    return labels, *_read_metadata(path), None
