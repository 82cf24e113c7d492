"""Between napari layers and arrays: image planes in, PRM results out as layer data.

The widgets read planes of an image layer here, hand them to :func:`napari_prm.predict`,
and turn the :class:`~napari_prm.predict.Prediction` of each plane into the data and
keyword arguments of three layers (peaks, PRMs, instances) in the image's world frame.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.paths import image_stem
from ..io.prediction import stack_labels
from ..peaks import RUNNERS_UP
from ..predict import Prediction, crm_to_image
from ..predictor import cap_note
from ..scaled import ScaledStack, split_index
from .marks import (  # noqa: F401  (layer_names and the suffixes: where the widgets import them)
    INSTANCES_SUFFIX,
    KEPT_SUFFIX,
    MARKER,
    ROLES,
    find_result,
    find_results,
    is_marked,
    layer_id,
    layer_names,
    mark,
    marked_image,
    marker_of,
    remarked,
)

#: Colours of the classes' peaks, cycled in order of first appearance (matplotlib tab10).
CLASS_COLORS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]
#: Columns of the peaks layer's features: each peak's class and values, its number (slice of
#: the PRM layer) and instance label, then the classes whose peaks at the same place it
#: suppressed (``runner_up_1`` strongest; "" and NaN where none), and whether the user placed
#: (added or moved) it by hand (`HAND_PLACED`).
RUNNER_UP_COLUMNS = tuple(column for rank in range(1, RUNNERS_UP + 1)
                          for column in (f"runner_up_{rank}", f"runner_up_{rank}_value"))
#: The peaks layer's column marking a point added or moved by hand: True for those, False for
#: the model's peaks. A *Run* or *Re-threshold* of the same image keeps such points.
HAND_PLACED = "hand_placed"
POINT_COLUMNS = ("class_name", "class_index", "peak_value", "class_score", "peak", "label",
                 *RUNNER_UP_COLUMNS, HAND_PLACED)
#: The layer transforms a result layer takes from its image (`world_kwargs`).
WORLD_TRANSFORMS = ("scale", "translate", "rotate", "shear", "affine")
#: What else a result layer takes from its image: the units of its axes (µm, s) and their names.
WORLD_LABELS = ("units", "axis_labels")
#: The name of the PRM layer's leading axis (one slice per peak), as the dims slider shows it.
PEAK_AXIS_LABEL = "peak"
INSTANCE_COLUMNS = ("index", "label", "class_index", "class_name", "score", "peak")
#: The longest side (pixels) of the pyramid level a run reads of a 2-D multiscale image
#: (`run_level`): the finest level within it. The network sees 448 px and the built-in proposals
#: about 320 px, so a finer level costs memory and time (level 0 of a slide: gigabytes) for nothing.
MAX_RUN_SIDE = 4096
#: A non-RGB layer whose last axis is this short, under two longer ones, is an (H, W, C) image
#: of channels (`check_image_layer` refuses it), not H planes a few pixels wide.
MAX_CHANNELS = 4


def is_result_image(viewer, layer) -> bool:
    """Whether the Image ``layer`` is a run's PRMs or CRM layer of an image layer of ``viewer``
    (marked so, whatever its name; unmarked, named ``<image> PRMs`` or ``<image> CRM <class>``):
    the widget does not offer it as an image to run on."""
    from napari.layers import Image

    if marker_of(layer):
        return marker_of(layer).get("role") in ("prms", "crm")
    for image in viewer.layers:
        if image is layer or not isinstance(image, Image):
            continue
        names = layer_names(image.name)
        if layer.name == names["prms"] or layer.name.startswith(names["crm"]):
            return True
    return False


#: Where napari lists the plugin's sample images: File > Open Sample > the manifest's display name.
SAMPLE_MENU = "Peak Response Maps"


def check_image_layer(layer) -> tuple[int, ...]:
    """Check that ``layer`` is an image PRM can run on; return its leading (stack) shape.

    Raises
    ------
    ValueError
        Saying what kind of layer arrived when it is not a 2-D+ grayscale or RGB(A) image.
    """
    from napari.layers import Image

    if layer is None:
        raise ValueError("no image layer chosen: open an image first (File > Open Sample > "
                         f"{SAMPLE_MENU} offers one)")
    if not isinstance(layer, Image):
        raise ValueError(f"layer {layer.name!r} is a {type(layer).__name__} layer; "
                         "PRM runs on Image layers")
    data = layer.data[0] if layer.multiscale else layer.data
    shape = tuple(data.shape)
    if layer.rgb:
        if shape[-1] not in (3, 4):
            raise ValueError(f"layer {layer.name!r}: an RGB image needs 3 or 4 channels, "
                             f"got shape {shape}")
        shape = shape[:-1]
    if len(shape) < 2 or min(shape[-2:]) < 2:
        raise ValueError(f"layer {layer.name!r} has shape {tuple(data.shape)}; PRM needs a "
                         "2-D grayscale or RGB image (or a stack of them)")
    if not layer.rgb and len(shape) >= 3 and shape[-1] <= MAX_CHANNELS < min(shape[-3:-1]):
        # (H, W, C) that napari did not take as RGB: H planes of W×C pixels, not an image
        channels = shape[-1]
        raise ValueError(
            f"layer {layer.name!r} has shape {shape}: its last axis looks like {channels} colour or "
            f"fluorescence channels, which napari shows as {int(np.prod(shape[:-2]))} planes of {shape[-2]}×{channels} "
            "pixels. Open it with channel_axis=-1 (one layer per channel) and run on a channel"
            + (", or with rgb=True" if channels in (3, 4) else ""))
    return shape[:-2]


def choose_layer(combo, layer) -> None:
    """Make ``layer`` the value of a magicgui layer ComboBox when it offers it; its choices are
    refreshed first for a layer selected as it was added, before napari refreshed the form."""
    if layer not in combo.choices:
        combo.reset_choices()
    if layer in combo.choices:
        combo.value = layer


def point_plane(coordinates, leading: int) -> tuple[int, ...]:
    """The plane of a stack a point lies on: its first ``leading`` data coordinates, rounded."""
    return tuple(int(round(c)) for c in coordinates[:leading])


def current_plane(layer, viewer) -> tuple[int, ...]:
    """Index of the plane of ``layer`` that the viewer shows (``()`` for a 2-D image).

    A plane of a stack is one of its last two axes (those a run's result layers place a plane's
    results on): in a 2-D view, it is the one the sliders of the other axes are on, shown as it is
    or transposed. In a 3-D view, it is the one the sliders were last on.

    Raises
    ------
    ValueError
        When the 2-D view shows another plane (its axes' order was rolled: one of the stack axes
        is shown, and a slider is on an axis of the image plane), saying how to put it back.
    """
    leading = check_image_layer(layer)
    if not leading:
        return ()
    dims = viewer.dims
    first = dims.ndim - layer.ndim  # the layer's axes are the viewer's last
    plane_axes = (first + len(leading), first + len(leading) + 1)
    shown = tuple(int(axis) for axis in dims.displayed)
    if dims.ndisplay == 2 and set(shown) != set(plane_axes):
        def axes(numbers, start=first):  # axes numbered from ``start`` (with the names the user gave them)
            labels = [str(dims.axis_labels[axis]) for axis in numbers]
            return " and ".join(f"{axis - start}" + ("" if label.lstrip("-").isdigit() else f" ({label})")
                                for axis, label in zip(numbers, labels))

        # the layer's axes are the viewer's last layer.ndim: a viewer axis before them (of a layer
        # with more axes) is none of this layer's, named as the viewer's
        mine, others = [a for a in shown if a >= first], [a for a in shown if a < first]
        described = f"its ax{'e' if len(mine) > 1 else 'i'}s {axes(mine)}" if mine else ""
        if others:
            described = (f"the viewer's axis{'es' if len(others) > 1 else ''} {axes(others, 0)}, which "
                         f"{layer.name!r} does not have (another layer has more axes)"
                         + (f", and {described}" if described else ""))
        restore = tuple(int(axis) for axis in dims.order if axis not in plane_axes) + plane_axes
        raise ValueError(
            f"cannot run on the current plane of {layer.name!r}: the view shows {described}, and a run "
            f"works on planes of its last two axes, {axes(plane_axes)} (where the result layers place a plane's "
            "results). Roll the view's axes back with napari's 'Roll dimensions' button until it shows axes "
            f"{axes(plane_axes)} (viewer.dims.order = {restore}), or choose 'all planes'")
    position = layer.world_to_data(viewer.dims.point)[: len(leading)]
    return tuple(int(np.clip(np.round(p), 0, n - 1)) for p, n in zip(position, leading))


def level_planes(layer) -> np.ndarray:
    """(levels, 2) the (H, W) of each level of a multiscale image layer (RGB: less the channels;
    from the arrays' shapes, none of them read)."""
    shapes = [tuple(level.shape) for level in layer.data]
    return np.array([shape[-3:-1] if layer.rgb else shape[-2:] for shape in shapes], np.int64)


def _flat_pyramid(layer) -> bool:
    """Whether ``layer`` is a 2-D multiscale image PRM can run on."""
    if not getattr(layer, "multiscale", False):
        return False
    try:
        return not check_image_layer(layer)
    except ValueError:
        return False


def run_level(layer) -> int:
    """The level of ``layer`` that a run reads: the finest whose long side is at most
    `MAX_RUN_SIDE` (the coarsest when none is), for a 2-D multiscale (pyramid) image; 0 for
    any other layer.

    A multiscale stack keeps level 0, read one plane at a time: the levels of a stack pyramid
    (OME-Zarr) often shrink its leading axes too, so that a plane of level 0 has no plane of
    its own at the other levels.
    """
    if not _flat_pyramid(layer):
        return 0
    sides = level_planes(layer).max(axis=1)
    small = np.flatnonzero(sides <= MAX_RUN_SIDE)
    return int(small[0]) if len(small) else int(np.argmin(sides))


def run_shape(layer) -> tuple[int, int]:
    """``(height, width)`` of the level of the multiscale image ``layer`` that a run reads
    (`run_level`; level 0 of a multiscale stack), from the arrays' shapes."""
    height, width = (int(s) for s in level_planes(layer)[run_level(layer)])
    return height, width


def level_factors(layer, level: int) -> np.ndarray:
    """(2,) how many pixels of level 0 of ``layer`` one pixel of ``level`` spans along y and x
    (from the levels' shapes; ``[1, 1]`` for level 0 or a single-scale layer)."""
    if not getattr(layer, "multiscale", False) or level == 0:
        return np.ones(2)
    planes = level_planes(layer).astype(float)
    return planes[0] / planes[level]


def level_text(layer) -> str:
    """``"pyramid level 2 of 4, 2048×2048"``: the level a run of ``layer`` reads (`run_level`);
    "" for a single-scale layer, or a multiscale stack (read at level 0)."""
    if not _flat_pyramid(layer):
        return ""
    height, width = run_shape(layer)
    return f"pyramid level {run_level(layer)} of {len(layer.data)}, {height}×{width}"


def level_note(layer) -> str:
    """The sentence a run's message says of the pyramid level it read ("" when `level_text` is)."""
    if not (text := level_text(layer)):
        return ""
    side = max(run_shape(layer))
    why = (f"the finest level at most {MAX_RUN_SIDE} px long" if side <= MAX_RUN_SIDE
           else f"no level is at most {MAX_RUN_SIDE} px long: the coarsest")
    return f"Ran on {text} ({why}); the result layers are at its resolution."


def level_of_shape(layer, shape) -> int | None:
    """The level of a multiscale image layer whose (H, W) is ``shape``'s last two (the finest
    when several are), 0 for a single-scale layer, None when none is."""
    if not getattr(layer, "multiscale", False):
        return 0
    match = np.flatnonzero((level_planes(layer) == np.asarray(tuple(shape)[-2:])).all(axis=1))
    return int(match[0]) if len(match) else None


def plane_reader(layer, plane: tuple[int, ...], level: int | None = None) -> Callable[[], np.ndarray]:
    """What reads one plane of an image layer when called, as `read_plane` does.

    The widgets call it in their worker thread: a lazy image (dask, zarr: read from disk or
    computed when indexed) is then read there, one plane at a time, not on the Qt thread when
    *Run* is pressed, which froze napari for the whole read (of every plane, for ``all
    planes``) and held all the planes at once. It reads the array the layer holds now, even if
    the layer's data is replaced meanwhile: of a multiscale image, ``level`` (default: the level
    a run reads, `run_level`; only that level is read).
    """
    if layer.multiscale:
        data = layer.data[run_level(layer) if level is None else level]
    else:
        data = layer.data
    return partial(_array_plane, data, tuple(plane))


def _array_plane(data, plane: tuple[int, ...]) -> np.ndarray:
    return np.array(data[plane] if plane else data)


def read_plane(layer, plane: tuple[int, ...]) -> np.ndarray:
    """One plane of an image layer as an in-memory array ((H, W) or (H, W, C))."""
    return plane_reader(layer, plane)()


def world_kwargs(image_layer, extra_leading: int = 0) -> dict:
    """``scale``, ``translate``, ``rotate``, ``shear`` and ``affine`` of a result layer
    aligned with ``image_layer``: each pixel maps to the world where the image's does (of a
    multiscale image, a pixel of the level a run reads, `run_level`); and
    the image's ``units`` and ``axis_labels`` (napari ≥ 0.5), so that a result of an image in
    µm is in µm too (napari drops the scale bar's units, and warns, when layers disagree).

    ``extra_leading`` axes (e.g. the PRM stack's peak axis) get scale 1, translate 0, no
    rotation or shear, the unit ``pixel`` and the label `PEAK_AXIS_LABEL` (then
    ``peak 1``, … for more than one).
    """
    from napari.layers import Image
    from napari.utils.transforms import CompositeAffine

    transform = CompositeAffine(scale=image_layer.scale, translate=image_layer.translate,
                                rotate=image_layer.rotate, shear=image_layer.shear,
                                ndim=len(image_layer.scale))
    if isinstance(image_layer, Image) and (level := run_level(image_layer)):
        # a pixel of the level spans `factors` of level 0's; its centre lies (factor - 1) / 2
        # level-0 pixels past the centre of the first it spans (where napari draws the level)
        factors = level_factors(image_layer, level)
        offset = np.zeros(len(image_layer.scale))
        offset[-2:] = (factors - 1) / 2
        scale = np.array(image_layer.scale, float)
        scale[-2:] *= factors
        transform = CompositeAffine(scale=scale, translate=transform(offset), rotate=image_layer.rotate,
                                    shear=image_layer.shear, ndim=len(image_layer.scale))
    affine = image_layer.affine
    if extra_leading:
        axes = list(range(extra_leading))
        transform, affine = transform.expand_dims(axes), affine.expand_dims(axes)
    kwargs = {"scale": list(transform.scale), "translate": list(transform.translate),
              "rotate": np.array(transform.rotate), "shear": np.array(transform.shear),
              "affine": np.array(affine.affine_matrix)}
    if getattr(image_layer, "units", None) is not None:
        kwargs["units"] = ["pixel"] * extra_leading + [str(unit) for unit in image_layer.units]
        leading = [PEAK_AXIS_LABEL] + [f"{PEAK_AXIS_LABEL} {k}" for k in range(1, extra_leading)]
        labels = [str(label) for label in image_layer.axis_labels]
        kwargs["axis_labels"] = [label for label in leading[:extra_leading] if label not in labels] + labels
        if len(kwargs["axis_labels"]) != len(kwargs["units"]):  # the image names an axis "peak"
            del kwargs["axis_labels"]
    return kwargs


def prm_world_kwargs(viewer, image_layer, prms_layer=None) -> dict:
    """`world_kwargs` of the PRM layer of ``image_layer`` (its peak axis in front), its peak axis
    fitted to the other layers of ``viewer`` that reach that world axis.

    napari lines up layers' axes from the last: the peak axis of the PRMs of a 2-D image shares
    its world axis with the z (or time) axis of a stack beside it. In ``pixel``, beside a stack in
    µm (or s), napari found the layers' units inconsistent: it warned ("Inconsistent units across
    layers"), drew the scale bar in pixels, and the slider of that axis was named ``peak`` (the
    stack's ``z`` gone). So when the layers reaching that axis agree on a kind of unit, the peak
    axis takes the first one's unit, scale and translate there (one peak per plane of the stack,
    the slider moving both), and the label ``z / peak`` where that layer names the axis ``z``.
    Without such a layer, or when those layers disagree (napari warns of them anyway), it is
    `world_kwargs`'s: ``pixel``, scale 1, translate 0, ``peak``. ``prms_layer``, the layer the
    result replaces, is not one of them, nor are the plugin's other PRMs layers (they follow,
    never lead: two of them would otherwise keep each other's fitted axis once the stack left).
    `PeakAxisFollower` applies it again as layers enter or leave the viewer.
    """
    kwargs = world_kwargs(image_layer, extra_leading=1)
    if "units" not in kwargs:
        return kwargs
    ndim = len(kwargs["units"])
    beside = [layer for layer in viewer.layers
              if layer is not prms_layer and marker_of(layer).get("role") != "prms"
              and layer.ndim >= ndim and layer.units is not None]
    if not beside:
        return kwargs
    axis = [layer.ndim - ndim for layer in beside]  # the axis of each that the peak axis lines up with
    units = [layer.units[k] for layer, k in zip(beside, axis)]
    if len({unit.dimensionality for unit in units}) != 1:
        return kwargs
    first, k = beside[0], axis[0]
    kwargs["units"][0] = str(units[0])
    kwargs["scale"][0] = float(first.scale[k])
    kwargs["translate"][0] = float(first.translate[k])
    named = next((str(layer.axis_labels[k]) for layer, k in zip(beside, axis)
                  if str(layer.axis_labels[k]) not in (str(k - layer.ndim), PEAK_AXIS_LABEL)
                  and not str(layer.axis_labels[k]).endswith(f" / {PEAK_AXIS_LABEL}")), None)
    if named is not None and "axis_labels" in kwargs:
        label = f"{named} / {PEAK_AXIS_LABEL}"
        if label not in kwargs["axis_labels"][1:]:
            kwargs["axis_labels"][0] = label
    return kwargs


def fit_prm_layers(viewer) -> None:
    """Give each PRMs layer the plugin made in ``viewer`` (marked so, `marks.mark`) the world
    `prm_world_kwargs` gives it now: its peak axis fitted to the layers beside it, as a run
    would. A layer whose image has left the viewer, or no longer matches it, is left as it is."""
    for layer in list(viewer.layers):
        if marker_of(layer).get("role") != "prms" or (image := marked_image(viewer, layer)) is None:
            continue
        kwargs = prm_world_kwargs(viewer, image, layer)
        if len(kwargs["scale"]) == layer.ndim:
            set_world(layer, kwargs)


#: The result layers that lie over their image pixel for pixel: `world_kwargs` of the image
#: (``kept``: the copy of corrections a run kept).
_OVER_THE_IMAGE = ("peaks", "instances", "kept")


def fit_results_to_image(viewer, image_layer) -> None:
    """Give the result layers of ``image_layer`` in ``viewer`` (marked for it, `marks.mark`) the
    world it has now: its peaks, instances and the copies of corrections a run kept
    (`world_kwargs`), its CRMs (`crm_world_kwargs`, of the grid recorded in their mark), and the
    split lines drawn over its instances. Its PRMs layer follows in `fit_prm_layers`.

    A pixel size or stage position set on the image after a run (a wrong or missing one, fixed in
    the layer's properties or by a script) left those layers where they were while the PRMs
    moved: the instances no longer lay over their objects, and a point added over an object in
    the image was retrieved at another pixel. A layer whose axes no longer match is left as it is.
    """
    from napari.layers import Image

    if not isinstance(image_layer, Image) or not image_layer.ndim:
        return
    for layer in list(viewer.layers):
        entry = marker_of(layer)
        if entry.get("image_id") != layer_id(image_layer):
            continue
        role = entry.get("role")
        if role in _OVER_THE_IMAGE:
            kwargs = world_kwargs(image_layer)
        elif role == "crm" and len(grid := entry.get("grid") or ()) == 5:
            kwargs = crm_world_kwargs(image_layer, tuple(grid[:2]), tuple(grid[2:4]), int(grid[4]))
        else:
            continue
        if len(kwargs["scale"]) != layer.ndim:
            continue
        set_world(layer, kwargs)
        if role == "instances":  # its split lines lie over it (marked for the instances layer)
            for split in list(viewer.layers):
                if is_marked(split, layer, "split") and split.ndim == layer.ndim:
                    set_world(split, world_kwargs(layer))


class PeakAxisFollower:
    """Keeps the peak axis of the plugin's PRMs layers in ``viewer`` fitted to the layers beside it
    (`fit_prm_layers`) while layers enter, leave or move in the viewer, or change their world (scale,
    translate, units, axis names): a µm stack opened after the run of a 2-D µm image, or removed,
    took effect only at the next run (napari: "Inconsistent units across layers", the slider of
    the stack's z named ``peak``).

    `connect` once (again: nothing happens), `disconnect` when the widget closes.
    """

    #: The events of a layer that move its axes in the world (`WORLD_TRANSFORMS`, `WORLD_LABELS`).
    EVENTS = (*WORLD_TRANSFORMS, *WORLD_LABELS)

    def __init__(self, viewer):
        self.viewer = viewer
        self.connected = False
        self._fitting = False

    def connect(self) -> None:
        self._connect(True)

    def disconnect(self) -> None:
        self._connect(False)

    def _connect(self, on: bool) -> None:
        if self.connected == on:
            return
        self.connected = on
        events = self.viewer.layers.events
        for emitter, callback in ((events.inserted, self._on_inserted), (events.removed, self._on_removed),
                                  (events.moved, self._on_moved)):
            (emitter.connect if on else emitter.disconnect)(callback)
        for layer in self.viewer.layers:
            self._watch(layer, on)

    def _watch(self, layer, on: bool) -> None:
        for name in self.EVENTS:
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                (emitter.connect if on else emitter.disconnect)(self._on_world)

    def _on_inserted(self, event) -> None:
        self._watch(event.value, True)
        self.fit()

    def _on_removed(self, event) -> None:
        self._watch(event.value, False)
        self.fit()

    def _on_moved(self, event) -> None:  # the first layer beside the peak axis leads it
        self.fit()

    def _on_world(self, event) -> None:
        if marker_of(event.source).get("role") != "prms":  # a PRMs layer's own world moves no other
            fit_results_to_image(self.viewer, event.source)  # an image's results go where it goes
            self.fit()

    def fit(self) -> None:
        """`fit_prm_layers` (not again from within: its own changes are events too)."""
        if self._fitting:
            return
        self._fitting = True
        try:
            fit_prm_layers(self.viewer)
        finally:
            self._fitting = False


class PeakPRMs:
    """The PRMs of a run's peaks as the PRM layer reads them, holding none at the image's size.

    Slice ``k`` is the PRM of peak ``k``: ``(K, H, W)``, or, placed on the planes of a stack
    image (`placed`), ``(K, *leading, H, W)`` with PRM ``k`` in its own plane and zeros
    elsewhere. Each PRM is held as its prediction gave it: a one-map
    :class:`napari_prm.prm_maps.ScaledPRMs` (the network's grid, resized when napari reads
    the slice: the prediction's values, bit for bit), or an (H, W) array. Indexing returns
    ndarrays; ``np.asarray`` builds the whole stack.

    Parameters
    ----------
    image_shape : (int, int)
    maps : list
        Per peak: a one-map `ScaledStack`, an (H, W) array, or None (zeros).
    planes : (K, len(leading_shape)) int array, optional
        The plane of each PRM (a stack image's only).
    leading_shape : tuple of int
    """

    dtype = np.dtype(np.float32)

    def __init__(self, image_shape: tuple[int, int], maps=(), *, planes=None, leading_shape: tuple[int, ...] = ()):
        self.image_shape = tuple(int(s) for s in image_shape)
        self.maps = list(maps)
        self.leading_shape = tuple(int(s) for s in leading_shape)
        self.planes = (np.asarray(planes, np.int64).reshape(len(self.maps), len(self.leading_shape))
                       if self.leading_shape else None)

    @classmethod
    def of(cls, prms, image_shape: tuple[int, int]) -> PeakPRMs:
        """The PRMs of a prediction (``Prediction.prms``: a ScaledPRMs, kept at its grid, or a
        (K, H, W) array)."""
        if isinstance(prms, ScaledStack):
            return cls(image_shape, [prms[k:k + 1] for k in range(len(prms))])
        return cls(image_shape, list(np.asarray(prms, np.float32)))

    @classmethod
    def concatenate(cls, parts: list[PeakPRMs], image_shape: tuple[int, int]) -> PeakPRMs:
        return cls(image_shape, [source for part in parts for source in part.maps])

    def placed(self, planes: np.ndarray, leading_shape: tuple[int, ...]) -> PeakPRMs:
        """These PRMs (as they are now) on the planes of a stack image: ``(K, *leading, H, W)``
        (``(K, H, W)`` for a 2-D image, ``leading_shape`` ``()``)."""
        return PeakPRMs(self.image_shape, self.maps, planes=planes, leading_shape=leading_shape)

    def rows(self, peaks) -> PeakPRMs:
        """These PRMs in the order of ``peaks`` (slice ``i`` is the PRM of peak ``peaks[i]``;
        zeros for a number without a PRM), holding the same maps."""
        peaks = np.asarray(peaks, np.int64).reshape(-1)
        known = (peaks >= 0) & (peaks < len(self.maps))
        maps = [self.maps[peak] if ok else None for peak, ok in zip(peaks, known)]
        planes = None
        if self.leading_shape:
            planes = np.full((len(peaks), len(self.leading_shape)), -1, np.int64)
            planes[known] = self.planes[peaks[known]]
        return PeakPRMs(self.image_shape, maps, planes=planes, leading_shape=self.leading_shape)

    def store(self, peak: int, prms, index: int) -> None:
        """Make map ``index`` of a prediction's ``prms`` the PRM of ``peak``; PRMs missing
        before it are zeros."""
        source = prms[index:index + 1] if isinstance(prms, ScaledStack) else np.asarray(prms[index], np.float32)
        self.maps.extend([None] * (peak + 1 - len(self.maps)))
        self.maps[peak] = source

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.maps), *self.leading_shape, *self.image_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes held (the network-grid maps, and the arrays of PRMs that came as arrays)."""
        return sum(source.nbytes for source in self.maps if source is not None)

    def plane(self, peak: int) -> np.ndarray:
        """The (H, W) PRM of ``peak``."""
        source = self.maps[peak]
        if source is None:
            return np.zeros(self.image_shape, np.float32)
        return source[0] if isinstance(source, ScaledStack) else source

    def plane_maxima(self, budget: int = 64 * 2**20) -> np.ndarray:
        """(K,) the largest value of each PRM; those held at a grid are resized a few at a time
        (`ScaledStack.iter_planes`, at most ``budget`` bytes at once)."""
        maxima = np.zeros(len(self), np.float64)
        groups: dict[tuple, list[int]] = {}
        for peak, source in enumerate(self.maps):
            if isinstance(source, ScaledStack):
                groups.setdefault((type(source), source.planes.shape[1:]), []).append(peak)
            elif source is not None:
                maxima[peak] = source.max(initial=0.0)
        for peaks in groups.values():
            stack = self.maps[peaks[0]].with_planes(np.concatenate([self.maps[peak].planes for peak in peaks]))
            maxima[peaks] = [plane.max(initial=0.0) for plane in stack.iter_planes(max_bytes=budget)]
        return maxima

    def __getitem__(self, index) -> np.ndarray:
        index = split_index(index, self.ndim)
        stacked = self.shape[:-2]  # (K, *leading): which PRM, and on which plane
        cells = np.arange(int(np.prod(stacked)), dtype=np.int64).reshape(stacked)[index[:-2]]
        yx = index[-2:]
        out = np.zeros(cells.shape + np.broadcast_to(np.float32(0), self.image_shape)[yx].shape, np.float32)
        for at in np.ndindex(cells.shape):
            peak, *plane = np.unravel_index(cells[at], stacked)
            if not plane or tuple(plane) == tuple(self.planes[peak]):
                out[at] = self.plane(int(peak))[yx]
        return out

    def __array__(self, dtype=None, copy=None):
        array = self[...]
        return array if dtype is None else array.astype(dtype, copy=False)


@dataclass(eq=False)
class Results:
    """The predictions of the planes of one image, merged into layer-shaped arrays.

    Peaks are numbered 0..K-1 over all planes (the ``peak`` column of both tables, and
    the slice of ``prms``); instance labels are unique over all planes. A peak whose instance
    retrieval merged into another's (``Instance.merged_peaks``) has that instance's label;
    ``merged_into`` maps it to the peak of that instance.
    """

    class_names: list[str]
    leading_shape: tuple[int, ...]
    image_shape: tuple[int, int]
    points: np.ndarray  # (K, len(leading) + 2) data coordinates
    point_features: pd.DataFrame
    prms: PeakPRMs  # (K, H, W) float32, each held at the network's grid when it came so
    prm_planes: np.ndarray  # (K, len(leading)) int
    labels: np.ndarray  # (*leading, H, W)
    instance_features: pd.DataFrame
    crms: dict[str, np.ndarray] = field(default_factory=dict)  # class -> (*leading, h, w)
    sub_pixel_locating_factor: int = 1  # of the CRMs
    notes: list[str] = field(default_factory=list)  # the predictions' notes (e.g. the peak cap)
    merged_into: dict[int, int] = field(default_factory=dict)  # peak -> the peak of its instance


def instance_features(table) -> pd.DataFrame:
    """A features DataFrame for a Labels layer from an instance table (adds ``index``)."""
    frame = pd.DataFrame({name: np.asarray(values) for name, values in table.items()})
    from ..edit import INSTANCE_DEFAULTS

    frame["index"] = frame["label"].astype(np.int64) if "label" in frame else []
    for name, default in INSTANCE_DEFAULTS.items():
        if name not in frame:
            frame[name] = default
    frame["class_name"] = frame["class_name"].astype(object)
    return frame[list(INSTANCE_COLUMNS) + [c for c in frame if c not in INSTANCE_COLUMNS]]


def features_table(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The instance table of a Labels layer's features (without napari's ``index``)."""
    return {name: frame[name].to_numpy() for name in frame.columns if name != "index"}


def point_defaults(class_names, class_index: int = 0) -> dict:
    """Feature values of a point added by hand (its class is set by the correction panel)."""
    defaults = {"class_name": class_names[class_index], "class_index": class_index,
                "peak_value": np.nan, "class_score": np.nan, "peak": -1, "label": 0}
    for column in RUNNER_UP_COLUMNS:
        defaults[column] = np.nan if column.endswith("_value") else ""
    defaults[HAND_PLACED] = True
    return defaults


def _column_dtype(column: str):
    if column == HAND_PLACED:
        return bool
    if column in ("class_index", "peak", "label"):
        return np.int64
    if column in ("peak_value", "class_score") or column.endswith("_value"):
        return np.float64
    return object


def empty_point_features() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series([], dtype=_column_dtype(column)) for column in POINT_COLUMNS})


def runner_up_features(prediction: Prediction) -> dict[str, np.ndarray]:
    """The ``runner_up_*`` columns of a prediction's peaks: class names ("" where none) and values."""
    columns = {}
    names = np.array(list(prediction.class_names) + [""], dtype=object)  # index -1: none
    for rank in range(RUNNERS_UP):
        columns[f"runner_up_{rank + 1}"] = names[prediction.runner_up_classes[:, rank]]
        columns[f"runner_up_{rank + 1}_value"] = prediction.runner_up_values[:, rank].astype(np.float64)
    return columns


def peak_rows(prediction: Prediction, peaks: np.ndarray, labels: np.ndarray, *,
              hand_placed: bool) -> pd.DataFrame:
    """The peaks layer's feature rows (`POINT_COLUMNS`) of a prediction's peaks, numbered
    ``peaks`` (their slices of the PRM layer), with instance ``labels`` (0: none). Points
    placed by hand (``hand_placed``) have no runners-up: "" and NaN."""
    count = len(prediction.peak_classes)
    runners_up = ({column: np.full(count, np.nan) if column.endswith("_value") else np.full(count, "", object)
                   for column in RUNNER_UP_COLUMNS} if hand_placed else runner_up_features(prediction))
    return pd.DataFrame({
        "class_name": np.array([prediction.class_names[c] for c in prediction.peak_classes], object),
        "class_index": prediction.peak_classes.astype(np.int64),
        "peak_value": prediction.peak_values.astype(np.float64),
        "class_score": prediction.scores[prediction.peak_classes].astype(np.float64),
        "peak": np.asarray(peaks, np.int64),
        "label": np.asarray(labels, np.int64),
        **runners_up,
        HAND_PLACED: np.full(count, hand_placed, bool),
    })


def merge_predictions(planes: list[tuple[int, ...]], predictions: list[Prediction],
                      leading_shape: tuple[int, ...], *, crm_classes=()) -> Results:
    """Merge per-plane predictions into arrays for the three result layers.

    Parameters
    ----------
    planes : list of tuple of int
        Leading index of each prediction's plane (``()`` for a 2-D image).
    predictions : list of Prediction
        One per plane, all from the same model.
    leading_shape : tuple of int
        Shape of the image's stack axes.
    crm_classes : sequence of int
        Classes whose class response maps to return (as ``crms``).
    """
    class_names = predictions[0].class_names
    height, width = predictions[0].image_shape
    total = sum(len(p.peaks) for p in predictions)
    # the planes' labels and instance table put together as `napari-prm predict` writes a stack
    stack, table = stack_labels(predictions)
    labels = _laid_out(stack, planes, tuple(leading_shape))
    points, point_rows, prms, prm_planes = [], [], [], []
    merged_into: dict[int, int] = {}
    peak_offset = row = 0
    for plane, prediction in zip(planes, predictions):
        k, rows = len(prediction.peaks), len(prediction.instances)  # a table row per instance, in order
        points.append(np.column_stack([np.tile(np.asarray(plane, float), (k, 1)), prediction.peaks])
                      if k else np.zeros((0, len(plane) + 2)))
        plane_labels = table["label"][row:row + rows]
        peak_label = np.zeros(k, np.int64)
        for instance, label in zip(prediction.instances, plane_labels):
            for merged in instance.merged_peaks:
                peak_label[int(merged)] = label
                merged_into[peak_offset + int(merged)] = peak_offset + int(instance.peak)
        peak_label[table["peak"][row:row + rows] - peak_offset] = plane_labels
        point_rows.append(peak_rows(prediction, np.arange(peak_offset, peak_offset + k, dtype=np.int64),
                                    peak_label, hand_placed=False))
        prms.append(PeakPRMs.of(prediction.prms, (height, width)))
        prm_planes.append(np.tile(np.asarray(plane, np.int64), (k, 1)).reshape(k, len(plane)))
        peak_offset += k
        row += rows
    crms = {}
    for index in crm_classes:
        crm_shape = predictions[0].crms.shape[1:]
        stack = np.zeros(leading_shape + tuple(crm_shape), np.float32)
        for plane, prediction in zip(planes, predictions):
            stack[plane] = prediction.crms[index]
        crms[class_names[index]] = stack
    point_features = pd.concat(point_rows, ignore_index=True) if total else empty_point_features()
    return Results(
        class_names=list(class_names),
        leading_shape=tuple(leading_shape),
        image_shape=(height, width),
        points=np.concatenate(points) if points else np.zeros((0, len(leading_shape) + 2)),
        point_features=point_features,
        prms=PeakPRMs.concatenate(prms, (height, width)),
        prm_planes=np.concatenate(prm_planes) if total else np.zeros((0, len(leading_shape)), np.int64),
        labels=labels,
        instance_features=instance_features(table),
        crms=crms,
        sub_pixel_locating_factor=int(predictions[0].sub_pixel_locating_factor),
        notes=plane_notes(planes, predictions),
        merged_into=merged_into,
    )


def _laid_out(stack: np.ndarray, planes: list[tuple[int, ...]], leading_shape: tuple[int, ...]) -> np.ndarray:
    """The (N, H, W) label stack of the ``planes`` run as an image's ``leading_shape + (H, W)``:
    a view when they are all its planes in order (a 2-D image's one), else its other planes 0."""
    if list(planes) == list(np.ndindex(*leading_shape)):
        return stack.reshape(leading_shape + stack.shape[1:])
    labels = np.zeros(leading_shape + stack.shape[1:], stack.dtype)
    for plane, plane_labels in zip(planes, stack):
        labels[plane] = plane_labels
    return labels


def plane_notes(planes: list[tuple], predictions: list[Prediction]) -> list[str]:
    """The notes of the predictions of an image's planes, each once; the peak cap's of a stack's
    planes as one that says on how many planes it bit (a 40-plane stack gave 40 sentences that
    differed in one number; one plane's sentence read as the whole stack's)."""
    notes = [note for prediction in predictions for note in prediction.notes]
    capped = [(plane, prediction) for plane, prediction in zip(planes, predictions)
              if prediction.peaks_found is not None and prediction.settings is not None
              and cap_note(prediction.peaks_found, len(prediction.peaks), prediction.settings.max_peaks)
              in prediction.notes]
    if capped and len(planes) > 1:
        own = {cap_note(p.peaks_found, len(p.peaks), p.settings.max_peaks) for _, p in capped}
        found = [p.peaks_found for _, p in capped]
        caps = sorted({p.settings.max_peaks for _, p in capped})
        notes = [note for note in notes if note not in own]
        counts = f"{min(found)}" if min(found) == max(found) else f"{min(found)}–{max(found)}"
        cap = "/".join(map(str, caps))
        each = " of each" if len(capped) > 1 else ""
        strongest = f"the strongest{each} was" if caps == [1] else f"the {cap} strongest{each} were"
        notes.insert(0, f"On {len(capped)} of {len(planes)} planes {counts} peaks passed the thresholds; "
                        f"{strongest} kept (max_peaks={cap}). Raise the thresholds or max_peaks.")
    return list(dict.fromkeys(notes))


# ---------------------------------------------------------------------- peaks placed by hand
#: Where each peaks layer's points moved by hand came from: ``{peak: (class_name, position)}``
#: (the model's peak each replaced, in data coordinates), for `hand_placed_peaks`.
_moved_from: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def moved_from(peaks_layer) -> dict:
    """The origins of the points of ``peaks_layer`` moved by hand (``{peak: (class_name,
    position)}``), to be filled by the correction panel when it sees a model's peak moved."""
    return _moved_from.setdefault(peaks_layer, {})


def set_moved_from(peaks_layer, origins: dict) -> None:
    """Replace the origins of ``peaks_layer``'s moved points (a new run renumbers its peaks)."""
    _moved_from[peaks_layer] = dict(origins)


def peak_positions(peaks_layer) -> dict[int, tuple]:
    """Where each numbered point (``peak`` >= 0) of ``peaks_layer`` is: ``{peak: data coordinates}``,
    rounded to 6 decimals (a point placed by hand has no number until the correction panel gives it one)."""
    ids = peaks_layer.features["peak"].to_numpy()
    return {int(p): tuple(np.round(row, 6)) for p, row in zip(ids, peaks_layer.data) if p >= 0}


def mark_hand_placed(peaks_layer, peak_ids, positions: dict) -> pd.DataFrame | None:
    """The features of ``peaks_layer`` with its points ``peak_ids`` (added or moved by hand) marked
    `HAND_PLACED`, which a new run keeps; None when they all are already.

    A model's peak moved for the first time (one of ``positions``, `peak_positions` before the move)
    leaves its class and place in `moved_from`, so that the new run does not select that peak
    again beside the moved point.
    """
    features = peaks_layer.features
    if HAND_PLACED not in features:
        features = features.assign(**{HAND_PLACED: False})
    rows = np.flatnonzero(np.isin(features["peak"].to_numpy(), list(peak_ids)))
    marked = features[HAND_PLACED].to_numpy(bool)
    origins = moved_from(peaks_layer)
    for row in rows[~marked[rows]]:
        peak = int(features["peak"].iloc[row])
        if peak in positions:  # a model's peak, moved
            origins.setdefault(peak, (str(features["class_name"].iloc[row]), positions[peak]))
    if marked[rows].all() and HAND_PLACED in peaks_layer.features:
        return None
    features = features.copy()
    features.loc[features.index[rows], HAND_PLACED] = True
    return features.astype({HAND_PLACED: bool})


@dataclass(eq=False)
class HandPeak:
    """A point placed (added or moved) by hand in a peaks layer, to be kept by a new run."""

    plane: tuple[int, ...]
    yx: np.ndarray  # (2,) data coordinates in its plane, where the user put it
    class_name: str
    #: the class and (2,) position of the model's peak it replaced (a moved point), else None
    origin: tuple[str, np.ndarray] | None = None
    peak: int = -1  # its number in the peaks layer it was read from


def hand_placed_peaks(peaks_layer, leading: int) -> list[HandPeak]:
    """The points of ``peaks_layer`` marked `HAND_PLACED`, for an image with ``leading`` stack axes.

    A layer of another dimensionality (or without the marker) gives none.
    """
    features = peaks_layer.features
    data = np.asarray(peaks_layer.data, np.float64)
    if HAND_PLACED not in features or data.ndim != 2 or data.shape[1] != leading + 2:
        return []
    origins = _moved_from.get(peaks_layer, {})
    out = []
    for row in np.flatnonzero(features[HAND_PLACED].to_numpy(bool)):
        plane = point_plane(data[row], leading)
        peak = int(features["peak"].iloc[row])
        origin = origins.get(peak)
        if origin is not None:  # the model's peak it replaced, if that was in the same plane
            where = np.asarray(origin[1], np.float64)
            same_plane = point_plane(where, leading) == plane
            origin = (origin[0], where[leading:]) if same_plane else None
        out.append(HandPeak(plane, data[row, leading:].copy(), str(features["class_name"].iloc[row]), origin,
                            peak))
    return out


def without_peaks(prediction: Prediction, drop: np.ndarray) -> Prediction:
    """``prediction`` without the peaks where ``drop`` is True: their PRMs and instances go too
    (and they leave the ``merged_peaks`` of the others); the other instances' ``peak`` is renumbered."""
    import copy

    drop = np.asarray(drop, bool)
    if not drop.any():
        return prediction
    keep = np.flatnonzero(~drop)
    number = {int(old): new for new, old in enumerate(keep)}
    instances = []
    for instance in prediction.instances:
        if int(instance.peak) not in number:
            continue
        instance = copy.copy(instance)
        instance.peak = number[int(instance.peak)]
        instance.merged_peaks = [number[int(p)] for p in instance.merged_peaks if int(p) in number]
        instances.append(instance)
    out = copy.copy(prediction)
    out.peaks, out.peak_classes, out.peak_values = (
        prediction.peaks[keep], prediction.peak_classes[keep], prediction.peak_values[keep])
    out.prms, out.peaks_crm = prediction.prms[keep], prediction.peaks_crm[keep]
    out.runner_up_classes = prediction.runner_up_classes[keep]
    out.runner_up_values = prediction.runner_up_values[keep]
    out.instances = instances
    return out


def add_hand_peaks(results: Results, hand: list[tuple[tuple, np.ndarray, Prediction]]) -> list[int]:
    """Add peaks placed by hand to a run's ``results``, as the correction panel adds a point.

    Parameters
    ----------
    results : Results
        What `merge_predictions` made of the run; changed in place.
    hand : list of (plane, (M, 2) positions, Prediction)
        Per plane, the hand-placed points (data coordinates, kept as placed) and the
        prediction made from them (``predict(points=...)``: peak ``m`` is point ``m``).

    Returns
    -------
    list of int
        The ``peak`` numbers of the hand-placed points that got no instance.

    Each point's PRM is appended to ``results.prms`` (as the prediction holds it); its instance,
    if it has one, is painted over the run's (:func:`napari_prm.edit.add_instance`: an instance covered entirely loses
    its row, and its peaks their label). Its features are those of an added point:
    ``peak_value`` the CRM value there, no runners-up, `HAND_PLACED` True.
    """
    from .. import edit

    leading = len(results.leading_shape)
    labels, table = results.labels, features_table(results.instance_features)
    points, rows, prms, prm_planes, missed = [results.points], [results.point_features], [results.prms], \
        [results.prm_planes], []
    next_peak = len(results.points)
    hand_labels = {}
    for plane, yx, prediction in hand:
        count = len(yx)
        if not count:
            continue
        peak_ids = np.arange(next_peak, next_peak + count, dtype=np.int64)
        next_peak += count
        points.append(np.column_stack([np.tile(np.asarray(plane, float), (count, 1)), yx]).reshape(count, leading + 2))
        rows.append(peak_rows(prediction, peak_ids, np.zeros(count, np.int64), hand_placed=True))
        prms.append(PeakPRMs.of(prediction.prms, results.image_shape))
        prm_planes.append(np.tile(np.asarray(plane, np.int64), (count, 1)).reshape(count, leading))
        for m, peak_id in enumerate(peak_ids):
            found = [instance for instance in prediction.instances if instance.peak == m]
            if not found:
                missed.append(int(peak_id))
                continue
            mask = np.zeros(labels.shape, bool)
            mask[plane] = found[0].mask
            if not mask.any():
                missed.append(int(peak_id))
                continue
            labels, table = edit.add_instance(
                labels, table, mask, class_index=int(found[0].class_index),
                class_name=str(prediction.class_names[found[0].class_index]),
                score=float(found[0].score), peak=int(peak_id))
            hand_labels[int(peak_id)] = int(table["label"][-1])
    if len(points) == 1:
        return missed
    features = pd.concat(rows, ignore_index=True).astype({HAND_PLACED: bool})
    point_labels = features["label"].to_numpy().astype(np.int64)
    for row, peak in enumerate(features["peak"].to_numpy()):
        point_labels[row] = hand_labels.get(int(peak), point_labels[row])
    point_labels[~np.isin(point_labels, table["label"])] = 0  # painted over entirely
    features["label"] = point_labels
    results.points = np.concatenate(points)
    results.point_features = features
    results.prms = PeakPRMs.concatenate(prms, results.image_shape)
    results.prm_planes = np.concatenate(prm_planes)
    results.labels = labels
    results.instance_features = instance_features(table)
    return missed


def prm_layer_data(prms: PeakPRMs, prm_planes: np.ndarray, leading_shape: tuple[int, ...],
                   peaks=None) -> PeakPRMs:
    """PRM stack as layer data: (K, H, W), or (K, *leading, H, W) for a stack image, where
    slice ``i`` holds the PRM of peak ``peaks[i]`` in its own plane and zeros elsewhere
    (`PeakPRMs.placed`: napari reads one slice, and only that PRM is resized to the image's
    size). ``peaks`` are the ``peak`` numbers of the peaks layer's rows, so that the slices
    follow its rows (a peak without a PRM yet gives zeros); default: slice ``k`` is peak ``k``."""
    placed = prms.placed(prm_planes, leading_shape)
    return placed if peaks is None else placed.rows(peaks)


def crm_world_kwargs(image_layer, crm_shape: tuple[int, int], image_shape: tuple[int, int],
                     factor: int = 1) -> dict:
    """The transforms that put CRM cells where :func:`predict` puts peaks.

    ``factor`` is the CRMs' sub-pixel upsampling; the mapping is
    :func:`napari_prm.predict.crm_to_image`'s, which is affine per axis: a cell's image
    position is ``origin + step * cell``, so the CRM layer's scale is the image's times
    ``step`` and its translate is where the image puts ``origin`` (before ``affine``).
    """
    from napari.utils.transforms import CompositeAffine

    kwargs = world_kwargs(image_layer)
    origin, step = crm_to_image(np.array([[0.0, 0.0], [1.0, 1.0]]), crm_shape, image_shape, factor)
    image_transform = CompositeAffine(scale=kwargs["scale"], translate=kwargs["translate"],
                                      rotate=kwargs["rotate"], shear=kwargs["shear"],
                                      ndim=len(kwargs["scale"]))
    position = np.zeros(len(kwargs["scale"]))
    position[-2:] = origin
    kwargs["translate"] = list(np.asarray(image_transform(position), float))
    for axis in (-2, -1):
        kwargs["scale"][axis] = kwargs["scale"][axis] * (step[axis] - origin[axis])
    return kwargs


_BY_NAME = object()


def upsert_layer(viewer, layer_type: str, name: str, data, *, existing=_BY_NAME, **kwargs):
    """Update the layer ``existing`` (default: the one called ``name``) in place, or add one
    called ``name``; never a second one.

    A layer of another type or dimensionality is replaced at the same place in the layer
    list, under the name it had (the user's, if they renamed it). ``features``, ``metadata``,
    the `WORLD_TRANSFORMS`, the `WORLD_LABELS` and colouring are re-applied.
    """
    if existing is _BY_NAME:
        existing = viewer.layers[name] if name in viewer.layers else None
    if existing is not None and existing not in viewer.layers:
        existing = None
    ndim = np.shape(data)[1] if layer_type == "points" else np.ndim(data)
    same_type = type(existing).__name__.lower() == layer_type
    if existing is not None and same_type and existing.ndim == ndim:
        set_world(existing, kwargs)
        if layer_type == "points":
            existing.selected_data = set()
        existing.data = data
        if "features" in kwargs:
            existing.features = kwargs["features"]
        if "metadata" in kwargs:
            existing.metadata = kwargs["metadata"]
        if layer_type == "points":
            existing.feature_defaults = kwargs["feature_defaults"]
            existing.face_color = kwargs["face_color"]
            existing.text.visible = kwargs["text"]["visible"]
        if layer_type == "image":
            existing.contrast_limits = kwargs.get("contrast_limits") or existing.contrast_limits
            if "contrast_limits" not in kwargs:
                existing.reset_contrast_limits()
        return existing
    index = None
    if existing is not None:
        index, name = viewer.layers.index(existing), existing.name
        viewer.layers.remove(existing)
    layer = getattr(viewer, f"add_{layer_type}")(data, name=name, **kwargs)
    if index is not None:
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


def set_world(layer, kwargs: dict) -> None:
    """Give ``layer`` the `WORLD_TRANSFORMS` and `WORLD_LABELS` of ``kwargs`` (those it holds)
    that differ from the layer's (each change re-checks the viewer's dims)."""
    for name in WORLD_TRANSFORMS:
        now = getattr(layer, name)
        now = now.affine_matrix if name == "affine" else now
        if name in kwargs and not np.allclose(now, kwargs[name]):
            setattr(layer, name, kwargs[name])
    for name in WORLD_LABELS:
        if name in kwargs and [str(v) for v in getattr(layer, name)] != [str(v) for v in kwargs[name]]:
            setattr(layer, name, kwargs[name])


def image_file_name(image_layer) -> str:
    """The ``file_name`` that an export of the layer's instances gives the image: the name of the
    file it was opened from (napari's ``layer.source.path``, e.g. ``chelsea.png``), else the
    layer's name (a layer made in Python has no file)."""
    path = getattr(getattr(image_layer, "source", None), "path", None)
    name = Path(str(path).rstrip("/\\")).name if path else ""
    return name or image_layer.name


#: What an exported label image adds to its image's stem (``cells_labels.tif`` for ``cells.tif``).
LABELS_FILE_SUFFIX = "_labels"
#: What napari's *New labels layer* button adds to the name of the image layer selected.
NEW_LABELS_SUFFIX = " - Labels"


def uncounted_name(name: str) -> str:
    """A layer's name less the `` [1]``, `` [2]``, … napari appends to a name already taken (a
    second *New labels layer* of ``GFP`` is ``GFP - Labels [1]``)."""
    return re.sub(r" \[\d+\]$", "", name)


def named_image(labels_layer) -> str:
    """The name of the image layer a Labels layer says it was made on, "" when it names none: its
    run's (`marks.mark`, else its metadata's ``image_layer``, else ``image_file_name``), else the
    one its name is of: ``"cat instances"`` and ``"cat - Labels"`` (napari's new Labels layer of the
    image selected; ``"cat - Labels [1]"`` the next one) name ``"cat"``. (``"cat_labels"``, an export
    opened again, names a file stem, which the user may have typed: not an image layer.)"""
    return next(iter(_named_images(labels_layer)), "")


def _named_images(labels_layer) -> list[str]:
    """The names `named_image` tries, first to last."""
    metadata = labels_layer.metadata or {}
    own_name = uncounted_name(labels_layer.name)
    names = [marker_of(labels_layer).get("image_layer"), metadata.get("image_layer"), metadata.get("image_file_name")]
    names += [own_name.removesuffix(suffix) for suffix in (INSTANCES_SUFFIX, NEW_LABELS_SUFFIX)
              if own_name.endswith(suffix)]
    return list(dict.fromkeys(str(name) for name in names if name))


def image_layer_of(viewer, labels_layer):
    """The image layer of ``viewer`` that a Labels layer annotates, None when there is none: the one
    a run's mark names (`marks.marked_image`: renamed or not), else the one it names (`named_image`;
    its metadata's ``image_layer`` or ``image_file_name``, else by its name), else for ``"cat_labels"``,
    an export reopened, the layer ``cat`` or the one opened from ``cat.png``, else the only image
    layer of its shape (a Labels layer painted from scratch, napari's ``Labels``). A layer that names
    an image that is not open gets none (`unpaired_reason` says so): not the one beside it of the
    same shape."""
    from napari.layers import Image

    if (image := marked_image(viewer, labels_layer)) is not None:  # made by a run, renamed or not
        return image
    named = _named_images(labels_layer)
    for name in named:
        if name in viewer.layers and isinstance(viewer.layers[name], Image):
            return viewer.layers[name]
    own_name = uncounted_name(labels_layer.name)
    images = [layer for layer in viewer.layers if isinstance(layer, Image) and not is_result_image(viewer, layer)]
    if own_name.endswith(LABELS_FILE_SUFFIX):
        stem = own_name.removesuffix(LABELS_FILE_SUFFIX)
        matches = [image for image in images if stem in (image.name, Path(image_file_name(image)).stem,
                                                         image_stem(image_file_name(image)))]
        if len(matches) == 1:
            return matches[0]
    if named:
        return None  # made on an image that has gone: not the one beside it of the same shape
    same_shape = [image for image in images if _same_shape(image, labels_layer)]
    return same_shape[0] if len(same_shape) == 1 else None


def labels_shape(image_layer) -> tuple[int, ...]:
    """The shape of labels of ``image_layer`` (of its finest level): its leading axes and its rows
    and columns, without the colour axis; the shape napari's *New labels layer* gives."""
    pixels = image_layer.data[0] if image_layer.multiscale else image_layer.data
    return tuple(pixels.shape[:-1] if image_layer.rgb else pixels.shape)


def _same_shape(image_layer, labels_layer) -> bool:
    """Whether ``labels_layer`` has the shape of labels of ``image_layer`` (`labels_shape`), or
    for a 2-D pyramid the size of a coarser level (a run's labels, exported and reopened)."""
    data = labels_layer.data[0] if labels_layer.multiscale else labels_layer.data
    try:
        leading = check_image_layer(image_layer)
    except ValueError:
        return False
    if labels_shape(image_layer) == tuple(data.shape):
        return True
    return bool(image_layer.multiscale and not leading and data.ndim == 2 and level_of_shape(image_layer, data.shape))


def unpaired_reason(viewer, labels_layer) -> str:
    """Why `image_layer_of` finds no image layer for ``labels_layer``, as a sentence naming it ("" when
    it finds one)."""
    return "" if image_layer_of(viewer, labels_layer) is not None else unpaired_message(labels_layer)


def unpaired_message(labels_layer) -> str:
    """`unpaired_reason`'s sentence, for a ``labels_layer`` already known to have no image layer."""
    from .batch import FOLDER_PLANES, LABELS_LAYER

    if uncounted_name(labels_layer.name) == LABELS_LAYER and FOLDER_PLANES not in (labels_layer.metadata or {}):
        # *Run on folder*'s stack without the record of its files (`folder_planes`), not made on an image "folder"
        return (f"layer {labels_layer.name!r} does not record the image and label files of its planes: press "
                "'Run on folder' again (images already done are skipped) and correct the new "
                f"{LABELS_LAYER!r} layer")
    named = named_image(labels_layer)
    if named:
        return (f"layer {labels_layer.name!r} was made on the image {named!r}, which is not open under that "
                f"name (it may have been closed, or renamed): name its image layer {named!r} again, or open "
                f"that image again as a layer named {named!r} (another image of the same shape is not taken "
                "in its place)")
    return (f"layer {labels_layer.name!r}: no image layer goes with it (name it '<image>{INSTANCES_SUFFIX}', "
            "keep the image layer it was made on, or keep only one image layer of its shape)")


def rename_results(viewer, image_layer, old_name: str) -> None:
    """Give the result layers of ``image_layer``, named after its ``old_name``, its new name.

    The peaks, PRMs, instances, split-line and CRM layers, and the kept corrections
    (``<old> instances (corrected…)``): those marked for the image (`marks.mark`) and those
    unmarked that bear its old names; a layer the user renamed keeps the user's name. Also
    napari's *New labels layer* of the image, ``<old> - Labels`` (``<old> - Labels [1]``, …), when it
    has the image's shape (`image_layer_of` pairs such a layer by its name). A layer
    whose new name is taken is left as it is. Marked layers, and the instances layers, also get
    the image's new name in their metadata (what export and *Learn from corrections* read).
    """
    from napari.layers import Labels

    old, new = layer_names(old_name), layer_names(image_layer.name)
    kept_prefix = old["instances"] + KEPT_SUFFIX[:-1]
    renames = []
    for layer in list(viewer.layers):
        marked = is_marked(layer, image_layer)
        if marker_of(layer).get("role") in ROLES and not marked:
            continue  # another image's (a split line is marked for its Labels layer: by name here)
        if marked:
            layer.metadata = {**layer.metadata, **mark(marker_of(layer)["role"], image_layer,
                                                       marker_of(layer).get("key", ""))}
        name = layer.name
        kind = next((kind for kind in ("peaks", "prms", "instances", "split") if name == old[kind]), None)
        if kind is not None:
            renames.append((layer, new[kind]))
        elif name.startswith(old["crm"]):
            renames.append((layer, new["crm"] + name[len(old["crm"]):]))
        elif name.startswith(kept_prefix) and name.endswith(")"):
            renames.append((layer, new["instances"] + name[len(old["instances"]):]))
        elif marked and isinstance(layer, Labels):
            renames.append((layer, name))  # renamed by the user: its metadata follows the image
        elif (isinstance(layer, Labels) and uncounted_name(name) == old_name + NEW_LABELS_SUFFIX
              and named_image(layer) == old_name and _same_shape(image_layer, layer)):
            renames.append((layer, image_layer.name + name[len(old_name):]))  # " - Labels [1]" kept
    for layer, name in renames:
        if name != layer.name and name in viewer.layers:
            continue
        metadata = layer.metadata or {}
        if isinstance(layer, Labels) and metadata.get("image_layer") == old_name:
            layer.metadata = {**metadata, "image_layer": image_layer.name,
                              "image_file_name": image_file_name(image_layer)}
        layer.name = name


def _crm_mark(image_layer, class_name: str, crm_shape, results: Results) -> dict:
    """The mark of the CRM layer of ``class_name``, with the grid `crm_world_kwargs` places it by:
    ``[CRM height, width, image height, width, sub-pixel factor]`` (`fit_results_to_image`)."""
    marked = mark("crm", image_layer, class_name)
    marked[MARKER]["grid"] = [*(int(n) for n in crm_shape), *(int(n) for n in results.image_shape),
                              int(results.sub_pixel_locating_factor)]
    return marked


def add_result_layers(viewer, image_layer, results: Results, *, show_text: bool) -> dict:
    """Add or update the result layers of ``image_layer``; return them by kind.

    Added bottom to top: CRMs, PRMs, instances, then the peaks over them all. CRM layers of
    classes no longer in ``results`` are removed, and so is the PRM layer without peaks.
    """
    names = layer_names(image_layer.name)
    height, width = results.image_shape
    layers = {}
    crm_layers = find_results(viewer, image_layer, "crm")
    for class_name, old in crm_layers.items():
        if class_name not in results.crms:
            viewer.layers.remove(old)
    for class_name, crm in results.crms.items():
        upsert_layer(viewer, "image", names["crm"] + class_name, crm, existing=crm_layers.get(class_name),
                     metadata=_crm_mark(image_layer, class_name, crm.shape[-2:], results),
                     colormap="viridis", blending="additive", opacity=0.6,
                     **crm_world_kwargs(image_layer, crm.shape[-2:], results.image_shape,
                                        results.sub_pixel_locating_factor))
    if len(results.points):
        # slice i is the PRM of row i of the peaks layer (a run of one plane of a stack keeps
        # the other planes' peaks, whose numbers need not be 0..K-1)
        prms = prm_layer_data(results.prms, results.prm_planes, results.leading_shape,
                              results.point_features["peak"].to_numpy())
        # Each PRM sums to 1; saturating at the typical peak keeps every slice visible.
        top = float(np.median(prms.plane_maxima()))
        existing = find_result(viewer, image_layer, "prms")
        layers["prms"] = upsert_layer(
            viewer, "image", names["prms"], prms, existing=existing,
            metadata=mark("prms", image_layer),
            colormap="inferno", blending="additive", opacity=0.8,
            contrast_limits=(0.0, max(top, 1e-12)),
            **prm_world_kwargs(viewer, image_layer, existing))
    elif (old := find_result(viewer, image_layer, "prms")) is not None:
        viewer.layers.remove(old)
    layers["instances"] = upsert_layer(
        viewer, "labels", names["instances"], results.labels,
        existing=find_result(viewer, image_layer, "instances"),
        features=results.instance_features, opacity=0.5,
        metadata={"class_names": results.class_names, "image_layer": image_layer.name,
                  "image_file_name": image_file_name(image_layer), **mark("instances", image_layer)},
        **world_kwargs(image_layer))
    first_class = int(results.point_features["class_index"].iloc[0]) if len(results.points) else 0
    layers["peaks"] = upsert_layer(
        viewer, "points", names["peaks"], results.points,
        existing=find_result(viewer, image_layer, "peaks"), metadata=mark("peaks", image_layer),
        features=results.point_features,
        feature_defaults=point_defaults(results.class_names, first_class),
        face_color="class_name", face_color_cycle=CLASS_COLORS,
        border_color="white", border_width=0.1, size=max(6.0, max(height, width) / 50),
        text={"string": "{class_name}", "color": "white", "anchor": "upper_left", "size": 9,
              "visible": show_text},
        **world_kwargs(image_layer))
    return layers


# ---------------------------------------------------------------------- corrections kept
#: What the plugin last wrote into each instances layer: ``(pixels digest, table)``.
_written: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plane_digests(layer, planes=None) -> dict[tuple, str]:
    """A digest of each plane of a Labels layer (``()``: the whole of a 2-D one), or of
    ``planes`` only, of its label values, not of the dtype that holds them: a run of another
    plane that widens the layer from uint16 to uint32 (`splice_planes`) leaves the planes it did
    not touch as they were."""
    data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    digests = {}
    for plane in np.ndindex(*data.shape[:-2]) if planes is None else planes:
        pixels = data[plane]
        if pixels.dtype.kind in "iu" and pixels.size:  # the narrowest dtype that holds the values
            low, high = int(pixels.min()), int(pixels.max())
            pixels = pixels.astype(np.min_scalar_type(high) if low >= 0 else np.int64, copy=False)
        pixels = np.ascontiguousarray(pixels)
        digest = hashlib.blake2b(f"{pixels.dtype.str}{data.shape}".encode(), digest_size=20)
        digest.update(memoryview(pixels).cast("B"))
        digests[plane] = digest.hexdigest()
    return digests


def _rows_of(table: dict, labels) -> dict:
    """The rows of an instance table whose label is one of ``labels``."""
    rows = np.isin(np.asarray(table.get("label", [])), list(labels))
    return {name: np.asarray(values)[rows] for name, values in table.items()}


def _table_digest(table: dict) -> str:
    """A digest of an instance table's values: rows in label order, numbers as float64
    (NaN equal to NaN), everything else as text; napari's ``index`` column left out."""
    digest = hashlib.blake2b(digest_size=20)
    order = np.argsort(np.asarray(table["label"]), kind="stable") if "label" in table else slice(None)
    for name in sorted(str(column) for column in table if column != "index"):
        values = np.asarray(table[name])[order]
        digest.update(name.encode() + b"\0")
        if values.dtype.kind in "biuf":
            values = values.astype(np.float64)
            values[np.isnan(values)] = np.nan  # one NaN bit pattern
            digest.update(values.tobytes())
        else:
            digest.update("\0".join(map(str, values)).encode())
        digest.update(b"\1")
    return digest.hexdigest()


def remember_written(layer, planes=None) -> None:
    """Note what the plugin has just written into the instances ``layer``: all of it, or only
    ``planes`` of a stack (a run of the current plane, spliced into the layer of the earlier runs:
    what the user changed on the other planes still counts as their corrections)."""
    table = {name: np.array(values, copy=True) for name, values in features_table(layer.features).items()}
    record = _written.get(layer)
    if planes is None or record is None:
        digests = _plane_digests(layer)
    else:  # the planes written get new digests, the others keep theirs: only those are hashed
        before, written = record
        planes = {tuple(plane) for plane in planes}
        data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        digests = {plane: before.get(plane) for plane in np.ndindex(*data.shape[:-2])}
        digests.update(_plane_digests(layer, [plane for plane in digests if plane in planes]))
        new = np.unique([data[plane] for plane in planes])
        others = _rows_of(written, set(np.asarray(written.get("label", [])).tolist()) - set(new.tolist()))
        table = {name: np.concatenate([others[name], values]) if name in others else values
                 for name, values in _rows_of(table, new[new > 0].tolist()).items()}
    _written[layer] = (digests, table)


def has_corrections(layer, planes=None) -> bool:
    """Whether a Labels layer holds what the plugin did not write there (on ``planes`` of a stack
    only, if given): its pixels or its instance table (a class set, a row added; on ``planes``, the
    rows of the labels there) differ from the plugin's last write.

    A layer the plugin never wrote counts as the user's as soon as it holds a label. The
    correction panel may bring the table in line with unchanged pixels (drop the rows of
    instances hidden under others); that is not a correction.
    """
    data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    record = _written.get(layer)
    if record is None:
        if planes is not None:
            return any(np.any(data[tuple(plane)]) for plane in planes)
        return bool(np.any(data)) or len(layer.features) > 0
    before, table = record
    checked = None if planes is None else [tuple(plane) for plane in planes]
    digests = _plane_digests(layer, checked)  # only the planes checked are hashed
    checked = list(digests) if checked is None else checked
    if any(digests.get(plane) != before.get(plane) for plane in checked):
        return True
    from ..edit import sync_table

    def rows(table):
        return table if planes is None else _rows_of(table, on_planes)

    on_planes = np.unique([data[plane] for plane in checked]) if planes is not None else None
    now = _table_digest(rows(features_table(layer.features)))
    if now == _table_digest(rows(table)):
        return False
    return now != _table_digest(rows(sync_table(data, table)))


def corrections_kept_of(viewer, layer) -> list:
    """The copies of corrections (`keep_corrections`) kept of the instances ``layer`` when it
    holds its last run's instances as the run left them (no correction since), else ``[]``.

    Such a layer is no correction: the user's are in the copies (*Learn from corrections*
    refuses it, naming them).
    """
    from napari.layers import Labels

    entry = marker_of(layer)
    if layer not in _written or not entry or has_corrections(layer):
        return []
    return [other for other in viewer.layers if isinstance(other, Labels) and other is not layer
            and marker_of(other).get("role") == "kept" and marker_of(other).get("image_id") == entry.get("image_id")]


def keep_corrections(viewer, layer, planes=None):
    """Copy the Labels ``layer`` (None: nothing to keep) before a run replaces it (or, given, its
    ``planes`` of a stack), if it holds corrections (there).

    The copy, ``<name> (corrected)`` (then ``(corrected 2)``, …: an earlier copy is never
    replaced), has the layer's pixels, features, metadata (class names and image, as export
    and *Learn from corrections* read them; marked as a copy kept, ``kept``), transforms and
    colours; it is added hidden, so
    that the new result is what shows, and leaves the layer selection as it was (napari
    selects a layer it adds: the next key would go to the hidden copy). Returns the copy, or
    None when nothing was kept.
    """
    from napari.layers import Labels

    if not isinstance(layer, Labels) or layer not in viewer.layers or not has_corrections(layer, planes):
        return None
    data = [np.array(level) for level in layer.data] if layer.multiscale else np.array(layer.data)
    return add_kept_copy(viewer, layer, data)


def add_kept_copy(viewer, layer, data):
    """Add ``data`` as the hidden copy of corrections of the Labels ``layer`` (`keep_corrections`):
    ``<name> (corrected)``, or ``(corrected 2)``, … when taken, with the layer's features, metadata
    (marked ``kept``), transforms and colours, leaving the layer selection as it was. Returns the copy."""
    name = layer.name
    kept_name, number = name + KEPT_SUFFIX, 1
    while kept_name in viewer.layers:
        number += 1
        kept_name = f"{name}{KEPT_SUFFIX[:-1]} {number})"
    selected, active = set(viewer.layers.selection), viewer.layers.selection.active
    kept = viewer.add_labels(
        data, name=kept_name, multiscale=layer.multiscale, features=layer.features.copy(),
        metadata=remarked(layer, "kept"), opacity=layer.opacity, colormap=layer.colormap,
        visible=False, **world_kwargs(layer))
    viewer.layers.selection.clear()
    viewer.layers.selection.update(selected)
    viewer.layers.selection.active = active
    return kept
