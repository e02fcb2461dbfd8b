"""Search: query images → vectors (the same path as ingest) → nearest stored images, ranked with scores."""
