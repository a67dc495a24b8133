"""FrameFolders: real videos stored as folders of frames, of which only some are labelled.

Layout (one folder per video and split; frames in the order of their file names)::

    root/<split>/frames/<video>/<frame>.png     every frame of the video (PNG or JPEG)
    root/<split>/labels/<video>/<frame>.png     the labelled frames only: 8-bit class indices, 255 void

A sample is a clip centred on a labelled frame: ``frames`` consecutive frames of its video (the window shifted
inwards at the video's ends), as ``(tv_tensors.Video uint8 (T, 3, H, W), tv_tensors.Mask int64 (T, H, W))``
where only the labelled frame's mask holds its labels and every other frame's mask is void: the loss and the
metrics score each labelled frame once, while attention across the clip sees its neighbours. A label file
without its frame, or a label value outside ``0..K-1`` and 255, is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from attnseg.constants import IGNORE_INDEX
from attnseg.data.io import label_lookup, read_image, read_label, remap_labels, voc_palette

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


class FrameFolders(Dataset):
    """Clips around the labelled frames of videos stored as frame folders (see the module's docstring).

    Args:
        root: the dataset's folder.
        split: a sub-folder of ``root`` (``train``, ``val``, ``test``...).
        transforms: a torchvision v2 transform applied to ``(video, mask)``: the same for every frame.
        classes: the class names, in label order (label value i is class i).
        frames: frames per clip T (1: the labelled frame alone).
    """

    layout = "root/<split>/frames/<video>/<frame>.png with labels of some frames in root/<split>/labels/<video>/"
    classes: tuple[str, ...] = ()  # given per dataset (data.dataset_args.classes)
    palette: tuple[tuple[int, int, int], ...] = ()
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: Optional[str | Path],
        split: str = "train",
        transforms: Optional[Callable] = None,
        classes: Sequence[str] = (),
        frames: int = 3,
    ) -> None:
        if root is None:
            raise ValueError(f"FrameFolders: root is not set (--data.root PATH); expected the layout {self.layout}")
        if not classes:
            raise ValueError("FrameFolders: classes is empty; name them in label order (data.dataset_args.classes)")
        if frames < 1:
            raise ValueError(f"FrameFolders: frames={frames}, expected 1 or more")
        self.classes = tuple(classes)
        self.palette = voc_palette(len(self.classes))
        folder = Path(root).expanduser() / split
        for sub in ("frames", "labels"):
            if not (folder / sub).is_dir():
                raise ValueError(f"FrameFolders: {folder / sub} is not a folder; expected the layout {self.layout}")
        self.split, self.transforms, self.frames = split, transforms, frames
        self.lookup = label_lookup({**{i: i for i in range(len(self.classes))}, IGNORE_INDEX: IGNORE_INDEX})
        self.videos: dict[str, list[Path]] = {}
        self.samples: list[tuple[str, int, Path]] = []  # (video, index of the labelled frame, label file)
        for video in sorted(p for p in (folder / "frames").iterdir() if p.is_dir()):
            self.videos[video.name] = sorted(
                p for p in video.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES
            )
        for labels in sorted(p for p in (folder / "labels").iterdir() if p.is_dir()):
            names = {p.stem: i for i, p in enumerate(self.videos.get(labels.name, []))}
            for label in sorted(p for p in labels.iterdir() if p.is_file() and p.suffix.lower() == ".png"):
                if label.stem not in names:
                    raise ValueError(
                        f"{label}: no frame for this label file; expected {folder / 'frames' / labels.name}/"
                        f"{label.stem}.png (or .jpg)"
                    )
                self.samples.append((labels.name, names[label.stem], label))
        if not self.samples:
            raise ValueError(f"FrameFolders: no labelled frames under {folder / 'labels'}; expected {self.layout}")

    def __len__(self) -> int:
        return len(self.samples)

    def window(self, video: str, index: int) -> list[int]:
        """Indices of the clip's frames: ``frames`` consecutive ones centred on ``index``, inside the video."""
        count = len(self.videos[video])
        start = min(max(index - self.frames // 2, 0), max(count - self.frames, 0))
        return [min(start + k, count - 1) for k in range(self.frames)]  # a video shorter than a clip repeats its end

    def __getitem__(self, i: int):
        video, index, label_path = self.samples[i]
        window = self.window(video, index)
        images = [read_image(self.videos[video][k]) for k in window]
        sizes = {tuple(image.shape[-2:]) for image in images}
        if len(sizes) > 1:
            raise ValueError(f"{self.videos[video][window[0]].parent}: frames of sizes {sorted(sizes)}; expected one")
        raw = read_label(label_path)
        if raw.shape != images[0].shape[-2:]:
            size = tuple(images[0].shape[-2:])
            raise ValueError(f"{label_path}: label map is {tuple(raw.shape)} (H, W), its frame is {size}")
        labels = remap_labels(raw, self.lookup, label_path)
        mask = torch.full((len(window), *labels.shape), IGNORE_INDEX, dtype=torch.int64)
        mask[window.index(index)] = labels
        sample = tv_tensors.Video(torch.stack(images)), tv_tensors.Mask(mask)
        return self.transforms(*sample) if self.transforms is not None else sample
