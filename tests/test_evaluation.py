"""Evaluation: the JSON extractor, every metric on hand-written replies with known answers, robustness on
generated garbage, the three backends (Ollama against a local fake server, llama.cpp on a GGUF the export
chain builds, HF + PEFT on a tiny model) and the evaluate/compare stages end to end.
"""
from __future__ import annotations

import copy
import datetime as dt
import http.server
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kospi_ft import params, presets
from kospi_ft.errors import DataValidationError, ParamsError, PipelineError
from kospi_ft.evaluation.backends import OllamaBackend
from kospi_ft.evaluation.compare import HEADLINE, comparison, deltas, plot_rows
from kospi_ft.evaluation.config import EvaluateParams, ModelLocator
from kospi_ft.evaluation.metrics import aggregate, flatten, rationale_text, score_reply, score_values
from kospi_ft.evaluation.parsing import Method, extract_json
from kospi_ft.evaluation.runner import EvalRecord, evaluate, load_eval_set, select
from kospi_ft.evaluation.text import RougeL, hangul_share, tokenize_mixed
from kospi_ft.prompts import QUANT_SYSTEM_PROMPT
from kospi_ft.schema import TaskType, schema_errors
from model_fixtures import FakeOllama as _FakeOllama
from model_fixtures import build_tiny_gguf, build_tiny_hf, fake_ollama

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
TASK = "full_analysis"


@pytest.fixture(scope="module")
def answer() -> dict:
    """A hand-written full_analysis answer that is schema-valid and breaks no strategy rule (MILD_BULL)."""
    return json.loads((FIXTURES / "full_analysis_valid.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference(answer) -> str:
    return json.dumps(answer, ensure_ascii=False)


def _english(answer: dict) -> dict:
    out = copy.deepcopy(answer)
    out["summary"] = "Mild bull market: buy large-cap semiconductors selectively and stay diversified."
    for p in out["positions"]:
        p["rationale"] = "Memory cycle recovery and steady foreign buying support a larger weight."
    return out


# ---- parsing ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, method", [
    ('{"a": 1}', Method.DIRECT),
    ('  {"a": 1}\n', Method.DIRECT),
    ('```json\n{"a": 1}\n```', Method.FENCED),
    ('```\n{"a": 1}\n```', Method.FENCED),
    ('분석 결과입니다:\n```JSON\n{"a": 1}\n```\n참고하세요.', Method.FENCED),
    ('```json\n```json\n{"a": 1}\n```\n```', Method.FENCED),          # nested fences
    ('```json\n{"a": 1}', Method.FENCED),                              # fence never closed
    ('Here is my answer: {"a": 1} -- hope it helps', Method.EMBEDDED),
    ('use {curly} braces, then {"a": 1}', Method.EMBEDDED),            # balanced prose braces are skipped
])
def test_extract_json_finds_the_object(text, method):
    got = extract_json(text)
    assert got.data == {"a": 1}
    assert got.method is method
    assert got.unwrapped is (method is not Method.DIRECT)


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("   \n", "empty"),
    ('{"a": {"b": 2}', "Expecting"),              # truncated: the inner object is not passed off as the answer
    ("[1, 2]", "list"),
    ('{"a": NaN}', "NaN"),                        # not JSON
    ('{"a": Infinity}', "Infinity"),
    ('{"score": 1e400}', "out of range"),         # overflows to inf: would pass a range check against infinity
    ('{"score": -1e400}', "out of range"),
    ('{"a": ' + "9" * 5000 + "}", "digits"),      # Python's int-conversion limit
    ("[" * 50_000, "Recursion"),
    ("no json here", "Expecting"),
    ("{'a': 1}", "Expecting"),                    # Python dict, not JSON
])
def test_extract_json_rejects_non_objects(text, why):
    got = extract_json(text)
    assert got.data is None and got.method is Method.NONE
    assert why in got.error


def test_extract_json_non_text():
    assert extract_json(None).data is None
    assert extract_json(b'{"a": 1}').method is Method.NONE


# ---- text measures ------------------------------------------------------------------------------------------

def test_hangul_share_counts_letters_only():
    assert hangul_share("삼성전자 abc") == pytest.approx(4 / 7)
    assert hangul_share("PER 12.3배, PBR 0.9배!") == pytest.approx(2 / 8)
    assert hangul_share("12.5% -> 0.3") == 0.0
    assert hangul_share("") == 0.0
    assert hangul_share("ㅋㅋ 한글") == 1.0  # compatibility jamo count as Hangul


def test_rouge_l_sees_korean():
    from rouge_score import rouge_scorer

    # Why the custom tokenizer exists: rouge-score's default drops every Hangul character.
    default = rouge_scorer.RougeScorer(["rougeL"]).score("삼성전자 매수", "삼성전자 매도")["rougeL"]
    assert default.fmeasure == 0.0
    assert tokenize_mixed("삼성전자 BUY 0.3") == ["삼", "성", "전", "자", "buy", "0", "3"]
    rouge = RougeL()
    # 6 character tokens each, LCS 5 -> P = R = F = 5/6.
    assert rouge.f1("삼성전자 매수", "삼성전자 매도") == pytest.approx(5 / 6)
    assert rouge.f1("반도체 비중 확대", "반도체 비중 확대") == 1.0
    assert rouge.f1("반도체", "bank") == 0.0


# ---- per-reply metrics on hand-written replies -------------------------------------------------------------

def test_valid_reply_passes_everything(answer, reference):
    s = score_reply(TASK, reference, reference, rouge=RougeL())
    assert s.json_method is Method.DIRECT and s.schema_valid and not s.hallucination
    assert s.signal_ok is True and s.korean_ok and s.strategy_ok and s.violation is False
    assert s.rouge_l == 1.0
    assert s.hangul_share > 0.9


def test_fenced_reply_is_valid_but_counted_as_unwrapped(reference):
    s = score_reply(TASK, f"다음과 같이 분석했습니다.\n```json\n{reference}\n```", reference)
    assert s.json_method is Method.FENCED and s.schema_valid and s.strategy_ok


def test_schema_broken_reply(answer, reference):
    broken = {**answer, "exposure": "high"}
    s = score_reply(TASK, json.dumps(broken, ensure_ascii=False), reference)
    assert s.json_valid and not s.schema_valid
    assert not s.strategy_ok and s.violation is None  # rules are only checked on schema-valid answers
    assert any(e.startswith("exposure:") for e in s.errors)
    assert s.signal_ok is True and s.korean_ok  # the rest of the answer is still fine


def test_a_score_that_parses_to_infinity_is_not_a_valid_reply(answer, reference):
    big = copy.deepcopy(answer)
    big["positions"][1]["score"] = 0.5
    text = json.dumps(big, ensure_ascii=False).replace('"score": 0.5', '"score": 1e400')
    s = score_reply(TASK, text, reference)
    assert not s.json_valid and not s.schema_valid and s.signal_ok is False
    assert any("out of range" in e for e in s.errors)


def test_out_of_range_score(answer, reference):
    bad = copy.deepcopy(answer)
    bad["positions"][1]["score"] = 1.5
    s = score_reply(TASK, json.dumps(bad, ensure_ascii=False), reference)
    assert s.signal_ok is False and not s.schema_valid
    for value in (True, "0.5", None, 1e400, -1.0000001):
        bad["positions"][1]["score"] = value
        text = json.dumps(bad, ensure_ascii=False).replace("Infinity", "1e400")
        assert score_reply(TASK, text, reference).signal_ok is False, value
    bad["positions"][1]["score"] = -1
    assert score_reply(TASK, json.dumps(bad, ensure_ascii=False), reference).signal_ok is True


def test_reply_without_scores_fails_signal_only_when_scores_are_expected(answer, reference):
    no_positions = {k: v for k, v in answer.items() if k not in ("positions",)}
    assert score_reply(TASK, json.dumps(no_positions, ensure_ascii=False), reference).signal_ok is False
    # regime_classification answers carry no score: neither side has one, so the reply is not counted.
    ref_without = json.dumps(no_positions, ensure_ascii=False)
    assert score_reply("regime_classification", ref_without, ref_without).signal_ok is None


def test_english_only_rationale(answer, reference):
    s = score_reply(TASK, json.dumps(_english(answer)), reference)
    assert s.hangul_share == 0.0 and not s.korean_ok
    assert not s.schema_valid  # the schema itself requires Korean text
    assert "Memory cycle" in rationale_text(_english(answer))


def test_exposure_outside_band(answer, reference):
    s = score_reply(TASK, json.dumps({**answer, "exposure": 0.95}, ensure_ascii=False), reference)
    assert s.schema_valid and s.violation is True and not s.strategy_ok
    assert any("outside the MILD_BULL band" in e for e in s.errors)


def test_leverage_over_cap(answer, reference):
    over = copy.deepcopy(answer)
    over["risk"]["leverage"] = 1.4  # MILD_BULL caps leverage at 1.2
    s = score_reply(TASK, json.dumps(over, ensure_ascii=False), reference)
    assert s.schema_valid and not s.strategy_ok
    assert any(e.startswith("risk.leverage") for e in s.errors)


def test_hallucinated_ticker(answer, reference):
    fake = copy.deepcopy(answer)
    fake["positions"][0]["ticker"] = "999999"
    s = score_reply(TASK, json.dumps(fake, ensure_ascii=False), reference)
    assert s.hallucination and not s.schema_valid


def test_score_values_walks_nested_lists(answer):
    assert sorted(score_values(answer)) == [0.1, 0.6]
    assert score_values({"a": [{"score": 2}, {"b": {"Score": "x"}}]}) == [2, "x"]


def test_generator_answers_score_perfectly():
    """The contract with the synthetic generator: its own reference answers pass every metric."""
    from kospi_ft.data.synthetic import generate

    rows = generate(36, seed=5, split="eval")
    records = select([EvalRecord(r["task"], r["messages"][:2], r["messages"][2]["content"]) for r in rows], 12)
    assert sorted(r.task for r in records) == sorted(t.value for t in TaskType)  # one of each task
    scores = [score_reply(r.task, r.reference, r.reference, rouge=RougeL()) for r in records]
    m = aggregate(scores)
    for key in ("json.valid_rate", "json.direct_rate", "schema.compliance_rate", "signal.in_range_rate",
                "korean.rationale_rate", "strategy.consistency_rate", "rouge.l_f1_mean"):
        assert flatten(m)[key] == 1.0, key
    assert m["signal"]["n_scored"] > 0 and m["schema"]["hallucination_rate"] == 0.0


# ---- aggregation ----------------------------------------------------------------------------------------------

def test_aggregate_known_rates(answer, reference):
    bad_score = copy.deepcopy(answer)
    bad_score["positions"][1]["score"] = 1.5
    replies = [
        reference,                                                            # all pass
        f"```json\n{reference}\n```",                                         # fenced, all pass
        json.dumps({**answer, "exposure": "high"}, ensure_ascii=False),      # schema broken
        json.dumps(bad_score, ensure_ascii=False),                            # score out of range
        json.dumps(_english(answer)),                                         # English rationale
        json.dumps({**answer, "exposure": 0.95}, ensure_ascii=False),        # outside the regime band
    ]
    scores = [score_reply(TASK, r, reference, latency_s=i + 1, completion_tokens=10) for i, r in enumerate(replies)]
    m = aggregate(scores)
    assert m["n_samples"] == 6
    assert m["json"] == {"valid_rate": 1.0, "direct_rate": round(5 / 6, 6), "unwrapped_rate": round(1 / 6, 6),
                         "fenced_count": 1, "embedded_count": 0}
    assert m["schema"]["compliance_rate"] == 0.5
    assert m["signal"] == {"in_range_rate": round(5 / 6, 6), "n_scored": 6}
    assert m["korean"]["rationale_rate"] == round(5 / 6, 6)
    assert m["strategy"] == {"consistency_rate": round(2 / 6, 6), "violation_rate_of_valid": round(1 / 3, 6)}
    assert m["latency"] == {"p50_s": 3.5, "p95_s": 5.75, "mean_s": 3.5}  # numpy linear percentiles of 1..6
    assert m["throughput"]["gen_tokens_per_s"] == round(60 / 21, 3)
    assert m["rouge"]["l_f1_mean"] is None  # ROUGE off
    assert m["per_task"][TASK]["n"] == 6 and m["per_task"][TASK]["schema_compliance_rate"] == 0.5
    assert m["per_task"]["what_if"]["n"] == 0 and m["per_task"]["what_if"]["json_valid_rate"] is None


def test_aggregate_keys_are_identical_for_any_input(answer, reference):
    full = aggregate([score_reply(TASK, reference, reference, rouge=RougeL())])
    empty = aggregate([])
    assert flatten(full).keys() == flatten(empty).keys()
    assert set(full["per_task"]) == {t.value for t in TaskType}
    json.dumps(empty, allow_nan=False)  # nulls, never NaN


# ---- robustness: generated replies never crash the scorers -----------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**40, max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_odd_text = st.text(alphabet=st.characters(codec=None), max_size=300)  # includes lone surrogates
_bytes_text = st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))


@st.composite
def _mutated_answer(draw, base: dict) -> str:
    """The valid answer broken in the ways models break it: wrong types, huge numbers, truncation, wrappers."""
    data = copy.deepcopy(base)
    nodes = [data, data["risk"], *data["positions"], *data["valuation"]]  # taken before any of them is replaced
    for _ in range(draw(st.integers(0, 3))):
        node = draw(st.sampled_from(nodes))
        key = draw(st.sampled_from(sorted(node)) | st.text(max_size=6))
        node[key] = draw(_json_values | st.sampled_from([10**400, -(10**400), 1e308, -0.0, "１.５", "\ud800"]))
    text = json.dumps(data, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    if draw(st.booleans()):  # a score with up to 6,000 digits (past Python's 4,300-digit int limit), or 1e999
        text = text.replace("0.6", draw(st.sampled_from(["1e999", "-1e999"]) | st.integers(1, 6000).map("9".__mul__)),
                            1)
    wrapper = draw(st.sampled_from(["{}", "```json\n{}\n```", "```\n```json\n{}\n```\n```", "답변: {} 끝",
                                    "{}```", "<|im_end|>{}", "{}{}"]))
    return wrapper.replace("{}", text, 1).replace("{}", draw(_odd_text), 1)


def test_scorers_never_crash_on_1000_generated_replies(answer, reference):
    seen: list[str] = []

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(reply=st.one_of(_mutated_answer(answer), _odd_text, _bytes_text, st.just(""),
                           st.sampled_from(["[" * 5000, "{" * 5000, '{"score": 1e999}', "```" * 50])),
           task=st.sampled_from([t.value for t in TaskType]))
    def check(reply, task):
        seen.append(reply)
        s = score_reply(task, reply, reference, latency_s=0.5, completion_tokens=3)
        assert s.json_valid == (extract_json(reply).data is not None)
        assert 0.0 <= s.hangul_share <= 1.0
        assert not (s.strategy_ok and not s.schema_valid)
        m = aggregate([s])
        json.dumps(m, allow_nan=False)

    check()
    assert len(seen) >= 1000


def test_rouge_never_crashes_on_1000_generated_pairs():
    rouge = RougeL()
    seen = []

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(reference=_odd_text | _bytes_text, prediction=_odd_text | _bytes_text)
    def check(reference, prediction):
        seen.append(prediction)
        f = rouge.f1(reference, prediction)
        assert 0.0 <= f <= 1.0 and not math.isnan(f)

    check()
    assert len(seen) >= 1000


# ---- eval set, sampling, comparison -------------------------------------------------------------------------

def _records(reference: str, tasks: list[str]) -> list[dict]:
    return [{"messages": [{"role": "system", "content": QUANT_SYSTEM_PROMPT},
                          {"role": "user", "content": f"질문 {i}: 오늘 시장을 분석해 주세요."},
                          {"role": "assistant", "content": reference}],
             "task": task, "meta": {"i": i}} for i, task in enumerate(tasks)]


def _simulated_store(directory: Path):
    """A simulated 2024 market's snapshot store, written where the snapshots stage writes it."""
    import datetime as dt

    from kospi_ft.data.simulate import SimConfig, simulate
    from kospi_ft.data.snapshot import MarketSnapshotStore, compute_features

    stocks, market = compute_features(simulate(SimConfig(dt.date(2023, 10, 1), dt.date(2024, 12, 31))),
                                      dt.date(2024, 1, 1))
    store = MarketSnapshotStore(market, stocks)
    store.save(directory)
    return store


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_select_round_robins_over_tasks():
    recs = [EvalRecord(t, [], str(i)) for i, t in enumerate(["what_if", "what_if", "full_analysis", "fx_impact"])]
    assert [r.reference for r in select(recs, 3)] == ["2", "3", "0"]  # TaskType order, then file order
    assert [r.reference for r in select(recs, 4)] == ["0", "1", "2", "3"]
    assert select(recs, None) == recs


def test_load_eval_set_names_the_bad_line(tmp_path, reference):
    path = _write_jsonl(tmp_path / "eval.jsonl", _records(reference, ["full_analysis", "no_such_task"]))
    with pytest.raises(DataValidationError, match=r"eval.jsonl:2: field `task`"):
        load_eval_set(path)
    path.write_text(json.dumps({"task": "what_if", "messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataValidationError, match="messages"):
        load_eval_set(path)
    with pytest.raises(DataValidationError, match="not found"):
        load_eval_set(tmp_path / "missing.jsonl")


def test_deltas_and_plot_rows():
    a = {"json": {"valid_rate": 0.25}, "rouge": {"l_f1_mean": None}, "per_task": {"x": {"n": 1}}}
    b = {"json": {"valid_rate": 1.0}, "rouge": {"l_f1_mean": 0.5}, "per_task": {"x": {"n": 2}}}
    assert deltas(a, b) == {"json": {"valid_rate": 0.75}, "rouge": {"l_f1_mean": None}}
    rows = plot_rows({"base": a, "stage3": b})
    assert [r["model"] for r in rows] == ["base", "stage3"]
    assert rows[1]["json_valid_rate"] == 1.0 and rows[0]["rouge_l_f1"] is None
    assert set(rows[0]) == {"model", *HEADLINE}
    with pytest.raises(DataValidationError, match="stage2"):
        comparison({"base": a}, [("stage2", "base")])


def test_shipped_params_load_in_both_presets(project_root):
    raw = params.read_raw(project_root / "params.yaml")
    cfg = params.load("evaluate", EvaluateParams, raw=raw)
    assert cfg.backend == "llamacpp" and set(cfg.models) == {"base", "stage2", "stage3"}
    real = params.load("evaluate", EvaluateParams, raw=presets.applied(raw, "real"))
    assert real.n_samples == 50 and real.max_new_tokens > cfg.max_new_tokens
    with pytest.raises(ParamsError, match="evaluate.backend"):
        params.load("evaluate", EvaluateParams, raw=raw, overrides={"backend": "vllm"})
    with pytest.raises(ParamsError, match="compare"):
        params.load("evaluate", EvaluateParams, raw=raw, overrides={"compare": [["stage1", "stage3"]]})


def test_model_locator_resolves_names(tmp_path):
    loc = ModelLocator(gguf_dir=tmp_path / "gguf", models_dir=tmp_path, quant="Q4_K_M",
                       ollama_prefix="qwen2.5-kospi-ft", hf_base="models/base")
    assert loc.gguf("stage3") == tmp_path / "gguf" / "stage3" / "model-Q4_K_M.gguf"
    assert loc.gguf("/x/y.gguf") == Path("/x/y.gguf")
    assert loc.ollama_name("stage2") == "qwen2.5-kospi-ft-s2"
    assert loc.ollama_name("qwen2.5:32b") == "qwen2.5:32b"
    assert loc.hf("base") == ("models/base", None)
    # A pipeline adapter runs on model.name, like base, whatever repo training recorded (unsloth: its 4-bit mirror).
    (tmp_path / "stage2").mkdir()
    (tmp_path / "stage2" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "unsloth/qwen2.5-7b-instruct-unsloth-bnb-4bit"}))
    assert loc.hf("stage2") == ("models/base", tmp_path / "stage2")
    other = tmp_path / "elsewhere" / "adapter"
    other.mkdir(parents=True)
    (other / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "b"}))
    assert loc.hf(str(other)) == ("b", other)  # an adapter from outside the pipeline: the base it names


# ---- Ollama backend against a local fake server ---------------------------------------------------------------

@pytest.fixture
def ollama_server(reference):
    with fake_ollama({
        "qwen2.5-kospi-ft-base": "I think the market is fine.",
        "qwen2.5-kospi-ft-s2": f"```json\n{reference}\n```",
        "qwen2.5-kospi-ft-s3": reference,
    }) as server:
        yield server


def test_ollama_backend_request_and_response(ollama_server):
    url = f"http://127.0.0.1:{ollama_server.server_address[1]}"
    backend = OllamaBackend("qwen2.5-kospi-ft-s2", base_url=url + "/", seed=7)
    messages = [{"role": "system", "content": "시스템"}, {"role": "user", "content": "질문"}]
    gen = backend.generate(messages, 64)
    path, body = ollama_server.requests[-1]
    assert path == "/api/chat"
    assert body == {"model": "qwen2.5-kospi-ft-s2", "messages": messages, "stream": False,
                    "options": {"temperature": 0, "seed": 7, "num_predict": 64}}
    assert gen.text.startswith("```json") and gen.prompt_tokens == 21 and gen.completion_tokens == 7
    assert gen.latency_s > 0


def test_ollama_backend_errors(ollama_server):
    url = f"http://127.0.0.1:{ollama_server.server_address[1]}"
    with pytest.raises(PipelineError, match=r"HTTP 404: model 'nope' not found.*register"):
        OllamaBackend("nope", base_url=url).generate([{"role": "user", "content": "x"}], 8)
    closed = http.server.HTTPServer(("127.0.0.1", 0), _FakeOllama)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens on this port any more
    with pytest.raises(PipelineError, match=rf"not reachable at http://127.0.0.1:{port}.*ollama_url"):
        OllamaBackend("x", base_url=f"http://127.0.0.1:{port}")


def _random_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter far from zero on `base_dir`, saved like a training stage's (adapter_config names the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(out)
    return out


def test_evaluate_and_compare_stages_end_to_end(tmp_path, monkeypatch, project_root, reference, ollama_server,
                                                 tiny_hf, caplog):
    """Both stages through their CLIs on a temp project: three models' replies served by the fake Ollama, their
    likelihood metrics computed on HF weights (a tiny base and two adapters) for the held-out answers and pairs."""
    import numpy as np

    from kospi_ft.data.dpo_pairs import reject
    from kospi_ft.data.synthetic import Draws
    from stages import compare as compare_stage
    from stages import evaluate as evaluate_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text(encoding="utf-8"))
    url = f"http://127.0.0.1:{ollama_server.server_address[1]}"
    params.update("params.yaml", "evaluate.backend", "ollama")
    params.update("params.yaml", "evaluate.ollama_url", url)
    paths = params.load_paths("params.yaml")
    tasks = [t.value for t in TaskType][:3] * 2
    records = _records(reference, tasks)
    # Every record drawn from a real snapshot of a simulated 2024, 25 trading days apart; the first and third carry
    # the reference answer's regime, the others another one.
    store = _simulated_store(paths.snapshots_dir)
    days, answer = store.dates, json.loads(reference)
    other = next(r for r in ("BEAR", "MILD_BULL") if r != answer["regime"])
    for i, record in enumerate(records):
        record["meta"] = {"date": days[30 + 25 * i].isoformat(), "source": "real",
                          "regime": answer["regime"] if i in (0, 2) else other}
    _write_jsonl(paths.eval_set, records)
    paths.models_dir.mkdir()
    (paths.models_dir / "base").symlink_to(tiny_hf[0])  # model.name: models/base
    for seed, name in enumerate(("stage2", "stage3")):
        _random_adapter(tiny_hf[0], paths.models_dir / name, seed)
    rng = Draws(np.random.default_rng(0))
    _write_jsonl(paths.eval_pairs, [
        {"prompt": records[0]["messages"][:2], "chosen": [{"role": "assistant", "content": reference}],
         "rejected": [{"role": "assistant", "content": reject(reference, TaskType.FULL_ANALYSIS, kind, rng)[0]}],
         "rejection_type": kind, "task": "full_analysis"} for kind in ("schema_violation", "hallucination")])

    for name in ("base", "stage2", "stage3"):
        evaluate_stage.main(["--name", name, "--n-samples", "4", "--no-progress"])
    files = {n: json.loads((paths.eval_dir / f"{n}.json").read_text()) for n in ("base", "stage2", "stage3")}
    assert len({tuple(flatten(m)) for m in files.values()}) == 1  # identical keys, identical order
    assert files["base"]["n_samples"] == 4 and files["base"]["json"]["valid_rate"] == 0.0
    assert files["stage2"]["json"]["fenced_count"] == 4 and files["stage3"]["json"]["direct_rate"] == 1.0
    # 4 records round-robin over full_analysis, regime_classification, overnight_gap -> 2 are full_analysis, the
    # only task the (full_analysis) reply is valid for.
    assert files["stage3"]["schema"]["compliance_rate"] == 0.5
    assert files["stage3"]["per_task"]["full_analysis"] == {**files["stage3"]["per_task"]["full_analysis"],
                                                            "n": 2, "schema_compliance_rate": 1.0}
    assert files["stage3"]["per_task"]["overnight_gap"]["schema_compliance_rate"] == 0.0
    sent = [b for p, b in ollama_server.requests if p == "/api/chat"]
    cfg = params.load("evaluate", EvaluateParams, path="params.yaml")
    free = [b for b in sent if "format" not in b]
    assert len(free) == 12 and all(b["options"]["num_predict"] == cfg.max_new_tokens for b in free)
    # The guided pass: the first guided_samples records again, each with its task's JSON schema as `format`.
    guided = [b for b in sent if "format" in b]
    assert len(guided) == 3 * cfg.guided_samples and cfg.guided_samples == 2
    assert [b["format"]["title"] for b in guided[:2]] == ["full_analysis", "regime_classification"]
    assert all(b["options"]["num_predict"] == cfg.guided_max_new_tokens for b in guided)
    assert files["stage3"]["guided"]["n_samples"] == 2 and files["stage3"]["guided"]["json"]["direct_rate"] == 1.0
    assert files["stage3"]["guided"]["per_task"]["full_analysis"]["schema_compliance_rate"] == 1.0
    # Likelihood: every eval record (not only the n_samples answered), on each model's own weights.
    nll = {n: m["likelihood"]["answer_nll"] for n, m in files.items()}
    assert all(m["likelihood"]["n_records"] == 6 and m["preference"]["n_pairs"] == 2 for m in files.values())
    assert nll["base"] == pytest.approx(math.log(151_936), abs=0.5) and len(set(nll.values())) == 3
    assert files["base"]["preference"]["per_type"]["schema_violation"]["n"] == 1
    assert files["base"]["per_task"]["full_analysis"]["answer_nll"] is not None
    # Trading: the reference answer (stage3's reply) reads the regime right on the two dates of its regime and
    # holds the rule's exposure; base's replies do not parse, so it holds cash.
    trade = {n: m["trading"] for n, m in files.items()}
    assert trade["stage3"]["regime"]["accuracy"] == 0.5 and trade["base"]["regime"]["accuracy"] == 0.0
    assert trade["stage3"]["timing"] == trade["stage3"]["baselines"]["rule"]["timing"]
    assert trade["stage3"]["timing"]["n_dates"] == 4 and trade["base"]["timing"]["mean_return"] == 0.0
    # The regime pass: regime_classification on 3 of the store's eval-month days (August 2024 here), guided.
    ollama_server.requests.clear()
    evaluate_stage.main(["--name", "stage3", "--n-samples", "4", "--guided-samples", "0", "--regime-dates", "3",
                         "--no-likelihood", "--output", str(tmp_path / "regime_pass.json"), "--no-progress"])
    rp = json.loads((tmp_path / "regime_pass.json").read_text())["regime_pass"]
    sent = [b for p, b in ollama_server.requests if p == "/api/chat"]
    assert [b.get("format", {}).get("title") for b in sent] == [None] * 4 + ["regime_classification"] * 3
    assert rp["n_samples"] == 3 and rp["regime"]["n"] == 3 and rp["excluded"] == 0
    assert set(rp) >= {"regime", "timing", "selection", "baselines", "schema_compliance_rate"}
    assert rp["timing"]["n_dates"] + rp["dropped_dates"] == 3
    evaluate_stage.main(["--trading-dates", "--n-samples", "4"])
    dates = paths.trading_dates.read_text().splitlines()
    assert dates[0] == "date,horizon_days,true_regime,market_forward_return" and len(dates) == 5
    market = [float(line.split(",")[3]) for line in dates[1:]]
    assert trade["stage3"]["timing"]["mean_return"] == pytest.approx(answer["exposure"] * sum(market) / 4, abs=1e-5)
    assert trade["base"]["baselines"]["buy_and_hold"]["timing"]["mean_return"] == pytest.approx(sum(market) / 4,
                                                                                                abs=1e-5)
    confusion = json.loads((paths.eval_dir / "stage3" / "regime_confusion.json").read_text())
    assert sorted(r["actual"] == r["predicted"] for r in confusion) == [False, False, True, True]
    equity = json.loads((paths.eval_dir / "stage3" / "equity.json").read_text())
    assert {r["strategy"] for r in equity} == {"model", "buy_and_hold", "rule", "random"} and len(equity) == 16

    compare_stage.main([])
    cmp = json.loads(paths.eval_compare.read_text())
    assert set(cmp) == {"stage2_to_stage3", "base_to_stage3"}
    assert cmp["base_to_stage3"]["json"]["valid_rate"] == 1.0
    assert cmp["stage2_to_stage3"]["json"]["direct_rate"] == 1.0
    assert cmp["stage2_to_stage3"]["schema"]["compliance_rate"] == 0.0
    assert cmp["stage2_to_stage3"]["likelihood"]["answer_nll"] == pytest.approx(nll["stage3"] - nll["stage2"],
                                                                                abs=1e-5)
    rows = json.loads(paths.eval_plot.read_text())
    assert [r["model"] for r in rows] == ["base", "stage2", "stage3"]
    assert [r["answer_nll"] for r in rows] == [nll[n] for n in ("base", "stage2", "stage3")]

    # The spec's form: two models and their deltas in one file. A model only Ollama has has no HF weights: its
    # likelihood keys are null (asked for with --likelihood, that is an error before any model runs).
    spec_form = ["--base-model", "stage2", "--ft-model", "qwen2.5-kospi-ft-s3", "--n-samples", "2",
                 "--output", "out.json", "--predictions", "pred.jsonl", "--no-progress"]
    sent_before = len(ollama_server.requests)
    with pytest.raises(PipelineError, match="qwen2.5-kospi-ft-s3: --likelihood needs the model's HF weights"):
        evaluate_stage.main([*spec_form, "--likelihood"])
    assert len(ollama_server.requests) == sent_before
    with caplog.at_level("WARNING"):
        evaluate_stage.main(spec_form)
    assert "qwen2.5-kospi-ft-s3: no HF weights" in caplog.text
    report = json.loads(Path("out.json").read_text())
    assert report["base"]["model"] == "stage2" and report["ft"]["model"] == "qwen2.5-kospi-ft-s3"
    assert report["delta"]["json"]["direct_rate"] == 1.0
    assert report["base"]["metrics"]["likelihood"] == files["stage2"]["likelihood"] | {
        "seconds": report["base"]["metrics"]["likelihood"]["seconds"]}
    assert report["ft"]["metrics"]["likelihood"]["answer_nll"] is None  # same keys, nothing measured
    assert list(flatten(report["ft"]["metrics"])) == list(flatten(files["stage3"]))
    assert len(Path("pred.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ParamsError, match="--name"):
        evaluate_stage.main(["--name", "base", "--ft-model", "stage3"])


# ---- llama.cpp on a GGUF built by the export chain -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_hf) -> Path:
    return build_tiny_gguf(tiny_hf[0], tmp_path_factory.mktemp("gguf"))


def test_llama_session_decodes_the_system_prompt_once(tiny_gguf, tiny_hf, reference):
    """What the llama.cpp process runs: prompts rendered with the GGUF's template, the system prompt decoded once,
    alone, and every prompt starting from its cache, so a reply does not depend on the prompt before it."""
    from kospi_ft.evaluation.llama_session import GGUF_TEMPLATE_FORMAT, LlamaSession

    session = LlamaSession(tiny_gguf, seed=0, n_ctx=4096, n_threads=1)
    decoded: list[int] = []
    real_eval = session._llm.eval
    session._llm.eval = lambda tokens: (decoded.append(len(tokens)), real_eval(tokens))[1]
    try:
        assert session._llm.chat_format == GGUF_TEMPLATE_FORMAT
        records = [EvalRecord(r["task"], r["messages"][:2], r["messages"][2]["content"])
                   for r in _records(reference, ["full_analysis", "what_if"])]
        first = session.generate(records[0].prompt, 12)
        # The prompt was rendered with the GGUF's template: same token count as the training tokenizer's.
        expected = tiny_hf[1].apply_chat_template(records[0].prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]
        assert first["prompt_tokens"] == len(expected)
        assert 0 < first["completion_tokens"] <= 12 and first["latency_s"] > 0
        # The system prompt is decoded once, alone: it is the prompt's first tokens, as training renders them.
        prefix = session.prefix_tokens
        system_only = tiny_hf[1].apply_chat_template(records[0].prompt[:1], tokenize=True, return_dict=True)
        assert prefix == system_only["input_ids"] == expected[:len(prefix)] and len(prefix) > 1000
        assert decoded[0] == len(prefix) == first["prefix_tokens"] and first["prefix_s"] > 0
        # The next prompt decodes only what follows the system prompt.
        decoded.clear()
        second = session.generate(records[1].prompt, 12)
        assert decoded[0] == second["prompt_tokens"] - len(prefix) and second["prefix_tokens"] == 0
        again = session.generate(records[0].prompt, 12)
        assert (again["text"], again["completion_tokens"]) == (first["text"], first["completion_tokens"])
    finally:
        session.close()


def test_llamacpp_backend_runs_llama_cpp_in_a_process_of_its_own(tiny_gguf, reference):
    """The cause of the evaluate stage's crash on the CUDA build, as far as a CPU shows it: the stage's process
    holds numpy, pyarrow and torch (the data modules, the likelihood metrics) before any model runs, and llama.cpp's
    CUDA libraries crash a process that loaded those first. The backend's llama.cpp process loads llama.cpp
    before any of them and never loads pyarrow or torch, whatever the stage's process holds; its replies are the
    in-process session's, and it ends with close()."""
    import os

    import pyarrow  # noqa: F401  (what the stage's process holds)
    import torch  # noqa: F401

    from kospi_ft.evaluation.backends import LlamaCppBackend
    from kospi_ft.evaluation.llama_session import LlamaSession

    records = [EvalRecord(r["task"], r["messages"][:2], r["messages"][2]["content"])
               for r in _records(reference, ["full_analysis", "what_if"])]
    backend = LlamaCppBackend(tiny_gguf, seed=0, n_ctx=4096, n_threads=1)
    try:
        assert backend.worker["pid"] != os.getpid()
        assert backend.worker["preloaded"] == []                    # llama.cpp's libraries came first
        assert not {"pyarrow", "torch", "pandas"} & set(backend.worker["modules"])
        assert backend.worker["gpu_offload"] is False               # this CPU build
        result = evaluate(backend, records, max_new_tokens=12, rouge=True, progress=False)
        assert backend.last["prefix_tokens"] == 0                   # the second prompt reused the cache
    finally:
        backend.close()
    assert backend._session.returncode == 0
    session = LlamaSession(tiny_gguf, seed=0, n_ctx=4096, n_threads=1)
    try:
        assert result.replies == [session.generate(r.prompt, 12)["text"] for r in records]
    finally:
        session.close()
    m = result.metrics
    assert m["n_samples"] == 2 and m["throughput"]["gen_tokens_per_s"] > 0, m
    assert m["per_task"]["what_if"]["n"] == 1 and m["rouge"]["l_f1_mean"] is not None


def test_parallel_replies_are_the_one_at_a_time_replies(tiny_gguf, reference):
    """evaluate.parallel > 1: up to that many replies decoded at once in one batch, a finished reply's slot taking
    the next record, the shared system prompt decoded once. On the CPU build every reply, free and guided, is the
    one-at-a-time session's, token for token; the progress bar counts every reply, and the pass's wall time is
    recorded beside the per-reply latencies."""
    from kospi_ft.evaluation.backends import LlamaCppBackend
    from kospi_ft.evaluation.llama_session import LlamaSession
    from kospi_ft.json_schema import task_schema

    tasks = ["full_analysis", "what_if", "regime_classification", "regime_classification", "overnight_gap"]
    records = [EvalRecord(r["task"], r["messages"][:2], r["messages"][2]["content"])
               for r in _records(reference, tasks)]
    # Different prompt lengths, so replies start and end at different steps of the batch.
    records = [EvalRecord(r.task, [r.prompt[0], {"role": "user", "content": r.prompt[1]["content"] * (1 + i)}],
                          r.reference) for i, r in enumerate(records)]
    backend = LlamaCppBackend(tiny_gguf, seed=0, n_ctx=4096, n_threads=1, parallel=3)
    try:
        free = evaluate(backend, records, max_new_tokens=16, progress=False)
        guided = evaluate(backend, records[2:4], max_new_tokens=5000, guided=True, progress=False)
    finally:
        backend.close()
    session = LlamaSession(tiny_gguf, seed=0, n_ctx=4096, n_threads=1)
    try:
        one = [session.generate(r.prompt, 16) for r in records]
        one_guided = [session.generate(r.prompt, 5000, schema=task_schema(r.task)) for r in records[2:4]]
        many = session.generate_many([{"messages": r.prompt} for r in records], 16, parallel=2)
    finally:
        session.close()
    assert free.replies == [g["text"] for g in one] == [g["text"] for g in many]
    assert [s.completion_tokens for s in free.scores] == [g["completion_tokens"] for g in one]
    assert [g["prompt_tokens"] for g in many] == [g["prompt_tokens"] for g in one]
    assert many[0]["prefix_tokens"] == len(session.prefix_tokens) > 1000
    assert guided.replies == [g["text"] for g in one_guided]
    assert guided.metrics["json"]["valid_rate"] == 1.0, guided.replies
    throughput = free.metrics["throughput"]
    assert 0 < throughput["wall_s"] and throughput["wall_gen_tokens_per_s"] > 0


def test_parallel_generation_names_a_prompt_longer_than_the_context(tiny_gguf, reference):
    from kospi_ft.evaluation.llama_session import LlamaSession

    prompt = _records(reference, ["full_analysis"])[0]["messages"][:2]
    session = LlamaSession(tiny_gguf, seed=0, n_ctx=1024, n_threads=1)
    try:
        with pytest.raises(PipelineError, match=r"request 1: the prompt's \d+ tokens exceed the context window "
                                                r"\(1024\) \(raise evaluate.n_ctx\)"):
            session.generate_many([{"messages": prompt[1:]}, {"messages": prompt}], 4, parallel=2)
    finally:
        session.close()


def test_llamacpp_backend_names_a_crashed_or_failed_llama_cpp_process(tiny_gguf, tmp_path, reference):
    """A crash of the llama.cpp process is one error naming the signal, not a hang; a file llama.cpp cannot load
    is named."""
    import os
    import signal

    from kospi_ft.evaluation.backends import LlamaCppBackend

    prompt = _records(reference, ["full_analysis"])[0]["messages"][:2]
    backend = LlamaCppBackend(tiny_gguf, seed=0, n_ctx=4096, n_threads=1)
    os.kill(backend.worker["pid"], signal.SIGSEGV)
    with pytest.raises(PipelineError, match=r"llama.cpp process ended \(signal SIGSEGV\)"):
        backend.generate(prompt, 4)
    backend.close()
    bad = tmp_path / "model-Q4_K_M.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(PipelineError, match=f"{bad}: llama.cpp cannot load it"):
        LlamaCppBackend(bad, n_threads=1)


def test_llamacpp_backend_missing_gguf(tmp_path):
    from kospi_ft.evaluation.backends import LlamaCppBackend

    with pytest.raises(PipelineError, match="GGUF not found.*export"):
        LlamaCppBackend(tmp_path / "stage3" / "model-Q4_K_M.gguf")


# ---- transformers + PEFT --------------------------------------------------------------------------------------

def test_hf_backend_with_adapter(tmp_path, tiny_hf):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kospi_ft.evaluation.backends import HFBackend

    base_dir, tokenizer = tiny_hf
    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "stage2")
    tokenizer.save_pretrained(tmp_path / "stage2")
    loc = ModelLocator(gguf_dir=tmp_path, models_dir=tmp_path, quant="Q4_K_M", ollama_prefix="p",
                       hf_base=str(base_dir))
    model, adapter = loc.hf("stage2")
    assert model == str(base_dir) and adapter == tmp_path / "stage2"
    backend = HFBackend(model, adapter=adapter, seed=0)
    messages = [{"role": "system", "content": "시스템"}, {"role": "user", "content": "질문"}]
    a, b = backend.generate(messages, 6), backend.generate(messages, 6)
    assert a.text == b.text and a.completion_tokens == b.completion_tokens <= 6
    assert a.prompt_tokens == len(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                tokenize=True, return_dict=True)["input_ids"])
    # The adapter is really applied: the bare base answers differently (its logits are another model's).
    bare_model, no_adapter = loc.hf("base")
    bare = HFBackend(bare_model, adapter=no_adapter, seed=0)
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        tuned_logits = backend._model(**enc).logits[0, -1]
        bare_logits = bare._model(**enc).logits[0, -1]
    assert (tuned_logits - bare_logits).abs().max() > 1e-2
    assert torch.equal(bare_logits, AutoModelForCausalLM.from_pretrained(base_dir)(**enc).logits[0, -1])


def test_gpu_layers_on_a_llama_cpp_without_gpu_offload(caplog, project_root, tmp_path):
    """The real preset asks for every layer on the GPU: on a CPU-only llama.cpp that is an error naming the CUDA
    install, before any model loads; under the embedded preset a warning."""
    from kospi_ft.evaluation.backends import check_gpu_offload, llama_supports_gpu_offload

    if llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python offloads to a GPU")
    with pytest.raises(PipelineError, match=r"built without GPU offload.*scripts/setup.sh cuda"):
        check_gpu_offload(-1, required=True)
    with caplog.at_level("WARNING"):
        check_gpu_offload(-1, required=False)
    assert "built without GPU offload" in caplog.text
    check_gpu_offload(0, required=True)  # the CPU on purpose is fine

    raw = presets.applied(params.read_raw(project_root / "params.yaml"), "real")
    raw["paths"] = {**raw["paths"], "gguf_dir": str(tmp_path)}
    locator = ModelLocator.from_params(raw)
    cfg = params.load("evaluate", EvaluateParams, raw=raw)
    (tmp_path / "stage3").mkdir()
    (tmp_path / "stage3" / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(PipelineError, match="built without GPU offload"):
        locator.preflight(cfg, "stage3")


@pytest.mark.gpu
def test_evaluate_stage_with_every_layer_on_the_gpu(tiny_gguf, tmp_path, monkeypatch, project_root, reference):
    """The evaluate stage's own code path on the CUDA build, with `evaluate.gpu_layers: -1` under the real preset's
    guardrails, in a process that holds pyarrow and an initialised torch CUDA context, as the stage's does: the
    combination that crashed with SIGSEGV when llama.cpp ran in the stage's process."""
    import pyarrow  # noqa: F401
    import torch

    from kospi_ft.evaluation.backends import check_gpu_offload, llama_supports_gpu_offload
    from stages import evaluate as evaluate_stage

    torch.zeros(1, device="cuda")
    assert llama_supports_gpu_offload()
    check_gpu_offload(-1, required=True)
    monkeypatch.chdir(tmp_path)
    raw = presets.applied(params.read_raw(project_root / "params.yaml"), "real")
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text(encoding="utf-8"))
    presets.write(tmp_path / "params.yaml", "real")
    paths = params.load_paths("params.yaml")
    _write_jsonl(paths.eval_set, _records(reference, [t.value for t in TaskType][:2]))
    _simulated_store(paths.snapshots_dir)  # the trading metrics' prices and the regime pass's days
    (paths.gguf_dir / "stage3").mkdir(parents=True)
    (paths.gguf_dir / "stage3" / tiny_gguf.name).symlink_to(tiny_gguf)
    assert raw["evaluate"]["gpu_layers"] == -1 and raw["evaluate"]["parallel"] > 1
    evaluate_stage.main(["--name", "stage3", "--n-samples", "2", "--max-new-tokens", "16", "--no-likelihood",
                         "--guided-samples", "2", "--guided-max-new-tokens", "16", "--regime-dates", "2",
                         "--no-progress", "--output", "out.json"])
    m = json.loads(Path("out.json").read_text())
    assert m["n_samples"] == 2 and m["throughput"]["gen_tokens_per_s"] > 0, m
    assert m["guided"]["n_samples"] == 2 and m["guided"]["throughput"]["gen_tokens_per_s"] > 0, m["guided"]
    assert m["regime_pass"]["n_samples"] == 2, m["regime_pass"]


def test_date_records_ask_the_eval_month_days_as_the_generator_does(tmp_path):
    """The regime pass's questions: only eval-month days (out of sample), spread evenly, each the generator's
    prompt for that day with the rule's answer as reference and the store's regime as truth."""
    from kospi_ft.answering import prompt_for_date
    from kospi_ft.data.synthetic import date_split
    from kospi_ft.evaluation.runner import date_records

    store = _simulated_store(tmp_path / "snapshots")
    every = date_records(store, "regime_classification", None, seed=0)
    assert every and all(date_split(dt.date.fromisoformat(r.meta["date"])) == "eval" for r in every)
    assert len(every) == sum(date_split(d) == "eval" for d in store.dates)
    some = date_records(store, "regime_classification", 4, seed=0)
    assert [r.meta["date"] for r in some] == [every[i * len(every) // 4].meta["date"] for i in range(4)]
    for r in some:
        day = dt.date.fromisoformat(r.meta["date"])
        assert r.meta["regime"] == store.snapshot(day).regime and r.meta["source"] == "real"
        assert r.prompt == prompt_for_date(store, day, "regime_classification", seed=0)
        assert schema_errors("regime_classification", r.reference) == []
        assert json.loads(r.reference)["regime"] == r.meta["regime"]
