"""A sweep stopped or interrupted continues where it was: finished runs kept, the interrupted one resumed from its
last.ckpt, rows and curves kept, a stop signal or Ctrl+C ends the whole sweep."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import CONFIGS, FAST
from tests.helpers.sweeps import TINY, main_code, write_sweep
from tests.helpers.wandb_offline import wandb_in


@pytest.mark.slow
def test_a_sweep_run_again_continues_the_interrupted_run_and_keeps_finished_ones(tmp_path, capsys):
    """Ctrl+C in the first run's step 3 (of 2 epochs of 2 steps) ends the sweep; running it again continues that run
    from its last.ckpt in its own run folder and then runs the second; a third time runs nothing and keeps every row.
    A results.csv of another grid is refused."""
    sweep = write_sweep(
        tmp_path / "sw.yaml", "fixed:\n  trainer.max_epochs: 2\ngrid:\n  model.head.init_args.num_convs: [1, 2]\n"
    )
    flag = tmp_path / "interrupted"
    interrupt = {"class_path": "tests.helpers.faults.InterruptOnce", "init_args": {"flag": str(flag), "step": 3}}
    extra = [
        "--",
        *FAST,
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        *wandb_in(tmp_path / "runs"),
        f"--trainer.callbacks+={json.dumps(interrupt)}",
    ]
    out = tmp_path / "out"
    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 130
    first = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in first] == ["interrupted"]
    note = out / "folders" / "num_convs=1,seed=0.txt"
    folder = Path(note.read_text().strip())
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 3
    capsys.readouterr()

    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 0
    printed = capsys.readouterr().out
    assert f"num_convs=1,seed=0, continuing from {folder / 'last.ckpt'}" in printed
    second = list(csv.DictReader(open(out / "results.csv")))
    assert float(second[0]["time_s"]) > float(first[0]["time_s"]) > 0  # the interrupted attempt's time counts
    assert [(r["model.head.init_args.num_convs"], r["status"]) for r in second] == [("1", "ok"), ("2", "ok")]
    assert Path(second[0]["best_checkpoint"]).parent == folder  # the same run folder, continued
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 4

    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, kept") == 2 and "continuing from" not in printed
    assert list(csv.DictReader(open(out / "results.csv"))) == second

    other = write_sweep(tmp_path / "other.yaml", "grid:\n  model.lr: [0.1]\n")
    assert main_code("sweep", str(other), "--out", str(out), *extra) == 2
    assert "holds another sweep's results (no column for grid key(s) ['model.lr'])" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_of_a_sweep_split_by_only_share_one_table_and_their_numbers(tmp_path, capsys):
    """``--only`` runs a part of the grid; the runs keep their numbers in the whole grid, their curve files are named
    by the run, and the other part, run later into the same folder, joins the same table."""
    sweep = write_sweep(
        tmp_path / "sw.yaml", "fixed:\n  trainer.max_epochs: 1\ngrid:\n  model.head.init_args.num_convs: [1, 2]\n"
    )
    extra = ["--", *TINY, *wandb_in(tmp_path / "runs")]
    out = tmp_path / "out"
    assert main_code("sweep", str(sweep), "--out", str(out), "--only", "model.head.init_args.num_convs=2", *extra) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["run"], r["model.head.init_args.num_convs"]) for r in rows] == [("1", "2")]
    assert rows[0]["curve"] == str(out / "curves" / "num_convs=2,seed=0.csv") and Path(rows[0]["curve"]).is_file()
    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 0
    assert "(1 of 2 runs finished earlier)" in capsys.readouterr().out
    both = list(csv.DictReader(open(out / "results.csv")))
    runs = [(r["run"], r["model.head.init_args.num_convs"], r["status"]) for r in both]
    assert runs == [("0", "1", "ok"), ("1", "2", "ok")]
    assert both[1] == rows[0]
    assert (out / "results.md").read_text().split("Every run:")[0].count("| ok |") == 2


@pytest.mark.slow
def test_an_interrupted_sweep_keeps_the_rows_of_runs_after_the_interrupted_one(tmp_path):
    """Run 1 finished in an earlier call; a Ctrl+C in run 0 of the next call leaves run 1's row in the table."""
    sweep = write_sweep(
        tmp_path / "sw.yaml", "fixed:\n  trainer.max_epochs: 2\ngrid:\n  model.head.init_args.num_convs: [1, 2]\n"
    )
    base = [
        "--",
        *FAST,
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        *wandb_in(tmp_path / "runs"),
    ]
    out = tmp_path / "out"
    assert main_code("sweep", str(sweep), "--out", str(out), "--only", "model.head.init_args.num_convs=2", *base) == 0
    interrupt = {
        "class_path": "tests.helpers.faults.InterruptOnce",
        "init_args": {"flag": str(tmp_path / "flag"), "step": 3},
    }
    assert (
        main_code("sweep", str(sweep), "--out", str(out), *base, f"--trainer.callbacks+={json.dumps(interrupt)}") == 130
    )
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["run"], r["status"]) for r in rows] == [("0", "interrupted"), ("1", "ok")]


@pytest.mark.slow
def test_a_stop_signal_ends_the_sweep_even_when_its_run_fails_first(tmp_path):
    """SIGTERM to the whole job can kill a loader worker before the main process finishes its step: the run then
    fails with the worker's error, and the sweep stops there (status 143) instead of starting the next run."""
    sweep = write_sweep(
        tmp_path / "sw.yaml", "fixed:\n  trainer.max_epochs: 2\ngrid:\n  model.head.init_args.num_convs: [1, 2]\n"
    )
    stop = {"class_path": "tests.helpers.faults.StopSignalThenError", "init_args": {"flag": str(tmp_path / "f")}}
    extra = [
        "--",
        *FAST,
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        *wandb_in(tmp_path / "runs"),
        f"--trainer.callbacks+={json.dumps(stop)}",
    ]
    out = tmp_path / "out"
    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 143
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["interrupted"]
    assert sorted(p.name for p in (out / "folders").iterdir()) == ["num_convs=1,seed=0.txt"]  # run 2 never started
    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 0  # and a re-run finishes both
    assert [r["status"] for r in csv.DictReader(open(out / "results.csv"))] == ["ok", "ok"]


@pytest.mark.slow
def test_a_real_ctrl_c_stops_the_sweep_and_a_rerun_continues_it(tmp_path):
    """SIGINT to a running `attnseg sweep` process (the terminal's Ctrl+C): exit status 130, the run recorded as
    interrupted with its last.ckpt saved; the same command again continues that run and finishes the sweep."""
    import signal
    import subprocess
    import sys
    import time

    sweep = write_sweep(
        tmp_path / "sw.yaml", "fixed:\n  trainer.max_epochs: 6\ngrid:\n  model.head.init_args.num_convs: [1, 2]\n"
    )
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).parent / "attnseg"),
        "sweep",
        str(sweep),
        "--out",
        str(out),
        "--",
        *FAST,
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        *wandb_in(tmp_path / "runs"),
        "--trainer.callbacks+=tests.helpers.faults.Slow",
    ]
    env = {
        **{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"},
        "PYTHONPATH": str(CONFIGS.parent),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    note, deadline = out / "folders" / "num_convs=1,seed=0.txt", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if note.is_file() and (Path(note.read_text().strip()) / "last.ckpt").is_file():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert [r["status"] for r in csv.DictReader(open(out / "results.csv"))] == ["interrupted"]
    last = Path(note.read_text().strip()) / "last.ckpt"
    stopped = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= stopped < 12
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"continuing from {last}" in again.stdout
    assert [r["status"] for r in csv.DictReader(open(out / "results.csv"))] == ["ok", "ok"]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 12


def test_curves_are_named_by_the_run_so_other_seed_subsets_keep_them(tmp_path):
    """A run's number is its place in the whole grid over the file's seeds (then any new ones), whatever seeds an
    invocation runs; a later invocation with every seed keeps that run's curve and numbers the runs apart."""
    sweep = write_sweep(
        tmp_path / "sw.yaml",
        "fixed:\n  trainer.max_epochs: 1\ngrid:\n  model.head.init_args.num_convs: [1]\nseeds: [0, 1]\n",
    )
    extra = ["--", *TINY, *wandb_in(tmp_path / "runs")]
    out = tmp_path / "out"
    assert main_code("sweep", str(sweep), "--out", str(out), "--seeds", "1", *extra) == 0
    first = {r["seed"]: r["curve"] for r in csv.DictReader(open(out / "results.csv"))}
    assert [r["run"] for r in csv.DictReader(open(out / "results.csv"))] == ["1"]  # seed 1 is the file's second
    kept = Path(first["1"]).read_text()
    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 0
    rows = {r["seed"]: r["curve"] for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["1"] == first["1"] and Path(rows["1"]).read_text() == kept and rows["0"] != rows["1"]
    assert {r["seed"]: r["run"] for r in csv.DictReader(open(out / "results.csv"))} == {"0": "0", "1": "1"}


def test_sweeps_side_by_side_into_one_folder_keep_each_others_rows(tmp_path, monkeypatch):
    """Two calls with disjoint ``--only`` into one folder at the same time (one starts while the other's first run
    trains): every write merges with the rows on disk, so the table ends with both calls' runs under their numbers
    in the whole grid."""
    from attnseg.sweep import command

    sweep = write_sweep(tmp_path / "sw.yaml", "grid:\n  model.head.init_args.num_convs: [1, 2, 3]\nseeds: [0, 1]\n")
    out = tmp_path / "out"
    trained = []

    def fake_run(sweep_, index, point, extra, group, seed, out_, resume, curve):
        convs = point["model.head.init_args.num_convs"]
        trained.append((convs, seed))
        if (convs, seed) == (1, 0):  # the other call starts, runs all its runs and writes, while this one trains
            assert main_code("sweep", str(sweep), "--out", str(out), "--only", "model.head.init_args.num_convs=3") == 0
        return {"run": index, **point, "seed": seed, "status": "ok", "error": "", "time_s": 1.0, "test_mIoU": convs}

    monkeypatch.setattr(command, "run_point", fake_run)
    assert main_code("sweep", str(sweep), "--out", str(out), "--only", "model.head.init_args.num_convs=1,2") == 0
    assert trained == [(1, 0), (3, 0), (3, 1), (1, 1), (2, 0), (2, 1)]
    rows = list(csv.DictReader(open(out / "results.csv")))
    grid = [(convs, seed) for convs in (1, 2, 3) for seed in (0, 1)]
    assert [(r["run"], r["model.head.init_args.num_convs"], r["seed"], r["status"]) for r in rows] == [
        (str(k), str(convs), str(seed), "ok") for k, (convs, seed) in enumerate(grid)
    ]
