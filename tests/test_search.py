"""The one search function (imgsearch.search.query.search) called directly, as the web app and eval do:
files and vectors, exclusion, filters, and typed errors for what cannot be searched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL, copy_library, record

from imgsearch.core.config import ModelChoice
from imgsearch.core.store import Location, Store
from imgsearch.search.query import EmptyStore, UnusableQuery, check_queries, open_search, search


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Location, list[Path]]]:
    """A real embedded store of 12 demo photos (2 categories), embedded with the real model."""
    from imgsearch.core.session import open_embedder
    from imgsearch.ingest.sync import ingest

    root = tmp_path_factory.mktemp("search")
    lib = copy_library(root / "lib", categories=2, per_category=6)
    location = Location(db=root / "db")
    store = Store(location)
    report = ingest([str(lib)], store, open_embedder(store, ModelChoice(model=MODEL)))
    store.close()
    assert report.added == 12
    yield location, sorted(lib.rglob("*.jpg"))


def test_files_and_vectors_rank_the_same_way(library: tuple[Location, list[Path]]) -> None:
    location, files = library
    with open_search(location, ModelChoice()) as (store, embedder):
        by_file = dict(search(store, [str(f) for f in files[:3]], embedder, k=3))
        assert list(by_file) == [str(f) for f in files[:3]]  # input order, named by path
        for path, hits in by_file.items():
            assert hits[0].path == path and hits[0].score > 0.99  # a stored photo finds itself first
            assert [h.rank for h in hits] == [1, 2, 3]
            assert hits == sorted(hits, key=lambda h: -h.score)
        own = by_file[str(files[0])][0]
        vector = store.get([own.id], embeddings=True)[own.id]["_embedding"]
        ((row, hits),) = search(store, np.stack([vector]), k=3, exclude=[own.id])
        assert row == 0 and own.id not in [h.id for h in hits] and [h.rank for h in hits] == [1, 2, 3]
        assert hits[0].id == by_file[str(files[0])][1].id  # what was second is now first


def test_filters_and_min_score(library: tuple[Location, list[Path]]) -> None:
    location, files = library
    category = files[0].parent.name
    with open_search(location, ModelChoice()) as (store, embedder):
        ((_, hits),) = search(store, [str(files[-1])], embedder, k=10, where={"category": {"$eq": category}})
        assert hits and {h.category for h in hits} == {category}
        ((_, hits),) = search(store, [str(files[0])], embedder, k=10, min_score=0.99)
        assert [h.path for h in hits] == [str(files[0])]


def test_unusable_queries_are_typed_errors(library: tuple[Location, list[Path]], tmp_path: Path) -> None:
    location, files = library
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(files[0].read_bytes()[:2000])  # a whole header, a tenth of the data
    with pytest.raises(UnusableQuery, match="no such file") as missing:
        check_queries([str(tmp_path / "nope.jpg")])
    assert missing.value.path == str(tmp_path / "nope.jpg")
    with pytest.raises(UnusableQuery) as not_image:
        check_queries([str(files[0]), str(text)])
    assert not_image.value.path == str(text) and not_image.value.reason.startswith("not an image")
    check_queries([str(truncated)])  # the header alone is fine: found when decoded, once, by the search
    with open_search(location, ModelChoice()) as (store, embedder):
        with pytest.raises(UnusableQuery) as broken:
            list(search(store, [str(files[0]), str(truncated)], embedder))
        assert broken.value.path == str(truncated)
        kept = [q for q, _ in search(store, [str(truncated), str(files[1])], embedder, skip_unusable=True)]
        assert kept == [str(files[1])]


def test_an_empty_store_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    location = Location(db=tmp_path / "db")
    store = Store(location)
    store.create(record(MODEL))
    store.close()
    with pytest.raises(EmptyStore, match="is empty"), open_search(location, ModelChoice(model="no-such-model")):
        pass
