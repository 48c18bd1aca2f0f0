"""Answering queries against an index: embed the query images, search, exclude the query itself.

Search is exact (``search.top_k``) unless the index has a fresh approximate index (``cbir.ann``, built
by the indexer for large collections) and ``exact`` is not asked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cbir.embedding.embedder import Embedder
from cbir.errors import BadImageError, QueryError
from cbir.index.ann import ann_for, ann_search
from cbir.index.snapshot import Index
from cbir.output.results import Match, QueryResult
from cbir.search.exact import top_k


def check_query_files(images: Sequence[str | os.PathLike]) -> None:
    """Fail fast (before any model load) on query paths that do not exist or are not files."""
    for image in images:
        if not os.path.exists(image):
            raise QueryError(f"query image not found: {image}")
        if not os.path.isfile(image):
            raise QueryError(f"query image is not a file: {image}")


def embed_queries(embedder: Embedder, images: Sequence[str | os.PathLike]) -> np.ndarray:
    """Embed query files in one batched pass; QueryError names the first unreadable one."""
    check_query_files(images)
    out = np.zeros((len(images), embedder.dim), dtype=np.float32)
    for pos, result in embedder.embed_files(list(images)):
        if isinstance(result, BadImageError):
            raise QueryError(f"cannot read query image {images[pos]}: {result}")
        out[pos] = result
    return out


def search_index(
    index: Index,
    query_vectors: np.ndarray,
    queries: Sequence[str | os.PathLike],
    k: int = 9,
    exclude_self: bool = True,
    qe: int = 0,
    dba: int = 0,
    alpha: float = 3.0,
    exact: bool = False,
) -> list[QueryResult]:
    """Rank the index for each query vector; a query that is itself indexed is left out of its list.

    ``qe``/``dba`` > 0 turn on alpha query expansion / database-side augmentation (see rerank.py).
    The index's fresh approximate index is used unless ``exact`` (or ``dba``, which changes the rows).
    """
    own = [index.row_of(q) if exclude_self else None for q in queries]
    exclude = [[r] if r is not None else [] for r in own]
    feats = index.feats
    if dba:
        from cbir.search.rerank import database_augmentation

        feats = database_augmentation(feats, dba, alpha)
    if qe:
        from cbir.search.rerank import query_expansion

        query_vectors = query_expansion(query_vectors, feats, qe, alpha, exclude=exclude)
    ann = None if exact or dba else ann_for(index)
    if ann is not None:
        rows, scores = ann_search(ann, query_vectors, k, exclude=exclude, feats=feats)
    else:
        rows, scores = top_k(feats, query_vectors, k, exclude=exclude)
    results = []
    for qi, query in enumerate(queries):
        matches = [
            Match(str(Path(index.root) / index.paths[r]), float(s)) for r, s in zip(rows[qi], scores[qi])
        ]
        results.append(QueryResult(str(query), matches, excluded_self=own[qi] is not None))
    return results


def query_index(
    index: Index,
    embedder: Embedder,
    images: Sequence[str | os.PathLike],
    k: int = 9,
    exclude_self: bool = True,
    exact: bool = False,
    **rerank: float,
) -> list[QueryResult]:
    """Embed ``images`` with ``embedder`` (which must match the index) and return their top ``k``.

    ``rerank``: ``qe``, ``dba``, ``alpha`` as in :func:`search_index`; ``exact`` as there.
    """
    index.check_compatible(embedder.config)
    return search_index(
        index, embed_queries(embedder, images), images, k, exclude_self, exact=exact, **rerank
    )
