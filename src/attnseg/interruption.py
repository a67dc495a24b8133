"""``Interruption``: a fit told to stop (SIGTERM, SIGUSR1) or failing mid-way keeps its work in ``last.ckpt``."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from attnseg.checkpoint import run_dir
from attnseg.constants import STOP_SIGNALS
from attnseg.signals import record_stop


class Interruption(Callback):
    """Stop ``fit`` honestly when the job is told to stop, and keep the work done.

    On SIGTERM (a scheduler ending the job) or SIGUSR1 (SLURM's warning before preemption, with
    ``--signal=USR1@<seconds>``), the step in progress finishes, ``last.ckpt`` of that step is written into the
    run's own checkpoint folder (where ``--ckpt_path last`` finds it) and the process exits with status 128 +
    the signal's number (143 for SIGTERM). The signal may reach every process of the job (``scancel``): the
    DataLoader workers ignore it unless the main process sends it
    (``attnseg.signals.ignore_stop_signals``). Under SLURM with ``requeue``, SIGUSR1 first requeues the job
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
        self.received = number
        record_stop(number)

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
