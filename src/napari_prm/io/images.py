"""Images in: the one image reader and the one RGB normaliser.

`read_image` reads every image file napari-prm opens (command line, datasets, proposal
files through `read_array`); `as_rgb_float` turns any image array (a file's, or a napari
layer's plane) into the RGB floats in [0, 1] that both the network and the built-in
proposals start from.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .._validate import path_like, path_list

__all__ = ["IMAGE_SUFFIXES", "read_array", "read_image", "pick_channels", "checked_channels", "channels_for",
           "read_stack", "stack_planes", "ImageStack", "image_array",
           "as_rgb_float", "opacity_note", "unreadable_images", "channels_first_note", "format_note"]

#: File name suffixes `read_image` reads: TIFF through tifffile, the others through imageio
#: (Pillow). Folders given to ``napari-prm predict`` and dataset folders are filtered by them.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")

#: Percentiles between which images other than uint8, bool and [0, 1] floats are stretched.
STRETCH_PERCENTILES = (0.5, 99.5)

#: The least maximum of a float image of whole numbers within [0, 255] that `as_rgb_float`
#: reads as an 8-bit image (divided by 255): one using the 8th bit, as every one of 233
#: photos (coco128, prm_demo) does (their maxima are 239 and above). Below it, the values are
#: stretched as other float images are (benchmarks/float_image_rule.py).
EIGHT_BIT_TOP = 128


def read_array(path: str | os.PathLike, *, what: str = "image", indices: bool = False) -> np.ndarray:
    """A file's array as stored: TIFF through tifffile, other formats through imageio.

    Parameters
    ----------
    path : path-like
    what : str
        What the file holds, for the error message (``"label image"``, ...).
    indices : bool
        Read a palette image (a PNG or GIF of Pillow's mode ``P``, as PASCAL VOC's
        segmentation PNGs are) as its palette indices, ``(H, W)`` integers, rather than as
        the colours they stand for (the default, as images are shown). For label images.

    Returns
    -------
    ndarray
        Whatever shape and dtype the file holds (a stack, a label image, ...).

    Raises
    ------
    ValueError
        ``"cannot read <what> <path>: <reason>"`` when the file cannot be read.
    """
    return _read_array(path, what=what, indices=indices)[0]


def _read_array(path: str | os.PathLike, *, what: str = "image", indices: bool = False,
                tiff: Callable[[tifffile.TiffFile], Any] | None = None) -> tuple[np.ndarray, Any]:
    """`read_array`'s array, and for a file read as a TIFF ``tiff(tif)`` of the file open for it (True
    without ``tiff``); None for other formats. For a caller that wants to know whether the file is a
    TIFF, or what it records, as well: the file is opened, and its first bytes read, once."""
    path = path_like(what, path)
    _check_file(path, what)
    try:
        if _is_tiff(path):  # by its content too: a PNG or JPEG named .tif is read by imageio (`format_note`)
            with tifffile.TiffFile(path) as tif:
                return _tiff_data(tif), (True if tiff is None else tiff(tif))
        import imageio.v3 as iio

        if indices and iio.immeta(path).get("mode") in ("P", "PA"):
            return np.asarray(iio.imread(path, mode="P")), None  # imageio otherwise gives the colours
        return np.asarray(iio.imread(path)), None
    except Exception as error:  # the readers raise many types for a broken file
        raise _unreadable(what, path, error) from error


def _tiff_data(tif: tifffile.TiffFile) -> np.ndarray:
    """An open TIFF's array (what ``tifffile.imread`` reads); ValueError for a file in which
    tifffile finds no page: a damaged header gives it an empty array, not an error."""
    if len(tif.pages) == 0:
        raise ValueError("it holds no image: the TIFF header points to no readable page (a damaged "
                         "file, or not a TIFF): copy or save it again")
    return np.asarray(tif.asarray())


def _check_file(path, what: str) -> None:
    """Refuse (ValueError) a path that is no file, or an empty one: `read_array` reads neither."""
    if not path.is_file():
        reason = "it is a folder" if path.is_dir() else "no such file"
        raise ValueError(f"cannot read {what} {path}: {reason}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {what} {path}: the file is empty (0 bytes)")


def _unreadable(what: str, path, error: Exception) -> ValueError:
    """`read_array`'s error for a file that a reader failed on: ``"cannot read <what> <path>: <reason>"``."""
    reason = str(error) or type(error).__name__
    if type(error).__name__ == "DecompressionBombError":
        # Pillow refuses images of over twice Image.MAX_IMAGE_PIXELS (179 megapixels by
        # default), which a small file could make it allocate; its message speaks of an attack
        reason = (f"{reason.split(', could be')[0]}: Pillow does not decode images this large "
                  "(a guard against decompression bombs); split it into tiles, or save it as "
                  "TIFF, which is read whatever its size")
    elif reason.startswith("not a TIFF file") and _is_tiff(path):  # nor another image: `_disguised_format`
        reason = (f"neither a TIFF ({reason}) nor an image of another format that Pillow reads: a damaged or "
                  "foreign file")
    elif reason.startswith("failed to read ") and ", got " in reason:
        reason = f"the file is cut short (tifffile: {reason}): copy or save it again"  # a TIFF's data
    elif "backend" in reason or "can not handle" in reason:
        # imageio's "no backend ... pip install ..." means that no reader recognised the
        # content: the file is not an image of its kind, no plugin is missing.
        if path.suffix.lower() in IMAGE_SUFFIXES:
            reason = f"not a {path.suffix.lstrip('.').upper()} image, or a corrupt one (its content is not recognised)"
        else:  # "not a PY image" for a script given by mistake
            reason = (f"not an image: {'a ' + repr(path.suffix) + ' file' if path.suffix else 'a file without suffix'}"
                      f", whose content no image reader recognises (images are {', '.join(IMAGE_SUFFIXES)})")
    return ValueError(f"cannot read {what} {path}: {reason}")


def read_plane(path: str | os.PathLike, plane: int, *, what: str = "image") -> np.ndarray | None:
    """One plane of a TIFF's first series, reading that plane's page only (not the whole stack).

    Parameters
    ----------
    path : path-like
    plane : int
        The plane, in file order: ``read_stack(path).planes[plane]`` for an image stack, the
        ``plane``-th (H, W) of an (N, H, W) label stack; 0 for a 2-D TIFF.
    what : str
        What the file holds, for the error message.

    Returns
    -------
    ndarray or None
        The plane as stored (``(H, W)`` or ``(H, W, S)``); None for a file that is not a TIFF,
        or whose series does not store one page per plane (read it whole then).

    Raises
    ------
    ValueError
        Naming the file and plane, when the plane cannot be read or is out of range.
    """
    path = path_like(what, path)
    if not _is_tiff(path) or not path.is_file():
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = tuple(int(n) for n in series.keyframe.shape)
            shape = tuple(int(n) for n in series.shape)
            if (not page or shape[len(shape) - len(page):] != page
                    or len(series.pages) * int(np.prod(page)) != int(np.prod(shape))):
                return None
            if not 0 <= plane < len(series.pages):
                raise ValueError(f"cannot read plane {plane} of {what} {path}: it has {len(series.pages)}")
            return np.asarray(series.pages[plane].asarray()).reshape(page)
    except ValueError:
        raise
    except Exception as error:  # the readers raise many types for a broken file
        raise ValueError(f"cannot read plane {plane} of {what} {path}: {error or type(error).__name__}") from error


def quiet_large_image_warning() -> None:
    """Ignore, in this process, Pillow's warning for an image between its two size limits (89
    and 179 megapixels: a 10000×10000 PNG), which it still reads: "... could be decompression
    bomb DOS attack" is noise to the user who made the image. The command line and
    each task that `napari_prm.batch.predict_many` runs on a cluster call it (a threaded,
    in-process cluster runs its tasks in the caller's process, which then ignores this
    warning too)."""
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit of \d+ pixels, "
                            "could be decompression bomb")


def read_image(path: str | os.PathLike, *, channels: Sequence[int] | None = None) -> np.ndarray:
    """Read one 2-D image (gray, RGB or RGBA; 8- or 16-bit) from any of ``IMAGE_SUFFIXES``.

    Parameters
    ----------
    path : path-like
        The image file: read with tifffile for a ``.tif``/``.tiff`` suffix, else with imageio; a
        ``.tif`` whose content is another format (a PNG or JPEG so named) is read by its content
        with imageio (`format_note` says so).
    channels : sequence of 1 to 3 int, optional
        Pick these channels of a multichannel image (2 or more fluorescence channels) as the
        network's red, green and blue, in this order (see `pick_channels`): 1 channel gives a
        gray ``(H, W)`` image, 2 give ``(H, W, 3)`` with an empty (zero) blue, 3 give
        ``(H, W, 3)``. The channels are found on a TIFF's ``C`` (ImageJ, OME) or ``S``
        (samples) axis, else on the shorter of its first and last axes (an unnamed
        ``(C, Y, X)`` or ``(Y, X, C)``), which must be shorter than the image's sides (50
        unnamed pages of 48×48 are refused); on the last axis of other formats (RGB: 0, 1, 2).
        A gray image has one channel, 0. None (the default) reads the image as it is, by
        the rules below.

    Returns
    -------
    (H, W) or (H, W, C) ndarray
        In the file's dtype; a channels-first TIFF (C, H, W) with C in {3, 4} is moved to
        channels-last, unless the TIFF says that its first axis holds z-planes or time points
        (ImageJ or OME axes), or it holds 4 pages: a TIFF marks an
        alpha channel only among the samples of one page, so 4 pages are 4 planes or
        channels, not RGBA. Those are refused as stacks. A gray + alpha PNG (or WebP, ...,
        or a TIFF that marks its 2nd sample as alpha) is returned as RGBA, the gray
        repeated; a CMYK JPEG or TIFF as RGB (as Pillow converts it:
        R = (1 − C)(1 − K), ...), not as RGBA with K as the opacity. A TIFF's
        4th sample is the opacity only when the file marks it as alpha: an RGB TIFF with an
        unmarked extra sample is returned as RGB (as Pillow reads it), and 4 gray samples
        are refused.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or is not a single 2-D image.

    Notes
    -----
    TIFFs are read with tifffile, other formats with imageio (Pillow), which reads 16-bit
    grayscale PNGs exactly but reduces 16-bit colour PNGs to 8 bits per channel.

    Only two singleton axes are dropped, never the height or the width: a leading plane
    axis of length 1 (a one-frame GIF is ``(1, H, W, C)``, a one-page stack
    ``(1, H, W)``) and a trailing channel axis of length 1 (``(H, W, 1)``). A ``(1, W, C)``
    array with C in {3, 4} is a one-row colour image (H = 1), not W×C gray. Turn the
    result into network input with `as_rgb_float`, which needs at least 2×2 pixels.
    """
    path = path_like("image", path)
    if channels is not None:
        channels = checked_channels(channels)
    image, tiff = _read_array(path, what="image")
    header = (lambda: _tiff_header(path)) if tiff else None  # the header read only when a rule needs it
    if channels is not None:
        return _picked_channels(path, image, header, channels)
    return _one_image(path, image, header)


#: The most channels `read_image` picks: the network's red, green and blue.
MAX_CHANNELS = 3


def checked_channels(channels: Any, *, name: str = "channels") -> list[int] | None:
    """``channels`` as a list of 1 to 3 channel indices (None stays None).

    Raises
    ------
    ValueError
        Naming ``name``: not a sequence of 1 to 3 whole numbers from 0, or a channel given twice
        (``[0, 0]``: each of red, green and blue takes its own channel).
    """
    if channels is None:
        return None
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        channels = [channels]
    try:
        values = list(channels)
    except TypeError:
        values = None
    if (values is None or isinstance(channels, (str, bytes)) or not 1 <= len(values) <= MAX_CHANNELS
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in values)):
        raise ValueError(f"{name}: expected 1 to {MAX_CHANNELS} channel indices from 0 (the network's red, "
                         f"green and blue; 0,2 picks the 1st and 3rd channels), got {channels!r}")
    values = [int(c) for c in values]
    repeated = next((c for i, c in enumerate(values) if c in values[:i]), None)
    if repeated is not None:  # [0, 0] read one channel as red and green: a yellow image, not two channels
        raise ValueError(f"{name}: channel {repeated} is given more than once in {_channel_list(values)}: give each "
                         f"channel once, as red, green and blue in this order (1 channel alone is read as gray)")
    return values


def channel_words(text: str) -> list[int]:
    """The channel indices written in ``text``, separated by spaces or commas (``"0 2"``,
    ``"0,2"``): how the command line's ``--channels`` and the Train widget's *channels* field
    are read. Empty text gives ``[]``; `checked_channels` checks how many there are.

    Parameters
    ----------
    text : str
        The indices, e.g. ``"0 2"`` or ``"0,2"``.

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        When a word is not a whole number; the message quotes ``text``.
    """
    try:
        return [int(word) for word in re.split(r"[\s,]+", text) if word]
    except ValueError:
        raise ValueError(f"expected channel indices such as 0 2 or 0,2, got {text!r}") from None


def parse_channels(text: str, *, name: str = "channels") -> list[int] | None:
    """Channels written as text (`channel_words`) as `checked_channels` gives them; None for
    empty text (the images as they are, or a model's channels).

    Parameters
    ----------
    text : str
        The indices, e.g. ``"0 2"`` or ``"0,2"``.
    name : str
        What the text is (a field, an argument), which errors start with.

    Returns
    -------
    list of int or None

    Raises
    ------
    ValueError
        Naming ``name``: not 1 to 3 whole numbers from 0, or a channel written twice.
    """
    try:
        words = channel_words(text)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return checked_channels(words, name=name) if words else None


def channels_for(given: Sequence[int] | None, recorded: Sequence[int] | None) -> tuple[list[int] | None, str | None]:
    """The channels to read images with, from those given and those a model was trained on.

    Parameters
    ----------
    given : sequence of int or None
        Those asked for (``--channels``, ``channels=``).
    recorded : sequence of int or None
        Those the model's checkpoint records (``model.settings["channels"]``; None for a
        model trained without them).

    Returns
    -------
    channels : list of int or None
        ``given`` when given, else ``recorded``.
    note : str or None
        When both are given and differ: the model was trained on other channels.
    """
    given, recorded = checked_channels(given), checked_channels(recorded, name="the model's channels")
    if given is None:
        return recorded, None
    if recorded is not None and given != recorded:
        return given, (f"channels {_channel_list(given)} differ from those the model was trained on "
                       f"({_channel_list(recorded)}): its results may not mean what they did in training")
    return given, None


def _channel_list(channels: Sequence[int]) -> str:
    return ",".join(str(c) for c in channels)


def channels_read_as(channels: Sequence[int]) -> str:
    """How `read_image` lays out ``channels`` (1 to 3 indices), in words: ``"image channel 1 as gray"``,
    ``"image channels 0,2 as red and green (an empty blue)"``, ``"image channels 0,1,2 as red, green
    and blue"``; the one wording of the command line's and the Train widget's notes (one channel
    was said to be read "as red, green and blue").

    Parameters
    ----------
    channels : sequence of 1 to 3 int
        The channels, as `checked_channels` takes them.
    """
    channels = checked_channels(channels)
    if len(channels) == 1:
        return f"image channel {channels[0]} as gray"
    laid = "as red and green (an empty blue)" if len(channels) == 2 else "as red, green and blue"
    return f"image channels {_channel_list(channels)} {laid}"


def pick_channels(image: np.ndarray, channels: Sequence[int], *, name: str = "image",
                  channel_axis: int = -1) -> np.ndarray:
    """Channels of a multichannel array laid out as the network's red, green and blue.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        A 2-D image is one channel (0); ``channel_axis`` says where the channels are in a
        3-D one.
    channels : sequence of 1 to 3 int
        The channels, in the order red, green, blue.
    name : str
        What the image is (``"image <path>"``), for the error message.
    channel_axis : int
        The channel axis of a 3-D ``image``.

    Returns
    -------
    (H, W) or (H, W, 3) ndarray
        In ``image``'s dtype: one channel as a gray image; 2 as red and green and a blue of
        zeros (which `as_rgb_float` leaves at 0, stretching the others each by its own
        percentiles); 3 as red, green and blue.

    Raises
    ------
    ValueError
        Naming ``name``, the channels it has and those asked for, for an index out of range;
        for an array of other than 2 or 3 dimensions.
    """
    channels = checked_channels(channels)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    elif image.ndim == 3:
        image = np.moveaxis(image, channel_axis, -1)
    else:
        raise ValueError(f"cannot pick channels {_channel_list(channels)} of {name}: expected one 2-D image with "
                         f"channels, got an array of shape {image.shape}")
    count = image.shape[-1]
    outside = [c for c in channels if c >= count]
    if outside:
        has = "1 channel (0: a gray image)" if count == 1 else f"{count} channels (0 to {count - 1})"
        raise ValueError(f"cannot read {name}: channel {outside[0]} of channels {_channel_list(channels)} "
                         f"(channels=, --channels) is out of range: it has {has}")
    picked = image[..., channels]
    if len(channels) == 1:
        return np.ascontiguousarray(picked[..., 0])
    if len(channels) == 2:
        picked = np.concatenate([picked, np.zeros_like(picked[..., :1])], axis=-1)
    return np.ascontiguousarray(picked)


def _picked_channels(path, image: np.ndarray, header: Callable[[], tuple] | None, channels: list[int]) -> np.ndarray:
    """`read_image`'s image of ``channels`` from the array ``image`` read from ``path`` (``header``: as
    `_one_image`'s)."""
    axes = header()[0] if header is not None else None
    if axes is not None and len(axes) != image.ndim:
        axes = None
    while image.ndim > 3 and image.shape[0] == 1:  # one frame, one plane
        image, axes = image[0], axes[1:] if axes else None
    axis = -1
    if image.ndim == 3:
        if axes and axes[0] in _NOT_COLOUR_AXES:
            raise ValueError(f"cannot read image {path}: channels {_channel_list(channels)} are picked from one "
                             f"2-D image, and its first axis holds {image.shape[0]} {_NOT_COLOUR_AXES[axes[0]]} "
                             f"(axes {axes}): save one plane with its channels")
        named = [i for i, a in enumerate(axes or "") if a in "CS"]
        if named:  # ImageJ/OME channels, or a page's samples
            axis = named[0]
        elif header is not None:  # unnamed pages: (C, Y, X) or (Y, X, C), the channels the shorter axis
            axis = 0 if image.shape[0] <= image.shape[-1] else -1
            if image.shape[axis] >= min(np.delete(image.shape, axis)):
                # no axis shorter than the image's sides: (50, 48, 48), 50 unnamed pages of 48×48, had
                # their width read as channels, the network given a 50×48 image of first columns
                raise ValueError(f"cannot read image {path}: channels {_channel_list(channels)} are picked from "
                                 f"the shortest axis of an unnamed (C, Y, X) or (Y, X, C) TIFF, and neither its first "
                                 f"nor its last axis is shorter than its sides (shape {image.shape}): z-planes or time "
                                 "points are not channels (save one plane with its channels); save channels with "
                                 "ImageJ axes CYX (tifffile.imwrite(path, data, imagej=True, "
                                 "metadata={'axes': 'CYX'}))")
    elif image.ndim != 2:
        raise ValueError(f"cannot read image {path}: channels {_channel_list(channels)} are picked from one 2-D "
                         f"image, got an array of shape {image.shape}"
                         + (f" (axes {axes})" if axes else "") + ": save one plane with its channels")
    picked = pick_channels(image, channels, name=f"image {path}", channel_axis=axis)
    if min(picked.shape[:2]) == 0:
        raise ValueError(f"cannot read image {path}: it has no pixels ({picked.shape[0]}×{picked.shape[1]})")
    return picked


def _one_image(path, image: np.ndarray, header: Callable[[], tuple] | None) -> np.ndarray:
    """`read_image`'s image from the array ``image`` read from ``path``; ``header()`` gives the
    TIFF's `_tiff_header`, asked for only when a rule needs it (None: the file was not read as a
    TIFF, `_is_tiff`)."""
    image = image.reshape(_singletons_dropped(image.shape))
    if _channels_first(image.shape, tiff=header is not None):
        axis = _tiff_leading_axis(image.ndim, header)
        if refused := _channels_first_refused(image.shape, axis):
            what, advice = refused
            raise ValueError(f"cannot read image {path}: expected one 2-D gray, RGB or RGBA image, "
                             f"got an array of shape {image.shape} whose first axis {what}; {advice}")
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 2 and (header is None or _marks_alpha(header()[2])):
        # Pillow's only two-band mode is gray + alpha (a PNG's "LA"): RGBA with the gray repeated;
        # a TIFF's second sample only when the file marks it as alpha
        image = np.concatenate([image[..., :1]] * 3 + [image[..., 1:]], axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 4:
        kind = _four_channels(path, header)
        if kind == "CMYK":
            image = _cmyk_to_rgb(image)
        elif kind == "RGBX":  # the 4th sample is padding or unspecified data, not opacity
            image = image[..., :3]
        elif kind == "RGBA" and header is not None and (most := float(_opacity(image[..., 3].max(), np.float64))) < 0.5:
            # tifffile.imwrite marks a 4th sample as alpha by default: 4 fluorescence channels
            # (12-bit counts in uint16) read as RGBA left the network a black image
            raise ValueError(
                f"cannot read image {path}: expected one 2-D gray, RGB or RGBA image, got 4 channels whose "
                f"4th, marked as alpha (tifffile.imwrite marks a 4th channel so by default), is not even half "
                f"opaque anywhere (largest value {image[..., 3].max()} in {image.dtype}): read as RGBA, the "
                f"image would keep at most {most:.0%} of its brightness (none where the 4th channel is 0); as 4 "
                "channels (DAPI, GFP, ...) it is not one image: " + _CHANNELS_ADVICE)
        elif kind != "RGBA":
            raise ValueError(f"cannot read image {path}: expected one 2-D gray, RGB or RGBA image, got "
                             f"4 channels (photometric {kind}), none of them marked as alpha; " + _PICK_CHANNELS
                             + "or save one channel or an RGB image")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot read image {path}: expected one 2-D gray, RGB or RGBA "
                         f"image, got an array of shape {image.shape}"
                         f"{_stack_hint(image.shape, _tiff_leading_axis(image.ndim, header))}")
    if image.size == 0:
        raise ValueError(f"cannot read image {path}: it has no pixels "
                         f"({image.shape[0]}×{image.shape[1]})")
    return image


def _singletons_dropped(shape: tuple) -> tuple:
    """The shape `_one_image` works on: one frame of a ``(1, H, W, C)`` stack, one plane of a
    ``(1, H, W)`` one."""
    shape = tuple(shape)
    if len(shape) == 4 and shape[0] == 1:  # one frame of a (frames, H, W, C) stack
        shape = shape[1:]
    if len(shape) == 3 and shape[0] == 1 and shape[-1] not in (1, 3, 4):
        shape = shape[1:]  # one plane of a (planes, H, W) stack
    return shape


def _channels_first(shape: tuple, *, tiff: bool) -> bool:
    """Whether `read_image` takes an array of ``shape`` read from a file (``tiff``: read as a TIFF,
    `_is_tiff`) for channels first, ``(3 or 4, H, W)``, unless the TIFF's axes refuse it
    (`_channels_first_refused`): only a TIFF stores that (a gray + alpha PNG of 3 rows is ``(3, W, 2)``)."""
    return len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (1, 3, 4) and tiff


def _channels_first_refused(shape: tuple, axis: str | None) -> tuple[str, str] | None:
    """(what its first axis holds, what to do) when a channels-first array of ``shape``, whose TIFF
    names its first axis ``axis``, is not one colour image; None when it is."""
    if axis in _NOT_COLOUR_AXES:
        what = f"holds {shape[0]} {_NOT_COLOUR_AXES[axis]}, not colour channels"
    elif shape[0] == 4 and axis not in (None, "S"):
        what = ("holds 4 planes or channels, none of them an alpha channel (an RGBA TIFF "
                "marks it as an extra sample)")
    else:
        return None
    advice = (_CHANNELS_ADVICE if axis == "C" else _unnamed_pages_advice() if axis in ("Q", "I")
              else "save one 2-D plane or an RGB image")
    return what, advice


def channels_first_note(path: str | os.PathLike) -> str | None:
    """How `read_image` reads a channels-first TIFF, ``(3, H, W)`` or ``(4, H, W)``, from its header.

    `read_image` reads such a TIFF as one RGB (or RGBA) image, its first axis the colours, unless
    its axes say z-planes or time points (see `read_image`); napari's own reader opens the same file
    as 3 or 4 planes. napari-prm's napari reader, the command line and `predict_many` all ask this
    function, so that a file is read the same way everywhere and an ambiguous one says how.

    Parameters
    ----------
    path : path-like
        The image file.

    Returns
    -------
    str or None
        None when `read_image` does not read the file as a channels-first colour image (any other
        format or layout, a stack, a file it refuses or cannot open); ``""`` when the file itself
        says that its first axis holds colour samples (a planar RGB TIFF: tifffile's axes ``SYX``);
        else a note saying how it was read: unnamed pages (``QYX``: tifffile writes a
        ``(3, H, W)`` array so with ``photometric='minisblack'``) or named channels (ImageJ or OME
        ``CYX``) taken for red, green and blue.
    """
    path = path_like("image", path)
    if not _is_tiff(path) or not path.is_file():
        return None
    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 -- read_image reports what is wrong with the file
        return None
    with tif:
        return _channels_first_note_of(path, tif)


def _channels_first_note_of(path, tif: tifffile.TiffFile) -> str | None:
    """`channels_first_note` of the TIFF ``path`` opened as ``tif``, from its header: for a
    caller that reads more of the open file (napari-prm's napari reader)."""
    try:
        axes, full = _series_of(tif)
        header = _header_of(tif)  # its first page, which the series was read from
    except Exception:  # noqa: BLE001 -- read_image reports what is wrong with the file
        return None
    shape = _singletons_dropped(full)
    if not _channels_first(shape, tiff=_tiff_named(path)):  # its content a TIFF: tifffile opened it
        return None
    axis = axes[0] if len(axes) == len(shape) else None
    if _channels_first_refused(shape, axis) is not None:
        return None
    if shape[0] == 4 and _four_channels(path, lambda: header) not in ("RGBA", "RGBX", "CMYK"):
        return None  # 4 samples, none marked as alpha (photometric MINISBLACK): read_image refuses them
    if axis == "S":
        return ""
    colours = "red, green and blue" if shape[0] == 3 else "red, green, blue and opacity"
    held = (f"{shape[0]} channels (axes {axes})" if axis == "C"
            else f"{shape[0]} unnamed pages (tifffile's axes {axes})")
    return (f"read {path.name} {full} as one {'RGB' if shape[0] == 3 else 'RGBA'} image, its {held} as "
            f"{colours}: the file does not mark them as colours, and napari's own reader opens it as "
            f"{shape[0]} planes. If they are not its colours, save them as a z-stack (ImageJ axes ZYX) "
            "or pick channels (--channels, channels=)")


#: Axes of a TIFF series (tifffile's codes) whose planes are predicted one by one: a stack.
STACK_AXES = "ZT"
#: What tifffile's axis codes hold, for messages.
_AXIS_NAMES = {"Z": "z-planes", "T": "time points", "C": "channels", "S": "samples", "Q": "unnamed pages",
               "I": "unnamed pages", "R": "tiles", "E": "lambda", "H": "lifetime", "A": "angles",
               "P": "phases", "L": "exposures", "V": "views", "M": "mosaic tiles"}


@dataclass(eq=False)
class ImageStack:
    """The planes of a TIFF stack of z-planes or time points (`read_stack`).

    Attributes
    ----------
    planes : (N, H, W) or (N, H, W, 3) ndarray
        The gray or RGB planes in file order (Z×T flattened as the file stores them), in
        the file's dtype.
    axes : str
        tifffile's axes of the file's series (``"ZYX"``, ``"TZYX"``, ``"TYXS"``, ...).
    shape : tuple of int
        The series' shape: its leading (plane) axes' lengths multiply to N.
    pixel_size : dict or None
        The pixel size the file records (`napari_prm.io.tiff_pixel_size`, with its plane
        spacing), for `napari_prm.io.write_stack_prediction` as ``napari-prm predict`` writes a
        stack's labels; None when it records none.
    """

    planes: np.ndarray
    axes: str
    shape: tuple[int, ...]
    pixel_size: dict | None = None

    def __len__(self) -> int:
        return len(self.planes)

    @property
    def label_axes(self) -> str | None:
        """The axes of its (N, H, W) label stack: ``"ZYX"`` or ``"TYX"`` for a stack of one plane axis
        (``ZYX``, ``TYX``, ``ZYXS``, ``TYXS``); None when its planes flatten two (``TZYX``)."""
        plane_axes = _plane_axes(self.axes)
        return f"{plane_axes}YX" if len(plane_axes) == 1 else None


def stack_planes(path: str | os.PathLike) -> tuple[str, tuple[int, ...]] | None:
    """Whether an image file is a stack of gray or RGB planes, from the TIFF's header only.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    (axes, shape) or None
        tifffile's axes and shape of the TIFF's first series when its leading axes (those
        before ``YX`` or, for RGB planes, ``YXS``) are z-planes or time points (``Z``, ``T``;
        ImageJ hyperstacks and OME-TIFFs name them, so does tifffile's own metadata) and
        hold more than one plane. None for any other file (`read_image` reads it, or
        refuses it as it does a 2-D image's: channels, unnamed pages).

    Raises
    ------
    ValueError
        Naming the file and its axes, for a TIFF whose planes are z-planes or time points
        but which holds something else too (channels: which ones to use is not said), or
        whose planes are neither gray nor RGB.
    """
    path = path_like("image", path)
    series = _tiff_series(path)
    return None if series is None else _stack_of(path, *series)


def _tiff_series(path: os.PathLike) -> tuple[str, tuple[int, ...]] | None:
    """tifffile's axes and shape of a TIFF file's first series, from its header; None for
    another format, a missing file or one tifffile cannot open (`read_image` says what is
    wrong with it)."""
    if not _is_tiff(path) or not path.is_file():
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            return _series_of(tif)
    except Exception:  # noqa: BLE001 -- read_image reports what is wrong with the file
        return None


def _series_of(tif: tifffile.TiffFile) -> tuple[str, tuple[int, ...]]:
    """tifffile's axes and shape of an open TIFF's first series."""
    series = tif.series[0]
    return str(series.axes), tuple(int(n) for n in series.shape)


def _stack_of(path, axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]] | None:
    """`stack_planes`'s answer for the TIFF ``path`` whose first series has ``axes`` and ``shape``."""
    leading = _plane_axes(axes)
    if not any(axis in STACK_AXES for axis in leading) or int(np.prod(shape[:len(leading)])) < 2:
        return None
    where = f"cannot read image {path}: its axes {axes} (shape {shape})"
    others = [axis for axis in leading if axis not in STACK_AXES]
    if others or leading == axes:
        held = ", ".join(dict.fromkeys(_AXIS_NAMES.get(axis, axis) for axis in others)) or "no Y and X axes"
        raise ValueError(f"{where} hold {', '.join(_AXIS_NAMES[a] for a in dict.fromkeys(leading) if a in STACK_AXES)}"
                         f" and {held}: napari-prm predicts a stack of gray or RGB planes one by one "
                         "(axes Z and/or T, then YX, or YXS with 3 samples); save one channel, or the "
                         "channels as RGB planes")
    if axes.endswith("YXS") and shape[-1] != 3:
        raise ValueError(f"{where} hold planes of {shape[-1]} samples: napari-prm predicts a stack of gray "
                         "or RGB planes (3 samples); save gray or RGB planes")
    return axes, shape


def plane_count(path: str | os.PathLike) -> int:
    """The planes ``napari-prm predict`` runs on an image file, from a TIFF's header only: a
    stack's N (`stack_planes`), else 1 (also for a file that is refused or unreadable: it
    fails as one image)."""
    try:
        found = stack_planes(path)
    except ValueError:
        return 1
    if found is None:
        return 1
    axes, shape = found
    return int(np.prod(shape[:len(_plane_axes(axes))]))


def _plane_axes(axes: str) -> str:
    """The leading (plane) axes of a TIFF series' axes: those before ``YX`` or ``YXS``."""
    return axes[:-3] if axes.endswith("YXS") else axes[:-2] if axes.endswith("YX") else axes


def read_stack(path: str | os.PathLike) -> ImageStack | None:
    """Read a TIFF stack of z-planes or time points as its planes; None for another image.

    A multi-page TIFF is a stack when its axes say so (`stack_planes`: ImageJ or OME axes
    ``Z`` and/or ``T`` before ``YX``, or ``YXS`` for RGB planes); its planes are then the
    2-D gray or RGB images that ``napari-prm predict`` and the plugin predict one by one.
    Any other file (a 2-D image, a multi-channel image without Z or T) gives None: read
    it with `read_image`, whose rules and messages apply to it.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    ImageStack or None

    Raises
    ------
    ValueError
        Naming the file: it cannot be read, or its axes are not those of a stack of gray or
        RGB planes (see `stack_planes`), or a plane has fewer than 2×2 pixels.
    """
    found = stack_planes(path)
    if found is None:
        return None
    from .labels import _pixel_size_of

    path = path_like("image", path)
    data, pixel_size = _read_array(path, what="image", tiff=_pixel_size_of)  # one opening of the file
    return _planes_of(path, *found, data, pixel_size)


def _planes_of(path, axes: str, shape: tuple[int, ...], data: np.ndarray,
               pixel_size: dict | None = None) -> ImageStack:
    """`read_stack`'s stack from the data ``data`` of the TIFF stack ``path`` (`stack_planes`: ``axes``, ``shape``)."""
    if data.shape != shape:
        raise ValueError(f"cannot read image {path}: its axes {axes} say shape {shape}, its data has shape "
                         f"{data.shape}; save it again")
    plane_ndim = 3 if axes.endswith("YXS") else 2
    planes = data.reshape((-1, *shape[-plane_ndim:]))
    if min(planes.shape[1:3]) < 2:
        raise ValueError(f"cannot read image {path}: its planes are {planes.shape[1]}×{planes.shape[2]} pixels "
                         f"(shape {shape}); a plane must be at least 2×2 pixels")
    return ImageStack(planes, axes, shape, pixel_size)


def _open_tiff(path: Path) -> tifffile.TiffFile:
    """The image file ``path`` opened by tifffile (to be closed by the caller), or a ValueError
    naming it, as `read_image` words it, when it is missing or tifffile cannot open it."""
    _check_file(path, "image")
    try:
        return tifffile.TiffFile(path)
    except Exception as error:  # the readers raise many types for a broken file
        raise _unreadable("image", path, error) from error


def _channels_first_image(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """`read_image`'s image of a TIFF and its `channels_first_note`, the file opened once: for
    napari-prm's napari reader, which opens a channels-first TIFF as one RGB(A) image.

    Raises
    ------
    ValueError
        Naming the file, as `read_image` does.
    """
    path = path_like("image", path)
    tif = _open_tiff(path)
    with tif:
        note = _channels_first_note_of(path, tif)
        try:
            data = _tiff_data(tif)  # what read_array reads
        except Exception as error:  # the readers raise many types for a broken file
            raise _unreadable("image", path, error) from error
        # read as a TIFF (`_is_tiff`) when so named: tifffile opened it, so its content is one
        header = (lambda: _header_of(tif)) if _tiff_named(path) else None
        return _one_image(path, data, header), note


def _read_image_file(path: str | os.PathLike, channels: Sequence[int] | None = None
                     ) -> tuple[ImageStack | np.ndarray, dict | None]:
    """An image file as ``napari-prm predict`` reads it, a TIFF opened once: its stack of z-planes
    or time points (`read_stack`), else its one 2-D image (`read_image`), and the pixel size it
    records (`napari_prm.io.tiff_pixel_size`; None for other formats).

    Returns
    -------
    image : ImageStack or ndarray
    pixel_size : dict or None

    Raises
    ------
    ValueError
        Naming the file, as `read_stack` and `read_image` do.
    """
    from .labels import _pixel_size_of

    path = path_like("image", path)
    channels = checked_channels(channels)
    if not _is_tiff(path) or not path.is_file():
        return read_image(path, channels=channels), None
    tif = _open_tiff(path)
    with tif:
        try:
            series = _series_of(tif)
        except Exception:  # noqa: BLE001 -- reading its data says what is wrong with the file
            series = None
        # as stack_planes; with channels, one 2-D image of them (`_picked_channels` refuses a stack)
        found = None if series is None or channels is not None else _stack_of(path, *series)
        try:
            data = _tiff_data(tif)  # what read_array reads
        except Exception as error:  # the readers raise many types for a broken file
            raise _unreadable("image", path, error) from error
        pixel_size = _pixel_size_of(tif)
        if channels is not None:
            image = _picked_channels(path, data, lambda: _header_of(tif), channels)
        elif found:
            image = _planes_of(path, *found, data, pixel_size)
        else:
            image = _one_image(path, data, lambda: _header_of(tif))
        return image, pixel_size


def unreadable_images(paths, progress=None, *, channels: Sequence[int] | None = None
                      ) -> list[tuple[os.PathLike, str]]:
    """The files of ``paths`` that `read_image` cannot read, found without decoding the others.

    Each file's header is parsed (Pillow, or tifffile for a TIFF) and its end checked where
    the format marks it (a PNG's ``IEND`` chunk, a JPEG's end-of-image marker, a GIF's
    trailer, the sizes a WebP or BMP header records, the last strip of a TIFF's first page),
    which finds missing, empty, foreign and truncated files; a TIFF whose shape holds planes
    (a z-stack, a time series, channels first) is checked too. Only a file that fails one of
    these is decoded, by `read_image`, which gives its reason: a file that decodes (a JPEG
    with bytes after its end marker, a TIFF of 3 RGB planes) is not reported. Damage inside the pixel data of a file
    whose header and end are intact is not found.

    Parameters
    ----------
    paths : path-like or sequence of path-like
        The files; one path is one file.
    progress : callable, optional
        ``progress(done, total)`` after each file.
    channels : sequence of int, optional
        The channels the files are read with (`read_image`'s ``channels``).

    Returns
    -------
    list of (path, str)
        Each unreadable file with `read_image`'s message, in the order of ``paths``.
    """
    paths = path_list(paths)  # one path is one file: a str was read as its characters' files
    found = []
    for done, path in enumerate(paths, start=1):
        if channels is not None or _suspect(path):  # any file may lack a channel asked for
            try:
                read_image(path, channels=channels)
            except ValueError as error:
                found.append((path, str(error)))
        if progress is not None:
            progress(done, len(paths))
    return found


def _suspect(path) -> bool:
    """Whether a file may not be a readable image, from its header and its last bytes."""
    from pathlib import Path

    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file() or size == 0:
            return True
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
                # several planes (a z-stack, a time series, channels) may be no single 2-D image
                shape = [side for side in tif.series[0].shape if side != 1]
                planes = len(shape) > 3 or (len(shape) == 3 and shape[-1] not in (2, 3, 4))
                return not ends or max(ends) > size or planes
        from PIL import Image

        with Image.open(path):
            pass
        with open(path, "rb") as handle:
            head = handle.read(12)
            handle.seek(max(size - 64, 0))
            tail = handle.read()
    except Exception:  # the readers raise many types for a broken file
        return True
    kind = _disguised_format(path)  # a PNG named .tif: the checks of a PNG
    suffix = _format_suffix(kind) if kind else path.suffix.lower()
    if suffix == ".png":
        return not tail.endswith(b"IEND\xaeB`\x82")
    if suffix in (".jpg", ".jpeg"):
        return b"\xff\xd9" not in tail  # bytes after the marker (padding) are decoded to be sure
    if suffix == ".gif":
        return not tail.rstrip(b"\x00").endswith(b";")
    if suffix == ".webp":
        return head[:4] != b"RIFF" or int.from_bytes(head[4:8], "little") + 8 > size
    if suffix == ".bmp":
        return int.from_bytes(head[2:6], "little") > size
    return False


def _is_tiff(path) -> bool:
    """Whether ``path`` is read as a TIFF: named ``.tif``/``.tiff``, and not another image format by its
    content (`_disguised_format`: a PNG saved with a ``.tif`` name is read as a PNG). It reads the file's
    first bytes: a reader asks once per file (`_read_array`), and passes the answer on."""
    return _tiff_named(path) and _disguised_format(path) is None


def _tiff_named(path) -> bool:
    """Whether ``path`` is named as a TIFF (``.tif``/``.tiff``): `_is_tiff` of a file tifffile opened."""
    return Path(path).suffix.lower() in (".tif", ".tiff")


#: A TIFF's first bytes: classic and BigTIFF, little- and big-endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _disguised_format(path) -> str | None:
    """Pillow's name (``"PNG"``, ``"JPEG"``, ...) of the format of a file named ``.tif``/``.tiff`` whose
    content is not a TIFF but an image of that format; None for a TIFF, a file of another name, or
    content no reader recognises (tifffile then says what is wrong with it)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:  # missing, a folder: read_array says so
        return None
    if len(head) < 4 or head in _TIFF_MAGIC:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(image.format or "") or None
    except Exception:  # noqa: BLE001 -- no format Pillow knows: reported as not a TIFF
        return None


def _format_suffix(kind: str) -> str:
    """The file name suffix of Pillow's format ``kind`` (``"JPEG"``: ``.jpg``, ``"PNG"``: ``.png``)."""
    return {"JPEG": ".jpg"}.get(kind, f".{kind.lower()}")


def format_note(path: str | os.PathLike) -> str | None:
    """A note for a file whose name says TIFF (``.tif``, ``.tiff``) while its content is another image
    format (a PNG or JPEG saved or renamed so), which `read_image` reads by its content; else None.

    Parameters
    ----------
    path : path-like
        An image file.

    Returns
    -------
    str or None
        E.g. ``"cells.tif is a PNG image, not a TIFF: read as PNG, by its content (rename it to
        .png)"``; None for a TIFF, a file named as what it holds, or one that cannot be read.
    """
    path = path_like("image", path)
    kind = _disguised_format(path)
    if kind is None:
        return None
    return (f"{path.name} is a {kind} image, not a TIFF: read as {kind}, by its content (rename it to "
            f"{_format_suffix(kind)}); it records no TIFF pixel size")


def _tiff_header(path) -> tuple[str, Any, tuple]:
    """``(axes of its first series, photometric, extra samples)`` of a TIFF's first page:
    what the file says its axes and samples are."""
    with tifffile.TiffFile(path) as tif:
        return _header_of(tif)


def _header_of(tif: tifffile.TiffFile) -> tuple[str, Any, tuple]:
    """`_tiff_header` of an open TIFF."""
    page = tif.pages[0]
    return tif.series[0].axes, page.photometric, tuple(page.extrasamples or ())


def _four_channels(path, header: Callable[[], tuple] | None) -> str:
    """What a file's 4 channels are, by its own description: "RGBA", "CMYK" (print ink),
    "RGBX" (RGB and an extra sample that is not marked as alpha: Pillow's padding) or, for a
    TIFF, its photometric name (e.g. "MINISBLACK": 4 gray channels; ``header()``: its `_tiff_header`;
    None: the file is not read as a TIFF)."""
    if header is not None:
        _, photometric, extra = header()
        if photometric == tifffile.PHOTOMETRIC.SEPARATED:
            return "CMYK"
        if photometric == tifffile.PHOTOMETRIC.RGB:
            return "RGBA" if _marks_alpha(extra) else "RGBX"
        return getattr(photometric, "name", str(photometric))
    from PIL import Image

    with Image.open(path) as opened:
        return opened.mode if opened.mode in ("CMYK", "RGBX") else "RGBA"


_TIFF_ALPHA = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)


def _marks_alpha(extra_samples: tuple) -> bool:
    """Whether a TIFF page's first extra sample is marked as alpha (RGBA, or gray + alpha as Pillow writes "LA")."""
    return bool(extra_samples) and extra_samples[0] in _TIFF_ALPHA


def _cmyk_to_rgb(image: np.ndarray) -> np.ndarray:
    """CMYK ink to RGB in the image's dtype, as Pillow converts it: R = (1 - C)(1 - K), ..."""
    top = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    ink = image.astype(np.float64) / top
    rgb = (1 - ink[..., :3]) * (1 - ink[..., 3:4]) * top
    return (np.rint(rgb) if np.issubdtype(image.dtype, np.integer) else rgb).astype(image.dtype)


#: Axes of a TIFF series (tifffile's codes) that hold planes, not colour channels.
#: Plain pages (tifffile's "Q", or "I" for a file it did not write) may be colour planes, as
#: 3 of them are read.
_NOT_COLOUR_AXES = {"Z": "z-planes", "T": "time points"}


def _tiff_leading_axis(ndim: int, header: Callable[[], tuple] | None) -> str | None:
    """tifffile's code of the first axis of a TIFF's image (``S``: samples of one page,
    ``C``: channels, ``Z``, ``T``, ``Q``: unknown pages, ...; ``header()``: its `_tiff_header`);
    None for other formats (``header`` None)."""
    if header is None:
        return None
    axes = header()[0]
    return axes[0] if len(axes) == ndim else None


#: How to read some channels of an image `read_image` refuses as is, without new files: the
#: option every command has and the argument of the library (`pick_channels`).
_PICK_CHANNELS = ("read 1 to 3 of them with --channels (channels= in Python, the Train widget's image channels), "
                  "without saving new files: --channels 0 1 makes channels 0 and 1 red and green, and blue "
                  "empty; ")

#: What to do with a TIFF of 2 to 4 fluorescence channels `read_image` refuses (one image is
#: gray, RGB or RGBA: the network sees 3 colour channels).
_CHANNELS_ADVICE = (_PICK_CHANNELS + "or save each channel as a 2-D image (tifffile.imwrite('dapi.tif', data[0])), "
                    "or up to 3 as one RGB image, channels last, which the network sees as red, green and blue "
                    "(2 channels and an empty 3rd: np.stack([data[0], data[1], np.zeros_like(data[0])], axis=-1)); "
                    "each channel of 16 bits (or floats beyond [0, 1]) is stretched by its own percentiles, "
                    "while 8-bit channels are read as they are (a dim one stays dim)")


#: How a stack is saved for `napari-prm predict` and `predict_many` to run it plane by plane.
_STACK_AXES = "ImageJ axes ZYX or TYX (tifffile.imwrite(path, data, imagej=True, metadata={'axes': 'ZYX'}))"
_STACK_ADVICE = f"save the stack with {_STACK_AXES}, which `napari-prm predict` and the plugin run plane by plane"


def _unnamed_pages_advice() -> str:
    """What to do with 2 or 4 pages a TIFF does not name (axes Q or I), which are as often fluorescence
    channels (DAPI, GFP) as z-planes."""
    return "if they are channels, " + _CHANNELS_ADVICE + "; if they are z-planes or time points, " + _STACK_ADVICE


def _stack_hint(shape: tuple[int, ...], leading_axis: str | None = None) -> str:
    """What a refused array holds, by its shape and the first axis its TIFF names (tifffile's code)."""
    if len(shape) == 3 and shape[-1] < min(shape[:2]):  # (H, W, C): channels last
        return f"; it has {shape[-1]} channels: " + _PICK_CHANNELS + "or save one channel or an RGB image"
    if leading_axis == "C" and len(shape) == 3:  # an ImageJ or OME-TIFF of fluorescence channels
        return f"; its first axis holds {shape[0]} channels (the file's axes say so): " + _CHANNELS_ADVICE
    if leading_axis in _NOT_COLOUR_AXES and len(shape) == 3:
        return f"; its first axis holds {shape[0]} {_NOT_COLOUR_AXES[leading_axis]}: save one 2-D plane"
    if len(shape) == 3 and leading_axis in ("Q", "I"):  # a TIFF of pages its axes do not name
        if shape[0] > 4:
            return "; it holds several planes or frames: save one 2-D plane, or " + _STACK_ADVICE
        return f"; its first axis holds {shape[0]} pages the file does not name: " + _unnamed_pages_advice()
    return "; it holds several planes or frames: save one 2-D plane" if len(shape) > 2 else ""


#: What `image_array` accepts, for its error messages.
_IMAGE_KINDS = ("an (H, W), (H, W, 3) or (H, W, 4) array, a PIL image, a torch tensor (C, H, W) or (H, W, C), "
                "or an image file's path")

#: Pillow modes whose bands are not gray, RGB or RGBA values: converted as Pillow converts them.
_PIL_CONVERSIONS = {"P": "RGB", "PA": "RGBA", "LA": "RGBA", "La": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
                    "LAB": "RGB", "HSV": "RGB", "RGBa": "RGBA", "RGBX": "RGB"}


def _is_pil(image: Any) -> bool:
    pil = sys.modules.get("PIL.Image")  # a PIL image exists only once PIL is imported
    return pil is not None and isinstance(image, pil.Image)


def _is_one_image(item: Any) -> bool:
    """Whether an item of a list is an image of its own (an array or tensor of 2 or more
    dimensions, a PIL image or a path), not a row of a nested list of numbers."""
    if isinstance(item, (list, tuple)):
        return False
    return isinstance(item, (str, os.PathLike)) or _is_pil(item) or np.ndim(item) >= 2


def _ragged_where(nested: list | tuple, place: tuple = ()) -> str:
    """Where a nested list first stops having one shape: ``"[3] has 2 items, [0] has 3"``."""
    items = list(nested)
    kinds = [isinstance(item, (list, tuple)) or np.ndim(item) > 0 for item in items]
    if any(kinds) and not all(kinds):
        first, other = ("a list", "a number") if kinds[0] else ("a number", "a list")
        return f"{_place(place + (kinds.index(not kinds[0]),))} is {other}, {_place(place + (0,))} {first}"
    if not any(kinds):
        return "its values are not all numbers"
    lengths = [len(item) for item in items]
    for index, length in enumerate(lengths):
        if length != lengths[0]:
            return f"{_place(place + (index,))} has {length} items, {_place(place + (0,))} has {lengths[0]}"
    shapes = []
    for index, item in enumerate(items):
        try:
            shapes.append(np.shape(np.asarray(item, dtype=float)))
        except (TypeError, ValueError):
            return _ragged_where(item, place + (index,))
    for index, shape in enumerate(shapes):  # each item one array, not all of one shape
        if shape != shapes[0]:
            return (f"{_place(place + (index,))} is {' × '.join(map(str, shape))}, "
                    f"{_place(place + (0,))} is {' × '.join(map(str, shapes[0]))}")
    return "its items do not make one array"


def _place(index: tuple) -> str:
    return "".join(f"[{i}]" for i in index)


def image_array(image: Any, *, name: str = "image") -> np.ndarray:
    """An image as a NumPy array ``(H, W)`` or ``(H, W, C)``, from whatever holds it.

    Parameters
    ----------
    image : ndarray, PIL.Image.Image, torch.Tensor, str or path-like
        An array, or anything ``np.asarray`` makes a numeric array of: a nested list of
        numbers (``img.tolist()``, H × W or H × W × C) is one image, of float64 values (a
        list has no dtype); a list whose items are arrays, tensors, PIL images or paths is
        several, and refused. A PIL image (palette,
        gray + alpha, CMYK, YCbCr, LAB, HSV and RGBX images converted to RGB or RGBA as Pillow
        converts them, a palette with a transparent colour to RGBA); a torch tensor, detached
        and moved to the CPU, a 3-D one with 1, 3 or 4 leading channels ``(C, H, W)``, as
        torchvision holds images, moved to channels-last; or a file path, read by
        `read_image`.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    ndarray
        The values as held (no copy when ``image`` is already an array); `as_rgb_float`
        normalises them.

    Raises
    ------
    TypeError
        Naming ``name``, for anything else (None, a dict, text, ...), and for a list of images.
    ValueError
        From `read_image`, naming the file; naming ``name`` and the first place where a
        nested list stops having one shape, for a ragged one.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if _is_pil(image):
        mode = image.mode
        if mode == "P" and "transparency" in image.info:
            mode = "PA"
        return np.asarray(image.convert(_PIL_CONVERSIONS[mode]) if mode in _PIL_CONVERSIONS else image)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        return tensor.numpy()
    if isinstance(image, (list, tuple)) and image and all(_is_one_image(item) for item in image):
        raise TypeError(f"{name}: expected one image, got a {type(image).__name__} of {len(image)} images: "
                        "pass them one at a time (a PRMPredictor keeps the model between them; "
                        "napari_prm.batch.predict_many runs image files)")
    try:
        array = np.asarray(image)
        if isinstance(image, (list, tuple)) and (array.dtype == bool or np.issubdtype(array.dtype, np.integer)):
            # a list has no dtype: its whole numbers read by the float rule, so that the
            # list of a uint8 photo is that photo (as int64 it was stretched)
            array = array.astype(np.float64)
    except (TypeError, ValueError) as error:  # e.g. a ragged list
        if isinstance(image, (list, tuple)):
            raise ValueError(f"{name}: expected a nested list of numbers of one shape (rows of equal length, "
                             f"H × W or H × W × C), got a ragged {type(image).__name__}: "
                             f"{_ragged_where(image)}") from error
        raise TypeError(f"{name}: expected {_IMAGE_KINDS}, got {type(image).__name__}: {error}") from error
    if array.ndim == 0 or not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise TypeError(f"{name}: expected {_IMAGE_KINDS}, got {type(image).__name__}"
                        + (f" of dtype {array.dtype}" if array.ndim else ""))
    return array


def as_rgb_float(image: np.ndarray, *, dtype=np.float32, keep_gray: bool = False) -> np.ndarray:
    """Convert an image to RGB floats in [0, 1]: the one normaliser of napari-prm.

    The network input (`napari_prm.predict`, training) and the built-in proposals both
    start from it, so they see the same image.

    Parameters
    ----------
    image : (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) ndarray, or what `image_array` takes
        Grayscale, RGB or RGBA; bool, integer or floating point. A PIL image, a torch tensor
        or a file path becomes an array through `image_array`.
    dtype : float dtype, optional
        Of the result (computations are done in it).
    keep_gray : bool, optional
        Return a gray or one-channel image as ``(H, W, 1)``, its one channel not yet repeated:
        the same values in a third of the memory, for a caller that shrinks it before
        repeating it (the built-in proposals of a large gray image).

    Returns
    -------
    rgb : (H, W, 3) ndarray of ``dtype``, values in [0, 1]
        ``(H, W, 1)`` for a gray image with ``keep_gray``.

    Raises
    ------
    TypeError
        ``image`` is not an image (see `image_array`).
    ValueError
        Empty or 1-pixel images, NaN or infinite values, unreadable channel counts and
        stacks (3D data with more than 4 trailing channels), other dtypes.

    Notes
    -----
    The colour (or gray) values are mapped by dtype:

    - bool: False 0, True 1;
    - uint8: divided by 255;
    - floats already within [0, 1]: kept;
    - floats that are all whole numbers within [0, 255], the largest at least
      ``EIGHT_BIT_TOP`` (128) (a float copy of an 8-bit photo, ``image.astype(np.float32)``
      or a tensor's ``.float()``): divided by 255, as the uint8 image;
    - every other integer or float image (uint16 microscopy, 12-bit data, floats outside
      [0, 1]) is stretched linearly between its 0.5th and 99.5th percentiles, each colour
      channel by its own (3 fluorescence channels read as RGB keep a dim channel visible;
      a 16-bit RGB photo's colour balance is levelled as an "auto levels" would), and
      clipped to [0, 1]; when those two percentiles are equal, between its minimum and
      maximum; a constant channel gives 0. Such images rarely use their dtype's full range (a 12-bit
      camera fills 1/16 of uint16), and neither do float images of small whole numbers (a
      32-bit ImageJ image of counts 0..40), which read as 8-bit were dim.

    A nested list of numbers (``image.tolist()``) is read as floats, having no dtype of its
    own: the list of a uint8 photo reads as the photo.

    An RGBA image is composited over black (transparent pixels carry no object
    evidence): colour times opacity, the opacity being the alpha channel in its dtype's
    range (divided by 255 for uint8, 65535 for uint16; floats within [0, 1] kept, floats of
    whole numbers within [0, 255] divided by 255, other floats clipped to [0, 1]).
    Gray and one-channel images are repeated to three channels.
    """
    image = image_array(image)
    if image.size == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        channels = image.shape[-1]
    elif image.ndim == 2:
        channels = 0
    elif image.ndim == 3:
        raise ValueError(
            f"expected one 2D plane (H, W) or a colour image (H, W, 3|4); got shape {image.shape}: "
            "a 3D stack or an image with an unreadable channel count. Pass a single plane"
            + (" (a stack of one plane: image[0])." if image.shape[0] == 1 else
               ": of a stack of z-planes or time points, one at a time (image[0], image[1], ...), as "
               "napari_prm.batch.predict_many and 'napari-prm predict' run a TIFF stack saved with " + _STACK_AXES
               + " plane by plane"
               + ("; only if its first axis holds colour channels (red, green, blue), np.moveaxis(image, 0, -1) "
                  "puts them last" if image.shape[0] in (3, 4) else "") + ".")
        )
    else:
        # a network's batch of one, (1, 3, H, W) or (1, H, W, 3), said only "got 4 dimensions"
        batch = " (a batch of one image: pass image[0])" if image.ndim == 4 and image.shape[0] == 1 else ""
        raise ValueError(f"expected a 2D grayscale or colour image; got {image.ndim} dimensions, shape "
                         f"{image.shape}{batch}")
    height, width = image.shape[:2]
    if height < 2 or width < 2:
        raise ValueError(f"the image must be at least 2×2 pixels; got {height}×{width}")
    if not (image.dtype == bool or np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"unsupported image dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError("the image contains NaN or infinite values")
    colour = image[..., :3] if channels == 4 else image
    rgb = _unit_range(colour, dtype)
    if channels == 0:
        rgb = rgb[..., None] if keep_gray else np.repeat(rgb[..., None], 3, axis=-1)
    elif channels == 1:
        rgb = rgb if keep_gray else np.repeat(rgb, 3, axis=-1)
    elif channels == 4:
        rgb = rgb * _opacity(image[..., 3:4], dtype)
    return np.ascontiguousarray(rgb, dtype=dtype)


#: Mean opacity below which `opacity_note` speaks of an RGBA image.
LOW_MEAN_OPACITY = 0.5


def opacity_note(image: np.ndarray) -> str | None:
    """A note for an RGBA image that `as_rgb_float` darkened for the most part, else None.

    Its 4th channel is the opacity, and transparent pixels become black; a mean opacity under
    `LOW_MEAN_OPACITY` means that most of what the network sees is darkened. That is right
    for a cut-out photo, and a misreading of 4 channels that are not colours and opacity: 4
    fluorescence channels of 16 bits (napari shows an ``(H, W, 4)`` array as RGBA), whose 4th
    channel, at a few hundred of 65535, made the image nearly black.

    Parameters
    ----------
    image : ndarray
        What `as_rgb_float` takes (checked by it, not here).

    Returns
    -------
    str or None
        Saying the mean opacity and what to pass instead, for ``(H, W, 4)`` images whose mean
        opacity is under `LOW_MEAN_OPACITY`.
    """
    image = image_array(image)
    if image.ndim != 3 or image.shape[-1] != 4 or image.size == 0:
        return None
    mean = float(_opacity(image[..., 3], np.float32).mean(dtype=np.float64))
    if mean >= LOW_MEAN_OPACITY:
        return None
    return (f"The image's 4th channel was read as its opacity (RGBA), which averages {mean:.2f}: "
            f"{'most' if mean > 0 else 'all'} of the image was darkened toward black. If its 4 "
            "channels are not colours and opacity (4 fluorescence channels), pass one channel or "
            "an RGB image.")


def _unit_range(values: np.ndarray, dtype) -> np.ndarray:
    """Values mapped to [0, 1] by `as_rgb_float`'s rule."""
    if values.dtype == bool:
        return values.astype(dtype)
    if values.dtype == np.uint8:
        return values.astype(dtype) / dtype(255)
    if np.issubdtype(values.dtype, np.floating):
        low, high = values.min(), values.max()
        if low >= 0 and high <= 1:
            return values.astype(dtype)
        if high >= EIGHT_BIT_TOP and _whole_bytes(values, low, high):
            # a float copy of an 8-bit image (``image.astype(np.float32)``, a tensor's ``.float()``):
            # read as that image, not stretched. Small whole numbers (a 32-bit ImageJ image of
            # counts) are stretched: read as 8-bit they were dim
            return values.astype(dtype) / dtype(255)
    if values.ndim == 3 and values.shape[-1] > 1:
        # each colour channel by its own percentiles: 2-3 fluorescence channels (DAPI, GFP, a dim
        # mCherry) taken together were stretched by the brightest, the dim one left near 0
        return np.stack([_stretch(values[..., c], dtype) for c in range(values.shape[-1])], axis=-1)
    return _stretch(values, dtype)


def _stretch(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` stretched linearly between their `STRETCH_PERCENTILES` (min–max when those are
    equal; 0 when constant), clipped to [0, 1]."""
    low, high = (float(v) for v in np.percentile(values, STRETCH_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:  # a constant image
        return np.zeros(values.shape, dtype)
    return np.clip((values.astype(dtype) - dtype(low)) / dtype(high - low), 0, 1)


def _whole_bytes(values: np.ndarray, low, high) -> bool:
    """Whether float ``values``, of smallest ``low`` and largest ``high``, are all whole numbers
    within [0, 255], as an 8-bit image's."""
    return bool(low >= 0 and high <= 255 and not np.mod(values, 1).any())


def _opacity(alpha: np.ndarray, dtype) -> np.ndarray:
    """An alpha channel as opacity in [0, 1]: its dtype's range for integers; floats within
    [0, 1] kept, floats of whole numbers within [0, 255] (a float copy or the nested list of an
    8-bit image's alpha) divided by 255, others clipped."""
    if alpha.dtype == bool:
        return alpha.astype(dtype)
    if np.issubdtype(alpha.dtype, np.integer):
        info = np.iinfo(alpha.dtype)
        return (alpha.astype(dtype) - dtype(info.min)) / dtype(info.max - info.min)
    high = alpha.max()
    if high > 1 and _whole_bytes(alpha, alpha.min(), high):
        return alpha.astype(dtype) / dtype(255)  # was clipped: any alpha from 1 up read as opaque
    return np.clip(alpha.astype(dtype), 0, 1)
