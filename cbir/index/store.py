"""The index on disk: ``feats.npy`` plus a JSON manifest, always complete and consistent.

Layout of an index folder (by default ``DATASET/.cbir/``)::

    manifest.json   format, version, feature config, row -> file map, skipped files, segments
    feats.npy       float32 (or float16) matrix, one L2-normalised row per image
    part-*.npy      checkpoint segments of an unfinished run (merged into feats.npy at its end)
    ann.faiss       approximate index of a large collection (cbir.ann; described in extra["ann"])
    lock            held while an indexer runs

``manifest.json`` is the commit point: every other file is first written under a unique temporary
name, and the manifest is replaced (write, fsync, rename) only once they are complete. When a file
must keep a fixed name (``feats.npy``), the manifest records the staged file it is about to be
renamed from; a reader that finds the staged file still there uses it (and a writer finishes the
rename), so a crash between the two renames loses nothing. Nothing is unpickled and manifest paths
cannot escape the dataset root.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import IndexFolderError, IndexLockedError
from cbir.ingest.files import safe_join

FORMAT = "cbir-index"
VERSION = 1
MANIFEST = "manifest.json"
FEATS = "feats.npy"
ANN = "ann.faiss"  # the approximate index of large collections (cbir.ann), named in extra["ann"]
LOCK = "lock"


def _fsync_dir(path: Path) -> None:
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


def staged_name(final: str) -> str:
    """A unique temporary name for ``final`` in the same folder (same file system: rename is atomic)."""
    return f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(staged_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write an array to ``path`` (a fresh name) and fsync it."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Entry:
    """One indexed file: its path relative to the dataset root and the stat it was embedded at."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class Skipped:
    """A file that could not be used, remembered so it is not retried until it changes."""

    path: str
    size: int
    mtime_ns: int
    reason: str


@dataclass
class Manifest:
    """The commit record of an index (see the module docstring)."""

    config: dict[str, Any]
    dim: int
    dtype: str = "float32"
    entries: list[Entry | None] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    weights_path: str | None = None
    root: str | None = None
    generation: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "config": self.config,
                "dim": self.dim,
                "dtype": self.dtype,
                "generation": self.generation,
                "created": self.created,
                "updated": self.updated,
                "root": self.root,
                "weights_path": self.weights_path,
                "segments": self.segments,
                "entries": [None if e is None else [e.path, e.size, e.mtime_ns] for e in self.entries],
                "skipped": [[s.path, s.size, s.mtime_ns, s.reason] for s in self.skipped],
                "extra": self.extra,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("not a cbir index manifest")
        if d.get("version") != VERSION:
            raise ValueError(f"index format version {d.get('version')} (this cbir reads version {VERSION})")
        entries = [None if e is None else Entry(str(e[0]), int(e[1]), int(e[2])) for e in d["entries"]]
        for e in entries:
            if e is not None:
                safe_join(".", e.path)
        skipped = [Skipped(str(s[0]), int(s[1]), int(s[2]), str(s[3])) for s in d.get("skipped", [])]
        for s in skipped:
            safe_join(".", s.path)
        segments = d["segments"]
        for seg in segments:
            for key in ("file", "staged"):
                name = seg.get(key)
                if (name is not None or key == "file") and (
                    not isinstance(name, str) or not name or "/" in name or name.startswith(".")
                ):
                    raise ValueError(f"bad segment file name {name!r}")
        if sum(int(s["rows"]) for s in segments) != len(entries):
            raise ValueError("segment rows do not match the entries")
        return cls(
            config=d["config"],
            dim=int(d["dim"]),
            dtype=str(d.get("dtype", "float32")),
            entries=entries,
            segments=segments,
            skipped=skipped,
            weights_path=d.get("weights_path"),
            root=d.get("root"),
            generation=str(d["generation"]),
            created=float(d["created"]),
            updated=float(d["updated"]),
            extra=d.get("extra", {}),
        )


def read_manifest(index_dir: Path) -> Manifest | None:
    """The committed manifest of ``index_dir``, None if there is none; IndexFolderError if unreadable."""
    path = index_dir / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IndexFolderError(f"cannot read index manifest {path}: {exc.strerror}") from exc
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise IndexFolderError(f"index manifest {path} is corrupt or from another version ({exc})") from exc


def commit_manifest(index_dir: Path, manifest: Manifest) -> None:
    """Atomically replace the manifest: the single step that makes new index files visible."""
    manifest.updated = time.time()
    write_bytes_atomic(index_dir / MANIFEST, manifest.to_json().encode("utf-8"))


def segment_path(index_dir: Path, seg: dict[str, Any]) -> Path:
    """The file that currently holds a segment's rows: its staged name until the rename happened."""
    staged = seg.get("staged")
    if staged and (index_dir / staged).exists():
        return index_dir / staged
    return index_dir / seg["file"]


def finish_renames(index_dir: Path, manifest: Manifest) -> None:
    """Complete renames a crash interrupted (writer side, under the lock)."""
    changed = False
    for seg in manifest.segments:
        staged = seg.get("staged")
        if staged:
            if (index_dir / staged).exists():
                os.replace(index_dir / staged, index_dir / seg["file"])
            del seg["staged"]
            changed = True
    if changed:
        _fsync_dir(index_dir)
        commit_manifest(index_dir, manifest)


def load_matrix(index_dir: Path, manifest: Manifest, mmap: bool = True) -> np.ndarray:
    """The feature matrix of all rows (dead rows included), memory-mapped when it is one segment."""
    arrays = []
    for seg in manifest.segments:
        path = segment_path(index_dir, seg)
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise  # replaced by an indexer under our feet: open_index reads the manifest again
        except (OSError, ValueError) as exc:
            raise IndexFolderError(f"index file {path} is unreadable ({exc}); rebuild with --rebuild") from exc
        if arr.ndim != 2 or arr.shape[0] != int(seg["rows"]) or arr.shape[1] != manifest.dim:
            raise IndexFolderError(f"index file {path} does not match its manifest; rebuild with --rebuild")
        arrays.append(arr)
    if not arrays:
        return np.zeros((0, manifest.dim), dtype=manifest.dtype)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


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
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def cleanup_stale(index_dir: Path, manifest: Manifest | None) -> None:
    """Remove temporary and segment files that the committed manifest does not reference."""
    keep = {MANIFEST, LOCK}
    if manifest is not None:
        for seg in manifest.segments:
            keep.add(seg["file"])
            if seg.get("staged"):
                keep.add(seg["staged"])
        keep.update(manifest.extra.get("files", []))
        if "ann" in manifest.extra:
            keep.add(ANN)
    for p in index_dir.iterdir():
        if p.name in keep or not p.is_file():
            continue
        if p.name.startswith(("part-", "whitening-")) or ".tmp-" in p.name or p.name in (FEATS, ANN):
            p.unlink(missing_ok=True)
