"""Peak selection and threshold calibration on class response maps whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_prm._text import for_command_line, for_widget
from napari_prm.model.peak_stimulation import peak_stimulation
from napari_prm.peaks import MAX_PEAKS, calibrate_thresholds, class_scores, peak_candidates, select_peaks


def bumps(shape, spots):
    """(C, h, w) maps of Gaussian bumps: spots = [(class, y, x, height), ...] on a flat 0 floor."""
    classes = 1 + max(s[0] for s in spots)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    maps = np.zeros((classes,) + tuple(shape), np.float32)
    for cls, y, x, height in spots:
        maps[cls] += height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0**2))
    return maps


def test_class_scores_are_peak_stimulations_scores():
    crms = np.random.default_rng(0).normal(size=(4, 20, 24)).astype(np.float32)
    expected, _ = peak_stimulation(torch.from_numpy(crms)[None])
    np.testing.assert_allclose(class_scores(crms), expected[0].numpy(), rtol=1e-6)


def test_thresholds_keep_what_they_say():
    crms = bumps((40, 40), [(0, 10, 10, 9.0), (0, 30, 30, 4.0), (1, 10, 30, 6.0)])
    everything = select_peaks(crms, max_peaks=1000)
    values = sorted(np.round(everything.values, 3).tolist(), reverse=True)
    assert values[:3] == [9.0, 6.0, 4.0]
    assert np.all(np.diff(everything.values) <= 0)  # strongest first
    strong = select_peaks(crms, peak_threshold=5.0)
    assert sorted(map(tuple, strong.peaks.tolist())) == [(0, 10, 10), (1, 10, 30)]
    relative = select_peaks(crms, peak_threshold=0.5, relative_threshold=0.5)
    # class 0 keeps its 9.0 peak only (4.0 < 0.5 * 9.0); class 1 keeps its 6.0 peak
    assert sorted(map(tuple, relative.peaks.tolist())) == [(0, 10, 10), (1, 10, 30)]
    only_one = select_peaks(crms, peak_threshold=0.5, classes=[1])
    assert only_one.peaks.tolist() == [[1, 10, 30]]
    scores = class_scores(crms)
    by_class = select_peaks(crms, class_threshold=float(scores[1]) + 1e-3, peak_threshold=0.5)
    assert set(by_class.peaks[:, 0].tolist()) == ({0} if scores[0] > scores[1] else set())


def test_one_peak_per_location_keeps_the_strongest_class_and_remembers_the_others():
    # three synonyms on one object (classes 0, 1, 2 within 2 pixels), and class 1 alone elsewhere
    crms = bumps((40, 40), [(0, 20, 20, 5.0), (1, 21, 20, 7.0), (2, 20, 22, 6.0), (1, 5, 35, 3.0)])
    kept = select_peaks(crms, peak_threshold=1.0, suppression_radius=4)
    assert kept.peaks.tolist() == [[1, 21, 20], [1, 5, 35]]
    assert kept.runner_up_classes[0].tolist() == [2, 0, -1]
    np.testing.assert_allclose(kept.runner_up_values[0][:2], [6.0, 5.0], atol=1e-3)
    assert np.isnan(kept.runner_up_values[0][2]) and kept.runner_up_classes[1].tolist() == [-1, -1, -1]
    apart = select_peaks(crms, peak_threshold=1.0, suppression_radius=0.5)
    assert len(apart) == 4  # no two peaks within half a pixel: nothing to merge


def test_the_cap_keeps_the_strongest_and_says_how_many_there_were():
    # 16 bumps on a large flat floor (the median filter keeps peaks above the map's median)
    spots = [(0, 8 + 10 * (i // 4), 8 + 10 * (i % 4), 1.0 + i) for i in range(16)]
    crms = bumps((96, 96), spots)
    capped = select_peaks(crms, peak_threshold=0.5, max_peaks=5)
    assert len(capped) == 5 and capped.found == 16 and capped.capped
    np.testing.assert_allclose(capped.values, [16, 15, 14, 13, 12], atol=1e-3)
    assert not select_peaks(crms, peak_threshold=0.5, max_peaks=16).capped


def test_candidates_computed_once_give_the_same_selection():
    crms = np.random.default_rng(1).normal(size=(3, 30, 30)).astype(np.float32)
    candidates = peak_candidates(crms)
    for threshold in (-1.0, 0.5, 1.5):
        a = select_peaks(crms, peak_threshold=threshold, suppression_radius=3, max_peaks=1000)
        b = select_peaks(crms, peak_threshold=threshold, suppression_radius=3, max_peaks=1000,
                         candidates=candidates)
        np.testing.assert_array_equal(a.peaks, b.peaks)


def test_calibration_separates_present_from_absent_classes():
    rng = np.random.default_rng(2)
    maps, labels = [], []
    for _ in range(12):
        present = rng.random(3) < 0.5
        spots = [(c, int(rng.integers(6, 34)), int(rng.integers(6, 34)), 8.0 + rng.random() if present[c]
                  else 2.0 + rng.random()) for c in range(3)]
        maps.append(bumps((40, 40), spots))
        labels.append(present)
    labels = np.array(labels)
    calibration = calibrate_thresholds(maps, labels)
    assert calibration.precision == 1.0 and calibration.recall == 1.0 and calibration.f_score == 1.0
    # the chosen pair keeps exactly the strong peaks: one per present class
    kept = sum(len(select_peaks(m, class_threshold=calibration.class_threshold,
                                peak_threshold=calibration.peak_threshold)) for m in maps)
    assert kept == labels.sum()
    settings = calibration.as_settings()
    assert settings["class_threshold"] == calibration.class_threshold
    assert settings["calibration"]["images"] == 12
    assert calibration.warning is None and "warning" not in settings["calibration"]


def test_calibration_on_fewer_than_ten_images_says_its_thresholds_are_unreliable():
    """Thresholds chosen on three images that they separate perfectly were reported as any
    others: "classes found 100 %" and no word of how few images chose them."""
    maps = [bumps((40, 40), [(c, 20, 20, 8.0 if c == i % 2 else 2.0) for c in range(2)]) for i in range(3)]
    labels = np.array([[i % 2 == 0, i % 2 == 1] for i in range(3)])
    calibration = calibrate_thresholds(maps, labels)
    assert calibration.recall == 1.0 and calibration.precision == 1.0
    assert calibration.warning.startswith("the thresholds were calibrated on only 3 image(s), fewer than 10")
    # read from Python, from the command line and in the model's settings: it names both terms
    assert ("hold out more: train's val_fraction, the command line's --val-fraction" in calibration.warning
            and "calibrate_checkpoint(MODEL, DATASET, held_out=True)" in calibration.warning
            and "predict's class_threshold and peak_threshold, the command line's --class-threshold and "
            "--peak-threshold" in calibration.warning)
    assert calibration.as_settings()["calibration"]["warning"] == calibration.warning
    assert type(calibration.as_settings()["calibration"]["warning"]) is str  # a plain string in a checkpoint
    # the command line's wording names its options only: no Python names
    said = for_command_line(calibration.warning)
    assert said.startswith("the thresholds were calibrated on only 3 image(s), fewer than 10")
    assert ("hold out more: train's --val-fraction; or add images, then 'napari-prm calibrate DATASET --model MODEL "
            "--held-out'" in said and "--class-threshold and --peak-threshold" in said)
    assert not any(name in said for name in ("val_fraction", "calibrate_checkpoint", "held_out=", "class_threshold"))
    # the widgets' wording names what the Train widget offers: it has no held-out share to set, nor a function
    shown = for_widget(calibration.warning)
    assert shown.startswith("the thresholds were calibrated on only 3 image(s), fewer than 10: chosen on so few, they "
                            "fit those images and may not hold on others. Calibrate on more images: add images to the "
                            "dataset and train again (Train holds out about a fifth of them")
    assert "press *Calibrate* with the model as the model to calibrate" in shown
    assert not any(name in shown for name in ("val_fraction", "calibrate_checkpoint", "held_out", "--"))
    many = calibrate_thresholds(maps * 4, np.concatenate([labels] * 4))
    assert many.images == 12 and many.warning is None


def test_calibration_that_finds_no_class_says_so():
    """Images that show class 0, whose maps are flat at -1, far below the class-1 bump
    (relative_threshold 0.5 drops their peaks): no threshold pair finds a class. The
    lowest thresholds were stored with "classes found 0 %" and no word."""
    maps = [bumps((40, 40), [(1, 10 + i, 20, 5.0 + i)]) for i in range(3)]
    for crm in maps:
        crm[0] = -1.0
    calibration = calibrate_thresholds(maps, np.array([[1, 0]] * 3), relative_threshold=0.5)
    assert calibration.recall == 0 and calibration.precision == 0
    assert calibration.warning.startswith("calibration found no class")
    assert "3 calibration image(s)" in calibration.warning and "more epochs" in calibration.warning
    assert "train's val_fraction, the command line's --val-fraction" in calibration.warning
    assert calibration.as_settings()["calibration"]["warning"] == calibration.warning
    said = for_command_line(calibration.warning)
    assert said.startswith("calibration found no class") and "train's --val-fraction" in said
    assert "'napari-prm calibrate DATASET --model MODEL'" in said
    assert "val_fraction" not in said and "calibrate_checkpoint" not in said
    shown = for_widget(calibration.warning)
    assert "(add images per class: Train holds out about a fifth of them)" in shown and "*Calibrate*" in shown
    assert "val_fraction" not in shown and "calibrate_checkpoint" not in shown and "napari-prm" not in shown


def test_calibration_that_keeps_more_peaks_than_the_cap_says_so():
    """A barely trained model's maps: 64 peaks of the class each image shows. Calibration kept
    them all (64 per image, over MAX_PEAKS = 50) and said nothing, so predict's cap silently
    kept the strongest 50 of each image."""
    spots = [(0, 6 + 10 * (i // 8), 6 + 10 * (i % 8), 1.0 + 0.1 * i) for i in range(64)]
    maps = [bumps((84, 84), spots) for _ in range(12)]
    labels = np.ones((12, 1))
    calibration = calibrate_thresholds(maps, labels)
    assert calibration.recall == 1.0 and calibration.precision == 1.0
    assert calibration.peaks_per_image == 64.0 > MAX_PEAKS
    assert calibration.image_peaks == (64,) * 12 and calibration.over_cap == 12
    assert calibration.warning.startswith("the calibrated thresholds keep more than 50 peaks (predict's default cap, "
                                          "max_peaks) on 12 of the 12 calibration image(s) (up to 64)")
    assert "strongest 50 of such an image" in calibration.warning and "more epochs" in calibration.warning
    assert calibration.as_settings()["calibration"]["warning"] == calibration.warning
    # 48 peaks per image: under the cap, no warning; on 3 images, both warnings, one after the other
    few = [bumps((84, 84), spots[:48]) for _ in range(12)]
    assert calibrate_thresholds(few, labels).warning is None
    both = calibrate_thresholds(maps[:3], labels[:3])
    assert both.warning.startswith("the thresholds were calibrated on only 3 image(s)")
    # two sentences: the second starts with a capital ("... thresholds). the calibrated ..." before)
    assert ". The calibrated thresholds keep more than 50 peaks (predict's default cap, max_peaks) on 3 of the 3" \
        in both.warning
    # the command line's wording: its options only, both sentences
    said = for_command_line(both.warning)
    assert said.startswith("the thresholds were calibrated on only 3 image(s)")
    assert ". The calibrated thresholds keep more than 50 peaks (predict's default --max-peaks) on 3 of the 3" in said
    assert said.endswith("raise the thresholds (--class-threshold and --peak-threshold) or the cap (--max-peaks).")
    assert not any(name in said for name in ("max_peaks", "val_fraction", "class_threshold", "calibrate_checkpoint"))


def test_a_few_crowded_images_over_the_cap_are_counted_not_averaged_away():
    """The warning compared the average of the kept peaks per image with the default cap: two crowded
    images of 64 peaks among ten of one averaged 11.5 and said nothing, though predict cut both to
    their strongest 50. The images over the cap are now counted, and said "2 of the 12"."""
    crowded = [(0, 6 + 10 * (i // 8), 6 + 10 * (i % 8), 1.0 + 0.1 * i) for i in range(64)]
    maps = [bumps((84, 84), crowded) for _ in range(2)] + [bumps((84, 84), crowded[:1]) for _ in range(10)]
    labels = np.ones((12, 1))
    calibration = calibrate_thresholds(maps, labels)
    assert calibration.recall == 1.0 and calibration.peaks_per_image == pytest.approx(138 / 12)  # under 50
    assert calibration.image_peaks == (64, 64) + (1,) * 10 and calibration.over_cap == 2
    # the images predict cuts at these thresholds, selecting as it does
    cut = [select_peaks(m, class_threshold=calibration.class_threshold,
                        peak_threshold=calibration.peak_threshold, suppression_radius=None).capped for m in maps]
    assert cut == [True, True] + [False] * 10
    assert calibration.warning.startswith("the calibrated thresholds keep more than 50 peaks (predict's default "
                                          "cap, max_peaks) on 2 of the 12 calibration image(s) (up to 64): predict "
                                          "will keep only the strongest 50 of such an image.")
    assert "--max-peaks" in calibration.warning
    # crowded images, not a barely trained model: raising the thresholds for them would lose the others' peaks
    assert calibration.warning.endswith("To keep all the peaks of crowded images, raise the cap (predict's "
                                        "max_peaks, the command line's --max-peaks; the napari widget's max peaks).")
    assert "more epochs" not in calibration.warning and "--peak-threshold" not in calibration.warning
    assert for_command_line(calibration.warning).endswith(
        "(up to 64): predict will keep only the strongest 50 of such an image. To keep all the peaks of crowded "
        "images, raise the cap (--max-peaks).")


def test_the_cap_compared_with_is_the_max_peaks_predict_is_given():
    """30 peaks per image are under the default cap (no warning) but over ``max_peaks=20``, which the
    warning compared with 50 regardless; no cap (None) warns of none."""
    spots = [(0, 6 + 10 * (i // 6), 6 + 10 * (i % 6), 1.0 + 0.1 * i) for i in range(30)]
    maps = [bumps((64, 64), spots) for _ in range(12)]
    labels = np.ones((12, 1))
    assert calibrate_thresholds(maps, labels).warning is None
    capped = calibrate_thresholds(maps, labels, max_peaks=20)
    assert capped.max_peaks == 20 and capped.over_cap == 12
    assert capped.warning.startswith("the calibrated thresholds keep more than 20 peaks (the max_peaks given) on 12 "
                                     "of the 12 calibration image(s) (up to 30): predict will keep only the strongest "
                                     "20 of such an image.")
    uncapped = calibrate_thresholds(maps, labels, max_peaks=None)
    assert uncapped.over_cap == 0 and uncapped.warning is None
    # a cap predict refuses (it keeps at least one peak) was taken, and every image was over it
    for wrong in (0, -5, 2.5):
        with pytest.raises(ValueError, match=r"max_peaks: expected an integer"):
            calibrate_thresholds(maps, labels, max_peaks=wrong)


def test_a_model_s_calibration_counts_the_images_predict_cuts(tiny_dataset):
    """On a random tiny model's maps, whose calibrated thresholds keep (64, 59, 27, 32) peaks on the 4
    images, 45 on average, the old rule (the average over 50) said nothing while predict cut two images
    to 50. The counts are predict's own, and the cap the one ``calibrate_model`` is given."""
    from napari_prm import PRMPredictor, build_model
    from napari_prm.data import load_dataset
    from napari_prm.peaks import calibrate_model
    from napari_prm.predictor import MAX_PEAKS_LIMIT

    torch.manual_seed(0)
    model = build_model("tiny", ["cat", "cup"], pretrained=False, input_size=(64, 64))
    dataset = load_dataset(tiny_dataset)
    calibration = calibrate_model(model, dataset)
    model.settings.update(calibration.as_settings())
    predictor = PRMPredictor(model, proposals=None)
    found, cut = [], []
    for index in range(len(dataset)):
        predictor.set_image(dataset.read_image(index))
        found.append(predictor.select_peaks(max_peaks=MAX_PEAKS_LIMIT).found)
        cut.append(predictor.select_peaks().capped)
    assert calibration.image_peaks == tuple(found)
    assert calibration.peaks_per_image < MAX_PEAKS < max(found)  # the case the average hid
    assert calibration.over_cap == sum(cut) > 0
    assert f"on {sum(cut)} of the 4 calibration image(s) (up to {max(found)})" in calibration.warning
    smallest = min(found)
    assert calibrate_model(model, dataset, max_peaks=smallest).over_cap == sum(n > smallest for n in found)


def test_calibration_refuses_what_it_cannot_use():
    crms = [np.zeros((2, 8, 8), np.float32)]
    with pytest.raises(ValueError, match="labels: expected"):
        calibrate_thresholds(crms, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="at least one image that shows a class"):
        calibrate_thresholds(crms, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="crms have 2 classes but labels have 3"):
        calibrate_thresholds(crms, np.ones((1, 3)))
