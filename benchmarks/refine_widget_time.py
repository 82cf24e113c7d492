"""Wall-clock of one "Learn" step of the "Learn from corrections" widget on 10 corrected images.

The corrected images are the first 10 coco128 val images that show a class of the model,
their ground truth painted into ``<image> instances`` Labels layers with the class of each
instance in the layer's features, as a user's corrections would be. The model is the one
of ``benchmarks/refine_coco128.py`` (saved once to ``--out``). The time is the widget's own
(from pressing *Learn* to the refined model being offered to the Peak Response Maps widget).

Run it with a display, e.g. ``xvfb-run -a python benchmarks/refine_widget_time.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_coco128 import ROOT, load_split, load_text, prm_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "refine_widget")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    from napari_prm import save_model

    model, settings, model_name = prm_model()
    model.settings.update(settings)  # the widget runs the model with its own settings
    checkpoint = save_model(model, args.out / "model.pt")
    val = load_split("val", model.class_names)
    viewer = napari.Viewer(show=False)
    for index in range(args.images):
        name = Path(val.image_paths[index]).stem
        truth = val.instances(index)
        labels = np.zeros(truth.masks.shape[1:], np.uint16)
        for number, mask in enumerate(truth.masks, start=1):
            labels[mask & (labels == 0)] = number
        classes = [model.class_names[c] for c in truth.class_indices]
        viewer.add_image(val.read_image(index), name=name)
        viewer.add_labels(labels, name=f"{name} instances", features=pd.DataFrame({
            "index": np.arange(1, len(classes) + 1), "label": np.arange(1, len(classes) + 1),
            "class_name": classes}))
    _, predict_widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    predict_widget.select_model(str(checkpoint))
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Learn from corrections")
    widget.reset_choices()
    widget._layers.value = [layer for layer in viewer.layers if layer.name.endswith(" instances")]
    widget._device.value = "cpu"
    widget._out.value = args.out / "refined.pt"
    load_before = load_text()
    widget.start()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
    # the worker emits `finished` after its result: let it end before the viewer goes
    if not QThreadPool.globalInstance().waitForDone(30_000):
        print("the learn worker did not end within 30 s of its result", file=sys.stderr)
        return 1
    QApplication.processEvents()
    result = widget.result
    report = {"model": model_name, "images": args.images, "seconds": widget.last_seconds,
              "prepare_seconds": result.prepare_seconds, "train_seconds": result.train_seconds,
              "epochs": len(result.history), "peaks": result.model.head.info["trained_on"]["peaks"],
              "load_before": load_before, "load_after": load_text(), "message": widget.last_message}
    (args.out / "widget_time.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
