"""Splitting a count by shares: dataset quotas (Stage 1), task/format mixes (Stage 2), rejection types (Stage 3)."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, TypeVar

K = TypeVar("K")


def allocate(total: int, ratios: Mapping[K, float]) -> dict[K, int]:
    """Split `total` by `ratios` with the largest-remainder rule (Hamilton): floor(total * r_i) each, then the
    remaining units one each to the largest fractional parts, ties by the mapping's order. Sums to `total`, and
    each count differs from total * r_i by less than 1."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    keys = list(ratios)
    # str(float) is the shortest decimal that round-trips, so 0.1 becomes exactly 1/10 here: no float error
    # can move a unit between keys.
    exact = [Fraction(str(ratios[k])) for k in keys]
    norm = sum(exact)
    if norm <= 0:
        raise ValueError("ratios must have a positive sum")
    shares = [total * r / norm for r in exact]
    quotas = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(keys)), key=lambda i: (-(shares[i] - quotas[i]), i))
    for i in by_remainder[:total - sum(quotas)]:
        quotas[i] += 1
    return dict(zip(keys, quotas))
