"""Market regimes and the spec's threshold rules for classifying a trading day.

The spec's rules overlap (a -2.5% day with 25% breadth matches BEAR, SHORT_TERM_STRESS and WEAKENING), so
they are checked in a fixed precedence, most severe first: BEAR, SHORT_TERM_STRESS, STRONG_BULL, WEAKENING,
MILD_BULL. A day that matches none (e.g. -0.3% with 60% breadth, or +0.4% with 40% breadth) falls back by the
sign of the market return: >= 0 -> MILD_BULL, < 0 -> WEAKENING. Every day with full indicator history
therefore gets exactly one regime.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class Regime(str, enum.Enum):
    STRONG_BULL = "STRONG_BULL"
    MILD_BULL = "MILD_BULL"
    WEAKENING = "WEAKENING"
    SHORT_TERM_STRESS = "SHORT_TERM_STRESS"
    BEAR = "BEAR"

    def __str__(self) -> str:  # so f-strings and JSON show the bare name
        return self.value


#: Precedence order used by `classify` (first match wins).
PRECEDENCE: tuple[Regime, ...] = (
    Regime.BEAR, Regime.SHORT_TERM_STRESS, Regime.STRONG_BULL, Regime.WEAKENING, Regime.MILD_BULL,
)


@dataclass(frozen=True)
class Thresholds:
    """The spec's table. Returns and momentum are fractions (-0.02 = -2%); vol is annualised (0.25 = 25%)."""

    bear_return: float = -0.02
    bear_breadth: float = 0.30
    bear_momentum: float = -0.05
    stress_return: float = -0.015
    stress_vol: float = 0.25
    strong_return: float = 0.01
    strong_breadth: float = 0.65
    strong_momentum: float = 0.03
    weak_return: float = 0.0
    weak_breadth_low: float = 0.35
    weak_breadth_high: float = 0.50
    mild_return: float = 0.0
    mild_breadth: float = 0.50


THRESHOLDS = Thresholds()


def classify_arrays(market_return, breadth, momentum, vol, t: Thresholds = THRESHOLDS) -> np.ndarray:
    """Vectorised classification; returns an object array of Regime (None where any input is NaN)."""
    r = np.asarray(market_return, dtype=float)
    b = np.asarray(breadth, dtype=float)
    m = np.asarray(momentum, dtype=float)
    v = np.asarray(vol, dtype=float)
    conditions = [
        (r < t.bear_return) & (b < t.bear_breadth) & (m < t.bear_momentum),
        (r < t.stress_return) & (v > t.stress_vol),
        (r > t.strong_return) & (b > t.strong_breadth) & (m > t.strong_momentum),
        (r < t.weak_return) & (b >= t.weak_breadth_low) & (b <= t.weak_breadth_high),
        (r > t.mild_return) & (b > t.mild_breadth),
    ]
    # Integer codes, then Regime objects: numpy would otherwise turn the str-enum members into plain strings.
    codes = np.select(conditions, list(range(len(PRECEDENCE))),
                      default=np.where(r >= 0, PRECEDENCE.index(Regime.MILD_BULL), PRECEDENCE.index(Regime.WEAKENING)))
    out = np.array(PRECEDENCE, dtype=object)[codes]
    out[np.isnan(r) | np.isnan(b) | np.isnan(m) | np.isnan(v)] = None
    return out


def classify(market_return: float, breadth: float, momentum: float, vol: float,
             t: Thresholds = THRESHOLDS) -> Regime:
    """Classify one day. Raises ValueError on NaN input (a day without full history has no regime)."""
    g = classify_arrays([market_return], [breadth], [momentum], [vol], t)[0]
    if g is None:
        raise ValueError("cannot classify a day with NaN indicators")
    return g
