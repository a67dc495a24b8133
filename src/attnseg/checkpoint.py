"""Checkpoints that survive a kill, and finding the one to resume from.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same directory, flushes
  it to disk and renames it over the target: a process killed at any moment leaves either the old
  file or the new one, never a truncated one.
- ``Checkpoint`` keeps the best checkpoint by a monitored metric and refreshes ``last.ckpt`` at every
  save point (Lightning's ``ModelCheckpoint`` refreshes it only when the top-k changed, so a run whose
  metric stopped improving would resume from an old step) and at the end of ``fit``.
- ``run_dir`` is a run's own directory, ``<save_dir>/<name>/<version>``, which holds ``checkpoints/``.
- ``Interruption`` turns a scheduler's SIGTERM, SLURM's SIGUSR1 (preemption warning) and an error in the middle
  of ``fit`` into a ``last.ckpt`` of the current step in the run's own folder and a non-zero exit status.
- ``experiment_identity`` is what a run trains (head, encoder, losses, data and its augmentation, seed), not
  how (optimiser settings, speed knobs, loader options, where the data lies); ``last_checkpoints`` finds the runs
  under the logger's directory whose saved ``config.yaml`` is the same experiment, so that ``--ckpt_path last``
  continues the run of this experiment and no other (``experiment_fingerprint`` names it in messages).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from attnseg.constants import STOP_SIGNALS
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


class Interruption(Callback):
    """Stop ``fit`` honestly when the job is told to stop, and keep the work done.

    On SIGTERM (a scheduler ending the job) or SIGUSR1 (SLURM's warning before preemption, with
    ``--signal=USR1@<seconds>``), the step in progress finishes, ``last.ckpt`` of that step is written into the
    run's own checkpoint folder (where ``--ckpt_path last`` finds it) and the process exits with status 128 +
    the signal's number (143 for SIGTERM). The signal may reach every process of the job (``scancel``): the
    DataLoader workers ignore it unless the main process sends it
    (``attnseg.data.datamodule.ignore_stop_signals``). Under SLURM with ``requeue``, SIGUSR1 first requeues the job
    (``scontrol requeue $SLURM_JOB_ID``), so the next start continues the run. An error raised in the middle of
    ``fit`` (a corrupt image found mid-epoch, an out-of-memory) also writes ``last.ckpt`` of the last completed
    step before it propagates; a non-finite model is never written (``SegmentationTask.on_save_checkpoint``).

    Args:
        requeue: under SLURM, requeue the job on SIGUSR1.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._receive)

    def _receive(self, number: int, frame) -> None:
        global _stop_received
        self.received = _stop_received = number

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._stop_if_told(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        """A long validation does not hold the stop up: the training step before it is saved and the validation,
        unfinished, is dropped (the resumed run validates at its next validation point)."""
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._stop_if_told(trainer)

    def _stop_if_told(self, trainer) -> None:
        if self.received is None:
            return
        number, self.received = self.received, None
        name = signal.Signals(number).name
        path = self._save(trainer)
        requeued = ""
        if number == getattr(signal, "SIGUSR1", None) and self.requeue and os.environ.get("SLURM_JOB_ID"):
            job = os.environ["SLURM_JOB_ID"]
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            requeued = f"; job {job} requeued" if done.returncode == 0 else f"; requeue failed: {done.stderr.strip()}"
        print(f"{name} received: stopped at step {trainer.global_step}, saved {path}{requeued}", flush=True)
        raise SystemExit(128 + number)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, (SystemExit, FloatingPointError)) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.sanity_checking or trainer.global_step == 0:
            return
        try:
            path = self._save(trainer)
        except Exception as error:  # noqa: BLE001 (the original error matters more)
            rank_zero_warn(f"{type(exception).__name__} during fit; saving last.ckpt failed too: {error}")
            return
        rank_zero_warn(f"{type(exception).__name__} during fit: saved step {trainer.global_step} to {path}")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for number, handler in self._previous.items():
            if signal.getsignal(number) == self._receive:  # still ours: put back what was there
                signal.signal(number, handler)
        self._previous = {}

    @staticmethod
    def _save(trainer) -> Path:
        callback = trainer.checkpoint_callback
        has_folder = callback is not None and callback.dirpath
        folder = Path(callback.dirpath) if has_folder else run_dir(trainer) / "checkpoints"
        path = folder / "last.ckpt"
        if has_folder and callback.save_last:  # the callback's own last from now on: a save that follows in this
            callback.last_model_path = str(path)  # process (the epoch's end) overwrites it, not last-v1.ckpt beside it
        trainer.save_checkpoint(path)
        return path


_stop_received: Optional[int] = None  # the last stop signal an Interruption received in this process


def stop_received() -> Optional[int]:
    """The stop signal (its number) received during a ``fit`` of this process since ``clear_stop``, if any: a
    sweep stops there, also when the run ended in an error first (a loader worker killed by the same signal)."""
    return _stop_received


def clear_stop() -> None:
    global _stop_received
    _stop_received = None


def run_dir(trainer: Trainer) -> Path:
    """The run's own directory, ``<save_dir>/<name>/<version>``: where its checkpoints and config go."""
    logger = trainer.logger
    if logger is None or trainer.fast_dev_run:
        return Path(trainer.default_root_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


# Options that do not change what an experiment is: a run resumed with other values is the same experiment.
NOT_IDENTITY = {
    "model": {"optimizer", "lr", "momentum", "weight_decay", "no_decay_norm_bias", "head_lr_mult", "poly_power",
              "min_lr", "warmup_iters", "warmup_ratio", "inference", "nonfinite_loss", "divergence_factor",
              "channels_last", "compile"},
    "data": {"root", "num_workers", "pin_memory", "persistent_workers", "cache_decoded", "check_before_fit",
             "val_batch_size", "val_split", "test_split", "predict_dir"},
}  # fmt: skip


def flatten(value, prefix: str) -> dict:
    """A nested config as ``{"prefix.key.subkey": leaf}``; a leaf is any value but a non-empty dict (None and ``{}``
    included: an unset option is a value like any other)."""
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def _flat(value, prefix: str, out: dict) -> dict:
    """``flatten`` into ``out`` with each leaf as its JSON text, for comparing and hashing."""
    out.update({k: json.dumps(v, sort_keys=True, default=str) for k, v in flatten(value, prefix).items()})
    return out


def experiment_identity(config: dict) -> dict[str, str]:
    """What a resolved config (a subcommand's, as in a run's ``config.yaml``) trains, flattened: its model and data
    options without ``NOT_IDENTITY`` and the encoder's weights file, and the seed."""
    items: dict[str, str] = {}
    for section in ("model", "data"):
        for key, value in (config.get(section) or {}).items():
            if key not in NOT_IDENTITY[section]:
                _flat(value, f"{section}.{key}", items)
    items.pop("model.encoder.pretrained", None)
    return _flat(config.get("seed_everything"), "seed", items)


def experiment_fingerprint(config: dict) -> str:
    """12 hex digits naming the experiment of a resolved config (``experiment_identity``), for messages."""
    text = json.dumps(experiment_identity(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_UNKNOWN = object()


def _resolved(items: dict[str, str], defaults: dict[str, str], key: str):
    """The value a config ran with for ``key``: its own, else (an option it predates) the default; another
    structure there (a dict where the other config has a value, or the reverse) is a difference."""
    if key in items:
        return items[key]
    if any(other.startswith(key + ".") or key.startswith(other + ".") for other in items):
        return "<another structure>"
    if key not in defaults and any(key.startswith(other + ".") for other in defaults):
        return "<another structure>"  # the default is a value (None) where the other config has a dict
    return defaults.get(key, _UNKNOWN)


def same_experiment(saved: dict, config: dict, defaults: Optional[dict] = None) -> bool:
    """Whether a run's saved config and ``config`` describe the same experiment: every identity option has the
    same resolved value, unset (None) values included. An option only one of them has (added by a later version
    of attnseg) counts with its value in ``defaults`` (the parser's defaults, resolved like a config): a run saved
    before the option existed ran with its default. Without a known default it is not compared."""
    a, b = experiment_identity(saved), experiment_identity(config)
    d = experiment_identity(defaults) if defaults else {}
    for key in a.keys() | b.keys():
        va, vb = _resolved(a, d, key), _resolved(b, d, key)
        if va is not _UNKNOWN and vb is not _UNKNOWN and va != vb:
            return False
    return True


def _run_config(run: Path) -> Optional[dict]:
    """The run directory's ``config.yaml`` (None without a readable one)."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def last_checkpoints(
    runs_root: Path, config: dict, defaults: Optional[dict] = None
) -> tuple[list[Path], int, list[Path]]:
    """The ``last.ckpt`` of every run under ``runs_root`` of the same experiment as ``config`` (newest first;
    ``same_experiment`` with ``defaults``), how many runs with a ``last.ckpt`` belong to other experiments, and the
    run folders with a ``last.ckpt`` but no readable ``config.yaml`` (which cannot be compared)."""
    mine, others, unreadable = [], 0, []
    for last in runs_root.glob("*/checkpoints/last.ckpt"):
        if not last.is_file():
            continue
        saved = _run_config(last.parent.parent)
        if saved is None:
            unreadable.append(last.parent.parent)
        elif same_experiment(saved, config, defaults):
            mine.append(last)
        else:
            others += 1
    return sorted(mine, key=lambda p: p.stat().st_mtime, reverse=True), others, sorted(unreadable)


def run_of_checkpoint(path: Path) -> Optional[str]:
    """The run directory name (W&B id or ``version_N``) of ``<runs>/<run>/checkpoints/x.ckpt``, else None."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "checkpoints" else None


def keep_csv_history(trainer: Trainer, before_step: int) -> None:
    """A resumed fit continues its CSV run in the same folder, where Lightning's CSV writer deletes ``metrics.csv``
    when it opens it. Open the writer now and put the file back as it was; once the checkpoint has loaded (the
    start of training), ``_TrimCsvHistory`` drops the rows logged at or after ``before_step`` (the checkpoint's
    step: the resumed run logs those steps again). A resume that fails to load keeps every row."""
    from lightning.pytorch.loggers import CSVLogger

    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        with warnings.catch_warnings():  # Lightning warns that the file will be deleted: it is written back
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            writer = logger.experiment  # opening it deletes metrics.csv: the rows are in memory, written back here
        _write_rows(path, header, rows)
        writer.metrics_keys = header  # the columns it appends under (new ones make it rewrite the file)
        trainer.callbacks.append(_TrimCsvHistory(path, before_step, len(rows)))


def _write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=header)
        table.writeheader()
        table.writerows(rows)
    os.replace(temporary, path)


class _TrimCsvHistory(Callback):
    """At the start of a resumed fit's training (the checkpoint loaded), drop the earlier run's rows logged at or
    after the checkpoint's step; rows this fit appended already are kept."""

    def __init__(self, path: Path, before_step: int, earlier_rows: int) -> None:
        self.path, self.before_step, self.earlier_rows = path, before_step, earlier_rows

    def on_train_start(self, trainer, pl_module) -> None:
        if self.earlier_rows is None or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        earlier, appended = rows[: self.earlier_rows], rows[self.earlier_rows :]
        kept = [row for row in earlier if row.get("step") and float(row["step"]) < self.before_step]
        _write_rows(self.path, header, kept + appended)
        self.earlier_rows = None  # once
