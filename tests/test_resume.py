"""``--ckpt_path last`` resumes the run of this experiment only, options set on resume are kept (and said), and
the optimiser state and schedule position come back as saved."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from attnseg.experiments import experiment_fingerprint, same_experiment
from attnseg.optim import poly
from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, run_cli

CSV = ["--config", CONFIGS / "logger/csv.yaml"]
BASE = ["--config", QUICKSTART, *FAST, *CSV, "--trainer.max_epochs=1"]  # 2 steps per epoch
DANET = ["--config", CONFIGS / "model/danet.yaml"]


def runs() -> list[Path]:
    return sorted(p for p in Path("runs/attnseg").iterdir() if p.is_dir())


def step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_last_resumes_this_experiment_not_the_newest_run(caplog):
    fcn = run_cli("fit", *BASE)
    run_cli("fit", *BASE, *DANET)  # newer, another experiment
    fcn_run = Path(fcn.trainer.checkpoint_callback.dirpath).parent
    resumed = run_cli("fit", *BASE, "--trainer.max_epochs=2", "--ckpt_path", "last")
    assert Path(resumed.trainer.checkpoint_callback.dirpath).parent == fcn_run  # continued in its own folder
    assert type(resumed.model.model.head).__name__ == "FCNHead" and resumed.trainer.global_step == 4
    assert "resuming this experiment (fingerprint " in caplog.text
    assert str(fcn_run / "checkpoints/last.ckpt") in caplog.text
    assert len(runs()) == 2 and step(fcn_run / "checkpoints/last.ckpt") == 4
    # the run's metrics.csv keeps the first fit's rows (Lightning's CSV writer deletes the file it opens)
    rows = list(csv.DictReader(open(fcn_run / "metrics.csv")))
    assert {row["epoch"] for row in rows if row["val/mIoU"]} == {"0", "1"}
    logged = [
        (row["step"], key) for row in rows for key, value in row.items() if value and key not in ("epoch", "step")
    ]
    assert len(logged) == len(set(logged))  # nothing logged twice for one step


def test_last_with_nothing_of_this_experiment_starts_fresh_and_says_why():
    run_cli("fit", *BASE, *DANET)
    with pytest.warns(UserWarning, match=r"no last.ckpt of this experiment .*1 run\(s\) there belong to other"):
        cli = run_cli("fit", *BASE, "--ckpt_path", "last")
    assert cli.trainer.global_step == 2 and type(cli.model.model.head).__name__ == "FCNHead"


def test_last_with_no_runs_at_all_starts_fresh():
    """A requeued job's first start: nothing to resume yet."""
    with pytest.warns(UserWarning, match="starting from scratch"):
        cli = run_cli("fit", *BASE, "--ckpt_path", "last")
    assert cli.trainer.state.finished and cli.trainer.global_step == 2


def test_last_refuses_to_choose_between_two_runs_of_one_experiment():
    first, second = run_cli("fit", *BASE), run_cli("fit", *BASE)
    lasts = [Path(c.trainer.checkpoint_callback.dirpath) / "last.ckpt" for c in (first, second)]
    with pytest.raises(ValueError, match=r"2 runs of this experiment .*Pass the checkpoint to resume") as error:
        run_cli("fit", *BASE, "--trainer.max_epochs=2", "--ckpt_path", "last")
    assert all(str(p) in str(error.value) for p in lasts)


def test_an_experiment_is_what_a_run_trains_not_how():
    config = {
        "model": {"head": {"class_path": "FCNHead"}, "lr": 0.01, "encoder": {"name": "r18", "pretrained": "a"}},
        "data": {"dataset": "CamVid", "root": "/a", "num_workers": 2},
        "seed_everything": 0,
    }
    same = {
        "model": {"head": {"class_path": "FCNHead"}, "lr": 0.1, "encoder": {"name": "r18", "pretrained": "b"}},
        "data": {"dataset": "CamVid", "root": "/b", "num_workers": 0},
        "seed_everything": 0,
    }
    assert experiment_fingerprint(config) == experiment_fingerprint(same) and same_experiment(config, same)
    for key, value in [("model.head", {"class_path": "DANetHead"}), ("data.dataset", "VOC"), ("seed_everything", 1)]:
        other = json.loads(json.dumps(config))
        node, *path = key.split(".")
        if path:
            other[node][path[0]] = value
        else:
            other[node] = value
        assert experiment_fingerprint(other) != experiment_fingerprint(config), key
        assert not same_experiment(config, other), key
    # a run saved before an option existed is the same experiment as one that leaves it unset or at its default
    newer = json.loads(json.dumps(config))
    newer["model"]["aux_loss"], newer["data"]["check_before_fit"] = None, False
    newer["data"]["some_new_option"] = 3
    assert same_experiment(config, newer)


@pytest.mark.slow
def test_options_set_on_resume_win_and_are_reported_with_the_state_restored(caplog):
    """``--model.lr`` and ``--model.nonfinite_loss`` given when resuming are used (and said), while the optimiser's
    moments and the schedule's position are those saved."""
    run_cli("fit", *BASE, "--trainer.max_epochs=2")  # lr 0.002 (the quickstart's), 4 steps
    last = runs()[0] / "checkpoints/last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    saved_moments = sum(
        float(t.double().sum())
        for s in saved["optimizer_states"][0]["state"].values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    probe = ["--trainer.callbacks+=tests.helpers.faults.OptimizerProbe"]
    cli = run_cli(
        "fit",
        *BASE,
        "--trainer.max_epochs=4",
        "--model.lr=0.01",
        "--model.nonfinite_loss=skip",
        "--ckpt_path",
        last,
        *probe,
    )
    assert "model.lr=0.01 (checkpoint: 0.002)" in caplog.text
    assert "model.nonfinite_loss=skip (checkpoint: raise)" in caplog.text
    assert cli.model.hparams.lr == 0.01 and cli.model.hparams.nonfinite_loss == "skip"
    state = json.loads(Path("optimizer.json").read_text())
    assert state["step"] == 4 and state["moments"] == pytest.approx(saved_moments, rel=1e-12)  # moments as saved
    assert state["epoch"] == saved["epoch"] + 1 == 2  # the saved epoch was complete: the next one starts
    # the schedule continues at step 4 of 8, from the new base rate (AdamW, warmup 20 steps in the quickstart)
    hp = cli.model.hparams
    factor = poly(8, 0.0, hp.poly_power, hp.warmup_iters, hp.warmup_ratio)(4)
    assert state["lr"] == pytest.approx([0.01 * factor, 0.01 * factor])
    assert saved["lr_schedulers"][0]["last_epoch"] == 4


def test_options_that_define_the_model_are_refused_on_resume():
    run_cli("fit", *BASE)
    last = runs()[0] / "checkpoints/last.ckpt"
    with pytest.raises(
        ValueError, match=r"model.head.init_args.num_convs=1 \(checkpoint: 2; set on the command line\)"
    ):
        run_cli("fit", *BASE, "--trainer.max_epochs=2", "--model.head.init_args.num_convs=1", "--ckpt_path", last)


FIVE = [*BASE, "--data.dataset_args.num_samples=20", "--trainer.max_epochs=-1"]  # 5 steps per epoch


@pytest.mark.slow
def test_the_end_of_fit_saves_the_final_step_after_the_last_validation(caplog, recwarn):
    """Validations at steps 2, 4, 7; fit ends at step 8 mid-epoch: last.ckpt holds step 8, and a resume to 13
    trains exactly the 5 added steps, saying plainly that the rest of the epoch is reshuffled (in place of
    Lightning's warnings about loaders and about log files it would delete, which attnseg keeps)."""
    run_cli("fit", *FIVE, "--trainer.max_steps=8", "--trainer.val_check_interval=2")
    last = runs()[0] / "checkpoints/last.ckpt"
    assert step(last) == 8
    cli = run_cli("fit", *FIVE, "--trainer.max_steps=13", "--trainer.val_check_interval=2", "--ckpt_path", "last")
    assert cli.trainer.global_step == 13 and step(last) == 13 and len(runs()) == 1
    assert "after 3 of its batches: the rest of the epoch is drawn in a new random order" in caplog.text
    assert not [w for w in recwarn if "not resumable" in str(w.message) or "will be deleted" in str(w.message)]


@pytest.mark.slow
@pytest.mark.parametrize("more", [["--trainer.max_steps=15"], ["--trainer.max_epochs=3", "--trainer.max_steps=-1"]])
def test_extending_a_run_saved_at_an_epoch_end_trains_exactly_the_added_steps(more, recwarn):
    """A run of 2 whole epochs (10 steps, saved at the second epoch's end) extended to 15 steps or to 3 epochs
    trains the third epoch (5 steps) and no empty epoch (which would also warn that every label was void)."""
    run_cli("fit", *BASE, "--data.dataset_args.num_samples=20", "--trainer.max_epochs=3", "--trainer.max_steps=10")
    last = runs()[0] / "checkpoints/last.ckpt"
    assert step(last) == 10
    recwarn.clear()
    cli = run_cli(
        "fit", *BASE, "--data.dataset_args.num_samples=20", "--trainer.max_epochs=3", *more, "--ckpt_path", "last"
    )
    assert cli.trainer.global_step == 15 and step(last) == 15 and cli.trainer.current_epoch == 3
    assert not [w for w in recwarn if "void" in str(w.message)]
    rows = list(csv.DictReader(open(runs()[0] / "metrics.csv")))
    assert sorted(int(row["epoch"]) for row in rows if row["val/mIoU"]) == [0, 1, 2]  # one validation per epoch


@pytest.mark.slow
def test_a_resume_that_fails_to_load_keeps_every_metrics_row():
    """Resuming from the step-2 checkpoint with data of another class count fails at loading; metrics.csv is
    then byte for byte as before. A resume that loads keeps the rows before its step and logs the rest again."""
    run_cli("fit", *BASE)
    run = runs()[0]
    first = run / "checkpoints/step2.ckpt"
    first.write_bytes((run / "checkpoints/last.ckpt").read_bytes())
    run_cli("fit", *BASE, "--trainer.max_epochs=2", "--ckpt_path", "last")
    before = (run / "metrics.csv").read_bytes()
    with pytest.raises(ValueError, match=r"7 classes.*8 classes"):
        run_cli(
            "fit",
            *BASE,
            "--trainer.max_epochs=2",
            "--data.dataset=tests.helpers.faults.ExtraClassShapes",
            "--ckpt_path",
            first,
        )
    assert (run / "metrics.csv").read_bytes() == before
    run_cli("fit", *BASE, "--trainer.max_epochs=2", "--ckpt_path", first)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {row["epoch"] for row in rows if row["val/mIoU"]} == {"0", "1"}
    logged = [
        (row["step"], key) for row in rows for key, value in row.items() if value and key not in ("epoch", "step")
    ]
    assert len(logged) == len(set(logged))  # the steps after the checkpoint are logged once, by the resumed fit


@pytest.mark.parametrize(
    "first, second", [(["--model.loss_weights={aux: 0.0}"], []), ([], ["--model.loss_weights={aux: 0.0}"])]
)
def test_last_compares_resolved_values_unset_ones_included(first, second):
    """A run with the auxiliary loss switched off and one with the default weights are two experiments, whichever
    of the two was set explicitly: --ckpt_path last starts the second fresh instead of resuming the first."""
    run_cli("fit", *BASE, *first)
    with pytest.warns(UserWarning, match=r"no last.ckpt of this experiment .*1 run\(s\) there belong to other"):
        cli = run_cli("fit", *BASE, "--trainer.max_epochs=2", *second, "--ckpt_path", "last")
    assert cli.trainer.global_step == 4 and len(runs()) == 2
    assert cli.model.loss_weights["aux"] == (0.0 if second else cli.model.model.head.loss_weights["aux"])


def test_an_option_a_saved_run_predates_counts_with_its_default():
    saved = {"model": {"head": {"class_path": "FCNHead"}}, "data": {"dataset": "CamVid"}, "seed_everything": 0}
    defaults = {
        "model": {"head": {"class_path": "FCNHead"}, "ohem": None},
        "data": {"dataset": "Shapes"},
        "seed_everything": 0,
    }
    now = json.loads(json.dumps(saved))
    now["model"]["ohem"] = None
    assert same_experiment(saved, now, defaults)  # the option added later, at its default
    now["model"]["ohem"] = {"thresh": 0.7}
    assert not same_experiment(saved, now, defaults) and not same_experiment(now, saved, defaults)
