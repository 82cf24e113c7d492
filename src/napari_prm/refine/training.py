"""Training the head: backbone features cached once per image, then epochs over the head alone.

:func:`refine` is what the command line and the widget call. It prepares one
:class:`~napari_prm.refine.samples.Sample` per image (the frozen backbone's feature maps in
float16, a prompt and a target per peak), then trains a
:class:`~napari_prm.refine.head.RefineHead` on the peaks with AdamW, saving the model with
its head after every epoch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import _validate as check
from .._text import plural
from .._validate import Cancelled
from ..io.images import channels_for, checked_channels
from ..model.checkpoint import PRMModel, _write_model, checkpoint_file, is_safetensors, load_checkpoint, resolve_device
from ..train import check_readable, is_cancelled, keeps_random_state, with_gradients
from .corrections import Correction
from .features import find_stages
from .head import RefineHead, head_from_config
from .samples import Sample, prepare_samples
from .targets import IGNORE

TRAINING_STATE_KEY = "refine_training"


@dataclass
class RefineProgress:
    """What a progress callback receives.

    Attributes
    ----------
    stage : {'prepare', 'batch', 'epoch'}
        'prepare': one image's features and targets are ready (``done`` of ``total``);
        'batch' / 'epoch': after each batch / epoch of training.
    done, total : int
        Images prepared, or batches of the current epoch.
    epoch, num_epochs : int
        1-based epoch (0 while preparing).
    loss : float
        The batch's loss, or the epoch's mean (NaN while preparing).
    """

    stage: str
    done: int
    total: int
    epoch: int = 0
    num_epochs: int = 0
    loss: float = float("nan")


@dataclass
class RefineEpoch:
    """One finished epoch: mean loss and wall time in seconds.

    Attributes
    ----------
    epoch : int
        Its number, from 1.
    loss : float
    seconds : float
    """

    epoch: int
    loss: float
    seconds: float


@dataclass(eq=False)
class RefineResult:
    """What :func:`refine` returns.

    Attributes
    ----------
    model : PRMModel
        The model with its new head (sharing the network of the model it started from).
    history : list of RefineEpoch
        Every finished epoch, including those of the run resumed from.
    checkpoint : Path or None
        The last checkpoint written.
    cancelled : bool
        Whether ``cancel`` stopped the run; the model then holds the head of the
        interrupted epoch, the checkpoint that of the last finished one.
    samples : int
        Images trained on (pseudo-labelled and corrected).
    prepare_seconds, train_seconds : float
    notes : list of str
        What the run did that a caller may not expect: it learnt from other image channels than
        the model was trained on (the refined model records those it learnt from); a ``resume``
        of a run that had finished its ``epochs`` trained nothing and wrote nothing (``model``
        and ``checkpoint`` are then the run's own).
    """

    model: PRMModel
    history: list[RefineEpoch] = field(default_factory=list)
    checkpoint: Path | None = None
    cancelled: bool = False
    samples: int = 0
    prepare_seconds: float = 0.0
    train_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def head_loss(mask_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the peaks' masks plus soft Dice of those with an instance.

    Pixels marked :data:`~napari_prm.refine.targets.IGNORE` take no part. Dice weighs a
    small instance as much as a large one; a peak on no instance (an empty target) has
    cross-entropy only, since Dice of an empty mask punishes any faint probability.

    Parameters
    ----------
    mask_logits : (K, 1, gh, gw) tensor
    targets : (K, gh, gw) uint8 or int tensor
        0, 1 or :data:`~napari_prm.refine.targets.IGNORE`.
    weights : (K,) float tensor
        Weight of each peak's pixels.
    """
    logits = mask_logits[:, 0]
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits[:, None], size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    valid = (targets != IGNORE).float()
    truth = (targets == 1).float()
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    pixel_weight = weights[:, None, None] * valid
    bce = (bce * pixel_weight).sum() / pixel_weight.sum().clamp(min=1e-6)
    probability = torch.sigmoid(logits) * valid
    overlap = (probability * truth).flatten(1).sum(1)
    size = truth.flatten(1).sum(1)
    dice = 1 - (2 * overlap + 1) / (probability.flatten(1).sum(1) + size + 1)
    dice_weight = weights * (size > 0)
    return bce + (dice * dice_weight).sum() / dice_weight.sum().clamp(min=1e-6)


def _new_head(stages, width: int, seed: int) -> RefineHead:
    torch.manual_seed(seed)
    return RefineHead(stages, width=width)


def corrections_record(corrections: Sequence[Correction], source: str | os.PathLike | None = None) -> dict:
    """What a refine run's training state records of its corrections, so that a resumed run
    learns from the same ones: how many images and instances, a digest of their labels and
    classes (in any order), and where they were read from (``source``: the command line's
    ``--masks``; None when they were given from Python)."""
    digests = []
    for correction in corrections:
        digest = hashlib.sha256()
        labels = np.ascontiguousarray(correction.labels, dtype=np.int64)
        digest.update(repr((labels.shape, sorted(correction.label_classes.items()))).encode())
        digest.update(labels.tobytes())
        if correction.ignore is not None:
            digest.update(np.packbits(correction.ignore).tobytes())
        digests.append(digest.hexdigest())
    return {"images": len(corrections), "instances": int(sum(c.num_instances for c in corrections)),
            "digest": hashlib.sha256("".join(sorted(digests)).encode()).hexdigest(),
            "source": None if source is None else str(source)}


def _corrections_differ(path: Path, recorded: dict, given: dict) -> str | None:
    """Why a resumed run cannot go on with ``given`` corrections: the message of the ValueError,
    or None when they are the run's own (or the run recorded none: a checkpoint
    written before they were recorded)."""
    if not isinstance(recorded, dict) or recorded.get("digest") == given["digest"]:
        return None
    from .._text import plural

    theirs = (f"{plural(recorded['images'], 'corrected image')} ({plural(recorded['instances'], 'instance')}"
              + (f", from {recorded['source']}" if recorded.get("source") else "") + ")"
              if recorded.get("images") else "no corrected image")
    ours = (f"gives {plural(given['images'], 'corrected image')} ({plural(given['instances'], 'instance')})"
            + (" that are not the run's" if recorded.get("images") else "") if given["images"] else "gives none")
    again = (f"give the same corrections (the command line's --masks {recorded['source']})"
             if recorded.get("source") else "give the same corrections") if recorded.get("images") else \
        "give none"
    return f"cannot resume {path}: its run learnt from {theirs}, this one {ours}: {again}, or start a new run"


def _save(model: PRMModel, out: Path, optimizer, epoch: int, history, config: dict,
          corrections: dict | None = None) -> Path:
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "history": [vars(h) for h in history],
             "config": config, "corrections": corrections}
    model.head.info["epochs"] = int(epoch)  # in either format's metadata: what the file holds
    if is_safetensors(out):
        return _write_model(model, out)
    return _write_model(model, out, extra={TRAINING_STATE_KEY: state})


@keeps_random_state
@with_gradients
def refine(
    model: PRMModel,
    *,
    dataset=None,
    corrections: Sequence[Correction] = (),
    corrections_source: str | os.PathLike | None = None,
    channels: Sequence[int] | None = None,
    out: str | os.PathLike | None = None,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    correction_weight: float = 2.0,
    negatives: bool = False,
    fine_tune: bool = True,
    predict_options: dict | None = None,
    target_options: dict | None = None,
    instance_options: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    resume: bool | str | os.PathLike = False,
    progress: Callable[[RefineProgress], None] | None = None,
    cancel: Any = None,
    overwrite: bool = False,
) -> RefineResult:
    """Learn a refinement head from PRM's own instances and from corrected masks.

    Parameters
    ----------
    model : PRMModel
        The PRM model; its backbone and classifier stay as they are (frozen).
    dataset : LabeledImageDataset, optional
        Images with image-level labels for self-training; its classes are matched to the
        model's by name (:meth:`~napari_prm.data.LabeledImageDataset.with_classes`).
        Each image's instances are retrieved from the peaks of its labelled classes (as
        ``predict(..., classes=its labels)`` does) and each trusted instance teaches the
        peaks it holds (:func:`napari_prm.refine.samples.pseudo_sample`).
    corrections : sequence of Correction
        Corrected images, learnt as full supervision
        (:func:`napari_prm.refine.samples.correction_sample`). The training state of ``out``
        records them (:func:`napari_prm.refine.training.corrections_record`): a ``resume``
        with other corrections (or none, when the run had some) is refused with a ValueError.
    corrections_source : path, optional
        Where ``corrections`` were read from (a folder of exports, a COCO JSON or a VOC devkit:
        the command line's ``--masks``), recorded with them: ``napari-prm refine --resume``
        reads them again from there.
    channels : sequence of 1 to 3 int, optional
        The image channels the head learns from (`napari_prm.io.read_image`'s ``channels``):
        ``dataset``'s images are read with them, and ``corrections`` should have been read
        with them (:func:`~napari_prm.refine.load_corrections`'s ``channels``). The refined model
        records them (``settings["channels"]``), which predict then reads images with, as
        :func:`napari_prm.train` records those it trains on. Default: the dataset's own
        ``channels``, else those the model (or the resumed run) records. Channels that differ
        from the model's are used and recorded, with a note in ``RefineResult.notes``; channels
        other than the dataset's own, or than a resumed run's, are refused.
    out : path, optional
        Checkpoint written (atomically) after every epoch: the model with its head and, in
        a ``.pt`` file, the optimiser state for ``resume``.
    epochs, batch_size, lr, weight_decay
        Training of the head: AdamW with cosine decay, ``batch_size`` peaks per step.
    width : int
        Channels of a new head.
    correction_weight : float
        Weight of a corrected image's peaks against a pseudo-labelled one's.
    negatives : bool
        Peaks on no instance of their class learn empty masks: in self-training, the peaks
        of classes an image does not show; in a corrected image, the peaks on its
        background or on an instance of another class. Off by default: the head is
        class-agnostic and such peaks mostly lie on an object (of a look-alike class, or
        one the user did not label), so the empty targets contradict the positive ones.
        On two folds of coco128 train, self-training with them took the head's mAP^r .5
        from 11.1 / 8.4 to 0.2 / 0.3 and its masks' median area to a fifth of their
        objects'. Whether a peak's class is right is for the instance's confidence to
        judge, not its mask.
    fine_tune : bool
        Start from the model's head when it has one (else a new head).
    predict_options : dict, optional
        Keyword arguments of :func:`napari_prm.predict` for the pseudo-labels
        (``class_threshold``, ``peak_threshold``, ``proposals``, ``retrieval``...); the
        thresholds also find the peaks of corrected images.
    target_options : dict, optional
        Keyword arguments of :func:`napari_prm.refine.targets.pseudo_targets` over
        :data:`~napari_prm.refine.samples.PSEUDO_DEFAULTS`.
    instance_options : dict, optional
        Saved with the head: defaults of
        :func:`napari_prm.refine.instances.head_instances` at prediction time.
    cache_dir : path, optional
        Folder where the pseudo-labelled samples are kept, keyed by the image file, the
        model's weights and the options, so a second run (or ``resume``) skips PRM and
        the backbone. None keeps none (``napari-prm refine`` uses ``<OUT>.cache``).
    device : str or torch.device, optional
        Where the backbone and the head run (None: CUDA, then MPS, then the CPU).
    seed : int
        Seeds the head's initialisation, the order of the peaks and the flips. The caller's
        torch random state is left as it was (:func:`napari_prm.train.keeps_random_state`).
    resume : bool or path
        Continue the run saved in ``out`` (True) or in this checkpoint: its head, optimiser
        and finished epochs are kept and training goes on to ``epochs`` (not fewer than the
        finished epochs: ValueError). ``model`` must be the model the run refines (its network
        weights; another is refused with a ValueError: the head learnt that model's features).
    progress : callable, optional
        Called with a :class:`RefineProgress` after each prepared image, batch and epoch.
    cancel : callable or threading.Event, optional
        Checked between images and batches; when true, training stops and
        ``RefineResult.cancelled`` is True (the checkpoint keeps the last finished epoch).
    overwrite : bool
        Whether an existing ``out`` may be replaced. False (the default, as on the command
        line and in the widget): an existing ``out`` that ``resume`` does not continue is
        refused with a ``FileExistsError`` before anything runs, so that a second run never
        replaces a refined model after its first epoch. True replaces it.

    Returns
    -------
    RefineResult
    """
    if dataset is None and not corrections:
        raise ValueError("refine needs a dataset (self-training) or corrections (or both)")
    epochs = check.positive_int("epochs", epochs)
    batch_size = check.positive_int("batch_size", batch_size)
    lr = check.finite_float("lr", lr, low=0, low_open=True)
    weight_decay = check.finite_float("weight_decay", weight_decay, low=0)
    width = check.positive_int("width", width)
    correction_weight = check.finite_float("correction_weight", correction_weight, low=0)
    seed = check.integer("seed", seed, low=0, high=2**32 - 1)
    if any(not isinstance(c, Correction) for c in corrections):
        raise ValueError("corrections: expected Correction objects (see napari_prm.refine.load_corrections)")
    out = None if out is None else checkpoint_file("out", out)
    if out is not None:
        check.new_checkpoint("out", out, overwrite=overwrite, resume=resume)
        out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    channels = checked_channels(channels)
    if dataset is not None:  # a model class the dataset lacks (under either VOC spelling) is refused here
        dataset = dataset.with_classes(model.class_names)
        if channels is not None and dataset.channels is not None and channels != dataset.channels:
            raise ValueError(f"channels {channels} and the dataset's channels {dataset.channels} differ: the run "
                             "reads every image with one set of channels; give one of them")
        channels = channels if channels is not None else dataset.channels
    start_epoch, history, state = 0, [], None
    head = None
    if resume:
        resume_path = out if resume is True else Path(resume)
        if resume_path is None or not resume_path.is_file():
            raise ValueError(f"cannot resume: checkpoint {resume_path} does not exist")
        saved, extra = load_checkpoint(resume_path)
        state = extra.get(TRAINING_STATE_KEY)
        if state is None or saved.head is None:
            if is_safetensors(resume_path):
                raise ValueError(f"cannot resume from {resume_path}: a .safetensors checkpoint holds no training "
                                 "state; refine writes it to a .pt out (the command line's --out), or "
                                 "fine-tune: use it as the model")
            raise ValueError(f"{resume_path} holds no refinement training state (it was not written by refine)")
        if list(saved.class_names) != list(model.class_names):
            raise ValueError(f"cannot resume {resume_path}: its classes {saved.class_names} are not the model's "
                             f"{model.class_names}")
        if not _same_network(saved, model):  # the head learnt another backbone's features and PRMs
            raise ValueError(f"cannot resume {resume_path}: its run refines another model (its backbone or "
                             "classifier weights are not those of model, the command line's --model): give the "
                             "model the run started from, or start a new run")
        head = saved.head
        start_epoch = int(state["epoch"])
        if epochs < start_epoch:
            raise ValueError(f"epochs {epochs} is fewer than the {start_epoch} epochs the run in {resume_path} "
                             f"has finished: epochs is the new total ({start_epoch} or more)")
        history = [RefineEpoch(**h) for h in state["history"]]
        differ = _corrections_differ(resume_path, state.get("corrections"), corrections_record(corrections))
        if differ is not None:  # they were dropped without a word (an interrupted run resumed without --masks)
            raise ValueError(differ)
        learnt = saved.settings.get("channels")
        if channels is not None and channels != learnt:  # its head learnt features of other images
            raise ValueError(f"cannot resume {resume_path}: its run learnt from image channels "
                             f"{learnt if learnt is not None else 'None (images as they are)'}, this one reads "
                             f"channels {channels}: give the same channels")
    elif fine_tune and model.head is not None:
        head = head_from_config(model.head.config())
        head.load_state_dict(model.head.state_dict())
        head.info = copy.deepcopy(getattr(model.head, "info", {}))
    # the images it learns from are read with the given channels, else those of the model (or of
    # the resumed run) as predict reads them; the refined model records them, as train does
    recorded = saved.settings.get("channels") if state is not None else model.settings.get("channels")
    channels, channel_note = channels_for(channels, recorded)
    notes = [] if channel_note is None else [channel_note]  # the command line's note
    if state is not None and start_epoch >= epochs:
        # a finished run: nothing to train. It ran PRM on every image (features and pseudo-labels)
        # to train no epoch, and said nothing of it; now nothing runs and nothing is written, as
        # train(resume=) of a finished run trains nothing
        notes.append(f"the run in {resume_path} already finished its {plural(start_epoch, 'epoch')}: no epoch was "
                     f"trained and nothing was written (epochs above {start_epoch} train it further)")
        return RefineResult(model=saved, history=history, checkpoint=resume_path, notes=notes)
    if dataset is not None:
        dataset = dataset.with_model_channels(channels)
        check_readable(dataset, done="nothing was refined")
    stages = head.stages if head is not None else find_stages(model.network.fcn.features,
                                                              probe_size=_probe_size(model))
    new_head = head is None
    if new_head:
        head = _new_head(stages, width, seed)
    config = {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
              "weight_decay": float(weight_decay), "correction_weight": float(correction_weight), "seed": int(seed)}
    learnt_from = corrections_record(corrections, corrections_source)
    if state is not None:
        config = dict(state["config"]) | {"epochs": int(epochs)}
        if isinstance(state.get("corrections"), dict) and learnt_from["source"] is None:  # where they were read
            learnt_from["source"] = state["corrections"].get("source")
    model.network.to(device)
    started = time.perf_counter()

    def prepared(done: int, total: int) -> None:
        if progress is not None:
            progress(RefineProgress("prepare", done, total))

    try:
        samples = prepare_samples(model, stages, dataset=dataset, corrections=corrections,
                                  predict_options=predict_options, target_options=target_options,
                                  correction_weight=config["correction_weight"], negatives=negatives,
                                  cache_dir=cache_dir, progress=prepared, cancel=cancel)
    except Cancelled:
        return RefineResult(model=model, history=history, cancelled=True,
                            prepare_seconds=time.perf_counter() - started, notes=notes)
    prepare_seconds = time.perf_counter() - started
    previous = dict(getattr(head, "info", {}) or {})
    head.info = previous | {
        "trained_on": {"pseudo_labelled": sum(s.kind == "pseudo" for s in samples),
                       "corrected": sum(s.kind == "correction" for s in samples),
                       "peaks": sum(s.num_peaks for s in samples)},
        "epochs": int(config["epochs"]),
        "predict_options": _plain(predict_options or previous.get("predict_options", {})),
        "instances": _plain(instance_options or previous.get("instances", {})),
    }
    if new_head:
        head.set_feature_statistics([s.features for s in samples[:: max(len(samples) // 64, 1)]])
    head.to(device)
    settings = {key: value for key, value in model.settings.items() if key != "channels"}
    refined = replace(model, head=head, settings=settings if channels is None else settings | {"channels": channels})
    optimizer = torch.optim.AdamW(head.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    result = RefineResult(model=refined, history=history, samples=len(samples), prepare_seconds=prepare_seconds,
                          notes=notes)
    result.checkpoint = out if start_epoch > 0 and out is not None and out.is_file() else None
    if not any(s.num_peaks for s in samples):
        raise ValueError("nothing to learn: no peak of these images has a trusted instance (lower the class or "
                         "peak threshold, or give corrections that hold instances; a corrected instance is learnt "
                         "by a peak of its class whose PRM lies mostly on it)")
    training_started = time.perf_counter()
    try:
        _train_epochs(refined, samples, optimizer, config, start_epoch, history, out, result, device, progress,
                      cancel, learnt_from)
    finally:
        head.eval()
        result.train_seconds = time.perf_counter() - training_started
    return result


def _same_network(first: PRMModel, second: PRMModel) -> bool:
    """Whether two models have the same network weights (and buffers), wherever they lie."""
    ours, theirs = first.network.state_dict(), second.network.state_dict()
    return ours.keys() == theirs.keys() and all(
        ours[name].shape == theirs[name].shape and torch.equal(ours[name].detach().cpu(), theirs[name].detach().cpu())
        for name in ours)


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def _probe_size(model: PRMModel) -> int:
    return 224 if model.input_size is None else max(64, min(int(min(model.input_size)) // 32 * 32, 448))


def _learning_rate(config: dict, epoch: int) -> float:
    return float(0.5 * config["lr"] * (1 + np.cos(np.pi * epoch / max(config["epochs"], 1))))


def _batches(samples: Sequence[Sample], batch_size: int, rng: np.random.Generator) -> list[list[tuple[int, int]]]:
    """``(sample, peak)`` pairs in shuffled batches; a batch holds images of one feature size."""
    groups: dict = {}
    for index, sample in enumerate(samples):
        key = tuple(tuple(f.shape) for f in sample.features)
        groups.setdefault(key, []).extend((index, k) for k in range(sample.num_peaks))
    batches = []
    for pairs in groups.values():
        order = [pairs[i] for i in rng.permutation(len(pairs))]
        batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _batch(samples: Sequence[Sample], pairs: Sequence[tuple[int, int]], flips: dict, device):
    """Features of the batch's images, and each peak's image, prompt, target and weight (flipped where told)."""
    images = sorted({index for index, _ in pairs})
    position = {index: i for i, index in enumerate(images)}
    features = []
    for stage in range(len(samples[images[0]].features)):
        maps = [samples[i].features[stage].flip(-1) if flips[i] else samples[i].features[stage] for i in images]
        features.append(torch.stack(maps).to(device=device, dtype=torch.float32))
    prompts, targets = [], []
    for index, peak in pairs:
        prompt, target = samples[index].prompts[peak], samples[index].targets[peak]
        prompts.append(prompt.flip(-1) if flips[index] else prompt)
        targets.append(target.flip(-1) if flips[index] else target)
    image_index = torch.tensor([position[index] for index, _ in pairs], dtype=torch.long, device=device)
    weights = torch.tensor([samples[index].weight for index, _ in pairs], dtype=torch.float32, device=device)
    return (features, image_index, torch.stack(prompts).to(device=device, dtype=torch.float32),
            torch.stack(targets).to(device), weights)


def _train_epochs(refined: PRMModel, samples, optimizer, config, start_epoch, history, out, result, device,
                  progress, cancel, corrections: dict | None = None) -> None:
    head = refined.head
    for epoch in range(start_epoch, config["epochs"]):
        rng = np.random.default_rng(config["seed"] * 100003 + epoch)
        torch.manual_seed(config["seed"] * 100003 + epoch)
        batches = _batches(samples, config["batch_size"], rng)
        flips = dict(enumerate(rng.random(len(samples)) < 0.5))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, epoch)
        head.train()
        epoch_started, losses = time.perf_counter(), []
        for number, pairs in enumerate(batches, start=1):
            if is_cancelled(cancel):
                result.cancelled = True
                return
            features, image_index, prompts, targets, weights = _batch(samples, pairs, flips, device)
            loss = head_loss(head(features, prompts, image_index), targets, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(RefineProgress("batch", number, len(batches), epoch + 1, config["epochs"], losses[-1]))
        record = RefineEpoch(epoch + 1, float(np.mean(losses)), time.perf_counter() - epoch_started)
        history.append(record)
        head.eval()
        if out is not None:
            result.checkpoint = _save(refined, out, optimizer, epoch + 1, history, config, corrections)
        if progress is not None:
            progress(RefineProgress("epoch", len(batches), len(batches), epoch + 1, config["epochs"], record.loss))
