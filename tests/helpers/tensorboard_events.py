"""Read a TensorBoard run directory back with TensorBoard's own reader (``EventAccumulator``), everything kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_events(log_dir: Path) -> dict[str, dict[str, list[tuple[int, Any]]]]:
    """``{"scalars": {tag: [(step, value)]}, "images": {tag: [(step, (width, height))]}, "text": {tag: [(step,
    markdown)]}}`` of the event files in ``log_dir``; text tags without the ``/text_summary`` suffix SummaryWriter
    adds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    out: dict[str, dict[str, list[tuple[int, Any]]]] = {"scalars": {}, "images": {}, "text": {}}
    for tag in tags["scalars"]:
        out["scalars"][tag] = [(e.step, e.value) for e in events.Scalars(tag)]
    for tag in tags["images"]:
        out["images"][tag] = [(e.step, (e.width, e.height)) for e in events.Images(tag)]
    for tag in tags["tensors"]:
        if events.SummaryMetadata(tag).plugin_data.plugin_name == "text":
            texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
            out["text"][tag.removesuffix("/text_summary")] = texts
    return out
