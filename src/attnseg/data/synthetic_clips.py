"""SyntheticClips: procedural video clips in which an object's class is shown only in another frame.

Every clip holds ``frames`` frames of one static scene on a noisy background with one to three round objects.
In one frame of the clip (the cue frame, drawn at random per clip) each object is a solid red or blue disc,
labelled ``warm_cue`` or ``cold_cue`` by its colour; in every other frame the same disc, at the same place, is
an identical grey striped blob, labelled ``warm_blob`` or ``cold_blob`` after the colour it had in the cue frame.
Within a frame nothing tells a warm blob from a cold one (the blobs' look does not depend on their class, and the
cue of a blob is never in the frame the blob is in), so a model that sees one frame at a time can only guess;
a model that attends across the clip finds the cue at the same pixel of the cue frame (3D criss-cross attention:
the pixel's line along time).

Samples are a pure function of ``(seed, split, index)``: the same on every machine, in any worker, in any order.
``ds[i]`` is ``(tv_tensors.Video uint8 (T, 3, H, W), tv_tensors.Mask int64 (T, H, W))``.
"""

from __future__ import annotations

import zlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from attnseg.data.synthetic import BLUE, GREY, RED


class SyntheticClips(Dataset):
    """Procedural clips for the video context benchmark (see the module's docstring).

    Args:
        root: unused (the clips are generated); accepted so the datamodule can pass ``data.root``.
        split: ``train``, ``val`` or ``test`` (different clips for the same index).
        transforms: a torchvision v2 transform applied to ``(video, mask)``: the same for every frame of a clip.
        num_samples: clips in the split (default 512 for train, 64 otherwise).
        image_size: frame size ``H`` or ``(H, W)``, at least 32.
        frames: frames per clip T, at least 2 (one cue frame and at least one with the blobs).
        seed: generator seed.
    """

    classes = ("background", "warm_cue", "cold_cue", "warm_blob", "cold_blob")
    palette = ((0, 0, 0), RED, BLUE, (255, 160, 60), (60, 200, 255))
    splits = ("train", "val", "test")
    WARM_CUE, COLD_CUE, WARM_BLOB, COLD_BLOB = 1, 2, 3, 4

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        transforms: Optional[Callable] = None,
        num_samples: Optional[int] = None,
        image_size: int | Sequence[int] = 64,
        frames: int = 3,
        seed: int = 0,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"SyntheticClips: split={split!r}, expected one of {self.splits}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"SyntheticClips: image_size={image_size}, expected (H, W) of at least 32 pixels")
        if frames < 2:
            raise ValueError(f"SyntheticClips: frames={frames}, expected 2 or more (a cue frame and a blob frame)")
        self.split, self.transforms, self.seed = split, transforms, seed
        self.num_samples = num_samples if num_samples is not None else (512 if split == "train" else 64)
        self.image_size, self.frames = size, frames

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"SyntheticClips[{index}]: {self.num_samples} samples")
        clip, mask = self.generate(index)
        video = tv_tensors.Video(torch.from_numpy(clip).permute(0, 3, 1, 2))
        sample = video, tv_tensors.Mask(torch.from_numpy(mask))
        return self.transforms(*sample) if self.transforms is not None else sample

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip (T, H, W, 3) uint8, mask (T, H, W) int64, and nothing else: a pure function of the index."""
        rng = np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), index])
        (h, w), t = self.image_size, self.frames
        base = rng.normal(110, 25, size=(h // 8 + 1, w // 8 + 1, 3))
        background = np.kron(base, np.ones((8, 8, 1)))[:h, :w]  # blocky, low-frequency texture
        clip = np.clip(background[None] + rng.normal(0, 8, size=(t, h, w, 3)), 0, 255)
        mask = np.zeros((t, h, w), dtype=np.int64)
        cue_frame = int(rng.integers(t))
        yy, xx = np.mgrid[:h, :w]
        taken = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            radius = rng.uniform(0.1, 0.16) * min(h, w)
            for _attempt in range(20):  # a place that overlaps no other object
                cy, cx = rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
                if not (disc & taken).any():
                    break
            else:
                continue
            taken |= disc
            stripes = GREY + 45 * np.sign(np.sin((yy - cy) * 2 * np.pi / rng.uniform(4, 7)))[..., None]  # the look
            warm = bool(rng.random() < 0.5)  # drawn after the look: the look does not depend on the class
            for frame in range(t):
                if frame == cue_frame:
                    clip[frame][disc] = RED if warm else BLUE
                    mask[frame][disc] = self.WARM_CUE if warm else self.COLD_CUE
                else:
                    clip[frame][disc] = stripes[disc]
                    mask[frame][disc] = self.WARM_BLOB if warm else self.COLD_BLOB
        return clip.astype(np.uint8), mask
