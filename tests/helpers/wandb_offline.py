"""Read an offline W&B run (``<save_dir>/wandb/offline-run-*``) the way ``wandb sync`` would upload it.

wandb >= 0.19 writes the run's summary and config only into ``run-<id>.wandb`` (a LevelDB-style log of protobuf
``Record`` messages), not into ``files/wandb-summary.json``; ``read_run`` decodes that log.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32768  # LevelDB log block size
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """Every ``wandb_internal_pb2.Record`` in a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_in(directory: Path) -> list[str]:
    """CLI arguments that log W&B runs under an absolute ``directory``. The W&B service process outlives a test and
    resolves a relative ``save_dir`` against its own working directory (an earlier test's): the run file would be
    lost."""
    return ["--trainer.logger.init_args.save_dir", str(directory)]


def _apply(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    node = target
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = json.loads(item.value_json)


def read_run(run_dir: Path) -> dict[str, Any]:
    """``{"summary": {...}, "config": {...}, "group": str, "name": str, "tags": [...], "history_keys": set,
    "history": [{...}]}`` of
    one offline run; ``history`` has one dict (key: value) per ``log`` call, in order."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict[str, Any] = {
        "summary": {},
        "config": {},
        "group": "",
        "name": "",
        "tags": [],
        "history_keys": set(),
        "history": [],
    }
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"], out["tags"] = (
                record.run.run_group,
                record.run.display_name,
                list(record.run.tags),
            )
            for item in record.run.config.update:
                _apply(out["config"], item)
        elif kind == "config":
            for item in record.config.update:
                _apply(out["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                _apply(out["summary"], item)
        elif kind == "history":
            row = {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            out["history_keys"].update(row)
            out["history"].append(row)
    return out
