"""Reading an embedded store's SQLite file directly, read-only: Chroma's own tables (a schema that differs
fails as an SQLite error, and the caller then asks Chroma). Counting rows or reading a collection's metadata
this way needs no chromadb import and no scan of every row (``stats``, the no-op sync's change mark).
"""

from __future__ import annotations

from typing import Any

# an embedded store's collections live in Chroma's default tenant and database
DEFAULT_DATABASE = "d.name = 'default_database' AND d.tenant_id = 'default_tenant'"


def metadata_segment(conn: Any, col_id: str) -> tuple[str, str, Any, int | None] | None:
    """(collection id, its metadata segment, the last write applied to it, the last logged for the collection
    or None once the log is purged) from an embedded store's SQLite file; None unless there is one such segment."""
    applied = conn.execute(
        "SELECT s.id, m.seq_id FROM segments s JOIN max_seq_id m ON m.segment_id = s.id "
        "WHERE s.collection = ? AND s.scope = 'METADATA'",
        (col_id,),
    ).fetchall()
    logged = conn.execute(  # from the newest down: the queue is purged as it is applied
        "SELECT seq_id FROM embeddings_queue WHERE topic LIKE ? ORDER BY seq_id DESC LIMIT 1", (f"%/{col_id}",)
    ).fetchone()
    if len(applied) != 1:
        return None
    return col_id, applied[0][0], applied[0][1], logged[0] if logged else None


def collection_id(conn: Any, name: str, mark: str) -> str | None:
    """The id of the collection ``name`` if its metadata holds ``mark`` (imgsearch's own collections record their
    fingerprint: made cosine); None otherwise, and Chroma is asked (its answer says what is wrong)."""
    row = conn.execute(
        "SELECT c.id FROM collections c JOIN databases d ON d.id = c.database_id "
        "JOIN collection_metadata m ON m.collection_id = c.id AND m.key = ? "
        f"WHERE c.name = ? AND {DEFAULT_DATABASE}",
        (mark, name),
    ).fetchone()
    return None if row is None else str(row[0])


def collection_metadata(conn: Any, col_id: str) -> dict[str, Any]:
    """A collection's own metadata (the fingerprint, the offline folders ...) from an embedded store's SQLite file."""
    rows = conn.execute(
        "SELECT key, str_value, int_value, float_value, bool_value FROM collection_metadata WHERE collection_id = ?",
        (col_id,),
    ).fetchall()
    return {key: next((v for v in values if v is not None), None) for key, *values in rows}


def rows_applied(conn: Any, col_id: str) -> tuple[int, tuple[str, str, int, int | None]] | None:
    """The collection's rows by SQL and :func:`metadata_segment`'s answer; None unless every write logged for
    the collection is applied to its metadata (Chroma applies them as it writes)."""
    found = metadata_segment(conn, col_id)
    if found is None or not isinstance(found[2], int) or (found[3] is not None and found[2] < found[3]):
        return None
    (rows,) = conn.execute("SELECT COUNT(*) FROM embeddings WHERE segment_id = ?", (found[1],)).fetchone()
    return int(rows), found


def sides_marked(conn: Any, key: str) -> list[tuple[str, str]]:
    """(id, the value of ``key``) of every collection of the default database whose metadata holds ``key``."""
    return conn.execute(
        "SELECT c.id, m.str_value FROM collections c JOIN collection_metadata m ON m.collection_id = c.id "
        "JOIN databases d ON d.id = c.database_id "
        f"WHERE m.key = ? AND m.str_value IS NOT NULL AND {DEFAULT_DATABASE}",
        (key,),
    ).fetchall()
