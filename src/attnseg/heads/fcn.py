"""FCN baseline head and the auxiliary FCN head shared by every head.

Long et al., "Fully Convolutional Networks for Semantic Segmentation" (CVPR 2015), in the
form used on dilated backbones by mmsegmentation: a few 3x3 conv-BN-ReLU layers on the
deepest feature, optionally concatenated with the input, dropout and a 1x1 classifier.
The head contract every head follows is ``attnseg.heads.base.SegHead``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from timm.layers import ConvNormAct
from torch import nn

from attnseg.heads.base import SegClassifier, SegHead, branch_channels


class FCNHead(SegHead):
    """FCN head on the deepest feature, plus the auxiliary FCN head on the stage before last.

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep.
        num_classes: number of classes K.
        channels: width of the head's convs; default ``in_channels[-1] // 4``.
        num_convs: number of 3x3 conv-BN-ReLU layers.
        concat_input: concatenate the input feature with the convs' output before the classifier.
        dropout: Dropout2d probability before each classifier.
        aux: add the auxiliary head (output ``aux``, loss weight 0.4) on ``in_channels[-2]``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: Optional[int] = None,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
        aux: bool = True,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"FCNHead: num_convs={num_convs}, expected 1 or more")
        c_in = in_channels[-1]
        channels = branch_channels(in_channels, channels)
        layers = [ConvNormAct(c_in if i == 0 else channels, channels, kernel_size=3) for i in range(num_convs)]
        self.convs = nn.Sequential(*layers)
        self.concat_input = concat_input
        if concat_input:
            self.fuse = ConvNormAct(c_in + channels, channels, kernel_size=3)
        self.cls = SegClassifier(channels, num_classes, dropout)
        self.loss_weights = {"out": 1.0}
        self.add_aux(aux, in_channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[-1]
        y = self.convs(x)
        if self.concat_input:
            y = self.fuse(torch.cat([x, y], dim=1))
        outputs = {"out": self.cls(y)}
        return self.with_aux(features, outputs)
