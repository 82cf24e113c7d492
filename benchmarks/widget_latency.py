"""How long the "Peak Response Maps" widget makes a user wait: first Run, Run again,
Re-threshold, a click that adds an instance, and Shift-A (an instance's next alternative mask).

Drives the widget as a user would (napari viewer, Qt event loop) on scikit-image's chelsea
resized to SIZE×SIZE with the built-in ``imagenet-voc`` model and the widget's defaults
(calibrated thresholds, built-in proposals), and times each action from the call to the
layers being updated. The same steps on :class:`napari_prm.PRMPredictor` alone (no Qt)
are timed too. Prints a Markdown table and the load average before and after.

    xvfb-run -a env PYTHONPATH=src python benchmarks/widget_latency.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "n/a"


def wait(app, condition, timeout: float = 600) -> float:
    """Process Qt events until ``condition()``; return the seconds it took."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.01)  # napari idles in its event loop; poll lightly
    return time.perf_counter() - start


def chelsea(size: int):
    import numpy as np
    from skimage import data, transform

    return (transform.resize(data.chelsea(), (size, size), anti_aliasing=True) * 255).astype(np.uint8)


def time_predictor(image, model_name: str, clicks) -> list[tuple[str, float]]:
    """The widget's steps on the predictor alone."""
    from napari_prm import PRMPredictor, load_model

    model = load_model(model_name)
    rows = []
    predictor = PRMPredictor(model, proposals="default")
    started = time.perf_counter()
    predictor.set_image(image)
    first = predictor.predict()
    rows.append(("predictor: set_image + predict (defaults)", time.perf_counter() - started))
    started = time.perf_counter()
    predictor.predict()
    rows.append(("predictor: predict again (same thresholds)", time.perf_counter() - started))
    calibrated = model.settings["peak_threshold"]
    started = time.perf_counter()
    predictor.predict(peak_threshold=calibrated + 1.0)
    rows.append(("predictor: re-threshold, stricter (no new PRM)", time.perf_counter() - started))
    cached = predictor.cached_peak_count
    started = time.perf_counter()
    lower = predictor.predict(peak_threshold=calibrated - 1.0)
    rows.append((f"predictor: re-threshold, lower ({predictor.cached_peak_count - cached} new PRMs)",
                 time.perf_counter() - started))
    times = []
    for yx in clicks:
        started = time.perf_counter()
        predictor.predict(points=([yx], ["cat"]))
        times.append(time.perf_counter() - started)
    rows.append((f"predictor: click -> instance (median of {len(times)})", statistics.median(times)))
    print(f"predictor: {len(first.peaks)} peaks / {len(first.instances)} instances with the defaults, "
          f"{len(lower.peaks)} peaks at the lower threshold; timings {predictor.timings}")
    return rows


def time_widget(image, model_name: str, clicks) -> list[tuple[str, float]]:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    layer = viewer.add_image(image, name="chelsea")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    rows = []
    started = time.perf_counter()
    widget.select_model(model_name)
    wait(app, lambda: widget.classes_loaded)
    rows.append(("widget: model loaded (classes listed)", time.perf_counter() - started))
    widget.proposals.value = "default"

    def run(action) -> float:
        started = time.perf_counter()
        if action() is None:
            raise RuntimeError(widget.last_message)
        wait(app, lambda: not widget.running)
        return time.perf_counter() - started

    rows.append(("widget: first Run (forward, PRMs, proposals, retrieval, layers)", run(widget.run)))
    print("first run:", widget.last_message)
    rows.append(("widget: Run again (the image's maps reused)", run(widget.run)))
    calibrated = float(widget.peak_threshold.value)
    widget.peak_threshold.value = calibrated + 1.0
    rows.append(("widget: Re-threshold, stricter (no new PRM)", run(widget.rethreshold)))
    print("stricter:", widget.last_message)
    predictor = widget.predictors.get(widget.context.predictor_keys[()])
    cached = predictor.cached_peak_count
    widget.peak_threshold.value = calibrated - 1.0
    seconds = run(widget.rethreshold)
    rows.append((f"widget: Re-threshold, lower ({predictor.cached_peak_count - cached} new PRMs)", seconds))
    print("lower:", widget.last_message)
    peaks = viewer.layers["chelsea peaks"]
    widget.correction.class_choice.value = "cat"
    times = []
    for yx in clicks:
        widget.last_message = ""
        started = time.perf_counter()
        peaks.add([yx])
        wait(app, lambda: not widget.running and widget.last_message.startswith(("Retrieved", "No instance")))
        times.append(time.perf_counter() - started)
        print("click:", widget.last_message)
    rows.append((f"widget: click -> instance (median of {len(times)})", statistics.median(times)))
    instances = viewer.layers["chelsea instances"]
    first, again = [], []
    # Shift-A: the first press finds the alternatives in the panel's worker (timed until the first is
    # shown); the next press swaps masks at once
    for label in instances.features["label"].tolist()[:3]:
        instances.selected_label = int(label)
        for times in (first, again):
            started = time.perf_counter()
            position = widget.correction.next_alternative_of_selected()
            if position is None and widget.running:
                wait(app, lambda: not widget.running)
            times.append(time.perf_counter() - started)
            print("Shift-A:", position, widget.last_message)
    if first:
        rows.append((f"widget: Shift-A, first press (median of {len(first)} instances)", statistics.median(first)))
        rows.append((f"widget: Shift-A, next press (median of {len(again)})", statistics.median(again)))
    assert layer is viewer.layers["chelsea"]
    viewer.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="imagenet-voc")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=3, help="clicks to time (median)")
    parser.add_argument("--parts", nargs="+", choices=("widget", "predictor"), default=["widget", "predictor"],
                        help="what to time, in this order (the first pays the process's first-call costs, "
                             "as a user's first Run does)")
    args = parser.parse_args(argv)
    # a fresh config folder: the widget starts from its defaults, not from saved choices
    os.environ["NAPARI_PRM_CONFIG_DIR"] = tempfile.mkdtemp(prefix="napari-prm-widget-latency-")
    import torch

    torch.set_num_threads(args.threads)
    image = chelsea(args.size)
    step = args.size // 8
    clicks = [[4 * step + k * step // 2, 2 * step + k * step] for k in range(args.clicks)]
    before = loadavg()
    rows = []
    for part in args.parts:
        rows += (time_widget if part == "widget" else time_predictor)(image, args.model, clicks)
    after = loadavg()
    print(f"\nchelsea {args.size}x{args.size}, model {args.model}, {args.threads} torch threads, "
          f"load average before {before}, after {after}\n")
    print("| step | seconds |\n| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
