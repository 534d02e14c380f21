"""QUANT_SYSTEM_PROMPT: the system prompt of every Stage-2/3 record, the Modelfile and the evaluator.

Written in Korean with English field names. The regime table comes from `strategy.RULES` and the output
contract from the JSON schema of `schema.RESPONSE_MODELS`, so the prompt cannot drift from what the
validator and the rule checker enforce.
"""
from __future__ import annotations

from typing import Any

from .data.regime import THRESHOLDS
from .schema import MAX_LEVERAGE, MIN_RATIONALE_CHARS, MIN_SUMMARY_CHARS, RESPONSE_MODELS, Answer
from .strategy import (
    MOMENTUM_GAP_MIN, MOMENTUM_VOLUME_MIN, OVERVALUED_PBR, OVERVALUED_PER, UNDERVALUED_PBR,
    UNDERVALUED_PER, describe_rules,
)

# Enums longer than this are described as "the key given in the question" instead of listed in full
# (the 25 event keys would add ~300 tokens to every training record).
_MAX_LISTED_ENUM = 6


def _num(v: float) -> str:
    return f"{v:g}"


def _type_text(node: dict[str, Any]) -> str:
    """A compact type description of one JSON-schema node."""
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in node:
        return "|".join(_type_text(n) for n in node["anyOf"])
    if "enum" in node:
        values = node["enum"]
        return "|".join(map(str, values)) if len(values) <= _MAX_LISTED_ENUM else "질문의 키"
    if "const" in node:
        return str(node["const"])
    t = node.get("type")
    if t == "array":
        return f"[{_type_text(node['items'])}]"
    if t in ("number", "integer"):
        lo = node.get("minimum", node.get("exclusiveMinimum"))
        hi = node.get("maximum", node.get("exclusiveMaximum"))
        name = "int" if t == "integer" else "num"
        if lo is not None and hi is not None:
            return f"{_num(lo)}~{_num(hi)}"
        if lo is not None:
            return f"{name}>{'=' if 'minimum' in node else ''}{_num(lo)}"
        return name
    if t == "string":
        return node.get("description") or "str"
    if t == "boolean":
        return "bool"
    if t == "null":
        return "null"
    return t or "any"


def _fields(schema: dict[str, Any], skip: frozenset[str] = frozenset()) -> str:
    props = schema.get("properties", {})
    return ", ".join(f"{k}:{_type_text(v)}" for k, v in props.items() if k not in skip)


def output_contract() -> str:
    """The JSON output contract, rendered from the response models' JSON schema (lists may not be empty)."""
    defs: dict[str, dict] = {}
    per_task: list[str] = []
    common = frozenset(Answer.model_fields)
    for task, model in RESPONSE_MODELS.items():
        js = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(js.get("$defs", {}))
        per_task.append(f"- {task.value}: {_fields(js, skip=common)}")
    base = Answer.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(base.get("$defs", {}))
    blocks = [f"- {name} {{{_fields(d)}}}" if d.get("type") == "object" else f"- {name}: {_type_text(d)}"
              for name, d in sorted(defs.items())]
    return "\n".join(["공통: " + _fields(base), "태스크별:", *per_task, "블록:", *blocks])


def _classification_text() -> str:
    """The regime thresholds of `kospi_ft.data.regime` in the precedence `regime.classify` applies them."""
    t = THRESHOLDS
    return (f"BEAR(market_return<{t.bear_return:.1%}, breadth<{t.bear_breadth:.0%}, "
            f"momentum_10d<{t.bear_momentum:.0%}) > SHORT_TERM_STRESS(market_return<{t.stress_return:.1%}, "
            f"vol_10d>{t.stress_vol:.0%}) > STRONG_BULL(market_return>{t.strong_return:.0%}, "
            f"breadth>{t.strong_breadth:.0%}, momentum_10d>{t.strong_momentum:.0%}) > "
            f"WEAKENING(market_return<0, breadth {t.weak_breadth_low:.0%}~{t.weak_breadth_high:.0%}) > "
            f"MILD_BULL(market_return>0, breadth>{t.mild_breadth:.0%}); 해당 없음: market_return>=0이면 "
            "MILD_BULL, 아니면 WEAKENING.")


def _build() -> str:
    return "\n".join([
        "당신은 KOSPI 퀀트 트레이딩 어시스턴트입니다. 시장 데이터와 계좌 정보로 regime을 판단하고 규칙에 맞는 "
        "exposure, 포지션, 리스크를 JSON 하나로만 답합니다.",
        "[Regime 규칙]",
        *describe_rules(),
        "분류(앞 조건 우선): " + _classification_text(),
        "[리스크 규칙]",
        "- MDD: current_drawdown <= max_drawdown_limit 이면 mdd_breached=true, exposure는 밴드 하단 이하, "
        "leverage 1.0, SELL/REDUCE/HEDGE 포함.",
        f"- leverage는 regime 상한 이하 (절대 {MAX_LEVERAGE:g}배 초과 불가). 수익률 <= stop_loss 이면 STOP_LOSS, "
        ">= take_profit 이면 TAKE_PROFIT; 둘 다 regime 기준보다 느슨하게 둘 수 없음.",
        "- weight 합 <= exposure, 각 weight <= max_position_weight. BUY: score>0, SELL: score<0·weight 0, "
        "REDUCE: score<0.",
        f"- verdict: PER>{OVERVALUED_PER:g} 또는 PBR>{OVERVALUED_PBR:g} OVERVALUED, "
        f"PER<{UNDERVALUED_PER:g}·PBR<{UNDERVALUED_PBR:g} UNDERVALUED, 나머지 FAIR. "
        f"시초가 매수는 갭>={MOMENTUM_GAP_MIN:g}·거래량>={MOMENTUM_VOLUME_MIN:g}배만.",
        "[출력] JSON만. 비율은 소수(-0.02=-2%). ticker는 유니버스 6자리 코드, name은 그 종목명. "
        f"rationale({MIN_RATIONALE_CHARS}자 이상, 항목마다 다르게)과 summary({MIN_SUMMARY_CHARS}자 이상)는 한국어.",
        output_contract(),
    ])


#: The system prompt every Stage-2/3 record, the Modelfile SYSTEM line and the evaluator use.
QUANT_SYSTEM_PROMPT: str = _build()
