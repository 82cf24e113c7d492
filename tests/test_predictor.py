"""PRMPredictor: one forward pass per image, PRMs cached per peak, identical to the engine's."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_prm
from napari_prm import PRMPredictor, build_model, preset_settings
from napari_prm.model.prm import TTA_SCALES


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("tiny", ["a", "b", "c"], pretrained=False, input_size=(64, 64))
    with torch.no_grad():
        model.network.fcn.classifier.weight.normal_(std=0.5)
    return model.to("cpu")


@pytest.fixture
def image():
    return np.random.default_rng(5).integers(0, 255, (70, 90, 3), dtype=np.uint8)


class Counter:
    """Counts calls of a real module's forward (the module still computes)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1

    def close(self):
        self.handle.remove()


def test_prms_equal_the_engines(tiny, image):
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    prediction = predictor.predict(max_peaks=20)
    assert len(prediction.peaks) > 3
    x = tiny.preprocess(image)
    network = tiny.network
    network.sub_pixel_locating_factor, kept = 8, network.sub_pixel_locating_factor
    try:
        reference = network.peak_response_maps(x, peaks=torch.from_numpy(prediction.peaks_crm))
    finally:
        network.sub_pixel_locating_factor = kept
    cached = predictor.peak_response_maps(prediction.peaks_crm)
    torch.testing.assert_close(cached, reference.prms, rtol=0, atol=0)
    np.testing.assert_allclose(predictor.crms, reference.crms.numpy(), rtol=0, atol=0)


def test_one_forward_pass_for_thresholds_points_and_proposals(tiny, image):
    proposal_calls = []

    def proposals(img):
        proposal_calls.append(1)
        masks = np.zeros((3,) + img.shape[:2], bool)
        masks[0, :35], masks[1, :, :45], masks[2, 20:50, 30:70] = True, True, True
        return masks

    forward = Counter(tiny.network.fcn)
    try:
        predictor = PRMPredictor(tiny, proposals=proposals, suppression_radius=None)
        predictor.set_image(image)
        assert forward.calls == 1
        loose = predictor.predict(peak_threshold=-1e9, max_peaks=30)
        strict = predictor.predict(peak_threshold=float(np.median(loose.peak_values)), max_peaks=30)
        assert 0 < len(strict.peaks) < len(loose.peaks)
        # the stricter selection is a subset: every PRM came from the cache
        cached = predictor.cached_peak_count
        assert cached == len(loose.peaks)
        clicked = predictor.predict(points=(np.array([[10.0, 80.0]]), ["c"]))
        assert predictor.cached_peak_count == cached + 1 and len(clicked.peaks) == 1
        assert forward.calls == 1 and len(proposal_calls) == 1
    finally:
        forward.close()


def test_settings_that_change_the_forward_pass_need_a_new_image(tiny, image):
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    with pytest.raises(ValueError, match="change the forward pass"):
        predictor.predict(tta=True)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['peak_treshold'\]"):
        predictor.predict(peak_treshold=1.0)
    with pytest.raises(RuntimeError, match="no image is set"):
        PRMPredictor(tiny, proposals=None).predict()


def test_an_argument_of_predict_given_to_the_constructor_says_where_it_goes(tiny):
    """``PRMPredictor(model, classes=[...])`` said "unknown setting(s) ['classes']", as if
    the predictor could not keep only some classes: it can, per prediction."""
    with pytest.raises(ValueError, match=r"^classes is an argument of predict\(\), not of PRMPredictor") as error:
        PRMPredictor(tiny, proposals=None, classes=["c"])
    assert "predictor.predict(classes=...)" in str(error.value) and "unknown setting" not in str(error.value)
    with pytest.raises(ValueError, match=r"^classes and points are arguments of predict\(\)") as error:
        PRMPredictor(tiny, proposals=None, points=([[1, 1]], ["c"]), classes=["c"], max_peaks=3)
    assert "predict(classes=..., points=...)" in str(error.value)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['peak_treshold'\]"):
        PRMPredictor(tiny, proposals=None, peak_treshold=1.0)


def test_a_misspelt_keyword_is_answered_with_the_setting_or_argument_it_likely_means(tiny, image):
    """``predict(peak_thresh=3)`` listed the 26 settings and left the user to find
    ``peak_threshold`` among them; ``class_names=`` (for ``classes``) and a predictor's
    ``predict(image=...)`` (the image goes to ``set_image``) got the same list."""
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['peak_thresh'\]; did you mean 'peak_threshold'\?"):
        napari_prm.predict(image, tiny, proposals=None, peak_thresh=3.0)
    with pytest.raises(ValueError, match=r"\['max_peak'\]; did you mean 'max_peaks'\?"):
        PRMPredictor(tiny, proposals=None, max_peak=3)
    with pytest.raises(ValueError, match=r"\['max_peak'\]; did you mean 'max_peaks'\?"):
        preset_settings(max_peak=3)
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    with pytest.raises(ValueError, match=r"\['class_names'\]; did you mean 'classes'\?"):
        predictor.predict(class_names=["a"])
    with pytest.raises(ValueError, match=r"\['image'\]; the image is given to predictor\.set_image\(image\)"):
        predictor.predict(image=image)
    with pytest.raises(ValueError, match=r"\['clases'\]; did you mean 'classes'\?"):
        napari_prm.predict(image, tiny, proposals=None, clases=["a"])


def test_another_librarys_keyword_is_answered_with_the_settings_that_do_its_job(tiny, image):
    """The nearest spelling answered ``threshold`` (the commonest such keyword) and
    ``iou_threshold`` with ``bg_threshold``, the background rule's level, which neither means."""
    with pytest.raises(ValueError, match=r"\['threshold'\]; did you mean 'peak_threshold' or 'class_threshold'\? "
                                         r"\(known settings"):
        napari_prm.predict(image, tiny, proposals=None, threshold=3.0)
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    with pytest.raises(ValueError, match=r"\['iou_threshold', 'top_k'\]; did you mean 'nms_threshold' for "
                                         r"'iou_threshold', 'max_peaks' for 'top_k'\?"):
        predictor.predict(iou_threshold=0.5, top_k=5)
    with pytest.raises(ValueError, match=r"\['score_threshold'\]; did you mean 'peak_threshold' or 'class_threshold'"):
        PRMPredictor(tiny, proposals=None, score_threshold=0.5)


def test_the_predictor_takes_retrieval_settings_as_a_dict_as_predict_does(tiny, image):
    """``napari_prm.predict(..., retrieval={...})`` worked, while ``PRMPredictor(model,
    retrieval={...})`` and ``predictor.predict(retrieval={...})`` said "unknown setting(s)
    ['retrieval']": the one-shot form and the predictor took different arguments."""
    assert PRMPredictor(tiny, proposals=None, retrieval={"rank_by": "gain"}).settings.rank_by == "gain"
    with pytest.raises(ValueError, match=r"retrieval: unknown option\(s\) \['peak_threshold'\]"):
        PRMPredictor(tiny, proposals=None, retrieval={"peak_threshold": 1.0})

    def proposals(img):
        masks = np.zeros((3,) + img.shape[:2], bool)
        masks[0, :35], masks[1, :, :45], masks[2, 20:50, 30:70] = True, True, True
        return masks

    predictor = PRMPredictor(tiny, proposals=proposals)
    predictor.set_image(image)
    by_dict = predictor.predict(peak_threshold=-1e9, max_peaks=5, retrieval={"rank_by": "gain", "nms": "class"})
    by_keywords = predictor.predict(peak_threshold=-1e9, max_peaks=5, rank_by="gain", nms="class")
    assert by_dict.settings == by_keywords.settings and by_dict.settings.rank_by == "gain"
    assert len(by_dict.instances) == len(by_keywords.instances) > 0
    assert [i.proposal for i in by_dict.instances] == [i.proposal for i in by_keywords.instances]
    one_shot = napari_prm.predict(image, tiny, proposals=proposals, peak_threshold=-1e9, max_peaks=5,
                                  retrieval={"rank_by": "gain", "nms": "class"})
    assert one_shot.settings == by_dict.settings
    assert [i.score for i in one_shot.instances] == [i.score for i in by_dict.instances]


def test_a_predictions_settings_predict_another_image_as_it_was_predicted(tiny, image):
    """``Prediction.settings`` records what made a prediction, and `preset_settings` builds a
    `PredictSettings`, but neither could be given back: ``preset=`` took only 'default' or
    'original', and ``settings=`` was an unknown setting (only ``**dataclasses.asdict(...)`` did)."""
    first = napari_prm.predict(image, tiny, proposals=None, preset="original", peak_threshold=-1e9, max_peaks=4,
                               suppression_radius=2.0)
    other = np.ascontiguousarray(image[::-1])
    again = napari_prm.predict(other, tiny, proposals=None, preset=first.settings)
    by_keywords = napari_prm.predict(other, tiny, proposals=None, preset="original", peak_threshold=-1e9,
                                     max_peaks=4, suppression_radius=2.0)
    assert again.settings == first.settings == by_keywords.settings and again.settings.preset == "original"
    assert len(again.peaks) == 4
    np.testing.assert_array_equal(again.peaks_crm, by_keywords.peaks_crm)
    # keywords still override it, and are checked
    assert napari_prm.predict(other, tiny, proposals=None, preset=first.settings, max_peaks=2).settings.max_peaks == 2
    predictor = PRMPredictor(tiny, proposals=None, preset=first.settings, max_peaks=3)
    assert predictor.settings == replace(first.settings, max_peaks=3)
    with pytest.raises(ValueError, match=r"max_peaks: expected an integer in \[1, 1000\], got 0"):
        preset_settings(first.settings, max_peaks=0)
    with pytest.raises(ValueError, match=r"preset: expected one of \('default', 'original'\) or a PredictSettings, "
                                         r"got 'paper'"):
        PRMPredictor(tiny, proposals=None, preset="paper")


def test_presets():
    original = preset_settings("original")
    assert (original.sub_pixel_locating_factor, original.class_threshold, original.peak_threshold) == (8, 0.0, 30.0)
    assert original.retrieval_grid == original.output_grid == "network" and original.background == "byte"
    assert original.suppression_radius is None
    default = preset_settings()
    assert default.class_threshold is None and default.suppression_radius == 1.5 and default.output_grid == "image"
    assert preset_settings("original", peak_threshold=4.0).peak_threshold == 4.0
    with pytest.raises(ValueError, match="preset: expected one of"):
        preset_settings("paper")


def test_the_models_calibrated_thresholds_are_the_defaults(tiny, image):
    model = build_model("tiny", ["a", "b", "c"], pretrained=False, input_size=(64, 64))
    model.network.load_state_dict(tiny.network.state_dict())
    predictor = PRMPredictor(model, proposals=None)
    predictor.set_image(image)
    everything = predictor.predict(max_peaks=1000)
    cut = float(np.sort(everything.peak_values)[len(everything.peak_values) // 2])
    model.settings["peak_threshold"] = cut
    calibrated = predictor.predict(max_peaks=1000)
    assert len(calibrated.peaks) > 0 and (calibrated.peak_values > cut).all()
    assert len(calibrated.peaks) == (everything.peak_values > cut).sum()


def test_tta_averages_flips_and_scales(tiny, image):
    x = tiny.preprocess(image)
    network = tiny.network
    with torch.no_grad():
        tta = network.class_response_maps(x, sub_pixel_locating_factor=1, tta=True)
        reference = network.fcn(x)
        size = reference.shape[-2:]
        branches = []
        for scale in TTA_SCALES:
            scaled = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear",
                                                        align_corners=False, recompute_scale_factor=False)
            for flip in (False, True):
                maps = network.fcn(torch.flip(scaled, [-1]) if flip else scaled)
                maps = torch.flip(maps, [-1]) if flip else maps
                if maps.shape[-2:] != size:
                    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
                branches.append(maps)
    torch.testing.assert_close(tta, torch.stack(branches).mean(0))
    # and the PRMs go back through every branch to the one input
    predictor = PRMPredictor(tiny, proposals=None, tta=True)
    predictor.set_image(image)
    prediction = predictor.predict(max_peaks=3)
    np.testing.assert_allclose(prediction.prms.sum(axis=(1, 2)), 1, rtol=1e-4)


def test_the_cap_note_speaks_of_one_kept_peak_in_the_singular(tiny, image):
    """`predict --max-peaks 1` said "4 peaks passed the thresholds; the 1 strongest were kept"."""
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    one, two = (predictor.predict(peak_threshold=-1e9, max_peaks=cap) for cap in (1, 2))
    found = int(one.notes[0].split()[0])
    assert found > 2
    assert one.notes == [f"{found} peaks passed the thresholds; the strongest was kept (max_peaks=1). "
                         "Raise the thresholds or max_peaks."]
    assert two.notes[0].startswith(f"{found} peaks passed the thresholds; the 2 strongest were kept")

def test_the_network_keeps_its_mode_and_grad_flags(tiny, image):
    tiny.network.train()
    flags = [p.requires_grad for p in tiny.network.parameters()]
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    predictor.predict(max_peaks=2)
    assert all(m.training for m in tiny.network.modules())
    assert [p.requires_grad for p in tiny.network.parameters()] == flags
    tiny.network.eval()


def test_predict_is_the_predictors_one_shot(tiny, image):
    one_shot = napari_prm.predict(image, tiny, proposals=None, max_peaks=10)
    predictor = PRMPredictor(tiny, proposals=None, max_peaks=10)
    predictor.set_image(image)
    twice = predictor.predict()
    np.testing.assert_array_equal(one_shot.peaks_crm, twice.peaks_crm)
    np.testing.assert_allclose(one_shot.prms, twice.prms, rtol=0, atol=0)


def test_instances_are_scored_by_confidence_by_default(tiny, image):
    def proposals(img):
        masks = np.zeros((4,) + img.shape[:2], bool)
        masks[0, :35], masks[1, :, :45], masks[2, 20:50, 30:70], masks[3, 40:, 50:] = True, True, True, True
        return masks

    predictor = PRMPredictor(tiny, proposals=proposals, suppression_radius=None, nms_threshold=None,
                             merge_contained=None, merge_parts=None, size_limits=(0, 1.01))
    predictor.set_image(image)
    thresholds = dict(class_threshold=float(np.median(predictor.scores)) - 0.5, max_peaks=12)
    loose = predictor.predict(peak_threshold=-1e9, **thresholds)
    thresholds["peak_threshold"] = float(np.median(loose.peak_values)) - 1.0
    by_retrieval = predictor.predict(score_by="retrieval", **thresholds)
    by_confidence = predictor.predict(**thresholds)
    assert preset_settings().score_by == "confidence" and preset_settings("original").score_by == "retrieval"
    assert len(by_confidence.instances) == len(by_retrieval.instances) > 3
    retrieval = {i.peak: i.score for i in by_retrieval.instances}
    assert all(i.retrieval_score is None for i in by_retrieval.instances)
    for instance in by_confidence.instances:
        assert instance.retrieval_score == pytest.approx(retrieval[instance.peak]) == instance.base_score
        class_margin = by_confidence.scores[instance.class_index] - thresholds["class_threshold"]
        peak_margin = by_confidence.peak_values[instance.peak] - thresholds["peak_threshold"]
        expected = max(retrieval[instance.peak], 0) / (1 + np.exp(-class_margin)) / (1 + np.exp(-peak_margin))
        assert instance.score == pytest.approx(expected, rel=1e-6)
    scores = [i.score for i in by_confidence.instances]
    assert scores == sorted(scores, reverse=True)
    # the masks are the same ones; only their scores and order change
    assert sorted((i.peak, i.proposal) for i in by_confidence.instances) == \
        sorted((i.peak, i.proposal) for i in by_retrieval.instances)
    # the public function ranks any instances (retrieved, or cut by a head) the same way
    from napari_prm.predict import rank_by_confidence

    ranked = rank_by_confidence(by_retrieval, by_retrieval.instances, thresholds["class_threshold"],
                                thresholds["peak_threshold"])
    assert [(i.peak, i.score) for i in ranked] == [(i.peak, i.score) for i in by_confidence.instances]
    assert [i.retrieval_score for i in ranked] == [i.retrieval_score for i in by_confidence.instances]
    # ranking instances that are already ranked (predict's output) changes nothing
    again = rank_by_confidence(by_confidence, by_confidence.instances, thresholds["class_threshold"],
                               thresholds["peak_threshold"])
    assert [(i.peak, i.score, i.retrieval_score) for i in again] == \
        [(i.peak, i.score, i.retrieval_score) for i in ranked]
    # without a peak threshold only the class margin weighs
    first = ranked[0]  # ranked in place: its retrieval score is kept in retrieval_score
    fresh = replace(first, score=first.retrieval_score, retrieval_score=None)
    (alone,) = rank_by_confidence(by_retrieval, [fresh], 0.0, None)
    expected = max(first.retrieval_score, 0) / (1 + np.exp(-by_retrieval.scores[first.class_index]))
    assert alone.score == pytest.approx(expected, rel=1e-6) and alone.retrieval_score == first.retrieval_score
    assert rank_by_confidence(by_retrieval, [], 0.0, None) == []


def test_changing_the_callers_image_after_set_image_changes_nothing(tiny, image):
    # The proposals (and a refinement head's features) are made from the image when first
    # needed: a caller that reuses its buffer (video frames, an edited napari layer) must
    # still get the instances of the image it set.
    settings = dict(proposals="default", peak_threshold=-1e9, max_peaks=5)
    expected = PRMPredictor(tiny, **settings)
    expected.set_image(image.copy())
    want = expected.predict()
    assert want.instances

    buffer = image.copy()
    predictor = PRMPredictor(tiny, **settings)
    predictor.set_image(buffer)
    buffer[:] = 255 - buffer
    got = predictor.predict()
    assert np.array_equal(buffer, 255 - image)  # the caller's array is theirs to change
    assert [(i.peak, i.proposal) for i in got.instances] == [(i.peak, i.proposal) for i in want.instances]
    for a, b in zip(got.instances, want.instances):
        assert np.array_equal(a.mask, b.mask)


def test_a_predictor_reused_on_other_sizes_predicts_an_image_as_a_new_one_does(tiny, image):
    # docs/reliability.md, "Reproducibility": nothing of one image (its maps, proposals, peaks)
    # is carried into the next, whatever their sizes, and nothing is random
    settings = dict(proposals="default", peak_threshold=-1e9, max_peaks=5)
    fresh = PRMPredictor(tiny, **settings)
    fresh.set_image(image)
    want = fresh.predict()
    assert want.instances
    reused = PRMPredictor(tiny, **settings)
    rng = np.random.default_rng(1)
    for shape in ((90, 40, 3), (33, 120, 3)):
        reused.set_image(rng.integers(0, 255, shape, dtype=np.uint8))
        assert reused.predict().prms.shape[1:] == shape[:2]
    reused.set_image(image)
    got = reused.predict()
    assert np.array_equal(got.peaks, want.peaks) and np.array_equal(np.asarray(got.prms), np.asarray(want.prms))
    assert [(i.class_index, i.peak, i.score) for i in got.instances] == \
        [(i.class_index, i.peak, i.score) for i in want.instances]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(got.instances, want.instances))


def test_a_predictions_maps_are_read_only_views_of_the_predictors_cache():
    """A prediction shares the predictor's class maps and scores without copying them; changing
    them in place raises instead of silently changing the predictor's later peaks."""
    model = build_model("tiny", ["a", "b"], pretrained=False, input_size=(64, 64))
    predictor = PRMPredictor(model, proposals=None)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    predictor.set_image(image)
    first = predictor.predict(class_threshold=-1e9, peak_threshold=-1e9)
    assert np.shares_memory(first.crms, predictor.crms)
    with pytest.raises(ValueError, match="read-only"):
        first.crms[:] = 0
    with pytest.raises(ValueError, match="read-only"):
        first.scores[0] = 1e9
    again = predictor.predict(class_threshold=-1e9, peak_threshold=-1e9)
    np.testing.assert_array_equal(again.peaks, first.peaks)
    np.testing.assert_array_equal(again.crms, first.crms)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_network_the_user_converted_to_another_dtype_predicts(image, dtype):
    torch.manual_seed(0)
    model = build_model("tiny", ["a", "b", "c"], pretrained=False, input_size=(64, 64))
    reference = napari_prm.predict(image, model, class_threshold=-1e9, max_peaks=5)
    model.network.to(dtype)  # the input was float32: "expected scalar type Float but found Double"
    assert model.dtype == dtype
    pred = napari_prm.predict(image, model, class_threshold=-1e9, max_peaks=5)
    assert np.asarray(pred.prms).dtype == np.float32 and pred.peak_values.dtype == np.float32
    assert len(pred.peaks) == 5 and pred.instances
    if dtype == torch.float64:  # the same peaks; bfloat16's 8-bit mantissa may order them otherwise
        np.testing.assert_array_equal(pred.peaks_crm, reference.peaks_crm)
        np.testing.assert_allclose(np.asarray(pred.prms), np.asarray(reference.prms), atol=1e-5)
    assert PRMPredictor(model).class_response_maps(image).dtype == np.float32


def test_points_outside_the_image_are_noted(tiny, image):
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)  # 70×90
    inside = predictor.predict(points=([[69.4, 89.4], [-0.5, 0]], ["a", "b"]))
    assert inside.notes == []
    # (x, y) given for (y, x): it was moved to the border without a word
    swapped = predictor.predict(points=([[80, 20], [10, 10]], ["a", "a"]))
    assert swapped.notes == ["1 point outside the 70×90 image, (80, 20), back-propagated from the nearest "
                             "place on its border: points are (y, x) in image pixels"]
    assert swapped.peaks[0, 0] > 65  # the last CRM cell's centre, not 80


def test_points_that_are_not_a_pair_of_locations_and_classes_are_refused_naming_them(tiny, image):
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    pair = r"points: expected a pair \(locations, classes\)"
    # locations alone: one row was "not enough values to unpack (expected 2, got 1)", three rows
    # "too many values to unpack", two rows a point and its "classes" 30 and 40
    with pytest.raises(ValueError, match=pair + r".*got ndarray of shape \(1, 2\)"):
        predictor.predict(points=np.array([[10.0, 20.0]]))
    with pytest.raises(ValueError, match=pair + r".*got ndarray of shape \(2, 2\)"):
        predictor.predict(points=np.array([[10.0, 20.0], [30.0, 40.0]]))
    with pytest.raises(ValueError, match=pair + r".*got list of 3"):
        predictor.predict(points=[[10, 20], [30, 40], [50, 60]])
    with pytest.raises(ValueError, match=r"^points: class index 30 is out of range .*\(points is a pair"):
        napari_prm.predict(image, tiny, proposals=None, points=[[10, 20], [30, 40]])
    with pytest.raises(ValueError, match=r"^points: unknown class 'cat'"):
        predictor.predict(points=([[10, 20]], ["cat"]))
    one = predictor.predict(points=([10, 20], "b"))  # one point, one class: no lists needed
    # two points and one class said "2 locations but 1 classes"
    with pytest.raises(ValueError, match=r"^points: 2 locations but 1 class: give one class per location "
                                         r"\(e\.g\. \['b'\] \* 2\)$"):
        predictor.predict(points=([[10, 20], [30, 40]], "b"))
    with pytest.raises(ValueError, match=r"^points: 1 location but 2 classes: give one class per location$"):
        predictor.predict(points=([[10, 20]], ["b", "c"]))
    assert len(one.peaks) == 1 and one.peak_classes.tolist() == [1]


def test_one_class_may_be_given_without_a_list(tiny, image):
    listed = napari_prm.predict(image, tiny, proposals=None, class_threshold=-1e9, classes=["b"])
    assert len(listed.peaks) > 0 and set(listed.peak_classes) == {1}
    for one in ("b", 1, np.int64(1)):  # "b" was the classes 'b'; "bc" would be 'b', 'c'; 1 not iterable
        pred = napari_prm.predict(image, tiny, proposals=None, class_threshold=-1e9, classes=one)
        np.testing.assert_array_equal(pred.peaks_crm, listed.peaks_crm)
    with pytest.raises(ValueError, match=r"unknown class 'cat'; the model knows 3 classes"):
        napari_prm.predict(image, tiny, proposals=None, classes="cat")


def test_a_class_the_model_lacks_names_the_built_in_models_that_know_it(tiny, image):
    """``classes=["cup"]`` with ``imagenet-voc`` (whose 19 classes lack it; ``imagenet-coco`` finds
    the coffee cup) said only "unknown class 'cup'; the model knows 19 classes, e.g. [...]"."""
    from napari_prm.model.checkpoint import builtin_class_names
    from napari_prm.predictor import class_indices

    voc = builtin_class_names("imagenet-voc")
    with pytest.raises(ValueError, match=r"unknown class 'cup'; the model knows 19 classes, .*; the built-in models "
                                         r"'imagenet-coco' and 'imagenet' know it: "
                                         r"napari_prm\.load_model\('imagenet-coco'\)$"):
        class_indices(["cat", "cup"], voc)
    with pytest.raises(ValueError, match=r"unknown class 'tabby'.*; the built-in model 'imagenet' knows it: "
                                         r"napari_prm\.load_model\('imagenet'\)$"):
        class_indices("tabby", builtin_class_names("imagenet-coco"))
    with pytest.raises(ValueError, match=r"unknown class 'person'; the model knows 19 classes, e\.g\. \[[^\]]*\]$"):
        class_indices(["person"], voc)  # no built-in model knows it: nothing to add
    with pytest.raises(ValueError, match=r"^points: unknown class 'cup'; .*the built-in models 'imagenet-coco'"):
        napari_prm.predict(image, tiny, proposals=None, points=([[10, 20]], ["cup"]))


def test_an_empty_classes_list_says_that_no_class_was_asked_for(tiny, image):
    """``classes=[]`` (a filter that kept no class) gave no peak and no note, where every other
    prediction without peaks says why."""
    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    assert len(predictor.predict(class_threshold=-1e9).peaks) > 0
    empty = predictor.predict(class_threshold=-1e9, classes=[])
    assert len(empty.peaks) == 0
    assert empty.notes == ["classes is empty: no class was asked for, so no peak was kept"]


def test_uses_refined_proposals_follows_the_proposal_source(tiny):
    """The public form of "the learnt head cuts the masks" (the widget's Shift-A asks it): a
    combination with the head and the other sources are not it, and it follows set_proposals."""
    predictor = PRMPredictor(tiny, proposals="auto")  # no head: "default"
    assert predictor.proposal_source == "default" and not predictor.uses_refined_proposals
    for source, refined in ((" Refined ", True), ("refined+default", False), (None, False), ("prm", False),
                            ("refined", True)):
        predictor.set_proposals(source)
        assert predictor.uses_refined_proposals is refined, source
    with pytest.raises(AttributeError):
        predictor.uses_refined_proposals = False  # read-only


def test_tta_that_is_not_a_bool_is_refused(tiny, image):
    # tta="no" (a configuration file's string) was true: six forward passes, settings.tta == "no"
    for value in ("no", "False", 1, None):
        with pytest.raises(ValueError, match=rf"^tta: expected True or False, got {re.escape(repr(value))}$"):
            napari_prm.predict(image, tiny, proposals=None, tta=value)
    assert preset_settings(tta=np.bool_(True)).tta is True
    assert PRMPredictor(tiny, proposals=None, tta=False).settings.tta is False


def test_region_seeds_keep_the_connected_cells_above_a_fraction_of_the_peak():
    from napari_prm.peaks import region_seeds

    crms = np.ones((2, 8, 8), np.float32)
    crms[0, 2, 2], crms[0, 2, 3], crms[0, 3, 2] = 4.0, 3.0, 2.5
    crms[0, 6, 6] = 3.5  # as strong, but not connected to the peak's region
    crms[1, 2, 2] = 9.0  # another class's map is not the peak's
    seeds = region_seeds(crms, np.array([[0, 2, 2]]), 0.5)
    assert seeds.shape == (1, 8, 8)
    assert sorted(zip(*np.nonzero(seeds[0]))) == [(2, 2), (2, 3), (3, 2)]
    assert seeds[0, 2, 2] == 4.0 and seeds[0, 3, 2] == 2.5 and seeds[0, 6, 6] == 0
    assert np.count_nonzero(region_seeds(crms, np.array([[0, 2, 2]]), 1.0)) == 1
    assert np.count_nonzero(region_seeds(crms, np.array([[0, 2, 2]]), 0.2)) == 64  # every cell >= 0.8
    with pytest.raises(ValueError, match="alpha"):
        region_seeds(crms, np.array([[0, 2, 2]]), 0.0)
    crms[0, 2, 2] = -1.0
    with pytest.raises(ValueError, match="positive peak"):
        region_seeds(crms, np.array([[0, 2, 2]]), 0.5)


def test_region_seeded_prms(tiny, image):
    from napari_prm.peaks import region_seeds

    predictor = PRMPredictor(tiny, proposals=None)
    predictor.set_image(image)
    plain = predictor.predict(max_peaks=5)
    peaks = plain.peaks_crm
    assert len(peaks) >= 2
    own = predictor.peak_response_maps(peaks)
    # a seed of one at the peak's cell is the peak's own backward pass, exactly
    one_hot = np.zeros((len(peaks),) + predictor.crms.shape[1:], np.float32)
    one_hot[np.arange(len(peaks)), peaks[:, 1], peaks[:, 2]] = 1
    forward = tiny.network.forward_pass(tiny.preprocess(image), sub_pixel_locating_factor=8)
    torch.testing.assert_close(forward.backprop(peaks, seeds=one_hot), forward.backprop(peaks), rtol=0, atol=0)
    torch.testing.assert_close(forward.backprop(peaks), own, rtol=0, atol=0)
    # alpha 1 keeps the peak's cell alone (a strict maximum): pooling a map with itself changes nothing
    assert all(np.count_nonzero(s) == 1 for s in region_seeds(predictor.crms, peaks, 1.0))
    same = predictor.predict(max_peaks=5, region_seed=1.0)
    torch.testing.assert_close(torch.as_tensor(np.asarray(same.prms)), torch.as_tensor(np.asarray(plain.prms)))
    # a wide region gives another map, still a distribution, from one more backward pass per peak
    passes = predictor.cached_peak_count
    wide = predictor.peak_response_maps(peaks, region_seed=0.3)
    assert predictor.cached_peak_count == passes + len(peaks)
    torch.testing.assert_close(wide.flatten(1).sum(1), torch.ones(len(peaks)))
    assert float((wide - own).abs().sum(dim=(1, 2)).min()) > 1e-3
    predictor.peak_response_maps(peaks, region_seed=0.3)  # cached
    assert predictor.cached_peak_count == passes + len(peaks)
    with pytest.raises(ValueError, match="seeds: expected shape"):
        forward.backprop(peaks, seeds=one_hot[:1])
    with pytest.raises(ValueError, match="region_seed"):
        predictor.predict(region_seed=0.0)
