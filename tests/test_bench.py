"""The benchmark scripts end to end at tiny sizes (tables, merging into a Markdown file, skipped cases), and the
attention references they time against the modules: the same formula, the same outputs. No timing assertions."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench.attention as bench_attention
import bench.camvid_results as bench_camvid
import bench.common as bench_common
import bench.complexity as bench_complexity
import bench.data as bench_data
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
        "--device cpu --heads fcn danet --encoders resnet18 --sizes 32 --batch 2 --steps 1 --warmup 0".split()
        + "--precision bf16-mixed fp32 --layouts channels-last contiguous".split()
        + ["--out", str(out)]
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
        "--device cpu --heads fcn --encoders resnet18 --output-strides 8 16".split()
        + "--sizes 32 --batch 1 --precision fp32 --steps 1 --warmup 0 --out".split()
        + [str(out)]
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


def test_camvid_table_adds_the_multi_scale_flip_column_where_a_run_has_it():
    tested = {**camvid_result("fcn", 0, 0.60), "test_msflip": {"test/mIoU": 0.615}}
    lines = bench_camvid.table([tested, camvid_result("fcn", 1, 0.62)]).splitlines()
    assert lines[0].startswith("| run | test mIoU | MS+flip mIoU | Sky |")
    assert lines[2].startswith("| fcn (seed 0) | **60.0** | 61.5 | 60.0 |")
    assert lines[3].startswith("| fcn (seed 1) | **62.0** | - | 62.0 |")
    assert lines[4].startswith("| fcn, mean ± std of 2 | **61.0 ± 1.4** | - | 61.0 ± 1.4 |")  # not every seed tested
    assert all(len(line.split("|")) == len(lines[0].split("|")) for line in lines)


def fake_test(run: Path, calls: list):
    """``attnseg`` that records its arguments and writes a test's metrics.csv under ``run``."""

    def fake_attnseg(*args, log):
        calls.append(args)
        name = next(a.split("=", 1)[1] for a in args if a.startswith("--trainer.logger.name="))
        (run / name / "version_0").mkdir(parents=True)
        (run / name / "version_0" / "metrics.csv").write_text("test/mIoU,test/IoU/Sky\n0.625,0.9\n")

    return fake_attnseg


def test_camvid_tta_tests_a_finished_run_once_with_multi_scale_flip(tmp_path, monkeypatch):
    run = tmp_path / "fcn-s0"
    run.mkdir()
    ckpt = run / "last.ckpt"
    ckpt.write_text("weights")
    (run / "test.json").write_text(json.dumps({**camvid_result("fcn", 0, 0.60), "checkpoint": str(ckpt)}))
    calls = []
    monkeypatch.setattr(bench_camvid, "attnseg", fake_test(run, calls))
    args = argparse.Namespace(recipe="r", root=tmp_path, steps=None, extra=[], tta=True, keep=None)
    for _ in range(2):
        bench_camvid.run_head("fcn", 0, args, tmp_path)
    assert len(calls) == 1 and calls[0][0] == "test" and bench_camvid.TTA in calls[0]
    assert calls[0][-2:] == ("--ckpt_path", str(ckpt))  # the run's own checkpoint, as its test.json names it
    assert bench_camvid.with_tta(run / "test.json")["test_msflip"] == {"test/mIoU": 0.625, "test/IoU/Sky": 0.9}


def test_camvid_keep_skips_recorded_runs_and_records_new_tests(tmp_path, monkeypatch, capsys):
    """A run recorded in --keep is not trained again; its TTA result is recorded there; a run whose checkpoint is
    gone is not tested with --tta (it says so)."""
    keep, out = tmp_path / "kept", tmp_path / "out"
    keep.mkdir()
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_text("weights")
    (keep / "fcn-s0.json").write_text(json.dumps({**camvid_result("fcn", 0, 0.60), "checkpoint": str(ckpt)}))
    (keep / "danet-s0.json").write_text(json.dumps(camvid_result("danet", 0, 0.65)))  # checkpoint "x": gone
    calls = []
    monkeypatch.setattr(bench_camvid, "attnseg", fake_test(out / "fcn-s0", calls))
    args = argparse.Namespace(recipe="r", root=tmp_path, steps=None, extra=[], tta=True, keep=keep)
    assert bench_camvid.run_head("fcn", 0, args, out)["test"]["test/mIoU"] == 0.60
    assert bench_camvid.run_head("danet", 0, args, out)["test"]["test/mIoU"] == 0.65
    assert [c[0] for c in calls] == ["test"]  # no fit; one test, of the run whose checkpoint exists
    assert json.loads((keep / "fcn-s0.msflip.json").read_text())["test/mIoU"] == 0.625
    assert not (keep / "danet-s0.msflip.json").exists() and "which is gone; not tested" in capsys.readouterr().out
    assert (out / "danet-s0" / "test.json").is_file()  # the table of OUT lists it


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


def test_data_script_reads_a_data_group_file():
    from tests.helpers.cli import CONFIGS, SHARED

    root = SHARED / "data" / "camvid"
    if not root.is_dir():
        pytest.skip("../shared/data/camvid is absent")
    data = bench_data.build_data(CONFIGS / "data" / "camvid_half.yaml", root, workers=0, cache=False)
    assert len(data.train_dataset) == 367 + 101 and list(data.hparams.crop_size) == [180, 240]
