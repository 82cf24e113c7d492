"""Take the screenshots of docs/tutorial.md by doing the tutorial in napari, as a user would.

"Label a folder of images with napari-prm": a folder of scikit-image's sample photos is
opened image by image; the "Peak Response Maps" widget runs the built-in model, its
correction tools fix the instances, "Export instances" writes them, the classes of the
corrected instances become the image-level labels that "Train PRM model" trains a new
model on, and the new model runs on the first image again. Every step goes through the
widgets' own methods (the ones their buttons call); the PNGs go to docs/images/.

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/tutorial_screenshots.py   # ~5 min, 2 cores
    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/tutorial_screenshots.py --out /tmp/shots

The window is 1900x1150: ``-s "-screen 0 1920x1200x24"`` gives Xvfb a screen that holds it
(on xvfb-run's default screen, 1280x1024, the window is cut down and the canvas beside the
docks squeezed). The widgets remember their choices and the trained checkpoint in the user's configuration
folder; ``XDG_CONFIG_HOME=$(mktemp -d)`` in front keeps the run from reading or changing it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 300_000  # each PNG of the docs stays under this
#: The folder of the tutorial: scikit-image's photos, with what the built-in model should be told.
IMAGES = {"chelsea": "Egyptian cat", "coffee": "espresso", "rocket": "space shuttle"}


def wait(app, condition, timeout: float, what: str) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def settle(app, seconds: float = 1.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def save_png(shot, path: Path, *, width: int = 1280) -> None:
    """Save a screenshot scaled to ``width`` and quantised so that it stays small."""
    from PIL import Image

    image = Image.fromarray(shot[..., :3])
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    for colors in (256, 128, 64):
        image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
                       ).save(path, optimize=True)
        if path.stat().st_size < MAX_BYTES:
            break
    print(f"wrote {path} ({path.stat().st_size // 1000} kB)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images",
                        help="folder of the screenshots")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder of the tutorial's images and outputs (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a step")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="napari-prm-tutorial-"))
    args.out.mkdir(parents=True, exist_ok=True)

    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage import data

    folder, labelled = work / "images", work / "labelled"
    folder.mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        iio.imwrite(folder / f"{name}.png", getattr(data, name)())

    viewer = napari.Viewer(title="napari-prm tutorial", show=True)
    viewer.window.resize(1900, 1150)
    app = QApplication.instance()

    def shot(name: str) -> None:
        settle(app)
        viewer.reset_view()  # fit the image to the canvas as it is now
        settle(app, 0.5)
        save_png(viewer.screenshot(canvas_only=False, flash=False), args.out / f"{name}.png")

    # 1. open an image and the widget (Layers > Segment > Peak Response Maps)
    viewer.open(folder / "chelsea.png")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    wait(app, lambda: widget.classes_loaded, args.timeout, "loading the built-in model")
    widget.restore_defaults()
    widget.select_model("imagenet")  # the folder's espresso and shuttle are ImageNet classes
    wait(app, lambda: widget.classes_loaded, args.timeout, "loading the ImageNet label space")
    viewer.reset_view()
    shot("tutorial-1-open")

    # 2. run, and 3. correct, image by image; 4. export each
    _, exporter = viewer.window.add_plugin_dock_widget("napari-prm", "Export instances",
                                                       tabify=True)
    for number, (name, right_class) in enumerate(IMAGES.items()):
        if number:
            for layer in list(viewer.layers):
                viewer.layers.remove(layer)
            viewer.open(folder / f"{name}.png")
            widget.reset_choices()
        widget.image.value = viewer.layers[name]
        if widget.run() is None:
            raise RuntimeError(widget.last_message)
        wait(app, lambda: not widget.running, args.timeout, f"predicting {name}")
        print(f"{name}: {widget.last_message}")
        instances = viewer.layers[f"{name} instances"]
        viewer.reset_view()
        if number == 0:
            viewer.layers[f"{name} PRMs"].gamma = 0.6
            instances.opacity = 0.45
            viewer.layers.selection.active = instances
            raise_dock(viewer, "Peak Response Maps")  # Export instances was docked in front of it
            viewer.reset_view()
            shot("tutorial-2-run")
        correct(widget, instances, right_class)
        print(f"{name}: corrected: {instances.features[['label', 'class_name']].values.tolist()}")
        if number == 0:
            viewer.layers.selection.active = instances
            viewer.layers[f"{name} PRMs"].visible = False
            raise_dock(viewer, "Peak Response Maps")
            shot("tutorial-3-correct")
        exporter.reset_choices()
        exporter._layer.value = instances
        if exporter._stem.value != name:  # the widget offers the image's name as the file stem
            raise RuntimeError(f"export of {name}: file stem {exporter._stem.value!r}")
        written = exporter.export(labelled, formats=["tiff", "coco", "csv"], overwrite=True)
        if not written:
            raise RuntimeError(f"export of {name} failed")
        if number == 0:
            exporter._folder.value = labelled
            raise_dock(viewer, "Export instances")
            shot("tutorial-4-export")

    # 5. train on the corrected images: their classes are the image-level labels
    labels_csv = write_labels_csv(labelled, folder)
    print(labels_csv.read_text())
    _, trainer = viewer.window.add_plugin_dock_widget("napari-prm", "Train PRM model", tabify=True)
    trainer._dataset.value = labels_csv
    trainer._base.value = "efficientnet_lite0"
    trainer._epochs.value = 8
    trainer._batch.value = 3
    trainer._size.value = 224
    trainer._out.value = work / "my_model.pt"
    if trainer.start() is None:
        raise RuntimeError(trainer.last_message)
    wait(app, lambda: trainer.activity is not None and trainer.activity.bar.n >= 5, args.timeout,
         "training")
    raise_dock(viewer, "Train PRM model")
    viewer.window._status_bar._toggle_activity_dock(True)  # napari's activity dock, opened
    shot("tutorial-5-train")
    viewer.window._status_bar._toggle_activity_dock(False)
    wait(app, lambda: not trainer.running, args.timeout, "training")
    print(f"training: {trainer.last_message}")

    # 6. run again with the new model (offered in the predict widget)
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    viewer.open(folder / "chelsea.png")
    widget.reset_choices()
    widget.image.value = viewer.layers["chelsea"]
    wait(app, lambda: widget.classes_loaded, args.timeout, "loading the new model")
    if widget.run() is None:
        raise RuntimeError(widget.last_message)
    wait(app, lambda: not widget.running, args.timeout, "predicting with the new model")
    print(f"new model: {widget.last_message}")
    viewer.layers.selection.active = viewer.layers["chelsea instances"]
    raise_dock(viewer, "Peak Response Maps")
    shot("tutorial-6-run-again")
    viewer.close()
    print(f"tutorial files in {work}")
    return 0


def raise_dock(viewer, name: str) -> None:
    """Bring the tab of a tabified dock widget to the front."""
    for title, widget in viewer.window.dock_widgets.items():
        if title.startswith(name):
            native = getattr(widget, "native", widget)
            native.parent().raise_()


def correct(widget, instances, right_class: str) -> None:
    """What the tutorial does by hand: drop weak duplicates, fix the class, tidy up."""
    import numpy as np

    panel = widget.correction
    table = instances.features.sort_values("score", ascending=False)
    if not len(table):
        return
    keep = int(table["label"].iloc[0])
    # weaker instances: small ones are fragments (deleted), large ones pieces of the object
    for label in table["label"].iloc[1:].astype(int):
        if np.count_nonzero(instances.data == label) < 0.1 * np.count_nonzero(instances.data == keep):
            instances.selected_label = label
            panel.delete_selected()
        else:  # select the piece, then the instance to keep: Merge takes the piece
            instances.selected_label = label
            instances.selected_label = keep
            panel.merge_previous_into_selected()
    instances.selected_label = keep
    panel.class_choice.value = right_class
    panel.set_class_of_selected()


def write_labels_csv(labelled: Path, images: Path) -> Path:
    """``image,labels`` of each exported image: the classes of its corrected instances."""
    from napari_prm.io import IMAGE_SUFFIXES, read_instances_csv

    names = {p.stem: p.name for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    rows = ["image,labels"]
    for table in sorted(labelled.glob("*_instances.csv")):
        classes = sorted(set(read_instances_csv(table)["class_name"]) - {"unknown"})
        rows.append(f"{names[table.name.removesuffix('_instances.csv')]},{';'.join(classes)}")
    path = images / "labels.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
