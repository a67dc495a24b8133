"""DANet: position and channel attention in two parallel branches on the deepest feature.

Fu et al., "Dual Attention Network for Scene Segmentation" (CVPR 2019). The head follows the
official code (github.com/junfu1115/DANet, ``DANetHead``): each branch is a 3x3 conv-BN-ReLU to
``C_in / 4`` channels, an attention module and another 3x3 conv-BN-ReLU; the branches are summed
and classified (``out``), and each branch is also classified on its own (``pam``, ``cam``).

    x (B, C_in, H, W) ─┬─ conv ─ PositionAttention ─ conv ─┬─ classifier ─► pam
                       │                                   + ─ classifier ─► out
                       └─ conv ─ ChannelAttention ── conv ─┴─ classifier ─► cam
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from attnseg.heads.fcn import AuxHead, SegClassifier


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """A region where autocast is off, for fp32 energies and softmax."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class PositionAttention(nn.Module):
    """Position attention module (PAM): every position attends to every position.

    ``energy = Q^T K`` (no scaling), ``S = softmax(energy)`` over the keys, ``out = gamma * (V S^T) + x``
    with ``Q, K`` 1x1 projections to ``key_channels`` and ``V`` a 1x1 projection to ``in_channels``.

    The forward runs ``scaled_dot_product_attention(..., scale=1.0)``, whose fused kernels never hold the
    (N, N) attention map: on CUDA the memory-efficient kernel (it accepts a value width different from the
    key width); on the CPU the flash kernel, which needs equal widths, so the narrower of (Q, K) and V is
    zero-padded there (zeros add nothing to ``Q^T K`` and padded value channels are dropped). Energies and
    softmax are fp32: the attention runs with autocast off on fp32 copies of Q, K, V; the output has the
    input's dtype.

    Args:
        in_channels: channels C of the input (and of the value projection).
        key_channels: channels of the query and key projections; default ``in_channels // 8``.
    """

    def __init__(self, in_channels: int, key_channels: Optional[int] = None) -> None:
        super().__init__()
        key_channels = key_channels or max(1, in_channels // 8)
        self.query = nn.Conv2d(in_channels, key_channels, kernel_size=1)
        self.key = nn.Conv2d(in_channels, key_channels, kernel_size=1)
        self.value = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K (B, N, C') and V (B, N, C) in fp32, contiguous (the fused kernels need unit stride channels)."""
        projections = (self.query, self.key, self.value)
        return tuple(proj(x).flatten(2).transpose(1, 2).float().contiguous() for proj in projections)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self._qkv(x)
        with _full_precision(x):
            if q.device.type != "cuda" and q.shape[-1] != c:  # the CPU flash kernel needs equal widths
                width = max(q.shape[-1], c)
                q, k, v = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)  # (B, 1, N, C)
            out = out[:, 0, :, :c].transpose(1, 2).reshape(b, c, h, w)
            return (self.gamma * out + x.float()).to(x.dtype)

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The attention S (B, N, N), computed naively: row ``i`` is how position ``i`` (row-major
        ``i = y * W + x``) weighs every position; reshape a row to (H, W) to show it as an image."""
        q, k, _ = self._qkv(x)
        with _full_precision(x):
            return torch.softmax(q @ k.transpose(1, 2), dim=-1)


class ChannelAttention(nn.Module):
    """Channel attention module (CAM): every channel attends to every channel.

    ``energy = A A^T`` (C, C) with A the input reshaped to (C, N); ``X = softmax(max(energy) - energy)``
    (``energy="max_minus"``, the official code: the row maximum minus the energy) or ``softmax(energy)``
    (``energy="plain"``, the paper's formula); ``out = gamma * (X A) + A``. Energies and softmax in fp32.

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
        energy = a @ a.transpose(1, 2)
        if self.energy == "max_minus":
            energy = energy.amax(dim=-1, keepdim=True) - energy
        return torch.softmax(energy, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(2).float()  # (B, C, N)
        with _full_precision(x):
            out = self._attention(a) @ a
            return (self.gamma * out + a).view_as(x).to(x.dtype)

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The attention X (B, C, C): row ``i`` is how channel ``i`` weighs every channel."""
        with _full_precision(x):
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


class DANetHead(nn.Module):
    """DANet head on the deepest feature, plus the auxiliary FCN head on the stage before last.

    Outputs (each with loss weight 1, ``aux`` 0.4): ``out`` classifies the sum of the branches; ``pam`` and
    ``cam`` classify their branch alone. A switch that is off removes its branch and its output. With one
    branch, ``out`` and that branch's output classify the same feature with separate classifiers. With both
    off the head is the ablation baseline: one plain branch (3x3 conv-BN-ReLU, 3x3 conv-BN-ReLU, the same
    layers as a branch without its attention) and the classifier, outputs ``out`` (and ``aux``).

    Args:
        in_channels: channels of the encoder's feature maps, shallow to deep.
        num_classes: number of classes K.
        pam: add the position attention branch (output ``pam``).
        cam: add the channel attention branch (output ``cam``).
        channels: width of the branches; default ``in_channels[-1] // 4`` (512 for ResNet-50/101).
        key_channels: query/key width of the position attention; default ``channels // 8``.
        cam_energy: ``max_minus`` (official code) or ``plain``; see ``ChannelAttention``.
        dropout: Dropout2d probability before each classifier.
        aux: add the auxiliary head (output ``aux``, loss weight 0.4) on ``in_channels[-2]``.
    """

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
        channels = channels or max(1, c_in // 4)
        attention = {}
        if pam:
            attention["pam"] = PositionAttention(channels, key_channels)
        if cam:
            attention["cam"] = ChannelAttention(cam_energy)
        self.branches = nn.ModuleDict(
            {name: AttentionBranch(c_in, channels, module) for name, module in attention.items()}
            or {"conv": AttentionBranch(c_in, channels, nn.Identity())}
        )
        self.cls = SegClassifier(channels, num_classes, dropout)
        self.branch_cls = nn.ModuleDict({name: SegClassifier(channels, num_classes, dropout) for name in attention})
        self.aux = AuxHead(in_channels[-2], num_classes, dropout=dropout) if aux else None
        self.loss_weights = {"out": 1.0, **{name: 1.0 for name in attention}, **({"aux": 0.4} if aux else {})}

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[-1]
        branch_features = {name: branch(x) for name, branch in self.branches.items()}
        outputs = {"out": self.cls(sum(branch_features.values()))}
        for name, cls in self.branch_cls.items():
            outputs[name] = cls(branch_features[name])
        if self.aux is not None:
            outputs["aux"] = self.aux(features[-2])
        return outputs

    @torch.no_grad()
    def attention_maps(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Attention maps of the branches for ``features``: ``pam`` (B, N, N) over the deepest feature's
        N = h * w positions (row-major), ``cam`` (B, C, C) over the branch channels."""
        x = features[-1]
        return {name: b.attention.attention_map(b.reduce(x)) for name, b in self.branches.items() if name != "conv"}
