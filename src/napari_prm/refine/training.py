"""Training the head: backbone features cached once per image, then epochs over the head alone.

:func:`refine` is what the command line and the widget call. It prepares one
:class:`Sample` per image (the frozen backbone's feature maps, in float16, and the
targets), then trains a :class:`~napari_prm.refine.head.RefineHead` on them with AdamW,
saving the model with its head after every epoch.
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
from ..io.atomic import atomic_write
from ..model.checkpoint import PRMModel, load_checkpoint, resolve_device, save_model
from .corrections import Correction
from .features import StageFeatures, find_stages
from .head import RefineHead, head_from_config
from .targets import IGNORE, HeadTarget, pseudo_target

TRAINING_STATE_KEY = "refine_training"
#: Default settings of :func:`pseudo_target` used by :func:`refine`.
PSEUDO_DEFAULTS = {"min_relative_score": 0.0, "border": 1, "background_threshold": 0.25}


@dataclass
class Sample:
    """One training image, ready for the head.

    Attributes
    ----------
    features : list of (channels, h, w) float16 tensors
        The backbone's maps at the head's stages (CPU).
    target : HeadTarget
    weight : float
        Weight of its pixels in the loss.
    source : str
        Image file or layer name.
    kind : {'pseudo', 'correction'}
    """

    features: list[torch.Tensor]
    target: HeadTarget
    weight: float = 1.0
    source: str = ""
    kind: str = "pseudo"


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
    """One finished epoch: mean loss and wall time in seconds."""

    epoch: int
    loss: float
    seconds: float


@dataclass
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
    """

    model: PRMModel
    history: list[RefineEpoch] = field(default_factory=list)
    checkpoint: Path | None = None
    cancelled: bool = False
    samples: int = 0
    prepare_seconds: float = 0.0
    train_seconds: float = 0.0


class _Cancelled(Exception):
    pass


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _features(model: PRMModel, stages, image: np.ndarray) -> list[torch.Tensor]:
    maps = StageFeatures(model.network.fcn.features, stages)(model.preprocess(image))
    return [m[0].to(torch.float16).cpu() for m in maps]


def model_fingerprint(model: PRMModel) -> str:
    """A hash of the network's weights and input settings: cached samples of another model are not reused."""
    digest = hashlib.sha1()
    digest.update(json.dumps([model.backbone, list(model.class_names), model.input_size, list(model.mean),
                              list(model.std), model.settings], sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def correction_sample(model: PRMModel, correction: Correction, stages, *, weight: float = 1.0) -> Sample:
    """The head's sample of one corrected image."""
    features = _features(model, stages, correction.image)
    grid = tuple(features[0].shape[-2:])
    return Sample(features, correction.target(grid, model.num_classes), float(weight), correction.source,
                  "correction")


def pseudo_sample(model: PRMModel, image: np.ndarray, present: Sequence[int], stages, *,
                  predict_options: dict | None = None, target_options: dict | None = None,
                  prediction=None, source: str = "") -> Sample:
    """The head's sample of one image with image-level labels (self-training).

    Parameters
    ----------
    model : PRMModel
    image : ndarray
    present : sequence of int
        Classes the image shows (its image-level labels).
    stages : sequence of Stage
    predict_options : dict, optional
        Passed to :func:`napari_prm.predict` (``classes`` is set to ``present``: peaks of
        absent classes are dropped).
    target_options : dict, optional
        Passed to :func:`napari_prm.refine.targets.pseudo_target` over :data:`PSEUDO_DEFAULTS`.
    prediction : Prediction, optional
        A prediction of this image made with ``classes=present`` (skips running PRM).
    source : str
    """
    from ..predict import predict

    present = [int(c) for c in present]
    features = _features(model, stages, image)
    grid = tuple(features[0].shape[-2:])
    options = PSEUDO_DEFAULTS | dict(target_options or {})
    if not present:
        target = HeadTarget(np.zeros(grid, np.uint8), np.zeros(grid, np.uint8))
        return Sample(features, target, 1.0, source, "pseudo")
    if prediction is None:
        prediction = predict(image, model, **(dict(predict_options or {}) | {"classes": present}))
    keep = [i for i in prediction.instances if i.class_index in present]
    masks = np.array([i.mask for i in keep], bool).reshape((-1,) + prediction.image_shape)
    target = pseudo_target(masks, [i.class_index for i in keep], [i.score for i in keep], prediction.crms,
                           present, grid, num_classes=model.num_classes, **options)
    return Sample(features, target, 1.0, source, "pseudo")


def _cache_key(fingerprint: str, path: Path, options: dict) -> str:
    stat = path.stat()
    text = json.dumps([fingerprint, str(path.resolve()), stat.st_mtime_ns, stat.st_size, options],
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _save_sample(path: Path, sample: Sample) -> None:
    with atomic_write(path) as temp:
        torch.save({"features": sample.features, "semantic": torch.from_numpy(sample.target.semantic),
                    "boundary": torch.from_numpy(sample.target.boundary), "source": sample.source}, temp)


def _load_sample(path: Path) -> Sample | None:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        target = HeadTarget(content["semantic"].numpy(), content["boundary"].numpy())
        return Sample(list(content["features"]), target, 1.0, str(content["source"]), "pseudo")
    except Exception:  # a damaged cache entry is recomputed
        return None


def prepare_samples(model: PRMModel, stages, *, dataset=None, corrections: Sequence[Correction] = (),
                    predict_options: dict | None = None, target_options: dict | None = None,
                    correction_weight: float = 2.0, cache_dir: str | os.PathLike | None = None,
                    predictions: Sequence | None = None,
                    progress: Callable[[RefineProgress], None] | None = None, cancel: Any = None) -> list[Sample]:
    """Features and targets of every training image; see :func:`refine` for the parameters.

    ``predictions`` (one per dataset image, made with ``classes=`` its labels) skip running
    PRM on the dataset. Raises ``_Cancelled`` when ``cancel`` turns true.
    """
    total = (0 if dataset is None else len(dataset)) + len(corrections)
    samples: list[Sample] = []
    report = progress or (lambda update: None)
    cache = None
    if cache_dir is not None and dataset is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        fingerprint = model_fingerprint(model)
        options = {"predict": dict(predict_options or {}), "target": PSEUDO_DEFAULTS | dict(target_options or {}),
                   "stages": [s.module for s in stages]}
    for index in range(0 if dataset is None else len(dataset)):
        if _is_cancelled(cancel):
            raise _Cancelled
        path = Path(dataset.image_paths[index])
        entry = cache / f"{_cache_key(fingerprint, path, options)}.pt" if cache is not None else None
        sample = _load_sample(entry) if entry is not None and entry.is_file() else None
        if sample is None:
            present = np.flatnonzero(dataset.labels[index] > 0).tolist()
            sample = pseudo_sample(model, dataset.read_image(index), present, stages,
                                   predict_options=predict_options, target_options=target_options,
                                   prediction=None if predictions is None else predictions[index], source=str(path))
            if entry is not None:
                _save_sample(entry, sample)
        samples.append(sample)
        report(RefineProgress("prepare", len(samples), total))
    for correction in corrections:
        if _is_cancelled(cancel):
            raise _Cancelled
        samples.append(correction_sample(model, correction, stages, weight=correction_weight))
        report(RefineProgress("prepare", len(samples), total))
    return samples


def _batch(samples: Sequence[Sample], flips: np.ndarray, device) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                           torch.Tensor, torch.Tensor]:
    stages = len(samples[0].features)
    features = []
    for stage in range(stages):
        maps = [s.features[stage].flip(-1) if flip else s.features[stage] for s, flip in zip(samples, flips)]
        features.append(torch.stack(maps).to(device=device, dtype=torch.float32))
    targets = [s.target.flipped() if flip else s.target for s, flip in zip(samples, flips)]
    semantic = torch.from_numpy(np.stack([t.semantic for t in targets]).astype(np.int64)).to(device)
    boundary = torch.from_numpy(np.stack([t.boundary for t in targets]).astype(np.int64)).to(device)
    weights = torch.tensor([s.weight for s in samples], dtype=torch.float32, device=device)
    return features, semantic, boundary, weights


def head_loss(semantic_logits: torch.Tensor, boundary_logits: torch.Tensor, semantic: torch.Tensor,
              boundary: torch.Tensor, weights: torch.Tensor, *, boundary_weight: float = 1.0,
              boundary_pos_weight: float = 5.0, foreground_balance: float = 0.0) -> torch.Tensor:
    """Weighted cross-entropy of the classes plus weighted binary cross-entropy of the boundaries.

    Pixels marked :data:`~napari_prm.refine.targets.IGNORE` take no part; each image's
    pixels count with its weight. With ``foreground_balance`` b > 0, object pixels weigh
    ``(background pixels / object pixels) ** b`` (at most 10) times a background pixel of
    the batch.
    """
    if semantic_logits.shape[-2:] != semantic.shape[-2:]:
        semantic_logits = F.interpolate(semantic_logits, size=semantic.shape[-2:], mode="bilinear",
                                        align_corners=False)
        boundary_logits = F.interpolate(boundary_logits, size=semantic.shape[-2:], mode="bilinear",
                                        align_corners=False)
    pixel_weight = weights[:, None, None].expand_as(semantic)
    valid = semantic != IGNORE
    if foreground_balance > 0:
        objects = valid & (semantic > 0)
        ratio = ((valid & (semantic == 0)).sum() / objects.sum().clamp(min=1)).float()
        pixel_weight = pixel_weight * torch.where(objects, ratio.clamp(1, 10 ** (1 / foreground_balance))
                                                  ** foreground_balance, 1.0)
    ce = F.cross_entropy(semantic_logits, torch.where(valid, semantic, 0), reduction="none")
    semantic_loss = (ce * pixel_weight * valid).sum() / (pixel_weight * valid).sum().clamp(min=1e-6)
    known = boundary != IGNORE
    bce = F.binary_cross_entropy_with_logits(
        boundary_logits[:, 0], (boundary == 1).float(), reduction="none",
        pos_weight=torch.tensor(boundary_pos_weight, device=boundary_logits.device))
    boundary_loss = (bce * pixel_weight * known).sum() / (pixel_weight * known).sum().clamp(min=1e-6)
    return semantic_loss + boundary_weight * boundary_loss


def _new_head(model: PRMModel, stages, width: int, seed: int) -> RefineHead:
    torch.manual_seed(seed)
    return RefineHead(stages, model.num_classes, width=width)


def _save(model: PRMModel, out: Path, optimizer, epoch: int, history, config: dict) -> Path:
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "history": [vars(h) for h in history],
             "config": config}
    if out.suffix == ".safetensors":
        return save_model(model, out)
    return save_model(model, out, extra={TRAINING_STATE_KEY: state})


def refine(
    model: PRMModel,
    *,
    dataset=None,
    corrections: Sequence[Correction] = (),
    out: str | os.PathLike | None = None,
    epochs: int = 30,
    batch_size: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 64,
    correction_weight: float = 2.0,
    foreground_balance: float = 0.0,
    fine_tune: bool = True,
    predict_options: dict | None = None,
    target_options: dict | None = None,
    instance_options: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    predictions: Sequence | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    resume: bool | str | os.PathLike = False,
    progress: Callable[[RefineProgress], None] | None = None,
    cancel: Any = None,
) -> RefineResult:
    """Learn a refinement head from PRM's own instances and from corrected masks.

    Parameters
    ----------
    model : PRMModel
        The PRM model; its backbone and classifier stay as they are (frozen).
    dataset : LabeledImageDataset, optional
        Images with image-level labels for self-training; its classes are matched to the
        model's by name (:meth:`~napari_prm.data.LabeledImageDataset.with_classes`).
        Each image's instances are retrieved with ``predict(..., classes=its labels)``
        and the certain part of them becomes its targets.
    corrections : sequence of Correction
        Corrected images, learnt as full supervision.
    out : path, optional
        Checkpoint written (atomically) after every epoch: the model with its head and, in
        a ``.pt`` file, the optimiser state for ``resume``.
    epochs, batch_size, lr, weight_decay : training of the head (AdamW, cosine decay).
    width : int
        Channels of the head (a new head only).
    correction_weight : float
        Weight of a corrected image's pixels against a pseudo-labelled one's.
    foreground_balance : float
        Up-weighting of object pixels against background ones (see :func:`head_loss`).
    fine_tune : bool
        Start from the model's head when it has one (else a new head).
    predict_options : dict, optional
        Keyword arguments of :func:`napari_prm.predict` for the pseudo-labels
        (``class_threshold``, ``peak_threshold``, ``proposals``, ``retrieval``...).
    target_options : dict, optional
        Keyword arguments of :func:`napari_prm.refine.targets.pseudo_target`.
    instance_options : dict, optional
        Saved with the head: defaults of
        :func:`napari_prm.refine.instances.head_instances` at prediction time.
    cache_dir : path, optional
        Folder where the pseudo-labelled samples are kept, keyed by the image file, the
        model's weights and the options, so a second run (or ``resume``) skips PRM and
        the backbone.
    predictions : sequence of Prediction, optional
        Precomputed predictions of the dataset's images (with ``classes=`` their labels).
    device : str or torch.device, optional
        Where the backbone and the head run (None: CUDA, then MPS, then the CPU).
    seed : int
        Seeds the head's initialisation, the order of the images and the flips.
    resume : bool or path
        Continue the run saved in ``out`` (True) or in this checkpoint: its head, optimiser
        and finished epochs are kept and training goes on to ``epochs``.
    progress : callable, optional
        Called with a :class:`RefineProgress` after each prepared image, batch and epoch.
    cancel : callable or threading.Event, optional
        Checked between images and batches; when true, training stops and
        ``RefineResult.cancelled`` is True (the checkpoint keeps the last finished epoch).

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
    foreground_balance = check.finite_float("foreground_balance", foreground_balance, low=0)
    seed = check.integer("seed", seed, low=0, high=2**32 - 1)
    if any(not isinstance(c, Correction) for c in corrections):
        raise ValueError("corrections: expected Correction objects (see napari_prm.refine.load_corrections)")
    out = None if out is None else Path(out)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    if dataset is not None:
        missing = [c for c in model.class_names if c not in dataset.class_names]
        if missing and dataset.coco is None:
            raise ValueError(f"dataset {dataset.source} lacks the model's class(es) {missing}")
        dataset = dataset.with_classes(model.class_names)
    start_epoch, history, state = 0, [], None
    head = None
    if resume:
        resume_path = out if resume is True else Path(resume)
        if resume_path is None or not resume_path.is_file():
            raise ValueError(f"cannot resume: checkpoint {resume_path} does not exist")
        saved, extra = load_checkpoint(resume_path)
        state = extra.get(TRAINING_STATE_KEY)
        if state is None or saved.head is None:
            raise ValueError(f"{resume_path} holds no refinement training state (it was not written by refine)")
        if list(saved.class_names) != list(model.class_names):
            raise ValueError(f"cannot resume {resume_path}: its classes {saved.class_names} are not the model's "
                             f"{model.class_names}")
        head = saved.head
        start_epoch = int(state["epoch"])
        history = [RefineEpoch(**h) for h in state["history"]]
    elif fine_tune and model.head is not None and model.head.num_classes == model.num_classes:
        head = head_from_config(model.head.config())
        head.load_state_dict(model.head.state_dict())
        head.info = copy.deepcopy(getattr(model.head, "info", {}))
    stages = head.stages if head is not None else find_stages(model.network.fcn.features,
                                                              probe_size=_probe_size(model))
    new_head = head is None
    if new_head:
        head = _new_head(model, stages, width, seed)
    config = {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
              "weight_decay": float(weight_decay), "correction_weight": float(correction_weight), "seed": int(seed),
              "foreground_balance": float(foreground_balance)}
    if state is not None:
        config = dict(state["config"]) | {"epochs": int(epochs)}
    model.network.to(device)
    started = time.perf_counter()
    try:
        samples = prepare_samples(model, stages, dataset=dataset, corrections=corrections,
                                  predict_options=predict_options, target_options=target_options,
                                  correction_weight=config["correction_weight"], cache_dir=cache_dir,
                                  predictions=predictions, progress=progress, cancel=cancel)
    except _Cancelled:
        return RefineResult(model=model, history=history, cancelled=True,
                            prepare_seconds=time.perf_counter() - started)
    prepare_seconds = time.perf_counter() - started
    previous = dict(getattr(head, "info", {}) or {})
    head.info = previous | {
        "trained_on": {"pseudo_labelled": sum(s.kind == "pseudo" for s in samples),
                       "corrected": sum(s.kind == "correction" for s in samples)},
        "epochs": int(config["epochs"]),
        "predict_options": _plain(predict_options or previous.get("predict_options", {})),
        "instances": _plain(instance_options or previous.get("instances", {})),
    }
    if new_head:
        head.set_feature_statistics([s.features for s in samples[:: max(len(samples) // 64, 1)]])
    head.to(device)
    refined = replace(model, head=head)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    result = RefineResult(model=refined, history=history, samples=len(samples), prepare_seconds=prepare_seconds)
    result.checkpoint = out if start_epoch > 0 and out is not None and out.is_file() else None
    training_started = time.perf_counter()
    try:
        _train_epochs(refined, samples, optimizer, config, start_epoch, history, out, result, device, progress,
                      cancel)
    finally:
        head.eval()
        result.train_seconds = time.perf_counter() - training_started
    return result


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def _probe_size(model: PRMModel) -> int:
    return 224 if model.input_size is None else max(64, min(int(min(model.input_size)) // 32 * 32, 448))


def _learning_rate(config: dict, epoch: int) -> float:
    return float(0.5 * config["lr"] * (1 + np.cos(np.pi * epoch / max(config["epochs"], 1))))


def _train_epochs(refined: PRMModel, samples, optimizer, config, start_epoch, history, out, result, device,
                  progress, cancel) -> None:
    head = refined.head
    shapes = {}
    for index, sample in enumerate(samples):
        shapes.setdefault(tuple(tuple(f.shape) for f in sample.features), []).append(index)
    for epoch in range(start_epoch, config["epochs"]):
        rng = np.random.default_rng(config["seed"] * 100003 + epoch)
        torch.manual_seed(config["seed"] * 100003 + epoch)
        batches = []
        for indices in shapes.values():
            order = rng.permutation(indices)
            batches += [order[i:i + config["batch_size"]] for i in range(0, len(order), config["batch_size"])]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, epoch)
        head.train()
        epoch_started, losses = time.perf_counter(), []
        for number, batch in enumerate(batches, start=1):
            if _is_cancelled(cancel):
                result.cancelled = True
                return
            chosen = [samples[i] for i in batch]
            features, semantic, boundary, weights = _batch(chosen, rng.random(len(chosen)) < 0.5, device)
            semantic_logits, boundary_logits = head(features)
            loss = head_loss(semantic_logits, boundary_logits, semantic, boundary, weights,
                             foreground_balance=config.get("foreground_balance", 0.0))
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
            result.checkpoint = _save(refined, out, optimizer, epoch + 1, history, config)
        if progress is not None:
            progress(RefineProgress("epoch", len(batches), len(batches), epoch + 1, config["epochs"], record.loss))
