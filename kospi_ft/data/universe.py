"""The 97-stock Korean universe (KRX code, names, sector, market) used by the simulator, the synthetic
generator, the schema's ticker check and the evaluator.

`listed` is the KRX listing date for stocks that listed after 2006, so the simulator can place IPOs inside a
simulated range the way the real tape has them.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Stock:
    code: str          # 6-digit KRX code, kept as a string (leading zeros matter)
    name_ko: str
    name_en: str
    sector: str
    market: str        # KOSPI | KOSDAQ
    listed: dt.date | None = None


SECTORS_KO: dict[str, str] = {
    "semiconductor": "반도체", "battery": "2차전지", "auto": "자동차", "shipbuilding": "조선",
    "bank": "은행", "insurance": "보험", "securities": "증권", "bio": "바이오/제약", "internet": "인터넷/플랫폼",
    "game": "게임", "steel": "철강/소재", "chemical": "화학", "energy": "정유/에너지", "telecom": "통신",
    "electronics": "전자/IT부품", "holding": "지주사", "defense": "방산/항공", "utility": "유틸리티",
    "construction": "건설/기계", "power_equipment": "전력기기", "consumer": "소비재/유통",
    "transport": "운송/물류", "entertainment": "엔터/레저",
}

_D = dt.date
UNIVERSE: tuple[Stock, ...] = (
    # semiconductor
    Stock("005930", "삼성전자", "Samsung Electronics", "semiconductor", "KOSPI"),
    Stock("000660", "SK하이닉스", "SK hynix", "semiconductor", "KOSPI"),
    Stock("042700", "한미반도체", "Hanmi Semiconductor", "semiconductor", "KOSPI"),
    Stock("000990", "DB하이텍", "DB HiTek", "semiconductor", "KOSPI"),
    # battery
    Stock("373220", "LG에너지솔루션", "LG Energy Solution", "battery", "KOSPI", _D(2022, 1, 27)),
    Stock("006400", "삼성SDI", "Samsung SDI", "battery", "KOSPI"),
    Stock("003670", "포스코퓨처엠", "POSCO Future M", "battery", "KOSPI"),
    Stock("450080", "에코프로머티", "EcoPro Materials", "battery", "KOSPI", _D(2023, 11, 17)),
    Stock("112610", "씨에스윈드", "CS Wind", "energy", "KOSPI"),
    # auto
    Stock("005380", "현대차", "Hyundai Motor", "auto", "KOSPI"),
    Stock("000270", "기아", "Kia", "auto", "KOSPI"),
    Stock("012330", "현대모비스", "Hyundai Mobis", "auto", "KOSPI"),
    Stock("018880", "한온시스템", "Hanon Systems", "auto", "KOSPI"),
    Stock("204320", "HL만도", "HL Mando", "auto", "KOSPI", _D(2014, 10, 6)),
    Stock("161390", "한국타이어앤테크놀로지", "Hankook Tire & Technology", "auto", "KOSPI", _D(2012, 10, 4)),
    # shipbuilding
    Stock("009540", "HD한국조선해양", "HD Korea Shipbuilding & Offshore Engineering", "shipbuilding", "KOSPI"),
    Stock("329180", "HD현대중공업", "HD Hyundai Heavy Industries", "shipbuilding", "KOSPI", _D(2021, 9, 17)),
    Stock("010140", "삼성중공업", "Samsung Heavy Industries", "shipbuilding", "KOSPI"),
    Stock("042660", "한화오션", "Hanwha Ocean", "shipbuilding", "KOSPI"),
    Stock("010620", "HD현대미포", "HD Hyundai Mipo", "shipbuilding", "KOSPI"),
    # bank
    Stock("105560", "KB금융", "KB Financial Group", "bank", "KOSPI", _D(2008, 10, 10)),
    Stock("055550", "신한지주", "Shinhan Financial Group", "bank", "KOSPI"),
    Stock("086790", "하나금융지주", "Hana Financial Group", "bank", "KOSPI"),
    Stock("316140", "우리금융지주", "Woori Financial Group", "bank", "KOSPI", _D(2019, 2, 13)),
    Stock("024110", "기업은행", "Industrial Bank of Korea", "bank", "KOSPI"),
    Stock("138040", "메리츠금융지주", "Meritz Financial Group", "bank", "KOSPI", _D(2011, 5, 13)),
    Stock("323410", "카카오뱅크", "KakaoBank", "bank", "KOSPI", _D(2021, 8, 6)),
    Stock("029780", "삼성카드", "Samsung Card", "bank", "KOSPI", _D(2007, 6, 27)),
    # insurance
    Stock("032830", "삼성생명", "Samsung Life Insurance", "insurance", "KOSPI", _D(2010, 5, 12)),
    Stock("000810", "삼성화재", "Samsung Fire & Marine Insurance", "insurance", "KOSPI"),
    Stock("005830", "DB손해보험", "DB Insurance", "insurance", "KOSPI"),
    # securities
    Stock("006800", "미래에셋증권", "Mirae Asset Securities", "securities", "KOSPI"),
    Stock("016360", "삼성증권", "Samsung Securities", "securities", "KOSPI"),
    Stock("071050", "한국금융지주", "Korea Investment Holdings", "securities", "KOSPI"),
    Stock("039490", "키움증권", "Kiwoom Securities", "securities", "KOSPI"),
    Stock("005940", "NH투자증권", "NH Investment & Securities", "securities", "KOSPI"),
    # bio
    Stock("207940", "삼성바이오로직스", "Samsung Biologics", "bio", "KOSPI", _D(2016, 11, 10)),
    Stock("068270", "셀트리온", "Celltrion", "bio", "KOSPI"),
    Stock("128940", "한미약품", "Hanmi Pharm", "bio", "KOSPI", _D(2010, 7, 30)),
    Stock("000100", "유한양행", "Yuhan", "bio", "KOSPI"),
    Stock("326030", "SK바이오팜", "SK Biopharmaceuticals", "bio", "KOSPI", _D(2020, 7, 2)),
    Stock("302440", "SK바이오사이언스", "SK bioscience", "bio", "KOSPI", _D(2021, 3, 18)),
    Stock("185750", "종근당", "Chong Kun Dang", "bio", "KOSPI", _D(2013, 12, 6)),
    # internet / game
    Stock("035420", "NAVER", "NAVER", "internet", "KOSPI", _D(2008, 11, 28)),
    Stock("035720", "카카오", "Kakao", "internet", "KOSPI", _D(2017, 7, 10)),
    Stock("377300", "카카오페이", "KakaoPay", "internet", "KOSPI", _D(2021, 11, 3)),
    Stock("018260", "삼성에스디에스", "Samsung SDS", "internet", "KOSPI", _D(2014, 11, 14)),
    Stock("259960", "크래프톤", "Krafton", "game", "KOSPI", _D(2021, 8, 10)),
    Stock("036570", "엔씨소프트", "NCSoft", "game", "KOSPI"),
    Stock("251270", "넷마블", "Netmarble", "game", "KOSPI", _D(2017, 5, 12)),
    # steel / materials
    Stock("005490", "POSCO홀딩스", "POSCO Holdings", "steel", "KOSPI"),
    Stock("004020", "현대제철", "Hyundai Steel", "steel", "KOSPI"),
    Stock("010130", "고려아연", "Korea Zinc", "steel", "KOSPI"),
    Stock("103140", "풍산", "Poongsan", "steel", "KOSPI", _D(2008, 7, 22)),
    # chemical
    Stock("051910", "LG화학", "LG Chem", "chemical", "KOSPI"),
    Stock("011170", "롯데케미칼", "Lotte Chemical", "chemical", "KOSPI"),
    Stock("009830", "한화솔루션", "Hanwha Solutions", "chemical", "KOSPI"),
    Stock("011780", "금호석유", "Kumho Petrochemical", "chemical", "KOSPI"),
    # energy
    Stock("096770", "SK이노베이션", "SK Innovation", "energy", "KOSPI", _D(2007, 7, 25)),
    Stock("010950", "S-Oil", "S-Oil", "energy", "KOSPI"),
    Stock("078930", "GS", "GS Holdings", "energy", "KOSPI"),
    # telecom
    Stock("017670", "SK텔레콤", "SK Telecom", "telecom", "KOSPI"),
    Stock("030200", "KT", "KT", "telecom", "KOSPI"),
    Stock("032640", "LG유플러스", "LG Uplus", "telecom", "KOSPI"),
    # electronics
    Stock("066570", "LG전자", "LG Electronics", "electronics", "KOSPI"),
    Stock("009150", "삼성전기", "Samsung Electro-Mechanics", "electronics", "KOSPI"),
    Stock("011070", "LG이노텍", "LG Innotek", "electronics", "KOSPI", _D(2008, 7, 24)),
    Stock("034220", "LG디스플레이", "LG Display", "electronics", "KOSPI"),
    # holding
    Stock("034730", "SK", "SK Inc.", "holding", "KOSPI", _D(2009, 11, 11)),
    Stock("003550", "LG", "LG Corp", "holding", "KOSPI"),
    Stock("028260", "삼성물산", "Samsung C&T", "holding", "KOSPI", _D(2014, 12, 18)),
    Stock("000880", "한화", "Hanwha Corp", "holding", "KOSPI"),
    Stock("267250", "HD현대", "HD Hyundai", "holding", "KOSPI", _D(2017, 5, 10)),
    Stock("006260", "LS", "LS Corp", "holding", "KOSPI"),
    # defense
    Stock("012450", "한화에어로스페이스", "Hanwha Aerospace", "defense", "KOSPI"),
    Stock("047810", "한국항공우주", "Korea Aerospace Industries", "defense", "KOSPI", _D(2011, 6, 30)),
    Stock("079550", "LIG넥스원", "LIG Nex1", "defense", "KOSPI", _D(2015, 10, 2)),
    Stock("064350", "현대로템", "Hyundai Rotem", "defense", "KOSPI", _D(2013, 10, 30)),
    # utility
    Stock("015760", "한국전력", "KEPCO", "utility", "KOSPI"),
    Stock("036460", "한국가스공사", "KOGAS", "utility", "KOSPI"),
    # construction / machinery
    Stock("000720", "현대건설", "Hyundai E&C", "construction", "KOSPI"),
    Stock("028050", "삼성E&A", "Samsung E&A", "construction", "KOSPI"),
    Stock("034020", "두산에너빌리티", "Doosan Enerbility", "construction", "KOSPI"),
    Stock("241560", "두산밥캣", "Doosan Bobcat", "construction", "KOSPI", _D(2016, 11, 18)),
    # power equipment
    Stock("010120", "LS ELECTRIC", "LS ELECTRIC", "power_equipment", "KOSPI"),
    Stock("267260", "HD현대일렉트릭", "HD Hyundai Electric", "power_equipment", "KOSPI", _D(2017, 5, 10)),
    # consumer
    Stock("090430", "아모레퍼시픽", "Amorepacific", "consumer", "KOSPI", _D(2006, 6, 29)),
    Stock("051900", "LG생활건강", "LG H&H", "consumer", "KOSPI"),
    Stock("097950", "CJ제일제당", "CJ CheilJedang", "consumer", "KOSPI", _D(2007, 9, 28)),
    Stock("033780", "KT&G", "KT&G", "consumer", "KOSPI"),
    Stock("139480", "이마트", "E-mart", "consumer", "KOSPI", _D(2011, 6, 10)),
    Stock("021240", "코웨이", "Coway", "consumer", "KOSPI"),
    # transport
    Stock("003490", "대한항공", "Korean Air", "transport", "KOSPI"),
    Stock("011200", "HMM", "HMM", "transport", "KOSPI"),
    Stock("086280", "현대글로비스", "Hyundai Glovis", "transport", "KOSPI"),
    # entertainment
    Stock("352820", "하이브", "HYBE", "entertainment", "KOSPI", _D(2020, 10, 15)),
    Stock("035250", "강원랜드", "Kangwon Land", "entertainment", "KOSPI"),
)

_BY_CODE = {s.code: s for s in UNIVERSE}
TICKERS: frozenset[str] = frozenset(_BY_CODE)
SECTORS: tuple[str, ...] = tuple(dict.fromkeys(s.sector for s in UNIVERSE))


def by_code(code: str) -> Stock:
    """Look a stock up by its 6-digit code; KeyError names the code when it is not in the universe."""
    try:
        return _BY_CODE[code]
    except KeyError:
        raise KeyError(f"ticker {code!r} is not in the {len(UNIVERSE)}-stock universe") from None


def in_sector(sector: str) -> tuple[Stock, ...]:
    return tuple(s for s in UNIVERSE if s.sector == sector)
