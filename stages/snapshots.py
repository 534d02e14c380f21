"""Stage `snapshots`: per-stock features, market indicators and daily regimes from paths.market_dir.

Writes paths.snapshots_dir (market.parquet, stocks.parquet) for [start_date, end_date], the regime day counts
(paths.regimes_metric) and the regime timeline plot data (paths.regime_plot). The rolling features of the first
days use the market tree's history before start_date when it has it (market.start earlier than start_date).

    python -m stages.snapshots --start-date 2020-01-01 --end-date 2025-12-31
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging

from kospi_ft import atomic, params
from kospi_ft.data.snapshot import MarketSnapshotStore, SnapshotParams

log = logging.getLogger("snapshots")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.snapshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start-date", type=dt.date.fromisoformat, help="first day (YYYY-MM-DD)")
    p.add_argument("--end-date", type=dt.date.fromisoformat, help="last day (YYYY-MM-DD)")
    p.add_argument("--input", help="market tree (default: paths.market_dir)")
    p.add_argument("--output", help="snapshot dir (default: paths.snapshots_dir)")
    params.add_params_flag(p)
    return p


def timeline_csv(store: MarketSnapshotStore) -> str:
    lines = ["date,kospi_index,market_return,breadth,regime"]
    m = store.market
    for d, idx, r, b, g in zip(store.dates, m["index_level"].to_pylist(), m["market_return"].to_pylist(),
                               m["breadth"].to_pylist(), m["regime"].to_pylist()):
        if g is None:
            continue
        lines.append(f"{d.isoformat()},{idx:.2f},{r:.5f},{b:.4f},{g}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args, raw, paths = params.parse_stage_args(build_parser(), argv)
    cfg = params.load("snapshots", SnapshotParams, raw=raw,
                      overrides={"start_date": args.start_date, "end_date": args.end_date})
    store = MarketSnapshotStore.from_market(args.input or paths.market_dir, cfg.start_date, cfg.end_date, progress=True)
    counts = store.regime_counts()
    with atomic.atomic_path(args.output or paths.snapshots_dir, is_dir=True) as tmp:
        store.save(tmp)
    # history_days: trading days before start_date that filled the rolling windows (0: the tree starts there).
    atomic.write_json(paths.regimes_metric, {"regime_days": counts, "first_day": store.dates[0].isoformat(),
                                             "last_day": store.dates[-1].isoformat(),
                                             "history_days": store.history_days})
    atomic.write_text(paths.regime_plot, timeline_csv(store))
    log.info("regime days: %s", counts)


if __name__ == "__main__":
    from stages._main import run

    run(main)
