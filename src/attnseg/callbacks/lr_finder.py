"""The learning-rate range test before a fit: Lightning's ``LearningRateFinder``, its curve kept in the run folder."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder as _LearningRateFinder
from lightning.pytorch.utilities import rank_zero_info

from attnseg.checkpoint import run_dir


class LearningRateFinder(_LearningRateFinder):
    """Before training, raise the learning rate from ``min_lr`` to ``max_lr`` over ``num_training_steps`` steps, pick
    the rate where the loss falls fastest, train the run with it (``model.lr``; the head keeps ``head_lr_mult`` times
    it) and say so in one line; the loss against the rate goes to ``<run dir>/lr_find.png``. The search steps every
    parameter group at the same rate and its steps are undone (weights, optimiser, data position) before training.

    Args:
        min_lr: the first rate tried.
        max_lr: the last rate tried.
        num_training_steps: steps of the search.
        mode: ``exponential`` or ``linear`` growth of the rate.
        early_stop_threshold: stop the search when the loss exceeds this many times its best (null: never).
        update_attr: train with the suggestion (false: only report it).
    """

    def __init__(
        self,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
    ) -> None:
        super().__init__(min_lr, max_lr, num_training_steps, mode, early_stop_threshold, update_attr, attr_name="lr")

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> None:
        before = pl_module.hparams.lr
        super().lr_find(trainer, pl_module)
        finder = self.optimal_lr
        if finder is None or not trainer.is_global_zero:
            return
        suggestion = finder.suggestion()
        path = run_dir(trainer) / "lr_find.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure = finder.plot(suggest=suggestion is not None)
        figure.savefig(path, dpi=100)
        import matplotlib.pyplot as plt

        plt.close(figure)
        steps = len(finder.results.get("lr", []))
        if suggestion is None:
            rank_zero_info(
                f"learning-rate finder: no suggestion after {steps} steps; training with lr={before} ({path})"
            )
        elif self._update_attr:
            rank_zero_info(
                f"learning-rate finder: {steps} steps from {self._min_lr:g} to {self._max_lr:g}; training with the "
                f"suggestion lr={suggestion:.3g} instead of {before} (curve: {path})"
            )
        else:
            rank_zero_info(f"learning-rate finder: suggestion lr={suggestion:.3g}; training with lr={before} ({path})")
