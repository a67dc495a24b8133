"""SyntheticClips: deterministic clips whose blobs' classes are shown only in another frame, at the same place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from attnseg.data.synthetic_clips import SyntheticClips

C = SyntheticClips


def test_clips_are_deterministic_videos_with_frame_masks():
    ds = SyntheticClips(split="train", num_samples=4, image_size=(40, 48), frames=4, seed=3)
    video, mask = ds[2]
    assert isinstance(video, tv_tensors.Video) and video.shape == (4, 3, 40, 48) and video.dtype == torch.uint8
    assert isinstance(mask, tv_tensors.Mask) and mask.shape == (4, 40, 48) and mask.dtype == torch.int64
    again = SyntheticClips(split="train", num_samples=4, image_size=(40, 48), frames=4, seed=3)[2]
    assert torch.equal(video, again[0]) and torch.equal(mask, again[1])
    other_split = SyntheticClips(split="val", num_samples=4, image_size=(40, 48), frames=4, seed=3)
    assert not torch.equal(video, other_split[2][0])
    assert not torch.equal(video, SyntheticClips(num_samples=4, image_size=(40, 48), frames=4, seed=4)[2][0])


def test_each_blob_takes_the_class_of_the_cue_at_its_place_in_the_one_cue_frame():
    ds = SyntheticClips(num_samples=30, frames=3)
    blobs = 0
    for i in range(len(ds)):
        clip, mask = ds.generate(i)
        cue_frames = [t for t in range(3) if np.isin(mask[t], (C.WARM_CUE, C.COLD_CUE)).any()]
        assert len(cue_frames) == 1  # the cue is in exactly one frame, and no blob is there
        cue = cue_frames[0]
        assert not np.isin(mask[cue], (C.WARM_BLOB, C.COLD_BLOB)).any()
        for t in set(range(3)) - {cue}:
            warm, cold = mask[t] == C.WARM_BLOB, mask[t] == C.COLD_BLOB
            assert np.all(mask[cue][warm] == C.WARM_CUE) and np.all(mask[cue][cold] == C.COLD_CUE)
            assert not np.isin(mask[t], (C.WARM_CUE, C.COLD_CUE)).any()
            blobs += int(warm.any()) + int(cold.any())
    assert blobs > 20


def test_warm_and_cold_blobs_look_the_same_within_a_frame():
    """Nothing in a blob frame tells the classes apart: the blob pixels of both classes have the same colours."""
    ds = SyntheticClips(num_samples=200, frames=2)
    colours = {C.WARM_BLOB: [], C.COLD_BLOB: []}
    for i in range(len(ds)):
        clip, mask = ds.generate(i)
        for label, values in colours.items():
            values.append(clip[mask == label].reshape(-1, 3).astype(float))
    warm, cold = (np.concatenate(v) for v in colours.values())
    assert len(warm) > 10000 and len(cold) > 10000
    assert set(np.unique(warm[:, 0])) == set(np.unique(cold[:, 0]))  # the same two stripe shades
    assert abs(warm.mean() - cold.mean()) < 3  # and the same share of each


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="frames=1, expected 2 or more"):
        SyntheticClips(frames=1)
    with pytest.raises(ValueError, match="image_size=16"):
        SyntheticClips(image_size=16)
    with pytest.raises(ValueError, match="split='nope'"):
        SyntheticClips(split="nope")


def test_the_training_transforms_treat_every_frame_of_a_clip_alike():
    """Scale, crop, flip and photometric distortion with one set of parameters per clip: a clip of identical
    frames stays a clip of identical frames, and its masks follow."""
    from attnseg.data.transforms import eval_transforms, train_transforms

    torch.manual_seed(0)
    video, mask = SyntheticClips(num_samples=2, image_size=64, frames=3)[0]
    same = tv_tensors.Video(video[:1].repeat(3, 1, 1, 1)), tv_tensors.Mask(mask[1:2].repeat(3, 1, 1))
    transforms = train_transforms((40, 48), (0.5, 2.0), None, 0.75, True, True)
    for _ in range(5):
        out_video, out_mask = transforms(*same)
        assert out_video.shape == (3, 3, 40, 48) and out_video.dtype == torch.float32
        assert out_mask.shape == (3, 40, 48) and out_mask.dtype == torch.int64
        assert torch.equal(out_video[0], out_video[2]) and torch.equal(out_mask[0], out_mask[2])
    plain_video, plain_mask = eval_transforms()(video, mask)
    assert plain_video.shape == (3, 3, 64, 64) and torch.equal(plain_mask, mask)


def test_a_batch_of_clips_is_a_batch_of_their_frames_in_clip_order():
    from attnseg.data.datamodule import SameSizeCollate

    ds = SyntheticClips(num_samples=3, image_size=32, frames=4)
    images, masks = SameSizeCollate("data.crop_size")([ds[0], ds[1]])
    assert images.shape == (8, 3, 32, 32) and masks.shape == (8, 32, 32)
    assert torch.equal(images[4:8], ds[1][0].as_subclass(torch.Tensor)) and torch.equal(masks[:4], ds[0][1])
