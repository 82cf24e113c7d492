"""Which class peaks become instances: thresholds, suppression across classes, a cap, calibration.

Peak stimulation (:func:`napari_prm.model.find_peaks`) finds every local maximum
of every class response map. Most of them are noise: classes absent from the
image, weak side maxima, and the maxima of near-synonym classes stacked on one
object. :func:`select_peaks` keeps the ones worth a peak response map;
:func:`calibrate_thresholds` chooses its two thresholds from images that carry
only image-level labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import _validate as check
from ._text import Worded, worded_sentences
from .model.peak_stimulation import PeakFilter, find_peaks

#: Default most peaks per image (each costs one backward pass and one instance).
MAX_PEAKS = 50
#: How many suppressed classes are remembered per kept peak.
RUNNERS_UP = 3
#: Fewest calibration images whose thresholds are not flagged as unreliable (`Calibration.warning`).
#: The thresholds are those of the best score over (image, class shown) pairs and peaks: below 10
#: images each image weighs more than a tenth of that score, so one or two images decide the pair
#: chosen, and a dataset's classes (usually several) are each shown on a handful of them at most.
#: ``train``'s default ``val_fraction`` of 0.2 reaches it from 50 images.
MIN_CALIBRATION_IMAGES = 10
#: The ``model.settings`` key of the thresholds calibrated with test-time augmentation (a
#: `Calibration.as_settings` dict), which ``PredictSettings(tta=True)`` uses.
TTA_CALIBRATION = "tta_calibration"


@dataclass(eq=False)
class PeakSelection:
    """The peaks kept in one image, strongest first.

    Attributes
    ----------
    peaks : (K, 3) int64 ndarray
        ``(class, y, x)`` in CRM pixels (of the upsampled CRMs).
    values : (K,) float32 ndarray
        CRM value at each peak.
    runner_up_classes : (K, 3) int64 ndarray
        Classes whose peaks this peak suppressed (the strongest first), -1 where none.
    runner_up_values : (K, 3) float32 ndarray
        Their peak values, NaN where none.
    found : int
        Peaks that passed the thresholds, before the cap.
    capped : bool
        Whether ``max_peaks`` dropped some of them.
    """

    peaks: np.ndarray
    values: np.ndarray
    runner_up_classes: np.ndarray = field(default_factory=lambda: np.full((0, RUNNERS_UP), -1, np.int64))
    runner_up_values: np.ndarray = field(default_factory=lambda: np.full((0, RUNNERS_UP), np.nan, np.float32))
    found: int = 0
    capped: bool = False

    def __len__(self) -> int:
        return len(self.peaks)

    def __repr__(self) -> str:
        from ._text import fields_repr

        return fields_repr(self)  # shapes, not 50 peaks' values in four arrays


def class_scores(crms: np.ndarray | torch.Tensor, *, win_size: int = 3,
                 peak_filter: PeakFilter = "median") -> np.ndarray:
    """Peak-stimulated class scores of one image: the mean value of each map's peaks.

    Parameters
    ----------
    crms : (C, h, w) float array
    win_size, peak_filter
        See :func:`napari_prm.model.find_peaks`.

    Returns
    -------
    scores : (C,) float32 ndarray
    """
    crms = torch.tensor(np.asarray(crms, dtype=np.float32))  # a copy: the maps may be read-only
    peak_map = find_peaks(crms[None], win_size, peak_filter)[0]
    counts = peak_map.flatten(1).sum(1).clamp(min=1)
    return ((crms * peak_map).flatten(1).sum(1) / counts).numpy().astype(np.float32)


def peak_candidates(crms: np.ndarray | torch.Tensor, *, win_size: int = 3,
                    peak_filter: PeakFilter = "median") -> tuple[np.ndarray, np.ndarray]:
    """Every peak of every class response map, before any selection.

    Parameters
    ----------
    crms : (C, h, w) float array
    win_size, peak_filter
        See :func:`napari_prm.model.find_peaks`.

    Returns
    -------
    peaks : (K, 3) int64 ndarray
        ``(class, y, x)`` in row-major order.
    values : (K,) float32 ndarray
    """
    crms = np.asarray(crms.detach().cpu() if isinstance(crms, torch.Tensor) else crms, dtype=np.float32)
    tensor = torch.tensor(crms)  # a copy: the maps may be read-only (a prediction's)
    peak_map = find_peaks(tensor[None], win_size, peak_filter)[0]
    peaks = torch.nonzero(peak_map).numpy().astype(np.int64)
    values = crms[peaks[:, 0], peaks[:, 1], peaks[:, 2]].astype(np.float32)
    return peaks, values


def _suppress_across_classes(peaks: np.ndarray, values: np.ndarray, radius: float):
    """Greedy, strongest first: a kept peak removes peaks of other classes within ``radius``."""
    count = len(peaks)
    kept = np.ones(count, bool)
    runner_classes = np.full((count, RUNNERS_UP), -1, np.int64)
    runner_values = np.full((count, RUNNERS_UP), np.nan, np.float32)
    for a in range(count):
        if not kept[a]:
            continue
        rest = np.arange(a + 1, count)
        rest = rest[kept[rest]]
        distance = np.hypot(peaks[rest, 1] - peaks[a, 1], peaks[rest, 2] - peaks[a, 2])
        gone = rest[(distance <= radius) & (peaks[rest, 0] != peaks[a, 0])]
        kept[gone] = False
        # One entry per suppressed class, its strongest peak (rest is sorted strongest first).
        seen: list[int] = []
        for index in gone:
            cls = int(peaks[index, 0])
            if cls not in seen and len(seen) < RUNNERS_UP:
                runner_classes[a, len(seen)] = cls
                runner_values[a, len(seen)] = values[index]
                seen.append(cls)
    return kept, runner_classes, runner_values


def select_peaks(
    crms: np.ndarray | torch.Tensor,
    *,
    scores: np.ndarray | None = None,
    class_threshold: float | None = None,
    peak_threshold: float | None = None,
    relative_threshold: float | None = None,
    suppression_radius: float | None = None,
    max_peaks: int | None = MAX_PEAKS,
    classes: Sequence[int] | None = None,
    win_size: int = 3,
    peak_filter: PeakFilter = "median",
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> PeakSelection:
    """Choose the class peaks of one image.

    Parameters
    ----------
    crms : (C, h, w) float array
        Class response maps (upsampled when sub-pixel locating is used).
    scores : (C,) float array, optional
        Class scores (default: :func:`class_scores` of ``crms``).
    class_threshold : float, optional
        Keep peaks of classes whose score is at least this (None: all classes).
    peak_threshold : float, optional
        Keep peaks whose value is above this (None: all peaks).
    relative_threshold : float, optional
        Keep peaks whose value is at least this fraction of the strongest peak of
        their class in the image (None: no such rule).
    suppression_radius : float, optional
        Keep one peak per location: a peak removes the weaker peaks of other
        classes within this distance, in CRM pixels (None: no suppression).
        The removed classes are remembered as its runners-up.
    max_peaks : int or None
        Keep at most this many peaks, the strongest (None: no cap; each peak
        costs one backward pass and the memory of one image-sized map).
    classes : sequence of int, optional
        Keep only peaks of these classes.
    win_size, peak_filter
        Peak stimulation's window and per-map filter
        (:func:`napari_prm.model.find_peaks`).
    candidates : (peaks, values), optional
        :func:`peak_candidates` of ``crms``, when already computed (e.g. to try
        many thresholds on one image).

    Returns
    -------
    PeakSelection
        Strongest first; ties keep row-major order.
    """
    crms = np.asarray(crms.detach().cpu() if isinstance(crms, torch.Tensor) else crms, dtype=np.float32)
    if crms.ndim != 3:
        raise ValueError(f"crms: expected a (C, h, w) array, got shape {crms.shape}")
    if scores is None:
        scores = class_scores(crms, win_size=win_size, peak_filter=peak_filter)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(scores) != len(crms):
        raise ValueError(f"scores: expected {len(crms)} class scores, got {len(scores)}")
    if candidates is None:
        candidates = peak_candidates(crms, win_size=win_size, peak_filter=peak_filter)
    peaks, values = candidates
    keep = np.ones(len(peaks), bool)
    if class_threshold is not None:
        keep &= scores[peaks[:, 0]] >= class_threshold
    if peak_threshold is not None:
        keep &= values > peak_threshold
    if classes is not None:
        wanted = np.zeros(len(crms), bool)
        wanted[np.asarray(list(classes), dtype=np.int64)] = True
        keep &= wanted[peaks[:, 0]]
    if relative_threshold is not None and keep.any():
        strongest = np.full(len(crms), -np.inf, np.float32)
        np.maximum.at(strongest, peaks[keep, 0], values[keep])
        keep &= values >= relative_threshold * strongest[peaks[:, 0]]
    peaks, values = peaks[keep], values[keep]
    order = np.argsort(-values, kind="stable")
    peaks, values = peaks[order], values[order]
    runner_classes = np.full((len(peaks), RUNNERS_UP), -1, np.int64)
    runner_values = np.full((len(peaks), RUNNERS_UP), np.nan, np.float32)
    if suppression_radius is not None and len(peaks):
        kept, runner_classes, runner_values = _suppress_across_classes(peaks, values, float(suppression_radius))
        peaks, values = peaks[kept], values[kept]
        runner_classes, runner_values = runner_classes[kept], runner_values[kept]
    found = len(peaks)
    limit = found if max_peaks is None else int(max_peaks)
    return PeakSelection(peaks[:limit], values[:limit], runner_classes[:limit], runner_values[:limit],
                         found=found, capped=found > limit)


def region_seeds(crms: np.ndarray | torch.Tensor, peaks: np.ndarray, alpha: float) -> np.ndarray:
    """Each peak's class map over its region: the connected cells at or above ``alpha`` × the peak.

    The seeds of region-seeded peak backpropagation
    (:meth:`napari_prm.model.prm.ForwardPass.backprop`'s ``seeds``): a peak's own cell
    gives the response of the object's most discriminative part; its region, the cells of
    its class map (4-connected) that hold at least ``alpha`` times the peak's value, gives
    the extent the class map supports. docs/accuracy.md measures it (not in the presets).

    Parameters
    ----------
    crms : (C, h, w) array or tensor
        The class response maps the peaks were found on.
    peaks : (K, 3) int array
        ``(class, y, x)`` cells of ``crms``, each with a positive value.
    alpha : float
        In (0, 1]: 1 keeps the cells equal to the peak (the peak's cell alone at a strict maximum).

    Returns
    -------
    (K, h, w) float32 ndarray
        The class map's values in each peak's region, 0 elsewhere.

    Raises
    ------
    ValueError
        ``alpha`` outside (0, 1], or a peak whose value is not positive (no region above it).
    """
    from scipy import ndimage as ndi

    alpha = check.finite_float("alpha", alpha, low=0, high=1, low_open=True)
    maps = crms.detach().float().cpu().numpy() if isinstance(crms, torch.Tensor) else np.asarray(crms, np.float32)
    peaks = np.asarray(peaks, dtype=np.int64).reshape(-1, 3)
    seeds = np.zeros((len(peaks),) + maps.shape[1:], dtype=np.float32)
    for k, (c, y, x) in enumerate(peaks):
        value = maps[c, y, x]
        if not value > 0:
            raise ValueError(f"peaks: row {k} ({c}, {y}, {x}) has value {value:.3g}; a region needs a positive peak")
        labels, _ = ndi.label(maps[c] >= alpha * value)
        region = labels == labels[y, x]
        seeds[k][region] = maps[c][region]
    return seeds


@dataclass(frozen=True)
class LabelHits:
    """How the peaks kept in some images agree with their image-level labels (no masks needed).

    A kept peak of a class the image does not show is wrong; an (image, class) pair the
    image shows is found when at least one peak of that class is kept in it. The figures
    :func:`calibrate_thresholds` chooses thresholds by, and ``napari-prm evaluate`` reports
    on a dataset without masks (:func:`napari_prm.evaluate.evaluate_labels`).

    Attributes
    ----------
    images : int
    peaks : int
        Peaks kept.
    correct : int
        Of them, peaks of a class their image shows.
    shown : int
        (image, class) pairs the labels show.
    found : int
        Of them, pairs with at least one kept peak of the class.
    """

    images: int
    peaks: int
    correct: int
    shown: int
    found: int

    @property
    def precision(self) -> float:
        """Peak precision: share of the kept peaks whose class the image shows (NaN without peaks)."""
        return self.correct / self.peaks if self.peaks else float("nan")

    @property
    def recall(self) -> float:
        """Classes found: share of the (image, shown class) pairs with a kept peak (NaN without any)."""
        return self.found / self.shown if self.shown else float("nan")


def _image_labels(labels, images: int) -> np.ndarray:
    """``labels`` as an (``images``, C) bool array of image-level labels, or a ValueError naming it."""
    labels = np.asarray(labels, dtype=bool)
    if labels.ndim != 2 or labels.shape[0] != images:
        raise ValueError(f"labels: expected ({images}, C) image-level labels, got shape {labels.shape}")
    return labels


def label_hits(peak_classes: Sequence[np.ndarray], labels: np.ndarray) -> LabelHits:
    """Count how the peaks kept in each image agree with the images' labels (see :class:`LabelHits`).

    Parameters
    ----------
    peak_classes : sequence of (K_n,) int arrays
        The class of each peak kept in image n.
    labels : (N, C) array
        1 where image n shows class c (multi-hot image-level labels).

    Returns
    -------
    LabelHits
    """
    labels = _image_labels(labels, len(peak_classes))
    peaks = correct = found = 0
    for classes, present in zip(peak_classes, labels):
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        right = present[classes]
        peaks += len(classes)
        correct += int(right.sum())
        found += len(np.unique(classes[right]))
    return LabelHits(len(labels), peaks, correct, int(labels.sum()), found)


@dataclass
class Calibration:
    """Thresholds chosen by :func:`calibrate_thresholds`, with how they scored.

    Attributes
    ----------
    class_threshold, peak_threshold : float
    precision : float
        Share of the kept peaks whose class the image shows.
    recall : float
        Share of (image, present class) pairs with at least one kept peak.
    f_score : float
    peaks_per_image : float
    images : int
    max_peaks : int or None
        The cap predict keeps the strongest peaks of an image to (the ``max_peaks`` of the
        settings calibrated with, `MAX_PEAKS` by default; None: no cap).
    image_peaks : tuple of int
        The peaks predict finds on each calibration image at these thresholds (`select_peaks`),
        before its cap (empty when not counted).
    over_cap : int
        How many calibration images keep more than ``max_peaks`` peaks (`image_peaks`).
    warning : str or None
        Set when no threshold pair found any class the images show (``recall`` 0):
        the thresholds are then the lowest tried, not calibrated ones; else when they were
        chosen on fewer than `MIN_CALIBRATION_IMAGES` images, too few to rely on, and (one after
        the other) when they keep more than ``max_peaks`` peaks on some calibration images
        (``over_cap``), whose predictions the cap would cut to the strongest peaks: on
        half of them or more, a barely trained model's many weak peaks (train longer, or raise the
        thresholds); on fewer, crowded images (raise the cap: thresholds raised for them would
        lose the other images' peaks).
    """

    class_threshold: float
    peak_threshold: float
    precision: float
    recall: float
    f_score: float
    peaks_per_image: float
    images: int
    max_peaks: int | None = MAX_PEAKS
    image_peaks: tuple[int, ...] = ()

    #: The keys of ``model.settings`` that :meth:`as_settings` writes, in its order: the two
    #: thresholds, and how they scored (``"calibration"``).
    SETTINGS = ("class_threshold", "peak_threshold", "calibration")

    @property
    def warning(self) -> str | None:
        """What a user should know of this calibration, or None.

        That it found no class (no threshold pair kept a peak of a class the images show); else that
        it ran on fewer than `MIN_CALIBRATION_IMAGES` images, or that its thresholds keep more than
        ``max_peaks`` peaks on some images, or both; None when neither. What to do is said in the
        library's names and the command line's (``val_fraction``, ``--val-fraction``), as the model's
        settings keep it; the command line prints its own wording only
        (``napari_prm._text.for_command_line``: the string is a ``Worded``).
        """
        if self.recall > 0:
            warnings = [w for w in (self._few_images_warning(), self._too_many_peaks_warning()) if w]
            # the first starts in lower case (after "warning: "); the second is a sentence of its own
            return worded_sentences(warnings) if warnings else None
        said = (f"calibration found no class: at no threshold pair was a peak of a class that the {self.images} "
                "calibration image(s) show kept, so the stored thresholds are the lowest tried, not calibrated "
                "ones. Calibrate on more images (hold out more: ")
        return Worded(f"{said}train's val_fraction, the command line's --val-fraction; or more images per class) "
                      "or train for more epochs, then calibrate again (calibrate_checkpoint, or 'napari-prm "
                      "calibrate').",
                      f"{said}train's --val-fraction; or more images per class) or train for more epochs, then "
                      "calibrate again ('napari-prm calibrate DATASET --model MODEL').",
                      f"{said.removesuffix(' (hold out more: ')} (add images per class: Train holds out about a "
                      "fifth of them) or train for more epochs, then calibrate again (*Calibrate*, with the model as "
                      "the model to calibrate).")

    @property
    def over_cap(self) -> int:
        """How many calibration images keep more than ``max_peaks`` peaks (`image_peaks`; 0 without a cap)."""
        if self.max_peaks is None:
            return 0
        return sum(count > self.max_peaks for count in self.image_peaks)

    def _too_many_peaks_warning(self) -> Worded | None:
        over = self.over_cap
        if not over:
            return None
        cap = self.max_peaks

        def said(which: str) -> str:
            return (f"the calibrated thresholds keep more than {cap} peaks ({which}) on {over} of the "
                    f"{self.images} calibration image(s) (up to {max(self.image_peaks)}): predict will keep only "
                    f"the strongest {cap} of such an image.")

        default = cap == MAX_PEAKS
        python = said("predict's default cap, max_peaks" if default else "the max_peaks given")
        command_line = said("predict's default --max-peaks" if default else "the --max-peaks given")
        if 2 * over < self.images:  # a few crowded images: thresholds raised for them would cost the others
            return Worded(f"{python} To keep all the peaks of crowded images, raise the cap (predict's max_peaks, "
                          "the command line's --max-peaks; the napari widget's max peaks).",
                          f"{command_line} To keep all the peaks of crowded images, raise the cap (--max-peaks).")
        weak = (" A barely trained model's many weak peaks lead calibration to low thresholds: train for more "
                "epochs and calibrate again. Otherwise raise the thresholds (")
        return Worded(f"{python}{weak}predict's class_threshold and peak_threshold, the command line's "
                      "--class-threshold and --peak-threshold; the napari widget's class threshold and peak "
                      "threshold) or the cap (predict's max_peaks, the command line's --max-peaks; the widget's "
                      "max peaks).",
                      f"{command_line}{weak}--class-threshold and --peak-threshold) or the cap (--max-peaks).")

    def _few_images_warning(self) -> Worded | None:
        if self.images >= MIN_CALIBRATION_IMAGES:
            return None
        said = (f"the thresholds were calibrated on only {self.images} image(s), fewer than "
                f"{MIN_CALIBRATION_IMAGES}: chosen on so few, they fit those images and may not hold on "
                "others. Calibrate on more images (hold out more: ")
        larger = ("; or calibrate on a larger labelled set the model was not trained on), or set the thresholds by "
                  "hand (")
        return Worded(f"{said}train's val_fraction, the command line's --val-fraction; or add images, then "
                      "calibrate_checkpoint(MODEL, DATASET, held_out=True), 'napari-prm calibrate DATASET --model "
                      f"MODEL --held-out'{larger}predict's class_threshold and peak_threshold, the command line's "
                      "--class-threshold and --peak-threshold, or the Peak Response Maps widget's thresholds).",
                      f"{said}train's --val-fraction; or add images, then 'napari-prm calibrate DATASET --model "
                      f"MODEL --held-out'{larger}predict's and evaluate's --class-threshold and --peak-threshold).",
                      # the Train widget has no held-out share to set, nor calibrate_checkpoint: its fields
                      f"{said.removesuffix(' (hold out more: ')}: add images to the dataset and train again (Train "
                      "holds out about a fifth of them to calibrate on), or choose a larger labelled dataset the "
                      "model was not trained on (dataset file, or folder per class) and press *Calibrate* with the "
                      "model as the model to calibrate; or set the thresholds by hand (the Peak Response Maps "
                      "widget's class threshold and peak threshold).")

    def describe(self) -> str:
        """E.g. ``"calibrated on 26 image(s): class threshold 1.2, peak threshold 0.8 (peak precision
        71 %, classes found 88 %)"``: what ``train`` says at its end."""
        return (f"calibrated on {self.images} image(s): class threshold {self.class_threshold:.3g}, peak threshold "
                f"{self.peak_threshold:.3g} (peak precision {100 * self.precision:.0f} %, classes found "
                f"{100 * self.recall:.0f} %)")

    def as_settings(self) -> dict:
        """The thresholds as model settings (``model.settings``; under ``"tta_calibration"`` for TTA);
        ``"calibration"`` holds how they scored, and the :attr:`warning` when there is one."""
        scores = {"precision": self.precision, "recall": self.recall, "f_score": self.f_score,
                  "peaks_per_image": self.peaks_per_image, "images": self.images}
        if self.warning is not None:
            scores["warning"] = str(self.warning)  # a plain string in the checkpoint
        return dict(zip(self.SETTINGS, (float(self.class_threshold), float(self.peak_threshold), scores),
                        strict=True))


def calibrate_thresholds(
    crms: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    relative_threshold: float | None = None,
    suppression_radius: float | None = None,
    beta: float = 1.0,
    grid: int = 60,
    win_size: int = 3,
    peak_filter: PeakFilter = "median",
    max_peaks: int | None = MAX_PEAKS,
) -> Calibration:
    """Choose the class and peak thresholds from image-level labels only.

    A kept peak of a class the image does not show is a false positive; an
    (image, class) pair the image shows is found when at least one peak of that
    class is kept. The pair of thresholds maximising the F-score of those two
    rates (precision of peaks, recall of present classes) is returned.

    Parameters
    ----------
    crms : sequence of (C, h, w) float arrays
        Class response maps of held-out images, as :func:`select_peaks` gets them.
    labels : (N, C) array
        1 where image n shows class c (multi-hot image-level labels).
    relative_threshold, suppression_radius, win_size, peak_filter
        The other selection rules, applied as at prediction time (see :func:`select_peaks`).
    beta : float
        Weight of recall in the F-score (1: F1).
    grid : int
        Candidate thresholds per axis: quantiles of the observed class scores
        and peak values.
    max_peaks : int or None
        The cap predict will keep each image's strongest peaks to (its ``max_peaks``); it does
        not change the thresholds chosen (peaks are counted before it): the images whose kept
        peaks exceed it are counted (`Calibration.over_cap`) and warned of. At least 1, as
        predict takes it (ValueError).

    Returns
    -------
    Calibration
    """
    max_peaks = check.positive_int("max_peaks", max_peaks, optional=True)  # as predict takes it
    labels = _image_labels(labels, len(crms))
    if not len(crms):
        raise ValueError("calibration needs at least one image")
    if not labels.any():
        raise ValueError("calibration needs at least one image that shows a class")
    per_image = []
    for crm in crms:
        crm = np.asarray(crm, dtype=np.float32)
        if crm.shape[0] != labels.shape[1]:
            raise ValueError(f"crms have {crm.shape[0]} classes but labels have {labels.shape[1]}")
        scores = class_scores(crm, win_size=win_size, peak_filter=peak_filter)
        candidates = peak_candidates(crm, win_size=win_size, peak_filter=peak_filter)
        selection = select_peaks(crm, scores=scores, relative_threshold=relative_threshold,
                                 suppression_radius=suppression_radius, max_peaks=None,
                                 win_size=win_size, peak_filter=peak_filter, candidates=candidates)
        classes = selection.peaks[:, 0]
        per_image.append((classes, selection.values, scores[classes], (crm, scores, candidates)))
    all_scores = np.concatenate([s for _, _, s, _ in per_image])
    all_values = np.concatenate([v for _, v, _, _ in per_image])
    if not len(all_values):
        raise ValueError("no peaks in the calibration images")
    quantiles = np.linspace(0.0, 1.0, int(grid), endpoint=False)
    class_grid = np.unique(np.quantile(all_scores, quantiles))
    peak_grid = np.unique(np.quantile(all_values, quantiles)) - 1e-6
    best: Calibration | None = None
    for class_threshold in class_grid:
        for peak_threshold in peak_grid:
            hits = label_hits([classes[(scores >= class_threshold) & (values > peak_threshold)]
                               for classes, values, scores, _ in per_image], labels)
            precision = hits.precision if hits.peaks else 0.0
            recall = hits.recall
            denominator = beta**2 * precision + recall
            f_score = (1 + beta**2) * precision * recall / denominator if denominator > 0 else 0.0
            if best is None or f_score > best.f_score:
                best = Calibration(float(class_threshold), float(peak_threshold), precision, recall, f_score,
                                   hits.peaks / len(crms), len(crms), max_peaks)
    # the peaks predict finds at the chosen thresholds, selecting as it does (the thresholds before
    # the suppression across classes, which the search above applies first), before its cap
    image_peaks = tuple(
        select_peaks(crm, scores=scores, class_threshold=best.class_threshold, peak_threshold=best.peak_threshold,
                     relative_threshold=relative_threshold, suppression_radius=suppression_radius, max_peaks=None,
                     win_size=win_size, peak_filter=peak_filter, candidates=candidates).found
        for _, _, _, (crm, scores, candidates) in per_image)
    return replace(best, image_peaks=image_peaks)


def calibrate_model(model, dataset, *, beta: float = 1.0, progress=None, cancel=None, **settings) -> Calibration:
    """Calibrate a model's class and peak thresholds on a dataset with image-level labels.

    The class response maps come from :class:`napari_prm.PRMPredictor` with the
    default preset (or ``settings``), so the thresholds fit how they will be used.

    Parameters
    ----------
    model : PRMModel
    dataset : LabeledImageDataset
        Images the model was not trained on, labelled with the model's classes
        (it is relabelled to them).
    beta : float
        See :func:`calibrate_thresholds`.
    progress : callable, optional
        ``progress(done, total)`` after each image.
    cancel : callable or threading.Event, optional
        Checked after each image; when it returns True, ``RuntimeError`` is raised.
    **settings
        Fields of :class:`napari_prm.PredictSettings`; their ``max_peaks`` (default `MAX_PEAKS`)
        is the cap the calibration images' kept peaks are compared with (`Calibration.over_cap`).

    Returns
    -------
    Calibration
        ``model`` is not changed: ``model.settings.update(calibration.as_settings())``
        stores the thresholds.
    """
    from .predictor import PRMPredictor

    dataset = dataset.with_classes(model.class_names)
    predictor = PRMPredictor(model, proposals=None, **settings)
    maps = []
    for index in range(len(dataset)):
        maps.append(predictor.class_response_maps(dataset.read_image(index)))
        if progress is not None:
            progress(index + 1, len(dataset))
        if check.is_cancelled(cancel):
            raise RuntimeError("calibration cancelled")
    factor = predictor.settings.sub_pixel_locating_factor
    radius = predictor.settings.suppression_radius
    network = model.network
    return calibrate_thresholds(
        maps, dataset.labels, beta=beta, relative_threshold=predictor.settings.relative_threshold,
        suppression_radius=None if radius is None else radius * factor,
        win_size=network.win_size, peak_filter=network.peak_filter, max_peaks=predictor.settings.max_peaks)
