"""How much memory uploads may take at once: an admission queue, decode slots, memory given back.

An upload is admitted before its body is read (:meth:`UploadGate.admitted`): at most ``decoders``
decode at once (one per core: more would only take the cores from the model) and at most
``waiting`` more wait for a slot, their bodies held (each capped by ``--max-upload-mb``); anything
beyond is refused at once with :class:`Busy` (503 with ``Retry-After``) instead of queueing without
bound. So the memory uploads can hold is bounded: ``(decoders + waiting) x`` the body cap plus
``decoders x`` one decode, itself bounded by the upload pixel cap (``--max-upload-mp``) and decoded as
small as the model needs (:func:`cbir.ingest.decode.decode_views`).

Freed image buffers go back to the system: :func:`give_back_freed_memory` makes glibc's allocator
serve big blocks (Pillow's 16 MiB image blocks) by ``mmap``, returned on ``free``, and trims its heaps
when the last decode of a burst ends. Other C libraries: nothing to do, nothing done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from cbir.core.errors import CbirError

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # blocks of 1 MiB and more: their own mapping, unmapped when freed


class Busy(CbirError):
    """Too many uploads at once: try again in ``retry_after`` seconds (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 (glibc only: AttributeError elsewhere)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def give_back_freed_memory() -> None:
    """From now on, big blocks are mapped on their own and returned to the system when freed
    (glibc otherwise raises that threshold to the largest block freed, up to 32 MiB, and keeps
    what a burst of decodes freed)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim() -> None:
    """Return the free memory at the top of the allocator's heaps to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class UploadGate:
    """At most ``decoders`` uploads decoding, at most ``waiting`` more admitted and waiting."""

    def __init__(self, decoders: int | None = None, waiting: int | None = None) -> None:
        self.decoders = max(1, decoders or os.cpu_count() or 1)
        self.waiting = self.decoders * 4 if waiting is None else max(0, waiting)
        self._slots = threading.BoundedSemaphore(self.decoders)
        self._lock = threading.Lock()
        self.admitted_now = 0
        self.decoding_now = 0
        self.refused = 0  # uploads answered 503 so far

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold a place for one upload (its body and its decode); Busy when every place is taken."""
        with self._lock:
            if self.admitted_now >= self.decoders + self.waiting:
                self.refused += 1
                raise Busy(f"busy: {self.admitted_now} uploads are being searched; try again in a moment")
            self.admitted_now += 1
        try:
            yield
        finally:
            with self._lock:
                self.admitted_now -= 1

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """One of the decode slots, waiting for it; the heaps are trimmed after the last one."""
        with self._slots:
            with self._lock:
                self.decoding_now += 1
            try:
                yield
            finally:
                with self._lock:
                    self.decoding_now -= 1
                    last = self.decoding_now == 0
        if last:
            trim()

    def to_dict(self) -> dict[str, int]:
        return {
            "decoders": self.decoders,
            "waiting": self.waiting,
            "admitted": self.admitted_now,
            "refused": self.refused,
        }
