"""PSPNet baseline head: the pyramid pooling module on the deepest feature.

Zhao et al., "Pyramid Scene Parsing Network" (CVPR 2017). The pyramid pooling module is segmentation-models-pytorch's
``PSPModule``: the feature is average-pooled to ``b x b`` for each bin size b, each level reduced by a 1x1
conv-BN-ReLU to 1/N of the input's channels (N levels), upsampled bilinearly and concatenated with the input;
a 3x3 conv-BN-ReLU to ``channels``, dropout and a 1x1 classifier follow (the paper's and mmsegmentation's
bottleneck). The recipe values are mmsegmentation's PSPNet on dilated ResNets (``pspnet_r50-d8``): bins
(1, 2, 3, 6), 512 channels on ResNet-50 (C_in / 4, which is also each level's width with four bins), dropout 0.1
before the classifier, and the auxiliary FCN head (loss weight 0.4). As in smp, the 1 x 1 level has no BatchNorm
(its conv has a bias), so a batch of one trains. The head has no attention.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from segmentation_models_pytorch.decoders.pspnet.decoder import PSPModule
from timm.layers import ConvNormAct

from attnseg.heads.base import SegClassifier, SegHead, branch_channels


class PSPHead(SegHead):
    """PSPNet's pyramid pooling head on the deepest feature, plus the auxiliary FCN head on the stage before last.

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep.
        num_classes: number of classes K.
        channels: width of the 3x3 conv after the pyramid; default ``in_channels[-1] // 4``. Each pyramid level
            has ``in_channels[-1] // len(bins)`` channels, as in the paper.
        bins: output sizes of the pyramid's average poolings.
        dropout: Dropout2d probability before each classifier.
        aux: add the auxiliary head (output ``aux``, loss weight 0.4) on ``in_channels[-2]``.
    """

    short_name = "pspnet"  # in run names and tags: the method's name

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: Optional[int] = None,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux: bool = True,
    ) -> None:
        super().__init__()
        bins = tuple(bins)
        c_in = in_channels[-1]
        if not bins or any(b < 1 for b in bins) or c_in < len(bins):
            raise ValueError(
                f"PSPHead: bins={list(bins)} on {c_in} channels, expected one or more sizes of 1 or more and no "
                "more bins than channels"
            )
        channels = branch_channels(in_channels, channels)
        self.ppm = PSPModule(c_in, sizes=bins)
        self.bottleneck = ConvNormAct(c_in + len(bins) * (c_in // len(bins)), channels, kernel_size=3)
        self.cls = SegClassifier(channels, num_classes, dropout)
        self.loss_weights = {"out": 1.0}
        self.add_aux(aux, in_channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = {"out": self.cls(self.bottleneck(self.ppm(features[-1])))}
        return self.with_aux(features, outputs)
