"""attnseg.layout: dilated depthwise convolutions of a channels-last model run in the contiguous layout on the CPU,
so that their bf16 weight gradient is right (it is not in channels-last on some CPUs)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from attnseg.encoder import Encoder
from attnseg.layout import contiguous_dilated_depthwise, is_dilated_depthwise


def weight_gradients(model: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    out = out[-1] if isinstance(out, list) else out
    out.float().backward(grad)
    return [m.weight.grad.clone() for m in model.modules() if is_dilated_depthwise(m)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_dilated_depthwise_weight_gradient_in_bf16_channels_last_equals_fp32():
    """A dilated depthwise convolution on a 23x30 map (the size where channels-last gives a relative error of about
    0.7 on CPUs with the fault), in channels-last with bf16 autocast: its weight gradient is within bf16 rounding
    of the fp32 one; its output stays channels-last."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=64, bias=False)
    reference = copy.deepcopy(conv)
    x, grad = torch.rand(8, 64, 23, 30) * 6, torch.randn(8, 64, 23, 30)
    expected = weight_gradients(reference, x, grad, bf16=False)
    model = nn.Sequential(conv).to(memory_format=torch.channels_last)
    assert contiguous_dilated_depthwise(model) == 1
    x_last = x.contiguous(memory_format=torch.channels_last)
    got = weight_gradients(model, x_last, grad, bf16=True)
    assert relative_error(got[0], expected[0]) < 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x_last).is_contiguous(memory_format=torch.channels_last)


def test_only_dilated_depthwise_convolutions_are_changed():
    """MobileNetV2 at output stride 16 has dilated depthwise convolutions in its last stages; at 32 it has none; a
    dilated dense convolution (ASPP's) and an undilated depthwise one are left alone."""
    assert not is_dilated_depthwise(nn.Conv2d(8, 8, 3, padding=2, dilation=2))
    assert not is_dilated_depthwise(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    assert is_dilated_depthwise(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8))
    dilated = Encoder("mobilenetv2_100", 16).to(memory_format=torch.channels_last)
    expected = [name for name, m in dilated.named_modules() if is_dilated_depthwise(m)]
    assert expected and all(".conv_dw" in name for name in expected)
    assert contiguous_dilated_depthwise(dilated) == len(expected)
    assert contiguous_dilated_depthwise(Encoder("mobilenetv2_100", 32)) == 0


def test_dilated_mobilenet_weight_gradients_in_bf16_channels_last_stay_the_size_of_fp32s():
    """The dilated MobileNetV2 encoder (output stride 16, 23x30 features) in channels-last with bf16 autocast, as
    ``fit`` runs it on a CPU (``SegmentationTask.configure_model``): the weight gradients of its dilated depthwise
    convolutions are finite and of the fp32 encoder's size (without the change they hold entries near 1e35 on CPUs
    with the fault). Their direction is not compared: through a randomly initialised network in train mode, bf16
    rounding alone moves these sums of many cancelling products by tens of percent, in either layout."""
    torch.manual_seed(0)
    encoder = Encoder("mobilenetv2_100", 16).train()
    reference = copy.deepcopy(encoder)
    x = torch.randn(2, 3, 23 * 16, 30 * 16)
    with torch.no_grad():
        shape = reference(x)[-1].shape
    grad = torch.randn(shape)
    expected = weight_gradients(reference, x, grad, bf16=False)
    encoder.to(memory_format=torch.channels_last)
    contiguous_dilated_depthwise(encoder)
    got = weight_gradients(encoder, x.contiguous(memory_format=torch.channels_last), grad, bf16=True)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        assert torch.isfinite(g).all() and 0.5 < float(g.norm() / e.norm()) < 2.0


def test_the_task_keeps_dilated_depthwise_convolutions_contiguous_with_channels_last():
    """``SegmentationTask.configure_model`` with ``channels_last``: the dilated MobileNetV2's depthwise convolutions
    get the hooks and contiguous weights; without ``channels_last``, or for a trainer on a GPU, they are left as
    they are."""
    from types import SimpleNamespace

    from attnseg.task import SegmentationTask

    def dilated_depthwise(channels_last: bool, root_device: str | None = None) -> list[nn.Conv2d]:
        task = SegmentationTask(
            encoder={"name": "mobilenetv2_100", "output_stride": 16}, num_classes=3, channels_last=channels_last
        )
        if root_device is not None:  # what configure_model reads of the trainer
            task._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(root_device)))
        task.configure_model()
        return [m for m in task.model.modules() if is_dilated_depthwise(m)]

    changed = dilated_depthwise(True)
    assert changed and all(m._forward_pre_hooks and m._forward_hooks for m in changed)
    assert all(m.weight.stride() == torch.empty(m.weight.shape).stride() for m in changed)
    assert not any(m._forward_pre_hooks for m in dilated_depthwise(False))
    assert all(m._forward_pre_hooks for m in dilated_depthwise(True, "cpu"))
    on_gpu = dilated_depthwise(True, "cuda:0")
    assert not any(m._forward_pre_hooks for m in on_gpu)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in on_gpu)
