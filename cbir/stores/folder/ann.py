"""The approximate index of large collections: a faiss graph (HNSW) file beside the feature matrix.

Exact search reads every feature once per query (1M x 2048 float32 = 8 GB: half a second at best,
from the page cache), so from :data:`AUTO_MIN_ROWS` rows the indexer also builds an approximate
index, ``ann-*.faiss``, and queries use it (``cbir.search.approximate``). The default kind is HNSW
(32 links per node) over 8-bit scalar-quantised vectors (a quarter of the float32 size); its
candidates are re-ranked with exact dot products read from the memory-mapped matrix, so returned
scores are the exact ones and only the candidate list is approximate. Chosen by measurement
(benchmarks/bench_search.py, 100k clustered 2048-d vectors, 2 cores): HNSW reached recall@10 0.974
at 1.0 ms per query (0.988 at 1.8 ms) where IVF on SQ8 codes needed 6.5 ms for 0.966 and 11 ms for
0.988; build times were equal (~1 min).

Kinds (:data:`ANN_KINDS`): ``hnsw`` (the default), ``ivfsq8`` (IVF lists of SQ8 codes), ``ivfpq`` (IVF
lists of PQ codes, 1 byte per 8 dimensions: the smallest file, slow to train), ``ivfflat`` (IVF lists
of float32 vectors: as big as ``feats.npy``). All are inner-product indexes, re-ranked exactly.

Freshness: the manifest's :class:`~cbir.stores.manifest.AnnRecord` records the manifest
``generation``, row count and dimension the file was built from. The indexer gives the manifest a
new generation whenever it rewrites the matrix, so an ANN whose generation or row count differs, or
an index with dead rows, is stale: the indexer rebuilds it at the end of a run; a query ignores it
(with a warning) and searches exactly. Each build gets a new file name, written whole before the
manifest names it. faiss is imported only when an ANN is built or used.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from cbir.core.types import FaissIndex, JSONDict, Param
from cbir.stores.folder.files import write_atomic
from cbir.stores.manifest import AnnRecord, Manifest

log = logging.getLogger(__name__)

# Below this many rows exact search stays interactive and exact (a memory-bound scan: ~50 ms per 100k
# float32 2048-d rows on 2 cores) while an HNSW build costs minutes (~1 min per 100k rows); above it
# exact search grows towards seconds per query (10x more for float16 storage) and the ANN pays off.
AUTO_MIN_ROWS = 200_000
DEFAULT_KIND = "hnsw"
ANN_KINDS = ("hnsw", "ivfsq8", "ivfpq", "ivfflat")
ANN_MODES = ("auto", "none", *ANN_KINDS)
TRAIN_ROWS = 200_000  # at most this many rows (a random sample) train the quantisers
ADD_BLOCK = 65_536  # rows converted to float32 and added per call (bounded memory for float16 / mmap)


def _faiss() -> FaissIndex:
    import faiss

    return faiss


def default_params(kind: str, rows: int, dim: int) -> JSONDict:
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
        params: JSONDict = {
            "nlist": nlist,
            "nprobe": nprobe,
            "candidates": 0 if kind == "ivfflat" else 64,
        }
        if kind == "ivfpq":
            params["m"] = _pq_subquantizers(dim)
        return params
    raise ValueError(f"unknown approximate index kind {kind!r} (one of {', '.join(ANN_KINDS)})")


def _pq_subquantizers(dim: int) -> int:
    """The number of PQ sub-vectors: about 8 dimensions each (one byte per 8 floats), dividing ``dim``."""
    for sub in (8, 4, 2, 1, 16, 32):
        if dim % sub == 0:
            return dim // sub
    return dim


def factory_string(kind: str, params: JSONDict) -> str:
    """The faiss ``index_factory`` description of ``kind``."""
    if kind == "hnsw":
        return f"HNSW{int(params['M'])},SQ8"
    if kind == "ivfsq8":
        return f"IVF{int(params['nlist'])},SQ8"
    if kind == "ivfpq":
        return f"IVF{int(params['nlist'])},PQ{int(params['m'])}np"  # np: no (slow) polysemous training
    if kind == "ivfflat":
        return f"IVF{int(params['nlist'])},Flat"
    raise ValueError(f"unknown approximate index kind {kind!r} (one of {', '.join(ANN_KINDS)})")


def _sample(feats: np.ndarray, n: int, seed: int) -> np.ndarray:
    rows = feats.shape[0]
    if rows <= n:
        return np.ascontiguousarray(feats, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    return np.ascontiguousarray(feats[pick], dtype=np.float32)


def build_ann(feats: np.ndarray, kind: str = DEFAULT_KIND, seed: int = 1234, **params: Param) -> FaissIndex:
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


def set_search_params(index: FaissIndex, kind: str, params: JSONDict) -> None:
    """Apply the search-time parameter of ``kind`` (efSearch or nprobe) to a built or loaded index."""
    faiss = _faiss()
    space = faiss.ParameterSpace()
    if kind == "hnsw" and "efSearch" in params:
        space.set_index_parameter(index, "efSearch", int(params["efSearch"]))
    elif "nprobe" in params and kind != "hnsw":
        space.set_index_parameter(index, "nprobe", int(params["nprobe"]))


def effort(index: FaissIndex, ef_search: int) -> object:
    """Per-call search parameters asking an HNSW ``index`` for ``ef_search`` (None for other kinds,
    which keep their own)."""
    faiss = _faiss()
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search)
        return params
    return None


def save_ann(index: FaissIndex, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to ``path`` atomically (streamed through the index folder's write helper)."""
    faiss = _faiss()
    write_atomic(Path(path), lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))


def load_ann(path: str | os.PathLike[str], mmap: bool = True) -> FaissIndex:
    """Read an index written by :func:`save_ann`; with ``mmap`` its arrays (codes, graph, lists) are
    mapped from the file instead of copied into memory: opening a 1M-row index takes milliseconds,
    not seconds, and uses no memory of its own. The index must then not be modified."""
    faiss = _faiss()
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)


def is_fresh(record: AnnRecord | None, manifest: Manifest) -> bool:
    """True when ``record`` describes an ANN built from exactly the committed feature rows."""
    return (
        record is not None
        and record.generation == manifest.generation
        and record.rows == len(manifest.entries)
        and record.dim == manifest.dim
        and all(e is not None for e in manifest.entries)
    )


def wanted_kind(mode: str, rows: int, record: AnnRecord | None, fresh: bool) -> str | None:
    """The kind of ANN an index of ``rows`` rows should have under ``mode``, or None for none.

    ``auto``: one from :data:`AUTO_MIN_ROWS` rows (keeping the kind of an existing one), or a fresh
    one kept below it; ``none``: none; a kind name: that kind, whatever the size.
    """
    if mode not in ANN_MODES:
        raise ValueError(f"ann must be one of {', '.join(ANN_MODES)}")
    if mode == "none" or rows == 0:
        return None
    if mode == "auto":
        if rows < AUTO_MIN_ROWS and not fresh:
            return None
        return record.kind if record is not None and record.kind in ANN_KINDS else DEFAULT_KIND
    return mode


def build_file(
    index_dir: Path, manifest: Manifest, feats: np.ndarray, kind: str, **params: Param
) -> AnnRecord:
    """Build an ANN of ``kind`` over ``feats`` (the committed rows), write it, and describe it."""
    t0 = time.perf_counter()
    full = {**default_params(kind, feats.shape[0], feats.shape[1]), **params}
    log.info("building the approximate index (%s, %s) over %d rows", kind, full, feats.shape[0])
    index = build_ann(feats, kind, **full)
    name = f"ann-{manifest.generation[:12]}-{kind}.faiss"
    save_ann(index, index_dir / name)
    seconds = time.perf_counter() - t0
    log.info("built the approximate index (%s) in %.1fs", kind, seconds)
    return AnnRecord(
        file=name,
        kind=kind,
        params={k: float(v) for k, v in full.items()},
        generation=manifest.generation,
        rows=int(feats.shape[0]),
        dim=int(feats.shape[1]),
        dtype=manifest.dtype,
        seconds=round(seconds, 2),
        built=time.time(),
    )


def open_file(index_dir: Path, manifest: Manifest) -> tuple[FaissIndex, AnnRecord] | None:
    """The fresh ANN of a committed manifest, loaded (memory-mapped), or None.

    A stale or unreadable one is logged and ignored: the caller searches exactly.
    """
    record = manifest.ann
    if record is None:
        return None
    if not is_fresh(record, manifest):
        log.warning(
            "the approximate index in %s is out of date (the features changed since it was built); "
            "searching exactly. Run `cbir index` to rebuild it",
            index_dir,
        )
        return None
    path = index_dir / record.file
    try:
        index = load_ann(path)
        if int(index.ntotal) != record.rows or int(index.d) != manifest.dim:
            raise ValueError("it does not match the manifest")
        set_search_params(index, record.kind, record.params)
    except (RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.warning("cannot use the approximate index %s (%s); searching exactly", path, reason)
        return None
    return index, record
