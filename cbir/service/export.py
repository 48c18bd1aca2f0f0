"""Putting query results in a folder: links to (or copies of) the matches, named by rank.

One query fills ``DEST`` with ``01_name.jpg``, ``02_...``; several queries get a subfolder each
(``01_QUERYNAME/``). A name that the rank prefix would make longer than a file name may be (255
bytes) is shortened before its extension. Nothing is ever overwritten: every target name is
checked before the first link or copy is made, and an existing one is an error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from cbir.core.errors import CbirError
from cbir.core.results import QueryResult

NAME_MAX = 255
"""The longest file name, in bytes, of the file systems cbir writes to (ext4, APFS, NTFS)."""


def fitted(prefix: str, name: str) -> str:
    """``prefix + name``, its stem shortened (at a character boundary) to fit in NAME_MAX bytes."""
    whole = prefix + name
    if len(os.fsencode(whole)) <= NAME_MAX:
        return whole
    stem, ext = os.path.splitext(name)
    room = NAME_MAX - len(os.fsencode(prefix + ext))
    if room <= 0:  # an extension as long as a name: keep the bytes that fit
        return os.fsdecode(os.fsencode(whole)[:NAME_MAX])
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return prefix + stem + ext


def export_plan(
    results: Sequence[QueryResult], dest: str | os.PathLike[str], subfolders: bool = False
) -> list[tuple[Path, Path]]:
    """(source, target) pairs for the matches of ``results`` under ``dest``, in rank order; a
    subfolder per query when there are several (or ``subfolders``)."""
    dest = Path(dest)
    width = max(2, len(str(max((len(r.matches) for r in results), default=1))))
    folder_width = max(2, len(str(len(results))))
    pairs: list[tuple[Path, Path]] = []
    for qi, r in enumerate(results):
        own = len(results) > 1 or subfolders
        folder = dest / fitted(f"{qi + 1:0{folder_width}d}_", Path(r.query).stem) if own else dest
        for rank, m in enumerate(r.matches, 1):
            pairs.append((Path(m.path), folder / fitted(f"{rank:0{width}d}_", Path(m.path).name)))
    return pairs


def export_results(
    results: Sequence[QueryResult], dest: str | os.PathLike[str], copy: bool = False, subfolders: bool = False
) -> int:
    """Link (or with ``copy``, copy) every match into ``dest``; returns how many files were made.

    CbirError, before anything is made, if a target exists; CbirError naming the file if making one
    fails (those made before it stay).
    """
    pairs = export_plan(results, dest, subfolders)
    taken = [target for _, target in pairs if os.path.lexists(target)]
    if taken:
        raise CbirError(f"{taken[0]} exists already; choose an empty folder (nothing was written)")
    for source, target in pairs:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(source, target)
            else:
                os.symlink(os.path.abspath(source), target)
        except OSError as exc:
            raise CbirError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return len(pairs)
