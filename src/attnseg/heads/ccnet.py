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

from attnseg.heads.base import NameWord, QKVAttention, SegClassifier, SegHead, branch_channels
from attnseg.losses import CategoryConsistencyLoss
from attnseg.ops import criss_cross, criss_cross_weights, lines, memory_format
from attnseg.precision import bf16_autocast, full_precision


class CrissCrossAttention(QKVAttention):
    """Criss-cross attention: every position attends to the H + W - 1 positions of its row and column.

    ``energy_u,i = Q_u . K_i`` for the positions ``i`` on the column and row of ``u`` (the centre once: it is
    masked out of the column), one softmax over the column and row together, ``out = gamma * sum_i A_u,i V_i + x``.
    Energies are (B, W, H, H) for the columns and (B, H, W, W) for the rows, so memory is O(N (H + W)), never
    O(N^2). Energies, softmax and aggregation in fp32 (autocast off); the output has the input's dtype. Under bf16
    autocast the products take bf16 operands with fp32 accumulation (``bf16_products`` for the energies and
    their gradients, bf16 weights and values for the aggregation); softmax and the residual stay fp32.

    The attention runs in ``attnseg.ops.criss_cross`` on Q, K, V laid out as lines (B, H, W, C), free for a
    channels-last input: it saves only Q, K, V and the attention for its backward and multiplies rows and
    columns in place, without the transposed copies that einsum makes (see docs/benchmarks.md).

    Args:
        in_channels: channels C of the input (and of the value projection).
        key_channels: channels of the query and key projections; default ``in_channels // 8``.
    """

    def _projections(self, x_lines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V as lines (B, H, W, C'), from the input as lines (B, H, W, C): the 1x1 convs as matrix products
        over the channels, which keep the lines layout."""
        return tuple(F.linear(x_lines, p.weight.flatten(1), p.bias) for p in (self.query, self.key, self.value))

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention (B, H, W, H + W) in fp32: ``[..., :H]`` over the column (the centre weighs 0 there),
        ``[..., H:]`` over the row (the centre included)."""
        q, k, _ = self._projections(lines(x))
        with full_precision(x):
            column, row = criss_cross_weights(q, k)
            return torch.cat([column.transpose(1, 2), row], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast, layout = bf16_autocast(x), memory_format(x)
        x_lines = lines(x)  # a view of a channels-last input; one copy of any other
        q, k, v = self._projections(x_lines)
        with full_precision(x):
            # fp32 queries and keys for fp32 energies; on the fast path the values stay bf16 (the products' dtype)
            q, k, v = q.float(), k.float(), v.to(torch.bfloat16 if fast else torch.float32)
            out = criss_cross(x_lines.float(), q, k, v, self.gamma, fast).to(x.dtype)
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
        gamma_init: the starting value of the attention's residual scale ``gamma`` (0 in the paper and by default:
            the module starts as the identity); an ablation knob for how early the attention's output counts.
    """

    name_words = (
        NameWord("recurrence", "r{}"),
        NameWord("frames", "t{}", omit=1),
        NameWord("gamma_init", "g{:g}", omit=0),
    )

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
        gamma_init: float = 0.0,
    ) -> None:
        super().__init__()
        if recurrence < 0:
            raise ValueError(f"CCNetHead: recurrence={recurrence}, expected 0 (no attention) or more")
        if frames < 1:
            raise ValueError(f"CCNetHead: frames={frames}, expected 1 (images) or the clip length (video)")
        if ccl and ccl_dim < 1:
            raise ValueError(f"CCNetHead: ccl_dim={ccl_dim}, expected 1 or more")
        c_in = in_channels[-1]
        channels = branch_channels(in_channels, channels)
        self.recurrence, self.frames = recurrence, frames
        self.reduce = ConvNormAct(c_in, channels, kernel_size=3)
        attention = CrissCrossAttention if frames == 1 else CrissCrossAttention3D
        self.cca = attention(channels, key_channels) if recurrence else None
        if self.cca is not None:
            nn.init.constant_(self.cca.gamma, gamma_init)
        self.project = ConvNormAct(channels, channels, kernel_size=3)
        self.fuse = ConvNormAct(c_in + channels, fuse_channels, kernel_size=3)
        self.cls = SegClassifier(fuse_channels, num_classes, dropout)
        self.ccl = nn.Conv2d(channels, ccl_dim, kernel_size=1) if ccl else None
        self.loss_weights = {"out": 1.0, **({"ccl": 1.0} if ccl else {})}
        self.add_aux(aux, in_channels, num_classes, dropout)
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
        return self.with_aux(features, outputs)

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
