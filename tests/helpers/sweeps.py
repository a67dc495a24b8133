"""What the sweep tests share: tiny fit options, a sweep file built on the quickstart, and ``attnseg`` run in-process
for its exit code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attnseg.__main__ import main
from tests.helpers.cli import CONFIGS, FAST

TINY = [*FAST, "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]


def write_sweep(path: Path, body: str) -> Path:
    """A sweep file at ``path`` whose base is the quickstart (paths are relative to the sweep file)."""
    quickstart = os.path.relpath(CONFIGS / "quickstart.yaml", path.parent)
    path.write_text(f"base: [{quickstart}]\n{body}")
    return path


def main_code(*argv: str) -> int:
    """``attnseg *argv`` in this process; its exit code."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return exit_.value.code
