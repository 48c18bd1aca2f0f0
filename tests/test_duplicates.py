"""Near-duplicate grouping: the similarity graph, the grouping and keep rules, the filters."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import save_image
from test_ann import CONFIG

from cbir.core.records import Entry
from cbir.duplicates.graph import Edges, similar_pairs
from cbir.duplicates.grouping import components, group_connected, group_star
from cbir.duplicates.keep import KEEP_RULES, RowFacts
from cbir.search.exact import ExactSearcher
from cbir.search.filters import FilteredSearcher, ResultFilter
from cbir.service.duplicates import DuplicateOptions, find_duplicates
from cbir.stores.folder.snapshot import open_index
from cbir.stores.folder.writer import FolderWriter


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def families(n_families: int, sizes: list[int], noise: float, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Rows in families: each a random direction plus a little noise per member."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_families):
        centre = rng.standard_normal(dim)
        rows += [centre + noise * rng.standard_normal(dim) for _ in range(sizes[f % len(sizes)])]
    return unit(np.array(rows))


def brute_pairs(feats: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = feats @ feats.T
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    return set(zip(a.tolist(), b.tolist()))


def test_the_graph_holds_every_pair_above_the_threshold_even_in_a_large_group():
    feats = families(12, [1, 2, 3], noise=0.15)
    big = unit(feats[0] + 0.01 * np.random.default_rng(1).standard_normal((40, feats.shape[1])))
    feats = np.vstack([feats, big])  # 41 near-copies of one picture: more than FIRST_K neighbours
    searcher = ExactSearcher(feats)
    edges = similar_pairs(searcher, np.arange(len(feats)), 0.9, first_k=4, batch=7)
    found = set(zip(edges.a.tolist(), edges.b.tolist()))
    assert found == brute_pairs(feats, 0.9)
    assert len(found) >= 41 * 40 // 2
    assert np.allclose(edges.score, np.sum(feats[edges.a] * feats[edges.b], axis=1), atol=1e-5)
    assert len(edges.above(0.99)) < len(edges) and (edges.above(0.99).score >= 0.99).all()


def test_the_graph_over_a_filter_only_pairs_allowed_rows():
    feats = families(6, [3], noise=0.1)
    allowed = np.zeros(len(feats), dtype=bool)
    allowed[::2] = True
    edges = similar_pairs(FilteredSearcher(ExactSearcher(feats), allowed), np.flatnonzero(allowed), 0.8)
    expected = {(a, b) for a, b in brute_pairs(feats, 0.8) if allowed[a] and allowed[b]}
    assert set(zip(edges.a.tolist(), edges.b.tolist())) == expected and expected


def chain() -> tuple[Edges, np.ndarray]:
    """A~B and B~C above 0.9, A~C below it: a chain."""
    angle = np.deg2rad(20)  # cos 20 = 0.94, cos 40 = 0.77
    feats = unit(
        np.array([[1, 0, 0], [np.cos(angle), np.sin(angle), 0], [np.cos(2 * angle), np.sin(2 * angle), 0]])
    )
    return similar_pairs(ExactSearcher(feats), np.arange(3), 0.9), feats


def by_row(rows):
    return sorted(rows)


def test_connected_components_chain_and_star_groups_do_not():
    edges, feats = chain()
    assert len(edges) == 2 and components(edges) == [[0, 1, 2]]

    def score(rep, rows):
        return feats[list(rows)] @ feats[rep]

    (group,) = group_connected(edges, by_row, score)
    assert group.representative == 0 and [r for r, _ in group.members] == [1, 2]
    assert group.members[1][1] == pytest.approx(np.cos(np.deg2rad(40)), abs=1e-5)  # the chained member
    star = group_star(edges, by_row, score)
    assert [(g.representative, [r for r, _ in g.members]) for g in star] == [
        (0, [1])
    ]  # C matches no one left
    assert all(s >= 0.9 for g in star for _, s in g.members)
    star_mid = group_star(edges, lambda rows: sorted(rows, key=lambda r: r != 1), score)
    assert [(g.representative, [r for r, _ in g.members]) for g in star_mid] == [(1, [0, 2])]


def entries(sizes, taken, mtimes=None):
    return [
        Entry(f"{i}.jpg", size, (mtimes or [1] * len(sizes))[i], taken[i]) for i, size in enumerate(sizes)
    ]


def test_keep_rules_pixels_then_bytes_then_path_and_capture_times(tmp_path):
    for i, (w, h) in enumerate([(40, 30), (80, 60), (80, 60), (60, 80)]):
        save_image(tmp_path / f"{i}.jpg", seed=i, width=w, height=h)
    facts = RowFacts(tmp_path, entries([500, 100, 900, 900], [None] * 4))
    assert KEEP_RULES["largest"](facts, [0, 1, 2, 3]) == [2, 3, 1, 0]  # 4800 px: the larger file, then path
    (tmp_path / "3.jpg").unlink()  # gone since indexing: 0 pixels, kept last
    assert KEEP_RULES["largest"](RowFacts(tmp_path, facts.entries), [3, 0]) == [0, 3]
    dated = RowFacts(
        tmp_path,
        entries(
            [1] * 4, ["2020-01-01T00:00:00", None, "2019-05-01T00:00:00", "2020-01-01T00:00:00"], [5, 1, 1, 2]
        ),
    )
    assert KEEP_RULES["oldest"](dated, [0, 1, 2, 3]) == [2, 3, 0, 1]  # unknown times last
    assert KEEP_RULES["newest"](dated, [0, 1, 2, 3]) == [0, 3, 2, 1]


def index_of(tmp_path, feats, taken=None, ann_mode="none"):
    root = tmp_path / "data"
    with FolderWriter(root / ".cbir", CONFIG) as w:
        w.set_dim(feats.shape[1])
        w.put(
            [Entry(f"{'ab'[i % 2]}/{i:03d}.jpg", 10 + i, 1, (taken or {}).get(i)) for i in range(len(feats))],
            feats,
        )
        w.commit()
        w.finish(ann_mode)
    return open_index(root)


def test_find_duplicates_groups_families_and_honours_the_filters(tmp_path):
    feats = families(8, [1, 3], noise=0.05)  # families of 1 and 3 rows, alternating
    taken = {i: f"2020-01-{1 + i % 5:02d}T10:00:00" for i in range(len(feats))}
    index = index_of(tmp_path, feats, taken)
    report = find_duplicates(index, DuplicateOptions(threshold=0.9, verify="none"), progress=False)
    assert report.images == len(feats) and len(report.groups) == 4
    for g in report.groups:  # the largest file of each family (files grow with the row) is kept
        rows = sorted(int(p[-7:-4]) for p in [g.representative, *(m.path for m in g.members)])
        assert g.representative.endswith(f"{rows[-1]:03d}.jpg") and rows == list(range(rows[0], rows[0] + 3))
        assert all(m.score >= 0.9 for m in g.members)
    doc = report.to_dict()
    assert set(doc["groups"][0]) == {"representative", "members", "paths"} and doc["redundant"] == 8
    under = find_duplicates(
        index, DuplicateOptions(0.9, verify="none", where=ResultFilter(under=("a",))), progress=False
    )
    assert under.images == len(feats) // 2
    assert all("/a/" in p for g in under.groups for p in [g.representative, *(m.path for m in g.members)])
    dated = find_duplicates(
        index,
        DuplicateOptions(0.9, verify="none", where=ResultFilter(since="2020-01-04")),
        progress=False,
    )
    assert dated.images == sum(t >= "2020-01-04" for t in taken.values())


def test_the_command_line_and_the_web_api_share_one_shape_of_duplicate_groups(tmp_path):
    from pathlib import Path

    from cbir.web.duplicates import duplicate_groups_of

    index = index_of(tmp_path, families(6, [1, 3], noise=0.05), {})
    report = find_duplicates(index, DuplicateOptions(threshold=0.93, verify="orb"), progress=False)
    cli, web = report.to_dict(), duplicate_groups_of(index, None)
    assert set(cli) == set(web) and len(cli["groups"]) == len(web["groups"]) > 0
    root = Path(report.dataset)
    for mine, theirs in zip(cli["groups"], web["groups"]):
        assert set(mine) == {"representative", "members", "paths"}
        assert set(theirs) == {*mine, "sizes", "keep"} and theirs["keep"] == theirs["representative"]
        assert [str(root / p) for p in theirs["paths"]] == mine["paths"]  # the same images, named relatively
        assert [m["score"] for m in theirs["members"]] == [m["score"] for m in mine["members"]]
        assert mine["paths"] == [mine["representative"], *(m["path"] for m in mine["members"])]
    none = find_duplicates(index, DuplicateOptions(threshold=0.9999, verify="none"), progress=False)
    assert none.groups == [] and none.pairs == 0


def test_options_refuse_unknown_rules():
    with pytest.raises(ValueError, match="grouping"):
        DuplicateOptions(grouping="cliques")
    with pytest.raises(ValueError, match="keep"):
        DuplicateOptions(keep="smallest")


def test_a_large_index_without_an_approximate_index_gets_a_temporary_one(tmp_path, monkeypatch, caplog):
    from cbir.service import duplicates as find

    feats = families(30, [1, 2, 4], noise=0.05, dim=48)
    index = index_of(tmp_path, feats)
    exact = find_duplicates(index, DuplicateOptions(threshold=0.9, verify="none", exact=True), progress=False)
    monkeypatch.setattr(find, "GRAPH_ANN_MIN_ROWS", 10)
    with caplog.at_level("INFO", logger="cbir.service.duplicates"):
        approx = find_duplicates(index, DuplicateOptions(threshold=0.9, verify="none"), progress=False)
    assert "temporary approximate index" in caplog.text
    assert len(exact.groups) == 20 and len(approx.groups) == 20 and approx.pairs == exact.pairs
    for a, e in zip(approx.groups, exact.groups):  # the same groups; scores equal up to float rounding
        assert a.representative == e.representative and [m.path for m in a.members] == [
            m.path for m in e.members
        ]
        assert [m.score for m in a.members] == pytest.approx([m.score for m in e.members], abs=1e-5)


def test_the_graph_searches_the_stored_index_with_its_own_effort_leaving_the_querys(tmp_path, monkeypatch):
    import faiss

    from cbir.search.approximate import ApproximateSearcher
    from cbir.service import duplicates as find

    feats = families(30, [1, 2, 4], noise=0.05, dim=48)
    index = index_of(tmp_path, feats, ann_mode="hnsw")
    query_searcher = index.searcher()
    assert isinstance(query_searcher, ApproximateSearcher)
    hnsw = faiss.downcast_index(query_searcher.index).hnsw
    asked: list[int] = []
    real = ApproximateSearcher.search

    def spy(self, queries, k, exclude=None):
        asked.append(-1 if self.params is None else self.params.efSearch)
        return real(self, queries, k, exclude)

    monkeypatch.setattr(ApproximateSearcher, "search", spy)
    exact = find_duplicates(index, DuplicateOptions(threshold=0.9, verify="none", exact=True), progress=False)
    before = hnsw.efSearch
    graph = find_duplicates(index, DuplicateOptions(threshold=0.9, verify="none"), progress=False)
    assert asked and set(asked) == {find.GRAPH_EF_SEARCH} != {before}
    assert hnsw.efSearch == before and query_searcher.params is None  # the query's effort is untouched
    assert [g.representative for g in graph.groups] == [g.representative for g in exact.groups]
