"""Every use of Lightning's private API, in one place.

Lightning offers no public way to do these; each is kept to a one-line function here, and
``tests/test_lightning_internals.py`` fails with the attribute's name when an upgrade moves or removes it.

- ``logging_step``: the step Lightning logs metrics at (``fit_loop.epoch_loop._batches_that_stepped``), so the
  dashboard's media line up with the scalars of the same validation.
- ``saves_on_train_epoch_end``, ``last_step_saved``, ``save_last``: ``ModelCheckpoint``'s decision of when it
  saves, the step it last saved at, and its ``last.ckpt`` writer, for a ``last.ckpt`` refreshed at every
  validation (``attnseg.checkpoint.Checkpoint``).
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


def run_subcommand(cli: LightningCLI, subcommand: str) -> None:
    """Run ``fit``, ``validate``, ``test`` or ``predict`` as ``LightningCLI`` does."""
    LightningCLI._run_subcommand(cli, subcommand)


def subcommand_parser(cli: LightningCLI, subcommand: str) -> LightningArgumentParser:
    """The parser of one subcommand (its defaults are the code's and the config files' defaults)."""
    return cli._parser(subcommand)
