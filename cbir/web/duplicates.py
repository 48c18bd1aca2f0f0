"""The near-duplicates review of ``cbir serve``: groups made in the background, stored with the index,
and resolved from the page by the same moves (and the same log) as ``cbir duplicates --move-to``.

:class:`DuplicateReview` computes the groups of the served index on its own thread (never on a
request): after each indexing run, at start, and when a request finds a version it has no groups
of. Until they are ready ``GET /api/duplicates`` answers ``{"state": "computing"}``. The groups of
an index version are stored as ``duplicates-<version>.json`` in the store's ``cache_dir`` (the
index folder of the folder store; the user's cache folder of the collection for Milvus), written
atomically; the version is a digest of the index's content (settings and every file's path, size
and modification time), so a restart or another server on the same index reads them back instead
of running the pixel check again, and a new commit with other content gets new groups.

Moves go to a folder outside the dataset chosen on the server's command line (``--trash``), one
subfolder per move, through :func:`cbir.service.duplicates.move_duplicates` (the ``--move-to``
code: each file checked against what the index recorded, logged before it moves); undo is
:func:`cbir.duplicates.moves.undo_moves` on that log, which ``cbir duplicates --undo`` also reads.
The page names files only by their dataset paths as the groups list them, and a log only by its
name under the trash folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import platformdirs

from cbir.core.atomic import write_bytes
from cbir.core.errors import CbirError, QueryError
from cbir.core.names import json_text, shown
from cbir.core.results import Match
from cbir.core.types import JSONDict
from cbir.duplicates.grouping import DuplicateGroup
from cbir.duplicates.moves import undo_moves
from cbir.service.duplicates import DuplicateOptions, DuplicateReport, find_duplicates, move_duplicates
from cbir.stores.base import IndexReader
from cbir.web.collection import Collection
from cbir.web.worker import OnRequest

log = logging.getLogger(__name__)

Compute = Callable[[IndexReader, "float | None"], JSONDict]
STORED = "duplicates-{}.json"
LOG_NAME = re.compile(r"[^/]+/cbir-moves-[0-9]{8}-[0-9]{6}(-[0-9]+)?\.jsonl")


class Lacking(CbirError):
    """A feature this server does not offer (HTTP 501)."""


class Conflict(CbirError):
    """A move that names groups of another index version, or files not in one group (HTTP 409)."""


def duplicate_groups_of(index: IndexReader, threshold: float | None) -> JSONDict:
    """The near-duplicate groups of ``index`` as ``cbir duplicates`` finds them (its defaults, the
    pixel check included) in the shape of ``cbir duplicates --json``, paths relative to the dataset
    as everywhere in the API; each group also gives its files' sizes (``sizes``, in the order of
    ``paths``) and the default choice of the copy to keep (``keep``: the ``--keep`` rule's)."""
    doc = find_duplicates(index, DuplicateOptions(threshold=threshold), progress=False).to_dict(relative=True)
    for group in doc["groups"]:
        sizes = []
        for path in group["paths"]:
            row = index.row_named(path)
            sizes.append(index.entries[row].size if row is not None else None)
        group["sizes"] = sizes
        group["keep"] = group["representative"]
    return doc


def default_trash(dataset: Path) -> Path:
    """Where moved duplicates go without ``--trash``: the user's data folder (``~/.local/share/cbir/
    trash`` on Linux), one folder per dataset named after it and a digest of its real path."""
    real = os.path.realpath(dataset)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:8]
    return Path(platformdirs.user_data_dir("cbir")) / "trash" / f"{Path(real).name or 'root'}-{digest}"


def check_trash(trash: Path, dataset: Path) -> Path:
    """``trash`` as an absolute path; CbirError (one line) when it lies inside the dataset."""
    real, root = Path(os.path.realpath(trash)), Path(os.path.realpath(dataset))
    if real == root or root in real.parents:
        raise CbirError(f"--trash {shown(str(trash))} is inside the dataset; choose a folder outside it")
    return Path(os.path.abspath(trash))


def content_version(index: IndexReader) -> str:
    """What names the content of an index version: a digest of its settings and of every file's
    path, size and modification time (the same on every machine and after a restart)."""
    h = hashlib.sha256(json.dumps(index.config.to_dict(), sort_keys=True).encode())
    for entry in index.entries:
        h.update(os.fsencode(entry.path) + f"\0{entry.size}\0{entry.mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class DuplicateReview:
    """The groups of the served index (one computation per index version, on a background thread),
    and the moves that resolve them."""

    def __init__(
        self,
        collection: Collection,
        trash: Path,
        compute: Compute = duplicate_groups_of,
        busy: Callable[[], bool] = lambda: False,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.collection = collection
        self.trash = check_trash(trash, collection.root)
        self.compute = compute
        self.busy = busy  # True while an indexing run is under way: its versions are not final
        self.changed = changed  # asks for an indexing run after files moved
        self._cond = threading.Condition()
        self._done: dict[tuple[str, float | None], JSONDict | Exception] = {}
        self._asked: set[float | None] = {None}
        self._keys: tuple[Hashable, str] | None = None
        self._moves: list[JSONDict] = []  # this server's moves, newest last
        self._move_lock = threading.Lock()
        self._worker = OnRequest("cbir-duplicates", self._tick)

    def start(self) -> DuplicateReview:
        self._worker.start()
        self.request()
        return self

    def stop(self) -> None:
        self._worker.stop()

    def request(self) -> None:
        """Make the groups of the newest committed version (after an indexing run, say)."""
        self._worker.request()

    def version_of(self, index: IndexReader) -> str:
        """:func:`content_version` of ``index``, computed once per committed version."""
        if self._keys is None or self._keys[0] != index.version:
            self._keys = (index.version, content_version(index))
        return self._keys[1]

    def groups(self, threshold: float | None = None) -> JSONDict:
        """``GET /api/duplicates``: the groups of the current version when ready, else ``computing``
        (and the computation asked for); the error of a computation that failed."""
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise QueryError("threshold must be in (0, 1]")
        index = self.collection.current()
        if index is None:  # the first indexing run is under way
            return {"state": "computing", "version": None, "trash": str(self.trash)}
        version = self.version_of(index)
        with self._cond:
            found = self._done.get((version, threshold))
            if found is None:
                self._asked.add(threshold)
        if found is None:
            self.request()
            return {"state": "computing", "version": version, "trash": str(self.trash)}
        if isinstance(found, Exception):
            raise found
        ready = {"state": "ready", "version": version, "trash": str(self.trash)}
        return {**ready, **found, "moves": self.moves()}

    def state(self) -> JSONDict:
        """``{state, version}`` for ``/api/info``, without asking for anything."""
        index = self.collection.current()
        if index is None:
            return {"state": "computing", "version": None}
        version = self.version_of(index)
        with self._cond:
            ready = (version, None) in self._done
        return {"state": "ready" if ready else "computing", "version": version}

    def wait(self, version: str, threshold: float | None = None, timeout: float = 60.0) -> bool:
        """Wait until the groups of ``version`` are made (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: (version, threshold) in self._done, timeout)

    def wait_newer(self, version: str, timeout: float = 60.0) -> bool:
        """Wait until the groups of a version other than ``version`` are made (after a re-indexing
        run); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: any(v != version and t is None for v, t in self._done), timeout
            )

    def _tick(self) -> None:
        """One request on the worker thread: the groups, unless an indexing run is under way."""
        if self.busy():
            return  # the indexer's end asks again
        try:
            self.run_once()
        except Exception as exc:  # never end the thread: the next request tries again
            log.error("near-duplicate groups: %s", exc, exc_info=True)

    def run_once(self) -> None:
        """Make the missing groups of the current version (on the calling thread)."""
        index = self.collection.current()
        if index is None:
            return
        version = self.version_of(index)
        with self._cond:
            asked = sorted(self._asked, key=lambda t: -1.0 if t is None else t)
        for threshold in asked:
            with self._cond:
                if (version, threshold) in self._done:
                    continue
            result: JSONDict | Exception
            stored = self._read(version) if threshold is None else None
            if stored is not None:
                result = stored
            else:
                t0 = time.perf_counter()
                try:
                    result = self.compute(index, threshold)
                except Exception as exc:
                    log.warning("near-duplicate groups could not be made: %s", exc)
                    result = exc
                else:
                    log.info("near-duplicate groups made in %.1f s", time.perf_counter() - t0)
                    if threshold is None:
                        self._write(version, result)
            with self._cond:
                self._done = {k: v for k, v in self._done.items() if k[0] == version}
                self._done[(version, threshold)] = result
                self._asked = {t for t in self._asked if t is None or t == threshold}
                self._cond.notify_all()

    def _read(self, version: str) -> JSONDict | None:
        path = self.collection.cache_dir / STORED.format(version)
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("groups"), list) else None

    def _write(self, version: str, doc: JSONDict) -> None:
        """Store the groups with the index, removing those of other versions; a cache: a failure
        to write is a warning, the groups are made again next time."""
        folder = self.collection.cache_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes(folder / STORED.format(version), json_text(doc).encode("utf-8"))
            for old in folder.glob(STORED.format("*")):
                if old.name != STORED.format(version):
                    old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot store the near-duplicate groups in %s: %s", folder, exc.strerror or exc)

    def moves(self) -> list[JSONDict]:
        """This server's moves that were not undone, newest first."""
        with self._move_lock:
            return list(reversed(self._moves))

    def move(self, version: object, picks: object) -> JSONDict:
        """``POST /api/duplicates/move``: for each pick ``{"keep": REL, "remove": [REL, ...]}`` of one
        group of ``version``, move the ``remove`` files to a new folder of the trash (kept copy
        and removed files compared with the index first, as ``--move-to`` does)."""
        index = self.collection.require()
        current = self.version_of(index)
        if version != current:
            raise Conflict("the index changed since these groups were shown; reload them")
        with self._cond:
            found = self._done.get((current, None))
        if not isinstance(found, dict):
            raise Conflict("the groups of this index version are not ready yet")
        chosen = _picked(found, picks)
        groups = [
            DuplicateGroup(
                str(index.file(_row(index, keep))),
                [Match(str(index.file(_row(index, r))), score) for r, score in remove],
            )
            for keep, remove in chosen
        ]
        report = DuplicateReport(str(index.root), len(index), DuplicateOptions(), 0, groups=groups)
        with self._move_lock:
            dest = self._new_folder()
            done = move_duplicates(index, report, dest)
            entry = {
                "log": done.log.relative_to(self.trash).as_posix(),
                "moved": done.moved,
                "folder": str(dest),
            }
            if done.moved:
                self._moves.append(entry)
        if done.moved:
            self.changed()
        return {**entry, "skipped": done.skipped, "trash": str(self.trash)}

    def undo(self, name: object) -> JSONDict:
        """``POST /api/duplicates/undo``: put back the files of the move log ``name`` (as a move
        answered it: ``FOLDER/cbir-moves-*.jsonl`` under the trash)."""
        if not isinstance(name, str) or not LOG_NAME.fullmatch(name):
            raise QueryError("give the log of a move, as the move answered it")
        path = self.trash / name
        if not path.is_file() or self.trash.resolve() not in path.resolve().parents:
            raise QueryError(f"no move log {name} in the trash folder")
        with self._move_lock:
            undone = undo_moves(path)
            self._moves = [m for m in self._moves if m["log"] != name]
        if undone.restored:
            self.changed()
        return {"restored": undone.restored, "not_moved": undone.not_moved, "problems": undone.problems}

    def _new_folder(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        n = 0
        while True:
            folder = self.trash / (f"{stamp}-{n}" if n else stamp)
            if not os.path.lexists(folder):
                return folder
            n += 1


def _row(index: IndexReader, rel: str) -> int:
    row = index.row_named(rel)
    if row is None:
        raise Conflict(f"{shown(rel)} is not indexed any more; reload the groups")
    return row


def _picked(doc: JSONDict, picks: object) -> list[tuple[str, list[tuple[str, float]]]]:
    """The picks checked against the groups: each keeps one of its group's files and removes others
    of the same group; no file is named twice."""
    if not isinstance(picks, list) or not picks:
        raise QueryError('give "groups": [{"keep": PATH, "remove": [PATH, ...]}, ...]')
    by_path = {p: g for g in doc["groups"] for p in g["paths"]}
    seen: set[str] = set()
    out = []
    for pick in picks:
        keep = pick.get("keep") if isinstance(pick, dict) else None
        remove = pick.get("remove") if isinstance(pick, dict) else None
        if not isinstance(keep, str) or not isinstance(remove, list) or not remove:
            raise QueryError('each group is {"keep": PATH, "remove": [PATH, ...]}')
        group = by_path.get(keep)
        if group is None:
            raise Conflict(f"{shown(keep)} is in no group of this version")
        scores = {m["path"]: m["score"] for m in group["members"]}
        scores[group["representative"]] = 1.0
        named = []
        for path in remove:
            if not isinstance(path, str) or path == keep or path not in scores:
                raise Conflict(f"{shown(str(path))} is not another file of the group of {shown(keep)}")
            named.append((path, float(scores[path])))
        for path in (keep, *remove):
            if path in seen:
                raise QueryError(f"{shown(path)} is named twice")
            seen.add(path)
        out.append((keep, named))
    return out
