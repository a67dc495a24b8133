"""``--wandb-sweep``: a sweep as a W&B sweep configuration (``method: grid``) instead of running it."""

from __future__ import annotations

from typing import Any, Sequence

import yaml

from attnseg.configs import config_root
from attnseg.constants import MONITOR
from attnseg.sweep.spec import Sweep, nested, override_args


def wandb_sweep(sweep: Sweep, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The sweep as a W&B sweep configuration (see the module's docstring)."""
    if len(sweep.bundles) > 1:
        raise ValueError(
            f"{sweep.path}: a W&B sweep file holds one bundled grid axis (as its 'config' parameter); this sweep has "
            f"{len(sweep.bundles)}: {', '.join(sweep.bundles)}"
        )
    root = config_root()
    configs = []
    for base in sweep.base:
        shipped = root in base.parents
        configs += ["--config", base.relative_to(root).with_suffix("").as_posix() if shipped else str(base)]
    parameters: dict[str, Any] = {}
    for key, values in sweep.grid.items():
        if key in sweep.bundles:
            inline = [nested(sweep.bundles[key][name]) for name in values]
            flow = [yaml.safe_dump(c, default_flow_style=True, sort_keys=False, width=10**6).strip() for c in inline]
            parameters["config"] = {"values": flow}
        else:
            parameters[key] = {"values": list(values)}
    parameters["seed_everything"] = {"values": list(sweep.seeds)}
    return {
        "name": sweep.name,
        "program": "attnseg",
        "method": "grid",
        "metric": {"name": MONITOR, "goal": "maximize"},
        "parameters": parameters,
        "command": [
            "attnseg",
            "fit",
            *configs,
            *override_args(sweep.fixed),
            "--trainer.logger.init_args.offline=false",
            *extra,
            "${args}",
        ],  # an agent reports to the W&B server, not to offline files
    }
