"""alpha query expansion and database-side augmentation on constructed vectors with known neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.search.rerank import database_augmentation, query_expansion

D = 8


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def e(i: int, scale: float = 1.0) -> np.ndarray:
    v = np.zeros(D)
    v[i] = scale
    return v


def random_unit(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


# A cluster of three images around e0 (the query's true neighbours) and distractors elsewhere.
CLUSTER = unit([e(0) + e(1, 0.5), e(0) + e(2, 0.5), e(0) + e(3, 0.5)])
DISTRACTORS = unit([e(5), e(6), e(7) + e(4, 0.3), -e(0) + e(5, 0.2), e(4) + e(6)])
DATABASE = np.concatenate([DISTRACTORS[:2], CLUSTER, DISTRACTORS[2:]])  # cluster rows 2, 3, 4
QUERY = unit(e(0) + e(4, 0.7) + e(1, 0.2))


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(a) @ unit(b))


def test_n_zero_is_the_identity():
    queries = random_unit(4, seed=1)
    out = query_expansion(queries, DATABASE, n=0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, queries)


def test_query_moves_toward_its_true_neighbours():
    sims = DATABASE @ QUERY
    assert set(np.argsort(-sims)[:3]) == {2, 3, 4}  # the construction: the cluster is the top 3
    centre = CLUSTER.mean(axis=0)
    expanded = query_expansion(QUERY[None], DATABASE, n=3, alpha=3.0)
    assert expanded.shape == (1, D)
    assert np.linalg.norm(expanded[0]) == pytest.approx(1.0, abs=1e-5)
    assert cos(expanded[0], centre) > cos(QUERY, centre) + 0.05
    # exactly the query plus its neighbours weighted by similarity ** alpha, re-normalised
    manual = QUERY + sum(max(float(DATABASE[r] @ QUERY), 0.0) ** 3.0 * DATABASE[r] for r in (2, 3, 4))
    np.testing.assert_allclose(expanded[0], unit(manual), atol=1e-5)
    # a 1-D query works too and gives the same vector
    np.testing.assert_allclose(query_expansion(QUERY, DATABASE, n=3)[0], expanded[0], atol=1e-6)


def test_alpha_weights_the_neighbours():
    # a larger alpha favours the best neighbour more: the expanded query is closer to it
    best = int(np.argmax(DATABASE @ QUERY))
    flat = query_expansion(QUERY, DATABASE, n=3, alpha=0.0)[0]
    sharp = query_expansion(QUERY, DATABASE, n=3, alpha=10.0)[0]
    others = [r for r in (2, 3, 4) if r != best]
    assert cos(sharp, DATABASE[best]) - max(cos(sharp, DATABASE[r]) for r in others) > (
        cos(flat, DATABASE[best]) - max(cos(flat, DATABASE[r]) for r in others)
    )


def test_excluded_rows_are_not_used_for_expansion():
    decoy = unit(QUERY + e(6, 0.3))  # the query's best neighbour (think: the query image itself)
    database = np.concatenate([decoy[None], DATABASE])
    assert int(np.argmax(database @ QUERY)) == 0
    queries = np.stack([QUERY, unit(e(5) + e(6, 0.1))])
    excluded = query_expansion(queries, database, n=3, exclude=[[0], []])
    # query 0 without row 0 is expanded as if that row did not exist
    without = query_expansion(QUERY, database[1:], n=3)[0]
    np.testing.assert_allclose(excluded[0], without, atol=1e-6)
    included = query_expansion(QUERY, database, n=3)[0]
    assert np.abs(included - excluded[0]).max() > 1e-2
    # query 1 excludes nothing: same as expanding it alone
    np.testing.assert_allclose(excluded[1], query_expansion(queries[1], database, n=3)[0], atol=1e-6)


def test_dba_keeps_unit_norms_and_n_zero_is_the_identity():
    db = random_unit(30, 16, seed=2)
    np.testing.assert_array_equal(database_augmentation(db, n=0), db)
    out = database_augmentation(db, n=3)
    assert out.shape == db.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.abs(out - db).max() > 1e-2


def test_dba_brings_near_duplicates_closer():
    rng = np.random.default_rng(3)
    others = random_unit(20, 16, seed=4)
    base = rng.standard_normal(16)
    a = unit(base + 0.6 * rng.standard_normal(16))
    b = unit(base + 0.6 * rng.standard_normal(16))
    db = np.concatenate([others[:7], a[None], others[7:15], b[None], others[15:]])
    ia, ib = 7, 16
    assert set(np.argsort(-(db @ db[ia]))[1:2]) == {ib}  # each is the other's nearest neighbour
    out = database_augmentation(db, n=1, alpha=3.0)
    assert float(out[ia] @ out[ib]) > float(db[ia] @ db[ib]) + 0.02
    # row ia adds its best neighbour other than itself (adding itself would change nothing)
    s = float(db[ia] @ db[ib])
    np.testing.assert_allclose(out[ia], unit(db[ia] + s**3 * db[ib]), atol=1e-5)


def test_blocked_dba_equals_unblocked():
    db = random_unit(23, 16, seed=5)
    np.testing.assert_allclose(
        database_augmentation(db, n=3, block=3), database_augmentation(db, n=3, block=4096), atol=1e-6
    )
    np.testing.assert_allclose(
        database_augmentation(db, n=5, alpha=1.0, block=1),
        database_augmentation(db, n=5, alpha=1.0, block=4096),
        atol=1e-6,
    )
