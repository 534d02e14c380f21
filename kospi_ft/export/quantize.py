"""GGUF f16 -> Q8_0 / Q5_K_M / Q4_K_M / Q3_K_M with llama.cpp's own quantizer (through llama-cpp-python).

llama.cpp reports through its C log callback, not Python logging. While quantizing we install our own
callback: every line goes to this module's logger at DEBUG, the per-tensor `[ i/ n]` lines drive a tqdm bar,
and the fallback notices (tensors whose row length is not a multiple of the 256-wide K-quant block fall back
to another type; normal for tiny models, and for a few tensors of real ones) are logged as warnings and
returned, so the stage can show what was not quantized as asked.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

from tqdm.auto import tqdm

from ..errors import PipelineError

logger = logging.getLogger(__name__)

QuantType = Literal["Q8_0", "Q5_K_M", "Q4_K_M", "Q3_K_M"]
QUANT_TYPES: tuple[str, ...] = ("Q8_0", "Q5_K_M", "Q4_K_M", "Q3_K_M")

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
_FALLBACK = "falling back to"
_FALLBACK_SUMMARY = "required fallback quantization"


@dataclass
class QuantizeReport:
    """What llama.cpp did: the requested type, the fallback notices and the file sizes."""

    quant: str
    fallbacks: list[str] = field(default_factory=list)
    n_tensors: int = 0
    input_bytes: int = 0
    output_bytes: int = 0


def llama_ftype(quant: str) -> int:
    """The llama.cpp `LLAMA_FTYPE_MOSTLY_*` value of a quant name (e.g. Q4_K_M -> 15)."""
    import llama_cpp

    if quant not in QUANT_TYPES:
        raise PipelineError(f"export.quant: unsupported quantization {quant!r}; choose one of {QUANT_TYPES}")
    return int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}"))


@contextlib.contextmanager
def llama_log_lines(on_line: Callable[[str], None]) -> Iterator[None]:
    """Route llama.cpp's C log output, joined into whole lines, to `on_line` for the duration of the block.

    llama.cpp writes one logical line in several calls (the fallback notice is two), so text is buffered
    until a newline. On exit llama-cpp-python's own callback is put back.
    """
    import llama_cpp
    import llama_cpp._logger as default_logger

    pending: list[str] = []

    def emit(text: str) -> None:
        pending.append(text)
        joined = "".join(pending)
        if "\n" in joined:
            *lines, rest = joined.split("\n")
            pending[:] = [rest] if rest else []
            for line in lines:
                on_line(line)

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        # Exceptions cannot cross back into C: ctypes would print and swallow them, so keep this total.
        try:
            emit(text.decode("utf-8", errors="replace"))
        except Exception:  # noqa: BLE001
            pass

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(default_logger.llama_log_callback, ctypes.c_void_p(0))
        if pending and "".join(pending).strip():
            on_line("".join(pending))


def quantize(src: Path, dst: Path, quant: str, threads: int = 0, progress: bool = True) -> QuantizeReport:
    """Quantize the GGUF `src` to `dst` as `quant` with llama.cpp's defaults (K-quant mixes, e.g. Q6_K for
    attn_v / ffn_down halves in Q4_K_M). `threads` <= 0 lets llama.cpp use every core. Runs in a llama.cpp
    process (kospi_ft.llama_process: this stage's process holds torch)."""
    from .. import llama_process

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise PipelineError(f"{src}: GGUF to quantize not found")
    if quant not in QUANT_TYPES:
        raise PipelineError(f"export.quant: unsupported quantization {quant!r}; choose one of {QUANT_TYPES}")
    return QuantizeReport(**llama_process.call("kospi_ft.export.quantize:quantize_here", src=str(src),
                                               dst=str(dst), quant=quant, threads=threads, progress=progress))


def quantize_here(src: str, dst: str, quant: str, threads: int = 0, progress: bool = True) -> dict:
    """`quantize` in this process (the llama.cpp process); the report as a dict."""
    import dataclasses

    import llama_cpp

    src, dst = Path(src), Path(dst)
    ftype = llama_ftype(quant)
    report = QuantizeReport(quant=quant, input_bytes=src.stat().st_size)
    bar = tqdm(desc=f"quantize {quant}", unit="tensor", disable=not progress)

    def on_line(line: str) -> None:
        logger.debug("llama.cpp: %s", line)
        m = _TENSOR_LINE.match(line)
        if m:
            report.n_tensors = int(m.group(2))
            bar.total = report.n_tensors
            bar.n = int(m.group(1))
            bar.refresh()
        if _FALLBACK in line or _FALLBACK_SUMMARY in line:
            notice = " ".join(line.split())  # llama.cpp pads names and types into columns
            report.fallbacks.append(notice)
            logger.warning("llama.cpp quantize: %s", notice)
        if "failed to quantize" in line:
            logger.error("llama.cpp: %s", line.strip())

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    try:
        with llama_log_lines(on_line):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        bar.close()
    if rc != 0 or not dst.is_file():
        raise PipelineError(f"{src}: llama.cpp failed to quantize to {quant} (return code {rc}); see the log above")
    report.output_bytes = dst.stat().st_size
    return dataclasses.asdict(report)
