"""The attention modules' bf16 fast path (under bf16 autocast: bf16 operands, fp32 accumulation, fp32 softmax)
against the same module in fp32, outputs and gradients. The exactness tests of each module run in fp32.

Stated tolerance: the relative error ``|bf16 - fp32| / |fp32|`` (Frobenius norms) of the output, the input
gradient and every parameter gradient is at most 2e-2 (measured: 1e-3 to 6e-3, and 1.7e-2 for gamma's gradient
after two criss-cross steps, a sum over every position whose terms cancel; bf16 keeps 8 bits of mantissa, a
rounding error of 2^-9 per operand). Inputs and weights are bf16-representable, so both paths start from the
same numbers and the difference is the fast path's own arithmetic.
"""

from __future__ import annotations

import pytest
import torch

from attnseg.heads import ChannelAttention, CrissCrossAttention, FullyAttentionalBlock, PositionAttention
from tests.helpers.head_checks import random_gamma

TOLERANCE = 2e-2


def _round_to_bf16(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.bfloat16().float())
    return module


def _run(module, attention, x, grad, fast: bool):
    """Output, input gradient and parameter gradients of ``attention(module, x)`` (fp32 or under bf16 autocast)."""
    module.zero_grad()
    x = (x.bfloat16() if fast else x).detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
        y = attention(module, x)
    y.float().backward(grad)
    params = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return y.float().detach(), x.grad.float(), params


def _module(m, x):
    return m(x)


def _fla_attention(m, x):  # the attention of the block without its final conv-BN-ReLU (whose BN amplifies noise)
    return m.augment(x)


def _recurrent(m, x):
    return m(m(x))


CASES = {
    "pam": (lambda: PositionAttention(32), _module),
    "cam": (lambda: ChannelAttention(), _module),
    "cam-plain": (lambda: ChannelAttention("plain"), _module),
    "criss-cross": (lambda: CrissCrossAttention(32), _module),
    "criss-cross-R2": (lambda: CrissCrossAttention(32), _recurrent),
    "fla": (lambda: FullyAttentionalBlock(32), _fla_attention),
}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_bf16_fast_path_matches_fp32(case, channels_last):
    torch.manual_seed(0)
    make, attention = CASES[case]
    m = _round_to_bf16(make())
    if hasattr(m, "gamma"):
        random_gamma(m)
        m.gamma.data = m.gamma.data.bfloat16().float()
    x = torch.randn(2, 32, 11, 14).bfloat16().float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 32, 11, 14)
    ref_y, ref_dx, ref_params = _run(m, attention, x, grad, fast=False)
    y, dx, params = _run(m, attention, x, grad, fast=True)
    errors = {"output": _relative(y, ref_y), "input gradient": _relative(dx, ref_dx)}
    for name, g in ref_params.items():
        if name == "key.bias":  # its exact gradient is 0 (a per-query constant shift of the energies): absolute
            assert params[name].abs().max() < TOLERANCE * ref_params["key.weight"].abs().max()
            continue
        errors[f"{name} gradient"] = _relative(params[name], g)
    assert ref_params, "no parameter got a gradient"
    assert max(errors.values()) <= TOLERANCE, errors
    assert min(errors.values()) > 0, "the fast path computed exactly the fp32 result: it did not run"


def test_the_fast_path_runs_only_under_bf16_autocast():
    """A bf16 input without autocast, or fp32 under autocast disabled, takes the exact fp32 path."""
    torch.manual_seed(0)
    m = _round_to_bf16(CrissCrossAttention(16))
    random_gamma(m)
    x = torch.randn(1, 16, 7, 9).bfloat16().float()
    exact = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        torch.testing.assert_close(m(x), exact, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.float16):  # not bf16: the exact path
        assert m(x).dtype == torch.float32
