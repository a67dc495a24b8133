"""Paths of the repository and the ``attnseg`` CLI run in-process, with small and fast settings."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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


def run_cli(*args: str):
    """Run ``attnseg <args>`` in-process; returns the LightningCLI object."""
    from attnseg.cli import AttnSegCLI

    return AttnSegCLI(args=[str(a) for a in args])
