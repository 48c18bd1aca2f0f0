"""cbir: content-based image retrieval. Index a folder of images with a CNN, query by example.

Library use::

    from cbir import FeatureConfig, Embedder, update_index, open_index, query_index
    config = FeatureConfig(model="mobilenet")
    embedder = Embedder(config, weights="mobilenet_2_5_224_tf_no_top.h5")
    update_index("photos/", config, weights=embedder.weights, embedder=embedder)
    results = query_index(open_index("photos/"), embedder, ["photos/cat.jpg"], k=9)
"""

from __future__ import annotations

from importlib import import_module

from cbir.types import LazyAttribute

__version__ = "0.1.0"

_EXPORTS = {
    "FeatureConfig": "embedding.features",
    "ORIGINAL": "embedding.features",
    "Embedder": "embedding.embedder",
    "l2_normalize": "vectors",
    "update_index": "index.indexer",
    "IndexReport": "index.indexer",
    "open_index": "index.snapshot",
    "Index": "index.snapshot",
    "query_index": "search.query",
    "search_index": "search.query",
    "embed_queries": "search.query",
    "top_k": "search.exact",
    "find_images": "ingest.files",
    "plot_results": "output.plot",
    "QueryResult": "output.results",
    "Match": "output.results",
    "Geometry": "ingest.decode",
    "LoadLimits": "ingest.decode",
    "REGISTRY": "embedding.backbones",
    "CbirError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> LazyAttribute:
    """Import submodules lazily, so ``import cbir`` does not load TensorFlow."""
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'cbir' has no attribute {name!r}")
