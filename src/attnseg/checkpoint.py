"""Checkpoints that survive a kill, and finding the one to resume from.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same directory, flushes
  it to disk and renames it over the target: a process killed at any moment leaves either the old
  file or the new one, never a truncated one.
- ``Checkpoint`` keeps the best checkpoint by a monitored metric and refreshes ``last.ckpt`` at every
  save point (Lightning's ``ModelCheckpoint`` refreshes it only when the top-k changed, so a run whose
  metric stopped improving would resume from an old step).
- ``run_dir`` is a run's own directory, ``<save_dir>/<name>/<version>``, which holds ``checkpoints/``.
- ``find_last_checkpoint`` resolves ``--ckpt_path last`` to the newest ``last.ckpt`` of any run
  under the logger's directory, so a new process (a requeued job) continues the run it belongs to.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from attnseg.lightning_internals import last_step_saved, save_last, saves_on_train_epoch_end


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on local filesystems (temp file + fsync + rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        if "://" in str(path):  # remote filesystems: Lightning's own transaction-based save
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every validation (or epoch end), whether or not
    the monitored metric improved, so that a killed run resumes from its latest state."""

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not saves_on_train_epoch_end(self, trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if saves_on_train_epoch_end(self, trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer) -> None:
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or last_step_saved(self) == trainer.global_step  # saved (top-k and last) at this step already
        ):
            return
        save_last(self, trainer)


def run_dir(trainer: Trainer) -> Path:
    """The run's own directory, ``<save_dir>/<name>/<version>``: where its checkpoints and config go."""
    logger = trainer.logger
    if logger is None or trainer.fast_dev_run:
        return Path(trainer.default_root_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


def find_last_checkpoint(runs_root: Path) -> Optional[Path]:
    """Newest ``<runs_root>/<run>/checkpoints/last*.ckpt`` (by modification time), or None."""
    candidates = [p for p in runs_root.glob("*/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def run_of_checkpoint(path: Path) -> Optional[str]:
    """The run directory name (W&B id or ``version_N``) of ``<runs>/<run>/checkpoints/x.ckpt``, else None."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "checkpoints" else None
