"""What a run shows besides the task's scalars, one small callback each, all writing through one ``MediaSink``
(W&B and TensorBoard natively, every other logger as files under ``<run dir>/media/``):

- ``PredictionOverlays``: image / ground truth / prediction of the first validation images (``overlays`` group);
- ``ClassTables``: per-class IoU table and confusion matrix at each validation and test, the best validation in the
  run summary, the resolved config on TensorBoard (``tables``);
- ``Complexity``: parameters and GFLOPs once per fit (``complexity``);
- ``Throughput``: training and validation images/s per epoch (``throughput``);
- ``LearningRateMonitor``: the learning rate of each parameter group every step (``lr_monitor``);
- ``LearningRateFinder``: the learning-rate range test before a fit, on request (``configs/trainer/lr_find.yaml``).
"""

from attnseg.callbacks.complexity import Complexity
from attnseg.callbacks.lr_finder import LearningRateFinder
from attnseg.callbacks.lr_monitor import LearningRateMonitor
from attnseg.callbacks.overlays import PredictionOverlays
from attnseg.callbacks.sink import MediaSink
from attnseg.callbacks.tables import MAX_CLASS_SERIES, TABLE_COLUMNS, ClassTables, class_series, class_table
from attnseg.callbacks.throughput import Throughput

__all__ = [
    "ClassTables",
    "Complexity",
    "LearningRateFinder",
    "LearningRateMonitor",
    "MAX_CLASS_SERIES",
    "MediaSink",
    "PredictionOverlays",
    "TABLE_COLUMNS",
    "Throughput",
    "class_series",
    "class_table",
]
