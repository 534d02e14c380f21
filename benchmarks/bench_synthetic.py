"""Benchmark: 5,000 synthetic SFT records (target <= 3 s) and 2,000 DPO pairs (target <= 1 s), each against a
baseline measured in the same run.

- SFT baseline: the same generator drawing every random number with a scalar numpy Generator call
  (`rng.random()`, `rng.normal()`, ...), as a straightforward implementation would. The product code serves the
  same Generator's values from 64k blocks (`synthetic.Draws`); the records differ only in which random values
  they get, so the work per record is identical.
- DPO baseline: judging every rejected answer with the four public checks one after another (schema_errors,
  hallucinations, rule_violations, quality_issues: up to four parses/validations per answer), instead of
  `dpo_pairs.rejection_holds`, which validates once.
Wall time is what a user waits; CPU time (process_time) is less disturbed by other jobs sharing the cores.

    python benchmarks/bench_synthetic.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the project's package

from kospi_ft.data import dpo_pairs, synthetic  # noqa: E402
from kospi_ft.schema import hallucinations, quality_issues, schema_errors  # noqa: E402
from kospi_ft.strategy import rule_violations  # noqa: E402


class ScalarDraws:
    """synthetic.Draws' interface, one numpy call per value (the baseline)."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng

    def random(self) -> float:
        return float(self._rng.random())

    def normal(self, mean: float = 0.0, sd: float = 1.0) -> float:
        return float(self._rng.normal(mean, sd))

    def randoms(self, k: int) -> list[float]:
        return [float(self._rng.random()) for _ in range(k)]

    def normals(self, k: int) -> list[float]:
        return [float(self._rng.standard_normal()) for _ in range(k)]

    def uniform(self, lo: float, hi: float) -> float:
        return float(self._rng.uniform(lo, hi))

    def integers(self, n: int) -> int:
        return int(self._rng.integers(n))

    def choice(self, seq):
        return seq[int(self._rng.integers(len(seq)))]

    def sample(self, n: int, k: int) -> list[int]:
        return [int(i) for i in self._rng.choice(n, size=k, replace=False)]


def naive_holds(rejection_type: str, task: str, text: str) -> bool:
    errors = schema_errors(task, text)
    if rejection_type == "schema_violation":
        return bool(errors) and not hallucinations(task, text)
    if rejection_type == "hallucination":
        return bool(errors) and len(hallucinations(task, text)) == len(errors)
    if errors:
        return False
    if rejection_type == "strategy_violation":
        return bool(rule_violations(task, text))
    return not rule_violations(task, text) and bool(quality_issues(task, text))


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def best(fn, repeat: int):
    runs = [timed(fn) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[-1][2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    args = ap.parse_args()

    sft = lambda: synthetic.generate(5000, seed=42)  # noqa: E731 - validated, exactly as the stage runs it
    w, c, records = best(sft, args.repeat)
    with mock.patch.object(synthetic, "Draws", ScalarDraws):
        bw, bc, _ = best(sft, args.repeat)
    print(f"SFT 5,000 records (validated): {w:.2f} s wall, {c:.2f} s CPU  (target <= 3 s)")
    print(f"  baseline, scalar numpy draws: {bw:.2f} s wall, {bc:.2f} s CPU  -> speed-up x{bw / w:.2f} wall, "
          f"x{bc / c:.2f} CPU")

    pairs = lambda: dpo_pairs.make_pairs(records, 2000, seed=42)  # noqa: E731
    w, c, _ = best(pairs, args.repeat)
    with mock.patch.object(dpo_pairs, "rejection_holds", naive_holds):
        bw, bc, _ = best(pairs, args.repeat)
    print(f"DPO 2,000 pairs: {w:.2f} s wall, {c:.2f} s CPU  (target <= 1 s)")
    print(f"  baseline, four separate checks per rejected answer: {bw:.2f} s wall, {bc:.2f} s CPU  -> "
          f"speed-up x{bw / w:.2f} wall, x{bc / c:.2f} CPU")


if __name__ == "__main__":
    main()
