"""Writing and reading the files of an index folder: atomic writes with one-line errors, matrices
read once, and the folder's lock.

Every file is written under a temporary name in the same folder, flushed, fsynced and renamed, so a
name never shows half a file. Matrices are written with ordinary buffered writes (never a sparse
memory map: when a file system cannot allocate a page of one, the kernel kills the process with
SIGBUS), so a full disk is an ``OSError`` like any other. Every such error becomes one
:class:`~cbir.core.errors.IndexWriteError` naming the folder and the cause; the temporary file is removed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cbir.core import atomic
from cbir.core.errors import IndexFolderError, IndexLockedError, IndexWriteError

_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and run again",
    errno.EDQUOT: "the disk quota is exceeded; free some space and run again",
    errno.EROFS: "the file system is read-only; pass --index DIR to keep the index elsewhere",
    errno.EACCES: "permission denied; pass --index DIR to keep the index elsewhere",
    errno.EPERM: "operation not permitted; pass --index DIR to keep the index elsewhere",
}


def write_error(folder: Path, exc: OSError) -> IndexWriteError:
    """The one-line error for an ``OSError`` met while writing the index folder ``folder``."""
    hint = _HINTS.get(exc.errno or 0)
    cause = exc.strerror or str(exc) or type(exc).__name__
    return IndexWriteError(f"cannot write the index in {folder}: {cause}" + (f" ({hint})" if hint else ""))


def write_atomic(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    """:func:`cbir.core.atomic.write_atomic` into the index folder: an ``OSError`` becomes one
    :class:`~cbir.core.errors.IndexWriteError` line naming the folder."""
    try:
        atomic.write_atomic(path, fill)
    except OSError as exc:
        raise write_error(path.parent, exc) from exc


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` in the index folder."""

    def fill(f: BinaryIO) -> None:
        f.write(data)

    write_atomic(path, fill)


def write_matrix(path: Path, blocks: Iterable[np.ndarray], rows: int, dim: int, dtype: str) -> None:
    """Atomically write a ``(rows, dim)`` ``.npy`` matrix from row blocks, with buffered writes."""

    def fill(f: BinaryIO) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (rows, dim)})
        written = 0
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"block of shape {block.shape} in a matrix of {dim} columns")
            f.write(block.tobytes())
            written += len(block)
        if written != rows:
            raise ValueError(f"wrote {written} rows of a {rows}-row matrix")

    write_atomic(path, fill)


def read_matrix(path: Path, rows: int, dim: int, mmap: bool = True) -> np.ndarray:
    """Open a matrix file once and check it is the ``(rows, dim)`` matrix the manifest names.

    The file is opened a single time and memory-mapped through that descriptor, so a rename by a
    writer between two opens cannot pair one file's header with another's data. FileNotFoundError
    passes through (the caller reads the manifest again); anything else wrong is an IndexFolderError.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a folder where the file should be, a folder above it that is a file
        raise IndexFolderError(
            f"index file {path} cannot be read ({exc.strerror or exc}); rebuild with --rebuild"
        ) from None
    with f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise ValueError("object arrays are not allowed")
            if fortran or len(shape) != 2 or shape != (rows, dim):
                raise IndexFolderError(
                    f"index file {path} does not match its manifest; rebuild with --rebuild"
                )
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            if size < offset + rows * dim * dtype.itemsize:
                raise ValueError("the file is shorter than its header says")
            if rows == 0:
                return np.zeros((0, dim), dtype=dtype)
            if mmap:
                return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=(rows, dim))
            return np.fromfile(f, dtype=dtype, count=rows * dim).reshape(rows, dim)
        except IndexFolderError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            what = "empty" if os.fstat(f.fileno()).st_size == 0 else f"unreadable ({exc})"
            raise IndexFolderError(f"index file {path} is {what}; rebuild with --rebuild") from exc


LOCK = "lock"


class Lock:
    """An exclusive lock on an index folder, released automatically if the process dies."""

    def __init__(self, index_dir: Path) -> None:
        from filelock import FileLock

        self.path = index_dir / LOCK
        self._lock = FileLock(str(self.path), timeout=0)

    def __enter__(self) -> Lock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise IndexLockedError(
                f"another cbir process is updating the index in {self.path.parent} (lock {self.path}); "
                "wait for it to finish"
            ) from None
        except OSError as exc:
            raise write_error(self.path.parent, exc) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
