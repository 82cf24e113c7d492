"""Datasets with image-level labels: the weak supervision PRM trains from.

Four sources give the same :class:`LabeledImageDataset`: a COCO JSON (labels
are the categories present; instance masks, when present, serve evaluation
only), a PASCAL VOC devkit (labels from its XML annotations; instance masks from its
segmentation PNGs, for evaluation only), a folder per class (one label per image) and a
CSV ``image,labels`` with ``;``-separated labels. Images are read lazily.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import _classes
from . import _validate as check
from ._classes import _VOC_NAME, _VOC_OWN_NAMES, composed
from ._text import did_you_mean, first_names, plural
from .io.images import IMAGE_SUFFIXES, as_rgb_float, checked_channels, read_image
from .io.paths import is_system_file, sorted_paths, stored_path

#: The 20 PASCAL VOC classes under their COCO names, in VOC's order.
VOC_CLASSES = _classes.VOC_CLASSES
#: PASCAL VOC's own spelling of the VOC classes COCO names otherwise (VOC name: COCO name).
VOC_SPELLINGS = _classes.VOC_SPELLINGS
#: ``class_in(name, names)``: the name class ``name`` has among ``names``: itself, else a VOC
#: class's other spelling (``motorbike`` for ``motorcycle`` and back: `VOC_SPELLINGS`), else None.
#: How a model's classes meet a dataset's (`LabeledImageDataset.with_classes`, fine-tuning's kept
#: classifier rows, `napari_prm.io.match_exports`). Defined in a torch-free module, for
#: `napari_prm.io`.
class_in = _classes.class_in

PathLike = str | Path


@dataclass(repr=False, eq=False)
class GroundTruth:
    """Instance masks of one image, restricted to the dataset's classes.

    Attributes
    ----------
    masks : (M, H, W) bool ndarray
    class_indices : (M,) int64 ndarray
        Index into the dataset's class names.
    iscrowd : (M,) bool ndarray
        COCO crowd regions (several objects under one mask).
    ignore : (H, W) bool ndarray or None
        Pixels that are neither an instance nor background (PASCAL VOC's void, 255: object
        outlines and unclear regions): evaluation takes them out of predicted masks before
        matching (`napari_prm.evaluate.InstanceMatcher.add_instances`), so that they count
        for and against no prediction. None: every pixel counts.
    """

    masks: np.ndarray
    class_indices: np.ndarray
    iscrowd: np.ndarray
    ignore: np.ndarray | None = None

    def __repr__(self) -> str:
        from ._text import fields_repr

        return fields_repr(self)


@dataclass(repr=False, eq=False)
class VocAnnotations:
    """What a PASCAL VOC devkit says of a dataset's images (`from_voc`), one entry per image.

    Attributes
    ----------
    root : Path
        The devkit's year folder (``VOCdevkit/VOC2012``).
    objects : list of tuple of (str, bool)
        Each image's objects as its ``Annotations/<id>.xml`` lists them: ``(name, difficult)``.
    segmentations : list of (Path, Path) or None
        Each image's ``SegmentationObject/<id>.png`` and ``SegmentationClass/<id>.png``, None
        for an image the devkit has no segmentation of.
    include_difficult : bool
        Whether objects marked ``difficult`` alone make a label.
    """

    root: Path
    objects: list[tuple[tuple[str, bool], ...]]
    segmentations: list[tuple[Path, Path] | None]
    include_difficult: bool = True

    def __repr__(self) -> str:
        from ._text import plural

        masked = sum(s is not None for s in self.segmentations)
        return (f"VocAnnotations(root={str(self.root)!r}, {plural(len(self.objects), 'image')}, "
                f"{masked} segmented, include_difficult={self.include_difficult})")

    def subset(self, indices: Sequence[int]) -> VocAnnotations:
        """The annotations of the images at ``indices``, in that order (`LabeledImageDataset.subset`).

        Parameters
        ----------
        indices : sequence of int
            Image indices.
        """
        return replace(self, objects=[self.objects[i] for i in indices],
                       segmentations=[self.segmentations[i] for i in indices])

    def names(self) -> list[str]:
        """The classes it knows: the 20 VOC classes in PASCAL VOC's spelling, then the other
        names its XML files use (a devkit of other classes), sorted."""
        used = {name for objects in self.objects for name, _ in objects}
        return [*_VOC_OWN_NAMES, *sorted(used - set(_VOC_OWN_NAMES))]

    def label(self, index: int, name: str) -> bool:
        """Whether image ``index`` shows class ``name`` (an object of it not marked difficult,
        or any with ``include_difficult``).

        Parameters
        ----------
        index : int
            The image's index.
        name : str
            A class name as the devkit writes it.
        """
        return any(n == name and (self.include_difficult or not difficult) for n, difficult in self.objects[index])


class UnreadableImage(ValueError):
    """A dataset's image file that cannot be read or used; its message names the file and where
    the dataset declares it. A ValueError, as every reader failure is the user's bad file."""


@dataclass(repr=False, eq=False)
class LabeledImageDataset:
    """Images with multi-hot image-level labels.

    Attributes
    ----------
    image_paths : list of Path
    labels : (N, C) float32 ndarray
        1 where the image shows the class, else 0.
    class_names : list of str
        Column order of ``labels``; saved with a trained model.
    origins : list of str
        Where each image was declared (``file:line`` for CSVs), for error messages.
    source : str
        The file or folder the dataset came from.
    coco : pycocotools.coco.COCO or None
        The annotation handle of a COCO dataset (gives instance masks).
    image_ids : list of int or None
        COCO image id of each image.
    category_ids : list of int or None
        COCO category id of each class.
    include_crowd : bool
        Whether crowd-only annotations count as labels (COCO).
    voc : VocAnnotations or None
        The annotations of a PASCAL VOC devkit dataset (gives instance masks).
    warnings : list of str
        What loading left out (files that are not images) or found suspicious (a class
        of one image named like another: a label typo?); the command line prints them.
    channels : list of int or None
        The channels of multichannel images read as the network's red, green and blue
        (`napari_prm.io.read_image`'s ``channels``); None reads each image as it is.
        Training records them in the model (``model.settings["channels"]``).
    """

    image_paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    origins: list[str] = field(default_factory=list)
    source: str = ""
    coco: object = None
    image_ids: list[int] | None = None
    category_ids: list[int] | None = None
    include_crowd: bool = False
    voc: VocAnnotations | None = None
    warnings: list[str] = field(default_factory=list)
    channels: list[int] | None = None

    def __post_init__(self):
        self.channels = checked_channels(self.channels)
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(len(self.image_paths), len(self.class_names))
        if not self.origins:
            self.origins = [str(p) for p in self.image_paths]

    def __repr__(self) -> str:
        from ._text import fields_repr

        return fields_repr(self)

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def has_masks(self) -> bool:
        """Whether instance masks are available: a COCO dataset with segmentations (one whose
        annotations carry none, boxes only say, has image-level labels only), or a PASCAL VOC
        dataset with a segmentation of at least one image (see :meth:`images_without_masks`)."""
        if self.voc is not None:
            return any(s is not None for s in self.voc.segmentations)
        return self.coco is not None and any("segmentation" in a for a in self.coco.anns.values())

    def images_without_masks(self) -> list[int]:
        """The indices of the images that have no instance masks in a dataset that has some
        (:attr:`has_masks`): a PASCAL VOC image without ``SegmentationObject/<id>.png``.
        Evaluation leaves them out. Empty for other datasets (a COCO image without
        annotations has no instances: it is evaluated)."""
        if self.voc is None:
            return []
        return [i for i, s in enumerate(self.voc.segmentations) if s is None]

    def read_image(self, index: int) -> np.ndarray:
        """The image as `napari_prm.io.read_image` reads it (gray, RGB or RGBA; its dtype), of
        :attr:`channels` when they are set.

        Parameters
        ----------
        index : int
            Position in ``image_paths``.

        Returns
        -------
        (H, W) or (H, W, C) ndarray

        Raises
        ------
        UnreadableImage
            A ValueError: the file cannot be read; names the file and where it was declared.
        """
        path = self.image_paths[index]
        try:
            return read_image(path, channels=self.channels)
        except ValueError as error:  # any reader failure is the same user error: a bad file
            reason = str(error).removeprefix(f"cannot read image {path}: ")
            raise UnreadableImage(f"cannot read image {path} (declared at {self.origins[index]}): {reason}") from error

    def with_model_channels(self, recorded: Sequence[int] | None) -> LabeledImageDataset:
        """This dataset, reading the channels a model was trained on unless it has :attr:`channels` of its own.

        Calibration, evaluation and refinement read images as predict does.

        Parameters
        ----------
        recorded : sequence of int or None
            The model's channels, ``model.settings.get("channels")``.

        Returns
        -------
        LabeledImageDataset
            Itself when it has channels, or when ``recorded`` is None; else a copy reading
            ``recorded``.
        """
        if self.channels is not None or recorded is None:
            return self
        return replace(self, channels=checked_channels(recorded))

    def read_rgb(self, index: int) -> np.ndarray:
        """The image as RGB floats, as the network and the proposals take it.

        Parameters
        ----------
        index : int
            Position in ``image_paths``.

        Returns
        -------
        (H, W, 3) float32 ndarray
            In [0, 1] (see `napari_prm.io.as_rgb_float`).

        Raises
        ------
        UnreadableImage
            The file cannot be read or its values cannot be used (NaN, too small).
        """
        image = self.read_image(index)
        try:
            return as_rgb_float(image)
        except ValueError as error:
            raise UnreadableImage(f"cannot use image {self.image_paths[index]} "
                             f"(declared at {self.origins[index]}): {error}") from error

    def instances(self, index: int) -> GroundTruth:
        """Ground-truth instance masks of image ``index`` (COCO and PASCAL VOC datasets only).

        Parameters
        ----------
        index : int
            Position in ``image_paths``.

        Returns
        -------
        GroundTruth
            Of the dataset's classes only.

        Raises
        ------
        ValueError
            The dataset has no instance masks (a folder per class, a CSV), or the image's are
            malformed (naming the file or the JSON's image id).
        """
        if self.voc is not None:
            return self._voc_instances(index)
        if self.coco is None:
            raise ValueError(f"dataset {self.source} has no instance masks (only COCO JSON and PASCAL VOC "
                             "datasets do)")
        from .masks import decode_rle, segmentation_to_rle

        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        where = f"{self.source} (image id {image_id})"
        try:
            height, width = (check.positive_int(key, info.get(key)) for key in ("height", "width"))
        except ValueError as error:
            raise ValueError(f"{where}: the image entry needs its size: {error}") from None
        class_of = {cat: i for i, cat in enumerate(self.category_ids)}
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if a["category_id"] in class_of]
        masks = np.zeros((len(anns), height, width), dtype=bool)
        for k, ann in enumerate(anns):
            if "segmentation" not in ann:
                raise ValueError(f"{where}: annotation id {ann.get('id')} has no 'segmentation' "
                                 "(evaluation needs instance masks)")
            try:
                masks[k] = decode_rle(segmentation_to_rle(ann["segmentation"], height, width))
            except ValueError as error:
                raise ValueError(f"{where}: annotation id {ann.get('id')}: {error}") from None
        return GroundTruth(
            masks=masks,
            class_indices=np.array([class_of[a["category_id"]] for a in anns], dtype=np.int64),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        )

    def _voc_instances(self, index: int) -> GroundTruth:
        """A PASCAL VOC image's instances (`read_voc_segmentation`); value 255 is void
        (:attr:`GroundTruth.ignore`). Instances of classes the dataset lacks are left out."""
        if self.voc.segmentations[index] is None:
            raise ValueError(f"image {self.image_paths[index]} (declared at {self.origins[index]}) has no instance "
                             f"masks: no PNG of it in {self.voc.root / 'SegmentationObject'}")
        objects, names = read_voc_segmentation(*self.voc.segmentations[index])
        column = {name: i for i, name in enumerate(self.class_names)}
        masks, class_indices = [], []
        for value, voc_name in names.items():
            name = class_in(voc_name, column)
            if name is not None:
                masks.append(objects == value)
                class_indices.append(column[name])
        return GroundTruth(masks=np.array(masks, dtype=bool).reshape((-1,) + objects.shape),
                           class_indices=np.array(class_indices, dtype=np.int64),
                           iscrowd=np.zeros(len(masks), dtype=bool), ignore=objects == VOC_VOID)

    def subset(self, indices: Sequence[int]) -> LabeledImageDataset:
        """The images at ``indices`` (same classes).

        Parameters
        ----------
        indices : sequence of int
            Image indices; they may repeat.
        """
        indices = [int(i) for i in indices]
        return replace(
            self,
            image_paths=[self.image_paths[i] for i in indices],
            labels=self.labels[indices],
            origins=[self.origins[i] for i in indices],
            image_ids=None if self.image_ids is None else [self.image_ids[i] for i in indices],
            voc=None if self.voc is None else self.voc.subset(indices),
        )

    def split(self, fraction: float, *, seed: int = 0, keep_every_class: bool = True,
              stratify: bool = False) -> tuple[LabeledImageDataset, LabeledImageDataset]:
        """Random ``(train, validation)`` split with ``fraction`` of the images held out.

        :meth:`held_out_size` images are held out (at least one, and one fewer than all,
        whenever ``0 < fraction < 1``), except that an image is never held out when that
        leaves one of its classes without a training image: such an image is swapped for a
        training image whose classes all have another training image (a split in which every
        class already has a training image is the plain random one). When too few such images
        exist, fewer are held out, and when none does (e.g. 3 images of 3 classes) none is:
        the validation part is then empty.

        Parameters
        ----------
        fraction : float
            The share of images to hold out, in (0, 1); a dataset of at least 2 images.
        seed : int
            Seed of the random order.
        keep_every_class : bool
            False gives the plain random split, the one ``train`` made before this rule (it
            may hold out the only image of a class).
        stratify : bool
            Hold out images by class (image-level labels), as ``train`` does
            (`napari_prm.train.training_split`): first one image of each class with at least two
            images, the rarest classes first, while the held-out count allows, then, one at a
            time, an image of the class (or of the images of no class) furthest below its share
            of the held-out images; each class's first image in the seed's random order. A random
            split of 4 'round' and 4 'long' images could hold out 2 'round' ones, so that no
            class's validation AP was defined. False: the random order alone.

        Returns
        -------
        train, validation : LabeledImageDataset
        """
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1); got {fraction}")
        if len(self) < 2:
            raise ValueError(f"cannot split dataset {self.source}: it has {len(self)} image(s)")
        order = np.random.default_rng(seed).permutation(len(self))
        held_out = self.held_out_size(fraction)
        if stratify:
            val = self._stratified_held_out(order, held_out, keep_every_class)
            return self.subset(np.setdiff1d(np.arange(len(self)), val)), self.subset(np.sort(val))
        train, val = list(order[held_out:]), list(order[:held_out])
        if keep_every_class:
            train, val = self._keep_classes_in_training(train, val)
        return self.subset(np.sort(train)), self.subset(np.sort(val))

    def held_out_size(self, fraction: float) -> int:
        """How many images :meth:`split` holds out when every class keeps a training image
        anyway: ``fraction`` of them, at least one and at most all but one.

        Parameters
        ----------
        fraction : float
            The share of images to hold out.
        """
        return min(max(int(round(fraction * len(self))), 1), len(self) - 1)

    def _stratified_held_out(self, order: np.ndarray, size: int, keep_every_class: bool) -> list[int]:
        """Up to ``size`` image indices to hold out, by class (see :meth:`split`'s ``stratify``)."""
        labels = self.labels > 0
        # per image in ``order``: its classes, and a last column for the images of no class
        strata = np.asfortranarray(np.concatenate([labels, ~labels.any(1, keepdims=True)], axis=1)[order])
        shown = strata[:, :-1]
        totals = strata.sum(0)
        free = np.ones(len(order), dtype=bool)
        held_counts = np.zeros(strata.shape[1], dtype=np.int64)
        done = totals == 0  # strata with no image left to hold out
        held: list[int] = []
        while len(held) < size and not done.all():
            allowed = free
            if keep_every_class:  # never the last training image of a class
                last = totals[:-1] - held_counts[:-1] < 2
                if last.any():
                    allowed = free & ~shown[:, last].any(1)
            first = ~done & (held_counts == 0) & (totals >= 2)
            first[-1] = False  # the images of no class: by their share only
            if first.any():  # a class none of whose images is held out yet: the rarest first
                stratum = int(np.flatnonzero(first)[np.argmin(totals[first])])
            else:  # the class furthest below its share
                stratum = int(np.argmax(np.where(done, -np.inf, totals * (len(held) + 1) / len(order) - held_counts)))
            hits = allowed & strata[:, stratum]
            if not hits.any():
                done[stratum] = True
                continue
            position = int(np.argmax(hits))
            free[position] = False
            held_counts += strata[position]
            held.append(int(order[position]))
        return held

    def _keep_classes_in_training(self, train: list[int], val: list[int]) -> tuple[list[int], list[int]]:
        """Move held-out images that are the only ones of a class into ``train`` and refill
        ``val`` (up to its size) with training images that no class needs; ``val`` may end up
        smaller, or empty."""
        labels = self.labels > 0
        counts = labels[train].sum(0)
        if not (labels.any(0) & (counts == 0)).any():
            return train, val  # every class trains: the plain random split
        size = len(val)
        for index in list(val):
            if (labels[index] & (counts == 0)).any():
                val.remove(index)
                train.append(index)
                counts = counts + labels[index]
        for index in list(train):
            if len(val) == size:
                break
            if (counts[labels[index]] >= 2).all():
                train.remove(index)
                val.append(index)
                counts = counts - labels[index]
        return train, val

    def untrained_classes(self, train: LabeledImageDataset) -> list[str]:
        """The classes with a positive image here but none in ``train`` (a part of this dataset).

        Parameters
        ----------
        train : LabeledImageDataset
            The training part, with the same classes.
        """
        return [c for c, everywhere, trained in zip(self.class_names, self.labels.sum(0), train.labels.sum(0))
                if everywhere > 0 and trained == 0]

    def with_classes(self, class_names: str | Sequence[str], *, drop_unlabeled: bool = False) -> LabeledImageDataset:
        """The same images relabelled with ``class_names`` (a subset or reordering).

        Parameters
        ----------
        class_names : str or sequence of str
            One class alone (``"cat"``), or several. Every name must be one of this dataset's classes or, for a COCO
            dataset, one of its file's categories (labelled from its annotations), or, for a
            PASCAL VOC dataset, one of the 20 VOC classes or a name its XML files use. A VOC
            class the dataset names by PASCAL VOC's or COCO's other name (``motorbike`` for
            ``motorcycle``: `VOC_SPELLINGS`) is that class, under the name asked for:
            a built-in model's (COCO's) names fit a dataset in VOC's spelling.
        drop_unlabeled : bool
            Drop images that show none of ``class_names``.
        """
        if isinstance(class_names, str):  # one class, as predict's classes= takes it (not 'c', 'a', 't')
            class_names = [class_names]
        class_names = [str(c) for c in class_names]
        coco_ids = {} if self.coco is None else {c["name"]: c["id"] for c in self.coco.cats.values()}
        known = {*self.class_names, *coco_ids, *([] if self.voc is None else self.voc.names())}
        sources = {c: class_in(c, known) for c in class_names}
        missing = [c for c in class_names if sources[c] is None]
        if missing:
            # a 1000-class model on a dataset of three classes misses 997: name the first ten
            # a class asked for is no misspelling of another asked for: imagenet-coco's 'clock' on a dataset
            # of five of its classes was "did you mean 'couch'?", a class the model has as well
            raise ValueError(f"unknown class(es) [{first_names(map(repr, missing))}] for dataset {self.source}; "
                             f"it has {self.class_names}{did_you_mean(missing, known - set(class_names))}")
        columns = [self._label_column(sources[c], coco_ids) for c in class_names]
        relabelled = replace(
            self,
            labels=np.stack(columns, axis=1) if columns else np.zeros((len(self), 0), np.float32),
            class_names=class_names,
            category_ids=None if self.coco is None else [self._category_id(sources[c], coco_ids) for c in class_names],
        )
        if drop_unlabeled:
            relabelled = relabelled.subset(np.flatnonzero(relabelled.labels.sum(1) > 0))
        return relabelled

    def labels_outside(self, class_names: Sequence[str]) -> dict[str, list[str]]:
        """The labels of this dataset that name none of ``class_names`` (by `class_in`: a VOC class
        in its other spelling is its class), each with where its images are declared (``origins``:
        a CSV's ``file:line``), for the labels an image shows; a label no image shows is left out.

        `with_classes` drops such labels: an image showing only them becomes one of none of
        ``class_names``. `check_labels_known` refuses them.

        Parameters
        ----------
        class_names : sequence of str
            The classes asked for (a model's).
        """
        wanted = {str(c) for c in class_names}
        outside = {}
        for column, name in enumerate(self.class_names):
            rows = np.flatnonzero(self.labels[:, column] > 0)
            if class_in(name, wanted) is None and rows.size:
                outside[name] = [self.origins[int(i)] for i in rows]
        return outside

    def check_labels_known(self, class_names: Sequence[str], *, advice: str = "") -> None:
        """Raise ValueError when an image is labelled with a class that is none of ``class_names``
        (`labels_outside`), naming the labels and where (each image's ``origins``: a CSV's
        ``file:line``), in the words of `from_csv`'s own check (`unknown_classes_message`).

        Parameters
        ----------
        class_names : sequence of str
            The classes the labels must name (a model's).
        advice : str
            Added to the message after ``"; "`` (what to do instead).
        """
        outside = self.labels_outside(class_names)
        if not outside:
            return
        rows = sorted({where for origins in outside.values() for where in origins})
        if len(rows) == 1:
            where = rows[0]
        else:
            named = [f"{name!r} at {first_names(origins, 3)}" for name, origins in outside.items()]
            more = f"; ... ({len(named) - 5} more labels)" if len(named) > 5 else ""
            where = f"{self.source}: {plural(len(rows), 'image')} ({'; '.join(named[:5])}{more})"
        message = unknown_classes_message(where, list(outside), class_names)
        raise ValueError(message + (f"; {advice}" if advice else ""))

    def _category_id(self, name: str, coco_ids: dict[str, int]) -> int:
        """The COCO category of class ``name`` (one relabelled under its other spelling keeps its own)."""
        return self.category_ids[self.class_names.index(name)] if name in self.class_names else coco_ids[name]

    def _label_column(self, name: str, coco_ids: dict[str, int]) -> np.ndarray:
        if name in self.class_names:
            return self.labels[:, self.class_names.index(name)]
        if self.voc is not None:
            return np.array([self.voc.label(i, name) for i in range(len(self))], dtype=np.float32)
        category = coco_ids[name]
        return np.array([any(a["category_id"] == category and (self.include_crowd or not a.get("iscrowd", 0))
                             for a in self.coco.imgToAnns.get(image_id, [])) for image_id in self.image_ids],
                        dtype=np.float32)

    def unreadable_images(self, progress=None) -> list[str]:
        """Each image file that cannot be read, named with where it was declared and why.

        Cheap: headers and ends of the files only, a file decoded only when they look
        wrong (`napari_prm.io.unreadable_images`); ``progress(done, total)`` per file.

        Parameters
        ----------
        progress : callable, optional
            Called as ``progress(done, total)`` after each file.
        """
        return [f"{name}: {reason}" for name, reason in self.unreadable_reasons(progress)]

    def unreadable_reasons(self, progress=None) -> list[tuple[str, str]]:
        """`unreadable_images` as pairs: each unreadable file, named with where it was declared
        (``"<path> (declared at <origin>)"``), and why it cannot be read.

        Parameters
        ----------
        progress : callable, optional
            Called as ``progress(done, total)`` after each file.
        """
        from .io import unreadable_images

        where = {}
        for index, path in enumerate(self.image_paths):
            where.setdefault(path, self.origins[index])
        return [(f"{path} (declared at {where[path]})", reason.removeprefix(f"cannot read image {path}: "))
                for path, reason in unreadable_images(list(where), progress=progress, channels=self.channels)]

    def check_positives(self) -> None:
        """Raise ValueError when the dataset is empty or a class has no positive image."""
        if len(self) == 0:
            raise ValueError(f"dataset {self.source} has no images")
        if not self.class_names:
            raise ValueError(f"dataset {self.source} has no classes: no image is labelled")
        empty = [c for c, n in zip(self.class_names, self.labels.sum(0)) if n == 0]
        if empty:
            raise ValueError(f"class(es) {empty} have no positive image in {self.source}; "
                             "drop them (classes=...) or add images")


def voc_view(dataset: LabeledImageDataset, *, drop_unlabeled: bool = True) -> LabeledImageDataset:
    """The PASCAL VOC classes of a COCO dataset (PRM's label space).

    Keeps those of the 20 VOC classes that the dataset has, in VOC's order
    (a COCO dataset loaded with ``classes=None`` has only the categories that
    occur), by COCO's names or PASCAL VOC's own (``motorbike``, ``tvmonitor``, ...:
    `VOC_SPELLINGS`; the dataset's spelling is kept; a dataset with both spellings of one
    class is refused, ValueError). Images showing none of them are dropped unless
    ``drop_unlabeled=False`` (every VOC image shows at least one); of a PASCAL VOC devkit
    (`from_voc`), images with an object of a VOC class are kept, difficult or not (an image of
    difficult objects only has no label with ``include_difficult=False``, but its instances are
    the devkit's ground truth).

    Parameters
    ----------
    dataset : LabeledImageDataset
        A COCO dataset, or a PASCAL VOC devkit's.
    drop_unlabeled : bool
        Drop the images that show none of the VOC classes kept.
    """
    names = set(dataset.class_names)
    both = [(coco, voc) for coco, voc in _VOC_NAME.items() if coco in names and voc in names]
    if both:  # one of the two would be dropped, and the images labelled only with it lose the class
        pairs = ", ".join(f"{coco!r} and {voc!r}" for coco, voc in both)
        raise ValueError(f"dataset {dataset.source} has one VOC class under two names ({pairs}: COCO's and "
                         "PASCAL VOC's spelling): rename its categories to one spelling")
    classes = [c if c in dataset.class_names else _VOC_NAME.get(c, c) for c in VOC_CLASSES]
    classes = [c for c in classes if c in dataset.class_names]
    if not classes:
        raise ValueError(f"dataset {dataset.source} has none of the VOC classes {list(VOC_CLASSES)}")
    if dataset.voc is None or not drop_unlabeled:
        return dataset.with_classes(classes, drop_unlabeled=drop_unlabeled)
    # a PASCAL VOC image whose objects are all difficult (without include_difficult) has no label but is one of the
    # devkit's images (its instances are evaluated): only images of other classes alone go
    own = set(_VOC_OWN_NAMES)
    return dataset.with_classes(classes).subset(
        [i for i, objects in enumerate(dataset.voc.objects) if any(name in own for name, _ in objects)])


def _quiet_coco(json_path: Path):
    """The COCO file, checked (`_check_coco`) before pycocotools indexes it."""
    import json

    from pycocotools.coco import COCO

    try:
        with open(json_path, encoding="utf-8") as handle:
            dataset = json.load(handle)
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
        raise ValueError(f"cannot read COCO annotations {json_path}: {error}") from error
    _check_coco(dataset, json_path)
    # pycocotools prints progress to stdout; the CLI's output should stay clean.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco = COCO()
            coco.dataset = dataset
            coco.createIndex()
        except Exception as error:
            raise ValueError(f"cannot read COCO annotations {json_path}: {error}") from error
    return coco


def _check_coco(dataset, json_path: Path) -> None:
    """The parts of a COCO file that loading relies on; errors name the file and the item."""
    if not isinstance(dataset, dict):
        raise ValueError(f"COCO file {json_path}: expected a JSON object with 'images', "
                         f"'annotations' and 'categories', got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key, []), list):
            raise ValueError(f"COCO file {json_path}: '{key}' must be a list")
    categories = dataset.get("categories", [])
    if not categories:
        raise ValueError(f"COCO file {json_path} has no categories: there is no class to learn")
    names = {}
    for number, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or not isinstance(category.get("name"), str):
            raise ValueError(f"COCO file {json_path}: category {number} needs an 'id' and a 'name'")
        if category["name"] in names:
            raise ValueError(f"COCO file {json_path}: category name {category['name']!r} is used by "
                             f"ids {names[category['name']]} and {category['id']}")
        names[category["name"]] = category["id"]
    for number, image in enumerate(dataset.get("images", [])):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise ValueError(f"COCO file {json_path}: image {number} needs an 'id' and a 'file_name'")
    # Annotations of images or categories the file does not list are ignored (a subset of a
    # bigger file); an annotation must still say which image and category it belongs to.
    for number, annotation in enumerate(dataset.get("annotations", [])):
        if not isinstance(annotation, dict) or "image_id" not in annotation or "category_id" not in annotation:
            raise ValueError(f"COCO file {json_path}: annotation {number} needs an 'image_id' and a "
                             "'category_id'")


def _default_coco_image_dir(json_path: Path) -> Path:
    # The COCO layout: annotations/instances_<split>.json next to <split>/.
    stem = json_path.stem
    if stem.startswith("instances_"):
        candidate = json_path.parent.parent / stem[len("instances_"):]
        if candidate.is_dir():
            return candidate
    return json_path.parent


def from_coco(
    json_path: PathLike,
    image_dir: PathLike | None = None,
    *,
    classes: None | str | Sequence[str] = None,
    include_crowd: bool = False,
    require_positives: bool = True,
    check_images: bool = True,
) -> LabeledImageDataset:
    """Image-level labels from a COCO "instances" JSON.

    Parameters
    ----------
    json_path : path
    image_dir : path or None
        Folder of the images; None: ``<root>/<split>/`` for
        ``<root>/annotations/instances_<split>.json``, else the JSON's folder.
    classes : None, 'all' or sequence of str
        None: the categories present in at least one image, in category-id
        order; 'all': every category of the file; or these names, in this order.
    include_crowd : bool
        Count crowd-only annotations as labels (off by default: a crowd
        region is not a single instance). Masks of crowd regions are still
        given to evaluation, flagged.
    require_positives : bool
        Raise when a class has no positive image.
    check_images : bool
        Raise when an image file does not exist. Off, the images need not be there (scoring
        predictions already made reads the JSON only); ``read_image`` then fails for them.

    Returns
    -------
    LabeledImageDataset
        With ``coco``, ``image_ids`` and ``category_ids`` set.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise ValueError(f"COCO annotation file {json_path} does not exist")
    coco = _quiet_coco(json_path)
    given_dir = image_dir is not None
    image_dir = Path(image_dir) if given_dir else _default_coco_image_dir(json_path)
    categories = sorted(coco.cats.values(), key=lambda c: c["id"])
    by_name = {c["name"]: c["id"] for c in categories}
    image_ids = sorted(coco.imgs)
    present: dict[int, set[int]] = {i: set() for i in image_ids}
    for ann in coco.anns.values():
        if include_crowd or not ann.get("iscrowd", 0):
            present.setdefault(ann["image_id"], set()).add(ann["category_id"])
    if classes is None:
        used = set().union(*present.values()) if present else set()
        category_ids = [c["id"] for c in categories if c["id"] in used]
    elif isinstance(classes, str) and classes == "all":
        category_ids = [c["id"] for c in categories]
    else:
        if isinstance(classes, str):
            raise ValueError(f"classes must be None, 'all' or a list of names; got {classes!r}")
        unknown = [c for c in classes if c not in by_name]
        if unknown:
            raise ValueError(f"unknown class(es) {unknown} in {json_path}; its categories are {list(by_name)}"
                             f"{did_you_mean(unknown, by_name)}")
        category_ids = [by_name[c] for c in classes]
    if not category_ids:
        raise ValueError(f"COCO file {json_path}: no annotation uses any of its {len(categories)} "
                         "categories, so there is no class to learn")
    id_to_name = {c["id"]: c["name"] for c in categories}
    column = {cat: j for j, cat in enumerate(category_ids)}
    labels = np.zeros((len(image_ids), len(category_ids)), dtype=np.float32)
    paths = []
    missing, listed = [], {}  # every missing image named at once, as a CSV's: a typo'd name is seldom alone
    for row, image_id in enumerate(image_ids):
        file_name = coco.imgs[image_id]["file_name"]
        path = stored_path(image_dir, file_name)
        if check_images and not path.is_file():
            missing.append((path, image_id, _near_name(path, listed)))
        paths.append(path)
        for cat in present.get(image_id, ()):
            if cat in column:
                labels[row, column[cat]] = 1
    if missing:
        hint = "" if given_dir or any(near for *_, near in missing) else (
            f"; images are looked for in {image_dir}: pass their folder as image_dir (the command line's --image-dir)")
        if len(missing) == 1:
            (path, image_id, near), = missing
            raise ValueError(f"image {path} listed in {json_path} (image id {image_id}) does not exist"
                             f"{f'; {near}' if near else ''}{hint}")
        raise ValueError(f"{len(missing)} of the {len(image_ids)} images listed in {json_path} do not exist{hint}: "
                         + first_names(f"{path} (image id {image_id}{f'; {near}' if near else ''})"
                                       for path, image_id, near in missing))
    dataset = LabeledImageDataset(
        image_paths=paths,
        labels=labels,
        class_names=[id_to_name[c] for c in category_ids],
        origins=[f"{json_path} (image id {i})" for i in image_ids],
        source=str(json_path),
        coco=coco,
        image_ids=image_ids,
        category_ids=category_ids,
        include_crowd=include_crowd,
    )
    if len(dataset) == 0:
        raise ValueError(f"COCO file {json_path} lists no images")
    if require_positives:
        dataset.check_positives()
    return dataset


#: The value of PASCAL VOC's segmentation PNGs for void (object outlines, unclear regions).
VOC_VOID = 255


def voc_colour_map() -> np.ndarray:
    """PASCAL VOC's colour map: the (256, 3) uint8 RGB colour of each palette index of its
    segmentation PNGs (index 255, void, is (224, 224, 192)).

    Examples
    --------
    >>> voc_colour_map()[[1, 15, 255]].tolist()
    [[128, 0, 0], [192, 128, 128], [224, 224, 192]]
    """
    index = np.arange(256)
    colours = np.zeros((256, 3), np.uint8)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= (((index >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return colours


def _voc_indices(values: np.ndarray, path: PathLike) -> np.ndarray:
    """A VOC segmentation PNG's palette indices: as read, or, for one saved as RGB(A) colours
    (some converters write them so), the index of each pixel's colour in `voc_colour_map`."""
    if values.ndim == 3 and values.shape[-1] in (3, 4):
        rgb = values[..., :3].astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        palette = voc_colour_map().astype(np.int64)
        index_of = {int(code): i for i, code in enumerate((palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2])}
        unique, inverse = np.unique(codes, return_inverse=True)
        unknown = [int(code) for code in unique if int(code) not in index_of]
        if unknown:
            shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:3])
            raise ValueError(f"{path}: an RGB segmentation PNG whose colours are not all PASCAL VOC's colour map "
                             f"({len(unknown)} others: {shown}{', ...' if len(unknown) > 3 else ''}); save it as "
                             "a palette PNG of indices")
        return np.array([index_of[int(code)] for code in unique])[inverse].reshape(codes.shape)
    if values.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D label image (a palette PNG), got shape {values.shape}")
    return values


def read_voc_segmentation(object_path: PathLike, class_path: PathLike) -> tuple[np.ndarray, dict[int, str]]:
    """A PASCAL VOC image's instances from its ``SegmentationObject`` and ``SegmentationClass`` PNGs.

    Parameters
    ----------
    object_path, class_path : path-like
        ``SegmentationObject/<id>.png`` (0 background, 1, 2, ... one value per instance,
        `VOC_VOID` void) and ``SegmentationClass/<id>.png`` (0 background, 1..20 the VOC
        classes in VOC's order, `VOC_VOID` void), read as their palette indices; a PNG saved
        as RGB colours is read through `voc_colour_map`.

    Returns
    -------
    objects : (H, W) int ndarray
        ``SegmentationObject`` as stored (void stays `VOC_VOID`).
    names : dict of int to str
        The PASCAL VOC name (``aeroplane``, ``tvmonitor``) of each instance value, in
        increasing order: the class ``SegmentationClass`` gives its pixels (the most frequent,
        should they disagree).

    Raises
    ------
    ValueError
        Naming the file: not a 2-D label image, the two of different sizes, an instance whose
        pixels are background or void in ``SegmentationClass``, a class beyond the 20.
    """
    from .io.labels import read_label_image

    objects, classes = (_voc_indices(read_label_image(path), path) for path in (object_path, class_path))
    if objects.shape != classes.shape:
        raise ValueError(f"{object_path} is {objects.shape} but {class_path} is {classes.shape}")
    names = {}
    for value in np.setdiff1d(np.unique(objects), [0, VOC_VOID]):
        found = classes[objects == value]
        found = found[(found > 0) & (found != VOC_VOID)]
        if not len(found):
            raise ValueError(f"{object_path}: instance {value} has no class in {class_path} (its pixels are "
                             "background or void there)")
        number = int(np.bincount(found).argmax())
        if number > len(_VOC_OWN_NAMES):
            raise ValueError(f"{class_path}: class {number} is none of the {len(_VOC_OWN_NAMES)} VOC classes "
                             "(1..20 in VOC's order, 0 background, 255 void)")
        names[int(value)] = _VOC_OWN_NAMES[number - 1]
    return objects, names


def is_voc_folder(path: PathLike) -> bool:
    """Whether ``path`` is a PASCAL VOC devkit's year folder (``VOCdevkit/VOC2012``): one
    holding ``JPEGImages/`` and ``Annotations/``.

    Parameters
    ----------
    path : path-like
        A folder.
    """
    path = Path(path)
    return (path / "JPEGImages").is_dir() and (path / "Annotations").is_dir()


def voc_split_root(path: PathLike) -> Path | None:
    """The year folder of a PASCAL VOC split list ``<year>/ImageSets/<task>/<split>.txt``.

    Parameters
    ----------
    path : path-like
        The list; a relative path is taken from the working folder (``val.txt`` given in
        ``ImageSets/Segmentation``, ``../Main/train.txt``).

    Returns
    -------
    Path or None
        Its ``parents[2]`` (absolute when ``path`` does not reach that far up itself), or None
        when ``path`` lies in no devkit's ``ImageSets``.
    """
    path = Path(path)
    for candidate in (path, Path(os.path.abspath(path))):  # abspath: "val.txt", "../Main/train.txt"
        if len(candidate.parents) >= 3 and candidate.parents[1].name == "ImageSets":
            return candidate.parents[2] if is_voc_folder(candidate.parents[2]) else None
    return None


def from_voc(path: PathLike, *, include_difficult: bool = True, require_positives: bool = True) -> LabeledImageDataset:
    """Image-level labels, and instance masks, from a PASCAL VOC devkit (``VOCdevkit/VOC2012``).

    Parameters
    ----------
    path : path-like
        A split list, ``<year>/ImageSets/Segmentation/val.txt`` or ``.../ImageSets/Main/train.txt``
        (an image id a line; a line's further columns, as the per-class lists
        ``Main/<class>_train.txt`` have, are not read), or the year folder itself: then
        every image that has an ``Annotations/<id>.xml``, in id order.
    include_difficult : bool
        Count objects marked ``<difficult>1</difficult>`` as labels (on by default: a difficult
        object is there, only hard to recognise; PASCAL VOC's classification lists mark such an
        image 0, and WILDCAT's training, which PRM's follows, takes 0 as present). Off, a class
        an image shows only as difficult objects is a negative of it, as crowd-only annotations
        of a COCO JSON are. Their instances are evaluated either way: the segmentation PNGs do
        not mark them.
    require_positives : bool
        Raise when a class has no positive image.

    Returns
    -------
    LabeledImageDataset
        With ``voc`` set. Classes are the names the XML files use (PASCAL VOC's own:
        ``aeroplane``, ``tvmonitor``; `LabeledImageDataset.with_classes` takes COCO's names
        of them too), the VOC classes in VOC's order first. Images are ``JPEGImages/<id>.jpg``
        (else the file the XML's ``<filename>`` names there). Instance masks
        (`LabeledImageDataset.instances`) come from ``SegmentationObject/<id>.png`` and
        ``SegmentationClass/<id>.png`` where the devkit has them.

    Raises
    ------
    ValueError
        Naming the file: a list with no images, an id without XML or image, an XML that
        cannot be read or lacks an object's name, one segmentation PNG without the other.
    """
    path = Path(path)
    repeats: list[str] = []
    if path.is_dir():
        if not is_voc_folder(path):
            raise ValueError(f"{path} is no PASCAL VOC year folder: it holds no JPEGImages/ and Annotations/")
        root = path
        ids = sorted(xml.stem for xml in (root / "Annotations").glob("*.xml") if not is_system_file(xml.name))
        origins = [str(root / "Annotations" / f"{i}.xml") for i in ids]
        if not ids:
            raise ValueError(f"PASCAL VOC folder {root}: {root / 'Annotations'} holds no .xml annotation")
    else:
        root = voc_split_root(path)
        if root is None:
            raise ValueError(f"{path} is no PASCAL VOC split list: expected <year>/ImageSets/<task>/<split>.txt in a "
                             "year folder that holds JPEGImages/ and Annotations/")
        if not path.is_file():
            raise ValueError(f"PASCAL VOC split list {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM, as Notepad writes
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read PASCAL VOC split list {path}: {error}") from error
        entries = [(line.split()[0], f"{path}:{number}") for number, line in enumerate(lines, 1) if line.strip()]
        if not entries:
            raise ValueError(f"PASCAL VOC split list {path} lists no images")
        first: dict[str, str] = {}
        for image_id, where in entries:  # lists concatenated (train + val): each image once
            if image_id in first:
                repeats.append(f"{image_id} at line {where.rsplit(':', 1)[1]} (first at line "
                               f"{first[image_id].rsplit(':', 1)[1]})")
            first.setdefault(image_id, where)
        ids, origins = list(first), list(first.values())
    no_xml = [f"{where}: {root / 'Annotations' / f'{i}.xml'}" for i, where in zip(ids, origins)
              if not (root / "Annotations" / f"{i}.xml").is_file()]
    if no_xml:
        raise ValueError(f"{plural(len(no_xml), 'image id')} of {path} {'has' if len(no_xml) == 1 else 'have'} no "
                         f"annotation file: {first_names(no_xml, 3)}")
    objects, paths, segmentations, no_image = [], [], [], []
    for image_id, where in zip(ids, origins):
        xml = root / "Annotations" / f"{image_id}.xml"
        found, file_name = _voc_objects(xml)
        objects.append(found)
        image = root / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file() and file_name and (root / "JPEGImages" / file_name).is_file():
            image = root / "JPEGImages" / file_name
        if not image.is_file():
            no_image.append(f"{where}: {image}")
        paths.append(image)
        pair = (root / "SegmentationObject" / f"{image_id}.png", root / "SegmentationClass" / f"{image_id}.png")
        if pair[0].is_file() != pair[1].is_file():
            have, lack = pair if pair[0].is_file() else pair[::-1]
            raise ValueError(f"PASCAL VOC folder {root}: {have} has no companion {lack} (an instance's class is "
                             "read from SegmentationClass, its pixels from SegmentationObject)")
        segmentations.append(pair if pair[0].is_file() else None)
    if no_image:
        raise ValueError(f"{plural(len(no_image), 'image')} of {path} {'does' if len(no_image) == 1 else 'do'} not "
                         f"exist: {first_names(no_image, 3)}")
    voc = VocAnnotations(root=root, objects=objects, segmentations=segmentations, include_difficult=include_difficult)
    used = {name for index in range(len(ids)) for name, _ in objects[index] if voc.label(index, name)}
    class_names = [name for name in voc.names() if name in used]
    if not class_names:
        raise ValueError(f"PASCAL VOC dataset {path}: no image has an object" +
                         ("" if include_difficult else " not marked difficult") + ", so there is no class to learn")
    labels = np.array([[voc.label(i, name) for name in class_names] for i in range(len(ids))], dtype=np.float32)
    dataset = LabeledImageDataset(image_paths=paths, labels=labels, class_names=class_names, origins=origins,
                                  source=str(path), voc=voc)
    if repeats:
        dataset.warnings.append(f"{path} lists {plural(len(repeats), 'image id')} again, each image taken once "
                                f"(a repeat would count twice in evaluation, and could be held out and trained "
                                f"on): {first_names(repeats, 3)}")
    dataset.warnings += label_typos(dataset, known=_VOC_OWN_NAMES)
    if require_positives:
        dataset.check_positives()
    return dataset


def _voc_objects(xml: Path) -> tuple[tuple[tuple[str, bool], ...], str | None]:
    """The ``(name, difficult)`` of each ``<object>`` of a PASCAL VOC XML, and its ``<filename>``."""
    from xml.etree import ElementTree

    try:
        tree = ElementTree.parse(xml)
    except (ElementTree.ParseError, OSError) as error:
        raise ValueError(f"cannot read PASCAL VOC annotation {xml}: {error}") from error
    found = []
    for number, item in enumerate(tree.getroot().iter("object"), 1):
        name = (item.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"PASCAL VOC annotation {xml}: object {number} has no <name>")
        difficult = (item.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise ValueError(f"PASCAL VOC annotation {xml}: object {number} ({name}) has <difficult>{difficult}"
                             "</difficult>; expected 0 or 1")
        found.append((name, difficult == "1"))
    file_name = (tree.getroot().findtext("filename") or "").strip()
    return tuple(found), file_name or None


def voc_image_table(dataset: LabeledImageDataset) -> dict:
    """A PASCAL VOC dataset's images and classes as a COCO JSON lists them, to match files of its
    images as a COCO JSON's are matched (`napari_prm.io.match_exports`: predict's exports).

    Parameters
    ----------
    dataset : LabeledImageDataset
        Of a PASCAL VOC devkit (`from_voc`).

    Returns
    -------
    dict
        ``images``: per image, in the dataset's order, ``id`` (its index + 1), ``file_name`` (its
        path in the year folder, ``JPEGImages/2007_000033.jpg``), ``height`` and ``width`` (from the
        file's header; the image is not decoded). ``categories``: ``id`` (1, 2, ...) and ``name``
        of the dataset's classes, then of the other classes it knows (`VocAnnotations.names`,
        the other spelling of a class it has left out): those `LabeledImageDataset.with_classes` takes.

    Raises
    ------
    ValueError
        The dataset is no PASCAL VOC dataset; `UnreadableImage`: an image's header cannot be read.
    """
    from PIL import Image

    if dataset.voc is None:
        raise ValueError(f"dataset {dataset.source} is no PASCAL VOC dataset (see from_voc)")
    images = []
    for index, path in enumerate(dataset.image_paths):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
            raise UnreadableImage(f"cannot read image {path} (declared at {dataset.origins[index]}): "
                                  f"{error}") from error
        images.append({"id": index + 1, "file_name": path.relative_to(dataset.voc.root).as_posix(),
                       "height": height, "width": width})
    names = [*dataset.class_names,
             *(name for name in dataset.voc.names() if class_in(name, dataset.class_names) is None)]
    return {"images": images, "categories": [{"id": k, "name": name} for k, name in enumerate(names, 1)]}


def from_folders(root: PathLike, *, require_positives: bool = True) -> LabeledImageDataset:
    """One label per image from a folder per class: ``root/<class>/<image>``.

    Classes are the sub-folder names in Unicode's composed form (`napari_prm._classes.composed`:
    a folder macOS named ``carre\u0301`` is class ``carr\u00e9``; two folders of one name in both
    forms are one class, with a warning), sorted. A class folder's images may lie in sub-folders
    of it (``root/<class>/2023/<image>``), as torchvision's ``ImageFolder`` reads them.
    Hidden files and folders, and the files file browsers leave (``Thumbs.db``,
    ``desktop.ini``), are skipped; other files that are not images (suffixes
    ``IMAGE_SUFFIXES``) and files in no class folder are left out and named in the
    dataset's ``warnings``.

    Parameters
    ----------
    root : path-like
        The folder of class folders.
    require_positives : bool
        Refuse (``ValueError``) a class folder that holds no image; False keeps it as a class
        without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist")
    class_dirs = sorted_paths(d for d in root.iterdir() if d.is_dir() and not is_system_file(d.name))
    devkits = [d for d in [root, *class_dirs] if is_voc_folder(d)]
    if devkits:  # its JPEGImages, segmentation PNGs, ... are no classes, nor are its year folders
        raise ValueError(f"{root} is no folder per class: {devkits[0]} is a PASCAL VOC devkit's year folder; give it "
                         f"(or a split list, {devkits[0] / 'ImageSets' / 'Segmentation' / 'val.txt'}) as the dataset")
    if not class_dirs:
        raise ValueError(f"dataset folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    left_out = [p for p in root.iterdir() if p.is_file() and not is_system_file(p.name)]
    # a folder name in another Unicode form (macOS's decomposed 'carre\u0301') is the class as typed ('carr\u00e9')
    class_names = sorted({composed(d.name) for d in class_dirs})
    paths, rows = [], []
    for class_dir in class_dirs:
        j = class_names.index(composed(class_dir.name))
        files = sorted_paths(_visible_files(class_dir))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        left_out += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images and require_positives:
            raise ValueError(f"class {class_dir.name!r} has no positive image: folder {class_dir} holds no image "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        paths += images
        rows += [j] * len(images)
    if not paths:
        raise ValueError(f"dataset folder {root} holds no images")
    labels = np.zeros((len(paths), len(class_names)), dtype=np.float32)
    labels[np.arange(len(paths)), rows] = 1
    dataset = LabeledImageDataset(image_paths=paths, labels=labels, class_names=class_names, source=str(root))
    for name in class_names:
        folders = [d.name for d in class_dirs if composed(d.name) == name]
        if len(folders) > 1:  # possible on Linux, whose names keep their form
            dataset.warnings.append(f"{root}: folders {', '.join(map(repr, folders))} are one class {name!r} "
                                    "(the same name in two Unicode forms): their images are that class")
    if left_out:
        names = sorted(p.relative_to(root).as_posix() for p in left_out)
        dataset.warnings.append(
            f"{root}: left out {plural(len(names), 'file')} that "
            f"{'is not an image' if len(names) == 1 else 'are not images'} ({', '.join(IMAGE_SUFFIXES)}) or "
            f"lie{'s' if len(names) == 1 else ''} in no class folder: {first_names(names)}")
    dataset.warnings += label_typos(dataset)
    return dataset


def _visible_files(folder: Path) -> list[Path]:
    """The files under ``folder``, at any depth, but none that is hidden or inside a hidden folder,
    nor a file browser's (``Thumbs.db``, ``desktop.ini``: `napari_prm.io.paths.is_system_file`)."""
    files = []
    for path in folder.iterdir():
        if is_system_file(path.name):
            continue
        if path.is_dir():
            files += _visible_files(path)
        elif path.is_file():
            files.append(path)
    return files


def label_typos(dataset: LabeledImageDataset, *, known: Sequence[str] = ()) -> list[str]:
    """Warnings about class names that look like one class written two ways.

    Two names equal but for case, or a class of one image whose name is one edit (a letter
    added, dropped, changed or two swapped, ignoring case) from another class's name: most
    likely a typo in a CSV or a folder name, which makes a class of its own. Two names both
    ``known`` (PASCAL VOC's ``cat`` and ``car``) are never one class written two ways.

    Parameters
    ----------
    dataset : LabeledImageDataset
        The dataset whose classes are compared.
    known : sequence of str
        Class names known to be distinct classes (e.g. PASCAL VOC's); a pair of them is never reported.
    """
    counts = dict(zip(dataset.class_names, dataset.labels.sum(0).astype(int)))
    names = list(counts)
    known = set(known)
    warnings, reported = [], {frozenset((a, b)) for a in names for b in names if a in known and b in known}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a.casefold() == b.casefold() and frozenset((a, b)) not in reported:
                warnings.append(f"classes {a!r} and {b!r} differ only in case: one class written two ways?")
                reported.add(frozenset((a, b)))
    for name in names:
        if counts[name] != 1:
            continue
        for other in names:
            pair = frozenset((name, other))
            if other != name and pair not in reported and _one_edit_apart(name.casefold(), other.casefold()):
                where = dataset.origins[int(np.flatnonzero(dataset.labels[:, names.index(name)])[0])]
                warnings.append(f"class {name!r} has 1 image ({where}): a typo of {other!r} "
                                f"({plural(counts[other], 'image')})?")
                reported.add(pair)
    return warnings


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter added, dropped or changed, or two neighbours swapped."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        differ = [k for k in range(len(a)) if a[k] != b[k]]
        return len(differ) == 1 or (len(differ) == 2 and differ[1] == differ[0] + 1
                                    and a[differ[0]] == b[differ[1]] and a[differ[1]] == b[differ[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:k] + long[k + 1:] == short for k in range(len(long)))


def unknown_classes_message(where: str, unknown: Sequence[str], classes: Sequence[str]) -> str:
    """The one wording of labels that name no class expected: ``"<where>: unknown class(es) [...];
    expected one of [...]"`` and a did-you-mean hint (`from_csv` with ``classes``,
    `LabeledImageDataset.check_labels_known`).

    Parameters
    ----------
    where : str
        Where the labels are (``file:line``).
    unknown : sequence of str
        The labels.
    classes : sequence of str
        The classes expected.
    """
    return (f"{where}: unknown class(es) {list(unknown)}; expected one of {list(classes)}"
            f"{did_you_mean(unknown, classes)}")


def from_csv(
    path: PathLike,
    image_root: PathLike | None = None,
    *,
    classes: Sequence[str] | None = None,
    require_positives: bool = True,
) -> LabeledImageDataset:
    """Multi-labels from a CSV with a header ``image,labels``.

    ``labels`` holds ``;``-separated class names (empty: an image with none
    of the classes), read in Unicode's composed form (`napari_prm._classes.composed`: ``carr\u00e9``
    and ``carre\u0301`` are one class). Image paths are relative to ``image_root`` (default: the
    CSV's folder) unless absolute. An image listed on several lines is one
    image with the labels of all of them (a warning names the lines).

    Parameters
    ----------
    path : path-like
        The CSV file.
    image_root : path-like, optional
        The folder relative image paths start from (None: the CSV's folder).
    classes : sequence of str or None
        The class names in order; None: every name used, sorted. With a
        list, a name outside it is an error naming the line; a label in another Unicode form
        of a name is that class.
    require_positives : bool
        Refuse a class that no image shows (a ``classes`` name no row uses).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file {path} does not exist")
    given_root = image_root is not None
    image_root = Path(image_root) if given_root else path.parent
    entries: list[tuple[Path, list[str], str]] = []
    warnings, missing, commas = [], [], []
    listed: dict[Path, list[str]] = {}  # a folder's file names, read once for the missing images' hints
    given = {} if classes is None else {composed(c): c for c in classes}  # as `classes` spells them
    content = path.read_bytes()
    try:
        text = content.decode("utf-8-sig")  # a byte-order mark (Excel's 'CSV UTF-8') is fine
    except UnicodeDecodeError as error:
        line = content[:error.start].count(b"\n") + 1
        raise ValueError(f"CSV file {path} is not UTF-8 text (line {line}): save it as UTF-8 (Excel: "
                         "'CSV UTF-8')") from error
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "labels"]:
            hint = (": separate the two columns by ',' (the labels by ';')"
                    if header and header[0].strip().lower().startswith(("image;", "image\t")) else
                    _one_hot_hint(header, reader))
            raise ValueError(f"{path}:1: expected the header 'image,labels'; got {header}{hint}")
        # columns after 'labels' that the header names (a spreadsheet's notes) are not read
        columns = 2 + sum(1 for name in header[2:] if name.strip())
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or all(not cell.strip() for cell in row):
                continue
            while len(row) > 2 and not row[-1].strip():  # empty cells a spreadsheet adds at the end
                row = row[:-1]
            if len(row) < 2 or len(row) > columns:
                hint = f": labels are separated by ';' ({';'.join(c.strip() for c in row[1:])})" if len(row) > 2 else ""
                raise ValueError(f"{where}: expected {columns} columns "
                                 f"({','.join(h.strip() for h in header[:columns])}); got {len(row)}: {row}{hint}")
            image = stored_path(image_root, row[0].strip())
            if not image.is_file():
                missing.append((f"{where}: image {image}", _near_name(image, listed)))
                continue
            # one class whatever the Unicode form of its name's letters ('carr\u00e9', 'carre\u0301')
            names = [composed(n.strip()) for n in row[1].split(";") if n.strip()]
            names = [given.get(n, n) for n in names]
            commas += [(reader.line_num, n) for n in names if "," in n]
            if classes is not None:
                unknown = [n for n in names if n not in classes]
                if unknown:
                    raise ValueError(unknown_classes_message(where, unknown, classes))
            entries.append((image, names, where))
    except csv.Error as error:
        raise ValueError(f"cannot read CSV file {path}: {error}") from error
    if missing:  # every one named at once: a typo'd name is seldom alone
        hint = ("" if entries or given_root else
                f"; image paths are relative to the CSV's folder {image_root}: pass the images' folder as "
                "image_root (the command line's --image-dir)")
        if len(missing) == 1:
            (text, near), = missing
            raise ValueError(f"{text} does not exist{f'; {near}' if near else ''}{hint}")
        raise ValueError(f"{len(missing)} of the {len(missing) + len(entries)} images listed in {path} do not "
                         f"exist{hint}: {first_names(text + (f' ({near})' if near else '') for text, near in missing)}")
    if commas:  # one warning, not one a line
        line, label = commas[0]
        joined = ";".join(part.strip() for part in label.split(","))
        lines = first_names(str(number) for number, _ in commas)
        warnings.append(f"{path}:{line}: label {label!r} holds a ',': labels are separated by ';' ({joined})"
                        if len(commas) == 1 else
                        f"{path}: {len(commas)} labels hold a ',' (lines {lines}; line {line}: {label!r}): labels "
                        f"are separated by ';' ({joined})")
    if not entries:
        raise ValueError(f"CSV file {path} lists no images")
    entries, repeats = _merged_rows(entries)
    if repeats:  # one row per (image, class), or rows pasted twice: trained twice, held out and trained on
        warnings.append(f"{path} lists {plural(len(repeats), 'image')} again, each image taken once with the "
                        f"labels of all its lines (a repeat would be trained on twice, and could be held out and "
                        f"trained on): {first_names(repeats, 3)}")
    class_names = list(classes) if classes is not None else sorted({n for _, names, _ in entries for n in names})
    column = {c: j for j, c in enumerate(class_names)}
    labels = np.zeros((len(entries), len(class_names)), dtype=np.float32)
    for row, (_, names, _) in enumerate(entries):
        labels[row, [column[n] for n in names]] = 1
    dataset = LabeledImageDataset(image_paths=[e[0] for e in entries], labels=labels, class_names=class_names,
                                  origins=[e[2] for e in entries], source=str(path), warnings=warnings)
    dataset.warnings += label_typos(dataset)
    if require_positives:
        dataset.check_positives()
    return dataset


def _one_hot_hint(header: list[str] | None, reader) -> str:
    """A label CSV's header ``image,cat,dog`` whose first row's cells after the image are 0 or 1 (one
    column per class, one-hot, as a spreadsheet or pandas' ``get_dummies`` writes it) was refused
    as any other header: the hint names that layout and that row in the form expected
    (``a.png,1,0`` is ``a.png,cat``). "" for another header, or a row of other values."""
    if not header or len(header) < 2 or header[0].strip().lower() != "image":
        return ""
    classes = [name.strip() for name in header[1:]]
    row = next((r for r in reader if r and any(cell.strip() for cell in r)), None)
    if row is None or not all(classes) or len(row) != len(header):
        return ""
    cells = [cell.strip() for cell in row[1:]]
    if not all(cell in ("0", "1") for cell in cells):
        return ""
    labels = ";".join(name for name, cell in zip(classes, cells, strict=True) if cell == "1")
    return (f": this looks like one 0/1 column per class ({first_names(classes)}); write two columns instead, "
            f"the header 'image,labels' and each image's classes separated by ';' (none: empty): line "
            f"{reader.line_num}, {','.join(c.strip() for c in row)}, is {row[0].strip()},{labels}")


def _near_name(image: Path, listed: dict[Path, list[str]]) -> str:
    """A hint for a CSV's missing ``image``: the file of its folder it likely means, one whose
    name differs only in case (a CSV written on Windows or macOS, whose file names ignore case)
    or that adds an image suffix to a name given without one, as ``"x.png does: ..."``; else
    ``""``. ``listed`` caches each folder's file names."""
    folder = image.parent
    if folder not in listed:
        try:
            listed[folder] = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        except OSError:
            listed[folder] = []
    wanted = image.name.lower()
    for name in listed[folder]:
        if name.lower() == wanted:
            return f"{name} does: file names differ in upper and lower case here"
        if Path(name).stem.lower() == wanted and Path(name).suffix.lower() in IMAGE_SUFFIXES:
            return f"{name} does: give the file name with its suffix"
    return ""


def _merged_rows(entries: list[tuple[Path, list[str], str]]) -> tuple[list[tuple[Path, list[str], str]], list[str]]:
    """A label CSV's rows ``(image, labels, 'file:line')`` with each image once (``a.png`` and
    ``./a.png`` are one), holding the labels of all its lines, at its first line; and the
    repeats, each as ``"a.png at line 9 (first at line 2)"``, with the labels taken when a line
    added some."""
    first: dict[Path, int] = {}
    merged: list[tuple[Path, list[str], str]] = []
    repeats: list[str] = []
    for image, names, where in entries:
        key = image.resolve()
        if key not in first:
            first[key] = len(merged)
            merged.append((image, list(names), where))
            continue
        kept = merged[first[key]]
        added = [name for name in names if name not in kept[1]]
        kept[1].extend(added)
        line, first_line = where.rsplit(":", 1)[1], kept[2].rsplit(":", 1)[1]
        repeats.append(f"{image.name} at line {line} (first at line {first_line}"
                       + (f"; labels {';'.join(kept[1])}" if added else "") + ")")
    return merged, repeats


def load_dataset(path: PathLike, image_folder: PathLike | None = None, *, channels: Sequence[int] | None = None,
                 **kwargs) -> LabeledImageDataset:
    """Load a dataset, choosing the format from ``path``.

    Parameters
    ----------
    path : path-like
        A ``.json`` file is COCO (`from_coco`), a ``.csv`` file is a label CSV (`from_csv`), a
        PASCAL VOC year folder (one holding ``JPEGImages/`` and ``Annotations/``) or a ``.txt``
        split list in its ``ImageSets/<task>/`` is PASCAL VOC (`from_voc`), another folder is a
        folder per class (`from_folders`).
    image_folder : path-like, optional
        The folder of a COCO JSON's or a CSV's images (their ``image_dir`` / ``image_root``;
        the command line's ``--image-dir``); refused for a folder per class and a PASCAL VOC
        devkit, which hold their own.
    channels : sequence of 1 to 3 int, optional
        The channels of multichannel images read as the network's red, green and blue
        (`LabeledImageDataset.channels`; the command line's ``--channels``).
    **kwargs
        Keyword arguments of the loader (``include_crowd=``, ``include_difficult=``, ...).

    Returns
    -------
    LabeledImageDataset

    Raises
    ------
    ValueError
        ``path`` does not exist or is of no known format, or ``image_folder`` is given for a
        dataset that holds its images, or is not a folder.
    """
    path = check.path_like("dataset", path)
    voc = is_voc_folder(path) or (path.suffix.lower() == ".txt" and voc_split_root(path) is not None)
    if image_folder is not None and (path.is_dir() or voc):
        kind = "PASCAL VOC dataset" if voc else "folder per class"
        raise ValueError(f"image_folder (the command line's --image-dir) {image_folder} is for a COCO JSON's or a "
                         f"CSV's images: the {kind} {path} holds its own")
    if image_folder is not None:
        if not Path(image_folder).is_dir():  # else each image was named as missing in it
            state = "is not a folder" if Path(image_folder).exists() else "does not exist"
            raise ValueError(f"image_folder (the command line's --image-dir) {image_folder} {state}")
        kwargs["image_dir" if path.suffix.lower() == ".json" else "image_root"] = image_folder
    channels = checked_channels(channels)
    loader = (from_voc if voc else from_folders if path.is_dir() else from_coco if path.suffix.lower() == ".json"
              else from_csv if path.suffix.lower() == ".csv" else None)
    if loader is not None:
        dataset = loader(path, **kwargs)
        dataset.channels = channels
        return dataset
    if not path.exists():
        raise ValueError(f"dataset {path} does not exist")
    raise ValueError(f"cannot tell the dataset format of {path}: expected a COCO .json, a .csv, a PASCAL VOC year "
                     "folder or split list (<year>/ImageSets/<task>/<split>.txt) or a folder per class")


class TrainingImages(torch.utils.data.Dataset):
    """Network inputs and labels for training: resize, optional flip, normalise.

    Items are ``(image (3, h, w) float32 tensor, labels (C,) float32 tensor)``.

    Parameters
    ----------
    dataset : LabeledImageDataset
    input_size : (h, w) or None
        None keeps each image's size (batches of one).
    mean, std : 3 floats
        The backbone's normalisation.
    hflip : bool
        Flip each image horizontally with probability 1/2.
    seed : int
        The flips depend only on ``(seed, epoch, index)``, so a run is
        reproducible with any number of loader workers and after a resume.
    """

    def __init__(self, dataset: LabeledImageDataset, input_size: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], *, hflip: bool = True, seed: int = 0):
        self.dataset = dataset
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.hflip = hflip
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose flips the images get (see ``seed``).

        Parameters
        ----------
        epoch : int
            The epoch about to run.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        from .model.transforms import to_network_input

        tensor = to_network_input(self.dataset.read_rgb(index), self.input_size, self.mean, self.std)[0]
        if self.hflip and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            tensor = tensor.flip(-1)
        return tensor, torch.from_numpy(self.dataset.labels[index])
