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
    with pytest.raises(ValueError) as error:
        SegmentationTask(encoder=ENC, num_classes=3, loss=CrossEntropy(ignore_index=0))
    assert str(error.value) == (
        "model.loss ignores label 0 but the data's ignore_index is 255; make them agree "
        "(model.loss.init_args.ignore_index, or the dataset's void label)"
    )


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

    def poly(it):
        return (1 - it / 100) ** 0.9

    assert lrs[5][0] == pytest.approx(0.02 * poly(5) * (0.1 + 0.9 * 5 / 10))
    assert lrs[50] == pytest.approx([0.02 * poly(50), 0.2 * poly(50)])
    assert lrs[99][1] == pytest.approx(0.2 * poly(99))


def test_no_decay_for_norm_layers_and_biases():
    """With ``no_decay_norm_bias`` every norm parameter and bias is in a group of weight decay 0 (with its part's
    learning rate), every other parameter keeps the decay, and each parameter is in exactly one group."""
    task = SegmentationTask(encoder=ENC, num_classes=3, head_lr_mult=10, weight_decay=1e-4, no_decay_norm_bias=True)
    task._trainer = _Trainer()
    opt = SegmentationTask.configure_optimizers(task)["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["encoder", "encoder_no_decay", "head", "head_no_decay"]
    named = dict(task.model.named_parameters())
    norm_ids = {id(p) for m in task.model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    for name, g in groups.items():
        assert g["weight_decay"] == (0.0 if name.endswith("no_decay") else 1e-4)
        assert g["lr"] == (0.01 if name.startswith("encoder") else 0.1)
        for p in g["params"]:
            is_bias_or_norm = id(p) in norm_ids or any(p is q for n, q in named.items() if n.endswith(".bias"))
            assert is_bias_or_norm == name.endswith("no_decay")
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in task.model.parameters())
    assert any(p.dim() == 4 for p in groups["head"]["params"]) and groups["head_no_decay"]["params"]
    default = SegmentationTask(encoder=ENC, num_classes=3)
    default._trainer = _Trainer()
    groups = SegmentationTask.configure_optimizers(default)["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["encoder", "head"]  # off by default


def test_aux_loss_trains_every_output_but_out():
    """CCNet's recipe: OHEM on ``out``, plain cross-entropy on ``aux``."""
    from attnseg.losses import OHEMCrossEntropy

    ohem = OHEMCrossEntropy(thresh=0.3, min_kept=10)  # an untrained model: keeps the pixels below 0.3 only
    task = SegmentationTask(encoder=ENC, num_classes=3, loss=ohem, aux_loss=CrossEntropy())
    images, masks = torch.randn(2, 3, 45, 61), torch.randint(0, 3, (2, 45, 61))
    outputs = task(images)
    terms = task.compute_losses(outputs, masks)
    assert terms["out"].item() == pytest.approx(ohem(outputs["out"], masks).item(), rel=1e-6)
    assert terms["aux"].item() == pytest.approx(0.4 * CrossEntropy()(outputs["aux"], masks).item(), rel=1e-6)
    assert ohem(outputs["aux"], masks).item() != pytest.approx(CrossEntropy()(outputs["aux"], masks).item(), rel=1e-3)
    with pytest.raises(ValueError, match="model.aux_loss ignores label 0"):
        SegmentationTask(encoder=ENC, num_classes=3, aux_loss=CrossEntropy(ignore_index=0))
