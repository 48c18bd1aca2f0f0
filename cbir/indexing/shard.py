"""``--shard I/N``: one of N processes indexing the same store, each its own slice of the files.

A file belongs to slice ``crc32(path) mod N`` (stable across machines and runs). A shard plans and
writes only its slice: :class:`ShardView` shows the indexer the store's rows of that slice and
keeps the other slices' failed files when it replaces the list. Without Ray or any scheduler of
ours, N batch jobs (``--shard 0/N`` ... ``--shard N-1/N``) fill one Milvus collection; the folder
store, which one process at a time may write, takes them one after another.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from cbir.core.errors import StoreError
from cbir.core.labels import Labels
from cbir.core.records import Entry, Skipped
from cbir.stores.base import IndexWriter
from cbir.stores.sink import RowSink


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (0-based); ``Shard()`` is everything."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError("a shard is I/N with 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` -> Shard(I, N); ValueError for anything else."""
        i, sep, n = text.partition("/")
        if not sep or not i.strip().isdigit() or not n.strip().isdigit():
            raise ValueError(f"{text!r} is not I/N")
        return cls(int(i), int(n))

    def owns(self, path: str) -> bool:
        return self.count == 1 or zlib.crc32(os.fsencode(path)) % self.count == self.index

    def view(self, writer: IndexWriter) -> IndexWriter:
        """``writer`` as this shard sees it (itself when the shard is everything)."""
        return writer if self.count == 1 else ShardView(writer, self)


class ShardView:
    """An :class:`~cbir.stores.base.IndexWriter` restricted to one shard's files."""

    def __init__(self, inner: IndexWriter, shard: Shard) -> None:
        self.inner, self.shard = inner, shard
        self.rebuilt: str | None = None

    def __enter__(self) -> ShardView:
        self.inner.__enter__()
        if self.inner.rebuilt is not None:
            self.inner.__exit__(None, None, None)
            raise StoreError(
                f"--shard: the index is {self.inner.rebuilt} and would be rebuilt; run one indexer "
                "without --shard first (with --rebuild or the new settings), then the shards"
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.inner.__exit__(kind, exc, tb)

    @property
    def is_new(self) -> bool:
        return self.inner.is_new

    def set_dim(self, dim: int) -> None:
        self.inner.set_dim(dim)

    def unchanged_since_commit(self) -> bool:
        return self.inner.unchanged_since_commit()

    def held(self) -> dict[str, Entry]:
        return {p: e for p, e in self.inner.held().items() if self.shard.owns(p)}

    def known_bad(self) -> dict[str, Skipped]:
        return {p: s for p, s in self.inner.known_bad().items() if self.shard.owns(p)}

    def put(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        self.inner.put(entries, vectors)

    def sink(self, *, same_machine: bool) -> RowSink | None:
        return self.inner.sink(same_machine=same_machine)

    def adopt(self, entries: Sequence[Entry]) -> None:
        self.inner.adopt(entries)

    def end_sink(self) -> None:
        self.inner.end_sink()

    def set_taken(self, taken: Mapping[str, str]) -> None:
        self.inner.set_taken(taken)

    def drop(self, paths: Iterable[str]) -> None:
        self.inner.drop(paths)

    def set_skipped(self, skipped: Sequence[Skipped]) -> None:
        others = [s for p, s in self.inner.known_bad().items() if not self.shard.owns(p)]
        self.inner.set_skipped([*others, *skipped])

    @property
    def labeller(self) -> str | None:
        return self.inner.labeller

    def labelled(self) -> set[str]:
        return {p for p in self.inner.labelled() if self.shard.owns(p)}

    def put_labels(self, classifier: str, labels: Mapping[str, Labels]) -> None:
        self.inner.put_labels(classifier, labels)

    def commit(self) -> None:
        self.inner.commit()

    def finish(self, ann_mode: str) -> str:
        return self.inner.finish(ann_mode)
