"""The per-task JSON schemas (kospi_ft.json_schema): every generated answer validates against both the JSON schema
and the pydantic model, and hand-written invalid answers are rejected by both."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from kospi_ft.data.synthetic import generate
from kospi_ft.json_schema import korean_pattern, schema_text, task_schema, write_schemas
from kospi_ft.schema import MAX_LIST_ITEMS, MAX_TEXT_CHARS, TaskType, schema_errors


@pytest.fixture(scope="module")
def references() -> list[tuple[str, dict]]:
    """(task, answer) of the generator's train and eval splits: every task, several times."""
    records = generate(240, seed=3) + generate(120, seed=5, split="eval")
    return [(r["task"], json.loads(r["messages"][-1]["content"])) for r in records]


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft202012Validator]:
    out = {}
    for task in TaskType:
        schema = task_schema(task)
        jsonschema.Draft202012Validator.check_schema(schema)
        out[task.value] = jsonschema.Draft202012Validator(schema)
    return out


def _json_errors(validators, task: str, answer) -> list[str]:
    return [e.message for e in validators[task].iter_errors(answer)]


def test_reference_answers_validate_against_both(references, validators):
    assert {t for t, _ in references} == {t.value for t in TaskType}
    for task, answer in references:
        assert _json_errors(validators, task, answer) == [], task
        assert schema_errors(task, answer) == [], task


def test_hand_written_sample_answers_validate(validators):
    """The evaluation tests' hand-written full_analysis answer (another author's text) passes both too."""
    from pathlib import Path

    answer = json.loads((Path(__file__).parent / "fixtures" / "evaluation" / "full_analysis_valid.json")
                        .read_text(encoding="utf-8"))
    assert _json_errors(validators, "full_analysis", answer) == []
    assert schema_errors("full_analysis", answer) == []


def _first(references, task: str) -> dict:
    return copy.deepcopy(next(a for t, a in references if t == task))


def _break(kind: str, a: dict) -> dict:
    """One invalid variant of a full_analysis answer."""
    if kind == "missing field":
        del a["risk"]["stop_loss"]
    elif kind == "extra field":
        a["positions"][0]["conviction"] = "high"
    elif kind == "bad regime":
        a["regime"] = "SIDEWAYS"
    elif kind == "bad action":
        a["positions"][0]["action"] = "SHORT"
    elif kind == "bad verdict":
        a["valuation"][0]["verdict"] = "CHEAP"
    elif kind == "ticker/name mismatch":
        a["positions"][0]["ticker"], a["positions"][0]["name"] = "005930", "SK하이닉스"
    elif kind == "ticker outside the universe":
        a["positions"][0]["ticker"] = "999999"
    elif kind == "weight above 1":
        a["positions"][0]["weight"] = 1.5
    elif kind == "score below -1":
        a["positions"][0]["score"] = -1.01
    elif kind == "stop_loss not negative":
        a["risk"]["stop_loss"] = 0.0
    elif kind == "per beyond any listed stock":
        a["valuation"][0]["per"] = 5000.0
    elif kind == "f_score above 9":
        a["valuation"][0]["f_score"] = 10
    elif kind == "too many positions":
        a["positions"] = (a["positions"] * (MAX_LIST_ITEMS + 1))[:MAX_LIST_ITEMS + 1]
    elif kind == "empty positions":
        a["positions"] = []
    elif kind == "english rationale":
        a["positions"][0]["rationale"] = "Memory cycle recovery supports a larger weight here."
    elif kind == "rationale too long":
        a["positions"][0]["rationale"] = "가" * (MAX_TEXT_CHARS + 1)
    elif kind == "string instead of number":
        a["exposure"] = "0.5"
    else:
        raise AssertionError(kind)
    return a


INVALID = ["missing field", "extra field", "bad regime", "bad action", "bad verdict", "ticker/name mismatch",
           "ticker outside the universe", "weight above 1", "score below -1", "stop_loss not negative",
           "per beyond any listed stock", "f_score above 9", "too many positions", "empty positions",
           "english rationale", "rationale too long", "string instead of number"]


@pytest.mark.parametrize("kind", INVALID)
def test_invalid_answers_are_rejected_by_both(references, validators, kind):
    answer = _break(kind, _first(references, "full_analysis"))
    assert _json_errors(validators, "full_analysis", answer), f"JSON schema accepted: {kind}"
    assert schema_errors("full_analysis", answer), f"pydantic accepted: {kind}"


@pytest.mark.parametrize("task, kind", [
    ("sector_analysis", "bad event"), ("what_if", "bad shock"), ("sector_analysis", "bad sector"),
    ("risk_management", "bad action type"), ("regime_classification", "too many signals")])
def test_task_enums_are_carried(references, validators, task, kind):
    a = _first(references, task)
    if kind == "bad event":
        a["event"] = "moon_landing"
    elif kind == "bad shock":
        a["shock"] = "alien_invasion"
    elif kind == "bad sector":
        a["sector_impacts"][0]["sector"] = "crypto"
    elif kind == "bad action type":
        a["actions"][0]["type"] = "SHORT"
    else:
        a["signals"] = ["신호가 분명합니다"] * (MAX_LIST_ITEMS + 1)
    assert _json_errors(validators, task, a) and schema_errors(task, a)


def test_schema_has_no_open_ends():
    """Every object forbids extra fields and requires all of them; every array and string is bounded."""
    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node.get("additionalProperties") is False, where
                assert set(node["required"]) == set(node["properties"]), where
            if node.get("type") == "array":
                assert node.get("maxItems") == MAX_LIST_ITEMS, where
            if node.get("type") == "string" and "enum" not in node:
                assert node.get("maxLength") and node.get("pattern"), where
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    for task in TaskType:
        walk(task_schema(task), task.value)


def test_korean_pattern_counts_characters_exactly():
    import re

    pattern = re.compile(korean_pattern(10))          # up to 2 other characters first, 10 in all
    assert pattern.search("ab" + "가" * 8) and pattern.search("가" * 8) and pattern.search("가")
    assert not pattern.search("ab" + "가" * 9) and not pattern.search("abc가") and not pattern.search("abc")
    # (Python's `$` also matches before one final newline; a grammar never emits it, ECMA regexes reject it.)
    assert not pattern.search('가"') and not pattern.search("가\n가") and not pattern.search("가\\")
    assert re.compile(korean_pattern(MAX_TEXT_CHARS)).search("LS ELECTRIC: 수주 증가")


def test_write_schemas_is_deterministic(tmp_path):
    paths = write_schemas(tmp_path / "a")
    again = write_schemas(tmp_path / "b")
    assert [p.name for p in paths] == [f"{t.value}.json" for t in TaskType]
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert paths[0].read_text(encoding="utf-8") == schema_text(TaskType.FULL_ANALYSIS)
