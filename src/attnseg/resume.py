"""What a ``--ckpt_path`` means before a run reads it: ``last`` resolved to this experiment's ``last.ckpt``
(``last_of_this_experiment``), a checkpoint file written by ``fit`` (an error says what was found instead), and which
of the user's model options may differ from the checkpoint's (``RESUMABLE``: how it trains and evaluates) and which
must match (the rest for ``fit``; ``MODEL_DEFINING`` for an evaluation): ``differences``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from attnseg.experiments import NOT_IDENTITY, experiment_fingerprint, last_checkpoints


def check_checkpoint_path(path: str) -> None:
    """A ``--ckpt_path`` that is a checkpoint file written by ``fit``, or an error that says what was found."""
    target = Path(path)
    if target.is_file():
        saved = load_checkpoint(path)
        wanted = ("state_dict", "pytorch-lightning_version")
        missing = [key for key in wanted if key not in saved] if isinstance(saved, dict) else list(wanted)
        if missing:
            keys = ", ".join(sorted(map(str, saved))[:8]) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(
                f"--ckpt_path {path}: not a checkpoint written by attnseg fit (no {' or '.join(missing)}; it holds "
                f"{keys}); pass a .ckpt from a run's checkpoints/ folder"
            )
        return
    if target.is_dir():
        found = sorted(str(p) for p in target.rglob("*.ckpt"))
        listing = ": " + ", ".join(found[:6]) + (" ..." if len(found) > 6 else "") if found else " (none inside)"
        raise ValueError(f"--ckpt_path {path}: a directory; pass one checkpoint file in it{listing}")
    if path in ("best", "hpc", "registry"):
        raise ValueError(
            f"--ckpt_path {path}: names the best checkpoint of a fit in the same process only; from the command "
            "line pass the file (runs/<project>/<run>/checkpoints/best-*.ckpt) or `last` (this experiment's last.ckpt)"
        )
    raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file")


def load_checkpoint(path: str) -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped), or an error that names it and says what it is."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        head = Path(path).read_bytes()[:512]
        if head and all(32 <= b < 127 or b in b"\r\n\t" for b in head):
            what = "a text file, not a checkpoint"
        elif head[:2] == b"PK":
            what = "a truncated or damaged checkpoint (an interrupted copy, a full disk?)"
        else:
            what = "not a checkpoint written by torch.save"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"--ckpt_path {path}: {what} ({reason}); expected a .ckpt file written by attnseg fit"
        ) from error


# Model options that define the network a checkpoint holds (what validate / test / predict must match).
MODEL_DEFINING = {"head", "encoder", "num_classes"}
# model options a resumed fit may change: how it trains and evaluates (not the experiment), except the optimiser's kind
# and its parameter groups, which the checkpoint's optimiser state is tied to
RESUMABLE = NOT_IDENTITY["model"] - {"optimizer", "no_decay_norm_bias"}


def same(a, b) -> bool:
    """Equal as configuration values (tuples and lists alike)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def last_of_this_experiment(root: Path, resolved: dict, defaults: dict) -> Optional[Path]:
    """``--ckpt_path last``: the ``last.ckpt`` of the one run under ``root/*/checkpoints`` that trains the experiment of
    ``resolved`` (its fingerprint; ``defaults`` fill what a saved config lacks), said in one line; None (start from
    scratch, with a warning) when there is none; an error naming them when there are several."""
    fingerprint = experiment_fingerprint(resolved)
    found, others, unreadable = last_checkpoints(root, resolved, defaults)
    for run in unreadable:
        rank_zero_warn(f"--ckpt_path last: passed over {run}: it has a last.ckpt but no readable config.yaml")
    if not found:
        elsewhere = f" ({others} run(s) there belong to other experiments)" if others else ""
        rank_zero_warn(
            f"--ckpt_path last: no last.ckpt of this experiment (fingerprint {fingerprint}) under "
            f"{root}/*/checkpoints{elsewhere}; starting from scratch"
        )
        return None
    if len(found) > 1:
        raise ValueError(
            f"--ckpt_path last: {len(found)} runs of this experiment (fingerprint {fingerprint}) under "
            f"{root}: " + ", ".join(str(p) for p in found) + ". Pass the checkpoint to resume as --ckpt_path"
        )
    rank_zero_info(f"--ckpt_path last: resuming this experiment (fingerprint {fingerprint}) from {found[0]}")
    return found[0]


def differences(ours: dict, default: dict, theirs: dict, given: set[str]) -> tuple[dict, dict]:
    """The model options (flat ``model.x.y`` keys) the user set (``given``, or other than ``default``) whose value
    differs from the checkpoint's (``theirs``): ``(kept, differ)``, each ``{key: (ours, theirs)}``. Kept: the
    ``RESUMABLE`` ones, used as given; differ: the rest, which must match the checkpoint."""
    kept, differ = {}, {}
    for key, value in ours.items():
        if key not in theirs or not (key in given or value != default.get(key)) or same(value, theirs[key]):
            continue
        (kept if key.split(".")[1] in RESUMABLE else differ)[key] = (value, theirs[key])
    return kept, differ
