"""Model complexity: parameter counts and FLOPs of one forward pass (``torch.utils.flop_counter``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from attnseg.heads.base import SegHead


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(all parameters, trainable parameters)``."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def extra_flop_formulas() -> dict:
    """Attention kernels ``FlopCounterMode`` does not know, counted like their CUDA counterparts (the CPU flash
    kernel behind ``scaled_dot_product_attention`` on the CPU)."""
    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}
    flash = flop_registry[aten._scaled_dot_product_flash_attention]  # takes tensors, reads their shapes

    def cpu_flash(*args, **kwargs) -> int:
        return flash(*args, **kwargs)

    cpu_flash._get_raw = True  # already reads shapes itself
    return {aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}


@torch.no_grad()
def count_flops(model: torch.nn.Module, input_size: Sequence[int], device: torch.device | str = "cpu") -> int:
    """FLOPs of one forward of ``model`` per (3, H, W) image (``FlopCounterMode``: a multiply-add counts 2), as
    executed on ``device``: a batch of one image, or of one clip for a head that takes clips (``frames`` > 1),
    divided by its frames.

    The model runs in eval mode (batch statistics and dropout untouched); each module's mode is restored after.
    """
    modes = {m: m.training for m in model.modules()}
    frames = max((getattr(m, "frames", 1) for m in model.modules() if isinstance(m, SegHead)), default=1)
    model.eval()
    try:
        x = torch.zeros(frames, 3, *input_size, device=device)
        with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
            model(x)
        return int(counter.get_total_flops()) // frames
    finally:
        for m, training in modes.items():
            m.training = training
