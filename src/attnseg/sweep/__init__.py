"""``attnseg sweep SWEEP.yaml [--out DIR] [--dry-run] [-- EXTRA CLI ARGS]``: every combination of a grid of
overrides on a base config; each run fits, then tests its best checkpoint; results land in one table.

A sweep file (paths relative to the file)::

    # DANet ablation: position x channel attention.
    base: [../quickstart.yaml, ../model/danet.yaml]   # configs composed in this order
    fixed:                                            # optional: overrides shared by every run
      trainer.max_epochs: 8
    grid:                                             # every combination of these values
      model.head.init_args.pam: [true, false]
      model.head.init_args.cam: [true, false]
    seeds: [0, 1, 2]     # optional: every grid point is run once per seed (default: [0]); --seeds overrides
    context_classes: [warm_blob, cold_blob]   # optional: classes whose mean test IoU gets its own column
    name: danet          # optional: the sweep's name (default: the file's stem)
    test: true           # optional: test the best checkpoint after each fit (default: true)

A grid axis may also map names to bundles of overrides that go together, for example one head and its options::

    grid:
      head:
        fcn: {model.head: attnseg.heads.FCNHead}
        dfn: {model.head: attnseg.heads.DFNHead, model.head.init_args.aux: true}

Each run is ``attnseg fit --config <base>... --<fixed>... <EXTRA> --<grid point>... --seed_everything=<seed>``
(later arguments win, so the grid point and the seed always hold), run in this process with a fresh CLI. The seed
sets the model's initialisation, the data order and the augmentation; the dataset itself stays the one the
configs name. A run that fails is recorded with its error and the sweep goes on. The W&B runs of one sweep share a
tag (``<name>-<date>-<time>``), are named after their grid point and seed, and each grid point's seeds form one W&B
group (``attnseg.run_names``). ``DIR`` (default
``runs/sweeps/<name>``) receives, rewritten after every run:

- ``results.csv``: one row per run (grid point, seed, status, scores, time, run folder, error);
- ``results.md``: per grid point the mean and standard deviation over its seeds (a point with a failed run is
  shown as failed, not averaged), then every run;
- ``results.png``: mean test mIoU (and context-class IoU) per grid point with standard-deviation error bars;
- ``curves/<point>,seed=<seed>.csv``: each run's validation mIoU and per-class IoU after every validation
  (``attnseg.curves.CurveRecorder``), and ``learning_curves.png``: per grid point the mean ± std over its seeds of
  val mIoU (and val context IoU) against the training step; with context classes, ``results.md`` has a column
  "steps to 80 % context IoU": the first validation step at which a run's val context IoU reached 0.80, mean ± std
  over the seeds (``k/n`` when only k of n runs reached it).

The exit status is 1 when a run failed.

**Running a sweep again into the same ``DIR``** continues it: runs whose row in ``results.csv`` says ``ok`` are
kept and not run again, any other run that started before (interrupted, failed, or killed before its row was
written) continues from the ``last.ckpt`` of its run folder (``DIR/folders/<point>,seed=<s>.txt`` names it as soon
as the run starts training) or starts again where there is none, and every earlier row stays in the table (rows
of points this invocation does not run, e.g. with ``--only``, included). A ``results.csv`` of another sweep (other
grid keys) is refused: choose another ``--out``. Calls on disjoint runs (``--only``, ``--seeds``) may run side by
side into one ``DIR``: every write re-reads ``results.csv`` under a lock (``DIR/.results.lock``) and merges this
call's rows into it (``command.record``).

``--wandb-sweep FILE`` writes the same grid as a W&B sweep file instead (``method: grid``, ``val/mIoU`` maximised,
each grid key and ``seed_everything`` a parameter, a bundled axis a ``config`` parameter of inline YAML) and runs
nothing: ``wandb sweep FILE`` registers it, ``wandb agent <id>`` runs ``attnseg fit`` for each combination. Shipped
base configs are named by their short names, so the file works wherever attnseg is installed.

The package, one job a module: ``spec`` (the sweep file), ``run`` (one run in this process), ``report`` (the tables,
charts and curves), ``wandb_export`` (``--wandb-sweep``) and ``command`` (the arguments and the loop).
"""

from attnseg.sweep.command import main, parse_args
from attnseg.sweep.report import read_results, results_figure, summarise, write_results
from attnseg.sweep.run import check_points, run_point
from attnseg.sweep.spec import Sweep, nested, override_args, point_label, short_names
from attnseg.sweep.wandb_export import wandb_sweep

__all__ = [
    "Sweep",
    "check_points",
    "main",
    "nested",
    "override_args",
    "parse_args",
    "point_label",
    "read_results",
    "results_figure",
    "run_point",
    "short_names",
    "summarise",
    "wandb_sweep",
    "write_results",
]
