"""CCNet: recurrent criss-cross attention on the deepest feature.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation" (ICCV 2019; TPAMI 2020 for the
category consistent loss). The head follows the official code (github.com/speedinghzl/CCNet,
``RCCAModule``) in pure PyTorch, the same code on CPU and GPU:

    x ─ conv ─ CrissCrossAttention x recurrence ─ conv ─┬─ concat(x) ─ conv ─ classifier ─► out
                  (shared weights)                      └─ 1x1 conv (ccl=True) ───────────► ccl
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from timm.layers import ConvNormAct
from torch import nn

from attnseg.heads.base import AuxHead, QKVAttention, SegClassifier, SegHead
from attnseg.losses import CategoryConsistencyLoss


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """A region where autocast is off, for fp32 energies and softmax."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _criss_cross_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention (B, H, W, H + W) from Q, K (B, C', H, W): ``[..., :H]`` over the column (the centre weighs 0 there),
    ``[..., H:]`` over the row (the centre included). One softmax over both, in the inputs' dtype."""
    h = q.shape[-2]
    column = torch.einsum("bchw,bcgw->bhwg", q, k)  # (B, H, W, H): energy of (h, w) with (g, w)
    centre = torch.eye(h, dtype=torch.bool, device=q.device)[:, None, :]  # (H, 1, H): g == h
    column = column.masked_fill_(centre, float("-inf"))
    row = torch.einsum("bchw,bchv->bhwv", q, k)  # (B, H, W, W): energy of (h, w) with (h, v)
    return torch.softmax(torch.cat([column, row], dim=-1), dim=-1)


def _gather(weights: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``out[:, :, h, w] = sum_g weights[:, h, w, g] t[:, :, g, w] + sum_v weights[:, h, w, H + v] t[:, :, h, v]``:
    each position sums ``t`` (B, C, H, W) over its column and row with ``weights`` (B, H, W, H + W)."""
    h = t.shape[-2]
    out = torch.einsum("bhwg,bcgw->bchw", weights[..., :h], t).contiguous()  # the layout the 1x1 convs want
    return out.add_(torch.einsum("bhwv,bchv->bchw", weights[..., h:], t))


def _scatter(weights: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The transpose of ``_gather``: each position spreads ``t`` (B, C, H, W) over its column and row."""
    h = t.shape[-2]
    out = torch.einsum("bhwg,bchw->bcgw", weights[..., :h], t).contiguous()
    return out.add_(torch.einsum("bhwv,bchw->bchv", weights[..., h:], t))


class _CrissCrossFunction(torch.autograd.Function):
    """``x + gamma * _gather(A, V)`` with ``A = softmax(criss-cross energies of Q, K)``, with a hand-written backward.

    Autograd through the einsums would keep the energies, their concatenation, the softmax, the transposed copies
    of V that the aggregation einsums make and the aggregated output (for gamma's gradient); here only Q, K, V and
    the (B, H, W, H + W) attention are saved, gamma's gradient comes from the attention's gradient
    (``sum(dL/dy * out) = sum(A * dL/dA)``), and every other buffer is freed as soon as it is used. Inputs and
    arithmetic in fp32.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor):
        weights = _criss_cross_weights(q, k)
        ctx.save_for_backward(q, k, v, weights, gamma)
        return torch.addcmul(x, gamma, _gather(weights, v))

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, k, v, weights, gamma = ctx.saved_tensors
        with torch.autocast(device_type=q.device.type, enabled=False):
            grad_y = grad_y.to(v.dtype)
            grad_weights = torch.cat(  # dL/dA / gamma, (B, H, W, H + W)
                [torch.einsum("bchw,bcgw->bhwg", grad_y, v), torch.einsum("bchw,bchv->bhwv", grad_y, v)], dim=-1
            )
            weighted = (grad_weights * weights).sum(-1, keepdim=True)  # (B, H, W, 1)
            grad_gamma = weighted.sum().reshape(gamma.shape)
            # softmax backward, in place: dE = A * (dA - sum(A * dA)); the masked centre has A = 0, so dE = 0 there
            grad_energy = grad_weights.sub_(weighted).mul_(weights).mul_(gamma)
            grad_v = _scatter(weights, grad_y).mul_(gamma)
            grad_q = _gather(grad_energy, k)
            grad_k = _scatter(grad_energy, q)
        return grad_y, grad_q, grad_k, grad_v, grad_gamma


class CrissCrossAttention(QKVAttention):
    """Criss-cross attention: every position attends to the H + W - 1 positions of its row and column.

    ``energy_u,i = Q_u . K_i`` for the positions ``i`` on the column and row of ``u`` (the centre once: it is
    masked out of the column), one softmax over the column and row together, ``out = gamma * sum_i A_u,i V_i + x``.
    Energies are (B, H, W, H) for the column and (B, H, W, W) for the row, so memory is O(N (H + W)), never
    O(N^2). Energies, softmax and aggregation in fp32 (autocast off); the output has the input's dtype.

    The attention runs in ``_CrissCrossFunction``, which saves only Q, K, V and the attention for its
    backward: at 97x97 and above it is no slower and smaller than autograd through the same einsums
    (see docs/benchmarks.md).

    Args:
        in_channels: channels C of the input (and of the value projection).
        key_channels: channels of the query and key projections; default ``in_channels // 8``.
    """

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention (B, H, W, H + W) in fp32: ``[..., :H]`` over the column (the centre weighs 0 there),
        ``[..., H:]`` over the row (the centre included)."""
        q, k = self.query(x).float(), self.key(x).float()
        with _full_precision(x):
            return _criss_cross_weights(q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        with _full_precision(x):
            return _CrissCrossFunction.apply(x.float(), q, k, v, self.gamma).to(x.dtype)

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position weights (B, H, W, H + W): ``[:, y, x, :H]`` over column ``x`` (rows 0..H-1, the centre
        0), ``[:, y, x, H:]`` over row ``y`` (columns 0..W-1, the centre included); they sum to 1."""
        return self._attention(x)

    @torch.no_grad()
    def pixel_attention(self, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
        """The weights of position (row, col) as an image (B, H, W): non-zero on its row and column only."""
        h = x.shape[-2]
        weights = self._attention(x)[:, row, col]  # (B, H + W)
        image = weights.new_zeros(x.shape[0], h, x.shape[-1])
        image[:, :, col] = weights[:, :h]
        image[:, row, :] += weights[:, h:]
        return image


class CCNetHead(SegHead):
    """CCNet head on the deepest feature, plus the auxiliary FCN head on the stage before last.

    3x3 conv-BN-ReLU to ``channels`` (C_in / 4), ``CrissCrossAttention`` applied ``recurrence`` times with shared
    weights (0: the baseline without attention), 3x3 conv-BN-ReLU, concatenation with the input feature, 3x3
    conv-BN-ReLU to ``fuse_channels``, dropout and classifier (``out``, weight 1; ``aux``, weight 0.4).

    With ``ccl=True`` a 1x1 conv projects the attention branch's output to ``ccl_dim`` channels (output ``ccl``:
    an embedding (B, ccl_dim, h, w) at the feature resolution, not class logits, so it is neither upsampled nor
    scored; weight 1, trained by ``CategoryConsistencyLoss`` against the labels resized to h x w; the paper projects
    to 16 channels and uses margins 0.5 / 1.5). Its weight is set like any other: ``model.loss_weights: {ccl: 0.5}``.

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep.
        num_classes: number of classes K.
        recurrence: criss-cross attention steps (2 in the paper; 0 for the baseline).
        channels: width of the attention branch, as every head's ``channels``; default ``in_channels[-1] // 4``
            (512 on ResNet-50/101, as in the paper).
        fuse_channels: width of the conv after the concatenation (512 in the paper).
        key_channels: query/key width of the attention; default ``channels // 8``.
        ccl: add the category consistent loss on projected features (output ``ccl``).
        ccl_dim: channels D of the projected features.
        ccl_delta_v: the loss's variance margin delta_v.
        ccl_delta_d: the loss's distance margin delta_d.
        dropout: Dropout2d probability before each classifier.
        aux: add the auxiliary head (output ``aux``, loss weight 0.4) on ``in_channels[-2]``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        recurrence: int = 2,
        channels: Optional[int] = None,
        fuse_channels: int = 512,
        key_channels: Optional[int] = None,
        ccl: bool = False,
        ccl_dim: int = 16,
        ccl_delta_v: float = 0.5,
        ccl_delta_d: float = 1.5,
        dropout: float = 0.1,
        aux: bool = True,
    ) -> None:
        super().__init__()
        if recurrence < 0:
            raise ValueError(f"CCNetHead: recurrence={recurrence}, expected 0 (no attention) or more")
        if ccl and ccl_dim < 1:
            raise ValueError(f"CCNetHead: ccl_dim={ccl_dim}, expected 1 or more")
        c_in = in_channels[-1]
        channels = channels or max(1, c_in // 4)
        self.recurrence = recurrence
        self.reduce = ConvNormAct(c_in, channels, kernel_size=3)
        self.cca = CrissCrossAttention(channels, key_channels) if recurrence else None
        self.project = ConvNormAct(channels, channels, kernel_size=3)
        self.fuse = ConvNormAct(c_in + channels, fuse_channels, kernel_size=3)
        self.cls = SegClassifier(fuse_channels, num_classes, dropout)
        self.ccl = nn.Conv2d(channels, ccl_dim, kernel_size=1) if ccl else None
        self.aux = AuxHead(in_channels[-2], num_classes, dropout=dropout) if aux else None
        self.loss_weights = {"out": 1.0, **({"ccl": 1.0} if ccl else {}), **({"aux": 0.4} if aux else {})}
        if ccl:
            self.output_losses["ccl"] = CategoryConsistencyLoss(delta_v=ccl_delta_v, delta_d=ccl_delta_d)
            self.embeddings = ("ccl",)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[-1]
        y = self.reduce(x)
        for _ in range(self.recurrence):
            y = self.cca(y)
        y = self.project(y)
        outputs = {"out": self.cls(self.fuse(torch.cat([x, y], dim=1)))}
        if self.ccl is not None:
            outputs["ccl"] = self.ccl(y)
        if self.aux is not None:
            outputs["aux"] = self.aux(features[-2])
        return outputs

    @torch.no_grad()
    def attention_maps(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Criss-cross weights (B, h, w, h + w) of each recurrence step for ``features``: ``step1``, ``step2``...
        (empty without attention); see ``CrissCrossAttention.attention_map``."""
        y, maps = self.reduce(features[-1]), {}
        for step in range(1, self.recurrence + 1):
            maps[f"step{step}"] = self.cca.attention_map(y)
            y = self.cca(y)
        return maps
