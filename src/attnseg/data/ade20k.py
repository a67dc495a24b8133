"""ADE20K, the SceneParsing benchmark (Zhou et al., CVPR 2017): 150 classes."""

from __future__ import annotations

from pathlib import Path

from attnseg.constants import IGNORE_INDEX
from attnseg.data.io import FolderDataset, Pairs, list_pairs, voc_palette


class ADE20K(FolderDataset):
    """ADEChallengeData2016: 20210 training and 2000 validation images of varying size.

    Layout (``root`` is the ``ADEChallengeData2016`` folder, or the folder holding it)::

        root/images/training/ADE_train_<n>.jpg       root/annotations/training/ADE_train_<n>.png
        root/images/validation/ADE_val_<n>.jpg       root/annotations/validation/ADE_val_<n>.png

    Label PNGs hold 0 ("other", not evaluated) and the classes 1-150: 0 becomes 255 and the rest shift
    down by one; 255 (not in the release) stays void, as with mmsegmentation's ``reduce_zero_label``.

    Args:
        root: ``ADEChallengeData2016`` or its parent.
        split: ``train`` (``training``) or ``val`` (``validation``).
        transforms: a torchvision v2 transform applied to ``(image, mask)``.
    """

    classes = (
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
        "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
        "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
        "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
        "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
        "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
        "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
        "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
        "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
        "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
        "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
        "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
        "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
        "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
        "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
        "glass", "clock", "flag",
    )  # fmt: skip
    palette = voc_palette(151)[1:]  # VOC's colour map from index 1: no class is black
    splits = ("train", "val")
    layout = (
        "root/images/{training,validation}/*.jpg and root/annotations/{training,validation}/*.png, "
        "root = ADEChallengeData2016"
    )
    label_map = {0: IGNORE_INDEX, **{i: i - 1 for i in range(1, 151)}, IGNORE_INDEX: IGNORE_INDEX}
    subfolder = "ADEChallengeData2016"

    def list_samples(self, root: Path, split: str) -> Pairs:
        folder = {"train": "training", "val": "validation"}[split]
        images, labels = self.folder(root / "images" / folder), self.folder(root / "annotations" / folder)
        return list_pairs(images, labels, ".jpg", ".png")
