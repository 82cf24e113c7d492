"""COCO "instances" JSON: label images (and instances) to RLE annotations, and back to label images."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._text import first_names
from .._validate import finite_float, integer, output_file, path_like
from ..masks import decode_rle, encode_rle, encode_rle_window, rle_area, rle_bbox, segmentation_to_rle
from .atomic import atomic_write
from .labels import _check_labels, _label_metadata, _recorded_world
from .paths import tree_files
from .tables import UNKNOWN_CLASS, _instance_rows, _label_regions, _names_from_records, _table_from_records

__all__ = ["labels_to_coco", "instances_to_coco", "coco_to_labels", "coco_image_world", "coco_results",
           "match_exports", "MatchedExport", "write_coco_json", "UNKNOWN_CATEGORY_ID"]

#: COCO category id of labels without a class (id 0 is not used by COCO's own categories).
UNKNOWN_CATEGORY_ID = 0


def labels_to_coco(labels: np.ndarray, table=None, class_names: Sequence[str] | None = None,
                   *, image_id: int = 1, file_name: str = "",
                   category_ids: Sequence[int] | None = None, world: Mapping | None = None) -> dict:
    """Describe a 2-D label image as a COCO "instances" dataset with one image.

    Parameters
    ----------
    labels : (H, W) int ndarray
        0 is background; every other value is one instance.
    table : mapping of columns, optional
        Instance table (``label, class_index, class_name, score, peak``).
    class_names : sequence of str, optional
        All the model's classes; each becomes a category. Defaults to the names in
        ``table`` (``class_<i>`` for indices it lacks).
    image_id : int
        The ``id`` of the image entry and ``image_id`` of every annotation.
    file_name : str
        ``file_name`` of the image entry.
    category_ids : sequence of int, optional
        Category id of each class (e.g. the official COCO ids); default ``index + 1``.
        Id 0 is reserved for labels without a class (``"unknown"``).
    world : mapping, optional
        The napari layer's ``scale``, ``translate`` and ``units`` (two values each), recorded
        in the image entry as ``napari_scale``, ``napari_translate`` and ``napari_units``
        (units only when not ``pixel``): `coco_image_world` gives them back, and the plugin's
        reader opens the instances where the layer was (COCO readers ignore such keys).

    Returns
    -------
    dict
        With ``images``, ``annotations`` and ``categories``. Each annotation has ``id`` and
        ``label`` (both the label value), ``category_id``, ``segmentation`` (compressed RLE,
        ``counts`` as str), ``area``, ``bbox`` (``[x, y, width, height]``), ``iscrowd`` 0,
        ``peak`` (-1 for an instance without one, painted by hand, as the instance CSV's) and
        ``score`` (left out when the instance has none).
    """
    labels = _check_labels(labels)
    regions = _label_regions(labels)
    records = _instance_rows(regions, table, class_names)
    names = list(class_names) if class_names is not None else _names_from_records(records)
    height, width = labels.shape
    rles = []
    for record in records:  # each encoded from its bounding box only (a whole image each took a minute for 2,000)
        window = regions[record["label"]][0]
        rles.append(encode_rle_window(labels[window] == record["label"],
                                      (window[0].start, window[1].start), (height, width)))
    coco = _coco_dataset(records, rles, names, category_ids, image_id, file_name, (height, width))
    coco["images"][0].update(_label_metadata(world, 2))
    return coco


def coco_image_world(image: Mapping) -> dict:
    """The napari ``scale``, ``translate`` and ``units`` an image entry of a COCO dataset records
    (`labels_to_coco`'s ``world``), as a dict of those it records (empty for other COCO files).

    Parameters
    ----------
    image : mapping
        One of the dataset's ``images``.
    """
    return _recorded_world(image, 2) if isinstance(image, Mapping) else {}


def instances_to_coco(instances: Sequence, image_shape: tuple[int, int], class_names: Sequence[str], *,
                      image_id: int = 1, file_name: str = "", category_ids: Sequence[int] | None = None) -> dict:
    """Describe instances as a COCO "instances" dataset with one image, each with its own mask.

    Unlike `labels_to_coco` of ``prediction.to_labels()``, where a pixel belongs to one
    label and the higher-scoring of two overlapping instances keeps it, every annotation
    is its instance's whole mask: the masks `napari_prm.evaluate.evaluate` scores, so that
    pycocotools' ``COCOeval`` sees the same.

    Parameters
    ----------
    instances : sequence of napari_prm.Instance
        Annotation ``i + 1`` (``id`` and ``label``) is ``instances[i]``.
    image_shape : (int, int)
        (H, W) of the image; every mask must have this shape.
    class_names : sequence of str
        All the model's classes (``Instance.class_index`` indexes them); each becomes a category.
    image_id, file_name, category_ids
        As in `labels_to_coco`.

    Returns
    -------
    dict
        As `labels_to_coco` returns it; ``score`` and ``peak`` are the instances'.
    """
    height, width = (integer("image_shape", size, low=1) for size in image_shape)
    names = [str(name) for name in class_names]
    records, rles = [], []
    for number, instance in enumerate(instances, start=1):
        mask = np.asarray(instance.mask)
        if mask.shape != (height, width):
            raise ValueError(f"instances[{number - 1}]: its mask is {mask.shape}, the image {(height, width)}")
        index = int(instance.class_index)
        if not 0 <= index < len(names):
            raise ValueError(f"instances[{number - 1}] has class index {index}, but {len(names)} class names "
                             "were given")
        records.append({"label": number, "class_index": index, "class_name": names[index],
                        "score": float(instance.score), "peak": int(instance.peak)})
        rles.append(encode_rle(np.asfortranarray(mask, dtype=np.uint8)))
    return _coco_dataset(records, rles, names, category_ids, image_id, file_name, (height, width))


def _coco_dataset(records, rles, names, category_ids, image_id, file_name, shape) -> dict:
    """The one-image COCO dataset of instance ``records`` (label, class index, score, peak) and their RLEs."""
    image_id = integer("image_id", image_id)
    ids = list(range(1, len(names) + 1)) if category_ids is None else [int(i) for i in category_ids]
    if len(ids) != len(names) or len(set(ids)) != len(ids) or UNKNOWN_CATEGORY_ID in ids:
        raise ValueError(f"category_ids must be {len(names)} distinct ids other than "
                         f"{UNKNOWN_CATEGORY_ID}, got [{first_names(map(str, ids))}]")
    categories = [{"id": i, "name": str(n), "supercategory": ""} for i, n in zip(ids, names)]
    if any(r["class_index"] < 0 for r in records):
        categories.append({"id": UNKNOWN_CATEGORY_ID, "name": UNKNOWN_CLASS,
                           "supercategory": ""})
    height, width = shape
    annotations = []
    for record, rle in zip(records, rles):
        label = record["label"]
        annotation = {
            "id": label, "label": label, "image_id": int(image_id),
            "category_id": UNKNOWN_CATEGORY_ID if record["class_index"] < 0
            else ids[record["class_index"]],
            "segmentation": rle,
            "area": rle_area(rle),
            "bbox": rle_bbox(rle),
            "iscrowd": 0, "peak": record["peak"],
        }
        if math.isfinite(record["score"]):
            annotation["score"] = record["score"]
        annotations.append(annotation)
    return {"info": {"description": "napari-prm instance export"}, "licenses": [],
            "images": [{"id": int(image_id), "file_name": str(file_name),
                        "height": height, "width": width}],
            "annotations": annotations, "categories": categories}


def _read_coco(coco: Mapping | str | os.PathLike) -> tuple[str, Mapping]:
    """``(what to call it in errors, the COCO dict)`` of a COCO dict or JSON file."""
    source = str(path_like("coco", coco)) if not isinstance(coco, Mapping) else "the COCO dict"
    if not isinstance(coco, Mapping):
        try:
            with open(coco, encoding="utf-8") as handle:
                coco = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read COCO JSON {source}: {error}") from error
    return source, coco


def coco_to_labels(coco: Mapping | str | os.PathLike, image_id: int | None = None):
    """Paint the instances of one image of a COCO dataset into a label image.

    Parameters
    ----------
    coco : dict or path-like
        A COCO "instances" dataset (as written by `labels_to_coco`, or any COCO JSON with
        RLE or polygon segmentations).
    image_id : int, optional
        Which image; may be left out when the dataset has one image.

    Returns
    -------
    labels : (H, W) uint16 or uint32 ndarray
    table : dict of ndarray
        Columns ``label, class_index, class_name, score, peak``.
    class_names : list of str
        Category names in the file's order; ``class_index`` indexes this list. Category
        id 0 (``"unknown"``) maps to class index -1.

    Notes
    -----
    Labels are the annotations' ``label`` values when every annotation has one (files
    written by this module), else 1, 2, ... in annotation order. Where masks overlap,
    later annotations cover earlier ones.
    """
    source, coco = _read_coco(coco)
    try:
        images = {int(image["id"]): image for image in coco["images"]}
        categories = list(coco["categories"])
        annotations = coco.get("annotations", [])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source} is not a COCO instances dataset: {error!r}") from error
    if image_id is None:
        if len(images) != 1:
            raise ValueError(f"{source} holds {len(images)} images; pass image_id "
                             f"(one of {first_names(map(str, sorted(images)))})")
        image_id = next(iter(images))
    if int(image_id) not in images:
        raise ValueError(f"{source} has no image with id {image_id}")
    image = images[int(image_id)]
    try:
        height, width = (integer(key, image.get(key), low=1) for key in ("height", "width"))
    except ValueError as error:
        raise ValueError(f"{source}: image {image_id} needs its size: {error}") from None
    class_categories = [c for c in categories if int(c["id"]) != UNKNOWN_CATEGORY_ID]
    class_names = [str(c["name"]) for c in class_categories]
    index_of = {int(c["id"]): i for i, c in enumerate(class_categories)}
    index_of[UNKNOWN_CATEGORY_ID] = -1
    try:
        mine = [a for a in annotations if int(a["image_id"]) == int(image_id)]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: an annotation has no usable image_id ({error!r})") from None
    own_labels = bool(mine) and all("label" in a for a in mine)
    records, rles = [], []
    for number, annotation in enumerate(mine, start=1):
        where = f"{source}: annotation {annotation.get('id')}"
        try:
            label = integer("label", annotation["label"], low=1) if own_labels else number
            category = integer("category_id", annotation.get("category_id"))
            score = finite_float("score", annotation.get("score"), optional=True)
            peak = integer("peak", annotation.get("peak", -1), low=-1)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if category not in index_of:
            raise ValueError(f"{where} has category {category}, which is not among the categories")
        if "segmentation" not in annotation:
            raise ValueError(f"{where} has no 'segmentation'")
        rles.append(_segmentation_rle(annotation["segmentation"], height, width, where))
        index = index_of[category]
        records.append({"label": label, "class_index": index,
                        "class_name": UNKNOWN_CLASS if index < 0 else class_names[index],
                        "score": math.nan if score is None else score, "peak": peak})
    top = max((r["label"] for r in records), default=0)
    labels = np.zeros((height, width), dtype=np.uint16 if top <= 65535 else np.uint32)
    for record, rle in zip(records, rles):
        # decode one mask at a time and paint only inside its box: memory and time stay
        # proportional to one image, not to the number of instances times the image
        x0, y0, box_width, box_height = (int(v) for v in rle_bbox(rle))
        window = (slice(y0, y0 + box_height), slice(x0, x0 + box_width))
        inside = decode_rle(rle)[window]
        labels[window][inside] = record["label"]
    return labels, _table_from_records(records), class_names


def _segmentation_rle(segmentation, height: int, width: int, source: str) -> dict:
    """Compressed RLE of a polygon, uncompressed-RLE or compressed-RLE segmentation."""
    try:
        rle = segmentation_to_rle(segmentation, height, width)
        rle_area(rle)  # validates the counts now, so errors name the file
        return rle
    except Exception as error:
        raise ValueError(f"{source}: cannot decode segmentation: {error}") from error


def write_coco_json(path: str | os.PathLike, coco: Mapping | Sequence[Mapping], *, overwrite: bool = True) -> Path:
    """Write a COCO dict (e.g. from `labels_to_coco`), or a results list (`coco_results`), as JSON,
    atomically; NaN is refused.

    Parameters
    ----------
    path : path-like
        The JSON file to write.
    coco : mapping or sequence of mapping
        The COCO dataset, e.g. from `labels_to_coco`, or a pycocotools results list, e.g.
        from `coco_results` (``napari-prm evaluate --predictions FOLDER --results-json FILE``).
    overwrite : bool
        If False and ``path`` exists, raise ``FileExistsError``.

    Raises
    ------
    ValueError
        Naming the file, when ``coco`` holds NaN or infinity; the file is then left as
        it was (so it is after a ``TypeError`` for a value JSON cannot hold).
    """
    path = output_file("path", path)
    try:
        with atomic_write(path, overwrite=overwrite) as temp:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(coco, handle, allow_nan=False)
    except ValueError as error:  # NaN or infinity
        raise ValueError(f"cannot write COCO JSON {path}: {error}") from error
    return path


@dataclass(repr=False, eq=False)
class MatchedExport:
    """One ``<stem>_instances.json`` export, matched to an image of a COCO dataset (`match_exports`).

    Attributes
    ----------
    path : Path
        The export file.
    image_id : int
        The dataset's id of its image.
    class_names : list of str
        The classes of the model that made it, in its order (the export's categories but
        ``"unknown"``).
    results : list of dict
        Its instances of a class, in the dataset's ids (as `coco_results` gives them).
    """

    path: Path
    image_id: int
    class_names: list[str]
    results: list[dict]

    def __repr__(self) -> str:
        return (f"MatchedExport(path={str(self.path)!r}, image_id={self.image_id}, "
                f"{len(self.class_names)} classes, {len(self.results)} instances)")


def match_exports(exports: str | os.PathLike | Sequence[str | os.PathLike],
                  coco: Mapping | str | os.PathLike, *,
                  source: str | None = None, check_classes: bool = True) -> tuple[list[MatchedExport], list[str]]:
    """Match ``<stem>_instances.json`` exports to the images of a COCO dataset; the one reader
    behind `coco_results` and `napari_prm.evaluate.evaluate_exports`.

    Parameters
    ----------
    exports : path-like or sequence of path-like
        A folder (its ``*_instances.json`` files, sub-folders included, as ``predict
        --recursive`` writes them, its staging folders left out) or the export files.
    coco : dict or path-like
        The dataset's COCO instances JSON.
    source : str, optional
        What messages call the dataset (default: its path, or "the COCO dict"): the file a
        dict was read from.
    check_classes : bool
        Refuse an export with an instance of a class that is not a category of the dataset.
        False: such instances are left out of its results, for a caller that checks the
        classes itself (`napari_prm.evaluate.evaluate_exports` checks all of the model's, and
        names the folder).

    Returns
    -------
    matched : list of MatchedExport
        In the exports' order (`napari_prm.io.paths.sorted_paths` for a folder).
    unmatched : list of str
        The exports whose image is none of the dataset's, each as ``"<file>: <why>"``.

    Raises
    ------
    ValueError
        Naming the file: an export that cannot be read, whose image is several of the
        dataset's, whose image size is not the dataset's image's, or whose classes of
        instances are not categories of the dataset (names must match, a PASCAL VOC class
        in either spelling: `napari_prm.data.class_in`; unless not ``check_classes``); two
        exports of one image (a copy of an output folder inside another), naming both; a
        folder without any export.
    """
    from .._classes import class_in  # torch-free: napari_prm.data imports torch
    from .prediction import settle_outputs  # prediction imports this module

    read_as, coco = _read_coco(coco)
    source = read_as if source is None else str(source)
    try:
        images = {int(image["id"]): image for image in coco["images"]}
        by_name = {str(image["file_name"]).replace("\\", "/"): int(image["id"]) for image in coco["images"]}
        category_of = {str(c["name"]): int(c["id"]) for c in coco["categories"]}
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source} is not a COCO instances dataset: {error!r}") from error
    # each file_name by its trailing paths too (val2017/A1/cat.jpg, A1/cat.jpg, cat.jpg): predict run
    # on a sub-folder of the dataset's image folder, or on a folder above it, names its images by a
    # path that ends the dataset's, or that the dataset's ends
    by_suffix: dict[str, set[int]] = {}
    for name, image_id in by_name.items():
        parts = name.split("/")
        for start in range(len(parts)):
            by_suffix.setdefault("/".join(parts[start:]), set()).add(image_id)
    if isinstance(exports, (str, os.PathLike)):
        folder = Path(path_like("exports", exports))
        files = (tree_files(folder, lambda name: name.endswith("_instances.json") and not name.startswith("."))
                 if folder.is_dir() else [folder])
        if not files:
            raise ValueError(f"exports: no *_instances.json in folder {folder}")
    else:
        files = [Path(path_like("exports", f)) for f in exports]
    matched: list[MatchedExport] = []
    unmatched: list[str] = []
    export_of: dict[int, Path] = {}
    for file in files:
        settle_outputs(file)
        try:
            with open(file, encoding="utf-8") as handle:
                export = json.load(handle)
            (image,) = export["images"]
            name = str(image["file_name"]).replace("\\", "/")
            size = (image.get("height"), image.get("width"))
            names = {int(c["id"]): str(c["name"]) for c in export["categories"]}
            annotations = export["annotations"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"cannot read {file} as a one-image COCO export: {error!r}") from error
        image_id = by_name.get(name) if name else None
        if not name:  # write_prediction / export_instances without image_file_name=: nothing to match by
            unmatched.append(f"{file}: its image has no file_name, by which exports are matched to {source}'s "
                             "images: write it with image_file_name= (write_prediction, export_instances: the "
                             "dataset's file_name of the image), as napari-prm predict does")
            continue
        if image_id is None:
            parts = name.split("/")
            # the longest trailing path of the export's name that some file_names end with
            candidates = next((by_suffix[suffix] for suffix in ("/".join(parts[start:]) for start in range(len(parts)))
                               if suffix in by_suffix), set())
            if not candidates:
                unmatched.append(f"{file}: its image {name!r} is none of {source}'s images (matched by file_name)")
                continue
            if len(candidates) > 1:
                raise ValueError(f"{file}: its image {name!r} is several of {source}'s images (matched by "
                                 "file_name)")
            (image_id,) = candidates
        if image_id in export_of:
            raise ValueError(f"{export_of[image_id]} and {file} are both exports of image {image_id} "
                             f"({images[image_id].get('file_name')!r}) of {source}: keep one (a copy of an "
                             "output folder inside another?)")
        export_of[image_id] = file
        expected = (images[image_id].get("height"), images[image_id].get("width"))
        if None not in size and None not in expected and tuple(map(int, size)) != tuple(map(int, expected)):
            raise ValueError(f"{file}: its image {name!r} is {size[0]}×{size[1]} pixels, but {source}'s image "
                             f"{image_id} is {expected[0]}×{expected[1]}")
        # labels painted without a class (category 0, "unknown") have none to score
        annotations = [a for a in annotations if int(a["category_id"]) != UNKNOWN_CATEGORY_ID]
        # a PASCAL VOC class in either spelling (motorbike, motorcycle), as a model's classes meet a dataset's
        category_name = {name: class_in(name, category_of) for name in names.values()}
        unknown = sorted({names.get(int(a["category_id"]), str(a["category_id"])) for a in annotations
                          if category_name.get(names.get(int(a["category_id"]))) is None})
        if unknown and check_classes:
            raise ValueError(f"{file}: class(es) [{first_names(map(repr, unknown))}] are not categories of "
                             f"{source} (names must match, a PASCAL VOC class in either VOC's or COCO's "
                             f"spelling); it has [{first_names(map(repr, category_of))}]")
        results = []
        for annotation in annotations:
            if names.get(int(annotation["category_id"]), str(annotation["category_id"])) in unknown:
                continue  # not check_classes: the caller checks the classes
            score = annotation.get("score")
            results.append({"image_id": image_id,
                            "category_id": category_of[category_name[names[int(annotation["category_id"])]]],
                            "segmentation": annotation["segmentation"], "area": annotation["area"],
                            "bbox": annotation["bbox"], "score": 1.0 if score is None else float(score)})
        class_names = [n for i, n in names.items() if i != UNKNOWN_CATEGORY_ID]
        matched.append(MatchedExport(file, image_id, class_names, results))
    return matched, unmatched


def coco_results(exports: str | os.PathLike | Sequence[str | os.PathLike],
                 coco: Mapping | str | os.PathLike) -> list[dict]:
    """The instances of ``<stem>_instances.json`` exports as one pycocotools results list, in the
    ids of the user's COCO JSON.

    Each export (``napari-prm predict``'s, the plugin's) describes one image with ``image_id``
    1 and category ids ``class index + 1``: its own numbering, not the dataset's. This gives
    each annotation the ``image_id`` of the dataset's image of the same ``file_name`` and the
    ``category_id`` of the dataset's category of the same name, ready for
    ``COCO.loadRes`` and ``COCOeval`` with the dataset as ground truth (`match_exports`
    matches them; ``napari-prm evaluate DATASET --predictions FOLDER`` scores them).

    Parameters
    ----------
    exports : path-like or sequence of path-like
        A folder (its ``*_instances.json`` files, sub-folders included, as ``predict
        --recursive`` writes them) or the export files.
    coco : dict or path-like
        The dataset's COCO instances JSON (the ground truth).

    Returns
    -------
    list of dict
        ``image_id``, ``category_id``, ``segmentation`` (compressed RLE), ``area``, ``bbox``
        and ``score`` of every instance of a class (unscored ones get score 1.0; labels
        without a class, category ``"unknown"``, are left out). Empty when the exports hold
        no instance: pycocotools' ``COCO.loadRes`` raises ``IndexError`` on an empty list
        (every AP is then 0; ``napari-prm evaluate --predictions`` says so).

    Raises
    ------
    ValueError
        Naming the export: its image is not in the dataset (by ``file_name``, else by the
        longest trailing path, down to the file name alone, that ends file_names of the dataset
        when they are one image's: ``A1/cat.jpg`` is ``val2017/A1/cat.jpg``), its size is not
        the dataset's image's, another export is of the same image, or its classes are
        not the dataset's categories (names must match; a PASCAL VOC class in either spelling,
        ``motorbike`` or ``motorcycle``, is the same class).

    Notes
    -----
    An export's masks are its label image's: where two instances overlapped, the
    higher-scoring one kept the pixels. ``napari_prm.evaluate.evaluate`` scores the whole
    masks (``Prediction.to_coco``), so its mAP^r can differ slightly from these.
    """
    matched, unmatched = match_exports(exports, coco)
    if unmatched:
        raise ValueError(unmatched[0])
    return [result for export in matched for result in export.results]
