"""Choosing which channels of a multichannel image feed the RGB network (``channels=``,
``--channels``), and the checkpoint recording those a model was trained on."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_prm import load_model, predict
from napari_prm.cli import main
from napari_prm.io import as_rgb_float, read_image
from napari_prm.model.checkpoint import checkpoint_metadata

SIZE = 40


def four_channels(seed: int = 0, bright: int = 3000) -> np.ndarray:
    """(4, 40, 40) uint16 counts: noise near 100 everywhere, a bright square in channel 2 only,
    a dimmer one elsewhere in channel 0."""
    rng = np.random.default_rng(seed)
    data = rng.integers(90, 110, size=(4, SIZE, SIZE)).astype(np.uint16)
    data[2, 10:20, 12:22] = bright
    data[0, 25:35, 5:15] = 800
    return data


LAYOUTS = {
    "imagej_cyx": lambda path, data: tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"}),
    "ome_cyx": lambda path, data: tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX"}),
    "unnamed_cyx": lambda path, data: tifffile.imwrite(path, data),
    "yxc": lambda path, data: tifffile.imwrite(path, np.moveaxis(data, 0, -1)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_read_image_picks_channels_of_every_tiff_layout(tmp_path, layout):
    data = four_channels()
    path = tmp_path / f"{layout}.tif"
    LAYOUTS[layout](path, data)
    one = read_image(path, channels=[2])
    assert one.shape == (SIZE, SIZE) and one.dtype == np.uint16
    np.testing.assert_array_equal(one, data[2])  # the objects' channel, as stored
    two = read_image(path, channels=[2, 0])
    assert two.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(two[..., 0], data[2])
    np.testing.assert_array_equal(two[..., 1], data[0])
    assert not two[..., 2].any()  # an empty blue
    three = read_image(path, channels=(3, 2, 1))
    np.testing.assert_array_equal(three, np.moveaxis(data[[3, 2, 1]], 0, -1))
    # each channel stretched by its own percentiles; the empty blue stays 0
    rgb = as_rgb_float(two)
    assert rgb[15, 15, 0] == 1.0 and rgb[30, 10, 1] == 1.0 and rgb[30, 10, 0] < 0.2
    assert not rgb[..., 2].any()


def test_read_image_channels_of_three_unnamed_pages_and_plain_images(tmp_path):
    data = four_channels()[:3]
    tifffile.imwrite(tmp_path / "three.tif", data)  # (3, H, W): tifffile's planar RGB
    np.testing.assert_array_equal(read_image(tmp_path / "three.tif", channels=[2]), data[2])
    rgb = np.moveaxis(data[:3], 0, -1).astype(np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png", channels=[2, 1, 0]), rgb[..., ::-1])
    iio.imwrite(tmp_path / "gray.png", rgb[..., 0])
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png", channels=[0]), rgb[..., 0])
    with pytest.raises(ValueError, match=r"gray\.png: channel 1 of channels 0,1 \(channels=, --channels\) is out "
                                         r"of range: it has 1 channel \(0: a gray image\)"):
        read_image(tmp_path / "gray.png", channels=[0, 1])


def test_unnamed_pages_with_no_axis_shorter_than_the_sides_are_refused_not_read_across(tmp_path):
    """50 unnamed pages of 48×48 (a z-stack saved without ImageJ axes): the shorter of the first and
    last axes was the width, so channels=[0] gave a 50×48 image of each page's first column."""
    data = np.random.default_rng(0).integers(0, 4000, size=(50, 48, 48)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "pages.tif", data)
    with pytest.raises(ValueError, match=r"pages\.tif: channels 0 are picked from the shortest axis .* neither its "
                                         r"first nor its last axis is shorter than its sides \(shape \(50, 48, 48\)\)"):
        read_image(tmp_path / "pages.tif", channels=[0])


def test_read_image_channel_out_of_range_names_the_file_its_channels_and_the_argument(tmp_path):
    path = tmp_path / "cells.tif"
    LAYOUTS["imagej_cyx"](path, four_channels())
    with pytest.raises(ValueError) as error:
        read_image(path, channels=[0, 4])
    assert str(error.value) == (f"cannot read image {path}: channel 4 of channels 0,4 (channels=, --channels) is "
                                "out of range: it has 4 channels (0 to 3)")
    for bad in ([0, 1, 2, 3], [], [-1], ["a"]):
        with pytest.raises(ValueError, match=r"channels: expected 1 to 3 channel indices"):
            read_image(path, channels=bad)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, four_channels(), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"stack\.tif: .*its first axis holds 4 z-planes \(axes ZYX\)"):
        read_image(stack, channels=[0])


def test_old_checkpoint_without_channels_loads_and_predicts_the_channels_given(tmp_path, tiny_checkpoint):
    """A checkpoint saved before channels were recorded has none: it loads, reads files as they
    are, and ``predict(..., channels=)`` picks those given."""
    assert "channels" not in checkpoint_metadata(tiny_checkpoint)["settings"]
    model = load_model(tiny_checkpoint)
    assert "channels" not in model.settings
    path = tmp_path / "cells.tif"
    LAYOUTS["imagej_cyx"](path, four_channels())
    picked = predict(path, model, channels=[2], proposals=None)
    expected = predict(four_channels()[2], model, proposals=None)
    np.testing.assert_allclose(picked.crms, expected.crms, rtol=1e-5, atol=1e-6)
    other = predict(path, model, channels=[0], proposals=None)
    assert not np.allclose(other.crms, expected.crms)
    assert picked.notes == expected.notes  # nothing recorded: no note about channels
    # an array's channels (last axis) are picked only when given
    array = np.moveaxis(four_channels(), 0, -1)
    np.testing.assert_allclose(predict(array, model, channels=[2], proposals=None).crms, expected.crms,
                               rtol=1e-5, atol=1e-6)


def test_channels_of_a_channels_first_array_are_refused_not_picked_from_its_width(tiny_checkpoint):
    """``predict(array, channels=)`` picks from the last axis: a (C, H, W) array had its width
    read as channels, and the network was given a C×H image (4×40 here) without a word."""
    model = load_model(tiny_checkpoint)
    with pytest.raises(ValueError, match=r"shape \(4, 40, 40\), whose first axis looks like its channels: "
                                         r"pass np\.moveaxis\(image, 0, -1\)"):
        predict(four_channels(), model, channels=[0, 2], proposals=None)
    # channels last (and a small RGB image, whose first axis is no shorter than its others) are picked
    assert predict(np.moveaxis(four_channels(), 0, -1), model, channels=[0, 2], proposals=None).crms.size
    assert predict(np.zeros((2, 2, 3), np.uint8), model, channels=[1], proposals=None).crms.size


def test_checkpoint_with_bad_channels_is_refused_naming_the_field(tmp_path, tiny_checkpoint):
    import torch

    content = torch.load(tiny_checkpoint, weights_only=False)
    content["metadata"]["settings"]["channels"] = [0, 1, 2, 3]
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt.*settings\.channels: expected 1 to 3 channel indices"):
        load_model(tmp_path / "bad.pt")


def test_checkpoint_recording_a_channel_twice_loads_without_them_and_says_what_to_do(tmp_path, tiny_checkpoint,
                                                                                   capsys):
    """A checkpoint recording ``channels: [0, 0]`` (``train --channels 0 0`` recorded them so before a repeated
    channel was refused, or edited by hand) was refused on loading, with "give each channel once" advice that
    named no step the user could take: ``predict --channels`` could not override it, nor could the model be
    loaded to save it again. Its weights are sound: it loads as a checkpoint recording no channels, with a
    warning naming the file and what to do; channels given are read, and saving it again records valid ones."""
    import torch

    from napari_prm import save_model

    content = torch.load(tiny_checkpoint, weights_only=False)
    content["metadata"]["settings"]["channels"] = [0, 0]
    torch.save(content, tmp_path / "old.pt")
    said = (r"checkpoint .*old\.pt: settings\.channels records 0,0, channel 0 more than once .*the model is loaded "
            r"without recorded channels: it reads images as they are unless channels are given \(predict --channels, "
            r"channels=\)\. To record the channels to read its images with, save it again")
    with pytest.warns(UserWarning, match=said):
        assert "channels" not in checkpoint_metadata(tmp_path / "old.pt")["settings"]
    with pytest.warns(UserWarning, match=said):
        model = load_model(tmp_path / "old.pt")
    assert "channels" not in model.settings
    # the channels given are read, as for a checkpoint that records none
    path = tmp_path / "cells.tif"
    LAYOUTS["imagej_cyx"](path, four_channels())
    expected = predict(four_channels()[2], model, proposals=None)
    np.testing.assert_allclose(predict(path, model, channels=[2], proposals=None).crms, expected.crms,
                               rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match=said):
        assert main(["predict", str(path), "--model", str(tmp_path / "old.pt"), "--out", str(tmp_path / "out"),
                     "--proposals", "none", "--device", "cpu", "--channels", "2"]) == 0
    assert (tmp_path / "out" / "cells_labels.tif").is_file()
    # saved again with its channels, it loads with them and says nothing
    model.settings["channels"] = [0]
    save_model(model, tmp_path / "old.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(tmp_path / "old.pt").settings["channels"] == [0]
    # a repeated channel is still not saved, and other bad channels are still refused on loading
    model.settings["channels"] = [1, 1]
    with pytest.raises(ValueError, match=r"cannot save model to .*old\.pt: settings\.channels: channel 1 is given "
                                         r"more than once"):
        save_model(model, tmp_path / "old.pt")
    content["metadata"]["settings"]["channels"] = [0, -1]
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: settings\.channels: expected 1 to 3 channel indices"):
        load_model(tmp_path / "bad.pt")


def test_a_model_with_bad_channels_is_not_saved_as_a_checkpoint_no_one_can_load(tmp_path, tiny_checkpoint):
    """Channels set by hand that loading refuses were saved: the file could not be loaded again."""
    from napari_prm import save_model

    model = load_model(tiny_checkpoint)
    model.settings["channels"] = [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"cannot save model to .*bad\.pt: settings\.channels: expected 1 to 3"):
        save_model(model, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    model.settings["channels"] = (np.int64(0), 2)  # numpy integers are saved as plain ones
    assert load_model(save_model(model, tmp_path / "good.pt")).settings["channels"] == [0, 2]


def test_train_records_channels_and_predict_reads_with_them(tmp_path, capsys):
    """``train --channels 2`` writes them into the checkpoint; ``predict`` and `napari_prm.predict`
    then read multichannel images with them by default, and note channels given that differ."""
    root = tmp_path / "data"
    for name, bright in (("bright", 3000), ("dim", 400)):
        (root / name).mkdir(parents=True)
        for seed in range(3):
            LAYOUTS["imagej_cyx"](root / name / f"{seed}.tif", four_channels(seed, bright))
    out = tmp_path / "model.pt"
    assert main(["train", str(root), "--out", str(out), "--backbone", "tiny", "--batch-size", "2",
                 "--input-size", "32", "32", "--val-fraction", "0", "--no-calibrate", "--epochs", "1",
                 "--device", "cpu", "--channels", "2"]) == 0
    assert checkpoint_metadata(out)["settings"]["channels"] == [2]
    model = load_model(out)
    assert model.settings["channels"] == [2]
    image = root / "bright" / "0.tif"
    by_default = predict(image, model, proposals=None)
    expected = predict(read_image(image, channels=[2]), model, proposals=None)
    np.testing.assert_allclose(by_default.crms, expected.crms, rtol=1e-5, atol=1e-6)
    assert not any("channels" in note for note in by_default.notes)
    other = predict(image, model, channels=[0], proposals=None)
    assert not np.allclose(other.crms, expected.crms)
    assert any("channels 0 differ from those the model was trained on (2)" in note for note in other.notes)

    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(out), "--out", str(tmp_path / "a"), "--proposals", "none",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "reading image channel 2 as gray: those the model was trained on (--channels picks others)" in err
    assert main(["predict", str(image), "--model", str(out), "--out", str(tmp_path / "b"), "--proposals", "none",
                 "--device", "cpu", "--channels", "0,1"]) == 0
    assert "note: channels 0,1 differ from those the model was trained on (2)" in capsys.readouterr().err
    # calibrate and evaluate read the dataset with the model's channels too (4 channels are refused without)
    calibrated = tmp_path / "calibrated.pt"
    assert main(["calibrate", str(root), "--model", str(out), "--out", str(calibrated), "--no-tta",
                 "--device", "cpu"]) == 0
    assert checkpoint_metadata(calibrated)["settings"]["channels"] == [2]
    assert main(["evaluate", str(root), "--model", str(calibrated), "--device", "cpu"]) == 0
    assert "reading image channel 2 as gray" in capsys.readouterr().err
    # in Python too, a dataset without channels of its own is read with the model's
    from napari_prm.data import load_dataset
    from napari_prm.evaluate import evaluate_labels

    plain = load_dataset(root)
    assert plain.channels is None and plain.with_model_channels([2]).channels == [2]
    assert load_dataset(root, channels=[0, 1]).with_model_channels([2]).channels == [0, 1]
    assert evaluate_labels(load_model(calibrated), plain)  # 4 channels read as they are were refused
    # without channels the 4-channel TIFF is refused, as before: the model's channels were used
    assert main(["predict", str(image), "--model", "imagenet-voc", "--out", str(tmp_path / "c"),
                 "--proposals", "none", "--device", "cpu"]) == 1


def test_channels_option_takes_spaces_or_commas(tmp_path, capsys):
    from napari_prm.cli import build_parser

    parser = build_parser()
    for words in (["0", "2"], ["0,2"]):
        args = parser.parse_args(["predict", "x.png", "--out", "o", "--channels", *words])
        assert [c for word in args.channels for c in word] == [0, 2]
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "x.png", "--out", "o", "--channels", "a"])
    path = tmp_path / "cells.tif"
    LAYOUTS["imagej_cyx"](path, four_channels())
    assert main(["predict", str(path), "--model", "imagenet-voc", "--out", str(tmp_path / "o"),
                 "--proposals", "none", "--device", "cpu", "--channels", "0", "1", "2", "3"]) == 2
    assert "--channels: expected 1 to 3 channel indices" in capsys.readouterr().err


def test_corrections_are_read_with_the_channels(tmp_path):
    """``refine --masks`` / ``evaluate --masks`` read the corrected images with the dataset's channels:
    a 4-channel TIFF was refused (read as it is)."""
    import json

    from napari_prm.refine.corrections import match_corrections

    image = tmp_path / "cells.tif"
    LAYOUTS["imagej_cyx"](image, four_channels())
    square = [12.0, 10.0, 22.0, 10.0, 22.0, 20.0, 12.0, 20.0]
    coco = {"images": [{"id": 1, "file_name": "cells.tif", "height": SIZE, "width": SIZE}],
            "categories": [{"id": 1, "name": "nucleus"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square], "area": 100.0,
                             "bbox": [12.0, 10.0, 10.0, 10.0], "iscrowd": 0}]}
    (tmp_path / "corrected.json").write_text(json.dumps(coco), encoding="utf-8")
    matched, unmatched = match_corrections(tmp_path / "corrected.json", ["nucleus"], [image], channels=[2])
    assert unmatched == [] and list(matched) == [0]
    np.testing.assert_array_equal(matched[0].image, four_channels()[2])
    assert matched[0].labels.shape == (SIZE, SIZE) and matched[0].labels[15, 15] > 0


def _with_channels(checkpoint, path, channels):
    """A copy of ``checkpoint`` whose settings record ``channels`` (as ``train --channels`` writes)."""
    import torch

    content = torch.load(checkpoint, weights_only=False)
    content["metadata"]["settings"]["channels"] = list(channels)
    torch.save(content, path)
    return path


def test_widget_says_which_channels_the_model_was_trained_on_for_a_gray_layer(
        make_napari_viewer, qtbot, tmp_path, tiny_checkpoint):
    """The widget runs on a layer as it is: for a model whose checkpoint records channels, a run
    on a layer that is not RGB says which channels and how to add them as one RGB layer."""
    from test_widget_predict import open_predict, run_and_wait

    data = four_channels()
    viewer = make_napari_viewer()
    viewer.add_image(data[2], name="channel 2")
    viewer.add_image(np.moveaxis(data[:3], 0, -1), name="three", rgb=True)
    two = _with_channels(tiny_checkpoint, tmp_path / "two.pt", [2, 0])
    widget = open_predict(viewer, qtbot, two)
    widget.proposals.value = None
    widget.image.value = viewer.layers["channel 2"]
    run_and_wait(widget, qtbot)
    assert ("The model was trained on image channels 2,0 as red, green and blue (its checkpoint records them), "
            "but 'channel 2' is not an RGB layer") in widget.last_message
    assert "viewer.add_image(np.stack([c2.data, c0.data, np.zeros_like(c2.data)], axis=-1), rgb=True)" \
        in widget.last_message
    widget.image.value = viewer.layers["three"]  # an RGB layer: how its colours should hold the channels
    run_and_wait(widget, qtbot)
    assert ("The model was trained on image channels 2,0 as red and green with an empty blue (its checkpoint "
            "records them): 'three' is an RGB layer, run on as it is, so its red should be channel 2, its green "
            "channel 0 and its blue empty.") in widget.last_message
    # a model that records one channel: the gray layer should be that channel
    widget.select_model(str(_with_channels(tiny_checkpoint, tmp_path / "one.pt", [2])))
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=60_000)
    widget.image.value = viewer.layers["channel 2"]
    run_and_wait(widget, qtbot)
    assert "trained on image channel 2 alone (read as gray" in widget.last_message
    # a model that records none: no note
    widget.select_model(str(tiny_checkpoint))
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=60_000)
    run_and_wait(widget, qtbot)
    assert "trained on image channel" not in widget.last_message


def test_widget_says_how_a_model_of_chosen_channels_sees_an_rgb_layer(make_napari_viewer, qtbot, tmp_path,
                                                                    tiny_checkpoint):
    """An RGB layer run by a model whose checkpoint records one or two chosen channels got no note, though the
    model saw one channel as gray (the same in red, green and blue), not held in red with an empty green and
    blue as such a layer is, and two as red and green with an empty blue. The run says what the model expects
    and how to make such a layer now; an RGB layer run by a model of channels 0, 1, 2 (RGB as read) gets none."""
    from napari.layers import Image

    from napari_prm._widgets.predict import channels_note
    from test_widget_predict import open_predict, run_and_wait

    data = four_channels()
    red = np.stack([data[2], np.zeros_like(data[2]), np.zeros_like(data[2])], axis=-1)
    viewer = make_napari_viewer()
    viewer.add_image(red, name="channel 2 in red", rgb=True)
    one = _with_channels(tiny_checkpoint, tmp_path / "one.pt", [2])
    widget = open_predict(viewer, qtbot, one)
    widget.proposals.value = None
    widget.image.value = viewer.layers["channel 2 in red"]
    run_and_wait(widget, qtbot)
    assert ("The model was trained on image channel 2 alone, read as gray (the same in red, green and blue; its "
            "checkpoint records it), but 'channel 2 in red' is an RGB layer: it ran on its colours as they are "
            "(a channel held in red with an empty green and blue is seen as red, not as gray). To run it as "
            "trained, add that channel as a gray layer from napari's console, "
            "viewer.add_image(viewer.layers['channel 2 in red'].data[..., 0]) (0: red, 1: green, 2: blue, the "
            "colour that holds it), and run on that.") in widget.last_message
    # the line it gives makes the gray layer the model was trained on, which gets no such note
    viewer.add_image(viewer.layers["channel 2 in red"].data[..., 0], name="gray")
    np.testing.assert_array_equal(viewer.layers["gray"].data, data[2])
    assert channels_note(viewer.layers["gray"], [2]).startswith("The model was trained on image channel 2 alone "
                                                                "(read as gray")
    layer = Image(red, name="rgb", rgb=True)
    three = channels_note(layer, [1, 3, 0])
    assert ("channels 1,3,0 as red, green and blue (its checkpoint records them): 'rgb' is an RGB layer, run on "
            "as it is, so its red, green and blue should be channels 1, 3 and 0. To make such a layer, add those "
            "channels' layers as one RGB layer from napari's console, "
            "viewer.add_image(np.stack([c1.data, c3.data, c0.data], axis=-1), rgb=True), where c1, c3, c0 are the "
            "layers of channels 1,3,0") in three
    assert channels_note(layer, [0, 1, 2]) == "" and channels_note(layer, None) == ""


def test_batch_manifest_records_the_channels_read_so_cli_and_python_runs_know_each_other(
        tmp_path, tiny_checkpoint, capsys):
    """A batch records the channels it read (the model's when none are given): a run that gives
    them and one that leaves them to the model take each other's outputs for their own."""
    import json

    from napari_prm.batch import predict_many

    model = _with_channels(tiny_checkpoint, tmp_path / "two.pt", [2])
    image = tmp_path / "cells.tif"
    LAYOUTS["imagej_cyx"](image, four_channels())
    out = tmp_path / "out"
    settings = {"proposals": "prm", "peak_threshold": 0.0}
    first = predict_many([image], str(model), out, **settings)  # none given: the model's
    assert [r.status for r in first.results] == ["written"]
    assert json.loads((out / "cells.manifest.json").read_text())["info"]["settings"]["channels"] == [2]
    given = predict_many([image], str(model), out, channels=[2], **settings)
    assert [(r.status, r.error) for r in given.results] == [("skipped", "")]
    other = predict_many([image], str(model), out, channels=[0], **settings)
    assert "other settings (channels: [2] -> [0])" in other.results[0].error
    # the command line's outputs (it records the model's channels) are the Python run's
    cli = tmp_path / "cli"
    assert main(["predict", str(image), "--out", str(cli), "--model", str(model), "--device", "cpu",
                 "--proposals", "prm", "--peak-threshold", "0"]) == 0
    capsys.readouterr()
    again = predict_many([image], str(model), cli, **settings)
    assert [(r.status, r.error) for r in again.results] == [("skipped", "")]


def test_channels_written_as_text_are_read_as_the_command_line_reads_them():
    """`parse_channels` reads the Train widget's field with the words of ``--channels``."""
    from napari_prm.io import parse_channels

    assert parse_channels("0 2") == parse_channels("0,2") == parse_channels(" 0, 2 ") == [0, 2]
    assert parse_channels("") is None and parse_channels("  ") is None
    with pytest.raises(ValueError, match=r"^the field: expected channel indices such as 0 2 or 0,2, got '0 x'$"):
        parse_channels("0 x", name="the field")
    with pytest.raises(ValueError, match=r"^the field: expected 1 to 3 channel indices"):
        parse_channels("0 1 2 3", name="the field")


def test_channels_help_says_8_bit_channels_are_not_stretched_as_they_are_not(tmp_path):
    """``--channels`` help said every channel is stretched by its own percentiles; 8-bit ones are read as
    they are (a dim one stays dim), as the refusal's advice and docs/usage.md say."""
    from napari_prm.cli import CHANNELS_HELP

    data = np.zeros((3, SIZE, SIZE), np.uint8)
    data[0, :20], data[1, 20:] = 200, 20  # a bright and a dim 8-bit channel
    tifffile.imwrite(tmp_path / "cells.tif", data, imagej=True, metadata={"axes": "CYX"})
    rgb = as_rgb_float(read_image(tmp_path / "cells.tif", channels=[0, 1]))
    assert rgb[..., 0].max() == pytest.approx(200 / 255) and rgb[..., 1].max() == pytest.approx(20 / 255)
    assert "8-bit ones are read as they are" in CHANNELS_HELP
    assert "each channel is stretched" not in CHANNELS_HELP


def _four_channel_dataset(root):
    """Classes 'bright' and 'dim', three 4-channel ImageJ TIFFs each (read as they are, refused)."""
    for name, bright in (("bright", 3000), ("dim", 400)):
        (root / name).mkdir(parents=True)
        for seed in range(3):
            LAYOUTS["imagej_cyx"](root / name / f"{seed}.tif", four_channels(seed, bright))
    return root


def _tiny_model_with_channels(path, channels):
    """A saved 'tiny' model of the classes of `_four_channel_dataset` recording ``channels``."""
    import torch

    from napari_prm import build_model, save_model

    torch.manual_seed(0)
    model = build_model("tiny", ["bright", "dim"], pretrained=False, input_size=(32, 32))
    model.settings["channels"] = list(channels)
    return save_model(model, path)


TINY_RUN = {"epochs": 1, "batch_size": 2, "val_fraction": 0, "calibrate": False, "device": "cpu"}


def test_python_train_fine_tuning_a_model_with_channels_reads_them_as_the_command_line_does(tmp_path, capsys):
    """``train(dataset, model=CKPT)`` read the images as they are and recorded no channels, where
    ``train --model CKPT`` and the Train widget read (and record) the model's: a fine-tuned
    4-channel model was refused its own images, and one of RGB images lost its channels."""
    from napari_prm.data import load_dataset
    from napari_prm.train import train, training_split

    root = _four_channel_dataset(tmp_path / "data")
    start = _tiny_model_with_channels(tmp_path / "start.pt", [2])
    plain = load_dataset(root)  # no channels of its own: the model's
    result = train(plain, model=start, out=tmp_path / "tuned.pt", **TINY_RUN)
    assert result.model.settings["channels"] == [2] and result.notes == []
    assert checkpoint_metadata(tmp_path / "tuned.pt")["settings"]["channels"] == [2]
    assert plain.channels is None  # the caller's dataset is left as it was
    # a split of the dataset as given (as the Train widget shows one) reads the run's channels too
    split = training_split(plain, 0, 0)
    assert train(plain, model=start, out=tmp_path / "split.pt", split=split,
                 **TINY_RUN).model.settings["channels"] == [2]
    # a resumed run goes on with its own channels (it was refused: 'give the same channels')
    resumed = train(plain, resume=tmp_path / "tuned.pt", out=tmp_path / "tuned.pt", **TINY_RUN | {"epochs": 2})
    assert len(resumed.history) == 2 and resumed.model.settings["channels"] == [2]
    # channels of its own win, with the command line's note
    own = train(load_dataset(root, channels=[0, 1]), model=start, out=tmp_path / "own.pt", **TINY_RUN)
    assert own.model.settings["channels"] == [0, 1]
    assert checkpoint_metadata(tmp_path / "own.pt")["settings"]["channels"] == [0, 1]
    capsys.readouterr()
    assert main(["train", str(root), "--model", str(start), "--out", str(tmp_path / "cli.pt"), "--batch-size", "2",
                 "--val-fraction", "0", "--no-calibrate", "--epochs", "1", "--device", "cpu",
                 "--channels", "0,1"]) == 0
    assert own.notes == ["channels 0,1 differ from those the model was trained on (2): its results may not mean "
                         "what they did in training"]
    assert f"note: {own.notes[0]}" in capsys.readouterr().err
    assert checkpoint_metadata(tmp_path / "cli.pt")["settings"]["channels"] == [0, 1]


def test_refine_records_the_channels_its_head_learnt_from(tmp_path, capsys):
    """``refine --channels 0`` of a model trained on channel 2 learnt from channel 0 and recorded 2,
    which predict then read: the refined checkpoint records those it learnt from, as train does."""
    from napari_prm.data import load_dataset
    from napari_prm.refine import refine

    root = _four_channel_dataset(tmp_path / "data")
    start = _tiny_model_with_channels(tmp_path / "start.pt", [2])
    model = load_model(start)
    loose = {"class_threshold": 0, "peak_threshold": 0}
    options = {"epochs": 1, "device": "cpu", "predict_options": loose}
    result = refine(model, dataset=load_dataset(root, channels=[0]), out=tmp_path / "r0.pt", **options)
    assert result.model.settings["channels"] == [0] and model.settings["channels"] == [2]
    assert checkpoint_metadata(tmp_path / "r0.pt")["settings"]["channels"] == [0]
    assert result.notes == ["channels 0 differ from those the model was trained on (2): its results may not mean "
                            "what they did in training"]
    # a dataset without channels of its own is read with the model's, which stay recorded
    kept = refine(model, dataset=load_dataset(root), **options)
    assert kept.model.settings["channels"] == [2] and kept.notes == []
    # corrections alone: channels= says which they were read with
    from napari_prm.refine import Correction

    labels = np.ones((SIZE, SIZE), np.int32)  # one instance of "dim", on which every peak of the random model lies
    correction = Correction(read_image(root / "bright" / "0.tif", channels=[0]), labels, {1: 1}, "bright 0")
    alone = refine(model, corrections=[correction], channels=[0], **options)
    assert alone.model.settings["channels"] == [0]
    with pytest.raises(ValueError, match=r"^channels \[1\] and the dataset's channels \[0\] differ"):
        refine(model, dataset=load_dataset(root, channels=[0]), channels=[1], **options)
    # the command line: recorded, and a resumed run goes on with its own channels
    capsys.readouterr()
    cli = ["refine", str(root), "--model", str(start), "--out", str(tmp_path / "cli.pt"), "--device", "cpu",
           "--class-threshold", "0", "--peak-threshold", "0"]
    assert main([*cli, "--epochs", "1", "--channels", "0"]) == 0
    assert "note: channels 0 differ from those the model was trained on (2)" in capsys.readouterr().err
    assert checkpoint_metadata(tmp_path / "cli.pt")["settings"]["channels"] == [0]
    assert main([*cli, "--epochs", "2", "--resume"]) == 0
    assert checkpoint_metadata(tmp_path / "cli.pt")["settings"]["channels"] == [0]
    assert main([*cli, "--epochs", "3", "--resume", "--channels", "1"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_refine_caches_the_samples_of_each_channels_apart(tmp_path):
    """The samples cache was keyed by the file and the model, not the channels read: a run on
    channel 1 after one on channel 0 took channel 0's features and pseudo-labels."""
    from napari_prm.data import load_dataset
    from napari_prm.refine import refine

    root = _four_channel_dataset(tmp_path / "data")
    model = load_model(_tiny_model_with_channels(tmp_path / "start.pt", [2]))
    options = {"epochs": 1, "device": "cpu", "predict_options": {"class_threshold": 0, "peak_threshold": 0},
               "cache_dir": tmp_path / "cache"}
    refine(model, dataset=load_dataset(root, channels=[0]), **options)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 6
    refine(model, dataset=load_dataset(root, channels=[1]), **options)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 12
    refine(model, dataset=load_dataset(root, channels=[0]), **options)  # read back
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 12


def test_a_repeated_channel_is_refused_naming_the_argument_and_the_value(tmp_path, capsys):
    """``--channels 0 0`` read one channel as red and green (a yellow image) without a word."""
    from napari_prm.data import load_dataset
    from napari_prm.io import parse_channels

    path = tmp_path / "cells.tif"
    LAYOUTS["imagej_cyx"](path, four_channels())
    with pytest.raises(ValueError, match=r"^channels: channel 0 is given more than once in 0,0: give each channel "
                                         r"once"):
        read_image(path, channels=[0, 0])
    with pytest.raises(ValueError, match=r"^channels: channel 2 is given more than once in 2,1,2"):
        load_dataset(_four_channel_dataset(tmp_path / "data"), channels=[2, 1, 2])
    with pytest.raises(ValueError, match=r"^the field: channel 1 is given more than once in 1,1"):
        parse_channels("1, 1", name="the field")
    assert read_image(path, channels=[2, 0]).shape == (SIZE, SIZE, 3)  # distinct ones are read
    assert main(["predict", str(path), "--model", "imagenet-voc", "--out", str(tmp_path / "o"),
                 "--proposals", "none", "--device", "cpu", "--channels", "0", "0"]) == 2
    assert "--channels: channel 0 is given more than once in 0,0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_demo_channels_without_an_image_are_refused_not_ignored(tmp_path, capsys):
    """``demo --channels 0`` without IMAGE ran the built-in cat as it is, the option ignored."""
    assert main(["demo", "--channels", "0", "--out", str(tmp_path / "demo"), "--device", "cpu", "--no-view"]) == 2
    err = capsys.readouterr().err
    assert "--channels 0: picks channels of an image file, and none is given: give IMAGE" in err
    assert not (tmp_path / "demo").exists()
    path = tmp_path / "cells.tif"  # with IMAGE they are read
    LAYOUTS["imagej_cyx"](path, four_channels())
    assert main(["demo", str(path), "--channels", "2", "--out", str(tmp_path / "demo"), "--device", "cpu",
                 "--no-view", "--proposals", "none"]) == 0


def test_learn_from_corrections_reads_a_masks_folder_with_the_models_channels(make_napari_viewer, qtbot, tmp_path):
    """The widget read a masks folder's images as they are, where ``refine --masks`` reads them with
    the model's channels: a 4-channel TIFF corrected for a model trained on channel 2 was refused."""
    from napari_prm import io
    from test_widget_refine import choose, learn, open_widgets

    folder = tmp_path / "corrections"
    folder.mkdir()
    LAYOUTS["imagej_cyx"](folder / "cells.tif", four_channels())
    labels = np.ones((SIZE, SIZE), np.int32)  # one instance of "dim", on which every peak of the random model lies
    io.write_label_image(folder / "cells_labels.tif", labels)
    io.write_instances_csv(folder / "cells_instances.csv", labels, {
        "label": np.array([1]), "class_index": np.array([1]), "class_name": np.array(["dim"])})
    start = _tiny_model_with_channels(tmp_path / "start.pt", [2])
    viewer = make_napari_viewer()
    _, widget = open_widgets(viewer, qtbot, start)
    choose(widget, [], tmp_path / "refined.pt")
    widget._masks_dir.value = folder
    learn(widget, qtbot)
    assert widget.result.samples == 1
    assert checkpoint_metadata(tmp_path / "refined.pt")["settings"]["channels"] == [2]


def test_channels_read_as_says_one_channel_is_read_as_gray():
    """``predict`` of a model trained on ``--channels 1`` said "reading image channels 1 as red, green
    and blue", though one channel is read as gray: one wording, as read_image lays them out."""
    from napari_prm.io import channels_read_as, pick_channels

    image = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30)], axis=-1)
    gray = pick_channels(image, [1])
    assert gray.ndim == 2 and (gray == 20).all()  # one channel: a gray image
    assert channels_read_as([1]) == "image channel 1 as gray"
    two = pick_channels(image, [2, 0])
    assert two[..., :2].tolist() == [[[30, 10]] * 2] * 2 and (two[..., 2] == 0).all()
    assert channels_read_as([2, 0]) == "image channels 2,0 as red and green (an empty blue)"
    assert channels_read_as((0, 1, 2)) == "image channels 0,1,2 as red, green and blue"
    with pytest.raises(ValueError, match="channel 1 is given more than once"):
        channels_read_as([1, 1])
