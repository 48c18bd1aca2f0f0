"""Arrays (and later text) -> vectors: the encoder seam, its families, runtimes and model cache.

No storage."""
