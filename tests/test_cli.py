"""The CLI end to end: every YAML under configs/ passes fast_dev_run fit, validate and test;
print_config; repeated runs in one directory; the end-of-fit summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, run_cli
from tests.helpers.layouts import SMALL_WINDOWS, data_config_case, experiment_case, pretrained_experiment_case


def quickstart_with(config: str):
    """Partial configs (a head, a logger...) are composed on top of the quickstart."""
    return lambda tmp_path: ["--config", QUICKSTART, "--config", CONFIGS / config, *FAST]


def paper_recipe_case(head: str):
    """A paper's Cityscapes recipe as README runs it (one file: its base reads the shared recipe and the model
    first), small."""

    def args(tmp_path: Path) -> list:
        small = experiment_case("experiment/cityscapes.yaml", "Cityscapes", *SMALL_WINDOWS)(tmp_path)[2:]
        return ["--config", CONFIGS / f"experiment/cityscapes_{head}.yaml"] + small

    return args


# Each YAML under configs/ and how to run it small; a config whose data lives elsewhere gets
# a tiny dataset in its layout generated under tmp_path (see the dataset tests' helpers).
CASES = {
    "quickstart.yaml": lambda tmp_path: ["--config", QUICKSTART, *FAST],
    "logger/csv.yaml": quickstart_with("logger/csv.yaml"),
    "logger/wandb.yaml": quickstart_with("logger/wandb.yaml"),
    "logger/tensorboard.yaml": quickstart_with("logger/tensorboard.yaml"),
    # the GPU preset on the CPU (bf16-mixed runs there too), with one persistent worker
    "trainer/fast_gpu.yaml": lambda tmp_path: [
        "--config",
        QUICKSTART,
        "--config",
        CONFIGS / "trainer/fast_gpu.yaml",
        *FAST,
        "--trainer.accelerator=cpu",
        "--data.num_workers=1",
    ],
    "trainer/smoke.yaml": quickstart_with("trainer/smoke.yaml"),
    "trainer/ema.yaml": quickstart_with("trainer/ema.yaml"),
    # fast_dev_run skips the learning-rate search itself: tests/test_user_features.py runs it
    "trainer/lr_find.yaml": quickstart_with("trainer/lr_find.yaml"),
    "model/fcn.yaml": quickstart_with("model/fcn.yaml"),
    "model/danet.yaml": quickstart_with("model/danet.yaml"),
    "model/ccnet.yaml": quickstart_with("model/ccnet.yaml"),
    "model/flanet.yaml": quickstart_with("model/flanet.yaml"),
    "model/dfn.yaml": quickstart_with("model/dfn.yaml"),
    "model/deeplabv3.yaml": quickstart_with("model/deeplabv3.yaml"),
    "model/pspnet.yaml": quickstart_with("model/pspnet.yaml"),
    "data/synthetic.yaml": lambda tmp_path: [
        "--config",
        QUICKSTART,
        "--config",
        CONFIGS / "data/synthetic.yaml",
        *FAST,
    ],
    "data/camvid.yaml": data_config_case("data/camvid.yaml", "CamVid"),
    "data/camvid_half.yaml": data_config_case("data/camvid_half.yaml", "CamVid"),
    "data/cityscapes.yaml": data_config_case("data/cityscapes.yaml", "Cityscapes"),
    "data/voc_aug.yaml": data_config_case("data/voc_aug.yaml", "VOC"),
    "data/ade20k.yaml": data_config_case("data/ade20k.yaml", "ADE20K"),
    "data/pascal_context.yaml": data_config_case("data/pascal_context.yaml", "PascalContext"),
    "data/coco_stuff.yaml": data_config_case("data/coco_stuff.yaml", "COCOStuff"),
    "experiment/camvid.yaml": experiment_case("experiment/camvid.yaml", "CamVid"),
    "experiment/camvid_r18_cpu.yaml": experiment_case("experiment/camvid_r18_cpu.yaml", "CamVid"),
    "experiment/camvid_mobilenetv2_cpu.yaml": pretrained_experiment_case(
        "experiment/camvid_mobilenetv2_cpu.yaml", "CamVid", "mobilenetv2"
    ),
    "experiment/cityscapes.yaml": experiment_case("experiment/cityscapes.yaml", "Cityscapes", *SMALL_WINDOWS),
    "experiment/voc_aug.yaml": experiment_case("experiment/voc_aug.yaml", "VOC"),
    "experiment/ade20k.yaml": experiment_case("experiment/ade20k.yaml", "ADE20K"),
    "experiment/pascal_context.yaml": experiment_case(
        "experiment/pascal_context.yaml", "PascalContext", *SMALL_WINDOWS
    ),
    "experiment/coco_stuff.yaml": experiment_case("experiment/coco_stuff.yaml", "COCOStuff"),
    "experiment/clips_cpu.yaml": lambda tmp_path: [
        "--config",
        CONFIGS / "experiment/clips_cpu.yaml",
        "--data.dataset_args.image_size=32",
        "--data.dataset_args.num_samples=4",
        "--data.batch_size=2",
        "--data.val_batch_size=2",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ],
    "experiment/context.yaml": lambda tmp_path: [
        "--config",
        QUICKSTART,
        "--config",
        CONFIGS / "experiment/context.yaml",
        "--config",
        CONFIGS / "model/ccnet.yaml",
        *FAST,
    ],
    "experiment/cityscapes_danet.yaml": paper_recipe_case("danet"),
    "experiment/cityscapes_ccnet.yaml": paper_recipe_case("ccnet"),
    "experiment/cityscapes_dfn.yaml": paper_recipe_case("dfn"),
}
SWEEP_DIRS = ("ablation",)  # sweep files, exercised by the sweep tests


def test_every_config_is_exercised():
    files = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    sweeps = {f for f in files if f.split("/")[0] in SWEEP_DIRS}
    assert files - sweeps <= set(CASES), f"configs without a CLI test: {sorted(files - sweeps - set(CASES))}"


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CASES))
def test_config_fast_dev_run(config, tmp_path):
    args = CASES[config](tmp_path)
    for subcommand in ("fit", "validate", "test"):
        cli = run_cli(subcommand, *args, "--trainer.fast_dev_run=1")
        assert cli.trainer.state.finished, f"{config}: {subcommand} did not finish"
    metrics = cli.trainer.callback_metrics
    assert "test/mIoU" in metrics and 0.0 <= float(metrics["test/mIoU"]) <= 1.0


def test_print_config_shows_resolved_choices(capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", QUICKSTART, "--model.encoder.output_stride=16", "--print_config")
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["head"]["class_path"] == "attnseg.heads.FCNHead"
    assert printed["model"]["encoder"] == {
        "name": "resnet18",
        "output_stride": 16,
        "pretrained": None,
        "out_indices": None,
    }
    assert printed["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    assert printed["trainer"]["logger"]["init_args"]["offline"] is True


@pytest.mark.slow
def test_head_and_encoder_options_from_the_command_line():
    cli = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.fast_dev_run=1",
        "--model.head=attnseg.heads.FCNHead",
        "--model.head.aux=false",
        "--model.head.num_convs=1",
        "--model.encoder.name=resnet18",
        "--model.encoder.output_stride=16",
    )
    model = cli.model.model
    assert model.head.aux is None and len(model.head.convs) == 1
    assert model.encoder.strides[-1] == 16
    # linked from the datamodule
    assert cli.model.num_classes == 7 and cli.model.class_names[-1] == "cold_blob"


@pytest.mark.slow
def test_two_runs_in_one_directory_keep_their_own_config(capsys):
    short = ["--config", QUICKSTART, *FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
    first = run_cli("fit", *short)
    second = run_cli("fit", *short, "--model.lr=0.02")
    out = capsys.readouterr().out
    dirs = [Path(cli.trainer.checkpoint_callback.dirpath).parent for cli in (first, second)]
    assert dirs[0] != dirs[1] and all(d.parent == Path("runs/attnseg") for d in dirs)
    saved = [yaml.safe_load((d / "config.yaml").read_text()) for d in dirs]
    assert [s["model"]["lr"] for s in saved] == [0.002, 0.02]
    assert not Path("config.yaml").exists()
    # W&B got the resolved config too (offline run files)
    assert first.trainer.logger.experiment.config["model"]["lr"] == 0.002
    # fit ends by naming the best score and checkpoint
    assert out.count("Best val/mIoU:") == 2
    best = second.trainer.checkpoint_callback.best_model_path
    assert f"Best checkpoint: {best}" in out and Path(best).is_file()


@pytest.mark.slow
def test_console_script_and_module_entry_points():
    for cmd in (["attnseg", "--help"], [sys.executable, "-m", "attnseg", "--help"]):
        exe = Path(sys.executable).parent / cmd[0] if cmd[0] == "attnseg" else cmd[0]
        proc = subprocess.run([str(exe), *cmd[1:]], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "fit" in proc.stdout and "validate" in proc.stdout and "predict" in proc.stdout


def test_paper_recipes_resolve_to_their_sources(tmp_path, capsys):
    """Each paper's recipe (its base: the shared recipe, its data file and the model) gives the values its file
    cites, as one --config by short name."""
    expected = {
        "danet": {
            "model.lr": 0.01,
            "model.weight_decay": 0.0001,
            "model.head_lr_mult": 10.0,
            "model.min_lr": 0.0,
            "model.head.init_args.aux": False,
            "data.scale_range": [0.75, 2.0],
            "trainer.max_steps": 89040,
        },
        "ccnet": {
            "model.lr": 0.01,
            "model.weight_decay": 0.0001,
            "model.head_lr_mult": 1.0,
            "model.loss.class_path": "attnseg.losses.OHEMCrossEntropy",
            "model.loss.init_args.thresh": 0.7,
            "model.loss.init_args.min_kept": 100000,
            "model.aux_loss.class_path": "attnseg.losses.CrossEntropy",
            "model.head.init_args.recurrence": 2,
            "trainer.max_steps": 60000,
        },
        "dfn": {
            "model.lr": 0.0007,
            "model.weight_decay": 0.0001,
            "model.no_decay_norm_bias": True,
            "model.head_lr_mult": 10.0,
            "model.encoder.output_stride": 32,
            "trainer.max_steps": 80000,
            "data.batch_size": 16,
            "data.photometric": False,
        },
    }
    for head, values in expected.items():
        with pytest.raises(SystemExit):
            run_cli("fit", "--config", f"experiment/cityscapes_{head}", "--print_config")
        printed = yaml.safe_load(capsys.readouterr().out)
        for key, value in values.items():
            node = printed
            for part in key.split("."):
                node = node[part]
            assert node == value, f"{head}: {key} = {node}, expected {value}"
        assert printed["data"]["dataset"] == "Cityscapes" and printed["model"]["encoder"]["name"] == "resnet101"


@pytest.mark.slow
def test_help_lists_every_command_with_a_line_each():
    attnseg = Path(sys.executable).parent / "attnseg"
    proc = subprocess.run([attnseg, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: attnseg <command> [options]")
    assert "attention heads for semantic segmentation" in proc.stdout
    for command in ("fit", "validate", "test", "predict", "sweep", "check-data", "configs"):
        assert f"\n  {command} " in proc.stdout, command
    bare = subprocess.run([attnseg], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and bare.stdout == proc.stdout  # says what to pass instead of failing obscurely
    sweep = subprocess.run([attnseg, "sweep", "--help"], capture_output=True, text=True, timeout=120)
    assert sweep.returncode == 0 and "usage:" in sweep.stdout


@pytest.mark.slow
def test_the_smoke_recipe_validates_and_writes_inside_its_run_folder(capsys):
    """trainer/smoke over the quickstart at full size: 4 steps, one validation with a printed result, the checkpoint
    and the logs in the run's own folder and nothing in the working folder besides runs/."""
    run_cli(
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        CONFIGS / "logger/csv.yaml",
        "--config",
        "trainer/smoke",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
    )
    assert "Best val/mIoU: " in capsys.readouterr().out
    (run,) = Path("runs/attnseg").iterdir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert "val/mIoU" in rows[0] and any(line.split(",")[0] for line in rows[1:])
    assert sorted(p.name for p in Path(".").iterdir()) == ["runs"]
