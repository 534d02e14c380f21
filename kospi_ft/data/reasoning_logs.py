"""Your own reasoning logs -> Stage 2 SFT records, mixed into Stage 2's training set (the spec's optional
prepare_dataset.py: "실제 reasoning log → SFT 변환").

Input: JSONL, one decision per line (data/logs/README.md; data/logs/example.jsonl is an example):

| field           | required                          | meaning                                                  |
|-----------------|-----------------------------------|----------------------------------------------------------|
| `date`          | yes, unless `snapshot_date` given | the decision's day, YYYY-MM-DD                           |
| `task`          | yes                               | one of the 12 task types (`kospi_ft.schema.TaskType`)    |
| `question`      | yes                               | the question as it was asked                             |
| `context`       | this and/or `snapshot_date`       | the market/account context you decided on, as text       |
| `snapshot_date` | this and/or `context`             | a day of paths.snapshots_dir: its market block is shown  |
| `reasoning`     | yes                               | the reasoning text behind the decision                   |
| `decision`      | yes                               | the answer: a JSON object in the task's response schema  |
| `format`        | no                                | the snapshot block's format: bullet/sentence/compact/table |
| `id`            | no                                | your id for the line, kept in the record's meta          |

A line is validated field by field, and `decision` with `kospi_ft.schema` (the schema the generator and the
evaluator use); a bad line is a DataValidationError naming file, line and field, or, with `skip_invalid`, skipped
and counted. So is a line that is not UTF-8 JSON (`kospi_ft.jsonl`: a bad byte, nesting or an integer too long to
parse) and, given `max_seq_length` (Stage 2's), a line whose record is longer than that many tokens: training would
cut its answer off. Strategy-rule violations and quality issues of valid decisions are counted, not rejected: the
decisions are yours.

Rendering is the synthetic generator's (`synthetic.user_turn`, `synthetic.chat_record`): the quant system prompt;
a user turn of the date line (unless your context names the date), your context, the snapshot's market block
(`templates.render_market`, with the tape's indicators and the decision's stocks on that day; flows, sentiment,
FX, VIX and fundamentals are not on the KRX tape and are left out) and the question; the decision as the
assistant's compact JSON. The reasoning text is not a turn of its own: the system prompt's output contract is
one JSON object, and a reasoning turn before it would teach the model to break that contract. Write what the
model should learn to say into the decision's summary and rationale fields; the reasoning text stays in the
record's meta, and is what evaluation scores ROUGE-L against (the spec: "ROUGE score: reasoning log 대비 오버랩").

Split: a line's date is 'train', 'eval' or 'embargo' by `synthetic.date_split`, the rule of the synthetic and
real-snapshot records: eval dates are whole calendar months (`synthetic.eval_months`, ~10% of dates), and dates
within 42 calendar days of one (at least 20 trading days, the longest forward-return horizon) are embargo.
Eval-date lines go to the logs eval set, never into training; embargo-date lines go nowhere (counted as
`embargo` in the stats); train-date lines are mixed into Stage 2 at `logs_ratio`.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..errors import DataValidationError, PipelineError
from ..jsonl import read_jsonl
from ..params import Section
from ..schema import TaskType, quality_issues, schema_errors, validate_response
from ..strategy import rule_violations
from .snapshot import MarketSnapshotStore
from .synthetic import (EMBARGO, WEEKDAYS_KO, chat_record, date_split, real_stock_row, round_half_up,
                        snapshot_view, user_turn)
from .templates import FORMAT_SHARES, render_market

log = logging.getLogger(__name__)

SOURCE = "log"          # meta.source of a log record (synthetic records: "synthetic" / "real")
_TICKER_LISTS = ("positions", "valuation", "decisions", "opening_gaps", "actions")


def _iso_date(value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return dt.date.fromisoformat(value)


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]
Text = Annotated[str, Field(min_length=1, pattern=r"\S")]


class LogEntry(BaseModel):
    """One line of a reasoning-log file (the table in the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: IsoDate | None = None
    snapshot_date: IsoDate | None = None
    task: TaskType
    question: Text
    context: Text | None = None
    reasoning: Text
    decision: dict[str, Any]
    format: Literal[tuple(FORMAT_SHARES)] | None = None  # type: ignore[valid-type]
    id: str | int | None = None

    @model_validator(mode="after")
    def _check(self) -> "LogEntry":
        if self.context is None and self.snapshot_date is None:
            raise ValueError("give `context` (the market context as text) or `snapshot_date` (a snapshot day)")
        if self.date is None and self.snapshot_date is None:
            raise ValueError("`date` is required (or `snapshot_date`, which it then defaults to)")
        if self.format is not None and self.snapshot_date is None:
            raise ValueError("`format` is the snapshot block's format: it needs `snapshot_date`")
        return self

    @property
    def day(self) -> dt.date:
        return self.date or self.snapshot_date  # type: ignore[return-value]


class Stage2DataParams(Section):
    """params.yaml `stage2_data`: Stage 2's training set = the synthetic set + the reasoning logs in `logs`."""

    logs: Path | None = None   # a JSONL inside paths.logs_dir; None: the synthetic set alone
    logs_ratio: float = Field(0.2, ge=0.0, lt=1.0)
    skip_invalid: bool = False
    seed: int = 42


def tickers_of(decision: dict[str, Any]) -> list[str]:
    """The tickers a decision names, in order of first mention (positions, valuation, decisions, ...)."""
    seen: dict[str, None] = {}
    for key in _TICKER_LISTS:
        for item in decision.get(key) or ():
            if isinstance(item, dict) and isinstance(item.get("ticker"), str):
                seen.setdefault(item["ticker"])
    return list(seen)


@dataclass
class LogReport:
    """What the logs file held and what became of it; keys fixed, zeros included."""

    lines: int = 0
    valid: int = 0
    skipped_invalid: int = 0
    contexts: dict[str, int] = field(default_factory=lambda: {"text": 0, "snapshot": 0})
    tasks: dict[str, int] = field(default_factory=lambda: {t.value: 0 for t in TaskType})
    rule_violations: int = 0
    quality_issues: int = 0
    regime_differs_from_snapshot: int = 0
    tickers_not_in_snapshot: int = 0


def _fail(message: str, skip: bool, report: LogReport) -> None:
    """A bad line: the error (naming file, line and field), or with `skip` a count and a warning."""
    if not skip:
        raise DataValidationError(message)
    report.skipped_invalid += 1
    if report.skipped_invalid <= 10:
        log.warning("skipped %s", message)


# The longest token of the Qwen2/Qwen2.5 vocabulary (128 spaces; tests check it against the embedded tokenizer).
MAX_TOKEN_BYTES = 128


def too_long(messages: list[dict[str, str]], max_seq_length: int, tokenizer) -> str | None:
    """Why a chat row cannot fit `max_seq_length` tokens (counted as SFT counts them: the chat template), or None.

    `tokenizer` is called only for rows a byte count cannot settle: a 50 MB line is rejected without tokenizing it.
    """
    # The tokenizer normalizes to NFC and then cuts the UTF-8 bytes into tokens of at most MAX_TOKEN_BYTES each, so
    # a row holds at least (NFC bytes of its turns) / MAX_TOKEN_BYTES tokens.
    size = sum(len(unicodedata.normalize("NFC", m["content"]).encode("utf-8")) for m in messages)
    if size > MAX_TOKEN_BYTES * max_seq_length:
        return (f"the record is at least {math.ceil(size / MAX_TOKEN_BYTES):,} tokens ({size:,} bytes of text), "
                f"over stage2.max_seq_length ({max_seq_length:,})")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokens > max_seq_length:
        return (f"the record is {tokens:,} tokens, over stage2.max_seq_length ({max_seq_length:,}): training would "
                f"cut its answer off")
    return None


def _field_errors(err: ValidationError) -> str:
    e = err.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in e["loc"]) or "line"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {e['msg']}{more}"


def to_record(entry: LogEntry, line: int, store: MarketSnapshotStore | None, seed: int,
              report: LogReport) -> dict[str, Any]:
    """One valid log line -> a chat record rendered like a synthetic one; snapshot problems are raised as
    KeyError/PipelineError for the caller to name the line."""
    day = entry.day
    # The prompt names its date, as every synthetic prompt does: a date line unless the context already has it.
    has_date = entry.context is not None and day.isoformat() in entry.context
    parts = ["" if has_date else f"기준일: {day.isoformat()} ({WEEKDAYS_KO[day.weekday()]})", entry.context or ""]
    fmt = "text"
    if entry.snapshot_date is not None:
        if store is None:
            raise PipelineError("snapshot_date needs the snapshot store (paths.snapshots_dir)")
        snap = store.snapshot(entry.snapshot_date)
        by_ticker = {s.ticker: s for s in snap.stocks}
        wanted = tickers_of(entry.decision)
        report.tickers_not_in_snapshot += sum(t not in by_ticker for t in wanted)
        report.regime_differs_from_snapshot += entry.decision["regime"] != snap.regime.value
        view = snapshot_view(snap, tuple(real_stock_row(by_ticker[t]) for t in wanted if t in by_ticker))
        # The four formats at the generator's shares, one seeded draw per line (no format given).
        fmt = entry.format or str(np.random.default_rng([seed, line]).choice(
            list(FORMAT_SHARES), p=list(FORMAT_SHARES.values())))
        parts.append(render_market(view, fmt))
    parts.append(entry.question)
    meta = {"date": day.isoformat(), "regime": entry.decision["regime"], "source": SOURCE, "format": fmt,
            "template": SOURCE, "split": date_split(day), "line": line, "reasoning": entry.reasoning}
    if entry.snapshot_date is not None:
        meta["snapshot_date"] = entry.snapshot_date.isoformat()
    if entry.id is not None:
        meta["id"] = entry.id
    return chat_record(user_turn(parts), entry.decision, entry.task, meta)


def read_logs(path: str | Path, store: MarketSnapshotStore | None = None, *, skip_invalid: bool = False,
              seed: int = 42, max_seq_length: int | None = None, tokenizer=None
              ) -> tuple[list[dict[str, Any]], LogReport]:
    """Validate and convert every line of a logs file; records in file order.

    `max_seq_length` (Stage 2's; None: no limit) rejects longer records, counted in tokens of `tokenizer` (None: the
    embedded Qwen tokenizer, whose counts equal every Qwen2.5 model's; loaded on first need).
    """
    path = Path(path)
    report = LogReport()
    rows = read_jsonl(path, what="reasoning logs", hint="stage2_data.logs names it; format: kospi_ft/data/"
                      "reasoning_logs.py", missing=DataValidationError,
                      on_bad_line=(lambda n, msg: _fail(msg, True, report)) if skip_invalid else None)
    report.lines = len(rows) + report.skipped_invalid
    records = []
    for n, row in rows:
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            _fail(f"{where}: a line must be a JSON object", skip_invalid, report)
            continue
        try:
            entry = LogEntry.model_validate(row)
        except ValidationError as err:
            _fail(f"{where}: {_field_errors(err)}", skip_invalid, report)
            continue
        problems = schema_errors(entry.task, entry.decision)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            _fail(f"{where}: decision.{problems[0]}{more}", skip_invalid, report)
            continue
        # to_record counts snapshot mismatches; they are added to `report` only for a record that is kept.
        counts = LogReport()
        try:
            record = to_record(entry, n, store, seed, counts)
        except KeyError as err:
            _fail(f"{where}: snapshot_date: {err.args[0]} (the snapshots hold {store.dates[0]}..{store.dates[-1]})",
                  skip_invalid, report)
            continue
        except PipelineError as err:
            _fail(f"{where}: snapshot_date: {err}", skip_invalid, report)
            continue
        if max_seq_length is not None:
            if tokenizer is None:
                from ..tokenizer import load_tokenizer

                tokenizer = load_tokenizer()
            reason = too_long(record["messages"], max_seq_length, tokenizer)
            if reason:
                _fail(f"{where}: {reason}", skip_invalid, report)
                continue
        report.tickers_not_in_snapshot += counts.tickers_not_in_snapshot
        report.regime_differs_from_snapshot += counts.regime_differs_from_snapshot
        answer = validate_response(entry.task, entry.decision)
        violations, issues = rule_violations(entry.task, answer), quality_issues(entry.task, answer)
        report.rule_violations += bool(violations)
        report.quality_issues += bool(issues)
        if violations or issues:
            log.info("%s: valid, but %s", where, "; ".join((violations + issues)[:3]))
        report.valid += 1
        report.contexts["snapshot" if entry.snapshot_date else "text"] += 1
        report.tasks[entry.task.value] += 1
        records.append(record)
    return records, report


@dataclass(frozen=True)
class Mixed:
    records: list[dict[str, Any]]   # Stage 2's training set
    held_out: list[dict[str, Any]]  # log records of eval dates (the logs eval set)
    stats: dict[str, Any]


def mix(synthetic: Sequence[dict], logs: Sequence[dict], ratio: float, seed: int, report: LogReport | None = None
        ) -> Mixed:
    """Synthetic records + train-date log records making up `ratio` of the result; eval-date logs held out;
    embargo-date logs (`synthetic.date_split`) in neither, only counted.

    All synthetic records are kept; log records are repeated in whole passes and then sampled without replacement
    until they are round-half-up(len(synthetic) * ratio / (1 - ratio)). Without log records the result is the
    synthetic set in its own order; with them, the whole set is shuffled (seeded).
    """
    train = [r for r in logs if r["meta"]["split"] == "train"]
    held_out = [r for r in logs if r["meta"]["split"] == "eval"]
    want = round_half_up(len(synthetic) * ratio / (1.0 - ratio)) if train else 0
    rng = np.random.default_rng(seed)
    passes, rest = divmod(want, len(train)) if train else (0, 0)
    picked = list(range(len(train))) * passes + sorted(rng.choice(len(train), rest, replace=False).tolist())
    records = list(synthetic) + [train[i] for i in picked]
    if picked:
        records = [records[i] for i in rng.permutation(len(records))]
    embargo = sum(r["meta"]["split"] == EMBARGO for r in logs)
    if logs and not train:
        log.warning("no log line has a training date (%d eval, %d embargo): none is mixed into Stage 2",
                    len(held_out), embargo)
    report = report or LogReport()
    uses = collections.Counter(picked)
    stats = {
        "synthetic_records": len(synthetic), "records": len(records),
        "logs": {"lines": report.lines, "valid": report.valid, "skipped_invalid": report.skipped_invalid,
                 "train": len(train), "eval": len(held_out), "embargo": embargo, "in_stage2": len(picked),
                 "share_of_stage2": round(len(picked) / len(records), 6) if records else 0.0,
                 "max_uses_per_record": max(uses.values(), default=0), "contexts": report.contexts,
                 "tasks": report.tasks, "rule_violations": report.rule_violations,
                 "quality_issues": report.quality_issues,
                 "regime_differs_from_snapshot": report.regime_differs_from_snapshot,
                 "tickers_not_in_snapshot": report.tickers_not_in_snapshot},
    }
    return Mixed(records, held_out, stats)
