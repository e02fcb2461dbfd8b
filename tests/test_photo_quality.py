"""Quality guards on photographs: the shipped default on the team's photo development sets.

The sets live beside the checkout in ``../shared/datasets`` (see its README); outside this team
they are absent and these tests skip with a message. Floors sit a small margin below the figures
measured when the default was chosen (docs/quality.md), so a regression fails CI; the rule that
chose the default (vs the handout's recipe) is checked by ``bench/variants.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MODEL, REPO, copy_library, run_cli, run_json

DATASETS = REPO.parent / "shared" / "datasets"
CALTECH = DATASETS / "caltech101-dev"
HOLIDAYS = DATASETS / "holidays-dev"
# (measured with the balanced preset on EfficientNet-Lite0, docs/quality.md) minus a small margin
FLOORS = {
    "category": {"mAP": 0.655, "P@5": 0.81, "copies": 0.97},  # measured 0.664, 0.824, 0.986
    # measured 0.775, 0.773, 0.976; 150 queries ranked through an approximate (HNSW) index, where one
    # query more or less moves P@1 by 0.007: mAP stays above the handout's 0.758. Copies are drawn by
    # content hash, so the same sample is measured wherever the set lies (docs/quality.md)
    "instance": {"mAP": 0.76, "P@1": 0.74, "copies": 0.96},
}


def _needs(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"photo development set {path} is absent (it sits beside the team's checkout)")


def _check(res: dict, floors: dict[str, float]) -> None:
    print(res["overall"], res["copies"]["mean_rank1"], res["ingest"])
    assert res["model"]["preset"] == "balanced" and res["expand"] == 2
    for metric, floor in floors.items():
        value = res["copies"]["mean_rank1"] if metric == "copies" else res["overall"][metric]
        assert value >= floor, (metric, value, floor)


def test_fast_preset_keeps_the_default_quality() -> None:
    """int8 (the fast preset, measured 0.771) against fp32 (balanced, 0.775) on instance search."""
    _needs(HOLIDAYS)
    args = ("eval", HOLIDAYS / "library", "--queries", HOLIDAYS / "queries", "--model", MODEL, "--verify", "0")
    (res,) = run_json(*args, "--features", "fast")
    assert res["model"]["preset"] == "fast" and res["model"]["backend"] == "int8"
    assert res["overall"]["mAP"] >= FLOORS["instance"]["mAP"], res["overall"]


def test_default_on_instance_search() -> None:
    _needs(HOLIDAYS)
    (res,) = run_json("eval", HOLIDAYS / "library", "--queries", HOLIDAYS / "queries", "--model", MODEL, "--copies")
    assert res["mode"] == "held-out" and res["queries"] == 150
    _check(res, FLOORS["instance"])
    # the pixels of the best 20 verified (the search's default): measured 0.847 and 1.000 (docs/quality.md)
    verified = res["verified"]
    assert verified["candidates"] == 20 and verified["overall"]["mAP"] >= 0.83, verified["overall"]
    assert verified["copies"]["mean_rank1"] >= res["copies"]["mean_rank1"] - 0.005, verified["copies"]


def test_default_on_category_search() -> None:
    _needs(CALTECH)
    (res,) = run_json("eval", CALTECH, "--model", MODEL, "--copies", "--verify", "0")
    assert res["mode"] == "leave-one-out" and res["queries"] == 3000
    _check(res, FLOORS["category"])


def test_verification_leaves_category_search_as_it_was() -> None:
    """The rule that turned verification on: category mAP not worse by more than 0.005 (a seeded sample of
    leave-one-out queries; bench/verify.py measures 600: 0.6716 either way)."""
    _needs(CALTECH)
    (res,) = run_json("eval", CALTECH, "--model", MODEL, "--sample", "200", "--verify", "20")
    assert res["queries"] == res["verified"]["queries"] == 200
    assert res["verified"]["overall"]["mAP"] >= res["overall"]["mAP"] - 0.005, (res["verified"], res["overall"])


def test_presets_are_recorded_and_decide_the_search(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=3)
    for preset, expand, pooling in (("handout", 0, "avg"), ("balanced", 2, "gem2")):
        db = tmp_path / preset
        run_json("ingest", lib, "--db", db, "--model", MODEL, "--features", preset)
        (stats,) = run_json("stats", "--db", db)
        fp = stats["model"]
        assert (fp["preset"], fp["expand"], fp["pooling"], fp["crop"], fp["scales"]) == (
            preset,
            expand,
            pooling,
            "center",
            [224],
        )
        searched = run_cli("search", next(lib.rglob("*.jpg")), "--db", db, "-k", "2")
        assert searched.returncode == 0
        assert ("expanded with its 2 nearest" in searched.stdout) == (expand == 2)
    # an expert flag that leaves the preset's settings is recorded as such
    custom = tmp_path / "custom"
    run_json("ingest", lib, "--db", custom, "--model", MODEL, "--features", "balanced", "--crop", "full")
    (stats,) = run_json("stats", "--db", custom)
    assert stats["model"]["preset"] == "custom" and stats["model"]["crop"] == "full"
    bad = run_cli("ingest", lib, "--db", tmp_path / "bad", "--model", MODEL, "--features", "best")
    assert bad.returncode == 1 and "unknown feature preset 'best'" in bad.stderr and "Traceback" not in bad.stderr
