"""SegmentationModel: a dilated encoder and a head, joined in one short forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.encoder import Encoder
from attnseg.heads.base import SegHead


class SegmentationModel(nn.Module):
    """``image (B, 3, H, W) -> encoder -> [features] -> head -> {name: (B, K, H, W) logits}``.

    Every logit output of the head is upsampled bilinearly to the input size, so losses and metrics compare it with
    the full-resolution label map; outputs the head declares as ``embeddings`` keep their feature resolution.
    """

    def __init__(self, encoder: Encoder, head: SegHead) -> None:
        super().__init__()
        if not isinstance(head, SegHead):
            name = type(head).__name__
            raise TypeError(f"model.head: {name} is not an attnseg.heads.SegHead (see attnseg/heads/base.py)")
        self.encoder = encoder
        self.head = head

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(images)
        outputs = self.head(features)
        size = images.shape[-2:]
        keep = set(self.head.embeddings)
        return {
            name: F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            if logits.shape[-2:] != size and name not in keep
            else logits
            for name, logits in outputs.items()
        }
