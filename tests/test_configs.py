"""Shipped configs: short names for --config, base: composition, every group composed with every other in both
orders (later files win), ``attnseg configs`` and a bare ``attnseg fit``; the wheel carries the configs and runs
from a fresh virtual environment outside the repository."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from attnseg.cli import AttnSegCLI
from attnseg.configs import composed, config_root, expand_config_args, resolve, shipped
from tests.helpers.cli import CONFIGS, QUICKSTART, REPO

ATTNSEG = Path(sys.executable).parent / "attnseg"


def test_the_shipped_configs_are_the_repository_folder():
    assert config_root() == CONFIGS
    assert len(shipped()) == len(list(CONFIGS.rglob("*.yaml")))
    assert {"quickstart", "model/danet", "data/camvid", "experiment/cityscapes_dfn", "ablation/heads"} <= set(shipped())


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml", "configs/quickstart.yaml", "./configs/quickstart"])
def test_short_names_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert resolve(name) == QUICKSTART


def test_an_existing_file_wins_over_a_short_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text("trainer: {max_steps: 3}\n")
    assert resolve("quickstart") == tmp_path / "quickstart"


def test_unknown_name_lists_the_group():
    with pytest.raises(FileNotFoundError) as error:
        resolve("model/danett")
    message = str(error.value)
    assert message.startswith("--config model/danett: no such file and no shipped config of that name; shipped: ")
    assert "model/danet," in message and "data/camvid" not in message and "attnseg configs" in message


def test_bases_come_first_recursively_and_cycles_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: [sub/b.yaml, model/danet]\ntrainer: {max_steps: 1}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../c.yaml\n")
    (tmp_path / "c.yaml").write_text("trainer: {max_steps: 2}\n")
    assert composed(tmp_path / "a.yaml") == [
        tmp_path / "c.yaml",
        (tmp_path / "sub" / "b.yaml").resolve(),
        CONFIGS / "model" / "danet.yaml",
        tmp_path / "a.yaml",
    ]
    assert expand_config_args(["fit", "--config", str(tmp_path / "a.yaml"), "--config={trainer: {max_steps: 4}}"]) == [
        "fit",
        "--config",
        str(tmp_path / "c.yaml"),
        "--config",
        str((tmp_path / "sub" / "b.yaml").resolve()),
        "--config",
        str(CONFIGS / "model" / "danet.yaml"),
        "--config",
        str(tmp_path / "a.yaml"),
        "--config",
        "{trainer: {max_steps: 4}}",
    ]
    (tmp_path / "c.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ValueError, match=r"form a cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        composed(tmp_path / "a.yaml")
    (tmp_path / "d.yaml").write_text("base: {x: 1}\n")
    with pytest.raises(ValueError, match=r"base is \{'x': 1\}; expected a config or a list of configs"):
        composed(tmp_path / "d.yaml")


# One file of each group; the experiment's base brings its data file.
GROUPS = {
    "quickstart": "quickstart",
    "data": "data/camvid",
    "model": "model/danet",
    "trainer": "trainer/fast_gpu",
    "logger": "logger/csv",
    "experiment": "experiment/voc_aug",
}


def merge(into: dict, values: dict) -> dict:
    """What a later file does to the values before it: keys merge, a new class_path replaces the whole entry."""
    for key, value in values.items():
        old = into.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("class_path", old.get("class_path")) == old.get("class_path")
        ):
            merge(old, value)
        else:
            into[key] = value
    return into


def leaves(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(scope="module")
def parser():
    return AttnSegCLI(args=["--config", str(QUICKSTART)], run=False).parser


@pytest.mark.parametrize("first, second", list(itertools.permutations(GROUPS, 2)))
def test_every_group_composes_with_every_other(first, second, parser):
    args = expand_config_args(["--config", GROUPS[first], "--config", GROUPS[second], "--data.num_classes=7"])
    parsed = yaml.safe_load(parser.dump(parser.parse_args(args), skip_none=False))
    expected: dict = {}
    for file in composed(resolve(GROUPS[first])) + composed(resolve(GROUPS[second])):
        merge(expected, {k: v for k, v in yaml.safe_load(file.read_text()).items() if k != "base"})
    got = leaves(parsed)
    for key, value in leaves(expected).items():
        assert got.get(key) == value, f"{first} then {second}: {key} = {got.get(key)!r}, expected {value!r}"


def test_an_experiment_overrides_single_keys_of_its_data_file(tmp_path, parser):
    (tmp_path / "mine.yaml").write_text("base: [experiment/camvid_r18_cpu]\ndata: {batch_size: 4}\n")
    parsed = parser.parse_args(expand_config_args(["--config", str(tmp_path / "mine.yaml"), "--data.flip=false"]))
    data = parsed.data
    assert data.batch_size == 4 and data.flip is False  # this file, then the command line
    assert data.dataset == "CamVid" and list(data.crop_size) == [180, 240]  # the rest from data/camvid_half
    assert parsed.model.encoder.name == "resnet18"  # and from the experiment


def test_the_cli_reads_bases_and_saves_a_complete_config(capsys):
    with pytest.raises(SystemExit):
        AttnSegCLI(args=["fit", "--config", "experiment/cityscapes_dfn", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["dataset"] == "Cityscapes" and printed["model"]["head"]["class_path"].endswith("DFNHead")
    assert printed["model"]["encoder"]["output_stride"] == 32 and printed["data"]["batch_size"] == 16


def run_attnseg(*args: str, cwd: Path, exe: Path = ATTNSEG) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.mark.slow
def test_configs_command_lists_shows_and_copies(tmp_path):
    listed = run_attnseg("configs", cwd=tmp_path)
    assert listed.returncode == 0
    rows = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert rows == shipped()
    shown = run_attnseg("configs", "show", "experiment/cityscapes_danet", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("# read after: ")
    assert shown.stdout.split("\n", 1)[1] == (CONFIGS / "experiment" / "cityscapes_danet.yaml").read_text()

    copied = run_attnseg("configs", "copy", "experiment/cityscapes_danet", "--to", "mine", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    files = sorted(p.relative_to(tmp_path / "mine").as_posix() for p in (tmp_path / "mine").rglob("*.yaml"))
    assert files == [
        "data/cityscapes.yaml",
        "experiment/cityscapes.yaml",
        "experiment/cityscapes_danet.yaml",
        "model/danet.yaml",
    ]
    assert copied.stdout.count("wrote mine/") == 4 and "copied 4 config(s) to mine/" in copied.stdout
    same = run_attnseg("configs", "copy", "model/danet", "--to", "mine", cwd=tmp_path)
    assert same.returncode == 0 and "copied 0 config(s) to mine/; 1 already there, identical" in same.stdout
    mine = tmp_path / "mine" / "model" / "danet.yaml"
    mine.write_text(mine.read_text() + "# edited\n")
    again = run_attnseg("configs", "copy", "model/danet", "--to", "mine", cwd=tmp_path)
    assert again.returncode == 1 and "left alone (they exist and differ): mine/model/danet.yaml" in again.stderr
    assert mine.read_text().endswith("# edited\n")  # never overwritten


@pytest.mark.slow
def test_bare_fit_says_what_to_pass(tmp_path):
    bare = run_attnseg("fit", cwd=tmp_path)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.startswith("attnseg fit: no config given.") and "--config quickstart" in bare.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained


@pytest.mark.slow
def test_wheel_in_a_fresh_environment_runs_the_quickstart_by_short_name(tmp_path):
    """Build the wheel, install it (no dependencies: those of this environment are made visible) into a new virtual
    environment, and from a folder outside the repository list the configs and fit the quickstart by short name."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("attnseg-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")  # dependencies, not this checkout's attnseg
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import attnseg; print(attnseg.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        check=True,
    ).stdout.strip()
    assert where.startswith(site), where  # the wheel's package, not the checkout
    exe = env_dir / "bin" / "attnseg"
    listed = run_attnseg("configs", cwd=work, exe=exe)
    assert listed.returncode == 0 and str(Path(site) / "attnseg" / "configs") in listed.stdout
    fit = run_attnseg(
        "fit",
        "--config",
        "quickstart",
        "--config",
        "model/danet",
        "--config",
        "logger/csv",
        "--data.dataset_args.image_size=32",
        "--data.dataset_args.num_samples=8",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        cwd=work,
        exe=exe,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    saved = yaml.safe_load((work / "runs" / "attnseg" / "danet-pam-cam-r18-s0" / "config.yaml").read_text())
    assert saved["model"]["head"]["class_path"] == "attnseg.heads.DANetHead"  # model/danet, found in the wheel
    assert saved["data"]["dataset"] == "SyntheticShapes" and saved["trainer"]["max_steps"] == 2
