"""The per-class IoU table and the confusion matrix, at every validation and test."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from attnseg.callbacks.sink import MediaSink, data_style

TABLE_COLUMNS = ["class", "IoU", "accuracy", "gt_pixels", "pred_pixels"]


def class_table(confmat: torch.Tensor, iou: torch.Tensor, names: Sequence[str]) -> list[list[Any]]:
    """Rows ``[class, IoU, accuracy, ground-truth pixels, predicted pixels]`` from a (K, K) confusion matrix
    (rows: ground truth, columns: prediction) and the per-class IoU; classes absent from both give NaN."""
    confmat = confmat.detach().double().cpu()
    gt, pred, hits = confmat.sum(1), confmat.sum(0), confmat.diag()
    acc = torch.where(gt > 0, hits / gt.clamp_min(1), torch.full_like(gt, float("nan")))
    return [[str(name), float(iou[k]), float(acc[k]), int(gt[k]), int(pred[k])] for k, name in enumerate(names)]


class ClassTables(Callback):
    """``<stage>/IoU_table`` (class, IoU, accuracy, pixel counts) and ``<stage>/confusion_matrix`` after every
    validation (not the sanity check) and test, from the metrics the task computed (``task.last_metrics``).

    Args:
        enabled: log them (false: nothing).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        values = pl_module.last_metrics.get(stage, {})
        confmat, iou = values.get(f"{stage}/confmat"), values.get(f"{stage}/IoU")
        if not self.enabled or confmat is None or iou is None or not MediaSink.active(trainer):
            return
        _, names, _, _ = data_style(trainer, pl_module)
        sink = MediaSink(trainer)
        sink.table(stage, "IoU_table", TABLE_COLUMNS, class_table(confmat, iou, names))
        sink.confusion(stage, confmat, names)
