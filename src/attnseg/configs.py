"""The shipped configs: where they are, short names for ``--config``, ``base:`` composition, ``attnseg configs``.

The repository's top-level ``configs/`` folder is the one source; the wheel carries it as ``attnseg/configs``
(setup.cfg maps the package ``attnseg.configs`` to that folder), so ``--config`` finds a shipped config by its short
name from anywhere: ``quickstart``, ``model/danet``, ``experiment/camvid_r18_cpu`` (``configs/`` in front and
``.yaml`` behind are optional). A path to an existing file is always taken as that file.

Any config file may start with ``base:``, the configs it builds on (paths relative to the file, or short names),
read before it in that order, each after its own bases; the file then states only its differences. Every group
(data, model, trainer, logger, experiment, ablation base) composes this one way, through ``--config``: later files
and command-line keys override earlier ones.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

SUFFIX = ".yaml"


def config_root() -> Path:
    """The shipped configs: ``attnseg/configs`` inside an installed wheel, the repository's ``configs/`` in a
    checkout (an editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parents[1] / "configs"):
        if (candidate / f"quickstart{SUFFIX}").is_file():
            return candidate
    raise FileNotFoundError(f"the shipped configs are missing (looked in {here / 'configs'} and {here.parents[1]})")


def shipped() -> list[str]:
    """Short names of every shipped config, e.g. ``["ablation/ccnet", ..., "quickstart", "trainer/fast_gpu"]``."""
    root = config_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def is_inline(value: str) -> bool:
    """``--config`` also takes YAML text (``--config '{trainer: {max_steps: 5}}'``)."""
    return any(c in value for c in ":\n{")


def resolve(name: str, relative_to: Optional[Path] = None) -> Path:
    """The file ``name`` stands for: an existing path (relative to ``relative_to``, a config's folder, if given; else
    to the working directory), else a shipped config of that short name. An error lists what exists."""
    path = Path(name).expanduser()
    candidates = [relative_to / path] if relative_to is not None and not path.is_absolute() else [path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    short = path.as_posix().removeprefix("./").removeprefix("configs/").removesuffix(SUFFIX)
    found = config_root() / f"{short}{SUFFIX}"
    if found.is_file():
        return found
    where = f" (relative to {relative_to})" if relative_to is not None else ""
    if any(candidate.is_dir() for candidate in candidates):
        inside = sorted(p.name for c in candidates if c.is_dir() for p in c.glob(f"*{SUFFIX}"))[:5]
        hint = f", such as {', '.join(inside)} in it" if inside else ""
        raise FileNotFoundError(f"--config {name}: a directory{where}; pass one YAML file{hint}")
    group = short.rpartition("/")[0]
    names = [n for n in shipped() if n.startswith(f"{group}/")] if group else shipped()
    raise FileNotFoundError(
        f"--config {name}: no such file{where} and no shipped config of that name; shipped: {', '.join(names)} "
        "(attnseg configs lists them all)"
    )


def bases(path: Path) -> list[Path]:
    """The configs ``path`` builds on (its ``base:`` list), resolved; an error names the file."""
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return []  # the CLI reports the syntax error with its line and column
    listed = spec.get("base") if isinstance(spec, dict) else None
    if listed is None:
        return []
    listed = [listed] if isinstance(listed, str) else listed
    if not isinstance(listed, list) or not all(isinstance(b, str) for b in listed):
        raise ValueError(f"--config {path}: base is {listed!r}; expected a config or a list of configs")
    return [resolve(b, relative_to=path.parent) for b in listed]


def composed(path: Path, _chain: tuple[Path, ...] = ()) -> list[Path]:
    """``path`` after its bases, each after its own: the order in which they are read."""
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ValueError(f"--config {_chain[0]}: its base configs form a cycle: {cycle}")
    files: list[Path] = []
    for base in bases(path):
        files += composed(base, (*_chain, path))
    return files + [path]


def expand_config_args(argv: Sequence[str]) -> list[str]:
    """Command-line arguments with every ``--config NAME`` resolved to a file and preceded by its bases."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        value = None
        if arg == "--config" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        if is_inline(value) and not Path(value).is_file():
            out += ["--config", value]
            continue
        for file in composed(resolve(value)):
            out += ["--config", str(file)]
    return out


def describe(path: Path) -> str:
    """The first line of a config's leading comment."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


USAGE = """usage: attnseg configs [list | show NAME | copy [NAME...] [--to DIR]]

  list           every shipped config with its first comment line (the default)
  show NAME      print a config and the bases it is read after
  copy [NAME...] copy configs (all if none named) with their bases into DIR (default ./configs), keeping the
                 group folders so that base paths still resolve; existing files are never overwritten
"""


def configs_command(argv: Sequence[str]) -> int:
    """``attnseg configs``: list, show or copy the shipped configs."""
    args = list(argv)
    action = args.pop(0) if args else "list"
    if action in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    root = config_root()
    if action == "list":
        names = shipped()
        width = max(len(n) for n in names)
        print(f"shipped configs ({root}); pass one as --config NAME:")
        for name in names:
            text = describe(root / f"{name}{SUFFIX}")
            text = text if len(text) <= 90 else text[:87].rstrip() + "..."
            print(f"  {name:<{width}}  {text}")
        return 0
    if action == "show":
        if len(args) != 1:
            print(USAGE, end="", file=sys.stderr)
            return 2
        files = composed(resolve(args[0]))
        if len(files) > 1:
            print(f"# read after: {', '.join(str(f) for f in files[:-1])}")
        print(files[-1].read_text(), end="")
        return 0
    if action == "copy":
        target = Path("configs")
        if "--to" in args:
            at = args.index("--to")
            if at + 1 >= len(args):
                print("attnseg configs copy: --to needs a folder", file=sys.stderr)
                return 2
            target = Path(args[at + 1])
            del args[at : at + 2]
        sources = [root / f"{n}{SUFFIX}" for n in shipped()] if not args else []
        for name in args:
            sources += [f for f in composed(resolve(name)) if f not in sources]
        outside = [s for s in sources if root not in s.parents]
        if outside:
            raise ValueError(f"attnseg configs copy: {', '.join(map(str, outside))} are not shipped configs")
        return copy(sources, root, target)
    print(USAGE, end="", file=sys.stderr)
    return 2


def copy(sources: list[Path], root: Path, target: Path) -> int:
    """Copy ``sources`` (files under ``root``) to the same relative places under ``target``; a file already there
    with other content is left alone and named (exit 1)."""
    kept, same, wrote = [], [], 0
    for source in sources:
        destination = target / source.relative_to(root)
        if destination.exists():
            (kept if destination.read_bytes() != source.read_bytes() else same).append(str(destination))
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        print(f"wrote {destination}")
        wrote += 1
    print(f"copied {wrote} config(s) to {target}/" + (f"; {len(same)} already there, identical" if same else ""))
    if kept:
        print(f"attnseg configs copy: left alone (they exist and differ): {', '.join(kept)}", file=sys.stderr)
        return 1
    return 0
