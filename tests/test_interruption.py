"""Stopping honestly: SIGTERM and SLURM's SIGUSR1 write a checkpoint of the current step and exit non-zero, an
error mid-fit saves the last completed step, a diverged run is never reported as a success nor checkpointed,
and checkpoint files are left clean and readable."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, REPO, run_cli

ATTNSEG = str(Path(sys.executable).parent / "attnseg")
CSV = ["--config", CONFIGS / "logger/csv.yaml"]
LONG = ["--config", QUICKSTART, *FAST, *CSV, "--data.dataset_args.num_samples=16", "--trainer.max_epochs=50"]


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def run_until_trained(args, env, min_step: int = 6, **popen):
    """Start ``attnseg fit`` and wait until its metrics file shows ``min_step`` steps."""
    proc = subprocess.Popen(
        [ATTNSEG, "fit", *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(step(p) >= min_step for p in Path("runs/attnseg").glob("*/checkpoints/last.ckpt")):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"fit did not reach step {min_step}: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_saves_the_current_step_exits_non_zero_and_last_continues_there(name, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # SLURM's requeue command, recorded
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.txt"}\n')
    scontrol.chmod(0o755)
    env = child_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
    proc = run_until_trained(LONG, env)
    proc.send_signal(getattr(signal, name))
    out, err = proc.communicate(timeout=120)
    number = getattr(signal, name)
    assert proc.returncode == 128 + number, err[-2000:]
    last = next(Path("runs/attnseg").glob("*/checkpoints/last.ckpt"))
    saved = step(last)
    assert f"{name} received: stopped at step {saved}, saved {last}" in out
    if name == "SIGUSR1":
        assert "job 4242 requeued" in out and (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242"]
    assert not list(Path(".").glob("hpc_ckpt*"))  # nothing written outside the run's folder

    probe = "--trainer.callbacks+=tests.helpers.faults.Probe"
    more = [f"--trainer.max_steps={saved + 2}", "--ckpt_path", "last", probe]
    resumed = subprocess.run(
        [ATTNSEG, "fit", *map(str, LONG), *more], env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert f"from {last}" in resumed.stderr + resumed.stdout
    assert json.loads(Path("probe.json").read_text())["start_step"] == saved  # exactly where it stopped


def living_members(group: int) -> list[int]:
    """The processes of a process group that still run (zombies excluded), read from /proc."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(stat_file.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_sigterm_to_the_whole_job_with_loader_workers_still_saves_the_current_step():
    """SLURM's scancel signals every process of the job, DataLoader workers too: the workers must not die first
    (the main process would fail on them and could not save); the main process saves, exits 143 and leaves no
    worker behind."""
    args = [*LONG, "--data.num_workers=2", "--data.persistent_workers=true"]
    proc = run_until_trained(args, child_env(), start_new_session=True)  # its own process group, as a job has
    assert len(living_members(proc.pid)) >= 3, "expected the fit and its two loader workers"
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "killed by signal" not in err
    last = next(Path("runs/attnseg").glob("*/checkpoints/last.ckpt"))
    assert f"SIGTERM received: stopped at step {step(last)}, saved {last}" in out
    deadline = time.time() + 30  # an orphaned worker notices its parent is gone within DataLoader's 5 s check
    while living_members(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert living_members(proc.pid) == []


ABANDONED_WORKERS = """
import multiprocessing, sys
from attnseg.data import SegDataModule
multiprocessing.set_start_method(sys.argv[1])
data = SegDataModule(dataset_args={"image_size": 32, "num_samples": 8}, batch_size=4, val_batch_size=4,
                     scale_range=None, photometric=False, num_workers=2, persistent_workers=True)
data.setup("fit")
batches = iter(data.train_dataloader())
next(batches)
print("workers started", flush=True)
sys.exit(0)  # the iterator is still alive: Python's exit shuts its workers down with SIGTERM
"""


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_workers_left_running_at_exit_are_shut_down_by_their_main_process(start_method):
    """Workers ignore SIGTERM from outside, not from their own main process: an interpreter that exits with a
    loader's workers still running (multiprocessing terminates and joins them) must not wait on them, also when a
    fork server (the worker's parent, not the main process) started them."""
    proc = subprocess.run(
        [sys.executable, "-c", ABANDONED_WORKERS, start_method],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "workers started" in proc.stdout, proc.stderr[-2000:]


def test_an_error_mid_epoch_saves_the_last_completed_step_first():
    """A sample that turns unreadable in the second epoch: the error names it, and the steps done are kept."""
    args = [
        "--config",
        QUICKSTART,
        *FAST,
        *CSV,
        "--trainer.max_epochs=3",
        "--data.dataset=tests.helpers.faults.FailingShapes",
        "--data.dataset_args.bad_index=5",
    ]
    with pytest.warns(UserWarning, match=r"ValueError during fit: saved step (\d+) to ") as record:
        with pytest.raises(ValueError, match=r"broken/sample_5.png: truncated image"):
            run_cli("fit", *args)
    message = next(str(w.message) for w in record if "during fit" in str(w.message))
    saved = int(message.split("saved step ")[1].split()[0])
    last = next(Path("runs/attnseg").glob("*/checkpoints/last.ckpt"))
    assert saved >= 2 and step(last) == saved  # at least the first epoch, and the step the error found


@pytest.mark.slow
def test_a_run_whose_loss_explodes_stops_and_writes_no_inf_checkpoint():
    """SGD at lr 1e3: the loss climbs without becoming NaN; the run must stop as diverged, not end as a success."""
    args = [
        "--config",
        QUICKSTART,
        *FAST,
        *CSV,
        "--data.dataset_args.num_samples=16",
        "--trainer.max_epochs=40",
        "--model.optimizer=sgd",
        "--model.lr=1000",
        "--model.warmup_iters=0",
    ]
    with pytest.raises(FloatingPointError, match=r"diverged"):
        run_cli("fit", *args)
    from tests.helpers.faults import finite

    for ckpt in Path("runs/attnseg").glob("*/checkpoints/*.ckpt"):
        assert finite(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]), ckpt


@pytest.mark.slow
def test_non_finite_buffers_stop_before_validation_and_are_never_saved(tmp_path):
    cli = run_cli("fit", "--config", QUICKSTART, *FAST, *CSV, "--trainer.max_epochs=1")
    task, trainer = cli.model, cli.trainer
    task.model.encoder.model.bn1.running_var.fill_(float("inf"))  # what lr=1e3 did to BatchNorm statistics
    with pytest.raises(FloatingPointError, match=r"not writing a checkpoint .*bn1.running_var"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
    with pytest.raises(FloatingPointError, match=r"hold NaN or inf .*bn1.running_var.*diverged although its loss"):
        run_cli(
            "fit",
            "--config",
            QUICKSTART,
            *FAST,
            *CSV,
            "--trainer.max_epochs=2",
            "--trainer.callbacks+=tests.helpers.faults.PoisonBatchNorm",
        )


@pytest.mark.slow
def test_checkpoints_get_the_users_file_mode_and_stale_temporaries_are_removed():
    mask = os.umask(0o022)
    try:
        cli = run_cli("fit", "--config", QUICKSTART, *FAST, *CSV, "--trainer.max_epochs=1")
        folder = Path(cli.trainer.checkpoint_callback.dirpath)
        assert stat.S_IMODE((folder / "last.ckpt").stat().st_mode) == 0o644
        stale = folder / ".last.ckpt.k1ll3d.tmp"
        stale.write_bytes(b"half a checkpoint")
        run_cli("fit", "--config", QUICKSTART, *FAST, *CSV, "--trainer.max_epochs=2", "--ckpt_path", "last")
        assert not stale.exists() and (folder / "last.ckpt").exists()
    finally:
        os.umask(mask)


@pytest.mark.slow
def test_a_run_resumed_from_a_signal_keeps_writing_the_same_last_ckpt(tmp_path):
    """The stop comes before the checkpoint callback's first save: the resumed run's saves overwrite that
    ``last.ckpt`` (which ``--ckpt_path last`` finds), not a ``last-v1.ckpt`` beside it."""
    args = [
        *map(str, LONG),
        "--trainer.max_epochs=3",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.limit_val_batches=1",
    ]
    run_cli("fit", *args, "--trainer.callbacks+=tests.helpers.faults.StopWithLast")
    (last,) = tmp_path.glob("attnseg/*/checkpoints/last.ckpt")
    assert step(last) == 1
    resumed = run_cli("fit", *args, "--ckpt_path", "last")
    assert sorted(p.name for p in last.parent.glob("last*.ckpt")) == ["last.ckpt"]
    assert step(last) == resumed.trainer.global_step > 4  # every later save went into this file


def test_a_restored_checkpoint_callback_names_last_ckpt_in_its_own_folder(tmp_path):
    """State saved before the callback wrote any last file (or naming a versioned one) resumes writing last.ckpt."""
    from attnseg.checkpoint import Checkpoint

    folder = str(tmp_path / "checkpoints")
    for named in ("", f"{folder}/last-v1.ckpt"):
        callback = Checkpoint(dirpath=folder, save_last=True)
        callback.load_state_dict(
            {"dirpath": folder, "best_model_score": None, "best_model_path": "", "last_model_path": named}
        )
        assert callback.last_model_path == f"{folder}/last.ckpt"
    elsewhere = Checkpoint(dirpath=folder, save_last=True)
    elsewhere.load_state_dict(
        {"dirpath": str(tmp_path / "other"), "best_model_score": None, "best_model_path": "", "last_model_path": ""}
    )
    assert elsewhere.last_model_path == ""  # another folder's state: Lightning's rule (nothing restored)


@pytest.mark.slow
def test_a_stop_signal_during_validation_stops_there_and_the_resume_validates_whole(capsys):
    """SIGTERM at the second batch of the first validation (after step 4): the fit stops there (143) without
    finishing that validation, saves step 4, and the resumed fit trains on and validates every later epoch whole."""
    base = ["--config", QUICKSTART, *FAST, *CSV, "--data.dataset_args.num_samples=16", "--trainer.max_epochs=3"]
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", *base, "--trainer.callbacks+=tests.helpers.faults.StopDuringValidation")
    assert stop.value.code == 143 and "SIGTERM received: stopped at step 4" in capsys.readouterr().out
    last = next(Path("runs/attnseg").glob("*/checkpoints/last.ckpt"))
    assert step(last) == 4
    cli = run_cli("fit", *base, "--ckpt_path", "last")
    assert cli.trainer.global_step == 12 and step(last) == 12
    rows = [r for r in csv.DictReader(open(last.parent.parent / "metrics.csv")) if r["val/mIoU"]]
    assert [r["epoch"] for r in rows] == ["1", "2"]  # epoch 0's validation was dropped, not logged in part
    assert cli.trainer.fit_loop.epoch_loop.val_loop.batch_progress.current.completed == 4  # 16 images, batches of 4
