"""The Python API (``imgsearch.open`` → ``Library``) driving the whole job on its own, as a notebook would:
ingest, search by path / bytes / PIL image / vector with a filter and a region, duplicates, stats, remove,
closing, and its typed errors; on an embedded store and on a real `chroma run` server.

Real photos (three Caltech-101 categories from the team's development set, the bundled clip art where it is
absent), the real model (EfficientNet-Lite0), nothing imported from below the API.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODEL, REPO, copy_library
from PIL import Image

import imgsearch

CALTECH = REPO.parent / "shared" / "datasets" / "caltech101-dev"
CATEGORIES = ("Faces", "Leopards", "Motorbikes")
PER_CATEGORY = 4


def _photos(dest: Path) -> Path:
    """3 categories x 4 photos, and a folder of copies: one byte-identical, one resized and re-encoded."""
    if CALTECH.is_dir():
        for cat in CATEGORIES:
            (dest / cat).mkdir(parents=True)
            for img in sorted((CALTECH / cat).iterdir())[:PER_CATEGORY]:
                shutil.copy2(img, dest / cat / img.name)
    else:  # the bundled clip art: still real pictures, the same job
        copy_library(dest, categories=3, per_category=PER_CATEGORY)
    cats = sorted(p for p in dest.iterdir() if p.is_dir())
    (dest / "copies").mkdir()
    shutil.copy2(sorted(cats[0].iterdir())[0], dest / "copies" / "same-bytes.jpg")
    with Image.open(sorted(cats[1].iterdir())[0]) as src:
        edited = src.convert("RGB").resize((src.width * 4 // 5, src.height * 4 // 5))
        edited.save(dest / "copies" / "resized.jpg", quality=85)
    return dest


@pytest.fixture(params=["embedded", "server"])
def where_to(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """``imgsearch.open`` arguments for a fresh store: an embedded folder, or a new collection on the server."""
    if request.param == "embedded":
        return {"db": tmp_path / "db"}
    return {"url": request.getfixturevalue("chroma_server"), "collection": f"api{time.monotonic_ns()}"}


@pytest.fixture
def photos(tmp_path: Path) -> Iterator[Path]:
    yield _photos(tmp_path / "photos")


def test_the_whole_job_through_the_public_api(where_to: dict[str, Any], photos: Path, tmp_path: Path) -> None:
    cats = sorted(p.name for p in photos.iterdir() if p.is_dir() and p.name != "copies")
    total = len(cats) * PER_CATEGORY + 2
    with imgsearch.open(**where_to, model=MODEL) as lib:
        # ingest, then again: nothing re-embedded
        report = lib.ingest([photos], tags={"trip": "api"})
        assert isinstance(report, imgsearch.IngestReport)
        assert (report.added, report.failed, report.embedded) == (total, 0, total)
        again = lib.ingest(photos)
        assert (again.unchanged, again.embedded) == (total, 0)

        stats = lib.stats()
        assert isinstance(stats, imgsearch.Stats)
        assert stats.count == total and stats.model and stats.model.recipe.model == MODEL
        assert stats.categories == {**dict.fromkeys(cats, PER_CATEGORY), "copies": 2}
        assert list(stats.as_dict())[:3] == ["count", "categories", "model"]

        # search by a path, its bytes, the PIL image, the stored vector: one list of typed hits each
        photo = sorted((photos / cats[2]).iterdir())[1]
        by_path = lib.search(photo, k=3)
        assert [h.rank for h in by_path] == [1, 2, 3]
        best = by_path[0]
        assert isinstance(best, imgsearch.Hit) and best.path == str(photo) and best.score > 0.99
        assert best.category == cats[2] and best.metadata["trip"] == "api" and best.distance < 0.01
        assert best.verified and best.inliers  # the same picture: its pixels were compared and agree
        assert lib.search(str(photo), k=3) == by_path
        with pytest.raises(AttributeError):
            best.score = 0.0  # type: ignore[misc]  # frozen
        for query in (photo.read_bytes(), Image.open(photo)):
            hits = lib.search(query, k=3)
            assert [h.path for h in hits][:1] == [str(photo)] and hits[0].score > 0.99
        vector = lib.store.get([best.id], embeddings=True)[best.id]["_embedding"]
        by_vector = lib.search(vector, k=3)
        assert by_vector[0].id == best.id and by_vector[0].score > 0.99 and by_vector[0].inliers is None
        assert lib.search(vector, k=1, expand=0)[0].score > 0.9999  # without query expansion: itself

        # a filter, in the CLI's syntax or as a Chroma where dict
        other = cats[0]
        filtered = lib.search(photo, k=10, where=f"category={other}")
        assert len(filtered) == PER_CATEGORY and {h.category for h in filtered} == {other}
        assert [h.id for h in lib.search(photo, k=10, where={"category": other})] == [h.id for h in filtered]
        both = lib.search(photo, k=20, where=[f"category!={other}", "trip=api"])
        assert other not in {h.category for h in both} and len(both) == total - PER_CATEGORY

        # a region: the middle of the photo finds the photo it was cut from
        region = lib.search(photo, k=3, box=(0.2, 0.2, 0.6, 0.6))
        assert region[0].path == str(photo) and region[0].score < 0.999
        assert lib.search(photo, k=3, box="0.2,0.2,0.6,0.6") == region

        # duplicates: the byte-identical copy, and the resized one by its pixels
        exact = lib.dupes("exact")
        assert [sorted(Path(m.path).name for m in g.members) for g in exact.groups] == [
            sorted([sorted((photos / cats[0]).iterdir())[0].name, "same-bytes.jpg"])
        ]
        copies = lib.dupes("copies")
        grouped = [{Path(m.path).parent.name + "/" + Path(m.path).name for m in g.members} for g in copies.groups]
        resized_source = f"{cats[1]}/{sorted((photos / cats[1]).iterdir())[0].name}"
        assert {resized_source, "copies/resized.jpg"} in grouped
        assert copies.as_dict()["redundant"] == copies.redundant >= 2

        # remove: a folder's entries go, the files stay
        assert lib.remove([photos / "copies"]) == 2
        assert lib.stats().count == total - 2 and (photos / "copies" / "resized.jpg").exists()
        assert lib.remove(photos / "copies") == 0

        # typed errors
        for bad in (tmp_path / "missing.jpg", b"not an image", 42, np.zeros(7, dtype=np.float32)):
            with pytest.raises(imgsearch.BadQuery):
                lib.search(bad)  # type: ignore[arg-type]
        with pytest.raises(imgsearch.BadQuery, match="outside"):
            lib.search(photo, box=(5000, 5000, 40, 40))
        with pytest.raises(imgsearch.BadQuery):
            lib.search(vector, box=(0, 0, 0.5, 0.5))
        with pytest.raises(imgsearch.FilterError):
            lib.search(photo, where="category")
        with pytest.raises(FileNotFoundError):
            lib.ingest(tmp_path / "no-such-folder")
        if "db" in where_to:  # an embedded store belongs to one holder at a time
            with pytest.raises(imgsearch.StoreError, match="in use"):
                imgsearch.open(**where_to).stats()
    # closed on leaving the block: another holder opens it, and it still holds what was left
    assert lib._store is None
    with imgsearch.open(**where_to) as reopened:
        assert reopened.stats().count == total - 2


def test_a_missing_store_is_a_typed_error(where_to: dict[str, Any]) -> None:
    lib = imgsearch.open(**where_to)
    with pytest.raises(imgsearch.StoreError, match="ingest"):  # a server's: CollectionMissing, one of them
        lib.stats()
    with pytest.raises(imgsearch.StoreError):
        lib.search(REPO / "examples" / "queries" / "arrows_1.png")
    lib.close()
    with pytest.raises(ValueError, match="not both"):
        imgsearch.open("db", url="http://127.0.0.1:1")


def test_import_imgsearch_loads_neither_torch_nor_chromadb() -> None:
    probe = (
        "import sys, imgsearch; imgsearch.open, imgsearch.Library, imgsearch.Hit, imgsearch.StoreError; "
        "print(sorted(m for m in ('torch', 'torchvision', 'chromadb', 'onnxruntime') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr
    assert set(imgsearch.__all__) <= set(dir(imgsearch))


def test_the_readme_example_runs(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README's "Use from Python" block, as printed there, in a folder holding photos/ and a query.jpg."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Use from Python\n\n```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in block.splitlines() if line.strip()]) <= 6
    source = sorted(p for p in photos.iterdir() if p.is_dir() and p.name != "copies")[1]
    source.rename(photos / "cats")  # the category the example filters on; copies/resized.jpg is of its first
    shutil.copy2(photos / "copies" / "resized.jpg", tmp_path / "query.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    *hits, counts = capsys.readouterr().out.splitlines()
    first = sorted((photos / "cats").iterdir())[0]
    assert len(hits) == PER_CATEGORY and hits[0].startswith("1 0.9") and hits[0].endswith(f"True {first}")
    assert counts == f"{len(CATEGORIES) * PER_CATEGORY + 2} 2"  # the exact copy's group and the resized one's


def test_the_docstring_examples_run(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example in imgsearch.api's docstrings (marked +SKIP for plain doctest, which has no photos) runs, in
    the order of the module, in a folder holding what they name: photos/ (with a cats/ and an old/ folder) and
    query files. Their printed values are not compared (scores and paths differ per machine): each must run."""
    import doctest

    import imgsearch.api

    cats = sorted(p for p in photos.iterdir() if p.is_dir() and p.name != "copies")[0]
    cats.rename(photos / "cats")
    (photos / "old").mkdir()
    shutil.copy2(sorted((photos / "cats").iterdir())[-1], photos / "old" / "old.jpg")
    for name in ("query.jpg", "cat.jpg", "street.jpg", "a.jpg", "b.jpg"):
        shutil.copy2(photos / "copies" / "resized.jpg", tmp_path / name)
    monkeypatch.chdir(tmp_path)
    parser, ran = doctest.DocTestParser(), 0
    namespace: dict[str, Any] = {"imgsearch": imgsearch, "Path": Path}
    docs = [imgsearch.api.__doc__, imgsearch.api.open.__doc__, imgsearch.api.Library.__doc__]
    docs += [getattr(imgsearch.api.Library, name).__doc__ for name in vars(imgsearch.api.Library)]
    for doc in filter(None, docs):
        for example in parser.get_examples(doc):
            exec(compile(example.source, "imgsearch/api.py", "exec"), namespace)
            ran += 1
    assert ran >= 15
    lib = namespace["lib"]
    assert lib.stats().count == len(CATEGORIES) * PER_CATEGORY + 2  # photos/old/ was removed last
    lib.close()
