"""Running one sweep run in this process: its CLI (named, tagged, tested after fitting), the note of its run folder
and its curve file, the check that every grid point parses before anything runs."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from attnseg.callbacks import Complexity, Throughput
from attnseg.checkpoint import run_dir
from attnseg.cli import AttnSegCLI
from attnseg.constants import MONITOR
from attnseg.curves import CurveRecorder, read_curve, steps_to
from attnseg.profiling import count_parameters
from attnseg.sweep.report import CONTEXT_THRESHOLD
from attnseg.sweep.spec import Sweep, point_label, run_key


class SweepRunCLI(AttnSegCLI):
    """The CLI of one sweep run: names and tags its W&B run, tests the best checkpoint after fitting, and raises
    argument errors instead of exiting.

    Args:
        args: the ``fit`` arguments.
        group: the sweep's W&B tag, on every run of this invocation (each grid point is its own W&B group).
        label: W&B name of this run.
        test: test the best checkpoint (the last weights where there is none) after fitting.
        context_classes: class names the sweep reports; checked against the dataset's before fitting.
        source: the sweep file, for error messages.
        curve: where to record the run's learning curve (``attnseg.curves.CurveRecorder``); None records none.
        folder: a text file that receives the run's checkpoint folder when training starts (how a later
            ``attnseg sweep`` into the same folder finds the run's ``last.ckpt``); None writes none.
    """

    def __init__(
        self,
        args: Sequence[str],
        group: str,
        label: str,
        test: bool = True,
        context_classes: Sequence[str] = (),
        source: str = "sweep",
        curve: Optional[Path] = None,
        folder: Optional[Path] = None,
    ) -> None:
        self.group, self.label, self.test_after_fit, self.curve, self.folder = group, label, test, curve, folder
        self.context_classes, self.source = list(context_classes), source
        super().__init__(args=args, parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}})

    def before_instantiate_classes(self) -> None:
        loggers = self.config[self.subcommand].trainer.logger
        loggers = [
            lg
            for lg in (loggers if isinstance(loggers, list) else [loggers])
            if getattr(lg, "class_path", "").rpartition(".")[2] == WandbLogger.__name__
        ]
        for logger in loggers:
            logger.init_args.name = logger.init_args.get("name") or self.label
        super().before_instantiate_classes()  # the group (one per grid point: its seeds) and tags from the config
        for logger in loggers:
            logger.init_args.tags = [*(logger.init_args.get("tags") or []), self.group]

    def before_fit(self) -> None:
        missing = [c for c in self.context_classes if c not in self.model.class_names]
        if missing:
            raise ValueError(
                f"{self.source}: context_classes {missing} are not classes of this dataset "
                f"({', '.join(self.model.class_names)})"
            )
        if self.curve is not None:
            self.trainer.callbacks.append(CurveRecorder(self.curve))
        if self.folder is not None:
            self.trainer.callbacks.append(_RunFolderNote(self.folder))

    def after_fit(self) -> None:
        super().after_fit()
        if self.test_after_fit:
            best = self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)


class _RunFolderNote(Callback):
    """Writes the run's checkpoint folder to a text file when training starts."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        callback = trainer.checkpoint_callback
        if trainer.is_global_zero and callback is not None and callback.dirpath:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(str(Path(callback.dirpath).resolve()) + "\n")


def _file_name(point: dict[str, Any], seed: Optional[int]) -> str:
    return run_key(point, seed).replace("/", "_").replace("\\", "_")


def folder_note(out: Path, point: dict[str, Any], seed: Optional[int]) -> Path:
    """Where a sweep notes the checkpoint folder of one run: ``out/folders/<point>,seed=<seed>.txt``."""
    return out / "folders" / (_file_name(point, seed) + ".txt")


def curve_file(out: Path, point: dict[str, Any], seed: Optional[int]) -> Path:
    """Where a sweep records one run's learning curve: ``out/curves/<point>,seed=<seed>.csv`` (named by the run,
    not its number, which depends on the seeds and points of an invocation)."""
    return out / "curves" / (_file_name(point, seed) + ".csv")


def unfinished_checkpoint(out: Path, point: dict[str, Any], seed: Optional[int]) -> Optional[Path]:
    """The ``last.ckpt`` an earlier, unfinished run of this point and seed left (None where there is none)."""
    note = folder_note(out, point, seed)
    if not note.is_file():
        return None
    last = Path(note.read_text().strip()) / "last.ckpt"
    return last if last.is_file() else None


class _ParseOnlyCLI(AttnSegCLI):
    """Parses one run's arguments as ``fit`` would, instantiating nothing (``check_points``)."""

    def __init__(self, args: Sequence[str]) -> None:
        super().__init__(args=args, run=False, parser_kwargs={"exit_on_error": False})

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def check_points(sweep: Sweep, extra: Sequence[str] = ()) -> list[str]:
    """Parse every grid point's ``fit`` arguments before anything runs; one line per point that does not parse
    (a misspelt option, a value of the wrong type), naming the point and the parser's complaint."""
    problems = []
    for point in sweep.points():
        args = sweep.arguments(point, extra, sweep.seeds[0])[1:]  # without "fit": a parser without subcommands
        try:
            logging.disable(logging.INFO)  # "Seed set to ..." and the like, for every point
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                _ParseOnlyCLI(args)
        except (Exception, SystemExit) as err:  # noqa: BLE001 (the parser's message is the report)
            message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            problems.append(f"{point_label(point)}: {message or type(err).__name__}"[:600])
        finally:
            logging.disable(logging.NOTSET)
    return problems


def run_point(
    sweep: Sweep,
    index: int,
    point: dict[str, Any],
    extra: Sequence[str],
    group: str,
    seed: Optional[int] = None,
    out: Optional[Path] = None,
    resume: Optional[Path] = None,
    earlier_curve: Optional[str] = None,
) -> dict[str, Any]:
    """Fit (and test) one grid point with one seed; returns its result row (``status`` ``ok`` or ``failed`` with
    ``error``). With ``out``, the run's learning curve goes to ``curve_file`` (column ``curve``) and
    its checkpoint folder to ``folder_note``. With ``resume``, the fit continues from that checkpoint (and the
    curve from its earlier rows)."""
    row: dict[str, Any] = {"run": index, **point, "seed": seed, "status": "failed", "error": ""}
    start = time.perf_counter()
    cli = None
    label = point_label(point) + (f",seed={seed}" if seed is not None else "")
    curve = curve_file(out, point, seed) if out is not None else None
    if curve is not None:
        if resume is not None and earlier_curve and Path(earlier_curve).is_file() and not curve.exists():
            Path(earlier_curve).rename(curve)  # a curve recorded under an older name continues under this one
        if resume is None:
            curve.unlink(missing_ok=True)  # a curve left by an earlier sweep in this folder is not this run's
        row["curve"] = str(curve)
    args = sweep.arguments(point, extra, seed) + ([f"--ckpt_path={resume}"] if resume is not None else [])
    try:
        cli = SweepRunCLI(
            args,
            group,
            label,
            sweep.test,
            sweep.context_classes,
            str(sweep.path),
            curve,
            folder_note(out, point, seed) if out is not None else None,
        )
        trainer = cli.trainer
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_score is not None:
            row["val_mIoU"] = float(callback.best_model_score)
        elif MONITOR in trainer.callback_metrics:
            row["val_mIoU"] = float(trainer.callback_metrics[MONITOR])
        metrics = trainer.callback_metrics
        if "test/mIoU" in metrics:
            row["test_mIoU"] = float(metrics["test/mIoU"])
        if sweep.context_classes and "test/mIoU" in metrics:
            ious = [float(metrics[f"test/IoU/{c}"]) for c in sweep.context_classes]
            row["test_context_IoU"] = sum(ious) / len(ious)
        if sweep.context_classes and curve is not None and curve.is_file():
            row["steps_to_context"] = steps_to(read_curve(curve, sweep.context_classes), "context", CONTEXT_THRESHOLD)
        row["params"] = count_parameters(cli.model)[0]
        for cb in trainer.callbacks:
            if isinstance(cb, Complexity):
                row["GFLOPs"] = cb.summary.get("model/GFLOPs")
            if isinstance(cb, Throughput):
                row["train_images_per_s"] = cb.summary.get("perf/train_images_per_s")
        row["run_dir"] = str(run_dir(trainer))
        row["best_checkpoint"] = (callback.best_model_path if callback else "") or ""
        row["status"] = "ok" if trainer.state.finished else f"stopped ({trainer.state.status.value})"
    except Exception as err:  # noqa: BLE001 (a failed run is a result, not the end of the sweep)
        traceback.print_exc()
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        row["error"] = f"{type(err).__name__}: {message}"[:500]
        _finish_wandb()
    finally:
        row["time_s"] = round(time.perf_counter() - start, 1)
        del cli
        gc.collect()
        _free_accelerator_memory()
    return row


def _finish_wandb() -> None:
    """Close a W&B run a failed run may have left open, so the next run starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.run.finish(exit_code=1)


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
