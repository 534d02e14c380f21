"""Stage `market`: write the embedded simulated KRX tree, or ingest the user's own tree, into paths.market_dir.

    python -m stages.market                       # params.yaml `market:` section
    python -m stages.market --source krx          # normalise + validate paths.krx_source_dir (kospi_ft.data.ingest)

Writes paths.market_ingest: what ingest normalised, per reason (the simulator's counts are zero).
"""
from __future__ import annotations

import argparse
import logging

from kospi_ft import atomic, params
from kospi_ft.data import ingest, market
from kospi_ft.data.market import MarketParams
from kospi_ft.data.simulate import SimConfig, simulate

log = logging.getLogger("market")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.market", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["simulate", "krx"], help="simulate the embedded market, or validate your KRX tree")
    p.add_argument("--start", help="first month, YYYY-MM")
    p.add_argument("--end", help="last month, YYYY-MM")
    p.add_argument("--seed", type=int, help="simulator seed")
    p.add_argument("--extra-tickers", type=int, help="simulated tickers beyond the 97-stock universe")
    p.add_argument("--input", help="KRX tree to ingest (default: paths.krx_source_dir)")
    p.add_argument("--output", help="output tree (default: paths.market_dir)")
    p.add_argument("--metrics", help="ingest metrics JSON (default: paths.market_ingest)")
    params.add_params_flag(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args, raw, paths = params.parse_stage_args(build_parser(), argv)
    cfg = params.load("market", MarketParams, raw=raw, overrides={
        "source": args.source, "start": args.start, "end": args.end, "seed": args.seed,
        "extra_tickers": args.extra_tickers})
    start, end = market.month_bounds(cfg.months().months())
    out = args.output or paths.market_dir

    if cfg.source == "simulate":
        log.info("simulating %s..%s (seed %d)", start, end, cfg.seed)
        table = simulate(SimConfig(start=start, end=end, seed=cfg.seed, extra_tickers=cfg.extra_tickers))
        report = ingest.IngestReport(rows_written=table.num_rows)
    else:
        src = args.input or paths.krx_source_dir
        log.info("ingesting KRX tree %s for %s..%s", src, start, end)
        table, report = ingest.load_tree(src, start, end, progress=True)
    with atomic.atomic_path(out, is_dir=True) as tmp:
        files = market.write_partitions(table, tmp)
    if cfg.source == "simulate":
        report.months = len(files)
    metrics = report.metrics(cfg.source)
    atomic.write_json(args.metrics or paths.market_ingest, metrics)
    log.info("wrote %d rows, %d tickers, %d monthly files to %s", table.num_rows,
             len(set(table["ticker"].to_pylist())), len(files), out)
    if cfg.source == "krx":
        log.info("ingest: %d files, %d empty months, %d ignored files, dropped %s, halts fixed %d, tickers %s, "
                 "derived %s, ignored columns %s", metrics["files"], metrics["empty_months"],
                 metrics["ignored_files"], metrics["rows_dropped"], metrics["halts_fixed"],
                 metrics["tickers_normalised"], metrics["columns_derived"], metrics["columns_ignored_names"])


if __name__ == "__main__":
    from stages._main import run

    run(main)
