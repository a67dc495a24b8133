"""Segmentation losses. Each takes ``(logits (B, K, H, W), mask (B, H, W))`` and derives any
target it needs from the label map itself.

``DiceLoss``, ``FocalLoss`` and ``LovaszLoss`` wrap the multiclass losses of segmentation-models-pytorch (smp) so
that they share the others' contract: ``ignore_index`` (default ``attnseg.constants.IGNORE_INDEX``) leaves a pixel
out of the value and the gradient, they compute in fp32 (also under bf16 autocast), and a batch without a valid
pixel gives 0, not NaN. ``CrossEntropyPlus`` adds one of them (or any loss of this module) to the cross-entropy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import segmentation_models_pytorch.losses as smp_losses
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from attnseg.constants import IGNORE_INDEX
from attnseg.precision import full_precision


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy averaged over the pixels that are not ``ignore_index``.

    Unlike ``nn.CrossEntropyLoss`` it returns 0 (not NaN) for a batch whose pixels are all ignored.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        class_weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer(
            "class_weight", torch.tensor(class_weight, dtype=torch.float) if class_weight else None, persistent=False
        )

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(
            logits.float(),
            mask,
            weight=self.class_weight,
            ignore_index=self.ignore_index,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        valid = mask != self.ignore_index
        if self.class_weight is None:
            return loss / valid.sum().clamp(min=1)
        return loss / self.class_weight[mask[valid]].sum().clamp(min=1e-12)


class OHEMCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only (online hard example mining).

    A valid pixel is kept if its predicted probability of the true class is below ``thresh``; if fewer than
    ``min_kept`` pixels are, the threshold rises to the ``min_kept``-th smallest probability, so at least
    ``min_kept`` pixels of the batch are kept (all of them if the batch has fewer). This is CCNet's
    ``OhemCrossEntropy2d`` (``min_kept`` counts pixels of the whole batch, whereas mmsegmentation's
    ``OHEMPixelSampler`` counts them per image). The loss is the mean cross-entropy over the kept pixels,
    0 (not NaN) when no pixel is valid. The selection is not differentiated through.

    Args:
        ignore_index: label value excluded from the loss.
        thresh: probability below which a pixel is hard, in (0, 1].
        min_kept: the least number of pixels kept (0: the threshold alone decides).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, thresh: float = 0.7, min_kept: int = 100000) -> None:
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OHEMCrossEntropy: thresh={thresh}, expected a probability in (0, 1]")
        if min_kept < 0:
            raise ValueError(f"OHEMCrossEntropy: min_kept={min_kept}, expected 0 or more")
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = min_kept

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask != self.ignore_index
        target = mask.masked_fill(~valid, 0)
        nll = -F.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]  # (B, H, W)
        with torch.no_grad():
            prob = torch.exp(-nll)
            kept = valid & (prob < self.thresh)
            num_valid = int(valid.sum())
            if self.min_kept > 0 and num_valid > 0:
                kth = prob[valid].kthvalue(min(self.min_kept, num_valid)).values
                kept |= valid & (prob <= kth)
        return (nll * kept).sum() / kept.sum().clamp(min=1)


class CategoryConsistencyLoss(nn.Module):
    """Category consistent loss of CCNet (Huang et al., TPAMI 2020, Sec. 3.4) on projected pixel features.

    For each image, with C the classes present, mu_c the mean feature of class c and N_c its pixel count:

        l_var = 1/|C| sum_c 1/N_c sum_i phi_var(||mu_c - h_i||)           pull pixels to their class mean
        l_dis = 1/(|C|(|C|-1)) sum_{a != b} max(0, 2 delta_d - ||mu_a - mu_b||)^2    push class means apart
        l_reg = 1/|C| sum_c ||mu_c||                                       keep the means near the origin
        phi_var(d) = 0 if d <= delta_v; (d - delta_v)^2 if d <= delta_d; d - delta_d + (delta_d - delta_v)^2 beyond

    loss = alpha l_var + beta l_dis + gamma l_reg, averaged over the images that have a valid pixel (l_dis is 0
    for an image with one class). The paper's values are the defaults. Pixels labelled ``ignore_index`` are left
    out. Class means are computed with ``index_add`` over all (image, class) pairs at once, in fp32.

    Args:
        ignore_index: label value excluded from the loss.
        delta_v: variance margin: pixels closer than this to their class mean are not pulled.
        delta_d: distance margin: class means further apart than ``2 * delta_d`` are not pushed.
        alpha: weight of the variance term.
        beta: weight of the distance term.
        gamma: weight of the regularisation term.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        delta_v: float = 0.5,
        delta_d: float = 1.5,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.001,
    ) -> None:
        super().__init__()
        if not 0.0 <= delta_v < delta_d:
            raise ValueError(
                f"CategoryConsistencyLoss: delta_v={delta_v}, delta_d={delta_d}; expected 0 <= delta_v < delta_d"
            )
        self.ignore_index = ignore_index
        self.delta_v, self.delta_d = delta_v, delta_d
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def phi_var(self, distance: torch.Tensor) -> torch.Tensor:
        """The piece-wise pull: 0 inside delta_v, quadratic up to delta_d, linear beyond."""
        dv, dd = self.delta_v, self.delta_d
        return torch.where(distance > dd, distance - dd + (dd - dv) ** 2, (distance - dv).clamp(min=0) ** 2)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, d = features.shape[:2]
        if mask.shape[0] != b or mask.dim() != 3:
            raise ValueError(
                f"CategoryConsistencyLoss: features are {tuple(features.shape)}, mask is {tuple(mask.shape)}; "
                "expected a (B, H, W) label map for the same batch"
            )
        if features.shape[-2:] != mask.shape[-2:]:  # labels at the embedding's resolution (nearest)
            mask = F.interpolate(mask[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
        labels = mask.reshape(-1)
        valid = labels != self.ignore_index
        if not valid.any():
            return features.sum() * 0.0
        h = features.float().flatten(2).transpose(1, 2).reshape(-1, d)[valid]  # (P, D) valid pixels
        labels = labels[valid]
        image = torch.arange(b, device=mask.device).repeat_interleave(mask[0].numel())[valid]
        span = int(labels.max()) + 1
        pairs, cluster = torch.unique(image * span + labels, return_inverse=True)  # one cluster per (image, class)
        cluster_image = pairs // span  # (M,)
        size = torch.bincount(cluster, minlength=len(pairs)).float()
        mean = h.new_zeros(len(pairs), d).index_add_(0, cluster, h) / size[:, None]  # (M, D)

        pull = self.phi_var((h - mean[cluster]).norm(dim=1))
        var = pull.new_zeros(len(pairs)).index_add_(0, cluster, pull) / size  # (M,) per class
        a, c = torch.triu_indices(len(pairs), len(pairs), offset=1, device=h.device)
        same = cluster_image[a] == cluster_image[c]
        a, c = a[same], c[same]
        push = (2 * self.delta_d - (mean[a] - mean[c]).norm(dim=1)).clamp(min=0) ** 2  # unordered pairs

        classes = torch.bincount(cluster_image, minlength=b).float()  # |C| per image
        present = classes > 0

        def per_image(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return values.new_zeros(b).index_add_(0, index, values)

        l_var = per_image(var, cluster_image) / classes.clamp(min=1)
        l_dis = per_image(push, cluster_image[a]) / (classes * (classes - 1) / 2).clamp(min=1)
        l_reg = per_image(mean.norm(dim=1), cluster_image) / classes.clamp(min=1)
        loss = self.alpha * l_var + self.beta * l_dis + self.gamma * l_reg
        return loss[present].mean()


class BorderFocalLoss(nn.Module):
    """Sigmoid focal loss of one-channel border logits against semantic edges derived from the label map (DFN).

    A valid pixel is an edge (target 1) if its ``edge_width`` x ``edge_width`` neighbourhood holds a pixel of
    another valid class, found with max/min pooling of the labels; otherwise it is 0. Excluded from the loss:
    ``ignore_index`` pixels, and non-edge pixels whose neighbourhood holds an ignored pixel (there the
    neighbourhood only differs because of the unlabelled region, which may hide a class boundary). The focal
    term is ``torchvision.ops.sigmoid_focal_loss`` in fp32, averaged over the pixels kept (0, not NaN, when none).

    DFN's official code marks edges with Canny on the label map (ignored pixels set to 0) dilated by a 7x7
    kernel; here the 7x7 neighbourhood gives a band of 6 pixels along each class boundary, 3 on each side.

    Args:
        ignore_index: label value that is neither edge nor background.
        alpha: weight of the edge pixels (``1 - alpha`` for the others).
        gamma: focusing exponent.
        edge_width: side of the square neighbourhood (odd, 3 or more).
    """

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, alpha: float = 0.25, gamma: float = 2.0, edge_width: int = 7
    ) -> None:
        super().__init__()
        if edge_width < 3 or edge_width % 2 == 0:
            raise ValueError(f"BorderFocalLoss: edge_width={edge_width}, expected an odd number of pixels >= 3")
        self.ignore_index = ignore_index
        self.alpha = alpha
        self.gamma = gamma
        self.edge_width = edge_width

    def edges(self, mask: torch.Tensor) -> torch.Tensor:
        """Edge targets (B, H, W) int64 of a label map (B, H, W): 1 edge, 0 not, ``ignore_index`` excluded."""
        k = self.edge_width
        valid = mask != self.ignore_index
        labels = mask[:, None].float()  # (B, 1, H, W); max pooling pads with -inf, so the image border adds nothing
        highest = F.max_pool2d(labels.masked_fill(~valid[:, None], float("-inf")), k, stride=1, padding=k // 2)
        lowest = -F.max_pool2d(-labels.masked_fill(~valid[:, None], float("inf")), k, stride=1, padding=k // 2)
        near_ignored = F.max_pool2d((~valid[:, None]).float(), k, stride=1, padding=k // 2) > 0
        edge = ((highest > labels) | (lowest < labels))[:, 0] & valid
        excluded = ~valid | (near_ignored[:, 0] & ~edge)
        return edge.long().masked_fill(excluded, self.ignore_index)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1 or logits.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"BorderFocalLoss: logits are {tuple(logits.shape)}, expected (B, 1, H, W) for a mask of "
                f"{tuple(mask.shape)}"
            )
        target = self.edges(mask)
        kept = target != self.ignore_index
        loss = sigmoid_focal_loss(
            logits[:, 0].float(), (target == 1).float(), alpha=self.alpha, gamma=self.gamma, reduction="none"
        )
        return (loss * kept).sum() / kept.sum().clamp(min=1)


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
