"""Acting on duplicate groups, reversibly: ``--link-to`` for review, ``--move-to`` and ``--undo``.

``--move-to DEST`` moves every group member (never a representative) to ``DEST/<its path in the
dataset>`` and writes a JSON Lines log in DEST: a header naming the real absolute paths of the
dataset and of DEST, then for each file a ``move`` line, synced to disk *before* the file moves, and
a ``moved`` line after. Nothing is deleted and nothing is overwritten: a target that exists, or one
whose real path lies inside the dataset, stops everything before the first move. A member (or the
image its group keeps) whose size or modification time differs from the index's is skipped with a
warning: the index's verdict was about other content. A run that fails or is killed half-way leaves
a log whose ``moved`` lines are exactly the files moved (a file is never left at both places);
``--undo LOG`` puts back every file that is at its target and not at its origin (so it also settles
a ``move`` line whose ``moved`` line was lost), and reports the rest.

Names are carried as :mod:`cbir.core.names` says: the log is JSON with ``ensure_ascii``, so a name
that is not UTF-8 round-trips. Undo refuses a log whose dataset is not where the log says (one
line), never creates a folder outside the dataset, and refuses a malformed log before moving
anything. Logs of version 1 (paths as typed, possibly relative to the folder the move ran in) are
read too, relative paths resolved against the current folder.
"""

from __future__ import annotations

import errno
import filecmp
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cbir.core.errors import CbirError
from cbir.core.names import shown
from cbir.core.types import JSONDict
from cbir.duplicates.grouping import DuplicateGroup

log = logging.getLogger(__name__)

LOG_KIND = "cbir duplicates moves"
LOG_VERSION = 2  # 2: real absolute paths; 1: paths as typed
NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}

Indexed = Mapping[str, tuple[int, int]]
"""What the index recorded of each file, by the path a group names it with: (size, mtime_ns)."""


@dataclass(frozen=True)
class MoveReport:
    """What a ``--move-to`` run did: the files moved, the log that lists them, and the members left
    where they are because they (or the image their group keeps) changed since indexing."""

    moved: int
    log: Path
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UndoReport:
    """What ``--undo`` did: files put back, files that never moved, and those it left alone."""

    restored: int
    not_moved: int
    problems: list[str]


@dataclass(frozen=True)
class MoveLog:
    """A move log read and checked: where the dataset and the destination were, and each logged
    move (origin, target)."""

    dataset: Path
    dest: Path
    moves: list[tuple[Path, Path]]


def _inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both compared as given: pass real paths)."""
    path, folder = Path(path), Path(folder)
    return path == folder or folder in path.parents


def _changed(path: str, indexed: Indexed | None) -> str | None:
    """Why ``path`` is not the file the index saw (None: it is, or nothing is known of it)."""
    if indexed is None or path not in indexed:
        return None
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if (st.st_size, st.st_mtime_ns) != tuple(indexed[path]):
        return "changed since it was indexed"
    return None


def move_plan(
    groups: Sequence[DuplicateGroup],
    root: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    indexed: Indexed | None = None,
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(origin, target) for every member of ``groups`` to move, as real absolute paths: its path in
    the dataset, under ``dest``; and the members skipped because they or their group's kept image
    differ from ``indexed`` (each with why).

    CbirError when ``dest`` or a target lies inside the dataset (the moved files would be indexed
    again, or land on another dataset path), a member is gone since indexing, or a target exists.
    """
    root_real, dest_real = Path(os.path.realpath(root)), Path(os.path.realpath(dest))
    if _inside(dest_real, root_real):
        raise CbirError(
            f"--move-to {shown(str(dest))}: choose a folder outside the dataset {shown(str(root))}"
        )
    pairs, skipped = [], []
    for group in groups:
        kept = _changed(group.representative, indexed)
        for member in group.members:
            why = _changed(member.path, indexed) or (kept and f"the image kept for it {kept}")
            if why:
                skipped.append(f"{shown(member.path)}: {why}")
                continue
            rel = os.path.relpath(member.path, root)
            if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
                raise CbirError(f"{shown(member.path)} is not inside the dataset {shown(str(root))}")
            pairs.append((root_real / rel, dest_real / rel))
    gone = [origin for origin, _ in pairs if not os.path.lexists(origin)]
    if gone:
        raise CbirError(
            f"{shown(str(gone[0]))} is gone since it was indexed; run `cbir index` first (nothing was moved)"
        )
    for _, target in pairs:
        if os.path.lexists(target):
            raise CbirError(
                f"{shown(str(target))} exists already; choose an empty folder (nothing was moved)"
            )
        if _inside(os.path.realpath(target), root_real):
            raise CbirError(
                f"--move-to {shown(str(dest))} would put {shown(str(target))} back inside the dataset "
                f"{shown(str(root_real))}; choose a folder outside it (nothing was moved)"
            )
    return pairs, skipped


def move_members(
    groups: Sequence[DuplicateGroup],
    root: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    indexed: Indexed | None = None,
) -> MoveReport:
    """Move the members of ``groups`` out of the dataset into ``dest``, logging every move; members
    that differ from ``indexed`` (what the index recorded) stay, with a warning each."""
    pairs, skipped = move_plan(groups, root, dest, indexed)
    for line in skipped:
        log.warning("not moved: %s", line)
    dest_real = Path(os.path.realpath(dest))
    try:
        dest_real.mkdir(parents=True, exist_ok=True)
        out, path = _new_log(dest_real)
    except OSError as exc:
        raise CbirError(
            f"cannot write the move log in {shown(str(dest))}: {_why(exc)} (nothing was moved)"
        ) from None
    moved = 0
    with out:
        try:
            header = {"log": LOG_KIND, "version": LOG_VERSION, "dataset": os.path.realpath(root)}
            _write(out, {**header, "dest": str(dest_real)}, sync=True)
            for origin, target in pairs:
                _write(out, {"move": str(origin), "to": str(target)}, sync=True)
                try:
                    move_file(origin, target)
                except OSError as exc:
                    _try_write(out, {"failed": str(origin), "error": _why(exc)})
                    raise CbirError(
                        f"cannot move {shown(str(origin))}: {_why(exc)}; {_moved(moved, path)}"
                    ) from None
                moved += 1
                _write(out, {"moved": str(origin)}, sync=False)
            _write(out, {"finished": moved}, sync=True)
        except OSError as exc:  # the log itself could not be written (a full or read-only disk)
            if moved == 0:
                _try_unlink(path)
                raise CbirError(
                    f"cannot write the move log {shown(str(path))}: {_why(exc)} (nothing was moved)"
                ) from None
            raise CbirError(
                f"cannot write the move log {shown(str(path))}: {_why(exc)}; {_moved(moved, path)}"
            ) from None
    return MoveReport(moved, path, skipped)


def _moved(moved: int, path: Path) -> str:
    return (
        f"{moved} file(s) moved, listed in {shown(str(path))} "
        f"(`cbir duplicates --undo {shown(str(path))}` puts them back)"
    )


def _new_log(dest: Path) -> tuple[IO[str], Path]:
    """A new log file in ``dest``, never one that exists."""
    n = 0
    while True:
        suffix = f"-{n}" if n else ""
        path = dest / time.strftime(f"cbir-moves-%Y%m%d-%H%M%S{suffix}.jsonl")
        try:
            return open(path, "x", encoding="ascii"), path
        except FileExistsError:
            n += 1


def move_file(origin: Path, target: Path, parents_below: Path | None = None) -> None:
    """Move one file without ever overwriting ``target`` and without ever leaving it at both places:
    a hard link then unlink on one file system, a copy to a temporary name then rename and unlink
    across file systems. Missing folders of ``target`` are made (only below ``parents_below`` when
    given)."""
    _make_parents(target, parents_below)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "the target exists", str(target))
    try:
        os.link(origin, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            part = target.with_name(target.name + ".cbir-part")
            try:
                shutil.copy2(origin, part, follow_symlinks=False)
                os.rename(part, target)
            except OSError:
                _try_unlink(part)
                raise
        elif exc.errno in NO_HARD_LINKS:
            os.rename(origin, target)
            return
        else:
            raise
    try:
        os.unlink(origin)
    except OSError:
        _try_unlink(target)  # the origin stays: the move did not happen
        raise


def _make_parents(path: Path, below: Path | None) -> None:
    if below is not None:
        if not below.is_dir():
            raise FileNotFoundError(errno.ENOENT, "its folder is gone", str(below))
        if not _inside(path.parent, below):
            raise PermissionError(errno.EPERM, "outside the folder the log names", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)


def undo_moves(log_file: str | os.PathLike[str]) -> UndoReport:
    """Put back the files a ``--move-to`` log lists; never overwrites a file at the origin, never
    makes a folder outside the dataset. CbirError (nothing moved) when the log is malformed or its
    dataset is not where it says."""
    logged = read_move_log(Path(log_file))
    if not logged.dataset.is_dir():
        raise CbirError(
            f"the dataset of {shown(str(log_file))} is not at {shown(str(logged.dataset))} (moved or "
            "renamed?); put it back there first (nothing was restored)"
        )
    restored, not_moved, problems = 0, 0, []
    for origin, target in logged.moves:
        here, there = os.path.lexists(origin), os.path.lexists(target)
        if there and not here:
            try:
                move_file(target, origin, parents_below=logged.dataset)
                restored += 1
            except OSError as exc:
                problems.append(f"{shown(str(target))}: cannot move back ({_why(exc)})")
        elif here and not there:
            not_moved += 1
        elif here and there and _same_file(origin, target):
            try:  # a move killed between making the target and removing the origin
                os.unlink(target)
                restored += 1
            except OSError as exc:
                problems.append(f"{shown(str(target))}: cannot remove this second copy ({_why(exc)})")
        elif here and there:
            problems.append(
                f"{shown(str(origin))}: exists again, so {shown(str(target))} was left where it is"
            )
        else:
            problems.append(f"{shown(str(origin))}: not found, nor at {shown(str(target))}")
    return UndoReport(restored, not_moved, problems)


def _same_file(origin: Path, target: Path) -> bool:
    """Whether ``target`` is ``origin`` again: a hard link to it, or (across file systems) a regular
    file with the same bytes; what a move killed before it removed the origin leaves."""
    try:
        a, b = os.lstat(origin), os.lstat(target)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return True
        if not (stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode)) or a.st_size != b.st_size:
            return False
        return filecmp.cmp(origin, target, shallow=False)
    except OSError:
        return False


def read_move_log(path: Path) -> MoveLog:
    """Read and check a move log; CbirError (one line) when it cannot be read or is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CbirError(f"cannot read the move log {shown(str(path))}: {_why(exc)}") from None
    lines = data.splitlines()
    records: list[object] = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            if number == len(lines) and number > 1:
                break  # the last line of a log cut short by a crash
            raise CbirError(f"{shown(str(path))}: line {number} is not JSON; is this a move log?") from None
    header = records[0] if records else None
    if not isinstance(header, dict) or header.get("log") != LOG_KIND:
        raise CbirError(f"{shown(str(path))} is not a cbir duplicates move log")
    version = header.get("version")
    if type(version) is not int or not 1 <= version <= LOG_VERSION:
        raise CbirError(f"{shown(str(path))}: a move log of version {version!r}, which this cbir cannot read")
    dataset, dest = (_logged_path(path, 1, header, key, version) for key in ("dataset", "dest"))
    moves = []
    for number, record in enumerate(records[1:], 2):
        if not isinstance(record, dict) or not any(k in record for k in _RECORDS):
            raise CbirError(f"{shown(str(path))}: line {number} is not a move record")
        if "move" in record:
            origin = _logged_path(path, number, record, "move", version)
            target = _logged_path(path, number, record, "to", version)
            if not _inside(origin, dataset) or not _inside(target, dest):
                raise CbirError(
                    f"{shown(str(path))}: line {number} moves a file from outside the dataset or to outside "
                    "the folder the log names"
                )
            moves.append((origin, target))
        else:
            kind = next(k for k in _RECORDS if k in record)
            if not isinstance(record[kind], _RECORDS[kind]) or isinstance(record[kind], bool):
                raise CbirError(f"{shown(str(path))}: line {number}: a {kind!r} record of the wrong type")
    return MoveLog(dataset, dest, moves)


_RECORDS: dict[str, type | tuple[type, ...]] = {"move": str, "moved": str, "failed": str, "finished": int}


def _logged_path(log_file: Path, number: int, record: dict[str, object], key: str, version: int) -> Path:
    """A path a log record names: an absolute path (version 2), or for version 1 one resolved
    against the current folder."""
    value = record.get(key)
    bad = not isinstance(value, str) or not value or "\0" in value
    if not bad:
        try:
            os.fsencode(str(value))
        except UnicodeEncodeError:
            bad = True
    if bad or (version >= 2 and not os.path.isabs(str(value))):
        raise CbirError(f"{shown(str(log_file))}: line {number}: {key!r} is not a path")
    return Path(os.path.abspath(str(value)))


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _try_write(out: IO[str], record: JSONDict) -> None:
    try:
        _write(out, record, sync=True)
    except OSError:
        pass  # the log is unwritable: the error raised next says so


def _try_unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write(out: IO[str], record: JSONDict, sync: bool) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()
    if sync:
        os.fsync(out.fileno())
