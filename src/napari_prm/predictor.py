"""`PRMPredictor`: compute an image's forward pass once, then peaks, PRMs and instances cheaply.

In the manner of segment-anything's ``SamPredictor``: :meth:`PRMPredictor.set_image`
runs the network once and keeps what peak backpropagation needs (the autograd
graph with the excitation rule's cached normalisers, and the class response
maps); the segment proposals are computed once per image when first needed; the
peak response map of every peak is cached. :meth:`PRMPredictor.predict` with
other thresholds, other classes or extra points (a user's click) reuses all of
it, so only new peaks cost a backward pass.

:func:`napari_prm.predict` is the one-shot form of the same steps.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from . import _validate as check
from ._text import close_match, did_you_mean, first_names, plural
from ._validate import Cancelled  # noqa: F401 -- raised here (check.raise_if_cancelled), as its docstrings say
from .io.images import as_rgb_float, image_array, opacity_note
from .io.labels import tiff_pixel_size
from .masks import ScaledMasks
from .model.checkpoint import PRMModel, load_model, resolve_device
from .peaks import MAX_PEAKS, TTA_CALIBRATION, PeakSelection, class_scores, peak_candidates, select_peaks
from .prm_maps import InstancePRM, ScaledPRMs, resize_prms  # noqa: F401 (napari_prm.predictor.resize_prms, as before)
from .retrieval import Instance

ProgressCallback = Callable[[str, int, int], None]

#: The most peaks one prediction may keep: each costs one backward pass, and its PRM is a
#: float32 map at the network's grid (0.8 MB at 448×448; 1000 peaks hold 0.8 GB).
MAX_PEAKS_LIMIT = 1000

#: Names `PRMPredictor` and `predict` accept for ``preset``.
PRESETS = ("default", "original")


@dataclass(frozen=True)
class PredictSettings:
    """Every choice between an image and its instances.

    Build one with :func:`preset_settings` and change fields with
    :func:`dataclasses.replace` (or pass them as keywords to :func:`napari_prm.predict`); give
    one, or a prediction's ``settings``, as the ``preset`` of :func:`napari_prm.predict` or
    :class:`PRMPredictor` to predict with all of it.

    The channels an image file is read with (``channels=`` of :func:`napari_prm.predict`,
    ``--channels``) are not among them: they are a reading option, which chooses the image's
    pixels before any of these apply (:class:`PRMPredictor` is given pixels, not a file). A
    file is read with the channels the model was trained on (``model.settings["channels"]``)
    unless others are given, so ``preset=prediction.settings`` predicts another file as
    that prediction was made when it used the model's channels; give ``channels=`` again
    for others.

    Attributes
    ----------
    preset : {'default', 'original'}
        Where the other values came from.
    sub_pixel_locating_factor : int
        CRMs are upsampled bilinearly by this factor before peaks are found (the
        original trains and infers at 8).
    class_threshold : float or None
        Keep peaks of classes whose score is at least this. None: the model's
        calibrated value (``model.settings["class_threshold"]``, or
        ``model.settings["tta_calibration"]["class_threshold"]`` with ``tta``), else 0.
    peak_threshold : float or None
        Keep peaks whose CRM value is above this. None: the model's calibrated
        value (``model.settings["peak_threshold"]``), else no threshold.
    relative_threshold : float or None
        Keep peaks of at least this fraction of their class's strongest peak.
    suppression_radius : float or None
        One peak per location: a peak removes weaker peaks of other classes
        within this many CRM cells of the network (before sub-pixel upsampling).
    input_size : (int, int) or None
        The network input ``(height, width)`` the image is resized to; None: the model's
        (``model.input_size``, the size it was trained and calibrated at). The class response
        maps have one cell per 32 input pixels (EfficientNet-Lite0), so a larger input gives
        small, crowded objects (cells, nuclei) cells, and peaks, of their own, at the cost of
        time (about 4× per peak for twice the side); the thresholds stay those calibrated at
        the model's size (``napari-prm calibrate --input-size`` chooses them at this one).
    max_peaks : int
        Most peaks per image, the strongest (each costs a backward pass and a
        map at the network's grid): 50 by default, at most :data:`MAX_PEAKS_LIMIT`. When it
        drops peaks, ``Prediction.notes`` says how many passed the thresholds.
    tta : bool
        Average the CRMs over a horizontal flip and input scales 0.75, 1 and 1.25;
        the PRMs back-propagate through all of them.
    prm_mode : {'exact', 'fast'}
        'fast' back-propagates to the stride-8 features and upsamples (see
        :meth:`napari_prm.model.PeakResponseMapping.peak_response_maps`).
    region_seed : float or None
        None (both presets): each peak's PRM is back-propagated from its cell (the paper's).
        A fraction ``alpha`` in (0, 1]: the peak's PRM plus the PRM seeded by its class map
        over its connected region at or above ``alpha`` × the peak
        (:func:`napari_prm.peaks.region_seeds`), each summing to 1, halved; one more backward
        pass per peak. Measured, not adopted: docs/accuracy.md.
    retrieval_grid : {'network', 'image'}
        Where proposals are scored: on the network's input grid (PRMs as
        computed, proposals resized by nearest neighbour, as the original) or at
        the image's size (PRMs resized bilinearly).
    output_grid : {'network', 'image'}
        Masks as scored ('network', resized back to the image by nearest
        neighbour, as the original) or the chosen proposals at the image's size.
    background : {'byte', 'float', 'range'}
        How the background map Q is made from a CRM: below ``bg_threshold``
        times its mean after byte-scaling and resizing (the original's
        ``scipy.misc.imresize``), the same on floats, or below ``bg_threshold``
        of its byte-scaled range (objects that fill the image are not half
        background). See :func:`napari_prm.retrieval.retrieve_instances`.
    merge_contained : float or None
        Merge an instance lying at least this much inside a higher-ranked one of
        its class (parts of one object found from secondary peaks).
    merge_parts : float or None
        Merge an instance whose PRM puts at least this share of its mass inside a
        higher-ranked one of its class, even if its own mask lies outside it.
    contain : {None, 'peak', 'mass'}
        Only proposals containing the peak ('peak') or the PRM's strongest pixel
        ('mass', the default preset's) may be chosen; None: any (the original).
    nms : {'agnostic', 'class'}
        Mask NMS across all classes (the original) or within each class.
    rank_by : {'score', 'gain'}
        What orders the instances and is their score: the retrieval score (the
        original) or the PRM's mass in the mask beyond a uniform map's
        (:func:`napari_prm.retrieval.retrieve_instances`).
    score_by : {'retrieval', 'confidence'}
        What an instance's score is (and what orders the instances once
        retrieved): its retrieval score (the original; the head's score for
        instances the refinement head cuts), or that score weighted by
        the logistic of its class's and its peak's margins over the thresholds
        (:func:`napari_prm.retrieval.instance_confidence`; the default preset's).
        NMS orders by the retrieval score either way.
    bg_threshold : float
        The background rule's level: a fraction of the CRM's range with
        ``background='range'`` (0.3 in the default preset), a factor of its mean
        otherwise (0.95, the original's).
    proposal_count, contour_width, size_limits, nms_threshold, penalty, balance
        Retrieval parameters (:func:`napari_prm.retrieval.retrieve_instances`).
    alternatives : int
        Give each instance up to this many other proposals its peak's PRM fits, larger
        around its mask or smaller inside it (``Instance.alternatives``, indices into
        :meth:`PRMPredictor.proposals`): the masks a user swaps in when retrieval took a
        part of the object. 0 (none) in both presets; the napari widget's ``Shift-A`` asks for 3.
    """

    preset: str = "default"
    sub_pixel_locating_factor: int = 8
    class_threshold: float | None = None
    peak_threshold: float | None = None
    relative_threshold: float | None = None
    suppression_radius: float | None = 1.5
    input_size: tuple[int, int] | None = None
    max_peaks: int = MAX_PEAKS
    tta: bool = False
    prm_mode: str = "exact"
    region_seed: float | None = None
    retrieval_grid: str = "network"
    output_grid: str = "image"
    background: str = "range"
    contain: str | None = "mass"
    nms: str = "agnostic"
    rank_by: str = "score"
    score_by: str = "confidence"
    merge_contained: float | None = 0.8
    merge_parts: float | None = 0.2
    proposal_count: int = 100
    contour_width: int = 5
    size_limits: tuple[float, float] = (2e-5, 0.85)
    nms_threshold: float | None = 0.3
    bg_threshold: float = 0.3
    penalty: float = 1e-5
    balance: float = 0.8
    alternatives: int = 0


#: The official inference (Zhou et al.'s demo): thresholds 0 / 30 on its CRMs' scale.
ORIGINAL = PredictSettings(
    preset="original", sub_pixel_locating_factor=8, class_threshold=0.0, peak_threshold=30.0,
    relative_threshold=None, suppression_radius=None, max_peaks=MAX_PEAKS, tta=False,
    retrieval_grid="network", output_grid="network", background="byte", bg_threshold=0.95, contain=None,
    nms="agnostic", rank_by="score", score_by="retrieval", merge_contained=None, merge_parts=None)

DEFAULT = PredictSettings()

SETTING_NAMES = tuple(f.name for f in fields(PredictSettings) if f.name != "preset")

#: The settings that ``retrieval={...}`` may hold (`napari_prm.predict`, `PRMPredictor` and its
#: ``predict``): the same as passing them as keywords.
RETRIEVAL_OPTIONS = ("contour_width", "size_limits", "proposal_count", "nms_threshold", "bg_threshold",
                     "penalty", "balance", "background", "contain", "nms", "rank_by", "score_by", "merge_contained",
                     "merge_parts", "retrieval_grid", "output_grid")


#: Keywords that other detection and segmentation libraries use, and the settings that do their job
#: here: a near spelling would answer ``threshold`` with ``bg_threshold`` and ``iou_threshold`` with
#: ``bg_threshold`` too, neither of which it means.
SETTING_ALIASES = {
    **dict.fromkeys(("threshold", "thresh", "score_threshold", "conf_threshold", "confidence_threshold",
                     "min_score", "score_thresh", "detection_threshold"), ("peak_threshold", "class_threshold")),
    **dict.fromkeys(("iou_threshold", "nms_iou", "iou_thresh", "nms_thresh"), ("nms_threshold",)),
    **dict.fromkeys(("top_k", "topk", "num_peaks", "n_peaks", "max_detections", "max_dets", "max_instances"),
                    ("max_peaks",)),
}


def unknown_settings_error(unknown: Sequence[str], *, arguments: Sequence[str] = (),
                           predictor: bool = False) -> ValueError:
    """The error for keywords that are neither settings nor arguments of the call.

    It names them, suggests the setting or argument a misspelt one likely means
    (``peak_thresh``: ``peak_threshold``; ``class_names``: ``classes``) or, for another
    library's keyword, the settings that do its job (`SETTING_ALIASES`: ``threshold``:
    ``peak_threshold`` or ``class_threshold``), says where an image goes on a predictor
    (`PRMPredictor.set_image`), then lists the settings.

    Parameters
    ----------
    unknown : sequence of str
        The keywords given that are not known.
    arguments : sequence of str
        The call's own keyword arguments, suggested beside the settings.
    predictor : bool
        Whether the call is a `PRMPredictor`'s, which takes its image in ``set_image``.

    Examples
    --------
    >>> print(unknown_settings_error(["peak_thresh"]))  # doctest: +ELLIPSIS
    unknown setting(s) ['peak_thresh']; did you mean 'peak_threshold'? (known settings: [...])
    >>> print(unknown_settings_error(["threshold"]))  # doctest: +ELLIPSIS
    unknown setting(s) ['threshold']; did you mean 'peak_threshold' or 'class_threshold'? (known settings: [...])
    """
    unknown = sorted(str(name) for name in unknown)
    hints = []
    for name in unknown:
        if predictor and name == "image":
            continue
        meant = SETTING_ALIASES.get(name.lower()) or [m for m in [close_match(name, [*SETTING_NAMES, *arguments])]
                                                      if m is not None and m != name]
        if meant:
            hints.append(" or ".join(map(repr, meant)) + (f" for {name!r}" if len(unknown) > 1 else ""))
    parts = [f"unknown setting(s) {unknown}"]
    if hints:
        parts.append(f"did you mean {', '.join(hints)}?")
    if predictor and "image" in unknown:
        parts.append("the image is given to predictor.set_image(image), and predictor.predict() predicts it")
    return ValueError("; ".join(parts) + f" (known settings: {list(SETTING_NAMES)})")


def preset_settings(preset: str | PredictSettings = "default", **overrides: Any) -> PredictSettings:
    """The settings of a preset, with some fields replaced.

    Parameters
    ----------
    preset : {'default', 'original'}
        'original' reproduces the official release's inference: sub-pixel factor
        8, class threshold 0 and peak threshold 30 (on its ResNet-50's CRM scale;
        pass thresholds for another model's scale), retrieval on the 448-pixel
        network grid with proposals resized by nearest neighbour, a byte-scaled
        background map, class-agnostic NMS, and no instance for a PRM without
        mass. 'default' adds the model's calibrated thresholds, suppression of
        peaks across classes and masks at the image's resolution (see
        docs/accuracy.md for what each change measured). A :class:`PredictSettings` (a
        prediction's ``settings``, one made here and changed with :func:`dataclasses.replace`)
        is taken as it is, its ``preset`` kept.
    **overrides
        Fields of :class:`PredictSettings`, as given (None included: ``class_threshold=None``
        means the model's calibrated value, ``suppression_radius=None`` turns the suppression
        off). ``max_peaks`` is an integer from 1 to :data:`MAX_PEAKS_LIMIT`: None is refused.

    Returns
    -------
    PredictSettings

    Raises
    ------
    ValueError
        An unknown preset or setting, or a value out of its range (naming it).

    Examples
    --------
    >>> preset_settings("original").peak_threshold
    30.0
    >>> preset_settings(max_peaks=20).max_peaks
    20
    >>> preset_settings(max_peaks=None)
    Traceback (most recent call last):
    ...
    ValueError: max_peaks: expected an integer in [1, 1000], got None
    >>> preset_settings(preset_settings("original", peak_threshold=5.0), max_peaks=3).peak_threshold
    5.0
    """
    if isinstance(preset, PredictSettings):
        base = preset
    elif isinstance(preset, str) and preset in PRESETS:
        base = ORIGINAL if preset == "original" else DEFAULT
    else:
        raise ValueError(f"preset: expected one of {PRESETS} or a PredictSettings, got {preset!r}")
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise unknown_settings_error(unknown)
    return _checked(replace(base, **overrides))


def _checked(settings: PredictSettings) -> PredictSettings:
    s = settings
    if s.input_size is not None:
        s = replace(s, input_size=check.input_size("input_size", s.input_size))
    # tta="no" (a configuration file's string) was true: six forward passes, and settings.tta "no"
    s = replace(s, tta=check.boolean("tta", s.tta))
    check.integer("sub_pixel_locating_factor", s.sub_pixel_locating_factor, low=1)
    check.finite_float("class_threshold", s.class_threshold, optional=True)
    check.finite_float("peak_threshold", s.peak_threshold, optional=True)
    check.finite_float("relative_threshold", s.relative_threshold, low=0, high=1, optional=True)
    check.finite_float("suppression_radius", s.suppression_radius, low=0, optional=True)
    check.finite_float("merge_contained", s.merge_contained, low=0, high=1, low_open=True, optional=True)
    check.finite_float("merge_parts", s.merge_parts, low=0, high=1, low_open=True, optional=True)
    check.finite_float("region_seed", s.region_seed, low=0, high=1, low_open=True, optional=True)
    check.finite_float("bg_threshold", s.bg_threshold, low=0)
    check.integer("max_peaks", s.max_peaks, low=1, high=MAX_PEAKS_LIMIT)
    check.positive_int("proposal_count", s.proposal_count)
    check.integer("alternatives", s.alternatives, low=0, high=20)
    for name, allowed in (("prm_mode", ("exact", "fast")), ("retrieval_grid", ("network", "image")),
                          ("output_grid", ("network", "image")), ("background", ("byte", "float", "range")),
                          ("contain", (None, "peak", "mass")), ("nms", ("agnostic", "class")),
                          ("rank_by", ("score", "gain")), ("score_by", ("retrieval", "confidence"))):
        if getattr(s, name) not in allowed:
            raise ValueError(f"{name}: expected one of {allowed}, got {getattr(s, name)!r}")
    if s.tta and s.prm_mode == "fast":
        raise ValueError("tta and prm_mode='fast' cannot be combined: the fast mode stops inside one branch")
    return s


def _distinct(value: float, threshold: float) -> tuple[str, str]:
    """``value`` and ``threshold`` printed with 3 significant digits, or more when they would read the same."""
    for digits in range(3, 10):
        shown, limit = (f"{float(f'{v:.{digits}g}'):g}" for v in (value, threshold))  # 1000, not 1e+03
        if shown != limit:
            break
    return shown, limit


def resolve_thresholds(settings: PredictSettings, model_settings: Mapping[str, Any]) -> tuple[float, float | None]:
    """The class and peak thresholds ``settings`` select peaks with, for a model.

    Parameters
    ----------
    settings : PredictSettings
    model_settings : mapping
        A model's ``settings`` (its calibrated ``class_threshold`` and ``peak_threshold``, if any;
        with ``settings.tta``, those of its ``tta_calibration``).

    Returns
    -------
    class_threshold : float
        The setting, else the model's calibrated value, else 0.
    peak_threshold : float or None
        The setting, else the model's calibrated value, else None (no peak threshold).
    """
    if settings.tta and isinstance(model_settings.get(TTA_CALIBRATION), Mapping):
        # TTA averages six maps: its peaks are lower, and calibrated on their own.
        model_settings = model_settings[TTA_CALIBRATION]
    class_threshold, peak_threshold = settings.class_threshold, settings.peak_threshold
    if class_threshold is None:
        class_threshold = float(model_settings.get("class_threshold", 0.0))
    if peak_threshold is None and model_settings.get("peak_threshold") is not None:
        peak_threshold = float(model_settings["peak_threshold"])
    return class_threshold, peak_threshold


def cap_note(found: int, kept: int, max_peaks: int) -> str:
    """The note of a prediction whose ``max_peaks`` cap bit: ``found`` peaks passed the
    thresholds and the ``kept`` strongest were kept.

    Parameters
    ----------
    found : int
        The peaks that passed the thresholds.
    kept : int
        The peaks kept.
    max_peaks : int
        The cap, named in the note.
    """
    strongest = "the strongest was" if kept == 1 else f"the {kept} strongest were"
    return (f"{found} peaks passed the thresholds; {strongest} kept (max_peaks={max_peaks}). "
            "Raise the thresholds or max_peaks.")


@dataclass(repr=False, eq=False)
class Prediction:
    """PRM results for one image, in the image's pixel frame.

    Attributes
    ----------
    class_names : list of str
    scores : (C,) float32 ndarray
        Peak-stimulated class scores (read-only: shared with the predictor).
    crms : (C, h, w) float32 ndarray
        Class response maps, in CRM pixels (upsampled by the sub-pixel factor); read-only,
        shared with the predictor.
    peaks : (K, 2) float64 ndarray
        Peak ``(y, x)`` in image pixels.
    peak_classes : (K,) int64 ndarray
    peak_values : (K,) float32 ndarray
    prms : (K, H, W) ScaledPRMs or float32 ndarray
        Peak response maps at the image's size, each summing to 1 (0 everywhere
        when no signal reached the image). The predictor gives a
        :class:`napari_prm.prm_maps.ScaledPRMs`: the maps at the network's grid, each
        resized when read (``prms[k]``), so that many peaks of a large image cost little;
        it reads as a read-only float32 ndarray (``np.asarray(prms)``, ``prms.sum(...)``
        and the other ndarray methods build the whole stack; so does ``torch.as_tensor(prms)``,
        while ``torch.from_numpy`` takes ndarrays only: ``torch.from_numpy(np.asarray(prms))``).
    instances : list of Instance
        Retrieved instances (empty when no proposals were used).
    peaks_crm : (K, 3) int64 ndarray
        ``(class, y, x)`` of each peak in CRM pixels.
    runner_up_classes : (K, 3) int64 ndarray
        Classes whose peaks at the same place this peak suppressed, -1 where none.
    runner_up_values : (K, 3) float32 ndarray
        Their peak values (NaN where none).
    sub_pixel_locating_factor : int
    settings : PredictSettings or None
        What produced it (not the channels an image file was read with: a reading option,
        see :class:`PredictSettings`).
    notes : list of str
        What the user should know (for example that the peak cap bit: `cap_note`, or that an
        RGBA image was mostly transparent: `napari_prm.io.opacity_note`).
    peaks_found : int or None
        How many peaks passed the thresholds before the ``max_peaks`` cap kept the strongest
        (``len(peaks)`` when it did not bite); None for a prediction from given points.
    pixel_size : dict or None
        The pixel size of the TIFF file predicted (`napari_prm.io.tiff_pixel_size`: given to
        `napari_prm.predict` or `PRMPredictor.set_image` as a path), which
        `napari_prm.io.write_prediction` writes into its label TIFF (and PRM TIFF) as
        ``napari-prm predict`` does; None for an array, or a file that records none.
    classes : list of str or None
        The classes asked for (``classes=`` of `napari_prm.predict`), by name, in the model's
        order; None: all of the model's (and for a prediction from given points). Peaks of
        the others were not looked for: `napari_prm.evaluate.evaluate` scores mAP^r and ABO on
        these classes only, as ``evaluate --predictions`` scores a ``predict --classes`` run.

    Notes
    -----
    A prediction (like the other results that hold arrays: `Instance`, ``GroundTruth``,
    ``Correction``, ...) compares by identity: ``a == b`` only when they are the same object,
    and it can be a dict key or a set member. Compare two predictions' contents field by
    field (``np.array_equal(a.peaks, b.peaks)``, ``np.allclose(a.scores, b.scores)``).
    """

    class_names: list[str]
    scores: np.ndarray
    crms: np.ndarray
    peaks: np.ndarray
    peak_classes: np.ndarray
    peak_values: np.ndarray
    prms: np.ndarray | ScaledPRMs
    instances: list[Instance] = field(default_factory=list)
    peaks_crm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    runner_up_classes: np.ndarray | None = None
    runner_up_values: np.ndarray | None = None
    sub_pixel_locating_factor: int = 1
    settings: PredictSettings | None = None
    notes: list[str] = field(default_factory=list)
    peaks_found: int | None = None
    pixel_size: dict | None = None
    classes: list[str] | None = None

    def __post_init__(self):
        count = len(self.peak_classes)
        if self.runner_up_classes is None:
            self.runner_up_classes = np.full((count, 3), -1, np.int64)
        if self.runner_up_values is None:
            self.runner_up_values = np.full((count, 3), np.nan, np.float32)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the image predicted: the last two axes of ``prms``."""
        return tuple(self.prms.shape[-2:])

    def __repr__(self) -> str:
        # a notebook prints this: counts and classes, not the maps (the default repr wrote out
        # every CRM, mask and PRM: 6,800 characters for one cat)
        from ._text import names_summary

        def by_class(indices) -> str:
            counts: dict[str, int] = {}
            for index in indices:
                name = self.class_names[int(index)]
                counts[name] = counts.get(name, 0) + 1
            return ", ".join(f"{name} {count}" for name, count in counts.items())

        height, width = self.image_shape
        peaks = f"peaks={len(self.peak_classes)}"
        if len(self.peak_classes):
            peaks += f" ({by_class(self.peak_classes)})"
        instances = f"instances={len(self.instances)}"
        if self.instances:
            scores = [instance.score for instance in self.instances]
            spread = f"score {scores[0]:.3g}" if len(scores) == 1 else f"scores {max(scores):.3g} to {min(scores):.3g}"
            instances += f" ({by_class(i.class_index for i in self.instances)}; {spread})"
        preset = "" if self.settings is None else f", preset={self.settings.preset!r}"
        return (f"Prediction(image_shape=({height}, {width}), {peaks}, {instances}, "
                f"class_names={names_summary(self.class_names)}{preset}, notes={self.notes!r})")

    def to_labels(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The instances as one label image and a table of its labels.

        Where instances overlap, the higher-scoring one keeps the pixels; see
        :func:`napari_prm.retrieval.instances_to_labels`.

        Returns
        -------
        labels : (H, W) uint16 ndarray
            0 for background, instance i labelled i + 1 (uint32 above 65535 instances).
        table : dict of str to ndarray
            Columns ``label``, ``class_index``, ``class_name``, ``score``, ``peak``, one row
            per instance.
        """
        from .retrieval import instances_to_labels

        return instances_to_labels(self.instances, self.image_shape, class_names=self.class_names)

    def to_coco(self, *, image_id: int = 1, file_name: str = "", category_ids: Sequence[int] | None = None) -> dict:
        """The instances as a COCO "instances" dataset of one image, each annotation its instance's
        whole mask (overlaps kept, as evaluation scores them); see
        :func:`napari_prm.io.instances_to_coco`.

        Parameters
        ----------
        image_id : int
            The image's COCO id (e.g. a dataset's ``image_ids[i]``).
        file_name : str
            ``file_name`` of the image entry (empty by default).
        category_ids : sequence of int, optional
            Each class's COCO category id (default ``index + 1``).

        Returns
        -------
        dict
            ``images``, ``annotations`` (``segmentation`` as compressed RLE, ``score``,
            ``bbox`` ``[x, y, width, height]``, ...) and ``categories``; its ``annotations``
            are a results list for pycocotools' ``COCO.loadRes`` (which raises ``IndexError``
            on an empty list: join the annotations of all images first, and with none at all,
            every AP is 0).
        """
        from .io.coco import instances_to_coco

        return instances_to_coco(self.instances, self.image_shape, self.class_names, image_id=image_id,
                                 file_name=file_name, category_ids=category_ids)


def rank_by_confidence(prediction: Prediction, instances: Sequence[Instance], class_threshold: float,
                       peak_threshold: float | None) -> list[Instance]:
    """Instances rescored by :func:`napari_prm.retrieval.instance_confidence`, best first.

    What ``predict`` does with ``score_by="confidence"``, for instances retrieved from
    proposals or cut by a refinement head alike.

    Parameters
    ----------
    prediction : Prediction
        The image's prediction: its class ``scores`` and ``peak_values``.
    instances : sequence of Instance
        Instances of ``prediction``'s peaks (``Instance.peak`` indexes them); changed in
        place: ``retrieval_score`` keeps the score they came with (their retrieval score or
        the head's mask probability), ``score`` becomes the confidence. Instances ranked
        before are ranked again from their ``retrieval_score``, so ranking twice changes
        nothing.
    class_threshold : float
    peak_threshold : float or None
        The thresholds the margins are measured from (None: no peak term).

    Returns
    -------
    list of Instance
        The same instances, highest confidence first.
    """
    from .retrieval import instance_confidence

    instances = list(instances)
    if not instances:
        return instances
    peaks = np.array([i.peak for i in instances], np.int64)
    classes = np.array([i.class_index for i in instances], np.int64)
    peak_margins = None if peak_threshold is None else np.asarray(prediction.peak_values)[peaks] - peak_threshold
    base = [i.base_score for i in instances]
    confidence = instance_confidence(base,
                                     np.asarray(prediction.scores)[classes] - class_threshold, peak_margins)
    for instance, retrieval, value in zip(instances, base, confidence):
        instance.retrieval_score, instance.score = retrieval, float(value)
    order = np.argsort(-confidence, kind="stable")
    return [instances[k] for k in order]


def crm_to_image(yx: np.ndarray, crm_shape: Sequence[int], image_shape: Sequence[int], factor: int = 1) -> np.ndarray:
    """Map ``(y, x)`` CRM pixels (possibly upsampled by ``factor``, align_corners) to image pixels.

    Parameters
    ----------
    yx : (N, 2) array
        Points in CRM pixels (rows, columns).
    crm_shape : sequence of int
        (h, w) of the CRM the points are in (the upsampled one when ``factor`` > 1).
    image_shape : sequence of int
        (H, W) of the image.
    factor : int
        The sub-pixel upsampling factor of the CRM.
    """
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    out = np.empty_like(yx)
    for axis in range(2):
        upsampled, full = crm_shape[axis], image_shape[axis]
        base = upsampled // factor
        coord = yx[:, axis] * (base - 1) / max(upsampled - 1, 1) if factor > 1 else yx[:, axis]
        out[:, axis] = (coord + 0.5) * full / base - 0.5
    return out


def image_to_crm(yx: np.ndarray, crm_shape: Sequence[int], image_shape: Sequence[int], factor: int = 1) -> np.ndarray:
    """Nearest CRM pixel (int64) of image ``(y, x)`` points: the inverse of :func:`crm_to_image`.

    Parameters
    ----------
    yx : (N, 2) array
        Points in image pixels (rows, columns).
    crm_shape : sequence of int
        (h, w) of the CRM (the upsampled one when ``factor`` > 1).
    image_shape : sequence of int
        (H, W) of the image.
    factor : int
        The sub-pixel upsampling factor of the CRM.
    """
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


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``: a prediction shares the predictor's cached maps without a
    copy, and changing them in place (which would change the predictor's later peaks) raises."""
    view = array.view()
    view.flags.writeable = False
    return view


def class_indices(classes, class_names: Sequence[str]) -> list[int] | None:
    """Class names or indices → indices into ``class_names`` (None stays None; one name or
    index stands for a list of it: ``classes="cat"`` was read as the classes 'c', 'a', 't').

    Parameters
    ----------
    classes : None, str, int or sequence of str or int
        Class names or indices into ``class_names``.
    class_names : sequence of str
        The model's classes.
    """
    if classes is None:
        return None
    if isinstance(classes, (str, int, np.integer)):
        classes = [classes]
    indices = []
    for item in classes:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < len(class_names):
                raise ValueError(f"class index {item} is out of range for a model with {len(class_names)} classes")
            indices.append(int(item))
        elif item in class_names:
            indices.append(list(class_names).index(item))
        else:
            raise ValueError(f"unknown class {item!r}; the model knows {len(class_names)} classes, "
                             f"e.g. {list(class_names)[:5]}{did_you_mean([item], class_names)}"
                             f"{_builtin_models_with(item, class_names)}")
    return indices


def _builtin_models_with(name: object, class_names: Sequence[str]) -> str:
    """A hint naming the built-in models that know class ``name`` when the model asked
    (``class_names``) does not: ``classes=["cup"]`` of ``imagenet-voc``, whose 19 classes
    lack it, is a class of ``imagenet-coco``; ``""`` when none does."""
    from .model.checkpoint import builtin_class_names

    if not isinstance(name, str):
        return ""
    names = [space for space in ("imagenet-voc", "imagenet-coco", "imagenet")
             if name in builtin_class_names(space) and list(builtin_class_names(space)) != list(class_names)]
    if not names:
        return ""
    which = " and ".join(repr(space) for space in names)
    return (f"; the built-in model{'s' if len(names) > 1 else ''} {which} "
            f"{'know' if len(names) > 1 else 'knows'} it: napari_prm.load_model({names[0]!r})")


class PRMPredictor:
    """Peaks, peak response maps and instances of one image at a time, computed once.

    Parameters
    ----------
    model : PRMModel or str
        A loaded model, a built-in name (``"imagenet"``, ``"imagenet-voc"``,
        ``"imagenet-coco"``) or a checkpoint path.
    preset : {'default', 'original'} or PredictSettings
        See :func:`preset_settings`: a :class:`PredictSettings`, such as an earlier
        prediction's ``settings``, gives every setting at once (keywords still override it).
    proposals : str, path, ndarray, callable or None
        Segment proposals for instance retrieval (see
        :func:`napari_prm.proposals.make_proposals`); None gives peaks and PRMs only.
        Sources that need no PRMs are computed once per image. ``"refined"`` cuts one
        instance per peak with the model's refinement head (:mod:`napari_prm.refine`);
        ``"auto"`` (the default) is ``"refined"`` for a model with a head, else ``"default"``.
    device : str or torch.device, optional
        Where to run. None: a PRMModel runs where it is; a name or path is loaded onto the
        best device available (CUDA, then MPS, then the CPU), unlike
        :func:`napari_prm.load_model`, whose default is the CPU. A PRMModel given another
        device is moved there (in place, as ``PRMModel.to`` does).
    peak_batch_size : int, optional
        Peaks back-propagated at once (None: 1 on the CPU, 16 on a GPU).
    retrieval : dict, optional
        Retrieval settings (any of :data:`RETRIEVAL_OPTIONS`), the same as passing them as
        keywords, as :func:`napari_prm.predict` takes them.
    **settings
        Fields of :class:`PredictSettings` that differ from the preset. The arguments of
        :meth:`predict` (``classes``, ``points``, ...) are given to it, per prediction; the
        constructor refuses them with a ``ValueError`` that says so.

    Examples
    --------
    >>> from skimage import data
    >>> predictor = PRMPredictor("imagenet-voc")
    >>> predictor.set_image(data.chelsea())                      # the forward pass, once
    >>> prediction = predictor.predict()
    >>> [prediction.class_names[c] for c in prediction.peak_classes]
    ['cat', 'cat', 'cat', 'cat']
    >>> len(predictor.predict(peak_threshold=8.5).peaks)         # no new forward pass
    1
    >>> clicked = predictor.predict(points=([[120, 200]], ["cat"]))  # a click: one backward pass
    >>> clicked.peaks.round(1)                                   # on the CRM's sub-pixel grid
    array([[120.6, 200.5]])
    """

    def __init__(self, model: PRMModel | str, *, preset: str | PredictSettings = "default", proposals: Any = "auto",
                 device: str | torch.device | None = None, peak_batch_size: int | None = None,
                 retrieval: Mapping[str, Any] | None = None, **settings: Any):
        if not isinstance(model, PRMModel):
            model = load_model(model, device=device)
        elif device is not None and resolve_device(device) != model.device:
            model.to(device)
        self.model = model
        settings = _with_retrieval(retrieval, settings)
        per_call = sorted(set(settings) & set(_PREDICT_ARGUMENTS))
        if per_call:
            given = ", ".join(f"{name}=..." for name in per_call)
            what = "is an argument" if len(per_call) == 1 else "are arguments"
            raise ValueError(f"{' and '.join(per_call)} {what} of predict(), not of PRMPredictor: give "
                             f"{'it' if len(per_call) == 1 else 'them'} to each prediction, "
                             f"predictor.set_image(image); predictor.predict({given}) "
                             f"(or napari_prm.predict(image, model, {given}))")
        unknown = sorted(set(settings) - set(SETTING_NAMES))
        if unknown:
            raise unknown_settings_error(unknown, predictor=True)
        self.settings = preset_settings(preset, **settings)
        from .proposals import resolve_source

        # "auto": the model's refinement head when it has one (napari_prm.refine), else "default"
        self.proposal_source = resolve_source(proposals, model)
        self.peak_batch_size = check.positive_int("peak_batch_size", peak_batch_size, optional=True)
        self._lock = threading.RLock()
        self.reset_image()

    def __repr__(self) -> str:
        # a notebook printed "<napari_prm.predictor.PRMPredictor object at 0x...>"
        from ._text import array_summary, plural

        source = self.proposal_source
        if isinstance(source, np.ndarray):
            proposals = array_summary(source)
        elif source is None or isinstance(source, (str, os.PathLike)):
            proposals = repr(source)
        else:  # a callable, a ScaledMasks, ...
            proposals = f"<{getattr(source, '__name__', type(source).__name__)}>"
        preset = preset_settings(self.settings.preset)
        changed = {f.name: getattr(self.settings, f.name) for f in fields(self.settings)
                   if getattr(self.settings, f.name) != getattr(preset, f.name)}
        image = "None"
        if self.is_image_set:
            height, width = self._image_shape
            image = f"<{height}×{width}, {plural(self.cached_peak_count, 'PRM')} cached>"
        return (f"PRMPredictor(model={self.model!r}, preset={self.settings.preset!r}, proposals={proposals}, "
                f"settings={changed}, image={image})")

    # ------------------------------------------------------------------ image state

    def reset_image(self) -> None:
        """Forget the current image (its graph, maps, PRMs and proposals)."""
        self._image = None
        self._image_notes: list[str] = []
        self._pixel_size: dict | None = None
        self._forward = None
        self._prm_cache: dict[tuple, torch.Tensor] = {}
        self._proposals: np.ndarray | None = None
        self._head_features = None
        self._crms = None
        self._scores = None
        self._candidates: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._prepared_source = self._prepared_key = self._prepared_masks = None
        self.timings: dict[str, float] = {}

    def set_proposals(self, proposals: Any) -> None:
        """Use another proposal source from now on (see the ``proposals`` parameter;
        ``"auto"`` is resolved against the model now).

        The current image's proposals are computed again when next needed, unless
        ``proposals`` is the source already in use (the same object, or an equal name
        or path); the forward pass and the cached PRMs are kept.

        Parameters
        ----------
        proposals : str, path, ndarray, callable or None
            As :class:`PRMPredictor`'s ``proposals`` (see
            :func:`napari_prm.proposals.make_proposals`); None gives peaks and PRMs only.
        """
        from .proposals import resolve_source

        proposals = resolve_source(proposals, self.model)
        with self._lock:
            current = self.proposal_source
            same_name = (isinstance(proposals, (str, os.PathLike)) and type(proposals) is type(current)
                         and proposals == current)
            if proposals is current or same_name:
                return
            self.proposal_source = proposals
            self._proposals = None

    @property
    def is_image_set(self) -> bool:
        """Whether an image is set (`set_image` ran its forward pass)."""
        return self._forward is not None

    @property
    def uses_refined_proposals(self) -> bool:
        """Whether the proposal source is the model's learnt head (``"refined"``, or ``"auto"``
        for a model with one): it cuts one mask per peak, so an instance has no alternative
        masks (``predict(alternatives=)``) from it. Read-only: see :meth:`set_proposals`."""
        source = self.proposal_source
        return isinstance(source, str) and source.strip().lower() == "refined"

    @property
    def cached_peak_count(self) -> int:
        """How many backward passes of the current image are cached (a peak's own PRM, and its
        region-seeded PRM for each ``region_seed`` asked)."""
        return len(self._prm_cache)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the current image.

        Raises
        ------
        RuntimeError
            When no image is set.
        """
        self._require_image()
        return self._image_shape

    @property
    def crms(self) -> np.ndarray:
        """(C, h, w) class response maps of the current image (upsampled by the sub-pixel factor)."""
        self._require_image()
        return _read_only(self._crms)

    @property
    def scores(self) -> np.ndarray:
        """(C,) peak-stimulated class scores of the current image."""
        self._require_image()
        return _read_only(self._scores)

    def _require_image(self) -> None:
        if self._forward is None:
            raise RuntimeError("no image is set: call set_image(image) first")

    def set_image(self, image: np.ndarray, *, progress: ProgressCallback | None = None,
                  cancel: Callable[[], bool] | None = None) -> None:
        """Run the forward pass on ``image`` and keep what peak backpropagation needs.

        Parameters
        ----------
        image : (H, W), (H, W, 3) or (H, W, 4) ndarray, PIL image, torch tensor or path
            One plane as napari holds it (see :func:`napari_prm.io.as_rgb_float`); a PIL
            image, a ``(C, H, W)`` or ``(H, W, C)`` tensor or an image file's path is made
            an array by :func:`napari_prm.io.image_array`. The predictor keeps a copy:
            changing ``image`` afterwards changes nothing.
        progress : callable, optional
            As in :meth:`predict`.
        cancel : callable or threading.Event, optional
            As in :meth:`predict`.
        """
        pixel_size = tiff_pixel_size(image) if isinstance(image, (str, os.PathLike)) else None
        image = image_array(image)
        rgb = as_rgb_float(image, keep_gray=True)  # a gray image's channel repeated once small
        with self._lock:
            self.reset_image()
            check.raise_if_cancelled(cancel, "prediction cancelled")
            report = progress or (lambda stage, done, total: None)
            report("forward", 0, 1)
            started = time.perf_counter()
            settings = self.settings
            x = self.model.network_input(rgb, settings.input_size)
            self._forward = self.model.network.forward_pass(
                x, sub_pixel_locating_factor=settings.sub_pixel_locating_factor, tta=settings.tta,
                mode=settings.prm_mode)
            crms = self._forward.crm_values[0].float().cpu().numpy()
            net = self.model.network
            self._crms = crms
            self._scores = class_scores(crms, win_size=net.win_size, peak_filter=net.peak_filter)
            # a copy: the proposals and a head's features are made from it later, and the
            # caller may reuse its array (video frames, an edited layer) in the meantime
            self._image = np.array(image, copy=True)
            self._image_shape = tuple(rgb.shape[:2])
            self._image_notes = list(filter(None, [opacity_note(image)]))
            self._pixel_size = pixel_size
            self.timings["forward"] = time.perf_counter() - started
            report("forward", 1, 1)

    def class_response_maps(self, image: np.ndarray) -> np.ndarray:
        """(C, h, w) class response maps of ``image`` with this predictor's settings.

        A plain forward pass without the graph peak backpropagation needs: cheaper
        than :meth:`set_image` when only the maps are wanted (e.g. calibration).
        The current image is left as it is.

        Parameters
        ----------
        image : ndarray
            What :meth:`set_image` takes.

        Returns
        -------
        (C, h, w) float32 ndarray
            One map per class of the model, upsampled by the sub-pixel locating factor.
        """
        rgb = as_rgb_float(image, keep_gray=True)
        x = self.model.network_input(rgb, self.settings.input_size)
        network = self.model.network
        modes = [(module, module.training) for module in network.modules()]
        network.eval()
        try:
            with torch.no_grad():
                crms = network.class_response_maps(
                    x, sub_pixel_locating_factor=self.settings.sub_pixel_locating_factor, tta=self.settings.tta)
        finally:
            for module, training in modes:
                module.training = training
        return crms[0].float().cpu().numpy()

    # ------------------------------------------------------------------ pieces

    def select_peaks(self, *, classes: Sequence[int | str] | None = None, **overrides: Any) -> PeakSelection:
        """The peaks the settings keep in the current image (no backward pass).

        Parameters
        ----------
        classes : int, str or a sequence of them, optional
            Keep only peaks of these classes.
        **overrides
            Fields of :class:`PredictSettings` (thresholds, suppression, cap).

        Returns
        -------
        napari_prm.peaks.PeakSelection
            The kept peaks ``(class, y, x)`` in CRM pixels, strongest first, with their values.
        """
        self._require_image()
        settings = self._settings_with(overrides)
        class_threshold, peak_threshold = resolve_thresholds(settings, self.model.settings)
        radius = settings.suppression_radius
        if radius is not None:
            radius = radius * settings.sub_pixel_locating_factor
        net = self.model.network
        # Finding every local maximum is most of the work and depends only on the window:
        # re-thresholding the same image reuses it.
        window = (net.win_size, net.peak_filter)
        with self._lock:
            if window not in self._candidates:
                self._candidates[window] = peak_candidates(self._crms, win_size=net.win_size,
                                                           peak_filter=net.peak_filter)
            candidates = self._candidates[window]
        return select_peaks(
            self._crms, scores=self._scores, class_threshold=class_threshold, peak_threshold=peak_threshold,
            relative_threshold=settings.relative_threshold, suppression_radius=radius,
            max_peaks=settings.max_peaks, classes=class_indices(classes, self.model.class_names),
            win_size=net.win_size, peak_filter=net.peak_filter, candidates=candidates)

    def _nothing_selected_notes(self, settings: PredictSettings, classes: Sequence[int | str] | None) -> list[str]:
        """Why no peak was kept: the threshold nothing reached, and the best there was."""
        class_threshold, peak_threshold = resolve_thresholds(settings, self.model.settings)
        names = list(self.model.class_names)
        chosen = np.arange(len(names)) if classes is None else np.asarray(
            class_indices(classes, names), dtype=np.int64)
        if not len(chosen):  # classes=[]: a filtered list that kept nothing gave nothing, and no note
            return ["classes is empty: no class was asked for, so no peak was kept"]
        scores = np.asarray(self._scores, dtype=np.float64)
        best = chosen[int(np.argmax(scores[chosen]))]
        if scores[best] < class_threshold:
            shown, threshold = _distinct(scores[best], class_threshold)
            return [f"no class reached the class threshold {threshold}; the best score was {shown} "
                    f"({names[best]}): lower class_threshold to see it"]
        if peak_threshold is None:
            return []
        net = self.model.network
        peaks, values = self._candidates.get((net.win_size, net.peak_filter), (np.zeros((0, 3)), np.zeros(0)))
        passing = np.zeros(len(names), bool)
        passing[chosen[scores[chosen] >= class_threshold]] = True
        keep = passing[peaks[:, 0].astype(np.int64)] if len(peaks) else np.zeros(0, bool)
        if not keep.any():
            return []
        strongest = int(np.flatnonzero(keep)[np.argmax(values[keep])])
        value = float(values[strongest])
        if value > peak_threshold:
            return []
        shown, threshold = _distinct(value, peak_threshold)
        return [f"no peak reached the peak threshold {threshold}; the strongest was {shown} "
                f"({names[int(peaks[strongest, 0])]}): lower peak_threshold to see it"]

    def _settings_with(self, overrides: dict) -> PredictSettings:
        unknown = sorted(set(overrides) - set(SETTING_NAMES))
        if unknown:
            raise unknown_settings_error(unknown, arguments=(*_PREDICT_ARGUMENTS, "retrieval"), predictor=True)
        fixed = ("sub_pixel_locating_factor", "tta", "prm_mode", "input_size")
        changed = [k for k in fixed if k in overrides and overrides[k] != getattr(self.settings, k)]
        if changed:
            raise ValueError(f"{changed} change the forward pass: create a new PRMPredictor (or set predictor.settings "
                             "and call set_image again)")
        return _checked(replace(self.settings, **overrides))

    def peak_response_maps(self, peaks: np.ndarray, *, progress: Callable[[int, int], None] | None = None,
                           cancel: Callable[[], bool] | None = None, region_seed: float | None = None) -> torch.Tensor:
        """PRMs of ``(class, y, x)`` CRM locations at the network input's size, cached per location.

        Parameters
        ----------
        peaks : (K, 3) int array
        progress : callable, optional
            ``progress(done, total)`` over the peaks not yet cached.
        cancel : callable or threading.Event, optional
            Checked after each backward pass.
        region_seed : float, optional
            Pool each peak's PRM with the PRM seeded by its region (as
            :class:`PredictSettings`' ``region_seed``); None: the peak's PRM.

        Returns
        -------
        (K, h_in, w_in) float32 tensor on the CPU, each map summing to 1 (or all 0).
        """
        self._require_image()
        peaks = np.asarray(peaks, dtype=np.int64).reshape(-1, 3)
        if region_seed is not None:
            return self._region_seeded_maps(peaks, region_seed, progress, cancel)
        keys = [tuple(int(v) for v in row) for row in peaks]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._prm_cache))
            if missing:
                started = time.perf_counter()
                batch = self.peak_batch_size or (1 if self.model.device.type == "cpu" else 16)
                for start in range(0, len(missing), batch):
                    chunk = missing[start:start + batch]
                    maps = self._forward.backprop(torch.tensor(chunk, dtype=torch.long), batch_size=batch).cpu()
                    for key, prm in zip(chunk, maps):
                        self._prm_cache[key] = prm
                    if progress is not None:
                        progress(min(start + batch, len(missing)), len(missing))
                    check.raise_if_cancelled(cancel, "prediction cancelled")
                self.timings["backprop"] = self.timings.get("backprop", 0.0) + time.perf_counter() - started
            size = self._forward.input_size
            if not keys:
                return torch.zeros((0,) + tuple(size), dtype=torch.float32)
            return torch.stack([self._prm_cache[k] for k in keys])

    def _region_seeded_maps(self, peaks: np.ndarray, alpha: float, progress, cancel) -> torch.Tensor:
        """Each peak's PRM and its region-seeded PRM, each summing to 1, averaged; cached per
        location and ``alpha``."""
        from .peaks import region_seeds

        alpha = check.finite_float("region_seed", alpha, low=0, high=1, low_open=True)
        own = self.peak_response_maps(peaks, progress=progress, cancel=cancel)
        keys = [(*(int(v) for v in row), alpha) for row in peaks]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._prm_cache))
            if missing:
                started = time.perf_counter()
                for key in missing:
                    peak = np.array([key[:3]])
                    seed = region_seeds(self._crms, peak, alpha)
                    self._prm_cache[key] = self._forward.backprop(torch.from_numpy(peak), seeds=seed).cpu()[0]
                    check.raise_if_cancelled(cancel, "prediction cancelled")
                self.timings["backprop"] = self.timings.get("backprop", 0.0) + time.perf_counter() - started
            if not keys:
                return own
            pooled = own + torch.stack([self._prm_cache[k] for k in keys])
            sums = pooled.flatten(1).sum(1)
            return pooled / torch.where(sums > 0, sums, 1)[:, None, None]

    def proposals(self, prms: np.ndarray | None = None, prediction: Prediction | None = None) -> np.ndarray | None:
        """The segment proposals of the current image (computed once unless they depend on the peaks).

        Parameters
        ----------
        prms : (K, H, W) ndarray, optional
            The PRMs that ``"prm"`` proposals are made from (a source without ``"prm"`` or
            ``"refined"`` ignores it).
        prediction : Prediction, optional
            The prediction whose peaks and PRMs ``"refined"`` (alone or in a combination)
            needs.

        Returns
        -------
        (N, H, W) bool ndarray or None
            At the image's size. The predictor keeps the built-in proposals at their
            working size (:class:`napari_prm.masks.ScaledMasks`) and builds this stack
            on each call.
        """
        masks = self._proposal_stack(prms, prediction)
        return masks.to_array() if isinstance(masks, ScaledMasks) else masks

    def alternative_masks(self, instance: Instance, prediction: Prediction | None = None) -> list[np.ndarray]:
        """The masks of ``instance.alternatives`` at the image's size, best first.

        ``instance`` comes from this predictor's current image, predicted with
        ``alternatives`` above 0 (``predict(alternatives=3)``); its alternatives index this
        image's proposals (not the ``"refined"`` head's, which gives none).

        Parameters
        ----------
        instance : Instance
            An instance of ``prediction``.
        prediction : Prediction, optional
            The prediction ``instance`` comes from: needed when the proposals are made from its
            PRMs (``"prm"``, or a combination with ``"prm"`` or ``"refined"``), which are then
            made again from them.

        Returns
        -------
        list of (H, W) bool ndarray
            One mask per index of ``instance.alternatives``, in its order; empty when it has none.

        Examples
        --------
        >>> predictor.set_image(image)  # doctest: +SKIP
        >>> prediction = predictor.predict(alternatives=3)  # doctest: +SKIP
        >>> larger_or_smaller = predictor.alternative_masks(prediction.instances[0], prediction)  # doctest: +SKIP
        """
        if not instance.alternatives:
            return []
        if prediction is None and self._proposals_need_prms():
            raise ValueError(f"proposals {self.proposal_source!r} are made from the prediction's PRMs: pass the "
                             "prediction the instance comes from, alternative_masks(instance, prediction)")
        stack = (self._proposal_stack() if prediction is None
                 else self._proposal_stack(prediction.prms, prediction))
        if stack is None or max(instance.alternatives) >= len(stack):
            raise ValueError(f"instance.alternatives {instance.alternatives} do not index this image's "
                             f"{0 if stack is None else len(stack)} proposals: predict the instance on this image")
        return [np.array(stack[int(j)], dtype=bool) for j in instance.alternatives]

    def _proposals_need_prms(self) -> bool:
        """Whether the proposal source is made from a prediction's PRMs (``"prm"``, ``"refined"``)."""
        from .proposals import resolve_source

        source = self.proposal_source
        if not isinstance(source, str):
            return False
        parts = [resolve_source(part.strip(), self.model).lower() for part in source.split("+")]
        return "prm" in parts or "refined" in parts

    def _proposal_stack(self, prms: np.ndarray | None = None, prediction: Prediction | None = None):
        """`proposals`, with the built-in ones as held: a ScaledMasks at their working size."""
        self._require_image()
        source = self.proposal_source
        if source is None:
            return None
        from .proposals import make_proposals, resolve_source

        if isinstance(source, str) and "+" in source:
            # each "auto" of a combination stands for this model's source ("refined" with a head)
            source = "+".join(resolve_source(part.strip(), self.model) for part in source.split("+"))
        parts = source.lower().split("+") if isinstance(source, str) else []
        if "prm" in parts or "refined" in parts:
            return make_proposals(source, self._image, prms=prms, model=self.model, prediction=prediction)
        with self._lock:
            if self._proposals is None:
                started = time.perf_counter()
                self._proposals = make_proposals(source, self._image, scaled=True)
                self.timings["proposals"] = time.perf_counter() - started
            return self._proposals

    # ------------------------------------------------------------------ predict

    def predict(
        self,
        *,
        points: tuple[np.ndarray, Sequence[int | str]] | None = None,
        classes: Sequence[int | str] | None = None,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None,
        retrieval: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Prediction:
        """Peaks, PRMs and instances of the current image.

        Parameters
        ----------
        points : ((K, 2) float array, K classes), optional
            Back-propagate from these image ``(y, x)`` locations of these classes
            (indices or names) instead of the selected peaks, e.g. a user's
            clicks; thresholds and ``classes`` do not select them (the thresholds
            still weigh their instances' confidence, see ``score_by``). A point outside
            the image back-propagates from the border's nearest place, with a note.
        classes : int, str or a sequence of them, optional
            Keep only peaks of these classes.
        progress : callable, optional
            ``progress(stage, done, total)`` with stage ``"backprop"``,
            ``"proposals"`` or ``"retrieval"``.
        cancel : callable or threading.Event, optional
            Checked between steps and peaks; raises :class:`Cancelled`.
        retrieval : dict, optional
            Retrieval settings for this call (any of :data:`RETRIEVAL_OPTIONS`), the same as
            passing them as keywords.
        **overrides
            Fields of :class:`PredictSettings` for this call (thresholds, retrieval);
            those that change the forward pass need a new :meth:`set_image`.

        Returns
        -------
        Prediction

        Raises
        ------
        ValueError
            Naming the argument: ``points`` that is not a pair (locations, classes) (an array
            of locations alone), unknown classes or settings, ...
        """
        self._require_image()
        overrides = _with_retrieval(retrieval, overrides)
        settings = self._settings_with(overrides)
        report = progress or (lambda stage, done, total: None)
        factor = settings.sub_pixel_locating_factor
        crm_shape = self._crms.shape[1:]
        notes: list[str] = list(self._image_notes)
        if points is not None:
            peaks_crm, runner_classes, runner_values, values, points_yx = self._points_to_peaks(
                points, crm_shape, factor)
            notes.extend(_outside_notes(points_yx, self._image_shape))
        else:
            selection = self.select_peaks(classes=classes, **overrides)
            if selection.capped:
                notes.append(cap_note(selection.found, len(selection), settings.max_peaks))
            if not len(selection):
                notes.extend(self._nothing_selected_notes(settings, classes))
            peaks_crm, values = selection.peaks, selection.values
            runner_classes, runner_values = selection.runner_up_classes, selection.runner_up_values
        check.raise_if_cancelled(cancel, "prediction cancelled")
        prms_net = self.peak_response_maps(
            peaks_crm, progress=lambda done, total: report("backprop", done, total), cancel=cancel,
            region_seed=settings.region_seed)
        image_shape = self._image_shape
        prediction = Prediction(
            class_names=list(self.model.class_names),
            scores=_read_only(self._scores),  # the predictor's cache: later predictions use it
            crms=_read_only(self._crms),
            peaks=crm_to_image(peaks_crm[:, 1:], crm_shape, image_shape, factor),
            peak_classes=peaks_crm[:, 0].copy(),
            peak_values=np.asarray(values, dtype=np.float32),
            prms=ScaledPRMs(prms_net, image_shape),
            peaks_crm=peaks_crm,
            runner_up_classes=runner_classes,
            runner_up_values=runner_values,
            sub_pixel_locating_factor=factor,
            settings=settings,
            notes=notes,
            peaks_found=selection.found if points is None else None,
            pixel_size=self._pixel_size,
            classes=None if classes is None or points is not None else
            [self.model.class_names[i] for i in sorted(set(class_indices(classes, self.model.class_names)))],
        )
        if self.uses_refined_proposals and len(peaks_crm):
            check.raise_if_cancelled(cancel, "prediction cancelled")
            report("retrieval", 0, 1)
            prediction.instances = self.refined_instances(prediction)
            report("retrieval", 1, 1)
        elif self.proposal_source is not None and len(peaks_crm):
            check.raise_if_cancelled(cancel, "prediction cancelled")
            report("proposals", 0, 1)
            masks = self._proposal_stack(prediction.prms, prediction)
            report("proposals", 1, 1)
            if not len(masks):  # every peak goes without an instance: say why
                prediction.notes.append(_no_proposals_note(image_shape, len(peaks_crm)))
            check.raise_if_cancelled(cancel, "prediction cancelled")
            report("retrieval", 0, 1)
            started = time.perf_counter()
            prediction.instances = self._retrieve(prediction, prms_net, masks, settings)
            self.timings["retrieval"] = time.perf_counter() - started
            report("retrieval", 1, 1)
        if settings.score_by == "confidence":
            prediction.instances = self._confidence(prediction, settings)
        return prediction

    def refined_instances(self, prediction: Prediction) -> list[Instance]:
        """One instance per peak of ``prediction``, cut by the model's refinement head.

        The backbone's maps the head reads are computed once per image; see
        :func:`napari_prm.refine.refined_instances`.

        Parameters
        ----------
        prediction : Prediction
            A prediction of the current image (its peaks, PRMs and CRMs prompt the head).

        Returns
        -------
        list of Instance
        """
        from .refine.inference import head_logits, instance_options, stage_features
        from .refine.instances import head_instances

        self._require_image()
        with self._lock:
            if self._head_features is None:
                started = time.perf_counter()
                self._head_features = stage_features(self.model, self._image)
                self.timings["head_features"] = time.perf_counter() - started
        logits = head_logits(self.model, self._head_features, prediction.prms, prediction.peak_classes,
                             prediction.peaks, prediction.crms)
        return head_instances(logits, prediction.prms, prediction.peak_classes, **instance_options(self.model))

    def _confidence(self, prediction: Prediction, settings: PredictSettings) -> list[Instance]:
        """The instances rescored by :func:`rank_by_confidence` against this model's thresholds."""
        class_threshold, peak_threshold = resolve_thresholds(settings, self.model.settings)
        return rank_by_confidence(prediction, prediction.instances, class_threshold, peak_threshold)

    def _points_to_peaks(self, points, crm_shape, factor):
        """The CRM peaks of ``points`` (image locations, classes), their runners-up (none) and
        values, and the locations checked: a (K, 2) float array."""
        pair = "a pair (locations, classes): (K, 2) image (y, x) and K class names or indices, " \
               "e.g. (np.array([[120.0, 80.0]]), ['cat'])"
        if not isinstance(points, (tuple, list)) or len(points) != 2:
            # an array of locations alone was unpacked as (first row, second row): "not enough
            # values to unpack", or a second point read as classes
            what = (f"{type(points).__name__} of shape {tuple(points.shape)}" if hasattr(points, "shape")
                    else f"{type(points).__name__} of {len(points)}" if isinstance(points, (tuple, list))
                    else type(points).__name__)
            raise ValueError(f"points: expected {pair}; got {what}")
        points_yx, point_classes = points
        points_yx = check.finite_array("points", np.asarray(points_yx, dtype=np.float64))
        if points_yx.size % 2:
            raise ValueError(f"points: expected (K, 2) image (y, x) locations, got shape {points_yx.shape}")
        points_yx = points_yx.reshape(-1, 2)
        point_classes = list(np.asarray(point_classes, dtype=object).reshape(-1))
        try:
            labels = class_indices(point_classes, self.model.class_names)
        except ValueError as error:
            numbers = all(isinstance(c, (int, np.integer)) for c in point_classes)  # a 2nd point read as classes?
            raise ValueError(f"points: {error}" + (f" (points is {pair})" if numbers else "")) from None
        if len(labels) != len(points_yx):
            # "2 locations but 1 classes" for points=(two locations, "cat"): one class per location
            example = f" (e.g. [{point_classes[0]!r}] * {len(points_yx)})" if len(labels) == 1 else ""
            raise ValueError(f"points: {plural(len(points_yx), 'location')} but {plural(len(labels), 'class')}: "
                             f"give one class per location{example}")
        yx = image_to_crm(points_yx, crm_shape, self._image_shape, factor)
        peaks = np.column_stack([np.asarray(labels, dtype=np.int64), yx]).astype(np.int64).reshape(-1, 3)
        values = self._crms[peaks[:, 0], peaks[:, 1], peaks[:, 2]] if len(peaks) else np.zeros(0, np.float32)
        count = len(peaks)
        return (peaks, np.full((count, 3), -1, np.int64), np.full((count, 3), np.nan, np.float32), values,
                points_yx)

    def _retrieve(self, prediction: Prediction, prms_net: torch.Tensor, masks: np.ndarray,
                  settings: PredictSettings) -> list[Instance]:
        from .masks import resize_nearest
        from .retrieval import retrieve_instances

        image_shape = self._image_shape
        options = dict(contour_width=settings.contour_width, size_limits=settings.size_limits,
                       proposal_count=settings.proposal_count, nms_threshold=settings.nms_threshold,
                       bg_threshold=settings.bg_threshold, penalty=settings.penalty, balance=settings.balance,
                       background=settings.background, contain=settings.contain,
                       class_aware_nms=settings.nms == "class", rank_by=settings.rank_by,
                       merge_contained=settings.merge_contained, merge_parts=settings.merge_parts,
                       alternatives=settings.alternatives)
        count = settings.proposal_count
        if settings.retrieval_grid == "network":
            grid = tuple(prms_net.shape[-2:])
            grid_masks = self._prepared(masks, count, grid, settings.contour_width)
            peaks_grid = crm_to_image(prediction.peaks_crm[:, 1:], self._crms.shape[1:], grid,
                                      settings.sub_pixel_locating_factor)
            instances = retrieve_instances(prms_net.numpy(), prediction.peak_classes, self._crms, grid_masks,
                                           peaks_yx=peaks_grid, **options)
            for instance in instances:  # its PRM at the image's size, built when read
                instance.prm = InstancePRM(prediction.prms, [instance.peak, *instance.merged_peaks])
                if settings.output_grid == "image":
                    instance.mask = masks[instance.proposal].copy()
                else:
                    instance.mask = resize_nearest(instance.mask[None], image_shape)[0]
            return instances
        return retrieve_instances(np.asarray(prediction.prms), prediction.peak_classes, self._crms,
                                  self._prepared(masks, count, image_shape, settings.contour_width),
                                  peaks_yx=prediction.peaks, **options)

    def _prepared(self, masks, count: int, grid: tuple[int, int], contour_width: int):
        """The first ``count`` of ``masks`` resized to ``grid``, with their sparse masks and
        contours, kept per image (a ScaledMasks is resized from its working size)."""
        from .masks import resize_nearest
        from .retrieval import prepare_proposals

        key = (count, grid, contour_width)
        with self._lock:
            # the source stack is held, so "is" cannot match a new stack at a recycled address
            if self._prepared_source is not masks or self._prepared_key != key:
                stack = resize_nearest(masks[:count], grid)
                self._prepared_masks = prepare_proposals(stack, contour_width)
                self._prepared_source, self._prepared_key = masks, key
            return self._prepared_masks


#: The arguments of :meth:`PRMPredictor.predict` that are not settings (``classes``, ``points``, ...):
#: the constructor refuses them by name, saying where they go.
_PREDICT_ARGUMENTS = tuple(name for name, parameter in inspect.signature(PRMPredictor.predict).parameters.items()
                           if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "retrieval")


#: Below this many pixels on its short side, an image is said to be too small for proposals when
#: they give none (the built-in ones give none up to 4×4 pixels: the image is one region to them,
#: larger than the 85 % of it they keep).
_SMALL_FOR_PROPOSALS = 8


def _no_proposals_note(image_shape: tuple[int, int], peaks: int) -> str:
    """The note of a prediction whose proposals gave no mask: none of its ``peaks`` got an instance."""
    height, width = image_shape
    note = (f"the proposals gave no mask for this {height}×{width} image, so none of its {plural(peaks, 'peak')} "
            "got an instance (the peaks and their PRMs are kept)")
    if min(height, width) < _SMALL_FOR_PROPOSALS:
        note += ("; an image this small is a single region to the proposals: enlarge it (e.g. 8 times, nearest "
                 "neighbour) or predict on the larger image it was cut from")
    return note


def _with_retrieval(retrieval: Mapping[str, Any] | None, settings: dict) -> dict:
    """``settings`` with the ``retrieval`` dict's settings added (checked: only
    :data:`RETRIEVAL_OPTIONS`); a keyword given both ways keeps the keyword's value, as
    `napari_prm.predict` does."""
    return {**check.keyword_options("retrieval", retrieval, RETRIEVAL_OPTIONS), **settings}


def _outside_notes(yx: np.ndarray, image_shape: tuple[int, int]) -> list[str]:
    """A note naming the points ``yx`` ((K, 2) floats, as `PRMPredictor._points_to_peaks`
    checked them) that lie outside the image (pixel ``i`` spans ``i ± 0.5``): they
    back-propagate from the nearest CRM cell, on the image's border, which a click or an
    (x, y) given for a (y, x) rarely means."""
    height, width = image_shape
    outside = (yx[:, 0] < -0.5) | (yx[:, 0] > height - 0.5) | (yx[:, 1] < -0.5) | (yx[:, 1] > width - 0.5)
    if not outside.any():
        return []
    shown = first_names((f"({y:g}, {x:g})" for y, x in yx[outside]), shown=3)
    return [f"{plural(int(outside.sum()), 'point')} outside the {height}×{width} image, {shown}, "
            f"back-propagated from the nearest place on its border: points are (y, x) in image pixels"]


