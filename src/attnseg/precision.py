"""Where a computation runs under autocast and where it leaves it: the attention modules' bf16 fast path
(``bf16_autocast``, ``bf16_products``) and the fp32 regions of energies, softmax and losses (``full_precision``)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def bf16_autocast(x: torch.Tensor) -> bool:
    """Whether ``x``'s device runs under bf16 autocast (``bf16-mixed``): the attention modules' fast path."""
    kind = x.device.type
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16


@contextmanager
def bf16_products(enabled: bool = True) -> Iterator[None]:
    """Inside the block, fp32 matrix products on the CPU take bf16-rounded inputs and accumulate and return fp32
    (oneDNN's bf16 math mode, which runs on AMX / AVX512-BF16): the attention modules' fast path under bf16
    autocast, as flash attention does on GPUs (bf16 operands, fp32 accumulators and softmax statistics). Products
    of tensors that are bf16 already (autocast's outputs) are exact up to fp32 accumulation. A no-op when
    ``enabled`` is false; other devices are not affected."""
    if not enabled:
        yield
        return
    matmul = torch.backends.mkldnn.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def full_precision(x: torch.Tensor) -> torch.autocast:
    """A region where autocast is off on ``x``'s device: fp32 energies, softmax and losses."""
    return torch.autocast(device_type=x.device.type, enabled=False)
