"""Parameters and FLOPs of each head, and of the whole model, at one input size.

    python -m bench.complexity [--heads ccnet danet ...] [--encoder resnet50] [--size 512]
        [--num-classes 19] [--out docs/benchmarks.md]

Each head is built from its ``configs/model/<head>.yaml`` on the dilated (output stride 8) encoder, with every
output it trains (auxiliary heads included). Counts use ``attnseg.profiling``:
``count_parameters`` and ``count_flops``, one forward of a (1, 3, size, size) image in eval mode under
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; convolutions, matrix products and attention
kernels, not element-wise ops). The head's share is the whole model's count minus the encoder's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from attnseg.heads import head_configs
from attnseg.profiling import count_flops, count_parameters
from bench.common import command_line, machine, table, update_section
from bench.model import build_task


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    heads = sorted(head_configs())
    parser.add_argument("--heads", nargs="+", choices=heads, default=heads, help="configs/model/<head>.yaml")
    parser.add_argument("--encoder", default="resnet50", help="timm name (dilated to output stride 8)")
    parser.add_argument("--size", type=int, default=512, help="square input size")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the table into")
    args = parser.parse_args(argv)

    header = ["head", "encoder", "input", "head params (M)", "model params (M)", "head GFLOPs", "model GFLOPs"]
    rows, encoder_flops = [], None
    for head in args.heads:
        start = time.perf_counter()
        model = build_task(head, args.encoder).model
        if encoder_flops is None:
            encoder_flops = count_flops(model.encoder, (args.size, args.size))
        total_flops = count_flops(model, (args.size, args.size))
        rows.append(
            [
                head,
                f"{args.encoder}-D8",
                f"{args.size}x{args.size}",
                f"{count_parameters(model.head)[0] / 1e6:.2f}",
                f"{count_parameters(model)[0] / 1e6:.2f}",
                f"{(total_flops - encoder_flops) / 1e9:.1f}",
                f"{total_flops / 1e9:.1f}",
            ]
        )
        print(" | ".join(rows[-1]), f"[{time.perf_counter() - start:.0f} s]", flush=True)
    print()
    print(table(header, rows))
    if args.out is not None:
        update_section(
            args.out,
            "bench/complexity.py",
            header,
            rows,
            3,
            {"CPU": machine(torch.device("cpu"))},
            command_line("bench/complexity.py", argv),
        )
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
