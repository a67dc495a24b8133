"""configs/data/*.yaml and configs/experiment/*.yaml: what they resolve to when composed as the comments say
(experiment, whose base: reads its data file, + model file + --data.root). Each also runs fast_dev_run fit / validate /
test on a tiny copy of its dataset's layout in test_cli.py (CASES)."""

from __future__ import annotations

import inspect

import pytest
import yaml

from attnseg.data import DATASETS, SegDataModule
from tests.helpers.cli import CONFIGS, QUICKSTART, run_cli

DATA_FILES = sorted(p.name for p in (CONFIGS / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.name for p in (CONFIGS / "experiment").glob("*.yaml"))

# The recipe each experiment must resolve to: data file, crop, batch, iterations, validation interval, lr,
# weight decay, evaluation mode (class, window, stride).
SLIDE_769 = ("SlidingWindow", [769, 769], [513, 513])
SLIDE_480 = ("SlidingWindow", [480, 480], [320, 320])
RECIPES = {
    "cityscapes.yaml": ("cityscapes.yaml", [769, 769], 8, 80000, 8000, 0.01, 5e-4, SLIDE_769),
    "ade20k.yaml": ("ade20k.yaml", [512, 512], 16, 160000, 16000, 0.01, 5e-4, ("Whole",)),
    "voc_aug.yaml": ("voc_aug.yaml", [512, 512], 16, 40000, 4000, 0.01, 5e-4, ("Whole",)),
    "pascal_context.yaml": ("pascal_context.yaml", [480, 480], 16, 80000, 8000, 0.004, 1e-4, SLIDE_480),
    "coco_stuff.yaml": ("coco_stuff.yaml", [512, 512], 16, 80000, 8000, 0.01, 5e-4, ("Whole",)),
    "camvid.yaml": ("camvid.yaml", [360, 480], 8, 10000, 1000, 0.01, 5e-4, ("Whole",)),
}


def printed_config(capsys, *args) -> dict:
    with pytest.raises(SystemExit):
        run_cli("fit", *args, "--print_config")
    return yaml.safe_load(capsys.readouterr().out)


# Recipes of this project's own (no paper states them), checked separately.
OWN_RECIPES = {"camvid_r18_cpu.yaml", "camvid_mobilenetv2_cpu.yaml", "clips_cpu.yaml", "context.yaml"}
# The papers' own recipes: differences composed after cityscapes.yaml and the model file
# (test_cli.py: test_paper_recipes_resolve_to_their_sources, and a fast_dev_run each).
PAPER_RECIPES = {"cityscapes_danet.yaml", "cityscapes_ccnet.yaml", "cityscapes_dfn.yaml"}
# head_lr_mult of each recipe: 10 (DANet's code) unless mmsegmentation's single rate is followed
HEAD_LR_MULT = {"cityscapes.yaml": 1.0}


def test_every_file_has_a_recipe_and_a_data_file():
    assert set(EXPERIMENTS) == set(RECIPES) | OWN_RECIPES | PAPER_RECIPES
    assert {
        "synthetic.yaml",
        "camvid.yaml",
        "camvid_half.yaml",
        "cityscapes.yaml",
        "voc_aug.yaml",
        "ade20k.yaml",
        "pascal_context.yaml",
        "coco_stuff.yaml",
    } == set(DATA_FILES)


@pytest.mark.parametrize("name", DATA_FILES)
def test_data_files_are_group_files_of_known_datasets(name):
    """Group files (one ``data:`` section, composed with --config like every other group) naming a dataset of
    ``attnseg.data`` and only SegDataModule options; every pipeline option is stated, so a file composed on top of
    another leaves nothing behind."""
    text = (CONFIGS / "data" / name).read_text()
    (section,) = yaml.safe_load(text)
    assert section == "data"
    values = yaml.safe_load(text)["data"]
    assert values["dataset"] in DATASETS
    options = set(inspect.signature(SegDataModule).parameters)
    assert set(values) <= options
    stated = {
        "dataset",
        "root",
        "dataset_args",
        "train_splits",
        "val_split",
        "test_split",
        "batch_size",
        "val_batch_size",
        "crop_size",
        "scale_range",
        "base_size",
        "cat_max_ratio",
        "flip",
        "photometric",
    }
    assert stated <= set(values)
    assert values["root"] is None  # the download's location is given with --data.root
    assert f"--config data/{name.removesuffix('.yaml')}" in text, "the header shows how to use the file"
    cls = DATASETS[values["dataset"]]
    assert {values["val_split"], values["test_split"], *values["train_splits"]} <= set(cls.splits)
    if values["dataset"] != "SyntheticShapes":
        assert "Layout" in cls.__doc__  # the README's layout section is written from the docstring
        assert values["val_batch_size"] == 1  # full images of different sizes


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_experiment_composes_with_a_model_file_and_a_root(name, capsys, tmp_path):
    data_file, crop, batch, steps, every, lr, decay, inference = RECIPES[name]
    text = (CONFIGS / "experiment" / name).read_text()
    header = text.split("\nbase:")[0]
    assert f"attnseg fit --config experiment/{name.removesuffix('.yaml')} --config model/danet" in header
    assert "--data.root /path/to/" in header and "Sources" in header and "Differs" in header
    assert "mmsegmentation" in header

    printed = printed_config(
        capsys,
        "--config",
        CONFIGS / "experiment" / name,
        "--config",
        CONFIGS / "model" / "danet.yaml",
        "--data.root",
        tmp_path,
    )
    assert yaml.safe_load(text)["base"] == [f"../data/{data_file}"]
    data_values = yaml.safe_load((CONFIGS / "data" / data_file).read_text())["data"]
    data = printed["data"]
    assert data["root"] == str(tmp_path)
    assert {k: data[k] for k in data_values if k != "root"} == {k: v for k, v in data_values.items() if k != "root"}
    assert data["crop_size"] == crop and data["batch_size"] == batch and data["scale_range"] == [0.5, 2.0]
    assert data["cat_max_ratio"] == 0.75

    trainer, model = printed["trainer"], printed["model"]
    assert trainer["max_steps"] == steps and trainer["val_check_interval"] == every
    assert trainer["check_val_every_n_epoch"] is None
    assert trainer["precision"] is None and trainer["devices"] == "auto"  # left to the user
    assert model["head"]["class_path"] == "attnseg.heads.DANetHead"  # the second --config chose the head
    assert model["encoder"] == {
        "name": "resnet101",
        "output_stride": 8,
        "pretrained": "/path/to/resnet101.pth",
        "out_indices": None,
    }
    assert model["optimizer"] == "sgd" and model["lr"] == lr and model["weight_decay"] == decay
    assert model["momentum"] == 0.9 and model["poly_power"] == 0.9
    assert model["head_lr_mult"] == HEAD_LR_MULT.get(name, 10.0)
    assert model["inference"]["class_path"] == f"attnseg.inference.{inference[0]}"
    if inference[0] == "SlidingWindow":
        args = model["inference"]["init_args"]
        assert [args["crop_size"], args["stride"]] == list(inference[1:])


def test_cpu_camvid_recipe_trains_at_half_size_and_scores_full_size_labels(capsys, tmp_path):
    printed = printed_config(
        capsys,
        "--config",
        CONFIGS / "experiment" / "camvid_r18_cpu.yaml",
        "--config",
        CONFIGS / "model" / "fcn.yaml",
        "--data.root",
        tmp_path,
    )
    data, model = printed["data"], printed["model"]
    assert data["dataset"] == "CamVid" and data["train_splits"] == ["train", "val"]
    assert data["crop_size"] == [180, 240] and data["scale_range"] == [0.25, 1.0]
    assert model["encoder"]["name"] == "resnet18" and model["encoder"]["pretrained"] is None
    assert model["optimizer"] == "adamw" and model["head_lr_mult"] == 1.0
    assert model["inference"] == {
        "class_path": "attnseg.inference.MultiScaleFlip",
        "init_args": {"scales": [0.5], "flip": False, "base": None},
    }


def test_data_file_on_top_of_the_quickstart_replaces_its_data(capsys, tmp_path):
    printed = printed_config(
        capsys, "--config", QUICKSTART, "--config", CONFIGS / "data" / "cityscapes.yaml", "--data.root", tmp_path
    )
    data = printed["data"]
    assert data["dataset"] == "Cityscapes" and data["dataset_args"] is None  # the quickstart's image_size is gone
    assert data["base_size"] == [1025, 2049] and data["photometric"] is True and data["root"] == str(tmp_path)
    assert printed["model"]["encoder"]["name"] == "resnet18"  # the rest of the quickstart stays
