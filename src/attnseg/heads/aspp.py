"""DeepLabV3 baseline head: atrous spatial pyramid pooling (ASPP) on the deepest feature.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (arXiv:1706.05587, 2017). The module
is segmentation-models-pytorch's ``DeepLabV3Decoder``: five parallel branches on the input (a 1x1 conv, three 3x3
convs dilated by ``atrous_rates``, and image pooling: global average, 1x1 conv, upsampled back), each to
``channels``, concatenated and projected by a 1x1 conv-BN-ReLU, then a 3x3 conv-BN-ReLU; dropout and a 1x1
classifier follow. The recipe values are mmsegmentation's DeepLabV3 on dilated ResNets (``deeplabv3_r50-d8``):
512 channels on ResNet-50 (C_in / 4), rates (12, 24, 36) at output stride 8 (the paper's (6, 12, 18) at 16),
dropout 0.1 before the classifier, and the auxiliary FCN head (loss weight 0.4). mmsegmentation fuses the branches
with one 3x3 conv instead of the 1x1 projection and 3x3 conv. The head has no attention.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPPPooling, DeepLabV3Decoder
from torch import nn

from attnseg.heads.base import SegClassifier, SegHead, branch_channels


class ASPPHead(SegHead):
    """DeepLabV3's ASPP head on the deepest feature, plus the auxiliary FCN head on the stage before last.

    The image-pooling branch has no BatchNorm (its 1x1 conv has a bias instead): its map is 1 x 1, so the batch
    statistics would be over the batch's images alone, and undefined for a batch of one in training.

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep.
        num_classes: number of classes K.
        channels: width of every ASPP branch and of the convs after them; default ``in_channels[-1] // 4``.
        atrous_rates: dilations of the three 3x3 branches; (12, 24, 36) at output stride 8, (6, 12, 18) at 16.
        separable: depthwise-separable 3x3 branches (as DeepLabV3+) instead of full convs.
        aspp_dropout: dropout after the ASPP projection (mmsegmentation: none).
        dropout: Dropout2d probability before each classifier.
        aux: add the auxiliary head (output ``aux``, loss weight 0.4) on ``in_channels[-2]``.
    """

    short_name = "deeplabv3"  # in run names and tags: the method's name

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: Optional[int] = None,
        atrous_rates: Sequence[int] = (12, 24, 36),
        separable: bool = False,
        aspp_dropout: float = 0.0,
        dropout: float = 0.1,
        aux: bool = True,
    ) -> None:
        super().__init__()
        rates = tuple(atrous_rates)
        if len(rates) != 3 or any(r < 1 for r in rates):
            raise ValueError(f"ASPPHead: atrous_rates={list(rates)}, expected three dilations of 1 or more")
        c_in = in_channels[-1]
        channels = branch_channels(in_channels, channels)
        self.aspp = DeepLabV3Decoder(c_in, channels, rates, aspp_separable=separable, aspp_dropout=aspp_dropout)
        pooling = self.aspp.aspp.convs[-1]
        if not isinstance(pooling, ASPPPooling):
            raise TypeError(f"ASPPHead: the last ASPP branch is {type(pooling).__name__}, expected ASPPPooling")
        pooling[1] = nn.Conv2d(c_in, channels, kernel_size=1)  # pool, conv, norm, ReLU: the conv gets a bias ...
        pooling[2] = nn.Identity()  # ... and the norm goes
        self.cls = SegClassifier(channels, num_classes, dropout)
        self.loss_weights = {"out": 1.0}
        self.add_aux(aux, in_channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = {"out": self.cls(self.aspp(features))}
        return self.with_aux(features, outputs)
