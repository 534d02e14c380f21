"""DPO preference pairs: type shares, TRL record format, and every rejected answer provably breaking what its
type claims, judged directly by kospi_ft.schema and kospi_ft.strategy."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from kospi_ft.data.dpo_pairs import (
    CORRUPTIONS, REJECTION_SHARES, _full_long, _leverage_5x, _absurd_per, _exposure_word, _fake_ticker,
    _same_reason, make_pairs,
)
from kospi_ft.errors import PipelineError
from kospi_ft.schema import TaskType, hallucinations, quality_issues, schema_errors
from kospi_ft.strategy import rule_violations
from kospi_ft.data.synthetic import Draws, allocate, generate
from kospi_ft.data.universe import TICKERS


@pytest.fixture(scope="module")
def sft():
    return generate(240, seed=31)


@pytest.fixture(scope="module")
def pairs(sft):
    return make_pairs(sft, 400, seed=5)


def test_type_shares_are_exact():
    assert allocate(2000, REJECTION_SHARES) == {"strategy_violation": 600, "quality_degradation": 600,
                                               "schema_violation": 400, "hallucination": 400}


def test_pairs_follow_the_shares(pairs):
    assert dict(collections.Counter(p["rejection_type"] for p in pairs)) == allocate(400, REJECTION_SHARES)


def test_trl_conversational_format(sft, pairs):
    prompts = {json.dumps(r["messages"][:2], ensure_ascii=False): r for r in sft}
    for p in pairs:
        assert set(p) == {"prompt", "chosen", "rejected", "rejection_type", "task"}
        assert [m["role"] for m in p["prompt"]] == ["system", "user"]
        assert [m["role"] for m in p["chosen"]] == ["assistant"] == [m["role"] for m in p["rejected"]]
        src = prompts[json.dumps(p["prompt"], ensure_ascii=False)]   # the prompt is an SFT record's prompt
        assert p["chosen"][0]["content"] == src["messages"][2]["content"] and p["task"] == src["task"]
        assert p["rejected"][0]["content"] != p["chosen"][0]["content"]


def test_every_chosen_is_good_and_every_rejected_breaks_its_claim(pairs):
    for p in pairs:
        task, chosen, rejected = p["task"], p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert schema_errors(task, chosen) == [] and rule_violations(task, chosen) == []
        assert quality_issues(task, chosen) == []
        json.loads(rejected)  # rejected answers stay parseable: the defect is in the content
        errors, halls = schema_errors(task, rejected), hallucinations(task, rejected)
        kind = p["rejection_type"]
        if kind == "schema_violation":
            assert errors and not halls, rejected
        elif kind == "hallucination":
            assert halls and len(halls) == len(errors), rejected
        elif kind == "strategy_violation":
            assert not errors and rule_violations(task, rejected), rejected
        elif kind == "quality_degradation":
            assert not errors and not rule_violations(task, rejected) and quality_issues(task, rejected), rejected
        else:
            pytest.fail(f"unknown rejection type {kind}")


def test_every_corruption_gets_used():
    recs = generate(600, seed=8)
    pairs = make_pairs(recs, 1200, seed=2)
    # each type's variety shows in the rejected texts: spot the spec's named examples
    texts = collections.defaultdict(list)
    for p in pairs:
        texts[p["rejection_type"]].append(p["rejected"][0]["content"])
    assert any('"exposure":"high"' in t or '"exposure":"medium"' in t or '"exposure":"낮음"' in t
               for t in texts["schema_violation"])
    assert any('"per":2000.0' in t for t in texts["hallucination"])
    assert any('"leverage":5.0' in t for t in texts["hallucination"])
    assert any("근거 없음" in t for t in texts["quality_degradation"])
    assert len(CORRUPTIONS) == 4


def _answer(sft, task: TaskType, regime: str | None = None) -> dict:
    for r in sft:
        a = json.loads(r["messages"][2]["content"])
        if r["task"] == task.value and (regime is None or a["regime"] == regime):
            return a
    raise LookupError(task)


def test_named_examples(sft):
    rng = Draws(np.random.default_rng(0))
    bear = _answer(sft, TaskType.FULL_ANALYSIS, "BEAR")
    long_bear = _full_long(json.loads(json.dumps(bear)), TaskType.FULL_ANALYSIS, rng)
    assert long_bear["exposure"] == 1.0
    assert any("outside the BEAR band" in v for v in rule_violations("full_analysis", long_bear))

    full = _answer(sft, TaskType.FULL_ANALYSIS)
    word = _exposure_word(json.loads(json.dumps(full)), TaskType.FULL_ANALYSIS, rng)
    assert isinstance(word["exposure"], str) and schema_errors("full_analysis", word)

    fake = _fake_ticker(json.loads(json.dumps(full)), TaskType.FULL_ANALYSIS, rng)
    tickers = [x["ticker"] for x in fake["positions"] + fake["valuation"]]
    assert any(t not in TICKERS for t in tickers) and hallucinations("full_analysis", fake)
    assert hallucinations("full_analysis", _absurd_per(json.loads(json.dumps(full)), TaskType.FULL_ANALYSIS, rng))
    assert hallucinations("full_analysis", _leverage_5x(json.loads(json.dumps(full)), TaskType.FULL_ANALYSIS, rng))

    same = _same_reason(json.loads(json.dumps(full)), TaskType.FULL_ANALYSIS, rng)
    assert len({p["rationale"] for p in same["positions"]}) == 1
    assert any("same text" in q for q in quality_issues("full_analysis", same))


@pytest.fixture(scope="module")
def held_out_set():
    """Records of the eval split: their own seed and their own dates, as the synthesize stage writes them."""
    return generate(24, seed=4242, split="eval")


def _stage(tmp_path, sft, held_out_set, *args: str) -> tuple[bytes, bytes]:
    """Run the stage on files in tmp_path; (training pairs, held-out pairs) as bytes."""
    from kospi_ft import atomic
    from stages.dpo_pairs import main

    src, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    atomic.write_jsonl(src, sft)
    atomic.write_jsonl(held, held_out_set)
    out, eval_out = tmp_path / "pairs.jsonl", tmp_path / "eval_pairs.jsonl"
    main(["--input", str(src), "--output", str(out), "--eval-input", str(held), "--eval-output", str(eval_out),
          *args])
    return out.read_bytes(), eval_out.read_bytes()


def test_same_inputs_same_bytes(tmp_path, sft, held_out_set):
    outs = [_stage(tmp_path / run, sft, held_out_set, "--count", "50", "--eval-count", "20") for run in "ab"]
    assert outs[0] == outs[1] and len(outs[0][0].splitlines()) == 50 and len(outs[0][1].splitlines()) == 20
    other = _stage(tmp_path / "c", sft, held_out_set, "--count", "50", "--eval-count", "20", "--seed", "7")
    assert other[0] != outs[0][0] and other[1] != outs[0][1]


def test_held_out_pairs_share_no_prompt_with_the_training_pairs(tmp_path, sft, held_out_set):
    train, held = (
        [json.loads(line) for line in blob.decode().splitlines()]
        for blob in _stage(tmp_path, sft, held_out_set, "--count", "60", "--eval-count", "24"))
    def key(messages):
        return json.dumps(messages, ensure_ascii=False, sort_keys=True)

    prompts = {key(p["prompt"]) for p in train}
    assert not any(key(p["prompt"]) in prompts for p in held)
    # Made by the same rejecter: the same record format, the same type shares, every rejected answer checked.
    assert dict(collections.Counter(p["rejection_type"] for p in held)) == allocate(24, REJECTION_SHARES)
    by_prompt = {key(r["messages"][:2]): r for r in held_out_set}
    for p in held:
        assert set(p) == {"prompt", "chosen", "rejected", "rejection_type", "task"}
        assert p["chosen"][0]["content"] == by_prompt[key(p["prompt"])]["messages"][2]["content"]
        assert schema_errors(p["task"], p["chosen"][0]["content"]) == []
        assert p["rejected"][0]["content"] != p["chosen"][0]["content"]


def _distinct(pairs) -> int:
    return len({json.dumps([p["prompt"], p["chosen"], p["rejected"]], ensure_ascii=False) for p in pairs})


def test_pairs_never_repeat_when_records_are_reused(held_out_set):
    """Past the record count each record backs at most one pair per rejection type: the real preset's 200 held-out
    pairs from 100 eval records, and 24 records taken to their capacity, 80. (Reuse used to repeat deterministic
    corruptions: 195 distinct of the 200; 3 records and count 1000 gave one pair 69 times.)"""
    for records, count in [(generate(100, seed=4242, split="eval"), 200), (held_out_set, 80)]:
        pairs = make_pairs(records, count, seed=42)
        assert len(pairs) == count and _distinct(pairs) == count
        assert len({(json.dumps(p["prompt"], ensure_ascii=False), p["rejection_type"]) for p in pairs}) == count
        assert dict(collections.Counter(p["rejection_type"] for p in pairs)) == allocate(count, REJECTION_SHARES)


def test_a_count_the_records_cannot_back_is_an_error_naming_the_key(tmp_path, sft, held_out_set):
    from kospi_ft.data.dpo_pairs import pair_capacity
    from kospi_ft.errors import ParamsError

    # The largest type, strategy_violation (30%), must fit: one pair of each type per record.
    assert (pair_capacity(1), pair_capacity(24), pair_capacity(100)) == (4, 80, 334)
    with pytest.raises(ParamsError, match=r"^dpo_pairs\.count=1000: .*train\.jsonl holds 3 distinct SFT records, "
                                          r"which yield at most 10 distinct pairs .*lower dpo_pairs\.count to 10"):
        _stage(tmp_path / "a", sft[:3], held_out_set, "--count", "1000", "--eval-count", "20")
    with pytest.raises(ParamsError, match=r"^dpo_pairs\.eval_count=81: .*eval\.jsonl holds 24 distinct SFT "
                                          r"records, which yield at most 80 distinct pairs"):
        _stage(tmp_path / "b", sft, held_out_set, "--count", "50", "--eval-count", "81")
    for run in "ab":  # refused before anything was written
        assert not (tmp_path / run / "pairs.jsonl").exists() and not (tmp_path / run / "eval_pairs.jsonl").exists()
    # Copies of a record are one record: they would back the same pairs.
    with pytest.raises(ParamsError, match=r"count=9: <records> holds 2 distinct SFT records, which yield at most 8"):
        make_pairs(sft[:2] * 5, 9, seed=0)
    assert _distinct(make_pairs(sft[:2] * 5, 8, seed=0)) == 8


def test_missing_input_is_a_clear_error(tmp_path):
    from stages.dpo_pairs import main

    with pytest.raises(PipelineError, match="not found"):
        main(["--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "x.jsonl")])
    with pytest.raises(PipelineError, match="eval set.*not found"):
        _stage(tmp_path, generate(12, seed=1), [], "--count", "5", "--eval-input", str(tmp_path / "none.jsonl"))


def test_a_bad_chosen_answer_is_refused(sft):
    from kospi_ft.errors import DataValidationError

    broken = json.loads(json.dumps(sft[:3]))
    answer = json.loads(broken[1]["messages"][2]["content"])
    answer["exposure"] = "high"
    broken[1]["messages"][2]["content"] = json.dumps(answer, ensure_ascii=False)
    with pytest.raises(DataValidationError, match="record 1"):
        make_pairs(broken, 3, seed=0, source="x.jsonl")


@pytest.mark.parametrize("preset, count", [("embedded", None), ("real", 2000)])
def test_shipped_params_load(preset, count):
    from pathlib import Path

    from kospi_ft import params, presets
    from kospi_ft.data.dpo_pairs import DpoPairsParams

    raw = presets.applied(params.read_raw(Path(__file__).resolve().parents[1] / "params.yaml"), preset)
    cfg = params.load("dpo_pairs", DpoPairsParams, raw=raw)
    # Off in the dvc stage: sampling needs the Stage-2 GGUF, which the stage does not list as a dependency.
    assert cfg.collect_model_rejects is False and cfg.model == "stage2" and cfg.temperature == 0.7
    if count is not None:
        assert cfg.count == count


def test_overweight_position_breaks_the_caps(sft):
    from kospi_ft.data.dpo_pairs import _overweight

    full = _answer(sft, TaskType.FULL_ANALYSIS)
    bad = _overweight(json.loads(json.dumps(full)), TaskType.FULL_ANALYSIS, Draws(np.random.default_rng(1)))
    assert schema_errors("full_analysis", bad) == []
    assert any("max_position_weight" in v for v in rule_violations("full_analysis", bad))
