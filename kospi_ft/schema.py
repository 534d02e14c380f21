"""The response schema: one pydantic model per task type, built from shared blocks (Position, Valuation,
Risk, Action, SectorImpact, ...). The synthetic generator, the DPO rejecter and the evaluator all validate
through this module.

Three kinds of findings, each from one function:
- `schema_errors(task, data)`: everything that makes an answer invalid (missing field, wrong type, value out
  of range, non-Korean rationale, unknown field, and the hallucinations below).
- `hallucinations(task, data)`: the subset that asserts something impossible: a ticker or sector outside the
  universe, a name that does not belong to its ticker, PER/PBR/EV-EBITDA beyond any listed Korean stock,
  leverage beyond what any account offers. They carry the pydantic error type "hallucination".
- `quality_issues(task, data)`: answers that are valid but useless: rationale or summary too short, the same
  rationale repeated for every stock.
Strategy consistency (regime -> exposure, stops, ...) is `kospi_ft.strategy.rule_violations`.
"""
from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .data.regime import Regime
from .data.scenarios import SHOCKS, US_EVENTS
from .data.universe import SECTORS, TICKERS, by_code


class TaskType(str, enum.Enum):
    FULL_ANALYSIS = "full_analysis"
    REGIME_CLASSIFICATION = "regime_classification"
    OVERNIGHT_GAP = "overnight_gap"
    SECTOR_ANALYSIS = "sector_analysis"
    RISK_MANAGEMENT = "risk_management"
    REGIME_TRANSITION = "regime_transition"
    OPENING_MOMENTUM = "opening_momentum"
    FX_IMPACT = "fx_impact"
    STOP_LOSS_MANAGEMENT = "stop_loss_management"
    INTRADAY_REBALANCING = "intraday_rebalancing"
    WHAT_IF = "what_if"
    MULTI_STEP = "multi_step"

    def __str__(self) -> str:
        return self.value


# Plausibility bounds: a value beyond them describes no listed Korean stock or account, so it is reported as a
# hallucination rather than an ordinary range error. (The snapshot store keeps PER in (0.5, 200) and PBR in
# (0.01, 50); the bounds here are deliberately wider so that only the impossible is flagged.)
MAX_PER = 1000.0
MAX_PBR = 100.0
MAX_EV_EBITDA = 200.0
MAX_LEVERAGE = 3.0

#: Quality floor (characters) for a rationale and a summary; generated answers are well above it.
MIN_RATIONALE_CHARS = 20
MIN_SUMMARY_CHARS = 30

# Ceilings, so that a reply is finite (a grammar built from the JSON schema stops a model at them). Generated
# answers stay far below (at most 89-char texts, 128-char summaries, 6 list items); a trading system wants no more.
MAX_TEXT_CHARS = 200
MAX_SUMMARY_CHARS = 300
MAX_LIST_ITEMS = 10

HALLUCINATION = "hallucination"


def _hallucination(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(HALLUCINATION, message, ctx)


def _check_ticker(code: str) -> str:
    if code not in TICKERS:
        raise _hallucination("ticker {code} is not in the KOSPI universe", code=code)
    return code


def _check_sector(sector: str) -> str:
    if sector not in SECTORS:
        raise _hallucination("sector {sector} is not a universe sector", sector=sector)
    return sector


def _has_hangul(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)


def _check_korean(text: str) -> str:
    if not _has_hangul(text):
        raise PydanticCustomError("korean_required", "text must be written in Korean (no Hangul found)")
    return text


def _upper_bound(name: str, bound: float):
    def check(value: float) -> float:
        if value > bound:
            raise _hallucination("{name} {value} is beyond any listed stock or account (max {bound})",
                                 name=name, value=value, bound=bound)
        return value
    # Read by kospi_ft.json_schema: the bound is a JSON-schema `maximum` there, a hallucination check here.
    check.maximum = bound
    return check


Ticker = Annotated[str, Field(pattern=r"^\d{6}$", description="code"),
                   AfterValidator(_check_ticker)]
Sector = Annotated[str, Field(description="sector key"), AfterValidator(_check_sector)]
KoreanText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS, description="한국어"),
                      AfterValidator(_check_korean)]
Summary = Annotated[str, Field(min_length=1, max_length=MAX_SUMMARY_CHARS, description="한국어"),
                    AfterValidator(_check_korean)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
Signed = Annotated[float, Field(ge=-1.0, le=1.0, strict=True)]
#: A fractional return or move (-0.05 = -5%).
Return = Annotated[float, Field(ge=-1.0, le=1.0, strict=True)]
Price = Annotated[float, Field(gt=0.0, strict=True)]
Side = Literal["BUY", "HOLD", "SELL", "REDUCE"]
ActionType = Literal["BUY", "SELL", "REDUCE", "HOLD", "HEDGE"]
Impact = Literal["POSITIVE", "NEUTRAL", "NEGATIVE"]
UsEventKey = Literal[tuple(e.key for e in US_EVENTS)]  # type: ignore[valid-type]
ShockKey = Literal[tuple(s.key for s in SHOCKS)]       # type: ignore[valid-type]


class Block(BaseModel):
    """Base of every schema model: unknown fields are errors (an invented field is not silently dropped)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Position(Block):
    ticker: Ticker
    name: str
    action: Side
    weight: Fraction
    score: Signed
    rationale: KoreanText

    @model_validator(mode="after")
    def _name_matches_ticker(self) -> "Position":
        expected = by_code(self.ticker).name_ko
        if self.name != expected:
            raise _hallucination("name {name} does not belong to ticker {ticker} ({expected})",
                                 name=self.name, ticker=self.ticker, expected=expected)
        return self


class Valuation(Block):
    ticker: Ticker
    per: Annotated[float, Field(gt=0.0, strict=True), AfterValidator(_upper_bound("per", MAX_PER))]
    pbr: Annotated[float, Field(gt=0.0, strict=True), AfterValidator(_upper_bound("pbr", MAX_PBR))]
    ev_ebitda: Annotated[float, Field(gt=0.0, strict=True),
                         AfterValidator(_upper_bound("ev_ebitda", MAX_EV_EBITDA))]
    roe: Signed
    f_score: Annotated[int, Field(ge=0, le=9, strict=True)]
    verdict: Literal["UNDERVALUED", "FAIR", "OVERVALUED"]


class Risk(Block):
    leverage: Annotated[float, Field(ge=0.0, strict=True), AfterValidator(_upper_bound("leverage", MAX_LEVERAGE))]
    stop_loss: Annotated[float, Field(gt=-1.0, lt=0.0, strict=True)]
    take_profit: Annotated[float, Field(gt=0.0, le=1.0, strict=True)]
    max_drawdown_limit: Annotated[float, Field(gt=-1.0, lt=0.0, strict=True)]
    max_position_weight: Annotated[float, Field(gt=0.0, le=1.0, strict=True)]


class Action(Block):
    type: ActionType
    ticker: Ticker | None
    weight_change: Signed
    rationale: KoreanText


class SectorImpact(Block):
    sector: Sector
    impact: Impact
    score: Signed
    rationale: KoreanText


class Indicators(Block):
    market_return: Return
    breadth: Fraction
    momentum_10d: Return
    vol_10d: Annotated[float, Field(ge=0.0, le=5.0, strict=True)]


class UsMarket(Block):
    sp500_return: Return
    nasdaq_return: Return
    sox_return: Return


class OpeningGap(Block):
    ticker: Ticker
    gap: Return
    volume_ratio: Annotated[float, Field(ge=0.0, strict=True)]


class StopDecision(Block):
    ticker: Ticker
    entry_price: Price
    current_price: Price
    return_pct: Annotated[float, Field(ge=-1.0, strict=True)]
    decision: Literal["STOP_LOSS", "TAKE_PROFIT", "HOLD"]
    rationale: KoreanText


class Step(Block):
    step: Annotated[int, Field(ge=1, strict=True)]
    title: KoreanText
    content: KoreanText


# ---- one answer model per task ----------------------------------------------------------------------------

class Answer(Block):
    """Fields every answer carries: the regime it acts on, the equity exposure, risk settings, a summary."""

    regime: Regime
    exposure: Fraction
    risk: Risk
    summary: Summary


class FullAnalysis(Answer):
    positions: list[Position] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    valuation: list[Valuation] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class RegimeClassification(Answer):
    confidence: Fraction
    indicators: Indicators
    signals: list[KoreanText] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class OvernightGap(Answer):
    us_market: UsMarket
    expected_gap: Annotated[float, Field(ge=-0.3, le=0.3, strict=True)]
    gap_direction: Literal["UP", "DOWN", "FLAT"]
    positions: list[Position] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class SectorAnalysis(Answer):
    event: UsEventKey
    sector_impacts: list[SectorImpact] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    positions: list[Position] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class RiskManagement(Answer):
    current_drawdown: Annotated[float, Field(ge=-1.0, le=0.0, strict=True)]
    mdd_breached: Annotated[bool, Field(strict=True)]
    actions: list[Action] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class RegimeTransition(Answer):
    previous_regime: Regime
    previous_exposure: Fraction
    actions: list[Action] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class OpeningMomentum(Answer):
    opening_gaps: list[OpeningGap] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    positions: list[Position] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class FxImpact(Answer):
    usdkrw_change: Return
    sector_impacts: list[SectorImpact] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    positions: list[Position] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class StopLossManagement(Answer):
    decisions: list[StopDecision] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class IntradayRebalancing(Answer):
    positions: list[Position] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    actions: list[Action] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class WhatIf(Answer):
    shock: ShockKey
    base_regime: Regime
    actions: list[Action] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class MultiStep(Answer):
    steps: list[Step] = Field(min_length=3, max_length=MAX_LIST_ITEMS)
    positions: list[Position] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


RESPONSE_MODELS: dict[TaskType, type[Answer]] = {
    TaskType.FULL_ANALYSIS: FullAnalysis,
    TaskType.REGIME_CLASSIFICATION: RegimeClassification,
    TaskType.OVERNIGHT_GAP: OvernightGap,
    TaskType.SECTOR_ANALYSIS: SectorAnalysis,
    TaskType.RISK_MANAGEMENT: RiskManagement,
    TaskType.REGIME_TRANSITION: RegimeTransition,
    TaskType.OPENING_MOMENTUM: OpeningMomentum,
    TaskType.FX_IMPACT: FxImpact,
    TaskType.STOP_LOSS_MANAGEMENT: StopLossManagement,
    TaskType.INTRADAY_REBALANCING: IntradayRebalancing,
    TaskType.WHAT_IF: WhatIf,
    TaskType.MULTI_STEP: MultiStep,
}


# ---- entry points -------------------------------------------------------------------------------------------

def validate_response(task: TaskType | str, data: Any) -> Answer:
    """Validate one answer (dict, or JSON text/bytes) for `task`. Raises pydantic.ValidationError."""
    model = RESPONSE_MODELS[TaskType(task)]
    if isinstance(data, (str, bytes, bytearray)):
        return model.model_validate_json(data)
    return model.model_validate(data)


def _format(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{loc}: {err['msg']} [{err['type']}]"


def _errors(task: TaskType | str, data: Any) -> list[dict]:
    try:
        validate_response(task, data)
    except ValidationError as err:
        return err.errors(include_url=False)
    return []


def schema_errors(task: TaskType | str, data: Any) -> list[str]:
    """Every reason `data` is not a valid answer for `task` (empty when valid). Invalid JSON text counts."""
    return [_format(e) for e in _errors(task, data)]


def hallucinations(task: TaskType | str, data: Any) -> list[str]:
    """The schema errors that assert something impossible (error type "hallucination")."""
    return [_format(e) for e in _errors(task, data) if e["type"] == HALLUCINATION]


def _texts_by_owner(answer: Answer) -> tuple[list[str], list[list[str]]]:
    """All rationale-like texts, and the groups whose members should differ from one another."""
    texts: list[str] = []
    groups: list[list[str]] = []
    for name in ("positions", "actions", "sector_impacts", "decisions"):
        items = getattr(answer, name, None)
        if items:
            group = [item.rationale for item in items]
            texts.extend(group)
            groups.append(group)
    return texts, groups


def quality_issues(task: TaskType | str, data: Any) -> list[str]:
    """Why a schema-valid answer is low quality (empty when fine). `data` must be schema-valid."""
    answer = data if isinstance(data, Answer) else validate_response(task, data)
    issues: list[str] = []
    if len(answer.summary) < MIN_SUMMARY_CHARS:
        issues.append(f"summary: too short ({len(answer.summary)} < {MIN_SUMMARY_CHARS} chars)")
    texts, groups = _texts_by_owner(answer)
    short = [t for t in texts if len(t) < MIN_RATIONALE_CHARS]
    if short:
        issues.append(f"rationale: {len(short)} of {len(texts)} shorter than {MIN_RATIONALE_CHARS} chars")
    for group in groups:
        if len(group) > 1 and len(set(group)) == 1:
            issues.append(f"rationale: the same text repeated for all {len(group)} items")
    return issues

