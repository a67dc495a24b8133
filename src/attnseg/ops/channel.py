"""Channel attention as an autograd function (DANet's CAM kernel): ``A + gamma * softmax(E) A`` with ``E = A A^T``,
with a hand-written backward and subnormal weights flushed to 0. Used by ``attnseg.heads.danet.ChannelAttention``.
"""

from __future__ import annotations

import torch

from attnseg.precision import bf16_products, full_precision


def flushed_softmax(energy: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with weights below the smallest normal float (``finfo.tiny``, 1.2e-38 in fp32)
    set to 0: sharply peaked rows otherwise fill the map with subnormal numbers, which make the matrix products
    that use it tens of times slower on CPUs. Each weight changes by less than 1.2e-38."""
    weights = torch.softmax(energy, dim=-1)
    return weights.masked_fill_(weights < torch.finfo(weights.dtype).tiny, 0.0)


class _ChannelAttentionFunction(torch.autograd.Function):
    """``A + gamma * softmax(E) A`` with ``E = A A^T`` (or ``max(E) - E``), with a hand-written backward.

    Saves only A and the (B, C, C) attention, computes gamma's gradient from the attention's
    (``sum(dL/dy * SA) = sum(S * dL/dS)``), and keeps the gradients of the (C, C) maps free of subnormal numbers
    (see ``flushed_softmax``). The row maximum of ``max(E) - E`` gets no gradient: softmax ignores a shift of its
    row, so that gradient is 0. Inputs and arithmetic in fp32.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, gamma: torch.Tensor, max_minus: bool, fast: bool) -> torch.Tensor:
        out, weights = _ChannelAttentionFunction.compute(a, gamma, max_minus, fast)
        ctx.save_for_backward(a, weights, gamma)
        ctx.max_minus, ctx.fast = max_minus, fast
        return out

    @staticmethod
    def compute(a: torch.Tensor, gamma: torch.Tensor, max_minus: bool, fast: bool):
        """The forward's output and attention, as plain tensor operations (what inference and export run)."""
        # a (B, C, N) -> (B, C, N)
        with bf16_products(fast):
            energy = torch.bmm(a, a.transpose(1, 2))  # (B, C, C)
            if max_minus:
                top = energy.amax(dim=-1, keepdim=True)
                energy = energy.neg_().add_(top)
            weights = flushed_softmax(energy)
            return torch.bmm(weights, a).mul_(gamma).add_(a), weights

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        a, weights, gamma = ctx.saved_tensors
        with full_precision(a), bf16_products(ctx.fast):
            grad_y = grad_y.to(a.dtype).contiguous()
            grad_weights = torch.bmm(grad_y, a.transpose(1, 2))  # dL/dS / gamma, (B, C, C)
            weighted = grad_weights.mul_(weights)  # S * dL/dS / gamma, in place
            grad_gamma = weighted.sum().reshape(gamma.shape)
            # softmax backward: dE = S * dS - S * sum(S * dS), times gamma; subnormal results flushed to 0
            grad_energy = weighted.sub_(weights * weighted.sum(-1, keepdim=True)).mul_(gamma)
            grad_energy.masked_fill_(grad_energy.abs() < torch.finfo(grad_energy.dtype).tiny, 0.0)
            if ctx.max_minus:
                grad_energy.neg_()
            grad_a = torch.bmm(weights.transpose(1, 2), grad_y).mul_(gamma).add_(grad_y)
            grad_a.baddbmm_(grad_energy + grad_energy.transpose(1, 2), a)
        return grad_a, grad_gamma, None, None


def channel_attention(a: torch.Tensor, gamma: torch.Tensor, max_minus: bool, fast: bool) -> torch.Tensor:
    """``a + gamma * softmax(E) a`` for ``a`` (B, C, N) in fp32, ``E = a a^T`` (``max_minus``: ``max(E) - E``);
    through the autograd function when a gradient is wanted, as plain operations (exportable) otherwise."""
    if torch.is_grad_enabled():
        return _ChannelAttentionFunction.apply(a, gamma, max_minus, fast)
    return _ChannelAttentionFunction.compute(a, gamma, max_minus, fast)[0]


def channel_weights(a: torch.Tensor, max_minus: bool) -> torch.Tensor:
    """The attention (B, C, C) of ``a`` (B, C, N) in fp32: ``softmax(max(E) - E)`` or ``softmax(E)``."""
    energy = a @ a.transpose(1, 2)
    if max_minus:
        energy = energy.amax(dim=-1, keepdim=True) - energy
    return flushed_softmax(energy)
