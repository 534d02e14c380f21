"""Stage `stage1_data`: the five Hugging Face finance datasets -> ChatML JSONL for Stage 1 SFT, plus stats.

    python -m stages.stage1_data                              # params.yaml `stage1_data:` (fixtures by default)
    python -m stages.stage1_data --source hub --total-samples 200000
    python -m stages.stage1_data --ratio-krx-won 0.30 --ratio-finance-instruct 0.30

Writes paths.stage1_data (one `{"messages": [...], "source": "<hub id>"}` per line), the held-out slice
paths.stage1_eval (`eval_samples` more rows by the same ratios, none equal to a training row; Stage 1's eval_loss)
and paths.stage1_stats (per-dataset requested/available/kept/dropped by reason, token-length percentiles). See
kospi_ft.data.hfdata.
"""
from __future__ import annotations

import argparse
import functools
import logging

from kospi_ft import atomic, params
from kospi_ft.data import hfdata

log = logging.getLogger("stage1_data")


def _flag(key: str) -> str:
    return "--ratio-" + key.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.stage1_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["fixtures", "hub"], help="embedded fixtures, or the Hugging Face hub")
    p.add_argument("--total-samples", type=int, help="rows to write, split by the ratios")
    p.add_argument("--eval-samples", type=int, help="held-out rows (disjoint from the training rows), same ratios")
    for spec in hfdata.REGISTRY:
        p.add_argument(_flag(spec.key), type=float, metavar="R", dest=f"ratio_{spec.key}",
                       help=f"share of {spec.hub_id} (ratios must sum to 1)")
    p.add_argument("--max-seq-length", type=int, help="drop (and count) rows longer than this many tokens")
    p.add_argument("--seed", type=int, help="sampling and shuffle seed")
    p.add_argument("--fill-shortfall", action=argparse.BooleanOptionalAction, default=None,
                   help="fill a dataset's shortfall from the others")
    p.add_argument("--tokenizer", help="tokenizer dir or hub id for the length filter (default: embedded Qwen)")
    p.add_argument("--output", help="JSONL out (default: paths.stage1_data)")
    p.add_argument("--eval-output", help="held-out JSONL out (default: paths.stage1_eval)")
    p.add_argument("--stats", help="stats JSON out (default: paths.stage1_stats)")
    params.add_params_flag(p)
    return p


def overrides(args: argparse.Namespace) -> dict:
    """CLI flags as params overrides; a ratio flag replaces only its own key (the others keep the file's)."""
    ratios = {spec.key: getattr(args, f"ratio_{spec.key}") for spec in hfdata.REGISTRY}
    out = {"source": args.source, "total_samples": args.total_samples, "eval_samples": args.eval_samples,
           "max_seq_length": args.max_seq_length,
           "seed": args.seed, "fill_shortfall": args.fill_shortfall, "tokenizer": args.tokenizer}
    if any(v is not None for v in ratios.values()):
        out["ratios"] = {k: v for k, v in ratios.items() if v is not None}
    return out


def main(argv: list[str] | None = None) -> None:
    args, raw, paths = params.parse_stage_args(build_parser(), argv)
    cfg = hfdata.load_params(overrides=overrides(args), raw=raw)

    tables, origins = {}, {}
    for spec in hfdata.REGISTRY:
        if cfg.ratios[spec.key] > 0:      # a dataset with ratio 0 is not even downloaded
            log.info("loading %s from %s", spec.hub_id, cfg.source)
            tables[spec.key] = hfdata.load_source(spec, cfg.source, paths.stage1_fixtures)
            origins[spec.key] = hfdata.origin_of(spec, cfg.source)

    from kospi_ft.tokenizer import load_tokenizer

    # A local tokenizer dir is the project's, wherever the stage runs from; None: the embedded Qwen tokenizer.
    tokenizer = load_tokenizer(cfg.tokenizer and params.local_dir_or_id(raw, cfg.tokenizer))
    result = hfdata.build(tables, cfg.ratios, cfg.total_samples, cfg.max_seq_length, cfg.seed,
                          cfg.fill_shortfall, functools.partial(hfdata.chat_token_lengths, tokenizer),
                          origins=origins, show_progress=True, eval_samples=cfg.eval_samples)
    stats = {"source": cfg.source, "tokenizer": tokenizer.name_or_path, **result.stats}

    out, stats_out = args.output or paths.stage1_data, args.stats or paths.stage1_stats
    eval_out = args.eval_output or paths.stage1_eval
    atomic.write_jsonl(out, result.records)
    atomic.write_jsonl(eval_out, result.eval_records)
    atomic.write_json(stats_out, stats)
    log.info("wrote %d/%d records to %s, %d/%d held-out to %s (dropped %s); stats in %s", stats["total_kept"],
             cfg.total_samples, out, stats["eval_kept"], cfg.eval_samples, eval_out, stats["dropped"], stats_out)


if __name__ == "__main__":
    from stages._main import run

    run(main)
