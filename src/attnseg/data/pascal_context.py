"""PASCAL-Context (Mottaghi et al., CVPR 2014), the 59-class setting, in mmsegmentation's converted layout."""

from __future__ import annotations

from pathlib import Path

from attnseg.constants import IGNORE_INDEX
from attnseg.data.io import FolderDataset, Pairs, pairs_from_list, voc_palette


class PascalContext(FolderDataset):
    """PASCAL-Context, 59 classes: 4996 train and 5104 val images of VOC 2010.

    Layout (``root`` is ``VOCdevkit/VOC2010``, or ``VOCdevkit`` holding it), as written by mmsegmentation's
    ``tools/dataset_converters/pascal_context.py`` from ``trainval_merged.json``::

        root/JPEGImages/<id>.jpg
        root/SegmentationClassContext/<id>.png
        root/ImageSets/SegmentationContext/{train,val}.txt

    The converted PNGs hold 0 (background: the 400 other categories) and the 59 classes 1-59 in the
    alphabetical order of ``classes``. In the 59-class setting (mmsegmentation's ``PascalContextDataset59``,
    ``reduce_zero_label=True``) background is not a class: 0 becomes 255 and the rest shift down by one.

    Args:
        root: ``VOCdevkit/VOC2010`` or ``VOCdevkit``.
        split: ``train`` or ``val``.
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
    """

    classes = (
        "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
        "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
        "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
        "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
        "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
        "water", "window", "wood",
    )  # fmt: skip
    palette = voc_palette(60)[1:]  # VOC's colour map from index 1: no class is black
    splits = ("train", "val")
    layout = (
        "root/JPEGImages/*.jpg, root/SegmentationClassContext/*.png and "
        "root/ImageSets/SegmentationContext/{train,val}.txt, root = VOCdevkit/VOC2010 (mmsegmentation's layout)"
    )
    label_map = {0: IGNORE_INDEX, **{i: i - 1 for i in range(1, 60)}, IGNORE_INDEX: IGNORE_INDEX}
    subfolder = "VOC2010"

    def list_samples(self, root: Path, split: str) -> Pairs:
        lists = self.folder(root / "ImageSets" / "SegmentationContext")
        images, labels = self.folder(root / "JPEGImages"), self.folder(root / "SegmentationClassContext")
        return pairs_from_list(lists / f"{split}.txt", images, labels, ".jpg", ".png")
