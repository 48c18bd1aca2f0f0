"""Opening an index for search: the feature matrix (memory-mapped) and the row -> file map."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.embedding.features import FeatureConfig
from cbir.errors import IncompatibleIndexError, IndexFolderError
from cbir.index.store import Manifest, load_matrix, read_manifest
from cbir.ingest.files import INDEX_DIRNAME, safe_join

RESOLVE_ALL_LIMIT = 20_000


def default_index_dir(root: str | os.PathLike) -> Path:
    """The index lives with its dataset, in a hidden folder the image scan skips."""
    return Path(root) / INDEX_DIRNAME


@dataclass
class Index:
    """A committed index: ``feats[i]`` is the L2-normalised feature of ``root / paths[i]``."""

    root: Path
    dir: Path
    manifest: Manifest
    feats: np.ndarray
    paths: list[str]

    @property
    def config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.manifest.config)

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, row: int) -> Path:
        """The image file of ``row`` (always inside the dataset root)."""
        return safe_join(self.root, self.paths[row])

    def row_of(self, image: str | os.PathLike) -> int | None:
        """The row of ``image`` if it is one of the indexed files (compared by resolved path)."""
        real = os.path.realpath(image)
        root = os.path.realpath(self.root)
        try:
            rel = Path(os.path.relpath(real, root)).as_posix()
        except ValueError:
            return None
        if rel.startswith("../") or rel == "..":
            rel = None
        lookup = self._lookup()
        if rel is not None and rel in lookup:
            return lookup[rel]
        # an indexed path may itself be a symlink: resolve every indexed file (once per Index), which
        # costs a stat per file, so only for indexes small enough for that to stay well under a second
        if len(self.paths) > RESOLVE_ALL_LIMIT:
            return None
        return self._resolved_lookup().get(real)

    def _lookup(self) -> dict[str, int]:
        if not hasattr(self, "_by_path"):
            self._by_path = {p: i for i, p in enumerate(self.paths)}
        return self._by_path

    def _resolved_lookup(self) -> dict[str, int]:
        if not hasattr(self, "_by_real"):
            self._by_real = {os.path.realpath(self.file(i)): i for i in range(len(self.paths))}
        return self._by_real

    def check_compatible(self, config: FeatureConfig) -> None:
        """Refuse to mix features: raise IncompatibleIndexError if ``config`` differs from the index's."""
        mine = self.manifest.config
        theirs = config.to_dict()
        diffs = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        if diffs:
            shown = ", ".join(f"{k}={mine.get(k)!r} (asked {theirs.get(k)!r})" for k in diffs[:4])
            raise IncompatibleIndexError(
                f"the index in {self.dir} was built with other settings: {shown}; rebuild it with --rebuild"
            )


def open_index(
    root: str | os.PathLike, index_dir: str | os.PathLike | None = None, mmap: bool = True
) -> Index:
    """Open the committed index of ``root``; IndexFolderError when there is none or it is damaged."""
    root = Path(root)
    idir = Path(index_dir) if index_dir is not None else default_index_dir(root)
    for _attempt in range(5):
        manifest = read_manifest(idir)
        if manifest is None:
            raise IndexFolderError(f"no index in {idir}; build one with: cbir index {root}")
        try:
            feats = load_matrix(idir, manifest, mmap=mmap)
        except FileNotFoundError:
            continue  # an indexer replaced the files between our two reads: read again
        live = [i for i, e in enumerate(manifest.entries) if e is not None]
        paths = [manifest.entries[i].path for i in live]  # type: ignore[union-attr]
        if len(live) != len(manifest.entries):
            feats = np.asarray(feats[np.array(live, dtype=np.int64)]) if live else feats[:0]
        return Index(root=root, dir=idir, manifest=manifest, feats=feats, paths=paths)
    raise IndexFolderError(f"the index in {idir} keeps changing under us; try again")
