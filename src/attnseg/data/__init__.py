"""Datasets (one file each), transforms and the LightningDataModule.

Every dataset has the signature ``Dataset(root, split, transforms=None)``; ``ds[i]`` is
``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`` with void = 255, and the
class carries ``classes`` (names) and ``palette`` (RGB per class).
"""

from attnseg.data.ade20k import ADE20K
from attnseg.data.camvid import CamVid
from attnseg.data.cityscapes import Cityscapes
from attnseg.data.coco_stuff import COCOStuff
from attnseg.data.datamodule import SegDataModule
from attnseg.data.frame_folders import FrameFolders
from attnseg.data.image_folder import ImageFolder
from attnseg.data.pascal_context import PascalContext
from attnseg.data.registry import DATASETS
from attnseg.data.synthetic import SyntheticShapes
from attnseg.data.synthetic_clips import SyntheticClips
from attnseg.data.voc import VOC

__all__ = [
    "ADE20K",
    "COCOStuff",
    "CamVid",
    "Cityscapes",
    "DATASETS",
    "ImageFolder",
    "PascalContext",
    "SegDataModule",
    "FrameFolders",
    "SyntheticClips",
    "SyntheticShapes",
    "VOC",
]
