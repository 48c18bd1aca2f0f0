"""Reading an index: one committed version, whole, however often an indexer commits meanwhile.

:func:`open_index` reads the manifest, then opens each file it names exactly once (a matrix is
memory-mapped through the descriptor it was checked on). Names never get new content, so the only
thing a concurrent indexer can do to a reader is remove a file of an older version before the reader
opened it: the reader then reads the newer manifest and starts again. A long-lived reader (a server)
asks :meth:`Index.is_current` and switches with :meth:`Index.refresh`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir.embedding.features import FeatureConfig
from cbir.errors import IncompatibleIndexError, IndexFolderError
from cbir.index import ann
from cbir.index.manifest import Entry, Manifest
from cbir.index.store import MANIFEST, default_index_dir, load_matrix, read_manifest_stat
from cbir.ingest.files import safe_join
from cbir.search.approximate import ApproximateSearcher
from cbir.search.base import Searcher
from cbir.search.exact import ExactSearcher

log = logging.getLogger(__name__)

RESOLVE_ALL_LIMIT = 20_000
OPEN_ATTEMPTS = 50

between_reads: Callable[[], None] | None = None
"""Test hook: called after the manifest is read and before the files it names are opened."""


@dataclass
class Index:
    """One committed version of an index: ``feats[i]`` is the L2-normalised feature of ``paths[i]``."""

    root: Path
    dir: Path
    manifest: Manifest
    feats: np.ndarray
    paths: list[str]
    entries: list[Entry] = field(default_factory=list, repr=False)  # paths[i]'s stat and capture time
    version: tuple[int, int, int] | None = None  # identity of the manifest file this was read from
    _by_path: dict[str, int] | None = field(default=None, repr=False)
    _by_real: dict[str, int] | None = field(default=None, repr=False)
    _searchers: dict[bool, Searcher] = field(default_factory=dict, repr=False)  # by `exact`

    @property
    def config(self) -> FeatureConfig:
        return self.manifest.config

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, row: int) -> Path:
        """The image file of ``row`` (always inside the dataset root)."""
        return safe_join(self.root, self.paths[row])

    def row_of(self, image: str | os.PathLike[str]) -> int | None:
        """The row of ``image`` if it is one of the indexed files (compared by resolved path)."""
        real = os.path.realpath(image)
        root = os.path.realpath(self.root)
        try:
            rel: str | None = Path(os.path.relpath(real, root)).as_posix()
        except ValueError:
            return None
        if rel is not None and (rel.startswith("../") or rel == ".."):
            rel = None
        if rel is not None and rel in self._lookup():
            return self._lookup()[rel]
        # an indexed path may itself be a symlink: resolve every indexed file (once per Index), which
        # costs a stat per file, so only for indexes small enough for that to stay well under a second
        if len(self.paths) > RESOLVE_ALL_LIMIT:
            return None
        if self._by_real is None:
            self._by_real = {os.path.realpath(self.file(i)): i for i in range(len(self.paths))}
        return self._by_real.get(real)

    def row_named(self, rel: str) -> int | None:
        """The row of the image indexed under exactly ``rel`` (nothing resolved: for untrusted names)."""
        return self._lookup().get(rel)

    def _lookup(self) -> dict[str, int]:
        if self._by_path is None:
            self._by_path = {p: i for i, p in enumerate(self.paths)}
        return self._by_path

    def taken(self) -> list[str | None]:
        """When each row's photo was taken (from the manifest), None where not read yet."""
        return [e.taken for e in self.entries]

    def indexed_row(self, image: str | os.PathLike[str], unchanged: bool = False) -> int | None:
        """The row of an indexed image named as indexed (relative to the dataset root) or by its own
        path; with ``unchanged``, only while the file has the size and mtime it was embedded at."""
        row = None if Path(image).is_absolute() else self._lookup().get(Path(image).as_posix())
        if row is None:
            row = self.row_of(image)
        if row is None or not unchanged:
            return row
        entry = self.entries[row]
        try:
            st = os.stat(self.file(row))
        except OSError:
            return None
        return row if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns) else None

    def check_compatible(self, config: FeatureConfig) -> None:
        """Refuse to mix features: raise IncompatibleIndexError if ``config`` differs from the index's."""
        mine = self.manifest.config.to_dict()
        theirs = config.to_dict()
        diffs = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        if diffs:
            shown = ", ".join(f"{k}={mine.get(k)!r} (asked {theirs.get(k)!r})" for k in diffs[:4])
            raise IncompatibleIndexError(
                f"the index in {self.dir} was built with other settings: {shown}; rebuild it with --rebuild"
            )

    def searcher(self, exact: bool = False) -> Searcher:
        """The searcher of this version: its fresh approximate index unless ``exact``, else a scan.

        Kept on the index, so what a searcher builds on first use (the float16 kernel) is built once.
        """
        if exact not in self._searchers:
            self._searchers[exact] = self._make_searcher(exact)
        return self._searchers[exact]

    def _make_searcher(self, exact: bool) -> Searcher:
        if not exact:
            loaded = ann.open_file(self.dir, self.manifest)
            if loaded is not None:
                index, record = loaded
                return ApproximateSearcher(index, self.feats, int(record.params.get("candidates", 0)))
            return self.searcher(exact=True)  # no fresh approximate index: the same scan
        return ExactSearcher(self.feats)

    def is_current(self) -> bool:
        """True while no newer version has been committed (one ``stat`` of the manifest)."""
        return _manifest_identity(self.dir) == self.version

    def refresh(self, mmap: bool = True) -> Index:
        """This index if it is still current, else the newest committed version."""
        return self if self.is_current() else open_index(self.root, self.dir, mmap=mmap)


def open_index(
    root: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None, mmap: bool = True
) -> Index:
    """Open the committed index of ``root``; IndexFolderError when there is none or it is damaged."""
    root = Path(root)
    idir = Path(index_dir) if index_dir is not None else default_index_dir(root)
    for attempt in range(OPEN_ATTEMPTS):
        manifest, version = read_manifest_stat(idir)
        if manifest is None:
            raise IndexFolderError(f"no index in {idir}; build one with: cbir index {root}")
        if between_reads is not None:
            between_reads()
        try:
            feats = load_matrix(idir, manifest, mmap=mmap)
        except FileNotFoundError as exc:
            if _manifest_identity(idir) != version:
                time.sleep(0.001 * attempt)
                continue  # an indexer committed a newer version meanwhile: read that one
            raise IndexFolderError(f"index file {exc.filename} is missing; rebuild with --rebuild") from exc
        live = manifest.live_rows()
        entries = [e for e in manifest.entries if e is not None]
        if len(live) != len(manifest.entries):
            feats = np.asarray(feats[np.array(live, dtype=np.int64)]) if live else feats[:0]
        paths = [e.path for e in entries]
        return Index(root, idir, manifest, feats, paths, entries=entries, version=version)
    raise IndexFolderError(f"the index in {idir} keeps changing under us; try again")


def _manifest_identity(index_dir: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(index_dir / MANIFEST)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
