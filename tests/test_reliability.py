"""Resume after SIGKILL, atomic checkpoints, DDP training and evaluation, non-finite losses, two writers of one run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnseg.checkpoint import AtomicCheckpointIO
from tests.helpers.cli import FAST, QUICKSTART, REPO, run_cli

ATTNSEG = str(Path(sys.executable).parent / "attnseg")


def child_env() -> dict:
    """The test process's environment for a child ``attnseg``, without the W&B service of this process (a
    child attached to it would write its run files relative to the directory that service started in)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def attnseg(*args, timeout=300, check=True):
    env = child_env()
    proc = subprocess.run([ATTNSEG, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"attnseg {' '.join(map(str, args))} failed:\n{proc.stderr[-4000:]}")
    return proc


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_fit_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    base = ["--config", QUICKSTART, *FAST, "--data.dataset_args.num_samples=16", "--trainer.max_epochs=12"]
    env = child_env()
    proc = subprocess.Popen(
        [ATTNSEG, "fit", *map(str, base)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 240
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list(Path("runs/attnseg").glob("*/checkpoints/last.ckpt"))
        if found and step_of(found[0]) >= 8:  # at least two epochs (4 steps each) saved
            last = found[0]
            break
        time.sleep(0.2)
    assert last is not None, (
        f"no checkpoint before the deadline: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved_step = step_of(last)  # loads: never a half-written file

    out = attnseg("fit", *base, "--ckpt_path", "last", "--trainer.callbacks+=tests.helpers.faults.Probe")
    probe = json.loads(Path("probe.json").read_text())
    assert probe["start_step"] == saved_step > 0  # continued, not restarted
    assert probe["end_step"] == 12 * 4
    runs = list(Path("runs/attnseg").iterdir())
    assert runs == [last.parent.parent], "the resumed fit wrote into a new run directory"
    assert step_of(last) == 12 * 4
    assert (runs[0] / "config.yaml").is_file() and (runs[0] / "config.fit.1.yaml").is_file()
    # the same W&B run id continues (offline run folders end with the run id)
    run_id = runs[0].name
    assert len(list(Path("runs/wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert "Restored all states from the checkpoint" in out.stderr + out.stdout

    # an explicit path works too: one more epoch on top
    attnseg(
        "fit",
        *base[:-1],
        "--trainer.max_epochs=13",
        "--ckpt_path",
        last,
        "--trainer.callbacks+=tests.helpers.faults.Probe",
    )
    probe = json.loads(Path("probe.json").read_text())
    assert probe["start_step"] == 12 * 4 and probe["end_step"] == 13 * 4


def test_atomic_checkpoint_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1  # the old checkpoint is intact
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=rf"{target}: writing the checkpoint failed \(\[enforce fail.*MiB free"):
        io.save_checkpoint({"step": 3, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1 and len(list(target.parent.iterdir())) == 1


def test_last_says_which_run_folder_it_passed_over_and_why(tmp_path):
    base = ["--config", QUICKSTART, *FAST, "--config", REPO / "configs/logger/csv.yaml"]
    run_cli("fit", *base, "--trainer.max_epochs=1")
    run = next(Path("runs/attnseg").iterdir())
    (run / "config.yaml").unlink()
    with pytest.warns(UserWarning, match=rf"passed over {run}: it has a last.ckpt but no readable config.yaml"):
        run_cli("fit", *base, "--trainer.max_epochs=1", "--ckpt_path", "last")


@pytest.mark.slow
def test_ddp_two_cpu_processes_fit_and_validate_match_single_process(tmp_path):
    # 7 validation images over 2 ranks: the default sampler would count one twice
    base = [
        "--config",
        QUICKSTART,
        *FAST,
        "--data.dataset_args.num_samples=7",
        "--data.val_batch_size=2",
        "--data.batch_size=2",
        "--trainer.logger=false",
    ]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    attnseg(
        "fit",
        *base,
        *ddp,
        "--trainer.sync_batchnorm=true",
        "--trainer.max_epochs=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir=ddp",
        "--trainer.callbacks+=tests.helpers.faults.Probe",
        timeout=600,
    )
    probe = json.loads(Path("probe.json").read_text())
    assert probe["world_size"] == 2 and probe["end_step"] == 2  # 7 samples, batch 2, 2 ranks: 2 steps
    # both ranks name the run folder alike (rank 1 inherits rank 0's name): one folder, its checkpoints inside
    folders = [p for p in Path("ddp").glob("*/*") if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "metrics.csv").is_file(), folders
    ckpt = next(folders[0].rglob("last.ckpt"))

    Path("probe.json").unlink()
    attnseg(
        "validate", *base, *ddp, "--ckpt_path", ckpt, "--trainer.callbacks+=tests.helpers.faults.Probe", timeout=600
    )
    ddp_val = json.loads(Path("probe.json").read_text())
    Path("probe.json").unlink()
    attnseg("validate", *base, "--ckpt_path", ckpt, "--trainer.callbacks+=tests.helpers.faults.Probe")
    single = json.loads(Path("probe.json").read_text())
    assert ddp_val["world_size"] == 2 and single["world_size"] == 1
    assert ddp_val["val"]["val/mIoU"] == pytest.approx(single["val"]["val/mIoU"], abs=1e-6)
    assert ddp_val["val"]["val/aAcc"] == pytest.approx(single["val"]["val/aAcc"], abs=1e-6)


def test_nan_loss_stops_with_step_and_terms_and_keeps_last_good_checkpoint(tmp_path):
    from tests.helpers.faults import finite

    # 2 terms per step (out, aux): NaN from step 4 = epoch 2
    args = [
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.max_epochs=3",
        "--model.loss=tests.helpers.faults.NaNAfter",
        "--model.loss.nan_from=8",
    ]
    with pytest.raises(FloatingPointError, match=r"step 4 .*out=nan, aux=nan"):
        run_cli("fit", *args)
    last = next(Path("runs/attnseg").glob("*/checkpoints/last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and finite(ckpt["state_dict"])

    cli = run_cli("fit", *args, "--model.nonfinite_loss=skip")
    assert cli.trainer.state.finished and finite(cli.model.state_dict())


def test_a_skipped_step_leaves_the_batch_norm_statistics_as_they_were(tmp_path):
    """A NaN image makes its batch's forward NaN, batch norm running statistics included; ``skip`` skips the
    update and puts the statistics back, so the run trains on instead of stopping as diverged."""
    from tests.helpers.faults import finite

    cli = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.max_epochs=2",
        "--model.nonfinite_loss=skip",
        "--data.dataset=tests.helpers.faults.NaNImageShapes",
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 4 and finite(cli.model.state_dict())
    assert cli.trainer.callback_metrics["train/skipped_steps"] == 1  # the last epoch's batch with the NaN image


def test_a_forward_that_breaks_batch_norm_statistics_with_a_finite_loss_is_skipped(tmp_path):
    """An overflowing activation leaves a running variance infinite with a finite loss: ``raise`` stops at the next
    validation naming the buffer; ``skip`` skips that step and keeps the statistics as they were."""
    from tests.helpers.faults import finite

    args = [
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.max_epochs=2",
        "--trainer.callbacks+=tests.helpers.faults.InfBatchStatistics",
    ]
    with pytest.raises(FloatingPointError, match=r"hold NaN or inf at step 4 \(e.g. encoder.model.bn1.running_var"):
        run_cli("fit", *args)
    with pytest.warns(UserWarning, match=r"non-finite forward at step 2 \(out=.*; non-finite batch norm statistics"):
        cli = run_cli("fit", *args, "--model.nonfinite_loss=skip")
    assert cli.trainer.state.finished and cli.trainer.global_step == 4 and finite(cli.model.state_dict())
    assert cli.trainer.callback_metrics["train/skipped_steps"] == 1


@pytest.mark.slow
def test_two_resumes_of_one_run_one_writes_the_other_is_refused(tmp_path):
    """A second ``--ckpt_path last`` started while the first still trains the run is refused, naming the holder; the
    first keeps writing alone; once the holder is gone (even killed with SIGKILL) the run resumes again."""
    base = ["--config", QUICKSTART, *FAST, "--config", REPO / "configs/logger/csv.yaml"]
    attnseg("fit", *base, "--trainer.max_epochs=2")
    run = next(Path("runs/attnseg").iterdir())
    first = subprocess.Popen(
        [ATTNSEG, "fit", *map(str, base), "--trainer.max_epochs=100000", "--ckpt_path", "last"],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lock = run / ".writer.lock"
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if lock.is_file() and f"pid {first.pid} " in lock.read_text():
            break
        time.sleep(0.2)
    assert first.poll() is None, first.stderr.read().decode()[-2000:]
    second = attnseg("fit", *base, "--trainer.max_epochs=5", "--ckpt_path", "last", check=False)
    alive = first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert alive and second.returncode == 1
    assert f"{run.resolve()}: this run is being written by another process (pid {first.pid} on " in second.stderr
    assert sorted(p.name for p in Path("runs/attnseg").iterdir()) == [run.name]  # no second folder either
    last = run / "checkpoints/last.ckpt"
    attnseg("fit", *base, f"--trainer.max_epochs={step_of(last) // 2 + 1}", "--ckpt_path", "last")  # not stale
    assert step_of(last) % 2 == 0 and step_of(last) >= 6
