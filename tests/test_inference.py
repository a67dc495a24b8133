"""Evaluation modes: whole image, sliding window (logits averaged over overlaps), multi-scale + flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from attnseg.inference import MultiScaleFlip, SlidingWindow, Whole
from tests.helpers.cli import QUICKSTART, run_cli


class Pointwise(nn.Module):
    """A 1x1 conv: each output pixel depends on its input pixel only, so windows cannot change it."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x), "aux": -self.conv(x)}


class WindowMean(nn.Module):
    """Every pixel of a window gets the window's mean (per image): the result depends on the window."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])}


class LeftRamp(nn.Module):
    """Not flip-equivariant: the logits grow with the column index."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = torch.linspace(0, 3, x.shape[-1])
        return {"out": torch.cat([x[:, :2] + ramp, x[:, 2:] - ramp], dim=1)}


@pytest.fixture
def model() -> Pointwise:
    torch.manual_seed(0)
    return Pointwise().eval()


@pytest.mark.parametrize(
    "size",
    [(10, 12), (16, 16), (40, 50), (37, 61), (10, 50), (50, 9)],
    ids=["smaller", "equal", "larger", "odd", "short", "narrow"],
)
@pytest.mark.parametrize("stride, batch_windows", [((8, 8), 4), ((11, 5), 1), ((16, 16), 3)])
def test_sliding_window_equals_whole_for_a_pointwise_model(model, size, stride, batch_windows):
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        whole = Whole()(model, images)
        slide = SlidingWindow((16, 16), stride, batch_windows)(model, images)
    assert slide.shape == whole.shape == (2, 4, *size)
    assert torch.allclose(slide, whole, atol=1e-6)


def test_windows_cover_the_image_and_stay_inside():
    mode = SlidingWindow((769, 769), (513, 513))
    boxes = mode.windows(1024, 2048)
    assert len(boxes) == 2 * 4  # mmsegmentation's slide on a Cityscapes frame: 2 rows x 4 columns
    covered = torch.zeros(1024, 2048, dtype=torch.bool)
    for top, left, bottom, right in boxes:
        assert (bottom - top, right - left) == (769, 769) and top >= 0 and left >= 0
        covered[top:bottom, left:right] = True
    assert covered.all()
    assert boxes[-1][2:] == (1024, 2048)  # the last window is shifted inwards to end at the border
    assert mode.windows(500, 600) == [(0, 0, 500, 600)]  # smaller than the window: one pass on the whole image
    assert SlidingWindow((16, 16)).stride == (10, 10)  # default: two thirds of the window


def test_sliding_window_averages_overlapping_logits():
    images = torch.arange(2 * 3 * 10 * 14, dtype=torch.float).view(2, 3, 10, 14)
    mode = SlidingWindow((10, 8), (10, 3))
    logits = mode(WindowMean(), images)
    boxes = mode.windows(10, 14)
    assert len(boxes) == 3  # columns 0-8, 3-11, 6-14
    expected = torch.zeros(2, 1, 10, 14)
    count = torch.zeros(1, 1, 10, 14)
    for top, left, bottom, right in boxes:
        expected[:, :, top:bottom, left:right] += images[:, :1, top:bottom, left:right].mean(dim=(2, 3), keepdim=True)
        count[:, :, top:bottom, left:right] += 1
    assert torch.allclose(logits, expected / count)
    assert not torch.allclose(logits[..., 7], logits[..., 4])  # columns seen by different windows differ


def test_single_scale_without_flip_is_log_softmax_of_whole(model):
    images = torch.randn(2, 3, 21, 17)
    with torch.no_grad():
        expected = F.log_softmax(Whole()(model, images), dim=1)
        logits = MultiScaleFlip(scales=(1.0,), flip=False)(model, images)
    assert logits.shape == expected.shape and torch.allclose(logits, expected, atol=1e-5)


def test_flip_of_a_flip_equivariant_model_changes_nothing(model):
    images = torch.randn(2, 3, 21, 17)
    with torch.no_grad():
        expected = F.log_softmax(Whole()(model, images), dim=1)
        flipped = MultiScaleFlip(scales=(1.0,), flip=True)(model, images)
        windows = MultiScaleFlip(scales=(1.0,), flip=True, base=SlidingWindow((8, 8), (5, 5)))(model, images)
    assert torch.allclose(flipped, expected, atol=1e-5)
    assert torch.allclose(windows, expected, atol=1e-5)


def test_flip_is_undone_before_averaging():
    images = torch.randn(1, 3, 6, 9)
    ramp = LeftRamp()
    straight = ramp(images)["out"].softmax(1)
    mirrored = ramp(images.flip(-1))["out"].flip(-1).softmax(1)
    logits = MultiScaleFlip(scales=(1.0,), flip=True)(ramp, images)
    assert torch.allclose(logits.exp(), (straight + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(logits.exp(), straight, atol=1e-3)


def test_multi_scale_averages_probabilities_at_the_input_size(model):
    images = torch.randn(2, 3, 20, 30)
    with torch.no_grad():
        logits = MultiScaleFlip(scales=(0.5, 1.0, 1.5), flip=False)(model, images)
        probs = []
        for scale, size in ((0.5, (10, 15)), (1.0, (20, 30)), (1.5, (30, 45))):
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False) if scale != 1 else images
            out = model(scaled)["out"]
            probs.append(F.interpolate(out, size=(20, 30), mode="bilinear", align_corners=False).softmax(1))
    assert logits.shape == (2, 4, 20, 30)
    assert torch.allclose(logits.exp(), sum(probs) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="scales"):
        MultiScaleFlip(scales=(0.0, 1.0))


def test_inference_mode_is_chosen_in_yaml(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "inference": {
                        "class_path": "attnseg.inference.MultiScaleFlip",
                        "init_args": {
                            "scales": [0.75, 1.0],
                            "flip": True,
                            "base": {
                                "class_path": "attnseg.inference.SlidingWindow",
                                "init_args": {"crop_size": [24, 24], "stride": [16, 16]},
                            },
                        },
                    }
                }
            }
        )
    )
    cli = run_cli(
        "validate",
        "--config",
        QUICKSTART,
        "--config",
        config,
        "--trainer.fast_dev_run=1",
        "--data.dataset_args.image_size=32",
        "--data.dataset_args.num_samples=2",
        "--data.val_batch_size=2",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
    )
    mode = cli.model.inference
    assert isinstance(mode, MultiScaleFlip) and mode.scales == (0.75, 1.0) and mode.flip
    assert isinstance(mode.base, SlidingWindow) and mode.base.crop_size == (24, 24) and mode.base.stride == (16, 16)
    assert 0.0 <= float(cli.trainer.callback_metrics["val/mIoU"]) <= 1.0
