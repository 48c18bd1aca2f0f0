"""Bringing an index up to date with its folder: incremental, checkpointed, crash-safe.

New files are embedded, changed files (size or mtime) re-embedded, deleted files dropped, bad files
remembered and not retried until they change. Progress is committed every ``checkpoint_every``
images or ``checkpoint_seconds`` seconds as a new segment, so a crash or Ctrl-C loses at most the
work since the last checkpoint (Ctrl-C and ordinary errors lose nothing: the finished work is
committed before the exception goes on). The end of a run merges the segments into ``feats.npy``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.embedding.embedder import Embedder, resolve_config
from cbir.embedding.features import FeatureConfig
from cbir.embedding.whiten import Whitening, whitening_filename
from cbir.errors import BadImageError, DatasetError, IndexFolderError
from cbir.index.ann import MODES as ANN_MODES
from cbir.index.ann import update_ann
from cbir.index.snapshot import default_index_dir
from cbir.index.store import (
    FEATS,
    Entry,
    Lock,
    Manifest,
    Skipped,
    cleanup_stale,
    commit_manifest,
    finish_renames,
    load_matrix,
    read_manifest,
    staged_name,
    write_npy,
)
from cbir.ingest.files import find_images
from cbir.progress import progress_bar

log = logging.getLogger(__name__)
DTYPES = ("float32", "float16")


@dataclass
class IndexReport:
    """What an indexing run did; printed as a summary and available as JSON."""

    dataset: str
    index_dir: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    known_bad: int = 0
    total: int = 0
    rebuilt: str | None = None
    ann: str | None = None
    embedded: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images_per_second"] = round(self.images_per_second, 2)
        return d


def _stat_files(root: Path, files: Iterable[str]) -> tuple[dict[str, tuple[int, int]], list[dict[str, str]]]:
    stats: dict[str, tuple[int, int]] = {}
    failed: list[dict[str, str]] = []
    for rel in files:
        try:
            st = os.stat(root / rel)
        except OSError as exc:
            failed.append({"path": rel, "reason": f"cannot stat ({exc.strerror})"})
            continue
        stats[rel] = (st.st_size, st.st_mtime_ns)
    return stats, failed


def consolidate(index_dir: Path, manifest: Manifest, dtype: str, block_rows: int = 65536) -> None:
    """Merge all segments (dropping dead rows) into one ``feats.npy``, converting to ``dtype``."""
    segs = manifest.segments
    live = np.array([i for i, e in enumerate(manifest.entries) if e is not None], dtype=np.int64)
    if (
        len(segs) == 1
        and segs[0]["file"] == FEATS
        and not segs[0].get("staged")
        and len(live) == len(manifest.entries)
        and manifest.dtype == dtype
    ):
        return
    source = load_matrix(index_dir, manifest, mmap=True)
    staged = staged_name(FEATS)
    out = np.lib.format.open_memmap(
        index_dir / staged, mode="w+", dtype=dtype, shape=(len(live), manifest.dim)
    )
    for start in range(0, len(live), block_rows):
        rows = live[start : start + block_rows]
        out[start : start + len(rows)] = source[rows]
    out.flush()
    with open(index_dir / staged, "rb+") as f:
        os.fsync(f.fileno())
    del out, source
    manifest.generation = uuid.uuid4().hex  # new feature rows: an ANN built from the old ones is stale
    manifest.entries = [manifest.entries[i] for i in live]
    manifest.segments = [{"file": FEATS, "rows": len(live), "staged": staged}]
    manifest.dtype = dtype
    commit_manifest(index_dir, manifest)
    finish_renames(index_dir, manifest)
    cleanup_stale(index_dir, manifest)


def update_index(
    root: str | os.PathLike,
    config: FeatureConfig,
    *,
    weights: str | None = "imagenet",
    index_dir: str | os.PathLike | None = None,
    embedder: Embedder | Callable[[], Embedder] | None = None,
    rebuild: bool = False,
    dtype: str = "float32",
    recursive: bool = True,
    include_hidden: bool = False,
    exclude: Iterable[str] = (),
    checkpoint_every: int = 500,
    checkpoint_seconds: float = 120.0,
    progress: bool | None = None,
    whitening: Whitening | None = None,
    ann: str | None = "auto",
) -> IndexReport:
    """Index ``root`` (or bring its index up to date) and return what was done.

    ``embedder`` is an Embedder or a zero-argument factory called only when something needs
    embedding, so an up-to-date index costs no model load. An index built with other settings is
    rebuilt; ``rebuild`` forces that. ``whitening`` (learned beforehand) is stored in the index
    folder and applied to every vector; the embedder must have been made with it. ``ann`` decides the
    approximate index for large collections (see ``cbir.ann.update_ann``): ``"auto"`` builds or
    refreshes one from ``cbir.ann.AUTO_MIN_ROWS`` rows, ``"none"`` removes it, a kind forces that kind.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    if (ann or "none") not in ANN_MODES:
        raise ValueError(f"ann must be one of {ANN_MODES}")
    t0 = time.perf_counter()
    root = Path(root)
    idir = Path(index_dir) if index_dir is not None else default_index_dir(root)
    files = find_images(
        root, recursive=recursive, include_hidden=include_hidden, exclude=exclude, skip_dirs=[idir]
    )
    if not files:
        raise DatasetError(f"no images found in {root}")
    cfg = resolve_config(config, weights)
    if whitening is not None:
        cfg = cfg.replace(whitening=whitening.digest)
    try:
        idir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexFolderError(
            f"cannot create the index folder {idir} ({exc.strerror}); pass --index DIR"
        ) from exc
    report = IndexReport(dataset=str(root), index_dir=str(idir))
    with Lock(idir):
        stats, stat_failed = _stat_files(root, files)
        old: Manifest | None = None
        if rebuild:
            report.rebuilt = "asked"
        else:
            try:
                old = read_manifest(idir)
            except IndexFolderError as exc:
                log.warning("%s; rebuilding", exc)
                report.rebuilt = "damaged"
            if old is not None and old.config != cfg.to_dict():
                log.info("index settings changed; rebuilding %s", idir)
                report.rebuilt = "settings changed"
                old = None
        if old is not None:
            finish_renames(idir, old)
            cleanup_stale(idir, old)
        manifest = old or Manifest(config=cfg.to_dict(), dim=0, dtype=dtype)
        if whitening is not None:
            wfile = whitening_filename(whitening.digest)
            if not (idir / wfile).exists():
                whitening.save(idir / wfile)
            manifest.extra["files"] = [wfile]
        manifest.root = str(root.resolve())
        if weights not in (None, "imagenet", "random"):
            manifest.weights_path = str(Path(weights).resolve())

        old_rows = {e.path: (row, e) for row, e in enumerate(manifest.entries) if e is not None}
        old_skipped = {s.path: s for s in manifest.skipped}
        skipped: list[Skipped] = []
        todo: list[tuple[str, int, int]] = []
        for rel, (size, mtime) in stats.items():
            prev = old_rows.get(rel)
            if prev is not None and (prev[1].size, prev[1].mtime_ns) == (size, mtime):
                report.unchanged += 1
                continue
            bad = old_skipped.get(rel)
            if bad is not None and (bad.size, bad.mtime_ns) == (size, mtime):
                report.known_bad += 1
                skipped.append(bad)
                continue
            todo.append((rel, size, mtime))
            if prev is not None:
                report.updated += 1
        report.added = len(todo) - report.updated
        report.removed = sum(1 for p in old_rows if p not in stats)
        for rel in [t[0] for t in todo] + [p for p in old_rows if p not in stats]:
            if rel in old_rows:
                manifest.entries[old_rows[rel][0]] = None
        for failure in stat_failed:
            log.warning("skipped %s: %s", failure["path"], failure["reason"])
            report.skipped.append(failure)

        changed = (
            bool(todo) or report.removed or [s.path for s in skipped] != [s.path for s in manifest.skipped]
        )
        if todo:
            _embed_into(
                root,
                idir,
                manifest,
                todo,
                skipped,
                report,
                embedder,
                cfg,
                weights,
                checkpoint_every,
                checkpoint_seconds,
                progress,
            )
            # files that failed to decode are reported as skipped, not as added/updated; a file
            # that was indexed and is now unreadable has lost its row: it counts as removed
            failed = {s.path for s in skipped}
            for rel, _, _ in todo:
                if rel in failed:
                    if rel in old_rows:
                        report.updated -= 1
                        report.removed += 1
                    else:
                        report.added -= 1
        elif changed or old is None:
            manifest.skipped = skipped
            if old is None:
                manifest.dim = _embedder(embedder, cfg, weights).dim
                manifest.segments = [{"file": f"part-{uuid.uuid4().hex}.npy", "rows": 0}]
                write_npy(idir / manifest.segments[0]["file"], np.zeros((0, manifest.dim), dtype=dtype))
            commit_manifest(idir, manifest)
        consolidate(idir, manifest, dtype)
        report.total = sum(1 for e in manifest.entries if e is not None)
        report.ann = update_ann(idir, manifest, load_matrix(idir, manifest, mmap=True), ann)
    report.seconds = time.perf_counter() - t0
    return report


def _embedder(
    embedder: Embedder | Callable[[], Embedder] | None, cfg: FeatureConfig, weights: str | None
) -> Embedder:
    if embedder is None:
        return Embedder(cfg, weights)
    if isinstance(embedder, Embedder):
        return embedder
    return embedder()


def _embed_into(
    root: Path,
    idir: Path,
    manifest: Manifest,
    todo: list[tuple[str, int, int]],
    skipped: list[Skipped],
    report: IndexReport,
    embedder: Embedder | Callable[[], Embedder] | None,
    cfg: FeatureConfig,
    weights: str | None,
    checkpoint_every: int,
    checkpoint_seconds: float,
    progress: bool | None,
) -> None:
    emb = _embedder(embedder, cfg, weights)
    if emb.config.to_dict() != cfg.to_dict():
        raise ValueError("the embedder's settings differ from the index settings")
    manifest.dim = emb.dim
    vecs: list[np.ndarray] = []
    entries: list[Entry] = []
    last = time.monotonic()

    def checkpoint() -> None:
        nonlocal last
        if vecs:
            name = f"part-{uuid.uuid4().hex}.npy"
            write_npy(idir / name, np.stack(vecs).astype(manifest.dtype))
            manifest.segments.append({"file": name, "rows": len(vecs)})
            manifest.entries.extend(entries)
            vecs.clear()
            entries.clear()
        manifest.skipped = list(skipped)
        commit_manifest(idir, manifest)
        last = time.monotonic()

    t0 = time.perf_counter()
    bar = progress_bar(total=len(todo), desc="indexing", unit="img", enabled=progress)
    try:
        for pos, result in emb.embed_files([root / rel for rel, _, _ in todo]):
            rel, size, mtime = todo[pos]
            if isinstance(result, BadImageError):
                log.warning("skipped %s: %s", rel, result)
                skipped.append(Skipped(rel, size, mtime, str(result)))
                report.skipped.append({"path": rel, "reason": str(result)})
            else:
                vecs.append(result)
                entries.append(Entry(rel, size, mtime))
                report.embedded += 1
            bar.update(1)
            if len(vecs) >= checkpoint_every or time.monotonic() - last >= checkpoint_seconds:
                checkpoint()
    except BaseException:
        try:
            checkpoint()
        except Exception as exc:  # the original error matters more
            log.error("could not save the last checkpoint: %s", exc)
        raise
    finally:
        bar.close()
    checkpoint()
    log.debug("embedded %d images in %.1fs", report.embedded, time.perf_counter() - t0)
