"""The one path from an image to PRM results, used by the command line and the widgets.

:func:`predict` is the one-shot form of :class:`napari_prm.PRMPredictor`: it sets
the image, selects peaks, back-propagates them and retrieves instances in one call.
Use the predictor itself to re-threshold or add points without re-running the network.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import _validate as check
from .io.images import channels_for, checked_channels, format_note, image_array, pick_channels, read_image
from .io.labels import tiff_pixel_size
from .model.checkpoint import PRMModel
from .predictor import (
    RETRIEVAL_OPTIONS,
    SETTING_NAMES,
    Cancelled,
    Prediction,
    PredictSettings,
    PRMPredictor,
    ProgressCallback,
    _with_retrieval,
    crm_to_image,
    image_to_crm,
    rank_by_confidence,
    resize_prms,
    unknown_settings_error,
)

__all__ = ["Cancelled", "Prediction", "crm_to_image", "image_to_crm", "predict", "rank_by_confidence", "resize_prms"]
#: The keyword arguments ``predict(retrieval=...)`` passes on as retrieval settings (also
#: ``napari_prm.predictor.RETRIEVAL_OPTIONS``: `PRMPredictor` takes ``retrieval=`` too).
RETRIEVAL_OPTIONS = RETRIEVAL_OPTIONS


def predict(
    image: np.ndarray,
    model: PRMModel | str,
    *,
    preset: str | PredictSettings = "default",
    class_threshold: float | None = None,
    peak_threshold: float | None = None,
    classes: Sequence[int | str] | None = None,
    proposals: Any = "auto",
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    peak_batch_size: int | None = None,
    points: tuple[np.ndarray, np.ndarray] | None = None,
    channels: Sequence[int] | None = None,
    retrieval: dict | None = None,
    **settings: Any,
) -> Prediction:
    """Run PRM on one image: class peaks, peak response maps and instances.

    Parameters
    ----------
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray, PIL image, torch tensor or path
        One plane as napari holds it: grayscale, RGB or RGBA; any integer or float dtype
        (see :func:`napari_prm.io.as_rgb_float`). A PIL image, a torch tensor ``(C, H, W)``
        or ``(H, W, C)`` or an image file's path (read by :func:`napari_prm.io.read_image`)
        is made an array first (:func:`napari_prm.io.image_array`).
    model : PRMModel or str
        A loaded model, a built-in name (``"imagenet"``, ``"imagenet-voc"``,
        ``"imagenet-coco"``) or a checkpoint path. A name or path is loaded on each call
        (about as long as a prediction on the CPU): for several images, load the model
        once with :func:`napari_prm.load_model`.
    preset : {'default', 'original'} or PredictSettings
        'original' is the official release's inference; 'default' adds calibrated
        thresholds, one peak per location and full-resolution masks
        (:func:`napari_prm.predictor.preset_settings`). A :class:`PredictSettings`, such as an
        earlier prediction's ``settings``, gives every setting at once: ``predict(other_image,
        model, preset=prediction.settings)`` predicts as that prediction was made (keywords
        still override it). It does not hold ``channels``, which choose how a file is read,
        not how it is predicted: channels given to that prediction that differ from the
        model's must be given again.
    class_threshold : float, optional
        Peaks of classes whose score is below this are dropped (None: the
        model's calibrated value, ``model.settings["class_threshold"]``, or 0;
        the 'original' preset uses 0).
    peak_threshold : float, optional
        Peaks whose value is not above this are dropped (None: the model's
        calibrated value; the 'original' preset uses 30).
    classes : int, str or a sequence of them, optional
        Keep only peaks of these classes (indices or names; one is a list of one).
    proposals : str, path, ndarray, callable or None
        Segment proposals for instance retrieval (see
        :func:`napari_prm.proposals.make_proposals`): ``"default"``, ``"prm"``,
        ``"default+prm"``, a proposal file, an (N, H, W) bool stack, an
        (H, W) label image or a callable. None skips retrieval. ``"refined"``
        cuts one instance per peak with the model's refinement head
        (:func:`napari_prm.refine.refined_instances`) instead of retrieving
        proposals. ``"auto"`` (the default) is ``"refined"`` for a model with
        a head, else ``"default"``.
    device : str or torch.device, optional
        Where to run. None: a PRMModel runs where it is; a name or path is loaded onto the
        best device available (CUDA, then MPS, then the CPU), unlike
        :func:`napari_prm.load_model`, whose default is the CPU. A PRMModel given another
        device is moved there (in place, as ``PRMModel.to`` does).
    progress : callable, optional
        ``progress(stage, done, total)`` with stage ``"forward"``,
        ``"backprop"``, ``"proposals"`` or ``"retrieval"``.
    cancel : callable or threading.Event, optional
        Checked between steps and peaks; when it returns True (or the Event is set),
        :class:`Cancelled` is raised.
    peak_batch_size : int, optional
        Peaks back-propagated at once (default: 1 on CPU, 16 on GPU).
    points : ((K, 2) float array, (K,) classes), optional
        Back-propagate from these image ``(y, x)`` locations of these classes
        instead of the selected peaks (e.g. a user's click); thresholds and
        ``classes`` do not select them (the thresholds still weigh their
        instances' confidence, see ``score_by``). A point outside the image
        back-propagates from the border's nearest place, and ``Prediction.notes`` says so.
    channels : sequence of 1 to 3 int, optional
        The channels of a multichannel image read as the network's red, green and blue
        (:func:`napari_prm.io.read_image`'s ``channels``: 1 gray, 2 red and green with an
        empty blue, 3 RGB). For an image file, the default is the channels the model was
        trained on (``model.settings["channels"]``, recorded by training; none for older
        models: the image as it is); channels given that differ from those add a note to
        ``Prediction.notes``. For an array (channels last, ``(H, W, C)``), only those given
        are picked: an array is otherwise the network's image as it is. An array that looks
        channels-first (its first axis the shortest, its last longer than 4) is refused.
    retrieval : dict, optional
        Retrieval settings (any of :data:`RETRIEVAL_OPTIONS`), the same as
        passing them as keywords.
    **settings
        Other fields of :class:`napari_prm.predictor.PredictSettings`, e.g.
        ``tta=True``, ``max_peaks=20``, ``sub_pixel_locating_factor=1``.

    Returns
    -------
    Prediction

    Raises
    ------
    TypeError
        ``image`` is none of the kinds above (naming it and what was expected).
    ValueError
        Naming the argument: NaN or infinite thresholds, ``peak_batch_size < 1``, an image
        that is not one 2-D plane of at least 2×2 finite pixels, ``points`` that is not a pair
        (locations, classes), unknown classes or settings, ...
    """
    class_threshold = check.finite_float("class_threshold", class_threshold, optional=True)
    peak_threshold = check.finite_float("peak_threshold", peak_threshold, optional=True)
    peak_batch_size = check.positive_int("peak_batch_size", peak_batch_size, optional=True)
    merged = _with_retrieval(retrieval, settings)
    # None thresholds mean "the preset's (or the model's calibrated) value": not an override.
    if class_threshold is not None:
        merged["class_threshold"] = class_threshold
    if peak_threshold is not None:
        merged["peak_threshold"] = peak_threshold
    unknown = sorted(set(merged) - set(SETTING_NAMES))
    if unknown:
        raise unknown_settings_error(unknown, arguments=_ARGUMENTS)
    predictor = PRMPredictor(model, preset=preset, proposals=proposals, device=device,
                             peak_batch_size=peak_batch_size, **merged)
    note = pixel_size = disguised = None
    if isinstance(image, (str, os.PathLike)):  # read with the channels the model was trained on, or those given
        channels, note = channels_for(channels, predictor.model.settings.get("channels"))
        pixel_size = tiff_pixel_size(image)  # for write_prediction's label TIFF, as predict's command writes it
        disguised = format_note(image)  # a PNG or JPEG named .tif: read by its content
        try:
            image = read_image(image, channels=channels)
        except ValueError as error:  # a z-stack was told only to "save one 2-D plane"
            hint = _stack_file_hint(image)
            if not hint:
                raise
            raise ValueError(f"{error}{hint}") from error
    elif channels is not None:
        channels, image = checked_channels(channels), image_array(image)
        if image.ndim == 3 and image.shape[0] < min(image.shape[1:]) and image.shape[-1] > 4:
            # (C, H, W): its last axis, the width, would have been read as its channels, and the
            # network given a C×H image without a word
            raise ValueError(f"channels {','.join(map(str, channels))} of an array are picked from its last axis "
                             f"(H, W, C), but image has shape {image.shape}, whose first axis looks like its "
                             "channels: pass np.moveaxis(image, 0, -1)")
        image = pick_channels(image, channels, name="image")
    predictor.set_image(image, progress=progress, cancel=cancel)
    prediction = predictor.predict(points=points, classes=classes, progress=progress, cancel=cancel)
    if note is not None:
        prediction.notes.append(note)
    if disguised is not None:
        prediction.notes.append(disguised)
    prediction.pixel_size = pixel_size
    return prediction


def _stack_file_hint(path) -> str:
    """What runs a TIFF stack of z-planes or time points, which `predict` (one 2-D image) refuses;
    empty for any other file."""
    from .io.images import plane_count

    if plane_count(path) == 1:
        return ""
    return ("; napari_prm.predict runs one 2-D image: napari_prm.batch.predict_many (the command line's 'napari-prm "
            "predict') runs such a stack plane by plane, or predict each of napari_prm.io.read_stack(path).planes")


#: `predict`'s own keyword arguments, suggested beside the settings for a misspelt keyword.
_ARGUMENTS = tuple(name for name in inspect.signature(predict).parameters if name not in ("image", "model", "settings"))
