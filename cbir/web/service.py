"""What the web API does, without HTTP: info, browse, like- and upload-search, duplicates
(:mod:`cbir.web.duplicates`).

:class:`Service` ties the collection (the committed index, reloaded on commit), the warm model
(:class:`~cbir.web.model.ModelWorker`) and the background indexer (:class:`~cbir.web.updater.Updater`)
together; :mod:`cbir.web.app` only maps its answers and errors to HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cbir.core.errors import BadImageError, CbirError, QueryError
from cbir.core.results import QueryResult
from cbir.core.types import JSONDict
from cbir.encoders.base import Encoder
from cbir.encoders.features import FeatureConfig
from cbir.ingest.decode import LoadLimits, decode_views, screen_bytes
from cbir.search.filters import ResultFilter, parse_moment
from cbir.search.rerank import Reranking
from cbir.search.words import MAX_TEXT
from cbir.service.query import SearchRequest, TextModel, embeds_text, like_index, text_index, words_route
from cbir.stores.base import IndexReader
from cbir.web.collection import Collection, NotFound, image_facts
from cbir.web.duplicates import DuplicateReview, Lacking
from cbir.web.model import ModelWorker
from cbir.web.searches import CombinedSearches
from cbir.web.updater import Updater
from cbir.web.uploads import UploadGate

MAX_K = 500
MAX_BAD_LISTED = 1000
"""The most bad files ``/api/info`` lists (it is polled every few seconds); ``bad_count`` has them all."""
MAX_UPLOAD_PIXELS = 40_000_000
"""The default pixel cap of an upload (``--max-upload-mp 40``): a photo of any current camera, and
an upload's decode bounded well below the indexing guard's 250 megapixels."""


@dataclass(frozen=True)
class Where:
    """Which part of the collection a request is about: a folder (``under``), capture dates."""

    under: str | None = None
    since: str | None = None
    until: str | None = None

    def to_dict(self) -> JSONDict:
        return {"under": self.under or None, "since": self.since, "until": self.until}


class UploadTooLarge(CbirError):
    """An upload above ``--max-upload-mb``."""


@dataclass(frozen=True)
class WarmText:
    """The server's warm model as the text model of a word search (503 while it is loading)."""

    worker: ModelWorker

    @property
    def config(self) -> FeatureConfig:
        return self.worker.ready().config

    def embedder(self) -> Encoder:
        return self.worker.ready()


@dataclass
class Service:
    """The collection, its model and its indexer, and the limits of what a client may ask."""

    collection: Collection
    worker: ModelWorker
    updater: Updater | None = None
    limits: LoadLimits = LoadLimits()
    max_upload_bytes: int = 32 * 2**20
    max_upload_pixels: int = MAX_UPLOAD_PIXELS
    features: JSONDict = field(default_factory=dict)
    reranking: Reranking = Reranking()  # of like and upload searches (``cbir serve --qe``)
    review: DuplicateReview | None = None  # the near-duplicate groups and their moves
    searches: CombinedSearches = field(default_factory=CombinedSearches, repr=False)
    uploads: UploadGate = field(default_factory=UploadGate, repr=False)

    @property
    def upload_limits(self) -> LoadLimits:
        """The decoding guards of an upload: the indexing ones, with the (lower) upload pixel cap."""
        return LoadLimits(min(self.limits.max_pixels, self.max_upload_pixels), self.limits.max_bytes)

    def info(self) -> JSONDict:
        index = self.collection.current()
        progress = self.updater.progress.to_dict() if self.updater is not None else None
        if progress is not None:
            progress["bad"], progress["bad_count"] = bad_files(index, progress["bad"])
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
            "max_upload_mp": self.max_upload_pixels / 1e6,
            "uploads": self.uploads.to_dict(),
            "duplicates": self.review.state() if self.review is not None else None,
        }

    def like(self, rel: str, k: int, where: Where = Where()) -> JSONDict:
        """More like the indexed image ``rel``, from its stored vector (no model)."""
        index, _ = self.collection.row(rel)
        where = _checked(where)
        t0 = time.perf_counter()
        request = SearchRequest(k=_check_k(k), reranking=self.reranking, where=self._filter(index, where))
        found = like_index(index, [rel], request)[0]
        return _answer(index, found, {"like": rel}, k, where, t0)

    def search(self, like: str | None, text: str | None, k: int, where: Where = Where()) -> JSONDict:
        """GET /api/search: more like the indexed image ``like``, the images that match ``text``
        (:meth:`words`), or both; QueryError when neither is given."""
        if text is not None:
            return self.words(text, k, where, like)
        if like is None:
            raise QueryError("give like=PATH (an indexed image) or text=WORDS")
        return self.like(like, k, where)

    def words(self, text: str, k: int, where: Where = Where(), like: str | None = None) -> JSONDict:
        """The images that match ``text``: through the text tower of the index's joint text-image
        model (warm in the worker), else through its labels (an index made with ``--labels``; no
        model); with ``like``, that indexed image's neighbours blended with the words (joint model)
        or only those that match (labels). The answer's ``query.by`` says which."""
        if len(text) > MAX_TEXT:
            raise QueryError(f"the words are longer than {MAX_TEXT} characters")
        k, where = _check_k(k), _checked(where)
        t0 = time.perf_counter()
        if like is not None:
            index, _ = self.collection.row(like)
            request = SearchRequest(
                k=k, reranking=self.reranking, where=self._filter(index, where), words=text
            )
            found = like_index(index, [like], request, self._text_model(index))[0]
            return _answer(index, found, {"like": like, "text": text, **_route(index)}, k, where, t0)
        index = self.collection.require()
        request = SearchRequest(k=k, where=self._filter(index, where))
        found = text_index(index, self._text_model(index), [text], request)[0]
        return _answer(index, found, {"text": text, **_route(index)}, k, where, t0)

    def _text_model(self, index: IndexReader) -> TextModel | None:
        """The warm model, for words on an index of a joint text-image model (its text tower)."""
        return WarmText(self.worker) if embeds_text(index) else None

    def screen(self, data: bytes, name: str) -> None:
        """Refuse an upload the decode would refuse, from its header alone (BadImageError): cheap
        enough for the event loop, so a flood of refused uploads never queues for the decode slots
        or the thread pool that the normal uploads wait in."""
        try:
            screen_bytes(data, self.upload_limits)
        except BadImageError as exc:
            raise BadImageError(f"{name or 'the upload'} is not a usable image: {exc}") from None

    def upload(self, data: bytes, name: str, k: int, where: Where = Where()) -> JSONDict:
        """The images most like an uploaded image file (embedded by the warm model, batched); the
        caller holds a place of :attr:`uploads` (``uploads.admitted()``) while it reads the body."""
        if len(data) > self.max_upload_bytes:
            raise UploadTooLarge(f"the upload is larger than {self.max_upload_bytes // 2**20} MiB")
        k, where = _check_k(k), _checked(where)
        index = self.collection.require()
        result_filter = self._filter(index, where)
        model = self.worker.ready()
        t0 = time.perf_counter()
        self.screen(data, name)
        try:
            with self.uploads.decoding():
                views = decode_views(
                    data, model.geometry, model.config.scales, self.upload_limits, reduce=True
                )
        except BadImageError as exc:
            raise BadImageError(f"{name or 'the upload'} is not a usable image: {exc}") from None
        vector = self.worker.embed(views)
        if vector.shape[0] != index.dim:
            raise QueryError("the index was rebuilt with other features; restart the server")
        found = self.searches.search(index, vector, name, k, result_filter, self.reranking)
        return _answer(index, found, {"upload": name}, k, where, t0)

    def browse(self, folder: str, page: int, where: Where = Where(), sort: str = "name") -> JSONDict:
        """One page of a folder (only the photos taken between ``since`` and ``until``, if given),
        by name or by date taken."""
        if where.under:
            raise QueryError("browse takes dir=, not under=")
        where = _checked(where)
        return self.collection.browse(folder, page, where.since, where.until, sort)

    def image(self, rel: str) -> JSONDict:
        """GET /api/image: the viewer's details of the indexed image ``rel``: path, folder, date
        taken and bytes (from the index), and its upright pixel size (from the file's header only)."""
        index, _ = self.collection.row(rel)
        width, height = _upright_size(self.collection.file(rel))
        return {**image_facts(index, rel), "folder": rel.rpartition("/")[0], "width": width, "height": height}

    def _filter(self, index: IndexReader, where: Where) -> ResultFilter:
        """The search filter of ``where`` (dates checked): NotFound for a folder that is not one of
        the collection."""
        folder = (where.under or "").strip("/")
        if folder and folder not in self.collection.folders(index).counts:
            raise NotFound(f"not a folder of the collection: {where.under}")
        return ResultFilter(under=(folder,) if folder else (), since=where.since, until=where.until)

    def duplicate_groups(self, threshold: float | None) -> JSONDict:
        """GET /api/duplicates: the groups made in the background (``computing`` until then)."""
        return self.reviewer().groups(threshold)

    def reviewer(self) -> DuplicateReview:
        if self.review is None:
            raise Lacking("this server does not group near-duplicates")
        return self.review


def bad_files(index: IndexReader | None, this_run: list[JSONDict]) -> tuple[list[JSONDict], int]:
    """The files that could not be used, each ``{path, reason, transient}``, sorted by path, at most
    :data:`MAX_BAD_LISTED`, and how many there are: the failures the index remembers (they survive
    later runs and restarts until the file is fixed or removed) with this run's (or the last run's)
    newer ones over them, which include what the index does not keep (unreadable folders, names
    with control characters, links leaving the dataset)."""
    found: dict[str, JSONDict] = {}
    if index is not None:
        for s in index.skipped():
            found[s.path] = {"path": s.path, "reason": s.reason, "transient": s.transient}
    for b in this_run:
        known = found.get(b["path"], {}).get("transient", False)
        found[b["path"]] = {"path": b["path"], "reason": b["reason"], "transient": b.get("transient", known)}
    listed = [found[p] for p in sorted(found)[:MAX_BAD_LISTED]]
    return listed, len(found)


def _check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    return k


def _checked(where: Where) -> Where:
    """``where`` with its dates as the index compares them; QueryError for one that is not a date."""
    return Where(where.under, _moment(where.since, "since"), _moment(where.until, "until"))


def _moment(text: str | None, name: str) -> str | None:
    if text is None:
        return None
    try:
        return parse_moment(text)
    except QueryError as exc:
        raise QueryError(f"{name}: {exc}") from None


def _with_facts(index: IndexReader, match: JSONDict) -> JSONDict:
    """A result with the facts the page shows on a tile (date taken, bytes)."""
    return {**image_facts(index, match["path"]), **match}


def _upright_size(path: Path) -> tuple[int | None, int | None]:
    """The width and height the image is shown at (EXIF orientation applied), read from its header
    (no decoding); (None, None) for a file Pillow cannot open."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None, None
    return (height, width) if turned else (width, height)


def _answer(
    index: IndexReader, found: QueryResult, query: JSONDict, k: int, where: Where, t0: float
) -> JSONDict:
    return {
        "query": query,
        "k": k,
        **where.to_dict(),
        "results": [_with_facts(index, m.to_dict(index.root)) for m in found.matches],
        "took_ms": round((time.perf_counter() - t0) * 1000, 2),
    }


def _route(index: IndexReader) -> JSONDict:
    """``{"by": ...}``: how the words were matched, for the page to say (a joint model's text tower,
    or the index's labels)."""
    return {"by": words_route(index)}
