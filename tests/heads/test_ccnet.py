"""CCNet: criss-cross attention against the full (N, N) attention restricted to row and column, its
memory, the head's recurrence and category consistent loss switches, and the head in a real model."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attnseg.heads import CCNetHead, CrissCrossAttention
from attnseg.losses import CategoryConsistencyLoss
from attnseg.task import SegmentationTask
from tests.helpers.head_checks import CHANNELS, fake_features, random_gamma
from tests.helpers.reference import criss_cross_weights, masked_cca


@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 13, 17), (1, 8, 1, 5), (1, 8, 5, 1), (1, 8, 1, 1)])
def test_criss_cross_equals_masked_full_attention(shape):
    m = CrissCrossAttention(shape[1])
    random_gamma(m)
    x = 2 * torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(m(x), masked_cca(m, x), rtol=1e-5, atol=1e-5)


def test_attention_map_and_pixel_image_match_the_full_attention():
    m = CrissCrossAttention(16)
    x = torch.randn(2, 16, 7, 9)
    full = criss_cross_weights(m, x).detach()  # (B, N, N)
    weights = m.attention_map(x)
    assert weights.shape == (2, 7, 9, 7 + 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 7, 9))
    assert (weights[:, 3, 4, 3] == 0).all()  # the centre is counted in the row, not in the column
    for row, col in [(0, 0), (3, 4), (6, 8)]:
        image = m.pixel_attention(x, row, col)
        torch.testing.assert_close(image, full[:, row * 9 + col].view(2, 7, 9), rtol=1e-5, atol=1e-6)


def test_zero_gamma_is_identity_and_gradients_reach_every_parameter():
    m = CrissCrossAttention(16)
    x = torch.randn(1, 16, 7, 9)
    assert m.gamma.item() == 0.0 and torch.equal(m(x), x)
    random_gamma(m)
    (m(x) * torch.randn_like(x)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("shape", [(2, 8, 7, 9), (1, 8, 1, 5), (1, 8, 6, 1)])
def test_gradients_equal_the_masked_full_attention(shape):
    """The hand-written backward against autograd through the masked (N, N) formula, for the input and every
    parameter, also with channels-last input and over two recurrence steps."""
    m = CrissCrossAttention(shape[1], 4)
    random_gamma(m)
    x, weight = 2 * torch.randn(shape), torch.randn(shape)
    grads = []
    for fn, layout in [
        (m, torch.contiguous_format),
        (lambda t: masked_cca(m, t), torch.contiguous_format),
        (m, torch.channels_last),
    ]:
        m.zero_grad()
        xr = x.clone(memory_format=layout).requires_grad_(True)
        out = fn(fn(xr))
        (out * weight).sum().backward()
        grads.append({"out": out.detach(), "x": xr.grad, **{n: p.grad.clone() for n, p in m.named_parameters()}})
    ours, naive, channels_last = grads
    for name in naive:
        for result in (ours, channels_last):
            torch.testing.assert_close(
                result[name], naive[name], rtol=1e-4, atol=1e-4, msg=lambda e, name=name: f"{name}: {e}"
            )


def test_memory_is_linear_in_rows_plus_columns_never_n_squared():
    m = CrissCrossAttention(16)
    random_gamma(m)
    x = torch.randn(1, 16, 48, 48, requires_grad=True)
    n = 48 * 48
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        m(x).sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest <= 2 * n * (48 + 48) * 4, f"an allocation of {largest} bytes; N x N is {n * n * 4}"


def test_recurrence_shares_weights_and_zero_is_the_baseline():
    channels = CHANNELS["resnet50/16"]
    sizes = [sum(p.numel() for p in CCNetHead(channels, 3, recurrence=r).parameters()) for r in (1, 2, 3)]
    assert sizes[0] == sizes[1] == sizes[2]
    base = CCNetHead(channels, 3, recurrence=0)
    assert base.cca is None and not any(isinstance(m, CrissCrossAttention) for m in base.modules())
    assert set(base(fake_features(channels))) == {"out", "aux"} and base.attention_maps(fake_features(channels)) == {}
    with pytest.raises(ValueError, match="recurrence=-1"):
        CCNetHead(channels, 3, recurrence=-1)
    # the recurrence is applied: with non-zero gamma, 1 and 2 steps of the same weights differ
    head = CCNetHead(channels, 3, recurrence=1).eval()
    random_gamma(head.cca)
    features = fake_features(channels)
    with torch.no_grad():
        one = head(features)["out"]
        head.recurrence = 2
        two = head(features)["out"]
    assert not torch.allclose(one, two)
    maps = head.attention_maps(features)
    h, w = features[-1].shape[-2:]
    assert list(maps) == ["step1", "step2"] and all(m.shape == (1, h, w, h + w) for m in maps.values())


def test_gamma_starts_at_zero_unless_gamma_init_says_otherwise():
    """The paper's criss-cross module starts as the identity (gamma 0); ``gamma_init`` starts it elsewhere, and the
    head's output then depends on the attention from the first step."""
    channels = CHANNELS["resnet50/16"]
    features = fake_features(channels)
    torch.manual_seed(0)
    paper = CCNetHead(channels, 3, recurrence=2).eval()
    torch.manual_seed(0)
    started = CCNetHead(channels, 3, recurrence=2, gamma_init=0.5).eval()
    assert float(paper.cca.gamma) == 0.0 and float(started.cca.gamma) == 0.5
    with torch.no_grad():
        assert not torch.allclose(paper(features)["out"], started(features)["out"])
        started.cca.gamma.zero_()
        assert torch.equal(paper(features)["out"], started(features)["out"])  # only gamma differs


@pytest.mark.parametrize(
    "ccl,aux,expected",
    [(False, True, {"out", "aux"}), (True, True, {"out", "ccl", "aux"}), (True, False, {"out", "ccl"})],
)
def test_switches_change_the_outputs(ccl, aux, expected):
    head = CCNetHead(CHANNELS["resnet50/16"], num_classes=3, ccl=ccl, ccl_dim=8, aux=aux)
    out = head(fake_features(CHANNELS["resnet50/16"], batch=2))
    assert set(out) == expected == set(head.loss_weights)
    assert head.loss_weights == {name: 0.4 if name == "aux" else 1.0 for name in expected}
    assert out["out"].shape == (2, 3, 13, 17)
    if ccl:
        assert out["ccl"].shape == (2, 8, 13, 17)
        assert set(head.output_losses) == {"ccl"} and isinstance(head.output_losses["ccl"], CategoryConsistencyLoss)
        assert head.embeddings == ("ccl",)
    else:
        assert len(head.output_losses) == 0 and head.embeddings == ()


def test_category_consistency_loss_through_the_task():
    task = SegmentationTask(
        head=lambda c, k: CCNetHead(c, k, fuse_channels=32, ccl=True, ccl_dim=4),
        encoder={"name": "resnet18", "output_stride": 8},
        num_classes=3,
        loss_weights={"ccl": 0.5},
    )
    images, masks = torch.randn(2, 3, 33, 41), torch.randint(0, 3, (2, 33, 41))
    masks[0, :4] = 255
    outputs = task(images)
    assert outputs["ccl"].shape == (2, 4, 5, 6)  # an embedding: left at the feature resolution (33 / 8, 41 / 8)
    assert outputs["out"].shape == (2, 3, 33, 41)
    terms = task.compute_losses(outputs, masks)
    assert set(terms) == {"out", "ccl", "aux"}
    expected = 0.5 * CategoryConsistencyLoss()(outputs["ccl"], masks)
    assert terms["ccl"].item() == pytest.approx(expected.item(), rel=1e-6)
    sum(terms.values()).backward()
    assert task.model.head.ccl.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("encoder", sorted(CHANNELS))
def test_widths_follow_the_official_code(encoder):
    """The attention branch at C_in / 4, the conv after the concatenation at ``channels`` (512 in the paper)."""
    channels = CHANNELS[encoder]
    head = CCNetHead(channels, num_classes=4, fuse_channels=32, ccl=True)
    assert head.reduce.conv.out_channels == channels[-1] // 4 and head.fuse.conv.out_channels == 32
    assert head.fuse.conv.in_channels == channels[-1] + channels[-1] // 4  # the input feature concatenated


# ------------------------------------------------------------------------------------------------ 3D (video)


@pytest.mark.parametrize("shape", [(1, 8, 3, 5, 7), (2, 8, 4, 3, 5), (1, 8, 1, 4, 6), (1, 8, 5, 1, 1), (2, 8, 2, 1, 3)])
def test_3d_criss_cross_equals_masked_full_attention_outputs_and_gradients(shape):
    """Against the brute-force masked formula over the whole clip (T + H + W - 2 positions each, the centre
    once): outputs, and gradients of the input and of every parameter."""
    from attnseg.heads import CrissCrossAttention3D
    from tests.helpers.reference import einsum_cca_3d, masked_cca_3d

    torch.manual_seed(0)
    m = CrissCrossAttention3D(shape[1], 4)
    random_gamma(m)
    x = 2 * torch.randn(shape)
    grad = torch.randn(shape)
    # the einsum formulation of the benchmark is the same formula (checked here so its timings compare like for like)
    torch.testing.assert_close(einsum_cca_3d(m, x), masked_cca_3d(m, x), rtol=1e-5, atol=1e-5)
    results = []
    for f in (lambda inp: m(inp), lambda inp: masked_cca_3d(m, inp)):
        m.zero_grad()
        xr = x.clone().requires_grad_(True)
        f(xr).backward(grad)
        results.append((f(x).detach(), xr.grad, {n: p.grad.clone() for n, p in m.named_parameters()}))
    (ours, dx, params), (ref, ref_dx, ref_params) = results
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-4, atol=1e-4)
    for name in ref_params:
        torch.testing.assert_close(
            params[name], ref_params[name], rtol=1e-4, atol=1e-4, msg=lambda e, name=name: f"{name}: {e}"
        )


def test_3d_criss_cross_of_one_frame_is_the_2d_module_and_its_pixel_map_covers_t_plus_h_plus_w_minus_2():
    from attnseg.heads import CrissCrossAttention3D

    torch.manual_seed(0)
    m2, m3 = CrissCrossAttention(8, 4), CrissCrossAttention3D(8, 4)
    m3.load_state_dict(m2.state_dict())  # the same parameters
    random_gamma(m2)
    m3.gamma.data.copy_(m2.gamma.data)
    x = torch.randn(2, 8, 7, 9)
    torch.testing.assert_close(m3(x[:, :, None])[:, :, 0], m2(x), rtol=1e-5, atol=1e-5)
    clip = torch.randn(1, 8, 4, 5, 6)
    weights = m3.pixel_attention(clip, frame=2, row=1, col=3)
    assert int((weights > 0).sum()) == 4 + 5 + 6 - 2 and float(weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert weights[0, 0, 1, 3] > 0 and weights[0, 2, 4, 3] > 0 and weights[0, 2, 1, 0] > 0 and weights[0, 0, 0, 0] == 0


def test_3d_criss_cross_memory_never_holds_the_clip_squared():
    from attnseg.heads import CrissCrossAttention3D

    m = CrissCrossAttention3D(16)
    random_gamma(m)
    x = torch.randn(1, 16, 6, 24, 24, requires_grad=True)
    n = 6 * 24 * 24
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        m(x).sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.key_averages())
    assert largest < 4 * n * n / 8, f"largest allocation {largest} bytes; the (N, N) map is {4 * n * n}"


def test_head_with_frames_attends_across_each_clip_and_scores_every_frame():
    """``frames=3``: a batch of two 3-frame clips folded into 6 frames. Changing frame 0 of clip 0 changes the
    output of its frame 2 (attention across frames) but neither clip 1 nor, with ``frames=1``, any other frame."""
    torch.manual_seed(0)
    channels = CHANNELS["resnet50/16"]
    video = CCNetHead(channels, 5, recurrence=1, frames=3).eval()
    image = CCNetHead(channels, 5, recurrence=1).eval()
    image.load_state_dict(video.state_dict())  # the same weights, 2D attention
    random_gamma(video.cca, image.cca)
    image.cca.gamma.data.copy_(video.cca.gamma.data)
    features = fake_features(channels, batch=6)
    changed = [f.clone() for f in features]
    changed[-1][0] += 1.0  # frame 0 of clip 0
    with torch.no_grad():
        for head, crosses in ((video, True), (image, False)):
            before, after = head(features)["out"], head(changed)["out"]
            assert before.shape[0] == 6  # one output per frame
            assert not torch.allclose(before[0], after[0])
            assert (not torch.allclose(before[2], after[2])) == crosses, type(head.cca).__name__
            assert torch.allclose(before[3:], after[3:])  # the other clip is untouched
    with pytest.raises(ValueError, match="a batch of 5 frames is not a whole number of 3-frame clips"):
        video(fake_features(channels, batch=5))
