"""Optimiser and LR scheduler given as class paths with init args (LightningCLI's convention), on the task's
encoder / head parameter groups; the default stays SGD + poly."""

from __future__ import annotations

import pytest
import torch

from attnseg.task import SegmentationTask
from tests.helpers.cli import FAST, QUICKSTART, run_cli

SHORT = [
    "--config",
    QUICKSTART,
    *FAST,
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
]


@pytest.mark.slow
def test_injected_optimizer_and_scheduler_keep_the_groups(tmp_path):
    cli = run_cli(
        "fit",
        *SHORT,
        f"--trainer.default_root_dir={tmp_path}",
        "--model.optimizer=torch.optim.RMSprop",
        "--model.optimizer.lr=0.004",
        "--model.optimizer.weight_decay=0.01",
        "--model.head_lr_mult=10",
        "--model.no_decay_norm_bias=true",
        "--model.lr_scheduler=torch.optim.lr_scheduler.StepLR",
        "--model.lr_scheduler.step_size=1",
        "--model.lr_scheduler.gamma=0.5",
    )
    (opt,) = cli.trainer.optimizers
    assert isinstance(opt, torch.optim.RMSprop)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"encoder", "encoder_no_decay", "head", "head_no_decay"}
    # the optimiser's own lr (x10 for the head), halved at each of the 2 steps; its own decay except no-decay groups
    for name, initial in (("encoder", 0.004), ("head", 0.04)):
        for group in (groups[name], groups[f"{name}_no_decay"]):
            assert group["initial_lr"] == pytest.approx(initial) and group["lr"] == pytest.approx(initial / 4)
        assert groups[name]["weight_decay"] == 0.01 and groups[f"{name}_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in groups["encoder"]["params"])  # biases and norm weights are in no_decay
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.StepLR) and config.interval == "step"

    # the checkpoint holds both as class paths: the task rebuilds them
    task = SegmentationTask.load_from_checkpoint(cli.trainer.checkpoint_callback.last_model_path)
    rebuilt = task.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(rebuilt, torch.optim.RMSprop) and rebuilt.defaults["lr"] == 0.004
    scheduler = task.lr_scheduler_factory(rebuilt)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.gamma == 0.5


@pytest.mark.slow
def test_default_is_the_builtin_optimizer_with_the_poly_schedule(tmp_path):
    cli = run_cli(
        "fit",
        *SHORT,
        f"--trainer.default_root_dir={tmp_path}",
        "--model.optimizer=sgd",
        "--model.lr=0.01",
        "--model.head_lr_mult=10",
        "--model.warmup_iters=0",
    )
    (opt,) = cli.trainer.optimizers
    assert isinstance(opt, torch.optim.SGD)
    assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.LambdaLR)
    max_iters = cli.trainer.estimated_stepping_batches
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 2 / max_iters) ** 0.9)


@pytest.mark.slow
def test_plateau_scheduler_watches_val_miou(tmp_path):
    cli = run_cli(
        "fit",
        *SHORT,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=4",
        "--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau",
        "--model.lr_scheduler.mode=max",
        "--model.lr_scheduler_interval=epoch",
    )
    (config,) = cli.trainer.lr_scheduler_configs
    assert config.monitor == "val/mIoU" and config.interval == "epoch"
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and config.scheduler.mode == "max"
