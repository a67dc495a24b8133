"""What the machine can do fast, chosen for a run whose ``trainer.precision`` and ``model.channels_last`` are unset
(``choose_fast_path``): on the CPU bf16 autocast + channels-last only where the CPU multiplies bf16 matrices in
hardware (AMX or AVX512-BF16, read from the CPU's flags, not guessed from its name); on a CUDA GPU with bf16 tensor
cores (compute capability 8.0 or more) bf16 autocast + channels-last, and cuDNN's autotuner on any CUDA GPU
(``trainer.benchmark``). Each says what it chose in one line; a value set in a config or on the command line is
kept."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The flags of ``BF16_FLAGS`` that the CPU reports (Linux ``/proc/cpuinfo``); empty elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return tuple(flag for flag in BF16_FLAGS if flag in flags)


def choose_fast_path(config) -> None:
    """The CPU's or the GPU's fast path for a run (see the module's docstring)."""
    accelerator = config.trainer.accelerator
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        choose_gpu_fast_path(config)
    elif accelerator in ("cpu", "auto"):
        choose_cpu_fast_path(config)


def choose_gpu_fast_path(config) -> None:
    """``trainer.precision`` and ``model.channels_last`` left unset on a CUDA run: bf16 autocast and channels-last on
    a GPU of compute capability 8.0 or more (Ampere and later: bf16 tensor cores; channels-last measured 1.67x for
    FCN on an H200), fp32 and the default layout on older ones; ``trainer.benchmark`` (cuDNN's autotuner) on when
    unset. Says which in one line."""
    trainer, model = config.trainer, config.model
    if not torch.cuda.is_available():
        return  # Lightning says that no GPU is there
    major, minor = torch.cuda.get_device_capability(0)
    bf16 = (major, minor) >= (8, 0)
    if trainer.precision is None and bf16:
        trainer.precision = "bf16-mixed"
    if model.channels_last is None:
        model.channels_last = bf16
    if getattr(trainer, "benchmark", None) is None:
        trainer.benchmark = True
    name = torch.cuda.get_device_name(0)
    reason = f"{name}, compute capability {major}.{minor}" + ("" if bf16 else ": no bf16 tensor cores")
    rank_zero_info(
        f"GPU precision: {trainer.precision or '32-true'}, channels_last={model.channels_last}, "
        f"cudnn.benchmark={trainer.benchmark} ({reason}); set trainer.precision / model.channels_last / "
        "trainer.benchmark to choose"
    )


def choose_cpu_fast_path(config) -> None:
    """``trainer.precision`` and ``model.channels_last`` left unset on a CPU run: bf16 autocast and channels-last
    where the CPU has AMX or AVX512-BF16 (about 3-4x faster training), fp32 elsewhere; says which in one line.
    A value set in a config file or on the command line is kept."""
    trainer, model = config.trainer, config.model
    if trainer.precision is not None and model.channels_last is not None:
        return
    flags = cpu_bf16_flags()
    if trainer.precision is None and flags:
        trainer.precision = "bf16-mixed"
    if model.channels_last is None:
        model.channels_last = bool(flags)
    if flags:
        reason = f"the CPU has {' and '.join(flags)}"
    else:
        reason = "no AMX or AVX512-BF16 in the CPU's flags"
    rank_zero_info(
        f"CPU precision: {trainer.precision or '32-true'}, channels_last={model.channels_last} ({reason}); "
        "set trainer.precision / model.channels_last to choose"
    )
