"""Model complexity in the run summary: parameters and GFLOPs."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from attnseg.callbacks.sink import MediaSink, batch_images
from attnseg.profiling import count_flops, count_parameters


class Complexity(Callback):
    """Once per fit, at the first training batch: ``model/params``, ``model/params_trainable`` and ``model/GFLOPs``
    (one forward at that batch's input size, batch 1, eval mode; ``attnseg.profiling``). Kept in ``summary``.

    Args:
        enabled: measure and log (false: nothing).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.summary: dict[str, float] = {}
        self._done = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._done = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.enabled or self._done or not MediaSink.active(trainer):
            return
        self._done = True
        total, trainable = count_parameters(pl_module)
        flops = count_flops(pl_module, batch_images(batch).shape[-2:], pl_module.device)
        metrics = {"model/params": total, "model/params_trainable": trainable, "model/GFLOPs": flops / 1e9}
        self.summary.update(metrics)
        MediaSink(trainer).numbers(metrics)
