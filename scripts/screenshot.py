"""Save a screenshot of napari with the plugin's three result layers on the sample image.

Runs the "Peak Response Maps" widget with the built-in model (``--model``) on Chelsea the cat
(scikit-image), exactly as a user would, grabs the whole window, and reports how long the
run took and the longest time the Qt event loop went without processing events meanwhile
(the figures of docs/benchmarks.md, "Plugin: predict widget on a 512x512 image").

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshot.py --out docs/screenshot.png
    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshot.py --size 512 --runs 2 --out /tmp/bench.png

The window is 1800x1150: ``-s "-screen 0 1920x1200x24"`` gives Xvfb a screen that holds it
(on xvfb-run's default screen, 1280x1024, the window is cut down and the canvas squeezed).
The widget starts from the choices it remembers (thresholds, classes, ...);
``XDG_CONFIG_HOME=$(mktemp -d)`` in front starts it from its defaults.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def wait(app, condition, timeout: float) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def stage_times(stages) -> str:
    """Summarise ``(time, stage, done, total)`` progress reports of one plane."""
    def first(stage, done):
        return next((t for t, s, d, _ in stages if s == stage and d == done), None)

    backprop = [t for t, s, _, _ in stages if s == "backprop"]
    start = first("forward", 0)
    parts = []
    if backprop and start is not None:
        parts.append(f"forward + first peak {backprop[0] - start:.1f} s")
        if len(backprop) > 1:
            parts.append(f"{(backprop[-1] - backprop[0]) / (len(backprop) - 1):.2f} s per "
                         "further peak")
    for stage in ("proposals", "retrieval"):
        begin, end = first(stage, 0), first(stage, 1)
        if begin is not None and end is not None:
            parts.append(f"{stage} {end - begin:.1f} s")
    return ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshot.png", help="PNG to write")
    parser.add_argument("--model", default="imagenet-voc",
                        help="a built-in label space (imagenet-voc, imagenet-coco, imagenet) or a checkpoint")
    parser.add_argument("--classes", nargs="*", default=[],
                        help="classes to keep (none: those above the class threshold)")
    parser.add_argument("--peak-threshold", type=float, default=None,
                        help="keep peaks above this CRM value (default: the model's calibrated one); "
                             "a negative value turns the peak threshold off")
    parser.add_argument("--runs", type=int, default=1,
                        help="run the widget this many times (the first one loads the model)")
    parser.add_argument("--proposals", default="built-in",
                        help="proposal source as the widget names it (built-in, PRM-guided, ...)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize the sample to SIZE x SIZE pixels first")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run")
    args = parser.parse_args(argv)

    import imageio.v3 as iio
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-prm", show=True)
    viewer.window.resize(1800, 1150)
    app = QApplication.instance()
    viewer.open_sample("napari-prm", "chelsea")
    if args.size:
        from skimage.transform import resize

        image = viewer.layers["chelsea"]
        image.data = (resize(image.data, (args.size, args.size), anti_aliasing=True) * 255
                      ).astype("uint8")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    widget.select_model(args.model)
    wait(app, lambda: widget.classes_loaded, 120)
    widget.set_selected_classes(args.classes)
    if args.peak_threshold is not None:
        widget.peak_threshold.value = (widget.peak_threshold.min if args.peak_threshold < 0
                                       else args.peak_threshold)
    widget.show_text.value = True
    widget.proposals.value = widget.proposals.get_choice(args.proposals)
    image_shape = viewer.layers["chelsea"].data.shape
    for run in range(1, args.runs + 1):
        ticks, stages = [], []
        widget.progressed.connect(lambda stage, done, total, stages=stages: stages.append(
            (time.perf_counter(), stage, done, total)))
        timer = QTimer()
        timer.timeout.connect(lambda ticks=ticks: ticks.append(time.perf_counter()))
        timer.start(10)
        if widget.run() is None:
            raise RuntimeError(widget.last_message)
        wait(app, lambda: not widget.running, args.timeout)
        timer.stop()
        stall = max(b - a for a, b in zip(ticks, ticks[1:])) if len(ticks) > 1 else float("nan")
        widget.progressed.disconnect()
        print("  " + stage_times(stages))
        print(f"run {run} ({'loads the model' if run == 1 else 'model loaded'}): image "
              f"{image_shape}, classes {args.classes or 'above the class threshold'}, peak "
              f"threshold {widget.peak_control.describe()}, proposals {args.proposals}: "
              f"{widget.last_message} Longest Qt event-loop stall {stall * 1000:.0f} ms.")

    instances = viewer.layers["chelsea instances"]
    prms = viewer.layers["chelsea PRMs"]
    if len(instances.features):  # show the PRM of the first instance's peak
        first = instances.features.iloc[0]
        instances.selected_label = int(first["label"])
        viewer.dims.set_current_step(0, int(first["peak"]))
    prms.gamma = 0.6
    instances.opacity = 0.4
    viewer.layers.selection.active = instances
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, shot)
    print(f"wrote {out} {shot.shape[1]}x{shot.shape[0]}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
