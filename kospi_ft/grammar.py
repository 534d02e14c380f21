"""A llama.cpp grammar (GBNF) from an answer's JSON schema (`kospi_ft.json_schema`), for guided decoding.

llama-cpp-python's converter (a port of llama.cpp's json-schema-to-grammar) carries required fields, no extra
fields, enums, consts, anyOf, maxItems and string patterns, but no number or integer range. `RangeConverter` adds
them: a number with `minimum`/`maximum` (exclusive or not) becomes digits that can only spell a value inside, with
at most FRACTION_DIGITS decimals and no exponent (generated answers use at most 4 decimals), so `weight` cannot be
1.5 and `stop_loss` cannot be 0. A range the digit construction does not cover (a positive lower bound, a negative
upper bound, a bound with more decimals) falls back to a plain number, left to validation.

`gbnf` runs only in a llama.cpp process (`kospi_ft.llama_process`): `llama_cpp` loads llama.cpp's native
libraries on import. From anywhere else: `llama_process.call("kospi_ft.grammar:gbnf", schema=...)`. The range
construction (`range_rule`) is plain Python and imports nothing of llama.cpp.
"""
from __future__ import annotations

import decimal
from typing import Any

FRACTION_DIGITS = 4      # decimals a guided number may have
INTEGER_DIGITS = 9       # digits of an unbounded integer part (a KRW price is at most 7)


def _digit_class(lo: int, hi: int) -> str:
    return f"[{lo}]" if lo == hi else f"[{lo}-{hi}]"


def _fixed_range(a: str, b: str) -> str:
    """Strings of len(a) == len(b) digits between a and b (digit-wise, inclusive)."""
    if not a:
        return ""
    if a[0] == b[0]:
        rest = _fixed_range(a[1:], b[1:])
        return f'"{a[0]}"' + (f" {rest}" if rest else "")
    n = len(a) - 1
    lo, hi = int(a[0]), int(b[0])
    if n == 0:
        return _digit_class(lo, hi)
    alts = [f'"{a[0]}" ({_fixed_range(a[1:], "9" * n)})']
    if hi - lo > 1:
        alts.append(f"{_digit_class(lo + 1, hi - 1)} [0-9]{{{n}}}")
    alts.append(f'"{b[0]}" ({_fixed_range("0" * n, b[1:])})')
    return "(" + " | ".join(alts) + ")"


def _int_range(lo: int, hi: int) -> str | None:
    """Integers lo..hi (0 <= lo), written without leading zeros."""
    alts = []
    for length in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = min(hi, 10 ** length - 1)
        if a <= b:
            alts.append(_fixed_range(str(a), str(b)))
    return "(" + " | ".join(alts) + ")" if alts else None


def _fraction(bound: str | None, strict: bool, need_nonzero: bool, digits: int) -> str | None:
    """Fraction digits (1..digits of them) whose zero-padded value is <= bound's (< when strict; any when bound is
    None), with a nonzero digit when need_nonzero. None when no such digit string exists."""
    def gen(p: int, tight: bool, need: bool) -> str | None:
        if p == digits:
            return None
        if not tight:
            groups = [("0", False, need), ("[1-9]", False, False)]   # (chars, still tight, still needs nonzero)
        else:
            top = int(bound[p])
            groups = [("0", top == 0, need)]
            if top > 1:
                groups.append((_digit_class(1, top - 1), False, False))
            if top > 0:
                groups = [("0", False, need), *groups[1:], (str(top), True, False)]
        alts = []
        for chars, t, n in groups:
            chars = chars if chars.startswith("[") else f'"{chars}"'
            can_end = not n and (not t or not strict or any(c != "0" for c in bound[p + 1:]))
            rest = gen(p + 1, t, n)
            if rest is None and not can_end:
                continue
            alts.append(chars + ("" if rest is None else f" ({rest})?" if can_end else f" ({rest})"))
        return " | ".join(alts) or None

    return gen(0, bound is not None, need_nonzero)


def _magnitude(bound: decimal.Decimal | None, strict: bool, need_nonzero: bool, digits: int) -> str | None:
    """|x| <= bound (< when strict; unbounded when None), nonzero when need_nonzero, as JSON digits."""
    if bound is not None:
        whole, _, frac = f"{bound:f}".partition(".")
        frac = frac.rstrip("0")
        if len(frac) > digits:
            return None
        frac = frac.ljust(digits, "0")
        top = int(whole)
    free = f' ("." [0-9]{{1,{digits}}})?' if digits else ""

    def tail(bnd: str | None, strict_: bool, need: bool) -> str | None:
        """The optional '.digits' after an integer part; None when nothing may follow it and it may not end."""
        body = _fraction(bnd, strict_, need, digits) if digits else None
        eps = not need and (bnd is None or not strict_ or any(c != "0" for c in bnd))
        if body is None:
            return "" if eps else None
        return f' ("." ({body}))?' if eps else f' "." ({body})'

    alts = []
    zero = tail(frac if bound is not None and top == 0 else None, strict and bound is not None and top == 0,
                need_nonzero)
    if zero is not None:
        alts.append('"0"' + zero)
    if bound is None:
        alts.append(f"[1-9] [0-9]{{0,{INTEGER_DIGITS - 1}}}" + free)
    elif top >= 1:
        below = _int_range(1, top - 1)
        if below:
            alts.append(below + free)
        at = tail(frac, strict, False)
        if at is not None:
            alts.append(f'"{top}"' + at)
    return "(" + " | ".join(alts) + ")" if alts else None


def range_rule(schema: dict[str, Any]) -> str | None:
    """The GBNF body of a number/integer schema with bounds, or None when it has none or they are not covered."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    lo_x, hi_x = "exclusiveMinimum" in schema, "exclusiveMaximum" in schema
    lo = schema["exclusiveMinimum"] if lo_x else lo
    hi = schema["exclusiveMaximum"] if hi_x else hi
    if lo is None and hi is None:
        return None
    if schema.get("type") == "integer" and lo is not None and lo >= 0:   # step >= 1
        first = int(lo) + 1 if lo_x else int(decimal.Decimal(repr(float(lo))).to_integral_value(decimal.ROUND_CEILING))
        last = 10 ** INTEGER_DIGITS - 1 if hi is None else int(hi) - (1 if hi_x and int(hi) == hi else 0)
        body = _int_range(first, last)
        return None if body is None else f"{body} space"
    if (lo is not None and lo > 0) or (hi is not None and hi < 0):
        return None
    digits = FRACTION_DIGITS if schema.get("type") == "number" else 0
    dec = (lambda v: None if v is None else decimal.Decimal(repr(float(v))).copy_abs())
    alts = []
    if hi is None or hi > 0 or not hi_x:
        pos = _magnitude(dec(hi), hi_x, lo == 0 and lo_x, digits)
        if pos is None:
            return None
        alts.append(pos)
    if lo is None or lo < 0:
        neg = _magnitude(dec(lo), lo_x, True, digits)
        if neg is None:
            return None
        alts.append(f'"-" {neg}')
    return "(" + " | ".join(alts) + ") space"


def _converter():
    """llama-cpp-python's JSON-schema converter plus number and integer ranges (`range_rule`)."""
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class RangeConverter(SchemaConverter):
        def visit(self, schema, name):
            if isinstance(schema, dict) and schema.get("type") in ("number", "integer"):
                rule = range_rule(schema)
                if rule is not None:
                    return self._add_rule(name + "-" if name in RESERVED_NAMES else name or "root", rule)
            return super().visit(schema, name)

    return RangeConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def gbnf(schema: dict[str, Any]) -> str:
    """The GBNF grammar (root rule `root`) whose sentences are JSON texts valid under `schema` (see the module)."""
    converter = _converter()
    converter.visit(converter.resolve_refs(schema, ""), "")
    return converter.format_grammar()
