"""KRX daily bars: the column contract, the partitioned parquet layout, validation and range loading.

Layout (the spec's): `<root>/year=YYYY/month=M/data.parquet`, one file per month, month not zero-padded (a
month may hold several `*.parquet` files; other files, e.g. `.DS_Store` or Windows `:Zone.Identifier` streams,
are ignored). A `month=` folder outside 1..12 is an error wherever it is, and so is a parquet file outside the
layout.

Columns (one row per trading day and ticker):

| column     | type    | meaning                                                            |
|------------|---------|--------------------------------------------------------------------|
| date       | date32  | trading day (KST)                                                  |
| ticker     | string  | 6-digit KRX code, leading zeros kept                               |
| name       | string  | Korean company name (null allowed: only universe stocks are used)  |
| open       | float64 | open price, KRW (> 0; a halted day repeats the previous close)     |
| high       | float64 | high price, KRW (>= open, close, low)                              |
| low        | float64 | low price, KRW (> 0)                                               |
| close      | float64 | close price, KRW (> 0)                                             |
| volume     | int64   | shares traded (0 on a trading halt)                                |
| value      | int64   | trading value, KRW                                                 |
| market_cap | int64   | close x shares, KRW                                                |
| shares     | int64   | listed shares (null allowed: nothing downstream reads it)          |
| per        | float64 | price / trailing EPS; NaN or negative for loss-making firms        |
| pbr        | float64 | price / book value per share; NaN when book value is unknown       |

Integer columns may arrive as any integer type and prices as any numeric type (KRX prices are integers);
they are cast to the types above on load. Anything else is a `DataValidationError` naming file and column.
This is the contract of the normalised tree (`paths.market_dir`); a user's tree in another vendor's format is
brought to it by `kospi_ft.data.ingest`.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import field_validator, model_validator

from ..errors import DataValidationError
from ..params import Section

SCHEMA = pa.schema([
    ("date", pa.date32()),
    ("ticker", pa.string()),
    ("name", pa.string()),
    ("open", pa.float64()),
    ("high", pa.float64()),
    ("low", pa.float64()),
    ("close", pa.float64()),
    ("volume", pa.int64()),
    ("value", pa.int64()),
    ("market_cap", pa.int64()),
    ("shares", pa.int64()),
    ("per", pa.float64()),
    ("pbr", pa.float64()),
])
COLUMNS = tuple(SCHEMA.names)
PRICE_COLUMNS = ("open", "high", "low", "close")
#: Columns that may hold nulls (see the table above); every other column must be complete.
NULLABLE = frozenset({"name", "shares", "per", "pbr"})
_YEAR_DIR = re.compile(r"^year=(\d{4})$")
_MONTH_DIR = re.compile(r"^month=(\d+)$")
T = TypeVar("T")


@dataclass(frozen=True)
class MonthRange:
    """Inclusive (year, month) range used for partition pruning."""

    start: tuple[int, int]
    end: tuple[int, int]

    @classmethod
    def from_dates(cls, start: dt.date, end: dt.date) -> "MonthRange":
        return cls((start.year, start.month), (end.year, end.month))

    def months(self) -> list[tuple[int, int]]:
        (y, m), out = self.start, []
        while (y, m) <= self.end:
            out.append((y, m))
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return out


def partition_path(root: Path, year: int, month: int) -> Path:
    return Path(root) / f"year={year}" / f"month={month}" / "data.parquet"


def _kind_ok(col: str, typ: pa.DataType) -> bool:
    if col == "date":
        return pa.types.is_date(typ) or pa.types.is_timestamp(typ)
    if col in ("ticker", "name"):
        return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ)
    if col in ("volume", "value", "market_cap", "shares"):
        return pa.types.is_integer(typ) or pa.types.is_floating(typ)
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ)


def check_schema(schema: pa.Schema, file: Path) -> None:
    """Every contract column present with a compatible type; misnamed columns get a suggestion."""
    names = set(schema.names)
    for col in COLUMNS:
        if col not in names:
            extra = [n for n in schema.names if n not in COLUMNS]
            guess = [n for n in extra if col in n.lower()] or difflib.get_close_matches(col, extra, n=1, cutoff=0.5)
            hint = f" (found {guess[0]!r}: misnamed?)" if guess else ""
            raise DataValidationError(f"{file}: missing column {col!r}{hint}")
        typ = schema.field(col).type
        if not _kind_ok(col, typ):
            raise DataValidationError(f"{file}: column {col!r} has type {typ}, expected {SCHEMA.field(col).type}")


def cast(table: pa.Table, file: Path) -> pa.Table:
    """The contract's columns of `table` in SCHEMA order and types; whole-number checks for integer columns."""
    cols = []
    for field in SCHEMA:
        arr = table.column(field.name)
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if field.name == "date" and pa.types.is_timestamp(arr.type):
            arr = pc.cast(arr, pa.date32())
        if pa.types.is_integer(field.type) and pa.types.is_floating(arr.type):
            values = arr.to_numpy(zero_copy_only=False)
            nan = np.isnan(values)
            if (nan.any() and field.name not in NULLABLE) or (np.mod(values[~nan], 1) != 0).any():
                raise DataValidationError(f"{file}: column {field.name!r} must hold whole numbers without NaN")
            if nan.any():  # NaN -> null, which the integer cast keeps
                arr = pa.array(values, mask=nan)
        try:
            cols.append(arr.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataValidationError(f"{file}: column {field.name!r} cannot be read as {field.type}: {err}") from None
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def _first_bad(table: pa.Table, mask: np.ndarray) -> str:
    i = int(np.flatnonzero(mask)[0])
    return f"{int(mask.sum())} row(s), first at date={table['date'][i].as_py()} ticker={table['ticker'][i].as_py()}"


def day_numbers(table: pa.Table) -> np.ndarray:
    """Days since 1970-01-01 as int32 (date32's storage), without going through Python dates."""
    return table["date"].cast(pa.int32()).to_numpy(zero_copy_only=False)


def ticker_numbers(table: pa.Table) -> np.ndarray:
    """The 6-digit codes as int32 (valid once check_rows passed): cheap keys for sorting and grouping."""
    return table["ticker"].cast(pa.int32()).to_numpy(zero_copy_only=False)


def check_rows(table: pa.Table, file: Path, year: int | None, month: int | None) -> None:
    """Row-level contract: positive finite prices, sane OHLC, no duplicate keys, rows inside their partition."""
    if table.num_rows == 0:
        return
    for col in (c for c in COLUMNS if c not in NULLABLE):
        nulls = table.column(col).null_count
        if nulls:
            raise DataValidationError(f"{file}: column {col!r} has {nulls} null value(s)")
    tickers = table["ticker"]
    ok = pc.and_(pc.equal(pc.utf8_length(tickers), 6), pc.utf8_is_digit(tickers))
    bad = ~ok.to_numpy(zero_copy_only=False)
    if bad.any():
        raise DataValidationError(f"{file}: column 'ticker' must be a 6-digit KRX code: {_first_bad(table, bad)}")
    for col in PRICE_COLUMNS:
        values = table[col].to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            raise DataValidationError(f"{file}: column {col!r} has NaN or non-positive prices: {_first_bad(table, bad)}")
    o, h, l, c = (table[col].to_numpy() for col in PRICE_COLUMNS)
    bad = (h < np.maximum(o, c)) | (l > np.minimum(o, c))
    if bad.any():
        raise DataValidationError(f"{file}: columns 'high'/'low' do not bracket open/close: {_first_bad(table, bad)}")
    for col in ("volume", "value", "shares"):
        bad = table[col].fill_null(0).to_numpy() < 0
        if bad.any():
            raise DataValidationError(f"{file}: column {col!r} has negative values: {_first_bad(table, bad)}")
    days = day_numbers(table)
    if year is not None:
        months = days.astype("datetime64[D]").astype("datetime64[M]")
        bad = months != np.datetime64(f"{year:04d}-{month:02d}", "M")
        if bad.any():
            raise DataValidationError(
                f"{file}: column 'date' has rows outside the partition year={year}/month={month}: {_first_bad(table, bad)}")
    key = days.astype(np.int64) * 1_000_000 + ticker_numbers(table)
    order = np.argsort(key, kind="stable")
    dup = np.zeros(len(key), dtype=bool)
    dup[order[1:]] = key[order[1:]] == key[order[:-1]]
    if dup.any():
        raise DataValidationError(f"{file}: duplicate (date, ticker) rows: {_first_bad(table, dup)}")


def sort_by_date_ticker(table: pa.Table) -> pa.Table:
    """Stable (date, ticker) order via integer keys; a no-op when the rows already are in that order."""
    key = day_numbers(table).astype(np.int64) * 1_000_000 + ticker_numbers(table)
    if len(key) < 2 or bool((key[1:] >= key[:-1]).all()):
        return table
    return table.take(pa.array(np.argsort(key, kind="stable")))


@dataclass(frozen=True)
class Partition:
    """One `year=Y/month=M` folder: its parquet files sorted by name (none: an empty month)."""

    year: int
    month: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class TreeListing:
    root: Path
    partitions: tuple[Partition, ...]    # sorted by (year, month)
    ignored: tuple[Path, ...]            # files that are not parquet (OS metadata, notes), sorted

    def within(self, start: dt.date, end: dt.date) -> list[Partition]:
        lo, hi = (start.year, start.month), (end.year, end.month)
        return [p for p in self.partitions if lo <= (p.year, p.month) <= hi]


def list_tree(root: str | Path) -> TreeListing:
    """Every `year=YYYY/month=M` folder under root with its `*.parquet` files; other files are listed as ignored.

    A `month=` folder outside 1..12 is an error wherever it is (it would otherwise fall out of every date range
    unnoticed), and so is a parquet file anywhere but directly in a `year=YYYY/month=M` folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(f"{root}: market data directory not found")
    months: dict[tuple[int, int], list[Path]] = {}
    ignored: list[Path] = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        for i, part in enumerate(parts):
            m = _MONTH_DIR.match(part)
            if m and not 1 <= int(m.group(1)) <= 12:
                raise DataValidationError(f"{root.joinpath(*parts[:i + 1])}: {part} is not a month (1-12)")
        in_layout = len(parts) >= 2 and _YEAR_DIR.match(parts[0]) and _MONTH_DIR.match(parts[1])
        if path.is_dir():
            if in_layout and len(parts) == 2:
                months.setdefault((int(parts[0][5:]), int(parts[1][6:])), [])
            continue
        if path.suffix != ".parquet":
            ignored.append(path)
        elif in_layout and len(parts) == 3:
            months.setdefault((int(parts[0][5:]), int(parts[1][6:])), []).append(path)
        else:
            raise DataValidationError(f"{path}: not in the layout year=YYYY/month=M/data.parquet")
    partitions = tuple(Partition(y, m, tuple(sorted(files, key=lambda f: f.name)))
                       for (y, m), files in sorted(months.items()))
    return TreeListing(root, partitions, tuple(ignored))


def open_parquet(file: Path) -> pq.ParquetFile:
    """A parquet file's reader; a truncated or non-parquet file is a DataValidationError naming it."""
    try:
        return pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataValidationError(f"{file}: unreadable parquet: {err}") from None


def read_columns(pf: pq.ParquetFile, file: Path, columns: list[str]) -> pa.Table:
    try:
        return pf.read(columns=columns, use_threads=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataValidationError(f"{file}: unreadable parquet: {err}") from None


def read_files(files: list[tuple[Partition, Path]], read: Callable[[Path, int, int], T], progress: bool = False,
               desc: str = "load market") -> list[T]:
    """`read(file, year, month)` for every file, in parallel threads (Arrow and numpy release the GIL).

    Results come back in file order, so the first bad file in the tree is the one reported.
    """
    with cf.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(read, f, p.year, p.month) for p, f in files]
        it = futures
        if progress:
            from tqdm import tqdm
            it = tqdm(futures, desc=desc, unit="file")
        return [f.result() for f in it]


def _read_contract_file(file: Path, year: int, month: int) -> pa.Table:
    with open_parquet(file) as pf:
        check_schema(pf.schema_arrow, file)
        raw = read_columns(pf, file, list(COLUMNS))
    table = cast(raw, file)
    check_rows(table, file, year, month)
    return table


def in_range(table: pa.Table, start: dt.date, end: dt.date, root: Path) -> pa.Table:
    """Rows with start <= date <= end, sorted by (date, ticker); no row left is an error naming the root."""
    days = day_numbers(table)
    lo, hi = (np.datetime64(d, "D").astype(np.int64) for d in (start, end))
    mask = (days >= lo) & (days <= hi)
    if not mask.all():
        table = table.filter(pa.array(mask))
    if table.num_rows == 0:
        raise DataValidationError(f"{root}: no rows between {start} and {end} (column 'date')")
    return sort_by_date_ticker(table)


def files_within(listing: TreeListing, start: dt.date, end: dt.date) -> list[tuple[Partition, Path]]:
    """The parquet files of the months that can hold [start, end] (the others are never opened)."""
    if not any(p.files for p in listing.partitions):
        raise DataValidationError(f"{listing.root}: no year=YYYY/month=M/*.parquet files found")
    files = [(p, f) for p in listing.within(start, end) for f in p.files]
    if not files:
        raise DataValidationError(f"{listing.root}: no partitions between {start} and {end}")
    return files


def load_range(root: str | Path, start: dt.date, end: dt.date, progress: bool = False) -> pa.Table:
    """Validated rows of a tree in the contract format with start <= date <= end, sorted by (date, ticker).

    Only the months that can hold the range are opened.
    """
    root = Path(root)
    files = files_within(list_tree(root), start, end)
    tables = read_files(files, _read_contract_file, progress)
    return in_range(pa.concat_tables(tables), start, end, root)


def month_slices(table: pa.Table) -> Iterable[tuple[int, int, pa.Table]]:
    """(year, month, rows) per calendar month of a table sorted by (date, ticker), zero-copy slices."""
    table = sort_by_date_ticker(table)
    months = day_numbers(table).astype("datetime64[D]").astype("datetime64[M]")
    uniq, first = np.unique(months, return_index=True)  # rows are month-sorted: each month is one slice
    bounds = list(first) + [table.num_rows]
    for k, month in enumerate(uniq):
        yield int(str(month)[:4]), int(str(month)[5:7]), table.slice(bounds[k], bounds[k + 1] - bounds[k])


def write_partitions(table: pa.Table, root: str | Path) -> list[Path]:
    """Write a table in the month-partitioned layout; rows sorted by (date, ticker) for byte-stable files."""
    written = []
    for y, m, part in month_slices(table):
        path = partition_path(root, y, m)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Fixed writer settings and no pandas metadata: same rows -> byte-identical file.
        pq.write_table(part, path, compression="zstd", use_dictionary=["ticker", "name"],
                       write_statistics=True, store_schema=False)
        written.append(path)
    return written


def month_bounds(months: Iterable[tuple[int, int]]) -> tuple[dt.date, dt.date]:
    months = sorted(months)
    (y0, m0), (y1, m1) = months[0], months[-1]
    last = (dt.date(y1 + (m1 == 12), m1 % 12 + 1, 1) - dt.timedelta(days=1))
    return dt.date(y0, m0, 1), last


class MarketParams(Section):
    """params.yaml `market`: simulate the embedded tree, or read the user's KRX tree, for a month range."""

    source: Literal["simulate", "krx"]
    start: str
    end: str
    seed: int
    extra_tickers: int = 0

    @field_validator("start", "end")
    @classmethod
    def _month(cls, v: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}", str(v)) or not 1 <= int(str(v)[5:]) <= 12:
            raise ValueError("must be a month as YYYY-MM")
        return str(v)

    @model_validator(mode="after")
    def _ordered(self) -> "MarketParams":
        if self.start > self.end:  # YYYY-MM strings sort as months do
            raise ValueError(f"market.start ({self.start}) is after market.end ({self.end})")
        return self

    def months(self) -> MonthRange:
        return MonthRange((int(self.start[:4]), int(self.start[5:])), (int(self.end[:4]), int(self.end[5:])))
