"""The Train widget's unfinished-run check reads the dataset and the checkpoint in a worker thread, and again
only when they change."""

import os
import threading
from pathlib import Path

from napari_prm.data import load_dataset
from napari_prm.model import load_checkpoint, save_model
from napari_prm.train import TRAINING_STATE_KEY, train
from test_widget_train import WAIT_MS, checked, quick_training


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


def csv_and_unfinished_run(tiny_dataset, tmp_path):
    """A CSV of the tiny dataset (its images in ``tiny_dataset``) and an unfinished run of it, run.pt."""
    images = sorted(tiny_dataset.glob("*/*.png"))
    csv = tmp_path / "labels.csv"
    csv.write_text("image,labels\n" + "".join(f"{p.relative_to(tiny_dataset).as_posix()},{p.parent.name}\n"
                                              for p in images))
    out = tmp_path / "run.pt"
    unfinished_checkpoint(load_dataset(csv, tiny_dataset), out)
    return csv, out


def test_a_second_check_of_unchanged_files_reads_neither_and_a_changed_file_is_read(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path):
    """Each change of the dataset, images folder or output field checked for an unfinished run by
    loading the dataset and the checkpoint on the Qt thread (a large COCO JSON stalled napari)."""
    csv, out = csv_and_unfinished_run(tiny_dataset, tmp_path)
    checkpoint = out.read_bytes()

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset.value = csv
    widget._image_dir.value = tiny_dataset
    widget._out.value = out
    checked(widget, qtbot)
    assert widget.unfinished is not None and (widget.unfinished.epochs_done, widget.unfinished.epochs) == (1, 3)

    # neither file can be loaded now, but neither looks changed: the checks read neither again,
    # and answer at once (no worker)
    spoil_keeping_size_and_time(out)
    spoil_keeping_size_and_time(csv)
    widget._out.value = tmp_path / "elsewhere.pt"
    assert widget.unfinished is None and widget._continue.native.isHidden()
    widget._out.value = out
    widget._find_unfinished_run()
    assert not widget.checking and widget.unfinished is not None and not widget._continue.native.isHidden()

    # a checkpoint that changed is read again: it cannot be loaded, no run to continue
    touch(out)
    widget._find_unfinished_run()
    checked(widget, qtbot)
    assert widget.unfinished is None and widget._continue.native.isHidden()
    # the good checkpoint written again is read again, with the dataset as it was read (the spoilt
    # CSV, which looks unchanged, is not read)
    out.write_bytes(checkpoint)
    touch(out)
    widget._find_unfinished_run()
    checked(widget, qtbot)
    assert widget.unfinished is not None and widget.unfinished.epochs_done == 1
    # a dataset file that changed is read again: it cannot be loaded, no run to continue
    touch(csv)
    widget._find_unfinished_run()
    checked(widget, qtbot)
    assert widget.unfinished is None and widget._continue.native.isHidden()


def test_the_qt_thread_loads_no_checkpoint_and_a_check_overtaken_is_dropped(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, monkeypatch):
    """The first check of a checkpoint loaded it on the Qt thread: a 48 MB COCO-trained one froze
    napari for 2 s. It is now loaded in a worker thread; the controls follow when it returns, and
    the answer of a check overtaken by another (the output field changed meanwhile) is dropped."""
    import napari_prm.train as train_module
    from napari_prm.model import load_checkpoint

    csv, first = csv_and_unfinished_run(tiny_dataset, tmp_path)
    second = tmp_path / "second.pt"  # another unfinished run of the dataset: 1 of 4 epochs done
    model, extra = load_checkpoint(first)
    extra[TRAINING_STATE_KEY]["config"]["epochs"] = 4
    save_model(model, second, extra=extra)

    loads = []  # (the file, whether on the Qt thread) of each checkpoint loaded
    gate = threading.Event()  # held shut, the workers' loads wait: the checks are under way

    def load_in_view(path, *args, **kwargs):
        loads.append((Path(path).name, threading.current_thread() is threading.main_thread()))
        if not loads[-1][1]:
            assert gate.wait(WAIT_MS / 1000)
        return load_checkpoint(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "load_checkpoint", load_in_view)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset.value = csv
    widget._image_dir.value = tiny_dataset
    epochs = []
    widget._epochs.changed.connect(epochs.append)

    widget._out.value = first  # the call returns while the worker loads the checkpoint
    assert widget.checking and widget.unfinished is None and widget._continue.native.isHidden()
    assert widget._run_check.cached(first, csv, tiny_dataset) == (False, None)  # nothing known yet
    qtbot.waitUntil(lambda: loads == [("run.pt", False)], timeout=WAIT_MS)
    # Train pressed meanwhile waits for the answer; Cancel drops it
    assert widget.start() is None and widget.last_message.startswith("Checking whether run.pt holds")
    assert widget._cancel_button.enabled
    widget.cancel()
    assert widget.last_message == "Cancelled: training did not start." and not widget._cancel_button.enabled

    widget._out.value = second  # its own check, behind the first
    assert widget.checking and widget._run_check.cached(second, csv, tiny_dataset) == (False, None)
    gate.set()
    checked(widget, qtbot)
    assert loads == [("run.pt", False), ("second.pt", False)]  # none on the Qt thread
    assert widget.unfinished is not None and widget.unfinished.path == second
    assert (widget.unfinished.epochs_done, widget.unfinished.epochs) == (1, 4)
    assert widget._continue.text.startswith("Continue the unfinished run (1 of 4 epochs done")
    assert not widget._continue.native.isHidden()
    assert epochs == [4]  # the first check's answer (3 epochs) was never shown
    assert widget._run_check.cached(second, csv, tiny_dataset) == (True, widget.unfinished)
    assert not widget.running and widget.result is None  # the cancelled start did not start

    # the first file again: loaded again (the check keeps one answer), its own total shown
    widget._out.value = first
    checked(widget, qtbot)
    assert widget.unfinished.path == first and epochs == [4, 3]
    assert [on_qt for _, on_qt in loads] == [False] * 3


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


def test_a_check_that_fails_raises_on_the_qt_thread_and_train_waiting_for_it_does_not_start(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, monkeypatch):
    """An unexpected error of the check reaches the Qt thread, as when the check ran there (napari
    shows it); a Train waiting for the answer does not start on an unknown one, and says so."""
    import napari_prm._widgets.run_check as run_check

    def broken(path, dataset):
        raise RuntimeError(f"cannot read {path.name}")

    monkeypatch.setattr(run_check, "unfinished_run", broken)
    out = tmp_path / "run.pt"
    out.write_bytes(b"a checkpoint")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset_dir.value = tiny_dataset
    with qtbot.capture_exceptions() as raised:
        widget._out.value = out
        assert widget.checking and widget.start() is None
        checked(widget, qtbot)
    assert [(type(error), str(error)) for _, error, _ in raised] == [(RuntimeError, "cannot read run.pt")]
    assert widget.last_message == ("Training did not start: checking the output file for an unfinished run failed. "
                                   "Press Train again, or choose another output file.")
    assert not widget.running and widget.unfinished is None and not widget._cancel_button.enabled


def gate_checkpoint_loads(monkeypatch) -> threading.Event:
    """Make the check's checkpoint loads wait for the gate returned to open."""
    import napari_prm.train as train_module

    gate = threading.Event()

    def gated_load(path, *args, **kwargs):
        assert gate.wait(WAIT_MS / 1000)
        return load_checkpoint(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "load_checkpoint", gated_load)
    return gate


def widget_checking_a_run(make_napari_viewer, tiny_dataset, tmp_path, monkeypatch):
    """A Train widget whose output file (an unfinished run of its dataset, run.pt) is being checked:
    the worker's checkpoint load waits for the gate returned to open. Returns (viewer, widget, gate)."""
    csv, out = csv_and_unfinished_run(tiny_dataset, tmp_path)
    gate = gate_checkpoint_loads(monkeypatch)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    widget._dataset.value = csv
    widget._image_dir.value = tiny_dataset
    widget._device.value = "cpu"
    widget._out.value = out
    assert widget.checking
    return viewer, widget, gate


def test_train_pressed_before_the_check_finds_a_run_does_not_start_it_with_settings_the_user_never_saw(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, monkeypatch):
    """Train pressed while the output file was checked started once the answer came, but an answer
    that found an unfinished run first put the run's total and recipe into the fields: the epochs
    typed meanwhile (5) were replaced by the run's (3) and the run was continued, though the user
    had never seen *Continue the unfinished run*. Training now waits for Train pressed again."""
    viewer, widget, gate = widget_checking_a_run(make_napari_viewer, tiny_dataset, tmp_path, monkeypatch)
    widget._epochs.value = 5
    assert widget.start() is None and widget.last_message.startswith("Checking whether run.pt holds")
    gate.set()
    checked(widget, qtbot)
    assert not widget.running and widget.worker is None
    assert widget.unfinished is not None and not widget._continue.native.isHidden()
    assert widget.last_message == ("Training did not start: run.pt holds an unfinished run of the dataset (1 of 3 "
                                   "epochs done), whose settings the fields now show: check them and press Train again "
                                   "('Continue the unfinished run' ticked goes on with it, unticked starts a new run "
                                   "in a new file).")
    assert not widget._cancel_button.enabled and widget._train_button.enabled


def test_closing_the_widget_while_train_waits_for_the_check_says_training_did_not_start(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, monkeypatch):
    """Taken out of its dock while Train waited for the output file's check, the widget dropped the
    start but still said "training starts once that is known", with *Cancel* enabled for nothing."""
    viewer, widget, gate = widget_checking_a_run(make_napari_viewer, tiny_dataset, tmp_path, monkeypatch)
    assert widget.start() is None and widget._cancel_button.enabled
    viewer.window.remove_dock_widget(widget.native)
    assert widget.last_message == "Stopped as the widget was closed: training did not start."
    assert not widget._cancel_button.enabled
    gate.set()
    checked(widget, qtbot)
    assert not widget.running and widget.last_message == "Stopped as the widget was closed: training did not start."


def test_closing_napari_while_train_waits_for_the_check_says_training_did_not_start(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, monkeypatch):
    """Closing (or quitting) napari asks its workers to quit: the output file's check ignored that (its
    answer then dropped), and the Train waiting for it was dropped without a word once napari deleted the
    widget, whose last message still said that training starts once the check is done. It now stops as
    closing the widget does, saying so."""
    from napari.qt.threading import WorkerBase

    viewer, widget, gate = widget_checking_a_run(make_napari_viewer, tiny_dataset, tmp_path, monkeypatch)
    window = viewer.window._qt_window  # held: its Qt widgets are deleted later, as when napari quits
    assert widget.start() is None and widget._cancel_button.enabled
    try:
        viewer.close()
    finally:
        gate.set()
    WorkerBase.await_workers(WAIT_MS)  # as napari does when it quits (raises if a worker still runs)
    checked(widget, qtbot)
    qtbot.wait(50)
    assert not widget.running and widget.worker is None
    assert widget.last_message == "Stopped as the widget was closed: training did not start."
    del window


def test_train_waiting_for_the_check_does_not_start_on_fields_changed_meanwhile(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, monkeypatch):
    """Train pressed while the output file was checked started at the next answer, that of whatever
    the fields held then: a path being typed into the output field (``other.p``, on its way to
    ``other.pt``) answered at once (no such file) and started training into it. A change of the
    dataset, its images folder or the output file now drops the waiting start, and says so."""
    viewer, widget, gate = widget_checking_a_run(make_napari_viewer, tiny_dataset, tmp_path, monkeypatch)
    assert widget.start() is None and widget.checking
    widget._out.value = tmp_path / "other.p"
    assert not widget.running and widget.worker is None
    assert widget.last_message == ("Training did not start: the dataset or the output file changed while run.pt "
                                   "was checked for an unfinished run. Press Train again.")
    assert not widget._cancel_button.enabled
    gate.set()
    checked(widget, qtbot)
    assert not widget.running and not (tmp_path / "other.p").exists()


def test_calibrate_pressed_while_train_waits_for_the_check_is_refused_and_the_train_still_starts(
        make_napari_viewer, qtbot, prm_config, tiny_dataset, tmp_path, monkeypatch):
    """*Calibrate* pressed while Train waited for the output file's check started calibrating and
    dropped the waiting Train without a word (the status said "Calibrating …"). It is now refused,
    saying that training waits and how to calibrate instead; the Train starts once the answer comes."""
    finished = tmp_path / "finished.pt"  # a finished run of the dataset: nothing to continue
    train(load_dataset(tiny_dataset), backbone="tiny", out=finished, epochs=1, batch_size=2, input_size=(32, 32),
          device="cpu", val_fraction=0.0, calibrate=False)
    gate = gate_checkpoint_loads(monkeypatch)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model")
    quick_training(widget, tiny_dataset, finished)
    assert widget.checking
    assert widget.start() is None and widget.last_message.startswith("Checking whether finished.pt holds")
    widget._calibrate_model.value = finished
    assert widget.calibrate() is None
    assert widget.last_message == (
        "Train was pressed: training starts once it is known whether finished.pt holds an unfinished run of the "
        "dataset. Calibrate after it, or press Cancel to drop the training, then Calibrate.")
    assert not widget.running and widget.checking and widget._cancel_button.enabled
    gate.set()
    checked(widget, qtbot)
    assert widget.running, widget.last_message  # the Train waiting started
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.result is not None and widget.result.checkpoint == tmp_path / "finished-2.pt", widget.last_message
    assert widget.calibrated is None and not (tmp_path / "finished-calibrated.pt").exists()
