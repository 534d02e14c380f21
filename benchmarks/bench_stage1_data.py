"""Stage 1 data selection throughput: rows/s of `hfdata.build`, to size the real preset (200K rows).

    python benchmarks/bench_stage1_data.py [--rows 20000]

A hub-sized stand-in is made by repeating the Finance-Instruct fixture rows with a unique suffix (so nothing is a
duplicate). Measured in the same run: the stage's batched token counting (render with the chat template, then
one batched fast-tokenizer call per chunk) against a baseline that tokenizes each conversation on its own with
`apply_chat_template(tokenize=True)`. Prints rows/s for both and the ratio.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import datasets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kospi_ft.data import hfdata  # noqa: E402  (after the path insert: run as a plain script)
from kospi_ft.tokenizer import load_tokenizer  # noqa: E402


def per_row_lengths(tokenizer, conversations):
    return [len(tokenizer.apply_chat_template(list(c), tokenize=True)["input_ids"]) for c in conversations]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()

    spec = hfdata.spec_for("finance_instruct")
    base = hfdata.load_fixture(spec, ROOT / "data" / "fixtures" / "stage1").to_dict()
    n = len(base["user"])
    rows = {c: [base[c][i % n] for i in range(args.rows)] for c in base}
    rows["user"] = [f"{u} (case {i})" if isinstance(u, str) else u for i, u in enumerate(rows["user"])]
    tables = {"finance_instruct": datasets.Dataset.from_dict(rows)}
    total = int(args.rows * 0.8)          # fewer than the usable rows, so every run fills its quota
    tokenizer = load_tokenizer(None)

    timings = {}
    for name, lengths in (("baseline per-row apply_chat_template", functools.partial(per_row_lengths, tokenizer)),
                          ("stage batched chat_token_lengths", functools.partial(hfdata.chat_token_lengths,
                                                                                 tokenizer))):
        start = time.perf_counter()
        result = hfdata.build(tables, {"finance_instruct": 1.0}, total, 512, 42, False, lengths)
        timings[name] = time.perf_counter() - start
        assert len(result.records) == total
        print(f"{name:40s} {total:7d} rows in {timings[name]:6.2f} s = {total / timings[name]:8.0f} rows/s")
    base_s, stage_s = timings.values()
    print(f"speed-up (baseline / stage): {base_s / stage_s:.2f}x; at this rate 200,000 rows take "
          f"~{200_000 / (total / stage_s):.0f} s of selection")


if __name__ == "__main__":
    main()
