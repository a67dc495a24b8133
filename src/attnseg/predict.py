"""``attnseg predict``: a folder of images in, colour masks and overlays out.

    attnseg predict --config runs/attnseg/<run>/config.yaml --ckpt_path <run>/checkpoints/best-....ckpt \\
        --data.predict_dir photos/ --prediction.output_dir predictions/

The datamodule's predict dataset is ``attnseg.data.ImageFolder`` (every image file in ``data.predict_dir``,
normalised like evaluation, at its own size, one per batch); ``PredictionWriter`` is a ``BasePredictionWriter``
callback that writes, for ``photos/street.jpg``:

- ``predictions/street_mask.png``: a palette PNG whose pixel values are the class indices and whose colours are
  the dataset's palette (``numpy.array(PIL.Image.open(path))`` gives the class map back);
- ``predictions/street_overlay.png``: the prediction drawn over the original image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from attnseg.data.io import rgb8
from attnseg.visualize import blend, colorize, default_palette, with_legend


class PredictionWriter(BasePredictionWriter):
    """Write ``<name>_mask.png`` (palette PNG of class indices) and ``<name>_overlay.png`` for each predicted image.

    Colours come from the datamodule's ``palette``. Predictions at another size than the original image are
    resized back (nearest neighbour). Batches must carry ``(images, infos)`` as ``ImageFolder`` gives them.

    Args:
        output_dir: folder for the PNG files (created); required by ``attnseg predict``. A folder that already
            holds files is refused unless ``overwrite``.
        overlay: also write the overlays.
        alpha: opacity of the prediction over the image.
        legend: a strip below each overlay naming the classes it shows, by colour (false: the overlay alone, at
            the image's size).
        overwrite: write into a folder that already holds files (files of the same names are replaced).
    """

    def __init__(
        self,
        output_dir: Optional[str] = None,
        overlay: bool = True,
        alpha: float = 0.5,
        overwrite: bool = False,
        legend: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.overlay = overlay
        self.alpha = alpha
        self.overwrite = overwrite
        self.legend = legend
        self.written: list[Path] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if not self.output_dir:
            raise ValueError("prediction.output_dir is not set: name the folder for the masks and overlays")
        out = Path(self.output_dir)
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if present and not self.overwrite:
            raise FileExistsError(
                f"prediction.output_dir {out} already holds {len(present)} file(s) (e.g. {', '.join(present[:3])}): "
                "choose an empty or new folder, or set --prediction.overwrite=true to write over them"
            )
        out.mkdir(parents=True, exist_ok=True)
        self.written = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: torch.Tensor,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], list)):
            raise ValueError("PredictionWriter: expected (images, infos) batches from data.predict_dir")
        names = getattr(pl_module, "class_names", None) or []
        palette = list(getattr(trainer.datamodule, "palette", None) or default_palette(max(len(names), 1)))
        flat_palette = np.zeros((256, 3), dtype=np.uint8)
        flat_palette[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
        out = Path(self.output_dir)
        for labels, info in zip(prediction, batch[1]):
            if tuple(labels.shape[-2:]) != tuple(info["size"]):
                labels = F.interpolate(labels[None, None].float(), size=info["size"], mode="nearest")[0, 0]
            labels = labels.to(torch.uint8).cpu().numpy()
            mask = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
            mask.putpalette(flat_palette.flatten().tolist())
            mask_path = out / f"{info['name']}_mask.png"
            mask.save(mask_path)
            self.written.append(mask_path)
            if self.overlay:
                with Image.open(info["path"]) as img:
                    image = rgb8(img, info["path"])
                overlay_path = out / f"{info['name']}_overlay.png"
                drawn = blend(image, colorize(labels, palette), self.alpha)
                if self.legend:
                    drawn = with_legend(drawn, labels, palette, names)
                Image.fromarray(drawn).save(overlay_path)
                self.written.append(overlay_path)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            kinds = "masks and overlays" if self.overlay else "masks"
            print(f"Wrote {len(self.written)} files ({kinds}) to {self.output_dir}")
