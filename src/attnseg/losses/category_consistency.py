"""CCNet's category consistency loss on projected features (TPAMI 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.constants import IGNORE_INDEX


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
