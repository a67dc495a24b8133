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
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from attnseg.heads.base import AuxHead, QKVAttention, SegClassifier, SegHead
from attnseg.losses import CategoryConsistencyLoss
from attnseg.precision import bf16_autocast, bf16_products, full_precision


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format, to return the result in."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _lines(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) contiguous (a view of a channels-last tensor): every row and every column of an
    image is then a matrix with unit-stride channels, which the batched matrix products read without copies."""
    return t.permute(0, 2, 3, 1).contiguous()


def _energies(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dot products along columns and rows of Q, K (B, H, W, C'): ``column[b, w, h, g] = Q[b, h, w] . K[b, g, w]``
    (B, W, H, H) and ``row[b, h, w, v] = Q[b, h, w] . K[b, h, v]`` (B, H, W, W), in fp32."""
    b, h, w, _ = q.shape
    column, row = q.new_empty(b, w, h, h, dtype=torch.float32), q.new_empty(b, h, w, w, dtype=torch.float32)
    for i in range(b):  # one image at a time: its columns and rows are batches of strided views, not copies
        torch.bmm(q[i].transpose(0, 1), k[i].permute(1, 2, 0), out=column[i])
        torch.bmm(q[i], k[i].transpose(1, 2), out=row[i])
    return column, row


def _softmax(column: torch.Tensor, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One softmax over each position's column and row energies together, in place; the centre is counted once,
    in the row (its column entry weighs 0)."""
    column.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    top = torch.maximum(column.amax(-1).transpose(1, 2), row.amax(-1))  # (B, H, W)
    column.sub_(top.transpose(1, 2)[..., None]).exp_()
    row.sub_(top[..., None]).exp_()
    total = column.sum(-1).transpose(1, 2) + row.sum(-1)
    return column.div_(total.transpose(1, 2)[..., None]), row.div_(total[..., None])


def _along_lines(column: torch.Tensor, row: torch.Tensor, t: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Sums of ``t`` (B, H, W, C) along columns and rows weighted by ``column`` (B, W, H, H), ``row`` (B, H, W, W):
    ``out[h, w] = sum_g column[w, h, g] t[g, w] + sum_v row[h, w, v] t[h, v]`` (each position gathers from its
    column and row), or with ``transpose`` its adjoint (each position spreads ``t`` over its column and row).
    Products in ``t``'s dtype (each sum accumulated in fp32, rounded once), the result in fp32."""
    out = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    for i in range(t.shape[0]):
        c, r = (column[i].transpose(1, 2), row[i].transpose(1, 2)) if transpose else (column[i], row[i])
        out[i] = torch.bmm(r, t[i])
        out[i].add_(torch.bmm(c, t[i].transpose(0, 1)).transpose(0, 1))
    return out


def _aggregate(column, row, t, transpose: bool, fast: bool) -> torch.Tensor:
    """``_along_lines`` of the attention and values (or output gradients): on the fast path from bf16 weights and
    values, as flash attention does; otherwise in fp32."""
    if fast:
        column, row, t = column.to(torch.bfloat16), row.to(torch.bfloat16), t.to(torch.bfloat16)
    return _along_lines(column, row, t, transpose)


class _CrissCrossFunction(torch.autograd.Function):
    """``x + gamma * out`` with ``out`` the criss-cross attention of Q, K, V, all given as lines (B, H, W, C), with
    a hand-written backward.

    Only Q, K, V and the attention (column (B, W, H, H) and row (B, H, W, W) weights) are saved; gamma's gradient
    comes from the attention's gradient (``sum(dL/dy * out) = sum(A * dL/dA)``), every other buffer is freed as
    soon as it is used, and every product reads rows and columns as strided views (no transposed copies).
    Energies, softmax and their gradients in fp32; with ``fast`` (bf16 autocast) products take bf16-rounded
    operands with fp32 accumulation.
    """

    @staticmethod
    def forward(ctx, x, q, k, v, gamma, fast: bool):
        out, column, row = _CrissCrossFunction.compute(x, q, k, v, gamma, fast)
        ctx.save_for_backward(q, k, v, column, row, gamma)
        ctx.fast = fast
        return out

    @staticmethod
    def compute(x, q, k, v, gamma, fast: bool):
        """The forward's output and attention, as plain tensor operations (what inference and export run)."""
        with bf16_products(fast):
            column, row = _softmax(*_energies(q, k))
        return torch.addcmul(x, gamma, _aggregate(column, row, v, False, fast)), column, row

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, k, v, column, row, gamma = ctx.saved_tensors
        with full_precision(q), bf16_products(ctx.fast):
            dy = grad_y.float().contiguous()
            grad_column, grad_row = _energies(dy, v.float())  # dL/dA / gamma
            weighted = (grad_column * column).sum(-1).transpose(1, 2) + (grad_row * row).sum(-1)  # (B, H, W)
            grad_gamma = weighted.sum().reshape(gamma.shape)
            # softmax backward, in place: dE = A * (dA - sum(A * dA)); the masked centre has A = 0, so dE = 0 there
            grad_column.sub_(weighted.transpose(1, 2)[..., None]).mul_(column).mul_(gamma)
            grad_row.sub_(weighted[..., None]).mul_(row).mul_(gamma)
            grad_v = _aggregate(column, row, dy, True, ctx.fast).mul_(gamma)
            grad_q = _along_lines(grad_column, grad_row, k, False)
            grad_k = _along_lines(grad_column, grad_row, q, True)
        return dy, grad_q, grad_k, grad_v, grad_gamma, None


class CrissCrossAttention(QKVAttention):
    """Criss-cross attention: every position attends to the H + W - 1 positions of its row and column.

    ``energy_u,i = Q_u . K_i`` for the positions ``i`` on the column and row of ``u`` (the centre once: it is
    masked out of the column), one softmax over the column and row together, ``out = gamma * sum_i A_u,i V_i + x``.
    Energies are (B, W, H, H) for the columns and (B, H, W, W) for the rows, so memory is O(N (H + W)), never
    O(N^2). Energies, softmax and aggregation in fp32 (autocast off); the output has the input's dtype. Under bf16
    autocast the products take bf16 operands with fp32 accumulation (``bf16_products`` for the energies and
    their gradients, bf16 weights and values for the aggregation); softmax and the residual stay fp32.

    The attention runs in ``_CrissCrossFunction`` on Q, K, V laid out as lines (B, H, W, C), free for a
    channels-last input: it saves only Q, K, V and the attention for its backward and multiplies rows and
    columns in place, without the transposed copies that einsum makes (see docs/benchmarks.md).

    Args:
        in_channels: channels C of the input (and of the value projection).
        key_channels: channels of the query and key projections; default ``in_channels // 8``.
    """

    def _projections(self, lines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V as lines (B, H, W, C'), from the input as lines (B, H, W, C): the 1x1 convs as matrix products
        over the channels, which keep the lines layout."""
        return tuple(F.linear(lines, p.weight.flatten(1), p.bias) for p in (self.query, self.key, self.value))

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention (B, H, W, H + W) in fp32: ``[..., :H]`` over the column (the centre weighs 0 there),
        ``[..., H:]`` over the row (the centre included)."""
        q, k, _ = self._projections(_lines(x))
        with full_precision(x):
            column, row = _softmax(*_energies(q.float(), k.float()))
            return torch.cat([column.transpose(1, 2), row], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast, layout = bf16_autocast(x), _memory_format(x)
        lines = _lines(x)  # a view of a channels-last input; one copy of any other
        q, k, v = self._projections(lines)
        with full_precision(x):
            # fp32 queries and keys for fp32 energies; on the fast path the values stay bf16 (the products' dtype)
            q, k, v = q.float(), k.float(), v.to(torch.bfloat16 if fast else torch.float32)
            if torch.is_grad_enabled():
                out = _CrissCrossFunction.apply(lines.float(), q, k, v, self.gamma, fast).to(x.dtype)
            else:  # no backward to prepare: plain operations (exportable)
                out = _CrissCrossFunction.compute(lines.float(), q, k, v, self.gamma, fast)[0].to(x.dtype)
        return out.permute(0, 3, 1, 2).contiguous(memory_format=layout)

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


class CrissCrossAttention3D(QKVAttention):
    """3D criss-cross attention over a clip (CCNet, TPAMI 2020, section 3.5): every position attends to the
    T + H + W - 2 positions that share its row and frame, its column and frame, or its (row, column) in the other
    frames; applied R times with shared weights it reaches the whole clip.

    Input and output (B, C, T, H, W). ``energy_u,i = Q_u . K_i`` over those positions (the centre once: it is
    masked out of the column and the time line), one softmax over all of them, ``out = gamma * sum_i A_u,i V_i +
    x``. Q, K, V are the 1x1 projections of every frame (the same ``query``, ``key``, ``value`` convs as the 2D
    module, so their weights carry over). Energies are (B, T, H, W, W) along rows, (B, T, H, W, H) along columns
    and (B, T, H, W, T) along time: memory is O(THW (T + H + W)), never (THW)^2. Computed in fp32 (autocast off);
    the output has the input's dtype.

    Args:
        in_channels: channels C of the input (and of the value projection).
        key_channels: channels of the query and key projections; default ``in_channels // 8``.
    """

    def _lines(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V as (B, T, H, W, C'): each frame through the 1x1 projections."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        projections = (self.query, self.key, self.value)
        return tuple(p(frames).float().reshape(b, t, -1, h, w).permute(0, 1, 3, 4, 2) for p in projections)

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention along rows (B, T, H, W, W), columns (B, T, H, W, H) and time (B, T, H, W, T), one softmax."""
        t, h = q.shape[1], q.shape[2]
        row = torch.einsum("bthwc,bthvc->bthwv", q, k)
        column = torch.einsum("bthwc,btgwc->bthwg", q, k)
        column = column.masked_fill(torch.eye(h, dtype=torch.bool, device=q.device)[None, None, :, None], float("-inf"))
        time = torch.einsum("bthwc,bshwc->bthws", q, k)
        time = time.masked_fill(torch.eye(t, dtype=torch.bool, device=q.device)[None, :, None, None], float("-inf"))
        weights = torch.softmax(torch.cat([row, column, time], dim=-1), dim=-1)
        return weights.split([row.shape[-1], h, t], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._lines(x)
        with full_precision(x):
            row, column, time = self._weights(q, k)
            out = (
                torch.einsum("bthwv,bthvc->bthwc", row, v)
                + torch.einsum("bthwg,btgwc->bthwc", column, v)
                + torch.einsum("bthws,bshwc->bthwc", time, v)
            )
            return (x.float() + self.gamma * out.permute(0, 4, 1, 2, 3)).to(x.dtype)

    @torch.no_grad()
    def pixel_attention(self, x: torch.Tensor, frame: int, row: int, col: int) -> torch.Tensor:
        """The weights of position (frame, row, col) as a clip (B, T, H, W): non-zero on its row and column in its
        frame and on its (row, col) in the other frames; they sum to 1."""
        q, k, _ = self._lines(x)
        with full_precision(x):
            w_row, w_col, w_time = (a[:, frame, row, col] for a in self._weights(q, k))
        b, _, t, h, w = x.shape
        clip = x.new_zeros(b, t, h, w, dtype=torch.float32)
        clip[:, frame, row, :] += w_row
        clip[:, frame, :, col] += w_col
        clip[:, :, row, col] += w_time
        return clip


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
        frames: 1 for images; the clip length T for video, whose batches hold clips of T consecutive frames
            (frames folded into the batch: the encoder and every other layer run per frame, the loss and metrics
            score frames): the attention is then ``CrissCrossAttention3D`` across each clip.
    """

    @classmethod
    def switches(cls, options: dict) -> list[str]:
        frames = int(options.get("frames", 1))
        return [f"r{options.get('recurrence', 2)}", *([f"t{frames}"] if frames > 1 else [])]

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
        frames: int = 1,
    ) -> None:
        super().__init__()
        if recurrence < 0:
            raise ValueError(f"CCNetHead: recurrence={recurrence}, expected 0 (no attention) or more")
        if frames < 1:
            raise ValueError(f"CCNetHead: frames={frames}, expected 1 (images) or the clip length (video)")
        if ccl and ccl_dim < 1:
            raise ValueError(f"CCNetHead: ccl_dim={ccl_dim}, expected 1 or more")
        c_in = in_channels[-1]
        channels = channels or max(1, c_in // 4)
        self.recurrence, self.frames = recurrence, frames
        self.reduce = ConvNormAct(c_in, channels, kernel_size=3)
        attention = CrissCrossAttention if frames == 1 else CrissCrossAttention3D
        self.cca = attention(channels, key_channels) if recurrence else None
        self.project = ConvNormAct(channels, channels, kernel_size=3)
        self.fuse = ConvNormAct(c_in + channels, fuse_channels, kernel_size=3)
        self.cls = SegClassifier(fuse_channels, num_classes, dropout)
        self.ccl = nn.Conv2d(channels, ccl_dim, kernel_size=1) if ccl else None
        self.aux = AuxHead(in_channels[-2], num_classes, dropout=dropout) if aux else None
        self.loss_weights = {"out": 1.0, **({"ccl": 1.0} if ccl else {}), **({"aux": 0.4} if aux else {})}
        if ccl:
            self.output_losses["ccl"] = CategoryConsistencyLoss(delta_v=ccl_delta_v, delta_d=ccl_delta_d)
            self.embeddings = ("ccl",)

    def _attend(self, y: torch.Tensor) -> torch.Tensor:
        """``recurrence`` steps of criss-cross attention; with ``frames`` > 1 the batch holds clips of that many
        consecutive frames, which attend across each other (3D criss-cross) and come back frame by frame."""
        if self.frames == 1:
            for _ in range(self.recurrence):
                y = self.cca(y)
            return y
        n, c, h, w = y.shape
        if n % self.frames:
            raise ValueError(f"CCNetHead: a batch of {n} frames is not a whole number of {self.frames}-frame clips")
        clip = y.reshape(n // self.frames, self.frames, c, h, w).transpose(1, 2)  # (B, C, T, h, w)
        for _ in range(self.recurrence):
            clip = self.cca(clip)
        return clip.transpose(1, 2).reshape(n, c, h, w)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[-1]
        y = self._attend(self.reduce(x))
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
        (empty without attention, and for clips: see ``CrissCrossAttention3D.pixel_attention``); see
        ``CrissCrossAttention.attention_map``."""
        if self.frames > 1:
            return {}
        y, maps = self.reduce(features[-1]), {}
        for step in range(1, self.recurrence + 1):
            maps[f"step{step}"] = self.cca.attention_map(y)
            y = self.cca(y)
        return maps
