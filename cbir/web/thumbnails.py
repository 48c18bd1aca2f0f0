"""Thumbnails of indexed images: upright (EXIF orientation applied), cached in the index folder.

A thumbnail is a JPEG in ``INDEX/thumbs/``, named by a digest of the image's path, size and mtime
(an edited photo gets a new one), written under a temporary name and renamed, so a reader never
sees half a file. It is the only thing the server writes. The cache is not durable data: no fsync,
and a damaged or missing one is made again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cbir.core.atomic import write_atomic
from cbir.ingest.decode import LoadLimits, open_rgb

THUMB_SIZE = 256
"""The longer side of a thumbnail, in pixels (sharp in a 128-200 px tile on a 2x screen)."""
QUALITY = 82
FOLDER = "thumbs"


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
