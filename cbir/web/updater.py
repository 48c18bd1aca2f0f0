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
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cbir.core.errors import BadImageError, CbirError
from cbir.core.types import JSONDict
from cbir.encoders.base import Encoder, Result, SourceFeatures
from cbir.indexing.indexer import IndexOptions, IndexReport, update_index
from cbir.service.settings import Settings, classifier_for

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the indexer is doing, for ``GET /api/info``."""

    state: str = "idle"  # idle, indexing, failed
    done: int = 0
    total: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    last: JSONDict | None = None  # the report of the last finished run
    runs: int = 0

    def to_dict(self) -> JSONDict:
        return {
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "bad": list(self.bad[-100:]),
            "error": self.error,
            "last": self.last,
            "runs": self.runs,
        }


class _Counting:
    """An encoder that counts what the wrapped one yields into ``progress``."""

    def __init__(self, inner: Encoder, progress: Progress, root: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.progress = progress
        self.root = root
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
        self.progress.total += len(paths)
        for pos, result in self.inner.embed_files(paths, progress=False, desc=desc):
            self.progress.done += 1
            if isinstance(result, BadImageError):
                rel = os.path.relpath(paths[pos], self.root)
                self.progress.bad.append({"path": rel, "reason": str(result)})
            yield pos, result


class _Source(SourceFeatures):
    """The settings' features, embedded with the worker's model once it is built."""

    def __init__(self, settings: Settings, model: Callable[[], Encoder], progress: Progress) -> None:
        self.base = settings
        self.dataset = settings.dataset
        self.model = model
        self.progress = progress

    def embedder(self) -> Encoder:
        return _Counting(self.model(), self.progress, self.dataset)


class Updater:
    """Runs ``update_index`` on request, one run at a time, in a background thread."""

    def __init__(
        self,
        settings: Settings,
        options: IndexOptions,
        model: Callable[[], Encoder],
        on_done: Callable[[IndexReport], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.progress = Progress()
        self._source = _Source(settings, model, self.progress)
        self._on_done = on_done
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="cbir-indexer", daemon=True)

    def start(self) -> Updater:
        self._thread.start()
        return self

    def request(self) -> None:
        """Ask for a run (several requests while one runs make one more run)."""
        self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping:
                return
            self._wanted.clear()
            self.run_once()

    def run_once(self) -> IndexReport | None:
        """One indexer run now (on the calling thread); errors, unexpected ones too, are recorded and
        logged, not raised: the thread lives on and ``/api/info`` says ``failed`` with the reason."""
        p = self.progress
        p.state, p.done, p.total, p.bad, p.error = "indexing", 0, 0, [], None
        try:
            report = update_index(
                self.settings.dataset,
                self._source,
                options=self.options,
                store=self.settings.home,
                classifier=classifier_for(self.settings),
            )
        except (CbirError, OSError) as exc:
            p.state, p.error = "failed", str(exc)
            log.warning("indexing failed: %s", exc)
            return None
        except Exception as exc:  # a bug must not end the thread and leave the page "indexing" for ever
            p.state, p.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            log.error("indexing failed: %s", p.error, exc_info=True)
            return None
        p.state, p.last, p.runs = "idle", report.to_dict(), p.runs + 1
        self.options = replace(self.options, rebuild=False)  # --rebuild means the first run only
        p.bad = list(report.skipped)
        if self._on_done is not None:
            self._on_done(report)
        return report
