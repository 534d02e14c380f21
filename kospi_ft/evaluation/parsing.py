"""Take the JSON object out of a model's reply, however it was wrapped.

Models answer in three shapes: the bare object (what the training data teaches), the object inside a Markdown
fence (```json ... ```), or the object with prose around it. `extract_json` accepts all three and records which
one it needed, so the metrics can tell "valid JSON" apart from "valid JSON once unwrapped". It never raises:
anything that is not a JSON object after unwrapping comes back as `Extraction(data=None, ...)` with the reason.

Strict JSON only: `NaN`/`Infinity` literals are rejected (they are not JSON and would slip through range
checks), and so are numbers that only parse to infinity (`1e400`) and numbers Python refuses to convert (an
integer of more than 4,300 digits).
"""
from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: Outputs longer than this are cut before parsing: a reply this long is garbage, and the embedded scan below
#: is quadratic in the worst case (many unbalanced braces).
MAX_CHARS = 200_000
#: At most this many top-level `{` positions are tried in prose; each try is linear in the remaining text.
MAX_CANDIDATES = 64

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n?(.*?)```", re.DOTALL)


class Method(str, enum.Enum):
    """How the object was found. DIRECT is the only one that needed no unwrapping."""

    DIRECT = "direct"
    FENCED = "fenced"
    EMBEDDED = "embedded"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Extraction:
    data: dict | None
    method: Method
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.data is not None

    @property
    def unwrapped(self) -> bool:
        """True when the object was only found after removing a fence or surrounding prose."""
        return self.method in (Method.FENCED, Method.EMBEDDED)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf: a range check would compare against infinity
        raise ValueError(f"number {text[:40]} is out of range (parses to {value})")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _loads_object(text: str) -> tuple[dict | None, str | None]:
    """Parse `text` as exactly one JSON object. Returns (object, None) or (None, reason)."""
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError; so is int-digit overflow
        return None, f"{type(err).__name__}: {err}"[:200]
    if not isinstance(value, dict):
        return None, f"top-level JSON is {type(value).__name__}, not an object"
    return value, None


def _top_level_braces(text: str) -> list[int]:
    """Positions of `{` that open a brace group at depth 0, skipping braces inside JSON strings.

    Only depth-0 positions are tried, so a truncated object is reported as broken instead of a nested object
    inside it being passed off as the answer. Quotes are tracked only inside braces: prose quotes at depth 0
    ("he said "x"") must not flip the string state. The price: an unbalanced `{` in prose before the answer
    puts the answer at depth 1, and the reply counts as invalid.
    """
    starts: list[int] = []
    depth = 0
    in_string = False
    escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == "{":
            if depth == 0:
                starts.append(i)
                if len(starts) >= MAX_CANDIDATES:
                    break
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
        elif ch == '"' and depth > 0:
            in_string = True
    return starts


def _scan_embedded(text: str) -> tuple[dict | None, str | None]:
    """The first JSON object that starts at a top-level `{` in `text` (prose around it is ignored)."""
    last_error = "no '{' found"
    for start in _top_level_braces(text):
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError) as err:
            last_error = f"{type(err).__name__}: {err}"[:200]
            continue
        if isinstance(value, dict):
            return value, None
    return None, last_error


def extract_json(text: Any) -> Extraction:
    """The JSON object in a model reply: bare, fenced (```json / ``` / nested fences) or inside prose."""
    if not isinstance(text, str):
        return Extraction(None, Method.NONE, f"reply is {type(text).__name__}, not text")
    text = text[:MAX_CHARS].strip()
    if not text:
        return Extraction(None, Method.NONE, "empty reply")

    data, error = _loads_object(text)
    if data is not None:
        return Extraction(data, Method.DIRECT)

    # Fenced blocks, in order. A block's content may itself hold prose or another fence opener
    # ("```json\n```json\n{...}```"), so each block gets the embedded scan too.
    for match in _FENCE.finditer(text):
        body = match.group(2).strip()
        data, _ = _loads_object(body)
        if data is None:
            data, _ = _scan_embedded(body)
        if data is not None:
            return Extraction(data, Method.FENCED)

    data, scan_error = _scan_embedded(text)
    if data is not None:
        # Unbalanced or nested fences defeat the block regex; the object is still fence-wrapped.
        return Extraction(data, Method.FENCED if "```" in text else Method.EMBEDDED)
    return Extraction(None, Method.NONE, scan_error if "{" in text else error)
