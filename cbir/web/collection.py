"""The served collection: the newest committed index version, its folders, and safe file lookup.

The index lives in any :class:`~cbir.stores.base.Store` (the folder store, or ``--store URI``).
Every request asks :meth:`Collection.current`, which asks the store whether a newer version was
committed (the folder store: one ``stat`` of the manifest; Milvus: the collection's commit stamp)
and switches to it when an indexer (ours in the background, or another process) made one, so the
server never restarts and never sees a half-written index (:mod:`cbir.stores.folder.snapshot`).

A name from a URL is served only if it is exactly the name of an indexed image and its real path is
still inside the dataset: ``..``, absolute paths, encoded variants and symlinks leaving the root all
fall through as "not found". With ``--follow-links`` the indexer indexed links leaving the dataset
(:func:`~cbir.ingest.files.find_images`), and they are served too: one policy for both.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cbir.core.errors import CbirError, IndexFolderError, QueryError
from cbir.core.types import JSONDict
from cbir.search.filters import moments
from cbir.stores.base import IndexReader, Store
from cbir.web.thumbnails import forget, prune

PER_PAGE = 60
BROWSE_SORTS = ("name", "date")


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

    def __init__(self, root: Path, store: Store, follow_links: bool = False) -> None:
        self.root = root
        self.store = store
        self.follow_links = follow_links
        self.cache_dir = store.cache_dir
        self._real_root = os.path.realpath(root)
        self._lock = threading.Lock()
        self._index: IndexReader | None = None
        self._folders: tuple[IndexReader, Folders] | None = None
        self.per_page = PER_PAGE

    def current(self) -> IndexReader | None:
        """The newest committed version (reopened only when a new one was committed); switching
        deletes the thumbnails of the images the new version dropped (at the first, of any image
        it does not hold)."""
        with self._lock:
            old = self._index
            try:
                if self._index is None:
                    self._index = self.store.open()
                else:
                    self._index = self._index.refresh()
            except IndexFolderError:
                pass  # none yet, or changing right now: keep answering from what we have
            new = self._index
        if new is not None and new is not old:
            if old is None:
                prune(self.cache_dir, new.entries)
            else:
                forget(self.cache_dir, set(old.entries) - set(new.entries))
        return new

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
        """The file of the indexed image ``rel``, only while its real path is inside the dataset
        (anywhere, with ``follow_links``: the indexer then indexed links leaving it too)."""
        index, row = self.row(rel)
        try:
            path = index.file(row)
        except ValueError:
            raise NotFound(f"not an indexed image: {rel}") from None
        real = os.path.realpath(path)
        inside = real.startswith(self._real_root + os.sep)
        if not (inside or self.follow_links) or not os.path.isfile(real):
            raise NotFound(f"not an indexed image: {rel}")
        return path

    def folders(self, index: IndexReader) -> Folders:
        with self._lock:
            if self._folders is None or self._folders[0] is not index:
                self._folders = (index, Folders.of(list(index.paths)))
            return self._folders[1]

    def dated_folders(self, index: IndexReader, since: str | None, until: str | None) -> Folders:
        """The folder tree of the images taken between ``since`` and ``until`` (both included;
        dates as :func:`~cbir.search.filters.parse_moment` gives them); QueryError when the index
        has no capture times yet."""
        if since is None and until is None:
            return self.folders(index)
        low, high = moments(since, until)
        taken = index.taken()
        if any(t is None for t in taken):
            raise QueryError("this index has no capture times yet: run `cbir index` on it once")
        return Folders.of([p for p, t in zip(index.paths, taken) if low <= str(t) <= high])

    def browse(
        self, folder: str, page: int, since: str | None = None, until: str | None = None, sort: str = "name"
    ) -> JSONDict:
        """One page of a folder: its subfolders (with image counts) and its own images (each with
        :func:`image_facts`), by name or (``sort="date"``) by date taken, oldest first, undated last;
        with ``since``/``until``, only the photos taken then (and the folders holding some)."""
        if sort not in BROWSE_SORTS:
            raise QueryError(f"sort must be one of {', '.join(BROWSE_SORTS)}")
        folder = folder.strip("/")
        index = self.current()
        whole = self.folders(index) if index is not None else Folders.of([])
        if folder not in whole.counts and folder != "":
            raise NotFound(f"not a folder of the collection: {folder}")
        tree = self.dated_folders(index, since, until) if index is not None else whole
        own = tree.images.get(folder, [])
        if sort == "date" and index is not None:
            own = sorted(own, key=lambda p: _date_key(index, p))
        per = self.per_page
        pages = max(1, math.ceil(len(own) / per))
        page = min(max(1, page), pages)
        subs = sorted(tree.subfolders.get(folder, set()))
        return {
            "dir": folder,
            "parent": None if folder == "" else folder.rpartition("/")[0],
            "folders": [{"path": s, "name": s.rpartition("/")[2], "images": tree.counts[s]} for s in subs],
            "images": [image_facts(index, p) for p in own[(page - 1) * per : page * per]] if index else [],
            "page": page,
            "pages": pages,
            "per_page": per,
            "total": len(own),
            "since": since,
            "until": until,
            "sort": sort,
        }


def image_facts(index: IndexReader, rel: str) -> JSONDict:
    """What the page shows of an indexed image without opening it: its path, when it was taken
    (``YYYY-MM-DDTHH:MM:SS`` or None) and its size in bytes, from the index."""
    row = index.row_named(rel)
    entry = index.entries[row] if row is not None else None
    return {
        "path": rel,
        "taken": entry.taken if entry is not None else None,
        "bytes": entry.size if entry is not None else None,
    }


def _date_key(index: IndexReader, rel: str) -> tuple[bool, str, str]:
    taken = image_facts(index, rel)["taken"]
    return (taken is None, taken or "", rel)
