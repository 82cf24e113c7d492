"""Peak backpropagation: the excitation rule at every convolution (step 3 of PRM).

Inside :func:`excitation_backprop` every ``nn.Conv2d`` of a module computes its
ordinary output in the forward pass but, in the backward pass, routes the
incoming gradient ``g`` with the excitation rule of the original release::

    U_hat = U - min(U)                      # one scalar over the whole tensor
    N     = conv(U_hat, max(W, 0))          # no bias
    g_in  = conv_input_grad(g / (|N| + 1e-10) * [N >= 1e-10], max(W, 0)) * U_hat

``N`` is computed once in the forward pass and reused for every peak, so each
peak response map costs one backward pass. What is saved per convolution is
``U_hat`` (``U`` itself, no copy, when ``min(U) = 0`` as after a ReLU or zero
padding), ``max(W, 0)`` and ``1 / N`` (zero where ``N`` is below the threshold), so
the backward pass adds two element-wise products to the ordinary
input-gradient convolution. A convolution whose input needs no gradient runs
plainly.

:func:`patch_convolutions` is the per-instance patch underneath; the benchmark's
reference implementation (``napari_prm.bench``) uses it too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import MethodType
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-10
"""Normalisers below this block the signal (the original release's threshold)."""
_lock = threading.RLock()


class _ExcitationConv2d(torch.autograd.Function):
    """conv2d whose backward is the excitation rule (input gradient only)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, stride, padding, dilation, groups = inputs
        ctx.conv_args = (stride, padding, dilation, groups)
        if not input.requires_grad:
            # Only the weight asks for a gradient, which the rule never gives: skip the normaliser.
            ctx.save_for_backward(None, None, None)
            return
        input = input.detach()
        weight_pos = weight.detach().clamp(min=0)
        low = input.min()
        # After a ReLU (or zero padding) the minimum is 0: U_hat is U itself, so keep no copy.
        shifted = input if bool(low == 0) else input - low
        norm = F.conv2d(shifted, weight_pos, None, stride, padding, dilation, groups)
        # 1 / (|N| + eps) where N >= eps, else 0 (N >= 0 here, so |N| = N), in place.
        blocked = norm < EPS
        inv_norm = norm.add_(EPS).reciprocal_().masked_fill_(blocked, 0)
        ctx.save_for_backward(shifted, weight_pos, inv_norm)

    @staticmethod
    def backward(ctx, grad_output):
        shifted, weight_pos, inv_norm = ctx.saved_tensors
        if shifted is None:  # the input needed no gradient (see setup_context)
            return None, None, None, None, None, None, None
        stride, padding, dilation, groups = ctx.conv_args
        # The saved input goes in (not an expanded placeholder) so the fast mkldnn path is taken.
        grad, _, _ = torch.ops.aten.convolution_backward(
            grad_output * inv_norm, shifted, weight_pos, None, stride, padding, dilation,
            False, [0, 0], groups, [True, False, False],
        )
        # ``grad`` is a fresh tensor: multiply in place (one allocation less per convolution).
        return grad.mul_(shifted), None, None, None, None, None, None


def _excitation_conv_forward(self: nn.Conv2d, input, weight, bias):
    if self.padding_mode != "zeros":
        input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        padding = (0, 0)
    else:
        padding = self.padding
    if isinstance(padding, str):
        raise NotImplementedError("excitation backprop needs numeric conv padding, not 'same'/'valid'")
    if not (torch.is_grad_enabled() and input.requires_grad):
        # No gradient will reach this input (no_grad, or layers under the fast mode's
        # stopping point when the image needs none): an ordinary convolution, no normaliser.
        with torch.no_grad():
            return F.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)
    return _ExcitationConv2d.apply(input, weight, bias, self.stride, padding, self.dilation, self.groups)


@contextmanager
def patch_convolutions(module: nn.Module, conv_forward: Callable) -> Iterator[nn.Module]:
    """Replace ``_conv_forward`` of every ``Conv2d`` of ``module`` inside the block.

    ``conv_forward(conv, input, weight, bias)`` is bound to each convolution
    instance (the class is untouched). The patch is removed on exit, even after an
    exception; a process-wide lock keeps two threads from patching at once.
    """
    with _lock:
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            conv._conv_forward = MethodType(conv_forward, conv)
        try:
            yield module
        finally:
            for conv in convs:
                conv.__dict__.pop("_conv_forward", None)


@contextmanager
def excitation_backprop(module: nn.Module) -> Iterator[nn.Module]:
    """Use the excitation rule in every ``Conv2d`` of ``module`` inside the block.

    The patch is per instance and removed on exit, even after an exception, so
    the module computes ordinary gradients again afterwards. A process-wide lock
    keeps two threads from patching at once.
    """
    with patch_convolutions(module, _excitation_conv_forward):
        yield module
