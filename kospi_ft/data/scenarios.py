"""Scenario tables the strategy rules and the synthetic generator share: 25 US events with their Korean
sector impacts (sector_analysis), 7 market shocks with their regime shift (what_if), and each sector's
sensitivity to USD/KRW (fx_impact).

Sector keys are `kospi_ft.data.universe.SECTORS` keys; impact scores are in -1..1 (sign = direction).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class UsEvent:
    key: str
    description: str              # Korean, shown in the prompt
    impacts: Mapping[str, float]  # sector -> impact score (-1..1)


@dataclass(frozen=True)
class Shock:
    key: str
    description: str        # Korean, shown in the prompt
    regime_steps: int       # regime shift along strategy.REGIME_ORDER (+ = more severe)
    kospi_move: float       # the shock's assumed KOSPI move (fraction), quoted in answers


def _event(key: str, description: str, **impacts: float) -> UsEvent:
    return UsEvent(key, description, MappingProxyType(impacts))


US_EVENTS: tuple[UsEvent, ...] = (
    _event("NVDA_EARNINGS_BEAT", "엔비디아 분기 실적 서프라이즈와 가이던스 상향",
           semiconductor=0.8, electronics=0.5, power_equipment=0.3),
    _event("US_CPI_HOT", "미국 CPI 예상치 상회 (인플레이션 재가속)",
           internet=-0.5, bio=-0.5, game=-0.3, bank=0.3, insurance=0.2),
    _event("US_CPI_COOL", "미국 CPI 예상치 하회 (디스인플레이션)",
           internet=0.5, bio=0.5, battery=0.3, bank=-0.2),
    _event("FED_HIKE", "연준 기준금리 25bp 인상",
           bank=0.4, insurance=0.4, bio=-0.5, internet=-0.5, construction=-0.3),
    _event("FED_CUT", "연준 기준금리 25bp 인하",
           bio=0.6, internet=0.5, construction=0.3, bank=-0.3),
    _event("TESLA_DELIVERY_MISS", "테슬라 분기 인도량 컨센서스 하회",
           battery=-0.6, chemical=-0.2),
    _event("US_EV_SUBSIDY_CUT", "미국 IRA 전기차 보조금 축소 발표",
           battery=-0.7, auto=-0.3),
    _event("APPLE_IPHONE_STRONG", "애플 신형 아이폰 판매 호조",
           electronics=0.6, semiconductor=0.3),
    _event("US_NAVY_MRO", "미 해군 함정 MRO 및 조선 협력 확대",
           shipbuilding=0.8, defense=0.3, steel=0.2),
    _event("US_DEFENSE_BUDGET_UP", "미국 국방예산 대폭 증액",
           defense=0.7, shipbuilding=0.3),
    _event("OPEC_CUT_OIL_SPIKE", "OPEC+ 감산 발표로 국제유가 급등",
           energy=0.6, transport=-0.5, chemical=-0.3),
    _event("OIL_PLUNGE", "국제유가 급락 (WTI -8%)",
           energy=-0.6, transport=0.5, chemical=0.3),
    _event("US_AUTO_TARIFF", "미국 수입 자동차 25% 관세 부과",
           auto=-0.7, steel=-0.3),
    _event("US_STEEL_TARIFF", "미국 철강·알루미늄 관세 인상",
           steel=-0.6, construction=-0.2),
    _event("US_CHIP_EXPORT_CONTROL", "미국 대중국 반도체 장비 수출규제 강화",
           semiconductor=-0.5, electronics=-0.3),
    _event("AI_DATACENTER_CAPEX", "빅테크 AI 데이터센터 설비투자 확대",
           power_equipment=0.7, semiconductor=0.6, utility=0.2),
    _event("US_BIOSECURE_ACT", "미국 생물보안법 의회 통과",
           bio=0.5),
    _event("US_HOUSING_SLOWDOWN", "미국 주택 착공 급감",
           construction=-0.3, steel=-0.3, chemical=-0.2),
    _event("US_RETAIL_STRONG", "미국 소매판매 예상치 상회",
           consumer=0.3, auto=0.4, entertainment=0.2),
    _event("US_RECESSION_FEAR", "미국 경기침체 우려 확산 (ISM 제조업 급락)",
           semiconductor=-0.5, auto=-0.4, securities=-0.4, telecom=0.3, utility=0.3),
    _event("US_REGIONAL_BANK_STRESS", "미국 지역은행 유동성 위기",
           bank=-0.5, securities=-0.5, insurance=-0.3),
    _event("CRYPTO_RALLY", "비트코인 현물 ETF 자금 유입과 가상자산 급등",
           securities=0.4, internet=0.3),
    _event("NETFLIX_KCONTENT", "넷플릭스 K-콘텐츠 투자 확대 발표",
           entertainment=0.6, game=0.3, internet=0.2),
    _event("US_NUCLEAR_POLICY", "미국 원전 확대 행정명령",
           power_equipment=0.5, utility=0.4, construction=0.4),
    _event("US_10Y_YIELD_SURGE", "미국 10년물 국채금리 급등 (5% 돌파)",
           internet=-0.5, bio=-0.5, battery=-0.4, insurance=0.4, bank=0.3),
)

SHOCKS: tuple[Shock, ...] = (
    Shock("FED_SURPRISE_HIKE", "연준 기습 75bp 금리 인상", 2, -0.035),
    Shock("USDKRW_SPIKE", "원/달러 환율 1,500원 돌파", 1, -0.02),
    Shock("CHINA_HARD_LANDING", "중국 경기 경착륙 (GDP 성장률 3% 하회)", 1, -0.025),
    Shock("GEOPOLITICAL_NK", "북한 군사 도발로 지정학 리스크 고조", 1, -0.015),
    Shock("OIL_SHOCK", "중동 분쟁으로 국제유가 40% 급등", 1, -0.02),
    Shock("US_MARKET_CRASH", "미국 증시 하루 -7% 폭락", 2, -0.045),
    Shock("CHIP_SUPERCYCLE", "메모리 반도체 가격 25% 급등 (슈퍼사이클)", -1, 0.03),
)

#: +1: earns in dollars (gains when the won weakens, USD/KRW up); -1: pays in dollars or sells at home;
#: 0: little direct FX exposure.
FX_SENSITIVITY: Mapping[str, int] = MappingProxyType({
    "semiconductor": 1, "auto": 1, "shipbuilding": 1, "electronics": 1, "defense": 1, "battery": 1,
    "power_equipment": 1, "game": 1, "entertainment": 1,
    "energy": -1, "transport": -1, "utility": -1, "consumer": -1, "steel": -1,
    "bank": 0, "insurance": 0, "securities": 0, "bio": 0, "internet": 0, "telecom": 0, "chemical": 0,
    "construction": 0, "holding": 0,
})

US_EVENTS_BY_KEY: Mapping[str, UsEvent] = MappingProxyType({e.key: e for e in US_EVENTS})
SHOCKS_BY_KEY: Mapping[str, Shock] = MappingProxyType({s.key: s for s in SHOCKS})
