"""Rows written outside the indexer's process: the seam between a store and spread-out workers.

A store that other processes can write to (Milvus) hands out a :class:`RowSink`: a small picklable
value (an address, a collection, a batch size) that travels to a worker, which opens its own client
there and writes whole rows (vector, stat, capture time) itself. The indexer then receives only
:class:`Written` for such a row, never its vector, and tells the store's writer to hold it
(``IndexWriter.adopt``), so the commit stamps it as part of the version and deletes nothing of it.
An encoder that can write through a sink (``--ray``) is a
:class:`~cbir.indexing.indexer.DirectEmbedder`; the folder store has no sink (one process writes a
folder), so its rows still go through the indexer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cbir.core.errors import BadImageError
from cbir.core.records import Entry


class RowSink(Protocol):
    """Writes whole rows into a store from any process that can reach it; picklable (it carries
    where to write, never an open client)."""

    def write(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        """Write one row per entry (each row whole on its own: a crash loses only unwritten ones)."""
        ...


@dataclass(frozen=True)
class Written:
    """The outcome of a file whose row a sink wrote: what the indexer gets instead of a vector."""

    taken: str | None  # the capture time the row was written with (read where the file was embedded)


SinkResult = tuple[int, Written | BadImageError]
