"""Train every head on CamVid with one shared recipe, test each on the 233 test images, print a Markdown table.

    python -m bench.camvid_results --root ../shared/data/camvid --out runs/camvid_results \
        [--recipe camvid_r18_cpu] [--heads fcn danet ...] [--seeds 0 1 2] [--steps N] [--tta] [--keep DIR]
        [-- EXTRA CLI ARGS]

Each head is ``attnseg fit --config configs/experiment/<recipe>.yaml --config configs/model/<head>.yaml``
(the recipe's iterations unless ``--steps``; DFN at output stride 32, its paper's) with the CSV logger under
``OUT/<head>`` (``OUT/<head>-s<seed>`` with ``--seeds``, each run with ``--seed_everything=<seed>``), then
``attnseg test`` on that run's ``last.ckpt`` (the recipes train on train + val, so no checkpoint is selected on
held-out data). Finished runs (``OUT/<run>/test.json``) are skipped, so the script can be stopped and started
again; a killed fit resumes from its last checkpoint (``--ckpt_path last``), and the fit's wall time adds up over
the runs that made it (``OUT/<run>/fit_seconds.json``). The table holds every finished run in ``OUT`` (so that
heads and seeds can be trained in several calls): test mIoU, per-class IoU, iterations, fit minutes, seconds per
iteration, and for a head with several seeds a row of their mean ± std; it goes to stdout and ``OUT/results.md``.
With ``--tta`` each run (a finished one too) is also tested with multi-scale + flip inference
(``attnseg.inference.MultiScaleFlip``: scales 0.5-1.75 and their mirror images, the DANet and CCNet papers' test
protocol), kept as ``OUT/<run>/test_msflip.json`` and shown as a column beside the single-scale mIoU. With
``--keep DIR`` every finished run's records are also written to ``DIR/<run>.json`` and ``DIR/<run>.msflip.json``
(a folder under version control, while ``OUT`` holds checkpoints and logs), and runs recorded there are skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from attnseg.data import CamVid
from attnseg.heads import head_configs

REPO = Path(__file__).resolve().parents[1]
HEADS = sorted(head_configs(), key=lambda name: (name != "fcn", name))  # configs/model/*.yaml, the baseline first
# DFN at output stride 32, as its paper and TorchSeg train it; every other head at the recipe's 8, with its defaults.
HEAD_ARGS = {"dfn": ["--model.encoder.output_stride=32"]}
CLASSES = list(CamVid.classes)
TTA = "--model.inference=attnseg.inference.MultiScaleFlip"  # its default scales 0.5 ... 1.75, with flips


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


def fit_args(head: str, seed: Optional[int], args: argparse.Namespace, directory: Path) -> list[str]:
    """The options of a run's ``attnseg fit``; its tests take the same with the logger named ``test``."""
    return [
        "--config",
        str(REPO / "configs" / "experiment" / f"{args.recipe}.yaml"),
        "--config",
        str(REPO / "configs" / "model" / f"{head}.yaml"),
        "--data.root",
        str(args.root),
        *(["--trainer.max_steps", str(args.steps)] if args.steps else []),
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={directory}",
        "--trainer.logger.name=fit",
        "--trainer.enable_progress_bar=false",
        *HEAD_ARGS.get(head, []),
        *([f"--seed_everything={seed}"] if seed is not None else []),
        *args.extra,
    ]


def run_test(common: list[str], directory: Path, ckpt: Path, name: str, *extra: str) -> dict[str, float]:
    """``attnseg test`` of ``ckpt`` logged under ``directory/name``; its test metrics."""
    test_args = [a if a != "--trainer.logger.name=fit" else f"--trainer.logger.name={name}" for a in common]
    attnseg("test", *test_args, *extra, "--ckpt_path", str(ckpt), log=directory / "log.txt")
    return last_metrics(max((directory / name).glob("*/metrics.csv"), key=lambda p: p.stat().st_mtime), "test/")


def run_head(head: str, seed: Optional[int], args: argparse.Namespace, out: Path) -> dict:
    name = head if seed is None else f"{head}-s{seed}"
    directory = out / name
    done = directory / "test.json"
    tta = directory / "test_msflip.json"
    keep = args.keep
    if keep is not None:  # records kept earlier count as finished runs
        for record, local in ((keep / f"{name}.json", done), (keep / f"{name}.msflip.json", tta)):
            if record.is_file() and not local.is_file():
                directory.mkdir(parents=True, exist_ok=True)
                local.write_text(record.read_text())
    common = fit_args(head, seed, args, directory)
    if done.is_file():
        result = json.loads(done.read_text())
    else:
        result = fit_and_test(head, seed, common, directory)
        done.write_text(json.dumps(result, indent=1))
        keep_record(done, keep, f"{name}.json")
    if args.tta and not tta.is_file():
        if not Path(result["checkpoint"]).is_file():
            print(f"{name}: --tta needs its checkpoint {result['checkpoint']}, which is gone; not tested", flush=True)
            return result
        metrics = run_test(common, directory, Path(result["checkpoint"]), "test_msflip", TTA)
        tta.write_text(json.dumps(metrics, indent=1))
        keep_record(tta, keep, f"{name}.msflip.json")
    return result


def keep_record(path: Path, keep: Optional[Path], name: str) -> None:
    """A copy of a finished run's record in ``keep`` (``--keep``), where one is given."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / name).write_text(path.read_text())


def fit_and_test(head: str, seed: Optional[int], common: list[str], directory: Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
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
    attnseg("fit", *common, "--ckpt_path", "last", log=directory / "log.txt")
    segments.append(round(time.time() - start, 1))
    seconds.write_text(json.dumps(segments))
    running.unlink()
    ckpt = max((directory / "fit").glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return {
        "head": head,
        "seed": seed,
        "test": run_test(common, directory, ckpt, "test"),
        "steps": torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"],
        "fit_minutes": round(sum(segments) / 60, 1),
        "skipped_steps": skipped_steps(ckpt.parent.parent / "metrics.csv"),
        "checkpoint": str(ckpt),
    }


def skipped_steps(metrics_csv: Path) -> int:
    """Training steps the fit skipped (``model.nonfinite_loss: skip``), from its per-epoch ``train/skipped_steps``."""
    if not metrics_csv.is_file():
        return 0
    with open(metrics_csv, newline="") as f:
        return int(sum(float(r["train/skipped_steps"]) for r in csv.DictReader(f) if r.get("train/skipped_steps")))


def table(results: list[dict]) -> str:
    """One row per run (a ``test_msflip`` entry, where any run has one, adds the multi-scale + flip mIoU) and, for a
    head with several seeds, a row of their mean ± std."""
    tta = any("test_msflip" in r for r in results)
    short = [c[:8] for c in CLASSES]
    msflip_header = "MS+flip mIoU | " if tta else ""
    lines = [
        f"| run | test mIoU | {msflip_header}" + " | ".join(short) + " | steps | fit (min) | s/iter |",
        "|---|---|" + ("---|" if tta else "") + "---|" * len(CLASSES) + "---|---|---|",
    ]
    by_head: dict[str, list[dict]] = {}
    for r in results:
        by_head.setdefault(r["head"], []).append(r)
    for head, runs in by_head.items():
        for r in runs:
            t = r["test"]
            name = head if r.get("seed") is None else f"{head} (seed {r['seed']})"
            msflip = f"{100 * r['test_msflip']['test/mIoU']:.1f} | " if "test_msflip" in r else "- | "
            ious = " | ".join(f"{100 * t[f'test/IoU/{c}']:.1f}" for c in CLASSES)
            per_step = 60 * r["fit_minutes"] / max(1, r["steps"])
            lines.append(
                f"| {name} | **{100 * t['test/mIoU']:.1f}** | {msflip if tta else ''}{ious} | {r['steps']} | "
                f"{r['fit_minutes']} | {per_step:.2f} |"
            )
        if len(runs) > 1:
            cells = [
                spread([100 * r["test"][key] for r in runs])
                for key in ["test/mIoU"] + [f"test/IoU/{c}" for c in CLASSES]
            ]
            msflips = [100 * r["test_msflip"]["test/mIoU"] for r in runs if "test_msflip" in r]
            msflip = (spread(msflips) if len(msflips) == len(runs) else "-") + " | "
            minutes = spread([r["fit_minutes"] for r in runs])
            lines.append(
                f"| {head}, mean ± std of {len(runs)} | **{cells[0]}** | {msflip if tta else ''}"
                f"{' | '.join(cells[1:])} | {runs[0]['steps']} | {minutes} | |"
            )
    return "\n".join(lines)


def with_tta(done: Path) -> dict:
    """A run's ``test.json`` with its multi-scale + flip metrics (``test_msflip.json`` beside it), where tested."""
    result = json.loads(done.read_text())
    tta = done.parent / "test_msflip.json"
    if tta.is_file():
        result["test_msflip"] = json.loads(tta.read_text())
    return result


def spread(values: list[float]) -> str:
    """``mean ± std`` (sample standard deviation) of ``values``, one decimal."""
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the CamVid folder (SegNet layout)")
    parser.add_argument("--out", type=Path, default=Path("runs/camvid_results"))
    parser.add_argument("--recipe", default="camvid_r18_cpu", help="configs/experiment/<recipe>.yaml")
    parser.add_argument("--heads", nargs="+", default=HEADS, choices=HEADS)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="one run per seed (default: one run)")
    parser.add_argument("--steps", type=int, default=None, help="training iterations (default: the recipe's)")
    parser.add_argument("--tta", action="store_true", help="also test with multi-scale + flip (a column of the table)")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="a folder of finished runs' records (<run>.json, <run>.msflip.json): those runs are skipped, and each "
        "run that finishes is recorded there too, e.g. docs/results/camvid_mobilenetv2",
    )
    args = parser.parse_args(argv)
    args.extra = extra
    if not (args.root / "testannot").is_dir():
        raise SystemExit(f"--root {args.root}: expected the SegNet CamVid layout (train/, trainannot/, test/, ...)")
    if not (REPO / "configs" / "experiment" / f"{args.recipe}.yaml").is_file():
        raise SystemExit(f"--recipe {args.recipe}: no configs/experiment/{args.recipe}.yaml")
    for head in args.heads:
        for seed in args.seeds or [None]:
            run_head(head, seed, args, args.out)
    results = [with_tta(p) for p in args.out.glob("*/test.json")]
    results.sort(key=lambda r: (HEADS.index(r["head"]), r.get("seed") if r.get("seed") is not None else -1))
    text = (
        f"{table(results)}\n\nMachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.\n"
    )
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
