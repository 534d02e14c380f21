"""Ask a model one question; print its answer as JSON, decoded guided by the task's JSON schema and validated by
kospi_ft.schema (or one error line naming what failed, exit status 2). The command to run after `dvc repro`.

    python -m stages.ask stage3 --task full_analysis --date 2024-03-15        # a snapshot day of the store
    python -m stages.ask models/gguf/stage3/model-Q4_K_M.gguf --task what_if --prompt-file question.txt
    python -m stages.ask qwen2.5-kospi-ft-s3 --task regime_classification --date 2024-03-15 --backend ollama

MODEL is a pipeline name (base, stage2, stage3: its exported GGUF), a .gguf path, or an Ollama model name.
--date renders that day's snapshot (paths.snapshots_dir) as training renders a record; --prompt-file is your own
user turn (plain text), or a JSON record with `messages` (e.g. a line of the eval set, saved alone).
"""
from __future__ import annotations

import argparse
import json
import sys

from kospi_ft import params
from kospi_ft.schema import TaskType

from ._main import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages.ask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="pipeline name (base, stage2, stage3), .gguf path, or Ollama model name")
    p.add_argument("--task", required=True, choices=[t.value for t in TaskType], help="what to answer")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--date", help="a day (YYYY-MM-DD) whose snapshot the store has")
    source.add_argument("--prompt-file", help="the user turn as text, or a JSON record with `messages`")
    p.add_argument("--backend", choices=["llamacpp", "ollama", "hf"],
                   help="default: llamacpp for a pipeline name or .gguf path, else ollama; hf: transformers + PEFT "
                        "on the HF weights (a pipeline name's adapter on the base, or an HF dir)")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="reply length cap (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="stocks and scenario picked for --date; decoding seed")
    p.add_argument("--threads", type=int, help="llama.cpp threads, 0 = all cores (evaluate.threads)")
    p.add_argument("--ollama-url", help="Ollama base URL (evaluate.ollama_url)")
    p.add_argument("--no-progress", action="store_true", help="no model-load messages on stderr")
    params.add_params_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from kospi_ft.answering import ask

    answer = ask(args.model, args.task, date=args.date, prompt_file=args.prompt_file, backend=args.backend,
                 seed=args.seed, max_new_tokens=args.max_new_tokens, threads=args.threads,
                 ollama_url=args.ollama_url, params_file=args.params, progress=not args.no_progress)
    sys.stdout.write(json.dumps(answer, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    run(main)
