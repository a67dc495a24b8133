"""Every use of Lightning's private API, in one place.

Lightning offers no public way to do these; each is kept to a one-line function here, and
``tests/test_lightning_internals.py`` fails with the attribute's name when an upgrade moves or removes it.

- ``logging_step``: the step Lightning logs metrics at (``fit_loop.epoch_loop._batches_that_stepped``), so the
  dashboard's media line up with the scalars of the same validation.
- ``saves_on_train_epoch_end``, ``last_step_saved``, ``save_last``: ``ModelCheckpoint``'s decision of when it
  saves, the step it last saved at, and its ``last.ckpt`` writer, for a ``last.ckpt`` refreshed at every
  validation (``attnseg.checkpoint.Checkpoint``).
- ``close_saved_epoch``: a checkpoint written at the end of an epoch (after its last batch, before Lightning counts
  the epoch completed) resumes at the start of the next epoch; with ``max_steps`` set Lightning would otherwise run
  that epoch's end again and count it twice, so that a run extended with more steps could stop at ``max_epochs``
  having trained nothing.
- ``run_subcommand`` and ``subcommand_parser``: ``LightningCLI``'s runner of a subcommand (wrapped by the CLI to
  close the W&B run whatever happens) and the parser of one subcommand (for its defaults).
"""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# (owner, attribute) of every private name used below; the test checks each exists
USED = [
    ("lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop", "_batches_that_stepped"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_should_save_on_train_epoch_end"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_last_global_step_saved"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_save_last_checkpoint"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_monitor_candidates"),
    ("lightning.pytorch.cli.LightningCLI", "_run_subcommand"),
    ("lightning.pytorch.cli.LightningCLI", "_parser"),
]


def logging_step(trainer: Trainer) -> int:
    """The step the current metrics are logged at (what ``self.log`` and ``LearningRateMonitor`` use)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def saves_on_train_epoch_end(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    """Whether the checkpoint callback saves at the end of training epochs (else after validation)."""
    return callback._should_save_on_train_epoch_end(trainer)


def last_step_saved(callback: ModelCheckpoint) -> int:
    """The global step of the callback's latest save (top-k or last)."""
    return callback._last_global_step_saved


def save_last(callback: ModelCheckpoint, trainer: Trainer) -> None:
    """Write the callback's ``last.ckpt`` now (atomically, through the trainer's checkpoint IO)."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def close_saved_epoch(checkpoint: dict) -> bool:
    """Mark the epoch a checkpoint was saved at the end of as completed (in place); whether it was one."""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop or "epoch_progress" not in loop or not loop.get("epoch_loop.batch_progress", {}).get("is_last_batch"):
        return False
    current, total = loop["epoch_progress"]["current"], loop["epoch_progress"]["total"]
    if not (current["started"] == current["processed"] == current["completed"] + 1):
        return False
    current["completed"], total["completed"] = current["processed"], total["processed"]
    # the next epoch starts with no batch, scheduler or optimiser step counted in it (what a new epoch resets)
    for name in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress"):
        _zero(loop.get(name, {}).get("current", {}))
    loop["epoch_loop.batch_progress"]["is_last_batch"] = False
    for progress in loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).values():
        _zero(progress.get("current", {}))
    _zero(loop.get("epoch_loop.val_loop.batch_progress", {}).get("total", {}))
    return True


def batches_done_in_epoch(checkpoint: dict) -> int:
    """How many training batches of its current epoch a checkpoint had done (0 at an epoch's start or end)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    if progress.get("is_last_batch"):
        return 0
    return int(progress.get("current", {}).get("completed", 0))


def _zero(counts: dict) -> None:
    for key in counts:
        counts[key] = 0


def run_subcommand(cli: LightningCLI, subcommand: str) -> None:
    """Run ``fit``, ``validate``, ``test`` or ``predict`` as ``LightningCLI`` does."""
    LightningCLI._run_subcommand(cli, subcommand)


def subcommand_parser(cli: LightningCLI, subcommand: str) -> LightningArgumentParser:
    """The parser of one subcommand (its defaults are the code's and the config files' defaults)."""
    return cli._parser(subcommand)
