"""The quickstart learns: the README's main command, unchanged, reaches val mIoU >= 0.70."""

import pytest

from conftest import QUICKSTART, run_cli


@pytest.mark.slow
def test_quickstart_reaches_the_promised_miou(capsys):
    cli = run_cli("fit", "--config", QUICKSTART)
    best = float(cli.trainer.checkpoint_callback.best_model_score)
    out = capsys.readouterr().out
    assert f"Best val/mIoU: {best:.4f}" in out
    assert best >= 0.70, f"quickstart best val/mIoU {best:.4f} < 0.70"
    # the attention-free FCN still separates the two look-alike classes by the far-away bar
    assert cli.trainer.callback_metrics["val/IoU/warm_blob"] > 0.3
