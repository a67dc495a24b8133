"""Bad input to the CLI gets a clear error naming the option, file or checkpoint and what was expected: a checkpoint
of another model, a file that is not a checkpoint, config errors, an evaluation without its config, batch options,
a misspelt command; and each command's help is short."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.cli import FAST, QUICKSTART, REPO, run_cli


def test_a_ckpt_path_that_is_not_a_checkpoint_file_says_what_it_is(tmp_path):
    base = ["--config", QUICKSTART, *FAST]
    torch.save({"model": {"w": torch.ones(2)}}, "plain.pt")
    with pytest.raises(ValueError, match=r"plain.pt: not a checkpoint written by attnseg fit .*it holds model"):
        run_cli("fit", *base, "--ckpt_path", "plain.pt")
    Path("ckpts").mkdir()
    torch.save({"model": {}}, "ckpts/a.ckpt")
    with pytest.raises(ValueError, match=r"ckpts: a directory; pass one checkpoint file in it: ckpts/a.ckpt"):
        run_cli("validate", *base, "--ckpt_path", "ckpts")
    with pytest.raises(ValueError, match=r"--ckpt_path best: .*best-\*.ckpt"):
        run_cli("test", *base, "--ckpt_path", "best")
    assert not Path("runs").exists()  # refused before any run folder was made


def test_checkpoint_of_another_class_count_or_head_is_refused(tmp_path):
    cli = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.default_root_dir=r",
    )
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    with pytest.raises(ValueError, match=r"last.ckpt.*7 classes.*8 classes"):
        run_cli(
            "validate",
            "--config",
            QUICKSTART,
            *FAST,
            "--ckpt_path",
            ckpt,
            "--data.dataset=tests.helpers.faults.ExtraClassShapes",
        )
    with pytest.raises(ValueError, match=r"last.ckpt.*num_convs=1 \(checkpoint: 2; set on the command line\)"):
        run_cli("validate", "--config", QUICKSTART, *FAST, "--ckpt_path", ckpt, "--model.head.num_convs=1")
    with pytest.raises(ValueError, match=r"encoder.name=resnet34 \(checkpoint: resnet18; set on the command line\)"):
        run_cli("validate", "--config", QUICKSTART, *FAST, "--ckpt_path", ckpt, "--model.encoder.name=resnet34")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        run_cli("validate", "--config", QUICKSTART, *FAST, "--ckpt_path", "nope.ckpt")
    # the checkpoint itself is untouched and still evaluates
    assert run_cli("validate", "--config", QUICKSTART, *FAST, "--ckpt_path", ckpt).trainer.state.finished


def test_config_errors_name_the_option(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"data.num_classes=5.*SyntheticShapes has 7 classes"):
        run_cli("fit", "--config", QUICKSTART, *FAST, "--data.num_classes=5")
    with pytest.raises(ValueError, match=r"encoder.name='resnet_typo'"):
        run_cli("fit", "--config", QUICKSTART, *FAST, "--model.encoder.name=resnet_typo")
    with pytest.raises(ValueError, match=r"output_stride=4"):
        run_cli("fit", "--config", QUICKSTART, *FAST, "--model.encoder.output_stride=4")
    with pytest.raises(FileNotFoundError, match=r"missing/r18.pth"):
        run_cli("fit", "--config", QUICKSTART, *FAST, "--model.encoder.pretrained=missing/r18.pth")
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", QUICKSTART, *FAST, "--model.head=attnseg.heads.NoSuchHead")
    assert "NoSuchHead" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"data.std=\[0.0, 0.0, 0.0\]: expected three positive numbers"):
        run_cli("fit", "--config", QUICKSTART, *FAST, "--data.std=[0,0,0]")
    Path("m3.yaml").write_text("model: 3\n")
    with pytest.raises(ValueError, match=r"--config \S*m3.yaml: 'model' is 3; expected a mapping of its options"):
        run_cli("fit", "--config", QUICKSTART, "--config", "m3.yaml")
    Path("adir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--config adir: a directory; pass one YAML file"):
        run_cli("fit", "--config", "adir")


def test_an_evaluation_without_a_config_is_refused_naming_the_runs_own(tmp_path):
    cli = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=1",
        "--config",
        REPO / "configs/logger/csv.yaml",
    )
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    saved = ckpt.parent.parent / "config.yaml"
    with pytest.raises(ValueError, match=rf"no --config given, .*; pass --config {saved} \(the run's own\)"):
        run_cli("validate", "--ckpt_path", ckpt)
    Path("wide.yaml").write_text("model:\n  head:\n    init_args:\n      num_convs: 1\n")
    with pytest.raises(
        ValueError, match=r"num_convs=1 \(checkpoint: 2; set in --config \S*quickstart.yaml, \S*wide.yaml\)"
    ):
        run_cli("validate", "--config", QUICKSTART, "--config", "wide.yaml", *FAST, "--ckpt_path", ckpt)
    assert run_cli(
        "validate", "--config", saved, "--ckpt_path", ckpt, "--trainer.limit_val_batches=1"
    ).trainer.state.finished


def test_a_misspelt_command_lists_every_command(capsys):
    from attnseg.__main__ import run

    assert run(["trian"]) == 2
    assert (
        "unknown command 'trian' (did you mean fit?); commands: fit, validate, test, predict, sweep, check-data, "
        "configs" in capsys.readouterr().err
    )


def test_batch_errors_name_the_option(tmp_path):
    from attnseg.data.datamodule import SameSizeCollate

    with pytest.raises(ValueError, match=r"data.batch_size=16 but the training set \['train'\] has only 8 samples"):
        run_cli("fit", "--config", QUICKSTART, *FAST, "--data.batch_size=16")
    samples = [(torch.zeros(3, 4, 5), torch.zeros(4, 5)), (torch.zeros(3, 6, 5), torch.zeros(6, 5))]
    with pytest.raises(ValueError, match=r"sizes \[\(4, 5\), \(6, 5\)\].*data.val_batch_size: 1"):
        SameSizeCollate("data.val_batch_size")(samples)


def test_the_help_of_a_command_is_short_and_points_to_each_group(capsys):
    from attnseg.__main__ import run

    assert run(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 40 and "--model.head.help CCNetHead" in text and "--help-all" in text
    assert run(["test", "-h"]) == 0 and "the checkpoint to evaluate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(["fit", "--help-all"])
    assert len(capsys.readouterr().out.splitlines()) > 1000  # every option of every group
