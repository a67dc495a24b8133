"""The benchmark scripts end to end at tiny sizes (tables, merging into a Markdown file, skipped cases), and the
attention references they time against the modules: the same formula, the same outputs. No timing assertions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import bench.attention as bench_attention
import bench.camvid_results as bench_camvid
import bench.common as bench_common
import bench.complexity as bench_complexity
import bench.context as bench_context
import bench.data as bench_data
import bench.figures as bench_figures
import bench.model as bench_model
from tests.helpers.cli import REPO


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(text: str, columns: int) -> list[list[str]]:
    return bench_common.parse_rows(text, columns)


@pytest.mark.parametrize("key", sorted(bench_attention.MODULES))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_references_compute_the_modules_formula(key, dtype):
    """Forward and input gradient of each reference equal the module's (bf16: the module's fast path under
    autocast against the reference's fp32 attention)."""
    label, build, ours, references = bench_attention.MODULES[key]
    torch.manual_seed(0)
    module = build(16)
    torch.nn.init.uniform_(module.gamma, 0.5, 1.5)
    shape = (1, 16, 3, 7, 9) if key in bench_attention.VIDEO else (1, 16, 7, 9)  # a clip of 3 frames for cc3d
    x = torch.randn(shape).to(bench_attention.DTYPES[dtype])  # batch 1: the published FLA mixes images
    grad = torch.randn_like(x)
    results = []
    for fn in [ours] + [ref for _, ref, _ in references]:
        xr = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = fn(module, xr)
        out.backward(grad)
        assert out.dtype == x.dtype
        results.append((out.detach().float(), xr.grad.float()))
    for out, g in results[1:]:
        if dtype == "fp32":
            torch.testing.assert_close(out, results[0][0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(g, results[0][1], rtol=1e-4, atol=1e-4)
        else:  # the module's fast path against the fp32 formula: the tolerance of tests/heads/test_bf16.py
            for ref, ours in ((out, results[0][0]), (g, results[0][1])):
                assert (ours - ref).norm() <= 2e-2 * ref.norm()


@pytest.mark.slow
def test_attention_script_writes_the_table(tmp_path):
    out = tmp_path / "tmp.md"
    cmd = [
        sys.executable,
        "-m",
        "bench.attention",
        "--sizes",
        "8x8",
        "--channels",
        "32",
        "--repeat",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    rows = table_rows(text, 8)
    expected = {(label, ref) for label, _, _, refs in bench_attention.MODULES.values() for ref, _, _ in refs}
    assert {(r[0], r[1]) for r in rows} == expected
    shapes = {(r[0], r[2], r[3]) for r in rows}
    for label, _, _, _ in bench_attention.MODULES.values():  # the video module's input is a clip of 3 frames
        shape = "1x32x8x8, T=3" if label.startswith("3D") else "1x32x8x8"
        assert {(label, shape, "fp32"), (label, shape, "bf16")} <= shapes
    assert len(rows) == 2 * len(expected)
    for row in rows:
        ms, mib = row[4], row[5]
        assert " / " in ms and float(ms.split(" / ")[0]) >= 0 and float(mib.split(" / ")[0]) > 0, row
        assert row[6:] == ["not measured", "not measured"]  # no CUDA here
    assert "- CPU: " in text and "python -m bench.attention --sizes 8x8 --channels 32" in text
    assert text.startswith("<!-- bench/attention.py -->") and "<!-- /bench/attention.py -->" in text
    # both dtypes measured: the second section gives each module's bf16 speed-up over fp32
    assert text.rstrip().endswith("<!-- /bench/attention.py bf16 -->")
    speedups = table_rows(text[text.index("<!-- bench/attention.py bf16 -->") :], 9)
    assert {r[0] for r in speedups} == {label for label, _, _, _ in bench_attention.MODULES.values()}
    for row in speedups:
        fp32, bf16, ratio = float(row[3]), float(row[4]), row[5]
        assert row[1] in ("1x32x8x8", "1x32x8x8, T=3") and row[2] == "contiguous" and ratio.endswith("x"), row
        assert float(ratio[:-1]) == pytest.approx(fp32 / bf16, rel=0.02, abs=0.01), row  # of the unrounded times
        assert row[6:] == ["not measured"] * 3


def test_attention_runs_merge_into_one_table_and_skip_what_is_too_large(tmp_path, keep_threads):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nProse that stays.\n")
    common = ["--channels", "16", "--repeat", "1", "--dtypes", "fp32", "--out", str(out)]
    bench_attention.main(["--sizes", "6x6", "--modules", "pam", "cc1", *common])
    first = out.read_text()
    bench_attention.main(["--sizes", "5x9", "--modules", "pam", "--max-map-gib", "0", *common])
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nProse that stays.\n") and text.count("<!-- bench/attention.py -->") == 1
    rows = {(r[0], r[1], r[2]): r for r in table_rows(text, 8)}
    assert set(rows) == {
        ("PAM", "naive N x N", "1x16x6x6"),
        ("criss-cross R=1", "einsum rows + columns", "1x16x6x6"),
        ("criss-cross R=1", "masked N x N", "1x16x6x6"),
        ("PAM", "naive N x N", "1x16x5x9"),
    }
    skipped = rows[("PAM", "naive N x N", "1x16x5x9")]
    assert "skipped (N x N map would need" in skipped[4] and "skipped" in skipped[5]
    assert rows[("PAM", "naive N x N", "1x16x6x6")] == next(r for r in table_rows(first, 8) if r[2] == "1x16x6x6")
    assert text.count("    python -m bench.attention") == 2


def test_update_section_keeps_cells_a_run_did_not_measure(tmp_path):
    path = tmp_path / "b.md"
    header = ["module", "input", "CPU ms", "CUDA ms"]
    bench_common.update_section(
        path, "s", header, [["PAM", "8x8", "not measured", "3.0"]], 2, {"CUDA": "a GPU"}, "python x.py --device cuda"
    )
    bench_common.update_section(
        path, "s", header, [["PAM", "8x8", "5.0", "not measured"]], 2, {"CPU": "a CPU"}, "python x.py --device cpu"
    )
    text = path.read_text()
    assert table_rows(text, 4) == [["PAM", "8x8", "5.0", "3.0"]]
    assert "- CPU: a CPU" in text and "- CUDA: a GPU" in text


@pytest.mark.slow
def test_model_script_measures_every_head(tmp_path):
    out = tmp_path / "m.md"
    bench_model.main(
        [
            "--device",
            "cpu",
            "--heads",
            "fcn",
            "danet",
            "--encoders",
            "resnet18",
            "--sizes",
            "32",
            "--batch",
            "2",
            "--precision",
            "bf16-mixed",
            "fp32",
            "--layouts",
            "channels-last",
            "contiguous",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ]
    )
    rows = table_rows(out.read_text(), 15)
    settings = ["fp32", "fp32 (channels-last)", "bf16-mixed", "bf16-mixed (channels-last)"]  # the baseline first
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (head, "resnet18-D8", "32x32", "2", setting, "cpu") for head in ("fcn", "danet") for setting in settings
    ]
    for row in rows:
        params, train_rate, train_gib, flops, eval_rate, eval_gib, slide_rate, train_up, eval_up = row[6:]
        assert float(params) > 11 and float(train_rate) > 0 and float(eval_rate) > 0 and float(slide_rate) > 0
        assert float(train_gib) > float(eval_gib) > 0.04  # at least the weights (11M fp32); training holds more
        assert float(flops.split()[0]) > 0 and flops.endswith("(n/a)")  # no MFU without a known GPU peak
        baseline = next(r for r in rows if r[0] == row[0] and r[4] == "fp32")
        # two decimals, from the unrounded rates
        assert float(train_up[:-1]) == pytest.approx(float(train_rate) / float(baseline[7]), rel=0.02, abs=0.006), row
        assert float(eval_up[:-1]) == pytest.approx(float(eval_rate) / float(baseline[10]), rel=0.02, abs=0.006), row


@pytest.mark.slow
def test_model_script_measures_each_output_stride(tmp_path):
    out = tmp_path / "m.md"
    bench_model.main(
        [
            "--device",
            "cpu",
            "--heads",
            "fcn",
            "--encoders",
            "resnet18",
            "--output-strides",
            "8",
            "16",
            "--sizes",
            "32",
            "--batch",
            "1",
            "--precision",
            "fp32",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ]
    )
    rows = table_rows(out.read_text(), 15)
    assert [r[1] for r in rows] == ["resnet18-D8", "resnet18-D16"]
    assert rows[0][6] == rows[1][6] and all(float(r[7]) > 0 for r in rows)  # the same weights, each one measured


def camvid_result(head: str, seed, miou: float, minutes: float = 30.0) -> dict:
    test = {"test/mIoU": miou, **{f"test/IoU/{c}": miou for c in bench_camvid.CLASSES}}
    return {"head": head, "seed": seed, "test": test, "steps": 1500, "fit_minutes": minutes, "checkpoint": "x"}


def test_camvid_table_gives_each_run_and_the_mean_and_std_of_a_heads_seeds():
    results = [
        camvid_result("fcn", 0, 0.60, 30.0),
        camvid_result("fcn", 1, 0.62, 32.0),
        camvid_result("fcn", 2, 0.64),
        camvid_result("danet", 0, 0.65, 45.0),
    ]
    lines = bench_camvid.table(results).splitlines()
    assert lines[0].startswith("| run | test mIoU | Sky |") and lines[0].endswith("| steps | fit (min) | s/iter |")
    assert lines[2].startswith("| fcn (seed 0) | **60.0** | 60.0 |") and lines[2].endswith("| 1500 | 30.0 | 1.20 |")
    assert lines[5].startswith("| fcn, mean ± std of 3 | **62.0 ± 2.0** | 62.0 ± 2.0 |")
    assert lines[5].endswith("| 1500 | 30.7 ± 1.2 | |")
    assert lines[6].startswith("| danet (seed 0) | **65.0** |") and len(lines) == 7  # one seed: no mean row


def test_complexity_script_counts_parameters_and_flops(tmp_path):
    out = tmp_path / "c.md"
    bench_complexity.main(["--heads", "fcn", "ccnet", "--encoder", "resnet18", "--size", "32", "--out", str(out)])
    rows = {r[0]: r for r in table_rows(out.read_text(), 7)}
    assert set(rows) == {"fcn", "ccnet"}
    for head, row in rows.items():
        model = bench_model.build_task(head, "resnet18").model
        assert float(row[3]) == pytest.approx(sum(p.numel() for p in model.head.parameters()) / 1e6, abs=0.01)
        assert float(row[4]) == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.01)
        assert 0 < float(row[5]) < float(row[6])
    assert float(rows["ccnet"][6]) > float(rows["fcn"][6])  # the same encoder; CCNet's head is the larger one


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


def test_data_script_reads_a_data_group_file():
    from tests.helpers.cli import CONFIGS, SHARED

    root = SHARED / "data" / "camvid"
    if not root.is_dir():
        pytest.skip("../shared/data/camvid is absent")
    data = bench_data.build_data(CONFIGS / "data" / "camvid_half.yaml", root, workers=0, cache=False)
    assert len(data.train_dataset) == 367 + 101 and list(data.hparams.crop_size) == [180, 240]


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
