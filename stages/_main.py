"""Shared entry-point wrapper: PipelineError -> one clear line on stderr and exit code 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from kospi_ft.errors import PipelineError


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
