"""Criss-cross attention as an autograd function (CCNet's kernel): every position of a (B, H, W, C) "lines" layout
attends to its column and row, with a hand-written backward that saves only Q, K, V and the attention.

``criss_cross(x, q, k, v, gamma, fast)`` is ``x + gamma * attention(Q, K) V``; ``criss_cross_weights(q, k)`` the
column and row weights. Used by ``attnseg.heads.ccnet.CrissCrossAttention``.
"""

from __future__ import annotations

import torch

from attnseg.precision import bf16_products, full_precision


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format, to return the result in."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def lines(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) contiguous (a view of a channels-last tensor): every row and every column of an
    image is then a matrix with unit-stride channels, which the batched matrix products read without copies."""
    return t.permute(0, 2, 3, 1).contiguous()


def _energies(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dot products along columns and rows of Q, K (B, H, W, C'): ``column[b, w, h, g] = Q[b, h, w] . K[b, g, w]``
    (B, W, H, H) and ``row[b, h, w, v] = Q[b, h, w] . K[b, h, v]`` (B, H, W, W), in fp32."""
    b, h, w, _ = q.shape
    column, row = q.new_empty(b, w, h, h, dtype=torch.float32), q.new_empty(b, h, w, w, dtype=torch.float32)
    for i in range(b):  # one image at a time: its columns and rows are batches of strided views, not copies
        torch.bmm(q[i].transpose(0, 1), k[i].permute(1, 2, 0), out=column[i])
        torch.bmm(q[i], k[i].transpose(1, 2), out=row[i])
    return column, row


def _softmax(column: torch.Tensor, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One softmax over each position's column and row energies together, in place; the centre is counted once,
    in the row (its column entry weighs 0)."""
    column.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    top = torch.maximum(column.amax(-1).transpose(1, 2), row.amax(-1))  # (B, H, W)
    column.sub_(top.transpose(1, 2)[..., None]).exp_()
    row.sub_(top[..., None]).exp_()
    total = column.sum(-1).transpose(1, 2) + row.sum(-1)
    return column.div_(total.transpose(1, 2)[..., None]), row.div_(total[..., None])


def _along_lines(column: torch.Tensor, row: torch.Tensor, t: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Sums of ``t`` (B, H, W, C) along columns and rows weighted by ``column`` (B, W, H, H), ``row`` (B, H, W, W):
    ``out[h, w] = sum_g column[w, h, g] t[g, w] + sum_v row[h, w, v] t[h, v]`` (each position gathers from its
    column and row), or with ``transpose`` its adjoint (each position spreads ``t`` over its column and row).
    Products in ``t``'s dtype (each sum accumulated in fp32, rounded once), the result in fp32."""
    out = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    for i in range(t.shape[0]):
        c, r = (column[i].transpose(1, 2), row[i].transpose(1, 2)) if transpose else (column[i], row[i])
        out[i] = torch.bmm(r, t[i])
        out[i].add_(torch.bmm(c, t[i].transpose(0, 1)).transpose(0, 1))
    return out


def _aggregate(column, row, t, transpose: bool, fast: bool) -> torch.Tensor:
    """``_along_lines`` of the attention and values (or output gradients): on the fast path from bf16 weights and
    values, as flash attention does; otherwise in fp32."""
    if fast:
        column, row, t = column.to(torch.bfloat16), row.to(torch.bfloat16), t.to(torch.bfloat16)
    return _along_lines(column, row, t, transpose)


class _CrissCrossFunction(torch.autograd.Function):
    """``x + gamma * out`` with ``out`` the criss-cross attention of Q, K, V, all given as lines (B, H, W, C), with
    a hand-written backward.

    Only Q, K, V and the attention (column (B, W, H, H) and row (B, H, W, W) weights) are saved; gamma's gradient
    comes from the attention's gradient (``sum(dL/dy * out) = sum(A * dL/dA)``), every other buffer is freed as
    soon as it is used, and every product reads rows and columns as strided views (no transposed copies).
    Energies, softmax and their gradients in fp32; with ``fast`` (bf16 autocast) products take bf16-rounded
    operands with fp32 accumulation.
    """

    @staticmethod
    def forward(ctx, x, q, k, v, gamma, fast: bool):
        out, column, row = _CrissCrossFunction.compute(x, q, k, v, gamma, fast)
        ctx.save_for_backward(q, k, v, column, row, gamma)
        ctx.fast = fast
        return out

    @staticmethod
    def compute(x, q, k, v, gamma, fast: bool):
        """The forward's output and attention, as plain tensor operations (what inference and export run)."""
        with bf16_products(fast):
            column, row = _softmax(*_energies(q, k))
        return torch.addcmul(x, gamma, _aggregate(column, row, v, False, fast)), column, row

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, k, v, column, row, gamma = ctx.saved_tensors
        with full_precision(q), bf16_products(ctx.fast):
            dy = grad_y.float().contiguous()
            grad_column, grad_row = _energies(dy, v.float())  # dL/dA / gamma
            weighted = (grad_column * column).sum(-1).transpose(1, 2) + (grad_row * row).sum(-1)  # (B, H, W)
            grad_gamma = weighted.sum().reshape(gamma.shape)
            # softmax backward, in place: dE = A * (dA - sum(A * dA)); the masked centre has A = 0, so dE = 0 there
            grad_column.sub_(weighted.transpose(1, 2)[..., None]).mul_(column).mul_(gamma)
            grad_row.sub_(weighted[..., None]).mul_(row).mul_(gamma)
            grad_v = _aggregate(column, row, dy, True, ctx.fast).mul_(gamma)
            grad_q = _along_lines(grad_column, grad_row, k, False)
            grad_k = _along_lines(grad_column, grad_row, q, True)
        return dy, grad_q, grad_k, grad_v, grad_gamma, None


def criss_cross(x, q, k, v, gamma, fast: bool) -> torch.Tensor:
    """``x + gamma * out`` with ``out`` the criss-cross attention of Q, K, V, all as lines (B, H, W, C); through
    the autograd function when a gradient is wanted, as plain operations (exportable) otherwise."""
    if torch.is_grad_enabled():
        return _CrissCrossFunction.apply(x, q, k, v, gamma, fast)
    return _CrissCrossFunction.compute(x, q, k, v, gamma, fast)[0]


def criss_cross_weights(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention of Q, K (B, H, W, C') in fp32: column weights (B, W, H, H) (the centre 0) and row weights
    (B, H, W, W); each position's column and row weights sum to 1 together."""
    return _softmax(*_energies(q.float(), k.float()))
