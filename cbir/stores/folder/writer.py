"""The owner of an index folder: the only code that writes it, under its lock.

Layout of an index folder (by default ``DATASET/.cbir/``)::

    manifest.json        the commit point: format version, feature settings, row -> file map,
                         skipped files, and the names of every file below
    feats-*.npy          the feature matrix, one L2-normalised row per image (float32 or float16)
    part-*.npy           checkpoint segments of an unfinished run (merged at its end)
    whitening-*.npz      the learned whitening, when used (named by its digest)
    ann-*.faiss          approximate index of a large collection (cbir.stores.folder.ann)
    labels-*.json        each image's top ImageNet classes, with --labels (cbir.stores.folder.labels)
    lock                 held while an indexer runs

Every file is written whole under a new name before the manifest that names it is committed
(written to a temporary file and renamed over ``manifest.json``), and no name is ever given new
content, so the folder always holds one complete committed index and readers see one version whole
(:mod:`cbir.stores.folder.snapshot`). Files no committed manifest names are removed after each commit.

:class:`IndexWriter` is the seam a second store (a vector database) implements: what it holds
(path, size, mtime), put rows, drop paths, remember skipped files, commit, finish; and, for a store
other processes can write, a sink for them and the adoption of what they wrote (:mod:`cbir.stores.sink`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from cbir.core.errors import IndexFolderError, IndexWriteError
from cbir.core.labels import Labels
from cbir.core.records import Entry, Skipped
from cbir.encoders.features import FeatureConfig
from cbir.encoders.whiten import Whitening, whitening_filename
from cbir.ingest.files import INDEX_DIRNAME
from cbir.stores.folder import ann
from cbir.stores.folder.files import LOCK, Lock, read_matrix, write_atomic, write_bytes, write_matrix
from cbir.stores.folder.labels import read_labels, write_labels
from cbir.stores.manifest import LabelsRecord, Manifest, Segment

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BLOCK_ROWS = 65_536  # rows copied at a time when the matrix is compacted
_OURS = ("feats-", "part-", "whitening-", "ann-", "labels-")


def default_index_dir(root: str | os.PathLike[str]) -> Path:
    """The index lives with its dataset, in a hidden folder the image scan skips."""
    return Path(root) / INDEX_DIRNAME


def read_manifest(index_dir: Path) -> Manifest | None:
    """The committed manifest of ``index_dir``, None if there is none; IndexFolderError if unreadable."""
    return read_manifest_stat(index_dir)[0]


def read_manifest_stat(index_dir: Path) -> tuple[Manifest | None, tuple[int, int, int] | None]:
    """The manifest and the identity (inode, mtime, size) of the very file it was read from."""
    path = index_dir / MANIFEST
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError as exc:
        raise IndexFolderError(f"index manifest {path} is corrupt; rebuild with --rebuild") from exc
    except OSError as exc:
        if isinstance(exc, IsADirectoryError):  # not ours to delete, and no rebuild can rename over it
            raise IndexFolderError(
                f"index manifest {path} is a folder; move it away, then index again"
            ) from exc
        if isinstance(exc, NotADirectoryError):
            raise IndexFolderError(
                f"the index folder {index_dir} is a file; move it away or pass --index DIR"
            ) from exc
        raise IndexFolderError(f"cannot read index manifest {path}: {exc.strerror or exc}") from exc
    try:
        manifest = Manifest.from_json(text)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise IndexFolderError(
            f"index manifest {path} is corrupt or from another version ({exc}); rebuild with --rebuild"
        ) from exc
    return manifest, (st.st_ino, st.st_mtime_ns, st.st_size)


def load_matrix(index_dir: Path, manifest: Manifest, mmap: bool = True) -> np.ndarray:
    """The feature matrix of all rows (dead rows included), memory-mapped when it is one segment."""
    arrays = [read_matrix(index_dir / s.file, s.rows, manifest.dim, mmap) for s in manifest.segments]
    if not arrays:
        return np.zeros((0, manifest.dim), dtype=manifest.dtype)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class FolderWriter:
    """The folder store's :class:`IndexWriter`: a context manager that holds the folder's lock."""

    def __init__(
        self,
        index_dir: Path,
        config: FeatureConfig,
        *,
        dtype: str = "float32",
        rebuild: bool = False,
        whitening: Whitening | None = None,
        root: Path | None = None,
        weights_path: str | None = None,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError("dtype must be float32 or float16")
        self.dir = index_dir
        self.config, self.dtype, self.rebuild = config, dtype, rebuild
        self.whitening, self.root, self.weights_path = whitening, root, weights_path
        self.rebuilt: str | None = "asked" if rebuild else None
        self._lock = Lock(index_dir)
        self._pending: list[tuple[Sequence[Entry], np.ndarray]] = []
        self.manifest = Manifest(config=config, dim=0, dtype=dtype)
        self._committed: Manifest | None = None
        self._committed_text: str | None = None
        self._locked = False
        self._denied: IndexWriteError | None = None
        self._labeller: str | None = None  # the classifier of the committed labels (kept across rebuilds)
        self._labels: dict[str, Labels] = {}
        self._labels_dirty = False

    def __enter__(self) -> FolderWriter:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexFolderError(
                f"cannot create the index folder {self.dir} ({exc.strerror}); pass --index DIR"
            ) from exc
        try:
            self._lock.__enter__()
            self._locked = True
        except IndexWriteError as exc:
            # a read-only folder (a dataset on read-only media, say): nobody can write it, so an
            # up-to-date index is still usable; the first write this run needs raises this error
            self._denied = exc
        try:
            self._open()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._locked:
            self._lock.__exit__()
            self._locked = False

    def _writable(self) -> None:
        """Raise the lock's write error if this writer could not take the lock (read-only folder)."""
        if self._denied is not None:
            raise self._denied

    def _open(self) -> None:
        on_disk: Manifest | None = None
        try:
            on_disk = read_manifest(self.dir)
        except IndexFolderError as exc:
            if isinstance(exc.__cause__, OSError):
                raise  # unreadable, not damaged: a rebuild could not write it either
            if not self.rebuild:
                log.warning("%s; rebuilding", exc)
                self.rebuilt = "damaged"
        self._committed = on_disk  # its files stay until a new manifest is committed
        if on_disk is not None and on_disk.labels is not None:
            self._labeller = on_disk.labels.classifier  # the setting survives a rebuild, not the labels
        old = None if self.rebuild else on_disk
        if old is not None and old.config != self.config:
            log.info("index settings changed; rebuilding %s", self.dir)
            self.rebuilt = "settings changed"
            old = None
        if old is not None:
            try:  # a missing or damaged matrix is reported, not built upon (each file's header read)
                for segment in old.segments:
                    read_matrix(self.dir / segment.file, segment.rows, old.dim)
            except FileNotFoundError as exc:
                raise IndexFolderError(
                    f"index file {exc.filename} is missing; rebuild with --rebuild"
                ) from exc
            self.manifest = old
            if old.labels is not None:
                try:
                    self._labels = read_labels(self.dir / old.labels.file)
                except FileNotFoundError as exc:
                    raise IndexFolderError(
                        f"index file {exc.filename} is missing; rebuild with --rebuild"
                    ) from exc
        else:
            self.manifest.labels = None
        self._committed_text = old.to_json() if old is not None else None
        self._cleanup()
        if self.whitening is not None:
            name = whitening_filename(self.whitening.digest)
            if not (self.dir / name).exists():
                self._writable()
                write_atomic(self.dir / name, self.whitening.write_to)
            self.manifest.whitening = name
        else:
            self.manifest.whitening = None
        if self._denied is None:  # where they are now: informational, not worth a write on their own
            if self.root is not None:
                self.manifest.root = str(self.root.resolve())
            self.manifest.weights_path = self.weights_path

    @property
    def is_new(self) -> bool:
        """True when this run starts an index from nothing (a first run or a rebuild)."""
        return self._committed_text is None

    def set_dim(self, dim: int) -> None:
        """The vector dimension (known once the embedder is built; an existing index has its own)."""
        if not self.is_new and dim != self.manifest.dim:
            raise ValueError(f"vectors of {dim} dimensions for an index of {self.manifest.dim}")
        self.manifest.dim = dim

    def held(self) -> dict[str, Entry]:
        return {e.path: e for e in self.manifest.entries if e is not None}

    def known_bad(self) -> dict[str, Skipped]:
        return {s.path: s for s in self.manifest.skipped}

    def put(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        if len(entries) != len(vectors):
            raise ValueError("one vector per entry")
        if len(entries):
            self._pending.append((list(entries), np.asarray(vectors)))

    def sink(self, *, same_machine: bool) -> None:
        """None: a folder has one writer (under its lock), so every row comes through :meth:`put`."""
        return None

    def adopt(self, entries: Sequence[Entry]) -> None:
        raise ValueError("the folder store hands out no sink; its rows come through put")

    def end_sink(self) -> None:
        """Nothing: the folder store hands out no sink."""

    def set_taken(self, taken: Mapping[str, str]) -> None:
        if self._denied is not None:
            return  # informational: not worth failing a read-only index that is otherwise up to date
        self.manifest.entries = [
            dataclasses.replace(e, taken=taken[e.path]) if e is not None and e.path in taken else e
            for e in self.manifest.entries
        ]

    def drop(self, paths: Iterable[str]) -> None:
        gone = set(paths)
        self.manifest.entries = [
            None if e is not None and e.path in gone else e for e in self.manifest.entries
        ]
        for path in gone & set(self._labels):
            del self._labels[path]
            self._labels_dirty = True

    @property
    def labeller(self) -> str | None:
        """The classifier whose labels the index holds (or held before a rebuild); None: no labels."""
        return self._labeller

    def labelled(self) -> set[str]:
        """The held paths that have labels (made by :attr:`labeller`)."""
        held = {e.path for e in self.manifest.entries if e is not None}
        return held & set(self._labels)

    def put_labels(self, classifier: str, labels: Mapping[str, Labels]) -> None:
        """Labels of held paths (visible at the next commit); another classifier's replace all."""
        if classifier != self._labeller or self.manifest.labels is None:
            if classifier != self._labeller:
                self._labels = {}
            self._labeller = classifier
            self._labels_dirty = True
        if labels:
            self._labels.update(labels)
            self._labels_dirty = True

    def set_skipped(self, skipped: Sequence[Skipped]) -> None:
        self.manifest.skipped = list(skipped)

    def commit(self) -> None:
        self._writable()
        if self._pending or not self.manifest.segments:
            entries = [e for batch, _ in self._pending for e in batch]
            vectors = [v for _, v in self._pending]
            name = f"part-{uuid.uuid4().hex}.npy"
            write_matrix(self.dir / name, vectors, len(entries), self.manifest.dim, self.manifest.dtype)
            self.manifest.segments.append(Segment(name, len(entries)))
            self.manifest.entries.extend(entries)
            self._pending.clear()
        if self._labels_dirty:
            self._write_labels()
        self._commit_manifest()

    def _write_labels(self) -> None:
        """The labels of the held paths under a new name, named in the manifest."""
        assert self._labeller is not None
        held = {e.path for e in self.manifest.entries if e is not None}
        self._labels = {p: v for p, v in self._labels.items() if p in held}
        name = f"labels-{uuid.uuid4().hex}.json"
        write_labels(self.dir / name, self._labeller, self._labels)
        self.manifest.labels = LabelsRecord(name, self._labeller)
        self._labels_dirty = False

    def _commit_manifest(self) -> None:
        self._writable()
        self.manifest.updated = time.time()
        text = self.manifest.to_json()
        write_bytes(self.dir / MANIFEST, text.encode("utf-8"))
        self._committed, self._committed_text = self.manifest, text
        self._cleanup()

    def finish(self, ann_mode: str) -> str:
        self._compact()
        return self._update_ann(ann_mode)

    def unchanged_since_commit(self) -> bool:
        """True when nothing was put, dropped or skipped since the last commit (nothing to write)."""
        return (
            not self._pending and not self._labels_dirty and self.manifest.to_json() == self._committed_text
        )

    def _compact(self) -> None:
        """Merge the segments (dropping dead rows) into one new ``feats-*.npy``, in the asked dtype."""
        m = self.manifest
        live = np.array(m.live_rows(), dtype=np.int64)
        if (
            len(m.segments) == 1
            and m.segments[0].file.startswith("feats")
            and len(live) == len(m.entries)
            and m.dtype == self.dtype
        ):
            return
        self._writable()
        source = load_matrix(self.dir, m, mmap=True)
        name = f"feats-{uuid.uuid4().hex}.npy"
        blocks = (source[live[s : s + BLOCK_ROWS]] for s in range(0, len(live), BLOCK_ROWS))
        write_matrix(self.dir / name, blocks, len(live), m.dim, self.dtype)
        del source
        m.generation = uuid.uuid4().hex  # new feature rows: an ANN built from the old ones is stale
        m.entries = [m.entries[i] for i in live]
        m.segments = [Segment(name, len(live))]
        m.dtype = self.dtype
        self._commit_manifest()

    def _update_ann(self, mode: str) -> str:
        m = self.manifest
        rows = len(m.entries)
        fresh = ann.is_fresh(m.ann, m) and m.ann is not None and (self.dir / m.ann.file).is_file()
        kind = ann.wanted_kind(mode, rows, m.ann, fresh)
        if kind is None:
            if m.ann is None:
                return "none"
            m.ann = None
            self._commit_manifest()
            return "removed"
        if fresh and m.ann is not None and m.ann.kind == kind:
            return f"{kind} up to date"
        self._writable()
        m.ann = ann.build_file(self.dir, m, load_matrix(self.dir, m, mmap=True), kind)
        self._commit_manifest()
        return f"built {kind} in {m.ann.seconds:.1f}s"

    def _cleanup(self) -> None:
        """Remove our files that the committed manifest does not name (temporaries included)."""
        if self._denied is not None:
            return  # not ours to tidy without the lock
        keep = {MANIFEST, LOCK} | (self._committed.files() if self._committed is not None else set())
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            if name in keep or not (
                name.startswith(_OURS) or ".tmp-" in name or name in ("feats.npy", "ann.faiss")
            ):
                continue
            try:
                if (self.dir / name).is_file():
                    (self.dir / name).unlink()
            except OSError as exc:
                log.debug("cannot remove %s: %s", self.dir / name, exc)
