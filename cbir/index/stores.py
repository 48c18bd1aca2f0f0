"""Where an index lives: the :class:`Store` seam, and the folder store every command uses today.

A store gives the indexer an :class:`~cbir.index.store.IndexWriter`, readers one committed
version (an :class:`~cbir.index.reader.IndexReader`), and settings resolution the record of what
it holds (``committed()``). The Milvus store (:mod:`cbir.index.milvus_store`) is a second
implementation; ``--store URI`` picks one through :mod:`cbir.index.store_uri`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cbir.embedding.features import FeatureConfig
from cbir.embedding.whiten import Whitening
from cbir.index.manifest import Manifest
from cbir.index.reader import IndexReader
from cbir.index.snapshot import Index, open_index
from cbir.index.store import FolderWriter, IndexWriter, default_index_dir, read_manifest


class Store(Protocol):
    """An index's home: written through a writer, read as whole committed versions."""

    @property
    def location(self) -> str:
        """Where the index is, for people (a folder, a database URI)."""
        ...

    @property
    def own_folders(self) -> list[Path]:
        """Folders the store keeps files in, which the image scan must leave out (none for a database)."""
        ...

    @property
    def cache_dir(self) -> Path:
        """A folder for what can be made again from the images (the web app's thumbnails): the
        folder store's own folder, a database store's in the user's cache folder."""
        ...

    def writer(
        self,
        config: FeatureConfig,
        *,
        dtype: str,
        rebuild: bool,
        whitening: Whitening | None,
        weights_path: str | None,
    ) -> IndexWriter:
        """A writer holding the store's lock while it is entered."""
        ...

    def committed(self) -> Manifest | None:
        """What the store holds (feature settings, dimension, weights file; for the folder store the
        whole manifest), None when it holds no index; IndexFolderError when that cannot be read."""
        ...

    def open(self) -> IndexReader:
        """The newest committed version."""
        ...


class FolderStore:
    """The index in a folder (by default ``DATASET/.cbir``): see :mod:`cbir.index.store`."""

    def __init__(self, root: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root)
        self.dir = Path(index_dir) if index_dir is not None else default_index_dir(self.root)

    @property
    def location(self) -> str:
        return str(self.dir)

    @property
    def own_folders(self) -> list[Path]:
        return [self.dir]

    @property
    def cache_dir(self) -> Path:
        return self.dir

    def writer(
        self,
        config: FeatureConfig,
        *,
        dtype: str,
        rebuild: bool,
        whitening: Whitening | None,
        weights_path: str | None,
    ) -> IndexWriter:
        return FolderWriter(
            self.dir,
            config,
            dtype=dtype,
            rebuild=rebuild,
            whitening=whitening,
            root=self.root,
            weights_path=weights_path,
        )

    def committed(self) -> Manifest | None:
        return read_manifest(self.dir)

    def open(self) -> Index:
        return open_index(self.root, self.dir)
