"""Arrays (and later text) -> vectors: the encoder seam, its families and runtimes, the model cache (no storage)."""
