"""The export chain for one model: base (+ adapter merged while converting) -> GGUF f16 -> quantized GGUF +
Modelfile -> parity gate.

Everything is built in temp dirs beside `out_dir`; only when the parity gate passes is the finished dir (the
quantized GGUF and the Modelfile, nothing else) renamed onto `out_dir`. A failure at any step leaves no partial
output, and the f16 GGUF (the spec's manual `rm` step) is always deleted; scratch left by a killed export
(`.<model>.<pid>-*.work`, `.<model>.<pid>-*.tmp`) is removed when the next stage starts (kospi_ft.atomic.sweep), or
when the next export of that model starts.
Disk: the converter reads the base's own safetensors (linked, never re-saved) and merges an adapter into each
tensor as it writes it (kospi_ft.export.merge), so a 7B export's scratch peak is the f16 GGUF's ~15 GB plus the
quantized file being written.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import atomic
from ..tokenizer import CHATML_TEMPLATE, load_tokenizer
from .gguf import convert_to_gguf, ftype_name
from .merge import base_view, read_adapter
from .modelfile import render_modelfile
from .parity import ParityReport, check_parity, parity_conversations
from .quantize import QuantizeReport, quantize

logger = logging.getLogger(__name__)

MODELFILE = "Modelfile"
#: Beside the GGUF: one JSON schema per task (kospi_ft.json_schema), for Ollama's `format` and llama-server.
SCHEMAS = "schemas"


def gguf_name(quant: str) -> str:
    return f"model-{quant}.gguf"


@dataclass
class ExportResult:
    gguf: Path
    modelfile: Path
    quant: QuantizeReport
    parity: ParityReport
    file_type: str
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict:
        """Flat numbers for `dvc metrics show`."""
        return {
            "quant": self.quant.quant,
            "file_type": self.file_type,
            "gguf_bytes": self.quant.output_bytes,
            "f16_bytes": self.quant.input_bytes,
            "fallback_tensors": sum("falling back to" in f for f in self.quant.fallbacks),
            "parity_conversations": self.parity.conversations,
            "parity_tokens": self.parity.tokens_compared,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def remove_stale_scratch(out_dir: Path) -> list[Path]:
    """Delete what a killed export of `out_dir` left beside it: its `.work.*` scratch and atomic temp dirs."""
    out_dir = Path(out_dir)
    stale = sorted([*out_dir.parent.glob(f".{out_dir.name}.work.*"), *out_dir.parent.glob(f".{out_dir.name}.*.work"),
                    *out_dir.parent.glob(f".{out_dir.name}.*.tmp"), *out_dir.parent.glob(f".{out_dir.name}.old")])
    for path in stale:
        logger.warning("removing scratch of an interrupted export: %s", path)
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return stale


def export_model(*, base: str | Path, adapter_dir: Path | None, out_dir: Path, quant: str, system_prompt: str,
                 num_ctx: int, temperature: float, threads: int = 0,
                 parity_tokens: int = 4, expected_template: str = CHATML_TEMPLATE, model_name: str | None = None,
                 progress: bool = True, revision: str | None = None) -> ExportResult:
    """Export base (+ adapter, if given) to `out_dir`/model-<quant>.gguf and `out_dir`/Modelfile.

    `model_name` is the GGUF's `general.name` (default: the output dir's name); `revision` the hub commit of
    `base`."""
    out_dir = Path(out_dir)
    if adapter_dir is not None:
        read_adapter(adapter_dir)  # fail before any work when training has not produced it, or it cannot merge
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(out_dir)
    seconds: dict[str, float] = {}
    steps = tqdm(total=5, desc=f"export {out_dir.name}", unit="step", disable=not progress)

    def step(name: str, t0: float) -> None:
        seconds[name] = time.perf_counter() - t0
        steps.set_postfix_str(name)
        steps.update()

    # Scratch beside the output (same filesystem, and /tmp is often too small for a 7B f16 file).
    work = atomic.scratch_dir(out_dir)
    try:
        with atomic.atomic_path(out_dir, is_dir=True) as tmp_out:
            t0 = time.perf_counter()
            # The adapter dir carries the tokenizer training used (else the base's).
            hf_dir = base_view(base, work / "hf", revision=revision, tokenizer_dir=adapter_dir)
            # The gate compares against the tokenizer exactly as the converter reads it.
            tokenizer = load_tokenizer(hf_dir)
            step("prepare", t0)

            t0 = time.perf_counter()
            f16 = convert_to_gguf(hf_dir, work / "model-f16.gguf", outtype="f16",
                                  model_name=model_name or out_dir.name, adapter_dir=adapter_dir)
            shutil.rmtree(hf_dir)
            step("convert", t0)

            t0 = time.perf_counter()
            gguf_path = tmp_out / gguf_name(quant)
            quant_report = quantize(f16, gguf_path, quant, threads=threads, progress=progress)
            f16.unlink()
            step("quantize", t0)

            t0 = time.perf_counter()
            modelfile = tmp_out / MODELFILE
            modelfile.write_text(render_modelfile(gguf_path.name, system_prompt, num_ctx, temperature),
                                 encoding="utf-8")
            step("modelfile", t0)

            t0 = time.perf_counter()
            parity = check_parity(gguf_path, tokenizer, expected_template, parity_conversations(system_prompt),
                                  generate_tokens=parity_tokens, threads=threads)
            step("parity", t0)
    finally:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(gguf=out_dir / gguf_name(quant), modelfile=out_dir / MODELFILE, quant=quant_report,
                        parity=parity,
                        file_type=ftype_name(int(parity.metadata["general.file_type"])), seconds=seconds)
