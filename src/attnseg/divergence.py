"""The divergence guard of a fit: what a non-finite or exploding training loss does, and no model with NaN or inf in
it trained on or saved. ``SegmentationTask`` holds one (``model.nonfinite_loss``, ``model.divergence_factor``).

- A step whose loss is NaN or infinite stops training with a message naming the step and the loss terms (``raise``),
  or is skipped with the batch norm statistics its forward changed put back (``skip``, single process); with
  ``skip`` a forward that leaves a batch norm statistic non-finite, though its loss is finite, is skipped too.
- A loss above ``factor`` times the first step's loss of the fit stops training as diverged.
- Before each validation every parameter and buffer must be finite, and no checkpoint with a non-finite tensor is
  written (it would load as the best).
Every stop keeps the checkpoints written so far.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import nn

ADVICE = "Lower model.lr or set trainer.gradient_clip_val"


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding NaN or inf."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


class DivergenceGuard:
    """See the module's docstring. ``skip`` applies in a single process only (``active_skip``)."""

    def __init__(self, nonfinite_loss: Literal["raise", "skip"] = "raise", factor: Optional[float] = 1000.0) -> None:
        self.nonfinite_loss = nonfinite_loss
        self.factor = factor
        self.first_loss: Optional[float] = None  # the reference of ``factor``

    def statistics(self, model: nn.Module, skipping: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The model's floating-point buffers with a copy of each, to put back if the step is skipped ([] when not
        skipping)."""
        return [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()] if skipping else []

    def check_step(
        self,
        terms: dict[str, torch.Tensor],
        saved: list[tuple[torch.Tensor, torch.Tensor]],
        skipping: bool,
        step: int,
        epoch: int,
    ) -> Optional[str]:
        """A training step's loss terms checked: None if the step goes on, a warning if it is skipped (its
        statistics put back from ``saved``); a FloatingPointError when training must stop."""
        value = float(sum(terms.values()).detach())
        # a forward can overflow a batch norm's running variance while its loss stays finite (an activation too large
        # to square in fp32 is normalised to 0): with skip, such a step is skipped too
        statistics_broken = bool(saved) and not bool(torch.stack([torch.isfinite(b).all() for b, _ in saved]).all())
        if not math.isfinite(value) or statistics_broken:
            detail = ", ".join(f"{name}={float(t.detach()):.4g}" for name, t in terms.items())
            detail += "; non-finite batch norm statistics" if statistics_broken else ""
            if skipping:  # nor do the batch norm statistics of this forward stay
                with torch.no_grad():
                    for buffer, before in saved:
                        buffer.copy_(before)
                what = "loss" if not math.isfinite(value) else "forward"
                return f"non-finite {what} at step {step} ({detail}): step skipped"
            raise FloatingPointError(
                f"non-finite training loss at step {step} (epoch {epoch}): {detail}. Training stopped; the "
                "checkpoints written so far are kept. Lower model.lr, set trainer.gradient_clip_val, or set "
                "model.nonfinite_loss: skip (single process)."
            )
        self._check_divergence(value, step, epoch)
        return None

    def _check_divergence(self, value: float, step: int, epoch: int) -> None:
        """Stop when the loss exceeds ``factor`` times the first step's loss of this fit (the model's loss before
        any update, whatever the learning rate)."""
        if self.factor is None:
            return
        if self.first_loss is None:
            self.first_loss = value
            return
        if value > self.factor * self.first_loss:
            raise FloatingPointError(
                f"training loss {value:.4g} at step {step} (epoch {epoch}) is over {self.factor:g} times the loss of "
                f"the first step ({self.first_loss:.4g}): the run diverged. Training stopped; the checkpoints written "
                f"so far are kept. {ADVICE} (model.divergence_factor: null turns this check off)."
            )

    @staticmethod
    def check_model(model: nn.Module, step: int) -> None:
        """Every parameter and buffer is finite (before a validation, so before any checkpoint of this step)."""
        bad = nonfinite_tensors(dict(model.state_dict()))
        if bad:
            raise FloatingPointError(
                f"{len(bad)} parameter or buffer tensor(s) hold NaN or inf at step {step} (e.g. {', '.join(bad[:3])}):"
                f" the run diverged although its loss stayed finite. Training stopped; the checkpoints written so far "
                f"are kept. {ADVICE}."
            )

    @staticmethod
    def check_checkpoint(checkpoint: dict, step: int) -> None:
        """Never write a model with NaN or inf in it (a diverged run's checkpoint, which would load as best)."""
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise FloatingPointError(
                f"not writing a checkpoint at step {step}: {len(bad)} tensor(s) hold NaN or inf (e.g. "
                f"{', '.join(bad[:3])}); the run diverged. The checkpoints written before are kept."
            )
