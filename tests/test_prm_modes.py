"""PeakResponseMapping.peak_response_maps: peaks on any device, the network's modes, the fast mode."""

import numpy as np
import pytest
import torch

from napari_prm.model import PeakResponseMapping, build_fcn
from test_peak_backprop import small_network


def _x(seed=0, size=32):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- peaks given by the caller
def test_peaks_as_tensor_on_the_model_device_numpy_or_list_agree():
    prm = PeakResponseMapping(small_network())
    device = next(prm.parameters()).device
    x = _x(1).to(device)
    given = [[0, 2, 3], [2, 5, 1]]
    results = [
        prm.peak_response_maps(x, peaks=torch.tensor(given, device=device)),
        prm.peak_response_maps(x, peaks=torch.tensor(given, dtype=torch.int32, device=device)),
        prm.peak_response_maps(x, peaks=np.array(given)),
        prm.peak_response_maps(x, peaks=given),
        prm.peak_response_maps(x, peaks=lambda shape: np.array(given)),
    ]
    for result in results[1:]:
        torch.testing.assert_close(result.peaks, results[0].peaks)
        torch.testing.assert_close(result.prms, results[0].prms)
    assert results[0].peaks.tolist() == given
    assert results[0].peaks.device.type == "cpu"  # results always come back on the CPU


def test_peaks_outside_the_crms_are_refused_on_any_input_type():
    prm = PeakResponseMapping(small_network())
    x = _x(2)
    for bad in ([[0, 8, 0]], np.array([[3, 0, 0]]), torch.tensor([[0, 0, -1]])):
        with pytest.raises(ValueError, match="within the CRM shape"):
            prm.peak_response_maps(x, peaks=bad)


def test_check_peaks_compares_on_the_peaks_device():
    # The limits are built on the peaks' device (the CUDA crash of issue 10 compared CUDA
    # peaks with CPU limits). Without CUDA, peaks on the "meta" device show it: the
    # comparison itself now works there and only reading its value fails, where CPU
    # limits failed with a device mismatch ("... not on the expected device meta").
    peaks = torch.tensor([[1, 2, 3]], device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)) as error:
        PeakResponseMapping._check_peaks(peaks, (4, 5, 6))
    assert "device" not in str(error.value)


# --------------------------------------------------------------------------- modes
def _modes(module):
    return {name: m.training for name, m in module.named_modules()}


@pytest.mark.parametrize("train", [False, True])
def test_every_submodule_keeps_its_own_mode(train):
    fcn = small_network().train(train)
    before = _modes(fcn)
    prm = PeakResponseMapping(fcn)  # a fresh wrapper is in train mode whatever fcn's mode is
    assert prm.training
    prm.peak_response_maps(_x(3))
    assert _modes(fcn) == before
    assert prm.training


def test_mixed_modes_are_restored_exactly():
    fcn = small_network().eval()
    fcn[1].train()  # one BatchNorm in train mode, the rest in eval mode
    prm = PeakResponseMapping(fcn).eval()
    before = _modes(prm)
    prm.peak_response_maps(_x(4), mode="fast", fast_stride=2)
    assert _modes(prm) == before


def test_modes_are_restored_after_an_error():
    fcn = small_network().eval()
    prm = PeakResponseMapping(fcn)
    before = _modes(prm)
    with pytest.raises(ValueError):
        prm.peak_response_maps(_x(5), peaks=[[0, 99, 99]])
    assert _modes(prm) == before


def test_eval_network_gives_the_same_prms_before_and_after():
    fcn = small_network().eval()
    prm = PeakResponseMapping(fcn)
    first = prm.peak_response_maps(_x(6))
    with torch.no_grad():
        crms = fcn(_x(6))
    second = prm.peak_response_maps(_x(6))
    torch.testing.assert_close(second.prms, first.prms)
    torch.testing.assert_close(crms, second.crms[None])  # BatchNorm still uses running stats


# --------------------------------------------------------------------------- fast mode
def test_fast_mode_maps_are_normalised_and_batching_does_not_change_them():
    prm = PeakResponseMapping(small_network())
    x = _x(7)
    one = prm.peak_response_maps(x, mode="fast", fast_stride=2, peak_batch_size=1)
    batched = prm.peak_response_maps(x, mode="fast", fast_stride=2, peak_batch_size=4)
    assert one.prms.shape == (len(one.peaks), 32, 32) and len(one.peaks) >= 3
    torch.testing.assert_close(batched.prms, one.prms, rtol=1e-5, atol=1e-7)
    sums = one.prms.flatten(1).sum(1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert (one.prms >= 0).all()
    exact = prm.peak_response_maps(x)
    torch.testing.assert_close(one.peaks, exact.peaks)
    torch.testing.assert_close(one.scores, exact.scores)


def test_fast_mode_is_the_upsampled_excitation_signal_of_its_layer():
    prm = PeakResponseMapping(small_network(), peak_filter=None).eval()
    x = _x(8)
    layer = prm.feature_layer(x, 2)
    assert layer == (prm.fcn[6], 0)  # the depthwise conv takes the signal from stride 2 to 4
    peak = torch.tensor([[1, 3, 4]])
    fast = prm.peak_response_maps(x, peaks=peak, mode="fast", fast_stride=2).prms[0]

    from napari_prm.model import excitation_backprop

    captured = []
    handle = prm.fcn[6].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        with torch.enable_grad(), excitation_backprop(prm):
            xi = x.clone().requires_grad_(True)
            crms = prm.fcn(xi)
            (grad,) = torch.autograd.grad(crms[0, 1, 3, 4], captured[0])
    finally:
        handle.remove()
    expected = torch.nn.functional.interpolate(
        grad.sum(1, keepdim=True).clamp(min=0), size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(fast, expected / expected.sum())


@pytest.mark.parametrize("stride", [1, 4, 16])
def test_fast_mode_without_a_coarser_layer_or_at_stride_1_is_exact(stride):
    prm = PeakResponseMapping(small_network())  # output stride 4
    x = _x(9)
    exact = prm.peak_response_maps(x)
    fast = prm.peak_response_maps(x, mode="fast", fast_stride=stride)
    torch.testing.assert_close(fast.prms, exact.prms, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "backbone, stride, name",
    [
        ("efficientnet_lite0", 8, "features._blocks.5._depthwise_conv"),
        ("efficientnet_lite0", 4, "features._blocks.3._depthwise_conv"),
        ("resnet50", 8, "features.6.0.downsample.0"),
        ("vgg16", 8, "features.23"),
        ("tiny", 2, "features.6"),
        ("tiny", 8, None),
    ],
)
def test_feature_layer_of_each_backbone(backbone, stride, name):
    torch.manual_seed(0)
    fcn, _, _ = build_fcn(backbone, 3, pretrained=False)
    prm = PeakResponseMapping(fcn).eval()
    x = torch.randn(1, 3, 64, 96)
    layer = prm.feature_layer(x, stride)
    names = {id(m): n for n, m in fcn.named_modules()}
    assert (names[id(layer[0])] if layer else None) == name
    if layer is not None:
        assert layer[1] == 0
    result = prm.peak_response_maps(x, mode="fast", fast_stride=stride, peaks=[[0, 0, 0], [2, 1, 1]])
    assert result.prms.shape == (2, 64, 96)
    assert torch.isfinite(result.prms).all()


def test_feature_layer_is_cached_per_size_and_checked():
    prm = PeakResponseMapping(small_network()).eval()
    assert prm.feature_layer(_x(0), 2) is prm.feature_layer(_x(1), 2)
    with pytest.raises(ValueError, match="fast_stride"):
        prm.feature_layer(_x(0), 0)
    with pytest.raises(ValueError, match="mode"):
        prm.peak_response_maps(_x(0), mode="approximate")
