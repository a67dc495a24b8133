"""Cross-process batch normalisation that works on CPU (gloo) and GPU, and keeps timm's fused activations.

``trainer.sync_batchnorm: true`` in Lightning converts layers with ``torch.nn.SyncBatchNorm``, which
(1) refuses CPU tensors, and (2) drops the activation of timm's ``BatchNormAct2d`` (used by
``ConvNormAct`` in every head), silently removing ReLUs. The CLI installs ``SyncBatchNormPlugin``
instead: it swaps each batch-norm layer for ``SyncBatchNorm`` below, which averages the batch
statistics over all processes with a differentiable all-reduce and then applies the layer's own
dropout and activation.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from timm.layers import BatchNormAct2d
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over all processes; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` (optionally followed by ``drop`` and ``act``, as timm's ``BatchNormAct2d``) whose training
    statistics are computed over the whole global batch. Outside distributed training it is a plain batch norm."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        drop: Optional[nn.Module] = None,
        act: Optional[nn.Module] = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.act(self.drop(super().forward(x)))
        c = x.shape[1]
        xf = x.float()
        dims = [d for d in range(x.ndim) if d != 1]
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_full((1,), x.numel() / c)])
        total = _AllReduceSum.apply(local)  # gradients flow back to every process's inputs
        count = total[-1]
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp_min(1))
        shape = [1, c] + [1] * (x.ndim - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return self.act(self.drop(y.to(x.dtype)))


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` / ``BatchNormAct2d`` in ``module`` by ``SyncBatchNorm``, keeping its state."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm):
        extra = dict(drop=module.drop, act=module.act) if isinstance(module, BatchNormAct2d) else {}
        new = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, **extra
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Inverse of ``convert_sync_batchnorm`` (layers with an activation become timm ``BatchNormAct2d``)."""
    if isinstance(module, SyncBatchNorm):
        fused = not (isinstance(module.act, nn.Identity) and isinstance(module.drop, nn.Identity))
        if fused:
            new = BatchNormAct2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            new.drop, new.act = module.drop, module.act
        else:
            new = nn.BatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, revert_sync_batchnorm(child))
    return module


class SyncBatchNormPlugin(TorchSyncBatchNorm):
    """Lightning layer-sync plugin using ``SyncBatchNorm`` above (CPU and GPU, activations kept)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_sync_batchnorm(model)
