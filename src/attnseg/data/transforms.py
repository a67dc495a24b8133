"""Training and evaluation pipelines: torchvision transforms v2 on ``(tv_tensors.Image, tv_tensors.Mask)``.

Geometric transforms move image and mask together (masks with nearest-neighbour
interpolation, padded with the ignore index); photometric ones touch the image only.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from attnseg.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


class RandomScale(v2.Transform):
    """Rescale by a factor drawn uniformly from ``ratio_range``, keeping the aspect ratio.

    With ``base_size`` the image is rescaled to the largest size whose long side fits ``max(base_size) * ratio``
    and whose short side fits ``min(base_size) * ratio``, whatever its orientation (mmsegmentation's
    ``RandomResize(scale, ratio_range, keep_ratio=True)``; e.g. ``(512, 2048)`` gives ADE20K images a short side of
    about ``512 * ratio``); without it, the ratio applies to the image's own size.
    """

    def __init__(self, ratio_range: Sequence[float] = (0.5, 2.0), base_size: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        lo, hi = ratio_range
        if not 0 < lo <= hi:
            raise ValueError(f"RandomScale: ratio_range={tuple(ratio_range)}, expected 0 < low <= high")
        self.ratio_range = (float(lo), float(hi))
        self.base_size = tuple(base_size) if base_size is not None else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ratio = float(torch.empty(1).uniform_(*self.ratio_range))
        if self.base_size is not None:
            ratio *= min(max(self.base_size) / max(h, w), min(self.base_size) / min(h, w))
        return dict(size=[max(1, round(h * ratio)), max(1, round(w * ratio))])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, params["size"], antialias=True)


class RandomCropCatMax(v2.Transform):
    """Random crop padded where the input is smaller (image with 0, mask with ``ignore_index``).

    With ``cat_max_ratio < 1`` the crop is redrawn (up to 10 times, mmsegmentation's rule) while a single
    class covers more than that share of the crop's labelled pixels.
    """

    def __init__(self, size: Sequence[int], cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = self.size
        pad = [0, 0, max(cw - w, 0), max(ch - h, 0)]  # left, top, right, bottom
        ph, pw = h + pad[3], w + pad[2]
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        for _ in range(10):
            top = int(torch.randint(0, ph - ch + 1, ()))
            left = int(torch.randint(0, pw - cw + 1, ()))
            if self.cat_max_ratio >= 1.0 or not masks:
                break
            crop = masks[0][..., top : top + ch, left : left + cw]
            labels = crop[crop != self.ignore_index]
            if labels.numel() == 0:
                continue
            counts = torch.bincount(labels.flatten())
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return dict(pad=pad, top=top, left=left)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if any(params["pad"]):
            fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
            inpt = TF.pad(inpt, params["pad"], fill=fill)
        return TF.crop(inpt, params["top"], params["left"], *self.size)


class PhotoMetricDistortion(v2.Transform):
    """mmsegmentation's PhotoMetricDistortion on the image only; each step applied with probability 0.5:

    brightness ``+ delta``, delta uniform in ``[-32, 32]`` (on 0-255 values); contrast ``x alpha``, alpha in
    ``[0.5, 1.5]``, before or after the colour steps (at random); saturation factor in ``[0.5, 1.5]`` (torchvision's
    blend with the grey image where mmsegmentation scales HSV saturation); hue shifted by up to 18 of OpenCV's 180
    hue units (+-36 degrees, a tenth of the colour circle).

    Args:
        brightness_delta: largest brightness shift, in 0-255 units.
        contrast_range: range of the contrast factor.
        saturation_range: range of the saturation factor.
        hue_delta: largest hue shift, in OpenCV hue units (180 per turn).
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: float = 18,
    ) -> None:
        super().__init__()
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = float(hue_delta)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def maybe(low: float, high: float, neutral: float) -> float:
            return float(torch.empty(()).uniform_(low, high)) if torch.rand(()) < 0.5 else neutral

        return dict(
            brightness=maybe(-self.brightness_delta, self.brightness_delta, 0.0),
            contrast=maybe(*self.contrast_range, 1.0),
            contrast_first=bool(torch.rand(()) < 0.5),
            saturation=maybe(*self.saturation_range, 1.0),
            hue=maybe(-self.hue_delta / 180, self.hue_delta / 180, 0.0),
        )

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            return inpt  # masks (and anything else) are left untouched; a clip's frames share the parameters
        top = 255.0 if inpt.dtype == torch.uint8 else 1.0  # value range of the image: uint8 or float in [0, 1]
        image = inpt.as_subclass(torch.Tensor).float() / top
        image = (image + params["brightness"] / 255.0).clamp(0, 1)
        if params["contrast_first"]:
            image = (image * params["contrast"]).clamp(0, 1)
        if params["saturation"] != 1.0:
            image = TF.adjust_saturation(image, params["saturation"])
        if params["hue"] != 0.0:
            image = TF.adjust_hue(image, params["hue"])
        if not params["contrast_first"]:
            image = (image * params["contrast"]).clamp(0, 1)
        image = image * top
        if inpt.dtype == torch.uint8:
            image = image.round()
        return tv_tensors.wrap(image.to(inpt.dtype), like=inpt)


def normalize(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """uint8 image (or clip) -> float in [0, 1] -> (x - mean) / std; the mask becomes int64, otherwise untouched."""
    return v2.Compose(
        [
            v2.ToDtype(
                {
                    tv_tensors.Image: torch.float32,
                    tv_tensors.Video: torch.float32,
                    tv_tensors.Mask: torch.int64,
                    "others": None,
                },
                scale=True,
            ),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def train_transforms(
    crop_size: Optional[Sequence[int]] = None,
    scale_range: Optional[Sequence[float]] = (0.5, 2.0),
    base_size: Optional[Sequence[int]] = None,
    cat_max_ratio: float = 1.0,
    flip: bool = True,
    photometric: bool = True,
    ignore_index: int = IGNORE_INDEX,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Random scale -> random crop (padded) -> horizontal flip -> photometric distortion -> normalise."""
    steps: list[v2.Transform] = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range, base_size))
    if crop_size is not None:
        steps.append(RandomCropCatMax(crop_size, cat_max_ratio, ignore_index))
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps.append(normalize(mean, std))
    return v2.Compose(steps)


def eval_transforms(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Full image, normalised; resizing and windows are the inference mode's business."""
    return normalize(mean, std)
