"""Vectors -> index: the index folder on disk, its manifest, incremental indexing, the ANN file."""
