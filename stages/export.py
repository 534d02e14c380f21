"""Stage `export` (one per model via dvc.yaml foreach): merge -> GGUF f16 -> quantized GGUF + Modelfile + parity gate.

    python -m stages.export --model stage2            # -> models/gguf/stage2/{model-Q4_K_M.gguf,Modelfile,schemas/}
    python -m stages.export --model stage3 --quant Q5_K_M

`base` exports the untuned base model (`model.name`); `stageN` merges the adapter in models/stageN into it.
schemas/<task>.json beside the GGUF are the answers' JSON schemas (kospi_ft.json_schema), for guided decoding
with Ollama (`format`) or llama-server (`json_schema`). Also writes metrics/export/<model>.json (sizes, fallback
tensors, parity counts, step times).
"""
from __future__ import annotations

import argparse
import typing

from kospi_ft import atomic, params
from kospi_ft.base_model import load_params as load_model_params
from kospi_ft.base_model import resolve_base
from kospi_ft.errors import ParamsError
from kospi_ft.export.chain import SCHEMAS, export_model
from kospi_ft.export.config import ExportParams, ModelName
from kospi_ft.export.ollama import ollama_model_name
from kospi_ft.export.quantize import QUANT_TYPES

from ._main import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=typing.get_args(ModelName), help="which model to export")
    p.add_argument("--quant", choices=QUANT_TYPES, help="quantization type (export.quant)")
    p.add_argument("--num-ctx", type=int, help="Modelfile num_ctx (export.num_ctx)")
    p.add_argument("--temperature", type=float, help="Modelfile temperature (export.temperature)")
    p.add_argument("--threads", type=int, help="llama.cpp threads, 0 = all cores (export.threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    params.add_params_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raw = params.read_raw(args.params)
    cfg = params.load("export", ExportParams, raw=raw, overrides={
        "quant": args.quant, "num_ctx": args.num_ctx, "temperature": args.temperature, "threads": args.threads})
    paths = params.load_paths(raw=raw)
    base = resolve_base(load_model_params(raw), paths.models_dir)
    if args.model not in cfg.models:
        raise ParamsError(f"params.yaml: export.models: {args.model!r} is not listed {cfg.models}")
    from kospi_ft.prompts import QUANT_SYSTEM_PROMPT

    adapter = None if args.model == "base" else paths.models_dir / args.model
    out_dir = paths.gguf_dir / args.model
    result = export_model(base=base.name, revision=base.revision, adapter_dir=adapter, out_dir=out_dir,
                          quant=cfg.quant, system_prompt=QUANT_SYSTEM_PROMPT, num_ctx=cfg.num_ctx,
                          temperature=cfg.temperature,
                          threads=cfg.threads, parity_tokens=cfg.parity_tokens,
                          model_name=ollama_model_name(cfg.ollama_prefix, args.model), progress=not args.no_progress)
    from kospi_ft.json_schema import write_schemas

    schemas = write_schemas(out_dir / SCHEMAS)
    metrics = result.metrics()
    atomic.write_json(paths.export_metrics_dir / f"{args.model}.json", metrics)
    print(f"{args.model}: {result.gguf} ({metrics['gguf_bytes'] / 2**20:.1f} MiB, {metrics['file_type']}, "
          f"{metrics['fallback_tensors']} fallback tensors), {result.modelfile}, {len(schemas)} schemas; parity ok "
          f"({metrics['parity_conversations']} chats, {metrics['parity_tokens']} tokens)")


if __name__ == "__main__":
    run(main)
