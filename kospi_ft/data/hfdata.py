"""Stage 1 data: five Hugging Face finance datasets mapped to ChatML, ratio-sampled, written as JSONL.

`REGISTRY` declares each dataset once: hub id, split, the columns it is read from and how they map to
system/user/assistant, its default system prompt, and the committed fixture that mirrors the hub file
(`data/fixtures/stage1/<hub id>/<file>`, same name, format and columns). The sampling ratios are DVC params
(`stage1_data.ratios` in params.yaml) and live only there.

Two sources, one mapping code path: `source: hub` calls `datasets.load_dataset(<hub id>, split=...)`;
`source: fixtures` reads the fixture with the same packaged `datasets` builder (json/csv/parquet) that the hub
uses for that file, so quirks such as CSV empty cells arriving as None behave the same way.

Per dataset, rows are visited in a seeded random order and each row goes through:
  1. map to ChatML messages; the dataset's own system prompt when the row has a non-blank one, else the
     registry's default (a finance prompt; Korean for Won-Instruct);
  2. drop it when the user or assistant turn is not a string (None included) -> `non_string`, or is empty /
     whitespace-only -> `empty`;
  3. drop exact duplicates of normalized (user, assistant) across all datasets (NFKC, whitespace runs
     collapsed, casefolded) -> `duplicate`;
  4. drop it when the chat-template rendering is longer than `max_seq_length` tokens of the model tokenizer
     -> `too_long` (counted, never truncated);
until the dataset's quota is filled or its rows run out. The kept records of all datasets are then shuffled
once with the seed. Every step is deterministic, so the same params give a byte-identical JSONL.

Quotas (rounding rule): `quotas.allocate(total, ratios)` gives dataset i floor(total * r_i) with the ratios as exact
decimals (normalised to sum 1), then hands the remaining units one each to the largest fractional parts,
ties broken by registry order (Hamilton's largest-remainder method). The quotas always sum to `total` and each
differs from total * r_i by less than 1. A dataset that runs out before its quota is a shortfall: logged as a
warning and recorded in the stats; the other datasets make it up only with `fill_shortfall: true` (the
deficit is re-allocated over the datasets with rows left, by the same rule, until filled or all exhausted).

Checked facts about the hub datasets (columns, file, rows) are recorded in tests/test_hfdata.py
(`HUB_COLUMNS`), with where each was checked.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence
from urllib.parse import urlparse

import numpy as np
from pydantic import Field, field_validator

from .. import params
from ..errors import DataValidationError, ParamsError, PipelineError
from .quotas import allocate

log = logging.getLogger(__name__)

DROP_REASONS = ("non_string", "empty", "duplicate", "too_long")

DEFAULT_SYSTEM_EN = ("You are a financial expert assistant. Answer questions on finance, investing, markets and "
                     "economics accurately and concisely.")
DEFAULT_SYSTEM_KO = "당신은 한국 금융시장 전문가입니다. 금융, 투자, 증권시장에 관한 질문에 정확하고 간결하게 답하세요."
DEFAULT_SYSTEM_TRADING = ("You are a technical analyst. Read the indicator snapshot and give the trading signal it "
                          "implies.")
DEFAULT_SYSTEM_SENTIMENT = "You are a financial sentiment analyst. Classify the sentiment of financial news and posts."


# --------------------------------------------------------------------------------------------------------------
# Mapping families: one per column layout, shared by both sources.
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Turns:
    """Raw turn values as read from a row (any type; validated by `to_messages`)."""

    system: Any
    user: Any
    assistant: Any


@dataclass(frozen=True)
class SystemUserAssistant:
    """Columns already split into system / user / assistant (Finance-Instruct-500k, Sujet-Finance)."""

    system: str
    user: str
    assistant: str

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.system, self.user, self.assistant)

    def turns(self, row: Mapping[str, Any]) -> Turns:
        return Turns(row[self.system], row[self.user], row[self.assistant])


@dataclass(frozen=True)
class PromptResponse:
    """A prompt column and a response column, no system prompt (Won-Instruct)."""

    prompt: str
    response: str

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.prompt, self.response)

    def turns(self, row: Mapping[str, Any]) -> Turns:
        return Turns(None, row[self.prompt], row[self.response])


@dataclass(frozen=True)
class InstructionInputOutput:
    """Alpaca layout: user = instruction, a blank line, then input (input may be empty); assistant = output."""

    instruction: str
    input: str
    output: str

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.instruction, self.input, self.output)

    def turns(self, row: Mapping[str, Any]) -> Turns:
        instruction, extra = row[self.instruction], row[self.input]
        if not isinstance(instruction, str):
            user = instruction       # not a string: to_messages drops the row
        elif _is_missing(extra) or (isinstance(extra, str) and not extra.strip()):
            user = instruction       # an empty input is normal in this layout, not a bad row
        elif isinstance(extra, str):
            user = f"{instruction.strip()}\n\n{extra.strip()}"
        else:
            user = extra             # a non-string input: dropped as well
        return Turns(None, user, row[self.output])


ColumnMapping = SystemUserAssistant | PromptResponse | InstructionInputOutput


@dataclass(frozen=True)
class DatasetSpec:
    """One hub dataset: where it lives, which columns are read and how, and its committed fixture."""

    key: str                       # params key (stage1_data.ratios.<key>)
    hub_id: str
    split: str
    mapping: ColumnMapping
    default_system: str
    fixture: str                   # path under paths.stage1_fixtures, mirroring the hub repo's file
    builder: Literal["json", "csv", "parquet"]   # the packaged `datasets` builder for that file
    notes: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        return self.mapping.columns


REGISTRY: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        key="finance_instruct", hub_id="Josephgflowers/Finance-Instruct-500k", split="train",
        mapping=SystemUserAssistant("system", "user", "assistant"), default_system=DEFAULT_SYSTEM_EN,
        fixture="Josephgflowers/Finance-Instruct-500k/train.json", builder="json",
        notes="one train.json; `system` is empty on many rows -> default system prompt"),
    DatasetSpec(
        key="sujet_finance", hub_id="sujet-ai/Sujet-Finance-Instruct-177k", split="train",
        mapping=SystemUserAssistant("system_prompt", "user_prompt", "answer"), default_system=DEFAULT_SYSTEM_EN,
        fixture="sujet-ai/Sujet-Finance-Instruct-177k/Sujet-Finance-Instruct-177k.csv", builder="csv",
        notes="a CSV with a saved pandas index column `Unnamed: 0`; `inputs` repeats system+user and is unused; "
              "empty CSV cells arrive as None (a blank system prompt -> default, a blank answer -> non_string)"),
    DatasetSpec(
        key="krx_won", hub_id="KRX-Data/Won-Instruct", split="train",
        mapping=PromptResponse("prompt", "original_response"), default_system=DEFAULT_SYSTEM_KO,
        fixture="KRX-Data/Won-Instruct/data/train-00000-of-00001.parquet", builder="parquet",
        notes="Korean; four other-model response columns (names contain '/') are ignored"),
    DatasetSpec(
        key="trading_signals", hub_id="darkknight25/trading_dataset_v2", split="train",
        mapping=InstructionInputOutput("instruction", "input", "output"), default_system=DEFAULT_SYSTEM_TRADING,
        fixture="darkknight25/trading_dataset_v2/llm_trading_dataset_20250629_115817.jsonl", builder="json",
        notes="one JSONL; a single instruction string, output is Buy/Sell; many exact repeats -> duplicate"),
    DatasetSpec(
        key="fin_sentiment", hub_id="FinGPT/fingpt-sentiment-train", split="train",
        mapping=InstructionInputOutput("instruction", "input", "output"), default_system=DEFAULT_SYSTEM_SENTIMENT,
        fixture="FinGPT/fingpt-sentiment-train/data/train-00000-of-00001.parquet", builder="parquet",
        notes="parquet; a few instruction templates (news / tweet, 3 or 7 labels)"),
)
KEYS = tuple(spec.key for spec in REGISTRY)


def spec_for(key: str) -> DatasetSpec:
    for spec in REGISTRY:
        if spec.key == key:
            return spec
    raise KeyError(key)


# --------------------------------------------------------------------------------------------------------------
# Params
# --------------------------------------------------------------------------------------------------------------
class Stage1DataParams(params.Section):
    """params.yaml `stage1_data` (preset real: `real.stage1_data` merged over it)."""

    source: Literal["fixtures", "hub"]
    total_samples: int = Field(gt=0)
    eval_samples: int = Field(0, ge=0)   # the held-out slice (paths.stage1_eval), split by the same ratios
    ratios: dict[str, float]
    max_seq_length: int = Field(gt=0)
    seed: int
    fill_shortfall: bool
    tokenizer: str | None     # None: the embedded Qwen2.5 tokenizer (kospi_ft.tokenizer.load_tokenizer)

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, ratios: dict[str, float]) -> dict[str, float]:
        unknown, missing = sorted(set(ratios) - set(KEYS)), [k for k in KEYS if k not in ratios]
        if unknown or missing:
            raise ValueError(f"keys must be exactly {list(KEYS)}" + (f"; unknown {unknown}" if unknown else "")
                             + (f"; missing {missing}" if missing else ""))
        negative = [k for k, v in ratios.items() if v < 0]
        if negative:
            raise ValueError(f"ratios must be >= 0, negative: {negative}")
        total = sum(ratios.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ratios must sum to 1, they sum to {total:.6g}")
        return ratios


def load_params(overrides: Mapping[str, Any] | None = None, path: str | os.PathLike | None = None,
                raw: Mapping | None = None) -> Stage1DataParams:
    return params.load("stage1_data", Stage1DataParams, overrides=overrides, path=path, raw=raw)


# --------------------------------------------------------------------------------------------------------------
# Row -> messages
# --------------------------------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def to_messages(turns: Turns, default_system: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """(messages, None) for a usable row, (None, reason) for a dropped one; turns are stripped."""
    for value in (turns.user, turns.assistant):
        if not isinstance(value, str):
            return None, "non_string"
    for value in (turns.user, turns.assistant):
        if not value.strip():
            return None, "empty"
    system = turns.system
    if _is_missing(system) or (isinstance(system, str) and not system.strip()):
        system = default_system
    elif not isinstance(system, str):
        return None, "non_string"
    return [{"role": "system", "content": system.strip()},
            {"role": "user", "content": turns.user.strip()},
            {"role": "assistant", "content": turns.assistant.strip()}], None


def normalize(text: str) -> str:
    """The dedup key form of a turn: NFKC, whitespace runs collapsed to one space, casefolded."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def dedup_key(messages: Sequence[Mapping[str, str]]) -> bytes:
    """128-bit digest of normalized (user, assistant). A digest instead of the texts keeps the seen-set small
    (16 bytes a row instead of kilobytes at 200K rows); collision odds are ~n^2 / 2^129, below 1e-20 even
    at a billion rows."""
    by_role = {m["role"]: m["content"] for m in messages}
    pair = normalize(by_role["user"]) + "\x00" + normalize(by_role["assistant"])
    return hashlib.blake2b(pair.encode("utf-8"), digest_size=16).digest()


def chat_token_lengths(tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[int]:
    """Token count of each conversation as the SFT trainer sees it (the tokenizer's chat template)."""
    if not conversations:
        return []
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False) for c in conversations]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------------
class Table(Protocol):
    """What the walker needs from a loaded split (a `datasets.Dataset` satisfies it)."""

    column_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, indices: list[int]) -> dict[str, list[Any]]: ...


def check_columns(spec: DatasetSpec, columns: Sequence[str], origin: str) -> None:
    missing = [c for c in spec.columns if c not in columns]
    if missing:
        raise DataValidationError(
            f"{spec.hub_id} ({origin}): missing column(s) {missing} needed for "
            f"{type(spec.mapping).__name__} mapping; columns present: {list(columns)}")


def load_fixture(spec: DatasetSpec, fixtures_dir: str | os.PathLike) -> Table:
    """The committed fixture, parsed by the same `datasets` builder the hub uses for that file format."""
    import datasets

    path = Path(fixtures_dir) / spec.fixture
    if not path.is_file():
        raise PipelineError(f"{path}: fixture for {spec.hub_id} not found (paths.stage1_fixtures; regenerate with "
                            f"`python scripts/make_stage1_fixtures.py`)")
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(spec.builder, data_files=str(path), split="train")
    except Exception as err:     # the builders raise many types (ArrowInvalid, DatasetGenerationError, ...)
        raise DataValidationError(f"{path}: fixture for {spec.hub_id} cannot be parsed as {spec.builder}: {err}") \
            from err
    check_columns(spec, ds.column_names, str(path))
    return ds


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline_mode() -> bool:
    """True when the user asked for offline mode: `datasets` then reads only its local cache."""
    return _truthy_env("HF_HUB_OFFLINE") or _truthy_env("HF_DATASETS_OFFLINE")


def hub_reachable(timeout_s: float = 5.0) -> tuple[bool, str]:
    """A TCP connect to the hub endpoint (HF_ENDPOINT), so an unreachable hub fails in seconds instead of
    going through `datasets`' retries. Returns (reachable, endpoint or error text)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True, endpoint
    except OSError as err:
        return False, f"{endpoint}: {err}"


def _hub_error(spec: DatasetSpec, why: str) -> PipelineError:
    cache_hint = ("download it once with hub access first" if hub_offline_mode() else
                  "with the dataset already in the local Hugging Face cache, set HF_HUB_OFFLINE=1 to read it there")
    return PipelineError(
        f"hub dataset {spec.hub_id} (split {spec.split}) could not be loaded: {why}. "
        f"To run without the hub, use the embedded fixtures: set `stage1_data.source: fixtures` in params.yaml "
        f"(preset real sets `hub`) or pass --source fixtures; to use the hub, {cache_hint}.")


def load_hub(spec: DatasetSpec) -> Table:
    """`datasets.load_dataset(<hub id>, split=...)`; a clear PipelineError when the hub cannot be used."""
    if not hub_offline_mode():
        ok, where = hub_reachable()
        if not ok:
            raise _hub_error(spec, f"the Hugging Face hub is unreachable ({where})")
    import datasets

    try:
        ds = datasets.load_dataset(spec.hub_id, split=spec.split)
    except Exception as err:   # network, cache-miss in offline mode, gated repo...: all mean "no data"
        mode = "offline mode (HF_HUB_OFFLINE) and not in the local cache" if hub_offline_mode() else "download failed"
        raise _hub_error(spec, f"{mode}: {type(err).__name__}: {err}") from err
    check_columns(spec, ds.column_names, f"hub {spec.hub_id}")
    return ds


def load_source(spec: DatasetSpec, source: str, fixtures_dir: str | os.PathLike) -> Table:
    if source == "hub":
        return load_hub(spec)
    if source == "fixtures":
        return load_fixture(spec, fixtures_dir)
    raise ParamsError(f"params.yaml: stage1_data.source: must be fixtures or hub, got {source!r}")


def origin_of(spec: DatasetSpec, source: str) -> str:
    """Where a dataset was read from, for the stats (relative, no machine paths)."""
    return f"hub:{spec.hub_id}" if source == "hub" else f"fixtures:{spec.fixture}"


# --------------------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Walker:
    """Visits one dataset's rows in a seeded random order, keeping rows that pass every step."""

    spec: DatasetSpec
    table: Table
    order: np.ndarray
    pos: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: list[dict] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.order)

    def take(self, n: int, seen: set, max_seq_length: int, token_lengths: Callable, progress=None) -> int:
        """Keep up to n more rows; returns how many were kept. Stats do not depend on the chunk size."""
        got = 0
        while got < n and not self.exhausted:
            # Tokenizing is the costly part, so rows are prepared in chunks; the walk itself stays row by row.
            chunk = self.order[self.pos:self.pos + min(4096, max(64, 2 * (n - got)))].tolist()
            batch = self.table[chunk]
            mapped = [to_messages(self.spec.mapping.turns({c: batch[c][i] for c in self.spec.columns}),
                                  self.spec.default_system) for i in range(len(chunk))]
            usable = [m for m, _ in mapped if m is not None]
            lengths = iter(token_lengths(usable))
            for messages, reason in mapped:
                self.pos += 1
                if messages is None:
                    self.dropped[reason] += 1
                    continue
                length = next(lengths)
                key = dedup_key(messages)
                if key in seen:
                    self.dropped["duplicate"] += 1
                    continue
                seen.add(key)
                if length > max_seq_length:
                    self.dropped["too_long"] += 1
                    continue
                self.kept.append({"messages": messages, "source": self.spec.hub_id})
                self.lengths.append(length)
                got += 1
                if progress is not None:
                    progress.update(1)
                if got == n:
                    break
        return got


def percentiles(lengths: Sequence[int]) -> dict[str, float] | None:
    if not lengths:
        return None
    arr = np.asarray(lengths, dtype=np.float64)
    out = {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in (50, 90, 95, 99)}
    out.update(min=int(arr.min()), max=int(arr.max()), mean=round(float(arr.mean()), 1))
    return out


@dataclass
class Stage1Result:
    records: list[dict]
    stats: dict
    eval_records: list[dict] = field(default_factory=list)


def build(tables: Mapping[str, Table], ratios: Mapping[str, float], total_samples: int, max_seq_length: int,
          seed: int, fill_shortfall: bool, token_lengths: Callable[[list], list[int]],
          origins: Mapping[str, str] | None = None, show_progress: bool = False,
          eval_samples: int = 0) -> Stage1Result:
    """Select, clean and shuffle the Stage 1 records. `tables` holds a loaded split per dataset key with a
    positive ratio (registry order decides processing order, so cross-dataset duplicates count against the
    later dataset).

    `eval_samples` more rows, split by the same ratios and the same shortfall rule, form the held-out slice: each
    dataset's walk continues past its training rows, with the same duplicate check, so no held-out row equals
    (after normalization) a training row, and the training rows are the ones a run without the slice selects."""
    from tqdm.auto import tqdm

    specs = [s for s in REGISTRY if ratios.get(s.key, 0) > 0]
    missing = [s.key for s in specs if s.key not in tables]
    if missing:
        raise PipelineError(f"no loaded data for datasets with a positive ratio: {missing}")
    walkers = {s.key: _Walker(s, tables[s.key], np.random.default_rng([seed, KEYS.index(s.key)])
                              .permutation(len(tables[s.key]))) for s in specs}
    seen: set = set()

    def select(total: int, progress=None) -> tuple[dict[str, int], Counter]:
        """`total` more rows from the walkers, split by the ratios; with fill_shortfall the datasets that still have
        rows fill the others' shortfall. Returns (quota per dataset, rows each took for the others)."""
        start = {s.key: len(walkers[s.key].kept) for s in specs}

        def still_missing() -> int:
            return total - sum(len(walkers[s.key].kept) - start[s.key] for s in specs)

        quotas = allocate(total, {s.key: ratios[s.key] for s in specs})
        for s in specs:
            walkers[s.key].take(quotas[s.key], seen, max_seq_length, token_lengths, progress)
        filled = Counter()
        while fill_shortfall and still_missing() > 0:
            open_ = [s for s in specs if not walkers[s.key].exhausted]
            if not open_:
                break
            extra = allocate(still_missing(), {s.key: ratios[s.key] for s in open_})
            for s in open_:
                filled[s.key] += walkers[s.key].take(extra[s.key], seen, max_seq_length, token_lengths, progress)
        return quotas, filled

    progress = tqdm(total=total_samples, desc="stage1_data", unit="row", disable=not show_progress)
    quotas, filled = select(total_samples, progress)
    progress.close()
    n_train = {s.key: len(walkers[s.key].kept) for s in specs}
    select(eval_samples)

    records = [r for s in specs for r in walkers[s.key].kept[:n_train[s.key]]]
    order = np.random.default_rng(seed).permutation(len(records))
    records = [records[i] for i in order]
    held_out = [r for s in specs for r in walkers[s.key].kept[n_train[s.key]:]]
    held_out = [held_out[i] for i in np.random.default_rng([seed, 1]).permutation(len(held_out))]
    if len(held_out) < eval_samples:
        log.warning("held-out slice: %d rows requested, %d usable rows left after the training rows", eval_samples,
                    len(held_out))

    per_dataset = {}
    for spec in REGISTRY:
        w = walkers.get(spec.key)
        requested = quotas.get(spec.key, 0)
        kept = n_train[spec.key] if w else 0
        shortfall = max(0, requested - (kept - filled[spec.key]))
        if shortfall:
            log.warning("%s: %d rows requested, only %d usable rows in %s; %s", spec.hub_id, requested,
                        kept - filled[spec.key], (origins or {}).get(spec.key) or "its source",
                        "the other datasets fill the gap" if fill_shortfall else
                        "not filled (set stage1_data.fill_shortfall: true to fill from the others)")
        per_dataset[spec.key] = {
            "hub_id": spec.hub_id,
            "origin": (origins or {}).get(spec.key),
            "ratio": ratios.get(spec.key, 0),
            "available": len(w.table) if w else None,
            "requested": requested,
            "kept": kept,
            "eval_kept": len(w.kept) - kept if w else 0,
            "filled_for_others": filled[spec.key],
            "shortfall": shortfall,
            "examined": w.pos if w else 0,
            "exhausted": w.exhausted if w else None,
            "dropped": {r: (w.dropped[r] if w else 0) for r in DROP_REASONS},
            "token_length": percentiles(w.lengths[:kept]) if w else None,
        }
    all_lengths = [n for k, w in walkers.items() for n in w.lengths[:n_train[k]]]
    stats = {
        "total_requested": total_samples,
        "total_kept": len(records),
        "shortfall": total_samples - len(records),
        "eval_requested": eval_samples,
        "eval_kept": len(held_out),
        "fill_shortfall": fill_shortfall,
        "max_seq_length": max_seq_length,
        "seed": seed,
        "dropped": {r: sum(d["dropped"][r] for d in per_dataset.values()) for r in DROP_REASONS},
        "token_length": percentiles(all_lengths),
        "datasets": per_dataset,
    }
    return Stage1Result(records, stats, held_out)
