"""Learning curves: validation mIoU and context IoU over training steps, per run and as mean ± std over seeds.

A curve is read from logged validation metrics: a Lightning ``metrics.csv`` (CSV logger) or the file that
``CurveRecorder`` writes in the same columns (``step``, ``val/mIoU``, ``val/IoU/<class>``) whatever the logger.
The context IoU of a validation is the mean of ``val/IoU/<class>`` over the context classes. ``attnseg sweep``
records one curve per run and draws ``learning_curves.png``; ``steps_to`` gives the first step at which a curve
reaches a threshold, so that a comparison's budget is visible rather than hidden.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning.pytorch import Callback, LightningModule, Trainer

from attnseg.constants import MONITOR

MIOU = MONITOR
CLASS_IOU = "val/IoU/"


class CurveRecorder(Callback):
    """Appends ``step``, ``val/mIoU`` and every ``val/IoU/<class>`` to ``path`` after each validation of a fit
    (sanity checks left out), from the metrics the task logged."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or not trainer.is_global_zero or MIOU not in metrics:
            return
        row = {"step": trainer.global_step, MIOU: float(metrics[MIOU])}
        row.update({k: float(v) for k, v in sorted(metrics.items()) if k.startswith(CLASS_IOU)})
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


def read_curve(path: str | Path, context_classes: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``[{"step", "mIoU", "context"}, ...]`` in step order, one entry per validation step in ``path`` (the last row
    of a step that appears twice; rows without ``val/mIoU`` skipped; ``context`` is None without context classes).
    A context class missing from the file is an error naming the file and the classes it has."""
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get(MIOU) not in (None, "")]
    if rows and context_classes:
        missing = [c for c in context_classes if f"{CLASS_IOU}{c}" not in rows[0]]
        if missing:
            have = [k[len(CLASS_IOU) :] for k in rows[0] if k.startswith(CLASS_IOU)]
            raise ValueError(f"{path}: no val/IoU/ column for context classes {missing}; it has {have}")
    curve = {}  # by step: a resumed run may log a step again, and its later row holds
    for row in rows:
        context = None
        if context_classes:
            context = statistics.fmean(float(row[f"{CLASS_IOU}{c}"]) for c in context_classes)
        step = int(float(row["step"]))
        curve[step] = {"step": step, "mIoU": float(row[MIOU]), "context": context}
    return [curve[step] for step in sorted(curve)]


def steps_to(curve: Sequence[dict[str, Any]], key: str, threshold: float) -> Optional[int]:
    """The first step at which ``curve``'s ``key`` reaches ``threshold``; None if it never does."""
    return next((p["step"] for p in curve if p[key] is not None and p[key] >= threshold), None)


def mean_curve(curves: Sequence[Sequence[dict[str, Any]]], key: str) -> list[tuple[int, float, float]]:
    """``(step, mean, std)`` of ``key`` over several runs' curves (seeds), at the steps every run validated at."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    common = set.intersection(*({p["step"] for p in c if p[key] is not None} for c in curves))
    out = []
    for step in sorted(common):
        values = [next(p[key] for p in c if p["step"] == step) for c in curves]
        out.append((step, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0))
    return out


def curves_figure(curves: dict[str, Sequence[Sequence[dict[str, Any]]]], context: bool, title: str = ""):
    """A matplotlib Figure of mean ± std learning curves, one line per name (a grid point) over its runs: val mIoU,
    and the context IoU in a second panel when ``context``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [("mIoU", "val mIoU (%)")] + ([("context", "val context IoU (%)")] if context else [])
    fig = Figure(figsize=(5.0 * len(keys), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    for index, (key, label) in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), index + 1)
        for name, runs in curves.items():
            points = mean_curve(runs, key)
            if not points:
                continue
            steps = [s for s, _, _ in points]
            mean = [100 * m for _, m, _ in points]
            std = [100 * d for _, _, d in points]
            (line,) = ax.plot(steps, mean, marker=".", label=f"{name} (n={len(runs)})")
            ax.fill_between(
                steps,
                [m - d for m, d in zip(mean, std)],
                [m + d for m, d in zip(mean, std)],
                color=line.get_color(),
                alpha=0.2,
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


PLOTTED = (("train/loss", "training loss"), (MIOU, "val mIoU (%)"), ("val/context_IoU", "val context IoU (%)"))


def read_series(path: str | Path, columns: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``{column: [(step, value), ...]}`` in step order for each of ``columns`` that ``path`` (a ``metrics.csv``)
    has values of; a step logged twice (a resumed run) keeps its later value."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        for column in columns:
            if row.get(column) not in (None, ""):
                series.setdefault(column, {})[int(float(row["step"]))] = float(row[column])
    return {column: sorted(values.items()) for column, values in series.items()}


def metrics_csv(path: str | Path) -> Path:
    """The ``metrics.csv`` of a run folder, or the file itself; an error naming the path otherwise."""
    path = Path(path)
    found = path / "metrics.csv" if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (expected a CSV logger's run folder or its metrics.csv)")
    return found


def metrics_figure(runs: dict[str, str | Path]):
    """A matplotlib Figure of the training curves of runs logged by the CSV logger, one line per run (name: its
    ``metrics.csv``): training loss, val mIoU and, where logged, the context IoU, against the training step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = {name: read_series(path, [c for c, _ in PLOTTED]) for name, path in runs.items()}
    panels = [(c, label) for c, label in PLOTTED if any(c in series for series in data.values())]
    if not panels:
        raise ValueError(f"{', '.join(str(p) for p in runs.values())}: no train/loss or val/mIoU logged yet")
    fig = Figure(figsize=(4.6 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for index, (column, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for name, series in data.items():
            points = series.get(column, [])
            scale = 1 if column == "train/loss" else 100
            ax.plot(
                [s for s, _ in points],
                [scale * v for _, v in points],
                marker="." if len(points) < 50 else None,
                label=name,
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        if column == "train/loss":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=7, loc="lower right")
    return fig
