"""The acceptance path of the core engine, through the real CLI, on embedded and server stores."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import MODEL, QUERIES, copy_library, run_cli, run_json
from PIL import Image


def _summary(lib: Path, store: list[str], *extra: str, ok: tuple[int, ...] = (0,)) -> dict:
    (out,) = run_json("ingest", lib, *store, *extra, ok=ok)
    return out


def test_incremental_ingest_search_and_filters(tmp_path: Path, store_args: list[str]) -> None:
    lib = copy_library(tmp_path / "lib", categories=3, per_category=5)
    cats = sorted(p.name for p in lib.iterdir())
    first = _summary(lib, store_args, "--model", MODEL)
    assert (first["added"], first["failed"], first["embedded"]) == (15, 0, 15)

    # self-query: the image itself ranks first, score > 0.99
    probe = sorted((lib / cats[1]).iterdir())[2]
    (res,) = run_json("search", probe, *store_args, "-k", "5")
    assert res["model"] == MODEL and res["k"] == 5 and res["where"] is None
    top = res["results"][0]
    assert top["path"] == str(probe) and top["rank"] == 1 and top["score"] > 0.99
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    for r in res["results"]:
        assert abs(r["score"] - (1 - r["distance"])) < 1e-5
        assert {"path", "category", "size", "mtime", "sha256", "width", "height", "root"} <= set(r["metadata"])

    # unchanged: nothing added, nothing decoded
    again = _summary(lib, store_args)
    assert (again["added"], again["unchanged"], again["decoded"], again["embedded"]) == (0, 15, 0, 0)

    # modified content -> 1 updated (re-embedded)
    victim = sorted((lib / cats[0]).iterdir())[0]
    with Image.open(victim) as img:
        img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(victim, quality=80)
    changed = _summary(lib, store_args)
    assert (changed["updated"], changed["added"], changed["embedded"]) == (1, 0, 1)

    # renamed -> 1 moved, no model run
    mover = sorted((lib / cats[1]).iterdir())[0]
    mover.rename(mover.with_name("renamed.jpg"))
    moved = _summary(lib, store_args)
    assert (moved["moved"], moved["added"], moved["embedded"], moved["decoded"]) == (1, 0, 0, 0)
    (hit,) = run_json("search", mover.with_name("renamed.jpg"), *store_args, "-k", "1")
    assert hit["results"][0]["path"] == str(mover.with_name("renamed.jpg"))

    # deleted + --prune -> 1 pruned
    sorted((lib / cats[2]).iterdir())[-1].unlink()
    pruned = _summary(lib, store_args, "--prune")
    assert pruned["pruned"] == 1
    (stats,) = run_json("stats", *store_args)
    assert stats["count"] == 14 and sum(stats["categories"].values()) == 14

    # filters: equal, any-of, not-equal, numeric
    query = sorted(QUERIES.iterdir())[0]
    (only,) = run_json("search", query, *store_args, "-k", "20", "--where", f"category={cats[0]}")
    assert only["results"] and {r["category"] for r in only["results"]} == {cats[0]}
    assert only["where"] == {"category": {"$eq": cats[0]}}
    (two,) = run_json("search", query, *store_args, "-k", "20", "--where", f"category={cats[0]},{cats[1]}")
    assert {r["category"] for r in two["results"]} == {cats[0], cats[1]}
    (neq,) = run_json("search", query, *store_args, "-k", "20", "--where", f"category!={cats[0]}")
    assert neq["results"] and cats[0] not in {r["category"] for r in neq["results"]}
    widths = sorted(Image.open(p).width for p in (lib / cats[1]).iterdir())
    cut = widths[len(widths) // 2]
    (wide,) = run_json(
        "search", query, *store_args, "-k", "20", "--where", f"width>={cut}", "--where", f"category={cats[1]}"
    )
    assert len(wide["results"]) == sum(w >= cut for w in widths)
    assert all(r["metadata"]["width"] >= cut and r["category"] == cats[1] for r in wide["results"])
    (strict,) = run_json("search", query, *store_args, "-k", "20", "--min-score", "0.999")
    assert strict["results"] == []

    bad = run_cli("search", query, *store_args, "--where", "category~cats")
    assert bad.returncode == 1 and "cannot read --where" in bad.stderr and "Traceback" not in bad.stderr


def test_model_mismatch_is_refused_and_nothing_written(tmp_path: Path, store_args: list[str]) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=3)
    _summary(lib, store_args, "--model", MODEL)
    extra = tmp_path / "extra"
    copy_library(extra, categories=2, per_category=2)
    proc = run_cli("ingest", extra, *store_args, "--model", "resnet50")
    assert proc.returncode == 1
    assert "refusing --model resnet50" in proc.stderr and "Traceback" not in proc.stderr
    (stats,) = run_json("stats", *store_args)
    assert stats["count"] == 3 and stats["model"]["model"] == MODEL


def test_corrupt_file_is_reported_and_the_rest_ingested(tmp_path: Path, store_args: list[str]) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=3)
    good = sorted((lib / sorted(os.listdir(lib))[0]).iterdir())[0]
    (lib / "broken").mkdir()
    (lib / "broken" / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (lib / "broken" / "page.png").write_text("<!doctype html><html><body>404</body></html>")
    failures = tmp_path / "failures.json"
    out = _summary(lib, store_args, "--model", MODEL, "--failures", str(failures), ok=(3,))
    assert out["added"] == 6 and out["failed"] == 2
    reasons = {Path(f["path"]).name: f["reason"] for f in out["failures"]}
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]
    assert "HTML" in reasons["page.png"]
    assert failures.exists() and len(__import__("json").loads(failures.read_text())) == 2
    human = run_cli("ingest", lib, *store_args)
    assert human.returncode == 3 and "failed: " in human.stderr and "page.png" in human.stderr
