"""The refinement head on coco128 (docs/accuracy.md, "Masks from the refinement head").

Measures, from one PRM model (``--model``; by default the built-in model in the VOC label space):

1. ``selftrain``: the head self-trained on coco128 train (image-level labels only) against
   PRM's own instances, on the coco128 val images that show a class of the model:
   mAP^r .25/.5/.75, ABO and seconds per image, and the head's mAP^r .5 minus the
   baseline's over paired bootstrap resamples of the val images.
2. ``loop``: the annotation loop, simulated: the ground-truth masks of the first N of
   those val images (N = 0, 5, 10, 25) are given as corrections, on top of self-training
   and alone; every head of one order is evaluated on the same remaining images (those
   after the first 25). ``--orders K`` repeats this for K orders of the val images (the
   first as they come) and plots their mean and range. Writes ``docs/images/refine_loop.png``.
3. ``replot``: draws the figure again from ``--out``'s ``loop.json``, without training.
4. ``dev``: design choices measured on coco128 train only (two folds: self-training on
   every other image, evaluation on the others' images that show a class, with their
   ground truth; then the other way round), so that val is used for the final figures only.

Every row also says how the masks of instances whose peak lies on an object of their
class compare with that object: their median area as a share of the object's, and the
share that reach IoU .5 with it (``extent``).

PRM runs once per image; its peaks, PRMs and retrieved instances are cached under
``--out`` (``predictions/``), so the head variants share them. Run with one thread per
process on a shared machine (``--threads``).

Examples
--------
::

    python benchmarks/refine_coco128.py selftrain --out out/refine
    python benchmarks/refine_coco128.py loop --out out/refine --orders 3
    python benchmarks/refine_coco128.py replot --out out/refine
    python benchmarks/refine_coco128.py dev --out out/refine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_prm.data import from_coco, voc_view
from napari_prm.evaluate import InstanceMatcher, bootstrap_map, evaluate, peak_instances
from napari_prm.masks import decode_rle, encode_rle, mask_iou
from napari_prm.model.checkpoint import is_builtin_name
from napari_prm.predict import Prediction, predict, rank_by_confidence
from napari_prm.predictor import preset_settings, resolve_thresholds
from napari_prm.refine import Correction, refine, refined_instances
from napari_prm.retrieval import Instance

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coco128" / "annotations"
FIGURE = ROOT / "docs" / "images" / "refine_loop.png"
LOOP_SIZES = (0, 5, 10, 25)


# --------------------------------------------------------------------------- the model
def prm_model(name: str = "imagenet-voc"):
    """The PRM model (by default the built-in model in the VOC label space), the predict settings
    measured with it (its defaults) and how the report names it."""
    from napari_prm import load_model

    kind = "built-in, calibrated thresholds" if is_builtin_name(name) else "its calibrated thresholds"
    return load_model(name), {}, f"{name} ({kind}), preset 'default'"


def load_split(split: str, class_names):
    """coco128 ``split`` relabelled to the model's classes; val keeps images showing one of them."""
    dataset = voc_view(from_coco(DATA / f"instances_{split}2017.json", require_positives=False),
                       drop_unlabeled=False).with_classes(class_names)
    if split == "val":
        dataset = dataset.subset(np.flatnonzero(dataset.labels.sum(1) > 0))
    return dataset


# --------------------------------------------------------------------------- cached PRM runs
def _store(prediction: Prediction, path: Path, seconds: float) -> None:
    instances = [{"class_index": i.class_index, "score": i.score, "peak": i.peak, "rle": encode_rle(i.mask)}
                 for i in prediction.instances]
    np.savez_compressed(path, scores=prediction.scores, crms=prediction.crms, peaks=prediction.peaks,
                        peak_classes=prediction.peak_classes, peak_values=prediction.peak_values,
                        prms=prediction.prms.astype(np.float16), peaks_crm=prediction.peaks_crm,
                        class_names=np.array(prediction.class_names),
                        instances=np.array(json.dumps(instances)), seconds=np.array(seconds))


def _restore(path: Path) -> tuple[Prediction, float]:
    with np.load(path) as data:
        prms = data["prms"].astype(np.float32)
        instances = [Instance(d["class_index"], d["score"], decode_rle(d["rle"]), np.zeros(0, np.float32),
                              d["peak"]) for d in json.loads(str(data["instances"]))]
        prediction = Prediction(list(data["class_names"]), data["scores"], data["crms"], data["peaks"],
                                data["peak_classes"], data["peak_values"], prms, instances, data["peaks_crm"])
        return prediction, float(data["seconds"])


def cached_predictions(model, dataset, settings: dict, folder: Path, *, log) -> list:
    """``(Prediction, seconds)`` of every image with built-in proposals, from ``folder`` or computed (then stored)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index in range(len(dataset)):
        path = folder / f"{dataset.image_ids[index]}.npz"
        if not path.is_file():
            started = time.perf_counter()
            prediction = predict(dataset.read_image(index), model, proposals="default", **settings)
            seconds = time.perf_counter() - started
            _store(prediction, path, seconds)
            log(f"{folder.name}: {index + 1}/{len(dataset)} predicted ({seconds:.1f} s)")
        out.append(_restore(path))
    return out


# --------------------------------------------------------------------------- evaluation
def evaluate_instances(dataset, predictions, instance_lists) -> dict:
    """mAP^r and ABO of ``instance_lists`` (one list per image) with the cached peaks and PRMs,
    and their ``extent``."""
    replaced = [replace(p, instances=list(instances)) for p, instances in zip(predictions, instance_lists)]
    results = evaluate(replaced, dataset)
    results["extent"] = extent(dataset, predictions, instance_lists)
    return results


def extent(dataset, predictions, instance_lists) -> dict:
    """How the masks of instances whose peak lies on an object of their class compare with it.

    Returns ``{"instances": n, "area_ratio": median of mask area / object area,
    "iou50": share of them at IoU >= 0.5 with the object}`` (the object: the first
    non-crowd ground-truth instance of the class under the peak).
    """
    ratios, hits = [], []
    for index, (prediction, instances) in enumerate(zip(predictions, instance_lists)):
        if not instances:
            continue
        truth = dataset.instances(index)
        owners = peak_instances(prediction.peaks[[i.peak for i in instances]], [i.class_index for i in instances],
                                truth.masks, truth.class_indices, truth.iscrowd)
        for instance, owner in zip(instances, owners):
            if owner >= 0:
                target = truth.masks[owner]
                ratios.append(float(instance.mask.sum() / target.sum()))
                hits.append(float(mask_iou(instance.mask[None], target[None])[0, 0]) >= 0.5)
    return {"instances": len(ratios), "area_ratio": float(np.median(ratios)) if ratios else float("nan"),
            "iou50": float(np.mean(hits)) if hits else float("nan")}


def paired_difference(dataset, class_count: int, reference: list, other: list, resamples: int = 200) -> dict:
    """mAP^r .5 of ``other`` minus ``reference`` (instance lists, one per image) over paired bootstrap
    resamples of the images: median, 90 % interval and the share of resamples above 0."""
    matchers = []
    for instance_lists in (reference, other):
        matcher = InstanceMatcher(class_count)
        for index, instances in enumerate(instance_lists):
            matcher.add_instances(dataset.instances(index), instances)
        matchers.append(matcher)
    draws = 100 * bootstrap_map(matchers, iou_threshold=0.5, resamples=resamples)
    difference = draws[:, 1] - draws[:, 0]
    low, middle, high = np.nanpercentile(difference, [5, 50, 95])
    return {"median": float(middle), "interval_90": [float(low), float(high)],
            "share_above_0": float(np.mean(difference > 0)), "resamples": resamples}


def head_instances_for(model, dataset, predictions, **options) -> tuple[list, float]:
    """Instances the model's head cuts for the cached peaks of every image, and seconds per image.

    They are scored as ``predict`` scores them (``score_by="confidence"``, the default preset's):
    the head's mask probability weighted by the class and peak margins over the model's
    calibrated thresholds, as the baseline's retrieved instances are.
    """
    class_threshold, peak_threshold = resolve_thresholds(preset_settings(), model.settings)
    out, started = [], time.perf_counter()
    for index, prediction in enumerate(predictions):
        instances = refined_instances(model, dataset.read_image(index), prediction, **options)
        out.append(rank_by_confidence(prediction, instances, class_threshold, peak_threshold))
    return out, (time.perf_counter() - started) / max(len(predictions), 1)


def row(name: str, results: dict, seconds: float) -> dict:
    return {"name": name, "mAP_r": {str(k): v for k, v in results["mAP_r"].items()}, "ABO": results["ABO"],
            "seconds_per_image": seconds, "images": results["num_images"],
            "instances": results["num_predicted_instances"], "extent": results.get("extent")}


def markdown(rows: list[dict]) -> str:
    lines = ["| instances from | images | mAP^r .25 | mAP^r .5 | mAP^r .75 | ABO | s / image "
             "| on an object: mask / object area (median), IoU ≥ .5 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m, e = r["mAP_r"], r.get("extent") or {}
        lines.append(f"| {r['name']} | {r['images']} | {100 * m['0.25']:.1f} | {100 * m['0.5']:.1f} | "
                     f"{100 * m['0.75']:.1f} | {100 * r['ABO']:.1f} | {r['seconds_per_image']:.2f} | "
                     f"{e.get('area_ratio', float('nan')):.2f}, {100 * e.get('iou50', float('nan')):.0f} % "
                     f"(of {e.get('instances', 0)}) |")
    return "\n".join(lines) + "\n"


def load_text() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def corrections_of(dataset, indices) -> list[Correction]:
    """Ground-truth masks of these images as corrections (crowd regions left out)."""
    out = []
    for index in indices:
        truth = dataset.instances(index)
        keep = ~truth.iscrowd
        labels = np.zeros(truth.masks.shape[1:], np.int32)
        for number, mask in enumerate(truth.masks[keep], start=1):
            labels[mask & (labels == 0)] = number
        classes = {number: int(c) for number, c in enumerate(truth.class_indices[keep], start=1)}
        out.append(Correction(dataset.read_image(index), labels, classes, str(dataset.image_paths[index])))
    return out


# --------------------------------------------------------------------------- experiments
def train_head(model, dataset, settings, *, cache, corrections=(), log, **options):
    """Self-train (and learn the corrections) with napari_prm.refine.refine; samples kept in ``cache``."""
    started = time.perf_counter()
    result = refine(model, dataset=dataset, corrections=corrections, cache_dir=cache,
                    out=options.pop("out", None), overwrite=True, predict_options=settings, device="cpu",
                    progress=lambda u: log(f"epoch {u.epoch}: loss {u.loss:.4f}") if u.stage == "epoch" else None,
                    **options)
    log(f"head trained: {result.samples} images, prepare {result.prepare_seconds:.0f} s, "
        f"train {result.train_seconds:.0f} s")
    return result, time.perf_counter() - started


def run_selftrain(args, log) -> dict:
    model, settings, model_name = prm_model(args.model)
    train, val = load_split("train", model.class_names), load_split("val", model.class_names)
    evaluated = cached_predictions(model, val, settings, args.out / "predictions" / "val", log=log)
    predictions = [p for p, _ in evaluated]
    baseline_seconds = float(np.mean([s for _, s in evaluated]))
    baseline = evaluate_instances(val, predictions, [p.instances for p in predictions])
    result, train_seconds = train_head(model, train, settings, cache=args.out / "samples", log=log,
                                       epochs=args.epochs, out=args.out / "selftrain.pt")
    instances, head_seconds = head_instances_for(result.model, val, predictions)
    refined = evaluate_instances(val, predictions, instances)
    # what predict(..., proposals="refined") costs: PRM without proposals plus the head
    started = time.perf_counter()
    for index in range(min(5, len(val))):
        predict(val.read_image(index), result.model, proposals="refined", **settings)
    refined_seconds = (time.perf_counter() - started) / min(5, len(val))
    rows = [row("PRM retrieval, built-in proposals (baseline)", baseline, baseline_seconds),
            row("refinement head, self-trained", refined, refined_seconds)]
    difference = paired_difference(val, len(model.class_names), [p.instances for p in predictions], instances)
    report = {"model": model_name, "settings": settings, "train_images": len(train), "val_images": len(val),
              "train_seconds": train_seconds, "head_seconds_per_image": head_seconds, "load": load_text(),
              "rows": rows, "head_minus_baseline_at_50": difference,
              "history": [vars(h) for h in result.history]}
    return report


def loop_orders(count: int, orders: int) -> list[np.ndarray]:
    """Orders of the val images: as they come (the issue's "first N"), then ``orders - 1`` shuffles."""
    return [np.arange(count)] + [np.random.default_rng(seed).permutation(count) for seed in range(1, orders)]


def run_loop(args, log) -> dict:
    """Corrections of the first N val images (N = 0, 5, 10, 25), evaluated on the others.

    The images after the first 25 are the test set of every N, so the points of a curve
    differ by their corrections only. So few test images make single runs noisy: the
    curve is the mean over ``--orders`` orders of the val images (the first as they come).
    """
    model, settings, model_name = prm_model(args.model)
    train, val = load_split("train", model.class_names), load_split("val", model.class_names)
    evaluated = cached_predictions(model, val, settings, args.out / "predictions" / "val", log=log)
    self_trained, _ = train_head(model, train, settings, cache=args.out / "samples", log=log, epochs=args.epochs,
                                 out=args.out / "selftrain.pt")
    rows, runs = [], []
    for number, order in enumerate(loop_orders(len(val), args.orders)):
        held_out = order[max(LOOP_SIZES):]
        test = val.subset(held_out)
        predictions = [evaluated[i][0] for i in held_out]
        baseline = evaluate_instances(test, predictions, [p.instances for p in predictions])
        run = {"order": number, "test_images": [str(p) for p in test.image_paths],
               "baseline": baseline["mAP_r"][0.5], "with_self_training": {}, "corrections_only": {}}
        rows.append(row(f"order {number}: PRM retrieval, built-in proposals (baseline)", baseline,
                        float(np.mean([evaluated[i][1] for i in held_out]))))
        for count in LOOP_SIZES:
            for alone in (False, True):
                if alone and count == 0:
                    continue
                corrections = corrections_of(val, order[:count])
                what = f"{count} corrected images only" if alone else f"self-training + {count} corrected images"
                try:
                    if count == 0:
                        head_model = self_trained.model
                    elif alone:
                        head_model = refine(model, corrections=corrections, predict_options=settings, device="cpu",
                                            epochs=args.epochs).model
                    else:
                        head_model = train_head(model, train, settings, cache=args.out / "samples",
                                                corrections=corrections, log=log, epochs=args.epochs)[0].model
                except ValueError as error:
                    if "nothing to learn" not in str(error):
                        raise
                    # what the widget does: it refuses to learn, and the model keeps PRM's retrieval
                    results, seconds = baseline, float(np.mean([evaluated[i][1] for i in held_out]))
                    what += " (nothing to learn: PRM retrieval kept)"
                else:
                    instances, seconds = head_instances_for(head_model, test, predictions)
                    results = evaluate_instances(test, predictions, instances)
                rows.append(row(f"order {number}: head, {what}", results, seconds))
                run["corrections_only" if alone else "with_self_training"][count] = results["mAP_r"][0.5]
                log(rows[-1])
        runs.append(run)
    plot_loop(runs, len(val) - max(LOOP_SIZES), args.figure)
    return {"model": model_name, "settings": settings, "load": load_text(), "rows": rows, "runs": runs}


def plot_loop(runs: list[dict], images: int, path: Path) -> None:
    """mAP^r .5 against the number of corrected images: the mean over the orders, their range as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.2, 3.5), dpi=120)
    for key, label, style, colour in (("with_self_training", "head: self-training + corrections", "o-", "#1f77b4"),
                                      ("corrections_only", "head: corrections only", "s--", "#ff7f0e")):
        # keys are ints, or strings when the runs come back from loop.json (``replot``)
        counts = sorted({int(c) for run in runs for c in run[key]})
        values = np.array([[100 * {int(c): v for c, v in run[key].items()}[c] for c in counts] for run in runs])
        mean = values.mean(0)
        axes.errorbar(counts, mean, yerr=[mean - values.min(0), values.max(0) - mean], fmt=style, color=colour,
                      capsize=3, label=label)
    baselines = [100 * run["baseline"] for run in runs]
    axes.axhline(np.mean(baselines), color="#7f7f7f", linestyle=":", label="PRM retrieval (baseline)")
    axes.set_xlabel("corrected images (ground truth of N val images)")
    axes.set_ylabel("mAP$^r$ .5 (%)")
    axes.set_xticks(list(LOOP_SIZES))
    orders = "the first N as listed" if len(runs) == 1 else f"mean and range of {len(runs)} orders"
    axes.set_title(f"coco128 val, {images} other images; {orders}", fontsize=9)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


#: Design choices measured on coco128 train only (``dev``): name -> (refine options, instance options).
DEV_VARIANTS = {
    "defaults": ({}, {}),
    "negatives (absent-class peaks learn empty masks)": ({"negatives": True}, {}),
    "60 epochs": ({"epochs": 60}, {}),
    "trust: min_relative_score 0.2": ({"target_options": {"min_relative_score": 0.2}}, {}),
    "trust: min_relative_score 0.8": ({"target_options": {"min_relative_score": 0.8}}, {}),
    "width 64": ({"width": 64}, {}),
    "mask threshold 0.4": ({}, {"mask_threshold": 0.4}),
    "NMS 0.3": ({}, {"nms_threshold": 0.3}),
    # the ground truth of the first 25 labelled images of the learning half stands in for corrections
    "25 corrected images only": ({"corrected": 25, "self_training": False}, {}),
    "25 corrected images only, negatives (peaks off their class's instances learn empty masks)":
        ({"corrected": 25, "self_training": False, "negatives": True}, {}),
    "self-training + 25 corrected images": ({"corrected": 25}, {}),
}


def run_dev(args, log) -> dict:
    """Two folds of coco128 train: self-train on one, evaluate on the labelled images of the other."""
    model, settings, model_name = prm_model(args.model)
    train = load_split("train", model.class_names)
    plain = cached_predictions(model, train, settings, args.out / "predictions" / "train", log=log)
    labelled = np.flatnonzero(train.labels.sum(1) > 0)
    folds = [np.arange(len(train))[fold::2] for fold in range(2)]
    names = args.variants or list(DEV_VARIANTS)
    rows, trained = [], {}
    for fold, (learn, test) in enumerate([(folds[0], folds[1]), (folds[1], folds[0])]):
        test = np.intersect1d(test, labelled)
        test_set, test_predictions = train.subset(test), [plain[i][0] for i in test]
        base = evaluate_instances(test_set, test_predictions, [p.instances for p in test_predictions])
        rows.append(row(f"fold {fold}: PRM retrieval (baseline)", base, 0.0))
        for name in names:
            options, instance_options = DEV_VARIANTS[name]
            key = json.dumps(options, sort_keys=True)
            if key not in trained:
                options = dict(options)
                corrected = options.pop("corrected", 0)
                corrections = corrections_of(train, np.intersect1d(learn, labelled)[:corrected])
                if options.pop("self_training", True):
                    trained[key] = train_head(model, train.subset(learn), settings, cache=args.out / "samples",
                                              corrections=corrections, log=log,
                                              **({"epochs": args.epochs} | options))[0].model
                else:
                    trained[key] = refine(model, corrections=corrections, predict_options=settings, device="cpu",
                                          **({"epochs": args.epochs} | options)).model
            instances, seconds = head_instances_for(trained[key], test_set, test_predictions, **instance_options)
            rows.append(row(f"fold {fold}: {name}", evaluate_instances(test_set, test_predictions, instances),
                            seconds))
            log(rows[-1])
        trained.clear()
    return {"model": model_name, "settings": settings, "load": load_text(), "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["selftrain", "loop", "dev", "replot"])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "refine")
    parser.add_argument("--model", default="imagenet-voc",
                        help="the PRM model: a built-in name or a checkpoint (default: imagenet-voc)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--orders", type=int, default=3, help="loop: orders of the val images averaged")
    parser.add_argument("--variants", nargs="*", default=None, choices=list(DEV_VARIANTS), metavar="VARIANT",
                        help=f"dev: the variants to measure, of {list(DEV_VARIANTS)} (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(*items):
        print(time.strftime("%H:%M:%S"), *items, flush=True)

    if args.experiment == "replot":
        runs = json.loads((args.out / "loop.json").read_text())["runs"]
        plot_loop(runs, len(runs[0]["test_images"]), args.figure)
        return 0
    log(f"load average {load_text()}")
    report = {"selftrain": run_selftrain, "loop": run_loop, "dev": run_dev}[args.experiment](args, log)
    report["load_after"] = load_text()
    (args.out / f"{args.experiment}.json").write_text(json.dumps(report, indent=2))
    if "rows" in report:
        text = markdown(report["rows"])
        if "head_minus_baseline_at_50" in report:
            d = report["head_minus_baseline_at_50"]
            text += (f"\nHead minus baseline, mAP^r .5 over {d['resamples']} paired bootstrap resamples of the "
                     f"images: {d['median']:+.1f} (90 % interval {d['interval_90'][0]:+.1f} to "
                     f"{d['interval_90'][1]:+.1f}), above 0 in {d['share_above_0']:.0%} of them.\n")
        (args.out / f"{args.experiment}.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
