"""Shared fixtures. Tests run offline, on the CPU, in a fresh working directory each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"
SHARED = REPO.parent / "shared"

# Small and fast: the quickstart data at 32x32, 8 images, no workers, no logger output.
FAST = [
    "--data.dataset_args.image_size=32",
    "--data.dataset_args.num_samples=8",
    "--data.batch_size=4",
    "--data.val_batch_size=4",
    "--data.num_workers=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Every test runs in its own empty directory (runs/, config.yaml... land there)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yield


def run_cli(*args: str):
    """Run ``attnseg <args>`` in-process; returns the LightningCLI object."""
    from attnseg.cli import AttnSegCLI

    return AttnSegCLI(args=[str(a) for a in args])
