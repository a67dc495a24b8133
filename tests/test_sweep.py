"""``attnseg sweep``: a tiny grid with a failing point runs end to end (fit, test on the best checkpoint, results
table and chart, grouped W&B runs); the shipped ablation files expand to the runs they promise; bad sweep files
get clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from attnseg.__main__ import main
from attnseg.sweep import Sweep, summarise, write_results
from tests.helpers.cli import CONFIGS
from tests.helpers.sweeps import TINY, main_code, write_sweep
from tests.helpers.wandb_offline import read_run, wandb_in


@pytest.mark.slow
def test_sweep_runs_every_point_and_seed_and_survives_a_failing_point(tmp_path, capsys):
    (tmp_path / "sweeps").mkdir()
    sweep = write_sweep(
        tmp_path / "sweeps" / "tiny.yaml",
        # num_convs=0 is refused by FCNHead: the sweep records it and goes on
        "fixed:\n  trainer.max_epochs: 1\ngrid:\n  model.head.init_args.num_convs: [1, 0, 2]\n"
        "seeds: [0, 1]\ncontext_classes: [warm_blob, cold_blob]\n",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--out", "results", "--", *TINY, *wandb_in(tmp_path / "runs")])
    assert exit_info.value.code == 1  # a run failed

    with open("results/results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.head.init_args.num_convs"], r["seed"]) for r in rows] == [
        ("1", "0"),
        ("1", "1"),
        ("0", "0"),
        ("0", "1"),
        ("2", "0"),
        ("2", "1"),
    ]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    assert "num_convs=0" in rows[2]["error"] and not rows[2]["val_mIoU"]
    ok = [rows[i] for i in (0, 1, 4, 5)]
    for row in ok:
        assert 0 <= float(row["val_mIoU"]) <= 1 and 0 <= float(row["test_mIoU"]) <= 1
        assert 0 <= float(row["test_context_IoU"]) <= 1
        assert float(row["GFLOPs"]) > 0 and float(row["train_images_per_s"]) > 0 and float(row["time_s"]) > 0
        assert Path(row["best_checkpoint"]).is_file() and Path(row["best_checkpoint"]).is_relative_to(row["run_dir"])
    assert int(rows[4]["params"]) > int(rows[0]["params"])  # a second conv adds parameters
    assert len({row["run_dir"] for row in ok}) == 4  # one run folder per run

    md = Path("results/results.md").read_text()
    summary, every = md.split("Every run:")
    assert (
        "| num_convs | val mIoU (%) | test mIoU (%) | context IoU (%) | steps to 80% context IoU | seeds |" in summary
    )
    assert summary.count("| ok |") == 2 and "| failed (2/2) |" in summary
    mean = sum(float(rows[i]["test_mIoU"]) for i in (0, 1)) / 2
    spread = abs(float(rows[0]["test_mIoU"]) - float(rows[1]["test_mIoU"])) / 2**0.5  # sample std of two values
    assert "| 1 | " in summary and f"{100 * mean:.1f} ± {100 * spread:.1f}" in summary
    assert every.count("| ok |") == 4 and every.count("| failed |") == 2
    assert "- run 2: ValueError: FCNHead: num_convs=0" in md
    assert Image.open("results/results.png").size[0] > 100
    # each run's learning curve: one row per validation (one epoch: one), read from what the task logged
    for row in ok:
        with open(row["curve"]) as f:
            curve = list(csv.DictReader(f))
        assert [int(r["step"]) for r in curve] == [2]
        assert float(curve[0]["val/mIoU"]) == pytest.approx(float(row["val_mIoU"]))
        assert {"val/IoU/warm_blob", "val/IoU/cold_blob"} <= set(curve[0])
    assert not Path(rows[2]["curve"]).exists()  # the failed run validated nothing
    assert Image.open("results/learning_curves.png").size[0] > 100

    # one W&B run per successful run, one group per grid point (its seeds), all with the sweep's tag, named after the
    # point and seed, holding val and test metrics
    runs = [read_run(d) for d in sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))]
    assert len(runs) == 4
    by_point = {r["name"].partition(",")[0]: set() for r in runs}
    for r in runs:
        by_point[r["name"].partition(",")[0]].add(r["group"])
    assert all(len(groups) == 1 for groups in by_point.values()) and len(set().union(*by_point.values())) == 2
    assert len({tag for r in runs for tag in r["tags"] if tag.startswith("tiny-")}) == 1
    assert sorted(r["name"] for r in runs) == [f"num_convs={c},seed={s}" for c in (1, 2) for s in (0, 1)]
    assert all("val/mIoU" in r["summary"] and "test/IoU_table" in r["summary"] for r in runs)
    by_name = {r["name"]: r["summary"] for r in runs}
    for row in ok:
        tested = by_name[f"num_convs={row['model.head.init_args.num_convs']},seed={row['seed']}"]
        assert tested["test/mIoU"] == pytest.approx(float(row["test_mIoU"]))
        context = (tested["test/IoU/warm_blob"] + tested["test/IoU/cold_blob"]) / 2
        assert context == pytest.approx(float(row["test_context_IoU"]))
    # the seed reached the run: its config records it
    assert sorted(r["config"]["seed_everything"] for r in runs) == [0, 0, 1, 1]
    assert "4/6 runs succeeded" in capsys.readouterr().out


def test_summary_averages_only_points_whose_runs_all_succeeded(tmp_path):
    sweep = Sweep(tmp_path / "s.yaml", "s", [], {"model.lr": [0.1, 0.2]}, seeds=[0, 1, 2], context_classes=["a"])
    scores = ("val_mIoU", "test_mIoU", "test_context_IoU")
    rows = [
        {"run": run, "model.lr": lr, "seed": seed, "status": "ok", **dict(zip(scores, values))}
        for run, lr, seed, values in [
            (0, 0.1, 0, (0.5, 0.4, 0.2)),
            (1, 0.1, 1, (0.7, 0.6, 0.4)),
            (2, 0.1, 2, (0.6, 0.5, 0.3)),
            (3, 0.2, 0, (0.9, 0.9, 0.9)),
        ]
    ] + [{"run": 4, "model.lr": 0.2, "seed": 1, "status": "failed", "error": "boom"}]
    first, second = summarise(sweep, rows)
    assert first["status"] == "ok" and first["n"] == 3
    assert first["test_mIoU"] == pytest.approx((0.5, 0.1)) and first["test_context_IoU"] == pytest.approx((0.3, 0.1))
    assert second["status"] == "failed (1/2)" and "test_mIoU" not in second  # not averaged over what survived
    write_results(sweep, rows, tmp_path / "out", "g", [])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| 0.1 | 60.0 ± 10.0 | 50.0 ± 10.0 | 30.0 ± 10.0 | 0/3 | 3 |" in md  # no curve: no run reached 80 %
    assert "| 0.2 | - | - | - | - | 2 | - | failed (1/2) |" in md


def test_seeds_from_the_command_line_override_the_file(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", "grid:\n  model.lr: [0.1, 0.2]\nseeds: [0]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--dry-run", "--seeds", "3", "4", "5"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "6 runs (2 grid points x seeds [3, 4, 5]" in out
    assert out.count("--seed_everything=4") == 2 and "--seed_everything=0" not in out


def test_unknown_context_class_fails_the_run_before_it_trains(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", "grid:\n  model.lr: [0.001]\ncontext_classes: [warm_blob, nope]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--out", "results", "--", *TINY, "--trainer.logger=false"])
    assert exit_info.value.code == 1
    with open("results/results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed" and f"{sweep}: context_classes ['nope'] are not classes" in row["error"]
    assert not row["val_mIoU"]  # stopped before fitting


def test_only_runs_some_values_of_a_grid_key(capsys):
    heads = str(CONFIGS / "ablation" / "heads.yaml")
    assert main_code("sweep", heads, "--only", "head=deeplabv3,pspnet", "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("Sweep heads: 6 runs (2 grid points x seeds [0, 1, 2];")
    assert "[0] head=deeplabv3,seed=0" in out and "head=fcn" not in out
    assert main_code("sweep", heads, "--only", "head=resnet", "--dry-run") == 2
    assert "--only head=resnet: ['resnet'] not among head's values" in capsys.readouterr().err


def test_results_csv_reads_back_as_the_rows_written(tmp_path):
    from attnseg.sweep import read_results

    sweep = Sweep.from_file(CONFIGS / "ablation" / "danet.yaml")
    rows = []
    for index, (point, seed) in enumerate(sweep.runs()[:5]):
        row = {
            "run": index,
            **point,
            "seed": seed,
            "status": "ok",
            "val_mIoU": 0.5 + index / 100,
            "test_mIoU": 0.4 + index / 100,
            "test_context_IoU": 0.3,
            "params": 1234567,
            "GFLOPs": 7.07,
            "train_images_per_s": 30.5,
            "time_s": 118.2,
            "run_dir": f"runs/attnseg/r{index}",
            "best_checkpoint": "x.ckpt",
            "steps_to_context": 100 * index or None,
            "curve": f"curves/run{index}.csv",
            "error": None,
        }
        rows.append(row)
    rows[-1].update(status="failed", error="ValueError: boom", test_mIoU=None)
    write_results(sweep, rows, tmp_path, "g", [])
    back = read_results(tmp_path / "results.csv", sweep)
    assert back == rows
    assert summarise(sweep, back) == summarise(sweep, rows)


def test_a_grid_option_that_does_not_parse_is_refused_before_anything_runs(tmp_path, capsys):
    """A misspelt option fails --dry-run and the sweep itself up front, one line per grid point (no traceback,
    no run folder); a YAML error names the sweep file and the line."""
    sweep = write_sweep(tmp_path / "sw.yaml", "grid:\n  model.head.init_args.num_conv: [1, 2]\n")
    for dry in (["--dry-run"], []):
        assert main_code("sweep", str(sweep), "--out", str(tmp_path / "out"), *dry) == 2
        err = capsys.readouterr().err
        assert "2 grid point(s) do not parse; nothing was run" in err and "Traceback" not in err
        assert "num_conv=1: " in err and "Option 'num_conv' is not accepted" in err
    assert not (tmp_path / "out").exists() and not Path("runs").exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("base: [quickstart\ngrid: {a: [1]}\n")
    assert main_code("sweep", str(broken), "--dry-run") == 2
    err = capsys.readouterr().err
    assert f"{broken}: not valid YAML" in err and f'in "{broken}", line 2' in err


def test_short_names_one_seed_without_spread_and_an_online_wandb_sweep(tmp_path, capsys):
    """`attnseg sweep ablation/danet` finds the shipped file; one seed prints its value alone (no "± 0.0" nor
    "± nan"); the W&B sweep file's runs report online."""
    import yaml

    assert main_code("sweep", "ablation/danet", "--dry-run") == 0
    assert "Sweep danet: " in capsys.readouterr().out
    assert main_code("sweep", "ablation/nothing", "--dry-run") == 2
    assert "no shipped sweep of that name" in capsys.readouterr().err
    sweep = write_sweep(tmp_path / "sw.yaml", "grid:\n  model.lr: [0.1, 0.2]\n")
    rows = [
        {"run": k, "model.lr": lr, "seed": 0, "status": "ok", "val_mIoU": 0.5 + k / 10, "test_mIoU": 0.4}
        for k, lr in enumerate((0.1, 0.2))
    ]
    write_results(Sweep.from_file(sweep), rows, tmp_path / "out", "g", [])
    summary = (tmp_path / "out" / "results.md").read_text().split("Every run:")[0]
    assert "| 0.1 | 50.0 | 40.0 |" in summary and "±" not in summary.split("|---")[1]
    spec = tmp_path / "w.yaml"
    assert main_code("sweep", str(sweep), "--wandb-sweep", str(spec)) == 0
    assert "--trainer.logger.init_args.offline=false" in yaml.safe_load(spec.read_text().split("\n", 1)[1])["command"]
