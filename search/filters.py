"""``--where`` expressions → a Chroma ``where`` filter.

    category=cats            equal
    category=cats,dogs       any of
    category!=food           not equal (``!=a,b``: none of)
    width>=640               numeric: > >= < <=
Several expressions are ANDed. For = and != a number-looking value matches both the number and
the text (``year=2019`` finds the number 2019 and a folder named "2019").

Expressions come from strangers (``imgsearch serve`` parses them before anything else), so parsing is
linear in the input and bounded: an expression's length, the number of expressions and of values are
capped and checked first; a number the store cannot hold (inf, nan, 1e999, integers beyond 64 bits)
is refused in a comparison and taken as text only after = and !=.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

MAX_CHARS = 4096  # one expression: room for a long list of folder names
MAX_EXPRESSIONS = 32  # ANDed in one filter
MAX_VALUES = 256  # in one KEY=V1,V2,... list
INT64 = 2**63  # Chroma keeps integers as 64-bit
# KEY OP, anchored at the start; nothing after the operator is matched by a regex. Every way this can
# fail is found in one pass (a key character is never whitespace or an operator), so it is linear.
_HEAD = re.compile(r"\s*([A-Za-z_][\w.:-]*)\s*(!=|>=|<=|=|>|<)")
_OPS = {">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}
_SHOWN = 80  # characters of an expression quoted in an error


class FilterError(ValueError):
    """A malformed ``--where`` expression."""


def _shown(expr: str) -> str:
    """``expr`` quoted for a one-line error, cut short: an error must not echo a megabyte back."""
    return repr(expr) if len(expr) <= _SHOWN else f"{expr[:_SHOWN]!r}... ({len(expr):,} characters)"


def _number(text: str) -> int | float | None:
    """The number ``text`` spells (as ``int()``, else ``float()``, reads it), or None."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None


def _storable(value: int | float) -> bool:
    """Whether Chroma can compare with ``value``: finite, and a 64-bit integer if an integer."""
    return -INT64 <= value < INT64 if isinstance(value, int) else math.isfinite(value)


def _split(expr: str) -> tuple[str, str, str]:
    """``KEY OP VALUE`` → its three parts, the value stripped."""
    m = _HEAD.match(expr)
    raw = expr[m.end() :].strip() if m else ""
    if not m or "\n" in raw:  # a value is one line
        raise FilterError(
            f"cannot read --where {_shown(expr)}: expected KEY=VALUE, KEY=V1,V2, KEY!=VALUE or KEY>=NUMBER "
            "(also >, <, <=)"
        )
    key, op = m.groups()
    if raw == "":
        raise FilterError(f"--where {_shown(expr)} has no value after {op!r}")
    return key, op, raw


def parse_one(expr: str) -> dict[str, Any]:
    """One expression → its Chroma filter; FilterError says what is wrong with it."""
    if len(expr) > MAX_CHARS:
        raise FilterError(f"--where {_shown(expr)} is too long: at most {MAX_CHARS:,} characters an expression")
    if not expr.isascii():
        try:
            expr.encode()
        except UnicodeEncodeError:  # a lone surrogate: from bytes that were not UTF-8 (argv, a form field)
            raise FilterError(f"--where {_shown(expr)} is not valid text (not UTF-8)") from None
    key, op, raw = _split(expr)
    if op in _OPS:
        value = _number(raw)
        if value is None:
            raise FilterError(f"--where {_shown(expr)}: {op} needs a number, got {_shown(raw)}")
        if not _storable(value):
            raise FilterError(
                f"--where {_shown(expr)}: {op} needs a finite number (integers within ±2^63), got {_shown(raw)}"
            )
        return {key: {_OPS[op]: value}}
    texts = [v.strip() for v in raw.split(",") if v.strip()]
    if not texts:
        raise FilterError(f"--where {_shown(expr)} has no value after {op!r}")
    if len(texts) > MAX_VALUES:
        raise FilterError(f"--where {_shown(expr)} lists {len(texts):,} values: at most {MAX_VALUES} an expression")
    # a number-looking value may be stored as a number (width) or as text (a folder named 2019)
    numbers = [n for n in map(_number, texts) if n is not None and _storable(n)]
    values: list[str | int | float] = [*texts, *numbers]
    if len(values) == 1:
        return {key: {"$eq" if op == "=" else "$ne": values[0]}}
    # Chroma takes one type per list: texts, integers and decimals each get their own
    groups = [[v for v in values if type(v) is kind] for kind in (str, int, float)]
    parts = [{key: {"$in" if op == "=" else "$nin": group}} for group in groups if group]
    return parts[0] if len(parts) == 1 else {"$or" if op == "=" else "$and": parts}


def parse_where(exprs: Sequence[str] | None) -> dict[str, Any] | None:
    """All expressions ANDed into one Chroma filter; None when there are none."""
    exprs = list(exprs or [])
    if len(exprs) > MAX_EXPRESSIONS:
        raise FilterError(f"{len(exprs):,} --where expressions: at most {MAX_EXPRESSIONS} are ANDed")
    clauses = [parse_one(e) for e in exprs]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
