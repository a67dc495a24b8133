"""One writer per run folder.

``hold(folder)`` takes an exclusive lock on ``<folder>/.writer.lock`` for the rest of the process (or until
``release_all``), so that two ``fit`` processes never write one run: a second ``--ckpt_path last`` started while the
first still trains is refused with the holder's process id, host and command. The lock is the operating system's
(``flock``): it goes with its process, however that process ends (a kill included), so a lock is never stale. Only
the process of global rank 0 locks; on systems without ``fcntl`` nothing is locked.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LOCK_FILE = ".writer.lock"
_held: dict[Path, int] = {}  # folder -> descriptor of its lock file, for this process


class RunFolderBusy(RuntimeError):
    """Another process writes this run folder."""


def hold(folder: Path) -> None:
    """Lock ``folder`` for this process (again: nothing to do); ``RunFolderBusy`` if another process holds it."""
    folder = Path(folder).resolve()
    if fcntl is None or rank_zero_only.rank != 0 or folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that has not said which yet"
        os.close(fd)
        raise RunFolderBusy(
            f"{folder}: this run is being written by another process ({holder}). A run folder has one writer: "
            "wait for that process to finish, or stop it (SIGTERM saves its last step) and resume then."
        ) from None
    command = " ".join(sys.argv[:1] + sys.argv[1:8]) + (" ..." if len(sys.argv) > 8 else "")
    os.ftruncate(fd, 0)
    os.write(
        fd,
        f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n".encode(),
    )
    _held[folder] = fd


def release_all() -> None:
    """Give up every run folder this process holds (the end of a subcommand, before a sweep's next run)."""
    while _held:
        _, fd = _held.popitem()
        os.close(fd)
