"""Tiny datasets in each benchmark's on-disk layout (a few 20x30 images written with PIL), shared by the
dataset tests and the CLI tests. Each writer returns the folder to pass as ``root`` / ``--data.root``.

Label values are random draws from the values the real data holds (classes and void), so every mapping
(void -> 255, shifts, Cityscapes ids -> train ids) is exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from attnseg.data.io import voc_palette

H, W = 20, 30
# A few Cityscapes label ids and their official train ids (255: not evaluated), checked independently of the table.
CITYSCAPES_IDS = {
    0: 255,
    1: 255,
    4: 255,
    7: 0,
    8: 1,
    9: 255,
    11: 2,
    17: 5,
    21: 8,
    23: 10,
    24: 11,
    26: 13,
    29: 255,
    33: 18,
}


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (H, W)) -> None:
    """Random RGB image; JPEG or PNG by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


def write_label(path: Path, values: np.ndarray, palette: bool = False) -> None:
    """8-bit label PNG: grey levels (mode L), or palette indices (mode P, VOC's colours) with ``palette=True``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if palette:  # the grey levels become palette indices
        image.putpalette([c for rgb in voc_palette(256) for c in rgb])
    image.save(path)


def random_label(rng: np.random.Generator, values: Sequence[int], size: tuple[int, int] = (H, W)) -> np.ndarray:
    """Blocks of 5x5 pixels, each one of ``values``; the first block row holds ``values[0]`` (void in the callers)."""
    blocks = rng.choice(np.asarray(values), size=(-(-size[0] // 5), -(-size[1] // 5)))
    blocks[0] = values[0]
    return np.kron(blocks, np.ones((5, 5), dtype=blocks.dtype))[: size[0], : size[1]]


def _pairs(image_dir: Path, label_dir: Path, names: Sequence[str], image_ext: str, label_ext: str, values, seed: int):
    rng = np.random.default_rng(seed)
    for name in names:
        write_image(image_dir / f"{name}{image_ext}", rng)
        write_label(label_dir / f"{name}{label_ext}", random_label(rng, values))


def camvid(tmp_path: Path, counts: dict[str, int] = None) -> Path:
    """``CamVid/{train,val,test}/*.png`` + ``{split}annot/*.png``; labels 11 (void) and 0-10."""
    root = tmp_path / "CamVid"
    for i, (split, n) in enumerate((counts or {"train": 3, "val": 2, "test": 2}).items()):
        names = [f"0001TP_{i}{k:05d}" for k in range(n)]
        _pairs(root / split, root / f"{split}annot", names, ".png", ".png", [11, *range(11)], seed=i)
    return root


def cityscapes(tmp_path: Path) -> Path:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
    (and the other gtFine files, which must be ignored)."""
    root = tmp_path / "cityscapes"
    rng = np.random.default_rng(0)
    for split, cities in {"train": ("aachen", "bochum"), "val": ("frankfurt",), "test": ("berlin",)}.items():
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rng)
                ids = random_label(rng, list(CITYSCAPES_IDS))
                write_label(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                write_label(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", ids + 100)
                write_image(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rng)
    return root


def voc(tmp_path: Path) -> Path:
    """``VOCdevkit/VOC2012`` with palette PNGs in ``SegmentationClass`` (0-20, 255 boundaries), grey PNGs in
    ``SegmentationClassAug`` (0-20) and the lists train / val / trainval / aug. Returns ``VOCdevkit``."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(1)
    lists = {"train": ["2007_000032", "2007_000039", "2008_000002"], "val": ["2007_000033", "2007_000042"]}
    lists["trainval"] = sorted(lists["train"] + lists["val"])
    lists["aug"] = ["2008_000008", "2009_000001"]
    for split, ids in lists.items():
        for i in ids:
            write_image(root / "JPEGImages" / f"{i}.jpg", rng)
            if split == "aug":
                write_label(root / "SegmentationClassAug" / f"{i}.png", random_label(rng, list(range(21))))
            elif split != "trainval":
                labels = random_label(rng, [255, *range(21)])
                write_label(root / "SegmentationClass" / f"{i}.png", labels, palette=True)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root.parent


def ade20k(tmp_path: Path) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``; labels 0 (other) and 1-150.
    Returns the folder holding ``ADEChallengeData2016``."""
    root = tmp_path / "ade" / "ADEChallengeData2016"
    for i, (folder, prefix, n) in enumerate([("training", "ADE_train", 3), ("validation", "ADE_val", 2)]):
        names = [f"{prefix}_{k:08d}" for k in range(1, n + 1)]
        _pairs(root / "images" / folder, root / "annotations" / folder, names, ".jpg", ".png", range(151), seed=i)
    return root.parent


def pascal_context(tmp_path: Path) -> Path:
    """``VOCdevkit/VOC2010`` in mmsegmentation's converted layout; labels 0 (background) and 1-59.
    Returns ``VOCdevkit``."""
    root = tmp_path / "VOCdevkit" / "VOC2010"
    lists = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000008", "2008_000019"]}
    for i, (split, ids) in enumerate(lists.items()):
        _pairs(root / "JPEGImages", root / "SegmentationClassContext", ids, ".jpg", ".png", range(60), seed=i)
        (root / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root.parent


def coco_stuff(tmp_path: Path) -> Path:
    """``coco_stuff164k/images/{train2017,val2017}/*.jpg`` + ``annotations/.../*_labelTrainIds.png`` (255 and
    0-170) beside the original ``*.png`` label maps (which must be ignored)."""
    root = tmp_path / "coco_stuff164k"
    rng = np.random.default_rng(2)
    for folder, n in (("train2017", 3), ("val2017", 2)):
        for k in range(n):
            name = f"{k + 1:012d}"
            write_image(root / "images" / folder / f"{name}.jpg", rng)
            labels = random_label(rng, [255, *range(171)])
            write_label(root / "annotations" / folder / f"{name}_labelTrainIds.png", labels)
            write_label(root / "annotations" / folder / f"{name}.png", np.where(labels == 255, 255, labels + 11))
    return root


# dataset class name -> writer of its tiny layout
LAYOUTS = {
    "CamVid": camvid,
    "Cityscapes": cityscapes,
    "VOC": voc,
    "ADE20K": ade20k,
    "PascalContext": pascal_context,
    "COCOStuff": coco_stuff,
}


# ------------------------------------------------------------------------------ CLI cases on the layouts

SMALL = [
    "--data.crop_size=[32,32]",
    "--data.batch_size=2",
    "--data.val_batch_size=1",
    "--data.num_workers=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def data_config_case(config: str, dataset: str):
    """A data group file on top of the quickstart (ResNet-18, CPU), ``--data.root`` at a tiny copy of its layout."""
    from tests.helpers.cli import CONFIGS, QUICKSTART

    def args(tmp_path: Path) -> list:
        return ["--config", QUICKSTART, "--config", CONFIGS / config, "--data.root", LAYOUTS[dataset](tmp_path), *SMALL]

    return args


def experiment_case(config: str, dataset: str, *extra: str):
    """An experiment file with its heavy settings made light: ResNet-18 without weights, 32x32 crops, batch 2, CPU."""
    from tests.helpers.cli import CONFIGS

    def args(tmp_path: Path) -> list:
        return [
            "--config",
            CONFIGS / config,
            "--data.root",
            LAYOUTS[dataset](tmp_path),
            "--model.encoder.name=resnet18",
            "--model.encoder.pretrained=null",
            "--trainer.max_steps=2",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            *SMALL,
            *extra,
        ]

    return args


def pretrained_experiment_case(config: str, dataset: str, package: str):
    """An experiment file on its own pretrained encoder (weights from ``package:<package>``, skipped where that
    package is not installed), with small data: the weights, their normalisation and the recipe load as shipped."""
    from tests.helpers.cli import CONFIGS

    def args(tmp_path: Path) -> list:
        import importlib.util

        import pytest

        from attnseg.weights import PACKAGES

        if importlib.util.find_spec(PACKAGES[package].module) is None:
            pytest.skip(f"not installed: {PACKAGES[package].pip_command}")
        return [
            "--config",
            CONFIGS / config,
            "--data.root",
            LAYOUTS[dataset](tmp_path),
            "--trainer.max_steps=2",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            *SMALL,
        ]

    return args


SMALL_WINDOWS = ["--model.inference.init_args.crop_size=[16,16]", "--model.inference.init_args.stride=[12,12]"]
