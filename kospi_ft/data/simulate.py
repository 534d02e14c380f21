"""Deterministic KRX-like market simulator (the embedded default's raw data).

Returns come from a regime-switching market factor (a hidden Markov chain: calm bull, choppy, stress, crash),
sector factors and fat-tailed idiosyncratic noise, so that the spec's threshold classifier sees all five regimes.
KRX features modelled: +-30% daily price limits, tick-size rounding, zero-volume trading halts (price frozen at
the previous close), IPOs inside the range (the universe's real listing dates), slowly drifting EPS/BPS so that
PER/PBR move with price, and loss-making periods (negative or missing PER).

Same params -> identical rows: one numpy Generator seeded from `seed`, tickers in universe order.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .market import SCHEMA
from .universe import UNIVERSE, Stock

# KRX closes on these fixed-date holidays (lunar holidays are left out: a missing day changes nothing here).
_FIXED_HOLIDAYS = ((1, 1), (3, 1), (5, 5), (6, 6), (8, 15), (10, 3), (10, 9), (12, 25), (12, 31))

# Hidden market states: daily drift, daily vol, and persistence. Tuned so the classifier's five regimes all
# occur with a mix close to the spec's 2020-2025 table (mostly MILD_BULL/WEAKENING, a few % STRONG_BULL, ~1-2% BEAR).
_STATES = ("bull", "choppy", "stress", "crash")
_DRIFT = np.array([0.0012, 0.0002, -0.0035, -0.0110])
_VOL = np.array([0.0085, 0.0095, 0.0210, 0.0300])
_TRANSITION = np.array([
    [0.975, 0.020, 0.005, 0.000],
    [0.020, 0.955, 0.023, 0.002],
    [0.030, 0.060, 0.900, 0.010],
    [0.000, 0.050, 0.200, 0.750],
])
_SECTOR_VOL = 0.007
_LIMIT = 0.30


@dataclass(frozen=True)
class SimConfig:
    start: dt.date
    end: dt.date
    seed: int = 7
    extra_tickers: int = 0      # synthetic tickers beyond the universe (benchmarks use 650 in total)
    halt_prob: float = 0.0004   # daily chance a trading stock starts a halt
    loss_maker_share: float = 0.08


def trading_days(start: dt.date, end: dt.date) -> np.ndarray:
    years = range(start.year, end.year + 1)
    holidays = [np.datetime64(dt.date(y, m, d)) for y in years for m, d in _FIXED_HOLIDAYS]
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1, dtype="datetime64[D]")
    return days[np.is_busday(days, holidays=holidays)]


def _tick(price: np.ndarray) -> np.ndarray:
    """KRX tick size by price band (2023 schedule)."""
    bands = [2_000, 5_000, 20_000, 50_000, 200_000, 500_000]
    ticks = np.array([1, 5, 10, 50, 100, 500, 1_000], dtype=float)
    return ticks[np.searchsorted(bands, price, side="right")]


def _round_tick(price: np.ndarray) -> np.ndarray:
    t = _tick(price)
    return np.maximum(np.round(price / t) * t, 1.0)


def _stocks(extra: int) -> list[Stock]:
    stocks = list(UNIVERSE)
    sectors = sorted({s.sector for s in UNIVERSE})
    for i in range(extra):
        stocks.append(Stock(f"9{i:05d}", f"가상종목{i:04d}", f"Simulated {i:04d}", sectors[i % len(sectors)], "KOSPI"))
    return stocks


def simulate(cfg: SimConfig) -> pa.Table:
    """Simulate daily bars for the universe (+ extra tickers) over [start, end]; rows sorted by (date, ticker)."""
    rng = np.random.default_rng(cfg.seed)
    days = trading_days(cfg.start, cfg.end)
    n_days = len(days)
    stocks = _stocks(cfg.extra_tickers)
    n = len(stocks)
    sectors = sorted({s.sector for s in stocks})
    sector_idx = np.array([sectors.index(s.sector) for s in stocks])

    # Market state path and factor returns.
    state = np.empty(n_days, dtype=np.int64)
    s = 0
    u = rng.random(n_days)
    cum = np.cumsum(_TRANSITION, axis=1)
    for t in range(n_days):
        state[t] = s
        s = int(np.searchsorted(cum[s], u[t]))
    market = _DRIFT[state] + _VOL[state] * rng.standard_normal(n_days)
    sector_f = _SECTOR_VOL * rng.standard_normal((n_days, len(sectors)))
    # Sector dispersion widens in stress, as it does on real crash days.
    sector_f *= (1.0 + 0.8 * (state >= 2))[:, None]

    beta = rng.uniform(0.7, 1.4, n)
    idio_vol = rng.uniform(0.011, 0.024, n) * np.where(np.isin(sector_idx, [sectors.index("bio")] if "bio" in sectors else []), 1.5, 1.0)
    # Student-t(4) noise scaled to unit variance: fat tails so limit moves and gaps happen.
    eps = rng.standard_t(4, size=(n_days, n)) / np.sqrt(2.0)
    ret = beta[None, :] * market[:, None] + sector_f[:, sector_idx] + idio_vol[None, :] * eps

    # Listing: IPO inside the range -> rows begin on the first trading day on/after the listing date.
    first = np.zeros(n, dtype=np.int64)
    for j, st in enumerate(stocks):
        if st.listed is not None and st.listed > cfg.start:
            first[j] = np.searchsorted(days, np.datetime64(st.listed, "D"))
    alive = np.arange(n_days)[:, None] >= first[None, :]

    # Trading halts: frozen price, zero volume; the missed move lands on resumption (still limit-capped).
    halted = np.zeros((n_days, n), dtype=bool)
    starts = rng.random((n_days, n)) < cfg.halt_prob
    lengths = rng.integers(1, 6, size=(n_days, n))
    for t, j in zip(*np.nonzero(starts)):
        halted[t:t + lengths[t, j], j] = True

    price0 = np.exp(rng.uniform(np.log(3_000), np.log(600_000), n))
    shares = np.round(np.exp(rng.uniform(np.log(2e7), np.log(6e9), n)), -3).astype(np.int64)
    close = np.empty((n_days, n))
    prev = _round_tick(price0)
    pending = np.zeros(n)
    for t in range(n_days):
        r = ret[t] + pending
        r = np.clip(r, -_LIMIT + 1e-3, _LIMIT - 1e-3)
        new = _round_tick(prev * (1 + r))
        # Tick rounding must not push a move past the +-30% band.
        new = np.clip(new, np.ceil(prev * (1 - _LIMIT)), np.floor(prev * (1 + _LIMIT)))
        h = halted[t]
        pending = np.where(h, pending + ret[t], 0.0)
        new = np.where(h | ~alive[t], prev, new)
        close[t] = new
        prev = new
    prev_close = np.vstack([_round_tick(price0)[None, :], close[:-1]])

    gap = rng.normal(0, 0.35, (n_days, n)) * (close / prev_close - 1)
    open_ = _round_tick(np.clip(prev_close * (1 + gap), prev_close * (1 - _LIMIT) + 1, prev_close * (1 + _LIMIT) - 1))
    span = np.abs(rng.normal(0, 0.6, (n_days, n))) * idio_vol[None, :] * prev_close
    high = _round_tick(np.minimum(np.maximum(open_, close) + span, np.floor(prev_close * (1 + _LIMIT))))
    low = _round_tick(np.maximum(np.minimum(open_, close) - span * rng.uniform(0.5, 1.5, (n_days, n)),
                                 np.ceil(prev_close * (1 - _LIMIT))))
    high = np.maximum(high, np.maximum(open_, close))
    low = np.minimum(low, np.minimum(open_, close))
    for arr in (open_, high, low):
        arr[halted] = close[halted]

    turnover = np.exp(rng.normal(np.log(0.003), 0.5, (n_days, n))) * (1 + 25 * np.abs(close / prev_close - 1))
    volume = np.round(shares[None, :] * turnover).astype(np.int64)
    volume[halted] = 0
    value = np.round(volume * (open_ + high + low + close) / 4).astype(np.int64)
    mcap = (close * shares[None, :]).astype(np.int64)

    # Fundamentals: EPS and BPS drift quarterly; some firms have loss-making spells (negative EPS).
    per0 = np.exp(rng.normal(np.log(12), 0.5, n))
    pbr0 = np.exp(rng.normal(np.log(1.1), 0.6, n))
    quarter = (np.arange(n_days) // 63)
    n_q = int(quarter[-1]) + 1
    eps_growth = np.cumprod(1 + rng.normal(0.015, 0.08, (n_q, n)), axis=0)
    eps = (price0 / per0)[None, :] * eps_growth[quarter]
    loss = rng.random((n_q, n)) < cfg.loss_maker_share
    eps = np.where(loss[quarter], -np.abs(eps) * 0.3, eps)
    bps = (price0 / pbr0)[None, :] * np.cumprod(1 + rng.normal(0.01, 0.02, (n_q, n)), axis=0)[quarter]
    per = close / eps
    # Some vendors blank PER for loss-makers, others print it negative: keep both conventions.
    blank = loss[quarter] & (rng.random(n)[None, :] < 0.5)
    per[blank] = np.nan
    pbr = close / bps

    t_idx, j_idx = np.nonzero(alive)  # row-major: sorted by (date, ticker order)
    order = np.lexsort(([stocks[j].code for j in j_idx], t_idx))
    t_idx, j_idx = t_idx[order], j_idx[order]
    codes = np.array([s.code for s in stocks])
    names = np.array([s.name_ko for s in stocks])
    cols = {
        "date": pa.array(days[t_idx], pa.date32()),
        "ticker": pa.array(codes[j_idx]),
        "name": pa.array(names[j_idx]),
        "open": open_[t_idx, j_idx], "high": high[t_idx, j_idx], "low": low[t_idx, j_idx],
        "close": close[t_idx, j_idx],
        "volume": volume[t_idx, j_idx], "value": value[t_idx, j_idx],
        "market_cap": mcap[t_idx, j_idx], "shares": shares[j_idx],
        "per": np.round(per[t_idx, j_idx], 2), "pbr": np.round(pbr[t_idx, j_idx], 3),
    }
    return pa.table({k: pa.array(v) if not isinstance(v, pa.Array) else v for k, v in cols.items()}).cast(SCHEMA)


# ---- the simulated market in the column layouts users bring (tests, the benchmark and the example tree) ------

#: The seed system's, pykrx's and FinanceDataReader's layouts (kospi_ft.data.ingest reads all three).
VENDORS = ("seed", "pykrx", "fdr")


def as_vendor(table: pa.Table, vendor: str, *, missing_close: float = 0.0, seed: int = 0) -> pa.Table:
    """Contract rows in a vendor's columns, types and conventions.

    seed: timestamp `date`, tickers like "005930 KP", float volume, market_cap, pe_ratio/pb_ratio and feature
    columns (sma_20, rsi_14: placeholder values, ingest ignores them); no name, value or shares.
    pykrx: 날짜, 티커, 시가 고가 저가 종가 (int32) 거래량 거래대금 등락률 시가총액 상장주식수 PER PBR, PER/PBR 0 where
    KRX prints '-' (pykrx's own replacement). fdr: Date, integer Code (as pandas reads it from a CSV), Name,
    Open High Low Close Volume Change Amount MarCap Shares, no PER/PBR.
    All three write a trading halt the KRX way: open = high = low = 0, volume 0. `missing_close` is the share of
    rows whose close is blanked (NaN).
    """
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {VENDORS}, got {vendor!r}")
    n = table.num_rows
    halted = table["volume"].to_numpy() == 0
    ohl = {c: np.where(halted, 0.0, table[c].to_numpy()) for c in ("open", "high", "low")}
    close = table["close"].to_numpy().astype(float)
    if missing_close:
        close = np.where(np.random.default_rng(seed).random(n) < missing_close, np.nan, close)
    stamp = pc.cast(table["date"], pa.timestamp("ns"))
    if vendor == "seed":
        return pa.table({
            "date": stamp, "ticker": pc.binary_join_element_wise(table["ticker"], "KP", " "),
            **ohl, "close": close, "volume": table["volume"].cast(pa.float64()),
            "market_cap": table["market_cap"], "pe_ratio": table["per"], "pb_ratio": table["pbr"],
            "sma_20": close, "rsi_14": np.full(n, 50.0),
        })
    if vendor == "pykrx":
        krw = {k: pa.array(v).cast(pa.int32()) for k, v in zip(("시가", "고가", "저가"), ohl.values())}
        zero_dash = {k: pc.fill_null(pc.if_else(pc.is_nan(table[c]), None, table[c]), 0).cast(pa.float32())
                     for k, c in (("PER", "per"), ("PBR", "pbr"))}
        return pa.table({
            "날짜": stamp, "티커": table["ticker"], **krw, "종가": pa.array(close, from_pandas=True).cast(
                pa.float64() if missing_close else pa.int32()),
            "거래량": table["volume"].cast(pa.int32()), "거래대금": table["value"],
            "등락률": pa.array(np.zeros(n, dtype=np.float32)), "시가총액": table["market_cap"],
            "상장주식수": table["shares"], **zero_dash,
        })
    return pa.table({
        "Date": stamp, "Code": table["ticker"].cast(pa.int64()), "Name": table["name"],
        "Open": ohl["open"], "High": ohl["high"], "Low": ohl["low"], "Close": close, "Volume": table["volume"],
        "Change": np.zeros(n), "Amount": table["value"], "MarCap": table["market_cap"], "Shares": table["shares"],
    })


def write_vendor_tree(table: pa.Table, root, vendor: str, *, missing_close: float = 0.0) -> list:
    """`as_vendor` month by month into `root/year=YYYY/month=M/data.parquet`, as a user's tree would be."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from .market import month_slices, partition_path

    written = []
    for k, (y, m, part) in enumerate(month_slices(table)):
        path = partition_path(Path(root), y, m)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(as_vendor(part, vendor, missing_close=missing_close, seed=k), path, compression="zstd")
        written.append(path)
    return written
