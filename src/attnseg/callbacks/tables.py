"""The per-class IoU table and the confusion matrix at every validation and test; the context IoU of a dataset with
context classes; the best validation in the run summary; TensorBoard's HParams."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from attnseg.callbacks.sink import MediaSink, data_style
from attnseg.checkpoint import run_dir
from attnseg.constants import MAX_CLASS_SERIES, MONITOR, class_series  # noqa: F401 (part of this module's interface)
from attnseg.run_names import hparams

TABLE_COLUMNS = ["class", "IoU", "accuracy", "gt_pixels", "pred_pixels", "epoch", "step"]
BEST = MONITOR  # the metric whose best validation the run summary keeps (the checkpoint's monitor)
CONTEXT = "context_IoU"  # <stage>/context_IoU: the mean IoU of the dataset's context classes


def context_classes(trainer: Trainer) -> tuple[str, ...]:
    """The classes of the datamodule's dataset decided only by distant context (``context_classes``), if any."""
    return tuple(getattr(trainer.datamodule, "context_classes", ()) or ())


def class_table(confmat: torch.Tensor, iou: torch.Tensor, names: Sequence[str]) -> list[list[Any]]:
    """Rows ``[class, IoU, accuracy, ground-truth pixels, predicted pixels]`` from a (K, K) confusion matrix
    (rows: ground truth, columns: prediction) and the per-class IoU; classes absent from both give NaN."""
    confmat = confmat.detach().double().cpu()
    gt, pred, hits = confmat.sum(1), confmat.sum(0), confmat.diag()
    acc = torch.where(gt > 0, hits / gt.clamp_min(1), torch.full_like(gt, float("nan")))
    return [[str(name), float(iou[k]), float(acc[k]), int(gt[k]), int(pred[k])] for k, name in enumerate(names)]


def run_config_file(trainer: Trainer) -> Optional[Path]:
    """The newest resolved config the CLI wrote into the run directory (``config.yaml``, or ``config.fit.N.yaml``
    of a later fit in the same directory), if any."""
    files = [p for p in run_dir(trainer).glob("config*.yaml") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None


class ClassTables(Callback):
    """``<stage>/IoU_table`` (class, IoU, accuracy, pixel counts, epoch and step: tables of several validations can
    be concatenated) and ``<stage>/confusion_matrix`` after every validation (not the sanity check) and test, from
    the metrics the task computed (``task.last_metrics``).

    The run summary keeps the best validation of a fit: on W&B ``val/mIoU`` is summarised as its maximum, and
    ``best/val_mIoU``, ``best/epoch`` and ``best/step`` say when it was reached (other loggers get these as metrics
    at that step). A dataset that names context classes (SyntheticShapes) gets ``<stage>/context_IoU``, their mean
    IoU, at every validation and test. At the start of a fit, TensorBoard gets the run's resolved config as text and
    its HParams: the run's options (``attnseg.run_names.hparams``) against ``val/mIoU``, ``best/val_mIoU`` and the
    context IoU, so that the runs of an ablation compare in one table.

    Args:
        enabled: log the table and the confusion matrix (false: neither; the best validation is kept either way).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.best: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not MediaSink.active(trainer):
            return
        sink = MediaSink(trainer)
        sink.summarise_max(BEST)
        config = None if trainer.fast_dev_run else run_config_file(trainer)
        if config is not None:
            sink.run_config(config)
            metrics = [BEST, "best/val_mIoU", *([f"val/{CONTEXT}"] if context_classes(trainer) else [])]
            sink.hparams(hparams(yaml.safe_load(config.read_text()) or {}), metrics)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "val")
        if trainer.state.fn == "fit":
            self._keep_best(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _keep_best(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = pl_module.last_metrics.get("val", {}).get(BEST)
        if value is None or not MediaSink.active(trainer):
            return
        value = float(value)
        if value != value or (self.best and value <= self.best["best/val_mIoU"]):  # NaN, or not better
            return
        sink = MediaSink(trainer)
        self.best = {"best/val_mIoU": value, "best/epoch": trainer.current_epoch, "best/step": sink.step}
        sink.summary(self.best)

    def _log(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        values = pl_module.last_metrics.get(stage, {})
        confmat, iou = values.get(f"{stage}/confmat"), values.get(f"{stage}/IoU")
        context = context_classes(trainer)
        if context and iou is not None and MediaSink.active(trainer):
            _, names, _, _ = data_style(trainer, pl_module)
            mean = sum(float(iou[names.index(c)]) for c in context) / len(context)
            MediaSink(trainer).numbers({f"{stage}/{CONTEXT}": mean})
        if not self.enabled or confmat is None or iou is None or not MediaSink.active(trainer):
            return
        _, names, _, _ = data_style(trainer, pl_module)
        sink = MediaSink(trainer)
        when = [trainer.current_epoch, sink.step]
        sink.table(stage, "IoU_table", TABLE_COLUMNS, [row + when for row in class_table(confmat, iou, names)])
        sink.confusion(stage, confmat, names)
