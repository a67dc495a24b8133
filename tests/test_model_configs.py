"""``configs/model/<head>.yaml`` state the head's options for readers; they must say what the code does: every value
written there equals the head's own default, so a model file never silently changes a head."""

import importlib
import inspect

import pytest
import yaml

from tests.helpers.cli import CONFIGS

FILES = sorted((CONFIGS / "model").glob("*.yaml"))


def as_yaml(value):
    """A default as YAML writes it: a tuple (``atrous_rates=(12, 24, 36)``) is a list there."""
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_model_file_states_the_code_defaults(path):
    head = yaml.safe_load(path.read_text())["model"]["head"]
    module, _, name = head["class_path"].rpartition(".")
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    written = head.get("init_args") or {}
    unknown = set(written) - set(signature.parameters)
    assert not unknown, f"{path.name}: {sorted(unknown)} are not options of {name}"
    defaults = {k: as_yaml(signature.parameters[k].default) for k in written}
    differ = {k: (v, defaults[k]) for k, v in written.items() if defaults[k] != v}
    assert differ == {}, f"{path.name}: values (file, code) that differ from {name}'s defaults"


def test_every_head_has_a_model_file():
    import attnseg.heads as heads

    names = {cls.__name__ for cls in vars(heads).values() if isinstance(cls, type) and cls.__name__.endswith("Head")}
    names -= {"AuxHead", "SegHead"}
    stated = {yaml.safe_load(p.read_text())["model"]["head"]["class_path"].rpartition(".")[2] for p in FILES}
    assert stated == names
