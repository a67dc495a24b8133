"""What the machine can do fast: the CPU fast path (bf16 autocast + channels-last) is taken only where the CPU
multiplies bf16 matrices in hardware (AMX or AVX512-BF16), read from the CPU's flags, not guessed from its name."""

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


def choose_cpu_fast_path(config) -> None:
    """``trainer.precision`` and ``model.channels_last`` left unset on a CPU run: bf16 autocast and channels-last
    where the CPU has AMX or AVX512-BF16 (about 3-4x faster training), fp32 elsewhere; says which in one line.
    A value set in a config file or on the command line is kept."""
    trainer, model = config.trainer, config.model
    on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
    if not on_cpu or (trainer.precision is not None and model.channels_last is not None):
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
