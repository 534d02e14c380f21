"""Stage `evaluate`: a model answers the held-out eval set; JSON validity, schema, signal range, Korean
rationale, strategy consistency, latency, tokens/s and ROUGE-L go into one metrics file per model, with the held-out
likelihood of the reference answers and the preference accuracy/margin on the held-out pairs (one forward per
answer through transformers + PEFT: kospi_ft.evaluation.likelihood).

    python -m stages.evaluate --name stage3                 # -> metrics/eval/stage3.json (the dvc stage)
    python -m stages.evaluate                               # the spec's form: evaluate.base_model vs ft_model
    python -m stages.evaluate --base-model stage2 --ft-model stage3 --n-samples 50 --output eval_results.json
    python -m stages.evaluate --backend ollama --base-model qwen2.5:32b --ft-model qwen2.5-kospi-ft-s2
    python -m stages.evaluate --name stage3 --eval-set data/stage2/logs_eval.jsonl --output metrics/logs_eval.json
    python -m stages.evaluate --trading-dates               # -> metrics/eval/trading_dates.csv (the dvc stage)

--name writes the per-model file dvc tracks (numbers only, identical keys for every model). Without --name, the
two models of --base-model/--ft-model are evaluated and written together with their deltas (ft - base) to
--output (default paths.eval_results). Names resolve per backend (see kospi_ft.evaluation.config); the likelihood
metrics always load the model's HF weights (`hf` resolution: base -> model.name, stageN -> models/stageN's adapter).
A model only Ollama has (or a .gguf path) has none: its likelihood keys are null, with a warning (an error with
--likelihood); --no-likelihood skips them for every model. --eval-set scores another file of the eval-set format,
e.g. your held-out reasoning logs (paths.logs_eval), whose ROUGE-L is against each line's reasoning text (the
preference metrics then are left out: the held-out pairs belong to paths.eval_set).

Every metrics file has a `guided` block when evaluate.guided_samples > 0: the first of the selected records
answered again, decoded guided by their task's JSON schema (kospi_ft.guidance; Ollama: `format`), scored by the
same scorers under the same keys (the likelihood blocks score reference answers, not replies: free block only).

With evaluate.regime_dates != 0 (the real preset: every one), a `regime_pass` block: regime_classification asked,
guided, on the snapshot store's eval-month days, scored for regime accuracy and timing like the `trading` block:
many more out-of-sample dates than the eval set holds, at the price of short answers.

Every metrics file has a `trading` block (kospi_ft.evaluation.trading): the reply's regime against the snapshot
store's, and, for the records drawn from real snapshots, the reply's exposure and position scores held for
evaluate.horizon_days trading days against buy-and-hold, the rule, momentum and random. --name also writes
paths.eval_dir/<name>/regime_confusion.json and equity.json (dvc plots); --trading-dates writes the dates those
metrics hold positions from, with the market's forward return (paths.trading_dates).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kospi_ft import atomic, params
from kospi_ft.data.snapshot import MarketSnapshotStore
from kospi_ft.errors import ParamsError, PipelineError
from kospi_ft.evaluation import likelihood, trading
from kospi_ft.evaluation.compare import deltas
from kospi_ft.evaluation.config import EvaluateParams, ModelLocator
from kospi_ft.evaluation.runner import EvalRecord, EvalResult, date_records, evaluate, load_eval_set, select
from kospi_ft.schema import TaskType

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
    p.add_argument("--guided-samples", type=int, help="records also decoded guided by their task's JSON schema, "
                                                      "0 = none (evaluate.guided_samples)")
    p.add_argument("--guided-max-new-tokens", type=int, help="evaluate.guided_max_new_tokens")
    p.add_argument("--regime-dates", type=int, help="eval-month days of the snapshot store asked "
                                                    "regime_classification, guided; 0 = none (evaluate.regime_dates)")
    p.add_argument("--ollama-url", help="Ollama base URL (evaluate.ollama_url)")
    p.add_argument("--gpu-layers", type=int, help="llama.cpp layers on the GPU, -1 = all (evaluate.gpu_layers)")
    p.add_argument("--threads", type=int, help="llama.cpp threads, 0 = all cores (evaluate.threads)")
    p.add_argument("--parallel", type=int, help="llama.cpp replies decoded at once (evaluate.parallel)")
    p.add_argument("--rouge", action=argparse.BooleanOptionalAction, default=None, help="evaluate.rouge")
    p.add_argument("--eval-set", type=Path, help="records to answer (default: paths.eval_set); e.g. paths.logs_eval")
    p.add_argument("--likelihood", action=argparse.BooleanOptionalAction, default=None,
                   help="held-out likelihood + preference metrics through the HF weights (evaluate.likelihood)")
    p.add_argument("--predictions", type=Path, help="also write every reply and its findings to this JSONL")
    p.add_argument("--horizon-days", type=int, help="trading metrics: holding period in trading days "
                                                    "(evaluate.horizon_days)")
    p.add_argument("--trading-dates", action="store_true",
                   help="only write the trading metrics' eval dates and market forward returns (paths.trading_dates)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    params.add_params_flag(p)
    return p.parse_args(argv)


Pass = tuple[list[EvalRecord], int, bool]   # records, reply budget, guided


def _run_one(cfg: EvaluateParams, locator: ModelLocator, ref: str, passes: dict[str, Pass],
             progress: bool) -> dict[str, EvalResult]:
    """Every pass with records (free, guided, regime) on one backend: one model load."""
    backend = locator.open(cfg, ref)
    try:
        return {name: evaluate(backend, records, max_new_tokens=budget, guided=guided, rouge=cfg.rouge,
                               korean_threshold=cfg.korean_threshold, progress=progress,
                               desc=f"evaluate {ref}" + ("" if name == "free" else f" {name}"))
                for name, (records, budget, guided) in passes.items() if records}
    finally:
        backend.close()


def _has_hf_weights(cfg: EvaluateParams, locator: ModelLocator, ref: str) -> bool:
    """False when `ref` names a model the likelihood metrics cannot load: an Ollama model or a GGUF file."""
    if locator.is_pipeline(ref):
        return True  # the pipeline's models: models/base and its adapters (or model.name)
    model, adapter = locator.hf(ref)
    return adapter is not None or Path(model).is_dir() or not (cfg.backend == "ollama" or ref.endswith(".gguf"))


def _likelihood_models(cfg: EvaluateParams, locator: ModelLocator, refs: list[str], asked: bool) -> set[str]:
    """The models whose likelihood metrics are computed. A model without HF weights gets null values and a
    warning, or, when --likelihood was given, an error before any model runs."""
    if not cfg.likelihood:
        return set()
    without = [ref for ref in refs if not _has_hf_weights(cfg, locator, ref)]
    if without and asked:
        raise PipelineError(f"{', '.join(without)}: --likelihood needs the model's HF weights, which a model "
                            f"served by Ollama or a GGUF file does not give; name a pipeline model (base, stage2, "
                            f"stage3) or an HF model dir")
    for ref in without:
        logger.warning("%s: no HF weights to score the held-out answers with; its likelihood metrics are null", ref)
    return set(refs) - set(without)


def _likelihood(ref: str, locator: ModelLocator, records: list[EvalRecord], pairs: list[likelihood.HeldOutPair],
                progress: bool) -> dict:
    """The likelihood blocks of model `ref`, scored on its HF weights."""
    model, adapter, revision = locator.hf_pinned(ref)
    scorer = likelihood.LikelihoodScorer(model, adapter=adapter, revision=revision)
    logger.info("likelihood metrics of %s on %s: %d answers, %d pairs", ref, scorer.description, len(records),
                len(pairs))
    return likelihood.score_model(scorer, records, pairs, progress=progress, desc=f"likelihood {ref}")


def _summary(name: str, m: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.0%}"

    def num(v):
        return "n/a" if v is None else f"{v:.4f}"

    guided = m.get("guided")
    guided_line = "" if guided is None else (
        f"; guided ({guided['n_samples']}): json {pct(guided['json']['valid_rate'])}, schema "
        f"{pct(guided['schema']['compliance_rate'])}, strategy {pct(guided['strategy']['consistency_rate'])}, "
        f"{guided['throughput']['gen_tokens_per_s']} tok/s")
    return (f"{name}: json {pct(m['json']['valid_rate'])} (unwrapped {pct(m['json']['unwrapped_rate'])}), "
            f"schema {pct(m['schema']['compliance_rate'])}, signal {pct(m['signal']['in_range_rate'])}, "
            f"korean {pct(m['korean']['rationale_rate'])}, strategy {pct(m['strategy']['consistency_rate'])}, "
            f"latency p50 {m['latency']['p50_s']}s, {m['throughput']['gen_tokens_per_s']} tok/s, "
            f"answer nll {num(m['likelihood']['answer_nll'])}, preference accuracy "
            f"{pct(m['preference']['accuracy'])} margin {num(m['preference']['margin_mean'])}, "
            f"regime accuracy {pct(m['trading']['regime']['accuracy'])}, timing sharpe "
            f"{num(m['trading']['timing']['sharpe'])}, rank IC {num(m['trading']['selection']['rank_ic_mean'])}"
            f"{guided_line}")


def _write_trading_plots(directory: Path, samples: list[trading.TradingSample], prices: trading.Prices,
                         cfg: EvaluateParams) -> None:
    """The model's regime confusion rows and its equity curve beside the baselines', for `dvc plots`."""
    atomic.write_json(directory / "regime_confusion.json", trading.regime_confusion(samples))
    curve = trading.equity_curve(samples, prices, cfg.horizon_days, cfg.seed)
    atomic.write_json(directory / "equity.json", [
        {"date": row["date"], "strategy": "model" if k == "equity" else k, "equity": v}
        for row in curve for k, v in row.items() if k != "date"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raw = params.read_raw(args.params)
    cfg = params.load("evaluate", EvaluateParams, raw=raw, overrides={
        "backend": args.backend, "n_samples": args.n_samples, "max_new_tokens": args.max_new_tokens,
        "guided_samples": args.guided_samples, "guided_max_new_tokens": args.guided_max_new_tokens,
        "regime_dates": args.regime_dates,
        "ollama_url": args.ollama_url, "rouge": args.rouge, "likelihood": args.likelihood,
        "base_model": args.base_model, "ft_model": args.ft_model, "gpu_layers": args.gpu_layers,
        "threads": args.threads, "parallel": args.parallel, "horizon_days": args.horizon_days})
    paths = params.load_paths(raw=raw)
    locator = ModelLocator.from_params(raw)
    if args.name and (args.base_model or args.ft_model):
        raise ParamsError("--name evaluates one model; it cannot be combined with --base-model/--ft-model")
    if args.name and args.eval_set and not args.output:
        raise ParamsError(f"--eval-set with --name needs --output: {paths.eval_dir}/{args.name}.json is the DVC "
                          f"stage's metrics file for the eval set")
    eval_set = args.eval_set or paths.eval_set
    held_out = load_eval_set(eval_set)
    records = select(held_out, cfg.n_samples)
    guided_records = select(records, cfg.guided_samples)  # the first of them, round-robin over tasks again
    store = MarketSnapshotStore.from_dir(paths.snapshots_dir)
    prices = trading.Prices.from_store(store)
    if args.trading_dates:
        rows = trading.trading_dates(trading.eval_samples(records, [""] * len(records)), prices, cfg.horizon_days)
        atomic.write_text(paths.trading_dates, trading.trading_dates_csv(rows))
        print(f"{paths.trading_dates}: {len(rows)} eval dates, horizon {cfg.horizon_days} trading days")
        return
    pairs = likelihood.load_pairs(paths.eval_pairs) if cfg.likelihood and args.eval_set is None else []
    progress = not args.no_progress
    regime_records = [] if cfg.regime_dates == 0 or args.eval_set else date_records(
        store, TaskType.REGIME_CLASSIFICATION.value, cfg.regime_dates, cfg.seed)
    passes = {"free": (records, cfg.max_new_tokens, False),
              "guided": (guided_records, cfg.guided_max_new_tokens, True),
              "regime": (regime_records, cfg.guided_max_new_tokens, True)}
    logger.info("%d eval records from %s, backend %s", len(records), eval_set, cfg.backend)

    refs = [args.name] if args.name else [cfg.base_model, cfg.ft_model]
    if not args.name:
        for ref in refs:
            locator.preflight(cfg, ref)
    scored = _likelihood_models(cfg, locator, refs, asked=args.likelihood is True)

    def trading_block(samples: list[trading.TradingSample]) -> dict:
        return trading.trading_block(samples, prices, cfg.horizon_days, cfg.seed)

    def run_one(ref: str) -> EvalResult:
        results = _run_one(cfg, locator, ref, passes, progress)
        result = results["free"]
        blocks = _likelihood(ref, locator, held_out, pairs, progress) if ref in scored else likelihood.empty_blocks()
        result.metrics = likelihood.merge(result.metrics, blocks)
        result.trading = trading.eval_samples(records, result.replies)
        result.metrics["trading"] = trading_block(result.trading)
        if "guided" in results:
            # What production sees: the same scorers on the guided replies. The likelihood blocks score the
            # reference answers, not the replies, so they are the free block's alone.
            guided = results["guided"]
            result.metrics["guided"] = {**guided.metrics, "trading": trading_block(
                trading.eval_samples(guided_records, guided.replies))}
        if "regime" in results:
            regime = results["regime"]
            result.metrics["regime_pass"] = {
                "n_samples": len(regime.replies), "schema_compliance_rate": regime.metrics["schema"]["compliance_rate"],
                **trading_block(trading.eval_samples(regime_records, regime.replies))}
        return result

    if args.name:
        result = run_one(args.name)
        atomic.write_json(args.output or paths.eval_dir / f"{args.name}.json", result.metrics)
        if args.output is None:
            _write_trading_plots(paths.eval_dir / args.name, result.trading, prices, cfg)
        if args.predictions:
            atomic.write_jsonl(args.predictions, result.predictions(records))
        print(_summary(args.name, result.metrics))
        return

    results = {role: (ref, run_one(ref)) for role, ref in (("base", cfg.base_model), ("ft", cfg.ft_model))}
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
