"""Images -> batches ready for a network: decoding threads, per-scale views, batches of one shape.

Decoding, resizing and the per-scale views run in a pool of threads (Pillow and NumPy release the
GIL) a bounded distance ahead of the consumer, so they overlap with the network. Views of equal
shape share a batch; a :class:`Batch` says which source image each row came from and which images
have had all their views delivered, so a consumer can average an image's scales as soon as it may.
Unusable images come out as :class:`BadItem` in their place, never as an exception.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
from PIL import Image

from cbir.core.errors import BadImageError
from cbir.ingest.decode import Geometry, LoadLimits, is_passing_error, load_views, resize, to_rgb

Views = list[np.ndarray]
"""The uint8 HxWx3 network inputs of one image, one per scale."""


def default_workers() -> int:
    """One decoding thread per core, at most 8: more only add contention with the network."""
    return min(8, os.cpu_count() or 2)


@dataclass(frozen=True)
class Batch:
    """Views of one shape, ready for the network.

    ``array`` is uint8 (N, H, W, 3); ``items[i]`` is the position (in the input sequence) of the
    image row ``i`` belongs to; ``done`` lists the positions whose last view is in this batch.
    """

    array: np.ndarray
    items: list[int]
    done: list[int]


class BadItem(NamedTuple):
    """An input that cannot be used: its position and why."""

    position: int
    error: BadImageError


class ImagePipeline:
    """Turns files or arrays into :class:`Batch` es of at most ``batch_size`` views, plus :class:`BadItem` s.

    Every image gives ``len(scales)`` views, resized as ``geometry`` says; ``limits`` guards memory.
    """

    def __init__(
        self,
        geometry: Geometry,
        scales: tuple[float, ...] = (1.0,),
        limits: LoadLimits = LoadLimits(),
        workers: int | None = None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not scales:
            raise ValueError("at least one scale is needed")
        self.geometry = geometry
        self.scales = tuple(scales)
        self.limits = limits
        self.workers = workers or default_workers()
        self.batch_size = batch_size

    def load(self, path: str | os.PathLike[str]) -> Views:
        """The views of one file (BadImageError when it is unusable)."""
        return load_views(path, self.geometry, self.scales, self.limits)

    def views(self, array: np.ndarray) -> Views:
        """The views of one decoded image: an (H, W, 3) uint8 RGB array (or anything Pillow takes)."""
        img = to_rgb(Image.fromarray(np.asarray(array, dtype=np.uint8)))
        return [resize(img, self.geometry, s) for s in self.scales]

    def from_files(self, paths: Sequence[str | os.PathLike[str]]) -> Generator[Batch | BadItem, None, None]:
        """Batches of the views of ``paths`` (positions index ``paths``), in roughly input order."""
        return self._batched(self._decoded(partial(self.load, os.fspath(p)) for p in paths))

    def from_arrays(self, arrays: Sequence[np.ndarray]) -> Generator[Batch | BadItem, None, None]:
        """Batches of the views of already-decoded images (positions index ``arrays``)."""
        return self._batched(self._decoded(partial(self.views, a) for a in arrays))

    def from_views(self, views: Sequence[Views]) -> Generator[Batch | BadItem, None, None]:
        """Batches of views made beforehand (positions index ``views``), with no threads: for callers
        that decoded and resized each image where it arrived (the server's upload requests)."""
        return self._batched((i, v) for i, v in enumerate(views))

    def _decoded(
        self, jobs: Iterable[Callable[[], Views]]
    ) -> Generator[tuple[int, Views | BadImageError], None, None]:
        """Run ``jobs`` in the thread pool, a bounded distance ahead; yield their results in order."""
        prefetch = max(self.batch_size * 2, self.workers * 2)
        executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cbir-decode")
        pending: deque[tuple[int, Future[Views]]] = deque()
        todo = enumerate(jobs)
        try:
            for i, job in todo:
                pending.append((i, executor.submit(job)))
                if len(pending) >= prefetch:
                    break
            while pending:
                i, fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt[0], executor.submit(nxt[1])))
                try:
                    yield i, fut.result()
                except BadImageError as exc:
                    yield i, exc
                except Exception as exc:  # an unexpected decoder failure must not end a long run
                    message = f"cannot decode ({type(exc).__name__}: {exc})"
                    yield i, BadImageError(message, transient=is_passing_error(exc))
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def _batched(
        self, decoded: Generator[tuple[int, Views | BadImageError], None, None]
    ) -> Generator[Batch | BadItem, None, None]:
        """Group views by shape; a group is yielded when full, and every group at the end.

        Closing this generator early closes ``decoded`` (which stops its threads).
        """
        buckets: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = defaultdict(list)
        remaining: dict[int, int] = {}

        def flush(shape: tuple[int, ...]) -> Batch:
            group = buckets.pop(shape)
            done: list[int] = []
            for i, _ in group:
                remaining[i] -= 1
                if remaining[i] == 0:
                    del remaining[i]
                    done.append(i)
            return Batch(np.stack([v for _, v in group]), [i for i, _ in group], done)

        with closing(decoded):
            for i, views in decoded:
                if isinstance(views, BadImageError):
                    yield BadItem(i, views)
                    continue
                remaining[i] = len(views)
                for v in views:
                    buckets[v.shape].append((i, v))
                    if len(buckets[v.shape]) >= self.batch_size:
                        yield flush(v.shape)
        for shape in list(buckets):
            yield flush(shape)
