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

from cbir.core.errors import IndexFolderError
from cbir.core.labels import Labels
from cbir.core.records import Entry, Skipped
from cbir.encoders.features import FeatureConfig
from cbir.search.approximate import ApproximateSearcher
from cbir.search.base import Searcher
from cbir.search.exact import ExactSearcher
from cbir.stores.folder import ann
from cbir.stores.folder.labels import read_labels
from cbir.stores.folder.writer import MANIFEST, default_index_dir, load_matrix, read_manifest_stat
from cbir.stores.manifest import Manifest
from cbir.stores.rows import IndexedFiles, check_same_settings

log = logging.getLogger(__name__)

OPEN_ATTEMPTS = 50

between_reads: Callable[[], None] | None = None
"""Test hook: called after the manifest is read and before the files it names are opened."""


@dataclass
class Index(IndexedFiles):
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
    _labels: list[Labels | None] | None = field(default=None, repr=False)

    @property
    def config(self) -> FeatureConfig:
        return self.manifest.config

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    @property
    def location(self) -> str:
        return str(self.dir)

    @property
    def labeller(self) -> str | None:
        """The classifier that labelled this index (``cbir index --labels``); None: no labels."""
        return None if self.manifest.labels is None else self.manifest.labels.classifier

    def labels(self) -> list[Labels | None]:
        """Each row's labels (None: not labelled), read from the labels file on first use."""
        if self._labels is None:
            record = self.manifest.labels
            by_path: dict[str, Labels] = {}
            if record is not None:
                try:
                    by_path = read_labels(self.dir / record.file)
                except FileNotFoundError:
                    raise IndexFolderError(
                        f"the index in {self.dir} changed while it was read; run the command again"
                    ) from None
            self._labels = [by_path.get(p) for p in self.paths]
        return self._labels

    def skipped(self) -> list[Skipped]:
        """The failures the manifest remembers (see :meth:`cbir.stores.base.IndexReader.skipped`)."""
        return sorted(self.manifest.skipped, key=lambda s: s.path)

    def check_compatible(self, config: FeatureConfig) -> None:
        """Refuse to mix features: raise IncompatibleIndexError if ``config`` differs from the index's."""
        check_same_settings(self.manifest.config, config, self.location)

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
