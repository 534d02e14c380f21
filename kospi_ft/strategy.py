"""Strategy rules, defined once: what each regime allows (exposure band, leverage cap, stop-loss,
take-profit), the portfolio rules (MDD de-risking, position caps), and the task-specific consistency rules.

`rule_violations(task, data)` lists every place a schema-valid answer contradicts these rules. The synthetic
generator builds answers from the same functions, the DPO rejecter breaks them on purpose, and the evaluator
reports the share of answers without violations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from . import schema
from .data.regime import Regime, classify
from .data.scenarios import FX_SENSITIVITY, SHOCKS_BY_KEY, US_EVENTS_BY_KEY
from .data.universe import by_code
from .schema import Answer, TaskType


@dataclass(frozen=True)
class RegimeRule:
    regime: Regime
    label_ko: str        # Korean name of the regime
    stance_ko: str       # what the regime means for the book, in Korean
    exposure_min: float  # equity exposure band (fraction of NAV)
    exposure_max: float
    leverage_cap: float  # gross leverage allowed (1.0 = none)
    stop_loss: float     # exit a position whose return is <= this (negative fraction); tighter is allowed
    take_profit: float   # take profit on a position whose return is >= this; earlier is allowed


RULES: dict[Regime, RegimeRule] = {
    Regime.STRONG_BULL: RegimeRule(Regime.STRONG_BULL, "강한 상승장", "추세 추종, 주도주 집중 매수",
                                   0.80, 1.00, 1.5, -0.08, 0.20),
    Regime.MILD_BULL: RegimeRule(Regime.MILD_BULL, "완만한 상승장", "선별적 매수, 분산 유지",
                                 0.60, 0.80, 1.2, -0.07, 0.15),
    Regime.WEAKENING: RegimeRule(Regime.WEAKENING, "상승 둔화", "비중 축소 시작, 신규 매수는 선별적으로",
                                 0.40, 0.60, 1.0, -0.05, 0.10),
    Regime.SHORT_TERM_STRESS: RegimeRule(Regime.SHORT_TERM_STRESS, "단기 스트레스", "방어적 운용, 레버리지 금지",
                                         0.20, 0.40, 1.0, -0.04, 0.08),
    Regime.BEAR: RegimeRule(Regime.BEAR, "약세장", "현금 비중 극대화, 방어주 위주 최소 보유",
                            0.00, 0.20, 1.0, -0.03, 0.06),
}

#: Regimes from best to worst; a shock moves the regime along this order.
REGIME_ORDER: tuple[Regime, ...] = (
    Regime.STRONG_BULL, Regime.MILD_BULL, Regime.WEAKENING, Regime.SHORT_TERM_STRESS, Regime.BEAR,
)

# Tolerances and thresholds of the task rules.
EPS = 1e-6                 # float slack for sums and bounds
GAP_FLAT_BAND = 0.003      # |expected gap| below 0.3% is FLAT
IMPACT_NEUTRAL = 0.1       # |impact score| below this is NEUTRAL
FX_NEUTRAL_CHANGE = 0.002  # a USD/KRW move below 0.2% moves no sector
RETURN_TOL = 0.0011        # return_pct vs prices: answers quote 4 decimals of rounded prices
MOMENTUM_GAP_MIN = 0.01    # opening momentum buys need a gap-up of at least 1% ...
MOMENTUM_VOLUME_MIN = 1.5  # ... on at least 1.5x normal volume
UNDERVALUED_PER, UNDERVALUED_PBR = 10.0, 1.0
OVERVALUED_PER, OVERVALUED_PBR = 30.0, 5.0


# ---- the rules as functions (the generator calls the same ones) -------------------------------------------

def shift_regime(regime: Regime, steps: int) -> Regime:
    i = REGIME_ORDER.index(Regime(regime)) + steps
    return REGIME_ORDER[min(max(i, 0), len(REGIME_ORDER) - 1)]


def stop_decision(return_pct: float, stop_loss: float, take_profit: float) -> str:
    if return_pct <= stop_loss:
        return "STOP_LOSS"
    if return_pct >= take_profit:
        return "TAKE_PROFIT"
    return "HOLD"


def gap_direction(gap: float) -> str:
    if gap >= GAP_FLAT_BAND:
        return "UP"
    if gap <= -GAP_FLAT_BAND:
        return "DOWN"
    return "FLAT"


def us_composite(sp500: float, nasdaq: float, sox: float) -> float:
    """The US session move the overnight-gap rule compares against: the mean of the three index moves."""
    return (sp500 + nasdaq + sox) / 3.0


def impact_label(score: float) -> str:
    if score >= IMPACT_NEUTRAL:
        return "POSITIVE"
    if score <= -IMPACT_NEUTRAL:
        return "NEGATIVE"
    return "NEUTRAL"


def fx_direction(sector: str, usdkrw_change: float) -> int:
    """+1 / -1 / 0: how a USD/KRW move of `usdkrw_change` moves `sector`."""
    if abs(usdkrw_change) < FX_NEUTRAL_CHANGE:
        return 0
    return FX_SENSITIVITY.get(sector, 0) * (1 if usdkrw_change > 0 else -1)


def valuation_verdict(per: float, pbr: float) -> str:
    if per > OVERVALUED_PER or pbr > OVERVALUED_PBR:
        return "OVERVALUED"
    if per < UNDERVALUED_PER and pbr < UNDERVALUED_PBR:
        return "UNDERVALUED"
    return "FAIR"


def mdd_breached(current_drawdown: float, max_drawdown_limit: float) -> bool:
    return current_drawdown <= max_drawdown_limit


# ---- checking an answer ------------------------------------------------------------------------------------

def _check_common(a: Answer, task: TaskType, out: list[str]) -> None:
    rule = RULES[a.regime]
    derisk = task is TaskType.RISK_MANAGEMENT and a.mdd_breached  # type: ignore[attr-defined]
    if derisk:
        if a.exposure > rule.exposure_min + EPS:
            out.append(f"exposure: {a.exposure} but an MDD breach requires <= {rule.exposure_min} in {a.regime}")
    elif not (rule.exposure_min - EPS <= a.exposure <= rule.exposure_max + EPS):
        out.append(f"exposure: {a.exposure} outside the {a.regime} band "
                   f"[{rule.exposure_min}, {rule.exposure_max}]")
    r = a.risk
    cap = 1.0 if derisk else rule.leverage_cap
    if r.leverage > cap + EPS:
        out.append(f"risk.leverage: {r.leverage} above the cap {cap} for {a.regime}")
    if r.stop_loss < rule.stop_loss - EPS:
        out.append(f"risk.stop_loss: {r.stop_loss} looser than {rule.stop_loss} for {a.regime}")
    if r.take_profit > rule.take_profit + EPS:
        out.append(f"risk.take_profit: {r.take_profit} later than {rule.take_profit} for {a.regime}")


def _check_positions(a: Answer, out: list[str]) -> None:
    positions = getattr(a, "positions", None)
    if not positions:
        return
    tickers = [p.ticker for p in positions]
    if len(set(tickers)) != len(tickers):
        out.append("positions: a ticker appears more than once")
    total = math.fsum(p.weight for p in positions)
    if total > a.exposure + EPS:
        out.append(f"positions: weights sum to {total:.4f}, above exposure {a.exposure}")
    for i, p in enumerate(positions):
        where = f"positions.{i} ({p.ticker})"
        if p.weight > a.risk.max_position_weight + EPS:
            out.append(f"{where}: weight {p.weight} above max_position_weight {a.risk.max_position_weight}")
        if p.action == "BUY" and not (p.score > 0 and p.weight > 0):
            out.append(f"{where}: BUY needs score > 0 and weight > 0 (score {p.score}, weight {p.weight})")
        if p.action == "SELL" and not (p.score < 0 and p.weight == 0):
            out.append(f"{where}: SELL needs score < 0 and weight 0 (score {p.score}, weight {p.weight})")
        if p.action == "REDUCE" and not p.score < 0:
            out.append(f"{where}: REDUCE needs score < 0 (score {p.score})")


def _check_actions(a: Answer, out: list[str]) -> None:
    for i, act in enumerate(getattr(a, "actions", None) or ()):
        where = f"actions.{i}"
        if act.type == "BUY" and not act.weight_change > 0:
            out.append(f"{where}: BUY with weight_change {act.weight_change}")
        if act.type in ("SELL", "REDUCE") and not act.weight_change < 0:
            out.append(f"{where}: {act.type} with weight_change {act.weight_change}")
        if act.type == "HOLD" and act.weight_change != 0:
            out.append(f"{where}: HOLD with weight_change {act.weight_change}")


def _impacts_by_sector(a: Answer) -> dict[str, str]:
    return {s.sector: s.impact for s in a.sector_impacts}  # type: ignore[attr-defined]


def _check_impacts(a: Answer, expected: dict[str, str], source: str, out: list[str]) -> None:
    seen = _impacts_by_sector(a)
    for s in a.sector_impacts:  # type: ignore[attr-defined]
        if s.impact != impact_label(s.score):
            out.append(f"sector_impacts ({s.sector}): impact {s.impact} disagrees with score {s.score}")
        want = expected.get(s.sector, "NEUTRAL")
        if s.impact != want:
            out.append(f"sector_impacts ({s.sector}): {s.impact}, but {source} implies {want}")
    for sector, want in expected.items():
        if want != "NEUTRAL" and sector not in seen:
            out.append(f"sector_impacts: {sector} ({want} under {source}) is missing")
    for p in a.positions:  # type: ignore[attr-defined]
        impact = seen.get(by_code(p.ticker).sector, "NEUTRAL")
        if p.action == "BUY" and impact != "POSITIVE":
            out.append(f"positions ({p.ticker}): BUY in a sector rated {impact}")
        if p.action in ("SELL", "REDUCE") and impact != "NEGATIVE":
            out.append(f"positions ({p.ticker}): {p.action} in a sector rated {impact}")


def _check_task(task: TaskType, a: Any, out: list[str]) -> None:
    if task is TaskType.REGIME_CLASSIFICATION:
        ind = a.indicators
        implied = classify(ind.market_return, ind.breadth, ind.momentum_10d, ind.vol_10d)
        if a.regime != implied:
            out.append(f"regime: {a.regime}, but the indicators classify as {implied}")
    elif task is TaskType.OVERNIGHT_GAP:
        if a.gap_direction != gap_direction(a.expected_gap):
            out.append(f"gap_direction: {a.gap_direction} disagrees with expected_gap {a.expected_gap}")
        us = a.us_market
        us_dir = gap_direction(us_composite(us.sp500_return, us.nasdaq_return, us.sox_return))
        if us_dir != "FLAT" and a.gap_direction not in (us_dir, "FLAT"):
            out.append(f"gap_direction: {a.gap_direction} against the US session ({us_dir})")
    elif task is TaskType.SECTOR_ANALYSIS:
        event = US_EVENTS_BY_KEY[a.event]
        _check_impacts(a, {s: impact_label(v) for s, v in event.impacts.items()}, f"event {a.event}", out)
    elif task is TaskType.FX_IMPACT:
        labels = {1: "POSITIVE", -1: "NEGATIVE", 0: "NEUTRAL"}
        expected = {s.sector: labels[fx_direction(s.sector, a.usdkrw_change)] for s in a.sector_impacts}
        _check_impacts(a, expected, f"USD/KRW {a.usdkrw_change:+.4f}", out)
    elif task is TaskType.RISK_MANAGEMENT:
        breached = mdd_breached(a.current_drawdown, a.risk.max_drawdown_limit)
        if a.mdd_breached != breached:
            out.append(f"mdd_breached: {a.mdd_breached}, but drawdown {a.current_drawdown} vs limit "
                       f"{a.risk.max_drawdown_limit} says {breached}")
        if a.mdd_breached and not any(x.type in ("SELL", "REDUCE", "HEDGE") for x in a.actions):
            out.append("actions: an MDD breach needs at least one SELL, REDUCE or HEDGE")
    elif task is TaskType.REGIME_TRANSITION:
        if a.exposure < a.previous_exposure - EPS and any(x.type == "BUY" for x in a.actions):
            out.append("actions: BUY while cutting exposure")
        if a.exposure > a.previous_exposure + EPS and any(x.type in ("SELL", "REDUCE") for x in a.actions):
            out.append("actions: SELL/REDUCE while raising exposure")
    elif task is TaskType.OPENING_MOMENTUM:
        gaps = {g.ticker: g for g in a.opening_gaps}
        for p in a.positions:
            if p.action != "BUY":
                continue
            g = gaps.get(p.ticker)
            if g is None or g.gap < MOMENTUM_GAP_MIN or g.volume_ratio < MOMENTUM_VOLUME_MIN:
                out.append(f"positions ({p.ticker}): BUY without a gap-up >= {MOMENTUM_GAP_MIN} on volume "
                           f">= {MOMENTUM_VOLUME_MIN}x")
    elif task is TaskType.STOP_LOSS_MANAGEMENT:
        for i, d in enumerate(a.decisions):
            actual = d.current_price / d.entry_price - 1.0
            if abs(actual - d.return_pct) > RETURN_TOL:
                out.append(f"decisions.{i}: return_pct {d.return_pct} but prices give {actual:.4f}")
            want = stop_decision(d.return_pct, a.risk.stop_loss, a.risk.take_profit)
            if d.decision != want:
                out.append(f"decisions.{i} ({d.ticker}): {d.decision}, but return {d.return_pct} with "
                           f"stop {a.risk.stop_loss} / take-profit {a.risk.take_profit} requires {want}")
    elif task is TaskType.WHAT_IF:
        want = shift_regime(a.base_regime, SHOCKS_BY_KEY[a.shock].regime_steps)
        if a.regime != want:
            out.append(f"regime: {a.regime}, but {a.shock} moves {a.base_regime} to {want}")
    elif task is TaskType.MULTI_STEP:
        numbers = [s.step for s in a.steps]
        if numbers != list(range(1, len(numbers) + 1)):
            out.append(f"steps: numbered {numbers}, expected 1..{len(numbers)}")
    if task is TaskType.FULL_ANALYSIS:
        for i, v in enumerate(a.valuation):
            want = valuation_verdict(v.per, v.pbr)
            if v.verdict != want:
                out.append(f"valuation.{i} ({v.ticker}): {v.verdict}, but PER {v.per} / PBR {v.pbr} is {want}")


def rule_violations(task: TaskType | str, data: Any) -> list[str]:
    """Every contradiction between a schema-valid answer and the strategy rules (empty when consistent).

    `data` is an answer model, a dict or JSON text; schema-invalid data raises pydantic.ValidationError, so
    check `schema.schema_errors` first.
    """
    task = TaskType(task)
    answer = data if isinstance(data, Answer) else schema.validate_response(task, data)
    out: list[str] = []
    _check_common(answer, task, out)
    _check_positions(answer, out)
    _check_actions(answer, out)
    _check_task(task, answer, out)
    return out


def describe_rules() -> Iterable[str]:
    """One line per regime, for the system prompt."""
    for regime in REGIME_ORDER:
        r = RULES[regime]
        yield (f"- {regime.value}({r.label_ko}): exposure {r.exposure_min:g}~{r.exposure_max:g}, "
               f"leverage<={r.leverage_cap:g}, stop_loss {r.stop_loss:g}, take_profit {r.take_profit:g}; {r.stance_ko}")
