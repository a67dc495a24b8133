"""Segmentation losses. Each takes ``(logits (B, K, H, W), mask (B, H, W))`` and derives any
target it needs from the label map itself.

``DiceLoss``, ``FocalLoss`` and ``LovaszLoss`` wrap the multiclass losses of segmentation-models-pytorch (smp) so
that they share the others' contract: ``ignore_index`` (default ``attnseg.constants.IGNORE_INDEX``) leaves a pixel
out of the value and the gradient, they compute in fp32 (also under bf16 autocast), and a batch without a valid
pixel gives 0, not NaN. ``CrossEntropyPlus`` adds one of them (or any loss of this module) to the cross-entropy.
"""

from attnseg.losses.border import BorderFocalLoss
from attnseg.losses.category_consistency import CategoryConsistencyLoss
from attnseg.losses.cross_entropy import CrossEntropy, OHEMCrossEntropy
from attnseg.losses.smp import CrossEntropyPlus, DiceLoss, FocalLoss, LovaszLoss

__all__ = [
    "BorderFocalLoss",
    "CategoryConsistencyLoss",
    "CrossEntropy",
    "CrossEntropyPlus",
    "DiceLoss",
    "FocalLoss",
    "LovaszLoss",
    "OHEMCrossEntropy",
]
