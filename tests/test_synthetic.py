"""Synthetic SFT set and held-out eval set: counts, formats, templates, answer validity, real-data provenance,
train/eval separation and byte-identical stage outputs."""
from __future__ import annotations

import collections
import datetime as dt
import json
import math

import numpy as np
import pyarrow as pa
import pytest

from kospi_ft.data.regime import Regime, classify
from kospi_ft.data.scenarios import FX_SENSITIVITY, SHOCKS, US_EVENTS
from kospi_ft.schema import TaskType, quality_issues, schema_errors
from kospi_ft.data.snapshot import MarketSnapshotStore
from kospi_ft.strategy import rule_violations
from kospi_ft.data.synthetic import (
    FORMAT_SHARES, TASK_SHARES, Draws, _synthetic_indicators, allocate, dataset_stats, date_split, generate,
    round_half_up,
)
from kospi_ft.data.templates import SHARED_TEMPLATES, TASK_TEMPLATES, templates_for
from kospi_ft.data.universe import SECTORS, UNIVERSE

# The spec's table (section 2.1) at 5,000 records.
SPEC_COUNTS = {
    "full_analysis": 1100, "regime_classification": 500, "overnight_gap": 500, "sector_analysis": 400,
    "risk_management": 350, "regime_transition": 350, "opening_momentum": 300, "fx_impact": 300,
    "stop_loss_management": 300, "intraday_rebalancing": 300, "what_if": 300, "multi_step": 300,
}


# ---- a small hand-built snapshot store -------------------------------------------------------------------

# One indicator tuple per regime (market_return, breadth, momentum_10d, vol_10d), each well inside its class.
_DAY_TYPES = [(-0.03, 0.2, -0.08, 0.35), (-0.02, 0.4, -0.03, 0.3), (0.02, 0.75, 0.05, 0.15),
              (-0.005, 0.42, 0.0, 0.18), (0.005, 0.58, 0.01, 0.14)]


@pytest.fixture(scope="module")
def store() -> MarketSnapshotStore:
    """The weekdays of 2021 (261) cycling through the five regimes, 30 universe stocks a day with features defined.

    A whole year, so that both splits have days: 2021's eval month (October, 21 days) with its embargo on either
    side (2020's December eval month reaches into 2021 too), and 152 train days (11 Feb-20 Aug, 12-31 Dec)."""
    rng = np.random.default_rng(0)
    days = [dt.date(2021, 1, 1) + dt.timedelta(days=i) for i in range(365)]
    days = [d for d in days if d.weekday() < 5]
    m_rows = collections.defaultdict(list)
    for i, d in enumerate(days):
        r, b, m, v = _DAY_TYPES[i % 5]
        m_rows["date"].append(d)
        for k, x in zip(("market_return", "breadth", "momentum_10d", "vol_10d"), (r, b, m, v)):
            m_rows[k].append(x + float(rng.uniform(-0.001, 0.001)))
        m_rows["index_level"].append(2500 + i + float(rng.uniform(0, 1)))
        m_rows["n_traded"].append(30)
        m_rows["regime"].append(classify(*(m_rows[k][-1] for k in
                                           ("market_return", "breadth", "momentum_10d", "vol_10d"))).value)
    stocks = UNIVERSE[:30]
    s_rows = collections.defaultdict(list)
    for s in stocks:  # ticker-major, like the snapshots stage
        for d in days:
            close = float(rng.uniform(5000, 300000))
            s_rows["date"].append(d)
            s_rows["ticker"].append(s.code)
            s_rows["name"].append(s.name_ko)
            s_rows["close"].append(close)
            s_rows["daily_return"].append(float(rng.normal(0, 0.02)))
            s_rows["sma20"].append(close * float(rng.uniform(0.9, 1.1)))
            s_rows["sma60"].append(close * float(rng.uniform(0.85, 1.15)))
            s_rows["vol20"].append(float(rng.uniform(0.1, 0.6)))
            s_rows["volume"].append(1000)
            s_rows["market_cap"].append(10**12)
            s_rows["per"].append(float(rng.uniform(1, 150)))
            s_rows["pbr"].append(float(rng.uniform(0.1, 20)))
    market = pa.table({**m_rows, "date": pa.array(m_rows["date"], pa.date32())})
    stocks_t = pa.table({**s_rows, "date": pa.array(s_rows["date"], pa.date32())})
    return MarketSnapshotStore(market, stocks_t)


@pytest.fixture(scope="module")
def real_train(store):
    return generate(240, seed=11, split="train", start_date=dt.date(2021, 1, 1), end_date=dt.date(2021, 12, 31),
                    store=store, real_data_ratio=0.7)


@pytest.fixture(scope="module")
def real_eval(store):
    return generate(60, seed=12, split="eval", start_date=dt.date(2021, 1, 1), end_date=dt.date(2021, 12, 31),
                    store=store, real_data_ratio=0.7)


# ---- counts ---------------------------------------------------------------------------------------------

def test_spec_task_counts_at_5000():
    assert {t.value: n for t, n in allocate(5000, TASK_SHARES).items()} == SPEC_COUNTS
    assert allocate(5000, FORMAT_SHARES) == {"bullet": 2000, "sentence": 1000, "compact": 1000, "table": 1000}


@pytest.mark.parametrize("total", [1, 7, 12, 13, 99, 100, 301, 4999, 5001])
def test_largest_remainder_rule(total):
    counts = allocate(total, TASK_SHARES)
    assert sum(counts.values()) == total
    for task, n in counts.items():
        quota = total * TASK_SHARES[task]
        assert math.floor(quota) <= n <= math.floor(quota) + 1
    # leftover units went to the largest remainders: nobody rounded up has a smaller remainder than one
    # rounded down
    up = [total * TASK_SHARES[t] % 1 for t, n in counts.items() if n > math.floor(total * TASK_SHARES[t] + 1e-9)]
    down = [total * TASK_SHARES[t] % 1 for t, n in counts.items() if n == math.floor(total * TASK_SHARES[t] + 1e-9)]
    if up and down:
        assert min(up) >= max(down) - 1e-9


def test_generated_counts_are_exact():
    recs = generate(5000, seed=3, validate=False)
    assert dict(collections.Counter(r["task"] for r in recs)) == SPEC_COUNTS
    assert dict(collections.Counter(r["meta"]["format"] for r in recs)) == {
        "bullet": 2000, "sentence": 1000, "compact": 1000, "table": 1000}
    small = generate(37, seed=3)
    want = {t.value: n for t, n in allocate(37, TASK_SHARES).items() if n}
    assert dict(collections.Counter(r["task"] for r in small)) == want
    assert dict(collections.Counter(r["meta"]["format"] for r in small)) == {
        k: n for k, n in allocate(37, FORMAT_SHARES).items() if n}


def test_real_data_ratio_is_exact(real_train):
    n_real = sum(r["meta"]["source"] == "real" for r in real_train)
    assert n_real == round_half_up(240 * 0.7) == 168


def test_real_days_are_drawn_without_replacement_and_repeats_are_reported(store, real_train):
    """168 real records over ~30 train days per regime: every day serves once before any serves twice."""
    uses = collections.defaultdict(collections.Counter)
    for r in real_train:
        if r["meta"]["source"] == "real":
            uses[r["meta"]["regime"]][r["meta"]["date"]] += 1
    for regime, counter in uses.items():
        days = [d.isoformat() for d in store.regime_days(Regime(regime)) if date_split(d) == "train"]
        per_day = [counter.get(d, 0) for d in days]
        assert max(per_day) - min(per_day) <= 1, (regime, sorted(per_day))  # passes over all days, in turn
    stats = dataset_stats({"train": real_train})["train"]["real_days"]
    assert stats["records"] == 168 and stats["days"] == sum(len(c) for c in uses.values())
    assert stats["repeats"] == 168 - stats["days"] > 0
    assert stats["max_per_day"] == max(max(c.values()) for c in uses.values())
    assert {g: v["records"] for g, v in stats["by_regime"].items()} == {g: sum(c.values()) for g, c in uses.items()}
    few = generate(40, seed=11, split="train", start_date=dt.date(2021, 1, 1), end_date=dt.date(2021, 12, 31),
                   store=store, real_data_ratio=1.0)
    assert dataset_stats({"train": few})["train"]["real_days"]["repeats"] == 0  # fewer records than days


# ---- templates and scenarios ------------------------------------------------------------------------------

def test_templates_8_to_12_per_task_86_in_total():
    per_task = {t: templates_for(t) for t in TaskType}
    assert all(8 <= len(v) <= 12 for v in per_task.values()), {t: len(v) for t, v in per_task.items()}
    texts = {text for t in TaskType for text in TASK_TEMPLATES[t]} | set(SHARED_TEMPLATES)
    assert len(texts) == 86
    ids = {tid for v in per_task.values() for tid, _ in v}
    assert len(ids) == 86


def test_records_use_their_tasks_templates():
    for r in generate(120, seed=5):
        allowed = {tid for tid, _ in templates_for(TaskType(r["task"]))}
        assert r["meta"]["template"] in allowed


def test_scenarios():
    assert len(US_EVENTS) == 25 and len({e.key for e in US_EVENTS}) == 25
    assert len(SHOCKS) == 7 and len({s.key for s in SHOCKS}) == 7
    for e in US_EVENTS:
        assert e.impacts and set(e.impacts) <= set(SECTORS)
    assert set(FX_SENSITIVITY) == set(SECTORS)


@pytest.mark.parametrize("regime", list(Regime))
def test_synthetic_indicators_classify_to_their_regime(regime):
    draws = Draws(np.random.default_rng(7))
    for _ in range(300):
        assert classify(*_synthetic_indicators(regime, draws)) == regime


# ---- answers -------------------------------------------------------------------------------------------

def _check_records(recs):
    for r in recs:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"]
        answer = r["messages"][2]["content"]
        task = r["task"]
        assert schema_errors(task, answer) == [], (task, answer)
        assert rule_violations(task, answer) == [], (task, answer)
        assert quality_issues(task, answer) == [], (task, answer)
        assert json.loads(answer)["regime"] in {g.value for g in Regime}


def test_every_answer_is_valid_and_consistent_synthetic():
    recs = generate(360, seed=21)
    assert {r["task"] for r in recs} == {t.value for t in TaskType}
    assert {r["meta"]["regime"] for r in recs} == {g.value for g in Regime}
    _check_records(recs)


def test_every_answer_is_valid_and_consistent_real(real_train, real_eval):
    _check_records(real_train)
    _check_records(real_eval)


def test_real_records_carry_snapshot_values(store, real_train):
    real = [r for r in real_train if r["meta"]["source"] == "real"]
    checked_per = checked_ind = 0
    for r in real:
        snap = store.snapshot(dt.date.fromisoformat(r["meta"]["date"]))
        assert r["meta"]["regime"] == snap.regime.value
        by_ticker = {s.ticker: s for s in snap.stocks}
        user = r["messages"][1]["content"]
        assert f"{snap.index_level:,.2f}" in user
        assert f"{snap.market_return * 100:+.2f}%" in user
        answer = json.loads(r["messages"][2]["content"])
        for p in answer.get("positions", []):
            assert p["ticker"] in by_ticker          # only stocks that exist in that day's snapshot
        for v in answer.get("valuation", []):
            s = by_ticker[v["ticker"]]
            assert v["per"] == round(s.per, 2) and v["pbr"] == round(s.pbr, 2)
            checked_per += 1
        if "indicators" in answer:
            ind = answer["indicators"]
            assert ind["market_return"] == round(snap.market_return, 4)
            assert ind["breadth"] == round(snap.breadth, 4)
            assert ind["momentum_10d"] == round(snap.momentum_10d, 4)
            assert ind["vol_10d"] == round(snap.vol_10d, 4)
            checked_ind += 1
    assert checked_per > 10 and checked_ind > 3


# ---- separation and determinism ---------------------------------------------------------------------------

def test_eval_prompts_never_appear_in_training(real_train, real_eval):
    train_prompts = {r["messages"][1]["content"] for r in real_train}
    assert not any(r["messages"][1]["content"] in train_prompts for r in real_eval)
    train_dates = {r["meta"]["date"] for r in real_train}
    eval_dates = {r["meta"]["date"] for r in real_eval}
    assert train_dates.isdisjoint(eval_dates)
    assert all(date_split(dt.date.fromisoformat(d)) == "eval" for d in eval_dates)
    assert all(date_split(dt.date.fromisoformat(d)) == "train" for d in train_dates)


def test_same_arguments_same_records(store):
    kw = dict(seed=9, start_date=dt.date(2021, 1, 1), end_date=dt.date(2021, 12, 31), store=store,
              real_data_ratio=0.5)
    a, b = generate(80, **kw), generate(80, **kw)
    assert json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)
    c = generate(80, **{**kw, "seed": 10})
    assert json.dumps(a, ensure_ascii=False) != json.dumps(c, ensure_ascii=False)


def test_stage_outputs_are_byte_identical_and_disjoint(tmp_path):
    from stages.synthesize import main

    outs = []
    for run in ("a", "b"):
        train, held, stats = (tmp_path / run / n for n in ("train.jsonl", "eval.jsonl", "stats.json"))
        main(["--count", "60", "--eval-count", "12", "--no-use-real-data", "--output", str(train),
              "--eval-output", str(held), "--stats-output", str(stats)])
        outs.append((train.read_bytes(), held.read_bytes(), stats.read_bytes()))
    assert outs[0] == outs[1]
    stats = json.loads(outs[0][2])
    assert stats["train"]["records"] == 60 and stats["eval"]["records"] == 12
    assert stats["train"]["tasks"] == {t.value: n for t, n in allocate(60, TASK_SHARES).items() if n}
    # a row holds the system prompt, so it is longer than it; the answer is a part of the row
    assert stats["train"]["row_tokens"]["p50"] > stats["system_prompt_tokens"]
    assert stats["train"]["row_tokens"]["max"] > stats["train"]["answer_tokens"]["max"]
    train_lines = [json.loads(x) for x in outs[0][0].decode().splitlines()]
    eval_lines = [json.loads(x) for x in outs[0][1].decode().splitlines()]
    assert len(train_lines) == 60 and len(eval_lines) == 12
    train_prompts = {r["messages"][1]["content"] for r in train_lines}
    assert not any(r["messages"][1]["content"] in train_prompts for r in eval_lines)


@pytest.mark.parametrize("preset, count", [("embedded", None), ("real", 5000)])
def test_shipped_params_load(preset, count):
    from pathlib import Path

    from kospi_ft import params, presets
    from kospi_ft.data.synthetic import SynthesizeParams

    raw = presets.applied(params.read_raw(Path(__file__).resolve().parents[1] / "params.yaml"), preset)
    cfg = params.load("synthesize", SynthesizeParams, raw=raw)
    assert cfg.seed != cfg.eval_seed and 0 <= cfg.real_data_ratio <= 1
    if count is not None:
        assert cfg.count == count  # the spec's size under preset real
    params.load_paths(raw=raw).synthetic_stats  # the stats path is declared
