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


def small_with_every_output(config) -> dict:
    """Options on top of a head config (``attnseg.heads.HeadConfig``) that make its head small and switch every
    output on, for the contract test: each boolean option true, each width option (``*channels``) 16."""
    import inspect

    overrides = {}
    for name, parameter in inspect.signature(config.cls).parameters.items():
        value = config.init_args.get(name, parameter.default)
        if isinstance(value, bool):
            overrides[name] = True
        elif name.endswith("channels") and name != "in_channels":
            overrides[name] = 16
    return overrides


def nonzero_gamma(head: torch.nn.Module) -> None:
    """Attention modules start as the identity (gamma = 0); open them so that every parameter matters."""
    for name, p in head.named_parameters():
        if name.endswith("gamma"):
            torch.nn.init.uniform_(p, 0.5, 1.5)


def check_contract(config, encoder: str, output_stride: int) -> None:
    """The head of ``config`` follows ``attnseg.heads.base.SegHead``'s contract on fake ``encoder`` features at
    ``output_stride``: named outputs with a loss weight each, class logits on a feature map's grid, embeddings
    trained by their own loss, a gradient for every parameter, deterministic evaluation, ``attention_maps``."""
    from attnseg.heads import SegHead

    channels, k = CHANNELS[encoder], 4
    head = config.build(channels, k, **small_with_every_output(config))
    assert isinstance(head, SegHead)
    nonzero_gamma(head)
    features = fake_features(channels, output_stride, batch=2)
    out = head(features)

    assert "out" in out and set(out) == set(head.loss_weights), "one loss weight per output, no more"
    assert all(isinstance(w, float) and w >= 0 for w in head.loss_weights.values())
    assert set(head.output_losses) <= set(out) and set(head.embeddings) <= set(head.output_losses)
    sizes = {tuple(f.shape[-2:]) for f in features}
    for output, tensor in out.items():
        assert tensor.shape[0] == 2 and tuple(tensor.shape[-2:]) in sizes, output  # a feature map's grid
        if output not in head.output_losses:  # trained by model.loss (cross-entropy): class logits
            assert tensor.shape[1] == k, output
    maps = head.attention_maps(features)
    assert isinstance(maps, dict) and (maps or type(head).attention_maps is SegHead.attention_maps)
    assert all(isinstance(m, torch.Tensor) and m.shape[0] == 2 and torch.isfinite(m).all() for m in maps.values())
    assert_trains_and_evaluates(head, features, out)


def check_in_a_real_model(config) -> None:
    """The head of ``config`` in a real model (ResNet-18 at output stride 8), batch 1 at an odd image size: logits at
    the image size, embeddings at the feature size, a backward, finite predictions in evaluation."""
    from attnseg.encoder import Encoder
    from attnseg.model import SegmentationModel

    head = config.build([64, 128, 256, 512], 5, **small_with_every_output(config))
    model = SegmentationModel(Encoder("resnet18", output_stride=8), head)
    images = torch.randn(1, 3, *IMAGE)
    out = model(images)
    for output, tensor in out.items():
        if output in head.embeddings:  # not logits: left at the feature resolution
            assert tensor.shape[-2:] == tuple(-(-s // 8) for s in IMAGE), output
        else:
            assert tensor.shape[-2:] == IMAGE, output
    sum(o.mean() for o in out.values()).backward()
    model.eval()
    with torch.no_grad():
        pred = model(images)["out"]
    assert pred.shape == (1, 5, *IMAGE) and torch.isfinite(pred).all()
