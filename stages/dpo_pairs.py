"""Stage `dpo_pairs`: Stage-3 DPO preference pairs (paths.dpo_pairs) from the Stage-2 SFT set
(paths.synthetic): chosen = the SFT answer, rejected = the same answer broken by one of strategy_violation 30%,
quality_degradation 30%, schema_violation 20%, hallucination 20% (TRL conversational format). The held-out
pairs (paths.eval_pairs, dpo_pairs.eval_count) come from the held-out eval set (paths.eval_set) the same way: Stage
3's eval split and the evaluate stage's preference metrics. They never carry model rejects.

    python -m stages.dpo_pairs --count 2000 --input data/synthetic/train.jsonl --output data/dpo/pairs.jsonl

Model rejects (spec 3.2): with --collect-model-rejects, --model-reject-ratio of the pairs get a rejected
answer sampled from the Stage-2 model (temperature dpo_pairs.temperature, 0.7) and kept only when it is
schema-broken (no JSON object, missing field, wrong type; judged like the evaluator). chosen stays the SFT
answer; rejection_type is "model_output". The model runs through the evaluation backends:

    dvc repro export@stage2    # -> models/gguf/stage2/model-<export.quant>.gguf
    python -m stages.dpo_pairs --collect-model-rejects --model stage2 --model-reject-ratio 0.15
    python -m stages.dpo_pairs --collect-model-rejects --backend ollama --model qwen2.5-kospi-ft-s2

llama.cpp threads/context come from evaluate.threads / evaluate.n_ctx, the Ollama URL from evaluate.ollama_url.
If the model writes too few broken replies within dpo_pairs.attempts_per_reject tries per wanted reject, the
rest are synthetic pairs and the shortfall is logged; the pair count stays --count.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
from pathlib import Path

from kospi_ft import atomic, params
from kospi_ft.data.dpo_pairs import (
    DpoPairsParams, ModelRejectStats, check_count, collect_model_rejects, combine, make_pairs, model_reject_target,
)
from kospi_ft.jsonl import read_jsonl

log = logging.getLogger("dpo_pairs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.dpo_pairs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, help="pairs to write (params: dpo_pairs.count)")
    p.add_argument("--input", help="SFT JSONL (default: paths.synthetic)")
    p.add_argument("--output", help="pairs JSONL (default: paths.dpo_pairs)")
    p.add_argument("--eval-count", type=int, help="held-out pairs to write (params: dpo_pairs.eval_count)")
    p.add_argument("--eval-input", help="held-out eval set JSONL (default: paths.eval_set)")
    p.add_argument("--eval-output", help="held-out pairs JSONL (default: paths.eval_pairs)")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--collect-model-rejects", action=argparse.BooleanOptionalAction, default=None,
                   help="also sample the Stage-2 model for rejected answers (dpo_pairs.collect_model_rejects)")
    p.add_argument("--model", help="model to sample (dpo_pairs.model, default stage2): a pipeline name (llamacpp: "
                                   "paths.gguf_dir/<name>/model-<export.quant>.gguf), a .gguf path, or an Ollama "
                                   "model such as qwen2.5-kospi-ft-s2 with --backend ollama")
    p.add_argument("--model-reject-ratio", type=float,
                   help="share of pairs with a model-sampled rejected answer (dpo_pairs.model_reject_ratio)")
    p.add_argument("--backend", choices=["llamacpp", "ollama"], help="backend for the model (dpo_pairs.backend)")
    p.add_argument("--temperature", type=float, help="sampling temperature (dpo_pairs.temperature)")
    p.add_argument("--ollama-url", help="Ollama base URL (evaluate.ollama_url)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    params.add_params_flag(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args, raw, paths = params.parse_stage_args(build_parser(), argv)
    cfg = params.load("dpo_pairs", DpoPairsParams, raw=raw, overrides={
        "count": args.count, "eval_count": args.eval_count, "seed": args.seed,
        "collect_model_rejects": args.collect_model_rejects,
        "model": args.model, "model_reject_ratio": args.model_reject_ratio, "backend": args.backend,
        "temperature": args.temperature})
    progress = not args.no_progress
    source = Path(args.input or paths.synthetic)
    records = [r for _, r in read_jsonl(source, what="SFT set", hint="run `dvc repro synthesize`")]
    held_out_source = Path(args.eval_input or paths.eval_set)
    eval_records = [r for _, r in read_jsonl(held_out_source, what="eval set", hint="run `dvc repro synthesize`")]
    # Before the model is sampled or a file written. All `count` pairs: a model-reject shortfall is synthetic.
    check_count(records, cfg.count, param="dpo_pairs.count", source=str(source))
    check_count(eval_records, cfg.eval_count, param="dpo_pairs.eval_count", source=str(held_out_source))
    model_pairs: list[dict] = []
    if cfg.collect_model_rejects:
        model_pairs, stats = sample_model_rejects(cfg, raw, records, args.ollama_url, progress, str(source))
        log.info("model rejects: %s", json.dumps(stats.as_dict(), sort_keys=True))
    pairs = combine(model_pairs, records, cfg.count, seed=cfg.seed, progress=progress, source=str(source),
                    param="dpo_pairs.count")
    atomic.write_jsonl(args.output or paths.dpo_pairs, pairs)
    log.info("%d pairs: %s", len(pairs), dict(collections.Counter(p["rejection_type"] for p in pairs)))
    held_out = make_pairs(eval_records, cfg.eval_count, seed=cfg.seed, source=str(held_out_source),
                          param="dpo_pairs.eval_count")
    atomic.write_jsonl(args.eval_output or paths.eval_pairs, held_out)
    log.info("%d held-out pairs from %s: %s", len(held_out), held_out_source,
             dict(collections.Counter(p["rejection_type"] for p in held_out)))


def sample_model_rejects(cfg: DpoPairsParams, raw: dict, records: list[dict], ollama_url: str | None,
                         progress: bool, source: str) -> tuple[list[dict], ModelRejectStats]:
    """Open the model the way the evaluate stage does (same locator, same backend settings) and sample it."""
    from kospi_ft.evaluation.config import EvaluateParams, ModelLocator

    target = model_reject_target(cfg.count, cfg.model_reject_ratio)
    if target == 0:  # nothing to sample: do not require the model
        return [], ModelRejectStats(model=cfg.model, target=0, collected=0, attempts=0, max_attempts=0, valid=0,
                                    empty=0, budget_hit=0)
    backend_cfg = params.load("evaluate", EvaluateParams, raw=raw,
                              overrides={"backend": cfg.backend, "ollama_url": ollama_url})
    locator = ModelLocator.from_params(raw)
    locator.preflight(backend_cfg, cfg.model)  # missing GGUF: fail before anything is sampled
    backend = locator.open(backend_cfg, cfg.model, temperature=cfg.temperature)
    try:
        return collect_model_rejects(backend, records, target, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                                     attempts_per_reject=cfg.attempts_per_reject, progress=progress,
                                     source=source)
    finally:
        backend.close()


if __name__ == "__main__":
    from stages._main import run

    run(main)
