"""CamVid (Brostow et al., Pattern Recognition Letters 2009) in the SegNet layout: 11 classes at 360x480."""

from __future__ import annotations

from pathlib import Path

from attnseg.constants import IGNORE_INDEX
from attnseg.data.io import FolderDataset, Pairs, list_pairs


class CamVid(FolderDataset):
    """CamVid as distributed with the SegNet tutorial (367 train, 101 val, 233 test images of 360x480).

    Layout (``root`` is the ``CamVid`` folder)::

        root/train/*.png        root/trainannot/*.png   (same file names)
        root/val/*.png          root/valannot/*.png
        root/test/*.png         root/testannot/*.png

    Label PNGs store the class id 0-10 as the pixel value; 11 (``Unlabelled``) is void and becomes 255.
    The usual protocol trains on ``train`` (+ ``val``) and reports mIoU on ``test``.

    Args:
        root: the ``CamVid`` folder.
        split: ``train``, ``val`` or ``test``.
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
    """

    classes = (
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    )  # fmt: skip
    # SegNet's colours (palette11.png of the SegNet tutorial).
    palette = (
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    )  # fmt: skip
    splits = ("train", "val", "test")
    layout = "root/{train,val,test}/*.png with labels of the same names in root/{train,val,test}annot/ (SegNet CamVid)"
    label_map = {**{i: i for i in range(11)}, 11: IGNORE_INDEX}

    def list_samples(self, root: Path, split: str) -> Pairs:
        return list_pairs(self.folder(root / split), self.folder(root / f"{split}annot"), ".png", ".png")
