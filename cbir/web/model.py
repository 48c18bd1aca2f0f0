"""The one warm model of a server: built once in the background, shared by every upload query.

Queries are not run on the model one by one from many threads: each request decodes and resizes its
image itself (its views, the network's inputs) and hands them to :class:`ModelWorker`, whose single
thread takes everything waiting in its queue as one batch (up to ``max_batch``), so concurrent
uploads share forward passes instead of racing for the cores. The worker's thread does nothing per
image but run the network: all else happens in the requests' threads, overlapping the network.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

import numpy as np

from cbir.core.errors import BadImageError, CbirError, ModelError
from cbir.encoders.base import Encoder
from cbir.ingest.decode import Geometry
from cbir.ingest.pipeline import Views

log = logging.getLogger(__name__)


@runtime_checkable
class WarmModel(Encoder, Protocol):
    """The server's model: an encoder that also embeds images given as their views (one uint8
    network input per scale, made as its ``geometry`` says; one vector per image out), so that each
    request decodes its own upload and the model's thread only runs the network."""

    geometry: Geometry
    eager_max_images: int

    def embed_views(self, views: Sequence[Views]) -> np.ndarray: ...

    def embed_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


class ModelLoading(CbirError):
    """The model is not built yet (or failed to build): the query cannot be answered now."""


_Job = tuple[Views, "Future[np.ndarray]"]


def warmed_up(embedder: Encoder) -> WarmModel:
    """``embedder`` set up to serve: always the traced graph (tracing is paid once here, not per
    query as the eager path of a one-off query would), traced for one and for several images.
    ModelError when the encoder cannot embed decoded views (the upload path needs that)."""
    if not isinstance(embedder, WarmModel):
        raise ModelError(
            f"cbir serve needs an encoder that embeds decoded images; {embedder.config.encoder} does not"
        )
    embedder.eager_max_images = 0
    blank = np.full((embedder.geometry.size, embedder.geometry.size, 3), 128, np.uint8)
    embedder.embed_arrays([blank])
    embedder.embed_arrays([blank, blank, blank])
    return embedder


class ModelWorker:
    """Builds the model with ``build`` on its own thread, then embeds queued images in batches."""

    def __init__(self, build: Callable[[], WarmModel], max_batch: int = 32) -> None:
        self._build = build
        self.max_batch = max(1, max_batch)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._built = threading.Event()
        self._model: WarmModel | None = None
        self.error: str | None = None
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # of the last passes: how well requests batch
        self.passes = 0  # forward passes for queries so far
        self.embedded = 0  # images they embedded
        self._thread = threading.Thread(target=self._run, name="cbir-model", daemon=True)

    def start(self) -> ModelWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the queued work and end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    @property
    def state(self) -> str:
        """``loading``, ``ready`` or ``failed``."""
        if self.error is not None:
            return "failed"
        return "ready" if self._model is not None else "loading"

    def wait(self, timeout: float | None = None) -> WarmModel:
        """The built model, waiting for it; ModelLoading when it failed or ``timeout`` ran out."""
        self._built.wait(timeout)
        if self._model is None:
            raise ModelLoading(self.error or "the model is still loading; try again in a moment")
        return self._model

    def ready(self) -> WarmModel:
        """The model if it is built; ModelLoading otherwise (without waiting)."""
        if self._model is None:
            raise ModelLoading(self.error or "the model is still loading; try again in a moment")
        return self._model

    def embed(self, views: Views, timeout: float = 120.0) -> np.ndarray:
        """The vector of one image given as its views, computed in a batch with whatever else is waiting."""
        if self._model is None:
            raise ModelLoading(self.error or "the model is still loading; try again in a moment")
        done: Future[np.ndarray] = Future()
        self._queue.put((views, done))
        return done.result(timeout)

    def _run(self) -> None:
        try:
            self._model = self._build()
        except Exception as exc:  # any failure is reported to every query, the server keeps running
            self.error = f"the model could not be built: {exc}"
            log.error("%s", self.error)
        finally:
            self._built.set()
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(more)
            self._answer(jobs)

    def _answer(self, jobs: list[_Job]) -> None:
        model = self._model
        if model is None:
            for _, done in jobs:
                done.set_exception(ModelLoading(self.error or "no model"))
            return
        self.batch_sizes.append(len(jobs))
        self.passes += 1
        self.embedded += len(jobs)
        try:
            vectors = model.embed_views([views for views, _ in jobs])
        except BadImageError:
            if len(jobs) > 1:  # find which one: each alone
                for one in jobs:
                    self._answer([one])
                return
            jobs[0][1].set_exception(BadImageError("the image cannot be embedded"))
            return
        except Exception as exc:
            for _, done in jobs:
                done.set_exception(exc)
            return
        for (_, done), vector in zip(jobs, vectors):
            done.set_result(vector)
