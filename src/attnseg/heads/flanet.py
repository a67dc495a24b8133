"""FLANet: fully attentional block and head.

Song et al., "Fully Attentional Network for Semantic Segmentation" (AAAI 2022); official code:
github.com/maggiesong7/FullyAttentional (``model.py``). One similarity map per column (and per row)
relates every channel to every other channel, with the spatial context of the whole image entering
through a prior pooled along the other axis.

Differences from the published code (same formula, per image):
    - the published block tiles the pooled priors with ``repeat(width, 1, 1)``, which pairs the
      column of image ``b`` with the prior of image ``(b * W + w) mod B``: with batch > 1 images mix.
      Here each image only ever sees its own priors, broadcast without tiled copies;
    - the C x C maps are never materialised in ``forward`` (a fused attention kernel computes the
      softmax-weighted sums); :meth:`FullyAttentionalBlock.attention_map` gives them for inspection;
    - the published output layers upsample x2 before their 3x3 conv; here every output is left at
      feature resolution (SegmentationModel upsamples the logits).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from attnseg.heads.base import SegClassifier, SegHead, branch_channels
from attnseg.precision import bf16_autocast, full_precision


def _channel_attention(seq: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Channel-to-channel attention along one spatial axis, one C x C map per line, without forming the maps.

    For each line ``l`` (a column or a row) of image ``b``:
    ``out[b, l] = softmax(seq[b, l] @ prior[b], dim=-1) @ seq[b, l]``.

    Args:
        seq: (B, L, C, E) the features of each line: C channels of length E (E = the line's length).
        prior: (B, E, C) the prior of each image, shared by its L lines.

    Returns:
        (B, L, C, E), in ``seq``'s dtype.
    """
    b, lines, c, e = seq.shape
    # Fused kernels want a contiguous, aligned last dimension (otherwise SDPA falls back to forming the maps):
    # copy lines and prior contiguously, zero-padded to a multiple of 8, which changes neither energies nor outputs.
    pad = -e % 8
    seq = F.pad(seq, (0, pad)).contiguous()
    key = F.pad(prior.transpose(1, 2), (0, pad)).contiguous().unsqueeze(1)  # (B, 1, C, E'): channel c' is a key
    # query = value = the line's channels, key = the image's prior, broadcast over lines (a view, no copy);
    # scale 1: the published energies are plain dot products.
    out = F.scaled_dot_product_attention(seq, key.expand(b, lines, c, e + pad), seq, scale=1.0)
    return out[..., :e]


class FullyAttentionalBlock(nn.Module):
    """Fully attentional block: per-column and per-row C x C attention with pooled spatial priors.

    With x (B, C, H, W) and, for column w of image b, its features ``F_w = x[b, :, :, w]`` (C, H), and for
    row h ``F_h = x[b, :, h, :]`` (C, W)::

        P_h = prior_h(mean_W(x))                 (B, H, C)  width-pooled, one C-vector per row
        P_w = prior_w(mean_H(x))                 (B, W, C)  height-pooled, one C-vector per column
        A_col[b, w] = softmax(F_w @ P_h[b], -1)  (C, C)     energy[c, c'] = sum_h x[b,c,h,w] P_h[b,h,c']
        A_row[b, h] = softmax(F_h @ P_w[b], -1)  (C, C)     softmax over c' (the last axis)
        aug_h[b, :, :, w] = A_col[b, w] @ F_w    (C, H)
        aug_w[b, :, h, :] = A_row[b, h] @ F_h    (C, W)
        out = fuse(gamma * (aug_h + aug_w) + x)

    This is the published block's ``conv1`` (= ``prior_h``), ``conv2`` (= ``prior_w``), ``energy_h``/``energy_w``
    and ``full_aug_h``/``full_aug_w``, with the priors of each image applied to that image only. ``forward`` gets
    ``A @ F`` from ``scaled_dot_product_attention`` (query = value = the line's channels, key = the prior, scale
    1), so memory stays O(B C H W): the (B, W, C, C) and (B, H, C, C) maps are neither stored nor, with a fused
    kernel, formed. Energies, softmax and the residual sum run in fp32; the result has the input's dtype. Under
    bf16 autocast the lines and priors enter the attention kernel in bf16 (a flash kernel: fp32 accumulation and
    softmax statistics), the priors and the residual sum stay fp32.

    Args:
        channels: channels C of the input and output.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.prior_h = nn.Linear(channels, channels)
        self.prior_w = nn.Linear(channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.fuse = ConvNormAct(channels, channels, kernel_size=3)

    def priors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Priors (B, H, C) from the width-pooled and (B, W, C) from the height-pooled features x (B, C, H, W)."""
        prior_h = self.prior_h(x.mean(dim=3).transpose(1, 2))
        prior_w = self.prior_w(x.mean(dim=2).transpose(1, 2))
        return prior_h, prior_w

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``aug_h + aug_w`` (B, C, H, W) in fp32 (under bf16 autocast from bf16 attention, see the class)."""
        dtype = torch.bfloat16 if bf16_autocast(x) else torch.float32
        with full_precision(x):
            prior_h, prior_w = (p.to(dtype) for p in self.priors(x.float()))
            x = x.to(dtype)
            aug_h = _channel_attention(x.permute(0, 3, 1, 2), prior_h)  # (B, W, C, H)
            aug_w = _channel_attention(x.permute(0, 2, 1, 3), prior_w)  # (B, H, C, W)
            return aug_h.permute(0, 2, 3, 1).float() + aug_w.permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aug = self.augment(x)
        with full_precision(x):
            y = (self.gamma * aug + x.float()).to(x.dtype)
        return self.fuse(y)

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The C x C maps, for inspection: (B, W, C, C) one per column and (B, H, C, C) one per row (fp32).

        Entry ``[b, w, c, c']`` is the weight channel c of column w gives to channel c' (rows sum to 1).
        Memory grows as (H + W) * C^2 per image; ``forward`` does not form these maps.
        """
        with full_precision(x):
            x = x.float()
            prior_h, prior_w = self.priors(x)
            attn_col = torch.einsum("bchw,bhd->bwcd", x, prior_h).softmax(dim=-1)
            attn_row = torch.einsum("bchw,bwd->bhcd", x, prior_w).softmax(dim=-1)
        return attn_col, attn_row


class FLANetHead(SegHead):
    """FLANet head: 2 x (3x3 conv-BN-ReLU), fully attentional block, concat with the input, conv, classifier.

    ``features[-1] -> conv -> conv -> FLA -> cat([features[-1], .]) -> 3x3 conv-BN-ReLU -> Dropout2d -> 1x1``,
    plus two auxiliary FCN heads as in the published code: ``aux`` on ``features[-2]`` and ``aux2`` on
    ``features[-3]`` (3x3 conv-BN-ReLU to 64 channels, dropout, classifier), 0.4 each (the published code gives no
    loss weights).

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep (at least three).
        num_classes: number of classes K.
        channels: width of the head's convs and of the attention block; default ``in_channels[-1] // 4`` (512 on
            ResNet-50/101, the paper's value).
        dropout: Dropout2d probability before each classifier.
        aux: add the auxiliary heads ``aux`` (on ``in_channels[-2]``) and ``aux2`` (on ``in_channels[-3]``).
        aux_channels: width of the auxiliary heads' conv (64 in the published code).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: Optional[int] = None,
        dropout: float = 0.1,
        aux: bool = True,
        aux_channels: int = 64,
    ) -> None:
        super().__init__()
        if aux and len(in_channels) < 3:
            raise ValueError(
                f"FLANetHead: aux=True needs 3 or more feature maps, the encoder gives {list(in_channels)}"
            )
        c_in = in_channels[-1]
        channels = branch_channels(in_channels, channels)
        self.convs = nn.Sequential(
            ConvNormAct(c_in, channels, kernel_size=3), ConvNormAct(channels, channels, kernel_size=3)
        )
        self.fla = FullyAttentionalBlock(channels)
        self.fuse = ConvNormAct(c_in + channels, channels, kernel_size=3)
        self.cls = SegClassifier(channels, num_classes, dropout)
        self.loss_weights = {"out": 1.0}
        self.add_aux(aux, in_channels, num_classes, dropout, aux_channels, names=("aux", "aux2"))

    @torch.no_grad()
    def attention_maps(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The block's maps for these encoder features: ``column`` (B, W, C, C), one per column, and ``row``
        (B, H, C, C), one per row; see ``FullyAttentionalBlock.attention_map``."""
        column, row = self.fla.attention_map(self.convs(features[-1]))
        return {"column": column, "row": row}

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[-1]
        y = self.fla(self.convs(x))
        outputs = {"out": self.cls(self.fuse(torch.cat([x, y], dim=1)))}
        return self.with_aux(features, outputs)
