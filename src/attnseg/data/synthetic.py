"""SyntheticShapes: a procedural context benchmark, where some classes can only be told from far away.

Every image holds a few objects on a smooth, noisy background:

- ``disc`` and ``box``: solid circles and horizontally striped rectangles in saturated colours (never
  near red or blue), told apart by shape and texture: local cues;
- ``warm_cue`` and ``cold_cue``: solid red and solid blue markers, labelled by their colour (so a model
  learns to represent the colour where the cue is: the information exists in the features, and the
  question is only whether the head carries it to the blobs);
- ``warm_blob`` and ``cold_blob``: identical grey striped ellipses. Which of the two a blob is depends
  only on the colour of a cue placed far away from it (red: warm, blue: cold), so a model must carry
  information across the image to label it; a local view of a blob cannot tell.

``variant`` chooses where the cue lies, and so which kind of context a model needs:

- ``far``: one square cue anywhere in the image, at least ``0.45 * min(H, W)`` from every blob; all blobs
  take its colour. Any global context mechanism can use it (PAM, CAM, criss-cross with R >= 2, FLANet,
  DFN's global pooling).
- ``two_hop``: one square cue near a corner and every blob in the opposite part of the image, so that the
  cue shares no row and no column with any blob pixel (with a gap of ``0.35 * H`` rows and ``0.35 * W``
  columns). One criss-cross step (a pixel's row and column) cannot reach it; two can, through the pixel
  where the blob's row meets the cue's column (CCNet's argument for recurrence). That holds after the
  encoder only if the gaps exceed the reach of the convolutions around the attention (the context
  benchmark's encoder, ``configs/experiment/context.yaml``: 81 px, against gaps of at least 89 px at 256x256).
  In the ``train`` split, half the images instead put the blobs in the cue's rows (or columns), as far from
  it along them: one step reaches those, so they teach what the cue means; ``val`` and ``test`` hold only
  two-hop images, so their scores measure the two-step reach alone.
- ``band``: the image is cut into two horizontal bands; each band has a cue stripe along its left or right
  edge, one band red and the other blue, and each blob takes the colour of its own band's cue, at least
  ``0.45 * W`` away along the row. Both colours are in every image, so a summary of the whole image
  (CAM's channel map, global pooling) cannot tell a blob's class; attention along rows can (FLANet's
  row attention, criss-cross with R = 1, PAM).

Samples are a pure function of ``(seed, split, index, variant)``: the same on every machine, in any worker,
in any order. Any image size (the distances scale with it) and any number of samples.
"""

from __future__ import annotations

import zlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

RED, BLUE, GREY = (200, 40, 40), (40, 60, 210), (128, 128, 128)
VARIANTS = ("far", "two_hop", "band")
FAR = 0.45  # far and band: least distance from a blob to its cue, as a fraction of the image side
CUE = 0.2  # side of a square cue (twice the width of a band's stripe), as a fraction of the image side
ONE_HOP = 0.5  # two_hop, train split: share of images whose blobs share the cue's rows or columns
GAP = 0.35  # two_hop: least gap between the cue's rows (columns) and a blob's, as a fraction of H (W)


class SyntheticShapes(Dataset):
    """Procedural dataset; ``ds[i]`` is ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))``.

    Args:
        root: unused (the data is generated); accepted so every dataset has the same signature.
        split: ``train``, ``val`` or ``test`` (different samples for each).
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
        num_samples: number of samples; default 1024 for train, 128 otherwise.
        image_size: ``(H, W)`` or one int for a square image.
        seed: base seed; change it for a different dataset.
        variant: where the cue lies: ``far``, ``two_hop`` or ``band`` (see the module's docstring).
    """

    classes = ("background", "disc", "box", "warm_cue", "cold_cue", "warm_blob", "cold_blob")
    palette = ((0, 0, 0), (230, 160, 30), (40, 180, 90), (240, 120, 160), (120, 200, 240), (200, 30, 30), (30, 70, 220))
    context_classes = ("warm_blob", "cold_blob")  # classes decided only by a distant cue
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        transforms: Optional[Callable] = None,
        num_samples: Optional[int] = None,
        image_size: int | Sequence[int] = 96,
        seed: int = 0,
        variant: str = "far",
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"SyntheticShapes: split={split!r}, expected one of {self.splits}")
        if variant not in VARIANTS:
            raise ValueError(f"SyntheticShapes: variant={variant!r}, expected one of {VARIANTS}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"SyntheticShapes: image_size={image_size}, expected (H, W) of at least 32 pixels")
        self.split = split
        self.transforms = transforms
        self.num_samples = num_samples if num_samples is not None else (1024 if split == "train" else 128)
        self.image_size = size
        self.seed = seed
        self.variant = variant

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
        ids = [self.seed, zlib.crc32(self.split.encode()), index, VARIANTS.index(self.variant)]
        rng = np.random.default_rng(ids)
        scene = _Scene(self.image_size, rng)
        count = int(rng.integers(1, 3))
        if self.variant == "two_hop":
            blobs = scene.two_hop(count, one_hop=self.split == "train" and rng.random() < ONE_HOP)
        else:
            blobs = {"far": scene.far, "band": scene.band}[self.variant](count)
        for _ in range(int(rng.integers(0, 3))):
            scene.disc()
        for _ in range(int(rng.integers(0, 3))):
            scene.box()
        scene.paint_cues()  # over the distractors: nothing hides a cue
        for (cy, cx, ry, rx), warm in blobs:  # blobs last: nothing covers them
            scene.blob(cy, cx, ry, rx, warm)
        return scene.finish()


class _Scene:
    """One image being drawn: background, then objects painted over it with their labels."""

    WARM_CUE, COLD_CUE, WARM, COLD = 3, 4, 5, 6

    def __init__(self, size: tuple[int, int], rng: np.random.Generator) -> None:
        self.h, self.w = size
        self.rng = rng
        self.yy, self.xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        c0, c1 = rng.uniform(60, 170, size=(2, 3))  # smooth gradient in muted tones
        t = (self.yy / self.h)[..., None] if rng.random() < 0.5 else (self.xx / self.w)[..., None]
        self.image = c0 * (1 - t) + c1 * t
        self.mask = np.zeros(size, dtype=np.int64)
        self.cues: list[tuple[tuple, bool]] = []  # (box (y0, x0, y1, x1), warm), painted by paint_cues
        self.r_min, self.r_max = 0.08 * min(size), 0.14 * min(size)  # object radii

    # ------------------------------------------------------------------ cue placements (return the blobs)
    def far(self, count: int) -> list:
        """One square cue anywhere; blobs at least FAR * min(H, W) from it."""
        side = self._cue_side()
        for _ in range(1000):
            y0, x0 = self.rng.integers(0, self.h - side + 1), self.rng.integers(0, self.w - side + 1)
            cue = (y0, x0, y0 + side, x0 + side)
            blobs = [self._blob_away_from(cue, FAR * min(self.h, self.w)) for _ in range(count)]
            if all(b is not None for b in blobs):
                break
        else:
            raise ValueError(f"SyntheticShapes: no room for a far cue in a {self.h}x{self.w} image; use a squarer size")
        warm = self.rng.random() < 0.5
        self._paint_cue(cue, warm)
        return [(b, warm) for b in blobs]

    def two_hop(self, count: int, one_hop: bool = False) -> list:
        """One square cue near a corner; blobs in rows and columns at least GAP * (H, W) away from the cue's, or
        with ``one_hop`` inside the cue's rows (or columns) and at least that far away along them."""
        side = self._cue_side()
        top, left = self.rng.random() < 0.5, self.rng.random() < 0.5
        dy, dx = (int(self.rng.integers(0, side // 2 + 1)) for _ in range(2))  # distance from the corner
        y0 = dy if top else self.h - side - dy
        x0 = dx if left else self.w - side - dx
        cue = (y0, x0, y0 + side, x0 + side)
        # the blobs' extent: rows beyond the cue's rows by the gap, likewise columns, on the far side
        rows = (cue[2] + GAP * self.h, self.h) if top else (0, cue[0] - GAP * self.h)
        cols = (cue[3] + GAP * self.w, self.w) if left else (0, cue[1] - GAP * self.w)
        if one_hop:  # the cue's rows (or its columns), beyond the gap along them
            rows, cols = ((cue[0], cue[2]), cols) if self.rng.random() < 0.5 else (rows, (cue[1], cue[3]))
        blobs = [self._blob_within(rows, cols) for _ in range(count)]
        warm = self.rng.random() < 0.5
        self._paint_cue(cue, warm)
        return [(b, warm) for b in blobs]

    def band(self, count: int) -> list:
        """Two horizontal bands, each with a cue stripe at its left or right edge (one red, one blue); each
        blob inside one band, at least FAR * W from that band's stripe."""
        half, stripe = self.h // 2, self._cue_side() // 2
        warm_top = self.rng.random() < 0.5
        blobs = []
        for b, (y0, y1) in enumerate(((0, half), (half, self.h))):
            warm = warm_top if b == 0 else not warm_top
            left = self.rng.random() < 0.5
            cue = (y0, 0, y1, stripe) if left else (y0, self.w - stripe, y1, self.w)
            self._paint_cue(cue, warm)
            cols = (stripe + FAR * self.w, self.w) if left else (0, self.w - stripe - FAR * self.w)
            if b == 0 or len(blobs) < count:  # one blob per band, or one in the top band only
                if b == 1 or count == 2 or self.rng.random() < 0.5:
                    blobs.append((self._blob_within((y0 + 1, y1 - 1), cols), warm))
        return blobs

    # ------------------------------------------------------------------ objects
    def blob(self, cy: float, cx: float, ry: float, rx: float, warm: bool) -> None:
        region = ((self.yy - cy) / ry) ** 2 + ((self.xx - cx) / rx) ** 2 <= 1
        stripes = 25 * np.sign(np.sin((self.xx + self.yy) * 0.9))[..., None]
        self.image = np.where(region[..., None], np.array(GREY) + stripes, self.image)
        self.mask[region] = self.WARM if warm else self.COLD

    def disc(self) -> None:
        cy, cx, r = self._centre_and_radius()
        region = (self.yy - cy) ** 2 + (self.xx - cx) ** 2 <= r**2
        self._paint(region, 1, self._colour())

    def box(self) -> None:
        cy, cx, r = self._centre_and_radius()
        ry, rx = self.rng.uniform(0.6, 1.2, size=2) * r
        region = (np.abs(self.yy - cy) <= ry) & (np.abs(self.xx - cx) <= rx)
        shade = np.where((self.yy // 2) % 2 == 0, 1.0, 0.55)[..., None]
        self.image = np.where(region[..., None], self._colour() * shade, self.image)
        self.mask[region] = 2

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        image = self.image + self.rng.normal(0, 12, size=self.image.shape)
        return np.clip(image, 0, 255).astype(np.uint8), self.mask

    # ------------------------------------------------------------------ helpers
    def _cue_side(self, fraction: float = CUE) -> int:
        return max(4, round(fraction * min(self.h, self.w)))

    def _paint_cue(self, box: tuple, warm: bool) -> None:
        self.cues.append((tuple(int(v) for v in box), warm))

    def paint_cues(self) -> None:
        for (y0, x0, y1, x1), warm in self.cues:
            self.image[y0:y1, x0:x1] = RED if warm else BLUE
            self.mask[y0:y1, x0:x1] = self.WARM_CUE if warm else self.COLD_CUE

    def _paint(self, region: np.ndarray, label: int, colour: np.ndarray) -> None:
        self.image[region] = colour
        self.mask[region] = label

    def _radii(self) -> tuple[float, float]:
        return tuple(self.rng.uniform(self.r_min, self.r_max, size=2))

    def _blob_away_from(self, cue: tuple, distance: float) -> Optional[tuple]:
        """A blob (cy, cx, ry, rx) whose every pixel is at least ``distance`` from the cue box, or None."""
        ry, rx = self._radii()
        for _ in range(20):
            cy, cx = self.rng.uniform(ry, self.h - ry), self.rng.uniform(rx, self.w - rx)
            dy = max(cue[0] - cy, cy - cue[2], 0.0) - ry
            dx = max(cue[1] - cx, cx - cue[3], 0.0) - rx
            if np.hypot(max(dy, 0.0), max(dx, 0.0)) >= distance or max(dy, dx) >= distance:
                return cy, cx, ry, rx
        return None

    def _blob_within(self, rows: tuple[float, float], cols: tuple[float, float]) -> tuple:
        """A blob (cy, cx, ry, rx) inside the given row and column ranges (radii shrunk to fit)."""
        ry, rx = self._radii()
        ry = min(ry, (rows[1] - rows[0]) / 2)
        rx = min(rx, (cols[1] - cols[0]) / 2)
        cy = self.rng.uniform(rows[0] + ry, rows[1] - ry)
        cx = self.rng.uniform(cols[0] + rx, cols[1] - rx)
        return cy, cx, ry, rx

    def _centre_and_radius(self) -> tuple[float, float, float]:
        r = self.rng.uniform(self.r_min, self.r_max)
        return self.rng.uniform(r, self.h - r), self.rng.uniform(r, self.w - r), r

    def _colour(self) -> np.ndarray:
        """A saturated colour (max - min channel >= 100) far from the cue colours, so that only cues are red or
        blue and only blobs are grey."""
        while True:
            colour = self.rng.uniform(0, 255, size=3)
            far_from_cues = min(np.abs(colour - RED).sum(), np.abs(colour - BLUE).sum()) >= 150
            if colour.max() - colour.min() >= 100 and far_from_cues:
                return colour
