"""Corrected instances: the masks a user fixed, as full supervision of the head.

A :class:`Correction` is one image with its label image and the class of each label. They
come from napari Labels layers (:func:`correction_from_layer`: the layer's data and
features), from label images with their instance CSV (``x_labels.tif`` +
``x_instances.csv``, as napari-prm exports them), from a COCO JSON or from a PASCAL VOC
devkit's segmentation PNGs (:func:`load_corrections`).
:func:`match_corrections` pairs them with a dataset's images, e.g. to evaluate a model on
the images a user corrected (:meth:`Correction.instances` gives their ground truth).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import _validate as check
from ..data import GroundTruth
from ..io.coco import coco_to_labels
from ..io.fileset import read_file_set
from ..io.images import IMAGE_SUFFIXES, image_array, plane_count, read_image
from ..io.labels import read_label_image
from ..io.paths import COMPOUND_SUFFIXES, image_stem, stored_path, tree_files
from ..io.tables import UNKNOWN_CLASS, missing_cell, read_instances_csv

LABEL_SUFFIX = "_labels"


def _label_classes(label_classes, source: str) -> dict[int, int]:
    """``label_classes`` as a dict of int label to int class index, else a ValueError naming it
    (a class name failed later as "'<' not supported between instances of 'str' and 'int'")."""
    if not isinstance(label_classes, Mapping):
        raise ValueError(f"correction {source}: label_classes must be a dict of label to class index, "
                         f"got {type(label_classes).__name__}")
    checked = {}
    for label, index in label_classes.items():
        for value in (label, index):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                hint = " (model.class_names.index(name) gives a class's index)" if isinstance(index, str) else ""
                raise ValueError(f"correction {source}: label_classes maps labels to class indices (-1: no "
                                 f"known class), got {label!r}: {index!r}{hint}")
        checked[int(label)] = int(index)
    return checked


@dataclass(repr=False, eq=False)
class Correction:
    """One corrected image.

    Attributes
    ----------
    image : (H, W), (H, W, 3) or (H, W, 4) ndarray
        Given as `napari_prm.predict` takes it: an array, a PIL image, a torch tensor
        ``(C, H, W)`` or ``(H, W, C)`` or a file path, made an array
        (`napari_prm.io.image_array`).
    labels : (H, W) int ndarray
        Every non-zero value is one instance; 0 is background.
    label_classes : dict of int to int
        Class index (into the model's classes) of each label; labels missing from it,
        or mapped to -1, have no known class. A class name is refused (a ValueError naming
        it): ``model.class_names.index("cat")`` gives its index.
    source : str
        Where it came from (a file, a layer name), for messages.
    image_path : Path or None
        The image file it was matched to, when read from files.
    ignore : (H, W) bool ndarray or None
        Pixels that are neither an instance nor background (a PASCAL VOC devkit's void):
        no part of the head's targets, and taken out of predicted masks when evaluated
        (:attr:`napari_prm.data.GroundTruth.ignore`). None: every pixel counts.
    """

    image: np.ndarray
    labels: np.ndarray
    label_classes: dict[int, int] = field(default_factory=dict)
    source: str = ""
    image_path: Path | None = None
    ignore: np.ndarray | None = None

    def __repr__(self) -> str:
        from .._text import fields_repr

        return fields_repr(self)

    def __post_init__(self):
        # a (C, H, W) tensor, which predict takes, was compared with the labels as (C, H)
        self.image = image_array(self.image, name=f"correction {self.source}: image" if self.source else "image")
        self.label_classes = _label_classes(self.label_classes, self.source)
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 2 or not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"correction {self.source}: labels must be a 2-D integer array; got "
                             f"{self.labels.dtype} of shape {self.labels.shape}")
        if tuple(np.shape(self.image)[:2]) != self.labels.shape:
            raise ValueError(f"correction {self.source}: the labels are {self.labels.shape}, the image "
                             f"{tuple(np.shape(self.image)[:2])}")
        if self.ignore is not None:
            self.ignore = np.asarray(self.ignore, dtype=bool)
            if self.ignore.shape != self.labels.shape:
                raise ValueError(f"correction {self.source}: the ignored pixels are {self.ignore.shape}, the labels "
                                 f"{self.labels.shape}")

    @property
    def num_instances(self) -> int:
        """The number of instances: distinct non-zero values of ``labels``."""
        return len(np.setdiff1d(np.unique(self.labels), [0]))

    @property
    def num_unknown(self) -> int:
        """Instances without a known class."""
        values = np.setdiff1d(np.unique(self.labels), [0])
        return int(sum(self.label_classes.get(int(v), -1) < 0 for v in values))

    def instances(self) -> GroundTruth:
        """The instances of a known class as ground truth, in increasing label order.

        Instances without a known class are left out (as a COCO dataset leaves out the
        categories a model lacks); none is a crowd region. Its :attr:`ignore` pixels are the
        ground truth's.

        Returns
        -------
        GroundTruth
            ``class_indices`` index the class names the correction was read with.
        """
        values = [int(v) for v in np.setdiff1d(np.unique(self.labels), [0])
                  if self.label_classes.get(int(v), -1) >= 0]
        masks = np.array([self.labels == v for v in values], dtype=bool).reshape((-1,) + self.labels.shape)
        return GroundTruth(masks=masks, class_indices=np.array([self.label_classes[v] for v in values], np.int64),
                           iscrowd=np.zeros(len(values), dtype=bool), ignore=self.ignore)


def class_lookup(table, class_names: Sequence[str], *, others: list[str] | None = None) -> dict[int, int]:
    """Map each label of an instance table to an index into ``class_names`` (by class name).

    Parameters
    ----------
    table : mapping of columns or DataFrame, or None
        With ``label`` (or napari's ``index``) and ``class_name`` columns; rows without a
        name (missing or ``""``, as the correction panel leaves a label painted by hand), with
        ``"unknown"`` or with a name the model lacks map to -1.
    class_names : sequence of str
        The model's classes.
    others : list of str, optional
        Where the names the model lacks are put, one per row that has one (not the rows
        without a name or with ``"unknown"``).
    """
    if table is None or len(table) == 0:
        return {}
    label_column = "label" if "label" in table else "index" if "index" in table else None
    if label_column is None or "class_name" not in table:
        return {}
    position = {str(name): i for i, name in enumerate(class_names)}
    lookup = {}
    for label, name in zip(np.asarray(table[label_column]), np.asarray(table["class_name"], dtype=object)):
        if missing_cell(label):
            continue
        name = None if missing_cell(name) or str(name) == "" else str(name)
        lookup[int(label)] = -1 if name in (None, UNKNOWN_CLASS) else position.get(name, -1)
        if others is not None and name not in (None, UNKNOWN_CLASS) and name not in position:
            others.append(name)
    return lookup


def other_class_warning(where: str, others: Mapping[str, Sequence[str]], class_names: Sequence[str], *,
                        hint: str = "a class name mistyped in an instance CSV?") -> str:
    """The warning on corrected instances of classes the model lacks.

    ``where`` starts it (``corrections <folder>`` for `corrections_from_folder`); ``others``
    maps each such class to where it is named (the instance CSVs, or the corrected Labels
    layers), one entry per instance; ``hint`` ends it, in brackets.
    """
    from .._text import first_names, plural

    count = sum(len(files) for files in others.values())
    named = "; ".join(f"'{name}' ({plural(len(files), 'instance')}: {first_names(sorted(set(files)), 3)})"
                      for name, files in sorted(others.items()))
    return (f"{where}: {plural(count, 'instance')} of classes the model does not have, left out of "
            f"the ground truth as unknown ones are: {named}; the model's classes are "
            f"{first_names(map(repr, class_names))} ({hint})")


def correction_from_layer(image: np.ndarray, labels: np.ndarray, features, class_names: Sequence[str], *,
                          source: str = "", others: list[str] | None = None) -> Correction:
    """A correction from a Labels layer's data and features (napari-free: plain arrays and a table).

    An instance whose ``class_name`` the model lacks has no class (as one without a name);
    with ``others`` (a list), each such name is appended to it, once per instance
    (see `class_lookup`).

    Parameters
    ----------
    image : ndarray
        The image the labels were painted on.
    labels : (H, W) int ndarray
        The Labels layer's data.
    features : mapping of columns or DataFrame, or None
        The layer's features (`class_lookup`'s ``table``).
    class_names : sequence of str
        The model's classes.
    source : str
        Where it came from (a layer name), for messages.
    others : list of str, optional
        Where the class names the model lacks are appended.
    """
    return Correction(np.asarray(image), np.asarray(labels), class_lookup(features, class_names, others=others),
                      source)


def _image_index(image_paths: Sequence[os.PathLike | str]) -> dict[str, list[Path]]:
    """The dataset's images by file name and by stem (several when names repeat across folders):
    an OME-TIFF ``cells.ome.tif`` by ``cells`` (`image_stem`, as its outputs are named) and by
    ``cells.ome`` (as earlier versions named them)."""
    index: dict[str, list[Path]] = {}
    for path in map(Path, image_paths):
        for key in dict.fromkeys((path.name, path.stem, image_stem(path.name))):
            paths = index.setdefault(key, [])
            if path not in paths:
                paths.append(path)
    return index


def _find_image(name: str, index: Mapping[str, list[Path]], folders: Sequence[Path], source: str, *,
                search: bool = True, same_folders: bool = False) -> Path | None:
    """The image of an export: among the dataset's images, else (``search``) in ``folders``;
    None when not among the dataset's images and not ``search``.

    A name with folders (a COCO ``file_name`` such as ``dog/1.png``, an export's ``A1/cat``
    in a tree of exports) picks, among the dataset's images of that file name or stem, the one
    whose folders end with the name's; a name that is still several of the dataset's images is
    refused (ValueError) rather than paired with the first. With ``same_folders``, an image in
    other folders is not the export's even when it is the only one of that name.
    """
    parts = Path(name.replace("\\", "/")).parts
    # as stored, then with Windows' separators (A1\\cat.png: a file name holding a backslash here)
    keys = dict.fromkeys((Path(name).name, Path(name).stem, Path(*parts).name, Path(*parts).stem) if parts else ())
    for key in keys:
        candidates = index.get(key, [])
        if len(parts) > 1 and (len(candidates) > 1 or same_folders):
            inside = [p for p in candidates if p.parent.parts[-(len(parts) - 1):] == parts[:-1]]
            candidates = inside if same_folders else inside or candidates
        if len(candidates) > 1:  # cells.tif is cells, before cells.ome.tif (cells.ome, or cells when alone)
            candidates = [p for p in candidates if key in (p.name, p.stem)] or candidates
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise ValueError(f"{source}: its image {name!r} could be any of {[str(p) for p in candidates]} "
                             "(the dataset's images of that name)")
    if not search:
        return None
    for folder in folders:
        stored = stored_path(folder, name)
        if stored.is_file():
            return stored
        # the stem as given (cells.ome of an earlier version's cells.ome_labels.tif is cells.ome.tif's),
        # then less an image extension (a COCO file_name cat.png whose cat.jpg is there)
        for stem in dict.fromkeys((Path(name).name, image_stem(name))):
            for suffix in (*IMAGE_SUFFIXES, *COMPOUND_SUFFIXES):
                candidate = folder / f"{stem}{suffix}"
                if candidate.is_file():
                    return candidate
    if not name:
        raise ValueError(f"{source}: its file_name is empty, so no image can be paired with it: write the JSON "
                         "with the image's file name (export_instances(..., image_file_name=...)), or give the "
                         "folder of <stem>_labels.tif exports, which pair by stem")
    raise ValueError(f"{source}: no image {name!r} among the dataset's images or in {[str(f) for f in folders]}")


def corrections_from_coco(path: str | os.PathLike, class_names: Sequence[str], *,
                          image_paths: str | os.PathLike | Sequence[os.PathLike | str] = (),
                          image_dir: str | os.PathLike | None = None,
                          unmatched: list[str] | None = None,
                          channels: Sequence[int] | None = None) -> list[Correction]:
    """One correction per image of a COCO instances JSON.

    Images are found by file name among ``image_paths`` (the dataset's; one path is one image), else in
    ``image_dir``, the JSON's folder or ``<root>/<split>/`` for
    ``<root>/annotations/instances_<split>.json``. Categories are matched to
    ``class_names`` by name; others count as unknown classes. With ``unmatched`` (a
    list), an image entry whose file is not among ``image_paths`` is skipped instead, and
    its ``file_name`` appended to the list.
    """
    image_paths = check.path_list(image_paths)  # one path is one image, not its characters
    path = Path(path)
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        images = list(coco["images"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read COCO JSON {path}: {error}") from error
    folders = [Path(image_dir)] if image_dir is not None else []
    folders += [path.parent]
    if path.stem.startswith("instances_"):
        folders.append(path.parent.parent / path.stem[len("instances_"):])
    index = _image_index(image_paths)
    corrections = []
    for entry in images:
        file_name = str(entry.get("file_name", ""))
        image_path = _find_image(file_name, index, folders, f"{path} (image id {entry['id']})",
                                 search=unmatched is None)
        if image_path is None:
            unmatched.append(file_name or f"image id {entry['id']}")
            continue
        labels, table, file_classes = coco_to_labels(coco, image_id=entry["id"])
        table = dict(table)
        table["class_name"] = np.array([file_classes[i] if i >= 0 else UNKNOWN_CLASS for i in table["class_index"]],
                                       dtype=object)
        corrections.append(Correction(read_image(image_path, channels=channels), labels,
                                      class_lookup(table, class_names), f"{path} ({image_path.name})", image_path))
    return corrections


def corrections_from_voc(path: str | os.PathLike, class_names: Sequence[str], *,
                         image_paths: str | os.PathLike | Sequence[os.PathLike | str] = (),
                         unmatched: list[str] | None = None,
                         warnings_to: list[str] | None = None,
                         channels: Sequence[int] | None = None) -> list[Correction]:
    """One correction per segmented image of a PASCAL VOC devkit.

    ``path`` is a split list (``VOC2012/ImageSets/Segmentation/train.txt``) or the year
    folder (``VOC2012``: every image with an XML), as `napari_prm.data.from_voc` reads it;
    images without a ``SegmentationObject`` PNG give none. Each instance of the PNGs is
    labelled with its class (`napari_prm.data.read_voc_segmentation`), matched to
    ``class_names`` by name, a VOC class in either spelling (``motorbike`` is ``motorcycle``;
    others count as unknown classes); void (255) is the correction's :attr:`Correction.ignore`.
    An image is the one of the same file name among ``image_paths``, else the devkit's
    ``JPEGImages/<id>.jpg``; with ``unmatched`` (a list), an image not among ``image_paths``
    is skipped instead, and its ``JPEGImages/`` file name appended to the list.

    Parameters
    ----------
    path : path-like
        The devkit's split list or year folder.
    class_names : sequence of str
        The model's classes: the corrections' class indices index them.
    image_paths : path-like or sequence of path-like
        The dataset's images; one path is one image.
    unmatched : list, optional
        Where the images of no ``image_paths`` are named, instead of taken from the devkit.
    warnings_to : list, optional
        Where what `napari_prm.data.from_voc` warns of the devkit (an image id listed twice, a
        class name that looks like a typo) is put; without it, each is a ``UserWarning``.

    Returns
    -------
    list of Correction
        In the devkit's order.

    Raises
    ------
    ValueError
        Naming the file: the devkit cannot be read (`napari_prm.data.from_voc`), none of its
        images is segmented (an ``ImageSets/Main`` list), a segmentation PNG cannot be used.
    """
    image_paths = check.path_list(image_paths)  # one path is one image, not its characters
    from ..data import VOC_VOID, class_in, from_voc, read_voc_segmentation

    devkit = from_voc(path, require_positives=False)
    if warnings_to is not None:
        warnings_to.extend(devkit.warnings)
    else:
        for text in devkit.warnings:
            warnings.warn(text, UserWarning, stacklevel=2)
    if not any(devkit.voc.segmentations):
        raise ValueError(f"PASCAL VOC {path}: none of its {len(devkit)} image(s) has a SegmentationObject PNG "
                         f"(the devkit segments those of {devkit.voc.root / 'ImageSets' / 'Segmentation'}'s lists)")
    index = _image_index(image_paths)
    position = {name: i for i, name in enumerate(class_names)}
    corrections = []
    for i, pair in enumerate(devkit.voc.segmentations):
        if pair is None:
            continue
        own = devkit.image_paths[i]
        image_path = _find_image(own.name, index, [], f"{pair[0]} (of {path})", search=False)
        if image_path is None and unmatched is not None:
            unmatched.append(own.name)
            continue
        image_path = image_path or own
        objects, names = read_voc_segmentation(*pair)
        classes = {}
        for value, name in names.items():
            found = class_in(name, position)
            classes[value] = -1 if found is None else position[found]
        void = objects == VOC_VOID
        corrections.append(Correction(read_image(image_path, channels=channels), np.where(void, 0, objects), classes,
                                      f"{pair[0]} ({image_path.name})", image_path,
                                      ignore=void if void.any() else None))
    return corrections


def _label_files(folder: Path) -> list[Path]:
    """The ``<stem>_labels.tif`` (``.tiff``, ``.png``) files of ``folder`` and of its visible
    sub-folders (a ``predict --recursive`` tree; not the staging folders of its writes)."""
    return tree_files(folder, lambda name: Path(name).suffix.lower() in (".tif", ".tiff", ".png")
                      and Path(name).stem.endswith(LABEL_SUFFIX))


def _recorded_image(label_path: Path, stem: str, root: Path) -> list[Path]:
    """Where the manifest beside an export (``<stem>.manifest.json``, as ``napari-prm predict``
    writes it) says its image is: recorded absolute, and from the output folder (which holds
    when the images and the outputs moved together). Empty when there is no readable one."""
    try:
        file_set = read_file_set(label_path.parent, stem)
    except ValueError:  # not napari-prm's, or broken: matched by name instead
        return []
    info = file_set.info if file_set is not None else {}
    recorded = [Path(str(info["image_path"]))] if info.get("image_path") else []
    if info.get("image_from_out"):
        recorded.append(root / str(info["image_from_out"]))
    return recorded


def uncorrected_predictions(label_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Of the export label images ``label_files`` (``<stem>_labels.tif``, ``.png``), those that
    are ``napari-prm predict``'s outputs as it wrote them: their manifest says ``predict`` wrote
    them, and the label image and its instance CSV still have the SHA-256 it recorded (only
    those two files are read).

    Such exports are predictions, not corrections: evaluating a model against them measures
    its agreement with them, not its accuracy.

    Parameters
    ----------
    label_files : path-like or iterable of path-like
        Export label images; one path is one label image.

    Returns
    -------
    list of Path
        Those of ``label_files``, in their order.
    """
    found = []
    for label_path in map(Path, check.path_list(label_files)):
        if not label_path.stem.endswith(LABEL_SUFFIX):
            continue
        stem = label_path.stem[: -len(LABEL_SUFFIX)]
        try:
            file_set = read_file_set(label_path.parent, stem)
        except ValueError:  # not napari-prm's, or broken
            continue
        if file_set is None or file_set.info.get("written_by") != "write_prediction":
            continue
        listed = {entry.name for entry in file_set.files.values()}
        if label_path.name in listed and not file_set.verify({label_path.name, f"{stem}_instances.csv"}):
            found.append(label_path)
    return found


def corrections_from_folder(folder: str | os.PathLike, class_names: Sequence[str], *,
                            image_paths: str | os.PathLike | Sequence[os.PathLike | str] = (),
                            unmatched: list[str] | None = None,
                            superseded: list[str] | None = None,
                            warnings_to: list[str] | None = None,
                            channels: Sequence[int] | None = None) -> list[Correction]:
    """Corrections from ``<stem>_labels.tif`` (or ``.tiff``/``.png``) files with ``<stem>_instances.csv``,
    in ``folder`` and its sub-folders.

    The image of ``<stem>_labels.tif`` is the one its manifest records (``<stem>.manifest.json``,
    as ``napari-prm predict`` writes beside its outputs), else ``<stem>.*`` among
    ``image_paths`` (the dataset's images; one path is one image), else in the label image's folder.
    An export in a sub-folder
    (``A1/cat_labels.tif``, as ``predict --recursive`` mirrors the image tree) is the image
    ``cat.*`` of a folder ``A1`` among ``image_paths``, not another folder's ``cat``. A label
    image without its CSV has instances of unknown class. With ``unmatched`` (a list), a label
    image whose image is not among ``image_paths`` is skipped instead, and its path in
    ``folder`` appended to the list.

    One image gets one correction: when several exports pair with it (``results/cat_labels.tif``
    and a copy kept in ``results/old/``), the most recently written is kept (the modification
    time of its label image) and the others are left out, named in ``superseded`` (a list), or
    in a ``UserWarning`` without one. The label images of one export in several formats
    (``cat_labels.tif`` and ``cat_labels.png`` of one folder) are one export: the file written last is read (a format
    exported again alone; the first by name of those written together).

    Instances whose CSV names a class that ``class_names`` lacks (a class of another model, or
    one mistyped by hand: ``rond`` for ``round``) have no class and are left out of the ground
    truth, as ``unknown`` ones are; they are named in ``warnings_to`` (a list), else in a
    ``UserWarning`` (`other_class_warning`).
    """
    image_paths = check.path_list(image_paths)  # one path is one image, not its characters
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"corrections {folder}: no such folder")
    files = _label_files(folder)
    if not files:
        raise ValueError(f"no label images (<stem>{LABEL_SUFFIX}.tif) in {folder} or its sub-folders")
    index = _image_index(image_paths)
    resolved: dict[Path, Path] = {}  # the dataset's images by their resolved paths, once a manifest asks
    pairs: list[tuple[Path, Path]] = []  # (label image, its image)
    for label_path in files:
        stem = label_path.stem[: -len(LABEL_SUFFIX)]
        relative = label_path.relative_to(folder)
        image_path = None
        recorded = _recorded_image(label_path, stem, folder)
        if recorded and len(image_paths) and not resolved:
            resolved = {Path(p).resolve(): Path(p) for p in image_paths}
        for candidate in recorded:
            image_path = resolved.get(candidate.resolve())
            if image_path is None and unmatched is None and candidate.is_file():
                image_path = candidate
            if image_path is not None:
                break
        if image_path is None:
            name = relative.with_name(stem).as_posix()
            image_path = _find_image(name, index, [label_path.parent], str(label_path), search=unmatched is None,
                                     same_folders=True)
        if image_path is None:
            unmatched.append(relative.as_posix())
            continue
        pairs.append((label_path, image_path))
    left_out: list[str] = []
    corrections = []
    others: dict[str, list[str]] = {}  # a class the model lacks: the CSVs naming it, once per instance
    for label_path, image_path in _newest_per_image(pairs, folder, left_out):
        stem = label_path.stem[: -len(LABEL_SUFFIX)]
        table_path = label_path.with_name(f"{stem}_instances.csv")
        table = read_instances_csv(table_path) if table_path.is_file() else None
        labels = read_label_image(label_path)
        if labels.ndim != 2:
            raise ValueError(_not_a_2d_export(label_path, image_path, labels.shape))
        lacking: list[str] = []
        label_classes = class_lookup(table, class_names, others=lacking)
        for name in lacking:
            others.setdefault(name, []).append(table_path.relative_to(folder).as_posix())
        corrections.append(Correction(read_image(image_path, channels=channels), labels, label_classes,
                                      str(label_path), image_path))
    if others:
        text = other_class_warning(f"corrections {folder}", others, class_names)
        if warnings_to is not None:
            warnings_to.append(text)
        else:
            warnings.warn(text, UserWarning, stacklevel=3)
    if superseded is not None:
        superseded += left_out
    elif left_out:
        warnings.warn(f"corrections {folder}: several exports of one image; the most recently written of "
                      f"each is used, left out: {', '.join(left_out)}", UserWarning, stacklevel=3)
    return corrections


def _not_a_2d_export(label_path: Path, image_path: Path, shape: tuple[int, ...]) -> str:
    """Why a label image that is not 2-D (a stack's export: predict's or Export's of a z-stack or
    time-lapse; or the RGB(A) colours of a 2-D image's labels) is no correction, and what is."""
    if len(shape) < 3:
        return f"{label_path}: corrections are 2-D label images; got shape {shape}"
    if len(shape) == 3 and shape[-1] in (3, 4) and plane_count(image_path) == 1:  # a 2-D image's: colours
        return (f"{label_path}: {shape[-1]} channels per pixel (shape {shape}), the colours of a label image, "
                f"not its labels: corrections are 2-D label images of integer labels (0 the background, one "
                f"number per instance), as Export writes them; export {image_path.name}'s labels again")
    planes = int(np.prod(shape[:-2]))
    return (f"{label_path}: a label stack of {planes} planes of {shape[-2]}×{shape[-1]} (shape {shape}), the "
            f"export of the z-stack or time-lapse {image_path}: corrections are 2-D label images of 2-D images, "
            "one per image of the dataset (whose images are read as single 2-D images); stacks are not read "
            "plane by plane. Move the stack's export out of the folder, or save each plane of the image and of "
            f"its labels as 2-D files (<plane>.tif with <plane>{LABEL_SUFFIX}.tif and <plane>_instances.csv)")


def _newest_per_image(pairs: Sequence[tuple[Path, Path]], folder: Path,
                      left_out: list[str]) -> list[tuple[Path, Path]]:
    """Of the ``(label image, image)`` pairs, one per image: that of its most recently written
    export (an export is a folder and stem: its label images in several formats are one, the
    one written last standing for it, the first by name of those written together; ties go to
    the first in path order). The others are described in ``left_out``, by their paths in ``folder``."""
    written = {label_path: label_path.stat().st_mtime_ns for label_path, _ in pairs}  # one stat each
    exports: dict[Path, dict[tuple[Path, str], list[Path]]] = {}
    for label_path, image_path in pairs:
        key = (label_path.parent, label_path.stem)
        exports.setdefault(image_path.resolve(), {}).setdefault(key, []).append(label_path)
    for by_export in exports.values():  # an export's newest file first (a format exported again alone)
        for paths in by_export.values():
            paths.sort(key=lambda path: -written[path])

    def name(path: Path) -> str:
        return path.relative_to(folder).as_posix()

    chosen: set[Path] = set()
    for by_export in exports.values():
        newest = max(by_export.values(), key=lambda paths: written[paths[0]])  # each sorted newest first
        chosen.add(newest[0])
        for paths in by_export.values():
            kept = paths[0] if paths is newest else None
            for path in paths:
                if path in chosen:
                    continue
                if kept is not None:
                    left_out.append(f"{name(path)} (the same export as {name(kept)}, in another format)")
                else:
                    left_out.append(f"{name(path)} (written before {name(newest[0])}, the export kept)")
    return [(label_path, image_path) for label_path, image_path in pairs if label_path in chosen]


def load_corrections(path: str | os.PathLike, class_names: Sequence[str], *,
                     image_paths: str | os.PathLike | Sequence[os.PathLike | str] = (),
                     unmatched: list[str] | None = None,
                     superseded: list[str] | None = None,
                     warnings_to: list[str] | None = None,
                     channels: Sequence[int] | None = None) -> list[Correction]:
    """Corrections from a COCO JSON, a folder (and its sub-folders) of label images or a PASCAL VOC
    devkit's split list or year folder (see the three loaders).

    Parameters
    ----------
    path : path-like
        A COCO instances JSON (`corrections_from_coco`), a folder of ``<stem>_labels.tif``
        exports with their ``<stem>_instances.csv``, sub-folders included
        (`corrections_from_folder`), or a PASCAL VOC year folder or split list
        (`corrections_from_voc`).
    class_names : sequence of str
        The model's classes: the corrections' class indices index them.
    image_paths : path-like or sequence of path-like
        The dataset's images (one path is one image), among which each export's image is looked for first.
    unmatched : list, optional
        With it, an export whose image is not among ``image_paths`` is skipped and named
        here (its path in the folder; for a COCO JSON, its image's ``file_name``).
    superseded : list, optional
        In a folder, an image with several exports gets its most recently written one; the
        others are named here, else in a ``UserWarning``.
    warnings_to : list, optional
        What a devkit's reading warns of, and a folder's instances of classes the model lacks
        (a class name mistyped in an export's CSV), else a ``UserWarning``.
    channels : sequence of int, optional
        The channels the images are read with (`napari_prm.io.read_image`'s ``channels``: the
        dataset's and the model's); the three loaders take it too.

    Returns
    -------
    list of Correction

    Raises
    ------
    ValueError
        ``path`` is none of these, or an export cannot be read.
    """
    image_paths = check.path_list(image_paths)  # one path is one image, not its characters
    from ..data import is_voc_folder, voc_split_root

    path = Path(path)
    if is_voc_folder(path) or (path.suffix.lower() == ".txt" and voc_split_root(path) is not None):
        return corrections_from_voc(path, class_names, image_paths=image_paths, unmatched=unmatched,
                                    warnings_to=warnings_to, channels=channels)
    if path.is_dir():
        return corrections_from_folder(path, class_names, image_paths=image_paths, unmatched=unmatched,
                                       superseded=superseded, warnings_to=warnings_to, channels=channels)
    if path.is_file() and path.suffix.lower() == ".json":
        return corrections_from_coco(path, class_names, image_paths=image_paths, unmatched=unmatched,
                                     channels=channels)
    raise ValueError(f"corrections {path}: expected a COCO .json file, a folder of <stem>{LABEL_SUFFIX}.tif "
                     "label images with their <stem>_instances.csv, or a PASCAL VOC year folder or split list "
                     "(VOC2012/ImageSets/Segmentation/train.txt)")


def match_corrections(path: str | os.PathLike, class_names: Sequence[str],
                      image_paths: str | os.PathLike | Sequence[os.PathLike | str], *,
                      superseded: list[str] | None = None,
                      warnings_to: list[str] | None = None,
                      channels: Sequence[int] | None = None) -> tuple[dict[int, Correction], list[str]]:
    """The corrections of a COCO JSON, a folder of exports or a PASCAL VOC devkit, paired with a dataset's images.

    Each export is matched to an image of ``image_paths`` by file name or stem, as
    :func:`load_corrections` does; exports of no such image are not looked for elsewhere.

    Parameters
    ----------
    path : path-like
        A COCO instances JSON, or a folder of ``<stem>_labels.tif`` label images with
        their ``<stem>_instances.csv`` (as napari-prm exports them), sub-folders included:
        the tree ``napari-prm predict --recursive`` writes, each export matched by the image
        its manifest records or by its path in the folder (``A1/cat_labels.tif``: an image
        ``A1/cat.*``); or a PASCAL VOC year folder or split list (`corrections_from_voc`).
    class_names : sequence of str
        The model's classes: the corrections' class indices index them.
    image_paths : path-like or sequence of path-like
        The dataset's images; one path is one image.
    superseded : list, optional
        Where the exports left out for a newer export of their image are named; without it
        they are named in ``unmatched``.
    warnings_to : list, optional
        Where what a PASCAL VOC devkit's reading warns of is put (see `corrections_from_voc`), and
        the warning of a folder's instances of classes the model lacks (`corrections_from_folder`).
    channels : sequence of int, optional
        The channels the images are read with (`load_corrections`).

    Returns
    -------
    matched : dict of int to Correction
        By index into ``image_paths``, in increasing order. When several exports in the folder
        match one image (``results/x_labels.tif`` and an old copy ``results/old/x_labels.tif``),
        the most recently written (its label image's modification time) is kept, as
        :func:`load_corrections` keeps it; one export in several formats (``x_labels.tif`` and
        ``x_labels.png``) is read from the file written last (the first by name of those
        written together). Of a COCO JSON naming one image
        twice, the first entry is kept.
    unmatched : list of str
        The exports matching no image (their paths in the folder, ``A1/cat_labels.tif``; for a
        COCO JSON, its images' ``file_name``)
        and, without ``superseded``, the exports left out for another of the same image.

    Raises
    ------
    ValueError
        ``path`` is neither, holds no export, or an export cannot be read.
    """
    image_paths = check.path_list(image_paths)  # one path is one image, not its characters
    path = Path(path)
    unmatched: list[str] = []
    left_out = superseded if superseded is not None else unmatched
    corrections = load_corrections(path, class_names, image_paths=image_paths, unmatched=unmatched,
                                   superseded=left_out, warnings_to=warnings_to, channels=channels)
    position: dict[Path, int] = {}
    for i, image_path in enumerate(map(Path, image_paths)):
        position.setdefault(image_path, i)
    matched: dict[int, Correction] = {}
    for correction in corrections:
        index = position[correction.image_path]
        if index in matched:
            source = Path(correction.source)
            name = source.relative_to(path).as_posix() if source.is_relative_to(path) else source.name
            left_out.append(f"{name} (a second entry of {correction.image_path.name})")
        else:
            matched[index] = correction
    return dict(sorted(matched.items())), unmatched
