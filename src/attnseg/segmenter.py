"""A trained checkpoint as a Python object, and as a file other programs load without attnseg.

``Segmenter(checkpoint)`` rebuilds the model a checkpoint holds (head, encoder, classes), normalises images with the
mean and std it was trained with (the data module's, saved in the checkpoint: the encoder's weights' own), runs the
inference mode of its run (``model.inference`` in the run folder's ``config.yaml``; ``Whole`` without one, or the
mode passed) and returns class maps and probabilities at each image's own size::

    from attnseg import Segmenter
    segmenter = Segmenter("runs/attnseg/<run>/checkpoints/best-....ckpt")
    result = segmenter("street.png")          # a path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor
    result.labels                             # (H, W) int64 class indices; segmenter.class_names names them
    result.probabilities                      # (K, H, W) float32, softmax over the classes

``export(segmenter, path)`` (``attnseg export``) writes the whole-image forward, normalisation included, as
TorchScript (``torch.jit.load(path)(images)``: float RGB images (B, 3, H, W) in 0-255 to logits (B, K, H, W), any
batch and size) or as a ``torch.export`` program for one image of a fixed size; either is checked against the model
before the call returns.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors

from attnseg.constants import IMAGENET_MEAN, IMAGENET_STD
from attnseg.data.datamodule import resolve_dataset
from attnseg.data.io import read_image, rgb8
from attnseg.data.transforms import eval_transforms
from attnseg.inference import Whole
from attnseg.task import SegmentationTask
from attnseg.visualize import default_palette

ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


@dataclass
class Segmentation:
    """One image's result: ``labels`` (H, W) int64 class indices and ``probabilities`` (K, H, W) float32."""

    labels: np.ndarray
    probabilities: torch.Tensor


def _inference_of_run(checkpoint: Path) -> Any:
    """The inference mode in the run folder's ``config.yaml`` (``<run>/checkpoints/x.ckpt``), else ``Whole()``."""
    config = checkpoint.parent.parent / "config.yaml"
    try:
        spec = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("inference")
    except (OSError, yaml.YAMLError):
        spec = None
    if not isinstance(spec, dict) or "class_path" not in spec:
        return Whole()
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}))


class Segmenter:
    """A checkpoint that segments images as it was trained and evaluated (see the module's docstring).

    Args:
        checkpoint: a ``.ckpt`` written by ``attnseg fit``.
        device: where the model runs (``"cpu"``, ``"cuda"``...).
        inference: an evaluation mode (``attnseg.inference.Whole``, ``SlidingWindow``, ``MultiScaleFlip``); default:
            the run's own.
    """

    def __init__(self, checkpoint: Union[str, Path], device: str = "cpu", inference: Optional[Any] = None) -> None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"Segmenter: {path}: no such checkpoint file")
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(saved, dict) or "hyper_parameters" not in saved:
            raise ValueError(f"Segmenter: {path}: not a checkpoint written by attnseg fit (no hyper_parameters)")
        self.task = SegmentationTask.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
        self.device = torch.device(device)
        data = saved.get("datamodule_hyper_parameters") or {}
        self.mean = tuple(data.get("mean") or IMAGENET_MEAN)
        self.std = tuple(data.get("std") or IMAGENET_STD)
        self.class_names: list[str] = list(self.task.class_names)
        try:
            palette = getattr(resolve_dataset(data["dataset"]), "palette", ()) if data.get("dataset") else ()
        except ValueError:  # a dataset class this install does not know
            palette = ()
        self.palette = [tuple(c) for c in (palette or default_palette(len(self.class_names)))]
        self.inference = inference if inference is not None else _inference_of_run(path)
        self.transforms = eval_transforms(self.mean, self.std)  # what validation and predict apply

    def normalise(self, image: ImageLike) -> torch.Tensor:
        """An image as the model's input: float (1, 3, H, W), normalised like training."""
        if isinstance(image, (str, Path)):
            pixels = read_image(Path(image))
        elif isinstance(image, Image.Image):
            pixels = torch.from_numpy(rgb8(image, Path("<PIL image>"))).permute(2, 0, 1)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"Segmenter: an array image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
                )
            pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        elif isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
                raise ValueError(f"Segmenter: a tensor image must be (3, H, W) uint8 RGB, got {tuple(image.shape)}")
            pixels = image
        else:
            raise TypeError(f"Segmenter: cannot read an image of type {type(image).__name__}")
        return self.transforms(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)[None].to(self.device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) of normalised images (B, 3, H, W) under the inference mode."""
        return self.inference(self.task.model, images.to(self.device)).float()

    def __call__(self, image: ImageLike) -> Segmentation:
        probabilities = self.logits(self.normalise(image)).softmax(dim=1)[0].cpu()
        return Segmentation(probabilities.argmax(dim=0).numpy(), probabilities)

    def segment(self, images: Sequence[ImageLike]) -> list[Segmentation]:
        """Each image on its own (sizes may differ)."""
        return [self(image) for image in images]


class _WholeImageForward(torch.nn.Module):
    """Float RGB in 0-255 (B, 3, H, W) -> logits of ``out`` (B, K, H, W): normalisation and one forward pass."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.model = segmenter.task.model
        self.register_buffer("mean", torch.tensor(segmenter.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(segmenter.std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)["out"]


def export(
    segmenter: Segmenter, path: Union[str, Path], size: tuple[int, int] = (512, 512), form: str = "torchscript"
) -> Path:
    """Write the whole-image forward (normalisation included) to ``path`` and check the file against the model.

    ``form="torchscript"``: traced at ``size`` (H, W), runs at any batch and size (``torch.jit.load``); checked at
    ``size`` and at a second size. ``form="export"``: a ``torch.export`` program (``torch.export.load(path).module()``)
    for one image of exactly ``size``; checked there. A difference beyond float rounding removes the file and says so.
    """
    if form not in ("torchscript", "export"):
        raise ValueError(f"export: format {form!r}; expected torchscript or export")
    path = Path(path)
    module = _WholeImageForward(segmenter).eval()
    height, width = size
    example = torch.rand(1, 3, height, width, device=segmenter.device) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if form == "torchscript":
            torch.jit.trace(module, example, check_trace=False).save(str(path))
            loaded = torch.jit.load(str(path), map_location=segmenter.device)
            checks = [(2, height, width), (2, height + 40, width + 24)]
        else:
            torch.export.save(torch.export.export(module, (example,)), str(path))
            loaded = torch.export.load(str(path)).module()
            checks = [(1, height, width)]
        for batch, h, w in checks:
            images = torch.rand(batch, 3, h, w, device=segmenter.device) * 255
            expected, got = module(images), loaded(images)
            gap = float((expected - got).abs().max())
            if gap > 1e-4 * max(1.0, float(expected.abs().max())):
                path.unlink(missing_ok=True)
                raise RuntimeError(
                    f"export {path}: the exported model differs from the model at {h}x{w} (max |difference| "
                    f"{gap:.3g}); it was traced at {height}x{width}: export at the size you run it at (--size H W)"
                )
    return path
