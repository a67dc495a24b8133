"""Run the notebooks top to bottom with their default parameters and store their outputs in place (what GitHub
shows): ``python notebooks/execute.py [NAME.ipynb ...]`` (default: every notebook here). Needs the ``notebooks`` extra
(``pip install -e ".[notebooks]"``)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(notebook, path)
    print(f"executed {path}")


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(p.name for p in HERE.glob("*.ipynb")):
        execute(HERE / name)
