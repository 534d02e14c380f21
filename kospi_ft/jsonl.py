"""Reading the pipeline's JSONL files (one JSON value per line, as `atomic.write_jsonl` writes them)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import DataValidationError, PipelineError


def _parse_line(line: str) -> Any:
    """One line's JSON value; a ValueError whose message completes "<file>:<line>: " for any line that is not one.

    `line` is decoded with errors="surrogateescape": each byte that is not UTF-8 arrives as a lone surrogate.
    """
    try:
        # A UTF-8 file decodes to no surrogate at all, so a surrogate here is a byte that is not UTF-8. Checked
        # before parsing: inside a JSON string such a byte would parse, and pass downstream as text.
        line.encode("utf-8")
    except UnicodeEncodeError as err:
        byte, column = ord(line[err.start]) - 0xDC00, len(line[:err.start].encode("utf-8")) + 1
        raise ValueError(f"not UTF-8 (byte 0x{byte:02x} at byte {column} of the line)") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None
    except ValueError:
        # The only other ValueError json.loads raises: int() refusing an integer of more digits than
        # sys.get_int_max_str_digits() (CPython's guard against quadratic-time conversion).
        raise ValueError(f"an integer of more than {sys.get_int_max_str_digits()} digits, too long to parse") from None


def read_jsonl(path: str | os.PathLike, *, what: str, hint: str, missing: type[PipelineError] = PipelineError,
               on_bad_line: Callable[[int, str], None] | None = None) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line, so callers can name the line at fault.

    A missing file raises `missing` naming `what` and `hint` (which stage writes it); a line that is not UTF-8 JSON
    (see `_parse_line`) or a file without records raises DataValidationError naming the file (and line). With
    `on_bad_line`, such a line is passed to it as (line number, message) and skipped instead.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(f"{path}: {what} not found ({hint})")
    records = []
    # Text mode keeps the universal-newline line numbering; surrogateescape lets one bad byte fail its own line
    # instead of the whole read.
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append((n, _parse_line(line)))
            except ValueError as err:
                message = f"{path}:{n}: {err}"
                if on_bad_line is None:
                    raise DataValidationError(message) from None
                on_bad_line(n, message)
    if not records:
        raise DataValidationError(f"{path}: {what} is empty")
    return records
