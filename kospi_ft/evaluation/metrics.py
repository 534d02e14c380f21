"""Score model replies against the eval set and aggregate them into one metrics dict per model.

Per reply (`score_reply`), never raising on arbitrary text:
- JSON: was an object found, and did it need unwrapping (fence / prose)?        -> `parsing.extract_json`
- schema: is it a valid answer for the task?            -> `kospi_ft.schema.schema_errors` (+ `hallucinations`)
- signal: every `score` field a real number in [-1, 1]. Counted on replies where the reference answer or the
  reply carries scores (regime or stop-loss answers have none), so a task without scores is not a free pass.
- Korean rationale: Hangul share of the reply's explanatory text (`rationale`, `summary`, step `content`,
  `signals`; see RATIONALE_KEYS). Every answer type has a summary, so every reply is counted; a reply without
  any such text has share 0.
- strategy: schema-valid and no `kospi_ft.strategy.rule_violations` (exposure band, leverage cap, stops, ...).
- ROUGE-L F1 of the reply text against the reference answer text (optional; `text.RougeL`).
- latency and generated tokens, from the backend.

`aggregate` turns the per-reply scores into the metrics file. Its keys are the same for every model and run
(every task type appears in `per_task`, rates with no qualifying replies are null), so `dvc metrics show`
lines base, Stage 2 and Stage 3 up column by column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from ..schema import TaskType, hallucinations, schema_errors
from ..strategy import rule_violations
from .parsing import Method, extract_json
from .text import RougeL, hangul_share

#: Keys whose numbers are trading signals, bounded to [-1, 1] by the schema (Position.score, SectorImpact.score).
SCORE_KEYS = frozenset({"score"})
#: Keys holding the answer's explanation in natural language (strings, or lists of strings).
RATIONALE_KEYS = frozenset({"rationale", "summary", "content", "signals"})
#: ROUGE-L inputs are cut to this many characters (~4x the longest reference answer).
ROUGE_MAX_CHARS = 20_000
#: Nested structures deeper than this are not walked (a reply of 10,000 nested lists is garbage anyway).
MAX_DEPTH = 64


@dataclass(frozen=True)
class ReplyScore:
    """Everything measured on one reply. Optional fields are None when the reply does not qualify."""

    task: str
    json_method: Method
    schema_valid: bool
    hallucination: bool
    signal_ok: bool | None          # None: neither reference nor reply carries scores
    hangul_share: float
    korean_ok: bool
    strategy_ok: bool
    violation: bool | None          # None: not schema-valid, so the rules were not checked
    rouge_l: float | None           # None: ROUGE disabled
    latency_s: float
    completion_tokens: int
    errors: tuple[str, ...] = field(default=())  # first schema errors / violations, for the predictions file

    @property
    def json_valid(self) -> bool:
        return self.json_method is not Method.NONE


def _walk(node: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(key, value) for every dict entry in a parsed JSON tree, depth-first, bounded depth."""
    if depth > MAX_DEPTH:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
            yield from _walk(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, depth + 1)


def score_values(data: Any) -> list[Any]:
    """Every value stored under a SCORE_KEYS key, whatever its type."""
    return [value for key, value in _walk(data) if key.lower() in SCORE_KEYS]


def json_number(value: Any) -> float | None:
    """A real JSON number (not a bool, a string, NaN or inf) as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        v = float(value)
    except OverflowError:  # an int with hundreds of digits
        return None
    return v if math.isfinite(v) else None


def score_in_range(value: Any) -> bool:
    """A real JSON number (not a bool, not NaN/inf) within [-1, 1]."""
    v = json_number(value)
    return v is not None and -1.0 <= v <= 1.0


def rationale_text(data: Any) -> str:
    """The reply's explanatory text: strings under RATIONALE_KEYS, joined by newlines."""
    parts: list[str] = []
    for key, value in _walk(data):
        if key.lower() not in RATIONALE_KEYS:
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


def _safe(fn, *args) -> tuple[list[str], str | None]:
    """Call a schema/strategy checker; an exception is reported, not raised (scoring must not crash)."""
    try:
        return list(fn(*args)), None
    except Exception as err:  # noqa: BLE001 - arbitrary model output may trip any checker
        return [], f"{getattr(fn, '__name__', 'check')} raised {type(err).__name__}: {err}"[:300]


def score_reply(task: str, reply: Any, reference: str, *, latency_s: float = 0.0, completion_tokens: int = 0,
                rouge: RougeL | None = None, korean_threshold: float = 0.5,
                rouge_reference: str | None = None) -> ReplyScore:
    """Score one model reply for `task` against the reference answer text (ROUGE-L against `rouge_reference`
    when given: a reasoning log's text). Never raises on the reply."""
    extraction = extract_json(reply)
    reference_data = extract_json(reference).data
    data = extraction.data
    errors: list[str] = []

    schema_valid = hallucination = False
    violation: bool | None = None
    if data is not None:
        found, crash = _safe(schema_errors, task, data)
        schema_valid = not found and crash is None
        errors.extend(found[:5] + ([crash] if crash else []))
        halluc, _ = _safe(hallucinations, task, data)
        hallucination = bool(halluc)
        if schema_valid:
            violations, crash = _safe(rule_violations, task, data)
            violation = bool(violations) or crash is not None
            errors.extend(violations[:5] + ([crash] if crash else []))
    elif extraction.error:
        errors.append(f"json: {extraction.error}")

    reply_scores = score_values(data) if data is not None else []
    if reply_scores or score_values(reference_data):
        signal_ok: bool | None = bool(reply_scores) and all(score_in_range(v) for v in reply_scores)
    else:
        signal_ok = None

    share = hangul_share(rationale_text(data)) if data is not None else 0.0
    # ROUGE's LCS is quadratic: cap both sides (a reply is bounded by max_new_tokens anyway).
    text = reply[:ROUGE_MAX_CHARS] if isinstance(reply, str) else ""
    rouge_text = reference if rouge_reference is None else rouge_reference
    rouge_l = rouge.f1(rouge_text[:ROUGE_MAX_CHARS], text) if rouge is not None else None
    return ReplyScore(
        task=str(task), json_method=extraction.method, schema_valid=schema_valid, hallucination=hallucination,
        signal_ok=signal_ok, hangul_share=share, korean_ok=share >= korean_threshold,
        strategy_ok=schema_valid and violation is False, violation=violation, rouge_l=rouge_l,
        latency_s=float(latency_s), completion_tokens=int(completion_tokens), errors=tuple(errors))


# ---- aggregation --------------------------------------------------------------------------------------------

def _rate(flags: Iterable[bool | None]) -> float | None:
    """Share of True among the non-None flags; None when there are none."""
    kept = [bool(f) for f in flags if f is not None]
    return round(sum(kept) / len(kept), 6) if kept else None


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 6) if kept else None


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 6) if values else None


def _core(scores: list[ReplyScore]) -> dict[str, float | int | None]:
    """The flat rates shared by the overall block and every per-task block."""
    return {
        "n": len(scores),
        "json_valid_rate": _rate(s.json_valid for s in scores),
        "schema_compliance_rate": _rate(s.schema_valid for s in scores),
        "signal_in_range_rate": _rate(s.signal_ok for s in scores),
        "korean_rationale_rate": _rate(s.korean_ok for s in scores),
        "strategy_consistency_rate": _rate(s.strategy_ok for s in scores),
        "rouge_l_f1": _mean(s.rouge_l for s in scores),
        "latency_p50_s": _percentile([s.latency_s for s in scores], 50),
    }


def aggregate(scores: list[ReplyScore], tasks: Iterable[str] | None = None,
              wall_s: float | None = None) -> dict[str, Any]:
    """The metrics file for one model: overall blocks plus `per_task` for every task type (identical keys).
    `wall_s`: the pass's wall time (replies decoded in parallel overlap, so it is less than their latencies' sum)."""
    tasks = [str(t) for t in (tasks if tasks is not None else TaskType)]
    latencies = [s.latency_s for s in scores]
    tokens = sum(s.completion_tokens for s in scores)
    seconds = sum(latencies)
    core = _core(scores)
    return {
        "n_samples": len(scores),
        "json": {
            "valid_rate": core["json_valid_rate"],
            # Replies that parse as they are vs. only after removing a fence or prose ("how often it had to").
            "direct_rate": _rate(s.json_method is Method.DIRECT for s in scores),
            "unwrapped_rate": _rate(s.json_method in (Method.FENCED, Method.EMBEDDED) for s in scores),
            "fenced_count": sum(s.json_method is Method.FENCED for s in scores),
            "embedded_count": sum(s.json_method is Method.EMBEDDED for s in scores),
        },
        "schema": {
            "compliance_rate": core["schema_compliance_rate"],
            # Among replies that parsed: any impossible ticker, sector, valuation or leverage.
            "hallucination_rate": _rate(s.hallucination for s in scores if s.json_valid),
        },
        "signal": {
            "in_range_rate": core["signal_in_range_rate"],
            "n_scored": sum(s.signal_ok is not None for s in scores),
        },
        "korean": {
            "rationale_rate": core["korean_rationale_rate"],
            "hangul_share_mean": _mean(s.hangul_share for s in scores),
        },
        "strategy": {
            "consistency_rate": core["strategy_consistency_rate"],
            # Among schema-valid replies only: how often a well-formed answer breaks a rule (what DPO targets).
            "violation_rate_of_valid": _rate(s.violation for s in scores),
        },
        "latency": {
            "p50_s": core["latency_p50_s"],
            "p95_s": _percentile(latencies, 95),
            "mean_s": _mean(latencies),
        },
        "throughput": {
            # End-to-end: prompt processing included, the same definition for every backend.
            "gen_tokens_per_s": round(tokens / seconds, 3) if seconds > 0 else None,
            "completion_tokens_mean": _mean(float(s.completion_tokens) for s in scores),
            # The whole pass: every reply's tokens over its wall time (evaluate.parallel replies at once).
            "wall_s": None if wall_s is None else round(wall_s, 3),
            "wall_gen_tokens_per_s": round(tokens / wall_s, 3) if wall_s else None,
        },
        "rouge": {"l_f1_mean": core["rouge_l_f1"]},
        "per_task": {task: _core([s for s in scores if s.task == task]) for task in tasks},
    }


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"json": {"valid_rate": 1}} -> {"json.valid_rate": 1}, the dotted names `dvc metrics show` prints."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
