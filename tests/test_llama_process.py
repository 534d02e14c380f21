"""kospi_ft.llama_process: llama.cpp runs in a child process that loads it first and never loads pyarrow or torch;
errors come back as the same PipelineError, a crash as one error naming its signal."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from kospi_ft import llama_process
from kospi_ft.errors import DataValidationError, PipelineError


@pytest.fixture()
def targets(tmp_path, monkeypatch):
    """A module importable in the child (through PYTHONPATH) with functions that report, fail and crash."""
    (tmp_path / "llama_targets.py").write_text(textwrap.dedent('''
        import os, signal, sys
        from kospi_ft.errors import DataValidationError

        def loaded(extra=None):
            import llama_cpp
            return {"heavy": sorted(m for m in ("numpy", "pyarrow", "pandas", "torch") if m in sys.modules),
                    "pid": os.getpid(), "version": llama_cpp.__version__, "extra": extra}

        def bad_data(path):
            raise DataValidationError(f"{path}: column `close` is not a number")

        def bug():
            return {}["missing"]

        def crash():
            os.kill(os.getpid(), signal.SIGSEGV)
    '''))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_call_runs_in_a_llama_cpp_process_without_the_heavy_libraries(targets):
    """The stage's process holds numpy, pyarrow and torch; the llama.cpp process holds none of pyarrow, pandas or
    torch (numpy comes in after llama.cpp, with llama_cpp itself)."""
    import os

    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    out = llama_process.call("llama_targets:loaded", extra=[1, "두"])
    assert out["pid"] != os.getpid() and out["extra"] == [1, "두"]
    assert not {"pyarrow", "pandas", "torch"} & set(out["heavy"])


def test_modules_the_llama_cpp_process_runs_load_nothing_heavy():
    """Every module whose functions run there (the session, quantize, the parity gate's llama side) imports
    without numpy, pyarrow, pandas or torch, so llama.cpp's libraries are the first native ones in that process."""
    code = ("import sys; import kospi_ft.llama_process, kospi_ft.evaluation.llama_session, kospi_ft.export.quantize,"
            " kospi_ft.export.parity; print([m for m in ('numpy', 'pyarrow', 'pandas', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_errors_come_back_as_they_were_raised(targets):
    with pytest.raises(DataValidationError, match="x.parquet: column `close` is not a number"):
        llama_process.call("llama_targets:bad_data", path="x.parquet")
    with pytest.raises(PipelineError, match="KeyError: 'missing'"):
        llama_process.call("llama_targets:bug")


def test_a_crash_is_one_error_naming_the_signal(targets):
    with pytest.raises(PipelineError, match=r"llama_targets:crash: the llama.cpp process ended \(signal SIGSEGV\)"):
        llama_process.call("llama_targets:crash")
