"""Register exported models with Ollama: `ollama create qwen2.5-kospi-ft-s2 -f models/gguf/stage2/Modelfile`.

    python -m stages.register                  # every model in export.models except base
    python -m stages.register --model stage3 --enable

Not a dvc stage on purpose: Ollama is optional and lives outside the pipeline, so `dvc repro` never waits on it.
Runs `ollama create` only when export.ollama_register (or --enable) is set and `ollama` is on PATH; otherwise it
prints the exact command.
"""
from __future__ import annotations

import argparse
import sys
import typing

from kospi_ft import params
from kospi_ft.errors import PipelineError
from kospi_ft.export.chain import MODELFILE
from kospi_ft.export.config import ExportParams, ModelName
from kospi_ft.export.ollama import ollama_model_name, register

from ._main import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", choices=typing.get_args(ModelName),
                   help="model to register (repeatable; default: export.models without base)")
    p.add_argument("--enable", action="store_true", default=None, help="run `ollama create` (export.ollama_register)")
    params.add_params_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raw = params.read_raw(args.params)
    cfg = params.load("export", ExportParams, raw=raw, overrides={"ollama_register": args.enable})
    paths = params.load_paths(raw=raw)
    failed = []
    for name in args.model or [m for m in cfg.models if m != "base"]:
        modelfile = paths.gguf_dir / name / MODELFILE
        try:
            print(register(ollama_model_name(cfg.ollama_prefix, name), modelfile, enabled=cfg.ollama_register))
        except PipelineError as err:  # report every model, then fail once
            print(f"{name}: {err}", file=sys.stderr)
            failed.append(name)
    if failed:
        raise PipelineError(f"registration failed for {', '.join(failed)}")


if __name__ == "__main__":
    run(main)
