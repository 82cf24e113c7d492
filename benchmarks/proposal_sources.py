"""Which proposal source retrieves the best instances: 'default', 'default+prm' or 'prm'.

The default preset on the coco128 val images that show a class of the model; the built-in
proposals come from the ablation's cache (``benchmarks/accuracy_ablation.py``), the
PRM-guided ones are made from each image's PRMs. Prints mAP^r at .25/.5/.75 (pycocotools'
COCOeval, ``segm``), ABO, where instances are lost, the seconds per image the extra
proposals cost, and the load average.

::

    python benchmarks/proposal_sources.py --model imagenet-voc --cache bench_out/proposal_cache
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import napari_prm
from accuracy_ablation import cached_proposals, score_instances, val_images
from napari_prm.evaluate import InstanceMatcher
from napari_prm.proposals import make_proposals

SOURCES = ("default", "default+prm", "prm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="imagenet-voc", help="built-in name or checkpoint")
    parser.add_argument("--cache", type=Path, required=True, help="the ablation's proposal cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    import torch

    model, dataset, indices = val_images(args.model, args.threads)
    matchers = {k: InstanceMatcher(len(model.class_names)) for k in SOURCES}
    funnels = {k: defaultdict(int) for k in SOURCES}
    overlaps = {k: [] for k in SOURCES}
    seconds = dict.fromkeys(SOURCES, 0.0)
    load_start = os.getloadavg()
    for index in indices:
        image, truth = dataset.read_image(index), dataset.instances(index)
        builtin, _ = cached_proposals(args.cache, dataset.image_paths[index].stem, image)
        predictor = napari_prm.PRMPredictor(model, proposals=builtin)
        predictor.set_image(image)
        base = predictor.predict()
        for source in SOURCES:
            started = time.perf_counter()
            if source == "default":
                prediction, proposals = base, builtin
            else:
                proposals = make_proposals(source, image, prms=base.prms, model=model, prediction=base)
                predictor.set_proposals(proposals)
                prediction = predictor.predict()
                predictor.set_proposals(builtin)
            seconds[source] += time.perf_counter() - started
            score_instances(matchers[source], overlaps[source], funnels[source], prediction, truth,
                            proposals[:100])
    load_end = os.getloadavg()
    print(f"Model `{args.model}`, {len(indices)} coco128 val images, preset default; load average "
          f"{load_start[0]:.1f} → {load_end[0]:.1f}, {torch.get_num_threads()} torch threads.\n")
    print("| proposals | mAP^r .25 / .5 / .75 | ABO | GT with a peak / a proposal / retrieved | extra s / image |")
    print("| --- | --- | --- | --- | --- |")
    for source in SOURCES:
        maps, _ = matchers[source].evaluate((0.25, 0.5, 0.75))
        f = funnels[source]
        total = max(f["instances"], 1)
        abo = float(np.nanmean(np.concatenate(overlaps[source])))
        print(f"| `{source}` | {' / '.join(f'{100 * v:.1f}' for v in maps)} | {100 * abo:.1f} | "
              f"{100 * f['with_peak'] / total:.0f} % / {100 * f['with_proposal'] / total:.0f} % / "
              f"{100 * f['retrieved'] / total:.0f} % (of {f['instances']}) | {seconds[source] / len(indices):.2f} |")


if __name__ == "__main__":
    main()
