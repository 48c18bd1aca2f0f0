"""Moving a collection of the first format (``cbir-milvus-1``: keyed by path, no versions) to the
versioned one, without embedding anything again.

The rows are copied, vectors and all, into a new collection ``NAME_cbir_migrating`` as version 1
(``born = 1``, current), with the old collection's settings and commit stamp; the new collection is
marked complete only after its last row is written. Then the two are swapped by renames: the old
one to ``NAME_cbir_format1``, the new one to ``NAME``, and only then is the old one dropped. A crash
at any point loses nothing: before the mark, the old collection is untouched and the next writer
starts the copy again (dropping the partial one); between the renames the next writer finishes the
swap (:func:`recovered`). Readers of the old format read it as before (no versions: the weaker
guarantee) until the swap, and between the renames too: they read the old collection under its
aside name (:func:`readable`; a reader writes nothing, so it never finishes the swap itself).
"""

from __future__ import annotations

import logging

from cbir.core.names import to_key
from cbir.core.types import JSONDict
from cbir.stores.milvus.client import (
    KEY_COMPLETE,
    LIVE,
    MIGRATING,
    RETIRED,
    MilvusCollection,
    Record,
    milvus_errors,
    row_key,
)

log = logging.getLogger(__name__)

COPY_ROWS = 512  # rows read and written per batch while copying
FIELDS = ["path", "vector", "size", "mtime_ns", "folder", "taken", "status", "reason"]


def _named(collection: MilvusCollection, suffix: str) -> MilvusCollection:
    return MilvusCollection(collection.client, collection.name + suffix, collection.where)


def recovered(collection: MilvusCollection) -> None:
    """Finish (or undo) a swap a crash interrupted: ``NAME`` missing while the renamed old one exists."""
    old, new = _named(collection, RETIRED), _named(collection, MIGRATING)
    if collection.exists() or not old.exists():
        return
    if new.exists() and new.complete():
        new.rename(collection.name)
        old.drop()
    else:
        old.rename(collection.name)


def readable(collection: MilvusCollection) -> tuple[MilvusCollection, Record | None]:
    """The collection a reader reads and its record: ``collection``, or, while a crash has left a
    swap half done (``NAME`` missing, the old one renamed aside), the old one, whole and as it was."""
    record = collection.record()
    if record is not None:
        return collection, record
    old = _named(collection, RETIRED)
    aside = old.record()
    return (old, aside) if aside is not None and not aside.versioned else (collection, None)


def migrate(collection: MilvusCollection) -> Record | None:
    """The collection's record, after moving it to the versioned format if it is of the first."""
    recovered(collection)
    record = collection.record()
    if record is None or record.versioned:
        return record
    log.warning("moving %s to the versioned format (no file is embedded again)", collection.where)
    new = _named(collection, MIGRATING)
    if new.exists():
        new.drop()  # a copy a crash interrupted
    moved = Record(record.config, record.dim, record.weights_path, record.commit, version=1)
    new.create(moved)
    collection.ensure_loaded()
    batch: list[JSONDict] = []
    for row in collection.rows("status >= 0", FIELDS, batch=COPY_ROWS):  # read "Strong"
        path = str(row["path"])
        batch.append({**row, "key": row_key(path, 1), "path": to_key(path), "born": 1, "dies": LIVE})
        if len(batch) >= COPY_ROWS:
            _write(new, batch)
    _write(new, batch)
    new.set_properties({KEY_COMPLETE: "1"})
    collection.rename(collection.name + RETIRED)
    new.rename(collection.name)
    _named(collection, RETIRED).drop()
    return collection.record()


def _write(collection: MilvusCollection, batch: list[JSONDict]) -> None:
    """Write ``batch`` into ``collection`` and empty it."""
    if batch:
        with milvus_errors(f"writing to the collection {collection.name}"):
            collection.client.upsert(collection.name, batch)
        batch.clear()
