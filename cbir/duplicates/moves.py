"""Acting on duplicate groups, reversibly: ``--link-to`` for review, ``--move-to`` and ``--undo``.

``--move-to DEST`` moves every group member (never a representative) to ``DEST/<its path in the
dataset>`` and writes a JSON Lines log in DEST: a header, then for each file a ``move`` line, synced
to disk *before* the file moves, and a ``moved`` line after. Nothing is deleted and nothing is
overwritten: a target that exists stops everything before the first move. A run that fails or is
killed half-way leaves a log whose ``moved`` lines are exactly the files moved; ``--undo LOG``
puts back every file that is at its target and not at its origin (so it also settles a ``move``
line whose ``moved`` line was lost), and reports the rest.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cbir.core.errors import CbirError
from cbir.core.types import JSONDict
from cbir.duplicates.grouping import DuplicateGroup

LOG_KIND = "cbir duplicates moves"
NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


@dataclass(frozen=True)
class MoveReport:
    """What a ``--move-to`` run did: the files moved and the log that lists them."""

    moved: int
    log: Path


@dataclass(frozen=True)
class UndoReport:
    """What ``--undo`` did: files put back, files that never moved, and those it left alone."""

    restored: int
    not_moved: int
    problems: list[str]


def move_plan(
    groups: Sequence[DuplicateGroup], root: str | os.PathLike[str], dest: str | os.PathLike[str]
) -> list[tuple[Path, Path]]:
    """(origin, target) for every member of ``groups``: its path in the dataset, under ``dest``.

    CbirError when ``dest`` is inside the dataset (the moved files would be indexed again), a member
    is gone since indexing, or a target exists already.
    """
    root_real, dest_real = Path(os.path.realpath(root)), Path(os.path.realpath(dest))
    if dest_real == root_real or root_real in dest_real.parents:
        raise CbirError(f"--move-to {dest}: choose a folder outside the dataset {root}")
    pairs = []
    for group in groups:
        for member in group.members:
            rel = Path(os.path.relpath(member.path, root))
            pairs.append((Path(member.path), Path(dest) / rel))
    gone = [origin for origin, _ in pairs if not os.path.lexists(origin)]
    if gone:
        raise CbirError(f"{gone[0]} is gone since it was indexed; run `cbir index` first (nothing was moved)")
    taken = [target for _, target in pairs if os.path.lexists(target)]
    if taken:
        raise CbirError(f"{taken[0]} exists already; choose an empty folder (nothing was moved)")
    return pairs


def move_members(
    groups: Sequence[DuplicateGroup], root: str | os.PathLike[str], dest: str | os.PathLike[str]
) -> MoveReport:
    """Move the members of ``groups`` out of the dataset into ``dest``, logging every move."""
    pairs = move_plan(groups, root, dest)
    Path(dest).mkdir(parents=True, exist_ok=True)
    log = Path(dest) / time.strftime("cbir-moves-%Y%m%d-%H%M%S.jsonl")
    n = 0
    while log.exists():
        n += 1
        log = log.with_name(time.strftime(f"cbir-moves-%Y%m%d-%H%M%S-{n}.jsonl"))
    moved = 0
    with open(log, "x", encoding="utf-8") as out:
        _write(out, {"log": LOG_KIND, "version": 1, "dataset": str(root), "dest": str(dest)}, sync=True)
        for origin, target in pairs:
            _write(out, {"move": str(origin), "to": str(target)}, sync=True)
            try:
                move_file(origin, target)
            except OSError as exc:
                _write(out, {"failed": str(origin), "error": exc.strerror or str(exc)}, sync=True)
                raise CbirError(
                    f"cannot move {origin}: {exc.strerror or exc}; {moved} file(s) moved, listed in "
                    f"{log} (`cbir duplicates --undo {log}` puts them back)"
                ) from exc
            _write(out, {"moved": str(origin)}, sync=False)
            moved += 1
        _write(out, {"finished": moved}, sync=True)
    return MoveReport(moved, log)


def move_file(origin: Path, target: Path) -> None:
    """Move one file without ever overwriting ``target``: a hard link then unlink on one file
    system, a copy to a temporary name then rename and unlink across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "the target exists", str(target))
    try:
        os.link(origin, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            part = target.with_name(target.name + ".cbir-part")
            shutil.copy2(origin, part, follow_symlinks=False)
            os.rename(part, target)
        elif exc.errno in NO_HARD_LINKS:
            os.rename(origin, target)
            return
        else:
            raise
    os.unlink(origin)


def undo_moves(log: str | os.PathLike[str]) -> UndoReport:
    """Put back the files a ``--move-to`` log lists; never overwrites a file at the origin."""
    restored, not_moved, problems = 0, 0, []
    for origin, target in _logged_moves(Path(log)):
        here, there = os.path.lexists(origin), os.path.lexists(target)
        if there and not here:
            try:
                move_file(target, origin)
                restored += 1
            except OSError as exc:
                problems.append(f"{target}: cannot move back ({exc.strerror or exc})")
        elif here and not there:
            not_moved += 1
        elif here and there:
            problems.append(f"{origin}: exists again, so {target} was left where it is")
        else:
            problems.append(f"{origin}: not found, nor at {target}")
    return UndoReport(restored, not_moved, problems)


def _logged_moves(log: Path) -> Iterator[tuple[Path, Path]]:
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CbirError(f"cannot read the move log {log}: {exc.strerror or exc}") from exc
    records: list[JSONDict] = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the last line of a log cut short by a crash
            raise CbirError(f"{log}: line {number} is not JSON; is this a move log?") from None
    if not records or records[0].get("log") != LOG_KIND:
        raise CbirError(f"{log} is not a cbir duplicates move log")
    for record in records[1:]:
        if "move" in record:
            yield Path(record["move"]), Path(record["to"])


def _write(out: IO[str], record: JSONDict, sync: bool) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
    if sync:
        os.fsync(out.fileno())
