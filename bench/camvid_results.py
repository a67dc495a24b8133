"""Train every head on CamVid with one shared recipe, test each on the 233 test images, print a Markdown table.

    python bench/camvid_results.py --root ../shared/data/camvid --out runs/camvid_results \
        [--heads fcn danet ccnet flanet dfn] [--steps N] [-- EXTRA CLI ARGS]

Each head is ``attnseg fit --config configs/experiment/camvid_r18_cpu.yaml --config configs/model/<head>.yaml``
(the recipe's iterations unless ``--steps``; DFN at output stride 32, its paper's) with the CSV logger under
``OUT/<head>``, then ``attnseg test`` on that run's ``last.ckpt`` (the recipe trains on train + val, so no
checkpoint is selected on held-out data). Finished heads (``OUT/<head>/test.json``) are skipped, so the script
can be stopped and started again; a killed fit resumes from its last checkpoint (``--ckpt_path last``), and the
fit's wall time adds up over the runs that made it (``OUT/<head>/fit_seconds.json``). The table (test mIoU,
per-class IoU, iterations, fit minutes) goes to stdout and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "experiment" / "camvid_r18_cpu.yaml"
HEADS = ["fcn", "danet", "ccnet", "flanet", "dfn"]
# DFN at output stride 32, as its paper and TorchSeg train it; every other head at the recipe's 8, with its defaults.
HEAD_ARGS = {"dfn": ["--model.encoder.output_stride=32"]}
CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"]  # fmt: skip


def attnseg(*args: str, log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ attnseg {' '.join(args)}\n")
        f.flush()
        code = subprocess.run([str(Path(sys.executable).parent / "attnseg"), *args], stdout=f, stderr=f).returncode
    if code != 0:
        raise SystemExit(f"attnseg {args[0]} failed (exit {code}); see {log}")


def last_metrics(metrics_csv: Path, prefix: str) -> dict[str, float]:
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get(f"{prefix}mIoU")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith(prefix) and v != ""}


def run_head(head: str, args: argparse.Namespace, out: Path) -> dict:
    directory = out / head
    done = directory / "test.json"
    if done.is_file():
        return json.loads(done.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    common = [
        "--config", str(RECIPE), "--config", str(REPO / "configs" / "model" / f"{head}.yaml"),
        "--data.root", str(args.root), *(["--trainer.max_steps", str(args.steps)] if args.steps else []),
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={directory}",
        "--trainer.logger.name=fit", "--trainer.enable_progress_bar=false", *HEAD_ARGS.get(head, []), *args.extra,
    ]  # fmt: skip
    log = directory / "log.txt"
    seconds = directory / "fit_seconds.json"  # wall time of the fit, over every run that continued it
    running = directory / "fit_running.json"  # the start of a run in progress (left behind if it was killed)
    segments = json.loads(seconds.read_text()) if seconds.is_file() else []
    if running.is_file():  # a killed run counts until its last checkpoint: what came after is trained again
        lasts = list((directory / "fit").glob("*/checkpoints/last.ckpt"))
        began = json.loads(running.read_text())["start"]
        if lasts:
            segments.append(round(max(p.stat().st_mtime for p in lasts) - began, 1))
    start = time.time()
    running.write_text(json.dumps({"start": start}))
    seconds.write_text(json.dumps(segments))
    attnseg("fit", *common, "--ckpt_path", "last", log=log)
    segments.append(round(time.time() - start, 1))
    seconds.write_text(json.dumps(segments))
    running.unlink()
    fit_s = sum(segments)
    ckpt = max((directory / "fit").glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    test_args = [a if a != "--trainer.logger.name=fit" else "--trainer.logger.name=test" for a in common]
    attnseg("test", *test_args, "--ckpt_path", str(ckpt), log=log)
    metrics_csv = max((directory / "test").glob("*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    result = {
        "head": head,
        "test": last_metrics(metrics_csv, "test/"),
        "steps": torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"],
        "fit_minutes": round(fit_s / 60, 1),
        "checkpoint": str(ckpt),
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict]) -> str:
    short = [c[:8] for c in CLASSES]
    lines = [
        "| head | test mIoU | " + " | ".join(short) + " | steps | fit (min) |",
        "|---|---|" + "---|" * len(CLASSES) + "---|---|",
    ]
    for r in results:
        t = r["test"]
        ious = " | ".join(f"{100 * t[f'test/IoU/{c}']:.1f}" for c in CLASSES)
        lines.append(f"| {r['head']} | **{100 * t['test/mIoU']:.1f}** | {ious} | {r['steps']} | {r['fit_minutes']} |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the CamVid folder (SegNet layout)")
    parser.add_argument("--out", type=Path, default=Path("runs/camvid_results"))
    parser.add_argument("--heads", nargs="+", default=HEADS, choices=HEADS)
    parser.add_argument("--steps", type=int, default=None, help="training iterations (default: the recipe's)")
    args = parser.parse_args(argv)
    args.extra = extra
    if not (args.root / "testannot").is_dir():
        raise SystemExit(f"--root {args.root}: expected the SegNet CamVid layout (train/, trainannot/, test/, ...)")
    results = [run_head(head, args, args.out) for head in args.heads]
    text = f"{table(results)}\n\nMachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads.\n"  # fmt: skip
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
