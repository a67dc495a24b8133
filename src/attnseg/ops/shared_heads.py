"""Attention whose values are wider than its queries and keys, as flash-eligible heads (DANet's position attention
on CUDA under bf16): ``softmax(Q K^T) V`` with V's C channels split into C / d heads of the key width d, every head
with the same Q and K. Each head's softmax is the same one, so the result equals the one-head attention exactly
(up to the kernel's rounding); a head dimension of d (64 for PAM's default C / 8 at C = 512) is within the flash
kernels' limit, where a value width of 512 is not.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def shared_key_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[torch.Tensor]:
    """``softmax(Q K^T) V`` (B, N, C) for Q, K (B, N, d) and V (B, N, C) with C a multiple of d (None otherwise),
    unscaled energies, computed as C / d heads sharing Q and K."""
    b, n, d = q.shape
    c = v.shape[-1]
    if c % d:
        return None
    heads = c // d
    values = v.reshape(b, n, heads, d).transpose(1, 2)  # (B, heads, N, d), a view
    queries, keys = (t[:, None].expand(b, heads, n, d) for t in (q, k))  # the same Q and K for every head
    out = F.scaled_dot_product_attention(queries, keys, values, scale=1.0)  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(b, n, c)
