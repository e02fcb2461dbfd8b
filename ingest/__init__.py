"""Ingest: folders → images → vectors → store, incrementally.

Stages, each usable alone: :mod:`ingest.scan` (files), :mod:`ingest.embed` (decode + model, pipelined),
:mod:`ingest.sync` (decides what changed and writes it).
"""
