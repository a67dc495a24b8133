"""Throughput in the run summary: training and validation images per second."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from attnseg.callbacks.sink import MediaSink, batch_images


def _sync(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Throughput(Callback):
    """Each epoch: ``perf/train_images_per_s`` (wall clock from one training step's end to the next, data loading
    included, validation and the other callbacks' measurements at the first step excluded, without the first
    ``warmup_steps``) and ``perf/val_images_per_s`` (validation steps in the configured inference mode, without the
    first ``warmup_steps`` of each validation). Kept in ``summary``.

    Args:
        enabled: measure and log (false: nothing).
        warmup_steps: steps left out of each measurement (kept below the number of steps available).
    """

    def __init__(self, enabled: bool = True, warmup_steps: int = 5) -> None:
        if warmup_steps < 0:
            raise ValueError(f"Throughput: warmup_steps={warmup_steps}: expected >= 0")
        self.enabled = enabled
        self.warmup_steps = warmup_steps
        self.summary: dict[str, float] = {}
        self._train: Optional[dict] = None
        self._val: Optional[dict] = None

    def _skip(self, steps: Any) -> int:
        return min(self.warmup_steps, max(int(steps) - 1, 0)) if steps != float("inf") else self.warmup_steps

    def _log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.summary.update(metrics)
        MediaSink(trainer).numbers(metrics)

    # training
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train = {"skip": self._skip(trainer.num_training_batches), "images": 0, "seconds": 0.0, "last": None}

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._train is not None and self._train["last"] is None:  # first step: after the other callbacks' work
            self._train["last"] = _sync(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.enabled or self._train is None:
            return
        now = _sync(pl_module.device)
        if batch_idx >= self._train["skip"]:
            self._train["images"] += batch_images(batch).shape[0] * trainer.world_size
            self._train["seconds"] += now - self._train["last"]
        self._train["last"] = now

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stats, self._train = self._train, None
        if self.enabled and stats and stats["seconds"] > 0 and MediaSink.active(trainer):
            self._log(trainer, {"perf/train_images_per_s": stats["images"] / stats["seconds"]})

    # validation
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = sum(trainer.num_val_batches) if trainer.num_val_batches else 0
        self._val = {"skip": self._skip(max(steps, 1)), "images": 0, "seconds": 0.0, "seen": 0}

    def on_validation_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int, dataloader_idx: int = 0):
        if self.enabled and self._val is not None:
            self._val["start"] = _sync(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if self._val is not None and "start" in self._val:
            seconds = _sync(pl_module.device) - self._val.pop("start")
            if self._val["seen"] >= self._val["skip"]:
                self._val["images"] += batch_images(batch).shape[0] * trainer.world_size
                self._val["seconds"] += seconds
            self._val["seen"] += 1

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and self._train is not None and self._train["last"] is not None:
            self._train["last"] = _sync(pl_module.device)  # validation time is not training time
        stats, self._val = self._val, None
        if self.enabled and stats and stats["seconds"] > 0 and MediaSink.active(trainer):
            self._log(trainer, {"perf/val_images_per_s": stats["images"] / stats["seconds"]})
