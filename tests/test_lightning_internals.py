"""The private Lightning names the project relies on (all in ``attnseg.lightning_internals``) still exist: an upgrade
that moves one fails here, by name, rather than somewhere in a run."""

import importlib
import re
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from attnseg import lightning_internals
from attnseg.lightning_internals import last_step_saved, logging_step, saves_on_train_epoch_end


@pytest.mark.parametrize("owner, attribute", lightning_internals.USED)
def test_private_name_still_exists(owner, attribute):
    module, _, name = owner.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if hasattr(cls, attribute):
        return
    # attributes set in __init__: look on a live object
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    live = {"_TrainingEpochLoop": trainer.fit_loop.epoch_loop, "ModelCheckpoint": ModelCheckpoint()}[name]
    assert hasattr(live, attribute), f"{owner}.{attribute} is gone: update attnseg/lightning_internals.py"


def test_the_wrappers_read_live_objects():
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert logging_step(trainer) == 0
    callback = ModelCheckpoint()
    assert last_step_saved(callback) == 0
    assert saves_on_train_epoch_end(callback, trainer) in (True, False)


def test_no_other_module_uses_a_private_lightning_name():
    names = {attribute for _, attribute in lightning_internals.USED if attribute != "_run_subcommand"}
    package = Path(lightning_internals.__file__).parent
    offenders = [
        f"{path.relative_to(package)}: {name}"
        for path in package.rglob("*.py")
        if path.name != "lightning_internals.py"
        for name in names
        if re.search(rf"\.{name}\b", path.read_text())
    ]
    assert offenders == []
