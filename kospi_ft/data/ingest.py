"""A user's own KRX daily tree -> the market contract (`kospi_ft.data.market`), with a count per normalisation.

The tree keeps the spec's layout, `year=YYYY/month=M/*.parquet`; its columns may come from the seed system, from
pykrx or from FinanceDataReader. Each file is read on its own and normalised:

- Column names: every contract column accepts the names in `ALIASES` (case does not matter), e.g. `종가` (pykrx)
  or `Close` (FinanceDataReader) for `close`, `pe_ratio` (seed system) for `per`. Two columns naming the same
  contract column are an error; any other column (sma_20, rsi_14, 등락률, Change, ...) is ignored.
- Required: date, ticker, open, high, low, close, volume, and market_cap or shares (caps weight the market return).
  Derived when absent: name from the universe (null for other tickers: only universe stocks reach a snapshot),
  value = close x volume, market_cap = close x shares, shares = market_cap / close (null when neither is there).
  per and pbr are left null when absent (such stocks then never appear in a real snapshot).
- Dates: date or timestamp columns; a timestamp with a time zone gives its local (KST) date.
- Tickers: `"005930"`, `"005930 KP"`, `"005930.KS"` (exchange suffix), `"A005930"` (the "A" prefix of Korean
  broker APIs), the integer 5930 or the text "5930" (zero-padded) all become "005930".
- Trading halts in the KRX convention (pykrx: "거래정지 종목은 종가만 존재하며 나머지는 0"): open = high = low = 0
  and volume 0 -> open = high = low = close, the contract's form.
- A row with a missing close (null or NaN) is dropped, as the seed system drops it. An infinite number in any
  price or count column is an error, not a missing value.
- KRW amounts (value, market_cap) given as floats are rounded to whole won; volume and shares must be whole.
  These four columns are int64: a number beyond it (given, or derived as close x volume) is an error.
- Market caps (given or derived) must be positive: they weight the market return.
- A month's rows may be spread over several files (or over folders `month=2` and `month=02`), but a
  (date, ticker) key must appear in one of them only.

The result is validated like any contract tree (`market.check_rows`); everything else is a DataValidationError
naming file and column (the user's column name where the check knows it). `IngestReport` counts what was
normalised, per reason (metrics/market_ingest.json).

Column names were checked against the libraries' source (the `fetch` tool, 2026-12-01):
- pykrx (github sharebook-kr/pykrx, pykrx/website/krx/market/wrap.py): get_market_ohlcv_by_date -> index 날짜,
  시가 고가 저가 종가 거래량 거래대금 등락률; get_market_ohlcv_by_ticker -> index 티커, ... 등락률 시가총액;
  get_market_cap_by_* -> 시가총액 거래량 거래대금 상장주식수; get_market_fundamental_by_* -> BPS PER PBR EPS DIV DPS;
  get_market_price_change_by_ticker and the ticker lists -> 종목명; sector classifications -> 종목코드.
- FinanceDataReader (github FinanceData/FinanceDataReader, src/FinanceDataReader/krx/data.py, naver/data.py,
  krx/listing.py): DataReader -> index Date, Open High Low Close Volume Change (+ UpDown Comp Amount MarCap Shares
  from the KRX source); StockListing('KRX') -> Code Name ... Amount Marcap Stocks.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataValidationError
from . import market
from .universe import UNIVERSE

#: Accepted source names per contract column, besides the contract name itself (matched case-insensitively).
ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("날짜", "Date"),
    "ticker": ("티커", "종목코드", "Code", "Symbol"),
    "name": ("종목명", "Name"),
    "open": ("시가", "Open"),
    "high": ("고가", "High"),
    "low": ("저가", "Low"),
    "close": ("종가", "Close"),
    "volume": ("거래량", "Volume"),
    "value": ("거래대금", "Amount"),
    "market_cap": ("시가총액", "MarCap"),
    "shares": ("상장주식수", "Shares", "Stocks"),
    "per": ("pe_ratio",),
    "pbr": ("pb_ratio",),
}
REQUIRED = ("date", "ticker", "open", "high", "low", "close", "volume")
DERIVED = ("name", "value", "market_cap", "shares")
TICKER_FORMS = ("suffix", "prefix", "zero_padded")
_LOOKUP = {n.casefold(): col for col in market.COLUMNS for n in (col, *ALIASES.get(col, ()))}
_TICKER_RE = re.compile(r"^(?:(?P<prefix>A)(?P<a>\d{6})|(?P<b>\d{6})(?P<suffix>(?:\s+|\.)[A-Za-z][A-Za-z ]*)?"
                        r"|(?P<short>\d{1,5}))$")
_NAMES = {s.code: s.name_ko for s in UNIVERSE}
_INT64_BOUND = 2.0 ** 63  # the first float beyond int64 (every float below it converts exactly)


@dataclass
class IngestReport:
    """What ingest normalised, per reason. Row counts unless named otherwise; keys are fixed, zeros included.

    `left_null`: rows left null because the tree has no such column (or, for name, the ticker is not in the
    universe; for shares, neither shares nor market cap is known).
    """

    files: int = 0
    months: int = 0
    empty_months: int = 0                 # month folders in range with no rows (no file, or empty files)
    ignored_files: int = 0                # non-parquet files in the tree (.DS_Store, :Zone.Identifier, notes)
    rows_read: int = 0
    rows_written: int = 0
    dropped_missing_close: int = 0
    halts_fixed: int = 0
    aliases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(market.COLUMNS, 0))  # files per column
    tickers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TICKER_FORMS, 0))
    derived: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DERIVED, 0))
    left_null: dict[str, int] = field(default_factory=lambda: dict.fromkeys(sorted(market.NULLABLE), 0))
    ignored_columns: dict[str, int] = field(default_factory=dict)    # source column -> files

    def add(self, other: "IngestReport") -> None:
        for name in ("files", "rows_read", "dropped_missing_close", "halts_fixed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("aliases", "tickers", "derived", "left_null", "ignored_columns"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + v

    def metrics(self, source: str) -> dict[str, Any]:
        """metrics/market_ingest.json: the same keys for both sources (the simulator's are all zero)."""
        return {
            "source": source, "files": self.files, "months": self.months, "empty_months": self.empty_months,
            "ignored_files": self.ignored_files, "rows_read": self.rows_read, "rows_written": self.rows_written,
            "rows_dropped": {"missing_close": self.dropped_missing_close}, "halts_fixed": self.halts_fixed,
            "aliases_applied_files": self.aliases, "tickers_normalised": self.tickers,
            "columns_derived": self.derived, "columns_left_null": self.left_null,
            "columns_ignored": len(self.ignored_columns),
            "columns_ignored_names": sorted(self.ignored_columns),
        }


def map_columns(names: list[str], file: Path, report: IngestReport) -> dict[str, str]:
    """contract column -> source column name; other names are counted as ignored."""
    found: dict[str, str] = {}
    for name in names:
        col = _LOOKUP.get(name.strip().casefold())
        if col is None:
            report.ignored_columns[name] = report.ignored_columns.get(name, 0) + 1
            continue
        if col in found:
            raise DataValidationError(f"{file}: columns {found[col]!r} and {name!r} both name {col!r}: keep one")
        found[col] = name
        if name != col:
            report.aliases[col] += 1
    missing = [c for c in REQUIRED if c not in found]
    if "market_cap" not in found and "shares" not in found:
        missing.append("market_cap")
    if missing:
        col = missing[0]
        also = " (or 'shares', to derive it from)" if col == "market_cap" else ""
        accepted = ", ".join(repr(n) for n in (col, *ALIASES[col]))
        raise DataValidationError(f"{file}: missing column {col!r}{also}; accepted names: {accepted}")
    return found


def _ticker_text(value: str, file: Path) -> tuple[str, str | None]:
    m = _TICKER_RE.match(value.strip())
    if m is None:
        raise DataValidationError(
            f"{file}: column 'ticker' value {value!r} is not a KRX code (accepted: '005930', '005930 KP', "
            f"'005930.KS', 'A005930', 5930)")
    if m["a"]:
        return m["a"], "prefix"
    if m["b"]:
        return m["b"], "suffix" if m["suffix"] else None
    return m["short"].zfill(6), "zero_padded"


def normalise_tickers(arr: pa.ChunkedArray, file: Path, report: IngestReport) -> pa.Array:
    """Any accepted ticker form -> the 6-digit code, one Python call per distinct value (not per row)."""
    arr = arr.combine_chunks()
    if pa.types.is_floating(arr.type):
        values = arr.to_numpy(zero_copy_only=False)
        finite = np.isfinite(values)
        if (np.mod(values[finite], 1) != 0).any():
            raise DataValidationError(f"{file}: column 'ticker' holds fractional numbers, not KRX codes")
        arr = pa.array(np.where(finite, values, 0), mask=~finite).cast(pa.int64())  # NaN: null (an error later)
    if pa.types.is_integer(arr.type):
        if pc.any(pc.or_(pc.less(arr, 0), pc.greater(arr, 999_999))).as_py():
            raise DataValidationError(f"{file}: column 'ticker' holds numbers outside 0..999999, not KRX codes")
        text = pc.utf8_lpad(pc.cast(arr, pa.string()), 6, "0")
        report.tickers["zero_padded"] += len(arr) - arr.null_count
        return text
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise DataValidationError(f"{file}: column 'ticker' has type {arr.type}, expected text or an integer code")
    enc = arr.dictionary_encode()
    uniques = enc.dictionary.to_pylist()
    codes, kinds = zip(*(_ticker_text(u, file) for u in uniques)) if uniques else ((), ())
    idx = enc.indices.to_numpy(zero_copy_only=False)
    if enc.indices.null_count:
        idx = np.where(enc.indices.is_valid().to_numpy(zero_copy_only=False), idx, -1)
    per_unique = np.bincount(idx[idx >= 0], minlength=len(uniques))
    for kind, n in zip(kinds, per_unique):
        if kind is not None:
            report.tickers[kind] += int(n)
    return pa.DictionaryArray.from_arrays(enc.indices, pa.array(codes, pa.string())).cast(pa.string())


def _dates(arr: pa.ChunkedArray, file: Path) -> pa.ChunkedArray:
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        return pc.cast(arr, pa.date32())  # a zoned timestamp casts to its local date
    raise DataValidationError(f"{file}: column 'date' has type {arr.type}, expected a date or timestamp")


def _column(names: dict[str, str], col: str) -> str:
    """The user's column as errors name it: 'column '종가' (close)', or 'column 'close''."""
    return f"column {names[col]!r}" + ("" if names[col] == col else f" ({col})")


def _first_at(raw: pa.Table, mask: np.ndarray, values: np.ndarray | None = None) -> str:
    """Count and first offending row of `raw` (the user's rows), with its local date and the ticker as given."""
    i = int(np.flatnonzero(mask)[0])
    date = raw["date"].slice(i, 1)
    if pa.types.is_timestamp(date.type):
        date = pc.cast(date, pa.date32())  # a zoned timestamp: its local date, as the contract has it
    value = "" if values is None else f", value {values[i].item()}"
    return (f"{int(mask.sum())} row(s), first at date={date[0].as_py()} "
            f"ticker={raw['ticker'][i].as_py()!r}{value}")


def _finite(values: np.ndarray, raw: pa.Table, col: str, names: dict[str, str], file: Path) -> np.ndarray:
    """`values` unless a number is infinite: no price or count is, and treating one as missing hides a bad file."""
    bad = np.isinf(values)
    if bad.any():
        hint = " (a missing close is empty, null or NaN)" if col == "close" else ""
        raise DataValidationError(
            f"{file}: {_column(names, col)} has infinite values{hint}: {_first_at(raw, bad, values)}")
    return values


def _fits_int64(values: np.ndarray, raw: pa.Table, what: str, file: Path) -> np.ndarray:
    """`values` unless one is beyond int64, which a cast would wrap to another number (NaN stays missing)."""
    if values.dtype == np.uint64:  # compared as integers: 2**63 - 1 as a float is already 2**63
        bad = values > np.uint64(2**63 - 1)
    else:
        with np.errstate(invalid="ignore"):
            bad = np.abs(values) >= _INT64_BOUND
    if bad.any():
        raise DataValidationError(f"{file}: {what} has numbers beyond what int64 holds (about 9.2e18): "
                                  f"{_first_at(raw, bad, values)}")
    return values


def _numbers(table: pa.Table, col: str, file: Path) -> np.ndarray:
    arr = table[col]
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_null(arr.type)):
        raise DataValidationError(f"{file}: column {col!r} has type {arr.type}, expected a number")
    # Unchecked: an integer beyond 2**53 (a KRW amount) becomes the nearest float, which is what arithmetic wants.
    return pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)


def _whole_krw(x: np.ndarray, raw: pa.Table, what: str, file: Path) -> pa.Array:
    """Float KRW amounts rounded to whole won, NaN as null (the contract's int64)."""
    x = _fits_int64(np.round(x), raw, what, file)
    nan = np.isnan(x)
    return pa.array(np.where(nan, 0.0, x).astype(np.int64), mask=nan if nan.any() else None)


def _amount(table: pa.Table, col: str, names: dict[str, str], file: Path) -> pa.Array:
    """A KRW amount column as int64: integers as they are (exact beyond 2**53), floats rounded to whole won."""
    arr = table[col].combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_integer(arr.type):
        if pa.types.is_uint64(arr.type):  # the only integer type with values int64 cannot hold
            _fits_int64(arr.fill_null(0).to_numpy(zero_copy_only=False), table, _column(names, col), file)
        return arr.cast(pa.int64())
    return _whole_krw(_finite(_numbers(table, col, file), table, col, names, file), table, _column(names, col), file)


def _positive_caps(cap: pa.Array, close: np.ndarray, shares: np.ndarray | None, raw: pa.Table,
                   names: dict[str, str], file: Path) -> None:
    """Market caps weight the market return: one <= 0 would turn its month's market days into NaN downstream."""
    values = cap.to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        bad = values <= 0  # null: NaN here, a null error in check_rows
    if "market_cap" in names:
        if bad.any():
            raise DataValidationError(f"{file}: {_column(names, 'market_cap')} has non-positive market caps: "
                                      f"{_first_at(raw, bad, values)}")
        return
    bad &= close > 0  # derived from close x shares: a close <= 0 is check_rows' error about close
    if bad.any():
        raise DataValidationError(
            f"{file}: {_column(names, 'shares')} has non-positive share counts, so market_cap = "
            f"{names['close']!r} x {names['shares']!r} is not positive: {_first_at(raw, bad, shares)}")


def normalise_file(file: Path, year: int, month: int) -> tuple[pa.Table, IngestReport]:
    """One file of the user's tree -> validated contract rows, and what was done to get there."""
    report = IngestReport(files=1)
    with market.open_parquet(file) as pf:
        names = map_columns(pf.schema_arrow.names, file, report)
        raw = market.read_columns(pf, file, list(names.values()))
    raw = raw.rename_columns([next(c for c, n in names.items() if n == s) for s in raw.column_names])
    report.rows_read = raw.num_rows

    close = _finite(_numbers(raw, "close", file), raw, "close", names, file)
    keep = ~np.isnan(close)  # null or NaN: a missing close
    if not keep.all():
        report.dropped_missing_close = int((~keep).sum())
        raw, close = raw.filter(pa.array(keep)), close[keep]
    n = raw.num_rows
    cols: dict[str, Any] = {"date": _dates(raw["date"], file),
                            "ticker": normalise_tickers(raw["ticker"], file, report), "close": close}
    ohl = {c: _finite(_numbers(raw, c, file), raw, c, names, file) for c in ("open", "high", "low")}
    volume = _fits_int64(_finite(_numbers(raw, "volume", file), raw, "volume", names, file), raw,
                         _column(names, "volume"), file)
    halted = (ohl["open"] == 0) & (ohl["high"] == 0) & (ohl["low"] == 0) & (volume == 0)
    if halted.any():
        report.halts_fixed = int(halted.sum())
        for c in ohl:
            ohl[c] = np.where(halted, close, ohl[c])
    cols.update(ohl, volume=volume)

    if "name" in raw.column_names:
        cols["name"] = raw["name"]
    else:
        named = pa.array([_NAMES.get(t) for t in pc.unique(cols["ticker"]).to_pylist()], pa.string())
        cols["name"] = pc.take(named, pc.index_in(cols["ticker"], pc.unique(cols["ticker"])))
        report.derived["name"] = n - cols["name"].null_count
        report.left_null["name"] = cols["name"].null_count
    if "value" in raw.column_names:
        cols["value"] = _amount(raw, "value", names, file)
    else:
        cols["value"] = _whole_krw(close * volume, raw, f"'value' = {names['close']!r} x {names['volume']!r}", file)
        report.derived["value"] = n
    shares = None
    if "shares" in raw.column_names:
        shares = _fits_int64(_finite(_numbers(raw, "shares", file), raw, "shares", names, file), raw,
                             _column(names, "shares"), file)
    if "market_cap" in raw.column_names:
        cols["market_cap"] = _amount(raw, "market_cap", names, file)
    else:
        cols["market_cap"] = _whole_krw(close * shares, raw,
                                        f"'market_cap' = {names['close']!r} x {names['shares']!r}", file)
        report.derived["market_cap"] = n
    _positive_caps(cols["market_cap"], close, shares, raw, names, file)
    if shares is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.round(cols["market_cap"].to_numpy(zero_copy_only=False).astype(float) / close)
        shares = _fits_int64(np.where(np.isinf(shares), np.nan, shares), raw,
                             f"'shares' = {names['market_cap']!r} / {names['close']!r}", file)
        report.derived["shares"] = int(np.isfinite(shares).sum())
        report.left_null["shares"] = n - report.derived["shares"]
    cols["shares"] = pa.array(shares, mask=~np.isfinite(shares))
    for col in ("per", "pbr"):
        if col in raw.column_names:
            cols[col] = _numbers(raw, col, file)
        else:
            cols[col] = pa.nulls(n, pa.float64())
            report.left_null[col] = n

    table = market.cast(pa.table({c: cols[c] for c in market.COLUMNS}), file)
    market.check_rows(table, file, year, month)
    return table, report


def _key_columns(file: Path) -> str:
    """The user's names of a file's key columns, for an error message (the file was read fine before)."""
    names = map_columns(pq.read_schema(file).names, file, IngestReport())
    return f"{names['date']!r}/{names['ticker']!r}"


def check_duplicates(files: list[tuple[market.Partition, Path]], tables: list[pa.Table]) -> None:
    """No (date, ticker) key in two files of one month (check_rows saw each file alone).

    A month's files are all its folder's, or both folders' where `month=2` and `month=02` name the same month;
    rows outside a file's own month are already an error, so only files of one month are compared.
    """
    months: dict[tuple[int, int], list[int]] = {}
    for i, (part, _) in enumerate(files):
        months.setdefault((part.year, part.month), []).append(i)
    for (year, month), idx in months.items():
        if len(idx) < 2:
            continue
        keys = [market.day_numbers(tables[i]).astype(np.int64) * 1_000_000 + market.ticker_numbers(tables[i])
                for i in idx]
        key, owner = np.concatenate(keys), np.repeat(idx, [len(k) for k in keys])
        order = np.argsort(key, kind="stable")
        dup = key[order[1:]] == key[order[:-1]]
        if not dup.any():
            continue
        j = int(np.flatnonzero(dup)[0])
        (_, a), (_, b) = files[owner[order[j]]], files[owner[order[j + 1]]]
        day, code = divmod(int(key[order[j]]), 1_000_000)
        same = f"; folders {a.parent.name} and {b.parent.name} name the same month" if a.parent != b.parent else ""
        key_a, key_b = _key_columns(a), _key_columns(b)
        raise DataValidationError(
            f"{a} and {b}: both hold date={np.datetime64(day, 'D')} ticker={code:06d} (key columns {key_a}"
            f"{'' if key_a == key_b else ' and ' + key_b}): {int(dup.sum())} duplicate (date, ticker) row(s) "
            f"across the files of {year}-{month:02d}{same}; keep each row in one file")


def load_tree(root: str | Path, start: dt.date, end: dt.date, progress: bool = False
              ) -> tuple[pa.Table, IngestReport]:
    """The user's tree for [start, end], normalised and validated, sorted by (date, ticker), with its report."""
    root = Path(root)
    listing = market.list_tree(root)
    files = market.files_within(listing, start, end)
    results = market.read_files(files, normalise_file, progress, desc="ingest KRX tree")
    report = IngestReport(ignored_files=len(listing.ignored))
    rows_per_month: dict[tuple[int, int], int] = {(p.year, p.month): 0 for p in listing.within(start, end)}
    check_duplicates(files, [t for t, _ in results])
    for (part, _), (table, file_report) in zip(files, results):
        report.add(file_report)
        rows_per_month[(part.year, part.month)] += table.num_rows
    report.months = len(rows_per_month)
    report.empty_months = sum(1 for v in rows_per_month.values() if v == 0)
    table = market.in_range(pa.concat_tables([t for t, _ in results]), start, end, root)
    report.rows_written = table.num_rows
    return table, report
