"""Cityscapes (Cordts et al., CVPR 2016): fine annotations, 19 evaluation classes."""

from __future__ import annotations

from pathlib import Path

from attnseg.constants import IGNORE_INDEX
from attnseg.data.io import FolderDataset, Pairs, list_pairs

# The official label table (cityscapesScripts, helpers/labels.py): name, id (value in *_labelIds.png),
# trainId (255: not evaluated), colour. ``license plate`` (id -1) is never written to the label PNGs.
LABELS = (
    # name                   id  trainId  colour
    ("unlabeled",             0, 255, (0, 0, 0)),
    ("ego vehicle",           1, 255, (0, 0, 0)),
    ("rectification border",  2, 255, (0, 0, 0)),
    ("out of roi",            3, 255, (0, 0, 0)),
    ("static",                4, 255, (0, 0, 0)),
    ("dynamic",               5, 255, (111, 74, 0)),
    ("ground",                6, 255, (81, 0, 81)),
    ("road",                  7,   0, (128, 64, 128)),
    ("sidewalk",              8,   1, (244, 35, 232)),
    ("parking",               9, 255, (250, 170, 160)),
    ("rail track",           10, 255, (230, 150, 140)),
    ("building",             11,   2, (70, 70, 70)),
    ("wall",                 12,   3, (102, 102, 156)),
    ("fence",                13,   4, (190, 153, 153)),
    ("guard rail",           14, 255, (180, 165, 180)),
    ("bridge",               15, 255, (150, 100, 100)),
    ("tunnel",               16, 255, (150, 120, 90)),
    ("pole",                 17,   5, (153, 153, 153)),
    ("polegroup",            18, 255, (153, 153, 153)),
    ("traffic light",        19,   6, (250, 170, 30)),
    ("traffic sign",         20,   7, (220, 220, 0)),
    ("vegetation",           21,   8, (107, 142, 35)),
    ("terrain",              22,   9, (152, 251, 152)),
    ("sky",                  23,  10, (70, 130, 180)),
    ("person",               24,  11, (220, 20, 60)),
    ("rider",                25,  12, (255, 0, 0)),
    ("car",                  26,  13, (0, 0, 142)),
    ("truck",                27,  14, (0, 0, 70)),
    ("bus",                  28,  15, (0, 60, 100)),
    ("caravan",              29, 255, (0, 0, 90)),
    ("trailer",              30, 255, (0, 0, 110)),
    ("train",                31,  16, (0, 80, 100)),
    ("motorcycle",           32,  17, (0, 0, 230)),
    ("bicycle",              33,  18, (119, 11, 32)),
)  # fmt: skip
TRAIN_LABELS = sorted((train_id, name, colour) for name, _, train_id, colour in LABELS if train_id != IGNORE_INDEX)


class Cityscapes(FolderDataset):
    """Cityscapes with fine annotations: 2975 train, 500 val, 1525 test images of 1024x2048.

    Layout (``root`` is the folder holding ``leftImg8bit`` and ``gtFine``, as downloaded)::

        root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

    ``*_labelIds.png`` hold the official label ids 0-33, mapped here to the 19 train ids with the official
    label table (``LABELS``); every other id (``unlabeled``, ``parking``, ``caravan``...) becomes 255. No
    conversion step is needed (the other ``gtFine`` files, ``*_color.png``, ``*_instanceIds.png``,
    ``*_polygons.json`` and a converter's ``*_labelTrainIds.png``, are ignored). The ``test`` labels are not public
    (all void): evaluate on ``val``.

    Args:
        root: the Cityscapes folder.
        split: ``train``, ``val`` or ``test``.
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
    """

    classes = tuple(name for _, name, _ in TRAIN_LABELS)
    palette = tuple(colour for _, _, colour in TRAIN_LABELS)
    splits = ("train", "val", "test")
    layout = (
        "root/leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png and "
        "root/gtFine/{train,val,test}/<city>/*_gtFine_labelIds.png (Cityscapes)"
    )
    label_map = {label_id: train_id for _, label_id, train_id, _ in LABELS}

    def list_samples(self, root: Path, split: str) -> Pairs:
        images = self.folder(root / "leftImg8bit" / split)
        labels = self.folder(root / "gtFine" / split)
        return list_pairs(images, labels, "_leftImg8bit.png", "_gtFine_labelIds.png", pattern="*/*")
