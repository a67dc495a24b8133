"""What the head tests share: encoder channel lists, fake multi-scale features, and the train/eval check."""

from __future__ import annotations

from typing import Sequence, Union

import torch

# channels of the four stages of some encoders (the real ResNet-18 one, and narrow ones for speed)
CHANNELS = {"resnet18": [64, 128, 256, 512], "resnet50/16": [16, 32, 64, 128], "convnext/8": [12, 24, 48, 96]}
# strides of the four stages at output stride 8, 16 and 32
STRIDES = {8: [4, 8, 8, 8], 16: [4, 8, 16, 16], 32: [4, 8, 16, 32]}
IMAGE = (97, 129)  # odd sizes: feature maps are ceil(size / stride)


def fake_features(
    channels: Sequence[int], strides: Union[int, Sequence[int]] = 8, batch: int = 1, image=IMAGE
) -> list[torch.Tensor]:
    """Random feature maps of an ``image``-sized input; ``strides`` is an output stride (8, 16, 32) or a list."""
    strides = STRIDES[strides] if isinstance(strides, int) else strides
    return [torch.randn(batch, c, -(-image[0] // s), -(-image[1] // s)) for c, s in zip(channels, strides)]


def random_gamma(*modules: torch.nn.Module) -> None:
    """Non-zero ``gamma`` (initialised to 0), so that the attention contributes to the outputs."""
    for m in modules:
        torch.nn.init.uniform_(m.gamma, 0.5, 1.5)


def assert_trains_and_evaluates(head: torch.nn.Module, features: list[torch.Tensor], out: dict) -> None:
    """Every parameter of ``head`` gets a gradient from its outputs ``out``; in eval mode it is deterministic."""
    sum(o.square().mean() for o in out.values()).backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient: {missing}"
    head.eval()
    with torch.no_grad():
        first, second = head(features), head(features)
    assert torch.equal(first["out"], second["out"])  # eval mode: no dropout, BN running stats
