"""``--where`` expressions → a Chroma ``where`` filter.

    category=cats            equal
    category=cats,dogs       any of
    category!=food           not equal (``!=a,b``: none of)
    width>=640               numeric: > >= < <=
Several expressions are ANDed. For = and != a number-looking value matches both the number and
the text (``year=2019`` finds the number 2019 and a folder named "2019").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_EXPR = re.compile(r"^\s*([A-Za-z_][\w.:-]*)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")
_OPS = {">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}


class FilterError(ValueError):
    """A malformed ``--where`` expression."""


def _value(text: str) -> str | int | float:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_one(expr: str) -> dict[str, Any]:
    m = _EXPR.match(expr)
    if not m:
        raise FilterError(
            f"cannot read --where {expr!r}: expected KEY=VALUE, KEY=V1,V2, KEY!=VALUE or KEY>=NUMBER (also >, <, <=)"
        )
    key, op, raw = m.groups()
    if raw == "":
        raise FilterError(f"--where {expr!r} has no value after {op!r}")
    if op in _OPS:
        value = _value(raw)
        if isinstance(value, str):
            raise FilterError(f"--where {expr!r}: {op} needs a number, got {raw!r}")
        return {key: {_OPS[op]: value}}
    texts = [v.strip() for v in raw.split(",") if v.strip()]
    if not texts:
        raise FilterError(f"--where {expr!r} has no value after {op!r}")
    # a number-looking value may be stored as a number (width) or as text (a folder named 2019)
    values: list[str | int | float] = [*texts, *(v for v in map(_value, texts) if not isinstance(v, str))]
    if len(values) == 1:
        return {key: {"$eq" if op == "=" else "$ne": values[0]}}
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if not isinstance(v, str)]
    parts = [{key: {"$in" if op == "=" else "$nin": group}} for group in (strings, numbers) if group]
    return parts[0] if len(parts) == 1 else {"$or" if op == "=" else "$and": parts}


def parse_where(exprs: Sequence[str] | None) -> dict[str, Any] | None:
    """All expressions ANDed into one Chroma filter; None when there are none."""
    clauses = [parse_one(e) for e in exprs or []]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
