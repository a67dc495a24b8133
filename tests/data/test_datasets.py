"""The benchmark datasets in their own on-disk layouts: tiny generated copies of each layout, the real
Cityscapes frame against its official train ids, and the real CamVid beside the repository."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from attnseg.data import (
    DATASETS,
    VOC,
    CamVid,
    Cityscapes,
    COCOStuff,
    SegDataModule,
)
from attnseg.data.io import voc_palette
from tests.helpers import layouts
from tests.helpers.cli import SHARED

CAMVID = SHARED / "data" / "camvid"
CITYSCAPES_FIXTURE = SHARED / "data" / "fixtures" / "cityscapes"


def expected_labels(name: str, raw: np.ndarray) -> np.ndarray:
    """What each dataset must make of the raw values in its label files (written out independently)."""
    if name == "CamVid":
        return np.where(raw == 11, 255, raw)
    if name == "Cityscapes":
        return np.vectorize(layouts.CITYSCAPES_IDS.get)(raw)
    if name in ("ADE20K", "PascalContext"):  # 0 is not a class; the rest shift down by one
        return np.where(raw == 0, 255, raw - 1)
    return raw  # VOC, COCOStuff: class indices and 255 as stored


# name -> {split: length} of the tiny layouts
LENGTHS = {
    "CamVid": {"train": 3, "val": 2, "test": 2},
    "Cityscapes": {"train": 4, "val": 2, "test": 2},
    "VOC": {"train": 3, "val": 2, "trainval": 5, "aug": 2, "train_aug": 5},
    "ADE20K": {"train": 3, "val": 2},
    "PascalContext": {"train": 3, "val": 2},
    "COCOStuff": {"train": 3, "val": 2},
}
NUM_CLASSES = {"CamVid": 11, "Cityscapes": 19, "VOC": 21, "ADE20K": 150, "PascalContext": 59, "COCOStuff": 171}


@pytest.mark.parametrize("name", sorted(LENGTHS))
def test_tiny_layout_loads_with_the_right_labels(name, tmp_path):
    cls = DATASETS[name]
    root = layouts.LAYOUTS[name](tmp_path)
    for split, length in LENGTHS[name].items():
        ds = cls(root, split)
        assert len(ds) == length, f"{name}/{split}"
        seen = set()
        for i in range(len(ds)):
            image, mask = ds[i]
            assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
            assert image.shape == (3, layouts.H, layouts.W)
            assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
            assert mask.shape == (layouts.H, layouts.W)
            image_path, label_path = ds.samples[i]
            raw = np.array(Image.open(label_path))
            np.testing.assert_array_equal(mask.numpy(), expected_labels(name, raw), err_msg=str(label_path))
            assert np.array_equal(image.permute(1, 2, 0).numpy(), np.array(Image.open(image_path).convert("RGB")))
            seen |= set(mask.unique().tolist())
        assert seen <= set(range(NUM_CLASSES[name])) | {255}
        if (name, split) != ("VOC", "aug"):  # SBD labels have no boundaries
            assert 255 in seen  # the tiny label maps have void pixels


def test_class_metadata():
    for name, k in NUM_CLASSES.items():
        cls = DATASETS[name]
        assert len(cls.classes) == len(set(cls.classes)) == k
        assert len(cls.palette) == k and len(set(cls.palette)) == k  # distinct colours
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in cls.palette)
    assert Cityscapes.classes[:3] == ("road", "sidewalk", "building") and Cityscapes.classes[-1] == "bicycle"
    assert Cityscapes.palette[0] == (128, 64, 128)
    assert CamVid.classes == (
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    )
    assert VOC.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0)) and VOC.palette[15] == (192, 128, 128)


def test_voc_palette_masks_are_read_as_indices(tmp_path):
    root = layouts.voc(tmp_path)
    ds = VOC(root, "val")
    label_path = ds.samples[0][1]
    image = Image.open(label_path)
    assert image.mode == "P"
    indices = np.array(image)
    colours = np.array(image.convert("RGB"))
    assert not np.array_equal(colours[..., 0], indices)  # reading the colours would give other values
    np.testing.assert_array_equal(ds[0][1].numpy(), indices)
    assert (indices == 255).any()  # boundaries are kept as void


def test_voc_train_aug_joins_train_and_aug_with_their_own_labels(tmp_path):
    root = layouts.voc(tmp_path)
    samples = VOC(root, "train_aug").samples
    assert [p.parent.name for _, p in samples] == ["SegmentationClass"] * 3 + ["SegmentationClassAug"] * 2
    assert [p.stem for p, _ in samples] == ["2007_000032", "2007_000039", "2008_000002", "2008_000008", "2009_000001"]


@pytest.mark.parametrize(
    "name, inner", [("VOC", "VOC2012"), ("PascalContext", "VOC2010"), ("ADE20K", "ADEChallengeData2016")]
)
def test_root_may_be_the_devkit_or_the_dataset_folder(name, inner, tmp_path):
    root = layouts.LAYOUTS[name](tmp_path)
    outer, nested = DATASETS[name](root, "val"), DATASETS[name](root / inner, "val")
    assert outer.samples == nested.samples and outer.root == root / inner


def test_cityscapes_ignores_the_other_gtfine_files(tmp_path):
    ds = Cityscapes(layouts.cityscapes(tmp_path), "train")
    assert all(p.name.endswith("_gtFine_labelIds.png") for _, p in ds.samples)
    assert [p.parent.name for p, _ in ds.samples] == ["aachen", "aachen", "bochum", "bochum"]


def test_coco_stuff_reads_the_train_ids_not_the_original_maps(tmp_path):
    ds = COCOStuff(layouts.coco_stuff(tmp_path), "val")
    assert all(p.name.endswith("_labelTrainIds.png") for _, p in ds.samples)


def uniform_neighbourhood(labels: np.ndarray, radius: int) -> np.ndarray:
    """True where every pixel within ``radius`` (a square window, clipped at the borders) has the same label."""
    padded = np.pad(labels, radius, mode="edge")
    h, w = labels.shape
    same = np.ones_like(labels, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + h, dx : dx + w] == labels
    return same


@pytest.mark.skipif(not CITYSCAPES_FIXTURE.is_dir(), reason=f"Cityscapes fixture not found at {CITYSCAPES_FIXTURE}")
def test_cityscapes_fixture_maps_to_the_official_train_ids():
    """The fixture's ``labelTrainIds`` (made by cityscapesScripts) and ``labelIds`` were scaled down separately, so
    they disagree on 77 of 32768 pixels along label borders, where no id -> trainId mapping could match both (e.g.
    some ``road`` pixels are ``sidewalk`` in the oracle). The mapping must match it exactly everywhere else, and
    every label id must map to the train id the oracle gives most of its pixels."""
    ds = Cityscapes(CITYSCAPES_FIXTURE, "val")
    assert len(ds) == 1
    image, mask = ds[0]
    label_path = ds.samples[0][1]
    label_ids = np.array(Image.open(label_path))
    oracle = np.array(Image.open(str(label_path).replace("_labelIds.png", "_labelTrainIds.png"))).astype(np.int64)
    mask = mask.numpy()
    assert image.shape == (3, 128, 256) and len(np.unique(label_ids)) >= 14 and (oracle == 255).any()
    interior = uniform_neighbourhood(label_ids, radius=2)
    assert interior.mean() > 0.6
    np.testing.assert_array_equal(mask[interior], oracle[interior])
    assert (mask == oracle).mean() > 0.997
    for label_id in np.unique(label_ids):
        train_ids, counts = np.unique(oracle[label_ids == label_id], return_counts=True)
        assert np.unique(mask[label_ids == label_id]).tolist() == [train_ids[counts.argmax()]], f"label id {label_id}"


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID} (../shared beside the repository)")
def test_real_camvid_splits_sizes_and_labels():
    for split, length in {"train": 367, "val": 101, "test": 233}.items():
        ds = CamVid(CAMVID, split)
        assert len(ds) == length
        for i in range(0, length, 50):  # decode a sample of every split in full
            image, mask = ds[i]
            assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
            assert set(mask.unique().tolist()) <= set(range(11)) | {255}
        for _, label_path in ds.samples:  # and every label file: values 0-11 only
            raw = np.array(Image.open(label_path))
            assert raw.shape == (360, 480) and raw.max() <= 11, label_path


# ------------------------------------------------------------------------------------------- errors


# ------------------------------------------------------------------------------------- datamodule


def test_datamodule_batches_a_real_layout(tmp_path):
    dm = SegDataModule(
        "Cityscapes",
        root=str(layouts.cityscapes(tmp_path)),
        batch_size=2,
        crop_size=(16, 16),
        num_workers=0,
        base_size=(10, 20),
        scale_range=(1.0, 1.0),
        flip=False,
        test_split="val",
    )
    assert dm.num_classes == 19 and dm.class_names[0] == "road"
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert masks.shape == (2, 16, 16) and masks.dtype == torch.int64
    assert masks[:, 10:].eq(255).all()  # rescaled to 10x15 (base_size) then padded to 16x16 with void
    assert masks[:, :, 15:].eq(255).all()
    dm.setup("validate")
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 3, layouts.H, layouts.W)  # evaluation keeps the full image


def test_every_dataset_is_exported():
    import attnseg.data as data

    for name in ("CamVid", "Cityscapes", "VOC", "ADE20K", "PascalContext", "COCOStuff"):
        assert getattr(data, name) is DATASETS[name] and name in data.__all__
    assert VOC.palette == voc_palette(21)


def test_decoded_cache_reads_each_file_once_and_hands_out_copies(tmp_path, monkeypatch):
    """``data.cache_decoded``: the second epoch decodes nothing, gives the same samples, and a transform that
    writes into its input cannot change what the cache holds."""
    from attnseg.data import CamVid, io
    from tests.helpers.layouts import LAYOUTS

    root = LAYOUTS["CamVid"](tmp_path)
    reads = []
    real = io.read_image
    monkeypatch.setattr(io, "read_image", lambda path: reads.append(path) or real(path))
    plain = CamVid(root, "train")
    cached = CamVid(root, "train")
    cached.keep_decoded()
    first = [cached[i] for i in range(len(cached))]
    assert len(reads) == len(cached)
    for image, mask in first:
        image.zero_(), mask.fill_(255)  # a careless transform writing into its input
    second = [cached[i] for i in range(len(cached))]
    assert len(reads) == len(cached)  # nothing decoded again
    for (image, mask), (ref_image, ref_mask) in zip(second, (plain[i] for i in range(len(plain)))):
        assert torch.equal(image, ref_image) and torch.equal(mask, ref_mask)


def test_cache_decoded_option_reaches_the_datasets(tmp_path):
    from attnseg.data import SegDataModule
    from tests.helpers.layouts import LAYOUTS

    root = LAYOUTS["CamVid"](tmp_path)
    for flag in (False, True):
        data = SegDataModule(dataset="CamVid", root=str(root), crop_size=(8, 8), batch_size=1, cache_decoded=flag)
        data.setup("fit")
        parts = getattr(data.train_dataset, "datasets", [data.train_dataset])
        assert all((part.cache is not None) == flag for part in parts) and (data.val_dataset.cache is not None) == flag
