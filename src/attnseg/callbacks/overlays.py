"""Prediction overlays of the first validation images, at every validation."""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from attnseg.callbacks.sink import MediaSink, batch_images, data_style
from attnseg.visualize import denormalize


class PredictionOverlays(Callback):
    """``val/predictions``: image, ground truth and prediction (over the image, with class names and the dataset's
    colours) of the first ``num_images`` validation images, at every validation but the sanity check. The
    predictions are the ones the validation step made (the task returns them), not a second inference.

    Args:
        num_images: validation images shown each validation; 0 disables the overlays.
        alpha: opacity of the prediction drawn over the image.
    """

    def __init__(self, num_images: int = 4, alpha: float = 0.5) -> None:
        if num_images < 0:
            raise ValueError(f"PredictionOverlays: num_images={num_images}: expected >= 0")
        self.num_images = num_images
        self.alpha = alpha
        self._samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        wanted = self.num_images - len(self._samples)
        if wanted <= 0 or dataloader_idx != 0 or outputs is None or not MediaSink.active(trainer):
            return
        images = batch_images(batch)[:wanted]
        masks = (batch[1] if isinstance(batch, (tuple, list)) else batch["mask"])[:wanted]
        preds = outputs[:wanted]  # (B, H, W) class indices from the validation step
        _, _, mean, std = data_style(trainer, pl_module)
        for image, mask, pred in zip(denormalize(images, mean, std), masks.cpu().numpy(), preds.cpu().numpy()):
            self._samples.append((image, mask, pred))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._samples or not MediaSink.active(trainer):
            return
        palette, names, _, _ = data_style(trainer, pl_module)
        images, targets, preds = (list(x) for x in zip(*self._samples))  # images may differ in size
        MediaSink(trainer).overlays("val", images, targets, preds, palette, names, pl_module.ignore_index, self.alpha)
        self._samples = []
