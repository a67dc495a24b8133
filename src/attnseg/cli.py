"""``attnseg fit|validate|test|predict``: LightningCLI for SegmentationTask + SegDataModule.

The CLI links the dataset's class count, class names and ignore index into the model, adds a
checkpoint callback that keeps the best ``val/mIoU`` and the last step, logs to Weights & Biases
offline by default, and saves each run's resolved config in that run's own directory. Callback groups:
``checkpoint``, ``interruption`` (SIGTERM / SIGUSR1 / an error mid-fit: ``last.ckpt`` of the current step and a
non-zero exit), ``lr_monitor`` (learning rate every step), ``overlays``, ``tables``, ``complexity`` and
``throughput`` (the dashboard, ``attnseg.callbacks``) and ``prediction`` (``attnseg predict`` writes masks and
overlays to ``--prediction.output_dir``). The ``attnseg`` command itself is ``attnseg.__main__``.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from attnseg import runlock
from attnseg.arguments import check_config_files, evaluation_needs_a_config, where_set
from attnseg.callbacks import ClassTables, Complexity, LearningRateMonitor, PredictionOverlays, Throughput
from attnseg.checkpoint import MID_EPOCH_WARNING, AtomicCheckpointIO, Checkpoint, run_dir, run_of_checkpoint
from attnseg.configs import expand_config_args
from attnseg.constants import MONITOR
from attnseg.csv_history import keep_csv_history
from attnseg.data import SegDataModule
from attnseg.distributed import SyncBatchNormPlugin
from attnseg.experiments import flatten
from attnseg.hardware import choose_fast_path
from attnseg.interruption import Interruption
from attnseg.lightning_internals import run_subcommand, subcommand_parser
from attnseg.predict import PredictionWriter
from attnseg.resume import (
    MODEL_DEFINING,
    check_checkpoint_path,
    differences,
    last_of_this_experiment,
    load_checkpoint,
)
from attnseg.run_names import FOLDER_LOGGERS, name_run_folders, name_wandb_runs, plain
from attnseg.task import SegmentationTask
from attnseg.weights import normalise_like_the_encoder

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"save_dir": "runs", "project": "attnseg", "offline": True},
}


class SaveRunConfig(SaveConfigCallback):
    """Write the resolved config to ``<run dir>/config.yaml`` (never over an earlier file) and into the W&B run."""

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        if trainer.fast_dev_run:
            return
        directory = run_dir(trainer)
        if stage == "fit":
            runlock.hold(directory)  # one writer per run (a resumed run holds it already)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.yaml"
        n = 1
        while path.exists():  # a resumed or repeated run in the same directory keeps every earlier config
            path = directory / f"config.{getattr(stage, 'value', stage)}.{n}.yaml"
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
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(Interruption, "interruption")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionOverlays, "overlays")
        parser.add_lightning_class_args(ClassTables, "tables")
        parser.add_lightning_class_args(Complexity, "complexity")  # before throughput: its measurement is not a step
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.add_argument(
            "--base",
            type=Optional[Union[str, list[str]]],
            default=None,
            help="In a config file: the configs it builds on, read before it (attnseg.configs); cleared once read.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, then resolve ``--ckpt_path last`` and make a resumed fit continue its own run directory and
        W&B run (before Lightning reads the checkpoint's hyper-parameters into the model config)."""
        self._kept_on_resume: dict[str, tuple] = {}
        self._resumed_step: Optional[int] = None  # a fit resumed in its own run folder: the checkpoint's step
        self._resumed_run: Optional[Path] = None  # and that folder
        args = expand_config_args(sys.argv[1:] if args is None else list(args))  # short names and base: lists
        check_config_files(args)
        evaluation_needs_a_config(args)
        self._args = list(args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand and "base" in self.config[subcommand]:
            self.config[subcommand].base = None  # read already: the saved config is complete without it
        self._given = None  # the options set in config files or on the command line, without the defaults
        if (self.config.get(subcommand or "") or {}).get("ckpt_path"):
            try:
                self._given = parser.parse_args(args, defaults=False)
            except (SystemExit, Exception):  # noqa: BLE001 (the full parse above succeeded: fall back to defaults)
                self._given = None
        config = self.config.get(subcommand) if subcommand else None
        if not config or not config.get("ckpt_path"):
            return
        logger = config.trainer.logger
        logger_args = logger.init_args if hasattr(logger, "init_args") else None
        if config.ckpt_path == "last":
            if logger_args is None:
                raise ValueError("--ckpt_path last needs a logger: it searches <save_dir>/<name>/*/checkpoints")
            name = logger_args.get("project") or logger_args.get("name") or ""
            root = Path(logger_args.get("save_dir") or ".") / name
            resolved = yaml.safe_load(parser.dump(self.config, skip_none=False))[subcommand]
            normalise_like_the_encoder(resolved)  # as the run's saved config.yaml has it
            sub = subcommand_parser(self, subcommand)
            defaults = yaml.safe_load(sub.dump(sub.get_defaults(), skip_none=False))
            normalise_like_the_encoder(defaults)
            found = last_of_this_experiment(root, resolved, defaults)
            config.ckpt_path = str(found) if found is not None else None
            if found is None:
                return
        check_checkpoint_path(config.ckpt_path)
        self._check_checkpoint_matches_config(subcommand, config)
        run = run_of_checkpoint(Path(config.ckpt_path))
        if subcommand == "fit" and run:
            self._resumed_run = Path(config.ckpt_path).parent.parent
        wandb = logger_args is not None and logger.class_path.endswith("WandbLogger")
        if subcommand == "fit" and run and wandb and not logger_args.get("id"):
            logger_args.id, logger_args.resume = run, "allow"  # same run directory, same W&B run
        folder = logger_args is not None and logger.class_path.endswith(FOLDER_LOGGERS)
        if subcommand == "fit" and run and folder and logger_args.get("version") is None:
            logger_args.version = run  # same run directory
            self._resumed_step = int(load_checkpoint(config.ckpt_path).get("global_step", 0))

    def _check_checkpoint_matches_config(self, subcommand: str, config) -> None:
        """Lightning rebuilds the model from the checkpoint's hyper-parameters, over the user's options. Each model
        option the user set explicitly (differs from the default) that the checkpoint contradicts is either kept
        (the optimiser, schedule, evaluation and speed options in ``RESUMABLE``: re-applied in
        ``before_instantiate_classes`` and reported in one line) or an error naming it; never dropped. Outside
        ``fit`` only the options that define the network (``MODEL_DEFINING``) must match."""
        saved = load_checkpoint(config.ckpt_path).get("hyper_parameters")
        if not saved:
            return
        defaults = subcommand_parser(self, subcommand).get_defaults()
        ours = flatten(plain(config.model), "model")
        given = {key for key in ours if self._given is not None and self._given.get(f"{subcommand}.{key}") is not None}
        kept, differ = differences(ours, flatten(plain(defaults.model), "model"), flatten(plain(saved), "model"), given)
        self._kept_on_resume.update(kept)
        conflicts = [
            f"{key}={value} (checkpoint: {old}{where_set(self._args, key)})"
            for key, (value, old) in differ.items()
            if subcommand == "fit" or key.split(".")[1] in MODEL_DEFINING  # evaluation ignores the training options
        ]
        if conflicts:
            raise ValueError(
                f"--ckpt_path {config.ckpt_path}: the checkpoint was trained with a different model: "
                + ", ".join(conflicts)
                + ". Change or drop these options to use the checkpoint as trained, or pass a matching checkpoint."
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self._kept_on_resume:  # Lightning put the checkpoint's values over them: the user's win
            for key, (value, _) in self._kept_on_resume.items():
                config[key] = value  # dotted key on the jsonargparse Namespace
            rank_zero_info(
                "--ckpt_path: options that differ from the checkpoint's, used as given: "
                + ", ".join(f"{key}={value} (checkpoint: {old})" for key, (value, old) in self._kept_on_resume.items())
            )
        choose_fast_path(config)
        normalise_like_the_encoder(config)
        name_wandb_runs(config, self.subcommand)
        name_run_folders(config, self.subcommand)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = (self.config_init[self.subcommand] if self.subcommand else self.config_init).get("trainer") or {}
        if config.get("sync_batchnorm"):  # CPU-capable sync batch norm that keeps timm's fused activations
            plugins = config.get("plugins") or []
            kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), SyncBatchNormPlugin()]
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self._resumed_run is not None:  # the first write to an existing run: take it for this process first
            try:
                runlock.hold(self._resumed_run)
                if self._resumed_step is not None:
                    keep_csv_history(trainer, self._resumed_step)
            except BaseException:
                runlock.release_all()
                raise
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:  # the one override of a private method (lightning_internals)
        before = _run_folders(self.trainer)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=MID_EPOCH_WARNING)  # said plainly by Checkpoint
                run_subcommand(self, subcommand)
        except BaseException:
            _remove_empty_new_runs(self.trainer, before)
            raise
        finally:  # close the W&B run, so a later run in this process (a sweep, a test) starts its own
            runlock.release_all()
            wandb = sys.modules.get("wandb")
            ours = any(isinstance(logger, WandbLogger) for logger in self.trainer.loggers)
            if ours and wandb is not None and wandb.run is not None:
                wandb.run.finish(exit_code=0 if self.trainer.state.finished else 1)

    def before_predict(self) -> None:
        """Predictions go to files (``prediction.output_dir``); keeping every class map in memory is opt-in."""
        config = self.config_init[self.subcommand]
        if config.get("return_predictions") is None:
            config["return_predictions"] = False

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if not self.trainer.is_global_zero or callback is None or self.trainer.fast_dev_run:
            return
        if callback.best_model_score is None:
            print(f"No val/mIoU was logged; last checkpoint: {callback.last_model_path or 'none'}")
            return
        print(f"Best val/mIoU: {float(callback.best_model_score):.4f}")
        print(f"Best checkpoint: {callback.best_model_path}")


RUN_FOLDER_SETUP = {"config.yaml", "hparams.yaml", runlock.LOCK_FILE}  # what a run folder holds before any result


def _run_folders(trainer: Trainer) -> set[Path]:
    """The run folders under the trainer's logger directory (``<save_dir>/<name>``) now."""
    logger = trainer.logger
    root = Path(getattr(logger, "save_dir", None) or "") / str(getattr(logger, "name", None) or "") if logger else None
    return set(root.iterdir()) if root is not None and root.is_dir() else set()


def _remove_empty_new_runs(trainer: Trainer, before: set[Path]) -> None:
    """A command that failed before any result leaves no run folder behind: its own, new since it started and
    holding only its config (another job's new folder under the same directory is never touched)."""
    try:
        own = run_dir(trainer)
    except Exception:  # noqa: BLE001 (a logger that cannot say its folder: leave everything)
        return
    if own not in _run_folders(trainer) - before:
        return
    files = [p for p in own.rglob("*") if p.is_file()]
    if all(p.parent == own and p.name in RUN_FOLDER_SETUP for p in files):
        shutil.rmtree(own, ignore_errors=True)
