"""ImageFolder: the images to predict on, every image file in one folder, each at its own size."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torchvision import tv_tensors

from attnseg.data.io import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolder(torch.utils.data.Dataset):
    """Every image file directly inside ``root`` (sorted by name). Every one is read once when the folder is
    opened: unreadable files are all listed in one error before anything is predicted; sub-folders are named in a
    warning (their images are not read).

    ``ds[i]`` is ``(image (3, H, W), info)`` where the image went through ``transforms`` (the datamodule passes its
    evaluation normalisation) and ``info = {"path": str, "name": file stem, "size": (H, W)}`` of the original.

    Args:
        root: the folder.
        transforms: applied to the ``tv_tensors.Image`` uint8 (3, H, W).
        option: the option that named the folder, for error messages.
    """

    def __init__(self, root: str | Path, transforms: Optional[Callable] = None, option: str = "data.predict_dir"):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{option}={str(root)!r}: no such folder")
        self.files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"{option}={str(root)!r}: no images in it (expected files ending in {IMAGE_SUFFIXES})")
        stems = [p.stem for p in self.files]
        twins = sorted({s for s in stems if stems.count(s) > 1})
        if twins:
            raise ValueError(f"{option}={str(root)!r}: several images share the names {twins}; outputs would clash")
        unreadable = []
        for path in self.files:  # every image, before anything is written
            try:
                read_image(path)
            except ValueError as err:
                unreadable.append(str(err))
        if unreadable:
            raise ValueError(
                f"{option}={str(root)!r}: {len(unreadable)} of {len(self.files)} images cannot be read, so nothing "
                "was predicted: " + "; ".join(unreadable[:10]) + (" ..." if len(unreadable) > 10 else "")
            )
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if folders:
            warnings.warn(
                f"{option}={str(root)!r}: the images in its sub-folders are not predicted (only those directly "
                f"inside): {', '.join(folders[:10])}; pass each folder as {option} to predict them",
                stacklevel=2,
            )
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        path = self.files[index]
        image = tv_tensors.Image(read_image(path))
        info = {"path": str(path), "name": path.stem, "size": tuple(image.shape[-2:])}
        if self.transforms is not None:
            image = self.transforms(image)
        return image.as_subclass(torch.Tensor), info


def collate_images(samples: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images of one size; keep the infos as a list."""
    sizes = {tuple(image.shape[-2:]) for image, _ in samples}
    if len(sizes) > 1:
        raise ValueError(f"a predict batch holds images of sizes {sorted(sizes)}; predict one image per batch")
    return torch.stack([image for image, _ in samples]), [info for _, info in samples]
