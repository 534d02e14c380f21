"""Stage-3 DPO preference pairs from the Stage-2 SFT set: chosen = the record's correct answer, rejected = the
same answer broken in one of four ways (spec 3.2), in TRL's conversational preference format.

Rejection types and what each rejected answer provably is (checked for every pair with the same code the
evaluator uses, `kospi_ft.schema` and `kospi_ft.strategy`; see `rejection_holds`):
- strategy_violation (30%): schema-valid, but `rule_violations` is not empty (fully long in BEAR, leverage
  over the cap, a looser stop, a regime the indicators contradict, a stop-loss ignored, a position far over
  its weight cap).
- quality_degradation (30%): schema-valid and rule-consistent, but `quality_issues` is not empty (no
  rationale, too short, the same reason for every stock).
- schema_violation (20%): `schema_errors` not empty and none of them a hallucination (missing required field,
  wrong type such as exposure "high", invalid enum).
- hallucination (20%): every schema error is a hallucination (ticker outside the universe, PER 2000,
  leverage 5x, a name that is not the ticker's).
Type counts use the same largest-remainder rule as the SFT task counts. A record backs at most one pair per
rejection type, so no pair repeats; a count the records cannot back that way is a ParamsError (`pair_capacity`).

Model rejects (`collect_model_rejects`, spec 3.2): `model_reject_ratio` of the pairs get a rejected answer the
Stage-2 model actually wrote. `collect_model_rejects` samples it through the evaluation backends (llama.cpp on
the exported GGUF, or Ollama) at `temperature` on SFT prompts, and keeps a reply only when it is schema-broken
as the evaluator judges it (`kospi_ft.evaluation.parsing.extract_json` + `kospi_ft.schema.schema_errors`:
no JSON object, missing field, wrong type, ...); chosen is the record's correct answer and rejection_type is
"model_output". Sampling stops after `attempts_per_reject` tries per wanted reject; a shortfall is filled with
synthetic pairs and reported (`ModelRejectStats`), so the pair count is always exactly `count`. Each try has
its own seed derived from `seed`, so a fixed model file gives the same pairs run after run.
"""
from __future__ import annotations

import collections
import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
from pydantic import Field, ValidationError, model_validator
from tqdm import tqdm

from .. import params as params_mod
from ..errors import DataValidationError, ParamsError
from ..evaluation.parsing import extract_json
from ..schema import HALLUCINATION as HALLUCINATION_ERROR, TaskType, quality_issues, schema_errors, validate_response
from ..strategy import REGIME_ORDER, RULES, rule_violations
from .quotas import allocate
from .regime import Regime
from .synthetic import Draws, answer_json
from .universe import TICKERS, UNIVERSE

if TYPE_CHECKING:
    from ..evaluation.backends import Backend

logger = logging.getLogger(__name__)

REJECTION_SHARES: dict[str, float] = {
    "strategy_violation": 0.30,
    "quality_degradation": 0.30,
    "schema_violation": 0.20,
    "hallucination": 0.20,
}

#: rejection_type of a pair whose rejected answer the Stage-2 model wrote.
MODEL_OUTPUT = "model_output"


class DpoPairsParams(params_mod.Section):
    """params.yaml `dpo_pairs:` (CLI flags of stages/dpo_pairs.py override it)."""

    count: int = 2000  # at most pair_capacity(distinct SFT records): no pair repeats (check_count)
    # Held-out pairs (paths.eval_pairs) from the eval set (paths.eval_set), by the same rejecter and type shares:
    # Stage 3's eval split and the evaluate stage's preference metrics. The eval set's own dates and seed keep
    # their prompts apart from every training pair's.
    eval_count: int = Field(200, ge=1)
    seed: int = 42
    collect_model_rejects: bool = False
    # A pipeline name (stage2 -> paths.gguf_dir/stage2/model-<export.quant>.gguf for llamacpp, the registered
    # <export.ollama_prefix>-s2 for ollama), a .gguf path, or any Ollama model name.
    model: str = "stage2"
    model_reject_ratio: float = 0.15
    backend: Literal["llamacpp", "ollama"] = "llamacpp"
    temperature: float = Field(0.7, gt=0.0)   # spec 3.2: sampled, not greedy
    max_new_tokens: int = Field(96, ge=1)     # reply budget per sample
    attempts_per_reject: int = Field(4, ge=1)  # sampling cap: this many tries per wanted model reject

    @model_validator(mode="after")
    def _check(self) -> "DpoPairsParams":
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        if not 0.0 <= self.model_reject_ratio <= 1.0:
            raise ValueError(f"model_reject_ratio must be in [0, 1], got {self.model_reject_ratio}")
        return self


# ---- what each type must satisfy ---------------------------------------------------------------------------

def rejection_holds(rejection_type: str, task: str, text: str) -> bool:
    """True when the rejected answer `text` breaks exactly what `rejection_type` claims.

    Same verdicts as calling schema_errors / hallucinations / rule_violations / quality_issues one by one, but
    the text is parsed and validated once (benchmarks/bench_synthetic.py measures the difference).
    """
    if rejection_type not in REJECTION_SHARES:
        raise ValueError(f"unknown rejection type {rejection_type!r}")
    try:
        answer = validate_response(task, text)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        n_hallucinated = sum(e["type"] == HALLUCINATION_ERROR for e in errors)
        if rejection_type == "schema_violation":
            return n_hallucinated == 0
        return rejection_type == "hallucination" and n_hallucinated == len(errors)
    if rejection_type in ("schema_violation", "hallucination"):
        return False
    violations = rule_violations(task, answer)
    if rejection_type == "strategy_violation":
        return bool(violations)
    return not violations and bool(quality_issues(task, answer))


# ---- corruptions -------------------------------------------------------------------------------------------
# Each takes (answer dict, task, rng), edits a deep copy and returns it, or None when it does not apply to
# this answer. `rejection_holds` is the judge: a corruption that fails it is skipped and another is tried.

Corruption = Callable[[dict, TaskType, Draws], "dict | None"]


def _lists_with(a: dict, key: str) -> list[dict]:
    """Every list item (in positions/actions/decisions/...) that has field `key`."""
    out = []
    for name in ("positions", "valuation", "actions", "decisions", "opening_gaps", "sector_impacts"):
        out += [item for item in a.get(name) or () if isinstance(item, dict) and key in item]
    return out


# strategy_violation

def _full_long(a: dict, task: TaskType, rng: Draws) -> dict | None:
    """Exposure outside the regime's band: fully long in a weak regime, nearly flat in a strong one."""
    rule = RULES[Regime(a["regime"])]
    a["exposure"] = 1.0 if rule.exposure_max < 1.0 else round(rule.exposure_min - 0.4, 2)
    if a.get("mdd_breached"):
        a["exposure"] = 1.0
    return a


def _over_leverage(a: dict, task: TaskType, rng: Draws) -> dict | None:
    cap = 1.0 if a.get("mdd_breached") else RULES[Regime(a["regime"])].leverage_cap
    a["risk"]["leverage"] = round(cap + 0.5, 1)  # still below schema.MAX_LEVERAGE: a rule break, not a hallucination
    return a


def _loose_stop(a: dict, task: TaskType, rng: Draws) -> dict | None:
    a["risk"]["stop_loss"] = round(RULES[Regime(a["regime"])].stop_loss * 2.5, 3)
    return a


def _wrong_regime(a: dict, task: TaskType, rng: Draws) -> dict | None:
    """The answer claims another regime (and sizes the book for it) while its own evidence says otherwise."""
    if task not in (TaskType.REGIME_CLASSIFICATION, TaskType.WHAT_IF):
        return None
    current = Regime(a["regime"])
    others = [g for g in REGIME_ORDER if g != current]
    claimed = others[rng.integers(len(others))]
    rule = RULES[claimed]
    a["regime"] = claimed.value
    a["exposure"] = round((rule.exposure_min + rule.exposure_max) / 2, 2)
    a["risk"].update(leverage=min(a["risk"]["leverage"], rule.leverage_cap), stop_loss=rule.stop_loss,
                     take_profit=rule.take_profit)
    return a


def _ignore_stop(a: dict, task: TaskType, rng: Draws) -> dict | None:
    """Hold on to a position that hit its stop-loss (or sell one the rules say to keep)."""
    ds = a.get("decisions")
    if not ds:
        return None
    d = ds[rng.integers(len(ds))]
    d["decision"] = "HOLD" if d["decision"] != "HOLD" else "STOP_LOSS"
    return a


def _overweight(a: dict, task: TaskType, rng: Draws) -> dict | None:
    """One position far above the account's per-stock cap (and usually above the whole exposure)."""
    items = a.get("positions")
    if not items:
        return None
    item = items[rng.integers(len(items))]
    item.update(action="BUY", score=abs(item["score"]) or 0.5,
                weight=min(1.0, round(a["risk"]["max_position_weight"] + 0.3, 2)))
    return a


STRATEGY: tuple[Corruption, ...] = (_full_long, _over_leverage, _loose_stop, _wrong_regime, _ignore_stop, _overweight)


# quality_degradation

_SHORT = ("매수 추천", "보유", "괜찮음", "좋아 보임", "비중 조절")


def _too_short(a: dict, task: TaskType, rng: Draws) -> dict | None:
    a["summary"] = "분석 결과입니다."
    for i, item in enumerate(_lists_with(a, "rationale")):
        item["rationale"] = _SHORT[(i + rng.integers(len(_SHORT))) % len(_SHORT)]
    return a


def _same_reason(a: dict, task: TaskType, rng: Draws) -> dict | None:
    items = _lists_with(a, "rationale")
    if len(items) < 2:
        return None
    reason = "시장 상황과 종목 흐름을 종합적으로 고려한 판단입니다."
    for item in items:
        item["rationale"] = reason
    return a


def _no_rationale(a: dict, task: TaskType, rng: Draws) -> dict | None:
    for item in _lists_with(a, "rationale"):
        item["rationale"] = "근거 없음"
    a["summary"] = "특이사항 없음."
    return a


QUALITY: tuple[Corruption, ...] = (_too_short, _same_reason, _no_rationale)


# schema_violation

def _missing_field(a: dict, task: TaskType, rng: Draws) -> dict | None:
    keys = list(a)
    del a[keys[rng.integers(len(keys))]]
    return a


def _exposure_word(a: dict, task: TaskType, rng: Draws) -> dict | None:
    a["exposure"] = ("high", "낮음", "medium")[rng.integers(3)]
    return a


def _score_word(a: dict, task: TaskType, rng: Draws) -> dict | None:
    items = _lists_with(a, "score")
    if not items:
        return None
    items[rng.integers(len(items))]["score"] = "strong"
    return a


def _percent_string(a: dict, task: TaskType, rng: Draws) -> dict | None:
    items = _lists_with(a, "weight")
    if not items:
        return None
    item = items[rng.integers(len(items))]
    item["weight"] = f"{item['weight'] * 100:.0f}%"
    return a


def _bad_regime_name(a: dict, task: TaskType, rng: Draws) -> dict | None:
    a["regime"] = ("BULLISH", "SIDEWAYS", "CRASH")[rng.integers(3)]
    return a


SCHEMA: tuple[Corruption, ...] = (_missing_field, _exposure_word, _score_word, _percent_string, _bad_regime_name)


# hallucination

def _fake_code(rng: Draws) -> str:
    while True:
        code = f"{rng.integers(1_000_000):06d}"
        if code not in TICKERS:
            return code


def _fake_ticker(a: dict, task: TaskType, rng: Draws) -> dict | None:
    items = [x for x in _lists_with(a, "ticker") if x["ticker"] is not None]
    if not items:
        return None
    items[rng.integers(len(items))]["ticker"] = _fake_code(rng)
    return a


def _absurd_per(a: dict, task: TaskType, rng: Draws) -> dict | None:
    items = a.get("valuation")
    if not items:
        return None
    items[rng.integers(len(items))]["per"] = 2000.0
    return a


def _leverage_5x(a: dict, task: TaskType, rng: Draws) -> dict | None:
    a["risk"]["leverage"] = 5.0
    return a


def _wrong_name(a: dict, task: TaskType, rng: Draws) -> dict | None:
    items = a.get("positions")
    if not items:
        return None
    item = items[rng.integers(len(items))]
    names = [s.name_ko for s in UNIVERSE if s.code != item["ticker"]]
    item["name"] = names[rng.integers(len(names))]
    return a


HALLUCINATION: tuple[Corruption, ...] = (_fake_ticker, _absurd_per, _leverage_5x, _wrong_name)

CORRUPTIONS: dict[str, tuple[Corruption, ...]] = {
    "strategy_violation": STRATEGY,
    "quality_degradation": QUALITY,
    "schema_violation": SCHEMA,
    "hallucination": HALLUCINATION,
}


def reject(answer: str, task: TaskType, rejection_type: str, rng: Draws) -> tuple[str, str]:
    """(rejected JSON text, corruption name) for one chosen answer (JSON text); tries the type's corruptions in
    a random order and keeps the first whose result `rejection_holds`."""
    options = CORRUPTIONS[rejection_type]
    start = rng.integers(len(options))
    for k in range(len(options)):
        fn = options[(start + k) % len(options)]
        # Each attempt edits a fresh parse of the chosen text (json.loads: ~2.5x faster than copy.deepcopy).
        broken = fn(json.loads(answer), task, rng)
        if broken is None:
            continue
        # Same serialisation as the chosen answer: only the defect differs, never the formatting.
        text = answer_json(broken)
        if rejection_holds(rejection_type, task.value, text):
            return text, fn.__name__.lstrip("_")
    raise AssertionError(f"no {rejection_type} corruption applies to this {task.value} answer")


# ---- pairs -------------------------------------------------------------------------------------------------

def _check_record(i: int, rec: Any, source: str) -> tuple[list[dict], str, TaskType]:
    """(prompt messages, chosen answer text, task) of SFT record i; the chosen answer must be schema-valid and
    rule-consistent, or the pair would teach the wrong preference."""
    where = f"{source}: record {i}"
    try:
        messages = rec["messages"]
        roles = [m["role"] for m in messages]
        task = TaskType(rec["task"])
        text = messages[-1]["content"]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise DataValidationError(f"{where}: not an SFT record ({err!r}); expected keys messages/task") from None
    if roles[-1:] != ["assistant"] or "user" not in roles:
        raise DataValidationError(f"{where}: column 'messages' must end with an assistant turn after a user "
                                  f"turn, got roles {roles}")
    try:
        answer = validate_response(task, text)
    except ValidationError as err:
        raise DataValidationError(f"{where}: the assistant answer is not valid for {task.value}: "
                                  f"{err.errors(include_url=False)[0]['msg']}") from None
    violations = rule_violations(task, answer)
    if violations:
        raise DataValidationError(f"{where}: the assistant answer breaks the strategy rules: {violations[0]}")
    return messages[:-1], text, task


def _record_keys(records: Sequence[dict]) -> list[str]:
    """One key per record, equal for records whose messages are equal (they would back identical pairs)."""
    return [json.dumps(r.get("messages") if isinstance(r, dict) else r, ensure_ascii=False, sort_keys=True,
                       default=str) for r in records]


def pair_capacity(distinct_records: int) -> int:
    """The most pairs `distinct_records` records back at the type shares: one pair per record and rejection type.

    Reusing a record for a type it already backs can give the same pair again (several corruptions are
    deterministic), so the largest type's quota must fit in the records."""
    count = int(distinct_records / max(REJECTION_SHARES.values())) + len(REJECTION_SHARES)
    while count > 0 and max(allocate(count, REJECTION_SHARES).values()) > distinct_records:
        count -= 1
    return count


def check_count(records: Sequence[dict], count: int, *, param: str = "count", source: str = "<records>") -> None:
    """ParamsError naming `param` when `records` cannot back `count` distinct pairs (see `pair_capacity`)."""
    _check_capacity(len(set(_record_keys(records))), count, param, source)


def _check_capacity(distinct: int, count: int, param: str, source: str) -> None:
    capacity = pair_capacity(distinct)
    if count > capacity:
        quotas = allocate(count, REJECTION_SHARES)
        largest = max(quotas, key=quotas.get)
        raise ParamsError(
            f"{param}={count}: {source} holds {distinct} distinct SFT records, which yield at most {capacity} "
            f"distinct pairs at the rejection-type shares (one pair per record and type; {largest} alone would need "
            f"{quotas[largest]} records). More would repeat pairs: lower {param} to {capacity} or less, or give it "
            f"more records.")


def _one_pair_per_record_and_type(order: list[int], types: list[str], keys: list[str],
                                  spare: list[int]) -> None:
    """Rearrange `order` and `types` (in place) so no record backs two pairs of one rejection type, keeping the
    type counts; `spare`: every record index, in the order to take one from when no swap is left.

    A no-op while no record is used twice, so counts up to the record count keep their pairs exactly."""
    used: dict[str, set[str]] = collections.defaultdict(set)
    for k in range(len(order)):
        taken = used[keys[order[k]]]
        if types[k] in taken:
            # Swap in the type of a later pair that this record has not backed yet.
            j = next((j for j in range(k + 1, len(order)) if types[j] not in taken), None)
            if j is not None:
                types[k], types[j] = types[j], types[k]
            else:  # the last pairs: another record that lacks this type (one exists: check_count)
                order[k] = next(i for i in spare if types[k] not in used[keys[i]])
        used[keys[order[k]]].add(types[k])


def make_pairs(records: Sequence[dict], count: int, *, seed: int, progress: bool = False,
               source: str = "<records>", param: str = "count") -> list[dict[str, Any]]:
    """`count` distinct preference pairs from SFT `records` (sampled without replacement while they last, then
    one pair per record and rejection type). ParamsError naming `param` when the records cannot back `count`."""
    if not records:
        raise DataValidationError(f"{source}: no SFT records to build pairs from")
    keys = _record_keys(records)
    _check_capacity(len(set(keys)), count, param, source)
    gen = np.random.default_rng([seed, 3])
    types = [t for t, n in allocate(count, REJECTION_SHARES).items() for _ in range(n)]
    types = [types[i] for i in gen.permutation(count)]
    # Each record is used once before any is reused, so small SFT sets still give every pair a prompt.
    order: list[int] = []
    while len(order) < count:
        order += gen.permutation(len(records)).tolist()
    spare = order[:len(records)]
    order = order[:count]
    _one_pair_per_record_and_type(order, types, keys, spare)
    rng = Draws(gen)
    pairs = []
    for k in tqdm(range(count), desc="dpo pairs", disable=not progress, unit="pair"):
        i = order[k]
        prompt, chosen, task = _check_record(i, records[i], source)
        rejected, _ = reject(chosen, task, types[k], rng)
        pairs.append({
            "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "rejection_type": types[k],
            "task": task.value,
        })
    return pairs


# ---- model rejects -----------------------------------------------------------------------------------------

def model_output_defects(task: str, text: str) -> list[str]:
    """Why a model reply is schema-broken, judged as the evaluator judges it (empty when it is a valid answer):
    the JSON object is taken out of the reply with `extract_json` (bare, fenced or in prose), then checked with
    `schema_errors`."""
    got = extract_json(text)
    if not got.ok:
        return [f"no JSON object: {got.error}"]
    return schema_errors(task, got.data)


def model_reject_target(count: int, ratio: float) -> int:
    """How many of `count` pairs should carry a model reject (largest remainder, like every other count)."""
    return allocate(count, {MODEL_OUTPUT: ratio, "synthetic": 1.0 - ratio})[MODEL_OUTPUT]


def sample_seed(seed: int, attempt: int) -> int:
    """The sampling seed of try `attempt`: fixed per try, different between tries (a retried prompt must not
    replay the same sample)."""
    return int(np.random.SeedSequence([seed, 4, attempt]).generate_state(1)[0])


@dataclass(frozen=True)
class ModelRejectStats:
    model: str            # the backend's description (file or Ollama model)
    target: int           # model rejects wanted
    collected: int        # schema-broken replies kept
    attempts: int         # replies sampled
    max_attempts: int
    valid: int            # replies that were valid answers (not kept)
    empty: int            # empty replies (not kept: they show no attempt at the format)
    budget_hit: int       # kept replies that used the whole max_new_tokens budget

    @property
    def shortfall(self) -> int:
        """Model rejects that were wanted but not found; synthetic pairs take their place."""
        return self.target - self.collected

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shortfall": self.shortfall}


def collect_model_rejects(backend: "Backend", records: Sequence[dict], target: int, *, seed: int,
                          max_new_tokens: int, attempts_per_reject: int = 4, progress: bool = False,
                          source: str = "<records>") -> tuple[list[dict[str, Any]], ModelRejectStats]:
    """Up to `target` pairs whose rejected answer is a schema-broken reply `backend` sampled for an SFT prompt.

    Prompts are the SFT records in a seeded order (each used once before any repeats); at most
    `attempts_per_reject * target` replies are sampled.
    """
    if not records:
        raise DataValidationError(f"{source}: no SFT records to sample the model on")
    order = np.random.default_rng([seed, 4]).permutation(len(records))
    max_attempts = attempts_per_reject * target
    pairs: list[dict[str, Any]] = []
    attempts = valid = empty = budget_hit = 0
    with tqdm(total=max_attempts, desc="model rejects", unit="sample", disable=not progress) as bar:
        while len(pairs) < target and attempts < max_attempts:
            i = int(order[attempts % len(records)])
            prompt, chosen, task = _check_record(i, records[i], source)
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
            reply = backend.generate(messages, max_new_tokens, seed=sample_seed(seed, attempts))
            attempts += 1
            bar.update()
            if not reply.text.strip():
                empty += 1
            elif not model_output_defects(task.value, reply.text):
                valid += 1
            else:
                budget_hit += reply.completion_tokens >= max_new_tokens
                pairs.append({
                    "prompt": messages,
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": reply.text}],
                    "rejection_type": MODEL_OUTPUT,
                    "task": task.value,
                })
                bar.set_postfix(kept=len(pairs))
    stats = ModelRejectStats(model=backend.description, target=target, collected=len(pairs), attempts=attempts,
                             max_attempts=max_attempts, valid=valid, empty=empty, budget_hit=budget_hit)
    if stats.shortfall:
        logger.warning("model rejects: %d of %d found in %d samples of %s; the other %d pairs get synthetic "
                       "rejected answers", stats.collected, target, attempts, backend.description, stats.shortfall)
    return pairs, stats


def combine(model_pairs: Sequence[dict], records: Sequence[dict], count: int, *, seed: int,
            progress: bool = False, source: str = "<records>", param: str = "count") -> list[dict[str, Any]]:
    """`count` pairs: the model-reject pairs plus synthetic pairs for the rest, in a seeded shuffled order.
    Without model pairs this is exactly `make_pairs`."""
    if not model_pairs:
        return make_pairs(records, count, seed=seed, progress=progress, source=source, param=param)
    if len(model_pairs) > count:
        raise ValueError(f"{len(model_pairs)} model pairs for {count} pairs")
    synthetic = make_pairs(records, count - len(model_pairs), seed=seed, progress=progress, source=source,
                           param=param)
    merged = list(model_pairs) + synthetic
    return [merged[i] for i in np.random.default_rng([seed, 5]).permutation(len(merged))]
