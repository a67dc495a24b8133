"""What a run trains, and the runs of one experiment.

``experiment_identity`` is what a resolved config trains (head, encoder, losses, data and its augmentation, seed), not
how (optimiser settings, speed knobs, loader options, where the data lies: ``NOT_IDENTITY``); ``same_experiment``
compares two configs by it; ``last_checkpoints`` finds the runs under a logger's directory whose saved
``config.yaml`` is the same experiment, so that ``--ckpt_path last`` continues the run of this experiment and no
other (``experiment_fingerprint`` names it in messages).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import yaml

# The model options of how a run is optimised: the optimiser and its schedule.
OPTIMISATION = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "no_decay_norm_bias",
    "head_lr_mult",
    "poly_power",
    "min_lr",
    "warmup_iters",
    "warmup_ratio",
)
# Options that do not change what an experiment is: a run resumed with other values is the same experiment.
NOT_IDENTITY = {
    "model": {
        *OPTIMISATION,
        "inference",
        "nonfinite_loss",
        "divergence_factor",
        "channels_last",
        "compile",
    },
    "data": {
        "root",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "cache_decoded",
        "check_before_fit",
        "val_batch_size",
        "val_split",
        "test_split",
        "predict_dir",
    },
}


def flatten(value, prefix: str) -> dict:
    """A nested config as ``{"prefix.key.subkey": leaf}``; a leaf is any value but a non-empty dict (None and ``{}``
    included: an unset option is a value like any other)."""
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def _flat(value, prefix: str, out: dict) -> dict:
    """``flatten`` into ``out`` with each leaf as its JSON text, for comparing and hashing."""
    out.update({k: json.dumps(v, sort_keys=True, default=str) for k, v in flatten(value, prefix).items()})
    return out


def experiment_identity(config: dict) -> dict[str, str]:
    """What a resolved config (a subcommand's, as in a run's ``config.yaml``) trains, flattened: its model and data
    options without ``NOT_IDENTITY`` and the encoder's weights file, and the seed."""
    items: dict[str, str] = {}
    for section in ("model", "data"):
        for key, value in (config.get(section) or {}).items():
            if key not in NOT_IDENTITY[section]:
                _flat(value, f"{section}.{key}", items)
    items.pop("model.encoder.pretrained", None)
    return _flat(config.get("seed_everything"), "seed", items)


def experiment_fingerprint(config: dict) -> str:
    """12 hex digits naming the experiment of a resolved config (``experiment_identity``), for messages."""
    text = json.dumps(experiment_identity(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_UNKNOWN = object()


def _resolved(items: dict[str, str], defaults: dict[str, str], key: str):
    """The value a config ran with for ``key``: its own, else (an option it predates) the default; another
    structure there (a dict where the other config has a value, or the reverse) is a difference."""
    if key in items:
        return items[key]
    if any(other.startswith(key + ".") or key.startswith(other + ".") for other in items):
        return "<another structure>"
    if key not in defaults and any(key.startswith(other + ".") for other in defaults):
        return "<another structure>"  # the default is a value (None) where the other config has a dict
    return defaults.get(key, _UNKNOWN)


def same_experiment(saved: dict, config: dict, defaults: Optional[dict] = None) -> bool:
    """Whether a run's saved config and ``config`` describe the same experiment: every identity option has the
    same resolved value, unset (None) values included. An option only one of them has (added by a later version
    of attnseg) counts with its value in ``defaults`` (the parser's defaults, resolved like a config): a run saved
    before the option existed ran with its default. Without a known default it is not compared."""
    a, b = experiment_identity(saved), experiment_identity(config)
    d = experiment_identity(defaults) if defaults else {}
    for key in a.keys() | b.keys():
        va, vb = _resolved(a, d, key), _resolved(b, d, key)
        if va is not _UNKNOWN and vb is not _UNKNOWN and va != vb:
            return False
    return True


def _run_config(run: Path) -> Optional[dict]:
    """The run directory's ``config.yaml`` (None without a readable one)."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def last_checkpoints(
    runs_root: Path, config: dict, defaults: Optional[dict] = None
) -> tuple[list[Path], int, list[Path]]:
    """The ``last.ckpt`` of every run under ``runs_root`` of the same experiment as ``config`` (newest first;
    ``same_experiment`` with ``defaults``), how many runs with a ``last.ckpt`` belong to other experiments, and the
    run folders with a ``last.ckpt`` but no readable ``config.yaml`` (which cannot be compared)."""
    mine, others, unreadable = [], 0, []
    for last in runs_root.glob("*/checkpoints/last.ckpt"):
        if not last.is_file():
            continue
        saved = _run_config(last.parent.parent)
        if saved is None:
            unreadable.append(last.parent.parent)
        elif same_experiment(saved, config, defaults):
            mine.append(last)
        else:
            others += 1
    return sorted(mine, key=lambda p: p.stat().st_mtime, reverse=True), others, sorted(unreadable)
