"""The CPU fast path: bf16 autocast + channels-last chosen from the CPU's flags, stated, and overridable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from jsonargparse import Namespace

from attnseg import hardware
from attnseg.hardware import cpu_bf16_flags

CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu vme sse avx2 {extra}

processor\t: 1
flags\t\t: fpu vme sse avx2 {extra}
"""


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("avx512f avx512_bf16 amx_tile amx_bf16", ("amx_bf16", "avx512_bf16")),
        ("avx512f avx512_bf16", ("avx512_bf16",)),
        ("avx512f", ()),
    ],
)
def test_flags_are_read_from_cpuinfo(tmp_path: Path, extra, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra))
    assert cpu_bf16_flags(path) == expected


def test_no_cpuinfo_means_no_fast_path(tmp_path: Path):
    assert cpu_bf16_flags(tmp_path / "missing") == ()


def _config(accelerator="cpu", precision=None, channels_last=None) -> Namespace:
    return Namespace(
        trainer=Namespace(accelerator=accelerator, precision=precision),
        model=Namespace(channels_last=channels_last),
    )


def _choose(config, flags, monkeypatch, caplog) -> str:
    monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda: flags)
    with caplog.at_level(logging.INFO):
        hardware.choose_fast_path(config)
    return caplog.text


def test_a_capable_cpu_gets_bf16_and_channels_last_and_says_so(monkeypatch, caplog):
    config = _config()
    text = _choose(config, ("amx_bf16",), monkeypatch, caplog)
    assert config.trainer.precision == "bf16-mixed" and config.model.channels_last is True
    assert "CPU precision: bf16-mixed, channels_last=True (the CPU has amx_bf16)" in text


def test_other_cpus_stay_fp32_and_say_why(monkeypatch, caplog):
    config = _config(accelerator="auto")
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    text = _choose(config, (), monkeypatch, caplog)
    assert config.trainer.precision is None and config.model.channels_last is False
    assert "CPU precision: 32-true, channels_last=False (no AMX or AVX512-BF16 in the CPU's flags)" in text


@pytest.mark.parametrize("precision, channels_last", [("32-true", None), (None, False), ("32-true", False)])
def test_values_set_by_the_user_are_kept(precision, channels_last, monkeypatch, caplog):
    config = _config(precision=precision, channels_last=channels_last)
    _choose(config, ("amx_bf16",), monkeypatch, caplog)
    assert config.trainer.precision == (precision or "bf16-mixed")
    assert config.model.channels_last is (True if channels_last is None else channels_last)


def _gpu(monkeypatch, capability, name="NVIDIA H200") -> None:
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(hardware.torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "auto"])
def test_a_bf16_gpu_gets_bf16_channels_last_and_the_cudnn_autotuner_and_says_so(accelerator, monkeypatch, caplog):
    _gpu(monkeypatch, (9, 0))
    config = _config(accelerator=accelerator)
    text = _choose(config, ("amx_bf16",), monkeypatch, caplog)
    assert config.trainer.precision == "bf16-mixed" and config.model.channels_last is True
    assert config.trainer.benchmark is True and "CPU precision" not in text
    assert (
        "GPU precision: bf16-mixed, channels_last=True, cudnn.benchmark=True (NVIDIA H200, compute capability 9.0)"
        in text
    )


def test_an_older_gpu_stays_fp32_and_the_users_values_are_kept(monkeypatch, caplog):
    _gpu(monkeypatch, (7, 5), "Tesla T4")
    config = _config(accelerator="gpu")
    text = _choose(config, (), monkeypatch, caplog)
    assert config.trainer.precision is None and config.model.channels_last is False
    assert (
        "GPU precision: 32-true, channels_last=False, cudnn.benchmark=True (Tesla T4, compute capability 7.5: no"
        in text
    )
    _gpu(monkeypatch, (8, 0))
    config = _config(accelerator="gpu", precision="32-true", channels_last=False)
    config.trainer.benchmark = False
    _choose(config, (), monkeypatch, caplog)
    assert (config.trainer.precision, config.model.channels_last, config.trainer.benchmark) == ("32-true", False, False)
