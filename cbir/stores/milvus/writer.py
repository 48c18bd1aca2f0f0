"""The Milvus store's :class:`~cbir.stores.base.IndexWriter`: rows upserted in bounded batches.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from cbir.core.labels import labels_to_text
from cbir.core.names import to_key
from cbir.core.records import Entry, Skipped
from cbir.core.types import JSONDict
from cbir.encoders.features import FeatureConfig
from cbir.stores.database import DatabaseWriter
from cbir.stores.milvus.client import (
    MilvusAddress,
    MilvusCollection,
    Record,
    folder_of,
    milvus_errors,
    new_commit_stamp,
    open_client,
    served_uri,
    server_timestamp,
    stored_reason,
    token_for,
)

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

BATCH_ROWS = 256  # rows per upsert: 2 MiB of 2048-d float32 vectors, far below gRPC's message limit
# a run that wrote fewer rows leaves them to Milvus' own sealing (a segment is sealed when full or
# idle): a flush costs ~2 s on a server and makes one more small segment to compact, while a few
# hundred unsealed rows are scanned as fast as they are searched; committed rows are durable either way
FLUSH_ROWS = 1024
FIELDS = ["path", "size", "mtime_ns", "taken", "status", "reason"]
OK, BAD, BAD_TRANSIENT = 0, 1, 2


def row_entry(row: JSONDict) -> Entry:
    """The entry of a row read through :class:`MilvusCollection` (its ``path`` in memory form)."""
    return Entry(str(row["path"]), int(row["size"]), int(row["mtime_ns"]), str(row["taken"]) or None)


def failure_of(row: JSONDict) -> Skipped:
    """The failure a row of status 1 or 2 records (read with :data:`FIELDS`)."""
    e = row_entry(row)
    return Skipped(e.path, e.size, e.mtime_ns, str(row["reason"]), int(row["status"]) == BAD_TRANSIENT)


def _held_row(row: JSONDict) -> Entry | Skipped:
    """A stored row as the writer holds it: an indexed file, or a failure (status 1 or 2)."""
    return row_entry(row) if int(row["status"]) == OK else failure_of(row)


def _row(entry: Entry, vector: list[float], status: int = OK, reason: str = "") -> JSONDict:
    return {
        "path": to_key(entry.path),
        "vector": vector,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "folder": to_key(folder_of(entry.path)),
        "taken": entry.taken or "",
        "status": status,
        "reason": stored_reason(reason),
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


class MilvusWriter(DatabaseWriter):
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
        super().__init__(config, rebuild=rebuild, where=collection.where)
        self.collection, self.weights_path = collection, weights_path
        self.batch_rows, self.address = batch_rows, address
        self.rows_written = 0  # by this run, its workers' included: whether ``finish`` flushes

    def __enter__(self) -> MilvusWriter:
        record = self.collection.record()
        labels = self.collection.labels()
        classifier = labels.classifier() if record is not None else None
        if self.opened(None if record is None else (record.config, record.dim)):
            self.collection.ensure_loaded()
            self.hold(_held_row(row) for row in self.collection.rows("status >= 0", FIELDS))
            if classifier is not None:
                labels.ensure_loaded()
                self.hold_labels(classifier, (str(r["path"]) for r in labels.rows()))
        else:
            self.hold_labels(classifier, ())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None  # no lock to give back; the store keeps its client

    def sink(self, *, same_machine: bool) -> MilvusSink | None:
        """A sink into this collection, after a commit of what is pending (module docstring); None for
        Milvus Lite when the writers are not all on this machine (its server is on 127.0.0.1)."""
        if self.address.lite and not same_machine:
            return None
        self.commit()
        return MilvusSink(
            served_uri(self.address), self.collection.name, self.batch_rows, token=token_for(self.address)
        )

    def commit(self) -> None:
        stamp = new_commit_stamp()
        if self._reset:
            self.collection.drop()
            self.collection.labels().drop()
            self._exists, self._reset = False, False
        if not self._exists:
            self.collection.create(Record(self.config, self._dim, self.weights_path, stamp))
            self._exists = True
        changes = self.changes()
        self._delete(changes.gone)
        self._retake()
        for entries, vectors in changes.puts:
            self._upsert([_row(e, v.tolist()) for e, v in zip(entries, vectors)])
        zero = [0.0] * self._dim
        self._upsert(
            [
                _row(Entry(s.path, s.size, s.mtime_ns), zero, BAD_TRANSIENT if s.transient else BAD, s.reason)
                for s in changes.fresh_bad
            ]
        )
        self._write_labels()
        # issued after every write of this commit was acknowledged, workers' ones too (they are
        # adopted before the commit that takes them in): readers of this commit read at it
        self.collection.set_commit(stamp, server_timestamp(self.collection.client))
        self.committed(changes)

    def _write_labels(self) -> None:
        """The labels collection brought in line: made (or made again for another classifier),
        dropped paths' rows deleted, new labels upserted."""
        labels = self.collection.labels()
        if self._labels_reset:
            labels.drop()
        if self._labeller is not None and (self._label_puts or self._labels_reset):
            labels.create(self._labeller)
        if self._label_drops and not self._labels_reset:
            labels.delete(sorted(self._label_drops))
        if self._label_puts:
            labels.put({p: labels_to_text(v) for p, v in self._label_puts.items()}, self.batch_rows)
        self.labels_committed()

    def _retake(self) -> None:
        """Capture times of held rows (upserted with their stored vectors)."""
        paths = [p for p in self._taken if p in self._held]
        for start in range(0, len(paths), self.batch_rows):
            chunk = paths[start : start + self.batch_rows]
            vectors = {str(r["path"]): list(r["vector"]) for r in self.collection.get(chunk, ["vector"])}
            rows = []
            for path in chunk:
                if path in vectors:
                    entry = Entry(path, self._held[path].size, self._held[path].mtime_ns, self._taken[path])
                    rows.append(_row(entry, vectors[path]))
                    self._held[path] = entry
            self._upsert(rows)
        self._taken.clear()

    def _delete(self, paths: list[str]) -> None:
        self.collection.delete(paths)

    def _upsert(self, rows: list[JSONDict]) -> None:
        upsert(self.collection.client, self.collection.name, rows, self.batch_rows)
        self.rows_written += len(rows)

    def adopt(self, entries: Sequence[Entry]) -> None:
        super().adopt(entries)
        self.rows_written += len(entries)

    def finish(self, ann_mode: str) -> str:
        """Seal what was written (FLUSH_ROWS rows or more), so Milvus indexes it (HNSW) instead of
        scanning it on every search; Milvus builds and keeps the index itself."""
        if self._exists and self.rows_written >= FLUSH_ROWS:
            with milvus_errors(f"flushing the collection {self.collection.name}"):
                self.collection.client.flush(self.collection.name)
        return "hnsw (milvus)"
