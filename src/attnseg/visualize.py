"""Drawing helpers shared by the dashboard, ``attnseg predict`` and the notebooks: palettes, class maps in colour,
overlays, and matplotlib figures of predictions and confusion matrices (all as numpy arrays or Figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from attnseg.constants import IGNORE_INDEX
from attnseg.data.io import voc_palette

IGNORE_COLOUR = (255, 255, 255)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Colours for data without a palette: PASCAL VOC's colour map, as the datamodule's own fallback."""
    return list(voc_palette(num_classes))


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Class map (H, W) -> RGB (H, W, 3) uint8; ``ignore_index`` (and any label without a colour) is white."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = IGNORE_COLOUR
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    labels = np.asarray(mask).astype(np.int64)
    labels = np.where((labels >= 0) & (labels < 256) & (labels != ignore_index), labels, 255)
    return table[labels]


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colours`` for two (H, W, 3) uint8 arrays."""
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def with_legend(
    image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], names: Sequence[str]
) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with a white strip below it naming, by colour swatch, the classes present in ``mask``
    (H, W), in rows as wide as the image; void and indices without a name are left out."""
    from PIL import Image, ImageDraw, ImageFont

    present = [int(k) for k in np.unique(mask) if int(k) < min(len(names), len(palette))]
    font = ImageFont.load_default()
    width = image.shape[1]
    entries = [(k, 16 + 4 + int(font.getlength(str(names[k]))) + 12) for k in present]  # swatch, gap, text, space
    rows, row, used = [], [], 4
    for k, w in entries:
        if row and used + w > width:
            rows.append(row)
            row, used = [], 4
        row.append(k)
        used += w
    rows += [row] if row else []
    strip = Image.new("RGB", (width, 6 + 18 * len(rows)), "white")
    draw = ImageDraw.Draw(strip)
    for r, keys in enumerate(rows):
        x, y = 4, 4 + 18 * r
        for k in keys:
            draw.rectangle([x, y, x + 15, y + 13], fill=tuple(int(c) for c in palette[k]), outline="black")
            draw.text((x + 20, y + 1), str(names[k]), fill="black", font=font)
            x += 16 + 4 + int(font.getlength(str(names[k]))) + 12
    return np.concatenate([image, np.asarray(strip)], axis=0)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images (B, 3, H, W) -> uint8 (B, H, W, 3), undoing ``(x - mean) / std``."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = images.detach().float().cpu() * s + m
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def confusion_figure(confmat: torch.Tensor, names: Sequence[str], title: str = ""):
    """A matplotlib Figure of the row-normalised confusion matrix (rows: ground truth), cells annotated in %."""
    from matplotlib.figure import Figure

    counts = confmat.detach().double().cpu().numpy()
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(names)
    size = min(2.0 + 0.45 * k, 16.0)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fontsize = 7 if k <= 30 else 4
    ax.set_xticks(range(k), names, rotation=60 if k <= 30 else 90, ha="right", fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def overlay_figure(
    images: np.ndarray,
    targets: np.ndarray,
    preds: np.ndarray,
    palette: Sequence[Sequence[int]],
    names: Sequence[str],
    ignore_index: int = IGNORE_INDEX,
    title: str = "",
    alpha: float = 0.5,
    columns: Sequence[str] = ("image", "ground truth", "prediction"),
):
    """A matplotlib Figure with one row per image (each of its own size): image, ground truth, prediction over the
    image (``columns``: their titles); a legend names the classes present."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(images)
    fig = Figure(figsize=(7.5, 2.5 * n + 0.8), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for row, (image, target, pred) in enumerate(zip(images, targets, preds)):
        panels = (image, colorize(target, palette, ignore_index), blend(image, colorize(pred, palette), alpha))
        for col, (panel, label) in enumerate(zip(panels, columns)):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(label, fontsize=9)
    present = sorted(set().union(*(np.unique(a).tolist() for a in (*targets, *preds))))
    handles = [Patch(color=np.asarray(palette[k]) / 255, label=names[k]) for k in present if k < len(names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4) or 1, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def figure_to_array(fig) -> np.ndarray:
    """A matplotlib Figure as an RGB (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def comparison_figure(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    predictions: dict[str, Sequence[np.ndarray]],
    palette: Sequence[Sequence[int]],
    names: Sequence[str],
    scores: dict[str, float] | None = None,
    alpha: float = 0.6,
):
    """One row per image: the image, its ground truth, then each model's prediction over the image (one column per
    model, titled with its score if given); a legend names the classes present."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    columns = ["image", "ground truth", *predictions]
    n, h, w = len(images), *np.asarray(images[0]).shape[:2]
    fig = Figure(figsize=(1.9 * len(columns) * w / h, 1.9 * n + 0.9), layout="constrained")
    axes = fig.subplots(n, len(columns), squeeze=False)
    for row, (image, target) in enumerate(zip(images, targets)):
        panels = [image, colorize(target, palette)]
        panels += [blend(image, colorize(predictions[m][row], palette), alpha) for m in predictions]
        for col, panel in enumerate(panels):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_axis_off()
    for col, label in enumerate(columns):
        score = (scores or {}).get(label)
        axes[0, col].set_title(label if score is None else f"{label}\n{score:.1f} mIoU", fontsize=9)
    present = sorted(set().union(*(np.unique(t).tolist() for t in targets)))
    handles = [Patch(color=np.asarray(palette[k]) / 255, label=names[k]) for k in present if k < len(names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6) or 1, fontsize=8)
    return fig


def deepest_pixel(mask: torch.Tensor, classes: Sequence[int]) -> tuple[int, int]:
    """The (row, col) deepest inside the region of ``classes`` in ``mask`` (H, W): its border peeled off until one
    more peel would leave nothing; the middle of what remains. The whole image if no pixel has those classes."""
    import torch.nn.functional as F

    region = torch.isin(mask, torch.as_tensor(list(classes), dtype=mask.dtype))
    region = (region if region.any() else torch.ones_like(region)).float()[None, None]
    while (eroded := -F.max_pool2d(-region, 3, stride=1, padding=1)).any():
        region = eroded
    ys, xs = torch.nonzero(region[0, 0], as_tuple=True)
    return int(ys[len(ys) // 2]), int(xs[len(xs) // 2])


def criss_cross_dense(weights: torch.Tensor) -> torch.Tensor:
    """One criss-cross step's weights (h, w, h + w) (``CrissCrossAttention.attention_map``: each position's column,
    then its row) as the dense (N, N) map over the N = h * w positions."""
    h, w = weights.shape[:2]
    dense = torch.zeros(h, w, h, w, dtype=weights.dtype)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dense[rows, cols, :, cols] += weights[..., :h]  # the position's column
    dense[rows, cols, rows, :] += weights[..., h:]  # the position's row
    return dense.reshape(h * w, h * w)


def feature_cell(pixel: tuple[int, int], image_size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Index, among the h * w positions of a feature grid, of the cell that holds image position ``pixel``."""
    (row, col), (H, W), (h, w) = pixel, image_size, grid
    return (row * h // H) * w + col * w // W


def cell_centre(cell: int, image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[float, float]:
    """Image (row, col) of the centre of feature cell ``cell``."""
    (H, W), (h, w) = image_size, grid
    return ((cell // w + 0.5) * H / h, (cell % w + 0.5) * W / w)


def two_hop_path(step1: torch.Tensor, step2: torch.Tensor, cell: int, target: torch.Tensor) -> list[int]:
    """How two criss-cross steps (dense (N, N) maps) bring ``target`` (N weights, e.g. the share of each cell on the
    cue) to ``cell``: ``[cell, relay, source]``, the relay carrying the most of it (its step-1 attention to the target
    times ``cell``'s step-2 weight on it) and the target cell the relay attends to most."""
    relay = int((step2[cell] * (step1 @ target)).argmax())
    return [cell, relay, int((step1[relay] * target).argmax())]


def attention_figure(
    image: np.ndarray,
    maps: Sequence[tuple[str, torch.Tensor]],
    pixel: tuple[int, int],
    target: torch.Tensor | None = None,
    target_name: str = "the cue",
    paths: dict[int, list[tuple[int, int]]] | None = None,
):
    """One panel per (title, (h, w) map): where the query ``pixel`` (row, col) of ``image`` looks, the map drawn
    over the image cell by cell. With ``target`` (H, W, a 0/1 region of the image), each title gives the share of the
    attention that lands on it; ``paths`` draws, on the panel of that index, a polyline through (row, col) image
    positions (e.g. pixel -> relay cell -> cue for two criss-cross steps)."""
    import torch.nn.functional as F
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    H, W = image.shape[:2]
    fig = Figure(figsize=(3.3 * len(maps), 3.8), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for index, (ax, (title, grid)) in enumerate(zip(axes, maps)):
        grid = grid.detach().float().cpu()
        up = F.interpolate(grid[None, None], size=(H, W), mode="nearest")[0, 0]
        ax.imshow(image)
        ax.imshow(up.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest", norm=PowerNorm(0.4, vmin=0))
        if target is not None:
            cells = F.adaptive_avg_pool2d(target.float()[None, None], grid.shape)[0, 0]
            share = float((grid * cells).sum() / grid.sum())
            whole = 100 * float(target.float().mean())
            title = f"{title}\n{100 * share:.0f}% on {target_name} ({whole:.0f}% of the image)"
            ax.contour(target.float().numpy(), levels=[0.5], colors="cyan", linewidths=0.8)
        path = (paths or {}).get(index)
        if path:
            ys, xs = zip(*path)
            ax.plot(xs, ys, "c--", linewidth=1.5, marker="o", markersize=4)
        ax.plot(pixel[1], pixel[0], "w+", markersize=14, markeredgewidth=2)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.supxlabel("colour: attention weight ** 0.4 (faint weights visible); +: the query pixel", fontsize=8)
    return fig


def show_samples(data, n: int, out: Path) -> list[Path]:
    """Draw the first ``n`` training samples as training sees them (augmented, after the datamodule's transforms) and
    the first ``n`` validation samples: image, label, label over the image, with a legend of the classes present, to
    ``out/train.png`` and ``out/val.png``. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dataset in (("train", data.train_dataset), ("val", data.val_dataset)):
        if dataset is None or len(dataset) == 0:
            continue
        samples = [dataset[i] for i in range(min(n, len(dataset)))]
        images = [denormalize(image[None], data.mean, data.std)[0] for image, _ in samples]
        masks = [mask.numpy() for _, mask in samples]
        title = f"{name}: {len(samples)} of {len(dataset)} samples" + (" (augmented)" if name == "train" else "")
        figure = overlay_figure(
            images,
            masks,
            masks,
            data.palette,
            data.class_names,
            data.ignore_index,
            title=title,
            columns=("image", "label", "label over the image"),
        )
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written
