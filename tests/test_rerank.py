"""alpha query expansion and database-side augmentation on constructed vectors with known neighbours,
and re-ranking any searcher (cbir.search.rerank)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cbir.search.exact import ExactSearcher, top_k
from cbir.search.rerank import (
    QueryExpandingSearcher,
    Reranking,
    database_augmentation,
    query_expansion,
    rerank,
)

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


def over(database: np.ndarray) -> ExactSearcher:
    return ExactSearcher(database)


def test_n_zero_is_the_identity():
    queries = random_unit(4, seed=1)
    out = query_expansion(queries, over(DATABASE), n=0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, queries)


def test_query_moves_toward_its_true_neighbours():
    sims = DATABASE @ QUERY
    assert set(np.argsort(-sims)[:3]) == {2, 3, 4}  # the construction: the cluster is the top 3
    centre = CLUSTER.mean(axis=0)
    expanded = query_expansion(QUERY[None], over(DATABASE), n=3, alpha=3.0)
    assert expanded.shape == (1, D)
    assert np.linalg.norm(expanded[0]) == pytest.approx(1.0, abs=1e-5)
    assert cos(expanded[0], centre) > cos(QUERY, centre) + 0.05
    # exactly the query plus its neighbours weighted by similarity ** alpha, re-normalised
    manual = QUERY + sum(max(float(DATABASE[r] @ QUERY), 0.0) ** 3.0 * DATABASE[r] for r in (2, 3, 4))
    np.testing.assert_allclose(expanded[0], unit(manual), atol=1e-5)
    # a 1-D query works too and gives the same vector
    np.testing.assert_allclose(query_expansion(QUERY, over(DATABASE), n=3)[0], expanded[0], atol=1e-6)


def test_alpha_weights_the_neighbours():
    # a larger alpha favours the best neighbour more: the expanded query is closer to it
    best = int(np.argmax(DATABASE @ QUERY))
    flat = query_expansion(QUERY, over(DATABASE), n=3, alpha=0.0)[0]
    sharp = query_expansion(QUERY, over(DATABASE), n=3, alpha=10.0)[0]
    others = [r for r in (2, 3, 4) if r != best]
    assert cos(sharp, DATABASE[best]) - max(cos(sharp, DATABASE[r]) for r in others) > (
        cos(flat, DATABASE[best]) - max(cos(flat, DATABASE[r]) for r in others)
    )


def test_excluded_rows_are_not_used_for_expansion():
    decoy = unit(QUERY + e(6, 0.3))  # the query's best neighbour (think: the query image itself)
    database = np.concatenate([decoy[None], DATABASE])
    assert int(np.argmax(database @ QUERY)) == 0
    queries = np.stack([QUERY, unit(e(5) + e(6, 0.1))])
    excluded = query_expansion(queries, over(database), n=3, exclude=[[0], []])
    # query 0 without row 0 is expanded as if that row did not exist
    without = query_expansion(QUERY, over(database[1:]), n=3)[0]
    np.testing.assert_allclose(excluded[0], without, atol=1e-6)
    included = query_expansion(QUERY, over(database), n=3)[0]
    assert np.abs(included - excluded[0]).max() > 1e-2
    # query 1 excludes nothing: same as expanding it alone
    np.testing.assert_allclose(excluded[1], query_expansion(queries[1], over(database), n=3)[0], atol=1e-6)


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


class CountingSearcher(ExactSearcher):
    """An exact searcher that records its calls (stands in for an approximate index)."""

    def __init__(self, feats: np.ndarray) -> None:
        super().__init__(feats)
        self.calls: list[tuple[int, object]] = []
        self.read: list[list[int]] = []

    def search(self, queries, k, exclude=None):
        self.calls.append((k, exclude))
        return super().search(queries, k, exclude)

    def vectors(self, rows):
        self.read.append(np.asarray(rows).tolist())
        return super().vectors(rows)


def test_reranking_value():
    assert not Reranking().active and Reranking() == Reranking(0, 0, 3.0)
    assert Reranking(qe=2).active and Reranking(dba=1).active and not Reranking(qe=0, alpha=1.0).active
    with pytest.raises(dataclasses.FrozenInstanceError):
        Reranking().qe = 3  # type: ignore[misc]


def test_no_reranking_is_the_searcher_itself():
    base = over(DATABASE)
    assert rerank(base, Reranking()) is base


def test_query_expansion_goes_through_the_given_searcher():
    # with an approximate index, QE finds its neighbours there and reads their vectors from it
    base = CountingSearcher(DATABASE)
    searcher = rerank(base, Reranking(qe=3, alpha=3.0))
    assert isinstance(searcher, QueryExpandingSearcher)
    assert len(searcher) == len(DATABASE) and searcher.dim == D
    rows, scores = searcher.search(QUERY, 4, exclude=[[2]])
    assert base.calls == [(3, [[2]]), (4, [[2]])]  # expansion and final search exclude the same rows
    assert base.read == [top_k(DATABASE, QUERY, 3, exclude=[[2]])[0].ravel().tolist()]
    expanded = query_expansion(QUERY, over(DATABASE), n=3, alpha=3.0, exclude=[[2]])
    ref_rows, ref_scores = top_k(DATABASE, expanded, 4, exclude=[[2]])
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    assert 2 not in rows[0]
    np.testing.assert_array_equal(searcher.vectors(np.array([4])), DATABASE[[4]])


def test_dba_makes_an_exact_searcher_over_the_augmented_rows():
    db = random_unit(23, 16, seed=6)
    base = CountingSearcher(db.astype(np.float16))
    searcher = rerank(base, Reranking(dba=3, alpha=2.0))
    assert isinstance(searcher, ExactSearcher) and base.calls == []  # the approximate index is left
    augmented = database_augmentation(db.astype(np.float16).astype(np.float32), n=3, alpha=2.0)
    np.testing.assert_array_equal(searcher.vectors(np.arange(23)), augmented)
    both = rerank(base, Reranking(qe=2, dba=3, alpha=2.0))
    assert isinstance(both, QueryExpandingSearcher) and isinstance(both.base, ExactSearcher)
    expanded = query_expansion(augmented[:2], ExactSearcher(augmented), n=2, alpha=2.0, exclude=[[0], [1]])
    rows, _ = both.search(augmented[:2], 5, exclude=[[0], [1]])
    np.testing.assert_array_equal(rows, top_k(augmented, expanded, 5, exclude=[[0], [1]])[0])


def test_a_threshold_expands_by_the_true_neighbours_only():
    """With a threshold between the cluster (0.72-0.80) and the rest (<= 0.40), a generous n adds the
    cluster and nothing else: n becomes an upper bound, adapted to how many true neighbours exist."""
    adaptive = query_expansion(QUERY, over(DATABASE), n=8, threshold=0.6)[0]
    np.testing.assert_allclose(adaptive, query_expansion(QUERY, over(DATABASE), n=3)[0], atol=1e-6)
    assert np.abs(query_expansion(QUERY, over(DATABASE), n=8)[0] - adaptive).max() > 1e-3  # without it
    # a query without any neighbour that close is left as it is
    alone = query_expansion(QUERY, over(DATABASE), n=8, threshold=0.9)[0]
    np.testing.assert_allclose(alone, QUERY, atol=1e-6)


def test_thresholded_dba_leaves_rows_without_close_neighbours_alone():
    out = database_augmentation(DATABASE, n=5, threshold=0.75)
    for row in (0, 1, 5, 6, 7):  # no other row is 0.75 similar to these
        np.testing.assert_allclose(out[row], DATABASE[row], atol=1e-6)
    cluster = [2, 3, 4]  # each has two cluster neighbours at 0.8: the mean of the three, weighted
    for row in cluster:
        others = [r for r in cluster if r != row]
        manual = DATABASE[row] + sum(float(DATABASE[r] @ DATABASE[row]) ** 3 * DATABASE[r] for r in others)
        np.testing.assert_allclose(out[row], unit(manual), atol=1e-5)


def test_rerank_passes_the_threshold_to_both():
    searcher = rerank(over(DATABASE), Reranking(qe=8, dba=5, threshold=0.75))
    augmented = database_augmentation(DATABASE, n=5, threshold=0.75)
    expected = query_expansion(QUERY, over(augmented), n=8, threshold=0.75)
    rows, _ = searcher.search(QUERY[None], 4)
    np.testing.assert_array_equal(rows, over(augmented).search(expected, 4)[0])


def test_mutual_neighbours_keep_a_small_group_and_drop_the_hubs():
    """Two views of one scene (a, b) and a tight category cluster of five images that the query also
    resembles: fixed top-3 QE drags the query into the cluster; with mutual=2 only b is used (the
    cluster members have each other as nearest neighbours, not the query)."""

    def v(*pairs: tuple[int, float]) -> np.ndarray:
        x = np.zeros(16)
        for i, w in pairs:
            x[i] = w
        return unit(x)

    a = v((0, 1.0), (1, 0.9))  # scene 0, category 1
    b = v((0, 1.0), (1, 0.9), (2, 0.3))  # another view of the same scene
    cluster = np.stack([v((1, 1.0), (3 + i, 0.3)) for i in range(5)])  # the category, 0.92 to each other
    others = np.stack([v((8 + i, 1.0), (1, 0.2)) for i in range(6)])
    db = np.concatenate([b[None], cluster, others])
    s = db @ a
    assert np.argmax(s) == 0 and set(np.argsort(-s)[1:3]) <= set(range(1, 6))  # b, then the cluster
    mutual = query_expansion(a, over(db), n=3, mutual=2)[0]
    np.testing.assert_allclose(mutual, query_expansion(a, over(db), n=1)[0], atol=1e-6)  # b alone
    fixed = query_expansion(a, over(db), n=3)[0]
    assert cos(mutual, b) > cos(fixed, b) and cos(fixed, cluster.mean(0)) > cos(mutual, cluster.mean(0))


def test_mutual_dba_and_the_searcher_agree_with_the_functions():
    db = random_unit(40, 16, seed=9)
    out = database_augmentation(db, n=5, mutual=2)
    # a row whose nearest neighbours all prefer others stays as it is; one in a mutual pair moves
    s = db @ db.T
    np.fill_diagonal(s, -np.inf)
    second = -np.sort(-s, axis=1)[:, 1]
    for row in range(len(db)):
        partners = [j for j in np.argsort(-s[row])[:5] if s[row, j] >= second[j] - 1e-6]
        manual = db[row] + sum(max(s[row, j], 0) ** 3 * db[j] for j in partners)
        np.testing.assert_allclose(out[row], unit(manual), atol=1e-5)
    searcher = rerank(over(db), Reranking(qe=5, mutual=2))
    q = random_unit(3, 16, seed=10)
    np.testing.assert_array_equal(
        searcher.search(q, 6)[0], over(db).search(query_expansion(q, over(db), n=5, mutual=2), 6)[0]
    )


def test_the_command_line_default_is_adaptive_query_expansion():
    from cbir.cli.options import build_legacy_parser, build_parser
    from cbir.cli.rerank import reranking_from
    from cbir.search.rerank import DEFAULT_RERANKING

    parse = build_parser().parse_args
    assert reranking_from(parse(["query", "d", "q.jpg"])) == DEFAULT_RERANKING == Reranking(qe=10, mutual=2)
    assert reranking_from(parse(["evaluate", "d"])) == DEFAULT_RERANKING
    legacy = build_legacy_parser().parse_args(["-dataset", "d", "-img_query", "q.jpg"])
    assert reranking_from(legacy) == DEFAULT_RERANKING
    assert not reranking_from(parse(["evaluate", "d", "--qe", "0"])).active  # off
    fixed = reranking_from(parse(["query", "d", "--qe", "5", "--mutual", "0", "--rerank-threshold", "0.8"]))
    assert fixed == Reranking(qe=5, mutual=0, threshold=0.8)
