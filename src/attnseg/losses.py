"""Segmentation losses. Each takes ``(logits (B, K, H, W), mask (B, H, W))`` and derives any
target it needs from the label map itself."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy averaged over the pixels that are not ``ignore_index``.

    Unlike ``nn.CrossEntropyLoss`` it returns 0 (not NaN) for a batch whose pixels are all ignored.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        class_weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer(
            "class_weight", torch.tensor(class_weight, dtype=torch.float) if class_weight else None, persistent=False
        )

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(
            logits.float(),
            mask,
            weight=self.class_weight,
            ignore_index=self.ignore_index,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        valid = mask != self.ignore_index
        if self.class_weight is None:
            return loss / valid.sum().clamp(min=1)
        return loss / self.class_weight[mask[valid]].sum().clamp(min=1e-12)
