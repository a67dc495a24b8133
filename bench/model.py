"""Whole models: training-step and inference throughput, peak memory and model FLOP utilisation, per head.

    python -m bench.model [--heads ccnet danet ...] [--encoders resnet50 resnet101]
        [--output-strides 8 16] [--sizes 512 769] [--batch 8] [--precision bf16-mixed fp32]
        [--layouts contiguous channels-last] [--compile]
        [--steps 10] [--warmup 3] [--device cuda] [--peak-tflops 989] [--out docs/benchmarks.md]

Each head (default: every ``configs/model/<head>.yaml``, found by ``attnseg.heads.head_configs``) is built from its
config on a dilated timm encoder (output stride 8, or each of ``--output-strides``) with random weights, inside
``SegmentationTask`` (its losses, 19 classes). A training step is forward, the task's weighted losses against random
labels, backward and an SGD step (momentum 0.9); inference is one forward of the model in eval mode
(``inference_mode``) on the whole ``size x size`` image, and sliding-window inference
(``attnseg.inference.SlidingWindow``, ``size x size`` windows every two thirds of a window) over ``size x 2 size``
images, three windows each. All run under ``torch.autocast(dtype=torch.bfloat16)`` for ``bf16-mixed``; ``--layouts
channels-last`` gives the weights and images the channels-last memory format (``model.channels_last``). Throughput is
images per second over ``--steps`` steps after ``--warmup`` steps. The speed-up columns divide each row's throughput by
that of the fp32, contiguous row of the same head, encoder and size measured in the same run.

Peak memory: what the step finds allocated (weights, buffers, optimiser state, the batch) plus the peak of what it
allocates: on CUDA ``torch.cuda.max_memory_allocated`` over one step; on the CPU the resident tensors' bytes plus the
allocation events of one step replayed from ``torch.profiler`` (see ``bench/attention.py``).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one training step (forward and backward) and one forward,
at the benchmark's batch; ``TFLOP/s`` is FLOPs per step times steps per second. On CUDA the model FLOP utilisation
(MFU) divides it by the GPU's dense bf16 peak: a small table of known GPUs or ``--peak-tflops``.

Defaults are the full settings, for a GPU (ResNet-50 and -101, 512 and 769, batch 8, bf16-mixed). On a CPU pass
reduced ones, e.g. ``--device cpu --encoders resnet50 --sizes 512 --batch 1 --precision fp32 --steps 2 --warmup 1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from attnseg.heads import head_configs
from attnseg.inference import SlidingWindow
from attnseg.profiling import count_parameters, extra_flop_formulas
from attnseg.task import SegmentationTask
from bench.common import command_line, machine, number, peak_bytes, sync, table, update_section

# Dense bf16 tensor-core peaks (TFLOP/s), matched against the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
NUM_CLASSES = 19


def head_factory(name: str):
    """The head of ``configs/model/<name>.yaml`` as a factory ``(in_channels, num_classes) -> head``."""
    return head_configs()[name].build


def build_task(head: str, encoder: str, output_stride: int = 8) -> SegmentationTask:
    return SegmentationTask(
        head=head_factory(head), encoder={"name": encoder, "output_stride": output_stride}, num_classes=NUM_CLASSES
    )


def gpu_peak_tflops(device: torch.device, override: Optional[float]) -> Optional[float]:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def resident_bytes(*groups) -> int:
    """Bytes of the distinct tensors in ``groups`` (iterables of tensors)."""
    seen = {}
    for group in groups:
        for t in group:
            if isinstance(t, torch.Tensor):
                seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def measure(
    args: argparse.Namespace,
    head: str,
    encoder: str,
    size: int,
    precision: str,
    layout: str,
    device: torch.device,
    output_stride: int = 8,
):
    """``(train images/s, train peak bytes, train FLOPs per step, inference images/s, peak bytes, FLOPs,
    sliding-window images/s)``."""
    torch.manual_seed(0)
    task = build_task(head, encoder, output_stride).to(device)
    model = task.model
    fmt = torch.channels_last if layout == "channels-last" else torch.contiguous_format
    model.to(memory_format=fmt)
    images = torch.randn(args.batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    wide = torch.randn(args.batch, 3, size, 2 * size, device=device).contiguous(memory_format=fmt)
    sliding = SlidingWindow((size, size), batch_windows=3)
    masks = torch.randint(0, NUM_CLASSES, (args.batch, size, size), device=device)
    masks[:, : size // 8] = 255
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def train_step() -> None:
        with autocast:
            loss = sum(task.compute_losses(model(images), masks).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer() -> None:
        with autocast:
            model(images)["out"]

    @torch.inference_mode()
    def infer_sliding() -> None:
        with autocast:
            sliding(model, wide)

    steps = {"train": train_step, "eval": infer}
    flops = {}
    for mode, step in steps.items():  # counted on the eager model, before any compilation
        model.train(mode == "train")
        with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
            step()
        flops[mode] = counter.get_total_flops()
    if args.compile:
        model.compile()
    results = []
    for mode, step in steps.items():
        model.train(mode == "train")
        rate = images_per_second(step, args, device)
        state = [t for s in optimizer.state.values() for t in s.values()]
        resident = resident_bytes(model.parameters(), model.buffers(), state, [images, masks])
        results += [rate, resident + peak_bytes(step, device), flops[mode]]
    return results + [images_per_second(infer_sliding, args, device)]


def images_per_second(step, args: argparse.Namespace, device: torch.device) -> float:
    """Images per second of ``step`` (one batch) over ``--steps`` steps after ``--warmup``."""
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.batch * args.steps / (time.perf_counter() - start)


def speedup(rate: float, baseline: Optional[float]) -> str:
    return f"{rate / baseline:.2f}x" if baseline else "n/a"


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    heads = sorted(head_configs())
    parser.add_argument("--heads", nargs="+", choices=heads, default=heads, help="configs/model/<head>.yaml")
    parser.add_argument("--encoders", nargs="+", default=["resnet50", "resnet101"], help="timm names (dilated, OS 8)")
    parser.add_argument(
        "--output-strides",
        nargs="+",
        type=int,
        default=[8],
        choices=[8, 16, 32],
        help="the encoder's output stride (8: dilated twice, the papers' setting)",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 769], help="square input sizes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16-mixed"], default=["bf16-mixed"])
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=["contiguous", "channels-last"],
        default=["contiguous"],
        help="memory formats of weights and images",
    )
    parser.add_argument("--channels-last", action="store_true", help="the same as --layouts channels-last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (nn.Module.compile)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the table into")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error(f"--steps {args.steps} --warmup {args.warmup} --batch {args.batch}: expected 1+, 0+ and 1+")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak_tflops = gpu_peak_tflops(device, args.peak_tflops)
    # the fp32, contiguous baseline first: the speed-ups of the other rows divide by it
    layouts = sorted(["channels-last"] if args.channels_last else args.layouts, key=lambda x: x != "contiguous")
    precisions = sorted(args.precision, key=lambda x: x != "fp32")

    header = [
        "head",
        "encoder",
        "input",
        "batch",
        "precision",
        "device",
        "params (M)",
        "train img/s",
        "train peak GiB",
        "train TFLOP/s (MFU)",
        "inference img/s",
        "inference peak GiB",
        "sliding-window img/s",
        "train speed-up",
        "inference speed-up",
    ]
    rows = []
    for encoder, stride in [(e, s) for e in args.encoders for s in args.output_strides]:
        for size in args.sizes:
            for head in args.heads:
                baseline = {}  # fp32, contiguous: the rates the speed-ups divide by
                for precision in precisions:
                    for layout in layouts:
                        start = time.perf_counter()
                        params = count_parameters(build_task(head, encoder, stride).model)[0]
                        knobs = [
                            k
                            for k, on in (("channels-last", layout == "channels-last"), ("compile", args.compile))
                            if on
                        ]
                        setting = precision + (f" ({', '.join(knobs)})" if knobs else "")
                        row = [
                            head,
                            f"{encoder}-D{stride}",
                            f"{size}x{size}",
                            str(args.batch),
                            setting,
                            args.device,
                            f"{params / 1e6:.1f}",
                        ]
                        try:
                            train_rate, train_peak, train_flops, eval_rate, eval_peak, _, slide_rate = measure(
                                args, head, encoder, size, precision, layout, device, stride
                            )
                        except torch.cuda.OutOfMemoryError:
                            torch.cuda.empty_cache()
                            row += ["out of memory"] * 8
                        else:
                            if precision == "fp32" and layout == "contiguous" and not args.compile:
                                baseline = {"train": train_rate, "eval": eval_rate}
                            achieved = train_flops * train_rate / args.batch / 1e12
                            mfu = f"{100 * achieved / peak_tflops:.1f}%" if peak_tflops else "n/a"
                            row += [
                                number(train_rate),
                                f"{train_peak / 2**30:.2f}",
                                f"{number(achieved)} ({mfu})",
                                number(eval_rate),
                                f"{eval_peak / 2**30:.2f}",
                                number(slide_rate),
                                speedup(train_rate, baseline.get("train")),
                                speedup(eval_rate, baseline.get("eval")),
                            ]
                        rows.append(row)
                        print(" | ".join(row), f"[{time.perf_counter() - start:.0f} s]", flush=True)
    print()
    print(table(header, rows))
    if args.out is not None:
        label = "CUDA" if device.type == "cuda" else "CPU"
        update_section(
            args.out, "bench/model.py", header, rows, 6, {label: machine(device)}, command_line("bench.model", argv)
        )
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
