"""Exceptions that carry a one-line, user-facing message.

The command line turns any :class:`CbirError` into that message on stderr and exit status 2;
library users catch them like any other exception.
"""

from __future__ import annotations


class CbirError(Exception):
    """A problem the user can fix (bad input, missing file, incompatible index)."""


class DatasetError(CbirError):
    """The dataset folder is missing, empty or unreadable."""


class QueryError(CbirError):
    """A query image is missing or cannot be decoded."""


class ModelError(CbirError):
    """Unknown backbone, or weights that cannot be loaded or downloaded."""


class IndexFolderError(CbirError):
    """The index on disk is missing, corrupt, locked or built with other settings."""


class IndexLockedError(IndexFolderError):
    """Another process holds the index lock."""


class IncompatibleIndexError(IndexFolderError):
    """The index was built with other feature settings than those asked for."""


class IndexWriteError(IndexFolderError):
    """The index folder cannot be written (disk full, read-only, permissions); nothing was committed."""


class StoreError(CbirError):
    """A store cannot be used: a bad ``--store`` URI, a server that cannot be reached, a missing
    extra, or something that store cannot hold."""


class BadImageError(Exception):
    """One dataset file cannot be used; the indexer skips it with a warning.

    ``transient`` is True when the system could not give the file's bytes (gone, permission denied,
    an I/O error, while stat-ing, opening or reading it) or the file changed while it was read:
    that can pass without the file changing, so it is retried on the next run, never remembered.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
