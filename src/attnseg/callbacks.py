"""What a run shows besides the task's scalars: prediction overlays, a per-class IoU table and a confusion
matrix at each validation, model complexity and throughput; plus the step-wise learning rate.

W&B gets native media (``wandb.Image`` with class-labelled masks, ``wandb.Table``, a confusion-matrix chart);
every other logger (CSV...) gets the same content as files under ``<run dir>/media/`` (PNG overlays and confusion
matrix, CSV tables). Numbers (parameters, GFLOPs, images/s) go to every logger through ``log_metrics``, so they
land in the W&B run summary and in ``metrics.csv``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor as _LearningRateMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger

from attnseg.checkpoint import run_dir
from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from attnseg.lightning_internals import logging_step
from attnseg.profiling import count_flops, count_parameters
from attnseg.visualize import confusion_figure, default_palette, denormalize, figure_to_array, overlay_figure

MAX_CHART_CLASSES = 100  # W&B tables hold up to 10,000 rows: a confusion chart of up to 100 x 100 cells


def class_table(confmat: torch.Tensor, iou: torch.Tensor, names: Sequence[str]) -> list[list[Any]]:
    """Rows ``[class, IoU, accuracy, ground-truth pixels, predicted pixels]`` from a (K, K) confusion matrix
    (rows: ground truth, columns: prediction) and the per-class IoU; classes absent from both give NaN."""
    confmat = confmat.detach().double().cpu()
    gt, pred, hits = confmat.sum(1), confmat.sum(0), confmat.diag()
    acc = torch.where(gt > 0, hits / gt.clamp_min(1), torch.full_like(gt, float("nan")))
    return [
        [str(name), float(iou[k]), float(acc[k]), int(gt[k]), int(pred[k])] for k, name in enumerate(names)
    ]


TABLE_COLUMNS = ["class", "IoU", "accuracy", "gt_pixels", "pred_pixels"]


def _images(batch: Any) -> torch.Tensor:
    """The images (B, 3, H, W) of an ``(images, masks)`` or ``{"image": ...}`` batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch["image"]


def _sync(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ------------------------------------------------------------------------------------------------ callbacks


class LearningRateMonitor(_LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (``lr-<optimizer>/pg<N>`` every logged step by default) that steps aside
    when the trainer has no logger, so ``--trainer.logger=false`` keeps working.

    Args:
        logging_interval: ``step``, ``epoch`` or null (the scheduler's interval).
        log_momentum: also log the momentum (SGD) or beta1 (Adam).
        log_weight_decay: also log the weight decay.
    """

    def __init__(
        self,
        logging_interval: Optional[Literal["step", "epoch"]] = "step",
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        super().__init__(logging_interval, log_momentum, log_weight_decay)

    def on_train_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class Dashboard(Callback):
    """Media, tables and measurements for the run's dashboard (W&B) or its files (any other logger).

    - each validation (not the sanity check): ``val/predictions`` overlays of the first ``num_images`` validation
      images (image, ground truth, prediction, with class names and the dataset's colours), ``val/IoU_table``
      (class, IoU, accuracy, pixel counts) and ``val/confusion_matrix``; each test: the table and matrix.
    - once per fit: ``model/params``, ``model/params_trainable`` and ``model/GFLOPs`` (one forward at the first
      training batch's input size, batch 1).
    - each epoch: ``perf/train_images_per_s`` (wall clock over the epoch's training steps, data loading included,
      validation excluded, without the first ``warmup_steps``) and ``perf/val_images_per_s`` (validation steps in
      the configured inference mode, without the first ``warmup_steps`` of each validation).

    Nothing is computed without a logger or under ``fast_dev_run``. The sweep reads the last values from
    ``summary``.

    Args:
        num_images: validation images shown each validation; 0 disables the overlays.
        tables: log the per-class IoU table and confusion matrix.
        complexity: log parameters and GFLOPs.
        throughput: log training and inference images/s.
        warmup_steps: steps left out of each throughput measurement (kept below the number of steps available).
        alpha: opacity of the prediction drawn over the image.
    """

    def __init__(
        self,
        num_images: int = 4,
        tables: bool = True,
        complexity: bool = True,
        throughput: bool = True,
        warmup_steps: int = 5,
        alpha: float = 0.5,
    ) -> None:
        if num_images < 0 or warmup_steps < 0:
            raise ValueError(f"Dashboard: num_images={num_images}, warmup_steps={warmup_steps}: expected >= 0")
        self.num_images = num_images
        self.tables = tables
        self.complexity = complexity
        self.throughput = throughput
        self.warmup_steps = warmup_steps
        self.alpha = alpha
        self.summary: dict[str, float] = {}
        self._complexity_done = False
        self._samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._train = self._val = None

    # ------------------------------------------------------------------------------ plumbing
    @staticmethod
    def _loggers(trainer: Trainer) -> list[Logger]:
        return [lg for lg in trainer.loggers if not isinstance(lg, DummyLogger)]

    def _active(self, trainer: Trainer) -> bool:
        return trainer.is_global_zero and not trainer.sanity_checking and bool(self._loggers(trainer))

    def _log_numbers(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.summary.update(metrics)
        for logger in self._loggers(trainer):
            logger.log_metrics(metrics, step=logging_step(trainer))

    @staticmethod
    def _media_dir(trainer: Trainer, logger: Logger) -> Path:
        directory = getattr(logger, "log_dir", None)
        return Path(directory if directory else run_dir(trainer)) / "media"

    @staticmethod
    def _data_style(trainer: Trainer, pl_module: LightningModule) -> tuple[list, list[str], Sequence, Sequence]:
        """Palette, class names, mean and std from the datamodule (with generic fallbacks)."""
        dm = trainer.datamodule
        num_classes = getattr(pl_module, "num_classes", None) or len(getattr(dm, "class_names", [])) or 256
        names = list(getattr(pl_module, "class_names", None) or getattr(dm, "class_names", None) or [])
        names = names or [str(k) for k in range(num_classes)]
        palette = list(getattr(dm, "palette", None) or default_palette(len(names)))
        hparams = getattr(dm, "hparams", {})
        mean, std = hparams.get("mean", IMAGENET_MEAN), hparams.get("std", IMAGENET_STD)
        return palette, names, mean, std

    # ------------------------------------------------------------------------------ training
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._complexity_done = False

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = trainer.num_training_batches
        skip = min(self.warmup_steps, max(int(steps) - 1, 0)) if steps != float("inf") else self.warmup_steps
        self._train = {"skip": skip, "images": 0, "seconds": 0.0, "last": _sync(pl_module.device)}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.complexity and not self._complexity_done and self._active(trainer):
            self._complexity_done = True
            images = _images(batch)
            total, trainable = count_parameters(pl_module)
            flops = count_flops(pl_module, images.shape[-2:], pl_module.device)
            if self._train is not None:  # the measurement is not a training step
                self._train["last"] = _sync(pl_module.device)
            self._log_numbers(
                trainer, {"model/params": total, "model/params_trainable": trainable, "model/GFLOPs": flops / 1e9}
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.throughput or self._train is None:
            return
        now = _sync(pl_module.device)
        if batch_idx >= self._train["skip"]:
            self._train["images"] += _images(batch).shape[0] * trainer.world_size
            self._train["seconds"] += now - self._train["last"]
        self._train["last"] = now

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stats, self._train = self._train, None
        if self.throughput and stats and stats["seconds"] > 0 and self._active(trainer):
            self._log_numbers(trainer, {"perf/train_images_per_s": stats["images"] / stats["seconds"]})

    # ------------------------------------------------------------------------------ validation
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._samples = []
        steps = sum(trainer.num_val_batches) if trainer.num_val_batches else 0
        self._val = {"skip": min(self.warmup_steps, max(int(steps) - 1, 0)), "images": 0, "seconds": 0.0, "seen": 0}

    def on_validation_batch_start(
        self, trainer, pl_module, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.throughput and self._val is not None:
            self._val["start"] = _sync(pl_module.device)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._val is not None and "start" in self._val:
            seconds = _sync(pl_module.device) - self._val.pop("start")
            if self._val["seen"] >= self._val["skip"]:
                self._val["images"] += _images(batch).shape[0] * trainer.world_size
                self._val["seconds"] += seconds
            self._val["seen"] += 1
        wanted = self.num_images - len(self._samples)
        if wanted > 0 and dataloader_idx == 0 and self._active(trainer) and hasattr(pl_module, "predict_logits"):
            images = _images(batch)[:wanted]
            masks = (batch[1] if isinstance(batch, (tuple, list)) else batch["mask"])[:wanted]
            preds = pl_module.predict_logits(images).argmax(dim=1)
            _, _, mean, std = self._data_style(trainer, pl_module)
            for image, mask, pred in zip(denormalize(images, mean, std), masks.cpu().numpy(), preds.cpu().numpy()):
                self._samples.append((image, mask, pred))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and self._train is not None:  # validation time is not training time
            self._train["last"] = _sync(pl_module.device)
        stats, self._val = self._val, None
        if not self._active(trainer):
            return
        if self.throughput and stats and stats["seconds"] > 0:
            self._log_numbers(trainer, {"perf/val_images_per_s": stats["images"] / stats["seconds"]})
        if self._samples:
            self._log_overlays(trainer, pl_module, "val")
            self._samples = []
        if self.tables:
            self._log_tables(trainer, pl_module, "val", getattr(pl_module, "last_val", None))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.tables and self._active(trainer):
            self._log_tables(trainer, pl_module, "test", getattr(pl_module, "last_test", None))

    # ------------------------------------------------------------------------------ media
    def _log_overlays(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        palette, names, _, _ = self._data_style(trainer, pl_module)
        ignore = pl_module.ignore_index
        images, targets, preds = (list(x) for x in zip(*self._samples))  # images may differ in size
        step, key = logging_step(trainer), f"{stage}/predictions"
        for logger in self._loggers(trainer):
            if isinstance(logger, WandbLogger):
                labels = {k: name for k, name in enumerate(names)}
                dtype = np.uint8 if len(names) < 256 and ignore < 256 else np.int32
                masks = [
                    {
                        "ground_truth": {"mask_data": t.astype(dtype), "class_labels": {**labels, ignore: "ignore"}},
                        "prediction": {"mask_data": p.astype(dtype), "class_labels": labels},
                    }
                    for t, p in zip(targets, preds)
                ]
                captions = [f"{stage} image {i}, step {step}" for i in range(len(images))]
                logger.log_image(key, images, step=step, masks=masks, caption=captions)
            else:
                path = self._media_dir(trainer, logger) / stage / f"predictions_step{step:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                title = f"{stage} predictions, epoch {trainer.current_epoch}, step {step}"
                overlay_figure(images, targets, preds, palette, names, ignore, title).savefig(path, dpi=100)

    def _log_tables(self, trainer: Trainer, pl_module: LightningModule, stage: str, values: Optional[dict]) -> None:
        confmat = (values or {}).get(f"{stage}/confmat")
        iou = (values or {}).get(f"{stage}/IoU")
        if confmat is None or iou is None:
            return
        _, names, _, _ = self._data_style(trainer, pl_module)
        rows = class_table(confmat, iou, names)
        step = logging_step(trainer)
        for logger in self._loggers(trainer):
            if isinstance(logger, WandbLogger):
                import wandb

                logger.log_table(f"{stage}/IoU_table", columns=TABLE_COLUMNS, data=rows, step=step)
                title = f"{stage} confusion matrix (step {step})"
                if len(names) <= MAX_CHART_CLASSES:  # an interactive chart (one table row per cell)
                    counts = confmat.detach().cpu().tolist()
                    cells = [[names[i], names[j], counts[i][j]] for i in range(len(names)) for j in range(len(names))]
                    chart = wandb.plot_table(
                        "wandb/confusion_matrix/v1",
                        wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
                        {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                        {"title": title},
                    )
                else:  # beyond W&B's table size: the rendered matrix
                    chart = wandb.Image(figure_to_array(confusion_figure(confmat, names, title)))
                logger.log_metrics({f"{stage}/confusion_matrix": chart}, step=step)
            else:
                directory = self._media_dir(trainer, logger) / stage
                directory.mkdir(parents=True, exist_ok=True)
                with open(directory / f"IoU_table_step{step:06d}.csv", "w", newline="") as f:
                    csv.writer(f).writerows([TABLE_COLUMNS, *rows])
                title = f"{stage} confusion matrix (% of each ground-truth class), step {step}"
                fig = confusion_figure(confmat, names, title)
                fig.savefig(directory / f"confusion_matrix_step{step:06d}.png", dpi=100)
