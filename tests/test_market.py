import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kospi_ft.data import market
from kospi_ft.errors import DataValidationError
from kospi_ft.data.regime import Regime
from kospi_ft.data.simulate import SimConfig, simulate
from kospi_ft.data.snapshot import PBR_RANGE, PER_RANGE, MarketSnapshotStore, compute_features, fixed
from kospi_ft.data.universe import TICKERS

START, END = dt.date(2021, 1, 1), dt.date(2021, 3, 31)


@pytest.fixture(scope="module")
def sim_table():
    return simulate(SimConfig(START, END, seed=3))


@pytest.fixture
def tree(tmp_path, sim_table):
    root = tmp_path / "market_daily"
    market.write_partitions(sim_table, root)
    return root


def _rewrite(root, year, month, fn):
    path = market.partition_path(root, year, month)
    table = pq.read_table(path)
    pq.write_table(fn(table), path)
    return path


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.parquet"))}


def test_simulator_is_byte_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    market.write_partitions(simulate(SimConfig(START, END, seed=11)), a)
    market.write_partitions(simulate(SimConfig(START, END, seed=11)), b)
    market.write_partitions(simulate(SimConfig(START, END, seed=12)), tmp_path / "c")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(tmp_path / "c")
    assert sorted(_digest(a)) == ["year=2021/month=1/data.parquet", "year=2021/month=2/data.parquet",
                                  "year=2021/month=3/data.parquet"]


def test_simulator_has_krx_features():
    t = simulate(SimConfig(dt.date(2020, 1, 1), dt.date(2022, 12, 31), seed=7, halt_prob=0.002)).to_pandas()
    t = t.sort_values(["ticker", "date"])
    prev = t.groupby("ticker")["close"].shift()
    move = (t["close"] / prev - 1).dropna()
    assert move.abs().max() <= 0.30 + 1e-9          # daily price limit
    assert (t["volume"] == 0).any()                   # halts happen
    halted = t[t["volume"] == 0]
    assert (halted["open"] == halted["close"]).all() and (halted["high"] == halted["low"]).all()
    first_day = t.groupby("ticker")["date"].min()
    assert first_day["373220"] == dt.date(2022, 1, 27)  # LG Energy Solution IPO mid-range
    assert first_day["005930"] == dt.date(2020, 1, 2)
    assert t["per"].isna().any() and (t["per"] < 0).any()  # loss-makers, both vendor conventions
    # every stock listed by the range's end trades; 450080 (IPO 2023-11) does not exist yet
    assert set(t["ticker"]) == set(TICKERS) - {"450080"}


def test_load_range_prunes_partitions_and_filters_dates(tree):
    t = market.load_range(tree, dt.date(2021, 2, 10), dt.date(2021, 2, 20))
    dates = t["date"].to_pylist()
    assert min(dates) >= dt.date(2021, 2, 10) and max(dates) <= dt.date(2021, 2, 20)
    # a broken file in a month outside the range is never opened
    market.partition_path(tree, 2021, 3).write_bytes(b"not parquet")
    market.load_range(tree, dt.date(2021, 2, 1), dt.date(2021, 2, 28))
    with pytest.raises(DataValidationError, match="month=3"):
        market.load_range(tree, dt.date(2021, 2, 1), dt.date(2021, 3, 31))


@pytest.mark.parametrize("corrupt,pattern", [
    (lambda t: t.drop_columns(["pbr"]), r"missing column 'pbr'"),
    (lambda t: t.rename_columns(["closing_price" if n == "close" else n for n in t.column_names]),
     r"missing column 'close' \(found 'closing_price': misnamed\?\)"),
    (lambda t: t.set_column(t.schema.get_field_index("volume"), "volume", pa.array(["x"] * t.num_rows)),
     r"column 'volume' has type string"),
    (lambda t: t.set_column(t.schema.get_field_index("close"), "close",
                            pa.array(np.where(np.arange(t.num_rows) == 5, np.nan, t["close"].to_numpy()))),
     r"column 'close' has NaN or non-positive prices: 1 row\(s\), first at date="),
    (lambda t: t.set_column(t.schema.get_field_index("low"), "low",
                            pa.array(np.where(np.arange(t.num_rows) == 7, 0.0, t["low"].to_numpy()))),
     r"column 'low' has NaN or non-positive prices"),
    (lambda t: pa.concat_tables([t, t.slice(3, 1)]), r"duplicate \(date, ticker\) rows: 1 row\(s\), first at date="),
    (lambda t: t.set_column(0, "date", pa.array([dt.date(2021, 3, 2)] * t.num_rows, pa.date32())),
     r"column 'date' has rows outside the partition year=2021/month=2"),
])
def test_validation_errors_name_file_and_column(tree, corrupt, pattern):
    path = _rewrite(tree, 2021, 2, corrupt)
    with pytest.raises(DataValidationError, match=pattern) as err:
        market.load_range(tree, START, END)
    assert str(path) in str(err.value)


def test_empty_range_and_bad_layout(tree, tmp_path):
    with pytest.raises(DataValidationError, match="no partitions between"):
        market.load_range(tree, dt.date(2019, 1, 1), dt.date(2019, 12, 31))
    with pytest.raises(DataValidationError, match=r"no rows between .* \(column 'date'\)"):
        market.load_range(tree, dt.date(2021, 1, 1), dt.date(2021, 1, 1))  # a holiday: partition exists, no rows
    stray = tree / "2021" / "data.parquet"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    with pytest.raises(DataValidationError, match="not in the layout"):
        market.load_range(tree, START, END)
    with pytest.raises(DataValidationError, match="not found"):
        market.load_range(tmp_path / "nope", START, END)


def test_integer_prices_and_timestamp_dates_are_accepted(tree):
    def to_vendor_types(t):
        t = t.set_column(t.schema.get_field_index("close"), "close", t["close"].cast(pa.int64()))
        return t.set_column(0, "date", t["date"].cast(pa.timestamp("ns")))
    _rewrite(tree, 2021, 2, to_vendor_types)
    t = market.load_range(tree, START, END)
    assert t.schema == market.SCHEMA


def test_features_match_pandas_groupby_rolling(sim_table):
    table = sim_table.sort_by([("ticker", "ascending"), ("date", "ascending")])
    stocks, mkt = compute_features(table)
    df = table.to_pandas()
    g = df.groupby("ticker", sort=False)
    ret = g["close"].pct_change()
    expect = pd.DataFrame({
        "daily_return": ret,
        "sma20": g["close"].transform(lambda s: s.rolling(20).mean()),
        "vol20": ret.groupby(df["ticker"]).transform(lambda s: s.rolling(20).std()) * np.sqrt(252),
    })
    got = stocks.select(["daily_return", "sma20", "vol20"]).to_pandas()
    # rtol: SMAs are written to 1e-4 won; atol: returns and vol to 1e-8 (snapshot.FLOAT_DECIMALS)
    pd.testing.assert_frame_equal(got, expect, check_dtype=False, rtol=1e-7, atol=5.1e-9)
    # market return is the previous-cap-weighted mean of traded stocks' returns
    df["ret"], df["w"] = ret, g["market_cap"].shift()
    traded = df[(df["volume"] > 0) & df["ret"].notna()]
    day = mkt["date"].to_pylist()[5]
    d = traded[traded["date"] == day]
    assert mkt["market_return"][5].as_py() == pytest.approx((d["ret"] * d["w"]).sum() / d["w"].sum(), abs=5.1e-9)
    assert mkt["breadth"][5].as_py() == pytest.approx((d["ret"] > 0).mean(), abs=5.1e-9)


@pytest.fixture(scope="module")
def store():
    t = simulate(SimConfig(dt.date(2020, 1, 1), dt.date(2023, 12, 31), seed=7))
    return MarketSnapshotStore(*reversed(compute_features(t.sort_by([("ticker", "ascending"), ("date", "ascending")]))))


def test_all_five_regimes_occur(store):
    counts = store.regime_counts()
    assert all(counts[g.value] > 0 for g in Regime), counts
    assert counts["total"] == len(store.dates) - 10  # day 1 has no return; 10 returns fill the windows


def test_sample_snapshot_respects_regime_and_valuation_ranges(store):
    rng = np.random.default_rng(0)
    for regime in Regime:
        days = set(store.regime_days(regime))
        for _ in range(5):
            snap = store.sample_snapshot(regime, rng)
            assert snap.regime is regime and snap.date in days
            assert snap.stocks
            for s in snap.stocks:
                assert PER_RANGE[0] < s.per < PER_RANGE[1] and PBR_RANGE[0] < s.pbr < PBR_RANGE[1]
                assert s.ticker in TICKERS
    # same generator state -> same snapshot
    a = store.sample_snapshot(Regime.BEAR, np.random.default_rng(5))
    b = store.sample_snapshot(Regime.BEAR, np.random.default_rng(5))
    assert a == b


def test_store_roundtrip_through_dir(store, tmp_path):
    store.save(tmp_path)
    again = MarketSnapshotStore.from_dir(tmp_path)
    assert again.regime_counts() == store.regime_counts()
    d = store.regime_days(Regime.MILD_BULL)[3]
    assert again.snapshot(d) == store.snapshot(d)
    narrowed = MarketSnapshotStore.from_dir(tmp_path, dt.date(2021, 1, 1), dt.date(2021, 12, 31))
    assert min(narrowed.dates) >= dt.date(2021, 1, 1) and max(narrowed.dates) <= dt.date(2021, 12, 31)


# ---- history before the window, fixed-precision tables ---------------------------------------------------------

@pytest.fixture(scope="module")
def with_history(tmp_path_factory):
    """A tree from 2020-09: four months of history before a 2021-01-01 window."""
    root = tmp_path_factory.mktemp("hist") / "market_daily"
    market.write_partitions(simulate(SimConfig(dt.date(2020, 9, 1), END, seed=3)), root)
    return root


def test_the_windows_first_days_use_the_history_before_it(with_history):
    store = MarketSnapshotStore.from_market(with_history, START, END)
    assert store.dates[0] == dt.date(2021, 1, 4) and store.history_days >= 59
    assert store.regime_counts()["total"] == len(store.dates)  # no 10-day warm-up without a regime
    first = store.snapshot(store.dates[0])
    assert len(first.stocks) > 50  # SMA-60 defined on day one
    # The window's features are the full range's: history fills the windows, it does not change them.
    full_stocks, full_market = compute_features(market.load_range(with_history, dt.date(2020, 9, 1), END))
    keep = pa.array(np.asarray(full_stocks["date"].to_pylist()) >= START)
    by_key = [("date", "ascending"), ("ticker", "ascending")]
    for col in ("daily_return", "sma20", "sma60", "vol20"):
        got = store.stocks.sort_by(by_key)[col].to_numpy()
        assert np.array_equal(got, full_stocks.filter(keep).sort_by(by_key)[col].to_numpy(), equal_nan=True), col
    window = full_market.filter(pa.array(np.asarray(full_market["date"].to_pylist()) >= START))
    assert store.market["regime"].equals(window["regime"])
    assert store.market["index_level"][0].as_py() == pytest.approx(1000 * (1 + window["market_return"][0].as_py()))
    # Without history the same window has 59 days with no stock usable, which sampling skips.
    bare = MarketSnapshotStore.from_market(with_history, dt.date(2020, 9, 1), END)
    assert bare.history_days == 0 and not bare.snapshot(bare.dates[30]).stocks
    rng = np.random.default_rng(1)
    early = {store.sample_snapshot(g, rng).date for g in Regime if store.regime_days(g) for _ in range(30)}
    assert min(early) < dt.date(2021, 1, 29)  # the window's first weeks are real snapshots


def test_snapshot_tables_ignore_last_bit_float_noise(tmp_path, sim_table):
    """One ulp of difference in the inputs (what another CPU's float results differ by) -> the same bytes."""
    def saved(table, name):
        stocks, mkt = compute_features(table)
        MarketSnapshotStore(mkt, stocks).save(tmp_path / name)
        return {f.name: f.read_bytes() for f in sorted((tmp_path / name).iterdir())}

    nudged = sim_table
    for col in ("close", "per", "pbr"):
        values = sim_table[col].to_numpy(zero_copy_only=False)
        nudged = nudged.set_column(nudged.schema.get_field_index(col), col,
                                   pa.array(np.nextafter(values, np.inf)))
    assert not nudged["close"].equals(sim_table["close"])
    assert saved(sim_table, "a") == saved(nudged, "b")
    # a value that rounds to zero is written as +0.0 whatever its sign was
    assert fixed([-1e-12], "daily_return").tobytes() == fixed([1e-12], "daily_return").tobytes()
