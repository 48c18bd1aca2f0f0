"""Approximate nearest-neighbour search for large indexes: a faiss graph (HNSW) beside ``feats.npy``.

Exact search reads every feature once per query (1M x 2048 float32 = 8 GB: half a second at best,
from the page cache), so from :data:`AUTO_MIN_ROWS` rows the indexer also builds an approximate
index, ``ann.faiss``, and queries use it. The default kind is HNSW (32 links per node) over 8-bit
scalar-quantised vectors (a quarter of the float32 size); its candidates are re-ranked with exact dot
products read from the memory-mapped ``feats.npy``, so returned scores are the exact ones and only
the candidate list is approximate. Chosen by measurement (benchmarks/bench_search.py, 100k clustered
2048-d vectors, 2 cores): HNSW reached recall@10 0.974 at 1.0 ms per query (0.988 at 1.8 ms) where
IVF on SQ8 codes needed 6.5 ms for 0.966 and 11 ms for 0.988; build times were equal (~1 min).

Kinds (:data:`KINDS`): ``hnsw`` (the default), ``ivfsq8`` (IVF lists of SQ8 codes), ``ivfpq`` (IVF
lists of PQ codes, 1 byte per 8 dimensions: the smallest file, slow to train), ``ivfflat`` (IVF lists
of float32 vectors: as big as ``feats.npy``). All are inner-product indexes, re-ranked exactly.

Freshness: the manifest's ``extra["ann"]`` records the manifest ``generation``, row count and
dimension the file was built from. The indexer gives the manifest a new generation whenever it
rewrites ``feats.npy``, so an ANN whose generation or row count differs, or an index with dead rows,
is stale: the indexer rebuilds it at the end of ``update_index``; a query ignores it (with a
warning) and searches exactly. The file is written under a temporary name and renamed before the
manifest names it. faiss is imported only when an ANN is built or used.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.index.store import ANN as ANN_FILE
from cbir.index.store import Manifest, _fsync_dir, commit_manifest, staged_name

log = logging.getLogger(__name__)

# Below this many rows exact search stays interactive and exact (a memory-bound scan: ~50 ms per 100k
# float32 2048-d rows on 2 cores) while an HNSW build costs minutes (~1 min per 100k rows); above it
# exact search grows towards seconds per query (10x more for float16 storage) and the ANN pays off.
AUTO_MIN_ROWS = 200_000
DEFAULT_KIND = "hnsw"
KINDS = ("hnsw", "ivfsq8", "ivfpq", "ivfflat")
MODES = ("auto", "none", *KINDS)
TRAIN_ROWS = 200_000  # at most this many rows (a random sample) train the quantisers
ADD_BLOCK = 65_536  # rows converted to float32 and added per call (bounded memory for float16 / mmap)


@dataclass
class Ann:
    """A loaded approximate index and how to search it (``meta`` as stored in the manifest)."""

    index: Any  # faiss.Index
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "?"))


def _faiss() -> Any:
    import faiss

    return faiss


def default_params(kind: str, rows: int, dim: int) -> dict[str, Any]:
    """Build and search parameters of ``kind`` for ``rows`` vectors of ``dim`` dimensions."""
    if kind == "hnsw":
        # recall@10 at 100k: 0.955 / 0.974 / 0.988 at efSearch 64 / 128 / 256 (1.0 / 1.8 ms); recall
        # falls slowly with size, so 256 keeps a margin at 1M rows for a cost still far below 20 ms
        return {"M": 32, "efConstruction": 80, "efSearch": 256, "candidates": 64}
    if kind in ("ivfsq8", "ivfpq", "ivfflat"):
        # about 4 sqrt(n) lists (a power of two), with at least 39 training points each
        nlist = 1 << max(0, int(np.log2(max(1.0, 4 * np.sqrt(rows)))))
        nlist = max(1, min(nlist, rows // 39 or 1))
        # recall@10 0.95 took 1/32 of the lists at 100k rows, 1/16 at 20k; small indexes probe them all
        nprobe = max(1, nlist // 16) if nlist >= 64 else nlist
        params: dict[str, Any] = {
            "nlist": nlist,
            "nprobe": nprobe,
            "candidates": 0 if kind == "ivfflat" else 64,
        }
        if kind == "ivfpq":
            params["m"] = _pq_subquantizers(dim)
        return params
    raise ValueError(f"unknown approximate index kind {kind!r} (one of {', '.join(KINDS)})")


def _pq_subquantizers(dim: int) -> int:
    """The number of PQ sub-vectors: about 8 dimensions each (one byte per 8 floats), dividing ``dim``."""
    for sub in (8, 4, 2, 1, 16, 32):
        if dim % sub == 0:
            return dim // sub
    return dim


def factory_string(kind: str, params: dict[str, Any]) -> str:
    """The faiss ``index_factory`` description of ``kind``."""
    if kind == "hnsw":
        return f"HNSW{int(params['M'])},SQ8"
    if kind == "ivfsq8":
        return f"IVF{int(params['nlist'])},SQ8"
    if kind == "ivfpq":
        return f"IVF{int(params['nlist'])},PQ{int(params['m'])}np"  # np: no (slow) polysemous training
    if kind == "ivfflat":
        return f"IVF{int(params['nlist'])},Flat"
    raise ValueError(f"unknown approximate index kind {kind!r} (one of {', '.join(KINDS)})")


def _sample(feats: np.ndarray, n: int, seed: int) -> np.ndarray:
    rows = feats.shape[0]
    if rows <= n:
        return np.ascontiguousarray(feats, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    return np.ascontiguousarray(feats[pick], dtype=np.float32)


def build_ann(feats: np.ndarray, kind: str = DEFAULT_KIND, seed: int = 1234, **params: Any) -> Any:
    """Build a faiss inner-product index of ``kind`` over the rows of ``feats`` (float32 or float16,
    possibly memory-mapped: added in float32 blocks). ``params`` override :func:`default_params`."""
    faiss = _faiss()
    rows, dim = feats.shape
    if rows == 0:
        raise ValueError("cannot build an approximate index over no rows")
    full = {**default_params(kind, rows, dim), **params}
    index = faiss.index_factory(dim, factory_string(kind, full), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = int(full["efConstruction"])
    else:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # enough for a coarse partition; k-means on 2048-d is the build's main cost
        ivf.cp.seed = seed
    if not index.is_trained:
        index.train(_sample(feats, TRAIN_ROWS, seed))
    for start in range(0, rows, ADD_BLOCK):
        index.add(np.ascontiguousarray(feats[start : start + ADD_BLOCK], dtype=np.float32))
    set_search_params(index, kind, full)
    return index


def set_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    """Apply the search-time parameter of ``kind`` (efSearch or nprobe) to a built or loaded index."""
    faiss = _faiss()
    space = faiss.ParameterSpace()
    if kind == "hnsw" and "efSearch" in params:
        space.set_index_parameter(index, "efSearch", int(params["efSearch"]))
    elif "nprobe" in params and kind != "hnsw":
        space.set_index_parameter(index, "nprobe", int(params["nprobe"]))


def save_ann(index: Any, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` through a temporary file, fsync and an atomic rename."""
    faiss = _faiss()
    path = Path(path)
    tmp = path.with_name(staged_name(path.name))
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def load_ann(path: str | os.PathLike, mmap: bool = True) -> Any:
    """Read an index written by :func:`save_ann`; with ``mmap`` its arrays (codes, graph, lists) are
    mapped from the file instead of copied into memory: opening a 1M-row index takes milliseconds,
    not seconds, and uses no memory of its own. The index must then not be modified."""
    faiss = _faiss()
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)


def ann_search(
    ann: Ann | Any,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    feats: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate ``search.top_k``: ``(rows, scores)``, each (n_queries, k'), best first.

    ``ann`` is an :class:`Ann` (or a bare faiss index). ``exclude[q]`` rows are never returned (the
    index is asked for that many more). With ``feats`` (the rows the index was built from) the
    ``meta["params"]["candidates"]`` best candidates (at least k + excluded) are re-ranked by exact
    dot products, so scores equal those of exact search; ties go to the lower row. A query left with
    fewer than k' candidates (a sparse IVF probe) is answered exactly.
    """
    from cbir.search.exact import top_k

    index = ann.index if isinstance(ann, Ann) else ann
    meta = ann.meta if isinstance(ann, Ann) else {}
    q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    n = int(index.ntotal)
    n_excl = max((len(e) for e in exclude), default=0) if exclude else 0
    k_eff = max(0, min(k, n - n_excl))
    if k_eff == 0 or n == 0 or len(q) == 0:
        return np.zeros((len(q), 0), dtype=np.int64), np.zeros((len(q), 0), dtype=np.float32)
    want = k_eff + n_excl
    candidates = int(meta.get("params", {}).get("candidates", 0)) if feats is not None else 0
    fetch = min(n, max(want, candidates))
    approx_scores, cand = index.search(q, fetch)
    if feats is not None:
        approx_scores = _exact_scores(feats, q, cand)
    rows = np.zeros((len(q), k_eff), dtype=np.int64)
    scores = np.zeros((len(q), k_eff), dtype=np.float32)
    short: list[int] = []
    for qi in range(len(q)):
        r, s = cand[qi], approx_scores[qi]
        ok = r >= 0
        if exclude and len(exclude[qi]):
            ok &= ~np.isin(r, np.asarray(exclude[qi], dtype=np.int64))
        r, s = r[ok], s[ok]
        if len(r) < k_eff:
            short.append(qi)
            continue
        order = np.lexsort((r, -s))[:k_eff]
        rows[qi], scores[qi] = r[order], s[order]
    if short:
        if feats is None:
            raise ValueError("the approximate index returned too few candidates and no feats to fall back on")
        ex = [exclude[i] for i in short] if exclude else None
        r2, s2 = top_k(feats, q[short], k_eff, exclude=ex)
        rows[short], scores[short] = r2, s2
    return rows, scores


def _exact_scores(feats: np.ndarray, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Exact dot products of each query with its candidate rows (-inf for missing candidates)."""
    valid = cand >= 0
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    if not valid.any():
        return out
    unique = np.unique(cand[valid])
    vecs = np.asarray(feats[unique], dtype=np.float32)  # sorted rows: sequential-ish reads from a memmap
    pos = np.searchsorted(unique, np.where(valid, cand, unique[0]))
    for qi in range(len(q)):
        out[qi, valid[qi]] = vecs[pos[qi, valid[qi]]] @ q[qi]
    out[np.isnan(out)] = -np.inf
    return out


# --- freshness and the index folder -------------------------------------------------------------


def ann_meta(manifest: Manifest) -> dict[str, Any] | None:
    """The ANN record of the manifest, if one was built."""
    meta = manifest.extra.get("ann")
    return meta if isinstance(meta, dict) else None


def is_fresh(meta: dict[str, Any] | None, manifest: Manifest) -> bool:
    """True when ``meta`` describes an ANN built from exactly the committed feature rows."""
    return (
        meta is not None
        and meta.get("generation") == manifest.generation
        and meta.get("rows") == len(manifest.entries)
        and meta.get("dim") == manifest.dim
        and all(e is not None for e in manifest.entries)
    )


def open_ann(index_dir: Path, manifest: Manifest) -> Ann | None:
    """The index folder's ANN if it has a fresh one, else None (a stale or unreadable one is logged)."""
    meta = ann_meta(manifest)
    if meta is None:
        return None
    if not is_fresh(meta, manifest):
        log.warning(
            "the approximate index in %s is out of date (the features changed since it was built); "
            "searching exactly. Run `cbir index` to rebuild it",
            index_dir,
        )
        return None
    path = index_dir / ANN_FILE
    try:
        index = load_ann(path)
        if int(index.ntotal) != meta["rows"] or int(index.d) != manifest.dim:
            raise ValueError("it does not match the manifest")
        set_search_params(index, str(meta.get("kind")), meta.get("params", {}))
    except (RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.warning("cannot use the approximate index %s (%s); searching exactly", path, reason)
        return None
    return Ann(index, meta)


def ann_for(index: Any) -> Ann | None:
    """The fresh ANN of an open ``cbir.index.Index`` (loaded once, kept on the object), or None."""
    if not hasattr(index, "_ann"):
        index._ann = open_ann(index.dir, index.manifest)
    return index._ann


def update_ann(
    index_dir: Path, manifest: Manifest, feats: np.ndarray, mode: str | None = "auto", **params: Any
) -> str:
    """Bring the index folder's ANN in line with ``mode`` (called by the indexer, under its lock).

    ``auto``: build (or rebuild when stale) the ANN of an index of at least :data:`AUTO_MIN_ROWS`
    rows, keeping the kind of an existing one; drop a stale one below the threshold. ``none``: remove
    any. A kind name: make sure a fresh ANN of that kind exists, whatever the size. Returns what was
    done, in a few words. ``feats`` are the committed rows (all live: called after consolidation).
    """
    mode = mode or "none"
    if mode not in MODES:
        raise ValueError(f"ann must be one of {', '.join(MODES)}")
    meta = ann_meta(manifest)
    fresh = is_fresh(meta, manifest) and (index_dir / ANN_FILE).is_file()
    rows = feats.shape[0]
    if mode == "none" or rows == 0:
        if meta is not None:
            remove_ann(index_dir, manifest)
            return "removed"
        return "none"
    if mode == "auto":
        if rows < AUTO_MIN_ROWS and not fresh:
            if meta is not None:
                remove_ann(index_dir, manifest)
                return "removed (stale, index below the size threshold)"
            return "none"
        kind = str(meta["kind"]) if meta is not None and meta.get("kind") in KINDS else DEFAULT_KIND
    else:
        kind = mode
    if fresh and meta is not None and meta.get("kind") == kind and not params:
        if ANN_FILE not in manifest.extra.get("files", []):  # the indexer reset the list (whitening)
            manifest.extra["files"] = sorted({*manifest.extra.get("files", []), ANN_FILE})
            commit_manifest(index_dir, manifest)
        return f"{kind} up to date"
    t0 = time.perf_counter()
    full = {**default_params(kind, rows, feats.shape[1]), **params}
    log.info("building the approximate index (%s, %s) over %d rows", kind, full, rows)
    index = build_ann(feats, kind, **full)
    save_ann(index, index_dir / ANN_FILE)
    seconds = time.perf_counter() - t0
    manifest.extra["ann"] = {
        "file": ANN_FILE,
        "kind": kind,
        "params": full,
        "generation": manifest.generation,
        "rows": rows,
        "dim": int(feats.shape[1]),
        "dtype": manifest.dtype,
        "seconds": round(seconds, 2),
        "built": time.time(),
    }
    manifest.extra["files"] = sorted({*manifest.extra.get("files", []), ANN_FILE})
    commit_manifest(index_dir, manifest)
    log.info("built the approximate index (%s) in %.1fs", kind, seconds)
    return f"built {kind} in {seconds:.1f}s"


def remove_ann(index_dir: Path, manifest: Manifest) -> None:
    """Forget the ANN (commit first, so the manifest never names a missing file), then delete it."""
    manifest.extra.pop("ann", None)
    files = [f for f in manifest.extra.get("files", []) if f != ANN_FILE]
    if files:
        manifest.extra["files"] = files
    else:
        manifest.extra.pop("files", None)
    commit_manifest(index_dir, manifest)
    (index_dir / ANN_FILE).unlink(missing_ok=True)
