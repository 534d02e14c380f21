"""MarketSnapshotStore: per-stock features, market-wide indicators and a regime for every trading day.

Per ticker: daily return, SMA-20/60, 20-day realised volatility (annualised).
Per day (market-wide): cap-weighted return (weights = previous close's market cap), breadth (share of traded
stocks that closed up; halted stocks are left out), 10-day momentum (compounded cap-weighted return), 10-day
realised volatility (annualised), a cap-weighted index level (1000 on the window's first day), and the regime by
`kospi_ft.data.regime.classify_arrays`.

History. `from_market` also loads HISTORY_DAYS calendar days before the window's first day when the tree has
them, so the rolling windows of the window's first days are full; the tables hold only the window. Without that
history the first 10 days get no regime and the first 59 no SMA-60 (those days have no usable stock). A
snapshot's `stocks` holds universe stocks with every feature defined and PER/PBR inside the spec's bands.

Fixed precision. Every float is written rounded to FLOAT_DECIMALS (and -0.0 written as 0.0), and regimes are
classified on the rounded indicators: float results that differ in their last bits between CPUs (SIMD reductions,
libm) then give the same file bytes, so DVC sees the same hash on every machine.

Features are computed with numpy over ticker-contiguous arrays (cumulative-sum windows), not a pandas
groupby-rolling: same numbers, several times faster (see benchmarks/bench_market.py).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import model_validator

from ..errors import DataValidationError, PipelineError
from ..params import Section
from . import market as mkt
from .regime import PRECEDENCE, Regime, classify_arrays
from .universe import TICKERS, by_code

ANNUALISE = np.sqrt(252.0)
WINDOW_MOMENTUM = 10
SMA_LONG = 60
#: Calendar days loaded before the window: SMA-60 needs 59 trading days before the first one, and 120 calendar
#: days hold ~80 KRX trading days even across the Lunar New Year and Chuseok holidays.
HISTORY_DAYS = 120
#: Decimals every float column is written with: prices and SMAs to 1/10,000 won, fractions to 1e-8, well below
#: what the prompts show (4 decimals) and far above the ~1e-16 relative noise of float arithmetic.
FLOAT_DECIMALS = {"close": 4, "daily_return": 8, "sma20": 4, "sma60": 4, "vol20": 8, "per": 4, "pbr": 4,
                  "market_return": 8, "breadth": 8, "momentum_10d": 8, "vol_10d": 8, "index_level": 6}
FEATURES = ("daily_return", "sma20", "sma60", "vol20")
PER_RANGE = (0.5, 200.0)   # the spec's sanity band for real snapshot valuations (exclusive)
PBR_RANGE = (0.01, 50.0)

MARKET_FILE = "market.parquet"
STOCKS_FILE = "stocks.parquet"


@dataclass(frozen=True)
class StockSnapshot:
    ticker: str
    name: str
    sector: str
    close: float
    daily_return: float
    sma20: float
    sma60: float
    vol20: float
    market_cap: int
    per: float
    pbr: float


@dataclass(frozen=True)
class Snapshot:
    date: dt.date
    regime: Regime
    market_return: float
    breadth: float
    momentum_10d: float
    vol_10d: float
    index_level: float
    stocks: tuple[StockSnapshot, ...]


def _rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing w-day mean down axis 0; NaN unless all w values in the window are finite.

    Cumulative sums make it O(n) whatever w is; NaN marks days a ticker was not listed (or had no return).
    """
    finite = np.isfinite(x)
    c = np.zeros((x.shape[0] + 1,) + x.shape[1:], order="F")
    k = np.zeros(c.shape, dtype=np.int64, order="F")
    np.cumsum(np.where(finite, x, 0.0), axis=0, out=c[1:])
    np.cumsum(finite, axis=0, out=k[1:])
    out = np.full(x.shape, np.nan, order="F")
    if len(x) >= w:
        n = k[w:] - k[:-w]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[w - 1:] = np.where(n == w, (c[w:] - c[:-w]) / w, np.nan)
    return out


def _rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    m = _rolling_mean(x, w)
    m2 = _rolling_mean(x * x, w)
    var = np.maximum(m2 - m * m, 0.0) * w / (w - 1)  # sample std, as pandas' rolling().std()
    return np.sqrt(var)


def _shift(x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape, np.nan, order="F")
    out[1:] = x[:-1]
    return out


def _dense_ids(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, id of each element) for small-range ints: O(n), unlike np.unique's sort."""
    lo = int(x.min())
    present = np.zeros(int(x.max()) - lo + 1, dtype=bool)
    present[x - lo] = True
    ids = np.cumsum(present) - 1
    return np.flatnonzero(present) + lo, ids[x - lo]


def fixed(values, column: str) -> np.ndarray:
    """`values` at the column's fixed precision (FLOAT_DECIMALS), -0.0 as 0.0: bytes that ignore last-bit noise."""
    return np.round(np.asarray(values, dtype=float), FLOAT_DECIMALS[column]) + 0.0


def compute_features(table: pa.Table, start: dt.date | None = None) -> tuple[pa.Table, pa.Table]:
    """(stocks, market) feature tables from validated bars (any row order; outputs follow the input's).

    Rows before `start` are history: they fill the rolling windows but are not in the outputs.
    Works on a dense day x ticker grid: windows run over trading days, and a day a ticker has no row (before
    its IPO, or a gap in a user's tree) is NaN, so a window across a gap is not silently stitched together.
    """
    day_num = mkt.day_numbers(table)
    tick_num = mkt.ticker_numbers(table)
    day_values, d = _dense_ids(day_num)
    tick_values, k = _dense_ids(tick_num)
    shape = (len(day_values), len(tick_values))

    def grid(values, fill=np.nan):
        # Column-major: every window runs down a ticker's column, which is then contiguous (4x faster cumsum).
        g = np.full(shape, fill, dtype=float, order="F")
        g[d, k] = values
        return g

    close = grid(table["close"].to_numpy())
    volume = grid(table["volume"].to_numpy(), 0.0)
    mcap = grid(table["market_cap"].to_numpy().astype(float))
    ret = close / _shift(close) - 1.0
    sma20 = _rolling_mean(close, 20)
    sma60 = _rolling_mean(close, SMA_LONG)
    vol20 = _rolling_std(ret, 20) * ANNUALISE

    traded = np.isfinite(ret) & (volume > 0)
    w = np.where(traded, _shift(mcap), 0.0)
    w = np.where(np.isfinite(w), w, 0.0)
    wsum = w.sum(axis=1)
    n_traded = traded.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mret = np.where(wsum > 0, (np.where(traded, ret, 0.0) * w).sum(axis=1) / wsum, np.nan)
        breadth = np.where(n_traded > 0, (traded & (ret > 0)).sum(axis=1) / n_traded, np.nan)
    growth = np.where(np.isfinite(mret), 1.0 + mret, 1.0)
    mom = np.exp(_rolling_mean(np.where(np.isfinite(mret), np.log(growth), np.nan), WINDOW_MOMENTUM)
                 * WINDOW_MOMENTUM) - 1
    vol10 = _rolling_std(mret, WINDOW_MOMENTUM) * ANNUALISE

    w0 = 0 if start is None else int(np.searchsorted(day_values, np.datetime64(start, "D").astype(np.int64)))
    m = {"market_return": mret[w0:], "breadth": breadth[w0:], "momentum_10d": mom[w0:], "vol_10d": vol10[w0:],
         "index_level": 1000.0 * np.cumprod(growth[w0:])}
    m = {c: fixed(v, c) for c, v in m.items()}
    # Classified on the written (rounded) indicators, so the tables reproduce their own regimes exactly.
    regimes = classify_arrays(m["market_return"], m["breadth"], m["momentum_10d"], m["vol_10d"])

    src, dw, kw = table, d, k
    if w0:
        window = d >= w0
        src, dw, kw = table.filter(pa.array(window)), d[window], k[window]
    stocks = pa.table({
        "date": src["date"], "ticker": src["ticker"], "name": src["name"],
        "close": fixed(src["close"], "close"), "daily_return": fixed(ret[dw, kw], "daily_return"),
        "sma20": fixed(sma20[dw, kw], "sma20"), "sma60": fixed(sma60[dw, kw], "sma60"),
        "vol20": fixed(vol20[dw, kw], "vol20"), "volume": src["volume"], "market_cap": src["market_cap"],
        "per": fixed(src["per"].to_numpy(zero_copy_only=False), "per"),
        "pbr": fixed(src["pbr"].to_numpy(zero_copy_only=False), "pbr"),
    })
    market = pa.table({
        "date": pa.array(day_values[w0:].astype("datetime64[D]"), pa.date32()), **m,
        "n_traded": n_traded[w0:].astype(np.int64),
        "regime": pa.array([None if g is None else g.value for g in regimes], pa.string()),
    })
    return stocks, market


def regime_counts(market: pa.Table) -> dict[str, int]:
    """Days per regime in precedence order (every regime listed, zero included), plus the classified total."""
    regimes = market["regime"].to_pylist()
    counts = {g.value: sum(1 for r in regimes if r == g.value) for g in PRECEDENCE}
    counts["total"] = sum(counts.values())
    return counts


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd", store_schema=False)


class MarketSnapshotStore:
    """Per-day market table + per-stock feature table, with regime-conditioned snapshot sampling."""

    def __init__(self, market: pa.Table, stocks: pa.Table, history_days: int = 0):
        self.market = market
        self.stocks = stocks
        self.history_days = history_days   # trading days before the window that filled the rolling windows
        self._dates = market["date"].to_numpy(zero_copy_only=False).astype("datetime64[D]")
        self._regimes = np.array(market["regime"].to_pylist(), dtype=object)
        sd = mkt.day_numbers(stocks)
        if not bool((sd[1:] >= sd[:-1]).all()):
            # Date-sorted once here, so a snapshot is a zero-copy slice rather than a gather per call.
            order = np.argsort(sd, kind="stable")
            self.stocks = stocks = stocks.take(pa.array(order))
            sd = sd[order]
        days = self._dates.astype(np.int64)
        self._stock_day_bounds = np.searchsorted(sd, days), np.searchsorted(sd, days, side="right")
        # Days with at least one stock whose features are all defined (not inside an SMA-60 warm-up).
        complete = np.ones(stocks.num_rows, dtype=bool)
        for col in FEATURES:
            complete &= np.isfinite(stocks[col].to_numpy(zero_copy_only=False))
        seen = np.concatenate([[0], np.cumsum(complete)])
        self._has_features = seen[self._stock_day_bounds[1]] > seen[self._stock_day_bounds[0]]

    # construction -------------------------------------------------------------------------------------
    @classmethod
    def from_market(cls, root: str | Path, start_date: dt.date, end_date: dt.date,
                    progress: bool = False) -> "MarketSnapshotStore":
        """Load validated bars for the range plus up to HISTORY_DAYS before it (partition-pruned) and compute
        features and regimes; the tables hold [start_date, end_date]."""
        table = mkt.load_range(root, start_date - dt.timedelta(days=HISTORY_DAYS), end_date, progress=progress)
        days = mkt.day_numbers(table)  # sorted: load_range orders rows by (date, ticker)
        before = days[:np.searchsorted(days, np.datetime64(start_date, "D").astype(np.int64))]
        if len(before) == len(days):
            raise DataValidationError(f"{root}: no rows between {start_date} and {end_date} (column 'date')")
        history = int(np.count_nonzero(np.diff(before))) + 1 if len(before) else 0
        stocks, market = compute_features(table, start_date)
        return cls(market, stocks, history_days=history)

    @classmethod
    def from_dir(cls, directory: str | Path, start_date: dt.date | None = None,
                 end_date: dt.date | None = None) -> "MarketSnapshotStore":
        """Read what the snapshots stage wrote, optionally narrowed to [start_date, end_date]."""
        directory = Path(directory)
        paths = [directory / MARKET_FILE, directory / STOCKS_FILE]
        for p in paths:
            if not p.exists():
                raise PipelineError(f"{p}: snapshot table not found (run `dvc repro snapshots`)")
        market, stocks = (pq.read_table(p) for p in paths)
        if start_date or end_date:
            lo = np.datetime64(start_date or dt.date.min, "D")
            hi = np.datetime64(end_date or dt.date.max, "D")
            md = market["date"].to_numpy(zero_copy_only=False).astype("datetime64[D]")
            sd = stocks["date"].to_numpy(zero_copy_only=False).astype("datetime64[D]")
            market = market.filter(pa.array((md >= lo) & (md <= hi)))
            stocks = stocks.filter(pa.array((sd >= lo) & (sd <= hi)))
            if market.num_rows == 0:
                raise DataValidationError(f"{paths[0]}: no days between {start_date} and {end_date} (column 'date')")
        return cls(market, stocks)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write(self.market, directory / MARKET_FILE)
        _write(self.stocks, directory / STOCKS_FILE)

    # queries ------------------------------------------------------------------------------------------
    @property
    def dates(self) -> list[dt.date]:
        return [d.item() for d in self._dates]

    def regime_days(self, regime: Regime) -> list[dt.date]:
        return [d.item() for d in self._dates[self._regimes == Regime(regime).value]]

    def regime_counts(self) -> dict[str, int]:
        return regime_counts(self.market)

    def snapshot(self, date: dt.date) -> Snapshot:
        i = int(np.searchsorted(self._dates, np.datetime64(date, "D")))
        if i >= len(self._dates) or self._dates[i] != np.datetime64(date, "D"):
            raise KeyError(f"{date} is not a trading day in the store")
        if self._regimes[i] is None:
            raise KeyError(f"{date} has no regime (inside the {WINDOW_MOMENTUM}-day warm-up)")
        return self._build(i)

    def sample_snapshot(self, regime: Regime, rng: np.random.Generator) -> Snapshot:
        """A real snapshot from a uniformly drawn day of `regime` that has stocks with every feature defined."""
        # Without history before the window, its first 59 days are an SMA-60 warm-up: no stock has every feature.
        days = np.flatnonzero((self._regimes == Regime(regime).value) & self._has_features)
        if len(days) == 0:
            raise PipelineError(f"no {Regime(regime).value} day in the loaded range: widen snapshots.start_date/end_date")
        return self._build(int(days[rng.integers(len(days))]))

    def _build(self, i: int) -> Snapshot:
        m = {k: self.market[k][i].as_py() for k in ("market_return", "breadth", "momentum_10d", "vol_10d", "index_level")}
        lo, hi = self._stock_day_bounds[0][i], self._stock_day_bounds[1][i]
        rows = self.stocks.slice(lo, hi - lo).to_pylist()
        stocks = []
        for r in rows:
            per, pbr = r["per"], r["pbr"]
            if r["ticker"] not in TICKERS or per is None or pbr is None:
                continue
            if not (PER_RANGE[0] < per < PER_RANGE[1] and PBR_RANGE[0] < pbr < PBR_RANGE[1]):
                continue
            # Early in a range (or right after an IPO) the 60-day window is not full yet: leave the stock out
            # rather than hand the generator NaN features.
            if any(r[k] is None or not np.isfinite(r[k]) for k in ("daily_return", "sma20", "sma60", "vol20")):
                continue
            stocks.append(StockSnapshot(
                ticker=r["ticker"], name=r["name"], sector=by_code(r["ticker"]).sector, close=r["close"],
                daily_return=r["daily_return"], sma20=r["sma20"], sma60=r["sma60"], vol20=r["vol20"],
                market_cap=r["market_cap"], per=per, pbr=pbr))
        return Snapshot(date=self._dates[i].item(), regime=Regime(self._regimes[i]), stocks=tuple(stocks), **m)


class SnapshotParams(Section):
    """params.yaml `snapshots`: the day range the store loads and classifies."""

    start_date: dt.date
    end_date: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> "SnapshotParams":
        if self.start_date > self.end_date:
            raise ValueError(f"snapshots.start_date ({self.start_date}) is after snapshots.end_date ({self.end_date})")
        return self
