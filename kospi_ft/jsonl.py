"""Reading the pipeline's JSONL files (one JSON value per line, as `atomic.write_jsonl` writes them)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .errors import DataValidationError, PipelineError


def read_jsonl(path: str | os.PathLike, *, what: str, hint: str, missing: type[PipelineError] = PipelineError,
               on_bad_line: Callable[[int, str], None] | None = None) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line, so callers can name the line at fault.

    A missing file raises `missing` naming `what` and `hint` (which stage writes it); a line that is not JSON or a
    file without records raises DataValidationError naming the file (and line). With `on_bad_line`, a line that is
    not JSON is passed to it as (line number, message) and skipped instead.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(f"{path}: {what} not found ({hint})")
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                message = f"{path}:{n}: not valid JSON ({err.msg})"
                if on_bad_line is None:
                    raise DataValidationError(message) from None
                on_bad_line(n, message)
    if not records:
        raise DataValidationError(f"{path}: {what} is empty")
    return records
