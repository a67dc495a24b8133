"""Is the context benchmark's cue beyond the reach of convolutions? Chance level, effective receptive field, and
the context-class IoU of trained models.

    python -m bench.context --sweep runs/sweeps/ccnet/results.csv --variant two_hop [--size 256] [--images 32]
        [--encoder resnet18 --output-stride 8 --out-indices 0 1 2]

The defaults are the context benchmark's (``configs/experiment/context.yaml``); the quickstart's data and encoder
are ``--size 128 --out-indices 1 2 3 4`` (ResNet-18-D8, all four stages).

For the SyntheticShapes variant at the given size it prints:

1. **chance**: the test IoU of the context classes (``warm_blob``, ``cold_blob``) for a model that finds every
   blob exactly but cannot see the cue: it guesses warm or cold per image (expected over 200 draws), or always
   says warm. A model without long-range context can do no better on average.
2. **cue distance**: the least distance in pixels between a blob and its cue over the test images, and on
   ``two_hop`` the least gap between a blob's rows (columns) and its cue's.
3. **theoretical receptive field** of the encoder (``--encoder``), of the two heads without attention on it (FCN,
   and CCNet with R = 0: the convolutions before and after the criss-cross module, so that one criss-cross step
   reaches the rows and columns within that radius of a pixel's row and column), and of
   each checkpoint's whole model: the radius (pixels, around the output pixel) of the input region that can change
   the deepest feature (the ``out`` logits) at the centre of a ``--size`` image at all, whatever the weights. It is
   found as the support of a gradient: every convolution's weights set to one positive constant, batch norm made
   the identity, max pooling replaced by average pooling of the same window (the same reach), attention opened
   (``gamma`` = 1), on an all-ones input, so that no path is cancelled or cut. Attention that reaches the whole
   image gives the whole image.
4. **effective receptive field** of each checkpoint of the sweep file's rows (the models the
   ablations train): the gradient of the blob logits at blob pixels with respect to the input image, averaged
   over test images; the radius (in pixels, around the blob pixel) that holds 95 % and 99 % of its absolute mass.
5. each row's test context-class IoU from the sweep, next to chance.
6. on ``two_hop``, for each CCNet checkpoint with R >= 2: its ``gamma`` and the weights of the relay's two links
   (``relay_attention``: step 1 from a relay cell to the cue, step 2 from a blob to the relay cells) and what the
   relay competes with (step 2 from a blob to the cells of its own class), next to what uniform weights give.

A context IoU near chance with a receptive-field radius below the cue distance is the measurement that the cue is
beyond what the encoder and a convolutional head see.

With ``--checkpoints`` (several checkpoints of one CCNet run with R >= 2 on ``two_hop``, e.g. every validation's, kept
with ``--checkpoint.save_top_k=-1``) it prints instead the relay's two links at each checkpoint's step, next to
``gamma`` and the uniform share: how the links part from uniform over training.

    python -m bench.context --variant two_hop --images 24 --checkpoints runs/attnseg/<run>/checkpoints/best-*.ckpt
"""

from __future__ import annotations

import argparse
import copy
import csv
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from attnseg.data import SyntheticShapes
from attnseg.data.transforms import eval_transforms
from attnseg.encoder import Encoder
from attnseg.heads import CCNetHead, FCNHead
from attnseg.model import SegmentationModel
from attnseg.task import SegmentationTask

WARM, COLD = SyntheticShapes.classes.index("warm_blob"), SyntheticShapes.classes.index("cold_blob")
CUES = SyntheticShapes.classes.index("warm_cue"), SyntheticShapes.classes.index("cold_cue")


def chance_iou(masks: list[np.ndarray], draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """Mean context-class IoU of a cue-blind oracle: (guess per image, expected over draws; always warm)."""

    def iou(guesses: Sequence[bool]) -> float:
        inter, union = np.zeros(2), np.zeros(2)
        for mask, warm in zip(masks, guesses):
            blobs = (mask == WARM) | (mask == COLD)
            pred = np.where(blobs, WARM if warm else COLD, -1)
            for i, c in enumerate((WARM, COLD)):
                inter[i] += ((pred == c) & (mask == c)).sum()
                union[i] += ((pred == c) | (mask == c)).sum()
        return float(np.mean(inter / np.maximum(union, 1)))

    rng = np.random.default_rng(seed)
    guessed = float(np.mean([iou(rng.random(len(masks)) < 0.5) for _ in range(draws)]))
    return guessed, iou([True] * len(masks))


def cue_distance(masks: list[np.ndarray]) -> float:
    """Least distance (pixels) between a blob pixel and a cue pixel of the same colour, over the images."""
    least = np.inf
    for mask in masks:
        for blob, cue in (
            (WARM, SyntheticShapes.classes.index("warm_cue")),
            (COLD, SyntheticShapes.classes.index("cold_cue")),
        ):
            b, c = np.argwhere(mask == blob), np.argwhere(mask == cue)
            if len(b) and len(c):
                d = np.sqrt(((b[::7, None, :] - c[None, ::3, :]) ** 2).sum(-1)).min()
                least = min(least, float(d))
    return least


def _reach_everywhere(module: nn.Module) -> nn.Module:
    """``module`` (a copy) with nothing that cancels or cuts a path: positive constant convolution weights, no
    biases, identity batch norm, average instead of max pooling, and every attention's residual scale ``gamma``
    (zero at initialisation, which would close the attention) set to one."""
    module = copy.deepcopy(module).float().eval()
    for name, parameter in module.named_parameters():
        if name.rpartition(".")[2] == "gamma":
            nn.init.ones_(parameter)
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.Conv2d):
            nn.init.constant_(child.weight, 1.0 / child.weight[0].numel())
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.reset_parameters()  # running mean 0 / var 1, weight 1, bias 0: x / sqrt(1 + eps) in eval
        elif isinstance(child, nn.MaxPool2d):
            parent, _, attr = name.rpartition(".")
            pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
            setattr(module.get_submodule(parent) if parent else module, attr, pool)
    return module


def theoretical_receptive_field(module: nn.Module, size: int) -> tuple[int, bool]:
    """Radius (pixels, Chebyshev) of the input that can reach the output at the centre of a ``size x size`` image:
    the deepest feature map of an encoder (a list of maps) or the ``out`` logits of a model (a dict), upsampled
    logits included; and whether that region reaches the image border (then the radius is a lower bound)."""
    model = _reach_everywhere(module)
    image = torch.ones(1, 3, size, size, requires_grad=True)
    output = model(image)
    output = output["out"] if isinstance(output, dict) else output[-1]
    h, w = output.shape[-2:]
    y, x = h // 2, w // 2
    output[0, :, y, x].sum().backward()
    stride_y, stride_x = size / h, size / w
    centre_y, centre_x = (y + 0.5) * stride_y - 0.5, (x + 0.5) * stride_x - 0.5  # the output pixel, in input pixels
    ys, xs = torch.nonzero(image.grad[0].abs().sum(0) > 0, as_tuple=True)
    radius = max((ys.float() - centre_y).abs().max().item(), (xs.float() - centre_x).abs().max().item())
    border = bool(ys.min() == 0 or xs.min() == 0 or ys.max() == size - 1 or xs.max() == size - 1)
    return int(np.ceil(radius)), border


def effective_receptive_field(task: SegmentationTask, dataset: SyntheticShapes, images: int) -> tuple[float, float]:
    """Radii (pixels) around a blob pixel holding 95 % and 99 % of the mean |d blob logits / d input|."""
    model = task.model.eval()
    h, w = dataset.image_size
    size = 2 * max(h, w) + 1
    total = torch.zeros(size, size)  # gradient mass by offset from the blob pixel, centred
    rng = np.random.default_rng(0)
    for i in range(images):
        image, mask = dataset[i]
        ys, xs = np.nonzero(((mask == WARM) | (mask == COLD)).numpy())
        if not len(ys):
            continue
        k = rng.integers(len(ys))
        y, x = int(ys[k]), int(xs[k])
        image = image[None].clone().requires_grad_(True)
        logits = model(image)["out"]
        (logits[0, WARM, y, x] - logits[0, COLD, y, x]).backward()
        grad = image.grad[0].abs().sum(0)
        grad = grad / grad.sum()
        cy, cx = max(h, w), max(h, w)
        total[cy - y : cy - y + h, cx - x : cx - x + w] += grad
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = torch.sqrt((yy - size // 2) ** 2 + (xx - size // 2) ** 2.0).flatten()
    order = radius.argsort()
    mass = total.flatten()[order].cumsum(0) / total.sum()
    return tuple(float(radius[order][int((mass < q).sum())]) for q in (0.95, 0.99))


def relay_attention(task: SegmentationTask, dataset: SyntheticShapes, images: int) -> tuple[float, ...]:
    """How a CCNet model with R >= 2 weighs the two links of the two-hop relay, on the feature grid: the mean step-1
    weight that a relay cell (in a blob's row and the cue's columns) puts on the cue's rows of its column, and the
    mean step-2 weight that a blob cell puts on the cue's columns of its row (where the relay cells are), and the
    mean step-2 weight that a blob cell puts on the cells of its own class in its row and column (itself included:
    the weight the relay competes with), each with what uniform weights over the H + W - 1 positions would give.
    Returns (step 1, uniform, step 2, uniform, own class, uniform)."""
    model = task.model.eval()
    sums, count = np.zeros(6), 0
    for i in range(images):
        image, mask = dataset[i]
        with torch.no_grad():
            maps = model.head.attention_maps(model.encoder(image[None].float()))
        first, second = maps["step1"][0], maps["step2"][0]  # (h, w, h + w): column [..., :h], row [..., h:]
        h, w = first.shape[:2]
        grid = torch.nn.functional.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        cue, blob = torch.isin(grid, torch.tensor(CUES, dtype=grid.dtype)), (grid == WARM) | (grid == COLD)
        if not cue.any() or not blob.any():
            continue
        cue_rows, cue_cols = cue.any(1).nonzero().flatten(), cue.any(0).nonzero().flatten()
        relay = first[blob.any(1).nonzero().flatten()][:, cue_cols]  # the relay cells' step-1 weights
        ys, xs = blob.nonzero(as_tuple=True)
        positions = h + w - 1
        own = grid[ys, xs]
        in_column = (grid[:, xs].T == own[:, None]).float()  # (blob cells, h): its class in its column
        in_column[torch.arange(len(ys)), ys] = 0.0  # the cell itself is masked out of its column
        in_row = (grid[ys] == own[:, None]).float()  # (blob cells, w): its class in its row, itself included
        weights = second[ys, xs]
        sums += [
            float(relay[..., cue_rows].sum(-1).mean()),
            len(cue_rows) / positions,
            float(weights[:, h + cue_cols].sum(-1).mean()),
            len(cue_cols) / positions,
            float(((weights[:, :h] * in_column).sum(-1) + (weights[:, h:] * in_row).sum(-1)).mean()),
            float((in_column.sum(-1) + in_row.sum(-1)).mean()) / positions,
        ]
        count += 1
    return tuple(sums / max(count, 1))


def has_relay(head: nn.Module) -> bool:
    """A CCNet head on single frames with R >= 2: one whose two criss-cross steps ``relay_attention`` reads."""
    return isinstance(head, CCNetHead) and head.recurrence >= 2 and head.frames == 1


def relay_over_training(paths: Sequence[Path], dataset: SyntheticShapes, images: int) -> list[tuple]:
    """``(global step, gamma, relay_attention)`` of each checkpoint, in the order of their steps. A checkpoint that
    is not of a CCNet model with R >= 2 on single frames is an error naming it."""
    rows = []
    for path in paths:
        task = SegmentationTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        head = task.model.head
        if not has_relay(head):
            found = f"{type(head).__name__}" + (f" with R = {head.recurrence}" if isinstance(head, CCNetHead) else "")
            raise SystemExit(f"--checkpoints {path}: a {found}; expected CCNet with recurrence >= 2 (the relay)")
        step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        rows.append((step, float(head.cca.gamma.detach()), relay_attention(task, dataset, images)))
    return sorted(rows, key=lambda row: row[0])


def axis_gaps(masks: list[np.ndarray]) -> tuple[float, float]:
    """Least gap (pixels) between the rows, and between the columns, of a blob and of its cue, over the images."""
    least = [np.inf, np.inf]
    for mask in masks:
        blobs, cues = np.argwhere((mask == WARM) | (mask == COLD)), np.argwhere((mask == CUES[0]) | (mask == CUES[1]))
        if len(blobs) and len(cues):
            for axis in (0, 1):
                gap = max(blobs[:, axis].min() - cues[:, axis].max(), cues[:, axis].min() - blobs[:, axis].max()) - 1
                least[axis] = min(least[axis], float(gap))
    return least[0], least[1]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", type=Path, help="results.csv of a sweep on SyntheticShapes (checkpoints and scores)")
    parser.add_argument("--variant", default="far", choices=("far", "two_hop", "band"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=32, help="test images for the receptive field")
    parser.add_argument("--encoder", default="resnet18", help="timm name of the encoder whose reach is printed")
    parser.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32))
    parser.add_argument("--out-indices", type=int, nargs="+", default=[0, 1, 2], help="the encoder's feature levels")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        nargs="+",
        help="checkpoints of one CCNet run (R >= 2): the relay's two links at each one's step, on two_hop",
    )
    args = parser.parse_args(argv)
    if args.checkpoints:
        if args.variant != "two_hop":
            raise SystemExit(f"--checkpoints measures the two-hop relay; add --variant two_hop (not {args.variant})")
        test = SyntheticShapes(split="test", image_size=args.size, variant="two_hop")
        test.transforms = eval_transforms()
        print(
            f"The relay's two links over training ({args.images} two_hop test images, {args.size}x{args.size}; % of a "
            "cell's criss-cross weight):\n\n| step | gamma | step 1, relay cell -> cue (%) | uniform (%) | "
            "step 2, blob -> relay cells (%) | uniform (%) | step 2, blob -> its class (%) | uniform (%) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        for step, gamma, weights in relay_over_training(args.checkpoints, test, args.images):
            print(f"| {step} | {gamma:.3f} | " + " | ".join(f"{100 * v:.1f}" for v in weights) + " |", flush=True)
        return

    test = SyntheticShapes(split="test", image_size=args.size, variant=args.variant)
    masks = [test.generate(i)[1] for i in range(len(test))]
    guessed, warm = chance_iou(masks)
    print(f"SyntheticShapes {args.variant} {args.size}x{args.size}, {len(masks)} test images")
    chance = f"{100 * guessed:.1f} % guessing per image, {100 * warm:.1f} % always warm"
    print(f"chance context IoU (cue-blind oracle): {chance}")
    print(f"least blob-to-cue distance: {cue_distance(masks):.0f} px")
    if args.variant == "two_hop":
        rows, cols = axis_gaps(masks)
        print(f"least gap between a blob's rows and its cue's: {rows:.0f} px; between their columns: {cols:.0f} px")
    encoder = Encoder(args.encoder, args.output_stride, out_indices=args.out_indices)
    radius, border = theoretical_receptive_field(encoder, args.size)
    print(
        f"theoretical receptive field of {args.encoder} (output stride {args.output_stride}, feature strides "
        f"{encoder.strides}): radius {'at least ' if border else ''}{radius} px at {args.size}x{args.size}"
    )
    for name, head in (
        ("FCN", FCNHead(encoder.channels, 7, aux=False)),
        ("CCNet R = 0", CCNetHead(encoder.channels, 7, recurrence=0, aux=False)),
    ):
        radius, border = theoretical_receptive_field(SegmentationModel(encoder, head), args.size)
        print(f"  with the {name} head, to the logits: radius {'at least ' if border else ''}{radius} px")
    if args.sweep is None:
        return
    with open(args.sweep) as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    columns = list(rows[0]) if rows else ["run", "seed"]
    keys = columns[1 : columns.index("seed")]  # the grid's columns, between the run number and the seed
    test.transforms = eval_transforms()
    print(
        "\n| run | " + " | ".join(keys) + " | seed | context IoU (%) | model's theoretical RF radius (px) | "
        "ERF radius 95 % (px) | ERF radius 99 % (px) |"
    )
    print("|---:|" + "---|" * len(keys) + "---:|---:|---:|---:|---:|")
    relays = []  # CCNet with R >= 2 on two_hop: the weights of the relay's two links
    for row in rows:
        context = float(row["test_context_IoU"]) * 100
        try:
            task = SegmentationTask.load_from_checkpoint(row["best_checkpoint"], map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (e.g. a checkpoint of an older version whose options were renamed)
            found = re.search(r"Option '[^']+' is not accepted", str(err))
            reason = found.group(0) if found else f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:80]}"
            cells = [
                row["run"],
                *(row[k] for k in keys),
                row["seed"],
                f"{context:.1f}",
                "-",
                "-",
                f"- (not loaded: {reason})",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
            continue
        radius, border = theoretical_receptive_field(task.model, args.size)
        reach = "to the border" if border else str(radius)  # attention: a row, a column or all
        r95, r99 = effective_receptive_field(task, test, args.images)
        cells = [row["run"], *(row[k] for k in keys), row["seed"], f"{context:.1f}", reach, f"{r95:.0f}", f"{r99:.0f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
        head = task.model.head
        if args.variant == "two_hop" and has_relay(head):
            gamma = float(head.cca.gamma.detach())
            relays.append((row["run"], row["seed"], context, gamma, relay_attention(task, test, args.images)))
    if relays:
        print(
            "\nThe relay's two links (% of a cell's criss-cross weight; uniform: what equal weights give):\n\n"
            "| run | seed | context IoU (%) | gamma | step 1, relay cell -> cue (%) | uniform (%) | "
            "step 2, blob -> relay cells (%) | uniform (%) | step 2, blob -> its class (%) | uniform (%) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        for run, seed, context, gamma, weights in relays:
            print(
                f"| {run} | {seed} | {context:.1f} | {gamma:.3f} | "
                + " | ".join(f"{100 * v:.1f}" for v in weights)
                + " |"
            )


if __name__ == "__main__":
    sys.exit(main())
