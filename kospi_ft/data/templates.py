"""How synthetic prompts look: question templates per task, the four market-data formats and the account
context block.

Templates. The spec asks for "8-12 question patterns per task, 86 in total". With 12 tasks, 8 each would
already be 96, so the two numbers only fit together if some patterns are shared: every task has 6-10 patterns
of its own (84 in all) plus the 2 SHARED_TEMPLATES, which take the task's request phrase (`TASK_ASKS`). That
gives each task 8-12 patterns and 86 distinct patterns in total. Placeholders: `{date}` (YYYY-MM-DD) and, in
the shared ones, `{ask}`.

Formats. bullet / sentence / compact / table render the same market view; the generator assigns them
40/20/20/20 (`FORMAT_SHARES`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schema import TaskType

FORMAT_SHARES: dict[str, float] = {"bullet": 0.4, "sentence": 0.2, "compact": 0.2, "table": 0.2}

SHARED_TEMPLATES: tuple[str, ...] = (
    "{date} 장 기준으로 다음을 수행하세요: {ask}. 답은 지정된 JSON 형식으로만 주세요.",
    "요청 사항 — {ask}. 위 데이터와 계좌 조건을 전략 규칙에 맞게 반영해 JSON으로 답변해 주세요.",
)

TASK_ASKS: dict[TaskType, str] = {
    TaskType.FULL_ANALYSIS: "regime 판단, 종목별 포지션, valuation, 리스크 설정을 포함한 종합 분석",
    TaskType.REGIME_CLASSIFICATION: "시장 지표를 근거로 한 market regime 분류",
    TaskType.OVERNIGHT_GAP: "미국장 결과를 반영한 오버나이트 갭 예상과 장 시작 전 포지션 조정",
    TaskType.SECTOR_ANALYSIS: "미국 이벤트가 한국 섹터에 미칠 영향 분석과 대응 포지션",
    TaskType.RISK_MANAGEMENT: "MDD와 레버리지 한도를 점검한 리스크 관리 조치",
    TaskType.REGIME_TRANSITION: "regime 전환에 따른 exposure와 포지션 조정",
    TaskType.OPENING_MOMENTUM: "시초가 갭업 종목의 모멘텀 매수 판단",
    TaskType.FX_IMPACT: "원/달러 환율 변동이 수출주와 내수주에 미치는 영향 분석",
    TaskType.STOP_LOSS_MANAGEMENT: "보유 종목별 손절·익절·보유 판단",
    TaskType.INTRADAY_REBALANCING: "장중 목표 비중 산출과 리밸런싱 주문",
    TaskType.WHAT_IF: "제시된 충격 시나리오가 현실화될 때의 regime 변화와 대응",
    TaskType.MULTI_STEP: "regime → 포지션 → 리스크 순서의 단계별 추론",
}

TASK_TEMPLATES: dict[TaskType, tuple[str, ...]] = {
    TaskType.FULL_ANALYSIS: (
        "{date} 시장 데이터를 바탕으로 현재 regime을 판단하고, 종목별 포지션과 valuation을 포함한 종합 분석을 해 주세요.",
        "위 종목들에 대해 regime, exposure, 포지션, 밸류에이션, 리스크 설정을 모두 담은 투자 의견을 주세요.",
        "오늘 시장 상황을 종합적으로 분석해서 포트폴리오를 어떻게 가져가야 할지 알려 주세요.",
        "퀀트 관점에서 위 데이터를 해석하고 종목별 매수/보유/매도 의견과 비중을 정해 주세요.",
        "{date} 기준 포트폴리오 리포트를 작성해 주세요. regime, 종목 점수, valuation, 손절 기준이 모두 필요합니다.",
        "시장 지표와 종목 밸류에이션을 함께 보고 최적의 주식 비중과 종목 구성을 제안해 주세요.",
        "위 데이터로 종합 분석을 부탁합니다. 종목마다 근거를 한국어로 달아 주세요.",
        "현재 계좌 조건에서 운용 전략을 세워 주세요: regime 판단부터 종목별 비중, PER/PBR 평가까지.",
        "다음 거래일을 대비한 전체 포지션 계획을 JSON으로 정리해 주세요.",
        "이 시장에서 어떤 종목을 얼마나 담아야 할까요? 밸류에이션과 리스크 한도를 고려해 답해 주세요.",
    ),
    TaskType.REGIME_CLASSIFICATION: (
        "{date} 시장 지표를 보고 현재 market regime을 분류해 주세요.",
        "위 지표로 볼 때 지금은 어떤 regime인가요? 근거와 함께 답해 주세요.",
        "시장수익률, breadth, 모멘텀, 변동성을 근거로 regime을 판정하고 권장 exposure를 알려 주세요.",
        "현재 장세를 STRONG_BULL부터 BEAR까지 다섯 단계 중 하나로 분류해 주세요.",
        "오늘 KOSPI 흐름이 어떤 국면에 해당하는지 판단하고 신뢰도를 제시해 주세요.",
        "regime 분류 기준에 따라 {date} 시장 상태를 진단해 주세요.",
        "이 지표 조합이면 regime이 무엇인지, 그리고 주식 비중은 어느 정도가 적절한지 알려 주세요.",
        "시장 국면 판단이 필요합니다. 핵심 신호들을 정리하고 regime을 결정해 주세요.",
    ),
    TaskType.OVERNIGHT_GAP: (
        "간밤 미국장 결과를 반영해 오늘 KOSPI 시초가 갭을 예상하고 포지션을 조정해 주세요.",
        "미국 증시 마감 결과로 볼 때 {date} 한국장은 갭업일까요, 갭다운일까요? 대응 전략도 주세요.",
        "오버나이트 갭 전략: 미국장 지표를 보고 장 시작 전에 어떤 종목을 사고팔지 정해 주세요.",
        "S&P500, 나스닥, 필라델피아 반도체 지수 움직임을 바탕으로 예상 갭과 포지션을 제시해 주세요.",
        "미국장 영향이 큰 종목 위주로 장전 주문 계획을 세워 주세요.",
        "간밤 미국 시장 변동을 한국 시초가에 어떻게 반영해야 할지 JSON으로 답해 주세요.",
        "{date} 개장 전 점검입니다. 예상 갭 방향과 크기, 종목별 대응을 알려 주세요.",
        "미국장 마감 데이터를 근거로 오늘 아침 포트폴리오를 어떻게 조정할까요?",
    ),
    TaskType.SECTOR_ANALYSIS: (
        "위 미국 이벤트가 한국 섹터별로 어떤 영향을 줄지 분석하고 수혜·피해 종목 포지션을 정해 주세요.",
        "이 뉴스가 KOSPI 섹터에 미칠 파급 효과를 평가해 주세요.",
        "미국발 이벤트를 한국 섹터 영향으로 번역해 주세요. 섹터별 점수와 대응 종목이 필요합니다.",
        "{date} 발생한 미국 이벤트의 한국 시장 수혜 섹터와 피해 섹터를 구분해 주세요.",
        "이벤트 드리븐 전략 관점에서 어떤 섹터를 사고 어떤 섹터를 줄여야 할까요?",
        "위 이벤트에 대한 섹터 로테이션 전략을 제안해 주세요.",
        "미국 이벤트 → 한국 섹터 영향 매핑을 작성하고 종목별 비중을 조정해 주세요.",
    ),
    TaskType.RISK_MANAGEMENT: (
        "현재 계좌의 낙폭과 레버리지를 점검하고 필요한 리스크 관리 조치를 알려 주세요.",
        "MDD 한도 대비 현재 상황을 평가하고 exposure를 어떻게 조정해야 할지 답해 주세요.",
        "{date} 리스크 점검입니다. 한도 위반 여부와 대응 조치를 정리해 주세요.",
        "포트폴리오 낙폭이 커지고 있습니다. 규칙에 따라 무엇을 해야 하나요?",
        "레버리지와 손실 한도를 기준으로 리스크 관리 계획을 세워 주세요.",
        "현재 drawdown이 허용 범위 안인지 확인하고, 필요한 디레버리징이나 헤지를 제시해 주세요.",
        "리스크 매니저 입장에서 이 계좌에 대한 조치 사항을 JSON으로 작성해 주세요.",
    ),
    TaskType.REGIME_TRANSITION: (
        "regime이 바뀌었습니다. 이전 국면 대비 exposure와 포지션을 어떻게 조정해야 할까요?",
        "직전 regime에서 현재 regime으로 전환된 상황입니다. 조정 계획을 세워 주세요.",
        "{date} 국면 전환에 맞춰 주식 비중을 재설정하고 필요한 매매를 알려 주세요.",
        "시장 국면 변화에 따른 포지션 전환 전략을 제시해 주세요.",
        "regime 전환을 반영해 목표 exposure와 종목별 조치를 정해 주세요.",
        "이전 비중을 유지해도 되는지, 아니면 늘리거나 줄여야 하는지 판단해 주세요.",
        "국면이 전환될 때의 리밸런싱 규칙을 적용해 오늘 할 일을 정리해 주세요.",
    ),
    TaskType.OPENING_MOMENTUM: (
        "시초가에 갭업한 종목 중 모멘텀 매수가 가능한 종목을 골라 주세요.",
        "{date} 장 초반 갭과 거래량을 보고 매수할 종목과 피할 종목을 구분해 주세요.",
        "시초가 갭업 모멘텀 전략을 적용해 진입 여부와 비중을 정해 주세요.",
        "거래량이 동반된 갭업인지 확인하고 모멘텀 포지션을 제시해 주세요.",
        "장 시작 직후 강한 종목에 올라탈지 판단해 주세요.",
        "오프닝 갭 데이터를 근거로 오늘 아침 매매 계획을 세워 주세요.",
    ),
    TaskType.FX_IMPACT: (
        "원/달러 환율 변동이 수출주와 내수주에 어떤 영향을 줄지 분석해 주세요.",
        "{date} 환율 움직임을 반영해 섹터별 영향과 종목 포지션을 정해 주세요.",
        "환율 변화에 따른 수혜 섹터와 피해 섹터를 구분하고 대응해 주세요.",
        "달러 강세/약세가 위 종목들에 미치는 영향을 평가해 주세요.",
        "환율 민감도를 기준으로 포트폴리오를 조정해 주세요.",
        "USD/KRW 변화가 한국 섹터에 주는 영향을 점수화하고 매매 의견을 제시해 주세요.",
    ),
    TaskType.STOP_LOSS_MANAGEMENT: (
        "보유 종목의 손익을 점검하고 손절, 익절, 보유 중 하나를 결정해 주세요.",
        "{date} 기준 보유 포지션별 손절·익절 규칙 적용 결과를 알려 주세요.",
        "각 종목의 매수가와 현재가를 보고 청산할 종목을 골라 주세요.",
        "손실이 난 종목은 정리하고 수익이 난 종목은 익절할지 판단해 주세요.",
        "현재 regime의 손절·익절 기준으로 보유 종목을 하나씩 판정해 주세요.",
        "포지션 관리가 필요합니다. 종목별 수익률과 조치를 JSON으로 정리해 주세요.",
        "기존 포지션에 대한 스탑로스/테이크프로핏 판단을 부탁합니다.",
    ),
    TaskType.INTRADAY_REBALANCING: (
        "장중 가격 변화로 비중이 틀어졌습니다. 목표 비중과 리밸런싱 주문을 제시해 주세요.",
        "{date} 장중 포트폴리오를 점검하고 목표 비중으로 되돌리는 매매를 알려 주세요.",
        "현재 보유 비중과 목표 비중의 차이를 계산해 리밸런싱해 주세요.",
        "장중 리밸런싱이 필요한지 판단하고 필요한 주문을 정리해 주세요.",
        "시장 regime에 맞는 목표 비중을 정하고 지금 보유 비중에서 조정해 주세요.",
        "오후장 들어가기 전에 포트폴리오 비중을 재조정해 주세요.",
    ),
    TaskType.WHAT_IF: (
        "위 충격 시나리오가 현실화되면 regime과 포트폴리오는 어떻게 바뀌어야 할까요?",
        "What-if 분석: 이 충격이 발생했다고 가정하고 대응 전략을 세워 주세요.",
        "{date} 포지션 기준으로 제시된 시나리오의 영향을 점검해 주세요.",
        "스트레스 테스트를 해 주세요. 충격 이후 regime과 목표 exposure가 필요합니다.",
        "이 가정이 맞다면 지금 무엇을 줄이거나 늘려야 할까요?",
        "충격 시나리오 발생 시의 regime 변화와 대응 조치를 JSON으로 정리해 주세요.",
    ),
    TaskType.MULTI_STEP: (
        "단계별로 추론해 주세요: 1) regime 판단 2) 포지션 구성 3) 리스크 설정.",
        "{date} 시장을 regime → 포지션 → 리스크 순서로 차근차근 분석해 주세요.",
        "멀티스텝 분석을 부탁합니다. 각 단계의 결론이 다음 단계의 근거가 되도록 써 주세요.",
        "먼저 국면을 판단하고, 그에 맞는 종목 비중을 정한 뒤, 손절과 레버리지를 설정해 주세요.",
        "단계별 사고 과정을 보여 주면서 최종 포트폴리오를 제시해 주세요.",
        "regime 판단부터 리스크 한도 적용까지 순서대로 정리한 투자 계획을 주세요.",
    ),
}


def templates_for(task: TaskType) -> tuple[tuple[str, str], ...]:
    """(template_id, text) pairs usable for `task`: its own patterns, then the shared ones."""
    own = tuple((f"{task.value}/{i:02d}", t) for i, t in enumerate(TASK_TEMPLATES[task], 1))
    ask = TASK_ASKS[task]
    shared = tuple((f"shared/{i:02d}", t.replace("{ask}", ask)) for i, t in enumerate(SHARED_TEMPLATES, 1))
    return own + shared


def all_template_ids() -> set[str]:
    return {tid for task in TaskType for tid, _ in templates_for(task)}


# ---- market data rendering --------------------------------------------------------------------------------

@dataclass(frozen=True)
class StockRow:
    ticker: str
    name: str
    sector: str
    close: float
    daily_return: float
    sma20: float
    sma60: float
    vol20: float
    per: float
    pbr: float
    ev_ebitda: float | None   # None: not known (a reasoning log on a KRX snapshot; the tape has no fundamentals)
    roe: float | None
    f_score: int | None


@dataclass(frozen=True)
class MarketView:
    """One trading day as the prompt shows it. Returns/momentum/vol are fractions. The flows, sentiment, FX and
    VIX are None where nothing is known about them (a reasoning log's KRX snapshot): the block leaves them out."""

    date: str
    regime: str
    source: str               # "real" (snapshot) or "synthetic"
    market_return: float
    breadth: float
    momentum_10d: float
    vol_10d: float
    index_level: float
    sentiment: float | None   # -1..1, news/Telegram sentiment
    foreign_net: int | None   # KRW 100M (억원), + = net buying
    institution_net: int | None
    usdkrw: float | None
    usdkrw_change: float | None
    vix: float | None
    stocks: tuple[StockRow, ...]


def _pct(x: float, digits: int = 2) -> str:
    return f"{x * 100:+.{digits}f}%"


def _flow(x: int) -> str:
    return f"{x:+,d}억 원"


def _market_lines(v: MarketView) -> list[tuple[str, str]]:
    lines = [
        ("KOSPI", f"{v.index_level:,.2f} ({_pct(v.market_return)})"),
        ("상승 종목 비율(breadth)", f"{v.breadth * 100:.2f}%"),
        ("10일 모멘텀", _pct(v.momentum_10d)),
        ("10일 변동성(연율)", f"{v.vol_10d * 100:.2f}%"),
    ]
    if v.sentiment is not None:
        lines += [
            ("외국인 순매수", _flow(v.foreign_net)),
            ("기관 순매수", _flow(v.institution_net)),
            ("뉴스 감성 지수", f"{v.sentiment:+.2f}"),
            ("USD/KRW", f"{v.usdkrw:,.1f} ({_pct(v.usdkrw_change)})"),
            ("VIX", f"{v.vix:.1f}"),
        ]
    return lines


def _stock_fields(s: StockRow) -> list[tuple[str, str]]:
    fields = [
        ("종가", f"{s.close:,.0f}"), ("등락", _pct(s.daily_return)),
        ("SMA20", f"{s.sma20:,.0f}"), ("SMA60", f"{s.sma60:,.0f}"), ("변동성20", f"{s.vol20 * 100:.0f}%"),
        ("PER", f"{s.per:.2f}"), ("PBR", f"{s.pbr:.2f}"),
    ]
    if s.ev_ebitda is not None:
        fields += [("EV/EBITDA", f"{s.ev_ebitda:.1f}"), ("ROE", f"{s.roe * 100:.0f}%"), ("F-Score", str(s.f_score))]
    return fields


def _stock_label(s: StockRow) -> str:
    return f"{s.name}({s.ticker}, {s.sector})"


def render_market(v: MarketView, fmt: str) -> str:
    """The market block in one of the four formats of FORMAT_SHARES."""
    market, stocks = _market_lines(v), v.stocks
    if fmt == "bullet":
        lines = ["[시장 지표]"] + [f"- {k}: {val}" for k, val in market] + (["[종목]"] if stocks else [])
        lines += [f"- {_stock_label(s)}: " + ", ".join(f"{k} {val}" for k, val in _stock_fields(s))
                  for s in stocks]
        return "\n".join(lines)
    if fmt == "sentence":
        m = dict(market)
        text = (f"KOSPI는 {m['KOSPI']}에 마감했고 상승 종목 비율은 {m['상승 종목 비율(breadth)']}입니다. "
                f"10일 모멘텀은 {m['10일 모멘텀']}, 10일 변동성은 {m['10일 변동성(연율)']}입니다.")
        if "VIX" in m:
            text += (f" 외국인은 {m['외국인 순매수']}, 기관은 {m['기관 순매수']} 순매수했고, 뉴스 감성 지수는 "
                     f"{m['뉴스 감성 지수']}입니다. 원/달러 환율은 {m['USD/KRW']}, VIX는 {m['VIX']}입니다.")
        sentences = []
        for s in stocks:
            f = dict(_stock_fields(s))
            tail = (f", EV/EBITDA {f['EV/EBITDA']}배, ROE {f['ROE']}, F-Score {f['F-Score']}"
                    if "F-Score" in f else "")
            sentences.append(
                f"{_stock_label(s)}은 종가 {f['종가']}원({f['등락']}), SMA20 {f['SMA20']}, SMA60 {f['SMA60']}, "
                f"변동성 {f['변동성20']}이며 PER {f['PER']}배, PBR {f['PBR']}배{tail}입니다.")
        return "\n".join([text, *sentences])
    if fmt == "compact":
        head = " | ".join(f"{k} {val}" for k, val in market)
        rows = [f"{s.ticker} {s.name} [{s.sector}] " + " ".join(f"{k}={val}" for k, val in _stock_fields(s))
                for s in stocks]
        return "\n".join([head, *rows])
    if fmt == "table":
        lines = ["| 지표 | 값 |", "|---|---|"] + [f"| {k} | {val} |" for k, val in market]
        if stocks:
            fields = [k for k, _ in _stock_fields(stocks[0])]
            lines += ["", "| 종목 | 코드 | 섹터 | " + " | ".join(fields) + " |",
                      "|---|---|---|" + "---|" * len(fields)]
            lines += [f"| {s.name} | {s.ticker} | {s.sector} | " + " | ".join(v for _, v in _stock_fields(s)) + " |"
                      for s in stocks]
        return "\n".join(lines)
    raise ValueError(f"unknown data format {fmt!r}; expected one of {tuple(FORMAT_SHARES)}")


# ---- account context ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AccountContext:
    """The per-prompt account: date, NAV, investment history and risk limits (the spec's context variation)."""

    date: str
    weekday: str
    nav_eok: int              # NAV in KRW 100M (억원)
    years_running: int
    return_3m: float
    return_ytd: float
    current_drawdown: float   # negative fraction
    mdd_limit: float          # negative fraction
    max_position_weight: float
    leverage_limit: float


_CONTEXT_STYLES = (
    "[계좌 정보] 기준일 {date}({weekday}) · NAV {nav} · 운용 {years}년차\n"
    "투자 이력: 최근 3개월 {r3m}, 연초 대비 {ytd}, 현재 고점 대비 낙폭 {dd}\n"
    "리스크 한도: MDD {mdd}, 종목당 최대 비중 {maxw}, 레버리지 한도 {lev}배",
    "기준일: {date} ({weekday})\n운용자산(NAV): {nav}\n운용 기간: {years}년, 3개월 수익률 {r3m}, YTD {ytd}, "
    "현재 낙폭 {dd}\n한도 — MDD {mdd} / 종목 비중 {maxw} / 레버리지 {lev}배",
    "- 날짜: {date} {weekday}\n- NAV: {nav}\n- 이력: {years}년 운용, 3M {r3m}, YTD {ytd}, drawdown {dd}\n"
    "- 한도: max_drawdown_limit {mdd}, max_position_weight {maxw}, leverage {lev}배",
)


def render_context(c: AccountContext, style: int) -> str:
    nav = f"{c.nav_eok:,d}억 원"
    return _CONTEXT_STYLES[style % len(_CONTEXT_STYLES)].format(
        date=c.date, weekday=c.weekday, nav=nav, years=c.years_running, r3m=_pct(c.return_3m, 1),
        ytd=_pct(c.return_ytd, 1), dd=_pct(c.current_drawdown, 1), mdd=_pct(c.mdd_limit, 0),
        maxw=f"{c.max_position_weight:.0%}", lev=f"{c.leverage_limit:.1f}")


CONTEXT_STYLES = len(_CONTEXT_STYLES)
