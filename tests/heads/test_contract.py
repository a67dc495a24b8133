"""The head contract (``attnseg.heads.base.SegHead``), checked once for every head the project ships, found from
``configs/model/*.yaml`` (``attnseg.heads.head_configs``): named outputs with a loss weight each, class logits of the
right shape, embeddings left alone, training (a gradient for every parameter) and evaluation (deterministic), odd
input sizes, batch sizes, and one ``attention_maps`` API. Each head runs small with every output switched on
(``tests.helpers.head_checks.small_with_every_output``)."""

from __future__ import annotations

import pytest
import torch

from attnseg.encoder import Encoder
from attnseg.heads import head_configs
from attnseg.model import SegmentationModel
from tests.helpers.head_checks import CHANNELS, check_contract, check_in_a_real_model

HEADS = head_configs()


def test_every_shipped_head_class_has_its_config():
    import attnseg.heads as heads
    from attnseg.heads import SegHead

    classes = {c for c in vars(heads).values() if isinstance(c, type) and issubclass(c, SegHead) and c is not SegHead}
    assert classes == {config.cls for config in HEADS.values()}, "a head without a config in configs/model/"


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("encoder", sorted(CHANNELS))
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_outputs_losses_shapes_training_and_evaluation(name, encoder, output_stride):
    check_contract(HEADS[name], encoder, output_stride)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEADS))
def test_in_a_real_model_at_odd_size_batch_one(name):
    check_in_a_real_model(HEADS[name])


def test_a_model_refuses_a_head_outside_the_contract():
    with pytest.raises(TypeError, match="model.head: Conv2d is not an attnseg.heads.SegHead"):
        SegmentationModel(Encoder("resnet18", output_stride=8), torch.nn.Conv2d(512, 3, 1))
