"""The README's pictures, from trained checkpoints: where attention looks, and every head's predictions on CamVid.

    python -m bench.figures attention [--danet DANET.ckpt] [--ccnet CCNET.ckpt] [--sample 0] [--out docs/figures]
    python -m bench.figures camvid --results runs/camvid_results --root ../shared/data/camvid \
        [--images 0 60 120 180] [--out docs/figures]

``attention`` takes a DANet checkpoint, a CCNet checkpoint or both, trained on the context benchmark
(SyntheticShapes: the DANet ablation's ``far`` data, the CCNet ablation's ``two_hop`` data) and, on validation image
``--sample`` of each checkpoint's own data, picks the pixel deepest inside a blob (whose class only the cue tells) and
draws:

- ``attention_pam.png``: DANet's position attention of that pixel over the feature grid;
- ``attention_criss_cross.png``: CCNet's criss-cross weights after one step (its row and column only) and the
  product of two steps' weights (every position reaches it), with the two-hop path pixel -> relay cell -> cue:
  the relay is the position whose own step-1 attention to the cue, times the pixel's step-2 weight on it, is
  largest.

Each panel says what share of the pixel's attention lands on the cue. ``camvid`` takes the output folder of
``bench/camvid_results.py`` and draws ``camvid_predictions.png``: test images ``--images`` (of the 233), their
labels, and the prediction of each head's tested checkpoint with the recipe's inference (scale 0.5), titled with
its test mIoU. ``notebooks/attention_maps.ipynb`` draws the same attention figures for any checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from attnseg.data import SegDataModule
from attnseg.task import SegmentationTask
from attnseg.visualize import (
    attention_figure,
    cell_centre,
    comparison_figure,
    criss_cross_dense,
    deepest_pixel,
    denormalize,
    feature_cell,
    two_hop_path,
)
from bench.camvid_results import HEADS
from bench.common import REPO


def load(checkpoint: Path, **data_overrides) -> tuple[SegmentationTask, SegDataModule]:
    task = SegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = SegDataModule.load_from_checkpoint(checkpoint, map_location="cpu", **data_overrides)
    return task, data


def context_sample(data: SegDataModule, sample: int):
    """Validation image ``sample``: the image (H, W, 3), its tensor, its labels, the blob pixel and the cue region."""
    data.setup("validate")
    x, mask = data.val_dataset[sample]
    names = data.class_names
    image = denormalize(x[None], data.mean, data.std)[0]
    pixel = deepest_pixel(mask, [names.index("warm_blob"), names.index("cold_blob")])
    cue = torch.isin(mask, torch.tensor([names.index("warm_cue"), names.index("cold_cue")]))
    return image, x, mask, pixel, cue


@torch.no_grad()
def attention_figures(args: argparse.Namespace) -> list[Path]:
    written = []
    if args.danet is None and args.ccnet is None:
        raise SystemExit("attention: give --danet, --ccnet or both")
    if args.danet is not None:
        written.append(pam_figure(args))
    if args.ccnet is not None:
        written.append(criss_cross_figure(args))
    return written


def pam_figure(args: argparse.Namespace) -> Path:
    danet, data = load(args.danet)
    image, x, mask, pixel, cue = context_sample(data, args.sample)
    features = danet.model.encoder(x[None])
    grid = tuple(features[-1].shape[-2:])
    pam = danet.model.head.attention_maps(features).get("pam")
    if pam is None:
        raise SystemExit(f"--danet {args.danet}: this DANet has no position attention (pam: false)")
    u = feature_cell(pixel, mask.shape, grid)
    fig = attention_figure(image, [("DANet position attention", pam[0, u].reshape(grid))], pixel, target=cue)
    return save(fig, args.out / "attention_pam.png")


def criss_cross_figure(args: argparse.Namespace) -> Path:
    ccnet, data = load(args.ccnet)
    image, x, mask, pixel, cue = context_sample(data, args.sample)
    features = ccnet.model.encoder(x[None])
    grid = tuple(features[-1].shape[-2:])
    steps = [criss_cross_dense(m[0]) for m in ccnet.model.head.attention_maps(features).values()]
    if len(steps) < 2:
        raise SystemExit(f"--ccnet {args.ccnet}: recurrence {len(steps)}; two steps are needed for the two-hop path")
    u = feature_cell(pixel, mask.shape, grid)
    cue_cells = torch.nn.functional.adaptive_avg_pool2d(cue.float()[None, None], grid).flatten()
    _, relay, source = two_hop_path(steps[0], steps[1], u, cue_cells)
    two = (steps[1] @ steps[0])[u]
    path = [pixel, cell_centre(relay, mask.shape, grid), cell_centre(source, mask.shape, grid)]
    maps = [("CCNet criss-cross, R = 1", steps[0][u].reshape(grid)), ("CCNet criss-cross, R = 2", two.reshape(grid))]
    fig = attention_figure(image, maps, pixel, target=cue, paths={1: path})
    return save(fig, args.out / "attention_criss_cross.png")


@torch.no_grad()
def camvid_figure(args: argparse.Namespace) -> list[Path]:
    predictions, scores, images, targets, style = {}, {}, None, None, None
    for head in HEADS:  # the table's order: the baseline first
        result = args.results / head / "test.json"
        if not result.is_file():
            print(f"{head}: no {result}, left out")
            continue
        tested = json.loads(result.read_text())
        task, data = load(Path(tested["checkpoint"]), root=str(args.root))
        data.setup("test")
        samples = [data.test_dataset[i] for i in args.images]
        if images is None:
            images = [denormalize(x[None], data.mean, data.std)[0] for x, _ in samples]
            targets = [mask.numpy() for _, mask in samples]
            style = (data.palette, data.class_names)
        predictions[head] = [task.predict_logits(x[None]).argmax(1)[0].numpy() for x, _ in samples]
        scores[head] = 100 * tested["test"]["test/mIoU"]
        print(f"{head}: {tested['checkpoint']} (test mIoU {scores[head]:.1f})")
    if not predictions:
        raise SystemExit(f"--results {args.results}: no head has a test.json (run bench.camvid_results first)")
    fig = comparison_figure(images, targets, predictions, *style, scores=scores)
    return [save(fig, args.out / "camvid_predictions.png")]


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    attention = commands.add_parser("attention", help="DANet PAM and CCNet criss-cross maps of a blob pixel")
    attention.add_argument("--danet", type=Path, help="a DANet checkpoint (context benchmark)")
    attention.add_argument("--ccnet", type=Path, help="a CCNet checkpoint, recurrence >= 2")
    attention.add_argument("--sample", type=int, default=0, help="validation image of each checkpoint's data")
    camvid = commands.add_parser("camvid", help="every head's predictions on CamVid test images")
    camvid.add_argument("--results", type=Path, required=True, help="the --out folder of bench/camvid_results.py")
    camvid.add_argument("--root", type=Path, required=True, help="the CamVid folder")
    camvid.add_argument("--images", type=int, nargs="+", default=[0, 60, 120, 180], help="test image indices")
    for sub in (attention, camvid):
        sub.add_argument("--out", type=Path, default=REPO / "docs" / "figures", help="folder for the PNGs")
    args = parser.parse_args(argv)
    for name in ("danet", "ccnet", "results", "root"):
        path = getattr(args, name, None)
        if path is not None and not path.exists():
            parser.error(f"--{name} {path}: no such file or folder")
    (attention_figures if args.command == "attention" else camvid_figure)(args)


if __name__ == "__main__":
    main()
