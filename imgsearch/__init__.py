"""imgsearch core: safe image decoding and the one preprocessing function, the backbones, the store.

Everything above this package (``ingest``, ``search``, the CLI) goes through these three modules,
so a library vector and a query vector are always made the same way and land in the same space.
"""

__version__ = "0.1.0"
