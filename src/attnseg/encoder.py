"""Dilated timm encoder: any timm model with ``features_only`` and ``output_stride``.

The encoder returns a list of feature maps (shallow to deep) and describes them with
``channels`` and ``strides`` so that a head can be built without running it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from attnseg.weights import HUB, PACKAGE, load_packaged, package_file, packaged


@dataclass
class EncoderConfig:
    """What ``--model.encoder.*`` sets.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``resnet18``, ``resnet50d``, ``convnext_tiny``.
        output_stride: reduction of the deepest feature map: 8 (dilated, the papers' setting), 16 or 32.
        pretrained: ``package:<name>`` for ImageNet weights from an installed package (``attnseg.weights.PACKAGES``:
            ``package:efficientnet_lite0``, ``_lite1``, ``_lite2``, ``package:mobilenetv2``), a local weights file
            (``.pth``/``.bin``/``.safetensors``, a timm or torchvision state dict), ``hub`` to let timm download its
            default weights, or null for random initialisation. The input normalisation follows the weights
            (``attnseg.weights.normalization``).
        out_indices: which feature levels to return; null keeps the last four stages.
    """

    name: str = "resnet50"
    output_stride: int = 8
    pretrained: Optional[str] = None
    out_indices: Optional[tuple[int, ...]] = None


HUB_MISSES = (
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "MaxRetryError",
    "NameResolutionError",
)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) answers a TCP connection quickly."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub in offline mode (its cache only) for the duration, when ``offline``."""
    constants = sys.modules.get("huggingface_hub.constants") if offline else None
    if constants is None and offline:
        try:
            import huggingface_hub.constants as constants
        except ImportError:
            constants = None
    before = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = before


class Encoder(nn.Module):
    """A timm backbone in ``features_only`` mode, dilated to ``output_stride``.

    Attributes:
        channels: channels of each returned feature map, shallow to deep.
        strides: reduction of each returned feature map relative to the input.
    """

    def __init__(
        self,
        name: str = "resnet50",
        output_stride: int = 8,
        pretrained: Optional[str] = None,
        out_indices: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"encoder.output_stride={output_stride}: expected 8, 16 or 32")
        if not timm.is_model(name):
            raise ValueError(
                f"encoder.name={name!r}: not a timm model; see timm.list_models(), e.g. 'resnet18', 'resnet50d', "
                "'convnext_tiny', 'regnety_040'"
            )
        kwargs: dict = {}
        use_weights = False
        if pretrained and pretrained.startswith(PACKAGE):
            entry = packaged(pretrained)
            if entry.timm_model != name:
                raise ValueError(
                    f"encoder.pretrained={pretrained} holds weights for {entry.timm_model}, not encoder.name={name}; "
                    f"set encoder.name={entry.timm_model}"
                )
            package_file(pretrained)  # installed? (else the pip command that installs it)
        elif pretrained == HUB:
            use_weights = True
        elif pretrained:
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"encoder.pretrained={pretrained}: no such file; expected a local weights file for {name} "
                    f"('package:<name>' for weights from an installed package, 'hub' to download timm's)"
                )
            use_weights = True
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path), hf_hub_id=None, url=None)
        if out_indices is None:
            out_indices = (-4, -3, -2, -1)
        offline = pretrained == HUB and not _hub_reachable()
        try:
            with _hub_offline(offline):  # unreachable: timm's cache only, an answer at once instead of retries
                self.model = timm.create_model(
                    name,
                    pretrained=use_weights,
                    features_only=True,
                    output_stride=output_stride,
                    out_indices=tuple(out_indices),
                    **kwargs,
                )
        except Exception as err:
            if pretrained == HUB and type(err).__name__ in HUB_MISSES:
                where = "is not reachable from here" if offline else "did not give them"
                raise ValueError(
                    f"encoder.pretrained=hub: the Hugging Face hub {where} and timm's cache has no weights for {name} "
                    f"({type(err).__name__}); use 'package:<name>' (weights from an installed package), a local "
                    "weights file, or null"
                ) from None
            if not isinstance(err, (TypeError, AssertionError, NotImplementedError, RuntimeError)):
                raise
            msg = str(err)
            if kwargs and ("state_dict" in msg or "size mismatch" in msg or "Missing key" in msg):
                raise ValueError(f"encoder.pretrained={pretrained}: not weights for {name}: {msg[:500]}") from err
            raise ValueError(
                f"encoder {name!r} does not support output_stride={output_stride} with features_only "
                f"(timm says: {msg}); use a convolutional model such as resnet50 or convnext_tiny"
            ) from err
        if pretrained and pretrained.startswith(PACKAGE):
            load_packaged(self.model, pretrained)
        info = self.model.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        if self.strides[-1] != output_stride:
            raise ValueError(
                f"encoder {name!r} does not support output_stride={output_stride}: its deepest features are at "
                f"stride {self.strides[-1]} (models without dilation support only give 32)"
            )
        self.name = name
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))

    @classmethod
    def from_config(cls, config: EncoderConfig) -> "Encoder":
        return cls(config.name, config.output_stride, config.pretrained, config.out_indices)
