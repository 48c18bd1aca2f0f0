"""The one atomic-write helper: a file appears whole under its name, or not at all.

The data goes to a unique temporary name in the same folder (so the rename is atomic), is flushed
and, unless the file is a cache entry that can be made again, fsynced; then it is renamed over the
final name and the folder is synced. On any error the temporary file is removed and the ``OSError``
goes on to the caller, who knows what it means to the user (the index folder turns it into one
:class:`~cbir.core.errors.IndexWriteError` line, the model cache into a warning).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temp_name(final: str) -> str:
    """A unique temporary name for ``final`` in the same folder (same file system: rename is atomic)."""
    return f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, fill: Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Create ``path`` whole or not at all: ``fill`` writes a temporary file that is then renamed.

    ``durable`` False skips the fsyncs, for caches whose files can be made again (thumbnails).
    """
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    if durable:
        fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Atomically write ``data`` to ``path``."""

    def fill(f: BinaryIO) -> None:
        f.write(data)

    write_atomic(path, fill, durable)
