"""Search: query images → vectors (the same stage as ingest) → nearest stored images, ranked with scores.

:func:`imgsearch.search.query.search` is the one search path; :mod:`imgsearch.search.filters` reads ``--where``.
"""
