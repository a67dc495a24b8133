"""``attnseg sweep``: a tiny grid with a failing point runs end to end (fit, test on the best checkpoint, results
table and chart, grouped W&B runs); the shipped ablation files expand to the runs they promise; bad sweep files
get clear errors."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from attnseg.__main__ import main
from attnseg.cli import AttnSegCLI
from attnseg.heads import head_configs
from attnseg.sweep import Sweep, override_args, point_label, short_names, summarise, write_results
from tests.helpers.cli import CONFIGS, FAST
from tests.helpers.wandb_offline import read_run, wandb_in

TINY = [*FAST, "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]


def write_sweep(path: Path, body: str) -> Path:
    quickstart = os.path.relpath(CONFIGS / "quickstart.yaml", path.parent)  # paths are relative to the sweep file
    path.write_text(f"base: [{quickstart}]\n{body}")
    return path


@pytest.mark.slow
def test_sweep_runs_every_point_and_seed_and_survives_a_failing_point(tmp_path, capsys):
    (tmp_path / "sweeps").mkdir()
    sweep = write_sweep(
        tmp_path / "sweeps" / "tiny.yaml",
        # num_convs=0 is refused by FCNHead: the sweep records it and goes on
        "fixed:\n  trainer.max_epochs: 1\ngrid:\n  model.head.init_args.num_convs: [1, 0, 2]\n"
        "seeds: [0, 1]\ncontext_classes: [warm_blob, cold_blob]\n",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--out", "results", "--", *TINY, *wandb_in(tmp_path / "runs")])
    assert exit_info.value.code == 1  # a run failed

    with open("results/results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.head.init_args.num_convs"], r["seed"]) for r in rows] == [
        ("1", "0"),
        ("1", "1"),
        ("0", "0"),
        ("0", "1"),
        ("2", "0"),
        ("2", "1"),
    ]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    assert "num_convs=0" in rows[2]["error"] and not rows[2]["val_mIoU"]
    ok = [rows[i] for i in (0, 1, 4, 5)]
    for row in ok:
        assert 0 <= float(row["val_mIoU"]) <= 1 and 0 <= float(row["test_mIoU"]) <= 1
        assert 0 <= float(row["test_context_IoU"]) <= 1
        assert float(row["GFLOPs"]) > 0 and float(row["train_images_per_s"]) > 0 and float(row["time_s"]) > 0
        assert Path(row["best_checkpoint"]).is_file() and Path(row["best_checkpoint"]).is_relative_to(row["run_dir"])
    assert int(rows[4]["params"]) > int(rows[0]["params"])  # a second conv adds parameters
    assert len({row["run_dir"] for row in ok}) == 4  # one run folder per run

    md = Path("results/results.md").read_text()
    summary, every = md.split("Every run:")
    assert (
        "| num_convs | val mIoU (%) | test mIoU (%) | context IoU (%) | steps to 80% context IoU | seeds |" in summary
    )
    assert summary.count("| ok |") == 2 and "| failed (2/2) |" in summary
    mean = sum(float(rows[i]["test_mIoU"]) for i in (0, 1)) / 2
    spread = abs(float(rows[0]["test_mIoU"]) - float(rows[1]["test_mIoU"])) / 2**0.5  # sample std of two values
    assert "| 1 | " in summary and f"{100 * mean:.1f} ± {100 * spread:.1f}" in summary
    assert every.count("| ok |") == 4 and every.count("| failed |") == 2
    assert "- run 2: ValueError: FCNHead: num_convs=0" in md
    assert Image.open("results/results.png").size[0] > 100
    # each run's learning curve: one row per validation (one epoch: one), read from what the task logged
    for row in ok:
        with open(row["curve"]) as f:
            curve = list(csv.DictReader(f))
        assert [int(r["step"]) for r in curve] == [2]
        assert float(curve[0]["val/mIoU"]) == pytest.approx(float(row["val_mIoU"]))
        assert {"val/IoU/warm_blob", "val/IoU/cold_blob"} <= set(curve[0])
    assert not Path(rows[2]["curve"]).exists()  # the failed run validated nothing
    assert Image.open("results/learning_curves.png").size[0] > 100

    # one W&B run per successful run, one group per grid point (its seeds), all with the sweep's tag, named after the
    # point and seed, holding val and test metrics
    runs = [read_run(d) for d in sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))]
    assert len(runs) == 4
    by_point = {r["name"].partition(",")[0]: set() for r in runs}
    for r in runs:
        by_point[r["name"].partition(",")[0]].add(r["group"])
    assert all(len(groups) == 1 for groups in by_point.values()) and len(set().union(*by_point.values())) == 2
    assert len({tag for r in runs for tag in r["tags"] if tag.startswith("tiny-")}) == 1
    assert sorted(r["name"] for r in runs) == [f"num_convs={c},seed={s}" for c in (1, 2) for s in (0, 1)]
    assert all("val/mIoU" in r["summary"] and "test/IoU_table" in r["summary"] for r in runs)
    by_name = {r["name"]: r["summary"] for r in runs}
    for row in ok:
        tested = by_name[f"num_convs={row['model.head.init_args.num_convs']},seed={row['seed']}"]
        assert tested["test/mIoU"] == pytest.approx(float(row["test_mIoU"]))
        context = (tested["test/IoU/warm_blob"] + tested["test/IoU/cold_blob"]) / 2
        assert context == pytest.approx(float(row["test_context_IoU"]))
    # the seed reached the run: its config records it
    assert sorted(r["config"]["seed_everything"] for r in runs) == [0, 0, 1, 1]
    assert "4/6 runs succeeded" in capsys.readouterr().out


def test_summary_averages_only_points_whose_runs_all_succeeded(tmp_path):
    sweep = Sweep(tmp_path / "s.yaml", "s", [], {"model.lr": [0.1, 0.2]}, seeds=[0, 1, 2], context_classes=["a"])
    scores = ("val_mIoU", "test_mIoU", "test_context_IoU")
    rows = [
        {"run": run, "model.lr": lr, "seed": seed, "status": "ok", **dict(zip(scores, values))}
        for run, lr, seed, values in [
            (0, 0.1, 0, (0.5, 0.4, 0.2)),
            (1, 0.1, 1, (0.7, 0.6, 0.4)),
            (2, 0.1, 2, (0.6, 0.5, 0.3)),
            (3, 0.2, 0, (0.9, 0.9, 0.9)),
        ]
    ] + [{"run": 4, "model.lr": 0.2, "seed": 1, "status": "failed", "error": "boom"}]
    first, second = summarise(sweep, rows)
    assert first["status"] == "ok" and first["n"] == 3
    assert first["test_mIoU"] == pytest.approx((0.5, 0.1)) and first["test_context_IoU"] == pytest.approx((0.3, 0.1))
    assert second["status"] == "failed (1/2)" and "test_mIoU" not in second  # not averaged over what survived
    write_results(sweep, rows, tmp_path / "out", "g", [])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| 0.1 | 60.0 ± 10.0 | 50.0 ± 10.0 | 30.0 ± 10.0 | 0/3 | 3 |" in md  # no curve: no run reached 80 %
    assert "| 0.2 | - | - | - | - | 2 | - | failed (1/2) |" in md


def test_seeds_from_the_command_line_override_the_file(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", "grid:\n  model.lr: [0.1, 0.2]\nseeds: [0]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--dry-run", "--seeds", "3", "4", "5"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "6 runs (2 grid points x seeds [3, 4, 5]" in out
    assert out.count("--seed_everything=4") == 2 and "--seed_everything=0" not in out


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


@pytest.mark.parametrize("name, expected", [("heads", HEADS_GRID), ("band", BAND_GRID)])
def test_heads_grids_give_every_head_the_same_supervision(name, expected):
    sweep = Sweep.from_file(CONFIGS / "ablation" / f"{name}.yaml")
    assert sorted(p["head"] for p in sweep.points()) == sorted(expected), f"configs/ablation/{name}.yaml's heads"
    assert sweep.seeds == [0, 1, 2] and sweep.context_classes == ["warm_blob", "cold_blob"]
    heads = {}
    for point in sweep.points():
        args = sweep.arguments(point, ["--data.dataset_args.image_size=32", "--data.num_workers=0"])
        cli = AttnSegCLI(args=args[1:], run=False)
        task = cli.model
        heads[point["head"]] = type(task.model.head).__name__
        assert {k: v for k, v in task.loss_weights.items() if v} == {"out": 1.0, "aux": 0.4}, point
        assert not getattr(task.model.head, "output_losses", {}), point  # no loss of its own (DFN's border is off)
        if name == "band":  # every head as wide as the encoder's feature
            assert cli.config["model"]["head"]["init_args"]["channels"] == 128, point
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


def test_unknown_context_class_fails_the_run_before_it_trains(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", "grid:\n  model.lr: [0.001]\ncontext_classes: [warm_blob, nope]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(sweep), "--out", "results", "--", *TINY, "--trainer.logger=false"])
    assert exit_info.value.code == 1
    with open("results/results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed" and f"{sweep}: context_classes ['nope'] are not classes" in row["error"]
    assert not row["val_mIoU"]  # stopped before fitting


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


def main_code(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return exit_.value.code


def test_only_runs_some_values_of_a_grid_key(capsys):
    heads = str(CONFIGS / "ablation" / "heads.yaml")
    assert main_code("sweep", heads, "--only", "head=deeplabv3,pspnet", "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("Sweep heads: 6 runs (2 grid points x seeds [0, 1, 2];")
    assert "[0] head=deeplabv3,seed=0" in out and "head=fcn" not in out
    assert main_code("sweep", heads, "--only", "head=resnet", "--dry-run") == 2
    assert "--only head=resnet: ['resnet'] not among head's values" in capsys.readouterr().err


def test_results_csv_reads_back_as_the_rows_written(tmp_path):
    from attnseg.sweep import read_results

    sweep = Sweep.from_file(CONFIGS / "ablation" / "danet.yaml")
    rows = []
    for index, (point, seed) in enumerate(sweep.runs()[:5]):
        row = {
            "run": index,
            **point,
            "seed": seed,
            "status": "ok",
            "val_mIoU": 0.5 + index / 100,
            "test_mIoU": 0.4 + index / 100,
            "test_context_IoU": 0.3,
            "params": 1234567,
            "GFLOPs": 7.07,
            "train_images_per_s": 30.5,
            "time_s": 118.2,
            "run_dir": f"runs/attnseg/r{index}",
            "best_checkpoint": "x.ckpt",
            "steps_to_context": 100 * index or None,
            "curve": f"curves/run{index}.csv",
            "error": None,
        }
        rows.append(row)
    rows[-1].update(status="failed", error="ValueError: boom", test_mIoU=None)
    write_results(sweep, rows, tmp_path, "g", [])
    back = read_results(tmp_path / "results.csv", sweep)
    assert back == rows
    assert summarise(sweep, back) == summarise(sweep, rows)


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


def test_a_grid_option_that_does_not_parse_is_refused_before_anything_runs(tmp_path, capsys):
    """A misspelt option fails --dry-run and the sweep itself up front, one line per grid point (no traceback,
    no run folder); a YAML error names the sweep file and the line."""
    sweep = write_sweep(tmp_path / "sw.yaml", "grid:\n  model.head.init_args.num_conv: [1, 2]\n")
    for dry in (["--dry-run"], []):
        assert main_code("sweep", str(sweep), "--out", str(tmp_path / "out"), *dry) == 2
        err = capsys.readouterr().err
        assert "2 grid point(s) do not parse; nothing was run" in err and "Traceback" not in err
        assert "num_conv=1: " in err and "Option 'num_conv' is not accepted" in err
    assert not (tmp_path / "out").exists() and not Path("runs").exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("base: [quickstart\ngrid: {a: [1]}\n")
    assert main_code("sweep", str(broken), "--dry-run") == 2
    err = capsys.readouterr().err
    assert f"{broken}: not valid YAML" in err and f'in "{broken}", line 2' in err


def test_short_names_one_seed_without_spread_and_an_online_wandb_sweep(tmp_path, capsys):
    """`attnseg sweep ablation/danet` finds the shipped file; one seed prints its value alone (no "± 0.0" nor
    "± nan"); the W&B sweep file's runs report online."""
    import yaml

    assert main_code("sweep", "ablation/danet", "--dry-run") == 0
    assert "Sweep danet: " in capsys.readouterr().out
    assert main_code("sweep", "ablation/nothing", "--dry-run") == 2
    assert "no shipped sweep of that name" in capsys.readouterr().err
    sweep = write_sweep(tmp_path / "sw.yaml", "grid:\n  model.lr: [0.1, 0.2]\n")
    rows = [
        {"run": k, "model.lr": lr, "seed": 0, "status": "ok", "val_mIoU": 0.5 + k / 10, "test_mIoU": 0.4}
        for k, lr in enumerate((0.1, 0.2))
    ]
    write_results(Sweep.from_file(sweep), rows, tmp_path / "out", "g", [])
    summary = (tmp_path / "out" / "results.md").read_text().split("Every run:")[0]
    assert "| 0.1 | 50.0 | 40.0 |" in summary and "±" not in summary.split("|---")[1]
    spec = tmp_path / "w.yaml"
    assert main_code("sweep", str(sweep), "--wandb-sweep", str(spec)) == 0
    assert "--trainer.logger.init_args.offline=false" in yaml.safe_load(spec.read_text().split("\n", 1)[1])["command"]


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
    """Run numbers depend on the seeds an invocation runs (--seeds 2 numbers its first run 0): a later invocation with
    every seed must not take that run's curve for another run's."""
    sweep = write_sweep(
        tmp_path / "sw.yaml",
        "fixed:\n  trainer.max_epochs: 1\ngrid:\n  model.head.init_args.num_convs: [1]\nseeds: [0, 1]\n",
    )
    extra = ["--", *TINY, *wandb_in(tmp_path / "runs")]
    out = tmp_path / "out"
    assert main_code("sweep", str(sweep), "--out", str(out), "--seeds", "1", *extra) == 0
    first = {r["seed"]: r["curve"] for r in csv.DictReader(open(out / "results.csv"))}
    kept = Path(first["1"]).read_text()
    assert main_code("sweep", str(sweep), "--out", str(out), *extra) == 0
    rows = {r["seed"]: r["curve"] for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["1"] == first["1"] and Path(rows["1"]).read_text() == kept and rows["0"] != rows["1"]
