"""PeakResponseMapping.peak_response_maps: peaks on any device, the network's modes."""

import numpy as np
import pytest
import torch

from napari_prm.model import PeakResponseMapping

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
    prm.peak_response_maps(_x(4))
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
