"""``attnseg sweep SWEEP.yaml [--out DIR] [--dry-run] [-- EXTRA CLI ARGS]``: every combination of a grid of
overrides on a base config; each run fits, then tests its best checkpoint; results land in one table.

A sweep file (paths relative to the file)::

    # DANet ablation: position x channel attention.
    base: [../quickstart.yaml, ../model/danet.yaml]   # configs composed in this order
    fixed:                                            # optional: overrides shared by every run
      trainer.max_epochs: 8
    grid:                                             # every combination of these values
      model.head.init_args.pam: [true, false]
      model.head.init_args.cam: [true, false]
    seeds: [0, 1, 2]     # optional: every grid point is run once per seed (default: [0]); --seeds overrides
    context_classes: [warm_blob, cold_blob]   # optional: classes whose mean test IoU gets its own column
    name: danet          # optional: the sweep's name (default: the file's stem)
    test: true           # optional: test the best checkpoint after each fit (default: true)

A grid axis may also map names to bundles of overrides that go together, for example one head and its options::

    grid:
      head:
        fcn: {model.head: attnseg.heads.FCNHead}
        dfn: {model.head: attnseg.heads.DFNHead, model.head.init_args.aux: true}

Each run is ``attnseg fit --config <base>... --<fixed>... <EXTRA> --<grid point>... --seed_everything=<seed>``
(later arguments win, so the grid point and the seed always hold), run in this process with a fresh CLI. The seed
sets the model's initialisation, the data order and the augmentation; the dataset itself stays the one the
configs name. A run that fails is recorded with its error and the sweep goes on. The W&B runs of one sweep share a
tag (``<name>-<date>-<time>``), are named after their grid point and seed, and each grid point's seeds form one W&B
group (``attnseg.run_names``). ``DIR`` (default
``runs/sweeps/<name>``) receives, rewritten after every run:

- ``results.csv``: one row per run (grid point, seed, status, scores, time, run folder, error);
- ``results.md``: per grid point the mean and standard deviation over its seeds (a point with a failed run is
  shown as failed, not averaged), then every run;
- ``results.png``: mean test mIoU (and context-class IoU) per grid point with standard-deviation error bars;
- ``curves/<point>,seed=<seed>.csv``: each run's validation mIoU and per-class IoU after every validation
  (``attnseg.curves.CurveRecorder``), and ``learning_curves.png``: per grid point the mean ± std over its seeds of
  val mIoU (and val context IoU) against the training step; with context classes, ``results.md`` has a column
  "steps to 80 % context IoU": the first validation step at which a run's val context IoU reached 0.80, mean ± std
  over the seeds (``k/n`` when only k of n runs reached it).

The exit status is 1 when a run failed.

**Running a sweep again into the same ``DIR``** continues it: runs whose row in ``results.csv`` says ``ok`` are
kept and not run again, any other run that started before (interrupted, failed, or killed before its row was
written) continues from the ``last.ckpt`` of its run folder (``DIR/folders/<point>,seed=<s>.txt`` names it as soon
as the run starts training) or starts again where there is none, and every earlier row stays in the table (rows
of points this invocation does not run, e.g. with ``--only``, included). A ``results.csv`` of another sweep (other
grid keys) is refused: choose another ``--out``.

``--wandb-sweep FILE`` writes the same grid as a W&B sweep file instead (``method: grid``, ``val/mIoU`` maximised,
each grid key and ``seed_everything`` a parameter, a bundled axis a ``config`` parameter of inline YAML) and runs
nothing: ``wandb sweep FILE`` registers it, ``wandb agent <id>`` runs ``attnseg fit`` for each combination. Shipped
base configs are named by their short names, so the file works wherever attnseg is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import gc
import io
import itertools
import json
import logging
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from attnseg.callbacks import Complexity, Throughput
from attnseg.checkpoint import clear_stop, run_dir, stop_received
from attnseg.cli import AttnSegCLI
from attnseg.configs import config_root
from attnseg.configs import resolve as resolve_config
from attnseg.curves import CurveRecorder, curves_figure, read_curve, steps_to
from attnseg.profiling import count_parameters

SWEEP_KEYS = ("base", "fixed", "grid", "seeds", "context_classes", "name", "test")
COLUMNS = ["run", "seed", "status", "val_mIoU", "test_mIoU", "test_context_IoU", "steps_to_context", "params",
           "GFLOPs", "train_images_per_s", "time_s"]  # fmt: skip
CONTEXT_THRESHOLD = 0.8  # "steps to 80 % context IoU": the val context IoU a run's curve must reach
SCORES = (("val_mIoU", "val mIoU"), ("test_mIoU", "test mIoU"), ("test_context_IoU", "context IoU"))


@dataclass
class Sweep:
    """A parsed sweep file: base configs, shared overrides and the grid of overrides."""

    path: Path
    name: str
    base: list[Path]
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    test: bool = True
    seeds: list[int] = field(default_factory=lambda: [0])
    context_classes: list[str] = field(default_factory=list)
    bundles: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # axis -> name -> overrides

    @classmethod
    def from_file(cls, path: str | Path) -> "Sweep":
        path = Path(path)
        if not path.is_file():  # a shipped sweep's short name, as --config takes them: ablation/danet
            try:
                path = resolve_config(str(path))
            except FileNotFoundError:
                raise ValueError(
                    f"sweep file {path}: no such file and no shipped sweep of that name (attnseg configs lists "
                    "ablation/*)"
                ) from None
        try:
            with open(path) as f:  # YAML's messages then name the file
                spec = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: expected a mapping with keys {SWEEP_KEYS}")
        unknown = sorted(set(spec) - set(SWEEP_KEYS))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; expected some of {SWEEP_KEYS}")
        base = spec.get("base") or []
        base = [base] if isinstance(base, str) else list(base)
        if not base:
            raise ValueError(f"{path}: 'base' names no config; expected e.g. base: [../quickstart.yaml]")
        resolved, missing = [], []
        for b in base:  # a path relative to the sweep file, or a shipped config's short name (attnseg.configs)
            try:
                resolved.append(resolve_config(b, relative_to=path.parent))
            except FileNotFoundError:
                missing.append(b)
        if missing:
            raise ValueError(
                f"{path}: base configs not found: {missing} (paths relative to the sweep file, or shipped configs' "
                "short names such as model/danet)"
            )
        base = resolved
        grid = spec.get("grid") or {}
        if not isinstance(grid, dict) or not grid:
            raise ValueError(f"{path}: 'grid' must map dotted options to lists of values, e.g. model.lr: [0.01, 0.02]")
        bundles = {}
        for key, values in list(grid.items()):
            if isinstance(values, dict) and values:
                for name, overrides in values.items():
                    if not isinstance(overrides, dict) or not overrides:
                        raise ValueError(
                            f"{path}: grid.{key}.{name} is {overrides!r}; expected a mapping of dotted options to "
                            "values, e.g. {model.head: attnseg.heads.FCNHead}"
                        )
                bundles[key] = {str(name): dict(overrides) for name, overrides in values.items()}
                grid[key] = list(bundles[key])
            elif not isinstance(values, list) or not values:
                raise ValueError(
                    f"{path}: grid.{key} is {values!r}; expected a non-empty list of values (or a mapping of names "
                    "to bundles of overrides)"
                )
        fixed = spec.get("fixed") or {}
        if not isinstance(fixed, dict):
            raise ValueError(f"{path}: 'fixed' must map dotted options to values, got {fixed!r}")
        seeds = spec.get("seeds", [0])
        integers = isinstance(seeds, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
        if not seeds or not integers:
            raise ValueError(
                f"{path}: seeds is {seeds!r}; expected a non-empty list of integers, e.g. seeds: [0, 1, 2]"
            )
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{path}: seeds {seeds} repeat a seed; each seed once")
        context = spec.get("context_classes") or []
        if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
            raise ValueError(f"{path}: context_classes is {context!r}; expected a list of class names")
        name = str(spec.get("name") or path.stem)
        return cls(path, name, base, dict(grid), dict(fixed), bool(spec.get("test", True)), list(seeds), context,
                   bundles)  # fmt: skip

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, the first key varying slowest."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def runs(self) -> list[tuple[dict[str, Any], int]]:
        """``(grid point, seed)`` of every run: each point with each seed, seeds varying fastest."""
        return [(point, seed) for point in self.points() for seed in self.seeds]

    def arguments(self, point: dict[str, Any], extra: Sequence[str] = (), seed: Optional[int] = None) -> list[str]:
        """``fit`` arguments of one run: base configs, fixed overrides, extra arguments, the grid point, the seed."""
        configs = [f"--config={b}" for b in self.base]
        seeded = [f"--seed_everything={seed}"] if seed is not None else []
        overrides: dict[str, Any] = {}
        for key, value in point.items():
            overrides.update(self.bundles[key][value] if key in self.bundles else {key: value})
        return ["fit", *configs, *override_args(self.fixed), *extra, *override_args(overrides), *seeded]


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"model.head": "X", "model.head.init_args.aux": True}`` -> ``{"model": {"head": {"class_path": "X",
    "init_args": {"aux": True}}}}``: dotted overrides as one config (a class path gains init args beside it)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {"class_path": child} if isinstance(child, str) else {}
            node = child
        if isinstance(node.get(last), dict) and isinstance(value, str):
            node[last]["class_path"] = value
        else:
            node[last] = value
    return out


def wandb_sweep(sweep: Sweep, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The sweep as a W&B sweep configuration (see the module's docstring)."""
    if len(sweep.bundles) > 1:
        raise ValueError(
            f"{sweep.path}: a W&B sweep file holds one bundled grid axis (as its 'config' parameter); this sweep has "
            f"{len(sweep.bundles)}: {', '.join(sweep.bundles)}"
        )
    root = config_root()
    configs = []
    for base in sweep.base:
        shipped = root in base.parents
        configs += ["--config", base.relative_to(root).with_suffix("").as_posix() if shipped else str(base)]
    parameters: dict[str, Any] = {}
    for key, values in sweep.grid.items():
        if key in sweep.bundles:
            inline = [nested(sweep.bundles[key][name]) for name in values]
            flow = [yaml.safe_dump(c, default_flow_style=True, sort_keys=False, width=10**6).strip() for c in inline]
            parameters["config"] = {"values": flow}
        else:
            parameters[key] = {"values": list(values)}
    parameters["seed_everything"] = {"values": list(sweep.seeds)}
    return {
        "name": sweep.name,
        "program": "attnseg",
        "method": "grid",
        "metric": {"name": "val/mIoU", "goal": "maximize"},
        "parameters": parameters,
        "command": [
            "attnseg",
            "fit",
            *configs,
            *override_args(sweep.fixed),
            "--trainer.logger.init_args.offline=false",
            *extra,
            "${args}",
        ],  # fmt: skip  # an agent reports to the W&B server, not to offline files
    }


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``{"model.lr": 0.02, "model.head.init_args.pam": False}`` -> ``["--model.lr=0.02", "--...pam=false"]``."""
    return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest unambiguous dotted suffix of each key (``model.head.init_args.pam`` -> ``pam``)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(k == name or k.endswith("." + name) for k in keys) == 1:
                break
        names[key] = name
    return names


def point_label(point: dict[str, Any]) -> str:
    """``pam=true,cam=false``: a run's grid point in a few characters."""
    names = short_names(list(point))
    return ",".join(f"{names[k]}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in point.items())


# ------------------------------------------------------------------------------------------------ running


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
        self, args: Sequence[str], group: str, label: str, test: bool = True,
        context_classes: Sequence[str] = (), source: str = "sweep", curve: Optional[Path] = None,
        folder: Optional[Path] = None,
    ) -> None:  # fmt: skip
        self.group, self.label, self.test_after_fit, self.curve, self.folder = group, label, test, curve, folder
        self.context_classes, self.source = list(context_classes), source
        super().__init__(args=args, parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}})

    def before_instantiate_classes(self) -> None:
        loggers = self.config[self.subcommand].trainer.logger
        loggers = [lg for lg in (loggers if isinstance(loggers, list) else [loggers])
                   if getattr(lg, "class_path", "").rpartition(".")[2] == WandbLogger.__name__]  # fmt: skip
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
        cli = SweepRunCLI(args, group, label, sweep.test, sweep.context_classes, str(sweep.path), curve,
                          folder_note(out, point, seed) if out is not None else None)  # fmt: skip
        trainer = cli.trainer
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_score is not None:
            row["val_mIoU"] = float(callback.best_model_score)
        elif "val/mIoU" in trainer.callback_metrics:
            row["val_mIoU"] = float(trainer.callback_metrics["val/mIoU"])
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


# ------------------------------------------------------------------------------------------------ results


def _format(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}f}"
    return str(value)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value: there is no spread to show)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarise(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per grid point that has runs: its point, the number of runs ``n``, ``status`` (``ok`` when every run
    succeeded, else ``failed (k/n)``) and, for an ok point, ``(mean, std)`` of each score over its seeds."""
    keys = list(sweep.grid)
    summary = []
    for point in sweep.points():
        runs = [row for row in rows if all(row.get(k) == v for k, v in point.items())]
        if not runs:
            continue
        failed = sum(row["status"] != "ok" for row in runs)
        entry: dict[str, Any] = {**{k: point[k] for k in keys}, "n": len(runs)}
        entry["status"] = "ok" if not failed else f"failed ({failed}/{len(runs)})"
        if not failed:
            for key, _ in SCORES + (("time_s", "time"),):
                values = [row[key] for row in runs if isinstance(row.get(key), (int, float))]
                if len(values) == len(runs):
                    entry[key] = _mean_std([float(v) for v in values])
            reached = [row["steps_to_context"] for row in runs if isinstance(row.get("steps_to_context"), int)]
            if sweep.context_classes:  # steps to the threshold over the seeds; "k/n" when only k runs reached it
                complete = len(reached) == len(runs)
                entry["steps_to_context"] = _mean_std(reached) if complete else f"{len(reached)}/{len(runs)}"
        summary.append(entry)
    return summary


def _seconds(value: Any) -> float:
    """A ``time_s`` cell as seconds (0 where empty)."""
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        return 0.0


def _pm(value: Optional[tuple[float, float]], scale: float = 100.0, digits: int = 1) -> str:
    if value is None:
        return "-"
    mean, std = value
    spread = f" ± {std * scale:.{digits}f}" if not math.isnan(std) else ""  # one seed: its value alone
    return f"{mean * scale:.{digits}f}{spread}"


def write_results(sweep: Sweep, rows: list[dict[str, Any]], out: Path, group: str, extra: Sequence[str]) -> None:
    """``results.csv`` (one row per run, every field), ``results.md`` (mean ± std per grid point, then every run)
    and ``results.png`` (mean scores per grid point with error bars)."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(sweep.grid)
    fields = ["run", *keys, *COLUMNS[1:], "run_dir", "best_checkpoint", "curve", "error"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})

    names = short_names(keys)
    context = sweep.context_classes
    scores = [(k, label) for k, label in SCORES if context or k != "test_context_IoU"]
    summary = summarise(sweep, rows)
    steps_header = [f"steps to {CONTEXT_THRESHOLD:.0%} context IoU"] if context else []
    header = [*(names[k] for k in keys), *(f"{label} (%)" for _, label in scores), *steps_header, "seeds", "time (s)",
              "status"]  # fmt: skip
    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        f"Sweep file: `{sweep.path}`; base: {', '.join(f'`{b.name}`' for b in sweep.base)}; seeds: {sweep.seeds}; "
        f"W&B tag: `{group}` (each grid point a W&B group)"
        + (f"; extra arguments: `{' '.join(extra)}`" if extra else ""),
        "",
        "Mean ± standard deviation over the seeds of each grid point. val mIoU: the best validation score, whose "
        "checkpoint the test scores come from."
        + (
            f" context IoU: mean test IoU of {', '.join(f'`{c}`' for c in context)}; steps to "
            f"{CONTEXT_THRESHOLD:.0%}: the first validation step at which a run's val context IoU reached "
            f"{CONTEXT_THRESHOLD:.2f} (k/n: only k of n seeds did); curves in `learning_curves.png`."
            if context
            else ""
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if h in names.values() or h == "status" else "---:" for h in header) + "|",
    ]
    for entry in summary:
        cells = [json.dumps(entry[k]) if not isinstance(entry[k], str) else entry[k] for k in keys]
        cells += [_pm(entry.get(key)) for key, _ in scores]
        if context:
            steps = entry.get("steps_to_context")
            cells.append(steps if isinstance(steps, str) else _pm(steps, scale=1.0, digits=0))
        time_s = entry.get("time_s")
        cells += [str(entry["n"]), f"{time_s[0]:.0f}" if time_s else "-", entry["status"]]
        lines.append("| " + " | ".join(cells) + " |")

    run_header = ["#", *(names[k] for k in keys), "seed", *(f"{label} (%)" for _, label in scores), *steps_header,
                  "params (M)", "GFLOPs", "train img/s", "time (s)", "status"]  # fmt: skip
    lines += [
        "",
        "Every run:",
        "",
        "| " + " | ".join(run_header) + " |",
        "|" + "|".join("---" if h in names.values() or h == "status" else "---:" for h in run_header) + "|",
    ]
    for row in rows:
        params = row.get("params")
        cells = [
            str(row["run"]),
            *(json.dumps(row[k]) if not isinstance(row[k], str) else row[k] for k in keys),
            _format(row.get("seed")),
            *(_format(row.get(key), 100) for key, _ in scores),
            *([_format(row.get("steps_to_context"))] if context else []),
            _format(params / 1e6 if params else None),
            _format(row.get("GFLOPs")),
            _format(row.get("train_images_per_s"), digits=1),
            _format(row.get("time_s"), digits=0),
            row["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [row for row in rows if row.get("error")]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- run {row['run']}: {row['error']}" for row in failed]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_results(summary, keys, out / "results.png", title=f"sweep {sweep.name} (mean ± std over seeds {sweep.seeds})",
                 context=bool(context))  # fmt: skip
    plot_curves(sweep, rows, out / "learning_curves.png")


def plot_curves(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> bool:
    """``learning_curves.png``: mean ± std over seeds of each grid point's recorded curves (ok runs only)."""
    keys = list(sweep.grid)
    curves = {}
    for point in sweep.points():
        ok = [row for row in rows if row.get("status") == "ok" and all(row.get(k) == v for k, v in point.items())]
        files = [row.get("curve") for row in ok]
        runs = [read_curve(f, sweep.context_classes) for f in files if f and Path(f).is_file()]
        if runs:
            curves[point_label({k: point[k] for k in keys})] = runs
    if not curves:
        return False
    try:
        title = f"sweep {sweep.name}: learning curves (mean ± std over seeds)"
        fig = curves_figure(curves, bool(sweep.context_classes), title)
    except ImportError:
        print(f"matplotlib is not installed: {path} not written (pip install matplotlib)")
        return False
    fig.savefig(path, dpi=120)
    return True


def results_figure(summary: list[dict[str, Any]], keys: Sequence[str], title: str = "", context: bool = False):
    """A matplotlib Figure: bars of the mean test mIoU (and context IoU) per grid point with standard-deviation error
    bars, failed points marked (what ``results.png`` holds; the ablation notebook draws it too)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [("test_mIoU", "test mIoU")] + ([("test_context_IoU", "context IoU")] if context else [])
    labels = [point_label({k: entry[k] for k in keys}).replace(",", "\n") for entry in summary]
    fig = Figure(figsize=(max(4.0, 1.2 * len(summary) + 1.5), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for s, (key, label) in enumerate(series):
        offset = (s - (len(series) - 1) / 2) * width
        means = [100 * e[key][0] if e.get(key) else 0.0 for e in summary]
        stds = [100 * e[key][1] if e.get(key) else 0.0 for e in summary]
        bars = ax.bar([i + offset for i in range(len(summary))], means, width,
                      yerr=[0.0 if math.isnan(d) else d for d in stds], capsize=3, label=label)  # fmt: skip
        texts = [(f"{m:.1f}" if math.isnan(d) else f"{m:.1f}±{d:.1f}") if m else "" for m, d in zip(means, stds)]
        ax.bar_label(bars, labels=texts, fontsize=7,
                     padding=2)  # fmt: skip
    for i, entry in enumerate(summary):
        if entry["status"] != "ok":
            ax.text(i, 1.0, entry["status"], ha="center", va="bottom", rotation=90, color="tab:red")
    ax.set_xticks(range(len(summary)), labels, fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    return fig


def plot_results(summary: list[dict[str, Any]], keys: Sequence[str], path: Path, title: str = "",
                 context: bool = False) -> bool:  # fmt: skip
    """``results_figure`` saved to ``path``; False (and a message) where matplotlib is missing."""
    try:
        fig = results_figure(summary, keys, title, context)
    except ImportError:
        print(f"matplotlib is not installed: {path} not written (pip install matplotlib)")
        return False
    fig.savefig(path, dpi=120)
    return True


def _csv_cell(value: Any) -> Any:
    """How ``results.csv`` holds a value: booleans, lists and mappings as JSON, the rest as they are."""
    return json.dumps(value) if isinstance(value, (bool, list, dict)) else value


def read_results(path: Path, sweep: Sweep) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` that ``write_results`` wrote for ``sweep``, with their types back (grid values,
    seeds, scores), so that ``summarise`` and ``write_results`` can take them again."""
    rows = []
    for raw in csv.DictReader(open(path, newline="")):
        row: dict[str, Any] = {}
        for key, value in raw.items():
            if value in ("", None):
                row[key] = None
            elif key in sweep.grid and key not in sweep.bundles:  # the grid value written as ``value``
                row[key] = next((v for v in sweep.grid[key] if str(_csv_cell(v)) == value), value)
            elif key in ("run", "seed", "params", "steps_to_context"):
                row[key] = int(float(value))
            elif key in ("val_mIoU", "test_mIoU", "test_context_IoU", "GFLOPs", "train_images_per_s", "time_s"):
                row[key] = float(value)
            else:
                row[key] = value
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ entry point


def run_key(point: dict[str, Any], seed: Optional[int]) -> str:
    """A run's identity within a sweep: its grid point and seed, as printed."""
    return f"{point_label(point)},seed={seed}"


def earlier_rows(sweep: Sweep, out: Path) -> dict[str, dict[str, Any]]:
    """The rows a previous ``attnseg sweep`` of this sweep wrote to ``out/results.csv``, by ``run_key`` (empty where
    there is no such file); a file written for other grid keys is an error naming it."""
    path = out / "results.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    missing = [key for key in sweep.grid if key not in header]
    if missing:
        raise ValueError(
            f"{path} holds another sweep's results (no column for grid key(s) {missing}); choose another --out, "
            "or move the folder away to start this sweep afresh"
        )
    return {run_key({k: row[k] for k in sweep.grid}, row["seed"]): row for row in read_results(path, sweep)}


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="attnseg sweep",
        description="Fit (then test) every combination of a sweep file's grid; write results.csv/.md/.png.",
        epilog="Arguments after -- go to every run, e.g. -- --trainer.max_epochs=2 --config configs/logger/csv.yaml",
    )
    parser.add_argument("sweep", help="sweep file (YAML with base, grid, and optionally fixed, name, test)")
    parser.add_argument("--out", default=None, help="folder for the results (default: runs/sweeps/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep in --out (what a re-run does anyway): finished runs are kept, failed "
                             "and unfinished ones run again, the latter from their last.ckpt")  # fmt: skip
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="run every grid point once per seed (overrides the file's seeds), e.g. --seeds 0 1 2",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run only these values of a grid key (repeatable), e.g. --only head=pspnet,fcn",
    )
    parser.add_argument(
        "--wandb-sweep",
        default=None,
        metavar="FILE",
        help="write the grid as a W&B sweep file (wandb sweep FILE; wandb agent ID), run nothing",
    )
    return parser.parse_args(argv), extra


def restrict(sweep: Sweep, only: str) -> None:
    """Keep only some values of one grid key (``--only KEY=V1,V2``); values are matched as they print."""
    key, _, values = only.partition("=")
    if key not in sweep.grid or not values:
        raise ValueError(f"--only {only}: expected KEY=V1,V2 with KEY one of the grid's keys {list(sweep.grid)}")
    wanted = values.split(",")
    printed = {(v if isinstance(v, str) else json.dumps(v)): v for v in sweep.grid[key]}
    unknown = [v for v in wanted if v not in printed]
    if unknown:
        raise ValueError(f"--only {only}: {unknown} not among {key}'s values {list(printed)}")
    sweep.grid[key] = [printed[v] for v in wanted]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``attnseg sweep``; returns the exit status (0: every run succeeded)."""
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sweep = Sweep.from_file(args.sweep)
    except ValueError as err:
        print(f"attnseg sweep: {err}", file=sys.stderr)
        return 2
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            print(f"attnseg sweep: --seeds {args.seeds} repeat a seed; each seed once", file=sys.stderr)
            return 2
        sweep.seeds = list(args.seeds)
    whole = copy.deepcopy(sweep)  # before --only: the table and the run numbers cover the whole grid
    numbers = {run_key(point, seed): k for k, (point, seed) in enumerate(whole.runs())}
    try:
        for only in args.only:
            restrict(sweep, only)
    except ValueError as err:
        print(f"attnseg sweep: {err}", file=sys.stderr)
        return 2
    if args.wandb_sweep:
        try:
            spec = wandb_sweep(sweep, extra)
        except ValueError as err:
            print(f"attnseg sweep: {err}", file=sys.stderr)
            return 2
        target = Path(args.wandb_sweep)
        if target.exists():
            print(f"attnseg sweep: --wandb-sweep {target}: the file exists; choose another name", file=sys.stderr)
            return 2
        header = f"# W&B sweep of {sweep.path} ({len(sweep.runs())} runs): wandb sweep {target}; wandb agent <id>\n"
        target.write_text(header + yaml.safe_dump(spec, sort_keys=False, width=1000))
        print(f"wrote {target}: {len(sweep.runs())} runs; register it with: wandb sweep {target}")
        return 0
    runs = sweep.runs()
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    problems = check_points(sweep, extra)
    if problems:
        print(f"attnseg sweep: {sweep.path}: {len(problems)} grid point(s) do not parse; nothing was run:",
              *problems, sep="\n  ", file=sys.stderr)  # fmt: skip
        return 2
    if args.dry_run:
        then = ", then test on the best checkpoint" if sweep.test else ""
        points = len(runs) // len(sweep.seeds)
        print(f"Sweep {sweep.name}: {len(runs)} runs ({points} grid points x seeds {sweep.seeds}; fit{then})")
        for index, (point, seed) in enumerate(runs):
            print(f"[{index}] {point_label(point)},seed={seed}")
            print("    attnseg " + " ".join(sweep.arguments(point, extra, seed)))
        print(f"Results would go to {out}/results.{{csv,md,png}}")
        return 0

    group = f"{sweep.name}-{datetime.now():%Y%m%d-%H%M%S}"
    leader = rank_zero_only.rank == 0  # with several processes (DDP) every one runs the sweep; one writes results
    try:
        earlier = earlier_rows(whole, out)
    except ValueError as err:
        print(f"attnseg sweep: {err}", file=sys.stderr)
        return 2
    planned = {run_key(point, seed) for point, seed in runs}
    table = dict(earlier)  # every earlier row, replaced run by run: a write after any run keeps the rest
    if args.resume and not earlier:
        print(f"Sweep {sweep.name}: --resume: no results in {out} yet; starting the sweep")
    if earlier:
        kept = sum(row.get("status") == "ok" for key, row in earlier.items() if key in planned)
        print(f"Sweep {sweep.name}: continuing {out}/results.csv ({kept} of {len(runs)} runs finished earlier)")
    for position, (point, seed) in enumerate(runs):
        key = label = run_key(point, seed)
        index = numbers[key]  # the run's number in the whole grid, --only or not
        before = earlier.get(key)
        if before is not None and before.get("status") == "ok":
            print(f"\n=== sweep {sweep.name}: run {position + 1}/{len(runs)}: {label}: finished earlier, kept ===")
            continue
        resume = unfinished_checkpoint(out, point, seed)  # a run of this folder that did not finish
        then = f", continuing from {resume}" if resume is not None else ""
        print(f"\n=== sweep {sweep.name}: run {position + 1}/{len(runs)}: {label}{then} ===", flush=True)
        clear_stop()
        started = time.perf_counter()
        spent = _seconds((before or {}).get("time_s")) if resume is not None else 0.0  # its earlier attempts
        try:
            table[key] = run_point(sweep, index, point, extra, group, seed, out if leader else None, resume,
                                   (before or {}).get("curve"))  # fmt: skip
            table[key]["time_s"] = round(table[key]["time_s"] + spent, 1)
            stopped = stop_received()  # a stop signal whose run ended in an error first (a killed loader worker)
            code = 128 + stopped if stopped is not None else None
        except (KeyboardInterrupt, SystemExit) as err:  # Ctrl+C (Lightning turns it into SystemExit), SIGTERM
            code = err.code if isinstance(err, SystemExit) and isinstance(err.code, int) and err.code > 128 else 130
        if code is not None:  # the sweep stops here; a re-run continues this run from its last.ckpt
            table[key] = {"run": index, **point, "seed": seed, "status": "interrupted", "error": "interrupted",
                          "time_s": round(time.perf_counter() - started + spent, 1)}  # fmt: skip
            if leader:
                write_results(whole, sorted(table.values(), key=lambda row: row["run"]), out, group, extra)
            print(f"\nSweep {sweep.name} interrupted at run {index}; results so far in {out}/", file=sys.stderr)
            return code
        if leader:
            write_results(whole, sorted(table.values(), key=lambda row: row["run"]), out, group, extra)
    if leader:
        write_results(whole, sorted(table.values(), key=lambda row: row["run"]), out, group, extra)
    mine = [row for key, row in table.items() if key in planned]
    failed = sum(row["status"] != "ok" for row in mine)
    if leader:
        print(f"\nSweep {sweep.name}: {len(mine) - failed}/{len(mine)} runs succeeded; results in {out}/")
        print((out / "results.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
