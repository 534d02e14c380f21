"""Ingest of a user's KRX tree: the seed system's, pykrx's and FinanceDataReader's layouts -> the contract, with a
count per normalisation, and clear errors (file and column named) for everything else.

The vendor trees are written by `simulate.write_vendor_tree` from a small simulated market and read back through
the real code path (parquet files on disk). Column names per vendor: see the `kospi_ft.data.ingest` docstring
(checked in pykrx's and FinanceDataReader's source).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kospi_ft.data import ingest, market
from kospi_ft.data.simulate import SimConfig, as_vendor, simulate, write_vendor_tree
from kospi_ft.errors import DataValidationError

ROOT = Path(__file__).resolve().parents[1]
START, END = dt.date(2021, 1, 1), dt.date(2021, 2, 28)
TICKERS = ("005930", "000660", "005380", "035420", "105560", "207940")


@pytest.fixture(scope="module")
def bars() -> pa.Table:
    """Two months of six universe stocks, halts included (contract form: open = high = low = close)."""
    t = simulate(SimConfig(START, END, seed=5, halt_prob=0.02))
    t = t.filter(pa.array(np.isin(t["ticker"].to_numpy(zero_copy_only=False), TICKERS)))
    assert (t["volume"].to_numpy() == 0).sum() >= 3
    return t


def _tree(tmp_path, bars, vendor, **kw) -> Path:
    root = tmp_path / vendor
    write_vendor_tree(bars, root, vendor, **kw)
    return root


def _rewrite(root: Path, month: int, fn) -> Path:
    path = market.partition_path(root, 2021, month)
    pq.write_table(fn(pq.read_table(path)), path)
    return path


@pytest.mark.parametrize("vendor", ["seed", "pykrx", "fdr"])
def test_each_vendor_tree_becomes_the_contract(tmp_path, bars, vendor):
    table, report = ingest.load_tree(_tree(tmp_path, bars, vendor), START, END)
    assert table.schema == market.SCHEMA
    for col in ("date", "ticker", "open", "high", "low", "close", "volume", "market_cap"):
        assert table[col].equals(bars[col]), col  # halts come back as open = high = low = close
    assert table["name"].equals(bars["name"])  # from the vendor, or derived from the universe
    m = report.metrics("krx")
    assert m["files"] == m["months"] == 2 and m["rows_read"] == m["rows_written"] == bars.num_rows
    assert m["halts_fixed"] == int((bars["volume"].to_numpy() == 0).sum())
    if vendor == "seed":
        # no name/value/shares columns: derived; pe_ratio/pb_ratio are aliases; tickers carry " KP"
        assert m["columns_derived"] == {"name": bars.num_rows, "value": bars.num_rows, "market_cap": 0,
                                        "shares": bars.num_rows}
        assert m["aliases_applied_files"]["per"] == m["aliases_applied_files"]["pbr"] == 2
        assert m["tickers_normalised"]["suffix"] == bars.num_rows
        assert m["columns_ignored_names"] == ["rsi_14", "sma_20"]
        close, volume = bars["close"].to_numpy(), bars["volume"].to_numpy()
        assert table["value"].to_numpy().tolist() == np.round(close * volume).astype(np.int64).tolist()
        assert table["shares"].equals(bars["shares"])  # market_cap / close, rounded
        assert table["per"].equals(bars["per"])
    elif vendor == "pykrx":
        aliases = m["aliases_applied_files"]
        assert aliases["close"] == 2 and all(v == 2 for v in aliases.values() if v)
        assert table["value"].equals(bars["value"]) and table["shares"].equals(bars["shares"])
        per = bars["per"].to_numpy()
        assert np.array_equal(table["per"].to_numpy(), np.where(np.isnan(per), 0.0, per.astype(np.float32)))
        assert m["columns_ignored_names"] == ["등락률"]
    else:
        assert m["tickers_normalised"]["zero_padded"] == bars.num_rows  # integer Code 5930 -> "005930"
        assert m["columns_left_null"]["per"] == m["columns_left_null"]["pbr"] == bars.num_rows
        assert table["per"].null_count == bars.num_rows


def test_rows_with_a_missing_close_are_dropped_and_counted(tmp_path, bars):
    table, report = ingest.load_tree(_tree(tmp_path, bars, "seed", missing_close=0.05), START, END)
    dropped = report.metrics("krx")["rows_dropped"]["missing_close"]
    assert dropped > 0 and table.num_rows == bars.num_rows - dropped
    assert not pc.any(pc.is_nan(table["close"])).as_py()


def test_ticker_forms_all_become_six_digits(tmp_path, bars):
    root = _tree(tmp_path, bars, "seed")
    forms = ["005930 KP", "A000660", "005380.KS", "35420", "105560", "207940 KS Equity"]
    _rewrite(root, 1, lambda t: t.set_column(1, "ticker", pa.array(
        [forms[TICKERS.index(x.split()[0])] for x in t["ticker"].to_pylist()])))
    table, report = ingest.load_tree(root, START, END)
    assert set(table["ticker"].to_pylist()) == set(TICKERS)
    jan = int((market.day_numbers(bars) < np.datetime64("2021-02-01").astype(int)).sum())
    per_ticker = jan // len(TICKERS)  # every stock trades every January day here
    t = report.metrics("krx")["tickers_normalised"]
    assert t == {"suffix": bars.num_rows - jan + 3 * per_ticker, "prefix": per_ticker, "zero_padded": per_ticker}


@pytest.mark.parametrize("value,pattern", [
    ("SAMSUNG", r"column 'ticker' value 'SAMSUNG' is not a KRX code"),
    ("0059301", r"value '0059301' is not a KRX code"),
])
def test_unknown_ticker_forms_name_file_column_and_value(tmp_path, bars, value, pattern):
    root = _tree(tmp_path, bars, "seed")
    path = _rewrite(root, 2, lambda t: t.set_column(1, "ticker", pa.array([value] * t.num_rows)))
    with pytest.raises(DataValidationError, match=pattern) as err:
        ingest.load_tree(root, START, END)
    assert str(path) in str(err.value)


def test_zoned_timestamps_give_the_local_date(tmp_path, bars):
    root = _tree(tmp_path, bars, "seed")
    # Midnight KST is 15:00 UTC the day before: the date must stay the KST day.
    _rewrite(root, 1, lambda t: t.set_column(0, "date", pc.assume_timezone(t["date"], "Asia/Seoul")))
    table, _ = ingest.load_tree(root, START, END)
    assert table["date"].equals(bars["date"])


@pytest.mark.parametrize("corrupt,pattern", [
    (lambda t: t.drop_columns(["close"]), r"missing column 'close'; accepted names: 'close', '종가', 'Close'"),
    (lambda t: t.drop_columns(["market_cap"]), r"missing column 'market_cap' \(or 'shares', to derive it from\)"),
    (lambda t: t.append_column("Close", t["close"]), r"columns 'close' and 'Close' both name 'close'"),
    (lambda t: t.set_column(0, "date", t["date"].cast(pa.string())), r"column 'date' has type string"),
    (lambda t: t.set_column(t.schema.get_field_index("open"), "open", pc.multiply(t["open"], 0.0)),
     r"column 'open' has NaN or non-positive prices"),  # zero open on a traded day is no halt
    (lambda t: t.set_column(t.schema.get_field_index("volume"), "volume", pc.add(t["volume"], 0.5)),
     r"column 'volume' must hold whole numbers"),
])
def test_what_ingest_cannot_normalise_is_an_error_naming_file_and_column(tmp_path, bars, corrupt, pattern):
    root = _tree(tmp_path, bars, "seed")
    path = _rewrite(root, 2, corrupt)
    with pytest.raises(DataValidationError, match=pattern) as err:
        ingest.load_tree(root, START, END)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("reader", ["ingest", "contract"])
@pytest.mark.parametrize("month", [1, 2])
@pytest.mark.parametrize("content", [b"", b"not parquet at all", "truncated"])
def test_unreadable_files_are_a_clean_error_in_any_partition(tmp_path, bars, reader, month, content):
    root = tmp_path / "tree"
    if reader == "ingest":
        write_vendor_tree(bars, root, "seed")
    else:
        market.write_partitions(bars, root)
    path = market.partition_path(root, 2021, month)
    path.write_bytes(path.read_bytes()[:200] if content == "truncated" else content)
    load = ingest.load_tree if reader == "ingest" else market.load_range  # month 1 was a traceback in both
    with pytest.raises(DataValidationError, match="unreadable parquet") as err:
        load(root, START, END)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("folder", ["year=2021/month=13", "year=2019/month=0", "year=2021/month=00"])
def test_a_month_folder_outside_1_to_12_is_an_error_wherever_it_is(tmp_path, bars, folder):
    root = _tree(tmp_path, bars, "seed")
    (root / folder).mkdir(parents=True)  # empty, and (2019) far outside the range: still an error
    with pytest.raises(DataValidationError, match=r"month=\d+ is not a month \(1-12\)") as err:
        ingest.load_tree(root, START, END)
    assert folder in str(err.value)


def test_stray_files_are_ignored_and_empty_months_counted(tmp_path, bars):
    root = _tree(tmp_path, bars, "seed")
    (root / "year=2021/month=1/data.parquet:Zone.Identifier").write_text("[ZoneTransfer]\nZoneId=3\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.md").write_text("my KRX tree\n")
    (root / "year=2021/month=3").mkdir()  # a month folder with no file
    empty = market.partition_path(root, 2021, 4)
    empty.parent.mkdir(parents=True)
    pq.write_table(as_vendor(bars.slice(0, 0), "seed"), empty)  # a file, no rows
    table, report = ingest.load_tree(root, START, dt.date(2021, 4, 30))
    m = report.metrics("krx")
    assert table.num_rows == bars.num_rows
    assert m["ignored_files"] == 3 and m["months"] == 4 and m["empty_months"] == 2 and m["files"] == 3
    stray = root / "year=2021/data.parquet"  # a parquet file outside the layout stays an error
    pq.write_table(as_vendor(bars.slice(0, 1), "seed"), stray)
    with pytest.raises(DataValidationError, match="not in the layout"):
        ingest.load_tree(root, START, END)


def test_names_outside_the_universe_are_left_null(tmp_path):
    t = simulate(SimConfig(START, dt.date(2021, 1, 31), seed=4, extra_tickers=2))
    t = t.filter(pa.array(np.isin(t["ticker"].to_numpy(zero_copy_only=False), ("005930", "900000", "900001"))))
    root = tmp_path / "seed"
    write_vendor_tree(t, root, "seed")
    table, report = ingest.load_tree(root, START, END)
    names = dict(zip(table["ticker"].to_pylist(), table["name"].to_pylist()))
    assert names == {"005930": "삼성전자", "900000": None, "900001": None}
    m = report.metrics("krx")
    assert m["columns_left_null"]["name"] == 2 * table.num_rows // 3 and m["columns_derived"]["name"] == \
        table.num_rows // 3
    out = tmp_path / "out"
    market.write_partitions(table, out)  # the normalised tree is a valid contract tree (null names allowed)
    assert market.load_range(out, START, END).num_rows == table.num_rows


def test_shipped_example_tree_ingests():
    table, report = ingest.load_tree(ROOT / "data/fixtures/krx", dt.date(2024, 1, 1), dt.date(2024, 3, 31))
    m = report.metrics("krx")
    assert m["files"] == 3 and m["rows_dropped"]["missing_close"] > 0 and m["halts_fixed"] > 0
    assert m["tickers_normalised"]["suffix"] == table.num_rows and m["columns_left_null"]["name"] > 0
    assert json.loads(json.dumps(m)) == m  # plain JSON: what the market stage writes to metrics/


def test_integer_krw_amounts_stay_exact_beyond_float_precision(tmp_path, bars):
    root = _tree(tmp_path, bars, "pykrx")
    big = 2**53 + 1  # 9,007,199,254,740,993 won: no float64 holds it
    _rewrite(root, 1, lambda t: t.set_column(t.schema.get_field_index("시가총액"), "시가총액",
                                             pa.array([big] * t.num_rows, pa.int64())))
    table, _ = ingest.load_tree(root, START, END)
    assert table["market_cap"][0].as_py() == big


def _cell(t: pa.Table, col: str, row: int, value, typ=None) -> pa.Table:
    """`t` with one cell of `col` replaced (the column cast to `typ` first, if given)."""
    values = t[col].to_pylist()
    values[row] = value
    return t.set_column(t.schema.get_field_index(col), col, pa.array(values, typ or t[col].type))


def _first_feb_row(bars: pa.Table) -> tuple[str, str]:
    """(date, ticker) of February's first row, as check messages print them."""
    feb = bars.filter(pc.greater_equal(bars["date"], pa.scalar(dt.date(2021, 2, 1))))
    return str(feb["date"][0].as_py()), feb["ticker"][0].as_py()


@pytest.mark.parametrize("folder", ["month=2", "month=02"])
def test_duplicate_keys_across_a_months_files_name_both_files(tmp_path, bars, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    root = Path("seed")  # relative, as a user may give it: the message keeps the paths as given
    write_vendor_tree(bars, root, "seed")
    feb = market.partition_path(root, 2021, 2)
    extra = root / "year=2021" / folder / "extra.parquet"
    extra.parent.mkdir(exist_ok=True)
    # February's last 7 rows again, in pykrx's columns: the message names each file's own key columns.
    pq.write_table(as_vendor(bars.slice(bars.num_rows - 7, 7), "pykrx"), extra)
    with pytest.raises(DataValidationError, match=r"duplicate \(date, ticker\) row\(s\) across the files of 2021-02"
                       ) as err:
        ingest.load_tree(root, START, END)
    msg = str(err.value)
    last = bars.slice(bars.num_rows - 7, 1)
    assert f"{feb} and {extra}: both hold date={last['date'][0].as_py()} ticker={last['ticker'][0].as_py()}" in msg
    assert "key columns 'date'/'ticker' and '날짜'/'티커'" in msg and "7 duplicate" in msg
    assert ("folders month=2 and month=02 name the same month" in msg) == (folder == "month=02")


@pytest.mark.parametrize("folder", ["month=2", "month=02"])
def test_a_month_split_over_files_without_duplicates_still_ingests(tmp_path, bars, folder):
    root = _tree(tmp_path, bars, "seed")
    whole, _ = ingest.load_tree(root, START, END)
    feb = market.partition_path(root, 2021, 2)
    rows = pq.read_table(feb)
    extra = root / "year=2021" / folder / "extra.parquet"
    extra.parent.mkdir(exist_ok=True)
    pq.write_table(rows.slice(20), extra)
    pq.write_table(rows.slice(0, 20), feb)
    table, report = ingest.load_tree(root, START, END)
    assert table.equals(whole) and report.metrics("krx")["files"] == 3


@pytest.mark.parametrize("vendor,col,change,pattern", [
    # seed: the cap is given, shares derived from it (was blamed on 'shares'); pykrx: cap and shares given
    # (a zero cap passed, and snapshots turned its month's market days into NaN)
    ("seed", "market_cap", lambda v: -v, r"column 'market_cap' has non-positive market caps"),
    ("pykrx", "시가총액", lambda v: 0, r"column '시가총액' \(market_cap\) has non-positive market caps"),
    ("fdr", "Shares", lambda v: 0, r"column 'Shares' \(shares\) has non-positive share counts, so market_cap = "
                                   r"'Close' x 'Shares' is not positive"),  # no MarCap: derived from Shares
])
def test_non_positive_market_caps_name_file_column_and_row(tmp_path, bars, vendor, col, change, pattern):
    root = _tree(tmp_path, bars, vendor)

    def corrupt(t):
        t = t.drop_columns(["MarCap"]) if vendor == "fdr" else t
        return _cell(t, col, 0, change(t[col][0].as_py()))

    path = _rewrite(root, 2, corrupt)
    date, ticker = _first_feb_row(bars)
    with pytest.raises(DataValidationError, match=pattern) as err:
        ingest.load_tree(root, START, END)
    assert str(path) in str(err.value)
    assert f"1 row(s), first at date={date} ticker=" in str(err.value) and ticker.lstrip("0") in str(err.value)


@pytest.mark.parametrize("vendor,col,value,pattern", [
    ("seed", "close", np.inf, r"column 'close' has infinite values \(a missing close is empty, null or NaN\)"),
    ("fdr", "Close", -np.inf, r"column 'Close' \(close\) has infinite values"),  # both were dropped as missing
    ("pykrx", "고가", np.inf, r"column '고가' \(high\) has infinite values"),  # was "'high' has NaN or non-positive"
    ("seed", "volume", np.inf, r"column 'volume' has infinite values"),  # was 'must hold whole numbers'
    ("seed", "market_cap", np.inf, r"column 'market_cap' has infinite values"),  # was '1 null value(s)'
    ("fdr", "Shares", np.inf, r"column 'Shares' \(shares\) has infinite values"),  # was left null
])
def test_infinite_numbers_are_errors_not_missing_values(tmp_path, bars, vendor, col, value, pattern):
    root = _tree(tmp_path, bars, vendor)
    path = _rewrite(root, 2, lambda t: _cell(t, col, 0, value, pa.float64()))
    date, _ = _first_feb_row(bars)
    with pytest.raises(DataValidationError, match=pattern) as err:
        ingest.load_tree(root, START, END)
    assert str(path) in str(err.value) and f"first at date={date}" in str(err.value)


def _no_column(name):
    return lambda t: t.drop_columns([name])


@pytest.mark.parametrize("vendor,col,value,typ,pre,pattern", [
    # A float cap beyond int64 was cast to -2**63 (then blamed on 'shares'); uint64 raised a bare ArrowInvalid.
    ("seed", "market_cap", 1e20, pa.float64(), None, r"column 'market_cap' has numbers beyond what int64 holds"),
    ("fdr", "MarCap", 2**64 - 5, pa.uint64(), None,
     r"column 'MarCap' \(market_cap\) has numbers beyond .*value 18446744073709551611"),
    ("fdr", "Amount", 2**63, pa.uint64(), None, r"column 'Amount' \(value\) has numbers beyond what int64 holds"),
    ("fdr", "Volume", 1e20, pa.float64(), None,  # was "column 'volume' cannot be read as int64"
     r"column 'Volume' \(volume\) has numbers beyond what int64 holds"),
    # Derived amounts: close x volume wrapped to a negative value, close x shares to a cap that passed.
    ("seed", "volume", 9e18, pa.float64(), None, r"'value' = 'close' x 'volume' has numbers beyond what int64"),
    ("fdr", "Shares", 5e18, pa.int64(), _no_column("MarCap"),
     r"'market_cap' = 'Close' x 'Shares' has numbers beyond what int64 holds"),
])
def test_numbers_beyond_int64_name_file_and_column(tmp_path, bars, vendor, col, value, typ, pre, pattern):
    root = _tree(tmp_path, bars, vendor)
    path = _rewrite(root, 2, lambda t: _cell(pre(t) if pre else t, col, 0, value, typ))
    with pytest.raises(DataValidationError, match=pattern) as err:
        ingest.load_tree(root, START, END)
    assert str(path) in str(err.value) and "1 row(s), first at date=" in str(err.value)
