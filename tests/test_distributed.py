"""SyncBatchNorm: the statistics of the global batch, on CPU processes (gloo), activations kept."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.layers import ConvNormAct
from torch import nn

from attnseg.distributed import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(ConvNormAct(3, 4, 3), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))


def test_conversion_keeps_the_fused_activation_and_the_state():
    model = _model().train()
    for p in model.parameters():
        torch.nn.init.normal_(p)
    model(torch.randn(4, 3, 8, 8))  # non-trivial running statistics
    converted = convert_sync_batchnorm(_copy(model))
    assert isinstance(converted[0].bn, SyncBatchNorm) and isinstance(converted[0].bn.act, nn.ReLU)
    assert isinstance(converted[2], SyncBatchNorm) and isinstance(converted[2].act, nn.Identity)
    x = torch.randn(4, 3, 8, 8)
    for mode in (True, False):
        a, b = _copy(model).train(mode), _copy(converted).train(mode)
        assert torch.allclose(a(x), b(x), atol=1e-5)
    # torch's own conversion drops the activation: the reason this module exists
    torch_converted = nn.SyncBatchNorm.convert_sync_batchnorm(_copy(model)).eval()
    assert not torch.allclose(torch_converted(x), model.eval()(x))
    reverted = revert_sync_batchnorm(_copy(converted))
    assert type(reverted[0].bn).__name__ == "BatchNormAct2d" and type(reverted[2]) is nn.BatchNorm2d
    assert torch.allclose(reverted.eval()(x), model.eval()(x), atol=1e-6)


def _copy(module):
    import copy

    return copy.deepcopy(module)


def _worker(rank: int, world: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(1)
    x = torch.randn(6, 3, 5, 7)  # the global batch, identical on every rank
    model = convert_sync_batchnorm(_model()).train()
    part = x[rank * 3 : (rank + 1) * 3].clone().requires_grad_(True)
    y = model(part)
    (y * torch.arange(y.numel()).view_as(y).float()).sum().backward()
    results[rank] = dict(
        y=y.detach(),
        grad_x=part.grad,
        grad_w=model[0].bn.weight.grad.clone(),
        running_mean=model[0].bn.running_mean.clone(),
        running_var=model[2].running_var.clone(),
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_on_the_whole_batch():
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), results), nprocs=2, join=True)
        results = dict(results)
    torch.manual_seed(1)
    x = torch.randn(6, 3, 5, 7).requires_grad_(True)
    ref = _model().train()
    y = ref(x)
    (y * torch.cat([torch.arange(y[:3].numel()).view_as(y[:3])] * 2).float()).sum().backward()
    assert torch.allclose(torch.cat([results[0]["y"], results[1]["y"]]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([results[0]["grad_x"], results[1]["grad_x"]]), x.grad, rtol=1e-4, atol=1e-3)
    # parameter gradients are per-process partial sums (DDP averages them); their sum is the full-batch gradient
    assert torch.allclose(results[0]["grad_w"] + results[1]["grad_w"], ref[0].bn.weight.grad, rtol=1e-4, atol=1e-3)
    assert torch.allclose(results[0]["running_mean"], ref[0].bn.running_mean, atol=1e-6)
    assert torch.allclose(results[1]["running_var"], ref[2].running_var, atol=1e-5)
