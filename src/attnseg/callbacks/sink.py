"""MediaSink: the one place that knows where the dashboard callbacks' output goes.

W&B gets native media (``wandb.Image`` with class-labelled masks, ``wandb.Table``, a confusion-matrix chart) and a
run summary made for comparing runs (``val/mIoU`` summarised as its maximum, the best validation's epoch and step);
TensorBoard gets the same content as images (overlays, confusion matrix) and text (tables as Markdown, the run's
resolved config); every other logger (CSV...) gets files under ``<run dir>/media/<stage>/`` (PNG overlays and
confusion matrix, CSV tables). Numbers (parameters, GFLOPs, images/s) go to every logger through ``log_metrics``, so
they land in the W&B run summary, in TensorBoard's scalars and in ``metrics.csv``. Everything is logged at
Lightning's logging step, so media line up with the scalars of the same validation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger

from attnseg.checkpoint import run_dir
from attnseg.constants import IMAGENET_MEAN, IMAGENET_STD
from attnseg.lightning_internals import logging_step
from attnseg.visualize import confusion_figure, default_palette, figure_to_array, overlay_figure

MAX_CHART_CLASSES = 100  # W&B tables hold up to 10,000 rows: a confusion chart of up to 100 x 100 cells
WANDB_STEP = "trainer/global_step"  # the x-axis WandbLogger gives every metric


def batch_images(batch: Any) -> torch.Tensor:
    """The images (B, 3, H, W) of an ``(images, masks)`` or ``{"image": ...}`` batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch["image"]


def loggers(trainer: Trainer) -> list[Logger]:
    return [lg for lg in trainer.loggers if not isinstance(lg, DummyLogger)]


def data_style(trainer: Trainer, pl_module: LightningModule) -> tuple[list, list[str], Sequence, Sequence]:
    """Palette, class names, mean and std from the datamodule (with generic fallbacks)."""
    dm = trainer.datamodule
    num_classes = getattr(pl_module, "num_classes", None) or len(getattr(dm, "class_names", [])) or 256
    names = list(getattr(pl_module, "class_names", None) or getattr(dm, "class_names", None) or [])
    names = names or [str(k) for k in range(num_classes)]
    palette = list(getattr(dm, "palette", None) or default_palette(len(names)))
    return palette, names, getattr(dm, "mean", None) or IMAGENET_MEAN, getattr(dm, "std", None) or IMAGENET_STD


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (floats to 4 decimals), as TensorBoard's text dashboard shows it."""

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = [columns, ["---"] * len(columns), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


class MediaSink:
    """Writes one trainer's dashboard output to each of its loggers (see the module's docstring)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.loggers = loggers(trainer)
        self.step = logging_step(trainer)

    @staticmethod
    def active(trainer: Trainer) -> bool:
        """Whether anything should be measured or drawn now: rank 0, a real logger, not the sanity check."""
        return trainer.is_global_zero and not trainer.sanity_checking and bool(loggers(trainer))

    def numbers(self, metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.step)

    def summary(self, values: dict[str, float]) -> None:
        """Numbers about the whole run (the best validation): the W&B run summary (no chart), a metric of the current
        step elsewhere."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(values)
            else:
                logger.log_metrics(values, step=self.step)

    def summarise_max(self, key: str) -> None:
        """The W&B run summary of the metric ``key`` is its maximum over the run, not its last value (the runs table
        compares runs by their best); other loggers keep every value anyway."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.define_metric(key, step_metric=WANDB_STEP, summary="max")

    def run_config(self, path: Path) -> None:
        """The run's resolved config (a YAML file) as text on TensorBoard. W&B has it already (the CLI writes it into
        the run's config) and the file loggers' run directory holds the file itself."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                text = f"`{path.name}`\n\n```yaml\n{path.read_text().rstrip()}\n```"
                logger.experiment.add_text("config", text, global_step=self.step)

    def hparams(self, params: dict[str, Any], metrics: Sequence[str]) -> None:
        """TensorBoard's HParams tab: this run's options and the metrics to compare runs by (the values are the
        scalars logged under those tags). Written once per run folder: a resumed fit's folder has it already.
        W&B and the file loggers have the whole config already."""
        from torch.utils.tensorboard.summary import hparams

        for logger in self.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment.file_writer
            if len(list(Path(logger.log_dir).glob("events.out.tfevents.*"))) > 1:  # an earlier fit's session
                continue
            for summary in hparams(params, dict.fromkeys(metrics, 0.0)):
                writer.add_summary(summary)

    def _image(self, logger: TensorBoardLogger, key: str, figure: Any) -> None:
        logger.experiment.add_image(key, figure_to_array(figure), global_step=self.step, dataformats="HWC")

    def _media_dir(self, logger: Logger, stage: str) -> Path:
        directory = getattr(logger, "log_dir", None)
        path = Path(directory if directory else run_dir(self.trainer)) / "media" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def overlays(
        self,
        stage: str,
        images: list[np.ndarray],
        targets: list[np.ndarray],
        preds: list[np.ndarray],
        palette: Sequence,
        names: Sequence[str],
        ignore_index: int,
        alpha: float = 0.5,
    ) -> None:
        """Images (H, W, 3) uint8 with their label and prediction maps (H, W), each image of its own size."""
        key = f"{stage}/predictions"
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                labels = {k: name for k, name in enumerate(names)}
                with_void = {**labels, ignore_index: "ignore"}
                dtype = np.uint8 if len(names) < 256 and ignore_index < 256 else np.int32
                masks = [
                    {
                        "ground_truth": {"mask_data": t.astype(dtype), "class_labels": with_void},
                        "prediction": {"mask_data": p.astype(dtype), "class_labels": labels},
                    }
                    for t, p in zip(targets, preds)
                ]
                captions = [f"{stage} image {i}, step {self.step}" for i in range(len(images))]
                logger.log_image(key, images, step=self.step, masks=masks, caption=captions)
                continue
            title = f"{stage} predictions, epoch {self.trainer.current_epoch}, step {self.step}"
            figure = overlay_figure(images, targets, preds, palette, names, ignore_index, title, alpha)
            if isinstance(logger, TensorBoardLogger):
                self._image(logger, key, figure)
            else:
                figure.savefig(self._media_dir(logger, stage) / f"predictions_step{self.step:06d}.png", dpi=100)

    def table(self, stage: str, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(f"{stage}/{name}", columns=columns, data=rows, step=self.step)
            elif isinstance(logger, TensorBoardLogger):
                text = markdown_table(columns, rows)
                logger.experiment.add_text(f"{stage}/{name}", text, global_step=self.step)
            else:
                with open(self._media_dir(logger, stage) / f"{name}_step{self.step:06d}.csv", "w", newline="") as f:
                    csv.writer(f).writerows([columns, *rows])

    def confusion(self, stage: str, confmat: torch.Tensor, names: Sequence[str]) -> None:
        """A (K, K) confusion matrix (rows: ground truth): an interactive chart on W&B (a rendered one beyond
        ``MAX_CHART_CLASSES``), an image of the row-normalised matrix on TensorBoard, a PNG of it elsewhere."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                title = f"{stage} confusion matrix (step {self.step})"
                if len(names) <= MAX_CHART_CLASSES:  # one table row per cell
                    counts = confmat.detach().cpu().tolist()
                    cells = [[names[i], names[j], counts[i][j]] for i in range(len(names)) for j in range(len(names))]
                    chart = wandb.plot_table(
                        "wandb/confusion_matrix/v1",
                        wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
                        {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                        {"title": title},
                    )
                else:
                    chart = wandb.Image(figure_to_array(confusion_figure(confmat, names, title)))
                logger.log_metrics({f"{stage}/confusion_matrix": chart}, step=self.step)
                continue
            title = f"{stage} confusion matrix (% of each ground-truth class), step {self.step}"
            figure = confusion_figure(confmat, names, title)
            if isinstance(logger, TensorBoardLogger):
                self._image(logger, f"{stage}/confusion_matrix", figure)
            else:
                figure.savefig(self._media_dir(logger, stage) / f"confusion_matrix_step{self.step:06d}.png", dpi=100)
