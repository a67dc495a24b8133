"""PASCAL VOC 2012 (Everingham et al., IJCV 2010) with the SBD augmented training set (Hariharan et al., ICCV 2011)."""

from __future__ import annotations

from pathlib import Path

from attnseg.data.io import FolderDataset, Pairs, pairs_from_list, voc_palette


class VOC(FolderDataset):
    """PASCAL VOC 2012 segmentation, 21 classes (background + 20 objects); 255 (object boundaries) is void.

    Layout (``root`` is ``VOCdevkit/VOC2012``, or ``VOCdevkit`` holding it), as left by mmsegmentation's
    ``tools/dataset_converters/voc_aug.py`` for the augmented set::

        root/JPEGImages/<id>.jpg
        root/SegmentationClass/<id>.png          VOC's palette PNGs (read as indices; 255 on boundaries)
        root/SegmentationClassAug/<id>.png       SBD labels converted to PNG (the augmented set)
        root/ImageSets/Segmentation/train.txt    1464 ids
        root/ImageSets/Segmentation/val.txt      1449 ids
        root/ImageSets/Segmentation/trainval.txt
        root/ImageSets/Segmentation/aug.txt      SBD ids in neither train nor val (9118 ids)

    Splits: ``train``, ``val``, ``trainval`` (labels from ``SegmentationClass``), ``aug`` (labels from
    ``SegmentationClassAug``) and ``train_aug`` = ``train`` + ``aug``: the 10582 training images of the
    augmented set, each with its own annotation, exactly as mmsegmentation's ``pascal_voc12_aug`` config joins
    them. ``aug.txt`` and ``SegmentationClassAug`` are only needed for ``aug`` and ``train_aug``.

    Args:
        root: ``VOCdevkit/VOC2012`` or ``VOCdevkit``.
        split: ``train``, ``val``, ``trainval``, ``aug`` or ``train_aug``.
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
    """

    classes = (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    )  # fmt: skip
    palette = voc_palette(21)
    splits = ("train", "val", "trainval", "aug", "train_aug")
    layout = (
        "root/{JPEGImages,SegmentationClass,SegmentationClassAug}/ and root/ImageSets/Segmentation/"
        "{train,val,trainval,aug}.txt, root = VOCdevkit/VOC2012 (mmsegmentation's VOC + SBD layout)"
    )
    label_map = {**{i: i for i in range(21)}, 255: 255}
    subfolder = "VOC2012"

    def list_samples(self, root: Path, split: str) -> Pairs:
        if split == "train_aug":
            return self.list_samples(root, "train") + self.list_samples(root, "aug")
        label_dir = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
        lists = self.folder(root / "ImageSets" / "Segmentation")
        images, labels = self.folder(root / "JPEGImages"), self.folder(root / label_dir)
        return pairs_from_list(lists / f"{split}.txt", images, labels, ".jpg", ".png")
