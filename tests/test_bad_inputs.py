"""Bad inputs at every public boundary (issue 11).

One table of hostile inputs for the command line and the library. Each case must be
refused with a message that names the file or the argument and says what is wrong (CLI:
exit status 2 and no traceback; API: ``ValueError``), and must lose nothing: every file of
the case's workspace (a checkpoint, earlier outputs, the inputs) is byte-identical after
the failed call and no file appears. Below the table: regression tests for the worst
findings of the issue, the pickle payload, and the top-level error handler.
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_prm import build_model, io, load_model, predict, retrieve_instances, save_model
from napari_prm.cli import main
from napari_prm.data import from_coco, from_csv, load_dataset
from napari_prm.evaluate import evaluate
from napari_prm.masks import greedy_mask_nms, segmentation_to_rle
from napari_prm.model.checkpoint import resolve_device
from napari_prm.proposals import combine_proposals, load_proposals, make_proposals
from napari_prm.train import train

CLASSES = ["cat", "dog"]


# --------------------------------------------------------------------------- workspace
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The files every case starts from (copied per case): a tiny model, images, a dataset
    CSV and COCO JSON, and a folder of earlier outputs that a failed run must not touch."""
    root = tmp_path_factory.mktemp("template")
    torch.manual_seed(0)
    model = build_model("tiny", CLASSES, pretrained=False, input_size=(32, 32))
    save_model(model, root / "tiny.pt")
    rng = np.random.default_rng(0)
    iio.imwrite(root / "img.png", rng.integers(0, 255, (24, 30, 3)).astype(np.uint8))
    tifffile.imwrite(root / "nan.tif", np.full((12, 12), np.nan, np.float32))
    (root / "afile").write_text("an existing file, not a folder")
    out = root / "out"
    out.mkdir()
    for suffix in ("_labels.tif", "_instances.json", "_instances.csv", "_peaks.csv"):
        (out / f"img{suffix}").write_bytes(b"earlier output " + suffix.encode())
    data = root / "data"
    data.mkdir()
    rows = ["image,labels"]
    for number in range(4):
        iio.imwrite(data / f"{number}.png", rng.integers(0, 255, (20, 20, 3)).astype(np.uint8))
        rows.append(f"{number}.png,{CLASSES[number % 2]}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    _write_json(root / "coco.json", _coco())
    return root


def _coco(**changes) -> dict:
    """A valid COCO dataset of data/0.png and data/1.png (20×20), one square per image."""
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
    coco = {
        "images": [{"id": 1, "file_name": "0.png", "height": 20, "width": 20},
                   {"id": 2, "file_name": "1.png", "height": 20, "width": 20}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": square, "iscrowd": 0,
             "area": 100.0, "bbox": [2, 2, 10, 10]},
            {"id": 2, "image_id": 2, "category_id": 2, "segmentation": square, "iscrowd": 0,
             "area": 100.0, "bbox": [2, 2, 10, 10]},
        ],
    }
    coco.update(changes)
    return coco


def _write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


@dataclass
class Workspace:
    root: Path

    def __getattr__(self, name: str) -> Path:  # ws.model, ws.image, ... -> files in root
        files = {"model": "tiny.pt", "image": "img.png", "nan_image": "nan.tif", "afile": "afile",
                 "out": "out", "data": "data", "csv": "data/labels.csv", "coco": "coco.json"}
        if name not in files:
            raise AttributeError(name)
        return self.root / files[name]

    def path(self, name: str) -> Path:
        return self.root / name

    def json(self, name: str, content) -> Path:
        return _write_json(self.root / name, content)

    def checkpoint(self, name: str, *, metadata: dict | None = None, state=None, drop=()) -> Path:
        """A .pt file like save_model's, with changed metadata or weights (save_model refuses bad ones)."""
        content = torch.load(self.model, weights_only=True)
        content["metadata"].update(metadata or {})
        for key in drop:
            del content["metadata"][key]
        if state is not None:
            state(content["state_dict"])
        torch.save(content, self.root / name)
        return self.root / name

    def image_file(self, name: str, array: np.ndarray) -> Path:
        iio.imwrite(self.root / name, array)
        return self.root / name


@pytest.fixture
def ws(template, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(template, root)
    return Workspace(root)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse's own usage errors
        status = exit_info.code
    return status, capsys.readouterr().err


# --------------------------------------------------------------------------- the table
def _nan_weight(state):
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = float("nan")


def _inf_weight(state):
    key = [k for k, v in state.items() if v.is_floating_point()][-1]
    state[key].view(-1)[-1] = float("inf")


def _tiny_model():
    return build_model("tiny", CLASSES, pretrained=False, input_size=(32, 32))


def _image():
    return np.random.default_rng(1).integers(0, 255, (24, 30, 3)).astype(np.uint8)


def _retrieval_inputs():
    prms = np.full((1, 8, 8), 1 / 64, np.float32)
    proposals = np.zeros((2, 8, 8), bool)
    proposals[0, :4, :4] = proposals[1, 2:, 2:] = True
    return prms, np.array([0]), np.ones((2, 4, 4), np.float32), proposals


def _retrieve(**options):
    return lambda ws: lambda: retrieve_instances(*_retrieval_inputs(), **options)


def _retrieve_with(prms=None, crms=None):
    def setup(ws):
        p, classes, c, proposals = _retrieval_inputs()
        if prms is not None:
            p = p.copy()
            p[0, 0, 0] = prms
        if crms is not None:
            c = c.copy()
            c[1, 1, 1] = crms
        return lambda: retrieve_instances(p, classes, c, proposals)
    return setup


def _release_proposals(items):
    def setup(ws):
        path = ws.json("proposals.json", items)
        return lambda: load_proposals(path)
    return setup


def _runs(*numbers) -> str:
    return base64.b64encode(np.array(numbers, "<u4").tobytes()).decode()


def _coco_proposals(segmentation, **image):
    def setup(ws):
        entry = {"id": 1, "file_name": "x.png", "height": 8, "width": 8} | image
        path = ws.json("proposals.json", {"images": [entry], "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1} | ({} if segmentation is None else
                                                           {"segmentation": segmentation})]})
        return lambda: load_proposals(path)
    return setup


def _coco_dataset(**changes):
    def setup(ws):
        path = ws.json("bad.json", _coco(**changes))
        return lambda: from_coco(path, ws.data)
    return setup


def _ground_truth(mutate):
    """The instances of the first image of a COCO dataset whose entries ``mutate`` broke."""
    def setup(ws):
        coco = _coco()
        mutate(coco)
        dataset = from_coco(ws.json("bad.json", coco), ws.data)
        return lambda: dataset.instances(0)
    return setup


def _instance_csv(row: str):
    def setup(ws):
        path = ws.path("x_instances.csv")
        path.write_text(",".join(io.INSTANCE_CSV_COLUMNS) + "\n" + row + "\n")
        return lambda: io.read_instances_csv(path)
    return setup


def _coco_labels(mutate):
    def setup(ws):
        coco = io.labels_to_coco(np.pad(np.ones((3, 3), np.uint16), 2), class_names=["a"])
        mutate(coco)
        path = ws.json("x_instances.json", coco)
        return lambda: io.coco_to_labels(path)
    return setup


def _train(**options):
    def setup(ws):
        dataset = from_csv(ws.csv)
        settings = dict(backbone="tiny", epochs=1, batch_size=2, input_size=(16, 16), device="cpu",
                        out=ws.path("model.pt")) | options
        return lambda: train(dataset, **settings)
    return setup


def _evaluate(**options):
    def setup(ws):
        dataset = from_coco(ws.coco, ws.data)
        return lambda: evaluate(load_model(ws.model), dataset, proposals=None, **options)
    return setup


def _load(**checkpoint):
    def setup(ws):
        path = ws.checkpoint("bad.pt", **checkpoint)
        return lambda: load_model(path)
    return setup


def _setattr(where: dict, key, value):
    def mutate(coco):
        where_ = coco[where["list"]][where["index"]]
        if value is _DROP:
            del where_[key]
        else:
            where_[key] = value
    return mutate


_DROP = object()


@dataclass
class Case:
    id: str
    match: str
    argv: tuple[str, ...] | None = None  # a command line, with {model}, {image}, ... from the workspace
    setup: object = None  # workspace -> zero-argument call that must raise ValueError


def cli(*argv: str, match: str) -> Case:
    return Case(id="cli " + " ".join(a.replace("{", "").replace("}", "") for a in argv), match=match, argv=argv)


def api(id: str, setup, match: str) -> Case:
    return Case(id=id, match=match, setup=setup)


PREDICT = ("predict", "{image}", "--out", "{out}", "--model", "{model}", "--proposals", "none")
TRAIN = ("train", "{csv}", "--backbone", "tiny", "--out", "{out}/new.pt")
EVALUATE = ("evaluate", "{coco}", "--image-dir", "{data}", "--model", "{model}", "--proposals", "none")
DEMO = ("demo", "{image}", "--model", "{model}", "--out", "{out}", "--no-view", "--proposals", "none")
BENCH = ("bench", "--model", "{model}")

CASES = [
    # ---- predict
    cli(*PREDICT, "--class-threshold", "nan", match=r"--class-threshold: expected a finite number, got nan"),
    cli(*PREDICT, "--class-threshold=-inf", match=r"--class-threshold: expected a finite number, got -inf"),
    cli(*PREDICT, "--peak-threshold", "nan", match=r"--peak-threshold: expected a finite number, got nan"),
    cli(*PREDICT, "--peak-threshold", "inf", match=r"--peak-threshold: .* got inf"),
    cli(*PREDICT, "--peak-batch-size", "0", match=r"--peak-batch-size: expected an integer >= 1, got 0"),
    cli(*PREDICT, "--peak-batch-size", "-1", match=r"--peak-batch-size: expected an integer >= 1, got -1"),
    cli("predict", "{image}", "--out", "{afile}", "--model", "{model}",
        match=r"--out: expected a folder, got .*afile, which is an existing file"),
    cli("predict", "{image}", "--out", "{afile}/sub", "--model", "{model}",
        match=r"--out: cannot create folder .*afile/sub: .*afile is a file"),
    cli(*PREDICT[:-1], "bogus", match=r"--proposals: expected 'none', .*'default', .* got 'bogus'"),
    cli(*PREDICT[:-1], "missing.json", match=r"--proposals: .* existing proposal file or folder; got 'missing.json'"),
    cli("predict", "{image}", "--out", "{out}", "--model", "{out}/missing.pt",
        match=r"cannot load model .*missing.pt.*does not exist"),
    cli("predict", "{image}", "--out", "{out}", "--model", "{afile}",
        match=r"cannot load model .*afile.*cannot read checkpoint"),
    cli("predict", "{image}", "--out", "{out}", "--model", "imagenet-vooc",
        match=r"cannot load model 'imagenet-vooc': 'imagenet-vooc' is neither a built-in model "
              r"\('imagenet', 'imagenet-voc', 'imagenet-coco'\) nor an existing checkpoint file .*"
              r"did you mean 'imagenet-voc'\?"),
    cli(*PREDICT, "--device", "bogus", match=r"--device: 'bogus' is not a torch device"),
    cli(*PREDICT, "--device", "cuda:99", match=r"napari-prm predict: error: --device: 'cuda:99' is not available"),
    cli(*PREDICT, "--classes", "unicorn", match=r"--classes: the model has no class \['unicorn'\]"),
    cli(*PREDICT, "--classes=-1", match=r"--classes: the model has no class \['-1'\]"),
    cli(*PREDICT, "--classes", "2", match=r"--classes: the model has no class \[2\]"),
    cli("predict", "{out}/missing.png", "--out", "{out}", "--model", "{model}",
        match=r"missing.png: no such file or folder.*\n.*no images to process"),
    # ---- train
    cli(*TRAIN, "--input-size", "0", "0", match=r"--input-size\[0\]: expected an integer >= 1, got 0"),
    cli(*TRAIN, "--input-size", "32", "-5", match=r"--input-size\[1\]: expected an integer >= 1, got -5"),
    cli(*TRAIN, "--lr", "nan", match=r"--lr: expected a finite number >= 0, got nan"),
    cli(*TRAIN, "--lr", "-0.1", match=r"--lr: expected a finite number >= 0, got -0.1"),
    cli(*TRAIN, "--momentum", "1.5", match=r"--momentum: expected a finite number in \[0, 1\), got 1.5"),
    cli(*TRAIN, "--weight-decay", "-1", match=r"--weight-decay: expected a finite number >= 0"),
    cli(*TRAIN, "--backbone-lr-mult", "inf", match=r"--backbone-lr-mult: expected a finite number >= 0, got inf"),
    cli(*TRAIN, "--val-fraction", "1", match=r"--val-fraction: expected a finite number in \[0, 1\), got 1.0"),
    cli(*TRAIN, "--epochs", "0", match=r"--epochs: expected an integer >= 1, got 0"),
    cli(*TRAIN, "--batch-size", "0", match=r"--batch-size: expected an integer >= 1, got 0"),
    cli(*TRAIN, "--sub-pixel-locating-factor", "0", match=r"--sub-pixel-locating-factor: expected an integer >= 1"),
    cli(*TRAIN, "--num-workers", "-1", match=r"--num-workers: expected an integer >= 0, got -1"),
    cli(*TRAIN, "--seed", "-1", match=r"--seed: expected an integer in \[0, 4.29497e\+09\], got -1"),
    cli("train", "{csv}", "--out", "{data}", match=r"--out: expected a file, got .*data, which is a folder"),
    cli("train", "{csv}", "--out", "{out}/m.safetensors", match=r"--out: .*write a .pt file, not .*m.safetensors"),
    cli("train", "{out}/missing.csv", "--out", "{out}/new.pt",
        match=r"cannot load dataset .*missing.csv.*does not exist"),
    cli("train", "{out}", "--out", "{out}/new.pt",
        match=r"cannot load dataset .*out: dataset folder .*out has no class sub-folders"),
    cli("train", "{csv_with_empty_image}", "--backbone", "tiny", "--out", "{out}/new.pt", "--epochs", "1",
        "--batch-size", "2", "--input-size", "16", "16", "--num-workers", "1",
        match=r"error: 1 image of .*broken.csv cannot be read; fix or remove it from the dataset \(nothing was "
              r"trained\):\n  .*empty.png \(declared at .*broken.csv:3\): the file is empty"),
    cli("train", "{csv}", "--model", "alexnet", "--out", "{out}/new.pt",
        match=r"--model: expected a checkpoint file \(.pt, .pth or .safetensors\) to fine-tune, a built-in model "
              r"to fine-tune \(imagenet, imagenet-voc, imagenet-coco\) or a backbone \(.*\); got 'alexnet'"),
    cli("train", "{csv}", "--model", "{out}/gone.pt", "--out", "{out}/new.pt",
        match=r"--model: no such checkpoint file: .*gone.pt"),
    cli("train", "{csv}", "--backbone", "tiny", "--out", "{model}", "--resume",
        match=r"tiny.pt holds no training state"),
    # ---- evaluate
    cli(*EVALUATE, "--iou-thresholds", "2.0", "nan", "-1",
        match=r"--iou-thresholds\[0\]: expected a finite number in \(0, 1\], got 2.0"),
    cli(*EVALUATE, "--iou-thresholds", "0.5", "nan", match=r"--iou-thresholds\[1\]: .* got nan"),
    cli(*EVALUATE, "--iou-thresholds", "0",
        match=r"--iou-thresholds\[0\]: expected a finite number in \(0, 1\], got 0.0"),
    cli(*EVALUATE, "--iou-thresholds", "0.5", "0.5", match=r"--iou-thresholds: expected distinct numbers"),
    cli(*EVALUATE, "--max-images", "0", match=r"--max-images: expected an integer >= 1, got 0"),
    cli(*EVALUATE, "--class-threshold", "nan", match=r"--class-threshold: expected a finite number, got nan"),
    cli(*EVALUATE, "--json", "{data}", match=r"--json: expected a file, got .*data, which is a folder"),
    cli(*EVALUATE, "--json", "{afile}/x.json", match=r"--json: cannot write .*afile/x.json: .*afile is a file"),
    cli(*EVALUATE[:-2], "--proposals", "bogus", match=r"--proposals: expected 'none'.* got 'bogus'"),
    cli("evaluate", "{coco_without_segmentation}", "--image-dir", "{data}", "--model", "{model}",
        "--proposals", "none", match=r"bad.json \(image id 1\): annotation id 1 has no 'segmentation'"),
    cli("evaluate", "{coco_without_height}", "--image-dir", "{data}", "--model", "{model}",
        "--proposals", "none", match=r"bad.json \(image id 1\): the image entry needs its size: height"),
    cli("evaluate", "{coco_with_small_rle}", "--image-dir", "{data}", "--model", "{model}",
        "--proposals", "none",
        match=r"bad.json \(image id 1\): annotation id 1: RLE: its size 10×10 differs from the image's 20×20"),
    cli("evaluate", "{coco_without_categories}", "--image-dir", "{data}", "--model", "{model}",
        match=r"cannot load dataset .*bad.json: COCO file .*bad.json has no categories"),
    # ---- demo
    cli("demo", "{nan_image}", "--model", "{model}", "--out", "{out}", "--no-view",
        match=r"nan.tif: the image contains NaN or infinite values"),
    cli("demo", "{out}/missing.png", "--model", "{model}", "--out", "{out}", "--no-view",
        match=r"IMAGE: no such image file: .*missing.png"),
    cli("demo", "{image}", "--model", "{model}", "--out", "{afile}", "--no-view",
        match=r"--out: expected a folder, got .*afile"),
    cli(*DEMO, "--class-threshold", "inf", match=r"--class-threshold: expected a finite number, got inf"),
    # ---- bench
    cli(*BENCH, "--size", "0", match=r"--size: expected an integer >= 32, got 0"),
    cli(*BENCH, "--size", "16", match=r"--size: expected an integer >= 32, got 16"),
    cli(*BENCH, "--peaks", "-1", match=r"--peaks: expected an integer >= 1, got -1"),
    cli(*BENCH, "--peaks", "0", match=r"--peaks: expected an integer >= 1, got 0"),
    cli(*BENCH, "--peak-batch-size", "-3", match=r"--peak-batch-size: expected an integer >= 1, got -3"),
    cli(*BENCH, "--out", "{afile}/file.md", match=r"--out: cannot write .*afile/file.md: .*afile is a file"),
    cli(*BENCH, "--out", "{out}", match=r"--out: expected a file, got .*out, which is a folder"),
    cli("frobnicate", match=r"invalid choice: 'frobnicate'"),

    # ---- predict (API)
    api("predict class_threshold nan", lambda ws: lambda: predict(_image(), _tiny_model(), class_threshold=np.nan),
        r"class_threshold: expected a finite number, got nan"),
    api("predict peak_threshold inf", lambda ws: lambda: predict(_image(), _tiny_model(), peak_threshold=np.inf),
        r"peak_threshold: expected a finite number, got inf"),
    api("predict peak_batch_size 0", lambda ws: lambda: predict(_image(), _tiny_model(), peak_batch_size=0),
        r"peak_batch_size: expected an integer >= 1, got 0"),
    api("predict peak_batch_size -1", lambda ws: lambda: predict(_image(), _tiny_model(), peak_batch_size=-1),
        r"peak_batch_size: expected an integer >= 1, got -1"),
    api("predict peak_batch_size 2.5", lambda ws: lambda: predict(_image(), _tiny_model(), peak_batch_size=2.5),
        r"peak_batch_size: expected an integer >= 1, got 2.5"),
    api("predict retrieval option", lambda ws: lambda: predict(_image(), _tiny_model(), retrieval={"nms_iou": 0.3}),
        r"retrieval: unknown option\(s\) \['nms_iou'\]"),
    api("predict max_peaks none", lambda ws: lambda: predict(_image(), _tiny_model(), max_peaks=None),
        r"max_peaks: expected an integer in \[1, 1000\], got None"),
    api("predict max_peaks huge", lambda ws: lambda: predict(_image(), _tiny_model(), max_peaks=10**6),
        r"max_peaks: expected an integer in \[1, 1000\], got 1000000"),
    api("predict unknown setting", lambda ws: lambda: predict(_image(), _tiny_model(), peak_treshold=3),
        r"unknown setting\(s\) \['peak_treshold'\]"),
    api("predict preset", lambda ws: lambda: predict(_image(), _tiny_model(), preset="paper"),
        r"preset: expected one of \('default', 'original'\) or a PredictSettings, got 'paper'"),
    api("predict points nan", lambda ws: lambda: predict(
        _image(), _tiny_model(), points=(np.array([[np.nan, 1.0]]), np.array([0]))),
        r"points: expected finite values, got 1 NaN"),
    # a path is read (tests/test_image_inputs.py); a missing one is named
    api("predict image path missing", lambda ws: lambda: predict(str(ws.path("cat.png")), _tiny_model()),
        r"cannot read image .*cat\.png: no such file$"),
    api("predict image nan", lambda ws: lambda: predict(np.full((8, 8), np.nan), _tiny_model()),
        r"the image contains NaN or infinite values"),
    api("predict model int", lambda ws: lambda: predict(_image(), 123),
        r"model: expected a PRMModel, a built-in model name \(imagenet, imagenet-voc, imagenet-coco\) or a checkpoint "
        r"path, got 123$"),
    # the arguments swapped: the image's values were printed as the "file path" expected
    api("predict model and image swapped", lambda ws: lambda: predict(_tiny_model(), _image()),
        r"model: expected a PRMModel, .* or a checkpoint path, got <uint8 24×30×3>$"),
    api("peak_response_maps class_threshold nan", lambda ws: lambda: _tiny_model().network.peak_response_maps(
        torch.zeros(1, 3, 16, 16), class_threshold=float("nan")), r"class_threshold: expected a finite number"),
    # ---- read_image
    api("read_image empty png", lambda ws: (ws.path("empty.png").write_bytes(b""),
                                            lambda: io.read_image(ws.path("empty.png")))[1],
        r"cannot read image .*empty.png: the file is empty \(0 bytes\)$"),
    api("read_image text png", lambda ws: (ws.path("text.png").write_text("hello"),
                                           lambda: io.read_image(ws.path("text.png")))[1],
        r"cannot read image .*text.png: not a PNG image, or a corrupt one \(its content is not recognised\)$"),
    # a file of no image format (a script given by mistake) said "not a PY image"
    api("read_image script", lambda ws: (ws.path("run.py").write_text("print(1)\n"),
                                         lambda: io.read_image(ws.path("run.py")))[1],
        r"cannot read image .*run.py: not an image: a '\.py' file, whose content no image reader recognises "
        r"\(images are \.png, \.jpg, .*\.webp\)$"),
    api("read_image folder", lambda ws: lambda: io.read_image(ws.data), r"cannot read image .*data: it is a folder"),
    # a TIFF header whose first page offset points nowhere: tifffile gives an empty array, no error
    api("read_image tiff without page", lambda ws: (ws.path("broken.tif").write_bytes(b"II*\x00garbage" * 10),
                                                    lambda: io.read_image(ws.path("broken.tif")))[1],
        r"cannot read image .*broken.tif: it holds no image: the TIFF header points to no readable page"),
    api("read_image 4-D stack", lambda ws: (tifffile.imwrite(ws.path("s.tif"), np.zeros((2, 3, 5, 6), np.uint8)),
                                            lambda: io.read_image(ws.path("s.tif")))[1],
        r"s.tif: expected one 2-D gray, RGB or RGBA image, got an array of shape \(2, 3, 5, 6\); it holds "
        r"several planes"),
    api("read_image 1x50 RGB is 1x50", lambda ws: (ws.image_file("row.png", np.zeros((1, 50, 3), np.uint8)),
                                                   lambda: io.as_rgb_float(io.read_image(ws.path("row.png"))))[1],
        r"the image must be at least 2×2 pixels; got 1×50$"),
    api("read_image 1x1 RGB is 1x1", lambda ws: (ws.image_file("dot.png", np.zeros((1, 1, 3), np.uint8)),
                                                 lambda: io.as_rgb_float(io.read_image(ws.path("dot.png"))))[1],
        r"the image must be at least 2×2 pixels; got 1×1$"),
    # ---- checkpoints
    api("checkpoint nan weight", _load(state=_nan_weight), r"checkpoint .*bad.pt: weight '.*' holds 1 NaN or infinite"),
    api("checkpoint inf weight", _load(state=_inf_weight), r"checkpoint .*bad.pt: weight '.*' holds 1 NaN or infinite"),
    api("checkpoint std 0", _load(metadata={"std": [0.2, 0.0, 0.2]}),
        r"checkpoint .*bad.pt: std\[1\]: expected a finite number > 0, got 0.0"),
    api("checkpoint std length 2", _load(metadata={"std": [0.2, 0.2]}),
        r"checkpoint .*bad.pt: std: expected 3 numbers, got 2"),
    api("checkpoint mean length 4", _load(metadata={"mean": [0.5] * 4}),
        r"checkpoint .*bad.pt: mean: expected 3 numbers, got 4"),
    api("checkpoint mean nan", _load(metadata={"mean": [float("nan"), 0.5, 0.5]}),
        r"checkpoint .*bad.pt: mean\[0\]: expected a finite number, got nan"),
    api("checkpoint format_version str", _load(metadata={"format_version": "1"}),
        r"checkpoint .*bad.pt: format_version: expected a positive integer, got '1'"),
    api("checkpoint format_version float", _load(metadata={"format_version": 1.5}),
        r"checkpoint .*bad.pt: format_version: expected a positive integer, got 1.5"),
    api("checkpoint format_version missing", _load(drop=["format_version"]),
        r"checkpoint .*bad.pt: format_version: expected a positive integer, got None"),
    api("checkpoint format_version newer", _load(metadata={"format_version": 99}),
        r"bad.pt was written by a newer napari-prm \(format 99\)"),
    api("checkpoint input_size 0", _load(metadata={"input_size": [0, 32]}),
        r"checkpoint .*bad.pt: input_size\[0\]: expected an integer >= 1, got 0"),
    api("checkpoint input_size one number", _load(metadata={"input_size": [32]}),
        r"checkpoint .*bad.pt: input_size: expected \(height, width\) or None, got \[32\]"),
    api("checkpoint duplicate classes", _load(metadata={"class_names": ["cat", "cat"]}),
        r"checkpoint .*bad.pt: class_names: expected unique names, got duplicates \['cat'\]"),
    api("checkpoint no classes", _load(metadata={"class_names": []}),
        r"checkpoint .*bad.pt: class_names: expected at least one class"),
    api("checkpoint class names not str", _load(metadata={"class_names": [1, 2]}),
        r"checkpoint .*bad.pt: class_names: expected a list of strings, got \[1, 2\]"),
    api("checkpoint unknown backbone", _load(metadata={"backbone": "alexnet"}),
        r"checkpoint .*bad.pt: backbone: expected one of .*got 'alexnet'"),
    api("checkpoint win_size even", _load(metadata={"settings": {"win_size": 2}}),
        r"checkpoint .*bad.pt: settings.win_size: expected an odd integer, got 2"),
    api("checkpoint peak_filter", _load(metadata={"settings": {"peak_filter": "mode"}}),
        r"checkpoint .*bad.pt: settings.peak_filter: expected 'median', 'mean', 'max', a number or null"),
    api("checkpoint class_threshold nan", _load(metadata={"settings": {"class_threshold": float("nan")}}),
        r"checkpoint .*bad.pt: settings.class_threshold: expected a finite number, got nan"),
    api("checkpoint garbage bytes", lambda ws: (ws.path("junk.pt").write_bytes(b"\x00junk" * 50),
                                                lambda: load_model(ws.path("junk.pt")))[1],
        r"cannot read checkpoint .*junk.pt: it is"),
    api("built-in name as a path", lambda ws: lambda: load_model(Path("imagenet-voc")),
        r"'imagenet-voc' is neither a built-in model .* did you mean 'imagenet-voc' \(a str, not a path\)\?"),
    api("checkpoint that is a text file", lambda ws: (ws.path("notes.pt").write_text("hello"),
                                                      lambda: load_model(ws.path("notes.pt")))[1],
        r"cannot read checkpoint .*notes.pt: it is truncated, corrupt or not a napari-prm checkpoint "
        r"\(napari-prm writes .pt/.pth files with torch.save and .safetensors files with safetensors\)$"),
    api("checkpoint safetensors nan", lambda ws: _safetensors_with_nan(ws),
        r"checkpoint .*bad.safetensors: weight '.*' holds 1 NaN or infinite"),
    api("save_model nan over a good checkpoint", lambda ws: _save_nan_model(ws),
        r"cannot save model to .*tiny.pt: weight '.*' holds 1 NaN or infinite"),
    api("save_model to a folder", lambda ws: lambda: save_model(_tiny_model(), ws.data),
        r"path: expected a file, got .*data, which is a folder"),
    api("resolve_device bogus", lambda ws: lambda: resolve_device("bogus"), r"device: 'bogus' is not a torch device"),
    api("resolve_device missing gpu", lambda ws: lambda: resolve_device("cuda:99"),
        r"device: 'cuda:99' is not available on this machine"),
    api("build_model class names string", lambda ws: lambda: build_model("tiny", "cat", pretrained=False),
        r"class_names: expected a list of names, got the string 'cat'"),
    api("build_model peak_filter", lambda ws: lambda: build_model("tiny", CLASSES, pretrained=False, peak_filter="x"),
        r"build_model: settings.peak_filter: expected 'median', 'mean', 'max'"),
    api("build_model input_size 0", lambda ws: lambda: build_model("tiny", CLASSES, pretrained=False,
                                                                    input_size=(0, 8)),
        r"input_size\[0\]: expected an integer >= 1, got 0"),
    # ---- train / evaluate (API)
    api("train dataset str", lambda ws: lambda: train("data.csv"),
        r"dataset: expected a LabeledImageDataset .*got str"),
    api("train lr nan", _train(lr=float("nan")), r"lr: expected a finite number >= 0, got nan"),
    api("train momentum 1", _train(momentum=1.0), r"momentum: expected a finite number in \[0, 1\), got 1.0"),
    api("train input_size 0 0", _train(input_size=(0, 0)), r"input_size\[0\]: expected an integer >= 1, got 0"),
    api("train out folder", lambda ws: _train(out=ws.data)(ws), r"out: expected a file, got .*data, which is a folder"),
    api("train epochs 0", _train(epochs=0), r"epochs: expected an integer >= 1, got 0"),
    api("train batch_size 0", _train(batch_size=0), r"batch_size: expected an integer >= 1, got 0"),
    api("train val_fraction nan", _train(val_fraction=float("nan")), r"val_fraction: expected a finite number"),
    api("evaluate iou 2", _evaluate(iou_thresholds=[2.0]),
        r"iou_thresholds\[0\]: expected a finite number in \(0, 1\]"),
    api("evaluate iou none", _evaluate(iou_thresholds=[]), r"iou_thresholds: expected at least one number, got none"),
    api("evaluate iou nan", _evaluate(iou_thresholds=[0.5, float("nan")]), r"iou_thresholds\[1\]: .* got nan"),
    api("evaluate max_images 0", _evaluate(max_images=0), r"max_images: expected an integer >= 1, got 0"),
    api("evaluate dataset None", lambda ws: lambda: evaluate(_tiny_model(), None),
        r"dataset: expected a LabeledImageDataset .*got NoneType"),
    # ---- retrieve_instances
    api("retrieve nan prms", _retrieve_with(prms=np.nan), r"prms: expected finite values, got 1 NaN"),
    api("retrieve inf crms", _retrieve_with(crms=np.inf), r"crms: expected finite values, got 1 NaN or infinite"),
    api("retrieve nms nan", _retrieve(nms_threshold=float("nan")),
        r"nms_threshold: expected a finite number in \[0, 1\], got nan"),
    api("retrieve nms 1.5", _retrieve(nms_threshold=1.5),
        r"nms_threshold: expected a finite number in \[0, 1\], got 1.5"),
    api("retrieve contour 0", _retrieve(contour_width=0), r"contour_width: expected an integer >= 1, got 0"),
    api("retrieve proposal_count -1", _retrieve(proposal_count=-1),
        r"proposal_count: expected an integer >= 0, got -1"),
    api("retrieve size_limits nan", _retrieve(size_limits=(0, float("nan"))), r"size_limits\[1\]: .* got nan"),
    api("retrieve balance nan", _retrieve(balance={1: float("nan")}),
        r"balance\[1\]: expected a finite number, got nan"),
    api("retrieve penalty inf", _retrieve(penalty=[0.1, float("inf")]),
        r"penalty\[1\]: expected a finite number, got inf"),
    # ---- proposal files
    api("proposals malformed json", lambda ws: (ws.path("p.json").write_text('[{"data": '),
                                                lambda: load_proposals(ws.path("p.json")))[1],
        r"proposal file .*p.json is not valid JSON: Expecting value: line 1"),
    api("proposals not utf-8", lambda ws: (ws.path("p.json").write_bytes(b'["\xff\xfe"]'),
                                           lambda: load_proposals(ws.path("p.json")))[1],
        r"proposal file .*p.json is not valid JSON: .*codec can't decode"),
    api("proposals bad base64", _release_proposals([{"data": _runs(1, 2), "shape": [3, 4]},
                                                    {"data": "@@not base64@@", "shape": [3, 4]}]),
        r"proposal file .*proposals.json: proposal 1: data is not valid base64"),
    api("proposals base64 of 3 bytes", _release_proposals([{"data": base64.b64encode(b"abc").decode(),
                                                            "shape": [3, 4]}]),
        r"proposals.json: proposal 0: data holds 3 bytes, expected 4-byte integers"),
    api("proposals missing shape", _release_proposals([{"data": _runs(1, 2), "shape": [3, 4]},
                                                       {"data": _runs(1, 2)}]),
        r"proposals.json: proposal 1: expected an object with 'data' and 'shape'"),
    api("proposals shape 0", _release_proposals([{"data": _runs(1, 2), "shape": [0, 4]}]),
        r"proposals.json: proposal 0: shape\[0\]: expected an integer >= 1, got 0"),
    api("proposals odd polygon", _coco_proposals([[1, 1, 5, 1, 5]]),
        r"proposals.json: annotation 0: polygon 0: expected an even number of coordinates \(x, y pairs\), got 5"),
    api("proposals garbage rle", _coco_proposals({"size": [8, 8], "counts": "garbage!!"}),
        r"proposals.json: annotation 0: RLE: counts: character 'r' at position 2 is not a COCO RLE character"),
    api("proposals without segmentation", _coco_proposals(None),
        r"proposals.json: annotation 0: expected an object with a 'segmentation'"),
    api("proposals polygon without image size", _coco_proposals([[1, 1, 5, 1, 5, 5]], height=None),
        r"proposals.json: annotation 0: polygon segmentation without an image size"),
    api("proposals npy nan", lambda ws: (np.save(ws.path("p.npy"), np.full((2, 4, 4), np.nan)),
                                         lambda: load_proposals(ws.path("p.npy")))[1],
        r"p.npy: expected finite values, got 32 NaN or infinite value\(s\)"),
    api("proposals npy pickle", lambda ws: (np.save(ws.path("p.npy"), np.array([{}], dtype=object)),
                                            lambda: load_proposals(ws.path("p.npy")))[1],
        r"cannot read proposal file .*p.npy: Object arrays cannot be loaded when allow_pickle=False"),
    api("make_proposals nan stack", lambda ws: lambda: make_proposals(np.full((1, 24, 30), np.nan), _image()),
        r"mask stack: expected finite values"),
    # ---- masks
    api("rle garbage", lambda ws: lambda: segmentation_to_rle({"size": [5, 5], "counts": "~~~"}, 5, 5),
        r"RLE: counts: character '~' at position 0 is not a COCO RLE character"),
    api("rle truncated", lambda ws: lambda: segmentation_to_rle({"size": [5, 5], "counts": "P"}, 5, 5),
        r"RLE: counts end in the middle of a number \(truncated\)"),
    api("rle short", lambda ws: lambda: segmentation_to_rle({"size": [5, 5], "counts": "="}, 5, 5),
        r"RLE: counts cover 13 pixels, but the mask has 5×5 = 25 \(corrupt counts\)"),
    api("rle negative", lambda ws: lambda: segmentation_to_rle({"size": [5, 5], "counts": [30, -5]}, 5, 5),
        r"RLE: counts: a run has a negative length"),
    api("rle size differs", lambda ws: lambda: segmentation_to_rle({"size": [4, 5], "counts": [20]}, 5, 5),
        r"RLE: its size 4×5 differs from the image's 5×5"),
    api("polygon nan", lambda ws: lambda: segmentation_to_rle([[1, 1, 4, np.nan, 4, 4]], 5, 5),
        r"polygon 0: holds NaN or infinite coordinates"),
    api("nms nan", lambda ws: lambda: greedy_mask_nms(np.ones((2, 3, 3), bool), float("nan")),
        r"iou_threshold: expected a finite number, got nan"),
    api("combine nan", lambda ws: lambda: combine_proposals(np.ones((2, 3, 3), bool), iou_threshold=np.nan),
        r"iou_threshold: expected a finite number in \[0, 1\], got nan"),
    # ---- dataset loaders
    api("coco no categories", _coco_dataset(categories=[]), r"COCO file .*bad.json has no categories"),
    api("coco no category used", _coco_dataset(categories=[{"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}]),
        r"COCO file .*bad.json: no annotation uses any of its 2 categories"),
    api("coco duplicate category", _coco_dataset(categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}]),
        r"COCO file .*bad.json: category name 'cat' is used by ids 1 and 2"),
    api("coco image without file_name", _coco_dataset(images=[{"id": 1, "height": 20, "width": 20}]),
        r"COCO file .*bad.json: image 0 needs an 'id' and a 'file_name'"),
    api("coco annotation without category", _coco_dataset(annotations=[{"id": 1, "image_id": 1}]),
        r"COCO file .*bad.json: annotation 0 needs an 'image_id' and a 'category_id'"),
    api("coco bad json", lambda ws: (ws.path("bad.json").write_text("{"),
                                     lambda: from_coco(ws.path("bad.json"), ws.data))[1],
        r"cannot read COCO annotations .*bad.json: Expecting property name"),
    api("csv latin-1", lambda ws: (ws.path("l.csv").write_bytes(b"image,labels\n0.png,caf\xe9\n"),
                                   lambda: from_csv(ws.path("l.csv"), ws.data))[1],
        r"CSV file .*l.csv is not UTF-8 text \(line 2\): save it as UTF-8"),
    api("csv without labels", lambda ws: (ws.path("l.csv").write_text("image,labels\n0.png,\n"),
                                          lambda: from_csv(ws.path("l.csv"), ws.data))[1],
        r"dataset .*l.csv has no classes: no image is labelled"),
    api("load_dataset None", lambda ws: lambda: load_dataset(None), r"dataset: expected a file path, got None"),
    api("ground truth without segmentation",
        _ground_truth(_setattr({"list": "annotations", "index": 0}, "segmentation", _DROP)),
        r"bad.json \(image id 1\): annotation id 1 has no 'segmentation'"),
    api("ground truth without width", _ground_truth(_setattr({"list": "images", "index": 0}, "width", _DROP)),
        r"bad.json \(image id 1\): the image entry needs its size: width: expected an integer >= 1, got None"),
    api("ground truth rle size", _ground_truth(_setattr({"list": "annotations", "index": 0}, "segmentation",
                                                        {"size": [20, 10], "counts": [200]})),
        r"bad.json \(image id 1\): annotation id 1: RLE: its size 20×10 differs from the image's 20×20"),
    api("ground truth garbage rle", _ground_truth(_setattr({"list": "annotations", "index": 0}, "segmentation",
                                                           {"size": [20, 20], "counts": "a1b2"})),
        r"bad.json \(image id 1\): annotation id 1: RLE: counts"),
    api("ground truth odd polygon", _ground_truth(_setattr({"list": "annotations", "index": 0}, "segmentation",
                                                           [[2, 2, 12, 2, 12]])),
        r"bad.json \(image id 1\): annotation id 1: polygon 0: expected an even number of coordinates"),
    # ---- exporters and readers (io)
    api("instance csv negative id", _instance_csv("-3,cat,0,4,0,0,2,2,0.5"),
        r"cannot read instance CSV .*x_instances.csv: line 2: id -3: expected a label >= 1"),
    api("instance csv duplicate id", lambda ws: (ws.path("x_instances.csv").write_text(
        ",".join(io.INSTANCE_CSV_COLUMNS) + "\n1,cat,0,4,0,0,2,2,\n1,dog,1,4,0,0,2,2,\n"),
        lambda: io.read_instances_csv(ws.path("x_instances.csv")))[1],
        r"x_instances.csv: line 3: id 1 is listed twice"),
    api("instance csv class -2", _instance_csv("1,cat,-2,4,0,0,2,2,"),
        r"x_instances.csv: line 2: class_index -2: expected -1 \(unknown\) or a class index >= 0"),
    api("instance csv bbox inverted", _instance_csv("1,cat,0,4,5,0,2,2,"),
        r"x_instances.csv: line 2: bbox \[5, 0, 2, 2\]: expected 0 <= y0 <= y1"),
    api("instance csv not a number", _instance_csv("one,cat,0,4,0,0,2,2,"),
        r"x_instances.csv: line 2: invalid literal for int\(\) with base 10: 'one'"),
    api("write_coco_json nan over a file", lambda ws: lambda: io.write_coco_json(
        ws.out / "img_instances.json", {"annotations": [{"score": float("nan")}]}),
        r"cannot write COCO JSON .*img_instances.json: Out of range float values"),
    api("write_prms nan over a file", lambda ws: (np.save(ws.path("p.npy"), np.zeros((1, 2, 2), np.float32)),
                                                  lambda: io.write_prms(ws.path("p.npy"),
                                                                        np.full((1, 2, 2), np.nan)))[1],
        r"prms: expected finite values, got 4 NaN"),
    api("export_instances out is a file", lambda ws: lambda: io.export_instances(
        np.ones((3, 3), np.uint16), None, None, ws.afile),
        r"out: expected a folder, got .*afile, which is an existing file"),
    api("prediction_paths stem with ..", lambda ws: lambda: io.prediction_paths(ws.out, "../escape"),
        r"stem: expected a file name stem without folder separators, got '../escape'"),
    api("write_label_image onto a folder", lambda ws: (ws.path("d.tif").mkdir(),
                                                       lambda: io.write_label_image(ws.path("d.tif"),
                                                                                    np.ones((2, 2), np.uint16)))[1],
        r"cannot write .*d.tif: it is a folder"),
    api("coco_to_labels without height", _coco_labels(lambda coco: coco["images"][0].pop("height")),
        r"x_instances.json: image 1 needs its size: height: expected an integer >= 1, got None"),
    api("coco_to_labels without segmentation", _coco_labels(lambda coco: coco["annotations"][0].pop("segmentation")),
        r"x_instances.json: annotation 1 has no 'segmentation'"),
    api("coco_to_labels garbage rle", _coco_labels(lambda coco: coco["annotations"][0]["segmentation"].update(
        counts="zz")), r"x_instances.json: annotation 1: cannot decode segmentation: RLE: counts"),
    api("coco_to_labels label 0", _coco_labels(lambda coco: coco["annotations"][0].update(label=0)),
        r"x_instances.json: annotation 1: label: expected an integer >= 1, got 0"),
    api("labels_to_coco image_id", lambda ws: lambda: io.labels_to_coco(np.ones((2, 2), np.uint16), image_id="x"),
        r"image_id: expected an integer, got 'x'"),
]


def _safetensors_with_nan(ws):
    from safetensors.torch import save_file

    content = torch.load(ws.model, weights_only=True)
    _nan_weight(content["state_dict"])
    path = ws.path("bad.safetensors")
    save_file({k: v.contiguous() for k, v in content["state_dict"].items()}, path,
              metadata={"napari_prm": json.dumps(content["metadata"])})
    return lambda: load_model(path)


def _save_nan_model(ws):
    model = load_model(ws.model)
    with torch.no_grad():
        next(model.network.parameters()).view(-1)[0] = float("nan")
    return lambda: save_model(model, ws.model)


_CLI_FILES = {
    "coco_without_segmentation": lambda ws: ws.json("bad.json", _coco(annotations=[
        {k: v for k, v in a.items() if k != "segmentation"} if a["id"] == 1 else a
        for a in _coco()["annotations"]])),
    "coco_without_height": lambda ws: ws.json("bad.json", _coco(images=[
        {k: v for k, v in im.items() if k != "height"} if im["id"] == 1 else im for im in _coco()["images"]])),
    "coco_with_small_rle": lambda ws: ws.json("bad.json", _coco(annotations=[
        a | {"segmentation": {"size": [10, 10], "counts": [100]}} if a["id"] == 1 else a
        for a in _coco()["annotations"]])),
    "coco_without_categories": lambda ws: ws.json("bad.json", _coco(categories=[])),
    "csv_with_empty_image": lambda ws: _csv_with_empty_image(ws),
}


def _csv_with_empty_image(ws) -> Path:
    (ws.data / "empty.png").write_bytes(b"")
    path = ws.data / "broken.csv"
    path.write_text("image,labels\n0.png,cat\nempty.png,dog\n1.png,dog\n")
    return path


def test_the_table_is_big_enough():
    assert len(CASES) >= 80
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_by_name_and_loses_nothing(case, ws, capsys):
    if case.argv is not None:
        fields = {name: str(getattr(ws, name)) for name in
                  ("model", "image", "nan_image", "afile", "out", "data", "csv", "coco")}
        fields |= {name: str(make(ws)) for name, make in _CLI_FILES.items()
                   if "{" + name + "}" in " ".join(case.argv)}
        argv = [part.format(**fields) for part in case.argv]
        before = snapshot(ws.root)
        status, stderr = run_cli(argv, capsys)
        assert status == 2, stderr
        assert "Traceback" not in stderr
        assert len(stderr.strip().splitlines()[-1]) < 600
        import re

        assert re.search(case.match, stderr), stderr
    else:
        call = case.setup(ws)
        before = snapshot(ws.root)
        with pytest.raises(ValueError, match=case.match):
            call()
    assert snapshot(ws.root) == before


# --------------------------------------------------------------------------- the worst findings
def test_finding_1_peak_batch_size_below_one_is_refused(ws, capsys):
    """A batch size < 1 made an empty range of batches: all-zero PRMs, exit 0 (finding 4 too)."""
    model = load_model(ws.model)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for size in (0, -1, -16):
        with pytest.raises(ValueError, match=f"peak_batch_size: expected an integer >= 1, got {size}"):
            model.network.peak_response_maps(x, peak_batch_size=size)
    result = model.network.peak_response_maps(x, class_threshold=-1e9, peak_batch_size=1)
    assert len(result.peaks) > 0
    assert torch.allclose(result.prms.flatten(1).sum(1), torch.ones(len(result.peaks)))


def test_finding_1_the_number_of_peaks_is_capped(ws):
    """--class-threshold=-1e9 once selected 13,718 peaks and allocated all their PRMs at once."""
    torch.manual_seed(0)
    model = build_model("tiny", CLASSES, pretrained=False, input_size=(128, 128), peak_filter=None)
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3)).astype(np.uint8)
    prediction = predict(image, model, class_threshold=-1e9, proposals=None)
    assert len(prediction.peaks) == 50 and prediction.prms.shape == (50, 128, 128)
    assert len(prediction.notes) == 1 and "the 50 strongest were kept (max_peaks=50)" in prediction.notes[0]
    found = int(prediction.notes[0].split()[0])
    assert found > 200 and prediction.peaks_found == found  # what the thresholds let through
    # The strongest peaks are the ones kept.
    everything = predict(image, model, class_threshold=-1e9, proposals=None, max_peaks=1000)
    assert len(everything.peaks) == found and not everything.notes and everything.peaks_found == found
    np.testing.assert_allclose(prediction.peak_values, everything.peak_values[:50])


def test_finding_3_a_one_row_rgb_image_stays_one_row(ws, capsys):
    """read_image squeezed every axis of length 1: a 1×N RGB PNG became N×3 gray."""
    row = ws.image_file("row.png", np.full((1, 50, 3), 200, np.uint8))
    assert io.read_image(row).shape == (1, 50, 3)
    assert io.read_image(ws.image_file("dot.png", np.zeros((1, 1, 3), np.uint8))).shape == (1, 1, 3)
    column = ws.image_file("column.png", np.zeros((50, 1, 3), np.uint8))
    assert io.read_image(column).shape == (50, 1, 3)
    tifffile.imwrite(ws.path("plane.tif"), np.arange(30, dtype=np.uint16).reshape(1, 5, 6))
    np.testing.assert_array_equal(io.read_image(ws.path("plane.tif")), np.arange(30).reshape(5, 6))
    tifffile.imwrite(ws.path("one.tif"), np.zeros((5, 6, 1), np.uint16))
    assert io.read_image(ws.path("one.tif")).shape == (5, 6)
    iio.imwrite(ws.path("one.gif"), np.full((5, 6, 3), 9, np.uint8))
    assert io.read_image(ws.path("one.gif")).shape == (5, 6, 3)

    out = ws.path("predicted")
    status = main(["predict", str(row), "--out", str(out), "--model", str(ws.model), "--proposals", "none"])
    stderr = capsys.readouterr().err
    assert status == 1
    assert f"{row}: failed: the image must be at least 2×2 pixels; got 1×50" in stderr
    assert [p.name for p in out.iterdir()] == ["summary.csv"]  # no outputs; the run's summary says why


def test_finding_4_negative_peak_counts_exit_2(ws, capsys):
    before = snapshot(ws.root)
    for argv in (["predict", str(ws.image), "--out", str(ws.out), "--model", str(ws.model),
                  "--peak-batch-size", "-1", "--overwrite"],
                 ["bench", "--model", str(ws.model), "--peaks", "-1"]):
        status, stderr = run_cli(argv, capsys)
        assert status == 2 and "expected an integer >= 1, got -1" in stderr
    assert snapshot(ws.root) == before


def test_finding_5_a_diverging_training_keeps_the_last_good_checkpoint(ws, capsys):
    """train --lr nan wrote a NaN checkpoint with exit 0; now NaN is refused, and a run whose
    loss turns NaN stops with a clear error and leaves the checkpoint as it was."""
    dataset = from_csv(ws.csv)
    settings = dict(backbone="tiny", batch_size=2, input_size=(16, 16), device="cpu", seed=0)
    out = ws.path("model.pt")
    train(dataset, out=out, epochs=1, **settings)
    good = out.read_bytes()
    with pytest.raises(ValueError, match=r"training diverged in epoch 1: the loss became nan at batch 2 "
                                         r"\(lr=1e\+30; try a smaller lr, the command line's --lr\); "
                                         r".*model.pt was left as it was"):
        train(dataset, out=out, epochs=3, lr=1e30, overwrite=True, **settings)
    assert out.read_bytes() == good
    model = load_model(out)
    assert all(bool(torch.isfinite(p).all()) for p in model.network.parameters())

    # --overwrite: replacing the model is asked for, and still the diverging run keeps it
    status, stderr = run_cli(["train", str(ws.csv), "--backbone", "tiny", "--out", str(out),
                              "--epochs", "2", "--batch-size", "2", "--input-size", "16", "16",
                              "--lr", "1e30", "--overwrite"], capsys)
    assert status == 2 and "training diverged in epoch 1" in stderr and "Traceback" not in stderr
    assert out.read_bytes() == good


def test_finding_5_nan_thresholds_and_weights_no_longer_give_plausible_output(ws, capsys):
    status, stderr = run_cli(["evaluate", str(ws.coco), "--image-dir", str(ws.data), "--model", str(ws.model),
                              "--iou-thresholds", "2.0", "nan", "-1"], capsys)
    assert status == 2 and "mAP" not in capsys.readouterr().out
    nan_model = ws.checkpoint("nan.pt", state=_nan_weight)
    status, stderr = run_cli(["predict", str(ws.image), "--out", str(ws.path("o")), "--model", str(nan_model)],
                             capsys)
    assert status == 2 and "nan.pt: weight" in stderr and not ws.path("o").exists()
    zero_std = ws.checkpoint("std0.pt", metadata={"std": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match=r"std0.pt: std\[0\]: expected a finite number > 0, got 0.0"):
        load_model(zero_std)


# --------------------------------------------------------------------------- safe loading
class _Payload:
    """Unpickling this creates a file: proof that the pickle ran."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "the payload ran"))


def test_a_pickle_payload_in_a_checkpoint_never_runs(ws, capsys):
    side_effect = ws.path("side_effect.txt")
    zip_format = ws.path("evil.pt")
    content = torch.load(ws.model, weights_only=True)
    content["extra"] = {"training": _Payload(side_effect)}
    torch.save(content, zip_format)
    legacy = ws.path("evil_legacy.pth")
    legacy.write_bytes(pickle.dumps({"metadata": _Payload(side_effect), "state_dict": {}}, protocol=2))
    for path in (zip_format, legacy):
        with pytest.raises(ValueError, match=rf"cannot read checkpoint {path}: it is corrupt, or holds "
                                             r"Python objects other than tensors.*refuses to run"):
            load_model(path)
        status, stderr = run_cli(["predict", str(ws.image), "--out", str(ws.path("o")), "--model", str(path)],
                                 capsys)
        assert status == 2 and "refuses to run" in stderr
        with pytest.raises(ValueError, match="refuses to run"):
            train(from_csv(ws.csv), resume=path, out=path)
    assert not side_effect.exists()


# --------------------------------------------------------------------------- the top-level handler
def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(ws, capsys, monkeypatch):
    import napari_prm.cli as cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_run_bench", broken)
    status, stderr = run_cli(["bench"], capsys)
    assert status == 1
    assert stderr == ("napari-prm bench: error: unexpected RuntimeError: boom; "
                      "run with --debug for the traceback\n")
    for argv in (["--debug", "bench"], ["bench", "--debug"]):
        status, stderr = run_cli(argv, capsys)
        assert status == 1
        assert "Traceback (most recent call last)" in stderr and 'raise RuntimeError("boom")' in stderr
        assert stderr.endswith("napari-prm bench: error: unexpected RuntimeError: boom\n")



def test_debug_shows_a_user_errors_traceback_too(ws, capsys):
    """``--debug`` prints the traceback of a user error as well (where the message came from),
    as its help and the docs now say (they said: of an unexpected error); without it, one line."""
    argv = ["predict", str(ws.image), "--out", str(ws.path("o")), "--model", "no-such-model"]
    status, stderr = run_cli(argv, capsys)
    assert status == 2 and "Traceback" not in stderr
    assert stderr.endswith("'no-such-model' is neither a built-in model ('imagenet', 'imagenet-voc', "
                           "'imagenet-coco') nor an existing checkpoint file (.pt, .pth or .safetensors)\n")
    status, stderr = run_cli([*argv, "--debug"], capsys)
    assert status == 2
    assert "Traceback (most recent call last)" in stderr and "in load_model" in stderr

def test_a_failing_image_says_why_without_a_traceback(ws, capsys):
    """One bad image among good ones: exit 1, its reason on one line, the others written."""
    ws.path("empty.png").write_bytes(b"")
    out = ws.path("o")
    status = main(["predict", str(ws.image), str(ws.path("empty.png")), "--out", str(out),
                   "--model", str(ws.model), "--proposals", "none"])
    stderr = capsys.readouterr().err
    assert status == 1 and "Traceback" not in stderr
    assert f"{ws.path('empty.png')}: failed: cannot read image {ws.path('empty.png')}: the file is empty" in stderr
    assert "pip install" not in stderr
    assert sorted(p.name for p in out.iterdir()) == [f"img{s}" for s in (
        ".manifest.json", "_instances.csv", "_instances.json", "_labels.tif", "_peaks.csv")] + ["summary.csv"]
