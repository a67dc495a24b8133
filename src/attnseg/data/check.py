"""Read every sample of a datamodule's datasets once, before training finds a bad file in epoch 7.

``attnseg check-data <fit options>`` (or ``data.check_before_fit: true``) reads each image and label of the
training, validation and test splits with a progress bar, collects every problem (an unreadable or truncated
image, a 16-bit or colour label map, a label value that is neither a class nor void, an image / label size
mismatch) instead of stopping at the first, and checks that the training labels are not all void.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from attnseg.constants import IGNORE_INDEX


def _parts(dataset: Optional[Dataset]) -> list[Dataset]:
    if dataset is None:
        return []
    return list(dataset.datasets) if isinstance(dataset, ConcatDataset) else [dataset]


def _read(dataset: Dataset, index: int) -> torch.Tensor:
    """The label map of sample ``index``: decoded only (no random transform) where the dataset allows it."""
    if hasattr(dataset, "decoded"):
        return dataset.decoded(index)[1]
    return dataset[index][1]


def check_samples(datasets: dict[str, Optional[Dataset]], progress: bool = True) -> tuple[list[str], dict[str, int]]:
    """Problems found in ``{name: dataset}`` (messages naming the files) and the number of samples read per name.
    A training set (name ``train``) whose labels are all void is a problem too."""
    problems, counts = [], {}
    for name, dataset in datasets.items():
        valid, read = 0, 0
        for part in _parts(dataset):
            label = f"{name}: {part!r}" if len(_parts(dataset)) > 1 else f"{name}: {dataset!r}"
            for index in tqdm(range(len(part)), desc=f"checking {label}", disable=not progress, leave=False):
                try:
                    mask = _read(part, index)
                except Exception as error:  # noqa: BLE001 (every problem is reported, none stops the check)
                    problems.append(str(error))
                    continue
                read += 1
                valid += int((mask != IGNORE_INDEX).sum())
        counts[name] = read
        if name == "train" and read and not valid:
            problems.append(
                f"train: every label pixel of the {read} training samples is void ({IGNORE_INDEX}): training would "
                "learn nothing (loss 0); check the label files and the dataset's label_map"
            )
    return problems, counts


def report(problems: list[str], counts: dict[str, int]) -> str:
    """One paragraph: what was read, and the problems (the first 20)."""
    read = ", ".join(f"{name} {n}" for name, n in counts.items())
    if not problems:
        return f"data check: every sample read ({read}); no problem found"
    shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
    return f"data check: {len(problems)} problem(s) (samples read: {read}):\n  {shown}"
