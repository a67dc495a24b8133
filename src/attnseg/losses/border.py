"""DFN's Border Network loss: a focal loss on the edges derived from the label map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from attnseg.constants import IGNORE_INDEX


class BorderFocalLoss(nn.Module):
    """Sigmoid focal loss of one-channel border logits against semantic edges derived from the label map (DFN).

    A valid pixel is an edge (target 1) if its ``edge_width`` x ``edge_width`` neighbourhood holds a pixel of
    another valid class, found with max/min pooling of the labels; otherwise it is 0. Excluded from the loss:
    ``ignore_index`` pixels, and non-edge pixels whose neighbourhood holds an ignored pixel (there the
    neighbourhood only differs because of the unlabelled region, which may hide a class boundary). The focal
    term is ``torchvision.ops.sigmoid_focal_loss`` in fp32, averaged over the pixels kept (0, not NaN, when none).

    DFN's official code marks edges with Canny on the label map (ignored pixels set to 0) dilated by a 7x7
    kernel; here the 7x7 neighbourhood gives a band of 6 pixels along each class boundary, 3 on each side.

    Args:
        ignore_index: label value that is neither edge nor background.
        alpha: weight of the edge pixels (``1 - alpha`` for the others).
        gamma: focusing exponent.
        edge_width: side of the square neighbourhood (odd, 3 or more).
    """

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, alpha: float = 0.25, gamma: float = 2.0, edge_width: int = 7
    ) -> None:
        super().__init__()
        if edge_width < 3 or edge_width % 2 == 0:
            raise ValueError(f"BorderFocalLoss: edge_width={edge_width}, expected an odd number of pixels >= 3")
        self.ignore_index = ignore_index
        self.alpha = alpha
        self.gamma = gamma
        self.edge_width = edge_width

    def edges(self, mask: torch.Tensor) -> torch.Tensor:
        """Edge targets (B, H, W) int64 of a label map (B, H, W): 1 edge, 0 not, ``ignore_index`` excluded."""
        k = self.edge_width
        valid = mask != self.ignore_index
        labels = mask[:, None].float()  # (B, 1, H, W); max pooling pads with -inf, so the image border adds nothing
        highest = F.max_pool2d(labels.masked_fill(~valid[:, None], float("-inf")), k, stride=1, padding=k // 2)
        lowest = -F.max_pool2d(-labels.masked_fill(~valid[:, None], float("inf")), k, stride=1, padding=k // 2)
        near_ignored = F.max_pool2d((~valid[:, None]).float(), k, stride=1, padding=k // 2) > 0
        edge = ((highest > labels) | (lowest < labels))[:, 0] & valid
        excluded = ~valid | (near_ignored[:, 0] & ~edge)
        return edge.long().masked_fill(excluded, self.ignore_index)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1 or logits.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"BorderFocalLoss: logits are {tuple(logits.shape)}, expected (B, 1, H, W) for a mask of "
                f"{tuple(mask.shape)}"
            )
        target = self.edges(mask)
        kept = target != self.ignore_index
        loss = sigmoid_focal_loss(
            logits[:, 0].float(), (target == 1).float(), alpha=self.alpha, gamma=self.gamma, reduction="none"
        )
        return (loss * kept).sum() / kept.sum().clamp(min=1)
