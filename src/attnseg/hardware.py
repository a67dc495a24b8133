"""What the machine can do fast: the CPU fast path (bf16 autocast + channels-last) is taken only where the CPU
multiplies bf16 matrices in hardware (AMX or AVX512-BF16), read from the CPU's flags, not guessed from its name."""

from __future__ import annotations

from pathlib import Path

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
