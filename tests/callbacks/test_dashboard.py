"""The dashboard: what a short fit leaves in an offline W&B run (media, tables, summary numbers, config, the best
validation), in TensorBoard's event files and, with the CSV logger, in metrics.csv and <run dir>/media/; the drawing
and measuring helpers behind it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from attnseg.callbacks import (
    MAX_CLASS_SERIES,
    TABLE_COLUMNS,
    ClassTables,
    Complexity,
    LearningRateMonitor,
    PredictionOverlays,
    Throughput,
    class_series,
)
from attnseg.data.synthetic import SyntheticShapes
from attnseg.profiling import count_flops, count_parameters
from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, run_cli
from tests.helpers.tensorboard_events import read_events
from tests.helpers.wandb_offline import read_run, wandb_in

CLASSES = list(SyntheticShapes.classes)
# Two epochs of two steps, each followed by a validation on the 8 validation images (two batches of 4).
SHORT = [
    "--config",
    QUICKSTART,
    *FAST,
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=2",
    "--trainer.log_every_n_steps=1",
    "--throughput.warmup_steps=1",
    "--model.optimizer=sgd",
    "--model.head_lr_mult=10",
]
VAL_PIXELS = 8 * 32 * 32


@pytest.mark.slow
def test_wandb_offline_run_holds_media_tables_and_summary(tmp_path):
    cli = run_cli("fit", *SHORT, "--overlays.num_images=3", *wandb_in(tmp_path / "runs"))
    (run,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    media = run / "files" / "media"

    # overlays: 3 images per validation, each with ground-truth and prediction masks named by class
    images = sorted((media / "images" / "val").glob("predictions_*.png"))
    assert len(images) == 2 * 3
    assert Image.open(images[0]).size == (32, 32)
    assert list((media / "images" / "mask" / "val").glob("predictions_*.mask.png"))
    offline = read_run(run)
    labels = offline["config"]["_wandb"]["mask/class_labels"]
    assert {entry["value"]["6"] for entry in labels.values()} == {"cold_blob"}

    # per-class IoU table at each validation; the last one agrees with the logged scalars
    tables = sorted((media / "table" / "val").glob("IoU_table_*.table.json"), key=lambda p: int(p.name.split("_")[2]))
    assert len(tables) == 2
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == TABLE_COLUMNS
    assert [row[0] for row in table["data"]] == CLASSES
    summary = offline["summary"]
    for name, iou, _, gt_pixels, _, epoch, step in table["data"]:
        assert (epoch, step) == (1, 3)
        assert iou == pytest.approx(summary[f"val/IoU/{name}"]) or (math.isnan(iou) and gt_pixels == 0)
    assert sum(row[3] for row in table["data"]) == VAL_PIXELS

    # confusion matrix chart: one cell per (ground truth, prediction) pair, counting every validation pixel
    charts = list((media / "table" / "val").glob("confusion_matrix_table_*.table.json"))
    assert len(charts) == 2
    chart = json.loads(charts[0].read_text())
    assert chart["columns"] == ["Actual", "Predicted", "nPredictions"] and len(chart["data"]) == len(CLASSES) ** 2
    assert sum(row[2] for row in chart["data"]) == VAL_PIXELS

    # complexity and throughput in the summary; learning rate and losses of every output in the history
    params, _ = count_parameters(cli.model)
    assert summary["model/params"] == params
    assert summary["model/GFLOPs"] == pytest.approx(count_flops(cli.model, (32, 32)) / 1e9)
    assert summary["perf/train_images_per_s"] > 0 and summary["perf/val_images_per_s"] > 0
    assert {"lr-SGD/encoder", "lr-SGD/head", "train/loss", "train/loss_out", "train/loss_aux", "val/aAcc"} <= offline[
        "history_keys"
    ]
    # the resolved config, dashboard options included
    assert offline["config"]["overlays"]["num_images"] == 3
    assert offline["config"]["model"]["head"]["class_path"] == "attnseg.heads.FCNHead"


def script_val_miou(monkeypatch, values: list[float]) -> None:
    """The fit's validations report these val/mIoU values in turn, whatever the model scores (the sanity check, the
    per-class IoU and the confusion matrix are the model's own)."""
    from attnseg.task import SegmentationTask

    original, left = SegmentationTask._log_metrics, list(values)

    def scripted(task, collection, prefix):
        if prefix != "val/" or task.trainer.sanity_checking:
            return original(task, collection, prefix)
        compute, value = collection.compute, torch.tensor(left.pop(0))
        collection.compute = lambda: {**compute(), "val/mIoU": value}
        try:
            return original(task, collection, prefix)
        finally:
            del collection.compute

    monkeypatch.setattr(SegmentationTask, "_log_metrics", scripted)


@pytest.mark.slow
def test_wandb_summary_keeps_the_best_validation_and_a_table_replaces_many_series(tmp_path, monkeypatch):
    """val/mIoU falls after the first validation: the run summary holds its maximum and when it was reached, not the
    last value. More classes than MAX_CLASS_SERIES (lowered to 3 for the 7 synthetic classes): the per-class IoU is a
    table per validation (with its epoch and step), not one series per class."""
    assert class_series(MAX_CLASS_SERIES) and not class_series(MAX_CLASS_SERIES + 1)
    monkeypatch.setattr("attnseg.constants.MAX_CLASS_SERIES", 3)
    script_val_miou(monkeypatch, [0.6, 0.4])
    cli = run_cli("fit", *SHORT, *wandb_in(tmp_path / "runs"))
    (run,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    offline = read_run(run)
    summary, history = offline["summary"], offline["history"]

    logged = [(row["trainer/global_step"], row["val/mIoU"]) for row in history if "val/mIoU" in row]
    assert logged == [(1, pytest.approx(0.6)), (3, pytest.approx(0.4))]
    assert summary["val/mIoU"] == {"max": pytest.approx(0.6)}
    assert summary["best/val_mIoU"] == pytest.approx(0.6) and summary["best/epoch"] == 0 and summary["best/step"] == 1
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(0.6)  # the checkpoint agrees

    assert not [key for key in offline["history_keys"] if key.startswith("val/IoU/")]
    media = run / "files" / "media" / "table" / "val"
    found = sorted(media.glob("IoU_table_*.table.json"), key=lambda p: int(p.name.split("_")[2]))
    assert len(found) == 2
    for path, (epoch, step) in zip(found, [(0, 1), (1, 3)]):
        table = json.loads(path.read_text())
        assert table["columns"] == TABLE_COLUMNS
        assert [row[0] for row in table["data"]] == CLASSES
        assert {tuple(row[-2:]) for row in table["data"]} == {(epoch, step)}
    assert "val/IoU_table" in summary


@pytest.mark.slow
def test_tensorboard_gets_the_scalars_images_tables_config_and_hparams():
    cli = run_cli("fit", *SHORT, "--config", CONFIGS / "logger/tensorboard.yaml")
    directory = Path(cli.trainer.logger.log_dir)
    assert directory == Path("runs", "attnseg", "fcn-r18-s0")  # named like the W&B run
    events = read_events(directory)
    scalars, images, text = events["scalars"], events["images"], events["text"]

    # HParams: one session with the run's options and its real metrics, no placeholder hp_metric
    hp = events["hparams"]
    assert hp["sessions"] == 1 and "hp_metric" not in scalars
    assert hp["metrics"] == ["val/mIoU", "best/val_mIoU", "val/context_IoU"]
    expected = {"head": "fcn", "encoder": "resnet18", "dataset": "SyntheticShapes", "variant": "far", "seed": 0}
    assert expected.items() <= hp["values"].items()
    context = scalars["val/context_IoU"]  # the mean IoU of the two context classes
    assert [step for step, _ in context] == [1, 3]
    for (_, value), (_, cold), (_, warm) in zip(context, scalars["val/IoU/cold_blob"], scalars["val/IoU/warm_blob"]):
        assert value == pytest.approx((cold + warm) / 2)

    # scalars of each validation (step 1 and 3), per-class IoU, complexity, throughput, the best validation
    assert [step for step, _ in scalars["val/mIoU"]] == [1, 3]
    assert all(f"val/IoU/{name}" in scalars for name in CLASSES)
    best = max(value for _, value in scalars["val/mIoU"])
    assert scalars["best/val_mIoU"][-1][1] == pytest.approx(best)
    params, _ = count_parameters(cli.model)
    assert scalars["model/params"] == [(0, params)]
    assert {"model/GFLOPs", "perf/train_images_per_s", "perf/val_images_per_s", "lr-SGD/encoder"} <= set(scalars)

    # overlays and confusion matrix as images, the IoU table as Markdown, at the steps of the scalars
    for tag in ("val/predictions", "val/confusion_matrix"):
        assert [step for step, _ in images[tag]] == [1, 3]
        assert all(min(size) > 100 for _, size in images[tag])
    step, table = text["val/IoU_table"][-1]
    assert step == 3 and table.splitlines()[0] == "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert len(table.splitlines()) == 2 + len(CLASSES) and "| cold_blob |" in table

    # the resolved config the CLI saved in the run directory, as text at the start of the fit
    ((step, config),) = text["config"]
    assert step == 0 and config.endswith("\n```")
    assert (directory / "config.yaml").read_text().rstrip() in config
    assert "class_path: lightning.pytorch.loggers.TensorBoardLogger" in config and "attnseg.heads.FCNHead" in config


@pytest.mark.slow
def test_csv_logger_gets_the_numbers_and_media_files():
    cli = run_cli("fit", *SHORT, "--config", CONFIGS / "logger/csv.yaml")
    directory = Path(cli.trainer.logger.log_dir)
    with open(directory / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    expected = {
        "model/params",
        "model/GFLOPs",
        "perf/train_images_per_s",
        "perf/val_images_per_s",
        "lr-SGD/encoder",
        "lr-SGD/head",
        "train/loss_out",
        "train/loss_aux",
        "val/mIoU",
        "val/IoU/cold_blob",
    }
    assert expected <= columns
    # the learning rates are the optimiser's: the head's is 10x the encoder's
    lrs = [(float(r["lr-SGD/encoder"]), float(r["lr-SGD/head"])) for r in rows if r["lr-SGD/encoder"]]
    assert lrs and all(head == pytest.approx(10 * enc) for enc, head in lrs)

    media = directory / "media" / "val"
    steps = sorted(int(r["step"]) for r in rows if r["val/mIoU"])
    assert steps == [1, 3]  # Lightning logs a validation at the step before the next update
    for step in steps:
        assert (media / f"predictions_step{step:06d}.png").is_file()
        assert Image.open(media / f"confusion_matrix_step{step:06d}.png").size[0] > 100
    with open(media / "IoU_table_step000003.csv") as f:
        table = list(csv.DictReader(f))
    last = next(r for r in rows if r["val/mIoU"] and int(r["step"]) == 3)
    assert [r["class"] for r in table] == CLASSES
    for r in table:
        assert float(r["IoU"]) == pytest.approx(float(last[f"val/IoU/{r['class']}"]), nan_ok=True)

    # test: table and confusion matrix of the test set in the test run's own directory
    test = run_cli(
        "test",
        "--config",
        QUICKSTART,
        *FAST,
        "--config",
        CONFIGS / "logger/csv.yaml",
        "--ckpt_path",
        cli.trainer.checkpoint_callback.best_model_path,
    )
    test_media = Path(test.trainer.logger.log_dir) / "media" / "test"
    assert sorted(p.name for p in test_media.iterdir()) == [
        "IoU_table_step000000.csv",
        "confusion_matrix_step000000.png",
    ]


@pytest.mark.slow
def test_media_switches_and_no_logger():
    csv_args = ["--config", CONFIGS / "logger/csv.yaml", "--trainer.max_epochs=1"]
    cli = run_cli("fit", *SHORT, *csv_args, "--overlays.num_images=0", "--tables.enabled=false")
    directory = Path(cli.trainer.logger.log_dir)
    assert not (directory / "media").exists()
    assert "model/GFLOPs" in (directory / "metrics.csv").read_text().splitlines()[0]
    # without a logger the dashboard and learning-rate monitor stay silent instead of failing
    cli = run_cli("fit", *SHORT, "--trainer.max_epochs=1", "--trainer.logger=false")
    assert cli.trainer.state.finished
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {PredictionOverlays, ClassTables, Complexity, Throughput, LearningRateMonitor} <= kinds
    measured = [c.summary for c in cli.trainer.callbacks if isinstance(c, (Complexity, Throughput))]
    assert measured == [{}, {}]


@pytest.mark.slow
def test_overlays_reuse_the_validation_steps_predictions(monkeypatch):
    """Drawing the overlays runs no inference of its own: as many forward passes with overlays as without."""
    from attnseg.task import SegmentationTask

    calls = []
    original = SegmentationTask.predict_logits
    monkeypatch.setattr(SegmentationTask, "predict_logits", lambda self, x: calls.append(1) or original(self, x))
    csv_args = ["--config", CONFIGS / "logger/csv.yaml", "--trainer.max_epochs=1"]
    counts = {}
    for n in (0, 3):
        calls.clear()
        cli = run_cli("fit", *SHORT, *csv_args, f"--overlays.num_images={n}")
        counts[n] = len(calls)
    assert counts[3] == counts[0] > 0
    media = Path(cli.trainer.logger.log_dir) / "media" / "val"
    assert list(media.glob("predictions_step*.png"))
