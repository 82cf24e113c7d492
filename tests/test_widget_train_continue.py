"""The Train widget continues an unfinished run (cancelled, or napari closed mid-run) in its own file."""

import numpy as np
import torch
from qtpy.QtCore import Qt
from skimage import data, transform
from skimage import io as skio

from napari_prm.model import load_checkpoint
from napari_prm.train import TRAINING_STATE_KEY
from test_widget_train import WAIT_MS, checked, quick_training


def stop_after_epochs(widget, epochs: int):
    """Cancel the widget's run once ``epochs`` epochs are saved, from the worker thread itself (a
    direct connection), so that it stops exactly there; returns the disconnecting function."""
    def stop(progress):
        if getattr(progress, "stage", "") == "epoch" and progress.epoch >= epochs:
            widget._cancel.set()

    widget._relay.progressed.connect(stop, Qt.ConnectionType.DirectConnection)
    return lambda: widget._relay.progressed.disconnect(stop)


def run_to_end(widget, qtbot, **overrides):
    assert widget.start(**overrides) is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    checked(widget, qtbot)  # the output file is checked again for an unfinished run
    return widget.result


def saved_epoch(path) -> int:
    return load_checkpoint(path)[1][TRAINING_STATE_KEY]["epoch"]


def test_a_cancelled_run_is_continued_in_its_own_file(make_napari_viewer, qtbot, prm_config, tiny_dataset,
                                                      tmp_path):
    """After Cancel, pressing Train started a new run in trained-2.pt. The widget now offers to continue
    the run (with its epochs done), goes on in the same file, and ends where an uninterrupted run
    ends; a finished run is not offered, and a new run goes to a new file."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    out = tmp_path / "trained.pt"
    quick_training(widget, tiny_dataset, out, batch=1)
    widget._epochs.value = 4
    assert widget.unfinished is None and widget._continue.native.isHidden()
    undo = stop_after_epochs(widget, 2)
    result = run_to_end(widget, qtbot)
    undo()
    assert result.cancelled and [r.epoch for r in result.history] == [1, 2] and saved_epoch(out) == 2
    assert "*Calibrate* below chooses them" in widget.last_message  # the run stopped before calibrating
    # and how to go on, as the command line's 'continue with --resume' (the message did not say it)
    assert ("Press *Train* to continue the run from epoch 3 of 4 in trained.pt (*Continue the unfinished run*, "
            "ticked): nothing trained is lost, and its thresholds are calibrated at its end.") in widget.last_message

    # offered: the epochs done and the run's total
    assert widget.unfinished is not None and (widget.unfinished.epochs_done, widget.unfinished.epochs) == (2, 4)
    assert not widget._continue.native.isHidden() and widget._continue.value
    assert widget._continue.text.startswith("Continue the unfinished run (2 of 4 epochs done")
    widget._epochs.value = 1
    widget._out.value = tmp_path / "elsewhere.pt"
    assert widget.unfinished is None and widget._continue.native.isHidden()
    widget._out.value = out
    assert widget._epochs.value == 4  # the run's total again

    shown = []
    widget._relay.progressed.connect(lambda p: shown.append(widget._status.value) if isinstance(p, tuple) else None)
    result = run_to_end(widget, qtbot)
    assert not result.cancelled and result.checkpoint == out, widget.last_message
    assert [r.epoch for r in result.history] == [1, 2, 3, 4] and saved_epoch(out) == 4
    assert result.calibration is not None and not (tmp_path / "trained-2.pt").exists()
    assert widget.last_message.startswith("Done: epoch 4,")

    # it ends as a run that was never stopped (the CPU repeats a run exactly)
    straight = tmp_path / "straight.pt"
    widget._out.value = straight
    run_to_end(widget, qtbot)
    resumed, uninterrupted = load_checkpoint(out)[0], load_checkpoint(straight)[0]
    for name, value in uninterrupted.network.state_dict().items():
        assert torch.allclose(resumed.network.state_dict()[name], value, atol=1e-6), name

    # a finished run is not offered: a new run goes to a new file
    widget._out.value = out
    checked(widget, qtbot)
    assert widget.unfinished is None and widget._continue.native.isHidden()
    before = out.read_bytes()
    result = run_to_end(widget, qtbot, epochs=1)
    assert result.checkpoint == tmp_path / "trained-2.pt" and out.read_bytes() == before


def test_continuing_with_other_settings_is_refused(make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path):
    """A continued run goes on with its own recipe (train() ignores another): settings that ask for
    another are refused, naming them; unticked, a new run starts in a new file and the unfinished
    one is kept. Fewer epochs than done are refused with the core's message."""
    from napari_prm._widgets.settings import load_settings
    from napari_prm._widgets.train import TrainSettings

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    out = tmp_path / "trained.pt"
    quick_training(widget, tiny_dataset, out, batch=1)
    widget._epochs.value = 5
    undo = stop_after_epochs(widget, 2)
    run_to_end(widget, qtbot)
    undo()
    assert widget.unfinished is not None
    kept = out.read_bytes()
    # napari opened again (the choices kept): the run is offered there too
    _, again = make_napari_viewer().window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    checked(again, qtbot)
    assert again.unfinished is not None and again.unfinished.epochs_done == 2 and again._epochs.value == 5
    assert not again._continue.native.isHidden()

    widget._lr.value = 0.02
    widget._size.value = 64
    assert widget.start() is None
    assert widget.last_message == (
        "The unfinished run in trained.pt goes on with the settings it was started with, but these ask for "
        "others: learning rate 0.02 (the run's: 0.01); input size 64 (the run's: 32). Set them back, or untick "
        "'Continue the unfinished run' to start a new run in a new file.")
    widget._lr.value, widget._size.value = 0.01, 32
    widget._epochs.value = 1
    result = run_to_end(widget, qtbot)
    assert result is None and widget.last_message == (
        f"Training failed: ValueError: epochs 1 is fewer than the 2 epochs the run in {out} has finished: epochs "
        "is the new total (2 or more)")
    assert out.read_bytes() == kept and widget._epochs.value == 1  # the total the user set is left

    # another dataset (other classes) is not this run's
    other = tmp_path / "other"
    (other / "rocket").mkdir(parents=True)
    (other / "cat").mkdir(parents=True)
    for folder, image in ((other / "rocket", data.rocket()), (other / "cat", data.chelsea())):
        small = (transform.resize(image, (48, 48), anti_aliasing=True) * 255).astype(np.uint8)
        skio.imsave(folder / "0.png", small, check_contrast=False)
    widget._dataset_dir.value = other
    checked(widget, qtbot)
    assert widget.unfinished is None and widget._continue.native.isHidden()
    widget._dataset_dir.value = tiny_dataset
    checked(widget, qtbot)
    assert widget.unfinished is not None

    widget._continue.value = False
    assert load_settings("train", TrainSettings).continue_run is False  # kept for the next session
    result = run_to_end(widget, qtbot, epochs=1)
    assert result.checkpoint == tmp_path / "trained-2.pt" and out.read_bytes() == kept


def test_a_command_line_run_with_settings_the_fields_cannot_hold_is_continued(make_napari_viewer, qtbot, prm_config,
                                                                              tiny_dataset, tmp_path):
    """A run started by ``napari-prm train --lr 0.0005 --input-size 32 48`` (a learning rate finer
    than the field's 3 decimals, a size that is not square) was refused for ever: the fields could
    not be set back to it. Found, the run's settings fill the fields, and the field's rounding of
    the run's own is the run's."""
    import threading

    from napari_prm.data import load_dataset
    from napari_prm.train import train

    out = tmp_path / "cli.pt"
    stop = threading.Event()
    train(load_dataset(tiny_dataset), model="tiny", out=out, epochs=3, lr=0.0005, batch_size=1,
          input_size=(32, 48), device="cpu", cancel=stop,
          progress=lambda p: stop.set() if getattr(p, "stage", "") == "epoch" else None)
    assert saved_epoch(out) == 1

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, out, batch=4)
    checked(widget, qtbot)
    assert widget.unfinished is not None and widget.unfinished.epochs_done == 1
    assert (widget._epochs.value, widget._batch.value, widget._size.value) == (3, 1, 32)
    widget._size.value = 64
    assert widget.start() is None and "input size 64 (the run's: 32×48)" in widget.last_message
    widget._size.value = 32
    result = run_to_end(widget, qtbot)
    assert result is not None and result.checkpoint == out, widget.last_message
    assert [r.epoch for r in result.history] == [1, 2, 3] and saved_epoch(out) == 3
    config = load_checkpoint(out)[1][TRAINING_STATE_KEY]["config"]
    assert (config["lr"], list(config["input_size"])) == (0.0005, [32, 48])


def test_continuing_from_another_base_model_is_refused(make_napari_viewer, qtbot, prm_config, tiny_dataset,
                                                       tmp_path):
    """A continued run goes on from its own model (``train(resume=)`` takes no ``model=``): a base
    model chosen since the run was found was ignored without a word; it is refused, naming both.
    Found, a run whose backbone is not the field's shows its own there."""
    import threading

    from napari_prm.data import load_dataset
    from napari_prm.train import train

    out = tmp_path / "run.pt"
    stop = threading.Event()
    train(load_dataset(tiny_dataset), model="tiny", out=out, epochs=2, batch_size=1, input_size=(32, 32),
          device="cpu", cancel=stop, progress=lambda p: stop.set() if getattr(p, "stage", "") == "epoch" else None)
    assert saved_epoch(out) == 1
    kept = out.read_bytes()

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "none-yet.pt", batch=1)
    widget._base.value = "efficientnet_lite0"
    widget._out.value = out
    checked(widget, qtbot)
    assert widget.unfinished is not None and widget.unfinished.backbone == "tiny"
    assert widget._base.value == "tiny"  # the run's backbone, as its learning rate and sizes are shown

    widget._base.value = "resnet50"
    assert widget.start() is None
    assert widget.last_message == (
        "The unfinished run in run.pt goes on with the settings it was started with, but these ask for others: "
        "base model 'ResNet-50 (ImageNet weights, downloaded)' (the run goes on from its own tiny model, shown as "
        "'tiny (random, for trying things out)'). Set them back, or untick 'Continue the unfinished run' to start "
        "a new run in a new file.")
    assert out.read_bytes() == kept

    widget._base.value = "tiny"
    result = run_to_end(widget, qtbot)
    assert result is not None and result.checkpoint == out, widget.last_message
    assert [r.epoch for r in result.history] == [1, 2] and saved_epoch(out) == 2


def test_a_run_found_shows_the_base_its_checkpoint_records(make_napari_viewer, qtbot, prm_config, tiny_dataset,
                                                           tmp_path):
    """A run fine-tuned from a checkpoint file records it as its base (``config["base"]``), as
    ``train --resume`` compares it with --model; the widget showed the field's own choice ('tiny',
    the run's backbone) and went on as if that were the run's start. Found, the run's base file is
    shown (added to the choices); another base chosen then is refused (`same_base`), naming it."""
    import threading

    from napari_prm.data import load_dataset
    from napari_prm.model import build_model, save_model
    from napari_prm.train import train

    base = save_model(build_model("tiny", ["cat", "cup"], pretrained=False, input_size=(32, 32)),
                      tmp_path / "base.pt")
    out = tmp_path / "run.pt"
    stop = threading.Event()
    train(load_dataset(tiny_dataset), model=base, out=out, epochs=2, batch_size=1, device="cpu", cancel=stop,
          progress=lambda p: stop.set() if getattr(p, "stage", "") == "epoch" else None)
    assert saved_epoch(out) == 1

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, tmp_path / "none-yet.pt", batch=1)
    widget._out.value = out
    checked(widget, qtbot)
    assert widget.unfinished is not None
    assert widget._base.value == str(base.resolve()) and widget._base.current_choice == "fine-tune base.pt"
    assert widget.unfinished.base == str(base)
    assert widget._size.value == 32  # the run's size, not changed by showing its base

    widget._base.value = "tiny"  # the run's backbone, but not its start
    assert widget.start() is None
    assert widget.last_message.startswith(
        "The unfinished run in run.pt goes on with the settings it was started with, but these ask for others: "
        "base model 'tiny (random, for trying things out)' (the run goes on from its own tiny model, shown as "
        "'fine-tune base.pt')")
    widget._base.value = str(base.resolve())
    result = run_to_end(widget, qtbot)
    assert result is not None and result.checkpoint == out, widget.last_message
    assert [r.epoch for r in result.history] == [1, 2] and saved_epoch(out) == 2
