"""The "original" preset reproduces the official release's instance retrieval.

The reference below re-states, step by step, what the official
``PeakResponseMapping.instance_seg`` and ``instance_nms`` do (Zhou et al.'s
PRM-pytorch): proposals resized to the PRMs' grid by nearest neighbour, the class
response map byte-scaled and resized bicubically as an 8-bit image, background =
``value < 0.95 * mean``, a loop over the first 100 proposals with the size limits,
the score ``0.8 * PRM inside + PRM on the contour - 1e-5 * background inside``
(the contour is the morphological gradient by a 5×5 square), a PRM whose sum is 0
giving no instance (its 0/0 normalisation made every score NaN), then greedy NMS
at IoU 0.3 merging the PRMs. It is written with Pillow and scipy.ndimage in place
of ``scipy.misc.imresize`` and OpenCV, loop by loop, to be obviously right rather
than fast; the package's vectorised retrieval must make the same choices with the
same scores on the original demo's MCG proposals.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

import napari_prm
from napari_prm.io import read_image
from napari_prm.masks import resize_nearest
from napari_prm.proposals import load_proposals


def _imresize_bytes(array: np.ndarray, shape: tuple[int, int], resample) -> np.ndarray:
    """scipy.misc.imresize: byte-scale (min..max -> 0..255), then resize the 8-bit image."""
    array = np.asarray(array, dtype=np.float64)
    low, high = array.min(), array.max()
    scale = 255.0 / (high - low) if high > low else 1.0
    data = (np.clip((array - low) * scale, 0, 255) + 0.5).astype(np.uint8)
    return np.asarray(Image.fromarray(data).resize(shape[::-1], resample))


def reference_instance_seg(crms, peak_classes, prms, proposals, *, contour_width=5, size_limits=(2e-5, 0.85),
                           proposal_count=100, nms_threshold=0.3, param=(0.95, 1e-5, 0.8)):
    """One (score, class, mask, prm, proposal index) per kept instance, as the official code."""
    bg_factor, penalty, balance = param
    height, width = prms.shape[1:]
    area = height * width
    square = np.ones((contour_width, contour_width), bool)
    instances = []
    for k in range(len(prms)):
        total = prms[k].sum()
        if not total > 0:
            continue  # the official prm / prm.sum() is NaN here: no proposal ever scores higher
        class_response = _imresize_bytes(crms[peak_classes[k]], (height, width), Image.Resampling.BICUBIC)
        background = (class_response < bg_factor * class_response.mean()).astype(np.float32)
        best, best_mask, best_index = -np.inf, None, -1
        for j in range(min(proposal_count, len(proposals))):
            mask = _imresize_bytes(proposals[j].astype(int), (height, width), Image.Resampling.NEAREST) > 0
            dilated = ndi.binary_dilation(mask, structure=square, border_value=0)
            eroded = ndi.binary_erosion(mask, structure=square, border_value=1)
            contour = dilated & ~eroded
            mask_area = mask.sum()
            if mask_area >= size_limits[1] * area or mask_area < size_limits[0] * area:
                continue
            value = balance * prms[k][mask].sum() + prms[k][contour].sum() - penalty * background[mask].sum()
            if value > best:
                best, best_mask, best_index = value, mask, j
        if best_mask is not None:
            instances.append([best, int(peak_classes[k]), best_mask, prms[k].copy(), best_index, k])
    instances.sort(key=lambda item: item[0], reverse=True)
    kept = []
    while instances:
        first = instances.pop(0)
        kept.append(first)
        survivors = []
        for other in instances:
            intersection = np.logical_and(first[2], other[2]).sum()
            union = np.logical_or(first[2], other[2]).sum()
            if intersection / (union + 1e-10) < nms_threshold:
                survivors.append(other)
            else:
                first[3] += other[3]
        instances = survivors
    return kept


@pytest.fixture(scope="module")
def voc_model():
    return napari_prm.load_model("imagenet-voc")


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["sample0", "sample1", "sample2"])
def test_original_preset_matches_the_reference_port(voc_model, sample, shared_data):
    demo = shared_data / "prm_demo"
    image = read_image(demo / f"{sample}.jpg")
    proposals = load_proposals(demo / f"{sample}.json", image.shape[:2])
    # Thresholds low enough to give several peaks on the built-in model's scale.
    predictor = napari_prm.PRMPredictor(voc_model, preset="original", proposals=proposals,
                                        class_threshold=0.0, peak_threshold=4.0)
    predictor.set_image(image)
    prediction = predictor.predict()
    assert len(prediction.peaks_crm) >= 2
    prms_network = predictor.peak_response_maps(prediction.peaks_crm).numpy()
    expected = reference_instance_seg(prediction.crms, prediction.peak_classes, prms_network, proposals)
    got = prediction.instances
    assert len(got) == len(expected) >= 1
    for instance, (score, cls, mask, _, index, peak) in zip(got, expected, strict=True):
        assert instance.peak == peak
        assert instance.class_index == cls
        assert instance.proposal == index
        # float32 sums over ~1e5 pixels (sparse products) against the reference's float32
        # pairwise sums: equal to about 1e-4 relative.
        assert instance.score == pytest.approx(score, rel=1e-3, abs=1e-6)
        # The preset's masks are the reference's network-grid masks, resized back to the image
        # by nearest neighbour (the original stops at the network grid).
        assert np.array_equal(instance.mask, resize_nearest(mask[None], image.shape[:2])[0])
