"""Stacks held small and resized when read (`napari_prm.scaled`): `ScaledPRMs` reads as the
eager `resize_prms` stack bit for bit, and `ScaledMasks` as `resize_nearest`'s."""

import warnings

import numpy as np
import pytest
import torch

from napari_prm import PRMPredictor, load_model
from napari_prm.masks import ScaledMasks, resize_nearest
from napari_prm.prm_maps import ScaledPRMs, resize_prms

SHAPE = (300, 451)  # over torch's grain size: a single sum over one map is split between threads


@pytest.fixture
def maps():
    """Six maps on a 24×20 grid, each summing to 1, one of them all zeros."""
    rng = np.random.default_rng(0)
    maps = rng.random((6, 24, 20), dtype=np.float32) ** 8
    maps[2] = 0
    return maps / np.maximum(maps.sum(axis=(1, 2), keepdims=True), 1e-30)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("count", [1, 2])
def test_resize_prms_gives_a_map_the_same_bits_alone_or_beside_others(maps, threads, count):
    torch.set_num_threads(count)
    together = resize_prms(maps, SHAPE)
    for k in range(len(maps)):
        assert np.array_equal(resize_prms(maps[k:k + 1], SHAPE)[0], together[k])
    torch.set_num_threads(1)
    assert np.array_equal(resize_prms(maps, SHAPE), together)
    sums = together.sum(axis=(1, 2), dtype=np.float64)
    np.testing.assert_allclose(np.delete(sums, 2), 1, rtol=1e-5)
    assert sums[2] == 0


def test_scaled_prms_read_as_the_eager_stack(maps, threads):
    torch.set_num_threads(2)
    eager = resize_prms(maps, SHAPE)
    prms = ScaledPRMs(maps, SHAPE)
    assert prms.shape == (6, *SHAPE) and len(prms) == 6 and prms.ndim == 3 and prms.dtype == np.float32
    assert prms.nbytes == maps.nbytes == 6 * 24 * 20 * 4
    for k in range(6):
        assert np.array_equal(prms[k], eager[k])
    assert np.array_equal(np.asarray(prms), eager)
    assert np.array_equal(prms[1, 5:9, ::2], eager[1, 5:9, ::2])
    assert np.array_equal(prms[..., 3], eager[..., 3])
    assert np.array_equal(prms[[0, 4], 7], eager[[0, 4], 7])
    # selecting maps resizes nothing: another ScaledPRMs, at the grid
    for keep in (slice(1, 3), [0, 5], np.array([True, False, False, True, False, False])):
        subset = prms[keep]
        assert isinstance(subset, ScaledPRMs) and subset.maps.shape[1:] == (24, 20)
        assert np.array_equal(np.asarray(subset), eager[keep])
    # the ndarray's methods, operators and numpy functions see the whole stack
    np.testing.assert_array_equal(prms.sum(axis=(1, 2)), eager.sum(axis=(1, 2)))
    assert np.array_equal(prms * 2, eager * 2) and np.array_equal(np.maximum(prms, 1e-4), np.maximum(eager, 1e-4))
    assert prms.max() == eager.max() and prms.reshape(6, -1).shape == (6, SHAPE[0] * SHAPE[1])
    assert np.array_equal(np.stack(list(prms)), eager)
    # a few at a time, in the order asked: each as the eager stack has it
    for max_bytes in (1, 10**9):
        planes = list(prms.iter_planes([3, 0, 3], max_bytes=max_bytes))
        assert len(planes) == 3 and all(np.array_equal(p, eager[k]) for p, k in zip(planes, [3, 0, 3]))
    with pytest.raises(AttributeError, match="no attribute 'peaks'"):
        getattr(prms, "peaks")  # noqa: B009 (the attribute look-up is the test)


def test_scaled_prms_reject_what_an_ndarray_rejects(maps):
    prms = ScaledPRMs(maps, SHAPE)
    with pytest.raises(IndexError):
        prms[6]
    with pytest.raises(IndexError, match="too many indices"):
        prms[0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"expected an \(N, h, w\) stack"):
        ScaledPRMs(maps[0], SHAPE)


def test_scaled_masks_select_masks_lazily_and_index_as_the_full_stack():
    rng = np.random.default_rng(1)
    small = rng.random((4, 6, 8)) > 0.5
    stack = ScaledMasks(small, (13, 17))
    full = resize_nearest(small, (13, 17))
    assert np.array_equal(stack[2], full[2]) and np.array_equal(np.asarray(stack), full)
    picked = stack[[3, 1]]
    assert isinstance(picked, ScaledMasks) and picked.masks.shape == (2, 6, 8)
    assert np.array_equal(picked.to_array(), full[[3, 1]])
    assert np.array_equal(stack[:, ::3, 2:5], full[:, ::3, 2:5])


def test_the_predictor_holds_prms_at_the_network_grid(tiny_checkpoint, small_cat):
    predictor = PRMPredictor(load_model(tiny_checkpoint), proposals="default")
    predictor.set_image(small_cat)
    prediction = predictor.predict(class_threshold=-1e4, peak_threshold=-1e4, max_peaks=6)
    prms = prediction.prms
    assert isinstance(prms, ScaledPRMs) and prms.shape == (6, 100, 151) and prms.maps.shape == (6, 96, 96)
    eager = resize_prms(predictor.peak_response_maps(prediction.peaks_crm), (100, 151))
    assert np.array_equal(np.asarray(prms), eager)
    assert prediction.image_shape == (100, 151)
    assert prediction.instances
    for instance in prediction.instances:  # each instance's PRM at the image's size, merged peaks added
        expected = eager[instance.peak].copy()
        for other in instance.merged_peaks:
            expected += eager[other]
        np.testing.assert_array_equal(instance.prm, expected)


def test_an_instances_prm_is_built_when_read_and_holds_no_image_sized_map(maps, threads):
    """`Instance.prm` was an image-sized float32 array per instance (48 MB at 3000×4000) while
    `Prediction.prms` held the maps at the network's grid."""
    import pickle

    from napari_prm.prm_maps import InstancePRM

    prms = ScaledPRMs(maps, SHAPE)
    eager = resize_prms(maps, SHAPE)
    prm = InstancePRM(prms, [4, 0, 2])
    expected = eager[4] + eager[0] + eager[2]
    assert prm.shape == SHAPE and prm.dtype == np.float32 and prm.ndim == 2 and prm.nbytes == 0
    assert np.array_equal(np.asarray(prm), expected) and np.asarray(prm).dtype == np.float32
    assert np.array_equal(prm[10:20, ::7], expected[10:20, ::7]) and prm[5, 6] == expected[5, 6]
    assert prm.sum() == expected.sum() and prm.argmax() == expected.argmax()
    np.testing.assert_array_equal(prm * 2, expected * 2)
    same = prm
    same += 1  # a new array; the lazy map stays as it was
    assert isinstance(same, np.ndarray) and np.array_equal(same, expected + 1)
    assert np.array_equal(np.asarray(prm), expected)
    # what it holds of its own is the peaks: pickled with the maps, not with an image-sized map
    assert len(pickle.dumps((prms, prm))) < len(pickle.dumps(prms)) + 1000
    with pytest.raises(ValueError, match="at least one peak"):
        InstancePRM(prms, [])


def test_the_predictors_instances_share_its_maps(tiny_checkpoint, small_cat):
    from napari_prm.prm_maps import InstancePRM

    predictor = PRMPredictor(load_model(tiny_checkpoint), proposals="default")
    predictor.set_image(small_cat)
    prediction = predictor.predict(class_threshold=-1e4, peak_threshold=-1e4, max_peaks=6)
    assert prediction.instances
    for instance in prediction.instances:
        assert isinstance(instance.prm, InstancePRM) and instance.prm.prms is prediction.prms
        assert instance.prm.peaks == (instance.peak, *instance.merged_peaks)


def test_lazy_stacks_convert_to_numpy_and_torch_in_one_piece(maps, threads):
    """``torch.as_tensor(prediction.prms)`` read the stack as a sequence of planes, item by item,
    with torch's warning "Creating a tensor from a list of numpy.ndarrays is extremely slow";
    ``__dlpack__`` gives torch the array built for the call."""
    prms = ScaledPRMs(maps, SHAPE)
    eager = resize_prms(maps, SHAPE)
    masks = ScaledMasks(maps > 1e-3, SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's slow-path warning fails the test
        assert np.array_equal(np.asarray(prms), eager) and np.asarray(prms).dtype == np.float32
        assert np.asarray(prms, dtype=np.float64).dtype == np.float64
        copied = np.array(prms, copy=True)
        copied[0] = -1  # a new array: the stack is unchanged
        assert np.array_equal(np.asarray(prms[0]), eager[0])
        tensor = torch.as_tensor(prms)
        assert tensor.dtype == torch.float32 and torch.equal(tensor, torch.from_numpy(eager))
        assert torch.equal(torch.from_dlpack(prms), tensor) and torch.equal(torch.tensor(prms), tensor)
        assert torch.as_tensor(prms, dtype=torch.float64).dtype == torch.float64
        assert torch.equal(torch.as_tensor(prms[1:3]), tensor[1:3])
        assert torch.equal(torch.as_tensor(masks), torch.from_numpy(resize_nearest(maps > 1e-3, SHAPE)))
