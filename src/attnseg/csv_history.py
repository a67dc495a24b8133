"""A resumed fit's ``metrics.csv``: kept whole when Lightning's CSV writer reopens it, trimmed to the checkpoint's
step once the checkpoint has loaded."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback


def keep_csv_history(trainer: Trainer, before_step: int) -> None:
    """A resumed fit continues its CSV run in the same folder, where Lightning's CSV writer deletes ``metrics.csv``
    when it opens it. Open the writer now and put the file back as it was; once the checkpoint has loaded (the
    start of training), ``_TrimCsvHistory`` drops the rows logged at or after ``before_step`` (the checkpoint's
    step: the resumed run logs those steps again). A resume that fails to load keeps every row."""
    from lightning.pytorch.loggers import CSVLogger

    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        with warnings.catch_warnings():  # Lightning warns that the file will be deleted: it is written back
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            writer = logger.experiment  # opening it deletes metrics.csv: the rows are in memory, written back here
        _write_rows(path, header, rows)
        writer.metrics_keys = header  # the columns it appends under (new ones make it rewrite the file)
        trainer.callbacks.append(_TrimCsvHistory(path, before_step, len(rows)))


def _write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=header)
        table.writeheader()
        table.writerows(rows)
    os.replace(temporary, path)


class _TrimCsvHistory(Callback):
    """At the start of a resumed fit's training (the checkpoint loaded), drop the earlier run's rows logged at or
    after the checkpoint's step; rows this fit appended already are kept."""

    def __init__(self, path: Path, before_step: int, earlier_rows: int) -> None:
        self.path, self.before_step, self.earlier_rows = path, before_step, earlier_rows

    def on_train_start(self, trainer, pl_module) -> None:
        if self.earlier_rows is None or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        earlier, appended = rows[: self.earlier_rows], rows[self.earlier_rows :]
        kept = [row for row in earlier if row.get("step") and float(row["step"]) < self.before_step]
        _write_rows(self.path, header, kept + appended)
        self.earlier_rows = None  # once
