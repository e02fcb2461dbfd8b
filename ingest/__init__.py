"""Ingest: folders → images → vectors → store, incrementally.

Stages, each usable alone: :mod:`imgsearch.ingest.scan` (files), :mod:`imgsearch.ingest.plan` (what changed:
add / re-embed / move / copy / prune / skip, decided without a model or a store), :mod:`imgsearch.ingest.sync`
(runs a plan through :mod:`imgsearch.core.batching`, the decode → model stage shared with search, into the store),
:mod:`imgsearch.ingest.worker` (re-runs it as folders change).
"""
