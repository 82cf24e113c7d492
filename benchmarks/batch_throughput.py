"""Batch prediction: one process against dask workers, scheduler overhead, memory, resume.

Runs `napari_prm.batch.predict_many` on the same images in four ways, each in a fresh
process of its own (so that peak memory is per mode): one process without dask with
torch on every core, the same with torch on one thread, and a local dask cluster of 1
and of 2 one-thread worker processes. The model is loaded before timing (on each worker
too), so the figures are processing only. Then the resume behaviour: ``napari-prm
predict --workers 2`` is interrupted (SIGINT, then SIGKILL, of the client) when half the
images are done, run again, and the images the second run computes are counted.

    PYTHONPATH=src python benchmarks/batch_throughput.py \\
        --images ../shared/data/coco128/val2017 --limit 100 --scratch /tmp/batch-bench

Prints a Markdown report (also written to ``--report``); the load average is read before
and after each part, the machine being shared.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

MODES = ("process", "process-1thread", "workers-1", "workers-2")
REPOSITORY = Path(__file__).resolve().parents[1]


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def summary_counts(out: Path) -> dict:
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


# --------------------------------------------------------------------------- one mode, in its own process
def run_mode(mode: str, paths: list[Path], out: Path, model_name: str, proposals: str) -> dict:
    import torch

    from napari_prm.batch import model_for, model_spec, predict_many, start_local_cluster
    from napari_prm.model.checkpoint import load_model

    settings = {"proposals": proposals}
    client = None
    started = time.perf_counter()
    if mode.startswith("workers-"):
        client = start_local_cluster(int(mode.split("-")[1]), dashboard=False)
        startup = time.perf_counter() - started
        spec, _ = model_spec(model_name, device="cpu", torch_threads=1)
        client.run(lambda: model_for(spec) is not None)  # every worker loads the model before timing
        model = model_name
    else:
        torch.set_num_threads(1 if mode == "process-1thread" else os.cpu_count() or 1)
        startup = 0.0
        model = load_model(model_name, device="cpu")
    warm = time.perf_counter() - started
    started = time.perf_counter()
    batch = predict_many(paths, model, out, client, device="cpu", **settings)
    wall = time.perf_counter() - started
    if client is not None:
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        workers = len(peaks)
        worker_peak_mib = sorted(value / 1024 for value in peaks.values())
        cluster = client.cluster
        client.close()
        cluster.close()
    else:
        workers = 1
        worker_peak_mib = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
    task_seconds = sum(r.seconds or 0.0 for r in batch.results if r.status == "written")
    return {"mode": mode, "images": len(paths), "written": len(batch.written), "failed": len(batch.failed),
            "wall": wall, "startup": startup, "warm": warm, "task_seconds": task_seconds, "workers": workers,
            "peak_mib": worker_peak_mib, "torch_threads": torch.get_num_threads() if client is None else 1,
            "peaks": sum(r.peaks or 0 for r in batch.written),
            "instances": sum(r.instances or 0 for r in batch.written)}


# --------------------------------------------------------------------------- resume after a killed client
def run_resume(paths_dir: Path, limit: int, out: Path, how: str, model_name: str, proposals: str) -> dict:
    import psutil

    inputs = sorted(p for p in paths_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    command = [sys.executable, "-m", "napari_prm", "predict", *map(str, inputs), "--out", str(out),
               "--model", model_name, "--proposals", proposals, "--device", "cpu", "--workers", "2"]
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY / "src"))
    # A background shell job ignores SIGINT and its children inherit that: give the client
    # Ctrl-C's default disposition, as in a terminal.
    client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while len(list(out.glob("*.manifest.json"))) < limit // 2 and client.poll() is None:
        time.sleep(0.2)
    family = [child.pid for child in psutil.Process(client.pid).children(recursive=True)]
    client.send_signal(signal.SIGINT if how == "SIGINT" else signal.SIGKILL)
    try:
        client.wait(timeout=120)
    except subprocess.TimeoutExpired:
        client.kill()
        client.wait()
    at_kill = len(list(out.glob("*.manifest.json")))
    time.sleep(10)  # what the workers still do once their client is gone
    survivors = [pid for pid in family if psutil.pid_exists(pid)]
    after_exit = len(list(out.glob("*.manifest.json")))
    for pid in survivors:  # not left running on a shared machine
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    started = time.perf_counter()
    again = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    counts = summary_counts(out)
    return {"how": how, "images": len(inputs), "done_at_kill": at_kill, "done_10s_later": after_exit,
            "processes_left_10s_later": len(survivors), "leftovers_before_rerun": leftovers,
            "rerun_written": counts.get("written", 0), "rerun_skipped": counts.get("skipped", 0),
            "rerun_failed": counts.get("failed", 0), "rerun_seconds": seconds, "rerun_status": again.returncode,
            "leftovers_after_rerun": sorted(p.name for p in out.iterdir() if p.name.startswith("."))}


# --------------------------------------------------------------------------- report
def report(modes: list[dict], resumes: list[dict], loads: list[str]) -> str:
    lines = ["| mode | torch threads | images/s | s/image (wall) | s/image in the task | overhead/image | "
             "peak memory per process (MiB) | cluster start (s) |", "| --- " * 8 + "|"]
    reference = next((m for m in modes if m["mode"] == "process-1thread"), None)
    for m in modes:
        n = m["written"] or 1
        per_image = m["wall"] / n
        in_task = m["task_seconds"] / n
        overhead = (m["wall"] * m["workers"] - m["task_seconds"]) / n
        extra = ""
        if reference and m["mode"].startswith("workers-1"):
            extra = f" ({(m['wall'] - reference['wall']) / n:+.3f} vs process-1thread)"
        lines.append(
            f"| {m['mode']} | {m['torch_threads']} | {m['written'] / m['wall']:.3f} | {per_image:.2f} | "
            f"{in_task:.2f} | {overhead:.3f} s{extra} | {', '.join(f'{v:.0f}' for v in m['peak_mib'])} | "
            f"{m['startup']:.1f} |")
    lines += ["", "| mode | written | failed | peaks | instances |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {m['mode']} | {m['written']} | {m['failed']} | {m['peaks']} | {m['instances']} |" for m in modes]
    if resumes:
        lines += ["", "| client killed by | images | done at the kill | done 10 s later | worker processes left "
                  "10 s later | re-run computed | re-run skipped | re-run failed | leftovers after re-run |",
                  "| --- " * 9 + "|"]
        for r in resumes:
            lines.append(f"| {r['how']} | {r['images']} | {r['done_at_kill']} | {r['done_10s_later']} | "
                         f"{r['processes_left_10s_later']} | {r['rerun_written']} | {r['rerun_skipped']} | "
                         f"{r['rerun_failed']} | {len(r['leftovers_after_rerun'])} |")
    lines += ["", "Load average (1, 5, 15 min) before/after each part: " + "; ".join(loads)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--limit", type=int, default=100, help="the first N images (sorted by name)")
    parser.add_argument("--scratch", type=Path, required=True, help="outputs go here (emptied per part)")
    parser.add_argument("--model", default="imagenet-voc", help="as predict's --model (default: the CLI's)")
    parser.add_argument("--proposals", default="default")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument("--resume", default="SIGINT,SIGKILL", help="signals for the resume runs ('' for none)")
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument("--one-mode", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args()
    import shutil

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    if args.one_mode:
        out = args.scratch / args.one_mode
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps(run_mode(args.one_mode, paths, out, args.model, args.proposals)))
        return
    modes, resumes, loads = [], [], []
    for mode in filter(None, args.modes.split(",")):
        before = load()
        done = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--limit", str(args.limit),
                               "--scratch", str(args.scratch), "--model", args.model, "--proposals", args.proposals,
                               "--one-mode", mode], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{mode} failed:\n{done.stderr}")
        modes.append(json.loads(done.stdout.strip().splitlines()[-1]))
        loads.append(f"{mode}: {before} / {load()}")
        print(json.dumps(modes[-1]), file=sys.stderr, flush=True)
    for how in filter(None, args.resume.split(",")):
        out = args.scratch / f"resume-{how}"
        shutil.rmtree(out, ignore_errors=True)
        before = load()
        resumes.append(run_resume(args.images, args.limit, out, how, args.model, args.proposals))
        loads.append(f"resume {how}: {before} / {load()}")
        print(json.dumps(resumes[-1]), file=sys.stderr, flush=True)
    text = report(modes, resumes, loads)
    print(text, end="")
    if args.report is not None:
        args.report.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
