"""The one JSONL reader behind the training, DPO-pair and evaluation inputs."""
from __future__ import annotations

import pytest

from kospi_ft.errors import DataValidationError, PipelineError
from kospi_ft.jsonl import read_jsonl


def test_records_keep_their_file_line_numbers(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert read_jsonl(path, what="set", hint="h") == [(1, {"a": 1}), (3, {"a": 2})]
    path.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"x\.jsonl:3: not valid JSON"):
        read_jsonl(path, what="set", hint="h")


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(PipelineError, match=r"nope\.jsonl: SFT set not found \(run it\)"):
        read_jsonl(tmp_path / "nope.jsonl", what="SFT set", hint="run it")
    with pytest.raises(DataValidationError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl", what="eval set", hint="h", missing=DataValidationError)
    (tmp_path / "blank.jsonl").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"blank\.jsonl: eval set is empty"):
        read_jsonl(tmp_path / "blank.jsonl", what="eval set", hint="h")


def test_jsonl_writer_keeps_a_lone_surrogate(tmp_path):
    """A model reply cut inside a UTF-16 pair holds a lone surrogate, which has no UTF-8 form."""
    import json

    from kospi_ft import atomic

    rows = [{"reply": "반\ud800등", "n": 1}, {"reply": "정상", "n": 2}]
    atomic.write_jsonl(tmp_path / "p.jsonl", rows)
    lines = (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert "정상" in lines[1]  # other lines stay readable UTF-8
