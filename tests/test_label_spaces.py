"""The built-in model's label spaces: groups of ImageNet classes, their maps and their thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from skimage import data

import napari_prm
from napari_prm.model.checkpoint import BUILTIN_MODELS, builtin_calibration
from napari_prm.model.label_spaces import GroupedClassifier, builtin_label_spaces


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 12, kernel_size=1)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    return layer


@pytest.mark.parametrize("reduce", ["mean", "max", "lse"])
def test_a_group_map_reduces_its_members_maps(conv, reduce):
    members = [[0, 3, 5], [7], [1, 2, 11, 4]]
    features = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = conv(features)
        grouped = GroupedClassifier(conv, members, reduce)(features)
    assert grouped.shape == (2, 3, 5, 6)
    for row, group in enumerate(members):
        maps = full[:, group]
        expected = {"mean": maps.mean(1), "max": maps.amax(1),
                    "lse": torch.logsumexp(maps, 1) - np.log(len(group))}[reduce]
        torch.testing.assert_close(grouped[:, row], expected, rtol=1e-5, atol=1e-5)


def test_grouping_refuses_bad_groups(conv):
    with pytest.raises(ValueError, match="at least one member"):
        GroupedClassifier(conv, [[0], []])
    with pytest.raises(ValueError, match=r"member indices must lie in \[0, 12\)"):
        GroupedClassifier(conv, [[0, 12]])
    with pytest.raises(ValueError, match="reduce must be one of"):
        GroupedClassifier(conv, [[0]], "median")


def test_the_spaces_name_imagenet_classes_once_per_group():
    spaces = builtin_label_spaces()
    voc, coco = spaces["imagenet-voc"], spaces["imagenet-coco"]
    assert len(voc.class_names) == 19 and "person" not in voc.class_names
    assert set(voc.class_names) < set(coco.class_names)
    names = napari_prm.model.checkpoint.imagenet_class_names()
    cat = dict(zip(voc.class_names, voc.members))["cat"]
    assert [names[i] for i in cat] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    dog = dict(zip(voc.class_names, voc.members))["dog"]
    assert len(dog) == 118 and names[dog[0]] == "Chihuahua" and names[dog[-1]] == "Mexican hairless"
    for space in spaces.values():
        for group in space.members:
            assert len(set(group)) == len(group) and all(0 <= i < 1000 for i in group)
        flat = [i for group in space.members for i in group]
        assert len(flat) == len(set(flat)), f"{space.name}: an ImageNet class in two groups"
    # ImageNet's "kite" (index 21) is a bird of prey: it belongs to bird, and COCO's kite is not covered
    assert 21 in dict(zip(coco.class_names, coco.members))["bird"] and "kite" not in coco.class_names


def test_coco_names_are_cocos(shared_data):
    import json

    categories = json.loads((shared_data / "coco128" / "annotations" / "instances_val2017.json").read_text())
    names = {c["name"] for c in categories["categories"]}
    for space in builtin_label_spaces().values():
        assert set(space.class_names) <= names


def test_every_builtin_model_ships_its_thresholds():
    calibration = builtin_calibration()
    for name in BUILTIN_MODELS:
        assert np.isfinite(calibration[name]["class_threshold"])
        assert np.isfinite(calibration[name]["peak_threshold"])


@pytest.mark.slow
def test_the_voc_space_maps_are_the_mean_of_their_imagenet_maps():
    imagenet, voc = napari_prm.load_model("imagenet"), napari_prm.load_model("imagenet-voc")
    assert voc.class_names[7] == "cat" and voc.settings["label_space"] == "imagenet-voc"
    assert voc.settings["class_threshold"] == builtin_calibration()["imagenet-voc"]["class_threshold"]
    x = imagenet.preprocess(data.chelsea())
    with torch.no_grad():
        full = imagenet.network.fcn(x)[0]
        grouped = voc.network.fcn(x)[0]
    torch.testing.assert_close(grouped[7], full[[281, 282, 283, 284, 285]].mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_chelsea_with_the_default_thresholds():
    """imagenet-voc sees one cat; the 1000-class space keeps at most 3 peaks, of its top class."""
    voc = napari_prm.predict(data.chelsea(), "imagenet-voc")
    assert len(voc.instances) == 1
    (cat,) = voc.instances
    assert voc.class_names[cat.class_index] == "cat"
    assert cat.mask.mean() >= 0.5
    for image in (data.chelsea(), data.coffee()):
        imagenet = napari_prm.predict(image, "imagenet", proposals=None)
        assert 1 <= len(imagenet.peaks) <= 3
        assert set(imagenet.peak_classes.tolist()) == {int(np.argmax(imagenet.scores))}
