"""Train PRM on coco128 train and evaluate on coco128 val (docs/benchmarks.md, "Training and evaluation on coco128").

Examples
--------
Train on the VOC-classes view with a CPU-sized budget, then evaluate::

    python benchmarks/train_coco128.py --view voc --out bench_out/voc
    python benchmarks/train_coco128.py --view all --out bench_out/all

Evaluate the ImageNet EfficientNet-Lite0 model without training (its
classifier rows averaged over the ImageNet classes that name each VOC class)::

    python benchmarks/train_coco128.py --view voc --baseline --out bench_out/imagenet

Each run writes ``model.pt`` (training), ``history.json``, ``results.json``
and ``results.md`` into ``--out`` and logs progress to stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from napari_prm.data import VOC_CLASSES, from_coco, voc_view
from napari_prm.evaluate import evaluate, report_json, report_markdown
from napari_prm.model.checkpoint import builtin_model, load_model
from napari_prm.train import _adapt_classes, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128" / "annotations"

# ImageNet classes that name a VOC class (torchvision's ImageNet names). Person has none.
IMAGENET_SYNONYMS = {
    "airplane": ["airliner", "warplane"],
    "bicycle": ["mountain bike", "bicycle-built-for-two"],
    "bird": list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147)),
    "boat": ["canoe", "speedboat", "lifeboat", "fireboat", "gondola", "yawl", "catamaran", "trimaran",
             "container ship", "liner", "schooner"],
    "bottle": ["beer bottle", "wine bottle", "water bottle", "pop bottle", "pill bottle"],
    "bus": ["school bus", "trolleybus", "minibus"],
    "car": ["sports car", "convertible", "cab", "jeep", "limousine", "minivan", "racer", "beach wagon", "Model T"],
    "cat": list(range(281, 286)),
    "chair": ["barber chair", "folding chair", "rocking chair"],
    "cow": ["ox"],
    "dining table": ["dining table"],
    "dog": list(range(151, 269)),
    "horse": ["sorrel"],
    "motorcycle": ["moped", "motor scooter"],
    "potted plant": ["pot"],
    "sheep": ["ram", "bighorn"],
    "couch": ["studio couch"],
    "train": ["passenger car", "electric locomotive", "steam locomotive", "freight car", "bullet train"],
    "tv": ["television", "monitor", "screen"],
}


def imagenet_voc_model(classes: list[str], input_size):
    """The built-in ImageNet model with one averaged classifier row per VOC class."""
    model = builtin_model("imagenet")
    names = model.class_names
    old = model.network.fcn.classifier
    new = torch.nn.Conv2d(old.in_channels, len(classes), kernel_size=1, bias=True)
    with torch.no_grad():
        for row, name in enumerate(classes):
            rows = [s if isinstance(s, int) else names.index(s) for s in IMAGENET_SYNONYMS[name]]
            new.weight[row] = old.weight[rows].mean(0)
            new.bias[row] = old.bias[rows].mean(0)
    model.network.fcn.classifier = new
    model.class_names = list(classes)
    model.input_size = tuple(input_size)
    return model


def load_split(split: str, view: str):
    dataset = from_coco(DATA / f"instances_{split}2017.json", require_positives=(split == "train"))
    return voc_view(dataset) if view == "voc" else dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--view", choices=["voc", "all"], default="voc")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--backbone-lr-mult", type=float, default=0.0)
    parser.add_argument("--sub-pixel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proposals", default="none", help="'none' skips retrieval (no mAP^r / ABO)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--baseline", action="store_true", help="evaluate the untrained ImageNet model")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --out/model.pt without training")
    parser.add_argument("--classes", default=None, help="';'-separated subset of classes to evaluate")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    size = (args.input_size, args.input_size)
    proposals = None if args.proposals == "none" else args.proposals
    log = lambda *a: print(time.strftime("%H:%M:%S"), *a, flush=True)  # noqa: E731

    if args.baseline:
        classes = [c for c in VOC_CLASSES if c in IMAGENET_SYNONYMS]
        model = imagenet_voc_model(classes, size)
    elif args.eval_only:
        model = load_model(args.out / "model.pt")
    else:
        train_set = load_split("train", args.view)
        log(f"train: {len(train_set)} images, {len(train_set.class_names)} classes")

        def progress(p):
            if p.stage == "epoch" or p.batch % 4 == 0:
                log(f"epoch {p.epoch}/{p.num_epochs} batch {p.batch}/{p.num_batches} "
                    f"loss {p.loss:.4f} {p.images_per_second:.2f} img/s ({p.stage})")

        started = time.perf_counter()
        result = train(train_set, out=args.out / "model.pt", epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, backbone_lr_mult=args.backbone_lr_mult, input_size=size,
                       sub_pixel_locating_factor=args.sub_pixel, device="cpu", seed=0,
                       resume=(args.out / "model.pt").is_file() or None, progress=progress)
        seconds = time.perf_counter() - started
        log(f"trained in {seconds:.0f} s")
        (args.out / "history.json").write_text(json.dumps(
            {"train_seconds_this_run": seconds, "settings": vars(args) | {"out": str(args.out)},
             "history": [vars(h) for h in result.history]}, indent=2))
        model = result.model
    if args.classes:
        model = _adapt_classes(copy.deepcopy(model), args.classes.split(";"))
    val_set = load_split("val", args.view)
    log(f"evaluating {len(model.class_names)} classes on {len(val_set)} val images, proposals={proposals}")
    results = evaluate(model, val_set, proposals=proposals, max_images=args.max_images,
                       progress=lambda done, total: log(f"eval {done}/{total}") if done % 10 == 0 else None)
    results["settings"].update(input_size=list(size), model=("imagenet-averaged" if args.baseline else "trained"))
    report_json(results, args.out / "results.json")
    (args.out / "results.md").write_text(report_markdown(results))
    log(report_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
