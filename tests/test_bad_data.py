"""Data faults found before training, all at once (``attnseg check-data``, ``data.check_before_fit``), files the
loader used to leave out silently, and messages that name the culprit (a damaged checkpoint, a YAML error in
one of several config files, a bad option value, an unreadable image in predict), ending in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnseg.data import CamVid
from tests.helpers.cli import FAST, QUICKSTART, REPO, run_cli
from tests.helpers.layouts import camvid

ATTNSEG = str(Path(sys.executable).parent / "attnseg")
TINY_CAMVID = [
    "--config",
    QUICKSTART,
    "--data.dataset=CamVid",
    "--data.dataset_args=null",
    "--data.crop_size=[16,16]",
    "--data.batch_size=2",
    "--data.val_batch_size=1",
    "--data.num_workers=0",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.max_epochs=1",
]


def attnseg(*args, env=None):
    env = {
        **{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"},
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run([ATTNSEG, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def broken_camvid(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny CamVid with one of each data fault."""
    root = camvid(tmp_path, {"train": 6, "val": 2, "test": 2})
    train, annot = sorted((root / "train").iterdir()), sorted((root / "trainannot").iterdir())
    faults = {"truncated": train[0], "16-bit": annot[1], "value": annot[2], "size": annot[3]}
    faults["truncated"].write_bytes(faults["truncated"].read_bytes()[:60])
    Image.fromarray(np.full((20, 30), 300, dtype=np.uint16)).save(faults["16-bit"])
    Image.fromarray(np.full((20, 30), 42, dtype=np.uint8)).save(faults["value"])
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(faults["size"])
    return root, faults


@pytest.mark.slow
def test_check_data_reads_every_sample_and_names_every_problem(tmp_path):
    root, faults = broken_camvid(tmp_path)
    proc = attnseg("check-data", *TINY_CAMVID, "--data.root", root)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "data check: 4 problem(s) (samples read: train 2, val 2, test 2)" in proc.stdout
    assert f"{faults['truncated']}: cannot read the image" in proc.stdout
    assert f"{faults['16-bit']}: label image has mode I;16" in proc.stdout
    assert f"{faults['value']}: label values [42] are neither a class nor void" in proc.stdout
    assert f"{faults['size']}: label map is (5, 5) (H, W)" in proc.stdout

    clean = camvid(tmp_path / "clean")
    proc = attnseg("check-data", *TINY_CAMVID, "--data.root", clean)
    assert proc.returncode == 0
    assert "data check: every sample read (train 3, val 2, test 2); no problem found" in proc.stdout


def test_check_before_fit_stops_before_any_step_and_writes_nothing(tmp_path):
    root, faults = broken_camvid(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)4 problem\(s\).*nothing was trained") as error:
        run_cli(
            "fit", *TINY_CAMVID, "--data.root", root, "--data.check_before_fit=true", "--trainer.default_root_dir=out"
        )
    assert all(str(path) in str(error.value) for path in faults.values())
    assert not list(Path(".").rglob("*.ckpt"))


@pytest.mark.slow
def test_all_void_training_labels_are_refused_by_the_check_and_warned_in_training(tmp_path):
    root = camvid(tmp_path)
    for label in (root / "trainannot").iterdir():
        Image.fromarray(np.full((20, 30), 11, dtype=np.uint8)).save(label)  # 11: CamVid's void
    proc = attnseg("check-data", *TINY_CAMVID, "--data.root", root)
    assert proc.returncode == 1 and "every label pixel of the 3 training samples is void (255)" in proc.stdout
    with pytest.warns(UserWarning, match=r"epoch 0: every label pixel of the training batches was void"):
        run_cli("fit", *TINY_CAMVID, "--data.root", root, "--data.batch_size=1")


def test_upper_case_suffixes_are_read_and_broken_links_named(tmp_path):
    root = camvid(tmp_path)
    image, label = sorted((root / "train").iterdir())[0], sorted((root / "trainannot").iterdir())[0]
    image.rename(image.with_suffix(".PNG"))
    label.rename(label.with_suffix(".PNG"))
    assert len(CamVid(root, "train")) == 3  # read, not left out
    link = root / "train" / "0001TP_099999.png"
    link.symlink_to(root / "train" / "gone.png")
    with pytest.raises(ValueError, match=rf"{link}: broken symbolic link \(to .*gone.png\); expected a readable file"):
        CamVid(root, "train")


@pytest.mark.slow
def test_damaged_checkpoints_are_named_with_what_they_are(tmp_path):
    cli = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.default_root_dir=out",
    )
    good = Path(cli.trainer.checkpoint_callback.last_model_path)
    truncated, text = tmp_path / "cut.ckpt", tmp_path / "notes.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text.write_text("this is not a checkpoint\n")
    before = good.read_bytes()
    for path, what in ((truncated, "a truncated or damaged checkpoint"), (text, "a text file, not a checkpoint")):
        with pytest.raises(ValueError, match=rf"--ckpt_path {path}: {what} \(.*\); expected a .ckpt file"):
            run_cli("validate", "--config", QUICKSTART, *FAST, "--trainer.logger=false", "--ckpt_path", path)
    assert good.read_bytes() == before


def test_a_yaml_error_names_its_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lr: 0.01\n  head: [unclosed\n")
    with pytest.raises(ValueError, match=rf"--config {bad}: not valid YAML at line 4, column 1: .*"):
        run_cli("fit", "--config", QUICKSTART, "--config", bad)


@pytest.mark.parametrize(
    "option, message",
    [
        ("--data.batch_size=-2", "data.batch_size=-2: expected a whole number of at least 1"),
        ("--data.num_workers=-1", "data.num_workers=-1: expected 0 (load in the main process) or more"),
        ("--data.crop_size=[0,16]", "data.crop_size=[0, 16]: expected two positive sizes [H, W] (or null)"),
        ("--data.scale_range=[2.0,0.5]", "data.scale_range=[2.0, 0.5]: expected [low, high] with 0 < low <= high"),
    ],
)
def test_bad_option_values_are_named_before_anything_is_built(option, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_cli("fit", "--config", QUICKSTART, *FAST, option)


@pytest.mark.slow
def test_errors_end_with_one_line_and_the_traceback_is_on_request(tmp_path):
    proc = attnseg("fit", "--config", QUICKSTART, *FAST, "--data.batch_size=-2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-2:] == [
        "attnseg: error: ValueError: data.batch_size=-2: expected a whole number of at least 1",
        "(set ATTNSEG_TRACEBACK=1 to see the traceback)",
    ]
    proc = attnseg("fit", "--config", QUICKSTART, *FAST, "--data.batch_size=-2", env={"ATTNSEG_TRACEBACK": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_truncated_image_in_predict_is_named(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(image).save(photos / "street.png")
    (photos / "street.png").write_bytes((photos / "street.png").read_bytes()[:50])
    with pytest.raises(ValueError, match=rf"{photos / 'street.png'}: cannot read the image"):
        run_cli(
            "predict",
            "--config",
            QUICKSTART,
            *FAST,
            "--trainer.logger=false",
            "--data.predict_dir",
            photos,
            "--prediction.output_dir",
            tmp_path / "out",
        )
    assert torch is not None
