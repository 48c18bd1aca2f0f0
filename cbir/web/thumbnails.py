"""Thumbnails of indexed images: upright (EXIF orientation applied), cached in the index folder.

A thumbnail is a JPEG in ``INDEX/thumbs/``, named by a digest of the image's path, size and mtime
(an edited photo gets a new one), written under a temporary name and renamed, so a reader never
sees half a file. It is the only thing the server writes. The cache is not durable data: no fsync,
and a damaged or missing one is made again. It follows the index: :func:`prune` deletes the
thumbnails of images the index no longer holds (removed, or changed and embedded again).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cbir.core.atomic import write_atomic
from cbir.core.records import Entry
from cbir.ingest.decode import LoadLimits, open_rgb

THUMB_SIZE = 256
"""The longer side of a thumbnail, in pixels (sharp in a 128-200 px tile on a 2x screen)."""
QUALITY = 82
FOLDER = "thumbs"
NAME = re.compile(r"^[0-9a-f]{40}\.jpg$")


def thumbnail_path(index_dir: Path, rel: str, size: int, mtime_ns: int) -> Path:
    """Where the thumbnail of ``rel`` as it is now (``size`` bytes, ``mtime_ns``) is cached."""
    key = hashlib.sha1(os.fsencode(f"{rel}\0{size}\0{mtime_ns}\0{THUMB_SIZE}")).hexdigest()
    return index_dir / FOLDER / key[:2] / f"{key}.jpg"


def thumbnail(index_dir: Path, rel: str, image: Path, limits: LoadLimits = LoadLimits()) -> Path:
    """The cached thumbnail of ``image`` (indexed as ``rel``), made first if needed.

    Raises BadImageError when the image cannot be decoded, OSError when it cannot be read.
    """
    st = os.stat(image)
    target = thumbnail_path(index_dir, rel, st.st_size, st.st_mtime_ns)
    if target.is_file():
        return target
    with open_rgb(image, limits, draft_for=(THUMB_SIZE, THUMB_SIZE)) as img:
        img.thumbnail((THUMB_SIZE, THUMB_SIZE))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, lambda f: img.save(f, "JPEG", quality=QUALITY), durable=False)
    return target


def prune(index_dir: Path, keep: Iterable[Entry]) -> int:
    """Delete every cached thumbnail that is not of an image in ``keep`` as it was indexed (name,
    size, mtime); the number deleted. Files of other names (a write in progress) are left alone."""
    wanted = {thumbnail_path(index_dir, e.path, e.size, e.mtime_ns).name for e in keep}
    gone = 0
    try:
        folders = list(os.scandir(index_dir / FOLDER))
    except OSError:
        return 0
    for folder in folders:
        try:
            names = [e for e in os.scandir(folder.path) if NAME.match(e.name) and e.name not in wanted]
        except OSError:
            continue
        for entry in names:
            try:
                os.unlink(entry.path)
                gone += 1
            except OSError:
                pass
    return gone


def forget(index_dir: Path, dropped: Iterable[Entry]) -> int:
    """Delete the cached thumbnails of ``dropped`` (images a new index version no longer holds as
    they were); the number deleted."""
    gone = 0
    for e in dropped:
        try:
            os.unlink(thumbnail_path(index_dir, e.path, e.size, e.mtime_ns))
            gone += 1
        except OSError:
            pass
    return gone
