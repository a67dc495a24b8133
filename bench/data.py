"""Does the data pipeline keep up? Data-loading time against compute time per training step, on a real dataset.

    python -m bench.data [--data configs/data/camvid_half.yaml] [--root ../shared/data/camvid]
        [--workers 0 1 2] [--cache off on] [--head fcn] [--encoder resnet18] [--precision bf16-mixed] [--channels-last]
        [--steps 20] [--warmup 3] [--threads N] [--out docs/benchmarks.md]

For each ``--workers`` count the script builds the data file's training loader (its crop, rescale, flip and
photometric transforms, its batch size) and measures, per batch:

    load only      the loader alone, iterated as fast as it goes (no model): what the pipeline can deliver
    wait           in a training loop, the time ``next(loader)`` blocks before the step can start
    step           the training step itself (forward, the task's losses, backward, SGD step), as in ``fit``

``--cache on`` sets ``data.cache_decoded`` and reads every sample once before timing (as the first epoch does), so
the rows show the later epochs. A pipeline keeps up when ``wait`` is small against ``step``. With workers,
loading overlaps the step but shares the CPU's cores with it, so ``step`` may grow: the ``step + wait`` column is
the time a training step really takes, the number to compare across worker counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from attnseg.data import SegDataModule
from attnseg.task import SegmentationTask
from bench.common import REPO, command_line, machine, number, table, update_section
from bench.model import head_factory

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "camvid"


def build_data(path: Path, root: Optional[Path], workers: int, cache: bool) -> SegDataModule:
    options = yaml.safe_load(path.read_text())["data"]  # a data group file: one data: section
    options.update(num_workers=workers, persistent_workers=False, cache_decoded=cache)
    if root is not None:
        options["root"] = str(root)
    data = SegDataModule(**options)
    data.setup("fit")
    if cache:  # the first epoch's reads, before workers start (they inherit the filled cache)
        dataset = data.train_dataset
        for part in getattr(dataset, "datasets", [dataset]):
            for index in range(len(part)):
                part.decoded(index)
    return data


def mean_ms(values: Sequence[float]) -> float:
    return 1e3 * sum(values) / len(values)


def measure(args: argparse.Namespace, workers: int, cache: bool) -> dict[str, float]:
    data = build_data(args.data, args.root, workers, cache)
    task = SegmentationTask(
        head=head_factory(args.head),
        encoder={"name": args.encoder, "output_stride": 8},
        num_classes=len(data.class_names),
    )
    model = task.model.train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    total = args.warmup + args.steps

    loads, it = [], iter(data.train_dataloader())
    for i in range(total):
        start = time.perf_counter()
        next(it)
        if i >= args.warmup:
            loads.append(time.perf_counter() - start)
    del it

    waits, steps, it = [], [], iter(data.train_dataloader())
    for i in range(total):
        start = time.perf_counter()
        images, masks = next(it)
        ready = time.perf_counter()
        with autocast:
            loss = sum(task.compute_losses(model(images.contiguous(memory_format=fmt)), masks).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            waits.append(ready - start)
            steps.append(time.perf_counter() - ready)
    del it
    return {"load": mean_ms(loads), "wait": mean_ms(waits), "step": mean_ms(steps), "batch": data.hparams.batch_size}


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "configs/data/camvid_half.yaml", help="a data config")
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT if DEFAULT_ROOT.is_dir() else None,
        help="the dataset's folder (default: ../shared/data/camvid when present)",
    )
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="data.num_workers values")
    parser.add_argument("--cache", nargs="+", choices=["off", "on"], default=["off"], help="data.cache_decoded")
    parser.add_argument("--head", default="fcn", help="configs/model/<head>.yaml")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--precision", choices=["fp32", "bf16-mixed"], default="bf16-mixed")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and images")
    parser.add_argument("--steps", type=int, default=20, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the training process")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the table into")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such data config")
    if args.steps < 1 or args.warmup < 0 or min(args.workers) < 0:
        parser.error(f"--steps {args.steps} --warmup {args.warmup} --workers {args.workers}: expected 1+, 0+, 0+")
    if args.threads:
        torch.set_num_threads(args.threads)

    header = [
        "data",
        "workers",
        "decoded cache",
        "batch",
        "model",
        "precision",
        "load only ms/batch",
        "wait ms/batch",
        "step ms",
        "step + wait ms",
        "train img/s",
    ]
    setting = args.precision + (" (channels-last)" if args.channels_last else "")
    rows = []
    for cache in args.cache:
        for workers in args.workers:
            r = measure(args, workers, cache == "on")
            per_step = r["step"] + r["wait"]
            rows.append(
                [
                    args.data.stem,
                    str(workers),
                    cache,
                    str(r["batch"]),
                    f"{args.head} {args.encoder}-D8",
                    setting,
                    number(r["load"]),
                    number(r["wait"]),
                    number(r["step"]),
                    number(per_step),
                    number(1e3 * r["batch"] / per_step),
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(table(header, rows))
    if args.out is not None:
        update_section(
            args.out,
            "bench/data.py",
            header,
            rows,
            6,
            {"CPU": machine(torch.device("cpu"))},
            command_line("bench/data.py", argv),
        )
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
