from kospi_ft.data.universe import SECTORS, SECTORS_KO, TICKERS, UNIVERSE, by_code

import pytest


def test_universe_shape():
    assert len(UNIVERSE) == 97
    assert len(TICKERS) == 97  # codes are unique
    assert all(len(s.code) == 6 and s.code.isdigit() for s in UNIVERSE)
    assert all(s.sector in SECTORS_KO for s in UNIVERSE)
    assert len({s.name_ko for s in UNIVERSE}) == 97
    # the sectors the spec's strategies talk about are all present
    for sector in ("semiconductor", "battery", "auto", "shipbuilding", "bank", "bio", "internet", "steel",
                   "chemical", "telecom"):
        assert sector in SECTORS


def test_by_code():
    assert by_code("005930").name_ko == "삼성전자"
    with pytest.raises(KeyError, match="999999"):
        by_code("999999")
