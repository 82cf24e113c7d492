"""Exporters and importers: images, label images, COCO JSON, instance and peak CSVs, PRMs.

The one place that knows the file formats; the command line, the napari writer and the
widgets all call it. Every file is written atomically (`atomic_write`): to a temporary
file in the target's folder, then renamed over the target, so a failed write leaves the
previous file as it was. The several files of one image are a *file set*
(`write_file_set`): they switch from old to new in one step, even when the process is
killed, and ``<stem>.manifest.json`` lists them.

module                        holds
============================  ==========================================================
``napari_prm.io.atomic``      `atomic_write`, `atomic_writes`, `remove_stale_temporaries`,
                              `writable_folder`
``napari_prm.io.fileset``     `write_file_set`, `read_file_set`, `recover_file_sets`:
                              one image's files, replaced in one step (a manifest);
                              `KeptEdit`, `kept_name`: hand edits kept aside first
``napari_prm.io.images``      ``IMAGE_SUFFIXES``, `read_image` (the one image reader),
                              `read_stack`, `stack_planes` (TIFF stacks of Z/T planes),
                              `read_array`, `image_array` (PIL images, tensors, paths),
                              `as_rgb_float` (the one RGB normaliser), `opacity_note`, `channels_first_note`,
                              `format_note` (a PNG or JPEG named ``.tif``, read by content),
                              `unreadable_images` (headers and ends, no decoding),
                              `pick_channels`, `channels_for`, `channels_read_as`, `parse_channels`
                              (channels read as RGB)
``napari_prm.io.paths``       `sorted_paths`: one order of files on every operating system;
                              `image_stem` (``cells.ome.tif`` -> ``cells``), which names outputs
``napari_prm.io.labels``      `write_label_image`, `read_label_image`, `tiff_pixel_size`,
                              `read_label_world`, `read_label_class_names`,
                              `label_axes_from_names`
``napari_prm.io.tables``      instance tables; `write_instances_csv`, `read_instances_csv`,
                              `write_peaks_csv`, `write_stack_peaks_csv`
``napari_prm.io.coco``        `labels_to_coco`, `instances_to_coco`, `coco_to_labels`, `coco_image_world`,
                              `coco_results` (exports in a dataset's ids),
                              `match_exports`, `write_coco_json`
``napari_prm.io.prediction``  `export_instances`, `write_prediction`, `write_stack_prediction`,
                              `stack_labels`, `prediction_paths`,
                              `write_prms`, `complete_prediction`, `settle_outputs`
============================  ==========================================================

An *instance table* is a mapping of equal-length columns ``label, class_index, class_name,
score, peak`` (a dict of arrays or napari's ``Labels.features`` DataFrame). Labels present
in the image but absent from the table (painted by hand) are exported with class index -1,
class name ``"unknown"``, no score and peak -1.

This package imports neither napari/Qt nor torch.
"""

from .atomic import atomic_write, atomic_writes, remove_stale_temporaries, writable_folder
from .coco import (
    UNKNOWN_CATEGORY_ID,
    MatchedExport,
    coco_image_world,
    coco_results,
    coco_to_labels,
    instances_to_coco,
    labels_to_coco,
    match_exports,
    write_coco_json,
)
from .fileset import (
    MANIFEST_SUFFIX,
    FileSet,
    KeptEdit,
    kept_name,
    listed_files,
    read_file_set,
    recover_file_sets,
    write_file_set,
)
from .images import (
    IMAGE_SUFFIXES,
    ImageStack,
    as_rgb_float,
    channel_words,
    channels_first_note,
    channels_for,
    channels_read_as,
    format_note,
    image_array,
    opacity_note,
    parse_channels,
    pick_channels,
    read_array,
    read_image,
    read_plane,
    read_stack,
    stack_planes,
    unreadable_images,
)
from .labels import (
    label_axes_from_names,
    read_label_class_names,
    read_label_image,
    read_label_world,
    tiff_pixel_size,
    write_label_image,
)
from .paths import image_stem
from .prediction import (
    EXPORT_SUFFIXES,
    complete_prediction,
    export_instances,
    prediction_paths,
    settle_outputs,
    stack_labels,
    write_prediction,
    write_prms,
    write_stack_prediction,
)
from .tables import (
    INSTANCE_CSV_COLUMNS,
    INSTANCE_CSV_UM_COLUMNS,
    UNKNOWN_CLASS,
    read_instances_csv,
    write_instances_csv,
    write_peaks_csv,
    write_stack_peaks_csv,
)

__all__ = [
    "atomic_write", "atomic_writes", "remove_stale_temporaries", "writable_folder", "write_file_set", "read_file_set",
    "recover_file_sets", "listed_files", "FileSet", "KeptEdit", "kept_name",
    "MANIFEST_SUFFIX", "complete_prediction", "settle_outputs",
    "read_array", "read_image", "read_plane", "read_stack", "stack_planes", "ImageStack", "image_array", "as_rgb_float",
    "pick_channels", "channels_for", "channels_read_as", "channel_words", "parse_channels",
    "opacity_note", "unreadable_images", "channels_first_note", "format_note",
    "write_label_image", "label_axes_from_names", "read_label_image", "tiff_pixel_size", "read_label_world",
    "read_label_class_names",
    "labels_to_coco", "instances_to_coco", "coco_to_labels", "coco_image_world", "coco_results", "match_exports",
    "MatchedExport",
    "write_coco_json", "write_instances_csv",
    "read_instances_csv", "write_peaks_csv", "write_stack_peaks_csv", "write_prms", "export_instances",
    "write_prediction", "write_stack_prediction", "stack_labels", "prediction_paths", "IMAGE_SUFFIXES", "UNKNOWN_CLASS",
    "UNKNOWN_CATEGORY_ID", "INSTANCE_CSV_COLUMNS", "INSTANCE_CSV_UM_COLUMNS", "EXPORT_SUFFIXES", "image_stem",
]
