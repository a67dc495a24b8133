"""DANet: the attention modules against their formulas written out naively, the head's switches and
outputs on several encoders' channel lists, and the head in a real model at an odd input size."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attnseg.heads import ChannelAttention, DANetHead, PositionAttention
from tests.helpers.head_checks import CHANNELS, fake_features, random_gamma
from tests.helpers.reference import naive_cam, naive_pam

# Fake encoder outputs: channel lists of resnet18 and scaled-down resnet50 / convnext, strides 4-8-8-8 (OS 8)
# or 4-8-16-16 (OS 16) of a 97x129 input.


@pytest.mark.parametrize("shape,key_channels", [((2, 16, 7, 9), None), ((1, 32, 13, 17), 4), ((1, 4, 5, 3), 8)])
def test_position_attention_equals_naive_formula(shape, key_channels):
    m = PositionAttention(shape[1], key_channels)
    random_gamma(m)
    x = 2 * torch.randn(shape)  # peaked softmax
    with torch.no_grad():
        ours, ref = m(x), naive_pam(m, x)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        s = m.attention_map(x)
    n = shape[2] * shape[3]
    assert s.shape == (shape[0], n, n)
    torch.testing.assert_close(s.sum(-1), torch.ones(shape[0], n))
    q, k = m.query(x).flatten(2), m.key(x).flatten(2)
    torch.testing.assert_close(s, torch.softmax(q.transpose(1, 2) @ k, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("energy", ["max_minus", "plain"])
def test_channel_attention_equals_naive_formula(energy):
    m = ChannelAttention(energy)
    random_gamma(m)
    x = 0.1 * torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(m(x), naive_cam(m, x, energy), rtol=1e-5, atol=1e-5)
        amap = m.attention_map(x)
    assert amap.shape == (2, 8, 8)
    torch.testing.assert_close(amap.sum(-1), torch.ones(2, 8))
    # the two energies are different attentions
    other = naive_cam(m, x, "plain" if energy == "max_minus" else "max_minus")
    assert not torch.allclose(m(x), other, atol=1e-4)


@pytest.mark.parametrize("energy", ["max_minus", "plain"])
def test_channel_attention_gradients_equal_the_naive_formula_without_subnormals(energy):
    """Peaked rows (large energies) underflow most weights: the map holds exact zeros, never subnormal numbers,
    and the output and the gradients of the input and gamma still equal autograd through the formula."""
    m = ChannelAttention(energy)
    random_gamma(m)
    x, weight = 1.5 * torch.randn(2, 32, 9, 11), torch.randn(2, 32, 9, 11)
    tiny = torch.finfo(torch.float32).tiny
    amap = m.attention_map(x)
    assert (amap == 0).any() and not ((amap > 0) & (amap < tiny)).any()
    grads = []
    for fn in (m, lambda t: naive_cam(m, t, energy)):
        m.zero_grad()
        xr = x.clone().requires_grad_(True)
        out = fn(xr)
        (out * weight).sum().backward()
        grads.append((out.detach(), xr.grad, m.gamma.grad.clone()))
    for ours, naive in zip(*grads):
        torch.testing.assert_close(ours, naive, rtol=1e-4, atol=1e-4)


def test_channel_attention_rejects_unknown_energy():
    with pytest.raises(ValueError, match="energy='softmax'"):
        ChannelAttention("softmax")


def test_zero_gamma_is_identity_and_gradients_reach_every_parameter():
    x = torch.randn(1, 16, 7, 9)
    for m in (PositionAttention(16), ChannelAttention()):
        assert m.gamma.item() == 0.0
        assert torch.equal(m(x), x)
        random_gamma(m)
        xr = x.clone().requires_grad_(True)
        (m(xr) * torch.randn_like(x)).sum().backward()
        assert xr.grad is not None and xr.grad.abs().sum() > 0
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{type(m).__name__}.{name} got no gradient"


@pytest.mark.parametrize("block_elements", [None, 280])  # one block; blocks of 8 queries, the last one of 3
def test_position_attention_gradients_equal_the_naive_formula(block_elements, monkeypatch):
    """The hand-written backward (blocks of queries, recomputed attention) against autograd through the formula,
    for the input and every parameter; batch 2, also with channels-last input."""
    import attnseg.ops.query_blocks as query_blocks

    if block_elements:
        monkeypatch.setattr(query_blocks, "BLOCK_ELEMENTS", block_elements)  # 280 // 35 positions = 8 queries a block
    m = PositionAttention(8, 4)
    random_gamma(m)
    x = torch.randn(2, 8, 5, 7)
    weight = torch.randn(2, 8, 5, 7)
    grads = []
    for fn, layout in [
        (m, torch.contiguous_format),
        (lambda t: naive_pam(m, t), torch.contiguous_format),
        (m, torch.channels_last),
    ]:
        m.zero_grad()
        xr = x.clone(memory_format=layout).requires_grad_(True)
        out = fn(xr)
        (out * weight).sum().backward()
        grads.append({"out": out.detach(), "x": xr.grad, **{n: p.grad.clone() for n, p in m.named_parameters()}})
    ours, naive, channels_last = grads
    for name in naive:
        for result in (ours, channels_last):
            torch.testing.assert_close(
                result[name], naive[name], rtol=1e-4, atol=1e-5, msg=lambda e, name=name: f"{name}: {e}"
            )


def test_position_attention_never_holds_the_n_by_n_map():
    """Forward and backward on the CPU: no single allocation as large as the (N, N) attention."""
    m = PositionAttention(64)
    random_gamma(m)
    x = torch.randn(1, 64, 48, 48, requires_grad=True)
    n = 48 * 48
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        m(x).sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest < n * n * 4 // 4, f"an allocation of {largest} bytes; the N x N map is {n * n * 4}"


@pytest.mark.parametrize("pam,cam", [(True, True), (True, False), (False, True), (False, False)])
def test_switches_keep_the_outputs_and_loss_terms(pam, cam):
    """Every point of the PAM x CAM grid has the same outputs and loss weights; a switch removes only its module."""
    head = DANetHead(CHANNELS["resnet50/16"], num_classes=3, pam=pam, cam=cam)
    out = head(fake_features(CHANNELS["resnet50/16"], batch=2))
    assert set(out) == {"out", "pam", "cam", "aux"} == set(head.loss_weights)
    assert head.loss_weights == {"out": 1.0, "pam": 1.0, "cam": 1.0, "aux": 0.4}
    assert all(o.shape == (2, 3, 13, 17) for o in out.values())
    kinds = {type(m) for m in head.modules()}
    assert (PositionAttention in kinds) == pam and (ChannelAttention in kinds) == cam
    expected_maps = {name for name, on in (("pam", pam), ("cam", cam)) if on}
    assert set(head.attention_maps(fake_features(CHANNELS["resnet50/16"]))) == expected_maps


def test_ablation_variants_differ_only_in_the_attention_modules():
    """Two points of the grid share every parameter but those of the module switched off (names and shapes)."""
    shapes = {
        (pam, cam): {k: v.shape for k, v in DANetHead(CHANNELS["resnet18"], 3, pam=pam, cam=cam).state_dict().items()}
        for pam in (True, False)
        for cam in (True, False)
    }
    both, neither = shapes[True, True], shapes[False, False]
    assert set(neither) <= set(both) and all(both[k] == neither[k] for k in neither)
    pam_only = {k for k in both if k.startswith("branches.pam.attention.")}
    cam_only = {k for k in both if k.startswith("branches.cam.attention.")}
    assert set(both) - set(neither) == pam_only | cam_only
    assert pam_only == {
        f"branches.pam.attention.{n}"
        for n in ("query.weight", "query.bias", "key.weight", "key.bias", "value.weight", "value.bias", "gamma")
    }
    assert cam_only == {"branches.cam.attention.gamma"}
    assert set(shapes[True, False]) == set(neither) | pam_only and set(shapes[False, True]) == set(neither) | cam_only


def test_baseline_without_attention_is_the_two_branches_without_their_modules():
    torch.manual_seed(0)
    plain = DANetHead(CHANNELS["resnet18"], num_classes=3, pam=False, cam=False, aux=False).eval()
    assert list(plain.branches) == ["pam", "cam"]
    assert all(isinstance(b.attention, torch.nn.Identity) for b in plain.branches.values())
    # with gamma = 0 (its initial value) the full head computes exactly the baseline's function
    full = DANetHead(CHANNELS["resnet18"], num_classes=3, aux=False).eval()
    full.load_state_dict(plain.state_dict(), strict=False)
    features = fake_features(CHANNELS["resnet18"])
    expected, got = plain(features), full(features)
    for name in ("out", "pam", "cam"):
        torch.testing.assert_close(got[name], expected[name])


def test_attention_maps_for_visualisation():
    head = DANetHead(CHANNELS["convnext/8"], num_classes=3).eval()
    maps = head.attention_maps(fake_features(CHANNELS["convnext/8"], batch=2))
    n, c = 13 * 17, CHANNELS["convnext/8"][-1] // 4
    assert maps["pam"].shape == (2, n, n) and maps["cam"].shape == (2, c, c)
    torch.testing.assert_close(maps["pam"].sum(-1), torch.ones(2, n))


@pytest.mark.parametrize("encoder", sorted(CHANNELS))
def test_branch_widths_follow_the_official_code(encoder):
    """Branches of C_in / 4 channels, PAM queries and keys of C_in / 4 / 8."""
    channels = CHANNELS[encoder]
    head = DANetHead(channels, num_classes=4)
    assert (
        head.branches["pam"].reduce.conv.out_channels
        == head.branches["cam"].reduce.conv.out_channels
        == channels[-1] // 4
    )
    assert head.branches["pam"].attention.query.out_channels == max(1, channels[-1] // 4 // 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_key_heads_equal_one_head_of_the_whole_value_width(dtype):
    """PAM's CUDA bf16 path splits V into heads of the key width sharing Q and K; on any device that is the same
    attention as one head over all of V (here on the CPU, against the formula)."""
    from attnseg.ops import shared_key_heads

    torch.manual_seed(0)
    q, k = torch.randn(2, 35, 4).to(dtype), torch.randn(2, 35, 4).to(dtype)
    v = torch.randn(2, 35, 16).to(dtype)
    expected = torch.softmax(q.double() @ k.double().transpose(1, 2), dim=-1) @ v.double()
    ours = shared_key_heads(q, k, v)
    assert ours.shape == v.shape and ours.dtype == dtype
    tolerance = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}  # fp32's defaults; bf16 rounding
    torch.testing.assert_close(ours, expected.to(dtype), **tolerance)
    assert shared_key_heads(q, k, v[..., :15]) is None  # a value width that is not a multiple of the key width
