"""Helpers that tests plug into the CLI by class_path (``tests.helpers.faults.<Name>``; the repository root is on
sys.path)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch
from lightning.pytorch import Callback

from attnseg.data import SyntheticShapes
from attnseg.losses import CrossEntropy


class NaNAfter(CrossEntropy):
    """Cross-entropy that turns NaN from its ``nan_from``-th call on (0-based)."""

    def __init__(self, ignore_index: int = 255, nan_from: int = 4) -> None:
        super().__init__(ignore_index)
        self.nan_from = nan_from
        self.calls = 0

    def forward(self, logits, mask):
        loss = super().forward(logits, mask)
        self.calls += 1
        return loss * float("nan") if self.calls > self.nan_from else loss


class ExtraClassShapes(SyntheticShapes):
    """SyntheticShapes that claims one more class: a dataset whose class count differs."""

    classes = SyntheticShapes.classes + ("extra",)
    palette = SyntheticShapes.palette + ((255, 255, 255),)


class Probe(Callback):
    """Writes the global step at the start of fit and the final metrics to a JSON file (rank 0)."""

    def __init__(self, path: str = "probe.json") -> None:
        self.path = Path(path)

    def _write(self, trainer, **values):
        if trainer.is_global_zero:
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
            data.update(values)
            self.path.write_text(json.dumps(data))

    def on_train_start(self, trainer, pl_module):
        self._write(trainer, start_step=trainer.global_step, start_epoch=trainer.current_epoch)

    def on_train_end(self, trainer, pl_module):
        self._write(trainer, end_step=trainer.global_step)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self._write(trainer, val=metrics, world_size=trainer.world_size)

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, test={k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})


def finite(state_dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


class FailingShapes(SyntheticShapes):
    """SyntheticShapes whose sample ``bad_index`` raises (a corrupt file found mid-epoch) from its ``after``-th read
    of that sample on (0-based), like a file that goes bad while the run is going."""

    def __init__(self, *args, bad_index: int = 5, after: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_index, self.after, self.reads = bad_index, after, 0

    def __getitem__(self, index: int):
        if index == self.bad_index:
            self.reads += 1
            if self.reads > self.after:
                raise ValueError(f"broken/sample_{index}.png: truncated image (expected a readable PNG)")
        return super().__getitem__(index)


class OptimizerProbe(Callback):
    """Writes, at the first training batch of a fit, each parameter group's learning rate, weight decay and the
    sum of the optimiser's state tensors (moments) to a JSON file, and the global step."""

    def __init__(self, path: str = "optimizer.json") -> None:
        self.path = Path(path)
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.done:
            return
        self.done = True
        opt = trainer.optimizers[0]
        moments = sum(float(t.double().sum()) for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
        self.path.write_text(
            json.dumps(
                {
                    "step": trainer.global_step,
                    "epoch": trainer.current_epoch,
                    "lr": [g["lr"] for g in opt.param_groups],
                    "weight_decay": [g["weight_decay"] for g in opt.param_groups],
                    "moments": moments,
                }
            )
        )


class PoisonBatchNorm(Callback):
    """Sets the first BatchNorm's running variance to inf after the first training step (parameters stay
    finite, the loss too, for a while): a run that diverged without a NaN loss."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for module in pl_module.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.data.fill_(float("inf"))  # .data: autograd saw the old one, as in a real overflow
                return


class StopWithLast(Callback):
    """At step ``at``, write ``last.ckpt`` as a stop signal does (``Interruption``) and stop: before the checkpoint
    callback has saved anything itself."""

    def __init__(self, at: int = 1) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            from attnseg.interruption import Interruption

            Interruption._save(trainer)
            trainer.should_stop = True


class InterruptOnce(Callback):
    """Raises KeyboardInterrupt (Ctrl+C) after training step ``step``, once: the first time, it creates ``flag``;
    with ``flag`` present it does nothing."""

    def __init__(self, flag: str, step: int = 2) -> None:
        self.flag, self.step = Path(flag), step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.flag.exists():
            self.flag.touch()
            raise KeyboardInterrupt


class StopSignalThenError(Callback):
    """After training step ``step``, once (creating ``flag``): sends this process SIGTERM and then fails the step
    with an error, as when the job's stop signal also killed a loader worker before the step ended."""

    def __init__(self, flag: str, step: int = 2) -> None:
        self.flag, self.step = Path(flag), step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.flag.exists():
            self.flag.touch()
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid(s) 12345) exited unexpectedly")


class NaNImageShapes(SyntheticShapes):
    """SyntheticShapes whose training sample ``bad_index`` is all NaN after its transforms (a corrupt decode): the
    forward of its batch is NaN, batch norm statistics included."""

    def __init__(self, *args, bad_index: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_index = bad_index

    def __getitem__(self, index: int):
        image, mask = super().__getitem__(index)
        if index == self.bad_index and self.split == "train":
            image = image.float() * float("nan")
        return image, mask


class StopDuringValidation(Callback):
    """Sends this process SIGTERM at validation batch ``batch`` of the validation after training step ``step``."""

    def __init__(self, step: int = 4, batch: int = 1) -> None:
        self.step, self.batch = step, batch

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.global_step == self.step and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


class Slow(Callback):
    """Sleeps ``seconds`` after every training step, so that a test can signal a run in the middle of it."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        time.sleep(self.seconds)


class InfBatchStatistics(Callback):
    """At training step ``step`` the forward leaves the first batch norm's running variance infinite while the loss
    stays finite, as a convolution output too large to square in fp32 does (the batch is normalised by its own
    statistics, so its output stays finite)."""

    def __init__(self, step: int = 2) -> None:
        self.step, self.handle = step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            norm = next(m for m in pl_module.model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
            self.handle = norm.register_forward_hook(self._overflow)

    @staticmethod
    def _overflow(module, args, output) -> None:  # returns None: the output stays the layer's
        module.running_var.data.fill_(float("inf"))  # .data: autograd saw the old one, as in a real overflow

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
