"""``attnseg sweep``'s arguments and its loop over grid points and seeds."""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml
from lightning.pytorch.utilities import rank_zero_only

from attnseg.signals import clear_stop, stop_received
from attnseg.sweep.report import earlier_rows, run_seconds, write_results
from attnseg.sweep.run import check_points, run_point, unfinished_checkpoint
from attnseg.sweep.spec import Sweep, point_label, restrict, run_key
from attnseg.sweep.wandb_export import wandb_sweep

try:
    import fcntl
except ImportError:  # not POSIX: one sweep per folder at a time
    fcntl = None

LOCK_FILE = ".results.lock"


@contextlib.contextmanager
def results_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.results.lock`` (the operating system's ``flock``, released however the process ends) while the
    results are read, merged and written, so that sweeps running side by side into one folder (``--only`` or
    ``--seeds`` on disjoint runs) never drop each other's rows."""
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def rows_on_disk(whole: Sweep, numbers: dict[str, int], out: Path) -> dict[str, dict[str, Any]]:
    """The rows in ``out/results.csv`` now (written by this sweep's earlier calls or by one running beside it, with
    other ``--only`` or ``--seeds``), by run key, numbered in the whole grid; call it holding ``results_lock``."""
    table = earlier_rows(whole, out)
    for key, row in table.items():
        row["run"] = numbers.get(key, row["run"])
    return table


def record(
    whole: Sweep, numbers: dict[str, int], mine: dict[str, dict[str, Any]], out: Path, group: str, extra: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Rewrite ``out``'s results: the rows on disk now with this call's rows ``mine`` in place of theirs; returns
    the merged table."""
    with results_lock(out):
        table = rows_on_disk(whole, numbers, out)
        table.update(mine)
        write_results(whole, sorted(table.values(), key=lambda row: row["run"]), out, group, extra)
    return table


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="attnseg sweep",
        description="Fit (then test) every combination of a sweep file's grid; write results.csv/.md/.png.",
        epilog="Arguments after -- go to every run, e.g. -- --trainer.max_epochs=2 --config configs/logger/csv.yaml",
    )
    parser.add_argument("sweep", help="sweep file (YAML with base, grid, and optionally fixed, name, test)")
    parser.add_argument("--out", default=None, help="folder for the results (default: runs/sweeps/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out (what a re-run does anyway): finished runs are kept, failed "
        "and unfinished ones run again, the latter from their last.ckpt",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="run every grid point once per seed (overrides the file's seeds), e.g. --seeds 0 1 2",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run only these values of a grid key (repeatable), e.g. --only head=pspnet,fcn",
    )
    parser.add_argument(
        "--wandb-sweep",
        default=None,
        metavar="FILE",
        help="write the grid as a W&B sweep file (wandb sweep FILE; wandb agent ID), run nothing",
    )
    return parser.parse_args(argv), extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``attnseg sweep``; returns the exit status (0: every run succeeded)."""
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sweep = Sweep.from_file(args.sweep)
    except ValueError as err:
        print(f"attnseg sweep: {err}", file=sys.stderr)
        return 2
    whole = copy.deepcopy(sweep)  # before --only and --seeds: the table and the run numbers cover the whole grid
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            print(f"attnseg sweep: --seeds {args.seeds} repeat a seed; each seed once", file=sys.stderr)
            return 2
        sweep.seeds = list(args.seeds)
        whole.seeds += [seed for seed in args.seeds if seed not in whole.seeds]  # the file's seeds, then new ones
    numbers = {run_key(point, seed): k for k, (point, seed) in enumerate(whole.runs())}
    try:
        for only in args.only:
            restrict(sweep, only)
    except ValueError as err:
        print(f"attnseg sweep: {err}", file=sys.stderr)
        return 2
    if args.wandb_sweep:
        try:
            spec = wandb_sweep(sweep, extra)
        except ValueError as err:
            print(f"attnseg sweep: {err}", file=sys.stderr)
            return 2
        target = Path(args.wandb_sweep)
        if target.exists():
            print(f"attnseg sweep: --wandb-sweep {target}: the file exists; choose another name", file=sys.stderr)
            return 2
        header = f"# W&B sweep of {sweep.path} ({len(sweep.runs())} runs): wandb sweep {target}; wandb agent <id>\n"
        target.write_text(header + yaml.safe_dump(spec, sort_keys=False, width=1000))
        print(f"wrote {target}: {len(sweep.runs())} runs; register it with: wandb sweep {target}")
        return 0
    runs = sweep.runs()
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    problems = check_points(sweep, extra)
    if problems:
        print(
            f"attnseg sweep: {sweep.path}: {len(problems)} grid point(s) do not parse; nothing was run:",
            *problems,
            sep="\n  ",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        then = ", then test on the best checkpoint" if sweep.test else ""
        points = len(runs) // len(sweep.seeds)
        print(f"Sweep {sweep.name}: {len(runs)} runs ({points} grid points x seeds {sweep.seeds}; fit{then})")
        for index, (point, seed) in enumerate(runs):
            print(f"[{index}] {point_label(point)},seed={seed}")
            print("    attnseg " + " ".join(sweep.arguments(point, extra, seed)))
        print(f"Results would go to {out}/results.{{csv,md,png}}")
        return 0

    group = f"{sweep.name}-{datetime.now():%Y%m%d-%H%M%S}"
    leader = rank_zero_only.rank == 0  # with several processes (DDP) every one runs the sweep; one writes results
    try:
        with results_lock(out):
            earlier = rows_on_disk(whole, numbers, out)
    except ValueError as err:
        print(f"attnseg sweep: {err}", file=sys.stderr)
        return 2
    planned = {run_key(point, seed) for point, seed in runs}
    mine: dict[str, dict[str, Any]] = {}  # this call's runs; each write merges them into the rows on disk
    if args.resume and not earlier:
        print(f"Sweep {sweep.name}: --resume: no results in {out} yet; starting the sweep")
    if earlier:
        kept = sum(row.get("status") == "ok" for key, row in earlier.items() if key in planned)
        print(f"Sweep {sweep.name}: continuing {out}/results.csv ({kept} of {len(runs)} runs finished earlier)")
    for position, (point, seed) in enumerate(runs):
        key = label = run_key(point, seed)
        index = numbers[key]  # the run's number in the whole grid, --only or not
        before = earlier.get(key)
        if before is not None and before.get("status") == "ok":
            print(f"\n=== sweep {sweep.name}: run {position + 1}/{len(runs)}: {label}: finished earlier, kept ===")
            continue
        resume = unfinished_checkpoint(out, point, seed)  # a run of this folder that did not finish
        then = f", continuing from {resume}" if resume is not None else ""
        print(f"\n=== sweep {sweep.name}: run {position + 1}/{len(runs)}: {label}{then} ===", flush=True)
        clear_stop()
        started = time.perf_counter()
        spent = run_seconds((before or {}).get("time_s")) if resume is not None else 0.0  # its earlier attempts
        try:
            mine[key] = run_point(
                sweep, index, point, extra, group, seed, out if leader else None, resume, (before or {}).get("curve")
            )
            mine[key]["time_s"] = round(mine[key]["time_s"] + spent, 1)
            stopped = stop_received()  # a stop signal whose run ended in an error first (a killed loader worker)
            code = 128 + stopped if stopped is not None else None
        except (KeyboardInterrupt, SystemExit) as err:  # Ctrl+C (Lightning turns it into SystemExit), SIGTERM
            code = err.code if isinstance(err, SystemExit) and isinstance(err.code, int) and err.code > 128 else 130
        if code is not None:  # the sweep stops here; a re-run continues this run from its last.ckpt
            mine[key] = {
                "run": index,
                **point,
                "seed": seed,
                "status": "interrupted",
                "error": "interrupted",
                "time_s": round(time.perf_counter() - started + spent, 1),
            }
            if leader:
                record(whole, numbers, mine, out, group, extra)
            print(f"\nSweep {sweep.name} interrupted at run {index}; results so far in {out}/", file=sys.stderr)
            return code
        if leader:
            record(whole, numbers, mine, out, group, extra)
    table = record(whole, numbers, mine, out, group, extra) if leader else {**earlier, **mine}
    ours = [row for key, row in table.items() if key in planned]
    failed = sum(row["status"] != "ok" for row in ours)
    if leader:
        print(f"\nSweep {sweep.name}: {len(ours) - failed}/{len(ours)} runs succeeded; results in {out}/")
        print((out / "results.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
