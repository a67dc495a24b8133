"""The ``attnseg`` command (console script and ``python -m attnseg``): ``fit``, ``validate``, ``test`` and ``predict``
go to the Lightning CLI (``attnseg.cli``), ``sweep`` to ``attnseg.sweep``, ``check-data`` reads every sample of a
config's datasets once (``attnseg.data.check``), ``configs`` lists, shows and copies the shipped configs
(``attnseg.configs``), ``export`` writes a checkpoint for other programs (``attnseg.segmenter``). A Lightning
subcommand with no option at all says what to pass instead of training the code's defaults.

An error ends the command with its message on one line (``attnseg: error: ...``) and exit status 1, not a
traceback; ``ATTNSEG_TRACEBACK=1`` shows the traceback. Argument errors are jsonargparse's usage messages.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from attnseg.cli import AttnSegCLI
from attnseg.configs import configs_command
from attnseg.data.check import check_samples, report
from attnseg.sweep import main as sweep
from attnseg.visualize import show_samples

USAGE = """usage: attnseg <command> [options]

attnseg: attention heads for semantic segmentation (DANet, CCNet, FLANet, DFN) on a dilated timm encoder,
trained and evaluated with Lightning.

commands:
  fit          train a model (then: attnseg fit --help for its groups of options)
  validate     evaluate a checkpoint on the validation split
  test         evaluate a checkpoint on the test split
  predict      write class masks and overlays for a folder of images
  sweep        run a grid of fits over seeds and options from a sweep file, and summarise it
  check-data   read every sample of a config's datasets once and list every problem
  configs      list, show or copy the shipped configs (--config takes their short names)
  export       write a checkpoint as TorchScript or a torch.export program (normalisation included)
  plot         draw training loss and validation curves of CSV-logged runs (metrics.csv) to a PNG

example:
  attnseg fit --config quickstart
"""

LIGHTNING = ("fit", "validate", "test", "predict")
COMMANDS = (*LIGHTNING, "sweep", "check-data", "configs", "export", "plot")


def short_help(command: str) -> str:
    """``attnseg <command> --help``: the groups of options and where each one's full help is (the full listing,
    ``--help-all``, is thousands of lines: it names every class a class option could take)."""
    evaluate = command != "fit"
    return f"""usage: attnseg {command} [--config FILE]... [--GROUP.OPTION VALUE]... [--ckpt_path PATH{
        "" if evaluate else "|last"
    }]

{"Evaluate or apply a checkpoint" if evaluate else "Train a model"}. Options come in groups; set them in YAML files
(--config, later files win; shipped ones by short name, listed by `attnseg configs`) or on the command line
(--group.option value).

  --config FILE          a config file or a shipped config's short name (quickstart, model/danet, ...)
  --ckpt_path PATH       {
        "the checkpoint to evaluate (with the run's config.yaml as --config)"
        if evaluate
        else "continue a run from a checkpoint; `last`: this experiment's last.ckpt"
    }
  --seed_everything N    seed of initialisation, data order and augmentation
  --print_config         print the resolved config of the given options and exit
  --help-all             every option of every group (thousands of lines)

groups (`attnseg {command} --help-all` lists each in full):
  --model.*              the task: encoder, head, losses, optimiser, schedule, inference mode
  --model.head           a head: --model.head.help CCNetHead shows its options (FCNHead, DANetHead, CCNetHead,
                         FLANetHead, DFNHead, ASPPHead, PSPHead)
  --model.encoder.*      timm encoder: name, output_stride, out_indices, pretrained (a file or package:NAME)
  --model.loss           the loss: --model.loss.help CrossEntropy (OHEMCrossEntropy, DiceLoss, FocalLoss, ...)
  --model.inference      evaluation: --model.inference.help SlidingWindow (Whole, SlidingWindow, MultiScaleFlip)
  --data.*               dataset, root, batch sizes, crop and augmentation, workers
  --trainer.*            Lightning's Trainer: max_epochs / max_steps, precision, devices, logger, val_check_interval
  --checkpoint.*         best and last checkpoints    --interruption.*  stop signals (SIGTERM, SIGUSR1)
  --overlays.* --tables.* --complexity.* --throughput.* --lr_monitor.*   what the dashboard gets
  --prediction.*         predict's output folder and overlays

example:
  attnseg {command} --config quickstart{" --ckpt_path PATH" if evaluate else ""}
"""


def bare(command: str) -> str:
    """What to pass to a Lightning subcommand given no option."""
    return (
        f"attnseg {command}: no config given. Start from a shipped one, for example\n"
        f"  attnseg {command} --config quickstart{'' if command == 'fit' else ' --ckpt_path PATH'}"
        "        (ResNet-18 + FCN on procedural data, minutes on a CPU)\n"
        f"  attnseg {command} --config experiment/camvid_r18_cpu --config model/danet --data.root DIR"
        f"{'' if command == 'fit' else ' --ckpt_path PATH'}\n"
        "attnseg configs lists the shipped configs; attnseg fit --help lists every option.\n"
    )


def check_data(argv: list[str]) -> int:
    """``attnseg check-data <fit options> [--show N] [--output-dir DIR]``: read every training, validation and test
    sample once; with ``--show N``, draw N training samples as training sees them (augmented) and N validation
    samples, each with its label, to ``DIR/{train,val}.png``."""
    import argparse

    parser = argparse.ArgumentParser(prog="attnseg check-data", add_help=False)
    parser.add_argument("--show", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/check-data")
    shown, argv = parser.parse_known_args(argv)
    if shown.show < 0:
        raise ValueError(f"--show {shown.show}: expected a number of samples to draw, 0 or more")
    cli = AttnSegCLI(args=argv, run=False)
    data = cli.datamodule
    for stage in ("fit", "validate", "test"):
        data.setup(stage)
    problems, counts = check_samples({"train": data.train_dataset, "val": data.val_dataset, "test": data.test_dataset})
    print(report(problems, counts))
    if shown.show:
        for path in show_samples(data, shown.show, Path(shown.output_dir)):
            print(f"wrote {path}")
    return 1 if problems else 0


def export_command(argv: list[str]) -> int:
    """``attnseg export --ckpt_path X --output FILE [--format torchscript|export] [--size H W]``."""
    import argparse

    from attnseg.segmenter import Segmenter, export

    parser = argparse.ArgumentParser(
        prog="attnseg export",
        description="Write a checkpoint's whole-image forward (normalisation included: float RGB 0-255 in, logits "
        "out) as TorchScript (any size) or a torch.export program (one image of --size), checked against the model.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt written by attnseg fit")
    parser.add_argument("--output", required=True, help="the file to write (e.g. model.pt, model.pt2)")
    parser.add_argument("--format", default="torchscript", choices=["torchscript", "export"])
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[512, 512],
        metavar=("H", "W"),
        help="the image size traced at (torchscript) or fixed (export); default 512 512",
    )
    args = parser.parse_args(argv)
    path = export(Segmenter(args.ckpt_path), args.output, tuple(args.size), args.format)
    print(f"wrote {path} ({args.format}; checked against the model)")
    return 0


def plot_command(argv: list[str]) -> int:
    """``attnseg plot RUN [RUN...] [--out FILE]``: the training curves of CSV-logged runs."""
    import argparse

    from attnseg.curves import metrics_csv, metrics_figure

    parser = argparse.ArgumentParser(
        prog="attnseg plot",
        description="Draw the training loss, val mIoU and (SyntheticShapes) the context IoU of runs logged with "
        "--config logger/csv against the training step, one line per run.",
    )
    parser.add_argument("runs", nargs="+", help="run folders (runs/attnseg/<run>) or their metrics.csv files")
    parser.add_argument("--out", help="the PNG to write (default: <run>/curves.png for one run, curves.png for more)")
    args = parser.parse_args(argv)
    files = [metrics_csv(run) for run in args.runs]
    names = [f.parent.name for f in files]
    names = names if len(set(names)) == len(names) else [str(f.parent) for f in files]
    out = Path(args.out) if args.out else (files[0].parent / "curves.png" if len(files) == 1 else Path("curves.png"))
    metrics_figure(dict(zip(names, files))).savefig(out, dpi=100)
    print(f"wrote {out} ({len(files)} run(s))")
    return 0


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv and argv[0] == "sweep":
        return sweep(argv[1:])
    if argv and argv[0] == "check-data":
        return check_data(argv[1:])
    if argv and argv[0] == "configs":
        return configs_command(argv[1:])
    if argv and argv[0] == "export":
        return export_command(argv[1:])
    if argv and argv[0] == "plot":
        return plot_command(argv[1:])
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:
        words = {
            **{c: c for c in COMMANDS},
            "train": "fit",
            "eval": "validate",
            "evaluate": "validate",
            "infer": "predict",
        }
        close = difflib.get_close_matches(argv[0], list(words), n=1)
        hint = f" (did you mean {words[close[0]]}?)" if close else ""
        print(f"attnseg: unknown command '{argv[0]}'{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if argv[0] in LIGHTNING and any(a in ("-h", "--help") for a in argv[1:]) and "--help-all" not in argv:
        print(short_help(argv[0]), end="")
        return 0
    if argv[0] in LIGHTNING and "--help-all" in argv:
        argv = [("--help" if a == "--help-all" else a) for a in argv]
    if argv[0] in LIGHTNING and len(argv) == 1:
        print(bare(argv[0]), end="", file=sys.stderr)
        return 2
    # the arguments are sys.argv's own, handed over explicitly (Lightning warns when both are set)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    AttnSegCLI(args=argv)
    return 0


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``attnseg`` console script and ``python -m attnseg``."""
    argv = sys.argv[1:] if args is None else list(args)
    if os.environ.get("ATTNSEG_TRACEBACK"):
        sys.exit(run(argv))
    try:
        code = run(argv)
    except KeyboardInterrupt:
        print("attnseg: interrupted", file=sys.stderr)
        code = 130
    except Exception as error:  # noqa: BLE001 (the message names the culprit; the traceback is on request)
        print(f"attnseg: error: {type(error).__name__}: {error}", file=sys.stderr)
        print("(set ATTNSEG_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
