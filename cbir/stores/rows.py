"""The row <-> file logic every store's reader shares (:class:`IndexedFiles`), and the refusal to
mix features (:func:`check_same_settings`).

A reader (:class:`~cbir.stores.base.IndexReader`) is one committed version of an index: ``paths[i]``
is the file of row ``i`` (relative to the dataset root), ``entries[i]`` its stat and capture time.
"""

from __future__ import annotations

import os
from pathlib import Path

from cbir.core.errors import IncompatibleIndexError
from cbir.core.records import Entry
from cbir.encoders.features import FeatureConfig
from cbir.ingest.files import safe_join

RESOLVE_ALL_LIMIT = 20_000


def check_same_settings(mine: FeatureConfig, theirs: FeatureConfig, location: str) -> None:
    """Refuse to mix features: IncompatibleIndexError naming the settings that differ."""
    a, b = mine.to_dict(), theirs.to_dict()
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        shown = ", ".join(f"{k}={a.get(k)!r} (asked {b.get(k)!r})" for k in diffs[:4])
        raise IncompatibleIndexError(
            f"the index in {location} was built with other settings: {shown}; rebuild it with --rebuild"
        )


class IndexedFiles:
    """Row <-> file lookups over ``root``, ``paths`` and ``entries`` (shared by every reader)."""

    root: Path
    paths: list[str]
    entries: list[Entry]
    _by_path: dict[str, int] | None
    _by_real: dict[str, int] | None

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
        # an indexed path may itself be a symlink: resolve every indexed file (once per reader), which
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
        """When each row's photo was taken, None where not read yet."""
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
