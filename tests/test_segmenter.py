"""The Python API and the export: ``Segmenter`` segments an image as the trained run evaluates it (its mean/std, its
inference mode), and ``attnseg export`` writes a file whose outputs equal the model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from attnseg import Segmenter
from attnseg.__main__ import run
from attnseg.data.synthetic import SyntheticShapes
from attnseg.data.transforms import eval_transforms
from attnseg.inference import SlidingWindow
from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, run_cli

RUN = [
    "--config",
    QUICKSTART,
    "--config",
    CONFIGS / "model/danet.yaml",
    *FAST,
    "--config",
    CONFIGS / "logger/csv.yaml",
    "--trainer.max_epochs=1",
    "--data.mean=[0.4,0.5,0.6]",
    "--data.std=[0.2,0.25,0.3]",
]


@pytest.fixture
def trained():
    cli = run_cli(
        "fit",
        *RUN,
        "--model.inference=attnseg.inference.SlidingWindow",
        "--model.inference.crop_size=[24,24]",
        "--model.inference.stride=[16,16]",
    )
    return cli, Path(cli.trainer.checkpoint_callback.last_model_path)


def test_segmenter_segments_as_the_run_evaluates(trained):
    cli, ckpt = trained
    segmenter = Segmenter(ckpt)
    assert segmenter.mean == (0.4, 0.5, 0.6) and segmenter.std == (0.2, 0.25, 0.3)  # the run's, not ImageNet's
    assert isinstance(segmenter.inference, SlidingWindow) and segmenter.inference.crop_size == (24, 24)
    assert segmenter.class_names == cli.model.class_names
    image, _ = SyntheticShapes(split="test", image_size=(40, 56), num_samples=1).generate(0)
    result = segmenter(image)
    assert result.labels.shape == (40, 56) and result.probabilities.shape == (7, 40, 56)
    assert torch.allclose(result.probabilities.sum(0), torch.ones(40, 56), atol=1e-5)
    task = cli.model.eval()
    normalised = eval_transforms((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
    )[None]
    with torch.no_grad():
        expected = task.predict_logits(normalised.as_subclass(torch.Tensor)).softmax(1)[0]
    assert torch.allclose(result.probabilities, expected, atol=1e-5)
    Image.fromarray(image).save("street.png")  # a path, a PIL image and a tensor give the same answer
    for same in ("street.png", Image.open("street.png"), torch.from_numpy(image).permute(2, 0, 1)):
        assert np.array_equal(segmenter(same).labels, result.labels)
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) uint8 RGB"):
        segmenter(image.astype(np.float32))
    with pytest.raises(FileNotFoundError, match="nope.ckpt: no such checkpoint file"):
        Segmenter("nope.ckpt")


@pytest.mark.parametrize("form, suffix", [("torchscript", "pt"), ("export", "pt2")])
def test_the_exported_file_equals_the_model(trained, form, suffix, capsys):
    _, ckpt = trained
    assert (
        run(["export", "--ckpt_path", str(ckpt), "--output", f"model.{suffix}", "--format", form, "--size", "40", "48"])
        == 0
    )
    assert f"wrote model.{suffix} ({form}; checked against the model)" in capsys.readouterr().out
    segmenter = Segmenter(ckpt, inference=None)
    image, _ = SyntheticShapes(split="test", image_size=(40, 48), num_samples=1).generate(1)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    loaded = torch.jit.load("model.pt") if form == "torchscript" else torch.export.load("model.pt2").module()
    with torch.no_grad():
        ours = segmenter.task.model(segmenter.normalise(image))["out"]
        assert torch.allclose(loaded(pixels), ours, atol=1e-4)
