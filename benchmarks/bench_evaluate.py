"""Benchmark: evaluation throughput of the llamacpp backend on the exported GGUFs (embedded default).

For each model: seconds per sample and generated tokens/s of the evaluator (`runner.evaluate` over the stage's
`LlamaCppBackend`: llama.cpp in its own process, chat template, greedy generation, scoring, every prompt starting
from the system prompt's KV cache), and three baselines measured in the same run on the same prompts: the same
session in this process (what the separate process costs), that session with the cache off (every prompt decoded
in full, as before the cache) and bare llama.cpp (`Llama.create_completion` on the already-rendered prompt text, no
chat handler, no scoring, full decode). Target: all three models in about a minute on 2 cores.

    python benchmarks/bench_evaluate.py [--models base stage2 stage3] [--n-samples 12] [--max-new-tokens 128]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from kospi_ft import params
    from kospi_ft.evaluation.backends import Generation, LlamaCppBackend
    from kospi_ft.evaluation.config import EvaluateParams
    from kospi_ft.evaluation.llama_session import LlamaSession
    from kospi_ft.evaluation.runner import evaluate, load_eval_set, select
    from kospi_ft.export.chain import gguf_name
    from kospi_ft.export.config import ExportParams
    from kospi_ft.tokenizer import load_tokenizer

    class InProcess:
        """A LlamaSession as an evaluation backend, in this process (on the CPU build: no crash to avoid)."""

        def __init__(self, session: LlamaSession):
            self.session = session

        def generate(self, messages, max_new_tokens, seed=None):
            return Generation.from_reply(self.session.generate(messages, max_new_tokens, seed))

    raw = params.read_raw(ROOT / "params.yaml")
    cfg = params.load("evaluate", EvaluateParams, raw=raw)
    quant = params.load("export", ExportParams, raw=raw).quant
    paths = params.load_paths(raw=raw)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=cfg.models)
    ap.add_argument("--n-samples", type=int, default=cfg.n_samples)
    ap.add_argument("--max-new-tokens", type=int, default=cfg.max_new_tokens)
    ap.add_argument("--threads", type=int, default=cfg.threads)
    args = ap.parse_args()

    records = select(load_eval_set(ROOT / paths.eval_set), args.n_samples)
    tokenizer = load_tokenizer()
    total = 0.0
    print(f"{len(records)} samples x {args.max_new_tokens} max new tokens, threads={args.threads or 'all'}")
    for name in args.models:
        gguf = ROOT / paths.gguf_dir / name / gguf_name(quant)
        session = LlamaSession(gguf, seed=cfg.seed, n_ctx=cfg.n_ctx, n_threads=args.threads)
        try:
            llm = session._llm
            # Baseline: the same prompts through bare llama.cpp, rendered beforehand by the training tokenizer's
            # template (the export's parity gate makes it render exactly like the GGUF's). It runs after one
            # warm-up generation, so page-cache warm-up does not count against any side.
            prompts = [tokenizer.apply_chat_template(r.prompt, tokenize=False, add_generation_prompt=True)
                       for r in records]
            llm.create_completion(prompts[0], max_tokens=4, temperature=0.0)
            t0 = time.perf_counter()
            base_tokens = 0
            for prompt in prompts:
                llm.reset()
                out = llm.create_completion(prompt, max_tokens=args.max_new_tokens, temperature=0.0,
                                            repeat_penalty=1.0, seed=cfg.seed)
                base_tokens += out["usage"]["completion_tokens"]
            base_s = time.perf_counter() - t0
            session.prefix_tokens = []
            t0 = time.perf_counter()
            inproc = evaluate(InProcess(session), records, max_new_tokens=args.max_new_tokens, rouge=cfg.rouge,
                              progress=False)
            inproc_s = time.perf_counter() - t0
            session.start_from_system_prompt = lambda messages: llm.reset() or 0  # the cache off: full decodes
            t0 = time.perf_counter()
            uncached = evaluate(InProcess(session), records, max_new_tokens=args.max_new_tokens, rouge=cfg.rouge,
                                progress=False)
            uncached_s = time.perf_counter() - t0
        finally:
            session.close()
        # The stage's backend last, on a warm page cache like the baselines.
        t0 = time.perf_counter()
        backend = LlamaCppBackend(gguf, seed=cfg.seed, n_ctx=cfg.n_ctx, n_threads=args.threads)
        load_s = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            result = evaluate(backend, records, max_new_tokens=args.max_new_tokens, rouge=cfg.rouge,
                              progress=False)
            eval_s = time.perf_counter() - t0
        finally:
            backend.close()
        tokens = sum(s.completion_tokens for s in result.scores)
        same = result.replies == uncached.replies == inproc.replies
        total += load_s + eval_s
        n = len(records)
        print(f"{name:7s} load {load_s:5.2f} s | evaluator {eval_s / n:6.3f} s/sample {tokens / eval_s:7.1f} tok/s | "
              f"in-process {inproc_s / n:6.3f} s/sample (own process/in-process {eval_s / inproc_s:4.2f}x) | "
              f"cache off {uncached_s / n:6.3f} s/sample (in-process/cache off {inproc_s / uncached_s:4.2f}x, "
              f"same replies: {same}) | bare llama.cpp {base_s / n:6.3f} s/sample {base_tokens / base_s:7.1f} "
              f"tok/s | evaluator/bare {eval_s / base_s:4.2f}x")
    print(f"all models: {total:.1f} s (load + evaluate)")


if __name__ == "__main__":
    main()
