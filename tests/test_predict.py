"""``attnseg predict``: a trained run's config and checkpoint turn a folder of images of mixed sizes into colour
masks (palette PNGs of the model's own class maps) and overlays; missing inputs get clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from attnseg.data import ImageFolder, SegDataModule
from attnseg.data.synthetic import SyntheticShapes
from attnseg.data.transforms import eval_transforms
from attnseg.predict import PredictionWriter
from attnseg.task import SegmentationTask
from tests.helpers.cli import CONFIGS, FAST, QUICKSTART, run_cli


@pytest.fixture
def images(tmp_path) -> Path:
    """Two quickstart-like images of different sizes (PNG and JPEG) and a file that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, size in (("street.png", (40, 40)), ("beach.jpg", (32, 40))):
        image, _ = SyntheticShapes(split="test", image_size=size, num_samples=1).generate(0)
        Image.fromarray(image).save(folder / name, quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.slow
def test_predict_writes_masks_and_overlays(images, tmp_path, capsys):
    fit = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--config",
        CONFIGS / "logger/csv.yaml",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.precision=32-true",
        "--model.channels_last=false",
    )  # fp32, as the reference below
    run = Path(fit.trainer.logger.log_dir)
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "predictions"
    cli = run_cli(
        "predict",
        "--config",
        run / "config.yaml",
        "--ckpt_path",
        ckpt,
        "--data.predict_dir",
        images,
        "--prediction.output_dir",
        out,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "beach_mask.png",
        "beach_overlay.png",
        "street_mask.png",
        "street_overlay.png",
    ]
    assert f"Wrote 4 files (masks and overlays) to {out}" in capsys.readouterr().out

    model = SegmentationTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    transforms = eval_transforms()
    classes = set()
    for name in ("street.png", "beach.jpg"):
        original = np.asarray(Image.open(images / name).convert("RGB"))
        mask = Image.open(out / f"{Path(name).stem}_mask.png")
        overlay = Image.open(out / f"{Path(name).stem}_overlay.png")
        # original size, class indices as pixel values, the dataset's colours as the palette
        h, w = original.shape[:2]
        assert mask.mode == "P" and mask.size == (w, h)
        assert overlay.size[0] == w and overlay.size[1] > h  # the image, then the legend strip below it
        assert np.asarray(mask.getpalette()[:21]).reshape(7, 3).tolist() == [list(c) for c in SyntheticShapes.palette]
        x = transforms(tv_tensors.Image(torch.from_numpy(original.copy()).permute(2, 0, 1)))
        with torch.no_grad():
            expected = model.predict_step(x[None], 0)[0].numpy()
        assert np.array_equal(np.asarray(mask), expected)
        classes.update(np.unique(expected).tolist())
        # the overlay is the image tinted by the class colours; the legend shows a swatch of each class present
        colours = np.asarray(SyntheticShapes.palette, dtype=np.float32)[expected]
        blended = 0.5 * original.astype(np.float32) + 0.5 * colours
        drawn = np.asarray(overlay.convert("RGB"))
        assert np.abs(drawn[:h].astype(np.float32) - blended).max() <= 1
        strip = drawn[h:].reshape(-1, 3)
        for k in np.unique(expected):
            assert (strip == SyntheticShapes.palette[k]).all(axis=1).sum() >= 14 * 12  # a swatch's inside
        assert strip[:, None].tolist().count([[255, 255, 255]]) > strip.shape[0] // 2  # a white strip
    assert len(classes) > 1  # the comparison above is between non-trivial class maps
    assert cli.trainer.state.finished

    # a second predict into the same folder: refused, and nothing there is touched (byte for byte)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(
        FileExistsError, match=rf"prediction.output_dir {out} already holds 4 file\(s\) .*--prediction.overwrite=true"
    ):
        run_cli(
            "predict",
            "--config",
            run / "config.yaml",
            "--ckpt_path",
            ckpt,
            "--data.predict_dir",
            images,
            "--prediction.output_dir",
            out,
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "street_mask.png").write_bytes(b"stale")
    run_cli(
        "predict",
        "--config",
        run / "config.yaml",
        "--ckpt_path",
        ckpt,
        "--data.predict_dir",
        images,
        "--prediction.output_dir",
        out,
        "--prediction.overwrite=true",
    )
    assert (out / "street_mask.png").read_bytes() == before["street_mask.png"]  # written again, the same


def test_predict_errors(images, tmp_path):
    with pytest.raises(ValueError, match=r"data.predict_dir='.*nowhere': no such folder"):
        run_cli(
            "predict",
            "--config",
            QUICKSTART,
            *FAST,
            "--trainer.logger=false",
            "--data.predict_dir",
            tmp_path / "nowhere",
            "--prediction.output_dir",
            tmp_path / "out",
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match="no images in it"):
        ImageFolder(empty)
    with pytest.raises(ValueError, match="data.predict_dir is not set"):
        SegDataModule().setup("predict")
    with pytest.raises(ValueError, match="prediction.output_dir is not set"):
        PredictionWriter().setup(None, None, "predict")
    (images / "street.jpeg").write_bytes((images / "beach.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"share the names \['street'\]"):
        ImageFolder(images)


def test_image_folder_keeps_names_and_sizes(images):
    ds = ImageFolder(images, eval_transforms())
    assert [p.name for p in ds.files] == ["beach.jpg", "street.png"]
    image, info = ds[1]
    assert info["name"] == "street" and info["size"] == (40, 40) and image.shape == (3, 40, 40)
    assert image.dtype == torch.float32 and image.mean().abs() < 3  # normalised
    dm = SegDataModule(predict_dir=str(images), num_workers=0)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [b[0].shape[-2:] for b in batches] == [(32, 40), (40, 40)]
    assert [b[1][0]["name"] for b in batches] == ["beach", "street"]


@pytest.mark.slow
def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_in_every_reader(tmp_path):
    """A 16-bit greyscale PNG (mode I;16) is read as its 8-bit scaling (65535 -> 255), not clipped to white, by the
    datasets' reader, the predict folder and the overlays; a floating-point image is refused naming the file."""
    from attnseg.data.io import read_image

    folder = tmp_path / "photos"
    folder.mkdir()
    values = (np.arange(40 * 40, dtype=np.int64).reshape(40, 40) * 40).astype(np.uint16)  # 0 .. 63960
    Image.fromarray(values).save(folder / "xray.png")
    assert Image.open(folder / "xray.png").mode == "I;16"
    grey = ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    read = read_image(folder / "xray.png")
    assert read.shape == (3, 40, 40) and all(np.array_equal(read[c].numpy(), grey) for c in range(3))
    assert read.float().mean() < 130  # PIL's convert("RGB") gives 255 almost everywhere
    assert np.array_equal(ImageFolder(folder)[0][0].numpy(), read.numpy())

    fit = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.logger=false",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.precision=32-true",
        "--model.channels_last=false",
        "--trainer.default_root_dir",
        tmp_path / "run",
    )
    ckpt = fit.trainer.checkpoint_callback.last_model_path or fit.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "predictions"
    run_cli(
        "predict",
        "--config",
        QUICKSTART,
        *FAST,
        "--trainer.logger=false",
        "--ckpt_path",
        ckpt,
        "--trainer.precision=32-true",
        "--model.channels_last=false",
        "--prediction.legend=false",
        "--data.predict_dir",
        folder,
        "--prediction.output_dir",
        out,
    )
    mask = np.asarray(Image.open(out / "xray_mask.png"))
    colours = np.asarray(SyntheticShapes.palette, dtype=np.float32)[mask]
    blended = 0.5 * np.repeat(grey[..., None], 3, axis=2).astype(np.float32) + 0.5 * colours
    assert (
        np.abs(np.asarray(Image.open(out / "xray_overlay.png").convert("RGB")).astype(np.float32) - blended).max() <= 1
    )

    Image.fromarray(values.astype(np.float32) / 65535).save(tmp_path / "depth.tiff")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'depth.tiff'}: floating-point image \(mode F\)"):
        read_image(tmp_path / "depth.tiff")


def test_unreadable_images_are_all_listed_before_anything_is_written(images, tmp_path):
    """Two broken files among the images: predict names both and writes nothing (so a rerun needs no overwrite);
    a sub-folder is named in a warning; a failed predict leaves no run folder behind."""
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (images / "zz.jpg").write_text("not a jpeg")
    (images / "more").mkdir()
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"2 of 4 images cannot be read, so nothing was predicted: .*broken.png.*zz.jpg"
    ):
        run_cli(
            "predict",
            "--config",
            QUICKSTART,
            *FAST,
            "--config",
            CONFIGS / "logger/csv.yaml",
            "--data.predict_dir",
            images,
            "--prediction.output_dir",
            out,
        )
    assert not out.exists() and not list(Path("runs/attnseg").glob("*"))
    (images / "broken.png").unlink()
    (images / "zz.jpg").unlink()
    with pytest.warns(UserWarning, match=r"sub-folders are not predicted .*: more"):
        assert len(ImageFolder(images)) == 2
