"""The Milvus store: an index in one Milvus collection (Milvus Lite or a server; the ``milvus`` extra)."""
