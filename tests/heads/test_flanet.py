"""FLANet: the fully attentional block against its formula written with explicit per-column / per-row loops,
batch independence (which the published repeat-based form lacks), memory, autocast, and the head."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attnseg.heads import FLANetHead, FullyAttentionalBlock
from tests.helpers.head_checks import CHANNELS, STRIDES, fake_features, random_gamma
from tests.helpers.reference import naive_fla, naive_fla_augment, published_fla

SHAPES = [(2, 16, 7, 9), (1, 8, 13, 17), (3, 12, 8, 8), (1, 8, 1, 5), (2, 8, 5, 1), (1, 4, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_block_equals_per_column_and_row_loops(shape):
    block = FullyAttentionalBlock(shape[1]).eval()
    random_gamma(block)
    x = 2 * torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(block.augment(x), naive_fla_augment(block, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block(x), naive_fla(block, x), rtol=1e-5, atol=1e-5)


def test_gradients_equal_the_loops_and_reach_every_parameter():
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    block = FullyAttentionalBlock(8)
    random_gamma(block)
    weight = torch.randn(2, 8, 6, 5)
    grads = []
    for fn in (block, lambda t: naive_fla(block, t)):
        block.zero_grad()
        x.grad = None
        (fn(x) * weight).sum().backward()
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in block.named_parameters()}})
    ours, naive = grads
    assert set(ours) == {
        "x",
        "gamma",
        "prior_h.weight",
        "prior_h.bias",
        "prior_w.weight",
        "prior_w.bias",
        "fuse.conv.weight",
        "fuse.bn.weight",
        "fuse.bn.bias",
    }
    for name in ours:
        assert ours[name].abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(
            ours[name], naive[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_zero_gamma_leaves_only_the_fuse_conv():
    block = FullyAttentionalBlock(16)
    x = torch.randn(2, 16, 7, 9)
    assert block.gamma.item() == 0.0
    assert torch.equal(block(x), block.fuse(x))
    random_gamma(block)
    assert not torch.allclose(block(x), block.fuse(x))


def test_each_image_of_a_batch_is_independent():
    block = FullyAttentionalBlock(8).eval()
    random_gamma(block)
    x = torch.randn(3, 8, 6, 7, requires_grad=True)
    out = block(x)
    other = torch.cat([x[:1], torch.randn(2, 8, 6, 7)]).detach()
    torch.testing.assert_close(block(other)[0], out[0], rtol=1e-6, atol=1e-6)
    out[0].sum().backward()
    assert x.grad[0].abs().sum() > 0 and torch.equal(x.grad[1:], torch.zeros_like(x.grad[1:]))
    # the published form is right for one image and mixes images in a batch
    with torch.no_grad():
        for i in range(3):
            torch.testing.assert_close(
                block.fuse(published_fla(block, x[i : i + 1])), out[i : i + 1], rtol=1e-5, atol=1e-5
            )
        assert not torch.allclose(block.fuse(published_fla(block, x)), out, atol=1e-3)


def test_attention_map_rows_are_the_per_line_softmax():
    block = FullyAttentionalBlock(8)
    x = torch.randn(2, 8, 5, 7)
    attn_col, attn_row = block.attention_map(x)
    assert attn_col.shape == (2, 7, 8, 8) and attn_row.shape == (2, 5, 8, 8)
    torch.testing.assert_close(attn_col.sum(-1), torch.ones(2, 7, 8))
    with torch.no_grad():
        prior_h = block.prior_h(x[1].mean(dim=2).T)
        prior_w = block.prior_w(x[1].mean(dim=1).T)
        torch.testing.assert_close(attn_col[1, 3], torch.softmax(x[1, :, :, 3] @ prior_h, dim=1))
        torch.testing.assert_close(attn_row[1, 4], torch.softmax(x[1, :, 4, :] @ prior_w, dim=1))
        aug = torch.einsum("bwcd,bdhw->bchw", attn_col, x) + torch.einsum("bhcd,bdhw->bchw", attn_row, x)
        torch.testing.assert_close(block.augment(x), aug, rtol=1e-5, atol=1e-5)


def test_attention_never_holds_a_c_by_c_map_per_line():
    c, h, w = 256, 16, 24
    block = FullyAttentionalBlock(c)
    x = torch.randn(1, c, h, w, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        block.augment(x).sum().backward()  # the attention, forward and backward (fuse is a plain conv)
    largest = max(e.cpu_memory_usage for e in prof.events())
    maps = h * c * c * 4  # the smaller of the two (lines, C, C) fp32 maps: 4 MiB; x is 384 KiB
    assert 0 < largest < maps / 2, f"an allocation of {largest} bytes; the row maps take {maps}"


def test_head_options():
    channels = CHANNELS["resnet50/16"]
    head = FLANetHead(channels, num_classes=3, channels=24, aux=False)
    assert head.aux is None and head.aux2 is None and head.loss_weights == {"out": 1.0}
    assert set(head(fake_features(channels, STRIDES[16], batch=2))) == {"out"}
    assert head.fla.prior_h.in_features == 24 and head.fuse.conv.in_channels == channels[-1] + 24
    assert FLANetHead(channels, 3).aux.conv.conv.out_channels == 64  # the published auxiliary width
    features = fake_features(channels, STRIDES[8], batch=2)
    maps = head.attention_maps(features)
    attn_col, attn_row = maps["column"], maps["row"]
    h, w = features[-1].shape[-2:]
    assert attn_col.shape == (2, w, 24, 24) and attn_row.shape == (2, h, 24, 24)
    with pytest.raises(ValueError, match="aux=True needs 3 or more"):
        FLANetHead([32, 64], 3)


@pytest.mark.parametrize("output_stride", sorted(STRIDES))
def test_auxiliary_heads_sit_on_the_two_stages_before_last(output_stride):
    """The published head supervises stage 3 (``aux``) and stage 2 (``aux2``), weight 0.4 each."""
    channels = CHANNELS["resnet50/16"]
    head = FLANetHead(channels, num_classes=4, channels=32)
    features = fake_features(channels, output_stride)
    out = head(features)
    assert head.loss_weights == {"out": 1.0, "aux": 0.4, "aux2": 0.4}
    for name, feature in zip(("aux2", "aux", "out"), features[1:]):
        assert out[name].shape == (1, 4, *feature.shape[-2:])
