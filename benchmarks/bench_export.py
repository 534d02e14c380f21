"""Benchmark: reading a Qwen GGUF's metadata, the gguf package's reader vs llama.cpp (the parity gate's choice).

The parity gate needs a handful of scalar keys (chat template, eos/pad ids, pre-tokenizer, file type). The
`gguf` reader parses every key first, including the 151k-string token and merge arrays; llama.cpp's vocab-only
load gives the same keys. Prints both times, the ratio, and checks that the values agree.

    python benchmarks/bench_export.py [--gguf models/gguf/base/model-Q4_K_M.gguf] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _time(fn, repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=ROOT / "models/gguf/base/model-Q4_K_M.gguf")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from llama_cpp import Llama

    from kospi_ft.export.gguf import ftype_name, read_gguf

    if not args.gguf.is_file():
        sys.exit(f"{args.gguf}: not found (run `dvc repro export@base` or pass --gguf)")

    def via_llama_cpp():
        llm = Llama(model_path=str(args.gguf), vocab_only=True, verbose=False)
        meta = dict(llm.metadata)
        llm.close()
        return meta

    baseline_s, info = _time(lambda: read_gguf(args.gguf), args.repeat)
    llama_s, meta = _time(via_llama_cpp, args.repeat)
    agree = (info.chat_template == meta["tokenizer.chat_template"]
             and info.eos_token_id == int(meta["tokenizer.ggml.eos_token_id"])
             and info.padding_token_id == int(meta["tokenizer.ggml.padding_token_id"])
             and info.tokenizer_pre == meta["tokenizer.ggml.pre"]
             and info.file_type == ftype_name(int(meta["general.file_type"])))
    print(f"GGUF: {args.gguf} ({args.gguf.stat().st_size / 2**20:.1f} MiB, vocab {info.vocab_size})")
    print(f"gguf.GGUFReader (baseline): {baseline_s:8.3f} s  (median of {args.repeat})")
    print(f"llama.cpp vocab-only load:  {llama_s:8.3f} s")
    print(f"speed-up: {baseline_s / llama_s:.1f}x; metadata agree: {agree}")


if __name__ == "__main__":
    main()
