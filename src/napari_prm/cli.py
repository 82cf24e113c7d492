"""The ``napari-prm`` command line: predict, train, calibrate, refine, evaluate, demo, bench.

Every subcommand is a thin layer over the library (`napari_prm.predict`,
`napari_prm.train.train`, `napari_prm.refine.refine`, `napari_prm.evaluate.evaluate`,
`napari_prm.io`); heavy
modules are imported only when a command runs, so ``--help`` stays quick.

Exit status: 0 on success; 1 when some inputs failed (``predict``: an unreadable image;
the others are still written) or on an unexpected internal error; 2 for bad arguments or
inputs, or when nothing could run (no images, model or dataset not loadable); 130 when
interrupted (Ctrl-C); 143 when ended by SIGTERM (``kill``, ``timeout``, a batch system's time
limit), 129 by SIGHUP (the terminal closed, the ssh connection dropped; not under ``nohup``),
which stop a command as Ctrl-C does, its last line naming the signal ("terminated by SIGTERM:
model.pt keeps epoch 3; continue with --resume" where Ctrl-C says "interrupted: ..."). No
user error prints a Python traceback: an
unexpected exception is reported in one line, and ``--debug`` prints the traceback of any
error, a user error's included.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from . import _validate as check
from ._text import Worded, did_you_mean, first_names, for_command_line, in_front_end_words, plural
from .batch import (
    SUMMARY_NAME,
    LeftOut,
    PlaneTally,
    _folder_lock,
    collect_images,
    image_names,
    model_label,
    output_name,
    output_states,
    output_stems,
    record_written,
    renamed_notes,
    written_since,
)
from .io import IMAGE_SUFFIXES, writable_folder
from .io.images import quiet_large_image_warning

if TYPE_CHECKING:
    from .model import PRMModel

PROPOSAL_HELP = ("segment proposals for instance retrieval: 'auto' ('refined' when the model has a "
                 "refinement head, else 'default'), 'default', 'prm' (from the PRMs), 'default+prm', "
                 "'refined' (one instance per peak from the model's refinement head, see 'refine'), "
                 "'none' (peaks and PRMs only, no instances), a proposal file, "
                 "or a folder holding one proposal file per image with the image's stem "
                 "(e.g. sample0.json for sample0.jpg; with --recursive, where the tree puts it, "
                 "A1/cat.json for A1/cat.png, else at the folder's top)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the descriptions' line breaks.

    Like ``ArgumentDefaultsHelpFormatter``, except that an option whose help already says
    its default in words (``(default: ...)``, needed where the default is None) keeps that.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.required or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"


#: Seconds between the plain progress lines of ``predict`` and ``evaluate`` when stderr is no
#: terminal (a log file, a pipe), where the progress bar is off.
LOG_PROGRESS_EVERY = 60.0


def _log_line_due(bar, done: int, total: int, logged: list[float]) -> bool:
    """Whether a plain progress line is due (``predict``, ``evaluate``): the progress bar ``bar``
    is off (stderr is a log file or a pipe, which gets a line now and then, not a bar redrawn
    with \\r), ``done`` is short of ``total``, and `LOG_PROGRESS_EVERY` seconds passed since
    ``logged[0]`` (the last line's `time.monotonic`, updated when one is due)."""
    if bar.disable and done < total and time.monotonic() - logged[0] >= LOG_PROGRESS_EVERY:
        logged[0] = time.monotonic()
        return True
    return False


class CommandError(Exception):
    """A failure that ends a command with a message and exit status 2."""


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _max_peaks(name: str, value):
    from .predictor import MAX_PEAKS_LIMIT

    return None if value is None else check.integer(name, value, low=1, high=MAX_PEAKS_LIMIT)


def _proposals_arg(value: str):
    return None if value.lower() == "none" else value


def _channels_arg(value: str) -> list[int]:
    """One word of ``--channels``: ``2`` or ``0,2`` (`napari_prm.io.channel_words`, which reads the
    Train widget's field too)."""
    from .io import channel_words

    try:
        return channel_words(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


CHANNELS_HELP = ("of a multichannel image (TIFF: ImageJ/OME C axis, or unnamed (C, Y, X) or (Y, X, C)), read "
                 "these 1 to 3 different channels, from 0, as the network's red, green and blue: 0 2 or 0,2 "
                 "(1 channel: gray; 2: red, green and an empty blue); each channel of 16 bits (or floats beyond "
                 "[0, 1]) is stretched by its own percentiles, 8-bit ones are read as they are")


def _add_channels_option(parser: argparse.ArgumentParser, *, training: bool = False, more: str = "") -> None:
    default = ("(default: those of a fine-tuned or resumed --model that recorded them, else the images as they "
               "are); recorded in the checkpoint, which predict, calibrate, evaluate and refine then read "
               "images with" if training else
               "(default: those the model was trained on, which its checkpoint records, else the images as they "
               "are; channels that differ from the model's are noted)")
    parser.add_argument("--channels", nargs="+", type=_channels_arg, default=None, metavar="INDEX",
                        help=f"{CHANNELS_HELP} {default}{more}")


def _channels(args, recorded) -> list[int] | None:
    """The channels to read images with: ``--channels``, else ``recorded`` (the model's); says a
    note when they differ, and which ones are read when they come from the model."""
    from .io import channels_for, channels_read_as

    given = None if args.channels is None else [c for word in args.channels for c in word]
    try:
        channels, note = channels_for(given, recorded)
    except ValueError as error:
        raise CommandError(f"--channels: {str(error).removeprefix('channels: ')}") from error
    if note:
        _say(f"note: {note}")
    elif given is None and channels is not None:
        _say(f"reading {channels_read_as(channels)}: those the model was trained on (--channels picks others)")
    return channels


def _model_channels(model) -> list[int] | None:
    """The channels a model (a PRMModel, a checkpoint's path or a built-in name) records; None
    for none, and for a checkpoint that cannot be read (loading it says why)."""
    from .model.checkpoint import PRMModel, model_channels

    if isinstance(model, PRMModel):
        return model.settings.get("channels")
    return model_channels(model)


#: How --model help says that a name means the built-in model (`napari_prm.model.is_builtin_name`).
NAMED_LIKE_BUILTIN = "a file named like a built-in model is given as a path: ./imagenet-voc"


def _add_model_options(parser: argparse.ArgumentParser, *, device_only: bool = False) -> None:
    if not device_only:
        parser.add_argument("--model", default="imagenet-voc",
                            help="a built-in model, offline: EfficientNet-Lite0 with the VOC classes ImageNet "
                                 "covers ('imagenet-voc'), the COCO classes it covers ('imagenet-coco') or its 1000 "
                                 "ImageNet classes ('imagenet'); or a checkpoint (.pt/.safetensors); "
                                 + NAMED_LIKE_BUILTIN)
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1, mps (default: CUDA, then "
                             "MPS, then the CPU)")


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help="a COCO instances .json, a CSV 'image,labels' (labels ';'-separated), a PASCAL VOC "
                             "split list (VOC2012/ImageSets/Segmentation/val.txt: its ids' XML labels, "
                             "segmentation masks and JPEGs) or year folder (VOC2012: every image with an XML), "
                             "or a folder with one sub-folder of images per class (searched at any depth)")
    parser.add_argument("--image-dir", default=None,
                        help="folder of the images (default: for COCO <root>/<split>/ or the "
                             "JSON's folder, for a CSV the CSV's folder; a PASCAL VOC devkit and a folder per "
                             "class hold their own)")
    parser.add_argument("--voc", action="store_true",
                        help="keep only the 20 PASCAL VOC classes (the PRM paper's label space)")


DEBUG_HELP = ("on an error, also print its Python traceback (an unexpected error's, and a user error's too); "
              "show the warnings of tifffile, the TIFF reader (default: off)")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by predict, evaluate and demo: the preset and the settings users change most."""
    group = parser
    group.add_argument("--preset", choices=("default", "original"), default="default",
                       help="'original': the official release's inference (sub-pixel factor 8, class "
                            "threshold 0, peak threshold 30 on its CRM scale, retrieval on the network grid); "
                            "'default': calibrated thresholds, one peak per location, a background that lets an "
                            "object fill the image, parts merged into their object, full-resolution masks "
                            "(docs/accuracy.md)")
    group.add_argument("--class-threshold", type=float, default=None,
                       help="drop peaks of classes whose score is below this (default: the model's calibrated "
                            "value, 0 for a checkpoint without one; the original preset: 0)")
    group.add_argument("--peak-threshold", type=float, default=None,
                       help="drop peaks whose response is not above this (default: the model's calibrated "
                            "value, none for a checkpoint without one; the original preset: 30)")
    group.add_argument("--max-peaks", type=int, default=None,
                       help="keep at most this many peaks per image, the strongest (default: 50; at most 1000)")
    group.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                       help="resize images to this network input instead of the model's own size: larger "
                            "gives small, crowded objects (cells, nuclei) peaks of their own, at about 4x the "
                            "time per peak for twice the side; the thresholds stay those calibrated at the "
                            "model's size (default: the model's input size, 448 448 for the built-in models)")
    group.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="test-time augmentation: average the CRMs over a flip and scales 0.75/1/1.25 "
                            "(about 6x the time) (default: off)")
    group.add_argument("--prm-mode", choices=("exact", "fast"), default=None,
                       help="'fast' back-propagates to the stride-8 features and upsamples; not with --tta "
                            "(default: exact)")


def _option_words() -> dict[str, str]:
    """The inference options by the argument names the library's notes use, as the command line prints
    those notes: ``{"peak_threshold": "--peak-threshold", "max_peaks": "--max-peaks", ...}`` ("lower
    peak_threshold to see it" is printed "lower --peak-threshold to see it"). Read from the options
    themselves; only those named by their argument name with dashes, and with an underscore (not a
    word such as "preset" that a note may use in its ordinary sense)."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_inference_options(parser)
    return {action.dest: action.option_strings[0] for action in parser._actions
            if "_" in action.dest and action.option_strings == ["--" + action.dest.replace("_", "-")]}


def _inference_settings(args) -> dict:
    """The inference options given on the command line, as ``predict`` keywords."""
    settings = {"preset": args.preset}
    for name in ("class_threshold", "peak_threshold", "max_peaks", "input_size", "tta", "prm_mode"):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    return settings


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``napari-prm`` with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="napari-prm", formatter_class=_Formatter,
        description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"napari-prm {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # --debug is accepted after the command too; SUPPRESS keeps the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_command(name: str, **options) -> argparse.ArgumentParser:
        command = commands.add_parser(name, formatter_class=_Formatter, parents=[common], **options)
        command.set_defaults(parser=command)
        return command

    predict = add_command(
        "predict", help="segment instances in images",
        description="Run PRM on images and write, per image: <stem>_labels.tif (label image), "
                    "<stem>_instances.json (COCO, RLE masks with class and score), "
                    "<stem>_instances.csv, <stem>_peaks.csv and optionally <stem>_prms.npy/.tif, "
                    "all replaced in one step (<stem>.manifest.json lists them); and summary.csv "
                    "(image, status, peaks, instances, seconds, error, attempts, stem, planes), the output "
                    "folder's record: a re-run on some of the images replaces their rows and keeps "
                    "the rows of the other images whose outputs are there."
                    "\nA TIFF stack of z-planes or time points (ImageJ or OME axes Z and/or T, of gray "
                    "or RGB planes) is predicted plane by plane, as the napari plugin does: its "
                    "<stem>_labels.tif is the label stack, <stem>_instances.csv has a row per plane and "
                    "label, <stem>_peaks.csv a plane column, and no COCO JSON is written (it holds 2-D "
                    "labels only). The progress bar counts planes."
                    "\nAn image that cannot be read (not an image, damaged, or of axes predict does not "
                    "take) is reported after one attempt and skipped (exit status 1), as another "
                    "cannot mend it; one whose prediction fails otherwise (or whose cluster worker "
                    "dies) is tried twice, then reported and skipped; "
                    "images with complete outputs are skipped unless --overwrite, so a re-run "
                    "after a crash or Ctrl-C does only what is missing; outputs that another model "
                    "or other settings made, or those of an image file changed since (its size, or its "
                    "content when modified since), are skipped too, and the run says so."
                    "\nWith --workers or --scheduler the images are spread over a dask.distributed "
                    "cluster; the workers read the images and write the outputs, so they must see "
                    "the same paths.")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help=f"images or folders of images ({', '.join(IMAGE_SUFFIXES)}; "
                              "8- or 16-bit); a folder's sub-folders are searched only with --recursive "
                              "(a note names those holding images)")
    predict.add_argument("-r", "--recursive", action="store_true",
                         help="search the folders' sub-folders too, at any depth (not hidden ones); "
                              "the outputs mirror the tree in the output folder (plate/A1/cat.png -> "
                              "OUT/A1/cat_labels.tif ...) and summary.csv's stem column holds that path "
                              "(default: only the folders' own files)")
    predict.add_argument("--out", required=True, type=Path, help="output folder (created)")
    _add_model_options(predict)
    predict.add_argument("--proposals", default="auto", type=_proposals_arg, help=PROPOSAL_HELP)
    _add_channels_option(predict)
    _add_inference_options(predict)
    predict.add_argument("--classes", action="append", default=None, metavar="NAME",
                         help="keep only peaks of this class (name or index); repeat for more "
                              "(default: all classes)")
    predict.add_argument("--save-prms", choices=("npy", "tiff"), default=None,
                         help="also write the peak response maps as .npy or a TIFF stack "
                              "(default: not written)")
    predict.add_argument("--peak-batch-size", type=int, default=None,
                         help="peaks back-propagated at once (default: 1 on CPU, 16 on GPU)")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace existing outputs (recompute them); an output corrected by hand since it "
                              "was written is first kept beside it as <name>.edited-<n><suffix>, and a "
                              "warning names it")
    cluster = predict.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="start a local dask.distributed cluster of N worker processes, one "
                              "thread each (torch with 1 thread), and print its dashboard link "
                              "(needs bokeh) (default: no cluster, images one after the other in "
                              "this process)")
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="run on an existing dask.distributed cluster, e.g. tcp://host:8786 "
                              "(default: none)")
    predict.set_defaults(run=_run_predict)

    train = add_command(
        "train", help="train a PRM model from image-level labels",
        description="Train a PRM model with the original recipe (multilabel soft-margin loss, "
                    "SGD). The checkpoint is written after every epoch and can be resumed.")
    _add_dataset_options(train)
    train.add_argument("--classes", action="append", default=None, metavar="NAME",
                       help="train on these classes only, in this order; repeat for more "
                            "(default: every class of the dataset)")
    train.add_argument("--out", default="prm_model.pt", type=Path,
                       help="checkpoint (.pt); an existing file is refused, unless continued (--resume) "
                            "or replaced (--overwrite) (default: prm_model.pt; when resuming a named checkpoint: "
                            "that checkpoint)")
    train.add_argument("--model", default=None,
                       help="fine-tune this checkpoint (.pt/.safetensors) or built-in model ('imagenet-voc', "
                            "'imagenet-coco', 'imagenet': EfficientNet-Lite0 whose ImageNet classifier rows "
                            "for the dataset's classes of the same name, a VOC class by either spelling "
                            "(motorbike: motorcycle), are kept), or start from this "
                            "backbone's ImageNet weights (default: a new --backbone model); a file named like a "
                            "built-in model or backbone is given as a path: ./imagenet-voc")
    train.add_argument("--backbone", default="efficientnet_lite0",
                       choices=("efficientnet_lite0", "resnet50", "vgg16", "tiny"),
                       help="backbone of a new model (ImageNet weights; resnet50/vgg16 are "
                            "downloaded by torchvision); refused with a --model of another backbone, "
                            "whose own it keeps")
    train.add_argument("--epochs", type=int, default=20,
                       help="total number of epochs (with --resume: the run's own total unless given)")
    train.add_argument("--batch-size", type=int, default=16, help="images per batch")
    train.add_argument("--lr", type=float, default=0.01, help="learning rate of the classifier")
    train.add_argument("--backbone-lr-mult", type=float, default=0.01,
                       help="the backbone learns at lr times this")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    train.add_argument("--input-size", type=int, nargs=2, default=None,
                       metavar=("HEIGHT", "WIDTH"),
                       help="network input size (default: the input size of the --model fine-tuned, which its "
                            "thresholds were calibrated at; 448 448 for a new model, the built-in models "
                            "and a model without one)")
    train.add_argument("--sub-pixel-locating-factor", type=int, default=8,
                       help="CRM upsampling for peak stimulation while training")
    train.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                       help="random horizontal flips")
    train.add_argument("--val-fraction", type=float, default=0.2,
                       help="hold out this share of images from training, chosen by class (one of each "
                            "class with two images or more first, then each by its share): classification "
                            "AP per epoch, and the thresholds are calibrated on them at the end (never an image whose "
                            "class has no other: fewer, or none, are then held out, and the training "
                            "images calibrate)")
    train.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                       help="after the last epoch, choose the class and peak thresholds on the held-out "
                            "images (image-level labels only) and store them in the checkpoint (default: on; "
                            "with --resume: as the run was started, which the checkpoint records)")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                       help="continue the run saved in CHECKPOINT (written on in CHECKPOINT itself "
                            "unless --out is given), or in --out when given alone, "
                            "with its recipe and model (options asking for others are refused; "
                            "--epochs sets a new total, not below the epochs done) (default: start afresh)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing --out with a new run (without it, an existing --out is "
                            "refused before anything runs, so a trained model is never lost)")
    _add_channels_option(train, training=True)
    train.add_argument("--num-workers", type=int, default=0, help="data loader processes")
    _add_model_options(train, device_only=True)
    train.set_defaults(run=_run_train)

    calibrate = add_command(
        "calibrate", help="choose a model's class and peak thresholds from image-level labels",
        description="Run a model on images with image-level labels that it was not trained on, choose the "
                    "class and peak thresholds that best separate peaks of classes an image shows from the "
                    "others (F1), with and without test-time augmentation, and store them in the checkpoint "
                    "(predict, evaluate and the plugin use them). 'train' does this at its end; use "
                    "'calibrate' for checkpoints from elsewhere or after changing the data.")
    _add_dataset_options(calibrate)
    calibrate.add_argument("--model", required=True,
                           help="checkpoint (.pt/.safetensors) to calibrate, or a built-in model "
                                "('imagenet-voc', 'imagenet-coco', 'imagenet') with --out; " + NAMED_LIKE_BUILTIN)
    calibrate.add_argument("--out", type=Path, default=None,
                           help="write the calibrated checkpoint here; missing folders are created "
                                "(default: replace --model)")
    calibrate.add_argument("--overwrite", action="store_true",
                           help="replace an existing --out (without it, an existing --out is refused before "
                                "anything runs; --out naming the --model file updates it, as without --out)")
    calibrate.add_argument("--held-out", action="store_true",
                           help="use only the images 'train' held out of this checkpoint's training (its "
                                "--val-fraction and --seed); otherwise every image of DATASET, with a note when some "
                                "of them trained the model (their thresholds are optimistic)")
    calibrate.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                           help="also calibrate the thresholds used with --tta")
    calibrate.add_argument("--allow-other-classes", action="store_true",
                           help="calibrate on images labelled with classes the model does not have, as images "
                                "that show none of its classes (without it, such a label in a label CSV or a "
                                "folder per class, a typo say, is an error naming it and its file and line; a COCO "
                                "JSON's or VOC's other categories are declared, and their images negatives anyway)")
    calibrate.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                           help="calibrate at this network input size and write the model with it as its own, "
                                "so that predict runs at the size its thresholds were chosen at (a larger input "
                                "gives small, crowded objects peaks of their own) (default: the model's size)")
    _add_channels_option(calibrate)
    _add_model_options(calibrate, device_only=True)
    calibrate.set_defaults(run=_run_calibrate)

    refine = add_command(
        "refine", help="learn a mask head from PRM's instances and corrected masks",
        description="Learn a refinement head on a PRM model's frozen backbone from the instances PRM "
                    "retrieves on DATASET's images (image-level labels only: self-training) and from "
                    "corrected masks (--masks: full supervision). The model with its head is written to "
                    "--out after every epoch (atomically: Ctrl-C leaves the last finished epoch's "
                    "checkpoint intact) and can be resumed. 'predict' then cuts one instance per peak "
                    "from the head's maps (--proposals refined, the default for such a model).")
    _add_dataset_options(refine)
    refine.add_argument("--model", required=True,
                        help="the PRM model: a checkpoint (.pt/.safetensors) or a built-in name; a model "
                             "with a head is fine-tuned; " + NAMED_LIKE_BUILTIN)
    refine.add_argument("--out", required=True, type=Path,
                        help="refined checkpoint (.pt keeps the training state for --resume); missing "
                             "folders are created; an existing file is refused, unless continued (--resume) "
                             "or replaced (--overwrite)")
    refine.add_argument("--masks", default=None, type=Path,
                        help="corrected masks: a COCO JSON, a folder of <stem>_labels.tif label images "
                             "with their <stem>_instances.csv, sub-folders included (a predict --recursive "
                             "tree), or a PASCAL VOC year folder or split list (its SegmentationObject PNGs, "
                             "void ignored; images matched by file name); images are matched to DATASET's by "
                             "the image an export's manifest records, else by file name or stem and, in a "
                             "sub-folder, its folders (A1/cat_labels.tif: an image A1/cat.*), as for "
                             "evaluate --masks: exports of no DATASET image are named in a warning and left "
                             "out, none matching is refused; of several exports of one image (a backup copy "
                             "in a sub-folder) the most recently written is used, the others named in a "
                             "warning; a resumed run reads those of the run it continues, other ones are "
                             "refused (default: none)")
    refine.add_argument("--self-training", action=argparse.BooleanOptionalAction, default=True,
                        help="learn from PRM's instances on DATASET's images; with --no-self-training "
                             "DATASET only locates the corrected images")
    refine.add_argument("--epochs", type=int, default=30,
                        help="total number of epochs (with --resume: the run's own total unless given)")
    refine.add_argument("--batch-size", type=int, default=16, help="peaks per batch")
    refine.add_argument("--lr", type=float, default=2e-3, help="learning rate (AdamW, cosine decay)")
    refine.add_argument("--correction-weight", type=float, default=2.0,
                        help="weight of a corrected image against a pseudo-labelled one")
    refine.add_argument("--class-threshold", type=float, default=None,
                        help="class threshold of the PRM runs that make the pseudo-labels (default: the "
                             "model's own)")
    refine.add_argument("--peak-threshold", type=float, default=None,
                        help="peak threshold of those runs (default: the model's own)")
    refine.add_argument("--cache", default=None,
                        help="folder keeping each image's features and pseudo-labels, so that a second "
                             "run, or a resumed one, skips PRM; 'none' keeps nothing (default: <OUT>.cache)")
    refine.add_argument("--resume", action="store_true",
                        help="continue the run saved in --out with its options, its --masks and its --model "
                             "(options asking for others, other corrections and a --model of other weights are "
                             "refused; --epochs sets a "
                             "new total, not below the epochs done)")
    refine.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out with a new run (without it, an existing --out is "
                             "refused before anything runs, so a refined model is never lost)")
    _add_channels_option(refine, more="; the refined checkpoint records them, as train does (a --resume run: its own)")
    refine.add_argument("--seed", type=int, default=0, help="random seed")
    _add_model_options(refine, device_only=True)
    refine.set_defaults(run=_run_refine)

    evaluate = add_command(
        "evaluate", help="the PRM paper's metrics on a dataset",
        description="Run a model over a dataset with instance masks (a COCO JSON with segmentations; a "
                    "PASCAL VOC split or year folder: its images with SegmentationObject PNGs, the others "
                    "named and left out, void pixels ignored), or over the images "
                    "of any dataset that have corrected exports (--masks), and print "
                    "mAP^r, ABO, PRM quality, peak pointing accuracy and classification mAP "
                    "as Markdown. On a dataset with image-level labels only (a folder per class, a CSV, "
                    "a COCO JSON without segmentations) and no --masks, print what the labels tell: "
                    "classification AP (as training's validation) and peak precision by image labels. "
                    "The model's classes must all be in the dataset."
                    "\nWith --predictions, no model runs: the outputs of earlier predict runs are scored "
                    "against a COCO JSON or a PASCAL VOC devkit (mAP^r and ABO, a row per folder) and, for "
                    "several folders, compared with the first by a paired bootstrap; --results-json also writes one "
                    "folder's instances as a pycocotools results JSON in the COCO JSON's ids (for COCOeval).")
    _add_dataset_options(evaluate)
    _add_model_options(evaluate)
    evaluate.add_argument("--proposals", default="auto", type=_proposals_arg,
                          help=PROPOSAL_HELP.split(", or a folder")[0])
    evaluate.add_argument("--iou-thresholds", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                          metavar="IOU", help="IoU thresholds of mAP^r")
    evaluate.add_argument("--masks", default=None, type=Path,
                          help="the ground truth: corrected masks, as for refine: a COCO JSON, a folder of "
                               "<stem>_labels.tif label images with their <stem>_instances.csv (the Export "
                               "widget's files), sub-folders included (a predict --recursive tree), or a PASCAL "
                               "VOC year folder or split list (its SegmentationObject PNGs); images are "
                               "matched to DATASET's by manifest, file name and folders, as for refine, and "
                               "only those are evaluated; DATASET (a CSV, a folder per class, COCO or PASCAL "
                               "VOC) gives the images and their labels (default: DATASET's instance masks, a "
                               "COCO JSON's or a PASCAL VOC devkit's)")
    _add_channels_option(evaluate)
    _add_inference_options(evaluate)
    evaluate.add_argument("--max-images", type=int, default=None,
                          help="evaluate the first N images only (default: all)")
    evaluate.add_argument("--only-labeled", action="store_true",
                          help="evaluate only the images that show one of the model's classes")
    evaluate.add_argument("--predictions", type=Path, nargs="+", default=None, metavar="FOLDER",
                          help="score these predict --out folders instead of running a model: each folder's "
                               "<stem>_instances.json exports (sub-folders included) against DATASET's instance "
                               "masks (a COCO JSON, or a PASCAL VOC split list or year folder: its images' file "
                               "names are JPEGImages/<id>.jpg, those without SegmentationObject PNGs left out, "
                               "void ignored), images matched by file_name and classes by name as "
                               "napari_prm.io.coco_results matches them, on the images with an export; one row "
                               "per folder (mAP^r, ABO; what needs the model is not measured); with two or more, "
                               "a paired bootstrap of each against the first at IoU 0.5 on the images all of "
                               "them scored. Not with the options that run a model (--model, --device, "
                               "--proposals, --preset, the thresholds, --max-peaks, --input-size, --tta, --prm-mode, "
                               "--channels) "
                               "nor with --masks (default: run --model)")
    evaluate.add_argument("--resamples", type=int, default=200,
                          help="bootstrap resamples of the images when comparing --predictions folders "
                               "(seed 0)")
    evaluate.add_argument("--json", type=Path, default=None,
                          help="also write the full results to this JSON file (with --predictions: one "
                               "folder's results as without, several as {\"results\": [one per folder], "
                               "\"comparison\": ...}) (default: not written)")
    evaluate.add_argument("--results-json", type=Path, default=None, metavar="FILE",
                          help="with one --predictions folder and a COCO JSON DATASET: also write the folder's "
                               "instances as one pycocotools results JSON (a list of image_id, category_id, "
                               "segmentation as RLE, score, bbox) in DATASET's image and category ids, as "
                               "napari_prm.io.coco_results gives them, for COCO.loadRes and COCOeval; written "
                               "atomically, and refused when FILE exists unless --overwrite. Not with --voc, "
                               "--only-labeled or --max-images, which choose among the images scored: the file "
                               "holds every export's instances (default: not written)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace an existing --results-json FILE")
    evaluate.set_defaults(run=_run_evaluate)

    demo = add_command(
        "demo", help="run the built-in model on a sample image",
        description="Run PRM on an image (default: scikit-image's Chelsea the cat, also written "
                    "to the output folder as chelsea.png), write the results like 'predict' and, "
                    "when a display is available, show them in napari.")
    demo.add_argument("image", nargs="?", default=None,
                      help="image file (default: skimage.data.chelsea())")
    demo.add_argument("--out", type=Path, default=Path("napari-prm-demo"), help="output folder")
    _add_model_options(demo)
    demo.add_argument("--proposals", default="auto", type=_proposals_arg,  # one image: no --recursive here
                      help=PROPOSAL_HELP.split("; with --recursive")[0] + ")")
    _add_channels_option(demo, more="; with IMAGE only (refused without it: the built-in image is RGB, read as it is)")
    _add_inference_options(demo)
    demo.add_argument("--view", action=argparse.BooleanOptionalAction, default=None,
                      help="open napari with the results; without a display or Qt bindings, --view says so "
                           "and the results are still written (exit status 0) (default: when a display is "
                           "available)")
    demo.set_defaults(run=_run_demo)

    bench = add_command(
        "bench", help="time the pipeline on this machine",
        description="Time the model's forward pass and peak response maps (against the original "
                    "one-backward-per-peak loop) on scikit-image's chelsea resized to --size, at its "
                    "--peaks strongest CRM maxima, and instance retrieval on random maps and disc "
                    "proposals; print a Markdown table.")
    _add_model_options(bench)
    bench.add_argument("--size", type=int, default=448, help="input side in pixels (at least 32)")
    bench.add_argument("--peaks", type=int, default=20, help="number of peaks back-propagated")
    bench.add_argument("--peak-batch-size", type=int, default=None,
                       help="peaks back-propagated at once (default: 1 on CPU, 16 on GPU)")
    bench.add_argument("--compare-original", action=argparse.BooleanOptionalAction,
                       default=True, help="also time the original loop and compare the PRMs")
    bench.add_argument("--retrieval", action=argparse.BooleanOptionalAction, default=True,
                       help="also time instance retrieval (100 proposals, 30 peaks)")
    bench.add_argument("--out", type=Path, default=None,
                       help="also write the report to this file; missing folders are created "
                            "(default: not written)")
    bench.set_defaults(run=_run_bench)
    return parser


@contextlib.contextmanager
def _quiet_tifffile(debug: bool):
    """Keep tifffile's warnings off the terminal unless ``--debug``: a damaged TIFF printed
    "<tifffile.TiffPages @1651663207> invalid offset to first page ..." (once per reading,
    without the file's name) beside the command's own message naming the file and the fix."""
    import logging

    logger = logging.getLogger("tifffile")
    level = logger.level
    if not debug:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (its ``signum``), raised in the main thread where Ctrl-C raises
    KeyboardInterrupt, so that a command stops as it does on Ctrl-C (`_quiet_after_ctrl_c`)."""

    def __init__(self, signum: int):
        super().__init__(f"terminated (signal {signum})")
        self.signum = signum


def _terminals() -> list[int]:
    """The standard output and error (file descriptors 1, 2) that write to a terminal."""
    found = []
    for fd in (1, 2):
        with contextlib.suppress(OSError, ValueError):
            if os.isatty(fd):
                found.append(fd)
    return found


def _off_closed_terminal(terminals: Sequence[int]) -> None:
    """Send what goes to ``terminals`` (`_terminals`) that are closed now to /dev/null: a
    terminal that hung up (SIGHUP) fails every write (EIO), and the command's cleanup and
    last lines with it, ending it with status 1 after all."""
    closed = [fd for fd in terminals if not os.isatty(fd)]  # no longer a terminal once hung up
    if not closed:
        return
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in closed:
            os.dup2(devnull, fd)
        os.close(devnull)


def _stopped_by(signum: int | None) -> str:
    """How a command stopped, for its last line: "interrupted" (Ctrl-C, ``signum`` None), or
    "terminated by SIGTERM" (by SIGHUP)."""
    return "interrupted" if signum is None else f"terminated by {signal.Signals(signum).name}"


@contextlib.contextmanager
def _quiet_after_ctrl_c(*, sigterm: bool = True):
    """Ctrl-C raises KeyboardInterrupt as usual; once it has, objects it interrupted half-built
    (an image reader in the middle of opening a file) are not reported as they are deleted.

    Python prints "Exception ignored in ..." with a traceback for an error in ``__del__``, and
    such a message came after the command's own "interrupted: ..." line. Only in the main
    thread (where signals are handled); both hooks are restored on the way out.

    With ``sigterm``, SIGTERM (``kill PID``, ``timeout``, a batch system's time limit,
    ``systemctl stop``) raises `Terminated`, a KeyboardInterrupt, so that the command stops as
    on Ctrl-C; so does SIGHUP (the ssh connection dropped, the terminal closed), unless it is
    ignored (``nohup``): ``predict`` records the images done in ``summary.csv`` and leaves no marker of
    an image that seemed to kill it, ``train`` says which epoch its checkpoint keeps. SIGTERM's
    default ended the process at once. A second SIGTERM while the first is handled is ignored
    (SIGKILL still ends the process); one that Python ignored (raised in an object's ``__del__``
    or a fork handler) is sent again. Yields a list that holds the signal's number once SIGTERM
    or SIGHUP came (the exit status is then 128 + that number, as a shell reports a process it
    ended: 143 for SIGTERM, 129 for SIGHUP).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signals are not ours to handle here
        return
    interrupted = False
    unraisable_hook = sys.unraisablehook

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
        signal.default_int_handler(signum, frame)

    lost: list[threading.Timer] = []  # a SIGTERM (SIGHUP) raised where Python ignores it, sent again
    terminals = _terminals()

    def on_sigterm(signum, frame):
        nonlocal interrupted
        if received and not lost:  # the first one's cleanup goes on
            return
        lost.clear()
        interrupted = True
        received[:] = [signum]
        if signum == getattr(signal, "SIGHUP", None):
            _off_closed_terminal(terminals)
        raise Terminated(signum)

    def on_unraisable(unraisable):
        if isinstance(unraisable.exc_value, Terminated) and not lost:
            # raised in an object's __del__ or a fork handler (logging's, as a data-loader worker
            # starts), where Python ignores it: the command would run on, deaf to the next SIGTERM
            timer = threading.Timer(0.05, os.kill, (os.getpid(), unraisable.exc_value.signum))
            timer.daemon = True
            lost.append(timer)
            timer.start()
        elif not interrupted:
            unraisable_hook(unraisable)

    # only where Python's own handling is in place: Ctrl-C as KeyboardInterrupt (not ignored,
    # as a shell starts background jobs), SIGTERM's and SIGHUP's default (not ignored, as nohup
    # does SIGHUP, nor a caller's handler)
    wanted = [(signal.SIGINT, signal.default_int_handler, on_sigint)]
    if sigterm:
        wanted.append((signal.SIGTERM, signal.SIG_DFL, on_sigterm))
        if hasattr(signal, "SIGHUP"):  # not on Windows
            wanted.append((signal.SIGHUP, signal.SIG_DFL, on_sigterm))
    previous = {}
    for number, default, handler in wanted:
        try:
            if signal.getsignal(number) == default:
                previous[number] = signal.signal(number, handler)
        except (ValueError, OSError):  # signals cannot be set here
            continue
    if not previous:
        yield received
        return
    sys.unraisablehook = on_unraisable
    try:
        yield received
    finally:
        for timer in lost:  # the command ended before it was sent again
            timer.cancel()
        sys.unraisablehook = unraisable_hook
        for number, handler in previous.items():
            signal.signal(number, handler)


def _console_takes_any_character() -> None:
    """Characters that the console's encoding lacks are written as escapes (``\\u03a3``).

    On Windows, output redirected to a file or a pipe is encoded with the legacy code page
    (cp1252 and others): ``napari-prm evaluate > report.md`` ended with "'charmap' codec
    can't encode character" at the report's first Σ or ≥, and an image path in another
    script did the same. Streams that encode everything (UTF-8) are left as they are.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            encoding = codecs.lookup(stream.encoding).name
        except (AttributeError, TypeError, LookupError):  # not a text stream we can inspect
            continue
        if (not encoding.startswith("utf") and getattr(stream, "errors", None) == "strict"
                and hasattr(stream, "reconfigure")):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # closed, or its flush failed: left as it is
                continue


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``napari-prm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Usage errors (argparse's and the option checks') raise ``SystemExit(2)`` as argparse
    does; every other failure is reported in one line and returned as the exit status.
    """
    quiet_large_image_warning()
    _console_takes_any_character()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse reports a command's unknown arguments with the top-level usage ('usage: napari-prm
        # [-h] ...'): those after the command are the command's, said with its own usage
        command_at = next((i for i, word in enumerate(argv) if not word.startswith("-")), len(argv))
        before = set(argv[:command_at]) & set(unknown)
        (parser if before else args.parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    check_arguments(args)
    # the demo's napari window ends on SIGTERM (SIGHUP) as any Qt application does
    with (_quiet_after_ctrl_c(sigterm=args.command != "demo") as terminated,
          _quiet_tifffile(getattr(args, "debug", False))):
        try:
            status = int(args.run(args) or 0)
        except CommandError as error:
            return _report(args, error, 2)
        except KeyboardInterrupt:
            print(f"napari-prm {args.command}: {_stopped_by(terminated[0] if terminated else None)}", file=sys.stderr)
            status = 130
        except (ValueError, OSError) as error:  # the library's messages name the file or argument
            return _report(args, error, 2)
        except Exception as error:  # a bug or an exhausted resource: one line, no traceback
            return _report(args, error, 1)
    # the signal's status (SIGTERM's 143), as a shell reports a process it ended, once the command
    # stopped as on Ctrl-C
    return 128 + terminated[0] if terminated and status == 130 else status


def _report(args, error: BaseException, status: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exception(error)
    print(f"napari-prm {args.command}: error: {_error_text(error, args)}", file=sys.stderr)
    return status


def _error_text(error: BaseException, args) -> str:
    """One line for an error: the message of a user error; the type, and a pointer to
    ``--debug``, for an unexpected one."""
    text = str(error) or type(error).__name__
    if isinstance(error, (CommandError, ValueError, OSError)):
        return text
    hint = "" if getattr(args, "debug", False) else "; run with --debug for the traceback"
    return f"unexpected {type(error).__name__}: {text}{hint}"


# --------------------------------------------------------------------------- argument checks
def _proposal_source(name: str, value, *, folders: bool):
    """``--proposals``: 'none' (None), keywords joined by '+', or an existing file (or folder)."""
    from .proposals import PROPOSAL_KEYWORDS

    if value is None:
        return None
    path = Path(value)
    if path.is_file() or (folders and path.is_dir()):
        return value
    parts = [part.strip().lower() for part in value.split("+")]
    if path.suffix or "/" in value or "\\" in value or not all(p in PROPOSAL_KEYWORDS for p in parts):
        kind = "file or folder" if folders else "file"
        raise ValueError(f"{name}: expected 'none', {', '.join(map(repr, PROPOSAL_KEYWORDS))}, a "
                         f"combination like 'default+prm' or an existing proposal {kind}; got "
                         f"{value!r}")
    return value


def _optional_finite(name, value):
    return check.finite_float(name, value, optional=True)


def _optional_positive(name, value):
    return check.positive_int(name, value, optional=True)


def _positive(name, value):
    return check.positive_int(name, value)


def _train_out(name, value):
    from .model.checkpoint import checkpoint_file

    return checkpoint_file(name, value, training=True)


def _checkpoint_out(name, value):
    from .model.checkpoint import checkpoint_file

    return None if value is None else checkpoint_file(name, value)


def _train_model(name, value):
    """``train --model``: a checkpoint file, a built-in model or a backbone name."""
    from .model.backbones import BACKBONES
    from .model.checkpoint import BUILTIN_MODELS, CHECKPOINT_SUFFIXES, is_builtin_name

    if value is None or is_builtin_name(value) or is_builtin_name(value, BACKBONES) or Path(value).is_file():
        return value
    if Path(value).suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ValueError(f"{name}: no such checkpoint file: {value}")
    raise ValueError(f"{name}: expected a checkpoint file (.pt, .pth or .safetensors) to fine-tune, a built-in "
                     f"model to fine-tune ({', '.join(BUILTIN_MODELS)}) or a backbone "
                     f"({', '.join(sorted(BACKBONES))}); got {value!r}")


def _input_size(name, value):
    return list(check.input_size(name, value, square=False))


def _optional_input_size(name, value):
    return None if value is None else _input_size(name, value)


def _iou_thresholds(name, value):
    return list(check.finite_floats(name, value, low=0, high=1, low_open=True, unique=True))


def _bench_out(name, value):
    return None if value is None else check.output_file(name, value, parent_must_exist=False)


def _json_out(name, value):
    return None if value is None else check.output_file(name, value, parent_must_exist=False)


def _existing_image(name, value):
    if value is not None and not Path(value).is_file():
        raise ValueError(f"{name}: no such image file: {value}")
    return value


#: Per command, per option (argparse ``dest``): a check ``(option name, value) -> value``
#: from `napari_prm._validate`, run after parsing so that a bad value ends in exit status 2
#: with a message naming the option.
ARGUMENT_CHECKS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "predict": {
        "out": check.output_folder,
        "class_threshold": _optional_finite,
        "peak_threshold": _optional_finite,
        "max_peaks": _max_peaks,
        "input_size": _optional_input_size,
        "peak_batch_size": _optional_positive,
        "proposals": lambda name, value: _proposal_source(name, value, folders=True),
        "workers": _optional_positive,
    },
    "train": {
        "out": _train_out,
        "model": _train_model,
        "epochs": _positive,
        "batch_size": _positive,
        "lr": lambda name, value: check.finite_float(name, value, low=0),
        "backbone_lr_mult": lambda name, value: check.finite_float(name, value, low=0),
        "momentum": lambda name, value: check.finite_float(name, value, low=0, high=1,
                                                           high_open=True),
        "weight_decay": lambda name, value: check.finite_float(name, value, low=0),
        "input_size": _optional_input_size,
        "sub_pixel_locating_factor": _positive,
        "val_fraction": lambda name, value: check.finite_float(name, value, low=0, high=1,
                                                               high_open=True),
        "seed": lambda name, value: check.integer(name, value, low=0, high=2**32 - 1),
        "num_workers": lambda name, value: check.integer(name, value, low=0),
    },
    "calibrate": {
        "out": _checkpoint_out,
        "input_size": _optional_input_size,
    },
    "refine": {
        "out": _checkpoint_out,
        "epochs": _positive,
        "batch_size": _positive,
        "lr": lambda name, value: check.finite_float(name, value, low=0, low_open=True),
        "correction_weight": lambda name, value: check.finite_float(name, value, low=0),
        "class_threshold": _optional_finite,
        "peak_threshold": _optional_finite,
        "seed": lambda name, value: check.integer(name, value, low=0, high=2**32 - 1),
    },
    "evaluate": {
        "iou_thresholds": _iou_thresholds,
        "class_threshold": _optional_finite,
        "peak_threshold": _optional_finite,
        "max_peaks": _max_peaks,
        "input_size": _optional_input_size,
        "max_images": _optional_positive,
        "json": _json_out,
        "results_json": lambda name, value: None if value is None else check.output_file(name, value),
        "proposals": lambda name, value: _proposal_source(name, value, folders=False),
        "resamples": _positive,
    },
    "demo": {
        "image": _existing_image,
        "out": check.output_folder,
        "class_threshold": _optional_finite,
        "peak_threshold": _optional_finite,
        "max_peaks": _max_peaks,
        "input_size": _optional_input_size,
        "proposals": lambda name, value: _proposal_source(name, value, folders=False),
    },
    "bench": {
        "size": lambda name, value: check.integer(name, value, low=32),
        "peaks": _positive,
        "peak_batch_size": _optional_positive,
        "out": _bench_out,
    },
}


def check_arguments(args: argparse.Namespace) -> None:
    """Run `ARGUMENT_CHECKS` on parsed arguments; a failure is a usage error (exit status 2).

    Each checked value is replaced by its canonical form (a float, an int, a Path).
    """
    subparser = getattr(args, "parser", None)
    for dest, checker in ARGUMENT_CHECKS.get(args.command, {}).items():
        action = next((a for a in subparser._actions if a.dest == dest), None) if subparser else None
        name = action.option_strings[-1] if action is not None and action.option_strings else dest.upper()
        try:
            setattr(args, dest, checker(name, getattr(args, dest)))
        except ValueError as error:
            if subparser is None:
                raise CommandError(str(error)) from None
            subparser.error(str(error))
    if hasattr(args, "prm_mode"):  # predict, evaluate, demo: options that cannot go together
        try:
            _check_predictions_options(args)
            _check_inference_settings(args)
        except ValueError as error:
            if subparser is None:
                raise CommandError(str(error)) from None
            subparser.error(str(error))


#: ``evaluate``'s options (``dest``) that run a model, which ``--predictions`` does not.
MODEL_OPTIONS = ("model", "device", "proposals", "preset", "class_threshold", "peak_threshold", "max_peaks",
                 "input_size", "tta", "prm_mode", "channels")


def _check_predictions_options(args: argparse.Namespace) -> None:
    """``evaluate --predictions`` scores a run already made: the options that run a model, and
    ``--masks``, are refused with it, and ``--resamples`` is refused without it."""
    if args.command != "evaluate":
        return
    given = _given_options(args)
    if args.results_json is None and args.overwrite:
        raise ValueError("--overwrite replaces an existing --results-json FILE; give --results-json")
    if args.predictions is None:
        if "resamples" in given:
            raise ValueError("--resamples: the bootstrap compares --predictions folders; give two or more")
        if args.results_json is not None:
            raise ValueError("--results-json writes the instances of a --predictions folder (predict's --out) in "
                             "DATASET's ids; give --predictions FOLDER")
        return
    if args.results_json is not None:
        if len(args.predictions) > 1:
            raise ValueError(f"--results-json writes one folder's instances; {len(args.predictions)} --predictions "
                             "folders were given: give one (a run per command)")
        choosing = [option for option, given in (("--voc", args.voc), ("--only-labeled", args.only_labeled),
                                                 ("--max-images", args.max_images is not None)) if given]
        if choosing:
            raise ValueError(f"--results-json with {', '.join(choosing)}: the results file holds every export's "
                             "instances (napari_prm.io.coco_results), not only those of the images scored; drop "
                             f"{'it' if len(choosing) == 1 else 'them'} (choose images in COCOeval with "
                             "params.imgIds, classes with params.catIds)")
    names = {action.dest: "/".join(action.option_strings) for action in args.parser._actions}
    running = [names[dest] for dest in MODEL_OPTIONS if dest in given]
    if running:
        raise ValueError(f"--predictions scores the outputs of runs already made, no model runs: "
                         f"{', '.join(running)} {'is' if len(running) == 1 else 'are'} for running one; drop "
                         f"{'it' if len(running) == 1 else 'them'}")
    if args.masks is not None:
        raise ValueError("--predictions with --masks: predictions are scored against the instance masks of "
                         "DATASET, a COCO JSON or a PASCAL VOC devkit; corrected exports as ground truth are not "
                         "supported here (run --model with --masks instead)")


def _check_inference_settings(args: argparse.Namespace) -> None:
    """The inference options together, as `napari_prm.preset_settings` checks them, so that a
    combination it refuses (``--tta`` with ``--prm-mode fast``) stops before anything runs."""
    from .predictor import preset_settings

    settings = _inference_settings(args)
    try:
        preset_settings(**settings)
    except ValueError as error:
        given = " ".join(f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
                         for name, value in settings.items() if name in ("tta", "prm_mode"))
        raise ValueError(f"{given}: {error}") from None


# --------------------------------------------------------------------------- predict
def _classes_arg(classes, class_names: Sequence[str]):
    """``--classes`` as names or indices, checked once against the model's classes."""
    if classes is None:
        return None
    chosen = [int(c) if c.isdigit() else c for c in classes]
    unknown = [c for c in chosen if c not in class_names
               and not (isinstance(c, int) and 0 <= c < len(class_names))]
    if unknown:
        raise CommandError(f"--classes: the model has no class {unknown}; it has "
                           f"{len(class_names)} classes, e.g. {list(class_names[:5])}"
                           f"{did_you_mean([c for c in unknown if isinstance(c, str)], class_names)}")
    return chosen


def _device(device):
    """``--device`` as a torch.device; an unknown or missing device is an error of ``--device``."""
    from .model.checkpoint import resolve_device

    try:
        return resolve_device(device)
    except ValueError as error:  # resolve_device's messages start with "device: "
        raise CommandError(f"--{error}") from error


def _load_model(name: str, device):
    from .model.checkpoint import load_model

    device = _device(device)
    try:
        return load_model(name, device=device)
    except (ValueError, OSError) as error:
        raise CommandError(f"cannot load model {name!r}: {error}") from error
    except RuntimeError as error:  # torch: the device is missing or out of memory
        raise CommandError(f"cannot put model {name!r} on device {device!r}: {error}") from error


def _say_uncalibrated(args, model) -> None:
    """A note when a checkpoint has no calibrated thresholds (trained with ``--no-calibrate``,
    interrupted while calibrating, trained on after calibrating) and the command falls back to
    class threshold 0 and no peak threshold: predict and evaluate ran so without a word, though
    a barely trained model's scores and peaks lie far from 0."""
    if args.preset != "default" or "class_threshold" in model.settings:
        return
    fallback = [text for option, text in (("class_threshold", "class threshold 0"),
                                          ("peak_threshold", "no peak threshold"))
                if getattr(args, option, None) is None]
    if fallback:
        _say(f"note: {args.model} has no calibrated thresholds, so {' and '.join(fallback)} "
             f"{'apply' if len(fallback) > 1 else 'applies'}: 'napari-prm "
             f"calibrate DATASET --model {shlex.quote(str(args.model))}' chooses them from images with image-level "
             "labels; or give --class-threshold and --peak-threshold")


def _run_predict(args) -> int:
    from tqdm import tqdm

    from .batch import predict_many

    images, problems = collect_images(args.inputs, recursive=args.recursive)
    for problem in problems:
        _say(problem)
    if not images:
        raise CommandError("no images to process")
    # inputs left out (missing, a folder that cannot be listed): failed rows of the summary, named at the end
    left_out = [problem for problem in problems if isinstance(problem, LeftOut)]
    writable_folder(args.out, create=False)  # a read-only --out fails here, before the model loads
    stems = output_stems(images, roots=[item for item in args.inputs if Path(item).is_dir()], out=args.out)
    for note in renamed_notes(images, stems, args.out):  # an image whose outputs cannot take its name
        _say(note)
    cluster = args.workers is not None or args.scheduler is not None
    _device(args.device)
    # a bad model or class fails before any cluster starts; with one, the workers load their own
    # and this one (on the CPU) records its fingerprint
    loaded = _load_model(args.model, "cpu" if cluster else args.device)
    classes = _classes_arg(args.classes, loaded.class_names)
    _say_uncalibrated(args, loaded)
    settings = {"classes": classes, "proposals": args.proposals, "peak_batch_size": args.peak_batch_size,
                **_inference_settings(args)}
    channels = _channels(args, loaded.settings.get("channels"))
    if channels is not None:
        settings["channels"] = channels
    client = _start_client(args)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        # held until an interrupted run's last images are recorded, its cluster closed: a run started
        # at the interrupt is refused, and cannot rewrite summary.csv side by side with this one
        with _folder_lock(args.out, lend=True):
            tally = PlaneTally(images)  # TIFF headers only
            bar = tqdm(total=tally.total, desc="predict", unit="plane", disable=None)
            before = output_states(args.out, stems)
            counts, logged = dict.fromkeys(("written", "skipped", "failed"), 0), [time.monotonic()]
            option_words = _option_words()

            def plane_done(image, done, total) -> None:
                bar.update(tally.plane_done(image, done) - bar.n)

            def progress(result, done, total) -> None:
                counts[result.status] = counts.get(result.status, 0) + 1
                if result.status == "failed":
                    if args.debug and result.details:
                        _say(result.details.rstrip())
                    unexpected = result.error.startswith("unexpected") and not args.debug
                    hint = "; run with --debug for the traceback" if unexpected else ""
                    _say(f"{result.image}: failed: {result.error}{hint}")
                for note in result.notes:  # the library's notes name its arguments: name the options
                    _say(f"{result.image}: {in_front_end_words(for_command_line(note), option_words)}")
                bar.update(tally.image_done(result.image) - bar.n)  # skipped, failed or run on a cluster
                if _log_line_due(bar, done, total, logged):
                    _say(f"predict: {done} of {plural(total, 'image')} done ({counts['written']} written, "
                         f"{counts['skipped']} skipped, {counts['failed']} failed)")

            try:
                batch = predict_many(images, args.model if cluster else loaded, args.out, client, stems=stems,
                                     overwrite=args.overwrite, prms_format=args.save_prms, device=args.device,
                                     progress=progress, model_name=model_label(args.model), loaded_model=loaded,
                                     plane_progress=plane_done, left_out=left_out, **settings)
            except KeyboardInterrupt as stop:
                batch, stopped = None, _stopped_by(getattr(stop, "signum", None))
            finally:
                bar.close()
                if client is not None:  # before the folder is let go: its workers write no more
                    _close_client(client, local=args.workers is not None)
                    client = None
            if batch is None:  # Ctrl-C: counted on disk, where the workers' last images are too
                written = written_since(args.out, before, prms_format=args.save_prms)
                record_written(args.out, written)
                still = ("; images the cluster's workers were running may still be written"
                         if args.scheduler is not None else "")
                _say(f"{stopped}: {len(written)} of {plural(len(images), 'image')} written to {args.out} (summary: "
                     f"{args.out / SUMMARY_NAME}){still}; the same command goes on with the others")
                return 130
    finally:
        if client is not None:  # the folder was in use
            _close_client(client, local=args.workers is not None)
    skipped = batch.skipped
    if skipped:
        _say(f"{batch.skip_summary()}; use --overwrite to replace them")
    if batch.failed:  # each said why as it failed, maybe thousands of lines above in a log
        name = image_names([result.image for result in batch.results]).__getitem__
        _say(f"{len(batch.failed)} failed: {first_names((name(r.image) for r in batch.failed), shown=10)} "
             f"(why: the error column of {batch.summary})")
    failed = len(batch.failed)  # the inputs left out among them (`left_out`): one count in every line and summary.csv
    _say(f"{len(batch.written)} image(s) written to {args.out}, {len(skipped)} skipped, {failed} failed; "
         f"summary: {batch.summary}")
    return 1 if failed else 0


def _start_client(args):
    """The dask client of ``--workers`` / ``--scheduler`` (None without either)."""
    if args.workers is None and args.scheduler is None:
        return None
    try:
        from distributed import Client
    except ImportError as error:  # pragma: no cover - a dependency; missing only in broken installs
        raise CommandError(f"--workers and --scheduler need dask.distributed: {error}") from error
    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="20s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise CommandError(f"--scheduler: cannot connect to {args.scheduler}: {error}") from error
        _say(f"connected to {args.scheduler} ({plural(len(client.nthreads()), 'worker')})")
        return client
    from .batch import dashboard_link, start_local_cluster

    client = start_local_cluster(args.workers)
    _say(f"started {args.workers} worker process(es); dashboard: "
         + (dashboard_link(client) or "none (install bokeh to see one)"))
    return client


def _close_client(client, *, local: bool) -> None:
    cluster = client.cluster if local else None
    client.close()
    if cluster is not None:
        cluster.close()


# --------------------------------------------------------------------------- train / evaluate
def _load_dataset(args, *, classes=None, **options):
    from .data import load_dataset, voc_view

    path = Path(args.dataset)
    try:
        dataset = load_dataset(path, args.image_dir, **options)
        if args.voc:
            dataset = voc_view(dataset)
        if classes:
            dataset = dataset.with_classes(classes, drop_unlabeled=False)
    except (ValueError, OSError, TypeError) as error:
        raise CommandError(f"cannot load dataset {path}: {error}") from error
    for warning in dataset.warnings:
        _say(f"warning: {warning}")
    return dataset


#: Per command, the options that a resumed run takes from its checkpoint (the training state
#: stored under that key), not from the command line.
RESUMED_OPTIONS = {
    "train": ("training", ("batch_size", "lr", "backbone_lr_mult", "momentum", "weight_decay",
                           "input_size", "sub_pixel_locating_factor", "hflip", "seed", "val_fraction")),
    "refine": ("refine_training", ("batch_size", "lr", "correction_weight", "seed")),
}


def _given_options(args) -> set[str]:
    """The ``dest`` of every option written on the command line (at its default value or
    not), abbreviations included as argparse reads them."""
    actions = {option: action.dest for action in args.parser._actions for option in action.option_strings}
    given = set()
    for word in getattr(args, "argv", []):
        word = word.split("=", 1)[0]
        if not word.startswith("-"):
            continue
        if word in actions:
            given.add(actions[word])
        elif word.startswith("--"):
            matches = {dest for option, dest in actions.items() if option.startswith(word)}
            given |= matches if len(matches) == 1 else set()
    return given


def _check_resumed_options(args, path: Path):
    """``train --resume`` and ``refine --resume`` continue the run's own recipe (and model):
    options given with them that ask for another were ignored without a word
    (``--input-size 96 96`` went on training at 64×64). Returns the resumed model, or None."""
    from .model.checkpoint import load_checkpoint
    from .train import missing_base, recipe_conflicts, recorded_base, same_base

    # a missing or unreadable checkpoint was reported after the dataset was read (and, by train,
    # after its 'training on ...' line), without naming --resume
    if not path.is_file():
        missing = f"{path} is a folder, not a checkpoint" if path.is_dir() else f"checkpoint {path} does not exist"
        raise CommandError(f"--resume: {missing}: name the run's checkpoint, or start a new run without --resume")
    key, options = RESUMED_OPTIONS[args.command]
    try:
        model, extra = load_checkpoint(path)
    except (ValueError, OSError) as error:
        raise CommandError(f"--resume: {error}") from error
    try:
        config = dict(extra[key]["config"])
        finished = int(extra[key]["epoch"])
    except (KeyError, TypeError):
        return None  # reported by train() and refine(): no training state
    args.resumed_config = config
    args.resumed_finished = finished
    args.resumed_split_rule = extra[key].get("split_rule")  # None: from before the rule
    args.resumed_corrections = extra[key].get("corrections")  # refine: what it learnt from (None: not recorded)

    def shown(dest, value) -> str:
        if dest == "hflip":
            return f"--{'' if value else 'no-'}hflip"
        text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        return f"--{dest.replace('_', '-')} {text}"

    given = _given_options(args)
    if "epochs" not in given:  # the run's own total, not the parser's default for a new run
        args.epochs = max(int(config.get("epochs", finished)), finished)
    elif args.epochs < finished:
        raise CommandError(f"--epochs {args.epochs} is fewer than the {finished} epochs the run in {path} has "
                           f"finished: --epochs is the new total ({finished} or more)")
    asked = {dest: getattr(args, dest) for dest in options if dest in given}
    differ = [f"{shown(dest, value)} (the run's: {shown(dest, theirs)})"
              for dest, value, theirs in recipe_conflicts(config, asked)]
    if args.command == "train":
        if "backbone" in given and args.backbone != model.backbone:
            differ.append(f"--backbone {args.backbone} (the run's: {model.backbone})")
        base = recorded_base(config, path)  # recorded since: a checkpoint from before says no more than its backbone
        if args.model is not None and (base is None or not same_base(args.model, base)):
            differ.append(f"--model {args.model} (the run continues its own model)" if base is None else
                          f"--model {args.model} (the run's: --model {base}, recorded in {path}, which is not "
                          "there: moved, or not shared with the run; the run goes on from its own weights "
                          "without it)" if missing_base(base) else
                          f"--model {args.model} (the run's: --model {base})")
    if differ:
        raise CommandError(f"--resume continues the run in {path} with the options it was started with, "
                           f"but these ask for others: {'; '.join(differ)}; drop them, or start a new "
                           "run without --resume")
    if args.command == "train" and args.calibrate is None:  # it calibrated, whatever the run was started with
        args.calibrate = config.get("calibrate", True)  # not recorded before: on
        args.resumed_no_calibrate = not args.calibrate  # said with the split (`_run_train`)
    return model


def _check_train_base(args) -> PRMModel | None:
    """``train --model`` (a new run): a checkpoint that cannot be read was reported after the
    dataset was read and 'training on ...' said, without naming --model; and ``--backbone``
    given with a --model of another backbone was ignored without a word (the run trained
    --model's). Both are refused before anything runs, and so is an ``--input-size`` too small
    for the run's backbone (it was refused after the dataset was read). Returns the checkpoint's
    model, which the run fine-tunes (the file read once), or None for a name."""
    if args.model is None:
        _check_input_size(args, args.backbone, None)
        return None
    from .model.backbones import BACKBONES
    from .model.checkpoint import is_builtin_name, load_checkpoint

    checkpoint = None
    if is_builtin_name(args.model, BACKBONES):
        base, what = args.model, "names a new model's backbone"
    elif is_builtin_name(args.model):
        base, what = "efficientnet_lite0", "fine-tunes the built-in model, an efficientnet_lite0"
    else:
        try:
            checkpoint = load_checkpoint(args.model)[0]
        except (ValueError, OSError) as error:
            raise CommandError(f"--model: {error}") from error
        base, what = checkpoint.backbone, f"fine-tunes a checkpoint of backbone {checkpoint.backbone}"
    if "backbone" in _given_options(args) and args.backbone != base:
        raise CommandError(f"--backbone {args.backbone} and --model {args.model} ask for different models: --model "
                           f"{what}, and a run has one backbone; drop --backbone (fine-tuning keeps the model's "
                           f"backbone), or drop --model to start a new {args.backbone} model")
    _check_input_size(args, base, checkpoint)
    return checkpoint


def _check_input_size(args, backbone: str, checkpoint: PRMModel | None) -> None:
    """``train --input-size`` too small for ``backbone`` (`napari_prm.train.check_map_size`);
    without it, the size the run takes (``checkpoint``'s own, or 448×448)."""
    from .train import DEFAULT_INPUT_SIZE, check_map_size

    own = None if args.input_size is not None or checkpoint is None else checkpoint.input_size
    size = args.input_size or own or DEFAULT_INPUT_SIZE
    try:
        check_map_size(backbone, size, name="the --model's own input size" if own else "--input-size")
    except ValueError as error:
        raise CommandError(str(error)) from None


def _refuse_existing_out(args) -> None:
    """``train`` and ``refine`` write --out after every epoch: a new run replaced an existing
    (e.g. a 10-epoch) model after its first epoch. Refused before anything runs, unless
    ``--resume`` continues that file or ``--overwrite`` is given."""
    try:
        check.new_checkpoint("--out", args.out, overwrite=args.overwrite, resume=args.resume,
                             options=("--resume", "--overwrite"))
    except FileExistsError as error:
        raise CommandError(str(error)) from None


def _run_train(args) -> int:
    from tqdm import tqdm

    from .train import builtin_start_note, check_readable, train, validation_summary

    if args.resume not in (None, True) and "out" not in _given_options(args):
        args.out = Path(args.resume)  # the run goes on in its own file, not in ./prm_model.pt
    _refuse_existing_out(args)
    _device(args.device)  # a missing GPU fails before the dataset is read
    base = resumed = None
    if args.resume:
        resumed = _check_resumed_options(args, Path(args.out if args.resume is True else args.resume))
        if args.calibrate is None:  # a checkpoint without a training state: train() refuses it
            args.calibrate = True
        if resumed is not None and _finished_run(args, resumed):
            return 0
    else:  # a checkpoint is read here only: the one checked is the one fine-tuned, even if the file is replaced
        base = _check_train_base(args)
        args.calibrate = True if args.calibrate is None else args.calibrate
    dataset = _load_dataset(args, classes=args.classes)
    dataset.channels = _channels(args, _model_channels(resumed if resumed is not None else base))
    if resumed is not None and list(resumed.class_names) != list(dataset.class_names):
        _refuse_resumed_classes(args, resumed.class_names, dataset.class_names)
    try:  # every unreadable image named before anything else is said
        check_readable(dataset)
    except ValueError as error:
        raise CommandError(str(error)) from error
    split = _say_split(args, dataset)
    if getattr(args, "resumed_no_calibrate", False):
        _say("--resume: the run was started with --no-calibrate: its thresholds are not chosen at its end "
             "(--calibrate chooses them)")
    note = None if args.resume else builtin_start_note(dataset.class_names, args.model)
    if note:
        _say(f"note: {note}")
    held_out = bool(args.val_fraction) if split is None else split.held_out is not None
    bar = None
    written_before = _file_stamp(args.out)
    calibrating, last_epoch_written = False, written_before

    def progress(update) -> None:
        nonlocal bar, calibrating, last_epoch_written
        if update.stage == "calibration":
            calibrating = True
            if update.batch == update.num_batches:
                _say(f"calibrated the thresholds on {update.num_batches} "
                     f"{'held-out' if held_out else 'training'} image(s)")
            return
        if update.stage == "batch":
            if bar is None:
                bar = tqdm(total=update.num_batches, unit="batch", disable=None,
                           desc=f"epoch {update.epoch}/{update.num_epochs}")
            bar.update(1)
            bar.set_postfix(loss=f"{update.loss:.4f}")
            return
        if bar is not None:
            bar.close()
            bar = None
        last_epoch_written = _file_stamp(args.out)  # reported after the epoch's checkpoint
        line = (f"epoch {update.epoch}/{update.num_epochs}: loss {update.loss:.4f}, "
                f"{update.images_per_second:.1f} images/s")
        if update.val_ap is not None:
            line += f", {validation_summary(update.val_ap)}"
        _say(line)

    try:
        result = train(
            dataset, model=args.model if base is None else base, model_name=args.model, backbone=args.backbone,
            out=args.out,
            epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, backbone_lr_mult=args.backbone_lr_mult,
            momentum=args.momentum, weight_decay=args.weight_decay,
            input_size=None if args.input_size is None else tuple(args.input_size),
            sub_pixel_locating_factor=args.sub_pixel_locating_factor, hflip=args.hflip,
            device=args.device, seed=args.seed, val_fraction=args.val_fraction, calibrate=args.calibrate,
            resume=args.resume, progress=progress, num_workers=args.num_workers, overwrite=args.overwrite,
            split=split, check_images=False, warn=lambda warning: _say(f"warning: {warning}"))
    except ValueError as error:
        raise CommandError(str(error)) from error
    except KeyboardInterrupt as stop:
        if bar is not None:
            bar.close()
            bar = None
        stopped = _stopped_by(getattr(stop, "signum", None))  # Ctrl-C, SIGTERM or SIGHUP
        # the file is the truth: Ctrl-C can land after an epoch's checkpoint is written and before
        # its progress report
        stamp, epoch = _file_stamp(args.out), _kept_epoch(args.out, "train")
        kept = epoch if stamp != written_before else None
        if calibrating and stamp != last_epoch_written:  # calibrated and saved
            _say(f"{stopped}: {args.out} keeps epoch {epoch} and its calibrated thresholds")
        elif calibrating:  # after the last epoch's checkpoint
            _say(f"{stopped} while calibrating: {args.out} keeps epoch {epoch}, its "
                 "thresholds not calibrated; --resume calibrates them")
        elif kept is not None:
            _say(f"{stopped}: {args.out} keeps epoch {kept}; continue with --resume")
        elif args.resume and written_before is not None:
            _say(f"{stopped} before an epoch finished; {args.out} is unchanged: continue with --resume")
        else:
            _say(f"{stopped} before an epoch finished; {args.out} was not written by this run")
        return 130
    finally:
        if bar is not None:
            bar.close()
    if result.calibration is not None:  # the run's other warnings were said before its first epoch (warn)
        _say(result.calibration.describe())
        if result.calibration.warning:
            _say(f"warning: {for_command_line(result.calibration.warning)}")
    _say(f"checkpoint: {result.checkpoint}")
    _say(_after_training(args, result))
    return 0


def _refuse_resumed_classes(args, trained: Sequence[str], classes: Sequence[str]) -> None:
    """``train --resume`` of a run started with ``--classes`` (or ``--voc``) but resumed without
    them was refused after 'training on N images ... 71 classes' was said, listing every class of
    the dataset and not how to go on: refused before, naming the options that give the run's classes."""
    path = args.out if args.resume is True else args.resume
    message = (f"--resume: the run in {path} trains {plural(len(trained), 'class')} ({first_names(trained)}), "
               f"the dataset gives {plural(len(classes), 'class')} ({first_names(classes)})")
    if set(trained) <= set(classes):  # the run's classes are the dataset's, chosen (and ordered) by --classes
        again = " ".join(f"--classes {shlex.quote(name)}" for name in trained)
        raise CommandError(f"{message}: resume with the classes it started with, in its order: {again}")
    raise CommandError(f"{message}: name the dataset the run trained on, or start a new run without --resume")


def _after_training(args, result) -> str:
    """What to do with a trained checkpoint: calibrate it when it was not, then predict (or the plugin)."""
    return _next_step(args, result.checkpoint,
                      result.calibration is not None or "class_threshold" in result.model.settings,
                      bool(result.held_out_images))


def _next_step(args, checkpoint: Path, calibrated: bool, held_out: bool) -> str:
    """The 'next: ...' line of ``train``: calibrate ``checkpoint`` when it is not ``calibrated``
    (``held_out``: on the images its run held out), then predict (or the plugin)."""
    predict = (f"napari-prm predict IMAGES --model {shlex.quote(str(checkpoint))} --out results/, or choose it in "
               "napari's Peak Response Maps widget")
    if calibrated:
        return f"next: {predict}"  # calibrated now, or earlier with no epoch trained since
    return (f"next: choose its class and peak thresholds, {_calibrate_command(args, checkpoint, held_out)} (or on "
            f"images it did not train on), then {predict}")


def _calibrate_command(args, checkpoint: Path, held_out: bool) -> str:
    """``napari-prm calibrate`` of ``checkpoint`` on ``train``'s dataset as the run read it (without
    --voc or --image-dir, calibrate would split other images; a run of ``--classes`` with
    ``--allow-other-classes``, as it took the other labels); ``held_out``: on the share it held out."""
    image_dir = "" if args.image_dir is None else f" --image-dir {shlex.quote(str(args.image_dir))}"
    voc = " --voc" if args.voc else ""
    # a run of --classes on typed labels (a CSV, a folder per class): the other labels are images of
    # none of them, as train took them; a COCO JSON's or VOC's other categories need no flag
    typed = not args.voc and Path(args.dataset).suffix.lower() != ".json"
    other = " --allow-other-classes" if getattr(args, "classes", None) and typed else ""
    return (f"napari-prm calibrate {shlex.quote(str(args.dataset))}{image_dir}{voc} "
            f"--model {shlex.quote(str(checkpoint))}{' --held-out' if held_out else ''}{other}")


def _finished_run(args, model) -> bool:
    """``train --resume`` of a run that has finished its epochs (``--epochs`` not above them) said
    'training on N images ...', trained nothing and calibrated its thresholds again, without a word
    that the run was over. With nothing left to do (its thresholds calibrated, or ``--no-calibrate``)
    this says so and what would do more, and returns True: nothing runs. A finished run whose
    calibration was interrupted is left to calibrate (False), `_say_split` saying so."""
    finished = args.resumed_finished
    if args.epochs > finished:
        return False
    calibrated = "class_threshold" in model.settings
    if args.calibrate and not calibrated:
        return False
    path = Path(args.out if args.resume is True else args.resume)
    held_out = float(args.resumed_config.get("val_fraction", 0) or 0) > 0
    done = f"the run in {path} already finished its {plural(finished, 'epoch')}"
    more = f"to train it further, resume with --epochs M, M more than {finished}"
    if calibrated:
        _say(f"{done}, and its thresholds are calibrated: nothing was trained or calibrated. Nothing is left to do: "
             f"{more}; to choose its thresholds again, {_calibrate_command(args, path, held_out)}")
    else:
        _say(f"{done}: nothing was trained, and --no-calibrate leaves its thresholds uncalibrated; {more}")
    _say(_next_step(args, path, calibrated, held_out))
    return True


def _say_split(args, dataset):
    """Says how many images train and how many are held out (the run's own split when resumed),
    before training; train() warns of what the split leaves out (its ``warn``).
    Returns the split (`TrainingSplit`, for train() to use), None when it cannot be made."""
    from .train import SPLIT_RULE, training_split

    config = getattr(args, "resumed_config", None) or {}
    fraction = config.get("val_fraction", args.val_fraction)
    try:
        split = training_split(dataset, fraction, int(config.get("seed", args.seed)),
                               split_rule=getattr(args, "resumed_split_rule", SPLIT_RULE))
    except (ValueError, TypeError):
        # a bad fraction, or a bad stored recipe: train() says which
        _say(f"training on {plural(len(dataset), 'image')}, {plural(len(dataset.class_names), 'class')} -> {args.out}")
        return None
    finished = getattr(args, "resumed_finished", None)
    if finished is not None and args.epochs <= finished:  # interrupted while calibrating (`_finished_run`)
        on = (f"the {plural(len(split.held_out), 'held-out image')}" if split.held_out is not None
              else f"the {plural(len(split.train), 'training image')}")
        _say(f"the run in {args.out} already finished its {plural(finished, 'epoch')}: nothing to train; "
             f"calibrating its thresholds on {on} -> {args.out}")
        return split
    _say(f"{split.describe(args.calibrate)}; {plural(len(dataset.class_names), 'class')} -> {args.out}")
    return split


def _refuse_existing_calibrate_out(args) -> None:
    """``calibrate --out`` replaced an existing file without a word (a trained model, say).
    Refused before anything runs, unless ``--overwrite`` is given or --out is the --model
    file itself, which calibrate without --out updates in place."""
    out = args.out
    if out is None or args.overwrite or not out.exists():
        return
    from .model.checkpoint import is_builtin_name

    if not is_builtin_name(args.model) and Path(args.model).is_file() and check.same_file(args.model, out):
        return
    raise CommandError(f"--out {out} exists: pass --overwrite to replace it, or choose another path "
                       f"(without --out, calibrate updates --model {args.model} in place)")


def _run_calibrate(args) -> int:
    from tqdm import tqdm

    from .model.checkpoint import is_builtin_name
    from .train import calibrate_checkpoint

    _refuse_existing_calibrate_out(args)
    if is_builtin_name(args.model) and args.out is None:  # nothing to replace: it is built in
        the_file = f" (the file of that name here is --model ./{args.model})" if Path(args.model).is_file() else ""
        raise CommandError(f"--model {args.model} is a built-in model{the_file}: pass --out to write the calibrated "
                           "model to a new checkpoint")
    device = _device(args.device)
    dataset = _load_dataset(args)
    dataset.channels = _channels(args, _model_channels(args.model))
    bars: dict = {}

    def progress(tta: bool, done: int, total: int) -> None:
        if tta not in bars:
            bars[tta] = tqdm(total=total, desc="calibrate" + (" (TTA)" if tta else ""), unit="image", disable=None)
        bars[tta].update(done - bars[tta].n)
        if done == total:  # before what is said after it
            bars[tta].close()

    try:
        outcome = calibrate_checkpoint(args.model, dataset, args.out, held_out=args.held_out, tta=args.tta,
                                       device=device, progress=progress, input_size=args.input_size,
                                       allow_other_classes=args.allow_other_classes,
                                       report=lambda kind, text: _say(f"{kind}: {for_command_line(text)}"))
    except ValueError as error:  # in the command line's words (--allow-other-classes)
        if error.args and isinstance(error.args[0], Worded):
            raise CommandError(for_command_line(error.args[0])) from error
        raise
    finally:
        for bar in bars.values():
            bar.close()
    for tta, c in ((False, outcome.calibration), (True, outcome.tta_calibration)):
        if c is not None:
            print(f"{'with TTA: ' if tta else ''}class threshold {c.class_threshold:.4g}, peak threshold "
                  f"{c.peak_threshold:.4g} on {c.images} image(s): {100 * c.precision:.0f} % of the peaks on "
                  f"classes the images show, {100 * c.recall:.0f} % of the shown classes found, "
                  f"{c.peaks_per_image:.1f} peaks per image")
    _say(f"checkpoint: {outcome.checkpoint}")
    return 0


def _resumed_masks(args) -> None:
    """``refine --resume`` without ``--masks`` reads the corrections of the run it continues from
    where its training state says they were read (they were dropped without a word: an
    interrupted run went on with "0 corrected image(s)"); refine() refuses other ones."""
    recorded = getattr(args, "resumed_corrections", None) if args.resume else None
    if args.masks is not None or not isinstance(recorded, dict) or not recorded.get("images"):
        return
    source = recorded.get("source")
    if not source:
        return  # given from Python: refine() refuses the run without them, saying so
    if not Path(source).exists():
        raise CommandError(f"--resume: the run in {args.out} learnt from the corrections in {source}, which no "
                           "longer exists: give --masks where they are now, or start a new run without --resume")
    args.masks = Path(source)
    _say(f"--resume: the run's corrections: --masks {source}")


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """(modification time, size) of a file, None when there is none: tells whether a run rewrote it."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _kept_epoch(path: Path, command: str = "refine") -> int | None:
    """The epoch a checkpoint holds, None when unreadable: ``train``'s training state, or
    the refinement head's ``info["epochs"]`` for ``refine``."""
    from .model import load_checkpoint
    from .train import TRAINING_STATE_KEY

    try:
        model, extra = load_checkpoint(path)
        return int(extra[TRAINING_STATE_KEY]["epoch"] if command == "train" else model.head.info["epochs"])
    except (ValueError, OSError, KeyError, TypeError, AttributeError):
        return None


def _run_refine(args) -> int:
    from tqdm import tqdm

    from .model.checkpoint import is_safetensors
    from .refine import refine

    _refuse_existing_out(args)
    resumed = _check_resumed_options(args, args.out) if args.resume else None
    dataset = _load_dataset(args)
    model = _load_model(args.model, args.device)
    # those the head learns from, which the refined checkpoint records (a resumed run: its own)
    dataset.channels = _channels(args, (resumed if resumed is not None else model).settings.get("channels"))
    corrections = []
    _resumed_masks(args)
    if args.masks is not None:
        corrections = list(_dataset_corrections(args.masks, dataset, model.class_names).values())
        unknown = sum(c.num_unknown for c in corrections)
        _say(f"{len(corrections)} corrected image(s), {plural(sum(c.num_instances for c in corrections), 'instance')}"
             + (f" ({unknown} of no class of the model: they teach boundaries only)" if unknown else ""))
    if not args.self_training and not corrections:
        raise CommandError("nothing to learn from: --no-self-training needs --masks")
    cache = None if args.cache is not None and args.cache.lower() == "none" else \
        Path(args.cache) if args.cache is not None else args.out.with_name(args.out.name + ".cache")
    predict_options = {k: v for k, v in (("class_threshold", args.class_threshold),
                                         ("peak_threshold", args.peak_threshold)) if v is not None}
    started: list[bool] = []
    bars: dict = {}
    finished: list[int] = []  # epochs this run wrote to --out
    written_before = _file_stamp(args.out)

    def progress(update) -> None:
        # said once refine() has checked the classes, images and --resume: the line came before its
        # refusals, as if the run had started
        if not started:
            started.append(True)
            _say(f"refining {args.model} on {len(dataset) if args.self_training else 0} pseudo-labelled and "
                 f"{len(corrections)} corrected image(s) -> {args.out}")
        if update.stage == "prepare":
            bar = bars.setdefault("prepare", tqdm(total=update.total, desc="features and pseudo-labels",
                                                  unit="image", disable=None))
            bar.update(update.done - bar.n)
            if update.done == update.total:
                bar.close()
            return
        if update.stage == "batch":
            bar = bars.get(update.epoch)
            if bar is None:
                bar = bars[update.epoch] = tqdm(total=update.total, unit="batch", disable=None,
                                                desc=f"epoch {update.epoch}/{update.num_epochs}")
            bar.update(1)
            bar.set_postfix(loss=f"{update.loss:.4f}")
            return
        bar = bars.pop(update.epoch, None)
        if bar is not None:
            bar.close()
        finished.append(update.epoch)
        _say(f"epoch {update.epoch}/{update.num_epochs}: loss {update.loss:.4f}")

    try:
        result = refine(model, dataset=dataset if args.self_training else None, corrections=corrections,
                        corrections_source=None if args.masks is None else Path(args.masks).absolute(),
                        channels=dataset.channels, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, correction_weight=args.correction_weight, predict_options=predict_options,
                        cache_dir=cache if args.self_training else None, device=args.device, seed=args.seed,
                        resume=args.resume, progress=progress, overwrite=args.overwrite)
    except ValueError as error:
        raise CommandError(str(error)) from error
    except KeyboardInterrupt as stop:
        stopped = _stopped_by(getattr(stop, "signum", None))  # Ctrl-C, SIGTERM or SIGHUP
        # the file is the truth: Ctrl-C can land after an epoch's checkpoint is written and before
        # its progress report
        kept = _kept_epoch(args.out) if _file_stamp(args.out) != written_before else None
        kept = kept if kept is not None else (finished[-1] if finished else None)
        if kept is None:
            _say(f"{stopped} before an epoch finished; {args.out} was not written by this run")
        elif is_safetensors(args.out):
            _say(f"{stopped}: {args.out} keeps epoch {kept}; a .safetensors file holds no training "
                 f"state, so go on with --model {args.out} (the head is fine-tuned), or write a .pt to resume")
        else:
            _say(f"{stopped}: {args.out} keeps epoch {kept}; continue with --resume")
        return 130
    finally:
        for bar in bars.values():
            bar.close()
    finished_before = getattr(args, "resumed_finished", None) if resumed is not None else None
    if finished_before is not None and args.epochs <= finished_before:  # refine() trained and wrote nothing
        _say(f"the run in {args.out} already finished its {plural(finished_before, 'epoch')}: nothing was trained "
             f"or written. Nothing is left to do: to train it further, resume with --epochs M, M more than "
             f"{finished_before}")
        return 0
    _say(f"checkpoint: {result.checkpoint} ({plural(result.history[-1].epoch if result.history else 0, 'epoch')})")
    return 0


def _dataset_corrections(masks: Path, dataset, class_names) -> dict:
    """``refine``/``evaluate --masks``: the corrections of DATASET's images, by index; warns of
    the exports that match none and of those left out for a newer export of their image (named),
    refuses only when none matched."""
    from .refine import match_corrections

    superseded: list[str] = []
    devkit_warnings: list[str] = []
    try:
        matched, unmatched = match_corrections(masks, class_names, dataset.image_paths, superseded=superseded,
                                               warnings_to=devkit_warnings, channels=dataset.channels)
    except (ValueError, OSError) as error:
        raise CommandError(f"--masks: {error}") from error
    for text in devkit_warnings:
        if text not in getattr(dataset, "warnings", ()):  # the same devkit as DATASET: said once
            _say(f"warning: --masks: {text}")
    if not matched:
        raise CommandError(f"--masks: no export in {masks} matches an image of the dataset {dataset.source} "
                           "(by the image its manifest records, else by file name or stem, and in a sub-folder "
                           f"by its folders too: A1/cat_labels.tif is an image A1/cat.*): {first_names(unmatched)}")
    if unmatched:
        _say(f"warning: --masks: {plural(len(unmatched), 'export')} "
             f"{'matches' if len(unmatched) == 1 else 'match'} no image of the dataset, left out: "
             f"{first_names(unmatched)}")
    if superseded:
        _say(f"warning: --masks: several exports of one image: the most recently written of each is used, "
             f"{plural(len(superseded), 'export')} left out: {', '.join(superseded)}")
    return matched


def _corrected_ground_truth(masks: Path, dataset, class_names) -> dict:
    """``evaluate --masks``: the corrections of DATASET's images, by index, and how many matched."""
    matched = _dataset_corrections(masks, dataset, class_names)
    corrections = matched.values()
    if masks.is_dir():
        from .io.paths import sorted_paths
        from .refine.corrections import uncorrected_predictions

        # only the exports scored: those left out (no image of the dataset, superseded) measure nothing
        unchanged = [Path(os.path.relpath(path, masks)).as_posix()
                     for path in uncorrected_predictions(sorted_paths(Path(c.source) for c in corrections))]
        if unchanged:
            _say(f"warning: {plural(len(unchanged), 'export')} in {masks} ({first_names(unchanged, 3)}) "
                 f"{'is' if len(unchanged) == 1 else 'are'} napari-prm predict's output as written, not corrected: "
                 "the figures measure agreement with those predictions, not accuracy. Correct them first; to score "
                 "predictions against a COCO JSON or a PASCAL VOC devkit, use evaluate DATASET --predictions FOLDER")
    unknown = sum(c.num_unknown for c in corrections)
    _say(f"{len(matched)} of the dataset's {plural(len(dataset), 'image')} "
         f"{'has' if len(matched) == 1 else 'have'} corrected instances "
         f"({plural(sum(c.num_instances for c in corrections) - unknown, 'instance')})"
         + (f"; {plural(unknown, 'instance')} of no class of the model left out" if unknown else ""))
    return matched


def _run_evaluate(args) -> int:
    from tqdm import tqdm

    from .evaluate import NoInstanceWarning, evaluate, evaluate_labels, report_json, report_markdown

    if args.predictions is not None:
        return _run_evaluate_predictions(args)
    dataset = _load_dataset(args)
    labels_only = args.masks is None and not dataset.has_masks
    if labels_only:
        segmented = "" if dataset.voc is None else (
            f" (none of its images has a SegmentationObject PNG: the devkit segments those of "
            f"{dataset.voc.root / 'ImageSets' / 'Segmentation'}'s lists)")
        _say(f"dataset {dataset.source} has image-level labels only{segmented}: classification AP and peak "
             "precision; instance metrics need masks (--masks)")
    without = set() if labels_only or args.masks is not None else _say_without_masks(dataset)
    model = _load_model(args.model, args.device)
    dataset.channels = _channels(args, model.settings.get("channels"))
    try:  # before the masks are read: a model of other classes is the first thing to say
        labels = dataset.with_classes(model.class_names).labels
    except ValueError as error:  # as calibrate says it
        raise CommandError(f"the dataset does not have the model's classes: {error}") from error
    _say_uncalibrated(args, model)
    ground_truth = None if args.masks is None else _corrected_ground_truth(args.masks, dataset, model.class_names)
    indices = [i for i in range(len(dataset)) if i not in without] if ground_truth is None else list(ground_truth)
    total = sum(1 for i in indices if labels[i].any()) if args.only_labeled else len(indices)
    total = total if args.max_images is None else min(args.max_images, total)
    logged = [time.monotonic()]
    with tqdm(total=total, desc="evaluate", unit="image", disable=None) as bar:
        try:
            def progress(done: int, _total: int) -> None:
                bar.update(done - bar.n)
                if _log_line_due(bar, done, total, logged):
                    _say(f"evaluate: {done} of {plural(total, 'image')} done")

            if labels_only:
                results = evaluate_labels(model, dataset, max_images=args.max_images, only_labeled=args.only_labeled,
                                          progress=progress, **_inference_settings(args))
            else:
                with warnings.catch_warnings():  # said below, in the command line's words
                    warnings.simplefilter("ignore", NoInstanceWarning)
                    results = evaluate(model, dataset, proposals=args.proposals,
                                       iou_thresholds=args.iou_thresholds, max_images=args.max_images,
                                       only_labeled=args.only_labeled, ground_truth=ground_truth,
                                       progress=progress, **_inference_settings(args))
        except ValueError as error:
            raise CommandError(str(error)) from error
    if results.get("no_instance"):
        _say(f"warning: the predictions of the {plural(results['num_images'], 'image')} evaluated hold no instance "
             f"({for_command_line(results['no_instance'])}), so mAP^r and ABO are 0")
    if args.masks is not None:
        results["settings"]["ground_truth"] = str(args.masks)
    print(report_markdown(results), end="")
    if args.json is not None:
        _say(f"results: {report_json(results, args.json)}")
    return 0


def _say_without_masks(dataset) -> set[int]:
    """Say which images of a dataset with instance masks have none (a PASCAL VOC image the devkit
    has not segmented), which evaluation leaves out; returns their indices."""
    without = set(dataset.images_without_masks())
    if without:
        verb, names = "has" if len(without) == 1 else "have", [dataset.image_paths[i].name for i in sorted(without)]
        _say(f"{len(without)} of the dataset's {plural(len(dataset), 'image')} {verb} no instance masks (no "
             f"SegmentationObject PNG), left out: {first_names(names, 3)}")
    return without


def _run_evaluate_predictions(args) -> int:
    """``evaluate --predictions``: predict output folders scored against DATASET, compared with the first."""
    from tqdm import tqdm

    from .data import is_voc_folder, voc_split_root
    from .evaluate import (
        ComparisonInterrupted,
        NoInstanceWarning,
        evaluate_exports,
        report_exports_markdown,
        report_json,
    )

    path = Path(args.dataset)
    neither = (f"--predictions: DATASET {args.dataset} is neither a COCO JSON nor a PASCAL VOC devkit (a split list "
               "such as VOC2012/ImageSets/Segmentation/val.txt, or the year folder): predictions are scored against "
               "their instance masks")
    if path.suffix.lower() != ".json" and not (is_voc_folder(path) or voc_split_root(path) is not None):
        raise CommandError(neither)
    # a COCO JSON is the ground truth: no image is read; a PASCAL VOC devkit's image sizes are read from their headers
    dataset = _load_dataset(args, check_images=False) if path.suffix.lower() == ".json" else _load_dataset(args)
    if dataset.coco is None and dataset.voc is None:
        raise CommandError(neither)
    results_json = args.results_json
    if results_json is not None:  # refused before anything is scored
        if path.suffix.lower() != ".json":
            raise CommandError(f"--results-json {results_json}: DATASET {args.dataset} is a PASCAL VOC devkit, which "
                               "has no COCO image or category ids; the results file is in a COCO JSON's ids: give "
                               "a COCO JSON as DATASET")
        if results_json.exists() and not args.overwrite:
            raise CommandError(f"--results-json {results_json} exists: pass --overwrite to replace it, or choose "
                               "another path")
    without = _say_without_masks(dataset) if dataset.has_masks else set()
    bars: dict = {}
    reached: dict[str, int] = {}  # a stage's count: a disabled bar (stderr not a terminal) counts nothing
    logged = [time.monotonic()]

    def progress(stage: str, done: int, total: int) -> None:
        reached[stage] = done
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc="evaluate" if stage == "score" else stage,
                                     unit="image" if stage == "score" else "resample", disable=None)
        bar.update(done - bar.n)
        if _log_line_due(bar, done, total, logged):
            _say(f"{'evaluate' if stage == 'score' else stage}: {done} of {total} done")
        if done == total:
            bar.close()

    stopped = None  # how the comparison stopped, if it did
    try:
        with warnings.catch_warnings():  # said below, in the command line's words (_say_exports)
            warnings.simplefilter("ignore", NoInstanceWarning)
            evaluation = evaluate_exports(args.predictions, dataset, iou_thresholds=args.iou_thresholds,
                                          only_labeled=args.only_labeled, max_images=args.max_images,
                                          resamples=args.resamples, progress=progress)
    except ValueError as error:
        raise CommandError(f"--predictions: {error}") from error
    except ComparisonInterrupted as stop:  # the folders' scores are complete: reported, not lost
        evaluation, stopped = stop.evaluation, _stopped_by(stop.signum)
    finally:
        for bar in bars.values():
            bar.close()
    choosing = " and ".join(option for option, given in (("--only-labeled", args.only_labeled),
                                                           ("--max-images", args.max_images is not None)) if given)
    masked = " with instance masks" if without else ""  # the others are left out, said above
    if results_json is not None:
        written = _write_results_json(results_json, args.predictions[0], path, overwrite=args.overwrite)
    for row in evaluation["results"]:
        _say_exports(row, len(dataset) - len(without), choosing, masked)
    print(report_exports_markdown(evaluation), end="")
    if stopped is not None:
        _say(f"{stopped} during the comparison ({reached.get('bootstrap', 0)} of "
             f"{plural(args.resamples, 'resample')} drawn): the folders' scores above are complete, the "
             "comparison is not given"
             + ("" if args.json is None else f", and {args.json} is not written")
             + "; fewer --resamples take less time")
        return 130
    if args.json is not None:
        rows = evaluation["results"]
        _say(f"results: {report_json(rows[0] if len(rows) == 1 else evaluation, args.json)}")
    if results_json is not None:
        _say(f"results JSON (pycocotools, {plural(written, 'instance')} in {path}'s ids): {results_json}")
        if not written:
            _say(f"note: {results_json} holds an empty list ([]): the exports in {args.predictions[0]} hold no "
                 "instance, and pycocotools' COCO.loadRes cannot load an empty list (it raises IndexError); every "
                 "AP is 0")
    return 0


def _write_results_json(file: Path, folder: Path, dataset_json: Path, *, overwrite: bool) -> int:
    """``evaluate --predictions FOLDER --results-json FILE``: ``coco_results(FOLDER, DATASET)`` written
    atomically to ``FILE``; returns how many instances it holds."""
    from .io.coco import coco_results, write_coco_json

    try:
        results = coco_results(folder, dataset_json)
    except ValueError as error:
        raise CommandError(f"--results-json {file}: cannot give the instances of {folder} in {dataset_json}'s "
                           f"ids: {error}") from error
    try:
        write_coco_json(file, results, overwrite=overwrite)
    except (OSError, ValueError) as error:  # FileExistsError: made since the check before scoring
        raise CommandError(f"--results-json {file}: {error}") from error
    return len(results)


def _say_exports(row: dict, dataset_images: int, choosing: str, masked: str = "") -> None:
    """What ``evaluate --predictions`` scored of one folder, and what it left out (named);
    ``dataset_images``: how many of the dataset's images could be scored (``masked``: ``" with
    instance masks"`` when some have none); ``choosing``: the options that chose among the images
    with an export, as the user gave them."""
    exports, folder = row["exports"], row["settings"]["predictions"]
    missing, left_out = exports["images_without_export"], exports["left_out"]
    _say(f"{folder}: {plural(row['num_images'], 'image')} scored; "
         + (f"{len(left_out)} more with an export left out by {choosing} ({first_names(left_out, 5)}); "
            if left_out else "")
         + (f"{len(missing)} of the dataset's {plural(dataset_images, 'image')}{masked} "
            f"{'has' if len(missing) == 1 else 'have'} no export there ({first_names(missing, 5)})" if missing
            else f"every image of the dataset{masked} has an export there"))
    if exports.get("classes_not_asked"):
        asked = row["classes"]
        _say(f"note: {folder}: predicted for {len(asked)} of its model's "
             f"{plural(len(asked) + len(exports['classes_not_asked']), 'class')} (predict --classes "
             f"{first_names(asked, 5)}): mAP^r averages over those")
    if not row["num_predicted_instances"]:  # why, as the manifests tell (evaluate.no_instance_causes)
        causes = for_command_line(exports.get("no_instance", ""))
        _say(f"warning: {folder}: its exports of the {plural(row['num_images'], 'image')} scored hold no instance"
             + (f" ({causes})" if causes else "") + ", so mAP^r and ABO are 0")
    if exports["unmatched"]:
        _say(f"warning: {folder}: {plural(len(exports['unmatched']), 'export')} of no image of the dataset, "
             f"left out: {first_names(exports['unmatched'], 3)}")
    if exports["outside"]:
        _say(f"note: {folder}: {plural(len(exports['outside']), 'export')} of images --voc leaves out (no VOC "
             f"class): {first_names(exports['outside'], 3)}")
    if exports["lacking"]:
        lacking = exports["lacking"]
        _say(f"warning: {folder}: {plural(len(lacking), 'export')} that the manifests list "
             + ("is not there, so its image is" if len(lacking) == 1 else "are not there, so their images are")
             + f" not scored: {first_names(lacking, 3)} (predict --overwrite writes an image's outputs again)")
    if exports["stacks"]:
        _say(f"warning: {folder}: the outputs of {plural(len(exports['stacks']), 'stack')} hold no COCO JSON "
             f"(predict writes none for a Z/T stack), left out: {first_names(exports['stacks'], 3)}")


# --------------------------------------------------------------------------- demo / bench
def display_available() -> bool:
    """Whether a window can be opened (X11/Wayland on Linux; always on macOS and Windows)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def qt_available() -> bool:
    """Whether napari finds Qt bindings to open a window with (``pip install .`` without the
    ``[all]`` extra installs napari without any)."""
    try:
        from qtpy import QtCore  # noqa: F401
    except (ImportError, RuntimeError):  # qtpy's QtBindingsNotFoundError is both
        return False
    return True


def _demo_stack_hint(path) -> str:
    """What to use for a TIFF stack of z-planes or time points, which ``demo`` (one 2-D image) refuses."""
    from .io.images import plane_count

    if plane_count(path) == 1:
        return ""
    return ("; demo runs one 2-D image: 'napari-prm predict' runs a stack plane by plane, and napari's Peak "
            "Response Maps widget runs its planes (open the file in napari)")


def _run_demo(args) -> int:
    from . import io
    from .predictor import PRMPredictor

    if args.image is None:
        if args.channels is not None:  # they were ignored without a word: the cat was run as it is
            words = " ".join(",".join(map(str, word)) for word in args.channels)
            raise CommandError(f"--channels {words}: picks channels of an image file, and none is given: give "
                               "IMAGE (a multichannel TIFF), or drop --channels to run the built-in image "
                               "(scikit-image's Chelsea, RGB) as it is")
        from skimage import data

        image, stem, file_name = data.chelsea(), "chelsea", "chelsea.png"
    else:
        try:
            image = io.read_image(args.image, channels=_channels(args, _model_channels(args.model)))
        except ValueError as error:
            raise CommandError(f"{error}{_demo_stack_hint(args.image)}") from error
        stem, file_name = output_name(args.image), Path(args.image).name
        if note := io.format_note(args.image):  # a PNG named .tif: read by its content
            _say(note)
    model = _load_model(args.model, args.device)
    try:
        # the predictor keeps the image's forward pass: clicks in napari then cost one
        # backward pass each, and the widget's Re-threshold no forward pass
        predictor = PRMPredictor(model, proposals=args.proposals, **_inference_settings(args))
        predictor.set_image(image)
        prediction = predictor.predict()
    except ValueError as error:
        raise CommandError(f"{args.image or file_name}: {error}") from error
    args.out.mkdir(parents=True, exist_ok=True)
    kept: list = []  # outputs corrected by hand since they were written: copied aside, said here
    written = io.write_prediction(prediction, args.out, stem, overwrite=True,
                                  image_file_name=file_name,
                                  pixel_size=io.tiff_pixel_size(args.image) if args.image else None, kept=kept)
    for edit in kept:
        _say(str(edit))
    if args.image is None:
        # The built-in image has no file: write it, so that the file the COCO JSON and the
        # manifest name exists beside them.
        from PIL import Image

        with io.atomic_write(args.out / file_name) as temp:
            Image.fromarray(image).save(temp, format="PNG")
        written.append(args.out / file_name)
    order = prediction.scores.argsort()[::-1][:3]
    top = ", ".join(f"{prediction.class_names[i]} {prediction.scores[i]:.2f}" for i in order)
    print(f"top classes: {top}; {plural(len(prediction.peaks), 'peak')}, "
          f"{plural(len(prediction.instances), 'instance')}")
    for path in written:
        print(path)
    view = display_available() if args.view is None else args.view
    if args.view is None and not view:
        _say("no display available: results written, napari not opened (run it where a display is, "
             "or open the files above in napari)")
    elif view and not display_available():
        _say("no display available: results written, napari not opened")
    elif view and not qt_available():
        _say("no Qt bindings installed: results written, napari not opened (pip install \".[all]\" "
             "in the clone, or napari[pyqt6], gives napari its Qt)")
    elif view:
        _show_in_napari(image, prediction, stem, model, args.model, predictor, {
            "proposals": args.proposals, "class_threshold": args.class_threshold,
            "peak_threshold": args.peak_threshold})
    return 0


def show_in_viewer(viewer, image, prediction, name: str, model, *, predictor=None,
                   model_choice: str | None = None, **settings):
    """Add ``image`` and its ``prediction`` to a napari viewer as the plugin does.

    The image becomes the layer ``name``; the "Peak Response Maps" widget is docked and
    shows the prediction as a run of its own (``PredictWidget.show_prediction``): the same
    layers (``<name> peaks``, ``<name> PRMs``, ``<name> instances``) with the same
    features, and its correction tools and shortcuts work on them. ``predictor`` (the
    ``PRMPredictor`` that made the prediction) and ``model_choice`` (the model's built-in
    name or checkpoint path) let the widget reuse the image's forward pass. ``settings``
    are the run's (``proposals``, ``class_threshold``, ``peak_threshold``). Returns the widget.
    """
    layer = viewer.add_image(image, name=name)
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    widget.show_prediction(layer, prediction, model, predictor=predictor, model_choice=model_choice,
                           **settings)
    return widget


def _show_in_napari(image, prediction, name: str, model, model_choice: str, predictor,
                    settings: dict) -> None:
    import napari

    viewer = napari.Viewer(title=f"napari-prm demo: {name}")
    show_in_viewer(viewer, image, prediction, name, model, predictor=predictor,
                   model_choice=model_choice, **settings)
    napari.run()


def _run_bench(args) -> int:
    from . import bench

    model = _load_model(args.model, args.device)
    _say(f"timing {plural(args.peaks, 'peak')} at {args.size}x{args.size} on {model.backbone}...")
    figures = bench.benchmark_model(model=model, size=args.size, num_peaks=args.peaks,
                                    device=args.device, peak_batch_size=args.peak_batch_size,
                                    compare_original=args.compare_original)
    retrieval = bench.benchmark_retrieval(size=args.size) if args.retrieval else None
    text = bench.format_report(figures, retrieval) + "\n"
    print(text, end="")
    if args.out is not None:
        from .io import atomic_write

        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out) as temp:
            temp.write_text(text, encoding="utf-8")
    return 0
