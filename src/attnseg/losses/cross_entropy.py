"""Cross-entropy with an ignore label, and its online hard example mining variant (OHEM)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.constants import IGNORE_INDEX


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy averaged over the pixels that are not ``ignore_index``.

    Unlike ``nn.CrossEntropyLoss`` it returns 0 (not NaN) for a batch whose pixels are all ignored.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
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


class OHEMCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only (online hard example mining).

    A valid pixel is kept if its predicted probability of the true class is below ``thresh``; if fewer than
    ``min_kept`` pixels are, the threshold rises to the ``min_kept``-th smallest probability, so at least
    ``min_kept`` pixels of the batch are kept (all of them if the batch has fewer). This is CCNet's
    ``OhemCrossEntropy2d`` (``min_kept`` counts pixels of the whole batch, whereas mmsegmentation's
    ``OHEMPixelSampler`` counts them per image). The loss is the mean cross-entropy over the kept pixels,
    0 (not NaN) when no pixel is valid. The selection is not differentiated through.

    Args:
        ignore_index: label value excluded from the loss.
        thresh: probability below which a pixel is hard, in (0, 1].
        min_kept: the least number of pixels kept (0: the threshold alone decides).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, thresh: float = 0.7, min_kept: int = 100000) -> None:
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OHEMCrossEntropy: thresh={thresh}, expected a probability in (0, 1]")
        if min_kept < 0:
            raise ValueError(f"OHEMCrossEntropy: min_kept={min_kept}, expected 0 or more")
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = min_kept

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask != self.ignore_index
        target = mask.masked_fill(~valid, 0)
        nll = -F.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]  # (B, H, W)
        with torch.no_grad():
            prob = torch.exp(-nll)
            kept = valid & (prob < self.thresh)
            num_valid = int(valid.sum())
            if self.min_kept > 0 and num_valid > 0:
                kth = prob[valid].kthvalue(min(self.min_kept, num_valid)).values
                kept |= valid & (prob <= kth)
        return (nll * kept).sum() / kept.sum().clamp(min=1)
