import numpy as np
import pytest
import torch

from napari_prm.model import find_peaks, peak_stimulation


def reference_peaks(maps: np.ndarray, win_size: int, threshold: np.ndarray | None) -> np.ndarray:
    """Independent reference: explicit windows, ties to the first position in row-major order."""
    batch, channels, height, width = maps.shape
    offset = win_size // 2
    out = np.zeros(maps.shape, dtype=bool)
    for b in range(batch):
        for c in range(channels):
            m = maps[b, c]
            for y in range(height):
                for x in range(width):
                    y0, y1 = max(0, y - offset), min(height, y + offset + 1)
                    x0, x1 = max(0, x - offset), min(width, x + offset + 1)
                    window = m[y0:y1, x0:x1]
                    first = np.unravel_index(np.argmax(window), window.shape)
                    is_peak = (first[0] + y0, first[1] + x0) == (y, x)
                    if threshold is not None:
                        is_peak &= m[y, x] >= threshold[b, c]
                    out[b, c, y, x] = is_peak
    return out


@pytest.mark.parametrize("win_size", [1, 3, 5])
def test_peaks_match_reference_with_ties(win_size):
    rng = np.random.default_rng(win_size)
    # Few distinct values make many ties inside windows.
    maps = rng.integers(0, 4, size=(2, 3, 9, 11)).astype(np.float32)
    got = find_peaks(torch.from_numpy(maps), win_size=win_size, peak_filter=None).numpy()
    assert got.any()
    np.testing.assert_array_equal(got, reference_peaks(maps, win_size, None))


def test_median_filter_uses_lower_median():
    # 16 values 0..15: the lower median is 7, the averaged one 7.5. The corner 7 is an
    # isolated local maximum, kept only with the lower median (torch.median, as the original).
    maps = np.array([[7, 0, 10, 11], [1, 2, 12, 13], [3, 4, 14, 15], [5, 6, 8, 9]], dtype=np.float32)[None, None]
    got = find_peaks(torch.from_numpy(maps), 3, "median").numpy()
    assert got[0, 0, 0, 0]
    np.testing.assert_array_equal(got, reference_peaks(maps, 3, np.array([[7.0]])))
    assert not reference_peaks(maps, 3, np.array([[7.5]]))[0, 0, 0, 0]

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    lower_median = np.sort(maps.reshape(2, 3, -1), axis=2)[:, :, 127]
    got = find_peaks(torch.from_numpy(maps), 3, "median").numpy()
    np.testing.assert_array_equal(got, reference_peaks(maps, 3, lower_median))
    assert got.sum() < find_peaks(torch.from_numpy(maps), 3, None).numpy().sum()


@pytest.mark.parametrize("peak_filter,expected", [("mean", None), ("max", None), (0.5, 0.5)])
def test_other_filters(peak_filter, expected):
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(1, 1, 7, 7)).astype(np.float32)
    threshold = {"mean": maps.mean(), "max": maps.max()}.get(peak_filter, expected)
    got = find_peaks(torch.from_numpy(maps), 3, peak_filter).numpy()
    np.testing.assert_array_equal(got, reference_peaks(maps, 3, np.array([[threshold]])))
    if peak_filter == "max":
        assert got.sum() == 1


def test_bad_filter_and_window():
    with pytest.raises(ValueError, match="peak_filter"):
        find_peaks(torch.zeros(1, 1, 3, 3), 3, "mode")
    with pytest.raises(ValueError, match="odd"):
        find_peaks(torch.zeros(1, 1, 3, 3), 4)


def test_scores_are_mean_of_peaks_and_gradient_reaches_only_peaks_unscaled():
    rng = np.random.default_rng(2)
    maps = torch.from_numpy(rng.normal(size=(2, 3, 6, 6)).astype(np.float64)).requires_grad_(True)
    scores, peak_map = peak_stimulation(maps, 3, "median")
    peaks = peak_map.numpy()
    expected = np.array([[maps.detach().numpy()[b, c][peaks[b, c]].mean() for c in range(3)] for b in range(2)])
    np.testing.assert_allclose(scores.detach().numpy(), expected)

    upstream = torch.from_numpy(rng.normal(size=(2, 3)))
    (grad,) = torch.autograd.grad(scores, maps, upstream)
    np.testing.assert_allclose(grad.numpy(), peaks * upstream.numpy()[..., None, None])

    # Numerically: with the peaks held fixed, the gradient equals d(sum of peak values)/d(map),
    # i.e. the score's derivative times the peak count (the original does not divide by it).
    eps = 1e-6
    b, c = 1, 2
    ys, xs = np.nonzero(peaks[b, c])
    bumped = maps.detach().clone()
    bumped[b, c, ys[0], xs[0]] += eps
    count = peaks[b, c].sum()
    numeric = ((bumped[b, c][peak_map[b, c]].mean() - maps.detach()[b, c][peak_map[b, c]].mean()) / eps) * count
    assert numeric.item() == pytest.approx(grad[b, c, ys[0], xs[0]].item() / upstream[b, c].item(), rel=1e-5)
