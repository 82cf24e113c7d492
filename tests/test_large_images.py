"""Large images: the predictor holds the built-in proposals at their working size.

Instances must be those of the full-size proposal stack (what predict used before, and
what a user-supplied stack still is), on ordinary photos and on an enlarged one.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from skimage import data

import napari_prm
from napari_prm import PRMPredictor
from napari_prm.masks import ScaledMasks
from napari_prm.proposals import default_proposals

#: Thresholds low enough that the VOC model finds several instances in both photos.
LOW = dict(class_threshold=-2.0, peak_threshold=0.0)


@pytest.fixture(scope="module")
def model():
    return napari_prm.load_model("imagenet-voc", device="cpu")


def _key(prediction):
    return [(i.class_index, i.proposal, i.peak, i.score) for i in prediction.instances]


def _assert_same_instances(scaled, full):
    assert _key(scaled) == _key(full)
    for a, b in zip(scaled.instances, full.instances):
        assert a.mask.shape == b.mask.shape
        np.testing.assert_array_equal(a.mask, b.mask)


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
@pytest.mark.parametrize("preset", ["default", "original"])
def test_builtin_proposals_held_small_give_the_full_stacks_instances(model, name, preset):
    image = getattr(data, name)()  # 300×451 and 400×600: both above the 320-pixel working size
    predictor = PRMPredictor(model, preset=preset, proposals="default")
    predictor.set_image(image)
    runs = [{}, LOW, dict(LOW, retrieval_grid="image"), dict(LOW, output_grid="network")]
    held = [predictor.predict(**settings) for settings in runs]
    assert isinstance(predictor._proposals, ScaledMasks)
    assert sum(len(p.instances) for p in held) >= 6  # something to compare
    predictor.set_proposals(default_proposals(image))  # the full-size stack, as a user gives one
    for settings, scaled in zip(runs, held):
        _assert_same_instances(scaled, predictor.predict(**settings))


def test_an_enlarged_photo_keeps_small_proposals_and_the_same_instances(model):
    cat = data.chelsea()
    big = np.repeat(np.repeat(cat, 6, axis=0), 6, axis=1)  # 1800×2706
    predictor = PRMPredictor(model, proposals="default")
    predictor.set_image(big)
    tracemalloc.start()
    try:
        scaled = predictor.predict(**LOW)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    held = predictor._proposals
    assert isinstance(held, ScaledMasks) and held.shape[1:] == big.shape[:2]
    # 300 masks at the 213×320 working size (20 MB), not at 1800×2706 (1.46 GB)
    assert held.nbytes <= 300 * 213 * 320
    # The full-size stack alone took 1.46 GB and generating it peaked at 2.05 GB (traced);
    # now predict's numpy peak (image-sized PRMs included) measured 361 MiB.
    assert peak < 768 * 2**20
    assert len(scaled.instances) >= 3
    # Retrieval reads the first 100 proposals, and greedy NMS keeps the same first 100
    # when it stops at 100: the old path's stack without its 200 unused masks.
    predictor.set_proposals(default_proposals(big, max_proposals=100))
    # identical, not only within nearest-neighbour rounding: the resizes are composed exactly
    _assert_same_instances(scaled, predictor.predict(**LOW))


def _traced_proposals(image):
    """The built-in proposals of ``image`` and the peak of the memory Python traced making them."""
    tracemalloc.start()
    try:
        proposals = default_proposals(image, scaled=True)
        return proposals, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_image_is_shrunk_for_its_proposals_without_blurring_it_whole():
    """The built-in proposals of a 2560×2560 photo: the anti-aliasing Gaussian ran on the whole
    image's floats (a second copy of them, traced peak 2.0× their size; 14 s on a 6000×6000
    image), now on 4×4 block means (peak 1.0×). The proposals still match the photo's own: the
    50 best of the 512×512 original each find one of the enlarged image's at a mean IoU of 0.88
    (0.87 before)."""
    photo = data.astronaut()
    big = np.repeat(np.repeat(photo, 5, axis=0), 5, axis=1)
    floats = big.size * 8  # as_rgb_float's float64 copy, which the proposals start from
    enlarged, peak = _traced_proposals(big)
    assert peak < 1.5 * floats, peak / floats
    own = default_proposals(photo, scaled=True)
    assert enlarged.masks.shape == own.masks.shape == (300, 320, 320)
    best = own.masks[:50].reshape(50, -1).astype(np.float64)
    found = enlarged.masks.reshape(len(enlarged.masks), -1).astype(np.float64)
    inter = best @ found.T
    iou = inter / (best.sum(1)[:, None] + found.sum(1)[None] - inter)
    assert iou.max(axis=1).mean() > 0.85


def test_a_large_gray_image_is_shrunk_before_its_channel_is_repeated():
    """A 2560×2560 gray image became three float64 copies of itself (RGB) before its shrink:
    a traced peak of 4.3 times one copy. Its one channel is shrunk first now (2.3 times: the
    normalisation's copies), and its proposals are those of the same image given as RGB."""
    gray = np.repeat(np.repeat(data.camera(), 5, axis=0), 5, axis=1)
    one_copy = gray.size * 8
    from_gray, peak = _traced_proposals(gray)
    assert peak < 3 * one_copy, peak / one_copy
    from_rgb = default_proposals(np.repeat(gray[..., None], 3, axis=-1), scaled=True)
    assert from_gray.masks.shape == (300, 320, 320)
    np.testing.assert_array_equal(from_gray.masks, from_rgb.masks)


def test_a_gray_image_reaches_the_network_without_an_rgb_copy(model):
    """The forward pass of a 2560×2560 gray image made it RGB floats at full size first (a
    traced peak of 4.0 times one float32 copy of it); its one channel is resized now and
    repeated at the network's size (1.25 times), and the maps are those of its RGB, bit for bit."""
    gray = np.repeat(np.repeat(data.camera(), 5, axis=0), 5, axis=1)
    predictor = PRMPredictor(model, proposals=None)
    tracemalloc.start()
    try:
        predictor.set_image(gray)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * gray.size * 4, peak / (gray.size * 4)
    from_gray = predictor.crms.copy()
    predictor.set_image(np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(from_gray, predictor.crms)
    np.testing.assert_array_equal(predictor.class_response_maps(gray), predictor.crms)
