"""How often an instance's alternative masks hold the object its mask missed (docs/accuracy.md).

With the default preset and ``alternatives=3`` (what the widget's *Next alternative mask*,
``Shift-A``, offers), over the coco128 images of a split that show a class of the model: of
the instances whose peak lies on a ground-truth instance of its class (non-crowd), how many
chose a mask at IoU ≥ .5 with it; of the others, how many have a proposal among the first 100
that would (so could be fixed at all), and how many reach IoU ≥ .5 with their first, first two
or first three alternatives (what one, two or three presses give).

Example
-------
::

    python benchmarks/alternative_masks.py --split val --out OUT
    python benchmarks/alternative_masks.py --split train --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import napari_prm
from accuracy_ablation import cached_proposals, val_images
from napari_prm.evaluate import peak_instances
from napari_prm.masks import mask_iou

ALTERNATIVES = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="imagenet-voc", help="built-in name or checkpoint")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json")
    parser.add_argument("--cache", type=Path, default=None, help="proposal cache (default: <out>/../proposal_cache)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    model, dataset, indices = val_images(args.model, args.threads, args.split)
    cache = args.cache or args.out.parent / "proposal_cache"
    counts = {"on_object": 0, "right": 0, "wrong": 0, "fixable": 0, "fixed": [0] * ALTERNATIVES,
              "with_alternatives": 0, "instances": 0}
    load_start, started = os.getloadavg(), time.perf_counter()
    for done, index in enumerate(indices, start=1):
        image, truth = dataset.read_image(index), dataset.instances(index)
        proposals, _ = cached_proposals(cache, dataset.image_paths[index].stem, image)
        predictor = napari_prm.PRMPredictor(model, proposals=proposals)
        predictor.set_image(image)
        prediction = predictor.predict(alternatives=ALTERNATIVES)
        counts["instances"] += len(prediction.instances)
        counts["with_alternatives"] += sum(bool(i.alternatives) for i in prediction.instances)
        if prediction.instances and len(truth.masks):
            owners = peak_instances(prediction.peaks[[i.peak for i in prediction.instances]],
                                    [i.class_index for i in prediction.instances], truth.masks,
                                    truth.class_indices, truth.iscrowd)
            for instance, owner in zip(prediction.instances, owners):
                if owner < 0:
                    continue
                counts["on_object"] += 1
                target = truth.masks[owner][None]
                if mask_iou(target, instance.mask[None])[0, 0] >= 0.5:
                    counts["right"] += 1
                    continue
                counts["wrong"] += 1
                counts["fixable"] += bool((mask_iou(target, proposals[:100]) >= 0.5).any())
                masks = predictor.alternative_masks(instance)
                hits = mask_iou(target, np.array(masks))[0] >= 0.5 if masks else np.zeros(0, bool)
                for presses in range(ALTERNATIVES):
                    counts["fixed"][presses] += bool(hits[: presses + 1].any())
        print(f"  {done}/{len(indices)} images, {time.perf_counter() - started:.0f} s", flush=True)
    meta = {"model": args.model, "split": args.split, "images": len(indices), "alternatives": ALTERNATIVES,
            "load_average_start_end": [load_start, os.getloadavg()], "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{args.split}.json").write_text(json.dumps({"meta": meta, "counts": counts}, indent=2))
    fixed = " / ".join(str(n) for n in counts["fixed"])
    print(f"| {args.split} ({len(indices)} images) | {counts['instances']} ({counts['with_alternatives']} with "
          f"alternatives) | {counts['on_object']} | {counts['right']} | {counts['wrong']} | {counts['fixable']} | "
          f"{fixed} |")


if __name__ == "__main__":
    main()
