"""Finding the images of a dataset folder.

Walking rules: recursive unless asked otherwise; extensions matched case-insensitively; names
starting with ``.`` (hidden files and folders, our own ``.cbir`` index) skipped unless
``include_hidden``; macOS ``._`` AppleDouble files always skipped; ``exclude`` glob patterns matched
against the relative path and the name; deterministic (sorted) order. A folder that cannot be
listed (or an entry whose kind cannot be told) is passed to ``onerror`` with the ``OSError``, as
:func:`os.walk` does.

Symbolic links, one policy with ``cbir serve``: a link whose target is inside the dataset is
followed (a folder's real folder visited at most once: no loops); a link leaving it (file or folder)
is skipped and reported with its reason, unless ``follow_links`` (``--follow-links``), and then the
server serves it too. A link that resolves to nothing is not an image.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cbir.core.errors import DatasetError
from cbir.ingest.decode import register_optional_plugins

BASE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
OPTIONAL_EXTENSIONS = {".heic": "pillow_heif", ".heif": "pillow_heif", ".avif": "pillow_avif"}
INDEX_DIRNAME = ".cbir"
LINK_OUT = "symbolic link leaving the dataset (--follow-links to index it)"


def supported_extensions() -> frozenset[str]:
    """The extensions this installation can decode (HEIC/AVIF only with their Pillow plugins)."""
    return BASE_EXTENSIONS | frozenset(register_optional_plugins())


def _excluded(rel: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _leaves(
    entry: os.DirEntry[str], real_root: str, follow: bool, rel: str, skipped: list[dict[str, str]] | None
) -> bool:
    """True when ``entry`` is a symbolic link to something that exists outside ``real_root`` and
    links are not followed; it is then added to ``skipped`` with the reason."""
    if follow or not entry.is_symlink():
        return False
    target = os.path.realpath(entry.path)
    if target == real_root or target.startswith(real_root + os.sep) or not os.path.exists(target):
        return False
    if skipped is not None:
        skipped.append({"path": rel, "reason": LINK_OUT})
    return True


def find_images(
    root: str | os.PathLike[str],
    *,
    recursive: bool = True,
    include_hidden: bool = False,
    exclude: Iterable[str] = (),
    extensions: Iterable[str] | None = None,
    skip_dirs: Iterable[str | os.PathLike[str]] = (),
    onerror: Callable[[str, OSError], None] | None = None,
    follow_links: bool = False,
    skipped: list[dict[str, str]] | None = None,
) -> list[str]:
    """Return the image files under ``root`` as sorted POSIX paths relative to it; ``onerror(rel,
    error)`` hears of each folder below the root (``rel`` ending in ``/``) or entry that could not be
    read; DatasetError when the root itself cannot be listed. Links leaving ``root`` are left out
    (unless ``follow_links``) and added to ``skipped`` with their reason."""
    root_path = Path(root)
    if not root_path.exists():
        raise DatasetError(f"dataset folder not found: {root}")
    if not root_path.is_dir():
        raise DatasetError(f"dataset is not a folder: {root}")
    exts = frozenset(e.lower() for e in (extensions or supported_extensions()))
    patterns = [p.rstrip("/") for p in exclude]
    skip_real = {os.path.realpath(p) for p in skip_dirs}
    seen_dirs: set[str] = set()
    found: list[str] = []
    real_root = os.path.realpath(root_path)

    def walk(abs_dir: str, rel_dir: str) -> None:
        real = os.path.realpath(abs_dir)
        if real in seen_dirs or real in skip_real:
            return
        seen_dirs.add(real)
        entries = _listed(abs_dir, rel_dir, onerror)
        for entry in entries:
            name = entry.name
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if (
                name == INDEX_DIRNAME
                or name.startswith("._")
                or (name.startswith(".") and not include_hidden)
            ):
                continue
            if _excluded(rel, name, patterns) or _leaves(entry, real_root, follow_links, rel, skipped):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError as exc:
                if onerror is not None:
                    onerror(rel, exc)
                continue
            if is_dir:
                if recursive:
                    walk(entry.path, rel)
            elif os.path.splitext(name)[1].lower() in exts:
                try:
                    if entry.is_file(follow_symlinks=True):
                        found.append(rel)
                except OSError:
                    continue

    walk(str(root_path), "")
    found.sort()
    return found


def _listed(
    abs_dir: str, rel_dir: str, onerror: Callable[[str, OSError], None] | None
) -> list[os.DirEntry[str]]:
    """The entries of a folder, sorted by name; none (``onerror`` told) when it cannot be listed."""
    try:
        with os.scandir(abs_dir) as listing:
            return sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        if not rel_dir:
            raise DatasetError(f"cannot list the dataset folder {abs_dir}: {exc.strerror or exc}") from None
        if onerror is not None:
            onerror(f"{rel_dir}/", exc)
        return []


SEPARATORS = "/" + os.sep + (os.altsep or "")
"""What separates folders here; a backslash is an ordinary character of a POSIX file name."""


def safe_join(root: str | os.PathLike[str], rel: str) -> Path:
    """Join a manifest path (``/``-separated) to the dataset root, refusing anything that escapes it."""
    if not rel or any(c in rel for c in SEPARATORS if c != "/"):
        raise ValueError(f"unsafe path in index: {rel!r}")
    if rel.startswith("/") or any(p in ("..", "") for p in rel.split("/")):
        raise ValueError(f"unsafe path in index: {rel!r}")
    return Path(root) / rel
