"""The stop signals of a job (``constants.STOP_SIGNALS``: a scheduler's SIGTERM, SLURM's SIGUSR1), in one place: the
main process records the one it received (``Interruption`` saves and stops the fit; a sweep stops after the run,
``stop_received``), and DataLoader workers leave them to the main process (``ignore_stop_signals``)."""

from __future__ import annotations

import os
import signal
import threading
from functools import partial
from typing import Optional

from attnseg.constants import STOP_SIGNALS

_stop_received: Optional[int] = None  # the last stop signal an Interruption received in this process


def record_stop(number: int) -> None:
    """Note that this process received stop signal ``number`` (``Interruption``'s handler)."""
    global _stop_received
    _stop_received = number


def stop_received() -> Optional[int]:
    """The stop signal (its number) received during a ``fit`` of this process since ``clear_stop``, if any: a
    sweep stops there, also when the run ended in an error first (a loader worker killed by the same signal)."""
    return _stop_received


def clear_stop() -> None:
    global _stop_received
    _stop_received = None


def ignore_stop_signals(worker_id: int, main_process: Optional[int] = None) -> None:
    """DataLoader workers leave the stop signals sent to the whole job to the main process.

    A job system that signals every process of the job (SLURM's ``scancel``, a ``kill`` of the process group) would
    otherwise kill the workers first; the main process then fails on the dead workers before it can write
    ``last.ckpt``. Here SIGTERM and SIGUSR1 are blocked in the worker and a thread takes them: one sent by the main
    process (the loader or Python's exit shutting its workers down) ends the worker at once, as torch's own handler
    does; one sent by anyone else is ignored, so ``attnseg.interruption.Interruption`` finishes the step, saves and
    shuts the workers down. A worker whose main process is gone still exits by itself (DataLoader's watchdog).
    Platforms without ``signal.sigwaitinfo`` (macOS, Windows) keep torch's handling. ``main_process`` is the pid
    of the process that made the loader (``SegDataModule`` binds it): under the fork server start method the
    worker's parent is the server, not the main process.
    """
    if not hasattr(signal, "sigwaitinfo"):
        return
    numbers = {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}
    signal.pthread_sigmask(signal.SIG_BLOCK, numbers)  # threads started later by this one inherit the mask
    owners = {os.getppid()} | ({main_process} if main_process else set())
    threading.Thread(target=_take_stop_signals, args=(numbers, owners), name="stop-signals", daemon=True).start()


def stop_signal_guard() -> partial:
    """The loaders' ``worker_init_fn``: ``ignore_stop_signals`` bound to this (the main) process's pid."""
    return partial(ignore_stop_signals, main_process=os.getpid())


def _take_stop_signals(numbers: set, owners: set) -> None:
    while True:
        if signal.sigwaitinfo(numbers).si_pid in owners:
            os._exit(0)
