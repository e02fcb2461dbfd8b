"""A Chroma ``where`` filter evaluated on one row's metadata, here in the client.

Why: Chroma's own filtered k-NN gets slower with the collection, not with k (measured by
bench/scale.py, docs/scaling.md: a filter matching 50 % of the rows took 306 ms a query at 100k rows
and 6.7 s at 1M, one matching 1 % 162 ms and 874 ms, against 10 ms unfiltered at both sizes).
The store therefore asks the index for the nearest rows unfiltered and keeps those this module
accepts, and only falls back to Chroma's filter when too few of them match
(:meth:`imgsearch.core.store.Store.query`).

Only what ``--where`` produces is evaluated here (``$eq``, ``$in``, ``$gt``/``$gte``/``$lt``/``$lte``,
``$and``, ``$or``, and a bare value for equality), with Chroma's typing: a text never equals a number,
a bool only a bool, a missing key matches nothing. Anything else (``$ne``, ``$nin``, where Chroma's
handling of a missing key decides) is left to Chroma: :func:`supported` says which.
"""

from __future__ import annotations

import operator
from typing import Any

_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
_LOCAL = frozenset({"$eq", "$in", *_ORDER})


def supported(where: dict[str, Any]) -> bool:
    """Whether :func:`matches` evaluates ``where`` exactly as Chroma does."""
    if not isinstance(where, dict) or not where:
        return False
    for key, cond in where.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond or not all(supported(c) for c in cond):
                return False
        elif key.startswith("$"):
            return False
        elif isinstance(cond, dict):
            if len(cond) != 1 or not set(cond) <= _LOCAL:
                return False
        elif not isinstance(cond, str | int | float | bool):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _field(value: Any, cond: Any) -> bool:
    if not isinstance(cond, dict):
        return _same(value, cond)
    ((op, arg),) = cond.items()
    if op == "$eq":
        return _same(value, arg)
    if op == "$in":
        return any(_same(value, a) for a in arg)
    return _number(value) and _number(arg) and bool(_ORDER[op](value, arg))


def matches(meta: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether a row with metadata ``meta`` passes ``where`` (one :func:`supported` by this module)."""
    for key, cond in where.items():
        if key == "$and":
            if not all(matches(meta, c) for c in cond):
                return False
        elif key == "$or":
            if not any(matches(meta, c) for c in cond):
                return False
        elif key not in meta or meta[key] is None or not _field(meta[key], cond):
            return False
    return True
