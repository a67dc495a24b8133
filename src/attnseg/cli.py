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

import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from attnseg import runlock
from attnseg.callbacks import ClassTables, Complexity, LearningRateMonitor, PredictionOverlays, Throughput
from attnseg.checkpoint import MID_EPOCH_WARNING, AtomicCheckpointIO, Checkpoint, run_dir, run_of_checkpoint
from attnseg.configs import expand_config_args
from attnseg.constants import MONITOR
from attnseg.csv_history import keep_csv_history
from attnseg.data import SegDataModule
from attnseg.distributed import SyncBatchNormPlugin
from attnseg.experiments import NOT_IDENTITY, experiment_fingerprint, flatten, last_checkpoints
from attnseg.hardware import cpu_bf16_flags
from attnseg.interruption import Interruption
from attnseg.lightning_internals import run_subcommand, subcommand_parser
from attnseg.predict import PredictionWriter
from attnseg.run_names import FOLDER_LOGGERS, name_run_folders, name_wandb_runs, plain
from attnseg.task import SegmentationTask
from attnseg.weights import input_normalization

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
            "--base", type=Optional[Union[str, list[str]]], default=None,
            help="In a config file: the configs it builds on, read before it (attnseg.configs); cleared once read.",
        )  # fmt: skip

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, then resolve ``--ckpt_path last`` and make a resumed fit continue its own run directory and
        W&B run (before Lightning reads the checkpoint's hyper-parameters into the model config)."""
        self._kept_on_resume: dict[str, tuple] = {}
        self._resumed_step: Optional[int] = None  # a fit resumed in its own run folder: the checkpoint's step
        self._resumed_run: Optional[Path] = None  # and that folder
        args = expand_config_args(sys.argv[1:] if args is None else list(args))  # short names and base: lists
        _check_config_files(args)
        _evaluation_needs_a_config(args)
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
            _normalise_like_the_encoder(resolved)  # as the run's saved config.yaml has it
            fingerprint = experiment_fingerprint(resolved)
            sub = subcommand_parser(self, subcommand)
            defaults = yaml.safe_load(sub.dump(sub.get_defaults(), skip_none=False))
            _normalise_like_the_encoder(defaults)
            found, others, unreadable = last_checkpoints(root, resolved, defaults)
            for run in unreadable:
                rank_zero_warn(f"--ckpt_path last: passed over {run}: it has a last.ckpt but no readable config.yaml")
            if not found:
                elsewhere = f" ({others} run(s) there belong to other experiments)" if others else ""
                rank_zero_warn(
                    f"--ckpt_path last: no last.ckpt of this experiment (fingerprint {fingerprint}) under "
                    f"{root}/*/checkpoints{elsewhere}; starting from scratch"
                )
                config.ckpt_path = None
                return
            if len(found) > 1:
                raise ValueError(
                    f"--ckpt_path last: {len(found)} runs of this experiment (fingerprint {fingerprint}) under "
                    f"{root}: " + ", ".join(str(p) for p in found) + ". Pass the checkpoint to resume as --ckpt_path"
                )
            rank_zero_info(f"--ckpt_path last: resuming this experiment (fingerprint {fingerprint}) from {found[0]}")
            config.ckpt_path = str(found[0])
        _check_checkpoint_path(config.ckpt_path)
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
            self._resumed_step = int(_load_checkpoint(config.ckpt_path).get("global_step", 0))

    def _check_checkpoint_matches_config(self, subcommand: str, config) -> None:
        """Lightning rebuilds the model from the checkpoint's hyper-parameters, over the user's options. Each model
        option the user set explicitly (differs from the default) that the checkpoint contradicts is either kept
        (the optimiser, schedule, evaluation and speed options in ``RESUMABLE``: re-applied in
        ``before_instantiate_classes`` and reported in one line) or an error naming it; never dropped. Outside
        ``fit`` only the options that define the network (``MODEL_DEFINING``) must match."""
        saved = _load_checkpoint(config.ckpt_path).get("hyper_parameters")
        if not saved:
            return
        defaults = subcommand_parser(self, subcommand).get_defaults()
        ours = flatten(plain(config.model), "model")
        default = flatten(plain(defaults.model), "model")
        theirs = flatten(plain(saved), "model")
        conflicts = []
        for key, value in ours.items():
            given = self._given is not None and self._given.get(f"{subcommand}.{key}") is not None
            if key not in theirs or not (given or value != default.get(key)) or _same(value, theirs[key]):
                continue
            option = key.split(".")[1]
            if option in RESUMABLE:
                self._kept_on_resume[key] = (value, theirs[key])
            elif subcommand == "fit" or option in MODEL_DEFINING:  # evaluation ignores the training options
                conflicts.append(f"{key}={value} (checkpoint: {theirs[key]}{_where_set(self._args, key)})")
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
        _choose_cpu_fast_path(config)
        _normalise_like_the_encoder(config)
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


def _choose_cpu_fast_path(config) -> None:
    """``trainer.precision`` and ``model.channels_last`` left unset on a CPU run: bf16 autocast and channels-last
    where the CPU has AMX or AVX512-BF16 (about 3-4x faster training), fp32 elsewhere; says which in one line.
    A value set in a config file or on the command line is kept."""
    trainer, model = config.trainer, config.model
    on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
    if not on_cpu or (trainer.precision is not None and model.channels_last is not None):
        return
    flags = cpu_bf16_flags()
    if trainer.precision is None and flags:
        trainer.precision = "bf16-mixed"
    if model.channels_last is None:
        model.channels_last = bool(flags)
    if flags:
        reason = f"the CPU has {' and '.join(flags)}"
    else:
        reason = "no AMX or AVX512-BF16 in the CPU's flags"
    rank_zero_info(
        f"CPU precision: {trainer.precision or '32-true'}, channels_last={model.channels_last} ({reason}); "
        "set trainer.precision / model.channels_last to choose"
    )


def _normalise_like_the_encoder(config) -> None:
    """``data.mean`` / ``data.std`` from the encoder's weights (``attnseg.weights.input_normalization``)."""
    encoder, data = config.get("model", {}).get("encoder"), config.get("data")
    if encoder is None or data is None or "mean" not in data:
        return
    name = encoder.name if hasattr(encoder, "name") else encoder["name"]
    pretrained = encoder.pretrained if hasattr(encoder, "pretrained") else encoder.get("pretrained")
    data["mean"], data["std"] = (list(v) for v in input_normalization(name, pretrained, data["mean"], data["std"]))


def _config_files(argv: Sequence[str]) -> list[str]:
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return files + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def _where_set(argv: Sequence[str], key: str) -> str:
    """Where an option's value came from, for a message: the command line, else the config files given."""
    short = key.replace(".init_args.", ".")  # --model.head.num_convs sets model.head.init_args.num_convs
    if any(a.split("=", 1)[0].replace(".init_args.", ".") == f"--{short}" for a in argv):
        return "; set on the command line"
    files = _config_files(argv)
    return f"; set in --config {', '.join(files)}" if files else ""


def _evaluation_needs_a_config(argv: Sequence[str]) -> None:
    """``validate`` / ``test`` / ``predict --ckpt_path X`` without any ``--config``: the data would be the code's
    defaults, not what the checkpoint was trained on. Refuse, naming the run's own saved config."""
    if not argv or argv[0] not in ("validate", "test", "predict") or _config_files(argv):
        return
    ckpt = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--ckpt_path"), None)
    ckpt = ckpt or next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if ckpt is None:
        return
    saved = Path(ckpt).parent.parent / "config.yaml"
    hint = f"--config {saved} (the run's own)" if saved.is_file() else "the --config files it was trained with"
    raise ValueError(
        f"attnseg {argv[0]} --ckpt_path {ckpt}: no --config given, so the data would be the defaults rather than what "
        f"the checkpoint was trained on; pass {hint}"
    )


def _check_checkpoint_path(path: str) -> None:
    """A ``--ckpt_path`` that is a checkpoint file written by ``fit``, or an error that says what was found."""
    target = Path(path)
    if target.is_file():
        saved = _load_checkpoint(path)
        wanted = ("state_dict", "pytorch-lightning_version")
        missing = [key for key in wanted if key not in saved] if isinstance(saved, dict) else list(wanted)
        if missing:
            keys = ", ".join(sorted(map(str, saved))[:8]) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(
                f"--ckpt_path {path}: not a checkpoint written by attnseg fit (no {' or '.join(missing)}; it holds "
                f"{keys}); pass a .ckpt from a run's checkpoints/ folder"
            )
        return
    if target.is_dir():
        found = sorted(str(p) for p in target.rglob("*.ckpt"))
        listing = ": " + ", ".join(found[:6]) + (" ..." if len(found) > 6 else "") if found else " (none inside)"
        raise ValueError(f"--ckpt_path {path}: a directory; pass one checkpoint file in it{listing}")
    if path in ("best", "hpc", "registry"):
        raise ValueError(
            f"--ckpt_path {path}: names the best checkpoint of a fit in the same process only; from the command "
            "line pass the file (runs/<project>/<run>/checkpoints/best-*.ckpt) or `last` (this experiment's last.ckpt)"
        )
    raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file")


def _load_checkpoint(path: str) -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped), or an error that names it and says what it is."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        head = Path(path).read_bytes()[:512]
        if head and all(32 <= b < 127 or b in b"\r\n\t" for b in head):
            what = "a text file, not a checkpoint"
        elif head[:2] == b"PK":
            what = "a truncated or damaged checkpoint (an interrupted copy, a full disk?)"
        else:
            what = "not a checkpoint written by torch.save"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"--ckpt_path {path}: {what} ({reason}); expected a .ckpt file written by attnseg fit"
        ) from error


def _check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` exists and is valid YAML: an error names the file, line and column (jsonargparse's
    own message names neither the file nor, among several, which one)."""
    for name in _config_files(argv):
        path = Path(name)
        if not path.is_file():
            continue  # jsonargparse says so, and --config also takes inline YAML
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"--config {name}: not valid YAML{where}: {problem}") from error
        for section in ("model", "data", "trainer"):
            value = config.get(section) if isinstance(config, dict) else None
            if value is not None and not isinstance(value, dict):
                raise ValueError(
                    f"--config {name}: '{section}' is {value!r}; expected a mapping of its options, e.g. "
                    f"{section}:\n  {'lr: 0.01' if section == 'model' else 'batch_size: 8'}"
                )


# Model options that define the network a checkpoint holds (what validate / test / predict must match).
MODEL_DEFINING = {"head", "encoder", "num_classes"}
# Model options that may change when a run resumes (the rest define the model the checkpoint holds).
# model options a resumed fit may change: how it trains and evaluates (not the experiment), except the optimiser's kind
# and its parameter groups, which the checkpoint's optimiser state is tied to
RESUMABLE = NOT_IDENTITY["model"] - {"optimizer", "no_decay_norm_bias"}


def _same(a, b) -> bool:
    """Equal as configuration values (tuples and lists alike)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
