"""Registering exported models with Ollama (`ollama create NAME -f Modelfile`).

Kept apart from the export stage: Ollama is optional (a running daemon on the user's machine), so `dvc repro`
never depends on it. Without `ollama` on PATH, or with registration disabled, the exact command is printed.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import PipelineError

def ollama_model_name(prefix: str, name: str) -> str:
    """stageN -> <prefix>-sN as in the spec (qwen2.5-kospi-ft-s2 / -s3); other names (base) are kept."""
    suffix = f"s{name.removeprefix('stage')}" if name.startswith("stage") else name
    return f"{prefix}-{suffix}"


def create_command(model_name: str, modelfile: Path) -> list[str]:
    return ["ollama", "create", model_name, "-f", str(modelfile)]


def register(model_name: str, modelfile: Path, enabled: bool) -> str:
    """Run `ollama create` when enabled and available; else return the command for the user to run.

    Returns a one-line status. Raises PipelineError when the Modelfile is missing or `ollama create` fails.
    """
    modelfile = Path(modelfile)
    if not modelfile.is_file():
        raise PipelineError(f"{modelfile}: Modelfile not found (run `dvc repro export` first)")
    cmd = create_command(model_name, modelfile)
    if not enabled or shutil.which("ollama") is None:
        why = "registration disabled (export.ollama_register: false)" if enabled is False else "`ollama` is not on PATH"
        return f"{why}; to register run: {shlex.join(cmd)}"
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return f"registered {model_name} from {modelfile}"
