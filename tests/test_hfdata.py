"""Stage 1 data: loaders, mapping, quotas, drops, determinism, fixture schemas and the hub source's failure modes."""
from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from kospi_ft import params, presets
from kospi_ft.data import hfdata
from kospi_ft.errors import DataValidationError, ParamsError, PipelineError
from kospi_ft.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "data" / "fixtures" / "stage1"
SPEC_RATIOS = {"finance_instruct": 0.40, "sujet_finance": 0.25, "krx_won": 0.20, "trading_signals": 0.10,
               "fin_sentiment": 0.05}

# The hub datasets' real columns (in their order), file format and split, as checked on 2026-11-28 with the
# search tool (the hub itself is unreachable from the project machines):
HUB_COLUMNS = {
    # Finance-Instruct-500k: one `train.json` (file list in the commit "Duplicate from
    # Josephgflowers/Finance-Instruct-500k", huggingface.co/datasets/Mcube030/Finance); columns from code that
    # loads it and drops exactly these (github syang-genai/Qwen-Finance-LLM Qwen-SFT/preprocess/JFFinanceInstruct.py:
    # `load_dataset("Josephgflowers/Finance-Instruct-500k", split="train")`, remove_columns=[system,user,assistant]).
    "Josephgflowers/Finance-Instruct-500k": (["system", "user", "assistant"], "json", "train"),
    # Sujet: dataset_info of nayohan/Sujet-Finance-Instruct-177k-ko/README.md (a translation of the same 177,597
    # rows that keeps the schema), file `Sujet-Finance-Instruct-177k.csv` (a local download read with
    # pd.read_csv in a stored analysis script); `Unnamed: 0` is a pandas index saved as a column.
    "sujet-ai/Sujet-Finance-Instruct-177k": (["inputs", "answer", "system_prompt", "user_prompt", "Unnamed: 0",
                                              "task_type", "dataset"], "csv", "train"),
    # Won-Instruct: dataset_info in KRX-Data/Won-Instruct/README.md (86,007 train rows, data/train-* parquet).
    "KRX-Data/Won-Instruct": (["prompt", "original_response", "Qwen/Qwen2.5-1.5B-Instruct_response",
                               "Qwen/Qwen2.5-7B-Instruct_response", "google/gemma-2-2b-it_response",
                               "google/gemma-2-9b-it_response"], "parquet", "train"),
    # trading_dataset_v2: dataset viewer (huggingface.co/datasets/darkknight25/trading_dataset_v2/viewer/default/
    # train: instruction stringclasses 1, input, output stringclasses 2) and the repo tree (one file
    # llm_trading_dataset_20250629_115817.jsonl).
    "darkknight25/trading_dataset_v2": (["instruction", "input", "output"], "json", "train"),
    # fingpt-sentiment-train: dataset_info in the README (commit a4b8b45: input, output, instruction; 76,772 rows)
    # and the repo tree (data/train-00000-of-00001-dabab110260ac909.parquet).
    "FinGPT/fingpt-sentiment-train": (["input", "output", "instruction"], "parquet", "train"),
}

# The table, column by column: (system column or None, user columns joined by a blank line, assistant).
SPEC_TABLE = {
    "finance_instruct": ("system", ["user"], "assistant"),
    "sujet_finance": ("system_prompt", ["user_prompt"], "answer"),
    "krx_won": (None, ["prompt"], "original_response"),
    "trading_signals": (None, ["instruction", "input"], "output"),
    "fin_sentiment": (None, ["instruction", "input"], "output"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tables():
    return {spec.key: hfdata.load_fixture(spec, FIXTURES) for spec in hfdata.REGISTRY}


def _build(tables, tokenizer, total, ratios=SPEC_RATIOS, max_seq_length=512, seed=42, fill=False, eval_samples=0):
    return hfdata.build(tables, ratios, total, max_seq_length, seed, fill,
                        functools.partial(hfdata.chat_token_lengths, tokenizer), eval_samples=eval_samples)


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


# --- schemas ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", hfdata.REGISTRY, ids=lambda s: s.key)
def test_fixture_columns_match_hub(spec):
    columns, fmt, split = HUB_COLUMNS[spec.hub_id]
    ds = hfdata.load_fixture(spec, FIXTURES)
    assert ds.column_names == columns
    assert spec.builder == fmt and spec.split == split
    assert set(spec.columns) <= set(columns)            # the loader reads only columns the hub has


def test_fixture_files_are_in_the_hub_format():
    fi = (FIXTURES / hfdata.spec_for("finance_instruct").fixture).read_text(encoding="utf-8").splitlines()
    assert all(set(json.loads(line)) == {"system", "user", "assistant"} for line in fi)
    header = (FIXTURES / hfdata.spec_for("sujet_finance").fixture).read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == HUB_COLUMNS["sujet-ai/Sujet-Finance-Instruct-177k"][0]
    for key in ("krx_won", "fin_sentiment"):
        spec = hfdata.spec_for(key)
        assert pq.read_schema(FIXTURES / spec.fixture).names == HUB_COLUMNS[spec.hub_id][0]


def test_won_fixture_is_korean(tables):
    prompts = [p for p in tables["krx_won"]["prompt"] if p]
    assert all(any("\uac00" <= ch <= "\ud7a3" for ch in p) for p in prompts)


# --- mapping ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(SPEC_TABLE))
def test_loader_maps_columns_as_the_table_says(key, tables):
    spec = hfdata.spec_for(key)
    system_col, user_cols, assistant_col = SPEC_TABLE[key]
    table = tables[key]
    mapped = 0
    for i in range(len(table)):
        row = table[i]
        messages, reason = hfdata.to_messages(spec.mapping.turns(row), spec.default_system)
        if reason:
            continue
        mapped += 1
        user = "\n\n".join(row[c].strip() for c in user_cols if not _blank(row[c]))
        system = spec.default_system if system_col is None or _blank(row[system_col]) else row[system_col].strip()
        assert messages == [{"role": "system", "content": system}, {"role": "user", "content": user},
                            {"role": "assistant", "content": row[assistant_col].strip()}]
    assert mapped >= len(table) - 6


def test_own_system_prompt_kept_else_default(tables):
    spec = hfdata.spec_for("finance_instruct")
    systems = {m[0]["content"] for m in (hfdata.to_messages(spec.mapping.turns(tables["finance_instruct"][i]),
                                                            spec.default_system)[0]
                                         for i in range(len(tables["finance_instruct"]))) if m}
    assert spec.default_system in systems                       # rows with an empty system
    assert "You are a financial analyst. Answer precisely and show the key steps." in systems


@pytest.mark.parametrize("turns, reason", [
    (hfdata.Turns("s", None, "a"), "non_string"),
    (hfdata.Turns("s", "q", 3), "non_string"),
    (hfdata.Turns("s", float("nan"), "a"), "non_string"),
    (hfdata.Turns(7, "q", "a"), "non_string"),
    (hfdata.Turns("s", "", "a"), "empty"),
    (hfdata.Turns("s", "q", " \n\t"), "empty"),
])
def test_bad_turns_are_rejected(turns, reason):
    assert hfdata.to_messages(turns, "default") == (None, reason)


@pytest.mark.parametrize("system", [None, float("nan"), "", "  \n"])
def test_missing_system_gets_default(system):
    messages, _ = hfdata.to_messages(hfdata.Turns(system, " q ", "a\n"), "default")
    assert messages[0]["content"] == "default" and messages[1]["content"] == "q" and messages[2]["content"] == "a"


def test_instruction_input_output_with_empty_input():
    mapping = hfdata.InstructionInputOutput("instruction", "input", "output")
    for empty in (None, "", "  "):
        assert mapping.turns({"instruction": "Classify.", "input": empty, "output": "Buy"}).user == "Classify."
    assert mapping.turns({"instruction": "Classify.", "input": " x ", "output": "Buy"}).user == "Classify.\n\nx"
    assert hfdata.to_messages(mapping.turns({"instruction": None, "input": "x", "output": "Buy"}), "d")[1] \
        == "non_string"


def test_normalized_dedup_key():
    a = [{"role": "user", "content": "What  is\nBETA?"}, {"role": "assistant", "content": "Ｍarket risk."}]
    b = [{"role": "user", "content": "what is beta?"}, {"role": "assistant", "content": "market risk."}]
    assert hfdata.dedup_key(a) == hfdata.dedup_key(b)
    assert hfdata.dedup_key(a) != hfdata.dedup_key([a[0], {"role": "assistant", "content": "Market risk!"}])


def test_token_length_is_the_chat_template_length(tokenizer):
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "코스피 PER?"},
            {"role": "assistant", "content": "12.5배"}]
    expected = len(tokenizer.apply_chat_template(conv, tokenize=True)["input_ids"])
    assert hfdata.chat_token_lengths(tokenizer, [conv]) == [expected]


# --- quotas ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total, expected", [
    (200_000, [80_000, 50_000, 40_000, 20_000, 10_000]),
    (120, [48, 30, 24, 12, 6]),
    # 7 x ratios = 2.8, 1.75, 1.4, 0.7, 0.35 -> floors 2,1,1,0,0 (4); 3 left go to .8, .75, .7
    (7, [3, 2, 1, 1, 0]),
    # 3 x ratios = 1.2, 0.75, 0.6, 0.3, 0.15 -> floors 1,0,0,0,0; 2 left go to .75, .6
    (3, [1, 1, 1, 0, 0]),
    (1, [1, 0, 0, 0, 0]),
    (0, [0, 0, 0, 0, 0]),
])
def test_allocate_hand_worked(total, expected):
    assert list(hfdata.allocate(total, SPEC_RATIOS).values()) == expected


def test_allocate_ties_go_by_registry_order():
    even = {k: 0.2 for k in hfdata.KEYS}
    assert list(hfdata.allocate(2, even).values()) == [1, 1, 0, 0, 0]
    assert list(hfdata.allocate(8, even).values()) == [2, 2, 2, 1, 1]


@pytest.mark.parametrize("ratios", [SPEC_RATIOS, {"a": 0.1, "b": 0.2, "c": 0.7}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3},
                                    {"a": 0.29, "b": 0.71}])
def test_allocate_is_exact_at_every_total(ratios):
    norm = sum(Fraction(str(v)) for v in ratios.values())
    for total in list(range(0, 400)) + [1_000, 199_999, 200_000, 1_000_003]:
        quotas = hfdata.allocate(total, ratios)
        assert sum(quotas.values()) == total
        for k, q in quotas.items():
            assert abs(q - total * Fraction(str(ratios[k])) / norm) < 1


@pytest.mark.parametrize("total", [5, 37, 120])
def test_build_meets_quotas_exactly(tables, tokenizer, total):
    result = _build(tables, tokenizer, total)
    quotas = hfdata.allocate(total, SPEC_RATIOS)
    assert len(result.records) == total
    by_source = {spec.key: sum(r["source"] == spec.hub_id for r in result.records) for spec in hfdata.REGISTRY}
    assert by_source == quotas
    assert {k: d["kept"] for k, d in result.stats["datasets"].items()} == quotas


def test_held_out_slice_is_disjoint_and_leaves_the_training_rows_alone(tables, tokenizer):
    alone = _build(tables, tokenizer, 100)
    both = _build(tables, tokenizer, 100, eval_samples=12)
    assert both.records == alone.records                     # the slice comes after the training rows
    assert len(both.eval_records) == 12 == both.stats["eval_kept"] == both.stats["eval_requested"]
    by_source = {spec.key: sum(r["source"] == spec.hub_id for r in both.eval_records) for spec in hfdata.REGISTRY}
    assert by_source == hfdata.allocate(12, SPEC_RATIOS) == {k: d["eval_kept"] for k, d in
                                                             both.stats["datasets"].items()}
    train_keys = {hfdata.dedup_key(r["messages"]) for r in both.records}
    assert not any(hfdata.dedup_key(r["messages"]) in train_keys for r in both.eval_records)
    for key, d in alone.stats["datasets"].items():  # the training stats count the training rows only
        assert (both.stats["datasets"][key]["kept"], both.stats["datasets"][key]["token_length"]) == (
            d["kept"], d["token_length"])
    assert both.stats["token_length"] == alone.stats["token_length"]


# --- drops -----------------------------------------------------------------------------------------------------
def test_bad_rows_dropped_and_counted(tokenizer):
    rows = {"system": ["", "s", None, "", "", "", "", ""],
            "user": ["q1", "q2", None, "   ", "Q1 ", "q3", "q4", "q5 " + "word " * 600],
            "assistant": ["a1", "", "a", "a", "a1", None, "a4", "a5"]}
    # q1 kept; q2 empty answer; None user; blank user; "Q1 " duplicates q1; None answer; q4 kept; q5 too long
    table = datasets.Dataset.from_dict(rows)
    tables = {"finance_instruct": table}
    result = hfdata.build(tables, {"finance_instruct": 1.0}, 8, 512, 0, False,
                          functools.partial(hfdata.chat_token_lengths, tokenizer))
    stats = result.stats["datasets"]["finance_instruct"]
    assert stats["dropped"] == {"non_string": 2, "empty": 2, "duplicate": 1, "too_long": 1}
    assert stats["kept"] == 2 and stats["shortfall"] == 6 and stats["exhausted"]
    assert sorted(hfdata.normalize(r["messages"][1]["content"]) for r in result.records) == ["q1", "q4"]


def test_fixture_bad_rows_dropped_and_counted(tables, tokenizer):
    result = _build(tables, tokenizer, total=10_000)          # asks for more than exists: every row is visited
    for key, d in result.stats["datasets"].items():
        assert d["exhausted"] and d["examined"] == d["available"] == len(tables[key])
        assert d["kept"] + sum(d["dropped"].values()) == d["examined"]
        assert d["shortfall"] == d["requested"] - d["kept"] > 0
    assert all(n > 0 for n in result.stats["dropped"].values())   # every drop reason occurs in the fixtures
    seen = set()
    for record in result.records:
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in record["messages"])
        key = hfdata.dedup_key(record["messages"])
        assert key not in seen
        seen.add(key)
    lengths = hfdata.chat_token_lengths(tokenizer, [r["messages"] for r in result.records])
    assert max(lengths) <= 512 == result.stats["max_seq_length"]


def test_shortfall_warns_and_is_filled_only_when_asked(tables, tokenizer, caplog):
    ratios = {"finance_instruct": 0.5, "sujet_finance": 0, "krx_won": 0, "trading_signals": 0, "fin_sentiment": 0.5}
    usable = _build(tables, tokenizer, 1_000, ratios).stats["datasets"]["fin_sentiment"]["kept"]
    with caplog.at_level(logging.WARNING, logger="kospi_ft.data.hfdata"):
        short = _build(tables, tokenizer, 40, ratios)
    assert "FinGPT/fingpt-sentiment-train" in caplog.text and "fill_shortfall" in caplog.text
    assert len(short.records) == 20 + usable
    assert short.stats["datasets"]["fin_sentiment"]["shortfall"] == 20 - usable
    assert short.stats["shortfall"] == 20 - usable
    filled = _build(tables, tokenizer, 40, ratios, fill=True)
    assert len(filled.records) == 40 and filled.stats["shortfall"] == 0
    assert filled.stats["datasets"]["finance_instruct"]["filled_for_others"] == 20 - usable
    assert filled.stats["datasets"]["finance_instruct"]["kept"] == 40 - usable
    assert "sujet_finance" not in {r["source"] for r in filled.records}


# --- errors ----------------------------------------------------------------------------------------------------
def test_missing_column_names_dataset_and_column(tmp_path):
    spec = hfdata.spec_for("fin_sentiment")
    table = pq.read_table(FIXTURES / spec.fixture).drop_columns(["output"])
    broken = tmp_path / spec.fixture
    broken.parent.mkdir(parents=True)
    pq.write_table(table, broken)
    with pytest.raises(DataValidationError, match=r"FinGPT/fingpt-sentiment-train.*\['output'\]"):
        hfdata.load_fixture(spec, tmp_path)

    spec = hfdata.spec_for("finance_instruct")
    broken = tmp_path / spec.fixture
    broken.parent.mkdir(parents=True)
    broken.write_text(json.dumps({"system": "", "user": "q", "answer": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"Finance-Instruct-500k.*\['assistant'\]"):
        hfdata.load_fixture(spec, tmp_path)


def test_hub_unreachable_fails_fast_and_clearly(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # discard port: connection refused at once
    with pytest.raises(PipelineError) as err:
        hfdata.load_hub(hfdata.spec_for("krx_won"))
    message = str(err.value)
    assert "KRX-Data/Won-Instruct" in message and "stage1_data.source: fixtures" in message
    assert "unreachable" in message


def test_hub_offline_mode_stage_exits_with_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "stages.stage1_data", "--source", "hub",
                           "--output", str(tmp_path / "o.jsonl"), "--stats", str(tmp_path / "s.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: hub dataset Josephgflowers/Finance-Instruct-500k" in proc.stderr
    assert "stage1_data.source: fixtures" in proc.stderr and "offline" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


# --- params + stage --------------------------------------------------------------------------------------------
def test_params_file_loads_under_both_presets():
    raw = params.read_raw(ROOT / "params.yaml")
    embedded = hfdata.load_params(raw=raw)
    assert embedded.source == "fixtures" and embedded.ratios == SPEC_RATIOS
    real = hfdata.load_params(raw=presets.applied(raw, "real"))
    assert (real.source, real.total_samples, real.max_seq_length) == ("hub", 200_000, 2048)
    assert real.ratios == SPEC_RATIOS


@pytest.mark.parametrize("ratios, fragment", [
    ({**SPEC_RATIOS, "krx_won": 0.3}, "sum to 1"),
    ({k: v for k, v in SPEC_RATIOS.items() if k != "krx_won"}, "missing ['krx_won']"),
    ({**SPEC_RATIOS, "other": 0.0}, "unknown ['other']"),
])
def test_bad_ratios_rejected_with_the_key(ratios, fragment):
    raw = params.read_raw(ROOT / "params.yaml")
    with pytest.raises(ParamsError, match="stage1_data.ratios") as err:
        hfdata.load_params(raw={**raw, "stage1_data": {**raw["stage1_data"], "ratios": ratios}})
    assert fragment in str(err.value)


def test_ratio_flags_override_their_key_only():
    from stages import stage1_data

    args = stage1_data.build_parser().parse_args(["--ratio-krx-won", "0.3", "--ratio-finance-instruct", "0.3",
                                                  "--total-samples", "50"])
    cfg = hfdata.load_params(overrides=stage1_data.overrides(args), raw=params.read_raw(ROOT / "params.yaml"))
    assert cfg.ratios == {**SPEC_RATIOS, "krx_won": 0.3, "finance_instruct": 0.3}
    assert cfg.total_samples == 50


def test_stage_rerun_is_byte_identical(tmp_path, monkeypatch):
    from stages import stage1_data

    monkeypatch.chdir(ROOT)
    outs = []
    for run, seed in (("a", "42"), ("b", "42"), ("c", "7")):
        out, held, stats = tmp_path / f"{run}.jsonl", tmp_path / f"{run}-eval.jsonl", tmp_path / f"{run}.json"
        stage1_data.main(["--seed", seed, "--output", str(out), "--eval-output", str(held), "--stats", str(stats)])
        outs.append((out.read_bytes(), stats.read_bytes(), held.read_bytes()))
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[2][0]                  # the seed really drives the sample and the order
    records = [json.loads(line) for line in outs[0][0].decode().splitlines()]
    cfg = hfdata.load_params(raw=params.read_raw(ROOT / "params.yaml"))
    assert len(records) == cfg.total_samples
    held_out = [json.loads(line) for line in outs[0][2].decode().splitlines()]
    assert len(held_out) == cfg.eval_samples > 0
    assert {hfdata.dedup_key(r["messages"]) for r in held_out}.isdisjoint(
        hfdata.dedup_key(r["messages"]) for r in records)
    assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in records)
    stats = json.loads(outs[0][1])
    assert stats["source"] == "fixtures" and str(ROOT) not in outs[0][1].decode()


def test_dvc_stage_reads_only_its_own_params():
    from ruamel.yaml import YAML

    stage = YAML(typ="safe").load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["stage1_data"]
    assert all(p.startswith("stage1_data.") for p in stage["params"])
    fields = set(hfdata.Stage1DataParams.model_fields)
    assert {p.split(".", 1)[1] for p in stage["params"] if p.startswith("stage1_data.")} == fields
    assert {"stages/stage1_data.py", "kospi_ft/data/hfdata.py", "${paths.stage1_fixtures}"} <= set(stage["deps"])
    assert stage["outs"] == ["${paths.stage1_data}", "${paths.stage1_eval}"]
