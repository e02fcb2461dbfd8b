"""The mapper stage of ingest: the core's windowed mapper (imgsearch.batching), which the query side
(search, report, eval) shares, so both decode and batch the same way with the same memory bound."""

from __future__ import annotations

from imgsearch.batching import Embedded, embed_files

__all__ = ["Embedded", "embed_files"]
