"""Stage `synthesize`: the Stage-2 synthetic SFT set (paths.synthetic) and the held-out eval set
(paths.eval_set), 12 task types, every assistant answer schema-valid and consistent with the strategy rules.

With use_real_data (the default in params.yaml), real_data_ratio of the records take their market indicators
and PER/PBR from the snapshots stage (paths.snapshots_dir) between start_date and end_date. Also writes
paths.synthetic_stats: counts per task/format/source/regime and the rows' token lengths (chat template,
Qwen tokenizer), which Stage 2/3's max_seq_length must hold.

    python -m stages.synthesize --count 5000 --use-real-data --start-date 2020-01-01 \\
        --end-date 2025-12-31 --real-data-ratio 0.7 --output data/synthetic/train.jsonl
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging

from kospi_ft import atomic, params
from kospi_ft.data.snapshot import MarketSnapshotStore
from kospi_ft.data.synthetic import SynthesizeParams, dataset_stats, generate
from kospi_ft.tokenizer import load_tokenizer

log = logging.getLogger("synthesize")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.synthesize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, help="training records (params: synthesize.count)")
    p.add_argument("--eval-count", type=int, help="held-out eval records (params: synthesize.eval_count)")
    p.add_argument("--use-real-data", action=argparse.BooleanOptionalAction, default=None,
                   help="take market data from the snapshots stage for --real-data-ratio of the records")
    p.add_argument("--start-date", type=dt.date.fromisoformat, help="first date (YYYY-MM-DD)")
    p.add_argument("--end-date", type=dt.date.fromisoformat, help="last date (YYYY-MM-DD)")
    p.add_argument("--real-data-ratio", type=float, help="share of records built on real snapshots (0..1)")
    p.add_argument("--seed", type=int, help="training set seed")
    p.add_argument("--output", help="training JSONL (default: paths.synthetic)")
    p.add_argument("--eval-output", help="eval JSONL (default: paths.eval_set)")
    p.add_argument("--stats-output", help="stats JSON (default: paths.synthetic_stats)")
    params.add_params_flag(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args, raw, paths = params.parse_stage_args(build_parser(), argv)
    cfg = params.load("synthesize", SynthesizeParams, raw=raw, overrides={
        "count": args.count, "eval_count": args.eval_count, "use_real_data": args.use_real_data,
        "start_date": args.start_date, "end_date": args.end_date, "real_data_ratio": args.real_data_ratio,
        "seed": args.seed})
    store = (MarketSnapshotStore.from_dir(paths.snapshots_dir, cfg.start_date, cfg.end_date)
             if cfg.use_real_data else None)
    common = dict(start_date=cfg.start_date, end_date=cfg.end_date, store=store,
                  real_data_ratio=cfg.real_data_ratio, progress=True)
    train = generate(cfg.count, seed=cfg.seed, split="train", **common)
    held_out = generate(cfg.eval_count, seed=cfg.eval_seed, split="eval", **common) if cfg.eval_count else []
    # Token lengths with the embedded Qwen tokenizer (same token counts as every Qwen2.5 model): the number
    # Stage 2/3's max_seq_length has to hold.
    stats = dataset_stats({"train": train, "eval": held_out}, tokenizer=load_tokenizer())
    atomic.write_jsonl(args.output or paths.synthetic, train)
    atomic.write_jsonl(args.eval_output or paths.eval_set, held_out)
    atomic.write_json(args.stats_output or paths.synthetic_stats, stats)
    for name in ("train", "eval"):
        log.info("%s: %d records, sources %s, row tokens %s", name, stats[name]["records"],
                 stats[name]["sources"], stats[name]["row_tokens"])


if __name__ == "__main__":
    from stages._main import run

    run(main)
