"""Evaluation modes for validate / test / predict: whole image, sliding window, multi-scale + flip.

Each mode is called as ``mode(model, images (B, 3, H, W)) -> logits (B, K, H, W)`` where
``model(images)`` returns the head's dict of named logits and ``out`` is the prediction.
Choose one in YAML: ``model.inference: {class_path: attnseg.inference.SlidingWindow, init_args: ...}``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class Whole:
    """One forward pass on the whole image."""

    def __call__(self, model: Model, images: torch.Tensor) -> torch.Tensor:
        return model(images)["out"]

    def __repr__(self) -> str:
        return "Whole()"


class SlidingWindow:
    """Overlapping ``crop_size`` windows every ``stride`` pixels; logits averaged where windows overlap.

    Windows at the right and bottom edges are shifted inwards so they stay inside the image; an
    image smaller than the window is run whole (mmsegmentation's ``slide`` mode).

    Args:
        crop_size: window ``(H, W)``.
        stride: step ``(H, W)`` between windows; default two thirds of the window.
        batch_windows: windows run per forward pass (more is faster, needs more memory).
    """

    def __init__(
        self, crop_size: Sequence[int], stride: Optional[Sequence[int]] = None, batch_windows: int = 4
    ) -> None:
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.stride = tuple(int(s) for s in stride) if stride else tuple(max(1, 2 * c // 3) for c in self.crop_size)
        if min(self.crop_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"SlidingWindow: crop_size={crop_size}, stride={stride}: expected positive sizes")
        self.batch_windows = max(1, batch_windows)

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """``(top, left, bottom, right)`` of every window over an image of this size."""
        (ch, cw), (sh, sw) = self.crop_size, self.stride
        rows = max(height - ch + sh - 1, 0) // sh + 1
        cols = max(width - cw + sw - 1, 0) // sw + 1
        boxes = []
        for r in range(rows):
            for c in range(cols):
                bottom, right = min(r * sh + ch, height), min(c * sw + cw, width)
                boxes.append((max(bottom - ch, 0), max(right - cw, 0), bottom, right))
        return boxes

    def __call__(self, model: Model, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        boxes = self.windows(h, w)
        logits = count = None
        for start in range(0, len(boxes), self.batch_windows):
            chunk = boxes[start : start + self.batch_windows]
            crops = torch.cat([images[:, :, top:bottom, left:right] for top, left, bottom, right in chunk])
            out = model(crops)["out"]
            if logits is None:
                logits = images.new_zeros((b, out.shape[1], h, w), dtype=out.dtype)
                count = images.new_zeros((1, 1, h, w), dtype=out.dtype)
            for i, (top, left, bottom, right) in enumerate(chunk):
                logits[:, :, top:bottom, left:right] += out[i * b : (i + 1) * b]
                count[:, :, top:bottom, left:right] += 1
        return logits / count

    def __repr__(self) -> str:
        return f"SlidingWindow(crop_size={self.crop_size}, stride={self.stride})"


class MultiScaleFlip:
    """Test-time augmentation: the image rescaled by each of ``scales`` (and flipped), softmax
    probabilities averaged at the original size. Returns log-probabilities, so ``argmax`` and
    ``softmax`` behave as on logits.

    Args:
        scales: resize ratios relative to the input image (mmsegmentation: 0.5 ... 1.75).
        flip: also run the horizontally flipped image at every scale.
        base: how each scaled image is run: ``Whole()`` (default) or a ``SlidingWindow``.
    """

    def __init__(
        self,
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
        flip: bool = True,
        base: Optional[Whole | SlidingWindow] = None,
    ) -> None:
        if not scales or min(scales) <= 0:
            raise ValueError(f"MultiScaleFlip: scales={scales}, expected positive ratios")
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.base = base if base is not None else Whole()

    def __call__(self, model: Model, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        probs = None
        runs = 0
        for scale in self.scales:
            scaled = images
            if scale != 1.0:
                hw = [max(1, round(s * scale)) for s in size]
                scaled = F.interpolate(images, size=hw, mode="bilinear", align_corners=False)
            for flipped in (False, True) if self.flip else (False,):
                x = scaled.flip(-1) if flipped else scaled
                logits = self.base(model, x)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                p = logits.float().softmax(dim=1)
                probs = p if probs is None else probs + p
                runs += 1
        return (probs / runs).clamp_min(1e-12).log()

    def __repr__(self) -> str:
        return f"MultiScaleFlip(scales={self.scales}, flip={self.flip}, base={self.base!r})"
