"""A task's optimiser and learning-rate schedule.

Two parameter groups, encoder and head (the head's learning rate ``head_lr_mult`` times the encoder's, the papers'
x10), each split in two with ``no_decay_norm_bias`` (no weight decay on normalisation layers and biases); SGD with
momentum or AdamW, or an injected optimiser (``model.optimizer_factory``) on the same groups; the poly schedule with a
floor and a linear warm-up (mmsegmentation's) per step, or an injected scheduler. A resumed fit takes the optimiser
and schedule saved in its checkpoint and sets their learning rates, weight decay and momentum from the run's options.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from attnseg.constants import MONITOR


def decay_split(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``module``'s parameters with weight decay, and those without: every parameter of a normalisation layer
    (batch, group, layer, instance norm) and every bias."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    no_decay = {id(p) for m in module.modules() if isinstance(m, norms) for p in m.parameters(recurse=False)}
    no_decay |= {id(p) for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}
    params = list(module.parameters())
    return [p for p in params if id(p) not in no_decay], [p for p in params if id(p) in no_decay]


def param_groups(task) -> list[dict]:
    """Encoder and head parameter groups (and their no-decay halves) with their learning rates (``lr_mult``: 1 for
    the encoder, ``head_lr_mult`` for the head)."""
    hp = task.hparams
    groups = []
    for name, part, mult in (("encoder", task.model.encoder, 1.0), ("head", task.model.head, hp.head_lr_mult)):
        decay, no_decay = decay_split(part) if hp.no_decay_norm_bias else (list(part.parameters()), [])
        common = {"lr": hp.lr * mult, "lr_mult": mult}
        groups.append(
            {"params": [p for p in decay if p.requires_grad], **common, "name": name, "weight_decay": hp.weight_decay}
        )
        if no_decay:
            groups.append(
                {
                    "params": [p for p in no_decay if p.requires_grad],
                    **common,
                    "weight_decay": 0.0,
                    "name": f"{name}_no_decay",
                }
            )
    return groups


def poly(max_iters: int, floor: float, power: float, warmup_iters: int = 0, warmup_ratio: float = 0.0):
    """The factor of the base learning rate at step ``it``: ``(1 - floor) * (1 - it / max_iters) ** power + floor``,
    times a linear warm-up from ``warmup_ratio`` to 1 over the first ``warmup_iters`` steps."""

    def factor(it: int) -> float:
        value = (1 - floor) * (1 - min(it, max_iters) / max_iters) ** power + floor
        if it < warmup_iters:
            return value * (warmup_ratio + (1 - warmup_ratio) * it / warmup_iters)
        return value

    return factor


def _poly_of(task, lr: float) -> Callable[[int], float]:
    hp = task.hparams
    max_iters = max(1, int(task.trainer.estimated_stepping_batches))
    floor = hp.min_lr / lr if lr > 0 else 0.0
    return poly(max_iters, floor, hp.poly_power, hp.warmup_iters, hp.warmup_ratio)


def configure_optimizers(task) -> dict:
    """``LightningModule.configure_optimizers`` of a ``SegmentationTask`` (see the module's docstring)."""
    hp = task.hparams
    groups = param_groups(task)
    if task.optimizer_factory is None and hp.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    elif task.optimizer_factory is None:
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.momentum, 0.999), weight_decay=hp.weight_decay)
    else:  # the injected optimiser's own lr and weight decay, on the same groups
        for group in groups:
            del group["lr"]
            if not group["name"].endswith("_no_decay"):  # no-decay groups keep their 0
                del group["weight_decay"]
        opt = task.optimizer_factory(groups)
        for group in opt.param_groups:
            group["lr"] = opt.defaults["lr"] * group["lr_mult"]
    if task.lr_scheduler_factory is not None:
        scheduler = task.lr_scheduler_factory(opt)
        config = {"scheduler": scheduler, "interval": hp.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = MONITOR
        return {"optimizer": opt, "lr_scheduler": config}
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, [_poly_of(task, g["lr"]) for g in opt.param_groups])
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def apply_options_on_resume(task) -> None:
    """A resumed run restores the optimiser and schedule saved in its checkpoint, whose learning rates, weight decay
    and momentum are the old run's: set them from this run's options (which the CLI reports when they differ),
    keeping the optimiser's moments and the schedule's position. An injected optimiser or scheduler resumes exactly
    as saved."""
    optimizers, schedulers = task.trainer.optimizers, task.trainer.lr_scheduler_configs
    if not optimizers or not schedulers or task.optimizer_factory is not None or task.lr_scheduler_factory:
        return
    opt, scheduler, hp = optimizers[0], schedulers[0].scheduler, task.hparams
    for i, (group, wanted) in enumerate(zip(opt.param_groups, param_groups(task))):
        group["initial_lr"] = scheduler.base_lrs[i] = wanted["lr"]
        group["weight_decay"] = wanted["weight_decay"]
        if "momentum" in group:
            group["momentum"] = hp.momentum
        if "betas" in group:
            group["betas"] = (hp.momentum, group["betas"][1])
    scheduler.lr_lambdas = [_poly_of(task, lr) for lr in scheduler.base_lrs]
    for group, lr, factor in zip(opt.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = lr * factor(scheduler.last_epoch)
