"""The head contract, in code, and the parts every head shares.

    head = Head(in_channels, num_classes, **options)     # in_channels: the encoder's, shallow to deep
    head(features: list of (B, C_i, H_i, W_i)) -> {name: tensor}
    head.loss_weights   {name: default loss weight}, one per output; ``model.loss_weights`` overrides them
    head.output_losses  {name: loss} for outputs not trained by ``model.loss`` (DFN's border, CCNet's ccl)
    head.embeddings     names of outputs that are not class logits: left at feature resolution, never scored
    head.frames         consecutive images of a batch that form one sample (a clip); 1 for images
    head.attention_maps(features) -> {name: tensor}, empty for a head without attention

``out`` is the prediction: (B, K, h, w) logits that the model upsamples to the image and the metrics score. Every
other logit output (``aux``, ``pam``, ``stage1``, ``border``...) is extra supervision, upsampled like ``out``.
Nothing outside a head knows its insides: the task reads only these attributes.

What every head shares lives here: the auxiliary FCN head (``SegHead.add_aux``), the default width
(``branch_channels``) and the words a head adds to run names (``NameWord``). A new head is a file in this package
and a config in ``configs/model/`` (docs/adding_a_head.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

import torch
from timm.layers import ConvNormAct
from torch import nn

AUX_WEIGHT = 0.4  # the auxiliary heads' loss weight (mmsegmentation's, and every paper's here)


def branch_channels(in_channels: Sequence[int], channels: Optional[int]) -> int:
    """A head's width: ``channels`` if given, else the deepest feature's channels / 4 (512 on ResNet-50/101, the
    papers' value)."""
    return channels or max(1, in_channels[-1] // 4)


_NEVER = object()


@dataclass(frozen=True)
class NameWord:
    """A word that one of a head's options adds to its runs' names and tags (``attnseg.run_names``).

    For a switch (a boolean option) the word is ``word`` when it is on and ``off`` (nothing if empty) when it is
    off; for any other option ``word`` formatted with the value (``"r{}"`` -> ``r2``), left out when the value
    equals ``omit``. An option the config does not set counts with its default in the head's signature."""

    option: str
    word: str = "{}"
    off: str = ""
    omit: Any = _NEVER

    def render(self, value: Any) -> str:
        if isinstance(value, bool):
            return self.word if value else self.off
        return "" if value == self.omit else self.word.format(value)


class SegHead(nn.Module):
    """Base class of every head (see the module's docstring). A subclass sets ``loss_weights`` (and, where it has
    them, ``output_losses`` and ``embeddings``) in ``__init__`` and implements ``forward``; an attention head also
    implements ``attention_maps``.

    Class attributes a head may set, read by the CLI for run names and tags: ``short_name`` (default: the class
    name without ``Head``, lower case), ``name_words`` (its ablation switches as ``NameWord``s, e.g. DANet's
    ``pam``, ``cam``) and ``name_if_no_words`` (the word when every switch is off)."""

    embeddings: tuple[str, ...] = ()
    frames: int = 1
    short_name: ClassVar[Optional[str]] = None
    name_words: ClassVar[tuple[NameWord, ...]] = ()
    name_if_no_words: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.loss_weights: dict[str, float] = {}
        self.output_losses = nn.ModuleDict()
        self.aux_names: tuple[str, ...] = ()

    def add_aux(
        self,
        enabled: bool,
        in_channels: Sequence[int],
        num_classes: int,
        dropout: float,
        channels: int = 256,
        names: Sequence[str] = ("aux",),
    ) -> None:
        """The auxiliary FCN heads (``AuxHead``; mmsegmentation's ``auxiliary_head``) on the stages before last:
        ``names[0]`` on ``in_channels[-2]``, ``names[1]`` on ``in_channels[-3]``..., loss weight ``AUX_WEIGHT``
        each, their outputs added by ``with_aux``. Disabled: the attributes are None and no output is added."""
        for depth, name in enumerate(names, start=2):
            setattr(self, name, AuxHead(in_channels[-depth], num_classes, channels, dropout) if enabled else None)
            if enabled:
                self.loss_weights[name] = AUX_WEIGHT
        self.aux_names = tuple(names) if enabled else ()

    def with_aux(self, features: list[torch.Tensor], outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``outputs`` with the auxiliary heads' logits added (see ``add_aux``)."""
        for depth, name in enumerate(self.aux_names, start=2):
            outputs[name] = getattr(self, name)(features[-depth])
        return outputs

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    @torch.no_grad()
    def attention_maps(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head's attention weights for ``features``, by name (see each head); a head without attention: {}."""
        return {}


class SegClassifier(nn.Sequential):
    """Dropout2d + 1x1 conv to class logits."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, kernel_size=1))


class AuxHead(nn.Module):
    """Auxiliary FCN head: 3x3 conv-BN-ReLU, dropout, 1x1 classifier (mmsegmentation's ``auxiliary_head``)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, channels, kernel_size=3)
        self.cls = SegClassifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.conv(x))


class QKVAttention(nn.Module):
    """The projections of a self-attention over positions (DANet's PAM, CCNet's criss-cross): 1x1 convs to queries
    and keys of ``key_channels`` and to values of ``in_channels``, and the learnt residual scale ``gamma``
    (initialised to 0, so the module starts as the identity): ``out = x + gamma * attention(Q, K) V``.

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

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K (B, C', H, W) and V (B, C, H, W) of ``x``, in fp32."""
        return self.query(x).float(), self.key(x).float(), self.value(x).float()
