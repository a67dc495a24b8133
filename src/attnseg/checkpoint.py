"""Checkpoints that survive a kill, and finding the one to resume from.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same directory, flushes
  it to disk and renames it over the target: a process killed at any moment leaves either the old
  file or the new one, never a truncated one.
- ``Checkpoint`` keeps the best checkpoint by a monitored metric and refreshes ``last.ckpt`` at every
  save point (Lightning's ``ModelCheckpoint`` refreshes it only when the top-k changed, so a run whose
  metric stopped improving would resume from an old step) and at the end of ``fit``.
- ``run_dir`` is a run's own directory, ``<save_dir>/<name>/<version>``, which holds ``checkpoints/``;
  ``run_of_checkpoint`` names the run of a checkpoint path.

A stop signal's checkpoint is ``attnseg.interruption``'s, the runs of one experiment ``attnseg.experiments``', a
resumed run's ``metrics.csv`` ``attnseg.csv_history``'s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from attnseg.lightning_internals import (
    batches_done_in_epoch,
    close_saved_epoch,
    last_step_saved,
    save_last,
    saves_on_train_epoch_end,
)

TMP_PATTERN = ".*.ckpt.*.tmp"  # AtomicCheckpointIO's temporary files
# Lightning's warning about resuming mid-epoch, replaced by Checkpoint.on_load_checkpoint's plain line
MID_EPOCH_WARNING = r"You're resuming from a checkpoint that ended before the epoch ended"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on local filesystems (temp file + fsync + rename); the file gets
    the user's usual mode (``0666`` less the umask), not the temporary file's ``0600``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        if "://" in str(path):  # remote filesystems: Lightning's own transaction-based save
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:  # torch's own message names neither the file nor the disk
            Path(tmp).unlink(missing_ok=True)
            free = shutil.disk_usage(path.parent).free / 2**20
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise OSError(
                f"{path}: writing the checkpoint failed ({reason}); the disk holding {path.parent} has {free:.0f} MiB "
                "free. The checkpoints written before are kept."
            ) from error
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
    the monitored metric improved, so that a killed run resumes from its latest state. At the start of ``fit`` it
    removes the temporary files that a kill in the middle of a save left in its folder."""

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero or not self.dirpath or not Path(self.dirpath).is_dir():
            return
        stale = [p for p in Path(self.dirpath).glob(TMP_PATTERN) if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            rank_zero_info(f"removed {len(stale)} unfinished checkpoint file(s) left in {self.dirpath} by a kill")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore as Lightning does; a run resumed in its own folder then keeps writing ``last.ckpt`` there (where
        ``--ckpt_path last`` looks), even when the restored state names no last file or another one (a ``last.ckpt``
        written on a stop signal: Lightning would version the next one as ``last-v1.ckpt``)."""
        super().load_state_dict(state_dict)
        if self.save_last and self.dirpath and state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.last_model_path = str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """A run saved at the end of an epoch continues with the next epoch, training exactly the steps that a
        larger ``max_steps`` or ``max_epochs`` adds. One saved in the middle of an epoch continues that epoch with
        its remaining number of batches, drawn in a new random order (said here, in place of Lightning's warning
        about loaders that cannot resume)."""
        if close_saved_epoch(checkpoint) or trainer.state.fn != TrainerFn.FITTING:
            return
        done = batches_done_in_epoch(checkpoint)
        if done:
            rank_zero_info(
                f"resuming in the middle of epoch {checkpoint.get('epoch', '?')} after {done} of its batches: the "
                "rest of the epoch is drawn in a new random order (the loader's position is not saved)"
            )

    def on_train_end(self, trainer, pl_module) -> None:
        """The end of ``fit`` saves the final state: the steps after the last validation are not lost."""
        self._refresh_last(trainer)

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


def run_of_checkpoint(path: Path) -> Optional[str]:
    """The run directory name (W&B id or ``version_N``) of ``<runs>/<run>/checkpoints/x.ckpt``, else None."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "checkpoints" else None
