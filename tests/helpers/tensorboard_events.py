"""Read a TensorBoard run directory back with TensorBoard's own reader (``EventAccumulator``), everything kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def hparams_of(events) -> dict[str, Any]:
    """The HParams plugin's records of a run: ``{"sessions": n, "values": {name: value}, "metrics": [tag]}``."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    out: dict[str, Any] = {"sessions": 0, "values": {}, "metrics": []}
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            out["sessions"] += 1
            for name, value in data.session_start_info.hparams.items():
                out["values"][name] = getattr(value, value.WhichOneof("kind"))
        if data.HasField("experiment"):
            out["metrics"] = [m.name.tag for m in data.experiment.metric_infos]
    return out


def read_events(log_dir: Path) -> dict[str, Any]:
    """``{"scalars": {tag: [(step, value)]}, "images": {tag: [(step, (width, height))]}, "text": {tag: [(step,
    markdown)]}, "hparams": hparams_of(...)}`` of the event files in ``log_dir``; text tags without the
    ``/text_summary`` suffix SummaryWriter adds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    out: dict[str, Any] = {"scalars": {}, "images": {}, "text": {}, "hparams": hparams_of(events)}
    for tag in tags["scalars"]:
        out["scalars"][tag] = [(e.step, e.value) for e in events.Scalars(tag)]
    for tag in tags["images"]:
        out["images"][tag] = [(e.step, (e.width, e.height)) for e in events.Images(tag)]
    for tag in tags["tensors"]:
        if events.SummaryMetadata(tag).plugin_data.plugin_name == "text":
            texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
            out["text"][tag.removesuffix("/text_summary")] = texts
    return out
