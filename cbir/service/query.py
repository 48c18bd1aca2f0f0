"""Answering queries against an index: embed the query images (or texts), search, exclude the query
itself; or rank by words, through the labels an index holds (``cbir index --labels``).

The index decides how it is searched (:meth:`~cbir.stores.base.IndexReader.searcher`: its fresh
approximate index unless ``exact``, else an exact scan); re-ranking wraps that searcher.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from cbir.core.errors import BadImageError, QueryError
from cbir.core.results import Match, QueryResult
from cbir.core.vectors import l2_normalize
from cbir.encoders.base import TEXT, Encoder, EncoderSource
from cbir.encoders.features import FeatureConfig
from cbir.search.filters import FilteredSearcher, ResultFilter, restrict
from cbir.search.labels import matches_all, rank_by_labels
from cbir.search.rerank import Reranking, rerank
from cbir.search.words import Term, vocabulary
from cbir.stores.base import IndexReader


class TextModel(Protocol):
    """What embeds the words of a query on an index of a joint model: an ``EncoderSource`` (its
    config, checked against the index, and its encoder, built on first need) or a server's warm model."""

    @property
    def config(self) -> FeatureConfig: ...

    def embedder(self) -> Encoder: ...


DEFAULT_TEXT_WEIGHT = 0.5
"""The words' share of a query that combines them with an image (``--text-weight``)."""


def embeds_text(index: IndexReader) -> bool:
    """Whether the index's vectors were made by a joint text-image model (words use its text tower)."""
    return TEXT in index.config.modalities


def words_route(index: IndexReader) -> str:
    """How words search ``index``, for people: its model's text tower, or its labels."""
    if embeds_text(index):
        return f"words searched with the text tower of {index.config.model}"
    return "words searched through the index's labels (ImageNet classes)"


def blend(images: np.ndarray, text: np.ndarray, text_weight: float) -> np.ndarray:
    """Each image query vector combined with the text's: ``(1 - w) * image + w * text``, both
    L2-normalised first, the sum normalised again (rclip's combination of a text and an image)."""
    summed = (1.0 - text_weight) * l2_normalize(images) + text_weight * l2_normalize(text[None, :])
    return l2_normalize(summed).astype(np.float32)


@dataclass(frozen=True)
class SearchRequest:
    """How one search ranks: ``k`` results per query, the query itself left out of its own list when it
    is indexed (``exclude_self``), ``reranking``, ``exact`` (skip the approximate index), and
    ``where`` (only some folders or dates; re-ranking still sees every image), and ``words``: on an
    index of a joint text-image model, the words' vector is blended into each query's (``text_weight``
    its share, 0 to 1); on any other index, only images whose labels match these words ("more like
    this, but only the ones with a boat")."""

    k: int = 9
    exclude_self: bool = True
    reranking: Reranking = Reranking()
    exact: bool = False
    where: ResultFilter = ResultFilter()
    words: str | None = None
    text_weight: float = DEFAULT_TEXT_WEIGHT


def labelled_terms(index: IndexReader, text: str) -> list[Term]:
    """The terms of ``text`` for an index with labels; QueryError naming ``--labels`` when it has
    none, or naming the nearest class names for a word that matches no class."""
    if index.labeller is None:
        raise QueryError(
            f"the index in {index.location} has no labels to search by words; "
            f"add them with: cbir index {index.root} --labels"
        )
    return vocabulary().parse(text)


def check_query_files(images: Sequence[str | os.PathLike[str]]) -> None:
    """Fail fast (before any model load) on query paths that do not exist or are not files."""
    for image in images:
        if not os.path.exists(image):
            raise QueryError(f"query image not found: {image}")
        if not os.path.isfile(image):
            raise QueryError(f"query image is not a file: {image}")


def embed_queries(embedder: Encoder, images: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Embed query files in one batched pass; QueryError names the first unreadable one."""
    check_query_files(images)
    out = np.zeros((len(images), embedder.dim), dtype=np.float32)
    for pos, result in embedder.embed_files(list(images)):
        if isinstance(result, BadImageError):
            raise QueryError(f"cannot read query image {images[pos]}: {result}")
        out[pos] = result
    return out


def search_index(
    index: IndexReader,
    query_vectors: np.ndarray,
    queries: Sequence[str | os.PathLike[str]],
    request: SearchRequest = SearchRequest(),
    source: TextModel | None = None,
) -> list[QueryResult]:
    """Rank the index for each query vector as ``request`` says; a query that is itself indexed is
    left out of its list (and of its query expansion) unless ``request.exclude_self`` is False.
    ``request.words`` on an index of a joint model are embedded by ``source``'s text tower and
    blended into the query vectors; on any other index they filter by labels."""
    own = [index.row_of(q) if request.exclude_self else None for q in queries]
    exclude = [[r] if r is not None else [] for r in own]
    searcher = rerank(index.searcher(exact=request.exact), request.reranking)
    where = request.where
    allowed = where.mask(index.root, index.paths, index.taken() if where.dated else [])
    if allowed is not None:
        searcher = restrict(searcher, allowed, where)
    if request.words is not None and embeds_text(index):
        if source is None:
            raise QueryError("combining words with images on this index needs its text model")
        text = np.asarray(source.embedder().embed_texts([request.words]), dtype=np.float32)[0]
        query_vectors = blend(query_vectors, text, request.text_weight)
    elif request.words is not None:
        terms = labelled_terms(index, request.words)
        worded = np.array([matches_all(labels, terms) for labels in index.labels()], dtype=bool)
        allowed = worded if allowed is None else allowed & worded
    if allowed is not None:
        searcher = FilteredSearcher(searcher, allowed)
    rows, scores = searcher.search(query_vectors, request.k, exclude=exclude)
    root = Path(index.root)
    return [
        QueryResult(
            str(query),
            [Match(str(root / index.paths[r]), float(s)) for r, s in zip(rows[qi], scores[qi])],
            excluded_self=own[qi] is not None,
        )
        for qi, query in enumerate(queries)
    ]


def query_index(
    index: IndexReader,
    source: EncoderSource,
    images: Sequence[str | os.PathLike[str]],
    request: SearchRequest = SearchRequest(),
    reuse_stored: bool = False,
) -> list[QueryResult]:
    """Embed ``images`` (with the features of ``source``, which must match the index) and return
    their ranking, as :func:`search_index` does.

    ``reuse_stored``: an image that is indexed and unchanged since (same size and mtime) takes its
    stored vector instead; the model is built only if some image still needs embedding.
    """
    index.check_compatible(source.config)
    check_query_files(images)
    rows = [index.indexed_row(image, unchanged=True) if reuse_stored else None for image in images]
    searcher = index.searcher(exact=request.exact)
    vectors = np.zeros((len(images), searcher.dim), dtype=np.float32)
    fresh = [i for i, row in enumerate(rows) if row is None]
    if fresh:
        vectors[fresh] = embed_queries(source.embedder(), [images[i] for i in fresh])
    stored = [(i, row) for i, row in enumerate(rows) if row is not None]
    if stored:
        vectors[[i for i, _ in stored]] = searcher.vectors(np.array([r for _, r in stored], dtype=np.int64))
    return search_index(index, vectors, images, request, source)


def like_index(
    index: IndexReader,
    images: Sequence[str | os.PathLike[str]],
    request: SearchRequest = SearchRequest(),
    source: TextModel | None = None,
) -> list[QueryResult]:
    """More like these indexed images (named as indexed, relative to the dataset, or by their own
    path inside it): their ranking from their stored vectors, with no model and no decoding; each
    image is left out of its own list. ``source``: the text model, for words blended in
    (``request.words`` on an index of a joint model)."""
    rows: list[int] = []
    for image in images:
        row = index.indexed_row(image)
        if row is None:
            raise QueryError(f"not in the index: {image} (name an indexed image, or query by file)")
        rows.append(row)
    stored = index.searcher(exact=request.exact).vectors(np.array(rows, dtype=np.int64))
    vectors = np.asarray(stored, dtype=np.float32)
    files = [index.file(r) for r in rows]
    return search_index(index, vectors, files, replace(request, exclude_self=True), source)


def words_index(
    index: IndexReader, texts: Sequence[str], request: SearchRequest = SearchRequest()
) -> list[QueryResult]:
    """Rank the index for each text by its labels: an image's score is the probability mass of its
    labels that match the words (every word must match one), ties to the more probable best label
    (:mod:`cbir.search.labels`). No model is loaded: the labels were made when indexing."""
    if not texts or not all(text.strip() for text in texts):
        raise QueryError("give the words to search for")
    parsed = [labelled_terms(index, text) for text in texts]
    where = request.where
    allowed = where.mask(index.root, index.paths, index.taken() if where.dated else [])
    labels = index.labels()
    root = Path(index.root)
    out = []
    for text, terms in zip(texts, parsed):
        rows, scores = rank_by_labels(labels, terms, request.k, allowed)
        matches = [Match(str(root / index.paths[r]), float(s)) for r, s in zip(rows, scores)]
        out.append(QueryResult(text, matches))
    return out


def text_index(
    index: IndexReader,
    source: TextModel | None,
    texts: Sequence[str],
    request: SearchRequest = SearchRequest(),
) -> list[QueryResult]:
    """Rank the index for each text: embedded by the text side of a joint text-image encoder when
    the index's encoder has one, else through the index's labels (:func:`words_index`).

    The index says whether its vectors can be matched with text (``config.modalities``, recorded
    when it was built) and whether it has labels: QueryError in one line, before any model is
    built, when neither holds.
    """
    if not embeds_text(index):
        if index.labeller is not None:
            return words_index(index, texts, request)
        raise QueryError(
            f"the index was built with {index.config.model}, which embeds images only, and has no labels: "
            f"to search by words, label it with: cbir index {index.root} --labels"
        )
    if source is None:
        raise QueryError("searching this index by words needs its text model")
    index.check_compatible(source.config)
    if not texts or not all(text.strip() for text in texts):
        raise QueryError("give the words to search for")
    vectors = np.asarray(source.embedder().embed_texts(list(texts)), dtype=np.float32)
    return search_index(index, vectors, texts, replace(request, exclude_self=False))
