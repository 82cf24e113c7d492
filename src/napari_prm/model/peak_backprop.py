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

Batch norms with running statistics (eval mode) are patched too, so that
:func:`fold_batch_norms` can move their per-channel gradient scale into the
``1 / N`` of the convolution feeding them: the backward pass then skips the
batch norms' own element-wise pass, which pays for one of the two products above.

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
            ctx.save_for_backward(None, None)
            ctx.inv_norm = None
            return
        input = input.detach()
        weight_pos = weight.detach().clamp(min=0)
        low = input.min()
        # After a ReLU (or zero padding) the minimum is 0: U_hat is U itself, so keep no copy.
        shifted = input if bool(low == 0) else input - low
        norm = F.conv2d(shifted, weight_pos, None, stride, padding, dilation, groups)
        # 1 / (|N| + eps) where N >= eps, else 0 (N >= 0 here, so |N| = N), in place.
        blocked = norm < EPS
        # Kept on ctx (not saved for backward) so that fold_batch_norms may scale it in place.
        ctx.inv_norm = norm.add_(EPS).reciprocal_().masked_fill_(blocked, 0)
        ctx.save_for_backward(shifted, weight_pos)

    @staticmethod
    def backward(ctx, grad_output):
        shifted, weight_pos = ctx.saved_tensors
        inv_norm = ctx.inv_norm
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


class _EvalBatchNorm(torch.autograd.Function):
    """Batch norm with running statistics whose backward can be folded into the convolution before it.

    Its gradient is ``g * scale`` per channel, ``scale = weight / sqrt(running_var + eps)``,
    as autograd's; once :func:`fold_batch_norms` has moved ``scale`` into the preceding
    convolution's ``1 / N``, the backward passes ``g`` on unchanged.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, running_mean, running_var, weight, bias, eps):
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, _, running_var, weight, _, eps = inputs
        scale = torch.rsqrt(running_var.detach() + eps)
        if weight is not None:
            scale = scale * weight.detach()
        ctx.scale = scale.to(input.dtype)
        ctx.folded = False

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.folded:
            return grad_output, None, None, None, None, None
        shape = (-1,) + (1,) * (grad_output.dim() - 2)
        return grad_output * ctx.scale.view(shape), None, None, None, None, None


def _excitation_batch_norm_forward(self: nn.modules.batchnorm._BatchNorm, input):
    if self.training or self.running_mean is None or not (torch.is_grad_enabled() and input.requires_grad):
        return type(self).forward(self, input)
    self._check_input_dim(input)
    return _EvalBatchNorm.apply(input, self.running_mean, self.running_var, self.weight, self.bias, self.eps)


def fold_batch_norms(output: torch.Tensor) -> int:
    """Fold each eval-mode batch norm's scale into the convolution feeding it; returns how many.

    For use on the graph of ``output``, built inside :func:`excitation_backprop`,
    before back-propagating from it: where a convolution's output goes to one
    batch norm and nowhere else in the graph, the batch norm's per-channel
    gradient scale joins the convolution's saved ``1 / N``, so the backward pass
    skips one element-wise pass per batch norm. Gradients are unchanged up to
    rounding. Gradients taken from other outputs of the same graph would not be:
    fold only for the output that will be back-propagated.
    """
    if output.grad_fn is None:
        return 0
    consumers: dict[int, int] = {}
    nodes = []
    seen = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        for child, _ in node.next_functions:
            if child is not None:
                consumers[id(child)] = consumers.get(id(child), 0) + 1
                stack.append(child)
    folded = 0
    for node in nodes:
        if type(node).__name__ != "_EvalBatchNormBackward" or node.folded:
            continue
        conv = node.next_functions[0][0]
        if (
            type(conv).__name__ == "_ExcitationConv2dBackward"
            and consumers.get(id(conv)) == 1
            and conv.inv_norm is not None
            and not getattr(conv, "folded", False)
        ):
            conv.inv_norm.mul_(node.scale.view(-1, 1, 1).to(conv.inv_norm.dtype))
            conv.folded = True
            node.folded = True
            folded += 1
    return folded


@contextmanager
def patch_convolutions(module: nn.Module, conv_forward: Callable) -> Iterator[nn.Module]:
    """Replace ``_conv_forward`` of every ``Conv2d`` of ``module`` inside the block.

    ``conv_forward(conv, input, weight, bias)`` is bound to each convolution
    instance (the class is untouched). The patch is removed on exit, even after an
    exception; a process-wide lock keeps two threads from patching at once.

    Parameters
    ----------
    module : nn.Module
        The network whose convolutions are patched (it is yielded).
    conv_forward : callable
        The replacement of ``Conv2d._conv_forward``.
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

    Eval-mode batch norms become an equivalent function whose scale
    :func:`fold_batch_norms` can fold. The patch is per instance and removed on exit, even after an exception, so
    the module computes ordinary gradients again afterwards. A process-wide lock
    keeps two threads from patching at once.

    Parameters
    ----------
    module : nn.Module
        The network whose convolutions are patched (it is yielded).
    """
    with patch_convolutions(module, _excitation_conv_forward):
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.forward = MethodType(_excitation_batch_norm_forward, norm)
        try:
            yield module
        finally:
            for norm in norms:
                norm.__dict__.pop("forward", None)
