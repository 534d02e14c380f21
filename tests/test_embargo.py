"""The train/eval date split's embargo (`synthetic.date_split`): every eval date lies at least EMBARGO_TRADING_DAYS
trading days from every training date, for the pure rule over the calendar, for synthetic and real-snapshot
records, and for reasoning-log records; every regime has eval dates on the embedded market; generation copes
with a regime that has no eval day."""
from __future__ import annotations

import bisect
import collections
import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kospi_ft import params
from kospi_ft.data.reasoning_logs import LogEntry, LogReport, mix, to_record
from kospi_ft.data.regime import Regime
from kospi_ft.data.simulate import SimConfig, simulate
from kospi_ft.data.snapshot import MarketSnapshotStore, compute_features
from kospi_ft.data.synthetic import (
    EMBARGO, EMBARGO_CALENDAR_DAYS, EMBARGO_TRADING_DAYS, EVAL_MONTHS, MAX_WEEKDAY_CLOSURES, RealDays,
    business_days, date_split, eval_months, generate,
)
from kospi_ft.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]

# KRX closures on weekdays, 2020-2025: holidays, substitute and temporary holidays, election days, Labour Day and
# the year-end closing day. Only to count trading days under the real calendar (the simulator closes on fixed-date
# holidays only).
KRX_CLOSED = {dt.date.fromisoformat(d) for d in """
2020-01-01 2020-01-24 2020-01-27 2020-04-15 2020-04-30 2020-05-01 2020-05-05 2020-08-17 2020-09-30 2020-10-01
2020-10-02 2020-10-09 2020-12-25 2020-12-31
2021-01-01 2021-02-11 2021-02-12 2021-03-01 2021-05-05 2021-05-19 2021-08-16 2021-09-20 2021-09-21 2021-09-22
2021-10-04 2021-10-11 2021-12-31
2022-01-31 2022-02-01 2022-02-02 2022-03-01 2022-03-09 2022-05-05 2022-06-01 2022-06-06 2022-08-15 2022-09-09
2022-09-12 2022-10-03 2022-10-10 2022-12-30
2023-01-23 2023-01-24 2023-03-01 2023-05-01 2023-05-05 2023-05-29 2023-06-06 2023-08-15 2023-09-28 2023-09-29
2023-10-02 2023-10-03 2023-10-09 2023-12-25 2023-12-29
2024-01-01 2024-02-09 2024-02-12 2024-03-01 2024-04-10 2024-05-01 2024-05-06 2024-05-15 2024-06-06 2024-08-15
2024-09-16 2024-09-17 2024-09-18 2024-10-01 2024-10-03 2024-10-09 2024-12-25 2024-12-31
2025-01-01 2025-01-27 2025-01-28 2025-01-29 2025-01-30 2025-03-03 2025-05-01 2025-05-05 2025-05-06 2025-06-03
2025-06-06 2025-08-15 2025-10-03 2025-10-06 2025-10-07 2025-10-08 2025-10-09 2025-12-25 2025-12-31
""".split()}


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(i) for i in range((end - start).days + 1)]


def _min_trading_gap(trading_days: list[dt.date], eval_dates, train_dates) -> int:
    """The fewest trading days between an eval date and a training date: trading days in (earlier, later]."""
    def pos(d: dt.date) -> int:  # trading days up to and including d (works for non-trading dates too)
        return bisect.bisect_right(trading_days, d)

    ev = np.array(sorted({pos(d) for d in eval_dates}))
    tr = np.array(sorted({pos(d) for d in train_dates}))
    assert len(ev) and len(tr)
    return int(np.abs(ev[:, None] - tr[None, :]).min())


def _nearest(eval_dates, dates) -> np.ndarray:
    """Calendar days from each of `dates` to the nearest eval date."""
    ev = np.array(sorted({d.toordinal() for d in eval_dates}))
    xs = np.array(sorted({d.toordinal() for d in dates}))
    i = np.clip(np.searchsorted(ev, xs), 1, len(ev) - 1)
    return np.minimum(np.abs(xs - ev[i - 1]), np.abs(xs - ev[i]))


def _min_calendar_gap(eval_dates, train_dates) -> int:
    return int(_nearest(eval_dates, train_dates).min())


@pytest.fixture(scope="module")
def store() -> MarketSnapshotStore:
    """The embedded market's snapshot store: data/snapshots where the work tree has it, else simulated from the
    params.yaml market section (the same tables)."""
    if (ROOT / "data/snapshots/market.parquet").exists():
        return MarketSnapshotStore.from_dir(ROOT / "data/snapshots")
    raw = params.read_raw(ROOT / "params.yaml")
    start = dt.date.fromisoformat(raw["market"]["start"] + "-01")
    table = simulate(SimConfig(start, dt.date(2025, 12, 31), seed=raw["market"]["seed"]))
    stocks, market = compute_features(table, dt.date.fromisoformat(raw["snapshots"]["start_date"]))
    return MarketSnapshotStore(market, stocks)


# ---- the pure rule -----------------------------------------------------------------------------------------

def test_calendar_embargo_arithmetic():
    """42 calendar days = six weeks = 30 weekdays in any stretch; 20 trading days survive 10 weekday closures."""
    assert EMBARGO_TRADING_DAYS >= 20 and EMBARGO_CALENDAR_DAYS == 42 and EMBARGO_CALENDAR_DAYS % 7 == 0
    for start in _days(dt.date(2024, 1, 1), dt.date(2024, 1, 7)):
        weekdays = sum(d.weekday() < 5 for d in _days(start, start + dt.timedelta(EMBARGO_CALENDAR_DAYS - 1)))
        assert weekdays == 30 >= EMBARGO_TRADING_DAYS + MAX_WEEKDAY_CLOSURES
    # The most weekday closures in any 42-day stretch of 2020-2025 (25 Dec 2024 - 30 Jan 2025: 7) stay below it.
    assert all(d.weekday() < 5 for d in KRX_CLOSED)
    worst = max(sum(d in KRX_CLOSED for d in _days(s, s + dt.timedelta(EMBARGO_CALENDAR_DAYS - 1)))
                for s in _days(dt.date(2019, 12, 1), dt.date(2025, 12, 31)))
    assert worst == 7 < MAX_WEEKDAY_CLOSURES


def test_rule_keeps_eval_and_train_an_embargo_apart_2019_to_2026():
    days = _days(dt.date(2019, 1, 1), dt.date(2026, 12, 31))
    split = {d: date_split(d) for d in _days(dt.date(2018, 1, 1), dt.date(2027, 12, 31))}  # eval dates nearby too
    assert set(split.values()) == {"train", "eval", EMBARGO}
    ev = [d for d in split if split[d] == "eval"]
    tr = [d for d in days if split[d] == "train"]
    emb = [d for d in days if split[d] == EMBARGO]
    assert _min_calendar_gap(ev, tr) == EMBARGO_CALENDAR_DAYS  # no closer, and no wider than needed:
    gaps = _nearest(ev, emb)                                   # the embargo is the 41 days on either side
    assert gaps.min() == 1 and gaps.max() == EMBARGO_CALENDAR_DAYS - 1
    # Under the real KRX calendar (weekday closures included), in trading days.
    trading = [d for d in days if d.weekday() < 5 and d not in KRX_CLOSED]
    window = [d for d in trading if dt.date(2020, 1, 1) <= d <= dt.date(2025, 12, 31)]
    assert _min_trading_gap(trading, [d for d in window if split[d] == "eval"],
                            [d for d in window if split[d] == "train"]) >= EMBARGO_TRADING_DAYS


def test_eval_blocks_are_whole_months_about_a_tenth_of_the_window():
    for year in range(2006, 2031):
        for month in range(1, 13):
            first = dt.date(year, month, 1)
            last = (first + dt.timedelta(31)).replace(day=1) - dt.timedelta(1)
            inside = {date_split(d) for d in _days(first, last)}
            assert (inside == {"eval"}) == (month in eval_months(year)), (year, month, inside)
    assert set(EVAL_MONTHS) == set(range(2020, 2026))
    assert [len(eval_months(y)) for y in range(2006, 2031)].count(1) == 24  # two in 2020, else one a year
    weekdays = [d for d in _days(dt.date(2020, 1, 1), dt.date(2025, 12, 31)) if d.weekday() < 5]
    share = collections.Counter(date_split(d) for d in weekdays)
    assert 0.08 < share["eval"] / len(weekdays) < 0.12
    assert share["train"] / len(weekdays) > 0.6


def test_rule_is_pure():
    d = dt.date(2024, 8, 5)
    assert date_split(d) == date_split(dt.date.fromisoformat("2024-08-05")) == "eval"
    assert business_days(dt.date(2024, 7, 1), dt.date(2024, 9, 30), "eval") == \
        [x for x in _days(dt.date(2024, 8, 1), dt.date(2024, 8, 31)) if x.weekday() < 5]
    assert business_days(dt.date(2024, 7, 1), dt.date(2024, 9, 30), "train") == []  # July, September: embargo


# ---- the embedded market ------------------------------------------------------------------------------------

def test_every_regime_has_usable_eval_days_on_the_embedded_market(store):
    counts = {g: sum(date_split(d) == "eval" for d in store.regime_days(g)) for g in Regime}
    assert all(counts.values()), counts
    real = RealDays(store, "eval")
    assert set(real.regimes) == set(Regime)
    for regime, days in real.by_regime.items():
        assert any(real._usable(d) is not None for d in days), regime
    assert 0.08 < sum(counts.values()) / len(store.dates) < 0.12


# ---- synthetic and real-snapshot records --------------------------------------------------------------------

@pytest.fixture(scope="module")
def record_sets(store):
    """The synthesize stage's two sets at the spec's eval_count, real mode and synthetic mode."""
    kw = dict(start_date=dt.date(2020, 1, 1), end_date=dt.date(2025, 12, 31))
    return {
        "real": (generate(300, seed=42, split="train", store=store, real_data_ratio=0.7, **kw),
                 generate(100, seed=4242, split="eval", store=store, real_data_ratio=0.7, **kw)),
        "synthetic": (generate(300, seed=42, split="train", **kw), generate(100, seed=4242, split="eval", **kw)),
    }


@pytest.mark.parametrize("mode", ["real", "synthetic"])
def test_synthetic_records_keep_the_embargo(store, record_sets, mode):
    train, held = record_sets[mode]
    tr = [dt.date.fromisoformat(r["meta"]["date"]) for r in train]
    ev = [dt.date.fromisoformat(r["meta"]["date"]) for r in held]
    assert {date_split(d) for d in tr} == {"train"} and {date_split(d) for d in ev} == {"eval"}
    assert _min_trading_gap(store.dates, ev, tr) >= EMBARGO_TRADING_DAYS
    assert _min_calendar_gap(ev, tr) >= EMBARGO_CALENDAR_DAYS
    # Eval records spread over the eval months of every year, every regime among them.
    assert {d.year for d in ev} == set(range(2020, 2026))
    assert {r["meta"]["regime"] for r in held} == {g.value for g in Regime}
    if mode == "real":
        real = [r for r in held if r["meta"]["source"] == "real"]
        assert len(real) == 70 and {r["meta"]["regime"] for r in real} == {g.value for g in Regime}


def test_eval_generation_without_eval_days_of_a_regime(store, caplog):
    """A regime with no eval day: the eval set is still complete; its real records cover the other regimes (a
    warning names the missing one), its synthetic records all five. No eval day at all: a clear error."""
    market = store.market
    bear_eval = pa.array([r == Regime.BEAR.value and date_split(d) == "eval" for d, r in
                          zip(store.dates, market["regime"].to_pylist())])
    no_bear = MarketSnapshotStore(market.filter(pc.invert(bear_eval)), store.stocks)
    with caplog.at_level(logging.WARNING, logger="kospi_ft.data.synthetic"):
        held = generate(40, seed=4242, split="eval", store=no_bear, real_data_ratio=0.7)
    assert "no eval day of BEAR" in caplog.text
    assert len(held) == 40
    real = {r["meta"]["regime"] for r in held if r["meta"]["source"] == "real"}
    assert real == {g.value for g in Regime} - {"BEAR"}
    assert {r["meta"]["regime"] for r in held if r["meta"]["source"] == "synthetic"} == {g.value for g in Regime}
    assert all(date_split(dt.date.fromisoformat(r["meta"]["date"])) == "eval" for r in held)
    assert generate(40, seed=4242, split="eval", store=no_bear, real_data_ratio=0.7) == held  # deterministic

    train_only = MarketSnapshotStore(market.filter(pa.array([date_split(d) == "train" for d in store.dates])),
                                     store.stocks)
    with pytest.raises(PipelineError, match="no usable eval day"):
        generate(10, seed=4242, split="eval", store=train_only, real_data_ratio=0.7)


# ---- reasoning-log records ----------------------------------------------------------------------------------

def test_log_records_keep_the_embargo(store):
    """A log line on every weekday of 2020-2025: the lines mixed into Stage 2 and the held-out ones lie an embargo
    apart; embargo-date lines are in neither."""
    line = next(json.loads(x) for x in (ROOT / "data/logs/example.jsonl").read_text(encoding="utf-8").splitlines()
                if json.loads(x)["task"] == "regime_classification")
    days = [d for d in _days(dt.date(2020, 1, 1), dt.date(2025, 12, 31)) if d.weekday() < 5]
    logs = [to_record(LogEntry(date=d, task=line["task"], question="질문", context="맥락", reasoning="근거",
                               decision=line["decision"]), i, None, 0, LogReport()) for i, d in enumerate(days, 1)]
    m = mix(generate(20, seed=1), logs, 0.99, seed=0)  # 1,980 log records wanted: every train-date line in
    trained = {r["meta"]["date"] for r in m.records if r["meta"]["source"] == "log"}
    assert len(trained) == m.stats["logs"]["train"] < 1980
    held = {r["meta"]["date"] for r in m.held_out}
    embargoed = {r["meta"]["date"] for r in logs} - trained - held
    assert trained and held and embargoed
    assert m.stats["logs"]["train"] == len(trained) and m.stats["logs"]["eval"] == len(held)
    assert m.stats["logs"]["embargo"] == len(embargoed) == sum(r["meta"]["split"] == EMBARGO for r in logs)
    tr = [dt.date.fromisoformat(d) for d in trained]
    ev = [dt.date.fromisoformat(d) for d in held]
    assert _min_trading_gap(store.dates, ev, tr) >= EMBARGO_TRADING_DAYS
    assert _min_calendar_gap(ev, tr) >= EMBARGO_CALENDAR_DAYS
