"""The benchmark scripts: each prints a table (and with ``--out`` writes it into a Markdown file). Run them as modules
from the repository's root, with the package installed (``pip install -e .``):

    python -m bench.attention    # the attention modules against their naive formulas
    python -m bench.model        # whole models: throughput, memory, FLOPs per head
    python -m bench.complexity   # parameters and FLOPs per head
    python -m bench.data         # the data pipeline's throughput
    python -m bench.context      # the context benchmark's geometry and receptive fields
    python -m bench.figures      # the attention figures of docs/figures
    python -m bench.camvid_results  # every head trained on CamVid, one table

``bench.common`` holds what they share; the naive formulas come from ``tests/helpers/reference.py``.
"""
