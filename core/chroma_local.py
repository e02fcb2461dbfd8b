"""An embedded store served by Chroma's own engine (its Rust bindings, ``chromadb_rust_bindings``) without
chromadb's Python layer: the same SQLite file, index and answers as ``chromadb.PersistentClient``, for 0.03 s
of import instead of its ~900 modules (0.6-1.1 s, more than all else in a cold search: docs/cold-bench.md).

:func:`open_local` gives a client with the few calls :class:`imgsearch.core.store.Store` and its sides make, each
passed straight to the engine as chromadb's own shim (``chromadb/api/rust.py``) passes it, and answering with
the same dicts. It is used only where the engine's calls have the signatures this was written against;
otherwise (another chromadb, another platform) the store opens ``chromadb.PersistentClient`` as before. chromadb
itself is imported only to make a collection (its configuration JSON) and when the engine raises one of its
errors (the engine imports them to raise them).
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgsearch.core.collection import CollectionMissing

TENANT, DATABASE = "default_tenant", "default_database"
# the engine's calls used here and their signatures as chromadb 1.5 has them (chromadb/api/rust.py calls them so)
SIGNATURES = {
    "create_collection": "($self, name, configuration_json_str=None, schema_str=None, metadata=None, "
    "get_or_create=False, tenant=..., database=...)",
    "get_collection": "($self, name, tenant, database)",
    "list_collections": "($self, limit=None, offset=0, tenant=..., database=...)",
    "delete_collection": "($self, name, tenant, database)",
    "update_collection": "($self, collection_id, new_name=None, new_metadata=None, new_configuration_json_str=None)",
    "get_max_batch_size": "($self)",
    "count": "($self, collection_id, tenant=..., database=...)",
    "get": "($self, collection_id, ids=None, where=..., limit=None, offset=0, where_document=None, include=..., "
    "tenant=..., database=...)",
    "query": "($self, collection_id, ids, query_embeddings, n_results, where=..., where_document=None, include=..., "
    "tenant=..., database=...)",
    "add": "($self, ids, collection_id, embeddings, metadatas=None, documents=None, uris=None, tenant=..., "
    "database=...)",
    "upsert": "($self, collection_id, ids, embeddings, metadatas=None, documents=None, uris=None, tenant=..., "
    "database=...)",
    "update": "($self, collection_id, ids, embeddings=None, metadatas=None, documents=None, uris=None, tenant=..., "
    "database=...)",
    "delete": "($self, collection_id, ids=None, where=..., where_document=None, limit=None, tenant=..., database=...)",
}
GET_INCLUDE = ["metadatas", "documents"]  # chromadb's defaults, for a call that names none
QUERY_INCLUDE = ["metadatas", "documents", "distances"]


def open_local(path: Path) -> LocalClient | None:
    """The engine on the embedded store at ``path`` (made if missing), or None where it cannot be used directly
    (the bindings missing or their calls not the ones this module knows): the caller then uses chromadb."""
    try:
        import chromadb_rust_bindings as rb
    except ImportError:
        return None
    calls = rb.Bindings
    if any(getattr(getattr(calls, name, None), "__text_signature__", None) != sig for name, sig in SIGNATURES.items()):
        return None
    config = rb.SqliteDBConfig(  # as chromadb's defaults: md5 migration hashes, migrations applied
        hash_type=rb.MigrationHash.MD5, migration_mode=rb.MigrationMode.Apply, url=str(path / "chroma.sqlite3")
    )
    # as chromadb: one HNSW index per 5 open files (4 data files and 1 metadata file each)
    cache = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 5
    engine = rb.Bindings(allow_reset=False, sqlite_db_config=config, persist_path=str(path), hnsw_cache_size=cache)
    return LocalClient(engine)


def find_collection(client: Any, name: str) -> Any | None:
    """The collection ``name`` through ``client`` (a :class:`LocalClient` or chromadb's), None if it does not exist.
    chromadb's error class is looked for only where chromadb raised it, hence imported it: a lookup in an
    embedded store imports none of chromadb."""
    try:
        return client.get_collection(name, embedding_function=None)
    except Exception as err:
        errors = sys.modules.get("chromadb.errors")
        if errors is not None and isinstance(err, errors.NotFoundError):
            return None
        if isinstance(err, ValueError) and "does not exist" in str(err):  # chromadb < 1.0 raised ValueError
            return None
        raise


def _include(include: Sequence[str] | None, default: list[str]) -> list[str]:
    return list(default if include is None else include)


def _where(where: dict[str, Any] | None) -> str | None:
    return json.dumps(where) if where else None


class LocalClient:
    """The calls of ``chromadb.PersistentClient`` the store makes, on the engine itself."""

    def __init__(self, engine: Any) -> None:
        self._engine: Any = engine

    def engine(self) -> Any:
        if self._engine is None:  # a handle kept past close() must not reach a store another process may own now
            raise CollectionMissing("the store was closed: look the collection up again")
        return self._engine

    def get_collection(self, name: str, embedding_function: None = None) -> LocalCollection:
        return LocalCollection(self, self.engine().get_collection(name, TENANT, DATABASE))

    def list_collections(self) -> list[LocalCollection]:
        return [LocalCollection(self, model) for model in self.engine().list_collections(None, 0, TENANT, DATABASE)]

    def get_or_create_collection(
        self,
        name: str,
        configuration: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        embedding_function: None = None,
    ) -> LocalCollection:
        """Made with the configuration JSON chromadb would write (its own function makes it)."""
        from chromadb.api.collection_configuration import create_collection_configuration_to_json_str

        config = create_collection_configuration_to_json_str(configuration or {}, metadata)  # type: ignore[arg-type]
        model = self.engine().create_collection(name, config, None, metadata, True, TENANT, DATABASE)
        return LocalCollection(self, model)

    def delete_collection(self, name: str) -> None:
        self.engine().delete_collection(name, TENANT, DATABASE)

    def get_max_batch_size(self) -> int:
        return int(self.engine().get_max_batch_size())

    def close(self) -> None:
        """Drop the engine: its SQLite connection and indexes go with it (before the store's lock is released)."""
        self._engine = None


class LocalCollection:
    """The calls of a chromadb ``Collection`` the store makes, answering with the dicts chromadb's answer."""

    def __init__(self, client: LocalClient, model: Any) -> None:
        self._client = client
        self.id = str(model.id)
        self.name = str(model.name)
        self.metadata: dict[str, Any] | None = model.metadata
        self.configuration_json: dict[str, Any] = model.configuration or {}

    def count(self) -> int:
        return int(self._client.engine().count(self.id, TENANT, DATABASE))

    def get(
        self,
        ids: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        include: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        what = _include(include, GET_INCLUDE)
        asked = list(ids) if ids is not None else None
        res = self._client.engine().get(self.id, asked, _where(where), limit, offset or 0, None, what, TENANT, DATABASE)
        return {"ids": res.ids, "embeddings": res.embeddings, "metadatas": res.metadatas, "documents": res.documents}

    def query(
        self,
        query_embeddings: Any,
        n_results: int = 10,
        where: dict[str, Any] | None = None,
        include: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        what = _include(include, QUERY_INCLUDE)
        res = self._client.engine().query(
            self.id, None, query_embeddings, n_results, _where(where), None, what, TENANT, DATABASE
        )
        return {"ids": res.ids, "distances": res.distances, "metadatas": res.metadatas, "embeddings": res.embeddings}

    def add(self, ids: Sequence[str], embeddings: Any, metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        self._client.engine().add(list(ids), self.id, embeddings, _listed(metadatas), None, None, TENANT, DATABASE)

    def upsert(self, ids: Sequence[str], embeddings: Any, metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        self._client.engine().upsert(self.id, list(ids), embeddings, _listed(metadatas), None, None, TENANT, DATABASE)

    def update(
        self, ids: Sequence[str], embeddings: Any = None, metadatas: Sequence[dict[str, Any]] | None = None
    ) -> None:
        self._client.engine().update(self.id, list(ids), embeddings, _listed(metadatas), None, None, TENANT, DATABASE)

    def delete(self, ids: Sequence[str] | None = None, where: dict[str, Any] | None = None) -> None:
        self._client.engine().delete(
            self.id, list(ids) if ids is not None else None, _where(where), None, None, TENANT, DATABASE
        )

    def modify(self, metadata: dict[str, Any]) -> None:
        self._client.engine().update_collection(self.id, None, metadata, None)
        self.metadata = metadata


def _listed(metadatas: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if metadatas is None else list(metadatas)
