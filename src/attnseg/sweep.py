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
    name: danet          # optional: the sweep's name (default: the file's stem)
    test: true           # optional: test the best checkpoint after each fit (default: true)

Each run is ``attnseg fit --config <base>... --<fixed>... <EXTRA> --<grid point>...`` (later arguments win, so the
grid point always holds), run in this process with a fresh CLI. A run that fails is recorded with its error and
the sweep goes on. The W&B runs of one sweep share a group (``<name>-<date>-<time>``) and are named after their
grid point. ``DIR`` (default ``runs/sweeps/<name>``) receives ``results.csv``, ``results.md`` and ``results.png``,
rewritten after every run. The exit status is 1 when a run failed.
"""

from __future__ import annotations

import argparse
import csv
import gc
import itertools
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from attnseg.callbacks import Dashboard, count_parameters
from attnseg.cli import AttnSegCLI, run_dir

SWEEP_KEYS = ("base", "fixed", "grid", "name", "test")
COLUMNS = ["run", "status", "val_mIoU", "test_mIoU", "params", "GFLOPs", "train_images_per_s", "time_s"]


@dataclass
class Sweep:
    """A parsed sweep file: base configs, shared overrides and the grid of overrides."""

    path: Path
    name: str
    base: list[Path]
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    test: bool = True

    @classmethod
    def from_file(cls, path: str | Path) -> "Sweep":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"sweep file {path}: no such file")
        spec = yaml.safe_load(path.read_text()) or {}
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: expected a mapping with keys {SWEEP_KEYS}")
        unknown = sorted(set(spec) - set(SWEEP_KEYS))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; expected some of {SWEEP_KEYS}")
        base = spec.get("base") or []
        base = [base] if isinstance(base, str) else list(base)
        if not base:
            raise ValueError(f"{path}: 'base' names no config; expected e.g. base: [../quickstart.yaml]")
        base = [(path.parent / b).resolve() for b in base]
        missing = [str(b) for b in base if not b.is_file()]
        if missing:
            raise ValueError(f"{path}: base configs not found: {missing} (paths are relative to the sweep file)")
        grid = spec.get("grid") or {}
        if not isinstance(grid, dict) or not grid:
            raise ValueError(f"{path}: 'grid' must map dotted options to lists of values, e.g. model.lr: [0.01, 0.02]")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{path}: grid.{key} is {values!r}; expected a non-empty list of values")
        fixed = spec.get("fixed") or {}
        if not isinstance(fixed, dict):
            raise ValueError(f"{path}: 'fixed' must map dotted options to values, got {fixed!r}")
        name = str(spec.get("name") or path.stem)
        return cls(path, name, base, dict(grid), dict(fixed), bool(spec.get("test", True)))

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, the first key varying slowest."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def arguments(self, point: dict[str, Any], extra: Sequence[str] = ()) -> list[str]:
        """``fit`` arguments of one run: base configs, fixed overrides, extra arguments, then the grid point."""
        configs = [f"--config={b}" for b in self.base]
        return ["fit", *configs, *override_args(self.fixed), *extra, *override_args(point)]


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
    """The CLI of one sweep run: names its W&B run and group, tests the best checkpoint after fitting, and raises
    argument errors instead of exiting.

    Args:
        args: the ``fit`` arguments.
        group: W&B group of the sweep's runs.
        label: W&B name of this run.
        test: test the best checkpoint (the last weights where there is none) after fitting.
    """

    def __init__(self, args: Sequence[str], group: str, label: str, test: bool = True) -> None:
        self.group, self.label, self.test_after_fit = group, label, test
        super().__init__(args=args, parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}})

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        loggers = self.config[self.subcommand].trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if getattr(logger, "class_path", "").rpartition(".")[2] == WandbLogger.__name__:
                logger.init_args.group = logger.init_args.get("group") or self.group
                logger.init_args.name = logger.init_args.get("name") or self.label

    def after_fit(self) -> None:
        super().after_fit()
        if self.test_after_fit:
            best = self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)


def run_point(sweep: Sweep, index: int, point: dict[str, Any], extra: Sequence[str], group: str) -> dict[str, Any]:
    """Fit (and test) one grid point; returns its result row (``status`` ``ok`` or ``failed`` with ``error``)."""
    row: dict[str, Any] = {"run": index, **point, "status": "failed", "error": ""}
    start = time.perf_counter()
    cli = None
    try:
        cli = SweepRunCLI(sweep.arguments(point, extra), group, point_label(point), sweep.test)
        trainer = cli.trainer
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_score is not None:
            row["val_mIoU"] = float(callback.best_model_score)
        elif "val/mIoU" in trainer.callback_metrics:
            row["val_mIoU"] = float(trainer.callback_metrics["val/mIoU"])
        if "test/mIoU" in trainer.callback_metrics:
            row["test_mIoU"] = float(trainer.callback_metrics["test/mIoU"])
        row["params"] = count_parameters(cli.model)[0]
        for cb in trainer.callbacks:
            if isinstance(cb, Dashboard):
                row["GFLOPs"] = cb.summary.get("model/GFLOPs")
                row["train_images_per_s"] = cb.summary.get("perf/train_images_per_s")
        row["run_dir"] = str(run_dir(trainer))
        row["best_checkpoint"] = (callback.best_model_path if callback else "") or ""
        row["status"] = "ok" if trainer.state.finished else f"stopped ({trainer.state.status.value})"
    except Exception as err:  # a failed run is a result, not the end of the sweep
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


def write_results(sweep: Sweep, rows: list[dict[str, Any]], out: Path, group: str, extra: Sequence[str]) -> None:
    """``results.csv`` (every field), ``results.md`` (a table for humans) and ``results.png`` (mIoU per run)."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(sweep.grid)
    fields = ["run", *keys, *COLUMNS[1:], "run_dir", "best_checkpoint", "error"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (bool, list, dict)) else v for k, v in row.items()})

    names = short_names(keys)
    header = ["#", *(names[k] for k in keys), "val mIoU (%)", "test mIoU (%)", "params (M)", "GFLOPs", "train img/s",
              "time (s)", "status"]  # fmt: skip
    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        f"Sweep file: `{sweep.path}`; base: {', '.join(f'`{b.name}`' for b in sweep.base)}; W&B group: `{group}`"
        + (f"; extra arguments: `{' '.join(extra)}`" if extra else ""),
        "",
        "val mIoU: the best validation score, whose checkpoint the test mIoU comes from.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h not in names.values() and h != "status" else "---" for h in header) + "|",
    ]
    for row in rows:
        params = row.get("params")
        cells = [
            str(row["run"]),
            *(json.dumps(row[k]) if not isinstance(row[k], str) else row[k] for k in keys),
            _format(row.get("val_mIoU"), 100),
            _format(row.get("test_mIoU"), 100),
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
    plot_results(rows, keys, out / "results.png", title=f"sweep {sweep.name}")


def plot_results(rows: list[dict[str, Any]], keys: Sequence[str], path: Path, title: str = "") -> bool:
    """Bar chart of val and test mIoU (%) per run; False (and a message) where matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"matplotlib is not installed: {path} not written (pip install matplotlib)")
        return False
    labels = [point_label({k: row[k] for k in keys}).replace(",", "\n") for row in rows]
    fig = Figure(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.38
    for offset, (key, label) in zip((-width / 2, width / 2), (("val_mIoU", "val"), ("test_mIoU", "test"))):
        values = [100 * row[key] if isinstance(row.get(key), float) else 0.0 for row in rows]
        bars = ax.bar([i + offset for i in range(len(rows))], values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values], fontsize=7)
    for i, row in enumerate(rows):
        if row["status"] != "ok":
            ax.text(i, 1.0, "failed", ha="center", va="bottom", rotation=90, color="tab:red")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=120)
    return True


# ------------------------------------------------------------------------------------------------ entry point


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
    return parser.parse_args(argv), extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``attnseg sweep``; returns the exit status (0: every run succeeded)."""
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sweep = Sweep.from_file(args.sweep)
    except ValueError as err:
        print(f"attnseg sweep: {err}", file=sys.stderr)
        return 2
    points = sweep.points()
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    if args.dry_run:
        then = ", then test on the best checkpoint" if sweep.test else ""
        print(f"Sweep {sweep.name}: {len(points)} runs (fit{then})")
        for index, point in enumerate(points):
            print(f"[{index}] {point_label(point)}")
            print("    attnseg " + " ".join(sweep.arguments(point, extra)))
        print(f"Results would go to {out}/results.{{csv,md,png}}")
        return 0

    group = f"{sweep.name}-{datetime.now():%Y%m%d-%H%M%S}"
    leader = rank_zero_only.rank == 0  # with several processes (DDP) every one runs the sweep; one writes results
    rows: list[dict[str, Any]] = []
    for index, point in enumerate(points):
        print(f"\n=== sweep {sweep.name}: run {index + 1}/{len(points)}: {point_label(point)} ===", flush=True)
        try:
            rows.append(run_point(sweep, index, point, extra, group))
        except (KeyboardInterrupt, SystemExit):  # Ctrl+C (Lightning turns it into SystemExit) ends the sweep
            rows.append({"run": index, **point, "status": "interrupted", "error": "interrupted"})
            if leader:
                write_results(sweep, rows, out, group, extra)
            print(f"\nSweep {sweep.name} interrupted at run {index}; results so far in {out}/", file=sys.stderr)
            return 130
        if leader:
            write_results(sweep, rows, out, group, extra)
    failed = sum(row["status"] != "ok" for row in rows)
    if leader:
        print(f"\nSweep {sweep.name}: {len(rows) - failed}/{len(rows)} runs succeeded; results in {out}/")
        print((out / "results.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
