"""Re-ranking by neighbourhood: alpha query expansion (alpha-QE) and database-side augmentation (DBA).

Both replace a vector by the similarity-weighted mean of itself and its top neighbours
(weights s^alpha), then re-normalise: alpha-QE on the query side at search time, DBA on every
database vector (computed in memory, blocked; meant for collections up to ~100k images).
"""

from __future__ import annotations

import numpy as np

from cbir.embedding.embedder import l2_normalize
from cbir.search.exact import top_k


def _augment(
    vectors: np.ndarray, database: np.ndarray, n: int, alpha: float, exclude: list[list[int]] | None
) -> np.ndarray:
    rows, scores = top_k(database, vectors, n, exclude=exclude)
    weights = np.maximum(scores, 0) ** alpha
    neigh = np.asarray(database[rows.ravel()], dtype=np.float32).reshape(rows.shape + (database.shape[1],))
    return l2_normalize(vectors + np.einsum("qk,qkd->qd", weights, neigh))


def query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    n: int = 5,
    alpha: float = 3.0,
    exclude: list[list[int]] | None = None,
) -> np.ndarray:
    """alpha-QE: add the top ``n`` database neighbours of each query, weighted by similarity^alpha."""
    if n <= 0:
        return np.asarray(queries, dtype=np.float32)
    return _augment(np.atleast_2d(np.asarray(queries, dtype=np.float32)), database, n, alpha, exclude)


def database_augmentation(
    database: np.ndarray, n: int = 5, alpha: float = 3.0, block: int = 4096
) -> np.ndarray:
    """DBA: replace every database vector by the weighted mean of itself and its top ``n`` neighbours."""
    db = np.asarray(database, dtype=np.float32)
    if n <= 0:
        return db
    out = np.empty_like(db)
    for start in range(0, len(db), block):
        q = db[start : start + block]
        own = [[start + i] for i in range(len(q))]
        out[start : start + len(q)] = _augment(q, db, n, alpha, own)
    return out
