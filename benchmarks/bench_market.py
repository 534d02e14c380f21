"""Benchmark: a 20-year x 650-ticker KRX tree (~3.3M rows) through ingest and the snapshot store.

Measured, each in its own subprocess (so peak RSS is its own):
- seed: the user's tree in the seed system's format (timestamp dates, "005930 KP" tickers, float volume,
  pe_ratio/pb_ratio, feature columns, KRX-convention halts, 0.1% of closes missing) through what the market and
  snapshots stages do: `ingest.load_tree` + `market.write_partitions`, then `MarketSnapshotStore.from_market` on
  the normalised tree. Target on a 2-core machine: <= 15 s and <= 2 GiB peak RSS.
- contract: the same market already in the contract format through the same two steps (baseline).
- store: `MarketSnapshotStore.from_market` alone on the contract tree (the baseline the target was set against).
- pandas (--pandas): a straightforward pandas version of the store (read the tree, groupby/rolling features).

    python benchmarks/bench_market.py [--years 20] [--tickers 650] [--dir /tmp/bench_market] [--pandas]
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


def measure_ingest_then_store(root: str, start: str, end: str) -> dict:
    """The market stage (ingest + write the normalised tree) then the snapshots stage, as the pipeline runs them."""
    import tempfile

    from kospi_ft.data import ingest, market

    lo, hi = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    with tempfile.TemporaryDirectory(dir=Path(root).parent) as out:
        t0 = time.perf_counter()
        table, report = ingest.load_tree(root, lo, hi)
        market.write_partitions(table, out)
        ingest_s = time.perf_counter() - t0
        del table
        store = measure_store(out, start, end)
    m = report.metrics("krx")
    return {"seconds": ingest_s + store["seconds"], "ingest_seconds": ingest_s, "store_seconds": store["seconds"],
            "rows": store["rows"], "days": store["days"], "regimes": store["regimes"],
            "normalised": {k: m[k] for k in ("rows_dropped", "halts_fixed", "tickers_normalised", "columns_derived")}}


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


CHILDREN = {"store": measure_store, "ingest": measure_ingest_then_store, "pandas": None}


def _child(kind: str, root: str, start: str, end: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--dir", root, "--start", start, "--end", end],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--tickers", type=int, default=650)
    ap.add_argument("--dir", default="/tmp/bench_market")
    ap.add_argument("--pandas", action="store_true", help="also run the pandas baseline (slow)")
    ap.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--start", help=argparse.SUPPRESS)
    ap.add_argument("--end", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        fn = CHILDREN[args.child] or measure_pandas
        result = fn(args.dir, args.start, args.end)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return

    from kospi_ft.data import market
    from kospi_ft.data.simulate import SimConfig, simulate, write_vendor_tree
    from kospi_ft.data.universe import UNIVERSE

    start, end = dt.date(2026 - args.years, 1, 1), dt.date(2025, 12, 31)
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    contract, seed = base / "contract", base / "seed"
    t0 = time.perf_counter()
    table = simulate(SimConfig(start, end, seed=1, extra_tickers=max(0, args.tickers - len(UNIVERSE))))
    market.write_partitions(table, contract)
    write_vendor_tree(table, seed, "seed", missing_close=0.001)
    print(f"simulated {table.num_rows:,} rows ({args.years} years x {args.tickers} tickers) in "
          f"{time.perf_counter() - t0:.1f} s -> {contract} (contract format), {seed} (seed system's format)")
    del table

    span = (start.isoformat(), end.isoformat())
    store = _child("store", str(contract), *span)
    base_run = _child("ingest", str(contract), *span)
    seed_run = _child("ingest", str(seed), *span)
    print(f"seed-format tree, ingest + store: {seed_run['seconds']:.2f} s (ingest {seed_run['ingest_seconds']:.2f} + "
          f"store {seed_run['store_seconds']:.2f}), peak RSS {seed_run['peak_rss_gib']:.2f} GiB, {seed_run['rows']:,} "
          f"rows (target <= 15 s, <= 2 GiB); normalised: {seed_run['normalised']}")
    print(f"contract-format tree, ingest + store (baseline): {base_run['seconds']:.2f} s (ingest "
          f"{base_run['ingest_seconds']:.2f} + store {base_run['store_seconds']:.2f}), peak RSS "
          f"{base_run['peak_rss_gib']:.2f} GiB")
    print(f"contract-format tree, MarketSnapshotStore.from_market alone (baseline): {store['seconds']:.2f} s, "
          f"peak RSS {store['peak_rss_gib']:.2f} GiB, {store['rows']:,} rows, {store['days']:,} days")
    print(f"seed vs contract pipeline: {seed_run['seconds'] / base_run['seconds']:.2f}x time, "
          f"{seed_run['peak_rss_gib'] / base_run['peak_rss_gib']:.2f}x memory; vs the store alone: "
          f"{seed_run['seconds'] / store['seconds']:.2f}x time, "
          f"{seed_run['peak_rss_gib'] / store['peak_rss_gib']:.2f}x memory")
    if args.pandas:
        pd_run = _child("pandas", str(contract), *span)
        print(f"pandas groupby/rolling store: {pd_run['seconds']:.2f} s, peak RSS {pd_run['peak_rss_gib']:.2f} GiB "
              f"(the store alone is {pd_run['seconds'] / store['seconds']:.1f}x faster)")
    print(f"regime days: {store['regimes']}")


if __name__ == "__main__":
    main()
