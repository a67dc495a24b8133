"""Shared fixtures. Tests run offline, on the CPU, in a fresh working directory each; what they share beyond
fixtures is the ``tests.helpers`` package."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Every test runs in its own empty directory (runs/, config.yaml... land there)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yield
