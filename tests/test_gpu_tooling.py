"""The GPU scripts, run on the CPU: every mode of benchmarks/gpu_train_bench.py and benchmarks/gpu_e2e.py that can
run without a GPU (hf backend, tiny model), and the flags gpu_verify.sh and gpu_e2e.sh pass, so a change to the
training code, its params or the stages breaks them here and not on the GPU machine, where they cost device time."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model_fixtures import build_tiny_gguf, build_tiny_hf

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "gpu_train_bench.py"
E2E = ROOT / "benchmarks" / "gpu_e2e.py"


def run(*args, cwd=ROOT, timeout=600) -> list[dict]:
    """Run a script; its JSON lines (the measurements) in order."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_hf(tmp_path_factory.mktemp("tiny"))[0]


def test_gpu_train_bench_modes_run_on_the_cpu(tiny, tmp_path):
    """sft (Stage 1 and Stage 2 sections of the real preset, one with a saved adapter), dpo from that adapter
    (step-0 loss ln 2), packing, layout, profile and ratio: what gpu_verify.sh and gpu_e2e.sh bench call."""
    common = ["--backend", "hf", "--model", tiny]
    [stage1] = run(BENCH, "sft", *common, "--seq", 256, "--bs", 2, "--grad-accum", 1, "--steps", 2, "--records", 16,
                   "--adapter-out", tmp_path / "s2")
    assert (stage1["section"], stage1["packing"], stage1["bs"], stage1["grad_accum"]) == ("stage1", "wrapped", 2, 1)
    assert stage1["tokens_per_s"] > 0 and len(stage1["step_times"]) == 2 and stage1["effective_batch"] == 2
    assert (tmp_path / "s2" / "adapter_config.json").is_file()
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "You are a KOSPI quant analyst."},
        {"role": "user", "content": f"코스피 {i} 시장 체제를 분류하세요. " * 8},
        {"role": "assistant", "content": json.dumps({"regime": "MILD_BULL", "confidence": 0.5 + i / 100})}]},
        ensure_ascii=False) + "\n" for i in range(12)), encoding="utf-8")
    [stage2] = run(BENCH, "sft", *common, "--section", "stage2", "--data", data, "--records", 12, "--seq", 512,
                   "--bs", 1, "--grad-accum", 2, "--steps", 2)
    assert (stage2["section"], stage2["packing"], stage2["effective_batch"]) == ("stage2", "bfd", 2)
    [dpo] = run(BENCH, "dpo", *common, "--adapter", tmp_path / "s2", "--steps", 1)
    assert dpo["step0_ok"] and dpo["step0_loss"] == pytest.approx(dpo["ln2"], abs=1e-3)
    [packing] = run(BENCH, "packing", *common)
    assert packing["max_abs_diff_crossed_vs_alone"] > 0  # one position range: document B attends to A
    [layout] = run(BENCH, "layout", *common, "--seq", 64, "--steps", 1)
    assert all(layout[f"{k}_tokens_per_s"] > 0 for k in ("rows", "packed", "packed_masked", "rows_again"))
    [profile] = run(BENCH, "profile", *common, "--seq", 64, "--bs", 1, "--grad-accum", 1, "--records", 24)
    assert profile["events"] > 0
    # auto: each stage under train.layout (the CPU runs the recipe), the layout recorded; auto-rows against anchors.
    small = ["--seq", 256, "--bs", 1, "--grad-accum", 2, "--steps", 2]
    [auto1] = run(BENCH, "auto", *common, "--stage", "stage1", "--records", 16, "--cap", 20, *small,
                  "--adapter-out", tmp_path / "a2")
    assert auto1["layout"]["micro_batch"] * auto1["layout"]["grad_accum"] == 2 and auto1["tokens_per_s"] > 0
    # A pinned layout, a single-document row collated as a plain row, profiled steps 3-4 (left out of the rate).
    [auto2] = run(BENCH, "auto", *common, "--stage", "stage2", "--data", data, "--records", 12, *small,
                  "--steps", 5, "--micro-batch", 1, "--checkpointing", "off", "--variant", "single-doc-rows",
                  "--profile")
    assert (auto2["layout"]["chosen_by"], auto2["variant"]) == ("pinned", "single-doc-rows")
    assert len(auto2["step_times"]) == 5
    assert auto2["profile"]["steps"] == [3, 4] and auto2["profile"]["wall_s"] > 0
    assert len(auto2["num_items_in_batch"]) == 4 and all(n > 0 for n in auto2["num_items_in_batch"])
    [auto3] = run(BENCH, "auto", *common, "--stage", "dpo", "--adapter", tmp_path / "a2", "--records", 8,
                  "--layout", "recipe", "--seq", 1024, "--bs", 1, "--grad-accum", 2, "--steps", 2)
    assert auto3["layout"]["chosen_by"] == "recipe" and auto3["tokens_per_s"] > 0 and len(auto3["losses"]) == 2
    autos = tmp_path / "auto.jsonl"
    anchor256 = {"backend": "unsloth", "seq": 256, "bs": 2, "tokens_per_s": auto1["tokens_per_s"] / 2,
                 "step_times": [1.0], "peak_alloc_GiB": 1.0}
    dpo_auto = {**auto3, "layout_mode": "auto", "memory_cap_gib": 24}
    autos.write_text("\n".join(json.dumps(r) for r in (anchor256, auto1, auto2, auto3, dpo_auto)) + "\n")
    got = {r["stage"]: r for r in run(BENCH, "auto-rows", autos)}
    assert got["stage1"]["ratio"] == pytest.approx(2.0, abs=1e-2) and got["stage1"]["memory_cap_gib"] == 20
    assert got["dpo"]["ratio"] == 1.0 and "stage2" in got
    # ratio: each pipeline run against the raw loop's row of its own sequence length.
    rows = tmp_path / "bench.jsonl"
    anchor = {"backend": "unsloth", "seq": 256, "bs": 2, "tokens_per_s": stage1["tokens_per_s"] * 2,
              "step_times": [1.0], "peak_alloc_GiB": 1.0}
    rows.write_text("\n".join(json.dumps(r) for r in (anchor, stage1, stage2)) + "\n")
    [ratio] = run(BENCH, "ratio", rows)
    assert ratio["seq"] == 256 and ratio["ratio_vs_raw_unsloth"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_gpu_e2e_runs_on_the_cpu(tiny, tmp_path):
    """gpu_e2e.py's own steps on the CPU (`prepare --cpu`: the hf backend): the real preset's data stages and the
    base's export through DVC, a refresh that keeps the outputs, an evaluation variant on the GGUF, and every
    llama-diag case with no layer offloaded."""
    work, results = tmp_path / "work", tmp_path / "results.jsonl"
    [prep] = run(E2E, "prepare", work, "--model", tiny, "--cpu")
    assert prep["ok"] and not prep["refreshed"] and prep["overrides"]["model.backend"] == "hf"
    rows = run(E2E, "repro", work, "market", "snapshots", "synthesize", "dpo_pairs", "base_model", "export@base",
               "--results", results)
    assert [r["stage"] for r in rows] == ["market", "snapshots", "synthesize", "dpo_pairs", "base_model",
                                          "export@base"] and all(r["ok"] for r in rows)
    assert rows[-1]["gguf_bytes"] > 0 and set(rows[-1]["step_seconds"]) >= {"convert", "quantize", "parity"}
    gguf = work / "models" / "gguf" / "base" / "model-Q4_K_M.gguf"
    mtime = gguf.stat().st_mtime_ns
    [again] = run(E2E, "prepare", work, "--model", tiny, "--cpu", "--refresh")
    assert again["refreshed"]
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "export@base"], cwd=work, capture_output=True,
                            text=True, check=True)
    assert "up to date" in status.stdout and gguf.stat().st_mtime_ns == mtime
    [variant] = run(E2E, "eval", work, "base", "--results", results, "--label", "llamacpp-cpu", "--gpu-layers", 0,
                    "--n-samples", 2, "--max-new-tokens", 8, "--parallel", 2)
    assert variant["ok"] and variant["n_samples"] == 2 and variant["gen_tokens_per_s"] > 0
    assert variant["wall_s"] > 0 and variant["wall_gen_tokens_per_s"] > 0
    diag = run(E2E, "llama-diag", gguf, "--results", results, "--gpu-layers", 0)
    assert [r["stage"] for r in diag] == [f"llama-diag[{c}]" for c in (
        "bare", "quiet", "offload_query_first", "n_ctx_8192", "threads_all", "torch_imported",
        "torch_cuda_initialised", "stage_imports", "stage_backend")]
    assert all(r["ok"] for r in diag) and diag[2]["gpu_offload"] is False
    assert diag[-1]["llama_process_preloaded"] == [] and diag[-1]["prompt_tokens"] > 1000
    assert len(results.read_text().splitlines()) == len(rows) + 1 + len(diag)


def bench_calls(script: Path) -> list[tuple[str, set[str]]]:
    """(mode, flags) of every gpu_train_bench.py command in `script` (continuation lines joined), through `$B`
    too, whose definition may bind the mode (`B="... gpu_train_bench.py sft ..."`)."""
    text = re.sub(r"\\\n\s*", " ", script.read_text(encoding="utf-8"))
    flags = lambda rest: set(re.findall(r"(?<![\w-])--[a-z][\w-]*", rest))  # noqa: E731
    bound = re.search(r'B="[^"]*gpu_train_bench\.py(?:\s+([a-z]+))?([^"]*)"', text)
    calls = []
    if bound and bound.group(1):
        calls.append((bound.group(1), flags(bound.group(2))))
    for line in text.splitlines():
        if line.lstrip().startswith("#") or line.lstrip().startswith("B="):
            continue
        for m in re.finditer(r"(?:\$B|gpu_train_bench\.py)\s+(?:([a-z]+)\b)?([^;|&\n]*)", line):
            mode = m.group(1) or (bound.group(1) if bound else None)
            calls.append((mode, flags(m.group(2))))
    return calls


def test_gpu_scripts_pass_only_flags_the_benches_take():
    """Every gpu_train_bench.py command in gpu_verify.sh and gpu_e2e.sh names a mode and flags the bench parses;
    the shell scripts parse."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_train_bench
    finally:
        sys.path.pop(0)
    sub = next(a for a in gpu_train_bench.parser()._actions if a.dest == "cmd")
    calls = [c for script in ("gpu_verify.sh", "gpu_e2e.sh") for c in bench_calls(ROOT / "benchmarks" / script)]
    assert len(calls) >= 15 and {"sft", "dpo", "packing", "layout", "profile", "ratio", "attn"} <= {m for m, _ in calls}
    for mode, flags in calls:
        assert mode in sub.choices, mode
        known = {o for a in sub.choices[mode]._actions for o in a.option_strings}
        assert flags <= known, (mode, flags - known)
    for script in ("gpu_verify.sh", "gpu_e2e.sh", "gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], check=True)
