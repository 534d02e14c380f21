"""One JSON schema per task, derived from the pydantic answer models of `kospi_ft.schema` (the single source of
truth) and the universe: what a serving engine (llama.cpp grammar, Ollama `format`, llama-server
`json_schema`) constrains decoding with, and what a trading system validates a reply against.

    python -m kospi_ft.json_schema full_analysis          # print one task's schema
    write_schemas(dir)                                    # <dir>/<task>.json for every task (the export does this)

What the schema carries beyond pydantic's own `model_json_schema()`:
- tickers as an enum of the universe's codes; sectors as an enum of its sectors;
- a position's ticker/name pair drawn from the universe's pairs (`anyOf` of one `{ticker: const, name: const}`
  object per stock), so "name does not belong to ticker" cannot be generated;
- the hallucination ceilings (PER, PBR, EV/EBITDA, leverage) as `maximum`;
- Korean text as a `pattern` (`korean_pattern`): a Hangul syllable within the first KOREAN_PREFIX_CHARS + 1
  characters, no `"`, backslash or control character (so a grammar's character-level pattern means the same as
  the JSON-level one, whatever converter reads it), at most the model's max_length characters.
What it cannot carry stays a metric: the strategy rules (`kospi_ft.strategy`: regime -> exposure band, stops,
weights summing to at most the exposure, ...), the quality floors (`schema.quality_issues`).
Texts are stricter here than in pydantic (no quotes, backslashes or control characters; an early Hangul): every
generated answer meets both.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from . import atomic
from .data.universe import SECTORS, UNIVERSE
from .schema import RESPONSE_MODELS, Position, TaskType, _check_korean, _check_sector, _check_ticker

#: Non-Hangul characters a text may open with before its first Hangul ("LS ELECTRIC: ...", "KOSPI200 풋옵션").
KOREAN_PREFIX_CHARS = 40
_HANGUL = "가-힣"
_TEXT_CHAR = r'[^"\\\x00-\x1f]'            # a character that needs no JSON escape
_PREFIX_CHAR = r'[^' + _HANGUL + r'"\\\x00-\x1f]'
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def korean_pattern(max_chars: int) -> str:
    """Korean text of at most `max_chars` characters: up to K = min(KOREAN_PREFIX_CHARS, max_chars // 4) other
    characters, a Hangul syllable, then up to max_chars - 1 - K characters. Exact for a regex and a grammar alike
    (no counting across the two parts, which neither can do), at the price of a text that opens in Hangul getting
    K fewer characters than max_chars."""
    prefix = min(KOREAN_PREFIX_CHARS, max_chars // 4)
    return f"^{_PREFIX_CHAR}{{0,{prefix}}}[{_HANGUL}]{_TEXT_CHAR}{{0,{max_chars - 1 - prefix}}}$"


class _Generator(GenerateJsonSchema):
    """pydantic's generator, with the checks pydantic runs as after-validators turned into schema constraints
    (found by the validator function itself, not by a field's name)."""

    def function_after_schema(self, schema) -> dict[str, Any]:
        inner = super().function_after_schema(schema)
        check = schema["function"]["function"]
        if check is _check_ticker:
            return {"type": "string", "enum": sorted(s.code for s in UNIVERSE)}
        if check is _check_sector:
            return {"type": "string", "enum": list(SECTORS)}
        if check is _check_korean:
            return {**inner, "pattern": korean_pattern(inner["maxLength"])}
        if hasattr(check, "maximum"):   # schema._upper_bound: a hallucination ceiling
            return {**inner, "maximum": check.maximum}
        return inner


def _pair_bound(defs: dict[str, dict], model: str) -> None:
    """Replace `model`'s def by one object per stock with ticker and name fixed to that stock's; its other fields
    become defs of their own (`<model>_<field>`, named uniquely: llama.cpp's converter names a $ref's rule by its
    last path segment)."""
    base = defs.pop(model)
    props = base["properties"]
    shared = {}
    for field, sub in props.items():
        if field not in ("ticker", "name"):
            defs[f"{model}_{field}"] = sub
            shared[field] = {"$ref": f"#/$defs/{model}_{field}"}
    variants = []
    for stock in sorted(UNIVERSE, key=lambda s: s.code):
        fixed = {"ticker": {"const": stock.code}, "name": {"const": stock.name_ko}}
        variants.append({"type": "object", "additionalProperties": False, "required": base["required"],
                         "properties": {f: fixed.get(f, shared.get(f)) for f in props}})
    defs[model] = {"title": base.get("title", model), "anyOf": variants}


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's per-field `title`s: they constrain nothing and would double the file."""
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str) and "properties" not in node)}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def task_schema(task: TaskType | str) -> dict[str, Any]:
    """The JSON schema of `task`'s answer (draft 2020-12)."""
    task = TaskType(task)
    model = RESPONSE_MODELS[task]
    schema = model.model_json_schema(ref_template="#/$defs/{model}", schema_generator=_Generator)
    defs = schema.setdefault("$defs", {})
    if Position.__name__ in defs:
        _pair_bound(defs, Position.__name__)
    schema = _strip_titles(schema)
    schema["title"] = task.value
    return {"$schema": SCHEMA_DIALECT, **schema}


def schema_text(task: TaskType | str) -> str:
    """`task_schema` as the bytes written to disk: sorted keys, so the same code writes the same file."""
    return json.dumps(task_schema(task), ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """`<directory>/<task>.json` for every task; the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for task in TaskType:
        path = directory / f"{task.value}.json"
        atomic.write_text(path, schema_text(task))
        out.append(path)
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2 or sys.argv[1] not in {t.value for t in TaskType}:
        sys.exit(f"usage: python -m kospi_ft.json_schema TASK  (one of {', '.join(t.value for t in TaskType)})")
    sys.stdout.write(schema_text(sys.argv[1]))
