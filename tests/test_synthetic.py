import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from attnseg.data import SyntheticShapes
from attnseg.data.synthetic import BLUE, RED


def test_deterministic_per_seed_and_split():
    a = SyntheticShapes(split="train", image_size=48, seed=3)
    b = SyntheticShapes(split="train", image_size=48, seed=3)
    for i in (0, 5, 17):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    other_seed = SyntheticShapes(split="train", image_size=48, seed=4)
    other_split = SyntheticShapes(split="val", image_size=48, seed=3)
    assert not torch.equal(a[0][0], other_seed[0][0])
    assert not torch.equal(a[0][0], other_split[0][0])


@pytest.mark.parametrize("size", [32, (40, 72), (97, 129)])
def test_any_size_and_count(size):
    ds = SyntheticShapes(split="val", image_size=size, num_samples=5)
    assert len(ds) == 5
    image, mask = ds[4]
    h, w = (size, size) if isinstance(size, int) else size
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, h, w)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (h, w)
    with pytest.raises(IndexError):
        ds[5]


def test_every_class_occurs():
    ds = SyntheticShapes(split="train", image_size=64, num_samples=64)
    seen = set()
    for i in range(len(ds)):
        seen |= set(ds[i][1].unique().tolist())
    assert seen == set(range(len(SyntheticShapes.classes)))


def test_blob_class_is_decided_by_the_distant_bar_only():
    """warm/cold blobs look the same; only the bar at the top edge tells them apart."""
    ds = SyntheticShapes(split="train", image_size=64, num_samples=200)
    warm, cold = ds.classes.index("warm_blob"), ds.classes.index("cold_blob")
    warm_pixels, cold_pixels = [], []
    for i in range(len(ds)):
        image, mask = ds.generate(i)
        bar = image[: 64 // 10].reshape(-1, 3).mean(0)
        labels = set(np.unique(mask).tolist())
        is_red = np.abs(bar - RED).sum() < np.abs(bar - BLUE).sum()
        assert not (labels >= {warm, cold})
        if warm in labels:
            assert is_red
            warm_pixels.append(image[mask == warm])
        if cold in labels:
            assert not is_red
            cold_pixels.append(image[mask == cold])
        blob_rows = np.nonzero((mask == warm) | (mask == cold))[0]
        if len(blob_rows):
            assert blob_rows.min() > 64 // 4  # far from the bar
    # identical appearance: the same mean colour and spread within a few grey levels
    warm_pixels, cold_pixels = np.concatenate(warm_pixels), np.concatenate(cold_pixels)
    assert np.abs(warm_pixels.mean(0) - cold_pixels.mean(0)).max() < 3
    assert np.abs(warm_pixels.std(0) - cold_pixels.std(0)).max() < 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="split='nope'"):
        SyntheticShapes(split="nope")
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(image_size=8)
