"""The learning rate of every parameter group, every step."""

from __future__ import annotations

from typing import Any, Literal, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor as _LearningRateMonitor


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
