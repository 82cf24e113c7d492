"""What the widget relies on to reuse one image's work in `PRMPredictor`: another proposal
source without a new forward pass, thresholds resolved as runs use them, and peak
candidates found once per image."""

import numpy as np
import pytest
import torch

from napari_prm import PRMPredictor, build_model, preset_settings
from napari_prm.peaks import select_peaks
from napari_prm.predictor import resolve_thresholds


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny", ["cat", "dog", "bird"], pretrained=False, input_size=(64, 64))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)


def two_halves(image):
    """A proposal source that counts its calls: the left and the right half of the image."""
    calls = []

    def source(img):
        calls.append(1)
        masks = np.zeros((2,) + img.shape[:2], bool)
        masks[0, :, : img.shape[1] // 2] = True
        masks[1, :, img.shape[1] // 2:] = True
        return masks

    return source, calls


def test_another_proposal_source_keeps_the_forward_pass_and_the_prms(tiny, image):
    left_right, calls = two_halves(image)
    predictor = PRMPredictor(tiny, proposals=left_right, peak_threshold=-1.0, max_peaks=3)
    forwards = []
    hook = tiny.network.fcn.register_forward_hook(lambda *_: forwards.append(1))
    try:
        predictor.set_image(image)
        first = predictor.predict()
        assert len(first.peaks) == 3 and calls == [1] and len(forwards) == 1
        predictor.predict(peak_threshold=-1.0)
        assert calls == [1]  # computed once per image
        predictor.set_proposals(left_right)  # the same source: kept
        predictor.predict()
        assert calls == [1]

        top_bottom = np.zeros(image.shape[:2], np.uint16)
        top_bottom[: image.shape[0] // 2] = 1
        top_bottom[image.shape[0] // 2:] = 2
        predictor.set_proposals(top_bottom)  # a label image
        second = predictor.predict()
        assert len(forwards) == 1 and predictor.cached_peak_count == 3
        np.testing.assert_array_equal(second.prms, first.prms)
        halves = {tuple(np.flatnonzero(np.any(i.mask, axis=1))[[0, -1]]) for i in second.instances}
        assert halves <= {(0, 23), (24, 47)} and halves  # rows of the top or the bottom half

        predictor.set_proposals(None)  # peaks and PRMs only
        assert predictor.predict().instances == []
        predictor.set_proposals("default")
        predictor.set_proposals("default")
        assert predictor.proposal_source == "default"
    finally:
        hook.remove()


def test_thresholds_resolve_to_the_settings_then_the_model_then_none():
    calibrated = {"class_threshold": 1.5, "peak_threshold": 7.0}
    assert resolve_thresholds(preset_settings(), calibrated) == (1.5, 7.0)
    assert resolve_thresholds(preset_settings(), {}) == (0.0, None)
    assert resolve_thresholds(preset_settings(peak_threshold=2.0), calibrated) == (1.5, 2.0)
    assert resolve_thresholds(preset_settings("original"), calibrated) == (0.0, 30.0)


def test_rethresholding_finds_the_same_peaks_as_a_fresh_selection(tiny, image):
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    net = tiny.network
    factor = predictor.settings.sub_pixel_locating_factor
    for peak_threshold in (None, 0.0, float(np.median(predictor.crms))):
        for classes in (None, ["dog"]):
            cached = predictor.select_peaks(peak_threshold=peak_threshold, classes=classes, max_peaks=200)
            fresh = select_peaks(predictor.crms, scores=predictor.scores, peak_threshold=peak_threshold,
                                 class_threshold=0.0, classes=None if classes is None else [1],
                                 suppression_radius=predictor.settings.suppression_radius * factor,
                                 max_peaks=200, win_size=net.win_size, peak_filter=net.peak_filter)
            np.testing.assert_array_equal(cached.peaks, fresh.peaks)
            np.testing.assert_array_equal(cached.runner_up_classes, fresh.runner_up_classes)
