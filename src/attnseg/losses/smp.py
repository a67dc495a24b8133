"""segmentation-models-pytorch's Dice, focal and Lovasz losses under the contract of the others (ignore label,
fp32, 0 for a batch without a valid pixel), and cross-entropy plus one of them."""

from __future__ import annotations

from typing import Optional, Sequence

import segmentation_models_pytorch.losses as smp_losses
import torch
from torch import nn

from attnseg.constants import IGNORE_INDEX
from attnseg.losses.cross_entropy import CrossEntropy
from attnseg.precision import full_precision


class _SMPLoss(nn.Module):
    """A multiclass smp loss (``self.criterion``) on fp32 logits, outside autocast; 0 for a batch whose pixels are
    all ``ignore_index`` (with zero gradients) when ``guard_empty``: smp's focal loss gives NaN there and its
    Lovasz loss an empty tensor."""

    guard_empty = True

    def __init__(self, ignore_index: int) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with full_precision(logits):
            logits = logits.float()
            if self.guard_empty and not (mask != self.ignore_index).any():
                return logits.sum() * 0.0
            return self.criterion(logits, mask)


class DiceLoss(_SMPLoss):
    """Soft Dice loss over the softmax (smp's ``DiceLoss`` in multiclass mode).

    Per class c, with p the softmax probability and y the one-hot label over every valid pixel of the batch (the
    whole batch is one set): ``dice_c = (sum(p y) + smooth) / ((sum(p) + sum(y)) / 2 + smooth)``, loss
    ``1 - dice_c`` (``-log dice_c`` with ``log_loss``). Classes without a valid pixel in the batch count as 0 in the
    mean over the K classes (smp's choice), so the value falls as fewer classes are present. smp zeroes the
    probabilities and labels of ignored pixels, so they add nothing and get no gradient; a batch without a valid
    pixel gives 0.

    Args:
        ignore_index: label value excluded from the loss.
        smooth: added to the overlap and to the mean size of each class's score (0: the plain Dice coefficient).
        log_loss: ``-log(dice)`` instead of ``1 - dice``.
        eps: the least denominator.
        class_weight: weights of the per-class terms (a weighted mean over the classes); None: equal.
    """

    guard_empty = False  # without a valid pixel smp masks every class's term to 0 already

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        smooth: float = 0.0,
        log_loss: bool = False,
        eps: float = 1e-7,
        class_weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__(ignore_index)
        self.criterion = smp_losses.DiceLoss(
            smp_losses.MULTICLASS_MODE,
            log_loss=log_loss,
            smooth=smooth,
            ignore_index=ignore_index,
            eps=eps,
            class_weights=list(class_weight) if class_weight else None,
        )


class FocalLoss(_SMPLoss):
    """Focal loss (Lin et al., ICCV 2017) as smp's ``FocalLoss`` computes it in multiclass mode: one-vs-rest, a
    sigmoid focal term per class on that class's logit (not the softmax focal loss), averaged over the valid
    pixels of the batch, then over the classes (weighted by ``class_weight`` if given). smp drops ignored pixels
    before the loss, so they add nothing and get no gradient; a batch without a valid pixel gives 0 (smp: NaN).

    Args:
        ignore_index: label value excluded from the loss.
        alpha: weight of the positive (``1 - alpha`` of the negative) terms; None: no weighting.
        gamma: focusing exponent.
        class_weight: weights of the per-class terms; None: equal.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        alpha: Optional[float] = None,
        gamma: float = 2.0,
        class_weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__(ignore_index)
        self.criterion = smp_losses.FocalLoss(
            smp_losses.MULTICLASS_MODE,
            alpha=alpha,
            gamma=gamma,
            ignore_index=ignore_index,
            class_weights=list(class_weight) if class_weight else None,
        )


class LovaszLoss(_SMPLoss):
    """Lovasz-softmax loss (Berman et al., CVPR 2018), a convex surrogate of the per-class Jaccard loss, as smp's
    ``LovaszLoss`` computes it in multiclass mode: over the softmax of the valid pixels, averaged over the classes
    present among them. smp drops ignored pixels before the loss, so they add nothing and get no gradient.

    Args:
        ignore_index: label value excluded from the loss.
        per_image: one loss per image, averaged over the images that have a valid pixel; otherwise the batch is
            one set of pixels (smp's default). A batch without a valid pixel gives 0 either way.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, per_image: bool = False) -> None:
        super().__init__(ignore_index)
        self.per_image = per_image
        # per image: called here on each image with a valid pixel (smp's own per_image fails on an image without)
        self.criterion = smp_losses.LovaszLoss(smp_losses.MULTICLASS_MODE, per_image=False, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.per_image:
            return super().forward(logits, mask)
        labelled = (mask != self.ignore_index).flatten(1).any(dim=1).tolist()
        losses = []
        for i, has_valid_pixel in enumerate(labelled):
            if has_valid_pixel:
                losses.append(super().forward(logits[i : i + 1], mask[i : i + 1]))
        return torch.stack(losses).mean() if losses else logits.float().sum() * 0.0


class CrossEntropyPlus(nn.Module):
    """``ce_weight * CrossEntropy + loss_weight * loss``: cross-entropy plus a region loss, by default
    ``DiceLoss`` (the usual CE + Dice); any loss of this module works, e.g. ``LovaszLoss`` or ``FocalLoss``.

    Args:
        ignore_index: label value excluded from both terms (the other loss must ignore the same one).
        loss: the second term; None: ``DiceLoss(ignore_index)``.
        ce_weight: weight of the cross-entropy.
        loss_weight: weight of the second term.
        label_smoothing: of the cross-entropy.
        class_weight: class weights of the cross-entropy.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        loss: Optional[nn.Module] = None,
        ce_weight: float = 1.0,
        loss_weight: float = 1.0,
        label_smoothing: float = 0.0,
        class_weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        loss = DiceLoss(ignore_index) if loss is None else loss
        if getattr(loss, "ignore_index", ignore_index) != ignore_index:
            raise ValueError(
                f"CrossEntropyPlus: ignore_index={ignore_index} but its {type(loss).__name__} ignores label "
                f"{loss.ignore_index}; make them agree"
            )
        self.ignore_index = ignore_index
        self.ce = CrossEntropy(ignore_index, label_smoothing=label_smoothing, class_weight=class_weight)
        self.loss = loss
        self.ce_weight = ce_weight
        self.loss_weight = loss_weight

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.ce_weight * self.ce(logits, mask) + self.loss_weight * self.loss(logits, mask)
