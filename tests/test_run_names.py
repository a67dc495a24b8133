"""W&B runs named, grouped and tagged from their config; an evaluation joins the group of the run it evaluates.
Read back from offline runs with wandb's own record format (tests.helpers.wandb_offline)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from attnseg.cli import AttnSegCLI
from attnseg.run_names import run_identity
from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, run_cli
from tests.helpers.tensorboard_events import read_events
from tests.helpers.wandb_offline import read_run, records, wandb_in


def identity(*args: str):
    cli = AttnSegCLI(args=["--config", str(QUICKSTART), *args], run=False)
    return run_identity(cli.config)


@pytest.mark.parametrize(
    "args, name, tags",
    [
        ([], "fcn-r18-s0", ["fcn", "resnet18", "SyntheticShapes", "seed0"]),
        (["--config", "model/danet"], "danet-pam-cam-r18-s0", ["danet", "pam", "cam", "resnet18"]),
        (
            ["--config", "model/danet", "--model.head.init_args.cam=false", "--seed_everything=2"],
            "danet-pam-r18-s2",
            ["danet", "pam", "seed2"],
        ),
        (
            ["--config", "model/danet", "--model.head.init_args.pam=false", "--model.head.init_args.cam=false"],
            "danet-off-r18-s0",
            ["off"],
        ),
        (["--config", "model/ccnet", "--model.head.init_args.recurrence=3"], "ccnet-r3-r18-s0", ["ccnet", "r3"]),
        (["--config", "model/ccnet", "--model.head.init_args.gamma_init=1.0"], "ccnet-r2-g1-r18-s0", ["r2", "g1"]),
        (["--config", "model/dfn", "--model.encoder.output_stride=32"], "dfn-border-r18-os32-s0", ["border"]),
        (["--config", "model/flanet", "--model.encoder.name=resnet50"], "flanet-r50-s0", ["flanet", "resnet50"]),
    ],
)
def test_names_say_head_switches_encoder_and_seed(args, name, tags):
    got_name, group, got_tags = identity(*args)
    assert got_name == name
    assert group.startswith(name.rpartition("-s")[0] + "-syntheticshapes-far-")  # head, encoder, data, recipe
    assert set(tags) <= set(got_tags) and "far" in got_tags


def test_a_group_holds_the_seeds_of_one_experiment_and_nothing_else():
    """Seeds share a group; other data (variant, dataset size), another recipe (learning rate, length) or another
    pretrained start never do, though their names may be equal."""
    _, group, _ = identity()
    assert identity("--seed_everything=3")[1] == group
    others = [
        ["--data.dataset_args.variant=two_hop"],
        ["--data.dataset_args.image_size=64"],
        ["--model.lr=0.01"],
        ["--trainer.max_epochs=9"],
        ["--config", "experiment/context"],
    ]
    groups = {tuple(args): identity(*args)[1] for args in others}
    assert group not in groups.values() and len(set(groups.values())) == len(others)
    assert identity("--data.num_workers=0")[1] == group  # how fast the data loads is not the experiment


def run_record(run_dir):
    """The ``run`` record of an offline run: its name, group, job type and tags as W&B stores them (the W&B service
    process writes the file on its own time: wait for it, up to 30 s)."""
    (path,) = run_dir.glob("run-*.wandb")
    for _ in range(300):
        found = [r.run for r in records(path) if r.WhichOneof("record_type") == "run"]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{path}: no run record")


def test_fit_run_is_named_and_test_joins_its_group(tmp_path):
    common = [
        "--config",
        QUICKSTART,
        "--config",
        "model/danet",
        "--model.head.init_args.cam=false",
        *FAST,
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--overlays.num_images=0",
        *wandb_in(tmp_path / "runs"),
    ]
    fit = run_cli("fit", *common)
    (fit_dir,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    record = run_record(fit_dir)
    group = record.run_group
    assert record.display_name == "danet-pam-r18-s0" and group.startswith("danet-pam-r18-syntheticshapes-far-")
    assert record.job_type == "fit"
    assert {"danet", "pam", "resnet18", "SyntheticShapes", "seed0"} <= set(record.tags)
    fit_id = record.run_id

    ckpt = fit.trainer.checkpoint_callback.last_model_path
    run_cli("test", *common, "--ckpt_path", ckpt)
    (test_dir,) = [d for d in (tmp_path / "runs" / "wandb").glob("offline-run-*") if d != fit_dir]
    record = run_record(test_dir)
    assert record.run_group == group and record.job_type == "test" and record.run_id != fit_id
    assert record.display_name == "danet-pam-r18-s0-test"
    offline = read_run(test_dir)
    assert offline["config"]["fit_run"] == fit_id and offline["config"]["fit_checkpoint"] == ckpt
    assert "test/mIoU" in offline["summary"]

    # README's own evaluation command: the run's saved config (job_type: fit, the fit's name in it) and its checkpoint
    saved = Path(fit.trainer.checkpoint_callback.dirpath).parent / "config.yaml"
    before = set((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    run_cli("validate", "--config", saved, *FAST, "--trainer.limit_val_batches=1", "--ckpt_path", ckpt)
    (validate_dir,) = set((tmp_path / "runs" / "wandb").glob("offline-run-*")) - before
    record = run_record(validate_dir)
    assert (record.job_type, record.display_name, record.run_group) == ("validate", "danet-pam-r18-s0-validate", group)
    assert record.run_id != fit_id


def test_names_given_by_the_user_are_kept(tmp_path):
    run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--overlays.num_images=0",
        *wandb_in(tmp_path / "runs"),
        "--trainer.logger.init_args.name=mine",
        "--trainer.logger.init_args.group=study",
        "--trainer.logger.init_args.tags=[a,b]",
    )
    (run_dir,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    record = run_record(run_dir)
    assert (record.display_name, record.run_group, list(record.tags)) == ("mine", "study", ["a", "b"])


@pytest.mark.slow
def test_tensorboard_and_csv_run_folders_are_named_like_the_runs(tmp_path):
    """A fit's folder is its run name (a repeat gets -2), an evaluation of it gets its own folder beside it and leaves
    the training run's files as they were, and a resumed TensorBoard fit continues its folder with one HParams
    session."""
    common = [
        "--config",
        QUICKSTART,
        "--config",
        "model/danet",
        "--model.head.init_args.cam=false",
        *FAST,
        "--trainer.limit_val_batches=1",
        "--overlays.num_images=0",
    ]
    csv_logger = ["--config", CONFIGS / "logger/csv.yaml", "--trainer.max_steps=2"]
    first, second = run_cli("fit", *common, *csv_logger), run_cli("fit", *common, *csv_logger)
    root = Path("runs", "attnseg")
    assert Path(first.trainer.logger.log_dir) == root / "danet-pam-r18-s0"
    assert Path(second.trainer.logger.log_dir) == root / "danet-pam-r18-s0-2"

    run = root / "danet-pam-r18-s0"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    run_cli("test", "--config", run / "config.yaml", *FAST, "--ckpt_path", run / "checkpoints" / "last.ckpt")
    assert "test/mIoU" in (root / "danet-pam-r18-s0-test" / "metrics.csv").read_text()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    tensorboard = [*common, "--config", CONFIGS / "logger/tensorboard.yaml", "--seed_everything=1"]
    run_cli("fit", *tensorboard, "--trainer.max_steps=2")
    resumed = run_cli("fit", *tensorboard, "--trainer.max_steps=4", "--ckpt_path", "last")
    assert Path(resumed.trainer.logger.log_dir) == root / "danet-pam-r18-s1"
    events = read_events(root / "danet-pam-r18-s1")
    assert events["hparams"]["sessions"] == 1 and events["hparams"]["values"]["head.pam"] == 1  # a switch, as 1 or 0
    assert events["scalars"]["val/mIoU"][-1][0] == 4
