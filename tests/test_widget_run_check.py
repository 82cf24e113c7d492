"""The Train widget's unfinished-run check reads the dataset and the checkpoint again only when they change."""

import os

from napari_prm.data import load_dataset
from napari_prm.model import load_checkpoint, save_model
from napari_prm.train import TRAINING_STATE_KEY, train


def unfinished_checkpoint(dataset, out):
    """A 1-epoch tiny run of ``dataset`` saved in ``out`` as a 3-epoch run cancelled after its first."""
    train(dataset, backbone="tiny", out=out, epochs=1, batch_size=2, input_size=(32, 32), device="cpu",
          val_fraction=0.0, calibrate=False)
    model, extra = load_checkpoint(out)
    extra[TRAINING_STATE_KEY]["config"]["epochs"] = 3
    save_model(model, out, extra=extra)


def spoil_keeping_size_and_time(path):
    """Overwrite ``path`` with bytes nothing can load, of the same size, and put its times back:
    only a check that reads the file again sees the change."""
    status = path.stat()
    path.write_bytes(b"x" * status.st_size)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def touch(path):
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 2_000_000_000))


def test_a_second_check_of_unchanged_files_reads_neither_and_a_changed_file_is_read(
        make_napari_viewer, prm_config, tiny_dataset, tmp_path):
    """Each change of the dataset, images folder or output field checked for an unfinished run by
    loading the dataset and the checkpoint on the Qt thread (a large COCO JSON stalled napari)."""
    images = sorted(tiny_dataset.glob("*/*.png"))
    csv = tmp_path / "labels.csv"
    csv.write_text("image,labels\n" + "".join(f"{p.relative_to(tiny_dataset).as_posix()},{p.parent.name}\n"
                                              for p in images))
    out = tmp_path / "run.pt"
    unfinished_checkpoint(load_dataset(csv, tiny_dataset), out)
    checkpoint = out.read_bytes()

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset.value = csv
    widget._image_dir.value = tiny_dataset
    widget._out.value = out
    assert widget.unfinished is not None and (widget.unfinished.epochs_done, widget.unfinished.epochs) == (1, 3)

    # neither file can be loaded now, but neither looks changed: the checks read neither again
    spoil_keeping_size_and_time(out)
    spoil_keeping_size_and_time(csv)
    widget._out.value = tmp_path / "elsewhere.pt"
    assert widget.unfinished is None and widget._continue.native.isHidden()
    widget._out.value = out
    widget._find_unfinished_run()
    assert widget.unfinished is not None and not widget._continue.native.isHidden()

    # a checkpoint that changed is read again: it cannot be loaded, no run to continue
    touch(out)
    widget._find_unfinished_run()
    assert widget.unfinished is None and widget._continue.native.isHidden()
    # the good checkpoint written again is read again, with the dataset as it was read (the spoilt
    # CSV, which looks unchanged, is not read)
    out.write_bytes(checkpoint)
    touch(out)
    widget._find_unfinished_run()
    assert widget.unfinished is not None and widget.unfinished.epochs_done == 1
    # a dataset file that changed is read again: it cannot be loaded, no run to continue
    touch(csv)
    widget._find_unfinished_run()
    assert widget.unfinished is None and widget._continue.native.isHidden()


def test_a_folder_per_class_changes_with_its_class_folders(tiny_dataset):
    """A folder per class is read again when an image is added to a class folder (its time
    changes), not on each check; a CSV's images folder only by its own entries."""
    import shutil

    from napari_prm._widgets.run_check import file_signature

    before = file_signature(tiny_dataset, class_folders=True)
    assert before == file_signature(tiny_dataset, class_folders=True)
    shutil.copy(tiny_dataset / "cat" / "0.png", tiny_dataset / "cat" / "2.png")
    touch(tiny_dataset / "cat")  # the copy may land within the folder time's resolution
    assert file_signature(tiny_dataset, class_folders=True) != before
    assert file_signature(tiny_dataset) == file_signature(tiny_dataset)
    assert file_signature(tiny_dataset / "missing") is None
