"""DFN: the border loss's edges on hand-made label maps (with ignored pixels) and its focal term, the RRB and
CAB blocks, the head's outputs (deep supervision, border switch) at output strides 8/16/32, a real model,
and the border loss through the task."""

from __future__ import annotations

import pytest
import torch
from segmentation_models_pytorch.losses import FocalLoss

from attnseg.heads import ChannelAttentionBlock, DFNHead, RefinementResidualBlock
from attnseg.losses import BorderFocalLoss
from attnseg.task import SegmentationTask
from tests.helpers.head_checks import CHANNELS, STRIDES, fake_features

I = 255  # noqa: E741 (the void label, one letter in the label tables below)


def test_edges_of_a_hand_made_label_map():
    mask = torch.tensor(
        [
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [0, 0, I, I, 1, 1],
            [2, 2, I, I, 1, 1],
            [2, 2, 2, 2, 2, 2],
        ]
    )
    # 3x3 neighbourhoods: 1 where another valid class is next to the pixel; ignored: the 255 pixels and the
    # pixels whose only different neighbour is a 255 one; the image border is not an edge.
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 0, 0],
            [0, I, 1, 1, I, 0],
            [1, 1, I, I, I, 0],
            [1, 1, I, I, 1, 1],
            [0, I, I, 1, 1, 1],
        ]
    )
    edges = BorderFocalLoss(edge_width=3).edges(mask[None])
    assert edges.dtype == torch.int64
    assert torch.equal(edges[0], expected)


def test_edge_band_width_and_maps_without_edges():
    stripes = torch.zeros(2, 3, 12, dtype=torch.long)
    stripes[:, :, 6:] = 4
    for width in (3, 5, 7):
        edges = BorderFocalLoss(edge_width=width).edges(stripes)
        r = width // 2
        expected = torch.zeros(12, dtype=torch.long)
        expected[6 - r : 6 + r] = 1  # r pixels on each side of the class change
        assert torch.equal(edges, expected.expand(2, 3, 12))
    assert not BorderFocalLoss().edges(torch.full((1, 9, 9), 3)).any()  # one class: no edge, image border included
    assert (BorderFocalLoss().edges(torch.full((1, 9, 9), I)) == I).all()
    with pytest.raises(ValueError, match="edge_width=4"):
        BorderFocalLoss(edge_width=4)


def test_focal_loss_against_segmentation_models_pytorch():
    torch.manual_seed(1)
    mask = torch.randint(0, 3, (2, 6, 7)).repeat_interleave(3, 1).repeat_interleave(3, 2)  # (2, 18, 21) blocks
    mask[0, :5, :4] = I
    logits = 2 * torch.randn(2, 1, 18, 21)
    loss = BorderFocalLoss(edge_width=3)
    edges = loss.edges(mask)
    assert (edges == 1).any() and (edges == 0).any() and (edges == I).any()
    reference = FocalLoss(mode="binary", alpha=0.25, gamma=2.0, ignore_index=I)(logits, edges)
    torch.testing.assert_close(loss(logits, mask), reference)
    # all pixels ignored: 0, not NaN, and still differentiable
    logits.requires_grad_(True)
    empty = loss(logits, torch.full_like(mask, I))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="expected \\(B, 1, H, W\\)"):
        loss(torch.randn(2, 3, 18, 21), mask)


def test_rrb_and_cab():
    rrb = RefinementResidualBlock(16, 8)
    x = torch.randn(2, 16, 9, 11)
    y = rrb(x)
    assert y.shape == (2, 8, 9, 11) and (y >= 0).all()
    with torch.no_grad():
        rrb.refine.weight.zero_()  # without the residual branch: ReLU of the 1x1 projection
        torch.testing.assert_close(rrb(x), torch.relu(rrb.proj(x)))

    cab = ChannelAttentionBlock(8)
    low, high = torch.randn(2, 8, 9, 11), torch.randn(2, 8, 9, 11)
    out = cab(low, high)
    assert out.shape == (2, 8, 9, 11)
    with torch.no_grad():  # the formula with the full-size concatenation
        pooled = torch.cat([low, high], 1).mean(dim=(2, 3), keepdim=True)
        w = torch.sigmoid(cab.expand(torch.relu(cab.reduce(pooled))))
        torch.testing.assert_close(out, low * w + high)
        assert ((w > 0) & (w < 1)).all()
        # a (B, C, 1, 1) high input acts as its broadcast full-size map (the global context)
        context = torch.randn(2, 8, 1, 1)
        torch.testing.assert_close(cab(low, context), cab(low, context.expand(2, 8, 9, 11).contiguous()))


@pytest.mark.parametrize(
    "border,expected",
    [(True, {"stage1", "stage2", "stage3", "out", "border"}), (False, {"stage1", "stage2", "stage3", "out"})],
)
def test_border_switch_and_deep_supervision_names(border, expected):
    channels = CHANNELS["resnet50/16"]
    head = DFNHead(channels, num_classes=3, channels=16, border=border)
    features = fake_features(channels, STRIDES[32], batch=2)
    out = head(features)
    assert set(out) == expected == set(head.loss_weights)
    assert head.loss_weights == {name: 0.1 if name == "border" else 1.0 for name in expected}
    # stage k is the k-th step of the top-down pass; out the last, finest one
    for name, feature in zip(("out", "stage3", "stage2", "stage1"), features):
        assert out[name].shape == (2, 3, *feature.shape[-2:])
    if border:
        assert out["border"].shape == (2, 1, *features[0].shape[-2:])
        assert set(head.output_losses) == {"border"} and isinstance(head.output_losses["border"], BorderFocalLoss)
    else:
        assert len(head.output_losses) == 0 and not hasattr(head, "border_pre")
    maps = head.attention_maps(features)  # each CAB's channel weights (B, C), named after its step's output
    assert {name: m.shape for name, m in maps.items()} == {n: (2, 16) for n in ("stage1", "stage2", "stage3", "out")}


def test_the_deeper_stages_steer_the_finer_ones():
    channels = CHANNELS["resnet50/16"]
    head = DFNHead(channels, num_classes=3, channels=16).eval()
    features = fake_features(channels, STRIDES[32])
    changed = [*features[:-1], torch.randn_like(features[-1])]
    with torch.no_grad():
        before, after = head(features), head(changed)
    assert not torch.allclose(before["out"], after["out"])  # through the global context and the CABs
    assert not torch.allclose(before["border"], after["border"])  # the bottom-up sum reaches the deepest stage


def test_head_needs_two_feature_maps():
    with pytest.raises(ValueError, match="2 or more feature maps"):
        DFNHead([64], 3)
    out = DFNHead([8, 16], 3, channels=8)(fake_features([8, 16], [4, 8], batch=2))
    assert set(out) == {"stage1", "out", "border"}


@pytest.mark.slow
def test_border_loss_through_the_task():
    task = SegmentationTask(
        head=lambda c, k: DFNHead(c, k, channels=16, edge_width=3),
        encoder={"name": "resnet18", "output_stride": 32},
        num_classes=3,
    )
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 8, 8)).repeat_interleave(8, 1)
    masks = masks.repeat_interleave(8, 2)
    masks[0, :4] = I
    outputs = task(images)
    assert outputs["border"].shape == (2, 1, 64, 64)  # upsampled to the mask size
    terms = task.compute_losses(outputs, masks)
    assert set(terms) == {"stage1", "stage2", "stage3", "out", "border"}
    expected = 0.1 * BorderFocalLoss(edge_width=3)(outputs["border"], masks)
    assert terms["border"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["stage1"].item() == pytest.approx(task.loss(outputs["stage1"], masks).item(), rel=1e-6)
    sum(terms.values()).backward()
    assert task.model.head.border_cls[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_outputs_sit_on_their_stages(output_stride):
    """``out`` on the shallowest feature, ``stage1`` on the deepest, the border on the shallowest grid."""
    channels = CHANNELS["resnet50/16"]
    head = DFNHead(channels, num_classes=4, channels=16, border_channels=5)
    features = fake_features(channels, STRIDES[output_stride])
    out = head(features)
    assert out["out"].shape == (1, 4, *features[0].shape[-2:])
    assert out["stage1"].shape == (1, 4, *features[-1].shape[-2:])
    assert out["border"].shape == (1, 1, *features[0].shape[-2:])
