"""A sweep's results: the summary per grid point (mean and std over seeds), ``results.csv``, ``results.md``,
``results.png`` and ``learning_curves.png``, and reading them back."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from attnseg.curves import curves_figure, read_curve
from attnseg.sweep.spec import Sweep, point_label, run_key, short_names

COLUMNS = [
    "run",
    "seed",
    "status",
    "val_mIoU",
    "test_mIoU",
    "test_context_IoU",
    "steps_to_context",
    "params",
    "GFLOPs",
    "train_images_per_s",
    "time_s",
]
CONTEXT_THRESHOLD = 0.8  # "steps to 80 % context IoU": the val context IoU a run's curve must reach
SCORES = (("val_mIoU", "val mIoU"), ("test_mIoU", "test mIoU"), ("test_context_IoU", "context IoU"))


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
            early = [context_at_early_step(sweep, row) for row in runs]
            if sweep.early_step is not None and all(v is not None for v in early):
                entry["early_context"] = _mean_std(early)
        summary.append(entry)
    return summary


def context_at_early_step(sweep: Sweep, row: dict[str, Any]) -> Optional[float]:
    """The val context IoU of ``row``'s learning curve at ``sweep.early_step``; None without an early step, a curve
    file or a validation at that step."""
    path = row.get("curve")
    if sweep.early_step is None or not path or not Path(path).is_file():
        return None
    curve = read_curve(path, sweep.context_classes)
    return next((p["context"] for p in curve if p["step"] == sweep.early_step), None)


def run_seconds(value: Any) -> float:
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
    early = sweep.early_step
    if early is not None:
        steps_header.insert(0, f"val context IoU at step {early} (%)")
    header = [
        *(names[k] for k in keys),
        *(f"{label} (%)" for _, label in scores),
        *steps_header,
        "seeds",
        "time (s)",
        "status",
    ]
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
        )
        + (
            f" val context IoU at step {early}: the validation at that step, a measure of sample efficiency."
            if early is not None
            else ""
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if h in names.values() or h == "status" else "---:" for h in header) + "|",
    ]
    for entry in summary:
        cells = [json.dumps(entry[k]) if not isinstance(entry[k], str) else entry[k] for k in keys]
        cells += [_pm(entry.get(key)) for key, _ in scores]
        if early is not None:
            cells.append(_pm(entry.get("early_context")))
        if context:
            steps = entry.get("steps_to_context")
            cells.append(steps if isinstance(steps, str) else _pm(steps, scale=1.0, digits=0))
        time_s = entry.get("time_s")
        cells += [str(entry["n"]), f"{time_s[0]:.0f}" if time_s else "-", entry["status"]]
        lines.append("| " + " | ".join(cells) + " |")

    run_header = [
        "#",
        *(names[k] for k in keys),
        "seed",
        *(f"{label} (%)" for _, label in scores),
        *steps_header,
        "params (M)",
        "GFLOPs",
        "train img/s",
        "time (s)",
        "status",
    ]
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
            *([_format(context_at_early_step(sweep, row), 100)] if early is not None else []),
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
    plot_results(
        summary,
        keys,
        out / "results.png",
        title=f"sweep {sweep.name} (mean ± std over seeds {sweep.seeds})",
        context=bool(context),
    )
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
        bars = ax.bar(
            [i + offset for i in range(len(summary))],
            means,
            width,
            yerr=[0.0 if math.isnan(d) else d for d in stds],
            capsize=3,
            label=label,
        )
        texts = [(f"{m:.1f}" if math.isnan(d) else f"{m:.1f}±{d:.1f}") if m else "" for m, d in zip(means, stds)]
        ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
    for i, entry in enumerate(summary):
        if entry["status"] != "ok":
            ax.text(i, 1.0, entry["status"], ha="center", va="bottom", rotation=90, color="tab:red")
    ax.set_xticks(range(len(summary)), labels, fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    return fig


def plot_results(
    summary: list[dict[str, Any]], keys: Sequence[str], path: Path, title: str = "", context: bool = False
) -> bool:
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
