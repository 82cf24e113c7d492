"""The figure of docs/accuracy.md: six coco128 val images, their peaks and the instances retrieved.

One row per image: the image; its peaks (a cross per peak, coloured by class, with
the class name); the instances the default preset retrieves (each mask in its
class's colour, outlined), beside the ground truth of the model's classes. The
images are the first six val images that show at least two of the model's classes
or two instances of one (a fixed choice, not a selection by result).

::

    python benchmarks/accuracy_figure.py --model imagenet-voc --out docs/images/accuracy_examples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import napari_prm
from napari_prm.data import from_coco

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "coco128" / "annotations" / "instances_val2017.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="imagenet-voc")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "accuracy_examples.png")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--preset", default="default", choices=("default", "original"))
    args = parser.parse_args()
    # after parsing: --help needs no matplotlib, which napari-prm does not install
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    if not VAL.is_file():
        raise SystemExit(f"coco128 not found: {VAL}")
    model = napari_prm.load_model(args.model)
    dataset = from_coco(VAL, require_positives=False).with_classes(model.class_names)
    chosen = []
    for index in range(len(dataset)):
        truth = dataset.instances(index)
        keep = ~truth.iscrowd
        if len(np.unique(truth.class_indices[keep])) >= 2 or keep.sum() >= 2:
            chosen.append(index)
        if len(chosen) == args.count:
            break
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:, :3]
    figure, axes = plt.subplots(len(chosen), 3, figsize=(12, 3.2 * len(chosen)))
    predictor = napari_prm.PRMPredictor(model, preset=args.preset)
    for row, index in enumerate(chosen):
        image = dataset.read_image(index)
        truth = dataset.instances(index)
        predictor.set_image(image)
        prediction = predictor.predict()
        rgb = napari_prm.io.as_rgb_float(image)
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title(dataset.image_paths[index].name, fontsize=9)
        axes[row, 1].imshow(rgb)
        for (y, x), cls, value in zip(prediction.peaks, prediction.peak_classes, prediction.peak_values):
            axes[row, 1].plot(x, y, "+", color=colours[cls % 20], ms=14, mew=3)
            axes[row, 1].text(x + 6, y, f"{model.class_names[cls]} {value:.1f}", color="white", fontsize=8,
                              bbox={"facecolor": colours[cls % 20], "alpha": 0.7, "pad": 1, "lw": 0})
        axes[row, 1].set_title(f"{len(prediction.peaks)} peaks", fontsize=9)
        overlay = rgb.copy()
        for instance in prediction.instances:
            colour = colours[instance.class_index % 20]
            overlay[instance.mask] = 0.45 * overlay[instance.mask] + 0.55 * colour
            overlay[find_boundaries(instance.mask)] = colour
        for mask in truth.masks[~truth.iscrowd]:
            overlay[find_boundaries(mask, mode="outer")] = (1.0, 1.0, 1.0)
        axes[row, 2].imshow(overlay)
        names = sorted({model.class_names[i.class_index] for i in prediction.instances})
        axes[row, 2].set_title(f"{len(prediction.instances)} instances ({', '.join(names) or 'none'}); "
                               "white: ground truth", fontsize=9)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=55)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
