"""The losses that wrap segmentation-models-pytorch (``DiceLoss``, ``FocalLoss``, ``LovaszLoss``) and
``CrossEntropyPlus``: each equals smp's own loss computed here on the valid pixels alone; ignored pixels neither
change the value nor get a gradient; bf16 autocast computes in fp32; a batch without a valid pixel gives 0 and
zero gradients; the CLI selects them as ``model.loss`` and ``model.aux_loss``."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch.losses as smp
import torch
import torch.nn.functional as F
import yaml

from attnseg.cli import AttnSegCLI
from attnseg.losses import CrossEntropy, CrossEntropyPlus, DiceLoss, FocalLoss, LovaszLoss
from attnseg.task import SegmentationTask
from tests.helpers.cli import FAST, QUICKSTART

PARSE = ["--config", str(QUICKSTART), *FAST, "--trainer.logger=false"]  # the quickstart, parsed and built, not run

K = 4
WEIGHTS = [1.0, 2.0, 0.5, 3.0]


def valid_only(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid pixels of a batch as one (1, K, P, 1) image and its (1, P, 1) labels: nothing ignored is left."""
    valid = mask != 255
    return logits.permute(0, 2, 3, 1)[valid].T[None, :, :, None], mask[valid][None, :, None]


def on_valid(reference):
    """``reference`` (an smp loss without ignore_index) on the valid pixels of the batch."""
    return lambda logits, mask: reference(*valid_only(logits, mask))


def per_image_on_valid(reference):
    """The mean of ``reference`` over the images with a valid pixel, each on its valid pixels."""

    def value(logits, mask):
        images = [i for i in range(len(mask)) if (mask[i] != 255).any()]
        return torch.stack([reference(*valid_only(logits[i : i + 1], mask[i : i + 1])) for i in images]).mean()

    return value


def ce_plus(reference, ce_weight=1.0, weight=1.0):
    def value(logits, mask):
        v_logits, v_mask = valid_only(logits, mask)
        return ce_weight * F.cross_entropy(v_logits, v_mask) + weight * reference(v_logits, v_mask)

    return value


# each loss (built anew for each test) and its value computed by smp on the valid pixels only
CASES = {
    "dice": (lambda: DiceLoss(), on_valid(smp.DiceLoss("multiclass"))),
    "dice_log_smooth_weighted": (
        lambda: DiceLoss(smooth=1.0, log_loss=True, class_weight=WEIGHTS),
        on_valid(smp.DiceLoss("multiclass", smooth=1.0, log_loss=True, class_weights=WEIGHTS)),
    ),
    "focal": (lambda: FocalLoss(), on_valid(smp.FocalLoss("multiclass"))),
    "focal_alpha_gamma_weighted": (
        lambda: FocalLoss(alpha=0.25, gamma=1.5, class_weight=WEIGHTS),
        on_valid(smp.FocalLoss("multiclass", alpha=0.25, gamma=1.5, class_weights=WEIGHTS)),
    ),
    "lovasz": (lambda: LovaszLoss(), on_valid(smp.LovaszLoss("multiclass"))),
    "lovasz_per_image": (lambda: LovaszLoss(per_image=True), per_image_on_valid(smp.LovaszLoss("multiclass"))),
    "ce_plus_dice": (lambda: CrossEntropyPlus(), ce_plus(smp.DiceLoss("multiclass"))),
    "ce_plus_lovasz_weighted": (
        lambda: CrossEntropyPlus(loss=LovaszLoss(), ce_weight=0.5, loss_weight=2.0),
        ce_plus(smp.LovaszLoss("multiclass"), 0.5, 2.0),
    ),
}


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, K, 6, 7) logits and labels: about a third of the pixels ignored, the last image entirely, class 3 absent
    from the valid pixels (it is under the ignored ones)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, K, 6, 7, generator=g) * 2
    mask = torch.randint(0, K - 1, (3, 6, 7), generator=g)
    ignored = torch.rand(3, 6, 7, generator=g) < 0.3
    ignored[2] = True
    mask[ignored] = 3  # ignored pixels' true labels, for the reference check below
    return logits, mask.masked_fill(ignored, 255)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_is_smps_on_the_valid_pixels_only(name):
    make, reference = CASES[name]
    logits, mask = batch()
    loss = make()(logits, mask)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, reference(logits, mask), rtol=1e-5, atol=1e-6)
    # the ignored pixels mattered: labelled, they change the loss
    assert make()(logits, torch.where(mask == 255, 3, mask)).item() != pytest.approx(loss.item(), rel=1e-3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ignored_pixels_get_no_gradient_and_do_not_change_the_loss(name):
    make, _ = CASES[name]
    logits, mask = batch(1)
    logits.requires_grad_(True)
    loss = make()(logits, mask)
    loss.backward()
    ignored = (mask == 255)[:, None].expand_as(logits)
    assert torch.equal(logits.grad[ignored], torch.zeros(int(ignored.sum())))
    assert logits.grad[~ignored].abs().sum() > 0
    # whatever the logits of the ignored pixels, the same loss
    other = torch.where(ignored, torch.randn_like(logits) * 10, logits.detach())
    assert make()(other, mask).item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_valid_pixel_gives_zero_and_zero_gradients(name):
    make, _ = CASES[name]
    logits = torch.randn(2, K, 5, 5, requires_grad=True)
    loss = make()(logits, torch.full((2, 5, 5), 255))
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name", sorted(CASES))
def test_under_bf16_autocast_in_fp32(name):
    make, reference = CASES[name]
    logits, mask = batch(2)
    inputs = logits.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = make()(inputs * 1, mask)  # logits as a bf16 model hands them over
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference(inputs.detach().float(), mask), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert torch.isfinite(inputs.grad.float()).all()
    assert not inputs.grad[(mask == 255)[:, None].expand_as(inputs)].any()


def test_the_smp_losses_ignore_255_and_cross_entropy_plus_needs_one_ignore_index():
    for loss in (DiceLoss(), FocalLoss(), LovaszLoss(), CrossEntropyPlus()):
        assert loss.ignore_index == 255
    assert DiceLoss(254).ignore_index == DiceLoss(254).criterion.ignore_index == 254
    assert CrossEntropyPlus(254).loss.ignore_index == 254 and CrossEntropyPlus(254).ce.ignore_index == 254
    with pytest.raises(ValueError, match="CrossEntropyPlus: ignore_index=254 but its LovaszLoss ignores label 255"):
        CrossEntropyPlus(254, loss=LovaszLoss())
    with pytest.raises(ValueError, match=r"^model.aux_loss ignores label 0 but the data's ignore_index is 255"):
        SegmentationTask(encoder={"name": "resnet18"}, num_classes=3, aux_loss=FocalLoss(ignore_index=0))


@pytest.mark.parametrize("name", ["DiceLoss", "FocalLoss", "LovaszLoss", "CrossEntropyPlus"])
def test_the_cli_selects_each_as_model_loss(name):
    cli = AttnSegCLI(args=[*PARSE, f"--model.loss=attnseg.losses.{name}"], run=False)
    assert type(cli.model.loss).__name__ == name and cli.model.loss.ignore_index == 255


def test_cross_entropy_plus_from_yaml_with_its_weights_and_second_loss(tmp_path):
    config = tmp_path / "losses.yaml"
    loss = {
        "class_path": "attnseg.losses.CrossEntropyPlus",
        "init_args": {
            "loss": {"class_path": "attnseg.losses.LovaszLoss", "init_args": {"per_image": True}},
            "ce_weight": 0.5,
            "loss_weight": 2.0,
        },
    }
    config.write_text(yaml.safe_dump({"model": {"loss": loss, "aux_loss": "attnseg.losses.CrossEntropy"}}))
    cli = AttnSegCLI(args=[*PARSE, "--config", str(config)], run=False)
    plus = cli.model.loss
    assert isinstance(plus, CrossEntropyPlus) and (plus.ce_weight, plus.loss_weight) == (0.5, 2.0)
    assert isinstance(plus.loss, LovaszLoss) and plus.loss.per_image
    assert type(cli.model.aux_loss) is CrossEntropy
