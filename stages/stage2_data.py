"""Stage `stage2_data`: Stage 2's training set (paths.stage2_data) = the synthetic set + your reasoning logs.

The spec's optional prepare_dataset.py. With stage2_data.logs set (a JSONL inside paths.logs_dir, one decision per
line: kospi_ft/data/reasoning_logs.py, data/logs/README.md), every line is validated and rendered like a
synthetic record; lines of train dates are mixed in at stage2_data.logs_ratio of the set, lines of eval dates go
to paths.logs_eval, the eval-set format, whose meta.reasoning is what evaluation scores ROUGE-L against:

    python -m stages.evaluate --name stage3 --eval-set data/stage2/logs_eval.jsonl --output metrics/logs_eval.json

With `logs: null` paths.stage2_data is the synthetic set byte for byte, and paths.logs_eval is empty.
Writes paths.stage2_data_stats (log lines valid/skipped, train/eval, records mixed in, rule violations, ...).

    python -m stages.stage2_data --logs data/logs/my_logs.jsonl --logs-ratio 0.2 [--skip-invalid]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kospi_ft import atomic, params
from kospi_ft.data.reasoning_logs import Stage2DataParams, mix, read_logs
from kospi_ft.data.snapshot import MarketSnapshotStore
from kospi_ft.errors import ParamsError
from kospi_ft.jsonl import read_jsonl
from kospi_ft.training.sft import Stage2Params  # the params model only: no torch or transformers

log = logging.getLogger("stage2_data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.stage2_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", help="reasoning-logs JSONL (stage2_data.logs); by hand it may be anywhere")
    p.add_argument("--no-logs", action="store_true", help="the synthetic set alone")
    p.add_argument("--logs-ratio", type=float, help="share of Stage 2's records that are log records (0..1)")
    p.add_argument("--skip-invalid", action=argparse.BooleanOptionalAction, default=None,
                   help="skip and count bad lines instead of stopping at the first")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="Stage 2 training JSONL (default: paths.stage2_data)")
    p.add_argument("--eval-output", help="held-out log records (default: paths.logs_eval)")
    p.add_argument("--stats", help="stats JSON (default: paths.stage2_data_stats)")
    params.add_params_flag(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args, raw, paths = params.parse_stage_args(build_parser(), argv)
    cfg = params.load("stage2_data", Stage2DataParams, raw=raw, overrides={
        "logs_ratio": args.logs_ratio, "skip_invalid": args.skip_invalid, "seed": args.seed})
    logs = None if args.no_logs else Path(args.logs) if args.logs else \
        None if cfg.logs is None else params.project_path(raw, cfg.logs)
    if logs is not None and not args.logs and not logs.resolve().is_relative_to(paths.logs_dir.resolve()):
        # dvc.yaml tracks paths.logs_dir: a file elsewhere would change without DVC rerunning this stage.
        raise ParamsError(f"params.yaml: stage2_data.logs: {logs} is outside paths.logs_dir ({paths.logs_dir}); "
                          f"put the file there (or `dvc add` it there)")

    synthetic = [r for _, r in read_jsonl(paths.synthetic, what="synthetic SFT set",
                                          hint="run the synthesize stage: `dvc repro synthesize`")]
    records, report = [], None
    if logs is not None:
        # The store is read only when needed: a line with snapshot_date renders that day's market block.
        store = MarketSnapshotStore.from_dir(paths.snapshots_dir) if paths.snapshots_dir.is_dir() else None
        # Stage 2 cuts a longer record to stage2.max_seq_length, its answer with it: rejected here instead.
        max_seq_length = params.load("stage2", Stage2Params, raw=raw).max_seq_length
        records, report = read_logs(logs, store, skip_invalid=cfg.skip_invalid, seed=cfg.seed,
                                    max_seq_length=max_seq_length)
    mixed = mix(synthetic, records, cfg.logs_ratio, cfg.seed, report)
    stats = {"logs_file": None if logs is None else logs.as_posix(), "logs_ratio": cfg.logs_ratio, **mixed.stats}

    if stats["logs"]["in_stage2"]:
        atomic.write_jsonl(args.output or paths.stage2_data, mixed.records)
    else:  # the synthetic set as it is, byte for byte
        atomic.write_bytes(args.output or paths.stage2_data, paths.synthetic.read_bytes())
    atomic.write_jsonl(args.eval_output or paths.logs_eval, mixed.held_out)
    atomic.write_json(args.stats or paths.stage2_data_stats, stats)
    s = stats["logs"]
    log.info("Stage 2 set: %d synthetic + %d log records (%d valid lines, %d skipped; %d held out for eval)",
             stats["synthetic_records"], s["in_stage2"], s["valid"], s["skipped_invalid"], s["eval"])


if __name__ == "__main__":
    from stages._main import run

    run(main)
