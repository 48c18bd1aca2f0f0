"""The records every layer passes around: an indexed file (:class:`Entry`) and a file that could not be
used (:class:`Skipped`). Stores keep them, the indexer plans with them, duplicates and filters read them."""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""A control character: never allowed in a stored name (a newline would forge lines in every listing)."""


@dataclass(frozen=True)
class Entry:
    """One indexed file: its path relative to the dataset root, the stat it was embedded at, and
    when the photo was taken (``YYYY-MM-DDTHH:MM:SS`` local time, for ``--since``/``--until``; None
    until read: indexes of earlier releases get it on their next run, without re-embedding)."""

    path: str
    size: int
    mtime_ns: int
    taken: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file that could not be used, remembered so it is not retried until it changes.

    ``transient`` failures (the file could not be read: gone, permission denied, an I/O error; or it
    changed while it was read) are retried on every run: they can pass without the file changing (a
    folder renamed back, a ``chmod``). Only content failures (not an image, a bomb) are remembered,
    until the file's size or mtime changes.
    """

    path: str
    size: int
    mtime_ns: int
    reason: str
    transient: bool = False
