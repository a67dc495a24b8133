"""Drawing helpers shared by the dashboard, ``attnseg predict`` and the notebooks: palettes, class maps in colour,
overlays, and matplotlib figures of predictions and confusion matrices (all as numpy arrays or Figures)."""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import torch
from attnseg.constants import IGNORE_INDEX

IGNORE_COLOUR = (255, 255, 255)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for datasets without a palette: hues spaced by the golden ratio."""
    colours = []
    for k in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.65, 0.95 if k % 2 else 0.75)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


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
):
    """A matplotlib Figure with one row per image (each of its own size): image, ground truth, prediction over the
    image; a legend names the classes present."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(images)
    fig = Figure(figsize=(7.5, 2.5 * n + 0.8), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for row, (image, target, pred) in enumerate(zip(images, targets, preds)):
        panels = (image, colorize(target, palette, ignore_index), blend(image, colorize(pred, palette), alpha))
        for col, (panel, label) in enumerate(zip(panels, ("image", "ground truth", "prediction"))):
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
