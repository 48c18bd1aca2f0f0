"""What the web API does, without HTTP: info, browse, like- and upload-search, duplicates.

:class:`Service` ties the collection (the committed index, reloaded on commit), the warm model
(:class:`~cbir.web.model.ModelWorker`) and the background indexer (:class:`~cbir.web.updater.Updater`)
together; :mod:`cbir.web.app` only maps its answers and errors to HTTP.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

from cbir.core.errors import BadImageError, CbirError, QueryError
from cbir.core.results import QueryResult
from cbir.core.types import JSONDict
from cbir.ingest.decode import LoadLimits, decode_views
from cbir.search.filters import ResultFilter
from cbir.search.rerank import Reranking
from cbir.service.duplicates import DuplicateOptions, find_duplicates
from cbir.service.query import SearchRequest, like_index, text_index
from cbir.stores.base import IndexReader
from cbir.web.collection import Collection, NotFound
from cbir.web.model import ModelWorker
from cbir.web.searches import CombinedSearches
from cbir.web.updater import Updater

MAX_K = 500
MAX_TEXT = 200  # characters of a word query


class UploadTooLarge(CbirError):
    """An upload above ``--max-upload-mb``."""


def duplicate_groups_of(index: IndexReader, threshold: float | None) -> JSONDict:
    """The near-duplicate groups of ``index`` (:mod:`cbir.service.duplicates`, default rules) in the
    shape of ``cbir duplicates --json``, paths relative to the dataset as everywhere in the API."""
    return find_duplicates(index, DuplicateOptions(threshold=threshold), progress=False).to_dict(
        relative=True
    )


@dataclass
class Service:
    """The collection, its model and its indexer, and the limits of what a client may ask."""

    collection: Collection
    worker: ModelWorker
    updater: Updater | None = None
    limits: LoadLimits = LoadLimits()
    max_upload_bytes: int = 32 * 2**20
    duplicates: Callable[[IndexReader, float | None], JSONDict] = duplicate_groups_of
    features: JSONDict = field(default_factory=dict)
    reranking: Reranking = Reranking()  # of like and upload searches (``cbir serve --qe``)
    _duplicates_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _duplicates_done: dict[tuple[Hashable, float | None], JSONDict] = field(default_factory=dict, repr=False)
    searches: CombinedSearches = field(default_factory=CombinedSearches, repr=False)
    # one decode per core at a time: more would only take the cores from the model's batch
    _decoding: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(os.cpu_count() or 1), repr=False
    )

    def info(self) -> JSONDict:
        index = self.collection.current()
        progress = self.updater.progress.to_dict() if self.updater is not None else None
        return {
            "dataset": str(self.collection.root),
            "images": len(index) if index is not None else 0,
            "features": index.config.to_dict() if index is not None else self.features,
            "ready": self.worker.state == "ready",
            "model": self.worker.state,
            "model_error": self.worker.error,
            "queries_embedded": {"passes": self.worker.passes, "images": self.worker.embedded},
            "indexing": progress,
            "max_upload_mb": self.max_upload_bytes / 2**20,
        }

    def like(self, rel: str, k: int, under: str | None) -> JSONDict:
        """More like the indexed image ``rel``, from its stored vector (no model)."""
        index, _ = self.collection.row(rel)
        t0 = time.perf_counter()
        found = like_index(
            index, [rel], SearchRequest(k=_check_k(k), reranking=self.reranking, where=_where(under))
        )[0]
        return _answer(index, found, {"like": rel}, k, under, t0)

    def words(self, text: str, k: int, under: str | None, like: str | None = None) -> JSONDict:
        """The images whose labels match ``text`` (an index made with ``--labels``; no model); with
        ``like``, only the neighbours of that indexed image that match."""
        if len(text) > MAX_TEXT:
            raise QueryError(f"the words are longer than {MAX_TEXT} characters")
        request = SearchRequest(k=_check_k(k), reranking=self.reranking, where=_where(under))
        t0 = time.perf_counter()
        if like is not None:
            index, _ = self.collection.row(like)
            found = like_index(index, [like], replace(request, words=text))[0]
            return _answer(index, found, {"like": like, "text": text}, k, under, t0)
        index = self.collection.require()
        found = text_index(index, None, [text], replace(request, reranking=Reranking()))[0]
        return _answer(index, found, {"text": text}, k, under, t0)

    def upload(self, data: bytes, name: str, k: int, under: str | None) -> JSONDict:
        """The images most like an uploaded image file (embedded by the warm model, batched)."""
        if len(data) > self.max_upload_bytes:
            raise UploadTooLarge(f"the upload is larger than {self.max_upload_bytes // 2**20} MiB")
        k, where = _check_k(k), _where(under)
        index = self.collection.require()
        model = self.worker.ready()
        t0 = time.perf_counter()
        try:
            with self._decoding:
                views = decode_views(data, model.geometry, model.config.scales, self.limits)
        except BadImageError as exc:
            raise BadImageError(f"{name or 'the upload'} is not a usable image: {exc}") from None
        vector = self.worker.embed(views)
        if vector.shape[0] != index.dim:
            raise QueryError("the index was rebuilt with other features; restart the server")
        found = self.searches.search(index, vector, name, k, where, self.reranking)
        return _answer(index, found, {"upload": name}, k, under, t0)

    def duplicate_groups(self, threshold: float | None) -> JSONDict:
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise QueryError("threshold must be in (0, 1]")
        index = self.collection.require()
        key = (index.version, threshold)
        with self._duplicates_lock:  # one computation per index version and threshold
            if key not in self._duplicates_done:
                self._duplicates_done = {key: self.duplicates(index, threshold)}
            return self._duplicates_done[key]


def _check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    return k


def _where(under: str | None) -> ResultFilter:
    if not under or under.strip("/") == "":
        return ResultFilter()
    folder = under.strip("/")
    if folder.startswith("/") or ".." in folder.split("/"):
        raise NotFound(f"not a folder of the collection: {under}")
    return ResultFilter(under=(folder,))


def _answer(
    index: IndexReader, found: QueryResult, query: JSONDict, k: int, under: str | None, t0: float
) -> JSONDict:
    return {
        "query": query,
        "k": k,
        "under": under or None,
        "results": [m.to_dict(index.root) for m in found.matches],
        "took_ms": round((time.perf_counter() - t0) * 1000, 2),
    }
