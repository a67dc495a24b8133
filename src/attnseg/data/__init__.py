"""Datasets (one file each), transforms and the LightningDataModule.

Every dataset has the signature ``Dataset(root, split, transforms=None)``; ``ds[i]`` is
``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`` with void = 255, and the
class carries ``classes`` (names) and ``palette`` (RGB per class).
"""

from attnseg.data.datamodule import SegDataModule
from attnseg.data.synthetic import SyntheticShapes

DATASETS = {
    "SyntheticShapes": SyntheticShapes,
}

__all__ = ["DATASETS", "SegDataModule", "SyntheticShapes"]
