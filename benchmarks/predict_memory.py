"""Peak memory of ``napari-prm predict`` on one large image, and the SHA-256 of what it writes.

Scikit-image's chelsea enlarged to HEIGHT×WIDTH (bilinear, as `widget_memory.py` makes it) is
written as a PNG, then ``napari-prm predict`` runs on it in a child process; its peak RSS is the
child's ``ru_maxrss``, which does not depend on the machine's load (the wall time does, so the
load average is printed beside it). The outputs' SHA-256 let two versions of the code be
compared byte for byte. Options after ``--`` go to ``napari-prm predict``, e.g. every peak:

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/predict_memory.py -- \\
        --class-threshold -10000 --peak-threshold -10000
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from widget_latency import loadavg
from widget_memory import large_chelsea


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--model", default="imagenet-voc")
    parser.add_argument("predict_options", nargs="*", help="passed to napari-prm predict (after --)")
    args = parser.parse_args(argv)
    import imageio.v3 as iio

    with tempfile.TemporaryDirectory(prefix="napari-prm-predict-memory-") as folder:
        image, out = Path(folder) / "chelsea.png", Path(folder) / "out"
        iio.imwrite(image, large_chelsea(args.height, args.width))
        command = [sys.executable, "-m", "napari_prm", "predict", str(image), "--out", str(out),
                   "--model", args.model, *args.predict_options]
        before, started = loadavg(), time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        wall, after = time.perf_counter() - started, loadavg()
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        if finished.returncode != 0:
            print(finished.stderr, file=sys.stderr)
            return finished.returncode
        with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
            row = next(csv.DictReader(handle))
        print(f"chelsea {args.height}x{args.width}, model {args.model}, options {args.predict_options}")
        print(f"peaks {row['peaks']}, instances {row['instances']}; peak RSS {peak:.2f} GB; wall {wall:.1f} s; "
              f"load average before {before}, after {after}")
        for path in sorted(out.glob("chelsea*")):
            if not path.name.endswith(".manifest.json"):  # it records when and where it was written
                print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
