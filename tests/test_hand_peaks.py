"""The Qt-free helpers that keep peaks placed by hand through a new run: `without_peaks` and
`add_hand_peaks` (napari_prm._widgets.layers), on small arrays with numbers worked out by hand;
and `PeakPRMs`, the PRM layer's data, which holds a predictor's maps at the network's grid."""

from dataclasses import replace

import numpy as np
import pytest

from napari_prm._widgets.layers import add_hand_peaks, merge_predictions, prm_layer_data, without_peaks
from napari_prm.predictor import Prediction
from napari_prm.prm_maps import ScaledPRMs, resize_prms
from napari_prm.retrieval import Instance

NAMES = ["cat", "dog", "bird"]
H, W = 6, 8


def box(y0, y1, x0, x1):
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def prediction(peaks, classes, instances=(), scores=(0.9, 0.5, 0.1)):
    """A prediction of ``len(peaks)`` peaks; PRM ``k`` is ``k + 1`` at its peak's pixel."""
    peaks = np.asarray(peaks, np.float64).reshape(-1, 2)
    k = len(peaks)
    prms = np.zeros((k, H, W), np.float32)
    for number, (y, x) in enumerate(peaks.astype(int)):
        prms[number, y, x] = number + 1
    classes = np.asarray(classes, np.int64)
    return Prediction(
        class_names=list(NAMES), scores=np.asarray(scores, np.float32), crms=np.zeros((3, H, W), np.float32),
        peaks=peaks, peak_classes=classes, peak_values=np.arange(10, 10 + k, dtype=np.float32),
        prms=prms, instances=list(instances),
        peaks_crm=np.column_stack([classes, peaks.astype(np.int64)]) if k else np.zeros((0, 3), np.int64),
        runner_up_classes=np.tile(np.array([[2, -1, -1]], np.int64), (k, 1)),
        runner_up_values=np.tile(np.array([[1.5, np.nan, np.nan]], np.float32), (k, 1)))


def instance(peak, mask, class_index=0, score=0.7, merged=()):
    return Instance(class_index=class_index, score=score, mask=mask, prm=np.zeros((H, W), np.float32),
                    peak=peak, merged_peaks=list(merged))


# ---------------------------------------------------------------------- without_peaks
def test_without_peaks_drops_their_rows_prms_and_instances_and_renumbers_the_rest():
    first, last = instance(0, box(0, 2, 0, 2), merged=[1]), instance(2, box(3, 5, 3, 5), class_index=1)
    original = prediction([[1, 1], [1, 2], [4, 4]], [0, 0, 1], [first, last])
    out = without_peaks(original, np.array([False, True, False]))
    np.testing.assert_array_equal(out.peaks, [[1, 1], [4, 4]])
    np.testing.assert_array_equal(out.peak_classes, [0, 1])
    np.testing.assert_array_equal(out.peak_values, [10, 12])
    np.testing.assert_array_equal(out.peaks_crm, [[0, 1, 1], [1, 4, 4]])
    assert out.prms.shape == (2, H, W) and out.prms[0, 1, 1] == 1 and out.prms[1, 4, 4] == 3
    assert out.runner_up_classes.shape == (2, 3) and out.runner_up_values.shape == (2, 3)
    assert [(i.peak, i.merged_peaks) for i in out.instances] == [(0, []), (1, [])]
    assert out.instances[1].class_index == 1
    # the prediction it came from is as it was
    assert len(original.peaks) == 3 and [(i.peak, i.merged_peaks) for i in original.instances] == [(0, [1]), (2, [])]


def test_without_peaks_drops_the_instance_of_a_dropped_peak():
    original = prediction([[1, 1], [4, 4]], [0, 1], [instance(0, box(0, 2, 0, 2)), instance(1, box(3, 5, 3, 5))])
    out = without_peaks(original, [True, False])
    assert [i.peak for i in out.instances] == [0] and out.instances[0].mask[4, 4]
    np.testing.assert_array_equal(out.peaks, [[4, 4]])


def test_without_peaks_of_none_is_the_prediction_itself():
    original = prediction([[1, 1]], [0])
    assert without_peaks(original, [False]) is original
    empty = prediction(np.zeros((0, 2)), [])
    assert without_peaks(empty, np.zeros(0, bool)) is empty


# ---------------------------------------------------------------------- add_hand_peaks
def test_add_hand_peaks_to_a_plain_image():
    """One model peak with its instance; two points placed by hand: the first one's instance
    covers the model's entirely (whose row goes, and whose peak's label becomes 0), the second
    gets no instance."""
    model = prediction([[1, 1]], [0], [instance(0, box(0, 3, 0, 3))])
    results = merge_predictions([()], [model], ())
    assert results.labels[1, 1] == 1
    hand = prediction([[1, 2], [5, 7]], [1, 2], [instance(0, box(0, 4, 0, 4), class_index=1, score=0.25)],
                      scores=(0.2, 0.6, 0.3))
    missed = add_hand_peaks(results, [((), np.array([[1.0, 2.0], [5.0, 7.0]]), hand)])
    assert missed == [2]
    np.testing.assert_array_equal(results.points, [[1, 1], [1, 2], [5, 7]])
    features = results.point_features
    assert features["hand_placed"].dtype == bool and features["hand_placed"].tolist() == [False, True, True]
    assert features["peak"].tolist() == [0, 1, 2]
    assert features["class_name"].tolist() == ["cat", "dog", "bird"]
    assert features["class_index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(features["peak_value"], [10, 10, 11])
    np.testing.assert_allclose(features["class_score"], [0.9, 0.6, 0.3], rtol=1e-6)
    assert features["runner_up_1"].tolist() == ["bird", "", ""]
    assert np.isnan(features["runner_up_1_value"].iloc[1:]).all()
    # the hand instance (label 2) painted over the model's (label 1), which lost its row
    assert features["label"].tolist() == [0, 2, 0]
    np.testing.assert_array_equal(results.labels, np.where(box(0, 4, 0, 4), 2, 0))
    table = results.instance_features
    assert table["label"].tolist() == [2] and table["peak"].tolist() == [1]
    assert table["class_name"].tolist() == ["dog"] and table["score"].tolist() == [pytest.approx(0.25)]
    # PRMs: one per peak, the hand points' after the model's
    assert results.prms.shape == (3, H, W) and results.prm_planes.shape == (3, 0)
    assert results.prms[1, 1, 2] == 1 and results.prms[2, 5, 7] == 2


def test_add_hand_peaks_on_a_plane_of_a_stack_to_a_run_without_peaks():
    """A stack of two planes whose run found nothing: a point on plane 1 gets its instance
    there only, a PRM on plane 1, and peak number 0."""
    empty = prediction(np.zeros((0, 2)), [])
    results = merge_predictions([(0,), (1,)], [empty, empty], (2,))
    assert results.points.shape == (0, 3) and results.labels.shape == (2, H, W)
    hand = prediction([[2, 3]], [0], [instance(0, box(1, 4, 2, 5))])
    assert add_hand_peaks(results, [((1,), np.array([[2.0, 3.0]]), hand)]) == []
    np.testing.assert_array_equal(results.points, [[1, 2, 3]])
    assert results.point_features["hand_placed"].tolist() == [True]
    assert results.point_features["label"].tolist() == [1]
    assert not results.labels[0].any()
    np.testing.assert_array_equal(results.labels[1], box(1, 4, 2, 5).astype(results.labels.dtype))
    np.testing.assert_array_equal(results.prm_planes, [[1]])
    assert results.instance_features["peak"].tolist() == [0]


def test_add_hand_peaks_of_no_points_changes_nothing():
    model = prediction([[1, 1]], [0], [instance(0, box(0, 3, 0, 3))])
    results = merge_predictions([()], [model], ())
    points, labels = results.points.copy(), results.labels.copy()
    assert add_hand_peaks(results, []) == []
    assert add_hand_peaks(results, [((), np.zeros((0, 2)), prediction(np.zeros((0, 2)), []))]) == []
    np.testing.assert_array_equal(results.points, points)
    np.testing.assert_array_equal(results.labels, labels)
    assert results.point_features["hand_placed"].tolist() == [False]


# ---------------------------------------------------------------------- PeakPRMs
def test_the_prm_layer_holds_a_predictors_maps_at_their_grid_and_shows_them_on_their_plane():
    """Plane 0's prediction has ScaledPRMs (3 maps on a 3×4 grid), plane 1's a (2, H, W) array:
    the layer holds the grid maps and that array, reads map k as resize_prms does (bit for bit) in
    its plane and zeros in the other; without_peaks and a PRM stored later keep them at the grid."""
    rng = np.random.default_rng(0)
    maps = rng.random((3, 3, 4), dtype=np.float32)
    maps /= maps.sum(axis=(1, 2), keepdims=True)
    scaled = replace(prediction([[1, 1], [2, 2], [4, 6]], [0, 1, 2]), prms=ScaledPRMs(maps, (H, W)))
    scaled = without_peaks(scaled, [False, True, False])  # maps 0 and 2
    assert isinstance(scaled.prms, ScaledPRMs) and scaled.prms.maps.shape == (2, 3, 4)
    given = prediction([[3, 3], [5, 1]], [0, 0])
    results = merge_predictions([(0,), (1,)], [scaled, given], (2,))
    eager = resize_prms(maps[[0, 2]], (H, W))
    assert len(results.prms) == 4 and results.prms.nbytes == 2 * 3 * 4 * 4 + given.prms.nbytes
    layer = prm_layer_data(results.prms, results.prm_planes, (2,))
    assert layer.shape == (4, 2, H, W) and layer.dtype == np.float32
    expected = np.zeros((4, 2, H, W), np.float32)
    expected[0, 0], expected[1, 0], expected[2:, 1] = eager[0], eager[1], given.prms
    assert np.array_equal(np.asarray(layer), expected)
    assert np.array_equal(layer[1, 0], eager[1]) and not layer[1, 1].any()
    assert np.array_equal(layer[3], expected[3]) and np.array_equal(layer[:, 1, 2:4, ::3], expected[:, 1, 2:4, ::3])
    maxima = np.array([eager[0].max(), eager[1].max(), given.prms[0].max(), given.prms[1].max()])
    np.testing.assert_array_equal(results.prms.plane_maxima(), maxima)
    np.testing.assert_array_equal(results.prms.plane_maxima(budget=1), maxima)  # resized one at a time
    # a PRM stored for peak 6 (a point added by hand): peaks 4 and 5 are zeros until theirs come
    results.prms.store(6, ScaledPRMs(maps, (H, W)), 1)
    assert len(results.prms) == 7 and results.prms.nbytes == 3 * 3 * 4 * 4 + given.prms.nbytes
    assert np.array_equal(results.prms.plane(6), resize_prms(maps[1:2], (H, W))[0])
    assert not results.prms.plane(5).any() and not results.prms[4].any()
    assert len(layer) == 4  # the layer's data as it was shown: a new one shows the stored PRM
