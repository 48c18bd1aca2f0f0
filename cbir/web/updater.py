"""Bringing the served index up to date in the background, with progress the page can show.

:class:`Updater` runs the ordinary incremental indexer (:func:`cbir.indexing.indexer.update_index`) on
its own thread, as often as it is asked (requests made during a run coalesce into one more run). It
embeds with the server's one model (:class:`~cbir.web.model.ModelWorker` builds it; nothing builds a
second), counting images done and bad files as they come. Readers keep answering from the last
committed version meanwhile; each checkpoint commit becomes visible to them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cbir.core.errors import BadImageError, CbirError
from cbir.core.types import JSONDict
from cbir.encoders.base import Encoder, Result, SourceFeatures
from cbir.indexing.indexer import IndexOptions, IndexReport, update_index
from cbir.service.settings import Settings, classifier_for
from cbir.web.activity import Activity
from cbir.web.worker import OnRequest

log = logging.getLogger(__name__)


def _now() -> str:
    """The wall-clock time, for the page (``YYYY-MM-DDTHH:MM:SS`` local time)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class Progress:
    """What the indexer is doing, for ``GET /api/info``."""

    state: str = "idle"  # idle, indexing, failed
    done: int = 0
    total: int = 0
    bad: list[JSONDict] = field(default_factory=list)  # this run's (or the last run's) failures
    error: str | None = None
    last: JSONDict | None = None  # the report of the last finished run
    runs: int = 0
    since: str | None = None  # when the current (or last) run started
    finished: str | None = None  # when the last run ended
    embedding_since: float | None = None  # monotonic time the current run started embedding
    change: JSONDict | None = None  # the last batch of changes the watcher saw (with ``at``)
    retry: JSONDict | None = None  # files that could not be read, tried again ``at`` (watching)

    def to_dict(self) -> JSONDict:
        rate = 0.0
        if self.state == "indexing" and self.embedding_since is not None and self.done:
            rate = self.done / max(time.monotonic() - self.embedding_since, 1e-9)
        return {
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "per_second": round(rate, 2),
            "left_s": round((self.total - self.done) / rate, 1) if rate > 0 else None,
            "bad": list(self.bad[-100:]),
            "error": self.error,
            "last": self.last,
            "runs": self.runs,
            "since": self.since,
            "finished": self.finished,
            "change": self.change,
            "retry": self.retry,
        }


class _Counting:
    """An encoder that counts what the wrapped one yields into ``progress``."""

    def __init__(
        self, inner: Encoder, progress: Progress, root: str | os.PathLike[str], activity: Activity | None
    ) -> None:
        self.inner = inner
        self.progress = progress
        self.root = root
        self.activity = activity
        self.config = inner.config

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.inner.modalities

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)

    def embed_files(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool | None = False, desc: str = ""
    ) -> Iterator[Result]:
        p = self.progress
        p.total += len(paths)
        if p.embedding_since is None:
            p.embedding_since = time.monotonic()
        if self.activity is not None:
            self.activity.embedding(len(paths))
        for pos, result in self.inner.embed_files(paths, progress=False, desc=desc):
            p.done += 1
            if self.activity is not None:
                self.activity.advanced(p.done, p.total)
            if isinstance(result, BadImageError):
                rel = os.path.relpath(paths[pos], self.root)
                p.bad.append({"path": rel, "reason": str(result), "transient": result.transient})
            yield pos, result


class _Source(SourceFeatures):
    """The settings' features, embedded with the worker's model once it is built."""

    def __init__(
        self,
        settings: Settings,
        model: Callable[[], Encoder],
        progress: Progress,
        activity: Activity | None = None,
    ) -> None:
        self.base = settings
        self.dataset = settings.dataset
        self.model = model
        self.progress = progress
        self.activity = activity

    def embedder(self) -> Encoder:
        return _Counting(self.model(), self.progress, self.dataset, self.activity)


class Updater:
    """Runs ``update_index`` on request, one run at a time, in a background thread."""

    def __init__(
        self,
        settings: Settings,
        options: IndexOptions,
        model: Callable[[], Encoder],
        on_done: Callable[[IndexReport], None] | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.progress = Progress()
        self.activity = activity  # the terminal's lines (cbir serve), None: silent
        self._source = _Source(settings, model, self.progress, activity)
        self._on_done = on_done
        self._worker = OnRequest("cbir-indexer", self.run_once)

    def start(self) -> Updater:
        self._worker.start()
        return self

    def request(self) -> None:
        """Ask for a run (several requests while one runs make one more run)."""
        self._worker.request()

    def stop(self) -> None:
        self._worker.stop()

    def run_once(self) -> IndexReport | None:
        """One indexer run now (on the calling thread); errors, unexpected ones too, are recorded and
        logged, not raised: the thread lives on and ``/api/info`` says ``failed`` with the reason."""
        p = self.progress
        p.state, p.done, p.total, p.bad, p.error = "indexing", 0, 0, [], None
        p.since, p.embedding_since = _now(), None
        try:
            report = update_index(
                self.settings.dataset,
                self._source,
                options=self.options,
                store=self.settings.home,
                classifier=classifier_for(self.settings),
            )
        except (CbirError, OSError) as exc:
            p.state, p.error, p.finished = "failed", str(exc), _now()
            log.warning("indexing failed: %s", exc)
            self._failed(p.error)
            return None
        except Exception as exc:  # a bug must not end the thread and leave the page "indexing" for ever
            p.state, p.error, p.finished = "failed", f"internal error: {type(exc).__name__}: {exc}", _now()
            log.error("indexing failed: %s", p.error, exc_info=True)
            self._failed(p.error)
            return None
        p.state, p.last, p.runs, p.finished = "idle", report.to_dict(), p.runs + 1, _now()
        self.options = replace(self.options, rebuild=False)  # --rebuild means the first run only
        p.bad = list(report.skipped)
        if self.activity is not None:
            self.activity.indexed(p.last)
        if self._on_done is not None:
            self._on_done(report)
        return report

    def _failed(self, error: str) -> None:
        if self.activity is not None:
            self.activity.failed(error)
