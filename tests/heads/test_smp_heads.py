"""DeepLabV3's ASPP head and PSPNet's pyramid pooling head (segmentation-models-pytorch's modules): the recipe's
widths, rates and bins, their options, and a batch of one in training (the 1 x 1 pooled maps have no BatchNorm).
The head contract itself is checked in ``test_contract.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnseg.heads import ASPPHead, PSPHead
from tests.helpers.head_checks import fake_features

RESNET50 = [256, 512, 1024, 2048]
SMALL = [16, 32, 64, 128]


def dilations(head: ASPPHead) -> list[int]:
    convs = [m for m in head.aspp.aspp.convs.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    return [m.dilation[0] for m in convs]


def test_aspp_recipe_widths_rates_and_outputs():
    head = ASPPHead(RESNET50, 19)
    assert head.aspp.aspp.project[0].out_channels == 512 and head.cls[1].in_channels == 512  # C_in / 4
    assert dilations(head) == [12, 24, 36]
    assert head.loss_weights == {"out": 1.0, "aux": 0.4} and head.aux.conv.conv.out_channels == 256
    assert head.cls[0].p == 0.1 and ASPPHead(SMALL, 3).attention_maps(fake_features(SMALL)) == {}
    assert dilations(ASPPHead(SMALL, 3, atrous_rates=[6, 12, 18])) == [6, 12, 18]
    assert ASPPHead(SMALL, 3, aux=False).loss_weights == {"out": 1.0}
    for rates in ([6, 12], [0, 12, 24]):
        with pytest.raises(ValueError, match=r"ASPPHead: atrous_rates=\[.*\], expected three dilations"):
            ASPPHead(SMALL, 3, atrous_rates=rates)


def test_aspp_separable_branches_and_image_pooling_without_batchnorm():
    head = ASPPHead(SMALL, 3, channels=8, separable=True)
    depthwise = [m for m in head.aspp.aspp.convs.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.dilation[0] for m in depthwise] == [12, 24, 36] and all(m.groups == 128 for m in depthwise)
    pooling = head.aspp.aspp.convs[-1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in pooling) and pooling[1].bias is not None


def test_psp_recipe_widths_bins_and_outputs():
    head = PSPHead(RESNET50, 19)
    assert [block.pool_size for block in head.ppm.blocks] == [1, 2, 3, 6]
    assert all(block.pool[1][0].out_channels == 512 for block in head.ppm.blocks)  # C_in / number of bins
    assert head.bottleneck.conv.in_channels == 2048 + 4 * 512 and head.bottleneck.conv.out_channels == 512
    assert head.loss_weights == {"out": 1.0, "aux": 0.4} and head.cls[0].p == 0.1
    assert PSPHead(SMALL, 3).attention_maps(fake_features(SMALL)) == {}
    other = PSPHead(SMALL, 3, channels=8, bins=[1, 3], aux=False)
    assert [b.pool_size for b in other.ppm.blocks] == [1, 3] and other.bottleneck.conv.in_channels == 128 + 2 * 64
    assert other.loss_weights == {"out": 1.0}
    for bins in ([], [0, 2]):
        with pytest.raises(ValueError, match="PSPHead: bins="):
            PSPHead(SMALL, 3, bins=bins)


@pytest.mark.parametrize("make", [lambda: ASPPHead(SMALL, 3, channels=8), lambda: PSPHead(SMALL, 3, channels=8)])
def test_a_batch_of_one_trains_and_evaluates(make):
    head = make().train()
    features = fake_features(SMALL, batch=1)
    out = head(features)
    assert out["out"].shape == (1, 3, *features[-1].shape[-2:])
    sum(o.mean() for o in out.values()).backward()
    head.eval()
    with torch.no_grad():
        assert torch.isfinite(head(features)["out"]).all()
