"""Evaluation on synthetic features whose rankings are known."""

import json
from pathlib import Path

import numpy as np
import pytest

import cbir.service.evaluate as ev
from cbir.core.errors import DatasetError, IndexFolderError
from cbir.evaluation.groundtruth import GroundTruth, LabelRelevance
from cbir.search.exact import ExactSearcher
from cbir.search.rerank import Reranking, database_augmentation, query_expansion, rerank
from cbir.service.evaluate import evaluate, evaluate_index


def labelled(labels: dict[str, str], kind: str = "labels", **kw) -> GroundTruth:
    queries = list(labels)
    return GroundTruth(queries, LabelRelevance(labels, queries), dict(labels), kind, **kw)


def unit(angles_deg) -> np.ndarray:
    a = np.radians(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def clusters(n_classes=3, per_class=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[:n_classes]
    feats = np.repeat(centres, per_class, axis=0) + 0.01 * rng.standard_normal((n_classes * per_class, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    paths = [f"img{i:03d}.jpg" for i in range(len(feats))]
    labels = {p: str(i // per_class) for i, p in enumerate(paths)}
    return feats.astype(np.float32), paths, labels


# Four 2-D unit vectors at 0, 100, 30 and 130 degrees; classes A = rows {0, 1}, B = rows {2, 3}.
# score = cos(angle difference). Rankings with the query excluded:
#   q0 (0):   r2 .87, r1 -.17, r3 -.64 -> relevant r1 at rank 2 -> AP 1/2
#   q1 (100): r3 .87, r2 .34, r0 -.17  -> relevant r0 at rank 3 -> AP 1/3
#   q2 (30):  r0 .87, r1 .34, r3 -.17  -> relevant r3 at rank 3 -> AP 1/3
#   q3 (130): r1 .87, r2 -.17, r0 -.64 -> relevant r2 at rank 2 -> AP 1/2
# mAP = (1/2 + 1/3 + 1/3 + 1/2) / 4 = 5/12
# P@1 = 0 (no top hit is relevant); P@2 = (1/2 + 0 + 0 + 1/2) / 4 = 1/4; R@2 = (1 + 0 + 0 + 1) / 4 = 1/2
HAND_FEATS = unit([0, 100, 30, 130])
HAND_PATHS = ["a0.jpg", "a1.jpg", "b0.jpg", "b1.jpg"]
HAND_LABELS = {"a0.jpg": "A", "a1.jpg": "A", "b0.jpg": "B", "b1.jpg": "B"}


def test_hand_computed_case():
    report = evaluate(HAND_FEATS, HAND_PATHS, labelled(HAND_LABELS), ks=(1, 2, 3))
    assert report.map == pytest.approx(5 / 12)
    expected = {"a0.jpg": 1 / 2, "a1.jpg": 1 / 3, "b0.jpg": 1 / 3, "b1.jpg": 1 / 2}
    assert report.per_query == pytest.approx(expected)
    assert report.precision[1] == pytest.approx(0.0)
    assert report.precision[2] == pytest.approx(0.25)
    assert report.recall[2] == pytest.approx(0.5)
    assert report.recall[3] == pytest.approx(1.0)  # 3 other images: everything is retrieved by rank 3
    assert report.ns_score is None
    # per class: A = (1/2 + 1/3) / 2, B = (1/3 + 1/2) / 2
    assert [(r.label, r.n_queries) for r in report.per_class] == [("A", 2), ("B", 2)]
    assert report.per_class[0].map == pytest.approx(5 / 12)
    assert report.per_class[0].p_at_10 is None  # only 3 ranked images


def test_query_is_excluded_from_its_own_ranking():
    # If the query ranked itself first (score 1), q0's AP would be computed over [self, r2, r1, r3];
    # excluded, the result is the 5/12 above. Also check explicit gt.json relevance gives the same.
    gt = GroundTruth(
        queries=HAND_PATHS,
        relevant={"a0.jpg": {"a1.jpg"}, "a1.jpg": {"a0.jpg"}, "b0.jpg": {"b1.jpg"}, "b1.jpg": {"b0.jpg"}},
        labels=None,
        kind="gt.json",
    )
    report = evaluate(HAND_FEATS, HAND_PATHS, gt, ks=(1,))
    assert report.map == pytest.approx(5 / 12)
    assert report.precision[1] == pytest.approx(0.0)
    assert report.per_class == []


def test_perfect_clusters_score_one_in_any_block_size(monkeypatch):
    feats, paths, labels = clusters()
    gt = labelled(labels)
    full = evaluate(feats, paths, gt, ks=(1, 4, 10))
    assert full.map == pytest.approx(1.0)
    assert full.precision[1] == pytest.approx(1.0) and full.precision[4] == pytest.approx(1.0)
    # 4 relevant per query: P@10 = 4/10, R@4 = R@10 = 1
    assert full.precision[10] == pytest.approx(0.4)
    assert full.recall[4] == pytest.approx(1.0)
    assert all(r.p_at_10 == pytest.approx(0.4) for r in full.per_class)
    small = evaluate(feats, paths, gt, ks=(1, 4, 10), block=2)
    monkeypatch.setattr(ev, "MAX_BLOCK_ELEMENTS", 1)  # forces one query per block
    tiny = evaluate(feats.astype(np.float16), paths, gt, ks=(1, 4, 10))
    for other in (small, tiny):
        assert other.per_query == pytest.approx(full.per_query)
        assert other.precision == pytest.approx(full.precision)


def test_shuffled_features_score_below_one():
    feats, paths, labels = clusters()
    rng = np.random.default_rng(1)
    report = evaluate(feats[rng.permutation(len(feats))], paths, labelled(labels))
    assert report.map < 0.9


def test_ukbench_ns_score_counts_the_query_itself():
    # Groups of 4: rows 0-3 all along e1 (perfect); rows 4,5 along e2 and rows 6,7 along e3.
    feats = np.array([[1, 0, 0]] * 4 + [[0, 1, 0]] * 2 + [[0, 0, 1]] * 2, dtype=np.float32)
    paths = [f"ukbench{i:05d}.jpg" for i in range(8)]
    gt = labelled({p: str(i // 4) for i, p in enumerate(paths)}, kind="ukbench", ukbench=True)
    report = evaluate(feats, paths, gt, ks=(1,))
    # N-S, self included: group 0 queries get all 4; a group 1 query gets itself and its twin, then
    # the score-0 ties go to the lowest rows (0, 1): 2. N-S = (4 * 4 + 4 * 2) / 8 = 3.
    assert report.ns_score == pytest.approx(3.0)
    # AP excludes the query: group 1 query 4 ranks r5 (relevant), r0-r3, then r6, r7 -> ranks 1, 6, 7
    # of 3 relevant: AP = (1/1 + 2/6 + 3/7) / 3; group 0 queries AP 1.
    ap1 = (1 + 2 / 6 + 3 / 7) / 3
    assert report.per_query["ukbench00004.jpg"] == pytest.approx(ap1)
    assert report.map == pytest.approx((4 * 1.0 + 4 * ap1) / 8)
    assert report.to_dict()["ns_score"] == pytest.approx(3.0)
    assert "N-S score" in report.format_table()


def test_searcher_replaces_the_exact_scan():
    feats, paths, labels = clusters()
    calls = []

    class WorstFirst(ExactSearcher):
        def search(self, queries, k, exclude=None):
            calls.append(exclude)
            return super().search(-np.asarray(queries), k, exclude)

    report = evaluate(WorstFirst(feats), paths, labelled(labels), block=4)
    # every query searched once, its own row excluded
    assert [r for block in calls for r in block] == [[i] for i in range(len(paths))]
    # 4 relevant (of 14 others) ranked last: ranks 11..14 -> AP = (1/11 + 2/12 + 3/13 + 4/14) / 4
    assert report.map == pytest.approx((1 / 11 + 2 / 12 + 3 / 13 + 4 / 14) / 4, rel=1e-6)

    class Short(ExactSearcher):
        def search(self, queries, k, exclude=None):
            return super().search(queries, k - 1, exclude)

    with pytest.raises(ValueError, match="searcher returned shape"):
        evaluate(Short(feats), paths, labelled(labels))
    with pytest.raises(ValueError, match="15 feature rows but 3 paths"):
        evaluate(ExactSearcher(feats), paths[:3], labelled(labels))


def test_damaged_features_are_an_error():
    feats, paths, labels = clusters()
    feats[4, 0] = np.inf
    with pytest.raises(IndexFolderError, match="non-finite"):
        evaluate(feats, paths, labelled(labels))
    # a damaged row that is not a query is found by the scan
    gt = GroundTruth(paths[:2], {paths[0]: {paths[1]}, paths[1]: {paths[0]}}, None, "gt.json")
    with pytest.raises(IndexFolderError, match="non-finite"):
        evaluate(feats, paths, gt)


def reference(feats, paths, gt, qe=0, dba=0, alpha=3.0):
    """The evaluation as it was computed before searchers: DBA'd matrix, QE excluding the query,
    a full stable sort of the scores with the query left out; returns the per-query APs."""
    db = database_augmentation(feats, dba, alpha) if dba else feats
    aps = {}
    for q in gt.queries:
        row = paths.index(q)
        vec = db[row : row + 1]
        if qe:
            vec = query_expansion(vec, ExactSearcher(db), qe, alpha, exclude=[[row]])
        order = [r for r in np.argsort(-(vec @ db.T)[0], kind="stable") if r != row]
        relevant = [paths[r] in gt.relevant[q] for r in order]
        hits = np.cumsum(relevant)
        aps[q] = float(np.sum(hits[relevant] / (np.flatnonzero(relevant) + 1)) / len(gt.relevant[q]))
    return aps


@pytest.mark.parametrize("qe, dba", [(0, 0), (3, 0), (0, 3), (2, 4)])
def test_reranked_evaluation_matches_the_reference(qe, dba):
    feats, paths, labels = clusters(n_classes=4, per_class=6, seed=3)
    feats = (feats + 0.4 * np.random.default_rng(4).standard_normal(feats.shape)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    gt = labelled(labels)
    report = evaluate(rerank(ExactSearcher(feats), Reranking(qe=qe, dba=dba)), paths, gt, block=5)
    assert report.per_query == pytest.approx(reference(feats, paths, gt, qe, dba), abs=1e-6)
    if qe or dba:
        assert report.map != pytest.approx(evaluate(feats, paths, gt).map, abs=1e-6)


class FakeIndex:
    """root, paths and searcher(exact): what evaluate_index needs of an opened index."""

    def __init__(self, root: Path, feats: np.ndarray, paths: list[str]) -> None:
        self.root, self.feats, self.paths = root, feats, paths
        self.asked: list[bool] = []

    def row_of(self, image: object) -> int | None:
        return None

    def searcher(self, exact: bool = False) -> ExactSearcher:
        self.asked.append(exact)
        return ExactSearcher(self.feats)


def test_evaluate_index_ranks_exactly_with_reranking(tmp_path):
    feats, paths, labels = clusters(n_classes=3, per_class=4, seed=5)
    feats = (feats + 0.5 * np.random.default_rng(6).standard_normal(feats.shape)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(f"{p},{labels[p]}\n" for p in paths))
    index = FakeIndex(tmp_path, feats, paths)
    report = evaluate_index(index, reranking=Reranking(qe=2, dba=2, alpha=2.0), ks=(1, 3))
    assert index.asked == [True]
    assert report.kind == "labels" and list(report.precision) == [1, 3]
    gt = labelled(labels)
    assert report.per_query == pytest.approx(reference(feats, paths, gt, 2, 2, 2.0), abs=1e-6)
    plain = evaluate_index(index, str(tmp_path / "labels.csv"))
    assert plain.per_query == pytest.approx(evaluate(feats, paths, gt).per_query)


def test_queries_without_relevant_images_are_skipped():
    feats, paths, labels = clusters(n_classes=2, per_class=3)
    labels[paths[0]] = "alone"
    report = evaluate(feats, paths, labelled(labels), ks=(1, 100))
    assert report.skipped == [paths[0]]
    assert report.n_queries == len(paths) - 1
    assert paths[0] not in report.per_query
    assert list(report.precision) == [1]  # k = 100 exceeds the 5 ranked images


def test_ground_truth_outside_the_index_is_an_error():
    with pytest.raises(DatasetError, match="not in the index"):
        evaluate(HAND_FEATS[:3], HAND_PATHS[:3], labelled(HAND_LABELS))
    with pytest.raises(ValueError):
        evaluate(HAND_FEATS, HAND_PATHS[:3], labelled(HAND_LABELS))


def test_report_json_and_table():
    feats, paths, labels = clusters()
    gt = labelled(labels, class_names={"0": "cats"})
    report = evaluate(feats, paths, gt, ks=(1, 5))
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["map"] == pytest.approx(1.0)
    assert set(doc["precision"]) == {"1", "5"}
    assert len(doc["per_query_ap"]) == len(paths)
    assert doc["per_class"][0]["name"] == "cats"
    table = report.format_table()
    assert "mAP" in table and "P@k" in table and "0 cats" in table
    assert "... and 2 more classes" in report.format_table(max_classes=1)
