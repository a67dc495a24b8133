"""SyntheticShapes: a procedurally generated scene-parsing dataset that needs long-range context.

Every image has a coloured bar along its top edge and a few objects below it:

- ``disc`` and ``box``: saturated-colour solid circles and horizontally striped rectangles, told
  apart by shape and texture (local cues);
- ``warm_blob`` and ``cold_blob``: identical grey striped ellipses in the lower part of the image.
  Which of the two they are depends only on the colour of the bar at the *top* of the image
  (red: warm, blue: cold), so a model must carry information across the whole image to label
  them; a local view of a blob cannot tell.

Samples are a pure function of ``(seed, split, index)``: the same on every machine, in any
worker, in any order. Any image size and any number of samples.
"""

from __future__ import annotations

import zlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

RED, BLUE, GREY = (200, 40, 40), (40, 60, 210), (128, 128, 128)


class SyntheticShapes(Dataset):
    """Procedural dataset; ``ds[i]`` is ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))``.

    Args:
        root: unused (the data is generated); accepted so every dataset has the same signature.
        split: ``train``, ``val`` or ``test`` (different samples for each).
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
        num_samples: number of samples; default 1024 for train, 128 otherwise.
        image_size: ``(H, W)`` or one int for a square image.
        seed: base seed; change it for a different dataset.
    """

    classes = ("background", "disc", "box", "bar", "warm_blob", "cold_blob")
    palette = ((0, 0, 0), (230, 160, 30), (40, 180, 90), (150, 80, 200), (220, 60, 60), (60, 120, 230))
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        transforms: Optional[Callable] = None,
        num_samples: Optional[int] = None,
        image_size: int | Sequence[int] = 96,
        seed: int = 0,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"SyntheticShapes: split={split!r}, expected one of {self.splits}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f"SyntheticShapes: image_size={image_size}, expected (H, W) of at least 16 pixels")
        self.split = split
        self.transforms = transforms
        self.num_samples = num_samples if num_samples is not None else (1024 if split == "train" else 128)
        self.image_size = size
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"SyntheticShapes[{index}]: {self.num_samples} samples")
        image, mask = self.generate(index)
        sample = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask))
        return self.transforms(*sample) if self.transforms is not None else sample

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8 and mask (H, W) int64 of sample ``index``."""
        split_id = zlib.crc32(self.split.encode())
        rng = np.random.default_rng([self.seed, split_id, index])
        h, w = self.image_size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

        # Background: a smooth colour gradient in muted tones, plus noise everywhere at the end.
        c0, c1 = rng.uniform(60, 170, size=(2, 3))
        t = (yy / h)[..., None] if rng.random() < 0.5 else (xx / w)[..., None]
        image = c0 * (1 - t) + c1 * t
        mask = np.zeros((h, w), dtype=np.int64)

        # The context cue: a red or blue bar along the top edge.
        warm = rng.random() < 0.5
        bar_h = max(2, h // 10)
        image[:bar_h] = RED if warm else BLUE
        mask[:bar_h] = 3

        r_min, r_max = 0.12 * min(h, w), 0.22 * min(h, w)
        shapes = ["blob"] * int(rng.integers(1, 3)) + ["disc"] * int(rng.integers(0, 3)) + ["box"] * int(rng.integers(0, 3))
        rng.shuffle(shapes)
        for shape in shapes:
            if shape == "blob":  # grey striped ellipse in the lower part, far from the bar
                cy, cx = rng.uniform(0.55 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
                ry, rx = rng.uniform(r_min, r_max, size=2)
                region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                stripes = 25 * np.sign(np.sin((xx + yy) * 0.9))[..., None]
                image = np.where(region[..., None], np.array(GREY) + stripes, image)
                mask[region] = 4 if warm else 5
            else:
                colour = _saturated_colour(rng)
                cy, cx = rng.uniform(bar_h + r_min, h - r_min), rng.uniform(r_min, w - r_min)
                r = rng.uniform(r_min, r_max)
                if shape == "disc":
                    region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
                    mask[region] = 1
                    image[region] = colour
                else:
                    ry, rx = rng.uniform(0.6, 1.2, size=2) * r
                    region = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
                    mask[region] = 2
                    shade = np.where((yy // 2) % 2 == 0, 1.0, 0.55)[..., None]
                    image = np.where(region[..., None], colour * shade, image)

        image = image + rng.normal(0, 12, size=image.shape)
        return np.clip(image, 0, 255).astype(np.uint8), mask


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A colour far from grey (max - min channel >= 100), so that only the blobs are grey."""
    while True:
        colour = rng.uniform(0, 255, size=3)
        if colour.max() - colour.min() >= 100:
            return colour
