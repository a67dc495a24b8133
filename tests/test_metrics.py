"""val/mIoU is dataset-level: intersections and unions summed over the epoch, ignored pixels
left out, classes absent from both prediction and label excluded from the mean."""

import math

import pytest
import torch

from attnseg.task import SegmentationTask


def _task(num_classes=4):
    return SegmentationTask(
        num_classes=num_classes,
        class_names=["road", "car", "tree", "sky"][:num_classes],
        encoder={"name": "resnet18", "output_stride": 8},
    )


def test_miou_matches_hand_computed_value():
    task = _task()
    m = task.val_metrics
    # batch 1: 2x4 image; 255 is ignored; class 3 (sky) appears nowhere.
    pred1 = torch.tensor([[[0, 0, 1, 1], [2, 2, 1, 0]]])
    mask1 = torch.tensor([[[0, 0, 1, 255], [2, 1, 1, 255]]])
    # batch 2: dataset-level accumulation: IoU is not the mean of per-batch IoUs.
    pred2 = torch.tensor([[[0, 0, 0, 0], [2, 2, 2, 2]]])
    mask2 = torch.tensor([[[0, 0, 0, 0], [0, 2, 2, 2]]])
    m.update(pred1, mask1)
    m.update(pred2, mask2)
    values = m.compute()
    # Counted pixels (mask != 255):
    #   class 0: pred&gt = 2 + 4 = 6; pred = 2 + 4 (+ position (1,3) of batch 1 is ignored) = 6; gt = 2 + 5 = 7
    #            union = 6 + 7 - 6 = 7 -> IoU 6/7
    #   class 1: inter = 2 ((0,2) and (1,2)); pred = 2 (+ (0,3) ignored); gt = 3 -> union 3 -> 2/3
    #   class 2: inter = 1 + 3 = 4; pred = 2 + 4 = 6; gt = 1 + 3 = 4 -> union 6 -> 4/6
    #   class 3: absent from prediction and label -> excluded
    expected = [6 / 7, 2 / 3, 4 / 6]
    assert values["val/mIoU"].item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    assert values["val/IoU"][:3].tolist() == pytest.approx(expected, abs=1e-6)
    assert math.isnan(values["val/IoU"][3].item())
    # aAcc: correct / counted = (2 + 2 + 1 (batch 1)) + (4 + 3 (batch 2)) = 12 of 6 + 8 = 14
    assert values["val/aAcc"].item() == pytest.approx(12 / 14, abs=1e-6)


def test_logged_keys_use_class_names():
    task = _task()
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    task.val_metrics.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    task.on_validation_epoch_end()
    assert logged["val/mIoU"] == 1.0
    assert {"val/aAcc", "val/IoU/road", "val/IoU/car", "val/IoU/tree", "val/IoU/sky"} <= set(logged)
    # the metric state is reset for the next epoch
    assert task.val_metrics["mIoU"].confmat.sum() == 0
