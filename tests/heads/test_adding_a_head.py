"""A head is one file and one config: the worked example of docs/adding_a_head.md (an ECA head), run as the page
writes it. With its file importable and its config among the model configs, the contract test's checks, the
benchmarks and run names cover it without any other edit, and the page's own test of the head passes."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys

import pytest

import attnseg.heads.registry as registry
from attnseg import configs
from attnseg.heads import head_configs
from attnseg.run_names import run_identity
from tests.helpers.cli import REPO
from tests.helpers.head_checks import CHANNELS, check_contract, check_in_a_real_model

PAGE = REPO / "docs" / "adding_a_head.md"


def blocks() -> dict[str, str]:
    """The page's code blocks by the path on their first line (``# src/attnseg/heads/eca.py``)."""
    found = {}
    for body in re.findall(r"```(?:python|yaml)\n(.*?)```", PAGE.read_text(), flags=re.S):
        first, _, rest = body.partition("\n")
        if first.startswith("# ") and "/" in first:
            found[first[2:].strip()] = rest if first.endswith(".py") else body
    return found


@pytest.fixture
def eca_added(tmp_path, monkeypatch):
    """The page's head importable as ``attnseg.heads.eca`` and its config beside copies of the shipped ones."""
    code = blocks()
    module_file = tmp_path / "eca.py"
    module_file.write_text(code["src/attnseg/heads/eca.py"])
    spec = importlib.util.spec_from_file_location("attnseg.heads.eca", module_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "attnseg.heads.eca", module)
    spec.loader.exec_module(module)
    root = tmp_path / "configs"
    shutil.copytree(configs.config_root(), root)
    (root / "model" / "eca.yaml").write_text(code["configs/model/eca.yaml"])
    monkeypatch.setattr(configs, "config_root", lambda: root)
    return module, code


def test_the_page_has_the_three_files():
    assert set(blocks()) == {"src/attnseg/heads/eca.py", "configs/model/eca.yaml", "tests/heads/test_eca.py"}


@pytest.mark.slow
def test_a_new_head_file_and_config_are_found_and_pass_the_contract(eca_added):
    module, _ = eca_added
    found = head_configs()
    assert set(found) == set(head_configs(REPO / "configs")) | {"eca"}
    assert found["eca"].cls is module.ECAHead
    for encoder in sorted(CHANNELS):
        for output_stride in (8, 16, 32):
            check_contract(found["eca"], encoder, output_stride)
    check_in_a_real_model(found["eca"])


@pytest.mark.slow
def test_a_new_head_is_benchmarked_and_named_without_other_edits(eca_added, capsys):
    import bench.complexity as bench_complexity
    import bench.model as bench_model

    bench_model.main(
        "--device cpu --heads eca --encoders resnet18 --sizes 32 --batch 1".split()
        + "--precision fp32 --steps 1 --warmup 0".split()
    )
    bench_complexity.main(["--heads", "eca", "--encoder", "resnet18", "--size", "64"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("eca |", "| eca |"))]
    assert len(rows) >= 2, "a row from each benchmark"
    head = {"class_path": "attnseg.heads.eca.ECAHead", "init_args": {"eca": False}}
    config = {"model": {"head": head, "encoder": {"name": "resnet18"}}, "seed_everything": 0}
    assert run_identity(config)[0] == "eca-noeca-r18-s0"
    head["init_args"] = {}
    assert run_identity(config)[0] == "eca-r18-s0"
    assert registry.head_configs()["eca"].init_args == {"channels": None, "eca": True, "dropout": 0.1, "aux": True}


def test_the_pages_test_of_the_head_passes(eca_added):
    _, code = eca_added
    namespace: dict = {}
    exec(compile(code["tests/heads/test_eca.py"], str(PAGE), "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()
