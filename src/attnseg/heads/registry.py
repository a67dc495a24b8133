"""The heads the project ships, from one source: the configs in ``configs/model/``. Each names its head's class
(``model.head.class_path``) and options (``init_args``); the contract test, the benchmarks (``bench.model``,
``bench.complexity``, ``bench.camvid_results``) and the test of the heads grid read this list, so that a new head, a
file in ``attnseg/heads/`` and a config in ``configs/model/``, is covered without editing them
(docs/adding_a_head.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from attnseg import configs


@dataclass(frozen=True)
class HeadConfig:
    """One ``configs/model/<name>.yaml``: the head's class path and options."""

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def cls(self) -> type:
        """The head's class, imported; an error names the config."""
        module, _, attribute = self.class_path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as error:
            raise ImportError(
                f"{self.path}: model.head.class_path {self.class_path!r} does not import: {error}"
            ) from error

    def build(self, in_channels: Sequence[int], num_classes: int, **overrides: Any):
        """The head with the config's options, ``overrides`` on top."""
        return self.cls(list(in_channels), num_classes, **{**self.init_args, **overrides})


def head_configs(root: Optional[Path] = None) -> dict[str, HeadConfig]:
    """Every head config in ``<root>/model`` (default: the shipped configs), by name, sorted; a config without
    ``model.head.class_path`` is an error naming the file."""
    folder = (root or configs.config_root()) / "model"
    found = {}
    for path in sorted(folder.glob(f"*{configs.SUFFIX}")):
        spec = yaml.safe_load(path.read_text()) or {}
        head = spec.get("model", {}).get("head") if isinstance(spec.get("model"), dict) else None
        if not isinstance(head, dict) or not isinstance(head.get("class_path"), str):
            raise ValueError(f"{path}: expected model.head.class_path (and init_args), the head this config selects")
        found[path.stem] = HeadConfig(path.stem, head["class_path"], dict(head.get("init_args") or {}), path)
    return found
