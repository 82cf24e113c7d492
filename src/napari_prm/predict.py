"""The one path from an image to PRM results, used by the command line and the widgets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import _validate as check
from .io.images import as_rgb_float
from .model.checkpoint import PRMModel, load_model, resolve_device
from .model.transforms import to_network_input
from .retrieval import Instance

ProgressCallback = Callable[[str, int, int], None]

#: The keyword arguments ``predict(retrieval=...)`` passes to `retrieve_instances`.
RETRIEVAL_OPTIONS = ("contour_width", "size_limits", "proposal_count", "nms_threshold",
                     "merge_peak_response", "bg_threshold", "penalty", "balance")


class Cancelled(RuntimeError):
    """Raised by :func:`predict` when its ``cancel`` check turns true."""


@dataclass
class Prediction:
    """PRM results for one image, in the image's pixel frame.

    Attributes
    ----------
    class_names : list of str
    scores : (C,) float32 ndarray
        Peak-stimulated class scores.
    crms : (C, h, w) float32 ndarray
        Class response maps, in CRM pixels.
    peaks : (K, 2) float64 ndarray
        Peak ``(y, x)`` in image pixels.
    peak_classes : (K,) int64 ndarray
    peak_values : (K,) float32 ndarray
    prms : (K, H, W) float32 ndarray
        Peak response maps at the image's size, each summing to 1.
    instances : list of Instance
        Retrieved instances (empty when no proposals were used).
    peaks_crm : (K, 3) int64 ndarray
        ``(class, y, x)`` of each peak in CRM pixels.
    """

    class_names: list[str]
    scores: np.ndarray
    crms: np.ndarray
    peaks: np.ndarray
    peak_classes: np.ndarray
    peak_values: np.ndarray
    prms: np.ndarray
    instances: list[Instance] = field(default_factory=list)
    peaks_crm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.prms.shape[-2:])

    def to_labels(self):
        """The instances as ``(labels, table)``; see :func:`napari_prm.retrieval.instances_to_labels`."""
        from .retrieval import instances_to_labels

        return instances_to_labels(self.instances, self.image_shape, class_names=self.class_names)


def crm_to_image(yx: np.ndarray, crm_shape: Sequence[int], image_shape: Sequence[int], factor: int = 1) -> np.ndarray:
    """Map ``(y, x)`` CRM pixels (possibly upsampled by ``factor``, align_corners) to image pixels."""
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    out = np.empty_like(yx)
    for axis in range(2):
        upsampled, full = crm_shape[axis], image_shape[axis]
        base = upsampled // factor
        coord = yx[:, axis] * (base - 1) / max(upsampled - 1, 1) if factor > 1 else yx[:, axis]
        out[:, axis] = (coord + 0.5) * full / base - 0.5
    return out


def image_to_crm(yx: np.ndarray, crm_shape: Sequence[int], image_shape: Sequence[int], factor: int = 1) -> np.ndarray:
    """Nearest CRM pixel (int64) of image ``(y, x)`` points: the inverse of :func:`crm_to_image`."""
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    out = np.empty(yx.shape, dtype=np.int64)
    for axis in range(2):
        upsampled, full = crm_shape[axis], image_shape[axis]
        base = upsampled // factor
        coord = (yx[:, axis] + 0.5) * base / full - 0.5
        if factor > 1:
            coord = coord * max(upsampled - 1, 1) / max(base - 1, 1)
        out[:, axis] = np.clip(np.rint(coord), 0, upsampled - 1)
    return out


def _resize_prms(prms: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    if prms.shape[0] == 0:
        return np.zeros((0,) + tuple(shape), dtype=np.float32)
    if tuple(prms.shape[-2:]) != tuple(shape):
        prms = F.interpolate(prms[:, None], size=shape, mode="bilinear", align_corners=False)[:, 0].clamp(min=0)
    sums = prms.flatten(1).sum(1)
    prms = prms / torch.where(sums > 0, sums, torch.ones_like(sums))[:, None, None]
    return prms.numpy().astype(np.float32, copy=False)


def _class_indices(classes, class_names: list[str]) -> list[int] | None:
    if classes is None:
        return None
    indices = []
    for item in classes:
        if isinstance(item, (int, np.integer)):
            if not 0 <= int(item) < len(class_names):
                raise ValueError(f"class index {item} is out of range for a model with {len(class_names)} classes")
            indices.append(int(item))
        elif item in class_names:
            indices.append(class_names.index(item))
        else:
            raise ValueError(f"unknown class {item!r}; the model knows {len(class_names)} classes, "
                             f"e.g. {class_names[:5]}")
    return indices


def predict(
    image: np.ndarray,
    model: PRMModel | str,
    *,
    class_threshold: float | None = None,
    peak_threshold: float | None = None,
    classes: Sequence[int | str] | None = None,
    proposals: Any = "default",
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    peak_batch_size: int | None = None,
    points: tuple[np.ndarray, np.ndarray] | None = None,
    retrieval: dict | None = None,
) -> Prediction:
    """Run PRM on one image: class peaks, peak response maps and instances.

    Parameters
    ----------
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        One plane as napari holds it: grayscale, RGB or RGBA; uint8, uint16 or float.
    model : PRMModel or str
        A loaded model, ``"imagenet"`` or a checkpoint path.
    class_threshold : float, optional
        Peaks of classes whose score is below this are dropped. None takes the
        model's default (``model.settings["class_threshold"]``: 8 for the
        built-in ImageNet model, whose 1000 scores are nearly all above 0; 0 otherwise).
    peak_threshold : float or None
        Peaks whose value is not above this are dropped (None: keep all).
    classes : sequence of int or str, optional
        Keep only peaks of these classes (indices or names).
    proposals : str, path, ndarray, callable or None
        Segment proposals for instance retrieval (see
        :func:`napari_prm.proposals.make_proposals`): ``"default"``, ``"prm"``,
        ``"default+prm"``, a proposal file, an (N, H, W) bool stack, an
        (H, W) label image or a callable. None skips retrieval.
    device : str or torch.device, optional
        Where to run (None: the model's device).
    progress : callable, optional
        ``progress(stage, done, total)`` with stage ``"forward"``,
        ``"backprop"``, ``"proposals"`` or ``"retrieval"``.
    cancel : callable, optional
        Checked between steps and peaks; when it returns True, :class:`Cancelled` is raised.
    peak_batch_size : int, optional
        Peaks back-propagated at once (default: 1 on CPU, 16 on GPU).
    points : ((K, 2) float array, (K,) int array), optional
        Back-propagate from these image ``(y, x)`` locations of these classes
        instead of the detected peaks (e.g. a user's click); thresholds and
        ``classes`` are not applied to them.
    retrieval : dict, optional
        Keyword arguments for :func:`napari_prm.retrieval.retrieve_instances`.

    Returns
    -------
    Prediction

    Raises
    ------
    ValueError
        Naming the argument: NaN or infinite thresholds, ``peak_batch_size < 1``, an image
        that is not one 2-D plane of at least 2×2 finite pixels, unknown classes, ...
    """
    class_threshold = check.finite_float("class_threshold", class_threshold, optional=True)
    peak_threshold = check.finite_float("peak_threshold", peak_threshold, optional=True)
    peak_batch_size = check.positive_int("peak_batch_size", peak_batch_size, optional=True)
    retrieval = check.keyword_options("retrieval", retrieval, RETRIEVAL_OPTIONS)
    if points is not None and np.size(points[0]) % 2:
        raise ValueError(f"points: expected (K, 2) image (y, x) locations, got shape {np.shape(points[0])}")
    if points is not None:
        check.finite_array("points", np.asarray(points[0], dtype=np.float64))
    rgb = as_rgb_float(image)
    image_shape = rgb.shape[:2]
    if not isinstance(model, PRMModel):
        model = load_model(model, device=device)
    elif device is not None and resolve_device(device) != model.device:
        model.to(device)
    report = progress or (lambda stage, done, total: None)
    if class_threshold is None:
        class_threshold = float(model.settings.get("class_threshold", 0.0))

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")

    check_cancel()
    report("forward", 0, 1)
    network = model.network
    factor = network.sub_pixel_locating_factor
    x = to_network_input(rgb, model.input_size, model.mean, model.std).to(model.device)
    peaks_arg = None
    if points is not None:
        points_yx, point_classes = (np.asarray(a) for a in points)
        point_classes = np.asarray(_class_indices(list(point_classes.reshape(-1)), model.class_names), dtype=np.int64)
        if len(point_classes) != len(points_yx.reshape(-1, 2)):
            raise ValueError(f"points: {len(points_yx.reshape(-1, 2))} locations but {len(point_classes)} classes")

        def peaks_arg(crm_shape):
            yx = image_to_crm(points_yx, crm_shape[1:], image_shape, factor)
            return torch.from_numpy(np.column_stack([point_classes, yx]))

    def on_peak(done: int, total: int) -> None:
        report("backprop", done, total)
        check_cancel()

    result = network.peak_response_maps(
        x,
        class_threshold=class_threshold,
        peak_threshold=peak_threshold,
        peak_batch_size=peak_batch_size,
        classes=_class_indices(classes, model.class_names),
        peaks=peaks_arg,
        progress=on_peak,
    )
    report("forward", 1, 1)
    crms = result.crms.numpy()
    peaks_crm = result.peaks.numpy().astype(np.int64)
    prediction = Prediction(
        class_names=list(model.class_names),
        scores=result.scores.numpy(),
        crms=crms,
        peaks=crm_to_image(peaks_crm[:, 1:], crms.shape[1:], image_shape, factor),
        peak_classes=peaks_crm[:, 0].copy(),
        peak_values=result.peak_values.numpy(),
        prms=_resize_prms(result.prms, image_shape),
        peaks_crm=peaks_crm,
    )
    if proposals is not None and len(peaks_crm):
        from .proposals import make_proposals
        from .retrieval import retrieve_instances

        check_cancel()
        report("proposals", 0, 1)
        masks = make_proposals(proposals, image, prms=prediction.prms)
        report("proposals", 1, 1)
        check_cancel()
        report("retrieval", 0, 1)
        prediction.instances = retrieve_instances(
            prediction.prms, prediction.peak_classes, prediction.crms, masks, **(retrieval or {})
        )
        report("retrieval", 1, 1)
    return prediction
