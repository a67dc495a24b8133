"""DFN: Discriminative Feature Network (Smooth Network with channel attention, Border Network).

Yu et al., "Learning a Discriminative Feature Network for Semantic Segmentation" (CVPR 2018); official code:
github.com/ycszen/TorchSeg (``model/dfn/*/network.py``, blocks in ``furnace/seg_opr/seg_oprs.py``).

    Smooth Network (top-down, deep to shallow; stage k = the k-th step, stage 1 on the deepest feature):

        features[-1] ─ global average pool ─ 1x1 conv ─ ReLU ─┐ (B, C, 1, 1): the "high" input of the first CAB
        features[i] ─ RRB ─ CAB(low, high) ─ RRB ─┬─ classifier ─► stage k   (the last, finest step ─► out)
                                                  └─ upsampled to features[i-1]'s size: the next step's "high"

    Border Network (bottom-up, shallow to deep, at the shallowest feature's size):

        b = RRB(features[0]);  b = RRB(b + upsample(RRB(features[i])))  for i = 1, 2, 3;  classifier(b) ─► border

    RRB (refinement residual block): 1x1 conv, then ``ReLU(x + conv3x3(conv3x3-BN-ReLU(x)))``.
    CAB (channel attention block): ``w = sigmoid(conv1x1(ReLU(conv1x1(avgpool(cat(low, high))))))``,
    ``out = low * w + high``; the deeper stage chooses the shallower stage's channels.

As in the official code the global context enters as the "high" input of the deepest stage's CAB (there
it is broadcast instead of upsampled from 1x1: the same values, no copy), each step is RRB -> CAB -> RRB,
every smooth step is supervised with weight 1, and the border logits with a sigmoid focal loss
(gamma 2, alpha 0.25) at weight 0.1 against semantic edges derived from the label map
(:class:`attnseg.losses.BorderFocalLoss`). Differences from the official code:
    - upsampling goes to the next feature's size (any output stride: 8, 16 or 32), not by a factor 2;
    - the global-context conv has a bias and no BatchNorm (BatchNorm over a 1x1 map fails at batch 1);
    - classifiers are ``SegClassifier`` (the official code uses an RRB to 9 K channels, then a 1x1 conv);
    - only the final border map is supervised (the official code also supervises the three partial sums).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from attnseg.heads.base import NameWord, SegClassifier, SegHead, branch_channels
from attnseg.losses import BorderFocalLoss


def _resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear resize of x (B, C, h, w) to ``size``; x itself when it already has that size."""
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class RefinementResidualBlock(nn.Module):
    """RRB: 1x1 conv to ``channels``, then a residual unit ``ReLU(x + conv3x3(conv3x3-BN-ReLU(x)))``.

    Args:
        in_channels: channels of the input.
        channels: channels of the output (and of the residual unit).
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.conv = ConvNormAct(channels, channels, kernel_size=3)
        self.refine = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.act(x + self.refine(self.conv(x)))


class ChannelAttentionBlock(nn.Module):
    """CAB: channel weights of the shallower features chosen from both stages; ``low * w + high``.

    ``w = sigmoid(conv1x1(ReLU(conv1x1(avgpool(cat(low, high))))))`` (B, C, 1, 1). The pooling is taken per
    input before the concatenation (the same numbers without a full-size concatenated copy), so ``high`` may
    also be (B, C, 1, 1) and is then broadcast.

    Args:
        channels: channels C of ``low`` and ``high``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(2 * channels, channels, kernel_size=1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(channels, channels, kernel_size=1)

    def weights(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The channel weights (B, C, 1, 1) in (0, 1) applied to ``low``."""
        pooled = torch.cat([low.mean(dim=(2, 3), keepdim=True), high.mean(dim=(2, 3), keepdim=True)], dim=1)
        return torch.sigmoid(self.expand(self.act(self.reduce(pooled))))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return low * self.weights(low, high) + high


class DFNHead(SegHead):
    """DFN head: Smooth Network with deep supervision at every stage, and the Border Network.

    Outputs (all at their stage's feature resolution): ``out`` from the last, finest step of the Smooth
    Network (on ``features[0]``); ``stage1`` .. ``stage{n-1}`` from the earlier steps (``stage1`` on the deepest
    feature), weight 1 each as in the paper; with ``border=True`` one-channel border logits ``border`` on
    ``features[0]``'s grid, trained by ``BorderFocalLoss`` with weight 0.1.

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep (two or more; DFN uses four,
            at strides 4, 8, 16, 32; with a dilated encoder the deeper ones share a size).
        num_classes: number of classes K.
        channels: width of the Smooth Network; default ``in_channels[-1] // 4`` (512 on ResNet-50/101, the official
            code's value).
        border: add the Border Network (output ``border``).
        border_channels: width of the Border Network (21 in the official code).
        dropout: Dropout2d probability before each classifier (the official code has none).
        edge_width: neighbourhood size of the border loss's edges (see ``BorderFocalLoss``).
        aux: add the auxiliary FCN head every other head has (output ``aux``, loss weight 0.4) on
            ``in_channels[-2]``; not in the paper, off by default. It lets a comparison of heads give every head
            the same supervision (``out`` and ``aux`` alone). Its dropout is ``dropout``, as for every head.
    """

    name_words = (NameWord("border", "border", off="noborder"),)

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: Optional[int] = None,
        border: bool = True,
        border_channels: int = 21,
        dropout: float = 0.0,
        edge_width: int = 7,
        aux: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"DFNHead: needs 2 or more feature maps, the encoder gives {list(in_channels)}")
        n = len(in_channels)
        channels = branch_channels(in_channels, channels)
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels[-1], channels, 1), nn.ReLU())
        # smooth_*[i] processes features[i]
        self.smooth_pre = nn.ModuleList(RefinementResidualBlock(c, channels) for c in in_channels)
        self.cabs = nn.ModuleList(ChannelAttentionBlock(channels) for _ in in_channels)
        self.smooth_post = nn.ModuleList(RefinementResidualBlock(channels, channels) for _ in in_channels)
        self.smooth_cls = nn.ModuleList(SegClassifier(channels, num_classes, dropout) for _ in in_channels)
        # names of the smooth outputs, in features order: features[0] gives "out", features[-1] "stage1"
        self.smooth_names = ["out", *(f"stage{n - i}" for i in range(1, n))]
        self.loss_weights = {name: 1.0 for name in reversed(self.smooth_names)}
        self.border = border
        if border:
            self.border_pre = nn.ModuleList(RefinementResidualBlock(c, border_channels) for c in in_channels)
            self.border_post = nn.ModuleList(
                RefinementResidualBlock(border_channels, border_channels) for _ in in_channels[1:]
            )
            self.border_cls = SegClassifier(border_channels, 1, dropout)
            self.output_losses["border"] = BorderFocalLoss(edge_width=edge_width)
            self.loss_weights["border"] = 0.1
        self.add_aux(aux, in_channels, num_classes, dropout)

    def smooth(self, features: list[torch.Tensor], cab_weights: Optional[dict] = None) -> dict[str, torch.Tensor]:
        """Smooth Network: top-down RRB -> CAB -> RRB with a prediction at every step (and each CAB's channel
        weights in ``cab_weights``, when given, named after the step's output)."""
        outputs = {}
        high = self.context(features[-1])  # (B, C, 1, 1), broadcast by the first CAB
        for i in reversed(range(len(features))):
            low = self.smooth_pre[i](features[i])
            if high.shape[-2:] != (1, 1):
                high = _resize(high, low.shape[-2:])
            if cab_weights is not None:
                cab_weights[self.smooth_names[i]] = self.cabs[i].weights(low, high)[:, :, 0, 0]
            high = self.smooth_post[i](self.cabs[i](low, high))
            outputs[self.smooth_names[i]] = self.smooth_cls[i](high)
        return outputs

    @torch.no_grad()
    def attention_maps(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The channel weights (B, C) each CAB gives the shallower stage, named after the step's output
        (``stage1`` on the deepest feature ... ``out`` on the shallowest)."""
        weights: dict[str, torch.Tensor] = {}
        self.smooth(features, weights)
        return weights

    def border_logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Border Network: bottom-up sum of RRB'd stages at the shallowest size; logits (B, 1, h, w)."""
        x = self.border_pre[0](features[0])
        for pre, post, feature in zip(self.border_pre[1:], self.border_post, features[1:]):
            x = post(x + _resize(pre(feature), x.shape[-2:]))
        return self.border_cls(x)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.smooth(features)
        if self.border:
            outputs["border"] = self.border_logits(features)
        return self.with_aux(features, outputs)
