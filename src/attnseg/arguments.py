"""The command line read before jsonargparse parses it: the ``--config`` files given (each valid YAML with mapping
sections, an error naming file, line and column), where an option was set (for messages), and an evaluation without
a config refused."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml


def config_files(argv: Sequence[str]) -> list[str]:
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return files + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def where_set(argv: Sequence[str], key: str) -> str:
    """Where an option's value came from, for a message: the command line, else the config files given."""
    short = key.replace(".init_args.", ".")  # --model.head.num_convs sets model.head.init_args.num_convs
    if any(a.split("=", 1)[0].replace(".init_args.", ".") == f"--{short}" for a in argv):
        return "; set on the command line"
    files = config_files(argv)
    return f"; set in --config {', '.join(files)}" if files else ""


def evaluation_needs_a_config(argv: Sequence[str]) -> None:
    """``validate`` / ``test`` / ``predict --ckpt_path X`` without any ``--config``: the data would be the code's
    defaults, not what the checkpoint was trained on. Refuse, naming the run's own saved config."""
    if not argv or argv[0] not in ("validate", "test", "predict") or config_files(argv):
        return
    ckpt = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--ckpt_path"), None)
    ckpt = ckpt or next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if ckpt is None:
        return
    saved = Path(ckpt).parent.parent / "config.yaml"
    hint = f"--config {saved} (the run's own)" if saved.is_file() else "the --config files it was trained with"
    raise ValueError(
        f"attnseg {argv[0]} --ckpt_path {ckpt}: no --config given, so the data would be the defaults rather than what "
        f"the checkpoint was trained on; pass {hint}"
    )


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` exists and is valid YAML: an error names the file, line and column (jsonargparse's
    own message names neither the file nor, among several, which one)."""
    for name in config_files(argv):
        path = Path(name)
        if not path.is_file():
            continue  # jsonargparse says so, and --config also takes inline YAML
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"--config {name}: not valid YAML{where}: {problem}") from error
        for section in ("model", "data", "trainer"):
            value = config.get(section) if isinstance(config, dict) else None
            if value is not None and not isinstance(value, dict):
                raise ValueError(
                    f"--config {name}: '{section}' is {value!r}; expected a mapping of its options, e.g. "
                    f"{section}:\n  {'lr: 0.01' if section == 'model' else 'batch_size: 8'}"
                )
