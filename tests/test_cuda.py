"""The CUDA tier (marker ``cuda``; skipped without a CUDA GPU): every attention block on the GPU against the same
block on the CPU in fp32 (TF32 off), outputs and gradients; the bf16 fast path on the GPU against fp32 within the
tolerance of tests/heads/test_bf16.py; every head in a real model; one tiny ``fit`` on the GPU with the defaults
``fit`` chooses there. ``bench/gpu_check.sh`` runs this tier and the GPU benchmark rows in one call.

    pytest -m cuda tests/test_cuda.py
"""

from __future__ import annotations

import copy

import pytest
import torch

from attnseg.heads import (
    ChannelAttention,
    CrissCrossAttention,
    CrissCrossAttention3D,
    FullyAttentionalBlock,
    PositionAttention,
    head_configs,
)
from tests.helpers.cli import FAST, QUICKSTART, run_cli
from tests.helpers.head_checks import random_gamma, small_with_every_output

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]
EXACT = 1e-5  # relative error (Frobenius norms) of CUDA against the CPU in fp32
BF16 = 2e-2  # the bf16 fast path against fp32 (tests/heads/test_bf16.py)

# name: (module factory, input shape); inputs (B, C, H, W), or (B, C, T, H, W) for the clip module
BLOCKS = {
    "pam": (lambda: PositionAttention(32), (2, 32, 13, 17)),
    "cam": (lambda: ChannelAttention(), (2, 32, 13, 17)),
    "cam-plain": (lambda: ChannelAttention("plain"), (2, 32, 13, 17)),
    "criss-cross": (lambda: CrissCrossAttention(32), (2, 32, 13, 17)),
    "criss-cross-3d": (lambda: CrissCrossAttention3D(32), (1, 32, 3, 9, 11)),
    "fla": (lambda: FullyAttentionalBlock(32).eval(), (2, 32, 13, 17)),  # eval: BN with its running statistics
}


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 means fp32: no TF32 in matrix products or convolutions while a test runs."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def errors(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative errors per tensor; ``key.bias``'s exact gradient is 0 (a per-query constant shift of the energies),
    so it is measured against the scale of ``key.weight``'s gradient instead."""
    found = {}
    for name, ref in reference.items():
        if name == "key.bias gradient":
            scale = reference["key.weight gradient"].abs().max()
            found[name] = float((ours[name] - ref).abs().max() / scale)
        else:
            found[name] = relative(ours[name], ref)
    return found


def outputs_and_gradients(module, x, grad, device: str, bf16: bool = False, call=None) -> dict[str, torch.Tensor]:
    """The output of ``call(module, x)`` (default: ``module(x)``), its input gradient and parameter gradients on
    ``device``; with ``bf16`` under bf16 autocast with a bf16 input, as in ``bf16-mixed`` training."""
    module = copy.deepcopy(module).to(device)
    x = x.detach().to(device, torch.bfloat16 if bf16 else torch.float32).clone().requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        y = call(module, x) if call is not None else module(x)
    y.float().backward(grad.to(device))
    found = {"output": y.detach(), "input gradient": x.grad}
    found.update({f"{n} gradient": p.grad for n, p in module.named_parameters() if p.grad is not None})
    return {k: v.detach().float().cpu() for k, v in found.items()}


def block(name: str):
    build, shape = BLOCKS[name]
    torch.manual_seed(0)
    module = build()
    random_gamma(module)
    with torch.no_grad():  # bf16-representable weights and inputs: fp32 and bf16 paths start from the same numbers
        for p in module.parameters():
            p.copy_(p.bfloat16().float())
    return module, torch.randn(shape).bfloat16().float(), torch.randn(shape)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_block_on_cuda_equals_the_cpu_in_fp32(name):
    module, x, grad = block(name)
    cpu = outputs_and_gradients(module, x, grad, "cpu")
    found = errors(outputs_and_gradients(module, x, grad, "cuda"), cpu)
    assert max(found.values()) <= EXACT, found


@pytest.mark.parametrize("backend", ["MATH", "EFFICIENT_ATTENTION"])
def test_fla_channel_attention_on_cuda_equals_the_cpu_with_each_sdpa_backend(backend):
    """FLA's attention (``scaled_dot_product_attention``, scale 1, keys broadcast over the lines) at the published
    width, one SDPA backend at a time, against the CPU in fp32: says which kernel a gap of FLA on CUDA comes from."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnseg.heads.flanet import _channel_attention

    torch.manual_seed(0)
    seq, prior = torch.randn(2, 33, 512, 33), 0.1 * torch.randn(2, 33, 512)
    with sdpa_kernel(getattr(SDPBackend, backend)):
        gpu = _channel_attention(seq.cuda(), prior.cuda()).cpu()
    assert relative(gpu, _channel_attention(seq, prior)) <= EXACT


@pytest.mark.parametrize("name", sorted(set(BLOCKS) - {"criss-cross-3d"}))  # the 3D module has no bf16 path
def test_every_bf16_fast_path_on_cuda_is_within_its_tolerance(name):
    module, x, grad = block(name)
    call = (lambda m, t: m.augment(t)) if name == "fla" else None  # FLA without its final conv-BN-ReLU
    fp32 = outputs_and_gradients(module, x, grad, "cuda", call=call)
    found = errors(outputs_and_gradients(module, x, grad, "cuda", bf16=True, call=call), fp32)
    assert max(found.values()) <= BF16, found
    assert min(found.values()) > 0, "the fast path computed exactly the fp32 result: it did not run"


@pytest.mark.parametrize("name", sorted(head_configs()))
def test_every_head_trains_a_step_in_a_real_model_on_cuda(name):
    from attnseg.encoder import Encoder
    from attnseg.model import SegmentationModel

    config = head_configs()[name]
    head = config.build([64, 128, 256, 512], 5, **small_with_every_output(config))
    model = SegmentationModel(Encoder("resnet18", output_stride=8), head).cuda().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 97, 129, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images)
    sum(o.float().mean() for o in out.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert out["out"].shape == (2, 5, 97, 129)


def test_a_tiny_fit_on_the_gpu_chooses_bf16_and_channels_last(capsys):
    gpu = ["--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.logger=false"]
    cli = run_cli("fit", "--config", str(QUICKSTART), *FAST, *gpu)
    assert cli.trainer.state.finished and cli.trainer.precision == "bf16-mixed"
    assert cli.model.hparams.channels_last is True and cli.trainer.global_step > 0
