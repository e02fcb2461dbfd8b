"""Fuzzing the ``--where`` grammar (issue 22): any text parses, in bounded time, to a filter a real Chroma
collection accepts, or to a FilterError; never another exception. Every form the old regex accepted
still means the same."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import chromadb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsearch.core.where import matches
from imgsearch.search.filters import MAX_CHARS, MAX_EXPRESSIONS, MAX_VALUES, FilterError, _split, parse_where

# the grammar before issue 22: quadratic on a long run of spaces, so only short inputs are compared with it
OLD = re.compile(r"^\s*([A-Za-z_][\w.:-]*)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")
PIECES = ["=", "!=", ">=", "<=", ">", "<", ",", " ", "\t", "\n", "\r", "\u00a0", "\u2028", "\u3000", "-", ".", ":"]
PIECES += ["_", "a", "Z", "7", "é", "猫", "٣", "1e5", "1_000", "inf", "-nan", "1e999", "2.5", "\x00", "\udcff"]
TEXT = st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=30).map("".join)
MB = 1024 * 1024
SLOW = 0.5  # seconds: ample for a linear parse of a megabyte; the old grammar took 1.6 s on 16 kB


@pytest.fixture(scope="module")
def collection() -> chromadb.Collection:
    """A real (in-memory) Chroma collection with numbers and texts under the same key."""
    col = chromadb.EphemeralClient().get_or_create_collection(f"fuzz{time.monotonic_ns()}")
    metas = [{"a": 5, "b": "x"}, {"a": "5", "b": 2.5}, {"a": -1.5, "Z": "é"}]
    col.add(ids=["0", "1", "2"], embeddings=[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], metadatas=metas)
    return col


def _check(exprs: list[str], collection: chromadb.Collection) -> None:
    """The contract: a filter Chroma runs, or a FilterError with a one-line message; fast either way."""
    started = time.perf_counter()
    try:
        where = parse_where(exprs)
    except FilterError as err:
        assert "\n" not in str(err) and len(str(err)) < 1000, str(err)[:300]
        return
    finally:
        assert time.perf_counter() - started < SLOW, [e[:40] for e in exprs]
    if where is not None:
        collection.get(where=where)  # raises on anything Chroma would refuse
        matches({"a": 5}, where)


@given(exprs=st.lists(TEXT, max_size=4))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_is_a_filter_chroma_runs_or_a_filter_error(exprs: list[str], collection: chromadb.Collection) -> None:
    _check(exprs, collection)


@given(TEXT)
@settings(max_examples=400, deadline=None)
def test_every_form_the_old_grammar_read_is_read_the_same(expr: str) -> None:
    old = OLD.match(expr)
    try:
        new = _split(expr)
    except FilterError:
        new = None
    if old is None or old[3] == "":
        assert new is None, expr
    else:
        assert new == old.groups(), expr


def adversarial() -> Iterator[list[str]]:
    """Long inputs shaped to make a backtracking parser work hard, around and far beyond the caps."""
    for n in (MAX_CHARS - 4, MAX_CHARS + 1, MB):
        yield ["a=x" + " " * n + "y"]
        yield [" " * n]
        yield ["a" * n]
        yield ["a" + " " * n + "=b"]
        yield ["a=" + "," * n]
        yield ["a>=" + "9" * n]
        yield ["a=" + "1," * (n // 2)]
        yield ["a=" + "\n " * (n // 2) + "b"]
    yield ["a=b"] * (MAX_EXPRESSIONS + 1)
    yield ["a=" + ",".join("v" * 10 for _ in range(MAX_VALUES + 1))]


@pytest.mark.parametrize("exprs", list(adversarial()), ids=lambda e: f"{len(e)}x{len(e[0])}:{e[0][:6]!r}")
def test_adversarial_inputs_are_refused_or_read_quickly(exprs: list[str], collection: chromadb.Collection) -> None:
    _check(exprs, collection)


def test_caps_and_non_finite_numbers_are_refused_with_a_clear_message() -> None:
    for expr, says in (
        ("width>=inf", "finite number"),
        ("width<-Infinity", "finite number"),
        ("width>nan", "finite number"),
        ("width<=1e999", "finite number"),
        (f"width>={2**63}", "finite number"),
        ("a=x" + " " * MB + "y", f"at most {MAX_CHARS:,} characters"),
        ("a=" + "v," * (MAX_VALUES + 1), f"at most {MAX_VALUES}"),
        ("a=\udcff", "not valid text"),
    ):
        with pytest.raises(FilterError, match=says) as err:
            parse_where([expr])
        assert len(str(err.value)) < 300  # a long input is not echoed back whole
    with pytest.raises(FilterError, match=f"at most {MAX_EXPRESSIONS}"):
        parse_where(["a=b"] * (MAX_EXPRESSIONS + 1))
    # after = and != such a value is a text (a folder may be named "inf"), never a number Chroma refuses
    assert parse_where(["name=inf"]) == {"name": {"$eq": "inf"}}
    assert parse_where([f"n!=nan,{2**63}"]) == {"n": {"$nin": ["nan", str(2**63)]}}
    # integers and decimals in one list: one list per type, as Chroma needs
    assert parse_where(["w=1,2.5"]) == {
        "$or": [{"w": {"$in": ["1", "2.5"]}}, {"w": {"$in": [1]}}, {"w": {"$in": [2.5]}}]
    }
