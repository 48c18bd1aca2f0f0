"""cbir: content-based image retrieval. Index a folder of images with a CNN, query by example.

Library use (the weights are given once; the model is built only when something needs it)::

    from cbir import FeatureChoice, open_index, query_index, resolve_settings, update_index
    settings = resolve_settings("photos/", weights="mobilenet_2_5_224_tf_no_top.h5",
                                features=FeatureChoice(model="mobilenet"))
    update_index(settings.dataset, settings, index_dir=settings.index_dir)
    index = open_index(settings.dataset, settings.index_dir)
    results = query_index(index, settings.embedder(), ["photos/cat.jpg"], k=9)

The package map is docs/architecture.md.
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
    "Weights": "embedding.weights",
    "resolve_settings": "settings",
    "Settings": "settings",
    "FeatureChoice": "settings",
    "IndexOptions": "index.indexer",
    "Reranking": "search.rerank",
    "Searcher": "search.base",
    "FolderStore": "index.stores",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> LazyAttribute:
    """Import submodules lazily, so ``import cbir`` does not load TensorFlow."""
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'cbir' has no attribute {name!r}")
