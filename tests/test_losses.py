"""OHEM cross-entropy and the category consistency loss on small hand-made examples whose values are
worked out by hand here."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from attnseg.losses import CategoryConsistencyLoss, OHEMCrossEntropy
from attnseg.task import SegmentationTask
from tests.helpers.cli import FAST, QUICKSTART, run_cli

# --------------------------------------------------------------------------------------------- OHEM
# Six pixels (1 x 2 x 3), two classes; the softmax gives each pixel's true class exactly this probability.
PROBS = [0.9, 0.6, 0.3, 0.8, 0.1, 0.75]
LABELS = [0, 1, 1, 0, 1, 0]


def ohem_example():
    p = torch.tensor(PROBS, dtype=torch.float64)
    labels = torch.tensor(LABELS)
    true, other = p.log(), (1 - p).log()
    logits = torch.stack([torch.where(labels == 0, true, other), torch.where(labels == 1, true, other)])
    return logits.float().view(1, 2, 2, 3).requires_grad_(True), labels.view(1, 2, 3)


def mean_nll(probs):
    return -sum(math.log(p) for p in probs) / len(probs)


@pytest.mark.parametrize(
    "min_kept,kept",
    [
        (0, [0.6, 0.3, 0.1]),  # below the threshold 0.7
        (2, [0.6, 0.3, 0.1]),  # already 3 >= 2 below it
        (4, [0.1, 0.3, 0.6, 0.75]),  # the threshold rises to the 4th smallest probability
        (100, PROBS),  # more than the valid pixels: all of them
    ],
)
def test_ohem_keeps_pixels_below_threshold_and_at_least_min_kept(min_kept, kept):
    logits, mask = ohem_example()
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=min_kept)(logits, mask)
    assert loss.item() == pytest.approx(mean_nll(kept), rel=1e-5)
    loss.backward()
    grad_norm = logits.grad.abs().sum(1).flatten()
    for p, g in zip(PROBS, grad_norm):
        assert (g > 0) == (p in kept), f"pixel with probability {p}: gradient {g}"


def test_ohem_ignores_label_and_counts_min_kept_over_the_batch():
    logits, mask = ohem_example()
    mask = mask.clone()
    mask[0, 1, 1] = 255  # the hardest pixel (0.1)
    assert OHEMCrossEntropy(thresh=0.7, min_kept=0)(logits, mask).item() == pytest.approx(mean_nll([0.6, 0.3]), 1e-5)
    # the same six pixels as two images of 1 x 3: min_kept counts pixels of the whole batch (4, not 4 per image)
    two = logits.detach()[0].transpose(0, 1).unsqueeze(2)  # (2, K, 1, 3): one image per row
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=4)(two, torch.tensor(LABELS).view(2, 1, 3))
    assert loss.item() == pytest.approx(mean_nll([0.1, 0.3, 0.6, 0.75]), rel=1e-5)


def test_ohem_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = OHEMCrossEntropy(min_kept=5)(logits, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ohem_options_are_checked_and_ignore_index_comes_first():
    assert OHEMCrossEntropy().ignore_index == 255 and OHEMCrossEntropy(254).ignore_index == 254
    with pytest.raises(ValueError, match="thresh=1.5"):
        OHEMCrossEntropy(thresh=1.5)
    with pytest.raises(ValueError, match="min_kept=-1"):
        OHEMCrossEntropy(min_kept=-1)
    with pytest.raises(ValueError, match=r"^model.loss ignores label 0 but the data's ignore_index is 255; make them"):
        SegmentationTask(encoder={"name": "resnet18"}, num_classes=3, loss=OHEMCrossEntropy(ignore_index=0))


def test_ohem_from_yaml_through_the_cli(tmp_path):
    config = tmp_path / "ohem.yaml"
    loss = {"class_path": "attnseg.losses.OHEMCrossEntropy", "init_args": {"thresh": 0.6, "min_kept": 50}}
    config.write_text(yaml.safe_dump({"model": {"loss": loss}}))
    cli = run_cli("fit", "--config", QUICKSTART, "--config", config, *FAST, "--trainer.fast_dev_run=1")
    assert cli.trainer.state.finished
    ohem = cli.model.loss
    assert isinstance(ohem, OHEMCrossEntropy) and (ohem.thresh, ohem.min_kept) == (0.6, 50)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


# ------------------------------------------------------------------------------ category consistency
def features_1d(*images):
    """(B, 1, 1, 5) features and (B, 1, 5) labels from lists of (value, label) per image."""
    f = torch.tensor([[v for v, _ in image] for image in images], dtype=torch.float32).view(len(images), 1, 1, 5)
    m = torch.tensor([[c for _, c in image] for image in images]).view(len(images), 1, 5)
    return f.requires_grad_(True), m


# class 0 at 0 and 2 (mean 1, distance 1), class 1 at 3 (alone), class 2 at 10 and 10.2 (mean 10.1)
IMAGE_A = [(0.0, 0), (2.0, 0), (3.0, 1), (10.0, 2), (10.2, 2)]
# l_var = ((1 - 0.5)^2 + 0 + 0) / 3; only means 1 and 3 are closer than 2 * 1.5: l_dis = 2 (3 - 2)^2 / (3 * 2);
# l_reg = (1 + 3 + 10.1) / 3
VAR_A, DIS_A, REG_A = 0.25 / 3, 2 * 1.0 / 6, 14.1 / 3
# class 0 at 0 and 4 (mean 2, distance 2 > delta_d: linear, 2 - 1.5 + 1^2 = 1.5), the rest ignored
IMAGE_B = [(0.0, 0), (4.0, 0), (50.0, 255), (-9.0, 255), (7.0, 255)]
VAR_B, DIS_B, REG_B = 1.5, 0.0, 2.0


def test_phi_var_is_zero_then_quadratic_then_linear():
    phi = CategoryConsistencyLoss().phi_var(torch.tensor([0.3, 0.5, 1.0, 1.5, 2.5, 4.0]))
    torch.testing.assert_close(phi, torch.tensor([0.0, 0.0, 0.25, 1.0, 2.0, 3.5]))


def test_ccl_terms_and_weights_by_hand():
    f, m = features_1d(IMAGE_A)
    assert CategoryConsistencyLoss()(f, m).item() == pytest.approx(VAR_A + DIS_A + 0.001 * REG_A, rel=1e-6)
    weighted = CategoryConsistencyLoss(alpha=2.0, beta=3.0, gamma=0.5)(f, m)
    assert weighted.item() == pytest.approx(2 * VAR_A + 3 * DIS_A + 0.5 * REG_A, rel=1e-6)
    # wider margins: delta_v = 1 leaves class 0 unpulled, delta_d = 6 pushes every pair of means
    wide = CategoryConsistencyLoss(delta_v=1.0, delta_d=6.0, gamma=0.0)(f, m)
    assert wide.item() == pytest.approx(2 * ((12 - 2) ** 2 + (12 - 9.1) ** 2 + (12 - 7.1) ** 2) / 6, rel=1e-6)


def test_ccl_in_two_dimensions_with_coinciding_means():
    # class 0 at (0, 0) and (6, 8): mean (3, 4), distances 5 -> 5 - 1.5 + 1 = 4.5; class 1 at (3, 4.5), (3, 3.5):
    # mean (3, 4), distances 0.5 -> 0. The means coincide: l_dis = (2 * 1.5)^2 = 9. l_reg = (5 + 5) / 2.
    f = torch.tensor([[0.0, 6.0, 3.0, 3.0, 100.0], [0.0, 8.0, 4.5, 3.5, -50.0]]).view(1, 2, 1, 5).requires_grad_(True)
    m = torch.tensor([0, 0, 1, 1, 255]).view(1, 1, 5)
    loss = CategoryConsistencyLoss()(f, m)
    assert loss.item() == pytest.approx(4.5 / 2 + 9 + 0.001 * 5, rel=1e-6)
    loss.backward()
    assert torch.isfinite(f.grad).all() and torch.equal(f.grad[..., 4], torch.zeros(1, 2, 1))  # ignored pixel


def test_ccl_is_per_image_and_skips_images_without_valid_pixels():
    f, m = features_1d(IMAGE_A, IMAGE_B, [(1.0, 255)] * 5)
    loss = CategoryConsistencyLoss()(f, m)
    per_image = [VAR_A + DIS_A + 0.001 * REG_A, VAR_B + DIS_B + 0.001 * REG_B]
    assert loss.item() == pytest.approx(sum(per_image) / 2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(f.grad).all() and f.grad[1, 0, 0, 0] != 0 and torch.equal(f.grad[2], torch.zeros(1, 1, 5))


def test_ccl_all_ignored_is_zero_and_bad_input_is_named():
    f = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = CategoryConsistencyLoss()(f, torch.full((2, 3, 3), 255))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match="features are"):
        CategoryConsistencyLoss()(f, torch.zeros(3, 4, 4, dtype=torch.long))


def test_ccl_resizes_the_labels_to_the_embedding():
    """An embedding at the feature resolution is scored against the labels taken at those positions (nearest)."""
    f = torch.randn(2, 4, 3, 3)
    mask = torch.randint(0, 3, (2, 6, 6))
    assert CategoryConsistencyLoss()(f, mask).item() == pytest.approx(
        CategoryConsistencyLoss()(f, mask[:, ::2, ::2]).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="delta_v=2.0"):
        CategoryConsistencyLoss(delta_v=2.0, delta_d=1.0)
