"""Speed knobs on the CPU: bf16-mixed training with the attention fast path, channels-last weights and images,
torch.compile of the model, and the data-loader options; configs/trainer/fast_gpu.yaml sets them from YAML."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.overrides import TorchFunctionMode

from attnseg.cli import AttnSegCLI
from attnseg.data import SegDataModule
from attnseg.heads import ChannelAttention, CrissCrossAttention, DANetHead, FullyAttentionalBlock, PositionAttention
from attnseg.task import SegmentationTask
from tests.helpers.cli import CONFIGS, FAST, QUICKSTART

ATTENTION = (PositionAttention, ChannelAttention, CrissCrossAttention, FullyAttentionalBlock)
# what computes energies, softmax and the attention-weighted sums inside the attention modules
ENERGY_OPS = {"bmm", "baddbmm_", "einsum", "softmax", "exp_", "matmul", "__matmul__", "scaled_dot_product_attention"}


class EnergyDtypes(TorchFunctionMode):
    """Records ``(op, result dtype)`` of the energy ops called while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in ENERGY_OPS and isinstance(out, torch.Tensor):
            self.seen.append((name, out.dtype))
        return out


def watch_attention(model: torch.nn.Module) -> dict:
    """Hooks on every attention module: input and output dtypes, and the energy ops run inside it."""
    record = {"io": [], "mode": EnergyDtypes()}

    def enter(module, args):
        record["mode"].__enter__()

    def leave(module, args, output):
        record["mode"].__exit__(None, None, None)
        record["io"].append((type(module).__name__, args[0].dtype, output.dtype))

    for module in model.modules():
        if isinstance(module, ATTENTION):
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)
    return record


def small_data(**loader_options) -> SegDataModule:
    """The quickstart data at 32x32: 8 images, no rescaling."""
    return SegDataModule(
        dataset_args={"image_size": 32, "num_samples": 8},
        batch_size=4,
        val_batch_size=4,
        scale_range=None,
        photometric=False,
        **loader_options,
    )


def cli(*args: str) -> AttnSegCLI:
    return AttnSegCLI(args=["--config", str(QUICKSTART), *FAST, *args], run=False)


@pytest.mark.parametrize("head", ["danet", "ccnet", "flanet"])
def test_bf16_mixed_fit_runs_the_attention_fast_path(head):
    c = cli(
        "--config",
        str(CONFIGS / f"model/{head}.yaml"),
        "--trainer.precision=bf16-mixed",
        "--trainer.fast_dev_run=1",
        "--trainer.logger=false",
    )
    record = watch_attention(c.model)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert c.trainer.state.finished and c.trainer.precision == "bf16-mixed"
    assert record["io"], "no attention module ran"
    # under autocast the layer before each attention module gives bf16, and the module returns bf16 ...
    assert {(i, o) for _, i, o in record["io"]} == {(torch.bfloat16, torch.bfloat16)}, record["io"]
    # ... its softmax statistics ran in fp32, and products took bf16 operands (bf16 results: the flash kernel of
    # scaled_dot_product_attention, the criss-cross aggregation)
    ops = record["mode"].seen
    assert {dtype for name, dtype in ops if name in ("softmax", "exp_")} <= {torch.float32}, sorted(set(ops))
    assert any(dtype == torch.bfloat16 for _, dtype in ops), sorted(set(ops))


def test_fast_gpu_yaml_sets_every_knob(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    c = cli("--config", str(CONFIGS / "trainer/fast_gpu.yaml"), "--trainer.accelerator=cpu", "--data.num_workers=1")
    assert c.trainer.precision == "bf16-mixed" and torch.backends.cudnn.benchmark is True
    assert c.model.hparams.channels_last is True and c.model.hparams.compile is False
    hp = c.datamodule.hparams
    assert (hp.num_workers, hp.pin_memory, hp.persistent_workers) == (1, True, True)


class FormatProbe(Callback):
    """The memory format of the images the encoder sees in training."""

    def __init__(self) -> None:
        self.images = []

    def on_fit_start(self, trainer, pl_module) -> None:
        def hook(module, args):
            self.images.append(args[0].is_contiguous(memory_format=torch.channels_last))

        pl_module.model.encoder.register_forward_pre_hook(hook)


def test_channels_last_model_and_batches_train_and_match_the_default_layout():
    torch.manual_seed(0)
    task = SegmentationTask(
        head=lambda c, k: DANetHead(c, k),
        encoder={"name": "resnet18", "output_stride": 8},
        num_classes=7,
        channels_last=True,
    )
    plain = SegmentationTask(
        head=lambda c, k: DANetHead(c, k), encoder={"name": "resnet18", "output_stride": 8}, num_classes=7
    )
    for m in task.modules():  # non-zero gamma: the attention contributes to the outputs
        if isinstance(m, (PositionAttention, ChannelAttention)):
            torch.nn.init.constant_(m.gamma, 0.5)
    probe = FormatProbe()
    data = small_data(num_workers=0)
    trainer = Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        logger=False,
        callbacks=[probe],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=data)
    assert trainer.state.finished
    weights = [p for p in task.model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert probe.images and all(probe.images), "the encoder got images that are not channels-last"
    assert not next(p for p in plain.model.parameters() if p.dim() == 4 and p.shape[-1] > 1).is_contiguous(
        memory_format=torch.channels_last
    )
    # the same weights in the two layouts give the same outputs (the fit step moved the weights: copy them again)
    plain.load_state_dict(task.state_dict())
    task.eval()
    plain.eval()
    images = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        ours = task(images)  # the model's pre-hook makes the images channels-last
        reference = plain(images)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-4)


def test_data_loader_knobs_reach_the_loaders():
    data = small_data(num_workers=1, pin_memory=True, persistent_workers=True)
    data.setup("fit")
    loader = data.train_dataloader()
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (1, True, True)
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32)
    data.hparams.num_workers = 0  # persistent workers need workers: without them the option is dropped
    assert data.val_dataloader().persistent_workers is False


@pytest.mark.slow  # compiling takes about a minute on two CPU cores (the train graph and the eval graph)
def test_compiled_model_trains_and_matches_eager():
    torch.manual_seed(0)
    task = SegmentationTask(
        head=lambda c, k: DANetHead(c, k),
        encoder={"name": "resnet18", "output_stride": 8},
        num_classes=7,
        compile=True,
    )
    for m in task.modules():
        if isinstance(m, (PositionAttention, ChannelAttention)):
            torch.nn.init.constant_(m.gamma, 0.5)
    names = set(task.state_dict())
    data = small_data(num_workers=0)
    trainer = Trainer(
        accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(task, datamodule=data)
    assert trainer.state.finished
    assert task.model._compiled_call_impl is not None  # nn.Module.compile: in place ...
    assert set(task.state_dict()) == names  # ... so parameter names and checkpoints are unchanged
    task.eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        compiled = task.model(images)  # the compiled call
        eager = task.model.forward(images)  # the module's own forward, not compiled
    assert set(compiled) == {"out", "pam", "cam", "aux"}
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-4)


def test_a_model_that_cannot_compile_says_so_and_runs_eager(monkeypatch):
    """A compile failure at the first compiled call (here a Dynamo error from a stand-in for torch.compile) is one
    warning naming the head, and the model runs eager from then on, with the eager model's outputs."""
    from attnseg.compiling import compile_or_eager
    from attnseg.encoder import Encoder
    from attnseg.heads import FCNHead
    from attnseg.model import SegmentationModel

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise torch._dynamo.exc.TorchDynamoException("cannot trace this operation\nmore lines")

    monkeypatch.setattr(torch, "compile", lambda fn, *args, **kwargs: failing)
    torch.manual_seed(0)
    model = SegmentationModel(Encoder("resnet18", output_stride=8), FCNHead([64, 128, 256, 512], 3)).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)["out"]
        compile_or_eager(model, "FCNHead")
        message = r"model.compile: FCNHead could not be compiled \(TorchDynamoException: cannot trace this operation\)"
        with pytest.warns(UserWarning, match=message + "; eager"):
            first = model(images)["out"]
        second = model(images)["out"]
    assert calls == [1] and model._compiled_call_impl is None
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
