"""The attention modules against naive references of the same formula: forward+backward time and peak memory.

    python -m bench.attention [--sizes 32x32 64x64 97x97 64x128 128x256] [--channels 512] [--batch 1]
        [--dtypes fp32 bf16] [--modules pam cam cc1 cc2 fla cc3d] [--frames 3] [--device cpu] [--repeat 3] [--threads N]
        [--flush-denormal] [--channels-last] [--out docs/benchmarks.md]

Every case builds one module, one input x (B, C, H, W) and one output gradient, then runs ``y = f(x);
y.backward(grad)`` for the module and for each reference computed from the same module's weights (``gamma = 1``):

    pam    PositionAttention       naive: the (B, N, N) energies, softmax, ``V S^T``
    cam    ChannelAttention        naive: the (B, C, C) energies, max - energy, softmax, ``X A``
    cc1/2  CrissCrossAttention     masked: full (B, N, N) energies masked to the row and column of each position;
           (R = 1 or 2 steps)      einsum: column and row energies by einsum, -inf on the column's centre, one
                                   softmax over their concatenation, einsum aggregation
    cc3d   CrissCrossAttention3D   on a clip (B, C, T, H, W) of ``--frames`` frames (H x W each), R = 1.
                                   masked: full (B, THW, THW) energies masked to each position's row, column and
                                   time line; einsum: row, column and time energies by einsum on the (B, C, T, H, W)
                                   layout, one softmax, einsum aggregation (fp32: the module has no bf16 path)
    fla    FullyAttentionalBlock   published: the repeat-based block (``bmm`` with the priors tiled ``repeat(W)``:
           (attention only)        (B W, C, C) and (B H, C, C) maps); both without the block's final 3x3 conv

``bf16`` runs under ``torch.autocast(dtype=torch.bfloat16)`` with a bf16 input, as in ``bf16-mixed`` training: the
1x1 projections run in bf16, the modules take their fast path (bf16 operands with fp32 accumulation, softmax
statistics in fp32) and the references compute energies, softmax and aggregation in fp32; both return bf16.
``--channels-last`` gives the module and its input the channels-last memory format (as ``model.channels_last``
does in training); the dtype cell says so. When a run measures both dtypes, a second table gives the modules'
bf16 speed-up over fp32 (``fp32 ms / bf16 ms``, ours only).

Time: the best of ``--repeat`` runs (each implementation's runs interleaved with the others'; an implementation
whose run takes over ``--long`` seconds runs once). Peak memory: on the CPU the largest net amount of memory
that PyTorch's allocator handed out during one run (forward and backward, output, input and parameter
gradients), replayed from the allocation events of ``torch.profiler`` (``profile_memory=True``), in a run of its
own after the timed ones (not timed); on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before
the run.
A reference whose (N, N) or per-line (C, C) maps would exceed ``--max-map-gib`` is skipped and says so.
``--flush-denormal`` runs with subnormal floats read and written as 0 (``torch.set_flush_denormal``), which shows
what subnormal numbers cost a reference; its rows are labelled so.

With ``--out FILE`` the table goes into FILE between ``<!-- bench/attention.py -->`` markers: rows of an earlier
run with the same module, reference, input and dtype are updated (cells this run did not measure are kept), and
the command is listed, so runs split by size or by device build one table.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from attnseg.heads import (
    ChannelAttention,
    CrissCrossAttention,
    CrissCrossAttention3D,
    FullyAttentionalBlock,
    PositionAttention,
)
from bench.common import NOT_MEASURED, command_line, machine, number, peak_bytes, seconds, table, update_section

# The naive formulas live once, in tests/helpers/reference.py (what the tests check the modules against).
from tests.helpers.reference import (
    clear_masks,
    einsum_cca,
    einsum_cca_3d,
    fp32,
    masked_cca,
    masked_cca_3d,
    naive_cam,
    naive_pam,
    published_fla,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICES = {"cpu": "CPU", "cuda": "CUDA"}
SIZES = ["32x32", "64x64", "97x97", "64x128", "128x256"]

# ------------------------------------------------------------------------------------------------ references


def fla_attention(m: FullyAttentionalBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's forward without its final 3x3 conv (the same layer in both implementations)."""
    aug = m.augment(x)  # under autocast: the fast path
    with fp32(x):
        return (m.gamma * aug + x.float()).to(x.dtype)


def repeat(step: Callable, times: int) -> Callable:
    def run(m, x):
        for _ in range(times):
            x = step(m, x)
        return x

    return run


# (label, module factory, ours, [(reference label, reference, bytes of its largest map or None)])
def _n2(b, c, h, w, t=1):
    return 4 * b * (t * h * w) ** 2


def _fla_maps(b, c, h, w, t=1):
    return 4 * b * max(h, w) * c * c


MODULES = {
    "pam": ("PAM", lambda c: PositionAttention(c), lambda m, x: m(x), [("naive N x N", naive_pam, _n2)]),
    "cam": ("CAM", lambda c: ChannelAttention(), lambda m, x: m(x), [("naive C x C", naive_cam, None)]),
    "cc1": (
        "criss-cross R=1",
        lambda c: CrissCrossAttention(c),
        lambda m, x: m(x),
        [("einsum rows + columns", einsum_cca, None), ("masked N x N", masked_cca, _n2)],
    ),
    "cc2": (
        "criss-cross R=2",
        lambda c: CrissCrossAttention(c),
        repeat(lambda m, x: m(x), 2),
        [("einsum rows + columns", repeat(einsum_cca, 2), None), ("masked N x N", repeat(masked_cca, 2), _n2)],
    ),
    "fla": (
        "FLA",
        lambda c: FullyAttentionalBlock(c),
        fla_attention,
        [("published (repeat)", published_fla, _fla_maps)],
    ),
    "cc3d": (
        "3D criss-cross R=1",
        lambda c: CrissCrossAttention3D(c),
        lambda m, x: m(x),
        [("einsum rows + columns + time", einsum_cca_3d, None), ("masked THW x THW", masked_cca_3d, _n2)],
    ),
}
VIDEO = {"cc3d"}  # modules that take a clip (B, C, T, H, W)

# ------------------------------------------------------------------------------------------------ measurement


def measure_case(
    key: str, size: tuple[int, int], dtype: str, args: argparse.Namespace, device: torch.device
) -> list[list[str]]:
    """Rows ``[module, reference, input, dtype, <device> time, <device> memory, ...]`` of one module at one size."""
    label, build, ours, references = MODULES[key]
    b, c, (h, w) = args.batch, args.channels, size
    t = args.frames if key in VIDEO else 1
    torch.manual_seed(0)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    module = build(c).to(device, memory_format=layout)
    if key in VIDEO:  # a clip (B, C, T, H, W): its frames go through the projections as 4-D images
        x = torch.randn(b, c, t, h, w, device=device).to(DTYPES[dtype]).requires_grad_(True)
    else:
        x = torch.randn(b, c, h, w, device=device).to(DTYPES[dtype], memory_format=layout).requires_grad_(True)
    torch.nn.init.ones_(module.gamma)
    grad = torch.randn_like(x)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def reset() -> None:  # outside the measured region: memory freed there was allocated before it
        module.zero_grad(set_to_none=True)
        x.grad = None

    def step(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            with autocast:
                y = fn(module, x)
            y.backward(grad)

        return run

    impls = {"ours": (step(ours), None)}
    for ref_label, ref, map_bytes in references:
        need = map_bytes(b, c, h, w, t) if map_bytes else 0
        if need > args.max_map_gib * 2**30:
            what = "N x N map" if map_bytes is _n2 else "per-line C x C maps"
            impls[ref_label] = (None, f"skipped ({what} would need {need / 2**30:.1f} GiB)")
        else:
            impls[ref_label] = (step(ref), None)
    results: dict[str, dict] = {name: {"s": []} for name in impls}
    for _ in range(args.repeat):  # timed runs first: the memory run then sees warm caches (oneDNN, cuDNN)
        for name, (run, _) in impls.items():
            times = results[name]["s"]
            if run is not None and not (times and times[-1] > args.long):
                reset()
                times.append(seconds(run, device))
    for name, (run, _) in impls.items():
        if run is not None:
            reset()
            results[name]["MiB"] = peak_bytes(run, device) / 2**20
    clear_masks()

    def cells(name: str) -> tuple:
        run, skipped = impls[name]
        return (skipped, skipped) if run is None else (1e3 * min(results[name]["s"]), results[name]["MiB"])

    rows = []
    ours_ms, ours_mib = cells("ours")
    for ref_label, _, _ in references:
        ref_ms, ref_mib = cells(ref_label)
        shape = f"{b}x{c}x{h}x{w}" + (f", T={t}" if key in VIDEO else "")
        row = [
            label + (" (subnormals flushed)" if args.flush_denormal else ""),
            ref_label,
            shape,
            dtype_cell(dtype, args),
        ]
        for dev in DEVICES:
            if dev == device.type:
                row += [pair(ours_ms, ref_ms), pair(ours_mib, ref_mib)]
            else:
                row += [NOT_MEASURED, NOT_MEASURED]
        rows.append(row)
    return rows


def dtype_cell(dtype: str, args: argparse.Namespace) -> str:
    return f"{dtype}, channels-last" if args.channels_last else dtype


def speedup_rows(rows: Sequence[Sequence[str]], devices: Sequence[str]) -> list[list[str]]:
    """``[module, input, layout, <device> fp32 ms, bf16 ms, speed-up...]`` for every module and input this run
    measured in both dtypes (ours only; one row per module, whatever its references)."""
    ours: dict[tuple, dict] = {}
    for row in rows:
        dtype, _, layout = row[3].partition(", ")
        for i, dev in enumerate(DEVICES):
            cell = row[4 + 2 * i]
            if cell != NOT_MEASURED and not cell.startswith("skipped"):
                times = ours.setdefault((row[0], row[2], layout or "contiguous"), {})
                times[(dev, dtype)] = float(cell.split(" / ")[0])
    out = []
    for (module, size, layout), ms in ours.items():
        cells = []
        for dev in DEVICES:
            fp32, bf16 = ms.get((dev, "fp32")), ms.get((dev, "bf16"))
            if dev in devices and fp32 and bf16:
                cells += [number(fp32), number(bf16), f"{fp32 / bf16:.2f}x"]
            else:
                cells += [NOT_MEASURED] * 3
        if any(cell != NOT_MEASURED for cell in cells):
            out.append([module, size, layout, *cells])
    return out


def pair(ours, ref) -> str:
    """``ours / ref (ratio x)``; a skipped implementation shows its reason instead of a number."""
    text = " / ".join(number(v) if isinstance(v, float) else v for v in (ours, ref))
    if isinstance(ours, float) and isinstance(ref, float) and ref > 0:
        text += f" ({ours / ref:.2f}x)"
    return text


# ------------------------------------------------------------------------------------------------ main


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected HxW, e.g. 64x128")
    return int(match[1]), int(match[2])


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in SIZES], help="feature maps HxW"
    )
    parser.add_argument("--channels", type=int, default=512, help="channels C of the input")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=3, help="frames T of the clips of the video modules (cc3d)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--modules", nargs="+", choices=list(MODULES), default=list(MODULES))
    parser.add_argument(
        "--device", nargs="+", choices=list(DEVICES), default=None, help="default: cpu, and cuda when present"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per implementation (best is reported)")
    parser.add_argument("--long", type=float, default=15.0, help="an implementation slower than this (s) runs once")
    parser.add_argument("--max-map-gib", type=float, default=1.0, help="skip references whose maps exceed this")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's, all cores)")
    parser.add_argument(
        "--flush-denormal",
        action="store_true",
        help="CPU: treat subnormal floats as 0 (torch.set_flush_denormal); rows say so",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="module and input in the channels-last memory format; rows say so"
    )
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the table into")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: expected 1 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    flush = torch.set_flush_denormal(True) if args.flush_denormal else False
    if args.flush_denormal and not flush:
        parser.error("--flush-denormal: this CPU does not support it")
    devices = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    header = ["module", "reference", "B x C x H x W", "dtype"]
    for label in DEVICES.values():
        header += [f"{label} fwd+bwd ms (ours / ref)", f"{label} peak MiB (ours / ref)"]
    rows, machines = [], {}
    for dev in devices:
        device = torch.device(dev)
        machines[DEVICES[dev]] = machine(device)
        for size in args.sizes:
            for key in args.modules:
                for dtype in args.dtypes:
                    start = time.perf_counter()
                    new = measure_case(key, size, dtype, args, device)
                    rows += new
                    for row in new:
                        print(" | ".join(row), f"[{time.perf_counter() - start:.0f} s]", flush=True)
    print()
    print(table(header, rows))
    speedup_header = ["module", "B x C x H x W", "layout"]
    for label in DEVICES.values():
        speedup_header += [f"{label} fp32 ms", f"{label} bf16 ms", f"{label} bf16 speed-up"]
    speedups = speedup_rows(rows, devices)
    if speedups:
        print()
        print(table(speedup_header, speedups))
    if args.flush_denormal:
        torch.set_flush_denormal(False)
    if args.out is not None:
        command = command_line("bench.attention", argv)
        update_section(args.out, "bench/attention.py", header, rows, 4, machines, command)
        if speedups:
            update_section(
                args.out,
                "bench/attention.py bf16",
                speedup_header,
                speedups,
                3,
                machines,
                command,
                notes="The modules' bf16 fast path against their fp32 path, measured in the same run.",
            )
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
