"""The folder store: an index folder with a manifest, matrix files, an approximate index, and a lock."""
