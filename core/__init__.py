"""The core every room stands on: safe decoding, the one preprocessing, the backbones, the Chroma store.

Installed as ``imgsearch.core``. It imports nothing from ``ingest``, ``search``, ``dupes`` or anything above
them (tests/test_paths.py checks).
"""
