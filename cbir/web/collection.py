"""The served collection: the newest committed index version, its folders, and safe file lookup.

The index lives in any :class:`~cbir.stores.base.Store` (the folder store, or ``--store URI``).
Every request asks :meth:`Collection.current`, which asks the store whether a newer version was
committed (the folder store: one ``stat`` of the manifest; Milvus: the collection's commit stamp)
and switches to it when an indexer (ours in the background, or another process) made one, so the
server never restarts and never sees a half-written index (:mod:`cbir.stores.folder.snapshot`).

A name from a URL is served only if it is exactly the name of an indexed image and its real path is
still inside the dataset: ``..``, absolute paths, encoded variants and symlinks leaving the root all
fall through as "not found".
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cbir.core.errors import CbirError, IndexFolderError
from cbir.core.types import JSONDict
from cbir.stores.base import IndexReader, Store

PER_PAGE = 60


class NotFound(CbirError):
    """A path that is not an indexed image (or folder) of the collection."""


@dataclass
class Folders:
    """The folder tree of one index version: each folder's subfolders and its own images."""

    subfolders: dict[str, set[str]]
    images: dict[str, list[str]]
    counts: dict[str, int]  # images in the folder and below

    @classmethod
    def of(cls, paths: list[str]) -> Folders:
        subfolders: dict[str, set[str]] = {"": set()}
        images: dict[str, list[str]] = {"": []}
        counts: dict[str, int] = {"": 0}
        for path in sorted(paths):
            parent = path.rpartition("/")[0]
            images.setdefault(parent, []).append(path)
            node = parent
            while True:
                counts[node] = counts.get(node, 0) + 1
                if node == "":
                    break
                up = node.rpartition("/")[0]
                subfolders.setdefault(up, set()).add(node)
                node = up
        return cls(subfolders, images, counts)


class Collection:
    """The index of ``root`` in ``store`` as it is now (None while none is committed); the
    thumbnails go to the store's cache folder."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self.cache_dir = store.cache_dir
        self._real_root = os.path.realpath(root)
        self._lock = threading.Lock()
        self._index: IndexReader | None = None
        self._folders: tuple[IndexReader, Folders] | None = None
        self.per_page = PER_PAGE

    def current(self) -> IndexReader | None:
        """The newest committed version (reopened only when a new one was committed)."""
        with self._lock:
            try:
                if self._index is None:
                    self._index = self.store.open()
                else:
                    self._index = self._index.refresh()
            except IndexFolderError:
                pass  # none yet, or changing right now: keep answering from what we have
            return self._index

    def require(self) -> IndexReader:
        index = self.current()
        if index is None:
            raise NotFound("nothing is indexed yet")
        return index

    def row(self, rel: str) -> tuple[IndexReader, int]:
        """The index and row of the image indexed as ``rel``; NotFound for anything else."""
        index = self.require()
        row = index.row_named(rel)
        if row is None:
            raise NotFound(f"not an indexed image: {rel}")
        return index, row

    def file(self, rel: str) -> Path:
        """The file of the indexed image ``rel``, only while its real path is inside the dataset."""
        index, row = self.row(rel)
        try:
            path = index.file(row)
        except ValueError:
            raise NotFound(f"not an indexed image: {rel}") from None
        real = os.path.realpath(path)
        if not real.startswith(self._real_root + os.sep) or not os.path.isfile(real):
            raise NotFound(f"not an indexed image: {rel}")
        return path

    def folders(self, index: IndexReader) -> Folders:
        with self._lock:
            if self._folders is None or self._folders[0] is not index:
                self._folders = (index, Folders.of(list(index.paths)))
            return self._folders[1]

    def browse(self, folder: str, page: int) -> JSONDict:
        """One page of a folder: its subfolders (with image counts) and its own images."""
        folder = folder.strip("/")
        index = self.current()
        tree = self.folders(index) if index is not None else Folders.of([])
        if folder not in tree.counts and folder != "":
            raise NotFound(f"not a folder of the collection: {folder}")
        own = tree.images.get(folder, [])
        per = self.per_page
        pages = max(1, math.ceil(len(own) / per))
        page = min(max(1, page), pages)
        subs = sorted(tree.subfolders.get(folder, set()))
        return {
            "dir": folder,
            "parent": None if folder == "" else folder.rpartition("/")[0],
            "folders": [{"path": s, "name": s.rpartition("/")[2], "images": tree.counts[s]} for s in subs],
            "images": [{"path": p} for p in own[(page - 1) * per : page * per]],
            "page": page,
            "pages": pages,
            "per_page": per,
            "total": len(own),
        }
