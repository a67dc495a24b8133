"""COCO-Stuff 164k (Caesar et al., CVPR 2018): 80 thing and 91 stuff classes, in mmsegmentation's converted layout."""

from __future__ import annotations

from pathlib import Path

from attnseg.constants import IGNORE_INDEX
from attnseg.data.io import FolderDataset, Pairs, list_pairs, voc_palette


class COCOStuff(FolderDataset):
    """COCO-Stuff 164k, 171 classes: 118k train2017 and 5k val2017 images.

    Layout (``root`` is the ``coco_stuff164k`` folder), as written by mmsegmentation's
    ``tools/dataset_converters/coco_stuff164k.py`` (it adds the ``*_labelTrainIds.png`` files)::

        root/images/{train2017,val2017}/<id>.jpg
        root/annotations/{train2017,val2017}/<id>_labelTrainIds.png

    The ``*_labelTrainIds.png`` hold the train ids 0-170 (the 182 COCO ids with the 11 unused ones removed)
    and 255 for unlabelled pixels. The original ``<id>.png`` label maps beside them are not read.

    Args:
        root: the ``coco_stuff164k`` folder.
        split: ``train`` (``train2017``) or ``val`` (``val2017``).
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
    """

    classes = (
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
        "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
        "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
        "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
        "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
        "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
        "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
        "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
        "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
        "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
        "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
        "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
        "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
        "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
        "waterdrops", "window-blind", "window-other", "wood",
    )  # fmt: skip
    palette = voc_palette(172)[1:]  # VOC's colour map from index 1: no class is black
    splits = ("train", "val")
    layout = (
        "root/images/{train2017,val2017}/*.jpg and root/annotations/{train2017,val2017}/*_labelTrainIds.png, "
        "root = coco_stuff164k (mmsegmentation's converted layout)"
    )
    label_map = {**{i: i for i in range(171)}, IGNORE_INDEX: IGNORE_INDEX}

    def list_samples(self, root: Path, split: str) -> Pairs:
        folder = {"train": "train2017", "val": "val2017"}[split]
        images, labels = self.folder(root / "images" / folder), self.folder(root / "annotations" / folder)
        return list_pairs(images, labels, ".jpg", "_labelTrainIds.png")
