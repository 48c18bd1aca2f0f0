"""The Milvus store: an index kept in a Milvus collection, chosen with ``--store milvus:PATH.db``
(Milvus Lite, embedded) or ``--store milvus://HOST:PORT[/COLLECTION]`` (a server or cluster; the
token comes from ``$CBIR_MILVUS_TOKEN``). See :mod:`cbir.stores.milvus.client` for the collection's layout.

float16 matrices and whitening are refused with one line: the collection holds float32 vectors,
and a whitening would have to travel with it to every machine that embeds queries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cbir.core.errors import StoreError
from cbir.encoders.features import FeatureConfig
from cbir.encoders.whiten import Whitening
from cbir.stores.manifest import Manifest
from cbir.stores.milvus.client import (
    MilvusAddress,
    MilvusCollection,
    connect,
    default_collection,
    parse_milvus_uri,
)
from cbir.stores.milvus.migrate import readable
from cbir.stores.milvus.reader import MilvusIndex
from cbir.stores.milvus.writer import MilvusWriter

if TYPE_CHECKING:
    from pymilvus import MilvusClient


class MilvusStore:
    """A :class:`~cbir.stores.base.Store` in one Milvus collection."""

    def __init__(
        self, address: MilvusAddress, root: str | os.PathLike[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.address = address
        self.root = Path(root)
        self.clock = clock  # the writer's commit times (when dead rows may be deleted)
        self.name = address.collection or default_collection(self.root)
        self._client: MilvusClient | None = None

    @classmethod
    def from_uri(
        cls, uri: str, root: str | os.PathLike[str], clock: Callable[[], float] = time.time
    ) -> MilvusStore:
        return cls(parse_milvus_uri(uri), root, clock)

    @property
    def location(self) -> str:
        shown = self.address.uri if self.address.lite else self.address.uri.split("//", 1)[1]
        return f"Milvus {shown} collection {self.name}"

    @property
    def own_folders(self) -> list[Path]:
        if not self.address.lite:
            return []
        return [Path(self.address.uri)]  # a Lite database (a folder) inside the dataset is not scanned

    @property
    def cache_dir(self) -> Path:
        """``cbir/stores/COLLECTION`` in the user's cache folder: nothing is written next to the
        database, which may be on another machine."""
        import platformdirs  # light, but only needed here

        return Path(platformdirs.user_cache_dir("cbir")) / "stores" / self.name

    def collection(self) -> MilvusCollection:
        """The collection, its client connected on first use (a Lite file starts its server once)."""
        if self._client is None:
            self._client = connect(self.address)
        return MilvusCollection(self._client, self.name, self.location)

    def committed(self) -> Manifest | None:
        _, record = readable(self.collection())
        if record is None:
            return None
        return Manifest(config=record.config, dim=record.dim, weights_path=record.weights_path)

    def writer(
        self,
        config: FeatureConfig,
        *,
        dtype: str,
        rebuild: bool,
        whitening: Whitening | None,
        weights_path: str | None,
    ) -> MilvusWriter:
        if dtype != "float32":
            raise StoreError("the Milvus store holds float32 vectors only; leave out --dtype")
        if whitening is not None:
            raise StoreError("the Milvus store cannot hold a whitening; index without --whiten-on")
        return MilvusWriter(
            self.collection(),
            config,
            rebuild=rebuild,
            weights_path=weights_path,
            address=self.address,
            clock=self.clock,
        )

    def open(self) -> MilvusIndex:
        return MilvusIndex.read(self.collection(), self.root)
