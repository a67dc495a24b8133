"""The training and evaluation pipelines: geometry moves image and mask together, padding values,
cat_max_ratio, photometric distortion on the image only, normalisation."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from attnseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PhotoMetricDistortion,
    RandomCropCatMax,
    RandomScale,
    eval_transforms,
    normalize,
    train_transforms,
)

# Class k is painted with COLOURS[k]: no colour is black (the image padding) and all are far apart.
COLOURS = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30], [30, 200, 200], [120, 60, 180]])


def block_scene(height: int, width: int, block: int, seed: int = 0) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Blocks of ``block`` pixels, each a random class painted in its colour: the mask is a function of the image."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, len(COLOURS), (-(-height // block), -(-width // block)), generator=g)
    mask = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width]
    image = COLOURS[mask].permute(2, 0, 1).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def labels_from_colours(image: torch.Tensor) -> torch.Tensor:
    """The inverse of the painting: class of each pixel whose colour is exactly a class colour, 255 for black
    (padding), -1 for anything else (pixels blended by interpolation)."""
    pixels = image.permute(1, 2, 0).unsqueeze(-2).long()  # (H, W, 1, 3)
    match = (pixels == COLOURS).all(-1)  # (H, W, K)
    labels = torch.where(match.any(-1), match.long().argmax(-1), -1)
    return torch.where((image == 0).all(0), 255, labels)


def uniform(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """True where the mask is constant over the (2 radius + 1)^2 window around the pixel; never within ``radius``
    of the border (what lies beyond a crop's border is unknown)."""
    padded = torch.nn.functional.pad(mask.float(), [radius] * 4, value=-1.0)
    windows = padded.unfold(0, 2 * radius + 1, 1).unfold(1, 2 * radius + 1, 1)
    return (windows == mask[..., None, None]).flatten(-2).all(-1)


def test_crop_and_flip_keep_image_and_mask_aligned_exactly():
    image, mask = block_scene(40, 50, block=3)
    steps = v2.Compose([RandomCropCatMax((48, 32)), v2.RandomHorizontalFlip(p=0.5)])
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = steps(image, mask)
        assert out_image.shape == (3, 48, 32) and out_mask.shape == (48, 32)
        assert torch.equal(labels_from_colours(out_image), out_mask)  # every pixel, padding (255) included
        assert out_mask[40:].eq(255).all()  # 40 rows of image, padded to 48 at the bottom


@pytest.mark.parametrize("ratio_range", [(0.6, 0.9), (1.1, 1.7), (0.6, 1.7)])
def test_random_scale_crop_flip_keep_image_and_mask_aligned(ratio_range):
    """Bilinear (image) and nearest (mask) resizing agree away from block borders; padding is exact."""
    image, mask = block_scene(64, 96, block=16)
    steps = v2.Compose([RandomScale(ratio_range), RandomCropCatMax((56, 56)), v2.RandomHorizontalFlip(p=0.5)])
    compared = labelled = 0
    sizes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        sizes.add(tuple(RandomScale(ratio_range).make_params([image])["size"]))
        torch.manual_seed(seed)
        out_image, out_mask = steps(image, mask)
        recovered = labels_from_colours(out_image)
        interior = uniform(out_mask, radius=2) & (out_mask != 255)
        assert torch.equal(recovered[interior], out_mask[interior])
        assert torch.equal(recovered == 255, out_mask == 255)  # padding: image 0 exactly where the mask is 255
        compared += int(interior.sum())
        labelled += int((out_mask != 255).sum())
    assert compared > 0.4 * labelled  # block interiors are most of the picture
    assert len(sizes) > 6
    lo, hi = ratio_range
    assert all(64 * lo - 1 <= h <= 64 * hi + 1 and abs(w / h - 1.5) < 0.05 for h, w in sizes)


def test_random_scale_with_base_size_is_orientation_free():
    """mmsegmentation's keep-ratio rule: the long side fits max(base_size), the short side min(base_size)."""
    scale = RandomScale((1.0, 1.0), base_size=(512, 2048))
    landscape, portrait = torch.zeros(3, 100, 300), torch.zeros(3, 300, 100)
    assert scale.make_params([landscape])["size"] == [512, 1536]
    assert scale.make_params([portrait])["size"] == [1536, 512]
    city = RandomScale((0.5, 0.5), base_size=(1025, 2049))
    assert city.make_params([torch.zeros(3, 1024, 2048)])["size"] == [512, 1024]
    wide = RandomScale((2.0, 2.0), base_size=(520, 520))
    assert wide.make_params([torch.zeros(3, 375, 500)])["size"] == [780, 1040]
    with pytest.raises(ValueError, match="ratio_range"):
        RandomScale((2.0, 1.0))


def test_padding_values_image_zero_mask_ignore():
    image = tv_tensors.Image(torch.full((3, 10, 12), 7, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(10, 12, dtype=torch.int64))
    out_image, out_mask = RandomCropCatMax((16, 20), ignore_index=255)(image, mask)
    assert out_image[:, :10, :12].eq(7).all() and out_mask[:10, :12].eq(1).all()  # the image stays top-left
    assert out_image[:, 10:].eq(0).all() and out_image[:, :, 12:].eq(0).all()
    assert out_mask[10:].eq(255).all() and out_mask[:, 12:].eq(255).all()

    # after normalisation the padding is (0 - mean) / std, the mask still 255
    pipeline = train_transforms((16, 20), scale_range=None, flip=False, photometric=False)
    out_image, out_mask = pipeline(image, mask)
    padding = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out_image[:, 12, 15], padding) and out_mask[12, 15] == 255
    assert out_image.dtype == torch.float32 and out_mask.dtype == torch.int64


def crop_share(mask: torch.Tensor, params: dict, size: tuple[int, int]) -> float:
    """Share of the largest class among the labelled pixels of a crop (mmsegmentation's cat_max_ratio test)."""
    crop = mask[params["top"] : params["top"] + size[0], params["left"] : params["left"] + size[1]]
    labels = crop[crop != 255]
    if labels.numel() == 0:
        return 1.0
    _, counts = labels.unique(return_counts=True)
    return float(counts.max() / counts.sum()) if len(counts) > 1 else 1.0


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    mask = torch.zeros(100, 100, dtype=torch.int64)
    mask[:30, :30] = 1  # a small object in one corner: most 30x30 crops hold only background
    mask[:, 90:] = 255  # void pixels never count
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    inputs = [tv_tensors.Image(image), tv_tensors.Mask(mask)]
    plain, redraw = RandomCropCatMax((30, 30), 1.0), RandomCropCatMax((30, 30), 0.75)
    torch.manual_seed(0)
    plain_ok = np.mean([crop_share(mask, plain.make_params(inputs), (30, 30)) < 0.75 for _ in range(400)])
    redraw_ok = np.mean([crop_share(mask, redraw.make_params(inputs), (30, 30)) < 0.75 for _ in range(400)])
    assert 0.02 < plain_ok < 0.15
    assert abs(redraw_ok - (1 - (1 - plain_ok) ** 10)) < 0.1  # up to 10 draws, each qualifying with plain_ok

    # a mask with one class only: no crop qualifies, the last draw is used after 10 tries
    one_class = tv_tensors.Mask(torch.zeros_like(mask))
    out_image, out_mask = RandomCropCatMax((30, 30), 0.75)(tv_tensors.Image(image), one_class)
    assert out_mask.shape == (30, 30) and out_mask.eq(0).all()


def test_photometric_distortion_touches_the_image_only():
    image, mask = block_scene(24, 24, block=4)
    distort = PhotoMetricDistortion()
    changed = 0
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out_mask = distort(image, mask)
        assert isinstance(out_mask, tv_tensors.Mask) and torch.equal(out_mask, mask)
        assert isinstance(out_image, tv_tensors.Image) and out_image.dtype == torch.uint8
        assert out_image.shape == image.shape
        changed += not torch.equal(out_image, image)
    assert changed > 20  # 1 - 0.5^4 of the draws change something


def test_photometric_brightness_is_an_additive_shift_of_up_to_32():
    dark = tv_tensors.Image(torch.full((3, 4, 4), 10, dtype=torch.uint8))
    brightness_only = PhotoMetricDistortion(contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0)
    values = []
    for seed in range(60):
        torch.manual_seed(seed)
        out = brightness_only(dark)
        assert out.unique().numel() == 1  # the same shift everywhere
        values.append(int(out[0, 0, 0]))
    assert max(values) > 30 and min(values) == 0 and max(values) <= 42  # 10 + [-32, 32], clipped at 0


def test_photometric_hue_shift_reaches_a_tenth_of_the_colour_circle():
    red = tv_tensors.Image(torch.tensor([200, 40, 40], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2).clone())
    hue_only = PhotoMetricDistortion(brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1))
    shifts = []
    for seed in range(80):
        torch.manual_seed(seed)
        r, g, b = (hue_only(red)[:, 0, 0].float() / 255).tolist()
        hue = colorsys.rgb_to_hsv(r, g, b)[0]
        shifts.append(min(abs(hue), 1 - abs(hue)))
    assert 0.07 < max(shifts) <= 0.105  # mmsegmentation: +-18 of OpenCV's 180 hue units


def test_normalize_and_eval_transforms():
    image, mask = block_scene(37, 53, block=5)
    out_image, out_mask = normalize()(image, mask)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    expected = (image.float() / 255 - mean) / std
    assert torch.allclose(out_image, expected, atol=1e-6) and torch.equal(out_mask, mask)
    out_image, out_mask = eval_transforms()(image, mask)
    assert out_image.shape == (3, 37, 53) and torch.equal(out_mask, mask)  # full image, no resize or crop


def test_train_transforms_end_to_end_shapes():
    image, mask = block_scene(30, 45, block=5)
    pipeline = train_transforms((32, 32), scale_range=(0.5, 2.0), cat_max_ratio=0.75)
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = pipeline(image, mask)
        assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.float32
        assert out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= set(range(len(COLOURS))) | {255}
