"""DANet: position and channel attention in two parallel branches on the deepest feature.

Fu et al., "Dual Attention Network for Scene Segmentation" (CVPR 2019). The head follows the
official code (github.com/junfu1115/DANet, ``DANetHead``): each branch is a 3x3 conv-BN-ReLU to
``C_in / 4`` channels, an attention module and another 3x3 conv-BN-ReLU; the branches are summed
and classified (``out``), and each branch is also classified on its own (``pam``, ``cam``).

    x (B, C_in, H, W) ─┬─ conv ─ PositionAttention ─ conv ─┬─ classifier ─► pam
                       │                                   + ─ classifier ─► out
                       └─ conv ─ ChannelAttention ── conv ─┴─ classifier ─► cam

Switching a module off (``pam=false`` / ``cam=false``) replaces only that module by the identity: the
branch, its convs, its side output and loss term stay, so ablation variants differ in the module alone.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from attnseg.heads.base import NameWord, QKVAttention, SegClassifier, SegHead, branch_channels
from attnseg.ops import channel_attention, channel_weights, query_block_attention, shared_key_heads
from attnseg.precision import bf16_autocast, full_precision


class PositionAttention(QKVAttention):
    """Position attention module (PAM): every position attends to every position.

    ``energy = Q^T K`` (no scaling), ``S = softmax(energy)`` over the keys, ``out = gamma * (V S^T) + x``
    with ``Q, K`` 1x1 projections to ``key_channels`` and ``V`` a 1x1 projection to ``in_channels``.

    The (N, N) attention map is never held, forward or backward:
        - on CUDA ``scaled_dot_product_attention(..., scale=1.0)`` runs a fused kernel (memory-efficient, which
          accepts a value width different from the key width);
        - on other devices an exact kernel over blocks of queries (``attnseg.ops.query_block_attention``): energies of
          ``~2^20 / N`` queries at a time, the backward recomputing each block's attention from the saved
          log-sum-exp. On the CPU it is faster than the naive formula and than SDPA's CPU flash kernel (which
          needs Q and K zero-padded to the value width, 8x the energy FLOPs at ``key_channels = C / 8``), and
          its peak memory is a few blocks; see docs/benchmarks.md.
    Energies, softmax and aggregation are fp32 (autocast off, fp32 copies of Q, K, V); the output has the
    input's dtype.

    Under bf16 autocast (``bf16-mixed``) the module takes the fast path instead: Q, K, V stay bf16 and
    ``scaled_dot_product_attention`` runs a flash kernel (fp32 accumulation, softmax statistics in fp32, the
    (N, N) map never held). The CPU's flash kernel wants equal query and value widths, so Q and K are
    zero-padded to C channels (zero channels add nothing to any energy). On CUDA, whose flash kernels take head
    dimensions up to 256, V's channels are split into heads of the key width that all share Q and K
    (``attnseg.ops.shared_key_heads``: the same softmax for every head, so the same result). The residual sum is
    fp32.

    Args:
        in_channels: channels C of the input (and of the value projection).
        key_channels: channels of the query and key projections; default ``in_channels // 8``.
    """

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K (B, C', N) and V (B, C, N) in fp32."""
        return tuple(t.flatten(2) for t in self.qkv(x))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``V S^T`` (B, C, N) from Q, K (B, C', N) and V (B, C, N), in fp32."""
        if q.device.type == "cuda":  # fused kernels want unit-stride channels: (B, 1, N, C) contiguous
            q, k, v = (t.transpose(1, 2).contiguous()[:, None] for t in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0].transpose(1, 2)
        return query_block_attention(q, k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bf16_autocast(x):
            out = self._attend_bf16(x)
        else:
            with full_precision(x):
                out = self._attend(*self._qkv(x))
        with full_precision(x):
            return torch.addcmul(x.float(), self.gamma, out.reshape(x.shape).float()).to(x.dtype)  # x + gamma * out

    def _attend_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """``V S^T`` (B, N, C) in bf16 from the bf16 projections, by a flash kernel (fp32 accumulation)."""
        q, k, v = (p(x).to(torch.bfloat16).flatten(2).transpose(1, 2) for p in (self.query, self.key, self.value))
        if q.device.type == "cuda":  # heads of the key width: within the CUDA flash kernels' head dimension
            out = shared_key_heads(q.contiguous(), k.contiguous(), v.contiguous())
            if out is not None:
                return out.transpose(1, 2)
        if q.device.type == "cpu" and q.shape[-1] != v.shape[-1]:
            q, k = (F.pad(t, (0, v.shape[-1] - t.shape[-1])) for t in (q, k))
        q, k, v = (t.contiguous()[:, None] for t in (q, k, v))  # (B, 1, N, C): one head
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0]  # (B, N, C)
        return out.transpose(1, 2)

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The attention S (B, N, N), computed naively: row ``i`` is how position ``i`` (row-major
        ``i = y * W + x``) weighs every position; reshape a row to (H, W) to show it as an image."""
        q, k, _ = self._qkv(x)
        with full_precision(x):
            return torch.softmax(q.transpose(1, 2) @ k, dim=-1)


class ChannelAttention(nn.Module):
    """Channel attention module (CAM): every channel attends to every channel.

    ``energy = A A^T`` (C, C) with A the input reshaped to (C, N); ``X = softmax(max(energy) - energy)``
    (``energy="max_minus"``, the official code: the row maximum minus the energy) or ``softmax(energy)``
    (``energy="plain"``, the paper's formula); ``out = gamma * (X A) + A``. Energies and softmax in fp32.

    The attention runs in ``attnseg.ops.channel_attention``: the residual and gamma fused, five (C, C, N) matrix
    products for forward and backward instead of autograd's six, and weights below 1.2e-38 set to 0
    (``attnseg.ops.flushed_softmax``; the official energy makes rows so peaked that subnormal weights would slow every
    product that uses the map by an order of magnitude on CPUs); see docs/benchmarks.md. Under bf16 autocast the
    products take bf16-rounded operands with fp32 accumulation and results (``bf16_products``); energies, softmax
    and the residual stay fp32.

    Args:
        energy: ``max_minus`` or ``plain``.
    """

    def __init__(self, energy: Literal["max_minus", "plain"] = "max_minus") -> None:
        super().__init__()
        if energy not in ("max_minus", "plain"):
            raise ValueError(f"ChannelAttention: energy={energy!r}, expected 'max_minus' or 'plain'")
        self.energy = energy
        self.gamma = nn.Parameter(torch.zeros(1))

    def _attention(self, a: torch.Tensor) -> torch.Tensor:
        """Softmax attention (B, C, C) of ``a`` (B, C, N) in fp32."""
        return channel_weights(a, self.energy == "max_minus")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, fast = x.flatten(2).float().contiguous(), bf16_autocast(x)  # (B, C, N), channels-last input copied
        with full_precision(x):
            out = channel_attention(a, self.gamma, self.energy == "max_minus", fast)
            return out.view(x.shape).to(x.dtype)

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The attention X (B, C, C): row ``i`` is how channel ``i`` weighs every channel."""
        with full_precision(x):
            return self._attention(x.flatten(2).float())

    def extra_repr(self) -> str:
        return f"energy={self.energy!r}"


class AttentionBranch(nn.Module):
    """3x3 conv-BN-ReLU to ``channels``, an attention module (identity for the plain branch), 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, channels: int, attention: nn.Module) -> None:
        super().__init__()
        self.reduce = ConvNormAct(in_channels, channels, kernel_size=3)
        self.attention = attention
        self.project = ConvNormAct(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.attention(self.reduce(x)))


class DANetHead(SegHead):
    """DANet head on the deepest feature, plus the auxiliary FCN head on the stage before last.

    Outputs (each with loss weight 1, ``aux`` 0.4): ``out`` classifies the sum of the two branches; ``pam`` and
    ``cam`` classify their branch alone (the official code's side outputs).

    The switches are fair for ablations: ``pam=false`` (``cam=false``) keeps the position (channel) branch, its
    two 3x3 conv-BN-ReLU layers, its side classifier and its ``pam`` (``cam``) loss term, and only replaces the
    attention module inside it by the identity. So every point of the 2 x 2 grid has the same convolutions,
    classifiers, outputs and loss weights; two points differ only in the attention modules' parameters (PAM's
    query, key, value and gamma; CAM's gamma) and in what those modules compute. With both off the head is two
    plain conv branches, summed and classified, with the same side outputs.

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep.
        num_classes: number of classes K.
        pam: run position attention in the position branch (off: the branch without it).
        cam: run channel attention in the channel branch (off: the branch without it).
        channels: width of the branches; default ``in_channels[-1] // 4`` (512 for ResNet-50/101).
        key_channels: query/key width of the position attention; default ``channels // 8``.
        cam_energy: ``max_minus`` (official code) or ``plain``; see ``ChannelAttention``.
        dropout: Dropout2d probability before each classifier.
        aux: add the auxiliary head (output ``aux``, loss weight 0.4) on ``in_channels[-2]``.
    """

    name_words = (NameWord("pam", "pam"), NameWord("cam", "cam"))
    name_if_no_words = "off"

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        pam: bool = True,
        cam: bool = True,
        channels: Optional[int] = None,
        key_channels: Optional[int] = None,
        cam_energy: Literal["max_minus", "plain"] = "max_minus",
        dropout: float = 0.1,
        aux: bool = True,
    ) -> None:
        super().__init__()
        c_in = in_channels[-1]
        channels = branch_channels(in_channels, channels)
        attention = {
            "pam": PositionAttention(channels, key_channels) if pam else nn.Identity(),
            "cam": ChannelAttention(cam_energy) if cam else nn.Identity(),
        }
        self.branches = nn.ModuleDict({name: AttentionBranch(c_in, channels, m) for name, m in attention.items()})
        self.cls = SegClassifier(channels, num_classes, dropout)
        self.branch_cls = nn.ModuleDict({name: SegClassifier(channels, num_classes, dropout) for name in attention})
        self.loss_weights = {"out": 1.0, "pam": 1.0, "cam": 1.0}
        self.add_aux(aux, in_channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[-1]
        branch_features = {name: branch(x) for name, branch in self.branches.items()}
        outputs = {"out": self.cls(sum(branch_features.values()))}
        for name, cls in self.branch_cls.items():
            outputs[name] = cls(branch_features[name])
        return self.with_aux(features, outputs)

    @torch.no_grad()
    def attention_maps(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Attention maps of the modules switched on, for ``features``: ``pam`` (B, N, N) over the deepest feature's
        N = h * w positions (row-major), ``cam`` (B, C, C) over the branch channels."""
        x = features[-1]
        return {
            name: b.attention.attention_map(b.reduce(x))
            for name, b in self.branches.items()
            if not isinstance(b.attention, nn.Identity)
        }
