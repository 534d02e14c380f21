"""Benchmark: guided (llguidance's token masks of a JSON schema) vs free decoding on one GGUF: same prompts, same
call, same settings.

Each eval record is answered twice through `LlamaCppBackend` (llama.cpp in its own process, greedy, every prompt
starting from the system prompt's KV cache): free, then guided by its task's JSON schema (kospi_ft.json_schema ->
kospi_ft.guidance). Prints generated tokens/s of both, their ratio (issue 23's target: guided >= 0.75x free),
and how many guided replies are valid JSON and valid answers.

    python benchmarks/bench_guided.py                                   # models/gguf/base, 6 records
    python benchmarks/bench_guided.py --gguf models/gguf/stage3/model-Q4_K_M.gguf --records 12 --max-new-tokens 256

Tokens/s is completion tokens over the whole request's wall time (prompt rest + decoding; the system prompt's
one-time decode is excluded by a warm-up request).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _records(eval_set: Path | None, n: int):
    """`n` eval records, round-robin over tasks: from `eval_set` when given, else freshly generated."""
    from kospi_ft.evaluation.runner import EvalRecord, load_eval_set, select

    if eval_set is not None:
        return select(load_eval_set(eval_set), n)
    from kospi_ft.data.synthetic import generate

    rows = generate(max(n, 12) * 2, seed=11, split="eval")
    return select([EvalRecord(r["task"], r["messages"][:2], r["messages"][2]["content"]) for r in rows], n)


def run(gguf: Path, records, max_new_tokens: int, threads: int, gpu_layers: int = 0) -> dict:
    from kospi_ft.evaluation.backends import LlamaCppBackend
    from kospi_ft.json_schema import task_schema
    from kospi_ft.schema import schema_errors

    backend = LlamaCppBackend(gguf, seed=0, n_ctx=4096, n_threads=threads, gpu_layers=gpu_layers,
                              require_gpu=gpu_layers != 0)
    out = {}
    try:
        backend.generate(records[0].prompt, 1)   # warm-up: the system prompt's KV cache
        for mode in ("free", "guided"):
            tokens, seconds, parsed, valid = 0, 0.0, 0, 0
            for r in records:
                schema = task_schema(r.task) if mode == "guided" else None
                g = backend.generate(r.prompt, max_new_tokens, schema=schema)
                tokens += g.completion_tokens
                seconds += g.latency_s
                try:
                    data = json.loads(g.text)
                    parsed += 1
                    valid += not schema_errors(r.task, data)
                except ValueError:
                    pass
            out[mode] = {"tokens": tokens, "seconds": round(seconds, 3),
                         "tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
                         "json_valid": parsed, "schema_valid": valid, "replies": len(records)}
    finally:
        backend.close()
    out["ratio"] = round(out["guided"]["tokens_per_s"] / out["free"]["tokens_per_s"], 3) \
        if out["free"]["tokens_per_s"] else None
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=ROOT / "models" / "gguf" / "base" / "model-Q4_K_M.gguf")
    ap.add_argument("--eval-set", type=Path, help="eval-set JSONL (default: freshly generated eval records)")
    ap.add_argument("--records", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads, 0 = all cores")
    ap.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU, -1 = all (the CUDA build)")
    ap.add_argument("--json", type=Path, help="also append the result as one JSON line to this file")
    args = ap.parse_args(argv)
    records = _records(args.eval_set, args.records)
    t0 = time.perf_counter()
    result = run(args.gguf, records, args.max_new_tokens, args.threads, args.gpu_layers)
    f, g = result["free"], result["guided"]
    print(f"{args.gguf}: {len(records)} records x {args.max_new_tokens} max new tokens, threads={args.threads}")
    print(f"free:   {f['tokens_per_s']:8.2f} tok/s ({f['tokens']} tokens, {f['seconds']:.2f} s; "
          f"JSON {f['json_valid']}/{f['replies']}, schema {f['schema_valid']}/{f['replies']})")
    print(f"guided: {g['tokens_per_s']:8.2f} tok/s ({g['tokens']} tokens, {g['seconds']:.2f} s; "
          f"JSON {g['json_valid']}/{g['replies']}, schema {g['schema_valid']}/{g['replies']})")
    print(f"ratio guided/free: {result['ratio']}  (total {time.perf_counter() - t0:.1f} s)")
    if args.json is not None:
        with args.json.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"bench": "guided", "gguf": str(args.gguf), "records": len(records),
                                "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                                "gpu_layers": args.gpu_layers, **result}) + "\n")
    return result


if __name__ == "__main__":
    main()
