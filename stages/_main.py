"""Shared entry-point wrapper: PipelineError, a full disk or a read-only checkout -> one clear line on stderr and
exit code 2; what an interrupted stage left in the pipeline's dirs is swept first."""
from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from kospi_ft.errors import PipelineError


def sweep_interrupted() -> list[Path]:
    """Remove the temp outs and scratch (a 7B export's: ~15 GB) that killed stages left beside the declared paths.

    Run by every stage, so it does not matter which one runs next (DVC may restore the killed stage itself from its
    run cache). Only files of processes that no longer run are touched (kospi_ft.atomic.sweep)."""
    from kospi_ft import atomic, params

    try:
        paths = params.load_paths()
    except PipelineError:  # no or a broken params file: the stage itself reports it
        return []
    return atomic.sweep(d for _, p in paths for d in (p, p.parent))


#: Errors of the machine, not of the code: a user fixes them by freeing space or fixing permissions.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sweep_interrupted()
        main(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        # The outs are written atomically, so nothing half-written is left to trust; name the path and the stage.
        where = err.filename or "(a file of the stage)"
        print(f"error: {main.__module__}: {where}: {os.strerror(err.errno)} (nothing was written; free space or "
              f"fix the permissions, then rerun)", file=sys.stderr)
        sys.exit(2)
