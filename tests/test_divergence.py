"""The divergence guard on its own (``attnseg.divergence``); its runs inside a fit are in test_reliability.py and
test_interruption.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnseg.divergence import DivergenceGuard


def terms(*values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(v) for name, v in zip(("out", "aux"), values)}


def test_skip_on_a_model_without_floating_point_buffers():
    guard = DivergenceGuard("skip", factor=None)
    model = nn.Linear(3, 2)  # parameters only
    saved = guard.statistics(model, skipping=True)
    assert saved == []
    assert guard.check_step(terms(1.0, 0.5), saved, True, step=0, epoch=0) is None
    assert "non-finite loss at step 3 (out=nan, aux=0.5): step skipped" == guard.check_step(
        terms(float("nan"), 0.5), saved, True, step=3, epoch=0
    )


def test_skip_puts_back_statistics_that_became_non_finite():
    guard = DivergenceGuard("skip")
    model = nn.BatchNorm2d(2)
    saved = guard.statistics(model, skipping=True)
    model.running_var.fill_(float("inf"))
    message = guard.check_step(terms(1.0, 1.0), saved, True, step=5, epoch=1)
    assert message.startswith("non-finite forward at step 5") and "non-finite batch norm statistics" in message
    assert torch.equal(model.running_var, torch.ones(2))


def test_raise_and_the_divergence_factor():
    guard = DivergenceGuard("raise", factor=10.0)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at step 2 \(epoch 0\): out=inf"):
        guard.check_step(terms(float("inf"), 1.0), [], False, step=2, epoch=0)
    assert guard.check_step(terms(1.0, 1.0), [], False, step=0, epoch=0) is None  # the first step: the reference
    assert guard.check_step(terms(10.0, 9.0), [], False, step=1, epoch=0) is None  # 19 <= 10 x 2
    with pytest.raises(FloatingPointError, match=r"training loss 21 at step 4 .* over 10 times the loss of the first"):
        guard.check_step(terms(11.0, 10.0), [], False, step=4, epoch=0)
