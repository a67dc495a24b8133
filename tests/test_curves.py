"""Learning curves: read from a logged metrics file, steps to a threshold, mean ± std over seeds, the figure, and
the sweep's "steps to 80 % context IoU" column and ``learning_curves.png``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from attnseg.curves import curves_figure, mean_curve, read_curve, steps_to
from attnseg.sweep import Sweep, summarise, write_results

CLASSES = ["road", "warm_blob", "cold_blob"]


def metrics_file(path: Path, validations: list[tuple[int, float, float, float]]) -> Path:
    """A metrics.csv as Lightning's CSV logger writes it: training rows without validation values between the
    validation rows ``(step, mIoU, warm IoU, cold IoU)``, columns in alphabetical order."""
    columns = ["epoch", "step", "train/loss", "val/IoU/cold_blob", "val/IoU/road", "val/IoU/warm_blob", "val/mIoU"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for epoch, (step, miou, warm, cold) in enumerate(validations):
            writer.writerow({"epoch": epoch, "step": step - 1, "train/loss": 1.0 / (epoch + 1)})
            writer.writerow(
                {
                    "epoch": epoch,
                    "step": step - 1,
                    "val/IoU/cold_blob": cold,
                    "val/IoU/road": 0.9,
                    "val/IoU/warm_blob": warm,
                    "val/mIoU": miou,
                }
            )
    return path


def test_a_curve_is_read_from_the_logged_per_class_iou(tmp_path):
    path = metrics_file(tmp_path / "metrics.csv", [(300, 0.5, 0.2, 0.4), (100, 0.3, 0.1, 0.1), (200, 0.4, 0.8, 0.9)])
    curve = read_curve(path, ["warm_blob", "cold_blob"])
    assert [p["step"] for p in curve] == [99, 199, 299]  # sorted by step, training rows skipped
    assert [p["mIoU"] for p in curve] == [0.3, 0.4, 0.5]
    assert [p["context"] for p in curve] == pytest.approx([0.1, 0.85, 0.3])
    assert read_curve(path)[0]["context"] is None  # no context classes: mIoU only
    # the first step at or above a threshold, or None when the curve never gets there
    assert steps_to(curve, "context", 0.8) == 199
    assert steps_to(curve, "context", 0.86) is None
    assert steps_to(curve, "mIoU", 0.3) == 99
    with pytest.raises(ValueError, match=r"metrics.csv: no val/IoU/ column for context classes \['sky'\]; it has"):
        read_curve(path, ["sky"])
    # a run resumed from a checkpoint may validate a step again: one point per step, the later row
    again = metrics_file(tmp_path / "again.csv", [(100, 0.3, 0.1, 0.1), (200, 0.4, 0.8, 0.9), (200, 0.6, 0.5, 0.5)])
    assert [(p["step"], p["mIoU"]) for p in read_curve(again)] == [(99, 0.3), (199, 0.6)]


def test_mean_curve_over_seeds_uses_the_steps_every_run_has():
    a = [{"step": 10, "mIoU": 0.2, "context": 0.1}, {"step": 20, "mIoU": 0.4, "context": 0.5}]
    b = [
        {"step": 10, "mIoU": 0.4, "context": 0.3},
        {"step": 20, "mIoU": 0.6, "context": 0.9},
        {"step": 30, "mIoU": 0.7, "context": 0.9},
    ]
    assert mean_curve([a, b], "mIoU") == [
        (10, pytest.approx(0.3), pytest.approx(0.1414, abs=1e-4)),
        (20, pytest.approx(0.5), pytest.approx(0.1414, abs=1e-4)),
    ]
    assert mean_curve([a], "context") == [(10, 0.1, 0.0), (20, 0.5, 0.0)]
    fig = curves_figure({"R=1": [a, b], "R=2": [b]}, context=True, title="t")
    assert len(fig.axes) == 2
    assert [line.get_label() for line in fig.axes[0].lines] == ["R=1 (n=2)", "R=2 (n=1)"]
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx([20.0, 70.0])  # context in %, mean of a and b


def recurrence_sweep(tmp_path: Path, **options) -> Sweep:
    """A sweep of R = 1, 2 over seeds 0-1 with the blobs as context classes."""
    grid = {"model.head.init_args.recurrence": [1, 2]}
    return Sweep(
        tmp_path / "s.yaml", "s", [], grid, seeds=[0, 1], context_classes=["warm_blob", "cold_blob"], **options
    )


def rows_with_curves(sweep: Sweep, curves: dict, tmp_path: Path) -> list[dict]:
    """One ok row per run (scores 0.5), its curve ``curves[run]`` of ``(step, mIoU, warm, cold)`` written as a
    metrics file, and its steps to 80 % context IoU read from that file."""
    rows = []
    for index, (point, seed) in enumerate(sweep.runs()):
        # steps logged as Lightning does: validation at global step s is recorded as step s - 1
        path = metrics_file(tmp_path / f"run{index}.csv", [(s + 1, m, w, c) for s, m, w, c in curves[index]])
        reached = steps_to(read_curve(path, sweep.context_classes), "context", 0.8)
        rows.append(
            {"run": index, **point, "seed": seed, "status": "ok", "val_mIoU": 0.5, "test_mIoU": 0.5}
            | {"test_context_IoU": 0.5, "steps_to_context": reached, "curve": str(path)}
        )
    return rows


def test_sweep_reports_steps_to_80_percent_and_draws_the_curves(tmp_path):
    sweep = recurrence_sweep(tmp_path)
    curves = {  # R = 2 reaches 0.8 at steps 200 and 400; R = 1 never does, one of its seeds not at all
        0: [(100, 0.3, 0.3, 0.3), (200, 0.5, 0.4, 0.4)],
        1: [(100, 0.3, 0.3, 0.3), (200, 0.5, 0.5, 0.5)],
        2: [(100, 0.5, 0.6, 0.6), (200, 0.9, 0.8, 0.82)],
        3: [(100, 0.5, 0.6, 0.6), (200, 0.7, 0.7, 0.7), (400, 0.9, 0.85, 0.85)],
    }
    rows = rows_with_curves(sweep, curves, tmp_path)
    assert [row["steps_to_context"] for row in rows] == [None, None, 200, 400]
    summary = summarise(sweep, rows)
    assert summary[0]["steps_to_context"] == "0/2" and summary[1]["steps_to_context"] == pytest.approx(
        (300, 141.42), abs=0.01
    )
    write_results(sweep, rows, tmp_path / "out", "g", [])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| recurrence | val mIoU (%) | test mIoU (%) | context IoU (%) | steps to 80% context IoU | seeds |" in md
    assert "| 1 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 0/2 | 2 |" in md
    assert "| 2 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 300 ± 141 | 2 |" in md
    assert Image.open(tmp_path / "out" / "learning_curves.png").size[0] > 500


def test_sweep_reports_the_context_iou_at_its_early_step(tmp_path):
    """``early_step: 200`` adds the val context IoU at that validation (mean ± std over seeds; per run in the run
    table); a run whose curve has no validation at that step leaves its point's cell empty."""
    sweep = recurrence_sweep(tmp_path, early_step=200)
    curves = {
        0: [(100, 0.3, 0.3, 0.3), (200, 0.5, 0.4, 0.2)],  # context 0.3 at step 200
        1: [(100, 0.3, 0.3, 0.3), (200, 0.5, 0.5, 0.3)],  # 0.4
        2: [(100, 0.5, 0.6, 0.6), (200, 0.9, 0.8, 0.82)],  # 0.81
        3: [(100, 0.5, 0.6, 0.6), (400, 0.9, 0.85, 0.85)],  # no validation at step 200
    }
    rows = rows_with_curves(sweep, curves, tmp_path)
    summary = summarise(sweep, rows)
    assert summary[0]["early_context"] == pytest.approx((0.35, 0.0707), abs=1e-4)
    assert "early_context" not in summary[1]
    write_results(sweep, rows, tmp_path / "out", "g", [])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| context IoU (%) | val context IoU at step 200 (%) | steps to 80% context IoU | seeds |" in md
    assert "| 1 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 35.0 ± 7.1 | 0/2 | 2 |" in md
    assert "| 2 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | - | 300 ± 141 | 2 |" in md
    assert "| 2 | 2 | 0 | 50.00 | 50.00 | 50.00 | 81.00 | 200 |" in md  # run 2: its own value
    assert "| 3 | 2 | 1 | 50.00 | 50.00 | 50.00 | - | 400 |" in md
