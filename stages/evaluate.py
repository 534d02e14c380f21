"""Stage `evaluate`: a model answers the held-out eval set; JSON validity, schema, signal range, Korean
rationale, strategy consistency, latency, tokens/s and ROUGE-L go into one metrics file per model.

    python -m stages.evaluate --name stage3                 # -> metrics/eval/stage3.json (the dvc stage)
    python -m stages.evaluate                               # the spec's form: evaluate.base_model vs ft_model
    python -m stages.evaluate --base-model stage2 --ft-model stage3 --n-samples 50 --output eval_results.json
    python -m stages.evaluate --backend ollama --base-model qwen2.5:32b --ft-model qwen2.5-kospi-ft-s2
    python -m stages.evaluate --name stage3 --eval-set data/stage2/logs_eval.jsonl --output metrics/logs_eval.json

--name writes the per-model file dvc tracks (numbers only, identical keys for every model). Without --name, the
two models of --base-model/--ft-model are evaluated and written together with their deltas (ft - base) to
--output (default paths.eval_results). Names resolve per backend (see kospi_ft.evaluation.config). --eval-set scores
another file of the eval-set format, e.g. your held-out reasoning logs (paths.logs_eval), whose ROUGE-L is against
each line's reasoning text.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kospi_ft import atomic, params
from kospi_ft.errors import ParamsError
from kospi_ft.evaluation.compare import deltas
from kospi_ft.evaluation.config import EvaluateParams, ModelLocator
from kospi_ft.evaluation.runner import EvalRecord, EvalResult, evaluate, load_eval_set, select

from ._main import run

logger = logging.getLogger("stages.evaluate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="evaluate this one model (a name in evaluate.models) -> paths.eval_dir/<name>.json")
    p.add_argument("--base-model", help="baseline model (evaluate.base_model); a name, .gguf path, Ollama model "
                                        "or HF dir/id depending on --backend")
    p.add_argument("--ft-model", help="fine-tuned model (evaluate.ft_model)")
    p.add_argument("--n-samples", type=int, help="eval records per model (evaluate.n_samples)")
    p.add_argument("--output", type=Path, help="metrics file (default: paths.eval_dir/<name>.json with --name, "
                                               "else paths.eval_results)")
    p.add_argument("--backend", choices=["llamacpp", "ollama", "hf"], help="evaluate.backend")
    p.add_argument("--max-new-tokens", type=int, help="evaluate.max_new_tokens")
    p.add_argument("--ollama-url", help="Ollama base URL (evaluate.ollama_url)")
    p.add_argument("--gpu-layers", type=int, help="llama.cpp layers on the GPU, -1 = all (evaluate.gpu_layers)")
    p.add_argument("--threads", type=int, help="llama.cpp threads, 0 = all cores (evaluate.threads)")
    p.add_argument("--rouge", action=argparse.BooleanOptionalAction, default=None, help="evaluate.rouge")
    p.add_argument("--eval-set", type=Path, help="records to answer (default: paths.eval_set); e.g. paths.logs_eval")
    p.add_argument("--predictions", type=Path, help="also write every reply and its findings to this JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    params.add_params_flag(p)
    return p.parse_args(argv)


def _run_one(cfg: EvaluateParams, locator: ModelLocator, ref: str, records: list[EvalRecord],
             progress: bool) -> EvalResult:
    backend = locator.open(cfg, ref)
    try:
        return evaluate(backend, records, max_new_tokens=cfg.max_new_tokens, rouge=cfg.rouge,
                        korean_threshold=cfg.korean_threshold, progress=progress, desc=f"evaluate {ref}")
    finally:
        backend.close()


def _summary(name: str, m: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.0%}"

    return (f"{name}: json {pct(m['json']['valid_rate'])} (unwrapped {pct(m['json']['unwrapped_rate'])}), "
            f"schema {pct(m['schema']['compliance_rate'])}, signal {pct(m['signal']['in_range_rate'])}, "
            f"korean {pct(m['korean']['rationale_rate'])}, strategy {pct(m['strategy']['consistency_rate'])}, "
            f"latency p50 {m['latency']['p50_s']}s, {m['throughput']['gen_tokens_per_s']} tok/s")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raw = params.read_raw(args.params)
    cfg = params.load("evaluate", EvaluateParams, raw=raw, overrides={
        "backend": args.backend, "n_samples": args.n_samples, "max_new_tokens": args.max_new_tokens,
        "ollama_url": args.ollama_url, "rouge": args.rouge, "base_model": args.base_model,
        "ft_model": args.ft_model, "gpu_layers": args.gpu_layers, "threads": args.threads})
    paths = params.load_paths(raw=raw)
    locator = ModelLocator.from_params(raw)
    if args.name and (args.base_model or args.ft_model):
        raise ParamsError("--name evaluates one model; it cannot be combined with --base-model/--ft-model")
    if args.name and args.eval_set and not args.output:
        raise ParamsError(f"--eval-set with --name needs --output: {paths.eval_dir}/{args.name}.json is the DVC "
                          f"stage's metrics file for the eval set")
    eval_set = args.eval_set or paths.eval_set
    records = select(load_eval_set(eval_set), cfg.n_samples)
    progress = not args.no_progress
    logger.info("%d eval records from %s, backend %s", len(records), eval_set, cfg.backend)

    if args.name:
        result = _run_one(cfg, locator, args.name, records, progress)
        atomic.write_json(args.output or paths.eval_dir / f"{args.name}.json", result.metrics)
        if args.predictions:
            atomic.write_jsonl(args.predictions, result.predictions(records))
        print(_summary(args.name, result.metrics))
        return

    for ref in (cfg.base_model, cfg.ft_model):
        locator.preflight(cfg, ref)
    results = {role: (ref, _run_one(cfg, locator, ref, records, progress))
               for role, ref in (("base", cfg.base_model), ("ft", cfg.ft_model))}
    report = {role: {"model": ref, "backend": cfg.backend, "metrics": r.metrics} for role, (ref, r) in results.items()}
    report["delta"] = deltas(results["base"][1].metrics, results["ft"][1].metrics)
    atomic.write_json(args.output or paths.eval_results, report)
    if args.predictions:
        atomic.write_jsonl(args.predictions, [{"model": ref, **row} for ref, r in results.values()
                                              for row in r.predictions(records)])
    for ref, r in results.values():
        print(_summary(ref, r.metrics))


if __name__ == "__main__":
    run(main)
