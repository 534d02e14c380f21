"""DPO model rejects: replies sampled from a real (tiny, random-weight) Q4_K_M GGUF through llama.cpp and from
a local fake Ollama, kept only when schema-broken as the evaluator judges it (extract_json + schema_errors),
exact counts and ratio, a reported shortfall, byte-identical reruns, and clear errors."""
from __future__ import annotations

import collections
import json
import logging
import shutil
from pathlib import Path

import pytest

from kospi_ft import atomic, params
from kospi_ft.data.dpo_pairs import (
    MODEL_OUTPUT, REJECTION_SHARES, collect_model_rejects, model_reject_target, sample_seed,
)
from kospi_ft.errors import PipelineError
from kospi_ft.evaluation.parsing import extract_json
from kospi_ft.schema import schema_errors
from kospi_ft.data.synthetic import allocate, generate
from model_fixtures import build_tiny_gguf, build_tiny_hf, fake_ollama, url_of


@pytest.fixture(scope="module")
def sft():
    return generate(36, seed=31)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    hf_dir, _ = build_tiny_hf(tmp_path_factory.mktemp("base"))
    return build_tiny_gguf(hf_dir, tmp_path_factory.mktemp("gguf"))


def _answers(sft) -> dict[str, tuple[str, str]]:
    """user prompt -> (task, correct answer)."""
    return {r["messages"][1]["content"]: (r["task"], r["messages"][2]["content"]) for r in sft}


def _schema_broken(task: str, text: str) -> bool:
    got = extract_json(text)
    return got.data is None or bool(schema_errors(task, got.data))


@pytest.fixture
def project(tmp_path, monkeypatch, project_root, sft):
    """A temp project: the shipped params.yaml with a short reply budget, the SFT set at paths.synthetic and an eval
    set at paths.eval_set (the stage also writes the held-out pairs)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(project_root / "params.yaml", "params.yaml")
    params.update("params.yaml", "dpo_pairs.max_new_tokens", 8)
    params.update("params.yaml", "evaluate.threads", 1)
    paths = params.load_paths("params.yaml")
    atomic.write_jsonl(paths.synthetic, sft)
    atomic.write_jsonl(paths.eval_set, generate(12, seed=4242, split="eval"))
    return paths


def test_target_is_exact():
    assert model_reject_target(2000, 0.15) == 300
    assert model_reject_target(100, 0.15) == 15
    assert model_reject_target(7, 0.5) + allocate(7, {"a": 0.5, "b": 0.5})["b"] == 7
    assert model_reject_target(10, 0.0) == 0 and model_reject_target(10, 1.0) == 10
    assert len({sample_seed(42, a) for a in range(100)}) == 100 and sample_seed(42, 3) == sample_seed(42, 3)


def test_llamacpp_samples_are_seeded_and_kept_only_when_broken(tiny_gguf, sft):
    from kospi_ft.evaluation.backends import LlamaCppBackend

    backend = LlamaCppBackend(tiny_gguf, n_ctx=4096, n_threads=1, temperature=0.7)
    try:
        prompt = sft[0]["messages"][:2]
        a, b = backend.generate(prompt, 8, seed=1), backend.generate(prompt, 8, seed=2)
        assert backend.generate(prompt, 8, seed=1).text == a.text   # same seed, same sample
        assert a.text != b.text                                     # sampled, not greedy
        pairs, stats = collect_model_rejects(backend, sft, 6, seed=3, max_new_tokens=8)
    finally:
        backend.close()
    answers = _answers(sft)
    assert len(pairs) == 6 == stats.collected and stats.shortfall == 0
    assert stats.attempts == 6 + stats.valid + stats.empty <= stats.max_attempts == 24
    for p in pairs:
        task, chosen = answers[p["prompt"][1]["content"]]
        assert p["rejection_type"] == MODEL_OUTPUT and p["task"] == task
        assert p["chosen"] == [{"role": "assistant", "content": chosen}]
        assert _schema_broken(task, p["rejected"][0]["content"]) and not _schema_broken(task, chosen)


def test_stage_with_the_stage2_gguf(project, tiny_gguf, caplog):
    from stages.dpo_pairs import main

    gguf = project.gguf_dir / "stage2" / tiny_gguf.name   # where export@stage2 puts it (export.quant Q4_K_M)
    gguf.parent.mkdir(parents=True)
    shutil.copy(tiny_gguf, gguf)
    argv = ["--collect-model-rejects", "--model", "stage2", "--model-reject-ratio", "0.25", "--count", "24",
            "--no-progress"]
    with caplog.at_level(logging.INFO):
        main(argv + ["--output", "a.jsonl"])
    main(argv + ["--output", "b.jsonl"])
    assert Path("a.jsonl").read_bytes() == Path("b.jsonl").read_bytes()
    pairs = [json.loads(line) for line in Path("a.jsonl").read_text(encoding="utf-8").splitlines()]
    counts = collections.Counter(p["rejection_type"] for p in pairs)
    # A random-weight model never writes a valid answer: all 6 wanted model rejects are found.
    assert len(pairs) == 24 and counts.pop(MODEL_OUTPUT) == 6
    assert dict(counts) == {k: v for k, v in allocate(18, REJECTION_SHARES).items() if v}
    for p in pairs:
        if p["rejection_type"] == MODEL_OUTPUT:
            assert _schema_broken(p["task"], p["rejected"][0]["content"])
    assert '"shortfall": 0' in caplog.text and str(gguf) in caplog.text
    main(argv + ["--output", "c.jsonl", "--seed", "7"])
    assert Path("c.jsonl").read_bytes() != Path("a.jsonl").read_bytes()


def test_missing_gguf_is_a_clear_error(project):
    from stages.dpo_pairs import main

    with pytest.raises(PipelineError, match=r"models/gguf/stage2/model-Q4_K_M\.gguf: GGUF not found.*export"):
        main(["--collect-model-rejects", "--model", "stage2", "--output", "x.jsonl", "--no-progress"])
    assert not Path("x.jsonl").exists()


def _ollama_replies(sft):
    """Seed % 3 picks the reply: 0 -> broken JSON, 1 -> the correct answer fenced, 2 -> the correct answer."""
    answers = _answers(sft)

    def reply(body: dict) -> str:
        _, answer = answers[body["messages"][-1]["content"]]
        kind = body["options"]["seed"] % 3
        return '{"regime": "BEAR", "exposure": "high"' if kind == 0 else (
            f"```json\n{answer}\n```" if kind == 1 else answer)

    return reply


def test_stage_with_ollama(project, sft, caplog):
    from stages.dpo_pairs import main

    with fake_ollama({"qwen2.5-kospi-ft-s2": _ollama_replies(sft)}) as server:
        argv = ["--collect-model-rejects", "--backend", "ollama", "--model", "stage2", "--ollama-url",
                url_of(server), "--model-reject-ratio", "0.5", "--count", "12", "--no-progress"]
        with caplog.at_level(logging.INFO):
            main(argv + ["--output", "a.jsonl"])
        first = list(server.requests)
        main(argv + ["--output", "b.jsonl"])
    assert Path("a.jsonl").read_bytes() == Path("b.jsonl").read_bytes()
    bodies = [b for path, b in first if path == "/api/chat"]
    assert {b["model"] for b in bodies} == {"qwen2.5-kospi-ft-s2"}   # stage2 -> the registered Ollama name
    assert {b["options"]["temperature"] for b in bodies} == {0.7}
    seeds = [b["options"]["seed"] for b in bodies]
    assert len(set(seeds)) == len(seeds)
    # Valid replies (bare or fenced) are not kept; sampling stops at the 6th broken one.
    assert sum(s % 3 == 0 for s in seeds) == 6 and seeds[-1] % 3 == 0
    pairs = [json.loads(line) for line in Path("a.jsonl").read_text(encoding="utf-8").splitlines()]
    model = [p for p in pairs if p["rejection_type"] == MODEL_OUTPUT]
    assert len(pairs) == 12 and len(model) == 6
    assert all(p["rejected"][0]["content"] == '{"regime": "BEAR", "exposure": "high"' for p in model)
    stats = json.loads(caplog.text.split("model rejects: ", 1)[1].splitlines()[0])
    assert stats["valid"] == len(bodies) - 6 and stats["shortfall"] == 0


def test_shortfall_is_filled_and_reported(project, sft, caplog):
    from stages.dpo_pairs import main

    answers = _answers(sft)
    with fake_ollama({"good": lambda body: answers[body["messages"][-1]["content"]][1]}) as server:
        with caplog.at_level(logging.INFO):
            main(["--collect-model-rejects", "--backend", "ollama", "--model", "good", "--ollama-url",
                  url_of(server), "--model-reject-ratio", "0.25", "--count", "20", "--output", "a.jsonl",
                  "--no-progress"])
        n_requests = len(server.requests)
    pairs = [json.loads(line) for line in Path("a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == 20 and not any(p["rejection_type"] == MODEL_OUTPUT for p in pairs)
    assert dict(collections.Counter(p["rejection_type"] for p in pairs)) == allocate(20, REJECTION_SHARES)
    # 5 wanted x attempts_per_reject 4 = 20 tries, none broken.
    assert n_requests == 20
    assert "0 of 5 found in 20 samples" in caplog.text and "the other 5 pairs get synthetic" in caplog.text
    assert '"shortfall": 5' in caplog.text


def test_unreachable_ollama_names_the_url(project):
    import http.server

    from stages.dpo_pairs import main

    closed = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    url = url_of(closed)
    closed.server_close()
    with pytest.raises(PipelineError, match=rf"not reachable at {url}"):
        main(["--collect-model-rejects", "--backend", "ollama", "--ollama-url", url, "--output", "x.jsonl"])
    assert not Path("x.jsonl").exists()
