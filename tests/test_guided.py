"""Guided decoding (kospi_ft.guidance): what the token masks let through (number ranges, decimals, ticker/name
pairs, Korean text), guided replies of the random-init tiny model that are valid answers (llama.cpp on its GGUF,
transformers on its weights), the guided-vs-free benchmark, and `python -m stages.ask`."""
from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kospi_ft.errors import PipelineError
from kospi_ft.guidance import FRACTION_DIGITS, grammar
from kospi_ft.json_schema import korean_pattern, task_schema
from kospi_ft.schema import schema_errors
from model_fixtures import build_tiny_gguf, build_tiny_hf
from test_synthetic import store  # noqa: F401  (the fixture: a 120-day snapshot store)

ROOT = Path(__file__).resolve().parents[1]


# ---- the token masks (llguidance) -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory) -> Path:
    hf_dir, _ = build_tiny_hf(tmp_path_factory.mktemp("base"))
    return hf_dir


@pytest.fixture(scope="module")
def lltokenizer(tiny_hf_dir):
    from llguidance.hf import from_tokenizer

    from kospi_ft.tokenizer import load_tokenizer

    return from_tokenizer(load_tokenizer(str(tiny_hf_dir)))


def _accepts(tokenizer, schema: dict, text: str) -> bool:
    """Whether the guide lets a reply spell `text` and end there."""
    from llguidance import LLMatcher

    matcher = LLMatcher(tokenizer, grammar(schema), log_level=0)
    return matcher.consume_tokens(tokenizer.tokenize_str(text)) and matcher.is_accepting()


def _inside(schema: dict, text: str) -> bool:
    """Whether `text` spells, in plain decimal notation with at most FRACTION_DIGITS decimals, a value in range."""
    shape = r"-?(0|[1-9][0-9]{0,8})" + (rf"(\.[0-9]{{1,{FRACTION_DIGITS}}})?" if schema["type"] == "number" else "")
    if not re.fullmatch(shape, text):
        return False
    v, bound = decimal.Decimal(text), (lambda k: decimal.Decimal(repr(schema[k])))
    return all([v >= bound("minimum") if "minimum" in schema else True,
                v <= bound("maximum") if "maximum" in schema else True,
                v > bound("exclusiveMinimum") if "exclusiveMinimum" in schema else True,
                v < bound("exclusiveMaximum") if "exclusiveMaximum" in schema else True])


def _canonical(text: str) -> bool:
    """No trailing zero in the fraction and no "-0": the one spelling of a value the guide must allow."""
    return not re.search(r"\.[0-9]*0$", text) and text.lstrip("-").strip("0.") != "" or text == "0"


NUMBERS = sorted({s for whole in ["0", "1", "2", "3", "5", "9", "10", "99", "100", "199", "200", "201", "999",
                                  "1000", "1001", "5000"]
                  for s in [whole, *(f"{whole}.{f}" for f in ["0", "00", "0000", "1", "05", "3", "30", "3001",
                                                              "9999", "00001"])]})
NUMBERS += [f"-{n}" for n in NUMBERS] + ["01", "-0", "00.5", "1e3", "1.", "."]


@pytest.mark.parametrize("schema", [
    {"type": "number", "minimum": 0.0, "maximum": 1.0},                       # Fraction
    {"type": "number", "minimum": -1.0, "maximum": 1.0},                      # Signed
    {"type": "number", "exclusiveMinimum": -1.0, "exclusiveMaximum": 0.0},    # stop_loss
    {"type": "number", "exclusiveMinimum": 0.0, "maximum": 1.0},              # take_profit
    {"type": "number", "exclusiveMinimum": 0.0, "maximum": 1000.0},           # per
    {"type": "number", "minimum": -0.3, "maximum": 0.3},                      # expected_gap
    {"type": "number", "minimum": -1.0, "maximum": 0.0},                      # current_drawdown
    {"type": "number", "minimum": -1.0},                                      # return_pct
    {"type": "number", "exclusiveMinimum": 0.0},                              # price
    {"type": "integer", "minimum": 0, "maximum": 9},                          # f_score
    {"type": "integer", "minimum": 1},                                        # step
])
def test_guide_spells_only_numbers_inside_and_each_value_inside(lltokenizer, schema):
    """Nothing out of range, over FRACTION_DIGITS decimals or in exponent form gets through; every value in range
    can be spelled (in its canonical form: "0.3", not "0.30")."""
    accepted = {n for n in NUMBERS if _accepts(lltokenizer, schema, n)}
    assert sorted(n for n in accepted if not _inside(schema, n)) == []
    assert sorted(n for n in NUMBERS if _inside(schema, n) and _canonical(n) and n not in accepted) == []


def test_guide_holds_the_universe_pairs_and_the_korean_pattern(lltokenizer):
    from kospi_ft.data.universe import UNIVERSE

    position = task_schema("full_analysis")["$defs"]["Position"]
    schema = {**position, "$defs": task_schema("full_analysis")["$defs"]}
    a, b = sorted(UNIVERSE, key=lambda s: s.code)[:2]
    head = '{"ticker":"%s","name":"%s"'
    from llguidance import LLMatcher

    def prefix_ok(text):
        matcher = LLMatcher(lltokenizer, grammar(schema), log_level=0)
        return matcher.consume_tokens(lltokenizer.tokenize_str(text))

    assert prefix_ok(head % (a.code, a.name_ko)) and not prefix_ok(head % (a.code, b.name_ko))
    text = {"type": "string", "pattern": korean_pattern(200)}
    assert _accepts(lltokenizer, text, '"삼성전자 매수"') and _accepts(lltokenizer, text, '"KOSPI200 하락"')
    assert not _accepts(lltokenizer, text, '"no hangul here"')
    assert not _accepts(lltokenizer, text, '"' + "가" * 201 + '"')


def test_prompt_for_a_date_is_the_generators(store):  # noqa: F811
    from kospi_ft.answering import prompt_for_date
    from kospi_ft.prompts import QUANT_SYSTEM_PROMPT

    day = store.dates[-1]
    messages = prompt_for_date(store, day, "what_if", seed=1)
    assert [m["role"] for m in messages] == ["system", "user"] and messages[0]["content"] == QUANT_SYSTEM_PROMPT
    assert day.isoformat() in messages[1]["content"] and "[충격 시나리오]" in messages[1]["content"]
    assert prompt_for_date(store, day, "what_if", seed=1) == messages          # the seed fixes the prompt
    with pytest.raises(PipelineError, match=r"--date 2020-01-01: .*not a trading day.*store's days"):
        prompt_for_date(store, dt.date(2020, 1, 1), "what_if")


# ---- llama.cpp on the tiny random-init GGUF --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf_dir, tmp_path_factory) -> Path:
    return build_tiny_gguf(tiny_hf_dir, tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def prompt() -> list[dict]:
    from kospi_ft.data.synthetic import generate

    record = next(r for r in generate(24, seed=9, split="eval") if r["task"] == "regime_classification")
    return record["messages"][:2]


def test_guided_reply_of_a_random_model_is_a_valid_answer(tiny_gguf, prompt):
    """A random-init model's free reply is gibberish; guided by the task's schema it is a valid answer (it ends
    once the JSON is complete, inside the token cap)."""
    from kospi_ft.evaluation.backends import LlamaCppBackend

    backend = LlamaCppBackend(tiny_gguf, seed=0, n_ctx=8192, n_threads=1)
    try:
        free = backend.generate(prompt, 24)
        guided = backend.generate(prompt, 5000, schema=task_schema("regime_classification"))
    finally:
        backend.close()
    assert schema_errors("regime_classification", free.text)
    assert guided.completion_tokens < 5000
    answer = json.loads(guided.text)
    assert schema_errors("regime_classification", answer) == [], guided.text[:500]


def test_guided_reply_through_transformers_is_a_valid_answer(tiny_hf_dir, prompt):
    """The hf backend guides with the same engine over the HF tokenizer (the model's padded vocabulary included)."""
    from kospi_ft.evaluation.backends import HFBackend

    backend = HFBackend(tiny_hf_dir, seed=0)
    guided = backend.generate(prompt, 5000, schema=task_schema("regime_classification"))
    assert guided.completion_tokens < 5000
    assert schema_errors("regime_classification", json.loads(guided.text)) == [], guided.text[:500]


def test_bench_guided_runs(tiny_gguf, capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_guided
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    result = bench_guided.main(["--gguf", str(tiny_gguf), "--records", "1", "--max-new-tokens", "8",
                                "--json", str(tmp_path / "rows.jsonl")])
    out = capsys.readouterr().out
    assert "free:" in out and "guided:" in out and "ratio guided/free:" in out
    assert result["free"]["tokens"] > 0 and result["guided"]["tokens"] > 0 and result["ratio"] > 0
    [row] = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert row["bench"] == "guided" and row["ratio"] == result["ratio"] and row["gpu_layers"] == 0


def _ask(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.ask", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("backend", ["llamacpp", "hf"])
def test_ask_prints_a_valid_answer(backend, tiny_gguf, tiny_hf_dir, prompt, tmp_path):
    """On the GGUF (llama.cpp) and on the HF weights (transformers): the same guide, a valid answer."""
    question = tmp_path / "question.txt"
    question.write_text(prompt[1]["content"], encoding="utf-8")
    model, extra = (tiny_gguf, ["--threads", "1"]) if backend == "llamacpp" else (tiny_hf_dir, ["--backend", "hf"])
    proc = _ask(str(model), "--task", "regime_classification", "--prompt-file", str(question), *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert schema_errors("regime_classification", json.loads(proc.stdout)) == []
    assert f"loading {model} ({backend})" in proc.stderr and "loaded in " in proc.stderr


def test_ask_names_what_failed(tiny_gguf, tmp_path):
    proc = _ask(str(tmp_path / "none.gguf"), "--task", "what_if", "--prompt-file", str(tmp_path / "q.txt"))
    assert proc.returncode == 2 and "q.txt: cannot read it" in proc.stderr
    (tmp_path / "q.txt").write_text("질문", encoding="utf-8")
    proc = _ask(str(tmp_path / "none.gguf"), "--task", "what_if", "--prompt-file", str(tmp_path / "q.txt"))
    assert proc.returncode == 2 and "none.gguf: GGUF not found" in proc.stderr
    proc = _ask(str(tiny_gguf), "--task", "what_if", "--prompt-file", str(tmp_path / "q.txt"), "--threads", "1",
                "--max-new-tokens", "5", "--no-progress")
    assert proc.returncode == 2 and "reply is not JSON" in proc.stderr and "raise it" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert _ask("--help").returncode == 0
