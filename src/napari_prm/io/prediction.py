"""What a run writes: a label image with its classes in several formats, peaks and PRMs.

The files of one image are written as a file set (`napari_prm.io.fileset`): they switch
from the previous run's to the new ones in one step, even when the process is killed, and
``<stem>.manifest.json`` says which files belong together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from .._validate import Cancelled, finite_array, output_file, output_folder, raise_if_cancelled
from .atomic import atomic_write
from .coco import labels_to_coco, write_coco_json
from .fileset import FileSet, exported_files, read_file_set, recover_file_sets, write_file_set
from .labels import _check_labels, _standard_resolution, write_label_image
from .paths import windows_name_problem, windows_rules
from .tables import write_instances_csv, write_peaks_csv, write_stack_peaks_csv

__all__ = ["export_instances", "write_prediction", "write_stack_prediction", "stack_labels", "prediction_paths",
           "write_prms", "EXPORT_SUFFIXES", "complete_prediction", "settle_outputs", "STACK_LEFT_OUT"]

#: File name endings of each export format, after the stem.
EXPORT_SUFFIXES = {"tiff": "_labels.tif", "png": "_labels.png",
                   "coco": "_instances.json", "csv": "_instances.csv"}
_FORMAT_ALIASES = {"tif": "tiff", "tiff": "tiff", "png": "png", "coco": "coco",
                   "json": "coco", "csv": "csv"}
_SUFFIX_FORMATS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".json": "coco",
                   ".csv": "csv"}


def write_prms(path: str | os.PathLike, prms: np.ndarray, *, overwrite: bool = True,
               pixel_size: dict | None = None) -> Path:
    """Write peak response maps (K, H, W) as ``.npy`` or a float32 TIFF stack (K >= 1).

    Parameters
    ----------
    path : path-like
        A ``.npy``, ``.tif`` or ``.tiff`` file.
    prms : (K, H, W) ndarray
        The maps, written as float32; they must be finite.
    overwrite : bool
        If False and ``path`` exists, raise ``FileExistsError``.
    pixel_size : dict, optional
        The image's pixel size (`napari_prm.io.tiff_pixel_size` of its file), written into a
        TIFF's resolution tags as a label TIFF that cannot be an ImageJ one keeps it (an ImageJ
        unit of length as pixels per centimetre), so that the maps overlay the image and its
        labels in Fiji; ignored for ``.npy``.
    """
    prms = finite_array("prms", np.asarray(prms, dtype=np.float32))
    path = output_file("path", path)
    suffix = path.suffix.lower()
    if prms.ndim != 3:
        raise ValueError(f"prms must be (K, H, W), got shape {prms.shape}")
    resolution = {}
    if pixel_size:
        resolution = dict(zip(("resolution", "resolutionunit"), _standard_resolution(pixel_size)))
    if suffix == ".npy":
        with atomic_write(path, overwrite=overwrite) as temp:
            np.save(temp, prms)
    elif suffix in (".tif", ".tiff"):
        if len(prms) == 0:
            raise ValueError(f"cannot write {path}: a TIFF stack needs at least one PRM")
        with atomic_write(path, overwrite=overwrite) as temp:
            tifffile.imwrite(temp, prms, photometric="minisblack", compression="zlib", **resolution)
    else:
        raise ValueError(f"PRMs are written as .npy, .tif or .tiff, got {path}")
    return path


def _export_paths(out: Path, formats, stem: str | None) -> dict[str, Path]:
    if out.suffix.lower() in _SUFFIX_FORMATS and not out.is_dir():
        implied = _SUFFIX_FORMATS[out.suffix.lower()]
        if formats is not None and {_FORMAT_ALIASES.get(f) for f in formats} != {implied}:
            raise ValueError(f"{out} names one {implied} file, but formats={formats!r}; "
                             "pass a folder to write several formats")
        return {implied: out}
    formats = ("tiff", "coco", "csv") if formats is None else formats
    unknown = [f for f in formats if f not in _FORMAT_ALIASES]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; expected some of "
                         f"{sorted(_FORMAT_ALIASES)}")
    stem = stem or "labels"
    return {_FORMAT_ALIASES[f]: out / f"{stem}{EXPORT_SUFFIXES[_FORMAT_ALIASES[f]]}"
            for f in formats}


def _checked_stem(stem: str | None) -> str | None:
    """A file name stem: no folder separators, so that outputs stay in their folder; on
    Windows, none of the characters and names it refuses (`windows_name_problem`)."""
    if stem is None:
        return None
    if not isinstance(stem, str) or not stem or stem in (".", "..") or "/" in stem or "\\" in stem \
            or "\0" in stem:
        raise ValueError(f"stem: expected a file name stem without folder separators, got {stem!r}")
    problem = windows_name_problem(stem) if windows_rules() else None
    if problem:
        raise ValueError(f"stem: {stem!r} cannot name files here: {problem}")
    return stem


def export_instances(labels: np.ndarray, table, class_names: Sequence[str] | None,
                     out: str | os.PathLike, *, formats: Sequence[str] | None = None,
                     stem: str | None = None, overwrite: bool = False,
                     image_file_name: str = "", world: dict | None = None,
                     pixel_size: dict | None = None, axes: str | None = None, cancel=None,
                     kept: list | None = None) -> list[Path]:
    """Export a (corrected) label image with its classes in one or more formats.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Or a stack ``(*leading, H, W)`` for a TIFF and a CSV (whose rows name their plane;
        see `write_instances_csv`); PNG and COCO hold 2-D label images only.
    table : mapping of columns or None
        Instance table; see the module docstring. None: every label of class ``unknown``.
    class_names : sequence of str or None
        All classes (COCO categories); None: those in ``table``.
    out : path-like
        A file ending in ``.tif``/``.tiff``, ``.png``, ``.json`` (COCO) or ``.csv``: that one
        file is written. Otherwise a folder (created if needed) that receives
        ``<stem>_labels.tif``, ``<stem>_labels.png``, ``<stem>_instances.json`` and
        ``<stem>_instances.csv`` for the chosen ``formats``, as one file set (they replace
        earlier files of ``stem`` together; ``<stem>.manifest.json`` lists them).
    formats : sequence of {"tiff", "png", "coco", "csv"}, optional
        Default ``("tiff", "coco", "csv")`` for a folder.
    stem : str, optional
        File name stem in a folder; default ``"labels"``.
    overwrite : bool
        If False and any target exists, raise ``FileExistsError`` before writing anything.
    image_file_name : str
        ``file_name`` of the image in the COCO JSON, by which `coco_results` and ``napari-prm
        evaluate --predictions`` match the export to a dataset's image (none without one).
    world : dict, optional
        The napari layer's ``scale``, ``translate`` and ``units``, recorded in the label TIFF
        or PNG (`napari_prm.io.write_label_image`, with ``class_names``) and in the COCO
        JSON's image entry (`labels_to_coco`), so that the plugin's reader puts it back in
        place, with its classes.
    pixel_size : dict, optional
        The image's pixel size (`napari_prm.io.tiff_pixel_size` of its file, or
        ``Prediction.pixel_size``), written into the label TIFF as ``napari-prm predict`` writes
        it (`napari_prm.io.write_label_image`), so that it overlays the image in Fiji; it wins
        over a pixel size that ``world`` gives. Ignored for PNG and COCO JSON.
    axes : str, optional
        The names of a stack's axes (``"ZYX"``, ``"TYX"``; `napari_prm.io.label_axes_from_names` of a layer's
        axis labels), written into the label TIFF (`napari_prm.io.write_label_image`); without
        them tifffile names a stack's leading axes ``Q``, unnamed, unless ``world`` gives its
        first axis a unit of length or time.
    cancel : callable or threading.Event, optional
        Checked before each step (the COCO RLE, each file); when it says stop,
        `napari_prm.predict.Cancelled` is raised and nothing is written: files staged so far
        (and folders made for them) are removed, earlier files of ``stem`` are left as they were.
    kept : list, optional
        Receives a `napari_prm.io.fileset.KeptEdit` per output of ``stem`` that was changed
        after napari-prm wrote it (its content is not what ``<stem>.manifest.json`` records: a
        correction saved over it) and that this folder export replaces: the changed file is first
        copied beside it as ``<name>.edited-<n><suffix>`` (``x_labels.edited-1.tif``,
        `napari_prm.io.fileset.kept_name`), never over an earlier kept copy. Without a list
        each is reported with `warnings.warn`.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    napari_prm.predict.Cancelled
        ``cancel`` said stop before the files were switched in.
    """

    labels = _check_labels(labels, ndim=None)
    out = Path(out)
    if not (out.suffix.lower() in _SUFFIX_FORMATS and not out.is_dir()):
        output_folder("out", out)
    targets = _export_paths(out, formats, _checked_stem(stem or None))
    flat_only = sorted(set(targets) - {"tiff", "csv"})
    if flat_only and labels.ndim != 2:
        raise ValueError(f"{', '.join(flat_only)} export needs 2-D labels, got shape "
                         f"{labels.shape}; export a stack as a label TIFF and an instance "
                         "CSV (its rows name their plane) instead")
    if "png" in targets and int(labels.max(initial=0)) > 65535:
        raise ValueError(f"cannot export PNG {targets['png']}: PNG holds labels up to "
                         f"65535, the largest label is {labels.max()}")
    coco = None
    if "coco" in targets:  # computed first: a bad table fails before any file is written
        raise_if_cancelled(cancel, "export cancelled")
        coco = labels_to_coco(labels, table, class_names, file_name=image_file_name, world=world)
    raise_if_cancelled(cancel, "export cancelled")
    folder = next(iter(targets.values())).parent
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if len(targets) == 1 and out.suffix.lower() in _SUFFIX_FORMATS and not out.is_dir():
            (kind, target), = targets.items()  # one named file: replacing it is one rename already
            with atomic_write(target, overwrite=overwrite) as temp:  # raised in the block: the temporary goes
                _write_instances_as(kind, temp, labels, table, class_names, coco, pixel_size, world=world,
                                    axes=axes if kind == "tiff" else None)
                raise_if_cancelled(cancel, "export cancelled")
            return [target]
        try:
            previous = read_file_set(folder, stem or "labels")
        except ValueError:  # broken or foreign: replaced
            previous = None
        info = {"written_by": "export_instances", "image": image_file_name}
        info |= _kept_image_record(previous, image_file_name)
        # the files exported, and those earlier exports wrote that this one keeps listed: a later
        # predict --overwrite keeps them as corrections (`write_file_set(keep_exported=True)`)
        info["exported"] = sorted({path.name for path in targets.values()} | exported_files(previous))
        with write_file_set(folder, stem or "labels", {kind: path.name for kind, path in targets.items()},
                            overwrite=overwrite, info=info, kept=kept) as staged:
            for kind, temp in staged.items():  # raised in the block: the staged files go, the folder is unchanged
                raise_if_cancelled(cancel, "export cancelled")
                _write_instances_as(kind, temp, labels, table, class_names, coco, pixel_size, world=world,
                                    axes=axes if kind == "tiff" else None)
            raise_if_cancelled(cancel, "export cancelled")
        return list(targets.values())
    except Cancelled:  # nothing of the export is left: nor the folders it made (empty again)
        for path in made:
            try:
                path.rmdir()
            except OSError:  # not empty (written to meanwhile by another): kept
                break
        raise


#: What ``napari-prm predict`` records in a manifest of where its image is (`napari_prm.batch`).
IMAGE_RECORD = ("image_path", "image_from_out", "image_bytes", "image_sha256", "image_mtime_ns")


def _kept_image_record(previous: FileSet | None, image_file_name: str) -> dict:
    """Where the image is, as the manifest an export replaces (``previous``) recorded it
    (`IMAGE_RECORD`), when that manifest names an image of the file name ``image_file_name``:
    corrections exported over ``predict``'s outputs keep the record by which
    `napari_prm.refine.load_corrections` finds their image (their tree's well folder renamed, or no
    dataset given). ``{}`` otherwise."""
    if not image_file_name or previous is None or not previous.info.get("image_path"):
        return {}
    if Path(str(previous.info.get("image", ""))).name != Path(image_file_name).name:
        return {}  # another image's outputs, replaced by an export of this one
    return {key: previous.info[key] for key in IMAGE_RECORD if key in previous.info}


def _write_instances_as(kind: str, path: Path, labels, table, class_names, coco,
                        pixel_size: dict | None = None, world: dict | None = None, axes: str | None = None) -> None:
    if kind in ("tiff", "png"):
        write_label_image(path, labels, pixel_size=pixel_size, world=world, class_names=class_names, axes=axes)
    elif kind == "coco":
        write_coco_json(path, coco)
    else:
        write_instances_csv(path, labels, table, class_names, pixel_size=pixel_size, world=world)


def prediction_paths(out_dir: str | os.PathLike, stem: str, *,
                     prms_format: str | None = None) -> dict[str, Path]:
    """The files `write_prediction` writes for one image, by kind.

    Kinds ``tiff`` (``<stem>_labels.tif``), ``coco`` (``<stem>_instances.json``), ``csv``
    (``<stem>_instances.csv``), ``peaks`` (``<stem>_peaks.csv``) and, with ``prms_format``
    ``"npy"`` or ``"tiff"``, ``prms`` (``<stem>_prms.npy`` or ``.tif``).

    Parameters
    ----------
    out_dir : path-like
        The output folder.
    stem : str
        The image's output stem.
    prms_format : {None, "npy", "tiff"}, optional
        The PRM file written; None for none.
    """
    if prms_format not in (None, "npy", "tiff"):
        raise ValueError(f"prms_format must be None, 'npy' or 'tiff', got {prms_format!r}")
    out_dir = output_folder("out_dir", out_dir)
    stem = _checked_stem(stem)
    paths = _export_paths(out_dir, ("tiff", "coco", "csv"), stem)
    paths["peaks"] = out_dir / f"{stem}_peaks.csv"
    if prms_format is not None:
        paths["prms"] = out_dir / f"{stem}_prms.{'npy' if prms_format == 'npy' else 'tif'}"
    return paths


def write_prediction(prediction, out_dir: str | os.PathLike, stem: str, *,
                     prms_format: str | None = None, overwrite: bool = False,
                     image_file_name: str = "", info: dict | None = None,
                     pixel_size: dict | None = None, kept: list | None = None) -> list[Path]:
    """Write what ``napari-prm predict`` saves for one image, all or nothing.

    Parameters
    ----------
    prediction : Prediction
        From `napari_prm.predict`.
    out_dir : path-like
        Created if needed.
    stem : str
        File name stem; see `prediction_paths` for the names. A TIFF of PRMs is left
        out when there are no peaks.
    prms_format : {None, "npy", "tiff"}
        Also write the PRMs (K, H, W).
    overwrite : bool
        If False and any target exists, raise ``FileExistsError`` before writing anything.
    image_file_name : str
        ``file_name`` of the image in the COCO JSON: the dataset's name of the image (``a.jpg``),
        by which `coco_results` and ``napari-prm evaluate --predictions`` match the export to
        it (an export without one matches no image).
    info : dict, optional
        Extra facts for the manifest (e.g. the prediction settings).
    pixel_size : dict, optional
        The image's pixel size (`napari_prm.io.tiff_pixel_size` of its file), written into
        ``<stem>_labels.tif`` and a TIFF of PRMs (`write_prms`). Default: the prediction's own
        (``prediction.pixel_size``: that of the TIFF file `napari_prm.predict` was given).
    kept : list, optional
        Receives a `napari_prm.io.fileset.KeptEdit` per output of ``stem`` that was changed
        after napari-prm wrote it (its content is not what ``<stem>.manifest.json`` records: a
        correction saved over it) and that this write replaces: the changed file is first
        copied beside it as ``<name>.edited-<n><suffix>`` (``x_labels.edited-1.tif``,
        `napari_prm.io.fileset.kept_name`), never over an earlier kept copy. Without a list
        each is reported with `warnings.warn`.

    Returns
    -------
    list of Path
        The files written.

    Notes
    -----
    The files are one file set (`napari_prm.io.fileset.write_file_set`): they replace
    the previous outputs of ``stem`` in one step, even if the process is killed midway,
    and outputs of an earlier run that this one does not write (``<stem>_prms.npy`` when
    PRMs are no longer saved) are removed in the same step. ``<stem>.manifest.json``
    lists the files with the numbers of peaks and instances.
    """
    targets = _prediction_targets(out_dir, stem, prms_format, prms=len(prediction.prms))
    if pixel_size is None:
        pixel_size = getattr(prediction, "pixel_size", None)
    labels, table = prediction.to_labels()
    coco = labels_to_coco(labels, table, prediction.class_names, file_name=image_file_name)
    facts = {"written_by": "write_prediction", "image": image_file_name,
             "peaks": int(len(prediction.peaks)), "instances": int(len(prediction.instances)),
             "image_shape": [int(n) for n in prediction.image_shape], **(info or {})}

    def write(kind: str, temp: Path) -> None:
        if kind == "peaks":
            write_peaks_csv(temp, prediction)
        elif kind == "prms":
            write_prms(temp, prediction.prms, pixel_size=pixel_size)
        else:
            _write_instances_as(kind, temp, labels, table, prediction.class_names, coco, pixel_size)

    return _write_targets(out_dir, stem, targets, write, overwrite=overwrite, facts=facts, kept=kept)


def _prediction_targets(out_dir, stem: str, prms_format: str | None, *, prms: int,
                        left_out: Sequence[str] = ()) -> dict[str, Path]:
    """The files `write_prediction` (or `write_stack_prediction`, less ``left_out``) writes, by kind:
    `prediction_paths`, without a TIFF of PRMs when there are none (``prms``: how many)."""
    targets = prediction_paths(out_dir, stem, prms_format=prms_format)
    for kind in left_out:
        del targets[kind]
    if prms_format == "tiff" and prms == 0:
        del targets["prms"]
    return targets


def _write_targets(out_dir, stem: str, targets: dict[str, Path], write, *, overwrite: bool,
                   facts: dict, kept: list | None = None) -> list[Path]:
    """Write ``targets`` as ``stem``'s file set, ``write(kind, temp)`` writing each: the other
    outputs of `prediction_paths` (a PRM file of another format) are removed in the same switch,
    and the manifest records ``facts``; edited outputs, and instances exported over the outputs,
    are kept aside first (``kept``, as for `write_prediction`). Returns the files written."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    names = {kind: path.name for kind, path in targets.items()}
    replaced = {path.name for fmt in ("npy", "tiff")
                for path in prediction_paths(out_dir, stem, prms_format=fmt).values()} - set(names.values())
    with write_file_set(out_dir, stem, names, overwrite=overwrite, removes=replaced, info=facts,
                        kept=kept, keep_exported=True) as staged:
        for kind, temp in staged.items():
            write(kind, temp)
    return list(targets.values())


#: The outputs of `write_prediction` that a stack's (`write_stack_prediction`) leave out: COCO
#: holds 2-D label images only, as the plugin's Export says.
STACK_LEFT_OUT = ("coco",)


def stack_labels(predictions) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The instances of a stack's planes as one label stack and one instance table.

    Parameters
    ----------
    predictions : sequence of Prediction
        One per plane, in plane order, all of one image size.

    Returns
    -------
    labels : (N, H, W) uint16 or uint32 ndarray
        Each plane's `Prediction.to_labels`, its labels raised above every label of the
        planes before it (also those of instances painted over, which keep a table row), so
        that a label is one instance of one plane (as the plugin's ``all planes`` run lays them out).
    table : dict of ndarray
        The planes' instance tables, concatenated, ``label`` raised as in ``labels`` and
        ``peak`` numbered over all planes (`write_stack_peaks_csv` numbers them so).
    """
    planes = [prediction.to_labels() for prediction in predictions]
    # a plane's labels take the numbers of all its instances: one painted over by others (no
    # pixels) keeps its table row and label, which the next plane's must not take again
    spans = [max(int(labels.max(initial=0)), int(np.max(table["label"], initial=0))) for labels, table in planes]
    top = sum(spans)
    stack = np.zeros((len(planes), *predictions[0].image_shape), np.uint16 if top <= 65535 else np.uint32)
    tables, label_offset, peak_offset = [], 0, 0
    for plane, ((labels, table), prediction, span) in enumerate(zip(planes, predictions, spans)):
        stack[plane] = np.where(labels > 0, labels.astype(np.int64) + label_offset, 0)
        table = {name: np.asarray(values) for name, values in table.items()}
        table["label"] = table["label"].astype(np.int64) + label_offset
        if "peak" in table:
            table["peak"] = np.where(table["peak"] >= 0, table["peak"].astype(np.int64) + peak_offset, -1)
        tables.append(table)
        label_offset += span
        peak_offset += len(prediction.peaks)
    names = [name for name in tables[0] if all(name in table for table in tables)] if tables else ["label"]
    table = {name: np.concatenate([t[name] for t in tables]) for name in names} if tables else \
        {"label": np.zeros(0, np.int64)}
    return stack, table


def write_stack_prediction(predictions, out_dir: str | os.PathLike, stem: str, *,
                           prms_format: str | None = None, overwrite: bool = False,
                           image_file_name: str = "", info: dict | None = None,
                           pixel_size: dict | None = None, axes: str | None = None,
                           kept: list | None = None) -> list[Path]:
    """Write what ``napari-prm predict`` saves for a stack predicted plane by plane, all or nothing.

    As `write_prediction`, with the planes' results put together as the plugin's Export
    writes a stack: ``<stem>_labels.tif`` is the (N, H, W) label stack (`stack_labels`, with
    the class names and ``pixel_size``), ``<stem>_instances.csv`` has one row per (plane,
    label), ``<stem>_peaks.csv`` a ``plane`` column (`write_stack_peaks_csv`), and the PRMs
    are those of all planes' peaks, in that order. No COCO JSON is written (`STACK_LEFT_OUT`:
    it holds 2-D label images only). The manifest records ``planes`` (N) besides the totals of
    peaks and instances, by which `complete_prediction` knows the set complete without COCO.

    Parameters
    ----------
    predictions : sequence of Prediction
        One per plane, in plane order (at least one), all of one image size.
    out_dir, stem, prms_format, overwrite, image_file_name, info, pixel_size, kept
        As for `write_prediction`.
    axes : str, optional
        The label stack's axes (``"ZYX"``, ``"TYX"``: the image stack's
        `napari_prm.io.ImageStack.label_axes`), written into ``<stem>_labels.tif``
        (`napari_prm.io.write_label_image`); without them a stack is written with tifffile's
        unnamed ``QYX`` unless ``pixel_size`` names its plane axis.

    Returns
    -------
    list of Path
        The files written.
    """
    predictions = list(predictions)
    if not predictions:
        raise ValueError("predictions: expected one prediction per plane, got none")
    peaks = sum(len(prediction.peaks) for prediction in predictions)
    targets = _prediction_targets(out_dir, stem, prms_format, prms=peaks, left_out=STACK_LEFT_OUT)
    labels, table = stack_labels(predictions)
    class_names = predictions[0].class_names
    facts = {"written_by": "write_stack_prediction", "image": image_file_name, "planes": len(predictions),
             "peaks": int(peaks), "instances": int(sum(len(p.instances) for p in predictions)),
             "plane_peaks": [int(len(p.peaks)) for p in predictions],
             "plane_instances": [int(len(p.instances)) for p in predictions],
             "image_shape": [int(n) for n in predictions[0].image_shape], **(info or {})}

    def write(kind: str, temp: Path) -> None:
        if kind == "peaks":
            write_stack_peaks_csv(temp, predictions)
        elif kind == "prms":
            prms = [np.asarray(p.prms, np.float32) for p in predictions]
            write_prms(temp, np.concatenate(prms) if peaks else np.zeros((0, *labels.shape[1:]), np.float32),
                       pixel_size=pixel_size)
        else:
            _write_instances_as(kind, temp, labels, table, class_names, None, pixel_size, axes=axes)

    return _write_targets(out_dir, stem, targets, write, overwrite=overwrite, facts=facts, kept=kept)


def complete_prediction(out_dir: str | os.PathLike, stem: str, *,
                        prms_format: str | None = None) -> FileSet | None:
    """The outputs of ``stem`` when `write_prediction` (or `write_stack_prediction`) wrote them
    completely, else None.

    Complete means: ``<stem>.manifest.json`` lists every file ``prms_format`` asks for
    (the PRM file may be absent when there were no peaks and TIFF was asked for, the COCO
    JSON when the manifest records a stack's ``planes``), every
    listed file exists, and no switch is left unfinished (one a killed writer committed
    is finished here first). Resuming runs skip the images whose outputs are complete.

    Parameters
    ----------
    out_dir : path-like
        The output folder.
    stem : str
        The image's output stem.
    prms_format : {None, "npy", "tiff"}, optional
        The PRM file the run writes; None asks for none.
    """
    recover_file_sets(out_dir, stem=stem)
    try:
        file_set = read_file_set(out_dir, stem)
    except ValueError:
        return None
    return _complete_set(file_set, out_dir, stem, prms_format=prms_format)


def _complete_set(file_set: FileSet | None, out_dir, stem: str, *, prms_format: str | None = None) -> FileSet | None:
    """``file_set`` (`read_file_set` of ``stem`` in ``out_dir``, after `recover_file_sets`) when it
    holds the complete outputs `complete_prediction` says, else None."""
    if file_set is None or file_set.missing():
        return None
    paths = prediction_paths(out_dir, stem, prms_format=prms_format)
    wanted = set(paths)
    if file_set.info.get("planes"):  # a stack's outputs (`write_stack_prediction`)
        wanted -= set(STACK_LEFT_OUT)
    if prms_format == "tiff" and file_set.info.get("peaks") == 0:
        wanted.discard("prms")
    if not wanted <= set(file_set.files):
        return None
    if "prms" in wanted and file_set.files["prms"].name != paths["prms"].name:
        return None
    return file_set


def settle_outputs(path: str | os.PathLike) -> None:
    """Finish an interrupted switch of the outputs that the file ``path`` belongs to.

    Readers call it before opening ``<stem>_labels.tif`` or ``<stem>_instances.json``,
    so that they see all-new outputs after a writer was killed between its commit and
    the renames (`napari_prm.io.fileset`). Nothing happens for other files.

    Parameters
    ----------
    path : path-like
        An output file of napari-prm (``<stem>_labels.tif``, ``<stem>_instances.json``, ...).
    """
    path = Path(path)
    for suffix in (*EXPORT_SUFFIXES.values(), "_peaks.csv", "_prms.npy", "_prms.tif"):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            stem = path.name[: -len(suffix)]
            if (path.parent / f"{stem}.manifest.json").is_file():
                recover_file_sets(path.parent, stem=stem)
            return
