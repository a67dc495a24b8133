import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from attnseg.data import SyntheticShapes
from attnseg.data.synthetic import BLUE, FAR, GAP, GREY, ONE_HOP, RED, VARIANTS

C = {name: i for i, name in enumerate(SyntheticShapes.classes)}


def samples(variant, size=128, n=60, split="train"):
    ds = SyntheticShapes(split=split, image_size=size, num_samples=n, variant=variant)
    return [ds.generate(i) for i in range(n)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic_per_seed_split_and_variant(variant):
    a = SyntheticShapes(split="train", image_size=48, seed=3, variant=variant)
    b = SyntheticShapes(split="train", image_size=48, seed=3, variant=variant)
    for i in (0, 5, 17):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    other_seed = SyntheticShapes(split="train", image_size=48, seed=4, variant=variant)
    other_split = SyntheticShapes(split="val", image_size=48, seed=3, variant=variant)
    assert not torch.equal(a[0][0], other_seed[0][0])
    assert not torch.equal(a[0][0], other_split[0][0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [32, (40, 72), (97, 129)])
def test_any_size_and_count(size, variant):
    ds = SyntheticShapes(split="val", image_size=size, num_samples=5, variant=variant)
    assert len(ds) == 5
    image, mask = ds[4]
    h, w = (size, size) if isinstance(size, int) else size
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, h, w)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (h, w)
    with pytest.raises(IndexError):
        ds[5]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_class_occurs(variant):
    seen = set()
    for _, mask in samples(variant, size=64, n=64):
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SyntheticShapes.classes)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_blob_class_is_the_colour_of_its_cue_and_blobs_look_alike(variant):
    """warm/cold blobs are the same grey ellipses; the cue's colour (red: warm, blue: cold) decides the label, and
    only cues are red or blue."""
    pixels = {C["warm_blob"]: [], C["cold_blob"]: []}
    for image, mask in samples(variant):
        for cue, colour in ((C["warm_cue"], RED), (C["cold_cue"], BLUE)):
            if (mask == cue).any():
                assert np.abs(image[mask == cue].mean(0) - colour).max() < 8
        for blob in pixels:
            if (mask == blob).any():
                pixels[blob].append(image[mask == blob])
                assert np.abs(image[mask == blob].mean(0) - GREY).max() < 12
        for other in ("disc", "box"):  # distractors are never near the cue colours
            if (mask == C[other]).any():
                mean = image[mask == C[other]].mean(0)
                assert min(np.abs(mean - RED).sum(), np.abs(mean - BLUE).sum()) > 60
        if variant != "band":  # one cue per image: all its blobs take its colour
            labels = set(np.unique(mask).tolist())
            assert not labels >= {C["warm_blob"], C["cold_blob"]}
            assert (C["warm_blob"] in labels) <= (C["warm_cue"] in labels)
            assert (C["cold_blob"] in labels) <= (C["cold_cue"] in labels)
    warm, cold = (np.concatenate(pixels[c]).astype(float) for c in (C["warm_blob"], C["cold_blob"]))
    assert np.abs(warm.mean(0) - cold.mean(0)).max() < 3 and np.abs(warm.std(0) - cold.std(0)).max() < 3


def _points(mask, *labels):
    return np.argwhere(np.isin(mask, labels))


def test_far_cue_is_far_from_every_blob():
    for _, mask in samples("far"):
        blobs, cues = _points(mask, C["warm_blob"], C["cold_blob"]), _points(mask, C["warm_cue"], C["cold_cue"])
        assert len(blobs) and len(cues)
        distance = np.sqrt(((blobs[:, None] - cues[None]) ** 2).sum(-1)).min()
        assert distance >= FAR * 128 - 1


def _axis_gaps(blobs, cues):
    """Gap between the blob pixels' rows and the cue's (first), and between their columns; negative: they overlap."""
    return [max(blobs[:, a].min() - cues[:, a].max(), cues[:, a].min() - blobs[:, a].max()) for a in (0, 1)]


@pytest.mark.parametrize("split", ["val", "test"])
def test_two_hop_cue_shares_no_row_and_no_column_with_a_blob(split):
    for _, mask in samples("two_hop", split=split):
        blobs, cues = _points(mask, C["warm_blob"], C["cold_blob"]), _points(mask, C["warm_cue"], C["cold_cue"])
        assert len(blobs) and len(cues)
        assert min(_axis_gaps(blobs, cues)) >= GAP * 128 - 1  # the two spans are apart by the gap, both ways


def test_two_hop_trains_on_one_hop_images_too():
    """About ONE_HOP of the train images put their blobs inside the cue's rows or columns, at least the gap away
    along them (one step reaches the cue); every other train image is two-hop, as val and test."""
    one_hop = 0
    for _, mask in samples("two_hop", n=200, split="train"):
        blobs, cues = _points(mask, C["warm_blob"], C["cold_blob"]), _points(mask, C["warm_cue"], C["cold_cue"])
        gaps = _axis_gaps(blobs, cues)
        if min(gaps) < 0:  # sharing rows (or columns): inside the cue's span, far along the other axis
            one_hop += 1
            along = 1 if gaps[0] < 0 else 0
            assert gaps[1 - along] < 0 and gaps[along] >= GAP * 128 - 1
            span = cues[:, 1 - along]
            assert span.min() <= blobs[:, 1 - along].min() and blobs[:, 1 - along].max() <= span.max()
        else:
            assert min(gaps) >= GAP * 128 - 1
    assert abs(one_hop / 200 - ONE_HOP) < 0.1


def test_band_blobs_take_their_own_bands_cue_and_both_colours_are_present():
    for _, mask in samples("band"):
        assert (mask == C["warm_cue"]).any() and (mask == C["cold_cue"]).any()  # a global summary cannot tell
        for blob in (C["warm_blob"], C["cold_blob"]):
            rows = np.unique(_points(mask, blob)[:, 0])
            if not len(rows):
                continue
            cue = C["warm_cue"] if blob == C["warm_blob"] else C["cold_cue"]
            band_rows = np.unique(_points(mask, cue)[:, 0])
            assert set(rows) <= set(band_rows)  # every blob row crosses its own cue stripe
            columns = _points(mask, blob)[:, 1]
            stripe = _points(mask, cue)[:, 1]
            assert np.abs(columns[:, None] - stripe[None]).min() >= FAR * 128 - 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="split='nope'"):
        SyntheticShapes(split="nope")
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(image_size=8)
    with pytest.raises(ValueError, match=r"variant='near'.*'far', 'two_hop', 'band'"):
        SyntheticShapes(variant="near")
