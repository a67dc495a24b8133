"""Dilated depthwise convolutions kept in the contiguous layout on the CPU, for a model in channels-last.

On the CPU (measured with PyTorch 2.14.1 on an Intel Xeon with AMX), the weight gradient of a dilated depthwise
convolution is wrong under bf16 autocast when its input or weight is channels-last: a relative error of about 0.7
on every call, with entries up to 1e35 now and then, on 23x30 maps and larger (not on 8x8; ``tests/test_layout.py``
has a case). Its output and input gradient are right, and so is everything in the contiguous layout (bf16
rounding, 3e-3). Dilated encoders with depthwise convolutions (MobileNetV2, EfficientNet-Lite at output stride 8
or 16) hit it: their dilated stages train on wrong gradients, and one large entry in a weight is enough to
overflow the batch norm after it. So, for a channels-last model, ``contiguous_dilated_depthwise`` keeps those
convolutions' weights contiguous and runs them on a contiguous copy of their CPU input, the result going back to
channels-last, at the cost of two copies of each such feature map. Inputs on other devices pass through
unchanged, and ``SegmentationTask.configure_model`` applies it only when the trainer runs on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn


def is_dilated_depthwise(module: nn.Module) -> bool:
    """A 2-D convolution with one group per input channel (more than one) and a dilation above 1."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels
        and any(d > 1 for d in module.dilation)
    )


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if x.device.type != "cpu":
        return args
    return (x.contiguous(), *args[1:])


def _channels_last_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    if output.device.type != "cpu" or output.dim() != 4:
        return output
    return output.contiguous(memory_format=torch.channels_last)


def contiguous_dilated_depthwise(model: nn.Module) -> int:
    """Keep every dilated depthwise convolution of ``model`` (already in channels-last) in the contiguous layout on
    the CPU: its weight made contiguous, its input copied to contiguous and its output back to channels-last.
    Returns how many convolutions it changed."""
    count = 0
    for module in model.modules():
        if is_dilated_depthwise(module):
            module.weight.data = module.weight.data.clone(memory_format=torch.contiguous_format)
            module.register_forward_pre_hook(_contiguous_input)
            module.register_forward_hook(_channels_last_output)
            count += 1
    return count
