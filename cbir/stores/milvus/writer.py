"""The Milvus store's :class:`~cbir.stores.folder.writer.IndexWriter`: rows upserted in bounded batches.

Nothing is written on entering: a collection built with other settings (or ``rebuild``) is dropped
and made again at the first commit, so a run that fails before it leaves the collection as it was.
A commit deletes the vanished and re-embedded files' rows, upserts the new rows batch by batch
(each row carries its vector and the stat it was embedded at, so it is whole on its own), records
the failed files as rows of status 1 or 2, then stamps the collection's ``cbir.commit`` property,
which readers compare to notice a new version. A crash or Ctrl-C loses at most the batch being
written; the next run resumes by rescanning. Milvus has no lock: several writers may share a
collection when each owns a slice of the files (``--shard``).

Other processes (Ray workers) may write rows themselves through a :class:`MilvusSink`. Handing one
out commits first: a rebuild drops and makes the collection then (not at the first checkpoint, so a
run that fails after it leaves an empty collection rather than the old one), and the deletes of
dropped and no-longer-failed files are done before any worker writes, so no later commit can delete
a row a worker wrote before the indexer heard of it. The indexer then adopts those rows
(:meth:`~MilvusWriter.adopt`); a crash leaves them in the collection, found by the next run as held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from cbir.core.records import Entry, Skipped
from cbir.core.types import JSONDict
from cbir.encoders.features import FeatureConfig
from cbir.stores.milvus.client import (
    MAX_REASON,
    MilvusAddress,
    MilvusCollection,
    Record,
    folder_of,
    milvus_errors,
    new_commit_stamp,
    open_client,
    served_uri,
    token_for,
)

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

BATCH_ROWS = 256  # rows per upsert: 2 MiB of 2048-d float32 vectors, far below gRPC's message limit
FIELDS = ["path", "size", "mtime_ns", "taken", "status", "reason"]
OK, BAD, BAD_TRANSIENT = 0, 1, 2


def row_entry(row: JSONDict) -> Entry:
    return Entry(str(row["path"]), int(row["size"]), int(row["mtime_ns"]), str(row["taken"]) or None)


def _row(entry: Entry, vector: list[float], status: int = OK, reason: str = "") -> JSONDict:
    return {
        "path": entry.path,
        "vector": vector,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "folder": folder_of(entry.path),
        "taken": entry.taken or "",
        "status": status,
        "reason": reason[:MAX_REASON],
    }


def upsert(client: MilvusClient, collection: str, rows: list[JSONDict], batch_rows: int) -> None:
    """Write ``rows`` in batches of ``batch_rows`` (each row whole on its own)."""
    for start in range(0, len(rows), batch_rows):
        with milvus_errors(f"writing to the collection {collection}"):
            client.upsert(collection, rows[start : start + batch_rows])


@dataclass
class MilvusSink:
    """A :class:`~cbir.stores.sink.RowSink` into one collection: a worker connects on its first write.

    It carries the server's address and token (never a client) to the workers; for Milvus Lite the
    address is the driver's in-process server on 127.0.0.1, which only this machine can reach.
    """

    uri: str
    collection: str
    batch_rows: int = BATCH_ROWS
    token: str = field(default="", repr=False)
    _client: MilvusClient | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_client": None}  # a client does not travel; each process opens its own

    def write(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        if len(entries) != len(vectors):
            raise ValueError("one vector per entry")
        if self._client is None:
            self._client = open_client(self.uri, self.token)
        rows = [_row(e, v.tolist()) for e, v in zip(entries, np.asarray(vectors, dtype=np.float32))]
        upsert(self._client, self.collection, rows, self.batch_rows)


class MilvusWriter:
    """Writes one collection for the indexer (see the module docstring)."""

    def __init__(
        self,
        collection: MilvusCollection,
        config: FeatureConfig,
        *,
        rebuild: bool,
        weights_path: str | None,
        address: MilvusAddress,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.collection, self.config, self.rebuild = collection, config, rebuild
        self.weights_path, self.batch_rows, self.address = weights_path, batch_rows, address
        self.rebuilt: str | None = "asked" if rebuild else None
        self._exists = False  # a collection of ours is there now
        self._reset = False  # drop it at the first commit
        self._dim = 0
        self._held: dict[str, Entry] = {}
        self._bad: dict[str, Skipped] = {}
        self._puts: list[tuple[list[Entry], np.ndarray]] = []
        self._drops: set[str] = set()
        self._skipped: list[Skipped] | None = None
        self._taken: dict[str, str] = {}
        self._adopted = False  # rows a sink wrote were adopted since the last commit

    def __enter__(self) -> MilvusWriter:
        record = self.collection.record()
        self._exists = record is not None
        if record is None:
            return self
        if self.rebuild or record.config != self.config:
            if not self.rebuild:
                log.info("index settings changed; rebuilding %s", self.collection.where)
                self.rebuilt = "settings changed"
            self._reset = True
            return self
        self._dim = record.dim
        self.collection.ensure_loaded()
        for row in self.collection.rows("status >= 0", FIELDS):
            if int(row["status"]) == OK:
                self._held[str(row["path"])] = row_entry(row)
            else:
                e = row_entry(row)
                self._bad[e.path] = Skipped(
                    e.path, e.size, e.mtime_ns, str(row["reason"]), int(row["status"]) == BAD_TRANSIENT
                )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None  # no lock to give back; the store keeps its client

    @property
    def is_new(self) -> bool:
        return not self._exists or self._reset

    def set_dim(self, dim: int) -> None:
        if not self.is_new and dim != self._dim:
            raise ValueError(f"vectors of {dim} dimensions for an index of {self._dim}")
        self._dim = dim

    def unchanged_since_commit(self) -> bool:
        return not (
            self._puts
            or self._drops
            or self._taken
            or self._reset
            or self._adopted
            or self._skipped is not None
        )

    def held(self) -> dict[str, Entry]:
        return dict(self._held)

    def known_bad(self) -> dict[str, Skipped]:
        return dict(self._bad)

    def put(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        if len(entries) != len(vectors):
            raise ValueError("one vector per entry")
        if len(entries):
            self._puts.append((list(entries), np.asarray(vectors, dtype=np.float32)))

    def sink(self, *, same_machine: bool) -> MilvusSink | None:
        """A sink into this collection, after a commit of what is pending (module docstring); None for
        Milvus Lite when the writers are not all on this machine (its server is on 127.0.0.1)."""
        if self.address.lite and not same_machine:
            return None
        self.commit()
        return MilvusSink(
            served_uri(self.address), self.collection.name, self.batch_rows, token=token_for(self.address)
        )

    def adopt(self, entries: Sequence[Entry]) -> None:
        self._held.update({e.path: e for e in entries})
        self._adopted = self._adopted or bool(entries)

    def set_taken(self, taken: Mapping[str, str]) -> None:
        self._taken.update({p: t for p, t in taken.items() if p in self._held})

    def drop(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._held.pop(path, None)
            self._drops.add(path)

    def set_skipped(self, skipped: Sequence[Skipped]) -> None:
        self._skipped = list(skipped)

    def commit(self) -> None:
        stamp = new_commit_stamp()
        if self._reset:
            self.collection.drop()
            self._exists, self._reset = False, False
        if not self._exists:
            self.collection.create(Record(self.config, self._dim, self.weights_path, stamp))
            self._exists = True
        put_paths = {e.path for entries, _ in self._puts for e in entries}
        skipped = self._skipped if self._skipped is not None else list(self._bad.values())
        bad_now = {s.path: s for s in skipped}
        gone = (self._drops | (set(self._bad) - set(bad_now))) - put_paths - set(bad_now)
        self._delete(sorted(gone))
        self._retake()
        for entries, vectors in self._puts:
            self._upsert([_row(e, v.tolist()) for e, v in zip(entries, vectors)])
            self._held.update({e.path: e for e in entries})
        zero = [0.0] * self._dim
        fresh_bad = [s for s in skipped if self._bad.get(s.path) != s]
        self._upsert(
            [
                _row(Entry(s.path, s.size, s.mtime_ns), zero, BAD_TRANSIENT if s.transient else BAD, s.reason)
                for s in fresh_bad
            ]
        )
        self.collection.set_commit(stamp)
        self._bad = bad_now
        self._puts.clear()
        self._drops.clear()
        self._skipped = None
        self._adopted = False

    def _retake(self) -> None:
        """Capture times of held rows (upserted with their stored vectors)."""
        paths = [p for p in self._taken if p in self._held]
        for start in range(0, len(paths), self.batch_rows):
            chunk = paths[start : start + self.batch_rows]
            with milvus_errors(f"reading the collection {self.collection.name}"):
                got = self.collection.client.get(self.collection.name, ids=chunk, output_fields=["vector"])
            vectors = {str(r["path"]): list(r["vector"]) for r in got}
            rows = []
            for path in chunk:
                if path in vectors:
                    entry = Entry(path, self._held[path].size, self._held[path].mtime_ns, self._taken[path])
                    rows.append(_row(entry, vectors[path]))
                    self._held[path] = entry
            self._upsert(rows)
        self._taken.clear()

    def _delete(self, paths: list[str]) -> None:
        step = self.batch_rows * 4
        for start in range(0, len(paths), step):
            with milvus_errors(f"deleting from the collection {self.collection.name}"):
                self.collection.client.delete(self.collection.name, ids=paths[start : start + step])

    def _upsert(self, rows: list[JSONDict]) -> None:
        upsert(self.collection.client, self.collection.name, rows, self.batch_rows)

    def finish(self, ann_mode: str) -> str:
        """Seal what was written, so Milvus indexes it (HNSW) instead of scanning it on every search;
        Milvus builds and keeps the index itself."""
        if self._exists:
            with milvus_errors(f"flushing the collection {self.collection.name}"):
                self.collection.client.flush(self.collection.name)
        return "hnsw (milvus)"
