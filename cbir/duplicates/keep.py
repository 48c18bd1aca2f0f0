"""Which image of a group is kept (its representative): ``--keep largest|oldest|newest``.

``largest`` (the default) prefers the most pixels, then the largest file, then the path: the copy
with the most detail. ``oldest``/``newest`` go by capture time (EXIF, else the file's time, as
recorded at indexing), then the file's mtime, then the path. Every rule ends on the path, so the
choice never depends on the order files were indexed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cbir.core.records import Entry
from cbir.ingest.decode import upright_size


class RowFacts:
    """What the keep rules look at for each indexed row; pixel counts are read (from the image
    header, once) only for rows that are in some group."""

    def __init__(self, root: Path, entries: Sequence[Entry]) -> None:
        self.root = root
        self.entries = entries
        self._pixels: dict[int, int] = {}

    def pixels(self, row: int) -> int:
        """Width x height of the image, 0 when it cannot be read any more."""
        if row not in self._pixels:
            try:
                w, h = upright_size(self.root / self.entries[row].path)
                self._pixels[row] = w * h
            except Exception:  # a file gone or damaged since indexing: least preferred, never fatal
                self._pixels[row] = 0
        return self._pixels[row]


def _largest(facts: RowFacts, rows: Sequence[int]) -> list[int]:
    e = facts.entries
    return sorted(rows, key=lambda r: (-facts.pixels(r), -e[r].size, e[r].path))


def _by_time(newest: bool) -> Callable[[RowFacts, Sequence[int]], list[int]]:
    def rank(facts: RowFacts, rows: Sequence[int]) -> list[int]:
        e = facts.entries
        by_path = sorted(rows, key=lambda r: e[r].path)
        if newest:  # a stable reverse sort keeps the path order among equal times; unknown times last
            return sorted(by_path, key=lambda r: (e[r].taken or "", e[r].mtime_ns), reverse=True)
        return sorted(by_path, key=lambda r: (e[r].taken or "~", e[r].mtime_ns))

    return rank


KEEP_RULES: dict[str, Callable[[RowFacts, Sequence[int]], list[int]]] = {
    "largest": _largest,
    "oldest": _by_time(newest=False),
    "newest": _by_time(newest=True),
}
