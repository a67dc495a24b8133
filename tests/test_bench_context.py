"""bench.context and bench.figures: the context benchmark's chance level, receptive fields (a local model's, known
networks'), the geometry that puts the cue beyond convolutions and one criss-cross step, and the attention figure
of a blob pixel with its two-hop path."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import bench.context as bench_context
import bench.figures as bench_figures


def test_context_chance_level_of_a_cue_blind_oracle():
    """Two images with one blob each, one warm and one cold: always saying warm gets IoU 1/2 on warm_blob and 0 on
    cold_blob; guessing per image gets 1/2 and 1/4 per class on average (mean 3/8 over many draws)."""
    warm, cold = bench_context.WARM, bench_context.COLD
    a, b = np.zeros((4, 4), dtype=np.int64), np.zeros((4, 4), dtype=np.int64)
    a[:2, :2], b[2:, 2:] = warm, cold
    guessed, always_warm = bench_context.chance_iou([a, b], draws=4000)
    assert always_warm == pytest.approx(0.25)
    assert guessed == pytest.approx(0.375, abs=0.02)


def test_context_receptive_field_of_a_local_model_is_its_kernel():
    """A model whose output at a pixel sees only a 5x5 window: all the gradient lies within radius 2 * sqrt(2)."""
    from attnseg.data import SyntheticShapes

    class Local(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 7, 5, padding=2)

        def forward(self, x):
            return {"out": self.conv(x)}

    task = type("T", (), {"model": Local()})()
    data = SyntheticShapes(split="test", image_size=48, num_samples=4)
    data.transforms = lambda image, mask: (image.float() / 255, mask)
    r95, r99 = bench_context.effective_receptive_field(task, data, images=4)
    assert 1 <= r95 <= r99 <= 2 * 2**0.5 + 1e-6


def test_theoretical_receptive_field_of_known_networks():
    """The reach of a 5x5 convolution (radius 2), of ResNet-18 up to its stride-8 stage (99 x 99 px by the layer
    arithmetic: radius 49 around the window's centre, plus the half-stride offset of a feature pixel's centre),
    and of a head with position attention: the whole image."""
    from attnseg.encoder import Encoder
    from attnseg.heads import DANetHead, FCNHead
    from attnseg.model import SegmentationModel

    class Local(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 7, 5, padding=2)

        def forward(self, x):
            return [self.conv(x)]

    assert bench_context.theoretical_receptive_field(Local(), 32) == (2, False)
    shallow = Encoder("resnet18", 8, out_indices=(1, 2))
    radius, border = bench_context.theoretical_receptive_field(shallow, 256)
    assert 49 <= radius <= 49 + 4 and not border
    fcn = SegmentationModel(shallow, FCNHead(shallow.channels, 7, aux=False))
    fcn_radius, border = bench_context.theoretical_receptive_field(fcn, 256)
    # two 3x3 convs at stride 8 add 16 px; bilinear upsampling of the logits reaches one feature pixel (8 px) more,
    # measured from the output pixel rather than the feature pixel's centre (up to 8 px more)
    assert radius + 2 * 8 <= fcn_radius <= radius + 2 * 8 + 16 and not border
    danet = SegmentationModel(shallow, DANetHead(shallow.channels, 7, cam=False, aux=False))
    assert bench_context.theoretical_receptive_field(danet, 256)[1]  # PAM (gamma 0 at initialisation): the whole image


@pytest.mark.slow
def test_figures_script_draws_the_attention_of_a_blob_pixel(tmp_path):
    from tests.helpers.cli import FAST, QUICKSTART, run_cli

    checkpoints = {}
    for head, extra in (("danet", []), ("ccnet", ["--model.head.init_args.recurrence=2"])):
        cli = run_cli(
            "fit",
            "--config",
            QUICKSTART,
            "--config",
            f"model/{head}",
            *FAST,
            *extra,
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path / head}",
        )
        checkpoints[head] = cli.trainer.checkpoint_callback.last_model_path
    bench_figures.main(
        [
            "attention",
            "--danet",
            checkpoints["danet"],
            "--ccnet",
            checkpoints["ccnet"],
            "--out",
            str(tmp_path / "figures"),
        ]
    )
    for name in ("attention_pam.png", "attention_criss_cross.png"):
        image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "figures" / name))
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 10  # drawn, not blank
    bench_figures.main(["attention", "--ccnet", checkpoints["ccnet"], "--out", str(tmp_path / "one")])
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["attention_criss_cross.png"]  # only what was asked
    with pytest.raises(SystemExit, match="give --danet, --ccnet or both"):
        bench_figures.main(["attention", "--out", str(tmp_path / "none")])


def test_two_hop_path_goes_through_the_relay_that_carries_the_target():
    from attnseg.visualize import criss_cross_dense, two_hop_path

    h = w = 3  # cell 0 (0, 0) looks along its row to cell 2 (0, 2), which looks down its column to cell 8 (2, 2)
    step1, step2 = torch.zeros(h, w, h + w), torch.zeros(h, w, h + w)
    step1[..., h + 1] = 1.0  # everything on its own row, column 1 (a distractor)
    step1[0, 2] = 0.0
    step1[0, 2, 2] = 1.0  # cell (0, 2): all on row 2 of its column, i.e. cell 8
    step2[0, 0] = 0.0
    step2[0, 0, h + 2] = 1.0  # cell (0, 0): all on column 2 of its row, i.e. cell 2
    target = torch.zeros(h * w)
    target[8] = 1.0
    dense1, dense2 = criss_cross_dense(step1), criss_cross_dense(step2)
    assert float(dense1.sum(1).min()) == 1.0  # every position's weights sum to 1
    assert two_hop_path(dense1, dense2, 0, target) == [0, 2, 8]
    assert float((dense2 @ dense1)[0] @ target) == 1.0  # after two steps all of cell 0's attention is on the target


def test_relay_attention_of_uniform_weights_is_the_uniform_share():
    """With the query and key weights at 0 every energy is 0, so each criss-cross weight is 1 / (H + W - 1): both
    links of the relay and a blob's own class get exactly the uniform share (what the measurement compares a trained
    model's weights with)."""
    from attnseg.data import SyntheticShapes
    from attnseg.data.transforms import eval_transforms
    from attnseg.heads import CCNetHead

    model, _ = _context_benchmark_model(CCNetHead, recurrence=2, channels=16)
    for projection in (model.head.cca.query, model.head.cca.key):
        torch.nn.init.zeros_(projection.weight)
        torch.nn.init.zeros_(projection.bias)
    task = type("T", (), {"model": model})()
    data = SyntheticShapes(split="test", image_size=128, num_samples=4, variant="two_hop")
    data.transforms = eval_transforms()
    first, uniform1, second, uniform2, own, uniform3 = bench_context.relay_attention(task, data, images=4)
    assert 0 < uniform1 < 1 and 0 < uniform2 < 1 and uniform2 < uniform3 < 1  # a blob fills more of its lines
    assert first == pytest.approx(uniform1, rel=1e-5) and second == pytest.approx(uniform2, rel=1e-5)
    assert own == pytest.approx(uniform3, rel=1e-5)


@pytest.mark.slow
def test_relay_over_training_reads_each_checkpoints_step_and_gamma(tmp_path, capsys):
    """--checkpoints: one row per checkpoint, in the order of their steps, with the gamma the checkpoint holds; a
    checkpoint without the relay (CCNet R = 1) is an error naming it."""
    from tests.helpers.cli import FAST, QUICKSTART, run_cli

    def fit(recurrence: int, steps: int) -> tuple[str, float]:
        cli = run_cli(
            "fit",
            "--config",
            QUICKSTART,
            "--config",
            "model/ccnet",
            *FAST,
            f"--model.head.init_args.recurrence={recurrence}",
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path / str(recurrence)}",
        )
        return cli.trainer.checkpoint_callback.last_model_path, float(cli.model.model.head.cca.gamma.detach())

    last, gamma = fit(2, 2)
    early = tmp_path / "early.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["global_step"] = 1
    torch.save(state, early)
    bench_context.main(["--variant", "two_hop", "--size", "128", "--images", "2", "--checkpoints", last, str(early)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2"]  # sorted by step
    assert all(float(row.split(" | ")[1]) == pytest.approx(gamma, abs=5e-4) for row in rows)
    one, _ = fit(1, 1)
    with pytest.raises(SystemExit, match=f"--checkpoints {re.escape(one)}: a CCNetHead with R = 1"):
        bench_context.main(["--variant", "two_hop", "--size", "128", "--images", "1", "--checkpoints", one])
    with pytest.raises(SystemExit, match="add --variant two_hop"):
        bench_context.main(["--checkpoints", last])


def _context_benchmark_model(head_class, **head_args):
    """A model of the context benchmark (configs/experiment/context.yaml: its encoder and image size)."""
    import yaml

    from attnseg.encoder import Encoder
    from attnseg.model import SegmentationModel
    from tests.helpers.cli import CONFIGS

    recipe = yaml.safe_load((CONFIGS / "experiment" / "context.yaml").read_text())
    spec, size = recipe["model"]["encoder"], recipe["data"]["dataset_args"]["image_size"]
    encoder = Encoder(spec["name"], spec["output_stride"], out_indices=spec["out_indices"])
    return SegmentationModel(encoder, head_class(encoder.channels, 7, aux=False, **head_args)), size


@pytest.mark.slow
def test_context_benchmark_puts_the_cue_beyond_convolutions_and_one_criss_cross_step():
    """On the context benchmark (256 px, ResNet-18 to its stride-8 stage), over 64 test images: every blob's rows
    and columns are farther from its two_hop cue than CCNet without attention (R = 0) reaches, so one criss-cross
    step (a row and a column of such features) cannot reach the cue; every far cue is farther from its blobs
    (Chebyshev distance) than FCN reaches. The input support of R = 1 at the blobs misses the cue, R = 2's meets it."""
    from attnseg.data import SyntheticShapes
    from attnseg.data.synthetic import FAR, GAP
    from attnseg.heads import CCNetHead, FCNHead

    blob_ids = [SyntheticShapes.classes.index(c) for c in SyntheticShapes.context_classes]
    cue_ids = [SyntheticShapes.classes.index(c) for c in ("warm_cue", "cold_cue")]
    ccnet0, size = _context_benchmark_model(CCNetHead, recurrence=0)
    reach, border = bench_context.theoretical_receptive_field(ccnet0, size)
    assert not border and reach < GAP * size - 1
    fcn_reach, border = bench_context.theoretical_receptive_field(_context_benchmark_model(FCNHead)[0], size)
    assert not border and fcn_reach < FAR * size - 1

    for variant, least in (("two_hop", reach), ("far", fcn_reach)):
        data = SyntheticShapes(split="test", image_size=size, num_samples=64, variant=variant)
        for i in range(len(data)):
            mask = data.generate(i)[1]
            blobs, cues = np.argwhere(np.isin(mask, blob_ids)), np.argwhere(np.isin(mask, cue_ids))
            assert len(blobs) and len(cues)
            if variant == "two_hop":  # apart in rows and in columns
                gaps = [max(blobs[:, a].min() - cues[:, a].max(), cues[:, a].min() - blobs[:, a].max()) for a in (0, 1)]
                assert min(gaps) > least, (i, gaps, least)
            else:  # apart in rows or in columns, for every blob pixel
                chebyshev = np.abs(blobs[::5, None] - cues[None, ::3]).max(-1).min()
                assert chebyshev > least, (i, chebyshev, least)

    mask = SyntheticShapes(split="test", image_size=size, variant="two_hop").generate(0)[1]
    blobs, cue = torch.from_numpy(np.isin(mask, blob_ids)), torch.from_numpy(np.isin(mask, cue_ids))
    for recurrence, meets in ((1, False), (2, True)):
        model = bench_context._reach_everywhere(_context_benchmark_model(CCNetHead, recurrence=recurrence)[0])
        image = torch.ones(1, 3, size, size, requires_grad=True)
        model(image)["out"][0][:, blobs].sum().backward()
        support = image.grad[0].abs().sum(0) > 0
        assert bool((support & cue).any()) == meets, recurrence
