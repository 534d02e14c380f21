"""Reasoning logs -> Stage 2 records (the spec's prepare_dataset.py): validation by line, the synthetic generator's
rendering, the mix into Stage 2 at a ratio, the held-out eval lines, ROUGE against their reasoning, and the stage
end to end on the shipped example file."""
from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kospi_ft import params
from kospi_ft.data.reasoning_logs import LogEntry, mix, read_logs, tickers_of, to_record
from kospi_ft.data.simulate import SimConfig, simulate
from kospi_ft.data.snapshot import MarketSnapshotStore, compute_features
from kospi_ft.data.synthetic import answer_json, date_split, generate
from kospi_ft.errors import DataValidationError
from kospi_ft.evaluation.backends import Generation
from kospi_ft.evaluation.runner import evaluate, load_eval_set
from kospi_ft.prompts import QUANT_SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data/logs/example.jsonl"


@pytest.fixture(scope="module")
def store() -> MarketSnapshotStore:
    """The embedded market's snapshot store (market params of the embedded preset), which the example refers to."""
    raw = params.read_raw(ROOT / "params.yaml")
    start = dt.date.fromisoformat(raw["market"]["start"] + "-01")
    table = simulate(SimConfig(start, dt.date(2025, 12, 31), seed=raw["market"]["seed"]))
    stocks, market = compute_features(table, dt.date.fromisoformat(raw["snapshots"]["start_date"]))
    return MarketSnapshotStore(market, stocks)


@pytest.fixture(scope="module")
def example_lines() -> list[dict]:
    return [json.loads(line) for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]


def _write(tmp_path, lines, name="logs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n"
                            for x in lines), encoding="utf-8")
    return path


def test_example_converts_like_synthetic_records(store, example_lines):
    records, report = read_logs(EXAMPLE, store)
    assert report.valid == report.lines == len(example_lines) == 20 and report.skipped_invalid == 0
    assert all(report.tasks.values())  # every task type
    assert report.contexts == {"text": 14, "snapshot": 6}
    assert report.rule_violations == report.quality_issues == report.regime_differs_from_snapshot == 0
    for line, r in zip(example_lines, records):
        system, user, assistant = r["messages"]
        assert system == {"role": "system", "content": QUANT_SYSTEM_PROMPT}
        assert assistant == {"role": "assistant", "content": answer_json(line["decision"])}  # the generator's JSON
        assert user["content"].endswith("\n\n" + line["question"])
        day = line.get("date") or line["snapshot_date"]
        assert day in user["content"]
        assert r["meta"]["reasoning"] == line["reasoning"] and r["meta"]["source"] == "log"
        assert r["meta"]["split"] == date_split(dt.date.fromisoformat(day))
        if "snapshot_date" in line:
            snap = store.snapshot(dt.date.fromisoformat(line["snapshot_date"]))
            assert f"{snap.index_level:,.2f}" in user["content"]  # the snapshot's market block
            assert "VIX" not in user["content"].split("\n\n")[-2]  # nothing the KRX tape does not hold
            for t in tickers_of(line["decision"]):
                assert f"{t}" in user["content"]
            assert r["meta"]["format"] == line.get("format", r["meta"]["format"])
        else:
            assert line["context"] in user["content"] and r["meta"]["format"] == "text"
    assert {r["meta"]["format"] for r in records if "snapshot_date" in r["meta"]} - {"text"}
    again, _ = read_logs(EXAMPLE, store)
    assert again == records  # deterministic (the seeded format draw included)


@pytest.mark.parametrize("edit,pattern", [
    (lambda x: x.pop("task"), r":2: task: Field required"),
    (lambda x: x.update(task="buy_everything"), r":2: task: Input should be 'full_analysis'"),
    (lambda x: x.update(reasonning=x.pop("reasoning")), r":2: reasoning: Field required \(\+1 more\)"),
    (lambda x: x.update(date="2024/05/31"), r":2: date: Value error, must be a date as YYYY-MM-DD"),
    (lambda x: x.pop("context"), r":2: line: Value error, give `context`"),
    (lambda x: x.update(question="  "), r":2: question: String should match pattern"),
    (lambda x: x["decision"].pop("summary"), r":2: decision\.summary: Field required"),
    (lambda x: x["decision"].update(exposure="high"), r":2: decision\.exposure: Input should be a valid number"),
    (lambda x: x["decision"]["risk"].update(leverage=5.0), r":2: decision\.risk\.leverage: .*beyond any listed"),
])
def test_a_bad_line_names_file_line_and_field(tmp_path, example_lines, store, edit, pattern):
    bad = copy.deepcopy(example_lines[1])
    edit(bad)
    path = _write(tmp_path, [example_lines[0], bad, example_lines[2]])
    with pytest.raises(DataValidationError, match=pattern) as err:
        read_logs(path, store)
    assert str(path) in str(err.value)


def test_bad_lines_can_be_skipped_and_counted(tmp_path, example_lines, store):
    unknown_day = {**example_lines[12], "snapshot_date": "2021-01-01"}  # a holiday: no snapshot that day
    wrong = copy.deepcopy(example_lines[3])
    wrong["decision"]["exposure"] = 1.5
    path = _write(tmp_path, [example_lines[0], "{not json", unknown_day, wrong, [1, 2], example_lines[4]])
    with pytest.raises(DataValidationError, match=r":2: not valid JSON"):
        read_logs(path, store)
    with pytest.raises(DataValidationError, match=r"b.jsonl:2: snapshot_date: 2021-01-01 is not a trading day"):
        read_logs(_write(tmp_path, [example_lines[0], unknown_day], "b.jsonl"), store)
    records, report = read_logs(path, store, skip_invalid=True)
    assert report.lines == 6 and report.valid == 2 and report.skipped_invalid == 4
    assert [r["meta"]["line"] for r in records] == [1, 6]


@pytest.mark.parametrize("bad,pattern", [
    (lambda line: line.replace("@@".encode(), "질문".encode("cp949")), r":2: not UTF-8 \(byte 0xc1 at byte \d+ of"),
    (lambda line: b"[" * 100_000, r":2: JSON nested too deeply to parse$"),
    (lambda line: line.replace(b'"@@"', b'"@@", "id": 1' + b"0" * 5000), r":2: an integer of more than \d+ digits"),
], ids=["cp949_byte", "nesting", "long_integer"])
def test_a_line_that_cannot_be_parsed_is_one_error_or_skipped(tmp_path, example_lines, store, bad, pattern):
    """A non-UTF-8 byte (a CP949 file), pathological nesting, an integer too long to parse: file:line, one line."""
    second = {**example_lines[1], "question": "@@"}
    lines = [json.dumps(x, ensure_ascii=False).encode() for x in (example_lines[0], second, example_lines[2])]
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"\n".join([lines[0], bad(lines[1]), lines[2]]) + b"\n")
    with pytest.raises(DataValidationError, match=pattern) as err:
        read_logs(path, store)
    assert str(err.value).startswith(f"{path}:2: ") and "\n" not in str(err.value)
    records, report = read_logs(path, store, skip_invalid=True)
    assert report.lines == 3 and report.valid == 2 and report.skipped_invalid == 1
    assert [r["meta"]["line"] for r in records] == [1, 3]  # one bad line does not cost the rest of the file


@pytest.fixture(scope="module")
def tokenizer():
    from kospi_ft.tokenizer import load_tokenizer

    return load_tokenizer()


class _Counting:
    """The tokenizer, noting the length of every text it tokenizes."""

    def __init__(self, tokenizer):
        self.tokenizer, self.sizes = tokenizer, []

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text, **kwargs):
        self.sizes.append(len(text))
        return self.tokenizer(text, **kwargs)


def test_a_50_mb_line_is_rejected_without_tokenizing_it_or_skipped(tmp_path, example_lines, store, tokenizer):
    # It was accepted, and mix() repeats train log records in whole passes to reach logs_ratio, so a file of fewer
    # train lines than wanted put it into Stage 2 twice; Stage 2 then cut it to max_seq_length, answer included.
    huge = {**example_lines[1], "context": "가" * (50_000_000 // 3)}
    path = _write(tmp_path, [example_lines[0], huge, example_lines[2]])
    counting = _Counting(tokenizer)
    with pytest.raises(DataValidationError, match=r"logs\.jsonl:2: the record is at least [\d,]+ tokens \(50,0[\d,]+ "
                                                  r"bytes of text\), over stage2\.max_seq_length \(3,584\)$"):
        read_logs(path, store, max_seq_length=3584, tokenizer=counting)
    records, report = read_logs(path, store, skip_invalid=True, max_seq_length=3584, tokenizer=counting)
    assert report.lines == 3 and report.valid == 2 and report.skipped_invalid == 1
    assert [r["meta"]["line"] for r in records] == [1, 3]
    assert counting.sizes and max(counting.sizes) < 100_000  # lines 1 and 3 only


def test_max_seq_length_counts_tokens_as_stage2_does(example_lines, store, tokenizer):
    kept, _ = read_logs(EXAMPLE, store)
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in kept]
    longest = max(lengths)
    # At the longest record's length every record fits, and the output is the same (the embedded tokenizer).
    assert read_logs(EXAMPLE, store, max_seq_length=longest) == read_logs(EXAMPLE, store)
    line = lengths.index(longest) + 1
    with pytest.raises(DataValidationError, match=rf"example\.jsonl:{line}: the record is {longest:,} tokens, over "
                                                  rf"stage2\.max_seq_length \({longest - 1:,}\): training would cut"):
        read_logs(EXAMPLE, store, max_seq_length=longest - 1, tokenizer=tokenizer)
    records, report = read_logs(EXAMPLE, store, max_seq_length=longest - 1, tokenizer=tokenizer, skip_invalid=True)
    assert report.skipped_invalid == 1 and records == [r for r in kept if r["meta"]["line"] != line]


def test_the_byte_bound_holds_for_the_qwen_tokenizer(tokenizer):
    """A token is at most MAX_TOKEN_BYTES bytes of NFC text: the bound that rejects a huge line untokenized."""
    from tokenizers.normalizers import NFC

    from kospi_ft.data.reasoning_logs import MAX_TOKEN_BYTES

    assert isinstance(tokenizer.backend_tokenizer.normalizer, NFC)
    special = {t.content for t in tokenizer.added_tokens_decoder.values()}
    # A byte-level BPE token spells one byte per character; special tokens are literal text.
    assert max(len(t.encode()) if t in special else len(t) for t in tokenizer.get_vocab()) == MAX_TOKEN_BYTES


def test_valid_decisions_that_break_the_strategy_rules_are_counted_not_dropped(tmp_path, example_lines, store):
    line = copy.deepcopy(next(x for x in example_lines if x["task"] == "regime_classification"))
    line["decision"]["exposure"] = 1.0 if line["decision"]["regime"] == "BEAR" else 0.0  # outside the band
    records, report = read_logs(_write(tmp_path, [line]), store)
    assert len(records) == 1 and report.rule_violations == 1


def test_mix_keeps_the_synthetic_set_and_reaches_the_ratio():
    synthetic = generate(60, seed=1)
    # 2024: train days from January, the embargo before the August eval month (from 21 June), then August.
    days = [dt.date(2024, 1, 2) + dt.timedelta(i) for i in range(240)]
    train_days = [d for d in days if date_split(d) == "train"][:4]
    embargo_day = next(d for d in days if date_split(d) == "embargo")
    eval_day = next(d for d in days if date_split(d) == "eval")
    assert train_days[-1] < embargo_day < eval_day
    answer = json.loads(synthetic[0]["messages"][2]["content"])
    logs = [to_record(LogEntry(date=d, task=synthetic[0]["task"], question="질문", context="맥락",
                               reasoning="근거", decision=answer), i, None, 0, _report())
            for i, d in enumerate(train_days + [embargo_day, eval_day], 1)]
    assert [r["meta"]["split"] for r in logs] == ["train"] * 4 + ["embargo", "eval"]
    m = mix(synthetic, logs, 0.25, seed=3)
    assert m.stats["logs"]["in_stage2"] == 20 and len(m.records) == 80  # 60 * 0.25 / 0.75 = 20 = 5 passes of 4
    assert m.stats["logs"]["max_uses_per_record"] == 5
    assert (m.stats["logs"]["train"], m.stats["logs"]["eval"], m.stats["logs"]["embargo"]) == (4, 1, 1)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, (r for r in m.records if r["meta"]["source"] != "log"))) == sorted(map(key, synthetic))
    assert m.records[:60] != synthetic  # shuffled together (seeded)
    assert m.held_out == [logs[-1]] and logs[-1] not in m.records  # an eval date never trains
    assert logs[-2] not in m.records and logs[-2] not in m.held_out  # an embargo date is in neither
    assert mix(synthetic, logs, 0.25, seed=3).records == m.records
    assert mix(synthetic, [], 0.25, seed=3).records == synthetic  # no logs: the synthetic set as it is
    few = mix(synthetic, logs, 0.05, seed=3)  # 60 * 0.05 / 0.95 -> 3 of the 4 train logs, none twice
    assert few.stats["logs"]["in_stage2"] == 3 and few.stats["logs"]["max_uses_per_record"] == 1


def _report():
    from kospi_ft.data.reasoning_logs import LogReport

    return LogReport()


class _Echo:
    """A test backend answering every prompt with a fixed text."""

    description = "echo"

    def __init__(self, text: str):
        self.text = text

    def generate(self, messages, max_new_tokens, seed=None, schema=None) -> Generation:
        return Generation(text=self.text, latency_s=0.01, prompt_tokens=1, completion_tokens=1)

    def close(self) -> None:
        pass


def _stage_workdir(tmp_path, store) -> Path:
    work = tmp_path / "work"
    shutil.copytree(ROOT / "data/logs", work / "data/logs")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    records = generate(60, seed=5, start_date=dt.date(2020, 1, 1), end_date=dt.date(2025, 12, 31))
    (work / "data/synthetic").mkdir(parents=True)
    (work / "data/synthetic/train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                             for r in records), encoding="utf-8")
    store.save(work / "data/snapshots")
    return work


def _run(work, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.stage2_data", *args], cwd=work, env=env,
                          capture_output=True, text=True)


def test_stage_end_to_end_on_the_example_then_rouge_against_the_reasoning(tmp_path, store, example_lines):
    work = _stage_workdir(tmp_path, store)
    r = _run(work)
    assert r.returncode == 0, r.stderr
    stats = json.loads((work / "metrics/stage2_data.json").read_text())
    train = [json.loads(x) for x in (work / "data/stage2/train.jsonl").read_text().splitlines()]
    logs = stats["logs"]
    assert stats["logs_file"] == "data/logs/example.jsonl" and logs["valid"] == 20
    # example.jsonl's dates: 2022-12-06 and 2025-06-02 in eval months; 2020-04-24, 2022-10-25, 2023-02-09,
    # 2024-06-24, 2025-07-11 and 2025-07-25 within 41 days of an eval month (embargo); 12 train.
    assert (logs["train"], logs["eval"], logs["embargo"]) == (12, 2, 6)
    assert logs["in_stage2"] == 7 == sum(x["meta"]["source"] == "log" for x in train)  # 60 * 0.1 / 0.9 -> 7
    assert stats["records"] == len(train) == 67

    held_out = load_eval_set(work / "data/stage2/logs_eval.jsonl")
    reasonings = {x["reasoning"] for x in example_lines}
    assert len(held_out) == 2 and all(e.rouge_reference in reasonings for e in held_out)
    # ROUGE-L is against the reasoning: a reply that repeats it scores 1, the decision JSON itself less.
    same = evaluate(_Echo(held_out[0].rouge_reference), held_out[:1], max_new_tokens=8, rouge=True, progress=False)
    assert same.metrics["rouge"]["l_f1_mean"] == 1.0
    answer = evaluate(_Echo(held_out[0].reference), held_out[:1], max_new_tokens=8, rouge=True, progress=False)
    assert answer.metrics["rouge"]["l_f1_mean"] < 1.0 and answer.metrics["schema"]["compliance_rate"] == 1.0

    # logs: null -> the synthetic set byte for byte, nothing held out
    assert _run(work, "--no-logs").returncode == 0
    assert (work / "data/stage2/train.jsonl").read_bytes() == (work / "data/synthetic/train.jsonl").read_bytes()
    assert (work / "data/stage2/logs_eval.jsonl").read_text() == ""


def test_stage_errors_write_nothing_and_the_logs_file_must_be_tracked(tmp_path, store, example_lines):
    work = _stage_workdir(tmp_path, store)
    assert _run(work, "--help").returncode == 0
    broken = copy.deepcopy(example_lines)
    broken[4]["decision"]["regime"] = "SIDEWAYS"
    _write(work / "data/logs", broken, "mine.jsonl")
    params.update(work / "params.yaml", "stage2_data.logs", "data/logs/mine.jsonl")
    r = _run(work)
    assert r.returncode == 2 and "data/logs/mine.jsonl:5: decision.regime: Input should be" in r.stderr
    assert not (work / "data/stage2").exists() and not (work / "metrics").exists()
    assert _run(work, "--skip-invalid").returncode == 0
    assert json.loads((work / "metrics/stage2_data.json").read_text())["logs"]["skipped_invalid"] == 1
    shutil.copy(EXAMPLE, tmp_path / "elsewhere.jsonl")
    params.update(work / "params.yaml", "stage2_data.logs", str(tmp_path / "elsewhere.jsonl"))
    r = _run(work)
    assert r.returncode == 2 and "stage2_data.logs" in r.stderr and "outside paths.logs_dir" in r.stderr
    assert _run(work, "--logs", str(tmp_path / "elsewhere.jsonl")).returncode == 0  # by hand: anywhere
