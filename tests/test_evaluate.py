"""Evaluation on synthetic features whose rankings are known."""

import json

import numpy as np
import pytest

import cbir.evaluation.evaluate as ev
from cbir.errors import DatasetError
from cbir.evaluation.evaluate import evaluate
from cbir.evaluation.groundtruth import GroundTruth, LabelRelevance


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


def test_rank_fn_hook_replaces_the_dot_product():
    feats, paths, labels = clusters()
    calls = []

    def reversed_scores(q, rows):
        calls.append(rows.copy())
        return -(q @ feats.T)  # worst-first ranking

    report = evaluate(feats, paths, labelled(labels), rank_fn=reversed_scores, block=4)
    assert np.concatenate(calls).tolist() == list(range(len(paths)))
    # 4 relevant (of 14 others) ranked last: ranks 11..14 -> AP = (1/11 + 2/12 + 3/13 + 4/14) / 4
    assert report.map == pytest.approx((1 / 11 + 2 / 12 + 3 / 13 + 4 / 14) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="rank_fn"):
        evaluate(feats, paths, labelled(labels), rank_fn=lambda q, rows: q @ feats[:3].T)


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
