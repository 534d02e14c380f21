"""Benchmark: the embedded pipeline under DVC on this machine.

Prints the wall time of a full `dvc repro -f` (every stage runs: a fresh copy would skip the evaluate stages whose
committed metrics already match dvc.lock) in a fresh copy of the project, a no-op `dvc repro`, and
`dvc exp run -S dpo.beta=0.3`, with the experiment as a share of the full run (targets: full <= 10 min,
no-op <= 3 s, experiment <= 25% of full).

    python benchmarks/bench_dvc.py [--dir /tmp/bench_dvc]
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/bench_dvc")
    args = ap.parse_args()
    from conftest import copy_project, dvc

    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    proj = copy_project(work / "proj")

    def timed(*cmd: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        out = dvc(proj, *cmd).stdout
        return time.perf_counter() - t0, out

    full, out = timed("repro", "-f")
    per_stage = re.findall(r"Running stage '([^']+)'", out)
    noops = [timed("repro")[0] for _ in range(3)]
    noop = sorted(noops)[1]
    exp, out = timed("exp", "run", "-S", "dpo.beta=0.3")
    exp_stages = ", ".join(re.findall(r"Running stage '([^']+)'", out))
    print(f"full dvc repro:           {full:7.1f} s  ({len(per_stage)} stages; target <= 600 s)")
    print(f"no-op dvc repro:          {noop:7.1f} s  (median of {', '.join(f'{t:.2f}' for t in noops)}; "
          "target <= 3 s)")
    print(f"exp run -S dpo.beta=0.3:  {exp:7.1f} s  = {exp / full:.0%} of the full run (target <= 25%); "
          f"stages: {exp_stages}")


if __name__ == "__main__":
    main()
