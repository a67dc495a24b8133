"""Exact softmax attention over blocks of queries (DANet's position attention on the CPU): ``softmax(Q^T K) V^T``
forward and backward without the (N, N) map. Used by ``attnseg.heads.danet.PositionAttention``.
"""

from __future__ import annotations

import torch

from attnseg.precision import full_precision

# Energies per image in one block of the CPU kernel: 2^20 fp32 = 4 MiB (times the batch), a few blocks live at once.
BLOCK_ELEMENTS = 1 << 20


class _QueryBlockAttention(torch.autograd.Function):
    """Exact ``softmax(Q^T K) V^T`` over blocks of queries, forward and backward, without the (N, N) map.

    The forward keeps one (B, n, N) block of energies at a time and saves only Q, K, V, the output and the
    log-sum-exp of each query's energies; the backward recomputes each block's attention from them (as flash
    attention does) and accumulates dK and dV in place. Everything stays in the channels-first layout of the
    1x1 projections, so no transposed copy of V or of the output is made. Inputs and arithmetic in fp32.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
        out, lse = _QueryBlockAttention.compute(q, k, v, block)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.block = block
        return out

    @staticmethod
    def compute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward's output and log-sum-exp, as plain tensor operations (what inference and export run)."""
        # q, k (B, C', N); v (B, C, N) -> out (B, C, N) with out[:, :, i] = sum_j S[i, j] v[:, :, j]
        out = torch.empty_like(v)
        lse = q.new_empty(q.shape[0], q.shape[2], 1)  # (B, N, 1): log sum_j exp(energy[i, j])
        for i in range(0, q.shape[2], block):
            rows = slice(i, i + block)
            energy = torch.bmm(q[:, :, rows].transpose(1, 2), k)  # (B, n, N)
            top = energy.amax(dim=-1, keepdim=True)
            weights = energy.sub_(top).exp_()  # unnormalised, in place
            total = weights.sum(dim=-1, keepdim=True)  # (B, n, 1)
            out[:, :, rows] = torch.bmm(v, weights.transpose(1, 2)).div_(total.transpose(1, 2))
            lse[:, rows] = total.log_().add_(top)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        with full_precision(q):
            grad_out = grad_out.to(v.dtype)
            grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
            delta = (grad_out * out).sum(dim=1).unsqueeze(-1)  # (B, N, 1): sum_j S[i, j] dS[i, j]
            for i in range(0, q.shape[2], ctx.block):
                rows = slice(i, i + ctx.block)
                q_rows, grad_rows = q[:, :, rows], grad_out[:, :, rows]  # (B, C', n), (B, C, n)
                weights = torch.bmm(q_rows.transpose(1, 2), k).sub_(lse[:, rows]).exp_()  # S (B, n, N)
                grad_v.baddbmm_(grad_rows, weights)
                grad_energy = torch.bmm(grad_rows.transpose(1, 2), v).sub_(delta[:, rows]).mul_(weights)
                grad_q[:, :, rows] = torch.bmm(k, grad_energy.transpose(1, 2))
                grad_k.baddbmm_(q_rows, grad_energy)
        return grad_q, grad_k, grad_v, None


def query_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``V S^T`` (B, C, N) with ``S = softmax(Q^T K)``, from Q, K (B, C', N) and V (B, C, N) in fp32, over blocks of
    about ``BLOCK_ELEMENTS / N`` queries; through the autograd function when a gradient is wanted, as plain
    operations (exportable) otherwise."""
    block = max(1, BLOCK_ELEMENTS // q.shape[2])  # queries per block
    if not torch.is_grad_enabled():
        return _QueryBlockAttention.compute(q, k, v, block)[0]
    return _QueryBlockAttention.apply(q, k, v, block)
