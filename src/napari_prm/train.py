"""Training a PRM model from image-level labels (the original recipe as defaults).

Multilabel soft-margin loss on the peak-stimulated class scores; SGD with
momentum 0.9 and weight decay 1e-4; learning rate 0.01 for the classifier and
0.01× that for the pretrained backbone; batch 16; 20 epochs at 448×448 with
random horizontal flips; peaks found on CRMs upsampled 8× during training.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _validate as check
from ._text import Worded, first_names, for_command_line, plural, worded
from ._validate import is_cancelled  # its one place; napari_prm.train.is_cancelled as before
from .data import LabeledImageDataset, TrainingImages, UnreadableImage, class_in
from .evaluate import defined_classification_map
from .io import channels_for, writable_folder
from .model.backbones import BACKBONES, build_fcn
from .model.checkpoint import (
    BUILTIN_MODELS,
    CHECKPOINT_SUFFIXES,
    PRMModel,
    _write_model,
    build_model,
    builtin_class_names,
    checkpoint_file,
    is_builtin_name,
    is_safetensors,
    load_checkpoint,
    load_model,
    resolve_device,
)
from .peaks import TTA_CALIBRATION, Calibration, calibrate_model

TRAINING_STATE_KEY = "training"
# Stored in the training state: which images the run held out. 3: by class (``split(...,
# stratify=True)``), never the only image of a class (:func:`training_split`); 2: the random
# split that never holds out the only image of a class; a checkpoint without it may come from a
# version that made the plain random split (``split(..., keep_every_class=False)``), which could
# hold one out. A resumed run (and ``calibrate --held-out``) makes its checkpoint's split again.
SPLIT_RULE = 3
#: The split rules this version makes: its own, and those of checkpoints of earlier versions.
SPLIT_RULES = (SPLIT_RULE, 2, None)
#: The input size a new model trains at, and a starting model without one of its own.
DEFAULT_INPUT_SIZE = (448, 448)
#: The model settings a calibration writes (`napari_prm.peaks.Calibration.as_settings`, and its
#: TTA pair): a run that trains drops them, as they were chosen for other weights.
CALIBRATION_SETTINGS = (*Calibration.SETTINGS, TTA_CALIBRATION)


@dataclass
class TrainProgress:
    """What a progress callback receives.

    Attributes
    ----------
    stage : {'batch', 'epoch', 'calibration'}
        After each batch, once more when an epoch (and its validation) ends, and
        after each image of the final calibration (``batch`` / ``num_batches``
        then count images; ``loss`` is NaN).
    epoch : int
        1-based epoch.
    num_epochs : int
    batch : int
        1-based batch within the epoch (``num_batches`` at stage 'epoch').
    num_batches : int
    loss : float
        The batch's loss (stage 'batch') or the epoch's mean loss (stage 'epoch').
    images_per_second : float
        Throughput of the epoch so far.
    val_ap : dict or None
        Per-class validation AP (stage 'epoch' with a validation split).
    """

    stage: str
    epoch: int
    num_epochs: int
    batch: int
    num_batches: int
    loss: float
    images_per_second: float
    val_ap: dict[str, float] | None = None


@dataclass
class EpochRecord:
    """One finished epoch: mean loss, validation AP (per class and mean) and wall time in seconds.

    A class's validation AP is NaN when the held-out images do not tell it apart: none shows
    it, or every one does (its AP would be 1 whatever the scores); the mean is over the others
    (NaN when none is left).

    Attributes
    ----------
    epoch : int
        Its number, from 1.
    loss : float
        The mean training loss of its batches.
    seconds : float
    val_ap : dict of str to float, or None
        Each class's classification AP on the held-out images; None when none was held out.
    val_map : float or None
        Their mean.
    """

    epoch: int
    loss: float
    seconds: float
    val_ap: dict[str, float] | None = None
    val_map: float | None = None

    def __repr__(self) -> str:
        from ._text import fields_repr

        return fields_repr(self)  # val_ap counted: 80 classes' APs for each epoch filled a notebook


@dataclass(eq=False)
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : PRMModel
        The trained model, in eval mode, with its inference settings.
    history : list of EpochRecord
        Every finished epoch, including those of the run resumed from.
    checkpoint : Path or None
        The last checkpoint written (None when no epoch finished).
    cancelled : bool
        Whether ``cancel`` stopped the run; the model then holds the weights
        of the interrupted epoch, the checkpoint those of the last finished one.
    calibration : napari_prm.peaks.Calibration or None
        The class and peak thresholds chosen after the last epoch (stored in the
        model's and the checkpoint's settings); None when not calibrated.
    train_images, held_out_images : int
        How many images trained and how many were held out (``val_fraction``).
    warnings : list of str
        What the run could not do well: fewer images held out than ``val_fraction``
        asks (see :func:`training_split`), classes every image shows
        (:func:`no_negative_warning`), held-out images a resumed run's epochs trained on
        (:func:`trained_held_out_warning`), a calibration that found no class. All but the
        calibration's are known before the first epoch, when ``train(warn=...)`` is called
        with each.
    notes : list of str
        What the run did that a caller may not expect: the dataset's ``channels`` differ from
        those the starting model was trained on (the run learns from and records the dataset's;
        the command line says this note as it starts); a resumed run had finished its epochs
        already, so that none was trained (only its calibration, when ``calibrate``).
    """

    model: PRMModel
    history: list[EpochRecord] = field(default_factory=list)
    checkpoint: Path | None = None
    cancelled: bool = False
    calibration: Any = None
    train_images: int = 0
    held_out_images: int = 0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        from ._text import fields_repr

        return fields_repr(self)  # the epochs counted, each with its classes' APs counted


@dataclass(eq=False)
class TrainingSplit:
    """The images :func:`train` trains on and those it holds out (see :func:`training_split`).

    Attributes
    ----------
    train : LabeledImageDataset
    held_out : LabeledImageDataset or None
        None when ``val_fraction`` is 0, or when no image can be held out without
        leaving one of its classes without a training image.
    wanted : int
        How many images ``val_fraction`` asks to hold out (0 when it is 0).
    single_image_classes : list of str
        The classes with a single training image, which kept images from being held
        out when fewer than ``wanted`` are (empty otherwise).
    val_fraction, seed : float, int
        What it was made with.
    split_rule : int or None
        `SPLIT_RULE`, or None: the plain random split of a checkpoint that records no rule
        (see :func:`training_split`).
    left_untrained : list of str
        The classes the plain random split (``split_rule`` None) left without a training image.
    """

    train: LabeledImageDataset
    held_out: LabeledImageDataset | None
    wanted: int = 0
    single_image_classes: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    seed: int = 0
    split_rule: int | None = SPLIT_RULE
    left_untrained: list[str] = field(default_factory=list)

    def is_split_of(self, dataset: LabeledImageDataset, val_fraction: float, seed: int,
                    split_rule: int | None = SPLIT_RULE) -> bool:
        """Whether this is ``training_split(dataset, val_fraction, seed, split_rule=split_rule)``:
        the same recipe and rule, and its parts hold ``dataset``'s images with its classes.

        Parameters
        ----------
        dataset : LabeledImageDataset
            The dataset the split should be of.
        val_fraction : float
            The held-out share of the recipe.
        seed : int
            The seed of the recipe.
        split_rule : int or None
            The split rule (`SPLIT_RULE`, or None for the plain random split of a checkpoint from
            before the rule).
        """
        parts = [self.train] + ([] if self.held_out is None else [self.held_out])
        return (self.val_fraction == val_fraction and self.seed == seed and self.split_rule == split_rule
                and all(list(part.class_names) == list(dataset.class_names) for part in parts)
                and sorted(str(p) for part in parts for p in part.image_paths)
                == sorted(str(p) for p in dataset.image_paths))

    def describe(self, calibrate: bool = True) -> str:
        """E.g. ``"training on 102 images, 26 held out for validation and calibration"``.

        Parameters
        ----------
        calibrate : bool
            Whether the thresholds are calibrated after training, so that the held-out images (or
            the training images, when none is held out) are said to serve for calibration too.
        """
        text = f"training on {plural(len(self.train), 'image')}"
        if self.held_out is None:
            return text + (", none held out (the thresholds are calibrated on the training images)"
                           if calibrate else ", none held out")
        return text + f", {len(self.held_out)} held out for validation" + (" and calibration" if calibrate else "")

    @property
    def warning(self) -> str | None:
        """Says why fewer images are held out than ``val_fraction`` asks, or which classes the
        split of a checkpoint without a split rule leaves untrained; None when neither."""
        if self.left_untrained:
            names = ", ".join(repr(c) for c in self.left_untrained)
            return (f"the run goes on holding out the images its checkpoint's version held out (it records no "
                    f"split rule: the plain random split), among them the only image(s) of class(es) {names}, "
                    f"which the model therefore does not learn; start a new run to train on them")
        held = 0 if self.held_out is None else len(self.held_out)
        if held >= self.wanted:
            return None
        names = first_names(map(repr, self.single_image_classes), shown=5)
        asked = f"val_fraction asks for {self.wanted}"
        reason = (f"holding out {'another' if held else 'an'} image would leave one of its classes without a "
                  f"training image, so the model would not learn it (class(es) with a single image: {names})")
        if held == 0:
            return (f"no image is held out for validation ({asked}): {reason}; the thresholds are calibrated on "
                    f"the training images. Add images of these classes to validate on held-out ones")
        return f"only {held} image(s) held out for validation ({asked}): {reason}"


def training_split(dataset: LabeledImageDataset, val_fraction: float = 0.2, seed: int = 0, *,
                   split_rule: int | None = SPLIT_RULE) -> TrainingSplit:
    """The split :func:`train` makes: ``dataset.split(val_fraction, seed=seed, stratify=True)``, or
    every image trains when ``val_fraction`` is 0.

    The held-out images are chosen by class (their image-level labels): each class with at
    least two images has one held out while their number allows, then each class about its
    share, so that its validation AP is defined (a random split of 4 'round' and 4 'long'
    images held out 2 'round' ones). The same ``val_fraction`` and ``seed`` give the same
    split; ``calibrate --held-out`` (:func:`checkpoint_held_out`) makes it again.

    An image is never held out when that leaves one of its classes without a training image:
    fewer images are then held out, or none (``held_out`` is None, as with ``val_fraction`` 0,
    and the thresholds are calibrated on the training images), and ``TrainingSplit.warning``
    says so.

    ``split_rule=None`` makes the split of a checkpoint that records no ``split_rule`` (one
    written before `SPLIT_RULE`), which :func:`train` resumes on its own images: the plain random
    split, ``dataset.split(val_fraction, seed=seed, keep_every_class=False)``, which may hold
    out the only image of a class (``TrainingSplit.left_untrained``, and ``warning``).

    Parameters
    ----------
    dataset : LabeledImageDataset
        The images to split.
    val_fraction : float
        The share of images to hold out, in [0, 1); 0 holds none out.
    seed : int
        Seed of the random split.
    split_rule : int or None
        `SPLIT_RULE` (this version's rule), 2 (the random split of a checkpoint of before
        `SPLIT_RULE` 3, which never held out the only image of a class) or None (the plain random
        split); other values raise ``ValueError``.
    """
    val_fraction = check.finite_float("val_fraction", val_fraction, low=0, high=1, high_open=True)
    if split_rule not in SPLIT_RULES:
        raise ValueError(f"split_rule: expected {SPLIT_RULE} (this version's), 2 or None (a checkpoint's from "
                         f"before it), got {split_rule!r}")
    if val_fraction == 0:
        return TrainingSplit(dataset, None, seed=seed, split_rule=split_rule)
    if split_rule is None and len(dataset) > 1:
        train_set, held_out = dataset.split(val_fraction, seed=seed, keep_every_class=False)
        return TrainingSplit(train_set, held_out, len(held_out), [], val_fraction, seed, None,
                             dataset.untrained_classes(train_set))
    if len(dataset) < 2:  # a single image is the only one of its classes: it trains
        train_set, held_out, wanted = dataset, dataset.subset([]), 1
    else:
        train_set, held_out = dataset.split(val_fraction, seed=seed, stratify=split_rule == SPLIT_RULE)
        wanted = dataset.held_out_size(val_fraction)
    single = []
    if len(held_out) < wanted:
        single = [c for c, n in zip(train_set.class_names, train_set.labels.sum(0)) if n == 1]
    return TrainingSplit(train_set, held_out if len(held_out) else None, wanted, single, val_fraction, seed,
                         split_rule)


def validation_summary(val_ap: dict[str, float]) -> str:
    """An epoch's validation AP in words (the command line's epoch line, the Train widget's status).

    ``"validation mAP 62.5% (2 classes)"``, over the classes whose AP is defined; when none is
    (the held-out images show each class on all of them or on none, e.g. a single held-out
    image), says that the mAP is not defined rather than a mean of nothing, or of APs of 1.

    Parameters
    ----------
    val_ap : dict of str to float
        Each class's validation AP (NaN where it is not defined).
    """
    defined = [v for v in val_ap.values() if v == v]
    if not defined:
        return "validation mAP not defined (each class is on every held-out image or on none)"
    return f"validation mAP {100 * sum(defined) / len(defined):.1f}% ({plural(len(defined), 'class')})"


def no_negative_warning(dataset: LabeledImageDataset, *, calibrating: bool = False,
                        held_out: bool = False) -> str | None:
    """A warning naming the classes that every image of ``dataset`` shows, or None.

    The loss learns a class from the images that show it against those that do not: a
    class every image shows (a dataset of one class folder, say) has nothing to be told
    apart from, so its score says nothing, its validation AP is not defined (see
    :func:`train`) and its calibrated thresholds are not tested against an image without it.
    ``calibrating=True`` words it for `napari_prm.peaks.calibrate_model` on ``dataset``: no
    peak of those classes can be wrong there, so the thresholds come out at their lowest.

    Parameters
    ----------
    dataset : LabeledImageDataset
        The images the model is trained or calibrated on.
    calibrating : bool
        Word the warning for calibration rather than training.
    held_out : bool
        ``dataset`` is the share ``train`` held out of its dataset (``calibrate --held-out``):
        the warning is about those images, not every image of ``dataset.source`` (which it
        named, though other images there may lack the classes).
    """
    if len(dataset) == 0:
        return None
    every = [c for c, n in zip(dataset.class_names, dataset.labels.sum(0)) if n == len(dataset)]
    if not every:
        return None
    names = first_names(map(repr, every), shown=5)
    where = dataset.source or "the dataset"
    which = (f"every held-out image of {where} ({plural(len(dataset), 'image')} held out by train) shows "
             f"class(es) {names}" if held_out else f"every image of {where} shows class(es) {names}")
    if calibrating:
        return (f"{which}: no peak of theirs can be wrong on these images, so their thresholds are chosen "
                "as low as they go (every peak kept). Calibrate on "
                + ("every image (not only the held-out ones) or on other " if held_out else "")
                + "images that include some without them")
    return (f"{which}: the model has no image without them to learn what sets them apart, so their scores "
            "and peaks mean little. Add images without them (another class folder, or CSV rows with empty "
            "labels, 'x.png,')")


def trained_held_out_warning(state: dict | None, split: TrainingSplit, checkpoint) -> str | None:
    """A warning when a resumed run's split holds out images that its checkpoint's epochs trained on.

    A run is resumed on its dataset as it is now: images added or removed since it started
    give another split (:func:`training_split`), which may hold out images the finished epochs
    learnt, so that their validation AP and calibrated thresholds are optimistic.

    Parameters
    ----------
    state : dict or None
        The checkpoint's training state (``extra[TRAINING_STATE_KEY]``); None (a new run), or one
        that records no training images, gives None.
    split : TrainingSplit
        The resumed run's split.
    checkpoint : path
        Named in the warning.
    """
    if not state or split.held_out is None or not isinstance(state.get("images"), torch.Tensor):
        return None
    paths = split.held_out.image_paths
    seen = [p for p, was in zip(paths, trained_images({TRAINING_STATE_KEY: state}, paths)) if was]
    if not seen:
        return None
    return (f"{len(seen)} of the {plural(len(paths), 'held-out image')} trained the {state.get('epoch', 0)} "
            f"finished epoch(s) of {checkpoint} (the dataset changed since the run started, so it is split anew; "
            f"e.g. {seen[0]}): their validation AP and calibrated thresholds are optimistic. Start a new run on "
            "the dataset as it is now, or calibrate on images the model has not seen ('napari-prm calibrate')")


def split_warnings(dataset: LabeledImageDataset, split: TrainingSplit, state: dict | None = None,
                   checkpoint=None) -> list[str]:
    """What :func:`train` warns of before its first epoch (``train(warn=...)``, and the
    ``TrainResult.warnings`` but the calibration's): ``split.warning``,
    :func:`no_negative_warning` of ``dataset`` and, for a resumed run (its checkpoint's
    training ``state`` and path), :func:`trained_held_out_warning`.

    Parameters
    ----------
    dataset : LabeledImageDataset
        The whole dataset.
    split : TrainingSplit
        Its split (`training_split`).
    state : dict, optional
        A resumed checkpoint's training state (``extra[TRAINING_STATE_KEY]``); None for a new run.
    checkpoint : path-like, optional
        The resumed checkpoint's path, named in the warning.
    """
    return [w for w in (split.warning, no_negative_warning(dataset), trained_held_out_warning(state, split, checkpoint))
            if w]


def checkpoint_held_out(dataset: LabeledImageDataset, state: dict | None) -> TrainingSplit:
    """The split of ``dataset`` that the run whose training state is ``state`` (a checkpoint's
    ``extra[TRAINING_STATE_KEY]``) made: the same split again, from its ``val_fraction``, ``seed``
    and ``split_rule``, as ``train(resume=)`` makes it. A checkpoint without ``split_rule`` (from
    before the rule) made the plain random split (``training_split(..., split_rule=None)``), which
    may have held out the only image of a class (``TrainingSplit.left_untrained``).

    Parameters
    ----------
    dataset : LabeledImageDataset
        The dataset the run was trained on.
    state : dict or None
        The checkpoint's training state; None is read as an empty one (and raises).

    Returns
    -------
    TrainingSplit
        Its ``held_out`` holds the images the run held out (never None).

    Raises
    ------
    ValueError
        When the run held none out (``val_fraction`` 0, or every image the only one of a
        class), or records a split rule this version does not know.
    """
    state = state or {}
    config = state.get("config") or {}
    fraction = float(config.get("val_fraction") or 0)
    seed = int(config.get("seed", 0))
    if not fraction:
        raise ValueError("records no held-out share (it was not trained by 'train' with a val_fraction above 0)")
    rule = state.get("split_rule")
    if rule not in SPLIT_RULES:
        raise ValueError(f"records split rule {rule!r}, which this version does not know (its own is {SPLIT_RULE}): "
                         f"it was written by a later version")
    split = training_split(dataset, fraction, seed, split_rule=rule)
    if split.held_out is None:
        raise ValueError("held no image out: each image is the only one of one of its classes, and 'train' "
                         "holds out no such image")
    return split


def recipe_conflicts(config: dict, asked: dict) -> list[tuple[str, Any, Any]]:
    """The values of ``asked`` that differ from a run's recipe ``config`` (a checkpoint's
    ``extra[TRAINING_STATE_KEY]["config"]``): ``(name, asked, the run's)`` for each.

    ``train(resume=)`` goes on with its checkpoint's recipe whatever else it is given; the
    command line and the Train widget refuse a resume that asks for another, naming these.
    Keys that ``config`` lacks are not compared; sequences compare as lists.

    Parameters
    ----------
    config : dict
        The run's recipe.
    asked : dict
        The values asked for now, by recipe key.
    """
    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    return [(name, value, config[name]) for name, value in asked.items()
            if name in config and plain(value) != plain(config[name])]


@dataclass
class UnfinishedRun:
    """A checkpoint of :func:`train` whose run stopped before the epochs it was started for
    (cancelled, interrupted): ``train(resume=path)`` continues it (see :func:`unfinished_run`).

    Attributes
    ----------
    path : Path
    epochs_done : int
        The epochs finished and saved.
    epochs : int
        The total the run was started for (more than ``epochs_done``).
    config : dict
        Its recipe (:func:`recipe_conflicts` compares another with it).
    split_rule : int or None
        The rule of its split (`SPLIT_RULE`; None from before the rule): ``training_split(dataset,
        config["val_fraction"], config["seed"], split_rule=split_rule)`` is the split it goes on with.
    backbone : str or None
        The backbone of its model (the checkpoint records no more of the base it started from:
        a backbone's ImageNet weights, a built-in model or another checkpoint); None: not known.
    channels : list of int or None
        The image channels it trains on (``settings["channels"]``), which a resume must read
        too; None: the images as they are.
    base : str or None
        The base it started from, as its recipe records it (`recorded_base`: a backbone or
        built-in model's name, or a checkpoint file's path); None for a checkpoint from before
        the recipe recorded it. A resume asking for another (:func:`same_base`) is refused.
    """

    path: Path
    epochs_done: int
    epochs: int
    config: dict
    split_rule: int | None = SPLIT_RULE
    backbone: str | None = None
    channels: list[int] | None = None
    base: str | None = None


def unfinished_run(path: str | os.PathLike, dataset: LabeledImageDataset) -> UnfinishedRun | None:
    """The unfinished run of ``dataset`` saved in ``path``, or None.

    None when ``path`` is not a readable checkpoint of :func:`train`, when its run finished
    its epochs, or when it is a run of another dataset: other classes, or none of
    ``dataset``'s images among those it trained on (a checkpoint that records no training
    images is judged by its classes alone).

    Parameters
    ----------
    path : path-like
        A checkpoint file (a missing file gives None).
    dataset : LabeledImageDataset
        The dataset the run should be of.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        model, extra = load_checkpoint(path)
        state = extra.get(TRAINING_STATE_KEY)
        config, done, _ = _training_state(path, state)
    except (ValueError, OSError, TypeError, AttributeError):
        return None
    if done >= config["epochs"] or list(model.class_names) != list(dataset.class_names):
        return None
    trained = trained_images(extra, dataset.image_paths)
    if trained is not None and not any(trained):
        return None
    return UnfinishedRun(path, done, config["epochs"], config, state.get("split_rule"), model.backbone,
                         model.settings.get("channels"), recorded_base(config, path))


@dataclass(eq=False)
class CalibrationImages:
    """The images to calibrate a checkpoint on (:func:`calibration_images`).

    Attributes
    ----------
    dataset : LabeledImageDataset
        The images chosen: the share ``train`` held out, or every image given.
    held_out : bool
        Whether they are the share ``train`` held out of this checkpoint's run.
    trained : int
        How many of ``dataset``'s images trained the model (by path; 0 when the checkpoint
        does not record its training images): their thresholds are optimistic.
    left_untrained : list of str
        The classes whose only image a checkpoint without a split rule held out (see
        `TrainingSplit.left_untrained`): the model was not trained on them.
    """

    dataset: LabeledImageDataset
    held_out: bool = False
    trained: int = 0
    left_untrained: list[str] = field(default_factory=list)


def calibration_images(dataset: LabeledImageDataset, extra: dict | None, *,
                       held_out: bool | None = None) -> CalibrationImages:
    """The images of ``dataset`` to calibrate a checkpoint on, as ``napari-prm calibrate`` chooses them.

    Parameters
    ----------
    dataset : LabeledImageDataset
        Labelled with the model's classes (``dataset.with_classes(model.class_names)``).
    extra : dict or None
        The checkpoint's extra dict (`napari_prm.model.load_checkpoint`'s second value).
    held_out : bool or None
        True: the share ``train`` held out of this checkpoint's run (:func:`checkpoint_held_out`;
        the command line's ``--held-out``). False: every image. None (the Train widget): the
        held-out share when the run trained on some of ``dataset``'s images and held some out,
        else every image (a model not trained on them, or a run that held none out).

    Raises
    ------
    ValueError
        With ``held_out=True``, from :func:`checkpoint_held_out` (no image held out, an unknown
        split rule); the message starts with what the checkpoint records.
    """
    trained = trained_images(extra or {}, dataset.image_paths) or []
    state = (extra or {}).get(TRAINING_STATE_KEY)
    split = None
    if held_out is None:
        held_out = False
        if any(trained):
            try:
                split = checkpoint_held_out(dataset, state)
                held_out = True
            except ValueError:
                pass
    if not held_out:
        return CalibrationImages(dataset, False, sum(trained))
    if split is None:
        split = checkpoint_held_out(dataset, state)
    kept = trained_images(extra or {}, split.held_out.image_paths) or []
    return CalibrationImages(split.held_out, True, sum(kept), list(split.left_untrained))


@dataclass(eq=False)
class CheckpointCalibration:
    """What :func:`calibrate_checkpoint` did.

    Attributes
    ----------
    checkpoint : Path
        The file written.
    calibration : napari_prm.peaks.Calibration
        The thresholds chosen without test-time augmentation (the model's ``class_threshold``
        and ``peak_threshold`` settings, with ``settings["calibration"]``).
    tta_calibration : napari_prm.peaks.Calibration or None
        Those chosen with it (``settings["tta_calibration"]``); None with ``tta=False``.
    held_out : bool
        Whether the images calibrated on were the share ``train`` held out of the checkpoint's
        run (see :func:`calibration_images`); stored as ``settings["calibration"]["held_out"]``.
    notes : list of str
        What to know of the images chosen: some trained the model (optimistic thresholds), or
        a checkpoint from before the split rule held out a class's only image; and, with
        ``tta=False``, that the checkpoint's thresholds for test-time augmentation, if any, are
        an earlier calibration's (kept, not chosen on these images).
    warnings : list of str
        Classes every image shows (`no_negative_warning`), then the calibrations' own
        (`napari_prm.peaks.Calibration.warning`; the one with test-time augmentation when it differs).
    """

    checkpoint: Path
    calibration: Calibration
    tta_calibration: Calibration | None
    held_out: bool
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def calibrate_checkpoint(model: str | os.PathLike, dataset: LabeledImageDataset,
                         out: str | os.PathLike | None = None, *, held_out: bool | None = None, tta: bool = True,
                         device: str | torch.device | None = None,
                         progress: Callable[[bool, int, int], None] | None = None, cancel=None,
                         report: Callable[[str, str], None] | None = None,
                         input_size: int | Sequence[int] | None = None,
                         allow_other_classes: bool = False) -> CheckpointCalibration:
    """Choose a checkpoint's class and peak thresholds on ``dataset`` and write the calibrated model.

    What ``napari-prm calibrate`` and the Train widget's *Calibrate* do: the images are chosen
    by :func:`calibration_images`, the thresholds by `napari_prm.peaks.calibrate_model` without
    and (``tta``) with test-time augmentation; they are stored in the model's settings (with
    ``settings["calibration"]["held_out"]``) and the model, with the checkpoint's training
    state, is written to ``out``.

    Parameters
    ----------
    model : path or str
        A checkpoint file, or the name of a built-in model (``"imagenet-voc"``, see
        `napari_prm.model.load_model`), which needs ``out``. A built-in name means the
        built-in model even when a file of that name lies in the current folder: give such a
        file as a path (``"./imagenet-voc"``, a `pathlib.Path`;
        `napari_prm.model.is_builtin_name`).
    dataset : LabeledImageDataset
        Images with image-level labels of every class of the model (others are dropped). Without
        ``channels`` of its own, its images are read with those the model records.
    out : path, optional
        The checkpoint to write (``.pt``, ``.pth`` or ``.safetensors``; missing folders are
        made); default: ``model`` itself, updated in place.
    held_out : bool or None
        Which images, as :func:`calibration_images` takes it: True the share ``train`` held out
        of the checkpoint's run, False every image, None (default) the held-out share when the
        run trained on some of ``dataset``'s images and held some out, else every image.
    tta : bool
        Also calibrate the thresholds used with test-time augmentation.
    device : str or torch.device, optional
        See `napari_prm.model.resolve_device` (None: the first available).
    progress : callable, optional
        ``progress(tta, done, total)`` after each image, ``tta`` False for the first pass and
        True for the one with test-time augmentation.
    cancel : callable or threading.Event, optional
        Checked after each image (see :func:`is_cancelled`); when it says stop, RuntimeError
        is raised and nothing is written.
    report : callable, optional
        ``report(kind, text)``, ``kind`` ``"note"`` or ``"warning"``, for each of the outcome's
        notes and warnings as soon as it is known: the notes and `no_negative_warning` before
        any image runs, the calibrations' warnings after.
    input_size : (int, int) or int, optional
        Calibrate at this network input ``(height, width)`` and write the model with it as its
        input size, so that ``predict`` runs at the size its thresholds were chosen at (a larger
        input gives small, crowded objects peaks of their own; see ``predict(input_size=)``).
        Default: the model's own size.
    allow_other_classes : bool
        Calibrate on images labelled with classes the model does not have, as images that show
        none of its classes (those labels dropped). Default: such a label in a label CSV or a
        folder per class (a typo such as ``dgo``) is an error naming it and where (a CSV's
        ``file:line``): counted as a negative, its image would bias the thresholds without a
        word. A COCO JSON's or PASCAL VOC's other categories are declared, not typed: their
        images are negatives either way. The command line's ``--allow-other-classes``.

    Returns
    -------
    CheckpointCalibration

    Raises
    ------
    ValueError
        A built-in ``model`` without ``out``, an unreadable checkpoint, a bad ``out`` or
        ``device``, a dataset without the model's classes, an image labelled with a class the model
        does not have (unless ``allow_other_classes``), no held-out share (``held_out=True``,
        see :func:`checkpoint_held_out`), or images that cannot calibrate (none shows a class).
    RuntimeError
        When ``cancel`` said stop.
    """
    name = str(model)
    builtin = is_builtin_name(model)
    if out is None:
        if builtin:
            the_file = f" (the file of that name here is './{name}' or a Path)" if Path(name).is_file() else ""
            raise ValueError(f"{name} is a built-in model{the_file}: give out, the new checkpoint to write the "
                             "calibrated model to")
        out = model
    out = checkpoint_file("out", out)
    input_size = check.input_size("input_size", input_size, optional=True)
    device = resolve_device(device)
    model, extra = (load_model(name), {}) if builtin else load_checkpoint(model)
    model.to(device)
    source = dataset.source or "the dataset"
    try:
        relabelled = dataset.with_classes(model.class_names)
    except ValueError as error:
        raise ValueError(f"the dataset does not have the model's classes: {error}") from None
    # a COCO JSON's categories and VOC's classes are declared by the file, not typed: other ones are
    # images of none of the model's classes, as train --classes takes them; typed labels are checked
    if not allow_other_classes and dataset.coco is None and dataset.voc is None:
        try:
            dataset.check_labels_known(model.class_names)
        except ValueError as error:
            said = (f"{error}. Those are the classes of {name}: an image labelled with another would be calibrated "
                    "on as showing none of them; correct the labels, or ")
            raise ValueError(Worded(
                said + "pass allow_other_classes=True to calibrate on such images as negatives",
                said + "pass --allow-other-classes to calibrate on such images as negatives",
                said + "tick 'images of other classes are negatives' to calibrate on such images as negatives",
            )) from None
    dataset = relabelled
    dataset = dataset.with_model_channels(model.settings.get("channels"))  # as predict reads them
    try:
        chosen = calibration_images(dataset, extra, held_out=held_out)
    except ValueError as error:
        raise ValueError(f"no held-out images of {source} to calibrate on: {name} {error}; calibrate on images it "
                         "was not trained on instead") from None
    check_readable(chosen.dataset, done="nothing was calibrated")
    notes = _calibration_notes(name, extra, chosen)
    if input_size is not None and input_size != model.input_size:
        was = "each image's own size" if model.input_size is None else "×".join(map(str, model.input_size))
        notes.append(f"{name} is calibrated at, and written to run at, {input_size[0]}×{input_size[1]} (it ran at "
                     f"{was}): predict, evaluate and the plugin use that size with these thresholds")
        model.input_size = input_size
    earlier = model.settings.get(TTA_CALIBRATION)
    if not tta and isinstance(earlier, Mapping):  # not replaced: say whose they are
        images = (earlier.get("calibration") or {}).get("images")
        notes.append(f"{name}'s thresholds for test-time augmentation are kept from an earlier calibration"
                     + (f" (on {plural(int(images), 'image')})" if images else "")
                     + ", not chosen on these images: calibrate with test-time augmentation too (without "
                     "--no-tta, or tta=True) to choose them here")
    warnings = [w for w in [no_negative_warning(chosen.dataset, calibrating=True, held_out=chosen.held_out)] if w]
    if report is not None:
        for kind, texts in (("note", notes), ("warning", warnings)):
            for text in texts:
                report(kind, text)
    results = {}
    for with_tta in (False, True) if tta else (False,):
        try:
            results[with_tta] = calibrate_model(
                model, chosen.dataset, tta=with_tta, cancel=None if cancel is None else lambda: is_cancelled(cancel),
                progress=None if progress is None else functools.partial(progress, with_tta))
        except ValueError as error:
            raise ValueError(f"cannot calibrate on {source}: {error}") from error
    _store_calibration(model, results[False], results.get(True), chosen.held_out)
    _write_model(model, out, extra=None if is_safetensors(out) else extra)
    after = [w for w in [results[False].warning] if w]
    if True in results and results[True].warning and results[True].warning != results[False].warning:
        after.append(worded("with test-time augmentation, {}", results[True].warning))
    if report is not None:
        for text in after:
            report("warning", text)
    return CheckpointCalibration(out, results[False], results.get(True), chosen.held_out, notes,
                                 warnings + after)


def _calibration_notes(name: str, extra: dict, chosen: CalibrationImages) -> list[str]:
    """What :func:`calibrate_checkpoint` notes of the images ``chosen`` for the checkpoint ``name``
    (whose extra dict is ``extra``): a class the checkpoint's old split left untrained, and images
    that trained the model (their thresholds are optimistic), with what to calibrate on instead."""
    notes = []
    if chosen.left_untrained:
        names = ", ".join(repr(c) for c in chosen.left_untrained)
        notes.append(f"{name} records no split rule (a checkpoint from before it): the images it held out are "
                     f"those of the plain random split, among them the only image(s) of class(es) {names}, which "
                     "it was therefore not trained on")
    count = chosen.trained
    if not count:
        return notes
    state = (extra or {}).get(TRAINING_STATE_KEY)
    if chosen.held_out:  # held out by the split made again on the dataset as it is now
        instead = ("its run did not hold them out (the dataset given is not the one 'train' split: images were added "
                   "or removed since, or it is another view of them, e.g. without --voc, voc_view in Python): "
                   "calibrate on the dataset 'train' had, or on images it was not trained on")
    else:
        try:
            checkpoint_held_out(chosen.dataset, state)
            instead = Worded("held_out=True (the command line's --held-out) calibrates on the images 'train' "
                             "held out", "--held-out calibrates on the images 'train' held out")
        except ValueError:
            fraction = ((state or {}).get("config") or {}).get("val_fraction") or 0
            instead = ("" if fraction else "it held none out: ") + "calibrate on images it was not trained on"
    said = (f"{count} of the {plural(len(chosen.dataset), 'image')} calibrated on "
            f"{'was' if count == 1 else 'were'} used to train {name}: thresholds chosen on images a model "
            "has learnt are optimistic (too low for new images); ")
    # the command line (which prints `for_command_line`) says --held-out only
    notes.append(Worded(said + str(instead), said + for_command_line(instead)))
    return notes


def _store_calibration(model: PRMModel, calibration: Calibration, with_tta: Calibration | None,
                       held_out: bool) -> None:
    """Store calibrated thresholds in ``model.settings``: ``calibration``'s, whether they were chosen
    on held-out images, and ``with_tta``'s under `napari_prm.peaks.TTA_CALIBRATION` (when given)."""
    model.settings.update(calibration.as_settings())
    model.settings["calibration"]["held_out"] = bool(held_out)
    if with_tta is not None:
        model.settings[TTA_CALIBRATION] = with_tta.as_settings()


def kept_classes(known: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """The classes of ``class_names`` whose classifier rows fine-tuning a model of classes
    ``known`` keeps (:func:`train` with ``model=``): those of the same name, a VOC class by
    either spelling too (``motorbike`` keeps ``motorcycle``'s row: `napari_prm.data.class_in`), in
    ``class_names``' order.

    Parameters
    ----------
    known : sequence of str
        The classes of the model being fine-tuned.
    class_names : sequence of str
        The classes of the new model.
    """
    known = set(known)
    return [name for name in class_names if class_in(name, known) is not None]


def starts_new_classifier(model: PRMModel | str | os.PathLike | None) -> bool:
    """Whether :func:`train` with ``model=`` builds a new model (None or a backbone name, even when
    a file of that name lies in the current folder: `napari_prm.model.is_builtin_name`) rather than
    fine-tuning one (a checkpoint, a PRMModel or a built-in model).

    Parameters
    ----------
    model : PRMModel, str, path-like or None
        What is given as :func:`train`'s ``model``.
    """
    return model is None or is_builtin_name(model, BACKBONES)


def builtin_start_note(class_names: Sequence[str], model: PRMModel | str | os.PathLike | None = None, *,
                       option: str = "--model {name}") -> str | None:
    """A note for a run that starts a new classifier on ``class_names``: the built-in label
    space that names the most of them, whose ImageNet classifier rows for them fine-tuning
    keeps (:func:`kept_classes`), so that they need not be learnt from scratch.

    Parameters
    ----------
    class_names : sequence of str
        The dataset's classes.
    model : PRMModel, str, path or None
        :func:`train`'s ``model``: no note unless it starts a new classifier
        (:func:`starts_new_classifier`; a resumed run is the caller's to leave out).
    option : str
        How to ask for a built-in model, ``{name}`` standing for its name (the command
        line's ``--model {name}``; the Train widget names its base-model choice).

    Returns
    -------
    str or None
        The note, naming the space, how many classes and which (the first five), and the
        option; None when ``model`` fine-tunes one, or when no built-in space names a class. On equal counts the smaller
        space (earlier in ``imagenet-voc``, ``imagenet-coco``, ``imagenet``) is named:
        the rows kept are the same.
    """
    if not starts_new_classifier(model):
        return None
    best_name, best = None, []
    for name in ("imagenet-voc", "imagenet-coco", "imagenet"):
        kept = kept_classes(builtin_class_names(name), class_names)
        if len(kept) > len(best):
            best_name, best = name, kept
    if not best:
        return None
    names = first_names(map(repr, best), shown=5)
    every = len(best) == len(class_names)
    which = (f"the dataset's {plural(len(class_names), 'class')}" if every else
             f"{len(best)} of the dataset's {plural(len(class_names), 'class')}")
    verb, them = ("is a class", "it") if len(best) == 1 else ("are classes", "them")
    return (f"{which} ({names}) {verb} of the built-in model {best_name!r} (EfficientNet-Lite0): "
            f"{option.format(name=best_name)} starts from its ImageNet classifier rows for {them}"
            f"{'' if every else ' (the others start new)'}, where a new classifier learns every class from "
            f"scratch; that trained to a far higher mAP^r on coco128 (docs/accuracy.md)")


def _adapt_classes(model: PRMModel, class_names: list[str]) -> PRMModel:
    """Give ``model`` a classifier for ``class_names``, keeping the rows of classes it already knows."""
    if list(model.class_names) == class_names:
        return model
    old = model.network.fcn.classifier
    new = nn.Conv2d(old.in_channels, len(class_names), kernel_size=1, bias=True).to(old.weight.device)
    nn.init.normal_(new.weight, std=0.01)
    nn.init.zeros_(new.bias)
    kept = set(kept_classes(model.class_names, class_names))
    with torch.no_grad():
        for row, name in enumerate(class_names):
            if name in kept:
                source = model.class_names.index(class_in(name, model.class_names))
                new.weight[row] = old.weight[source]
                new.bias[row] = old.bias[source]
    model.network.fcn.classifier = new
    model.class_names = list(class_names)
    return model


#: How a run's recipe marks a base stored relative to its checkpoint's folder (`run_base`).
RELATIVE_BASE_PREFIX = "./"


def run_base(model, model_name: str | os.PathLike | None = None,
             checkpoint: str | os.PathLike | None = None) -> str | None:
    """What a run started from, as :func:`train` records it in its recipe (``base``).

    A backbone or built-in model name as it is; a checkpoint file in ``checkpoint``'s folder (or
    below it) relative to that folder, as ``"./base.pt"``, so that the run folder can be moved
    or shared (`recorded_base` reads it back); another file as its absolute path; a PRMModel as
    ``model_name`` (so), None without it.

    Parameters
    ----------
    model : PRMModel, str or path
        ``train``'s ``model`` (its ``backbone`` when ``model`` is None).
    model_name : str, path or None
        What a PRMModel ``model`` was read from.
    checkpoint : path, optional
        The run's checkpoint (``train``'s ``out``); None: a file's absolute path.
    """
    if isinstance(model, PRMModel):
        if model_name is None:
            return None
        model = model_name
    if isinstance(model, str) and (is_builtin_name(model) or is_builtin_name(model, BACKBONES)):
        return model
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(os.path.normpath(Path(model).absolute()))
    if checkpoint is not None:
        folder = Path(os.path.normpath(Path(checkpoint).absolute().parent))
        if path.is_relative_to(folder):
            return RELATIVE_BASE_PREFIX + path.relative_to(folder).as_posix()
    return str(path)


def recorded_base(config: Mapping, checkpoint: str | os.PathLike) -> str | None:
    """The base a run started from, as the recipe ``config`` of its ``checkpoint`` records it
    (``config["base"]``, `run_base`): a backbone or built-in model's name, or a checkpoint file's
    absolute path (one recorded relative to the checkpoint's folder, ``"./base.pt"``, found in
    the folder the checkpoint is in now); None when not recorded (a checkpoint from before) or
    not a string. The file need not exist (`missing_base`).

    Parameters
    ----------
    config : mapping
        The run's recipe (the training state's ``"config"``).
    checkpoint : path
        The checkpoint that holds it.
    """
    base = (config or {}).get("base")
    if not isinstance(base, str) or not base:
        return None
    if base.startswith(RELATIVE_BASE_PREFIX):
        return os.path.normpath(Path(checkpoint).absolute().parent / base)
    return base


def missing_base(base: str | None) -> bool:
    """Whether ``base`` (`recorded_base`) names a checkpoint file that is not there (moved, or
    not shared with the run folder); False for a name or None.

    Parameters
    ----------
    base : str or None
        A run's recorded base, as `recorded_base` returns it.
    """
    if base is None or is_builtin_name(base) or is_builtin_name(base, BACKBONES):
        return False
    return not Path(base).is_file()


def same_base(asked, recorded: str) -> bool:
    """Whether ``asked`` names the base a run recorded (`run_base`): the same name, or the same file.

    Parameters
    ----------
    asked : str or path
        A ``model`` (the command line's ``--model``) given to a resumed run.
    recorded : str
        The run's recipe's ``base``.
    """
    named = run_base(asked)
    if named is None:
        return False
    if named == recorded:
        return True
    return Path(recorded).is_absolute() and Path(named).is_absolute() and check.same_file(named, recorded)


def _start_model(base, class_names: list[str], input_size, seed: int) -> PRMModel:
    torch.manual_seed(seed)  # the new classifier's initial weights
    if isinstance(base, PRMModel):
        model = copy.deepcopy(base)
    elif is_builtin_name(base):  # a name, even with a file of that name here (./imagenet-voc is the file)
        model = load_model(base)  # fine-tune the built-in ImageNet model: its classifier rows are kept
    elif is_builtin_name(base, BACKBONES):
        return build_model(base, class_names, pretrained=True, input_size=tuple(input_size or DEFAULT_INPUT_SIZE))
    elif isinstance(base, (str, os.PathLike)) and (Path(base).suffix in CHECKPOINT_SUFFIXES
                                                   or Path(base).is_file()):
        model, _ = load_checkpoint(base)
    elif isinstance(base, str):
        raise ValueError(f"model: expected a checkpoint file (.pt, .pth or .safetensors), a built-in model "
                         f"({', '.join(BUILTIN_MODELS)}) or a backbone ({', '.join(sorted(BACKBONES))}); "
                         f"got {base!r}")
    else:
        raise ValueError(f"model must be a PRMModel, a built-in model or backbone name or a checkpoint path; "
                         f"got {type(base).__name__}")
    model = _adapt_classes(model, class_names)
    # None: the starting model's own size (its thresholds were calibrated at it)
    model.input_size = tuple(int(s) for s in (input_size or model.input_size or DEFAULT_INPUT_SIZE))
    return model


def _optimizer(model: PRMModel, lr: float, backbone_lr_mult: float, momentum: float,
               weight_decay: float) -> torch.optim.SGD:
    backbone = list(model.network.fcn.features.parameters())
    backbone_ids = {id(p) for p in backbone}
    head = [p for p in model.network.parameters() if id(p) not in backbone_ids]
    for parameter in backbone:
        parameter.requires_grad_(backbone_lr_mult > 0)
    groups = [{"params": head, "lr": lr}]
    if backbone_lr_mult > 0:
        groups.insert(0, {"params": backbone, "lr": lr * backbone_lr_mult})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def check_map_size(network: PRMModel | str, input_size, *, name: str = "input_size", device=None) -> None:
    """Refuse an input size at which the class response maps have a single row or column.

    Peaks are local maxima of a map, and a backbone that learns normalises its batches over the
    maps' cells: a map of one cell has no location to point at, and a last batch of one image
    then stops training with an error from BatchNorm. One forward pass of a blank image, in
    eval mode, finds the maps' size: the one place the smallest input a backbone takes is known.

    Parameters
    ----------
    network : PRMModel or str
        The model to train, or the name of a backbone (`BACKBONES`: a new one, without weights,
        on the CPU), so that the command line refuses ``--input-size`` before the dataset is read.
    input_size : (int, int)
        Height and width.
    name : str
        What the message calls the size (``"--input-size"`` on the command line).
    device : torch.device or str, optional
        Where ``network`` (a PRMModel) is.

    Raises
    ------
    ValueError
        The maps would be smaller than 2×2 cells.
    """
    height, width = (int(s) for s in input_size)
    if isinstance(network, str):
        backbone, fcn = network, build_fcn(network, 1, pretrained=False)[0]
        device = "cpu"
    else:
        backbone, fcn = network.backbone, network.network.fcn
    was_training = fcn.training
    fcn.eval()
    try:
        with torch.no_grad():
            crm_shape = tuple(fcn(torch.zeros(1, 3, height, width, device=device)).shape[-2:])
    finally:
        fcn.train(was_training)
    if min(crm_shape) < 2:
        where = "" if name.startswith("--") else " (the command line's --input-size)"
        raise ValueError(f"{name} ({height}, {width}) gives class response maps of {crm_shape[0]}×{crm_shape[1]} "
                         f"cells with the {backbone} backbone: peaks need maps of at least 2×2; use a larger "
                         f"input size{where}")


def _set_train_mode(model: PRMModel, backbone_frozen: bool) -> None:
    model.network.train()
    if backbone_frozen:
        # A frozen backbone keeps its BatchNorm statistics too.
        model.network.fcn.features.eval()


#: Whether a data-loader worker can tell who sent it SIGTERM (`_init_worker`): Linux, not
#: macOS or Windows.
_FILTERS_SIGTERM = hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask")
#: The signals a data-loader worker starts with blocked (`_start_workers`) and then ignores
#: from others than its parent (SIGTERM) or from all (SIGHUP) (`_init_worker`).
_WORKER_SIGNALS = (({signal.SIGTERM} if _FILTERS_SIGTERM else set())
                   | ({signal.SIGHUP} if hasattr(signal, "SIGHUP") and hasattr(signal, "pthread_sigmask") else set()))


def _init_worker(parent: int, worker_id: int) -> None:
    """A data-loader worker's ``worker_init_fn``: quiet when its run stops.

    - SIGTERM from any process but ``parent`` is ignored; the parent's ends the worker quietly,
      as torch's own use of it does (Linux: where ``sigwaitinfo`` tells who sent it).
      ``timeout``, a batch system's time limit and ``systemctl stop`` signal each process of a
      command, the workers too. A worker ended by the signal made torch raise "DataLoader
      worker (pid N) is killed by signal" (or "exited unexpectedly") in the parent wherever it
      was, and ``train`` failed instead of stopping as on Ctrl-C. The parent, stopping, ends its
      workers itself (a killed parent's are ended by torch's watchdog). SIGTERM is blocked from
      the worker's start (`_start_workers` forks it so), and a thread takes each one with its
      sender: one sent before this function ran waits for it instead of ending the worker.
    - SIGHUP (the terminal closed, the ssh connection dropped) is ignored: the command line
      stops on it as on SIGTERM, and ends its workers itself.
    - A batch's hand-over that the parent broke off as it stopped (Ctrl-C, SIGTERM) is not
      reported: multiprocessing's thread that hands the batch's memory over printed a
      ConnectionResetError's (EOFError's) traceback under the run's "interrupted" line.

    Parameters
    ----------
    parent : int
        The process id of the training process (the workers' parent under ``fork``, not under
        ``forkserver``).
    worker_id : int
        torch's number of the worker (unused).
    """
    report = sys.excepthook

    def excepthook(kind, value, traceback) -> None:
        if not issubclass(kind, (ConnectionResetError, BrokenPipeError, EOFError)):
            report(kind, value, traceback)

    sys.excepthook = excepthook  # multiprocessing's resource sharer reports by it
    if getattr(signal, "SIGHUP", None) in _WORKER_SIGNALS:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # drops one sent since the start, blocked till now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    if not _FILTERS_SIGTERM:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # already, where forked by `_start_workers`

    def wait() -> None:
        while True:
            # the parent's SIGTERM; or any, once the parent is gone (killed, SIGKILL: torch's
            # watchdog misses it under forkserver, whose workers' parent is the server)
            received = signal.sigtimedwait({signal.SIGTERM}, 5.0)
            if (received is not None and received.si_pid == parent) or not _alive(parent):
                os._exit(0)

    threading.Thread(target=wait, name="napari-prm SIGTERM", daemon=True).start()


def _data_loader(dataset, **options) -> torch.utils.data.DataLoader:
    """A DataLoader whose worker processes (``num_workers`` > 0) stay quiet as its run stops
    (`_init_worker`); iterate it with `_batches`."""
    if options.get("num_workers"):
        options["worker_init_fn"] = functools.partial(_init_worker, os.getpid())
    return torch.utils.data.DataLoader(dataset, **options)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's
        return True
    return True


def _start_workers(loader):
    """``iter(loader)``, which starts its worker processes, with SIGTERM and SIGHUP
    (`_WORKER_SIGNALS`) blocked in this thread meanwhile: a worker starts with them blocked, so
    one sent to it before its `_init_worker` ran waits for that instead of ending it (one sent
    to this process waits for the end of this call, or goes to another of its threads).

    A forked or spawned worker inherits this thread's mask. Under ``forkserver`` the server
    forks them, so it is started here with the signals blocked (where this process had none
    yet); multiprocessing's resource tracker is started before, as its start unblocks them.
    """
    if not loader.num_workers or not _WORKER_SIGNALS:
        return iter(loader)
    method = (loader.multiprocessing_context or torch.multiprocessing).get_start_method()
    if method != "fork":
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
    try:
        if method == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _batches(loader):
    """The loader's batches; a worker process's ValueError (an unreadable image) comes back
    with its own message, not with the worker's traceback that torch puts in it."""
    iterator = _start_workers(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except ValueError as error:
            text = str(error)
            if "Original Traceback" not in text:
                raise
            last = [line for line in text.splitlines() if line.strip()][-1]
            raise ValueError(last.split(": ", 1)[-1]) from None
        yield batch


def validation_ap(model: PRMModel, dataset: LabeledImageDataset, *,
                  batch_size: int = 8) -> tuple[dict[str, float], float]:
    """Classification AP of ``model`` on ``dataset``, as :func:`train` reports its held-out images.

    The network's class scores of each image at the model's input size (no TTA),
    against the image-level labels, by :func:`napari_prm.evaluate.defined_classification_map`:
    a class every image shows, or none, is left out (NaN).

    Parameters
    ----------
    model : PRMModel
    dataset : LabeledImageDataset
        Relabelled to the model's classes, which must all be among its classes.
    batch_size : int
        Images per forward pass (1 for a model without an input size).

    Returns
    -------
    per_class : dict of str to float
    mean_ap : float
    """
    dataset = dataset.with_classes(model.class_names)
    images = TrainingImages(dataset, model.input_size, model.mean, model.std, hflip=False)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size if model.input_size is not None else 1)
    return _validation_ap(model, loader, model.device)


@torch.no_grad()
def _validation_ap(model: PRMModel, loader, device) -> tuple[dict[str, float], float]:
    model.network.eval()
    scores, labels = [], []
    for images, targets in _batches(loader):
        scores.append(model.network(images.to(device)).float().cpu())
        labels.append(targets)
    mean_ap, per_class = defined_classification_map(torch.cat(scores).numpy(), torch.cat(labels).numpy())
    return dict(zip(model.class_names, per_class.tolist())), mean_ap


def image_keys(paths) -> torch.Tensor:
    """One 64-bit key per image file (a hash of its absolute path), as int64.

    ``train`` stores its training images' keys in the checkpoint (``"images"`` of its
    training state), 8 bytes an image, so that `trained_images` can tell later which
    images of a dataset the model was trained on.

    Parameters
    ----------
    paths : path-like or iterable of path-like
        The image files; one path is one image.
    """
    import hashlib

    keys = [int.from_bytes(hashlib.blake2b(str(Path(p).resolve()).encode("utf-8", "surrogateescape"),
                                           digest_size=8).digest(), "little", signed=True)
            for p in check.path_list(paths)]
    return torch.tensor(keys, dtype=torch.int64)


def trained_images(extra: dict, paths) -> list[bool] | None:
    """Which of ``paths`` the checkpoint's ``train`` run trained on (its held-out images not).

    ``extra`` is `napari_prm.model.load_checkpoint`'s second value. Returns None when the
    checkpoint does not record its training images (not written by ``train``, or by a
    version before they were recorded). Images are known by their absolute path: a moved
    or copied dataset's images count as new.

    Parameters
    ----------
    extra : dict
        The checkpoint's extra content (anything else reads as a checkpoint without a record).
    paths : path-like or iterable of path-like
        The image files to look up; one path is one image.
    """
    state = extra.get(TRAINING_STATE_KEY) if isinstance(extra, dict) else None
    keys = state.get("images") if isinstance(state, dict) else None
    if not isinstance(keys, torch.Tensor):
        return None
    trained = set(keys.tolist())
    return [key in trained for key in image_keys(paths).tolist()]


def _save(model: PRMModel, out: Path, optimizer, epoch: int, history: list[EpochRecord], config: dict,
          split_rule: int | None, images: torch.Tensor) -> Path:
    training = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "history": [vars(record) for record in history],
        "config": config,
        "images": images,  # keys of the training images (image_keys), for trained_images
    }
    if split_rule is not None:
        training["split_rule"] = split_rule
    return _write_model(model, out, extra={TRAINING_STATE_KEY: training})


def _calibrate(model: PRMModel, dataset: LabeledImageDataset, config: dict, progress, cancel, held_out: bool):
    """Calibrate the thresholds on ``dataset`` (held-out images or not) and store them in ``model.settings``."""
    if not dataset.labels.any():
        return None
    total = config["epochs"]

    def report(done: int, count: int) -> None:
        if progress is not None:
            progress(TrainProgress("calibration", total, total, done, count, float("nan"), 0.0))

    try:
        calibration = calibrate_model(model, dataset, progress=report, cancel=lambda: is_cancelled(cancel))
    except RuntimeError:
        return None
    try:  # the thresholds of the opt-in test-time augmentation, whose maps are averages
        with_tta = calibrate_model(model, dataset, tta=True, cancel=lambda: is_cancelled(cancel))
    except RuntimeError:
        with_tta = None
    _store_calibration(model, calibration, with_tta, held_out)
    return calibration


def _recipe(*, epochs, batch_size, lr, backbone_lr_mult, momentum, weight_decay, input_size,
            sub_pixel_locating_factor, hflip, seed, val_fraction, where: str = "") -> dict[str, Any]:
    """The training recipe, every number checked (ValueError names the argument)."""
    return dict(
        epochs=check.positive_int(f"{where}epochs", epochs),
        batch_size=check.positive_int(f"{where}batch_size", batch_size),
        lr=check.finite_float(f"{where}lr", lr, low=0),
        backbone_lr_mult=check.finite_float(f"{where}backbone_lr_mult", backbone_lr_mult, low=0),
        momentum=check.finite_float(f"{where}momentum", momentum, low=0, high=1, high_open=True),
        weight_decay=check.finite_float(f"{where}weight_decay", weight_decay, low=0),
        input_size=list(check.input_size(f"{where}input_size", input_size, square=False)),
        sub_pixel_locating_factor=check.positive_int(f"{where}sub_pixel_locating_factor",
                                                     sub_pixel_locating_factor),
        hflip=bool(hflip),
        seed=check.integer(f"{where}seed", seed, low=0, high=2**32 - 1),
        val_fraction=check.finite_float(f"{where}val_fraction", val_fraction, low=0, high=1,
                                        high_open=True),
    )


def _training_state(path: Path, state) -> tuple[dict[str, Any], int, list[EpochRecord]]:
    """The recipe, finished epochs and history stored in a checkpoint, checked."""
    where = f"checkpoint {path}: training state: "
    try:
        config = _recipe(**{key: state["config"][key] for key in (
            "epochs", "batch_size", "lr", "backbone_lr_mult", "momentum", "weight_decay", "input_size",
            "sub_pixel_locating_factor", "hflip", "seed", "val_fraction")}, where=where)
        # recorded since: what a checkpoint from before lacks is not known
        if "calibrate" in state["config"]:
            config["calibrate"] = check.boolean(f"{where}calibrate", state["config"]["calibrate"])
        if isinstance(state["config"].get("base"), str):
            config["base"] = state["config"]["base"]
        start_epoch = check.integer(f"{where}epoch", state["epoch"], low=0)
        history = [EpochRecord(**record) for record in state["history"]]
        if not isinstance(state["optimizer"], dict):
            raise ValueError(f"{where}optimizer: expected a dict")
    except (KeyError, TypeError) as error:
        raise ValueError(f"{where}incomplete or malformed ({type(error).__name__}: {error})") from None
    return config, start_epoch, history


def check_readable(dataset: LabeledImageDataset, *, done: str = "nothing was trained", shown: int = 10) -> None:
    """Raise ValueError naming every image of ``dataset`` that cannot be read (see
    `LabeledImageDataset.unreadable_images`: headers and ends, no decoding).

    Training, calibration, evaluation and refinement check their images before the first
    one runs: the first unreadable image found on the way stopped them, and an evaluation's
    or a calibration's work on the images before it was lost. Images unreadable for one
    reason are grouped: the reason once, then the first ``shown`` of them and how many more
    (12 two-channel TIFFs repeated a 600-character explanation 12 times).

    Parameters
    ----------
    dataset : LabeledImageDataset
        The images to check.
    done : str
        What the message says of the work, e.g. ``"nothing was calibrated"``.
    shown : int
        How many images of one reason are listed; the others are counted.
    """
    unreadable = dataset.unreadable_reasons()
    if not unreadable:
        return
    them = "it" if len(unreadable) == 1 else "them"
    lines = [f"{plural(len(unreadable), 'image')} of {dataset.source} cannot be read; fix or remove {them} from "
             f"the dataset ({done}):"]
    groups: dict[str, list[str]] = {}
    for name, reason in unreadable:
        groups.setdefault(reason, []).append(name)
    for reason, names in groups.items():
        if len(names) == 1:
            lines.append(f"  {names[0]}: {reason}")
            continue
        lines.append(f"  {len(names)} images: {reason}:")
        lines += [f"    {name}" for name in names[:shown]]
        if len(names) > shown:
            lines.append(f"    ... ({len(names) - shown} more)")
    raise ValueError("\n".join(lines))


def _kept(out: Path, last_good: Path | None, good: str) -> str:
    """What a stopped run leaves: ``good`` when an epoch's checkpoint was written, else ``out``'s state."""
    if last_good is not None:
        return good
    return f"{out} was left as it was" if out.exists() else f"nothing was written to {out}"


def _image_failure(message: str, out: Path, last_good: Path | None, done: int, epoch: int) -> str:
    """An image that failed while training: which, where training stopped, what is kept."""
    kept = _kept(out, last_good, f"{last_good} keeps epoch {done}, intact: fix or remove the image, then resume "
                                 "(resume=True, the command line's --resume) goes on")
    stage = f"in epoch {epoch}" if done < epoch else "after the last epoch (calibrating)"
    return f"{message}; training stopped {stage}: {kept}"


def _check_finite_training(model: PRMModel, out: Path, epoch: int, batch: int | None, loss: float | None,
                           lr: float, last_good: Path | None) -> None:
    """Stop training with a clear message when the loss or the weights stopped being finite.

    Nothing is written then: ``out`` keeps the last good epoch's checkpoint.
    """
    if loss is not None and np.isfinite(loss):
        return
    if loss is None and all(bool(torch.isfinite(p).all()) for p in model.network.parameters()):
        return
    what = f"the loss became {loss} at batch {batch}" if loss is not None else "the weights hold NaN or inf"
    kept = _kept(out, last_good, f"the last good checkpoint {last_good} is kept")
    raise ValueError(f"training diverged in epoch {epoch}: {what} (lr={lr:g}; try a smaller lr, "
                     f"the command line's --lr); {kept}")


def keeps_random_state(function: Callable) -> Callable:
    """Make ``function``, which seeds torch for repeatable runs, leave the caller's torch random
    state as it found it.

    torch's CPU generator is restored on return (and the CUDA devices' generators, when CUDA was
    initialised before the call): ``torch.manual_seed(1); train(...); torch.rand(1)`` draws what
    ``torch.manual_seed(1); torch.rand(1)`` draws, instead of a number fixed by ``train``'s seed.

    Parameters
    ----------
    function : callable
        The function to wrap.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return function(*args, **kwargs)

    return wrapper


def with_gradients(function: Callable) -> Callable:
    """Make ``function``, which trains, record gradients whatever its caller turned off: inside
    ``torch.no_grad()``, ``torch.set_grad_enabled(False)`` or ``torch.inference_mode()`` (a
    notebook's inference block) training failed with "element 0 of tensors does not require
    grad and does not have a grad_fn", as `napari_prm.predict` did not.

    Parameters
    ----------
    function : callable
        The training function (`train`, `napari_prm.refine.refine`).

    Returns
    -------
    callable
        ``function``, run with gradients enabled and outside inference mode.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return function(*args, **kwargs)

    return wrapper


@keeps_random_state
@with_gradients
def train(
    dataset: LabeledImageDataset,
    *,
    model: PRMModel | str | os.PathLike | None = None,
    backbone: str = "efficientnet_lite0",
    out: str | os.PathLike = "prm_model.pt",
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 0.01,
    backbone_lr_mult: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    input_size: Sequence[int] | None = None,
    sub_pixel_locating_factor: int = 8,
    hflip: bool = True,
    device: str | torch.device | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    calibrate: bool | None = None,
    resume: str | os.PathLike | bool | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    cancel: Any = None,
    num_workers: int = 0,
    overwrite: bool = False,
    split: TrainingSplit | None = None,
    check_images: bool = True,
    warn: Callable[[str], None] | None = None,
    model_name: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a PRM model on image-level labels.

    Parameters
    ----------
    dataset : LabeledImageDataset
        Every class needs a positive image. Its class names and order become the model's,
        and its ``channels`` (the image channels read as red, green and blue) are recorded in
        ``model.settings["channels"]``, which `napari_prm.predict` and the command line read
        images with by default. Without channels of its own (None), the run reads those the
        starting ``model`` (or the resumed run) records, as ``train --model`` and the Train
        widget do, else the images as they are; channels of its own that differ from the
        starting model's are used and recorded, with a note in ``TrainResult.notes``. A resumed
        run refuses other channels than its own.
    model : PRMModel, str, path or None
        Where to start: None builds ``backbone`` from ImageNet weights; a
        backbone name does the same for that backbone; a PRMModel, a
        checkpoint path or a built-in model (``"imagenet-voc"``,
        ``"imagenet-coco"``, ``"imagenet"``: EfficientNet-Lite0 with its ImageNet
        classifier rows for those classes) fine-tunes a copy of it. A built-in or
        backbone name means that even when a file of that name lies in the current
        folder: give such a file as a path (``"./imagenet-voc"``, a `pathlib.Path`;
        `napari_prm.model.is_builtin_name`). When its classes differ from the
        dataset's, the classifier is re-initialised for the dataset's
        classes, keeping the weights of classes with the same name. A refinement
        head (``napari_prm.refine``) is kept only with ``backbone_lr_mult=0``: it
        decodes the backbone's features, so a run that trains the backbone drops it,
        with a warning (refine the trained model again).
    backbone : str
        Used when ``model`` is None.
    out : path
        Checkpoint written after every epoch (a torch ``.pt`` file, written
        atomically). It is a normal model file (``load_model`` reads it) that
        also holds the optimiser state, epoch and history for ``resume``.
    epochs, batch_size, lr, backbone_lr_mult, momentum, weight_decay, input_size, hflip
        The recipe: the backbone learns at ``lr * backbone_lr_mult``;
        ``backbone_lr_mult=0`` freezes it (no gradients, BatchNorm statistics
        kept), which makes CPU training several times faster. ``input_size`` None (the
        default) trains at the starting model's input size when ``model`` is a PRMModel, a
        checkpoint or a built-in model (448×448 for one without a size), and at 448×448 for
        a new model.
    sub_pixel_locating_factor : int
        CRM upsampling used for peak stimulation during training only. The
        saved model keeps its inference setting (1 for a new model), which
        is what ``predict`` uses.
    device : str, torch.device or None
        None: CUDA, then MPS, then the CPU.
    seed : int
        Seeds the classifier initialisation, shuffling, flips and split; on the
        CPU a run is repeatable, and a resumed run equals an uninterrupted one. The
        caller's torch random state is left as it was (:func:`keeps_random_state`).
    val_fraction : float
        Hold out this share of the images from training (0.2 by default): the
        per-class classification AP on them is reported after every epoch, and
        the thresholds are calibrated on them at the end. 0 trains on every
        image (the calibration then uses the training images themselves). An image
        whose removal leaves one of its classes without a training image is never
        held out (:func:`training_split`): fewer images are then held out, or none
        (calibrated on the training images), and ``TrainResult.warnings`` says so.
    calibrate : bool or None
        After the last epoch, choose the class and peak thresholds from the
        held-out images' image-level labels
        (:func:`napari_prm.peaks.calibrate_model`) and store them in the model
        and the checkpoint, where ``predict`` finds them. None (the default): True for a new
        run; for a resumed run, what the run was started with (recorded in its recipe as
        ``calibrate``; True for a checkpoint that does not record it). A new run records it.
    resume : path, True or None
        Continue from a checkpoint written by ``train`` (True: from ``out``):
        finished epochs are skipped and the recipe stored in it is used,
        except ``epochs``, the total to reach (not fewer than the finished epochs:
        ValueError). ``model`` is then ignored. The run goes on with its checkpoint's split
        (its ``split_rule``; one without, from before the rule, holds out what the plain random
        split does: ``training_split(..., split_rule=None)``), so it trains on the same images.
    progress : callable, optional
        Called with a :class:`TrainProgress` after every batch and epoch.
    cancel : callable or threading.Event, optional
        Checked between batches; when true, training stops (the unfinished
        epoch is not saved) and ``TrainResult.cancelled`` is True.
    num_workers : int
        DataLoader worker processes.
    overwrite : bool
        Whether an existing ``out`` may be replaced. False (the default, as on the command
        line and in the Train widget): an existing ``out`` that ``resume`` does not continue
        is refused with a ``FileExistsError`` before anything runs, so that a second run (a
        notebook cell run again, with ``out`` left at ``prm_model.pt``) never replaces a
        trained model after its first epoch. True replaces it.
    split : TrainingSplit, optional
        ``training_split(dataset, val_fraction, seed)`` made already (the Train widget shows
        it before training): used instead of making it again. One made with another recipe
        (a resumed run's own ``val_fraction``, ``seed`` and ``split_rule``) or of other images
        is refused. Its images are read with the run's channels (see ``dataset``).
    check_images : bool
        Before training, find every image file that cannot be read from its header and
        end (`LabeledImageDataset.unreadable_images`: milliseconds for a hundred images,
        no decoding) and refuse the run naming them all. An image that fails later
        anyway (damage inside its pixel data, or a file changed during training) stops
        training with a ValueError naming it and the last finished epoch, whose
        checkpoint is intact for ``resume``.
    warn : callable, optional
        Called with each warning about the dataset and its split (``TrainResult.warnings``
        but the calibration's, which is ``TrainResult.calibration.warning``) once they are
        known, before the first epoch: a caller says them there, while the run may take hours.
    model_name : str, path or None
        What a PRMModel ``model`` was read from (the command line gives the ``--model`` file it
        read), recorded as the run's base. A new run records its base in its recipe as ``base``
        (`run_base`): the backbone name, the built-in model's name, the checkpoint's path (relative
        to ``out``'s folder when it lies in it, so that the run folder can move; else absolute),
        or None for a PRMModel without ``model_name``.

    Returns
    -------
    TrainResult

    Raises
    ------
    OSError
        ``out``'s folder (or the nearest existing folder above it) cannot be written into:
        checked before anything runs (`napari_prm.io.writable_folder`).
    """
    if not isinstance(dataset, LabeledImageDataset):
        raise ValueError(f"dataset: expected a LabeledImageDataset (see napari_prm.data.load_dataset), "
                         f"got {type(dataset).__name__}")
    # hflip="no" or calibrate="False" (a configuration file's strings) were true
    hflip, overwrite, check_images = (check.boolean(name, value) for name, value in (
        ("hflip", hflip), ("overwrite", overwrite), ("check_images", check_images)))
    calibrate = None if calibrate is None else check.boolean("calibrate", calibrate)
    out = checkpoint_file("out", out, training=True)
    check.new_checkpoint("out", out, overwrite=overwrite, resume=resume)
    writable_folder(out.parent, create=False)  # not after the first epoch, with a temporary file's name
    epochs = check.positive_int("epochs", epochs)
    num_workers = check.integer("num_workers", num_workers, low=0)
    dataset.check_positives()
    device = resolve_device(device)
    start_epoch, history, state, head_warning = 0, [], None, None
    if resume:
        resume_path = out if resume is True else Path(resume)
        model, extra = load_checkpoint(resume_path)
        state = extra.get(TRAINING_STATE_KEY)
        if state is None:
            raise ValueError(f"{resume_path} holds no training state (it was not written by train); "
                             "pass it as model= to fine-tune instead")
        if list(model.class_names) != list(dataset.class_names):
            raise ValueError(f"cannot resume {resume_path}: it was trained on classes {model.class_names}, "
                             f"the dataset has {dataset.class_names}")
        config, start_epoch, history = _training_state(resume_path, state)
        if epochs < start_epoch:
            raise ValueError(f"epochs {epochs} is fewer than the {start_epoch} epochs the run in {resume_path} "
                             f"has finished: epochs is the new total ({start_epoch} or more)")
        if calibrate is None:  # the run's own (--no-calibrate was not recorded before: calibrated)
            calibrate = config.get("calibrate", True)
    else:
        config = _recipe(epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr_mult=backbone_lr_mult,
                         momentum=momentum, weight_decay=weight_decay,
                         input_size=DEFAULT_INPUT_SIZE if input_size is None else input_size,
                         sub_pixel_locating_factor=sub_pixel_locating_factor, hflip=hflip, seed=seed,
                         val_fraction=val_fraction)
        calibrate = True if calibrate is None else calibrate
        config["calibrate"] = calibrate
        config["base"] = run_base(model if model is not None else backbone, model_name, out)
        model = _start_model(model if model is not None else backbone, list(dataset.class_names),
                             None if input_size is None else config["input_size"], config["seed"])
        # a fine-tuned model trains at its own size unless input_size is given (it trained at 448)
        config["input_size"] = list(check.input_size("input_size", model.input_size, square=False))
        if model.head is not None and config["backbone_lr_mult"] > 0:
            # the head decodes the backbone's features, which this run changes: kept, predict's
            # default proposals would be its masks from features it never saw
            model.head = None
            head_warning = ("the starting model's refinement head was dropped: it decodes the backbone's "
                            "features, which this run trains; refine the "
                            "trained model again (napari-prm refine), or train with a frozen backbone "
                            "(backbone_lr_mult=0, the command line's --backbone-lr-mult 0) to keep it")
    config["epochs"] = epochs
    # the image channels it learns from, which predict then reads: the dataset's own
    # (`LabeledImageDataset.channels`), else the starting or resumed model's, as the command line
    # and the Train widget read them (train(dataset, model=CKPT) read the images as they are)
    recorded = model.settings.get("channels")
    channels, channel_note = channels_for(dataset.channels, recorded)
    if state is not None and recorded != channels:
        raise ValueError(f"cannot resume {resume_path}: it was trained on image channels "
                         f"{recorded if recorded is not None else 'None (images as they are)'}, the dataset "
                         f"reads channels {channels}: give the same channels")
    notes = [] if channel_note is None else [channel_note]  # the command line's note
    if state is not None and start_epoch >= epochs:  # the command line says it itself (it trains nothing)
        notes.append(f"the run in {resume_path} already finished its {plural(start_epoch, 'epoch')}: no epoch was "
                     "trained" + ("; its thresholds were calibrated again" if calibrate else "")
                     + f" (epochs above {start_epoch} train it further)")
    dataset = dataset.with_model_channels(recorded)
    if dataset.channels is None:
        model.settings.pop("channels", None)
    else:
        model.settings["channels"] = list(dataset.channels)
    if start_epoch < epochs:
        # thresholds chosen for the weights training changes (a fine-tuned model's, or those of a
        # finished run that goes on) would be kept by a checkpoint this run does not calibrate
        for key in CALIBRATION_SETTINGS:
            model.settings.pop(key, None)
    model.to(device)
    check_map_size(model, config["input_size"], device=device)
    optimizer = _optimizer(model, config["lr"], config["backbone_lr_mult"], config["momentum"], config["weight_decay"])
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    # a resumed run keeps its checkpoint's split: its first epochs trained on those images (a
    # checkpoint from before the rule made the plain random split, which may hold out a class's
    # only image: this version's would train on other images from there on, silently)
    split_rule = SPLIT_RULE if state is None else state.get("split_rule")
    if split is None:
        try:
            split = training_split(dataset, config["val_fraction"], config["seed"], split_rule=split_rule)
        except ValueError as error:
            if state is None:
                raise
            raise ValueError(f"cannot resume {resume_path}: {error}") from None
    elif not isinstance(split, TrainingSplit) or not split.is_split_of(dataset, config["val_fraction"],
                                                                        config["seed"], split_rule):
        rule = "" if split_rule == SPLIT_RULE else f", split_rule={split_rule!r}"
        got = (f"a {type(split).__name__}" if not isinstance(split, TrainingSplit) else
               f"a split with val_fraction {split.val_fraction}, seed {split.seed}"
               + ("" if split.split_rule == split_rule else f", split_rule {split.split_rule!r}")
               + f", of {plural(len(split.train) + len(split.held_out or ()), 'image')}")
        raise ValueError(f"split: expected training_split(dataset, {config['val_fraction']}, {config['seed']}{rule}) "
                         f"of the {plural(len(dataset), 'image')} of {dataset.source or 'the dataset'}, got {got}")
    if split.train.channels != dataset.channels:  # a split of the dataset as given: its images read as the run's
        split = replace(split, train=replace(split.train, channels=dataset.channels),
                        held_out=None if split.held_out is None else replace(split.held_out,
                                                                             channels=dataset.channels))
    if check_images:
        check_readable(dataset)
    train_set, val_set = split.train, split.held_out
    trained_keys = image_keys(train_set.image_paths)
    warnings = split_warnings(dataset, split, state, resume_path if state is not None else None)
    if head_warning:
        warnings.append(head_warning)
    if state is not None and isinstance(state.get("images"), torch.Tensor):
        # a dataset changed since the run started splits anew: images its epochs trained on may
        # now be held out, and the checkpoint must go on naming them as trained (trained_images)
        trained_keys = torch.unique(torch.cat([state["images"], trained_keys]))
    if warn is not None:
        for warning in warnings:
            warn(warning)
    images = TrainingImages(train_set, config["input_size"], model.mean, model.std,
                            hflip=config["hflip"], seed=config["seed"])
    generator = torch.Generator()
    loader = _data_loader(images, batch_size=config["batch_size"], shuffle=True, num_workers=num_workers,
                          generator=generator)
    val_loader = None
    if val_set is not None:
        val_images = TrainingImages(val_set, config["input_size"], model.mean, model.std, hflip=False)
        val_loader = _data_loader(val_images, batch_size=config["batch_size"], num_workers=num_workers)

    network = model.network
    inference_factor = network.sub_pixel_locating_factor
    network.sub_pixel_locating_factor = config["sub_pixel_locating_factor"]
    checkpoint = out if start_epoch > 0 and out.is_file() else None
    cancelled = False
    calibration = None
    try:
        epoch = start_epoch - 1  # the last epoch done, until one starts (a resumed run may train none)
        for epoch in range(start_epoch, config["epochs"]):
            # Re-seeding per epoch makes shuffling, flips and dropout independent of where a run resumed.
            generator.manual_seed(config["seed"] * 100003 + epoch)
            torch.manual_seed(config["seed"] * 100003 + epoch)
            images.set_epoch(epoch)
            _set_train_mode(model, config["backbone_lr_mult"] == 0)
            started, seen, losses = time.perf_counter(), 0, []
            for batch, (inputs, targets) in enumerate(_batches(loader), start=1):
                if is_cancelled(cancel):
                    cancelled = True
                    break
                inputs, targets = inputs.to(device), targets.to(device)
                loss = F.multilabel_soft_margin_loss(network(inputs), targets)
                _check_finite_training(model, out, epoch + 1, batch, float(loss.detach()), config["lr"],
                                       checkpoint)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                seen += len(inputs)
                if progress is not None:
                    progress(TrainProgress("batch", epoch + 1, config["epochs"], batch, len(loader), losses[-1],
                                           seen / max(time.perf_counter() - started, 1e-9)))
            if cancelled:
                break
            record = EpochRecord(epoch + 1, float(np.mean(losses)), time.perf_counter() - started)
            if val_loader is not None:
                network.sub_pixel_locating_factor = inference_factor
                record.val_ap, record.val_map = _validation_ap(model, val_loader, device)
                network.sub_pixel_locating_factor = config["sub_pixel_locating_factor"]
            _check_finite_training(model, out, epoch + 1, None, None, config["lr"], checkpoint)
            history.append(record)
            network.sub_pixel_locating_factor = inference_factor
            checkpoint = _save(model, out, optimizer, epoch + 1, history, config, split_rule, trained_keys)
            network.sub_pixel_locating_factor = config["sub_pixel_locating_factor"]
            if progress is not None:
                progress(TrainProgress("epoch", epoch + 1, config["epochs"], len(loader), len(loader), record.loss,
                                       seen / max(record.seconds, 1e-9), record.val_ap))
        if calibrate and not cancelled and history:
            network.sub_pixel_locating_factor = inference_factor
            calibration = _calibrate(model, val_set if val_set is not None else train_set, config, progress, cancel,
                                     held_out=val_set is not None)
            if calibration is not None:
                checkpoint = _save(model, out, optimizer, len(history), history, config, split_rule, trained_keys)
                if calibration.warning:
                    warnings.append(calibration.warning)
    except UnreadableImage as error:  # its type survives a DataLoader worker, where its message gains a preamble
        raise ValueError(_image_failure(str(error), out, checkpoint, len(history), epoch + 1)) from error
    finally:
        network.sub_pixel_locating_factor = inference_factor
        network.eval()
        for parameter in network.parameters():
            parameter.requires_grad_(True)
    return TrainResult(model=model, history=history, checkpoint=checkpoint, cancelled=cancelled,
                       calibration=calibration, train_images=len(train_set),
                       held_out_images=0 if val_set is None else len(val_set), warnings=warnings, notes=notes)
