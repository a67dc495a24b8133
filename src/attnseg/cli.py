"""``attnseg fit|validate|test|predict``: LightningCLI for SegmentationTask + SegDataModule.

The CLI links the dataset's class count, class names and ignore index into the model, adds a
checkpoint callback that keeps the best ``val/mIoU`` and the last step, logs to Weights & Biases
offline by default, and saves each run's resolved config in that run's own directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from attnseg.data import SegDataModule
from attnseg.task import SegmentationTask

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"save_dir": "runs", "project": "attnseg", "offline": True},
}


def run_dir(trainer: Trainer) -> Path:
    """The run's own directory, ``<save_dir>/<name>/<version>``: where its checkpoints and config go."""
    logger = trainer.logger
    if logger is None or trainer.fast_dev_run:
        return Path(trainer.default_root_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


class SaveRunConfig(SaveConfigCallback):
    """Write the resolved config to ``<run dir>/config.yaml`` (never over an earlier file) and into the W&B run."""

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        if trainer.fast_dev_run:
            return
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.yaml"
        n = 1
        while path.exists():  # a resumed or repeated run in the same directory keeps every earlier config
            path = directory / f"config.{stage}.{n}.yaml"
            n += 1
        self.parser.save(self.config, path, skip_none=False, overwrite=False, multifile=False)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
                logger.experiment.save(str(path), base_path=str(directory), policy="now")


class AttnSegCLI(LightningCLI):
    def __init__(self, args: Optional[Sequence[str]] = None, run: bool = True, **kwargs) -> None:
        super().__init__(
            SegmentationTask,
            SegDataModule,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"save_to_log_dir": False},
            trainer_defaults={"logger": DEFAULT_LOGGER},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mIoU",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # close the W&B run, so a later run in this process (a sweep, a test) starts its own
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger) and logger._experiment is not None:
                    logger.experiment.finish(exit_code=0 if self.trainer.state.finished else 1)

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if not self.trainer.is_global_zero or callback is None or self.trainer.fast_dev_run:
            return
        if callback.best_model_score is None:
            print(f"No val/mIoU was logged; last checkpoint: {callback.last_model_path or 'none'}")
            return
        print(f"Best val/mIoU: {float(callback.best_model_score):.4f}")
        print(f"Best checkpoint: {callback.best_model_path}")


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``attnseg`` console script and ``python -m attnseg``."""
    AttnSegCLI(args=args)


if __name__ == "__main__":
    main(sys.argv[1:])
