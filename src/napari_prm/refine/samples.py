"""Training samples of the head: per image, the frozen backbone's features once, and per peak a prompt and a target.

PRM and the backbone run once per image here; training then touches the head alone. The
pseudo-labelled samples of a dataset can be kept in a cache folder, keyed by the image
file, the model's weights and the options, so that a second run skips PRM entirely.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._validate import raise_if_cancelled  # raises the one Cancelled (napari_prm.predict.Cancelled)
from ..io.atomic import atomic_write
from ..model.checkpoint import PRMModel, model_fingerprint
from .corrections import Correction
from .features import StageFeatures
from .prompts import PROMPT_CHANNELS, peak_prompts
from .targets import IGNORE, correction_targets, peak_owners, pseudo_targets

#: Default settings of :func:`napari_prm.refine.targets.pseudo_targets` for self-training.
PSEUDO_DEFAULTS = {"min_relative_score": 0.5, "min_share": 0.5, "border": 1, "background_threshold": 0.25}


@dataclass(eq=False)
class Sample:
    """One training image, ready for the head.

    Attributes
    ----------
    features : list of (channels, h, w) float16 tensors
        The backbone's maps at the head's stages (CPU).
    prompts : (K, 4, gh, gw) float16 tensor
        One prompt per peak that has something to learn.
    targets : (K, gh, gw) uint8 tensor
        1 on the peak's instance, 0 where it is not, 255 ignored.
    weight : float
        Weight of its pixels in the loss.
    source : str
        Image file or layer name.
    kind : {'pseudo', 'correction'}
    """

    features: list[torch.Tensor]
    prompts: torch.Tensor
    targets: torch.Tensor
    weight: float = 1.0
    source: str = ""
    kind: str = "pseudo"

    @property
    def num_peaks(self) -> int:
        """The number of peaks: the rows of ``prompts``."""
        return int(self.prompts.shape[0])


def _features(model: PRMModel, stages, image: np.ndarray) -> list[torch.Tensor]:
    maps = StageFeatures(model.network.fcn.features, stages)(model.preprocess(image))
    return [m[0].to(torch.float16).cpu() for m in maps]


def _useful_peaks(targets: np.ndarray) -> np.ndarray:
    """Peaks with something to learn; of those whose target is empty (a peak on no instance),
    at most as many as there are peaks on an instance (at least one), evenly spread: a
    flood of empty targets would teach the head to answer nothing."""
    if len(targets) == 0:
        return np.zeros(0, np.int64)
    flat = targets.reshape(len(targets), -1)
    positive = np.flatnonzero((flat == 1).any(1))
    empty = np.flatnonzero(~(flat == 1).any(1) & (flat != IGNORE).any(1))
    keep = max(len(positive), 1)
    if len(empty) > keep:
        empty = empty[np.linspace(0, len(empty) - 1, keep).round().astype(np.int64)]
    return np.sort(np.concatenate([positive, empty]))


def _sample(features, prediction, targets: np.ndarray, prms, peak_classes, peaks_yx, weight, source, kind) -> Sample:
    grid = tuple(features[0].shape[-2:])
    useful = _useful_peaks(targets)
    if len(useful) == 0:
        empty = torch.zeros((0, PROMPT_CHANNELS) + grid, dtype=torch.float16)
        return Sample(features, empty, torch.zeros((0,) + grid, dtype=torch.uint8), float(weight), source, kind)
    prompts = peak_prompts(np.asarray(prms)[useful], np.asarray(peak_classes)[useful], np.asarray(peaks_yx)[useful],
                           prediction.crms, grid)
    return Sample(features, torch.from_numpy(prompts).to(torch.float16), torch.from_numpy(targets[useful]),
                  float(weight), source, kind)


def _predictor(model: PRMModel, predict_options: dict | None, proposals):
    """A PRMPredictor with :func:`napari_prm.predict`'s keyword arguments (those that choose peaks and instances)."""
    from ..predictor import PRMPredictor

    options = dict(predict_options or {})
    for name in ("proposals", "classes", "points", "device", "progress", "cancel"):
        options.pop(name, None)
    options.update(options.pop("retrieval", None) or {})
    return PRMPredictor(model, proposals=proposals, **options)


def pseudo_sample(model: PRMModel, image: np.ndarray, present: Sequence[int], stages, *,
                  predict_options: dict | None = None, target_options: dict | None = None,
                  negatives: bool = False, source: str = "") -> Sample:
    """The sample of one image with image-level labels (self-training).

    PRM's forward pass runs once. The peaks of the present classes retrieve their
    instances, as ``predict(image, model, classes=present)`` does, and the trusted ones
    become targets (:func:`napari_prm.refine.targets.pseudo_targets`). A peak of a class
    the image does not show is wrong whatever it covers: with ``negatives`` it learns an
    empty mask. That is off by default: the head does not know classes, and such a peak
    usually sits on an object (a look-alike of its class), so an empty target there
    teaches it to shrink every mask (see ``refine``'s ``negatives``).

    Parameters
    ----------
    model : PRMModel
    image : ndarray
    present : sequence of int
        Classes the image shows (its image-level labels).
    stages : sequence of Stage
    predict_options : dict, optional
        Keyword arguments of :func:`napari_prm.predict` (``proposals`` defaults to
        ``"default"``: PRM's own retrieval, not the head's).
    target_options : dict, optional
        Passed to :func:`napari_prm.refine.targets.pseudo_targets` over :data:`PSEUDO_DEFAULTS`.
    negatives : bool
        Let peaks of absent classes learn empty masks (default False).
    source : str
    """
    present = [int(c) for c in present]
    features = _features(model, stages, image)
    grid = tuple(features[0].shape[-2:])
    predictor = _predictor(model, predict_options, (predict_options or {}).get("proposals", "default"))
    predictor.set_image(image)
    parts, targets = [], []
    if present:
        shown = predictor.predict(classes=present)
        # trust compares how well masks hold their PRMs (base_score), not how sure the classifier is
        masks = np.array([i.mask for i in shown.instances], bool).reshape((-1,) + shown.image_shape)
        targets.append(pseudo_targets(masks, [i.class_index for i in shown.instances],
                                      [i.base_score for i in shown.instances], shown.prms, shown.peak_classes,
                                      shown.crms, present, grid, **(PSEUDO_DEFAULTS | dict(target_options or {}))))
        parts.append(shown)
    absent = [c for c in range(model.num_classes) if c not in present]
    if negatives and absent:
        predictor.proposal_source = None  # their instances are wrong whatever they are: no retrieval
        wrong = predictor.predict(classes=absent)
        targets.append(np.zeros((len(wrong.peak_classes),) + grid, np.uint8))
        parts.append(wrong)
    if not parts:
        return _sample(features, None, np.zeros((0,) + grid, np.uint8), np.zeros((0,) + image.shape[:2]), [],
                       np.zeros((0, 2)), 1.0, source, "pseudo")
    return _sample(features, parts[0], np.concatenate(targets), np.concatenate([p.prms for p in parts]),
                   np.concatenate([p.peak_classes for p in parts]), np.concatenate([p.peaks for p in parts]),
                   1.0, source, "pseudo")


def _instance_points(correction: Correction, crms: np.ndarray, instances: Sequence[int]) -> tuple[np.ndarray, list]:
    """Where a peak of each of these instances would be: its class's CRM maximum inside it."""
    shape = correction.labels.shape
    resized = F.interpolate(torch.tensor(np.asarray(crms, np.float32))[None], size=shape, mode="bilinear",
                            align_corners=False)[0].numpy()
    points, classes = [], []
    for label in instances:
        mask = correction.labels == label
        class_index = correction.label_classes.get(int(label), -1)
        if class_index < 0:  # no known class: the class that responds most inside it
            class_index = int(resized[:, mask].mean(1).argmax())
        inside = np.where(mask, resized[class_index], -np.inf)
        points.append(np.unravel_index(int(inside.argmax()), shape))
        classes.append(class_index)
    return np.asarray(points, np.float64).reshape(-1, 2), classes


def correction_sample(model: PRMModel, correction: Correction, stages, *, predict_options: dict | None = None,
                      weight: float = 1.0, negatives: bool = False) -> Sample:
    """The sample of one corrected image.

    Its peaks are those ``predict(image, model, **predict_options)`` finds: each learns
    its instance, or nothing for a peak on the background or on an object of another
    class (an empty mask with ``negatives``, see
    :func:`napari_prm.refine.targets.correction_targets`). Every instance no peak stands
    for gets one more peak, at its class's CRM maximum inside it; like any peak, it learns
    the instance holding most of its PRM, so an instance whose added peak's PRM spreads
    mostly outside it (often a small one) is not learnt: its prompt would not show it.
    """
    features = _features(model, stages, correction.image)
    predictor = _predictor(model, predict_options, None)
    predictor.set_image(correction.image)
    found = predictor.predict()
    prms = np.asarray(found.prms)  # built once (a ScaledPRMs builds it on each read)
    owners, _ = peak_owners(prms, correction.labels, ignore=correction.ignore)
    instances = np.setdiff1d(np.unique(correction.labels), [0])
    missing = np.setdiff1d(instances, owners)
    classes, peaks = found.peak_classes, found.peaks
    if len(missing):
        points, point_classes = _instance_points(correction, found.crms, missing)
        added = predictor.predict(points=(points, point_classes))
        prms = np.concatenate([prms, added.prms])
        classes = np.concatenate([classes, added.peak_classes])
        peaks = np.concatenate([peaks, added.peaks])
    grid = tuple(features[0].shape[-2:])
    targets = correction_targets(correction.labels, correction.label_classes, prms, classes, grid,
                                 negatives=negatives, ignore=correction.ignore)
    return _sample(features, found, targets, prms, classes, peaks, weight, correction.source, "correction")


def _cache_key(fingerprint: str, path: Path, options: dict) -> str:
    stat = path.stat()
    text = json.dumps([fingerprint, str(path.resolve()), stat.st_mtime_ns, stat.st_size, options],
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _save_sample(path: Path, sample: Sample) -> None:
    with atomic_write(path) as temp:
        torch.save({"features": sample.features, "prompts": sample.prompts, "targets": sample.targets,
                    "source": sample.source}, temp)


def _load_sample(path: Path) -> Sample | None:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        return Sample(list(content["features"]), content["prompts"], content["targets"], 1.0,
                      str(content["source"]), "pseudo")
    except Exception:  # a damaged cache entry is recomputed
        return None


def prepare_samples(model: PRMModel, stages, *, dataset=None, corrections: Sequence[Correction] = (),
                    predict_options: dict | None = None, target_options: dict | None = None,
                    correction_weight: float = 2.0, negatives: bool = False,
                    cache_dir: str | os.PathLike | None = None, progress: Callable[[Any], None] | None = None,
                    cancel: Any = None) -> list[Sample]:
    """The samples of a dataset's images (self-training) and of corrected images.

    See :func:`napari_prm.refine.refine` for the parameters. ``progress`` is called with
    ``(done, total)`` after each image.

    Parameters
    ----------
    model : PRMModel
        The PRM model.
    stages : sequence of Stage
        The feature maps the head reads (`napari_prm.refine.features.find_stages`).
    dataset : LabeledImageDataset, optional
        Images with image-level labels for self-training.
    corrections : sequence of Correction
        Corrected images.
    predict_options : dict, optional
        Keyword arguments of :func:`napari_prm.predict` for the pseudo-labels and the peaks of
        corrected images.
    target_options : dict, optional
        Keyword arguments of :func:`napari_prm.refine.targets.pseudo_targets` over
        :data:`PSEUDO_DEFAULTS`.
    correction_weight : float
        Weight of a corrected image's peaks against a pseudo-labelled one's.
    negatives : bool
        Peaks on no instance of their class learn empty masks.
    cache_dir : path-like, optional
        Folder where the dataset's samples are kept and read back; None keeps none.
    progress : callable, optional
        Called with ``(done, total)`` after each image.
    cancel : callable or threading.Event, optional
        Checked before each image.

    Raises
    ------
    Cancelled
        When ``cancel`` turns true (checked between images).
    """
    total = (0 if dataset is None else len(dataset)) + len(corrections)
    samples: list[Sample] = []
    report = progress or (lambda done, total: None)
    cache = None
    if cache_dir is not None and dataset is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        fingerprint = model_fingerprint(model)
        options = {"predict": dict(predict_options or {}), "target": PSEUDO_DEFAULTS | dict(target_options or {}),
                   "negatives": bool(negatives), "stages": [s.module for s in stages], "format": 3}
        if dataset.channels is not None:  # other channels of the same file are other images (older keys kept)
            options["channels"] = list(dataset.channels)
    for index in range(0 if dataset is None else len(dataset)):
        raise_if_cancelled(cancel)
        path = Path(dataset.image_paths[index])
        entry = cache / f"{_cache_key(fingerprint, path, options)}.pt" if cache is not None else None
        sample = _load_sample(entry) if entry is not None and entry.is_file() else None
        if sample is None:
            present = np.flatnonzero(dataset.labels[index] > 0).tolist()
            sample = pseudo_sample(model, dataset.read_image(index), present, stages,
                                   predict_options=predict_options, target_options=target_options,
                                   negatives=negatives, source=str(path))
            if entry is not None:
                _save_sample(entry, sample)
        samples.append(sample)
        report(len(samples), total)
    for correction in corrections:
        raise_if_cancelled(cancel)
        samples.append(correction_sample(model, correction, stages, predict_options=predict_options,
                                         weight=correction_weight, negatives=negatives))
        report(len(samples), total)
    return samples
