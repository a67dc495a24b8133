"""The analysis notebooks run top to bottom (nbclient, the current interpreter's ``python3`` kernel) on small
settings injected after their ``parameters`` cell, and are committed with the outputs of their defaults (what GitHub
shows; ``python notebooks/execute.py`` refreshes them): the ablation notebook reads the shipped sweep results."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from attnseg.sweep import Sweep, write_results
from tests.helpers.cli import REPO

NOTEBOOKS = REPO / "notebooks"


def execute(name: str, workdir: Path, **parameters) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>`` in ``workdir`` with ``parameters`` set after its parameters cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters'"
    unknown = set(parameters) - set(_assigned(nb.cells[tagged[0]].source))
    assert not unknown, f"{name}: no parameters {unknown}"
    overrides = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(tagged[0] + 1, new_code_cell(overrides))
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _assigned(source: str) -> list[str]:
    return [line.split("=")[0].strip() for line in source.splitlines() if "=" in line and not line.startswith(" ")]


def outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    """All printed text and the number of images the notebook produced."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            images += "image/png" in out.get("data", {})
    return "".join(text), images


@pytest.mark.parametrize("name, images", [("ablation_results.ipynb", 3), ("attention_maps.ipynb", 3)])
def test_notebook_is_committed_with_the_outputs_of_its_defaults(name, images):
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # top to bottom, once
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert outputs(nb)[1] == images
    assert path.stat().st_size < 1_500_000  # small figures
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_ablation_notebook_by_default_reads_the_shipped_ccnet_sweep():
    stored, _ = outputs(nbformat.read(NOTEBOOKS / "ablation_results.ipynb", as_version=4))
    text, images = outputs(execute("ablation_results.ipynb", NOTEBOOKS))
    assert "../docs/results/sweeps/ccnet/results.csv: 12 runs, 12 succeeded" in text
    assert "Best test_context_IoU: 75.28 (recurrence=2)" in text and images == 3
    assert text == stored  # the committed outputs are what the notebook prints now


@pytest.mark.slow
def test_ablation_notebook_reads_a_sweep(tmp_path):
    sweep = Sweep(
        path=tmp_path / "danet.yaml",
        name="danet",
        base=[REPO / "configs" / "quickstart.yaml"],
        grid={"model.head.init_args.pam": [True, False], "model.head.init_args.cam": [True, False]},
    )
    scores = [0.61, 0.58, 0.55, None]  # the last run failed
    rows = []
    for index, (point, score) in enumerate(zip(sweep.points(), scores)):
        row = {"run": index, **point, "seed": 0, "status": "ok" if score else "failed", "time_s": 12.0 + index}
        if score:
            row.update(
                val_mIoU=score + 0.02,
                test_mIoU=score,
                params=1e6 * (3 - index),
                GFLOPs=1.5 - 0.2 * index,
                train_images_per_s=100.0 + 10 * index,
            )
        else:
            row["error"] = "FloatingPointError: non-finite training loss"
        rows.append(row)
    out = tmp_path / "sweeps" / "danet"
    write_results(sweep, rows, out, "danet-test", [])

    (tmp_path / "danet.yaml").write_text(
        f"base: [{REPO / 'configs' / 'quickstart.yaml'}]\n"
        "grid:\n  model.head.init_args.pam: [true, false]\n  model.head.init_args.cam: [true, false]\n"
    )
    nb = execute(
        "ablation_results.ipynb",
        tmp_path,
        results_csv=str(out / "results.csv"),
        sweep_file=str(tmp_path / "danet.yaml"),
        metric="test_mIoU",
    )
    text, images = outputs(nb)
    assert "4 runs, 3 succeeded" in text
    assert "Best test_mIoU: 61.00 (pam=True, cam=True)" in text
    assert "pam=False, cam=True: 55.00 (-6.00)" in text
    assert images == 3  # the notebook's two charts and results.png's, drawn by attnseg.sweep.results_figure
    html = json.dumps([o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])])
    assert "FloatingPointError" in html  # the failed run is listed with its error

    with pytest.raises(Exception, match="no such file"):
        execute("ablation_results.ipynb", tmp_path, results_csv=str(tmp_path / "missing.csv"), sweep_file=None)


@pytest.mark.slow
def test_attention_notebook_trains_small_models_and_draws_the_maps(tmp_path):
    nb = execute(
        "attention_maps.ipynb",
        tmp_path,
        image_size=32,
        max_epochs=1,
        work_dir=str(tmp_path / "runs"),
        extra_args=[
            "--data.dataset_args.num_samples=8",
            "--data.batch_size=4",
            "--data.val_batch_size=4",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
        ],
    )
    text, images = outputs(nb)
    assert f"danet: {tmp_path / 'runs' / 'danet'}" in text and f"ccnet: {tmp_path / 'runs' / 'ccnet'}" in text
    assert "feature grid 4x4" in text and "_blob" in text.split("pixel (row, col)")[1].splitlines()[0]
    assert "draws" in text and "of its CAM input from channels" in text
    assert images == 3  # predictions, spatial attention (PAM, R = 1, R = 2), channel attention
    sources = "".join(cell.source for cell in nb.cells)
    assert "CCNet criss-cross, R = 2" in sources and "attention_figure(" in sources  # the README's figure function
