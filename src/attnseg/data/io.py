"""Reading benchmark datasets from disk: images, label maps and file lists, with errors that name the file.

``FolderDataset`` is the base of every on-disk dataset: a subclass lists its ``(image, label)`` file pairs
for a split and says how raw label values map to class indices (``label_map``); the base class checks the
root and the listing at construction and every sample when it is read. Nothing is skipped silently:

- a missing root or sub-folder, an empty split, a listed file that does not exist, an image without its
  label file (or a label file without its image) fail at construction;
- an unreadable file, a label map whose size differs from its image, a colour (RGB) label image, or a label
  value that is neither a class nor void fail in ``ds[i]``, naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

Pairs = list[tuple[Path, Path]]


def rgb8(image: Image.Image, path: Path) -> np.ndarray:
    """An opened image as uint8 RGB (H, W, 3): greyscale and palette images converted, 16-bit greyscale scaled to 8
    bits (65535 -> 255; PIL's own conversion clips it, making most 16-bit images white); floating-point images
    refused, since their range is unknown."""
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG/TIFF) or I (32-bit integer holding 16-bit data)
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{path}: integer image with values {values.min()}-{values.max()}; expected 0-65535")
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise ValueError(f"{path}: floating-point image (mode F); expected 8- or 16-bit RGB, greyscale or palette")
    return np.array(image.convert("RGB"))


def read_image(path: Path) -> torch.Tensor:
    """RGB image as uint8 (3, H, W); greyscale and palette images are converted to RGB, 16-bit greyscale scaled
    to 8 bits (``rgb8``)."""
    try:
        with Image.open(path) as image:
            rgb = rgb8(image, path)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        if str(err).startswith(f"{path}: "):  # rgb8's own message
            raise
        raise ValueError(f"{path}: cannot read the image ({err})") from err
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def read_label(path: Path) -> torch.Tensor:
    """Raw label values as int64 (H, W) from an 8-bit single-channel PNG.

    Palette (``P`` mode) images, such as VOC's ``SegmentationClass``, are read as their indices, not their colours.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P"):
                raise ValueError(
                    f"{path}: label image has mode {image.mode}; expected an 8-bit single-channel label map "
                    f"(mode L or P) holding one label value per pixel, not a colour rendering"
                )
            values = np.array(image)
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot read the label image ({err})") from err
    return torch.from_numpy(values.astype(np.int64))


def label_lookup(label_map: dict[int, int]) -> torch.Tensor:
    """A (256,) table raw value -> class index (or 255 = void); -1 marks values that are neither."""
    table = torch.full((256,), -1, dtype=torch.int64)
    for raw, label in label_map.items():
        table[raw] = label
    return table


def value_ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 255] -> '0-2, 5, 255'``: a short description of a set of label values."""
    runs: list[list[int]] = []
    for value in sorted(set(values)):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def remap_labels(raw: torch.Tensor, lookup: torch.Tensor, path: Path) -> torch.Tensor:
    """Raw label values -> class indices / 255 through ``lookup``; unknown values raise, naming ``path``."""
    labels = lookup[raw]
    invalid = labels < 0
    if invalid.any():
        bad = raw[invalid].unique()[:8].tolist()
        valid = value_ranges(torch.nonzero(lookup >= 0).flatten().tolist())
        raise ValueError(f"{path}: label values {bad} are neither a class nor void; expected values in {valid}")
    return labels


def list_pairs(image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str, pattern: str = "*") -> Pairs:
    """Pair ``image_dir/<key><image_suffix>`` with ``label_dir/<key><label_suffix>`` for every key (sorted).

    ``pattern`` is the glob of the key's folders and stem: ``*`` for flat folders, ``*/*`` for one sub-folder
    level (Cityscapes' cities). Suffixes match whatever their case (``.PNG`` is a ``.png``). An image without its
    label file, a label file without its image, or a broken symbolic link raises.
    """
    images = _files(image_dir, pattern, image_suffix)
    labels = _files(label_dir, pattern, label_suffix)
    unlabelled, orphans = sorted(images.keys() - labels.keys()), sorted(labels.keys() - images.keys())
    if unlabelled:
        key = unlabelled[0]
        raise ValueError(
            f"{images[key]}: no label file for this image; expected {label_dir / (key + label_suffix)} "
            f"({len(unlabelled)} images without labels)"
        )
    if orphans:
        key = orphans[0]
        raise ValueError(
            f"{labels[key]}: no image for this label file; expected {image_dir / (key + image_suffix)} "
            f"({len(orphans)} label files without images)"
        )
    return [(images[key], labels[key]) for key in sorted(images)]


def pairs_from_list(list_file: Path, image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str) -> Pairs:
    """``(image_dir/<id><image_suffix>, label_dir/<id><label_suffix>)`` for every id (one per line) of ``list_file``.

    Every listed file must exist: the first missing one raises, with the number of missing files.
    """
    if not list_file.is_file():
        raise ValueError(f"{list_file}: split list not found")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    pairs = [(image_dir / f"{i}{image_suffix}", label_dir / f"{i}{label_suffix}") for i in ids]
    missing = [p for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: listed in {list_file} but not found ({len(missing)} listed files are missing)")
    return pairs


def voc_palette(num_colours: int) -> tuple[tuple[int, int, int], ...]:
    """PASCAL VOC's colour map: the bits of the index spread over the high bits of R, G and B."""
    colours = []
    for index in range(num_colours):
        rgb, c = [0, 0, 0], index
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << bit
            c >>= 3
        colours.append(tuple(rgb))
    return tuple(colours)


def _key(path: Path, folder: Path, suffix: str) -> str:
    return path.relative_to(folder).as_posix()[: -len(suffix)]


def _files(folder: Path, pattern: str, suffix: str) -> dict[str, Path]:
    """``{key: path}`` of the files under ``folder`` matching ``pattern`` and ending in ``suffix`` (any case); a
    broken symbolic link among them raises, naming it and its target."""
    found, broken = {}, []
    for path in folder.glob(pattern):
        if not path.name.lower().endswith(suffix.lower()):
            continue
        if path.is_symlink() and not path.exists():
            broken.append(path)
        elif path.is_file():
            found[_key(path, folder, suffix)] = path
    if broken:
        raise ValueError(
            f"{broken[0]}: broken symbolic link (to {os.readlink(broken[0])}); expected a readable file "
            f"({len(broken)} broken link(s) in {folder})"
        )
    return found


class FolderDataset(Dataset):
    """Base of the on-disk datasets: ``ds[i]`` is ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))``.

    A subclass sets ``classes``, ``palette``, ``splits``, ``layout`` (the expected folder layout, quoted in
    errors), ``label_map`` (raw label value -> class index or 255; any other value is an error) and
    ``subfolder`` (optional: used as the root when the given root contains it), and implements
    ``list_samples(root, split)``.

    Args:
        root: the dataset's folder, as downloaded (see the subclass's layout).
        split: one of ``splits``.
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
    """

    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    splits: tuple[str, ...] = ()
    layout: str = ""
    label_map: dict[int, int] = {}
    subfolder: Optional[str] = None

    def __init__(
        self, root: Union[str, Path, None], split: str = "train", transforms: Optional[Callable] = None
    ) -> None:
        name = type(self).__name__
        if split not in self.splits:
            raise ValueError(f"{name}: split={split!r}, expected one of {self.splits}")
        if root is None:
            raise ValueError(f"{name}: root is not set (--data.root PATH); expected the layout {self.layout}")
        root = Path(root).expanduser()
        if self.subfolder is not None and (root / self.subfolder).is_dir():
            root = root / self.subfolder
        self.root = self.folder(root)
        self.split = split
        self.transforms = transforms
        self.samples = self.list_samples(self.root, split)
        if not self.samples:
            raise ValueError(
                f"{name}: no samples for split {split!r} under {self.root}; expected the layout {self.layout}"
            )
        self.lookup = label_lookup(self.label_map)
        self.cache: Optional[dict[int, tuple[torch.Tensor, torch.Tensor]]] = None  # see ``keep_decoded``

    def keep_decoded(self) -> None:
        """Keep each decoded image and label in memory after its first read: later reads skip decoding and
        label remapping (the transforms still run every time, on copies). Each loader worker keeps its own."""
        if self.cache is None:
            self.cache = {}

    def folder(self, path: Path) -> Path:
        """``path`` if it is a folder, else an error naming it and the expected layout."""
        if not path.is_dir():
            raise ValueError(f"{type(self).__name__}: {path} is not a folder; expected the layout {self.layout}")
        return path

    def list_samples(self, root: Path, split: str) -> Pairs:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def decoded(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image uint8 (3, H, W) and class-index mask int64 (H, W) of sample ``index``, before any transform."""
        if self.cache is not None and index in self.cache:
            image, mask = self.cache[index]
            return image.clone(), mask.clone()
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[-2:]:
            size = tuple(image.shape[-2:])
            raise ValueError(f"{label_path}: label map is {tuple(raw.shape)} (H, W), its image {image_path} is {size}")
        mask = remap_labels(raw, self.lookup, label_path)
        if self.cache is not None:
            self.cache[index] = (image.clone(), mask.clone())
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self.decoded(index)
        sample = tv_tensors.Image(image), tv_tensors.Mask(mask)
        return self.transforms(*sample) if self.transforms is not None else sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {len(self)} samples)"
