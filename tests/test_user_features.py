"""Features a researcher expects from the template, each composed with a real run: EMA weights, the learning-rate
finder, the dataset browser (check-data --show), training curves from metrics.csv (attnseg plot), confusion-matrix
labels inside the figure."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from attnseg.__main__ import run
from attnseg.curves import metrics_figure
from attnseg.data import CamVid, SyntheticShapes
from attnseg.visualize import confusion_figure
from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, run_cli

TINY = [
    "--config",
    QUICKSTART,
    *FAST,
    "--config",
    CONFIGS / "logger/csv.yaml",
    "--trainer.limit_val_batches=1",
    "--overlays.num_images=0",
]


def test_ema_weights_are_validated_saved_and_resumed(tmp_path):
    """trainer/ema: the checkpoint's state_dict holds the averaged weights (what test and predict load), the raw
    weights ride along, a resumed fit continues both, and test runs on the checkpoint."""
    ema = tmp_path / "ema.yaml"
    ema.write_text((CONFIGS / "trainer/ema.yaml").read_text().replace("decay: 0.999", "decay: 0.5"))
    fit = run_cli("fit", *TINY, "--config", ema, "--trainer.max_steps=4")
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 and "current_model_state" in saved and "averaging_state" in saved
    key = "model.head.convs.0.conv.weight"
    assert not torch.equal(saved["state_dict"][key], saved["current_model_state"][key])  # averaged, not raw
    assert torch.equal(fit.model.state_dict()[key], saved["state_dict"][key])  # the fit ends on the average

    resumed = run_cli("fit", *TINY, "--config", ema, "--trainer.max_steps=6", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 6
    test = run_cli("test", *TINY, "--ckpt_path", last)
    assert "test/mIoU" in test.trainer.callback_metrics


def test_lr_finder_runs_before_the_fit_and_trains_with_its_suggestion(tmp_path, caplog):
    finder = tmp_path / "lr_find.yaml"
    text = (CONFIGS / "trainer/lr_find.yaml").read_text().replace("num_training_steps: 100", "num_training_steps: 20")
    finder.write_text(text + "        early_stop_threshold: null\n")
    data = ["--data.dataset_args.num_samples=16", "--data.batch_size=2", "--trainer.max_steps=2"]
    fit = run_cli("fit", *TINY, *data, "--config", finder)
    run_folder = Path(fit.trainer.logger.log_dir)
    assert Image.open(run_folder / "lr_find.png").size[0] > 300
    (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("learning-rate finder")]
    assert "20 steps from 1e-06 to 1; training with the suggestion lr=" in message
    suggested = float(message.split("lr=")[1].split()[0])
    assert fit.model.hparams.lr == pytest.approx(suggested, rel=1e-2) and fit.model.hparams.lr != 0.002
    assert fit.trainer.global_step == 2  # the search's steps were undone: the run trained its own
    assert not list(Path.cwd().glob(".lr_find_*.ckpt"))  # the search's checkpoint is gone


def test_check_data_show_draws_samples_with_their_labels(tmp_path, capsys):
    out = tmp_path / "shown"
    code = run(["check-data", "--config", str(QUICKSTART), *FAST, "--show", "3", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'train.png'}" in printed and f"wrote {out / 'val.png'}" in printed
    for name in ("train", "val"):
        pixels = np.asarray(Image.open(out / f"{name}.png").convert("RGB"))
        assert pixels.shape[0] > 3 * 150  # three rows of samples
        colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7].tolist()}
        assert tuple(SyntheticShapes.palette[5]) in colours or tuple(SyntheticShapes.palette[6]) in colours
    with pytest.raises(ValueError, match="--show -1: expected a number of samples"):
        run(["check-data", "--config", str(QUICKSTART), *FAST, "--show", "-1"])


@pytest.mark.slow
def test_plot_draws_the_curves_of_csv_runs(tmp_path, capsys):
    fits = [
        run_cli(
            "fit",
            *TINY,
            "--trainer.max_steps=4",
            "--trainer.log_every_n_steps=1",
            "--trainer.val_check_interval=1",
            f"--seed_everything={seed}",
        )
        for seed in (0, 1)
    ]
    folders = [Path(f.trainer.logger.log_dir) for f in fits]
    assert run(["plot", str(folders[0])]) == 0
    assert f"wrote {folders[0] / 'curves.png'} (1 run(s))" in capsys.readouterr().out
    out = tmp_path / "both.png"
    assert run(["plot", *map(str, folders), "--out", str(out)]) == 0 and out.is_file()

    figure = metrics_figure({f.name: f / "metrics.csv" for f in folders})
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == ["training loss", "val mIoU (%)", "val context IoU (%)"]
    for ax, column in zip(figure.axes, ("train/loss", "val/mIoU")):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [f.name for f in folders]
        with open(folders[0] / "metrics.csv") as f:
            logged = [(int(r["step"]), float(r[column])) for r in csv.DictReader(f) if r[column]]
        scale = 1 if column == "train/loss" else 100
        assert list(zip(lines[0].get_xdata(), lines[0].get_ydata())) == [(s, scale * v) for s, v in logged]
    with pytest.raises(FileNotFoundError, match="nowhere: no metrics.csv"):
        run(["plot", "nowhere"])


@pytest.mark.parametrize(
    "names",
    [
        list(CamVid.classes),
        ["person;individual;someone;somebody;mortal;soul", "windowpane;window", "cabinet", "sidewalk;pavement"] * 5,
        [f"class {k} with a long name" for k in range(150)],
    ],
)
def test_confusion_matrix_labels_stay_inside_the_figure(names):
    k = len(names)
    figure = confusion_figure(torch.rand(k, k) * 100, names, "title")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer, (width, height) = canvas.get_renderer(), (figure.bbox.width, figure.bbox.height)
    labels = figure.axes[0].get_xticklabels() + figure.axes[0].get_yticklabels()
    assert len(labels) == 2 * k
    for label in labels:
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, label.get_text()
