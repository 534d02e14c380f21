"""Benchmark: load + validate + features + regimes on a 20-year x 650-ticker KRX tree (~3.3M rows).

Targets on a 2-core machine: <= 10 s and <= 2 GiB peak RSS for MarketSnapshotStore.from_market.
Baseline, measured in the same run: a straightforward pandas version (read the whole tree, groupby/rolling
features, groupby-date market indicators). Each side runs in its own subprocess so peak RSS is its own.

    python benchmarks/bench_market.py [--years 20] [--tickers 650] [--dir /tmp/bench_market]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure_store(root: str, start: str, end: str) -> dict:
    from kospi_ft.data.snapshot import MarketSnapshotStore

    t0 = time.perf_counter()
    store = MarketSnapshotStore.from_market(root, dt.date.fromisoformat(start), dt.date.fromisoformat(end))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": store.stocks.num_rows, "days": store.market.num_rows,
            "regimes": store.regime_counts()}


def measure_pandas(root: str, start: str, end: str) -> dict:
    import numpy as np
    import pandas as pd

    from kospi_ft.data.regime import classify_arrays

    t0 = time.perf_counter()
    df = pd.read_parquet(root)  # hive partitions, no pruning
    df["date"] = pd.to_datetime(df["date"])
    df = df[(df["date"] >= start) & (df["date"] <= end)].sort_values(["ticker", "date"])
    g = df.groupby("ticker")
    df["ret"] = g["close"].pct_change()
    df["sma20"] = g["close"].rolling(20).mean().reset_index(level=0, drop=True)
    df["sma60"] = g["close"].rolling(60).mean().reset_index(level=0, drop=True)
    df["vol20"] = df.groupby("ticker")["ret"].rolling(20).std().reset_index(level=0, drop=True) * np.sqrt(252)
    df["w"] = g["market_cap"].shift()
    traded = df[(df["volume"] > 0) & df["ret"].notna()].copy()
    traded["rw"] = traded["ret"] * traded["w"]
    traded["up"] = traded["ret"] > 0
    day = traded.groupby("date").agg(rw=("rw", "sum"), w=("w", "sum"), up=("up", "mean"))
    mret = day["rw"] / day["w"]
    mom = (1 + mret).rolling(10).apply(np.prod, raw=True) - 1
    vol = mret.rolling(10).std() * np.sqrt(252)
    regimes = classify_arrays(mret.to_numpy(), day["up"].to_numpy(), mom.to_numpy(), vol.to_numpy())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": len(df), "days": len(day), "classified": int(sum(r is not None for r in regimes))}


def _child(kind: str, root: str, start: str, end: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--dir", root, "--start", start, "--end", end],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--tickers", type=int, default=650)
    ap.add_argument("--dir", default="/tmp/bench_market")
    ap.add_argument("--child", choices=["store", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--start", help=argparse.SUPPRESS)
    ap.add_argument("--end", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        fn = measure_store if args.child == "store" else measure_pandas
        result = fn(args.dir, args.start, args.end)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return

    from kospi_ft.data import market
    from kospi_ft.data.simulate import SimConfig, simulate
    from kospi_ft.data.universe import UNIVERSE

    start, end = dt.date(2026 - args.years, 1, 1), dt.date(2025, 12, 31)
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    table = simulate(SimConfig(start, end, seed=1, extra_tickers=max(0, args.tickers - len(UNIVERSE))))
    market.write_partitions(table, root)
    print(f"simulated {table.num_rows:,} rows ({args.years} years x {args.tickers} tickers) in "
          f"{time.perf_counter() - t0:.1f} s -> {root}")
    del table

    store = _child("store", str(root), start.isoformat(), end.isoformat())
    base = _child("pandas", str(root), start.isoformat(), end.isoformat())
    print(f"MarketSnapshotStore.from_market: {store['seconds']:.2f} s, peak RSS {store['peak_rss_gib']:.2f} GiB, "
          f"{store['rows']:,} rows, {store['days']:,} days (target <= 10 s, <= 2 GiB)")
    print(f"pandas groupby/rolling baseline: {base['seconds']:.2f} s, peak RSS {base['peak_rss_gib']:.2f} GiB")
    print(f"speed-up vs baseline: {base['seconds'] / store['seconds']:.1f}x; "
          f"memory ratio: {store['peak_rss_gib'] / base['peak_rss_gib']:.2f}")
    print(f"regime days: {store['regimes']}")


if __name__ == "__main__":
    main()
