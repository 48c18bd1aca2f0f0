"""Answering queries against an index: embed the query images, search, exclude the query itself.

The index decides how it is searched (:meth:`~cbir.search.base.SearchableIndex.searcher`: its fresh
approximate index unless ``exact``, else an exact scan); re-ranking wraps that searcher.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from cbir.embedding.embedder import Embedder
from cbir.embedding.features import FeatureConfig
from cbir.errors import BadImageError, QueryError
from cbir.output.results import Match, QueryResult
from cbir.search.base import SearchableIndex
from cbir.search.filters import ResultFilter, only_allowed
from cbir.search.rerank import Reranking, rerank


class QueryableIndex(SearchableIndex, Protocol):
    """An opened index that can also check a query embedder's settings against its own (its
    searcher hands out the vectors it stores)."""

    def check_compatible(self, config: FeatureConfig) -> None:
        """Raise IncompatibleIndexError if ``config`` differs from the index's."""
        ...

    def indexed_row(self, image: str | os.PathLike[str], unchanged: bool = False) -> int | None:
        """The row of an indexed image (see :meth:`cbir.index.snapshot.Index.indexed_row`)."""
        ...

    def file(self, row: int) -> Path:
        """The image file of ``row``."""
        ...


class EmbedderProvider(Protocol):
    """Query features and, only when something must be embedded, the embedder: a ``Settings`` (it
    builds the model on first use) or an ``Embedder`` itself."""

    @property
    def config(self) -> FeatureConfig: ...

    def embedder(self) -> Embedder: ...


def check_query_files(images: Sequence[str | os.PathLike[str]]) -> None:
    """Fail fast (before any model load) on query paths that do not exist or are not files."""
    for image in images:
        if not os.path.exists(image):
            raise QueryError(f"query image not found: {image}")
        if not os.path.isfile(image):
            raise QueryError(f"query image is not a file: {image}")


def embed_queries(embedder: Embedder, images: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Embed query files in one batched pass; QueryError names the first unreadable one."""
    check_query_files(images)
    out = np.zeros((len(images), embedder.dim), dtype=np.float32)
    for pos, result in embedder.embed_files(list(images)):
        if isinstance(result, BadImageError):
            raise QueryError(f"cannot read query image {images[pos]}: {result}")
        out[pos] = result
    return out


def search_index(
    snapshot: SearchableIndex,
    query_vectors: np.ndarray,
    queries: Sequence[str | os.PathLike[str]],
    k: int = 9,
    exclude_self: bool = True,
    reranking: Reranking = Reranking(),
    exact: bool = False,
    where: ResultFilter = ResultFilter(),
) -> list[QueryResult]:
    """Rank the index for each query vector; a query that is itself indexed is left out of its list
    (and of its query expansion). ``exact`` skips the index's approximate index; ``where`` keeps
    only results from some folders or dates (re-ranking still sees every image)."""
    own = [snapshot.row_of(q) if exclude_self else None for q in queries]
    exclude = [[r] if r is not None else [] for r in own]
    searcher = rerank(snapshot.searcher(exact=exact), reranking)
    allowed = where.mask(snapshot.root, snapshot.paths, snapshot.taken() if where.dated else [])
    searcher = only_allowed(searcher, allowed, where)
    rows, scores = searcher.search(query_vectors, k, exclude=exclude)
    root = Path(snapshot.root)
    return [
        QueryResult(
            str(query),
            [Match(str(root / snapshot.paths[r]), float(s)) for r, s in zip(rows[qi], scores[qi])],
            excluded_self=own[qi] is not None,
        )
        for qi, query in enumerate(queries)
    ]


def query_index(
    snapshot: QueryableIndex,
    source: EmbedderProvider,
    images: Sequence[str | os.PathLike[str]],
    k: int = 9,
    exclude_self: bool = True,
    reranking: Reranking = Reranking(),
    exact: bool = False,
    reuse_stored: bool = False,
    where: ResultFilter = ResultFilter(),
) -> list[QueryResult]:
    """Embed ``images`` (with the features of ``source``, which must match the index) and return
    their top ``k``, as :func:`search_index` does.

    ``reuse_stored``: an image that is indexed and unchanged since (same size and mtime) takes its
    stored vector instead; the model is built only if some image still needs embedding.
    """
    snapshot.check_compatible(source.config)
    check_query_files(images)
    rows = [snapshot.indexed_row(image, unchanged=True) if reuse_stored else None for image in images]
    searcher = snapshot.searcher(exact=exact)
    vectors = np.zeros((len(images), searcher.dim), dtype=np.float32)
    fresh = [i for i, row in enumerate(rows) if row is None]
    if fresh:
        vectors[fresh] = embed_queries(source.embedder(), [images[i] for i in fresh])
    stored = [(i, row) for i, row in enumerate(rows) if row is not None]
    if stored:
        vectors[[i for i, _ in stored]] = searcher.vectors(np.array([r for _, r in stored], dtype=np.int64))
    return search_index(snapshot, vectors, images, k, exclude_self, reranking, exact, where)


def like_index(
    snapshot: QueryableIndex,
    images: Sequence[str | os.PathLike[str]],
    k: int = 9,
    reranking: Reranking = Reranking(),
    exact: bool = False,
    where: ResultFilter = ResultFilter(),
) -> list[QueryResult]:
    """More like these indexed images (named as indexed, relative to the dataset, or by their own
    path inside it): their top ``k`` from their stored vectors, with no model and no decoding."""
    rows: list[int] = []
    for image in images:
        row = snapshot.indexed_row(image)
        if row is None:
            raise QueryError(f"not in the index: {image} (name an indexed image, or query by file)")
        rows.append(row)
    stored = snapshot.searcher(exact=exact).vectors(np.array(rows, dtype=np.int64))
    vectors = np.asarray(stored, dtype=np.float32)
    files = [snapshot.file(r) for r in rows]
    return search_index(snapshot, vectors, files, k, True, reranking, exact, where)
