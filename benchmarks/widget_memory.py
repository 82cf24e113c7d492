"""Peak memory of the "Peak Response Maps" widget on a large image: Run, Re-threshold, a click.

Drives the widget as `widget_latency.py` does, on scikit-image's chelsea enlarged to
HEIGHT×WIDTH (bilinear, as docs/benchmarks.md "Large images" makes it) with the built-in
``imagenet-voc`` model and the built-in proposals. A scenario runs in a process of its own,
since peak RSS (``ru_maxrss``) is the peak over a process's life:

- ``default``: one Run with the widget's defaults (the model's calibrated thresholds);
- ``many``: a Run with every peak kept (class and peak thresholds -10000: the cap keeps
  50), then a Re-threshold (peak threshold -9999, the same 50 peaks), then one click that
  adds a peak.

After each step it prints the peak RSS so far and the RSS held then. Peak RSS does not
depend on the machine's load; the seconds printed do.

    xvfb-run -a env PYTHONPATH=src python benchmarks/widget_memory.py --scenario many
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from widget_latency import loadavg, wait


def rss_gb() -> tuple[float, float]:
    """(peak RSS, current RSS) of this process in GB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    with open("/proc/self/status") as handle:
        current = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return peak, current * 1024 / 1e9


def large_chelsea(height: int, width: int):
    import numpy as np
    from skimage import data, transform

    return (transform.resize(data.chelsea(), (height, width), order=1) * 255).round().astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("default", "many"), required=True)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--model", default="imagenet-voc")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ["NAPARI_PRM_CONFIG_DIR"] = tempfile.mkdtemp(prefix="napari-prm-widget-memory-")
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    torch.set_num_threads(args.threads)
    image = large_chelsea(args.height, args.width)
    before = loadavg()
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    viewer.add_image(image, name="chelsea")
    _, widget = viewer.window.add_plugin_dock_widget("napari-prm", "Peak Response Maps")
    widget.select_model(args.model)
    wait(app, lambda: widget.classes_loaded)
    widget.proposals.value = "default"
    rows = [("start (model loaded)", *rss_gb(), 0.0, "")]

    def step(name, action):
        started = time.perf_counter()
        if action() is None:
            raise RuntimeError(widget.last_message)
        wait(app, lambda: not widget.running)
        app.processEvents()
        rows.append((name, *rss_gb(), time.perf_counter() - started, widget.last_message))

    if args.scenario == "default":
        step("Run (defaults)", widget.run)
    else:
        widget.class_threshold.value = -1e4
        widget.peak_threshold.value = -1e4
        step("Run (every peak: 50 kept)", widget.run)
        widget.peak_threshold.value = -9999.0
        step("Re-threshold (50 peaks)", widget.rethreshold)
        peaks = viewer.layers["chelsea peaks"]
        widget.correction.class_choice.value = "cat"
        widget.last_message = ""
        started = time.perf_counter()
        peaks.add([[args.height * 0.6, args.width * 0.3]])
        wait(app, lambda: not widget.running and widget.last_message.startswith(("Retrieved", "No instance")))
        rows.append(("click: one added peak", *rss_gb(), time.perf_counter() - started, widget.last_message))
    prm_layer = viewer.layers["chelsea PRMs"]
    shown = prm_layer.data
    print(f"PRM layer data: {type(shown).__name__} {tuple(shown.shape)}; "
          f"bytes held {getattr(shown, 'nbytes', 'n/a')}")
    viewer.close()
    after = loadavg()
    print(f"\nchelsea {args.height}x{args.width}, model {args.model}, {args.threads} torch threads, "
          f"load average before {before}, after {after}\n")
    print("| step | peak RSS (GB) | RSS after (GB) | seconds | status line |\n| --- | --- | --- | --- | --- |")
    for name, peak, current, seconds, message in rows:
        print(f"| {name} | {peak:.2f} | {current:.2f} | {seconds:.1f} | {message[:70]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
