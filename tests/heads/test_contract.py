"""The head contract (``attnseg.heads.base.SegHead``), checked once for every head: named outputs with a loss weight
each, class logits of the right shape, embeddings left alone, training (a gradient for every parameter) and
evaluation (deterministic), odd input sizes, batch sizes, and one ``attention_maps`` API."""

from __future__ import annotations

import pytest
import torch

from attnseg.encoder import Encoder
from attnseg.heads import ASPPHead, CCNetHead, DANetHead, DFNHead, FCNHead, FLANetHead, PSPHead, SegHead
from attnseg.model import SegmentationModel
from tests.helpers.head_checks import CHANNELS, IMAGE, assert_trains_and_evaluates, fake_features

# every head with every output it can have switched on, narrow for speed
HEADS = {
    "fcn": lambda c, k: FCNHead(c, k),
    "danet": lambda c, k: DANetHead(c, k),
    "ccnet": lambda c, k: CCNetHead(c, k, fuse_channels=32, ccl=True, ccl_dim=6),
    "flanet": lambda c, k: FLANetHead(c, k, channels=32),
    "dfn": lambda c, k: DFNHead(c, k, channels=16, border_channels=5, dropout=0.1, aux=True),
    "deeplabv3": lambda c, k: ASPPHead(c, k, channels=16),
    "pspnet": lambda c, k: PSPHead(c, k, channels=16),
}
ATTENTION = {"fcn": set(), "danet": {"pam", "cam"}, "ccnet": {"step1", "step2"}, "flanet": {"column", "row"},
             "dfn": {"stage1", "stage2", "stage3", "out"}, "deeplabv3": set(), "pspnet": set()}  # fmt: skip


def nonzero_gamma(head: torch.nn.Module) -> None:
    """Attention modules start as the identity (gamma = 0); open them so that every parameter matters."""
    for name, p in head.named_parameters():
        if name.endswith("gamma"):
            torch.nn.init.uniform_(p, 0.5, 1.5)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("encoder", sorted(CHANNELS))
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_outputs_losses_shapes_training_and_evaluation(name, encoder, output_stride):
    channels, k = CHANNELS[encoder], 4
    head = HEADS[name](channels, k)
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
    assert_trains_and_evaluates(head, features, out)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_attention_maps_is_one_api(name):
    head = HEADS[name](CHANNELS["resnet50/16"], 3).eval()
    maps = head.attention_maps(fake_features(CHANNELS["resnet50/16"], batch=2))
    assert isinstance(maps, dict) and set(maps) == ATTENTION[name]
    assert all(isinstance(m, torch.Tensor) and m.shape[0] == 2 and torch.isfinite(m).all() for m in maps.values())


@pytest.mark.parametrize("name", sorted(HEADS))
def test_in_a_real_model_at_odd_size_batch_one(name):
    head = HEADS[name]([64, 128, 256, 512], 5)
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


def test_a_model_refuses_a_head_outside_the_contract():
    with pytest.raises(TypeError, match="model.head: Conv2d is not an attnseg.heads.SegHead"):
        SegmentationModel(Encoder("resnet18", output_stride=8), torch.nn.Conv2d(512, 3, 1))
