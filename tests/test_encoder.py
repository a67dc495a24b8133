import pytest
import timm
import torch

from attnseg.encoder import Encoder


@pytest.mark.parametrize(
    "name, channels",
    [
        ("resnet18", [64, 128, 256, 512]),
        ("resnet50d", [256, 512, 1024, 2048]),
        ("regnety_004", [48, 104, 208, 440]),
        ("convnext_atto", [40, 80, 160, 320]),
    ],
)
@pytest.mark.parametrize("output_stride, strides", [(8, [4, 8, 8, 8]), (16, [4, 8, 16, 16]), (32, [4, 8, 16, 32])])
def test_channels_and_strides(name, channels, output_stride, strides):
    enc = Encoder(name, output_stride=output_stride)
    assert enc.channels == channels
    assert enc.strides == strides
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = enc.eval()(x)
    assert [f.shape[1] for f in feats] == channels
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // s, 96 // s) for s in strides]


def test_pretrained_from_local_file_round_trip(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "resnet18_weights.pth"
    torch.save(source.state_dict(), path)

    enc = Encoder("resnet18", output_stride=8, pretrained=str(path))
    loaded = dict(enc.model.named_parameters())
    assert torch.equal(loaded["conv1.weight"], source.conv1.weight)
    assert torch.equal(loaded["layer4.1.conv2.weight"], source.layer4[1].conv2.weight)
    # a fresh encoder without the file is different
    fresh = Encoder("resnet18", output_stride=8)
    assert not torch.equal(dict(fresh.model.named_parameters())["conv1.weight"], source.conv1.weight)


def test_missing_pretrained_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/weights.pth"):
        Encoder("resnet18", pretrained=str(missing))


def test_pretrained_file_of_another_model(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(timm.create_model("resnet50").state_dict(), path)
    with pytest.raises(ValueError, match="r50.pth"):
        Encoder("resnet18", pretrained=str(path))


def test_unsupported_output_stride_names_model_and_stride():
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224.*output_stride=8"):
        Encoder("vit_tiny_patch16_224", output_stride=8)
    with pytest.raises(ValueError, match="output_stride=4"):
        Encoder("resnet18", output_stride=4)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="resnet_does_not_exist"):
        Encoder("resnet_does_not_exist")


def test_hub_weights_without_the_hub_fail_at_once_with_a_clear_message(monkeypatch):
    import time

    import huggingface_hub.constants

    import attnseg.encoder

    monkeypatch.setattr(attnseg.encoder, "_hub_reachable", lambda timeout=3.0: False)
    before, start = huggingface_hub.constants.HF_HUB_OFFLINE, time.perf_counter()
    with pytest.raises(
        ValueError,
        match=r"pretrained=hub: the Hugging Face hub is not reachable from here and "
        r"timm's cache has no weights for resnet18 .*'package:<name>'",
    ):
        Encoder("resnet18", 8, "hub")
    assert time.perf_counter() - start < 15 and huggingface_hub.constants.HF_HUB_OFFLINE == before
