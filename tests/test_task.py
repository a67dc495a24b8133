import pytest
import torch
from torch import nn

from attnseg.heads import FCNHead
from attnseg.losses import CrossEntropy
from attnseg.task import SegmentationTask

ENC = {"name": "resnet18", "output_stride": 8}


def test_outputs_are_upsampled_and_loss_is_weighted_sum():
    task = SegmentationTask(encoder=ENC, num_classes=3, loss_weights={"aux": 0.25})
    images, masks = torch.randn(2, 3, 45, 61), torch.randint(0, 3, (2, 45, 61))
    masks[0, :5] = 255
    outputs = task(images)
    assert set(outputs) == {"out", "aux"}
    assert all(o.shape == (2, 3, 45, 61) for o in outputs.values())
    terms = task.compute_losses(outputs, masks)
    ce = CrossEntropy()
    assert terms["out"].item() == pytest.approx(ce(outputs["out"], masks).item(), rel=1e-6)
    assert terms["aux"].item() == pytest.approx(0.25 * ce(outputs["aux"], masks).item(), rel=1e-6)


def test_aux_switch_and_zero_weight():
    task = SegmentationTask(encoder=ENC, num_classes=3, head=lambda c, k: FCNHead(c, k, aux=False))
    assert set(task(torch.randn(1, 3, 32, 32))) == {"out"}
    task = SegmentationTask(encoder=ENC, num_classes=3, loss_weights={"aux": 0})
    terms = task.compute_losses(task(torch.randn(1, 3, 32, 32)), torch.zeros(1, 32, 32, dtype=torch.long))
    assert set(terms) == {"out"}


def test_unknown_loss_weight_key_is_named():
    with pytest.raises(ValueError, match="'pam'.*FCNHead"):
        SegmentationTask(encoder=ENC, num_classes=3, loss_weights={"pam": 1.0})


def test_loss_ignore_index_must_match_data():
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationTask(encoder=ENC, num_classes=3, loss=CrossEntropy(ignore_index=0))


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = CrossEntropy()(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    # class weights: the weighted mean, as nn.CrossEntropyLoss computes it
    mask = torch.randint(0, 3, (1, 4, 4))
    w = [1.0, 2.0, 0.5]
    ours = CrossEntropy(class_weight=w)(logits, mask)
    ref = nn.CrossEntropyLoss(weight=torch.tensor(w))(logits, mask)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


class _Trainer:
    estimated_stepping_batches = 100


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_head_lr_multiplier_and_poly_schedule(optimizer):
    task = SegmentationTask(
        encoder=ENC, num_classes=3, optimizer=optimizer, lr=0.02, head_lr_mult=10, warmup_iters=10, warmup_ratio=0.1
    )
    task._trainer = _Trainer()
    conf = SegmentationTask.configure_optimizers(task)
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    enc_ids = {id(p) for p in task.model.encoder.parameters()}
    assert {id(p) for p in opt.param_groups[0]["params"]} == enc_ids
    assert not enc_ids & {id(p) for p in opt.param_groups[1]["params"]}
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([0.02 * 0.1, 0.2 * 0.1])  # warmup starts at warmup_ratio
    poly = lambda it: (1 - it / 100) ** 0.9  # noqa: E731
    assert lrs[5][0] == pytest.approx(0.02 * poly(5) * (0.1 + 0.9 * 5 / 10))
    assert lrs[50] == pytest.approx([0.02 * poly(50), 0.2 * poly(50)])
    assert lrs[99][1] == pytest.approx(0.2 * poly(99))
