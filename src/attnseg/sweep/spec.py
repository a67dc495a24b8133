"""A sweep file parsed (``Sweep``): base configs, fixed overrides, the grid (plain or bundled axes), seeds; and
how a grid point is written: as CLI arguments, as a short label, as a run key."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from attnseg.configs import resolve as resolve_config

SWEEP_KEYS = ("base", "fixed", "grid", "seeds", "context_classes", "early_step", "name", "test")


@dataclass
class Sweep:
    """A parsed sweep file: base configs, shared overrides and the grid of overrides."""

    path: Path
    name: str
    base: list[Path]
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    test: bool = True
    seeds: list[int] = field(default_factory=lambda: [0])
    context_classes: list[str] = field(default_factory=list)
    bundles: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # axis -> name -> overrides
    early_step: Optional[int] = None  # results.md also gives the val context IoU at this step (sample efficiency)

    @classmethod
    def from_file(cls, path: str | Path) -> "Sweep":
        path = Path(path)
        if not path.is_file():  # a shipped sweep's short name, as --config takes them: ablation/danet
            try:
                path = resolve_config(str(path))
            except FileNotFoundError:
                raise ValueError(
                    f"sweep file {path}: no such file and no shipped sweep of that name (attnseg configs lists "
                    "ablation/*)"
                ) from None
        try:
            with open(path) as f:  # YAML's messages then name the file
                spec = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: expected a mapping with keys {SWEEP_KEYS}")
        unknown = sorted(set(spec) - set(SWEEP_KEYS))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; expected some of {SWEEP_KEYS}")
        base = spec.get("base") or []
        base = [base] if isinstance(base, str) else list(base)
        if not base:
            raise ValueError(f"{path}: 'base' names no config; expected e.g. base: [../quickstart.yaml]")
        resolved, missing = [], []
        for b in base:  # a path relative to the sweep file, or a shipped config's short name (attnseg.configs)
            try:
                resolved.append(resolve_config(b, relative_to=path.parent))
            except FileNotFoundError:
                missing.append(b)
        if missing:
            raise ValueError(
                f"{path}: base configs not found: {missing} (paths relative to the sweep file, or shipped configs' "
                "short names such as model/danet)"
            )
        base = resolved
        grid = spec.get("grid") or {}
        if not isinstance(grid, dict) or not grid:
            raise ValueError(f"{path}: 'grid' must map dotted options to lists of values, e.g. model.lr: [0.01, 0.02]")
        bundles = {}
        for key, values in list(grid.items()):
            if isinstance(values, dict) and values:
                for name, overrides in values.items():
                    if not isinstance(overrides, dict) or not overrides:
                        raise ValueError(
                            f"{path}: grid.{key}.{name} is {overrides!r}; expected a mapping of dotted options to "
                            "values, e.g. {model.head: attnseg.heads.FCNHead}"
                        )
                bundles[key] = {str(name): dict(overrides) for name, overrides in values.items()}
                grid[key] = list(bundles[key])
            elif not isinstance(values, list) or not values:
                raise ValueError(
                    f"{path}: grid.{key} is {values!r}; expected a non-empty list of values (or a mapping of names "
                    "to bundles of overrides)"
                )
        fixed = spec.get("fixed") or {}
        if not isinstance(fixed, dict):
            raise ValueError(f"{path}: 'fixed' must map dotted options to values, got {fixed!r}")
        seeds = spec.get("seeds", [0])
        integers = isinstance(seeds, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
        if not seeds or not integers:
            raise ValueError(
                f"{path}: seeds is {seeds!r}; expected a non-empty list of integers, e.g. seeds: [0, 1, 2]"
            )
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{path}: seeds {seeds} repeat a seed; each seed once")
        context = spec.get("context_classes") or []
        if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
            raise ValueError(f"{path}: context_classes is {context!r}; expected a list of class names")
        early = spec.get("early_step")
        if early is not None and (not isinstance(early, int) or isinstance(early, bool) or early < 1):
            raise ValueError(f"{path}: early_step is {early!r}; expected a positive number of steps, e.g. 384")
        if early is not None and not context:
            raise ValueError(f"{path}: early_step reports the context IoU at a step; it needs context_classes too")
        name = str(spec.get("name") or path.stem)
        return cls(
            path,
            name,
            base,
            dict(grid),
            dict(fixed),
            bool(spec.get("test", True)),
            list(seeds),
            context,
            bundles,
            early,
        )

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, the first key varying slowest."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def runs(self) -> list[tuple[dict[str, Any], int]]:
        """``(grid point, seed)`` of every run: each point with each seed, seeds varying fastest."""
        return [(point, seed) for point in self.points() for seed in self.seeds]

    def arguments(self, point: dict[str, Any], extra: Sequence[str] = (), seed: Optional[int] = None) -> list[str]:
        """``fit`` arguments of one run: base configs, fixed overrides, extra arguments, the grid point, the seed."""
        configs = [f"--config={b}" for b in self.base]
        seeded = [f"--seed_everything={seed}"] if seed is not None else []
        overrides: dict[str, Any] = {}
        for key, value in point.items():
            overrides.update(self.bundles[key][value] if key in self.bundles else {key: value})
        return ["fit", *configs, *override_args(self.fixed), *extra, *override_args(overrides), *seeded]


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"model.head": "X", "model.head.init_args.aux": True}`` -> ``{"model": {"head": {"class_path": "X",
    "init_args": {"aux": True}}}}``: dotted overrides as one config (a class path gains init args beside it)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {"class_path": child} if isinstance(child, str) else {}
            node = child
        if isinstance(node.get(last), dict) and isinstance(value, str):
            node[last]["class_path"] = value
        else:
            node[last] = value
    return out


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``{"model.lr": 0.02, "model.head.init_args.pam": False}`` -> ``["--model.lr=0.02", "--...pam=false"]``."""
    return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest unambiguous dotted suffix of each key (``model.head.init_args.pam`` -> ``pam``)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(k == name or k.endswith("." + name) for k in keys) == 1:
                break
        names[key] = name
    return names


def point_label(point: dict[str, Any]) -> str:
    """``pam=true,cam=false``: a run's grid point in a few characters."""
    names = short_names(list(point))
    return ",".join(f"{names[k]}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in point.items())


def run_key(point: dict[str, Any], seed: Optional[int]) -> str:
    """A run's identity within a sweep: its grid point and seed, as printed."""
    return f"{point_label(point)},seed={seed}"


def restrict(sweep: Sweep, only: str) -> None:
    """Keep only some values of one grid key (``--only KEY=V1,V2``); values are matched as they print."""
    key, _, values = only.partition("=")
    if key not in sweep.grid or not values:
        raise ValueError(f"--only {only}: expected KEY=V1,V2 with KEY one of the grid's keys {list(sweep.grid)}")
    wanted = values.split(",")
    printed = {(v if isinstance(v, str) else json.dumps(v)): v for v in sweep.grid[key]}
    unknown = [v for v in wanted if v not in printed]
    if unknown:
        raise ValueError(f"--only {only}: {unknown} not among {key}'s values {list(printed)}")
    sweep.grid[key] = [printed[v] for v in wanted]
