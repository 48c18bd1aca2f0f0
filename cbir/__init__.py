"""cbir: content-based image retrieval. Index a folder of images with a CNN, query by example.

Library use (the weights are given once; the model is built only when something needs it)::

    from cbir import FeatureChoice, SearchRequest, open_index, query_index, resolve_settings, update_index
    settings = resolve_settings("photos/", weights="mobilenet_2_5_224_tf_no_top.h5",
                                features=FeatureChoice(model="mobilenet"))
    update_index(settings.dataset, settings, index_dir=settings.index_dir)
    index = open_index(settings.dataset, settings.index_dir)
    results = query_index(index, settings, ["photos/cat.jpg"], SearchRequest(k=9))

The package map is docs/architecture.md.
"""

from __future__ import annotations

from importlib import import_module

from cbir.core.types import LazyAttribute

__version__ = "0.1.0"

_EXPORTS = {
    "FeatureConfig": "encoders.features",
    "ORIGINAL": "encoders.features",
    "Embedder": "encoders.embedder",
    "l2_normalize": "core.vectors",
    "update_index": "indexing.indexer",
    "IndexReport": "indexing.indexer",
    "open_index": "stores.folder.snapshot",
    "Index": "stores.folder.snapshot",
    "query_index": "service.query",
    "search_index": "service.query",
    "like_index": "service.query",
    "SearchRequest": "service.query",
    "embed_queries": "service.query",
    "top_k": "search.exact",
    "find_images": "ingest.files",
    "plot_results": "cli.plot",
    "QueryResult": "core.results",
    "Match": "core.results",
    "Geometry": "ingest.decode",
    "LoadLimits": "ingest.decode",
    "REGISTRY": "encoders.backbones",
    "CbirError": "core.errors",
    "Weights": "encoders.weights",
    "resolve_settings": "service.settings",
    "Settings": "service.settings",
    "FeatureChoice": "service.settings",
    "IndexOptions": "indexing.indexer",
    "Reranking": "search.rerank",
    "Searcher": "search.base",
    "Encoder": "encoders.base",
    "IndexReader": "stores.base",
    "Store": "stores.base",
    "FolderStore": "stores.folder.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> LazyAttribute:
    """Import submodules lazily, so ``import cbir`` does not load TensorFlow."""
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'cbir' has no attribute {name!r}")
