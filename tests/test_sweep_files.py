"""The shipped ablation files expand to the runs they promise (same parameters, outputs and supervision for every
point), sweep files parse or fail with clear errors, and a W&B sweep file runs the same grid."""

from __future__ import annotations

import re

import pytest
import torch

from attnseg.__main__ import main
from attnseg.cli import AttnSegCLI
from attnseg.heads import head_configs
from attnseg.sweep import Sweep, override_args, point_label, short_names
from tests.helpers.cli import CONFIGS
from tests.helpers.sweeps import main_code, write_sweep


def test_bundle_axis_sets_several_options_per_value(tmp_path):
    sweep = write_sweep(
        tmp_path / "s.yaml",
        "grid:\n  head:\n    fcn: {model.head: attnseg.heads.FCNHead}\n"
        "    dfn: {model.head: attnseg.heads.DFNHead, model.loss_weights: {stage1: 0.0}}\n",
    )
    parsed = Sweep.from_file(sweep)
    assert parsed.points() == [{"head": "fcn"}, {"head": "dfn"}]
    args = parsed.arguments({"head": "dfn"}, seed=1)
    assert args[-3:] == [
        "--model.head=attnseg.heads.DFNHead",
        '--model.loss_weights={"stage1": 0.0}',
        "--seed_everything=1",
    ]


@pytest.mark.parametrize(
    "name, expected, module, base",
    [
        (
            "danet",
            [{"pam": p, "cam": c} for p in (True, False) for c in (True, False)],
            "branches.pam.attention.",
            ["quickstart.yaml", "model/danet.yaml"],
        ),
        (
            "ccnet",
            [{"recurrence": r} for r in range(4)],
            "cca.",
            ["quickstart.yaml", "experiment/context.yaml", "model/ccnet.yaml"],
        ),
    ],
)
def test_ablation_grids_differ_only_in_the_module_under_test(name, expected, module, base, capsys):
    """Each shipped ablation expands to its grid x 3 seeds, and two points of it have the same parameters, outputs
    and loss terms apart from the attention module's own parameters."""
    path = CONFIGS / "ablation" / f"{name}.yaml"
    sweep = Sweep.from_file(path)
    points = sweep.points()
    assert [{k.rpartition(".")[2]: v for k, v in p.items()} for p in points] == expected
    assert [b.relative_to(CONFIGS).as_posix() for b in sweep.base] == base
    assert sweep.seeds == [0, 1, 2] and sweep.context_classes == ["warm_blob", "cold_blob"]

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--dry-run", "--", "--trainer.max_epochs=1"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    # the extra argument comes last in every run, after the sweep's own (ccnet.yaml fixes max_epochs=16)
    assert out.count("attnseg fit --config=") == 12 and len(re.findall(r"--trainer\.max_epochs=1\b", out)) == 12

    built = []
    for point in points:
        args = sweep.arguments(point, ["--data.dataset_args.image_size=32", "--data.num_workers=0"])
        task = AttnSegCLI(args=args[1:], run=False).model
        head = task.model.head
        if name == "danet":
            for k in ("pam", "cam"):
                assert isinstance(head.branches[k].attention, torch.nn.Identity) != point[f"model.head.init_args.{k}"]
        else:
            assert head.recurrence == point["model.head.init_args.recurrence"]
        outputs = head([torch.randn(1, c, 4, 4) for c in task.model.encoder.channels])
        built.append((task.loss_weights, set(outputs), {k: v.shape for k, v in head.state_dict().items()}))
    weights, names, _ = built[0]
    largest = max((b[2] for b in built), key=len)
    attention = {k for k in largest if k.startswith(module) or k.startswith("branches.cam.attention.")}
    assert attention, "the grid switches an attention module on somewhere"
    for loss_weights, outputs, params in built:
        assert loss_weights == weights and outputs == names
        assert set(largest) - set(params) <= attention and all(params[k] == largest[k] for k in params)


# every head of configs/model/ (attnseg.heads.head_configs), by its config's name: a new head joins the heads grid
HEADS_GRID = {name: config.cls.__name__ for name, config in head_configs().items()}


BAND_GRID = {
    "danet_pam": "DANetHead",
    "danet_cam": "DANetHead",
    "flanet": "FLANetHead",
    "ccnet": "CCNetHead",
    "deeplabv3": "ASPPHead",
    "pspnet": "PSPHead",
}


@pytest.mark.parametrize(
    "name, expected, variant, channels, epochs",
    [
        ("heads", HEADS_GRID, "far", 128, 12),
        ("band", BAND_GRID, "band", 128, 12),
        ("heads_quickstart", HEADS_GRID, "far", None, 3),
    ],
)
def test_heads_grids_give_every_head_the_same_supervision(name, expected, variant, channels, epochs):
    sweep = Sweep.from_file(CONFIGS / "ablation" / f"{name}.yaml")
    assert sorted(p["head"] for p in sweep.points()) == sorted(expected), f"configs/ablation/{name}.yaml's heads"
    assert sweep.seeds == [0, 1, 2] and sweep.context_classes == ["warm_blob", "cold_blob"]
    assert sweep.early_step == (384 if channels else None)  # the long sweeps report the quickstart's budget too
    heads = {}
    for point in sweep.points():
        args = sweep.arguments(point, ["--data.dataset_args.image_size=32", "--data.num_workers=0"])
        cli = AttnSegCLI(args=args[1:], run=False)
        task = cli.model
        heads[point["head"]] = type(task.model.head).__name__
        assert {k: v for k, v in task.loss_weights.items() if v} == {"out": 1.0, "aux": 0.4}, point
        assert not getattr(task.model.head, "output_losses", {}), point  # no loss of its own (DFN's border is off)
        if channels:  # every head as wide as the encoder's feature
            assert cli.config["model"]["head"]["init_args"]["channels"] == channels, point
        assert (
            cli.config["data"]["dataset_args"]["variant"] == variant and cli.config["trainer"]["max_epochs"] == epochs
        )
        if point["head"] == "ccnet":  # gamma from 1 in the sweeps of configs/ablation/ccnet_gamma1.yaml's recipe
            assert float(task.model.head.cca.gamma) == (1.0 if channels else 0.0), point
        if name == "band" and point["head"].startswith("danet_"):  # one attention module each, the other off
            keep = point["head"].removeprefix("danet_")
            for k in ("pam", "cam"):
                assert isinstance(task.model.head.branches[k].attention, torch.nn.Identity) == (k != keep)
    assert heads == expected


def test_sweep_file_errors(tmp_path, capsys):
    bad = {
        "no base": ("grid:\n  model.lr: [0.1]\n", "'base' names no config"),
        "missing base": ("base: [nowhere.yaml]\ngrid:\n  model.lr: [0.1]\n", "base configs not found"),
        "empty grid": ("base: [x.yaml]\ngrid: {}\n", "'grid' must map"),
        "scalar grid": ("base: [x.yaml]\ngrid:\n  model.lr: 0.1\n", "grid.model.lr is 0.1"),
        "unknown key": ("base: [x.yaml]\ngird:\n  model.lr: [0.1]\n", "unknown keys ['gird']"),
        "bad seeds": ("base: [x.yaml]\ngrid:\n  model.lr: [0.1]\nseeds: 3\n", "seeds is 3; expected a non-empty list"),
        "repeated seed": ("base: [x.yaml]\ngrid:\n  model.lr: [0.1]\nseeds: [1, 1]\n", "repeat a seed"),
        "bad bundle": ("base: [x.yaml]\ngrid:\n  head:\n    fcn: 3\n", "grid.head.fcn is 3"),
        "bad context": ("base: [x.yaml]\ngrid:\n  model.lr: [0.1]\ncontext_classes: blob\n", "context_classes is"),
        "bad early step": ("base: [x.yaml]\ngrid:\n  model.lr: [0.1]\nearly_step: 0\n", "early_step is 0; expected"),
        "early step alone": ("base: [x.yaml]\ngrid:\n  model.lr: [0.1]\nearly_step: 384\n", "needs context_classes"),
    }
    (tmp_path / "x.yaml").write_text("model: {}\n")
    for case, (body, message) in bad.items():
        path = tmp_path / "bad.yaml"
        path.write_text(body)
        with pytest.raises(ValueError) as err:
            Sweep.from_file(path)
        assert message in str(err.value) and str(path) in str(err.value), case
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(tmp_path / "absent.yaml")])
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err


def test_override_formatting_and_labels():
    overrides = {
        "model.head.init_args.pam": False,
        "model.lr": 0.02,
        "trainer.logger": None,
        "data.crop_size": [8, 8],
        "model.head.class_path": "attnseg.heads.FCNHead",
    }
    assert override_args(overrides) == [
        "--model.head.init_args.pam=false",
        "--model.lr=0.02",
        "--trainer.logger=null",
        "--data.crop_size=[8, 8]",
        "--model.head.class_path=attnseg.heads.FCNHead",
    ]
    assert short_names(["model.head.init_args.channels", "model.aux.channels", "model.lr"]) == {
        "model.head.init_args.channels": "init_args.channels",
        "model.aux.channels": "aux.channels",
        "model.lr": "lr",
    }
    assert point_label({"model.head.init_args.pam": True, "model.head.init_args.cam": False}) == "pam=true,cam=false"


def test_video_ablation_compares_2d_and_3d_attention_on_the_same_batches(capsys):
    """configs/ablation/ccnet_video.yaml: frames 1 and 3 x R 1-3 x 3 seeds; every point has the same parameters,
    outputs and loss terms, and a clip batch goes through both (frame by frame, or across the clip)."""
    path = CONFIGS / "ablation" / "ccnet_video.yaml"
    sweep = Sweep.from_file(path)
    points = sweep.points()
    assert [(p["model.head.init_args.frames"], p["model.head.init_args.recurrence"]) for p in points] == [
        (f, r) for f in (1, 3) for r in (1, 2, 3)
    ]
    assert sweep.seeds == [0, 1, 2] and sweep.context_classes == ["warm_blob", "cold_blob"]
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--dry-run"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.count("attnseg fit --config=") == 18
    built = []
    for point in points:
        args = sweep.arguments(point, ["--data.dataset_args.image_size=32", "--data.num_workers=0"])
        task = AttnSegCLI(args=args[1:], run=False).model
        head = task.model.head
        assert head.frames == point["model.head.init_args.frames"] and type(head.cca).__name__ == (
            "CrissCrossAttention3D" if head.frames == 3 else "CrissCrossAttention"
        )
        outputs = head([torch.randn(6, c, 4, 4) for c in task.model.encoder.channels])  # two 3-frame clips
        built.append(
            (
                task.loss_weights,
                {k: v.shape for k, v in outputs.items()},
                {k: v.shape for k, v in head.state_dict().items()},
            )
        )
    assert all(b == built[0] for b in built)


def test_width_ablation_is_the_recurrence_recipe_at_r2_with_wider_attention():
    """configs/ablation/ccnet_width.yaml: R = 2 on two_hop with ccnet.yaml's recipe, attention 256 and 512 channels
    wide (keys of channels / 8), every validation's checkpoint kept."""
    width = Sweep.from_file(CONFIGS / "ablation" / "ccnet_width.yaml")
    recurrence = Sweep.from_file(CONFIGS / "ablation" / "ccnet.yaml")
    assert width.base == recurrence.base and width.seeds == recurrence.seeds
    assert [p["model.head.init_args.channels"] for p in width.points()] == [256, 512]
    same = {k: v for k, v in recurrence.fixed.items() if k != "model.head.init_args.channels"}
    assert width.fixed == {**same, "model.head.init_args.recurrence": 2, "checkpoint.save_top_k": -1}
    for point in width.points():
        args = width.arguments(point, ["--data.dataset_args.image_size=32", "--data.num_workers=0"])
        cli = AttnSegCLI(args=args[1:], run=False)
        cca = cli.model.model.head.cca
        assert cli.model.model.head.recurrence == 2
        assert cca.query.out_channels == point["model.head.init_args.channels"] // 8


def test_gamma_ablation_is_the_recurrence_recipe_with_gamma_starting_at_one():
    """configs/ablation/ccnet_gamma1.yaml: ccnet.yaml's recurrence grid and recipe, the attention's gamma set to 1
    at the start (every R with attention), the same convs and classifier."""
    gamma = Sweep.from_file(CONFIGS / "ablation" / "ccnet_gamma1.yaml")
    recurrence = Sweep.from_file(CONFIGS / "ablation" / "ccnet.yaml")
    assert gamma.base == recurrence.base and gamma.seeds == recurrence.seeds and gamma.grid == recurrence.grid
    assert gamma.fixed == {**recurrence.fixed, "model.head.init_args.gamma_init": 1.0}
    for point in gamma.points():
        args = gamma.arguments(point, ["--data.dataset_args.image_size=32", "--data.num_workers=0"])
        head = AttnSegCLI(args=args[1:], run=False).model.model.head
        assert head.recurrence == point["model.head.init_args.recurrence"]
        assert head.cca is None if head.recurrence == 0 else float(head.cca.gamma) == 1.0


def test_recurrence_control_is_r1_of_the_gamma_recipe_at_four_times_its_steps():
    """configs/ablation/ccnet_control.yaml: R = 1 alone, the recipe of ccnet_gamma1.yaml otherwise, 4x its epochs."""
    control = Sweep.from_file(CONFIGS / "ablation" / "ccnet_control.yaml")
    recipe = Sweep.from_file(CONFIGS / "ablation" / "ccnet_gamma1.yaml")
    assert control.base == recipe.base and control.seeds == recipe.seeds
    assert control.grid == {"model.head.init_args.recurrence": [1]}
    epochs = "trainer.max_epochs"
    assert control.fixed == {**recipe.fixed, epochs: 4 * recipe.fixed[epochs]}


@pytest.mark.parametrize("name", ["heads", "danet", "ccnet_video"])
def test_wandb_sweep_file_runs_the_same_grid(name, tmp_path):
    """The W&B sweep file of a sweep: expanded the way ``wandb agent`` expands it (wandb's own functions), each of
    its runs parses to the same config as the corresponding run of ``attnseg sweep``."""
    import yaml
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    target = tmp_path / "sweep.yaml"
    assert main_code("sweep", str(CONFIGS / "ablation" / f"{name}.yaml"), "--wandb-sweep", str(target)) == 0
    spec = yaml.safe_load(target.read_text())
    assert spec["method"] == "grid" and spec["metric"] == {"name": "val/mIoU", "goal": "maximize"}
    sweep = Sweep.from_file(CONFIGS / "ablation" / f"{name}.yaml")
    parameters = spec["parameters"]
    combos = 1
    for values in parameters.values():
        combos *= len(values["values"])
    assert combos == len(sweep.runs())
    assert main_code("sweep", str(CONFIGS / "ablation" / f"{name}.yaml"), "--wandb-sweep", str(target)) == 2  # kept

    parser = AttnSegCLI(args=["--config", str(CONFIGS / "quickstart.yaml")], run=False).parser
    expand = __import__("attnseg.configs", fromlist=["expand_config_args"]).expand_config_args
    keys = list(parameters)
    for index, (point, seed) in enumerate(sweep.runs()[:: len(sweep.seeds)]):  # one seed per point, then vary seeds
        seed = sweep.seeds[index % len(sweep.seeds)]
        choice = {}
        for key in keys:
            if key == "config":
                (axis,) = sweep.bundles
                choice[key] = parameters[key]["values"][list(sweep.grid[axis]).index(point[axis])]
            elif key == "seed_everything":
                choice[key] = seed
            else:
                choice[key] = point[key]
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in choice.items()}})["args"]
        command = [part for c in create_sweep_command(spec["command"]) for part in (args if c == "${args}" else [c])]
        assert command[:2] == ["attnseg", "fit"]
        online = ["--trainer.logger.init_args.offline=false"]  # an agent's runs report to the W&B server
        ours = parser.parse_args(expand(sweep.arguments(point, online, seed=seed)[1:]))
        theirs = parser.parse_args(expand(command[2:]))
        assert yaml.safe_load(parser.dump(theirs)) == yaml.safe_load(parser.dump(ours)), f"{name}: {point}, seed {seed}"
