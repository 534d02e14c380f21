"""Trading evaluation (kospi_ft.evaluation.trading) on a hand-computed three-stock, five-day market.

The market (h = 2 trading days, trading days = the market table's dates D0..D4):

          D0    D1    D2    D3    D4      market cap at D0..D2 / at D3..D4
    A    100   100   110   120    99      500 / 100
    B    100    50    90    45    45      300 / 100
    C     10    20  10.5    25  12.6      200 / 800

Forward 2-day returns close(t+2)/close(t) - 1:
    D0 -> D2:  A 110/100-1 = +0.10   B 90/100-1 = -0.10   C 10.5/10-1 = +0.05
    D1 -> D3:  A 120/100-1 = +0.20   B 45/50-1  = -0.10   C 25/20-1   = +0.25
    D2 -> D4:  A 99/110-1  = -0.10   B 45/90-1  = -0.50   C 12.6/10.5-1 = +0.20
Cap weights at t (D0..D2) are 0.5/0.3/0.2; the D3/D4 caps are deliberately different, so using the caps of t+h
instead of t gives other numbers. Market forward returns:
    D0: .5(.10) + .3(-.10) + .2(.05) = .05 - .03 + .01 = +0.03
    D1: .5(.20) + .3(-.10) + .2(.25) = .10 - .03 + .05 = +0.12
    D2: .5(-.10) + .3(-.50) + .2(.20) = -.05 - .15 + .04 = -0.16
D3 and D4 have no t+2 in the data. A row of A on Saturday 2024-01-06 (close 1e6) is not a trading day and must be
ignored: counting it would shift every t+2.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import math

import numpy as np
import pyarrow as pa
import pytest

from kospi_ft.evaluation.trading import (INVALID, Prices, TradingSample, equity_curve, exposure_of, long_short,
                                         max_drawdown, position_scores, rank, rank_ic, regime_accuracy,
                                         regime_confusion, sample_from_record, selection_stats, timing_stats,
                                         trading_block, trading_dates)

H = 2
D = [dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4), dt.date(2024, 1, 5), dt.date(2024, 1, 8)]
CLOSE = {"A": [100, 100, 110, 120, 99], "B": [100, 50, 90, 45, 45], "C": [10, 20, 10.5, 25, 12.6]}
CAP = {"A": [500, 500, 500, 100, 100], "B": [300, 300, 300, 100, 100], "C": [200, 200, 200, 800, 800]}
FWD = {0: {"A": 0.10, "B": -0.10, "C": 0.05}, 1: {"A": 0.20, "B": -0.10, "C": 0.25},
       2: {"A": -0.10, "B": -0.50, "C": 0.20}}
MARKET_FWD = {0: 0.03, 1: 0.12, 2: -0.16}
REGIME = ["MILD_BULL", "STRONG_BULL", "BEAR", "WEAKENING", "WEAKENING"]


def tables(drop: tuple[str, int] | None = None) -> tuple[pa.Table, pa.Table]:
    """(market, stocks) for the market above; `drop` = (ticker, day) leaves that stock's row out."""
    rows = [(D[i], t, float(CLOSE[t][i]), CAP[t][i]) for i in range(5) for t in "ABC" if (t, i) != drop]
    rows.append((dt.date(2024, 1, 6), "A", 1e6, 500))
    stocks = pa.table({"date": pa.array([r[0] for r in rows], pa.date32()), "ticker": [r[1] for r in rows],
                       "close": [r[2] for r in rows], "market_cap": pa.array([r[3] for r in rows], pa.int64())})
    market = pa.table({"date": pa.array(D, pa.date32()), "regime": REGIME})
    return market, stocks


@pytest.fixture
def prices() -> Prices:
    return Prices.from_tables(*tables())


def answer(regime: str, exposure, scores: dict[str, float] | None = None, **extra) -> dict:
    out = {"regime": regime, "exposure": exposure, **extra}
    if scores is not None:
        out["positions"] = [{"ticker": t, "name": t, "action": "BUY" if s > 0 else "SELL", "weight": 0.1, "score": s}
                            for t, s in scores.items()]
    return out


def real(i: int, reply, reference, task: str = "full_analysis") -> TradingSample:
    return TradingSample(date=D[i], true_regime=REGIME[i], source="real", reply=reply, reference=reference, task=task)


def model_samples() -> list[TradingSample]:
    """Real samples on D0..D3 and one synthetic one.

    model: exposures 1.0 / 0.5 / 0.25 on D0..D2; regimes right, wrong (MILD_BULL on a STRONG_BULL day), right;
           on D3 no JSON at all. Scores D0 {A .9, B -.5, C .1}, D1 {A .5, B .2, C -.3}, D2 only A (one stock).
    rule (reference): exposures 0 / 1 / 0.5; scores D0 {A .3, B .3, C -.2} (a tie), D1 {A .6, B -.4, C .2},
           D2 {A -.1, B -.6, C .5}.
    """
    return [
        real(0, answer("MILD_BULL", 1.0, {"A": 0.9, "B": -0.5, "C": 0.1}),
             answer("MILD_BULL", 0.0, {"A": 0.3, "B": 0.3, "C": -0.2})),
        real(1, answer("MILD_BULL", 0.5, {"A": 0.5, "B": 0.2, "C": -0.3}),
             answer("STRONG_BULL", 1.0, {"A": 0.6, "B": -0.4, "C": 0.2})),
        real(2, answer("BEAR", 0.25, {"A": 0.4}), answer("BEAR", 0.5, {"A": -0.1, "B": -0.6, "C": 0.5})),
        real(3, None, answer("WEAKENING", 0.4, {"A": 0.5, "B": -0.5})),
        TradingSample(date=dt.date(2021, 3, 3), true_regime="WEAKENING", source="synthetic",
                      reply=answer("WEAKENING", 0.9, {"A": 0.9, "B": 0.1}), reference=answer("WEAKENING", 0.5),
                      task="full_analysis"),
    ]


# ---- market forward return ---------------------------------------------------------------------------------------

def test_market_forward_return_by_hand(prices):
    for i, expected in MARKET_FWD.items():
        assert prices.market_forward_return(D[i], H) == pytest.approx(expected, abs=1e-12)
        assert prices.stock_returns(D[i], H) == pytest.approx(FWD[i], abs=1e-12)
    # t+2 is past the data for D3 and D4; the weekend row of A and an unknown date are no trading days.
    assert prices.market_forward_return(D[3], H) is None
    assert prices.market_forward_return(D[4], H) is None
    assert prices.stock_returns(D[3], H) == {}
    assert prices.market_forward_return(dt.date(2024, 1, 6), H) is None
    # h = 1 from D1: A 110/100-1 = .1, B 90/50-1 = .8, C 10.5/20-1 = -.475 -> .05 + .24 - .095 = .195
    assert prices.market_forward_return(D[1], 1) == pytest.approx(0.195, abs=1e-12)


def test_stock_without_close_at_t_plus_h_is_dropped_and_weights_renormalised():
    """C has no row on D4. D2 -> D4 keeps A and B with weights 500/800 and 300/800:
    (.5(-.10) + .3(-.50)) / .8 = (-.05 - .15) / .8 = -0.25 (with C it was -0.16)."""
    prices = Prices.from_tables(*tables(drop=("C", 4)))
    assert prices.market_forward_return(D[2], H) == pytest.approx(-0.25, abs=1e-12)
    assert prices.stock_returns(D[2], H) == pytest.approx({"A": -0.10, "B": -0.50}, abs=1e-12)
    assert prices.market_forward_return(D[0], H) == pytest.approx(0.03, abs=1e-12)   # D2 still has all three


def test_momentum_uses_trading_days():
    """Lookback 2 from D2: A 110/100-1 = .10, B 90/100-1 = -.10, C 10.5/10-1 = .05; from D1 there is no D-1."""
    prices = Prices.from_tables(*tables())
    assert prices.momentum(D[2], lookback=2) == pytest.approx({"A": 0.10, "B": -0.10, "C": 0.05}, abs=1e-12)
    assert prices.momentum(D[1], lookback=2) == {}
    assert prices.momentum(D[4]) == {}   # the default 20 days: far before the data


# ---- regime accuracy ---------------------------------------------------------------------------------------------

def test_regime_accuracy_by_hand():
    """Five samples: D0 right, D1 wrong (MILD_BULL for STRONG_BULL), D2 right, D3 no reply (INVALID, wrong), the
    synthetic one right -> 3/5 = 0.6. Per true regime: MILD_BULL 1/1, STRONG_BULL 0/1, BEAR 1/1, WEAKENING 1/2."""
    samples = model_samples()
    acc = regime_accuracy(samples)
    assert acc["accuracy"] == 0.6 and acc["n"] == 5
    assert acc["per_regime"] == {"BEAR": {"accuracy": 1.0, "n": 1},
                                 "SHORT_TERM_STRESS": {"accuracy": None, "n": 0},
                                 "STRONG_BULL": {"accuracy": 0.0, "n": 1},
                                 "WEAKENING": {"accuracy": 0.5, "n": 2},
                                 "MILD_BULL": {"accuracy": 1.0, "n": 1}}
    assert regime_confusion(samples) == [
        {"actual": "MILD_BULL", "predicted": "MILD_BULL"}, {"actual": "STRONG_BULL", "predicted": "MILD_BULL"},
        {"actual": "BEAR", "predicted": "BEAR"}, {"actual": "WEAKENING", "predicted": INVALID},
        {"actual": "WEAKENING", "predicted": "WEAKENING"}]


def test_unknown_or_missing_regime_is_invalid():
    bad = [real(0, {"regime": "SIDEWAYS", "exposure": 0.5}, None), real(0, {"exposure": 0.5}, None),
           real(0, {"regime": 3}, None)]
    assert [r["predicted"] for r in regime_confusion(bad)] == [INVALID] * 3
    assert regime_accuracy(bad)["accuracy"] == 0.0


def test_model_answering_the_rule_truth_gets_regime_accuracy_one():
    """Reply = reference on every sample. The what_if reference's `regime` is the hypothetical post-shock regime
    (WEAKENING) and its `base_regime` the date's (STRONG_BULL): it is scored on base_regime, so it counts as right."""
    refs = [(i, answer(REGIME[i], 0.5)) for i in range(5)]
    what_if = answer("WEAKENING", 0.47, base_regime="STRONG_BULL", shock="US_MARKET_CRASH")
    samples = [real(i, copy.deepcopy(a), a) for i, a in refs]
    samples.append(TradingSample(date=dt.date(2020, 6, 29), true_regime="STRONG_BULL", source="synthetic",
                                 reply=copy.deepcopy(what_if), reference=what_if, task="what_if"))
    acc = regime_accuracy(samples)
    assert acc["accuracy"] == 1.0 and acc["n"] == 6
    assert all(v["accuracy"] in (1.0, None) for v in acc["per_regime"].values())
    # Reading `regime` of the what_if reply would have been wrong: the field choice matters.
    plain = TradingSample(date=dt.date(2020, 6, 29), true_regime="STRONG_BULL", source="synthetic",
                          reply=what_if, reference=what_if, task="full_analysis")
    assert regime_accuracy([plain])["accuracy"] == 0.0


# ---- timing ------------------------------------------------------------------------------------------------------

def test_timing_by_hand(prices):
    """Model exposures 1, .5, .25 x market .03, .12, -.16 -> returns .03, .06, -.04 (D3 dropped: no t+2).

    mean = .05/3 = 0.016667. In units of 1/300 the returns are 9, 18, -12, mean 5, deviations 4, 13, -17, squares
    16 + 169 + 289 = 474, so std(ddof=1) = sqrt(474/2)/300 = sqrt(237)/300 and the per-period Sharpe is
    5/sqrt(237); annualised with sqrt(252/2): 5 sqrt(126/237) = 3.645701.
    hit_rate 2/3. Equity 1.03, 1.03 x 1.06 = 1.0918, 1.0918 x .96 = 1.048128; drawdown 1.048128/1.0918 - 1 = -0.04.
    """
    block = trading_block(model_samples(), prices, H, seed=7)
    t = block["timing"]
    assert t["mean_return"] == pytest.approx(0.016667, abs=1e-6)
    assert t["sharpe"] == pytest.approx(5 * math.sqrt(126 / 237), abs=1e-6)
    assert t["sharpe"] == pytest.approx(3.645701, abs=1e-6)
    assert t["hit_rate"] == pytest.approx(0.666667, abs=1e-6)
    assert t["max_drawdown"] == pytest.approx(-0.04, abs=1e-6)
    assert t["n_dates"] == 3
    assert t["per_regime"]["STRONG_BULL"] == {"mean_exposure": 0.5, "mean_return": 0.06, "n": 1}
    assert t["per_regime"]["BEAR"] == {"mean_exposure": 0.25, "mean_return": -0.04, "n": 1}
    assert t["per_regime"]["WEAKENING"] == {"mean_exposure": None, "mean_return": None, "n": 0}  # D3 was dropped
    assert equity_curve(model_samples(), prices, H)[-1]["equity"] == pytest.approx(1.048128, abs=1e-6)


def test_timing_baselines_by_hand(prices):
    """buy_and_hold: returns .03, .12, -.16: mean -.01/3 = -0.003333; in 1/300 units 9, 36, -48, mean -1,
    deviations 10, 37, -47, squares 100 + 1369 + 2209 = 3678 -> Sharpe -1/sqrt(1839) x sqrt(126) = -0.261755;
    equity 1.03, 1.1536, .969024 -> drawdown .969024/1.1536 - 1 = -0.16; hit 2/3.
    rule: exposures 0, 1, .5 -> returns 0, .12, -.08: the zero return is no hit -> hit 1/3; mean .04/3 = 0.013333;
    in 1/300 units 0, 36, -24, mean 4, deviations -4, 32, -28, squares 16 + 1024 + 784 = 1824 ->
    Sharpe 4/sqrt(912) x sqrt(126) = 1.486784; equity 1, 1.12, 1.0304 -> drawdown 1.0304/1.12 - 1 = -0.08.
    momentum has no timing view: nulls, n_dates 0."""
    base = trading_block(model_samples(), prices, H, seed=7)["baselines"]
    bh, rule = base["buy_and_hold"]["timing"], base["rule"]["timing"]
    assert bh["mean_return"] == pytest.approx(-0.003333, abs=1e-6)
    assert bh["sharpe"] == pytest.approx(-0.261755, abs=1e-6)
    assert bh["max_drawdown"] == pytest.approx(-0.16, abs=1e-6)
    assert bh["hit_rate"] == pytest.approx(0.666667, abs=1e-6)
    assert bh["per_regime"]["MILD_BULL"]["mean_exposure"] == 1.0
    assert rule["hit_rate"] == pytest.approx(0.333333, abs=1e-6)
    assert rule["mean_return"] == pytest.approx(0.013333, abs=1e-6)
    assert rule["sharpe"] == pytest.approx(1.486784, abs=1e-6)
    assert rule["max_drawdown"] == pytest.approx(-0.08, abs=1e-6)
    assert base["momentum"]["timing"]["n_dates"] == 0 and base["momentum"]["timing"]["sharpe"] is None
    assert base["buy_and_hold"]["selection"]["n_dates"] == 0
    assert base["buy_and_hold"]["selection"]["rank_ic_ci95"] == [None, None]
    rows = equity_curve(model_samples(), prices, H)
    assert [r["date"] for r in rows] == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert [r["buy_and_hold"] for r in rows] == pytest.approx([1.03, 1.1536, 0.969024], abs=1e-6)
    assert [r["rule"] for r in rows] == pytest.approx([1.0, 1.12, 1.0304], abs=1e-6)


def test_max_drawdown_and_sharpe_edges():
    """Returns .1, -.2, .05, -.1: equity 1.1, .88, .924, .8316; peak 1.1 -> .8316/1.1 - 1 = -0.244.
    A first-day loss is a drawdown from the starting 1.0; only gains -> 0."""
    assert max_drawdown([0.1, -0.2, 0.05, -0.1]) == pytest.approx(-0.244, abs=1e-12)
    assert max_drawdown([-0.1]) == pytest.approx(-0.1, abs=1e-12)
    assert max_drawdown([0.1, 0.2]) == 0.0
    assert max_drawdown([]) is None
    one = timing_stats([1.0], [0.05], ["BEAR"], 5)
    assert one["sharpe"] is None and one["mean_return"] == 0.05 and one["n_dates"] == 1   # no std from one date
    # h enters as sqrt(252/h): h = 1 vs h = 4 differ by a factor 2.
    s1 = timing_stats([1, 1, 1], [0.01, 0.03, -0.01], ["BEAR"] * 3, 1)["sharpe"]
    s4 = timing_stats([1, 1, 1], [0.01, 0.03, -0.01], ["BEAR"] * 3, 4)["sharpe"]
    assert s1 == pytest.approx(2 * s4, abs=1e-5)


def test_dropped_and_excluded_are_counted(prices):
    """D3's t+2 is past the data: dropped (1), in trading_dates with a null return; the synthetic sample is
    excluded (1) from timing and selection but counted in regime accuracy (n 5)."""
    block = trading_block(model_samples(), prices, H, seed=0)
    assert block["dropped_dates"] == 1 and block["excluded"] == 1
    assert block["regime"]["n"] == 5 and block["timing"]["n_dates"] == 3
    assert trading_dates(model_samples(), prices, H) == [
        {"date": "2024-01-02", "horizon_days": 2, "true_regime": "MILD_BULL", "market_forward_return": 0.03},
        {"date": "2024-01-03", "horizon_days": 2, "true_regime": "STRONG_BULL", "market_forward_return": 0.12},
        {"date": "2024-01-04", "horizon_days": 2, "true_regime": "BEAR", "market_forward_return": -0.16},
        {"date": "2024-01-05", "horizon_days": 2, "true_regime": "WEAKENING", "market_forward_return": None}]


def test_samples_on_one_date_are_averaged(prices):
    """Two replies on D1 with exposures .2 and .6 act as one date with exposure .4: return .4 x .12 = .048."""
    ref = answer("STRONG_BULL", 1.0)
    samples = [real(1, answer("STRONG_BULL", 0.2, {"A": 1.0, "B": 0.0}), ref),
               real(1, answer("STRONG_BULL", 0.6, {"A": 0.0, "C": 1.0}), ref)]
    block = trading_block(samples, prices, H)
    assert block["timing"]["n_dates"] == 1 and block["timing"]["mean_return"] == pytest.approx(0.048, abs=1e-9)
    # Scores averaged per ticker: A .5, B 0, C 1 vs returns .2, -.1, .25 -> same ranks, IC 1.
    assert block["selection"]["rank_ic_mean"] == 1.0 and block["selection"]["n_dates"] == 1


# ---- selection ---------------------------------------------------------------------------------------------------

def test_selection_by_hand(prices):
    """D0: scores A .9, B -.5, C .1 rank 3, 1, 2; returns .10, -.10, .05 rank 3, 1, 2 -> IC 1.
    D1: scores A .5, B .2, C -.3 rank 3, 2, 1; returns .20, -.10, .25 rank 2, 1, 3; d = 1, 1, -2, sum d^2 = 6,
    IC = 1 - 6 x 6 / (3 x 8) = -0.5. D2 scores one stock only: skipped. Mean (1 - .5)/2 = 0.25.
    Bootstrap over the two dates: a resample's mean is 1, .25 or -.5 with probability 1/4, 1/2, 1/4, so the 2.5% and
    97.5% percentiles of 1000 resamples are -0.5 and 1.0.
    Sign hits: D0 A(+,+) B(-,-) C(+,+), D1 A(+,+) B(+,-) C(-,+) -> 4/6.
    Spread (top third = 1 stock of 3): D0 A .10 - B -.10 = .20; D1 A .20 - C .25 = -.05; mean 0.075."""
    sel = trading_block(model_samples(), prices, H, seed=3)["selection"]
    assert sel["rank_ic_mean"] == pytest.approx(0.25, abs=1e-9)
    assert sel["rank_ic_ci95"] == [-0.5, 1.0]
    assert sel["hit_rate"] == pytest.approx(0.666667, abs=1e-6)
    assert sel["long_short_spread"] == pytest.approx(0.075, abs=1e-9)
    assert sel["n_dates"] == 2


def test_rule_selection_with_tied_scores(prices):
    """Reference scores. D0: A .3, B .3, C -.2 -> ranks 2.5, 2.5, 1 (tie averaged), returns rank 3, 1, 2; centred
    (.5, .5, -1) . (1, -1, 0) = 0 -> IC 0. D1: A .6, B -.4, C .2 rank 3, 1, 2; returns rank 2, 1, 3; d = 1, 0, -1
    -> IC 1 - 6 x 2 / 24 = 0.5. D2: A -.1, B -.6, C .5 rank 2, 1, 3; returns -.10, -.50, .20 rank 2, 1, 3 -> IC 1.
    (D3: no t+2, skipped.) Mean (0 + .5 + 1)/3 = 0.5.
    Signs: D0 A hit, B miss, C miss; D1 and D2 all hit -> 7/9 = 0.777778.
    Spread: D0 the tie puts A and B both on top: (.10 - .10)/2 - .05 = -.05; D1 A .20 - B -.10 = .30;
    D2 C .20 - B -.50 = .70; mean .95/3 = 0.316667."""
    sel = trading_block(model_samples(), prices, H, seed=3)["baselines"]["rule"]["selection"]
    assert sel["rank_ic_mean"] == pytest.approx(0.5, abs=1e-9)
    assert sel["hit_rate"] == pytest.approx(0.777778, abs=1e-6)
    assert sel["long_short_spread"] == pytest.approx(0.316667, abs=1e-6)
    assert sel["n_dates"] == 3


def test_scores_equal_to_future_returns_give_ic_one(prices):
    """A clairvoyant model (score = the realised forward return) ranks perfectly on every date: IC 1 with a CI of
    [1, 1], every sign right; its spread is the best return minus the worst: D0 .2, D1 .35, D2 .7 -> 0.416667."""
    samples = [real(i, answer(REGIME[i], 1.0, FWD[i]), answer(REGIME[i], 1.0)) for i in range(3)]
    sel = trading_block(samples, prices, H, seed=0)["selection"]
    assert sel["rank_ic_mean"] == 1.0 and sel["rank_ic_ci95"] == [1.0, 1.0]
    assert sel["hit_rate"] == 1.0 and sel["n_dates"] == 3
    assert sel["long_short_spread"] == pytest.approx(0.416667, abs=1e-6)
    # The anti-clairvoyant one gets -1: the IC reads the order, not just any ranking.
    flipped = [real(i, answer(REGIME[i], 1.0, {t: -r for t, r in FWD[i].items()}), None) for i in range(3)]
    assert trading_block(flipped, prices, H)["selection"]["rank_ic_mean"] == -1.0


def test_momentum_baseline_on_a_trending_market():
    """25 trading days, each stock compounding at its own daily rate: A +1%, B -1%, C +2%. 20-day momentum on day
    21 ranks C > A > B, and so do the forward returns to day 23: momentum IC 1 on the reference's tickers."""
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(25)]
    growth = {"A": 1.01, "B": 0.99, "C": 1.02}
    rows = [(d, t, 100 * g ** i) for i, d in enumerate(days) for t, g in growth.items()]
    stocks = pa.table({"date": pa.array([r[0] for r in rows], pa.date32()), "ticker": [r[1] for r in rows],
                       "close": [r[2] for r in rows], "market_cap": [100] * len(rows)})
    prices = Prices.from_tables(pa.table({"date": pa.array(days, pa.date32())}), stocks)
    assert prices.momentum(days[21]) == pytest.approx({t: g ** 20 - 1 for t, g in growth.items()})
    ref = answer("MILD_BULL", 0.5, {"A": 0.1, "B": 0.1, "C": 0.1})
    samples = [TradingSample(days[21], "MILD_BULL", "real", None, ref),
               TradingSample(days[5], "MILD_BULL", "real", None, ref)]   # day 5: no 20-day history, skipped
    mom = trading_block(samples, prices, H)["baselines"]["momentum"]["selection"]
    assert mom["rank_ic_mean"] == 1.0 and mom["n_dates"] == 1
    assert trading_block(model_samples(), Prices.from_tables(*tables()), H)["baselines"]["momentum"]["selection"][
        "n_dates"] == 0   # the five-day market has no 20-day history


def test_rank_and_ic_helpers():
    assert rank([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert rank([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
    assert rank_ic([0.1, 0.2, 0.3], [5.0, 1.0, 0.0]) == pytest.approx(-1.0)
    assert rank_ic([0.5], [0.1]) is None
    assert rank_ic([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) == 0.0   # a constant ranking carries no information
    # Six stocks: top/bottom third = 2 each: (.6 + .5)/2 - (.1 + .2)/2 = 0.4
    s = np.array([6, 5, 4, 3, 2, 1.0])
    assert long_short(s, np.array([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])) == pytest.approx(0.4)
    # Fewer than two stocks with a return: the date is skipped.
    assert selection_stats([({"A": 1.0, "B": 0.5}, {"A": 0.1})], seed=0)["n_dates"] == 0


# ---- inputs, determinism, JSON -----------------------------------------------------------------------------------

def test_reply_fields_are_read_defensively():
    assert exposure_of({"exposure": 0.3}) == 0.3
    for bad in ({"exposure": 1.5}, {"exposure": "0.5"}, {"exposure": True}, {"exposure": float("nan")}, {}, None):
        assert exposure_of(bad) == 0.0                       # no usable exposure: the system holds cash
    reply = {"positions": [{"ticker": "A", "score": 0.4}, {"ticker": "A", "score": 0.2}, {"ticker": "B"},
                           {"ticker": "C", "score": "high"}, "junk", {"score": 0.9}]}
    assert position_scores(reply) == pytest.approx({"A": 0.3})
    assert position_scores({"positions": "none"}) == {} and position_scores(None) == {}


def test_sample_from_record():
    reference = answer("BEAR", 0.2, {"005930": -0.5})
    row = {"task": "full_analysis", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                                 {"role": "assistant", "content": json.dumps(reference)}],
           "meta": {"date": "2024-01-04", "regime": "BEAR", "source": "real", "split": "eval"}}
    s = sample_from_record(row, "Here:\n```json\n" + json.dumps(answer("BEAR", 0.1)) + "\n```")
    assert (s.date, s.true_regime, s.source, s.task) == (D[2], "BEAR", "real", "full_analysis")
    assert s.reply["exposure"] == 0.1 and s.reference == reference
    assert sample_from_record(row, "not json").reply is None
    assert sample_from_record(row, None).reply is None


def test_same_seed_same_output_and_the_seed_matters(prices):
    a = trading_block(model_samples(), prices, H, seed=11)
    b = trading_block(model_samples(), prices, H, seed=11)
    c = trading_block(model_samples(), prices, H, seed=12)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert equity_curve(model_samples(), prices, H, seed=11) == equity_curve(model_samples(), prices, H, seed=11)
    # The random baseline changes with the seed; the model's own timing does not.
    assert a["baselines"]["random"] != c["baselines"]["random"]
    assert a["timing"] == c["timing"]
    random_timing = a["baselines"]["random"]["timing"]
    assert random_timing["n_dates"] == 3
    assert all(0.0 <= v["mean_exposure"] <= 1.0 for v in random_timing["per_regime"].values() if v["n"])


def test_output_is_strict_json_with_every_key():
    """No NaN anywhere (json with allow_nan=False), even with nothing to measure; every baseline has both blocks."""
    prices = Prices.from_tables(*tables())
    for samples in ([], model_samples(), [real(4, None, None)]):
        block = trading_block(samples, prices, H, seed=0)
        json.dumps(block, allow_nan=False)
        assert set(block) == {"horizon_days", "excluded", "dropped_dates", "regime", "timing", "selection",
                              "baselines"}
        assert set(block["baselines"]) == {"buy_and_hold", "rule", "momentum", "random"}
        for base in block["baselines"].values():
            assert set(base["timing"]) == set(block["timing"]) and set(base["selection"]) == set(block["selection"])
    empty = trading_block([], prices, H)
    assert empty["regime"]["accuracy"] is None and empty["timing"]["n_dates"] == 0
    assert empty["selection"]["rank_ic_ci95"] == [None, None]
    with pytest.raises(ValueError):
        trading_block([], prices, 0)
