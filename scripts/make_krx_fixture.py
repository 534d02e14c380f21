"""Write the example KRX tree (the embedded preset's paths.krx_source_dir) in the seed system's format.

    python scripts/make_krx_fixture.py [--out data/fixtures/krx]

Three months (2024-01..03) of the simulated market for eight universe stocks and one ticker outside the universe,
in the seed system's columns (`kospi_ft.data.simulate.as_vendor(..., "seed")`): timestamp dates, "005930 KP"
tickers, float volume, pe_ratio/pb_ratio, feature columns, trading halts as zero OHLC, and a few rows with a
missing close. `python -m stages.market --source krx` ingests it; the tests read it too. Deterministic: the files
are committed, this script documents and regenerates them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kospi_ft.data.simulate import SimConfig, simulate, write_vendor_tree  # noqa: E402

TICKERS = ("005930", "000660", "005380", "035420", "051910", "068270", "105560", "207940", "900000")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "data" / "fixtures" / "krx"))
    args = ap.parse_args()
    table = simulate(SimConfig(dt.date(2024, 1, 1), dt.date(2024, 3, 31), seed=5, extra_tickers=1, halt_prob=0.01))
    keep = np.isin(table["ticker"].to_numpy(zero_copy_only=False), TICKERS)
    table = table.filter(pa.array(keep))
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    for path in write_vendor_tree(table, out, "seed", missing_close=0.004):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
