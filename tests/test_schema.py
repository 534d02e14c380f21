"""Response schema, strategy rules and the system prompt built from them.

The answers here are written by hand (not by the generator), so these tests pin what the contract accepts and
rejects independently of kospi_ft.data.synthetic.
"""
from __future__ import annotations

import copy
import json

import pydantic
import pytest

from kospi_ft.prompts import QUANT_SYSTEM_PROMPT
from kospi_ft.data.regime import Regime
from kospi_ft.schema import (
    RESPONSE_MODELS, TaskType, hallucinations, quality_issues, schema_errors, validate_response,
)
from kospi_ft.strategy import REGIME_ORDER, RULES, rule_violations
from kospi_ft.data.universe import TICKERS

RISK_MILD = {"leverage": 1.0, "stop_loss": -0.07, "take_profit": 0.15, "max_drawdown_limit": -0.15,
             "max_position_weight": 0.2}

FULL = {
    "regime": "MILD_BULL", "exposure": 0.7, "risk": RISK_MILD,
    "summary": "완만한 상승장으로 판단해 주식 비중 70%를 유지하고 손절 -7% 규칙을 적용합니다.",
    "positions": [
        {"ticker": "005930", "name": "삼성전자", "action": "BUY", "weight": 0.2, "score": 0.6,
         "rationale": "삼성전자: 20일선 위에서 거래되고 PER 12배로 부담이 낮아 매수 의견."},
        {"ticker": "000660", "name": "SK하이닉스", "action": "HOLD", "weight": 0.15, "score": 0.05,
         "rationale": "SK하이닉스: 60일선 근처에서 방향성이 약해 보유 의견을 유지합니다."},
        {"ticker": "005380", "name": "현대차", "action": "SELL", "weight": 0.0, "score": -0.5,
         "rationale": "현대차: 20일선 이탈과 관세 우려가 겹쳐 전량 매도 의견입니다."},
    ],
    "valuation": [{"ticker": "005930", "per": 12.0, "pbr": 1.2, "ev_ebitda": 5.0, "roe": 0.1, "f_score": 7,
                   "verdict": "FAIR"}],
}

REGIME_CLS = {
    "regime": "BEAR", "exposure": 0.1,
    "risk": {"leverage": 1.0, "stop_loss": -0.03, "take_profit": 0.06, "max_drawdown_limit": -0.1,
             "max_position_weight": 0.1},
    "summary": "약세장으로 분류하고 주식 비중을 10%로 낮춰 현금 비중을 극대화합니다.",
    "confidence": 0.8,
    "indicators": {"market_return": -0.025, "breadth": 0.2, "momentum_10d": -0.07, "vol_10d": 0.3},
    "signals": ["시장수익률 -2.5%, breadth 20%로 약세 신호가 뚜렷합니다."],
}


def edited(answer: dict, path: str, value) -> dict:
    out = copy.deepcopy(answer)
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is KeyError:
        del node[int(leaf) if leaf.isdigit() else leaf]
    else:
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return out


def test_one_model_per_task():
    assert set(RESPONSE_MODELS) == set(TaskType)
    assert len(TaskType) == 12


@pytest.mark.parametrize("task, answer", [(TaskType.FULL_ANALYSIS, FULL),
                                          (TaskType.REGIME_CLASSIFICATION, REGIME_CLS)])
def test_hand_written_answers_are_valid_consistent_and_good(task, answer):
    assert schema_errors(task, answer) == []
    assert schema_errors(task.value, json.dumps(answer, ensure_ascii=False)) == []  # JSON text works too
    assert rule_violations(task, answer) == []
    assert quality_issues(task, answer) == []
    assert isinstance(validate_response(task, answer), RESPONSE_MODELS[task])


@pytest.mark.parametrize("path, value, error_type", [
    ("exposure", "high", "float_type"),
    ("exposure", 1.4, "less_than_equal"),
    ("regime", "BULLISH", "enum"),
    ("positions.0.score", 1.5, "less_than_equal"),
    ("positions.0.weight", "20%", "float_type"),
    ("positions.0.rationale", "strong momentum, buy", "korean_required"),
    ("risk", KeyError, "missing"),
    ("summary", KeyError, "missing"),
    ("positions", [], "too_short"),
    ("extra_field", 1, "extra_forbidden"),
])
def test_schema_violations_are_reported_and_are_not_hallucinations(path, value, error_type):
    bad = edited(FULL, path, value)
    errors = schema_errors(TaskType.FULL_ANALYSIS, bad)
    assert errors and any(f"[{error_type}]" in e for e in errors), errors
    assert hallucinations(TaskType.FULL_ANALYSIS, bad) == []
    with pytest.raises(pydantic.ValidationError):
        validate_response(TaskType.FULL_ANALYSIS, bad)


@pytest.mark.parametrize("path, value", [
    ("positions.0.ticker", "999999"),          # not a listed code
    ("positions.0.name", "SK하이닉스"),          # a real name, but not 005930's
    ("valuation.0.per", 2000.0),
    ("risk.leverage", 5.0),
])
def test_hallucinations_are_typed(path, value):
    assert "999999" not in TICKERS
    bad = edited(FULL, path, value)
    errs, halls = schema_errors(TaskType.FULL_ANALYSIS, bad), hallucinations(TaskType.FULL_ANALYSIS, bad)
    assert halls and len(halls) == len(errs), errs


def test_invalid_json_text_is_a_schema_error():
    assert schema_errors(TaskType.FULL_ANALYSIS, '{"regime": "BEAR",')
    assert schema_errors(TaskType.FULL_ANALYSIS, "[]")


def test_quality_issues():
    short = edited(FULL, "summary", "매수합니다.")
    assert any("summary" in q for q in quality_issues(TaskType.FULL_ANALYSIS, short))
    same = copy.deepcopy(FULL)
    for p in same["positions"]:
        p["rationale"] = "시장 상황을 종합적으로 고려한 판단입니다."
    assert any("same text" in q for q in quality_issues(TaskType.FULL_ANALYSIS, same))
    terse = edited(FULL, "positions.1.rationale", "보유")
    assert any("shorter" in q for q in quality_issues(TaskType.FULL_ANALYSIS, terse))
    # quality issues are not schema errors
    assert schema_errors(TaskType.FULL_ANALYSIS, same) == []


# ---- strategy rules -----------------------------------------------------------------------------------------

def test_rules_cover_every_regime_and_get_stricter_with_severity():
    assert set(RULES) == set(Regime) and set(REGIME_ORDER) == set(Regime)
    rules = [RULES[g] for g in REGIME_ORDER]
    for better, worse in zip(rules, rules[1:]):
        assert worse.exposure_max <= better.exposure_max
        assert worse.leverage_cap <= better.leverage_cap
        assert worse.stop_loss >= better.stop_loss      # tighter stops in worse regimes
    for r in rules:
        assert 0.0 <= r.exposure_min < r.exposure_max <= 1.0 and r.stop_loss < 0 < r.take_profit


@pytest.mark.parametrize("path, value, needle", [
    ("exposure", 1.0, "outside the MILD_BULL band"),
    ("risk.leverage", 2.0, "above the cap"),
    ("risk.stop_loss", -0.2, "looser"),
    ("risk.take_profit", 0.5, "later"),
    ("positions.0.weight", 0.5, "max_position_weight"),
    ("positions.0.score", -0.3, "BUY needs"),
    ("positions.2.weight", 0.1, "SELL needs"),
    ("valuation.0.verdict", "UNDERVALUED", "valuation.0"),
])
def test_rule_violations(path, value, needle):
    bad = edited(FULL, path, value)
    assert schema_errors(TaskType.FULL_ANALYSIS, bad) == []
    assert any(needle in v for v in rule_violations(TaskType.FULL_ANALYSIS, bad))


def test_fully_long_in_bear_and_a_regime_the_indicators_contradict():
    long_bear = edited(REGIME_CLS, "exposure", 1.0)
    assert any("outside the BEAR band" in v for v in rule_violations(TaskType.REGIME_CLASSIFICATION, long_bear))
    claims_bull = edited(REGIME_CLS, "regime", "MILD_BULL")
    claims_bull["exposure"], claims_bull["risk"]["stop_loss"] = 0.7, -0.07
    assert any("classify as BEAR" in v for v in rule_violations(TaskType.REGIME_CLASSIFICATION, claims_bull))


def test_mdd_breach_requires_derisking():
    answer = {
        "regime": "MILD_BULL", "exposure": 0.5, "risk": dict(RISK_MILD), "current_drawdown": -0.18,
        "mdd_breached": True,
        "summary": "낙폭이 MDD 한도를 넘어 주식 비중을 밴드 하단 아래로 줄이고 레버리지를 해소합니다.",
        "actions": [{"type": "REDUCE", "ticker": "005930", "weight_change": -0.05,
                     "rationale": "삼성전자 비중을 5%p 줄여 추가 손실을 제한합니다."}],
    }
    assert rule_violations(TaskType.RISK_MANAGEMENT, answer) == []
    assert rule_violations(TaskType.RISK_MANAGEMENT, edited(answer, "exposure", 0.7))       # inside band: too high
    assert rule_violations(TaskType.RISK_MANAGEMENT, edited(answer, "mdd_breached", False))  # -0.18 <= -0.15
    assert rule_violations(TaskType.RISK_MANAGEMENT, edited(answer, "actions.0.type", "HOLD"))


def test_stop_decisions_follow_the_thresholds():
    answer = {
        "regime": "WEAKENING", "exposure": 0.5,
        "risk": {"leverage": 1.0, "stop_loss": -0.05, "take_profit": 0.1, "max_drawdown_limit": -0.2,
                 "max_position_weight": 0.2},
        "summary": "상승 둔화 국면이라 손절 -5%, 익절 +10% 기준으로 보유 종목을 점검합니다.",
        "decisions": [{"ticker": "005930", "entry_price": 100000.0, "current_price": 94000.0, "return_pct": -0.06,
                       "decision": "STOP_LOSS", "rationale": "삼성전자 수익률 -6%로 손절선 -5%를 하회했습니다."}],
    }
    assert rule_violations(TaskType.STOP_LOSS_MANAGEMENT, answer) == []
    assert rule_violations(TaskType.STOP_LOSS_MANAGEMENT, edited(answer, "decisions.0.decision", "HOLD"))
    assert rule_violations(TaskType.STOP_LOSS_MANAGEMENT, edited(answer, "decisions.0.return_pct", -0.02))


def test_rule_violations_refuses_schema_invalid_input():
    with pytest.raises(pydantic.ValidationError):
        rule_violations(TaskType.FULL_ANALYSIS, edited(FULL, "exposure", "high"))


# ---- system prompt ------------------------------------------------------------------------------------------

def test_system_prompt_carries_rules_and_the_whole_contract():
    p = QUANT_SYSTEM_PROMPT
    assert any("\uac00" <= ch <= "\ud7a3" for ch in p)
    for regime, rule in RULES.items():
        assert f"{regime.value}({rule.label_ko}): exposure {rule.exposure_min:g}~{rule.exposure_max:g}" in p
        assert f"leverage<={rule.leverage_cap:g}" in p
    for task, model in RESPONSE_MODELS.items():
        assert f"- {task.value}:" in p
        for field in model.model_fields:
            assert f"{field}:" in p, (task, field)
    for term in ("MDD", "stop_loss", "take_profit", "leverage", "JSON"):
        assert term in p
