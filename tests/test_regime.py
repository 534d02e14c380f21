import math

import numpy as np
import pytest

from kospi_ft.data.regime import PRECEDENCE, THRESHOLDS, Regime, classify, classify_arrays

# (market_return, breadth, momentum_10d, vol_10d) -> expected, each a hand-made day
CASES = [
    ((-0.025, 0.20, -0.08, 0.40), Regime.BEAR),               # matches BEAR, STRESS and WEAKENING-ish: BEAR wins
    ((-0.025, 0.20, -0.04, 0.40), Regime.SHORT_TERM_STRESS),  # momentum not below -5%: not BEAR
    ((-0.016, 0.40, -0.02, 0.30), Regime.SHORT_TERM_STRESS),  # also matches WEAKENING: STRESS has precedence
    ((-0.016, 0.40, -0.02, 0.20), Regime.WEAKENING),          # vol too low for STRESS
    ((0.015, 0.70, 0.05, 0.15), Regime.STRONG_BULL),          # also matches MILD_BULL
    ((0.015, 0.70, 0.02, 0.15), Regime.MILD_BULL),            # momentum too low for STRONG_BULL
    ((0.005, 0.55, 0.00, 0.10), Regime.MILD_BULL),
    ((-0.005, 0.45, 0.00, 0.10), Regime.WEAKENING),
    ((-0.003, 0.60, 0.01, 0.10), Regime.WEAKENING),           # matches nothing; negative return -> WEAKENING
    ((0.004, 0.40, 0.01, 0.10), Regime.MILD_BULL),            # matches nothing; positive return -> MILD_BULL
    ((0.0, 0.50, 0.0, 0.10), Regime.MILD_BULL),               # flat day falls back to MILD_BULL
]


@pytest.mark.parametrize("day,expected", CASES)
def test_classify_hand_made_days(day, expected):
    assert classify(*day) is expected


def test_thresholds_are_strict_at_the_boundaries():
    t = THRESHOLDS
    # exactly -2% is not "< -2%": BEAR needs a strictly lower return
    assert classify(t.bear_return, 0.2, -0.08, 0.1) is not Regime.BEAR
    assert classify(t.bear_return - 1e-9, 0.2, -0.08, 0.1) is Regime.BEAR
    # breadth 35% and 50% are inside WEAKENING's band
    assert classify(-0.001, 0.35, 0.0, 0.1) is Regime.WEAKENING
    assert classify(-0.001, 0.50, 0.0, 0.1) is Regime.WEAKENING


def test_vectorised_matches_scalar_and_nan_gets_none():
    days = np.array([c[0] for c in CASES] + [(math.nan, 0.5, 0.0, 0.1)])
    out = classify_arrays(*days.T)
    assert list(out[:-1]) == [c[1] for c in CASES]
    assert out[-1] is None
    assert all(isinstance(g, Regime) for g in out[:-1])
    with pytest.raises(ValueError):
        classify(math.nan, 0.5, 0.0, 0.1)


def test_precedence_order_is_the_documented_one():
    assert [g.value for g in PRECEDENCE] == ["BEAR", "SHORT_TERM_STRESS", "STRONG_BULL", "WEAKENING", "MILD_BULL"]
