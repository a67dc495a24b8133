"""FrameFolders: clips around the labelled frames of videos stored as folders of frames (a fixture made here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from attnseg.data import FrameFolders, SegDataModule

CLASSES = ["road", "car", "tree"]


def make_videos(root: Path, split: str = "train") -> dict[str, list[int]]:
    """Two videos (5 and 2 frames of 12x16): frame k of a video is filled with the value 10 * k + video; a few
    frames labelled. Returns the labelled frame indices per video."""
    labelled = {"street": [0, 2, 4], "park": [1]}
    for v, (video, count) in enumerate((("street", 5), ("park", 2))):
        for k in range(count):
            folder = root / split / "frames" / video
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 16, 3), 10 * k + v, dtype=np.uint8)).save(folder / f"{k:04d}.png")
            if k in labelled[video]:
                label = np.full((12, 16), k % 3, dtype=np.uint8)
                label[0] = 255
                (root / split / "labels" / video).mkdir(parents=True, exist_ok=True)
                Image.fromarray(label).save(root / split / "labels" / video / f"{k:04d}.png")
    return labelled


def test_clips_are_centred_on_labelled_frames_and_only_those_are_scored(tmp_path):
    make_videos(tmp_path)
    ds = FrameFolders(tmp_path, "train", classes=CLASSES, frames=3)
    assert len(ds) == 4  # park 1, then street 0, 2, 4 (videos by name)
    # windows shifted inside the video; a short one repeats
    expected = {
        0: ("park", [0, 1, 1], 1),
        1: ("street", [0, 1, 2], 0),
        2: ("street", [1, 2, 3], 2),
        3: ("street", [2, 3, 4], 4),
    }
    for i, (video, window, labelled) in expected.items():
        clip, mask = ds[i]
        assert isinstance(clip, tv_tensors.Video) and clip.shape == (3, 3, 12, 16)
        v = 0 if video == "street" else 1
        assert [int(clip[t, 0, 5, 5]) for t in range(3)] == [10 * k + v for k in window]
        scored = [t for t in range(3) if (mask[t] != 255).any()]
        assert scored == [window.index(labelled)]  # the labelled frame only, once
        assert torch.all(mask[scored[0], 1:] == labelled % 3) and torch.all(mask[scored[0], 0] == 255)


def test_the_datamodule_batches_clips_as_frames_with_the_given_classes(tmp_path):
    make_videos(tmp_path)
    make_videos(tmp_path, "val")
    data = SegDataModule(
        dataset="FrameFolders",
        root=str(tmp_path),
        dataset_args={"classes": CLASSES, "frames": 3},
        batch_size=2,
        val_batch_size=2,
        crop_size=None,
        scale_range=None,
        photometric=False,
        num_workers=0,
    )
    assert data.class_names == CLASSES and len(data.palette) == 3
    data.setup("fit")
    images, masks = next(iter(data.train_dataloader()))
    assert images.shape == (6, 3, 12, 16) and masks.shape == (6, 12, 16)
    assert int((masks != 255).flatten(1).any(1).sum()) == 2  # one labelled frame per clip


def test_layout_errors_name_the_file(tmp_path):
    make_videos(tmp_path)
    orphan = tmp_path / "train" / "labels" / "street" / "0009.png"
    Image.fromarray(np.zeros((12, 16), dtype=np.uint8)).save(orphan)
    with pytest.raises(ValueError, match=rf"{orphan}: no frame for this label file; expected .*street/0009.png"):
        FrameFolders(tmp_path, "train", classes=CLASSES)
    orphan.unlink()
    bad = tmp_path / "train" / "labels" / "street" / "0002.png"
    Image.fromarray(np.full((12, 16), 7, dtype=np.uint8)).save(bad)
    with pytest.raises(ValueError, match=rf"{bad}: label values \[7\] are neither a class nor void"):
        FrameFolders(tmp_path, "train", classes=CLASSES)[2]
    with pytest.raises(ValueError, match="FrameFolders: .*val/frames is not a folder; expected the layout root/"):
        FrameFolders(tmp_path, "val", classes=CLASSES)
    with pytest.raises(ValueError, match="no class names; set data.dataset_args.classes"):
        SegDataModule(dataset="FrameFolders", root=str(tmp_path))
