"""The Milvus store's :class:`~cbir.stores.base.IndexWriter`: versioned rows upserted in bounded batches.

Nothing is written on entering: a collection built with other settings (or ``rebuild``) is dropped
and made again at the first commit, so a run that fails before it leaves the collection as it was
(a collection of the first format is migrated first, :mod:`cbir.stores.milvus.migrate`).

Each commit writes version ``V`` (the committed version + 1) and then publishes it. Rows are never
changed in place for readers: a new or re-embedded file gets a new row (``born = V``); the row it
replaces, and the row of a vanished file, is written again with ``dies = V`` (its vector kept), so
readers of older versions still find it; failed files are status rows (1 or 2), versioned the same
way. Publishing stamps the collection's properties in one call (``cbir.commit``, ``cbir.version``,
the server timestamp its readers read at, the commit's time). Readers filter every read on their
version (:func:`~cbir.stores.milvus.client.visible`), so rows of an unfinished run (``born = V``,
not yet published) are invisible, and a crash or Ctrl-C leaves them for the next run, which holds
them (every current row, ``dies = LIVE``, whatever its version) and publishes them with its own.

Dead rows (``dies <= D``) are deleted once version ``D`` was published :data:`GRACE_SECONDS` ago
(by the writer's clock, the commit times in the collection's properties): a reader of an older
version that is still open then fails with one line instead of answering from a partial version.
The horizon is written before the delete, and readers check it after each read.

Other processes (Ray workers) may write rows themselves through a :class:`MilvusSink`. Handing one
out publishes what is pending first (a rebuild drops and makes the collection then), and the
sink's rows carry the next version ``S``. Until the indexer says the workers are done
(:meth:`~MilvusWriter.end_sink`), commits write their own rows into ``S`` too without publishing
it, because a worker may still write into ``S``; the first commit after ``end_sink`` publishes it.
The indexer adopts the workers' rows (:meth:`~MilvusWriter.adopt`), and the commit retires the
rows they replace. A crash leaves the workers' rows current and unpublished, held by the next run.
Milvus has no lock: the guarantees hold for one writer at a time; shards running at the same time
(``--shard``) each write and publish their own versions, which readers may then see mixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
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
    KEY_HORIZON,
    KEY_TIMES,
    LIVE,
    MilvusAddress,
    MilvusCollection,
    Record,
    folder_of,
    milvus_errors,
    new_commit_stamp,
    open_client,
    row_key,
    served_uri,
    server_timestamp,
    stored_reason,
    times_text,
    token_for,
)
from cbir.stores.milvus.migrate import migrate

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

BATCH_ROWS = 256  # rows per upsert: 2 MiB of 2048-d float32 vectors, far below gRPC's message limit
# a run that wrote fewer rows leaves them to Milvus' own sealing (a segment is sealed when full or
# idle): a flush costs ~2 s on a server and makes one more small segment to compact, while a few
# hundred unsealed rows are scanned as fast as they are searched; committed rows are durable either way
FLUSH_ROWS = 1024
FIELDS = ["path", "size", "mtime_ns", "taken", "status", "reason"]
ALL_FIELDS = [*FIELDS, "key", "born", "dies", "vector", "folder"]
OK, BAD, BAD_TRANSIENT = 0, 1, 2
GRACE_SECONDS = 900.0
"""How long a version's dead rows are kept after a newer version is published: a reader open longer
than that past the next commit may fail (with one line, "run the command again")."""


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


def _row(entry: Entry, vector: list[float], born: int, status: int = OK, reason: str = "") -> JSONDict:
    return {
        "key": row_key(entry.path, born),
        "path": to_key(entry.path),
        "born": born,
        "dies": LIVE,
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
    born: int  # the version its rows belong to: published once the indexer has adopted them
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
        rows = [
            _row(e, v.tolist(), self.born) for e, v in zip(entries, np.asarray(vectors, dtype=np.float32))
        ]
        upsert(self._client, self.collection, rows, self.batch_rows)


class MilvusWriter(DatabaseWriter):
    """Writes one collection for the indexer (see the module docstring); ``clock`` gives the commit
    times that decide when dead rows are deleted."""

    def __init__(
        self,
        collection: MilvusCollection,
        config: FeatureConfig,
        *,
        rebuild: bool,
        weights_path: str | None,
        address: MilvusAddress,
        batch_rows: int = BATCH_ROWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, rebuild=rebuild, where=collection.where)
        self.collection, self.weights_path = collection, weights_path
        self.batch_rows, self.address, self.clock = batch_rows, address, clock
        self.rows_written = 0  # by this run, its workers' included: whether ``finish`` flushes
        self._version = 0  # the published version
        self._next = 1  # the version this run's rows are written into
        self._times: dict[int, float] = {}
        self._horizon = 0
        self._born: dict[str, int] = {}  # the version of each current row (indexed or failed)
        self._retiring: dict[tuple[str, int], None] = {}  # rows to write again with dies = the next version
        self._sink_open = False  # workers may still write into ``_next``: commits do not publish it
        self._unpublished = False  # rows were written into ``_next`` that no commit published yet

    def __enter__(self) -> MilvusWriter:
        record = migrate(self.collection)
        labels = self.collection.labels()
        classifier = labels.classifier() if record is not None else None
        if self.opened(None if record is None else (record.config, record.dim)):
            assert record is not None
            self._published(record)
            self.collection.ensure_loaded()
            self._hold_current(self.collection.rows(f"dies == {LIVE}", [*FIELDS, "born"]))
            if classifier is not None:
                labels.ensure_loaded()
                self.hold_labels(classifier, (str(r["path"]) for r in labels.rows()))
        else:
            if record is not None:
                self._published(record)  # a rebuild keeps counting versions (readers compare them)
            self.hold_labels(classifier, ())
        return self

    def _published(self, record: Record) -> None:
        self._version, self._times, self._horizon = record.version, dict(record.times), record.horizon
        self._next = max(self._next, record.version + 1)

    def _hold_current(self, rows: Iterable[JSONDict]) -> None:
        """Hold the current rows: the newest of each path (a run that stopped between a worker's
        write and the commit leaves two); the older ones are retired by the next commit. Rows of an
        unpublished version are held too, and the next commit publishes them."""
        newest: dict[str, JSONDict] = {}
        for row in rows:
            path, born = str(row["path"]), int(row["born"])
            old = newest.get(path)
            if old is not None:
                older = min(born, int(old["born"]))
                self._retiring[(path, older)] = None
                if born < int(old["born"]):
                    continue
            newest[path] = row
            self._next = max(self._next, born)
            if born > self._version:
                self._unpublished = True
        self.hold(_held_row(row) for row in newest.values())
        self._born = {path: int(row["born"]) for path, row in newest.items()}

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None  # no lock to give back; the store keeps its client

    def sink(self, *, same_machine: bool) -> MilvusSink | None:
        """A sink into this collection's next version, after a commit of what is pending (module
        docstring); None for Milvus Lite when the writers are not all on this machine (its server
        is on 127.0.0.1)."""
        if self.address.lite and not same_machine:
            return None
        self.commit()
        self._sink_open = True
        return MilvusSink(
            served_uri(self.address),
            self.collection.name,
            self._next,
            self.batch_rows,
            token=token_for(self.address),
        )

    def end_sink(self) -> None:
        """The workers given a sink are done: the next commit publishes their rows."""
        self._sink_open = False

    def unchanged_since_commit(self) -> bool:
        return super().unchanged_since_commit() and not self._unpublished and not self._retiring

    def commit(self) -> None:
        stamp = new_commit_stamp()
        if self._reset:
            self.collection.drop()
            self.collection.labels().drop()
            self._exists, self._reset = False, False
            self._born.clear()
            self._retiring.clear()
            self._times.clear()
        if not self._exists:
            self.collection.create(
                Record(
                    self.config,
                    self._dim,
                    self.weights_path,
                    stamp,
                    version=self._version,
                    horizon=self._horizon,
                )
            )
            self._exists = True
        version = self._next
        changes = self.changes()
        put_paths = [e.path for entries, _ in changes.puts for e in entries]
        replaced = [*changes.gone, *put_paths, *(s.path for s in changes.fresh_bad)]
        self._retire(replaced, set(changes.gone), version)
        self._retake(version)
        for entries, vectors in changes.puts:
            self._upsert([_row(e, v.tolist(), version) for e, v in zip(entries, vectors)])
        zero = [0.0] * self._dim
        self._upsert(
            [
                _row(
                    Entry(s.path, s.size, s.mtime_ns),
                    zero,
                    version,
                    BAD_TRANSIENT if s.transient else BAD,
                    s.reason,
                )
                for s in changes.fresh_bad
            ]
        )
        self._write_labels()
        for path in changes.gone:
            self._born.pop(path, None)
        self._born.update({p: version for p in put_paths})
        self._born.update({s.path: version for s in changes.fresh_bad})
        self.committed(changes)
        self._unpublished = True
        if not self._sink_open:
            self._publish(stamp, version)

    def _publish(self, stamp: str, version: int) -> None:
        """Make ``version`` the committed one, then delete the rows no reader may still need."""
        self._times[version] = self.clock()
        # issued after every write of this version was acknowledged, workers' ones too (they are
        # adopted before the commit that publishes them): readers of this version read at it
        self.collection.set_commit(stamp, server_timestamp(self.collection.client), version, self._times)
        self._version, self._next, self._unpublished = version, version + 1, False
        self._collect()

    def _collect(self) -> None:
        """Delete the rows that died in versions published GRACE_SECONDS ago or more: the horizon is
        published first (a reader that checks it after a read knows whether rows it needed went)."""
        due = [v for v, t in self._times.items() if t <= self.clock() - GRACE_SECONDS]
        if not due:
            return
        self._horizon = max(self._horizon, max(due))
        self.collection.set_properties({KEY_HORIZON: str(self._horizon)})
        self.collection.delete_where(f"dies <= {self._horizon}")
        self._times = {v: t for v, t in self._times.items() if v > self._horizon}
        self.collection.set_properties({KEY_TIMES: times_text(self._times)})

    def _retire(self, paths: Iterable[str], gone: set[str], version: int) -> None:
        """The current rows of ``paths`` (and rows left to retire) written again with ``dies =
        version``; a row of ``version`` itself is not in any published version: deleted if its file
        is ``gone``, else overwritten by the new row."""
        for path in paths:
            born = self._born.get(path)
            if born is not None:
                self._retiring[(path, born)] = None
        pending = list(self._retiring)
        doomed = [row_key(p, b) for p, b in pending if b == version and p in gone]
        if doomed:
            self.collection.delete_keys(doomed)
        keys = [row_key(p, b) for p, b in pending if b != version]
        for start in range(0, len(keys), self.batch_rows):
            rows = list(self.collection.by_key(keys[start : start + self.batch_rows], ALL_FIELDS))
            self._upsert([_stored(row, dies=version) for row in rows if int(row["dies"]) > version])
        self._retiring.clear()

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

    def _retake(self, version: int) -> None:
        """Capture times of held rows: each row written again in ``version`` with its stored vector
        and the new time (the old row retired)."""
        paths = [p for p in self._taken if p in self._held and p in self._born]
        for start in range(0, len(paths), self.batch_rows):
            chunk = paths[start : start + self.batch_rows]
            keys = [row_key(p, self._born[p]) for p in chunk]
            stored = {str(r["path"]): r for r in self.collection.by_key(keys, ALL_FIELDS)}
            rows = []
            for path in chunk:
                row = stored.get(path)
                if row is None:
                    continue
                entry = Entry(path, self._held[path].size, self._held[path].mtime_ns, self._taken[path])
                if self._born[path] != version:
                    rows.append(_stored(row, dies=version))
                rows.append(_row(entry, list(row["vector"]), version))
                self._held[path] = entry
                self._born[path] = version
            self._upsert(rows)
        self._taken.clear()

    def _upsert(self, rows: list[JSONDict]) -> None:
        upsert(self.collection.client, self.collection.name, rows, self.batch_rows)
        self.rows_written += len(rows)

    def adopt(self, entries: Sequence[Entry]) -> None:
        """Hold rows a sink wrote into the next version; the rows they replace are retired by the
        next commit."""
        for entry in entries:
            born = self._born.get(entry.path)
            if born is not None and born != self._next:
                self._retiring[(entry.path, born)] = None
            self._born[entry.path] = self._next
        super().adopt(entries)
        self.rows_written += len(entries)

    def finish(self, ann_mode: str) -> str:
        """Seal what was written (FLUSH_ROWS rows or more), so Milvus indexes it (HNSW) instead of
        scanning it on every search; Milvus builds and keeps the index itself."""
        if self._exists and self.rows_written >= FLUSH_ROWS:
            with milvus_errors(f"flushing the collection {self.collection.name}"):
                self.collection.client.flush(self.collection.name)
        return "hnsw (milvus)"


def _stored(row: JSONDict, dies: int) -> JSONDict:
    """A stored row (read with ALL_FIELDS, ``path`` in memory form) as written again with ``dies``."""
    return {
        **{f: row[f] for f in ALL_FIELDS},
        "path": to_key(str(row["path"])),
        "vector": list(row["vector"]),
        "dies": dies,
    }
