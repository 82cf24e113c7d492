import threading

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_prm.model import PeakResponseMapping, excitation_backprop


def test_excitation_rule_on_hand_computable_layer():
    conv = nn.Conv2d(1, 1, kernel_size=2, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]]))
        conv.bias.fill_(7.0)  # the rule ignores the bias
    u = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]], requires_grad=True)
    with excitation_backprop(conv):
        (grad,) = torch.autograd.grad(conv(u), u, torch.ones(1, 1, 1, 1))
    # U_hat = U + 1 = [[2, 0], [3, 1]]; W+ = [[1, 0], [0.5, 3]]; N = 2 + 1.5 + 3 = 6.5
    expected = np.array([[2 * 1, 0 * 0], [3 * 0.5, 1 * 3]]) / 6.5
    np.testing.assert_allclose(grad[0, 0].numpy(), expected, rtol=1e-6)


def test_excitation_rule_zero_normaliser_blocks_the_signal():
    conv = nn.Conv2d(1, 1, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(-1.0)  # no positive weight: N = 0 everywhere
    u = torch.rand(1, 1, 3, 3, requires_grad=True)
    with excitation_backprop(conv):
        (grad,) = torch.autograd.grad(conv(u).sum(), u)
    assert torch.count_nonzero(grad) == 0


class TwoLayer(nn.Module):
    """Conv -> ReLU -> 1x1 conv with known weights: a PRM computable by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.head = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1))
            self.head.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def test_prm_of_a_hand_computable_network():
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    prm = PeakResponseMapping(TwoLayer(), peak_filter=None)
    result = prm.peak_response_maps(x, peaks=torch.tensor([[0, 1, 2]]))
    # head: N = relu(h) at the peak, so the signal reaching conv's output is 1 at (1, 2).
    # conv: U_hat = x - min(x); N = sum_c W+_c U_hat_c; gradient_c = W+_c U_hat_c / N.
    shifted = (x - x.min())[0, :, 1, 2]
    w_pos = torch.tensor([1.0, 2.0, 0.0])
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[1, 2] = 1.0  # the channel sum of W+_c U_hat_c / N is 1, and the PRM is normalised
    assert (w_pos * shifted).sum() > 0
    np.testing.assert_allclose(result.prms[0].numpy(), expected, atol=1e-6)
    assert result.peak_values[0] == pytest.approx(prm.class_response_maps(x)[0, 0, 1, 2].item(), rel=1e-6)


def small_network(num_classes=3):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False),  # grouped
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),  # depthwise, strided
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, num_classes, 1),
    )
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.3)
    return net


def test_batched_peaks_equal_one_at_a_time():
    prm = PeakResponseMapping(small_network())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    single = prm.peak_response_maps(x, peak_batch_size=1)
    batched = prm.peak_response_maps(x, peak_batch_size=4)
    assert single.peaks.shape[0] >= 5
    torch.testing.assert_close(batched.peaks, single.peaks)
    torch.testing.assert_close(batched.prms, single.prms, rtol=1e-5, atol=1e-7)
    sums = single.prms.flatten(1).sum(1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert (single.prms >= 0).all()


def test_thresholds_and_empty_result():
    prm = PeakResponseMapping(small_network())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    everything = prm.peak_response_maps(x)
    strong = prm.peak_response_maps(x, peak_threshold=float(everything.peak_values.median()))
    assert 0 < len(strong.peaks) < len(everything.peaks)
    assert (strong.peak_values > everything.peak_values.median()).all()
    top_class = int(everything.scores.argmax())
    only_top = prm.peak_response_maps(x, class_threshold=float(everything.scores.max()))
    assert set(only_top.peaks[:, 0].tolist()) == {top_class}
    none = prm.peak_response_maps(x, class_threshold=float(everything.scores.max()) + 1)
    assert none.peaks.shape == (0, 3) and none.prms.shape == (0, 32, 32) and none.peak_values.shape == (0,)


def test_patching_does_not_leak_and_restores_state():
    prm = PeakResponseMapping(small_network()).train()
    reference = PeakResponseMapping(small_network()).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    prm.peak_response_maps(x)
    assert prm.training
    assert all(p.requires_grad for p in prm.parameters())
    assert not any("_conv_forward" in m.__dict__ for m in prm.modules())
    prm.eval()
    grads = []
    for net in (prm, reference):
        xi = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net.class_response_maps(xi)[0, 1].sum(), xi)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_exception_inside_patch_still_unpatches():
    net = small_network()
    with pytest.raises(RuntimeError):
        with excitation_backprop(net):
            raise RuntimeError("boom")
    assert not any("_conv_forward" in m.__dict__ for m in net.modules())


def test_same_result_from_a_worker_thread():
    prm = PeakResponseMapping(small_network())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    expected = prm.peak_response_maps(x).prms
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("prms", prm.peak_response_maps(x).prms))
    thread.start()
    thread.join()
    torch.testing.assert_close(results["prms"], expected)


def test_sub_pixel_locating_factor_upsamples_crms():
    prm = PeakResponseMapping(small_network(), sub_pixel_locating_factor=4)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    result = prm.peak_response_maps(x)
    assert result.crms.shape == (3, 32, 32)  # 8x8 CRMs upsampled by 4
    assert result.prms.shape[1:] == (32, 32)


def test_one_image_only():
    prm = PeakResponseMapping(small_network())
    with pytest.raises(ValueError, match="one image"):
        prm.peak_response_maps(torch.zeros(2, 3, 16, 16))


# --------------------------------------------------------------------------- exactness
def _strongest_peaks(network, x, count):
    with torch.no_grad():
        crms = network.class_response_maps(x)
    from napari_prm.model import find_peaks

    candidates = torch.nonzero(find_peaks(crms, network.win_size, None)[0])
    values = crms[0][candidates[:, 0], candidates[:, 1], candidates[:, 2]]
    return candidates[values.argsort(descending=True)[:count]]


@pytest.mark.parametrize("batch", [1, 3])
def test_prms_equal_the_original_one_backward_per_peak_loop(batch):
    from types import SimpleNamespace

    from napari_prm.bench import original_loop_prms

    network = PeakResponseMapping(small_network(), peak_filter=None)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    peaks = _strongest_peaks(network, x, 5)
    ours = network.peak_response_maps(x, peaks=peaks, peak_batch_size=batch).prms
    reference = original_loop_prms(SimpleNamespace(network=network), x, peaks)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_builtin_model_prms_equal_the_original_loop():
    """EfficientNet-Lite0 ("same" padding, depthwise, residuals, 1000 classes) at a small size."""
    from napari_prm import load_model
    from napari_prm.bench import original_loop_prms

    model = load_model("imagenet")
    from skimage import data

    from napari_prm.model.transforms import as_rgb_float, to_network_input

    x = to_network_input(as_rgb_float(data.chelsea()), (160, 160), model.mean, model.std)
    peaks = _strongest_peaks(model.network, x, 3)
    ours = model.network.peak_response_maps(x, peaks=peaks).prms
    batched = model.network.peak_response_maps(x, peaks=peaks, peak_batch_size=3).prms
    reference = original_loop_prms(model, x, peaks)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-8)


def test_no_normaliser_when_no_gradient_is_needed():
    """Inside the patch, a convolution whose input needs no gradient is an ordinary one."""
    net = small_network()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    with excitation_backprop(net):
        with torch.no_grad():
            no_grad = net(x)
        plain_input = net(x)
    torch.testing.assert_close(no_grad, expected)
    torch.testing.assert_close(plain_input, expected)
    assert no_grad.grad_fn is None


# --------------------------------------------------------------------------- batch norm folding
def test_folding_batch_norms_keeps_the_gradients():
    from napari_prm.model.peak_backprop import fold_batch_norms

    net = small_network().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    seed = torch.zeros(1, 3, 4, 4)
    seed[0, 1, 2, 1] = 1
    grads = []
    for fold in (False, True):
        xi = x.clone().requires_grad_(True)
        with excitation_backprop(net):
            out = net(xi)
            if fold:
                assert fold_batch_norms(out) == 3
                assert fold_batch_norms(out) == 0  # once only
            (grad,) = torch.autograd.grad(out, xi, seed)
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)
    assert not any("forward" in m.__dict__ for m in net.modules())


class ConvFeedsTwo(nn.Module):
    """A convolution whose output goes to a batch norm and, again, to the head: not foldable."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.2, 3.0)
            self.bn.weight.uniform_(0.5, 2.0)

    def forward(self, x):
        z = self.conv(x)
        return self.head(torch.relu(self.bn(z)) + torch.relu(z))


def test_a_convolution_with_two_consumers_is_not_folded():
    from napari_prm.model.peak_backprop import fold_batch_norms

    net = ConvFeedsTwo().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(8)) - 0.3
    grads = []
    for fold in (False, True):
        xi = x.clone().requires_grad_(True)
        with excitation_backprop(net):
            out = net(xi)
            if fold:
                assert fold_batch_norms(out) == 0
            (grad,) = torch.autograd.grad(out[0, 1, 3, 3], xi)
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_batch_norm_in_train_mode_is_left_alone():
    net = small_network().train()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    with excitation_backprop(net):
        out = net(x)
    assert "_EvalBatchNorm" not in repr(out.grad_fn.next_functions)
    names = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack += [child for child, _ in node.next_functions]
    assert "NativeBatchNormBackward0" in names and "_EvalBatchNormBackward" not in names
