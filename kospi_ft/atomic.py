"""Atomic output writes: every out is written to a temp path beside it, then renamed into place.

A stage that fails half-way therefore leaves either the previous out or nothing, never a truncated file. A stage
killed half-way (SIGKILL, OOM, power) cannot delete its temp path: each one's name carries the writing process's
pid (`.<out>.<pid>-<random>.tmp`, and `.work` for scratch dirs), and `sweep` removes those whose process is gone.
Every stage sweeps the pipeline's dirs when it starts (stages/_main.py), whichever stage that is.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


logger = logging.getLogger(__name__)

#: A temp out or scratch dir of this module's naming: `.<out name>.<pid>-<random>.tmp` / `.work`.
OWNED = re.compile(r"^\..+\.(?P<pid>\d+)-[A-Za-z0-9_]+\.(?:tmp|work)$")


def owned_prefix(path: Path) -> str:
    """The name prefix of `path`'s temp siblings written by this process."""
    return f".{path.name}.{os.getpid()}-"


def scratch_dir(path: str | os.PathLike) -> Path:
    """A scratch dir beside `path` (same filesystem), removed by `sweep` if its process dies before the caller
    deletes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=owned_prefix(path), suffix=".work", dir=path.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep(dirs) -> list[Path]:
    """Remove the temp outs and scratch dirs in `dirs` (not recursive) whose writing process no longer runs."""
    removed = []
    for folder in dict.fromkeys(Path(d) for d in dirs):
        try:
            children = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError:
            continue
        for child in children:
            match = OWNED.match(child.name)
            if match is None or int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
                continue
            logger.warning("removing what an interrupted stage left: %s", child)
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(path), suffix=".tmp", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes 0700; outs should be readable like any other directory
        return tmp
    fd, name = tempfile.mkstemp(prefix=owned_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes 0600
    return Path(name)


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        # os.replace cannot overwrite a non-empty directory: move the old one aside first.
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success rename it onto `path`, on error delete it."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir)
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Stable JSON text: sorted keys, UTF-8 kept readable, trailing newline (byte-identical across runs)."""
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def _jsonl_line(record: Any) -> str:
    line = json.dumps(record, ensure_ascii=False, sort_keys=True)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (half of a UTF-16 pair, e.g. from a model reply cut mid-character) has no UTF-8 form;
        # the \\uXXXX escape is valid JSON and reads back to the same string.
        line = json.dumps(record, ensure_ascii=True, sort_keys=True)
    return line


def write_jsonl(path: str | os.PathLike, records) -> None:
    write_text(path, "".join(_jsonl_line(r) + "\n" for r in records))
