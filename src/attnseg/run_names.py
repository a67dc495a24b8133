"""Run names, groups, tags and job types, from a run's resolved config: W&B runs, TensorBoard and CSV run folders
and TensorBoard's HParams.

- The **name** says what a reader compares: head, the head's switches (its ``SegHead.name_words``), encoder (and output
  stride where not 8), seed: ``danet-pam-r18-s0``.
- The **group** holds the seeds of one experiment and nothing else: the name without the seed, the data (dataset and
  its variant) and ``recipe_key``, a short hash of everything the run trains and how (model, data, augmentation,
  optimiser, schedule, length; not the seed, paths, loader or speed options), so that runs of other data or another
  recipe never share a group: ``danet-pam-r18-syntheticshapes-far-1a2b3c``. A sweep's grid points are thereby one
  group each, whose W&B mean ± std is over that point's seeds.
- The **tags** list the words of the name, the encoder, the dataset and variant, and the seed.
- The **job type** is the subcommand. An evaluation (``validate``, ``test``, ``predict``) of a checkpoint joins the
  group of the run that trained it, is named ``<name>-<subcommand>``, records the training run's id and checkpoint
  in its config (``fit_run``, ``fit_checkpoint``) and never writes into the training run (an ``id`` in the config it
  was given, as a resumed run's saved config has, is dropped).

Values set in a config file or on the command line are kept, except, in an evaluation, the job type, name and id
that a saved run's config holds (``job_type: fit`` and the like).

- A **TensorBoard or CSV run folder** is ``<save_dir>/<name>/<run name>`` (``-2``, ``-3``, ... when the folder is
  taken; an evaluation's ``<run name>-<subcommand>``), not ``version_N``: TensorBoard lists runs by folder, so the
  runs of an ablation read as what they are. ``hparams`` gives the columns of TensorBoard's HParams tab.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Optional

from attnseg.checkpoint import run_of_checkpoint
from attnseg.experiments import OPTIMISATION, experiment_identity

ENCODER_SHORT = {"resnet18": "r18", "resnet34": "r34", "resnet50": "r50", "resnet101": "r101", "resnet152": "r152"}
RECIPE_TRAINER = ("max_epochs", "max_steps", "accumulate_grad_batches")
# filled from the data when the classes are instantiated (cli.py links them): in a saved config, not before
LINKED = ("model.num_classes", "model.class_names", "model.ignore_index")
EVALUATIONS = ("validate", "test", "predict")
FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")  # loggers whose run folder is named here
# rank 0's run folder name, for the processes Lightning launches for the other ranks (they inherit the environment)
RUN_FOLDER_ENV = "ATTNSEG_RUN_FOLDER"


def plain(value: Any) -> Any:
    """A jsonargparse Namespace / dataclass / dict as plain nested dicts."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "__dataclass_fields__"):
        return dict(vars(value))
    return value


def recipe_key(config: Any) -> str:
    """6 hex digits naming what a config trains and how, without its seed (``experiment_identity`` plus the
    optimiser, schedule and length options and the kind of pretrained weights)."""
    config = plain(config) or {}
    items = experiment_identity(config)
    for key in ("seed", *LINKED):
        items.pop(key, None)
    model, trainer = config.get("model") or {}, config.get("trainer") or {}
    for key in OPTIMISATION:  # how a run is trained, beyond what it is: part of the recipe
        items[f"model.{key}"] = json.dumps(plain(model.get(key)), sort_keys=True, default=str)
    for key in RECIPE_TRAINER:
        items[f"trainer.{key}"] = json.dumps(trainer.get(key), default=str)
    pretrained = (model.get("encoder") or {}).get("pretrained")
    items["model.encoder.pretrained"] = Path(str(pretrained)).name if pretrained else "none"
    return hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()[:6]


def _get(node: Any, key: str, default: Any = None) -> Any:
    if node is None:
        return default
    if hasattr(node, key):
        return getattr(node, key)
    return node.get(key, default) if hasattr(node, "get") else default


def _head(config: Any) -> tuple[Optional[type], str, dict]:
    """The head's class (None if it does not import), short name and options."""
    head = _get(_get(config, "model"), "head")
    class_path = _get(head, "class_path") if not isinstance(head, type) else f"{head.__module__}.{head.__qualname__}"
    class_path = str(class_path or "Head")
    options = plain(_get(head, "init_args")) or {}
    try:
        module, _, attribute = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):  # jsonargparse reports a bad class path itself
        cls = None
    short = getattr(cls, "short_name", None) or class_path.rpartition(".")[2].removesuffix("Head").lower()
    return cls, short, dict(options)


def head_words(cls: Optional[type], options: dict) -> list[str]:
    """The words a head's options add to a run's name (``SegHead.name_words``): an option the config leaves unset
    counts with its default in the head's signature."""
    declared = getattr(cls, "name_words", ())
    if not declared:
        return []
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    words = [w.render(options.get(w.option, defaults.get(w.option))) for w in declared]
    fallback = getattr(cls, "name_if_no_words", "")
    return [w for w in words if w] or ([fallback] if fallback else [])


def run_identity(config: Any) -> tuple[str, str, list[str]]:
    """A run's W&B name, group and tags (see the module's docstring), e.g. ``danet-pam-cam-r18-s0`` in group
    ``danet-pam-cam-r18-syntheticshapes-far-<recipe>`` with tags ``[danet, pam, cam, resnet18, SyntheticShapes, far,
    seed0]``. ``config`` is a jsonargparse Namespace or the plain dict of a saved ``config.yaml``."""
    cls, short, options = _head(config)
    switches = head_words(cls, options)
    encoder = _get(_get(config, "model"), "encoder")
    name = _get(encoder, "name")
    stride = _get(encoder, "output_stride", 8)
    parts = [short, *switches, ENCODER_SHORT.get(name, name), *([f"os{stride}"] if stride != 8 else [])]
    seed = _get(config, "seed_everything")
    seed_part = [f"s{seed}"] if isinstance(seed, int) and not isinstance(seed, bool) else []
    data = _get(config, "data") or {}
    dataset = str(_get(data, "dataset") or "data").rpartition(".")[2]
    variant = _get(_get(data, "dataset_args") or {}, "variant")
    data_words = [dataset.lower(), *([str(variant)] if variant else [])]
    tags = [
        short,
        *switches,
        name,
        dataset,
        *([str(variant)] if variant else []),
        *([f"seed{seed}"] if seed_part else []),
    ]
    group = "-".join(parts + data_words + [recipe_key(config)])
    return "-".join(parts + seed_part), group, tags


def hparams(config: Any) -> dict[str, Any]:
    """The columns of TensorBoard's HParams tab for a run: head, each of the head's options that is a number, a
    switch or a word (``head.pam``, ``head.recurrence``, ...), encoder and output stride, dataset and variant,
    learning rate, length, seed and the recipe key (``recipe_key``)."""
    _, short, options = _head(config)
    model, data = _get(config, "model") or {}, _get(config, "data") or {}
    encoder, trainer = _get(model, "encoder") or {}, _get(config, "trainer") or {}
    values = {
        "head": short,
        **{f"head.{k}": v for k, v in sorted(options.items()) if isinstance(v, (bool, int, float, str))},
        "encoder": _get(encoder, "name"),
        "output_stride": _get(encoder, "output_stride", 8),
        "dataset": str(_get(data, "dataset") or "").rpartition(".")[2],
        "variant": _get(_get(data, "dataset_args") or {}, "variant"),
        "lr": _get(model, "lr"),
        "max_steps": _get(trainer, "max_steps"),
        "max_epochs": _get(trainer, "max_epochs"),
        "seed": _get(config, "seed_everything"),
        "recipe": recipe_key(config),
    }
    return {k: v for k, v in values.items() if v is not None and not (k == "max_steps" and v == -1)}


def _loggers(config: Any) -> list:
    loggers = config.trainer.logger
    return [lg for lg in (loggers if isinstance(loggers, list) else [loggers]) if hasattr(lg, "class_path")]


def name_run_folders(config: Any, subcommand: Optional[str]) -> None:
    """Name the run folder of every TensorBoard and CSV logger of a subcommand's config that has no ``version`` (see
    the module's docstring) and switch off TensorBoard's placeholder ``hp_metric`` (the HParams tab gets the run's
    real metrics: ``attnseg.callbacks.tables``). An evaluation never writes into a training run's folder (a saved
    run's config names it): it gets ``<that folder>-<subcommand>``."""
    name, _, _ = run_identity(config)
    evaluation = subcommand not in (None, "fit")
    inherited = os.environ.get(RUN_FOLDER_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
    for logger in _loggers(config):
        args = logger.init_args
        if not logger.class_path.endswith(FOLDER_LOGGERS) or args is None:
            continue
        if logger.class_path.endswith("TensorBoardLogger"):
            args.default_hp_metric = False
        group_folder = args.get("name") if args.get("name") is not None else "lightning_logs"  # Lightning's default
        root = Path(args.get("save_dir") or ".") / str(group_folder)
        version = args.get("version")
        if evaluation and version is not None and (root / str(version) / "checkpoints").is_dir():
            version, base = None, f"{version}-{subcommand}"
        else:
            base = f"{name}-{subcommand}" if evaluation else name
        if version is not None:
            continue
        folder, n = base, 1
        while inherited is None and (root / folder).exists():
            n += 1
            folder = f"{base}-{n}"
        args.version = inherited or folder
        os.environ[RUN_FOLDER_ENV] = args.version


def name_wandb_runs(config: Any, subcommand: Optional[str]) -> None:
    """Name, group, tag and type every W&B logger of a subcommand's config (see the module's docstring)."""
    for logger in _loggers(config):
        if not logger.class_path.endswith("WandbLogger") or logger.init_args is None:
            continue
        args = logger.init_args
        name, group, tags = run_identity(config)
        evaluation = subcommand not in (None, "fit")
        ours = (None, name, *(f"{name}-{command}" for command in EVALUATIONS))  # a saved run's own
        if evaluation and args.get("name") in ours:
            args.name = f"{name}-{subcommand}"
        args.name = args.get("name") or name
        args.group = args.get("group") or group
        args.tags = args.get("tags") or tags
        if evaluation and args.get("job_type") in (None, "fit", *EVALUATIONS):
            args.job_type = subcommand
        args.job_type = args.get("job_type") or subcommand or "fit"
        ckpt = config.get("ckpt_path")
        if evaluation and args.get("id"):  # a resumed fit's saved config: never write into the training run
            args.id = None
            args.resume = None
        if evaluation and ckpt:
            linked = {"fit_run": run_of_checkpoint(Path(ckpt)), "fit_checkpoint": str(ckpt)}
            args.config = {**(plain(args.get("config")) or {}), **linked}
