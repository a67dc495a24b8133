"""The ``attnseg`` command (console script and ``python -m attnseg``): ``fit``, ``validate``, ``test`` and ``predict``
go to the Lightning CLI (``attnseg.cli``), ``sweep`` to ``attnseg.sweep``."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from attnseg.cli import AttnSegCLI
from attnseg.sweep import main as sweep


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``attnseg`` console script and ``python -m attnseg``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "sweep":
        sys.exit(sweep(argv[1:]))
    AttnSegCLI(args=args)


if __name__ == "__main__":
    main()
