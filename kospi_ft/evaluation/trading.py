"""Does the model read the market right? Regime accuracy, market timing and stock selection against realised prices.

Pure functions on plain inputs (pyarrow tables, numpy arrays, dicts); no stage I/O. `trading_block` is the entry
point for the metrics file, `trading_dates` and `equity_curve` give plot/table rows, `regime_confusion` the rows for
DVC's confusion template.

Conventions (each chosen once, used everywhere):
- Trading days are the dates of the market table; t+h is h rows later in it. A forward return needs a close at t
  and at t+h; a date without a t+h row is dropped and counted (`dropped_dates`).
- Only samples drawn from real snapshots (`source == "real"`) enter timing and selection: synthetic scenarios have
  no realised future. They still count for regime accuracy; `excluded` counts them.
- Several samples on one date form one date: exposures are averaged, scores averaged per ticker.
- A reply whose `exposure` is missing or not a number in [0, 1] holds cash (exposure 0): the system could not act,
  and every model keeps the same date set, so the timing blocks stay comparable.
- Output: floats rounded to 6 digits, None (JSON null) instead of NaN, every regime listed (n = 0 included).
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..data.regime import PRECEDENCE, Regime
from .metrics import json_number
from .parsing import extract_json

DECIMALS = 6
INVALID = "INVALID"
REAL = "real"
MOMENTUM_DAYS = 20
BOOTSTRAP_RESAMPLES = 1000
TRADING_DAYS_PER_YEAR = 252
#: The reply field that holds the *date's* regime. A what_if answer's `regime` is the hypothetical post-shock one;
#: the date's own regime is its `base_regime`.
REGIME_FIELD = {"what_if": "base_regime"}
REGIMES = tuple(g.value for g in PRECEDENCE)
BASELINES = ("buy_and_hold", "rule", "momentum", "random")


@dataclass(frozen=True)
class TradingSample:
    """One eval sample: the date's truth, and the model's and the reference's parsed answers (None: no JSON object)."""

    date: dt.date
    true_regime: str
    source: str                      # "real" (drawn from a snapshot) or "synthetic"
    reply: Mapping[str, Any] | None
    reference: Mapping[str, Any] | None
    task: str = ""


def sample_from_record(row: Mapping[str, Any], reply: str | Mapping[str, Any] | None) -> TradingSample:
    """A TradingSample from an eval JSONL row ({messages, task, meta}) and the model's reply (raw text or parsed)."""
    return _sample(row.get("meta") or {}, str(row.get("task", "")), reply, row["messages"][-1]["content"])


def eval_samples(records: Sequence[Any], replies: Sequence[str]) -> list[TradingSample]:
    """The TradingSamples of evaluated records (runner.EvalRecord: task, reference, meta) and their replies; a
    record without a date and a regime in its meta (an eval file of another origin) is left out."""
    return [_sample(r.meta, r.task, reply, r.reference) for r, reply in zip(records, replies)
            if r.meta.get("date") and r.meta.get("regime")]


def _sample(meta: Mapping[str, Any], task: str, reply: str | Mapping[str, Any] | None,
            reference: str) -> TradingSample:
    parsed = extract_json(reply).data if isinstance(reply, str) else reply
    return TradingSample(
        date=dt.date.fromisoformat(str(meta["date"])), true_regime=str(meta["regime"]),
        source=str(meta.get("source", "")), reply=parsed if isinstance(parsed, Mapping) else None,
        reference=extract_json(reference).data, task=task)


# ---- small helpers ---------------------------------------------------------------------------------------------

def _num(x: Any, decimals: int = DECIMALS) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, decimals) + 0.0 if math.isfinite(x) else None   # + 0.0: no "-0.0" in the JSON


def _means(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{key: mean of its values} over (key, value) pairs."""
    acc: dict[str, list[float]] = {}
    for key, value in pairs:
        acc.setdefault(key, []).append(value)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def exposure_of(answer: Mapping[str, Any] | None) -> float:
    """The answer's equity exposure; 0 (cash) when it is missing or outside [0, 1]."""
    e = json_number(answer.get("exposure")) if isinstance(answer, Mapping) else None
    return e if e is not None and 0.0 <= e <= 1.0 else 0.0


def position_scores(answer: Mapping[str, Any] | None) -> dict[str, float]:
    """{ticker: score} from the answer's positions (a repeated ticker: mean score); malformed entries skipped.

    `score` (signed conviction in [-1, 1]) rather than `weight`: the strategy rules tie its sign to the action
    (BUY > 0, SELL/REDUCE < 0), so it ranks and has a direction, whereas `weight` is >= 0, is 0 for every SELL and
    often sits at the max_position_weight cap, which makes ties and hides the view.
    """
    positions = answer.get("positions") if isinstance(answer, Mapping) else None
    valid = [p for p in (positions if isinstance(positions, list) else [])
             if isinstance(p, Mapping) and isinstance(p.get("ticker"), str) and json_number(p.get("score")) is not None]
    return _means((p["ticker"], json_number(p["score"])) for p in valid)


def predicted_regime(sample: TradingSample) -> str:
    value = sample.reply.get(REGIME_FIELD.get(sample.task, "regime")) if isinstance(sample.reply, Mapping) else None
    return value if isinstance(value, str) and value in REGIMES else INVALID


# ---- prices ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prices:
    """Closes and market caps on a (trading day x ticker) grid; NaN where a stock has no row that day."""

    dates: np.ndarray        # datetime64[D], sorted: the market table's trading days
    tickers: np.ndarray      # str, sorted
    close: np.ndarray
    market_cap: np.ndarray

    @classmethod
    def from_tables(cls, market: pa.Table, stocks: pa.Table) -> "Prices":
        """From a snapshot store's `market` (date) and `stocks` (date, ticker, close, market_cap) tables.
        Stock rows on a date outside the market table are ignored."""
        dates = np.unique(market["date"].to_numpy(zero_copy_only=False).astype("datetime64[D]"))
        sd = stocks["date"].to_numpy(zero_copy_only=False).astype("datetime64[D]")
        tickers, k = np.unique(np.asarray(stocks["ticker"].to_pylist(), dtype=str), return_inverse=True)
        d = np.searchsorted(dates, sd)
        keep = np.isin(sd, dates)
        close = np.full((len(dates), len(tickers)), np.nan)
        mcap = np.full(close.shape, np.nan)
        close[d[keep], k[keep]] = stocks["close"].to_numpy(zero_copy_only=False).astype(float)[keep]
        mcap[d[keep], k[keep]] = stocks["market_cap"].to_numpy(zero_copy_only=False).astype(float)[keep]
        return cls(dates, tickers, close, mcap)

    @classmethod
    def from_store(cls, store) -> "Prices":
        return cls.from_tables(store.market, store.stocks)

    def day(self, date: dt.date) -> int | None:
        i = int(np.searchsorted(self.dates, np.datetime64(date, "D")))
        return i if i < len(self.dates) and self.dates[i] == np.datetime64(date, "D") else None

    def _ratio(self, i: int | None, j: int | None) -> np.ndarray:
        """close[j] / close[i] - 1 per ticker, NaN where either close is missing (or not positive at i)."""
        if i is None or j is None or not (0 <= i < len(self.dates) and 0 <= j < len(self.dates)):
            return np.full(len(self.tickers), np.nan)
        base = np.where(self.close[i] > 0, self.close[i], np.nan)
        return self.close[j] / base - 1.0

    def stock_returns(self, date: dt.date, horizon_days: int) -> dict[str, float]:
        """{ticker: close(t+h)/close(t) - 1} for the stocks with both closes; empty when t+h is past the data."""
        i = self.day(date)
        r = self._ratio(i, None if i is None else i + horizon_days)
        ok = np.isfinite(r)
        return dict(zip(self.tickers[ok].tolist(), r[ok].tolist()))

    def momentum(self, date: dt.date, lookback: int = MOMENTUM_DAYS) -> dict[str, float]:
        """{ticker: close(t)/close(t-lookback) - 1}; empty when t-lookback is before the data."""
        i = self.day(date)
        r = self._ratio(None if i is None else i - lookback, i)
        ok = np.isfinite(r)
        return dict(zip(self.tickers[ok].tolist(), r[ok].tolist()))

    def market_forward_return(self, date: dt.date, horizon_days: int) -> float | None:
        """Cap-weighted universe return from t's close to t+h's: Σ wᵢ rᵢ, wᵢ ∝ market cap at t over the stocks
        that have a close at t+h (weights renormalised). None when t or t+h is not in the data."""
        i = self.day(date)
        r = self._ratio(i, None if i is None else i + horizon_days)
        if i is None:
            return None
        w = self.market_cap[i]
        ok = np.isfinite(r) & np.isfinite(w) & (w > 0)
        return float(np.dot(w[ok], r[ok]) / w[ok].sum()) if ok.any() else None


# ---- 1. regime accuracy ------------------------------------------------------------------------------------------

def regime_confusion(samples: Iterable[TradingSample]) -> list[dict[str, str]]:
    """One {actual, predicted} row per sample (DVC's confusion template); no usable regime -> INVALID."""
    return [{"actual": s.true_regime, "predicted": predicted_regime(s)} for s in samples]


def regime_accuracy(samples: Iterable[TradingSample], seed: int = 0) -> dict[str, Any]:
    """Share of samples whose reply names the store's regime, with a bootstrap 95% interval over the samples."""
    rows = regime_confusion(samples)
    hits = [r["actual"] == r["predicted"] for r in rows]
    per = {}
    for g in REGIMES:
        h = [hit for hit, r in zip(hits, rows) if r["actual"] == g]
        per[g] = {"accuracy": _num(np.mean(h)) if h else None, "n": len(h)}
    return {"accuracy": _num(np.mean(hits)) if hits else None, "ci95": bootstrap_ci(hits, seed), "per_regime": per,
            "n": len(rows)}


# ---- 3. timing ---------------------------------------------------------------------------------------------------

def _equity(returns: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 + np.asarray(returns, dtype=float))


def max_drawdown(returns: Sequence[float]) -> float | None:
    """Worst fall of the compounded equity curve from its running peak, as a non-positive fraction (-0.12 = -12%).
    The curve starts at 1.0 before the first date, so a first-date loss is a drawdown too."""
    if len(returns) == 0:
        return None
    eq = _equity(returns)
    peak = np.maximum.accumulate(np.concatenate([[1.0], eq]))[1:]
    return float(np.min(eq / peak - 1.0))


def timing_stats(exposures: Sequence[float], market_returns: Sequence[float], regimes: Sequence[str],
                 horizon_days: int) -> dict[str, Any]:
    """Per-date strategy return = exposure x market forward return (inputs aligned, sorted by date).

    sharpe = mean / std(ddof=1) x sqrt(252 / h): each date's return is one h-day holding period, and the periods
    are treated as non-overlapping (eval dates are sampled, not consecutive), so a year holds 252/h of them.
    hit_rate = share of dates with return > 0 (a zero return, e.g. exposure 0, is not a hit).
    """
    e = np.asarray(exposures, dtype=float)
    r = e * np.asarray(market_returns, dtype=float)
    g = np.asarray(regimes, dtype=object)
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    per = {}
    for name in REGIMES:
        m = g == name
        per[name] = {"mean_exposure": _num(e[m].mean()) if m.any() else None,
                     "mean_return": _num(r[m].mean()) if m.any() else None, "n": int(m.sum())}
    return {
        "mean_return": _num(r.mean()) if len(r) else None,
        "sharpe": _num(r.mean() / sd * math.sqrt(TRADING_DAYS_PER_YEAR / horizon_days)) if sd > 0 else None,
        "hit_rate": _num(np.mean(r > 0)) if len(r) else None,
        "max_drawdown": _num(max_drawdown(r)),
        "n_dates": len(r),
        "per_regime": per,
    }


# ---- 4. selection ------------------------------------------------------------------------------------------------

def rank(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.concatenate([[True], xs[1:] != xs[:-1]])
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [len(x)]])
    out = np.empty(len(x))
    out[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new) - 1]
    return out


def rank_ic(scores: Sequence[float], returns: Sequence[float]) -> float | None:
    """Spearman correlation (Pearson on tie-averaged ranks). None for < 2 stocks; 0 when either side is constant
    (all scores equal: the ranking carries no information)."""
    if len(scores) < 2:
        return None
    a, b = rank(scores), rank(returns)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def long_short(scores: np.ndarray, returns: np.ndarray) -> float:
    """Mean return of the top-scored third minus the bottom-scored third (k = max(1, n // 3) stocks each; stocks
    tied with the k-th score join the group, so the result does not depend on input order)."""
    k = max(1, len(scores) // 3)
    s = np.sort(scores)
    return float(returns[scores >= s[-k]].mean() - returns[scores <= s[k - 1]].mean())


def bootstrap_ci(values: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float | None]:
    """95% percentile-bootstrap CI of the mean, resampling the values (dates) with replacement."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return [None, None]
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [_num(lo), _num(hi)]


def selection_stats(per_date: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], seed: int) -> dict[str, Any]:
    """Scores vs forward returns, one ({ticker: score}, {ticker: return}) pair per date.

    A date counts when >= 2 scored stocks have a return (else skipped); every statistic uses those dates.
    hit_rate: share of (date, stock) pairs where sign(score) == sign(return), pairs with a zero score (no call) or a
    zero return (no move) left out. long_short_spread: `long_short` averaged over dates.
    """
    ics, spreads, hits = [], [], []
    for scores, returns in per_date:
        common = sorted(t for t in scores if t in returns)
        if len(common) < 2:
            continue
        s = np.array([scores[t] for t in common])
        r = np.array([returns[t] for t in common])
        ics.append(rank_ic(s, r))
        spreads.append(long_short(s, r))
        called = (s != 0) & (r != 0)
        hits.extend((np.sign(s[called]) == np.sign(r[called])).tolist())
    return {
        "rank_ic_mean": _num(np.mean(ics)) if ics else None,
        "rank_ic_ci95": bootstrap_ci(ics, seed),
        "hit_rate": _num(np.mean(hits)) if hits else None,
        "long_short_spread": _num(np.mean(spreads)) if spreads else None,
        "n_dates": len(ics),
    }


# ---- 5./6. per-date assembly and the entry points ---------------------------------------------------------------

@dataclass(frozen=True)
class _Dates:
    """The real samples grouped by date (sorted), with what every block needs per date."""

    dates: list[dt.date]
    regimes: list[str]
    market: list[float | None]          # market forward return; None: t+h past the data
    model_exposure: list[float]
    rule_exposure: list[float]
    model_scores: list[dict[str, float]]
    rule_scores: list[dict[str, float]]
    returns: list[dict[str, float]]     # per-stock forward returns


def _mean_scores(answers: list[Mapping[str, Any] | None]) -> dict[str, float]:
    """Per ticker, the mean of the answers' position scores (several samples on one date)."""
    return _means(item for a in answers for item in position_scores(a).items())


def _group(samples: Sequence[TradingSample], prices: Prices, horizon_days: int) -> _Dates:
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be >= 1, got {horizon_days}")
    by_date: dict[dt.date, list[TradingSample]] = {}
    for s in samples:
        if s.source == REAL:
            by_date.setdefault(s.date, []).append(s)
    dates = sorted(by_date)
    groups = [by_date[d] for d in dates]
    return _Dates(
        dates=dates, regimes=[g[0].true_regime for g in groups],
        market=[prices.market_forward_return(d, horizon_days) for d in dates],
        model_exposure=[float(np.mean([exposure_of(s.reply) for s in g])) for g in groups],
        rule_exposure=[float(np.mean([exposure_of(s.reference) for s in g])) for g in groups],
        model_scores=[_mean_scores([s.reply for s in g]) for g in groups],
        rule_scores=[_mean_scores([s.reference for s in g]) for g in groups],
        returns=[prices.stock_returns(d, horizon_days) for d in dates])


def _strategies(g: _Dates, prices: Prices, seed: int) -> tuple[list[int], dict[str, list[float]],
                                                               dict[str, list[dict[str, float]]]]:
    """Indices of the dates with a market forward return, each strategy's exposures on them, and each strategy's
    scores on every date.

    Momentum and random score the reference's tickers: the same (date, stock) set as the rule, whatever the model,
    so the baselines are identical across models. Random draws from its own stream (seed, 1): it never shares
    numbers with the bootstrap (seeded with `seed`)."""
    keep = [i for i, m in enumerate(g.market) if m is not None]
    rng = np.random.default_rng([seed, 1])
    random_exposure = rng.uniform(0.0, 1.0, size=len(g.dates))
    random_scores = [dict(zip(sorted(s), rng.uniform(-1.0, 1.0, size=len(s)).tolist())) for s in g.rule_scores]
    momentum = []
    for d, rule in zip(g.dates, g.rule_scores):
        mom = prices.momentum(d)
        momentum.append({t: mom[t] for t in rule if t in mom})
    exposures = {"model": [g.model_exposure[i] for i in keep], "buy_and_hold": [1.0] * len(keep),
                 "rule": [g.rule_exposure[i] for i in keep], "random": [float(random_exposure[i]) for i in keep]}
    scores = {"model": g.model_scores, "rule": g.rule_scores, "momentum": momentum, "random": random_scores}
    return keep, exposures, scores


def trading_block(samples: Sequence[TradingSample], prices: Prices, horizon_days: int, seed: int = 0) -> dict[str, Any]:
    """The trading metrics: regime accuracy (all samples), timing and selection (real samples) and the baselines.

    A baseline without a timing (momentum) or selection (buy_and_hold) view gets the block with n_dates 0 and nulls,
    so every strategy has the same keys."""
    g = _group(samples, prices, horizon_days)
    keep, exposures, scores = _strategies(g, prices, seed)
    market = [g.market[i] for i in keep]
    regimes = [g.regimes[i] for i in keep]

    def block(name: str) -> dict[str, Any]:
        e = exposures.get(name)
        timing = timing_stats(e, market, regimes, horizon_days) if e is not None else timing_stats([], [], [], 1)
        return {"timing": timing, "selection": selection_stats(list(zip(scores.get(name, []), g.returns)), seed)}

    model = block("model")
    return {
        "horizon_days": horizon_days,
        "excluded": sum(s.source != REAL for s in samples),
        "dropped_dates": len(g.dates) - len(keep),
        "regime": regime_accuracy(samples, seed),
        "timing": model["timing"],
        "selection": model["selection"],
        "baselines": {name: block(name) for name in BASELINES},
    }


DATES_COLUMNS = ("date", "horizon_days", "true_regime", "market_forward_return")


def trading_dates_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """trading_dates.csv's text from `trading_dates` rows: a header, then one line per date (empty for null)."""
    return "".join(",".join("" if row[c] is None else str(row[c]) for c in DATES_COLUMNS) + "\n"
                   for row in [dict(zip(DATES_COLUMNS, DATES_COLUMNS)), *rows])


def trading_dates(samples: Sequence[TradingSample], prices: Prices, horizon_days: int) -> list[dict[str, Any]]:
    """Rows for trading_dates.csv, one per real sample date; market_forward_return None where t+h is past the data."""
    g = _group(samples, prices, horizon_days)
    return [{"date": d.isoformat(), "horizon_days": horizon_days, "true_regime": r, "market_forward_return": _num(m)}
            for d, r, m in zip(g.dates, g.regimes, g.market)]


def equity_curve(samples: Sequence[TradingSample], prices: Prices, horizon_days: int,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Compounded equity per kept date: `equity` for the model, plus the buy_and_hold, rule and random baselines."""
    g = _group(samples, prices, horizon_days)
    keep, exposures, _ = _strategies(g, prices, seed)
    market = np.array([g.market[i] for i in keep], dtype=float)
    curves = {("equity" if k == "model" else k): _equity(np.asarray(e) * market) for k, e in exposures.items()}
    return [{"date": g.dates[i].isoformat(), **{k: _num(c[j]) for k, c in curves.items()}}
            for j, i in enumerate(keep)]
