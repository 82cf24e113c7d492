"""The Train widget's image channels field: multichannel (fluorescence) images trained on
chosen channels, recorded in the checkpoint, as the command line's ``--channels``."""

import numpy as np
import tifffile

from napari_prm import load_model
from test_widget_train import WAIT_MS, checked, quick_training
from test_widget_train_continue import run_to_end, stop_after_epochs


def four_channel_dataset(root):
    """A folder per class of two 4-channel (C, Y, X) 16-bit TIFFs each: the class shows in channel 2
    (a bright square or a bright disc), channels 0, 1 and 3 are noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    shapes = {"square": (abs(yy - 24) < 10) & (abs(xx - 24) < 10), "disc": (yy - 24) ** 2 + (xx - 24) ** 2 < 120}
    for name, shape in shapes.items():
        (root / name).mkdir(parents=True)
        for number in range(2):
            image = rng.integers(0, 500, (4, 48, 48)).astype(np.uint16)
            image[2][shape] += 3000
            tifffile.imwrite(root / name / f"{number}.tif", image)
    return root


def test_training_on_a_chosen_channel_records_it(make_napari_viewer, qtbot, prm_config, tmp_path):
    """The field had no way to be given: the widget trained on the images as read, and its
    checkpoints recorded no channels. Channel 2 is trained on and recorded; kept for the next
    session; a checkpoint fine-tuned with the field empty reads (and records) the channels of
    the base model, as the command line does."""
    from napari_prm._widgets.models import remember_model
    from napari_prm._widgets.settings import load_settings
    from napari_prm._widgets.train import TrainSettings

    dataset = four_channel_dataset(tmp_path / "cells")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    out = tmp_path / "cells.pt"
    quick_training(widget, dataset, out)
    widget._channels.value = "2"
    checked(widget, qtbot)
    assert widget.start() is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert load_model(out).settings["channels"] == [2]
    assert load_settings("train", TrainSettings).channels == "2"

    remember_model(out)
    widget._base.reset_choices()
    widget._base.value = str(out.resolve())
    widget._channels.value = ""
    tuned = tmp_path / "tuned.pt"
    widget._out.value = tuned
    checked(widget, qtbot)
    assert widget.start() is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and not widget.result.cancelled, widget.last_message
    assert load_model(tuned).settings["channels"] == [2]
    assert ("Note: Reading image channel 2 as gray: those the base model was trained on (the "
            "'image channels' field picks others)") in widget.last_message


def test_an_invalid_channels_entry_is_named_and_starts_nothing(make_napari_viewer, qtbot, prm_config, tmp_path):
    dataset = four_channel_dataset(tmp_path / "cells")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    out = tmp_path / "cells.pt"
    quick_training(widget, dataset, out)
    checked(widget, qtbot)
    for text, why in (("red", "expected channel indices such as 0 2 or 0,2, got 'red'"),
                      ("0 1 2 3", "expected 1 to 3 channel indices from 0 (the network's red, green and blue; "
                                  "0,2 picks the 1st and 3rd channels), got [0, 1, 2, 3]")):
        widget._channels.value = text
        assert widget.start() is None
        assert widget.last_message == f"Training did not start: the 'image channels' field: {why}."
        assert widget.worker is None and not widget.running and not out.exists()


def test_continuing_a_run_on_other_channels_is_refused(make_napari_viewer, qtbot, prm_config, tmp_path):
    """An unfinished run goes on with its own channels (the field left empty reads them); others are
    refused as the other settings of its recipe are, naming the run's."""
    dataset = four_channel_dataset(tmp_path / "cells")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    out = tmp_path / "cells.pt"
    quick_training(widget, dataset, out, batch=1)
    widget._channels.value = "0,2"
    widget._epochs.value = 3
    undo = stop_after_epochs(widget, 1)
    run_to_end(widget, qtbot)
    undo()
    assert widget.unfinished is not None and widget.unfinished.channels == [0, 2]

    widget._channels.value = "2"
    assert widget.start() is None
    assert widget.last_message == (
        "The unfinished run in cells.pt goes on with the settings it was started with, but these ask for "
        "others: image channels 2 (the run's: 0,2). Set them back, or untick 'Continue the unfinished run' to "
        "start a new run in a new file.")
    widget._channels.value = ""
    result = run_to_end(widget, qtbot)
    assert result is not None and not result.cancelled, widget.last_message
    assert [record.epoch for record in result.history] == [1, 2, 3]
    assert load_model(out).settings["channels"] == [0, 2]
