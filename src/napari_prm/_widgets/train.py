"""The "Train PRM model" dock widget: :func:`napari_prm.train.train` in a worker thread.

When the output file holds an unfinished run of the dataset (:func:`napari_prm.train.unfinished_run`),
*Continue the unfinished run* goes on with it (``train(resume=True)``). Whether it does is found in
a worker thread (loading the dataset and the checkpoint froze napari for seconds), again only when a
file changed (`napari_prm._widgets.run_check.UnfinishedRunCheck`); *Calibrate*
(`napari_prm._widgets.calibrate.CalibrateSection`) chooses a checkpoint's thresholds on the dataset.

Progress shows in the widget and as a bar in napari's activity dock, whose cancel button
stops the run like *Cancel* (after the current batch; the last epoch's checkpoint stays).
Closing the widget, or taking it out of its dock, stops the run in the same way.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning

from .._text import for_widget, plural, sentence, sentences
from ..data import load_dataset
from ..io import channels_for, channels_read_as, parse_channels
from ..model.checkpoint import is_builtin_name, model_channels, model_input_size
from ..train import (
    builtin_start_note,
    recipe_conflicts,
    same_base,
    split_warnings,
    starts_new_classifier,
    train,
    training_split,
    validation_summary,
)
from .activity import ActivityProgress, StopsOnClose
from .calibrate import CalibrateSection
from .models import (
    devices,
    import_torch_side,
    keep_existing_output,
    offer_model,
    recent_models,
    remember_model,
    unwrap_viewer,
)
from .relay import _Relay
from .run_check import UnfinishedRunCheck
from .settings import chosen_path, exclusive_paths, no_path, persist_fields

BASE_MODELS = {
    "EfficientNet-Lite0 (ImageNet weights)": "efficientnet_lite0",
    "ResNet-50 (ImageNet weights, downloaded)": "resnet50",
    "VGG-16 (ImageNet weights, downloaded)": "vgg16",
    "tiny (random, for trying things out)": "tiny",
    # fine-tuned: EfficientNet-Lite0 keeping its ImageNet classifier rows of the dataset's classes
    "built-in imagenet-voc (its ImageNet rows of the VOC classes kept)": "imagenet-voc",
    "built-in imagenet-coco (its ImageNet rows of the COCO classes kept)": "imagenet-coco",
    "built-in imagenet (its rows of ImageNet's 1000 classes kept)": "imagenet",
}
#: How the note of :func:`napari_prm.train.builtin_start_note` names the choice above.
BUILTIN_CHOICE = "the base model 'built-in {name}'"
#: The input size field's tooltip (`TrainWidget._show_model_size` adds a model's non-square size).
#: The image channels field's label, which its errors name.
CHANNELS_LABEL = "image channels"
CHANNELS_TOOLTIP = ("of multichannel images (e.g. fluorescence TIFFs), the 1 to 3 different channels, from 0, to "
                    "train on as the network's red, green and blue: 0 2 or 0,2 (as the command line's --channels); "
                    "recorded in the checkpoint, which predicts with them. Empty: the images as they are (a "
                    "fine-tuned checkpoint or an unfinished run that records channels: those)")
SIZE_TOOLTIP = ("the side of the square network input the images are resized to; choosing a built-in model or a "
                "checkpoint to fine-tune shows its own size")


@dataclass
class TrainSettings:
    """The Train widget's choices kept between sessions (a dataset or output folder that has gone
    is left empty, or at the default)."""

    dataset: str = ""
    dataset_dir: str = ""
    image_dir: str = ""
    base: str = "efficientnet_lite0"
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 8
    input_size: int = 448
    channels: str = ""  # as typed: "0 2", "0,2"; "" reads the images as they are
    out: str = str(Path.home() / "prm_model.pt")
    device: str | None = None  # None: the first of `devices()`
    continue_run: bool = True  # continue the unfinished run in the output file, when it holds one
    calibrate_model: str = ""
    # where *Calibrate* writes is not kept: "the checkpoint itself" chosen for one checkpoint must
    # not apply to another (the model just trained) in a later session; it starts on "a new file"


def _typed_name(field: str, value) -> bool:
    """Whether a saved value of `TrainSettings` is put back as typed: a built-in model's name
    (``imagenet-voc``) in *model to calibrate*, which a path in the current folder is not
    (`napari_prm.model.is_builtin_name`)."""
    return field == "calibrate_model" and is_builtin_name(value)


def _still_there(field: str, value) -> bool:
    """Whether a saved path of `TrainSettings` can be put back: the dataset exists, the output's
    folder does; a built-in model's name to calibrate (`_typed_name`) is always there."""
    if _typed_name(field, value):
        return True
    if field in ("dataset", "dataset_dir", "image_dir", "calibrate_model"):
        return Path(value).exists()
    return field != "out" or Path(value).parent.is_dir()


def _channel_text(channels) -> str:
    """Image channels as the field takes them (``0,2``); None as what it means."""
    return "none, the images as they are" if channels is None else ",".join(str(c) for c in channels)


def _newly_found(before, run) -> bool:
    """Whether the check's answer ``run`` is an unfinished run other than ``before``, the one the
    last answer found (another file, or more epochs done): its total and recipe go to the fields."""
    return run is not None and (before is None or (before.path, before.epochs_done) != (run.path, run.epochs_done))


class TrainWidget(StopsOnClose, CalibrateSection, Container):
    """Train a PRM model on an image-level-label dataset; continue an unfinished run; calibrate
    a checkpoint's thresholds on the dataset (`CalibrateSection`).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer):
        import_torch_side()
        self._viewer = unwrap_viewer(napari_viewer)
        self._dataset = FileEdit(label="dataset file", mode="r",
                                 filter="COCO JSON, CSV or PASCAL VOC split list (*.json *.csv *.txt)",
                                 tooltip="a COCO instances JSON, a CSV 'image,labels' (labels ';'-separated) or a "
                                         "PASCAL VOC split list (VOC2012/ImageSets/Segmentation/train.txt)")
        self._dataset_dir = FileEdit(label="or folder per class", mode="d",
                                     tooltip="a folder of one sub-folder of images per class, or a PASCAL VOC "
                                             "year folder (VOC2012, holding JPEGImages and Annotations: every "
                                             "image with an XML)")
        # a CSV's or COCO JSON's images may lie elsewhere (the command line's --image-dir)
        self._image_dir = FileEdit(label="images folder (CSV, COCO; default: the file's)", mode="d", value="")
        self._base = ComboBox(label="base model", choices=self._base_choices)
        self._epochs = SpinBox(label="epochs", value=5, min=1, max=1000)
        self._lr = FloatSpinBox(label="learning rate", value=0.01, min=1e-6, max=1.0, step=0.001)
        self._batch = SpinBox(label="batch size", value=8, min=1, max=512)
        self._size = SpinBox(label="input size (pixels)", value=448, min=32, max=2048, step=32, tooltip=SIZE_TOOLTIP)
        self._channels = LineEdit(label=CHANNELS_LABEL, value="", tooltip=CHANNELS_TOOLTIP)
        self._out = FileEdit(label="output file", mode="w", filter="PyTorch checkpoint (*.pt)",
                             value=str(Path.home() / "prm_model.pt"))
        self._device = ComboBox(label="device", choices=devices())
        # shown when the output file holds an unfinished run of the dataset (`_find_unfinished_run`)
        self._continue = CheckBox(text="Continue the unfinished run", value=True)
        self._continue.hide()
        self._train_button = PushButton(text="Train")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # a long message must not widen the dock
        super().__init__(widgets=[
            self._dataset, self._dataset_dir, self._image_dir, self._base, self._epochs, self._lr, self._batch,
            self._size, self._channels, self._out, self._device, self._continue, self._train_button,
            *self._build_calibrate(), self._cancel_button, self._progress, self._status,
        ])
        exclusive_paths(self._dataset, self._dataset_dir)  # one dataset: the folder won silently
        persist_fields("train", TrainSettings, {
            "dataset": self._dataset, "dataset_dir": self._dataset_dir, "image_dir": self._image_dir,
            "base": self._base,
            "epochs": self._epochs, "lr": self._lr, "batch_size": self._batch, "input_size": self._size,
            "channels": self._channels, "out": self._out, "device": self._device, "continue_run": self._continue,
            "calibrate_model": self._calibrate_model}, usable=_still_there, typed=_typed_name)
        for field in (self._dataset, self._dataset_dir):  # a folder per class names its own images
            field.changed.connect(self._sync_image_dir)
        self._sync_image_dir()
        self.unfinished = None  # the unfinished run the output file holds (napari_prm.train.UnfinishedRun)
        self._run_check = UnfinishedRunCheck()
        self._found = None  # the run the last answer of the check found (`_show_unfinished`)
        self._check_generation = 0  # counts the checks asked for: the answer of an older one is dropped
        self._checking = None  # (out, dataset, images) whose check runs in a worker, for the latest ask
        self._start_pending = None  # start()'s keyword arguments, waiting for that check
        self._shown_of_run: dict = {}  # the fields' values given of its recipe (`_asked_of_run`)
        self._base_of_run = None  # the base model field's (value, text) when the run was found
        self._run_base_shown = False  # whether the field then showed the base the run records
        # (base model, input size field) when the base model's own size is not square (`_show_model_size`)
        self._own_size: tuple | None = None
        self._size_note = ""  # the status line's words on that size
        self._base.changed.connect(self._show_model_size)
        self._show_model_size()  # the base model kept from the last session (before an unfinished run's size)
        for field in (self._dataset, self._dataset_dir, self._image_dir, self._out):
            field.changed.connect(self._find_unfinished_run)
        self._train_button.changed.connect(lambda: self.start())
        self._cancel_button.changed.connect(lambda: self.cancel())
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._cancel = threading.Event()
        self.worker = None
        self.activity: ActivityProgress | None = None
        self.result = None
        self.last_message = ""
        self._dataset_warnings: list[str] = []  # the dataset's (train()'s are in its result), said before training
        self._note: str | None = None  # the built-in model's rows of the classes a new model learns anew
        self._last_epoch = ""  # the last finished epoch's loss and validation mAP, shown until the next
        self._epochs_total = 0  # the run's epochs (a cancelled run with fewer done can be continued)
        self._stop_on_close(self.native)
        self._find_unfinished_run()

    def _base_choices(self, _=None):
        return list(BASE_MODELS.items()) + [(f"fine-tune {Path(p).name}", p) for p in recent_models()]

    def _say(self, message: str, error: bool = False, warning: bool = False) -> None:
        self.last_message = message
        if not self._deleted:
            self._status.value = message
        (show_error if error else show_warning if warning else show_info)(message)

    def _sync_image_dir(self, _=None) -> None:
        self._image_dir.enabled = no_path(self._dataset_dir.value)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _dataset_path(self) -> Path | None:
        return chosen_path(self._dataset_dir, self._dataset)

    def _chosen_dataset(self) -> tuple[Path, Path | None] | None:
        """The dataset chosen and its images folder (None: the dataset's own); None, said, when unusable."""
        try:
            dataset_path = self._dataset_path()
        except FileNotFoundError as error:
            self._say(f"Dataset: {error}; choose a folder per class, a CSV, a COCO JSON or a PASCAL VOC split list "
                      "or year folder.", True)
            return None
        if dataset_path is None:
            self._say("Choose a dataset: a folder per class, a CSV, a COCO JSON or a PASCAL VOC split list or year "
                      "folder.", True)
            return None
        images = self._images_folder(dataset_path)
        if images is not None and not images.is_dir():
            self._say(f"Images folder: {images} is not a folder; choose the folder of the dataset's images, or "
                      "empty the field for the dataset file's own.", True)
            return None
        return dataset_path, images

    def _images_folder(self, dataset_path: Path) -> Path | None:
        """The images folder of a CSV or COCO JSON (None: the file's own; a folder per class holds its own)."""
        return None if dataset_path.is_dir() or no_path(self._image_dir.value) else Path(self._image_dir.value)

    def _run_request(self) -> tuple[Path, Path, Path | None] | None:
        """The output file, the dataset and its images folder to check for an unfinished run (None:
        no output file, no usable dataset, or training or calibration is running)."""
        out = None if no_path(self._out.value) else Path(self._out.value)
        if out is None or not out.is_file() or self.running:
            return None
        try:
            dataset_path = self._dataset_path()
        except (OSError, ValueError):
            return None  # Train says what is wrong with it
        return None if dataset_path is None else (out, dataset_path, self._images_folder(dataset_path))

    @property
    def checking(self) -> bool:
        """Whether the output file is being checked for an unfinished run in a worker thread."""
        return self._checking is not None

    def _find_unfinished_run(self, _=None) -> None:
        """Offer to continue the output file's run when it is an unfinished run of the dataset
        (:func:`napari_prm.train.unfinished_run`): *Continue the unfinished run* shows, with the
        epochs done, and the epochs field takes the run's total.

        The answer is known at once when neither file changed since it was found; otherwise a
        worker thread loads them (the Qt thread loads neither) and the controls follow when
        it returns, unless another check was asked for meanwhile (its answer is then the one shown).
        Its unexpected errors are raised on the Qt thread, as napari shows them.
        """
        request = self._run_request()
        if request is not None and request == self._checking:
            return  # its check is under way
        if self._start_pending is not None:  # a field changed (maybe half typed): not what Train was pressed on
            waited = self._checking[0].name if self._checking is not None else "the output file"
            self._set_pending(None)
            self._say(f"Training did not start: the dataset or the output file changed while {waited} was checked "
                      "for an unfinished run. Press Train again.", warning=True)
        self._check_generation += 1
        self._checking = None
        known, run = (True, None) if request is None else self._run_check.cached(*request)
        if known:
            self._answered(run)
            return
        self.unfinished = None  # unknown until the worker returns
        if not self._deleted:
            self._continue.hide()
        generation = self._check_generation
        # napari closing (or quitting) drops a Train waiting for it, as closing the widget does
        worker = self._job_worker(self._run_check.__call__, *request, _start_thread=False)
        worker.returned.connect(lambda found: self._on_checked(found, generation))
        worker.finished.connect(lambda: self._on_check_finished(generation))
        self._checking = request
        worker.start()

    def _on_checked(self, run, generation: int) -> None:
        """A worker's answer: shown when it is of the latest check asked for, else dropped (also
        while training or calibrating, which checks again when it ends)."""
        if generation != self._check_generation:
            return
        self._checking = None
        if self.running:
            return
        self._answered(run)

    def _answered(self, run) -> None:
        """Show the check's answer ``run`` and start a Train waiting for it, unless the answer is a
        run newly found: its total and recipe then replace what the fields held when Train was
        pressed, and *Continue the unfinished run* was not shown, so Train is to be pressed again."""
        newly = _newly_found(self._found, run)
        self._show_unfinished(run)
        if newly and self._start_pending is not None:
            self._set_pending(None)
            self._say(f"Training did not start: {run.path.name} holds an unfinished run of the dataset "
                      f"({run.epochs_done} of {run.epochs} epochs done), whose settings the fields now show: check "
                      "them and press Train again ('Continue the unfinished run' ticked goes on with it, unticked "
                      "starts a new run in a new file).", warning=True)
            return
        self._start_if_pending()

    def _on_check_finished(self, generation: int) -> None:
        """After the answer, or the error (raised on the Qt thread), of a worker's check."""
        if generation != self._check_generation or self._checking is None:
            return
        self._checking = None  # it failed: Train does not start on an unknown answer
        if self._start_pending is not None:
            self._set_pending(None)
            self._say("Training did not start: checking the output file for an unfinished run failed. Press "
                      "Train again, or choose another output file.", True)

    def _set_pending(self, overrides: dict | None) -> None:
        """Wait with start(**overrides) for the check under way (None: no longer); Cancel drops it."""
        self._start_pending = overrides
        if not self._deleted and not self.running:
            self._cancel_button.enabled = overrides is not None

    def _start_if_pending(self) -> None:
        if self._start_pending is not None and not self._deleted:
            overrides = self._start_pending
            self._set_pending(None)
            self.start(**overrides)

    def _show_unfinished(self, run) -> None:
        """Show the check's answer ``run`` (an `UnfinishedRun`, or None)."""
        before, self._found = self._found, run
        self.unfinished = run
        if self._deleted:
            return
        if run is None:
            self._continue.hide()
            return
        self._continue.text = (f"Continue the unfinished run ({run.epochs_done} of {run.epochs} epochs done; "
                               "its own model and settings)")
        self._continue.show()
        if _newly_found(before, run):
            # a run newly found: its own total and recipe (values the user set since are left alone)
            # first the base (a checkpoint's shows its own input size), then the recipe's fields.
            # The base: the one the run's recipe records (a backbone, a built-in model or a checkpoint
            # file: `recorded_base`), shown; a checkpoint from before records only its backbone: a
            # backbone other than the run's shows the run's. A base chosen since asks for another start
            # than the run's own model (`start`)
            self._run_base_shown = run.base is not None and self._show_base(run.base)
            if (not self._run_base_shown and starts_new_classifier(self._base.value)
                    and run.backbone != self._base.value and run.backbone in BASE_MODELS.values()):
                self._base.value = run.backbone
            self._base_of_run = (self._base.value, self._base.current_choice)
            self._epochs.max = max(self._epochs.max, run.epochs)  # a command-line run may ask for more
            self._epochs.value = run.epochs
            config = run.config
            for field, value in ((self._lr, config.get("lr")), (self._batch, config.get("batch_size")),
                                 (self._size, (config.get("input_size") or [None])[0])):
                if value is not None:
                    field.min, field.max = min(field.min, value), max(field.max, value)
                    field.value = value
            # what the fields show of the run's recipe: the learning rate to the field's decimals, the
            # height of a non-square size (a command-line run's); a field left so asks for the run's
            self._shown_of_run = {"lr": float(self._lr.value), "input_size": (int(self._size.value),) * 2}

    def _show_base(self, base: str) -> bool:
        """Put the base ``base`` (a run's `napari_prm.train.recorded_base`) in the base model field:
        a backbone or built-in model's choice, or a checkpoint file's (added to the recent models
        when it is not among them). False when the field cannot show it (a file that has gone)."""
        def find():
            return next((value for _, value in self._base_choices() if same_base(value, base)), None)

        value = find()
        if value is None and not is_builtin_name(base) and Path(base).is_file():
            remember_model(base)
            self._base.reset_choices()
            value = find()
        if value is None:
            return False
        self._base.value = value
        return True

    def _show_model_size(self, _=None) -> None:
        """Show the chosen base model's input size (a built-in model's, a checkpoint's metadata's) in the
        input size field; a new model (a backbone) leaves the field as it is. A size the field cannot show
        (not square, or each image's own) is said in the status line and the field's tooltip, and a new
        run keeps it unless the field is changed (`start`); an unreadable checkpoint is Train's to report."""
        base = self._base.value
        self._own_size = None
        if not self._deleted:
            self._size.tooltip = SIZE_TOOLTIP
            if self._size_note and self._status.value == self._size_note:
                self._status.value = ""
        self._size_note = ""
        if base is None or starts_new_classifier(base):
            return
        try:
            size = model_input_size(base)
        except (OSError, ValueError):
            return
        if self._deleted:
            return
        if size is not None and size[0] == size[1]:
            self._size.min, self._size.max = min(self._size.min, size[0]), max(self._size.max, size[0])
            self._size.value = size[0]
            return
        own = "each image's own size" if size is None else f"{size[0]}×{size[1]} pixels"
        self._own_size = (base, int(self._size.value))
        self._size_note = (f"The base model {Path(base).name} runs at {own}, which the input size field cannot "
                           "show: a new run trains at its size unless you change the field.")
        self._size.tooltip = f"{SIZE_TOOLTIP}. {self._size_note}"
        self.last_message = self._status.value = self._size_note

    def _asked_of_run(self, options: dict, config: dict) -> dict:
        """The learning rate, batch size and input size ``options`` ask of the unfinished run whose
        recipe is ``config``: one that is what the field was given of the run's (`_find_unfinished_run`;
        a learning rate finer than the field's decimals, a non-square size) asks for the run's own."""
        asked = {name: options[name] for name in ("lr", "batch_size", "input_size")}
        for name, shown in self._shown_of_run.items():
            if name in config and asked[name] == shown:
                asked[name] = config[name]
        return asked

    def start(self, **overrides):
        """Start training; keyword arguments go to :func:`train` over the widget's values.

        When the output file holds an unfinished run of the dataset and *Continue the unfinished
        run* is ticked, the run goes on in that file (``resume``) from its own model; settings that
        differ from the run's are refused, and so is a base model chosen since the run was found.
        Otherwise an existing output file is kept and the run saves to the next free name.

        Returns the training worker; None when refused (said), or when whether the output file
        holds an unfinished run is still being found in a worker thread (`checking`): training
        then starts when it is known (*Cancel* drops it), unless it is an unfinished run newly
        found, whose settings then fill the fields, or the dataset or output field changes
        meanwhile: Train is pressed again (`_answered`, `_find_unfinished_run`).
        """
        if self.running:
            self._say("Training or calibration is already running: wait for it or press Cancel.", True)
            return None
        self._set_pending(None)  # this call takes the place of one waiting for the check
        try:  # read as the command line reads --channels
            channels = parse_channels(self._channels.value, name=f"the {CHANNELS_LABEL!r} field")
        except ValueError as error:
            self._say(f"Training did not start: {error}.", True)
            return None
        chosen = self._chosen_dataset()
        if chosen is None:
            return None
        dataset_path, images = chosen
        self._find_unfinished_run()
        if self.checking:
            self._set_pending(dict(overrides))
            self.last_message = self._status.value = (
                f"Checking whether {Path(self._out.value).name} holds an unfinished run of the dataset; "
                "training starts once that is known.")
            return None
        base = self._base.value
        options = {
            "model": base,  # a backbone name starts from its ImageNet weights, a file fine-tunes
            "out": Path(self._out.value), "epochs": int(self._epochs.value),
            "lr": float(self._lr.value), "batch_size": int(self._batch.value),
            "input_size": (int(self._size.value),) * 2, "device": self._device.value,
            "overwrite": False,  # train() refuses an existing file: a trained model is never replaced
        }
        options.update(overrides)
        resumed = self.unfinished if self._continue.value else None
        if resumed is not None:
            labels = {"lr": "learning rate", "batch_size": "batch size", "input_size": "input size"}
            asked = self._asked_of_run(options, resumed.config)

            def shown(name, value):  # a size by its side, a non-square one (a command-line run's) as H×W
                if name != "input_size":
                    return value
                return value[0] if value[0] == value[1] else "×".join(map(str, value))

            differ = [f"{labels[name]} {shown(name, value)} (the run's: {shown(name, theirs)})"
                      for name, value, theirs in recipe_conflicts(resumed.config, asked)]
            if channels is not None and channels != resumed.channels:  # train() refuses them too
                differ.append(f"image channels {_channel_text(channels)} (the run's: "
                              f"{_channel_text(resumed.channels)})")
            if resumed.base is not None and self._run_base_shown:
                other_base = not same_base(options["model"], resumed.base)  # as train --resume --model compares
            else:
                other_base = self._base_of_run is not None and options["model"] != self._base_of_run[0]
            if other_base:
                # train(resume=) goes on from the run's own model, whatever model= says
                own = f"its own {resumed.backbone} model" if resumed.backbone else "its own model"
                asked_base = self._base.current_choice if options["model"] == self._base.value else options["model"]
                differ.insert(0, f"base model {asked_base!r} (the run goes on from {own}, "
                                 f"shown as {self._base_of_run[1]!r})")
            if differ:
                self._say(f"The unfinished run in {resumed.path.name} goes on with the settings it was started with, "
                          f"but these ask for others: {'; '.join(differ)}. Set them back, or untick 'Continue the "
                          "unfinished run' to start a new run in a new file.", True)
                return None
            options["resume"] = True
            kept = f"Continuing the run in {resumed.path.name} from epoch {resumed.epochs_done}."
        else:
            if "input_size" not in overrides and self._own_size == (options["model"], int(self._size.value)):
                options["input_size"] = None  # the base model's own size, which the field cannot show
            kept = keep_existing_output(self, options)  # an existing output file is kept: next free name
        self.result = None
        self._dataset_warnings = []
        self._note = None
        self._last_epoch = ""
        self._progress.max = self._epochs_total = options["epochs"]
        self._progress.value = 0
        # errored connected at creation: an error is reported here, not re-raised on the Qt thread
        worker = self._job_worker(
            self._train, dataset_path, options, images, resumed, channels, _start_thread=False, _connect={
                "errored": lambda error: self._say(f"Training failed: {type(error).__name__}: {error}", True)})
        worker.returned.connect(self._on_done)
        self._run_started(worker, f"{kept} Loading {dataset_path}…" if kept else f"Loading {dataset_path}…",
                          ActivityProgress(f"Train PRM model: {Path(options['out']).name}", on_cancel=self.cancel))
        return worker

    def _run_started(self, worker, status: str, activity: ActivityProgress) -> None:
        """Start ``worker`` (training or calibrating): the buttons, the status and the activity bar."""
        self._cancel.clear()
        self._closed = False
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._train_button.enabled = self._calibrate_button.enabled = False
        self._cancel_button.enabled = True
        self._continue.hide()
        self._status.value = status
        self.activity = activity
        worker.start()

    def _train(self, dataset_path: Path, options: dict, images: Path | None = None, resumed=None,
                channels: list[int] | None = None):
        """Worker thread: load the dataset (a CSV's or COCO JSON's images from ``images``, when
        given) to read ``channels`` of its images (None: those the unfinished run ``resumed`` or the
        fine-tuned checkpoint records, else the images as they are: as the command line's
        ``--channels``), say how it is split (the run's own split when ``resumed``), and train."""
        dataset = load_dataset(dataset_path, images)
        recorded = resumed.channels if resumed is not None else model_channels(options.get("model"))
        dataset.channels, channel_note = channels_for(channels, recorded)
        if channels is None and recorded is not None:
            channel_note = (f"reading {channels_read_as(recorded)}: those the "
                            f"{'run' if resumed is not None else 'base model'} was trained on (the "
                            f"{CHANNELS_LABEL!r} field picks others)")
        defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
        recipe = {k: options.get(k, defaults[k]) for k in ("val_fraction", "seed")}
        if resumed is not None:
            recipe = {k: resumed.config[k] for k in recipe} | {"split_rule": resumed.split_rule}
        # the dataset's warnings (files left out, likely label typos), as the CLI prints them, and
        # those train() returns about its split, shown before the run, which may take hours
        warnings, what = list(dataset.warnings), None
        try:
            split = training_split(dataset, **recipe)
        except ValueError:
            split = None  # a bad val_fraction: train() says so
        else:
            # calibrate=None: a resumed run's own (recorded), else True
            own = True if resumed is None else resumed.config.get("calibrate", True)
            calibrate = options.get("calibrate")
            what = split.describe(own if calibrate is None else calibrate)
            warnings += split_warnings(dataset, split)
        note = None if resumed is not None else builtin_start_note(dataset.class_names, options.get("model"),
                                                                   option=BUILTIN_CHOICE)
        note = "; ".join(n for n in (note, channel_note) if n) or None
        self._relay.progressed.emit(("split", what, warnings, note, list(dataset.warnings)))
        return train(dataset, progress=self._relay.progressed.emit, cancel=self._cancel, split=split,
                     **options)

    def cancel(self) -> None:
        """Stop after the current batch; the last finished epoch's checkpoint stays. A start
        waiting for the output file's check (`start`) is dropped."""
        if self._start_pending is not None:
            self._set_pending(None)
            self._say("Cancelled: training did not start.")
        if self.worker is not None:
            self._cancel.set()

    def _on_close(self, deleted: bool = False) -> None:
        self._deleted = self._deleted or deleted  # its Qt widgets are gone: _set_pending leaves them be
        if self._start_pending is not None:  # closed while the output file was checked: training does not start
            self._set_pending(None)
            if not self._deleted:
                self.last_message = self._status.value = "Stopped as the widget was closed: training did not start."
        super()._on_close(deleted)

    def _on_progress(self, progress) -> None:
        if self._deleted:
            return
        if isinstance(progress, tuple) and progress[0] == "calibrate":  # ("calibrate", stage, done, total)
            self._show_calibration_progress(*progress[1:])
            return
        if isinstance(progress, tuple):  # ("split", what, warnings, note, dataset's warnings) before the first batch
            _, what, warnings, note, self._dataset_warnings = progress
            self._note = note
            noted = f" Note: {sentence(note)}" if note else ""
            if warnings:
                self._say("Warning: " + sentences(map(for_widget, warnings)) + noted, warning=True)
            elif note:
                self._say(f"{sentence(what)}{noted}" if what else noted.strip())
            elif what:
                self._status.value = f"{what[0].upper()}{what[1:]}…"
            return
        if progress.stage == "calibration":  # after the last epoch: the held-out images
            self._status.value = (f"calibrating the thresholds: image {progress.batch}/"
                                  f"{progress.num_batches}")
            if self.activity is not None:
                self.activity.update("calibrating the thresholds", progress.batch, progress.num_batches)
            return
        done = progress.epoch - 1 + progress.batch / max(progress.num_batches, 1)
        self._progress.max = self._epochs_total = progress.num_epochs
        self._progress.value = min(done, progress.num_epochs)
        if progress.stage == "epoch":
            self._last_epoch = f"epoch {progress.epoch}: loss {progress.loss:.4f}" + (
                "" if progress.val_ap is None else f", {validation_summary(progress.val_ap)}")
            self._status.value = sentence(self._last_epoch)
        else:
            self._status.value = (f"epoch {progress.epoch}/{progress.num_epochs}, batch {progress.batch}/"
                                  f"{progress.num_batches}, loss {progress.loss:.4f}"
                                  + (f" (finished {self._last_epoch})" if self._last_epoch else ""))
        if self.activity is not None:  # counted in batches over all epochs
            self.activity.update(f"epoch {progress.epoch}/{progress.num_epochs}",
                                 (progress.epoch - 1) * progress.num_batches + progress.batch,
                                 progress.num_epochs * progress.num_batches)

    def _on_done(self, result) -> None:
        self.result = result
        why = "Stopped as the widget was closed" if self._closed else "Cancelled"
        if result.checkpoint is None:
            self._say(f"{why} before the first epoch ended: no checkpoint was written.")
            return
        offer_model(self._viewer, result.checkpoint)
        if not self._deleted:
            self._calibrate_model.value = str(result.checkpoint)  # ready for *Calibrate*
        last = result.history[-1]
        what = why if result.cancelled else "Done"
        held_out = f", {result.held_out_images} held out" if result.held_out_images else ", none held out"
        validation = "" if last.val_ap is None else f", {validation_summary(last.val_ap)}"
        calibrated = (f"; thresholds {result.calibration.describe()}" if result.calibration is not None else
                      "; its thresholds are not calibrated (class threshold 0, no peak threshold until "
                      "*Calibrate* below chooses them on the dataset)")
        message = (f"{what}: epoch {last.epoch}, loss {last.loss:.4f}{validation} "
                   f"({plural(result.train_images, 'training image')}{held_out}){calibrated}; saved "
                   f"{result.checkpoint}; it is offered in the Peak Response Maps widget, to run on an image.")
        if result.cancelled and not self._closed and last.epoch < self._epochs_total:
            # as the command line's 'continue with --resume': the checkbox alone did not say it
            message += (f" Press *Train* to continue the run from epoch {last.epoch + 1} of {self._epochs_total} in "
                        f"{result.checkpoint.name} (*Continue the unfinished run*, ticked): nothing trained is lost, "
                        "and its thresholds are calibrated at its end.")
        # shown before the first batch too: the dataset's, and train()'s about its split
        warnings = self._dataset_warnings + list(result.warnings)
        if warnings:
            message += " Warning: " + sentences(map(for_widget, warnings))  # the widget's wording of its advice
        if self._note:
            message += f" Note: {sentence(self._note)}"
        self._say(message, warning=bool(warnings))

    def _on_finished(self) -> None:
        if self.activity is not None:
            self.activity.close()
            self.activity = None
        self.worker = None
        if not self._deleted:
            self._train_button.enabled = self._calibrate_button.enabled = True
            self._cancel_button.enabled = False
            self._run_check.forget()  # the run wrote the checkpoint, maybe within the file time's resolution
            self._find_unfinished_run()  # a cancelled run can go on
