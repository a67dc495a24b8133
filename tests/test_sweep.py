"""``attnseg sweep``: a tiny grid with a failing point runs end to end (fit, test on the best checkpoint, results
table and chart, grouped W&B runs); the shipped ablation files expand to the runs they promise; bad sweep files
get clear errors."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from PIL import Image

from attnseg.cli import AttnSegCLI, main
from attnseg.sweep import Sweep, override_args, point_label, short_names
from conftest import CONFIGS, FAST
from wandb_offline import read_run, wandb_in

TINY = [*FAST, "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]


def write_sweep(path: Path, body: str) -> Path:
    quickstart = os.path.relpath(CONFIGS / "quickstart.yaml", path.parent)  # paths are relative to the sweep file
    path.write_text(f"base: [{quickstart}]\n{body}")
    return path


def test_sweep_runs_every_point_and_survives_a_failing_one(tmp_path, capsys):
    (tmp_path / "sweeps").mkdir()
    sweep = write_sweep(
        tmp_path / "sweeps" / "tiny.yaml",
        # num_convs=0 is refused by FCNHead: the sweep records it and goes on
        "fixed:\n  trainer.max_epochs: 1\ngrid:\n  model.head.init_args.num_convs: [1, 0, 2]\n",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--out", "results", "--", *TINY, *wandb_in(tmp_path / "runs")])
    assert exit_info.value.code == 1  # one run failed

    with open("results/results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model.head.init_args.num_convs"] for r in rows] == ["1", "0", "2"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "num_convs=0" in rows[1]["error"] and not rows[1]["val_mIoU"]
    ok = [rows[0], rows[2]]
    for row in ok:
        assert 0 <= float(row["val_mIoU"]) <= 1 and 0 <= float(row["test_mIoU"]) <= 1
        assert float(row["GFLOPs"]) > 0 and float(row["train_images_per_s"]) > 0 and float(row["time_s"]) > 0
        assert Path(row["best_checkpoint"]).is_file() and Path(row["best_checkpoint"]).is_relative_to(row["run_dir"])
    assert int(rows[2]["params"]) > int(rows[0]["params"])  # a second conv adds parameters

    md = Path("results/results.md").read_text()
    assert "| num_convs |" in md and md.count("| ok |") == 2 and md.count("| failed |") == 1
    assert "- run 1: ValueError: FCNHead: num_convs=0" in md
    assert Image.open("results/results.png").size[0] > 100

    # one W&B run per successful point, in one group, named after the point, holding val and test metrics
    runs = [read_run(d) for d in sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))]
    assert len(runs) == 2
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"].startswith("tiny-")
    assert sorted(r["name"] for r in runs) == ["num_convs=1", "num_convs=2"]
    assert all("val/mIoU" in r["summary"] and "test/IoU_table" in r["summary"] for r in runs)
    tested = {r["name"]: r["summary"]["test/mIoU"] for r in runs}
    assert tested["num_convs=1"] == pytest.approx(float(rows[0]["test_mIoU"]))
    assert tested["num_convs=2"] == pytest.approx(float(rows[2]["test_mIoU"]))
    assert "2/3 runs succeeded" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, expected",
    [
        ("danet", [{"pam": p, "cam": c} for p in (True, False) for c in (True, False)]),
        ("ccnet", [{"recurrence": r} for r in range(4)]),
    ],
)
def test_ablation_files_expand_to_four_runs_that_build(name, expected, capsys):
    path = CONFIGS / "ablation" / f"{name}.yaml"
    sweep = Sweep.from_file(path)
    points = sweep.points()
    assert [{k.rpartition(".")[2]: v for k, v in p.items()} for p in points] == expected
    assert [b.relative_to(CONFIGS).as_posix() for b in sweep.base] == ["quickstart.yaml", f"model/{name}.yaml"]

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--dry-run", "--", "--trainer.max_epochs=1"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.count("attnseg fit --config=") == 4 and out.count("--trainer.max_epochs=1") == 4

    # every planned run parses and builds the head it names
    for point in points:
        args = sweep.arguments(point, ["--data.dataset_args.image_size=32", "--data.num_workers=0"])
        head = AttnSegCLI(args=args[1:], run=False).model.model.head
        if name == "danet":
            branches = {k for k in ("pam", "cam") if point[f"model.head.init_args.{k}"]}
            assert set(head.branches) == (branches or {"conv"})
        else:
            assert head.recurrence == point["model.head.init_args.recurrence"]


def test_sweep_file_errors(tmp_path, capsys):
    bad = {
        "no base": ("grid:\n  model.lr: [0.1]\n", "'base' names no config"),
        "missing base": ("base: [nowhere.yaml]\ngrid:\n  model.lr: [0.1]\n", "base configs not found"),
        "empty grid": ("base: [x.yaml]\ngrid: {}\n", "'grid' must map"),
        "scalar grid": ("base: [x.yaml]\ngrid:\n  model.lr: 0.1\n", "grid.model.lr is 0.1"),
        "unknown key": ("base: [x.yaml]\ngird:\n  model.lr: [0.1]\n", "unknown keys ['gird']"),
    }
    (tmp_path / "x.yaml").write_text("model: {}\n")
    for case, (body, message) in bad.items():
        path = tmp_path / "bad.yaml"
        path.write_text(body)
        with pytest.raises(ValueError) as err:
            Sweep.from_file(path)
        assert message in str(err.value) and str(path) in str(err.value), case
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(tmp_path / "absent.yaml")])
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err


def test_override_formatting_and_labels():
    overrides = {"model.head.init_args.pam": False, "model.lr": 0.02, "trainer.logger": None, "data.crop_size": [8, 8],
                 "model.head.class_path": "attnseg.heads.FCNHead"}  # fmt: skip
    assert override_args(overrides) == [
        "--model.head.init_args.pam=false", "--model.lr=0.02", "--trainer.logger=null", "--data.crop_size=[8, 8]",
        "--model.head.class_path=attnseg.heads.FCNHead",
    ]  # fmt: skip
    assert short_names(["model.head.init_args.channels", "model.aux.channels", "model.lr"]) == {
        "model.head.init_args.channels": "init_args.channels",
        "model.aux.channels": "aux.channels",
        "model.lr": "lr",
    }
    assert point_label({"model.head.init_args.pam": True, "model.head.init_args.cam": False}) == "pam=true,cam=false"
