"""What the benchmark scripts share: timing and peak memory of a step, number formatting, the machine's line, and
Markdown tables written into a section of a file that later runs update."""

from __future__ import annotations

import datetime
import os
import platform
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
NOT_MEASURED = "not measured"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocations(prof) -> list[tuple[int, int]]:
    """(time, bytes) of every allocation (+) and free (-) the profiler recorded."""
    from torch._C._profiler import _EventType

    found, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            found.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    return sorted(found, key=lambda item: item[0])


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak of the memory allocated by ``fn`` above what was allocated before it (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for _, size in allocations(prof):
        live += size
        peak = max(peak, live)
    return peak


def seconds(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def number(value: float) -> str:
    """Three significant digits at most, without exponents: 1388, 41.3, 0.12."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def machine(device: torch.device) -> str:
    """One line naming the machine a device's numbers come from."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB; CUDA {torch.version.cuda}; "
            f"PyTorch {torch.__version__}"
        )
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s); PyTorch {torch.__version__}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_rows(text: str, columns: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and not set(line) <= set("|-: "):
            rows.append(cells)
    return rows[1:]  # without the header


def update_section(
    path: Path,
    name: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    key_columns: int,
    machines: dict[str, str],
    command: str,
    notes: str = "",
) -> str:
    """Write (or update) the section ``<!-- name -->`` ... ``<!-- /name -->`` of the Markdown file ``path``.

    A row whose first ``key_columns`` cells equal an earlier row's replaces it, keeping the earlier cells where
    the new row says ``not measured``; other earlier rows stay. ``machines`` (``{device label: description}``)
    replace the lines of the same devices; the command is added to the section's list. Returns the section.
    """
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text() if path.is_file() else ""
    old = text[text.index(begin) : text.index(end) + len(end)] if begin in text and end in text else ""
    old_rows = parse_rows(old, len(header))
    old_machines = dict(re.findall(r"^- (\w+): (.*)$", old, flags=re.M))
    old_commands = re.findall(r"^    (python .*)$", old, flags=re.M)
    old_commands = [re.sub(r"^python bench/(\w+)\.py", r"python -m bench.\1", c) for c in old_commands]
    merged = {tuple(row[:key_columns]): list(row) for row in old_rows}
    for row in rows:
        key = tuple(row[:key_columns])
        previous = merged.get(key)
        merged[key] = [p if n == NOT_MEASURED and previous else n for n, p in zip(row, previous or row)]
    all_machines = {**old_machines, **machines}
    commands = old_commands + ([command] if command not in old_commands else [])
    today = datetime.date.today().isoformat()
    body = [begin, f"Last updated {today}.", ""]
    body += [f"- {label}: {description}" for label, description in sorted(all_machines.items())]
    body += ["", "Commands:", ""] + [f"    {c}" for c in commands] + [""]
    body += [notes, ""] if notes else []
    body += [table(header, list(merged.values())), end]
    section = "\n".join(body)
    if old:
        text = text.replace(old, section)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return section


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reran a benchmark: ``python -m bench.<module> ...``."""
    return " ".join(["python", "-m", module, *argv])
