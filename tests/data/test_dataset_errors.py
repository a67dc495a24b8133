"""A dataset that is not where or what it should be fails when it is built, naming the file or folder and what was
expected: a wrong root, a missing layout folder or listed file, unpaired images and labels, an empty split, an
unreadable image, a label of another size, label values outside the classes, colour label images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from attnseg.data import (
    ADE20K,
    DATASETS,
    VOC,
    CamVid,
    Cityscapes,
    COCOStuff,
    PascalContext,
)
from tests.helpers import layouts


@pytest.mark.parametrize("name", sorted(layouts.LAYOUTS))
def test_wrong_root_names_the_path_and_the_layout(name, tmp_path):
    cls = DATASETS[name]
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere") as err:
        cls(missing, cls.splits[0])
    assert "layout" in str(err.value)
    with pytest.raises(ValueError, match="root is not set"):
        cls(None, cls.splits[0])
    with pytest.raises(ValueError, match="split='nope'"):
        cls(tmp_path, "nope")


def test_a_folder_without_the_layout_names_the_missing_subfolder(tmp_path):
    root = layouts.cityscapes(tmp_path)
    shutil.rmtree(root / "gtFine" / "val")
    with pytest.raises(ValueError, match="gtFine/val is not a folder"):
        Cityscapes(root, "val")


def test_missing_listed_file_fails_at_construction(tmp_path):
    root = layouts.voc(tmp_path)
    missing = root / "VOC2012" / "JPEGImages" / "2007_000039.jpg"
    missing.unlink()
    listed = root / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    with pytest.raises(ValueError) as error:
        VOC(root, "train")
    assert str(error.value) == f"{missing}: listed in {listed} but not found (1 listed files are missing)"
    (root / "VOC2012" / "JPEGImages" / "2008_000002.jpg").unlink()  # a second file of the training list
    with pytest.raises(ValueError) as error:
        VOC(root, "train")
    assert str(error.value) == f"{missing}: listed in {listed} but not found (2 listed files are missing)"
    with pytest.raises(ValueError, match="2007_000039.jpg"):
        VOC(root, "train_aug")
    VOC(root, "val")  # the other splits are fine
    (root / "VOC2012" / "ImageSets" / "Segmentation" / "aug.txt").unlink()
    with pytest.raises(ValueError, match="aug.txt: split list not found"):
        VOC(root, "aug")


def test_image_without_label_and_label_without_image_fail_at_construction(tmp_path):
    root = layouts.camvid(tmp_path)
    label = sorted((root / "trainannot").iterdir())[1]
    label.unlink()
    with pytest.raises(ValueError, match=f"train/{label.name}: no label file .* expected {label}"):
        CamVid(root, "train")
    image = sorted((root / "val").iterdir())[0]
    image.unlink()
    with pytest.raises(ValueError, match=f"valannot/{image.name}: no image for this label file"):
        CamVid(root, "val")


def test_empty_split_fails(tmp_path):
    root = layouts.ade20k(tmp_path) / "ADEChallengeData2016"
    for folder in ("images", "annotations"):
        shutil.rmtree(root / folder / "validation")
        (root / folder / "validation").mkdir()
    with pytest.raises(ValueError, match="no samples for split 'val'"):
        ADE20K(root, "val")


def test_unreadable_image_fails_naming_the_file(tmp_path):
    root = layouts.pascal_context(tmp_path)
    ds = PascalContext(root, "train")
    broken = ds.samples[1][0]
    broken.write_bytes(b"not a jpeg")
    ds[0]
    with pytest.raises(ValueError, match=f"{broken}: cannot read the image"):
        ds[1]
    truncated = ds.samples[2][1]
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match=f"{truncated}: cannot read the label image"):
        ds[2]


def test_label_size_must_match_the_image(tmp_path):
    root = layouts.coco_stuff(tmp_path)
    ds = COCOStuff(root, "train")
    label = ds.samples[0][1]
    layouts.write_label(label, np.zeros((layouts.H + 1, layouts.W), dtype=np.uint8))
    with pytest.raises(ValueError, match=rf"{label}: label map is \(21, 30\) \(H, W\), its image .* is \(20, 30\)"):
        ds[0]


@pytest.mark.parametrize(
    "name, bad",
    [("CamVid", 12), ("Cityscapes", 34), ("VOC", 21), ("ADE20K", 151), ("PascalContext", 60), ("COCOStuff", 171)],
)
def test_label_value_neither_class_nor_void_fails(name, bad, tmp_path):
    ds = DATASETS[name](layouts.LAYOUTS[name](tmp_path), "val")
    label = ds.samples[0][1]
    raw = np.array(Image.open(label))
    raw[3, 4] = bad
    layouts.write_label(label, raw)
    with pytest.raises(ValueError, match=rf"{label}: label values \[{bad}\] are neither a class nor void"):
        ds[0]


def test_colour_label_image_fails(tmp_path):
    ds = CamVid(layouts.camvid(tmp_path), "test")
    label = ds.samples[0][1]
    Image.new("RGB", (layouts.W, layouts.H)).save(label)
    with pytest.raises(ValueError, match=f"{label}: label image has mode RGB"):
        ds[0]
