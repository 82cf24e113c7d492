"""Peak backpropagation: the excitation rule at every convolution (step 3 of PRM).

Inside :func:`excitation_backprop` every ``nn.Conv2d`` of a module computes its
ordinary output in the forward pass but, in the backward pass, routes the
incoming gradient ``g`` with the excitation rule of the original release::

    U_hat = U - min(U)                      # one scalar over the whole tensor
    N     = conv(U_hat, max(W, 0))          # no bias
    g_in  = conv_input_grad(g / (|N| + 1e-10) * [N >= 1e-10], max(W, 0)) * U_hat

``N`` is computed once in the forward pass and reused for every peak, so each
peak response map costs one backward pass.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import MethodType
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

_EPS = 1e-10
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
        input = input.detach()
        weight_pos = weight.detach().clamp(min=0)
        shifted = input - input.min()
        norm = F.conv2d(shifted, weight_pos, None, stride, padding, dilation, groups)
        inv_norm = torch.where(norm < _EPS, torch.zeros_like(norm), 1.0 / (norm.abs() + _EPS))
        ctx.save_for_backward(shifted, weight_pos, inv_norm)
        ctx.conv_args = (stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        shifted, weight_pos, inv_norm = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        # The saved input goes in (not an expanded placeholder) so the fast mkldnn path is taken.
        grad, _, _ = torch.ops.aten.convolution_backward(
            grad_output * inv_norm, shifted, weight_pos, None, stride, padding, dilation,
            False, [0, 0], groups, [True, False, False],
        )
        return grad * shifted, None, None, None, None, None, None


def _excitation_conv_forward(self: nn.Conv2d, input, weight, bias):
    if self.padding_mode != "zeros":
        input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        padding = (0, 0)
    else:
        padding = self.padding
    if isinstance(padding, str):
        raise NotImplementedError("excitation backprop needs numeric conv padding, not 'same'/'valid'")
    return _ExcitationConv2d.apply(input, weight, bias, self.stride, padding, self.dilation, self.groups)


@contextmanager
def excitation_backprop(module: nn.Module) -> Iterator[nn.Module]:
    """Use the excitation rule in every ``Conv2d`` of ``module`` inside the block.

    The patch is per instance and removed on exit, even after an exception, so
    the module computes ordinary gradients again afterwards. A process-wide lock
    keeps two threads from patching at once.
    """
    with _lock:
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            conv._conv_forward = MethodType(_excitation_conv_forward, conv)
        try:
            yield module
        finally:
            for conv in convs:
                conv.__dict__.pop("_conv_forward", None)
