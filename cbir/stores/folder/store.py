"""The folder store: the index in a folder (by default ``DATASET/.cbir``), written by
:class:`~cbir.stores.folder.writer.FolderWriter` under the folder's lock and read whole, one committed
version at a time, by :mod:`cbir.stores.folder.snapshot`."""

from __future__ import annotations

import os
from pathlib import Path

from cbir.encoders.features import FeatureConfig
from cbir.encoders.whiten import Whitening
from cbir.stores.base import IndexWriter
from cbir.stores.folder.snapshot import Index, open_index
from cbir.stores.folder.writer import FolderWriter, default_index_dir, read_manifest
from cbir.stores.manifest import Manifest


class FolderStore:
    """The index in a folder (by default ``DATASET/.cbir``): see :mod:`cbir.stores.folder.writer`."""

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
