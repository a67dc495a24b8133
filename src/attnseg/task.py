"""SegmentationTask: the LightningModule. Losses, metrics, logging; the optimiser and schedule in ``attnseg.optim``.

It never knows which head or dataset it runs: the head says which outputs it returns and
their default loss weights; the CLI links the dataset's class count and names in.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional, Sequence, Union

import torch
from jsonargparse import lazy_instance
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

from attnseg.compiling import compile_or_eager
from attnseg.constants import IGNORE_INDEX, class_series
from attnseg.divergence import DivergenceGuard
from attnseg.encoder import Encoder, EncoderConfig
from attnseg.heads import FCNHead
from attnseg.inference import MultiScaleFlip, SlidingWindow, Whole
from attnseg.layout import contiguous_dilated_depthwise
from attnseg.losses import CrossEntropy
from attnseg.model import SegmentationModel
from attnseg.optim import apply_options_on_resume, configure_optimizers

# A head class with its options bound; called with (encoder channels, num_classes).
HeadFactory = Callable[[Sequence[int], int], nn.Module]


def _images_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the model with ``channels_last``: its images (B, 3, H, W) in the channels-last format."""
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


class SegmentationTask(LightningModule):
    """Train and evaluate ``SegmentationModel(Encoder, head)``.

    Args:
        num_classes: number of classes; required (the CLI links it from the datamodule's dataset).
        head: the head class and its options (``class_path`` + ``init_args``); built from the encoder's
            channels and ``num_classes``.
        encoder: timm encoder name, output stride, local pretrained file.
        ignore_index: label value excluded from losses and metrics (linked from the datamodule).
        class_names: names for per-class metrics (linked from the datamodule).
        loss: segmentation loss applied to every output the head does not give its own loss, e.g.
            ``attnseg.losses.CrossEntropy`` or ``attnseg.losses.OHEMCrossEntropy``.
        aux_loss: the loss of every such output other than ``out`` (``aux``, ``pam``, ``stage1``...), where it
            differs from ``loss``; None: ``loss`` (CCNet's recipe: OHEM on ``out``, plain cross-entropy on ``aux``).
        loss_weights: override the head's default loss weight of a named output, e.g. ``{aux: 0.2}``;
            a weight of 0 skips that term.
        optimizer: ``sgd`` (momentum, nesterov off) or ``adamw``, built from ``lr``, ``momentum`` and
            ``weight_decay``; or any optimiser class with its init args, as LightningCLI takes them
            (``--model.optimizer=torch.optim.RMSprop --model.optimizer.lr=1e-3``): it gets the same encoder / head
            parameter groups, its own ``lr`` for the encoder and ``lr * head_lr_mult`` for the head, its own weight
            decay except where ``no_decay_norm_bias`` sets 0 (``model.lr/momentum/weight_decay`` are then unused).
        lr: base learning rate of the encoder; the head gets ``lr * head_lr_mult``.
        momentum: SGD momentum (AdamW: beta1).
        weight_decay: weight decay of the parameters (all of them unless ``no_decay_norm_bias``).
        no_decay_norm_bias: no weight decay on normalisation layers' parameters and on biases (DFN's recipe).
        head_lr_mult: learning-rate multiplier for the randomly initialised head.
        lr_scheduler: None (the default): the poly schedule below with its warmup, stepped every iteration. Or any
            scheduler class with its init args (``--model.lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR
            --model.lr_scheduler.T_max=4000``), stepped every ``lr_scheduler_interval``; ``ReduceLROnPlateau``
            watches ``val/mIoU`` (give it ``mode: max``). ``poly_power``, ``min_lr`` and ``warmup_*`` are then unused.
        lr_scheduler_interval: ``step`` or ``epoch``: when an injected ``lr_scheduler`` steps.
        poly_power: poly schedule ``lr * (1 - iter / max_iter) ** power``, stepped every iteration.
        min_lr: the schedule's floor.
        warmup_iters: linear warmup from ``lr * warmup_ratio`` over this many iterations.
        warmup_ratio: starting fraction of the learning rate during warmup.
        inference: evaluation mode: ``attnseg.inference.Whole``, ``SlidingWindow`` or ``MultiScaleFlip``.
        nonfinite_loss: what a NaN or infinite training loss does: ``raise`` stops training with a message naming
            the step and the loss terms (checkpoints already written are kept); ``skip`` skips that step's update
            and puts back the batch norm statistics its forward changed (single process only); with ``skip`` a
            forward that leaves a batch norm statistic NaN or infinite, though its loss is finite, is skipped too.
        divergence_factor: a training loss above this many times the loss of the first step of the fit stops
            training as diverged (None: no check). Whatever this is, training stops when a parameter or buffer
            becomes non-finite (checked before each validation) and no checkpoint with a non-finite tensor is
            written.
        channels_last: speed knob: keep the model's 4-D weights and every batch's images in the channels-last
            memory format (faster convolutions with bf16/fp16 on recent GPUs and with oneDNN on CPUs). Same results.
            None (the default): the ``attnseg`` command turns it on for CPU runs on CPUs with AMX or AVX512-BF16,
            with bf16 autocast (``trainer.precision`` unset); otherwise off.
        compile: speed knob: ``torch.compile`` the model (``nn.Module.compile``, in place: parameter names and
            checkpoints are unchanged). The first steps, and the first step at each new input size, compile. A
            model that cannot be compiled says so in one warning and runs eager (``attnseg.compiling``).
    """

    def __init__(
        self,
        num_classes: int,
        head: HeadFactory = FCNHead,
        encoder: EncoderConfig = EncoderConfig(),
        ignore_index: int = IGNORE_INDEX,
        class_names: Optional[list[str]] = None,
        loss: nn.Module = lazy_instance(CrossEntropy),
        aux_loss: Optional[nn.Module] = None,
        loss_weights: Optional[dict[str, float]] = None,
        optimizer: Union[Literal["sgd", "adamw"], OptimizerCallable] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        no_decay_norm_bias: bool = False,
        head_lr_mult: float = 10.0,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        poly_power: float = 0.9,
        min_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
        inference: Union[Whole, SlidingWindow, MultiScaleFlip] = lazy_instance(Whole),
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        divergence_factor: Optional[float] = 1000.0,
        channels_last: Optional[bool] = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "aux_loss", "inference"])
        # an optimiser / scheduler class with its arguments (the CLI keeps them in the checkpoint's config)
        self.optimizer_factory = None if isinstance(optimizer, str) else optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.guard = DivergenceGuard(nonfinite_loss, divergence_factor)
        self._labelled_pixels = torch.zeros((), dtype=torch.long)  # non-void training pixels of the epoch
        if isinstance(encoder, dict):
            encoder = EncoderConfig(**encoder)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"model.class_names has {len(class_names)} names, model.num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]

        enc = Encoder.from_config(encoder)
        self.model = SegmentationModel(enc, head(enc.channels, num_classes))

        self.loss = loss
        self.aux_loss = aux_loss
        self.output_losses = self.model.head.output_losses
        criteria = [("model.loss", loss)] + ([("model.aux_loss", aux_loss)] if aux_loss is not None else [])
        for name, criterion in criteria + [(f"the head's {k} loss", v) for k, v in self.output_losses.items()]:
            if getattr(criterion, "ignore_index", ignore_index) != ignore_index:
                raise ValueError(
                    f"{name} ignores label {criterion.ignore_index} but the data's ignore_index is {ignore_index}; "
                    "make them agree (model.loss.init_args.ignore_index, or the dataset's void label)"
                )
        self.loss_weights = dict(self.model.head.loss_weights)
        for name, weight in (loss_weights or {}).items():
            if name not in self.loss_weights:
                raise ValueError(
                    f"model.loss_weights has {name!r}, but {type(self.model.head).__name__} returns "
                    f"{sorted(self.loss_weights)}"
                )
            self.loss_weights[name] = float(weight)
        self.inference = inference

        def metrics(prefix: str) -> MetricCollection:
            k, ig = num_classes, ignore_index
            return MetricCollection(
                {
                    "mIoU": MulticlassJaccardIndex(k, average="macro", ignore_index=ig),
                    "IoU": MulticlassJaccardIndex(k, average=None, ignore_index=ig, zero_division=math.nan),
                    "confmat": MulticlassConfusionMatrix(k, ignore_index=ig),
                    "aAcc": MulticlassAccuracy(k, average="micro", ignore_index=ig),
                },
                prefix=prefix,
                compute_groups=True,
            )

        self.val_metrics = metrics("val/")
        self.test_metrics = metrics("test/")
        # the last computed metrics of each stage ({"val/mIoU": ..., "val/IoU": (K,), "val/confmat": (K, K), ...}),
        # for callbacks (the dashboard's tables) and scripts
        self.last_metrics: dict[str, dict[str, torch.Tensor]] = {}
        self._speed_knobs_applied = False

    # ----------------------------------------------------------------------------------- speed knobs
    def configure_model(self) -> None:
        """Apply ``channels_last`` and ``compile`` once, when the trainer sets up (fit, validate, test or predict)."""
        if self._speed_knobs_applied:
            return
        self._speed_knobs_applied = True
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.model.register_forward_pre_hook(_images_channels_last)
            if self._root_device().type == "cpu":  # their bf16 weight gradient is wrong in channels-last on CPUs
                contiguous_dilated_depthwise(self.model)
        if self.hparams.compile:
            compile_or_eager(self.model, type(self.model.head).__name__)

    def _root_device(self) -> torch.device:
        """The device the trainer runs on (the model is still on the CPU when ``configure_model`` runs)."""
        return self._trainer.strategy.root_device if self._trainer is not None else self.device

    # ----------------------------------------------------------------------------------- steps
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)

    def compute_losses(self, outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss term of every named output (terms with weight 0 are skipped)."""
        terms = {}
        for name, logits in outputs.items():
            if name not in self.loss_weights:
                raise RuntimeError(f"{type(self.model.head).__name__} returned {name!r}, which has no loss weight")
            weight = self.loss_weights[name]
            if weight:
                if name in self.output_losses:
                    criterion = self.output_losses[name]
                else:
                    criterion = self.aux_loss if name != "out" and self.aux_loss is not None else self.loss
                terms[name] = weight * criterion(logits, masks)
        return terms

    def on_train_epoch_start(self) -> None:
        self._labelled_pixels = torch.zeros((), dtype=torch.long, device=self.device)

    def on_train_epoch_end(self) -> None:
        if int(self._labelled_pixels) == 0:
            rank_zero_warn(
                f"epoch {self.current_epoch}: every label pixel of the training batches was void "
                f"({self.ignore_index}): the loss is 0 and nothing is learnt; check the label files and the dataset's "
                "label_map "
                "(attnseg check-data reads them all)"
            )

    def on_validation_epoch_start(self) -> None:
        """Before validating (and so before any checkpoint of this step): every parameter and buffer is finite."""
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.guard.check_model(self.model, self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.guard.check_checkpoint(checkpoint, self.global_step)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        skipping = self.guard.nonfinite_loss == "skip" and self.trainer.world_size == 1
        saved = self.guard.statistics(self.model, skipping)
        terms = self.compute_losses(self.model(images), masks)
        loss = sum(terms.values())
        skipped = self.guard.check_step(terms, saved, skipping, self.global_step, self.current_epoch)
        if skipped:
            rank_zero_warn(skipped)
            self.log("train/skipped_steps", 1.0, reduce_fx="sum", on_step=False, on_epoch=True)
            return None
        self._labelled_pixels += (masks != self.ignore_index).sum()  # no synchronisation: read at the epoch's end
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/loss_{name}": t.detach() for name, t in terms.items()}, batch_size=bs)
        return loss

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) of ``out`` under the configured inference mode."""
        return self.inference(self.model, images)

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Scores the batch; returns its predictions (B, H, W), which callbacks receive (the overlays)."""
        images, masks = batch
        preds = self.predict_logits(images).argmax(dim=1)
        self.val_metrics.update(preds, masks)
        return preds

    def test_step(self, batch, batch_idx: int) -> None:
        images, masks = batch
        self.test_metrics.update(self.predict_logits(images).argmax(dim=1), masks)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_logits(images).argmax(dim=1)

    def on_validation_epoch_end(self) -> None:
        self.last_metrics["val"] = self._log_metrics(self.val_metrics, "val/")

    def on_test_epoch_end(self) -> None:
        self.last_metrics["test"] = self._log_metrics(self.test_metrics, "test/")

    def _log_metrics(self, collection: MetricCollection, prefix: str) -> dict[str, torch.Tensor]:
        values = collection.compute()
        collection.reset()
        self.log(f"{prefix}mIoU", values[f"{prefix}mIoU"], prog_bar=True)
        self.log(f"{prefix}aAcc", values[f"{prefix}aAcc"])
        series = class_series(len(self.class_names))  # many classes: the per-class IoU goes to the IoU table only
        for name, iou in zip(self.class_names, values[f"{prefix}IoU"]):
            self.log(f"{prefix}IoU/{name}", iou, logger=None if series else False)
        return values

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another head, encoder or class count with a message naming both."""
        ours = self.state_dict()
        theirs = checkpoint.get("state_dict", {})
        differ = [
            f"{k}: checkpoint {tuple(theirs[k].shape) if k in theirs else 'missing'}, model "
            f"{tuple(ours[k].shape) if k in ours else 'missing'}"
            for k in sorted(set(ours) | set(theirs))
            if k.startswith("model.") and (k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
        ]
        if differ:
            hp = checkpoint.get("hyper_parameters", {})
            path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
            head = hp.get("head", {}).get("class_path", "?") if isinstance(hp.get("head"), dict) else "?"
            enc = hp.get("encoder", {}).get("name", "?") if isinstance(hp.get("encoder"), dict) else "?"
            raise ValueError(
                f"{path or 'checkpoint'}: made for head {head} on {enc} with {hp.get('num_classes', '?')} classes, "
                f"but this model is {type(self.model.head).__name__} on {self.model.encoder.name} with "
                f"{self.num_classes} classes; {len(differ)} tensors differ, e.g. " + "; ".join(differ[:3])
            )

    # --------------------------------------------------------------------------- optimisation (attnseg.optim)
    def configure_optimizers(self):
        return configure_optimizers(self)

    def on_train_start(self) -> None:
        """A resumed run restores the optimiser and schedule saved in its checkpoint: set them from this run's
        options (``attnseg.optim.apply_options_on_resume``)."""
        apply_options_on_resume(self)
