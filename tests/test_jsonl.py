"""The one JSONL reader behind the training, DPO-pair and evaluation inputs."""
from __future__ import annotations

import sys

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


@pytest.mark.parametrize("line,pattern", [
    ("질문".encode("cp949"), r"x\.jsonl:2: not UTF-8 \(byte 0xc1 at byte 1 of the line\)$"),  # a CP949 file
    (b'{"a": "\xed\xa0\x80"}', r"x\.jsonl:2: not UTF-8 \(byte 0xed at byte 8 of the line\)$"),  # a surrogate
    (b"[" * 100_000, r"x\.jsonl:2: JSON nested too deeply to parse$"),
    (b'{"a": 1' + b"0" * 5000 + b"}", rf"x\.jsonl:2: an integer of more than {sys.get_int_max_str_digits()} digits"),
], ids=["cp949_byte", "encoded_surrogate", "nesting", "long_integer"])
def test_a_line_that_cannot_be_parsed_is_one_error_naming_it_or_skipped(tmp_path, line, pattern):
    """Not a UnicodeDecodeError, RecursionError or int-digits ValueError traceback, and never the whole file."""
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n' + line + '\n{"a": "가"}\n'.encode())
    with pytest.raises(DataValidationError, match=pattern):
        read_jsonl(path, what="set", hint="h")
    skipped = []
    rows = read_jsonl(path, what="set", hint="h", on_bad_line=lambda n, message: skipped.append(n))
    assert rows == [(1, {"a": 1}), (3, {"a": "가"})] and skipped == [2]


def test_line_numbers_stay_those_of_universal_newlines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\r\n{"a": 2}\r{"a": 3}\n')  # read in text mode, as before: \r ends a line too
    assert read_jsonl(path, what="set", hint="h") == [(1, {"a": 1}), (2, {"a": 2}), (3, {"a": 3})]


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
